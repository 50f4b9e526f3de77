"""Typed results of an experiment and the one place they become JSON and CSV.

MemberRow: one member trained with one seed.  MemberSummary: one member over its seeds.
ExperimentResult: everything, as written to results.json.  MemberOutcome: what training and
measuring one member produced (also the file a worker process hands back).  RunEntry and
ExperimentEntry: what `tformer runs` lists.  Values are data only: a renderer decides how a
missing number or an MLM member's absent sample reads.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from tformer_cli.core.io import atomic_write_text
from tformer_cli.run.result import FinetuneResult, Result, TrainResult
from tformer_cli.study.spec import Member

RESULTS_JSON, RESULTS_CSV = "results.json", "results.csv"

# Columns of results.csv in order; the swept axes, d_k and extra metrics (TrainResult.extra) follow.
CSV_COLUMNS = [
    "member", "seed", "changed", "status", "error", "resized",
    "params", "params_embeddings", "params_attention", "params_ffn",
    "flops_per_token", "flops_embeddings", "flops_attention", "flops_ffn",
    "train_loss", "val_loss", "val_loss_causal", "diff_vs_baseline",
    "tokens_per_s", "peak_memory_bytes", "memory_source", "steps_done", "elapsed_s", "measure_s",
    "setup_s", "steps_s", "eval_s", "checkpoint_s", "sample",
    "run_dir",
    "objective", "hint", "eval_error", "val_drop_last_fifth", "still_learning", "degenerate", "arithmetic",
    "val_rise_from_best", "overfit", "epochs", "corpus_sha256",
]
ANATOMY_KEYS = ("params", "params_embeddings", "params_attention", "params_ffn", "flops_per_token",
                "flops_embeddings", "flops_attention", "flops_ffn")


class _Compared:
    val_loss: float | None
    val_loss_causal: float | None

    @property
    def compared_loss(self) -> float | None:
        """The loss members are compared on: causal-consistent where defined (what generation sees),
        the teacher-forced loss otherwise (MLM members)."""
        return self.val_loss_causal if self.val_loss_causal is not None else self.val_loss


@dataclass
class Measurement:
    """Post-training metrics of a member (cached in its directory so --resume need not redo them)."""

    val_loss_causal: float | None = None
    sample: str | None = None  # None for MLM (no left-to-right generation) or when evaluation failed
    error: str = ""  # why the evaluation failed, if it did
    val_loss: float | None = None  # teacher-forced, on the causal-consistent loss's windows
    degenerate: bool | None = None  # the greedy continuation loops (tformer_cli.study.convergence)
    seconds: float | None = None  # how long the measurement took

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        return cls(d.get("val_loss_causal"), d.get("sample"), d.get("error", ""), d.get("val_loss"),
                   d.get("degenerate"), d.get("seconds"))


@dataclass
class MemberOutcome:
    """Training one member: status ok | failed | interrupted | not run, the error and hint of a
    failure, its typed result (a TrainResult, or a FinetuneResult for a classifier fine-tune),
    and the measurement of a member that finished."""

    status: str
    error: str = ""
    hint: str = ""
    summary: Result | None = None
    skipped: bool = False  # finished in an earlier session
    post: Measurement | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {"status": self.status, "error": self.error, "hint": self.hint, "skipped": self.skipped,
                "summary": s.to_dict() if s else None, "fine_tune": isinstance(s, FinetuneResult),
                "post": self.post.to_dict() if self.post else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemberOutcome":
        post, s = d.get("post"), d.get("summary")
        summary = (FinetuneResult if d.get("fine_tune") else TrainResult).from_dict(s) if s else None
        return cls(d["status"], d.get("error", ""), d.get("hint") or "", summary,
                   bool(d.get("skipped")), Measurement.from_dict(post) if post else None)


@dataclass(kw_only=True)
class _Metrics(_Compared):
    """What a member x seed row and a member's summary both carry."""

    params: int | None = None
    params_embeddings: int | None = None
    params_attention: int | None = None
    params_ffn: int | None = None
    flops_per_token: int | None = None
    flops_embeddings: int | None = None
    flops_attention: int | None = None
    flops_ffn: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_loss_causal: float | None = None
    diff_vs_baseline: float | None = None
    tokens_per_s: float | None = None
    peak_memory_bytes: float | None = None
    sample: str | None = None  # None for MLM (no left-to-right generation) or when evaluation failed
    eval_error: str = ""
    d_k: int | None = None
    objective: str = "clm"
    val_drop_last_fifth: float | None = None  # nats the val loss fell over the last fifth of training
    still_learning: bool | None = None  # that drop is over tformer_cli.study.convergence.STILL_LEARNING
    degenerate: bool | None = None  # the greedy sample loops
    val_rise_from_best: float | None = None  # nats the final val loss sits above its lowest (train loss falling)
    overfit: bool | None = None  # that rise is over tformer_cli.study.convergence.OVERFIT
    resized: str = ""  # what --match params changed, in words
    axes: dict[str, Any] = field(default_factory=dict)  # swept key -> value
    extra: dict[str, Any] = field(default_factory=dict)  # task metrics (synthetic corpora)


