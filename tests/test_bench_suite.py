"""bench/suite.py: its tables, and its nanoGPT driver on a few steps (nanoGPT is not part of
the repository: the driver test runs only where a nanoGPT checkout sits beside it)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
NANOGPT = BENCH.parent.parent / "shared" / "anchors" / "nanogpt"


def _suite():
    return _bench_module("suite")


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
        cmd = [sys.executable, "-m", "bench.nanogpt_driver", *args, "--nanogpt", str(tmp_path / "nanogpt")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=BENCH.parent)
        return json.loads(out.stdout)

    r = driver("train", "--data", data, "--steps", "3", "--eval-interval", "2", "--eval-iters", "1",
               "--out", str(tmp_path / "out"))
    assert r["steps_done"] == 4 and r["val_loss"] > 0 and (tmp_path / "out" / "ckpt.pt").exists()
    assert driver("step", "--steps", "2", "--warmup", "1")["step_ms"] > 0
    assert driver("sample", "--tokens", "3")["tokens_per_s"] > 0


# ---------------------------------------------------------------- the GPU suite, without a GPU


def _bench_module(name: str):
    """bench.NAME, imported as the scripts import each other (pyproject's pytest pythonpath puts the
    repository root on sys.path)."""
    return importlib.import_module(f"bench.{name}")


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m bench.NAME ARGS`` from the repository root, as a user runs it, without CUDA."""
    import os

    env = {**os.environ, "PYTHONPATH": str(BENCH.parent), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", f"bench.{name}", *args], capture_output=True, text=True, env=env,
                          cwd=BENCH.parent)


def test_suite_gpu_without_cuda_says_so_in_one_line_and_exits_2():
    r = _script("suite", "--gpu")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "no CUDA device" in r.stderr
    bad = _script("suite", "--gpu", "--sections", "az")
    assert bad.returncode == 2 and "--sections: unknown z" in bad.stderr


def test_gpu_step_variants_parse_and_refuse_nonsense():
    gs = _bench_module("gpu_step")
    v = gs.parse_variant("tformer:compiled:B24:V50257:x64")
    assert (v["project"], v["compiled"], v["batch"], v["vocab"], v["multiple"]) == ("tformer", True, 24, 50257, 64)
    assert gs.parse_variant("nanogpt:eager:B12:V50304")["multiple"] == 1
    medium = gs.parse_variant("tformer:compiled:B8:V50304:medium")
    assert medium["shape"] == "medium"
    assert gs.config(medium).model.n_layer == 24 and gs.config(medium).model.d_model == 1024
    assert gs.parse_variant("tformer:compiled:B8:V50257:x64:large")["multiple"] == 64
    for bad in ("tformer:fast:B12:V1", "gpt:eager:B12:V1", "nanogpt:eager:B12:V50257:x64", "tformer:eager:12:V1",
                "nanogpt:eager:B12:V50304:medium", "tformer:eager:B1:V1:huge", "tformer:eager:B1:V1:medium:large"):
        with pytest.raises(ValueError):
            gs.parse_variant(bad)
    cfg = gs.config(v)
    assert cfg.model.padded_vocab(50257) == 50304 and cfg.train.batch_size == 24 and cfg.model.n_layer == 12
    for variant in gs.config(gs.parse_variant("tformer:eager:B12:V50304")), cfg:
        assert variant.model.block_size == 1024 and not variant.model.bias and variant.train.grad_accum == 1


@pytest.mark.slow
def test_gpu_step_runs_tformer_variants_on_the_cpu():
    r = _script("gpu_step", "--device", "cpu", "--warmup", "1", "--steps", "1", "--blocks", "2",
                "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
                "--set", "model.block_size=16", "tformer:eager:B2:V100", "tformer:eager:B2:V100:x64")
    assert r.returncode == 0, r.stderr[-2000:]
    card, got = _bench_module("gpu_suite").parse_step_lines(r.stdout)
    assert card["device"] == "cpu" and card["matmul_flops"] > 0
    assert [len(v["step_s"]) for v in got.values()] == [2, 2]
    assert got["tformer:eager:B2:V100:x64"]["flops_per_token"] > got["tformer:eager:B2:V100"]["flops_per_token"]


