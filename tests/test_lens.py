"""`tformer lens` (inside/lens.py): the logit lens and direct logit attribution, exact by construction."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import one_line, terminal, train_tiny_run
from tformer_cli.core.config import ModelConfig
from tformer_cli.core.data import CharTokenizer
from tformer_cli.core.model import GPT
from tformer_cli.inside.lens import lens, total

TOK = CharTokenizer.train("abcdefgh ")
SWITCHES = [{}, {"norm": "rmsnorm"}, {"n_kv_head": 2}, {"pos_encoding": "rope"}, {"activation": "swiglu"},
            {"qk_norm": True}, {"bias": False}, {"ffn": False}, {"logit_softcap": 5.0}, {"norm_position": "post"}]


@pytest.mark.parametrize("kw", SWITCHES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_the_last_layer_s_lens_is_the_model_and_the_parts_sum_to_the_logit(kw):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{"d_model": 32, "n_layer": 2, "n_head": 4, "block_size": 16, **kw}), TOK.vocab_size)
    with torch.no_grad():  # a trained-looking model: weights away from their initial symmetry
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    ids = TOK.encode("abc abcha")
    r = lens(model, TOK, ids, 0)
    logits = model(torch.tensor([ids])).logits[0].float()
    top = torch.softmax(logits[-1], -1).topk(5)
    assert [p for _, p in r.layers[-1].top] == pytest.approx(top.values.tolist(), abs=1e-6)  # the model itself
    assert len(r.layers) == 3 and r.layers[0].name == "embeddings"
    if kw.get("norm_position") == "post":
        assert not r.attributions and "post-norm" in r.why_no_attribution
        return
    assert abs(total(r) - r.logit) <= 1e-4 * max(1.0, abs(r.logit))  # exact to float32 rounding
    assert len([a for a in r.attributions if a.head is not None]) == 2 * 4
    if "logit_softcap" not in kw:  # the logit attributed is the model's own
        assert r.logit == pytest.approx(logits[r.position, ids[-1]].item(), abs=1e-5)


def test_lens_runs_on_a_trained_run_and_fits_80_columns(cli, monkeypatch, tmp_path):
    run = train_tiny_run(tmp_path, "run", steps=10)
    monkeypatch.chdir(tmp_path)
    r = terminal(monkeypatch, "lens", "run", "--prompt", "The cat sat", "--out", "lens.png")
    assert "logit lens" in r.out and "direct logit attribution" in r.out and (tmp_path / "lens.png").exists()
    data = json.loads(cli("lens", run, "--prompt", "The cat", "--target", "s", "--json").out)
    assert abs(data["sum"] - data["logit"]) < 1e-3 and data["target"] == "s"
    one_line(cli("lens", run, "--prompt", "The", "--target", "ss"), 2, "--target 'ss' is 2 tokens")
