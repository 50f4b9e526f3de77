"""Head importance by ablation and a pruning curve, on a run's validation batches.

Works on a run directory and returns a HeadsResult; render/inside.py shows it and
render/plots.py draws it.  A head is masked through its hook point ``blocks.L.attn.z``
(core/hooks.py): its output is zeroed before W_O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tformer_cli.core import stop
from tformer_cli.errors import ConfigError
from tformer_cli.inside.load import load_gpt

STOPPED = "while measuring head importance: nothing was written"


@dataclass
class HeadsResult:
    base_loss: float
    importance: list[list[float]]  # [layer][head]: val loss change when that head alone is masked
    order: list[tuple[int, int]]  # (layer, head), least important first: the pruning order
    curve: list[tuple[int, float]]  # (heads removed, val loss), 0 .. n_heads - 1 removed
    milestones: list[tuple[float, int, float]]  # (fraction, heads removed, val loss) at 0%, 10%, ..., 90%
    threshold: float
    removable: int  # heads that can go (in pruning order) with a loss increase below threshold
    n_layer: int
    n_head: int
    n_batches: int
    tokens: int  # validation tokens per evaluation
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The --json form."""
        return dict(self.__dict__)


def _val_batches(cfg, vocab_size: int, device, n_batches: int, tokenizer=None):
    from tformer_cli.core.data import check_lengths, prepare
    from tformer_cli.train.batches import Batcher
    from tformer_cli.train.distributed import DistInfo

    ds = prepare(cfg.data, tokenizer=tokenizer)  # the run's tokenizer (an imported run has no other)
    check_lengths(ds, cfg.model.block_size, ds.corpus)
    return ValBatches(Batcher(ds, cfg, device, DistInfo(), vocab_size), n_batches)


class ValBatches:
    """The same ``n`` val batches on every pass (seeded windows), drawn again each time rather than
    held: memory does not grow with --batches, however large."""

    def __init__(self, batcher, n: int):
        self.batcher, self.n = batcher, n

    def __iter__(self):
        return self.batcher.eval_batches("val", self.n)

    def __len__(self) -> int:
        return self.n

    def tokens(self) -> int:
        cfg = self.batcher.cfg
        return self.n * cfg.train.batch_size * cfg.model.block_size


def head_mask_hooks(head_mask) -> dict:
    """The hook functions that zero the masked heads' outputs (``head_mask``: (n_layer, n_head) of
    0/1), one per layer that masks a head."""
    def zero(row):
        return lambda z, name: z * row.view(1, -1, 1, 1).to(z.dtype)

    return {f"blocks.{i}.attn.z": zero(row) for i, row in enumerate(head_mask) if not bool(row.all())}


def masked_loss(model, batches, head_mask, device, dtype) -> float:
    """Mean val loss over ``batches`` with ``head_mask`` ((n_layer, n_head) of 0/1, or None)."""
    import contextlib

    import torch

    from tformer_cli.core import device as dev
    from tformer_cli.core import hooks

    fns = head_mask_hooks(head_mask) if head_mask is not None else {}
    total = 0.0
    with torch.no_grad(), dev.autocast(device, dtype), (hooks.hooks(model, fns) if fns else contextlib.nullcontext()):
        for x, y in batches:
            stop.check(STOPPED)  # a Ctrl-C or SIGTERM is honoured between batches (Stopped, exit 130)
            total += model(x, y).loss.item()
    return total / len(batches)


def head_importance(model, batches, device, dtype) -> tuple[float, Any]:
    """(base loss, (n_layer, n_head) loss change when each head alone is masked)."""
    import torch

    L, H = model.cfg.n_layer, model.cfg.n_head
    base = masked_loss(model, batches, None, device, dtype)
    delta = torch.zeros(L, H)
    for layer in range(L):
        for head in range(H):
            mask = torch.ones(L, H, device=device)
            mask[layer, head] = 0
            delta[layer, head] = masked_loss(model, batches, mask, device, dtype) - base
    return base, delta


def pruning_curve(model, batches, order, device, dtype) -> list[tuple[int, float]]:
    """Val loss with the first k heads of ``order`` masked, k = 0 .. n_heads - 1."""
    import torch

    L, H = model.cfg.n_layer, model.cfg.n_head
    mask = torch.ones(L, H, device=device)
    curve = [(0, masked_loss(model, batches, mask, device, dtype))]
    for k, (layer, head) in enumerate(order[:-1], start=1):
        mask[layer, head] = 0
        curve.append((k, masked_loss(model, batches, mask, device, dtype)))
    return curve


def removable_heads(curve: list[tuple[int, float]], threshold: float) -> int:
    """The largest k such that removing the first 1..k heads each costs less than ``threshold``."""
    base = curve[0][1]
    k = 0
    for removed, loss in curve[1:]:
        if loss - base >= threshold:
            break
        k = removed
    return k


def heads_report(run_dir: str | Path, n_batches: int | None = None, threshold: float = 0.05,
                 device_name: str = "auto", progress: Callable[[str], None] | None = None,
                 context: int | None = None) -> HeadsResult:
    """Head importance by single-head ablation, then a pruning curve in order of importance."""
    from tformer_cli.core import device as dev

    if not (0 < threshold < float("inf")):  # nan compares false both ways: refused too
        raise ConfigError(f"--threshold must be a positive finite number, got {threshold}")
    say = progress or (lambda s: None)
    model, tok, cfg, device = load_gpt(run_dir, device_name)
    n_batches = n_batches or cfg.train.eval_iters
    if n_batches < 1:
        raise ConfigError(f"--batches must be >= 1, got {n_batches}")
    dtype = dev.resolve_dtype(cfg.train.dtype, device)
    if context is not None and not 1 <= context <= cfg.model.block_size:
        raise ConfigError(f"--context {context}: must be between 1 and the run's block_size {cfg.model.block_size}")
    windows = cfg.replace({"model.block_size": context}) if context else cfg  # shorter windows, same model
    batches = _val_batches(windows, model.vocab_size, device, n_batches, tok)
    L, H = cfg.model.n_layer, cfg.model.n_head
    say(f"ablating {L * H} heads one at a time ({n_batches} val batches each)")
    base, delta = head_importance(model, batches, device, dtype)
    order = sorted(((layer, h) for layer in range(L) for h in range(H)), key=lambda lh: float(delta[lh]))
    say("pruning heads in order of importance")
    curve = pruning_curve(model, batches, order, device, dtype)
    n = L * H
    milestones = []
    for pct in range(0, 100, 10):
        k = min(round(pct / 100 * n), n - 1)
        milestones.append((pct / 100, k, curve[k][1]))
    return HeadsResult(
        base_loss=base, importance=delta.tolist(), order=order, curve=curve, milestones=milestones,
        threshold=threshold, removable=removable_heads(curve, threshold), n_layer=L, n_head=H,
        n_batches=n_batches, tokens=batches.tokens(),
    )
