"""One member trained with one seed: train it, measure it, and make its row.

The same function runs in the experiment's process (members in sequence) and in a worker
process (tformer_cli.study.worker, for --parallel and --isolate), so both paths measure alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from tformer_cli.core.anatomy import kv_cache_bytes_per_token
from tformer_cli.core.config import Config
from tformer_cli.errors import Stopped, TformerError
from tformer_cli.run.finetune_dir import FinetuneDir
from tformer_cli.run.result import FinetuneResult, Result, TrainResult
from tformer_cli.run.rundir import RunDir
from tformer_cli.study import convergence
from tformer_cli.study.measure import Evaluator, anatomy_columns, default_evaluator, measure
from tformer_cli.study.results import MemberOutcome, MemberRow
from tformer_cli.study.spec import Member

KV_AXES = ("model.n_head", "model.n_kv_head")  # a sweep of these shows the KV-cache bytes per token

Trainer = Callable[..., Result]
Display = Callable[[str], ContextManager[Callable]]


@dataclass
class Job:
    member: Member
    seed: int
    cfg: Config
    run_dir: Path
    label: str

    @property
    def fine_tune(self) -> bool:
        """A classifier fine-tune (task.kind classify): a fine-tune directory, not a run's."""
        return self.cfg.task.kind == "classify"

    def directory(self) -> FinetuneDir | RunDir:
        return (FinetuneDir if self.fine_tune else RunDir)(self.run_dir)

    def finished(self) -> Result | None:
        return self.directory().finished_summary()

    def can_continue(self) -> bool:
        return self.directory().has_checkpoint()

    def prepare(self) -> None:
        """A fresh directory for the member (one without a checkpoint has nothing to keep)."""
        if not self.fine_tune:
            RunDir(self.run_dir).prepare(overwrite=True)
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in FinetuneDir.FILES:
            (self.run_dir / name).unlink(missing_ok=True)


def default_trainer(cfg: Config, run_dir: Path, *, resume: bool, progress, should_stop):
    from tformer_cli.train.loop import train

    return train(cfg, run_dir, resume=resume, progress=progress, should_stop=should_stop)


def skipped(j: Job, say: Callable[[str], None]) -> MemberOutcome | None:
    """The outcome of a member that finished in an earlier session (resume), else None."""
    done = j.finished()
    if done is None:
        return None
    say(f"{j.label}: finished earlier, skipped")
    return MemberOutcome("ok", summary=done, skipped=True)


def train_member(j: Job, *, cont: bool, trainer: Trainer | None = None, display: Display | None = None,
                 should_stop: Callable[[], bool] = lambda: False,
                 say: Callable[[str], None] = lambda s: None) -> MemberOutcome:
    """Train one member (continue it from its checkpoint when ``cont``); a TformerError becomes a
    failed outcome with its message and hint, not a crash."""
    trainer = trainer or default_trainer
    ctx = display(j.label) if display else contextlib.nullcontext(lambda e: None)
    try:
        if not cont:
            j.prepare()
        with ctx as progress:
            result = trainer(j.cfg, j.run_dir, resume=cont, progress=progress, should_stop=should_stop)
    except Stopped:  # stopped before its first checkpoint: not a failure, nothing to keep
        say(f"{j.label}: stopped before its first checkpoint")
        return MemberOutcome("interrupted")
    except TformerError as e:
        say(f"{j.label}: failed: {e}")
        return failed(e)
    return trained(result)


def failed(e: Exception) -> MemberOutcome:
    """The outcome of a member that ``e`` ended: a TformerError's message and hint, or, for
    anything else, one line naming the exception."""
    if isinstance(e, TformerError):
        return MemberOutcome("failed", error=str(e), hint=e.hint or "")
    return MemberOutcome("failed", error=f"unexpected {type(e).__name__}: {e}")


def trained(result: Result) -> MemberOutcome:
    """The outcome of a member whose training returned ``result``."""
    return MemberOutcome("interrupted" if result.interrupted else "ok", summary=result)


def train_seeds(js: list[Job], *, cont: bool, display: Display | None = None,
                should_stop: Callable[[], bool] = lambda: False,
                say: Callable[[str], None] = lambda s: None) -> list[MemberOutcome]:
    """Train the seeds ``js`` of one member as one batched group (train/batched.py), or continue
    them all from their checkpoints with ``cont``; one outcome per seed, in order.  A failure of
    the group as a whole fails every seed with its message; a seed that diverges fails alone."""
    from tformer_cli.train.batched import train_group

    ctx = display(group_label(js)) if display else contextlib.nullcontext(lambda e: None)
    try:
        if not cont:
            for j in js:
                j.prepare()
        with ctx as progress:
            outs = train_group([j.cfg for j in js], [j.run_dir for j in js], resume=cont, progress=progress,
                               should_stop=should_stop)
    except TformerError as e:
        say(f"{group_label(js)}: failed: {e}")
        return [failed(e) for _ in js]
    result = []
    for j, o in zip(js, outs):
        if o.error is not None:
            say(f"{j.label}: failed: {o.error}")
            result.append(failed(o.error))
        elif o.stopped:
            say(f"{j.label}: stopped before its first checkpoint")
            result.append(MemberOutcome("interrupted"))
        else:
            result.append(trained(o.result))
    return result


