"""`tformer study --until-converged`: the study again at twice the steps while its members still learn
(the budget doubled; the scale ladder, study/scale.py, grows the model).

A verdict refuses to name a winner among members that are still learning fast at the end of
training (tformer_cli.study.convergence) and suggests twice the steps.  Instead of leaving that
to the user, the ladder runs the study at its own budget, then at 2x, 4x, ... steps, each budget
a complete, fresh study in its own directory (OUT/steps-N: a longer cosine schedule is a
different run, not a continuation), until no verdict asks for more steps or the next budget
would pass the cap.  Every rung stays on disk, so the ladder also shows whether a verdict holds
when the budget doubles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tformer_cli.errors import ConfigError
from tformer_cli.study.results import ExperimentResult

DEFAULT_DOUBLINGS = 2  # the cap, unless --max-steps: the study's budget x 2**2


@dataclass
class Rung:
    steps: int
    result: ExperimentResult


def rung_dir(root: Path, steps: int) -> Path:
    return Path(root) / f"steps-{steps}"


def max_steps_for(steps: int, max_steps: int | None) -> int:
    """The cap of a ladder that starts at ``steps``: --max-steps, or DEFAULT_DOUBLINGS doublings."""
    if max_steps is None:
        return steps * 2 ** DEFAULT_DOUBLINGS
    if max_steps < steps:
        raise ConfigError(f"--max-steps {max_steps} is below the study's budget of {steps} steps",
                          hint=f"give --max-steps {2 * steps} or more (each rung doubles the steps)")
    return max_steps


def wants_more_steps(result: ExperimentResult) -> bool:
    """Whether the measurements ask for a longer run: a verdict left undecided because members are
    still learning (or loop), or, for a study without a claim, any member still learning."""
    if result.verdicts:
        return any(v.outcome == "undecided" and v.suggestion.startswith("--steps") for v in result.verdicts)
    return any(r.status == "ok" and (r.still_learning or r.degenerate) for r in result.rows)


def next_steps(result: ExperimentResult, steps: int, cap: int) -> int | None:
    """The next rung's budget, or None when the ladder stops (decided, converged, or at the cap)."""
    if result.interrupted or not wants_more_steps(result) or 2 * steps > cap:
        return None
    return 2 * steps


def stop_reason(rungs: list[Rung], cap: int) -> str:
    """One line: why the ladder stopped where it did."""
    last = rungs[-1]
    if not wants_more_steps(last.result):
        return f"stopped at {last.steps} steps: no verdict asks for more steps (members converged)"
    return (f"stopped at {last.steps} steps: members are still learning, and {2 * last.steps} would pass "
            f"the cap of {cap} (raise it with --max-steps)")
