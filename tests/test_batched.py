"""Batched seeds (train/batched.py, study/groups.py): a member's seeds trained as one vmapped
model match their own single runs, resume bitwise, stop at a step boundary, drop a NaN seed
and leave ordinary run directories; the runner groups by default and says how."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.batched import FIRST, SWITCHES, single_run
from bench.batched import curve as _curve
from bench.batched import first_steps as _first_steps
from conftest import TINY, assert_same_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = (0, 1, 2)


def _cfg(seed: int = 0, **sets):
    from tformer_cli.core.config import from_dict

    base = {k: dict(v) for k, v in TINY.items()}
    base["train"].update(steps=24, eval_interval=8, log_interval=1, eval_iters=2)
    return from_dict(base).replace({"train.seed": seed, **sets})


# The exactness checks: the first FIRST steps of a shipped study's run (its size and schedule);
# `python -m bench.batched --exactness` prints the differences these tests bound.
STUDY_SIZE = {"model.d_model": 64, "model.n_head": 4, "model.block_size": 32, "train.batch_size": 16,
              "train.lr": 0.003, "train.warmup_steps": 100, "train.steps": 2000, "train.eval_interval": 50}


def _single(cfg, d: Path):
    """``tformer train``'s run of ``cfg`` into ``d``."""
    from tformer_cli.run.rundir import prepare_run_dir
    from tformer_cli.train.loop import train

    prepare_run_dir(d, False)
    return train(cfg, d)


def _group(cfgs, dirs, **kw):
    from tformer_cli.run.rundir import prepare_run_dir
    from tformer_cli.train.batched import train_group

    if not kw.get("resume"):
        for d in dirs:
            prepare_run_dir(d, False)
    return train_group(cfgs, dirs, **kw)


def _assert_matches(batched: Path, single: Path) -> None:
    """Each step's train loss within 1e-3 relative and typically (the median step) within 1e-5;
    the final val loss within 1e-3."""
    import statistics

    tb, ts = _curve(batched, "train_loss"), _curve(single, "train_loss")
    assert [s for s, _ in tb] == [s for s, _ in ts] and tb
    rel = [abs(a - b) / abs(b) for (_, a), (_, b) in zip(tb, ts)]
    worst = max(range(len(rel)), key=rel.__getitem__)
    assert rel[worst] <= 1e-3, (tb[worst], ts[worst])
    assert statistics.median(rel) <= 1e-5, statistics.median(rel)
    vb, vs = _curve(batched, "val_loss"), _curve(single, "val_loss")
    assert [s for s, _ in vb] == [s for s, _ in vs] and vb
    assert abs(vb[-1][1] - vs[-1][1]) <= 1e-3 * abs(vs[-1][1])


def _check_switch(tmp_path: Path, sets: dict, explicit: bool = False) -> None:
    """Each seed of a group against its own single run (``explicit``: the run with the group's
    attention arithmetic, softmax(q k^T) v written out, instead of SDPA's kernel).

    Why not 1e-4 at every step: a single run and its own explicit-attention twin, two correct
    float32 computations of the same model, part by more than 1e-4 at a few steps of some
    switches (rounding that Adam amplifies where the loss turns), and a batched group sums its
    matmuls in yet another order; docs/studies.md gives the figures."""
    cfgs = [_cfg(s, **{**STUDY_SIZE, **sets}) for s in SEEDS]
    dirs = [tmp_path / f"b{s}" for s in SEEDS]
    progress, stop = _first_steps()
    outs = _group(cfgs, dirs, progress=progress, should_stop=stop)
    assert all(o.result is not None and o.result.steps_done == FIRST for o in outs)
    for c, d in zip(cfgs, dirs):
        single = tmp_path / f"single{c.train.seed}"
        single_run(c, single, explicit=explicit)  # its first FIRST steps
        assert len(_curve(single, "train_loss")) == FIRST
        _assert_matches(d, single)


def test_group_matches_single_runs(tmp_path):
    _check_switch(tmp_path, {})


@pytest.mark.slow
def test_group_matches_single_runs_with_its_attention_arithmetic(tmp_path):
    _check_switch(tmp_path, {}, explicit=True)


def test_group_matches_single_runs_modern_switches(tmp_path):
    """One fast case holding several switches at once; each alone is in the slow test below."""
    _check_switch(tmp_path, {"model.pos_encoding": "rope", "model.norm": "rmsnorm", "model.activation": "swiglu",
                             "model.n_kv_head": 1, "model.qk_norm": True, "train.grad_clip": 0.05})




@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_group_matches_single_runs_per_switch(tmp_path, name):
    _check_switch(tmp_path, SWITCHES[name])


