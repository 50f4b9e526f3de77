"""The run directory, one type that knows its own files.

A run directory holds::

    config.yaml              the resolved config (what --resume and sample read)
    metrics.jsonl            deterministic per-step records: train_loss, lr, tokens / val_loss, val_bpb
    perf.jsonl               timings (tokens/s per log interval): not deterministic, kept apart
    checkpoint.safetensors   weights, optimizer moments, config and train state (tformer_cli.run.checkpoint)
    checkpoint.json          a human-readable copy of the checkpoint's header
    tokenizer.json           the tokenizer
    summary.json             the TrainResult of the last (finished or interrupted) session
    loss.png                 the loss curves

Every module that reads or writes one of these files goes through RunDir; nothing else
spells a file name.  Torch-free.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tformer_cli.core.io import atomic_write_text
from tformer_cli.errors import ConfigError
from tformer_cli.run.result import SummaryFile

EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's event files (run/tensorboard.py)
LOCK_NAME = ".tformer.lock"  # held by the process working in the directory (tformer_cli.run.lock)


@dataclass(frozen=True)
class RunDir(SummaryFile):
    path: Path

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    PERF = "perf.jsonl"
    CHECKPOINT = "checkpoint.safetensors"
    CHECKPOINT_JSON = "checkpoint.json"
    TOKENIZER = "tokenizer.json"
    SUMMARY = "summary.json"
    LOSS_PNG = "loss.png"
    FILES = (CONFIG, METRICS, PERF, CHECKPOINT, CHECKPOINT_JSON, TOKENIZER, SUMMARY, LOSS_PNG)

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------ paths

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def perf(self) -> Path:
        return self.path / self.PERF

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def checkpoint_json(self) -> Path:
        return self.path / self.CHECKPOINT_JSON

    @property
    def tokenizer(self) -> Path:
        return self.path / self.TOKENIZER

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def loss_png(self) -> Path:
        return self.path / self.LOSS_PNG

    # ------------------------------------------------------------ questions

    def is_run(self) -> bool:
        """A run is a directory with a config.yaml and a checkpoint or metrics: a directory holding
        only a user's own config.yaml is not one."""
        return (self.path.is_dir() and self.config.exists()
                and (self.checkpoint.exists() or self.metrics.exists()))

    def has_checkpoint(self) -> bool:
        return self.checkpoint.exists()

    def summary_file(self) -> Path:
        return self.summary

    # ------------------------------------------------------------ metrics.jsonl (the one parser)

    def metric_rows(self, upto: int | None = None, perf: bool = False,
                    strict: bool = False) -> list[dict[str, Any]]:
        """Rows of metrics.jsonl (or perf.jsonl) with step <= ``upto``.

        A last line torn by a crash is skipped.  Any other bad line (not JSON, no integer step,
        a value that is not a number) is skipped too, or with ``strict`` refused with the line
        and field named (resume uses strict: it rewrites the file)."""
        from tformer_cli.run.validate import metric_rows

        return metric_rows(self.perf if perf else self.metrics, upto, strict)

    def curves(self) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """(train, val) loss curves as (step, loss) pairs."""
        rows = self.metric_rows()
        train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        return train, val

    # ------------------------------------------------------------ writing

    def write_summary(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.summary, json.dumps(data, indent=2) + "\n")

    def written_files(self) -> list[Path]:
        """Every file a run writes here: FILES and its TensorBoard event files."""
        return [self.path / name for name in self.FILES] + sorted(self.path.glob(EVENTS_GLOB))

    def prepare(self, overwrite: bool) -> None:
        """Create the directory; refuse to clobber anything unless told to.

        --overwrite deletes only the files a run writes (a run there is replaced); anything
        else in the directory is left alone, so a mistyped --out never wipes a user's folder.
        """
        path = self.path
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"--out {path} exists and is a file", hint="choose another --out")
            if any(p.name != LOCK_NAME for p in path.iterdir()):
                run = self.is_run()
                if not overwrite:
                    what = "a run" if run else "a non-empty directory that is not a run"
                    raise ConfigError(
                        f"--out {path} is {what}",
                        hint="use --resume to continue a run, --overwrite to replace it, or another --out",
                    )
                if not run:  # --overwrite never deletes a file tformer did not write
                    clash = [name for name in self.FILES if (path / name).exists()]
                    if clash:
                        raise ConfigError(f"--out {path} is not a run, but holds {', '.join(clash)}, which "
                                          "tformer did not write; --overwrite replaces only a run's files",
                                          hint="choose another --out, or move those files away")
                for f in self.written_files():
                    f.unlink(missing_ok=True)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"cannot write to output directory {path}: {e.strerror}",
                              hint="choose a writable --out") from None


def prepare_run_dir(path: str | Path, overwrite: bool) -> None:
    RunDir(path).prepare(overwrite)


def default_run_dir(root: str | Path = "runs") -> Path:
    """runs/<date-time>, made unique with a suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{n}"
    return path
