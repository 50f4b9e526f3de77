"""The model's invariants: shapes, closed-form parameter counts, causality, fast == explicit attention."""

from __future__ import annotations

import math

import pytest
import torch

from tformer_cli.core import anatomy
from tformer_cli.core.config import ModelConfig
from tformer_cli.core.model import GPT, build_model
from tformer_cli.errors import ConfigError

V = 37
POS = ["learned", "sinusoidal", "rope", "none"]


def cfg(**kw) -> ModelConfig:
    base = dict(d_model=32, n_layer=2, n_head=4, block_size=16)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swiglu"])
def test_shapes_and_closed_form_param_count(pos, activation):
    for tie in (True, False):
        for bias in (True, False):
            for ffn in (True, False):
                c = cfg(pos_encoding=pos, activation=activation, tie_weights=tie, bias=bias, ffn=ffn)
                model = GPT(c, V)
                idx = torch.randint(0, V, (3, 11))
                out = model(idx, idx)
                assert out.logits.shape == (3, 11, V)
                assert out.loss.shape == ()
                assert model.num_params() == anatomy.totals(c, V).params


def test_lstm_param_count_matches_closed_form():
    c = cfg(arch="lstm")
    model = build_model(c, V)
    assert model.num_params() == anatomy.totals(c, V).params
    assert model(torch.randint(0, V, (2, 9))).logits.shape == (2, 9, V)


def test_d_ff_defaults():
    assert cfg().d_ff_resolved == 128  # 4 x d_model
    assert cfg(d_ff=50).d_ff_resolved == 50
    sw = cfg(activation="swiglu", d_model=96)
    # the 2/3 rule keeps a gated FFN's parameters close to the 4x FFN's
    plain = anatomy.totals(cfg(d_model=96), V).by_group_params["ffn"]
    gated = anatomy.totals(sw, V).by_group_params["ffn"]
    assert abs(gated - plain) / plain < 0.05


def test_bad_head_count_is_a_clear_error():
    with pytest.raises(ConfigError) as e:
        GPT(cfg(d_model=32, n_head=3), V)
    assert str(e.value) == (
        "model.n_head: d_model=32 is not divisible by n_head=3; "
        "valid head counts for d_model=32: 1, 2, 4, 8, 16, 32"
    )


@pytest.mark.parametrize("pos", POS)
def test_causality_probe(pos):
    """Changing tokens after position t never changes the logits at positions <= t."""
    torch.manual_seed(0)
    model = GPT(cfg(pos_encoding=pos), V).eval()
    idx = torch.randint(0, V, (2, 16))
    for t in (0, 5, 14):
        other = idx.clone()
        other[:, t + 1 :] = torch.randint(0, V, other[:, t + 1 :].shape)
        a, b = model(idx).logits, model(other).logits
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-5)
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-5)


def test_without_the_mask_the_future_leaks():
    torch.manual_seed(0)
    model = GPT(cfg(causal=False), V).eval()
    idx = torch.randint(0, V, (2, 16))
    other = idx.clone()
    other[:, -1] = (other[:, -1] + 1) % V
    assert not torch.allclose(model(idx).logits[:, 0], model(other).logits[:, 0], atol=1e-6)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_equals_explicit_attention(pos, causal):
    torch.manual_seed(0)
    model = GPT(cfg(pos_encoding=pos, causal=causal), V).eval()
    idx = torch.randint(0, V, (2, 16))
    fast = model(idx).logits
    slow = model(idx, explicit=True)
    from tformer_cli.core import hooks

    _, cache = hooks.run_with_cache(model, idx, ["blocks.0.attn.pattern", "blocks.1.attn.pattern"])
    weights = [cache["blocks.0.attn.pattern"], cache["blocks.1.attn.pattern"]]
    assert torch.allclose(fast, slow.logits, atol=1e-5)
    assert len(weights) == 2 and weights[0].shape == (2, 4, 16, 16)
    assert torch.allclose(weights[0].sum(-1), torch.ones(2, 4, 16), atol=1e-5)
    if causal:
        assert torch.all(torch.triu(weights[0], diagonal=1) == 0)


@pytest.mark.parametrize("pos", POS)
def test_cached_forward_equals_full_forward(pos):
    torch.manual_seed(0)
    model = GPT(cfg(pos_encoding=pos), V).eval()
    idx = torch.randint(0, V, (2, 12))
    full = model(idx).logits
    cache = model.new_cache(2, "cpu", torch.float32)
    first = model(idx[:, :7], cache=cache).logits
    steps = [model(idx[:, t : t + 1], start_pos=t, cache=cache).logits for t in range(7, 12)]
    assert torch.allclose(torch.cat([first, *steps], dim=1), full, atol=1e-5)


def test_initial_loss_is_close_to_ln_vocab():
    torch.manual_seed(0)
    model = GPT(cfg(), V)
    idx, targets = torch.randint(0, V, (8, 16)), torch.randint(0, V, (8, 16))
    loss = model(idx, targets).loss.item()
    assert abs(loss - math.log(V)) < 0.1


def test_weight_tying_shares_the_matrix():
    model = GPT(cfg(tie_weights=True), V)
    assert model.lm_head.weight is model.tok_emb.weight
    assert GPT(cfg(tie_weights=False), V).lm_head.weight is not GPT(cfg(tie_weights=False), V).tok_emb.weight


