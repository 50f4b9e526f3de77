"""A study's claim, typed and checked once: what a study file's claim: section says (see
tformer_cli.study.verdict for how it is judged).  A Spec holds its claims as Claims."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tformer_cli.errors import ConfigError

DEFAULT_MARGIN = 0.02  # the smallest difference that matters, unless the claim says otherwise
EXPECT = ("higher", "lower", "equal")
NO_BASELINE = "none"  # claim.baseline: the member's own metric against zero (e.g. accuracy over chance)
CLAIM_KEYS = {"question", "statement", "source", "member", "metric", "expect", "margin", "wall_time", "gpu",
              "allow_degenerate", "baseline"}


@dataclass
class Claim:
    statement: str
    source: str
    member: str
    expect: str
    metric: str = "compared_loss"
    margin: float = DEFAULT_MARGIN
    question: str = ""
    wall_time: dict[str, str] = field(default_factory=dict)
    gpu: dict[str, Any] = field(default_factory=dict)
    allow_degenerate: bool = False  # the member's degenerate sample is what the claim predicts (the leak)
    baseline: str = ""  # the member compared against (default: the member's baseline, stats.baselines)


def parse_claims(raw: Any, where: str = "claim") -> list[Claim]:
    """The claim: section as Claims; every problem at once."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    claims, problems = [], []
    for i, c in enumerate(items):
        at = f"{where}[{i}]" if isinstance(raw, list) else where
        if isinstance(c, Claim):  # parsed already (a spec holds its claims typed)
            claims.append(c)
            continue
        if not isinstance(c, dict):
            problems.append(f"{at}: expected a mapping (statement, source, member, expect, ...)")
            continue
        problems += [f"{at}.{k}: unknown key (known: {', '.join(sorted(CLAIM_KEYS))})" for k in c
                     if k not in CLAIM_KEYS]
        problems += [f"{at}.{k}: missing" for k in ("statement", "source", "member", "expect") if not c.get(k)]
        if c.get("expect") and c["expect"] not in EXPECT:
            problems.append(f"{at}.expect: {c['expect']!r}, expected one of {', '.join(EXPECT)}")
        margin = c.get("margin", DEFAULT_MARGIN)
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin) \
                or margin <= 0:
            problems.append(f"{at}.margin: expected a positive number of nats, got {margin!r}")
        if not problems:
            claims.append(Claim(**{k: v for k, v in c.items() if k in CLAIM_KEYS}))
    if problems:
        raise ConfigError(problems, hint="see the claim: section of experiments/studies/*.yaml")
    return claims
