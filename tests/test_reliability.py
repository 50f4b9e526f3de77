"""Reliability: no lost work, exact resume, polite interrupts, no bad checkpoints, no code from files.

The crash and interrupt tests run `python -m tformer_cli train` in a subprocess and signal it
(POSIX only).  To land a SIGKILL inside a checkpoint save deterministically they set the
test-only TFORMER_TEST_SAVE_DELAY (tformer_cli/io.py), which sleeps between writing the
temporary ``.checkpoint.safetensors.*.tmp`` file and renaming it over the checkpoint.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CKPT = "checkpoint.safetensors"


# ---------------------------------------------------------------- helpers


def _write_config(tmp_path: Path, tiny_config: dict, name: str = "cfg.yaml", **train) -> Path:
    tiny_config["train"].update(train)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny_config))
    return path


def _spawn(tmp_path: Path, *args, env_extra: dict | None = None) -> subprocess.Popen:
    import torch

    env = dict(os.environ, **(env_extra or {}))
    env.pop("TFORMER_DEBUG", None)
    # CPU results depend on the thread count: use this process's, so in-process runs compare bitwise.
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return subprocess.Popen([sys.executable, "-m", "tformer_cli", *map(str, args)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0, what: str = "") -> None:
    """Poll ``cond`` every 5 ms; fail if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process exited ({proc.returncode}) before {what}\n{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _temp_files(run: Path) -> list[Path]:
    return list(run.glob(f".{CKPT}.*.tmp"))


def _metric_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return rows


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = _tensors(a / CKPT), _tensors(b / CKPT)
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("optim.") for k in ta)  # the optimizer moments are compared too
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].equal(tb[k]), f"{k} differs"


def _ckpt_step(run: Path) -> int:
    from tformer_cli.run import checkpoint

    return int(checkpoint.load(run).train_state["step"])


# ---------------------------------------------------------------- 1 + 2: kill -9 mid-save, exact resume


