"""The training loop: silent, reports through a callback, returns a TrainResult.

Reproducibility by construction: before step s the global RNG is seeded from (seed, s) and
the batch of step s is drawn from a generator seeded from (seed, s, micro-step).  The data
order and dropout are therefore pure functions of the step, so a resumed run replays
exactly what an uninterrupted one would have done (bitwise on CPU), whatever the number of
processes, with nothing but weights and optimizer moments in the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tformer_cli.core import anatomy, device as dev
from tformer_cli.core import stop as stop_flag
from tformer_cli.core.memory import check_fits
from tformer_cli.run import checkpoint
from tformer_cli.core.config import Config
from tformer_cli.core.data import Dataset, check_lengths, mix_seed, prepare
from tformer_cli.errors import ConfigError, RunError, Stopped
from tformer_cli.core.io import atomic_write_text
from tformer_cli.core.model import build_model
from tformer_cli.run.rundir import RunDir
from tformer_cli.train.batches import Batcher
from tformer_cli.train.distributed import DistInfo
from tformer_cli.train.evaluate import evaluate
from tformer_cli.train.compile_policy import compile_decision
from tformer_cli.train.graph_step import GraphedStep, graph_decision, lr_to_device
from tformer_cli.train.optim import group_shapes, load_optimizer_state, make_optimizer, set_lr



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
class TrainResult:
    run_dir: str
    steps_done: int
    steps: int
    interrupted: bool
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None  # bits per byte of validation text
    best_val_loss: float | None
    tokens_per_s: float | None  # median over log intervals after the first (warm-up), eval excluded
    ms_per_step: float | None
    mfu: float | None
    peak_flops: float | None
    peak_source: str
    peak_memory_bytes: int
    memory_source: str
    params: int
    non_embedding_params: int
    flops_per_token: int
    device: str
    dtype: str
    compiled: bool
    compile_reason: str
    vocab_size: int
    tokens_seen: int
    elapsed_s: float
    init_loss_ref: float  # ln(vocab): the loss of a uniform guess
    # Where elapsed_s went: set-up before the first step (data, model, device), the steps,
    # evaluations and checkpoints (the steps' share is the rest of elapsed_s).
    setup_s: float | None = None
    steps_s: float | None = None
    eval_s: float | None = None
    checkpoint_s: float | None = None
    resumed_from: int | None = None
    cuda_graph: bool = False  # the step captured in a CUDA graph (train/graph_step.py)
    cuda_graph_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



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
    """Train ``cfg`` into ``run_dir`` (made by the caller with prepare_run_dir, or resumed).

    ``progress`` receives Events; ``should_stop`` is polled between steps (the run then saves a
    checkpoint and returns with ``interrupted``); ``dist`` describes this rank under torchrun;
    ``init_from``: start from that run's weights and tokenizer (tformer_cli.run.init).
    """
    return _Trainer(cfg, Path(run_dir), resume, progress, should_stop, dist or DistInfo(), dataset,
                    init_from).run()


class _RunLog:
    """metrics.jsonl (deterministic fields only) and perf.jsonl (timings), written by rank 0.

    On resume both are first cut back to the checkpoint's step, so a resumed run's files end up
    identical to an uninterrupted run's."""

    def __init__(self, run_dir: Path, start_step: int, main: bool):
        self.metrics = self.perf = None
        if not main:
            return
        rd = RunDir(run_dir)
        paths = (rd.metrics, rd.perf)
        for path, perf in zip(paths, (False, True)):
            kept = rd.metric_rows(upto=start_step, perf=perf, strict=True)  # drop what came after the checkpoint
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.metrics, self.perf = (open(path, "a") for path in paths)

    def write(self, row: dict[str, Any], perf: bool = False) -> None:
        f = self.perf if perf else self.metrics
        if f is not None:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def close(self) -> None:
        for f in (self.metrics, self.perf):
            if f is not None:
                f.close()


