"""Reading text that tformer did not just write: bounded, typed, and echoed short.

Every file read back from disk (a config, a run directory's files, the token cache) may be
damaged or crafted.  Three rules keep a bad file from costing memory or a long message:

* ``short(value)``: a value echoed in a message is cut to about 80 characters;
* ``read_bytes(path, limit)``: only regular files are read (a FIFO, a device or a symlink to
  /dev/zero is refused before opening), and never more than ``limit`` bytes;
* ``yaml_load(text)``: YAML with the safe loader and *no aliases or anchors* (a 500-byte alias
  bomb expands to gigabytes).

Torch-free and silent.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

SHORT = 80
MiB = 1 << 20
TEXT_LIMIT = 64 * MiB  # config.yaml, summary.json, results.json, tokenizer.json, metrics.jsonl


def short(value: Any, limit: int = SHORT) -> str:
    """``repr(value)`` cut to about ``limit`` characters (the repr of a huge value is never built)."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        value = value[: limit + 1]
    elif isinstance(value, (list, tuple, dict, set)) and len(value) > 8:
        value = type(value).__name__ + f" of {len(value)} items"
        return value
    try:
        text = repr(value)
    except Exception:  # a repr that fails (a huge int past the str limit, say)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UnreadableFile(Exception):
    """A file that is missing, not a regular file, too large or unreadable: ``str`` says which."""

    def __init__(self, path: Path, reason: str, missing: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.missing = path, reason, missing


def regular_file_size(path: str | Path) -> int:
    """The size of a regular file (symlinks followed); UnreadableFile for anything else."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UnreadableFile(path, "not found", missing=True) from None
    except OSError as e:
        raise UnreadableFile(path, e.strerror or str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise UnreadableFile(path, "is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else ("a device" if stat.S_ISCHR(st.st_mode) or
                                                          stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise UnreadableFile(path, f"is {kind}, not a regular file")
    return st.st_size


def read_bytes(path: str | Path, limit: int = TEXT_LIMIT) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; UnreadableFile otherwise."""
    path = Path(path)
    size = regular_file_size(path)
    if size > limit:
        raise UnreadableFile(path, f"is {size:,} bytes, more than the {limit:,} expected")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise UnreadableFile(path, e.strerror or str(e)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the stat and the open
            raise UnreadableFile(path, "is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UnreadableFile(path, e.strerror or str(e)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnreadableFile(path, f"is more than the {limit:,} bytes expected")
    return data


def read_text(path: str | Path, limit: int = TEXT_LIMIT) -> str:
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableFile(Path(path), f"is not UTF-8 text (byte {e.start})") from None


# ---------------------------------------------------------------- YAML without aliases


class NoAliasLoader(yaml.SafeLoader):
    """The safe loader, refusing anchors and aliases: no value can be expanded into many."""

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML's hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in tformer files", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors (&name) are not allowed in tformer files", event.start_mark)
        return super().compose_node(parent, index)


def yaml_load(text: str) -> Any:
    """Parse YAML with the safe loader, refusing anchors and aliases (yaml.YAMLError on failure)."""
    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    except ValueError as e:  # an integer of 100,000 digits, say: Python refuses to convert it
        raise yaml.YAMLError(f"a value cannot be read ({str(e)[:80]})") from None
    finally:
        loader.dispose()
