"""The findings of `tformer study --all`: a lab notebook in Markdown (findings.md) and a verdict table.

For each study: its question, the claim and its source, the verdict line, the members' table
(compared loss mean ± std over seeds, Δ against the baseline with its 95% interval, whether each
member converged) and its comparison plot.  Numbers come from the typed results only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from tformer_cli.core.io import atomic_write_text
from tformer_cli.render.experiments import EXTRA_HEADERS, converged_cell, diff_cell, extra_cell, pm, verdict_line
from tformer_cli.render.fmt import fmt_int, fmt_time
from tformer_cli.render.table import Col, show
from tformer_cli.study.doubling import Rung
from tformer_cli.study.results import ExperimentResult
from tformer_cli.study.verdict import signed

REPORT = "findings.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ci(v, digits: int = 4) -> str:
    """A verdict's Δ with its 95% interval ("-" when there is none), the interval to ``digits``."""
    if v.ci_low is None:
        return "-"
    return f"{signed(v.delta, v.metric)} [{signed(v.ci_low, v.metric, digits)}, {signed(v.ci_high, v.metric, digits)}]"


def study_name(r: ExperimentResult) -> str:
    """The study's directory name; a rung of --until-converged (STUDY/steps-N) or of --ladder
    (STUDY/rung-N) as 'STUDY (steps-N)' or 'STUDY (rung-N)'."""
    d = Path(r.out_dir)
    return f"{d.parent.name} ({d.name})" if re.fullmatch(r"(steps|rung)-\d+", d.name) else d.name


def _study_section(r: ExperimentResult, root: Path) -> list[str]:
    name = study_name(r)
    out = [f"## {name}", ""]
    for v in r.verdicts:
        if v.question:
            out += [f"**Question.** {v.question}", ""]
        out += [f"**Verdict.** {verdict_line(v)[len('verdict: '):]}", ""]
    if not r.verdicts:
        out += ["No claim: this study reports its table without a verdict.", ""]
    extra = sorted({k for s in r.summary for k in s.extra})  # task metrics, KV cache, steps to the baseline
    heads = ["member", "what changed", "compared loss", "Δ vs baseline (95% CI)", "converged", "tokens/s",
             *(EXTRA_HEADERS.get(k, k) for k in extra)]
    out += ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for s in r.summary:
        out.append("| " + " | ".join(_cell(c) for c in (
            s.member, s.changed, pm(s.compared_loss, s.compared_loss_std), diff_cell(s, r), converged_cell(s),
            fmt_int(s.tokens_per_s), *(extra_cell(s.extra.get(k), k) for k in extra))) + " |")
    seeds = len(r.seeds)
    arith = f" in {r.arithmetic}" if r.arithmetic else ""
    out += ["", f"{len(r.summary)} members x {seeds} seed(s), members ran {r.execution}{arith}; wall time "
                f"{fmt_time(r.elapsed_s)}. Compared loss: causal-consistent for next-token models, teacher-forced "
                f"for masked LMs. Directory: `{r.out_dir}`."]
    if r.plot:
        out += ["", f"![{name}]({Path(os.path.relpath(r.plot, root)).as_posix()})"]
    return out + [""]


def write_findings(root: Path, results: Sequence[ExperimentResult], ladders: Sequence = ()) -> Path:
    """findings.md in ``root``: the verdict table, each ladder's trends (--ladder: ScaleReports),
    then one section per study (per rung, for a ladder)."""
    from tformer_cli.render.scale import scale_markdown

    lines = ["# Findings", "", "| study | claim | verdict | Δ (95% CI) | seeds | arithmetic |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for v in r.verdicts or []:
            ci = _ci(v)
            lines.append("| " + " | ".join(_cell(c) for c in (
                study_name(r), v.statement, v.outcome + (f" ({v.suggestion})" if v.suggestion else ""),
                ci, str(v.n), v.arithmetic or "-")) + " |")
        if not r.verdicts:
            arith = _cell(r.arithmetic or "-")
            lines.append(f"| {_cell(study_name(r))} | (no claim) | - | - | {len(r.seeds)} | {arith} |")
    lines.append("")
    for report in ladders:
        plot = Path(os.path.relpath(report.plot, root)).as_posix() if report.plot else None
        lines += scale_markdown(report.study, report.ladder, report.trends, plot)
    for r in results:
        lines += _study_section(r, Path(root))
    path = Path(root) / REPORT
    atomic_write_text(path, "\n".join(lines))
    return path


def show_verdicts(con: Console, results: Sequence[ExperimentResult]) -> None:
    """One row per claim: study, verdict, Δ with its interval."""
    rows = []
    for r in results:
        for v in r.verdicts:
            ci = _ci(v, 3)
            rows.append([escape(study_name(r)), escape(v.statement), v.outcome.upper(), ci,
                         escape(v.suggestion or "-")])
    show(con, [Col("study", key=True), Col("claim"), Col("verdict"), Col("Δ (95% CI)", numeric=True),
               Col("to decide")], rows, title="verdicts")


def show_doubling(con: Console, rungs: Sequence[Rung], reason: str) -> None:
    """--until-converged: one row per budget and claim (or per budget, without a claim)."""
    rows = []
    for rung in rungs:
        r = rung.result
        learning = sum(1 for row in r.rows if row.status == "ok" and (row.still_learning or row.degenerate))
        runs = f"{learning} of {sum(1 for row in r.rows if row.status == 'ok')}"
        for v in r.verdicts or [None]:
            if v is None:
                rows.append([fmt_int(rung.steps), "(no claim)", "-", "-", runs])
                continue
            ci = _ci(v, 3)
            rows.append([fmt_int(rung.steps), escape(v.member), v.outcome.upper(), ci, runs])
    show(con, [Col("steps", numeric=True, key=True), Col("claim's member"), Col("verdict"),
               Col("Δ (95% CI)", numeric=True), Col("runs not converged", numeric=True)], rows,
         title="until converged: the study at each budget")
    con.print(escape(reason), soft_wrap=True)
