"""DDP under torchrun on CPU (gloo): equivalence with one process, checkpoints and resume across
a change in the number of processes, rank-0-only output, a stop agreed by all ranks.

The distributed runs are real: `tformer train --nproc 2` in a subprocess runs
`python -m torch.distributed.run --standalone --nproc_per_node=2 -m tformer_cli train ...`
(--standalone: torchrun picks a free port itself), and a forked pair of ranks with the
environment torchrun sets.  OMP_NUM_THREADS=1 per rank: 2 ranks on 2 cores.

The equivalence tolerance is RTOL = 1e-5 relative, not bitwise: with 2 processes each rank
averages the loss over its B rows and DDP all-reduces (sums, then divides) the gradients,
while one process averages over 2B rows in a single reduction; float32 sums in a different
order differ in the last bits, and AdamW carries that into later steps.  metrics.jsonl also
rounds losses to 6 decimals (~1e-7 relative at these losses).  Measured differences are ~1e-6
absolute (a last-digit flip), far inside RTOL, while any real difference in the data each rank
sees, or a missing gradient average, moves the loss by > 1e-3.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

RTOL = 1e-5
STEPS = 6
CFG = {  # the global batch is 8 rows x 2 micro-steps: 1 process x 8 or 2 processes x 4
    "model": {"d_model": 32, "n_layer": 2, "n_head": 2, "block_size": 16, "dropout": 0.0},
    "data": {"corpus": "prose", "tokenizer": "char"},
    "train": {"steps": STEPS, "batch_size": 8, "grad_accum": 2, "lr": 0.003, "warmup_steps": 1,
              # eval_iters 1 < 2 processes: every rank still evaluates its rows of the one batch
              "eval_interval": 2, "eval_iters": 1, "log_interval": 1, "ckpt_interval": 2,
              "device": "cpu"},
}


def run_cli(*args):
    """(exit code, stdout, stderr) of `tformer ARGS` run in this process."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from tformer_cli.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env() -> dict[str, str]:
    """One intra-op thread per rank (2 ranks on 2 cores), the session's token cache."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_curve(got: list[dict], want: list[dict]) -> None:
    """Same rows (step, kind), losses within RTOL."""
    key = lambda r: (r["step"], "val_loss" in r)  # noqa: E731
    assert [key(r) for r in got] == [key(r) for r in want]
    for g, w in zip(got, want):
        for name in ("train_loss", "val_loss"):
            if name in w:
                assert g[name] == pytest.approx(w[name], rel=RTOL), (g, w)


# ---------------------------------------------------------------- fast: no process group


def test_backend_is_nccl_on_cuda_and_gloo_on_cpu():
    import torch

    from tformer_cli.train.distributed import backend_for, collective_device

    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"
    assert collective_device(torch.device("cpu")) == torch.device("cpu")


def test_nproc_relaunches_the_same_command_under_torchrun(monkeypatch, tmp_path):
    from tformer_cli.train import distributed

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    seen = {}

    def fake_launch(nproc, args, cuda=False):
        seen.update(nproc=nproc, args=args, cuda=cuda)
        return 7

    monkeypatch.setattr(distributed, "launch", fake_launch)
    code, _, _ = run_cli("train", cfg, "--nproc", "3", "--steps", "5", "--set", "train.lr=0.01",
                         "--out", tmp_path / "r", "--json")
    assert code == 7  # torchrun's exit code is the command's
    assert seen == {"nproc": 3, "cuda": False, "args": [
        "train", str(cfg), "--set", "train.lr=0.01", "--steps", "5", "--json", "--out", str(tmp_path / "r")]}
    assert (tmp_path / "r").is_dir()  # created before launching, so a clash is reported once
    code, _, err = run_cli("train", cfg, "--nproc", "3", "--out", tmp_path / "r")
    assert code == 7 and seen["args"][-2:] == ["--out", str(tmp_path / "r")]  # empty: still usable
    (tmp_path / "r" / "config.yaml").write_text("")
    (tmp_path / "r" / "metrics.jsonl").write_text("")  # a run has a checkpoint or metrics (issue 13)
    code, _, err = run_cli("train", cfg, "--nproc", "3", "--out", tmp_path / "r")
    assert code == 2 and "is a run" in err
    assert distributed.torchrun_argv(3, ["train"])[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "tformer_cli", "train"]


def test_nproc_is_refused_inside_torchrun_and_below_one(monkeypatch):
    from tformer_cli.errors import ConfigError
    from tformer_cli.train.distributed import launch

    with pytest.raises(ConfigError, match="at least one"):
        launch(0, ["train"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="already launched"):
        launch(2, ["train"])


def test_resume_refuses_a_changed_global_batch(tmp_path):
    cfg = tmp_path / "c.yaml"
    small = {k: dict(v) for k, v in CFG.items()}
    small["train"].update(steps=1, ckpt_interval=1, eval_interval=1)
    cfg.write_text(yaml.safe_dump(small))
    assert run_cli("train", cfg, "--out", tmp_path / "r")[0] == 0
    code, _, err = run_cli("train", "--resume", tmp_path / "r", "--set", "train.batch_size=4", "--steps", "2")
    assert code == 2
    assert "global batch would change from 8 (8 x 1 processes) to 4 (4 x 1)" in err
    assert "train.batch_size=8" in err


# ---------------------------------------------------------------- slow: real process groups


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One reference run, and one run that changes its number of processes twice.

    Both go 2 steps, then --resume --steps 4, then --resume --steps 6 (train.steps sets the
    cosine schedule, so both must extend it alike):
    ref    1 process x 8 rows throughout
    hop    1 process x 8 for steps 1-2; `tformer train --resume --nproc 2` (2 x 4, a real torchrun
           in a subprocess) for steps 3-4; 1 process x 8 again for steps 5-6
    mid    a copy of hop right after the distributed part (its checkpoint was written by DDP)
    """
    root = tmp_path_factory.mktemp("ddp")
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    out: dict = {"root": root, "ref": root / "ref", "hop": root / "hop", "mid": root / "mid"}
    assert run_cli("train", cfg, "--out", out["ref"], "--steps", 2)[0] == 0
    shutil.copytree(out["ref"], out["hop"])
    for steps in (4, STEPS):
        assert run_cli("train", "--resume", out["ref"], "--steps", steps)[0] == 0

    cmd = [sys.executable, "-m", "tformer_cli", "train", "--resume", str(out["hop"]), "--nproc", "2",
           "--set", "train.batch_size=4", "--steps", "4", "--json"]
    proc = subprocess.run(cmd, cwd=root, env=rank_env(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out["ddp_stdout"], out["ddp_stderr"] = proc.stdout, proc.stderr
    shutil.copytree(out["hop"], out["mid"])

    code, _, err = run_cli("train", "--resume", out["hop"], "--set", "train.batch_size=8", "--steps", STEPS)
    assert code == 0, err
    return out


def _between(rows: list[dict], first: int, last: int) -> list[dict]:
    return [r for r in rows if first <= r["step"] <= last]


@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one_process_with_twice_the_batch(runs):
    """Steps 3-4 trained by 2 processes x 4 rows (resumed from a 1-process checkpoint) = 1 x 8."""
    assert_same_curve(_between(metrics(runs["mid"]), 3, 4), _between(metrics(runs["ref"]), 3, 4))


@pytest.mark.slow
def test_a_distributed_checkpoint_resumes_in_one_process(runs):
    """Steps 5-6 trained by 1 process from the checkpoint the 2 processes wrote: still the same curve."""
    assert_same_curve(metrics(runs["hop"]), metrics(runs["ref"]))


@pytest.mark.slow
def test_only_rank_0_prints_and_writes(runs):
    summary = json.loads(runs["ddp_stdout"])  # exactly one JSON document: rank 1 printed nothing
    assert summary["extra"]["processes"] == 2 and summary["steps_done"] == 4 and summary["resumed_from"] == 2
    # tokens for the whole job: 2 processes x 4 rows x 2 micro-steps x 16 tokens per step
    assert summary["tokens_seen"] == 4 * 8 * 2 * 16
    assert runs["ddp_stderr"].count("step 3/") == 1  # one progress stream
    def files(run):  # the TensorBoard event files are named by the second and the session: compared below
        return sorted(p.name for p in run.iterdir() if not p.name.startswith("events.out.tfevents."))

    assert files(runs["mid"]) == files(runs["ref"])
    ddp = [p.name for p in runs["mid"].glob("events.out.tfevents.*") if p.name.endswith("from-step-0000000002")]
    assert len(ddp) == 1  # the distributed session wrote one event file: rank 0's
    if importlib.util.find_spec("tensorboard") is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(runs["mid"]))
        acc.Reload()
        logged = [e.step for e in acc.Scalars("loss/train")]
        assert logged == [r["step"] for r in metrics(runs["mid"]) if "train_loss" in r]  # each step once
    assert yaml.safe_load((runs["mid"] / "config.yaml").read_text())["train"]["batch_size"] == 4
    assert not (runs["root"] / "runs").exists()  # no rank made a default run directory of its own


@pytest.mark.slow
def test_a_distributed_checkpoint_loads_and_samples_in_one_process(runs):
    import torch

    from tformer_cli.run import checkpoint
    from tformer_cli.run.load import load_for_inference

    ddp, ref = checkpoint.load(runs["mid"]), checkpoint.load(runs["ref"])
    assert ddp.train_state["step"] == 4 and ddp.train_state["world"] == 2
    assert set(ddp.tensors) == set(ref.tensors)  # same layout: no "module." prefix from DDP
    model, tok, cfg, _, device = load_for_inference(runs["mid"], "cpu")
    ids = torch.tensor([tok.encode("The ")], device=device)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == ddp.vocab_size and torch.isfinite(logits).all()
    try:
        import tformer_cli.cli.sample  # noqa: F401  (written concurrently; use it when present)
    except ImportError:
        return
    code, out, err = run_cli("sample", runs["mid"], "--prompt", "The ", "--max-new-tokens", "8", "--device", "cpu")
    assert code == 0, err


STOP_SCRIPT = textwrap.dedent("""
    # Two ranks as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), forked from one
    # interpreter so torch is imported once.  Rank 0 names the run directory; rank 1 alone asks
    # to stop, during step 2.
    import json, os, sys
    import torch
    from tformer_cli.core import device as dev
    from tformer_cli.core.config import from_dict
    from tformer_cli.train.loop import train

    dev._PEAK_CACHE[("cpu", str(torch.float32))] = dev.Peak(1e9, "test")  # skip the timed matmul
    cfg, port = from_dict(json.loads(sys.argv[1])), sys.argv[2]
    pids = []
    for rank in range(2):
        pid = os.fork()
        if pid:
            pids.append(pid)
            continue
        os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        from tformer_cli.train.distributed import agree_run_dir, process_group
        calls = []
        def stop():
            calls.append(1)
            return rank == 1 and len(calls) >= 2
        with process_group("cpu") as dist:
            run_dir = agree_run_dir(None, False, dist, "cpu")
            r = train(cfg, run_dir, should_stop=stop, dist=dist)
        # one write per line: both ranks finish together and share the stdout pipe
        os.write(1, (json.dumps({"rank": rank, "run_dir": str(run_dir), "steps_done": r.steps_done,
                                 "interrupted": r.interrupted}) + "\\n").encode())
        os._exit(0)
    sys.exit(int(any(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) != 0 for p in pids)))
""")


@pytest.mark.slow
def test_a_fresh_distributed_run_agrees_on_its_directory_and_on_stopping(runs, tmp_path):
    """Rank 1 alone asks to stop during step 2; the ranks compare notes at log steps (every 2),
    so both stop after step 2 (without agreement rank 1 would leave after step 1 and rank 0
    would wait for it forever).  Its step-2 validation loss is the 1-process reference's."""
    cfg = {k: dict(v) for k, v in CFG.items()}
    cfg["train"].update(batch_size=4, log_interval=2)
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), json.dumps(cfg), str(free_port())],
                          cwd=tmp_path, env=rank_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((json.loads(line) for line in proc.stdout.splitlines()), key=lambda r: r["rank"])
    made = list((tmp_path / "runs").iterdir())
    assert len(made) == 1  # one timestamped directory, named by rank 0
    assert results == [{"rank": r, "run_dir": str(Path("runs") / made[0].name), "steps_done": 2,
                        "interrupted": True} for r in (0, 1)]
    from tformer_cli.run import checkpoint

    assert checkpoint.load(made[0], with_optimizer=False).train_state["step"] == 2
    assert_same_curve([r for r in metrics(made[0]) if "val_loss" in r],
                      [r for r in metrics(runs["ref"]) if "val_loss" in r and r["step"] == 2])
