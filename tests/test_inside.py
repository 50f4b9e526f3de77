"""Seeing inside: inspect's counts, attention maps and labels, head ablation, LSTM and MLM
through the CLI, and the synthetic-task metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from conftest import rule_oracle, run_cli
from tformer_cli.core import anatomy, hooks, tasks
from tformer_cli.core.config import ModelConfig, from_dict
from tformer_cli.core.model import GPT, build_model
from tformer_cli.inside import attention, heads
from tformer_cli.inside.heads import head_mask_hooks

V = 29

# A tiny char model on the synthetic `repeat` corpus: lines of 18 characters fit in block_size 24.
RUN_CFG = {
    "model": {"d_model": 32, "n_layer": 2, "n_head": 2, "block_size": 24, "dropout": 0.0},
    "data": {"corpus": "repeat", "tokenizer": "char"},
    "train": {"steps": 12, "batch_size": 8, "lr": 0.01, "warmup_steps": 2, "eval_interval": 12,
              "eval_iters": 2, "log_interval": 6, "device": "cpu"},
}


def _train(tmp_path, name: str, *sets: str) -> tuple[object, dict]:
    cfg_file = tmp_path / f"{name}.yaml"
    cfg_file.write_text(yaml.safe_dump(RUN_CFG))
    run = tmp_path / name
    args = ["train", cfg_file, "--out", run, "--json"]
    for s in sets:
        args += ["--set", s]
    r = run_cli(*args)
    assert r.code == 0, r
    return run, json.loads(r.out)


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("inside"), "gpt")


# ---------------------------------------------------------------- inspect


INSPECT_SETS = [
    [],
    ["model.activation=relu"],
    ["model.activation=swiglu", "model.tie_weights=false"],
    ["model.ffn=false", "model.pos_encoding=rope"],
    ["model.pos_encoding=sinusoidal", "model.bias=false"],
    ["model.pos_encoding=none", "model.d_ff=100", "model.n_layer=3"],
    ["model.arch=lstm"],
    ["model.arch=lstm", "model.tie_weights=false", "model.bias=false"],
]


@pytest.mark.parametrize("sets", INSPECT_SETS, ids=lambda s: ",".join(s) or "default")
def test_inspect_counts_equal_the_models_parameters(sets):
    args = ["inspect", "--vocab-size", V, "--set", "model.d_model=32", "--set", "model.n_head=4",
            "--set", "model.block_size=16", "--json"]
    for s in sets:
        args += ["--set", s]
    r = run_cli(*args)
    assert r.code == 0, r
    data = json.loads(r.out)
    cfg = ModelConfig(**data["model"])
    model = build_model(cfg, V)
    assert data["params"] == model.num_params()
    assert sum(c["params"] for c in data["components"]) == model.num_params()
    assert sum(g["params"] for g in data["groups"].values()) == model.num_params()
    assert data["memory_bytes"]["float32"]["optimizer"] == 8 * model.num_params()


@pytest.mark.parametrize("kw", [{}, {"tie_weights": False}, {"activation": "swiglu", "bias": False},
                                {"ffn": False}])
def test_anatomy_flops_match_a_flop_counter(kw):
    """Training FLOPs = 3 x the forward matmul FLOPs torch counts (full block, explicit attention),
    once the closed form's 6-per-bias and layernorm terms (not matmuls) are taken out."""
    from torch.utils.flop_counter import FlopCounterMode

    c = ModelConfig(d_model=32, n_layer=2, n_head=4, block_size=16, **kw)
    model = GPT(c, V)
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, V, (1, 16)), explicit=True)
    not_matmul = sum(p.flops for p in anatomy.parts(c, V) if "layernorm" in p.name)
    if c.bias:
        not_matmul += 6 * sum(m.bias.numel() for m in model.modules()
                              if isinstance(m, torch.nn.Linear) and m.bias is not None)
    assert anatomy.totals(c, V).flops_per_token - not_matmul == 3 * counter.get_total_flops() // 16


