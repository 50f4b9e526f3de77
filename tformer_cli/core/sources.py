"""Training text from where it lives: a JSONL file, a Parquet file, a Hugging Face dataset.

``read_corpus`` (core/data.py) hands a corpus here when its name says so:

- ``FILE.jsonl``: one JSON object a line; each object's ``data.text_field`` (default ``text``) is
  one document;
- ``FILE.parquet``: the ``data.text_field`` column (needs pyarrow: ``pip install 'tformer[parquet]'``);
- ``hf:NAME[/CONFIG][:SPLIT]``: ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)`` streamed
  (default split ``train``; needs ``pip install 'tformer[hf]'``; the hub's offline cache and
  HF_DATASETS_OFFLINE are the datasets library's own), or ``hf:FOLDER[:SPLIT]`` for a folder that
  ``save_to_disk`` wrote.

Documents are joined with a blank line between them.  ``data.max_chars`` stops the reading once
that many characters are in, so a large dataset is never read further than the run needs.  The
token cache keys on the text itself (its SHA-256), so the same rows give the same cache entry.
Every mistake is one line naming the file and the line, the column or the split (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from tformer_cli.errors import DataError

DOC_SEP = "\n\n"
HF = "hf:"
SUFFIXES = (".jsonl", ".parquet")


def is_source(name: str) -> bool:
    """Whether ``name`` is read here rather than as a plain text file."""
    return name.startswith(HF) or Path(name).suffix.lower() in SUFFIXES


def read_source(name: str, field: str, max_chars: int | None) -> tuple[str, str]:
    """(text, label) of a JSONL file, a Parquet file or a Hugging Face dataset."""
    if name.startswith(HF):
        docs, label = _hf(name[len(HF):], field), name
    elif Path(name).suffix.lower() == ".jsonl":
        docs, label = _jsonl(Path(name).expanduser(), field), str(name)
    else:
        docs, label = _parquet(Path(name).expanduser(), field), str(name)
    text = _join(docs, max_chars)
    if not text.strip():
        raise DataError(f"{label} has no text in its field {field!r}", hint="give a dataset with some text in it")
    return text, label


def _join(docs: Iterable[str], max_chars: int | None) -> str:
    parts, size = [], 0
    for doc in docs:
        parts.append(doc)
        size += len(doc) + len(DOC_SEP)
        if max_chars is not None and size >= max_chars:
            break
    text = DOC_SEP.join(parts)
    return text[:max_chars] if max_chars is not None else text


def _jsonl(path: Path, field: str) -> Iterator[str]:
    from tformer_cli.core.token_cache import read_corpus_bytes

    raw = read_corpus_bytes(path, "give a JSONL file: one JSON object a line")
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise DataError(f"{path} line {i}: not JSON ({str(e)[:80]})",
                            hint="each line of a JSONL file is one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {i}: expected a JSON object, got {type(row).__name__}",
                            hint="each line of a JSONL file is one JSON object") from None
        if field not in row:
            shown = ", ".join(sorted(map(str, row))[:12]) or "none"
            raise DataError(f"{path} line {i} has no field {field!r} (its fields: {shown})",
                            hint="name the text's field with --set data.text_field=NAME")
        yield _text(row[field], f"{path} line {i}: field {field!r}")


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where} is not text (got {type(value).__name__})",
                        hint="name a field that holds strings with --set data.text_field=NAME")
    return value


def _parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow, which is not installed",
                        hint="pip install 'tformer[parquet]' (or pip install pyarrow)") from None
    if not path.is_file():
        raise DataError(f"corpus not found: {path}", hint="give the path of a Parquet file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a file that is not Parquet
        raise DataError(f"{path} is not a Parquet file ({type(e).__name__}: {str(e)[:80]})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise DataError(f"{path} has no column {field!r} (its columns: {', '.join(names[:12])})",
                        hint="name the text's column with --set data.text_field=NAME")
    kind = pf.schema_arrow.field(field).type
    import pyarrow as pa

    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {field!r} is {kind}, not text",
                        hint="name a string column with --set data.text_field=NAME")
    for batch in pf.iter_batches(columns=[field]):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield value


def parse_hf(spec: str) -> tuple[str, str | None, str]:
    """hf:NAME[/CONFIG][:SPLIT] -> (name, config, split).  NAME may have an owner (owner/name):
    then its config follows a second slash, and hf:owner/name/ (an empty config) is the dataset
    without one.  An existing folder is a save_to_disk folder, whole."""
    head, _, split = spec.partition(":")
    parts = head.split("/")
    if Path(head).expanduser().is_dir() or len(parts) == 1:
        name, config = head, None
    elif len(parts) == 2:
        name, config = parts
    else:
        name, config = "/".join(parts[:-1]), parts[-1]
    if not name:
        raise DataError(f"hf:{spec}: no dataset name", hint="e.g. --data hf:wikitext/wikitext-2-raw-v1:train")
    return name, config or None, split or "train"


def _hf(spec: str, field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"hf:{spec} needs the datasets library, which is not installed",
                        hint="pip install 'tformer[hf]' (or pip install datasets)") from None
    name, config, split = parse_hf(spec)
    folder = Path(name).expanduser()
    try:
        if folder.is_dir():  # written by save_to_disk: a Dataset, or a DatasetDict of splits
            ds = datasets.load_from_disk(str(folder))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"hf:{spec}: split {split!r} does not exist (splits: {', '.join(ds)})",
                                    hint=f"e.g. --data hf:{name}:{next(iter(ds))}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except DataError:
        raise
    except ValueError as e:  # datasets: an unknown split or config
        raise DataError(f"hf:{spec}: {str(e).splitlines()[0][:160]}",
                        hint="name an existing config and split: hf:NAME/CONFIG:SPLIT") from None
    except Exception as e:  # no network, not on the hub, not in the offline cache
        raise DataError(f"hf:{spec} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
                        hint="check the name and the network; offline, only a dataset in the hub's cache "
                             "(HF_DATASETS_OFFLINE=1) or a save_to_disk folder loads") from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and field not in columns:
        raise DataError(f"hf:{spec} has no column {field!r} (its columns: {', '.join(columns[:12])})",
                        hint="name the text's column with --set data.text_field=NAME")
    for i, row in enumerate(ds):
        yield _text(row.get(field), f"hf:{spec} row {i + 1}: column {field!r}")
