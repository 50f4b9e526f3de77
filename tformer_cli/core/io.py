"""Crash-safe file writing: a temporary file in the same directory, fsync, rename.

A process killed at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


# Test-only: seconds to sleep between writing a ``.safetensors`` temp file and renaming it,
# so a test can kill the process in the middle of a checkpoint save (tests/test_reliability.py).
# Unset in normal use; never needed outside the test suite.
SAVE_DELAY_ENV = "TFORMER_TEST_SAVE_DELAY"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _test_save_delay(path)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _test_save_delay(path: Path) -> None:
    delay = os.environ.get(SAVE_DELAY_ENV)
    if delay and path.suffix == ".safetensors":
        import time

        time.sleep(float(delay))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
