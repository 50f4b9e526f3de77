"""`tformer finetune-study`: seed question 1, measured.  Can a decoder-only GPT classify, and
how does it compare with a bidirectional encoder of the same size?

Two bodies of one architecture (same d_model, layers, heads, block, vocabulary up to the MLM's
[MASK] token) are pretrained on the built-in prose with the same budget: a GPT (causal, next
token) and an encoder (bidirectional, masked tokens).  Each is fine-tuned on every task with
all weights trained, the GPT reading its last token, the encoder the mean of its states.  The
same two architectures are fine-tuned from random weights (same tokenizer, same budget), and a
bag of tokens shows what order and attention add.  Every member runs with every seed; a seed
fixes the head, a scratch body, the batches and dropout, so members are paired by seed and
compared by the mean paired difference in held-out accuracy with a 95% t interval
(tformer_cli.study.stats.paired).  The pretrained bodies are one per objective (the seeds vary
the fine-tune, not the pretraining): the verdicts are about fine-tuning these two bodies.

Re-running the same command with the same --out continues: finished members are kept.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tformer_cli.core.config import from_dict
from tformer_cli.core.finetune_config import build
from tformer_cli.errors import ConfigError, RunError, Stopped
from tformer_cli.study import stats, verdict

MODEL = {"d_model": 64, "n_layer": 2, "n_head": 4, "block_size": 64, "dropout": 0.0}
PRETRAIN = {"batch_size": 32, "lr": 0.003, "warmup_steps": 30, "eval_iters": 10, "log_interval": 50,
            "device": "cpu", "seed": 1337}
FINETUNE = {"batch_size": 32, "lr": 2e-3, "warmup_steps": 20, "log_interval": 20, "device": "cpu"}
TASKS = ("source", "order")
MARGIN = 0.02  # accuracy: differences within ±2 points are "no difference that matters"
SOURCE = ("Devlin et al. 2019 (BERT), Table 1: GLUE average 79.6 for BERT-base vs 75.1 for "
          "OpenAI GPT of the same size; Radford et al. 2018 fine-tune GPT on its last token")


@dataclass(frozen=True)
class Member:
    name: str
    body: str  # transformer | bag
    pretrain: str | None  # clm | mlm: whose tokenizer (and, when pretrained, weights) it starts from
    pretrained: bool
    pool: str
    causal: bool = True


MEMBERS = (
    Member("gpt", "transformer", "clm", True, "last"),
    Member("encoder", "transformer", "mlm", True, "mean", causal=False),
    Member("gpt-scratch", "transformer", "clm", False, "last"),
    Member("encoder-scratch", "transformer", "mlm", False, "mean", causal=False),
    Member("bag", "bag", "clm", False, "mean"),
)

# (claim, member, reference or "chance", expected sign): each judged per task.
CLAIMS = (
    ("a decoder-only GPT classifies (last-token pooling, above chance)", "gpt", "chance"),
    ("the encoder beats the GPT at equal size and budget", "encoder", "gpt"),
    ("pretraining helps the GPT", "gpt", "gpt-scratch"),
    ("pretraining helps the encoder", "encoder", "encoder-scratch"),
    ("the GPT beats a bag of tokens", "gpt", "bag"),
)


@dataclass
class Row:
    task: str
    member: str
    seed: int
    accuracy: float
    macro_f1: float
    chance: float
    train_accuracy: float
    params: int
    unconverged: bool
    elapsed_s: float


@dataclass
class Judged:
    claim: str
    task: str
    member: str
    reference: str
    n: int
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    outcome: str  # agrees | disagrees | undecided
    reason: str


@dataclass
class StudyResult:
    out_dir: str
    tasks: list[str]
    seeds: list[int]
    budget: dict
    rows: list[Row]
    judged: list[Judged]
    versus_gpt: list[Judged]  # every other member minus the GPT, per task (the table's last column)
    pretrain: dict  # objective -> final validation loss
    elapsed_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def run_study(out_dir: Path, tasks: list[str], seeds: list[int], steps: int, pretrain_steps: int,
              progress: Callable[[str], None] = lambda s: None,
              should_stop: Callable[[], bool] = lambda: False, **runner) -> StudyResult:
    """Pretrain both bodies, fine-tune every member x task x seed (each task an experiment of the
    runner: ``runner`` holds its notice, display and jobs), compare by seed."""
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, pre_loss = {}, {}
    for objective in ("clm", "mlm"):
        runs[objective], pre_loss[objective] = _pretrain(out_dir, objective, pretrain_steps, progress, should_stop)
    rows = []
    for task in tasks:
        rows += _task_rows(out_dir, task, seeds, steps, runs, should_stop, runner)
    budget = {"model": MODEL, "pretrain_steps": pretrain_steps, "pretrain": PRETRAIN, "finetune_steps": steps,
              "finetune": FINETUNE, "corpus": "prose"}
    versus = [_judge(f"{m.name} vs gpt", t, m.name, "gpt", [r for r in rows if r.task == t], steps)
              for t in tasks for m in MEMBERS if m.name != "gpt"]
    result = StudyResult(str(out_dir), list(tasks), list(seeds), budget, rows, judge(rows, tasks, steps), versus,
                         pre_loss, time.perf_counter() - t0, notes(rows))
    _write(out_dir, result)
    return result


def _pretrain(out_dir: Path, objective: str, steps: int, progress, should_stop) -> tuple[Path, float | None]:
    """The pretrained body of ``objective`` (kept from an earlier call when it finished)."""
    from tformer_cli.run.rundir import RunDir
    from tformer_cli.train.loop import train

    path = out_dir / "pretrain" / ("gpt" if objective == "clm" else "encoder")
    done = RunDir(path).finished_summary()
    if done is not None and done.steps == steps:
        return path, done.val_loss
    if done is not None:
        raise ConfigError(f"{path} was pretrained for {done.steps} steps, not {steps}",
                          hint="give another --out for another pretraining budget")
    cfg = from_dict({"model": {**MODEL, "causal": objective == "clm"}, "data": {"corpus": "prose"},
                     "train": {**PRETRAIN, "steps": steps, "objective": objective, "eval_interval": steps}})
    progress(f"pretraining the {'GPT (causal, next token)' if objective == 'clm' else 'encoder (masked tokens)'}"
             f" on prose: {steps} steps")
    path.mkdir(parents=True, exist_ok=True)
    result = train(cfg, path, resume=RunDir(path).has_checkpoint(), should_stop=should_stop)
    if result.interrupted:
        raise Stopped("the study while pretraining", hint="run the same command again to continue")
    return path, result.val_loss


def task_spec(task: str, seeds: list[int], steps: int, runs: dict[str, Path]):
    """The experiment of one task: the five members as fine-tunes (task.kind classify) of the
    pretrained bodies or of random ones, the GPT first (the reference), one claim each."""
    from tformer_cli.run.resume import run_config
    from tformer_cli.study.spec import Member, Spec

    model = run_config(runs["clm"], "study", False, "", "").model
    base = build({"data": task, "source_run": str(runs["clm"]), "from_scratch": False, "body": "transformer",
                  "pool": "last", "steps": steps, "seed": seeds[0], "ckpt_interval": steps, **FINETUNE}, model)
    enc = {"task.source_run": str(runs["mlm"]), "task.pool": "mean", "model.causal": False}
    over = {"gpt": {}, "encoder": enc, "gpt-scratch": {"task.from_scratch": True},
            "encoder-scratch": {**enc, "task.from_scratch": True},
            "bag": {"task.body": "bag", "task.pool": "mean", "task.from_scratch": True}}
    members = [Member(m.name, over[m.name], _described(m)) for m in MEMBERS]
    claims = [{"statement": claim, "source": SOURCE, "member": member, "metric": "accuracy_over_chance",
               "baseline": "none", "expect": "higher", "margin": MARGIN} if ref == "chance" else
              {"statement": claim, "source": SOURCE, "member": member, "metric": "accuracy", "baseline": ref,
               "expect": "higher", "margin": MARGIN} for claim, member, ref in CLAIMS]
    return Spec("ablate", base.to_config().to_dict(), members, list(seeds), claims=claims)


def _described(m: Member) -> str:
    body = "bag of tokens" if m.body == "bag" else ("encoder (masked LM)" if m.pretrain == "mlm" else "GPT")
    return f"{body}, {'pretrained' if m.pretrained else 'from scratch'}, {m.pool}-pooled"


def _task_rows(out_dir, task, seeds, steps, runs, should_stop, runner) -> list[Row]:
    """The task's members x seeds as an experiment of the runner in OUT/<task> (a re-run with the
    same OUT continues it); its rows, one per member and seed."""
    from tformer_cli.study.runner import run_or_continue

    where = out_dir / task
    result = run_or_continue(task_spec(task, seeds, steps, runs), where, "task", should_stop=should_stop, **runner)
    if result.interrupted:
        raise Stopped("the study", hint="run the same command again to continue (finished members are kept)")
    failed = [r for r in result.rows if r.status != "ok" or "accuracy" not in r.extra]
    if failed:
        raise RunError(f"{task}: {failed[0].member} seed {failed[0].seed} {failed[0].status}: {failed[0].error}",
                       hint=failed[0].hint or "see the member's directory under " + str(where))
    return [Row(task, r.member, r.seed, r.extra["accuracy"], r.extra["macro_f1"], r.extra["chance"],
                r.extra.get("train_accuracy"), r.params, bool(r.still_learning), r.elapsed_s) for r in result.rows]


# ---------------------------------------------------------------- statistics and verdicts


def judge(rows: list[Row], tasks: list[str], steps: int | None = None) -> list[Judged]:
    out = []
    for task in tasks:
        for claim, member, ref in CLAIMS:
            out.append(_judge(claim, task, member, ref, [r for r in rows if r.task == task], steps))
    return out


def _judge(claim: str, task: str, member: str, ref: str, rows: list[Row], steps: int | None = None) -> Judged:
    """One claim on one task by the one verdict rule (study.verdict.judge_rows): the member's held-out
    accuracy against ``ref``'s (or, for "chance", its accuracy over chance), paired by seed."""
    from tformer_cli.study.claim import NO_BASELINE, Claim
    from tformer_cli.study.results import MemberRow

    chance = ref == "chance"
    c = Claim(claim, SOURCE, member, "higher", metric="accuracy_over_chance" if chance else "accuracy",
              margin=MARGIN, baseline=NO_BASELINE if chance else ref)
    members = [MemberRow(member=r.member, seed=r.seed, changed="", status="ok", run_dir="",
                         still_learning=r.unconverged,
                         extra={"accuracy": r.accuracy, "accuracy_over_chance": r.accuracy - r.chance}) for r in rows]
    v = verdict.judge_rows(c, members, c.baseline, steps)
    reason = v.reason + (f"; to decide: {v.suggestion}" if v.suggestion else "")
    return Judged(claim, task, member, ref, v.n, v.delta, v.ci_low, v.ci_high, v.p_value, v.outcome, reason)


