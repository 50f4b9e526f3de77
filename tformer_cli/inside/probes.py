"""Looking inside a trained GPT: attention maps, head labels, head ablation and pruning.

Everything here works on a run directory (train.load_for_inference) and returns dataclasses;
the commands in commands/inside.py render them.  The model's hooks used are
``GPT.forward(..., need_weights=True)`` (per-layer (B, nh, T, Tk) softmax weights from the
explicit masked-softmax path) and ``head_mask`` ((n_layer, n_head) of 0/1, zeroing a head's
output before W_O).

Head labels come from four simple scores (Olsson et al. 2022, "In-context learning and
induction heads", for the induction score):

- previous-token: mean weight from token i to token i-1;
- first-token: mean weight from token i to token 0 (an attention sink / "no-op" head);
- induction: on a random token sequence repeated twice, the mean weight from a token of the
  second copy to the token that followed its previous occurrence;
- entropy: mean row entropy divided by the entropy of a uniform row (1 = looks everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tformer_cli.errors import ConfigError, RunError

LABEL_MIN = 0.4  # a score at least this high names the head
DIFFUSE_MIN = 0.8  # normalised entropy at least this high: a diffuse (averaging) head
INDUCTION_SEQS = 8  # random repeated sequences averaged for the induction score


@dataclass
class HeadScore:
    layer: int
    head: int
    previous_token: float
    first_token: float
    induction: float
    entropy: float  # normalised to [0, 1]
    label: str
    offset: int = 0  # the fixed distance k >= 2 back this head attends to most (0: none scored)
    offset_score: float = 0.0  # mean weight from token i to token i - k


@dataclass
class AttentionResult:
    tokens: list[str]  # display form of each prompt token
    weights: Any  # torch.Tensor (n_layer, n_head, T, T), float32 on the CPU
    causal: bool
    scores: list[HeadScore]
    truncated: int  # tokens dropped from the front of a prompt longer than block_size


@dataclass
class HeadsResult:
    base_loss: float
    importance: list[list[float]]  # [layer][head]: val loss change when that head alone is masked
    order: list[tuple[int, int]]  # (layer, head), least important first: the pruning order
    curve: list[tuple[int, float]]  # (heads removed, val loss), 0 .. n_heads - 1 removed
    milestones: list[tuple[float, int, float]]  # (fraction, heads removed, val loss) at 0%, 10%, ..., 90%
    threshold: float
    removable: int  # heads that can go (in pruning order) with a loss increase below threshold
    n_layer: int
    n_head: int
    n_batches: int
    tokens: int  # validation tokens per evaluation
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- loading


def load_gpt(run_dir: str | Path, device_name: str = "auto"):
    """(model, tokenizer, cfg, device) of a run; a clear error for an LSTM (no attention)."""
    from tformer_cli.run.load import load_for_inference

    model, tok, cfg, _ckpt, device = load_for_inference(run_dir, device_name)
    if cfg.model.arch != "gpt":
        raise RunError(f"{run_dir} is an {cfg.model.arch.upper()} run: it has no attention heads",
                       hint="attention and heads work on GPT runs (model.arch=gpt)")
    return model, tok, cfg, device


def encode_prompt(tokenizer, text: str, block_size: int) -> tuple[list[int], int]:
    """Token ids of ``text`` (the last block_size of them) and how many were dropped."""
    if not text:
        raise ConfigError("--prompt is empty", hint='give some text, e.g. --prompt "The cat sat"')
    unknown = tokenizer.unknown(text)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:8])
        raise ConfigError(f"--prompt has characters the run's tokenizer does not know: {shown}",
                          hint="use characters of the training corpus")
    ids = tokenizer.encode(text)
    return ids[-block_size:], max(0, len(ids) - block_size)


def display_token(tokenizer, i: int) -> str:
    """A token as a short, visible label (newline and space made visible)."""
    s = tokenizer.decode([i])
    return s.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423") or "\u2205"


# ---------------------------------------------------------------- attention and labels


def attention_maps(model, ids: list[int], device):
    """Attention weights for one sequence: (n_layer, n_head, T, T), float32 on the CPU."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids], device=device), need_weights=True)
    return torch.stack([w[0].float().cpu() for w in out.attentions])


