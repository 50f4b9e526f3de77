"""Per-member statistics over seeds, paired by seed: members share their seeds (the same data order
and initialisation stream), so each member is compared with its baseline seed by seed: the mean
difference with a 95% interval, a paired t-test, and an equivalence test for 'no difference'
claims.  Fewer than MIN_SEEDS seeds: nothing is marked, and the table says why."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from tformer_cli.study.claim import DEFAULT_MARGIN
from tformer_cli.study.results import ANATOMY_KEYS, MemberRow, MemberSummary
from tformer_cli.study.spec import Member, Spec

SIGNIFICANCE_LEVEL = 0.05
MIN_SEEDS = 3  # fewer paired seeds: the spread of the difference is too poorly known to test
EQUIVALENCE_MARGIN = DEFAULT_MARGIN  # nats: differences smaller than this are "no difference" (TOST)
SIGNIFICANCE_RULE = (
    "Δ: the member's loss minus its baseline's with the same seed, mean over seeds with a 95% t interval; "
    f"p: paired t-test of those differences (marked only with {MIN_SEEDS} or more seeds); "
    f"'no difference' only when an equivalence test (two one-sided t-tests, margin ±{EQUIVALENCE_MARGIN} nats) "
    "says so")
LEAK_EXPLANATION = ("Without the causal mask every position can attend to the token it is asked to predict, "
                    "so the teacher-forced loss collapses by copying it; at generation time that future token "
                    "does not exist yet, so the causal-consistent loss and the sample expose a model that never "
                    "learned to predict.")
AVERAGED = ("train_loss", "val_loss", "val_loss_causal", "tokens_per_s", "peak_memory_bytes", "diff_vs_baseline")


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


@dataclass
class Paired:
    """A member against its baseline over the seeds both finished."""

    n: int
    delta: float | None = None  # mean of the per-seed differences (member - baseline)
    ci_low: float | None = None  # 95% t interval of that mean (None with fewer than 2 seeds)
    ci_high: float | None = None
    p_value: float | None = None  # paired t-test, H0: no difference
    p_equivalence: float | None = None  # two one-sided tests, H0: |difference| >= margin
    significant: bool | None = None  # None: too few seeds to say
    equivalent: bool | None = None


def paired(diffs: list[float], margin: float = EQUIVALENCE_MARGIN) -> Paired:
    """Paired statistics of per-seed differences: mean, 95% CI, t-test, equivalence within ``margin``."""
    n = len(diffs)
    if n == 0:
        return Paired(0)
    out = Paired(n, delta=statistics.fmean(diffs))
    if n < 2:
        return out
    from scipy import stats as st

    sd = statistics.stdev(diffs)
    half = float(st.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out.ci_low, out.ci_high = out.delta - half, out.delta + half
    if sd <= 1e-12 * max(1.0, abs(out.delta)):  # every seed moved by the same amount (up to rounding)
        out.p_value = 0.0 if out.delta != 0 else 1.0
        out.p_equivalence = 0.0 if abs(out.delta) < margin else 1.0
    else:
        out.p_value = float(st.ttest_1samp(diffs, 0.0).pvalue)
        out.p_equivalence = max(float(st.ttest_1samp(diffs, -margin, alternative="greater").pvalue),
                                float(st.ttest_1samp(diffs, margin, alternative="less").pvalue))
    if n >= MIN_SEEDS:
        out.significant = out.p_value < SIGNIFICANCE_LEVEL
        out.equivalent = out.p_equivalence < SIGNIFICANCE_LEVEL
    return out


def baselines(spec: Spec) -> dict[str, str]:
    """Each member's baseline: the spec's baseline for members of its objective; for another
    objective (a mixed clm/mlm sweep), that objective's member closest to the base config.
    Losses of different objectives are different quantities and are never compared."""
    base = spec.baseline()
    objective = {m.name: spec.member_config(m, spec.seeds[0]).train.objective for m in spec.members}
    base_cfg = spec.config()
    ref = {objective[base.name]: base.name}
    for m in spec.members:
        o = objective[m.name]
        if o in ref:
            continue
        same = [c for c in spec.members if objective[c.name] == o]
        ref[o] = min(same, key=lambda c: sum(1 for k, v in c.overrides.items()
                                             if k not in ("train.objective", "model.causal")
                                             and base_cfg.get(k) != v)).name
    return {m.name: ref[objective[m.name]] for m in spec.members}


def add_baseline_diffs(rows: list[MemberRow], spec: Spec) -> None:
    """Each row's compared loss minus its baseline's with the same seed."""
    ref = baselines(spec)
    by_seed = {(r.member, r.seed): r.compared_loss for r in rows}
    for r in rows:
        mine, theirs = r.compared_loss, by_seed.get((ref[r.member], r.seed))
        r.diff_vs_baseline = mine - theirs if mine is not None and theirs is not None else None


def summarize(rows: list[MemberRow], spec: Spec, margin: float = EQUIVALENCE_MARGIN) -> list[MemberSummary]:
    """Per member: mean and std over seeds, and the paired comparison with its baseline."""
    ref = baselines(spec)
    by = {m.name: [r for r in rows if r.member == m.name] for m in spec.members}
    out = []
    for m in spec.members:
        s = _summary(m, by[m.name], ref[m.name])
        if not s.is_baseline:
            ok_base = {r.seed for r in by[ref[m.name]] if r.status == "ok"}
            diffs = [r.diff_vs_baseline for r in by[m.name]
                     if r.status == "ok" and r.seed in ok_base and r.diff_vs_baseline is not None]
            _set_paired(s, paired(diffs, margin))
        out.append(s)
    return out


def _set_paired(s: MemberSummary, p: Paired) -> None:
    s.n_paired, s.diff_vs_baseline = p.n, p.delta
    s.diff_ci_low, s.diff_ci_high = p.ci_low, p.ci_high
    s.p_value, s.p_equivalence = p.p_value, p.p_equivalence
    s.significant, s.equivalent = p.significant, p.equivalent


STEPS_TO_BASELINE = "steps_to_baseline_loss"


def wants_steps_to_baseline(spec: Spec) -> bool:
    """Optimizer comparisons (and any claim on the metric) report how fast each member got there."""
    return (any(c.metric == STEPS_TO_BASELINE for c in spec.claims)
            or any("train.optimizer" in m.overrides for m in spec.members))


def add_steps_to_baseline(rows: list[MemberRow], spec: Spec) -> None:
    """Each row's first evaluation step whose val loss is at or below its baseline's final val loss
    (same seed), as the extra metric steps_to_baseline_loss; None when it never got there."""
    from tformer_cli.run.rundir import RunDir

    ref = baselines(spec)
    curves = {(r.member, r.seed): RunDir(r.run_dir).curves()[1] for r in rows if r.status == "ok"}
    for r in rows:
        mine, theirs = curves.get((r.member, r.seed)), curves.get((ref[r.member], r.seed))
        if mine is None:
            continue
        target = theirs[-1][1] if theirs else None
        r.extra[STEPS_TO_BASELINE] = None if target is None else \
            next((step for step, loss in mine if loss <= target), None)


def _summary(m: Member, rows: list[MemberRow], baseline: str) -> MemberSummary:
    ok = [r for r in rows if r.status == "ok"]
    s = MemberSummary(member=m.name, changed=m.changed, resized=m.resized, axes=dict(m.axes),
                      is_baseline=m.name == baseline, baseline=baseline, n_ok=len(ok), n_seeds=len(rows),
                      errors=sorted({r.error for r in rows if r.error}))
    for k in AVERAGED:
        mean, std = mean_std([v for r in ok if (v := getattr(r, k)) is not None])
        setattr(s, k, mean)
        setattr(s, f"{k}_std", std)
    s.unconverged = sum(1 for r in ok if r.still_learning or r.degenerate)
    known = [r.still_learning for r in ok if r.still_learning is not None]
    s.still_learning = any(known) if known else None  # None: no evaluation before the last fifth
    s.degenerate = any(r.degenerate for r in ok) if ok else None
    rises = [r.val_rise_from_best for r in ok if r.val_rise_from_best is not None]
    s.val_rise_from_best = max(rises) if rises else None
    s.overfit = any(r.overfit for r in ok) if rises else None
    drops = [r.val_drop_last_fifth for r in ok if r.val_drop_last_fifth is not None]
    s.val_drop_last_fifth = max(drops) if drops else None
    first = ok[0] if ok else (rows[0] if rows else None)
    if first is not None:
        for k in ANATOMY_KEYS + ("sample", "eval_error", "d_k", "objective"):
            setattr(s, k, getattr(first, k))
        for k, v in first.extra.items():
            vals = [x for r in ok if isinstance(x := r.extra.get(k), (int, float)) and not isinstance(x, bool)]
            # a mean over the seeds that have a value would hide those that never got there
            s.extra[k] = mean_std(vals)[0] if vals and len(vals) == len(ok) else (None if vals else v)
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
    """What a reader must know to read the table: a next-token (clm) member without the causal mask
    leaks the future.  (A masked LM is bidirectional by definition: no leak to explain.)"""
    out = []
    for m in spec.members:
        cfg = spec.member_config(m, spec.seeds[0])
        if cfg.train.objective == "clm" and not cfg.model.causal and cfg.model.arch == "gpt" \
                and cfg.task.kind == "lm":  # a fine-tuned encoder body is bidirectional by design
            out.append(LEAK_EXPLANATION)
            break
    if wants_steps_to_baseline(spec):
        every = spec.config().train.eval_interval
        out.append(f"steps to the baseline's final val loss: the first evaluation (every {every} steps) whose "
                   "val loss is at or below the baseline's last one, same seed; '-' when a seed never got there.")
    return out

