"""Attention maps of a trained GPT and a label for every head.

Works on a run directory and returns an AttentionResult; render/inside.py shows it and
render/plots.py draws it.  The weights are read at the hook points ``blocks.L.attn.pattern``
(core/hooks.py: per layer (B, nh, T, Tk), from the explicit masked-softmax path).

Head labels come from four simple scores (Olsson et al. 2022, "In-context learning and
induction heads", for the induction score):

- previous-token: mean weight from token i to token i-1;
- first-token: mean weight from token i to token 0 (an attention sink / "no-op" head);
- induction: on sequences drawn like the run's training data, the mean weight from a token of
  a repeated segment's second copy to the token that followed its previous occurrence (for the
  ``induction`` corpus, lines drawn by its own generator with a fresh seed; otherwise chunks of
  block_size/2 tokens of the run's validation text, each repeated twice; random ids over the
  vocabulary only when that text cannot be read);
- entropy: mean row entropy divided by the entropy of a uniform row (1 = looks everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tformer_cli.core import stop
from tformer_cli.core.prompt import display_token, window_ids
from tformer_cli.inside.load import load_gpt

STOPPED = "while probing attention: nothing was written"

LABEL_MIN = 0.4  # a score at least this high names the head
DIFFUSE_MIN = 0.8  # normalised entropy at least this high: a diffuse (averaging) head
INDUCTION_SEQS = 8  # repeated sequences averaged for the induction score
PROBE_SEED = 1_000_003  # the induction probe's lines differ from the corpus's (seed 0)
MAX_SHIFT = 8  # an induction head may read the copied token from up to this many positions later


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
    induction_shift: int = 0  # the induction score's key: the token after the earlier occurrence, + this


@dataclass
class AttentionResult:
    tokens: list[str]  # display form of each prompt token
    weights: Any  # torch.Tensor (n_layer, n_head, T, T), float32 on the CPU
    causal: bool
    scores: list[HeadScore]
    truncated: int  # tokens dropped from the front of a prompt longer than block_size
    induction_probe: str = ""  # what the induction score was measured on

    def to_dict(self) -> dict[str, Any]:
        """The --json form (weights as nested lists)."""
        return {"tokens": self.tokens, "truncated": self.truncated, "heads": [s.__dict__ for s in self.scores],
                "induction_probe": self.induction_probe, "weights": self.weights.tolist()}


def attention_maps(model, ids: list[int], device):
    """Attention weights for one sequence: (n_layer, n_head, T, T), float32 on the CPU."""
    import torch

    return patterns(model, torch.tensor([ids], device=device))


def patterns(model, idx):
    """Every layer's attention weights for the one sequence ``idx`` (1, T): (n_layer, n_head, T, T),
    float32 on the CPU, read at the hook points blocks.L.attn.pattern."""
    import torch

    from tformer_cli.core import hooks

    names = [f"blocks.{i}.attn.pattern" for i in range(model.cfg.n_layer)]
    with torch.no_grad():
        _, cache = hooks.run_with_cache(model, idx, names)
    return torch.stack([cache[n][0].float().cpu() for n in names])


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


@dataclass
class InductionProbe:
    """Sequences of equal length and, for each, the (query, key) pairs an induction head links:
    query = a token of a second copy, key = the token after that token's first occurrence."""

    seqs: list[list[int]]
    pairs: list[list[tuple[int, int]]]
    source: str
    max_shift: int = 0  # keys shifted by up to this many positions are tried (varying copy offsets only)


def repeated_chunks(chunks: list[list[int]], source: str) -> InductionProbe:
    """Each chunk of n tokens followed by itself: query n + j links to key j + 1."""
    return InductionProbe([c + c for c in chunks], [[(len(c) + j, j + 1) for j in range(len(c) - 1)] for c in chunks],
                          source)


