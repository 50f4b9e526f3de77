"""The bad-input matrix: every mistake a user can make gets one line, a hint and the right exit code.

Exit codes: 2 for usage, configuration and data errors, 1 for runtime errors.  Never a
traceback unless TFORMER_DEBUG=1.  All in-process through the real entry point (`cli`).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

CORPUS_HINT = ("hint: built-in corpora: prose, code, repeat, modadd, induction; or give a path to a UTF-8 text file "
               "(or a .jsonl or .parquet file, or hf:NAME)")


def assert_error(r, code: int, message: str, hint: str | None = None) -> None:
    """Exactly `error: MESSAGE` (one line), optionally `hint: ...`, and the exit code."""
    assert r.code == code, r
    assert "Traceback" not in r.out + r.err, r
    lines = r.err.strip("\n").splitlines()
    assert lines[0] == f"error: {message}", r.err
    assert len(lines) <= 2 and all(line.startswith("hint: ") for line in lines[1:]), r.err
    if hint is not None:
        assert lines[1:] == [hint], r.err


@pytest.fixture
def train(cli, tiny_yaml, tmp_path):
    """`tformer train TINY --out tmp/run ARGS`."""

    def run(*args):
        return cli("train", tiny_yaml, "--out", tmp_path / "run", *args)

    return run


@pytest.fixture
def tiny_run(tmp_path, tiny_config):
    """A run directory with an untrained model's checkpoint (fast: no training)."""
    import torch

    from tformer_cli.core.config import from_dict
    from tformer_cli.core.data import CharTokenizer
    from tformer_cli.core.model import build_model
    from tformer_cli.run import checkpoint

    def make(name: str = "run", **model):
        tiny_config["model"].update(model)
        cfg = from_dict(tiny_config)
        tok = CharTokenizer.train("abcdefgh \n")
        run = tmp_path / name
        run.mkdir()
        torch.manual_seed(0)
        checkpoint.save(run, build_model(cfg.model, tok.vocab_size), None, cfg, tok.vocab_size, {"step": 0})
        (run / "config.yaml").write_text(cfg.to_yaml())
        (run / "tokenizer.json").write_text(json.dumps(tok.to_json()))
        return run

    return make


# ---------------------------------------------------------------- corpora


def test_missing_corpus(train, tmp_path):
    assert_error(train("--data", tmp_path / "nope.txt"), 2, f"corpus not found: {tmp_path / 'nope.txt'}",
                 CORPUS_HINT)


