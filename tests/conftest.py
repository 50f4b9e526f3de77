"""Shared fixtures: a token cache shared by the whole session, a tiny config, an in-process CLI."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

TINY = {
    "model": {"d_model": 32, "n_layer": 2, "n_head": 2, "block_size": 16, "dropout": 0.0},
    "data": {"corpus": "prose", "tokenizer": "char"},
    "train": {"steps": 20, "batch_size": 4, "lr": 0.003, "warmup_steps": 2, "eval_interval": 10,
              "eval_iters": 2, "log_interval": 5, "device": "cpu"},
}


@pytest.fixture(scope="session", autouse=True)
def _token_cache(tmp_path_factory):
    if "TFORMER_CACHE" not in os.environ:
        os.environ["TFORMER_CACHE"] = str(tmp_path_factory.mktemp("tformer-cache"))
    yield


@pytest.fixture
def tiny_config():
    """The tiny config as nested dicts (a fresh copy each test)."""
    return {k: dict(v) for k, v in TINY.items()}


@pytest.fixture
def tiny_yaml(tmp_path, tiny_config) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-500:]!r}, err={self.err[-500:]!r})"


def run_cli(*args) -> CliResult:
    """Run `tformer ARGS` in this process through the real entry point (error boundary included)."""
    from tformer_cli.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


def train_tiny_run(root: Path, name: str = "base", **train) -> Path:
    """Train the tiny config (with ``train`` overrides) into ROOT/NAME through the CLI; its directory."""
    cfg = {k: dict(v) for k, v in TINY.items()}
    cfg["train"].update(train)
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("train", root / "tiny.yaml", "--out", root / name)
    assert r.code == 0, r
    return root / name


def rule_oracle(tok, rule, logit: float = 30.0):
    """A stand-in model (an nn.Module) that predicts the next character from the window's own text by
    ``rule(s, t)``: one-hot logits of height ``logit``; None: no opinion."""
    import torch

    class RuleOracle(torch.nn.Module):
        def forward(self, x):
            return _oracle_logits(x, tok, rule, logit)

    return RuleOracle()


def _oracle_logits(x, tok, rule, logit):
    import torch

    logits = torch.zeros(*x.shape, tok.vocab_size)
    for b, row in enumerate(x.tolist()):
        s = tok.decode(row)
        for t in range(len(s)):
            c = rule(s, t)
            if c is not None and c in tok.stoi:
                logits[b, t, tok.stoi[c]] = logit
    return type("Out", (), {"logits": logits})()


def assert_same_checkpoints(a: Path, b: Path) -> None:
    """The checkpoints of two runs hold the same tensors, bitwise (weights and optimizer state)."""
    from safetensors import safe_open

    with safe_open(str(a / "checkpoint.safetensors"), "pt") as x, safe_open(str(b / "checkpoint.safetensors"), "pt") as y:
        assert sorted(x.keys()) == sorted(y.keys())
        for k in x.keys():
            assert x.get_tensor(k).equal(y.get_tensor(k)), k


def interrupted_and_resumed(cfg, root: Path):
    """Train ``cfg`` unbroken into root/full, and into root/part stopped right after its step-10
    checkpoint, then resumed there; returns (full, part, the stopped result, the resumed result)."""
    from tformer_cli.run.rundir import prepare_run_dir
    from tformer_cli.train.loop import train

    full, part = root / "full", root / "part"
    for d in (full, part):
        prepare_run_dir(d, False)
    train(cfg, full)
    seen = []

    def progress(e):
        if e.kind == "checkpoint" and e.step == 10:
            seen.append(e.step)

    stopped = train(cfg, part, progress=progress, should_stop=lambda: bool(seen))
    return full, part, stopped, train(cfg, part, resume=True)
