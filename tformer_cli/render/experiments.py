"""The tables of `tformer ablate`, `sweep`, `sweep-heads`, `sweep-dmodel`, `study` and `runs`.

Every table goes through render/table.py (fits 80 columns on a terminal, whole when piped).
What a missing value reads as ("-", "n/a (MLM)", "not run") is decided here, never in the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from tformer_cli.render.fmt import fmt_bytes, fmt_int, fmt_loss, fmt_params, fmt_span, fmt_time, time_split
from tformer_cli.render.table import Col, show
from tformer_cli.study.convergence import STILL_LEARNING, STILL_LEARNING_FRACTION
from tformer_cli.study.job import PROBE_MARGIN
from tformer_cli.study.results import ExperimentEntry, ExperimentResult, MemberSummary, RunEntry, Verdict
from tformer_cli.study.stats import MIN_SEEDS
from tformer_cli.study.verdict import signed

MLM = "n/a (MLM)"
CONVERGED_CAPTION = (
    f"converged: 'NO' when, over the last fifth of training (in any seed), the val loss still fell by more than "
    f"{STILL_LEARNING_FRACTION:.0%} of all it fell from ln(vocab) (and by more than {STILL_LEARNING} nats), or "
    "the greedy sample loops; no verdict names a winner among unconverged members.")
LOSS_CAPTION = (
    "val loss (teacher-forced): one forward pass per window, every position predicted (what training "
    "optimises); val loss (causal-consistent): each prediction from a forward pass on its prefix only "
    "(what generation sees), on the same validation windows (at most 256). Δ vs baseline uses the "
    "causal-consistent loss (teacher-forced for MLM).")
PROBE_CAPTION = (
    f"converged: 'NO' when the held-out accuracy rose by more than {100 * PROBE_MARGIN:g} points over the last "
    "fifth of the fine-tune (in any seed); no verdict names a winner among unconverged members.")
CLASSIFY_CAPTION = (
    "accuracy and macro_f1: on the held-out split, once, at the end; chance: the majority label's share of it; "
    "train_accuracy: on at most 512 training examples; probe_accuracy: held-out accuracy at the start of the "
    "last fifth of the fine-tune.")
SEQ2SEQ_CAPTION = (
    "val loss (teacher-forced): the target tokens of the 500 held-out pairs, predicted from the source and the "
    "right target prefix; Δ vs baseline uses it. exact match: greedy decoding with the cache, every target "
    "token right; token accuracy: the share of target tokens right.")


def pm(mean: float | None, std: float | None, fmt=fmt_loss) -> str:
    if mean is None:
        return "-"
    return fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")


def diff_cell(s: MemberSummary, r: ExperimentResult) -> str:
    """Δ vs the member's baseline: mean paired difference, its 95% interval, and what the tests say."""
    if s.is_baseline:
        return "(baseline)"
    if s.diff_vs_baseline is None:
        return "-"
    text = f"{s.diff_vs_baseline:+.4f}"
    if s.diff_ci_low is not None and s.diff_ci_high is not None:
        text += f" [{s.diff_ci_low:+.3f}, {s.diff_ci_high:+.3f}]"
    if s.significant:
        text += " p<0.001" if s.p_value < 0.001 else f" p={s.p_value:.3f}"
    elif s.equivalent:
        text += " (no difference)"
    elif s.significant is False:
        text += " (n.s.)"
    elif s.n_paired:
        text += f" ({s.n_paired} seed{'s' if s.n_paired > 1 else ''}: untested)"
    if len({x.baseline for x in r.summary}) > 1:
        text += f" vs {s.baseline}"
    return text


def converged_cell(s: MemberSummary) -> str:
    """'yes', or why not: still learning at the end (the val drop over the last fifth), degenerate sample."""
    if not s.n_ok:
        return "-"
    why = []
    if s.still_learning:
        why.append("still learning" + (f" (-{s.val_drop_last_fifth:.3f})" if s.val_drop_last_fifth is not None
                                         else " (held-out accuracy still rising)"))
    if s.degenerate:
        why.append("degenerate sample")
    if why:
        return "NO: " + ", ".join(why)
    return "unknown (evaluate more often)" if s.still_learning is None else "yes"


