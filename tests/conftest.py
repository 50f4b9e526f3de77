"""Shared fixtures and helpers: a token cache shared by the whole session, a tiny config, an
in-process CLI and a tiny run trained through it, one intra-op thread, the checks of a one-line
error and of output that fits a terminal, a checkpoint rewritten on disk, a fake trainer for the
experiment engine.  Test modules import the plain helpers as ``from conftest import X``."""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable

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
def one_thread():
    """One intra-op thread for the test (a module asks with pytest.mark.usefixtures): tiny models
    and per-token ops run several times faster on one thread when the CPUs are shared
    (docs/sample.md); no result depends on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def train_tiny_run(root: Path, name: str = "base", config: dict | None = None, **train) -> Path:
    """Train the tiny config (or ``config``, nested dicts; with ``train`` overrides) into ROOT/NAME
    through the CLI, its yaml written to ROOT/tiny.yaml; the run's directory."""
    cfg = {k: dict(v) for k, v in (config or TINY).items()}
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

    with safe_open(str(a / "checkpoint.safetensors"), "pt") as x, \
            safe_open(str(b / "checkpoint.safetensors"), "pt") as y:
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


# ---------------------------------------------------------------- errors and tables as the user sees them


def one_line(r: CliResult, code: int, *needles: str) -> str:
    """An `error:` line (plus at most a hint), the exit code, no traceback, never 'unexpected'."""
    assert r.code == code, r
    assert "Traceback" not in r.out + r.err and "unexpected" not in r.err, r
    lines = r.err.strip("\n").splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, r.err
    for n in needles:
        assert n in r.err, r.err
    return errors[0]


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WIDTH = 80  # the terminal of terminal()


def _fresh_consoles() -> None:
    """The consoles are made once per process; a fresh pair reads the environment anew."""
    from tformer_cli.render import console

    console._console = console._err_console = None


def _run_shown(monkeypatch, terminal: bool, *args) -> CliResult:
    with monkeypatch.context() as m:
        for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "COLUMNS", "NO_COLOR"):
            m.delenv(name, raising=False)
        if terminal:
            m.setenv("TTY_COMPATIBLE", "1")
            m.setenv("TTY_INTERACTIVE", "0")
            m.setenv("COLUMNS", str(WIDTH))
        _fresh_consoles()
        try:
            r = run_cli(*args)
        finally:
            _fresh_consoles()
    assert r.code == 0, r
    r.out, r.err = ANSI.sub("", r.out), ANSI.sub("", r.err)
    return r


def terminal(monkeypatch, *args) -> CliResult:
    """Run `tformer ARGS` as a terminal of 80 columns: nothing wider, nothing cut."""
    r = _run_shown(monkeypatch, True, *args)
    for stream in (r.out, r.err):
        assert "\u2026" not in stream, stream
        long = [line for line in stream.splitlines() if len(line) > WIDTH]
        assert not long, "\n".join(long)
    return r


def piped(monkeypatch, *args) -> CliResult:
    """Run `tformer ARGS` with stdout not a terminal: nothing cut."""
    r = _run_shown(monkeypatch, False, *args)
    assert "\u2026" not in r.out and "\u2026" not in r.err, r
    return r


# ---------------------------------------------------------------- a damaged checkpoint


CKPT = "checkpoint.safetensors"


def rewrite_checkpoint(path, tensors_fn=None, meta_fn=None) -> None:
    """Rewrite a checkpoint file in place: its tensors through ``tensors_fn``, its header (the
    metadata, JSON-decoded) through ``meta_fn``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensors_fn:
        tensors = tensors_fn(tensors)
    if meta_fn:
        header = {k: json.loads(v) for k, v in meta.items()}
        meta_fn(header)
        meta = {k: json.dumps(v) for k, v in header.items()}
    save_file(tensors, str(path), metadata=meta)


# ---------------------------------------------------------------- a fake trainer for the experiment engine


class FakeTrainer:
    """Writes what tformer_cli.train.loop.train writes that the engine reads (summary.json, metrics,
    a checkpoint marker); its val loss is a pure function of the member's config and seed."""

    def __init__(self, fail: str | None = None, stop_after: int | None = None,
                 arithmetic: Callable[[str], str] = lambda run: "float32 on cpu"):
        self.calls: list[tuple[str, int, bool]] = []
        self.fail, self.stop_after, self.arithmetic = fail, stop_after, arithmetic

    def __call__(self, cfg, run_dir, *, resume, progress, should_stop):
        from tformer_cli.errors import RunError
        from tformer_cli.run.result import TrainResult

        run_dir = Path(run_dir)
        self.calls.append((run_dir.name, cfg.train.seed, resume))
        if self.fail and run_dir.name.startswith(self.fail):
            raise RunError("the loss became NaN or infinite at step 3")
        interrupted = self.stop_after is not None and len(self.calls) > self.stop_after
        loss = 2.0 + 0.5 * (not cfg.model.ffn) + 0.01 * (cfg.train.seed % 7) - 0.1 * (cfg.model.n_head == 4)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "val_loss": loss + 1}) + "\n"
                                               + json.dumps({"step": 10, "val_loss": loss}) + "\n")
        (run_dir / "checkpoint.safetensors").write_text("")  # the checkpoint marker the engine looks for
        summary = {"run_dir": str(run_dir), "steps_done": 5 if interrupted else 10, "steps": 10,
                   "interrupted": interrupted, "train_loss": loss + 0.1, "val_loss": loss,
                   "tokens_per_s": 1000.0 * cfg.model.n_head, "peak_memory_bytes": 1 << 20,
                   "memory_source": "process peak RSS", "params": 123, "vocab_size": 65, "elapsed_s": 0.1,
                   "arithmetic": self.arithmetic(run_dir.name), "extra": {"copy_acc": 0.5}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return TrainResult.from_dict(summary)


def fake_eval(run_dir, cfg, prompt):
    """The engine's post-training measurement for FakeTrainer's runs: its val loss, plus 3 for a
    bidirectional model."""
    from tformer_cli.study.results import Measurement

    val = json.loads((Path(run_dir) / "summary.json").read_text())["val_loss"]
    return Measurement(val + 3.0 * (not cfg.model.causal), "The cat")
