"""Output of `tformer study NAME --ladder`: each claim's trend over the rungs (a line, a table, a
plot of the effect against parameters) and the same as Markdown for findings.md."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from tformer_cli.render.console import line
from tformer_cli.render.fmt import fmt_params
from tformer_cli.render.table import Col, show
from tformer_cli.study.scale import Ladder, RungPoint, Trend
from tformer_cli.study.verdict import signed

SCALE_PNG = "scale.png"


def effect(p: RungPoint, metric: str, digits: int = 3) -> str:
    """Δ [95% CI] at one rung ("-" without an interval)."""
    if p.ci_low is None or p.delta is None:
        return "-"
    lo, hi = signed(p.ci_low, metric, digits), signed(p.ci_high, metric, digits)
    return f"{signed(p.delta, metric, digits)} [{lo}, {hi}]"


def notes(p: RungPoint) -> str:
    parts = []
    if p.overfit:
        parts.append("overfit")
    if p.epochs is not None:
        parts.append(f"{p.epochs:.1f} epochs" if p.epochs >= 0.1 else f"{p.epochs:.3f} epochs")
    if p.outcome == "undecided" and p.suggestion:
        parts.append(p.suggestion)
    return ", ".join(parts) or "-"


def trend_line(t: Trend) -> str:
    """One line: the trend, then each rung's effect and interval at its size."""
    at = "; ".join(f"rung {p.rung} ({fmt_params(p.params)}): {effect(p, t.metric)} {p.outcome}" for p in t.points)
    scope = f" ({t.scope})" if t.scope else ""
    return f"trend: {t.trend.upper()}{scope}: {at}"


def show_scale(con: Console, name: str, ladder: Ladder, trends: Sequence[Trend], plot: Path | None) -> None:
    line(con, f"scale ladder of {escape(name)}: {escape(ladder.rule)}")
    for t in trends:
        con.print("")
        line(con, f"claim: {escape(t.statement)}")
        line(con, escape(trend_line(t)))
        show(con, [Col("rung", numeric=True, key=True), Col("params", numeric=True), Col("verdict"),
                   Col("Δ (95% CI)", numeric=True), Col("seeds", numeric=True), Col("notes")],
             [[str(p.rung), fmt_params(p.params), p.outcome.upper(), effect(p, t.metric), str(p.n),
               escape(notes(p))] for p in t.points], title=f"{escape(name)}: the claim at each size")
    if not trends:
        line(con, "no claim: the rungs' tables are in their directories")
    if plot is not None:
        line(con, f"plot: {plot}")


def scale_plot(trends: Sequence[Trend], out: Path, title: str) -> Path:
    """The effect of each claim against its member's parameters (log x), with 95% intervals, zero
    marked and each point labelled with its rung's verdict."""
    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    n = max(len(trends), 1)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), dpi=110, squeeze=False)
    for ax, t in zip(axes[0], trends):
        pts = [p for p in t.points if p.params and p.delta is not None]
        xs = [p.params for p in pts]
        ys = [p.delta for p in pts]
        lo = [p.delta - p.ci_low if p.ci_low is not None else 0 for p in pts]
        hi = [p.ci_high - p.delta if p.ci_high is not None else 0 for p in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=4)
        for p in pts:
            ax.annotate(f"rung {p.rung}: {p.outcome}" + (" (overfit)" if p.overfit else ""), (p.params, p.delta),
                        textcoords="offset points", xytext=(6, 6), fontsize=7)
        ax.axhline(0, color="gray", lw=0.8)
        if t.margin:
            ax.axhspan(-t.margin, t.margin, color="gray", alpha=0.12,
                       label=f"±{t.margin:g}: no difference that matters")
            ax.legend(fontsize=7, loc="best")
        if xs:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        ax.set_xlabel("parameters of the claim's member (log scale)")
        ax.set_ylabel(f"Δ {t.metric} (member - baseline), 95% CI")
        ax.set_title(_wrap(t.statement, 48) + f"\n{t.trend}" + (f" ({t.scope})" if t.scope else ""), fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _wrap(text: str, width: int) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join(lines + [cur])


def scale_markdown(name: str, ladder: Ladder, trends: Sequence[Trend], plot: str | None) -> list[str]:
    """The ladder's section of findings.md."""
    out = [f"## {name}: the scale ladder", "", f"Rule: {ladder.rule}", ""]
    for t in trends:
        out += [f"**{t.statement}**: {t.trend}" + (f" ({t.scope})" if t.scope else "") + ".", "",
                "| rung | params | verdict | Δ (95% CI) | seeds | notes |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {p.rung} | {fmt_params(p.params)} | {p.outcome} | {effect(p, t.metric, 4)} | {p.n} | "
                f"{notes(p)} |" for p in t.points]
        out.append("")
    if plot:
        out += [f"![{name} at each size]({plot})", ""]
    return out
