"""TensorBoard event files (run/tensorboard.py): read back with TensorBoard's own reader, they hold
what metrics.jsonl holds, step for step, and a resumed run shows no step twice."""

from __future__ import annotations

import json
import math

import pytest

from conftest import TINY, interrupted_and_resumed, one_thread  # noqa: F401

pytest.importorskip("tensorboard")


def scalars(run_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _cfg(**train):
    from tformer_cli.core.config import from_dict

    cfg = {k: dict(v) for k, v in TINY.items()}
    cfg["train"].update({"steps": 20, "eval_interval": 5, "log_interval": 5, "ckpt_interval": 10, **train})
    return from_dict(cfg)


def _rows(run_dir, key):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.mark.usefixtures("one_thread")
def test_the_events_hold_metrics_jsonl_and_a_resume_shows_no_step_twice(tmp_path):
    from tensorboardX import SummaryWriter

    from tformer_cli.run.rundir import prepare_run_dir
    from tformer_cli.train.loop import train

    cfg = _cfg()
    full, part = tmp_path / "full", tmp_path / "part"
    for d in (full, part):
        prepare_run_dir(d, False)
    train(cfg, full)
    seen = []
    train(cfg, part, progress=lambda e: seen.append(e.step) if e.kind == "checkpoint" else None,
          should_stop=lambda: bool(seen))
    # the first session again, logging past its checkpoint before it died (its file sorts with its own)
    stray = SummaryWriter(logdir=str(part), filename_suffix=".from-step-0000000000-more")
    stray.add_scalar("loss/train", 99.0, 12)  # after the step-10 checkpoint, before the next log
    stray.close()
    train(cfg, part, resume=True)
    for run in (full, part):
        s = scalars(run)
        assert s["loss/train"] == pytest.approx(_rows(run, "train_loss"))  # step for step, nothing twice
        assert s["loss/val"] == pytest.approx(_rows(run, "val_loss"))
        assert s["bits_per_byte/val"] == pytest.approx(_rows(run, "val_bpb"))
        assert s["lr"] == pytest.approx(_rows(run, "lr"))
        assert set(s["perf/tokens_per_s"]) == set(_rows(run, "train_loss"))
        assert all(math.isfinite(v) for v in s["bits_per_byte/train"].values())
        assert set(s["grad_norm"]) == set(s["perf/flops_per_s"]) == set(_rows(run, "train_loss"))
        assert all(v > 0 for v in [*s["grad_norm"].values(), *s["perf/flops_per_s"].values()])
    assert scalars(part)["loss/train"] == pytest.approx(scalars(full)["loss/train"])


@pytest.mark.usefixtures("one_thread")
def test_tensorboard_false_writes_no_events_and_overwrite_removes_them(tmp_path):
    from tformer_cli.run.rundir import prepare_run_dir
    from tformer_cli.train.loop import train

    run = tmp_path / "run"
    prepare_run_dir(run, False)
    train(_cfg(steps=5, eval_interval=5, ckpt_interval=5), run)
    assert list(run.glob("events.out.tfevents.*"))
    prepare_run_dir(run, True)  # --overwrite: the run's files go, its event files with them
    assert not list(run.glob("events.out.tfevents.*"))
    train(_cfg(steps=5, eval_interval=5, ckpt_interval=5, tensorboard=False), run)
    assert not list(run.glob("events.out.tfevents.*"))


@pytest.mark.usefixtures("one_thread")
def test_an_experiment_s_members_and_seeds_are_runs_of_their_own(tmp_path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from tformer_cli.study import runner
    from tformer_cli.study.files import ablate_spec

    cfg = _cfg(steps=5, eval_interval=5, ckpt_interval=5)
    spec = ablate_spec(cfg, {"no_ffn": True}, seeds=2)
    runner.run_experiment(spec, tmp_path / "exp", jobs=1)
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "exp"))
    mux.Reload()
    runs = sorted(mux.Runs())
    assert runs == ["members/baseline-s1337", "members/baseline-s1338", "members/no-ffn-s1337",
                    "members/no-ffn-s1338"], runs


def test_mfu_per_interval_only_where_the_card_s_peak_is_known(monkeypatch):
    """perf/mfu needs a peak that costs no timing: the datasheet of a known GPU in bf16/fp16; the CPU and
    float32 runs get none (their peak is the summary's timed matmul, after training)."""
    import torch

    from tformer_cli.core import device as dev
    from tformer_cli.train.loop import _datasheet_peak

    assert _datasheet_peak(torch.device("cpu"), torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    known = dev.datasheet_peak("NVIDIA H100 80GB HBM3")
    assert known is not None and _datasheet_peak(torch.device("cuda"), torch.bfloat16) == known[1]
    assert _datasheet_peak(torch.device("cuda"), torch.float32) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some Unknown Card")
    assert _datasheet_peak(torch.device("cuda"), torch.bfloat16) is None
