"""Fine-tuning for classification: the head and its pooling, labelled data and its errors, the
fine-tune directory (resume, Ctrl-C, label map), `tformer classify`, the metrics, the study."""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import one_line, train_tiny_run

TINY_SETS = ["--preset", "quick", "--set", "model.d_model=32", "--set", "model.n_layer=1", "--set",
             "model.n_head=2", "--set", "model.block_size=16"]


def _model_cfg(causal=True):
    from tformer_cli.core.config import ModelConfig

    return ModelConfig(d_model=32, n_layer=1, n_head=2, block_size=16, causal=causal)


# ---------------------------------------------------------------- the head and pooling


@pytest.mark.parametrize("pool", ["last", "mean", "first"])
@pytest.mark.parametrize("body", ["transformer", "bag"])
def test_the_head_gives_one_row_of_logits_per_text(pool, body):
    import torch

    from tformer_cli.core.classifier import build_classifier

    torch.manual_seed(0)
    m = build_classifier(_model_cfg(), 20, 3, pool, body)
    x = torch.randint(0, 20, (5, 7))
    assert m(x).shape == (5, 3)
    h = m.body(x).logits
    assert h.shape == (5, 7, 32)  # the body ends at ln_f: hidden states, not vocabulary logits
    expected = {"last": h[:, -1], "first": h[:, 0], "mean": h.mean(1)}[pool]
    assert torch.allclose(m.pooled(x), expected)


def test_texts_of_different_lengths_are_scored_without_padding():
    import torch

    from tformer_cli.core.classifier import build_classifier

    torch.manual_seed(0)
    m = build_classifier(_model_cfg(causal=False), 20, 2, "mean").eval()
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [1]]
    together = m.logits(seqs, "cpu")
    alone = torch.cat([m(torch.tensor([s])) for s in seqs])
    assert torch.allclose(together, alone, atol=1e-6)


def test_a_bag_of_tokens_cannot_see_order():
    import torch

    from tformer_cli.core.classifier import build_classifier

    m = build_classifier(_model_cfg(), 20, 2, "mean", "bag")
    x = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.allclose(m(x), m(x.flip(1)), atol=1e-6)


def test_the_order_task_gives_a_bag_of_tokens_nothing_to_use():
    from collections import Counter

    from tformer_cli.core.labelled import load_labelled

    d = load_labelled("order")
    assert d.counts() == [1000, 1000] and d.counts("test") == [250, 250]
    for text, y in zip(d.train_texts[:200], d.train_y[:200]):
        assert Counter(text)["x"] == Counter(text)["y"] == 1
        assert (text.index("x") < text.index("y")) == (y == 0)


def test_the_source_task_is_balanced_and_its_splits_do_not_overlap():
    from tformer_cli.core.labelled import load_labelled

    d = load_labelled("source")
    assert d.labels == ["prose", "code"] and d.counts() == [1200, 1200] and d.counts("test") == [300, 300]
    assert not set(d.train_texts) & set(d.test_texts)
    assert load_labelled("source").test_texts == d.test_texts  # a fixed split


# ---------------------------------------------------------------- labelled files and their errors


