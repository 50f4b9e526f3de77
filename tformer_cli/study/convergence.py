"""Is a member done learning?  A comparison between members that are still improving fast, or
that write degenerate text, measures where they happen to be at the budget, not what they can do.

Two checks per member and seed:
- still learning fast: over the last fifth of training (from the last evaluation at or before 80%
  of the steps to the final one) the validation loss fell by more than STILL_LEARNING_FRACTION of
  all it had fallen since the start (from ln(vocab), a uniform guess), and by more than
  STILL_LEARNING nats.  A run in its slow tail (a few percent of its gains in the last fifth) is
  not learning fast; a run cut off mid-descent is.  Whether a verdict survives a longer run is
  then checked directly, by doubling the budget (docs/studies.md);
- overfit: the validation loss rose by more than OVERFIT nats from its lowest evaluation to the
  final one while the training loss kept falling (a model that has begun to memorise its corpus,
  as the larger rungs of a scale ladder may when the text runs out);
- degenerate sample: the greedy continuation loops (the same short unit over and over, e.g.
  "the the the") or is mostly one character.
"""

from __future__ import annotations

STILL_LEARNING = 0.02  # nats over the last fifth of the steps, at least
STILL_LEARNING_FRACTION = 0.05  # of the whole fall from ln(vocab) to the final loss
LAST_PART = 0.2
OVERFIT = 0.01  # nats the final val loss sits above its lowest, at least, to call a run overfit


def last_fifth_drop(curve: list[tuple[int, float]], steps: int) -> float | None:
    """How much the validation loss fell over the last fifth of ``steps``; None when the curve has
    no evaluation in the first four fifths (evaluate more often: train.eval_interval)."""
    if not curve or steps <= 0:
        return None
    cut = steps * (1 - LAST_PART)
    before = [v for s, v in curve if s <= cut]
    final = [v for s, v in curve if s == steps] or [curve[-1][1]]
    if not before:
        return None
    return before[-1] - final[-1]


def still_learning(drop: float | None, final: float | None = None, start: float | None = None) -> bool | None:
    """Whether a run was still learning fast at its end (None: unknown).  ``final`` and ``start`` (the
    final val loss and ln(vocab)) scale the threshold to the run's whole progress when given."""
    if drop is None:
        return None
    threshold = STILL_LEARNING
    if final is not None and start is not None and start > final:
        threshold = max(threshold, STILL_LEARNING_FRACTION * (start - final))
    return drop > threshold


def overfit_rise(val: list[tuple[int, float]], train: list[tuple[int, float]]) -> float | None:
    """How far (nats) the final validation loss sits above its lowest evaluation when the training
    loss fell over the same span (from that evaluation's step to the end), else 0; None when a
    curve is missing.  Over OVERFIT is overfit (``overfit``)."""
    if len(val) < 2 or not train:
        return None
    best_step, best = min(val, key=lambda sv: (sv[1], sv[0]))
    final = val[-1][1]
    at_best = [v for s, v in train if s <= best_step] or [train[0][1]]
    if final <= best or train[-1][1] >= at_best[-1]:
        return 0.0
    return final - best


def overfit(rise: float | None) -> bool | None:
    return None if rise is None else rise > OVERFIT


def degenerate(text: str, max_unit: int = 8) -> bool:
    """True when ``text`` (a greedy continuation, prompt excluded) loops or is mostly one character."""
    s = text.strip()
    if len(s) < 8:
        return len(set(s)) <= 1
    if max(s.count(c) for c in set(s)) > 0.6 * len(s):
        return True
    tail = s[len(s) // 3:]  # a loop may start after a few tokens of real text
    for unit in range(1, max_unit + 1):
        if len(tail) >= 3 * unit and all(tail[i] == tail[i - unit] for i in range(unit, len(tail))):
            return True
    return False
