"""A classification head on a pooled representation of a body: the GPT of core/model.py
(causal or bidirectional), the LSTM, or a bag of tokens.

The body is the language model itself with its LM head swapped for the identity, so its
forward pass returns the final (layer-normed) hidden states (B, T, C) instead of logits; no
copy of the model is written here.  Pooling picks what the head reads:

- ``last``: the last token's state.  In a causal model it is the only position that has
  seen the whole text (GPT-1's classifier, Radford et al. 2018, reads the last token).
- ``first``: the first token's state (BERT's [CLS] position, Devlin et al. 2019).  Only a
  bidirectional body lets it see the rest of the text.
- ``mean``: the average over positions.

Texts of different lengths are never padded: a batch is run one length at a time, so no
attention mask is needed and every pooling mode is exact for causal and bidirectional bodies.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from tformer_cli.core.config import ModelConfig
from tformer_cli.core.model import build_model


class BagOfTokens(nn.Module):
    """The baseline body: each token's embedding, normed, with no mixing between positions.
    Mean-pooled it is a linear model of the token frequencies: it cannot see order."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def forward(self, idx: torch.Tensor):
        return _Hidden(self.ln_f(self.tok_emb(idx)))


class _Hidden:
    def __init__(self, h: torch.Tensor):
        self.logits = h  # the name a language model's output uses; here (B, T, C) hidden states


def make_body(cfg: ModelConfig, vocab_size: int, body: str = "transformer") -> nn.Module:
    """The body for ``body`` ("transformer": cfg.arch, i.e. the GPT or the LSTM; "bag")."""
    if body == "bag":
        return BagOfTokens(cfg, vocab_size)
    lm = build_model(cfg, vocab_size)
    lm.lm_head = nn.Identity()  # forward() now ends at ln_f: (B, T, C) hidden states
    lm.padding_rows = 0  # no logits left to cut to the vocabulary (model.vocab_multiple)
    return lm


class Classifier(nn.Module):
    """body -> pool -> dropout -> Linear(d_model, n_labels)."""

    def __init__(self, body: nn.Module, d_model: int, n_labels: int, pool: str):
        super().__init__()
        self.body, self.pool = body, pool
        self.head = nn.Linear(d_model, n_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self) -> ModelConfig:
        return self.body.cfg

    def pooled(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) of equal-length texts -> (B, C)."""
        h = self.body(idx).logits  # (B, T, C)
        if self.pool == "last":
            return h[:, -1]
        if self.pool == "first":
            return h[:, 0]
        return h.mean(dim=1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(idx))  # (B, n_labels)

    def logits(self, seqs: list[list[int]], device) -> torch.Tensor:
        """Logits (N, n_labels) of texts of any lengths: one forward pass per length, no padding."""
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(seqs):
            by_len[len(s)].append(i)
        parts, order = [], []
        for idx in by_len.values():
            parts.append(self(torch.tensor([seqs[i] for i in idx], dtype=torch.long, device=device)).float())
            order += idx
        inverse = torch.empty(len(seqs), dtype=torch.long, device=device)
        inverse[torch.tensor(order, device=device)] = torch.arange(len(seqs), device=device)
        return torch.cat(parts)[inverse]  # back in the order of ``seqs``

    def loss(self, seqs: list[list[int]], y: list[int], device) -> torch.Tensor:
        target = torch.tensor(y, dtype=torch.long, device=device)
        return F.cross_entropy(self.logits(seqs, device), target)

    def freeze_body(self) -> None:
        """Only the head learns; the body stays in eval mode (no dropout) and gets no gradients."""
        for p in self.body.parameters():
            p.requires_grad_(False)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_classifier(cfg: ModelConfig, vocab_size: int, n_labels: int, pool: str,
                     body: str = "transformer") -> Classifier:
    return Classifier(make_body(cfg, vocab_size, body), cfg.d_model, n_labels, pool)


def body_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A language model's tensors as the body's: its LM head (tied or not) is not part of it."""
    return {f"body.{k}": v for k, v in state.items() if not k.startswith("lm_head.")}
