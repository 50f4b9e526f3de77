"""The optimizer (train.optimizer, read here only) and its learning-rate schedule.

adamw: AdamW with weight decay on the matrices only.  muon: Muon (momentum orthogonalised by a
Newton-Schulz iteration, torch.optim.Muon) on the 2-D matrices inside the blocks, AdamW on the
embeddings, the head, the gains and the biases, as in the public Muon reference.  Both keep
their state per parameter index, so checkpoints save and resume either the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tformer_cli.core.config import Config
from tformer_cli.errors import RunError

ADAMW_STATE = ("exp_avg", "exp_avg_sq", "step")
MUON_STATE = ("momentum_buffer",)
OUTSIDE_BLOCKS = ("tok_emb.", "pos_emb.", "lm_head.")  # embeddings and head: AdamW under Muon too


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up to train.lr, then cosine decay to min_lr at the last step (0-based step)."""
    t = cfg.train
    min_lr = t.lr / 10 if t.min_lr is None else t.min_lr
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    span = max(1, t.steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - min_lr)


def set_lr(optimizer: Any, step: int, cfg: Config) -> float:
    """Apply the schedule to every group (Muon's peak is train.muon_lr, on the same curve);
    returns train.lr's value at ``step``."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        value = lr * group.get("lr_scale", 1.0)
        if isinstance(group["lr"], torch.Tensor):  # a CUDA graph reads it from the device (graph_step.py)
            group["lr"].fill_(value)
        else:
            group["lr"] = value
    return lr


@dataclass
class Group:
    """One optimizer group: its parameters (index order) and the state each one keeps."""
    params: list
    state: tuple[str, ...]
    weight_decay: float


def groups(model: torch.nn.Module, cfg: Config) -> list[Group]:
    """The groups of train.optimizer, in the order the optimizer numbers the parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    wd = cfg.train.weight_decay
    if cfg.train.optimizer == "muon":
        muon = [p for n, p in named if p.dim() == 2 and not n.startswith(OUTSIDE_BLOCKS)]
        ids = {id(p) for p in muon}
        rest = [(n, p) for n, p in named if id(p) not in ids]
        return [Group(muon, MUON_STATE, 0.0),
                Group([p for _, p in rest if p.dim() >= 2], ADAMW_STATE, wd),
                Group([p for _, p in rest if p.dim() < 2], ADAMW_STATE, 0.0)]
    return [Group([p for _, p in named if p.dim() >= 2], ADAMW_STATE, wd),
            Group([p for _, p in named if p.dim() < 2], ADAMW_STATE, 0.0)]


def group_shapes(model: torch.nn.Module, cfg: Config) -> list[tuple[tuple[str, ...], list[tuple[int, ...]]]]:
    """(state names, parameter shapes) of each group: checkpoint validation checks the saved
    state against them before anything is loaded into the optimizer."""
    return [(g.state, [tuple(p.shape) for p in g.params]) for g in groups(model, cfg)]


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device, capturable: bool = False) -> Any:
    """train.optimizer over ``model``: AdamW (fused where torch has it), or Muon + AdamW.
    ``capturable``: AdamW's step may be captured in a CUDA graph (graph_step.py)."""
    gs = groups(model, cfg)
    if cfg.train.optimizer == "muon":
        return MuonAdamW(gs[0], gs[1:], cfg)
    return _adamw(gs, cfg, capturable)


EXECUTION_FLAGS = ("fused", "foreach", "capturable", "differentiable")  # how a step runs, not what it computes


def load_optimizer_state(optimizer: Any, state: dict[str, Any]) -> None:
    """Restore a checkpoint's optimizer state, keeping this run's way of stepping: the saved
    groups' execution flags (a checkpoint from a CUDA-graph run is capturable) give way to the
    optimizer's own, which torch's load_state_dict would otherwise take from the file."""
    own = [{k: g[k] for k in EXECUTION_FLAGS if k in g} for g in optimizer.param_groups]
    groups_ = [{**{k: v for k, v in g.items() if k not in EXECUTION_FLAGS}, **flags}
               for g, flags in zip(state["param_groups"], own)] + state["param_groups"][len(own):]
    optimizer.load_state_dict({**state, "param_groups": groups_})


