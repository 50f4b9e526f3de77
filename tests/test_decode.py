"""The decode paths (core/decode.py): the static step and its CUDA graph give the tokens of the
dynamic cache and of recomputation, for every model switch, across window cuts; which path runs."""

from __future__ import annotations

import pytest
import torch

from tformer_cli.core import decode
from tformer_cli.core.config import from_dict
from tformer_cli.core.decode import STEP_ATTENTION
from tformer_cli.core.generate import _sampler, _tokens, bench_cache, generate
from tformer_cli.core.model import build_model
from tformer_cli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny per-token ops, one thread

BLOCK, VOCAB = 16, 20
CONFIGS = {
    "mha learned": {},
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "rope": dict(pos_encoding="rope"),
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "no positions": dict(pos_encoding="none"),
    "qk_norm": dict(qk_norm=True),
    "softcap": dict(logit_softcap=3.0),
    "post-norm rmsnorm": dict(norm_position="post", norm="rmsnorm"),
    "all, rope, gqa, no bias": dict(n_kv_head=2, pos_encoding="rope", qk_norm=True, logit_softcap=5.0,
                                    norm="rmsnorm", activation="swiglu", bias=False),
}
SAMPLING = {"temperature 1": dict(temperature=1.0), "top-k": dict(temperature=0.9, top_k=5),
            "top-p": dict(temperature=1.2, top_p=0.8)}


def make_model(arch="gpt", causal=True, device="cpu", step_attention="sdpa", **switches):
    """A random model with large weights: sharp attention, so positions and masks change the output.
    ``step_attention``: how its static step attends (GPT.step_attention)."""
    cfg = from_dict({"model": {"arch": arch, "d_model": 32, "n_layer": 2, "n_head": 4, "block_size": BLOCK,
                               "causal": causal, "tie_weights": False, **switches}})
    torch.manual_seed(0)
    model = build_model(cfg.model, VOCAB)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    if arch == "gpt":
        model.step_attention = step_attention
    return model.eval().to(device)


