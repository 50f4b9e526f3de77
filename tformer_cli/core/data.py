"""Corpora, tokenizers, the on-disk token cache and batches.

Built-in corpora need no download: ``prose`` is the English reference text that ships
with every CPython (``pydoc_data.topics``), ``code`` is the standard library's own
source, and the synthetic tasks are generated from a seed.  Any UTF-8 file works by path.

Token ids are cached under ``$TFORMER_CACHE`` (default ``~/.cache/tformer``), keyed by a
hash of the corpus text and the tokenizer settings, as raw little-endian integer files
that are memory-mapped, so a second run neither re-reads nor re-tokenizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tformer_cli.core.config import DataConfig
from tformer_cli.core.io import atomic_write_text
from tformer_cli.core.token_cache import DamagedCache, encode_in_chunks, open_cache, read_corpus_bytes
from tformer_cli.errors import DataError

FORMAT_VERSION = 1


# ---------------------------------------------------------------- corpora


def _prose() -> str:
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))


CODE_CHARS = 2_000_000  # the built-in code corpus unless data.max_chars asks for more (or less)


def code_files() -> list[Path]:
    """The standard library's Python source in the code corpus's order: the top-level modules
    sorted by name, then the packages' modules sorted by path, leaving out every test directory
    or test_*.py module and site-packages (on CPython 3.11 about 4.7 MB, then 7.4 MB more)."""
    root = Path(sysconfig.get_paths()["stdlib"])

    def is_test(rel: Path) -> bool:
        return any(part in ("test", "tests", "idle_test") or part.startswith("test_") for part in rel.parts)

    nested = [p for p in sorted(root.rglob("*.py")) if p.parent != root and "site-packages" not in p.parts
              and not is_test(p.relative_to(root))]
    return sorted(root.glob("*.py")) + nested


def _code(limit: int = CODE_CHARS) -> str:
    """The code corpus: whole files of code_files() in order until ``limit`` characters are
    reached (the last file whole).  The selection is stable for one Python release; another
    release's standard library is other text, which the run's corpus_sha256 tells apart."""
    parts, size = [], 0
    for path in code_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "\n".join(parts)


def _repeat(n_lines: int = 20_000, seed: int = 0) -> str:
    """Random 8-letter strings each followed by a copy: "qxmbtfzr|qxmbtfzr".

    The second copy can only be predicted by looking back (an induction head); the
    first copy is noise.  Its task metric is the loss on each half of the line.
    """
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = []
    for _ in range(n_lines):
        s = "".join(rng.choice(letters) for _ in range(8))
        lines.append(f"{s}|{s}")
    return "\n".join(lines) + "\n"


# 52 letters, not 26: in a 64-letter window a letter drawn from 26 occurs 2 or 3 times by chance,
# so "the letter after the earlier occurrence" is ambiguous and an induction head earns little for
# thousands of steps; with 52 the earlier occurrence is usually unique.  Segments of 8-16 letters
# make about a third of the letters copyable.  Both were measured (docs/inside.md, the induction
# study): the 2-layer model's head then forms within a few hundred steps in every seed.
INDUCTION_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
INDUCTION_PREFIX = (0, 6)  # random letters before the first copy (inclusive range)
INDUCTION_SEGMENT = (8, 16)  # letters in the repeated segment
INDUCTION_GAP = (0, 6)  # random letters between the two copies


@dataclass(frozen=True)
class InductionLine:
    """One line of the ``induction`` corpus: ``text`` = prefix + segment + gap + segment (no
    newline); the first copy starts at ``first``, the second at ``second``, each ``length`` long."""

    text: str
    first: int
    second: int
    length: int


def induction_lines(n_lines: int, seed: int) -> list[InductionLine]:
    """Lines of random letters in which a random-length segment, at a random position, is repeated
    later in the line (after a random gap).  A fixed offset cannot copy it (lengths and positions
    vary): only finding the earlier occurrence of the current letter and copying the letter that
    followed it (an induction head) predicts the second copy after its first letter."""
    rng = random.Random(seed)
    L = INDUCTION_LETTERS
    lines = []
    for _ in range(n_lines):
        pre, k, gap = rng.randint(*INDUCTION_PREFIX), rng.randint(*INDUCTION_SEGMENT), rng.randint(*INDUCTION_GAP)
        head = "".join(rng.choices(L, k=pre + k + gap))  # prefix, segment, gap
        lines.append(InductionLine(head + head[pre:pre + k], pre, pre + k + gap, k))
    return lines


INDUCTION_LINES = 40_000


def _induction(n_lines: int = INDUCTION_LINES, seed: int = 0) -> str:
    """The ``induction`` corpus: induction_lines joined by newlines."""
    return "\n".join(line.text for line in induction_lines(n_lines, seed)) + "\n"


def _modadd(n_lines: int = 30_000, seed: int = 0, modulus: int = 97) -> str:
    """Lines "a+b=c" with c = (a + b) mod 97: an algorithmic task whose answer is a
    non-linear function of the inputs (carries and wrap-around)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randrange(modulus), rng.randrange(modulus)
        lines.append(f"{a:02d}+{b:02d}={(a + b) % modulus:02d}")
    return "\n".join(lines) + "\n"


