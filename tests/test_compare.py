"""`tformer compare`: runs and experiment members on one validation-loss plot."""

from __future__ import annotations

import json

import pytest

from conftest import one_line, terminal, train_tiny_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import TINY
    from tformer_cli.core.config import from_dict
    from tformer_cli.study import runner
    from tformer_cli.study.files import ablate_spec

    root = tmp_path_factory.mktemp("compare")
    a = train_tiny_run(root, "a", steps=10, eval_interval=5)
    b = train_tiny_run(root, "b", steps=10, eval_interval=5, lr=0.01)
    cfg = {k: dict(v) for k, v in TINY.items()}
    cfg["train"].update(steps=10, eval_interval=5)
    runner.run_experiment(ablate_spec(from_dict(cfg), {"no_ffn": True}, seeds=2), root / "exp", jobs=1)
    return root, a, b


@pytest.mark.parametrize("axis", ["steps", "tokens", "time"])
def test_compare_overlays_runs_and_an_experiment_s_members(cli, runs, axis):
    root, a, b = runs
    out = root / f"cmp-{axis}.png"
    r = cli("compare", a, b, root / "exp", "--x", axis, "--out", out, "--json")
    assert r.code == 0, r
    data = json.loads(r.out)
    labels = [c["label"] for c in data["curves"]]
    assert labels == ["a", "b", "exp/baseline", "exp/baseline", "exp/no-ffn", "exp/no-ffn"]  # members x seeds
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_loss" in r]
    first = data["curves"][0]
    assert [v for _, v in first["points"]] == [r["val_loss"] for r in val] and first["final"] == val[-1]["val_loss"]
    xs = [x for x, _ in first["points"]]
    assert xs == sorted(xs) and xs[0] > 0
    if axis == "steps":
        assert xs == [r["step"] for r in val]
    if axis == "tokens":
        assert xs == [r["step"] * 4 * 16 for r in val]  # batch 4 x block 16 a step
    assert out.stat().st_size > 0


def test_compare_fits_80_columns_and_refuses_what_it_cannot_draw(cli, monkeypatch, runs, tmp_path):
    root, a, b = runs
    monkeypatch.chdir(root)
    r = terminal(monkeypatch, "compare", "a", "b")
    assert "final val loss" in r.out and (root / "compare.png").exists()
    one_line(cli("compare", tmp_path, "--out", tmp_path / "x.png"), 2, "neither a run nor an experiment")
    one_line(cli("compare", a, "--x", "epochs", "--out", tmp_path / "x.png"), 2, "--x epochs")
