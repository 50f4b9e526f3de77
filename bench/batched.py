"""Batched seeds against single runs, side by side, on the shipped studies' member model.

    python -m bench.batched [--seeds 4,8,24] [--steps 300] [--repeats 2] [--device cpu]
    python -m bench.batched --exactness [--warmup 100] [--twin] [--device cpu]

The model of sweep_heads (d_model 64, 2 layers, 4 heads, block 32, batch 16, built-in prose):
a single run (`tformer train`'s loop) and a batched group of S seeds (train/batched.py) each
train STEPS steps into a scratch directory; both report tokens/s the same way (the median over
log intervals after the first, evaluation excluded).  Printed per path: tokens/s of one seed and
of all seeds together, milliseconds per seed-step, and the share of the time that is arithmetic
(training FLOPs per token x tokens/s over the timed float32 matmul peak of this machine).
Single runs and groups alternate (A B A B) and the median of the repeats is printed.

``--exactness`` prints instead how far each seed of a group of three is from its own single run
over the first 100 steps of the study's schedule, for the default model and each switch of
SWITCHES (tests/test_batched.py checks the same switches): the largest and the median relative
difference of the per-step train loss, and the val loss's at step 100.  ``--twin`` adds the
single run against its own twin with the group's attention arithmetic (explicit softmax(q k^T) v
instead of SDPA): the float32 noise floor of any second implementation.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.common import table
from tformer_cli.core.anatomy import totals
from tformer_cli.core.data import prepare
from tformer_cli.core.device import timed_matmul, tune_cpu_allocator
from tformer_cli.run.rundir import prepare_run_dir
from tformer_cli.train.batched import train_group
from tformer_cli.train.loop import train

STUDY = "sweep_heads"
FIRST = 100  # the steps the exactness report compares

# One model switch each (dotted config keys), for the exactness report and tests/test_batched.py.
SWITCHES = {
    "sinusoidal": {"model.pos_encoding": "sinusoidal"},
    "no-positions": {"model.pos_encoding": "none"},
    "rope": {"model.pos_encoding": "rope"},
    "rmsnorm-post": {"model.norm": "rmsnorm", "model.norm_position": "post"},
    "swiglu-nobias": {"model.activation": "swiglu", "model.bias": False},
    "relu-ffn-off": {"model.activation": "relu", "model.ffn": False},
    "relu2": {"model.activation": "relu2"},
    "gelu-tanh": {"model.activation": "gelu_tanh"},
    "gqa-qknorm": {"model.n_head": 4, "model.n_kv_head": 2, "model.qk_norm": True},
    "mqa": {"model.n_head": 4, "model.n_kv_head": 1},
    "softcap-untied": {"model.logit_softcap": 15.0, "model.tie_weights": False, "model.vocab_multiple": 64},
    "mlm-noncausal": {"train.objective": "mlm", "model.causal": False},
    "accum-clip": {"train.grad_accum": 2, "train.grad_clip": 0.05},
    "bpe": {"data.tokenizer": "bpe", "data.vocab_size": 300},
}


def member_config(steps: int, device: str):
    """The study's base config (its members differ only in n_head), shortened to ``steps``."""
    from tformer_cli.study import files

    cfg, _ = files.experiment_config(files.find_study(Path(STUDY)), None, {})
    return cfg.replace({"train.steps": steps, "train.eval_interval": steps, "train.log_interval": 25,
                        "train.warmup_steps": min(cfg.train.warmup_steps, steps // 4), "train.device": device})


def single_rate(cfg, root: Path) -> float:
    d = root / "single"
    prepare_run_dir(d, False)
    return train(cfg, d).tokens_per_s


def group_rate(cfg, seeds: int, root: Path) -> float:
    dirs = [root / f"group{seeds}-s{s}" for s in range(seeds)]
    for d in dirs:
        prepare_run_dir(d, False)
    outs = train_group([cfg.replace({"train.seed": s}) for s in range(seeds)], dirs)
    return outs[0].result.tokens_per_s * seeds  # each seed's figure is the group's over its seeds


def first_steps():
    """progress and should_stop that end a run (or a group) right after step FIRST."""
    seen: list[int] = []
    return (lambda e: seen.append(e.step) if e.kind == "log" else None), (lambda: bool(seen) and seen[-1] >= FIRST)


def curve(d: Path, key: str) -> list[tuple[int, float]]:
    import json

    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r[key]) for r in rows if key in r]


def single_run(cfg, d: Path, explicit: bool = False):
    """``tformer train``'s loop on ``cfg`` for FIRST steps; ``explicit``: with the group's attention
    arithmetic instead of SDPA's kernel."""
    from tformer_cli.core.model import GPT

    prepare_run_dir(d, False)
    progress, stop = first_steps()
    forward = GPT.forward
    if explicit:
        GPT.forward = lambda self, *a, **k: forward(self, *a, **{**k, "explicit": True})
    try:
        return train(cfg, d, progress=progress, should_stop=stop)
    finally:
        GPT.forward = forward


def differences(a: Path, b: Path) -> tuple[float, float, float]:
    """(largest, median) relative difference of the per-step train loss, and the last val loss's."""
    ta, tb = curve(a, "train_loss"), curve(b, "train_loss")
    rel = [abs(x - y) / abs(y) for (_, x), (_, y) in zip(ta, tb)]
    va, vb = curve(a, "val_loss")[-1][1], curve(b, "val_loss")[-1][1]
    return max(rel), statistics.median(rel), abs(va - vb) / abs(vb)


def exactness(warmup: int, twin: bool, device: str = "cpu") -> None:
    base = member_config(2000, device).replace({"train.log_interval": 1, "train.eval_interval": 50,
                                                "train.warmup_steps": warmup})
    rows = []
    for name, sets in {"default": {}, **SWITCHES}.items():
        cfgs = [base.replace({**sets, "train.seed": s}) for s in range(3)]
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            dirs = [root / f"group-s{s}" for s in range(3)]
            for d in dirs:
                prepare_run_dir(d, False)
            progress, stop = first_steps()
            train_group(cfgs, dirs, progress=progress, should_stop=stop)
            worst = [0.0] * 6
            for c, d in zip(cfgs, dirs):
                single, double = root / f"single-s{c.train.seed}", root / f"twin-s{c.train.seed}"
                single_run(c, single)
                got = differences(d, single)
                if twin:
                    single_run(c, double, explicit=True)
                    got += differences(double, single)
                worst = [max(w, g) for w, g in zip(worst, got)]
        cells = [f"{x:.1e}" for x in worst[:3]] + ([f"{x:.1e}" for x in worst[3:]] if twin else [])
        rows.append([name] + cells)
        print(" | ".join(rows[-1]), flush=True)
    head = ["switch", "group: max step", "median step", f"val @{FIRST}"]
    head += ["twin: max step", "median step", f"val @{FIRST}"] if twin else []
    print(f"first {FIRST} steps of {STUDY}'s schedule (warm-up {warmup}), 3 seeds, the worst seed of each; "
          f"{torch.get_num_threads()} thread(s)")
    print(table(head, rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="4,8,24")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--exactness", action="store_true")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--twin", action="store_true")
    a = ap.parse_args()
    tune_cpu_allocator()
    if a.exactness:
        exactness(a.warmup, a.twin, a.device)
        return
    cfg = member_config(a.steps, a.device)
    vocab = prepare(cfg.data).vocab_size
    flops_token = totals(cfg.model, vocab).flops_per_token
    device = torch.device(a.device)
    peak = timed_matmul(device, torch.float32)
    sizes = [int(s) for s in a.seeds.split(",")]
    single: list[float] = []
    groups: dict[int, list[float]] = {s: [] for s in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            single.append(single_rate(cfg, Path(tmp) / f"r{r}"))
            for s in sizes:
                groups[s].append(group_rate(cfg, s, Path(tmp) / f"r{r}"))
    tokens_step = cfg.train.batch_size * cfg.model.block_size

    def row(name: str, seeds: int, total: float) -> list[str]:
        per = total / seeds
        return [name, str(seeds), f"{per:,.0f}", f"{total:,.0f}", f"{1000 * tokens_step / total:.2f}",
                f"{100 * total * flops_token / peak:.1f}%"]

    rows = [row("single run", 1, statistics.median(single))]
    rows += [row("batched group", s, statistics.median(groups[s])) for s in sizes]
    print(f"{STUDY}'s member model, {a.steps} steps, {torch.get_num_threads()} thread(s), {a.device}; "
          f"timed float32 matmul peak {peak / 1e9:.0f} GFLOP/s; {flops_token:,} training FLOPs/token")
    print(table(["path", "seeds", "tok/s per seed", "tok/s total", "ms per seed-step", "arithmetic"], rows))
    floor = 1000 * tokens_step * flops_token / peak
    print(f"  the arithmetic alone at that peak: {floor:.2f} ms per seed-step (no path can be faster "
          f"without fewer FLOPs or a faster matmul)")
    base = statistics.median(single)
    for s in sizes:
        print(f"  {s} seeds batched: {statistics.median(groups[s]) / base:.2f}x the single run's total tokens/s "
              f"(repeats: {', '.join(f'{g / base:.2f}' for g in groups[s])})")


if __name__ == "__main__":
    main()
