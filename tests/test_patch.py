"""`tformer patch` (inside/patch.py): activation patching, normalised to corrupted = 0, clean = 1."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import one_line, terminal, train_tiny_run
from tformer_cli.core.config import ModelConfig
from tformer_cli.core.data import CharTokenizer
from tformer_cli.core.model import GPT
from tformer_cli.errors import ConfigError
from tformer_cli.inside.patch import patch

TOK = CharTokenizer.train("abcdefgh ")


def _model(**kw):
    torch.manual_seed(0)
    m = GPT(ModelConfig(**{"d_model": 32, "n_layer": 2, "n_head": 4, "block_size": 16, **kw}), TOK.vocab_size)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("kw", [{}, {"norm_position": "post"}, {"pos_encoding": "rope"}, {"n_kv_head": 2}])
def test_patching_the_whole_residual_restores_the_clean_run_exactly(kw):
    m = _model(**kw)
    r = patch(m, TOK, TOK.encode("abcabcab"), TOK.encode("abcfbcab"))
    assert r.residual[-1][-1] == pytest.approx(1.0, abs=1e-4)  # the end of the last block, last position
    assert all(v == pytest.approx(0.0, abs=1e-4) for v in r.residual[0][4:])  # after the change: nothing yet
    assert r.residual[0][3] == pytest.approx(1.0, abs=1e-4)  # the one changed token, at the input: all of it
    assert len(r.heads) == 2 and len(r.heads[0]) == 4 and len(r.residual) == 3

    # every position at once, at any layer: exactly the clean run
    from tformer_cli.core import hooks

    clean, corrupt = torch.tensor([TOK.encode("abcabcab")]), torch.tensor([TOK.encode("abcfbcab")])
    _, cache = hooks.run_with_cache(m, clean, ["blocks.1.resid_pre"])
    with hooks.hooks(m, {"blocks.1.resid_pre": lambda x, n: cache[n]}):
        assert torch.allclose(m(corrupt).logits, m(clean).logits, atol=1e-6)


def test_prompts_of_different_lengths_are_refused_with_both_lengths():
    with pytest.raises(ConfigError, match="--clean is 3 tokens and --corrupt 4"):
        patch(_model(), TOK, TOK.encode("abc"), TOK.encode("abcd"))
    with pytest.raises(ConfigError, match="the same logit"):
        patch(_model(), TOK, TOK.encode("abc"), TOK.encode("abc"))


def test_patch_runs_on_a_trained_run_and_fits_80_columns(cli, monkeypatch, tmp_path):
    run = train_tiny_run(tmp_path, "run", steps=10)
    monkeypatch.chdir(tmp_path)
    r = terminal(monkeypatch, "patch", "run", "--clean", "The cat", "--corrupt", "The hat", "--out", "p.png")
    assert "by layer and position" in r.out and (tmp_path / "p.png").exists()
    data = json.loads(cli("patch", run, "--clean", "The cat", "--corrupt", "The hat", "--target", "e", "--json").out)
    assert data["target"] == "e" and data["residual"][-1][-1] == pytest.approx(1.0, abs=1e-4)
    one_line(cli("patch", run, "--clean", "The cat", "--corrupt", "A cat"), 2, "--clean is 7 tokens and --corrupt 5")
