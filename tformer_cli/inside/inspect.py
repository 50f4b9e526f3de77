"""`tformer inspect`: parameters, training FLOPs per token and memory by component, without
training, for a run directory, a YAML config or a preset.

inspect_config finds the config and the vocabulary size; inspect_model counts (core/anatomy)
and returns an InspectReport; render/inside.py shows it, render/plots.py draws it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tformer_cli.errors import ConfigError


@dataclass
class Component:
    name: str
    group: str
    per_layer: bool  # one per layer (counts summed over layers) or once per model
    params: int
    params_per_layer: Optional[int]
    flops_per_token: int


@dataclass
class Totals:
    params: int
    flops_per_token: int


@dataclass
class LstmMatch:
    d_model: int  # the LSTM width whose parameter count is closest to the GPT's
    params: int


@dataclass
class InspectReport:
    model: Any  # tformer_cli.core.config.ModelConfig
    vocab_size: int
    vocab_source: str
    params: int
    non_embedding_params: int
    flops_per_token: int
    components: list[Component]
    per_layer: Totals
    groups: dict[str, Totals]
    memory_bytes: dict[str, dict[str, int]]  # dtype -> weights, gradients, optimizer (state)
    optimizer: str = "adamw"
    kv_cache_bytes_per_token: int = 0  # float32 keys and values of every layer (0: no KV cache)
    lstm_equal_params: Optional[LstmMatch] = None  # GPT models only
    padding_rows: int = 0  # embedding rows beyond the vocabulary (model.vocab_multiple), counted in params

    def shape(self) -> str:
        m = self.model
        return f"d_model={m.d_model} n_layer={m.n_layer}" + (
            f" n_head={m.n_head} block_size={m.block_size}" if m.arch == "gpt" else "")

    def to_dict(self) -> dict[str, Any]:
        """The --json form."""
        data = dataclasses.asdict(self)
        if data["lstm_equal_params"] is None:
            del data["lstm_equal_params"]
        return data


def inspect_config(target: Optional[Path], preset: Optional[str], sets: Optional[list[str]],
                   vocab_size: Optional[int]):
    """(config, vocab size, where the vocabulary came from) of a run directory, a YAML config
    or a preset (default: the quick preset)."""
    from tformer_cli.core import config as cfgmod

    overrides = cfgmod.parse_set(sets or [])
    if target is not None and target.is_dir():
        cfg = _run_config(target, preset, overrides)
        if vocab_size is None:
            found = _run_vocab(target)
            if found is not None:
                return cfg, found[0], found[1]
    else:
        if target is None and preset is None:
            preset = "quick"
        cfg = cfgmod.resolve(target, preset, overrides)
    if vocab_size is not None:
        if vocab_size < 1:
            raise ConfigError(f"--vocab-size must be positive, got {vocab_size}")
        return cfg, vocab_size, "--vocab-size"
    from tformer_cli.core.data import prepare

    ds = prepare(cfg.data)  # cached after the first time
    mask = 1 if cfg.train.objective == "mlm" else 0  # the MLM model's extra [MASK] token
    return cfg, ds.vocab_size + mask, f"the {cfg.data.tokenizer} tokenizer of {ds.corpus}"


def _run_config(target: Path, preset: Optional[str], overrides: dict):
    from tformer_cli.core import config as cfgmod

    if preset is not None:
        raise ConfigError("give a run directory or --preset, not both")
    if not (target / "config.yaml").exists():
        raise ConfigError(f"{target} is not a run directory (no config.yaml)",
                          hint="give a run directory, a YAML config file or --preset NAME")
    return cfgmod.from_dict(cfgmod.merge(cfgmod.load_yaml(target / "config.yaml"), overrides))


def _run_vocab(target: Path) -> Optional[tuple[int, str]]:
    """The vocabulary size a run recorded, and in which file."""
    for name in ("checkpoint.json", "summary.json"):
        try:
            return int(json.loads((target / name).read_text())["vocab_size"]), f"the run ({name})"
        except (OSError, ValueError, KeyError):
            continue
    return None


def inspect_model(cfg, vocab_size: int, source: str = "") -> InspectReport:
    """Everything `tformer inspect` shows."""
    from tformer_cli.core import anatomy

    m = cfg.model
    muon = cfg.train.optimizer == "muon"
    parts = anatomy.parts(m, vocab_size)
    tot = anatomy.totals(m, vocab_size)
    one_layer = [p for p in parts if p.layer == 0]
    components = [
        Component(name=p.name, group=p.group, per_layer=p.layer is not None,
                  params=p.params * (m.n_layer if p.layer is not None else 1),
                  params_per_layer=p.params if p.layer is not None else None,
                  flops_per_token=p.flops * (m.n_layer if p.layer is not None else 1))
        for p in parts if p.layer in (None, 0)
    ]
    lstm = None
    if m.arch == "gpt":
        d = anatomy.matched_lstm_d_model(m, vocab_size)
        lstm = LstmMatch(d, anatomy.totals(dataclasses.replace(m, arch="lstm", d_model=d), vocab_size).params)
    return InspectReport(
        model=m, vocab_size=vocab_size, vocab_source=source, params=tot.params,
        non_embedding_params=tot.non_embedding, flops_per_token=tot.flops_per_token, components=components,
        per_layer=Totals(sum(p.params for p in one_layer), sum(p.flops for p in one_layer)),
        groups={g: Totals(tot.by_group_params[g], tot.by_group_flops.get(g, 0)) for g in tot.by_group_params},
        memory_bytes=anatomy.memory_bytes(tot.params, anatomy.muon_params(m) if muon else 0),
        optimizer=cfg.train.optimizer, lstm_equal_params=lstm,
        kv_cache_bytes_per_token=anatomy.kv_cache_bytes_per_token(m) if m.causal else 0,
        padding_rows=anatomy.padding_rows(m, vocab_size),
    )
