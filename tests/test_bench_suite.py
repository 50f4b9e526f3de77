"""bench/suite.py: its tables, and its nanoGPT driver on a few steps (nanoGPT is not part of
the repository: the driver test runs only where a nanoGPT checkout sits beside it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
NANOGPT = BENCH.parent.parent / "shared" / "anchors" / "nanogpt"


def _suite():
    spec = importlib.util.spec_from_file_location("bench_suite", BENCH / "suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cells_give_median_and_spread_and_ratios_come_from_medians():
    suite = _suite()
    assert suite.cell([22.1, 23.5, 22.8]) == "22.8 (22.1-23.5)"
    assert suite.cell([3.0]) == "3.0"
    assert suite.ratio([30.0, 28.0, 29.0], [20.0, 25.0, 21.0]) == "1.38x"


def test_report_names_date_machine_and_load_and_fits_80_columns():
    suite = _suite()
    rows = [["train 600 steps, wall s", "22.8 (22.1-23.5)", "22.6 (22.0-23.0)", "0.99x"],
            ["step L6 d384 T256 bf16, ms", "6104 (6001-6230)", "9400 (9310-9555)", "1.54x"]]
    text = suite.report(rows, ("1.20 1.10 1.00", "1.50 1.20 1.00"), 6.2, 3)
    assert "Load average" in text and "1.20 1.10 1.00 before" in text and "torch" in text
    assert "| measure | tformer | nanoGPT | tformer speed-up |" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.slow
@pytest.mark.skipif(not (NANOGPT / "model.py").exists(), reason="no nanoGPT checkout beside the repository")
def test_nanogpt_driver_trains_steps_and_samples_on_a_few_steps(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be: that is the question.\n" * 400)
    data = _suite().prepare_scratch(str(NANOGPT), str(text), scratch=str(tmp_path))
    assert (Path(data) / "train.bin").stat().st_size == 2 * int(0.9 * len(text.read_text()))

    def driver(*args: str) -> dict:
        cmd = [sys.executable, str(BENCH / "nanogpt_driver.py"), *args, "--nanogpt", str(tmp_path / "nanogpt")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    r = driver("train", "--data", data, "--steps", "3", "--eval-interval", "2", "--eval-iters", "1",
               "--out", str(tmp_path / "out"))
    assert r["steps_done"] == 4 and r["val_loss"] > 0 and (tmp_path / "out" / "ckpt.pt").exists()
    assert driver("step", "--steps", "2", "--warmup", "1")["step_ms"] > 0
    assert driver("sample", "--tokens", "3")["tokens_per_s"] > 0
