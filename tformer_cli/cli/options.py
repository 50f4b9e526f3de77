"""Options shared by every command that trains (train, ablate, sweeps, bench) and their config."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

ConfigArg = Annotated[
    Optional[Path],
    typer.Argument(help="A YAML config file (sections model:, data:, train:). Default: the quick preset.",
                   show_default=False),
]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help="A built-in preset (`tformer presets`).")]
SetOpt = Annotated[
    Optional[List[str]],
    typer.Option("--set", "-s", help="Override one key, e.g. --set model.n_head=8 (repeatable; wins over flags).",
                 show_default=False),
]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="train.steps: optimizer steps.", show_default=False)]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="train.device: auto, cpu, cuda, cuda:N, mps.",
                                                  show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="train.seed.", show_default=False)]
DataOpt = Annotated[
    Optional[str],
    typer.Option("--data", help="data.corpus: a built-in corpus (`tformer corpora`), a UTF-8 text file, a "
                 "JSONL or Parquet file (data.text_field) or hf:NAME[/CONFIG][:SPLIT].",
                 show_default=False),
]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]


def build_config(
    config: Optional[Path] = None,
    preset: Optional[str] = None,
    sets: Optional[List[str]] = None,
    *,
    steps: Optional[int] = None,
    device: Optional[str] = None,
    seed: Optional[int] = None,
    data: Optional[str] = None,
    extra: Optional[dict[str, Any]] = None,
):
    """defaults < preset < config file < flags < --set; validated, all problems at once."""
    from tformer_cli.core import config as cfgmod

    if config is None and preset is None:
        preset = "quick"
    return cfgmod.resolve(config, preset, flag_overrides(steps, device, seed, data, sets, extra))


FLAG_KEYS = (("steps", "train.steps"), ("device", "train.device"), ("seed", "train.seed"), ("data", "data.corpus"))


def flag_overrides(steps=None, device=None, seed=None, data=None, sets=None, extra=None) -> dict[str, Any]:
    """The overrides a user gave explicitly: the common flags, then ``extra`` (a command's own
    flags), then --set, later winning; also used to check flags against a run being resumed."""
    from tformer_cli.core import config as cfgmod

    given = {"steps": steps, "device": device, "seed": seed, "data": data}
    out: dict[str, Any] = {key: given[flag] for flag, key in FLAG_KEYS if given[flag] is not None}
    out.update(extra or {})
    out.update(cfgmod.parse_set(sets or []))
    return out


TRAIN_STOP = "\nstopping after this step and saving a checkpoint (Ctrl-C again to quit at once)\n"


class StopOnInterrupt:
    """First Ctrl-C (or SIGTERM): set the process-wide stop flag (tformer_cli.core.stop) and say
    ``message`` (by default: the loop stops after the current step, saves and returns; "" says
    nothing, for commands whose stop ends in a one-line ``Stopped`` error). Second Ctrl-C: exit
    at once (KeyboardInterrupt, exit code 130).

    While it is active, the long reads' progress lines (``stop.notice``: a big corpus read and
    tokenized) go to stderr through render/progress.py ReadProgress; ``progress=False``: nowhere."""

    def __init__(self, notice=None, message: str = TRAIN_STOP, progress: bool = True):
        self.requested = False
        self.notice = notice
        self.message = message
        self.progress = progress
        self._lines = None
        self._old = None

    def __call__(self) -> bool:
        return self.requested

    def _handler(self, signum, frame):
        if self.requested:
            # Typer turns the KeyboardInterrupt into a silent exit 130: say what happened.
            sys.stderr.write("\ninterrupted again: quitting at once; the last checkpoint on disk is kept\n")
            raise KeyboardInterrupt
        self.requested = True
        from tformer_cli.core import stop

        stop.request()  # every long loop (evaluation, tokenization, measurement, probes) sees it
        msg = self.message
        if not msg:
            return
        if self._lines is not None:
            self._lines.close()  # a progress line left open on the terminal
        if self.notice:
            self.notice(msg)
        else:
            sys.stderr.write(msg)

    def _term(self, signum, frame):
        # SIGTERM (a scheduler's preemption, torchrun shutting workers down): stop and save too.
        if not self.requested:
            self._handler(signum, frame)

    def __enter__(self):
        from tformer_cli.core import stop

        stop.clear()
        if self.progress:
            from tformer_cli.render.progress import ReadProgress

            self._lines = ReadProgress()
            stop.set_notice(self._lines)
        self._old = {}
        try:
            self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)
            self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._term)
        except ValueError:  # not in the main thread
            pass
        return self

    def __exit__(self, *exc):
        from tformer_cli.core import stop

        for sig, old in (self._old or {}).items():
            signal.signal(sig, old)
        stop.clear()
        if self._lines is not None:
            stop.set_notice(None)
            self._lines.close()
            self._lines = None
        return False
