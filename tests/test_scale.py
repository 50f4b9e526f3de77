"""The scale ladder (tformer_cli.study.scale): a study at several sizes, a verdict per size, a trend."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import TINY, one_line, terminal
from tformer_cli.errors import ConfigError
from tformer_cli.study import scale


def test_a_trend_reads_the_verdicts_in_rung_order():
    assert scale.trend_of(["agrees"] * 3, [1, 2, 3]) == scale.HOLDS
    assert scale.trend_of(["disagrees"] * 2, [1, 2]) == scale.FAILS
    assert scale.trend_of(["disagrees", "agrees", "agrees"], [1, 2, 3]) == scale.APPEARS
    assert scale.trend_of(["agrees", "agrees", "disagrees"], [1, 2, 3]) == scale.VANISHES
    assert scale.trend_of(["agrees", "disagrees", "agrees"], [1, 2, 3]) == scale.CHANGES
    assert scale.trend_of(["agrees", "undecided", "agrees"], [1, 2, 3]) == "undecided at rung 2"
    assert scale.trend_of(["undecided"], [2]) == "undecided at rung 2"  # --rungs 2: its own number


def test_a_ladder_section_is_checked_all_at_once():
    with pytest.raises(ConfigError) as e:
        scale.parse_ladder({"rungs": [{}, "big", {"d_model": 128, "seeds": 0}], "colour": 1}, "s.yaml")
    text = " ".join(e.value.problems)
    for needle in ("ladder.colour: unknown key", "ladder.rule: missing", "ladder.rungs[2]: expected a mapping",
                   "ladder.rungs[3].d_model: expected a dotted config key", "ladder.rungs[3].seeds"):
        assert needle in text, text
    with pytest.raises(ConfigError, match="ladder.rungs: expected a list"):
        scale.parse_ladder({"rule": "x", "rungs": []}, "s.yaml")
    ladder = scale.parse_ladder({"rule": " width x2 ", "rungs": [None, {"model.d_model": 64, "seeds": 4}]}, "s")
    assert ladder.rule == "width x2" and ladder.rungs[0].set == {} and ladder.rungs[1].seeds == 4
    assert [r.index for r in ladder.pick("2")] == [2] and len(ladder.pick(None)) == 2
    for bad in ("3", "0", "x", ""):
        with pytest.raises(ConfigError, match="--rungs"):
            ladder.pick(bad)


def _study(tmp_path, rungs=None, claim=True):
    """A tiny sweep of two widths with a claim, and a ladder of two depths."""
    cfg = {k: dict(v) for k, v in TINY.items()}
    cfg["model"]["d_model"] = 16
    cfg["train"].update(steps=20, eval_interval=5)
    cfg["experiment"] = {"kind": "ablate", "no_ffn": True, "seeds": 3}
    if claim:
        cfg["claim"] = {"statement": "Removing the FFN changes the loss", "source": "a test", "member": "no-ffn",
                        "expect": "higher", "margin": 0.02}
    cfg["ladder"] = {"rule": "one layer more a rung; steps, batch and lr as written (a test)",
                     "rungs": rungs if rungs is not None else [{}, {"model.n_layer": 3, "seeds": 3}],
                     "budget": {"cpu": "seconds", "gpu": "not measured"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.usefixtures("one_thread")
def test_study_ladder_runs_each_rung_and_gives_each_claim_a_trend(cli, monkeypatch, tmp_path):
    path, out = _study(tmp_path), tmp_path / "scale"
    r = terminal(monkeypatch, "study", path, "--ladder", "--out", out, "--jobs", "1")  # 80 columns, nothing cut
    assert r.code == 0, r.err
    assert "rung 1 of 2: the study as written" in r.out and "rung 2 of 2: model.n_layer=3" in r.out
    assert "trend: " in r.out and "the claim at each size" in r.out
    assert "(rungs" not in r.out  # every rung ran: no scope
    report = json.loads((out / "scale.json").read_text())
    assert [x["rung"] for x in report["rungs"]] == [1, 2] and report["rule"].startswith("one layer more")
    (t,) = report["trends"]
    p1, p2 = t["points"]
    assert p2["params"] > p1["params"] and p1["n"] == p2["n"] == 3
    assert t["trend"] == scale.trend_of([p1["outcome"], p2["outcome"]], [1, 2])
    assert all(p["epochs"] > 0 for p in (p1, p2))
    assert (out / "scale.png").stat().st_size > 0
    for i in (1, 2):
        res = json.loads((out / f"rung-{i}" / "results.json").read_text())
        assert len(res["verdicts"]) == 1 and len(res["rows"]) == 6
    again = cli("study", path, "--rungs", "2", "--out", out, "--jobs", "1")  # continues: nothing retrained
    assert again.code == 0 and "finished earlier, skipped" in again.out + again.err
    assert "(rungs 2 of 2)" in again.out  # the trend says which rungs it read
    assert [x["rung"] for x in json.loads((out / "scale.json").read_text())["rungs"]] == [2]


def test_ladder_mistakes_are_one_line_before_anything_trains(cli, tmp_path):
    out = tmp_path / "scale"
    one_line(cli("study", _study(tmp_path), "--rungs", "7", "--out", out), 2, "this ladder has rungs 1 to 2")
    one_line(cli("study", _study(tmp_path, rungs=[{}, {"model.no_such_key": 3}]), "--ladder", "--out", out), 2,
             "no_such_key")
    assert not out.exists()  # the bad second rung was refused before the first trained
    one_line(cli("study", "sweep_heads", "--ladder", "--until-converged", "--out", out), 2, "two different ladders")
    plain = tmp_path / "plain.yaml"
    data = yaml.safe_load(_study(tmp_path).read_text())
    del data["ladder"]
    plain.write_text(yaml.safe_dump(data))
    one_line(cli("study", plain, "--ladder", "--out", out), 2, "has no ladder: section")


def test_every_shipped_ladder_parses_and_its_rungs_build(tmp_path):
    """Every shipped study's ladder: at least 3 rungs, a rule and both budgets, and every rung a valid
    study (its keys applied to the study's config), larger than the one before."""
    from tformer_cli.core.anatomy import totals
    from tformer_cli.study import files

    laddered = 0
    for path in files.builtin_studies():
        src = files.Source(path, None, {}, None)
        ladder = files.ladder_of(src)
        if ladder is None:
            continue
        laddered += 1
        assert len(ladder.rungs) >= 3 and ladder.rule and {"cpu", "gpu"} <= set(ladder.budget), path.stem
        sizes = []
        for rung in ladder.rungs:
            cfg = files.study_from(src, rung).config()
            sizes.append(totals(cfg.model, 100).params)
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1], (path.stem, sizes)
    assert laddered == len(files.builtin_studies())  # every shipped study has one