def _row_scores(w, causal: bool):
    """previous-token, first-token and normalised entropy per head of w (L, nh, T, T)."""
    import torch

    T = w.size(-1)
    rows = torch.arange(2 if T > 2 else 1, T)  # from token 2 on, previous != first
    if len(rows) == 0:
        zeros = torch.zeros(w.shape[:2])
        return zeros, zeros, zeros
    prev = w[..., rows, rows - 1].mean(-1)
    first = w[..., rows, 0].mean(-1)
    ent = -(w * w.clamp_min(1e-12).log()).sum(-1)  # (L, nh, T)
    n_keys = (torch.arange(T) + 1).float() if causal else torch.full((T,), float(T))
    ent_norm = (ent[..., rows] / n_keys[rows].log()).mean(-1)
    return prev, first, ent_norm


def induction_scores(model, vocab: int, device, seed: int = 0):
    """(n_layer, n_head) mean weight from each token of a repeated random sequence's second copy
    to the token after its previous occurrence (key j+1 for query n+j)."""
    import torch

    n = model.cfg.block_size // 2
    if n < 2:
        return torch.zeros(model.cfg.n_layer, model.cfg.n_head)
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, vocab, (INDUCTION_SEQS, n), generator=g)
    seq = torch.cat([r, r], dim=1).to(device)  # (S, 2n)
    with torch.no_grad():
        out = model(seq, need_weights=True)
    w = torch.stack([a.float().cpu() for a in out.attentions])  # (L, S, nh, 2n, 2n)
    j = torch.arange(n - 1)
    return w[..., n + j, j + 1].mean(dim=(-1, 1))  # (L, nh)


def offset_scores(w, min_rows: int = 4):
    """For every head of w (L, nh, T, T): the distance k >= 2 with the largest mean weight from
    token i to token i - k (over the rows i >= k; at least ``min_rows`` of them), and that weight.

    Previous-token is the case k = 1; a larger fixed offset is what a head that copies from a
    fixed distance does (e.g. the second half of "abcd|abcd" looking 5 tokens back)."""
    import torch

    L, nh, T, _ = w.shape
    best_k = torch.zeros(L, nh, dtype=torch.long)
    best = torch.zeros(L, nh)
    for k in range(2, T - min_rows + 1):
        rows = torch.arange(k, T)
        score = w[..., rows, rows - k].mean(-1)  # (L, nh)
        better = score > best
        best = torch.where(better, score, best)
        best_k = torch.where(better, torch.full_like(best_k, k), best_k)
    return best_k, best


def label_head(prev: float, first: float, induction: float, entropy: float,
               offset: int = 0, offset_score: float = 0.0) -> str:
    """The name of the strongest pattern (score >= LABEL_MIN), else diffuse or mixed."""
    named = {"induction": induction, "previous-token": prev, "first-token": first}
    if offset:
        named[f"offset -{offset}"] = offset_score
    best = max(named, key=named.get)
    if named[best] >= LABEL_MIN:
        return best
    return "diffuse" if entropy >= DIFFUSE_MIN else "mixed"


def score_heads(weights, induction, causal: bool) -> list[HeadScore]:
    prev, first, ent = _row_scores(weights, causal)
    offsets, offset_w = offset_scores(weights)
    out = []
    for layer in range(weights.size(0)):
        for head in range(weights.size(1)):
            s = [float(t[layer, head]) for t in (prev, first, induction, ent)]
            k, ks = int(offsets[layer, head]), float(offset_w[layer, head])
            out.append(HeadScore(layer, head, *s, label=label_head(*s, k, ks), offset=k, offset_score=ks))
    return out


def attention_report(run_dir: str | Path, prompt: str, device_name: str = "auto", seed: int = 0) -> AttentionResult:
    """Attention weights of a run on ``prompt`` and a label for every head."""
    model, tok, cfg, device = load_gpt(run_dir, device_name)
    ids, dropped = encode_prompt(tok, prompt, cfg.model.block_size)
    weights = attention_maps(model, ids, device)
    vocab = tok.vocab_size  # the tokenizer's ids: never the MLM's [MASK]
    induction = induction_scores(model, vocab, device, seed)
    return AttentionResult(
        tokens=[display_token(tok, i) for i in ids],
        weights=weights,
        causal=cfg.model.causal,
        scores=score_heads(weights, induction, cfg.model.causal),
        truncated=dropped,
    )


