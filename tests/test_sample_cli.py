"""`tformer sample`: streaming, JSON, seeds, --bench, and every bad input as a one-line error."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

from conftest import TINY, run_cli
from tformer_cli.core.config import from_dict
from tformer_cli.core.data import BPETokenizer, CharTokenizer
from tformer_cli.core.model import build_model
from tformer_cli.run import checkpoint

CHARS = "\n !',.?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny per-token ops, one thread


def save_run(run_dir, chars=CHARS, **sections):
    """A run directory holding a random-init model: config.yaml, tokenizer.json, checkpoint."""
    data = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        data[section].update(values)
    cfg = from_dict(data)
    tok = CharTokenizer(chars)
    vocab = tok.vocab_size + (1 if cfg.train.objective == "mlm" else 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab)
    run_dir.mkdir(parents=True)
    checkpoint.save(run_dir, model, None, cfg, vocab, {"step": 0})
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    (run_dir / "tokenizer.json").write_text(json.dumps(tok.to_json()))
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("sample") / "run")


def one_line_error(r, code, *words):
    assert r.code == code, r
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, r.err  # error + optional hint
    assert "Traceback" not in r.err + r.out
    for w in words:
        assert w in lines[0], r.err


def test_streams_text_and_reports_speed(run):
    writes = []

    class Recorder(io.StringIO):
        def write(self, s):
            writes.append(s)
            return super().write(s)

    out, err = Recorder(), io.StringIO()
    from tformer_cli.cli.app import main

    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(["sample", str(run), "--prompt", "The ", "--max-new-tokens", "30", "--seed", "1", "--device", "cpu"])
    assert e.value.code == 0, err.getvalue()
    assert out.getvalue().startswith("The ") and len(out.getvalue()) == len("The ") + 30 + 1  # + final newline
    assert len([w for w in writes if w]) >= 30  # one write per token: streamed, not printed at the end
    assert "30 new tokens" in err.getvalue() and "tokens/s" in err.getvalue()
    assert "time to first token" in err.getvalue() and "dynamic cache" in err.getvalue()  # auto on a CPU


def test_same_seed_same_text(run):
    a = run_cli("sample", run, "--prompt", "Hi", "--max-new-tokens", "25", "--seed", "3")
    b = run_cli("sample", run, "--prompt", "Hi", "--max-new-tokens", "25", "--seed", "3")
    c = run_cli("sample", run, "--prompt", "Hi", "--max-new-tokens", "25", "--seed", "4")
    assert a.code == b.code == c.code == 0
    assert a.out == b.out != c.out


def test_json_has_samples_and_figures(run):
    r = run_cli("sample", run, "--prompt", "ab", "--max-new-tokens", "12", "--num-samples", "2", "--seed", "0",
                "--json")
    assert r.code == 0, r
    d = json.loads(r.out)
    assert len(d["samples"]) == 2 and d["samples"][0]["text"] != d["samples"][1]["text"]
    s = d["samples"][0]
    assert s["new_tokens"] == 12 and len(s["tokens"]) == 12 and len(s["text"]) == 12
    assert s["tokens_per_s"] > 0 and s["time_to_first_token_s"] > 0
    assert d["total"]["new_tokens"] == 24 and d["kv_cache"] is True and d["seed"] == 0


def test_greedy_with_and_without_cache_agree_past_block_size(run):
    args = ("sample", run, "--prompt", "Hello", "--max-new-tokens", "40", "--temperature", "0", "--json")
    cached, recompute = run_cli(*args), run_cli(*args, "--no-kv-cache")
    assert cached.code == recompute.code == 0
    assert json.loads(cached.out)["samples"][0]["tokens"] == json.loads(recompute.out)["samples"][0]["tokens"]
    assert json.loads(recompute.out)["kv_cache"] is False


def test_bench_reports_both_paths(run):
    r = run_cli("sample", run, "--bench", "--max-new-tokens", "20", "--json", "--seed", "1", "--device", "cpu")
    assert r.code == 0, r
    d = json.loads(r.out)
    assert d["identical"] and d["new_tokens"] == 20 and d["speedup"] > 0
    assert d["cached"]["tokens_per_s"] > 0 and d["recompute"]["tokens_per_s"] > 0
    assert d["sliding"]["tokens_per_s"] > 0 and d["speedup_vs_sliding"] > 0
    assert (d["path"], d["path_label"], d["decode"]) == ("dynamic", "dynamic cache", "auto")
    assert d["cached"]["ms_per_token"] == pytest.approx(1000 / d["cached"]["tokens_per_s"])
    r = run_cli("sample", run, "--bench", "--max-new-tokens", "20", "--device", "cpu")
    assert r.code == 0 and "dynamic cache" in r.out and "recompute" in r.out and "speed-up" in r.out
    assert "sliding crop (nanoGPT-style)" in r.out and "ms/token" in r.out


def test_decode_paths_give_the_same_tokens(run):
    """--decode static (and graph, which falls back to the static step off CUDA) = dynamic."""
    args = ("sample", run, "--prompt", "Hello", "--max-new-tokens", "40", "--seed", "4", "--top-k", "5", "--json",
            "--device", "cpu")
    runs = {d: json.loads(run_cli(*args, "--decode", d).out) for d in ("dynamic", "static", "graph")}
    assert [r["decode_path"] for r in runs.values()] == ["dynamic", "static", "static"]
    tokens = [r["samples"][0]["tokens"] for r in runs.values()]
    assert tokens[0] == tokens[1] == tokens[2]
    r = run_cli("sample", run, "--bench", "--max-new-tokens", "20", "--decode", "static", "--device", "cpu")
    assert r.code == 0 and "static cache" in r.out and "same tokens: yes" in r.out, r
    r = run_cli("sample", run, "--max-new-tokens", "5", "--decode", "static", "--device", "cpu")
    assert r.code == 0 and "static cache" in r.err


def test_bad_decode_options_are_usage_errors(run):
    r = run_cli("sample", run, "--prompt", "x", "--decode", "fast")
    assert r.code == 2 and "--decode must be one of auto, graph, static, dynamic, got 'fast'" in r.err, r
    r = run_cli("sample", run, "--prompt", "x", "--decode", "static", "--no-kv-cache")
    assert r.code == 2 and "--no-kv-cache recomputes every token" in r.err, r


def test_bad_compile_options_are_usage_errors(run, tmp_path):
    """--compile-step: an unknown mode, a generation without a cache, a path without a static step
    (auto on a CPU is the dynamic cache) and a model without one (bidirectional: recomputes; an
    LSTM: its state) are refused before any token, in one line that says why."""
    r = run_cli("sample", run, "--prompt", "x", "--compile-step", "fast", "--device", "cpu")
    one_line_error(r, 2, "--compile-step must be one of off, block, whole, whole-tuned, whole-gemv, got 'fast'")
    r = run_cli("sample", run, "--prompt", "x", "--compile-step", "whole", "--no-kv-cache", "--device", "cpu")
    one_line_error(r, 2, "there is no cached step for --compile-step to compile")
    r = run_cli("sample", run, "--prompt", "x", "--compile-step", "whole", "--device", "cpu")
    one_line_error(r, 2, "--compile-step compiles the static decode step", "takes the dynamic path")
    assert "add --decode static" in r.err
    for model, words in (({"causal": False}, "a bidirectional model (model.causal=false) recomputes"),
                         ({"arch": "lstm"}, "which this model does not have (it decodes with its LSTM state)")):
        other = save_run(tmp_path / model.get("arch", "bidirectional"), model=model)
        r = run_cli("sample", other, "--prompt", "x", "--compile-step", "whole", "--decode", "static",
                    "--device", "cpu")
        one_line_error(r, 2, words)
        assert "drop --compile-step" in r.err


@pytest.mark.slow  # inductor compiles the block on the CPU (C++): several seconds
def test_a_compiled_step_gives_the_same_tokens_and_says_so(run):
    """--compile-step block on the static path: the tokens of the eager step, the compile named
    in the speed line, the JSON and --bench, and the warm-up (where it compiles) reported."""
    args = ("sample", run, "--prompt", "Hello", "--max-new-tokens", "30", "--seed", "4", "--top-k", "5",
            "--device", "cpu", "--decode", "static")
    eager = json.loads(run_cli(*args, "--json").out)
    compiled = run_cli(*args, "--json", "--compile-step", "block")
    assert compiled.code == 0, compiled
    compiled = json.loads(compiled.out)
    assert compiled["compile_step"] == "block" and eager["compile_step"] == "off"
    assert compiled["samples"][0]["tokens"] == eager["samples"][0]["tokens"]
    r = run_cli(*args, "--compile-step", "block")
    assert r.code == 0 and "static cache, step compiled block" in r.err, r
    assert "note: compiling the decode step (block) before the first token" in r.err  # said before the wait
    r = run_cli("sample", run, "--bench", "--max-new-tokens", "20", "--decode", "static", "--device", "cpu",
                "--compile-step", "block", "--json")
    d = json.loads(r.out)
    assert d["compile_step"] == "block" and d["identical"] and d["warmup_s"] > 0
    r = run_cli("sample", run, "--bench", "--max-new-tokens", "20", "--decode", "static", "--device", "cpu",
                "--compile-step", "block")
    assert r.code == 0 and "warm-up before the timed run:" in r.out and "the step compiled block" in r.out, r


def test_prompt_from_stdin_and_file(run, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("From stdin "))
    r = run_cli("sample", run, "--max-new-tokens", "3")
    assert r.code == 0 and r.out.startswith("From stdin "), r
    f = tmp_path / "p.txt"
    f.write_text("From a file ")
    r = run_cli("sample", run, "--prompt-file", f, "--max-new-tokens", "3")
    assert r.code == 0 and r.out.startswith("From a file "), r


def test_empty_prompt_starts_from_newline(run):
    r = run_cli("sample", run, "--prompt", "", "--max-new-tokens", "5", "--json")
    assert r.code == 0 and json.loads(r.out)["prompt"] == "\n" and "newline" in r.err, r


def test_empty_prompt_without_newline_uses_token_zero(tmp_path):
    run = save_run(tmp_path / "run", chars="abc")
    r = run_cli("sample", run, "--prompt", "", "--max-new-tokens", "5", "--json")
    assert r.code == 0 and json.loads(r.out)["prompt"] == "a" and "token 0 ('a')" in r.err, r


def test_unknown_characters_are_listed_or_skipped(run):
    r = run_cli("sample", run, "--prompt", "Caf\u00e9 \u20ac1", "--max-new-tokens", "3")
    one_line_error(r, 2, "3 character(s)", "'1'", "'\u00e9'", "'\u20ac'")
    assert "--skip-unknown" in r.err
    r = run_cli("sample", run, "--prompt", "Caf\u00e9 \u20ac1", "--max-new-tokens", "3", "--skip-unknown")
    assert r.code == 0 and r.out.startswith("Caf "), r
    assert "dropped 3 unknown" in r.err


def test_missing_run_directory(tmp_path, monkeypatch):
    one_line_error(run_cli("sample", tmp_path / "nope", "--prompt", "a"), 1, "run directory not found")

    class NeverRead(io.StringIO):  # a piped stdin: the run is checked before stdin is read
        def isatty(self):
            return False

        def read(self, *a):
            raise AssertionError("stdin read before the run directory was checked")

    monkeypatch.setattr(sys, "stdin", NeverRead())
    one_line_error(run_cli("sample", tmp_path / "nope"), 1, "run directory not found")


def test_directory_without_checkpoint(tmp_path):
    one_line_error(run_cli("sample", tmp_path, "--prompt", "a"), 1, "no checkpoint")


def test_truncated_checkpoint(run, tmp_path):
    bad = save_run(tmp_path / "run")
    path = bad / checkpoint.CKPT_NAME
    path.write_bytes(path.read_bytes()[:-100])
    one_line_error(run_cli("sample", bad, "--prompt", "a"), 1, "corrupt or truncated")


def test_garbage_checkpoint(tmp_path):
    bad = save_run(tmp_path / "run")
    (bad / checkpoint.CKPT_NAME).write_bytes(b"not a checkpoint at all")
    one_line_error(run_cli("sample", bad, "--prompt", "a"), 1, "corrupt or truncated")


def test_tensors_not_matching_config(tmp_path):
    bad = save_run(tmp_path / "run")
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = bad / checkpoint.CKPT_NAME
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["model.blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    save_file(tensors, str(path), metadata=meta)
    one_line_error(run_cli("sample", bad, "--prompt", "a"), 1, "does not match its config",
                   "blocks.0.attn.qkv.weight")


def test_tokenizer_from_another_run(tmp_path):
    bad = save_run(tmp_path / "run")
    (bad / "tokenizer.json").write_text(json.dumps(CharTokenizer("abc").to_json()))
    one_line_error(run_cli("sample", bad, "--prompt", "a"), 1, "tokenizer.json")


def test_masked_lm_refuses_to_generate(tmp_path):
    run = save_run(tmp_path / "run", model={"causal": False}, train={"objective": "mlm"})
    one_line_error(run_cli("sample", run, "--prompt", "a"), 2, "masked language model",
                   "no next-token distribution")


def test_bidirectional_model_generates_and_warns_once(tmp_path):
    run = save_run(tmp_path / "run", model={"causal": False})
    r = run_cli("sample", run, "--prompt", "a", "--max-new-tokens", "20", "--num-samples", "2")
    assert r.code == 0, r
    assert r.err.count("warning") == 1 and "future tokens" in r.err
    assert "recompute" in r.err


@pytest.mark.parametrize("args, words", [
    (["--temperature", "-1"], "--temperature"),
    (["--top-k", "0"], "--top-k"),
    (["--top-p", "2"], "--top-p"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--num-samples", "0"], "--num-samples"),
    (["--prompt-file", "/nonexistent/p.txt"], "--prompt-file"),
    (["--prompt-file", "x", "--prompt", "a"], "not both"),
])
def test_bad_options_are_usage_errors(run, args, words):
    one_line_error(run_cli("sample", run, *args), 2, words)


def test_bpe_stream_decodes_split_characters():
    from tformer_cli.core.prompt import IncrementalDecoder

    tok = BPETokenizer.train("plain ascii text only, nothing else here\n" * 20, 270)
    text = "h\u00e9llo \u2603 w\u00f6rld"
    ids = tok.encode(text)
    assert len(ids) > len(text.encode("utf-8")) // 2  # unseen bytes stay single-byte tokens
    dec = IncrementalDecoder(tok, ids[:1])
    pieces = [dec.push(t) for t in ids[1:]]
    assert tok.decode(ids[:1]) + "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_help_explains_the_window():
    r = run_cli("sample", "--help")
    assert r.code == 0 and "block_size // 2" in r.out and "rebuilt" in r.out and "xample" in r.out



def test_sample_a_run_from_tformer_train(cli, tiny_yaml, tmp_path):
    run = tmp_path / "trained"
    assert cli("train", tiny_yaml, "--out", run, "--steps", "10", "--json").code == 0
    r = cli("sample", run, "--prompt", "The ", "--max-new-tokens", "40", "--seed", "1")
    assert r.code == 0 and r.out.startswith("The ") and len(r.out) == len("The ") + 40 + 1, r
    assert "40 new tokens" in r.err and "tokens/s" in r.err


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_sets_the_weights_and_the_cache_and_is_reported(run, dtype):
    """--dtype casts the weights (the KV cache follows them) and says so.  This model's weights are
    large (its candidates far apart), so its cached greedy tokens still match recomputation's: a
    check that both paths run in the dtype, not a promise for every model (docs/sample.md)."""
    args = ("sample", run, "--prompt", "Hello", "--max-new-tokens", "40", "--temperature", "0", "--json",
            "--dtype", dtype)
    cached, recompute = run_cli(*args), run_cli(*args, "--no-kv-cache")
    assert cached.code == recompute.code == 0, cached
    c, r = json.loads(cached.out), json.loads(recompute.out)
    assert c["dtype"] == r["dtype"] == dtype
    assert c["samples"][0]["tokens"] == r["samples"][0]["tokens"]
    on_cpu = ("--dtype", dtype, "--device", "cpu")
    b = run_cli("sample", run, "--bench", "--max-new-tokens", "20", "--decode", "static", *on_cpu)
    assert b.code == 0 and f"cpu, {dtype}" in b.out and "same tokens: yes" in b.out, b
    s = run_cli("sample", run, "--prompt", "x", "--max-new-tokens", "3", *on_cpu)
    assert s.code == 0 and f"cpu, {dtype}" in s.err, s


def test_dtype_is_float32_by_default(run):
    r = run_cli("sample", run, "--prompt", "x", "--max-new-tokens", "3", "--json")
    assert r.code == 0 and json.loads(r.out)["dtype"] == "float32", r


def test_bfloat16_on_a_gpu_without_it_is_refused(monkeypatch):
    """--dtype and train.dtype alike (core/device.py resolve_dtype): a usage error naming what asked."""
    from tformer_cli.core.device import resolve_dtype
    from tformer_cli.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="--dtype: bfloat16 is not supported on this GPU"):
        resolve_dtype("bfloat16", torch.device("cuda"), what="--dtype")
    with pytest.raises(ConfigError, match="train.dtype: bfloat16 is not supported on this GPU"):
        resolve_dtype("bfloat16", torch.device("cuda"))
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32
    assert resolve_dtype("float16", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_bad_dtype_is_a_usage_error(run):
    one_line_error(run_cli("sample", run, "--prompt", "x", "--dtype", "float64"), 2,
                   "--dtype must be one of float32, bfloat16, float16")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sample_in_bfloat16_takes_the_graph_in_that_dtype(run):
    """On a CUDA GPU, --dtype bfloat16 runs the graph path in bfloat16 (float32 by default)."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    r = run_cli("sample", run, "--bench", "--max-new-tokens", "40", "--device", "cuda", "--json", "--seed", "1",
                "--dtype", "bfloat16")
    assert r.code == 0, r
    d = json.loads(r.out)
    assert d["dtype"] == "bfloat16" and d["path"] == "graph" and d["identical"], d
    f = run_cli("sample", run, "--prompt", "Hi", "--max-new-tokens", "5", "--device", "cuda", "--json")
    assert f.code == 0 and json.loads(f.out)["dtype"] == "float32", f


def test_bench_explains_a_disagreement_in_half_precision_and_not_in_float32():
    from rich.console import Console

    from tformer_cli.core.generate import CacheBench, Speed
    from tformer_cli.render.sample import show_cache_bench

    cfg = from_dict({k: dict(v) for k, v in TINY.items()}).model
    s = Speed(20, 0.001, 1000.0, 0.02)
    for identical, dtype, expected in [(False, "bfloat16", "same tokens: no (bfloat16 rounds the two paths'"),
                                       (False, "float32", "same tokens: no\n"),
                                       (True, "float16", "same tokens: yes\n")]:
        out = io.StringIO()
        r = CacheBench(20, 4, cfg.block_size, True, s, s, identical, path="static", path_label="static cache")
        show_cache_bench(Console(file=out, width=200), r, cfg, "cpu", dtype)
        assert expected in out.getvalue(), out.getvalue()
