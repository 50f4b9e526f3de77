"""Validation losses: teacher-forced, and causal-consistent (each prediction from its prefix only)."""

from __future__ import annotations

import math

import torch

from tformer_cli.core import device as dev
from tformer_cli.errors import Stopped
from tformer_cli.train.batches import Batcher

STOPPED_MEASURING = "while measuring the causal-consistent loss"


@torch.no_grad()
def evaluate(model, batcher: Batcher, n_batches: int, device, dtype, split: str = "val",
             should_stop=None) -> float | None:
    """Mean teacher-forced loss over fixed windows (the same windows at every evaluation).

    ``should_stop`` is polled between batches (one process only: ranks must agree); when it
    says stop, the evaluation is abandoned and None returned."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for x, y in batcher.eval_batches(split, n_batches):
        if should_stop is not None and batcher.dist.world == 1 and should_stop():
            model.train(was_training)
            return None
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


CHECK_WINDOWS = 2  # windows on which a one-pass causal-consistent loss is checked against the prefix passes
CHECK_TOLERANCE = 1e-4  # nats; float32 summation order differs between the two paths


@torch.no_grad()
def window_losses(model, batcher: Batcher, n_windows: int, device, dtype, *, sees_future: bool,
                  should_stop=lambda: False) -> tuple[float, float]:
    """(teacher-forced, causal-consistent) validation loss on the SAME ``n_windows`` windows.

    A model that cannot see the future (a causal GPT, an LSTM) predicts position t from tokens
    <= t in its one teacher-forced pass, so its causal-consistent loss is that pass's loss: it is
    computed once and checked against the per-prefix passes on CHECK_WINDOWS windows (a
    RuntimeError if they disagree).  Only a model that can see the future (``sees_future``) pays
    block_size passes per window.  ``should_stop`` is polled between batches and between the
    prefix passes; when it says stop, ``Stopped`` is raised (nothing is measured).
    """
    if batcher.mlm:
        raise ValueError("causal-consistent loss is defined for next-token (clm) models, not MLM")
    was_training = model.training
    model.eval()
    tf, cc = [], []
    try:  # one kernel family for both passes, and no graph build per prefix length
        with dev.varying_shape_attention(torch.device(device)):
            for x, y in _windows(batcher, n_windows):
                if should_stop():
                    raise Stopped(STOPPED_MEASURING)
                with dev.autocast(device, dtype):
                    logits = model(x).logits.float()  # (B, T, V)
                per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, T)
                tf.append(per_token)
                if sees_future:
                    cc.append(_prefix_losses(model, x, y, device, dtype, should_stop))
                elif not cc:  # the check, once
                    k = min(CHECK_WINDOWS, x.size(0))
                    ref = _prefix_losses(model, x[:k], y[:k], device, dtype, should_stop)
                    gap = (ref - per_token[:k]).abs().max().item()
                    if gap > CHECK_TOLERANCE:
                        raise RuntimeError(f"a model that should not see the future does: one-pass and per-prefix "
                                           f"losses differ by {gap:.2g} nats")
                    cc.append(per_token)
                else:
                    cc.append(per_token)
    finally:
        model.train(was_training)
    return torch.cat(tf).mean().item(), torch.cat(cc).mean().item()


def _windows(batcher: Batcher, n_windows: int):
    """The first ``n_windows`` validation windows, in evaluate()'s order, batch by batch."""
    done = 0
    for x, y in batcher.eval_batches("val", max(1, math.ceil(n_windows / batcher.cfg.train.batch_size))):
        x, y = x[: n_windows - done], y[: n_windows - done]
        done += x.size(0)
        yield x, y
        if done >= n_windows:
            return


def _prefix_losses(model, x, y, device, dtype, should_stop) -> torch.Tensor:
    """(B, T) losses where position t is predicted by a forward pass on x[:, :t+1] alone."""
    cols = []
    for t in range(x.size(1)):
        if should_stop():
            raise Stopped(STOPPED_MEASURING)
        with dev.autocast(device, dtype):
            logits = model(x[:, : t + 1], last_only=True).logits[:, -1, :].float()
        cols.append(torch.nn.functional.cross_entropy(logits, y[:, t], reduction="none"))
    return torch.stack(cols, dim=1)
