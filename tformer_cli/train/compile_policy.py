"""Whether a training run compiles its model: train.compile when it is set, otherwise a decision
from the run's size, said in words so that the summary can show which was chosen and why.

torch.compile pays for itself only when the time it saves exceeds the time it takes.  On an H100
(issue 18's measurements, torch 2.11) it took GPT-2 small from 40.9 to 28.3 ms per step (30% less)
at a cost of about 6 s in its first steps, but made a sweep of four tiny 300-step members take
108 s instead of 45 s (about 16 s per member, recompiles for evaluation included): a compile costs
seconds to tens of seconds whatever the model, and a tiny model's whole run is shorter than that.
On the CPU it was measured slower.
The estimate below is deliberately rough (a FLOP count at an assumed throughput, with a floor for
launch overhead per layer); it only has to separate runs of seconds from runs of many minutes.
"""

from __future__ import annotations

from tformer_cli.core.anatomy import totals
from tformer_cli.core.config import Config

COMPILE_S = 20.0  # compiling a small GPT for training and evaluation (16 s per tiny member, measured)
SAVED_SHARE = 0.25  # the share of an eager CUDA step compile removes (30% measured at GPT-2 small)
CUDA_FLOPS = {"bfloat16": 300e12, "float16": 300e12, "float32": 50e12}  # assumed eager throughput
LAYER_FLOOR_S = 1e-3  # eager kernel launches per layer per step (forward, backward, optimizer)


def step_arithmetic_s(cfg: Config, vocab_size: int, dtype: str) -> float:
    """A step's FLOPs at the assumed eager throughput of a CUDA device, in seconds."""
    t = cfg.train
    tokens = t.batch_size * cfg.model.block_size * t.grad_accum
    return totals(cfg.model, vocab_size).flops_per_token * tokens / CUDA_FLOPS.get(dtype, CUDA_FLOPS["float32"])


def launch_floor_s(cfg: Config) -> float:
    """A step's kernel launches (forward, backward, optimizer), in seconds: LAYER_FLOOR_S a layer."""
    return LAYER_FLOOR_S * cfg.model.n_layer


def eager_seconds(cfg: Config, vocab_size: int, dtype: str) -> float:
    """A rough estimate of the run's eager training time on a CUDA device (evaluation excluded)."""
    return cfg.train.steps * max(step_arithmetic_s(cfg, vocab_size, dtype), launch_floor_s(cfg))


def compile_decision(cfg: Config, device_type: str, dtype: str, vocab_size: int,
                     steps_left: int | None = None) -> tuple[bool, str]:
    """(compile or not, why): train.compile when set; off on the CPU; on CUDA, on only when the
    estimated saving (a quarter of the eager time still to run) exceeds the compile's cost."""
    if cfg.train.compile is not None:
        return cfg.train.compile, f"train.compile={'true' if cfg.train.compile else 'false'}"
    if device_type != "cuda":
        return False, f"off on {device_type} (measured slower there; train.compile=true forces it)"
    total = eager_seconds(cfg, vocab_size, dtype)
    if steps_left is not None and cfg.train.steps:
        total *= steps_left / cfg.train.steps
    saved = SAVED_SHARE * total
    if saved > COMPILE_S:
        return True, f"on: about {_t(saved)} saved of an eager {_t(total)}, for about {_t(COMPILE_S)} of compiling"
    return False, (f"off: an eager run of about {_t(total)} would save about {_t(saved)}, less than the "
                   f"{_t(COMPILE_S)} a compile takes (train.compile=true forces it)")


def _t(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