def traced(model, prompt, n, path, seed=3, **settings):
    """(tokens, the logits (n, V) each token was drawn from) of one generation along ``path``."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    inner, seen = _sampler(settings.get("temperature", 0.0), settings.get("top_k"), settings.get("top_p"), g), []

    def sample(logits):
        seen.append(logits.float().clone())
        return inner(logits)

    tokens = list(_tokens(model, list(prompt), n, sample, path))
    return tokens, torch.cat(seen)


@pytest.mark.parametrize("attention", STEP_ATTENTION)
@pytest.mark.parametrize("switches", CONFIGS.values(), ids=CONFIGS)
def test_static_greedy_equals_dynamic_and_recompute_across_cuts(switches, attention):
    model = make_model(step_attention=attention, **switches)
    for prompt in ([1, 2, 3, 4, 5], [i % VOCAB for i in range(BLOCK + 7)]):  # short, and cut at once
        n = 3 * BLOCK + 3  # crosses several window cuts
        runs = {p: traced(model, prompt, n, p) for p in ("static", "dynamic", "recompute")}
        assert runs["static"][0] == runs["dynamic"][0] == runs["recompute"][0]
        torch.testing.assert_close(runs["static"][1], runs["recompute"][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", STEP_ATTENTION)
@pytest.mark.parametrize("settings", SAMPLING.values(), ids=SAMPLING)
@pytest.mark.parametrize("name", ["mha learned", "mqa", "all, rope, gqa, no bias"])
def test_static_sampling_equals_dynamic_and_recompute_with_the_same_seed(name, settings, attention):
    model = make_model(step_attention=attention, **CONFIGS[name])
    prompt, n = [3, 1, 4, 1, 5], 3 * BLOCK + 3
    static, logits_s = traced(model, prompt, n, "static", seed=11, **settings)
    dynamic, logits_d = traced(model, prompt, n, "dynamic", seed=11, **settings)
    recompute, logits_r = traced(model, prompt, n, "recompute", seed=11, **settings)
    assert static == dynamic == recompute and len(set(static)) > 3  # many different tokens: draws exercised
    torch.testing.assert_close(logits_s, logits_d, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits_s, logits_r, atol=1e-4, rtol=1e-4)
    g = torch.Generator().manual_seed(11)  # the public API, asked for the static path, agrees too
    assert list(generate(model, prompt, n, generator=g, decode="static", **settings)) == static


@pytest.mark.parametrize("settings", [dict(temperature=0.0), SAMPLING["top-k"]], ids=["greedy", "top-k"])
@pytest.mark.parametrize("path", ["static", "dynamic"])
def test_queuing_the_next_step_before_the_read_changes_no_token(monkeypatch, path, settings):
    """The overlap of generate._tokens (on by default on CUDA, forced here on the CPU): the next
    step is queued before a token is read back; the tokens and every step's logits stay the same,
    across window cuts, and the generation stops after exactly n tokens."""
    from tformer_cli.core import generate as gen

    model = make_model(**CONFIGS["all, rope, gqa, no bias"])
    prompt, n = [3, 1, 4, 1, 5], 3 * BLOCK + 3
    plain, logits_plain = traced(model, prompt, n, path, seed=5, **settings)
    g = torch.Generator().manual_seed(5)  # generate's explicit switch, past OVERLAP_DEVICES
    assert list(generate(model, prompt, n, generator=g, decode=path, overlap=True, **settings)) == plain
    monkeypatch.setattr(gen, "OVERLAP_DEVICES", ("cpu",))
    overlapped, logits_overlapped = traced(model, prompt, n, path, seed=5, **settings)
    assert overlapped == plain and len(plain) == n
    torch.testing.assert_close(logits_overlapped, logits_plain, atol=0, rtol=0)


def test_the_static_path_runs_decode_step_and_prefills_by_forward(monkeypatch):
    model = make_model(pos_encoding="rope")
    calls = {"forward": [], "step": 0}
    model.register_forward_pre_hook(lambda m, args: calls["forward"].append(args[0].shape[1]))
    step = decode.decode_step

    def counted(m, tok, cache):
        calls["step"] += 1
        assert m is model and tok.shape == (1, 1) and cache.pos.shape == (1,)
        return step(m, tok, cache)

    monkeypatch.setattr(decode, "decode_step", counted)
    list(generate(model, [1, 2, 3, 4, 5], 40, temperature=0, decode="static"))
    # 39 tokens fed back: 11 fill the window (5 -> 16), then a cut every 9th (16 -> 8, 8 more steps)
    assert calls["forward"] == [5] + [BLOCK // 2] * 4  # the prompt, then one prefill per cut
    assert calls["step"] == 39 - 4  # every other token is one static step


@pytest.mark.parametrize("attention", STEP_ATTENTION)
def test_static_attention_sees_only_rows_up_to_its_position(attention):
    """Rows past the position hold stale keys after a cut: poisoning them changes nothing."""
    model = make_model(step_attention=attention)
    stepper = decode.make_stepper(model, "static")
    clean = stepper.prefill([1, 2, 3])
    for k in stepper.cache.k + stepper.cache.v:
        k[:, :, 3:] = 1e4
    with torch.inference_mode():
        poisoned = stepper.extend(clean.argmax(-1, keepdim=True), 3)
    fresh = decode.make_stepper(model, "dynamic")
    fresh.prefill([1, 2, 3])
    with torch.inference_mode():
        torch.testing.assert_close(poisoned, fresh.extend(clean.argmax(-1, keepdim=True), 3), atol=1e-5, rtol=1e-5)


def test_an_unknown_step_attention_is_refused():
    model = make_model()
    model.step_attention = "flash"
    with pytest.raises(ValueError, match="step_attention must be one of auto, sdpa, matmul, got 'flash'"):
        list(generate(model, [1, 2, 3], 3, temperature=0, decode="static"))


def test_auto_attention_is_the_matmuls_for_float32_weights_and_sdpa_otherwise():
    """The measured choice (decode.resolved_step_attention), and its tokens are recomputation's."""
    model = make_model(step_attention="auto")
    assert model.step_attention == "auto" and decode.resolved_step_attention(model) == "matmul"
    assert decode.resolved_step_attention(make_model().to(torch.bfloat16)) == "sdpa"
    prompt = [1, 2, 3, 4]
    ref = list(generate(model, prompt, 12, temperature=0, use_cache=False))
    assert list(generate(model, prompt, 12, temperature=0, decode="static")) == ref


