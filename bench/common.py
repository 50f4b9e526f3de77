"""What several bench scripts share: the repository's folders and the Markdown tables' cells."""

from __future__ import annotations

import os
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.path.join(ROOT, ".bench_scratch")  # git-ignored: nanoGPT's copy, runs, figures


def cell(xs: list[float], fmt: str = "{:.1f}") -> str:
    """Median with the spread, e.g. '22.8 (22.1-23.5)'."""
    med = fmt.format(statistics.median(xs))
    return med if len(xs) == 1 else f"{med} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
