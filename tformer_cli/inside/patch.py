"""`tformer patch RUN --clean TEXT --corrupt TEXT`: activation patching on the hook points.

Two prompts of the same length in tokens: a clean one and a corrupted one that changes what the
model should say next.  The metric is the logit of the target token at the last position (the
target: --target TOKEN, or the clean run's most probable next token).  Each patch runs the
corrupted prompt with one activation taken from the clean run, and reports the metric normalised
so that the corrupted run is 0 and the clean run 1:

- by layer and position: the residual stream entering block L (``blocks.L.resid_pre``) at one
  position, and, as the last row, the stream leaving the last block;
- by head: one head's output ``blocks.L.attn.z`` at every position.

A cell near 1 means that activation alone carries what the clean prompt adds.  Patching the whole
residual stream (every position) of any layer restores the clean run exactly: the layers after it
compute what they computed on the clean prompt (tests/test_patch.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tformer_cli.core import hooks
from tformer_cli.core.prompt import display_token, single_token, window_ids
from tformer_cli.errors import ConfigError
from tformer_cli.inside.load import load_gpt


@dataclass
class PatchResult:
    clean: list[str]
    corrupt: list[str]
    target: str
    clean_metric: float  # the target's logit at the last position, clean
    corrupt_metric: float
    residual: list[list[float]]  # (n_layer + 1) x T normalised metrics: rows resid_pre of each block, then the end
    residual_rows: list[str]
    heads: list[list[float]]  # n_layer x n_head

    def to_dict(self) -> dict:
        return asdict(self)


def _metric(model, idx: torch.Tensor, tid: int) -> float:
    return model(idx).logits[0, -1, tid].float().item()


def patch(model, tok, clean_ids: list[int], corrupt_ids: list[int], target: str | None = None) -> PatchResult:
    """The patching of ``corrupt_ids`` with the activations of ``clean_ids`` (same length)."""
    if len(clean_ids) != len(corrupt_ids):
        raise ConfigError(f"--clean is {len(clean_ids)} tokens and --corrupt {len(corrupt_ids)}: patching "
                          "needs prompts of the same length", hint="change a word for one of the same length")
    cfg = model.cfg
    dev = next(model.parameters()).device
    clean = torch.tensor([clean_ids], device=dev)
    corrupt = torch.tensor([corrupt_ids], device=dev)
    T = clean.size(1)
    with torch.no_grad():
        out, cache = hooks.run_with_cache(model, clean)
        if target is None:
            tid = int(out.logits[0, -1].argmax())
        else:
            tid = single_token(tok, target)
        m_clean = out.logits[0, -1, tid].float().item()
        m_corrupt = _metric(model, corrupt, tid)
        if abs(m_clean - m_corrupt) < 1e-6:
            raise ConfigError("the clean and the corrupted prompt give the target the same logit: nothing to "
                              "restore", hint="corrupt a token the prediction depends on, or name another --target")

        def norm(m: float) -> float:
            return (m - m_corrupt) / (m_clean - m_corrupt)

        def patched(name: str, where) -> float:
            def put(x: torch.Tensor, n: str) -> torch.Tensor:
                x = x.clone()
                x[where] = cache[n][where]
                return x

            with hooks.hooks(model, {name: put}):
                return norm(_metric(model, corrupt, tid))

        rows = [f"blocks.{i}.resid_pre" for i in range(cfg.n_layer)] + [f"blocks.{cfg.n_layer - 1}.resid_post"]
        residual = [[patched(name, (slice(None), p)) for p in range(T)] for name in rows]
        heads = [[patched(f"blocks.{i}.attn.z", (slice(None), h)) for h in range(cfg.n_head)]
                 for i in range(cfg.n_layer)]
    return PatchResult([display_token(tok, i) for i in clean_ids], [display_token(tok, i) for i in corrupt_ids],
                       display_token(tok, tid), m_clean, m_corrupt, residual,
                       [f"L{i} in" for i in range(cfg.n_layer)] + ["out"], heads)


def patch_report(run_dir, clean: str, corrupt: str, target: str | None, device_name: str = "auto") -> PatchResult:
    model, tok, cfg, _device = load_gpt(run_dir, device_name)
    block = cfg.model.block_size  # as sample and attention read a prompt: its last block_size tokens
    (a, _), (b, _) = (window_ids(tok, text, block, flag) for flag, text in (("--clean", clean), ("--corrupt", corrupt)))
    return patch(model.eval(), tok, a, b, target)
