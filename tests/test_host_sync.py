"""No host sync inside a training step (issue 18): the loop reads a tensor back only at log,
evaluation and checkpoint steps.  On the CPU, tformer's own code is caught reading a tensor inside
_Trainer._step (.item(), float(), bool(), .cpu(), ...); on CUDA, torch's sync debug mode turns any
synchronising call of a step (ours or torch's) into an error."""

from __future__ import annotations

import sys

import pytest
import torch

from tformer_cli.core.config import from_dict
from tformer_cli.run.rundir import prepare_run_dir
from tformer_cli.train import loop

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class _Guard:
    """Tensor reads from a tformer_cli frame raise while ``active``; torch's own are let through
    (on the CPU every tensor is on the host, so only our code's reads say anything about CUDA)."""

    def __init__(self, monkeypatch):
        self.active, self.caught = False, []
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, original):
        def read(t, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if self.active and caller.startswith("tformer_cli"):
                self.caught.append(f"{caller}: Tensor.{name}")
                raise AssertionError(f"host sync in a training step: {caller} calls Tensor.{name}")
            return original(t, *args, **kwargs)
        return read


def _guard_steps(monkeypatch, enter, leave, first: int = 0):
    """Wrap Loop._step so that ``enter()`` / ``leave()`` run around every step from ``first`` on."""
    step = loop.Loop._step

    def guarded(self, i):
        if i < first:
            return step(self, i)
        enter()
        try:
            return step(self, i)
        finally:
            leave()
    monkeypatch.setattr(loop.Loop, "_step", guarded)


def _train(tiny_config, tmp_path, **train):
    tiny_config["train"].update(steps=12, log_interval=4, eval_interval=6, **train)
    run = tmp_path / "run"
    prepare_run_dir(run, False)
    return loop.train(from_dict(tiny_config), run)


def test_the_guard_catches_a_read_from_our_code(monkeypatch):
    guard = _Guard(monkeypatch)
    guard.active = True
    with pytest.raises(AssertionError, match="Tensor.item"):
        exec("t.item()", {"__name__": "tformer_cli.fake", "t": torch.ones(())})
    assert float(torch.ones(())) == 1.0  # from a test module: allowed
    guard.active = False
    exec("t.item()", {"__name__": "tformer_cli.fake", "t": torch.ones(())})


@pytest.mark.parametrize("sets", [{}, {"grad_accum": 2}], ids=["plain", "grad_accum"])
def test_no_tensor_is_read_back_inside_a_training_step(tiny_config, tmp_path, monkeypatch, sets):
    guard = _Guard(monkeypatch)
    _guard_steps(monkeypatch, lambda: setattr(guard, "active", True), lambda: setattr(guard, "active", False))
    r = _train(tiny_config, tmp_path, **sets)
    assert r.steps_done == 12 and r.train_loss is not None and not guard.caught


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "cuda_graph"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_training_steps_do_not_synchronise(tiny_config, tmp_path, monkeypatch, dtype, graph):
    """Eager steps after the first two (lazy initialisation, cuBLAS handles), graphed steps after the
    capture (torch.cuda.graph synchronises as it begins), under sync debug mode "error"."""
    from tformer_cli.train.graph_step import WARMUP_STEPS

    _guard_steps(monkeypatch, lambda: torch.cuda.set_sync_debug_mode("error"),
                 lambda: torch.cuda.set_sync_debug_mode("default"), first=WARMUP_STEPS + 1 if graph else 2)
    r = _train(tiny_config, tmp_path, device="cuda", dtype=dtype, compile=False, cuda_graph=graph)
    assert r.steps_done == 12 and r.device.startswith("cuda") and r.cuda_graph is graph, r.cuda_graph_reason


def test_a_fine_tune_step_reads_no_tensor_back_and_its_files_are_a_runs(tmp_path, monkeypatch):
    """Fine-tuning runs on the same loop: no read-back per step (it had one), tokens/s in perf.jsonl,
    and the held-out probe in metrics.jsonl."""
    import json

    from tformer_cli.core.config import ModelConfig
    from tformer_cli.core.finetune_config import build
    from tformer_cli.train.loop import finetune

    guard = _Guard(monkeypatch)
    _guard_steps(monkeypatch, lambda: setattr(guard, "active", True), lambda: setattr(guard, "active", False))
    spec = build({"data": "order", "body": "bag", "from_scratch": True, "pool": "mean", "steps": 10,
                  "log_interval": 5, "ckpt_interval": 10}, ModelConfig(d_model=16, n_layer=1, n_head=2))
    r = finetune(spec, tmp_path / "ft")
    assert r.steps_done == 10 and r.train_loss is not None and not guard.caught
    perf = [json.loads(x) for x in (tmp_path / "ft" / "perf.jsonl").read_text().splitlines()]
    assert [p["step"] for p in perf] == [5, 10] and all(p["tokens_per_s"] > 0 for p in perf)
    rows = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "probe_accuracy" in row] == [8] and r.extra["probe_step"] == 8
