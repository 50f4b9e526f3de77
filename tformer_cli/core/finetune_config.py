"""The configuration of a fine-tune (`tformer finetune`): what it starts from, the data, the head
and the optimisation.  Torch-free, so flags are checked before anything heavy is imported.

A fine-tune's ``finetune.yaml`` holds two sections: ``finetune:`` (this dataclass) and
``model:`` (the body's ModelConfig: the source run's, or the preset's when from scratch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from tformer_cli.core.config import BODIES, POOLS, Config, ModelConfig, TaskConfig, TrainConfig, from_dict
from tformer_cli.errors import ConfigError

FT_TASKS = ("classify",)
PROBE_AT = 0.8  # the held-out accuracy is also taken here: did the last fifth of training still change it?


@dataclass
class FinetuneConfig:
    task: str = "classify"  # the only task so far: one label per text
    data: str = "source"  # a built-in labelled task (source, order) or a TSV/JSONL file
    source_run: Optional[str] = None  # the run whose tokenizer (and, unless from_scratch, weights) it starts from
    from_scratch: bool = False  # random weights: the comparison that says what pretraining bought
    body: str = "transformer"  # transformer | bag (bag of tokens: mean token embedding, no order at all)
    pool: str = "last"  # last | mean | first: which hidden states the head reads
    freeze: bool = False  # train only the head (a linear probe of the pretrained representation)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_interval: int = 20
    ckpt_interval: int = 100
    seed: int = 1337
    device: str = "cpu"


@dataclass
class FinetuneSpec:
    """Both sections of finetune.yaml."""

    finetune: FinetuneConfig
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"finetune": dataclasses.asdict(self.finetune), "model": dataclasses.asdict(self.model)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_config(self) -> Config:
        """The same fine-tune as the training loop's settings (train: and task: sections)."""
        f = self.finetune
        probe = max(1, round(PROBE_AT * f.steps))
        train = TrainConfig(steps=f.steps, batch_size=f.batch_size, lr=f.lr, warmup_steps=f.warmup_steps,
                            weight_decay=f.weight_decay, grad_clip=f.grad_clip, log_interval=f.log_interval,
                            ckpt_interval=f.ckpt_interval, eval_interval=probe, seed=f.seed, device=f.device,
                            dtype="float32", compile=False, cuda_graph=False)
        task = TaskConfig(kind="classify", data=f.data, source_run=f.source_run, from_scratch=f.from_scratch,
                          body=f.body, pool=f.pool, freeze=f.freeze)
        return Config(model=self.model, train=train, task=task)

    @classmethod
    def from_config(cls, cfg: Config) -> "FinetuneSpec":
        """A study member's config (task.kind classify) as a fine-tune spec."""
        t, tr = cfg.task, cfg.train
        return build({"data": t.data, "source_run": t.source_run, "from_scratch": t.from_scratch, "body": t.body,
                      "pool": t.pool, "freeze": t.freeze, "steps": tr.steps, "batch_size": tr.batch_size,
                      "lr": tr.lr, "warmup_steps": tr.warmup_steps, "weight_decay": tr.weight_decay,
                      "grad_clip": tr.grad_clip, "log_interval": tr.log_interval,
                      "ckpt_interval": tr.ckpt_interval or tr.steps, "seed": tr.seed,
                      "device": "cpu" if tr.device == "auto" else tr.device}, cfg.model)


def problems(f: FinetuneConfig) -> list[str]:
    """Every impossible value, named by its flag."""
    p = []
    for name, value, choices in (("--task", f.task, FT_TASKS), ("--pool", f.pool, POOLS), ("body", f.body, BODIES)):
        if value not in choices:
            p.append(f"{name}: '{value}' is not one of {', '.join(choices)}")
    for name in ("steps", "batch_size", "lr", "log_interval", "ckpt_interval"):
        if not getattr(f, name) > 0:
            p.append(f"--{name.replace('_', '-')}: must be positive, got {getattr(f, name)}")
    for name in ("warmup_steps", "weight_decay", "grad_clip"):
        if getattr(f, name) < 0:
            p.append(f"{name}: must be >= 0, got {getattr(f, name)}")
    if f.freeze and (f.from_scratch or f.body == "bag"):
        p.append("--freeze: a frozen random body learns nothing; freeze only a pretrained run")
    if not f.data:
        p.append("--data: empty; give a built-in task (source, order) or a TSV/JSONL file")
    return p


def build(values: dict[str, Any], model: ModelConfig) -> FinetuneSpec:
    """A checked spec from flag values (unknown keys are a programming error)."""
    f = FinetuneConfig(**values)
    if p := problems(f):
        raise ConfigError(p, hint="see `tformer finetune --help`")
    return FinetuneSpec(f, model)


def from_yaml_dict(data: Any, where: str) -> FinetuneSpec:
    """finetune.yaml read back (resume, classify): both sections checked."""
    if not isinstance(data, dict) or not isinstance(data.get("finetune"), dict):
        raise ConfigError(f"{where}: expected sections finetune: and model:")
    names = {fl.name for fl in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(data["finetune"]) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown finetune keys {unknown}")
    import typing

    from tformer_cli.core.config import _coerce

    hints, values, p = typing.get_type_hints(FinetuneConfig), {}, []
    for key, value in data["finetune"].items():
        values[key], problem = _coerce(f"finetune.{key}", value, hints[key])
        p += [problem] if problem else []
    if p:
        raise ConfigError([f"{where}: {x}" for x in p])
    model = from_dict({"model": data.get("model") or {}}).model
    return build(values, model)