def _causal(s: MemberSummary) -> str:
    if s.val_loss_causal is not None:
        return pm(s.val_loss_causal, s.val_loss_causal_std)
    return MLM if s.objective == "mlm" else "-"


EXTRA_HEADERS = {"kv_cache_bytes_per_token": "KV cache per token (float32)",
                 "exact_match": "exact match", "token_accuracy": "token accuracy",
                 "steps_to_baseline_loss": "steps to the baseline's final val loss"}


def extra_cell(v, key: str = "") -> str:
    if key.endswith("_bytes_per_token") and v is not None:
        return fmt_bytes(int(v))
    if key.startswith("steps_") and isinstance(v, (int, float)):
        return f"{v:,.0f}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _shows_d_k(r: ExperimentResult) -> bool:
    return "model.n_head" in r.axes or "model.d_model" in r.axes


def _tuned(r: ExperimentResult, member: str) -> str:
    c = next((c for c in r.tuning if c["member"] == member), None)
    if c is None:
        return ""
    return f"\n[tuned] train.lr={c['lr']:g}, best of {', '.join(c['mean_loss_by_lr'])}"


def _member_cells(r: ExperimentResult, s: MemberSummary) -> list[str]:
    name = s.member + (f"\n({s.n_seeds - s.n_ok} seed(s) failed)" if s.n_ok and s.n_ok < s.n_seeds else "")
    changed = s.changed + (f"\n[resized] {s.resized}" if s.resized and s.n_ok else "") + _tuned(r, s.member)
    if not s.n_ok:
        changed += "\nFAILED: " + "; ".join(s.errors) if s.errors else "\nnot run"
    cells = [escape(name), escape(changed)] + [escape(str(s.axes.get(a, ""))) for a in r.axes]
    return cells + ([str(s.d_k) if s.n_ok else ""] if _shows_d_k(r) else [])


def _loss_cells(r: ExperimentResult, s: MemberSummary) -> dict[str, str]:
    """The loss columns the members' task has: a language model all four, a seq2seq member no
    causal-consistent loss (its held-out pairs are scored), a classifier fine-tune none but its
    training loss (its held-out accuracy is the measure)."""
    cells = {"train loss": pm(s.train_loss, s.train_loss_std)}
    if r.task != "classify":
        cells["val loss (teacher-forced)"] = pm(s.val_loss, s.val_loss_std)
    if r.task == "lm":
        cells["val loss (causal-consistent)"] = _causal(s)
    if r.task != "classify":
        cells["Δ vs baseline (95% CI)"] = diff_cell(s, r)
    return cells


def show_results(con: Console, r: ExperimentResult) -> None:
    multi = len(r.seeds) > 1
    extra_keys = sorted({k for s in r.summary for k in s.extra})
    cols = [Col("member", key=True), Col("what changed")] + [Col(a) for a in r.axes]
    cols += [Col("d_k", numeric=True)] if _shows_d_k(r) else []
    loss_heads = list(_loss_cells(r, r.summary[0])) if r.summary else []
    cols += [Col(h, numeric=True) for h in ["params", *loss_heads]]
    cols += [Col("converged")] + [Col(h, numeric=True) for h in ("tokens/s", "peak memory")]
    cols += [Col(EXTRA_HEADERS.get(k, k), numeric=True) for k in extra_keys]
    rows = []
    for s in r.summary:
        if not s.n_ok:
            rows.append(_member_cells(r, s) + ["-"] * (4 + len(loss_heads) + len(extra_keys)))
            continue
        rows.append(_member_cells(r, s) + [fmt_params(s.params), *_loss_cells(r, s).values(), converged_cell(s),
                                           fmt_int(s.tokens_per_s), fmt_bytes(s.peak_memory_bytes)]
                    + [extra_cell(s.extra.get(k), k) for k in extra_keys])
    title = f"tformer {r.kind}: {r.out_dir}" + (f" ({len(r.seeds)} seeds, mean ± std)" if multi else "")
    show(con, cols, rows, title=escape(title))