def test_path_choice_is_made_in_one_place():
    gpt, lstm, bidi = make_model(), make_model(arch="lstm"), make_model(causal=False)
    assert [decode.choose_path(gpt, p) for p in decode.PATHS] == ["dynamic", "static", "static", "dynamic"]
    assert decode.choose_path(gpt, "static", use_cache=False) == "recompute"
    assert [decode.choose_path(lstm, p) for p in decode.PATHS] == ["dynamic"] * 4  # no static step
    assert decode.choose_path(bidi, "graph") == "recompute"  # never cached
    assert decode.path_label(lstm, "dynamic") == "LSTM state"
    assert [decode.path_label(gpt, p) for p in ("graph", "static", "dynamic", "recompute")] == [
        "CUDA graph", "static cache", "dynamic cache", "recompute"]
    with pytest.raises(ConfigError, match="decode must be one of auto, graph, static, dynamic"):
        generate(gpt, [1], 3, decode="fast")


def test_a_forced_path_the_lstm_cannot_take_falls_back_to_its_state():
    model = make_model(arch="lstm")
    a = list(generate(model, [1, 2, 3], 2 * BLOCK + 5, temperature=0, decode="static"))
    assert a == list(generate(model, [1, 2, 3], 2 * BLOCK + 5, temperature=0, use_cache=False))


def test_bench_reports_the_path_and_its_latency():
    model = make_model()
    r = bench_cache(model, [1, 2, 3], 2 * BLOCK, decode="static", warmup=2)
    assert (r.path, r.path_label, r.identical) == ("static", "static cache", True)
    d = r.to_dict()
    assert d["path"] == "static" and d["cached"]["ms_per_token"] == pytest.approx(1000 / r.cached.tokens_per_s)
    assert bench_cache(model, [1, 2, 3], 4, warmup=1).path == "dynamic"  # auto on a CPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention", STEP_ATTENTION)
