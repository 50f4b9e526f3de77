"""The one training loop: silent, reports through a callback, returns the task's typed result.

Language models (train/lm.py), classifier fine-tunes (train/finetune.py) and
sequence-to-sequence models (train/seq2seq.py) all train here; a Task (train/task.py) gives
the model, the batches, the loss, the evaluation and the directory, the loop does the rest.

Reproducibility by construction: before step s the global RNG is seeded from (seed, s, rank)
(dropout) and the task draws the batch of step s from a generator seeded from (seed, s, ...).
The data order and dropout are therefore pure functions of the step, so a resumed run replays
exactly what an uninterrupted one would have done (bitwise on CPU), whatever the number of
processes, with nothing but weights and optimizer moments in the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from tformer_cli.core import device as dev
from tformer_cli.core import stop as stop_flag
from tformer_cli.core.config import Config
from tformer_cli.core.data import Dataset, mix_seed
from tformer_cli.core.io import atomic_write_text
from tformer_cli.errors import RunError, Stopped
from tformer_cli.run.result import FinetuneResult, TrainResult
from tformer_cli.run.rundir import RunDir
from tformer_cli.train.distributed import DistInfo
from tformer_cli.train.graph_step import GraphedStep, lr_to_device
from tformer_cli.train.optim import load_optimizer_state, make_optimizer, set_lr
from tformer_cli.train.task import Event, LoopStats, Task

if TYPE_CHECKING:  # names for the annotations only: train/finetune.py imports this module
    from tformer_cli.core.finetune_config import FinetuneSpec
    from tformer_cli.core.labelled import Labelled

__all__ = ["Event", "Loop", "RunLog", "TrainResult", "finetune", "nan_error", "run_task", "train"]


# ---------------------------------------------------------------- the loop


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist: DistInfo | None = None,
    dataset: Dataset | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train the language model (or seq2seq run) ``cfg`` into ``run_dir`` (made by the caller with prepare_run_dir,
    or resumed).

    ``progress`` receives Events; ``should_stop`` is polled between steps (the run then saves a
    checkpoint and returns with ``interrupted``); ``dist`` describes this rank under torchrun;
    ``init_from``: start from that run's weights and tokenizer (tformer_cli.run.init).
    """
    from tformer_cli.train.lm import LMTask

    if cfg.task.kind == "seq2seq":  # a run directory like a language model's, its own task
        from tformer_cli.train.seq2seq import Seq2SeqTask

        return run_task(Seq2SeqTask(cfg, Path(run_dir), resume), resume=resume, progress=progress,
                        should_stop=should_stop)
    if cfg.task.kind == "classify":  # a study's fine-tune member: a fine-tune directory
        from tformer_cli.core.finetune_config import FinetuneSpec

        return finetune(FinetuneSpec.from_config(cfg), run_dir, resume=resume, progress=progress,
                        should_stop=should_stop)
    dist = dist or DistInfo()
    task = LMTask(cfg, Path(run_dir), dist, dataset, init_from, resume)
    return run_task(task, resume=resume, progress=progress, should_stop=should_stop, dist=dist)


def finetune(spec: "FinetuneSpec", run_dir: str | Path, *, resume: bool = False,
             progress: Callable[[Event], None] | None = None, should_stop: Callable[[], bool] | None = None,
             data: "Labelled | None" = None) -> FinetuneResult:
    """Fine-tune ``spec`` into ``run_dir`` (claimed by the caller), or continue it with ``resume``:
    the classify task (train/finetune.py).  ``data``: the labelled set already loaded."""
    from tformer_cli.train.finetune import ClassifyTask

    return run_task(ClassifyTask(spec, Path(run_dir), resume, data), resume=resume, progress=progress,
                    should_stop=should_stop)


def run_task(task: Task, *, resume: bool = False, progress: Callable[[Event], None] | None = None,
             should_stop: Callable[[], bool] | None = None, dist: DistInfo | None = None) -> Any:
    """Train ``task`` (a new run, or continue it with ``resume``); its typed result."""
    return Loop(task, resume, progress, should_stop, dist or DistInfo()).run()


