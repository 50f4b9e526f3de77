"""A study's claim, and the verdict its measurements give: agrees, disagrees or undecided.

A study file may carry a ``claim:`` section (one mapping, or a list of them)::

    claim:
      question: "Does the FFN matter?"
      statement: "Removing the FFN makes the model worse."
      source: "Vaswani et al. 2017; Geva et al. 2021"
      member: no-ffn          # the member compared with its baseline
      metric: compared_loss   # or any per-seed metric of the rows (e.g. a task metric)
      expect: higher          # higher | lower | equal: the member's metric against the baseline's
      margin: 0.02            # nats: the smallest difference that matters
      wall_time: {cpu: "...", gpu: "..."}
      gpu: {set: {train.steps: 4000}}   # a larger budget where a GPU is present
      allow_degenerate: false # true when the member's degenerate sample is what the claim predicts
      baseline: other-member  # compare with this member rather than the member's baseline;
                              # none: the member's metric itself against zero

The decision uses the per-seed differences (member - baseline, paired by seed): the mean with its
95% t interval.  ``higher`` agrees when the whole interval is above zero, disagrees when it is below
zero or inside ±margin (no difference that matters); ``equal`` agrees when the interval is inside
±margin and disagrees when it lies wholly beyond it.  Anything else is undecided, and so is any
verdict with fewer than MIN_SEEDS seeds or with a member still learning or writing degenerate text:
the verdict then says what budget would decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from tformer_cli.errors import ConfigError
from tformer_cli.study import stats
from tformer_cli.study.claim import EXPECT, NO_BASELINE, Claim
from tformer_cli.study.results import MemberRow, Verdict, arithmetic_of
from tformer_cli.study.spec import Spec


def check_members(claims: list[Claim], spec: Spec) -> None:
    names = [m.name for m in spec.members]
    bad = [f"claim.{key}: {name!r} is not a member of this study (members: {', '.join(names)})"
           for c in claims for key, name in (("member", c.member), ("baseline", c.baseline))
           if name and name not in names and not (key == "baseline" and name == NO_BASELINE)]
    bad += [f"claim.baseline: {c.baseline!r} is the claim's own member" for c in claims if c.baseline == c.member]
    if bad:
        raise ConfigError(bad)


def _value(row: MemberRow, metric: str) -> float | None:
    if metric == "compared_loss":
        return row.compared_loss
    v = row.extra.get(metric, getattr(row, metric, None))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def decide(claim: Claim, rows: list[MemberRow], spec: Spec) -> Verdict:
    """The verdict of ``claim`` on an experiment's rows."""
    base = claim.baseline or stats.baselines(spec)[claim.member]  # "none": the member's metric against zero
    return judge_rows(claim, rows, base, spec.config().train.steps)


def judge_rows(claim: Claim, rows: list[MemberRow], base: str, steps: int | None) -> Verdict:
    """The verdict of ``claim`` on ``rows``, its member against ``base`` (a member, or NO_BASELINE),
    paired by seed; ``steps``: the budget, for the suggestion of a longer one (None: unknown)."""
    v = Verdict(statement=claim.statement, source=claim.source, member=claim.member, baseline=base,
                metric=claim.metric, expect=claim.expect, margin=claim.margin, outcome="undecided", reason="",
                question=claim.question)
    mine = {r.seed: r for r in rows if r.member == claim.member and r.status == "ok"}
    theirs = {r.seed: r for r in rows if r.member == base and r.status == "ok"}
    if base == NO_BASELINE:
        diffs = [a for r in mine.values() if (a := _value(r, claim.metric)) is not None]
    else:
        seeds = sorted(set(mine) & set(theirs))
        diffs = [a - b for s in seeds if (a := _value(mine[s], claim.metric)) is not None
                 and (b := _value(theirs[s], claim.metric)) is not None]
    p = stats.paired(diffs, claim.margin)
    v.n, v.delta, v.ci_low, v.ci_high, v.p_value = p.n, p.delta, p.ci_low, p.ci_high, p.p_value
    v.arithmetic = arithmetic_of([*mine.values(), *theirs.values()])
    unconverged = [r for r in theirs.values() if r.still_learning or r.degenerate]
    unconverged += [r for r in mine.values() if r.still_learning or (r.degenerate and not claim.allow_degenerate)]
    r = rule(p, claim.expect, claim.margin, fmt=lambda x: signed(x, claim.metric))
    if r.finding != TOO_FEW and unconverged:  # too few seeds is said first; then no winner among the unconverged
        v.reason = _unconverged_reason(unconverged)
        v.suggestion = f"--steps {2 * steps}" if steps else "more --steps"
    else:
        v.outcome, v.reason, v.suggestion = r.outcome, r.reason, r.suggestion
    if over := [r for r in [*mine.values(), *theirs.values()] if r.overfit]:
        v.reason += "; " + _overfit_note(over)
    return v


