"""`python -m bench.suite --gpu`: tformer on a CUDA card, next to nanoGPT, as markdown tables.

Sections, in this order (--sections picks some):
  a  training step at B12 T1024 vocab 50304 bf16: tformer vs nanoGPT, compiled and eager, in one
     process (bench/gpu_step.py), interleaved; MFU against the card's datasheet peak and against a
     bf16 8192^3 matmul timed in the same process
  b  tformer at other shapes (a larger micro-batch, GPT-2 medium, the GPT-2 vocabulary padded or not)
  c  `tformer train --preset gpt2_small --steps 40`: the compile policy's choice and compile forced
     on; steady tokens/s, MFU and the first 10 steps' rate
  d  `tformer sweep-heads --heads 1,2,4,8 --steps 300`: wall time, the policy (the step in a CUDA
     graph) vs train.cuda_graph=false, --jobs 4 (packed) and --jobs 1
  e  batch-1 decoding: bench/decode_gpu.py (CUDA graph, static, dynamic, recompute, HF)
The whole run stops starting sections once --budget-s is spent, and a running one is cut at the
deadline (what it printed so far is kept); every ratio comes from figures of this invocation.
nanoGPT's model.py must already be in .bench_scratch/nanogpt (`python -m bench.suite
--prepare-only` copies it there on a machine that has ../shared; carry the folder along).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, SCRATCH, cell, table

SECTIONS = "abcde"
GPU_OUT = os.path.join(SCRATCH, "gpu")
H100_DATASHEET = 989e12  # dense bf16, when the card's name is not in core/device.py's table
STEP_A = ["tformer:compiled:B12:V50304", "nanogpt:compiled:B12:V50304",
          "tformer:eager:B12:V50304", "nanogpt:eager:B12:V50304"]
STEP_B = ["tformer:compiled:B24:V50304", "tformer:compiled:B8:V50304:medium", "tformer:compiled:B12:V50257",
          "tformer:compiled:B12:V50257:x64"]
MIN_SECTION_S = 25  # a section is not started with less time left than this


@dataclass
class Budget:
    """Seconds left of --budget-s, and the sections skipped for want of them."""
    seconds: float
    t0: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


@dataclass
class Ran:
    out: str
    err: str
    code: int | None  # None: cut at the deadline
    wall: float


def run_capture(cmd: list[str], timeout: float, env: dict | None = None) -> Ran:
    """Run a command in its own process group; on the deadline the whole group is killed (sweep
    workers included) and what it printed so far is returned."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = p.communicate(timeout=max(1.0, timeout))
        return Ran(out, err, p.returncode, time.perf_counter() - t0)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return Ran(out, err, None, time.perf_counter() - t0)


def tformer(*args: str) -> list[str]:
    return [sys.executable, "-m", "tformer_cli", *args]


def cuda_problem() -> str | None:
    """Why --gpu cannot run here (one line), or None."""
    try:
        import torch
    except ImportError:
        return "suite.py --gpu: torch is not importable"
    if not torch.cuda.is_available():
        return f"suite.py --gpu: no CUDA device (torch {torch.__version__} sees none); run it on a GPU machine"
    if not os.path.exists(os.path.join(SCRATCH, "nanogpt", "model.py")):
        return ("suite.py --gpu: no .bench_scratch/nanogpt/model.py; run `python -m bench.suite --prepare-only` "
                "where ../shared/anchors/nanogpt exists and carry .bench_scratch along")
    return None


# ---------------------------------------------------------------- figures -> rows (no CUDA needed)


