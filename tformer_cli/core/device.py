"""Devices, precision and the hardware figures behind MFU and peak memory."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass

import torch

from tformer_cli.errors import ConfigError

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s, keyed by a
# part of the name torch.cuda.get_device_name reports (an H100 SXM reports "H100 80GB HBM3").
DATASHEET_BF16 = {
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}


def datasheet_peak(device_name: str) -> tuple[str, float] | None:
    """(card, dense bf16 FLOP/s) for a GPU whose reported name contains a known card's name.

    The longest matching key wins, so "H100 PCIe" is never read as some other H100; an
    unknown card gets None (and a timed matmul instead of a guess)."""
    matches = [card for card in DATASHEET_BF16 if card.lower() in device_name.lower()]
    if not matches:
        return None
    card = max(matches, key=len)
    return card, DATASHEET_BF16[card]


def select(name: str = "auto") -> torch.device:
    """auto picks cuda > mps > cpu; an explicit device that is absent is a usage error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine",
                              hint="use --device cpu or --device auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available on this machine", hint="use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, what: str = "train.dtype") -> torch.dtype:
    """The torch dtype of ``name`` (auto: bfloat16 on a CUDA GPU that has it, else float32);
    bfloat16 asked for on a GPU without it is refused, naming ``what`` asked."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        from tformer_cli.errors import ConfigError

        raise ConfigError(f"{what}: bfloat16 is not supported on this GPU", hint="use float16 or float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype, cache: bool = True):
    """Mixed precision: weights and optimizer stay float32; matmuls run in ``dtype``.  ``cache``
    off: weights are cast again at every use, as a step captured in a CUDA graph needs."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def varying_shape_attention(device: torch.device):
    """Attention for passes over many different lengths (the causal-consistent loss's prefix
    passes): PyTorch's flash, memory-efficient or math kernels, not cuDNN's.  cuDNN's attention
    (PyTorch's first choice for bfloat16 on an H100) builds a graph for each new shape, reported at
    hundreds of milliseconds a build, and a prefix pass per length pays it once per length in every
    process; the others are ready-made kernels.  A no-op off CUDA."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def setup_backends(device: torch.device, tf32: bool = True) -> None:
    """The process-wide settings of a run on ``device``.  ``tf32`` (train.tf32): on CUDA, float32
    matmuls (a float32 run's, or those autocast leaves in float32) run as TensorFloat-32; off, in
    full float32, the CPU's arithmetic (the shipped studies pin that: docs/studies.md)."""
    if device.type == "cpu":
        tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def arithmetic(device: torch.device, dtype: torch.dtype) -> str:
    """What a run's matmuls computed in, for its summary and a study's verdict: "float32 on cpu",
    "float32, TF32 matmuls, on cuda", "bfloat16 autocast on cuda" (after setup_backends)."""
    if dtype != torch.float32:
        return f"{dtype_name(dtype)} autocast on {device.type}"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "float32, TF32 matmuls, on cuda"
    return f"float32 on {device.type}"


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

    glibc serves large blocks with fresh mmap'd pages, so every training step page-faults its
    activations back in (seconds of system time per step at nanoGPT's 6-layer 384 shape).
    Turning mmap off for the heap (M_MMAP_MAX=0) and raising the trim threshold makes the
    allocator reuse the same memory step after step (measured in BENCHMARKS.md).
    Process-wide; TFORMER_NO_MALLOC_TUNING=1 turns it off. Returns whether it was applied.
    """
    import ctypes
    import os

    if not sys.platform.startswith("linux") or os.environ.get("TFORMER_NO_MALLOC_TUNING") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "mallopt"):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    ok = libc.mallopt(m_mmap_max, 0)
    ok &= libc.mallopt(m_trim_threshold, 1 << 30)
    return bool(ok)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Peak:
    flops: float  # FLOP/s
    source: str  # how it was obtained


_PEAK_CACHE: dict[tuple[str, str], Peak] = {}


def peak_flops(device: torch.device, dtype: torch.dtype) -> Peak:
    """The denominator of MFU: the datasheet bf16 peak for known GPUs, else a timed matmul."""
    key = (str(device), str(dtype))
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        known = datasheet_peak(torch.cuda.get_device_name(device))
        if known is not None:
            _PEAK_CACHE[key] = Peak(known[1], f"datasheet dense bf16 peak of {known[0]}")
            return _PEAK_CACHE[key]
    _PEAK_CACHE[key] = Peak(timed_matmul(device, dtype), f"timed {dtype_name(dtype)} matmul on {device.type}")
    return _PEAK_CACHE[key]


def timed_matmul(device: torch.device, dtype: torch.dtype, m: int = 2048, k: int = 4096, n: int = 2048) -> float:
    """Best of a few (m x k) @ (k x n) products, in FLOP/s.

    On a CPU a short probe first estimates the rate, and the product shrinks until one takes
    at most about 0.25 s: a dtype without hardware support (float16 on most CPUs) can be a
    hundred times slower than float32, and timing it at full size would take minutes.
    """
    if device.type == "cuda":
        m, k, n = 8192, 8192, 8192
    elif device.type == "cpu":
        rate = 2.0 * 256**3 / _best_time(256, 256, 256, device, dtype, repeats=2)
        while 2.0 * m * k * n / rate > 0.25 and m > 256:
            m, k, n = m // 2, k // 2, n // 2
    best = _best_time(m, k, n, device, dtype, repeats=6 if device.type == "cpu" else 10)
    return 2.0 * m * k * n / best


def _best_time(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """The fastest of ``repeats`` timed products after one warm-up (other load only slows it)."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
