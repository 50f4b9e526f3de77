"""Measuring a trained member the same way for every member: its anatomy (parameters and FLOPs
by group), the causal-consistent validation loss and a greedy continuation of a fixed prompt."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from tformer_cli.core.config import Config
from tformer_cli.core.io import atomic_write_text
from tformer_cli.core.tasks import is_task
from tformer_cli.errors import RunError, Stopped, TformerError
from tformer_cli.study.convergence import degenerate
from tformer_cli.study.results import Measurement

MEMBER_METRICS = "member.json"  # post-training metrics of a member, so --resume need not recompute them
DEFAULT_PROMPT = "The "
SAMPLE_TOKENS = 40
CAUSAL_WINDOWS = 256  # at most this many validation windows for the causal-consistent loss (T passes each)

Evaluator = Callable[[Path, Config, "str | None"], Measurement]


def anatomy_columns(cfg: Config, vocab_size: int) -> dict[str, int]:
    """Parameters and training FLOPs per token split into embeddings, attention and FFN."""
    from tformer_cli.core import anatomy

    t = anatomy.totals(cfg.model, vocab_size)
    out = {"params": t.params, "flops_per_token": t.flops_per_token}
    for g in ("embeddings", "attention", "ffn"):
        out[f"params_{g}"] = t.by_group_params.get(g, 0)
        out[f"flops_{g}"] = t.by_group_flops.get(g, 0)
    return out


def default_evaluator(run_dir: Path, cfg: Config, prompt: str | None) -> Measurement:
    """Causal-consistent val loss and a greedy sample, from the member's checkpoint."""
    import torch

    from tformer_cli.core import device as dev
    from tformer_cli.core import stop
    from tformer_cli.core.data import prepare
    from tformer_cli.run.load import load_for_inference
    from tformer_cli.train.batches import Batcher
    from tformer_cli.train.distributed import DistInfo
    from tformer_cli.train.evaluate import window_losses

    model, tok, mcfg, ckpt, device = load_for_inference(run_dir, cfg.train.device)
    if mcfg.train.objective == "mlm":
        return Measurement()  # no left-to-right prediction to measure or sample
    dtype = dev.resolve_dtype(mcfg.train.dtype, device)
    ds = prepare(mcfg.data)
    batcher = Batcher(ds, mcfg, device, DistInfo(), ckpt.vocab_size)
    # Both losses on the same windows (the first of those evaluate() uses), so a causal model shows
    # two equal numbers; the leak of a model that sees the future is the only difference.
    B = mcfg.train.batch_size
    n = B * min(mcfg.train.eval_iters, max(1, CAUSAL_WINDOWS // B))
    sees_future = mcfg.model.arch == "gpt" and not mcfg.model.causal
    try:  # a Ctrl-C or SIGTERM (the process-wide stop flag) stops it between passes: Stopped
        teacher, causal = window_losses(model, batcher, n, device, dtype, sees_future=sees_future,
                                        should_stop=stop.requested)
    except RuntimeError as e:
        raise RunError(str(e)) from None
    text = prompt if prompt is not None else DEFAULT_PROMPT
    if not text or tok.unknown(text):  # a corpus without these characters: start from its own text
        text = tok.decode([int(i) for i in ds.val[:8]])
    ids = tok.encode(text)[-(mcfg.model.block_size // 2):]
    with torch.no_grad():
        continuation = tok.decode(_greedy(model, ids, SAMPLE_TOKENS))
    # A synthetic task's text (random letters, sums) is not prose: a loop there says nothing.
    loops = None if is_task(mcfg.data.corpus) else degenerate(continuation)
    return Measurement(causal, one_line(text + continuation), val_loss=teacher, degenerate=loops)


def _greedy(model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation (temperature 0); the KV cache only where the model supports one."""
    from tformer_cli.core.generate import generate

    use_cache = bool(getattr(model, "supports_cache", False))  # a bidirectional model has none
    return [int(t) for t in generate(model, ids, n, temperature=0, use_cache=use_cache)]


def one_line(text: str, width: int = 60) -> str:
    flat = text.replace("\r", "").replace("\n", "⏎").replace("\t", " ")
    return flat[:width]


def measure(run_dir: Path, cfg: Config, prompt: str | None, evaluator: Evaluator, cached: bool,
            say: Callable[[str], None], label: str) -> Measurement:
    """The evaluator's measurement, cached in the member dir (``cached``: a resume reads it back).
    A stop (``Stopped``) is not a failure: it propagates, and nothing is cached."""
    path = Path(run_dir) / MEMBER_METRICS
    if cached and path.exists():
        try:
            return Measurement.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    t0 = time.perf_counter()
    try:
        post = evaluator(run_dir, cfg, prompt)
        post.seconds = time.perf_counter() - t0
    except Stopped:
        raise
    except TformerError as e:
        say(f"{label}: evaluation failed: {e}")
        return Measurement(error=str(e))
    atomic_write_text(path, json.dumps(post.to_dict()) + "\n")
    return post
