"""The typed result of a language-model run (summary.json), read back with ``from_dict``.

One schema: run/validate.py checks summary.json against the field types declared here, the
study runner and the renderers read these fields by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any


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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainResult":
        """A summary.json read back (fields it lacks take their defaults, or None; unknown ones are dropped)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name in d:
                values[name] = d[name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[name] = None
        values["extra"] = dict(values.get("extra") or {})
        return cls(**values)
