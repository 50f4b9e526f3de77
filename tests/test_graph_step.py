"""The training step in a CUDA graph (train/graph_step.py, issue 18): when it is chosen and why, the
learning rate it reads from the device, checkpoints of such a run, and the capture's plumbing.
The capture itself needs CUDA: the tests marked cuda compare a graphed run with an eager one."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch

from tformer_cli.core.config import from_dict, resolve
from tformer_cli.core.model import build_model
from tformer_cli.errors import ConfigError
from tformer_cli.run import checkpoint
from tformer_cli.run.rundir import prepare_run_dir
from tformer_cli.train import graph_step, loop
from tformer_cli.train.graph_step import GraphedStep, graph_decision, lr_to_device
from tformer_cli.train.optim import load_optimizer_state, make_optimizer, set_lr


def _decide(cfg, device="cuda", dtype="bfloat16", compiled=False, world=1):
    return graph_decision(cfg, device, dtype, 100, compiled=compiled, world=world)


def test_a_tiny_eager_cuda_run_is_captured_and_gpt2_small_is_not():
    on, why = _decide(resolve(preset="quick"))
    assert on and why.startswith("on: the step's arithmetic") and "train.cuda_graph=false" in why
    big = resolve(preset="gpt2_small")
    on, why = graph_decision(big, "cuda", "bfloat16", 50304, compiled=False, world=1)
    assert not on and why.startswith("off: the step's arithmetic") and "outlasts" in why


@pytest.mark.parametrize("kwargs, words", [
    ({"device": "cpu"}, "need a CUDA device"),
    ({"compiled": True}, "compiled"),
    ({"world": 2}, "several processes"),
    ({"dtype": "float16"}, "float16"),
])
def test_what_rules_a_graph_out_is_said_and_an_explicit_request_fails(kwargs, words):
    cfg = resolve(preset="quick")
    on, why = _decide(cfg, **kwargs)
    assert not on and why.startswith("off: ") and words in why
    with pytest.raises(ConfigError, match=words):
        _decide(cfg.replace({"train.cuda_graph": True}), **kwargs)


def test_muon_and_the_lstm_stay_eager_and_false_always_wins():
    assert "muon" in _decide(resolve(preset="quick", overrides={"train.optimizer": "muon"}))[1]
    assert "lstm" in _decide(resolve(preset="quick", overrides={"model.arch": "lstm"}))[1]
    assert _decide(resolve(preset="quick", overrides={"train.cuda_graph": False})) == (False, "train.cuda_graph=false")


def _optimizer(tiny_config, capturable=False):
    cfg = from_dict(tiny_config)
    model = build_model(cfg.model, 10)
    return model, make_optimizer(model, cfg, torch.device("cpu"), capturable=capturable), cfg


def test_set_lr_fills_a_device_learning_rate_in_place(tiny_config):
    _, opt, cfg = _optimizer(tiny_config)
    lr_to_device(opt, torch.device("cpu"))
    tensors = [g["lr"] for g in opt.param_groups]
    value = set_lr(opt, 5, cfg)
    assert all(g["lr"] is t for g, t in zip(opt.param_groups, tensors))  # the same tensor the graph reads
    assert all(float(t) == pytest.approx(value) for t in tensors)


def test_a_checkpoint_of_a_graphed_run_stores_numbers_and_resumes_either_way(tiny_config, tmp_path):
    model, opt, cfg = _optimizer(tiny_config)
    idx = torch.randint(0, 10, (2, 8))
    model(idx, idx).loss.backward()
    opt.step()
    lr_to_device(opt, torch.device("cpu"))
    for g in opt.param_groups:  # as a capturable (CUDA-graph) run's groups read
        g["capturable"] = True
    checkpoint.save(tmp_path, model, opt, cfg, 10, {"step": 1})
    header = json.loads((tmp_path / "checkpoint.json").read_text())
    assert all(isinstance(g["lr"], float) for g in header["optim_groups"])
    _, fresh, _ = _optimizer(tiny_config)
    load_optimizer_state(fresh, checkpoint.load(tmp_path).optimizer_state())
    assert [g["capturable"] for g in fresh.param_groups] == [False, False]  # this run's flags, not the file's
    assert fresh.state_dict()["state"][0]["exp_avg"].abs().sum() > 0


class _FakeCuda:
    """Stands in for torch.cuda's streams and graphs on the CPU: a capture runs the body (a real
    one only records it), and each replay runs the recorded body again on the static buffers."""

    def __init__(self, monkeypatch, fail: bool = False):
        self.captures, self.replays, self.fail, self.recorded = 0, 0, fail, None
        fake = self

        class Graph:
            def replay(self):
                fake.replays += 1
                fake.recorded()

        @contextmanager
        def graph(g, **kwargs):
            fake.captures += 1
            if fake.fail:
                raise RuntimeError("operation not permitted when stream is capturing")
            yield

        for name, value in {"Stream": lambda device=None: _Stream(), "current_stream": lambda device=None: _Stream(),
                            "stream": contextmanager(lambda s: (yield)), "graph": graph, "CUDAGraph": Graph,
                            "synchronize": lambda device=None: None}.items():
            monkeypatch.setattr(torch.cuda, name, value, raising=False)


class _Stream:
    def wait_stream(self, other):
        pass


def test_warm_up_steps_run_eagerly_then_one_capture_is_replayed_with_each_batch(monkeypatch, tiny_config):
    fake = _FakeCuda(monkeypatch)
    seen = []
    model, opt, _ = _optimizer(tiny_config)
    step = GraphedStep(lambda xs, ys: seen.append((xs[0].clone(), ys[0].clone())), opt, torch.device("cpu"))
    fake.recorded = lambda: step.body(step.xs, step.ys)
    batches = [([torch.full((2,), i)], [torch.full((2,), -i)]) for i in range(7)]
    for xs, ys in batches:
        step.run(xs, ys)
    assert fake.captures == 1 and step.eager_steps == graph_step.WARMUP_STEPS and step.failure is None
    # steps 0-2 eager, step 3 captured (the capture's own call records) and replayed, 4-6 replayed
    assert fake.replays == 4
    replayed = [x for x, _ in seen[graph_step.WARMUP_STEPS + 1:]]
    assert [int(x[0]) for x in replayed] == [3, 4, 5, 6]  # each replay read that step's batch


def test_a_failed_capture_leaves_the_run_eager_and_says_why(monkeypatch, tiny_config, tmp_path):
    _FakeCuda(monkeypatch, fail=True)
    calls = []
    _, opt, _ = _optimizer(tiny_config)
    step = GraphedStep(lambda xs, ys: calls.append(1), opt, torch.device("cpu"))
    for _ in range(6):
        step.run([torch.zeros(1)], [torch.zeros(1)])
    assert len(calls) == 6 and "not permitted when stream is capturing" in step.failure


def _train(tiny_config, tmp_path, name, **train):
    tiny_config["train"].update(steps=16, log_interval=2, eval_interval=8, device="cuda", **train)
    run = tmp_path / name
    prepare_run_dir(run, False)
    return loop.train(from_dict(tiny_config), run), run


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_a_graphed_run_trains_as_the_eager_one_does(tiny_config, tmp_path, dtype):
    eager, e_dir = _train(tiny_config, tmp_path, "eager", dtype=dtype, cuda_graph=False, compile=False)
    graphed, g_dir = _train({k: dict(v) for k, v in tiny_config.items()}, tmp_path, "graphed", dtype=dtype,
                            cuda_graph=True, compile=False)
    assert graphed.cuda_graph and not eager.cuda_graph, graphed.cuda_graph_reason
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (e_dir, g_dir)]
    losses = [[r.get("train_loss", r.get("val_loss")) for r in rs] for rs in rows]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3 if dtype == "float32" else 2e-2)
    assert graphed.val_loss == pytest.approx(eager.val_loss, rel=1e-3 if dtype == "float32" else 2e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_a_graphed_run_resumes(tiny_config, tmp_path):
    first, run = _train(tiny_config, tmp_path, "run", cuda_graph=True, compile=False, ckpt_interval=8)
    assert first.cuda_graph
    cfg = from_dict({**tiny_config, "train": {**tiny_config["train"], "steps": 24}})
    more = loop.train(cfg, run, resume=True)
    assert more.steps_done == 24 and more.cuda_graph and more.resumed_from == 16


def test_the_summary_says_whether_the_step_was_graphed_on_a_gpu_only(tiny_config, tmp_path):
    from tformer_cli.render.summary import summary_rows

    tiny_config["train"].update(steps=2)
    run = tmp_path / "run"
    prepare_run_dir(run, False)
    r = loop.train(from_dict(tiny_config), run).to_dict()
    assert r["cuda_graph"] is False and "need a CUDA device" in r["cuda_graph_reason"]
    from tformer_cli.run.result import TrainResult

    assert "cuda graph" not in dict(summary_rows(TrainResult.from_dict(r)))  # a CPU run: nothing to say
    gpu = {**r, "device": "cuda:0", "cuda_graph": True, "cuda_graph_reason": "on: the step's arithmetic ..."}
    assert dict(summary_rows(TrainResult.from_dict(gpu)))["cuda graph"] == "on: the step's arithmetic ..."
