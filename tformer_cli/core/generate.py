"""Generation: a pure generator of token ids, with a KV cache, and the speed figures around it.

Window policy, shared by the cached and the recompute path so that both condition every
prediction on exactly the same tokens at exactly the same positions (greedy output is then
token-for-token identical):

* The model sees at most ``block_size`` tokens, at window positions ``0 .. L-1``.
* A prompt longer than ``block_size`` is cut to its newest ``block_size`` tokens.
* When appending a sampled token would make the window longer than ``block_size``, the window
  is cut to its newest ``keep = max(1, block_size // 2)`` tokens (the new token included),
  which then sit at positions ``0 .. keep-1``.  The cached path rebuilds its cache with one
  prefill forward over those tokens; the recompute path forwards the whole window every step.

Why halve instead of sliding by one token: with learned or sinusoidal positions every token's
position (and so every cached key) changes when the window slides, so a one-token slide would
cost a full prefill per token.  After a halving cut, the next ``block_size - keep`` tokens are
cheap cached steps again.  An LSTM follows the same policy, its (h, c) state playing the cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import torch

from tformer_cli.core.decode import (
    choose_path,
    compile_mode,
    compile_problems,
    decode_problems,
    make_stepper,
    path_label,
    uses_cache,
)
from tformer_cli.core.device import varying_shape_attention
from tformer_cli.errors import ConfigError


def keep_after_cut(block_size: int) -> int:
    """How many of the newest tokens survive a window cut (see the module docstring)."""
    return max(1, block_size // 2)


def sampling_problems(temperature: float, top_k: int | None, top_p: float | None) -> list[str]:
    """Every problem with the sampling settings (empty when they are valid)."""
    p = []
    if not (math.isfinite(temperature) and temperature >= 0):
        p.append(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        p.append(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not (0 < top_p <= 1):
        p.append(f"top_p must be in (0, 1], got {top_p}")
    return p


def generate(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    decode: str = "auto",
    compile_step: str | None = None,
    overlap: bool | None = None,
) -> Iterator[int]:
    """Yield ``max_new_tokens`` new token ids continuing ``prompt_ids``, one at a time.

    ``model`` (in eval mode) is a GPT or an LSTMLM.  temperature 0 is greedy (argmax); otherwise
    logits / temperature, then top-k, then top-p (nucleus) filtering, then a draw with
    ``generator`` (on the model's device).  ``use_cache=False`` recomputes the whole window at
    every step; both paths follow the window policy of this module, so greedy tokens agree.
    ``decode`` asks for a cached path (core/decode.py: auto, graph, static, dynamic);
    ``compile_step`` compiles the static and graph paths' step (core/decode.py COMPILE_MODES;
    default COMPILE_STEP, off).  ``overlap``: queue the next step before a token is read back
    (see _tokens); None, on the devices of OVERLAP_DEVICES.  Arguments are checked here, before the
    first token is asked for.
    """
    problems = sampling_problems(temperature, top_k, top_p) + decode_problems(decode) + compile_problems(compile_step)
    vocab = model.vocab_size
    if max_new_tokens < 0:
        problems.append(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not prompt_ids:
        problems.append("the prompt is empty: give at least one token id")
    elif not all(0 <= t < vocab for t in prompt_ids):
        problems.append(f"prompt token ids must lie in [0, {vocab})")
    if model.training:
        problems.append("the model is in training mode (dropout on): call model.eval() first")
    if problems:
        raise ConfigError(problems)
    sample = _sampler(temperature, top_k, top_p, generator)
    path = choose_path(model, decode, use_cache)
    return _tokens(model, list(prompt_ids), max_new_tokens, sample, path, compile_step, overlap)


# Devices on which the next token's step is queued before this token is read back (see _tokens).
OVERLAP_DEVICES = ("cuda",)


@torch.inference_mode()
def _tokens(model, window: list[int], n: int, sample, path: str, compile_step: str | None = None,
            overlap: bool | None = None) -> Iterator[int]:
    """The tokens of one generation (the window policy of this module).

    On a GPU each token is read back to the host (the caller wants a Python int), and the read
    waits for the device.  Where the next step needs nothing but that token (a cached step, not a
    window cut, not the last token), the step is queued first and the token read after it: the
    host's per-token work (the read, the caller's use of the token) then overlaps the device's next
    step.  The device runs the same operations in the same order, so the tokens are the same."""
    # torch.inference_mode on a generator function is re-entered at each resume, so the
    # caller's own grad mode is untouched between tokens.
    block = model.cfg.block_size
    keep = keep_after_cut(block)
    window = window[-block:]
    step = make_stepper(model, path, compile_step)
    logits = step.prefill(window)  # (1, V)
    reader = _TokenReader(logits.device, overlap)
    for i in range(n):
        tok = sample(logits)  # (1, 1) on the model's device: fed back without a host copy
        ahead = reader.overlaps and path != "recompute" and i < n - 1 and len(window) < block
        if ahead:  # queue the next step, then read this token
            reader.start(tok)
            logits = step.extend(tok, len(window))
            t = reader.wait()
        else:
            t = int(tok.item())  # the one host sync per token
        yield t
        if i == n - 1:
            return  # no forward for a token nobody will ask for
        window.append(t)
        if ahead:
            continue
        if len(window) > block:
            window = window[-keep:]
            logits = step.prefill(window)
        elif path != "recompute":
            logits = step.extend(tok, len(window) - 1)
        else:
            logits = step.prefill(window)


class _TokenReader:
    """Reads a sampled token back to the host without waiting for work queued after it: a
    copy into pinned memory and an event on CUDA; elsewhere (``overlap`` True, or OVERLAP_DEVICES
    set by a test) the token itself, read when asked for.  ``overlap`` None: on OVERLAP_DEVICES."""

    def __init__(self, device: torch.device, overlap: bool | None = None):
        self.overlaps = device.type in OVERLAP_DEVICES if overlap is None else overlap
        self.cuda = self.overlaps and device.type == "cuda"
        self.tok: torch.Tensor | None = None
        if self.cuda:
            self.host = torch.empty((1, 1), dtype=torch.long, pin_memory=True)
            self.event = torch.cuda.Event()

    def start(self, tok: torch.Tensor) -> None:
        self.tok = tok
        if self.cuda:
            self.host.copy_(tok, non_blocking=True)
            self.event.record()

    def wait(self) -> int:
        if self.cuda:
            self.event.synchronize()
            return int(self.host[0, 0])
        return int(self.tok.item())


def _sampler(temperature: float, top_k: int | None, top_p: float | None,
             generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function logits (1, V) -> token (1, 1), all on the device (no host sync)."""

    def sample(logits: torch.Tensor) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float()
        # Shift so the largest logit is 0 before dividing: a tiny temperature then sends the others
        # to -inf (exp 0), never the largest to +inf (inf / inf = nan in the softmax).
        logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
        if top_k is not None and top_k < logits.size(-1):
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (1, 1) the k-th largest
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            logits = _nucleus(logits, top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)

    return sample


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p
    (Holtzman et al., 2020): a token goes when the tokens ranked above it already hold top_p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # the most likely token has 0 above it: always kept
    drop = mass_above >= top_p
    drop[..., 0] = False  # the most likely token always stays (a top_p below float32's range rounds to 0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


