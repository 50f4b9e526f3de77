"""The process-wide stop flag: a first Ctrl-C or a SIGTERM asks every long loop to stop.

The CLI's signal handler calls ``request()``; the training loop, evaluation, tokenization, the
post-training measurement of experiment members and the probes call ``requested()`` (to stop
gracefully) or ``check()`` (to give up at once with ``Stopped``) between units of work, so a
stop is honoured within one unit however long the loop is.  Silent, torch-free.
"""

from __future__ import annotations

from tformer_cli.errors import Stopped

_requested = False


def request() -> None:
    global _requested
    _requested = True


def clear() -> None:
    global _requested
    _requested = False


def requested() -> bool:
    return _requested


def check(what: str = "") -> None:
    """Raise ``Stopped`` when a stop was asked for."""
    if _requested:
        raise Stopped(what)


# ---------------------------------------------------------------- progress of long reads

_notice = None


def set_notice(fn) -> None:
    """Where the long loops' progress lines go: ``fn(message, final)`` (the CLI connects its
    stderr console while a command runs, see cli/options.py StopOnInterrupt); None: nowhere."""
    global _notice
    _notice = fn


def notice(message: str, final: bool = False) -> None:
    """One progress line of a long loop; ``final`` on its last one (the work is done)."""
    if _notice is not None:
        _notice(message, final)
