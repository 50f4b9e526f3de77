"""`tformer ffn` (inside/ffn.py): FFN neurons as key-value memories."""

from __future__ import annotations

import json

import torch

from conftest import one_line, terminal, train_tiny_run
from tformer_cli.core.config import ModelConfig
from tformer_cli.core.data import CharTokenizer
from tformer_cli.core.model import GPT
from tformer_cli.inside.ffn import ffn

TOK = CharTokenizer.train("abcdefgh ")


def test_a_neuron_that_fires_only_on_one_token_is_found_with_that_token_as_its_key():
    torch.manual_seed(0)
    m = GPT(ModelConfig(d_model=16, n_layer=1, n_head=2, block_size=16, activation="relu", bias=False),
            TOK.vocab_size).eval()
    a = TOK.encode("a")[0]
    with torch.no_grad():  # neuron 3 reads the embedding of "a" only, strongly; its value writes "h"'s unembedding
        m.blocks[0].ffn.w1.weight.mul_(0.01)
        m.blocks[0].ffn.w1.weight[3] = 50 * m.tok_emb.weight[a] / m.tok_emb.weight[a].norm()
        m.blocks[0].ffn.w2.weight[:, 3] = 5 * m.lm_head.weight[TOK.encode("h")[0]]
    r = ffn(m, TOK, TOK.encode("bcadbcadbcad"), [0], "a test")
    top = r.neurons[0]
    assert (top.layer, top.neuron) == (0, 3)
    assert top.keys[0][1] == "a" and top.values[0][0] == "h"


def test_ffn_runs_on_a_trained_run_and_fits_80_columns(cli, monkeypatch, tmp_path):
    run = train_tiny_run(tmp_path, "run", steps=5)
    monkeypatch.chdir(tmp_path)
    r = terminal(monkeypatch, "ffn", "run", "--layer", "1")
    assert "key-value memories" in r.out and "validation split" in r.out
    data = json.loads(cli("ffn", run, "--prompt", "The cat sat on the mat.", "--json").out)
    assert data["source"] == "--prompt" and len(data["neurons"]) == 8
    one_line(cli("ffn", run, "--layer", "7"), 2, "--layer 7: the model has layers 0 to 1")