def _fake_step_output(cut: bool = False) -> str:
    lines = [{"kind": "card", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "matmul_flops": 800e12,
              "datasheet_flops": 989e12}]
    for name in ("tformer:compiled:B12:V50304", "nanogpt:compiled:B12:V50304"):
        lines.append({"kind": "variant", "name": name, "warmup_s": 30.0, "tokens_per_step": 12288,
                      "flops_per_token": 1_000_000_000})
    for block in range(3):
        lines.append({"kind": "block", "name": "tformer:compiled:B12:V50304", "block": block,
                      "step_s": 0.020 + block / 1000})
        if not cut:
            lines.append({"kind": "block", "name": "nanogpt:compiled:B12:V50304", "block": block, "step_s": 0.030})
    return "\n".join(json.dumps(x) for x in lines) + "\nnot json\n"


def test_gpu_tables_from_fake_figures():
    gsu = _bench_module("gpu_suite")
    card, got = gsu.parse_step_lines(_fake_step_output())
    rows = gsu.step_rows(card, got)
    # 12288 tokens / 21 ms = 585k tok/s; x 1e9 FLOPs = 585 TFLOP/s: 59.2% of 989, 73.1% of the matmul's 800
    assert rows[0] == ["tformer:compiled:B12:V50304", "21.0 (20.0-22.0)", "585k", "59.2%", "73.1%"]
    assert rows[1][1:] == ["30.0 (30.0-30.0)", "410k", "41.4%", "51.2%"]
    pairs = [("compiled", "tformer:compiled:B12:V50304", "nanogpt:compiled:B12:V50304"), ("absent", "x", "y")]
    assert gsu.speedups(got, pairs) == ["compiled: 1.43x"]  # 30 / 21, and no line for a pair not timed
    line = gsu.card_line(card)
    assert "800 TFLOP/s timed bf16 8192^3 matmul" in line and "989 TFLOP/s datasheet" in line
    card, got = gsu.parse_step_lines(_fake_step_output(cut=True))
    assert gsu.step_rows(card, got)[1][1] == "not timed (cut short)"
    assert gsu.speedups(got, pairs) == []
    text = _suite().table(["variant", "ms/step", "tok/s", "MFU sheet", "MFU matmul"], rows)
    assert max(len(line) for line in text.splitlines()) <= 80 and text.startswith("| variant |")


def test_train_rows_read_the_summary_and_the_first_interval(tmp_path):
    gsu = _bench_module("gpu_suite")
    (tmp_path / "perf.jsonl").write_text(json.dumps({"step": 10, "tokens_per_s": 30000.0}) + "\n"
                                         + json.dumps({"step": 20, "tokens_per_s": 600000.0}) + "\n")
    assert gsu.first_rate(str(tmp_path)) == 30000.0 and gsu.first_rate(str(tmp_path / "none")) is None
    result = {"tokens_per_s": 601e3, "mfu": 0.402, "peak_flops": 989e12, "compiled": False,
              "compile_reason": "off: an eager run"}
    row = gsu.train_row("policy (unset)", result, 30000.0, 42.4, 800e12)
    assert row == ["policy (unset)", "off (off: an eager run)", "601k", "40.2%", "49.7%", "30k", "42"]


def test_a_section_is_cut_at_the_deadline_and_keeps_what_it_printed():
    gsu = _bench_module("gpu_suite")
    ran = gsu.run_capture([sys.executable, "-c", "import time; print('first', flush=True); time.sleep(30)"], 2)
    assert ran.code is None and ran.out.strip() == "first" and ran.wall < 10
    budget = gsu.Budget(0)
    assert budget.left() <= 0