# ---------------------------------------------------------------- speed


@dataclass
class Speed:
    """Figures of one generation.

    time_to_first_token_s: from the first request until the first token arrives (prompt
    processing included).  tokens_per_s: the tokens after the first over the time after the
    first, so prompt processing is excluded (docs/sample.md); None with fewer than two tokens.
    """

    new_tokens: int
    time_to_first_token_s: float | None
    tokens_per_s: float | None
    total_s: float

    @property
    def decode_s(self) -> float:
        return self.total_s - (self.time_to_first_token_s or 0.0)

    @property
    def ms_per_token(self) -> float | None:
        """The latency of one token after the first (1000 / tokens_per_s)."""
        return 1000 / self.tokens_per_s if self.tokens_per_s else None

    def to_dict(self) -> dict:
        return {**asdict(self), "ms_per_token": self.ms_per_token}


def timed(tokens: Iterable[int], on_token: Callable[[int], None] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> tuple[list[int], Speed]:
    """Drain a token iterator, calling ``on_token`` for each, and time it (see Speed)."""
    ids: list[int] = []
    start = clock()
    first = None
    for t in tokens:
        if first is None:
            first = clock() - start
        ids.append(t)
        if on_token is not None:
            on_token(t)
    total = clock() - start
    rate = (len(ids) - 1) / (total - first) if len(ids) > 1 and total > first else None
    return ids, Speed(len(ids), first, rate, total)


def combine(speeds: list[Speed]) -> Speed:
    """Several generations as one: token counts and times summed, time to first token averaged."""
    n = sum(s.new_tokens for s in speeds)
    ttfts = [s.time_to_first_token_s for s in speeds if s.time_to_first_token_s is not None]
    later = sum(max(s.new_tokens - 1, 0) for s in speeds)
    decode = sum(s.decode_s for s in speeds)
    return Speed(n, sum(ttfts) / len(ttfts) if ttfts else None, later / decode if later and decode > 0 else None,
                 sum(s.total_s for s in speeds))


@dataclass
class CacheBench:
    """Cached vs recompute generation of the same tokens from the same prompt."""

    new_tokens: int
    prompt_tokens: int
    block_size: int
    cache_used: bool  # False for a bidirectional model: both paths recompute
    cached: Speed
    recompute: Speed
    identical: bool  # both paths produced the same tokens
    sliding: Speed | None = None  # nanoGPT-style baseline: the newest block_size tokens, every step
    cache_bytes_per_token: int | None = None  # the KV cache's memory per token (batch 1), as allocated
    path: str = "dynamic"  # the cached run's path (core/decode.py): graph, static, dynamic or recompute
    path_label: str = "dynamic cache"  # how output names it: CUDA graph, static cache, ...
    compile_step: str = "off"  # how the static/graph step was compiled (core/decode.py COMPILE_MODES)
    warmup_s: float | None = None  # the cached path's untimed warm-up generation: capture, compile

    @property
    def speedup_vs_sliding(self) -> float | None:
        if self.sliding and self.cached.tokens_per_s and self.sliding.tokens_per_s:
            return self.cached.tokens_per_s / self.sliding.tokens_per_s
        return None

    @property
    def speedup(self) -> float | None:
        if self.cached.tokens_per_s and self.recompute.tokens_per_s:
            return self.cached.tokens_per_s / self.recompute.tokens_per_s
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("cached", "recompute", "sliding"):
            speed = getattr(self, name)
            d[name] = None if speed is None else speed.to_dict()
        d["speedup"] = self.speedup
        d["speedup_vs_sliding"] = self.speedup_vs_sliding
        return d


def bench_cache(model: torch.nn.Module, prompt_ids: list[int], new_tokens: int = 500, *,
                temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                seed: int = 0, warmup: int = 8, decode: str = "auto",
                compile_step: str | None = None) -> CacheBench:
    """Time ``new_tokens`` new tokens with the cache (along the ``decode`` path, core/decode.py,
    its step compiled ``compile_step``) and by recomputation, each after a short warm-up
    generation (untimed; the cached one's seconds are kept: a graph's capture and a step's compile
    happen there), each path drawing from a generator seeded with ``seed``."""
    device = next(model.parameters()).device
    results, warmup_s = {}, None
    for use_cache in (True, False):
        for timed_run, n in ((False, warmup), (True, new_tokens)):
            g = torch.Generator(device=device).manual_seed(seed)
            t0 = time.perf_counter()
            ids, speed = timed(generate(model, prompt_ids, n, temperature=temperature, top_k=top_k, top_p=top_p,
                                        generator=g, use_cache=use_cache, decode=decode, compile_step=compile_step))
            if use_cache and not timed_run:
                warmup_s = time.perf_counter() - t0
        results[use_cache] = (ids, speed)
    path = choose_path(model, decode)
    sliding = None
    if model.cfg.arch == "gpt":
        g = torch.Generator(device=device).manual_seed(seed)
        sample = _sampler(temperature, top_k, top_p, g)
        _, sliding = timed(_sliding_recompute(model, list(prompt_ids), new_tokens, sample))
    return CacheBench(new_tokens, len(prompt_ids), model.cfg.block_size, uses_cache(model),
                      results[True][1], results[False][1], results[True][0] == results[False][0], sliding,
                      _cache_bytes_per_token(model), path, path_label(model, path),
                      compile_mode(compile_step, path), warmup_s)


def _cache_bytes_per_token(model: torch.nn.Module) -> int | None:
    """Bytes per cached position of the model's KV cache (keys and values of every layer; grouped-
    query attention keeps n_kv_head heads, not n_head), in the dtype the cache is allocated in."""
    from tformer_cli.core.anatomy import kv_cache_bytes_per_token

    if not (uses_cache(model) and model.cfg.arch == "gpt"):
        return None
    return kv_cache_bytes_per_token(model.cfg, next(model.parameters()).element_size())


@torch.inference_mode()
def _sliding_recompute(model, ids: list[int], n: int, sample) -> Iterator[int]:
    """The baseline of generation without a cache as nanoGPT does it: at every step a full
    forward pass over the newest block_size tokens (a sliding crop, not this module's
    halving window), the logits of the last position only."""
    device = next(model.parameters()).device
    block = model.cfg.block_size
    for _ in range(n):
        idx = torch.tensor([ids[-block:]], dtype=torch.long, device=device)
        with varying_shape_attention(device):  # the crop grows to block_size: a new length each token
            tok = sample(model(idx, last_only=True).logits[:, -1, :])
        ids.append(int(tok.item()))
        yield ids[-1]
