"""tformer and nanoGPT side by side, in one sitting, as markdown tables.

    python -m bench.suite                    # ~6 min on 2 cores
    python -m bench.suite --steps 100        # a shorter end-to-end run
    python -m bench.suite --large            # also the 6-layer 384 shape (~10 min more)
    python -m bench.suite --large-only       # only that shape
    python -m bench.suite --threads 1        # one thread each (a machine shared with others)
    python -m bench.suite --prepare-only     # copy nanoGPT into .bench_scratch/ (before a GPU session)
    python -m bench.suite --gpu              # on a CUDA machine: bench/gpu_suite.py's sections, < 6 min

nanoGPT is not part of this repository: its model.py (and LICENSE) are copied from
--nanogpt into the git-ignored .bench_scratch/ folder, with the Shakespeare text
encoded there as nanoGPT's prepare.py would (characters, 90/10 split, uint16), and
bench/nanogpt_driver.py runs its train.py loop, a pure training step and its
generate.  Every variant runs in its own process; the variants are interleaved
(A B A B ...) and each table gives the median and the spread (min-max) over --runs
repeats.  Every ratio is computed from figures of this invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable

from bench.common import ROOT, SCRATCH, cell, table

SMALL = ["--preset", "shakespeare_char"]  # L4 H4 d128 T64 B12, dropout 0
LARGE = SMALL + [a for k in ("model.n_layer=6", "model.n_head=6", "model.d_model=384",
                             "model.block_size=256", "train.batch_size=64", "model.dropout=0.2")
                 for a in ("--set", k)]


def run_json(cmd: list[str]) -> tuple[dict, float]:
    """Run one variant in a fresh process; its JSON output and its wall time."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout), wall


def tformer(*args: str) -> list[str]:
    return [sys.executable, "-m", "tformer_cli", *args, "--json"]


