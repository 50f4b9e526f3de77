"""Which windows each step trains on and each evaluation scores: pure functions of (seed, step)."""

from __future__ import annotations

import numpy as np
import torch

from tformer_cli.core.config import Config
from tformer_cli.core.data import Dataset, mix_seed, mlm_mask, sample_windows
from tformer_cli.train.distributed import DistInfo

EVAL_SEED = 0x7F0E  # the fixed validation windows, identical for every run and every eval


class Batcher:
    """Draws the batch of (step, micro-step) for this rank; host-to-device copies are async on CUDA."""

    def __init__(self, ds: Dataset, cfg: Config, device: torch.device, dist: DistInfo, vocab_size: int):
        self.ds, self.cfg, self.device, self.dist = ds, cfg, device, dist
        self.mlm = cfg.train.objective == "mlm"
        self.mask_id = vocab_size - 1  # the extra [MASK] token of the MLM model

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _finish(self, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask (MLM) the whole global batch, then keep this rank's rows, so the rows, and their
        masks, are those of a single process drawing the global batch."""
        if self.mlm:  # predict the masked tokens of the same window, not the next ones
            x, y = mlm_mask(x, self.mask_id, self.mask_id, seed)
        B, r = self.cfg.train.batch_size, self.dist.rank
        rows = slice(r * B, (r + 1) * B)  # this rank's share of the global batch (all of it on 1 process)
        return self._to_device(x[rows]), self._to_device(y[rows])

    def train_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, W = self.cfg.train.batch_size, self.dist.world
        seed = mix_seed(self.cfg.train.seed, step, micro)
        x, y = sample_windows(self.ds.train, self.cfg.model.block_size, B * W, seed)
        return self._finish(x, y, seed + 1)

    def eval_batches(self, split: str, n_batches: int):
        ids = self.ds.val if split == "val" else self.ds.train
        # Eval batch i is a global batch (batch_size x world rows) split over the ranks like a
        # training batch: every rank evaluates every batch (its rows), so the windows are those of
        # one process with batch_size x world, and eval_iters < world leaves no rank idle.
        B = self.cfg.train.batch_size * self.dist.world
        for i in range(n_batches):
            seed = mix_seed(EVAL_SEED, i)
            x, y = sample_windows(ids, self.cfg.model.block_size, B, seed)
            yield self._finish(x, y, seed + 1)
