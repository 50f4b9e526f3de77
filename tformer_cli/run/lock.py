"""One process at a time in a run (or experiment) directory.

``DirLock(path)`` takes an exclusive ``flock`` on ``path/.tformer.lock`` and holds it for the
whole run.  The kernel releases a flock when its process dies, however it dies, so a lock left
by a killed process is never stale: the next process simply gets it.  The file holds the
holder's pid, for the message a second process gets.  On release the file is removed while
still locked; a process that locked a file that was meanwhile removed (or replaced) notices by
comparing inodes and tries again, so two processes never both believe they hold the lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from tformer_cli.errors import ConfigError, RunError
from tformer_cli.run.rundir import LOCK_NAME, RunDir


class DirLock:
    """An exclusive lock on a directory (which must exist), for a ``with`` block."""

    def __init__(self, path: str | Path, what: str = "run"):
        self.path = Path(path)
        self.file = self.path / LOCK_NAME
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> "DirLock":
        import fcntl

        for _ in range(100):
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    # a read-only directory cannot be written by anyone: nothing to protect
                    return self
                raise RunError(f"cannot lock {self.path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_pid(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunError(f"cannot lock {self.path}: {e.strerror}") from None
                who = f"process {holder}" if holder else "another process"
                raise RunError(
                    f"{self.path} is in use by {who} (another tformer working in this {self.what})",
                    hint=f"wait for it to finish, or stop it first (kill {holder})" if holder
                    else "wait for it to finish, or stop it first",
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # removed by the previous holder between our open and our flock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return self
        raise RunError(f"cannot lock {self.path}: the lock file keeps changing")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.file)
        except OSError:
            pass
        os.close(self.fd)  # closing releases the flock
        self.fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def new_run_dir(path: str | Path, overwrite: bool):
    """Create (or, with ``overwrite``, reuse) the run directory ``path``, locked for the block.

    The lock is taken before the directory is checked, so two processes given the same --out
    cannot both pass the check.  When the block fails or stops before a checkpoint was written,
    the files this run wrote are removed, and the directory too if this call created it: a
    failed ``tformer train --out rN`` leaves no rN behind."""
    path = Path(path)
    created = not path.exists()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is a file", hint="choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {path}: {e.strerror}",
                          hint="choose a writable --out") from None
    try:
        with DirLock(path):
            ok = False
            try:
                RunDir(path).prepare(overwrite)
                yield path
                ok = True
            finally:
                if not ok and created:
                    _remove_unfinished(path)
    finally:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty: nothing but a failed start was there


def _remove_unfinished(path: Path) -> None:
    """The files of a run that never wrote a checkpoint (only in a directory this run created)."""
    rd = RunDir(path)
    if rd.has_checkpoint():
        return
    for f in rd.written_files():
        with contextlib.suppress(OSError):
            f.unlink()
