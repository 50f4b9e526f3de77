"""Named hook points in the GPT: read an activation by name, or replace it.

The model calls ``apply(name, x)`` at each point below only while a ``hooks`` block is active (a
module-level switch read once per point: with no hook set, a forward pays one global lookup per
point and computes exactly what it computed before).  The points, for block i:

    embed                      token embeddings (before positions are added)       (B, T, C)
    pos_embed                  the embedding with learned or sinusoidal positions   (B, T, C)
    blocks.i.resid_pre         the residual stream entering block i                 (B, T, C)
    blocks.i.attn.q / k / v    queries, keys and values after QK-norm and RoPE      (B, heads, T, d_k)
    blocks.i.attn.pattern      the attention weights (forces the explicit softmax)  (B, heads, T, Tk)
    blocks.i.attn.z            each head's output, before W_O                       (B, heads, T, d_k)
    blocks.i.attn.out          the attention's output, after W_O                    (B, T, C)
    blocks.i.resid_mid         after the attention's residual add (post-norm: after its norm)
    blocks.i.mlp.pre / post    the FFN's hidden layer before and after the activation (B, T, d_ff)
    blocks.i.mlp.out           the FFN's output                                     (B, T, C)
    blocks.i.resid_post        the residual stream leaving block i                  (B, T, C)
    ln_final                   the final norm's output                              (B, T, C)
    logits                     the logits of the real vocabulary (after a soft cap) (B, T, V)

(k and v have the key/value heads: fewer than the query heads under GQA.)  ``run_with_cache``
returns the chosen activations, ``hooks`` runs a forward with functions that read or replace them.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Iterator

import torch

from tformer_cli.errors import ConfigError

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]  # (activation, name) -> replacement or None

ACTIVE: dict[str, list[HookFn]] | None = None  # while a ``hooks`` block runs: name -> its functions

BLOCK_POINTS = ("resid_pre", "attn.q", "attn.k", "attn.v", "attn.pattern", "attn.z", "attn.out", "resid_mid",
                "mlp.pre", "mlp.post", "mlp.out", "resid_post")


def names(cfg) -> list[str]:
    """Every hook point of a model of ``cfg`` (a ModelConfig), in the order a forward reaches them."""
    out = ["embed"] + (["pos_embed"] if cfg.pos_encoding in ("learned", "sinusoidal") else [])
    for i in range(cfg.n_layer):
        out += [f"blocks.{i}.{p}" for p in BLOCK_POINTS if cfg.ffn or not p.startswith("mlp.")]
    return out + ["ln_final", "logits"]


def apply(name: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the functions hooked at ``name`` (each may return a replacement)."""
    for fn in (ACTIVE or {}).get(name, ()):
        y = fn(x, name)
        if y is not None:
            x = y
    return x


def wants(name: str) -> bool:
    return ACTIVE is not None and name in ACTIVE


def check(model, wanted) -> None:
    """Refuse a name that is not a hook point of ``model``, with the closest one."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or getattr(cfg, "arch", "gpt") != "gpt" or not hasattr(model, "blocks"):
        raise ConfigError("this model has no hook points (only the GPT has them; the LSTM and the "
                          "encoder-decoder do not)")
    valid = names(cfg)
    for name in wanted:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
            raise ConfigError(f"no hook point {name!r}" + (f" (closest: {close[0]})" if close else ""),
                              hint="the points: embed, blocks.I.resid_pre, blocks.I.attn.z, ... "
                                   "(tformer_cli/core/hooks.py)")


@contextlib.contextmanager
def hooks(model, fns: dict[str, HookFn | list[HookFn]]) -> Iterator[None]:
    """Within the block, every forward of ``model`` calls ``fns[name]`` at hook point ``name``."""
    global ACTIVE
    check(model, fns)
    before = ACTIVE
    merged = {k: list(v) for k, v in (before or {}).items()}
    for name, fn in fns.items():
        merged.setdefault(name, []).extend(fn if isinstance(fn, list) else [fn])
    ACTIVE = merged
    try:
        yield
    finally:
        ACTIVE = before


def run_with_cache(model, idx: torch.Tensor, wanted: list[str] | None = None, **kw):
    """(the forward's ModelOutput, {name: activation}) for the points ``wanted`` (default: all),
    the activations detached."""
    wanted = list(wanted) if wanted is not None else names(model.cfg)
    cache: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, name: str) -> None:
        cache[name] = x.detach()

    with hooks(model, {n: keep for n in wanted}):
        out = model(idx, **kw)
    return out, cache
