"""What an experiment is: a base config, its members (dotted overrides) and the seeds.

The spec is written to ``experiment.json`` in the experiment directory; ``--resume`` replays it.
Layout of an experiment directory::

    experiment.json          the spec (base config, members, seeds): what --resume replays
    results.json / .csv      one row per member and seed, every metric; plus the per-member summary
    comparison.png           validation curves of all members (drawn by the command)
    members/<name>-s<seed>/  each member's own run directory (a normal `tformer train` run)
    pretrain/<name>/         a language model the members fine-tune (a study file's pretrain: section)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tformer_cli.core import config as cfgmod
from tformer_cli.core.config import Config
from tformer_cli.core.io import atomic_write_text
from tformer_cli.errors import ConfigError, RunError
from tformer_cli.study.claim import Claim, parse_claims

SPEC_NAME = "experiment.json"


@dataclass
class Member:
    """One arm of an experiment: its overrides of the base config and what they mean in words."""

    name: str  # also the directory name: members/<name>-s<seed>
    overrides: dict[str, Any] = field(default_factory=dict)
    changed: str = "baseline"
    resized: str = ""  # what --match params changed, in words
    axes: dict[str, Any] = field(default_factory=dict)  # swept key -> value (sweeps)


@dataclass
class Spec:
    kind: str  # ablate | sweep
    base: dict[str, Any]  # Config.to_dict() of the base config
    members: list[Member]
    seeds: list[int]
    axes: list[str] = field(default_factory=list)  # swept keys, in order (sweeps)
    prompt: str | None = None
    claims: list[Claim] = field(default_factory=list)  # a study file's claim: section, parsed once
    tune: dict[str, Any] | None = None  # --tune lr: the grid and the original members (tformer_cli.study.tune)
    # name -> Config.to_dict() of a language model trained into pretrain/<name> before the members
    # (a study file's pretrain: section); a member's task.source_run "pretrain/<name>" names it
    pretrain: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.claims = parse_claims(self.claims)  # dicts (a study file, experiment.json) become Claims

    def config(self) -> Config:
        return cfgmod.from_dict(self.base)

    def member_config(self, m: Member, seed: int) -> Config:
        return self.config().replace({**m.overrides, "train.seed": seed})

    def baseline(self) -> Member:
        """The member with no changes from the base config, else the first."""
        base = self.config()
        for m in self.members:
            if all(base.get(k) == v for k, v in m.overrides.items()):
                return m
        return self.members[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Spec":
        return cls(d["kind"], d["base"], [Member(**m) for m in d["members"]], list(d["seeds"]),
                   list(d.get("axes", [])), d.get("prompt"), list(d.get("claims") or []), d.get("tune"),
                   dict(d.get("pretrain") or {}))


def describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in overrides.items()) or "baseline"


def fmt_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def member_dir(out_dir: Path, m: Member, seed: int) -> Path:
    return Path(out_dir) / "members" / f"{m.name}-s{seed}"


def validate_members(spec: Spec) -> None:
    """Build every member config before anything trains; report all problems at once."""
    problems = []
    names = [m.name for m in spec.members]
    if len(names) != len(set(names)):
        problems.append(f"member names must be unique, got {names}")
    for m in spec.members:
        try:
            spec.member_config(m, spec.seeds[0])
        except ConfigError as e:
            problems.extend(f"member {m.name}: {p}" for p in e.problems)
    if problems:
        raise ConfigError(problems, hint="no member was trained; fix the values above")


def prepare_experiment_dir(out_dir: Path, spec: Spec) -> None:
    """Create a fresh experiment directory and write its spec; never clobber anything."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"--out {out_dir} exists and is not empty",
                          hint=f"continue it with --resume {out_dir}, or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {out_dir}: {e.strerror}", hint="choose a writable --out") from None
    atomic_write_text(out_dir / SPEC_NAME, json.dumps(spec.to_dict(), indent=2) + "\n")


def is_experiment_dir(path: Path) -> bool:
    return (Path(path) / SPEC_NAME).exists()


def load_spec(exp_dir: Path) -> Spec:
    from tformer_cli.core.untrusted import UnreadableFile, read_text, short

    path = Path(exp_dir) / SPEC_NAME
    try:
        text = read_text(path, 16 << 20)
    except UnreadableFile as e:
        if e.missing:
            raise ConfigError(f"--resume {exp_dir}: not an experiment directory (no {SPEC_NAME})",
                              hint="give a directory written by tformer ablate or tformer sweep") from None
        raise RunError(f"cannot read {e}") from None
    try:
        spec = Spec.from_dict(json.loads(text))
        if not (isinstance(spec.kind, str) and isinstance(spec.base, dict) and spec.members and spec.seeds
                and all(isinstance(m.name, str) and isinstance(m.overrides, dict) for m in spec.members)
                and all(isinstance(s, int) and not isinstance(s, bool) for s in spec.seeds)):
            raise TypeError("a field has the wrong type (kind, base, members or seeds)")
        return spec
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise RunError(f"{path} is damaged: {short(str(e), 100)}",
                       hint="restore it from a backup, or start the experiment again") from None


def experiment_target(spec: Spec | None, out: Path | None, resume: Path | None) -> tuple[Spec, Path]:
    """(the spec, its directory): the spec of ``resume`` replayed, or ``spec`` validated with its --out
    (default runs/<kind>-<date-time>)."""
    from tformer_cli.run.rundir import default_run_dir

    if resume is not None:
        return load_spec(resume), Path(resume)
    assert spec is not None
    validate_members(spec)  # every member config, before anything trains
    stamp = default_run_dir("runs").name  # runs/<stamp>, unique
    return spec, Path(out) if out is not None else Path("runs") / f"{spec.kind}-{stamp}"
