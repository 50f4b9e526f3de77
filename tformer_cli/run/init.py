"""`tformer train --init-from RUN`: a new run that starts from another run's weights.

Only the weights come along (no optimizer state, no step count): the new run trains from step 0
in its own directory, with RUN's model and tokenizer.  The model section is RUN's; it may change
only where the weights still fit (dropout, and a shorter block_size, which keeps the first rows
of a learned position table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tformer_cli.core import config as cfgmod
from tformer_cli.errors import ConfigError, RunError
from tformer_cli.run.resume import run_config
from tformer_cli.run.rundir import RunDir

INIT_CHANGES = {"model.dropout", "model.block_size"}


@dataclass
class InitSource:
    """What a run started with --init-from takes from its source: weights, vocabulary and tokenizer."""

    path: str
    weights: dict[str, Any]  # tformer tensor names -> tensors, cut to the new block_size
    vocab_size: int
    tokenizer: object


def init_config(source: Path, overrides: dict[str, Any], config_given: bool = False) -> cfgmod.Config:
    """The source run's config with ``overrides``; model changes other than INIT_CHANGES refused."""
    base = run_config(source, "--init-from", config_given,
                      "give a directory written by `tformer train` or `tformer import`",
                      "--init-from takes the model from the run; do not pass a config file or --preset",
                      "change training and data with --set train.KEY=... / --data FILE")
    conflicts = [f"{k}={v!r} (the run has {base.get(k)!r})" for k, v in overrides.items()
                 if k.startswith("model.") and k not in INIT_CHANGES and base.get(k) != v]
    if "data.tokenizer" in overrides and overrides["data.tokenizer"] != base.data.tokenizer:
        conflicts.append(f"data.tokenizer={overrides['data.tokenizer']!r} (the run's tokenizer is kept)")
    if conflicts:
        raise ConfigError(f"--init-from {source}: the weights would not fit: {', '.join(conflicts)}",
                          hint=f"only {', '.join(sorted(INIT_CHANGES))} (smaller) may change in the model")
    cfg = base.replace(overrides)
    if cfg.model.block_size > base.model.block_size:
        raise ConfigError(f"--init-from {source}: model.block_size={cfg.model.block_size} is longer than the "
                          f"run's {base.model.block_size}", hint="the weights have no positions beyond it")
    return cfg


def load_source(source: str | Path, block_size: int) -> InitSource:
    """The source run's weights (a learned position table cut to ``block_size``) and tokenizer."""
    from tformer_cli.core.data import load_tokenizer
    from tformer_cli.run import checkpoint

    ckpt = checkpoint.load(source, with_optimizer=False)
    tok_path = RunDir(source).tokenizer
    if not tok_path.exists():
        raise RunError(f"no tokenizer.json in {source}", hint="the run directory is incomplete")
    weights = ckpt.model_state()
    if "pos_emb.weight" in weights:
        weights["pos_emb.weight"] = weights["pos_emb.weight"][:block_size].clone()
    return InitSource(str(source), weights, ckpt.vocab_size, load_tokenizer(tok_path))


def resumed_source(run_dir: str | Path) -> InitSource | None:
    """On --resume of a run started with --init-from: its own tokenizer and vocabulary (its
    weights come from its checkpoint); None for any other run.  Reads the header only."""
    import json

    from safetensors import safe_open

    from tformer_cli.core.data import load_tokenizer
    from tformer_cli.run import checkpoint

    try:
        with safe_open(str(checkpoint.find(run_dir)), framework="pt") as f:
            meta = f.metadata() or {}
        state, vocab = json.loads(meta.get("train_state", "{}")), int(json.loads(meta.get("vocab_size", "0")))
    except Exception:  # a broken or foreign file: checkpoint.load, later, says what is wrong
        return None
    if not isinstance(state, dict) or "init_from" not in state:
        return None
    return InitSource(str(state["init_from"]), {}, vocab, load_tokenizer(RunDir(run_dir).tokenizer))
