"""Reading a corpus file and the token cache without trusting either.

* A corpus path must be a regular file (a FIFO would block the open forever, a device would
  never end); it is read in chunks, polling the stop flag and reporting progress for big files.
* Tokenization runs in chunks cut where the result cannot change (after a newline followed by
  a non-space character), polling the stop flag between chunks.
* A cache entry is checked before use (meta.json typed, the .bin sizes equal to the token
  counts, the tokenizer readable and of the recorded size); a damaged entry is reported with
  ``DamagedCache`` so the caller can rebuild it.

Silent: progress goes through ``tformer_cli.core.stop.notice``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tformer_cli.core import stop
from tformer_cli.core.untrusted import UnreadableFile, read_text, regular_file_size, short
from tformer_cli.errors import DataError

CHUNK = 16 << 20  # bytes read (and characters tokenized) between two looks at the stop flag
BIG = 64 << 20  # corpora at least this large report their progress
_CUT = re.compile(r"\n(?=\S)")


def read_corpus_bytes(path: Path, hint: str) -> bytes:
    """The bytes of a corpus file: a regular file, read in chunks (stop flag, progress)."""
    try:
        size = regular_file_size(path)
    except UnreadableFile as e:
        if e.missing:
            raise DataError(f"corpus not found: {path}", hint=hint) from None
        if "directory" in e.reason:
            raise DataError(f"corpus path is a directory, not a file: {path}", hint=hint) from None
        raise DataError(f"corpus {path} {e.reason}", hint="give a regular UTF-8 text file") from None
    parts, done = [], 0
    try:
        with open(path, "rb") as f:
            while True:
                stop.check("while reading the corpus: nothing was saved")
                block = f.read(CHUNK)
                if not block:
                    break
                parts.append(block)
                done += len(block)
                if size >= BIG:
                    stop.notice(f"reading {path}: {min(100, done * 100 // size)}% of {size / 2**20:,.1f} MiB",
                                final=done >= size)
    except OSError as e:
        raise DataError(f"cannot read corpus {path}: {e.strerror}") from None
    return b"".join(parts)


def encode_in_chunks(tok, text: str) -> list[int]:
    """``tok.encode(text)``, chunk by chunk, polling the stop flag (same ids as one call)."""
    if len(text) <= CHUNK:
        stop.check("while tokenizing: nothing was saved")
        return tok.encode(text)
    ids: list[int] = []
    start = 0
    while start < len(text):
        stop.check("while tokenizing: nothing was saved")
        end = min(len(text), start + CHUNK)
        if end < len(text):
            m = _CUT.search(text, end)
            end = m.end() if m else len(text)
        ids.extend(tok.encode(text[start:end]))
        start = end
        if len(text) >= BIG:
            stop.notice(f"tokenizing: {start * 100 // len(text)}%", final=start >= len(text))
    return ids


class DamagedCache(Exception):
    """A token-cache entry that cannot be used; ``str`` says what is wrong."""


def open_cache(cache_dir: Path, load_tokenizer) -> tuple[dict, np.ndarray, np.ndarray, object]:
    """(meta, train ids, val ids, tokenizer) of a cache entry, every part checked first."""
    try:
        meta = json.loads(read_text(cache_dir / "meta.json", 1 << 20))
    except (UnreadableFile, ValueError, RecursionError) as e:
        raise DamagedCache(f"meta.json: {short(str(e), 80)}") from None
    if not isinstance(meta, dict):
        raise DamagedCache("meta.json: not a JSON object")
    if meta.get("dtype") not in ("<u2", "<u4"):
        raise DamagedCache(f"meta.json: field dtype: {short(meta.get('dtype'))}")
    for key in ("n_train", "n_val", "train_bytes", "val_bytes", "vocab_size"):
        v = meta.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**48):
            raise DamagedCache(f"meta.json: field {key}: {short(v)}")
    dtype = np.dtype(meta["dtype"])
    arrays = []
    for name in ("train", "val"):
        n = meta[f"n_{name}"]
        path = cache_dir / f"{name}.bin"
        if n == 0:
            arrays.append(np.zeros(0, dtype))
            continue
        try:
            size = regular_file_size(path)
        except UnreadableFile as e:
            raise DamagedCache(f"{name}.bin: {e.reason}") from None
        if size != n * dtype.itemsize:
            raise DamagedCache(f"{name}.bin: {size} bytes for {n} tokens")
        arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    try:
        tok = load_tokenizer(cache_dir / "tokenizer.json")
    except DataError as e:
        raise DamagedCache(str(e)) from None
    if tok.vocab_size != meta["vocab_size"]:
        raise DamagedCache(f"tokenizer.json has {tok.vocab_size} tokens, meta.json says {meta['vocab_size']}")
    for ids in arrays:  # an id past the vocabulary would index out of the embedding table
        for start in range(0, len(ids), CHUNK):
            stop.check("while checking the token cache: nothing was saved")
            if len(ids) and int(ids[start:start + CHUNK].max()) >= tok.vocab_size:
                raise DamagedCache("a token id is beyond the vocabulary")
    return meta, arrays[0], arrays[1], tok
