"""Tables that fit: every table tformer prints goes through `show`.

Rules (tested at 80 columns and through a pipe):
- numbers are never cut or broken: a numeric cell keeps its full width;
- text wraps at spaces, and a word longer than TEXT_WRAP folds rather than ending in '…';
- a table wider than the terminal is split into parts that each repeat the key columns
  (the member name, say), so columns are moved, never dropped silently;
- when the output is not a terminal (a pipe, a log file, CI) the table is written at its
  natural width in one piece, whatever COLUMNS says: a log is never cut.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

from rich import box
from rich.console import Console
from rich.table import Table

TEXT_WRAP = 24  # a text column may be folded down to this many characters
_BORDER = 3  # what each column costs besides its text: padding and one rule ("│ x │")


@dataclass
class Col:
    """A column: its header, whether it holds numbers (right-aligned, never broken), and
    whether it is a key that every part of a split table repeats."""

    header: str
    numeric: bool = False
    key: bool = False


def _min_width(col: Col, cells: Sequence[str]) -> int:
    """The narrowest this column may get without cutting anything."""
    header_words = max((len(w) for w in col.header.split()), default=1)
    if col.numeric:
        return max([header_words] + [len(line) for c in cells for line in c.splitlines() or [""]])
    longest = max([len(w) for c in cells for w in c.split()] or [1])
    return max(header_words, min(longest, TEXT_WRAP))


def _natural_width(col: Col, cells: Sequence[str]) -> int:
    return max([len(col.header)] + [len(line) for c in cells for line in c.splitlines() or [""]])


def _parts(cols: Sequence[Col], widths: list[int], limit: int) -> list[list[int]]:
    """Column indices of each part: key columns in every part, the others packed in order."""
    keys = [i for i, c in enumerate(cols) if c.key]
    used = 1 + sum(widths[i] + _BORDER for i in keys)
    parts: list[list[int]] = []
    current: list[int] = []
    width = used
    for i, c in enumerate(cols):
        if c.key:
            continue
        if current and width + widths[i] + _BORDER > limit:
            parts.append(current)
            current, width = [], used
        current.append(i)
        width += widths[i] + _BORDER
    if current or not parts:
        parts.append(current)
    return [sorted(keys + p) for p in parts]


def _fit(idx: list[int], minimum: list[int], natural: list[int], limit: int) -> list[int]:
    """Widths for the columns ``idx``: each its minimum, then the room left shared out, column by
    column, towards each column's natural width (unwrapped headers and text)."""
    widths = list(minimum)
    room = limit - 1 - sum(minimum[i] + _BORDER for i in idx)
    for i in idx:
        grow = max(0, min(natural[i] - minimum[i], room))
        widths[i] += grow
        room -= grow
    return widths


def _table(cols: Sequence[Col], rows: Sequence[Sequence[str]], idx: list[int], widths: list[int] | None,
           header: bool = True) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=header)
    for i in idx:
        c = cols[i]
        # Widths are decided here (_fit), not by rich: its own sharing of space between wrapped
        # headers could make a table one column wider than the terminal, and the terminal crops.
        t.add_column(c.header, justify="right" if c.numeric else "left", overflow="fold",
                     width=widths[i] if widths else None)
    for r in rows:
        t.add_row(*(r[i] for i in idx))
    return t


def _line(con: Console, text: str | None, style: str) -> None:
    """A title or caption: its own line, not the table's (rich would wrap it to the table's
    width); wrapped at spaces on a terminal, whole otherwise."""
    if text:
        con.print(text, style=style, soft_wrap=not con.is_terminal)


def show(con: Console, cols: Sequence[Col], rows: Sequence[Sequence[str]], title: str | None = None,
         caption: str | None = None, header: bool = True) -> None:
    """Print ``rows`` (strings, one per column) under ``cols`` so that nothing is ever cut."""
    rows = [[("" if v is None else str(v)) for v in r] for r in rows]
    cells = [[r[i] for r in rows] for i in range(len(cols))]
    if not con.is_terminal:
        natural = [_natural_width(c, cells[i]) for i, c in enumerate(cols)]
        _line(con, title, "table.title")
        _print_wide(con, _table(cols, rows, list(range(len(cols))), natural, header),
                    1 + sum(w + _BORDER for w in natural))
        _line(con, caption, "table.caption")
        return
    widths = [_min_width(c, cells[i]) for i, c in enumerate(cols)]
    natural = [_natural_width(c, cells[i]) for i, c in enumerate(cols)]
    parts = _parts(cols, widths, con.width)
    for n, idx in enumerate(parts):
        _line(con, title if len(parts) == 1 else f"{title or 'table'} ({n + 1}/{len(parts)})", "table.title")
        con.print(_table(cols, rows, idx, _fit(idx, widths, natural, con.width), header))
    _line(con, caption, "table.caption")


def _print_wide(con: Console, renderable, width: int) -> None:
    """Print at ``width`` columns or the console's, whichever is wider (rich caps a print at the
    console's width, which is 80 when the output is not a terminal).  The table is laid out on a
    console of its own so that ``con`` keeps its width."""
    wide = Console(file=io.StringIO(), width=max(con.width, width), force_terminal=False, highlight=False,
                   color_system=None)
    wide.print(renderable, crop=False)
    con.file.write("".join(line.rstrip() + "\n" for line in wide.file.getvalue().splitlines()))  # no padding


def show_pairs(con: Console, pairs: Sequence[tuple[str, str]], title: str | None = None) -> None:
    """A two-column key/value table (a run summary): values wrap, keys never do."""
    show(con, [Col("", key=True), Col("")], [[k, v] for k, v in pairs], title=title, header=False)