@pytest.mark.parametrize("name, content, message", [
    ("bad.tsv", "good text\tpos\nno label here\nother\tneg\n", "bad.tsv, line 2: expected 2 tab-separated fields"),
    ("bad.tsv", "a\tpos\n\tneg\n", "bad.tsv, line 2: the text is empty"),
    ("bad.tsv", "a\tpos\nb\t \n", "bad.tsv, line 2: the label is empty"),
    ("one.tsv", "a\tpos\nb\tpos\n", "every row has the label 'pos'"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"\n', "bad.jsonl, line 2: not valid JSON"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', "bad.jsonl, line 2: expected an object with"),
    ("bad.jsonl", '{"text": 3, "label": "x"}\n', "bad.jsonl, line 1: field text must be a string"),
    ("empty.tsv", "\n\n", "has no rows"),
])
def test_bad_labelled_files_are_refused_naming_the_line(cli, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    r = cli("finetune", "--bag", "--data", tmp_path / name, "--out", tmp_path / "ft")
    assert r.code == 2, r
    assert message in r.err and r.err.startswith("error: ") and "hint: " in r.err
    assert not (tmp_path / "ft").exists()  # a failed start leaves nothing behind


def test_a_missing_file_is_a_usage_error(cli, tmp_path):
    r = cli("finetune", "--bag", "--data", tmp_path / "nope.tsv")
    assert r.code == 2 and "labelled data not found" in r.err


def test_a_file_is_split_by_label_and_the_label_map_round_trips(cli, tmp_path):
    rows = [json.dumps({"text": f"{w} {i}", "label": w}) for i in range(10) for w in ("alpha", "beta", "gamma")]
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    r = cli("finetune", "--bag", "--data", tmp_path / "d.jsonl", "--steps", "5", "--out", tmp_path / "ft", "--json")
    assert r.code == 0, r
    s = json.loads(r.out)
    assert s["labels"] == ["alpha", "beta", "gamma"] and s["test"]["n"] == 6 and s["n_train"] == 24
    assert json.loads((tmp_path / "ft" / "labels.json").read_text()) == {"0": "alpha", "1": "beta", "2": "gamma"}
    r = cli("classify", tmp_path / "ft", "--text", "beta 3", "--json")
    assert r.code == 0, r
    (p,) = json.loads(r.out)
    assert set(p["probabilities"]) == {"alpha", "beta", "gamma"} and p["label"] in p["probabilities"]
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-5


# ---------------------------------------------------------------- usage errors and exit codes


@pytest.mark.parametrize("args, message", [
    (["--data", "order"], "give a RUN to fine-tune, or --from-scratch"),
    (["--bag", "--pool", "middle"], "--pool: 'middle' is not one of last, mean, first"),
    (["--bag", "--steps", "0"], "--steps: must be positive"),
    (["--from-scratch", "--freeze"], "--freeze: a frozen random body learns nothing"),
    (["--bag", "--set", "model.n_head=3"], "model.n_head"),
])
def test_usage_errors_exit_2(cli, tmp_path, args, message):
    r = cli("finetune", *args, "--out", tmp_path / "ft")
    assert r.code == 2, r
    assert message in r.err


def test_classify_refuses_what_is_not_a_fine_tune(cli, tmp_path):
    run = train_tiny_run(tmp_path, steps=5, eval_interval=5)
    r = cli("classify", run, "--text", "hello")
    assert r.code == 1 and "is not a fine-tune" in r.err and "tformer finetune RUN" in r.err
    r = cli("classify", tmp_path / "absent", "--text", "hello")
    assert r.code == 1 and "not found" in r.err
    r = cli("finetune", tmp_path / "absent", "--data", "order")
    assert r.code == 2 and "not a tformer run directory" in r.err


# ---------------------------------------------------------------- end to end


def test_a_fine_tune_of_a_tiny_run_beats_chance_on_the_order_task(cli, tmp_path):
    run = train_tiny_run(tmp_path, steps=10, eval_interval=10)
    r = cli("finetune", run, "--data", "order", "--steps", "80", "--lr", "3e-3", "--out", tmp_path / "ft", "--json")
    assert r.code == 0, r
    t = json.loads(r.out)["test"]
    assert t["accuracy_ci"][0] > 0.5, t  # the Wilson interval clears chance
    for name in ("finetune.yaml", "classifier.safetensors", "labels.json", "tokenizer.json", "metrics.jsonl",
                 "summary.json", "confusion.png"):
        assert (tmp_path / "ft" / name).exists(), name
    assert not list((tmp_path / "ft").glob("*.pt"))


def test_a_tiny_fine_tune_from_scratch_without_a_run_builds_its_own_tokenizer(cli, tmp_path):
    r = cli("finetune", "--from-scratch", *TINY_SETS, "--data", "order", "--steps", "5", "--out", tmp_path / "ft",
            "--json")
    assert r.code == 0, r
    tok = json.loads((tmp_path / "ft" / "tokenizer.json").read_text())
    assert tok == {"type": "char", "chars": "abcdefghxy"}


def test_a_fine_tune_of_a_run_starts_from_its_weights_and_freeze_keeps_them(cli, tmp_path):
    import torch

    from tformer_cli.run import checkpoint
    from tformer_cli.train.classify import load_classifier

    run = train_tiny_run(tmp_path, steps=5, eval_interval=5)
    r = cli("finetune", run, "--data", "order", "--freeze", "--steps", "5", "--out", tmp_path / "ft")
    assert r.code == 0, r
    assert "pool last, body frozen" in r.out
    model, _, labels, spec, _ = load_classifier(tmp_path / "ft")
    lm = checkpoint.load(run, with_optimizer=False).model_state()
    assert torch.equal(model.body.tok_emb.weight, lm["tok_emb.weight"])
    assert labels == ["x<y", "y<x"] and spec.finetune.source_run == str(run)


def test_ctrl_c_saves_and_resume_equals_an_uninterrupted_fine_tune(cli, tmp_path, monkeypatch):
    from tformer_cli.train import loop as ft  # the one loop's schedule: train/optim.set_lr

    args = ["finetune", "--bag", "--data", "order", "--steps", "30", "--json"]
    r = cli(*args, "--out", tmp_path / "whole")
    assert r.code == 0, r
    whole = json.loads(r.out)
    original, calls = ft.set_lr, []

    def interrupting(*a):
        calls.append(1)
        if len(calls) == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*a)

    monkeypatch.setattr(ft, "set_lr", interrupting)
    r = cli(*args, "--out", tmp_path / "cut")
    assert r.code == 130, r
    assert "resume with  tformer finetune --resume" in r.err
    monkeypatch.setattr(ft, "set_lr", original)
    r = cli("finetune", "--resume", tmp_path / "cut", "--json")
    assert r.code == 0, r
    resumed = json.loads(r.out)
    assert resumed["resumed_from"] == 12 and resumed["test"] == whole["test"]
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-9)
    r = cli("finetune", "--resume", tmp_path / "cut", "--pool", "last")
    assert r.code == 2 and "cannot also give --pool" in r.err
    r = cli("finetune", "--resume", tmp_path / "cut", "--steps", "10")
    assert r.code == 2 and "--steps 10 is below step 30" in r.err


