"""Study files and command-line flags into a Spec.

A config file may carry an ``experiment:`` section (a study file, see experiments/studies/*.yaml);
its settings are defaults that command-line flags add to or override.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tformer_cli.core import config as cfgmod
from tformer_cli.core.config import Config
from tformer_cli.errors import ConfigError
from tformer_cli.study.claim import parse_claims
from tformer_cli.study.matching import match_params
from tformer_cli.study.members import ablation_members, file_arms, grid_members, head_problems, parse_grid
from tformer_cli.study.spec import Spec
from tformer_cli.study.verdict import check_members

LIST_FLAGS = ("pos", "activation", "ffn_mult", "norm", "kv_heads", "softcap", "optimizer")  # repeatable
BOOL_FLAGS = ("no_causal_mask", "no_ffn", "post_norm", "qk_norm")
ABLATE_KEYS = {"kind", *LIST_FLAGS, *BOOL_FLAGS, "arms", "cumulative", "combine", "match", "match_by", "seeds",
               "prompt", "claim", "pretrain", "ladder"}
SWEEP_KEYS = {"kind", "grid", "seeds", "prompt", "claim", "pretrain", "ladder"}
SECTION_KEYS = {"ablate": ABLATE_KEYS, "sweep": SWEEP_KEYS}


def experiment_config(config: Path | None, preset: str | None,
                      overrides: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    """(base Config, the file's experiment: section); defaults < preset < file < ``overrides``
    (the flags, then --set).  An override ``pretrain.NAME.section.key`` changes the pretrain:
    section's model NAME instead (a ladder's rung resizes the bodies its members fine-tune);
    train.device (--device) applies to those models too, unless a pretrain key names theirs."""
    body_keys = {k: v for k, v in overrides.items() if k.startswith(cfgmod.PRETRAIN_PREFIX)}
    overrides = {k: v for k, v in overrides.items() if k not in body_keys}
    file_over: dict[str, Any] = {}
    exp: dict[str, Any] = {}
    if config is not None:
        data_ = cfgmod.load_yaml(config)
        exp = data_.pop("experiment", None) or {}
        if not isinstance(exp, dict):
            raise ConfigError(f"{config}: experiment: must be a mapping (kind, flags, grid, seeds)")
        if "claim" in data_:  # the study's claim (tformer_cli.study.verdict) travels with the experiment
            exp = {**exp, "claim": data_.pop("claim")}
        if "pretrain" in data_:  # the language models the members fine-tune, trained first
            exp = {**exp, "pretrain": data_.pop("pretrain")}
        if "ladder" in data_:  # the sizes the study runs at with --ladder (tformer_cli.study.scale)
            exp = {**exp, "ladder": data_.pop("ladder")}
        for section, values in data_.items():
            if not isinstance(values, dict):  # let from_dict name the problem
                values = {"__invalid__": values} if values is not None else {}
            file_over.update({f"{section}.{k}": v for k, v in values.items()})
    if "train.device" in overrides and isinstance(exp.get("pretrain"), dict):  # --device: the bodies' too
        device = overrides["train.device"]
        body_keys = {**{f"{cfgmod.PRETRAIN_PREFIX}{n}.train.device": device for n in exp["pretrain"]}, **body_keys}
    if body_keys:
        exp = {**exp, "pretrain": _with_body_keys(exp.get("pretrain"), body_keys, config)}
    if config is None and preset is None:
        preset = "quick"
    return cfgmod.resolve(None, preset, {**file_over, **overrides}), exp


def _with_body_keys(raw: Any, keys: dict[str, Any], where) -> dict[str, Any]:
    """The pretrain: section with ``pretrain.NAME.section.key`` values set (a copy); a key naming
    no pretrained model, or not of that form, is refused with the others."""
    bodies = {n: {s: dict(v) if isinstance(v, dict) else v for s, v in (b or {}).items()}
              for n, b in (raw.items() if isinstance(raw, dict) else [])}
    problems = []
    for key, value in keys.items():
        body = cfgmod.pretrain_key(key)
        if body is None:
            problems.append(f"{key}: expected pretrain.NAME.section.key, e.g. pretrain.gpt.model.d_model")
        elif body[0] not in bodies:
            known = ", ".join(bodies) or "none: the file has no pretrain: section"
            problems.append(f"{key}: no pretrained model {body[0]!r} (known: {known})")
        else:
            section_name, name = body[1].split(".")
            section = bodies[body[0]].setdefault(section_name, {})
            if isinstance(section, dict):
                section[name] = value
    if problems:
        raise ConfigError([f"{where}: {p}" for p in problems] if where else problems,
                          hint="see the pretrain: section of experiments/studies/finetune_q1.yaml")
    return bodies


def check_section(exp: dict[str, Any], kind: str, path) -> None:
    """The experiment: section holds only the keys of ``kind`` and, if it names a kind, that one."""
    allowed = SECTION_KEYS[kind]
    problems = [f"experiment.{k}: unknown key for kind {kind} (known: {', '.join(sorted(allowed))})"
                for k in exp if k not in allowed]
    if exp.get("kind", kind) != kind:
        problems.append(f"experiment.kind: the file is a '{exp['kind']}' study; run it with "
                        f"`tformer study {path}`")
    if problems:
        raise ConfigError(problems)


def as_list(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def seed_list(cfg: Config, n: int | None) -> list[int]:
    """``n`` seeds from train.seed up (one when not given)."""
    n = 1 if n is None else n
    if n < 1:
        raise ConfigError(f"--seeds {n}: must be at least 1")
    return [cfg.train.seed + i for i in range(n)]


def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text}: expected integers separated by commas, e.g. 1,2,4") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{flag} {text}: expected positive integers separated by commas")
    return values


def _merged(exp: dict[str, Any], key: str, given) -> list:
    """The study file's values of ``key`` then the flag's, each once."""
    return list(dict.fromkeys(as_list(exp.get(key)) + list(given or [])))


def ablate_spec(cfg: Config, exp: dict[str, Any], *, combine=False, match=None, match_by=None, seeds=None,
                **flags) -> Spec:
    """The ablation spec: CLI flags add to (or, for single values, override) the study file's."""
    merged: dict[str, Any] = {k: flags.get(k) or bool(exp.get(k)) for k in BOOL_FLAGS}
    merged.update({k: _merged(exp, k, flags.get(k)) for k in LIST_FLAGS})
    merged["ffn_mult"] = [float(x) for x in merged["ffn_mult"]]
    members = ablation_members(cfg, combine=combine or bool(exp.get("combine")),
                               cumulative=bool(exp.get("cumulative")), arms=file_arms(exp.get("arms")), **merged)
    spec = Spec("ablate", cfg.to_dict(), members, seed_list(cfg, seeds or exp.get("seeds")),
                prompt=exp.get("prompt"))
    match = match or exp.get("match")
    if match is not None:
        if match != "params":
            raise ConfigError(f"--match {match}: only 'params' is supported")
        match_params(spec, match_by or exp.get("match_by") or "d_ff")
    elif match_by is not None:
        raise ConfigError("--match-by needs --match params")
    return spec


