"""The GPU engine's decisions, testable on the CPU (issue 18): train.compile's default compiles only
where the estimated saving exceeds the compile's cost, and says why; --jobs packs members onto GPUs."""

from __future__ import annotations

import json

from tformer_cli.core.config import resolve
from tformer_cli.train.compile_policy import compile_decision


def test_a_setting_wins_and_the_cpu_does_not_compile():
    cfg = resolve(preset="quick")
    assert compile_decision(cfg, "cpu", "float32", 100) == (
        False, "off on cpu (measured slower there; train.compile=true forces it)")
    for value in (True, False):
        on, why = compile_decision(cfg.replace({"train.compile": value}), "cuda", "bfloat16", 100)
        assert on is value and why == f"train.compile={'true' if value else 'false'}"


def test_on_cuda_a_tiny_run_stays_eager_and_a_long_large_one_compiles():
    tiny = resolve(preset="quick", overrides={"train.steps": 300})
    on, why = compile_decision(tiny, "cuda", "bfloat16", 100)
    assert not on and why.startswith("off: an eager run of about 1 s")
    big = resolve(preset="gpt2_small")
    on, why = compile_decision(big, "cuda", "bfloat16", 50304)
    assert on and why.startswith("on: about")
    # the same model for 20 steps (or resumed 20 steps before its end) does not pay for it
    assert not compile_decision(big.replace({"train.steps": 20}), "cuda", "bfloat16", 50304)[0]
    assert not compile_decision(big, "cuda", "bfloat16", 50304, steps_left=20)[0]


def test_the_run_summary_says_which_was_chosen_and_why(cli, tiny_yaml, tmp_path):
    r = cli("train", tiny_yaml, "--out", tmp_path / "run", "--steps", "2")
    assert r.code == 0 and "compile" in r.out and "off on cpu (measured slower there" in " ".join(r.out.split())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["compiled"] is False and summary["compile_reason"].startswith("off on cpu")


def test_members_are_packed_onto_gpus_as_memory_allows():
    from tformer_cli.study.runner import CUDA_PROCESS_BYTES, pack_slots

    gib = 2**30
    need = gib - CUDA_PROCESS_BYTES  # one member and its process: 1 GiB
    # plenty of memory: round-robin over the devices, jobs at a time
    assert pack_slots(["cuda:0", "cuda:1"], 5, need, {"cuda:0": 80 * gib, "cuda:1": 80 * gib}) == \
        ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    # 2.5 GiB free on the first: two there, the rest on the second
    assert pack_slots(["cuda:0", "cuda:1"], 6, need, {"cuda:0": int(2.5 * gib), "cuda:1": 80 * gib}) == \
        ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:1", "cuda:1"]
    # too little anywhere: still one per device (the member reports its own out-of-memory)
    assert pack_slots(["cuda:0"], 4, need, {"cuda:0": gib // 2}) == ["cuda:0"]
    assert pack_slots(["cuda:0"], 3, need, {"cuda:0": None}) == ["cuda:0"] * 3  # unknown: trust --jobs


def test_the_packing_estimate_is_the_largest_members(tiny_config):
    from tformer_cli.core.config import from_dict
    from tformer_cli.study.members import grid_members
    from tformer_cli.study.runner import member_bytes
    from tformer_cli.study.spec import Spec

    base = from_dict(tiny_config)
    small = Spec("sweep", base.to_dict(), grid_members(base, {"model.d_model": [32]}), [1])
    both = Spec("sweep", base.to_dict(), grid_members(base, {"model.d_model": [32, 128]}), [1])
    assert 0 < member_bytes(small) < member_bytes(both)
