"""Named hook points (core/hooks.py): caching and replacing activations by name, at no cost unset."""

from __future__ import annotations

import pytest
import torch

from tformer_cli.core import hooks
from tformer_cli.core.config import ModelConfig
from tformer_cli.core.model import GPT
from tformer_cli.errors import ConfigError

V = 29
SWITCHES = [{}, {"norm": "rmsnorm"}, {"n_kv_head": 2}, {"pos_encoding": "rope"}, {"activation": "swiglu"},
            {"qk_norm": True}, {"norm_position": "post"}, {"ffn": False}, {"pos_encoding": "sinusoidal"}]


def model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{"d_model": 32, "n_layer": 2, "n_head": 4, "block_size": 16, **kw}), V).eval()


IDX = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kw", SWITCHES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_every_point_is_reached_in_order_and_the_cache_changes_nothing(kw):
    m = model(**kw)
    plain = m(IDX).logits
    seen = []
    with hooks.hooks(m, {n: (lambda x, name: seen.append(name)) for n in hooks.names(m.cfg)}):
        again = m(IDX).logits
    assert seen == hooks.names(m.cfg)  # every point, in the order the names list them
    # reading the pattern takes the explicit softmax instead of the fused kernel: float rounding apart
    assert torch.allclose(plain, again, atol=1e-6)
    no_pattern = [n for n in hooks.names(m.cfg) if not n.endswith("attn.pattern")]
    with hooks.hooks(m, {n: (lambda x, name: None) for n in no_pattern}):
        assert torch.equal(m(IDX).logits, plain)  # reading anything else changes nothing at all
    out, cache = hooks.run_with_cache(m, IDX)
    assert torch.equal(cache["logits"], out.logits) and torch.allclose(out.logits, plain, atol=1e-6)
    assert cache["blocks.0.attn.pattern"].shape == (2, 4, 10, 10)
    assert cache["blocks.1.attn.z"].shape == (2, 4, 10, 8)
    assert cache["blocks.0.attn.k"].shape[1] == m.cfg.kv_heads
    # the last residual through the final norm and the unembedding is the model's logits
    assert torch.equal(m.logits(cache["blocks.1.resid_post"]), out.logits)
    assert hooks.ACTIVE is None  # the block leaves nothing behind


def test_replacing_a_head_s_z_is_removing_its_slice_of_w_o():
    from tformer_cli.inside.heads import head_mask_hooks

    m = model()
    mask = torch.ones(2, 4)
    mask[1, 2] = 0

    def zero_head(z, name):
        z = z.clone()
        z[:, 2] = 0
        return z

    with hooks.hooks(m, {"blocks.1.attn.z": zero_head}):
        hooked = m(IDX).logits
    with hooks.hooks(m, head_mask_hooks(mask)):  # what `tformer heads` masks with
        assert torch.equal(m(IDX).logits, hooked)
    plain = m(IDX).logits
    with torch.no_grad():  # the same head removed from the weights: W_O's columns that read it
        m.blocks[1].attn.proj.weight[:, 16:24] = 0
    assert torch.allclose(hooked, m(IDX).logits, atol=1e-6) and not torch.allclose(hooked, plain)


def test_patching_the_whole_residual_restores_the_clean_run():
    m = model()
    clean = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(2))
    corrupt = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(3))
    _, cache = hooks.run_with_cache(m, clean, ["blocks.1.resid_post"])
    with hooks.hooks(m, {"blocks.1.resid_post": lambda x, n: cache[n]}):
        patched = m(corrupt).logits
    assert torch.equal(patched, m(clean).logits)


def test_a_name_that_is_no_point_is_one_line_with_the_closest():
    m = model()
    with pytest.raises(ConfigError, match=r"no hook point 'blocks.0.atn.z' \(closest: blocks.0.attn.z\)"):
        with hooks.hooks(m, {"blocks.0.atn.z": lambda x, n: None}):
            pass
    with pytest.raises(ConfigError, match="no hook point 'blocks.0.mlp.out'"):
        hooks.run_with_cache(model(ffn=False), IDX, ["blocks.0.mlp.out"])
    assert hooks.ACTIVE is None


def test_training_with_a_hook_set_nowhere_is_bitwise_the_same():
    """The points cost nothing when unset: the same loss and gradients as the model computed before
    hooks existed is what every other test of the model checks; here, a forward and backward with a
    hooks block active on another model leave this one's numbers unchanged."""
    a, b = model(), model()
    (la := a(IDX, IDX).loss).backward()
    with hooks.hooks(b, {"embed": lambda x, n: None}):
        lb = b(IDX, IDX).loss
        lb.backward()
    assert torch.equal(la, lb)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))