@pytest.mark.slow
def test_kill_during_save_then_resume_is_exact(cli, tiny_config, tmp_path):
    """SIGKILL lands while the step-10 checkpoint is being written (temp file on disk, not yet
    renamed).  The step-5 checkpoint must still load, and `tformer train --resume` must finish
    with bitwise the weights, optimizer moments and metrics.jsonl of a run never interrupted.
    Dropout and gradient accumulation are on, so their RNG streams must continue exactly."""
    tiny_config["model"]["dropout"] = 0.1
    cfg = _write_config(tmp_path, tiny_config, steps=20, grad_accum=2, ckpt_interval=5)
    full, run = tmp_path / "full", tmp_path / "run"
    r = cli("train", cfg, "--out", full, "--json")
    assert r.code == 0, r

    # The test-only delay holds every checkpoint save open for 2 s between the temp write and
    # the rename; after the step-5 save finished (checkpoint.json exists) the next temp file
    # belongs to the step-10 save.
    proc = _spawn(tmp_path, "train", cfg, "--out", run, env_extra={"TFORMER_TEST_SAVE_DELAY": "2"})
    _wait_for(lambda: (run / "checkpoint.json").exists() and _temp_files(run), proc,
              what="the second checkpoint save")
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    assert _temp_files(run), "the kill should have left the half-done save behind"
    assert _ckpt_step(run) == 5  # the previous checkpoint is intact and loads
    assert max(r["step"] for r in _metric_rows(run)) == 10  # work past the checkpoint was logged, then lost

    r = cli("train", "--resume", run, "--json")
    assert r.code == 0, r
    summary = json.loads(r.out)
    assert summary["resumed_from"] == 5 and summary["steps_done"] == 20
    assert not _temp_files(run)  # the stale temp file was cleaned up by the next save
    assert (run / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    _assert_same_weights(run, full)


# ---------------------------------------------------------------- 3: Ctrl-C


def _long_run_config(tmp_path, tiny_config):
    # Long enough never to finish on its own; the only checkpoint is the one the interrupt asks for.
    return _write_config(tmp_path, tiny_config, steps=100_000, ckpt_interval=100_000, eval_interval=50)


@pytest.mark.slow
def test_sigint_saves_prints_summary_and_exits_130(tiny_config, tmp_path):
    cfg = _long_run_config(tmp_path, tiny_config)
    run = tmp_path / "run"
    proc = _spawn(tmp_path, "train", cfg.name, "--out", "run")  # relative: the hint stays on one line
    _wait_for(lambda: _metric_rows(run), proc, what="the first logged step")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted: resume with  tformer train --resume run\n" in err
    assert "Traceback" not in out + err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["steps_done"] > 0
    assert _ckpt_step(run) == summary["steps_done"]  # saved exactly where it stopped
    assert "steps" in out  # the summary table was printed
    assert not _temp_files(run)


@pytest.mark.slow
def test_second_sigint_exits_at_once(tiny_config, tmp_path):
    """The second Ctrl-C arrives while the interrupt's checkpoint save is held open for 60 s:
    the process must exit with 130 within seconds and leave no half-written checkpoint."""
    cfg = _long_run_config(tmp_path, tiny_config)
    run = tmp_path / "run"
    proc = _spawn(tmp_path, "train", cfg, "--out", run, env_extra={"TFORMER_TEST_SAVE_DELAY": "60"})
    _wait_for(lambda: _metric_rows(run), proc, what="the first logged step")
    proc.send_signal(signal.SIGINT)
    _wait_for(lambda: _temp_files(run), proc, what="the interrupt's checkpoint save")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10  # not the 60 s the save would have taken (measured ~0.7 s)
    assert proc.returncode == 130, (out, err)
    assert "interrupted again: quitting at once; the last checkpoint on disk is kept" in err
    assert "Traceback" not in out + err
    assert not (run / CKPT).exists() and not _temp_files(run)  # nothing torn left behind


# ---------------------------------------------------------------- 4: NaN


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(cli, tiny_config, tmp_path):
    """lr=1e6 without clipping blows up within a few steps.  A checkpoint is due at every step,
    but the loss is only read back every 5 steps, so the guard in the save itself must refuse
    the bad state.  Resuming the same run hits the same NaN and must not touch the good file."""
    cfg = _write_config(tmp_path, tiny_config, lr=1e6, grad_clip=0.0, ckpt_interval=1, log_interval=5,
                        warmup_steps=0)
    run = tmp_path / "run"
    r = cli("train", cfg, "--out", run)
    assert r.code == 1, r
    assert "Traceback" not in r.err
    m = re.search(r"error: the loss became NaN or infinite at step (\d+); the last good checkpoint was kept", r.err)
    assert m, r.err
    bad_step = int(m.group(1))
    assert ("hint: lower train.lr (now 1e+06) or turn train.grad_clip on (now 0; e.g. 1.0); "
            "the run is already float32, so precision is not the cause") in r.err
    assert _ckpt_step(run) == bad_step - 1  # the step before the fault, nothing later
    import torch

    assert all(torch.isfinite(t).all() for t in _tensors(run / CKPT).values())

    good = (run / CKPT).read_bytes()
    r = cli("train", "--resume", run)
    assert r.code == 1 and f"at step {bad_step};" in r.err, r
    assert (run / CKPT).read_bytes() == good  # never overwritten by a bad one


# ---------------------------------------------------------------- 5: untrusted files


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil_run(tmp_path: Path, tiny_config: dict, name: str) -> tuple[Path, Path]:
    """A directory that looks like a run (config.yaml, tokenizer.json) and its marker path."""
    from tformer_cli.core.config import from_dict

    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(from_dict(tiny_config).to_yaml())
    (run / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": "abc"}))
    return run, tmp_path / f"{name}-marker"


def test_the_crafted_pickle_is_live(tmp_path):
    """Guard for the tests below: the payload really does create the marker when unpickled."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


def test_pickle_named_checkpoint_safetensors_is_refused(cli, tiny_config, tmp_path):
    run, marker = _evil_run(tmp_path, tiny_config, "run")
    (run / CKPT).write_bytes(pickle.dumps(_Evil(marker)))
    for args in (("sample", run, "--prompt", "a", "--max-new-tokens", "2"), ("train", "--resume", run)):
        r = cli(*args)
        assert r.code == 1, (args, r)
        assert f"error: checkpoint {run / CKPT} is a pickle, which tformer refuses to load" in r.err, r
        assert "Traceback" not in r.err
    assert not marker.exists()


def test_torch_pickle_checkpoint_pt_is_refused(cli, tiny_config, tmp_path):
    import torch

    run, marker = _evil_run(tmp_path, tiny_config, "run")
    torch.save({"model": _Evil(marker)}, run / "checkpoint.pt")
    r = cli("sample", run, "--prompt", "a", "--max-new-tokens", "2")
    assert r.code == 1, r
    assert (f"error: {run / 'checkpoint.pt'} is a pickle file; tformer refuses to load pickles "
            "(they can run code)") in r.err
    assert not marker.exists()

    # The same zip-of-pickles under the checkpoint's own name: refused as a pickle, unread.
    (run / "checkpoint.pt").rename(run / CKPT)
    r = cli("sample", run, "--prompt", "a", "--max-new-tokens", "2")
    assert r.code == 1 and f"error: checkpoint {run / CKPT} is a pickle, which tformer refuses" in r.err, r
    assert not marker.exists()


def test_a_safetensors_header_whose_size_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A header of 0x1280 bytes begins the file with 80 12 ...: a pickle's first byte.  One checkpoint
    in 256 has such a size (a trained 1-layer member was refused this way)."""
    import json
    import struct

    from tformer_cli.errors import RunError
    from tformer_cli.run.validate import read_safetensors_header

    n = 0x1280
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode().ljust(n, b" ")  # safetensors pads with spaces
    path = tmp_path / CKPT
    path.write_bytes(struct.pack("<Q", n) + header)
    assert path.read_bytes()[:1] == b"\x80"
    assert read_safetensors_header(path) == ({"__metadata__": {"format": "pt"}}, 0)
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(RunError, match="is a pickle"):
        read_safetensors_header(path)


def test_yaml_python_tags_are_refused(cli, tmp_path):
    marker = tmp_path / "marker"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    r = cli("train", cfg, "--out", tmp_path / "run")
    assert r.code == 2, r
    assert f"error: cannot parse {cfg} at line 1, column 8: " in r.err
    assert "tags that construct Python objects are not allowed" in r.err
    r = cli("train", "--set", f'model.d_model=!!python/object/apply:os.system ["touch {marker}"]',
            "--out", tmp_path / "run2")
    assert r.code == 2, r
    assert not marker.exists()


def test_no_unpickling_or_unsafe_yaml_in_the_package():
    """Static guard: the package never calls pickle, torch.load or an unsafe YAML loader."""
    root = Path(__file__).resolve().parent.parent / "tformer_cli"
    banned = re.compile(r"\bimport (c?pickle|dill|marshal)\b|\bpickle\.(loads?|Unpickler)\b|\btorch\.load\(|"
                        r"\byaml\.load\(|unsafe_load|yaml\.(Full|Unsafe)?Loader\b")
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert not offenders, offenders


# ---------------------------------------------------------------- disk full, OOM


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(cli, tiny_yaml, tmp_path, monkeypatch):
    """The first checkpoint (step 10) is written; the fsync of the second raises ENOSPC."""
    real_fsync = os.fsync
    saves = []

    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if f".{CKPT}." in name:
            saves.append(name)
            if len(saves) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    if not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc to tell which file is being synced")
    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    r = cli("train", tiny_yaml, "--out", run)
    assert r.code == 1, r
    assert (f"error: the disk is full: cannot save the step-20 checkpoint to {run / CKPT}; "
            "the previous checkpoint was kept") in r.err
    assert f"hint: free some space, then continue with: tformer train --resume {run}" in r.err
    assert "Traceback" not in r.err and len(saves) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _ckpt_step(run) == 10 and not _temp_files(run)


def test_cuda_out_of_memory_gets_a_hint(cli, tiny_yaml, tmp_path, monkeypatch):
    import torch

    from tformer_cli.core import model

    def oom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model.GPT, "forward", oom)
    r = cli("train", tiny_yaml, "--out", tmp_path / "run")
    assert r.code == 1, r
    assert r.err.splitlines() == [
        "error: the GPU ran out of memory",
        "hint: use a smaller train.batch_size or model.block_size, or raise train.grad_accum",
    ]


# ---------------------------------------------------------------- 7: determinism


def test_same_seed_same_metrics_and_weights(cli, tiny_config, tmp_path):
    tiny_config["model"]["dropout"] = 0.1
    cfg = _write_config(tmp_path, tiny_config, steps=6, eval_interval=3, log_interval=2)
    runs = [tmp_path / n for n in ("a", "b", "other_seed")]
    for run in runs[:2]:
        assert cli("train", cfg, "--out", run).code == 0
    assert cli("train", cfg, "--out", runs[2], "--seed", "7").code == 0
    a, b, c = ((r / "metrics.jsonl").read_text() for r in runs)
    assert a == b and a != c  # the file can tell seeds apart, so equality means something
    rows = [json.loads(line) for line in a.splitlines()]
    assert all(math.isfinite(v) for row in rows for v in row.values())
    assert not any("tokens_per_s" in row or "time" in "".join(row) for row in rows)  # no timings
    _assert_same_weights(runs[0], runs[1])