# ---------------------------------------------------------------- ablation and pruning


def _val_batches(cfg, vocab_size: int, device, n_batches: int):
    from tformer_cli.core.data import check_lengths, prepare
    from tformer_cli.train.batches import Batcher
    from tformer_cli.train.distributed import DistInfo

    ds = prepare(cfg.data)
    check_lengths(ds, cfg.model.block_size, ds.corpus)
    return list(Batcher(ds, cfg, device, DistInfo(), vocab_size).eval_batches("val", n_batches))


def masked_loss(model, batches, head_mask, device, dtype) -> float:
    """Mean val loss over ``batches`` with ``head_mask`` ((n_layer, n_head) of 0/1, or None)."""
    import torch

    from tformer_cli.core import device as dev

    total = 0.0
    with torch.no_grad(), dev.autocast(device, dtype):
        for x, y in batches:
            total += model(x, y, head_mask=head_mask).loss.item()
    return total / len(batches)


def head_importance(model, batches, device, dtype) -> tuple[float, Any]:
    """(base loss, (n_layer, n_head) loss change when each head alone is masked)."""
    import torch

    L, H = model.cfg.n_layer, model.cfg.n_head
    base = masked_loss(model, batches, None, device, dtype)
    delta = torch.zeros(L, H)
    for layer in range(L):
        for head in range(H):
            mask = torch.ones(L, H, device=device)
            mask[layer, head] = 0
            delta[layer, head] = masked_loss(model, batches, mask, device, dtype) - base
    return base, delta


def pruning_curve(model, batches, order, device, dtype) -> list[tuple[int, float]]:
    """Val loss with the first k heads of ``order`` masked, k = 0 .. n_heads - 1."""
    import torch

    L, H = model.cfg.n_layer, model.cfg.n_head
    mask = torch.ones(L, H, device=device)
    curve = [(0, masked_loss(model, batches, mask, device, dtype))]
    for k, (layer, head) in enumerate(order[:-1], start=1):
        mask[layer, head] = 0
        curve.append((k, masked_loss(model, batches, mask, device, dtype)))
    return curve


def removable_heads(curve: list[tuple[int, float]], threshold: float) -> int:
    """The largest k such that removing the first 1..k heads each costs less than ``threshold``."""
    base = curve[0][1]
    k = 0
    for removed, loss in curve[1:]:
        if loss - base >= threshold:
            break
        k = removed
    return k


def heads_report(run_dir: str | Path, n_batches: int | None = None, threshold: float = 0.05,
                 device_name: str = "auto", progress: Callable[[str], None] | None = None) -> HeadsResult:
    """Head importance by single-head ablation, then a pruning curve in order of importance."""
    from tformer_cli.core import device as dev

    if threshold <= 0:
        raise ConfigError(f"--threshold must be positive, got {threshold}")
    say = progress or (lambda s: None)
    model, tok, cfg, device = load_gpt(run_dir, device_name)
    n_batches = n_batches or cfg.train.eval_iters
    if n_batches < 1:
        raise ConfigError(f"--batches must be >= 1, got {n_batches}")
    dtype = dev.resolve_dtype(cfg.train.dtype, device)
    batches = _val_batches(cfg, model.vocab_size, device, n_batches)
    L, H = cfg.model.n_layer, cfg.model.n_head
    say(f"ablating {L * H} heads one at a time ({n_batches} val batches each)")
    base, delta = head_importance(model, batches, device, dtype)
    order = sorted(((l, h) for l in range(L) for h in range(H)), key=lambda lh: float(delta[lh]))
    say("pruning heads in order of importance")
    curve = pruning_curve(model, batches, order, device, dtype)
    n = L * H
    milestones = []
    for pct in range(0, 100, 10):
        k = min(round(pct / 100 * n), n - 1)
        milestones.append((pct / 100, k, curve[k][1]))
    return HeadsResult(
        base_loss=base, importance=delta.tolist(), order=order, curve=curve, milestones=milestones,
        threshold=threshold, removable=removable_heads(curve, threshold), n_layer=L, n_head=H,
        n_batches=n_batches, tokens=sum(x.numel() for x, _ in batches),
    )


