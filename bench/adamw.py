"""AdamW implementations side by side on the nanoGPT CPU shape: fused (one kernel) vs foreach.

    python -m bench.adamw

Same model, data and steps for both; the two are interleaved and repeated (A B A B A B), and the
median training-step time of each is printed in milliseconds.
"""

from __future__ import annotations

import statistics
import time

import torch

from tformer_cli.core.config import resolve
from tformer_cli.core.device import tune_cpu_allocator
from tformer_cli.core.model import build_model


def step_ms(impl: str, steps: int = 40, warmup: int = 10) -> float:
    cfg = resolve(preset="shakespeare_char")
    torch.manual_seed(0)
    model = build_model(cfg.model, 65)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, **{impl: True})
    x = torch.randint(0, 65, (12, 64))
    y = torch.randint(0, 65, (12, 64))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        model(x, y).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


if __name__ == "__main__":
    tune_cpu_allocator()
    runs: dict[str, list[float]] = {"foreach": [], "fused": []}
    for _ in range(3):
        for impl in runs:
            runs[impl].append(step_ms(impl))
    for impl, ms in runs.items():
        print(f"{impl:8s} median step {statistics.median(ms):.1f} ms  (runs: {', '.join(f'{m:.1f}' for m in ms)})")