def nanogpt(mode: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench.nanogpt_driver", mode, "--nanogpt", os.path.join(SCRATCH, "nanogpt"), *args]


def interleaved(variants: dict[str, Callable[[], dict]], runs: int) -> dict[str, dict[str, list]]:
    """Call each variant `runs` times, A B A B ..., so that drift hits all of them alike;
    for each variant, each figure it returns as a list over the runs."""
    got: dict[str, dict[str, list]] = {k: {} for k in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            figures = fn()
            for key, value in figures.items():
                got[name].setdefault(key, []).append(value)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if v is not None)
            print(f"  {name}: {shown}", file=sys.stderr)
    return got


def ratio(num: list[float], den: list[float]) -> str:
    return f"{statistics.median(num) / statistics.median(den):.2f}x"


def prepare_scratch(nanogpt_src: str, text_path: str, scratch: str = SCRATCH) -> str:
    """nanoGPT's model.py in .bench_scratch/nanogpt, and the text encoded as its
    prepare.py does (sorted characters, first 90% train, uint16); the data folder."""
    import numpy as np

    code = os.path.join(scratch, "nanogpt")
    os.makedirs(code, exist_ok=True)
    for name in ("model.py", "LICENSE"):
        shutil.copy(os.path.join(nanogpt_src, name), code)
    data = os.path.join(scratch, "shakespeare_char")
    os.makedirs(data, exist_ok=True)
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([index[c] for c in text], dtype=np.uint16)
    cut = int(0.9 * len(ids))
    ids[:cut].tofile(os.path.join(data, "train.bin"))
    ids[cut:].tofile(os.path.join(data, "val.bin"))
    return data


def end_to_end(args, data: str) -> list[list[str]]:
    """The training command, data loading and evaluation included: wall time of the process."""
    def ours() -> dict:
        r, wall = run_json(tformer("train", *SMALL, "--data", args.data, "--steps", str(args.steps),
                                   "--out", os.path.join(SCRATCH, "tformer_run"), "--overwrite"))
        return {"wall": wall, "val": r.get("val_loss")}

    def theirs() -> dict:
        r, wall = run_json(nanogpt("train", "--data", data, "--steps", str(args.steps),
                                   "--out", os.path.join(SCRATCH, "nanogpt_out")))
        return {"wall": wall - r["extra_s"], "val": r["val_loss"]}

    print(f"end to end, {args.steps} steps", file=sys.stderr)
    got = interleaved({"tformer": ours, "nanoGPT": theirs}, args.runs)
    t, n = got["tformer"], got["nanoGPT"]
    return [[f"train {args.steps} steps, wall s", cell(t["wall"]), cell(n["wall"]), ratio(n["wall"], t["wall"])],
            ["  final val loss", cell(t["val"], "{:.3f}"), cell(n["val"], "{:.3f}"), "-"]]


def step_rows(label: str, ours: list[str], theirs: list[str], runs: int) -> list[list[str]]:
    """A pure training step (random ids, after warm-up): median ms/step of each process."""
    print(label, file=sys.stderr)
    got = interleaved({"tformer": lambda: {"ms": run_json(tformer("bench", *ours))[0]["step_ms"]},
                       "nanoGPT": lambda: {"ms": run_json(nanogpt("step", *theirs))[0]["step_ms"]}}, runs)
    t, n = got["tformer"]["ms"], got["nanoGPT"]["ms"]
    return [[label, cell(t, "{:.0f}" if t[0] > 1000 else "{:.1f}"),
             cell(n, "{:.0f}" if n[0] > 1000 else "{:.1f}"), ratio(n, t)]]


def sampling_rows(runs: int) -> list[list[str]]:
    """500 new tokens from a random-weight model of the small shape: tformer's KV cache
    against nanoGPT's generate (a full forward over the window for every token)."""
    rows = []
    for block in (64, 256):
        run = os.path.join(SCRATCH, f"sample_block{block}")
        run_json(tformer("train", *SMALL, "--steps", "1", "--set", f"model.block_size={block}",
                         "--set", "train.eval_iters=1", "--out", run, "--overwrite"))
        ours = tformer("sample", run, "--bench", "--prompt", "ROMEO:", "--max-new-tokens", "500", "--seed", "0")
        print(f"sampling, block {block}", file=sys.stderr)
        got = interleaved({
            "tformer": lambda: {"tps": run_json(ours)[0]["cached"]["tokens_per_s"]},
            "nanoGPT": lambda: {"tps": run_json(nanogpt("sample", "--block", str(block)))[0]["tokens_per_s"]},
        }, runs)
        t, n = got["tformer"]["tps"], got["nanoGPT"]["tps"]
        rows.append([f"sample 500, block {block}, tok/s", cell(t, "{:.0f}"), cell(n, "{:.0f}"), ratio(t, n)])
    return rows


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores,  \ntorch {torch.__version__} "
            f"({torch.get_num_threads()} thread(s)), Python {platform.python_version()}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(args, data: str) -> list[list[str]]:
    rows = []
    if not args.large_only:
        rows += end_to_end(args, data)
        rows += step_rows("step L4 d128 T64 B12, ms", ["--steps", "40", *SMALL],
                          ["--steps", "40"], args.runs)
        rows += sampling_rows(args.runs)
    if args.large or args.large_only:
        for dtype, flag in (("float32", []), ("bfloat16", ["--bf16"])):
            rows += step_rows(f"step L6 d384 T256 {'bf16' if flag else 'fp32'}, ms",
                              ["--steps", "2", "--warmup", "1", "--dtype", dtype, *LARGE],
                              ["--steps", "2", "--warmup", "1", "--large", *flag], args.runs)
    return rows


def report(rows: list[list[str]], loads: tuple[str, str], minutes: float, runs: int) -> str:
    """The markdown the suite prints: date, machine, load before and after, the table."""
    return "\n".join([
        f"## tformer vs nanoGPT, {time.strftime('%Y-%m-%d %H:%M')}", "",
        f"Machine: {machine()}.  ",
        f"Load average (1, 5, 15 min): {loads[0]} before, {loads[1]} after.  ",
        f"{minutes:.0f} min; {runs} interleaved runs; median (min-max).", "",
        table(["measure", "tformer", "nanoGPT", "tformer speed-up"], rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="repeats of each variant (default 3)")
    ap.add_argument("--steps", type=int, default=600, help="training steps end to end (default 600)")
    ap.add_argument("--large", action="store_true", help="also the 6-layer 384 shape, float32 and bfloat16")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every variant (default: torch's)")
    ap.add_argument("--large-only", action="store_true", help="only the 6-layer 384 shape")
    ap.add_argument("--nanogpt", default=os.path.join(ROOT, "..", "shared", "anchors", "nanogpt"),
                    help="a nanoGPT checkout (model.py is copied from it)")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"),
                    help="tinyshakespeare.txt")
    ap.add_argument("--prepare-only", action="store_true",
                    help="copy nanoGPT's model.py and the encoded text into .bench_scratch/ and stop")
    ap.add_argument("--gpu", action="store_true", help="the GPU sections (bench/gpu_suite.py) instead")
    ap.add_argument("--sections", default="abcde", help="with --gpu: which of a b c d e (default all)")
    ap.add_argument("--budget-s", type=float, default=330, help="with --gpu: seconds for the whole run")
    ap.add_argument("--gpu-blocks", type=int, default=3, help="with --gpu: interleaved rounds per step table")
    ap.add_argument("--gpu-steps", type=int, default=10, help="with --gpu: steps per round")
    ap.add_argument("--gpu-b", default=None, help="with --gpu: section b's variants, comma-separated "
                    "(bench/gpu_step.py's syntax; default all four)")
    args = ap.parse_args()
    if bad := set(args.sections) - set("abcde"):
        ap.error(f"--sections: unknown {''.join(sorted(bad))} (give letters of abcde)")
    if args.prepare_only:
        data = prepare_scratch(args.nanogpt, args.data)
        print(f"prepared {os.path.join(SCRATCH, 'nanogpt')} and {data}; carry .bench_scratch to the GPU machine")
        return
    if args.gpu:
        from bench.gpu_suite import run_gpu

        raise SystemExit(run_gpu(args))
    if args.threads:  # inherited by every variant's process, and by machine() below
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    data = prepare_scratch(args.nanogpt, args.data)
    before, t0 = load(), time.time()
    rows = measure(args, data)
    print(report(rows, (before, load()), (time.time() - t0) / 60, args.runs))


if __name__ == "__main__":
    main()
