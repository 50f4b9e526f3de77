"""Issue 13: what a hostile or careless user, or a damaged disk, can do to tformer.

One section per mechanism: (1) everything read back from disk is validated before use,
(2) untrusted text is read with bounds, (3) run and experiment directories are locked,
(4) long loops honour a stop, (5) every number is finite and in range, (6) failures that need
advice get it (memory, OS errors), (7) `tformer runs` survives damaged entries, (8) no quiet
data changes.  The fuzz test (hypothesis) that mutates every file of a run is in
tests/test_fuzz_rundir.py.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import yaml

from conftest import CKPT, one_line, rewrite_checkpoint, run_cli, train_tiny_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 10-step tiny run (checkpoint at 5 and 10), copied fresh for each test by `run`."""
    return train_tiny_run(tmp_path_factory.mktemp("hostile"), steps=10, eval_interval=5, log_interval=5)


@pytest.fixture
def run(trained, tmp_path):
    dst = tmp_path / "runs" / "r"
    shutil.copytree(trained, dst)
    return dst


# ---------------------------------------------------------------- (1) validated schema


def test_optimizer_state_of_the_wrong_shape_is_refused_before_adamw_sees_it(run):
    import torch

    def shrink(t):
        t["optim.0.exp_avg"] = torch.zeros(3)
        return t

    rewrite_checkpoint(run / CKPT, shrink)
    one_line(run_cli("train", "--resume", run, "--steps", "12"), 1, "optim.0.exp_avg", "expected F32")


def test_a_huge_vocab_in_the_header_is_refused_without_allocating(run):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rewrite_checkpoint(run / CKPT, meta_fn=lambda h: h.update(vocab_size=30_000_000))
    one_line(run_cli("sample", run, "--prompt", "a", "--max-new-tokens", "2"), 1, "vocab_size")
    rewrite_checkpoint(run / CKPT, meta_fn=lambda h: h.update(vocab_size=10**12))
    one_line(run_cli("sample", run, "--prompt", "a", "--max-new-tokens", "2"), 1, "vocab_size")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # kB: no 7.7 GB


@pytest.mark.parametrize("edit, needle", [
    (lambda h: h.pop("train_state"), "train_state: missing"),
    (lambda h: h["train_state"].update(step="ten"), "train_state.step"),
    (lambda h: h["train_state"].update(step=-3), "train_state.step"),
    (lambda h: h.pop("vocab_size"), "vocab_size: missing"),
    (lambda h: h.update(config=[1, 2]), "config"),
    (lambda h: h["config"]["model"].update(d_model="x"), "model.d_model"),
])
def test_header_fields_are_typed_and_named(run, edit, needle):
    metrics = (run / "metrics.jsonl").read_bytes()
    rewrite_checkpoint(run / CKPT, meta_fn=edit)
    line = one_line(run_cli("train", "--resume", run, "--steps", "12"), 1, needle)
    assert str(run / CKPT) in line
    assert (run / "metrics.jsonl").read_bytes() == metrics  # never restarted, never erased


def test_weights_of_another_dtype_are_refused_not_cast(run):
    rewrite_checkpoint(run / CKPT, lambda t: {k: (v.half() if k == "model.tok_emb.weight" else v)
                                              for k, v in t.items()})
    one_line(run_cli("sample", run, "--prompt", "a"), 1, "tok_emb.weight is F16, expected F32")


def test_a_checkpoint_without_optimizer_state_does_not_resume_inexactly(run):
    rewrite_checkpoint(run / CKPT, lambda t: {k: v for k, v in t.items() if not k.startswith("optim.")})
    one_line(run_cli("train", "--resume", run, "--steps", "12"), 1, "optimizer state covers 0")
    assert run_cli("sample", run, "--prompt", "a", "--max-new-tokens", "2").code == 0  # inference needs none


