"""The training step captured in a CUDA graph: one launch per step instead of hundreds.

A small model on a GPU is launch-bound: on an H100 (issue 18) a 4-layer d128 model took about
11 ms per eager step, nearly all of it the CPU queueing some 250 kernels of a few microseconds
each.  A CUDA graph records the step's kernels once and replays them with one launch.

The step's arithmetic is unchanged: the same forward, backward, clipping and fused AdamW, in the
same order (``_Trainer.step_body``).  What a graph needs, and this module provides:

* static inputs: each step's batch is copied into fixed buffers that the graph reads;
* a learning rate the graph reads from the device: each group's ``lr`` becomes a one-element
  CUDA tensor that ``optim.set_lr`` fills before the replay (a Python float would be frozen
  into the captured launch), with AdamW built ``capturable`` (optim.make_optimizer);
* no autocast weight cache inside the capture (torch.cuda.graphs' rule for autocast);
* the run's first ``WARMUP_STEPS`` steps eager, on a side stream (the capture recipe of
  torch.cuda.graphs; they are ordinary training steps), then one capture, then replays.

Dropout stays a function of the step: torch.manual_seed before each replay sets the seed the
captured Philox kernels read.  A capture that fails leaves the run eager, and the summary says so.
"""

from __future__ import annotations

from typing import Callable

import torch

from tformer_cli.core.config import Config
from tformer_cli.errors import ConfigError
from tformer_cli.train.compile_policy import launch_floor_s, step_arithmetic_s

WARMUP_STEPS = 3  # eager steps before the capture (torch.cuda.graphs asks for a few)


def graph_decision(cfg: Config, device_type: str, dtype: str, vocab_size: int, *, compiled: bool,
                   world: int) -> tuple[bool, str]:
    """(capture the step in a CUDA graph or not, why).

    train.cuda_graph=true asks for it (an error where it cannot be done), false refuses it;
    unset, it is on for an eager single-process CUDA run whose step is launch-bound."""
    asked = cfg.train.cuda_graph
    if asked is False:
        return False, "train.cuda_graph=false"
    blocker = _blocker(cfg, device_type, dtype, compiled, world)
    if blocker:
        if asked:
            raise ConfigError(f"train.cuda_graph=true: {blocker}", hint="unset train.cuda_graph, or set it false")
        return False, f"off: {blocker}"
    if asked:
        return True, "train.cuda_graph=true"
    # launch-bound, so a graph pays, while the step's arithmetic at an eager throughput takes less
    # than its launches (compile_policy's two estimates)
    arithmetic, launches = step_arithmetic_s(cfg, vocab_size, dtype), launch_floor_s(cfg)
    if arithmetic < launches:
        return True, (f"on: the step's arithmetic (about {arithmetic * 1e3:.2g} ms) is shorter than its "
                      f"kernel launches (about {launches * 1e3:.0f} ms); train.cuda_graph=false turns it off")
    return False, (f"off: the step's arithmetic (about {arithmetic * 1e3:.0f} ms) outlasts its launches; "
                   "train.cuda_graph=true forces it")


def _blocker(cfg: Config, device_type: str, dtype: str, compiled: bool, world: int) -> str | None:
    """Why this run cannot capture its step, or None."""
    if device_type != "cuda":
        return f"CUDA graphs need a CUDA device (this run is on {device_type})"
    if compiled:
        return "the model is compiled (torch.compile schedules its own kernels)"
    if world > 1:
        return "several processes (DDP's all-reduce is not captured here)"
    if dtype == "float16":
        return "float16's loss scaling reads its overflow check back to the host every step"
    if cfg.train.optimizer != "adamw":
        return f"train.optimizer={cfg.train.optimizer} (only AdamW is captured)"
    if cfg.model.arch != "gpt":
        return f"model.arch={cfg.model.arch} (only the GPT is captured)"
    return None


def lr_to_device(optimizer, device: torch.device) -> None:
    """Each group's learning rate as a one-element tensor on ``device`` (set_lr fills it)."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


class GraphedStep:
    """Runs ``body(xs, ys)`` (one optimizer step over grad_accum micro-batches, the trainer's
    own step) eagerly for the warm-up steps, then captured once and replayed."""

    def __init__(self, body: Callable[[list, list], None], optimizer, device: torch.device):
        self.body, self.optimizer, self.device = body, optimizer, device
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self.failure: str | None = None  # why a capture failed (the run went on eagerly)
        self.side = torch.cuda.Stream(device)

    def run(self, xs: list, ys: list) -> None:
        if self.failure is not None:
            self._eager(xs, ys)
        elif self.graph is not None:
            for static, new in zip(self.xs + self.ys, list(xs) + list(ys)):
                static.copy_(new, non_blocking=True)
            self.graph.replay()
        elif self.eager_steps < WARMUP_STEPS:
            self._on_side_stream(lambda: self._eager(xs, ys))
            self.eager_steps += 1
        else:
            self._capture(xs, ys)

    def _eager(self, xs, ys) -> None:
        self.body(xs, ys)
        self.optimizer.zero_grad(set_to_none=True)

    def _on_side_stream(self, fn: Callable[[], None]) -> None:
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(self.side)

    def _capture(self, xs, ys) -> None:
        """Record one step into a graph (recording runs nothing), then replay it for this step.
        The gradients are None at the capture, so the captured backward writes them afresh at
        every replay, as the eager step after zero_grad(set_to_none=True) does."""
        self.xs = [x.clone() for x in xs]
        self.ys = [y.clone() for y in ys]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.body(self.xs, self.ys)
        except Exception as e:  # noqa: BLE001 - any capture failure: the run goes on eagerly
            torch.cuda.synchronize(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            self.failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            self._eager(xs, ys)
            return
        self.graph = graph
        graph.replay()