def test_inspect_takes_the_vocabulary_from_a_run_or_the_corpus(gpt_run, tmp_path):
    run, summary = gpt_run
    r = run_cli("inspect", run, "--json")
    assert r.code == 0, r
    data = json.loads(r.out)
    assert data["vocab_size"] == summary["vocab_size"] == 28  # 26 letters, '|', newline
    assert data["params"] == summary["params"]
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(RUN_CFG))
    data = json.loads(run_cli("inspect", cfg_file, "--json").out)
    assert data["vocab_size"] == 28 and "tokenizer" in data["vocab_source"]
    mlm = json.loads(run_cli("inspect", cfg_file, "--set", "train.objective=mlm", "--set", "model.causal=false",
                             "--json").out)
    assert mlm["vocab_size"] == 29  # + [MASK]
    r = run_cli("inspect", cfg_file, "--vocab-size", "28")
    assert r.code == 0 and "attention Q/K/V" in r.out and "AdamW" in r.out and "model.d_model=" in r.out


def test_matched_lstm_has_the_closest_parameter_count():
    import dataclasses

    m = ModelConfig(d_model=64, n_layer=2, n_head=4, block_size=32)
    d = anatomy.matched_lstm_d_model(m, V)
    target = anatomy.totals(m, V).params
    gap = lambda dd: abs(anatomy.totals(dataclasses.replace(m, arch="lstm", d_model=dd), V).params - target)  # noqa
    assert gap(d) <= gap(d - 1) and gap(d) <= gap(d + 1)
    assert gap(d) / target < 0.02


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("causal", [True, False])
def test_attention_rows_sum_to_one_and_the_future_is_zero(causal):
    torch.manual_seed(0)
    model = GPT(ModelConfig(d_model=32, n_layer=2, n_head=4, block_size=16, causal=causal), V).eval()
    w = attention.attention_maps(model, list(range(11)), torch.device("cpu"))
    assert w.shape == (2, 4, 11, 11)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 11), atol=1e-5)
    upper = torch.triu(torch.ones(11, 11, dtype=torch.bool), diagonal=1)
    if causal:
        assert (w[..., upper] == 0).all()
    else:
        assert (w[..., upper] > 0).all()


def test_scores_name_the_pattern():
    T = 10
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    first = torch.zeros(T, T)
    first[:, 0] = 1
    uniform = torch.tril(torch.ones(T, T))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    w = torch.stack([prev, first, uniform])[None]  # (1 layer, 3 heads, T, T)
    s = attention.score_heads(w, torch.tensor([[0.0, 0.0, 0.9]]), causal=True)
    assert [h.label for h in s] == ["previous-token", "first-token", "induction"]
    assert s[0].previous_token == pytest.approx(1.0) and s[1].first_token == pytest.approx(1.0)
    assert s[2].entropy == pytest.approx(1.0)
    assert attention.label_head(0.1, 0.1, 0.1, 0.95) == "diffuse"
    assert attention.label_head(0.1, 0.1, 0.1, 0.3) == "mixed"


def test_a_fixed_offset_head_is_named_by_its_offset():
    T = 12
    w = torch.zeros(T, T)
    w[torch.arange(T), (torch.arange(T) - 3).clamp(min=0)] = 1  # every token looks 3 back
    s = attention.score_heads(w[None, None], torch.zeros(1, 1), causal=True)[0]
    assert (s.offset, s.label) == (3, "offset -3") and s.offset_score == pytest.approx(1.0)
    assert s.previous_token == 0.0


def test_induction_score_of_a_perfect_induction_pattern():
    """A fake model whose every head attends from token n+j to token j+1 scores 1."""
    n = 8

    class Fake:
        cfg = ModelConfig(d_model=8, n_layer=1, n_head=2, block_size=2 * n)
        blocks = [None]  # one layer: what the hook points ask of a model

        def __call__(self, seq):
            S, T = seq.shape
            w = torch.zeros(S, 2, T, T)
            w[..., torch.arange(T), 0] = 1
            j = torch.arange(n - 1)
            w[..., n + j, :] = 0
            w[..., n + j, j + 1] = 1
            hooks.apply("blocks.0.attn.pattern", w)
            return type("Out", (), {})()

    score = attention.induction_scores(Fake(), V, torch.device("cpu"))
    assert score.shape == (1, 2) and torch.allclose(score, torch.ones(1, 2))


