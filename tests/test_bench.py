"""`tformer bench` reports every figure the README promises, for any config."""

from __future__ import annotations

import json

import pytest


def test_bench_reports_step_time_throughput_mfu_memory_and_shares(cli, tiny_yaml):
    r = cli("bench", tiny_yaml, "--steps", "3", "--warmup", "1", "--json")
    assert r.code == 0, r
    d = json.loads(r.out)
    assert d["step_ms_min"] <= d["step_ms"] <= d["step_ms_max"]
    assert d["train_tokens_per_s"] == pytest.approx(4 * 16 / (d["step_ms"] / 1000), rel=1e-6)
    assert d["forward_tokens_per_s"] > 0 and d["peak_memory_bytes"] > 0
    # MFU is FLOPs/token x tokens/s over the peak, and the report says where the peak came from
    assert d["mfu"] == pytest.approx(d["flops_per_token"] * d["train_tokens_per_s"] / d["peak_flops"])
    assert "timed float32 matmul" in d["peak_source"]
    for shares in (d["flops_share"], d["time_share"]):
        assert set(shares) == {"attention", "ffn", "rest"}
        assert sum(shares.values()) == pytest.approx(1.0)
    r = cli("bench", tiny_yaml, "--steps", "2", "--warmup", "1")
    assert r.code == 0 and "MFU" in r.out and "forward time share" in r.out


def test_bench_refuses_bad_step_counts(cli, tiny_yaml):
    r = cli("bench", tiny_yaml, "--steps", "0")
    assert r.code == 2 and "--steps must be >= 1" in r.err


def test_heap_tuning_is_applied_on_linux_and_can_be_turned_off(monkeypatch):
    import sys

    from tformer_cli.core.device import tune_cpu_allocator

    monkeypatch.setenv("TFORMER_NO_MALLOC_TUNING", "1")
    assert tune_cpu_allocator() is False
    monkeypatch.delenv("TFORMER_NO_MALLOC_TUNING")
    assert tune_cpu_allocator() is sys.platform.startswith("linux")