def random_probe(vocab: int, block_size: int, seed: int = 0) -> InductionProbe:
    """Random ids over the whole vocabulary, block_size/2 of them repeated (out of distribution
    for most runs: the fallback when the run's own text cannot be read)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, vocab, (INDUCTION_SEQS, block_size // 2), generator=g)
    return repeated_chunks(r.tolist(), f"{INDUCTION_SEQS} sequences of {block_size // 2} random ids, each repeated")


def induction_corpus_probe(tok, block_size: int, seed: int = 0, n_seqs: int = 2 * INDUCTION_SEQS) -> InductionProbe:
    """Windows of block_size characters of fresh ``induction`` corpus lines (from a line start, as
    the task metrics read them), with a pair for every second-copy letter whose line fits."""
    from tformer_cli.core.data import induction_lines

    lines = iter(induction_lines(n_seqs * block_size, PROBE_SEED + seed))
    seqs, pairs = [], []
    for _ in range(n_seqs):
        text, links = "", []
        while len(text) < block_size:
            line = next(lines)
            off = len(text)
            links += [(off + line.second + j, off + line.first + j + 1) for j in range(line.length - 1)
                      if off + line.second + j < block_size]
            text += line.text + "\n"
        seqs.append(tok.encode(text[:block_size]))
        pairs.append(links)
    return InductionProbe(seqs, pairs, f"{n_seqs} windows of fresh induction-corpus lines "
                                       f"({sum(map(len, pairs))} second-copy tokens)", MAX_SHIFT)


def text_probe(ids: list[int], block_size: int, seed: int = 0) -> InductionProbe | None:
    """Chunks of block_size/2 consecutive tokens of ``ids`` (the run's validation text), each
    repeated; None when the text is too short."""
    import random

    n = block_size // 2
    if n < 2 or len(ids) < n:
        return None
    rng = random.Random(seed)
    starts = [rng.randrange(len(ids) - n + 1) for _ in range(INDUCTION_SEQS)]
    return repeated_chunks([list(ids[s:s + n]) for s in starts],
                           f"{INDUCTION_SEQS} chunks of {n} tokens of the run's validation text, each repeated")


def induction_probe(cfg, tok, seed: int = 0) -> InductionProbe:
    """Sequences like the run's training data: the ``induction`` corpus's own lines, else the run's
    validation text repeated, else (text unreadable) random ids."""
    from tformer_cli.errors import TformerError

    block = cfg.model.block_size
    if cfg.data.corpus == "induction" and getattr(tok, "kind", "") == "char":
        return induction_corpus_probe(tok, block, seed)
    try:
        from tformer_cli.core.tasks import _val_text

        text = _val_text(cfg)[:200_000]
        if not tok.unknown(text):
            probe = text_probe(tok.encode(text), block, seed)
            if probe is not None:
                return probe
    except (TformerError, OSError, ValueError):  # the corpus moved or is unreadable: the fallback below
        pass
    return random_probe(tok.vocab_size, block, seed)


def probe_scores(model, probe: InductionProbe, device):
    """(score, shift), each (n_layer, n_head): the mean weight over the probe's (query, key + d)
    pairs for the shift d in 0..probe.max_shift that gives the head its largest score.

    d = 0 is Olsson et al.'s key, the token after the earlier occurrence.  d > 0: a layer-0 head
    that copies each token d positions forward lets a layer-1 head read the same token d positions
    later (the same circuit, composed with an offset head instead of a previous-token head).  Only
    the induction corpus's probe tries d > 0: its copies sit at varying distances, so no fixed
    offset head scores there, whatever d."""
    import torch

    L, nh = model.cfg.n_layer, model.cfg.n_head
    best, shift = torch.zeros(L, nh), torch.zeros(L, nh, dtype=torch.long)
    if not any(probe.pairs):
        return best, shift
    for d in range(probe.max_shift + 1):
        seen = [[(q, k + d) for q, k in p if k + d <= q] for p in probe.pairs]  # keys a causal head sees
        if d and sum(map(len, seen)) < sum(map(len, probe.pairs)) // 2:
            break
        score = _pair_means(model, InductionProbe(probe.seqs, seen, probe.source), device)
        better = score > best
        best, shift = torch.where(better, score, best), torch.where(better, torch.full_like(shift, d), shift)
    return best, shift


def _pair_means(model, probe: InductionProbe, device):
    """(n_layer, n_head) mean weight over the probe's (query, key) pairs."""
    import torch

    picked = []  # one sequence at a time: the weights of one (L, nh, T, T), and a stop between two
    for seq, pairs in zip(probe.seqs, probe.pairs):
        stop.check(STOPPED)
        if not pairs:
            continue
        w = patterns(model, torch.tensor([seq], device=device))  # (L, nh, T, T)
        q = torch.tensor([a for a, _ in pairs])
        k = torch.tensor([b for _, b in pairs])
        picked.append(w[:, :, q, k])  # (L, nh, pairs)
    return torch.cat(picked, dim=-1).mean(dim=-1)  # (L, nh, N) -> (L, nh)


def induction_scores(model, vocab: int, device, seed: int = 0, probe: InductionProbe | None = None):
    """(n_layer, n_head) mean weight from each token of a second copy to the token after its
    previous occurrence, on ``probe`` (default: random ids, block_size/2 repeated: key j+1 for
    query n+j)."""
    import torch

    if probe is None:
        if model.cfg.block_size // 2 < 2:
            return torch.zeros(model.cfg.n_layer, model.cfg.n_head)
        probe = random_probe(vocab, model.cfg.block_size, seed)
    return probe_scores(model, probe, device)[0]


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
    """The name of the strongest pattern (score >= LABEL_MIN), else diffuse or mixed.

    An induction head looks like a fixed offset on a prompt that repeats once (the offset of
    that repeat), so the offset, measured on the prompt, does not compete with an induction score
    of at least LABEL_MIN, measured on the probe (whose copies vary in position for the
    ``induction`` corpus, and sit block_size/2 apart otherwise)."""
    named = {"induction": induction, "previous-token": prev, "first-token": first}
    if offset and induction < LABEL_MIN:
        named[f"offset -{offset}"] = offset_score
    best = max(named, key=named.get)
    if named[best] >= LABEL_MIN:
        return best
    return "diffuse" if entropy >= DIFFUSE_MIN else "mixed"


def score_heads(weights, induction, causal: bool, shifts=None) -> list[HeadScore]:
    prev, first, ent = _row_scores(weights, causal)
    offsets, offset_w = offset_scores(weights)
    out = []
    for layer in range(weights.size(0)):
        for head in range(weights.size(1)):
            s = [float(t[layer, head]) for t in (prev, first, induction, ent)]
            k, ks = int(offsets[layer, head]), float(offset_w[layer, head])
            out.append(HeadScore(layer, head, *s, label=label_head(*s, k, ks), offset=k, offset_score=ks,
                                 induction_shift=0 if shifts is None else int(shifts[layer, head])))
    return out


def attention_report(run_dir: str | Path, prompt: str, device_name: str = "auto", seed: int = 0) -> AttentionResult:
    """Attention weights of a run on ``prompt`` and a label for every head."""
    model, tok, cfg, device = load_gpt(run_dir, device_name)
    ids, dropped = window_ids(tok, prompt, cfg.model.block_size)
    stop.check(STOPPED)  # a Ctrl-C or SIGTERM is honoured between the passes (Stopped, exit 130)
    weights = attention_maps(model, ids, device)
    stop.check(STOPPED)
    probe = induction_probe(cfg, tok, seed)  # random ids, if any, from the tokenizer: never the MLM's [MASK]
    induction, shifts = probe_scores(model, probe, device)
    stop.check(STOPPED)
    return AttentionResult(
        tokens=[display_token(tok, i) for i in ids],
        weights=weights,
        causal=cfg.model.causal,
        scores=score_heads(weights, induction, cfg.model.causal, shifts),
        truncated=dropped,
        induction_probe=probe.source,
    )
