"""The language-model loss: the mean cross-entropy over the positions that have a target, in float32.

Two ways to the same number.  Float32 logits (the CPU, and every run that computes in float32) go
to F.cross_entropy as they are.  Logits in a lower precision (bfloat16 or float16 autocast on a
GPU) would first need a float32 copy of the whole (positions x vocabulary) tensor, and
F.cross_entropy keeps its float32 log-probabilities for the backward: at GPT-2's vocabulary and a
batch of 12 x 1,024 tokens that is two float32 tensors of 2.5 GB written and read once more each
step.  ``chunked_cross_entropy`` reads the logits a chunk of rows at a time, each chunk cast to
float32 only while it is used: the forward keeps one log-sum-exp per row, the backward recomputes
each chunk's softmax from the saved low-precision logits and writes the gradient in their dtype.
It is exact up to float32 rounding (tests/test_model.py holds it to 1e-5 against F.cross_entropy
in float32, loss and gradient) and works under torch.func.vmap (the batched trainer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # a target that takes no loss
CHUNK_ELEMENTS = 1 << 24  # float32 elements of one chunk of rows (64 MiB)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (..., V) against ``targets`` (...) over the positions whose
    target is not IGNORE, in float32."""
    flat, tgt = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    if logits.dtype == torch.float32:
        return F.cross_entropy(flat, tgt, ignore_index=IGNORE)
    return chunked_cross_entropy(flat, tgt)


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """The mean cross-entropy of ``logits`` (N, V) in any float dtype against ``targets`` (N,),
    never holding more than a chunk of float32 log-probabilities (``chunk_rows`` rows; default:
    CHUNK_ELEMENTS elements)."""
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(logits.size(-1), 1))
    return _ChunkedCrossEntropy.apply(logits, targets, rows)[0]


class _ChunkedCrossEntropy(torch.autograd.Function):
    generate_vmap_rule = True  # every op below is vmappable: the batched trainer's seeds

    @staticmethod
    def forward(logits, targets, rows):
        n = logits.size(0)
        lse = torch.cat([torch.logsumexp(logits[i:i + rows].float(), dim=-1) for i in range(0, n, rows)])
        valid = targets != IGNORE
        picked = logits.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1).float()
        count = valid.sum().clamp_min(1)
        loss = torch.where(valid, lse - picked, torch.zeros_like(lse)).sum() / count
        return loss, lse, count

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, targets, rows = inputs
        _, lse, count = output
        ctx.save_for_backward(logits, targets, lse, count)
        ctx.rows = rows
        ctx.mark_non_differentiable(lse, count)

    @staticmethod
    def backward(ctx, grad, _lse, _count):
        logits, targets, lse, count = ctx.saved_tensors
        rows, n = ctx.rows, logits.size(0)
        scale = grad / count
        parts = []
        for i in range(0, n, rows):
            t = targets[i:i + rows]
            p = torch.softmax(logits[i:i + rows], dim=-1, dtype=torch.float32)  # the chunk's, read as float32
            p = p.scatter_add(1, t.clamp_min(0).unsqueeze(1), -torch.ones_like(lse[i:i + rows]).unsqueeze(1))
            parts.append((p * ((t != IGNORE).to(p.dtype) * scale).unsqueeze(1)).to(logits.dtype))
        return torch.cat(parts), None, None
