"""Which members' seeds train together as one batched model (train/batched.py), and why the
others train alone: the runner's plan, in units of work (a group of seeds, or one job).

A group is the seeds of one member that can be batched (train.batched.batch_problem) and start
from the same step (all new, or all continuing from checkpoints of the same step).  Its size is
capped by memory (each seed needs its own weights, optimizer moments and activations) and the
member's seeds are split into as many groups as keep every worker busy.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from tformer_cli.core.config import Config
from tformer_cli.errors import TformerError
from tformer_cli.study.job import Job

NEW = -1  # the start step of a job with no checkpoint to continue


@dataclass
class Plan:
    units: list[list[Job]]  # each a group of seeds (2 or more) or one job alone
    alone: dict[str, str] = field(default_factory=dict)  # member -> why its seeds train alone
    off: str = ""  # why nothing was batched, when batching was switched off
    split_off: int = 0  # seeds a member's split left alone (its seeds shared out among the workers)

    def describe(self) -> str:
        """The plan in words, for the experiment's summary ("" when there is nothing to say:
        one seed each, nothing batched and nothing switched off)."""
        groups = [u for u in self.units if len(u) > 1]
        if not groups and not self.alone:
            return f"seeds: one run each ({self.off})" if self.off else ""
        parts = []
        if groups:
            sizes = Counter(len(u) for u in groups)
            sized = ", ".join(f"{n} group(s) of {s} seeds" for s, n in sorted(sizes.items(), reverse=True))
            if self.split_off:
                sized += f", and {self.split_off} seed(s) alone"
            parts.append(f"seeds batched into one model per group ({sized}; a batched seed's tokens/s "
                         "is its group's divided by its seeds)")
        for member, why in self.alone.items():
            parts.append(f"{member} alone: {why}")
        return "; ".join(parts)


def start_step(j: Job, cont: bool) -> int:
    """The step a job starts from: its checkpoint's when it continues, NEW otherwise."""
    from tformer_cli.run import checkpoint

    if not (cont and j.can_continue()):
        return NEW
    try:
        return int(checkpoint.peek(j.run_dir)["train_state"]["step"])  # the header only, as resume reads it
    except (TformerError, KeyError, TypeError, ValueError):
        return NEW - 1  # unreadable: alone, where the single path reports it


def plan(jobs: list[Job], *, batch: bool, cont: bool, workers: int = 1, max_group: int | None = None) -> Plan:
    """The units of ``jobs`` (those still to train): groups where ``batch`` allows, else one each
    (``batch`` False: the user's --no-batch-seeds)."""
    from tformer_cli.train.batched import batch_problem

    if not batch:
        return Plan([[j] for j in jobs], {}, "--no-batch-seeds")
    alone: dict[str, str] = {}
    by_key: dict[tuple[str, int], list[Job]] = {}
    order: list[tuple[str, int] | Job] = []
    for j in jobs:
        why = batch_problem(j.cfg)
        key = (j.member.name, start_step(j, cont))
        if why is not None or key[1] < NEW:
            alone[j.member.name] = why or "its checkpoint could not be read"
            order.append(j)
            continue
        if key not in by_key:
            by_key[key] = []
            order.append(key)
        by_key[key].append(j)
    chunks = _chunks_per_member(len(by_key), workers)
    units: list[list[Job]] = []
    split_off = 0
    for item in order:
        if isinstance(item, Job):
            units.append([item])
            continue
        members = by_key[item]
        size = math.ceil(len(members) / min(chunks, len(members)))
        if max_group is not None:
            size = max(1, min(size, max_group))
        chunks_of = [members[i:i + size] for i in range(0, len(members), size)]
        split_off += sum(len(c) == 1 for c in chunks_of) if len(chunks_of) > 1 else 0
        units += chunks_of
    return Plan(units, alone, split_off=split_off)


def _chunks_per_member(n_members: int, workers: int) -> int:
    """Into how many groups to split each member's seeds so that ``workers`` workers finish
    together: the c in 1..4 with the fewest rounds of work (ceil(n c / workers) rounds of 1/c each)."""
    if n_members == 0 or workers <= 1:
        return 1
    return min(range(1, 5), key=lambda c: (math.ceil(n_members * c / workers) / c, c))


def max_group_size(jobs: list[Job], device: str) -> int | None:
    """The most seeds of one group that the device's free memory holds (core/memory.py's training
    estimate per seed, at the member's batch), or None when the free memory is not known."""
    from tformer_cli.core.device import select
    from tformer_cli.core.memory import available
    from tformer_cli.train.batched import batch_problem

    batchable = [j.cfg for j in jobs if batch_problem(j.cfg) is None]
    if not batchable:
        return None
    try:
        free, _ = available(select(device))
    except TformerError:
        return None
    if free is None:
        return None
    return max(1, int(free * 0.8) // max(largest_training_bytes(batchable), 1))  # a fifth for the rest


def largest_training_bytes(cfgs: list[Config]) -> int:
    """The largest training-memory estimate among ``cfgs`` (core/memory.py's, at each one's batch;
    the vocabulary is its corpus's, prepared once per distinct data config).  A corpus that cannot
    be prepared is left out: its member fails in its own training, with that message."""
    from tformer_cli.core.data import prepare
    from tformer_cli.core.memory import estimate

    vocabs: dict[str, int | None] = {}
    worst = 0
    for cfg in cfgs:
        key = repr(cfg.data)
        if key not in vocabs:
            try:
                vocabs[key] = prepare(cfg.data).vocab_size
            except TformerError:
                vocabs[key] = None
        if vocabs[key] is not None:
            vocab = vocabs[key] + (cfg.train.objective == "mlm")
            worst = max(worst, estimate(cfg.model, vocab, cfg.train.batch_size, training=True).total)
    return worst