@pytest.mark.parametrize("content, needle", [
    ("[1, 2]", "expected a JSON object"),
    ('{"type": "char", "chars": 5}', "field chars"),
    ('{"type": "char", "chars": "aab"}', "distinct"),
    ('{"type": "quantum"}', "field type"),
    ("{", "not valid JSON"),
])
def test_tokenizer_json_is_checked_field_by_field(run, content, needle):
    (run / "tokenizer.json").write_text(content)
    one_line(run_cli("sample", run, "--prompt", "a"), 1, "tokenizer.json", needle)


def _summary_fields():
    from tformer_cli.run.result import FinetuneResult, TrainResult, fields_of

    return [(kind, name, typ) for kind in (TrainResult, FinetuneResult) for name, typ, _ in fields_of(kind)]


@pytest.mark.parametrize("kind,name,typ", _summary_fields(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_every_field_a_result_declares_is_checked_in_summary_json(tmp_path, kind, name, typ):
    """One schema: the result's dataclass declares each field's type and summary.json is checked
    against it, so a field added to TrainResult or FinetuneResult is checked without a key list."""
    from tformer_cli.errors import RunError
    from tformer_cli.run.result import check_summary

    wrong = {int: "x", float: "x", bool: 1, str: 3, dict: [1]}[typ]
    good = {"steps_done": 3, "steps": 3, "interrupted": False}
    (tmp_path / "summary.json").write_text(json.dumps({**good, name: wrong}))
    with pytest.raises(RunError, match=f"field {name}"):
        check_summary(tmp_path / "summary.json", kind)
    (tmp_path / "summary.json").write_text(json.dumps(good))
    assert isinstance(check_summary(tmp_path / "summary.json", kind), kind)


def test_a_fine_tune_summary_reads_back_typed_and_its_scores_are_checked(tmp_path):
    from tformer_cli.core.cls_metrics import Scores
    from tformer_cli.errors import RunError
    from tformer_cli.run.result import FinetuneResult, check_summary
    from tformer_cli.study.results import MemberOutcome

    scores = {"n": 4, "accuracy": 0.75, "accuracy_ci": [0.3, 0.95], "macro_f1": 0.7, "macro_f1_ci": [0.3, 1.0],
              "chance": 0.5, "confusion": [[2, 0], [1, 1]]}
    d = {"steps_done": 3, "steps": 3, "interrupted": False, "labels": ["a", "b"], "test": scores}
    (tmp_path / "summary.json").write_text(json.dumps(d))
    r = check_summary(tmp_path / "summary.json", FinetuneResult)
    assert isinstance(r.test, Scores) and r.test.accuracy_ci == (0.3, 0.95) and r.finished
    back = MemberOutcome.from_dict(json.loads(json.dumps(MemberOutcome("ok", summary=r).to_dict())))
    assert back.summary == r  # the worker's file hands back the same typed result
    (tmp_path / "summary.json").write_text(json.dumps({**d, "test": {**scores, "accuracy": "high"}}))
    with pytest.raises(RunError, match="field test.accuracy"):
        check_summary(tmp_path / "summary.json", FinetuneResult)


def test_summary_and_metrics_fields_are_typed(tmp_path):
    from tformer_cli.errors import RunError
    from tformer_cli.run.result import check_summary
    from tformer_cli.run.rundir import RunDir

    (tmp_path / "summary.json").write_text(json.dumps({"steps_done": "x", "steps": 3, "interrupted": False}))
    with pytest.raises(RunError, match="field steps_done"):
        check_summary(tmp_path / "summary.json")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n{"step": "ten"}\n{"step": 3, "tr')
    assert [r["step"] for r in RunDir(tmp_path).metric_rows()] == [1]
    with pytest.raises(RunError, match="line 2: field step"):
        RunDir(tmp_path).metric_rows(strict=True)  # the torn last line alone is tolerated


def test_a_damaged_token_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    from tformer_cli.core.config import DataConfig
    from tformer_cli.core.data import prepare

    monkeypatch.setenv("TFORMER_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 200)
    cfg = DataConfig(corpus=str(corpus))
    good = prepare(cfg)
    ids = bytes(good.train)
    for damage in (lambda d: (d / "train.bin").write_bytes(b"\x00"),
                   lambda d: (d / "meta.json").write_text('{"dtype": "<f8"}'),
                   lambda d: (d / "tokenizer.json").write_text("[]"),
                   lambda d: (d / "val.bin").write_bytes(b"\xff\xff" * len(good.val))):
        damage(good.cache_dir)
        again = prepare(cfg)
        assert bytes(again.train) == ids and not again.from_cache


# ---------------------------------------------------------------- (2) bounded reading


def test_a_yaml_alias_bomb_is_refused_in_a_few_bytes(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "bomb.yaml").write_text(bomb)
    line = one_line(run_cli("train", tmp_path / "bomb.yaml"), 2, "anchors")
    assert len(line) < 300


def test_echoed_values_are_cut_short(tmp_path):
    (tmp_path / "big.yaml").write_text(yaml.safe_dump({"train": {"lr": "x" * 1_000_000}}))
    r = run_cli("train", tmp_path / "big.yaml")
    one_line(r, 2, "train.lr")
    assert len(r.err) < 500
    r = run_cli("train", "--set", "model.d_model=" + "9" * 100_000)
    assert r.code == 2 and len(r.err) < 600, r.err[:300]


def test_a_checkpoint_symlinked_to_dev_zero_is_not_read(run):
    (run / CKPT).unlink()
    os.symlink("/dev/zero", run / CKPT)
    one_line(run_cli("sample", run, "--prompt", "a"), 1, "is a device, not a regular file")


def test_a_huge_header_length_is_refused_without_reading(run):
    data = (run / CKPT).read_bytes()
    (run / CKPT).write_bytes(struct.pack("<Q", 10 * 2**30) + data[8:])
    one_line(run_cli("sample", run, "--prompt", "a"), 1, "corrupt or truncated")


# ---------------------------------------------------------------- (3) locks


def test_a_run_in_use_is_refused_with_the_holders_pid(run):
    from tformer_cli.run.lock import DirLock

    config = (run / "config.yaml").read_bytes()
    with DirLock(run):
        line = one_line(run_cli("train", "--resume", run, "--steps", "12"), 1, "in use by process")
        assert str(os.getpid()) in line
        r = run_cli("train", "--out", run, "--overwrite", "--steps", "3")
        one_line(r, 1, "in use")
    assert (run / "config.yaml").read_bytes() == config
    assert not (run / ".tformer.lock").exists()  # released and removed


def test_a_lock_left_by_a_dead_process_is_not_stale(run):
    (run / ".tformer.lock").write_text("999999\n")  # no flock held: its process is gone
    assert run_cli("train", "--resume", run, "--steps", "12").code == 0
    assert not (run / ".tformer.lock").exists()


def test_the_lock_excludes_a_second_holder_in_another_process(tmp_path):
    import subprocess
    import sys

    from tformer_cli.errors import RunError
    from tformer_cli.run.lock import DirLock

    code = ("import sys, time; from tformer_cli.run.lock import DirLock\n"
            f"l = DirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(30)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"in use by process {p.pid}"):
            DirLock(tmp_path).acquire()
    finally:
        p.kill()
        p.wait()
    with DirLock(tmp_path):  # the kernel released the dead holder's lock
        pass


def test_an_experiment_directory_is_locked(tmp_path):
    from tformer_cli.run.lock import DirLock
    from tformer_cli.study.runner import run_experiment
    from tformer_cli.study.spec import Member, Spec

    spec = Spec("ablate", __import__("tformer_cli.core.config", fromlist=["Config"]).Config().to_dict(),
                [Member("base")], [1])
    out = tmp_path / "exp"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps(spec.to_dict()))
    with DirLock(out, "experiment"):
        with pytest.raises(Exception, match="in use by process"):
            run_experiment(spec, out, resume=True, trainer=lambda *a, **k: None)


# ---------------------------------------------------------------- (4) stops


def test_a_stop_before_the_first_checkpoint_says_so_and_leaves_no_directory(cli, tiny_yaml, tmp_path, monkeypatch):
    from tformer_cli.cli.options import StopOnInterrupt

    monkeypatch.setattr(StopOnInterrupt, "__call__", lambda self: True)
    out = tmp_path / "r1"
    r = cli("train", tiny_yaml, "--out", out)
    assert r.code == 130, r
    assert "stopped before the first checkpoint" in r.err and "--resume" not in r.err, r.err
    assert not out.exists()


def test_a_stop_during_evaluation_is_honoured_and_the_resume_is_exact(tmp_path, tiny_config):
    from tformer_cli.core.config import from_dict
    from tformer_cli.run.rundir import prepare_run_dir
    from tformer_cli.train.loop import train

    tiny_config["train"].update(steps=10, eval_interval=5, eval_iters=50, log_interval=5)
    cfg = from_dict(tiny_config)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for d in (whole, cut):
        prepare_run_dir(d, False)
    train(cfg, whole)
    calls = []

    def stop():  # False for the 5 steps, then True inside the first evaluation
        calls.append(1)
        return len(calls) > 6

    r = train(cfg, cut, should_stop=stop)
    assert r.interrupted and r.steps_done == 5
    assert len(calls) < 10  # not 50 evaluation batches later
    train(cfg, cut, resume=True)
    assert (cut / "metrics.jsonl").read_text() == (whole / "metrics.jsonl").read_text()


def test_tokenization_and_corpus_reading_honour_the_stop_flag(tmp_path, monkeypatch):
    from tformer_cli.core import stop, token_cache
    from tformer_cli.core.data import CharTokenizer
    from tformer_cli.errors import Stopped

    monkeypatch.setattr(token_cache, "CHUNK", 10)
    text = "ab\ncd\n" * 50
    tok = CharTokenizer.train(text)
    assert token_cache.encode_in_chunks(tok, text) == tok.encode(text)  # chunks change nothing
    stop.request()
    try:
        with pytest.raises(Stopped):
            token_cache.encode_in_chunks(tok, text)
        (tmp_path / "c.txt").write_text(text)
        with pytest.raises(Stopped):
            token_cache.read_corpus_bytes(tmp_path / "c.txt", "")
    finally:
        stop.clear()


def test_a_fifo_corpus_is_refused_not_waited_on(cli, tiny_yaml, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    one_line(cli("train", tiny_yaml, "--data", fifo, "--out", tmp_path / "r"), 2, "is a FIFO")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- (5) numbers


@pytest.mark.parametrize("setting, key", [
    ("train.lr=nan", "train.lr"), ("train.lr=inf", "train.lr"), ("train.weight_decay=.nan", "train.weight_decay"),
    ("train.min_lr=nan", "train.min_lr"), ("model.rope_base=nan", "model.rope_base"),
    ("train.grad_clip=nan", "train.grad_clip"), ("train.seed=18446744073709551616", "train.seed"),
    ("train.steps=1e30", "train.steps"),
])
def test_every_number_is_finite_and_in_range(cli, setting, key):
    one_line(cli("train", "--set", setting), 2, key)


def test_train_seed_flag_out_of_range(cli):
    one_line(cli("train", "--seed", str(2**64)), 2, "train.seed")


@pytest.mark.parametrize("flags", [["--temperature", "1e-40"], ["--top-p", "1e-300"],
                                   ["--temperature", "1e-40", "--top-p", "1e-300"]])
def test_tiny_temperature_and_top_p_sample(run, flags):
    r = run_cli("sample", run, "--prompt", "a", "--max-new-tokens", "5", "--seed", "1", *flags)
    assert r.code == 0, r


@pytest.mark.parametrize("flags, needle", [(["--threads", "100000"], "--threads must be at most"),
                                           (["--seed", str(2**64)], "--seed must be in"),
                                           (["--seed", "-1"], "--seed must be in")])
def test_sample_flags_in_range(run, flags, needle):
    r = run_cli("sample", run, "--prompt", "a", *flags)
    assert r.code == 2 and needle in r.err and "unexpected" not in r.err, r


# ---------------------------------------------------------------- (6) advice


@pytest.mark.parametrize("setting, key", [("train.batch_size=1000000", "train.batch_size"),
                                          ("model.d_model=65536", "model.d_model")])
def test_out_of_memory_is_predicted_with_the_key_to_lower(cli, tiny_yaml, tmp_path, setting, key):
    r = cli("train", tiny_yaml, "--set", setting, "--set", "model.n_head=1", "--out", tmp_path / "r")
    one_line(r, 1, "needs at least", key)
    assert not (tmp_path / "r").exists()


def test_os_errors_name_the_path(cli, tiny_yaml, tmp_path, monkeypatch):
    one_line(cli("train", tiny_yaml, "--out", tmp_path / ("x" * 300)), 2, "too long")
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("TFORMER_CACHE", str(tmp_path / "f"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("some new text that is not cached yet\n" * 40)
    one_line(cli("train", tiny_yaml, "--data", corpus, "--out", tmp_path / "r"), 2, "token cache", "TFORMER_CACHE")


def test_an_unknown_image_extension_is_refused_first(run):
    one_line(run_cli("attention", run, "--prompt", "ab", "--out", run / "a.xyz"), 2, "unknown image type")
    one_line(run_cli("heads", run, "--out", run / "h.doc"), 2, "unknown image type")
    one_line(run_cli("attention", run, "--prompt", "ab", "--out", run / "no-such-dir" / "a.png"), 2, "does not exist")


# ---------------------------------------------------------------- (7) listing


def test_runs_lists_damaged_entries_and_goes_on(run, tmp_path):
    root = run.parent
    shutil.copytree(run, root / "bad")
    (root / "bad" / "summary.json").write_text('{"steps_done": [], "steps": "x"}')
    exp = root / "exp"
    exp.mkdir()
    (exp / "experiment.json").write_text("{nope")
    exp2 = root / "exp2"
    shutil.copytree(exp, exp2)
    spec = {"kind": "ablate", "base": {}, "members": [{"name": "b"}], "seeds": [1]}
    (exp2 / "experiment.json").write_text(json.dumps(spec))
    (exp2 / "results.json").write_text('{"rows": 5}')
    r = run_cli("runs", root, "--json")
    assert r.code == 0, r
    status = {os.path.basename(e["path"]): e["status"] for e in json.loads(r.out)}
    assert status["r"] == "finished"
    assert status["bad"].startswith("damaged") and status["exp"].startswith("damaged")
    assert status["exp2"].startswith("damaged: results.json")


# ---------------------------------------------------------------- (8) no quiet changes


def test_resuming_a_finished_run_changes_nothing(run):
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    r = run_cli("train", "--resume", run)
    assert r.code == 0 and "is finished (step 10 of 10)" in r.err, r
    r = run_cli("train", "--resume", run, "--steps", "10")
    assert r.code == 0 and "is finished" in r.err, r
    one_line(run_cli("train", "--resume", run, "--steps", "4"), 2, "below step 10")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_users_config_alone_is_not_a_run_and_overwrite_keeps_it(cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("# my notes\ntrain: {steps: 3}\n")
    one_line(cli("train", "--resume", out), 2, "not a tformer run directory")
    one_line(cli("train", "--out", out, "--overwrite", "--steps", "3"), 2, "config.yaml, which tformer did not write")
    assert (out / "config.yaml").read_text().startswith("# my notes")


def test_a_truncated_checkpoint_is_called_truncated(run):
    data = (run / CKPT).read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        (run / CKPT).write_bytes(data[:cut])
        line = one_line(run_cli("sample", run, "--prompt", "a"), 1, "corrupt or truncated")
        assert "pickle" not in line


def test_a_failed_train_leaves_no_empty_directory(cli, tiny_yaml, tmp_path):
    out = tmp_path / "rN"
    r = cli("train", tiny_yaml, "--data", tmp_path / "missing.txt", "--out", out)
    assert r.code == 2 and not out.exists(), r
    out2 = tmp_path / "deep" / "rM"
    cli("train", tiny_yaml, "--set", "model.block_size=100000", "--set", "model.pos_encoding=rope", "--out", out2)
    assert not out2.exists()
