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


def _batches(ids, context: int, batch: int):
    """Consecutive windows of context + 1 tokens overlapping by one, ``batch`` at a time as (B, L)
    numpy arrays: the full windows first, then the shorter last one.  Windows are cut as they are
    needed, so memory does not grow with the number of windows."""
    import numpy as np

    starts = range(0, len(ids) - 1, context)
    full = [s for s in starts if s + context + 1 <= len(ids)]
    for i in range(0, len(full), batch):
        yield np.stack([ids[s : s + context + 1] for s in full[i : i + batch]])
    if len(full) < len(starts):
        yield ids[starts[-1]:][None, :]


def eval_text(run_dir: str | Path, data: str, context: int | None = None, max_tokens: int | None = None,
              causal_consistent: bool = False, batch_size: int | None = None, device_name: str = "auto",
              progress: Callable[[str], None] | None = None) -> EvalResult:
    """Score ``data`` (a file path or a built-in corpus name) with the run in ``run_dir``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from tformer_cli.core import device as dev
    from tformer_cli.core import stop
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
    ids = np.asarray(tok.encode(text)[:max_tokens], dtype=np.int64)  # 8 bytes a token, not a Python int's 36
    if len(ids) < 2:
        raise DataError(f"{label} is {len(ids)} token long; eval needs at least 2")
    n_bytes = len(tok.decode(ids.tolist()).encode("utf-8")) if max_tokens is not None else len(text.encode("utf-8"))
    del text
    bytes_per_token = n_bytes / len(ids)
    dtype = dev.resolve_dtype(cfg.train.dtype, device)
    n_windows = len(range(0, len(ids) - 1, context))
    batch = batch_size or cfg.train.batch_size
    t0 = time.perf_counter()
    total, scored, cc_total = 0.0, 0, 0.0
    say(f"scoring {len(ids):,} tokens in {n_windows:,} windows of {context}")
    with torch.no_grad(), dev.autocast(device, dtype):
        for arr in _batches(ids, context, batch):
            stop.check("scoring")
            win = torch.from_numpy(arr).to(device)
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
        context=context, windows=n_windows, loss=loss, bpb=loss / math.log(2) / bytes_per_token,
        perplexity=math.exp(min(loss, 700.0)), causal_consistent_loss=cc_total / scored if causal_consistent else None,
        device=str(device), seconds=time.perf_counter() - t0,
    )
