"""Issue 13, a second hostile pass: each failure it found, as a test (the pass's cases and
outcomes are listed in docs/guarantees.md)."""

from __future__ import annotations

import pytest

from conftest import CKPT, one_line, rewrite_checkpoint, train_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("pass2"), "run", steps=2, eval_interval=2, log_interval=1)


def test_an_endless_prompt_file_is_refused_at_a_bound(cli, tiny_run, monkeypatch):
    """`sample --prompt-file /dev/zero` read until memory ran out ("out of memory", with a hint
    about train.batch_size)."""
    from tformer_cli.core import prompt

    monkeypatch.setattr(prompt, "PROMPT_LIMIT", 1 << 16)
    one_line(cli("sample", tiny_run, "--prompt-file", "/dev/zero", "--max-new-tokens", "2"), 2, "more than")


def test_a_prompt_file_at_the_bound_is_read(cli, tiny_run, tmp_path, monkeypatch):
    from tformer_cli.core import prompt

    monkeypatch.setattr(prompt, "PROMPT_LIMIT", 1 << 10)
    f = tmp_path / "p.txt"
    f.write_text("the " * 256)  # exactly the limit
    r = cli("sample", tiny_run, "--prompt-file", f, "--max-new-tokens", "2", "--json")
    assert r.code == 0, r


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_heads_threshold_is_finite_and_positive(cli, tiny_run, value):
    """`heads --threshold nan` was accepted (every comparison with nan is false)."""
    one_line(cli("heads", tiny_run, "--threshold", value), 2, "--threshold")


def test_a_checkpoint_with_nan_weights_is_damaged_not_unexpected(cli, tiny_run, tmp_path):
    """NaN weights reached sampling: "unexpected RuntimeError: probability tensor contains nan"."""
    import shutil

    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)

    def poison(tensors):
        name = sorted(k for k in tensors if not k.startswith("optim."))[0]
        tensors[name][...] = float("nan")
        return tensors

    rewrite_checkpoint(run / CKPT, poison)
    one_line(cli("sample", run, "--prompt", "The ", "--max-new-tokens", "2"), 1, "nan or inf")
    one_line(cli("heads", run), 1, "nan or inf")
    one_line(cli("train", "--resume", run, "--steps", "4"), 1, "nan or inf")


def test_bench_checks_memory_before_allocating(cli, tiny_yaml, monkeypatch):
    """`bench --set train.batch_size=10000000` allocated until the allocator failed; train refused
    it up front.  The estimate is checked against a small limit here (no real allocation)."""
    from tformer_cli.core import memory

    monkeypatch.setattr(memory, "available", lambda device: (64 << 20, "physical memory"))
    one_line(cli("bench", tiny_yaml, "--set", "train.batch_size=100000"), 1, "train.batch_size")