# ---------------------------------------------------------------- figures


def attention_png(result: AttentionResult, out: str | Path, layer: int | None = None,
                  title: str = "") -> Path:
    """One heatmap per head (rows: layers, columns: heads); the masked future is drawn grey."""
    import numpy as np

    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    w = result.weights.numpy()
    layers = [layer] if layer is not None else list(range(w.shape[0]))
    nh, T = w.shape[1], w.shape[-1]
    size = 2.4 if T <= 24 else 3.0
    fig, axes = plt.subplots(len(layers), nh, figsize=(size * nh + 0.8, size * len(layers) + 0.6),
                             dpi=90, squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")  # the masked future: visibly empty
    future = np.triu(np.ones((T, T), dtype=bool), k=1) if result.causal else np.zeros((T, T), dtype=bool)
    labels = {(s.layer, s.head): s.label for s in result.scores}
    show_ticks = T <= 40
    for r, li in enumerate(layers):
        for h in range(nh):
            ax = axes[r][h]
            img = ax.imshow(np.where(future, np.nan, w[li, h]), cmap=cmap, vmin=0.0, vmax=1.0,
                            interpolation="nearest")
            ax.set_title(f"L{li} H{h}: {labels[(li, h)]}", fontsize=8)
            ticks = range(T) if show_ticks else []
            ax.set_xticks(list(ticks))
            ax.set_yticks(list(ticks))
            if show_ticks:
                ax.set_xticklabels(result.tokens if r == len(layers) - 1 else [], rotation=90, fontsize=6)
                ax.set_yticklabels(result.tokens if h == 0 else [], fontsize=6)
    fig.colorbar(img, ax=axes, shrink=0.6, label="attention weight (row = query, column = key)")
    fig.suptitle(title or "attention weights (grey: masked future)", fontsize=10)
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def heads_png(result: HeadsResult, out: str | Path, title: str = "") -> Path:
    """Left: loss change per masked head (layer x head); right: the pruning curve."""
    import numpy as np

    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    imp = np.array(result.importance)
    lim = max(abs(imp).max(), 1e-6)
    img = ax1.imshow(imp, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for (li, h), v in np.ndenumerate(imp):
        if imp.size <= 64:
            ax1.text(h, li, f"{v:+.3f}", ha="center", va="center", fontsize=7)
    ax1.set_xlabel("head")
    ax1.set_ylabel("layer")
    ax1.set_xticks(range(result.n_head))
    ax1.set_yticks(range(result.n_layer))
    ax1.set_title("val loss change when one head is masked")
    fig.colorbar(img, ax=ax1, label="delta loss (nats/token)")
    n = result.n_layer * result.n_head
    ks, losses = zip(*result.curve)
    ax2.plot([100 * k / n for k in ks], losses, "o-", color="#4c72b0", ms=3)
    ax2.axhline(result.base_loss + result.threshold, ls=":", color="gray",
                label=f"base + {result.threshold:g} nats")
    ax2.axvline(100 * result.removable / n, ls="--", color="#dd8452",
                label=f"{result.removable} of {n} heads removable")
    ax2.set_xlabel("% of heads removed (least important first)")
    ax2.set_ylabel("val loss (nats/token)")
    ax2.set_title("pruning curve")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def anatomy_png(data: dict, out: str | Path, title: str = "") -> Path:
    """Share of parameters and of training FLOPs per token by component (summed over layers);
    ``data`` is commands.inside.inspect_data's dict."""
    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    comps = [c for c in data["components"] if c["params"] or c["flops_per_token"]]
    names = [c["name"] for c in comps][::-1]  # top to bottom in model order
    P, F = data["params"], data["flops_per_token"]
    params = [100 * c["params"] / P for c in comps][::-1]
    flops = [100 * c["flops_per_token"] / F for c in comps][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(names) + 1.6), dpi=100)
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], params, height=0.4, color="#4c72b0", label="% of parameters")
    ax.barh([i - 0.2 for i in y], flops, height=0.4, color="#dd8452", label="% of training FLOPs/token")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("% of the model's total")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title.replace(": ", ":\n", 1), fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
