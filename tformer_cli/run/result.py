"""The typed results a run directory's summary.json holds, read back with ``from_dict``.

TrainResult: a language-model or seq2seq run (run/rundir.py).  FinetuneResult: a classifier
fine-tune (run/finetune_dir.py).  One schema: ``check_summary`` checks a summary.json against the
field types declared here (``fields_of``, with run/validate.py's typed field readers) before it
becomes a result, the study runner copies the fields a member row shares with them by name, and
the renderers read these attributes; nothing re-declares a key list.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tformer_cli.core.cls_metrics import Scores
from tformer_cli.run.validate import Fields, read_json


def _from_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``cls`` from a summary read back: fields it lacks take their
    defaults, or None; unknown ones are dropped."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            values[f.name] = d[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = None
    values["extra"] = dict(values.get("extra") or {})
    return values


@dataclass
class TrainResult:
    run_dir: str
    steps_done: int
    steps: int
    interrupted: bool
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None  # bits per byte of validation text
    best_val_loss: float | None
    tokens_per_s: float | None  # median over log intervals after the first (warm-up), eval excluded
    ms_per_step: float | None
    mfu: float | None
    peak_flops: float | None
    peak_source: str
    peak_memory_bytes: int
    memory_source: str
    params: int
    non_embedding_params: int
    flops_per_token: int
    device: str
    dtype: str
    compiled: bool
    compile_reason: str
    vocab_size: int
    tokens_seen: int
    elapsed_s: float
    init_loss_ref: float  # ln(vocab): the loss of a uniform guess
    # Where elapsed_s went: set-up before the first step (data, model, device), the steps,
    # evaluations and checkpoints (the steps' share is the rest of elapsed_s).
    setup_s: float | None = None
    steps_s: float | None = None
    eval_s: float | None = None
    checkpoint_s: float | None = None
    resumed_from: int | None = None
    cuda_graph: bool = False  # the step captured in a CUDA graph (train/graph_step.py)
    cuda_graph_reason: str = ""
    arithmetic: str = ""  # what the matmuls computed in (core.device.arithmetic): "float32 on cpu"
    epochs: float | None = None  # tokens_seen over the training split's tokens: how often it read its text
    corpus_sha256: str = ""  # of the corpus text it trained on: a rerun can tell it got the same text
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainResult":
        """A summary.json read back (fields it lacks take their defaults, or None; unknown ones are dropped)."""
        return cls(**_from_dict(cls, d))

    @property
    def finished(self) -> bool:
        """Reached its last step (not interrupted)."""
        return not self.interrupted and self.steps_done == self.steps


@dataclass
class FinetuneResult:
    run_dir: str
    steps_done: int
    steps: int
    interrupted: bool
    task: str
    data: str
    labels: list[str]
    body: str
    pool: str
    source_run: str | None
    from_scratch: bool
    freeze: bool
    params: int
    trainable_params: int
    n_train: int
    train_loss: float | None
    train_accuracy: float | None
    test: Scores | None  # the held-out split's scores; None when interrupted
    elapsed_s: float
    resumed_from: int | None = None
    tokens_per_s: float | None = None
    arithmetic: str = ""  # core.device.arithmetic: a fine-tune computes in float32
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # (test, a dataclass, becomes its dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneResult":
        values = _from_dict(cls, d)
        test = values.get("test")
        values["test"] = Scores.from_dict(test) if isinstance(test, dict) else None
        return cls(**values)

    @property
    def finished(self) -> bool:
        return not self.interrupted and self.steps_done == self.steps


Result = TrainResult | FinetuneResult

REQUIRED = ("steps_done", "steps", "interrupted")  # what every command reads; the rest may be absent


def fields_of(cls) -> list[tuple[str, type, bool]]:
    """(name, JSON type, required) of each scalar field of ``cls``: int, float, bool, str or dict
    (a list or a nested result is left to its own reader).  A float field takes any number."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        one = [a for a in typing.get_args(hint) if a is not type(None)][0] if union else hint
        base = typing.get_origin(one) or one
        if base in (int, float, bool, str, dict):
            out.append((name, base, name in REQUIRED))
    return out


def check_summary(path: Path, kind: type | None = None) -> Any:
    """summary.json read back as ``kind`` (run.result.TrainResult unless told), every field that
    its dataclass declares as a number, flag, string or object checked first (RunError naming
    the field); a fine-tune's held-out scores must be an object with its numbers."""
    kind = kind or TrainResult
    data = read_json(path, 16 << 20)
    f = Fields(path, data)
    check = {int: f.int, float: f.num, bool: f.bool, str: f.str, dict: f.obj}
    for name, typ, required in fields_of(kind):
        check[typ](name, optional=not required)
    if kind is FinetuneResult and data.get("test") is not None:
        t = Fields(path, f.obj("test"), "test.")
        t.int("n")
        for key in ("accuracy", "macro_f1", "chance"):
            t.num(key)
        for key in ("accuracy_ci", "macro_f1_ci", "confusion"):
            t.list(key)
    if kind is FinetuneResult:
        f.list("labels", optional=True)
    return kind.from_dict(data)


class SummaryFile:
    """What a run directory and a fine-tune directory both do with their summary.json: read it back
    typed (its kind: SUMMARY_KIND) and say whether it finished.  The class names the file."""

    SUMMARY_KIND: type = TrainResult

    def summary_file(self):
        raise NotImplementedError

    def check_summary(self) -> tuple[Any, str | None]:
        """(the summary, None) when valid; (None, None) when missing; (None, problem) when damaged."""
        from tformer_cli.errors import TformerError

        path = self.summary_file()
        if not path.exists():
            return None, None
        try:
            return check_summary(path, self.SUMMARY_KIND), None
        except TformerError as e:
            return None, str(e)

    def read_summary(self) -> Any:
        """summary.json (every field typed), or None when it is missing or damaged."""
        return self.check_summary()[0]

    def finished_summary(self) -> Any:
        """The summary of a run that reached its last step, else None."""
        s = self.read_summary()
        return s if s is not None and s.finished else None
