"""Is a member done learning?  A comparison between members that are still improving fast, or
that write degenerate text, measures where they happen to be at the budget, not what they can do.

Two checks per member and seed:
- still learning fast: over the last fifth of training (from the last evaluation at or before 80%
  of the steps to the final one) the validation loss fell by more than STILL_LEARNING_FRACTION of
  all it had fallen since the start (from ln(vocab), a uniform guess), and by more than
  STILL_LEARNING nats.  A run in its slow tail (a few percent of its gains in the last fifth) is
  not learning fast; a run cut off mid-descent is.  Whether a verdict survives a longer run is
  then checked directly, by doubling the budget (docs/studies.md);
- degenerate sample: the greedy continuation loops (the same short unit over and over, e.g.
  "the the the") or is mostly one character.
"""

from __future__ import annotations

STILL_LEARNING = 0.02  # nats over the last fifth of the steps, at least
STILL_LEARNING_FRACTION = 0.05  # of the whole fall from ln(vocab) to the final loss
LAST_PART = 0.2


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