def _datasheet_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    """The card's datasheet bf16 peak (FLOP/s) where the run computes in bf16 or fp16 on a known
    GPU, else None: elsewhere the peak is a timed matmul, which the summary times after training."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    known = dev.datasheet_peak(torch.cuda.get_device_name(device))
    return known[1] if known else None


def train_bytes_per_token(task) -> float | None:
    """A language-model task's bytes of training text per token (for bits per byte), else None."""
    return getattr(getattr(task, "ds", None), "train_bytes_per_token", None)


class RunLog:
    """metrics.jsonl (deterministic fields only) and perf.jsonl (timings), written by rank 0.

    On resume both are first cut back to the checkpoint's step, so a resumed run's files end up
    identical to an uninterrupted run's."""

    def __init__(self, run_dir: Path, start_step: int, main: bool, cfg=None,
                 train_bytes_per_token: float | None = None):
        self.metrics = self.perf = self.events = None
        if not main:
            return
        rd = RunDir(run_dir)
        paths = (rd.metrics, rd.perf)
        for path, perf in zip(paths, (False, True)):
            kept = rd.metric_rows(upto=start_step, perf=perf, strict=True)  # drop what came after the checkpoint
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.metrics, self.perf = (open(path, "a") for path in paths)
        if cfg is not None and getattr(getattr(cfg, "train", None), "tensorboard", False):
            from tformer_cli.run.tensorboard import EventLog  # the same rows, as TensorBoard scalars

            text = cfg.to_yaml() if hasattr(cfg, "to_yaml") else None
            self.events = EventLog(run_dir, start_step, text, train_bytes_per_token)

    def write(self, row: dict[str, Any], perf: bool = False) -> None:
        f = self.perf if perf else self.metrics
        if f is not None:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.events is not None:
            self.events.row(row)

    def close(self) -> None:
        for f in (self.metrics, self.perf):
            if f is not None:
                f.close()
        if self.events is not None:
            self.events.close()