def _sample(s: MemberSummary) -> str:
    if s.objective == "mlm":
        return MLM
    if s.eval_error:
        return f"(evaluation failed: {s.eval_error})"
    return repr(s.sample) if s.sample else "-"


def show_samples(con: Console, r: ExperimentResult) -> None:
    """The greedy continuation of the fixed prompt by each member (first seed)."""
    show(con, [Col("member", key=True), Col("sample")], [[escape(s.member), escape(_sample(s))] for s in r.summary],
         title="greedy continuation of a fixed prompt (first seed)")


def show_anatomy(con: Console, r: ExperimentResult) -> None:
    cols = [Col("member", key=True)] + [Col(h, numeric=True) for h in (
        "params: embeddings", "params: attention", "params: FFN", "params: total", "FLOPs/token: embeddings",
        "FLOPs/token: attention", "FLOPs/token: FFN", "FLOPs/token: total")] + [Col("resized (--match params)")]
    # Each header names its quantity: at 80 columns the table is split and a part may hold FLOPs only.
    rows = [[escape(s.member)] + [fmt_params(v) for v in (
        s.params_embeddings, s.params_attention, s.params_ffn, s.params, s.flops_embeddings, s.flops_attention,
        s.flops_ffn, s.flops_per_token)] + [escape(s.resized or "-")] for s in r.summary if s.params is not None]
    show(con, cols, rows, title="parameters and training FLOPs per token by group")


def show_pivot(con: Console, r: ExperimentResult) -> None:
    """Two swept keys: rows by the first, columns by the second, the compared loss in each cell."""
    a, b = r.axes[:2]
    down = list(dict.fromkeys(s.axes[a] for s in r.summary))
    across = list(dict.fromkeys(s.axes[b] for s in r.summary))
    cell = {(s.axes[a], s.axes[b]): s for s in r.summary}

    def text(s: MemberSummary | None) -> str:
        if s is None:
            return "-"
        return "failed" if not s.n_ok else pm(s.compared_loss, s.compared_loss_std)

    rows = [[escape(str(v))] + [text(cell.get((v, c))) for c in across] for v in down]
    show(con, [Col(escape(f"{a} \\ {b}"), key=True)] + [Col(escape(str(c)), numeric=True) for c in across], rows,
         title=f"validation loss (causal-consistent), {a} down, {b} across")


def captions(r: ExperimentResult) -> list[str]:
    few = len(r.seeds) < MIN_SEEDS
    return [
        {"lm": LOSS_CAPTION, "seq2seq": SEQ2SEQ_CAPTION}.get(r.task, CLASSIFY_CAPTION),
        f"significance: {r.significance_rule}." + (f" {len(r.seeds)} seed(s) here: no difference is tested "
                                                     f"(use --seeds {MIN_SEEDS} or more)." if few else ""),
        CONVERGED_CAPTION if r.task != "classify" else PROBE_CAPTION,
        r.memory_note + ".",
        f"members ran {r.execution}" + (f"; arithmetic: {r.arithmetic}" if r.arithmetic else "")
        + "; tokens/s: median over log intervals, eval excluded.",
    ]


def render(con: Console, r: ExperimentResult) -> None:
    """Every table of an experiment, what the numbers mean, and where the files are."""
    show_results(con, r)
    if r.task == "lm":  # a language model's sample and anatomy; a seq2seq member is scored on its pairs
        show_samples(con, r)
    if len(r.axes) >= 2:
        show_pivot(con, r)
    if r.task == "lm":
        show_anatomy(con, r)
    wrap = not con.is_terminal  # a log keeps each line whole
    for c in captions(r):
        con.print(escape(c), style="dim", soft_wrap=wrap)
    for n in r.notes:
        con.print(escape(n), style="bold", soft_wrap=wrap)
    for v in r.verdicts:
        con.print(escape(verdict_line(v)), style="bold", soft_wrap=wrap)
    failed = [row for row in r.rows if row.status == "failed"]
    if failed:
        con.print(f"{len(failed)} member run(s) failed; the others completed", style="red")
    con.print(escape(f"results: {r.out_dir}/results.json, results.csv" + (f"; plot: {r.plot}" if r.plot else "")
                     + f"; wall time {fmt_time(r.elapsed_s)}{wall_split(r)}"), soft_wrap=wrap)


