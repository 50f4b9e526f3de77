"""Output of `tformer seq2seq`: exact match per task and architecture, and the paired comparison."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from tformer_cli.render.console import line
from tformer_cli.render.fmt import fmt_time
from tformer_cli.render.table import Col, show


def show_seq2seq(con: Console, r) -> None:
    from tformer_cli.study.seq2seq import ARCHS, table

    cols = [Col("task", key=True), Col("encdec exact %", numeric=True), Col("gpt exact %", numeric=True),
            Col("Δ encdec - gpt [95% CI]", numeric=True), Col("verdict")]
    rows = []
    for t in table(r):
        cells = []
        for arch in ARCHS:
            mean, sd = t.exact_match[arch]
            cells.append("-" if mean is None else f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}"))
        delta = "-" if t.delta is None else f"{100 * t.delta:+.1f}"
        if t.ci_low is not None:
            delta += f" [{100 * t.ci_low:+.1f}, {100 * t.ci_high:+.1f}]"
        rows.append([t.task, *cells, delta, t.verdict])
    show(con, cols, rows, title=f"held-out exact match over {len(r.seeds)} seeds ({r.budget['steps']} steps each)")
    for note in r.notes:
        line(con, escape(note))
    where = f"results: {r.out}/results.json; " if r.out else ""
    line(con, escape(f"{where}wall time {fmt_time(r.elapsed_s)}"))
