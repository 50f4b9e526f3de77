"""End to end through the CLI: train a tiny config, check the run directory, resume."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from safetensors import safe_open

from conftest import assert_same_checkpoints, interrupted_and_resumed


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_a_self_describing_run(cli, tiny_yaml, tmp_path):
    run = tmp_path / "run"
    r = cli("train", tiny_yaml, "--out", run, "--json")
    assert r.code == 0, r
    summary = json.loads(r.out)
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.safetensors", "checkpoint.json",
                 "tokenizer.json", "summary.json", "loss.png"):
        assert (run / name).exists(), name
    assert summary["steps_done"] == 20 and not summary["interrupted"]
    assert summary["val_loss"] < summary["init_loss_ref"]  # learned something
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / math.log(2), rel=0.05)  # ~1 byte/char
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["d_model"] == 32 and cfg["train"]["steps"] == 20
    with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.") for k in keys) and any(k.startswith("optim.") for k in keys)
    assert not any("_orig_mod" in k for k in keys)
    rows = _metrics(run)
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20]
    parts = [summary[k] for k in ("setup_s", "steps_s", "eval_s", "checkpoint_s")]  # elapsed_s, split
    assert min(parts) >= 0 and parts[1] > 0 and parts[2] > 0 and parts[3] > 0
    assert sum(parts) == pytest.approx(summary["elapsed_s"], abs=1e-6)


def test_cli_resume_extends_a_run_and_refuses_conflicts(cli, tiny_yaml, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_yaml, "--out", run).code == 0
    r = cli("train", "--resume", run, "--set", "model.n_head=4")
    assert r.code == 2 and "conflict" in r.err and "model.n_head=4 (the run has 2)" in r.err
    r = cli("train", "--resume", tmp_path, "--steps", "30")
    assert r.code == 2 and "not a tformer run directory" in r.err
    r = cli("train", "--resume", run, "--steps", "30", "--json")
    assert r.code == 0, r
    summary = json.loads(r.out)
    assert summary["resumed_from"] == 20 and summary["steps_done"] == 30
    steps = [row["step"] for row in _metrics(run) if "train_loss" in row]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_resume_mid_run_is_exact(tiny_config, tmp_path):
    """Stop a run after its step-10 checkpoint, resume: same metrics and bitwise weights."""
    from tformer_cli.core.config import from_dict

    tiny_config["model"]["dropout"] = 0.1
    tiny_config["train"]["grad_accum"] = 2
    cfg = from_dict(tiny_config)
    full, part, r, resumed = interrupted_and_resumed(cfg, tmp_path)
    assert r.interrupted and r.steps_done == 10
    assert resumed.resumed_from == 10 and resumed.steps_done == 20
    assert _metrics(part) == _metrics(full)
    assert_same_checkpoints(full, part)


def test_refuses_to_clobber_an_existing_run(cli, tiny_yaml, tmp_path):
    run = tmp_path / "run"
    assert cli("train", tiny_yaml, "--out", run, "--steps", "5").code == 0
    r = cli("train", tiny_yaml, "--out", run, "--steps", "5")
    assert r.code == 2 and "is a run" in r.err and "--resume" in r.err
    assert cli("train", tiny_yaml, "--out", run, "--steps", "5", "--overwrite").code == 0


def test_bpe_tokenizer_run(cli, tiny_yaml, tmp_path):
    run = tmp_path / "bpe"
    r = cli("train", tiny_yaml, "--out", run, "--steps", "5", "--set", "data.tokenizer=bpe",
            "--set", "data.vocab_size=300", "--json")
    assert r.code == 0, r
    summary = json.loads(r.out)
    assert summary["vocab_size"] == 300
    tok = json.loads((run / "tokenizer.json").read_text())
    assert tok["type"] == "bpe"
    # bits per byte accounts for several bytes per token
    assert summary["val_bpb"] < summary["val_loss"] / math.log(2)


def test_token_cache_is_reused(tiny_config):
    from tformer_cli.core.config import from_dict
    from tformer_cli.core.data import prepare

    cfg = from_dict(tiny_config)
    prepare(cfg.data)
    again = prepare(cfg.data)
    assert again.from_cache
    assert len(again.train) > 100_000 and again.vocab_size > 50


def test_overwrite_replaces_a_run_but_never_deletes_other_files(cli, tiny_yaml, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli("train", tiny_yaml, "--out", out, "--steps", "10", "--overwrite").code == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert cli("train", tiny_yaml, "--out", out, "--steps", "5", "--overwrite").code == 0
    steps = [r["step"] for r in _metrics(out)]
    assert max(steps) == 5  # nothing of the replaced 10-step run is left in its metrics
    assert (out / "notes.txt").read_text() == "mine"


def test_sigterm_asks_the_loop_to_stop_like_a_first_ctrl_c(capsys):
    import os
    import signal

    from tformer_cli.cli.options import StopOnInterrupt

    with StopOnInterrupt() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_nan_before_any_checkpoint_says_none_was_kept(tiny_config, tmp_path):
    from tformer_cli.core.config import from_dict
    from tformer_cli.errors import RunError
    from tformer_cli.train.loop import train

    tiny_config["train"].update(lr=1e6, grad_clip=0.0, warmup_steps=0, eval_interval=100, steps=100)
    with pytest.raises(RunError, match="no checkpoint had been written yet"):
        train(from_dict(tiny_config), tmp_path / "new")


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_config, tmp_path):
    """train.compile (on by default on CUDA) runs the same model: losses agree with eager mode."""
    from tformer_cli.core.config import from_dict
    from tformer_cli.train.loop import train

    tiny_config["train"]["steps"] = 10
    eager = train(from_dict(tiny_config), tmp_path / "eager")
    tiny_config["train"]["compile"] = True
    compiled = train(from_dict(tiny_config), tmp_path / "compiled")
    assert compiled.compiled and not eager.compiled
    a, b = _metrics(tmp_path / "eager"), _metrics(tmp_path / "compiled")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-3), (ra, rb)


def test_float16_trains_with_loss_scaling_and_resumes_exactly(tiny_config, tmp_path):
    """float16 autocast uses a GradScaler (its state is saved, so resume stays exact)."""
    from tformer_cli.core.config import from_dict
    from tformer_cli.train.loop import train

    tiny_config["train"]["dtype"] = "float16"
    cfg = from_dict(tiny_config)
    full = train(cfg, tmp_path / "full")
    assert full.dtype == "float16" and full.val_loss < full.init_loss_ref
    header = json.loads((tmp_path / "full" / "checkpoint.json").read_text())
    assert header["train_state"]["grad_scaler"]["scale"] > 1
    seen = []
    part = train(cfg, tmp_path / "part", progress=lambda e: seen.append(e.step) if e.kind == "checkpoint" else None,
                 should_stop=lambda: bool(seen))
    assert part.steps_done == 10
    train(cfg, tmp_path / "part", resume=True)
    assert _metrics(tmp_path / "part") == _metrics(tmp_path / "full")


def test_progress_is_plain_lines_when_not_a_terminal_and_json_keeps_stdout_clean(cli, tiny_yaml, tmp_path):
    r = cli("train", tiny_yaml, "--out", tmp_path / "a", "--steps", "10")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert any(line.startswith("step 5/10  train ") and "tok/s" in line for line in lines)
    assert any(line.startswith("step 10/10  val ") for line in lines)
    assert "\x1b[" not in r.out  # no terminal control sequences in a pipe
    assert f"next: tformer sample {tmp_path / 'a'}" in r.out
    r = cli("train", tiny_yaml, "--out", tmp_path / "b", "--steps", "10", "--json")
    assert r.code == 0
    assert json.loads(r.out)["steps_done"] == 10  # stdout is the JSON alone; progress went to stderr
    assert "step 5/10" in r.err


def test_a_summary_reads_back_as_the_train_result_it_was(tiny_config, tmp_path):
    import json

    from tformer_cli.core.config import from_dict
    from tformer_cli.run.result import TrainResult
    from tformer_cli.run.rundir import prepare_run_dir
    from tformer_cli.train.loop import train

    tiny_config["train"].update(steps=4, eval_interval=2, log_interval=2)
    prepare_run_dir(tmp_path / "r", False)
    r = train(from_dict(tiny_config), tmp_path / "r")
    back = TrainResult.from_dict(json.loads((tmp_path / "r" / "summary.json").read_text()))
    assert back == TrainResult.from_dict(r.to_dict()) and back.to_dict() == json.loads(json.dumps(r.to_dict()))
    assert TrainResult.from_dict({"steps": 3, "future_field": 1}).steps == 3  # missing and unknown fields
