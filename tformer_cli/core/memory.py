"""Will it fit?  A lower bound on the memory a model needs, checked before anything is allocated.

The estimate counts what must exist at once: the weights, for training their gradients and
AdamW's two moments, the position tables, and the activations of one micro-batch (the
residual stream and FFN hidden state kept for the backward pass, and the logits with their
gradient).  It is a lower bound, so a refusal is never wrong about a config that would fit;
what it catches is the config that cannot possibly fit (batch_size 1e6, d_model 65536), which
otherwise dies deep in the allocator with no word about which key to lower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tformer_cli.errors import RunError

F32 = 4


@dataclass
class Estimate:
    weights: int
    optimizer: int  # gradients + AdamW moments
    activations: int
    tables: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations + self.tables


def estimate(model_cfg, vocab_size: int, batch: int, training: bool) -> Estimate:
    from tformer_cli.core import anatomy

    m = model_cfg
    vocab_size = m.padded_vocab(vocab_size)  # the rows built (model.vocab_multiple)
    try:
        params = anatomy.totals(m, vocab_size).params
    except Exception:  # an architecture anatomy does not know: count the embeddings only
        params = vocab_size * m.d_model
    tokens = batch * m.block_size
    d_ff = m.d_ff_resolved if m.ffn else 0
    per_token = m.n_layer * (4 * m.d_model + d_ff) + vocab_size * (2 if training else 1)
    if not training:
        per_token = 2 * m.d_model + d_ff + vocab_size  # one layer's working set at a time
    tables = 0 if m.pos_encoding in ("learned", "none") else m.block_size * m.d_model * F32
    return Estimate(weights=params * F32, optimizer=(3 * params * F32) if training else 0,
                    activations=tokens * per_token * F32, tables=tables)


def available(device) -> tuple[int | None, str]:
    """(bytes this process can still allocate on ``device``, where the figure comes from)."""
    if getattr(device, "type", str(device)) == "cuda":
        try:
            import torch

            free, _total = torch.cuda.mem_get_info(device)
            return free, "free GPU memory"
        except Exception:
            return None, ""
    if getattr(device, "type", str(device)) != "cpu":
        return None, ""
    limits = []
    try:
        limits.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limits.append((max(0, soft - used), "the address-space limit (ulimit -v)"))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else (None, "")


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_fits(model_cfg, vocab_size: int, batch: int, device, training: bool, what: str = "training") -> None:
    """RunError with the figure and the key to lower when the estimate exceeds what is available."""
    est = estimate(model_cfg, vocab_size, batch, training)
    room, source = available(device)
    if room is None or est.total <= room:
        return
    parts = {"activations": est.activations, "weights": est.weights + est.optimizer + est.tables}
    if parts["activations"] >= parts["weights"]:
        key = (f"train.batch_size (now {batch}) or model.block_size (now {model_cfg.block_size})" if training
               else f"model.block_size (now {model_cfg.block_size})")
    else:
        key = f"model.d_model (now {model_cfg.d_model}) or model.n_layer (now {model_cfg.n_layer})"
        if vocab_size * model_cfg.d_model * 2 > est.weights // F32:
            key = f"data.vocab_size (now {vocab_size}) or model.d_model (now {model_cfg.d_model})"
    opt = f", gradients and AdamW {gib(est.optimizer)}" if est.optimizer else ""
    raise RunError(
        f"{what} needs at least {gib(est.total)} of memory (weights {gib(est.weights)}{opt}, activations "
        f"{gib(est.activations)}), more than the {gib(room)} of {source} on {device}",
        hint=f"lower {key}" + (", or raise train.grad_accum to keep the batch" if "batch_size" in key else ""),
    )
