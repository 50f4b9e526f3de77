"""The experiment engine (tformer_cli.study) and its commands: ablate, sweep, sweep-heads, study, runs."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from conftest import FakeTrainer, fake_eval
from tformer_cli.core.config import from_dict
from tformer_cli.study import matching, runner, stats
from tformer_cli.study import members as study_members
from tformer_cli.study.results import CSV_COLUMNS
from tformer_cli.study.spec import Member, Spec, load_spec, validate_members

STUDY_DIR = Path(__file__).resolve().parents[1] / "tformer_cli" / "experiments" / "studies"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


def _spec(tiny_config, members, seeds=(1, 2)):
    return Spec("ablate", from_dict(tiny_config).to_dict(), members, list(seeds))


# ---------------------------------------------------------------- engine


def test_engine_runs_every_member_and_seed_with_only_its_overrides(tiny_config, tmp_path):
    base = from_dict(tiny_config)
    members = study_members.ablation_members(base, no_causal_mask=True, no_ffn=True)
    fake = FakeTrainer()
    seen = {}

    def trainer(cfg, run_dir, **kw):
        seen[Path(run_dir).name] = cfg
        return fake(cfg, run_dir, **kw)

    r = runner.run_experiment(_spec(tiny_config, members), tmp_path / "exp", trainer=trainer, evaluator=fake_eval)
    assert [(x.member, x.seed) for x in r.rows] == [
        ("baseline", 1), ("baseline", 2), ("no-causal-mask", 1), ("no-causal-mask", 2), ("no-ffn", 1), ("no-ffn", 2)]
    base_d = base.to_dict()
    for name, cfg in seen.items():  # members differ from the base only in their overrides and the seed
        d = cfg.to_dict()
        diffs = {f"{s}.{k}" for s in d for k in d[s] if d[s][k] != base_d[s][k]}
        want = {"baseline": set(), "no-causal-mask": {"model.causal"}, "no-ffn": {"model.ffn"}}[name.rsplit("-s", 1)[0]]
        assert diffs - {"train.seed"} == want
        assert cfg.train.seed == int(name.rsplit("-s", 1)[1])
    by = {s.member: s for s in r.summary}
    assert by["no-ffn"].diff_vs_baseline == pytest.approx(0.5)
    assert by["no-ffn"].significant is None  # two seeds: too few to test (at least 3), whatever the gap
    assert by["no-ffn"].n_paired == 2
    assert by["no-causal-mask"].diff_vs_baseline == pytest.approx(3.0)
    assert by["baseline"].is_baseline and by["baseline"].p_value is None
    assert stats.LEAK_EXPLANATION in r.notes
    assert r.plot is None  # the engine does not draw: the command does (render.plots.comparison_plot)
    from tformer_cli.render.plots import comparison_plot

    plot = comparison_plot(r)
    assert plot.name == "comparison.png" and plot.stat().st_size > 0


def test_results_csv_and_json_schema(tiny_config, tmp_path):
    members = study_members.ablation_members(from_dict(tiny_config), no_ffn=True)
    r = runner.run_experiment(_spec(tiny_config, members), tmp_path / "exp", trainer=FakeTrainer(),
                             evaluator=fake_eval)
    with open(tmp_path / "exp" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0].keys())
    assert header[: len(CSV_COLUMNS)] == CSV_COLUMNS
    assert "copy_acc" in header and "d_k" in header  # TrainResult.extra and d_k become columns
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}
    assert float(rows[0]["val_loss"]) == pytest.approx(r.rows[0].val_loss)
    assert int(rows[2]["params_ffn"]) == 0 and int(rows[0]["params_ffn"]) > 0  # anatomy split per member
    data = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert set(data) >= {"kind", "rows", "summary", "members", "seeds", "significance_rule", "memory_note",
                         "execution", "notes", "plot", "interrupted"}
    assert data["rows"] == json.loads(json.dumps([x.to_dict() for x in r.rows]))
    assert json.loads((tmp_path / "exp" / "experiment.json").read_text())["seeds"] == [1, 2]


def test_failed_member_is_recorded_and_the_others_run(tiny_config, tmp_path):
    members = study_members.ablation_members(from_dict(tiny_config), no_causal_mask=True, no_ffn=True)
    fake = FakeTrainer(fail="no-causal-mask")
    r = runner.run_experiment(_spec(tiny_config, members, seeds=[1]), tmp_path / "exp", trainer=fake,
                             evaluator=fake_eval)
    status = {x.member: (x.status, x.error) for x in r.rows}
    assert status["no-causal-mask"] == ("failed", "the loss became NaN or infinite at step 3")
    assert status["no-ffn"][0] == "ok" and status["baseline"][0] == "ok"
    assert not r.interrupted


def test_resume_skips_finished_members_and_continues_the_unfinished(tiny_config, tmp_path):
    members = study_members.ablation_members(from_dict(tiny_config), no_ffn=True, pos=["rope"])
    spec = _spec(tiny_config, members, seeds=[1])
    stops = iter([False, False, True])  # stop before the third member: it never starts
    first = FakeTrainer(stop_after=1)  # the second member is interrupted half-way
    r1 = runner.run_experiment(spec, tmp_path / "exp", trainer=first, evaluator=fake_eval,
                              should_stop=lambda: next(stops, True))
    assert r1.interrupted
    assert [x.status for x in r1.rows] == ["ok", "interrupted", "not run"]
    second = FakeTrainer()
    r2 = runner.run_experiment(load_spec(tmp_path / "exp"), tmp_path / "exp", resume=True, trainer=second,
                              evaluator=fake_eval)
    assert second.calls == [("no-ffn-s1", 1, True), ("pos-rope-s1", 1, False)]  # baseline skipped
    assert [x.status for x in r2.rows] == ["ok", "ok", "ok"] and not r2.interrupted


def test_refuses_to_overwrite_an_experiment(tiny_config, tmp_path):
    from tformer_cli.errors import ConfigError

    spec = _spec(tiny_config, study_members.ablation_members(from_dict(tiny_config), no_ffn=True), seeds=[1])
    runner.run_experiment(spec, tmp_path / "exp", trainer=FakeTrainer(), evaluator=fake_eval)
    with pytest.raises(ConfigError, match="exists and is not empty"):
        runner.run_experiment(spec, tmp_path / "exp", trainer=FakeTrainer(), evaluator=fake_eval)


def test_ablating_the_baselines_own_value_is_refused(tiny_config):
    from tformer_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline's value already"):
        study_members.ablation_members(from_dict(tiny_config), pos=["learned"])


def test_combine_makes_one_member_with_every_flag(tiny_config):
    members = study_members.ablation_members(from_dict(tiny_config), no_ffn=True, activation=["relu"], combine=True)
    assert [m.name for m in members] == ["baseline", "no-ffn+act-relu"]
    assert members[1].overrides == {"model.ffn": False, "model.activation": "relu"}


def test_grid_is_the_full_product_and_invalid_members_are_refused_before_training(tiny_config, tmp_path):
    from tformer_cli.errors import ConfigError

    base = from_dict(tiny_config)
    grid = study_members.parse_grid(["model.n_head=1,2,4", "model.d_model=16,32"])
    members = study_members.grid_members(base, grid)
    assert len(members) == 6 and members[0].axes == {"model.n_head": 1, "model.d_model": 16}
    bad = Spec("sweep", base.to_dict(), study_members.grid_members(base, {"model.n_head": [2, 3]}), [1])
    fake = FakeTrainer()
    with pytest.raises(ConfigError, match="member n_head-3: model.n_head: d_model=32 is not divisible"):
        runner.run_experiment(bad, tmp_path / "exp", trainer=fake, evaluator=fake_eval)
    assert fake.calls == [] and not (tmp_path / "exp").exists()


def test_paired_statistics_on_per_seed_differences():
    # differences 0.10, 0.12, 0.08, 0.11: mean 0.1025, sd 0.01708, t(3) 97.5% = 3.1824
    p = stats.paired([0.10, 0.12, 0.08, 0.11])
    assert p.n == 4 and p.delta == pytest.approx(0.1025)
    half = 3.182446 * 0.0170783 / 2
    assert (p.ci_low, p.ci_high) == pytest.approx((0.1025 - half, 0.1025 + half), abs=1e-5)
    # t = 12.003 with 3 degrees of freedom; Student's t with 3 df has the closed-form CDF
    # 1/2 + (u / (1 + u^2) + atan(u)) / pi, u = t / sqrt(3): two-sided p = 0.001244
    assert p.p_value == pytest.approx(0.001244, rel=0.01)
    assert p.significant is True and p.equivalent is False


def test_pairing_beats_an_unpaired_test_when_seeds_share_their_noise():
    """Seed effects shared by both members (0.3 apart) drown an unpaired test; the paired one sees the +0.01."""
    base = [1.50, 1.80, 1.20, 1.65]
    member = [b + d for b, d in zip(base, (0.010, 0.012, 0.009, 0.011))]
    from scipy import stats as st

    assert st.ttest_ind(member, base, equal_var=False).pvalue > 0.9
    p = stats.paired([m - b for m, b in zip(member, base)])
    assert p.significant is True and p.p_value < 1e-3


def test_fewer_than_three_seeds_are_never_marked():
    for diffs in ([0.5], [0.5, 0.52]):
        p = stats.paired(diffs)
        assert p.significant is None and p.equivalent is None


def test_no_difference_is_claimed_only_within_the_margin():
    p = stats.paired([0.001, -0.002, 0.0015, 0.0, -0.001], margin=0.02)
    assert p.equivalent is True and p.significant is False
    wide = stats.paired([0.05, -0.06, 0.04, -0.05, 0.06], margin=0.02)  # mean ~0 but too noisy to say "equal"
    assert wide.equivalent is False and wide.significant is False


# ---------------------------------------------------------------- parameter matching


@pytest.mark.parametrize("flags, by", [
    ({"no_ffn": True}, "n_layer"),
    ({"no_ffn": True}, "d_model"),
    ({"no_ffn": True}, "d_ff"),  # no FFN to resize: falls back to n_layer, and says so
    ({"ffn_mult": [8.0]}, "d_ff"),
    ({"activation": ["swiglu"]}, "d_model"),
])
def test_match_params_within_5_percent(tiny_config, flags, by):
    tiny_config["model"].update(n_layer=4, d_model=64, n_head=4)
    base = from_dict(tiny_config)
    spec = Spec("ablate", base.to_dict(), study_members.ablation_members(base, **flags), [1])
    matching.match_params(spec, by, vocab_size=65)
    target = matching.params(base, 65)
    m = spec.members[1]
    n = matching.params(base.replace(m.overrides), 65)
    assert abs(n - target) <= 0.05 * target, m.resized
    assert m.resized  # the table says what was resized (or that nothing needed to be)
    if flags.get("activation"):  # swiglu's default d_ff already keeps the count by the 2/3 rule
        assert m.resized.startswith("none needed")
    if flags.get("no_ffn") and by == "d_ff":
        assert "n_layer instead of d_ff" in m.resized


def test_swiglu_keeps_params_by_the_two_thirds_rule(tiny_config):
    tiny_config["model"].update(d_model=96, n_head=4)
    base = from_dict(tiny_config)
    swiglu = base.replace({"model.activation": "swiglu"})
    a, b = matching.params(base, 65), matching.params(swiglu, 65)
    assert abs(a - b) <= 0.01 * a


# ---------------------------------------------------------------- commands


def test_sweep_heads_refuses_bad_head_counts_before_training(cli, tiny_yaml, tmp_path):
    r = cli("sweep-heads", tiny_yaml, "--heads", "1,3,4,5", "--d-model", "64", "--out", tmp_path / "exp")
    assert r.code == 2
    valid = "valid head counts for d_model=64: 1, 2, 4, 8, 16, 32, 64"
    assert f"model.n_head: d_model=64 is not divisible by n_head=3; {valid}" in r.err
    assert f"model.n_head: d_model=64 is not divisible by n_head=5; {valid}" in r.err
    assert "n_head=4;" not in r.err
    assert not (tmp_path / "exp").exists()


def test_sweep_dmodel_refuses_widths_the_head_count_does_not_divide(cli, tiny_yaml, tmp_path):
    r = cli("sweep-dmodel", tiny_yaml, "--d-model", "30,32", "--heads", "4", "--out", tmp_path / "exp")
    assert r.code == 2 and "d_model=30 is not divisible by n_head=4" in r.err
    assert not (tmp_path / "exp").exists()


def test_resume_refuses_new_flags(cli, tmp_path):
    r = cli("ablate", "--resume", tmp_path, "--no-ffn")
    assert r.code == 2 and "do not also give --no-ffn" in r.err


@pytest.mark.parametrize("path", sorted(STUDY_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_study_files_build_valid_members(path):
    """Every study file builds its members and validates them (nothing trains)."""
    from tformer_cli.study import files

    raw = yaml.safe_load(path.read_text())
    if "experiment" not in raw:
        pytest.skip("a preset, not a study")
    cfg, exp = files.experiment_config(path, None, {})
    if exp["kind"] == "ablate":
        spec = files.ablate_spec(cfg, {k: v for k, v in exp.items() if k != "match"})  # match needs the corpus
    else:
        spec = files.sweep_spec(cfg, files.file_grid(exp), exp.get("seeds"))
    validate_members(spec)
    assert len(spec.members) >= 2
    # A verdict must not depend on the machine: every member computes in full float32, on a GPU
    # too (train.dtype auto would be bfloat16 autocast there, and train.tf32 TF32 matmuls).
    for m in spec.members:
        t = spec.member_config(m, 1).train
        assert t.dtype == "float32" and (t.tf32 is False or t.device == "cpu"), m.name


@pytest.mark.slow
def test_sweep_command_end_to_end_with_pivot_and_runs_listing(cli, tiny_yaml, tmp_path):
    out = tmp_path / "runs" / "exp"
    r = cli("sweep", tiny_yaml, "--grid", "model.n_head=1,2", "--grid", "model.d_model=16", "--steps", "4",
            "--set", "train.eval_interval=4", "--out", out)
    assert r.code == 0, r
    assert "n_head \\ model.d_model" in r.out.replace("model.n_head", "n_head")  # the pivot table
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(row["model.n_head"], row["model.d_model"], row["d_k"]) for row in rows] == [
        ("1", "16", "16"), ("2", "16", "8")]
    assert all(row["status"] == "ok" and row["sample"].startswith("The ") for row in rows)
    assert all(float(row["elapsed_s"]) > 0 and float(row["measure_s"]) > 0 for row in rows)
    for row in rows:  # train()'s wall time, split: set-up, steps, evaluation, checkpoints
        parts = [float(row[k]) for k in ("setup_s", "steps_s", "eval_s", "checkpoint_s")]
        assert min(parts) >= 0 and parts[1] > 0 and sum(parts) == pytest.approx(float(row["elapsed_s"]), abs=1e-6)
    flat = " ".join(r.out.split())  # the line may wrap
    assert re.search(r"wall time \d+s \(members' set-up [\d.]+s, steps [\d.]+s, evaluation [\d.]+s, "
                     r"checkpoints [\d.]+s, measuring [\d.]+s, summed; outside them [\d.]+s\)", flat), r.out[-400:]
    assert (out / "comparison.png").stat().st_size > 0
    assert (out / "members" / "n_head-2_d_model-16-s1337" / "summary.json").exists()
    listing = cli("runs", tmp_path / "runs", "--json")
    assert listing.code == 0
    entries = json.loads(listing.out)
    assert [(e["type"], e["kind"], e["members"], e["status"]) for e in entries] == [
        ("experiment", "sweep", 2, "finished")]


def test_same_seeds_give_the_same_results(tiny_config, tmp_path):
    tiny_config["train"]["steps"] = 6
    members = [Member("baseline")]
    runs = [runner.run_experiment(_spec(tiny_config, members, seeds=[3]), tmp_path / f"e{i}") for i in range(2)]
    a, b = (r.rows[0] for r in runs)
    assert a.val_loss == b.val_loss and a.val_loss_causal == b.val_loss_causal
    assert a.sample == b.sample


@pytest.mark.slow
def test_causal_mask_leak_shows_in_both_losses(tiny_config, tmp_path):
    """Without the mask the teacher-forced loss falls below the baseline's while the
    causal-consistent loss rises above it (rope makes "attend to the next token" quick to learn)."""
    tiny_config["model"]["pos_encoding"] = "rope"
    tiny_config["train"].update(steps=250, lr=0.01, batch_size=8, eval_interval=125)
    base = from_dict(tiny_config)
    spec = Spec("ablate", base.to_dict(), study_members.ablation_members(base, no_causal_mask=True), [1337])
    r = runner.run_experiment(spec, tmp_path / "exp")
    by = {s.member: s for s in r.summary}
    b, leak = by["baseline"], by["no-causal-mask"]
    assert b.val_loss_causal == pytest.approx(b.val_loss, abs=1e-3)  # causal, same windows: equal
    assert leak.val_loss < b.val_loss - 0.5  # teacher-forced: copies the future
    assert leak.val_loss_causal > b.val_loss_causal + 0.5  # causal-consistent: cannot predict
    assert stats.LEAK_EXPLANATION in r.notes


@pytest.mark.slow
def test_process_per_member_on_cpu_with_a_fake_device_list(tiny_config, tmp_path):
    """The --parallel path: one worker process per member, two devices at a time."""
    tiny_config["train"].update(steps=4, eval_interval=4)
    base = from_dict(tiny_config)
    members = [Member("baseline"), Member("bad", {"data.corpus": "/nonexistent.txt"},
                                                      "a corpus that does not exist")]
    spec = Spec("ablate", base.to_dict(), members, [5])
    r = runner.run_experiment(spec, tmp_path / "exp", parallel=True, devices=["cpu", "cpu"])
    assert r.execution.startswith("in parallel, one process per device")
    status = {x.member: x for x in r.rows}
    assert status["baseline"].status == "ok" and status["baseline"].sample.startswith("The ")
    assert status["bad"].status == "failed" and "nonexistent" in status["bad"].error
    inline = runner.run_experiment(Spec("ablate", base.to_dict(), members[:1], [5]), tmp_path / "inline")
    assert status["baseline"].val_loss == inline.rows[0].val_loss  # same result either way


@pytest.mark.slow
def test_lstm_and_mlm_members_run_in_a_sweep(cli, tiny_yaml, tmp_path):
    """The recurrent and the masked-LM baselines are ordinary experiment members (issue 7)."""
    out = tmp_path / "arch"
    r = cli("sweep", tiny_yaml, "--grid", "model.arch=gpt,lstm", "--steps", "4",
            "--set", "train.eval_interval=4", "--out", out)
    assert r.code == 0, r
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(row["model.arch"], row["status"]) for row in rows] == [("gpt", "ok"), ("lstm", "ok")]
    assert float(rows[1]["val_loss"]) < math.log(200)
    out = tmp_path / "objective"
    r = cli("sweep", tiny_yaml, "--grid", "train.objective=clm,mlm", "--steps", "4",
            "--set", "train.eval_interval=4", "--out", out)
    assert r.code == 0, r
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(row["train.objective"], row["status"]) for row in rows] == [("clm", "ok"), ("mlm", "ok")]
    assert rows[1]["sample"] == "" and rows[1]["objective"] == "mlm"  # no sample: data, not a label
    assert "n/a (MLM)" in r.out  # the table says why


@pytest.mark.slow
def test_a_builtin_study_runs_by_name(cli, tmp_path):
    out = tmp_path / "mask"
    r = cli("study", "ablate_causal_mask", "--steps", "3", "--set", "train.eval_interval=3",
            "--set", "train.log_interval=3", "--seeds", "1", "--jobs", "1", "--out", out)
    assert r.code == 0, r
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [row["member"] for row in rows] == ["baseline", "no-causal-mask"]
    listing = cli("presets")
    assert "ablate_causal_mask" in listing.out and "sweep_heads" in listing.out


def test_the_plots_time_joins_the_experiments_wall_time(monkeypatch, tmp_path):
    """cli/experiments.py draw(): the loss curves and the comparison plot come after the runner's
    clock stops; their time is added to the wall time that results.json and the last line report."""
    import time
    from types import SimpleNamespace

    import tformer_cli.render.plots as plots
    import tformer_cli.study.results as results
    from tformer_cli.cli.experiments import draw

    def slow_plot(result):
        time.sleep(0.2)
        return tmp_path / "comparison.png"

    monkeypatch.setattr(plots, "comparison_plot", slow_plot)
    written = []
    monkeypatch.setattr(results, "write_results", lambda r: written.append(r.elapsed_s))
    r = SimpleNamespace(rows=[], plot=None, notes=[], elapsed_s=5.0)
    draw(r)
    assert r.plot == str(tmp_path / "comparison.png") and 5.2 <= r.elapsed_s < 6 and written == [r.elapsed_s]
