"""`model.arch: encdec` and `tformer seq2seq`: the tasks, exact cached decoding for both
architectures, the decoder's causality, the command's errors."""

from __future__ import annotations

import json

import pytest


def _tiny(arch):
    import torch

    from tformer_cli.core.config import ModelConfig
    from tformer_cli.train.seq2seq import build

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
    # each task is an experiment of the runner: its members' run directories, listed with the verdict
    assert "verdict: UNDECIDED" in cli("runs", tmp_path / "s").out
    listed = cli("runs", tmp_path / "s" / "reverse")
    assert "verdict: UNDECIDED" in listed.out and "seq2seq" in listed.out and "exact match" in listed.out
    again = cli("seq2seq", "--task", "reverse", "--seeds", "1", "--steps", "3", "--out", tmp_path / "s")
    assert again.code == 0 and "finished earlier, skipped" in again.out + again.err
    other = cli("seq2seq", "--task", "reverse", "--seeds", "1", "--steps", "4", "--out", tmp_path / "s")
    assert other.code == 2 and "holds this task with other settings" in other.err


def _run_config(**train):
    from tformer_cli.core.config import from_dict

    return from_dict({"model": {"arch": "encdec", "d_model": 32, "n_layer": 1, "n_head": 2, "dropout": 0.1},
                      "task": {"kind": "seq2seq", "data": "add"},
                      "train": {"steps": 16, "batch_size": 8, "warmup_steps": 2, "eval_interval": 8,
                                "log_interval": 2, "ckpt_interval": 2, "device": "cpu", **train}})


@pytest.mark.parametrize("arch", ["encdec", "gpt"])
def test_a_seq2seq_run_is_a_run_of_the_one_loop_and_resumes_bitwise_after_a_stop(tmp_path, arch):
    """The loop's schedule, optimizer, metrics, checkpoints and stop handling: a run stopped after its
    step-10 checkpoint and resumed ends with the same weights, moments and logged losses."""
    from conftest import assert_same_checkpoints, interrupted_and_resumed
    from tformer_cli.run.rundir import RunDir
    from tformer_cli.train.optim import lr_at

    cfg = _run_config()
    cfg = cfg.replace({"model.arch": arch})
    full, part, stopped, resumed = interrupted_and_resumed(cfg, tmp_path)
    assert stopped.interrupted and stopped.steps_done == 10 and "exact_match" not in stopped.extra
    assert resumed.resumed_from == 10 and not resumed.interrupted
    assert_same_checkpoints(full, part)
    assert RunDir(full).metric_rows() == RunDir(part).metric_rows()
    rows = RunDir(full).metric_rows()
    assert [r["lr"] for r in rows if "lr" in r][:2] == [lr_at(1, cfg), lr_at(3, cfg)]  # the one schedule
    assert {r["step"] for r in rows if "val_loss" in r} == {8, 16}
    assert 0 <= resumed.extra["exact_match"] <= resumed.extra["token_accuracy"] <= 1
    assert RunDir(full).read_summary().extra["exact_match"] == resumed.extra["exact_match"]


def test_a_seq2seq_run_is_refused_by_the_language_model_commands_and_continued_by_train(cli, tmp_path):
    from tformer_cli.run.rundir import prepare_run_dir
    from tformer_cli.train.loop import train

    run = tmp_path / "r"
    prepare_run_dir(run, False)
    train(_run_config(steps=4), run)
    from conftest import one_line

    one_line(cli("sample", run, "--prompt", "12"), 1, "is a seq2seq run")
    r = cli("train", "--resume", run, "--steps", "6")
    assert r.code == 0 and "held-out exact match" in r.out and "tformer sample" not in r.out


def test_the_seq2seq_question_is_a_study_file_listed_and_run_by_study_all(cli):
    from tformer_cli.study import files

    assert "seq2seq_encdec" in [p.stem for p in files.builtin_studies()]
    spec = files.study_from(files.Source(files.find_study("seq2seq_encdec"), None, {}, None))
    arch = {m.name: spec.member_config(m, spec.seeds[0]).model.arch for m in spec.members}
    assert arch == {"baseline": "encdec", "gpt": "gpt"} and spec.claims[0].metric == "exact_match"
    assert "seq2seq_encdec" in cli("presets").out


def test_the_table_fits_80_columns(monkeypatch):
    from conftest import terminal

    r = terminal(monkeypatch, "seq2seq", "--task", "sort", "--seeds", "1", "--steps", "2")
    assert "held-out exact match" in r.out


def test_train_points_encdec_to_seq2seq(cli):
    r = cli("train", "--set", "model.arch=encdec")
    assert r.code == 2 and "is trained by `tformer seq2seq`" in r.err
