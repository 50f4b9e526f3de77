"""The directory of a fine-tune, one type that knows its own files::

    finetune.yaml              the fine-tune's config (finetune: and model: sections)
    classifier.safetensors     body + head weights, AdamW moments, and in its header the config,
                               the labels and the step (never a pickle)
    labels.json                the label map: index -> name
    tokenizer.json             the tokenizer (the source run's, or built from the data)
    metrics.jsonl              per-log-interval train loss and learning rate, the held-out probe
    perf.jsonl                 tokens/s per log interval (timings, kept apart: not deterministic)
    summary.json               the result: held-out accuracy, macro-F1, their intervals, confusion
    confusion.png              the confusion matrix

Its file names differ from a pretraining run's on purpose: `tformer sample` or `train
--resume` given a fine-tune says it is not a run rather than misreading it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tformer_cli.core.io import atomic_write_bytes, atomic_write_text
from tformer_cli.errors import ConfigError, RunError
from tformer_cli.run.result import FinetuneResult, SummaryFile

FORMAT = "tformer-classifier-1"


@dataclass(frozen=True)
class FinetuneDir(SummaryFile):
    path: Path
    SUMMARY_KIND = FinetuneResult

    CONFIG = "finetune.yaml"
    CHECKPOINT = "classifier.safetensors"
    LABELS = "labels.json"
    TOKENIZER = "tokenizer.json"
    METRICS = "metrics.jsonl"
    PERF = "perf.jsonl"
    SUMMARY = "summary.json"
    CONFUSION_PNG = "confusion.png"
    FILES = (CONFIG, CHECKPOINT, LABELS, TOKENIZER, METRICS, PERF, SUMMARY, CONFUSION_PNG)

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def file(self, name: str) -> Path:
        return self.path / name

    def is_finetune(self) -> bool:
        return (self.path / self.CONFIG).exists()

    def has_checkpoint(self) -> bool:
        return (self.path / self.CHECKPOINT).exists()

    def summary_file(self) -> Path:
        return self.file(self.SUMMARY)

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(data, indent=2) + "\n")

    def read_json(self, name: str) -> Any:
        from tformer_cli.core.untrusted import UnreadableFile, read_text

        try:
            return json.loads(read_text(self.path / name, 64 << 20))
        except (UnreadableFile, ValueError, RecursionError) as e:
            raise RunError(f"cannot read {self.path / name}: {str(e)[:120]}",
                           hint="the fine-tune directory is incomplete or damaged") from None

    def read_spec(self):
        from tformer_cli.core.config import load_yaml
        from tformer_cli.core.finetune_config import from_yaml_dict

        if not self.path.is_dir():
            raise RunError(f"fine-tune directory not found: {self.path}",
                           hint="give a directory written by `tformer finetune`")
        if not self.is_finetune():
            hint = ("this is a pretraining run: fine-tune it first with `tformer finetune RUN`"
                    if (self.path / "config.yaml").exists() else "give a directory written by `tformer finetune`")
            raise RunError(f"{self.path} is not a fine-tune (no {self.CONFIG})", hint=hint)
        return from_yaml_dict(load_yaml(self.path / self.CONFIG), str(self.path / self.CONFIG))


@contextlib.contextmanager
def claim(path: Path, resume: bool, overwrite: bool):
    """The directory, locked for the block.  A new one that fails before its first checkpoint is
    removed again; --overwrite deletes only a fine-tune's own files."""
    from tformer_cli.run.lock import DirLock

    fd = FinetuneDir(path)
    if resume:
        fd.read_spec()
        with DirLock(path):
            yield path
        return
    created = not path.exists()
    _check_out(fd, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    ok = False
    try:
        with DirLock(path):
            for name in FinetuneDir.FILES if overwrite else ():
                (path / name).unlink(missing_ok=True)
            yield path
            ok = True
    finally:
        if not ok and not fd.has_checkpoint():
            for name in FinetuneDir.FILES:
                with contextlib.suppress(OSError):
                    (path / name).unlink()
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()


def _check_out(fd: FinetuneDir, overwrite: bool) -> None:
    path = fd.path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is a file", hint="choose another --out")
    if not path.exists() or not any(p.name != ".tformer.lock" for p in path.iterdir()):
        return
    if not fd.is_finetune():
        raise ConfigError(f"--out {path} is a non-empty directory that is not a fine-tune",
                          hint="choose another --out")
    if not overwrite:
        raise ConfigError(f"--out {path} is a fine-tune", hint="use --resume to continue it, --overwrite "
                          "to replace it, or another --out")


# ---------------------------------------------------------------- checkpoint


def save_checkpoint(path: Path, model, optimizer, header: dict[str, Any]) -> None:
    """Weights, AdamW moments and ``header`` (config, labels, step) in one safetensors file."""
    from safetensors.torch import save as st_save

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if optimizer is not None:
        for idx, state in optimizer.state_dict()["state"].items():
            for name, value in state.items():
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
    header = {"format": FORMAT, **header,
              "optim_groups": optimizer.state_dict()["param_groups"] if optimizer is not None else []}
    meta = {k: json.dumps(v) for k, v in header.items()}
    try:
        atomic_write_bytes(path / FinetuneDir.CHECKPOINT, st_save(tensors, metadata=meta))
    except OSError as e:
        raise RunError(f"cannot save the checkpoint in {path}: {e.strerror or e}",
                       hint="check that the directory is writable and has space") from None


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, tensors) of a fine-tune's checkpoint: parsed without unpickling, names and shapes
    are checked by the caller against the model the config builds."""
    import torch
    from safetensors import safe_open

    file = path / FinetuneDir.CHECKPOINT
    if not file.exists():
        raise RunError(f"no checkpoint in {path} (expected {FinetuneDir.CHECKPOINT})",
                       hint="the fine-tune stopped before its first checkpoint: run it again")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = {k: json.loads(v) for k, v in meta.items()}
    except Exception as e:  # safetensors raises its own error types
        raise RunError(f"checkpoint {file} is damaged ({type(e).__name__}: {str(e)[:80]})",
                       hint="fine-tune again") from None
    if header.get("format") != FORMAT:
        raise RunError(f"checkpoint {file} is not a tformer classifier (format {header.get('format')!r})")
    _check_header(file, header, tensors)
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RunError(f"checkpoint {file} is damaged: tensor {k} holds nan or inf values")
    return header, tensors


def _check_header(file: Path, header: dict[str, Any], tensors: dict[str, Any]) -> None:
    """The header fields a fine-tune is rebuilt from, before any model is allocated."""
    labels, vocab, state = header.get("labels"), header.get("vocab_size"), header.get("state")
    emb = tensors.get("model.body.tok_emb.weight")
    problems = []
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        problems.append("field labels: expected a list of at least two names")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or emb is None or emb.dim() != 2 \
            or emb.shape[0] != _embedding_rows(header, vocab):
        problems.append("field vocab_size: does not match the embedding table")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        problems.append("field state: expected the training state with its step")
    if not isinstance(header.get("optim_groups"), list):
        problems.append("field optim_groups: expected a list")
    if problems:
        raise RunError(f"checkpoint {file} is damaged: {'; '.join(problems)}", hint="fine-tune again")


def _embedding_rows(header: dict[str, Any], vocab: int) -> int:
    """The embedding rows of the fine-tune's body: the vocabulary, padded when its model config
    says model.vocab_multiple (a multiple that is not a small positive int counts as 1)."""
    spec = header.get("spec")
    model = spec.get("model") if isinstance(spec, dict) else None
    multiple = model.get("vocab_multiple", 1) if isinstance(model, dict) else 1
    if not isinstance(multiple, int) or isinstance(multiple, bool) or not 1 <= multiple <= 1024:
        multiple = 1
    return -(-vocab // multiple) * multiple


def load_weights(model, tensors: dict[str, Any], file: Path) -> None:
    """The model's tensors from ``tensors`` (``model.*``), every mismatch named."""
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    problems = [f"missing {k}" for k in sorted(set(expected) - set(state))]
    problems += [f"unexpected {k}" for k in sorted(set(state) - set(expected))]
    problems += [f"{k} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
                 for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if problems:
        raise RunError(f"checkpoint {file} does not match its config: {'; '.join(problems[:3])}",
                       hint="the file may have been edited or come from another fine-tune")
    model.load_state_dict(state)


def optimizer_state(tensors: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}