def test_each_seed_is_an_ordinary_run(tmp_path, cli):
    """Config, metrics, checkpoint and summary per seed: sample, inspect and runs read them."""
    dirs = [tmp_path / f"b{s}" for s in (0, 1)]
    outs = _group([_cfg(s) for s in (0, 1)], dirs)
    for d, o, seed in zip(dirs, outs, (0, 1)):
        for f in ("config.yaml", "metrics.jsonl", "checkpoint.safetensors", "checkpoint.json", "summary.json"):
            assert (d / f).is_file(), f
        summary = json.loads((d / "summary.json").read_text())
        assert summary["extra"]["batched"]["seeds"] == 2 and summary["arithmetic"] == "float32 on cpu"
        assert o.result.steps_done == 24
        r = cli("sample", str(d), "--prompt", "The", "--max-new-tokens", "5")
        assert r.code == 0, r
    assert cli("inspect", str(dirs[1])).code == 0
    r = cli("runs", str(tmp_path))
    assert r.code == 0 and "b0" in r.out and "b1" in r.out, r
    # each seed started from its own initialisation
    from safetensors import safe_open

    with safe_open(str(dirs[0] / "checkpoint.safetensors"), "pt") as a, \
            safe_open(str(dirs[1] / "checkpoint.safetensors"), "pt") as b:
        k = next(k for k in a.keys() if "weight" in k)
        assert not a.get_tensor(k).equal(b.get_tensor(k))


def test_resume_after_stop_is_bitwise(tmp_path):
    """Stopped right after the step-8 checkpoint and resumed: every seed's final checkpoint equals
    that of the unbroken group, bitwise (CPU)."""
    cfgs = [_cfg(s) for s in SEEDS]
    full = [tmp_path / f"full{s}" for s in SEEDS]
    part = [tmp_path / f"part{s}" for s in SEEDS]
    _group(cfgs, full)
    seen = []
    stopped = _group(cfgs, part, progress=lambda e: seen.append(e.step) if e.kind == "checkpoint" else None,
                     should_stop=lambda: bool(seen))
    assert all(o.result.interrupted and o.result.steps_done == 8 for o in stopped)
    for d in part:  # stopped at a step boundary: the checkpoint is that step's
        assert json.loads((d / "checkpoint.json").read_text())["train_state"]["step"] == 8
    resumed = _group(cfgs, part, resume=True)
    assert all(o.result.steps_done == 24 and not o.result.interrupted for o in resumed)
    for a, b in zip(full, part):
        assert_same_checkpoints(a, b)
        assert _curve(a, "val_loss") == _curve(b, "val_loss")


def test_a_nan_seed_is_dropped_and_the_others_go_on(tmp_path, monkeypatch):
    import torch

    from tformer_cli.train import batched

    init = batched._Group.__init__

    def poisoned(self, *a, **kw):
        init(self, *a, **kw)
        with torch.no_grad():
            next(iter(self.stacked.values()))[1].fill_(float("nan"))  # seed 1's token embedding

    monkeypatch.setattr(batched._Group, "__init__", poisoned)
    dirs = [tmp_path / f"b{s}" for s in SEEDS]
    outs = _group([_cfg(s) for s in SEEDS], dirs)
    assert outs[1].result is None and outs[1].error is not None
    assert "NaN" in str(outs[1].error) or "nan" in str(outs[1].error).lower()
    assert not (dirs[1] / "checkpoint.safetensors").exists()  # never a bad checkpoint
    for i in (0, 2):
        assert outs[i].result is not None and outs[i].result.steps_done == 24
        assert math.isfinite(outs[i].result.val_loss)
    monkeypatch.setattr(batched._Group, "__init__", init)
    single = tmp_path / "s2"
    _single(_cfg(2), single)
    _assert_matches(dirs[2], single)  # the poisoned neighbour changed nothing


def test_what_cannot_be_batched_says_why():
    from tformer_cli.errors import RunError
    from tformer_cli.train.batched import batch_problem, train_group

    assert batch_problem(_cfg()) is None
    assert "LSTM" in batch_problem(_cfg(**{"model.arch": "lstm"}))
    assert "dropout" in batch_problem(_cfg(**{"model.dropout": 0.1}))
    assert "muon" in batch_problem(_cfg(**{"train.optimizer": "muon"}))
    assert "float16" in batch_problem(_cfg(**{"train.dtype": "float16"}))
    with pytest.raises(RunError, match="dropout"):
        train_group([_cfg(0, **{"model.dropout": 0.1}), _cfg(1, **{"model.dropout": 0.1})], [Path("x"), Path("y")])
    with pytest.raises(RunError, match="differ"):
        train_group([_cfg(0), _cfg(1, **{"train.lr": 0.01})], [Path("x"), Path("y")])


