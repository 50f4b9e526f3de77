"""`tformer ffn RUN`: the feed-forward layer as key-value memories (Geva et al. 2021).

A neuron n of block L's FFN reads the residual stream through its row of W1 (its key) and, as
much as it fires, writes its column of W2 (its value) back.  Over a text (the run's validation
split, or --prompt), each neuron's effect is the mean of |its activation| times the norm of its
value vector; for the neurons with the largest effect the command lists the tokens at which they
fire most (with the text just before, the key's trigger) and the tokens their value promotes when
read through the final norm's gain and the unembedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tformer_cli.core import hooks
from tformer_cli.core.prompt import display_token, known_ids
from tformer_cli.errors import ConfigError
from tformer_cli.inside.load import load_gpt

NEURONS, KEYS, VALUES, CONTEXT = 8, 5, 5, 8
TEXT_WINDOWS = 8  # windows of block_size tokens of the validation split, by default


@dataclass
class Neuron:
    layer: int
    neuron: int
    effect: float
    keys: list[tuple[str, str, float]]  # (the text before, the token, the activation) where it fires most
    values: list[tuple[str, float]]  # tokens its value vector promotes, with their logit per unit


@dataclass
class FfnResult:
    layers: list[int]
    tokens_read: int
    source: str
    neurons: list[Neuron]

    def to_dict(self) -> dict:
        return asdict(self)


def ffn(model, tok, ids: list[int], layers: list[int], source: str, top: int = NEURONS) -> FfnResult:
    cfg = model.cfg
    if not cfg.ffn:
        raise ConfigError("this model has no FFN (model.ffn=false): no memories to read",
                          hint="run it on a model with feed-forward layers")
    block = cfg.block_size
    windows = [ids[i:i + block] for i in range(0, len(ids), block) if len(ids[i:i + block]) >= 2]
    if not windows:
        raise ConfigError("the text is shorter than two tokens", hint="give a longer --prompt")
    dev = next(model.parameters()).device
    acts = {i: [] for i in layers}
    with torch.no_grad():
        for w in windows:
            _, cache = hooks.run_with_cache(model, torch.tensor([w], device=dev),
                                            [f"blocks.{i}.mlp.post" for i in layers])
            for i in layers:
                acts[i].append(cache[f"blocks.{i}.mlp.post"][0].float())  # (T, d_ff)
        flat = [t for w in windows for t in w]
        gain = model.ln_f.weight.float()
        w_u = model.lm_head.weight.float()[: model.vocab_size]  # (V, C)
        found = []
        for i in layers:
            a = torch.cat(acts[i])  # (N, d_ff)
            w2 = model.blocks[i].ffn.w2.weight.float()  # (C, d_ff)
            effect = a.abs().mean(0) * w2.norm(dim=0)
            for n in effect.topk(min(top, effect.numel())).indices.tolist():
                fire = a[:, n].topk(min(KEYS, a.size(0)))
                keys = [("".join(display_token(tok, t) for t in flat[max(0, j - CONTEXT):j]),
                         display_token(tok, flat[j]), float(v)) for v, j in zip(fire.values, fire.indices.tolist())]
                logits = w_u @ (w2[:, n] * gain)
                best = logits.topk(min(VALUES, logits.numel()))
                values = [(display_token(tok, int(t)), float(v)) for v, t in zip(best.values, best.indices)]
                found.append(Neuron(i, n, float(effect[n]), keys, values))
    found.sort(key=lambda x: -x.effect)
    return FfnResult(layers, len(flat), source, found[:top] if len(layers) > 1 else found)


def ffn_report(run_dir, layer: int | None, prompt: str | None, device_name: str = "auto") -> FfnResult:
    model, tok, cfg, _device = load_gpt(run_dir, device_name)
    n = cfg.model.n_layer
    if layer is not None and not 0 <= layer < n:
        raise ConfigError(f"--layer {layer}: the model has layers 0 to {n - 1}")
    layers = [layer] if layer is not None else list(range(n))
    if prompt:
        return ffn(model.eval(), tok, known_ids(tok, prompt), layers, "--prompt")
    from tformer_cli.core.data import prepare

    ds = prepare(cfg.data, tokenizer=tok)
    ids = [int(t) for t in ds.val[: TEXT_WINDOWS * cfg.model.block_size]]
    return ffn(model.eval(), tok, ids, layers, f"the first {len(ids):,} tokens of the validation split")
