"""Output of `tformer seq2seq`: exact match per task and architecture, and the paired comparison."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from tformer_cli.render.console import line
from tformer_cli.render.fmt import fmt_time
from tformer_cli.render.table import Col, show


def show_seq2seq(con: Console, r) -> None:
    from tformer_cli.study import stats
    from tformer_cli.study.seq2seq import outcome

    cols = [Col("task", key=True), Col("encdec exact %", numeric=True), Col("gpt exact %", numeric=True),
            Col("Δ encdec - gpt [95% CI]", numeric=True), Col("verdict")]
    rows = []
    for task in r.tasks:
        cells = []
        for arch in ("encdec", "gpt"):
            mean, sd = stats.mean_std([x.exact_match for x in r.rows if x.task == task and x.arch == arch])
            cells.append(f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}"))
        p = r.paired[task]
        delta = "-" if p["delta"] is None else f"{100 * p['delta']:+.1f}"
        if p["ci_low"] is not None:
            delta += f" [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]"
        rows.append([task, *cells, delta, outcome(p)])
    show(con, cols, rows, title=f"held-out exact match over {len(r.seeds)} seeds ({r.budget['steps']} steps each)")
    for note in r.notes:
        line(con, escape(note))
    where = f"results: {r.out}/results.json; " if r.out else ""
    line(con, escape(f"{where}wall time {fmt_time(r.elapsed_s)}"))
