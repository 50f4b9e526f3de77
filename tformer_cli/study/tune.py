"""--tune lr: a small learning-rate grid for every member, then best against best.

Architectures can prefer different learning rates, so comparing them at one shared rate can be
unfair.  With tuning, every member is trained at each rate of the grid (multiples of the base
train.lr) with the same seeds; each member is then represented by its rate with the lowest mean
compared loss, and members are compared (paired by seed) at their own best rates.  Every variant's
rows stay in results.json; the table says which rate each member got.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, replace
from typing import Any

from tformer_cli.errors import ConfigError
from tformer_cli.study.results import MemberRow
from tformer_cli.study.spec import Member, Spec, describe

DEFAULT_GRID = (0.5, 1.0, 2.0)  # multiples of train.lr


def parse_grid(text: str | None) -> list[float]:
    if not text:
        return list(DEFAULT_GRID)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lr-grid {text}: expected numbers separated by commas, e.g. 0.5,1,2") from None
    if len(values) < 2 or any(not (v > 0) or v == float("inf") for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"--lr-grid {text}: expected two or more distinct positive multiples of train.lr")
    return values


def expand(spec: Spec, multiples: list[float]) -> Spec:
    """The spec with every member trained at each learning rate of the grid."""
    lr = spec.config().train.lr
    variants = []
    for m in spec.members:
        for x in multiples:
            ov = {**m.overrides, "train.lr": lr * x}
            variants.append(Member(f"{m.name}_lr-x{x:g}", ov, describe(ov), m.resized, dict(m.axes)))
    tuned = replace(spec, members=variants)
    tuned.tune = {"key": "train.lr", "multiples": multiples, "base": lr,
                  "members": [asdict(m) for m in spec.members]}
    return tuned


def collapse(spec: Spec, rows: list[MemberRow]) -> tuple[Spec, list[MemberRow], list[dict[str, Any]]]:
    """(the spec of the original members, each member's rows at its best rate renamed to the member,
    the choice made for each member: rate and the mean loss at every rate)."""
    t = spec.tune
    members = [Member(**d) for d in t["members"]]
    out_rows, choices = [], []
    for m in members:
        means = {}
        for x in t["multiples"]:
            name = f"{m.name}_lr-x{x:g}"
            losses = [r.compared_loss for r in rows if r.member == name and r.status == "ok"
                      and r.compared_loss is not None]
            complete = len(losses) == len(spec.seeds)
            means[x] = statistics.fmean(losses) if losses and complete else None
        ok = {x: v for x, v in means.items() if v is not None}
        best = min(ok, key=ok.get) if ok else t["multiples"][0]
        chosen = f"{m.name}_lr-x{best:g}"
        for r in rows:
            if r.member == chosen:
                out_rows.append(replace(r, member=m.name, changed=m.changed))
        choices.append({"member": m.name, "lr": t["base"] * best, "multiple": best,
                        "mean_loss_by_lr": {f"{t['base'] * x:g}": v for x, v in means.items()}})
    return replace(spec, members=members, tune=None), out_rows, choices
