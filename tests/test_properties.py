"""Property-based tests (hypothesis) of two invariants over random small models:

* causality: with model.causal=true, changing the tokens after position t never changes the
  logits at positions <= t (and with causal=false it does: the probe can see a leak);
* generation: greedy decoding with the KV cache (or the LSTM state) gives exactly the tokens
  of recomputing the whole window at every step, across window cuts.

Example counts are small (each builds a model); the file runs in seconds.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tformer_cli.core import hooks
from tformer_cli.core.config import POS_ENCODINGS, ModelConfig
from tformer_cli.core.model import build_model

VOCAB = 11
BLOCK = 8
FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def model_configs(draw, causal: bool = True, archs=("gpt",)) -> ModelConfig:
    """A valid small config: every switch that touches the attention or the FFN is drawn."""
    arch = draw(st.sampled_from(archs))
    d_model = draw(st.sampled_from([8, 12, 16]))
    pos = draw(st.sampled_from(POS_ENCODINGS))
    heads = [h for h in (1, 2, 3, 4, 6, 8) if d_model % h == 0 and (pos != "rope" or (d_model // h) % 2 == 0)]
    n_head = draw(st.sampled_from(heads))
    return ModelConfig(
        arch=arch,
        d_model=d_model,
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        block_size=BLOCK,
        bias=draw(st.booleans()),
        activation=draw(st.sampled_from(["relu", "relu2", "gelu", "gelu_tanh", "swiglu"])),
        pos_encoding=pos,
        causal=causal,
        ffn=draw(st.booleans()),
        tie_weights=draw(st.booleans()),
        # the switches of today's GPTs (docs/modern.md)
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        norm_position=draw(st.sampled_from(["pre", "post"])),
        n_kv_head=draw(st.sampled_from([None] + [k for k in range(1, n_head + 1) if n_head % k == 0])),
        qk_norm=draw(st.booleans()),
        logit_softcap=draw(st.sampled_from([None, 5.0])),
    )


def _model(cfg: ModelConfig, seed: int, std: float = 0.02) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg, VOCAB)
    if std != 0.02:  # spread the logits so greedy ties (which float noise could flip) do not occur
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, std)
    return model.eval()


@st.composite
def probes(draw):
    """(tokens (1, T), t, tokens with every position after t changed)."""
    T = draw(st.integers(2, BLOCK))
    ids = draw(st.lists(st.integers(0, VOCAB - 1), min_size=T, max_size=T))
    t = draw(st.integers(0, T - 2))
    shift = draw(st.lists(st.integers(1, VOCAB - 1), min_size=T - t - 1, max_size=T - t - 1))
    changed = ids[: t + 1] + [(a + s) % VOCAB for a, s in zip(ids[t + 1 :], shift)]
    return torch.tensor([ids]), t, torch.tensor([changed])


@FAST
@given(cfg=model_configs(archs=("gpt", "lstm")), probe=probes(), explicit=st.booleans(), seed=st.integers(0, 99))
def test_the_future_never_changes_the_past(cfg, probe, explicit, seed):
    x, t, x2 = probe
    model = _model(cfg, seed)
    kw = {"explicit": explicit} if cfg.arch == "gpt" else {}  # the LSTM has no attention path to choose
    with torch.no_grad():
        a = model(x, **kw).logits
        b = model(x2, **kw).logits
    # Masked keys get exactly zero weight, so the prefix's logits are bitwise the same.
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])


SATURATED = ModelConfig(d_model=16, n_layer=1, n_head=1, block_size=BLOCK, bias=False, activation="relu",
                        pos_encoding="sinusoidal", causal=False, ffn=False, tie_weights=False,
                        norm_position="post")  # its softmax at t = 0 gives the later token ~no weight


@settings(max_examples=15, deadline=None, database=None)
@given(cfg=model_configs(causal=False), probe=probes(), explicit=st.booleans(), seed=st.integers(0, 99))
@example(cfg=SATURATED, probe=(torch.tensor([[0, 1]]), 0, torch.tensor([[0, 2]])), explicit=False, seed=0)
def test_without_the_mask_the_future_leaks(cfg, probe, explicit, seed):
    x, t, x2 = probe
    model = _model(cfg, seed, std=0.5)  # the default 0.02 init can make the leak smaller than float noise
    with torch.no_grad():
        a = model(x, explicit=explicit).logits
        b = model(x2, explicit=explicit).logits
        _, cache = hooks.run_with_cache(model, x, [f"blocks.{i}.attn.pattern" for i in range(cfg.n_layer)])
        weights = [cache[f"blocks.{i}.attn.pattern"] for i in range(cfg.n_layer)]  # per layer (1, nh, T, T)
    # Every position, t included, attends to the later tokens: in every layer and head they get weight.
    future = torch.stack([w[0, :, t, t + 1:].sum() for w in weights])
    assert (future > 0).all(), future
    # So the changed tokens change the logits at t, unless the softmax saturated (random weights can
    # give one key nearly all the weight: the leak is then real but below float32's resolution).
    if (future > 1e-3).all():
        assert not torch.allclose(a[:, t], b[:, t], rtol=0, atol=1e-6)


@FAST
@given(cfg=model_configs(archs=("gpt", "lstm")),
       prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=2 * BLOCK),
       new=st.integers(1, 3 * BLOCK), seed=st.integers(0, 99))
def test_cached_generation_equals_recompute(cfg, prompt, new, seed):
    gen = pytest.importorskip("tformer_cli.core.generate")
    model = _model(cfg, seed, std=0.5)
    cached = list(gen.generate(model, prompt, new, temperature=0, use_cache=True))
    full = list(gen.generate(model, prompt, new, temperature=0, use_cache=False))
    assert len(cached) == new and cached == full
    assert gen.uses_cache(model)  # the cached path really was taken


def test_the_probe_sees_a_deliberate_leak():
    """Guard: with the causal switch read wrongly (an attention that ignores model.causal), the
    causality check above fails, so it can catch a regression."""
    cfg = ModelConfig(d_model=16, n_layer=1, n_head=2, block_size=BLOCK)
    model = _model(cfg, 0)
    for block in model.blocks:
        block.attn.causal = False  # what a bug in the mask would do
    x = torch.arange(BLOCK)[None] % VOCAB
    x2 = x.clone()
    x2[0, -1] = (x2[0, -1] + 1) % VOCAB
    with torch.no_grad():
        assert not torch.equal(model(x).logits[:, :-1], model(x2).logits[:, :-1])
