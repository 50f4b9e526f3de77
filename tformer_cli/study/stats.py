"""Per-member statistics over seeds: mean, standard deviation, the difference to the baseline and
Welch's t-test; and the notes that say how to read the numbers."""

from __future__ import annotations

import statistics

from tformer_cli.study.results import ANATOMY_KEYS, MemberRow, MemberSummary
from tformer_cli.study.spec import Member, Spec

SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANCE_RULE = ("Welch's t-test over seeds, p < 0.05 (the member's values against the baseline's); "
                     "with one seed the noise is unknown and nothing is marked")
LEAK_EXPLANATION = ("Without the causal mask every position can attend to the token it is asked to predict, "
                    "so the teacher-forced loss collapses by copying it; at generation time that future token "
                    "does not exist yet, so the causal-consistent loss and the sample expose a model that never "
                    "learned to predict.")
AVERAGED = ("train_loss", "val_loss", "val_loss_causal", "tokens_per_s", "peak_memory_bytes", "diff_vs_baseline")


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances); None with fewer than 2 values each."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.variance(a) + statistics.variance(b) == 0:  # no noise at all: any difference is certain
        return 0.0 if statistics.fmean(a) != statistics.fmean(b) else 1.0
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def add_baseline_diffs(rows: list[MemberRow], spec: Spec) -> None:
    """Each row's compared loss minus the baseline's with the same seed."""
    base = spec.baseline().name
    ref = {r.seed: r.compared_loss for r in rows if r.member == base}
    for r in rows:
        mine, theirs = r.compared_loss, ref.get(r.seed)
        r.diff_vs_baseline = mine - theirs if mine is not None and theirs is not None else None


def summarize(rows: list[MemberRow], spec: Spec) -> list[MemberSummary]:
    """Per member: mean and std over seeds of every loss, the difference and its significance."""
    base = spec.baseline().name
    by = {m.name: [r for r in rows if r.member == m.name] for m in spec.members}
    ref = _compared([r for r in by[base] if r.status == "ok"])
    return [_summary(m, by[m.name], None if m.name == base else ref, m.name == base) for m in spec.members]


def _compared(rows: list[MemberRow]) -> list[float]:
    return [x for r in rows if (x := r.compared_loss) is not None]


def _summary(m: Member, rows: list[MemberRow], ref: list[float] | None, is_baseline: bool) -> MemberSummary:
    ok = [r for r in rows if r.status == "ok"]
    s = MemberSummary(member=m.name, changed=m.changed, resized=m.resized, axes=dict(m.axes), is_baseline=is_baseline,
                      n_ok=len(ok), n_seeds=len(rows), errors=sorted({r.error for r in rows if r.error}))
    for k in AVERAGED:
        mean, std = mean_std([v for r in ok if (v := getattr(r, k)) is not None])
        setattr(s, k, mean)
        setattr(s, f"{k}_std", std)
    first = ok[0] if ok else (rows[0] if rows else None)
    if first is not None:
        for k in ANATOMY_KEYS + ("sample", "eval_error", "d_k", "objective"):
            setattr(s, k, getattr(first, k))
        for k, v in first.extra.items():
            vals = [x for r in ok if isinstance(x := r.extra.get(k), (int, float)) and not isinstance(x, bool)]
            s.extra[k] = mean_std(vals)[0] if vals else v
    p = None if ref is None else welch_p(_compared(ok), ref)
    s.p_value = p
    s.significant = None if p is None else p < SIGNIFICANCE_LEVEL
    return s


def memory_note(rows: list[MemberRow], execution: str) -> str:
    sources = {r.memory_source for r in rows if r.memory_source}
    if sources == {"process peak RSS"} and "in this process" in execution:
        return ("peak memory: process peak RSS, which only grows: with members run in one process a member's "
                "figure includes every member before it (use --isolate for one process per member)")
    if sources == {"process peak RSS"}:
        return "peak memory: peak RSS of each member's own process"
    return "peak memory: " + ", ".join(sorted(sources)) if sources else "peak memory: not measured"


def notes(spec: Spec) -> list[str]:
    """What a reader must know to read the table: a member without the causal mask leaks the future."""
    base = spec.config()
    leaks = any(m.overrides.get("model.causal") is False for m in spec.members)
    return [LEAK_EXPLANATION] if leaks and base.model.causal and base.train.objective == "clm" else []

