"""Errors the CLI turns into one line of text, a hint and an exit code.

The core raises these; only the CLI layer prints and exits.  Exit codes:
0 ok, 1 runtime error, 2 usage/config error, 130 interrupted.
"""

from __future__ import annotations


class TformerError(Exception):
    """A known failure: ``str(err)`` is the one-line message, ``hint`` says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ConfigError(TformerError):
    """Bad configuration or usage; may carry several problems, reported together."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, hint: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems in the configuration:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message, hint)


class DataError(TformerError):
    """A corpus that cannot be used (missing, empty, not UTF-8, too short)."""

    exit_code = 2


class RunError(TformerError):
    """Something went wrong while working (checkpoint, device, numerics)."""

    exit_code = 1


class Interrupted(TformerError):
    """A run stopped by Ctrl-C after saving; the command has already said how to resume."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("")


class Stopped(TformerError):
    """A stop (Ctrl-C, SIGTERM) honoured before there was anything to save."""

    exit_code = 130

    def __init__(self, what: str = "", hint: str | None = None):
        super().__init__(f"stopped{' ' + what if what else ''}", hint)
