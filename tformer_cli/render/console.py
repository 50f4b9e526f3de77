"""The two consoles every command prints through, and --json output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

_console: Console | None = None
_err_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(highlight=False)
    return _console


def err_console() -> Console:
    global _err_console
    if _err_console is None:
        _err_console = Console(stderr=True, highlight=False)
    return _err_console


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def line(con: Console, text: str, **kwargs) -> None:
    """A line of text: wrapped at spaces on a terminal, written whole otherwise (a log is never
    folded at 80 columns)."""
    con.print(text, soft_wrap=not con.is_terminal, **kwargs)