BUILTIN = {
    "prose": ("English prose: the Python reference topics shipped with CPython (pydoc_data)", _prose),
    "code": ("Python source: the standard library's own modules (2 MB; data.max_chars: up to about 12 MB)", _code),
    "repeat": ("synthetic: random strings each followed by its copy (induction)", _repeat),
    "modadd": ("synthetic: 'a+b=c' modulo 97 (needs the FFN's non-linearity)", _modadd),
    "induction": ("synthetic: random letters with a segment repeated later, lengths and positions varied "
                  "(needs an induction head)", _induction),
}


def read_corpus(name_or_path: str, max_chars: int | None = None, text_field: str = "text") -> tuple[str, str]:
    """Return (text, label). A built-in name wins over a file of the same name.  ``max_chars``:
    the code corpus grows or shrinks to that size (whole files); any other text is cut to it.  A
    JSONL or Parquet file, or hf:NAME, is read by core/sources.py (its ``text_field``)."""
    from tformer_cli.core import sources

    if name_or_path == "code":
        return _code(max_chars or CODE_CHARS), name_or_path
    if name_or_path not in BUILTIN and sources.is_source(name_or_path):
        return sources.read_source(name_or_path, text_field, max_chars)
    text, label = _read_corpus(name_or_path)
    return (text[:max_chars] if max_chars else text), label


def _read_corpus(name_or_path: str) -> tuple[str, str]:
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path][1](), name_or_path
    path = Path(name_or_path).expanduser()
    hint = (f"built-in corpora: {', '.join(BUILTIN)}; or give a path to a UTF-8 text file (or a .jsonl or "
            ".parquet file, or hf:NAME)")
    if not path.exists() and not path.is_symlink():
        raise DataError(f"corpus not found: {name_or_path}", hint=hint)
    raw = read_corpus_bytes(path, hint)  # a regular file only, read in chunks (stop flag, progress)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"corpus {path} is not UTF-8: invalid byte 0x{raw[e.start]:02x} at byte {e.start} (line {line})",
            hint="convert it first, e.g. iconv -f latin1 -t utf-8",
        ) from None
    if not text.strip():
        raise DataError(f"corpus {path} is empty", hint="give a file with some text in it")
    return text, str(path)


# ---------------------------------------------------------------- tokenizers


class CharTokenizer:
    """One token per Unicode character of the corpus (vocabulary sorted, so it is deterministic)."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.stoi})

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < len(self.chars))

    def to_json(self) -> dict:
        return {"type": "char", "chars": self.chars}


class BPETokenizer:
    """Byte-level BPE trained locally with the `tokenizers` package: never an unknown character."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        lines = text.splitlines(keepends=True)
        chunks = ["".join(lines[i : i + 64]) for i in range(0, len(lines), 64)]
        tok.train_from_iterator(chunks, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def unknown(self, text: str) -> list[str]:
        return []

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def to_json(self) -> dict:
        return {"type": "bpe", "hf": self.tok.to_str()}


class HFTokenizer(BPETokenizer):
    """A Hugging Face tokenizer.json (e.g. GPT-2's): the tokenizer of an imported run."""

    kind = "hf"

    def to_json(self) -> dict:
        return json.loads(self.tok.to_str())


def tokenizer_from_json(data: dict):
    if "type" not in data and "model" in data:  # a Hugging Face tokenizer.json, as written by `tformer import`
        from tokenizers import Tokenizer

        try:
            return HFTokenizer(Tokenizer.from_str(json.dumps(data)))
        except Exception as e:  # the tokenizers package raises its own exception type
            raise DataError(f"cannot read the Hugging Face tokenizer: {str(e)[:160]}") from None
    if data.get("type") == "char":
        return CharTokenizer(data["chars"])
    if data.get("type") == "bpe":
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_str(data["hf"]))
    raise DataError(f"unknown tokenizer type {data.get('type')!r}")


