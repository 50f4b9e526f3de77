"""The generation core: cached == recompute, the window policy, sampling filters, seeds, timing."""

from __future__ import annotations

import pytest
import torch

from tformer_cli.core.config import from_dict
from tformer_cli.core.generate import _sampler, bench_cache, generate, keep_after_cut, timed, uses_cache
from tformer_cli.core.model import build_model
from tformer_cli.errors import ConfigError

BLOCK, VOCAB = 16, 20
POS = ["learned", "sinusoidal", "rope", "none"]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny per-token ops, one thread


def make_model(pos="learned", causal=True, arch="gpt", block=BLOCK, seed=0):
    """A random model with large weights, so attention is sharp and positions change the output."""
    cfg = from_dict({"model": {"arch": arch, "d_model": 32, "n_layer": 2, "n_head": 2, "block_size": block,
                               "pos_encoding": pos, "causal": causal, "tie_weights": False}})
    torch.manual_seed(seed)
    model = build_model(cfg.model, VOCAB)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def run(model, prompt, n, use_cache=True, seed=None, **kw):
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return list(generate(model, prompt, n, generator=g, use_cache=use_cache, **kw))


class Spy:
    """Records (input length, whether a cache/state was passed) and the last logits (V,) of every
    forward call."""

    def __init__(self, model):
        self.calls, self.logits = [], []
        self.handles = [model.register_forward_pre_hook(self.before, with_kwargs=True),
                        model.register_forward_hook(self.after)]

    def before(self, module, args, kwargs):
        self.calls.append((args[0].shape[1], kwargs.get("cache") is not None or kwargs.get("state") is not None))

    def after(self, module, args, out):
        self.logits.append(out.logits[0, -1].clone())

    def close(self):
        for h in self.handles:
            h.remove()


def spied(model, *args, **kw):
    """(tokens, per-step logits (n, V)) of one generation."""
    spy = Spy(model)
    tokens = run(model, *args, **kw)
    spy.close()
    return tokens, torch.stack(spy.logits)


@pytest.mark.parametrize("pos", POS)
def test_cached_equals_recompute_past_block_size(pos):
    model = make_model(pos)
    prompt, n = [1, 2, 3, 4, 5], 3 * BLOCK + 3  # crosses several window cuts
    greedy = run(model, prompt, n, temperature=0)
    assert greedy == run(model, prompt, n, use_cache=False, temperature=0)
    # Sampling exercises many different tokens (greedy on random weights tends to repeat one);
    # the logits of every step are compared too, since a small error need not flip a token.
    sampled, logits = spied(model, prompt, n, seed=3, temperature=1.0)
    assert len(set(sampled)) > 5
    sampled_r, logits_r = spied(model, prompt, n, use_cache=False, seed=3, temperature=1.0)
    assert sampled == sampled_r
    torch.testing.assert_close(logits, logits_r, atol=1e-4, rtol=1e-4)


def expected_lengths(prompt_len, n, cached):
    """Forward input lengths the documented window policy implies."""
    keep, length = keep_after_cut(BLOCK), min(prompt_len, BLOCK)
    out = [length]
    for _ in range(n - 1):
        length += 1
        if length > BLOCK:
            length = keep
            out.append(length)
        else:
            out.append(1 if cached else length)
    return out


@pytest.mark.parametrize("cached", [True, False])
def test_window_policy_is_the_documented_one(cached):
    model = make_model("rope")
    spy = Spy(model)
    run(model, [1, 2, 3, 4, 5], 40, use_cache=cached, temperature=0)
    spy.close()
    assert [length for length, _ in spy.calls] == expected_lengths(5, 40, cached)
    assert all(used == cached for _, used in spy.calls)  # the cached path really uses the cache