def sweep_spec(cfg: Config, grid: dict[str, list], seeds=None, prompt=None) -> Spec:
    return Spec("sweep", cfg.to_dict(), grid_members(cfg, grid), seed_list(cfg, seeds), axes=list(grid),
                prompt=prompt)


def file_grid(exp: dict[str, Any]) -> dict[str, list]:
    """The grid of a study file's experiment: section (empty when it has none)."""
    grid = exp.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError("experiment.grid: expected a mapping KEY: [V1, V2, ...]")
    return parse_grid([f"{k}={','.join(str(v) for v in as_list(vs))}" for k, vs in grid.items()]) \
        if grid else {}


def grid_spec(cfg: Config, exp: dict[str, Any], grid: list[str] | None, seeds: int | None) -> Spec:
    """`tformer sweep`: the study file's grid, then the --grid flags (a key given again wins)."""
    g = file_grid(exp)
    g.update(parse_grid(grid) if grid else {})
    if not g:
        parse_grid([])  # raises the "no --grid given" error
    return sweep_spec(cfg, g, seeds or exp.get("seeds"), exp.get("prompt"))


def heads_grid(cfg: Config, heads: list[int], d_model: int | None, kv_heads: list[int] | None = None
               ) -> dict[str, list]:
    """model.n_head values at a fixed d_model (and model.n_kv_head values, every pair of the two);
    refuses every head count that does not divide d_model and every K/V count that does not divide
    a head count, before anything trains."""
    d = d_model or cfg.model.d_model
    problems = head_problems(d, heads)
    problems += list(dict.fromkeys(p for h in heads for k in kv_heads or []
                                   if (p := cfgmod.kv_head_count_problem(h, k))))
    if problems:
        raise ConfigError(problems, hint="nothing was trained; choose head counts from the valid ones")
    grid: dict[str, list] = {"model.n_head": heads}
    if d_model is not None:
        grid = {"model.d_model": [d_model], **grid}
    if kv_heads:
        grid["model.n_kv_head"] = kv_heads
    return grid


