"""The built-in corpora's sizes and the content hash a run records (data.max_chars, corpus_sha256)."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import TINY, train_tiny_run
from tformer_cli.core import data
from tformer_cli.core.config import from_dict
from tformer_cli.errors import ConfigError


def test_the_code_corpus_is_2mb_of_top_level_modules_unless_asked_for_more():
    files = data.code_files()
    root = files[0].parent
    top = [p for p in files if p.parent == root]
    assert files[:len(top)] == sorted(root.glob("*.py"))  # the top-level modules first, by name
    assert not any(part in ("test", "tests", "idle_test") or part.startswith("test_")
                   for p in files for part in p.relative_to(root).parts)
    small, _ = data.read_corpus("code")
    assert data.CODE_CHARS <= len(small) < data.CODE_CHARS + 400_000  # whole files: the last one complete
    assert small == data.read_corpus("code")[0]  # stable
    big, _ = data.read_corpus("code", 6_000_000)
    assert len(big) >= 6_000_000 and big.startswith(small)  # grows by appending: the 2 MB stay a prefix
    assert "def " in big[len(small):]


def test_max_chars_cuts_any_other_corpus_and_is_checked():
    prose, _ = data.read_corpus("prose")
    assert data.read_corpus("prose", 5000)[0] == prose[:5000]
    with pytest.raises(ConfigError, match="data.max_chars: at least 1,000"):
        from_dict({"data": {"max_chars": 10}})


def test_a_run_records_the_hash_of_its_text_and_how_often_it_read_it(tmp_path):
    cfg = {k: dict(v) for k, v in TINY.items()}
    cfg["data"]["max_chars"] = 20_000
    run = train_tiny_run(tmp_path, "run", config=cfg, steps=10)
    s = json.loads((run / "summary.json").read_text())
    text, _ = data.read_corpus("prose", 20_000)
    assert s["corpus_sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    n_train = len(text) * 0.9  # char tokens: one per character of the training split
    assert s["epochs"] == pytest.approx(10 * 4 * 16 / n_train, rel=0.01)
