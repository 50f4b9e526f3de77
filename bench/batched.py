"""Batched seeds against single runs, side by side, on the shipped studies' member model.

    python -m bench.batched [--seeds 4,8,24] [--steps 300] [--repeats 2] [--device cpu]

The model of sweep_heads (d_model 64, 2 layers, 4 heads, block 32, batch 16, built-in prose):
a single run (`tformer train`'s loop) and a batched group of S seeds (train/batched.py) each
train STEPS steps into a scratch directory; both report tokens/s the same way (the median over
log intervals after the first, evaluation excluded).  Printed per path: tokens/s of one seed and
of all seeds together, milliseconds per seed-step, and the share of the time that is arithmetic
(training FLOPs per token x tokens/s over the timed float32 matmul peak of this machine).
Single runs and groups alternate (A B A B) and the median of the repeats is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.common import table
from tformer_cli.core.anatomy import totals
from tformer_cli.core.config import resolve
from tformer_cli.core.data import prepare
from tformer_cli.core.device import tune_cpu_allocator, timed_matmul
from tformer_cli.run.rundir import prepare_run_dir
from tformer_cli.train.batched import train_group
from tformer_cli.train.loop import train

STUDY = "sweep_heads"


def member_config(steps: int, device: str):
    import yaml

    from tformer_cli.study import files

    study = yaml.safe_load(files.find_study(Path(STUDY)).read_text())
    cfg = resolve(overrides={f"{sec}.{k}": v for sec in ("model", "data", "train") for k, v in study[sec].items()})
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="4,8,24")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    tune_cpu_allocator()
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
    base = statistics.median(single)
    for s in sizes:
        print(f"  {s} seeds batched: {statistics.median(groups[s]) / base:.2f}x the single run's total tokens/s "
              f"(repeats: {', '.join(f'{g / base:.2f}' for g in groups[s])})")


if __name__ == "__main__":
    main()