class Loop:
    """One training run of a task: the set-up, the loop, and what a step may call (log,
    evaluate, save)."""

    def __init__(self, task: Task, resume: bool, progress, should_stop, dist: DistInfo):
        self.task, self.cfg, self.run_dir, self.dist = task, task.cfg, Path(task.run_dir), dist
        self.report = progress or (lambda e: None)
        self.stop = should_stop or (lambda: False)
        self.t_start = time.perf_counter()
        if dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device, self.dtype = task.device_and_dtype(dist)
        task.setup(self.device, self.dtype, resume)
        self.vocab_size = task.vocab_size
        self._model_and_state()
        if dist.main:
            task.write_files(self.state)
        self.log = RunLog(self.run_dir, self.start_step, dist.main, self.cfg, train_bytes_per_token(task))
        self.grad_norm: torch.Tensor | None = None  # the last step's, before clipping
        totals = getattr(task, "totals", None)
        self.flops_per_token = getattr(totals, "flops_per_token", None)  # training FLOPs a token (language models)
        self.known_peak = _datasheet_peak(self.device, self.dtype) if self.log.events is not None else None
        self.graph_step = None
        if self.graphed:  # after the optimizer's state is restored: its learning rate goes to the device
            lr_to_device(self.optimizer, self.device)
            self.graph_step = GraphedStep(self._step_body, self.optimizer, self.device)
        # The training loss is summed on the device and read back once per log interval.
        self.loss_sum = torch.tensor(self.state["loss_sum"], device=self.device, dtype=torch.float32)
        self.loss_count = int(self.state["loss_count"])
        self.rates: list[float] = []  # tokens/s of each log interval
        self.interval_t0, self.interval_steps, self.eval_time = time.perf_counter(), 0, 0.0
        self.interval_tokens = 0
        self.stop_seen = False
        self.phase_s = {"setup": time.perf_counter() - self.t_start, "eval": 0.0, "checkpoint": 0.0}

    # ------------------------------------------------------------ set-up

    def _model_and_state(self) -> None:
        cfg, task = self.cfg, self.task
        saved = task.saved()
        self.resumed_from = int(saved.state["step"]) if saved is not None else None
        self.start_step = self.resumed_from or 0
        (self.compiled, self.compile_reason), (self.graphed, self.graph_reason) = \
            task.decisions(cfg.train.steps - self.start_step)
        torch.manual_seed(cfg.train.seed)  # initial weights depend on the seed alone
        self.raw_model = task.build_model().to(self.device)
        self.optimizer = make_optimizer(self.raw_model, cfg, self.device, capturable=self.graphed)
        self.state: dict[str, Any] = {"step": 0, "best_val_loss": None, "loss_sum": 0.0, "loss_count": 0,
                                      "last_val_loss": None, "last_train_loss": None, "tokens_seen": 0}
        if saved is None:
            task.init_weights(self.raw_model, self.state)
        else:
            saved.load_weights(self.raw_model)
            try:
                load_optimizer_state(self.optimizer, saved.optimizer_state())
            except (ValueError, KeyError, RuntimeError) as e:
                raise RunError(f"cannot restore the optimizer from {saved.path}: {str(e)[:160]}") from None
            self.state.update(saved.state)
        # float16 needs loss scaling (its range is too small for small gradients); bfloat16 does not.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        if self.scaler is not None and self.state.get("grad_scaler"):
            self.scaler.load_state_dict(self.state["grad_scaler"])
        self._wrap()

    def _wrap(self) -> None:
        """The model the steps call: the raw model, under DDP with several processes, compiled when
        the task's decision says so."""
        self.model = self.raw_model
        if self.dist.world > 1:
            # No buffer sync per forward: the model's buffers (masks, RoPE tables) never change in
            # training, and a per-forward broadcast would be a collective inside evaluate().  The
            # switch was renamed in torch 2.13 (forward_sync_buffers); broadcast_buffers before.
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP

            no_sync_kw = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                          else "broadcast_buffers")
            self.model = DDP(self.raw_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             **{no_sync_kw: False})
        if self.compiled:
            self.model = torch.compile(self.model)

    # ------------------------------------------------------------ the loop

    def run(self) -> Any:
        cfg, steps = self.cfg, self.cfg.train.steps
        ckpt_interval = cfg.train.ckpt_interval or cfg.train.eval_interval
        procs = f" x {self.dist.world} processes" if self.dist.world > 1 else ""
        self.report(Event("start", self.start_step, steps,
                          message=f"{self.device.type} {dev.dtype_name(self.dtype)}{procs}"))
        self.model.train()
        step, interrupted = self.start_step, False
        if self.state.pop("pending_eval", False) and step > 0:  # the evaluation a stop cut short
            self._off_the_clock(self._evaluate, step, "eval")
            if self.state.get("pending_eval"):
                return self._finish(step, True)
        try:
            while step < steps:
                if self._stop_agreed(step):
                    interrupted = True
                    break
                lr = self._step(step)
                step += 1
                if step % cfg.train.log_interval == 0 or step == steps:
                    self._log_step(step, lr)
                if self.task.wants_eval(step):
                    self._off_the_clock(self._evaluate, step, "eval")
                    if self.state.get("pending_eval"):  # stopped inside the evaluation: save, redo on resume
                        interrupted = True
                        break
                if step % ckpt_interval == 0 or step == steps:
                    self._off_the_clock(self._checkpoint, step, "checkpoint")
        finally:  # a raw KeyboardInterrupt may land mid-step: nothing is saved then (the CLI asks politely)
            self.log.close()
        if interrupted and step > self.start_step:
            self._checkpoint(step)
        if interrupted and not self.task.has_checkpoint():
            raise Stopped("before the first checkpoint: nothing was saved, there is nothing to resume",
                          hint="run the same command again to start over")
        return self._finish(step, interrupted)

    def _step(self, step: int) -> float:
        """One optimizer step (with gradient accumulation); returns its learning rate.

        Nothing here reads a tensor back to the host (no .item(), float(), bool() of a tensor), so on
        CUDA the CPU queues step after step without waiting: the loss is summed on the device and
        read once per log interval (tests/test_host_sync.py checks both, the CUDA one in sync debug
        mode).  With a CUDA graph the step's body is replayed rather than run (graph_step.py)."""
        cfg, dist = self.cfg, self.dist
        lr = set_lr(self.optimizer, step, cfg)
        torch.manual_seed(mix_seed(cfg.train.seed, step, dist.rank))  # dropout of this step
        batches = [self.task.batch(step, micro) for micro in range(cfg.train.grad_accum)]
        xs, ys = [x for x, _ in batches], [y for _, y in batches]
        if self.graph_step is not None:
            self.graph_step.run(xs, ys)
        else:
            self._step_body(xs, ys)
            self.optimizer.zero_grad(set_to_none=True)
        tokens = self.task.fixed_tokens or sum(self.task.tokens(x) for x in xs)
        self.state["tokens_seen"] = self.state.get("tokens_seen", 0) + tokens
        self.interval_tokens += tokens
        self.loss_count += 1
        self.interval_steps += 1
        return lr

    def _step_body(self, xs: list[Any], ys: list[Any]) -> None:
        """Forward and backward over the micro-batches, clipping and the optimizer's update: the
        part of a step a CUDA graph captures (no host values in, none out)."""
        cfg, dist, n = self.cfg, self.dist, len(xs)
        for micro, (x, y) in enumerate(zip(xs, ys)):
            last = micro == n - 1
            # DDP all-reduces gradients once per optimizer step: not on the other micro-steps.
            sync_ctx = self.model.no_sync() if (dist.world > 1 and not last and hasattr(self.model, "no_sync")) \
                else contextlib.nullcontext()
            with sync_ctx:
                # a captured step casts the weights afresh each replay (torch.cuda.graphs' autocast rule)
                with dev.autocast(self.device, self.dtype, cache=self.graph_step is None):
                    loss = self.task.loss(self.model, x, y) / n
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            self.loss_sum += loss.detach().float()  # stays on the device: no sync in the hot loop
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if cfg.train.grad_clip > 0:  # its norm before clipping stays on the device (TensorBoard reads it per log)
            self.grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.raw_model.parameters() if p.requires_grad], cfg.train.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step when the scaled gradients overflowed, then adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def _off_the_clock(self, fn: Callable[[int], None], step: int, phase: str) -> None:
        """Run ``fn(step)`` without counting its time in tokens/s; add it to ``phase`` (eval,
        checkpoint) of the summary's time split."""
        t0 = time.perf_counter()
        try:
            fn(step)
        finally:
            spent = time.perf_counter() - t0
            self.eval_time += spent
            self.phase_s[phase] += spent

    def _log_step(self, step: int, lr: float) -> None:
        mean = (self.loss_sum / max(self.loss_count, 1)).item()  # the one read-back per log interval
        if self.dist.world > 1:
            import torch.distributed as tdist

            t = torch.tensor([mean], device=self.device)
            tdist.all_reduce(t)
            mean = t.item() / self.dist.world
        if not math.isfinite(mean):
            raise nan_error(step, self.cfg, self.dtype, self.task)
        now = time.perf_counter()
        rate = self.interval_tokens / max(now - self.interval_t0 - self.eval_time, 1e-9)
        self.rates.append(rate)
        self.state["last_train_loss"] = mean
        self.log.write({"step": step, "train_loss": round(mean, 6), "lr": lr, **self.task.log_row(step)})
        self.log.write({"step": step, "tokens_per_s": round(rate, 1)}, perf=True)
        if self.log.events is not None:  # TensorBoard only: the last step's gradient norm, achieved FLOP/s
            flops = rate * self.flops_per_token if self.flops_per_token else None
            extra = {"step": step, "flops_per_s": flops}
            if flops and self.known_peak:  # MFU per interval where the peak costs no timing (a known card)
                extra["mfu"] = flops / (self.known_peak * self.dist.world)
            if self.grad_norm is not None:
                extra["grad_norm"] = float(self.grad_norm)
            self.log.events.row(extra)
        self.report(Event("log", step, self.cfg.train.steps, train_loss=mean, lr=lr, tokens_per_s=rate,
                          elapsed=now - self.t_start))
        self.loss_sum.zero_()
        self.loss_count = 0
        self.interval_t0, self.interval_steps, self.eval_time, self.interval_tokens = now, 0, 0.0, 0

    def _evaluate(self, step: int) -> None:
        row = self.task.evaluate(self.model, step, self.state,
                                 should_stop=lambda: stop_flag.requested() or self.stop())
        if row is None:  # a stop arrived mid-evaluation; the checkpoint of this step redoes it on resume
            self.state["pending_eval"] = True
            return
        val = row.get("val_loss")
        if val is not None:
            if not math.isfinite(val):
                raise nan_error(step, self.cfg, self.dtype, self.task)
            self.state["last_val_loss"] = val
            if self.state["best_val_loss"] is None or val < self.state["best_val_loss"]:
                self.state["best_val_loss"] = val
        if row:
            self.log.write({"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}})
        self.report(Event("eval", step, self.cfg.train.steps, val_loss=val,
                          elapsed=time.perf_counter() - self.t_start))

    def _checkpoint(self, step: int) -> None:
        # Every rank comes here (collectives below); only rank 0 writes.  The partial loss sum is
        # averaged over ranks first, so a resume on any number of processes logs the same mean.
        dist = self.dist
        if dist.world > 1:
            import torch.distributed as tdist

            tdist.all_reduce(self.loss_sum)
            self.loss_sum.div_(dist.world)
        self.state["loss_sum"], self.state["loss_count"] = self.loss_sum.item(), self.loss_count
        finite = math.isfinite(self.state["loss_sum"]) and all(
            torch.isfinite(p).all() for p in self.raw_model.parameters())
        if not finite:  # never replace a good checkpoint with a bad one
            raise nan_error(step, self.cfg, self.dtype, self.task)  # weights agree on all ranks: all raise
        self.state["step"], self.state["world"] = step, dist.world
        if self.scaler is not None:
            self.state["grad_scaler"] = self.scaler.state_dict()  # plain numbers: JSON in the header
        error = None
        if dist.main:
            try:
                self.task.save(step, self.raw_model, self.optimizer, self.state)
            except Exception as e:  # told to the other ranks before re-raising, so none waits forever
                error = e
        if dist.world > 1:
            from tformer_cli.train.distributed import PeerFailed, any_rank

            if any_rank(error is not None, self.device) and error is None:
                raise PeerFailed(f"rank 0 could not write the checkpoint at step {step}")
        if error is not None:
            raise error
        self.report(Event("checkpoint", step, self.cfg.train.steps, elapsed=time.perf_counter() - self.t_start))

    def _stop_agreed(self, step: int) -> bool:
        """A stop asked for on any rank stops every rank at the same step.  With several processes
        the ranks compare notes at log steps only, where the loop syncs anyway (torchrun forwards
        Ctrl-C to every rank, but not necessarily within the same step)."""
        self.stop_seen = self.stop_seen or self.stop()
        if self.dist.world == 1:
            return self.stop_seen
        if step % self.cfg.train.log_interval != 0 and step != self.start_step:
            return False
        from tformer_cli.train.distributed import any_rank

        return any_rank(self.stop_seen, self.device)

    # ------------------------------------------------------------ the result

    def _graph_outcome(self) -> tuple[bool, str]:
        """The summary's cuda_graph fields: the decision, or why a capture that failed left it eager."""
        failure = self.graph_step.failure if self.graph_step is not None else None
        if failure:
            return False, f"off: the capture failed, the run went on eagerly ({failure})"
        return self.graph_step is not None, self.graph_reason

    def _finish(self, step: int, interrupted: bool) -> Any:
        elapsed = time.perf_counter() - self.t_start
        steady = self.rates[1:] if len(self.rates) > 1 else self.rates  # the first interval includes warm-up
        graphed, graph_reason = self._graph_outcome()
        stats = LoopStats(step=step, interrupted=interrupted, state=self.state, elapsed_s=elapsed,
                          tokens_per_s=statistics.median(steady) if steady else None, phase_s=dict(self.phase_s),
                          resumed_from=self.resumed_from, tokens_seen=int(self.state.get("tokens_seen", 0)),
                          compiled=bool(self.compiled), compile_reason=self.compile_reason,
                          cuda_graph=graphed, cuda_graph_reason=graph_reason)
        result = self.task.result(self.raw_model, stats)
        self.report(Event("end", step, self.cfg.train.steps, elapsed=time.perf_counter() - self.t_start))
        return result


def nan_error(step: int, cfg: Config, dtype: torch.dtype, task: Task) -> RunError:
    if task.has_checkpoint():
        kept = "the last good checkpoint was kept"
    else:
        kept = "no checkpoint had been written yet"
    clip = "keep train.grad_clip on" if cfg.train.grad_clip > 0 else "turn train.grad_clip on (now 0; e.g. 1.0)"
    precision = ("the run is already float32, so precision is not the cause" if dtype == torch.float32
                 else f"or train in float32 (now {dev.dtype_name(dtype)})")
    return RunError(
        f"the loss became NaN or infinite at step {step}; {kept}",
        hint=f"lower train.lr (now {cfg.train.lr:g}) or {clip}; {precision}",
    )
