"""Checkpoints: one safetensors file per run, written atomically, never a pickle.

``checkpoint.safetensors`` holds the model's tensors under ``model.*``, the AdamW state
under ``optim.<param index>.<name>`` and, in its JSON header, the configuration, the
optimizer's hyper-parameters and the training state.  Loading parses a header and raw
tensor bytes only: nothing in the file can run code.  ``checkpoint.json`` beside it is a
human-readable copy of the header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tformer_cli.core.config import Config, from_dict
from tformer_cli.core.io import atomic_write_bytes, atomic_write_text
from tformer_cli.errors import RunError
from tformer_cli.run.finetune_dir import FinetuneDir
from tformer_cli.run.rundir import RunDir

CKPT_NAME = RunDir.CHECKPOINT
FORMAT = "tformer-checkpoint-1"
PICKLE_NAMES = ("ckpt.pt", "checkpoint.pt", "model.pt", "pytorch_model.bin", "model.bin", "optimizer.pt")


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with a tied LM head stored once (safetensors refuses shared memory)."""
    sd = model.state_dict()
    if getattr(model.cfg, "tie_weights", False) and "lm_head.weight" in sd and "tok_emb.weight" in sd:
        sd.pop("lm_head.weight")
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    cfg: Config,
    vocab_size: int,
    train_state: dict[str, Any],
) -> Path:
    from safetensors.torch import save as st_save

    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    groups = []
    if optimizer is not None:
        osd = optimizer.state_dict()
        for idx, state in osd["state"].items():
            for name, value in state.items():
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
        # a CUDA-graph run keeps each learning rate in a device tensor: saved as the number
        groups = [{k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in g.items()}
                  for g in osd["param_groups"]]
    header = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "vocab_size": vocab_size,
        "train_state": train_state,
        "optim_groups": groups,
    }
    meta = {k: json.dumps(v) for k, v in header.items()}
    path = run_dir / CKPT_NAME
    _remove_stale_temp_files(run_dir)
    try:
        atomic_write_bytes(path, st_save(tensors, metadata=meta))
        atomic_write_text(RunDir(run_dir).checkpoint_json, json.dumps(header, indent=2, default=str) + "\n")
    except OSError as e:  # the atomic write removed its temp file; the previous checkpoint is intact
        raise _save_error(path, e, train_state.get("step")) from None
    return path


def _remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files left by a process killed mid-save (io.atomic_write_bytes names them .NAME.*.tmp)."""
    for stale in run_dir.glob(f".{CKPT_NAME}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


def _save_error(path: Path, e: OSError, step: Any) -> RunError:
    import errno

    kept = "the previous checkpoint was kept" if path.exists() else "no checkpoint was written"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunError(f"the disk is full: cannot save the step-{step} checkpoint to {path}; {kept}",
                        hint=f"free some space, then continue with: tformer train --resume {path.parent}")
    return RunError(f"cannot save the step-{step} checkpoint to {path}: {e.strerror or e}; {kept}",
                    hint="check that the run directory is writable")


class Checkpoint:
    """A parsed checkpoint: header fields and the tensors, loaded without unpickling."""

    def __init__(self, path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.path, self.header, self.tensors = path, header, tensors

    @property
    def config(self) -> Config:
        return from_dict(self.header["config"])

    @property
    def vocab_size(self) -> int:
        return int(self.header["vocab_size"])

    @property
    def train_state(self) -> dict[str, Any]:
        return self.header.get("train_state", {})

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[6:]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def optimizer_state(self) -> dict[str, Any]:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in self.tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        groups = self.header.get("optim_groups", [])
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        return {"state": state, "param_groups": groups}


def find(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunError(f"run directory not found: {run_dir}", hint="`tformer runs` lists the runs under runs/")
    if not run_dir.is_dir():
        raise RunError(f"not a run directory: {run_dir}")
    path = run_dir / CKPT_NAME
    if path.exists():
        return path
    pickles = [n for n in PICKLE_NAMES if (run_dir / n).exists()]
    if pickles:
        raise RunError(
            f"{run_dir / pickles[0]} is a pickle file; tformer refuses to load pickles (they can run code)",
            hint="only checkpoint.safetensors written by tformer is loaded",
        )
    if FinetuneDir(run_dir).is_finetune():  # a classifier: its own files, its own commands
        raise RunError(f"{run_dir} is a fine-tune (a classifier), not a language-model run",
                       hint=f"predict with it: tformer classify {run_dir} --text TEXT")
    raise RunError(f"no checkpoint in {run_dir} (expected {CKPT_NAME})", hint="train first, or pick another run")


def _checked_header(run_dir: str | Path):
    """(path, header, tensor table, config, vocab_size), every header field checked."""
    from tformer_cli.run import validate as v

    path = find(run_dir)
    raw, data_size = v.read_safetensors_header(path)
    table = v.tensor_table(path, raw, data_size)
    header = v.parse_metadata(path, raw)
    cfg, vocab = v.check_header(path, header, FORMAT)
    v.plausible_size(path, cfg, vocab, data_size, len(table))
    return path, header, table, cfg, vocab


def peek(run_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's header (config, vocab_size, train_state), checked; no tensor is read."""
    return _checked_header(run_dir)[1]


def load(run_dir: str | Path, with_optimizer: bool = True, optimizer_groups=None) -> Checkpoint:
    """The checkpoint of a run, every field and tensor checked before any tensor is read.

    ``optimizer_groups(model)``: the parameter shapes of each AdamW group of a (meta) model;
    given, the optimizer state's names, dtypes and shapes are checked too (a crafted state
    would make fused AdamW read and write out of bounds)."""
    from tformer_cli.run import validate as v

    path, header, table, cfg, vocab = _checked_header(run_dir)
    meta = v.meta_model(cfg, vocab)
    groups = optimizer_groups(meta) if (with_optimizer and optimizer_groups is not None) else None
    v.check_tensors(path, table, v.model_shapes(meta), groups, with_optimizer,
                    header["train_state"]["step"], header.get("optim_groups"))
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in table if with_optimizer or not k.startswith("optim.")]
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises its own error types; the checks above make this rare
        raise RunError(f"checkpoint {path} is damaged ({type(e).__name__}: {str(e)[:80]})",
                       hint=v.RETRAIN) from None
    for k, t in tensors.items():  # a nan or inf weight would only surface later, as a sampling error
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RunError(f"checkpoint {path} is damaged: tensor {v.short(k)} holds nan or inf values",
                           hint=v.RETRAIN)
    return Checkpoint(path, header, tensors)


def load_model_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Copy the checkpoint's tensors into ``model``, naming every mismatch."""
    state = ckpt.model_state()
    expected = model_tensors(model)
    problems = []
    for k in sorted(set(expected) - set(state)):
        problems.append(f"missing {k}")
    for k in sorted(set(state) - set(expected)):
        problems.append(f"unexpected {k}")
    for k in sorted(set(state) & set(expected)):
        if tuple(state[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k} has shape {tuple(state[k].shape)}, the config needs {tuple(expected[k].shape)}")
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise RunError(f"checkpoint {ckpt.path} does not match its config: {shown}",
                       hint="the file may have been edited or come from another run")
    model.load_state_dict(state, strict=False)
