"""Where the time of a training step or of one generated token goes, by PyTorch operator.

    python bench/op_profile.py train                    # nanoGPT's CPU shape (shakespeare_char preset)
    python bench/op_profile.py train --set model.n_layer=6 --set model.n_head=6 --set model.d_model=384 \\
        --set model.block_size=256 --set model.dropout=0.2 --set train.batch_size=16
    python bench/op_profile.py decode --set model.block_size=256   # one cached token at a time
    python bench/op_profile.py train --nanogpt .bench_scratch/nanogpt  # nanoGPT's step, same shape

Random weights and token ids (speed does not depend on them); prints the operators with the most
self time, as a share of the total and in microseconds per call, plus the timed matmul peaks.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tformer_cli.core.config import parse_set, resolve
from tformer_cli.core.device import timed_matmul, tune_cpu_allocator
from tformer_cli.core.generate import generate
from tformer_cli.core.model import build_model
from tformer_cli.train.optim import make_optimizer

VOCAB = 65


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("train", "decode"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a config override, as in tformer")
    ap.add_argument("--steps", type=int, default=10, help="profiled steps (train) or tokens x 10 (decode)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--nanogpt", help="profile nanoGPT's model.py from this folder instead (train, "
                    "shakespeare_char shape; the suite copies it to .bench_scratch/nanogpt)")
    args = ap.parse_args()
    if args.nanogpt and args.what != "train":
        ap.error("--nanogpt profiles a training step only")
    tune_cpu_allocator()
    cfg = resolve(preset="shakespeare_char", overrides=parse_set(args.sets))
    torch.manual_seed(0)
    model, opt = _nanogpt(args.nanogpt) if args.nanogpt else (build_model(cfg.model, VOCAB), None)
    loss_of = (lambda x: model(x, x)[1]) if args.nanogpt else (lambda x: model(x, x).loss)
    if args.what == "train":
        opt = opt or make_optimizer(model, cfg, torch.device("cpu"))
        x = torch.randint(0, VOCAB, (cfg.train.batch_size, cfg.model.block_size))

        def work() -> None:
            loss_of(x).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        n = args.steps
    else:
        model.eval()

        def work() -> None:
            for _ in generate(model, [1, 2, 3], 10, temperature=0):
                pass
        n = args.steps
    work()
    work()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            work()
        wall = time.perf_counter() - t0
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    unit = "step" if args.what == "train" else "token"
    per = n if args.what == "train" else 10 * n
    print(f"{args.what}: {1000 * wall / per:.2f} ms per {unit} under the profiler, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'operator':45s} {'share':>7s} {'calls/' + unit:>12s} {'us/call':>9s}")
    for e in events[: args.top]:
        print(f"{e.key[:45]:45s} {100 * e.self_cpu_time_total / total:6.1f}% {e.count / per:12.1f} "
              f"{e.self_cpu_time_total / e.count:9.1f}")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"timed matmul peak, {str(dtype)[6:]}: {timed_matmul(torch.device('cpu'), dtype) / 1e9:.0f} GFLOP/s")


def _nanogpt(folder: str):
    """nanoGPT's GPT at the shakespeare_char shape and its own AdamW (bench/nanogpt_driver.py)."""
    import contextlib
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import nanogpt_driver

    model = nanogpt_driver.build(folder, nanogpt_driver.SMALL, VOCAB)
    with contextlib.redirect_stdout(sys.stderr):
        return model, model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")


if __name__ == "__main__":
    main()
