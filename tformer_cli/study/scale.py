"""The scale ladder: one study at several model sizes, a verdict per size and a trend per claim.

A study file may carry a ``ladder:`` section beside its claim::

    ladder:
      rule: "d_model x2 and n_layer x2 a rung; lr x 64/d_model; steps and batch as written"
      rungs:
        - {}                                   # rung 1: the study as written
        - {model.d_model: 128, model.n_layer: 4, train.lr: 0.0015}
        - {model.d_model: 256, model.n_layer: 8, train.lr: 0.00075, seeds: 5}
      budget: {cpu: "rungs 1-2: ...", gpu: "not measured"}

Each rung names the config keys it changes (dotted, as --set takes them) and may name its own
number of seeds; the rule says in words how steps, batch and learning rate follow the size, and
why (a reader must know what "larger" meant).  ``tformer study NAME --ladder`` runs every rung,
``--rungs 1,2`` some, each a complete study in OUT/rung-N (a re-run continues it); the user's
flags apply to every rung and win over the rung's keys.

Each rung gets its own verdicts.  A claim's trend reads its verdicts in rung order: it holds at
every size (agrees throughout), fails at every size (disagrees throughout), appears with scale
(disagrees, then agrees from some rung on), vanishes with scale (agrees, then disagrees), changes
with scale (anything else decided), or is undecided at rung N (the first rung that could not
decide: the trend is not known past it).  A rung is marked overfit when one of its compared runs
had a validation loss rising while its training loss fell, and names how often its largest member
read its training text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tformer_cli.errors import ConfigError
from tformer_cli.study.results import ExperimentResult

LADDER_KEYS = {"rule", "rungs", "budget"}
SCALE_JSON = "scale.json"  # in the ladder's directory: the rule, each rung's directory, the trends
RUNG_SEEDS = "seeds"  # a rung's own number of seeds (the other keys are config keys)

HOLDS, FAILS, APPEARS, VANISHES, CHANGES = ("holds at every size", "fails at every size", "appears with scale",
                                            "vanishes with scale", "changes with scale")


@dataclass(frozen=True)
class LadderRung:
    index: int  # 1-based, as --rungs names it
    set: dict[str, Any]  # config keys the rung changes
    seeds: int | None = None  # the rung's seeds; None: the study's


@dataclass(frozen=True)
class Ladder:
    rule: str
    rungs: tuple[LadderRung, ...]
    budget: dict[str, str] = field(default_factory=dict)

    def pick(self, text: str | None) -> list[LadderRung]:
        """The rungs ``--rungs`` names ("1,2"; None: every rung), in ladder order."""
        if text is None:
            return list(self.rungs)
        try:
            wanted = {int(v) for v in text.split(",") if v.strip()}
        except ValueError:
            raise ConfigError(f"--rungs {text}: expected rung numbers separated by commas, e.g. 1,2") from None
        bad = sorted(w for w in wanted if not 1 <= w <= len(self.rungs))
        if not wanted or bad:
            raise ConfigError(f"--rungs {text}: this ladder has rungs 1 to {len(self.rungs)}",
                              hint="e.g. --rungs 1,2 for the two smallest")
        return [r for r in self.rungs if r.index in wanted]


def parse_ladder(raw: Any, where: Any) -> Ladder | None:
    """A study file's ladder: section as a Ladder (None when it has none); every problem at once.
    Config keys are checked by applying them (study.files does, with the study's config)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: ladder: must be a mapping (rule, rungs, budget)")
    problems = [f"ladder.{k}: unknown key (known: {', '.join(sorted(LADDER_KEYS))})" for k in raw
                if k not in LADDER_KEYS]
    rule = raw.get("rule")
    if not isinstance(rule, str) or not rule.strip():
        problems.append("ladder.rule: missing: say how steps, batch and lr follow the size, and why")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict) or any(not isinstance(v, str) for v in budget.values()):
        problems.append("ladder.budget: expected a mapping of strings, e.g. {cpu: \"...\", gpu: \"...\"}")
        budget = {}
    items = raw.get("rungs")
    rungs: list[LadderRung] = []
    if not isinstance(items, list) or not items:
        problems.append("ladder.rungs: expected a list of mappings, one per rung ({} is the study as written)")
        items = []
    for i, item in enumerate(items, start=1):
        at = f"ladder.rungs[{i}]"
        if item is None:
            item = {}
        if not isinstance(item, dict):
            problems.append(f"{at}: expected a mapping of config keys (model.d_model: 128, ...)")
            continue
        keys = {k: v for k, v in item.items() if k != RUNG_SEEDS}
        problems += [f"{at}.{k}: expected a dotted config key (section.key)" for k in keys
                     if not isinstance(k, str) or "." not in k]
        seeds = item.get(RUNG_SEEDS)
        if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
            problems.append(f"{at}.seeds: expected a positive number of seeds, got {seeds!r}")
        rungs.append(LadderRung(i, keys, seeds))
    if problems:
        raise ConfigError(problems, hint="see the ladder: section of experiments/studies/*.yaml")
    return Ladder(rule.strip(), tuple(rungs), {str(k): v for k, v in budget.items()})