@dataclass(kw_only=True)
class MemberRow(_Metrics):
    member: str
    seed: int
    changed: str
    status: str  # ok | failed | interrupted | not run
    run_dir: str
    error: str = ""
    hint: str = ""
    memory_source: str | None = None
    steps_done: int | None = None
    elapsed_s: float | None = None  # the member's training (train()'s wall time)
    measure_s: float | None = None  # its measurement after training (study/measure.py)
    setup_s: float | None = None  # elapsed_s split (TrainResult): set-up, steps, evaluation, checkpoints
    steps_s: float | None = None
    eval_s: float | None = None
    checkpoint_s: float | None = None
    arithmetic: str | None = None  # what its matmuls computed in (TrainResult.arithmetic): "float32 on cpu"
    epochs: float | None = None  # how often it read its training text (TrainResult.epochs)
    corpus_sha256: str | None = None  # of the text it trained on (TrainResult.corpus_sha256)

    def to_dict(self) -> dict[str, Any]:
        """Flat, as results.json and results.csv have it: the columns, then axes, d_k and extras."""
        d = {c: getattr(self, c) for c in CSV_COLUMNS}
        d.update(self.axes)
        d["d_k"] = self.d_k
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], axes: list[str]) -> "MemberRow":
        known = {f.name for f in fields(cls)} - {"axes", "extra"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   axes={a: d[a] for a in axes if a in d},
                   extra={k: v for k, v in d.items() if k not in known and k not in axes})