class _Trainer:
    """One training run: the set-up, the loop, and what a step may call (log, evaluate, save)."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool, progress, should_stop, dist: DistInfo,
                 dataset: Dataset | None, init_from: str | Path | None = None):
        self.cfg, self.run_dir, self.dist = cfg, run_dir, dist
        self.report = progress or (lambda e: None)
        self.stop = should_stop or (lambda: False)
        self.t_start = time.perf_counter()
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.device, self.dtype = self._device()
        self.init = self._init_source(init_from, resume)
        self.ds = dataset or prepare(cfg.data, tokenizer=self.init.tokenizer if self.init else None)
        check_lengths(self.ds, cfg.model.block_size, self.ds.corpus)
        self.vocab_size = self.ds.vocab_size + (1 if cfg.train.objective == "mlm" else 0)  # + [MASK]
        if self.init is not None:  # the source model's vocabulary (it may exceed its tokenizer's)
            self.vocab_size = self.init.vocab_size
        self._model_and_state(resume)
        self.totals = anatomy.totals(cfg.model, self.vocab_size)
        self.batcher = Batcher(self.ds, cfg, self.device, dist, self.vocab_size)
        self.tokens_per_step = cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum * dist.world
        if dist.main:
            rd = RunDir(run_dir)
            atomic_write_text(rd.config, cfg.to_yaml())
            atomic_write_text(rd.tokenizer, json.dumps(self.ds.tokenizer.to_json()))
        self.log = _RunLog(run_dir, self.start_step, dist.main)
        self.graph_step = None
        if self.graphed:  # after the optimizer's state is restored: its learning rate goes to the device
            lr_to_device(self.optimizer, self.device)
            self.graph_step = GraphedStep(self._step_body, self.optimizer, self.device)
        # The training loss is summed on the device and read back once per log interval.
        self.loss_sum = torch.tensor(self.state["loss_sum"], device=self.device, dtype=torch.float32)
        self.loss_count = int(self.state["loss_count"])
        self.rates: list[float] = []  # tokens/s of each log interval
        self.interval_t0, self.interval_steps, self.eval_time = time.perf_counter(), 0, 0.0
        self.stop_seen = False
        self.phase_s = {"setup": time.perf_counter() - self.t_start, "eval": 0.0, "checkpoint": 0.0}

    # ------------------------------------------------------------ set-up

    def _device(self) -> tuple[torch.device, torch.dtype]:
        device = dev.select(self.cfg.train.device)
        if self.dist.world > 1 and device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        dev.setup_backends(device)
        return device, dev.resolve_dtype(self.cfg.train.dtype, device)

    def _model_and_state(self, resume: bool) -> None:
        cfg = self.cfg
        self.start_step, self.resumed_from, ckpt = 0, None, None
        if resume:
            ckpt = checkpoint.load(self.run_dir, optimizer_groups=lambda meta: group_shapes(meta, cfg))
            if ckpt.vocab_size != self.vocab_size:
                raise RunError(f"checkpoint {ckpt.path} has a vocabulary of {ckpt.vocab_size} tokens, the corpus "
                               f"{self.ds.corpus} gives {self.vocab_size}",
                               hint="resume with the corpus the run was trained on")
            self.start_step = self.resumed_from = int(ckpt.train_state["step"])
            _check_global_batch(ckpt, cfg, self.dist)
        check_fits(cfg.model, self.vocab_size, cfg.train.batch_size, self.device, training=True)
        self._decide_compile_and_graph()
        torch.manual_seed(cfg.train.seed)  # initial weights depend on the seed alone
        self.raw_model = build_model(cfg.model, self.vocab_size).to(self.device)
        self.optimizer = make_optimizer(self.raw_model, cfg, self.device, capturable=self.graphed)
        self.state: dict[str, Any] = {"step": 0, "best_val_loss": None, "loss_sum": 0.0, "loss_count": 0,
                                      "last_val_loss": None, "last_train_loss": None}
        if ckpt is None and self.init is not None:
            missing, unexpected = self.raw_model.load_state_dict(self.init.weights, strict=False)
            if unexpected or set(missing) - {"lm_head.weight"}:  # a tied head is not stored
                raise RunError(f"--init-from {self.init.path}: its weights do not fit the model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
            self.state["init_from"] = self.init.path
        if ckpt is not None:
            checkpoint.load_model_weights(self.raw_model, ckpt)
            try:
                load_optimizer_state(self.optimizer, ckpt.optimizer_state())
            except (ValueError, KeyError, RuntimeError) as e:
                raise RunError(f"cannot restore the optimizer from {ckpt.path}: {e}") from None
            self.state.update(ckpt.train_state)
        # float16 needs loss scaling (its range is too small for small gradients); bfloat16 does not.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        if self.scaler is not None and self.state.get("grad_scaler"):
            self.scaler.load_state_dict(self.state["grad_scaler"])
        self._wrap()

    def _decide_compile_and_graph(self) -> None:
        """Whether the model is compiled (compile_policy) and its step captured in a CUDA graph
        (graph_step), each with the reason the summary shows."""
        cfg, dtype = self.cfg, dev.dtype_name(self.dtype)
        self.compiled, self.compile_reason = compile_decision(
            cfg, self.device.type, dtype, self.vocab_size, cfg.train.steps - self.start_step)
        self.graphed, self.graph_reason = graph_decision(
            cfg, self.device.type, dtype, self.vocab_size, compiled=self.compiled, world=self.dist.world)

    def _wrap(self) -> None:
        """The model the steps call: the raw model, under DDP with several processes, compiled when
        compile_decision says so."""
        self.model = self.raw_model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # No buffer sync per forward: the model's buffers (masks, RoPE tables) never change in
            # training, and a per-forward broadcast would be a collective inside evaluate().  The
            # switch was renamed in torch 2.13 (forward_sync_buffers); broadcast_buffers before.
            import inspect

            no_sync_kw = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                          else "broadcast_buffers")
            self.model = DDP(self.raw_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             **{no_sync_kw: False})
        if self.compiled:
            self.model = torch.compile(self.model)

    def _init_source(self, init_from, resume: bool):
        """The weights and tokenizer a run starts from (--init-from); on resume, the run's own tokenizer."""
        from tformer_cli.run.init import load_source, resumed_source

        if resume:
            return resumed_source(self.run_dir)
        return load_source(init_from, self.cfg.model.block_size) if init_from is not None else None

    # ------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
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
                if step % cfg.train.eval_interval == 0 or step == steps:
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
        if interrupted and not RunDir(self.run_dir).has_checkpoint():
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
        batches = [self.batcher.train_batch(step, micro) for micro in range(cfg.train.grad_accum)]
        xs, ys = [x for x, _ in batches], [y for _, y in batches]
        if self.graph_step is not None:
            self.graph_step.run(xs, ys)
        else:
            self._step_body(xs, ys)
            self.optimizer.zero_grad(set_to_none=True)
        self.loss_count += 1
        self.interval_steps += 1
        return lr

    def _step_body(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
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
                    loss = self.model(x, y).loss / n
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            self.loss_sum += loss.detach().float()  # stays on the device: no sync in the hot loop
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.train.grad_clip)
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
        mean = (self.loss_sum / self.loss_count).item()  # the one read-back per log interval
        if self.dist.world > 1:
            import torch.distributed as tdist

            t = torch.tensor([mean], device=self.device)
            tdist.all_reduce(t)
            mean = t.item() / self.dist.world
        if not math.isfinite(mean):
            raise _nan_error(step, self.cfg, self.dtype, self.run_dir)
        now = time.perf_counter()
        rate = self.interval_steps * self.tokens_per_step / max(now - self.interval_t0 - self.eval_time, 1e-9)
        self.rates.append(rate)
        self.state["last_train_loss"] = mean
        self.log.write({"step": step, "train_loss": round(mean, 6), "lr": lr, "tokens": step * self.tokens_per_step})
        self.log.write({"step": step, "tokens_per_s": round(rate, 1)}, perf=True)
        self.report(Event("log", step, self.cfg.train.steps, train_loss=mean, lr=lr, tokens_per_s=rate,
                          elapsed=now - self.t_start))
        self.loss_sum.zero_()
        self.loss_count = 0
        self.interval_t0, self.interval_steps, self.eval_time = now, 0, 0.0

    def _evaluate(self, step: int) -> None:
        val = evaluate(self.model, self.batcher, self.cfg.train.eval_iters, self.device, self.dtype,
                       should_stop=lambda: stop_flag.requested() or self.stop())
        if val is None:  # a stop arrived mid-evaluation; the checkpoint of this step redoes it on resume
            self.state["pending_eval"] = True
            return
        if not math.isfinite(val):
            raise _nan_error(step, self.cfg, self.dtype, self.run_dir)
        self.state["last_val_loss"] = val
        if self.state["best_val_loss"] is None or val < self.state["best_val_loss"]:
            self.state["best_val_loss"] = val
        self.log.write({"step": step, "val_loss": round(val, 6),
                        "val_bpb": round(val / math.log(2) / self.ds.val_bytes_per_token, 6)})
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
            raise _nan_error(step, self.cfg, self.dtype, self.run_dir)  # weights agree on all ranks: all raise
        self.state["step"], self.state["world"] = step, dist.world
        if self.scaler is not None:
            self.state["grad_scaler"] = self.scaler.state_dict()  # plain numbers: JSON in the header
        error = None
        if dist.main:
            try:
                checkpoint.save(self.run_dir, self.raw_model, self.optimizer, self.cfg, self.vocab_size,
                                self.state)
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

    def _graph_outcome(self) -> dict[str, Any]:
        """The summary's cuda_graph fields: the decision, or why a capture that failed left it eager."""
        failure = self.graph_step.failure if self.graph_step is not None else None
        if failure:
            return {"cuda_graph": False, "cuda_graph_reason": f"off: the capture failed, the run went on eagerly ({failure})"}
        return {"cuda_graph": self.graph_step is not None, "cuda_graph_reason": self.graph_reason}

    def _finish(self, step: int, interrupted: bool) -> TrainResult:
        dist, state = self.dist, self.state
        elapsed = time.perf_counter() - self.t_start
        steady = self.rates[1:] if len(self.rates) > 1 else self.rates  # the first interval includes warm-up
        peak = dev.peak_flops(self.device, self.dtype) if dist.main else None  # timed after training
        tps = statistics.median(steady) if steady else None
        # tps counts the whole job's tokens, peak is one device's: the job's peak is world x that
        mfu = tps * self.totals.flops_per_token / (peak.flops * dist.world) if (tps and peak) else None
        mem, mem_src = dev.peak_memory(self.device)
        val = state.get("last_val_loss")
        result = TrainResult(
            run_dir=str(self.run_dir),
            steps_done=step,
            steps=self.cfg.train.steps,
            interrupted=interrupted,
            train_loss=state.get("last_train_loss"),
            val_loss=val,
            val_bpb=val / math.log(2) / self.ds.val_bytes_per_token if val is not None else None,
            best_val_loss=state.get("best_val_loss"),
            tokens_per_s=tps,
            ms_per_step=1000 * self.tokens_per_step / tps if tps else None,
            mfu=mfu,
            peak_flops=peak.flops if peak else None,
            peak_source=peak.source if peak else "",
            peak_memory_bytes=mem,
            memory_source=mem_src,
            params=self.raw_model.num_params(),
            non_embedding_params=self.raw_model.num_params(non_embedding=True),
            flops_per_token=self.totals.flops_per_token,
            device=str(self.device),
            dtype=dev.dtype_name(self.dtype),
            compiled=bool(self.compiled),
            compile_reason=self.compile_reason,
            vocab_size=self.vocab_size,
            tokens_seen=step * self.tokens_per_step,
            elapsed_s=elapsed,
            init_loss_ref=math.log(self.vocab_size),
            setup_s=self.phase_s["setup"],
            steps_s=max(elapsed - sum(self.phase_s.values()), 0.0),
            eval_s=self.phase_s["eval"],
            checkpoint_s=self.phase_s["checkpoint"],
            resumed_from=self.resumed_from,
            **self._graph_outcome(),
        )
        if dist.world > 1:
            result.extra["processes"] = dist.world
        if dist.main and step > 0:
            from tformer_cli.core.tasks import task_metrics  # synthetic corpora: e.g. the in-context loss drop

            result.extra.update(task_metrics(self.raw_model, self.cfg, self.ds, self.device, self.dtype))
        if dist.main:
            RunDir(self.run_dir).write_summary(result.to_dict())
        self.report(Event("end", step, self.cfg.train.steps, elapsed=elapsed))
        return result


def _nan_error(step: int, cfg: Config, dtype: torch.dtype, run_dir: Path) -> RunError:
    if RunDir(run_dir).has_checkpoint():
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


def _check_global_batch(ckpt, cfg: Config, dist: DistInfo) -> None:
    """Resuming on another number of processes replays the same data only with the same global
    batch (batch_size x processes; grad_accum cannot change on resume): refuse anything else."""
    old_world = int(ckpt.train_state.get("world", 1))
    old = ckpt.config.train.batch_size * old_world
    new = cfg.train.batch_size * dist.world
    if old != new:
        hint = (f"pass --set train.batch_size={old // dist.world}" if old % dist.world == 0
                else f"use a number of processes that divides {old}")
        raise ConfigError(
            f"--resume: the global batch would change from {old} ({ckpt.config.train.batch_size} x {old_world} "
            f"processes) to {new} ({cfg.train.batch_size} x {dist.world})",
            hint=hint + " to keep the global batch and the data order",
        )