def rung_dir(root: Path, index: int) -> Path:
    return Path(root) / f"rung-{index}"


# ---------------------------------------------------------------- the trend of each claim


@dataclass
class RungPoint:
    """One claim at one rung: its verdict and what the rung was."""

    rung: int
    params: int | None  # the claim's member (mean over its seeds)
    outcome: str
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    suggestion: str = ""
    overfit: bool = False  # a compared run's val loss rose while its training loss fell
    epochs: float | None = None  # how often the rung's largest member read its training text


@dataclass
class Trend:
    statement: str
    metric: str
    trend: str  # HOLDS | FAILS | APPEARS | VANISHES | CHANGES | "undecided at rung N"
    points: list[RungPoint]
    margin: float = 0.0  # the claim's smallest difference that matters
    rungs_in_ladder: int = 0  # how many rungs the ladder has (the points may be some of them)

    @property
    def scope(self) -> str:
        """"" when every rung ran, else which did: "rungs 1, 2 of 3"."""
        if not self.rungs_in_ladder or len(self.points) >= self.rungs_in_ladder:
            return ""
        return f"rungs {', '.join(str(p.rung) for p in self.points)} of {self.rungs_in_ladder}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScaleRung:
    index: int
    result: ExperimentResult


def trend_of(outcomes: list[str], rungs: list[int]) -> str:
    """The trend of one claim's outcomes in rung order (``rungs`` their numbers)."""
    for outcome, rung in zip(outcomes, rungs):
        if outcome not in ("agrees", "disagrees"):
            return f"undecided at rung {rung}"
    agrees = [o == "agrees" for o in outcomes]
    if all(agrees):
        return HOLDS
    if not any(agrees):
        return FAILS
    first = agrees.index(not agrees[0])  # the first rung that differs from the smallest
    if all(a == agrees[first] for a in agrees[first:]):  # one change, and it stays
        return APPEARS if agrees[first] else VANISHES
    return CHANGES


def _point(index: int, result: ExperimentResult, v) -> RungPoint:
    rows = [r for r in result.rows if r.member in (v.member, v.baseline) and r.status == "ok"]
    mine = [r.params for r in rows if r.member == v.member and r.params is not None]
    epochs = [r.epochs for r in result.rows if r.epochs is not None]
    return RungPoint(index, round(sum(mine) / len(mine)) if mine else None, v.outcome, v.delta, v.ci_low,
                     v.ci_high, v.n, v.suggestion, any(bool(r.overfit) for r in rows),
                     max(epochs) if epochs else None)


def trends(rungs: list[ScaleRung], rungs_in_ladder: int = 0) -> list[Trend]:
    """One Trend per claim of the study (matched by position: every rung has the same claims)."""
    if not rungs:
        return []
    out = []
    for i, first in enumerate(rungs[0].result.verdicts):
        points = [_point(r.index, r.result, r.result.verdicts[i]) for r in rungs if i < len(r.result.verdicts)]
        out.append(Trend(first.statement, first.metric, trend_of([p.outcome for p in points],
                                                                  [p.rung for p in points]), points,
                         first.margin, rungs_in_ladder))
    return out


@dataclass
class ScaleReport:
    """A ladder run: the study, its ladder, the rungs run (each an ExperimentResult in OUT/rung-N),
    each claim's trend and the plot (as scale.json holds it)."""

    study: str
    ladder: Ladder
    rungs: list[ScaleRung]
    trends: list[Trend]
    plot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "rule": self.ladder.rule, "budget": self.ladder.budget,
                "rungs": [{"rung": r.index, "set": next(x.set for x in self.ladder.rungs if x.index == r.index),
                           "out_dir": r.result.out_dir, "seeds": len(r.result.seeds)} for r in self.rungs],
                "trends": [t.to_dict() for t in self.trends], "plot": self.plot}