# ---------------------------------------------------------------- the plan


def _jobs(spec, root: Path):
    from tformer_cli.study.job import Job

    return [Job(member=m, seed=s, cfg=spec.member_config(m, s), run_dir=root / f"{m.name}-s{s}", label=m.name)
            for m in spec.members for s in spec.seeds]


def _spec(members: dict[str, dict], seeds=SEEDS):
    from tformer_cli.study.spec import Member, Spec

    return Spec(kind="ablate", base=_cfg().to_dict(), members=[Member(n, o) for n, o in members.items()],
                seeds=list(seeds))


def test_plan_groups_a_members_seeds_and_says_who_trains_alone(tmp_path):
    from tformer_cli.study import groups

    spec = _spec({"baseline": {}, "drop": {"model.dropout": 0.1}, "muon": {"train.optimizer": "muon"}})
    p = groups.plan(_jobs(spec, tmp_path), batch=True, cont=False)
    assert [len(u) for u in p.units] == [3, 1, 1, 1, 1, 1, 1]
    assert {u[0].seed for u in p.units[:1]} == {0} and [j.seed for j in p.units[0]] == [0, 1, 2]
    assert set(p.alone) == {"drop", "muon"}
    text = p.describe()
    assert "1 group(s) of 3 seeds" in text and "drop alone: dropout" in text and "muon alone" in text
    off = groups.plan(_jobs(spec, tmp_path), batch=False, cont=False)
    assert all(len(u) == 1 for u in off.units) and off.describe() == "seeds: one run each (--no-batch-seeds)"


def test_plan_splits_groups_for_workers_and_memory(tmp_path):
    from tformer_cli.study import groups

    spec = _spec({"a": {}, "b": {"model.n_head": 4}}, seeds=range(6))
    jobs = _jobs(spec, tmp_path)
    assert [len(u) for u in groups.plan(jobs, batch=True, cont=False).units] == [6, 6]
    assert [len(u) for u in groups.plan(jobs, batch=True, cont=False, workers=4).units] == [3, 3, 3, 3]
    assert [len(u) for u in groups.plan(jobs, batch=True, cont=False, max_group=4).units] == [4, 2, 4, 2]
    odd = groups.plan(_jobs(_spec({"a": {}, "b": {"model.n_head": 4}, "c": {}}, seeds=range(3)), tmp_path),
                      batch=True, cont=False, workers=2)  # 3 members on 2 workers: each split in two
    assert [len(u) for u in odd.units] == [2, 1, 2, 1, 2, 1] and odd.split_off == 3
    assert "(3 group(s) of 2 seeds, and 3 seed(s) alone;" in odd.describe()
    assert groups.max_group_size(jobs, "cpu") >= 1


def test_plan_groups_resumed_seeds_by_their_checkpoint_step(tmp_path):
    """Seeds that stopped at different steps cannot share a group: each step is its own group."""
    from tformer_cli.study import groups

    spec = _spec({"a": {}}, seeds=(0, 1, 2))
    jobs = _jobs(spec, tmp_path)
    for j, step in zip(jobs, (8, 8, 16)):  # stopped right after the checkpoint of that step
        saved: list[int] = []
        _group([j.cfg], [j.run_dir], progress=lambda e: saved.append(e.step) if e.kind == "checkpoint" else None,
               should_stop=lambda s=step: s in saved)
        assert not (j.run_dir / "summary.json").exists() or json.loads(
            (j.run_dir / "summary.json").read_text())["interrupted"]
    units = groups.plan(jobs, batch=True, cont=True).units
    assert sorted(len(u) for u in units) == [1, 2]


def test_auto_jobs_is_one_process_per_core_with_a_members_seeds_shared_out(tmp_path):
    from tformer_cli.study import groups
    from tformer_cli.study.runner import auto_jobs

    cores = os.cpu_count() or 1
    assert auto_jobs(["cpu"]) == cores and auto_jobs(["cuda:0"]) == cores
    jobs = _jobs(_spec({"a": {}}, seeds=range(4)), tmp_path)
    assert [len(u) for u in groups.plan(jobs, batch=True, cont=False, workers=2).units] == [2, 2]


# ---------------------------------------------------------------- the runner


def _rows(result):
    return {(r.member, r.seed): r for r in result.rows}


