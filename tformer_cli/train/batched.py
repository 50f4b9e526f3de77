"""The seeds of one member trained as one batched model, in one process.

Each seed is the language-model task of its own run (train/lm.py): its own run directory,
initial weights (the model built under its seed), batches (drawn from its seed), metrics,
checkpoint and summary, so sample, inspect, attention, resume and `tformer runs` see S ordinary
runs.  What is shared is the arithmetic: the S models' weights are stacked along a leading
seed dimension (torch.func.stack_module_state) and the one GPT of core/model.py runs over them
with torch.func.vmap, so a step is one forward and one backward for all seeds, with batched
matmuls.  AdamW is elementwise and each seed's loss depends on its own weights only, so every
seed follows its own run's trajectory, up to float32 summation order; gradient clipping is per
seed.  A seed whose loss turns NaN is reported failed (its last good checkpoint kept) and the
others go on.

What cannot be batched runs alone (``batch_problem`` says why): the LSTM baseline (nn.LSTM has
no vmap rule), dropout (its masks come from one global generator per step, which a group cannot
replay per seed), Muon (torch.optim.Muon orthogonalises one 2-D matrix at a time), float16 (its
loss scaling is per run), DDP, and runs started from another run's weights.
A group steps eagerly: no torch.compile and no CUDA graph (yet).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tformer_cli.core import device as dev
from tformer_cli.core import stop as stop_flag
from tformer_cli.core.config import Config
from tformer_cli.core.data import prepare
from tformer_cli.errors import RunError, TformerError
from tformer_cli.run.result import TrainResult
from tformer_cli.train.distributed import DistInfo
from tformer_cli.train.loop import Loop, RunLog, nan_error, train_bytes_per_token
from tformer_cli.train.optim import load_optimizer_state, make_stacked_optimizer, seed_state, set_lr, stacked_state
from tformer_cli.train.task import Event, LoopStats

EAGER = "off: a batched group of seeds steps eagerly"


def batch_problem(cfg: Config) -> str | None:
    """Why ``cfg`` cannot train in a batched group of seeds, or None when it can."""
    m, t = cfg.model, cfg.train
    if cfg.task.kind != "lm":
        return f"a {cfg.task.kind} run trains alone"
    if m.arch != "gpt":
        return "the LSTM baseline trains alone (nn.LSTM has no batching rule)"
    if m.dropout > 0:
        return "dropout trains alone (its masks come from one generator per step, not one per seed)"
    if t.optimizer != "adamw":
        return f"{t.optimizer} trains alone (torch.optim.Muon orthogonalises one matrix at a time)"
    if t.dtype == "float16":
        return "float16 trains alone (its loss scaling is per run)"
    if cfg.task.source_run:
        return "a run started from another run's weights trains alone"
    return None


def same_group(a: Config, b: Config) -> bool:
    """Whether two configs may share a group: equal in everything but train.seed."""
    return a.replace({"train.seed": 0}).to_dict() == b.replace({"train.seed": 0}).to_dict()


@dataclass
class _Seed:
    """One seed of the group: its task (directory, data, evaluation, result), its own model
    (the weights it is saved from), its training state and its log."""

    task: Any
    model: torch.nn.Module
    state: dict[str, Any]
    log: RunLog | None = None
    error: TformerError | None = None
    resumed_from: int | None = None

    @property
    def alive(self) -> bool:
        return self.error is None


@dataclass
class GroupOutcome:
    """What a group returns for each seed: its TrainResult, or the error that ended it."""

    result: TrainResult | None = None
    error: TformerError | None = None
    stopped: bool = False  # stopped before its first checkpoint: nothing saved
    extra: dict[str, Any] = field(default_factory=dict)


def train_group(cfgs: list[Config], run_dirs: list[Path], *, resume: bool = False,
                progress: Callable[[Event], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> list[GroupOutcome]:
    """Train the seeds ``cfgs`` (equal but for train.seed) into ``run_dirs`` as one batched model,
    or continue them from their checkpoints (all at the same step) with ``resume``."""
    problems = {p for p in map(batch_problem, cfgs) if p}
    if problems:
        raise RunError(f"these seeds cannot train as a group: {sorted(problems)[0]}",
                       hint="run them with --no-batch-seeds")
    if not all(same_group(cfgs[0], c) for c in cfgs[1:]):
        raise RunError("a batched group's configs differ in more than train.seed")
    return _Group(cfgs, [Path(d) for d in run_dirs], resume, progress, should_stop).run()


class _Group:
    def __init__(self, cfgs, run_dirs, resume, progress, should_stop):
        from tformer_cli.train.lm import LMTask

        self.t_start = time.perf_counter()
        self.cfg = cfgs[0]
        self.report = progress or (lambda e: None)
        self.stop = should_stop or (lambda: False)
        dist = DistInfo()
        dataset = prepare(self.cfg.data)  # once for the group: every seed reads the same corpus
        tasks = [LMTask(c, d, dist, dataset, None, resume) for c, d in zip(cfgs, run_dirs)]
        self.device, self.dtype = tasks[0].device_and_dtype(dist)
        self.seeds: list[_Seed] = []
        saved = []
        for task in tasks:
            task.run_dir.mkdir(parents=True, exist_ok=True)
            task.setup(self.device, self.dtype, resume)
            saved.append(task.saved())
            torch.manual_seed(task.cfg.train.seed)  # initial weights depend on the seed alone
            model = task.build_model().to(self.device)
            state: dict[str, Any] = {"step": 0, "best_val_loss": None, "loss_sum": 0.0, "loss_count": 0,
                                     "last_val_loss": None, "last_train_loss": None, "tokens_seen": 0}
            if saved[-1] is not None:
                saved[-1].load_weights(model)
                state.update(saved[-1].state)
            self.seeds.append(_Seed(task, model, state, resumed_from=int(state["step"]) if saved[-1] else None))
        steps_at = {int(s.state["step"]) for s in self.seeds}
        if len(steps_at) > 1:
            raise RunError(f"the seeds of a group must resume from the same step, not {sorted(steps_at)}",
                           hint="run them with --no-batch-seeds")
        self.start_step = steps_at.pop()
        self.template = self.seeds[0].model
        # Leaves of shape (S, *shape): one per parameter of the single model (a tied head is one).
        self.stacked = {n: torch.stack([dict(s.model.named_parameters())[n].detach() for s in self.seeds])
                        .requires_grad_(True) for n, _ in self.template.named_parameters()}
        self.optimizer = make_stacked_optimizer(self.template, self.stacked, self.cfg)
        if all(s is not None for s in saved):
            try:
                load_optimizer_state(self.optimizer, stacked_state([s.optimizer_state() for s in saved]))
            except (ValueError, KeyError, RuntimeError) as e:
                raise RunError(f"cannot restore the optimizer from {saved[0].path}: {str(e)[:160]}") from None
        for s in self.seeds:
            s.task.write_files(s.state)
            s.log = RunLog(s.task.run_dir, self.start_step, True, s.task.cfg, train_bytes_per_token(s.task))
        n = len(self.seeds)
        self.loss_sum = torch.tensor([s.state["loss_sum"] for s in self.seeds], device=self.device)
        self.loss_count = int(self.seeds[0].state["loss_count"])
        self.rates: list[float] = []
        self.interval_t0, self.eval_time, self.interval_tokens = time.perf_counter(), 0.0, 0
        self.phase_s = {"setup": time.perf_counter() - self.t_start, "eval": 0.0, "checkpoint": 0.0}
        self.tokens_per_step = tasks[0].fixed_tokens  # one seed's
        self.n = n

        def one_loss(params, x, y):  # one seed's loss: the single model with that seed's weights
            from torch.func import functional_call

            return functional_call(self.template, params, (x, y), {"explicit": True}).loss

        from torch.func import vmap

        # explicit attention: scaled_dot_product_attention has no batching rule (vmap would loop)
        self.losses = vmap(one_loss)  # (S,) losses for (S, B, T) inputs
        self.eval_losses = vmap(one_loss, in_dims=(0, None, None))  # the same windows for every seed

    # ------------------------------------------------------------ the loop

    def run(self) -> list[GroupOutcome]:
        cfg, steps = self.cfg, self.cfg.train.steps
        ckpt_interval = cfg.train.ckpt_interval or cfg.train.eval_interval
        self.report(Event("start", self.start_step, steps, message=f"{self.device.type} "
                          f"{dev.dtype_name(self.dtype)}, {self.n} seeds batched"))
        self.template.train()
        step, interrupted = self.start_step, False
        pending = [s.state.pop("pending_eval", False) for s in self.seeds]  # the evaluation a stop cut short
        if any(pending) and step > 0:
            self._off_the_clock(self._evaluate, step, "eval")
            if self.seeds[0].state.get("pending_eval"):
                return self._finish(step, True)
        try:
            while step < steps and any(s.alive for s in self.seeds):
                if self.stop():
                    interrupted = True
                    break
                lr = self._step(step)
                step += 1
                if step % cfg.train.log_interval == 0 or step == steps:
                    self._log_step(step, lr)
                if self.seeds[0].task.wants_eval(step):
                    self._off_the_clock(self._evaluate, step, "eval")
                    if self.seeds[0].state.get("pending_eval"):
                        interrupted = True
                        break
                if step % ckpt_interval == 0 or step == steps:
                    self._off_the_clock(self._checkpoint, step, "checkpoint")
        finally:
            for s in self.seeds:
                if s.log is not None:
                    s.log.close()
        if interrupted and step > self.start_step:
            self._checkpoint(step)
        return self._finish(step, interrupted)

    def _step(self, step: int) -> float:
        """One optimizer step for every seed: one forward and one backward over the stacked weights."""
        cfg = self.cfg
        lr = set_lr(self.optimizer, step, cfg)
        n = cfg.train.grad_accum
        for micro in range(n):
            batches = [s.task.batch(step, micro) for s in self.seeds]
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            with dev.autocast(self.device, self.dtype):
                losses = self.losses(self.stacked, x, y) / n  # (S,)
            losses.sum().backward()  # each seed's gradient is its own loss's: the weights are disjoint
            self.loss_sum += losses.detach().float()
        if cfg.train.grad_clip > 0:
            clip_per_seed(list(self.stacked.values()), cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_count += 1
        self.interval_tokens += self.tokens_per_step * self.n
        return lr

    def _log_step(self, step: int, lr: float) -> None:
        means = (self.loss_sum / max(self.loss_count, 1)).tolist()  # the one read-back per log interval
        now = time.perf_counter()
        rate = self.interval_tokens / max(now - self.interval_t0 - self.eval_time, 1e-9)  # all seeds
        self.rates.append(rate)
        for s, mean in zip(self.seeds, means):
            if not s.alive:
                continue
            if not math.isfinite(mean):
                self._fail(s, step)
                continue
            s.state["last_train_loss"] = mean
            s.log.write({"step": step, "train_loss": round(mean, 6), "lr": lr, **s.task.log_row(step)})
            s.log.write({"step": step, "tokens_per_s": round(rate / self.n, 1)}, perf=True)
        alive = [m for s, m in zip(self.seeds, means) if s.alive]
        self.report(Event("log", step, self.cfg.train.steps, train_loss=statistics.fmean(alive) if alive else None,
                          lr=lr, tokens_per_s=rate, elapsed=now - self.t_start))
        self.loss_sum.zero_()
        self.loss_count = 0
        self.interval_t0, self.eval_time, self.interval_tokens = now, 0.0, 0

    def _fail(self, s: _Seed, step: int) -> None:
        s.error = nan_error(step, s.task.cfg, self.dtype, s.task)
        s.log.close()

    @torch.no_grad()
    def _evaluate(self, step: int) -> None:
        """Every seed's teacher-forced validation loss on the fixed windows (train/evaluate.py's)."""
        t0 = self.seeds[0].task
        should_stop = lambda: stop_flag.requested() or self.stop()  # noqa: E731
        self.template.eval()
        total = torch.zeros(self.n, device=self.device, dtype=torch.float64)
        count = 0
        try:
            for x, y in t0.batcher.eval_batches("val", self.cfg.train.eval_iters):
                if should_stop():
                    for s in self.seeds:
                        s.state["pending_eval"] = True
                    return
                with dev.autocast(self.device, self.dtype):
                    total += self.eval_losses(self.stacked, x, y).double()
                count += 1
        finally:
            self.template.train()
        vals = (total / max(count, 1)).tolist()
        for s, val in zip(self.seeds, vals):
            if not s.alive:
                continue
            if not math.isfinite(val):
                self._fail(s, step)
                continue
            s.state["last_val_loss"] = val
            if s.state["best_val_loss"] is None or val < s.state["best_val_loss"]:
                s.state["best_val_loss"] = val
            bpb = val / math.log(2) / s.task.ds.val_bytes_per_token
            s.log.write({"step": step, "val_loss": round(val, 6), "val_bpb": round(bpb, 6)})
        alive = [v for s, v in zip(self.seeds, vals) if s.alive]
        self.report(Event("eval", step, self.cfg.train.steps, val_loss=statistics.fmean(alive) if alive else None,
                          elapsed=time.perf_counter() - self.t_start))

    def _into_models(self) -> None:
        """Each seed's slice of the stacked weights, copied into its own model."""
        with torch.no_grad():
            for i, s in enumerate(self.seeds):
                for name, p in s.model.named_parameters():
                    p.copy_(self.stacked[name][i])

    def _checkpoint(self, step: int) -> None:
        """Every live seed's checkpoint, in its own directory, in this one process."""
        self._into_models()
        sums = self.loss_sum.tolist()
        osd = self.optimizer.state_dict()
        for i, s in enumerate(self.seeds):
            if not s.alive:
                continue
            s.state["loss_sum"], s.state["loss_count"] = sums[i], self.loss_count
            if not (math.isfinite(sums[i]) and all(torch.isfinite(p).all() for p in s.model.parameters())):
                self._fail(s, step)  # never replace a good checkpoint with a bad one
                continue
            s.state["step"], s.state["world"] = step, 1
            s.task.save(step, s.model, _SeedOptimizer(osd, i), s.state)
        self.report(Event("checkpoint", step, self.cfg.train.steps, elapsed=time.perf_counter() - self.t_start))

    _off_the_clock = Loop._off_the_clock  # the loop's: time off tokens/s, into the phase (same fields)

    # ------------------------------------------------------------ the results

    def _finish(self, step: int, interrupted: bool) -> list[GroupOutcome]:
        self._into_models()
        elapsed = time.perf_counter() - self.t_start
        steady = self.rates[1:] if len(self.rates) > 1 else self.rates
        total_rate = statistics.median(steady) if steady else None
        n = self.n
        # Each seed's share of the group's time, so that summing the seeds' phases gives the group's.
        share = {k: v / n for k, v in self.phase_s.items()}
        out = []
        for s in self.seeds:
            if s.error is not None:
                out.append(GroupOutcome(error=s.error))
                continue
            if interrupted and not s.task.has_checkpoint():
                out.append(GroupOutcome(stopped=True))
                continue
            stats = LoopStats(step=step, interrupted=interrupted, state=s.state, elapsed_s=elapsed / n,
                              tokens_per_s=total_rate / n if total_rate else None, phase_s=dict(share),
                              resumed_from=s.resumed_from, tokens_seen=step * self.tokens_per_step,
                              compiled=False, compile_reason=EAGER, cuda_graph=False, cuda_graph_reason=EAGER)
            s.task.extra_summary = {"batched": {"seeds": n, "tokens_per_s": total_rate, "elapsed_s": elapsed}}
            out.append(GroupOutcome(result=s.task.result(s.model, stats)))
        self.report(Event("end", step, self.cfg.train.steps, elapsed=time.perf_counter() - self.t_start))
        return out


class _SeedOptimizer:
    """One seed's view of the stacked optimizer, as run/checkpoint.py saves an optimizer."""

    def __init__(self, sd: dict[str, Any], i: int):
        self.sd, self.i = sd, i

    def state_dict(self) -> dict[str, Any]:
        return seed_state(self.sd, self.i)


@torch.no_grad()
def clip_per_seed(stacked: list[torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for each seed alone: each seed's gradients (slice i of every
    stacked tensor) scaled by min(1, max_norm / (their global L2 norm + 1e-6))."""
    grads = [p.grad for p in stacked if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([g.flatten(1).float().norm(dim=1) for g in grads])  # (params, S)
    total = norms.norm(dim=0)  # (S,)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
