"""`tformer compare RUN_OR_EXP ...`: the validation curves of runs and of experiments' members on one axis.

Each argument is a run directory (one curve) or an experiment directory (one curve per member and
seed, a member's seeds in one colour).  The x axis is the step, the tokens seen, or the training
time, which is rebuilt from perf.jsonl (each log interval's tokens over its tokens/s: evaluation
and checkpoints are left out, so two runs compare by the time their steps took).  Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tformer_cli.errors import ConfigError
from tformer_cli.run.rundir import RunDir
from tformer_cli.study.spec import is_experiment_dir, load_spec, member_dir

AXES = ("steps", "tokens", "time")


@dataclass
class Curve:
    label: str  # the run's directory name, or EXP/member for a member
    group: str  # what shares a colour: the run, or the experiment's member
    run_dir: str
    points: list[tuple[float, float]] = field(default_factory=list)  # (x, validation loss)
    final: float | None = None
    best: float | None = None
    steps: int | None = None


def curves(paths: list[Path], axis: str) -> list[Curve]:
    """Every curve of ``paths`` against ``axis`` (steps | tokens | time); a path that is neither a
    run nor an experiment, or a run without a validation loss yet, is refused by name."""
    if axis not in AXES:
        raise ConfigError(f"--x {axis}: expected one of {', '.join(AXES)}")
    if not paths:
        raise ConfigError("give at least one run or experiment directory", hint="e.g. tformer compare runs/a runs/b")
    out = []
    for p in paths:
        p = Path(p)
        if is_experiment_dir(p):
            spec = load_spec(p)
            for m in spec.members:
                for s in spec.seeds:
                    d = member_dir(p, m, s)
                    if RunDir(d).metrics.exists():
                        out.append(_curve(d, f"{p.name}/{m.name}", f"{p.name}/{m.name}", axis))
        elif RunDir(p).metrics.exists():
            out.append(_curve(p, p.name, str(p), axis))
        else:
            raise ConfigError(f"{p}: neither a run nor an experiment directory (no metrics.jsonl, no "
                              "experiment.json)", hint="give directories written by tformer train, ablate or sweep")
    for c in out:
        if c.final is None:
            raise ConfigError(f"{c.run_dir} has no validation loss yet", hint="compare runs that have evaluated once")
        if not c.points:
            raise ConfigError(f"{c.run_dir}: its logs do not record the {axis} of its evaluations",
                              hint="compare it against --x steps")
    return out


def _curve(run_dir: Path, label: str, group: str, axis: str) -> Curve:
    rd = RunDir(run_dir)
    rows = rd.metric_rows()
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    x_of = _x(rows, rd.metric_rows(perf=True), axis)
    pts = [(x_of(step), v) for step, v in val]
    pts = [(x, v) for x, v in pts if x is not None]
    return Curve(label, group, str(run_dir), pts, val[-1][1] if val else None, min(v for _, v in val) if val else None,
                 val[-1][0] if val else None)


def _x(rows: list[dict], perf: list[dict], axis: str):
    """step -> x on ``axis``: the step itself, the tokens seen by then, or the seconds of training."""
    if axis == "steps":
        return float
    tokens = {r["step"]: r["tokens"] for r in rows if isinstance(r.get("tokens"), (int, float))}
    if axis == "tokens":
        steps = sorted(tokens)
        return lambda s: _at(steps, tokens, s)
    rate = {r["step"]: r["tokens_per_s"] for r in perf if r.get("tokens_per_s")}
    seconds, t, prev = {0: 0.0}, 0.0, 0
    for step in sorted(set(tokens) & set(rate)):
        t += (tokens[step] - tokens.get(prev, 0)) / rate[step]
        seconds[step], prev = t, step
    steps = sorted(seconds)
    return lambda s: _at(steps, seconds, s)


def _at(steps: list[int], value: dict[int, float], step: int) -> float | None:
    """``value`` at ``step``, linear between the logged steps around it (None outside them)."""
    if step in value:
        return float(value[step])
    below = [s for s in steps if s < step]
    above = [s for s in steps if s > step]
    if not below or not above:
        return None
    a, b = below[-1], above[0]
    return value[a] + (value[b] - value[a]) * (step - a) / (b - a)
