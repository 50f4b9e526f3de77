"""TensorBoard event files in a run directory, written as the run goes (tensorboardX).

Beside metrics.jsonl, rank 0 of a run writes what it logs as scalars: the training and validation
loss in nats (``loss/train``, ``loss/val``) and in bits per byte (``bits_per_byte/...``), the
learning rate, tokens/s (``perf/tokens_per_s``), the training FLOP/s they amount to
(``perf/flops_per_s``) and, on a GPU whose datasheet peak is known, the MFU (``perf/mfu``;
elsewhere the peak is a timed matmul, which the summary times after training), the gradient norm
of each interval's last step before clipping (``grad_norm``; the loop's own runs, not a batched
group's), and a task's own metrics (``metrics/...``); at step 0 the resolved config as text.
So `tensorboard --logdir runs` shows every run, and `tensorboard --logdir EXP` an experiment's
members and seeds, each run named by its directory
(members/NAME-sSEED: filter by a member's name to group its seeds).

A resumed run opens a new event file whose first record purges every later step of the earlier
files (tensorboardX's purge_step), as metrics.jsonl is cut back to the checkpoint's step: the
steps between the checkpoint and the interruption are not shown twice.  ``train.tensorboard:
false`` writes none.  tensorboardX is imported only when a run starts (never by `tformer --help`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_bpb": "bits_per_byte/val", "lr": "lr",
        "tokens_per_s": "perf/tokens_per_s", "tokens": "tokens", "grad_norm": "grad_norm",
        "flops_per_s": "perf/flops_per_s", "mfu": "perf/mfu"}
FLUSH_SECS = 5


class EventLog:
    """One run's event file: ``row`` takes what RunLog writes to metrics.jsonl and perf.jsonl."""

    def __init__(self, run_dir: Path, start_step: int, config_text: str | None = None,
                 train_bytes_per_token: float | None = None):
        from tensorboardX import SummaryWriter

        # The file is named by the second it was opened: a session's own suffix (its first step,
        # zero-padded) keeps two sessions of one second apart and in order.
        self.writer = SummaryWriter(logdir=str(run_dir), purge_step=start_step + 1 if start_step else None,
                                    flush_secs=FLUSH_SECS, filename_suffix=f".from-step-{start_step:010d}")
        self.bytes_per_token = train_bytes_per_token
        if config_text and not start_step:
            self.writer.add_text("config", "    " + config_text.replace("\n", "\n    "), 0)  # a code block

    def row(self, row: dict[str, Any]) -> None:
        step = row.get("step")
        if not isinstance(step, int):
            return
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            self.writer.add_scalar(TAGS.get(key, f"metrics/{key}"), value, step)
            if key == "train_loss" and self.bytes_per_token:
                self.writer.add_scalar("bits_per_byte/train", value / math.log(2) / self.bytes_per_token, step)

    def close(self) -> None:
        self.writer.close()