def test_findings_carry_each_ladder_s_trends():
    from tformer_cli.render.scale import scale_markdown

    ladder = scale.parse_ladder({"rule": "width x2", "rungs": [{}, {"model.d_model": 64}]}, "s")
    pts = [scale.RungPoint(1, 100_000, "agrees", 0.05, 0.02, 0.08, 3, epochs=2.4),
           scale.RungPoint(2, 800_000, "disagrees", -0.03, -0.05, -0.01, 3, overfit=True, epochs=2.4)]
    t = scale.Trend("Bigger is better", "compared_loss", scale.trend_of(["agrees", "disagrees"], [1, 2]), pts)
    text = "\n".join(scale_markdown("demo", ladder, [t], "demo/scale.png"))
    assert "**Bigger is better**: vanishes with scale." in text and "| 2 | 800.0K | disagrees |" in text
    assert "overfit, 2.4 epochs" in text and "![demo at each size](demo/scale.png)" in text


@pytest.mark.usefixtures("one_thread")
def test_study_all_ladder_writes_each_ladder_into_the_findings(tmp_path, monkeypatch):
    """`study --all --ladder`: a study with a ladder runs its rungs, one without runs as written,
    and findings.md holds each ladder's trends before the per-rung sections."""
    from tformer_cli.cli import experiments
    from tformer_cli.study import files

    laddered = _study(tmp_path, rungs=[{}, {"model.n_layer": 3}])
    plain = tmp_path / "plain.yaml"
    data = yaml.safe_load(laddered.read_text())
    del data["ladder"]
    plain.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(files, "builtin_studies", lambda: [laddered, plain])
    o = experiments.ExperimentOptions(out=tmp_path / "all", ladder=True, jobs=1)
    experiments.run_all(o)
    text = (tmp_path / "all" / "findings.md").read_text()
    assert "## study: the scale ladder" in text and "**Removing the FFN changes the loss**:" in text
    assert "## study (rung-1)" in text and "## study (rung-2)" in text and "## plain" in text
    assert (tmp_path / "all" / "study" / "scale.json").exists()
    assert (tmp_path / "all" / "plain" / "results.json").exists()
