"""The language-model task of the one loop: next-token (clm) or masked-token (mlm) training on
data.corpus, into a run directory (run/rundir.py, run/checkpoint.py).

Reproducibility by construction: the batch of step s is drawn from a generator seeded from
(seed, s, micro-step) (train/batches.py) and the loop seeds dropout from (seed, s, rank), so a
resumed run replays exactly what an uninterrupted one would have done (bitwise on CPU).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch

from tformer_cli.core import anatomy
from tformer_cli.core import device as dev
from tformer_cli.core.config import Config
from tformer_cli.core.data import Dataset, check_lengths, prepare
from tformer_cli.core.io import atomic_write_text
from tformer_cli.core.memory import check_fits
from tformer_cli.core.model import build_model
from tformer_cli.errors import ConfigError, RunError
from tformer_cli.run import checkpoint
from tformer_cli.run.result import TrainResult
from tformer_cli.run.rundir import RunDir
from tformer_cli.train.batches import Batcher
from tformer_cli.train.compile_policy import compile_decision
from tformer_cli.train.distributed import DistInfo
from tformer_cli.train.evaluate import evaluate
from tformer_cli.train.graph_step import graph_decision
from tformer_cli.train.optim import group_shapes
from tformer_cli.train.task import LoopStats, RunDirTask, Saved


class LMTask(RunDirTask):
    label = "training"
    extra_summary: dict[str, Any] = {}  # fields the summary's extra carries besides the task's (a batched group's)

    def __init__(self, cfg: Config, run_dir: Path, dist: DistInfo, dataset: Dataset | None = None,
                 init_from: str | Path | None = None, resume: bool = False):
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist
        self._dataset, self._init_from, self._resume = dataset, init_from, resume
        self.fixed_tokens = cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum * dist.world

    # ------------------------------------------------------------ set-up

    def device_and_dtype(self, dist: DistInfo) -> tuple[torch.device, torch.dtype]:
        device = dev.select(self.cfg.train.device)
        if dist.world > 1 and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        dev.setup_backends(device, self.cfg.train.tf32)
        return device, dev.resolve_dtype(self.cfg.train.dtype, device)

    def setup(self, device: torch.device, dtype: torch.dtype, resume: bool) -> None:
        from tformer_cli.run.init import load_source, resumed_source

        cfg = self.cfg
        self.device, self.dtype = device, dtype
        if resume:  # the run's own tokenizer
            self.init = resumed_source(self.run_dir)
        else:
            self.init = load_source(self._init_from, cfg.model.block_size) if self._init_from is not None else None
        self.ds = self._dataset or prepare(cfg.data, tokenizer=self.init.tokenizer if self.init else None)
        check_lengths(self.ds, cfg.model.block_size, self.ds.corpus)
        self.vocab_size = self.ds.vocab_size + (1 if cfg.train.objective == "mlm" else 0)  # + [MASK]
        if self.init is not None:  # the source model's vocabulary (it may exceed its tokenizer's)
            self.vocab_size = self.init.vocab_size
        self.batcher = Batcher(self.ds, cfg, device, self.dist, self.vocab_size)
        self.totals = anatomy.totals(cfg.model, self.vocab_size)

    def saved(self) -> Saved | None:
        cfg, ckpt = self.cfg, None
        if self._resume:  # the checkpoint is checked before the memory estimate, as a resume reads it first
            ckpt = checkpoint.load(self.run_dir, optimizer_groups=lambda meta: group_shapes(meta, cfg))
            if ckpt.vocab_size != self.vocab_size:
                raise RunError(f"checkpoint {ckpt.path} has a vocabulary of {ckpt.vocab_size} tokens, the corpus "
                               f"{self.ds.corpus} gives {self.vocab_size}",
                               hint="resume with the corpus the run was trained on")
            _check_global_batch(ckpt, cfg, self.dist)
        check_fits(cfg.model, self.vocab_size, cfg.train.batch_size, self.device, training=True)
        if ckpt is None:
            return None
        return Saved(dict(ckpt.train_state), lambda m: checkpoint.load_model_weights(m, ckpt),
                     ckpt.optimizer_state, ckpt.path)

    def decisions(self, steps_left: int) -> tuple[tuple[bool, str], tuple[bool, str]]:
        """Whether the model is compiled (compile_policy) and its step captured in a CUDA graph
        (graph_step), each with the reason the summary shows."""
        cfg, dtype = self.cfg, dev.dtype_name(self.dtype)
        compiled = compile_decision(cfg, self.device.type, dtype, self.vocab_size, steps_left)
        graphed = graph_decision(cfg, self.device.type, dtype, self.vocab_size, compiled=compiled[0],
                                 world=self.dist.world)
        return compiled, graphed

    def build_model(self) -> torch.nn.Module:
        return build_model(self.cfg.model, self.vocab_size)

    def init_weights(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        if self.init is None:
            return
        missing, unexpected = model.load_state_dict(self.init.weights, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # a tied head is not stored
            raise RunError(f"--init-from {self.init.path}: its weights do not fit the model "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        state["init_from"] = self.init.path

    def write_files(self, state: dict[str, Any]) -> None:
        rd = RunDir(self.run_dir)
        atomic_write_text(rd.config, self.cfg.to_yaml())
        atomic_write_text(rd.tokenizer, json.dumps(self.ds.tokenizer.to_json()))

    # ------------------------------------------------------------ steps

    def batch(self, step: int, micro: int):
        return self.batcher.train_batch(step, micro)

    def loss(self, model: torch.nn.Module, x, y) -> torch.Tensor:
        return model(x, y).loss

    def log_row(self, step: int) -> dict[str, Any]:
        return {"tokens": step * self.fixed_tokens}

    def evaluate(self, model, step: int, state: dict[str, Any], should_stop: Callable[[], bool]):
        val = evaluate(model, self.batcher, self.cfg.train.eval_iters, self.device, self.dtype,
                       should_stop=should_stop)
        if val is None:
            return None
        return {"val_loss": val, "val_bpb": val / math.log(2) / self.ds.val_bytes_per_token}

    # ------------------------------------------------------------ files and the end

    def result(self, model, s: LoopStats) -> TrainResult:
        dist, state = self.dist, s.state
        peak = dev.peak_flops(self.device, self.dtype) if dist.main else None  # timed after training
        tps = s.tokens_per_s
        # tps counts the whole job's tokens, peak is one device's: the job's peak is world x that
        mfu = tps * self.totals.flops_per_token / (peak.flops * dist.world) if (tps and peak) else None
        mem, mem_src = dev.peak_memory(self.device)
        val = state.get("last_val_loss")
        result = TrainResult(
            run_dir=str(self.run_dir), steps_done=s.step, steps=self.cfg.train.steps, interrupted=s.interrupted,
            train_loss=state.get("last_train_loss"), val_loss=val,
            val_bpb=val / math.log(2) / self.ds.val_bytes_per_token if val is not None else None,
            best_val_loss=state.get("best_val_loss"), tokens_per_s=tps,
            ms_per_step=1000 * self.fixed_tokens / tps if tps else None, mfu=mfu,
            peak_flops=peak.flops if peak else None, peak_source=peak.source if peak else "",
            peak_memory_bytes=mem, memory_source=mem_src, params=model.num_params(),
            non_embedding_params=model.num_params(non_embedding=True),
            flops_per_token=self.totals.flops_per_token, device=str(self.device),
            dtype=dev.dtype_name(self.dtype), arithmetic=dev.arithmetic(self.device, self.dtype),
            compiled=s.compiled, compile_reason=s.compile_reason, vocab_size=self.vocab_size,
            tokens_seen=s.step * self.fixed_tokens, elapsed_s=s.elapsed_s, init_loss_ref=math.log(self.vocab_size),
            setup_s=s.phase_s["setup"], steps_s=max(s.elapsed_s - sum(s.phase_s.values()), 0.0),
            eval_s=s.phase_s["eval"], checkpoint_s=s.phase_s["checkpoint"], resumed_from=s.resumed_from,
            cuda_graph=s.cuda_graph, cuda_graph_reason=s.cuda_graph_reason,
            epochs=s.step * self.fixed_tokens / max(len(self.ds.train), 1), corpus_sha256=self.ds.text_sha256,
        )
        if dist.world > 1:
            result.extra["processes"] = dist.world
        result.extra.update(self.extra_summary)
        if dist.main and s.step > 0:
            from tformer_cli.core.tasks import task_metrics  # synthetic corpora: e.g. the in-context loss drop

            result.extra.update(task_metrics(model, self.cfg, self.ds, self.device, self.dtype))
        if dist.main:
            RunDir(self.run_dir).write_summary(result.to_dict())
        return result


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