def notes(rows: list[Row]) -> list[str]:
    params = {r.member: r.params for r in rows}
    out = [f"parameters: {', '.join(f'{k} {v:,}' for k, v in params.items())} (the encoder's vocabulary has "
           "one more token, [MASK])"] if params else []
    out.append(f"Δ: member accuracy minus the reference's with the same seed, mean over seeds with a 95% t "
               f"interval; 'no difference' when the interval lies within ±{100 * MARGIN:g} points")
    if any(r.unconverged for r in rows):
        out.append("unconverged members (still learning at the end): " + ", ".join(
            sorted({f"{r.task}/{r.member}" for r in rows if r.unconverged})))
    return out


def _write(out_dir: Path, result: StudyResult) -> None:
    from tformer_cli.core.io import atomic_write_text

    atomic_write_text(out_dir / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    names = list(Row.__dataclass_fields__)
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(names)
    for r in result.rows:
        w.writerow([getattr(r, n) for n in names])
    atomic_write_text(out_dir / "results.csv", table.getvalue())


def summarize(rows: list[Row], task: str, member: str) -> tuple[float, float | None, float, int]:
    """(mean accuracy, its sd over seeds, mean macro-F1, parameters) of one member on one task."""
    mine = [r for r in rows if r.task == task and r.member == member]
    acc, sd = stats.mean_std([r.accuracy for r in mine])
    return acc, sd, statistics.fmean(r.macro_f1 for r in mine), mine[0].params


def headline(result: StudyResult) -> tuple[list[str], dict[str, Judged]]:
    """The one verdict on Q1, as judged: the tasks on which the fine-tuned GPT classifies above
    chance (that claim agrees), in task order, and each task's encoder-vs-GPT judgement."""
    above = {j.task for j in result.judged if j.member == "gpt" and j.reference == "chance" and j.outcome == "agrees"}
    encoder = {j.task: j for j in result.judged if j.member == "encoder" and j.reference == "gpt"}
    return [t for t in result.tasks if t in above], encoder