def test_an_existing_fine_tune_is_not_overwritten_by_accident(cli, tmp_path):
    assert cli("finetune", "--bag", "--data", "order", "--steps", "2", "--out", tmp_path / "ft").code == 0
    r = cli("finetune", "--bag", "--data", "order", "--steps", "2", "--out", tmp_path / "ft")
    assert r.code == 2 and "is a fine-tune" in r.err
    r = cli("finetune", "--bag", "--data", "order", "--steps", "2", "--out", tmp_path / "ft", "--overwrite")
    assert r.code == 0, r


# ---------------------------------------------------------------- metrics


def test_metrics_and_their_intervals():
    from tformer_cli.core.cls_metrics import macro_f1, score

    s = score([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # F1 per label: 0.5, 0.8, 0.667
    assert s.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert s.accuracy_ci[0] < s.accuracy < s.accuracy_ci[1]
    assert s.macro_f1_ci[0] <= s.macro_f1 <= s.macro_f1_ci[1]
    import numpy as np

    assert macro_f1(np.array([[5, 0], [0, 5]])) == 1.0


def test_the_study_judges_paired_differences():
    from tformer_cli.study.classify import Row, _judge

    def row(member, seed, acc):
        return Row("t", member, seed, acc, acc, 0.5, 1.0, 10, False, 1.0)

    rows = [row("gpt", s, a) for s, a in enumerate([0.80, 0.82, 0.81])]
    rows += [row("bag", s, a) for s, a in enumerate([0.50, 0.51, 0.49])]
    assert _judge("c", "t", "gpt", "bag", rows).outcome == "agrees"
    assert _judge("c", "t", "bag", "gpt", rows).outcome == "disagrees"
    assert _judge("c", "t", "gpt", "chance", rows).outcome == "agrees"
    assert _judge("c", "t", "gpt", "gpt", rows).outcome == "disagrees"  # no difference that matters
    assert _judge("c", "t", "gpt", "bag", rows[:2] + rows[3:5]).outcome == "undecided"  # 2 seeds


@pytest.mark.slow
def test_the_study_runs_end_to_end_at_a_tiny_budget(cli, tmp_path):
    r = cli("finetune-study", "--task", "order", "--seeds", "3", "--steps", "10", "--pretrain-steps", "10",
            "--out", tmp_path / "q1")
    assert r.code == 0, r
    assert "verdict: " in r.out and "claims, judged per task" in r.out
    data = json.loads((tmp_path / "q1" / "results.json").read_text())
    assert len(data["rows"]) == 15 and len(data["judged"]) == 5


# ---------------------------------------------------------------- output at 80 columns


def test_finetune_and_classify_fit_80_columns(monkeypatch, tmp_path):
    from conftest import terminal

    monkeypatch.chdir(tmp_path)  # a command to copy is never wrapped: keep the path short
    r = terminal(monkeypatch, "finetune", "--bag", "--data", "order", "--steps", "3", "--out", "ft")
    assert "test accuracy" in r.out and "confusion matrix" in r.out
    r = terminal(monkeypatch, "classify", "ft", "--text", "abxcdyefgh" * 8)
    assert "(cut)" in r.out  # longer than block_size, and said so


def test_the_study_tables_fit_80_columns():
    import io

    from rich.console import Console

    from tformer_cli.render.finetune import show_study
    from tformer_cli.study.classify import MEMBERS, Row, StudyResult, _judge, judge, notes

    rows = [Row(t, m.name, s, 0.6 + 0.01 * s + 0.05 * i, 0.6, 0.5, 0.9, 110_914, False, 3.0)
            for t in ("source", "order") for i, m in enumerate(MEMBERS) for s in range(3)]
    versus = [_judge(f"{m.name} vs gpt", t, m.name, "gpt", [r for r in rows if r.task == t])
              for t in ("source", "order") for m in MEMBERS if m.name != "gpt"]
    result = StudyResult("runs/q1", ["source", "order"], [0, 1, 2], {"pretrain_steps": 600, "finetune_steps": 300},
                         rows, judge(rows, ["source", "order"]), versus, {"clm": 1.7, "mlm": 2.6}, 100.0, notes(rows))
    buf = io.StringIO()
    show_study(Console(file=buf, width=80, force_terminal=True, color_system=None), result)
    text = buf.getvalue()
    assert "\u2026" not in text and "verdict: " in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_member_whose_held_out_accuracy_still_rose_late_is_unconverged():
    from tformer_cli.run.result import FinetuneResult
    from tformer_cli.study.job import classifier_columns
    from tformer_cli.study.results import MemberRow

    def still_learning(summary):
        row = MemberRow(member="gpt", seed=0, changed="", status="ok", run_dir="")
        classifier_columns(row, FinetuneResult.from_dict(summary))
        return row.still_learning

    scores = {"n": 10, "accuracy": 0.90, "accuracy_ci": [0.6, 0.98], "macro_f1": 0.9, "macro_f1_ci": [0.6, 1.0],
              "chance": 0.5, "confusion": [[5, 0], [1, 4]]}
    summary = {"steps_done": 300, "steps": 300, "interrupted": False, "test": scores,
               "extra": {"probe_step": 240, "probe_accuracy": 0.85}}
    assert still_learning(summary)
    summary["extra"]["probe_accuracy"] = 0.89
    assert not still_learning(summary)


def test_a_damaged_fine_tune_is_a_runtime_error(cli, tmp_path):
    assert cli("finetune", "--bag", "--data", "order", "--steps", "2", "--out", tmp_path / "ft").code == 0
    cfg = tmp_path / "ft" / "finetune.yaml"
    cfg.write_text(cfg.read_text().replace("steps: 2", "steps: many"))
    r = cli("classify", tmp_path / "ft", "--text", "abxy")
    assert r.code == 2 and "finetune.steps: expected an integer" in r.err
    cfg.write_text(cfg.read_text().replace("steps: many", "steps: 2"))
    (tmp_path / "ft" / "classifier.safetensors").write_bytes(b"not a checkpoint")
    r = cli("classify", tmp_path / "ft", "--text", "abxy")
    assert r.code == 1 and "is damaged" in r.err


def test_characters_the_runs_tokenizer_lacks_are_named(cli, tmp_path):
    run = train_tiny_run(tmp_path, steps=5, eval_interval=5)
    (tmp_path / "d.tsv").write_text("".join(f"snow \u2603 {i}\tx\nrain {i}\ty\n" for i in range(5)))
    r = cli("finetune", run, "--data", tmp_path / "d.tsv", "--out", tmp_path / "ft")
    assert r.code == 2, r
    assert "characters the tokenizer does not know: '\u2603'" in r.err and "--from-scratch" in r.err
    assert not (tmp_path / "ft").exists()


def test_runs_lists_a_fine_tune_and_lm_commands_point_it_to_classify(cli, tmp_path):
    ft = tmp_path / "ft"
    assert cli("finetune", "--from-scratch", *TINY_SETS, "--data", "order", "--steps", "5", "--out", ft).code == 0
    r = cli("runs", tmp_path, "--json")
    assert r.code == 0, r
    (entry,) = json.loads(r.out)
    assert entry["type"] == "fine-tune" and entry["steps"] == "5/5"
    assert entry["status"].startswith("finished, accuracy ") and "macro-F1" in entry["status"]
    for args in (("sample", ft, "--prompt", "a"), ("attention", ft, "--prompt", "ab")):
        r = cli(*args)
        assert r.code == 1 and "is a fine-tune (a classifier), not a language-model run" in r.err, r
        assert f"tformer classify {ft} --text TEXT" in r.err


def _tiny_q1(tmp_path, steps=6, pretrain_steps=4):
    """The shipped Q1 study file at a tiny budget (its pretrain: section included)."""
    import yaml

    from tformer_cli.study import files

    study = yaml.safe_load(files.find_study("finetune_q1").read_text())
    small = {"d_model": 16, "n_layer": 1, "n_head": 2, "block_size": 32}
    study["model"].update(small)
    study["task"]["data"] = "order"
    study["train"].update(steps=steps, ckpt_interval=steps, log_interval=2)
    for body in study["pretrain"].values():
        body["model"].update(small)
        body["train"].update(steps=pretrain_steps, eval_interval=pretrain_steps, log_interval=2, batch_size=8)
    path = tmp_path / "q1.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_the_q1_question_is_a_study_file_whose_bodies_the_runner_pretrains(cli, tmp_path):
    """study finetune_q1: pretrain/<name> trained first, the members fine-tune them (task.kind
    classify on the runner), the claim judged on held-out accuracy; resume keeps all of it."""
    from tformer_cli.study import files

    assert "finetune_q1" in [p.stem for p in files.builtin_studies()]
    out = tmp_path / "q1"
    r = cli("study", _tiny_q1(tmp_path), "--out", out, "--jobs", "1", "--json")
    assert r.code == 0, r
    data = json.loads(r.out)
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["encoder", "gpt"]
    assert len(data["rows"]) == 6 and all(0 <= row["accuracy"] <= 1 for row in data["rows"])
    assert data["task"] == "classify" and data["verdicts"][0]["metric"] == "accuracy"
    member = (out / "members" / "encoder-s0" / "finetune.yaml").read_text()
    assert str(out / "pretrain" / "encoder") in member  # the member fine-tuned the body pretrained here
    assert "verdict: " in cli("runs", tmp_path).out
    again = cli("ablate", "--resume", out, "--jobs", "1")
    assert again.code == 0 and (again.out + again.err).count("finished earlier, skipped") == 8


def test_a_q1_ladder_resizes_the_bodies_with_their_members(cli, tmp_path):
    """A rung's pretrain.NAME.section.key keys resize the pretrained bodies, each rung pretrains
    its own (OUT/rung-N/pretrain), and the claim on held-out accuracy gets a trend."""
    import yaml

    path = _tiny_q1(tmp_path, steps=4, pretrain_steps=2)
    study = yaml.safe_load(path.read_text())
    wide = {"model.d_model": 32, "pretrain.gpt.model.d_model": 32, "pretrain.encoder.model.d_model": 32,
            "seeds": 2}
    study["ladder"] = {"rule": "width x2 (a test)", "rungs": [{}, wide], "budget": {"cpu": "s", "gpu": "s"}}
    study["experiment"]["seeds"] = 2
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "q1-ladder"
    r = cli("study", path, "--ladder", "--out", out, "--jobs", "1")
    assert r.code == 0, r
    for rung, width in ((1, 16), (2, 32)):
        body = yaml.safe_load((out / f"rung-{rung}" / "pretrain" / "gpt" / "config.yaml").read_text())
        assert body["model"]["d_model"] == width
        member = yaml.safe_load((out / f"rung-{rung}" / "members" / "encoder-s0" / "finetune.yaml").read_text())
        assert member["model"]["d_model"] == width
    trends = json.loads((out / "scale.json").read_text())["trends"]
    assert trends[0]["metric"] == "accuracy" and [p["rung"] for p in trends[0]["points"]] == [1, 2]
    assert trends[0]["points"][0]["params"] < trends[0]["points"][1]["params"]


def test_a_member_that_does_not_fit_its_body_is_refused_before_anything_trains(cli, tmp_path):
    path = _tiny_q1(tmp_path)
    out = tmp_path / "q1"
    one_line(cli("study", path, "--set", "pretrain.gpt.model.d_model=32", "--out", out), 2,
             "member baseline: its model does not fit pretrain/gpt (d_model 16 against 32)")
    one_line(cli("study", path, "--set", "pretrain.gtp.model.n_layer=2", "--out", out), 2,
             "no pretrained model 'gtp' (known: ")
    one_line(cli("study", path, "--set", "pretrain.gpt.d_model=2", "--out", out), 2,
             "unknown key 'pretrain.gpt.d_model'")
    assert not out.exists()
    from tformer_cli.errors import ConfigError
    from tformer_cli.study import files

    with pytest.raises(ConfigError, match="expected pretrain.NAME.section.key"):  # a ladder rung's key
        files.study_from(files.Source(path, None, {"pretrain.gpt.d_model": 2}, None))
    # --device: where the bodies train too, unless a pretrain key names theirs
    spec = files.study_from(files.Source(path, None, {"train.device": "mps", "pretrain.gpt.train.device": "cpu"},
                                         None))
    assert (spec.pretrain["encoder"]["train"]["device"], spec.pretrain["gpt"]["train"]["device"]) == ("mps", "cpu")


def test_a_pretrain_section_is_checked_as_configs(tmp_path):
    from tformer_cli.errors import ConfigError
    from tformer_cli.study.files import pretrain_section

    with pytest.raises(ConfigError) as e:
        pretrain_section({"gpt": {"model": {"d_model": -1}}, "bad name!": {}, "cls": {"task": {"kind": "classify",
                                                                                                "data": "order"}}},
                         "q1.yaml")
    text = " ".join(e.value.problems)
    assert "pretrain.gpt: model.d_model" in text and "pretrain.bad name!" in text and "task.kind must be lm" in text
    assert pretrain_section(None, "x") == {}