def group_label(js: list[Job]) -> str:
    """A group's progress label: its member and seeds."""
    seeds = [j.seed for j in js]
    span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[0] + len(seeds))) else \
        ",".join(map(str, seeds))
    return f"{js[0].member.name} seeds {span} ({len(js)} batched)"


def measured(o: MemberOutcome, j: Job, prompt: str | None, evaluator: Evaluator | None,
             say: Callable[[str], None]) -> MemberOutcome:
    """``o`` with the measurement of a member that finished (read back from its cache when skipped)."""
    if o.status == "ok" and o.post is None and j.cfg.task.kind == "lm":  # a seq2seq run scores itself
        try:
            o.post = measure(j.run_dir, j.cfg, prompt, evaluator or default_evaluator, o.skipped, say, j.label)
        except Stopped:  # Ctrl-C or SIGTERM while measuring: trained, not measured; --resume measures it
            say(f"{j.label}: stopped while measuring (--resume measures it)")
            o.status = "interrupted"
    return o


def member_row(j: Job, o: MemberOutcome | None) -> MemberRow:
    """The row of one member and seed; ``o`` None: the member never started (interrupted before)."""
    row = MemberRow(member=j.member.name, seed=j.seed, changed=j.member.changed,
                    status="not run" if o is None else o.status, run_dir=str(j.run_dir),
                    objective=j.cfg.train.objective, resized=j.member.resized, axes=dict(j.member.axes),
                    d_k=j.cfg.model.d_k)
    if o is None:
        return row
    row.error, row.hint = o.error, o.hint
    s = o.summary
    if isinstance(s, TrainResult) and s.vocab_size and j.cfg.task.kind == "lm":  # a language model's anatomy
        for k, v in anatomy_columns(j.cfg, s.vocab_size).items():
            setattr(row, k, v)
    for k in from_result(type(s)) if s is not None else ():
        if (v := getattr(s, k)) is not None:
            setattr(row, k, v)
    if o.post is not None:
        row.val_loss_causal, row.sample, row.eval_error = o.post.val_loss_causal, o.post.sample, o.post.error
        row.degenerate = o.post.degenerate
        row.measure_s = o.post.seconds
        if o.post.val_loss is not None:  # teacher-forced on the causal-consistent loss's own windows
            row.val_loss = o.post.val_loss
    if isinstance(s, FinetuneResult):
        classifier_columns(row, s)
    elif o.status == "ok" and s is not None:
        train, val = RunDir(j.run_dir).curves()
        row.val_drop_last_fifth = convergence.last_fifth_drop(val, j.cfg.train.steps)
        row.val_rise_from_best = convergence.overfit_rise(val, train)
        row.overfit = convergence.overfit(row.val_rise_from_best)
        final = val[-1][1] if val else None
        row.still_learning = convergence.still_learning(row.val_drop_last_fifth, final, s.init_loss_ref)
    extra = {k: v for k, v in (s.extra if s else {}).items() if k not in ("probe_step", "batched")}
    # (the probe's step is the config's; how seeds were batched is the experiment's execution line)
    row.extra = {**extra, **row.extra}  # task metrics (synthetic corpora, seq2seq, fine-tunes): extra columns
    if any(k in j.member.axes for k in KV_AXES):  # what the head counts cost at generation
        row.extra["kv_cache_bytes_per_token"] = kv_cache_bytes_per_token(j.cfg.model)
    return row


@functools.cache
def from_result(kind: type) -> tuple[str, ...]:
    """The fields a member row takes from its run's result, by name: every field the two share
    but the run directory (the job's), the extras (merged with the row's) and flops_per_token
    (the anatomy's, so that its split into embeddings, attention and FFN adds up)."""
    row = {f.name for f in dataclasses.fields(MemberRow)}
    return tuple(f.name for f in dataclasses.fields(kind)
                 if f.name in row and f.name not in ("run_dir", "extra", "flops_per_token"))


PROBE_MARGIN = 0.02  # a fine-tune still learning: held-out accuracy rose by more than this over the last fifth


def classifier_columns(row: MemberRow, s: FinetuneResult) -> None:
    """A fine-tune's held-out scores as the row's metrics; still learning when the accuracy probed
    at the start of the last fifth (train.finetune.PROBE_AT) was more than PROBE_MARGIN below the
    final one (the training loss is no guide: it keeps falling while a small set is memorised)."""
    if s.test is not None:
        row.extra.update(accuracy=s.test.accuracy, macro_f1=s.test.macro_f1, chance=s.test.chance,
                         accuracy_over_chance=s.test.accuracy - s.test.chance)
    if s.train_accuracy is not None:
        row.extra["train_accuracy"] = s.train_accuracy
    probe = s.extra.get("probe_accuracy")
    if isinstance(probe, (int, float)) and s.test is not None:
        row.still_learning = s.test.accuracy - probe > PROBE_MARGIN
