"""Labelled text for fine-tuning: files (TSV or JSONL) and two built-in tasks.

A labelled set is a list of (text, label) examples split once into train and test.  Files
are read strictly: a malformed row, an empty text, an unknown label or a set with a single
label is a DataError naming the file and the line.  Built-in tasks need no download:

- ``source``: is a 48-character snippet English prose (the pydoc topics CPython ships) or
  Python source (the standard library)?  Whitespace is collapsed, so indentation gives
  nothing away; a topic/vocabulary task that a bag of characters already does well on.
- ``order``: 12 letters from a-h with one ``x`` and one ``y`` placed at random: does x come
  before y?  Both classes have exactly the same letters, so a bag of tokens (or a model
  that cannot see order) is at chance (50%) by construction.

Torch-free.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tformer_cli.errors import DataError

MAX_FILE_BYTES = 256 << 20
TEST_FRACTION = 0.2  # of a user's file, chosen by a fixed shuffle (built-in tasks have their own split)
SPLIT_SEED = 0


@dataclass
class Labelled:
    """A labelled set: texts and label indices of both splits, and the label names (index order)."""

    name: str
    labels: list[str]
    train_texts: list[str]
    train_y: list[int]
    test_texts: list[str]
    test_y: list[int]

    def counts(self, split: str = "train") -> list[int]:
        ys = self.train_y if split == "train" else self.test_y
        return [ys.count(i) for i in range(len(self.labels))]


# ---------------------------------------------------------------- built-in tasks


SNIPPET = 48
SOURCE_PER_CLASS = (1200, 300)  # train, test examples per class
ORDER_COUNTS = (2000, 500)  # train, test examples in all (balanced)
ORDER_LEN = 12


def _snippets(text: str, n: int, rng: random.Random, allowed: set[str]) -> list[str]:
    """``n`` distinct snippets of SNIPPET characters from ``text`` (whitespace collapsed), each
    starting at a word and written only in ``allowed`` characters."""
    flat = re.sub(r"\s+", " ", text)
    starts = [m.start() for m in re.finditer(r"(?<= )\S", flat)]
    out: set[str] = set()
    while len(out) < n:
        s = rng.choice(starts)
        piece = flat[s:s + SNIPPET]
        if len(piece) == SNIPPET and set(piece) <= allowed:
            out.add(piece)
    return sorted(out)


def _source_task() -> Labelled:
    from tformer_cli.core.data import _code, _prose

    prose, code = _prose(), _code(limit=600_000)
    allowed = set(prose) - set("\t\n\r\x0b\x0c")  # characters a run trained on `prose` knows
    rng = random.Random(SPLIT_SEED)
    splits = {"train": ([], []), "test": ([], [])}
    for label, text in enumerate((prose, code)):
        cut = int(len(text) * 0.8)  # the test snippets come from text the training ones never saw
        for split, part, n in (("train", text[:cut], SOURCE_PER_CLASS[0]), ("test", text[cut:], SOURCE_PER_CLASS[1])):
            snips = _snippets(part, n, rng, allowed)
            splits[split][0].extend(snips)
            splits[split][1].extend([label] * n)
    return _shuffled("source", ["prose", "code"], splits, rng)


def order_example(rng: random.Random) -> tuple[str, int]:
    """One ``order`` example: 12 letters, one x and one y among them; label 0 when x comes first."""
    letters = [rng.choice("abcdefgh") for _ in range(ORDER_LEN - 2)]
    i, j = sorted(rng.sample(range(ORDER_LEN), 2))
    first, second = ("x", "y") if rng.random() < 0.5 else ("y", "x")
    letters.insert(i, first)
    letters.insert(j, second)
    return "".join(letters), 0 if first == "x" else 1


def _order_task() -> Labelled:
    rng = random.Random(SPLIT_SEED)
    splits = {}
    for split, n in zip(("train", "test"), ORDER_COUNTS):
        xs, ys = [], []
        while len(xs) < n:  # balanced: alternate the class asked for
            text, y = order_example(rng)
            if y == len(xs) % 2:
                xs.append(text)
                ys.append(y)
        splits[split] = (xs, ys)
    return _shuffled("order", ["x<y", "y<x"], splits, rng)


def _shuffled(name: str, labels: list[str], splits, rng: random.Random) -> Labelled:
    out = {}
    for split, (xs, ys) in splits.items():
        order = list(range(len(xs)))
        rng.shuffle(order)
        out[split] = ([xs[i] for i in order], [ys[i] for i in order])
    return Labelled(name, labels, *out["train"], *out["test"])


TASKS = {
    "source": ("is a 48-character snippet English prose or Python source? (2 classes, balanced)", _source_task),
    "order": ("does x come before y among 12 letters? (2 classes; a bag of tokens is at chance)", _order_task),
}


# ---------------------------------------------------------------- files


def load_labelled(name_or_path: str) -> Labelled:
    """A built-in task by name, or a labelled file (.jsonl / .json lines, anything else TSV)."""
    if name_or_path in TASKS:
        return TASKS[name_or_path][1]()
    path = Path(name_or_path).expanduser()
    rows = read_rows(path)
    return split_rows(str(path), rows)


def read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, text, label) of every non-blank line, each row checked."""
    from tformer_cli.core.untrusted import UnreadableFile, read_text

    hint = f"built-in tasks: {', '.join(TASKS)}; or a TSV (text<TAB>label) or JSONL file"
    try:
        text = read_text(path, MAX_FILE_BYTES)
    except UnreadableFile as e:
        if e.missing:
            raise DataError(f"labelled data not found: {path}", hint=hint) from None
        raise DataError(f"labelled data {e}", hint=hint) from None
    jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson")
    parse = _jsonl_row if jsonl else _tsv_row
    rows = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        text_, label = parse(path, n, raw)
        if not text_.strip():
            raise DataError(f"{path}, line {n}: the text is empty", hint="every row needs some text")
        if not label.strip():
            raise DataError(f"{path}, line {n}: the label is empty", hint="every row needs a label")
        rows.append((n, text_, label.strip()))
    if not rows:
        raise DataError(f"labelled data {path} has no rows", hint=hint)
    return rows