def test_corpus_is_a_directory(train, tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    assert_error(train("--data", d), 2, f"corpus path is a directory, not a file: {d}", CORPUS_HINT)


def test_empty_corpus(train, tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text(" \n\n")
    assert_error(train("--data", f), 2, f"corpus {f} is empty", "hint: give a file with some text in it")


@pytest.mark.parametrize("n_chars, val_fraction, split, n", [(40, 0.1, "validation", 4), (20, 0.5, "training", 10)])
def test_corpus_too_short_for_the_block(train, tmp_path, n_chars, val_fraction, split, n):
    f = tmp_path / "short.txt"
    f.write_text(("abcdefghij" * 10)[:n_chars])
    r = train("--data", f, "--set", f"data.val_fraction={val_fraction}")
    assert_error(r, 2, f"corpus {f}: the {split} split has {n} tokens, but block_size=16 needs at least 17",
                 "hint: use a longer corpus, a smaller model.block_size, or change data.val_fraction")


def test_corpus_not_utf8_says_where(train, tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"hello\nwor\xffld\n" * 50)
    assert_error(train("--data", f), 2, f"corpus {f} is not UTF-8: invalid byte 0xff at byte 9 (line 2)",
                 "hint: convert it first, e.g. iconv -f latin1 -t utf-8")


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("text, where", [
    ("model:\n  d_model: [32, 64\ntrain:\n  lr: 0.1\n", "line 3, column 6: expected ',' or ']', but got ':'"),
    ("model:\n  n_head: 2\n d_model: 32\n", "line 3, column 2: expected <block end>, but found "
                                             "'<block mapping start>'"),
])
def test_yaml_that_does_not_parse(cli, tmp_path, text, where):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    assert_error(cli("train", f, "--out", tmp_path / "run"), 2, f"cannot parse {f} at {where}")


def test_unknown_key_with_suggestion(cli, train, tmp_path):
    assert_error(train("--set", "model.n_heads=4"), 2, "--set: unknown key 'model.n_heads' (did you mean "
                 "'model.n_head'?)", "hint: see `tformer keys` for every key")
    f = tmp_path / "typo.yaml"
    f.write_text("model:\n  d_modle: 64\n")
    assert_error(cli("train", f, "--out", tmp_path / "run"), 2,
                 "unknown key 'model.d_modle' (did you mean 'model.d_model'?)")


def test_wrong_type(cli, train, tmp_path):
    assert_error(train("--set", "train.batch_size=abc"), 2, "train.batch_size: expected an integer, got 'abc'")
    assert_error(train("--set", "model.bias=maybe"), 2, "model.bias: expected true or false, got 'maybe'")
    f = tmp_path / "types.yaml"
    f.write_text("train:\n  lr: fast\n")
    assert_error(cli("train", f, "--out", tmp_path / "run"), 2, "train.lr: expected a number, got 'fast'")


@pytest.mark.parametrize("key, value", [("train.lr", "0"), ("train.lr", "-0.001"), ("train.batch_size", "0"),
                                        ("train.batch_size", "-4"), ("train.steps", "0"), ("train.steps", "-1")])
def test_non_positive_lr_batch_steps(train, key, value):
    shown = float(value) if key == "train.lr" else int(value)
    assert_error(train("--set", f"{key}={value}"), 2, f"{key}: must be positive, got {shown}")


def test_non_positive_steps_flag(train):
    assert_error(train("--steps", "0"), 2, "train.steps: must be positive, got 0")


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_dropout_outside_unit_interval(train, value):
    assert_error(train("--set", f"model.dropout={value}"), 2, f"model.dropout: must be in [0, 1), got {float(value)}")


def test_n_head_must_divide_d_model(train):
    assert_error(train("--set", "model.n_head=5"), 2, "model.n_head: d_model=32 is not divisible by n_head=5; "
                 "valid head counts for d_model=32: 1, 2, 4, 8, 16, 32")


def test_several_problems_are_reported_together(train):
    r = train("--set", "model.n_head=5", "--set", "train.lr=0", "--set", "model.dropout=1")
    assert r.code == 2 and "Traceback" not in r.err
    assert r.err.startswith("error: 3 problems in the configuration:\n")
    for p in ("model.n_head: d_model=32", "train.lr: must be positive", "model.dropout: must be in [0, 1)"):
        assert p in r.err


# ---------------------------------------------------------------- block_size and the position tables


def test_block_size_beyond_the_learned_table(cli, tiny_run):
    """The learned table has block_size rows, fixed when the run was trained: a checkpoint whose
    config claims a longer context than its table holds is refused, naming the table."""
    run = tiny_run()
    from tformer_cli.run import checkpoint

    ck = checkpoint.load(run)
    ck.header["config"]["model"]["block_size"] = 32
    from safetensors.torch import save_file

    save_file(ck.tensors, str(run / "checkpoint.safetensors"),
              metadata={k: json.dumps(v) for k, v in ck.header.items()})
    r = cli("sample", run, "--prompt", "ab", "--max-new-tokens", "2")
    assert_error(r, 1, f"checkpoint {run / 'checkpoint.safetensors'} does not match its config: "
                 "pos_emb.weight has shape (16, 32), the config needs (32, 32)",
                 "hint: the file may have been edited or come from another run")


def test_resume_cannot_grow_the_block(cli, tiny_run):
    run = tiny_run()
    assert_error(cli("train", "--resume", run, "--set", "model.block_size=32"), 2,
                 f"--resume {run}: flags conflict with the run's config: model.block_size=32 (the run has 16)")


@pytest.mark.parametrize("pos", ["learned", "rope", "sinusoidal"])
def test_forward_longer_than_the_table_is_refused(pos):
    import torch

    from tformer_cli.core.config import ModelConfig
    from tformer_cli.core.model import build_model

    model = build_model(ModelConfig(d_model=16, n_layer=1, n_head=2, block_size=8, pos_encoding=pos), 10)
    model(torch.zeros(1, 8, dtype=torch.long))  # the full table is fine
    with pytest.raises(ValueError, match="sequence of 9 tokens exceeds block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_prompt_longer_than_the_block_is_cut_not_an_error(cli, tiny_run, pos):
    run = tiny_run(pos_encoding=pos)
    r = cli("sample", run, "--prompt", "abcdefgh" * 5, "--max-new-tokens", "20", "--temperature", "0", "--json")
    assert r.code == 0, r
    out = json.loads(r.out)
    assert out["prompt_tokens"] == 40 and len(out["samples"][0]["tokens"]) == 20


# ---------------------------------------------------------------- run directories


def test_resume_on_a_directory_that_is_not_a_run(cli, tmp_path):
    assert_error(cli("train", "--resume", tmp_path), 2,
                 f"--resume {tmp_path}: not a tformer run directory (no config.yaml)",
                 "hint: give a directory written by `tformer train`")


def test_resume_with_conflicting_flags(cli, tiny_run, tiny_yaml):
    run = tiny_run()
    assert_error(cli("train", "--resume", run, "--seed", "7", "--data", "code"), 2,
                 f"--resume {run}: flags conflict with the run's config: train.seed=7 (the run has 1337), "
                 "data.corpus='code' (the run has 'prose')")
    r = cli("train", "--resume", run, "--seed", "7")
    assert "may change on resume; start a new run otherwise" in r.err and "train.steps" in r.err
    assert_error(cli("train", tiny_yaml, "--resume", run), 2,
                 "--resume takes its config from the run; do not pass a config file or --preset")


def test_out_exists_and_is_not_a_run(train, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_error(train(), 2, f"--out {out} is a non-empty directory that is not a run",
                 "hint: use --resume to continue a run, --overwrite to replace it, or another --out")
    assert (out / "notes.txt").read_text() == "mine"  # untouched


def test_out_is_a_file(cli, tiny_yaml, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_error(cli("train", tiny_yaml, "--out", f), 2, f"--out {f} exists and is a file",
                 "hint: choose another --out")


def test_unwritable_output_directory(cli, tiny_yaml, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a directory should be: cannot be created, even by root
    assert_error(cli("train", tiny_yaml, "--out", blocker / "run"), 2,
                 f"cannot write to output directory {blocker / 'run'}: Not a directory",
                 "hint: choose a writable --out")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_output_directory(cli, tiny_yaml, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert_error(cli("train", tiny_yaml, "--out", ro / "run"), 2,
                     f"cannot write to output directory {ro / 'run'}: Permission denied")
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------- devices


def test_cuda_requested_without_cuda(train, cli, tiny_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_error(train("--device", "cuda"), 2, "--device cuda: CUDA is not available on this machine",
                 "hint: use --device cpu or --device auto")
    assert_error(cli("sample", tiny_run("srun"), "--device", "cuda:1", "--prompt", "a"), 2,
                 "--device cuda:1: CUDA is not available on this machine")


def test_unknown_device_name(train):
    assert_error(train("--device", "tpu"), 2, "train.device: 'tpu' is not one of auto, cpu, cuda, cuda:N, mps")


# ---------------------------------------------------------------- the debug switch


def test_tformer_debug_shows_the_traceback(cli, train, tmp_path, monkeypatch):
    from tformer_cli.errors import DataError

    monkeypatch.setenv("TFORMER_DEBUG", "1")
    with pytest.raises(DataError, match="corpus not found"):
        train("--data", tmp_path / "nope.txt")