@dataclass(kw_only=True)
class MemberSummary(_Metrics):
    """One member over its seeds: means and standard deviations, the difference to the baseline
    and its significance; anatomy and the sample of the first seed."""

    member: str
    changed: str
    is_baseline: bool = False
    n_ok: int = 0
    n_seeds: int = 0
    errors: list[str] = field(default_factory=list)
    train_loss_std: float | None = None
    val_loss_std: float | None = None
    val_loss_causal_std: float | None = None
    tokens_per_s_std: float | None = None
    peak_memory_bytes_std: float | None = None
    diff_vs_baseline_std: float | None = None
    baseline: str = ""  # the member this one is compared with (one per objective)
    n_paired: int = 0  # seeds both finished: the pairs behind diff_vs_baseline
    diff_ci_low: float | None = None  # 95% t interval of the mean paired difference
    diff_ci_high: float | None = None
    p_value: float | None = None  # paired t-test
    p_equivalence: float | None = None  # two one-sided tests against the equivalence margin
    significant: bool | None = None  # None: fewer than 3 paired seeds
    equivalent: bool | None = None
    unconverged: int = 0  # seeds still learning fast at the end or writing a degenerate sample

    @property
    def compared_loss_std(self) -> float | None:
        return self.val_loss_causal_std if self.val_loss_causal is not None else self.val_loss_std

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemberSummary":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Verdict:
    """A study's claim against what was measured: agrees, disagrees or undecided (and why)."""

    statement: str
    source: str
    member: str
    baseline: str
    metric: str
    expect: str  # higher | lower | equal: the member's metric against the baseline's
    margin: float
    outcome: str  # agrees | disagrees | undecided
    reason: str
    n: int = 0  # paired seeds
    delta: float | None = None  # mean paired difference, member - baseline
    ci_low: float | None = None
    ci_high: float | None = None
    suggestion: str = ""  # what budget would decide, when undecided
    question: str = ""
    p_value: float | None = None  # the paired t-test of the differences
    arithmetic: str = ""  # what the compared runs computed in ("float32 on cpu"; several joined by " + ")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ExperimentResult:
    kind: str
    out_dir: str
    rows: list[MemberRow]  # one per member and seed
    summary: list[MemberSummary]  # one per member
    members: list[Member]
    axes: list[str]
    seeds: list[int]
    interrupted: bool
    execution: str  # how members were run (sequential / one process per device ...)
    memory_note: str
    significance_rule: str
    notes: list[str]
    plot: str | None
    elapsed_s: float
    verdicts: list[Verdict] = field(default_factory=list)  # one per claim of a study file
    tuning: list[dict[str, Any]] = field(default_factory=list)  # --tune lr: each member's rate and losses
    task: str = "lm"  # the members' task.kind: lm | seq2seq (what was trained, so what is shown)
    arithmetic: str = ""  # what the members computed in (see arithmetic_of)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(rows=[r.to_dict() for r in self.rows], summary=[s.to_dict() for s in self.summary],
                 members=[asdict(m) for m in self.members], verdicts=[v.to_dict() for v in self.verdicts])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentResult":
        axes = list(d.get("axes", []))
        return cls(kind=d["kind"], out_dir=d["out_dir"], rows=[MemberRow.from_dict(r, axes) for r in d["rows"]],
                   summary=[MemberSummary.from_dict(s) for s in d["summary"]],
                   members=[Member(**m) for m in d.get("members", [])], axes=axes, seeds=list(d["seeds"]),
                   interrupted=bool(d.get("interrupted")), execution=d.get("execution", ""),
                   memory_note=d.get("memory_note", ""), significance_rule=d.get("significance_rule", ""),
                   notes=list(d.get("notes", [])), plot=d.get("plot"), elapsed_s=d.get("elapsed_s") or 0.0,
                   verdicts=[Verdict.from_dict(v) for v in d.get("verdicts") or []],
                   tuning=list(d.get("tuning") or []), task=d.get("task") or "lm",
                   arithmetic=d.get("arithmetic") or "")


def arithmetic_of(rows: Sequence[MemberRow]) -> str:
    """What the trained ``rows`` computed in: one label ("float32 on cpu"), or each label that
    occurs joined by " + " (a mixed experiment says so); "" when no row recorded it."""
    return " + ".join(sorted({r.arithmetic for r in rows if r.arithmetic}))


def write_results(result: ExperimentResult) -> None:
    """results.json (everything) and results.csv (one row per member and seed, every metric)."""
    out_dir = Path(result.out_dir)
    atomic_write_text(out_dir / RESULTS_JSON, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    rows = [r.to_dict() for r in result.rows]
    columns = list(CSV_COLUMNS)
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(out_dir / RESULTS_CSV, buf.getvalue())


def read_results(exp_dir: str | Path) -> ExperimentResult:
    """results.json of an experiment directory (OSError, ValueError or KeyError when unreadable)."""
    from tformer_cli.core.untrusted import read_text

    return ExperimentResult.from_dict(json.loads(read_text(Path(exp_dir) / RESULTS_JSON)))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj.to_dict() if hasattr(obj, "to_dict") else obj, default=str) + "\n")


# ---------------------------------------------------------------- `tformer runs`


@dataclass
class RunEntry:
    path: str
    status: str
    steps: str | None = None  # done/total
    val_loss: float | None = None
    params: int | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    type: str = "run"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExperimentEntry:
    path: str
    status: str
    kind: str | None = None
    members: int | None = None
    seeds: int | None = None
    elapsed_s: float | None = None
    best: str | None = None  # the member with the lowest compared loss
    val_loss: float | None = None
    failed: int = 0
    type: str = "experiment"
    verdicts: list[str] = field(default_factory=list)  # the outcome of each claim: agrees | disagrees | undecided

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
