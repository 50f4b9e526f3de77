"""Validation losses: teacher-forced, and causal-consistent (each prediction from its prefix only)."""

from __future__ import annotations

import math

import torch

from tformer_cli.core import device as dev
from tformer_cli.train.batches import Batcher


@torch.no_grad()
def evaluate(model, batcher: Batcher, n_batches: int, device, dtype, split: str = "val") -> float:
    """Mean teacher-forced loss over fixed windows (the same windows at every evaluation)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for x, y in batcher.eval_batches(split, n_batches):
        with dev.autocast(device, dtype):
            out = model(x, y)
        total += out.loss.double()
        count += 1
    if batcher.dist.world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(total)
        tdist.all_reduce(count)
    model.train(was_training)
    return (total / count.clamp(min=1)).item()


@torch.no_grad()
def causal_consistent_loss(model, batcher: Batcher, n_windows: int, device, dtype) -> float:
    """Loss where the prediction for position t sees tokens <= t only (a forward pass per prefix).

    For a causal model this equals the teacher-forced loss; for a model trained without the
    mask it exposes the leak: at generation time the future is not there to copy.
    """
    if batcher.mlm:
        raise ValueError("causal-consistent loss is defined for next-token (clm) models, not MLM")
    was_training = model.training
    model.eval()
    losses = []
    done = 0
    for x, y in batcher.eval_batches("val", max(1, math.ceil(n_windows / batcher.cfg.train.batch_size))):
        x, y = x[: n_windows - done], y[: n_windows - done]
        T = x.size(1)
        for t in range(T):
            with dev.autocast(device, dtype):
                logits = model(x[:, : t + 1], last_only=True).logits[:, -1, :].float()
            losses.append(torch.nn.functional.cross_entropy(logits, y[:, t], reduction="none"))
        done += x.size(0)
        if done >= n_windows:
            break
    model.train(was_training)
    return torch.cat(losses).mean().item()
