"""Output of `tformer compare`: validation curves on one axis (a PNG) and a table of their ends."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from tformer_cli.render.console import line
from tformer_cli.render.fmt import fmt_int, fmt_loss
from tformer_cli.render.table import Col, show
from tformer_cli.study.compare import Curve

XLABEL = {"steps": "step", "tokens": "tokens seen",
          "time": "training time, s (evaluation and checkpoints left out)"}


def compare_plot(curves: Sequence[Curve], axis: str, out: Path) -> Path:
    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    cmap = plt.get_cmap("tab10")
    colour = {g: cmap(i % 10) for i, g in enumerate(dict.fromkeys(c.group for c in curves))}
    shown: set[str] = set()
    for c in curves:
        first = c.group not in shown
        shown.add(c.group)
        ax.plot(*zip(*c.points), "o-", ms=3, color=colour[c.group], alpha=1.0 if first else 0.45,
                label=c.group if first else None)
    ax.set(xlabel=XLABEL[axis], ylabel="validation loss (teacher-forced, nats/token)",
           title="tformer compare: validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def show_compare(con: Console, curves: Sequence[Curve], plot: Path | None) -> None:
    rows = [[escape(c.label), fmt_int(c.steps), fmt_loss(c.final), fmt_loss(c.best), escape(c.run_dir)]
            for c in curves]
    show(con, [Col("run", key=True), Col("steps", numeric=True), Col("final val loss", numeric=True),
               Col("best val loss", numeric=True), Col("directory")], rows, title="validation loss")
    if plot is not None:
        line(con, f"plot: {plot}")
