"""Attention maps of a trained GPT and a label for every head.

Works on a run directory and returns an AttentionResult; render/inside.py shows it and
render/plots.py draws it.  The model's hook used is ``GPT.forward(..., need_weights=True)``
(per-layer (B, nh, T, Tk) softmax weights from the explicit masked-softmax path).

Head labels come from four simple scores (Olsson et al. 2022, "In-context learning and
induction heads", for the induction score):

- previous-token: mean weight from token i to token i-1;
- first-token: mean weight from token i to token 0 (an attention sink / "no-op" head);
- induction: on a random token sequence repeated twice, the mean weight from a token of the
  second copy to the token that followed its previous occurrence;
- entropy: mean row entropy divided by the entropy of a uniform row (1 = looks everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tformer_cli.core.prompt import display_token, window_ids
from tformer_cli.inside.load import load_gpt

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

    def to_dict(self) -> dict[str, Any]:
        """The --json form (weights as nested lists)."""
        return {"tokens": self.tokens, "truncated": self.truncated, "heads": [s.__dict__ for s in self.scores],
                "weights": self.weights.tolist()}


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
    ids, dropped = window_ids(tok, prompt, cfg.model.block_size)
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
