"""A worker process that trains and measures one member: ``python -m tformer_cli.study.worker JOB.json``.

The experiment runner writes JOB.json (a WorkerJob), starts this module, and reads back the
MemberOutcome it writes to ``outcome`` (status, error message and hint, TrainResult, measurement).
SIGINT or SIGTERM asks training to stop after the current step: the member saves a checkpoint
and reports itself interrupted.  A second SIGINT quits at once.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class WorkerJob:
    config: dict[str, Any]  # Config.to_dict() of the member, train.device set to the worker's device
    seed: int
    member: str
    run_dir: str
    label: str
    cont: bool  # continue from the member's checkpoint
    prompt: str | None
    outcome: str  # where to write the MemberOutcome
    threads: int | None = None  # torch threads (CPU members trained side by side)
    group: list[dict[str, Any]] | None = None  # WorkerJobs of a member's seeds batched into one model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        from tformer_cli.core import stop

        stop.request()  # tokenization, evaluation and the measurement poll the process-wide flag


def run(job: WorkerJob, should_stop=lambda: False):
    """Train and measure the member of ``job``; the MemberOutcome (never raises a TformerError)."""
    return run_group([job], should_stop)[0]


def run_group(jobs: list[WorkerJob], should_stop=lambda: False):
    """Train the member of one job, or the seeds ``jobs`` as one batched group, and measure each;
    their MemberOutcomes (a failure fails every seed with its message, in one line)."""
    from tformer_cli.core import config as cfgmod
    from tformer_cli.study.job import Job, failed, measured, train_member, train_seeds
    from tformer_cli.study.spec import Member

    try:
        js = [Job(Member(w.member), w.seed, cfgmod.from_dict(w.config), Path(w.run_dir), w.label) for w in jobs]
        outs = (train_seeds(js, cont=jobs[0].cont, should_stop=should_stop) if len(js) > 1 else
                [train_member(js[0], cont=jobs[0].cont, should_stop=should_stop)])
        return [measured(o, j, w.prompt, None, lambda s: None) for o, j, w in zip(outs, js, jobs)]
    except Exception as e:  # noqa: BLE001 (an unknown failure is still reported, in one line)
        return [failed(e) for _ in jobs]


def main(argv: list[str] | None = None) -> int:
    from tformer_cli.study.results import write_json

    args = sys.argv[1:] if argv is None else argv
    job = WorkerJob(**json.loads(Path(args[0]).read_text()))
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    stop = _Stop()
    signal.signal(signal.SIGINT, stop.handle)
    signal.signal(signal.SIGTERM, stop.handle)
    seeds = [WorkerJob(**g) for g in job.group] if job.group else [job]
    outcomes = run_group(seeds, stop)
    for w, o in zip(seeds, outcomes):
        write_json(Path(w.outcome), o)
    statuses = {o.status for o in outcomes}
    return 0 if statuses == {"ok"} else 130 if "interrupted" in statuses else 1


if __name__ == "__main__":
    sys.exit(main())