@pytest.mark.parametrize("name", ["mha learned", "sinusoidal", "all, rope, gqa, no bias"])
def test_cuda_graph_tokens_equal_recompute(name, attention, monkeypatch):
    """The one path only a GPU can run: captured once, replayed per token, across window cuts."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # training elsewhere may turn it on
    model = make_model(device="cuda", step_attention=attention, **CONFIGS[name])
    assert decode.choose_path(model) == "graph"
    prompt, n = [1, 2, 3, 4, 5], 3 * BLOCK + 3
    graph, logits_g = traced(model, prompt, n, "graph", temperature=1.0)
    recompute, logits_r = traced(model, prompt, n, "recompute", temperature=1.0)
    assert graph == recompute == traced(model, prompt, n, "static", temperature=1.0)[0]
    torch.testing.assert_close(logits_g, logits_r, atol=1e-3, rtol=1e-3)
    g = torch.Generator(device="cuda").manual_seed(5)
    greedy = list(generate(model, prompt, n, temperature=0, generator=g))
    assert greedy == list(generate(model, prompt, n, temperature=0, use_cache=False))


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("how, config", [("block", "all, rope, gqa, no bias"), ("whole-tuned", "mha learned"),
                                         ("whole-gemv", "mha learned")])
def test_cuda_graph_of_a_compiled_step_gives_recomputes_tokens(monkeypatch, how, config):
    """compile_step on its real path: inductor's kernels, compiled in the warm-up, then captured
    (the tuned modes with biases, so that whole-gemv's one-row reductions are in the graph)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(decode, "COMPILE_STEP", how)
    model = make_model(device="cuda", **CONFIGS[config])
    prompt, n = [1, 2, 3, 4, 5], 3 * BLOCK + 3
    graph, logits_g = traced(model, prompt, n, "graph", temperature=1.0)
    recompute, logits_r = traced(model, prompt, n, "recompute", temperature=1.0)
    assert graph == recompute
    torch.testing.assert_close(logits_g, logits_r, atol=1e-3, rtol=1e-3)


@pytest.mark.slow  # inductor compiles the step (C++ on the CPU): about 15 s a mode
@pytest.mark.parametrize("how", ["block", "whole"])
def test_a_compiled_static_step_gives_recomputes_greedy_tokens(monkeypatch, how):
    """compile_step (core/decode.py), on the CPU: the static step compiled by block (one compile
    for every layer) or whole gives the tokens of recomputation across window cuts; compiled once,
    and the next generation reuses it."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = make_model(**CONFIGS["all, rope, gqa, no bias"])
    prompt, n = [1, 2, 3, 4, 5], 2 * BLOCK + 3
    ref = list(generate(model, prompt, n, temperature=0, use_cache=False))
    eager = decode.StaticStepper(model, True).step  # off by default: decode_step itself
    assert (eager.func, eager.args, eager.keywords) == (decode.decode_step, (model,), {})
    monkeypatch.setattr(decode, "COMPILE_STEP", how)
    assert list(generate(model, prompt, n, temperature=0, decode="static")) == ref
    compiled = counters["stats"]["unique_graphs"]
    assert compiled == 1  # by block: one graph for all the layers
    assert list(generate(model, prompt, n, temperature=0, decode="static")) == ref
    assert counters["stats"]["unique_graphs"] == compiled  # no recompilation


@pytest.mark.slow  # inductor compiles the step (C++ on the CPU): about 12 s
def test_the_gemv_compile_computes_the_one_row_layers_as_reductions_and_keeps_the_tokens(monkeypatch):
    """compile_step whole-gemv: every linear layer with a bias (one row at batch 1) goes through
    _one_row_addmm's reduction, not inductor's addmm, and the greedy tokens are recomputation's."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = make_model(**CONFIGS["mha learned"])  # biases on: addmm
    prompt, n = [1, 2, 3, 4, 5], BLOCK + 3
    ref = list(generate(model, prompt, n, temperature=0, use_cache=False))
    taken = []
    real = decode._one_row_addmm

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        taken.append(out is not NotImplemented)
        return out

    monkeypatch.setattr(decode, "_one_row_addmm", spy)
    decode._gemv_backend.cache_clear()  # a backend whose table holds the spy
    with torch._inductor.config.patch(force_disable_caches=True):  # a trace, not a cached graph
        assert list(generate(model, prompt, n, temperature=0, decode="static", compile_step="whole-gemv")) == ref
    assert len(taken) == 4 * len(model.blocks) and all(taken)  # qkv, proj, w1, w2 of every block
    compiled = counters["stats"]["unique_graphs"]
    assert list(generate(model, prompt, n, temperature=0, decode="static", compile_step="whole-gemv")) == ref
    assert counters["stats"]["unique_graphs"] == compiled  # the next generation reuses the compile
    decode._gemv_backend.cache_clear()


def test_a_failed_compile_is_one_line_naming_the_mode_and_the_way_out(monkeypatch):
    """torch.compile fails at the step's first call: a RunError that names the mode, not
    inductor's pages of text (the CLI prints it as one line and exits 1)."""
    from torch._dynamo.exc import BackendCompilerFailed

    from tformer_cli.errors import RunError

    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise BackendCompilerFailed(lambda: None, RuntimeError("no C++ compiler\nmore lines"), None)
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(RunError, match=r"compiling the decode step \(whole\) failed: .*no C\+\+ compiler") as e:
        list(generate(make_model(), [1, 2], 3, temperature=0, decode="static", compile_step="whole"))
    assert "--compile-step" in e.value.hint and "\n" not in str(e.value)


def test_one_row_addmm_is_addmm_and_declines_the_rest():
    bias, w = torch.randn(6), torch.randn(5, 6)
    x = torch.randn(1, 5)
    torch.testing.assert_close(decode._one_row_addmm(bias, x, w), torch.addmm(bias, x, w))
    assert decode._one_row_addmm(bias, torch.randn(2, 5), w) is NotImplemented  # two rows
    assert decode._one_row_addmm(bias, x, w, beta=2) is NotImplemented
    patches = decode._gemv_backend().keywords["config_patches"]  # past inductor's on-disk caches
    assert patches == {"coordinate_descent_tuning": True, "force_disable_caches": True}


def test_generate_refuses_an_unknown_compile_mode():
    with pytest.raises(ConfigError, match="compile_step must be one of"):
        generate(make_model(), [1], 3, compile_step="fast")


def test_an_unknown_compile_mode_is_refused():
    with pytest.raises(ValueError,
                       match="compile_step must be one of off, block, whole, whole-tuned, whole-gemv, got .yes."):
        decode.StaticStepper(make_model(), True, compile_step="yes")


def test_auto_takes_the_cuda_graph_on_a_cuda_device():
    """The choice itself, on a CPU machine: a stand-in model whose parameters sit on 'cuda'."""
    from types import SimpleNamespace

    param = SimpleNamespace(device=SimpleNamespace(type="cuda"))
    on_cuda = SimpleNamespace(supports_cache=True, supports_static_step=True, parameters=lambda: iter([param]))
    assert decode.choose_path(on_cuda, "auto") == "graph"
    assert decode.choose_path(on_cuda, "dynamic") == "dynamic"  # a request is honoured
    assert decode.choose_path(on_cuda, "auto", use_cache=False) == "recompute"


@pytest.mark.parametrize("path", ["dynamic", "static", "recompute"])
def test_the_passes_of_a_new_length_avoid_attention_built_per_shape(monkeypatch, path):
    """Every forward whose length differs from the last (prefill, a dynamic step, recomputation)
    runs inside device.varying_shape_attention (on CUDA in half precision cuDNN's attention builds
    a graph per new shape: hundreds of ms a token); the static step, one shape, keeps the default."""
    import contextlib

    inside, seen = [], []

    @contextlib.contextmanager
    def spy(device):
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    monkeypatch.setattr(decode, "varying_shape_attention", spy)
    model = make_model()
    model.register_forward_pre_hook(lambda m, args: seen.append(("forward", bool(inside))))
    step = decode.decode_step
    monkeypatch.setattr(decode, "decode_step",
                        lambda m, tok, cache: (seen.append(("step", bool(inside))), step(m, tok, cache))[1])
    cached = path != "recompute"
    list(generate(model, [1, 2, 3], 30, temperature=0, decode=path if cached else "auto", use_cache=cached))
    assert {kind for kind, _ in seen} == ({"forward", "step"} if path == "static" else {"forward"})
    assert all(within == (kind == "forward") for kind, within in seen), seen


@pytest.mark.parametrize("name,writes_per_layer", [("mha learned", 1), ("gqa", 1), ("rope", 2), ("qk_norm", 2)])
def test_the_static_step_writes_keys_and_values_with_one_kernel_where_it_can(name, writes_per_layer):
    """A layer's keys and values are the halves of one buffer: where they come straight from the
    projection, one index_copy_ writes both (one launch fewer per layer in the decode step);
    rotated or normed keys are written each on their own.  The cache holds the same rows either way
    (test_static_greedy_equals_dynamic_and_recompute_across_cuts)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        writes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.writes += func is torch.ops.aten.index_copy_.default
            return func(*args, **(kwargs or {}))

    model = make_model(**CONFIGS[name])
    for paired, expected in ((True, writes_per_layer), (False, 2)):  # GPT.paired_kv_write: the A/B's switch
        model.paired_kv_write = paired
        stepper, Count.writes = decode.make_stepper(model, "static"), 0
        with torch.inference_mode():
            stepper.prefill([1, 2, 3])
            with Count():
                stepper.extend(torch.tensor([[4]]), 3)
        assert Count.writes == expected * model.cfg.n_layer


def test_training_takes_no_view_of_the_projection_but_split():
    """The paired view is the static step's only: a training forward's backward would pay a
    zero-filled gradient and an add for each extra view of the qkv output."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Ops.seen.add(func.__name__)
            return func(*args, **(kwargs or {}))

    model = make_model().train()
    x = torch.randint(0, VOCAB, (2, BLOCK))
    with Ops():
        model(x, targets=x).loss.backward()
    assert "permute.default" not in Ops.seen and "zeros.default" not in Ops.seen, sorted(Ops.seen)
