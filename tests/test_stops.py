"""Issue 13, stops that stop and long reads that say so: the progress lines of a big corpus on
stderr, Ctrl-C and SIGTERM in `tformer attention` and `tformer heads` (one line, exit 130), and a
stop during the post-training measurement of experiment members."""

from __future__ import annotations

import io
import os
import signal

import pytest

from conftest import one_line, train_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-step tiny run (shared: the probes only read it)."""
    return train_tiny_run(tmp_path_factory.mktemp("stops"), "run", steps=4, eval_interval=4, log_interval=2,
                          eval_iters=3)


# ---------------------------------------------------------------- progress of a big corpus


def test_a_big_corpus_shows_its_reading_and_tokenizing_progress_on_stderr(cli, tiny_yaml, tmp_path, monkeypatch):
    """BIG lowered so a 60 kB corpus counts as big: plain lines (stderr is not a terminal), the
    first and last of each phase, not one per chunk."""
    from tformer_cli.core import token_cache

    monkeypatch.setattr(token_cache, "BIG", 1 << 10)
    monkeypatch.setattr(token_cache, "CHUNK", 1 << 10)
    corpus = tmp_path / "big.txt"
    fresh = os.urandom(8).hex()  # never in the token cache
    corpus.write_text("".join(f"line {i} of a corpus {fresh}\n" for i in range(2000)))
    r = cli("train", tiny_yaml, "--data", corpus, "--steps", "2", "--out", tmp_path / "r")
    assert r.code == 0, r
    lines = r.err.splitlines()
    reading = [x for x in lines if x.startswith(f"reading {corpus}: ")]
    tokenizing = [x for x in lines if x.startswith("tokenizing: ")]
    assert reading and reading[-1].startswith(f"reading {corpus}: 100% of "), r.err
    assert tokenizing and tokenizing[-1] == "tokenizing: 100%", r.err
    chunks = corpus.stat().st_size // (1 << 10)
    assert len(reading) < chunks / 4 and len(tokenizing) < chunks / 4  # throttled, not a line per chunk
    assert "\r" not in r.err


def test_a_small_corpus_says_nothing(cli, tiny_yaml, tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("".join(f"a small corpus {os.urandom(8).hex()} {i}\n" for i in range(300)))
    r = cli("train", tiny_yaml, "--data", corpus, "--steps", "2", "--out", tmp_path / "r")
    assert r.code == 0, r
    assert "reading" not in r.err and "tokenizing" not in r.err


def test_progress_on_a_terminal_rewrites_one_line_per_phase():
    from rich.console import Console

    from tformer_cli.render.progress import ReadProgress

    buf = io.StringIO()
    p = ReadProgress(Console(file=buf, force_terminal=True, width=80))
    for pct in (10, 50):
        p(f"reading x: {pct}% of 1.0 MiB")
    p("reading x: 100% of 1.0 MiB", final=True)
    p("tokenizing: 30%")
    p.close()  # the command ends (or is stopped) mid-phase: the line is ended
    out = buf.getvalue()
    assert out.count("\n") == 2 and out.endswith("\n")
    assert out.count("\r") == 4


def test_the_notice_hook_is_connected_only_while_a_command_runs():
    from tformer_cli.cli.options import StopOnInterrupt
    from tformer_cli.core import stop
    from tformer_cli.render.progress import ReadProgress

    with StopOnInterrupt(message=""):
        assert isinstance(stop._notice, ReadProgress)
    assert stop._notice is None
    with StopOnInterrupt(progress=False):
        assert stop._notice is None


# ---------------------------------------------------------------- Ctrl-C and SIGTERM in the probes


def _signal_on_call(monkeypatch, module, name, sig, at=1):
    """Wrap module.name so that its ``at``-th call sends ``sig`` to this process first; the calls."""
    original = getattr(module, name)
    calls = []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), sig)  # the handler runs here, in the main thread, before the call
        return original(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_heads_stops_between_batches_on_the_first_ctrl_c_or_sigterm(cli, tiny_run, monkeypatch, sig):
    from tformer_cli.inside import heads

    calls = _signal_on_call(monkeypatch, heads, "masked_loss", sig, at=2)  # inside the ablation loop
    r = cli("heads", tiny_run, "--out", tiny_run.parent / "never.png")
    one_line(r, 130, "stopped while measuring head importance")
    assert len(calls) == 2  # not the 2 x 2 ablations and the pruning curve after it
    assert not (tiny_run.parent / "never.png").exists()


def test_heads_with_a_huge_batches_holds_no_list_of_batches_and_stops(cli, tiny_run, monkeypatch):
    """--batches 1e9 once built a list of every batch before the first pass (22 GB in a hostile
    pass, deaf to SIGTERM): the batches are drawn again on each pass and the stop is honoured."""
    from tformer_cli.train.batches import Batcher

    drawn = []
    original = Batcher.eval_batches

    def eval_batches(self, split, n):
        for b in original(self, split, n):
            drawn.append(1)
            if len(drawn) == 50:
                os.kill(os.getpid(), signal.SIGTERM)
            yield b

    monkeypatch.setattr(Batcher, "eval_batches", eval_batches)
    r = cli("heads", tiny_run, "--batches", "1000000000", "--out", tiny_run.parent / "never.png")
    one_line(r, 130, "stopped while measuring head importance")
    assert len(drawn) <= 51


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_attention_stops_on_the_first_ctrl_c_or_sigterm(cli, tiny_run, monkeypatch, sig):
    from tformer_cli.inside import attention

    calls = _signal_on_call(monkeypatch, attention, "induction_probe", sig)
    r = cli("attention", tiny_run, "--prompt", "the cat", "--out", tiny_run.parent / "never.png")
    one_line(r, 130, "stopped while probing attention")
    assert len(calls) == 1
    assert not (tiny_run.parent / "never.png").exists()


def test_the_induction_probe_stops_between_sequences(tiny_run):
    from tformer_cli.core import stop
    from tformer_cli.errors import Stopped
    from tformer_cli.inside.attention import probe_scores, random_probe
    from tformer_cli.inside.load import load_gpt

    model, tok, cfg, device = load_gpt(tiny_run, "cpu")
    probe = random_probe(tok.vocab_size, cfg.model.block_size)
    forwards = []
    original = model.forward

    def forward(*a, **k):  # the flag is set (as a signal handler would) during the first pass
        forwards.append(1)
        stop.request()
        return original(*a, **k)

    model.forward = forward
    try:
        with pytest.raises(Stopped):
            probe_scores(model, probe, device)
    finally:
        stop.clear()
    assert len(forwards) == 1 and len(probe.seqs) > 1
    model.forward = original
    assert probe_scores(model, probe, device)[0].shape == (cfg.model.n_layer, cfg.model.n_head)


def test_the_heads_loss_stops_between_batches():
    import torch

    from tformer_cli.core import stop
    from tformer_cli.errors import Stopped
    from tformer_cli.inside.heads import masked_loss

    seen = []

    class Model(torch.nn.Module):
        def forward(self, x, y, head_mask=None):
            seen.append(1)
            stop.request()  # a Ctrl-C arrives during the first batch
            return type("Out", (), {"loss": torch.tensor(1.0)})()

    batches = [(torch.zeros(1, 2), torch.zeros(1, 2))] * 10
    try:
        with pytest.raises(Stopped):
            masked_loss(Model(), batches, None, torch.device("cpu"), torch.float32)
    finally:
        stop.clear()
    assert len(seen) == 1


# ---------------------------------------------------------------- the post-training measurement


def test_the_causal_consistent_loss_stops_between_prefix_passes(tiny_config):
    import torch

    from tformer_cli.core.config import from_dict
    from tformer_cli.core.data import prepare
    from tformer_cli.core.model import build_model
    from tformer_cli.errors import Stopped
    from tformer_cli.train.batches import Batcher
    from tformer_cli.train.distributed import DistInfo
    from tformer_cli.train.evaluate import window_losses

    cfg = from_dict(tiny_config)
    ds = prepare(cfg.data)
    model = build_model(cfg.model, ds.vocab_size)
    batcher = Batcher(ds, cfg, torch.device("cpu"), DistInfo(), ds.vocab_size)
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 3

    for sees_future in (True, False):
        polls.clear()
        with pytest.raises(Stopped, match="causal-consistent"):
            window_losses(model, batcher, 64, torch.device("cpu"), torch.float32, sees_future=sees_future,
                          should_stop=should_stop)
        assert len(polls) == 4  # the first poll that says stop is the last one


def test_a_ctrl_c_while_measuring_a_member_stops_it_and_resume_measures_it(cli, tiny_yaml, tmp_path, monkeypatch):
    """The first Ctrl-C arrives during the causal-consistent evaluation of the first member: the
    experiment stops there (exit 130), that member is interrupted, not failed, and has no cached
    measurement; --resume measures it and finishes."""
    import json

    from tformer_cli.train import evaluate

    calls = _signal_on_call(monkeypatch, evaluate, "window_losses", signal.SIGINT)
    out = tmp_path / "exp"
    r = cli("sweep", tiny_yaml, "--grid", "model.n_head=1,2", "--steps", "2", "--seeds", "1", "--out", out,
            "--json")
    assert r.code == 130, r
    assert "Traceback" not in r.err and "unexpected" not in r.err, r.err
    assert "stopped while measuring" in r.err and f"--resume {out}" in r.err, r.err
    assert len(calls) == 1  # the second member was not trained, let alone measured
    rows = json.loads(r.out)["rows"]
    assert [x["status"] for x in rows] == ["interrupted", "not run"], rows
    assert not list(out.rglob("member.json"))
    monkeypatch.undo()
    r = cli("sweep", "--resume", out, "--json")
    assert r.code == 0, r
    rows = json.loads(r.out)["rows"]
    assert [x["status"] for x in rows] == ["ok", "ok"] and rows[0]["val_loss_causal"] is not None, rows
    assert len(list(out.rglob("member.json"))) == 2
