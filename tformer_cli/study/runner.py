"""Running an experiment: every member x seed trained and measured into one directory.

Members run in sequence in this process, or each in its own worker process
(tformer_cli.study.worker): one per device at a time (--parallel, --isolate), or --jobs N at a
time, on the CPU with the cores split between them, on GPUs packed as memory allows.
The runner is silent: it reports through callbacks and returns an ExperimentResult, which it
also writes to results.json and results.csv.  Trainer and evaluator are injectable for tests.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tformer_cli.core import stop as stop_flag
from tformer_cli.core.config import Config
from tformer_cli.errors import ConfigError, TformerError
from tformer_cli.run.lock import DirLock
from tformer_cli.study import groups, stats, tune, verdict
from tformer_cli.study.job import (
    Display,
    Job,
    Trainer,
    group_label,
    measured,
    member_row,
    skipped,
    train_member,
    train_seeds,
)
from tformer_cli.study.measure import Evaluator
from tformer_cli.study.results import (
    ExperimentResult,
    MemberOutcome,
    arithmetic_of,
    read_results,
    write_json,
    write_results,
)
from tformer_cli.study.spec import (
    SPEC_NAME,
    Member,
    Spec,
    is_experiment_dir,
    load_spec,
    member_dir,
    prepare_experiment_dir,
    validate_members,
)
from tformer_cli.study.worker import WorkerJob

WORKERS = "workers"  # job, outcome and log files of worker processes, in the experiment directory
POLL_S = 0.2


def run_experiment(
    spec: Spec,
    out_dir: str | Path,
    *,
    resume: bool = False,
    trainer: Trainer | None = None,
    evaluator: Evaluator | None = None,
    display: Display | None = None,
    notice: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    parallel: bool = False,
    isolate: bool = False,
    devices: list[str] | None = None,
    jobs: int | str | None = None,
    batch_seeds: bool = True,
) -> ExperimentResult:
    """Train and measure every member x seed into ``out_dir``; write results.json/.csv.

    ``display(label)`` gives a context manager yielding the progress callback of one member.
    ``parallel`` runs one process per device when more than one is given (or visible);
    ``isolate`` runs each member in its own process even on one device (honest peak memory).
    ``jobs`` > 1 on the CPU trains that many members at a time, each in its own process with
    cores / jobs threads (torch's default threads in concurrent processes oversubscribe the cores).
    ``jobs="auto"`` (`tformer study`) picks for the machine: see auto_jobs.
    ``batch_seeds``: the seeds of a member train as one batched model where they can
    (study/groups.py says which and why not); off, every seed is its own run.
    A member that fails is recorded with its error; the others still run.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    validate_members(spec)
    if not resume:
        prepare_experiment_dir(out_dir, spec)
    elif not is_experiment_dir(out_dir):
        raise ConfigError(f"--resume {out_dir}: not an experiment directory (no {SPEC_NAME})")
    lock = DirLock(out_dir, "experiment").acquire()  # one process per experiment directory
    try:
        pretrain(spec, out_dir, trainer, display, notice or (lambda s: None), should_stop or (lambda: False))
        run = _Run(spec, out_dir, resume, trainer, evaluator, display, notice or (lambda s: None),
                   should_stop or (lambda: False))
        devices = devices if devices is not None else visible_devices(spec.config())
        workers = run.plan_units(batch_seeds, jobs, devices)
        execution, outcomes = _execute(run, spec, devices, workers, parallel, isolate)
        execution = "; ".join(filter(None, (execution, run.plan.describe())))
        rows = [member_row(j, o) for j, o in zip(run.jobs, outcomes)]
        choices: list[dict] = []
        if spec.tune:  # each member at its best learning rate, then compared as usual
            spec, rows, choices = tune.collapse(spec, rows)
        stats.add_baseline_diffs(rows, spec)
        if stats.wants_steps_to_baseline(spec):
            stats.add_steps_to_baseline(rows, spec)
        result = ExperimentResult(
            kind=spec.kind, out_dir=str(out_dir), rows=rows, summary=stats.summarize(rows, spec),
            members=list(spec.members), axes=spec.axes, seeds=spec.seeds, tuning=choices,
            interrupted=any(o is None or o.status == "interrupted" for o in outcomes) or stop_flag.requested(),
            execution=execution,
            memory_note=stats.memory_note(rows, execution), significance_rule=stats.SIGNIFICANCE_RULE,
            notes=stats.notes(spec), plot=None, elapsed_s=time.perf_counter() - t0 + _earlier(out_dir, resume),
            verdicts=verdict.verdicts(spec, rows), task=spec.config().task.kind, arithmetic=arithmetic_of(rows))
        write_results(result)
        return result
    finally:
        lock.release()


def run_or_continue(spec: Spec, out_dir: Path, what: str = "experiment", **options) -> ExperimentResult:
    """``spec`` into ``out_dir``: a new experiment, or the one there continued (finished members
    skipped) when it holds the same spec; one with other settings is refused, never mixed."""
    again = is_experiment_dir(out_dir)
    if again and load_spec(out_dir).to_dict() != spec.to_dict():
        raise ConfigError(f"{out_dir} holds this {what} with other settings (seeds or steps)",
                          hint="give another --out, or the same --seeds and --steps to continue it")
    return run_experiment(spec, out_dir, resume=again, **options)


PRETRAIN = "pretrain"  # OUT/pretrain/<name>: the language models of a spec's pretrain: section


def pretrain(spec: Spec, out_dir: Path, trainer, display, say, stop) -> None:
    """Train each language model of ``spec.pretrain`` into OUT/pretrain/<name> before any member
    (one finished in an earlier session is kept, one with a checkpoint continued); a stop or a
    failure here ends the experiment before its members, as a one-line error."""
    from tformer_cli.core.config import from_dict
    from tformer_cli.errors import RunError, Stopped

    for name, cfg in spec.pretrain.items():
        j = Job(Member(name), int(cfg["train"]["seed"]), from_dict(cfg), out_dir / PRETRAIN / name,
                f"pretraining {name}")
        o = skipped(j, say) or train_member(j, cont=j.can_continue(), trainer=trainer, display=display,
                                            should_stop=stop, say=say)
        if o.status == "interrupted":
            raise Stopped(f"the experiment while pretraining {name}",
                          hint=f"continue with --resume {out_dir}")
        if o.status != "ok":
            raise RunError(f"pretraining {name} failed: {o.error}", hint=o.hint or f"see {j.run_dir}")


def pretrain_name(source_run: str | None) -> str | None:
    """NAME when a task.source_run is pretrain/NAME (a model of the experiment's pretrain:), else None."""
    parts = Path(source_run).parts if source_run else ()
    return parts[1] if len(parts) == 2 and parts[0] == PRETRAIN else None


def resolved(cfg: Config, out_dir: Path) -> Config:
    """A member's config with a task.source_run of pretrain/<name> pointed into ``out_dir``."""
    src = cfg.task.source_run
    if src and Path(src).parts[:1] == (PRETRAIN,):
        return cfg.replace({"task.source_run": str(out_dir / cfg.task.source_run)})
    return cfg


def _earlier(out_dir: Path, resume: bool) -> float:
    """Wall time of the sessions before this one (a resumed experiment's time adds up)."""
    if not resume:
        return 0.0
    try:
        return float(read_results(out_dir).elapsed_s or 0.0)
    except (OSError, ValueError, KeyError, TypeError, TformerError):
        return 0.0


def visible_devices(cfg: Config) -> list[str]:
    """One entry per CUDA device when the config may use CUDA; else the configured device."""
    dev = cfg.train.device
    if dev in ("auto", "cuda"):
        try:
            import torch

            n = torch.cuda.device_count()
        except Exception:
            n = 0
        if n > 0:
            return [f"cuda:{i}" for i in range(n)]
    return [dev]


def auto_jobs(devices: list[str]) -> int:
    """How many members (or groups of seeds) to train at a time when the user did not say
    (`tformer study`): one process per core, with one thread each on the CPU, a batched member's
    seeds shared out among them (study/groups.py).  Measured on 2 cores (BENCHMARKS.md, batched
    seeds): two 1-thread processes beat one 2-thread process by 1.07x with 24 seeds a member and
    by 1.20x with 3, to the same verdicts.  On GPUs the processes are packed by free memory
    (_execute)."""
    return os.cpu_count() or 1


def _execute(run: "_Run", spec: Spec, devices: list[str], jobs: int, parallel: bool, isolate: bool
             ) -> tuple[str, list[MemberOutcome | None]]:
    """Run the jobs the way the flags and the visible devices say; (how, in words; the outcomes)."""
    if jobs > 1 and devices[:1] in (["cpu"], ["auto"]) and not parallel:  # no CUDA device visible
        run.threads = max(1, (os.cpu_count() or 1) // jobs)
        execution = (f"{jobs} at a time on the CPU, one process each with {run.threads} thread(s) "
                     "(tokens/s is each member's under that load)")
        outcomes = run.in_processes(devices[:1] * jobs)
    elif jobs > 1 and devices[0].startswith("cuda"):  # several small members share each GPU
        slots = pack_slots(devices, jobs, member_bytes(spec), {d: _free_bytes(d) for d in devices})
        run.threads = max(1, (os.cpu_count() or 1) // len(slots))
        execution = (f"{len(slots)} at a time on {len(devices)} GPU(s) (as many per GPU as fit its free "
                     f"memory, at most {-(-jobs // len(devices))}), one process each")
        outcomes = run.in_processes(slots)
    elif parallel and len(devices) > 1:
        execution = f"in parallel, one process per device ({', '.join(devices)})"
        outcomes = run.in_processes(devices)
    elif isolate or parallel:
        why = "" if isolate else " (--parallel needs more than one CUDA device; only one is visible)"
        execution = f"in sequence, one process per member{why}"
        outcomes = run.in_processes(devices[:1] or [spec.config().train.device])
    else:
        execution = "in sequence, in this process"
        outcomes = run.inline()
    return execution, outcomes


CUDA_PROCESS_BYTES = 512 * 2**20  # a worker's CUDA context and allocator slack, besides its model (estimate)


def member_bytes(spec: Spec) -> int:
    """The largest training-memory estimate among the members (study/groups.py's), for packing
    members onto a GPU."""
    return groups.largest_training_bytes([spec.member_config(m, spec.seeds[0]) for m in spec.members])


def _free_bytes(device: str) -> int | None:
    import torch

    from tformer_cli.core.memory import available

    return available(torch.device(device))[0]


def pack_slots(devices: list[str], jobs: int, need: int, free: dict[str, int | None]) -> list[str]:
    """Worker slots for ``jobs`` members at a time over ``devices``, spread round-robin, with no
    more on a device than its free memory holds at ``need`` bytes (plus a process's CUDA context)
    each; at least one per device, whatever the estimate says (the member itself then reports)."""
    room = {d: jobs if free.get(d) is None else max(1, free[d] // (need + CUDA_PROCESS_BYTES)) for d in devices}
    slots: list[str] = []
    while len(slots) < jobs:
        added = [d for d in devices if slots.count(d) < room[d]][: jobs - len(slots)]
        if not added:
            break
        slots += added
    return slots


class _Run:
    """The jobs of one experiment session and the two ways of running them."""

    def __init__(self, spec: Spec, out_dir: Path, resume: bool, trainer, evaluator, display, say, stop):
        self.spec, self.out_dir, self.resume = spec, out_dir, resume
        self.trainer, self.evaluator, self.display, self.say, self.stop = trainer, evaluator, display, say, stop
        self.jobs = [Job(m, s, resolved(spec.member_config(m, s), out_dir), member_dir(out_dir, m, s),
                         f"{m.name} seed {s}")
                     for m in spec.members for s in spec.seeds]
        self.threads: int | None = None  # torch threads of each worker process (CPU jobs)
        for i, j in enumerate(self.jobs):
            j.label = f"[{i + 1}/{len(self.jobs)}] {j.label}"
        self.plan = groups.Plan([[j] for j in self.jobs])  # plan_units replaces it

    def plan_units(self, batch_seeds: bool, jobs: int | str | None, devices: list[str]) -> int:
        """Group the jobs still to train (study/groups.py; finished ones are skipped alone) for
        ``jobs`` workers ("auto": auto_jobs picks); the number of workers."""
        batch = batch_seeds and self.trainer is None  # an injected trainer (tests) trains one job at a time
        todo = [j for j in self.jobs if not (self.resume and j.finished() is not None)]
        cap = groups.max_group_size(todo, devices[0]) if batch else None
        if jobs == "auto":
            jobs = auto_jobs(devices)
        workers = min(int(jobs or 1), len(self.jobs))
        p = groups.plan(todo, batch=batch, cont=self.resume, workers=workers, max_group=cap)
        done = [[j] for j in self.jobs if j not in todo]
        self.plan = groups.Plan(done + p.units, p.alone, p.off if self.trainer is None else "", p.split_off)
        return workers

    def _ordered(self, outcomes: dict[int, MemberOutcome | None]) -> list[MemberOutcome | None]:
        return [outcomes.get(id(j)) for j in self.jobs]

    def _skipped(self, j: Job) -> MemberOutcome | None:
        o = skipped(j, self.say) if self.resume else None
        return measured(o, j, self.spec.prompt, self.evaluator, self.say) if o else None

    def inline(self) -> list[MemberOutcome | None]:
        out: dict[int, MemberOutcome | None] = {}
        for unit in self.plan.units:
            if self.stop():
                continue
            if len(unit) > 1:
                trained = train_seeds(unit, cont=self.resume and unit[0].can_continue(), display=self.display,
                                      should_stop=self.stop, say=self.say)
                for j, o in zip(unit, trained):
                    out[id(j)] = measured(o, j, self.spec.prompt, self.evaluator, self.say)
                continue
            j = unit[0]
            o = self._skipped(j) or train_member(j, cont=self.resume and j.can_continue(), trainer=self.trainer,
                                                 display=self.display, should_stop=self.stop, say=self.say)
            out[id(j)] = measured(o, j, self.spec.prompt, self.evaluator, self.say)
        return self._ordered(out)

    def in_processes(self, devices: list[str]) -> list[MemberOutcome | None]:
        """One worker process per member, at most one per device at a time."""
        free: queue.Queue[str] = queue.Queue()
        for d in devices:
            free.put(d)
        work = self.out_dir / WORKERS
        work.mkdir(parents=True, exist_ok=True)

        def one(unit: list[Job]) -> list[MemberOutcome | None]:
            done = self._skipped(unit[0]) if len(unit) == 1 else None
            if done is not None:
                return [done]
            device = free.get()
            try:
                return [None] * len(unit) if self.stop() else self._worker(unit, device, work)
            finally:
                free.put(device)

        with ThreadPoolExecutor(max_workers=len(devices)) as pool:
            results = list(pool.map(one, self.plan.units))
        return self._ordered({id(j): o for unit, os_ in zip(self.plan.units, results) for j, o in zip(unit, os_)})

    def _worker(self, unit: list[Job], device: str, work: Path) -> list[MemberOutcome]:
        """Run ``python -m tformer_cli.study.worker JOB`` for one job or a group of seeds and read
        back the outcomes it writes.  A stop request is passed on as SIGTERM: the worker saves a
        checkpoint and reports."""
        seeds = [WorkerJob(config=j.cfg.replace({"train.device": device}).to_dict(), seed=j.seed,
                           member=j.member.name, run_dir=str(j.run_dir), label=j.label,
                           cont=self.resume and j.can_continue(), prompt=self.spec.prompt,
                           outcome=str(work / f"{j.run_dir.name}.outcome.json"), threads=self.threads)
                 for j in unit]
        wj = seeds[0] if len(unit) == 1 else WorkerJob(**{**seeds[0].to_dict(), "group": [s.to_dict() for s in seeds]})
        name = unit[0].run_dir.name + (f"-group{len(unit)}" if len(unit) > 1 else "")
        job_path, log_path = work / f"{name}.job.json", work / f"{name}.log"
        for s in seeds:
            Path(s.outcome).unlink(missing_ok=True)
        write_json(job_path, wj)
        label = unit[0].label if len(unit) == 1 else group_label(unit)
        self.say(f"{label}: started on {device}")
        with open(log_path, "w") as log:
            env = {**os.environ, **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {})}
            proc = subprocess.Popen([sys.executable, "-m", "tformer_cli.study.worker", str(job_path)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            rc = _wait(proc, self.stop)
        outs = [_read_outcome(Path(s.outcome), rc, log_path) for s in seeds]
        for j, o in zip(unit, outs):
            self.say(f"{j.label}: " + {"ok": "done", "interrupted": "interrupted"}.get(o.status, f"failed: {o.error}"))
        return outs


def _wait(proc: subprocess.Popen, stop: Callable[[], bool]) -> int:
    asked = False
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if stop() and not asked:
                proc.send_signal(signal.SIGTERM)
                asked = True


def _read_outcome(path: Path, rc: int, log: Path) -> MemberOutcome:
    try:
        return MemberOutcome.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        status = "interrupted" if rc in (130, -signal.SIGINT, -signal.SIGTERM) else "failed"
        return MemberOutcome(status, error=f"the worker process exited with code {rc} without reporting "
                                           f"(its output: {log})")
