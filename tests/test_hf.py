"""Hugging Face GPT-2 in and out: import, export, round trip, refusals, and the commands that
read an imported run.  Random small GPT2LMHeadModels built by transformers: nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import train_tiny_run

transformers = pytest.importorskip("transformers")

from tformer_cli.run import hf as hfmod  # noqa: E402

TEXT = ("The cat sat on the mat. The dog sat on the log. A bird sang in the tree, and the cat "
        "looked up at the bird while the dog slept. ") * 40


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    return tok


def _hf_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=310, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=None,
               eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg.update(kw)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg))
    with torch.no_grad():  # a random init with non-trivial biases and LayerNorms, so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _hf_folder(path, model, tokenizer=True):
    model.save_pretrained(path)
    if tokenizer:
        _tokenizer().save(str(path / "tokenizer.json"))
    return path


def _ids(n=20, vocab=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, n), generator=g)


def _tformer_logits(run, ids):
    from tformer_cli.run.load import load_for_inference

    model, *_ = load_for_inference(run, "cpu")
    with torch.no_grad():
        return model(ids).logits


def _greedy_hf(model, ids, n):
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids


def _greedy_tformer(run, ids, n):
    from tformer_cli.run.load import load_for_inference

    model, *_ = load_for_inference(run, "cpu")
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids


@pytest.mark.parametrize("kw", [{}, {"activation_function": "relu", "n_inner": 48},
                                {"tie_word_embeddings": False, "n_layer": 3}])
def test_import_gives_the_same_logits_and_greedy_tokens(tmp_path, cli, kw):
    hf = _hf_model(**kw)
    folder = _hf_folder(tmp_path / "hf", hf)
    r = cli("import", folder, "--out", tmp_path / "run")
    assert r.code == 0, r
    ids = _ids()
    with torch.no_grad():
        want = hf(ids).logits
    got = _tformer_logits(tmp_path / "run", ids)
    assert (got - want).abs().max().item() < 1e-4
    assert torch.equal(_greedy_tformer(tmp_path / "run", ids[:, :5], 10), _greedy_hf(hf, ids[:, :5], 10))


@pytest.mark.parametrize("multiple", [1, 64], ids=["unpadded", "vocab padded to 64"])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, cli, tiny_config, multiple):
    tiny_config["model"].update(activation="gelu_tanh", tie_weights=False, vocab_multiple=multiple)
    tiny_config["data"]["tokenizer"] = "bpe"
    tiny_config["data"]["vocab_size"] = 300
    tiny_config["train"]["steps"] = 4
    train_tiny_run(tmp_path, "run", tiny_config)
    r = cli("export", tmp_path / "run", "--format", "hf", "--out", tmp_path / "hf")
    assert r.code == 0, r
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors",
                                                                   "tokenizer.json"]
    assert ("padding rows of the embedding" in " ".join(r.out.split())) == (multiple > 1)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.transformer.wte.weight.shape[0] == hf.lm_head.weight.shape[0] == hf.config.vocab_size
    ids = _ids(n=16, vocab=hf.config.vocab_size)
    with torch.no_grad():
        want = hf(ids).logits
    assert (_tformer_logits(tmp_path / "run", ids) - want).abs().max().item() < 1e-4
    assert torch.equal(_greedy_hf(hf, ids[:, :4], 8), _greedy_tformer(tmp_path / "run", ids[:, :4], 8))


def test_round_trip_import_export_transformers(tmp_path, cli):
    hf = _hf_model(seed=3, n_layer=3, n_embd=48, n_head=6)
    _hf_folder(tmp_path / "in", hf)
    assert cli("import", tmp_path / "in", "--out", tmp_path / "run").code == 0
    assert cli("export", tmp_path / "run", "--out", tmp_path / "out").code == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    ids = _ids(n=30)
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max().item() < 1e-4
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text()) == \
        json.loads((tmp_path / "in" / "tokenizer.json").read_text())


@pytest.fixture
def imported(tmp_path):
    """An imported random GPT-2 (block 32)."""
    from conftest import run_cli

    root = tmp_path / "imported"
    _hf_folder(root / "hf", _hf_model(seed=5))
    assert run_cli("import", root / "hf", "--out", root / "run").code == 0
    return root / "run"


def test_commands_that_read_a_run_work_on_an_imported_run(imported, tmp_path, cli):
    run = imported
    r = cli("sample", run, "--prompt", "The cat", "--temperature", "0", "--max-new-tokens", "40", "--json")
    assert r.code == 0, r
    cached = json.loads(r.out)
    r = cli("sample", run, "--prompt", "The cat", "--temperature", "0", "--max-new-tokens", "40", "--json",
            "--no-kv-cache")
    recomputed = json.loads(r.out)["samples"][0]["tokens"]
    assert recomputed == cached["samples"][0]["tokens"]  # the KV cache is exact, past block_size (32) too
    assert cli("inspect", run).code == 0
    assert cli("attention", run, "--prompt", "The cat sat on the mat", "--out", tmp_path / "a.png").code == 0
    r = cli("heads", run, "--batches", "1", "--context", "16", "--out", tmp_path / "h.png", "--json")
    assert r.code == 0, r
    assert len(json.loads(r.out)["importance"]) == 2
    r = cli("lens", run, "--prompt", "The cat sat", "--out", tmp_path / "l.png", "--json")  # hooks on GPT-2
    assert r.code == 0, r
    lensed = json.loads(r.out)
    assert len(lensed["layers"]) == 3 and abs(lensed["sum"] - lensed["logit"]) < 1e-3
    r = cli("patch", run, "--clean", "The cat", "--corrupt", "The dog", "--out", tmp_path / "p.png", "--json")
    assert r.code == 0, r
    assert abs(json.loads(r.out)["residual"][-1][-1] - 1.0) < 1e-3
    r = cli("embed", run, "--out", tmp_path / "e.png", "--json")
    assert r.code == 0 and len(json.loads(r.out)["position_similarity"]) == 32  # GPT-2's learned table
    r = cli("ffn", run, "--prompt", "The cat sat on the mat", "--json")
    assert r.code == 0 and json.loads(r.out)["neurons"], r
    (tmp_path / "t.txt").write_text(TEXT)
    r = cli("eval", run, "--data", tmp_path / "t.txt", "--causal-consistent", "--max-tokens", "200", "--json")
    assert r.code == 0, r
    e = json.loads(r.out)
    assert e["scored"] == 199 and e["bpb"] > 0
    assert abs(e["causal_consistent_loss"] - e["loss"]) < 1e-4  # causal: no leak to expose


def test_init_from_fine_tunes_an_imported_run(imported, tmp_path, cli):
    (tmp_path / "t.txt").write_text(TEXT)
    before = json.loads(cli("eval", imported, "--data", tmp_path / "t.txt", "--json").out)["loss"]
    r = cli("train", "--init-from", imported, "--data", tmp_path / "t.txt", "--steps", "20", "--set",
            "train.lr=3e-3", "--set", "model.block_size=16", "--set", "train.device=cpu", "--set",
            "train.eval_interval=20", "--out", tmp_path / "ft", "--json")
    assert r.code == 0, r
    after = json.loads(cli("eval", tmp_path / "ft", "--data", tmp_path / "t.txt", "--json").out)["loss"]
    assert after < before  # it learned from the imported weights, with the imported tokenizer
    assert json.loads((tmp_path / "ft" / "tokenizer.json").read_text()) == \
        json.loads((imported / "tokenizer.json").read_text())
    r = cli("train", "--init-from", imported, "--set", "model.n_head=2", "--out", tmp_path / "bad")
    assert r.code == 2 and "model.n_head=2" in r.err and "only model.block_size, model.dropout" in r.err


def test_a_folder_with_only_pickled_weights_is_refused_unread(tmp_path, cli):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04this would run code if unpickled")
    r = cli("import", folder, "--out", tmp_path / "run")
    assert r.code == 2
    assert r.err.splitlines()[0] == (f"error: {folder} has only pickled weights (pytorch_model.bin); tformer "
                                     "never loads a pickle, because unpickling can run code")
    assert not (tmp_path / "run").exists()


def test_hub_name_offline_is_one_clear_line(tmp_path, cli, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without internet, without waiting for DNS
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty hub cache
    r = cli("import", "gpt2", "--out", tmp_path / "run")
    assert r.code == 1
    lines = r.err.splitlines()
    assert lines[0] == ("error: cannot download 'gpt2': the Hugging Face hub is unreachable from this machine "
                        "(offline) and the model is not in the local hub cache")
    assert lines[1].startswith("hint: on a machine with internet, download config.json")


def test_unsupported_architectures_are_refused_naming_what_is_missing(tmp_path, cli):
    folder = _hf_folder(tmp_path / "hf", _hf_model())
    cfg = json.loads((folder / "config.json").read_text())
    for change, expected in [
        ({"model_type": "llama"}, "model_type 'llama' is not GPT-2; tformer's GPT has no RMSNorm"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"activation_function": "silu"}, "activation_function 'silu'"),
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon 1e-06"),
    ]:
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
        r = cli("import", folder, "--out", tmp_path / "run")
        assert r.code == 2 and expected in r.err, (change, r)
    assert not (tmp_path / "run").exists()


def test_export_refuses_a_config_that_does_not_map(tmp_path, cli, tiny_config):
    tiny_config["model"]["pos_encoding"] = "rope"
    tiny_config["train"]["steps"] = 2
    train_tiny_run(tmp_path, "run", tiny_config)
    r = cli("export", tmp_path / "run", "--out", tmp_path / "hf")
    assert r.code == 2
    assert "model.pos_encoding=rope (GPT-2 has learned positions)" in r.err
    assert not (tmp_path / "hf").exists()


def test_weight_names_map_both_ways():
    from tformer_cli.core.model import GPT

    m, vocab = hfmod.config_from_hf(_hf_model().config.to_dict())
    state = GPT(m, vocab).state_dict()
    state.pop("lm_head.weight")
    back = hfmod.hf_to_tformer(hfmod.tformer_to_hf(state), m)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_eval_windows_score_every_token_after_the_first_once():
    import numpy as np

    from tformer_cli.train.score import _batches

    for n, context, batch in ((10, 4, 2), (9, 4, 3), (5, 8, 2), (2, 1, 1)):
        ids = np.arange(n)
        targets = [t for arr in _batches(ids, context, batch) for row in arr for t in row[1:]]
        assert sorted(targets) == list(range(1, n)), (n, context, batch)