def load_tokenizer(path: str | Path):
    """A tokenizer.json, read with a size bound and checked field by field (DataError naming the field)."""
    from tformer_cli.core.untrusted import UnreadableFile, read_text, short

    try:
        data = json.loads(read_text(path, 256 << 20))
    except UnreadableFile as e:
        raise DataError(f"cannot read tokenizer {e}") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"tokenizer {path} is damaged: not valid JSON ({short(str(e), 60)})") from None
    if not isinstance(data, dict):
        raise DataError(f"tokenizer {path} is damaged: expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind == "char":
        chars = data.get("chars")
        if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
            raise DataError(f"tokenizer {path} is damaged: field chars: expected a string of distinct "
                            f"characters, got {short(chars)}")
    elif kind == "bpe" and not isinstance(data.get("hf"), str):
        raise DataError(f"tokenizer {path} is damaged: field hf: expected a string, got {short(data.get('hf'))}")
    elif kind not in ("char", "bpe", None):
        raise DataError(f"tokenizer {path} is damaged: field type: unknown tokenizer type {short(kind)}")
    try:
        tok = tokenizer_from_json(data)
    except DataError as e:
        raise DataError(f"tokenizer {path}: {str(e)[:160]}") from None
    except Exception as e:  # the tokenizers package raises its own exception types
        raise DataError(f"tokenizer {path} is damaged: {type(e).__name__}: {str(e)[:100]}") from None
    if tok.vocab_size < 1:
        raise DataError(f"tokenizer {path} is damaged: its vocabulary is empty")
    return tok


# ---------------------------------------------------------------- prepared data


@dataclass
class Dataset:
    """Token ids of both splits (memory-mapped), the tokenizer, and what they cost in bytes."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: object
    corpus: str
    train_bytes_per_token: float
    val_bytes_per_token: float
    cache_dir: Path
    from_cache: bool
    text_sha256: str = ""  # of the corpus text (after data.max_chars): the same digest, the same text

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def cache_root() -> Path:
    return Path(os.environ.get("TFORMER_CACHE", Path.home() / ".cache" / "tformer"))


def prepare(cfg: DataConfig, tokenizer=None) -> Dataset:
    """Read, split, tokenize (or load from the cache) and return the dataset.

    ``tokenizer``: encode with this one (a run's, e.g. an imported model's) instead of
    building one from the corpus; data.tokenizer=hf requires it.
    """
    text, label = read_corpus(cfg.corpus, cfg.max_chars, cfg.text_field)
    spec = {"v": FORMAT_VERSION, "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction}
    if tokenizer is not None:  # keyed by the tokenizer itself
        spec["tokenizer"] = hashlib.sha256(json.dumps(tokenizer.to_json(), sort_keys=True).encode()).hexdigest()
    elif cfg.tokenizer == "hf":
        raise DataError("data.tokenizer=hf is the tokenizer of an imported run; there is none to build from a corpus",
                        hint="fine-tune with `tformer train --init-from RUN`, which uses RUN's tokenizer")
    elif cfg.tokenizer == "bpe":
        spec["vocab_size"] = cfg.vocab_size
    digest = hashlib.sha256(text.encode("utf-8"))
    text_sha256 = digest.hexdigest()  # (hashlib goes on updating after a digest)
    digest.update(json.dumps(spec, sort_keys=True).encode())
    cache_dir = cache_root() / digest.hexdigest()[:24]
    meta_path = cache_dir / "meta.json"
    from_cache = meta_path.exists()
    if not from_cache:
        _build_cache(text, cfg, cache_dir, tokenizer)
    try:
        meta, train, val, cached_tok = open_cache(cache_dir, load_tokenizer)
    except DamagedCache as e:  # rebuilt: the cache is derived data
        _remove_cache_entry(cache_dir, str(e))
        from_cache = False
        _build_cache(text, cfg, cache_dir, tokenizer)
        try:
            meta, train, val, cached_tok = open_cache(cache_dir, load_tokenizer)
        except DamagedCache as e2:
            raise DataError(f"the token cache entry {cache_dir} is damaged ({e2})",
                            hint=f"delete {cache_dir} and run again") from None
    return Dataset(
        train=train,
        val=val,
        tokenizer=cached_tok,
        corpus=label,
        train_bytes_per_token=meta["train_bytes"] / max(meta["n_train"], 1),
        val_bytes_per_token=meta["val_bytes"] / max(meta["n_val"], 1),
        cache_dir=cache_dir,
        from_cache=from_cache,
        text_sha256=text_sha256,
    )


def _build_cache(text: str, cfg: DataConfig, cache_dir: Path, tokenizer=None) -> None:
    split = int(len(text) * (1.0 - cfg.val_fraction))
    train_text, val_text = text[:split], text[split:]
    if tokenizer is not None:
        tok = tokenizer
        if missing := tok.unknown(text):
            shown = ", ".join(repr(c) for c in missing[:8])
            raise DataError(f"corpus {cfg.corpus} has {len(missing)} characters the run's tokenizer does not know "
                            f"({shown})", hint="use a corpus written in the same characters, or a BPE run")
    elif cfg.tokenizer == "char":
        tok = CharTokenizer.train(text)  # the whole corpus, so validation has no unknown characters
    else:
        tok = BPETokenizer.train(train_text, cfg.vocab_size)
    dtype = np.dtype("<u2") if tok.vocab_size <= 65535 else np.dtype("<u4")
    tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the token cache in {cache_dir.parent}: {e.strerror}",
                        hint="set TFORMER_CACHE to a writable directory") from None
    n = {}
    for name, part in (("train", train_text), ("val", val_text)):
        ids = np.asarray(encode_in_chunks(tok, part), dtype=dtype)  # polls the stop flag
        ids.tofile(tmp / f"{name}.bin")
        n[name] = len(ids)
    atomic_write_text(tmp / "tokenizer.json", json.dumps(tok.to_json()))
    meta = {
        "dtype": dtype.str,
        "n_train": n["train"],
        "n_val": n["val"],
        "train_bytes": len(train_text.encode("utf-8")),
        "val_bytes": len(val_text.encode("utf-8")),
        "vocab_size": tok.vocab_size,
    }
    atomic_write_text(tmp / "meta.json", json.dumps(meta))
    try:
        os.replace(tmp, cache_dir)  # atomic publish; a concurrent builder may have won the race
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _remove_cache_entry(cache_dir: Path, why: str) -> None:
    import shutil

    try:
        shutil.rmtree(cache_dir)
    except OSError as e:
        raise DataError(f"the token cache entry {cache_dir} is damaged ({why}) and cannot be removed: "
                        f"{e.strerror}", hint=f"delete {cache_dir} and run again") from None


def check_lengths(ds: Dataset, block_size: int, corpus: str) -> None:
    need = block_size + 1
    for name, ids in (("training", ds.train), ("validation", ds.val)):
        if len(ids) < need:
            raise DataError(
                f"corpus {corpus}: the {name} split has {len(ids)} tokens, but block_size={block_size} "
                f"needs at least {need}",
                hint="use a longer corpus, a smaller model.block_size, or change data.val_fraction",
            )


# ---------------------------------------------------------------- batches


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (seed, step, micro-step, rank ...), stable across runs."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(int(p).to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little") >> 1


def sample_windows(ids: np.ndarray, block: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random windows: x (n, block) and the next-token targets y (n, block), as int64.

    The start positions come from a generator seeded by ``seed`` alone, so the data order
    is a pure function of (seed, step, micro-step): nothing to save for an exact resume, and
    the same global batch whatever the number of processes (a rank takes its rows of it).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    starts = rng.integers(0, len(ids) - block, size=n)
    idx = starts[:, None] + np.arange(block + 1)[None, :]
    win = np.asarray(ids[idx], dtype=np.int64)
    return win[:, :-1], win[:, 1:]


def mlm_mask(x: np.ndarray, vocab_size: int, mask_id: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking: 15% of positions are targets; of those 80% become [MASK], 10% a random
    token, 10% stay.  Targets are -100 (no loss) everywhere else."""
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen = rng.random(x.shape) < 0.15
    y = np.where(chosen, x, -100)
    r = rng.random(x.shape)
    x = x.copy()
    x[chosen & (r < 0.8)] = mask_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    x[rand] = rng.integers(0, vocab_size, size=int(rand.sum()))
    return x, y
