"""The members of an experiment: ablation arms and the full product of a sweep grid."""

from __future__ import annotations

import itertools
from typing import Any

from tformer_cli.core import config as cfgmod
from tformer_cli.core.config import Config
from tformer_cli.errors import ConfigError
from tformer_cli.study.spec import Member, describe, fmt_value


def ablation_members(base: Config, *, no_causal_mask: bool = False, no_ffn: bool = False,
                     pos: list[str] | None = None, activation: list[str] | None = None,
                     ffn_mult: list[float] | None = None, combine: bool = False) -> list[Member]:
    """The baseline plus one member per flag (or one member with all flags when ``combine``)."""
    arms: list[tuple[str, dict[str, Any]]] = []
    if no_causal_mask:
        arms.append(("no-causal-mask", {"model.causal": False}))
    if no_ffn:
        arms.append(("no-ffn", {"model.ffn": False}))
    arms += [(f"pos-{p}", {"model.pos_encoding": p}) for p in pos or []]
    arms += [(f"act-{a}", {"model.activation": a}) for a in activation or []]
    arms += [(f"ffn-mult-{x:g}", {"model.d_ff": int(round(x * base.model.d_model))}) for x in ffn_mult or []]
    problems = [f"{name}: {describe(ov)} is the baseline's value already (the member would equal the baseline)"
                for name, ov in arms if all(base.get(k) == v for k, v in ov.items())]
    if problems:
        raise ConfigError(problems, hint="ablate a setting the base config does not have")
    if not arms:
        raise ConfigError("nothing to ablate: give at least one of --no-causal-mask, --no-ffn, --pos, "
                          "--activation, --ffn-mult", hint="e.g. tformer ablate --no-ffn")
    if combine:
        keys = [k for _, ov in arms for k in ov]
        if len(keys) != len(set(keys)):
            raise ConfigError("--combine: each key may be changed once (two values given for the same key)")
        merged = {k: v for _, ov in arms for k, v in ov.items()}
        arms = [("+".join(n for n, _ in arms), merged)]
    return [Member("baseline")] + [Member(n, ov, describe(ov)) for n, ov in arms]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["model.n_head=1,2,4"]`` -> ``{"model.n_head": [1, 2, 4]}`` (values parsed like --set)."""
    grid: dict[str, list[Any]] = {}
    problems = []
    for item in items:
        pair = cfgmod.split_assignment(item)
        if pair is None:
            problems.append(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. model.n_head=1,2,4")
            continue
        key, raw = pair
        values = [cfgmod.parse_set([f"{key}={v.strip()}"])[key] for v in raw.split(",") if v.strip()]
        if not values:
            problems.append(f"--grid {key}: no values")
        elif key in grid:
            problems.append(f"--grid {key}: given twice")
        else:
            grid[key] = values
    if problems:
        raise ConfigError(problems)
    if not grid:
        raise ConfigError("no --grid given", hint="e.g. --grid model.n_head=1,2,4")
    return grid


def grid_members(base: Config, grid: dict[str, list[Any]]) -> list[Member]:
    """The full Cartesian product, in the order the values were given."""
    keys = list(grid)
    members = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        axes = dict(zip(keys, combo))
        name = "_".join(f"{k.split('.', 1)[1]}-{fmt_value(v)}" for k, v in axes.items())
        ov = dict(axes)
        if ov.get("train.objective") == "mlm" and "model.causal" not in ov:
            ov["model.causal"] = False  # MLM is defined with bidirectional attention (config.validate)
        changed = describe({k: v for k, v in ov.items() if base.get(k) != v})
        members.append(Member(name, ov, changed, axes=axes))
    return members


def head_problems(d_model: int, heads: list[int]) -> list[str]:
    """Every head count that does not divide d_model, in config.head_count_problem's words."""
    return [p for h in heads if (p := cfgmod.head_count_problem(d_model, h))]
