"""The members of an experiment: ablation arms and the full product of a sweep grid."""

from __future__ import annotations

import itertools
from typing import Any

from tformer_cli.core import config as cfgmod
from tformer_cli.core.config import Config
from tformer_cli.errors import ConfigError
from tformer_cli.study.spec import Member, describe, fmt_value

ABLATE_FLAGS = ("--no-causal-mask, --no-ffn, --pos, --activation, --ffn-mult, --norm, --post-norm, --kv-heads, "
                "--qk-norm, --softcap, --optimizer")


def flag_arms(base: Config, *, no_causal_mask: bool = False, no_ffn: bool = False, pos=None, activation=None,
              ffn_mult=None, norm=None, post_norm: bool = False, kv_heads=None, qk_norm: bool = False,
              softcap=None, optimizer=None) -> list[tuple[str, dict[str, Any]]]:
    """One (name, overrides) arm per ablation flag value, in the order of the flags."""
    arms: list[tuple[str, dict[str, Any]]] = []
    if no_causal_mask:
        arms.append(("no-causal-mask", {"model.causal": False}))
    if no_ffn:
        arms.append(("no-ffn", {"model.ffn": False}))
    arms += [(f"pos-{p}", {"model.pos_encoding": p}) for p in pos or []]
    arms += [(f"act-{a}", {"model.activation": a}) for a in activation or []]
    arms += [(f"ffn-mult-{x:g}", {"model.d_ff": int(round(x * base.model.d_model))}) for x in ffn_mult or []]
    arms += [(f"norm-{n}", {"model.norm": n}) for n in norm or []]
    if post_norm:
        arms.append(("post-norm", {"model.norm_position": "post"}))
    arms += [(f"kv-heads-{k}", {"model.n_kv_head": k}) for k in kv_heads or []]
    if qk_norm:
        arms.append(("qk-norm", {"model.qk_norm": True}))
    arms += [(f"softcap-{c:g}", {"model.logit_softcap": c}) for c in softcap or []]
    arms += [(f"opt-{o}", {"train.optimizer": o}) for o in optimizer or []]
    return arms


def ablation_members(base: Config, *, combine: bool = False, cumulative: bool = False,
                     arms: list[tuple[str, dict[str, Any]]] | None = None, **flags) -> list[Member]:
    """The baseline plus one member per flag and per named arm (``arms``, from a study file's
    experiment.arms); with ``combine`` one member with all of them; with ``cumulative`` each member
    adds its change to those before it (a path from the baseline, one switch at a time)."""
    arms = flag_arms(base, **flags) + list(arms or [])
    problems = [f"{name}: {describe(ov)} is the baseline's value already (the member would equal the baseline)"
                for name, ov in arms if all(base.get(k) == v for k, v in ov.items())]
    if problems:
        raise ConfigError(problems, hint="ablate a setting the base config does not have")
    if not arms:
        raise ConfigError(f"nothing to ablate: give at least one of {ABLATE_FLAGS}",
                          hint="e.g. tformer ablate --no-ffn")
    if combine and cumulative:
        raise ConfigError("--combine and cumulative arms exclude each other: choose one")
    if combine:
        keys = [k for _, ov in arms for k in ov]
        if len(keys) != len(set(keys)):
            raise ConfigError("--combine: each key may be changed once (two values given for the same key)")
        merged = {k: v for _, ov in arms for k, v in ov.items()}
        arms = [("+".join(n for n, _ in arms), merged)]
    if cumulative:
        path: dict[str, Any] = {}
        steps = []
        for name, ov in arms:
            path = {**path, **ov}
            steps.append((name, dict(path)))
        return [Member("baseline")] + [Member(n, ov, describe(ov)) for n, ov in steps]
    return [Member("baseline")] + [Member(n, ov, describe(ov)) for n, ov in arms]


def file_arms(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """A study file's experiment.arms: a list of {name: {key: value, ...}}, values parsed like --set."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    arms, problems = [], []
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), dict)):
            problems.append(f"experiment.arms[{i}]: expected NAME: {{key: value, ...}}")
            continue
        (name, ov), = item.items()
        try:
            arms.append((str(name), cfgmod.parse_set([f"{k}={v}" for k, v in ov.items()])))
        except ConfigError as e:
            problems += [f"experiment.arms[{i}] ({name}): {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems)
    return arms


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
