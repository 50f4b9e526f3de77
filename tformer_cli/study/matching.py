"""--match params: resize each member so its parameter count is within 5% of the baseline's."""

from __future__ import annotations

import dataclasses
import math

from tformer_cli.core.config import Config
from tformer_cli.errors import ConfigError
from tformer_cli.study.spec import Member, Spec, describe

MATCH_TOLERANCE = 0.05


def params(cfg: Config, vocab_size: int) -> int:
    from tformer_cli.core import anatomy

    return anatomy.totals(cfg.model, vocab_size).params


def model_vocab(cfg: Config) -> int:
    """The vocabulary the model is built with (+1 for the [MASK] token of MLM)."""
    from tformer_cli.core.data import prepare

    return prepare(cfg.data).vocab_size + (1 if cfg.train.objective == "mlm" else 0)


def match_params(spec: Spec, by: str = "d_ff", vocab_size: int | None = None) -> None:
    """Resize every non-baseline member so its parameter count is within 5% of the baseline's.

    ``by`` is d_ff, n_layer or d_model; a member without an FFN cannot be resized by d_ff and
    falls back to n_layer (said in its ``resized`` note).  The closest size is chosen.
    """
    if by not in ("d_ff", "n_layer", "d_model"):
        raise ConfigError(f"--match-by {by}: expected d_ff, n_layer or d_model")
    base = spec.config()
    vocab = vocab_size or model_vocab(base)
    target = params(base, vocab)
    for m in spec.members:
        if m.overrides:
            _resize(m, base, by, target, vocab)


def _resize(m: Member, base: Config, by: str, target: int, vocab: int) -> None:
    cfg = base.replace(m.overrides)
    key = by if (by != "d_ff" or cfg.model.ffn) else "n_layer"
    before = params(cfg, vocab)
    value, after = _closest(cfg, key, target, vocab)
    if value == cfg.get(f"model.{key}") and key != "d_ff":
        m.resized = f"none needed ({_pct(before, target)})"
        return
    m.overrides = {**m.overrides, f"model.{key}": value}
    old = cfg.get(f"model.{key}") if key != "d_ff" else cfg.model.d_ff_resolved
    note = f"model.{key} {old} -> {value}: {before:,} -> {after:,} params ({_pct(after, target)} vs baseline)"
    if key != by:
        note += f"; no FFN, so n_layer instead of {by}"
    if abs(after - target) > MATCH_TOLERANCE * target:
        note += " [not within 5%: no size of this kind gets closer]"
    m.resized = note
    m.changed = describe(m.overrides)


def _pct(n: int, target: int) -> str:
    return f"{100 * (n - target) / target:+.1f}%"


def _candidates(cfg: Config, key: str) -> range:
    m = cfg.model
    if key == "d_model":
        # d_model must stay divisible by n_head (and even for sinusoidal; d_k even for rope)
        step = math.lcm(m.n_head * (2 if m.pos_encoding == "rope" else 1), 2 if m.pos_encoding == "sinusoidal" else 1)
        return range(step, 8 * m.d_model + step, step)
    if key == "n_layer":
        return range(1, 8 * m.n_layer + 9)
    return range(1, 16 * m.d_model + 1)


def _closest(cfg: Config, key: str, target: int, vocab: int) -> tuple[int, int]:
    """(value of model.<key>, params) closest to ``target``; parameters grow with each key."""
    best = None
    for v in _candidates(cfg, key):  # closed-form counts: a few thousand evaluations take milliseconds
        n = params(cfg.replace({f"model.{key}": v}), vocab) if key != "d_ff" else _ffn_params(cfg, v, vocab)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (v, n)
        if n > target and best[0] != v:
            break
    assert best is not None
    return best


def _ffn_params(cfg: Config, d_ff: int, vocab: int) -> int:
    from tformer_cli.core import anatomy

    return anatomy.totals(dataclasses.replace(cfg.model, d_ff=d_ff), vocab).params
