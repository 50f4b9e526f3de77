"""Evidence, not demos: convergence marks, verdicts of a study's claim, one baseline per objective,
and both validation losses on identical windows (one pass where the model cannot see the future)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tformer_cli.core.config import from_dict
from tformer_cli.errors import ConfigError
from tformer_cli.study import claim as claimmod
from tformer_cli.study import convergence, stats, verdict
from tformer_cli.study.members import ablation_members, grid_members
from tformer_cli.study.results import MemberRow
from tformer_cli.study.spec import Spec

# ---------------------------------------------------------------- convergence


def test_last_fifth_drop_reads_the_val_curve():
    curve = [(100, 3.0), (200, 2.5), (400, 2.20), (500, 2.10)]
    assert convergence.last_fifth_drop(curve, 500) == pytest.approx(0.10)  # from step 400 (= 80%) to 500
    assert convergence.still_learning(0.10) is True
    assert convergence.still_learning(0.005) is False
    assert convergence.last_fifth_drop([(500, 2.0)], 500) is None  # no evaluation before the last fifth
    assert convergence.still_learning(None) is None


@pytest.mark.parametrize("text, bad", [
    ("the the the the the the the the", True),
    (" " * 40, True),
    ("eeeeeeeeeeeeeeeeeeee", True),
    ("ROMEO: What say you, my lord? I pray thee", False),
    ("def parse(self, text):\n    return None", False),
])
def test_degenerate_samples(text, bad):
    assert convergence.degenerate(text) is bad


# ---------------------------------------------------------------- verdicts


def _spec(tiny_config, claims, seeds=(1, 2, 3)) -> Spec:
    base = from_dict(tiny_config)
    return Spec("ablate", base.to_dict(), ablation_members(base, no_ffn=True), list(seeds), claims=claims)


def _rows(base_losses, member_losses, still_learning=False):
    rows = []
    for seed, (b, m) in enumerate(zip(base_losses, member_losses), start=1):
        rows.append(MemberRow(member="baseline", seed=seed, changed="baseline", status="ok", run_dir="",
                              val_loss=b, val_loss_causal=b, still_learning=False))
        rows.append(MemberRow(member="no-ffn", seed=seed, changed="model.ffn=false", status="ok", run_dir="",
                              val_loss=m, val_loss_causal=m, still_learning=still_learning,
                              val_drop_last_fifth=0.2 if still_learning else 0.0))
    return rows


CLAIM = {"statement": "Removing the FFN makes the model worse", "source": "a paper", "member": "no-ffn",
         "expect": "higher", "margin": 0.02}


def test_a_clear_difference_agrees(tiny_config):
    spec = _spec(tiny_config, [CLAIM])
    v = verdict.verdicts(spec, _rows([1.50, 1.80, 1.20], [1.60, 1.91, 1.29]))[0]
    assert v.outcome == "agrees" and v.n == 3 and v.delta == pytest.approx(0.10, abs=1e-9)
    assert v.ci_low > 0


def test_the_other_direction_disagrees(tiny_config):
    v = verdict.verdicts(_spec(tiny_config, [CLAIM]), _rows([1.50, 1.80, 1.20], [1.40, 1.69, 1.11]))[0]
    assert v.outcome == "disagrees"


def test_no_difference_within_the_margin_disagrees_with_a_claimed_difference(tiny_config):
    v = verdict.verdicts(_spec(tiny_config, [CLAIM]), _rows([1.50, 1.80, 1.20], [1.501, 1.799, 1.2005]))[0]
    assert v.outcome == "disagrees" and "within" in v.reason


def test_an_equality_claim_agrees_only_inside_the_margin(tiny_config):
    same = dict(CLAIM, expect="equal")
    rows = _rows([1.50, 1.80, 1.20], [1.501, 1.799, 1.2005])
    assert verdict.verdicts(_spec(tiny_config, [same]), rows)[0].outcome == "agrees"
    rows = _rows([1.50, 1.80, 1.20], [1.60, 1.91, 1.29])
    assert verdict.verdicts(_spec(tiny_config, [same]), rows)[0].outcome == "disagrees"


def test_noise_leaves_it_undecided_with_a_budget_that_would_decide(tiny_config):
    v = verdict.verdicts(_spec(tiny_config, [CLAIM]), _rows([1.50, 1.80, 1.20], [1.60, 1.75, 1.25]))[0]
    assert v.outcome == "undecided" and v.suggestion.startswith("--seeds ")


def test_two_seeds_are_undecided(tiny_config):
    v = verdict.verdicts(_spec(tiny_config, [CLAIM], seeds=(1, 2)), _rows([1.5, 1.8], [1.9, 2.2]))[0]
    assert v.outcome == "undecided" and "at least 3" in v.reason and v.suggestion == "--seeds 4"


def test_the_one_verdict_rule():
    """verdict.rule: paired differences, an expectation and a margin in; outcome, reason, suggestion
    and what the interval shows (for callers that word it themselves) out."""
    rule = verdict.rule
    few = rule(stats.paired([0.1, 0.2]), "higher", 0.02)
    assert (few.outcome, few.finding, few.suggestion) == ("undecided", verdict.TOO_FEW, "--seeds 4")
    assert few.reason == "2 paired seed(s): at least 3 are needed to test a difference"
    assert rule(stats.paired([]), "equal", 0.02).suggestion == "--seeds 3"
    assert rule(stats.paired([0.100, 0.101]), "higher", 0.02, min_seeds=2).outcome == "agrees"

    up = stats.paired([0.10, 0.11, 0.09])
    r = rule(up, "higher", 0.02)
    assert (r.outcome, r.finding, r.suggestion) == ("agrees", verdict.ABOVE, "")
    assert r.reason == "the 95% interval is higher than the baseline's throughout"
    r = rule(up, "lower", 0.02)
    assert (r.outcome, r.reason) == ("disagrees", "the 95% interval is on the other side of zero")
    assert rule(stats.paired([-0.10, -0.11, -0.09]), "higher", 0.02).outcome == "disagrees"
    assert rule(stats.paired([-0.10, -0.11, -0.09]), "higher", 0.02).finding == verdict.BELOW
    assert rule(up, "equal", 0.02).reason == "the 95% interval lies beyond ±0.02"

    flat = stats.paired([0.001, -0.001, 0.0005])
    r = rule(flat, "higher", 0.02)
    assert (r.outcome, r.finding) == ("disagrees", verdict.WITHIN)
    assert r.reason == "no difference that matters: the interval lies within ±0.02"
    r = rule(flat, "equal", 0.02)
    assert (r.outcome, r.reason) == ("agrees", "the 95% interval lies within ±0.02")

    noisy = stats.paired([0.03, -0.01, 0.02, 0.0])
    r = rule(noisy, "higher", 0.02)
    assert (r.outcome, r.finding, r.suggestion) == ("undecided", verdict.STRADDLES, "--seeds 10")
    assert r.reason == "the 95% interval [-0.0191, +0.0391] straddles the decision boundaries (margin ±0.02)"
    assert "[-0.02, +0.04]" in rule(noisy, "equal", 0.02, fmt=lambda x: f"{x:+.2f}").reason
    with pytest.raises(ValueError):
        rule(noisy, "bigger", 0.02)


def test_no_winner_among_unconverged_members(tiny_config):
    v = verdict.verdicts(_spec(tiny_config, [CLAIM]),
                         _rows([1.50, 1.80, 1.20], [1.60, 1.91, 1.29], still_learning=True))[0]
    assert v.outcome == "undecided" and "still learning" in v.reason
    assert v.suggestion == f"--steps {2 * from_dict(tiny_config).train.steps}"


def test_a_run_whose_val_loss_rose_while_its_train_loss_fell_is_overfit():
    train = [(100, 2.5), (200, 2.0), (300, 1.6), (400, 1.3)]
    val = [(100, 2.6), (200, 2.2), (300, 2.25), (400, 2.30)]
    assert convergence.overfit_rise(val, train) == pytest.approx(0.10)  # from its lowest, 2.2 at step 200
    assert convergence.overfit(0.10) is True and convergence.overfit(0.005) is False
    assert convergence.overfit_rise([(100, 2.6), (400, 2.2)], train) == 0.0  # the final loss is the lowest
    flat = [(s, 2.0) for s, _ in train]  # the training loss stopped falling too: noise, not memorising
    assert convergence.overfit_rise(val, flat) == 0.0
    assert convergence.overfit_rise(val[:1], train) is None and convergence.overfit(None) is None


def test_a_verdict_names_the_overfit_runs_it_compared(tiny_config):
    rows = _rows([1.50, 1.80, 1.20], [1.60, 1.91, 1.29])
    for r in rows[1::2][:2]:  # two no-ffn seeds
        r.overfit, r.val_rise_from_best = True, 0.05
    v = verdict.verdicts(_spec(tiny_config, [CLAIM]), rows)[0]
    assert v.outcome == "agrees" and "overfit: no-ffn (2 seed(s))" in v.reason and "0.050 nats" in v.reason
    clean = verdict.verdicts(_spec(tiny_config, [CLAIM]), _rows([1.50, 1.80, 1.20], [1.60, 1.91, 1.29]))[0]
    assert "overfit" not in clean.reason


def test_a_claim_may_name_the_member_it_is_compared_with(tiny_config):
    """claim.baseline: the reference member (a fine-tune's encoder against the GPT, not against the
    study's baseline); a name that is no member, or the claim's own, is refused."""
    base = from_dict(tiny_config)
    members = ablation_members(base, no_ffn=True, no_causal_mask=True)
    spec = Spec("ablate", base.to_dict(), members, [1, 2, 3])
    rows = _rows([1.50, 1.80, 1.20], [1.60, 1.91, 1.29])
    rows += [MemberRow(member="no-causal-mask", seed=s, changed="", status="ok", run_dir="", val_loss=v,
                       val_loss_causal=v, still_learning=False) for s, v in zip((1, 2, 3), (1.70, 2.01, 1.39))]
    claim = claimmod.parse_claims(dict(CLAIM, member="no-causal-mask", baseline="no-ffn"))[0]
    v = verdict.decide(claim, rows, spec)
    assert v.baseline == "no-ffn" and v.delta == pytest.approx(0.10, abs=1e-9) and v.outcome == "agrees"
    assert verdict.decide(claimmod.parse_claims(dict(CLAIM, member="no-causal-mask"))[0], rows, spec).baseline \
        == "baseline"
    for bad, needle in (("nobody", "claim.baseline: 'nobody' is not a member"), ("no-ffn", "the claim.s own member")):
        with pytest.raises(ConfigError, match=needle):
            verdict.check_members(claimmod.parse_claims(dict(CLAIM, baseline=bad)), spec)


def test_claims_are_validated(tiny_config):
    with pytest.raises(ConfigError) as e:
        claimmod.parse_claims({"statement": "x", "member": "m", "expect": "bigger", "margin": -1, "colour": 1})
    text = str(e.value.problems)
    assert "claim.source: missing" in text and "expect" in text and "margin" in text and "colour" in text
    claims = claimmod.parse_claims(CLAIM)
    with pytest.raises(ConfigError, match="is not a member"):
        verdict.check_members([claimmod.Claim(**dict(CLAIM, member="no-such"))], _spec(tiny_config, [CLAIM]))
    assert claims[0].member == "no-ffn"


def test_every_shipped_study_with_a_claim_names_one_of_its_members():
    from tformer_cli.core.config import PRESET_DIR
    from tformer_cli.study.files import Source, study_from

    for path in sorted((PRESET_DIR / "studies").glob("*.yaml")):
        spec = study_from(Source(path, None, {}))  # check_members raises on a claim about no member
        for c in claimmod.parse_claims(spec.claims):
            assert c.member in [m.name for m in spec.members]


# ---------------------------------------------------------------- one baseline per objective


def test_a_mixed_sweep_compares_mlm_with_mlm(tiny_config):
    base = from_dict(tiny_config)
    members = grid_members(base, {"train.objective": ["clm", "mlm"], "model.pos_encoding": ["none", "learned"]})
    spec = Spec("sweep", base.to_dict(), members, [1], axes=["train.objective", "model.pos_encoding"])
    ref = stats.baselines(spec)
    assert ref["objective-clm_pos_encoding-none"] == "objective-clm_pos_encoding-learned"
    assert ref["objective-mlm_pos_encoding-none"] == "objective-mlm_pos_encoding-learned"
    assert ref["objective-mlm_pos_encoding-learned"] == "objective-mlm_pos_encoding-learned"
    assert stats.notes(spec) == []  # only MLM members lost the mask: they are bidirectional by definition


def test_the_leak_note_needs_a_causal_lm_without_its_mask(tiny_config):
    base = from_dict(tiny_config)
    spec = Spec("ablate", base.to_dict(), ablation_members(base, no_causal_mask=True), [1])
    assert stats.notes(spec) == [stats.LEAK_EXPLANATION]


# ---------------------------------------------------------------- identical windows, one pass


def _model_and_batcher(tiny_config, causal: bool, arch: str = "gpt"):
    from tformer_cli.core.data import prepare
    from tformer_cli.core.model import build_model
    from tformer_cli.train.batches import Batcher
    from tformer_cli.train.distributed import DistInfo

    cfg = from_dict(tiny_config).replace({"model.causal": causal, "model.arch": arch})
    ds = prepare(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, ds.vocab_size).eval()
    return model, Batcher(ds, cfg, torch.device("cpu"), DistInfo(), ds.vocab_size), cfg


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_a_model_that_cannot_see_the_future_gets_one_pass_and_equal_losses(tiny_config, arch):
    from tformer_cli.train.evaluate import evaluate, window_losses

    model, batcher, cfg = _model_and_batcher(tiny_config, causal=True, arch=arch)
    n = cfg.train.batch_size * cfg.train.eval_iters
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    tf, cc = window_losses(model, batcher, n, torch.device("cpu"), torch.float32, sees_future=False)
    hook.remove()
    assert tf == cc
    # the same windows as the training loop's evaluation: the same number
    assert tf == pytest.approx(evaluate(model, batcher, cfg.train.eval_iters, torch.device("cpu"), torch.float32),
                               abs=1e-6)
    T = cfg.model.block_size
    assert len(calls) == cfg.train.eval_iters + T  # one pass per batch, and one check of T prefix passes


def test_a_model_that_sees_the_future_is_scored_prefix_by_prefix(tiny_config):
    from tformer_cli.train.evaluate import window_losses

    model, batcher, cfg = _model_and_batcher(tiny_config, causal=False)
    with torch.no_grad():  # make the leak large enough to see
        for p in model.parameters():
            p.mul_(20)
    tf, cc = window_losses(model, batcher, 4, torch.device("cpu"), torch.float32, sees_future=True)
    assert tf != pytest.approx(cc, abs=1e-3)


def test_a_leaking_model_declared_causal_is_caught(tiny_config):
    from tformer_cli.train.evaluate import window_losses

    model, batcher, cfg = _model_and_batcher(tiny_config, causal=False)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)
    with pytest.raises(RuntimeError, match="should not see the future"):
        window_losses(model, batcher, 4, torch.device("cpu"), torch.float32, sees_future=False)


def test_the_passes_over_many_lengths_keep_to_attention_kernels_without_a_build_per_shape(tiny_config, monkeypatch):
    """window_losses runs inside device.varying_shape_attention (on CUDA: no cuDNN attention, which
    builds a graph per new shape); off CUDA that is a no-op."""
    import contextlib

    from tformer_cli.core import device as dev
    from tformer_cli.train.evaluate import window_losses

    assert isinstance(dev.varying_shape_attention(torch.device("cpu")), contextlib.nullcontext)
    entered = []

    @contextlib.contextmanager
    def spy(device):
        entered.append(device.type)
        yield

    monkeypatch.setattr(dev, "varying_shape_attention", spy)
    model, batcher, cfg = _model_and_batcher(tiny_config, causal=True)
    window_losses(model, batcher, 4, torch.device("cpu"), torch.float32, sees_future=False)
    assert entered == ["cpu"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_window_losses_without_cudnn_attention_agree_with_the_check(tiny_config):
    from tformer_cli.core.data import prepare
    from tformer_cli.core.model import build_model
    from tformer_cli.train.batches import Batcher
    from tformer_cli.train.distributed import DistInfo
    from tformer_cli.train.evaluate import window_losses

    cfg = from_dict(tiny_config).replace({"train.device": "cuda"})
    ds = prepare(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, ds.vocab_size).cuda().eval()
    batcher = Batcher(ds, cfg, torch.device("cuda"), DistInfo(), ds.vocab_size)
    tf, cc = window_losses(model, batcher, 8, torch.device("cuda"), torch.bfloat16, sees_future=False)
    assert tf == cc and tf > 0


# ---------------------------------------------------------------- members side by side on the CPU


@pytest.mark.slow
def test_cpu_members_run_side_by_side_with_the_cores_split(tiny_config, tmp_path, monkeypatch):
    import json
    import os

    from tformer_cli.study import runner
    from tformer_cli.study.spec import Member

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    tiny_config["train"].update(steps=6, eval_interval=3)
    base = from_dict(tiny_config)
    spec = Spec("ablate", base.to_dict(), [Member("baseline"), Member("no-ffn", {"model.ffn": False}, "ffn")],
                [1])
    r = runner.run_experiment(spec, tmp_path / "exp", devices=["cpu"], jobs=2)
    assert r.execution.startswith("2 at a time on the CPU, one process each with 2 thread(s)")
    assert [x.status for x in r.rows] == ["ok", "ok"]
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "exp" / "workers").glob("*.job.json"))]
    assert [j["threads"] for j in jobs] == [2, 2]


# ---------------------------------------------------------------- --tune lr


def test_tuning_compares_each_member_at_its_best_learning_rate(tiny_config, tmp_path):
    import json
    import math
    from pathlib import Path

    from tformer_cli.run.result import TrainResult
    from tformer_cli.study import runner, tune
    from tformer_cli.study.results import Measurement

    base_lr = from_dict(tiny_config).train.lr

    def trainer(cfg, run_dir, **kw):  # the baseline is best at 1x the rate, no-ffn at 2x
        best = base_lr * (2.0 if not cfg.model.ffn else 1.0)
        loss = 2.0 + 0.3 * (not cfg.model.ffn) + abs(math.log2(cfg.train.lr / best)) * 0.2 + 0.001 * cfg.train.seed
        run_dir = Path(run_dir)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "val_loss": loss}) + "\n")
        s = {"run_dir": str(run_dir), "steps_done": 10, "steps": 10, "interrupted": False, "val_loss": loss,
             "vocab_size": 65, "params": 1}
        (run_dir / "summary.json").write_text(json.dumps(s))
        return TrainResult.from_dict(s)

    def evaluator(run_dir, cfg, prompt):
        v = json.loads((Path(run_dir) / "summary.json").read_text())["val_loss"]
        return Measurement(v, "The cat sat on the mat", val_loss=v, degenerate=False)

    base = from_dict(tiny_config)
    spec = tune.expand(Spec("ablate", base.to_dict(), ablation_members(base, no_ffn=True), [1, 2, 3]),
                       tune.parse_grid("0.5,1,2"))
    assert len(spec.members) == 6
    r = runner.run_experiment(spec, tmp_path / "exp", trainer=trainer, evaluator=evaluator)
    chosen = {c["member"]: c["multiple"] for c in r.tuning}
    assert chosen == {"baseline": 1.0, "no-ffn": 2.0}
    by = {s.member: s for s in r.summary}
    assert set(by) == {"baseline", "no-ffn"}
    assert by["no-ffn"].diff_vs_baseline == pytest.approx(0.3)  # at their best rates: the FFN's own effect
    with pytest.raises(ConfigError):
        tune.parse_grid("1")


def test_learning_fast_is_measured_against_the_run_s_whole_progress():
    # fell 3.1 nats from ln(vocab) in all; 0.046 in the last fifth (1.5%): the slow tail
    assert convergence.still_learning(0.046, final=1.5, start=4.6) is False
    # cut off mid-descent: 0.3 of 2.4 nats (12%) in the last fifth
    assert convergence.still_learning(0.3, final=2.2, start=4.6) is True
    assert convergence.still_learning(0.03) is True  # without the scale: the absolute floor


# ---------------------------------------------------------------- tformer study --all


@pytest.mark.slow
def test_study_all_writes_findings_and_resumes(cli, tiny_config, tmp_path, monkeypatch):
    import yaml

    from tformer_cli.study import files

    study = dict(tiny_config)
    study["train"] = dict(study["train"], steps=4, eval_interval=2, log_interval=2)
    study["experiment"] = {"kind": "ablate", "no_ffn": True, "seeds": 3}
    study["claim"] = dict(CLAIM)
    path = tmp_path / "tiny_ffn.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setattr(files, "builtin_studies", lambda: [path])
    out = tmp_path / "all"
    r = cli("study", "--all", "--out", out, "--jobs", "1")
    assert r.code == 0, r
    report = (out / "findings.md").read_text()
    assert "| tiny_ffn | Removing the FFN makes the model worse |" in report
    assert "## tiny_ffn" in report and "verdicts" in r.out
    members = sorted(p.name for p in (out / "tiny_ffn" / "members").iterdir())
    assert members == [f"{m}-s{s}" for m in ("baseline", "no-ffn") for s in (1337, 1338, 1339)]
    (out / "findings.md").unlink()
    again = cli("study", "--all", "--resume", out, "--jobs", "1")
    assert again.code == 0, again
    assert (out / "findings.md").exists() and "finished earlier, skipped" in again.out + again.err
    refused = cli("study", "tiny_ffn", "--resume", out)  # one study resumes through ablate/sweep --resume
    assert refused.code == 2 and refused.err.startswith("error: ")


def test_study_all_takes_out_and_resume_as_strings_as_some_typer_releases_pass_them(tmp_path, monkeypatch):
    """On a GPU machine `study --all --out DIR` failed with str / str: its Typer left the path a str."""
    from types import SimpleNamespace

    from tformer_cli.cli import experiments
    from tformer_cli.render import findings
    from tformer_cli.study import files

    ctx = SimpleNamespace(params={"out": str(tmp_path / "all"), "resume": None, "config": "induction"})
    o = experiments.ExperimentOptions.from_context(ctx)
    assert o.out == tmp_path / "all" and o.config == Path("induction")
    monkeypatch.setattr(files, "builtin_studies", lambda: [Path("a.yaml"), Path("b.yaml")])
    ran = []
    monkeypatch.setattr(experiments, "run_study", lambda o, path, out: ran.append(out) or "result")
    monkeypatch.setattr(findings, "write_findings", lambda root, results, ladders=(): root / "findings.md")
    monkeypatch.setattr(findings, "show_verdicts", lambda con, results: None)
    experiments.run_all(o)
    assert ran == [tmp_path / "all" / "a", tmp_path / "all" / "b"]


def test_a_degenerate_member_blocks_a_verdict_unless_the_claim_predicts_it(tiny_config):
    rows = _rows([1.50, 1.80, 1.20], [3.4, 3.5, 3.3])
    for r in rows:
        if r.member == "no-ffn":
            r.degenerate = True
    assert verdict.verdicts(_spec(tiny_config, [CLAIM]), rows)[0].outcome == "undecided"
    leak = dict(CLAIM, allow_degenerate=True)
    assert verdict.verdicts(_spec(tiny_config, [leak]), rows)[0].outcome == "agrees"


def test_a_resumed_experiment_adds_up_its_wall_time(tiny_config, tmp_path):
    import json

    from conftest import FakeTrainer, fake_eval
    from tformer_cli.study import runner

    base = from_dict(tiny_config)
    spec = Spec("ablate", base.to_dict(), ablation_members(base, no_ffn=True), [1])
    r = runner.run_experiment(spec, tmp_path / "exp", trainer=FakeTrainer(), evaluator=fake_eval)
    data = json.loads((tmp_path / "exp" / "results.json").read_text())
    data["elapsed_s"] = 1000.0  # an earlier session's time
    (tmp_path / "exp" / "results.json").write_text(json.dumps(data))
    again = runner.run_experiment(spec, tmp_path / "exp", resume=True, trainer=FakeTrainer(), evaluator=fake_eval)
    assert 1000.0 <= again.elapsed_s < 1000.0 + 60 and r.elapsed_s < 60


def test_study_runs_one_member_per_core_and_tuning_flags_are_checked(cli, monkeypatch):
    import os

    from tformer_cli.cli import experiments

    seen = {}
    monkeypatch.setattr(experiments, "execute", lambda o, spec, out=None: seen.update(jobs=o.jobs, spec=spec))
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cli("study", "ablate_ffn").code == 0 and seen["jobs"] == "auto"  # runner.auto_jobs decides
    assert cli("study", "ablate_ffn", "--jobs", "1").code == 0 and seen["jobs"] == 1
    monkeypatch.undo()
    assert "needs --tune lr" in cli("ablate", "--no-ffn", "--lr-grid", "1,2", "--steps", "1").err
    assert "only 'lr'" in cli("ablate", "--no-ffn", "--tune", "wd", "--steps", "1").err


# ---------------------------------------------------------------- tformer study --until-converged


def _ladder_result(out_dir, outcome, suggestion="", learning=False, verdicts=True):
    from tformer_cli.study.results import ExperimentResult, Verdict

    rows = _rows([1.5, 1.6, 1.7], [1.8, 1.9, 2.0], still_learning=learning)
    v = Verdict(statement="s", source="src", member="no-ffn", baseline="baseline", metric="compared_loss",
                expect="higher", margin=0.02, outcome=outcome, reason="r", n=3, delta=0.3, ci_low=0.2,
                ci_high=0.4, suggestion=suggestion)
    return ExperimentResult("ablate", str(out_dir), rows, [], [], [], [1, 2, 3], False, "sequential", "", "", [],
                            None, 1.0, [v] if verdicts else [])


def test_the_ladder_doubles_only_while_a_verdict_asks_for_steps(tmp_path):
    from tformer_cli.study import doubling

    learning = _ladder_result(tmp_path, "undecided", "--steps 400")
    assert doubling.next_steps(learning, 200, 800) == 400
    assert doubling.next_steps(learning, 400, 800) == 800
    assert doubling.next_steps(learning, 800, 800) is None  # the cap
    assert doubling.next_steps(_ladder_result(tmp_path, "undecided", "--seeds 7"), 200, 800) is None  # seeds, not steps
    assert doubling.next_steps(_ladder_result(tmp_path, "agrees"), 200, 800) is None
    no_claim = _ladder_result(tmp_path, "", verdicts=False, learning=True)
    assert doubling.next_steps(no_claim, 200, 800) == 400  # without a claim: any member still learning
    assert doubling.next_steps(_ladder_result(tmp_path, "", verdicts=False), 200, 800) is None
    assert doubling.max_steps_for(200, None) == 800
    with pytest.raises(ConfigError):
        doubling.max_steps_for(200, 100)
    assert "--max-steps" in doubling.stop_reason([doubling.Rung(800, learning)], 800)


def test_until_converged_runs_each_budget_in_its_own_directory(cli, monkeypatch, tmp_path):
    from conftest import terminal
    from tformer_cli.cli import experiments

    calls = []

    def fake_execute(o, spec, out=None, emit_json=True):
        steps = spec.config().train.steps
        calls.append((steps, out))
        decided = steps >= 1200
        return _ladder_result(out, "agrees" if decided else "undecided", "" if decided else f"--steps {2 * steps}",
                              learning=not decided)

    monkeypatch.setattr(experiments, "execute", fake_execute)
    # as an 80-column terminal: nothing wider, nothing cut
    r = terminal(monkeypatch, "study", "ablate_ffn", "--steps", "300", "--until-converged", "--out", tmp_path / "o",
                 "--jobs", "1")
    assert calls == [(300, tmp_path / "o" / "steps-300"), (600, tmp_path / "o" / "steps-600"),
                     (1200, tmp_path / "o" / "steps-1200")]
    assert "until converged" in r.out and "AGREES" in r.out and "stopped at 1200 steps" in r.out
    calls.clear()
    r = cli("study", "ablate_ffn", "--steps", "300", "--until-converged", "--max-steps", "600", "--out",
            tmp_path / "p", "--jobs", "1")
    assert r.code == 0 and [c[0] for c in calls] == [300, 600] and "--max-steps" in r.out
    calls.clear()
    r = cli("study", "ablate_ffn", "--steps", "300", "--until-converged", "--json", "--out", tmp_path / "q")
    import json

    data = json.loads(r.out)
    assert [x["steps"] for x in data["rungs"]] == [300, 600, 1200] and "stopped" in data
    bad = cli("study", "ablate_ffn", "--steps", "300", "--until-converged", "--max-steps", "100")
    assert bad.code == 2 and "below the study's budget" in bad.err
    assert cli("study", "ablate_ffn", "--max-steps", "100").code == 2


def test_findings_name_a_rung_by_its_study(tmp_path):
    from tformer_cli.render.findings import study_name

    assert study_name(_ladder_result(tmp_path / "induction" / "steps-4000", "agrees")) == "induction (steps-4000)"
    assert study_name(_ladder_result(tmp_path / "induction", "agrees")) == "induction"
