"""Hardware figures: datasheet peaks by GPU name, the CPU matmul peak, device selection errors."""

from __future__ import annotations

import pytest
import torch

from tformer_cli.core import device as dev
from tformer_cli.errors import ConfigError


@pytest.mark.parametrize("name, card, flops", [
    ("NVIDIA H100 80GB HBM3", "H100 80GB HBM3", 989e12),  # what an H100 SXM reports
    ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", "H100 NVL", 835e12),
    ("NVIDIA H200", "H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", "A100", 312e12),
])
def test_datasheet_peak_by_reported_name(name, card, flops):
    assert dev.datasheet_peak(name) == (card, flops)


def test_unknown_gpu_gets_no_guess():
    assert dev.datasheet_peak("NVIDIA GeForce GTX 1080") is None
    assert dev.datasheet_peak("NVIDIA H800") is None


def test_cpu_peak_is_a_positive_rate_and_cached():
    a = dev.peak_flops(torch.device("cpu"), torch.float32)
    assert a.flops > 1e8 and "timed float32 matmul" in a.source
    assert dev.peak_flops(torch.device("cpu"), torch.float32) is a


def test_missing_cuda_is_a_usage_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        dev.select("cuda")
