"""`tformer embed RUN`: how a GPT arranges its token and position vectors.

Tokens: for each chosen token, its nearest neighbours in the token embedding by cosine similarity.
Positions: the cosine similarity of every pair of position vectors, for a learned table (what
training made of it) or the sinusoidal one (fixed: neighbours similar, falling off with distance).
RoPE and no positions have no position table: they rotate the queries and keys, or add nothing,
and the command says so instead of drawing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tformer_cli.core.prompt import display_token
from tformer_cli.errors import ConfigError
from tformer_cli.inside.load import load_gpt

DEFAULT_TOKENS = ("e", "t", "a", " ", ".", "T")  # tried in order: the ones the tokenizer knows as one token
K = 5


@dataclass
class Neighbours:
    token: str
    nearest: list[tuple[str, float]]  # (token, cosine similarity)


@dataclass
class EmbedResult:
    neighbours: list[Neighbours]
    pos_encoding: str
    position_similarity: Any = None  # torch.Tensor (block, block) on the CPU, or None without a table
    why_no_table: str = ""
    summary: dict[str, float] = field(default_factory=dict)  # mean similarity at distance 1, 8, ...

    def to_dict(self) -> dict:
        d = asdict(self)
        d["position_similarity"] = None if self.position_similarity is None else self.position_similarity.tolist()
        return d


def _single_ids(tok, texts) -> list[tuple[str, int]]:
    out = []
    for t in texts:
        if not t or tok.unknown(t):
            continue
        ids = tok.encode(t)
        if len(ids) == 1:
            out.append((t, ids[0]))
    return out


def embed(model, tok, tokens: list[str] | None = None, k: int = K) -> EmbedResult:
    emb = model.tok_emb.weight.detach().float()[: model.vocab_size]  # (V, C): the real vocabulary
    chosen = _single_ids(tok, tokens) if tokens else _single_ids(tok, DEFAULT_TOKENS)[:4]
    if tokens and len(chosen) < len(tokens):
        bad = [t for t in tokens if t not in {c for c, _ in chosen}]
        raise ConfigError(f"--tokens: {', '.join(repr(t) for t in bad)} not one token each of the run's tokenizer",
                          hint="name single tokens (for a character-level run: characters), comma-separated")
    if not chosen:
        chosen = [(display_token(tok, i), i) for i in range(min(4, emb.size(0)))]
    unit = F.normalize(emb, dim=-1)
    found = []
    for text, i in chosen:
        sims = unit @ unit[i]
        sims[i] = -2.0  # not itself
        vals, idx = sims.topk(min(k, emb.size(0) - 1))
        found.append(Neighbours(display_token(tok, i), [(display_token(tok, int(j)), float(v))
                                                         for v, j in zip(vals, idx)]))
    pos = model.cfg.pos_encoding
    result = EmbedResult(found, pos)
    if pos == "learned":
        table = model.pos_emb.weight.detach().float()
    elif pos == "sinusoidal":
        table = model.pos_table.detach().float()
    else:
        result.why_no_table = ("RoPE rotates the queries and keys by position: there is no position vector to "
                               "compare" if pos == "rope" else "this model has no positions at all (NoPE): "
                               "the causal mask alone tells positions apart")
        return result
    t = F.normalize(table, dim=-1)
    sim = t @ t.T
    result.position_similarity = sim.cpu()
    n = sim.size(0)
    result.summary = {f"distance {d}": float(torch.diagonal(sim, d).mean()) for d in (1, 2, 4, 8, 16, 32) if d < n}
    return result


def embed_report(run_dir, tokens: list[str] | None, device_name: str = "auto", k: int = K) -> EmbedResult:
    model, tok, _cfg, _device = load_gpt(run_dir, device_name)
    return embed(model.eval(), tok, tokens, k)