def test_attention_command_writes_a_png_and_renders_a_head(gpt_run, tmp_path):
    run, _ = gpt_run
    png = tmp_path / "att.png"
    r = run_cli("attention", run, "--prompt", "abcdefgh|abcdefgh", "--out", png, "--device", "cpu")
    assert r.code == 0, r
    assert png.exists() and 1_000 < png.stat().st_size < 300_000
    assert "previous-token" in r.out and "layer 1 head 0" in r.out
    data = json.loads(run_cli("attention", run, "--prompt", "abc|abc", "--layer", "0", "--out", png,
                              "--json").out)
    assert len(data["heads"]) == 4 and len(data["weights"]) == 2 and len(data["weights"][0][0]) == 7
    r = run_cli("attention", run, "--prompt", "abc", "--layer", "5")
    assert r.code == 2 and "--layer 5 is out of range" in r.err
    r = run_cli("attention", run, "--prompt", "ABC")
    assert r.code == 2 and "does not know" in r.err


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("bias", [False, True])
def test_masking_all_heads_of_a_layer_removes_its_attention(bias):
    torch.manual_seed(0)
    model = GPT(ModelConfig(d_model=32, n_layer=3, n_head=4, block_size=16, bias=bias), V).eval()
    idx = torch.randint(0, V, (2, 12))
    mask = torch.ones(3, 4)
    mask[1] = 0
    with hooks.hooks(model, head_mask_hooks(mask)):
        masked = model(idx).logits
    attn = model.blocks[1].attn
    # The same model with layer 1's attention contributing nothing (its W_O bias, shared by the
    # heads and kept by head masking, aside).
    attn.forward = lambda x, *a, **k: (attn.proj.bias.expand_as(x) if bias else torch.zeros_like(x), None)
    removed = model(idx).logits
    assert torch.allclose(masked, removed, atol=1e-6)
    del attn.forward
    assert not torch.allclose(model(idx).logits, removed, atol=1e-4)  # the attention did matter


def test_removable_heads_stops_at_the_first_costly_removal():
    curve = [(0, 2.0), (1, 2.01), (2, 2.03), (3, 2.2), (4, 2.04)]
    assert heads.removable_heads(curve, 0.05) == 2
    assert heads.removable_heads(curve, 0.005) == 0


def test_heads_command(gpt_run, tmp_path):
    run, summary = gpt_run
    png = tmp_path / "heads.png"
    r = run_cli("heads", run, "--out", png, "--threshold", "0.05", "--device", "cpu", "--json")
    assert r.code == 0, r
    data = json.loads(r.out)
    assert png.exists() and png.stat().st_size < 300_000
    assert len(data["importance"]) == 2 and len(data["importance"][0]) == 2
    assert [k for k, _ in data["curve"]] == [0, 1, 2, 3]
    assert [round(f, 1) for f, _, _ in data["milestones"]] == [i / 10 for i in range(10)]
    assert data["base_loss"] == pytest.approx(summary["val_loss"], rel=1e-4)  # the run's val windows
    assert data["curve"][0][1] == pytest.approx(data["base_loss"])
    # the first pruned head is the least important one, whose solo ablation is the curve's 2nd point
    first = data["order"][0]
    assert data["curve"][1][1] - data["base_loss"] == pytest.approx(data["importance"][first[0]][first[1]],
                                                                     abs=1e-6)
    r = run_cli("heads", run, "--out", png, "--device", "cpu")
    assert r.code == 0 and "can be removed" in r.out and "pruning curve" in r.out


# ---------------------------------------------------------------- LSTM and MLM


