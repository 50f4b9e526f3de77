"""Text from where it lives (core/sources.py): JSONL, Parquet and Hugging Face datasets train the
quick model; every bad input is one line, exit 2, nothing written.  Nothing here touches the network."""

from __future__ import annotations

import json

import pytest

from conftest import one_line

DOCS = [f"Document {i}: the quick brown fox jumps over the lazy dog. " * 20 for i in range(60)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trains(tmp_path, corpus, **data):
    """`tformer train --preset quick --data CORPUS` for a few steps: the summary."""
    from conftest import run_cli

    out = tmp_path / "run"
    sets = [f"data.{k}={v}" for k, v in data.items()] + ["train.eval_interval=3", "train.eval_iters=2",
                                                          "train.log_interval=1", "train.device=cpu"]
    args = ["train", "--preset", "quick", "--data", str(corpus), "--steps", "3", "--out", out]
    for x in sets:
        args += ["--set", x]
    r = run_cli(*args)
    assert r.code == 0, r
    return json.loads((out / "summary.json").read_text())


def test_a_jsonl_file_trains_on_its_text_field(tmp_path):
    from tformer_cli.core.data import read_corpus

    path = _jsonl(tmp_path / "docs.jsonl", [{"id": i, "body": d} for i, d in enumerate(DOCS)])
    text, label = read_corpus(str(path), None, "body")
    assert text == "\n\n".join(DOCS) and label == str(path)
    assert read_corpus(str(path), 5000, "body")[0] == text[:5000]  # read no further than max_chars
    s = _trains(tmp_path, path, text_field="body")
    assert s["steps_done"] == 3 and s["corpus_sha256"]


def test_a_parquet_file_trains_on_its_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from tformer_cli.core.data import read_corpus

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), path, row_group_size=7)
    assert read_corpus(str(path))[0] == "\n\n".join(DOCS)
    assert _trains(tmp_path, path)["steps_done"] == 3


def test_a_dataset_saved_to_disk_trains_and_its_splits_are_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    from tformer_cli.core.data import read_corpus

    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS}),
                          "test": datasets.Dataset.from_dict({"text": DOCS[:3]})}).save_to_disk(str(folder))
    assert read_corpus(f"hf:{folder}")[0] == "\n\n".join(DOCS)
    assert read_corpus(f"hf:{folder}:test")[0] == "\n\n".join(DOCS[:3])
    assert _trains(tmp_path, f"hf:{folder}")["steps_done"] == 3


def test_hf_names_parse_into_name_config_and_split():
    from tformer_cli.core.sources import parse_hf

    assert parse_hf("wikitext/wikitext-2-raw-v1:validation") == ("wikitext", "wikitext-2-raw-v1", "validation")
    assert parse_hf("tiny_shakespeare") == ("tiny_shakespeare", None, "train")
    assert parse_hf("Salesforce/wikitext/wikitext-103-v1") == ("Salesforce/wikitext", "wikitext-103-v1", "train")
    assert parse_hf("Salesforce/wikitext/:test") == ("Salesforce/wikitext", None, "test")


def _refused(cli, tmp_path, corpus, *needles, sets=()):
    out = tmp_path / "run"
    args = ["train", "--preset", "quick", "--data", str(corpus), "--steps", "2", "--out", out]
    for s in sets:
        args += ["--set", s]
    one_line(cli(*args), 2, *needles)
    assert not out.exists()  # nothing written


def test_bad_jsonl_lines_are_named(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    _refused(cli, tmp_path, bad, "bad.jsonl line 2: not JSON")
    _refused(cli, tmp_path, _jsonl(tmp_path / "nofield.jsonl", [{"text": "a"}, {"body": "b"}]),
             "line 2 has no field 'text' (its fields: body)")
    _refused(cli, tmp_path, _jsonl(tmp_path / "num.jsonl", [{"text": 3}]), "line 1: field 'text' is not text")
    _refused(cli, tmp_path, _jsonl(tmp_path / "list.jsonl", [[1, 2]]), "line 1: expected a JSON object")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    _refused(cli, tmp_path, empty, "has no text in its field 'text'")


def test_bad_parquet_columns_and_bad_datasets_are_named(cli, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), path)
    _refused(cli, tmp_path, path, "has no column 'text' (its columns: body, n)")
    _refused(cli, tmp_path, path, "column 'n' is int64, not text", sets=["data.text_field=n"])
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(folder))
    _refused(cli, tmp_path, f"hf:{folder}:validation", "split 'validation' does not exist (splits: train)")


def test_without_the_library_or_the_network_one_line_says_which(cli, tmp_path, monkeypatch):
    import sys

    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pyarrow", None)  # not installed
        m.setitem(sys.modules, "pyarrow.parquet", None)
        m.setitem(sys.modules, "datasets", None)
        _refused(cli, tmp_path, tmp_path / "x.parquet", "needs pyarrow, which is not installed", "tformer[parquet]")
        _refused(cli, tmp_path, "hf:wikitext", "needs the datasets library", "tformer[hf]")
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    # offline, as HF_DATASETS_OFFLINE=1 says at import time, with an empty cache: nothing to load
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    _refused(cli, tmp_path, "hf:no-such-owner/no-such-dataset/", "could not be loaded")