def test_op_profile_classifies_kernels_by_name():
    op = _bench_module("op_profile")
    assert op.kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert op.kind_of("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert op.kind_of("void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, float>") == "cross-entropy"
    assert op.kind_of("void at::native::nll_loss_forward_reduce_cuda_kernel_2d<float>") == "cross-entropy"
    assert op.kind_of("void at::native::(anonymous namespace)::fused_adamw_kernel") == "optimizer"
    assert op.kind_of("void at::native::multi_tensor_apply_kernel<LpNormFunctor>") == "optimizer"
    assert op.kind_of("void at::native::vectorized_layer_norm_kernel<c10::BFloat16>") == "other"
    shares = op.kernel_shares({"gemm_a": [30.0, 30.0], "flash_fwd": [20.0], "nll_loss_x": [10.0],
                               "elementwise": [10.0]})
    assert shares == pytest.approx({"attention": 0.2, "matmul": 0.6, "cross-entropy": 0.1, "optimizer": 0.0,
                                    "other": 0.1})


def test_gpu_check_script_is_valid_bash_and_names_every_step():
    script = (BENCH / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")]).returncode == 0
    for needed in ("nvidia-smi", "pytest", "tformer_cli train", "--bench", "-m bench.op_profile",
                   "tformer_cli study induction",
                   "-m bench.suite --gpu", "$OUT", "-m bench.batched --exactness --device cuda",
                   "study sweep_heads --seeds 24 --device cuda", "--set train.dtype=bfloat16 --set train.tf32=true",
                   "tformer_cli study --all --device cuda"):
        assert needed in script, needed


def test_op_profile_reads_gpu_events_only():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, kind, us):
        return SimpleNamespace(name=name, device_type=kind, time_range=SimpleNamespace(elapsed_us=lambda: us))

    op = _bench_module("op_profile")
    got = op.kernel_times([event("gemm", DeviceType.CUDA, 5.0), event("aten::mm", DeviceType.CPU, 9.0),
                           event("gemm", DeviceType.CUDA, 7.0)])
    assert got == {"gemm": [5.0, 7.0]}


def test_decode_gpu_runs_every_path_on_the_cpu_and_their_tokens_agree():
    """bench/decode_gpu.py at a tiny shape on the CPU (the graph path falls back to the static step
    there): the script the GPU session runs works end to end, and exits 0 only when tokens agree."""
    r = _script("decode_gpu", "--device", "cpu", "--small", "--new-tokens", "16")
    assert r.returncode == 0, r.stderr
    for label in ("static", "dynamic", "recompute"):
        assert label in r.stdout, r.stdout
    bare = _script("decode_gpu")  # the default device is cuda: none here
    assert bare.returncode != 0 and bare.stderr.strip().count("\n") == 0, bare.stderr


def test_sweep_rows_read_the_members_step_times_and_graph_state(tmp_path):
    gsu = _bench_module("gpu_suite")
    for i, (ms, graphed) in enumerate([(1.5, True), (2.5, True), (9.0, True)]):
        member = tmp_path / "members" / f"m{i}"
        member.mkdir(parents=True)
        (member / "summary.json").write_text(json.dumps({"ms_per_step": ms, "cuda_graph": graphed, "elapsed_s": ms}))
    (tmp_path / "members" / "broken").mkdir()
    (tmp_path / "members" / "broken" / "summary.json").write_text("{not json")
    assert gsu.member_steps(str(tmp_path)) == ["2.50", "2.5", "yes"]
    assert gsu.member_steps(str(tmp_path / "absent")) == ["-", "-", "-"]
    rows = [{"setup_s": 1.0, "steps_s": 2.0, "eval_s": 0.5, "checkpoint_s": 0.25, "measure_s": 3.0},
            {"setup_s": 1.5, "steps_s": 2.0, "eval_s": 0.5, "checkpoint_s": 0.25, "measure_s": None}]
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))
    assert gsu.time_split(str(tmp_path), 20.0) == ["2.5", "4.0", "1.5", "3.0", "9.0"]
    assert gsu.time_split(str(tmp_path), 20.0, overlapped=True) == ["2.5", "4.0", "1.5", "3.0", "-"]
    assert gsu.time_split(str(tmp_path / "absent"), 20.0) == ["-"] * 5


