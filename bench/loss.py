"""The language-model loss of low-precision logits: F.cross_entropy on a float32 copy against the
chunked loss (tformer_cli/core/loss.py), forward and backward, side by side.

    python -m bench.loss [--device cuda] [--dtype bfloat16] [--rows 12288] [--vocab 50304] [--repeats 5]

The default shape is GPT-2's training step (B12 x T1024 rows, the padded 50,304-column head).
Printed per path: milliseconds for the loss and its gradient (median of the repeats, after one
warm-up), the peak memory above the logits themselves (CUDA: torch.cuda.max_memory_allocated;
elsewhere not measured), and the largest difference of the loss and the gradient from the plain
path's.  The two paths alternate (A B A B) in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.common import table
from tformer_cli.core.loss import chunked_cross_entropy


def plain(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What the loss was before core/loss.py: the whole tensor cast to float32 first."""
    return F.cross_entropy(logits.float(), targets)


def one(fn, logits: torch.Tensor, targets: torch.Tensor, device: torch.device):
    x = logits.detach().requires_grad_()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    loss = fn(x, targets)
    (grad,) = torch.autograd.grad(loss, x)
    if cuda:
        torch.cuda.synchronize()
    ms = 1000 * (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() - base if cuda else None
    return ms, peak, loss.detach().float(), grad


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--rows", type=int, default=12 * 1024)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(a.rows, a.vocab, device=device, generator=g).to(dtype)
    targets = torch.randint(0, a.vocab, (a.rows,), device=device, generator=g)
    paths = {"float32 copy + F.cross_entropy": plain, "chunked (core/loss.py)": chunked_cross_entropy}
    times = {k: [] for k in paths}
    peaks, out = {}, {}
    for fn in paths.values():  # warm-up
        one(fn, logits, targets, device)
    for _ in range(a.repeats):
        for name, fn in paths.items():
            ms, peak, loss, grad = one(fn, logits, targets, device)
            times[name].append(ms)
            peaks[name], out[name] = peak, (loss, grad)
    ref_loss, ref_grad = out["float32 copy + F.cross_entropy"]
    rows = []
    for name in paths:
        loss, grad = out[name]
        peak = "not measured" if peaks[name] is None else f"{peaks[name] / 2**20:,.0f} MiB"
        d_grad = (grad.float() - ref_grad.float()).abs().max().item()
        rows.append([name, f"{statistics.median(times[name]):.2f}", peak, f"{abs(loss - ref_loss).item():.2e}",
                     f"{d_grad:.2e}"])
    print(f"{a.rows:,} rows x {a.vocab:,} columns of {a.dtype} logits on {device}; median of {a.repeats}")
    print(table(["path", "ms (loss + grad)", "peak memory above the logits", "|Δ loss|", "max |Δ grad|"], rows))


if __name__ == "__main__":
    main()
