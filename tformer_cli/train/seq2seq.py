"""The seq2seq task of the one training loop (train/loop.py): an encoder-decoder
(``model.arch: encdec``, core/encdec.py) or a decoder-only GPT (``model.arch: gpt``) that reads
``source SEP`` as a prefix and is trained on the target tokens only, on a built-in task
(``task.data``: reverse | sort | add, core/seq2seq.py), into a run directory like a language
model's (config.yaml with ``task.kind: seq2seq``, checkpoint.safetensors, metrics.jsonl,
summary.json): the loop's schedule, optimizer, resume, stop handling and Events.

As elsewhere, the batch of step s comes from a generator seeded by (seed, s), so two models
given the same seed see the same pairs in the same order, and a resumed run replays the same
batches.  The teacher-forced loss on the held-out pairs is evaluated at each evaluation step
(the convergence check reads it); at the end the held-out pairs are decoded greedily with the
cache: exact match (every target token right) and token accuracy, in the summary's ``extra``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tformer_cli.core import device as dev
from tformer_cli.core import seq2seq as tasks
from tformer_cli.core.config import Config, ModelConfig
from tformer_cli.core.data import mix_seed
from tformer_cli.core.encdec import build_any, greedy_encdec, greedy_prefix
from tformer_cli.core.io import atomic_write_text
from tformer_cli.run import checkpoint
from tformer_cli.run.result import TrainResult
from tformer_cli.run.rundir import RunDir
from tformer_cli.train.optim import group_shapes
from tformer_cli.train.task import LoopStats, RunDirTask, Saved

ARCHS = ("encdec", "gpt")
SCORES = ("exact_match", "token_accuracy")  # the summary's extra fields a seq2seq run adds


def build(arch: str, cfg: ModelConfig, src_len: int, tgt_len: int) -> torch.nn.Module:
    """The model of ``arch`` for sources of ``src_len`` and targets of ``tgt_len`` tokens
    (encdec: cfg.n_layer blocks in each stack; gpt: cfg.n_layer blocks)."""
    block = max(src_len, tgt_len) if arch == "encdec" else src_len + 1 + tgt_len
    return build_any(dataclasses.replace(cfg, arch=arch, block_size=block, causal=cfg.causal or arch == "gpt"),
                       tasks.VOCAB)


def _loss(model, arch: str, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    if arch == "encdec":
        bos = torch.full((src.size(0), 1), tasks.BOS, dtype=torch.long, device=src.device)
        return model(src, torch.cat([bos, tgt[:, :-1]], dim=1), tgt).loss
    sep = torch.full((src.size(0), 1), tasks.SEP, dtype=torch.long, device=src.device)
    seq = torch.cat([src, sep, tgt], dim=1)  # (B, S + 1 + T)
    y = seq[:, 1:].clone()
    y[:, : src.size(1)] = -100  # no loss on the source: the GPT is trained on the target only
    return model(seq[:, :-1], y).loss


class Seq2SeqTask(RunDirTask):
    label = "seq2seq"

    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        self.cfg = cfg.replace({"model.block_size": tasks.block_size(cfg.model.arch, cfg.task.data)})
        self.run_dir, self.resume, self.arch = Path(run_dir), resume, cfg.model.arch
        self.vocab_size = tasks.VOCAB

    def setup(self, device, dtype, resume: bool) -> None:
        self.device, self.dtype = device, dtype
        train, self.test = tasks.pairs(self.cfg.task.data)
        self.src, self.tgt = torch.tensor(train.src), torch.tensor(train.tgt)
        self.fixed_tokens = self.cfg.train.batch_size * (train.src_len + train.tgt_len)

    def saved(self) -> Saved | None:
        if not self.resume:
            return None
        ckpt = checkpoint.load(self.run_dir, optimizer_groups=lambda meta: group_shapes(meta, self.cfg))
        return Saved(dict(ckpt.train_state), lambda m: checkpoint.load_model_weights(m, ckpt),
                     ckpt.optimizer_state, ckpt.path)

    def build_model(self) -> torch.nn.Module:
        return build_any(self.cfg.model, self.vocab_size)

    def write_files(self, state: dict[str, Any]) -> None:
        atomic_write_text(RunDir(self.run_dir).config, self.cfg.to_yaml())

    # ------------------------------------------------------------ steps

    def batch(self, step: int, micro: int):
        seed = mix_seed(self.cfg.train.seed, step) if micro == 0 else mix_seed(self.cfg.train.seed, step, micro)
        idx = np.random.Generator(np.random.PCG64(seed)).integers(0, len(self.src), size=self.cfg.train.batch_size)
        return self.src[idx].to(self.device), self.tgt[idx].to(self.device)

    def loss(self, model, x, y) -> torch.Tensor:
        return _loss(model, self.arch, x, y)

    def evaluate(self, model, step: int, state: dict[str, Any], should_stop) -> dict[str, Any] | None:
        """The teacher-forced loss on the held-out pairs (one pass; they are few)."""
        model.eval()
        with torch.no_grad(), dev.autocast(self.device, self.dtype):
            val = float(_loss(model, self.arch, torch.tensor(self.test.src, device=self.device),
                              torch.tensor(self.test.tgt, device=self.device)))
        model.train()
        return {"val_loss": val}

    # ------------------------------------------------------------ files and the end

    def result(self, model, s: LoopStats) -> TrainResult:
        state, tps = s.state, s.tokens_per_s
        mem, mem_src = dev.peak_memory(self.device)
        emb = model.tok_emb.weight.numel() + sum(getattr(model, n).weight.numel()
                                                 for n in ("pos_emb", "enc_pos", "dec_pos") if hasattr(model, n))
        result = TrainResult(
            run_dir=str(self.run_dir), steps_done=s.step, steps=self.cfg.train.steps, interrupted=s.interrupted,
            train_loss=state.get("last_train_loss"), val_loss=state.get("last_val_loss"), val_bpb=None,
            best_val_loss=state.get("best_val_loss"), tokens_per_s=tps,
            ms_per_step=1000 * self.fixed_tokens / tps if tps else None, mfu=None, peak_flops=None, peak_source="",
            peak_memory_bytes=mem, memory_source=mem_src, params=model.num_params(),
            non_embedding_params=model.num_params() - emb, flops_per_token=0, device=str(self.device),
            dtype=dev.dtype_name(self.dtype), arithmetic=dev.arithmetic(self.device, self.dtype),
            compiled=s.compiled, compile_reason=s.compile_reason,
            vocab_size=self.vocab_size, tokens_seen=s.tokens_seen, elapsed_s=s.elapsed_s,
            init_loss_ref=math.log(self.vocab_size), setup_s=s.phase_s["setup"],
            steps_s=max(s.elapsed_s - sum(s.phase_s.values()), 0.0), eval_s=s.phase_s["eval"],
            checkpoint_s=s.phase_s["checkpoint"], resumed_from=s.resumed_from,
            cuda_graph=s.cuda_graph, cuda_graph_reason=s.cuda_graph_reason)
        if not s.interrupted:
            result.extra.update(zip(SCORES, score(model, self.arch, self.test, device=self.device)))
        RunDir(self.run_dir).write_summary(result.to_dict())
        return result


def decode(model, arch: str, src: torch.Tensor, n: int, use_cache: bool = True) -> torch.Tensor:
    if arch == "encdec":
        return greedy_encdec(model, src, n, tasks.BOS, use_cache)
    return greedy_prefix(model, src, n, tasks.SEP, use_cache)


def score(model, arch: str, test, chunk: int = 250, device=None) -> tuple[float, float]:
    """(exact match, token accuracy) of greedy cached decoding on ``test``."""
    model.eval()
    right, tokens = 0, 0
    for i in range(0, len(test.src), chunk):
        src = torch.tensor(test.src[i:i + chunk], device=device)
        tgt = torch.tensor(test.tgt[i:i + chunk], device=device)
        out = decode(model, arch, src, test.tgt_len)
        right += int((out == tgt).all(dim=1).sum())
        tokens += int((out == tgt).sum())
    model.train()
    return right / len(test.src), tokens / (len(test.src) * test.tgt_len)
