"""`tformer lens RUN --prompt TEXT`: the logit lens and direct logit attribution of a GPT.

Logit lens (nostalgebraist 2020): the residual stream after the embeddings and after each block,
put through the final norm and the unembedding as if it were the last layer; per layer, the top
tokens at the last position and the mean next-token loss over the prompt.  The last layer's lens
is the model's own logits (the same computation).

Direct logit attribution: the residual stream entering the final norm of a pre-norm GPT is a sum
of parts: the embeddings, each head's output through its slice of W_O, each attention's output
bias, and each FFN's output.  With the final norm's scale frozen at its value for this input
(LayerNorm: (x - mean) / std; RMSNorm: x / rms), the norm is linear in x, so each part's
contribution to the target token's logit is (part - its mean) / std * gain . W_U[target]; the
norm's bias and the head's bias are the remainder.  Parts plus remainder equal the logit, to
float32 rounding (tests/test_lens.py).  The target: the prompt's last token, read at the position
before it, or --target TOKEN read at the last position.  A post-norm model renormalises after
every block, so its final residual is not a sum of the parts: it gets the lens but no attribution;
a soft-capped model's attribution is of the logit before the cap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from tformer_cli.core import hooks
from tformer_cli.core.prompt import display_token, single_token, window_ids
from tformer_cli.errors import ConfigError
from tformer_cli.inside.load import load_gpt

TOP = 5


@dataclass
class LensLayer:
    name: str  # "embeddings", "block 0", ...
    top: list[tuple[str, float]]  # the most probable next tokens at the last position, with probabilities
    loss: float | None  # mean next-token loss over the prompt (None for a one-token prompt)


@dataclass
class Attribution:
    part: str  # "embeddings", "L0 H2", "L0 attn bias", "L1 mlp"
    layer: int | None
    head: int | None
    value: float  # its contribution to the target's logit


@dataclass
class LensResult:
    tokens: list[str]
    truncated: int
    layers: list[LensLayer]
    target: str
    position: int  # where the target's logit is read
    logit: float  # the model's logit of the target there (before a soft cap)
    attributions: list[Attribution] = field(default_factory=list)
    remainder: float = 0.0  # the final norm's and the head's biases
    why_no_attribution: str = ""
    n_layer: int = 0
    n_head: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def lens(model, tok, ids: list[int], truncated: int, target: str | None = None, top: int = TOP) -> LensResult:
    """The lens and the attribution of ``ids`` (a prompt of the model's tokenizer)."""
    cfg = model.cfg
    idx = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    T = idx.size(1)
    resid_names = ["blocks.0.resid_pre"] + [f"blocks.{i}.resid_post" for i in range(cfg.n_layer)]
    wanted = resid_names + [f"blocks.{i}.attn.z" for i in range(cfg.n_layer)]
    wanted += [f"blocks.{i}.mlp.out" for i in range(cfg.n_layer) if cfg.ffn]
    with torch.no_grad():
        out, cache = hooks.run_with_cache(model, idx, wanted)
        layers = []
        for i, name in enumerate(resid_names):
            logits = model.logits(cache[name])[0].float()  # (T, V)
            probs = F.softmax(logits[-1], dim=-1)
            p, t = probs.topk(min(top, probs.numel()))
            loss = F.cross_entropy(logits[:-1], idx[0, 1:]).item() if T > 1 else None
            layers.append(LensLayer("embeddings" if i == 0 else f"block {i - 1}",
                                    [(display_token(tok, int(j)), float(q)) for q, j in zip(p, t)], loss))
        if target is None:
            if T < 2:
                raise ConfigError("a one-token prompt has no next token to attribute",
                                  hint="give a longer --prompt, or name --target TOKEN")
            pos, tid = T - 2, int(idx[0, -1])
        else:
            pos, tid = T - 1, single_token(tok, target)
        pre_cap = model.lm_head(model.ln_f(cache[resid_names[-1]]))[0, pos, tid].item()
        result = LensResult([display_token(tok, i) for i in ids], truncated, layers, display_token(tok, tid), pos,
                            pre_cap, n_layer=cfg.n_layer, n_head=cfg.n_head)
        if cfg.norm_position == "post":
            result.why_no_attribution = ("post-norm: the residual is renormalised after every block, so it is not "
                                         "a sum of the parts' outputs")
            return result
        _attribute(model, cache, pos, tid, result)
    return result


def _attribute(model, cache, pos: int, tid: int, result: LensResult) -> None:
    cfg = model.cfg
    x = cache[f"blocks.{cfg.n_layer - 1}.resid_post"][0, pos].float()  # (C,)
    norm = model.ln_f
    gain = norm.weight.float()
    if isinstance(norm, torch.nn.LayerNorm):
        scale = torch.sqrt(x.var(unbiased=False) + norm.eps)
        center = True
        bias = norm.bias.float() if norm.bias is not None else torch.zeros_like(x)
    else:  # RMSNorm
        scale = torch.sqrt((x * x).mean() + (norm.eps or torch.finfo(torch.float32).eps))
        center = False
        bias = torch.zeros_like(x)
    w_u = model.lm_head.weight[tid].float()  # (C,)
    head_bias = model.lm_head.bias[tid].item() if model.lm_head.bias is not None else 0.0

    def value(part: torch.Tensor) -> float:
        p = part - part.mean() if center else part
        return float((p / scale * gain) @ w_u)

    parts = [Attribution("embeddings", None, None, value(cache["blocks.0.resid_pre"][0, pos].float()))]
    hs = cfg.d_model // cfg.n_head
    for i, block in enumerate(model.blocks):
        z = cache[f"blocks.{i}.attn.z"][0, :, pos].float()  # (heads, hs)
        w_o = block.attn.proj.weight.float()  # (C, C): columns h*hs:(h+1)*hs read head h
        for h in range(cfg.n_head):
            parts.append(Attribution(f"L{i} H{h}", i, h, value(w_o[:, h * hs:(h + 1) * hs] @ z[h])))
        if block.attn.proj.bias is not None:
            parts.append(Attribution(f"L{i} attn bias", i, None, value(block.attn.proj.bias.float())))
        if block.ffn is not None:
            parts.append(Attribution(f"L{i} mlp", i, None, value(cache[f"blocks.{i}.mlp.out"][0, pos].float())))
    result.attributions = parts
    result.remainder = float(bias @ w_u) + head_bias


def lens_report(run_dir, prompt: str, target: str | None, device_name: str = "auto", top: int = TOP) -> LensResult:
    model, tok, cfg, _device = load_gpt(run_dir, device_name)
    ids, truncated = window_ids(tok, prompt, cfg.model.block_size)
    return lens(model.eval(), tok, ids, truncated, target, top)


def total(result: LensResult) -> float:
    """The attributions plus the remainder: the target's logit, to float32 rounding."""
    return math.fsum(a.value for a in result.attributions) + result.remainder
