"""`tformer embed` (inside/embed.py): nearest tokens and the position vectors' similarity."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import one_line, terminal, train_tiny_run
from tformer_cli.core.config import ModelConfig
from tformer_cli.core.data import CharTokenizer
from tformer_cli.core.model import GPT
from tformer_cli.errors import ConfigError
from tformer_cli.inside.embed import embed

TOK = CharTokenizer.train("abcdefgh T.")


def _model(pos):
    torch.manual_seed(0)
    return GPT(ModelConfig(d_model=32, n_layer=1, n_head=4, block_size=16, pos_encoding=pos), TOK.vocab_size).eval()


def test_neighbours_are_the_closest_by_cosine_and_positions_compare_pairwise():
    m = _model("learned")
    with torch.no_grad():  # make "b" a near copy of "a"
        m.tok_emb.weight[TOK.encode("b")[0]] = m.tok_emb.weight[TOK.encode("a")[0]] * 2 + 1e-3
    r = embed(m, TOK, ["a"])
    assert r.neighbours[0].nearest[0][0] == "b" and r.neighbours[0].nearest[0][1] == pytest.approx(1.0, abs=1e-3)
    sim = r.position_similarity
    assert sim.shape == (16, 16) and torch.allclose(torch.diagonal(sim), torch.ones(16), atol=1e-5)
    sin = embed(_model("sinusoidal"), TOK)
    assert sin.summary["distance 1"] > sin.summary["distance 8"]  # the fixed table: near positions alike
    for pos in ("rope", "none"):
        r = embed(_model(pos), TOK)
        assert r.position_similarity is None and r.why_no_table
    with pytest.raises(ConfigError, match="'ab' not one token"):
        embed(m, TOK, ["a", "ab"])


def test_embed_runs_on_a_trained_run_and_fits_80_columns(cli, monkeypatch, tmp_path):
    run = train_tiny_run(tmp_path, "run", steps=5)
    monkeypatch.chdir(tmp_path)
    r = terminal(monkeypatch, "embed", "run", "--out", "pos.png")
    assert "token embeddings" in r.out and (tmp_path / "pos.png").exists()
    data = json.loads(cli("embed", run, "--tokens", "e,T", "--json").out)
    assert [n["token"] for n in data["neighbours"]] == ["e", "T"]
    one_line(cli("embed", run, "--tokens", "e,xyz"), 2, "not one token")
