"""The run directory: which files a run writes, creating one safely, reading its metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tformer_cli.errors import ConfigError
from tformer_cli.run import checkpoint


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").exists()


RUN_FILES = ("config.yaml", "metrics.jsonl", "perf.jsonl", checkpoint.CKPT_NAME, "checkpoint.json",
             "tokenizer.json", "summary.json", "loss.png")


def prepare_run_dir(path: Path, overwrite: bool) -> None:
    """Create the run directory; refuse to clobber anything unless told to.

    --overwrite deletes only the files a run writes (a run there is replaced); anything
    else in the directory is left alone, so a mistyped --out never wipes a user's folder.
    """
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--out {path} exists and is a file", hint="choose another --out")
        if any(path.iterdir()):
            if not overwrite:
                what = "a run" if is_run_dir(path) else "a non-empty directory that is not a run"
                raise ConfigError(
                    f"--out {path} is {what}",
                    hint="use --resume to continue a run, --overwrite to replace it, or another --out",
                )
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {path}: {e.strerror}",
                          hint="choose a writable --out") from None


def default_run_dir(root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{n}"
    return path


def _read_metrics(path: Path, upto: int) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash
            if row.get("step", 0) <= upto:
                rows.append(row)
    return rows