def test_reference_loop_agrees():
    """An independent, plain implementation of the policy: full forward over the window each step."""
    model = make_model("sinusoidal")
    window, out = list(range(1, 8)), []
    with torch.no_grad():
        for _ in range(40):
            t = int(model(torch.tensor([window])).logits[0, -1].argmax())
            out.append(t)
            window = window + [t]
            if len(window) > BLOCK:
                window = window[-(BLOCK // 2):]
    assert run(model, list(range(1, 8)), 40, temperature=0) == out


def test_long_prompt_keeps_its_newest_block():
    model = make_model("learned")
    prompt = [i % VOCAB for i in range(3 * BLOCK)]
    for cached in (True, False):
        assert run(model, prompt, 10, use_cache=cached, seed=1) == run(model, prompt[-BLOCK:], 10, seed=1)


def test_lstm_state_is_its_cache():
    model = make_model(arch="lstm")
    spy = Spy(model)
    a = run(model, [1, 2, 3], 2 * BLOCK + 5, seed=2)
    spy.close()
    b, logits_r = spied(model, [1, 2, 3], 2 * BLOCK + 5, use_cache=False, seed=2)
    assert a == b
    torch.testing.assert_close(torch.stack(spy.logits), logits_r, atol=1e-4, rtol=1e-4)
    assert uses_cache(model) and sum(length == 1 for length, _ in spy.calls) > BLOCK


def test_bidirectional_model_recomputes():
    model = make_model(causal=False)
    assert not uses_cache(model, True)
    spy = Spy(model)
    a = run(model, [1, 2, 3], 25, seed=5)
    spy.close()
    assert a == run(model, [1, 2, 3], 25, use_cache=False, seed=5)
    assert not any(used for _, used in spy.calls)


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = make_model()
    greedy = run(model, [1, 2, 3], 30, temperature=0)
    assert run(model, [1, 2, 3], 30, seed=9, temperature=1.5, top_k=1) == greedy
    assert run(model, [1, 2, 3], 30, seed=9, temperature=1.5, top_p=1e-6) == greedy
    assert run(model, [1, 2, 3], 30, seed=9, temperature=1.5) != greedy


def draws(n=300, **kw):
    g = torch.Generator().manual_seed(0)
    sample = _sampler(kw.pop("temperature", 1.0), kw.pop("top_k", None), kw.pop("top_p", None), g)
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05]]))
    return {int(sample(logits)) for _ in range(n)}


def test_top_k_and_top_p_filters():
    assert draws() == {0, 1, 2, 3, 4}
    assert draws(top_k=2) == {1, 3}
    assert draws(top_k=3) == {0, 1, 3}
    assert draws(top_p=0.7) == {1, 3}  # 0.5 + 0.3 reaches 0.7
    assert draws(top_p=0.5) == {1}  # the most likely token alone holds 0.5
    assert draws(top_p=0.85, top_k=2) == {1, 3}  # top-k first, then the nucleus of what is left
    assert draws(temperature=0) == {1}


def test_seed_reproducibility():
    model = make_model()
    assert run(model, [1], 30, seed=4) == run(model, [1], 30, seed=4)
    assert run(model, [1], 30, seed=4) != run(model, [1], 30, seed=5)


def test_generation_is_lazy():
    model = make_model()
    spy = Spy(model)
    it = generate(model, [1, 2], 5)
    assert spy.calls == []  # nothing runs before the first token is asked for
    next(it)
    assert len(spy.calls) == 1
    list(it)
    assert len(spy.calls) == 5  # no forward pass for a token nobody asks for
    spy.close()
    assert list(generate(model, [1], 0)) == []


@pytest.mark.parametrize("kw, words", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(prompt=[]), "empty"),
    (dict(prompt=[VOCAB]), "token ids"),
    (dict(n=-1), "max_new_tokens"),
])
def test_bad_arguments_fail_before_generation(kw, words):
    model = make_model()
    prompt, n = kw.pop("prompt", [1]), kw.pop("n", 3)
    with pytest.raises(ConfigError, match=words):
        generate(model, prompt, n, **kw)


def test_training_mode_is_refused():
    model = make_model().train()
    with pytest.raises(ConfigError, match="training mode"):
        generate(model, [1], 3)


def test_timed_excludes_the_first_token_from_tokens_per_s():
    ticks = iter([0.0, 1.0, 2.0])  # start, first token, end
    ids, s = timed(iter([5, 6, 7]), clock=lambda: next(ticks))
    assert ids == [5, 6, 7]
    assert (s.new_tokens, s.time_to_first_token_s, s.total_s, s.tokens_per_s) == (3, 1.0, 2.0, 2.0)
    ticks = iter([0.0, 0.5, 0.5])
    assert timed(iter([1]), clock=lambda: next(ticks))[1].tokens_per_s is None


def test_bench_cache_reports_both_paths():
    r = bench_cache(make_model(), [1, 2, 3], 2 * BLOCK, warmup=2, temperature=1.0, seed=1)
    assert r.identical and r.cache_used and r.new_tokens == 2 * BLOCK
    assert r.cached.new_tokens == r.recompute.new_tokens == 2 * BLOCK
    assert r.speedup is not None and r.to_dict()["speedup"] == r.speedup
    # the nanoGPT-style baseline (a full forward over the newest block_size tokens per step)
    assert r.sliding.new_tokens == 2 * BLOCK
    assert r.speedup_vs_sliding == r.to_dict()["speedup_vs_sliding"] > 0


def test_sliding_crop_baseline_equals_generation_within_the_first_window():
    """Until the window fills, the baseline and generate() see the same tokens: same greedy output."""
    from tformer_cli.core.generate import _sliding_recompute

    model = make_model()
    n = BLOCK - 3
    greedy = _sampler(0.0, None, None, None)
    assert list(_sliding_recompute(model, [1, 2, 3], n, greedy)) == list(generate(model, [1, 2, 3], n, temperature=0))


def test_callers_grad_mode_is_untouched_between_tokens():
    it = generate(make_model(), [1, 2], 3)
    next(it)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    list(it)
