"""model.vocab_multiple: the embedding and LM head padded to a multiple of rows (a faster matmul on
GPUs), exactly: the same loss, gradients of the real rows, greedy and sampled tokens as the
unpadded model with the same weights; honest counts; checkpoints that resume bitwise and are
checked; an export with the vocabulary's rows only."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import assert_same_checkpoints, interrupted_and_resumed
from tformer_cli.core import anatomy
from tformer_cli.core.config import ModelConfig, from_dict
from tformer_cli.core.generate import generate
from tformer_cli.core.model import build_model
from tformer_cli.errors import ConfigError

V = 65  # the character vocabulary of the built-in prose


def _pair(arch: str = "gpt", multiple: int = 64, **model):
    """An unpadded model and a padded one holding the same weights in its first V rows."""
    base = ModelConfig(arch=arch, d_model=32, n_layer=2, n_head=2, block_size=16, **model)
    torch.manual_seed(0)
    plain = build_model(base, V)
    padded = build_model(ModelConfig(**{**base.__dict__, "vocab_multiple": multiple}), V)
    with torch.no_grad():
        for (name, p), (_, q) in zip(plain.named_parameters(), padded.named_parameters()):
            q[: p.size(0)].copy_(p)
    return plain, padded


@pytest.mark.parametrize("arch,model", [("gpt", {}), ("gpt", {"tie_weights": False, "logit_softcap": 30.0}),
                                        ("lstm", {})], ids=["gpt tied", "gpt untied capped", "lstm"])
def test_loss_gradients_and_logits_equal_the_unpadded_models(arch, model):
    plain, padded = _pair(arch, **model)
    assert padded.tok_emb.weight.shape[0] == 128 and plain.tok_emb.weight.shape[0] == V
    x = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(2))
    y[0, :4] = -100  # ignored positions stay ignored
    a, b = plain(x, y), padded(x, y)
    assert b.logits.shape == (3, 16, V)  # callers see the real vocabulary
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-6)
    a.loss.backward()
    b.loss.backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), padded.named_parameters()):
        torch.testing.assert_close(q.grad[: p.size(0)], p.grad, rtol=0, atol=1e-6, msg=name)
        if q.size(0) > p.size(0) and name in ("tok_emb.weight", "lm_head.weight"):
            assert torch.count_nonzero(q.grad[p.size(0):]) == 0, f"{name}: padded rows got a gradient"


def test_greedy_and_sampled_tokens_equal_the_unpadded_models():
    plain, padded = _pair()
    plain.eval(), padded.eval()
    prompt = [5, 9, 2]
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_k": 20}, {"temperature": 0.8, "top_p": 0.9}):
        got = [list(generate(m, prompt, 20, generator=torch.Generator().manual_seed(3), **kw))
               for m in (plain, padded)]
        assert got[0] == got[1], kw
        assert max(got[1]) < V


def test_counts_say_how_many_rows_are_padding():
    plain, padded = _pair()
    m = padded.cfg
    t = anatomy.totals(m, V)
    assert t.params == padded.num_params() == plain.num_params() + 63 * 32
    assert anatomy.padding_rows(m, V) == 63 and anatomy.padding_rows(plain.cfg, V) == 0
    assert "63 of them padding (model.vocab_multiple)" in anatomy.parts(m, V)[0].name
    assert anatomy.parts(plain.cfg, V)[0].name == "token embedding (V x d_model)"  # unchanged without it
    assert m.padded_vocab(50257) == 50304 and ModelConfig(vocab_multiple=128).padded_vocab(50257) == 50304
    assert ModelConfig().padded_vocab(50257) == 50257  # the default pads nothing


def test_inspect_reports_the_padding(cli, tiny_yaml):
    r = cli("inspect", tiny_yaml, "--set", "model.vocab_multiple=64", "--json")
    assert r.code == 0, r
    report = json.loads(r.out)
    pad = -report["vocab_size"] % 64
    assert pad > 0 and report["padding_rows"] == pad
    plain = json.loads(cli("inspect", tiny_yaml, "--json").out)
    assert report["params"] - plain["params"] == pad * 32 and plain["padding_rows"] == 0
    shown = " ".join(cli("inspect", tiny_yaml, "--set", "model.vocab_multiple=64").out.split())
    assert f"+ {pad} padding rows" in shown


@pytest.mark.parametrize("value", [0, -64, 2048])
def test_the_key_is_validated(tiny_config, value):
    tiny_config["model"]["vocab_multiple"] = value
    with pytest.raises(ConfigError, match="model.vocab_multiple: must be in \\[1, 1024\\]"):
        from_dict(tiny_config)


def test_a_padded_run_resumes_bitwise(tiny_config, tmp_path):
    tiny_config["model"]["vocab_multiple"] = 64
    full, part, stopped, resumed = interrupted_and_resumed(from_dict(tiny_config), tmp_path)
    assert stopped.interrupted and stopped.steps_done == 10 and resumed.steps_done == 20
    assert_same_checkpoints(full, part)
    with safe_open(str(full / "checkpoint.safetensors"), "pt") as f:
        assert f.get_tensor("model.tok_emb.weight").shape[0] == 128


def test_the_validator_refuses_tensors_that_do_not_match_the_padding(tiny_config, tmp_path, cli):
    import yaml

    tiny_config["model"]["vocab_multiple"] = 64
    tiny_config["train"]["steps"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config))
    assert cli("train", tmp_path / "c.yaml", "--out", tmp_path / "run").code == 0
    assert cli("sample", tmp_path / "run", "--max-new-tokens", "5").code == 0
    path = tmp_path / "run" / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config["model"]["vocab_multiple"] = 1  # the header now says unpadded; the tensors are padded
    save_file(tensors, str(path), metadata={**meta, "config": json.dumps(config)})
    r = cli("sample", tmp_path / "run", "--max-new-tokens", "5")
    assert r.code != 0 and "tok_emb.weight" in r.err and "(128, 32)" in r.err, r


def test_a_classifier_body_of_a_padded_model_gives_hidden_states():
    from tformer_cli.core.classifier import build_classifier

    cfg = ModelConfig(d_model=32, n_layer=1, n_head=2, block_size=8, vocab_multiple=64)
    m = build_classifier(cfg, 20, 3, "mean", "transformer")
    assert m.body(torch.randint(0, 20, (2, 8))).logits.shape == (2, 8, 32)
    assert m(torch.randint(0, 20, (2, 8))).shape == (2, 3)
