"""`tformer seq2seq`: an encoder-decoder (``model.arch: encdec``) against a decoder-only GPT that
reads the source as a prefix, on the built-in sequence-to-sequence tasks.

Both are built from the same blocks and width; the encoder-decoder has n_layer blocks in each
stack, the GPT twice as many in its one stack, so the two have about the same number of
parameters (the decoder's cross-attention makes the encoder-decoder somewhat larger; both
counts are reported).  Same data, batches, steps and learning rate; seeds pair the two, and the
comparison is the mean paired difference in held-out exact match with a 95% t interval.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tformer_cli.study import stats

BUDGET = {"steps": 300, "batch_size": 32, "lr": 3e-3}
MARGIN = 0.02


@dataclass
class Row:
    task: str
    arch: str
    seed: int
    exact_match: float
    token_accuracy: float
    train_loss: float
    params: int
    elapsed_s: float


@dataclass
class Seq2SeqResult:
    tasks: list[str]
    seeds: list[int]
    budget: dict
    models: dict  # arch -> its model config (model.arch: encdec | gpt)
    rows: list[Row]
    paired: dict  # task -> stats.Paired of encdec minus gpt exact match, as a dict
    elapsed_s: float
    out: str | None = None
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


STUDY = "seq2seq_encdec"  # the shipped study file: the two models and their settings


def task_spec(task: str, seeds: int, steps: int):
    """The experiment of one task: the shipped study's two members (encdec the baseline, gpt its
    arm) at ``steps`` (warm-up a tenth, an evaluation every fifth), seeds 0 .. seeds-1."""
    from tformer_cli.study import files

    overrides = {"task.data": task, "train.steps": steps, "train.seed": 0, "train.warmup_steps": max(1, steps // 10),
                 "train.eval_interval": max(1, steps // 5), "train.log_interval": max(1, steps // 10),
                 "train.lr": BUDGET["lr"], "train.batch_size": BUDGET["batch_size"]}
    return files.study_from(files.Source(files.find_study(Path(STUDY)), None, overrides, seeds))


def run_seq2seq(tasks: list[str], seeds: list[int], steps: int, out: Path,
                should_stop: Callable[[], bool] = lambda: False, **runner) -> Seq2SeqResult:
    """Each task as an experiment of the runner in OUT/<task> (run directories, --jobs, a re-run
    with the same OUT continues); the rows of both architectures, paired by seed."""
    from tformer_cli.study.runner import run_or_continue

    t0, budget = time.perf_counter(), {**BUDGET, "steps": steps}
    rows, interrupted, models = [], False, {}
    for task in tasks:
        spec = task_spec(task, len(seeds), steps)
        result = run_or_continue(spec, out / task, "task", should_stop=should_stop, **runner)
        configs = {m.name: spec.member_config(m, spec.seeds[0]).model for m in spec.members}
        arch = {name: c.arch for name, c in configs.items()}
        models = {c.arch: asdict(c) for c in configs.values()}  # the study file's two models, as trained
        rows += [Row(task, arch[r.member], r.seed, r.extra["exact_match"], r.extra["token_accuracy"], r.train_loss,
                     r.params, r.elapsed_s) for r in result.rows if r.status == "ok" and "exact_match" in r.extra]
        if result.interrupted or should_stop():
            interrupted = True
            break
    paired = {t: asdict(_paired(rows, t)) for t in tasks}
    result = Seq2SeqResult(list(tasks), list(seeds), budget, models, rows,
                           paired, time.perf_counter() - t0, str(out), _notes(rows, models), interrupted)
    from tformer_cli.core.io import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _paired(rows: list[Row], task: str) -> stats.Paired:
    enc = {r.seed: r.exact_match for r in rows if r.task == task and r.arch == "encdec"}
    gpt = {r.seed: r.exact_match for r in rows if r.task == task and r.arch == "gpt"}
    return stats.paired([enc[s] - gpt[s] for s in sorted(set(enc) & set(gpt))], MARGIN)


def outcome(p: dict) -> str:
    """The comparison in words (verdict.rule, two-sided): which is better, no difference within
    ±MARGIN, or undecided."""
    from tformer_cli.study import verdict

    known = {f.name for f in dataclasses.fields(stats.Paired)}
    finding = verdict.rule(stats.Paired(**{k: v for k, v in p.items() if k in known}), "equal", MARGIN).finding
    return {verdict.TOO_FEW: f"undecided (fewer than {stats.MIN_SEEDS} seeds)",
            verdict.ABOVE: "encdec better", verdict.BELOW: "gpt better",
            verdict.WITHIN: f"no difference (within ±{100 * MARGIN:g} pts)"}.get(finding, "undecided")


ARCHS = ("encdec", "gpt")


@dataclass(frozen=True)
class TaskLine:
    """One task of the comparison, computed for the table: exact match (mean, sd over seeds) per
    architecture, the paired difference encdec - gpt with its 95% interval, and the verdict."""

    task: str
    exact_match: dict[str, tuple[float | None, float | None]]  # arch -> (mean, sd); sd None with one seed
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str


def table(result: Seq2SeqResult) -> list[TaskLine]:
    """Per task, what `tformer seq2seq` prints: means, sds, the paired difference and its verdict."""
    out = []
    for task in result.tasks:
        p = result.paired[task]
        means = {a: stats.mean_std([x.exact_match for x in result.rows if x.task == task and x.arch == a])
                 for a in ARCHS}
        out.append(TaskLine(task, means, p["delta"], p["ci_low"], p["ci_high"], outcome(p)))
    return out


def _notes(rows: list[Row], models: dict[str, dict]) -> list[str]:
    params = {r.arch: r.params for r in rows}
    layers = {k: m["n_layer"] for k, m in models.items()}
    return [f"parameters: {', '.join(f'{k} {v:,}' for k, v in params.items())} (encdec: {layers.get('encdec')} "
            f"encoder + {layers.get('encdec')} decoder blocks; gpt: {layers.get('gpt')} blocks reading 'source SEP' "
            "as a prefix)",
            "exact match: greedy decoding with the cache, every target token right, on 500 held-out pairs "
            "whose sources never occur in training"]