def dmodel_grid(cfg: Config, widths: list[int], heads: int | None) -> dict[str, list]:
    """model.d_model values at a fixed head count; refuses every width the head count does not divide."""
    h = heads or cfg.model.n_head
    problems = [p for d in widths for p in head_problems(d, [h])]
    if problems:
        raise ConfigError(problems, hint="nothing was trained; choose widths divisible by the head count")
    grid: dict[str, list] = {"model.d_model": widths}
    if heads is not None:
        grid["model.n_head"] = [heads]
    return grid


def builtin_studies() -> list[Path]:
    """The study files that ship with tformer, by name."""
    return sorted((cfgmod.PRESET_DIR / "studies").glob("*.yaml"))


def find_study(config: Path) -> Path:
    """A study file's path, or the built-in study of that name (`tformer study ablate_causal_mask`)."""
    builtin = cfgmod.PRESET_DIR / "studies" / f"{config}.yaml"
    return builtin if not Path(config).exists() and builtin.exists() else Path(config)


# ---------------------------------------------------------------- one call per command


@dataclass
class Source:
    """Where a command's base config comes from: a config or study file, a preset, the flags'
    overrides (then --set), and the number of seeds asked for."""

    config: Path | None
    preset: str | None
    overrides: dict[str, Any]
    seeds: int | None = None

    def load(self, kind: str | None = None) -> tuple[Config, dict[str, Any]]:
        """(base config, experiment: section), the section checked against ``kind`` when given."""
        cfg, exp = experiment_config(self.config, self.preset, self.overrides)
        if kind is not None:
            check_section(exp, kind, self.config)
        return cfg, exp


def ablate_from(src: Source, **flags) -> Spec:
    """`tformer ablate`: the study file's ablation with the flags added."""
    cfg, exp = src.load("ablate")
    return ablate_spec(cfg, exp, seeds=src.seeds, **flags)


def sweep_from(src: Source, grid: list[str] | None) -> Spec:
    """`tformer sweep`: the study file's grid and the --grid flags."""
    cfg, exp = src.load("sweep")
    return grid_spec(cfg, exp, grid, src.seeds)


def heads_from(src: Source, heads: str, d_model: int | None, kv_heads: str | None = None) -> Spec:
    """`tformer sweep-heads`: head counts at one d_model (and shared key/value heads)."""
    cfg, exp = src.load()
    kv = int_list(kv_heads, "--kv-heads") if kv_heads is not None else None
    return sweep_spec(cfg, heads_grid(cfg, int_list(heads, "--heads"), d_model, kv), src.seeds or exp.get("seeds"),
                      exp.get("prompt"))


def dmodel_from(src: Source, widths: str, heads: int | None) -> Spec:
    """`tformer sweep-dmodel`: widths at one head count."""
    cfg, exp = src.load()
    return sweep_spec(cfg, dmodel_grid(cfg, int_list(widths, "--d-model"), heads), src.seeds or exp.get("seeds"),
                      exp.get("prompt"))


def ladder_of(src: Source):
    """The study file's ladder: section (tformer_cli.study.scale.Ladder), or None when it has none."""
    from tformer_cli.study.scale import parse_ladder

    assert src.config is not None
    config = find_study(src.config)
    return parse_ladder(experiment_config(config, None, src.overrides)[1].get("ladder"), config)