def _tsv_row(path: Path, n: int, raw: str) -> tuple[str, str]:
    parts = raw.split("\t")
    if len(parts) != 2:
        raise DataError(f"{path}, line {n}: expected 2 tab-separated fields (text, label), got {len(parts)}",
                        hint="one example per line: TEXT<TAB>LABEL (a tab inside a text needs JSONL)")
    return parts[0], parts[1]


def _jsonl_row(path: Path, n: int, raw: str) -> tuple[str, str]:
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise DataError(f"{path}, line {n}: not valid JSON ({str(e)[:60]})",
                        hint='one object per line: {"text": "...", "label": "..."}') from None
    shape = 'one object per line: {"text": "...", "label": "..."}'
    if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
        raise DataError(f"{path}, line {n}: expected an object with fields text and label", hint=shape)
    text, label = obj["text"], obj["label"]
    if not isinstance(text, str):
        raise DataError(f"{path}, line {n}: field text must be a string", hint=shape)
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(f"{path}, line {n}: field label must be a string or an integer", hint=shape)
    return text, str(label)


def split_rows(name: str, rows: list[tuple[int, str, str]]) -> Labelled:
    """Labels in sorted order; a fixed shuffle puts TEST_FRACTION of each label in the test split."""
    labels = sorted({label for _, _, label in rows})
    if len(labels) < 2:
        raise DataError(f"{name}: every row has the label {labels[0]!r}; a classifier needs at least two labels",
                        hint="add examples of another class")
    index = {label: i for i, label in enumerate(labels)}
    rng = random.Random(SPLIT_SEED)
    train, test = [], []
    for label in labels:  # stratified: each label keeps its share in both splits
        members = [(text, index[label]) for _, text, lab in rows if lab == label]
        rng.shuffle(members)
        k = max(1, round(len(members) * TEST_FRACTION)) if len(members) > 1 else 0
        test += members[:k]
        train += members[k:]
    rng.shuffle(train)
    rng.shuffle(test)
    if not test:
        raise DataError(f"{name}: too few rows to hold any out for testing ({len(rows)} rows)",
                        hint="give at least two examples of some label")
    return Labelled(name, labels, [t for t, _ in train], [y for _, y in train],
                    [t for t, _ in test], [y for _, y in test])


def check_labels(name: str, labels: list[str], expected: list[str]) -> None:
    """On resume the label set must be the run's own."""
    if labels != expected:
        raise DataError(f"{name}: its labels {labels} differ from the run's {expected}",
                        hint="resume with the data the run was fine-tuned on")