def parse_step_lines(text: str) -> tuple[dict, dict[str, dict]]:
    """gpu_step.py's JSON lines -> (the card line, {variant: its line plus 'step_s': [per block]})."""
    card, variants = {}, {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("kind") == "card":
            card = row
        elif row.get("kind") == "variant":
            variants[row["name"]] = {**row, "step_s": []}
        elif row.get("kind") == "block" and row.get("name") in variants:
            variants[row["name"]]["step_s"].append(row["step_s"])
    return card, variants


def peaks(card: dict) -> tuple[float, str, float | None]:
    """(datasheet FLOP/s, its label, the timed matmul's FLOP/s or None)."""
    sheet = card.get("datasheet_flops")
    label = (f"{sheet / 1e12:.0f} TFLOP/s datasheet" if sheet
             else f"{H100_DATASHEET / 1e12:.0f} TFLOP/s (H100 datasheet)")
    return sheet or H100_DATASHEET, label, card.get("matmul_flops")


def step_rows(card: dict, variants: dict[str, dict]) -> list[list[str]]:
    """variant | ms/step median (min-max) over blocks | tokens/s | MFU vs datasheet | MFU vs matmul."""
    sheet, _, matmul = peaks(card)
    rows = []
    for name, v in variants.items():
        if not v["step_s"]:
            rows.append([name, "not timed (cut short)", "-", "-", "-"])
            continue
        s = statistics.median(v["step_s"])
        tps = v["tokens_per_step"] / s
        flops = tps * v["flops_per_token"]
        rows.append([name, cell([1000 * x for x in v["step_s"]]), f"{tps / 1e3:.0f}k", f"{100 * flops / sheet:.1f}%",
                     f"{100 * flops / matmul:.1f}%" if matmul else "-"])
    return rows


def speedups(variants: dict[str, dict], pairs: list[tuple[str, str, str]]) -> list[str]:
    """'label: 1.23x' for each (label, faster candidate, baseline) pair both timed: baseline ms / candidate ms."""
    lines = []
    for label, ours, theirs in pairs:
        a, b = variants.get(ours, {}).get("step_s"), variants.get(theirs, {}).get("step_s")
        if a and b:
            lines.append(f"{label}: {statistics.median(b) / statistics.median(a):.2f}x")
    return lines


def card_line(card: dict) -> str:
    _, label, matmul = peaks(card)
    timed = f"{matmul / 1e12:.0f} TFLOP/s timed bf16 8192^3 matmul" if matmul else "no timed matmul"
    return f"{card.get('device', '?')}, torch {card.get('torch', '?')}; peaks: {label}, {timed}."


def train_row(label: str, result: dict, first: float | None, wall: float, matmul: float | None) -> list[str]:
    """One `tformer train` run: compiled and why, steady tokens/s, MFU (datasheet, matmul), first 10 steps."""
    tps, mfu = result.get("tokens_per_s"), result.get("mfu")
    mfu_mm = mfu * result["peak_flops"] / matmul if (mfu and matmul and result.get("peak_flops")) else None
    return [label, ("on" if result.get("compiled") else "off") + f" ({result.get('compile_reason', '?')})",
            f"{tps / 1e3:.0f}k" if tps else "-", f"{100 * mfu:.1f}%" if mfu else "-",
            f"{100 * mfu_mm:.1f}%" if mfu_mm else "-", f"{first / 1e3:.0f}k" if first else "-", f"{wall:.0f}"]


def first_rate(run_dir: str) -> float | None:
    """tokens/s of the first log interval (steps 1-10: compile and warm-up included), from perf.jsonl."""
    try:
        with open(os.path.join(run_dir, "perf.jsonl")) as f:
            return json.loads(f.readline())["tokens_per_s"]
    except (OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------- sections


def section_steps(title: str, variants: list[str], budget: Budget, pairs: list[tuple[str, str, str]],
                  args, shared: dict) -> list[str]:
    cmd = [sys.executable, "-m", "bench.gpu_step", *variants,
           "--blocks", str(args.gpu_blocks), "--steps", str(args.gpu_steps)]
    ran = run_capture(cmd, budget.left())
    card, got = parse_step_lines(ran.out)
    shared.setdefault("matmul", card.get("matmul_flops"))
    lines = [f"### {title}", "", card_line(card) if card else "no figures", ""]
    if got:
        lines.append(table(["variant", "ms/step", "tok/s", "MFU sheet", "MFU matmul"], step_rows(card, got)))
        lines += [""] + [f"- {s}" for s in speedups(got, pairs)]
    if ran.code is None:
        lines.append(f"- cut at the deadline after {ran.wall:.0f} s (variants not listed were not reached)")
    elif ran.code:
        lines.append(f"- gpu_step.py failed ({ran.code}): {ran.err.strip().splitlines()[-1:] or ''}")
    return lines


def section_a(budget: Budget, args, shared: dict) -> list[str]:
    pairs = [("tformer speed-up over nanoGPT, compiled", STEP_A[0], STEP_A[1]),
             ("tformer speed-up over nanoGPT, eager", STEP_A[2], STEP_A[3]),
             ("compile's speed-up, tformer", STEP_A[0], STEP_A[2]),
             ("compile's speed-up, nanoGPT", STEP_A[1], STEP_A[3])]
    return section_steps("a. training step, GPT-2 small B12 T1024 V50304 bf16 (one process, interleaved)",
                         STEP_A, budget, pairs, args, shared)


def section_b(budget: Budget, args, shared: dict) -> list[str]:
    variants = args.gpu_b.split(",") if getattr(args, "gpu_b", None) else STEP_B
    pairs = [("padding 50257 to 50304 (x64), B12", STEP_B[3], STEP_B[2])]
    return section_steps("b. tformer, compiled, other shapes (medium: GPT-2 medium, 24 layers d1024; "
                         "x64: model.vocab_multiple=64)",
                         variants, budget, pairs, args, shared)


def section_c(budget: Budget, args, shared: dict) -> list[str]:
    rows = []
    for label, sets in (("policy (unset)", []), ("compile=true", ["--set", "train.compile=true"])):
        if budget.left() < MIN_SECTION_S:
            budget.skipped.append(f"c: {label}")
            continue
        out = os.path.join(GPU_OUT, "train40" + ("" if not sets else "_compiled"))
        ran = run_capture(tformer("train", "--preset", "gpt2_small", "--steps", "40", "--device", "cuda",
                                  "--out", out, "--overwrite", "--json", *sets), budget.left())
        try:
            rows.append(train_row(label, json.loads(ran.out), first_rate(out), ran.wall, shared.get("matmul")))
        except ValueError:
            failed = f"failed ({ran.code}): {ran.err.strip()[-120:]}"
            rows.append([label, failed, "-", "-", "-", "-", f"{ran.wall:.0f}"])
    return ["### c. tformer train --preset gpt2_small --steps 40 (B16 x 4, T1024, bf16)", "",
            table(["run", "compile", "tok/s", "MFU sheet", "MFU matmul", "steps 1-10 tok/s", "wall s"], rows)]


def section_d(budget: Budget, args, shared: dict) -> list[str]:
    rows = []
    for label, extra in (("policy, --jobs 4", ["--jobs", "4"]),
                         ("cuda_graph=false, --jobs 4", ["--jobs", "4", "--set", "train.cuda_graph=false"]),
                         ("policy, --jobs 1", ["--jobs", "1"]),
                         ("cuda_graph=false, --jobs 1", ["--jobs", "1", "--set", "train.cuda_graph=false"])):
        if budget.left() < MIN_SECTION_S:
            budget.skipped.append(f"d: {label}")
            continue
        out = os.path.join(GPU_OUT, f"sweep_{len(rows)}_{int(time.time())}")
        ran = run_capture(tformer("sweep-heads", "--heads", "1,2,4,8", "--steps", "300", "--device", "cuda",
                                  "--out", out, "--json", *extra), budget.left())
        state = "ok" if ran.code == 0 else ("cut at the deadline" if ran.code is None else f"failed ({ran.code})")
        overlapped = extra[extra.index("--jobs") + 1] != "1"
        rows.append([label, f"{ran.wall:.1f}", *member_steps(out), *time_split(out, ran.wall, overlapped), state])
    return ["### d. tformer sweep-heads --heads 1,2,4,8 --steps 300 (quick preset): wall time", "",
            table(["setting", "wall s", "member ms/step", "member train s", "CUDA graph", "set-up s", "steps s",
                   "eval s", "measure s", "rest s", "state"], rows), "",
            "- member figures: medians over the members (train s: each member's train() wall time, its "
            "evaluations included); set-up, steps, eval (evaluations and checkpoints) and measure: sums "
            "over the members (results.json); rest: the command's wall time less those sums (process "
            "start, imports, plots; '-' with --jobs > 1, where the members overlap); "
            "target: <= 20 s wall"]


def member_steps(out: str) -> list[str]:
    """The members' median ms/step and whether their steps were graphed, from their summaries."""
    summaries = []
    for path in Path(out).glob("members/*/summary.json"):
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    ms = [s["ms_per_step"] for s in summaries if s.get("ms_per_step")]
    train_s = [s["elapsed_s"] for s in summaries if s.get("elapsed_s")]
    graphed = sorted({"yes" if s.get("cuda_graph") else "no" for s in summaries})
    return [f"{statistics.median(ms):.2f}" if ms else "-", f"{statistics.median(train_s):.1f}" if train_s else "-",
            "/".join(graphed) or "-"]


def time_split(out: str, wall: float, overlapped: bool = False) -> list[str]:
    """Set-up, steps, evaluation (with checkpoints) and measurement summed over the members of a
    sweep's results.json, and the rest of the command's ``wall``; '-' where unknown, and for the
    rest where the members ran at once (``overlapped``: the sums then exceed the wall time)."""
    try:
        rows = json.loads((Path(out) / "results.json").read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["-"] * 5

    def total(*keys: str) -> float | None:
        values = [row[k] for row in rows for k in keys if isinstance(row.get(k), (int, float))]
        return sum(values) if values else None

    parts = [total("setup_s"), total("steps_s"), total("eval_s", "checkpoint_s"), total("measure_s")]
    known = [p for p in parts if p is not None]
    rest = wall - sum(known) if known and not overlapped else None
    return ["-" if p is None else f"{p:.1f}" for p in parts + [rest]]


def section_e(budget: Budget, args, shared: dict) -> list[str]:
    if not os.path.exists(os.path.join(ROOT, "bench", "decode_gpu.py")):
        return ["### e. decoding", "", "- skipped: bench/decode_gpu.py is not in this tree"]
    ran = run_capture([sys.executable, "-m", "bench.decode_gpu"], budget.left())
    why = "deadline" if ran.code is None else "error"
    state = "" if ran.code == 0 else f"\n- decode_gpu.py exited {ran.code} ({why})"
    return ["### e. decoding (bench/decode_gpu.py)", "", ran.out.strip() + state]


def run_gpu(args) -> int:
    """Every section asked for, within the budget; prints the markdown as each section ends."""
    if problem := cuda_problem():
        print(problem, file=sys.stderr)
        return 2
    Path(GPU_OUT).mkdir(parents=True, exist_ok=True)
    budget, shared = Budget(args.budget_s), {}
    run = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e}
    print(f"## tformer on the GPU, {time.strftime('%Y-%m-%d %H:%M')}\n", flush=True)
    for s in args.sections:
        if budget.left() < MIN_SECTION_S:
            budget.skipped.append(s)
            continue
        t0 = time.perf_counter()
        lines = run[s](budget, args, shared)
        print("\n".join(lines) + f"\n\n({time.perf_counter() - t0:.0f} s)\n", flush=True)
    if budget.skipped:
        print(f"Skipped for want of time (--budget-s {args.budget_s:.0f}): {', '.join(budget.skipped)}")
    return 0
