"""Prompts in and text out, beside generation: reading a prompt, encoding it for a run's
tokenizer, and decoding generated tokens incrementally for streaming.

Nothing here prints: what a caller should tell the user goes through a ``note`` callback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from tformer_cli.errors import ConfigError, DataError

PROMPT_LIMIT = 16 << 20  # the most a prompt may hold (bytes of a file, characters on stdin)


def read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    """The prompt text from --prompt, --prompt-file (- is stdin), or a piped stdin; else ''."""
    if prompt is not None and prompt_file is not None:
        raise ConfigError("give --prompt or --prompt-file, not both")
    if prompt is not None:
        return prompt
    if prompt_file is not None and str(prompt_file) != "-":
        try:  # bounded: /dev/zero or an endless pipe is refused at PROMPT_LIMIT, not read until memory runs out
            with open(prompt_file, "rb") as f:
                data = f.read(PROMPT_LIMIT + 1)
            if len(data) > PROMPT_LIMIT:
                raise DataError(f"--prompt-file {prompt_file} is more than {PROMPT_LIMIT >> 20} MiB",
                                hint="give a shorter prompt: only its last block_size tokens are used")
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"--prompt-file {prompt_file} is not UTF-8 text") from None
        except OSError as e:
            raise ConfigError(f"--prompt-file {prompt_file}: {e.strerror or e}") from None
    if prompt_file is None and _stdin_is_terminal():
        return ""
    try:
        text = sys.stdin.read(PROMPT_LIMIT + 1)
        if len(text) > PROMPT_LIMIT:
            raise DataError(f"the prompt on stdin is more than {PROMPT_LIMIT >> 20} Mi characters",
                            hint="give a shorter prompt: only its last block_size tokens are used")
        return text
    except UnicodeDecodeError:
        raise DataError("the prompt on stdin is not UTF-8 text") from None
    except (OSError, ValueError):  # stdin closed or unreadable: no prompt
        return ""


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (AttributeError, ValueError):
        return True


def prompt_ids(tokenizer, text: str, skip_unknown: bool,
               note: Callable[[str], None] | None = None) -> list[int]:
    """Encode the prompt: unknown characters fail (or are dropped); empty starts from a newline."""
    note = note or (lambda s: None)
    unknown = tokenizer.unknown(text)
    if unknown and not skip_unknown:
        shown = " ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise DataError(f"the prompt has {len(unknown)} character(s) outside the tokenizer's vocabulary: {shown}",
                        hint="--skip-unknown drops them")
    if unknown:
        text = "".join(c for c in text if c not in set(unknown))
        note(f"dropped {len(unknown)} unknown character(s) from the prompt: "
             + " ".join(repr(c) for c in unknown[:20]))
    ids = tokenizer.encode(text)
    if ids:
        return ids
    newline = tokenizer.encode("\n") if not tokenizer.unknown("\n") else []
    if len(newline) == 1:
        note("empty prompt and the tokenizer has no start token: starting from a newline token")
        return newline
    note(f"empty prompt, no start token and no newline in the vocabulary: starting from token 0 "
         f"({tokenizer.decode([0])!r})")
    return [0]


def known_ids(tokenizer, text: str, flag: str = "--prompt") -> list[int]:
    """Token ids of ``text``, which must be non-empty and known to the tokenizer (``flag`` names
    the option it came from in the error)."""
    if not text:
        raise ConfigError(f"{flag} is empty", hint=f'give some text, e.g. {flag} "The cat sat"')
    unknown = tokenizer.unknown(text)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:8])
        raise ConfigError(f"{flag} has characters the run's tokenizer does not know: {shown}",
                          hint="use characters of the training corpus")
    return tokenizer.encode(text)


def window_ids(tokenizer, text: str, block_size: int, flag: str = "--prompt") -> tuple[list[int], int]:
    """Token ids of ``text`` (the last block_size of them) and how many were dropped: the
    prompt `tformer attention` looks at, which must be known to the tokenizer."""
    ids = known_ids(tokenizer, text, flag)
    return ids[-block_size:], max(0, len(ids) - block_size)


def single_token(tokenizer, text: str, flag: str = "--target") -> int:
    """The id of ``text``, which must be exactly one token of the tokenizer."""
    ids = tokenizer.encode(text) if text and not tokenizer.unknown(text) else []
    if len(ids) != 1:
        raise ConfigError(f"{flag} {text!r} is {len(ids)} tokens of the run's tokenizer, not one",
                          hint="name a single token (for a character-level run: one character)")
    return ids[0]


def display_token(tokenizer, i: int) -> str:
    """A token as a short, visible label (newline and space made visible)."""
    s = tokenizer.decode([i])
    return s.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423") or "\u2205"


class IncrementalDecoder:
    """Text of a growing token list, returned as the new suffix at each token.

    Characters map one to one; byte-level BPE may split a UTF-8 character across tokens, so the
    whole list is decoded and a trailing replacement character is held back until complete.
    """

    def __init__(self, tokenizer, prefix: list[int] | None = None):
        self.tok = tokenizer
        self.char = tokenizer.kind == "char"
        self.ids = list(prefix or [])
        self.shown = "" if self.char else tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        if self.char:
            return self.tok.decode([token])
        self.ids.append(token)
        text = self.tok.decode(self.ids).rstrip("\ufffd")
        if not text.startswith(self.shown):  # a merge rewrote earlier text: show nothing new
            return ""
        new, self.shown = text[len(self.shown):], text
        return new