def test_runner_batches_by_default_with_the_same_results(tmp_path):
    from tformer_cli.study.runner import run_experiment

    spec = _spec({"baseline": {}, "heads-4": {"model.n_head": 4}, "drop": {"model.dropout": 0.1}}, seeds=(0, 1))
    on = run_experiment(spec, tmp_path / "on")
    off = run_experiment(spec, tmp_path / "off", batch_seeds=False)
    assert "seeds batched into one model per group (2 group(s) of 2 seeds" in on.execution
    assert "drop alone: dropout" in on.execution
    assert "one run each" in off.execution
    a, b = _rows(on), _rows(off)
    assert a.keys() == b.keys()
    for k in a:
        assert not a[k].error and not b[k].error, k
        assert a[k].val_loss == pytest.approx(b[k].val_loss, rel=1e-3), k
        assert a[k].train_loss == pytest.approx(b[k].train_loss, rel=1e-3), k
    assert "batched" not in on.rows[0].extra  # the grouping is the execution line's, not a column


def test_runner_resume_continues_a_stopped_group(tmp_path):
    from tformer_cli.study.runner import run_experiment

    spec = _spec({"baseline": {}, "heads-4": {"model.n_head": 4}}, seeds=(0, 1))
    full = run_experiment(spec, tmp_path / "full")
    steps = []

    def stop():
        steps.append(1)
        return len(steps) > 12  # polled once per step: stops inside the first group

    part = run_experiment(spec, tmp_path / "part", should_stop=stop)
    assert part.interrupted
    done = run_experiment(spec, tmp_path / "part", resume=True)
    assert not done.interrupted
    for (m, s), r in _rows(full).items():
        assert _rows(done)[(m, s)].val_loss == r.val_loss, (m, s)
        rel = Path(r.run_dir).relative_to(tmp_path / "full")
        assert_same_checkpoints(tmp_path / "full" / rel, tmp_path / "part" / rel)


@pytest.mark.slow
def test_runner_sends_groups_to_worker_processes(tmp_path):
    """--jobs 2 on the CPU: each group is one worker process that writes every seed's outcome."""
    from tformer_cli.study.runner import run_experiment

    spec = _spec({"baseline": {}, "heads-4": {"model.n_head": 4}}, seeds=(0, 1))
    inline = run_experiment(spec, tmp_path / "inline")
    procs = run_experiment(spec, tmp_path / "procs", jobs=2)
    assert "2 at a time on the CPU" in procs.execution and "2 group(s) of 2 seeds" in procs.execution
    for k, r in _rows(inline).items():
        assert not _rows(procs)[k].error
        assert _rows(procs)[k].val_loss == pytest.approx(r.val_loss, rel=1e-3), k


def test_cli_flag_and_summary_in_80_columns(tmp_path, tiny_yaml, monkeypatch):
    from conftest import piped, terminal

    r = terminal(monkeypatch, "sweep-heads", str(tiny_yaml), "--heads", "1,2", "--seeds", "2",
              "--steps", "10", "--out", str(tmp_path / "on"))
    assert r.code == 0, r
    assert "seeds batched into one model per group" in " ".join(r.out.split())
    r = piped(monkeypatch, "sweep-heads", str(tiny_yaml), "--heads", "1,2", "--seeds", "2",
              "--steps", "10", "--no-batch-seeds", "--out", str(tmp_path / "off"))
    assert r.code == 0 and "seeds: one run each (--no-batch-seeds)" in " ".join(r.out.split()), r
    r = piped(monkeypatch, "sweep-heads", "--resume", str(tmp_path / "on"), "--no-batch-seeds")
    assert r.code == 0 and "seeds: one run each (--no-batch-seeds)" in " ".join(r.out.split()), r  # allowed


# ---------------------------------------------------------------- a kill, not a stop

KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {root!r}]  # the tests and the repository (bench.batched)
import torch
torch.set_num_threads(1)
from test_batched import _cfg
from tformer_cli.train.batched import train_group
resume = sys.argv[1] == "resume"
dirs = [Path(d) for d in sys.argv[2:]]
train_group([_cfg(s, **{{"train.steps": 400, "train.eval_interval": 50}}) for s in range(len(dirs))], dirs,
            resume=resume)
"""


@pytest.mark.slow
def test_kill_9_during_a_group_resumes_every_seed_bitwise(tmp_path):
    from tformer_cli.run.rundir import prepare_run_dir

    script = tmp_path / "group.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent), root=str(Path(__file__).parent.parent)))
    full = [tmp_path / f"full{s}" for s in range(2)]
    part = [tmp_path / f"part{s}" for s in range(2)]
    for d in full + part:
        prepare_run_dir(d, False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), "new", *map(str, full)], check=True, env=env)
    proc = subprocess.Popen([sys.executable, str(script), "new", *map(str, part)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not all((d / "checkpoint.json").exists() for d in part):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (part[0] / "summary.json").exists(), "the group finished before the kill: lengthen it"
    subprocess.run([sys.executable, str(script), "resume", *map(str, part)], check=True, env=env)
    for a, b in zip(full, part):
        assert_same_checkpoints(a, b)