@pytest.mark.slow
@pytest.mark.skipif(not (NANOGPT / "model.py").exists(), reason="no nanoGPT checkout beside the repository")
def test_eager_ab_compares_both_steps_by_operator_on_the_cpu(tmp_path):
    """bench/eager_ab.py on a tiny shape: both steps timed, then a row per operator and per kind."""
    (tmp_path / "nanogpt").mkdir()
    (tmp_path / "nanogpt" / "model.py").write_text((NANOGPT / "model.py").read_text())
    r = _script("eager_ab", "--device", "cpu", "--small", "--timed", "2", "--steps", "1",
                "--top", "5", "--nanogpt", str(tmp_path / "nanogpt"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tformer / nanoGPT: " in r.stdout and r.stdout.count(" ms/step (median of 2") == 2
    table = r.stdout.split("largest differences first:\n")[1].split("\n\n")[0].splitlines()
    assert len(table) == 6 and table[0].endswith("name (per step)") and "aten::" in table[1]
    assert "  matmul" in r.stdout or "  other" in r.stdout
    assert r.stdout.rstrip().endswith("all")


def test_precision_compares_each_cached_path_with_recompute_per_dtype():
    r = _script("precision", "--small", "--new-tokens", "6")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| float32") or line.startswith("| bfloat16")]
    assert [line.split(" | ")[:2] for line in rows] == [["| float32", "dynamic"], ["| float32", "static"],
                                                         ["| bfloat16", "dynamic"], ["| bfloat16", "static"]]
    assert all(line.count("|") == 7 for line in rows)  # six cells: no pipe inside one
    assert rows[0].split(" | ")[2] == "yes"  # float32 agrees on the tiny model


def test_decode_gpu_variants_and_profile_run_on_the_cpu():
    """--variants and --profile through the command line: with no time for variants every one is
    skipped (each on its own row), and the profile covers both weight dtypes (without the table of
    paths, which the test above runs)."""
    r = _script("decode_gpu", "--device", "cpu", "--small", "--new-tokens", "8", "--no-paths",
                "--variants", "--variants-budget-s", "0", "--profile")
    assert r.returncode == 0, r.stderr[-2000:]
    n = len(_bench_module("decode_gpu").VARIANTS)
    assert r.stdout.count("| skipped: the variants have taken") == n == 15, r.stdout
    assert "| bfloat16, sdpa, compiled by block | - | - | - | skipped" in r.stdout
    assert "| float32, matmul, no overlap | - | - | - | skipped" in r.stdout
    for dtype in ("float32", "bfloat16"):
        assert f"at window position 32, {dtype}, cpu" in r.stdout
    assert r.stdout.count("operator calls per step") == 2 and "aten::addmm" in r.stdout


def test_decode_gpu_variants_report_each_failure_and_timeout_on_its_row_and_go_on(monkeypatch, capsys):
    """Only the stuck variant runs under the time limit (the real SIGALRM one), the others under
    none and within no budget: no row depends on how fast the machine is."""
    from types import SimpleNamespace

    import torch

    from tformer_cli.core import generate as generate_module

    dg = _bench_module("decode_gpu")
    real, real_limit = dg.variant_cells, dg.time_limit
    stuck = iter([False, True, False, False])  # VARIANTS below, in order: the second never ends

    def cells(models, refs, prompt, n, variant):
        if variant[1] == "boom":
            raise RuntimeError("boom\nsecond line")
        if variant[1] == "slow":
            while True:
                pass
        return real(models, refs, prompt, n, variant)

    monkeypatch.setattr(dg, "variant_cells", cells)
    monkeypatch.setattr(dg, "time_limit", lambda seconds: real_limit(seconds if next(stuck) else 0))
    monkeypatch.setattr(dg, "VARIANTS", [("float32", "boom", "off", True, True),
                                         ("float32", "slow", "off", True, True),
                                         ("float32", "matmul", "off", True, True),
                                         ("bfloat16", "sdpa", "off", False, False)])
    args = SimpleNamespace(new_tokens=8, prompt_tokens=8, variant_timeout_s=0.3, variants_budget_s=1e9, pick=None)
    models = dg.Models(dg.SMALL, torch.device("cpu"))
    dg.print_variants(args, models, dg.prompt_of(args, dg.SMALL))
    out = capsys.readouterr()
    assert "| float32, boom | - | - | - | failed: RuntimeError: boom |" in out.out
    assert "| float32, slow | - | - | - | failed: VariantTimeout: timed out after 0.3 s |" in out.out
    assert "| float32, matmul | " in out.out and "| float32, matmul | - |" not in out.out  # measured
    last = out.out.rstrip().splitlines()[-2]
    assert last.startswith("| bfloat16, sdpa, no overlap, keys and values written apart | ")
    assert last.endswith("| yes |")
    assert models.get("bfloat16").paired_kv_write is True  # restored
    assert "second line" in out.err  # the traceback, for the log
    assert models.get("float32").step_attention == "auto" and dg.decode.COMPILE_STEP == "off"  # restored
    assert generate_module.OVERLAP_DEVICES == ("cuda",)


def test_decode_gpu_kernel_lines_count_kernels_per_step_and_keep_whole_names():
    """--profile's CUDA table, from stand-in profiler events (the CPU has no device kernels)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, kind, us):
        return SimpleNamespace(name=name, device_type=kind, time_range=SimpleNamespace(elapsed_us=lambda: us))

    long_name = "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x64_16x6_tn_align4>(" + "x" * 200 + ")"
    events = [event(long_name, DeviceType.CUDA, 10.0)] * 4 + [event("gemv", DeviceType.CUDA, 5.0)] * 2
    events += [event("aten::mm", DeviceType.CPU, 99.0)]
    lines = _bench_module("decode_gpu").kernel_lines(SimpleNamespace(events=lambda: events), steps=2)
    assert lines[0].startswith("3.0 device kernels per step") and "0.025 ms of device time per step" in lines[0]
    assert lines[2].endswith("  " + long_name) and lines[2].split()[:4] == ["20.0", "80.0%", "2.0", "10.00"]
    assert lines[3].split() == ["5.0", "20.0%", "1.0", "5.00", "gemv"] and len(lines) == 4
