"""The switches of today's GPTs (issue 14): each one's parameter count, causality, cache exactness,
resume, and the Muon optimizer against a reference computation written out here."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from conftest import assert_same_checkpoints, interrupted_and_resumed
from tformer_cli.core import anatomy
from tformer_cli.core.config import ConfigError, ModelConfig, from_dict
from tformer_cli.core.model import GPT, build_model

V = 37
SWITCHES = {
    "rmsnorm": dict(norm="rmsnorm"),
    "post-norm": dict(norm_position="post"),
    "post rmsnorm": dict(norm="rmsnorm", norm_position="post"),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(activation="relu2"),
    "softcap": dict(logit_softcap=5.0),
    "all, rope, no bias": dict(norm="rmsnorm", n_kv_head=1, qk_norm=True, activation="relu2", logit_softcap=30.0,
                               pos_encoding="rope", bias=False, tie_weights=False),
}


def cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(d_model=32, n_layer=2, n_head=4, block_size=16), **kw})


@pytest.fixture(params=list(SWITCHES), ids=list(SWITCHES))
def switch(request):
    return SWITCHES[request.param]


def test_parameter_count_is_the_closed_form(switch):
    for ffn in (True, False):
        c = cfg(ffn=ffn, **switch)
        model = GPT(c, V)
        assert model.num_params() == anatomy.totals(c, V).params
        out = model(torch.randint(0, V, (2, 9)), torch.randint(0, V, (2, 9)))
        assert out.logits.shape == (2, 9, V) and torch.isfinite(out.loss)


def test_causality_probe(switch):
    torch.manual_seed(0)
    model = GPT(cfg(**switch), V).eval()
    idx = torch.randint(0, V, (2, 16))
    other = idx.clone()
    other[:, 9:] = torch.randint(0, V, other[:, 9:].shape)
    a, b = model(idx).logits, model(other).logits
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-5)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-5)


def test_cache_equals_recompute_and_fast_equals_explicit(switch):
    torch.manual_seed(0)
    model = GPT(cfg(**switch), V).eval()
    idx = torch.randint(0, V, (2, 12))
    full = model(idx).logits
    assert torch.allclose(model(idx, explicit=True).logits, full, atol=1e-5)
    cache = model.new_cache(2, "cpu", torch.float32)
    first = model(idx[:, :7], cache=cache).logits
    steps = [model(idx[:, t: t + 1], start_pos=t, cache=cache).logits for t in range(7, 12)]
    assert torch.allclose(torch.cat([first, *steps], dim=1), full, atol=1e-5)


def test_the_kv_cache_holds_only_the_shared_heads():
    for kv, n_head in ((None, 4), (2, 4), (1, 4)):
        c = cfg(n_kv_head=kv)
        cache = GPT(c, V).new_cache(1, "cpu", torch.float32)
        shared = n_head if kv is None else kv
        assert cache.k[0].shape == (1, shared, 16, 8)
        per_token = sum(t[0, :, 0].numel() * t.element_size() for t in cache.k + cache.v)
        assert anatomy.kv_cache_bytes_per_token(c) == per_token == 2 * 2 * shared * 8 * 4


def test_bad_kv_head_count_names_the_valid_values():
    with pytest.raises(ConfigError) as e:
        from_dict({"model": {"d_model": 48, "n_head": 6, "n_kv_head": 4}})
    assert ("model.n_kv_head: 4 key/value heads cannot be shared evenly by n_head=6 query heads; "
            "valid values for n_head=6: 1, 2, 3, 6") in str(e.value)
    for bad in ({"model": {"norm": "batchnorm"}}, {"model": {"norm_position": "sandwich"}},
                {"model": {"logit_softcap": 0}}, {"train": {"optimizer": "sgd"}}, {"train": {"muon_lr": -1}},
                {"train": {"muon_momentum": 1.0}}, {"model": {"n_kv_head": 0}}):
        with pytest.raises(ConfigError):
            from_dict(bad)


def test_each_switch_builds_what_it_names():
    m = GPT(cfg(norm="rmsnorm", norm_position="post", qk_norm=True), V)
    assert isinstance(m.blocks[0].ln1, torch.nn.RMSNorm) and isinstance(m.ln_f, torch.nn.Identity)
    assert m.blocks[0].attn.q_norm is not None
    x = torch.linspace(-3, 3, 61)
    relu2 = GPT(cfg(activation="relu2"), V).blocks[0].ffn
    h = relu2.w1(x[:32][None])
    assert torch.allclose(relu2.w2(torch.relu(h) ** 2), relu2(x[:32][None]))
    capped = GPT(cfg(logit_softcap=2.0), V)
    with torch.no_grad():
        capped.lm_head.weight.mul_(1000)
    logits = capped(torch.randint(0, V, (1, 8))).logits
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9


def test_post_norm_is_norm_of_the_residual_sum():
    torch.manual_seed(0)
    m = GPT(cfg(norm_position="post"), V).eval()
    b, x = m.blocks[0], torch.randn(1, 5, 32)
    a, _ = b.attn(x)
    h = b.ln1(x + a)
    assert torch.allclose(b(x)[0], b.ln2(h + b.ffn(h)), atol=1e-6)


# ---------------------------------------------------------------- Muon


def newton_schulz_reference(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic iteration of the Muon reference, written out: X <- aX + (bA + cA^2)X, A = XX^T."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def muon_cfg(**train):
    from tformer_cli.core.config import Config, TrainConfig

    return Config(model=cfg(), train=TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, **train))


def test_muon_step_matches_the_reference_computation():
    from tformer_cli.train.optim import make_optimizer

    torch.manual_seed(0)
    c = muon_cfg()
    model = GPT(c.model, V)
    w = model.blocks[0].ffn.w1.weight  # (128, 32): tall, so the update is scaled by sqrt(128 / 32)
    before = w.detach().clone()
    opt = make_optimizer(model, c, torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    g = w.grad.clone()
    opt.step()
    mu = c.train.muon_momentum
    buf = (1 - mu) * g  # the momentum buffer, an average starting from zero: lerp(0, g, 1 - mu)
    nesterov = g + mu * (buf - g)  # look ahead: lerp(g, buf, mu)
    want = -0.02 * math.sqrt(128 / 32) * newton_schulz_reference(nesterov.double()).float()
    got = w.detach() - before
    # torch runs the iteration in bfloat16: agreement to about 2%, where a wrong scale, momentum
    # or iteration would be off by tens of percent.
    assert (got - want).norm() / want.norm() < 0.05
    assert torch.allclose(opt.muon.state[w]["momentum_buffer"], buf)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    from tformer_cli.train.optim import groups

    c = muon_cfg()
    model = GPT(c.model, V)
    g = groups(model, c)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = sorted(names[id(p)] for p in g[0].params)
    assert muon and all(n.startswith("blocks.") and n.endswith("weight") for n in muon)
    rest = [names[id(p)] for grp in g[1:] for p in grp.params]
    assert "tok_emb.weight" in rest and not any(n.endswith("ln1.weight") for n in muon)
    assert len(muon) + len(rest) == len(names)


def _run(cli, tiny_yaml, out, *extra):
    r = cli("train", tiny_yaml, "--out", out, "--json", *extra)
    assert r.code == 0, r
    return json.loads(r.out)


@pytest.mark.parametrize("sets", [
    {"train": {"optimizer": "muon"}},
    {"model": {"norm": "rmsnorm", "norm_position": "post", "n_kv_head": 1, "qk_norm": True,
               "activation": "relu2", "logit_softcap": 30.0}},
], ids=["muon", "modern switches"])
def test_resume_is_bitwise(tiny_config, tmp_path, sets):
    """Stopped after its step-10 checkpoint and resumed, a run ends bitwise where an unbroken one does."""

    for section, values in sets.items():
        tiny_config[section].update(values)
    cfg = from_dict(tiny_config)
    full, part, r, resumed = interrupted_and_resumed(cfg, tmp_path)
    assert r.interrupted and r.steps_done == 10
    assert resumed.steps_done == 20
    assert_same_checkpoints(full, part)


def test_resume_refuses_another_optimizer(cli, tiny_yaml, tmp_path):
    _run(cli, tiny_yaml, tmp_path / "run", "--steps", "10", "--set", "train.optimizer=muon")
    r = cli("train", "--resume", tmp_path / "run", "--steps", "20", "--set", "train.optimizer=adamw")
    assert r.code == 2 and "train.optimizer" in r.err


def test_a_tampered_muon_state_is_refused(cli, tiny_yaml, tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    _run(cli, tiny_yaml, run, "--steps", "10", "--set", "train.optimizer=muon")
    path = run / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["optim.0.momentum_buffer"] = tensors["optim.0.momentum_buffer"][:1]
    save_file(tensors, str(path), metadata=meta)
    r = cli("train", "--resume", run, "--steps", "20")
    assert r.code == 1 and "optim.0.momentum_buffer" in r.err and "Traceback" not in r.err


def test_gpt2_export_refuses_modern_switches(tmp_path):
    from tformer_cli.core.config import Config
    from tformer_cli.run.hf import hf_config_for

    for sw in ({"norm": "rmsnorm"}, {"norm_position": "post"}, {"n_kv_head": 1}, {"qk_norm": True},
               {"logit_softcap": 30.0}, {"activation": "relu2"}):
        with pytest.raises(ConfigError) as e:
            hf_config_for(Config(model=cfg(**sw)), V)
        assert f"model.{next(iter(sw))}" in str(e.value)


# ---------------------------------------------------------------- in the studies


def test_ablate_flags_make_one_member_per_switch(tiny_config):
    from tformer_cli.study.members import ablation_members

    base = from_dict(tiny_config)
    members = ablation_members(base, norm=["rmsnorm"], post_norm=True, kv_heads=[1], qk_norm=True,
                               softcap=[30.0], optimizer=["muon"], activation=["relu2"])
    got = {m.name: m.overrides for m in members}
    assert got == {"baseline": {}, "act-relu2": {"model.activation": "relu2"},
                   "norm-rmsnorm": {"model.norm": "rmsnorm"},
                   "post-norm": {"model.norm_position": "post"}, "kv-heads-1": {"model.n_kv_head": 1},
                   "qk-norm": {"model.qk_norm": True}, "softcap-30": {"model.logit_softcap": 30.0},
                   "opt-muon": {"train.optimizer": "muon"}}


def test_cumulative_arms_walk_a_path_one_switch_at_a_time(tiny_config):
    from tformer_cli.study.members import ablation_members, file_arms

    arms = file_arms([{"pre": {"model.norm_position": "pre"}}, {"+rms": {"model.norm": "rmsnorm"}},
                      {"+muon": {"train.optimizer": "muon"}}])
    tiny_config["model"]["norm_position"] = "post"
    members = ablation_members(from_dict(tiny_config), arms=arms, cumulative=True)
    assert [m.overrides for m in members] == [
        {}, {"model.norm_position": "pre"}, {"model.norm_position": "pre", "model.norm": "rmsnorm"},
        {"model.norm_position": "pre", "model.norm": "rmsnorm", "train.optimizer": "muon"}]
    for bad in ([{"a": 1}], [{"a": {"model.nrom": "x"}}], "text"):
        with pytest.raises(ConfigError, match="experiment.arms"):
            file_arms(bad)


def test_sweep_heads_refuses_kv_counts_that_do_not_share_evenly(cli, tiny_yaml, tmp_path):
    r = cli("sweep-heads", tiny_yaml, "--heads", "2,4", "--kv-heads", "4", "--out", tmp_path / "x")
    assert r.code == 2 and "n_kv_head: 4 key/value heads cannot be shared evenly by n_head=2" in r.err
    assert not (tmp_path / "x").exists()


def test_kv_sweep_rows_carry_the_cache_bytes_and_muon_rows_the_steps_to_baseline(tiny_config, tmp_path):
    from conftest import FakeTrainer, fake_eval
    from tformer_cli.study import runner
    from tformer_cli.study.members import ablation_members, grid_members
    from tformer_cli.study.spec import Spec

    base = from_dict(tiny_config)
    spec = Spec("sweep", base.to_dict(), grid_members(base, {"model.n_kv_head": [2, 1]}), [1],
                axes=["model.n_kv_head"])
    r = runner.run_experiment(spec, tmp_path / "kv", trainer=FakeTrainer(), evaluator=fake_eval)
    want = {m.name: anatomy.kv_cache_bytes_per_token(spec.member_config(m, 1).model) for m in spec.members}
    assert {row.member: row.extra["kv_cache_bytes_per_token"] for row in r.rows} == want
    assert want["n_kv_head-2"] == 2 * want["n_kv_head-1"]
    spec = Spec("ablate", base.to_dict(), ablation_members(base, optimizer=["muon"]), [1, 2])
    r = runner.run_experiment(spec, tmp_path / "opt", trainer=FakeTrainer(), evaluator=fake_eval)
    for row in r.rows:
        steps = row.extra["steps_to_baseline_loss"]
        assert steps is None or 0 < steps <= base.train.steps
    assert all(row.extra["steps_to_baseline_loss"] is not None for row in r.rows if row.member == "baseline")


def test_inspect_and_sample_bench_show_the_kv_cache_per_token(cli, tiny_yaml, tmp_path):
    r = cli("inspect", tiny_yaml, "--set", "model.n_kv_head=1", "--vocab-size", "50")
    # 2 x 2 layers x 1 K/V head x d_k 16 x 4 bytes = 256 B per token; 16 positions: 4 KiB
    assert r.code == 0 and "256 B per token (2 x 2 layers x 1 key/value head x d_k 16)" in " ".join(r.out.split())
    run = tmp_path / "run"
    assert cli("train", tiny_yaml, "--out", run, "--steps", "2", "--set", "model.n_kv_head=1").code == 0
    r = cli("sample", run, "--bench", "--max-new-tokens", "8", "--prompt", "The ")
    assert r.code == 0, r
    text = " ".join((r.out + r.err).split())
    assert "KV cache: 256 B per token, 4.0 KiB for a full block (1 key/value head of 2 query heads per layer)" in text


def test_a_muon_run_samples_and_evaluates(cli, tiny_yaml, tmp_path):
    """Inference loads the weights of a Muon run (its momentum buffers are skipped, not refused)."""
    run = tmp_path / "run"
    _run(cli, tiny_yaml, run, "--steps", "4", "--set", "train.optimizer=muon")
    r = cli("sample", run, "--max-new-tokens", "5", "--prompt", "The ", "--temperature", "0")
    assert r.code == 0, r
    r = cli("inspect", run)
    assert r.code == 0, r


def test_muon_state_is_one_buffer_per_block_matrix_in_the_closed_form():
    from tformer_cli.core.config import Config, TrainConfig
    from tformer_cli.train.optim import groups

    for sw in ({}, {"n_kv_head": 1}, {"activation": "swiglu"}, {"ffn": False}, {"arch": "lstm"}):
        c = Config(model=cfg(**sw), train=TrainConfig(optimizer="muon"))
        model = build_model(c.model, V)
        assert anatomy.muon_params(c.model) == sum(p.numel() for p in groups(model, c)[0].params), sw
    P, M = 1000, 600
    assert anatomy.memory_bytes(P, M)["float32"]["optimizer"] == 4 * (2 * (P - M) + M)
