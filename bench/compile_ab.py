"""torch.compile (inductor, CPU) against eager on the nanoGPT CPU shape, side by side.

    python -m bench.compile_ab [--runs 2] [--steps 40]
    python -m bench.compile_ab --large --runs 1 --steps 2   # the 6-layer 384 shape

Each variant in its own process, interleaved (eager, compiled, eager, compiled ...): the
time of the first step (the compilation, cold or from inductor's on-disk cache) and the
median of the timed steps after warm-up, as JSON lines, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LARGE = {"model.n_layer": 6, "model.n_head": 6, "model.d_model": 384, "model.block_size": 256,
         "train.batch_size": 64, "model.dropout": 0.2}


def one(mode: str, steps: int, large: bool) -> dict:
    import torch

    from tformer_cli.core.config import resolve
    from tformer_cli.core.device import tune_cpu_allocator
    from tformer_cli.core.model import build_model
    from tformer_cli.train.optim import make_optimizer

    tune_cpu_allocator()
    cfg = resolve(preset="shakespeare_char", overrides=LARGE if large else {})
    torch.manual_seed(0)
    raw = build_model(cfg.model, 65)
    opt = make_optimizer(raw, cfg, torch.device("cpu"))
    model = torch.compile(raw) if mode == "compiled" else raw
    x, y = torch.randint(0, 65, (2, cfg.train.batch_size, cfg.model.block_size))

    def step() -> float:
        t0 = time.perf_counter()
        model(x, y).loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    first = step()
    for _ in range(1 if large else 4):
        step()
    ms = 1000 * statistics.median(step() for _ in range(steps))
    return {"mode": mode, "first_step_s": round(first, 2), "step_ms": round(ms, 2),
            "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--large", action="store_true", help="the 6-layer 384 shape, dropout 0.2")
    ap.add_argument("--one", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.large)))
        return
    for _ in range(args.runs):
        for mode in ("eager", "compiled"):
            cmd = [sys.executable, __file__, "--one", mode, "--steps", str(args.steps)] + ["--large"] * args.large
            print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())


if __name__ == "__main__":
    main()
