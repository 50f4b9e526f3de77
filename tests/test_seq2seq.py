"""`model.arch: encdec` and `tformer seq2seq`: the tasks, exact cached decoding for both
architectures, the decoder's causality, the command's errors."""

from __future__ import annotations

import json

import pytest


def _tiny(arch):
    from tformer_cli.core.config import ModelConfig
    from tformer_cli.train.seq2seq import build

    import torch

    torch.manual_seed(0)
    return build(arch, ModelConfig(d_model=32, n_layer=2, n_head=2, dropout=0.0), 8, 8).eval()


@pytest.mark.parametrize("arch", ["encdec", "gpt"])
def test_cached_greedy_decoding_equals_recomputing_the_prefix(arch):
    import torch

    from tformer_cli.core import seq2seq as tasks
    from tformer_cli.train.seq2seq import decode

    model = _tiny(arch)
    src = torch.randint(2, tasks.VOCAB, (6, 8))
    assert torch.equal(decode(model, arch, src, 8, use_cache=True), decode(model, arch, src, 8, use_cache=False))


def test_the_decoder_is_causal_and_reads_the_whole_source():
    import torch

    model = _tiny("encdec")
    src = torch.randint(2, 20, (1, 8))
    tgt = torch.randint(2, 20, (1, 8))
    base = model.decode(tgt, model.encode(src))
    later = tgt.clone()
    later[0, 5:] = (later[0, 5:] + 1) % 20
    changed = model.decode(later, model.encode(src))
    assert torch.allclose(base[0, :5], changed[0, :5], atol=1e-6)  # no target position sees a later one
    src2 = src.clone()
    src2[0, -1] = (src2[0, -1] + 1) % 20
    assert not torch.allclose(base[0, 0], model.decode(tgt, model.encode(src2))[0, 0])  # the last source token counts


@pytest.mark.parametrize("task, src, tgt", [("reverse", "abcdefgh", "hgfedcba"), ("sort", "hgfedcba", "abcdefgh")])
def test_the_tasks_pair_sources_with_their_answers(task, src, tgt):
    from tformer_cli.core import seq2seq as tasks

    train, test = tasks.pairs(task)
    assert len(train.src) == tasks.N_TRAIN and len(test.src) == tasks.N_TEST
    assert not {tuple(s) for s in test.src} & {tuple(s) for s in train.src}
    s, t = tasks.decode(train.src[0]), tasks.decode(train.tgt[0])
    assert t == (s[::-1] if task == "reverse" else "".join(sorted(s)))
    assert tasks.encode(src) and tasks.decode(tasks.encode(tgt)) == tgt


def test_add_is_the_sum():
    from tformer_cli.core import seq2seq as tasks

    train, _ = tasks.pairs("add")
    for s, t in zip(train.src[:50], train.tgt[:50]):
        a, b = tasks.decode(s).split("+")
        assert int(tasks.decode(t)) == int(a) + int(b)


def test_the_command_runs_and_refuses_unknown_tasks(cli, tmp_path):
    r = cli("seq2seq", "--task", "reverse", "--seeds", "1", "--steps", "3", "--out", tmp_path / "s", "--json")
    assert r.code == 0, r
    data = json.loads(r.out)
    assert {row["arch"] for row in data["rows"]} == {"encdec", "gpt"} and data["models"]["encdec"]["arch"] == "encdec"
    assert (tmp_path / "s" / "results.json").exists()
    r = cli("seq2seq", "--task", "translate")
    assert r.code == 2 and "--task: 'translate' is not one of reverse, sort, add" in r.err


def test_the_table_fits_80_columns(monkeypatch):
    from conftest import terminal

    r = terminal(monkeypatch, "seq2seq", "--task", "sort", "--seeds", "1", "--steps", "2")
    assert "held-out exact match" in r.out


def test_train_points_encdec_to_seq2seq(cli):
    r = cli("train", "--set", "model.arch=encdec")
    assert r.code == 2 and "is trained by `tformer seq2seq`" in r.err
