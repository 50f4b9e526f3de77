"""Output of `tformer finetune` and `tformer classify`: the summary, the confusion matrix (a
table and a PNG), the predictions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console
from rich.markup import escape

from tformer_cli.render.console import line
from tformer_cli.render.fmt import fmt_loss, fmt_time
from tformer_cli.render.table import Col, show, show_pairs

if TYPE_CHECKING:
    from tformer_cli.run.result import FinetuneResult


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def interval(ci: Sequence[float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _start(r: FinetuneResult) -> str:
    if r.body == "bag":
        return "a bag of tokens (from scratch)"
    if r.source_run is None:
        return "from scratch"
    return f"{r.source_run} ({'architecture only, from scratch' if r.from_scratch else 'weights'})"


def summary_rows(r: FinetuneResult) -> list[tuple[str, str]]:
    status = "interrupted" if r.interrupted else "finished"
    resumed = f" (resumed from {r.resumed_from})" if r.resumed_from else ""
    rows = [
        ("fine-tune", str(r.run_dir)),
        ("status", f"{status} at step {r.steps_done} of {r.steps}{resumed}"),
        ("data", f"{r.data}: {len(r.labels)} labels, {r.n_train:,} training examples"),
        ("start", _start(r)),
        ("head", f"pool {r.pool}" + (", body frozen" if r.freeze else ", all weights trained")),
        ("parameters", f"{r.params:,} ({r.trainable_params:,} trained)"),
        ("train loss", fmt_loss(r.train_loss)),
        ("train accuracy", pct(r.train_accuracy)),
    ]
    if (t := r.test) is not None:
        rows += [
            ("test accuracy", f"{pct(t.accuracy)}  95% CI {interval(t.accuracy_ci)} (Wilson), "
                              f"n = {t.n:,}; chance {pct(t.chance)}"),
            ("test macro-F1", f"{pct(t.macro_f1)}  95% CI {interval(t.macro_f1_ci)} (bootstrap)"),
        ]
    rows.append(("wall time", fmt_time(r.elapsed_s)))
    return rows


def show_finetune(con: Console, r: FinetuneResult) -> None:
    show_pairs(con, summary_rows(r), title="fine-tune summary")
    if r.test is not None:
        show_confusion(con, r.labels, r.test.confusion)


def show_confusion(con: Console, labels: list[str], m: list[list[int]]) -> None:
    cols = [Col("true \\ predicted", key=True)] + [Col(name, numeric=True) for name in labels]
    rows = [[name] + [f"{v:,}" for v in row] for name, row in zip(labels, m)]
    show(con, cols, rows, title="confusion matrix (test split)")


def confusion_png(out: str | Path, labels: list[str], m: list[list[int]], title: str = "") -> Path | None:
    """confusion.png; None when it could not be drawn (a figure never costs a fine-tune)."""
    try:
        return _confusion_png(Path(out), labels, m, title)
    except Exception:
        return None


def _confusion_png(out: Path, labels: list[str], m: list[list[int]], title: str) -> Path:
    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    k = len(labels)
    size = min(12.0, 2.5 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ticks = list(range(k))
    ax.set_xticks(ticks, labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(row) for row in m) or 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i][j]), ha="center", va="center", color="white" if m[i][j] > top / 2 else "black")
    ax.set_title(title or "confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def show_predictions(con: Console, preds: Sequence[Any]) -> None:
    labels = list(preds[0].probabilities) if preds else []
    cols = [Col("text"), Col("label", key=True)] + [Col(f"p({name})", numeric=True) for name in labels]
    rows = [[p.text + (" (cut)" if p.truncated else ""), p.label]
            + [f"{p.probabilities[n]:.3f}" for n in labels] for p in preds]
    show(con, cols, rows)
    if any(p.truncated for p in preds):
        line(con, escape("(cut): longer than the model's block_size; its first tokens were read"))


# ---------------------------------------------------------------- finetune-study

_START = {"gpt": "GPT, pretrained (clm)", "encoder": "encoder, pretrained (mlm)", "gpt-scratch": "GPT, scratch",
          "encoder-scratch": "encoder, scratch", "bag": "bag of tokens"}


def _delta(j) -> str:
    if j is None or j.delta is None:
        return "-"
    if j.ci_low is None:
        return f"{100 * j.delta:+.1f}"
    return f"{100 * j.delta:+.1f} [{100 * j.ci_low:+.1f}, {100 * j.ci_high:+.1f}]"


def show_study_task(con: Console, r, task: str) -> None:
    """One task: every member's held-out accuracy and macro-F1 (mean ± sd over seeds), Δ vs the GPT."""
    from tformer_cli.study.classify import MEMBERS, summarize

    vs_gpt = {j.member: j for j in r.versus_gpt if j.task == task}
    cols = [Col("member", key=True), Col("start"), Col("pool"), Col("params", numeric=True),
            Col("accuracy %", numeric=True), Col("macro-F1 %", numeric=True),
            Col("Δ acc vs gpt [95% CI]", numeric=True)]
    rows = []
    for m in MEMBERS:
        acc, sd, f1, params = summarize(r.rows, task, m.name)
        delta = _delta(vs_gpt.get(m.name))
        rows.append([m.name, _START[m.name], m.pool, f"{params:,}",
                     f"{100 * acc:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}"), f"{100 * f1:.1f}", delta])
    chance = next(x.chance for x in r.rows if x.task == task)
    show(con, cols, rows, title=f"task {task}: held-out accuracy over {len(r.seeds)} seeds (chance {pct(chance)})")


def show_study(con: Console, r) -> None:
    for task in r.tasks:
        show_study_task(con, r, task)
    cols = [Col("claim", key=True), Col("task"), Col("Δ accuracy pts [95% CI]", numeric=True), Col("verdict")]
    rows = [[j.claim, j.task, _delta(j), j.outcome] for j in r.judged]
    show(con, cols, rows, title="claims, judged per task (paired by seed)")
    for note in r.notes:
        line(con, escape(note))
    pre = ", ".join(f"{k} {fmt_loss(v)}" for k, v in r.pretrain.items())
    line(con, escape(f"pretraining ({r.budget['pretrain_steps']} steps on prose) left validation losses {pre}; "
                     f"fine-tunes: {r.budget['finetune_steps']} steps each"))
    line(con, escape(f"results: {r.out_dir}/results.json, results.csv; wall time {fmt_time(r.elapsed_s)}"))
    line(con, escape(study_verdict(r)))


def study_verdict(r) -> str:
    """The one verdict line on Q1: can a decoder-only GPT classify, and against the encoder?"""
    from tformer_cli.study.classify import SOURCE, headline

    can, enc = headline(r)
    parts = [f"a fine-tuned GPT classifies above chance on {len(can)} of {len(r.tasks)} tasks"
             + (f" ({', '.join(can)})" if can else "")]
    for t in r.tasks:
        parts.append(f"encoder vs GPT on {t}: {enc[t].outcome.upper()} ({_delta(enc[t])} pts; {enc[t].reason})")
    return "verdict: " + "; ".join(parts) + f". Claim tested: {SOURCE}."
