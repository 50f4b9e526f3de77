"""What the one training loop (train/loop.py) asks of the thing it trains: a Task.

A language model (train/lm.py), a classifier fine-tune (train/finetune.py) and a
sequence-to-sequence model (train/seq2seq.py) are the same loop with a different model, batch
source, loss, evaluation and directory.  The loop owns everything else: the schedule and the
optimizer (train/optim.py), the dropout and batch seeds of each step, the device-side loss sum,
metrics.jsonl and perf.jsonl, evaluation and checkpoint intervals, stop handling, NaN checks,
the Event stream and the time split.  A task never steps an optimizer or computes a rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tformer_cli.core.config import Config


@dataclass
class Event:
    """What the loop reports: kind is "start", "log", "eval", "checkpoint" or "end"."""

    kind: str
    step: int
    steps: int
    train_loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    elapsed: float = 0.0
    message: str = ""


@dataclass
class Saved:
    """A task's checkpoint as the loop restores it: the training state and two loaders."""

    state: dict[str, Any]
    load_weights: Callable[[torch.nn.Module], None]
    optimizer_state: Callable[[], dict[str, Any]]
    path: Path


@dataclass
class LoopStats:
    """What the loop measured, handed to Task.result: the task builds its own result from it."""

    step: int
    interrupted: bool
    state: dict[str, Any]
    elapsed_s: float
    tokens_per_s: float | None  # median over log intervals after the first (warm-up), eval excluded
    phase_s: dict[str, float]  # setup, eval, checkpoint (the steps' share is the rest of elapsed_s)
    resumed_from: int | None
    tokens_seen: int
    compiled: bool = False
    compile_reason: str = ""
    cuda_graph: bool = False
    cuda_graph_reason: str = ""


class Task:
    """The base every task extends.  ``cfg`` holds the loop's settings (cfg.train): steps, batch,
    schedule, optimizer, clipping, intervals, seed, device.  Methods are called in this order:
    setup, saved, build_model, init_weights (new runs), write_files; then per step batch, loss;
    evaluate at evaluation steps; save at checkpoints; result at the end."""

    cfg: Config
    run_dir: Path
    vocab_size: int = 0
    fixed_tokens: int | None = None  # tokens in every batch (language models), else counted per batch
    label = "training"

    # ------------------------------------------------------------ set-up

    def device_and_dtype(self, dist) -> tuple[torch.device, torch.dtype]:
        from tformer_cli.core import device as dev

        device = dev.select(self.cfg.train.device)
        dev.setup_backends(device, self.cfg.train.tf32)
        return device, torch.float32

    def setup(self, device: torch.device, dtype: torch.dtype, resume: bool) -> None:
        """Data, vocabulary, and anything the model needs before it is built."""
        self.device, self.dtype = device, dtype

    def saved(self) -> Saved | None:
        """The checkpoint to resume from (its problems raised here), or None to start afresh."""
        return None

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def init_weights(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        """A new run's starting weights beyond the seeded initialisation (e.g. a pretrained body)."""

    def write_files(self, state: dict[str, Any]) -> None:
        """The directory's own files (config, tokenizer, labels), written before the first step."""

    def decisions(self, steps_left: int) -> tuple[tuple[bool, str], tuple[bool, str]]:
        """((compiled, why), (CUDA graph, why)): eager for tasks with batches of varying shape."""
        why = f"off: a {self.cfg.task.kind} run steps eagerly"
        return (False, why), (False, why)

    # ------------------------------------------------------------ steps

    def batch(self, step: int, micro: int) -> tuple[Any, Any]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, x: Any, y: Any) -> torch.Tensor:
        raise NotImplementedError

    def tokens(self, x: Any) -> int:
        """Training tokens in the batch ``x`` (tokens/s counts these)."""
        return int(x.numel()) if isinstance(x, torch.Tensor) else 0

    def log_row(self, step: int) -> dict[str, Any]:
        """Deterministic fields metrics.jsonl carries at a log step beside train_loss and lr."""
        return {}

    def wants_eval(self, step: int) -> bool:
        t = self.cfg.train
        return step % t.eval_interval == 0 or step == t.steps

    def evaluate(self, model: torch.nn.Module, step: int, state: dict[str, Any],
                 should_stop: Callable[[], bool]) -> dict[str, Any] | None:
        """The evaluation at ``step`` as a metrics.jsonl row (``val_loss`` is the loop's to track),
        {} for nothing to record, None when a stop cut it short."""
        return {}

    # ------------------------------------------------------------ files and the end

    def save(self, step: int, model: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def has_checkpoint(self) -> bool:
        raise NotImplementedError

    def result(self, model: torch.nn.Module, stats: LoopStats) -> Any:
        """The typed result of the run, written as the directory's summary.json."""
        raise NotImplementedError


class RunDirTask(Task):
    """A task whose directory is a run's (run/rundir.py): its checkpoint is a run checkpoint
    (run/checkpoint.py) of the config, the vocabulary and the training state."""

    def save(self, step: int, model: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
        from tformer_cli.run import checkpoint

        checkpoint.save(self.run_dir, model, optimizer, self.cfg, self.vocab_size, state)

    def has_checkpoint(self) -> bool:
        from tformer_cli.run.rundir import RunDir

        return RunDir(self.run_dir).has_checkpoint()
