"""tformer's and nanoGPT's eager training steps side by side, kernel by kernel.

    python -m bench.eager_ab                              # CUDA: GPT-2 small, B12 T1024 V50304, bf16 autocast
    python -m bench.eager_ab --device cpu --small         # a tiny shape on the CPU: operators, checks the script

Issue 18 measured tformer's eager step 10% slower than nanoGPT's at B12 T1024 on an H100 (40.6
against 36.3 ms), while on the CPU the two steps run the same operators on the same shapes and
dtypes (only the position embedding's gather and a division by grad_accum differ).  This script
builds both steps as bench/gpu_step.py does (the same model shape, a fixed random batch, bf16
autocast, clip 1.0, fused AdamW on CUDA, no compile), times each, then profiles --steps steps of
each and prints, per kernel name (per operator on the CPU), the calls and microseconds per step of
both and their difference, largest differences first, then the same by kind (matmul, attention,
cross-entropy, optimizer, other).  Kernel names come last on a line, whole: a log is read, not a
terminal.  nanoGPT's model.py comes from --nanogpt (`python -m bench.suite --prepare-only`
copies it into the git-ignored .bench_scratch/nanogpt).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench import gpu_step, nanogpt_driver
from bench.common import SCRATCH
from bench.op_profile import kernel_times, kind_of
from tformer_cli.core.device import sync
from tformer_cli.train.bench import StepBench

SMALL_SETS = {"model.n_layer": 2, "model.block_size": 64, "model.n_head": 4, "model.d_model": 128}
PROJECTS = ("tformer", "nanogpt")


def steps(args) -> dict:
    """Each project's training step (a callable), built as bench/gpu_step.py builds them."""
    v = gpu_step.parse_variant(f"tformer:eager:B{args.batch}:V{args.vocab}")
    sets = SMALL_SETS if args.small else None
    tformer = StepBench(gpu_step.config(v, args.device, sets), args.vocab).train_step
    shape = dict(nanogpt_driver.GPT2, batch=args.batch)
    if args.small:
        shape.update(n_layer=2, block_size=64, n_head=4, n_embd=128)
    nanogpt = nanogpt_driver.train_step(args.nanogpt, shape, args.vocab, args.device, False, bf16=True)
    return {"tformer": tformer, "nanogpt": nanogpt}


def wall_ms(step, device: torch.device, n: int) -> list[float]:
    out = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def per_name(prof, cuda: bool) -> dict[str, tuple[int, float]]:
    """{kernel (CUDA) or operator (CPU, self time): (calls, microseconds)} over the profile."""
    if cuda:
        return {name: (len(us), sum(us)) for name, us in kernel_times(prof.events()).items()}
    return {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages()}


def rows(a: dict, b: dict, n: int, top: int) -> list[str]:
    """The per-name comparison: calls and us per step of each, the difference (a - b), largest first."""
    names = sorted(set(a) | set(b), key=lambda k: -abs(a.get(k, (0, 0.0))[1] - b.get(k, (0, 0.0))[1]))
    head = f"{'tformer us':>10s} {'calls':>6s} {'nanoGPT us':>10s} {'calls':>6s} {'diff us':>9s}  name (per step)"
    out = [head]
    for k in names[:top]:
        (ca, ua), (cb, ub) = a.get(k, (0, 0.0)), b.get(k, (0, 0.0))
        out.append(f"{ua / n:10.1f} {ca / n:6.1f} {ub / n:10.1f} {cb / n:6.1f} {(ua - ub) / n:+9.1f}  {k}")
    return out


def by_kind(a: dict, b: dict, n: int) -> list[str]:
    kinds: dict[str, list[float]] = {}
    for side, d in enumerate((a, b)):
        for name, (_, us) in d.items():
            kinds.setdefault(kind_of(name), [0.0, 0.0])[side] += us / n
    out = [f"{'tformer us':>10s} {'nanoGPT us':>10s} {'diff us':>9s}  kind (per step)"]
    for kind, (ua, ub) in sorted(kinds.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1])):
        out.append(f"{ua:10.1f} {ub:10.1f} {ua - ub:+9.1f}  {kind}")
    out.append(f"{sum(v[0] for v in kinds.values()):10.1f} {sum(v[1] for v in kinds.values()):10.1f} "
               f"{sum(v[0] - v[1] for v in kinds.values()):+9.1f}  all")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    ap.add_argument("--small", action="store_true", help="2 layers, d128, block 64: a check on the CPU")
    ap.add_argument("--batch", type=int, default=None, help="micro-batch (default 12; 2 with --small)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default 50304; 512 with --small)")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps of each (default 3)")
    ap.add_argument("--timed", type=int, default=10, help="steps of each timed without the profiler (default 10)")
    ap.add_argument("--top", type=int, default=25, help="names listed (default 25)")
    ap.add_argument("--nanogpt", default=os.path.join(SCRATCH, "nanogpt"))
    args = ap.parse_args()
    args.batch = args.batch or (2 if args.small else 12)
    args.vocab = args.vocab or (512 if args.small else 50304)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("eager_ab.py: no CUDA device here; check the script on the CPU with --device cpu --small")
    if not os.path.exists(os.path.join(args.nanogpt, "model.py")):
        sys.exit(f"eager_ab.py: no nanoGPT model.py in {args.nanogpt}: run `python -m bench.suite --prepare-only` "
                 "where ../shared exists, or pass --nanogpt")
    if args.device == "cpu":
        torch.set_num_threads(1)
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"eager_ab.py, {datetime.date.today().isoformat()}: {name}, torch {torch.__version__}, eager, bf16 "
          f"autocast, B{args.batch}, vocab {args.vocab}{', small shape' if args.small else ', GPT-2 small T1024'}")
    built = steps(args)
    for step in built.values():  # warm-up: cuBLAS handles, autotuning, the allocator
        wall_ms(step, device, 3)
    times = {p: [] for p in PROJECTS}
    for _ in range(args.timed):  # alternating, so drift hits both alike
        for p in PROJECTS:
            times[p] += wall_ms(built[p], device, 1)
    for p in PROJECTS:
        print(f"{p}: {statistics.median(times[p]):.2f} ms/step (median of {args.timed}, "
              f"{min(times[p]):.2f}-{max(times[p]):.2f}), unprofiled")
    print(f"tformer / nanoGPT: {statistics.median(times['tformer']) / statistics.median(times['nanogpt']):.3f}")
    found = {}
    for p in PROJECTS:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(args.steps):
                built[p]()
            sync(device)
        found[p] = per_name(prof, cuda)
    what = "kernels (device time)" if cuda else "operators (CPU self time)"
    print(f"\nby {what}, {args.steps} profiled steps of each, largest differences first:")
    print("\n".join(rows(found["tformer"], found["nanogpt"], args.steps, args.top)))
    print(f"\nby kind of {what}:")
    print("\n".join(by_kind(found["tformer"], found["nanogpt"], args.steps)))


if __name__ == "__main__":
    main()
