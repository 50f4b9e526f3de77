"""Built-in sequence-to-sequence tasks (no download): a source string in, a target string out.

- ``reverse``: 8 letters from a-j, written backwards ("badcjiga" -> "agijcdab");
- ``sort``: 8 letters from a-j, sorted ("badcjiga" -> "aabcdgij");
- ``add``: two 2-digit numbers, their 3-digit sum ("12+95" -> "107"), zero-padded.

Every task has a fixed source and target length, so batches never need padding (and no
attention mask is needed).  One vocabulary serves all tasks: BOS, SEP, then the characters.
Splits are drawn from fixed seeds; a test pair that also occurs in training is redrawn.
Torch-free.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BOS, SEP = 0, 1  # the decoder's start token / the separator between source and target in a prefix GPT
CHARS = "abcdefghij0123456789+"
VOCAB = len(CHARS) + 2
N_TRAIN, N_TEST = 20_000, 500
TASK_SEED = {"train": 0, "test": 1}


def encode(text: str) -> list[int]:
    return [CHARS.index(c) + 2 for c in text]


def decode(ids) -> str:
    return "".join(CHARS[i - 2] if 2 <= i < VOCAB else "?" for i in ids)


def _reverse(rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice("abcdefghij") for _ in range(8))
    return s, s[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice("abcdefghij") for _ in range(8))
    return s, "".join(sorted(s))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(100), rng.randrange(100)
    return f"{a:02d}+{b:02d}", f"{a + b:03d}"


TASKS = {
    "reverse": ("8 letters backwards (each output reads one fixed input position)", _reverse),
    "sort": ("8 letters sorted (each output depends on the whole input)", _sort),
    "add": ("two 2-digit numbers and their 3-digit sum (carries)", _add),
}


@dataclass
class PairSet:
    """Source and target ids of one task's split, each of a fixed length."""

    task: str
    src: list[list[int]]
    tgt: list[list[int]]

    @property
    def src_len(self) -> int:
        return len(self.src[0])

    @property
    def tgt_len(self) -> int:
        return len(self.tgt[0])


def lengths(task: str) -> tuple[int, int]:
    """(source length, target length) of every pair of ``task``."""
    src, tgt = TASKS[task][1](random.Random(0))
    return len(src), len(tgt)


def block_size(arch: str, task: str) -> int:
    """The positions a model of ``arch`` needs for ``task``: the longer sequence of the two for the
    encoder-decoder (each stack reads one), ``source SEP target`` for the GPT reading a prefix."""
    src, tgt = lengths(task)
    return max(src, tgt) if arch == "encdec" else src + 1 + tgt


def pairs(task: str) -> tuple[PairSet, PairSet]:
    """(train, test) of ``task``: N_TRAIN and N_TEST pairs; no test source occurs in training."""
    make = TASKS[task][1]
    rng = random.Random(TASK_SEED["train"])
    train = [make(rng) for _ in range(N_TRAIN)]
    seen = {s for s, _ in train}
    rng = random.Random(TASK_SEED["test"])
    test: list[tuple[str, str]] = []
    while len(test) < N_TEST:
        s, t = make(rng)
        if s not in seen:
            test.append((s, t))
    return tuple(PairSet(task, [encode(s) for s, _ in split], [encode(t) for _, t in split])
                 for split in (train, test))
