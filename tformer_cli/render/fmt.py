"""Numbers as short strings: bytes, counts, losses, parameter counts, durations."""

from __future__ import annotations

import math


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_int(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def fmt_loss(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def fmt_span(s: float | None) -> str:
    """A part of a wall time: tenths of a second under 10 s (a split of short runs), else fmt_time."""
    if s is not None and 0 <= s < 9.95:
        return f"{s:.1f}s"
    return fmt_time(s)


def time_split(setup: float | None, steps: float | None, evaluation: float | None,
               checkpoints: float | None) -> str:
    """'set-up 1.2s, steps 50s, evaluation 4.1s, checkpoints 0.3s' (the parts known), or ''."""
    parts = [(name, v) for name, v in (("set-up", setup), ("steps", steps), ("evaluation", evaluation),
                                       ("checkpoints", checkpoints)) if v is not None]
    return ", ".join(f"{name} {fmt_span(v)}" for name, v in parts)


def fmt_time(s: float | None) -> str:
    if s is None or s < 0 or math.isinf(s):
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
