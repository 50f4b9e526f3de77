"""Re-measure every figure of BENCHMARKS.md in one command and print markdown tables.

    python bench/suite.py                      # training, sampling and start-up figures (~6 min on 2 cores)
    python bench/suite.py --full --data PATH   # also the 2000-step Shakespeare run (val loss)

Each variant runs in its own process (`tformer bench --json`), variants interleaved and
repeated, and the medians are reported, because shared machines are noisy.  Ratios are
computed between variants measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SMALL = ["--preset", "shakespeare_char"]  # nanoGPT's CPU shape: L4 H4 d128 T64 B12
LARGE = ["--preset", "shakespeare_char", "--set", "model.n_layer=6", "--set", "model.n_head=6",
         "--set", "model.d_model=384", "--set", "model.block_size=256", "--set", "train.batch_size=64",
         "--set", "model.dropout=0.2"]  # nanoGPT's GPU shape, run on the CPU

NANOGPT = {  # reference figures measured with nanoGPT's own scripts on this kind of machine (issue 5)
    "small_tps": 16_500, "large_tps": 1_740, "sample_tps": 580, "small_val_loss": 1.886,
}


def tformer(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "tformer_cli", *args, "--json"], capture_output=True,
                         text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise SystemExit(f"tformer {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def median_runs(variants: dict[str, tuple[list[str], dict]], runs: int) -> dict[str, list[dict]]:
    """Run each variant `runs` times, interleaved (A B A B ...), so drift hits all alike."""
    results: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(runs):
        for name, (args, env) in variants.items():
            results[name].append(tformer(*args, env=env))
            print(f"  {name}: {results[name][-1]['train_tokens_per_s']:,.0f} tok/s", file=sys.stderr)
    return results


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def training_tables(runs: int) -> str:
    print("training, nanoGPT CPU shape", file=sys.stderr)
    small = median_runs({
        "float32": (["bench", *SMALL, "--steps", "40"], {}),
        "float32, no heap tuning": (["bench", *SMALL, "--steps", "40"], {"TFORMER_NO_MALLOC_TUNING": "1"}),
        "bfloat16 autocast": (["bench", *SMALL, "--steps", "40", "--dtype", "bfloat16"], {}),
    }, runs)
    lines = ["| shape | variant | ms/step (median) | tokens/s | vs nanoGPT | MFU (own-dtype peak) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, rows in small.items():
        tps = med(rows, "train_tokens_per_s")
        lines.append(f"| L4 H4 d128 T64 B12 | {name} | {med(rows, 'step_ms'):.1f} | {tps:,.0f} | "
                     f"{tps / NANOGPT['small_tps']:.2f}x | {100 * med(rows, 'mfu'):.0f}% |")
    print("training, 6-layer 384 shape", file=sys.stderr)
    large = median_runs({
        "float32": (["bench", *LARGE, "--steps", "3", "--warmup", "1"], {}),
        "float32, no heap tuning": (["bench", *LARGE, "--steps", "3", "--warmup", "1"],
                                    {"TFORMER_NO_MALLOC_TUNING": "1"}),
        "bfloat16 autocast": (["bench", *LARGE, "--steps", "3", "--warmup", "1", "--dtype", "bfloat16"], {}),
    }, max(1, runs - 1))
    for name, rows in large.items():
        tps = med(rows, "train_tokens_per_s")
        lines.append(f"| L6 H6 d384 T256 B64 | {name} | {med(rows, 'step_ms'):.0f} | {tps:,.0f} | "
                     f"{tps / NANOGPT['large_tps']:.2f}x | {100 * med(rows, 'mfu'):.0f}% |")
    return "\n".join(lines)


def startup_table(repeats: int = 7) -> str:
    def wall(cmd: list[str]) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    exe = os.path.join(os.path.dirname(sys.executable), "tformer")
    help_s = wall([exe, "--help"])
    torch_s = wall([sys.executable, "-c", "import torch"])
    return ("| command | wall time (median of %d) |\n| --- | --- |\n| `tformer --help` | %.3f s |\n"
            "| `python -c \"import torch\"` (for scale) | %.2f s |" % (repeats, help_s, torch_s))


def sampling_table(tmpdir: str) -> str:
    """Cached vs recompute generation of 500 tokens from random-weight models of nanoGPT's shape."""
    lines = ["| block | KV cache tokens/s | recompute, same window | recompute, sliding crop (nanoGPT-style) "
             "| cache vs sliding crop | cache vs nanoGPT's 580 tokens/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for block in (64, 256):
        run = os.path.join(tmpdir, f"block{block}")
        tformer("train", *SMALL, "--steps", "1", "--set", f"model.block_size={block}",
                "--set", "train.eval_iters=1", "--out", run, "--overwrite")
        r = tformer("sample", run, "--bench", "--prompt", "ROMEO:", "--max-new-tokens", "500", "--seed", "0")
        cached, same, sliding = (r[k]["tokens_per_s"] for k in ("cached", "recompute", "sliding"))
        lines.append(f"| {block} | {cached:,.0f} | {same:,.0f} | {sliding:,.0f} | {cached / sliding:.1f}x | "
                     f"{cached / NANOGPT['sample_tps']:.1f}x |")
    return "\n".join(lines)


def full_run(data: str, tmpdir: str) -> str:
    r = tformer("train", *SMALL, "--data", data, "--out", os.path.join(tmpdir, "full"), "--overwrite")
    return (f"| steps | val loss | nanoGPT val loss | wall time | tokens/s (median) | MFU |\n| --- | --- | --- | --- | --- | --- |\n"
            f"| {r['steps_done']} | {r['val_loss']:.3f} | {NANOGPT['small_val_loss']} | {r['elapsed_s']:.0f} s | "
            f"{r['tokens_per_s']:,.0f} | {100 * r['mfu']:.0f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="repeats of each training variant")
    ap.add_argument("--full", action="store_true", help="also the 2000-step Shakespeare run")
    ap.add_argument("--data", help="path to tinyshakespeare.txt (for --full)")
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    import tempfile

    import torch

    print(f"## tformer benchmark suite, {time.strftime('%Y-%m-%d')}\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"Python {platform.python_version()}.\n")
    if not args.skip_training:
        print(training_tables(args.runs) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        print(sampling_table(tmp) + "\n")
        if args.full:
            if not args.data:
                raise SystemExit("--full needs --data path/to/tinyshakespeare.txt")
            print(full_run(args.data, tmp) + "\n")
    print(startup_table())


if __name__ == "__main__":
    main()
