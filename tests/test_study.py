"""The study package beyond test_experiments.py: typed results round-trip through results.json,
--resume refuses every spec-changing flag of every experiment command, worker processes report
their failures and stop on request, and the experiment tables fit 80 columns and are never cut."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from conftest import FakeTrainer, fake_eval
from tformer_cli.core.config import from_dict
from tformer_cli.run.rundir import RunDir
from tformer_cli.study import runner
from tformer_cli.study.members import ablation_members
from tformer_cli.study.results import ExperimentResult, read_results
from tformer_cli.study.spec import Member, Spec

pytestmark = pytest.mark.usefixtures("one_thread")


def _ablation(tiny_config, tmp_path, seeds=(1, 2), **flags) -> ExperimentResult:
    base = from_dict(tiny_config)
    spec = Spec("ablate", base.to_dict(), ablation_members(base, **flags), list(seeds))
    return runner.run_experiment(spec, tmp_path / "exp", trainer=FakeTrainer(), evaluator=fake_eval)


# ---------------------------------------------------------------- typed results


def test_results_json_round_trips_through_the_dataclasses(tiny_config, tmp_path):
    r = _ablation(tiny_config, tmp_path, no_ffn=True, pos=["rope"])
    back = read_results(tmp_path / "exp")
    assert back == r
    assert back.to_dict() == r.to_dict()
    assert back.rows[0].extra == {"copy_acc": 0.5} and back.summary[1].extra == {"copy_acc": 0.5}
    assert back.summary[1].compared_loss == r.summary[1].compared_loss


def test_sweep_rows_keep_their_axes_through_json(tiny_config, tmp_path):
    from tformer_cli.study.members import grid_members

    base = from_dict(tiny_config)
    spec = Spec("sweep", base.to_dict(), grid_members(base, {"model.n_head": [1, 2]}), [1], axes=["model.n_head"])
    r = runner.run_experiment(spec, tmp_path / "exp", trainer=FakeTrainer(), evaluator=fake_eval)
    back = read_results(tmp_path / "exp")
    assert [x.axes for x in back.rows] == [{"model.n_head": 1}, {"model.n_head": 2}]
    assert back.rows[1].to_dict()["model.n_head"] == 2 and back == r


# ---------------------------------------------------------------- --resume refuses what changes the spec


def _experiment_commands():
    import typer

    from tformer_cli.cli.app import app
    from tformer_cli.cli.experiments import RESUME_OK

    group = typer.main.get_command(app)
    for name in ("ablate", "sweep", "sweep-heads", "sweep-dmodel"):
        cmd = group.commands[name]
        for p in cmd.params:
            if p.name not in RESUME_OK and p.name != "help":
                yield name, p


@pytest.mark.parametrize("command, param", list(_experiment_commands()),
                         ids=lambda x: x if isinstance(x, str) else x.name)
def test_resume_refuses_every_spec_changing_flag(cli, tmp_path, command, param):
    if param.param_type_name == "argument":
        args, shown = ["1"], param.name.upper()
    else:
        flag = [o for o in param.opts if o.startswith("--")][0]
        args, shown = ([flag] if param.is_flag else [flag, "1"]), flag
    r = cli(command, "--resume", tmp_path, *args)
    assert r.code == 2, r
    assert f"do not also give {shown}" in r.err


def test_resume_accepts_how_to_run(cli, tmp_path):
    r = cli("sweep", "--resume", tmp_path, "--json", "--parallel", "--isolate")
    assert r.code == 2 and "not an experiment directory" in r.err  # got past the refusal


# ---------------------------------------------------------------- worker processes


def test_a_worker_member_that_fails_carries_the_exact_message_and_hint(tiny_config, tmp_path):
    from tformer_cli.core.data import prepare
    from tformer_cli.errors import TformerError

    base = from_dict(tiny_config)
    bad = Member("bad", {"data.corpus": str(tmp_path / "nonexistent.txt")}, "a corpus that does not exist")
    spec = Spec("ablate", base.to_dict(), [bad], [5])
    with pytest.raises(TformerError) as want:
        prepare(spec.member_config(bad, 5).data)
    r = runner.run_experiment(spec, tmp_path / "exp", isolate=True, devices=["cpu"])
    assert r.execution == "in sequence, one process per member"
    row = r.rows[0]
    assert (row.status, row.error, row.hint) == ("failed", str(want.value), want.value.hint or "")
    assert r.summary[0].errors == [str(want.value)] and not r.interrupted


@pytest.mark.slow
def test_a_stop_request_reaches_the_worker_which_saves_and_reports(tiny_config, tmp_path):
    tiny_config["train"].update(steps=100_000, eval_interval=100_000, log_interval=1)
    base = from_dict(tiny_config)
    spec = Spec("ablate", base.to_dict(), [Member("baseline")], [5])
    run = RunDir(tmp_path / "exp" / "members" / "baseline-s5")
    r = runner.run_experiment(spec, tmp_path / "exp", isolate=True, devices=["cpu"],
                              should_stop=lambda: bool(run.metric_rows()))  # stop once training is under way
    assert r.interrupted and r.rows[0].status == "interrupted", r.rows[0]
    assert run.has_checkpoint() and 0 < run.read_summary().steps_done < 100_000


# ---------------------------------------------------------------- tables


def _render(r: ExperimentResult, terminal: bool) -> str:
    from tformer_cli.render.experiments import render

    buf = io.StringIO()
    con = Console(file=buf, width=80, force_terminal=terminal, color_system=None, highlight=False)
    render(con, r)
    return buf.getvalue()


NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*(?: ± \d+(?:[.,]\d+)*)?(?: ?(?:KiB|MiB|GiB|K|M|B)\b)?")


def test_ablate_tables_fit_80_columns_and_numbers_stay_whole(tiny_config, tmp_path):
    tiny_config["model"].update(n_layer=4, d_model=64, n_head=4)
    r = _ablation(tiny_config, tmp_path, no_causal_mask=True, no_ffn=True, pos=["rope"], activation=["swiglu"],
                  ffn_mult=[8.0])
    term, pipe = _render(r, terminal=True), _render(r, terminal=False)
    assert "\u2026" not in term and "\u2026" not in pipe
    assert not [line for line in term.splitlines() if len(line) > 80]
    assert max(len(line) for line in pipe.splitlines()) > 80  # piped: one whole table per line
    numbers = set(NUMBER.findall(pipe))
    assert "2.0150 ± 0.0071" in numbers  # the baseline's train loss over two seeds
    assert [n for n in numbers if n not in term] == []


def test_mlm_member_reads_na_and_a_failed_member_its_error(tiny_config, tmp_path):
    base = from_dict(tiny_config)
    members = [Member("baseline"), Member("mlm", {"train.objective": "mlm", "model.causal": False}, "mlm"),
               Member("no-ffn", {"model.ffn": False}, "model.ffn=false")]
    spec = Spec("ablate", base.to_dict(), members, [1])

    def evaluator(run_dir, cfg, prompt):
        from tformer_cli.study.results import Measurement

        return Measurement() if cfg.train.objective == "mlm" else fake_eval(run_dir, cfg, prompt)

    r = runner.run_experiment(spec, tmp_path / "exp", trainer=FakeTrainer(fail="no-ffn"), evaluator=evaluator)
    mlm = r.summary[1]
    assert mlm.objective == "mlm" and mlm.sample is None and mlm.val_loss_causal is None
    term, pipe = _render(r, True), _render(r, False)
    assert "n/a (MLM)" in term and "FAILED:" in term
    assert "n/a (MLM)" in pipe and "FAILED: the loss became NaN or infinite at step 3" in pipe


# ---------------------------------------------------------------- what the members computed in


def _claimed(tiny_config, tmp_path, trainer):
    base = from_dict(tiny_config)
    claim = {"statement": "Removing the FFN makes the model worse", "source": "a paper", "member": "no-ffn",
             "expect": "higher", "margin": 0.02}
    spec = Spec("ablate", base.to_dict(), ablation_members(base, no_ffn=True), [1, 2, 3], claims=[claim])
    return runner.run_experiment(spec, tmp_path / "exp", trainer=trainer, evaluator=fake_eval)


def test_rows_verdict_and_findings_say_what_the_members_computed_in(tiny_config, tmp_path):
    from tformer_cli.render.experiments import captions, verdict_line
    from tformer_cli.render.findings import write_findings

    r = _claimed(tiny_config, tmp_path, FakeTrainer())
    assert {row.arithmetic for row in r.rows} == {"float32 on cpu"} and r.arithmetic == "float32 on cpu"
    assert r.verdicts[0].arithmetic == "float32 on cpu"
    assert "over 3 seed(s) in float32 on cpu, no-ffn vs baseline" in verdict_line(r.verdicts[0])
    assert any("arithmetic: float32 on cpu" in c for c in captions(r))
    assert (tmp_path / "exp" / "results.csv").read_text().splitlines()[0].split(",").count("arithmetic") == 1
    assert read_results(tmp_path / "exp").verdicts[0].arithmetic == "float32 on cpu"
    report = write_findings(tmp_path, [r]).read_text()
    assert "| seeds | arithmetic |" in report and "| 3 | float32 on cpu |" in report


def test_a_verdict_over_members_of_different_arithmetic_names_both(tiny_config, tmp_path):
    """A member resumed on another machine, or a --set that reached one member: the verdict
    compares runs that did not compute alike, and says so."""
    from tformer_cli.render.experiments import verdict_line

    fake = FakeTrainer(arithmetic=lambda run: "bfloat16 autocast on cuda" if run.startswith("no-ffn") else
                       "float32 on cpu")
    r = _claimed(tiny_config, tmp_path, fake)
    both = "bfloat16 autocast on cuda + float32 on cpu"
    assert r.arithmetic == both and r.verdicts[0].arithmetic == both
    assert f"in {both}, no-ffn" in verdict_line(r.verdicts[0])
