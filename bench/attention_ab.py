"""Attention kernels at the nanoGPT CPU shape (B12 H4 T64, head 32), forward + backward.

    python -m bench.attention_ab [THREADS]

SDPA's flash kernel, SDPA's math path and an explicit masked softmax, interleaved five
times; prints the load average and each one's median milliseconds per call.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, T, D = 12, 4, 64, 32


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, T, D)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)

    def sdpa(backend):
        def run() -> None:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)
        return run

    def explicit() -> None:
        att = (q @ k.transpose(-2, -1) * D ** -0.5).masked_fill(future, float("-inf"))
        (att.softmax(-1) @ v).backward(grad)

    kinds = {"flash": sdpa(SDPBackend.FLASH_ATTENTION), "math": sdpa(SDPBackend.MATH), "explicit": explicit}
    got: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(5):
        for name, fn in kinds.items():
            for _ in range(3):
                fn()
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            got[name].append(1000 * statistics.median(times))
    print("load", os.getloadavg(), {k: round(statistics.median(v), 3) for k, v in got.items()})


if __name__ == "__main__":
    main()