def test_lstm_trains_through_the_cli_and_has_no_heads(tmp_path):
    run, summary = _train(tmp_path, "lstm", "model.arch=lstm")
    cfg = from_dict(RUN_CFG).replace({"model.arch": "lstm"})
    assert summary["params"] == anatomy.totals(cfg.model, summary["vocab_size"]).params
    assert summary["val_loss"] < summary["init_loss_ref"]
    assert "repeat_in_context_drop" in summary["extra"]
    r = run_cli("heads", run)
    assert r.code == 1 and "LSTM run: it has no attention heads" in r.err


def test_mlm_trains_through_the_cli_with_loss_on_masked_positions_only(tmp_path):
    from tformer_cli.core.data import prepare
    from tformer_cli.run.load import load_for_inference
    from tformer_cli.train.batches import Batcher
    from tformer_cli.train.distributed import DistInfo

    run, summary = _train(tmp_path, "mlm", "train.objective=mlm", "model.causal=false", "train.steps=4")
    assert summary["vocab_size"] == 29 and summary["extra"] == {}  # + [MASK]; no next-token task metrics
    model, _, cfg, _, device = load_for_inference(run, "cpu")
    ds = prepare(cfg.data)
    x, y = Batcher(ds, cfg, device, DistInfo(), 29).train_batch(0, 0)
    chosen = y != -100
    assert 0.05 < chosen.float().mean() < 0.3  # about 15%
    assert (x[~chosen] != 28).all() and (x[chosen] == 28).float().mean() > 0.5  # [MASK] only where chosen
    out = model(x, y)
    manual = torch.nn.functional.cross_entropy(out.logits[chosen], y[chosen])
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)


# ---------------------------------------------------------------- task metrics


def test_roles_of_the_synthetic_lines():
    assert tasks.char_roles("repeat", "ab|ab\n") == ["first", "first", "sep", "second", "second", "sep"]
    assert tasks.char_roles("modadd", "01+02=03\n") == ["question"] * 6 + ["answer"] * 2 + ["sep"]


def _modadd_rule(s: str, t: int):
    eq = s.rfind("=", 0, t + 1)
    if eq < 5 or t - eq > 1 or s[eq - 3] != "+":
        return None
    c = f"{(int(s[eq - 5:eq - 3]) + int(s[eq - 2:eq])) % 97:02d}"
    return c[t - eq]


def test_task_metrics_of_oracles(tmp_path):
    from tformer_cli.core.data import prepare

    cfg = from_dict(RUN_CFG)
    ds = prepare(cfg.data)
    copy = rule_oracle(ds.tokenizer, lambda s, t: s[t - 8] if t >= 8 else None)  # the letter 9 back
    m = tasks.task_metrics(copy, cfg, ds, torch.device("cpu"))
    assert m["repeat_loss_second_copy"] < 1e-3 and m["repeat_in_context_drop"] > 5

    cfg = cfg.replace({"data.corpus": "modadd"})
    ds = prepare(cfg.data)
    m = tasks.task_metrics(rule_oracle(ds.tokenizer, _modadd_rule), cfg, ds, torch.device("cpu"))
    assert m["modadd_answer_accuracy"] == 1.0 and m["modadd_answer_loss"] < 1e-3
    wrong = rule_oracle(ds.tokenizer, lambda s, t: (lambda c: None if c is None else str((int(c) + 1) % 10))(
        _modadd_rule(s, t)))
    m = tasks.task_metrics(wrong, cfg, ds, torch.device("cpu"))
    assert m["modadd_answer_accuracy"] == 0.0 and m["modadd_answer_loss"] > 10


def test_training_on_a_task_reports_its_metrics(gpt_run):
    _, summary = gpt_run
    m = summary["extra"]
    assert set(m) == {"repeat_loss_first_copy", "repeat_loss_second_copy", "repeat_in_context_drop"}
    assert m["repeat_in_context_drop"] == pytest.approx(m["repeat_loss_first_copy"] - m["repeat_loss_second_copy"])
    assert all(math.isfinite(v) for v in m.values())