def test_sequence_longer_than_block_is_refused():
    model = GPT(cfg(), V)
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_cache_misuse_is_an_error_not_silent_garbage():
    model = GPT(cfg(), V).eval()
    cache = model.new_cache(1, "cpu", torch.float32)
    model(torch.zeros(1, 16, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="start_pos=3 but the KV cache holds 16"):
        model(torch.zeros(1, 1, dtype=torch.long), start_pos=3, cache=cache)
    with pytest.raises(ValueError):  # past block_size: refused before the cache could overflow
        model(torch.zeros(1, 1, dtype=torch.long), start_pos=16, cache=cache)


def test_gelu_tanh_is_gpt2s_approximation():
    """gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), close to but not the erf GELU."""
    from tformer_cli.core.model import FeedForward

    torch.manual_seed(0)
    exact, approx = FeedForward(cfg(activation="gelu")), FeedForward(cfg(activation="gelu_tanh"))
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(2, 5, 32)
    h = approx.w1(x)
    formula = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    assert torch.allclose(approx(x), approx.w2(formula), atol=1e-6)
    assert 0 < (approx(x) - exact(x)).abs().max() < 1e-2


def test_sinusoidal_scales_the_token_embeddings_by_sqrt_d_model():
    """Vaswani et al. (2017), 3.4: with the fixed table (amplitude 1) the embeddings are multiplied
    by sqrt(d_model), so tokens are not drowned by positions at init (std 0.02 x sqrt(d) vs ~0.7)."""
    torch.manual_seed(0)
    d = 64
    model = GPT(cfg(d_model=d, pos_encoding="sinusoidal"), V).eval()
    seen = []
    model.drop.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    idx = torch.randint(0, V, (2, 16))
    model(idx)
    table = model.pos_table[:16]
    token_part = seen[0] - table
    assert torch.allclose(token_part, model.tok_emb(idx) * math.sqrt(d), atol=1e-6)
    ratio = token_part.std().item() / table.std().item()
    assert 0.15 < ratio < 0.35  # 0.02 x 8 = 0.16 against the table's ~0.71; unscaled it would be ~0.03
    # the KV-cached path adds the same rows: one switch, read in one place
    cache = model.new_cache(2, "cpu", torch.float32)
    model(idx[:, :5], cache=cache)
    model(idx[:, 5:6], start_pos=5, cache=cache)
    assert torch.allclose(seen[-1][:, 0], model.tok_emb(idx[:, 5]) * math.sqrt(d) + model.pos_table[5], atol=1e-6)


# ---------------------------------------------------------------- the loss of low-precision logits


@pytest.mark.parametrize("rows", [1, 7, 64, None])
def test_chunked_cross_entropy_is_the_plain_loss_in_float32(rows):
    """core/loss.py: the chunked loss (for bfloat16/float16 logits) against F.cross_entropy in
    float32, loss and gradient within 1e-5, ignored targets included, any chunk size."""
    import torch.nn.functional as F

    from tformer_cli.core.loss import IGNORE, chunked_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(50, 97, generator=g)).requires_grad_()
    targets = torch.randint(0, 97, (50,), generator=g)
    targets[::6] = IGNORE
    plain = F.cross_entropy(logits, targets, ignore_index=IGNORE)
    (want,) = torch.autograd.grad(plain, logits)
    got = chunked_cross_entropy(logits, targets, rows)
    (grad,) = torch.autograd.grad(got, logits)
    assert abs(got.item() - plain.item()) <= 1e-5 * abs(plain.item())
    assert torch.allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_bfloat16_logits_take_the_chunked_loss_and_match_their_float32_copy():
    import torch.nn.functional as F

    from tformer_cli.core.loss import lm_loss

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, 33, generator=g).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 33, (4, 9), generator=g)
    loss = lm_loss(logits, targets)
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, logits)
    ref_in = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(ref_in.reshape(-1, 33), targets.reshape(-1))
    (ref_grad,) = torch.autograd.grad(ref, ref_in)
    assert abs(loss.item() - ref.item()) <= 1e-5 * ref.item()
    assert grad.dtype == torch.bfloat16 and torch.allclose(grad.float(), ref_grad, rtol=1e-2, atol=1e-4)


def test_the_chunked_loss_works_under_vmap_as_the_batched_trainer_calls_it():
    import torch.nn.functional as F
    from torch.func import grad, vmap

    from tformer_cli.core.loss import chunked_cross_entropy

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 20, 11, generator=g)  # 3 seeds
    targets = torch.randint(0, 11, (3, 20), generator=g)
    got = vmap(grad(lambda z, t: chunked_cross_entropy(z, t, 6)))(logits, targets)
    want = vmap(grad(lambda z, t: F.cross_entropy(z, t)))(logits, targets)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


def test_a_model_under_bfloat16_autocast_takes_its_loss_from_its_own_logits_in_float32():
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = GPT(cfg(), V)
    idx = torch.randint(0, V, (2, 8))
    targets = torch.randint(0, V, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, targets)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    want = F.cross_entropy(out.logits.float().reshape(-1, V), targets.reshape(-1))
    assert abs(out.loss.item() - want.item()) <= 1e-5 * want.item()
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