def _overfit_note(rows: list[MemberRow]) -> str:
    """The overfit runs a verdict compared, named: the comparison is of models that had begun to
    memorise their training text (tformer_cli.study.convergence.overfit)."""
    members = dict.fromkeys(r.member for r in rows)
    names = ", ".join(f"{m} ({sum(r.member == m for r in rows)} seed(s))" for m in members)
    worst = max(r.val_rise_from_best or 0.0 for r in rows)
    return (f"overfit: {names}: val loss rose by up to {worst:.3f} nats from its lowest while the training loss "
            "fell (more text, or fewer steps, would compare them unmemorised)")


def _unconverged_reason(rows: list[MemberRow]) -> str:
    learning = [r for r in rows if r.still_learning]
    parts = []
    if learning and all(r.val_drop_last_fifth is None for r in learning):  # fine-tunes: the accuracy probe
        parts.append(f"{len(learning)} run(s) still learning (held-out accuracy still rose over the last fifth "
                     "of training)")
    elif learning:
        worst = max(r.val_drop_last_fifth or 0.0 for r in learning)
        parts.append(f"{len(learning)} run(s) still learning (val loss fell by up to {worst:.3f} nats over the "
                     f"last fifth of training)")
    degenerate = [r for r in rows if r.degenerate]
    if degenerate:
        parts.append(f"{len(degenerate)} run(s) write a degenerate greedy sample")
    return "; ".join(parts) + ": no winner is named among unconverged members"


TOO_FEW, ABOVE, BELOW, WITHIN, STRADDLES = "too few seeds", "above", "below", "within", "straddles"


@dataclass(frozen=True)
class Rule:
    """What an interval of paired differences says of an expectation (the one verdict rule).

    ``finding`` is what the interval shows, whatever was expected, for callers that word it
    themselves: TOO_FEW (fewer than min_seeds seeds, or no interval), ABOVE or BELOW (wholly
    above or below zero: that side is ahead), WITHIN (inside ±margin: no difference that
    matters), or STRADDLES (none of these)."""

    outcome: str  # agrees | disagrees | undecided
    reason: str
    suggestion: str = ""  # what budget would decide ("--seeds N"), when undecided
    finding: str = STRADDLES


def rule(p: stats.Paired, expect: str, margin: float, *, min_seeds: int = stats.MIN_SEEDS,
         fmt: Callable[[float], str] | None = None) -> Rule:
    """The verdict of the paired differences ``p`` (member - reference) on ``expect`` (higher |
    lower | equal) with the smallest difference that matters ``margin``.  Pure: the caller checks
    convergence (it has the rows).  ``fmt`` writes an interval bound in the undecided reason
    (default: 4 signed decimals)."""
    if expect not in EXPECT:
        raise ValueError(f"expect: {expect!r}, expected one of {', '.join(EXPECT)}")
    lo, hi, m = p.ci_low, p.ci_high, margin
    if p.n < min_seeds or lo is None or hi is None:
        return Rule("undecided", f"{p.n} paired seed(s): at least {min_seeds} are needed to test a difference",
                    f"--seeds {max(min_seeds, 2 * max(p.n, 1))}", TOO_FEW)
    within = -m < lo and hi < m
    finding = ABOVE if lo > 0 else BELOW if hi < 0 else WITHIN if within else STRADDLES
    if expect == "equal":
        if within:
            return Rule("agrees", f"the 95% interval lies within ±{m:g}", finding=finding)
        if lo > m or hi < -m:
            return Rule("disagrees", f"the 95% interval lies beyond ±{m:g}", finding=finding)
    else:
        ahead = ABOVE if expect == "higher" else BELOW
        if finding == ahead:
            return Rule("agrees", f"the 95% interval is {expect} than the baseline's throughout", finding=finding)
        if finding in (ABOVE, BELOW):
            return Rule("disagrees", "the 95% interval is on the other side of zero", finding=finding)
        if within:
            return Rule("disagrees", f"no difference that matters: the interval lies within ±{m:g}", finding=finding)
    fmt = fmt or (lambda x: f"{x:+.4f}")
    return Rule("undecided", f"the 95% interval [{fmt(lo)}, {fmt(hi)}] straddles the decision boundaries "
                f"(margin ±{m:g})", f"--seeds {_seeds_needed(p, m)}", finding)


def _seeds_needed(p: stats.Paired, margin: float) -> int:
    """Seeds for the interval to shrink below the larger of |delta| and the margin (a rough guide)."""
    assert p.ci_low is not None and p.ci_high is not None
    half = (p.ci_high - p.ci_low) / 2
    target = max(abs(p.delta or 0.0), margin)
    return int(min(50, max(p.n + 1, math.ceil(p.n * (half / target) ** 2) + 1)))


def verdicts(spec: Spec, rows: list[MemberRow]) -> list[Verdict]:
    return [decide(c, rows, spec) for c in spec.claims]


def signed(x: float, metric: str, digits: int = 4) -> str:
    """A difference of ``metric`` with its sign: whole steps for a count of steps, else 4 decimals."""
    return f"{x:+,.0f}" if metric.startswith("steps_") else f"{x:+.{digits}f}"
