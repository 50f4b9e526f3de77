"""The live training display: a progress bar with loss, lr, tokens/s and ETA on a terminal,
plain lines otherwise.

The bar fits the terminal: its fields are never cut to '…'.  On a narrow terminal the bar
shrinks, then goes, then the fields move to a second line.
"""

from __future__ import annotations

import time
from typing import Any

from tformer_cli.render.console import console, err_console
from tformer_cli.render.fmt import fmt_time

# The widest each field may get (losses up to 99.9999, lr 1.00e-03, tokens/s up to 99,999,999).
_FIELDS_ONE_LINE = "train {task.fields[train]}  val {task.fields[val]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"
_FIELDS_TWO_LINES = "train {task.fields[train]}  val {task.fields[val]}\nlr {task.fields[lr]}  {task.fields[tps]} tok/s"
_FIELDS_WIDTH = len("train 99.9999  val 99.9999  lr 1.00e-03  99,999,999 tok/s")
_ETA_WIDTH = len("0:00:00") + 2  # hours may reach two digits
_MIN_BAR = 10
_MAX_BAR = 40


def layout(width: int, title: str, steps: int) -> tuple[int, bool]:
    """(bar width, 0 for no bar; whether the fields take two lines) for a terminal ``width``."""
    counter = 2 * len(str(steps)) + 1
    fixed = len(title) + counter + _ETA_WIDTH + 3  # one space between columns
    if fixed + 1 + _FIELDS_WIDTH + 1 + _MIN_BAR <= width:
        return min(_MAX_BAR, width - fixed - _FIELDS_WIDTH - 2), False
    if fixed + 1 + _FIELDS_WIDTH <= width:
        return 0, False
    return 0, True


class TrainDisplay:
    """Used as the ``progress`` callback of tformer_cli.train.loop.train."""

    def __init__(self, title: str = "training", to_stderr: bool = False, quiet: bool = False):
        self.title, self.quiet = title, quiet
        self.con = err_console() if to_stderr else console()
        self.live = self.con.is_terminal and not quiet
        self.progress = None
        self.task = None
        self.fields: dict[str, Any] = {"train": "-", "val": "-", "lr": "-", "tps": "-"}
        self.start_step = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def _start_live(self, steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar, two_lines = layout(self.con.width, self.title, steps)
        columns = [TextColumn("[bold]{task.description}"), MofNCompleteColumn()]
        if bar:
            columns.insert(1, BarColumn(bar_width=bar))
        columns += [TextColumn(_FIELDS_TWO_LINES if two_lines else _FIELDS_ONE_LINE), TimeRemainingColumn()]
        self.progress = Progress(*columns, console=self.con, transient=False)
        self.progress.__enter__()

    def notice(self, text: str) -> None:
        self.con.print(text.strip(), style="yellow")

    def _start(self, e) -> None:
        self.start_step = e.step
        if self.live:
            self._start_live(e.steps)
            self.task = self.progress.add_task(self.title, total=e.steps, completed=e.step, **self.fields)
        elif not self.quiet:
            where = f" (resuming at step {e.step})" if e.step else ""
            self.con.print(f"{self.title}: {e.steps} steps on {e.message}{where}")

    def _update_fields(self, e) -> None:
        if e.train_loss is not None:
            self.fields["train"] = f"{e.train_loss:.4f}"
        if e.val_loss is not None:
            self.fields["val"] = f"{e.val_loss:.4f}"
        if e.lr is not None:
            self.fields["lr"] = f"{e.lr:.2e}"
        if e.tokens_per_s is not None:
            self.fields["tps"] = f"{e.tokens_per_s:,.0f}"

    def __call__(self, e) -> None:
        if e.kind == "start":
            self._start(e)
            return
        self._update_fields(e)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=e.step, **self.fields)
        elif not self.quiet and e.kind in ("log", "eval"):
            done = e.step - self.start_step
            eta = e.elapsed / done * (e.steps - e.step) if done else None
            if e.kind == "eval":
                self.con.print(f"step {e.step}/{e.steps}  val {self.fields['val']}")
            else:
                self.con.print(
                    f"step {e.step}/{e.steps}  train {self.fields['train']}  lr {self.fields['lr']}  "
                    f"{self.fields['tps']} tok/s  eta {fmt_time(eta)}"
                )


class ReadProgress:
    """Progress of long reads (a big corpus read, then tokenized), on stderr: the
    ``tformer_cli.core.stop.notice`` callback while a command runs (cli/options.py).

    On a terminal, one line per phase rewritten in place; otherwise plain lines: the first and
    the last of each phase and at most one every ``interval`` seconds between (a log stays short).
    A phase is the text before the message's first colon ("reading PATH", "tokenizing").
    """

    def __init__(self, con=None, interval: float = 1.0):
        self.con = con or err_console()
        self.interval = interval
        self.phase: str | None = None
        self.last = 0.0
        self.open = False  # a terminal line not yet ended

    def __call__(self, message: str, final: bool = False) -> None:
        phase = message.split(":", 1)[0]
        now = time.monotonic()
        new = phase != self.phase
        if self.con.is_terminal:
            if new:
                self.close()
            self.con.file.write(f"\r{message}\x1b[K")
            self.con.file.flush()
            self.open = not final
            if final:
                self.con.file.write("\n")
        elif new or final or now - self.last >= self.interval:
            self.con.print(message, soft_wrap=True, highlight=False)
            self.last = now
        self.phase = None if final else phase

    def close(self) -> None:
        """End a line left open on the terminal."""
        if self.open:
            self.con.file.write("\n")
            self.con.file.flush()
            self.open = False