def wall_split(r: ExperimentResult) -> str:
    """Where the wall time went, as far as the members' rows know: their set-up, training steps,
    evaluations and checkpoints (train()'s split) and their measurement, summed over members; with
    members in sequence, also what lay outside them (each member's process or directory, its
    row, the plots and results files).  In parallel they overlap, so the sums can exceed the wall."""
    rows = [row for row in r.rows if row.elapsed_s is not None]
    if not rows:
        return ""

    def total(name: str) -> float | None:
        values = [getattr(row, name) for row in rows if getattr(row, name) is not None]
        return sum(values) if values else None

    measure = total("measure_s")
    if total("steps_s") is None:  # results of a version before the split
        parts = f"training {fmt_time(total('elapsed_s'))}"
    else:
        parts = time_split(total("setup_s"), total("steps_s"), total("eval_s"), total("checkpoint_s"))
    parts += f", measuring {fmt_span(measure)}" if measure is not None else ""
    outside = ""
    if r.execution.startswith("in sequence"):
        rest = r.elapsed_s - (total("elapsed_s") or 0.0) - (measure or 0.0)
        outside = f"; outside them {fmt_span(max(rest, 0.0))}"
    return f" (members' {parts}, summed{outside})"


def verdict_line(v: Verdict) -> str:
    """One line: the claim, what was measured, and agrees / disagrees / undecided (with what would decide)."""
    metric = "loss" if v.metric == "compared_loss" else v.metric
    measured = "no paired seeds" if v.delta is None else f"Δ {metric} = {signed(v.delta, v.metric)}"
    if v.ci_low is not None and v.ci_high is not None:
        measured += f" [95% CI {signed(v.ci_low, v.metric)}, {signed(v.ci_high, v.metric)}]"
    measured += f" over {v.n} seed(s)" + (f" in {v.arithmetic}" if v.arithmetic else "")
    measured += f", {v.member} vs {v.baseline}"
    line = f"verdict: {v.outcome.upper()}: {v.statement} ({v.source}). Expected {v.expect}; {measured}: {v.reason}."
    if v.suggestion:
        line += f" To decide: {v.suggestion}."
    return line


def show_runs(con: Console, entries: Sequence[RunEntry | ExperimentEntry], root: Path) -> None:
    cols = [Col("path", key=True), Col("type"), Col("status"), Col("steps / members"), Col("val loss", numeric=True),
            Col("params / best member"), Col("tokens/s", numeric=True), Col("wall time", numeric=True)]
    rows = []
    for e in entries:
        if isinstance(e, RunEntry):
            rows.append([e.path, e.type, e.status, e.steps or "-", fmt_loss(e.val_loss), fmt_params(e.params),
                         fmt_int(e.tokens_per_s), fmt_time(e.elapsed_s)])
        else:
            what = f"{e.members if e.members is not None else '?'} x {e.seeds if e.seeds is not None else '?'} seeds"
            failed = f", {e.failed} failed" if e.failed else ""
            failed += f"; verdict: {', '.join(v.upper() for v in e.verdicts)}" if e.verdicts else ""
            rows.append([e.path, e.kind or "experiment", e.status + failed, what, fmt_loss(e.val_loss),
                         e.best or "-", "-", fmt_time(e.elapsed_s)])
    caption = None if entries else ("nothing found: runs are directories with config.yaml, experiments with "
                                    "experiment.json")
    show(con, cols, [[escape(c) for c in row] for row in rows], title=escape(f"runs and experiments under {root}"),
         caption=caption)
