"""`tformer eval`: the loss and bits per byte of a run on any text, with the run's own tokenizer.

The text is cut into consecutive windows of ``context`` tokens (the last one shorter); within a
window every token is predicted from the tokens before it in that window, so each token of the
text after the first is scored exactly once.  Bits per byte divide the loss by ln 2 and by the
UTF-8 bytes per token of the scored text, so runs with different tokenizers compare.  The
causal-consistent loss predicts each position from a forward pass over its prefix alone (as in
generation); for a causal model it equals the loss above up to rounding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tformer_cli.errors import ConfigError, DataError


@dataclass
class EvalResult:
    run_dir: str
    data: str
    tokens: int  # tokens of the text that were read (after --max-tokens)
    scored: int  # tokens predicted (tokens less one per window)
    bytes_per_token: float
    context: int
    windows: int
    loss: float  # nats/token, teacher-forced
    bpb: float  # bits per byte
    perplexity: float
    causal_consistent_loss: float | None
    device: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _windows(ids: list[int], context: int) -> list[list[int]]:
    """Consecutive windows of context + 1 tokens overlapping by one (the last may be shorter)."""
    return [ids[s : s + context + 1] for s in range(0, len(ids) - 1, context)]


def eval_text(run_dir: str | Path, data: str, context: int | None = None, max_tokens: int | None = None,
              causal_consistent: bool = False, batch_size: int | None = None, device_name: str = "auto",
              progress: Callable[[str], None] | None = None) -> EvalResult:
    """Score ``data`` (a file path or a built-in corpus name) with the run in ``run_dir``."""
    import torch
    import torch.nn.functional as F

    from tformer_cli.core import device as dev
    from tformer_cli.core.data import read_corpus
    from tformer_cli.run.load import load_for_inference

    say = progress or (lambda s: None)
    model, tok, cfg, _ckpt, device = load_for_inference(run_dir, device_name)
    if cfg.train.objective != "clm":
        raise ConfigError(f"{run_dir} is a masked-LM run: eval scores next-token (clm) models")
    context = context or cfg.model.block_size
    if not 1 <= context <= cfg.model.block_size:
        raise ConfigError(f"--context {context}: must be between 1 and the run's block_size {cfg.model.block_size}")
    if max_tokens is not None and max_tokens < 2:
        raise ConfigError(f"--max-tokens {max_tokens}: must be at least 2")
    text, label = read_corpus(data)
    if missing := tok.unknown(text):
        shown = ", ".join(repr(c) for c in missing[:8])
        raise DataError(f"{label} has {len(missing)} characters the run's tokenizer does not know ({shown})",
                        hint="a character-level run knows only the characters of its own corpus")
    ids = tok.encode(text)[:max_tokens]
    if len(ids) < 2:
        raise DataError(f"{label} is {len(ids)} token long; eval needs at least 2")
    bytes_per_token = len(tok.decode(ids).encode("utf-8")) / len(ids)
    dtype = dev.resolve_dtype(cfg.train.dtype, device)
    windows = _windows(ids, context)
    batch = batch_size or cfg.train.batch_size
    t0 = time.perf_counter()
    total, scored, cc_total = 0.0, 0, 0.0
    groups: dict[int, list[list[int]]] = {}
    for w in windows:  # equal lengths batch together; only the last window is shorter
        groups.setdefault(len(w), []).append(w)
    say(f"scoring {len(ids):,} tokens in {len(windows):,} windows of {context}")
    with torch.no_grad(), dev.autocast(device, dtype):
        for length, ws in groups.items():
            for i in range(0, len(ws), batch):
                win = torch.tensor(ws[i : i + batch], dtype=torch.long, device=device)
                x, y = win[:, :-1], win[:, 1:]
                logits = model(x).logits.float()
                total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
                scored += y.numel()
                if causal_consistent:
                    for t in range(x.size(1)):  # position t from its prefix alone
                        last = model(x[:, : t + 1], last_only=True).logits[:, -1, :].float()
                        cc_total += F.cross_entropy(last, y[:, t], reduction="sum").item()
    loss = total / scored
    return EvalResult(
        run_dir=str(run_dir), data=label, tokens=len(ids), scored=scored, bytes_per_token=bytes_per_token,
        context=context, windows=len(windows), loss=loss, bpb=loss / math.log(2) / bytes_per_token,
        perplexity=math.exp(min(loss, 700.0)), causal_consistent_loss=cc_total / scored if causal_consistent else None,
        device=str(device), seconds=time.perf_counter() - t0,
    )