def study_from(src: Source, rung=None) -> Spec:
    """`tformer study FILE`: the spec the file's experiment: section describes; at ``rung`` (a
    LadderRung) with the rung's keys and seeds, under the user's own flags."""
    assert src.config is not None
    config = find_study(src.config)
    if rung is not None:
        src = Source(src.config, src.preset, {**rung.set, **src.overrides}, src.seeds or rung.seeds)
    cfg, exp = experiment_config(config, None, src.overrides)
    kind = exp.get("kind")
    if kind not in SECTION_KEYS:
        raise ConfigError(f"{config}: experiment.kind must be ablate or sweep, got {kind!r}",
                          hint="a study file has an experiment: section; see experiments/studies/*.yaml")
    check_section(exp, kind, config)
    claims = parse_claims(exp.get("claim"))
    cfg = _device_scale(cfg, claims, src.overrides)
    if kind == "ablate":
        spec = ablate_spec(cfg, exp, seeds=src.seeds)
    else:
        spec = sweep_spec(cfg, file_grid(exp), src.seeds or exp.get("seeds"), exp.get("prompt"))
    check_members(claims, spec)
    spec.claims = claims
    spec.pretrain = pretrain_section(exp.get("pretrain"), config)
    check_bodies(spec, config)
    return spec


def check_bodies(spec: Spec, where) -> None:
    """Every member that fine-tunes a model of the pretrain: section has that model's architecture,
    by the rule of --init-from (only run.init.INIT_CHANGES may differ, the block no longer), before
    anything trains."""
    from dataclasses import fields

    from tformer_cli.run.init import INIT_CHANGES
    from tformer_cli.study.runner import pretrain_name

    problems = []
    for m in spec.members:
        cfg = spec.member_config(m, spec.seeds[0])
        name = pretrain_name(cfg.task.source_run)
        if name not in spec.pretrain:
            continue
        body = cfgmod.from_dict(spec.pretrain[name]).model
        diff = [f"{f.name} {getattr(cfg.model, f.name)!r} against {getattr(body, f.name)!r}"
                for f in fields(body) if f"model.{f.name}" not in INIT_CHANGES
                and getattr(cfg.model, f.name) != getattr(body, f.name)]
        if cfg.model.block_size > body.block_size:
            diff.append(f"block_size {cfg.model.block_size} against {body.block_size}")
        if diff:
            problems.append(f"member {m.name}: its model does not fit {cfg.task.source_run} ({'; '.join(diff)})")
    if problems:
        raise ConfigError([f"{where}: {p}" for p in problems],
                          hint="give the member and its pretrained model the same model keys "
                               "(a ladder's rung: model.KEY and pretrain.NAME.model.KEY)")


def pretrain_section(raw: Any, where) -> dict[str, dict[str, Any]]:
    """A study file's pretrain: section (name -> the sections of a language-model config), each
    checked as a config; every problem at once."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: pretrain: must map names to configs (model:, data:, train:)")
    out, problems = {}, []
    for name, sections in raw.items():
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"pretrain.{name}: a name of letters, digits, - and _")
            continue
        try:
            cfg = cfgmod.from_dict(sections if isinstance(sections, dict) else {"__invalid__": sections})
        except ConfigError as e:
            problems += [f"pretrain.{name}: {p}" for p in e.problems]
            continue
        if cfg.task.kind != "lm":
            problems.append(f"pretrain.{name}: task.kind must be lm (a language model to fine-tune)")
        out[name] = cfg.to_dict()
    if problems:
        raise ConfigError(problems, hint="see experiments/studies/finetune_q1.yaml")
    return out


def _device_scale(cfg: Config, claims: list, given: dict[str, Any]) -> Config:
    """A study's larger budget where a GPU is present (claim.gpu.set), under the user's own flags."""
    scale = {k: v for c in claims for k, v in ((c.gpu or {}).get("set") or {}).items() if k not in given}
    if not scale:
        return cfg
    from tformer_cli.core.device import select

    return cfg.replace(scale) if select(cfg.train.device).type == "cuda" else cfg
