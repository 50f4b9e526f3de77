"""Benchmarks: time training and forward steps of any config; MFU, memory, where the time goes.

The training code of tformer_cli.train is reused piece by piece (optimizer, autocast,
compile), on random token ids so that the figures measure the model and optimizer, not the
corpus.  Timings are medians over steps after warm-up; on CUDA each step is synchronised.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from tformer_cli.core import anatomy
from tformer_cli.core import device as dev
from tformer_cli.core.config import Config
from tformer_cli.core.memory import check_fits
from tformer_cli.core.model import build_model
from tformer_cli.train.optim import make_optimizer


@dataclass
class BenchResult:
    shape: str
    device: str
    dtype: str
    compiled: bool
    batch_size: int
    block_size: int
    params: int
    steps_timed: int
    step_ms: float  # median training step (forward + backward + clip + AdamW)
    step_ms_min: float
    step_ms_max: float
    train_tokens_per_s: float
    forward_ms: float  # median forward-only step (no grad)
    forward_tokens_per_s: float
    flops_per_token: int
    mfu: float
    peak_flops: float
    peak_source: str
    peak_memory_bytes: int
    memory_source: str
    flops_share: dict[str, float] = field(default_factory=dict)  # attention / ffn / rest, of training FLOPs
    time_share: dict[str, float] = field(default_factory=dict)  # attention / ffn / rest, of forward time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shape_name(cfg: Config) -> str:
    m = cfg.model
    return f"{m.arch} L{m.n_layer} H{m.n_head} d{m.d_model} T{m.block_size} B{cfg.train.batch_size}"


def bench(
    cfg: Config,
    steps: int = 20,
    warmup: int = 5,
    vocab_size: int = 65,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time ``steps`` training steps and ``steps`` forward steps after ``warmup`` of each."""
    say = progress or (lambda s: None)
    s = StepBench(cfg, vocab_size)
    say(f"warming up ({warmup} steps{', compiling' if s.compiled else ''})")
    train_times = _time(s.train_step, warmup, steps, s.device)
    say("forward-only steps")
    s.model.eval()
    fwd_times = _time(s.forward_step, warmup, steps, s.device)
    s.model.train()
    mem, mem_src = dev.peak_memory(s.device)
    say("timing a matmul for the peak")
    peak = dev.peak_flops(s.device, s.dtype)
    totals = anatomy.totals(cfg.model, vocab_size)
    B, T = cfg.train.batch_size, cfg.model.block_size
    step_s = statistics.median(train_times)
    tps = B * T * cfg.train.grad_accum / step_s
    return BenchResult(
        shape=shape_name(cfg), device=str(s.device), dtype=dev.dtype_name(s.dtype), compiled=s.compiled,
        batch_size=B, block_size=T, params=s.raw.num_params(), steps_timed=steps,
        step_ms=1000 * step_s, step_ms_min=1000 * min(train_times), step_ms_max=1000 * max(train_times),
        train_tokens_per_s=tps, forward_ms=1000 * statistics.median(fwd_times),
        forward_tokens_per_s=B * T / statistics.median(fwd_times), flops_per_token=totals.flops_per_token,
        mfu=tps * totals.flops_per_token / peak.flops, peak_flops=peak.flops, peak_source=peak.source,
        peak_memory_bytes=mem, memory_source=mem_src, flops_share=_flops_share(totals.by_group_flops),
        time_share=(_forward_time_share(s.raw, s.x, s.device, s.dtype) if cfg.model.arch == "gpt" else {}),
    )


class StepBench:
    """The model, optimizer and one fixed random batch of a benchmark, and the two timed steps
    (bench/gpu_step.py times train_step side by side with nanoGPT's, in one process)."""

    def __init__(self, cfg: Config, vocab_size: int):
        self.cfg = cfg
        self.device = dev.select(cfg.train.device)
        dev.setup_backends(self.device, cfg.train.tf32)
        self.dtype = dev.resolve_dtype(cfg.train.dtype, self.device)
        torch.manual_seed(cfg.train.seed)
        # refused with the figure and the key to lower, before anything is allocated
        check_fits(cfg.model, vocab_size, cfg.train.batch_size, self.device, training=True, what="the benchmark")
        self.raw = build_model(cfg.model, vocab_size).to(self.device)
        self.optimizer = make_optimizer(self.raw, cfg, self.device)
        self.compiled = bool(cfg.train.compile if cfg.train.compile is not None else self.device.type == "cuda")
        self.model = torch.compile(self.raw) if self.compiled else self.raw
        shape = (cfg.train.batch_size, cfg.model.block_size)
        self.x = torch.randint(0, vocab_size, shape, device=self.device)
        self.y = torch.randint(0, vocab_size, shape, device=self.device)
        dev.reset_peak_memory(self.device)

    def train_step(self) -> None:
        accum = self.cfg.train.grad_accum
        for _ in range(accum):
            with dev.autocast(self.device, self.dtype):
                loss = self.model(self.x, self.y).loss / accum
            loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward_step(self) -> None:
        with dev.autocast(self.device, self.dtype):
            self.model(self.x, self.y)


def _flops_share(f: dict[str, int]) -> dict[str, float]:
    """The training FLOPs of attention, FFN and the rest (embeddings, head), as fractions."""
    total = sum(f.values()) or 1
    attn, ffn = f.get("attention", 0) / total, f.get("ffn", 0) / total
    return {"attention": attn, "ffn": ffn, "rest": 1 - attn - ffn}


def _time(fn: Callable[[], None], warmup: int, steps: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    dev.sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        dev.sync(device)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def _forward_time_share(model, x, device, dtype, repeats: int = 3) -> dict[str, float]:
    """Share of eager forward time spent in attention modules, FFN modules and the rest,
    measured with module hooks (synchronised on CUDA; the hooks add a little overhead)."""
    spent = {"attention": 0.0, "ffn": 0.0}
    starts: dict[int, float] = {}
    handles = []

    def pre(mod, _inp):
        dev.sync(device)
        starts[id(mod)] = time.perf_counter()

    def post_for(group):
        def post(mod, _inp, _out):
            dev.sync(device)
            spent[group] += time.perf_counter() - starts[id(mod)]
        return post

    for block in model.blocks:
        for group, mod in (("attention", block.attn), ("ffn", block.ffn)):
            if mod is not None:
                handles.append(mod.register_forward_pre_hook(pre))
                handles.append(mod.register_forward_hook(post_for(group)))
    model.eval()
    try:
        with dev.autocast(device, dtype):
            model(x)  # warm
        spent.update(attention=0.0, ffn=0.0)
        dev.sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            with dev.autocast(device, dtype):
                model(x)
        dev.sync(device)
        total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
        model.train()
    total = max(total, 1e-12)
    return {"attention": spent["attention"] / total, "ffn": spent["ffn"] / total,
            "rest": max(0.0, 1 - (spent["attention"] + spent["ffn"]) / total)}
