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


def test_arithmetic_names_what_the_matmuls_computed_in():
    """train.tf32 decides TF32 on CUDA (a process-wide flag, set by every run's set-up), and the
    label a summary and a verdict carry follows it; on the CPU float32 is float32."""
    cuda = torch.device("cuda")  # a device object needs no card: only the flags are set and read
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        dev.setup_backends(cuda, tf32=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert dev.arithmetic(cuda, torch.float32) == "float32 on cuda"
        dev.setup_backends(cuda, tf32=True)
        assert dev.arithmetic(cuda, torch.float32) == "float32, TF32 matmuls, on cuda"
        assert dev.arithmetic(cuda, torch.bfloat16) == "bfloat16 autocast on cuda"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    cpu = torch.device("cpu")
    assert dev.arithmetic(cpu, torch.float32) == "float32 on cpu"
    assert dev.arithmetic(cpu, torch.bfloat16) == "bfloat16 autocast on cpu"
