"""Training and scoring one sequence-to-sequence model: the encoder-decoder (core/encdec.py), or a
decoder-only GPT that reads ``source SEP`` as a prefix and is trained on the target tokens only.

As elsewhere, the batch of step s comes from a generator seeded by (seed, s), so two models
given the same seed see the same pairs in the same order.  The score is greedy decoding with
the cache on the held-out pairs: exact match (every target token right) and token accuracy.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from tformer_cli.core import seq2seq as tasks
from tformer_cli.core.config import ModelConfig
from tformer_cli.core.data import mix_seed
from tformer_cli.core.encdec import EncoderDecoder, greedy_encdec, greedy_prefix
from tformer_cli.core.model import GPT
from tformer_cli.errors import RunError, Stopped

ARCHS = ("encdec", "gpt")


@dataclass
class Scored:
    exact_match: float
    token_accuracy: float
    train_loss: float
    params: int
    elapsed_s: float


def build(arch: str, cfg: ModelConfig, src_len: int, tgt_len: int) -> torch.nn.Module:
    """The model of ``arch`` (encdec: cfg.n_layer blocks in each stack; gpt: cfg.n_layer blocks)."""
    if arch == "encdec":
        return EncoderDecoder(dataclasses.replace(cfg, block_size=max(src_len, tgt_len)), tasks.VOCAB)
    return GPT(dataclasses.replace(cfg, block_size=src_len + 1 + tgt_len, causal=True), tasks.VOCAB)


def _loss(model, arch: str, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    if arch == "encdec":
        bos = torch.full((src.size(0), 1), tasks.BOS, dtype=torch.long, device=src.device)
        return model(src, torch.cat([bos, tgt[:, :-1]], dim=1), tgt).loss
    sep = torch.full((src.size(0), 1), tasks.SEP, dtype=torch.long, device=src.device)
    seq = torch.cat([src, sep, tgt], dim=1)  # (B, S + 1 + T)
    y = seq[:, 1:].clone()
    y[:, : src.size(1)] = -100  # no loss on the source: the GPT is trained on the target only
    return model(seq[:, :-1], y).loss


def train_and_score(arch: str, cfg: ModelConfig, task: str, seed: int, steps: int, batch: int, lr: float,
                    should_stop: Callable[[], bool] = lambda: False) -> Scored:
    """Train a fresh ``arch`` model on ``task`` and score it on the held-out pairs."""
    t0 = time.perf_counter()
    train, test = tasks.pairs(task)
    torch.manual_seed(seed)
    model = build(arch, cfg, train.src_len, train.tgt_len)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    src_all, tgt_all = torch.tensor(train.src), torch.tensor(train.tgt)
    model.train()
    losses = []
    for step in range(steps):
        if should_stop():
            raise Stopped("the seq2seq comparison", hint="run the same command again")
        for g in opt.param_groups:  # linear warm-up over the first tenth, then linear decay
            g["lr"] = lr * min((step + 1) / max(1, steps // 10), (steps - step) / (steps - steps // 10 + 1e-9))
        idx = np.random.Generator(np.random.PCG64(mix_seed(seed, step))).integers(0, len(train.src), size=batch)
        loss = _loss(model, arch, src_all[idx], tgt_all[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if losses and not np.isfinite(losses[-1]):
        raise RunError(f"the {arch} loss became NaN or infinite", hint="lower --lr")
    exact, tok = score(model, arch, test)
    tail = losses[-max(1, steps // 10):]
    return Scored(exact, tok, float(np.mean(tail)) if tail else float("nan"), model.num_params(),
                  time.perf_counter() - t0)


def decode(model, arch: str, src: torch.Tensor, n: int, use_cache: bool = True) -> torch.Tensor:
    if arch == "encdec":
        return greedy_encdec(model, src, n, tasks.BOS, use_cache)
    return greedy_prefix(model, src, n, tasks.SEP, use_cache)


def score(model, arch: str, test, chunk: int = 250) -> tuple[float, float]:
    """(exact match, token accuracy) of greedy cached decoding on ``test``."""
    model.eval()
    right, tokens = 0, 0
    for i in range(0, len(test.src), chunk):
        src, tgt = torch.tensor(test.src[i:i + chunk]), torch.tensor(test.tgt[i:i + chunk])
        out = decode(model, arch, src, test.tgt_len)
        right += int((out == tgt).all(dim=1).sum())
        tokens += int((out == tgt).sum())
    model.train()
    return right / len(test.src), tokens / (len(test.src) * test.tgt_len)