def _adamw(gs: list[Group], cfg: Config, capturable: bool = False) -> torch.optim.AdamW:
    param_groups = [{"params": g.params, "weight_decay": g.weight_decay} for g in gs]
    kwargs: dict[str, Any] = {"lr": cfg.train.lr, "betas": (cfg.train.beta1, cfg.train.beta2)}
    if capturable:
        kwargs["capturable"] = True
    try:  # one fused kernel per step (CUDA, and CPU since torch 2.4): measured faster than foreach
        return torch.optim.AdamW(param_groups, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(param_groups, foreach=True, **kwargs)


class MuonAdamW:
    """Muon on one group of matrices and AdamW on the rest, stepped, saved and restored as one
    optimizer whose parameter indices run through Muon's group first."""

    def __init__(self, muon: Group, adamw: list[Group], cfg: Config):
        if not hasattr(torch.optim, "Muon"):
            raise RunError(f"train.optimizer: muon needs torch.optim.Muon, which torch {torch.__version__} lacks",
                           hint="upgrade torch, or use train.optimizer=adamw")
        if not muon.params:
            raise RunError("train.optimizer: muon found no matrices inside the blocks to optimize",
                           hint="use train.optimizer=adamw for this model")
        t = cfg.train
        # "original": the update is scaled by sqrt(max(1, rows / cols)), as in the reference.
        self.muon = torch.optim.Muon([{"params": muon.params, "lr_scale": t.muon_lr / t.lr}], lr=t.muon_lr,
                                     weight_decay=0.0, momentum=t.muon_momentum, nesterov=True,
                                     adjust_lr_fn="original")
        self.adamw = _adamw(adamw, cfg)
        self.n_muon = len(muon.params)

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        m, a = self.muon.state_dict(), self.adamw.state_dict()
        n = self.n_muon
        state = {**m["state"], **{i + n: s for i, s in a["state"].items()}}
        shifted = [{**g, "params": [i + n for i in g["params"]]} for g in a["param_groups"]]
        return {"state": state, "param_groups": m["param_groups"] + shifted}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        n, k = self.n_muon, len(self.muon.param_groups)
        groups_, state = sd["param_groups"], sd["state"]
        if len(groups_) != k + len(self.adamw.param_groups):
            raise ValueError(f"{len(groups_)} parameter groups saved, Muon + AdamW have "
                             f"{k + len(self.adamw.param_groups)}")
        self.muon.load_state_dict({"state": {i: s for i, s in state.items() if i < n},
                                   "param_groups": groups_[:k]})
        self.adamw.load_state_dict({
            "state": {i - n: s for i, s in state.items() if i >= n},
            "param_groups": [{**g, "params": [i - n for i in g["params"]]} for g in groups_[k:]]})


# ---------------------------------------------------------------- a batched group's optimizer


def make_stacked_optimizer(template: torch.nn.Module, stacked: dict[str, torch.Tensor], cfg: Config) -> Any:
    """AdamW over a batched group's stacked weights (train/batched.py): each tensor holds the same
    parameter of every seed along a leading dimension.  The groups, their order and their weight
    decay are those ``groups`` gives the single ``template`` (a seed's own model), so state index k
    of this optimizer is state index k of each seed's own run, and AdamW, being elementwise,
    updates every seed exactly as its own run would."""
    if cfg.train.optimizer != "adamw":
        raise RunError(f"a batched group steps with AdamW only, not {cfg.train.optimizer}",
                       hint="run these members with --no-batch-seeds")
    name_of = {id(p): n for n, p in template.named_parameters()}
    gs = [Group([stacked[name_of[id(p)]] for p in g.params], g.state, g.weight_decay)
          for g in groups(template, cfg)]
    return _adamw(gs, cfg)


def seed_state(sd: dict[str, Any], i: int) -> dict[str, Any]:
    """Seed ``i``'s slice of a stacked optimizer's state_dict: what its own run's optimizer holds."""
    state = {k: {n: (v if n == "step" else v[i]) for n, v in s.items()} for k, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def stacked_state(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The stacked optimizer's state_dict from each seed's own (same step, same groups): the moments
    stacked along the seed dimension, the step count shared."""
    first = per_seed[0]
    state = {k: {n: (v if n == "step" else torch.stack([sd["state"][k][n] for sd in per_seed]))
                 for n, v in s.items()} for k, s in first["state"].items()}
    return {"state": state, "param_groups": first["param_groups"]}
