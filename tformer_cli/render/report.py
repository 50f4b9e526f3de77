"""Rendering with rich: the live training display, summary tables, plain lines when piped.

The core never prints; commands hand its events and results to the functions here.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

_console: Console | None = None
_err_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(highlight=False)
    return _console


def err_console() -> Console:
    global _err_console
    if _err_console is None:
        _err_console = Console(stderr=True, highlight=False)
    return _err_console


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_int(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def fmt_loss(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def fmt_time(s: float | None) -> str:
    if s is None or s < 0 or math.isinf(s):
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class TrainDisplay:
    """A live progress bar with loss, lr, tokens/s and ETA on a terminal; plain lines otherwise.

    Used as the ``progress`` callback of tformer_cli.train.loop.train.
    """

    def __init__(self, title: str = "training", to_stderr: bool = False, quiet: bool = False):
        self.title, self.quiet = title, quiet
        self.con = err_console() if to_stderr else console()
        self.live = self.con.is_terminal and not quiet
        self.progress = None
        self.task = None
        self.fields: dict[str, Any] = {"train": "-", "val": "-", "lr": "-", "tps": "-"}
        self.start_step = 0

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("train {task.fields[train]}  val {task.fields[val]}  lr {task.fields[lr]}  "
                           "{task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                console=self.con,
                transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def notice(self, text: str) -> None:
        self.con.print(text.strip(), style="yellow")

    def __call__(self, e) -> None:
        if e.kind == "start":
            self.start_step = e.step
            if self.progress is not None:
                self.task = self.progress.add_task(self.title, total=e.steps, completed=e.step, **self.fields)
            elif not self.quiet:
                where = f" (resuming at step {e.step})" if e.step else ""
                self.con.print(f"{self.title}: {e.steps} steps on {e.message}{where}")
            return
        if e.train_loss is not None:
            self.fields["train"] = f"{e.train_loss:.4f}"
        if e.val_loss is not None:
            self.fields["val"] = f"{e.val_loss:.4f}"
        if e.lr is not None:
            self.fields["lr"] = f"{e.lr:.2e}"
        if e.tokens_per_s is not None:
            self.fields["tps"] = f"{e.tokens_per_s:,.0f}"
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


def summary_table(r: dict[str, Any], title: str = "run summary") -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    status = "interrupted" if r.get("interrupted") else "finished"
    rows = [
        ("run", r["run_dir"]),
        ("status", f"{status} at step {r['steps_done']} of {r['steps']}"
         + (f" (resumed from {r['resumed_from']})" if r.get("resumed_from") else "")),
        ("train loss", f"{fmt_loss(r['train_loss'])} nats/token"),
        ("val loss", f"{fmt_loss(r['val_loss'])} nats/token  (ln(vocab) = {r['init_loss_ref']:.3f})"),
        ("val bits/byte", fmt_loss(r.get("val_bpb"))),
        ("best val loss", fmt_loss(r.get("best_val_loss"))),
        ("tokens/s", f"{fmt_int(r['tokens_per_s'])}  (median, eval excluded)"),
        ("ms/step", "-" if r["ms_per_step"] is None else f"{r['ms_per_step']:.1f}"),
        ("MFU", "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}% of {r['peak_flops'] / 1e9:,.0f} GFLOP/s "
         f"({r['peak_source']})" + (" - over 100%: the machine was busier while the peak was timed"
                                    if r["mfu"] > 1 else "")),
        ("peak memory", f"{fmt_bytes(r['peak_memory_bytes'])} ({r['memory_source']})"),
        ("parameters", f"{r['params']:,} ({r['non_embedding_params']:,} non-embedding)"),
        ("device", f"{r['device']}, {r['dtype']}" + (", compiled" if r["compiled"] else "")),
        ("tokens seen", fmt_int(r["tokens_seen"])),
        ("wall time", fmt_time(r["elapsed_s"])),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
