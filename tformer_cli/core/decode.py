"""Decoding one token after another: the model calls of one generation, and the one place that
picks how each cached token is computed (``choose_path``).

The paths (all follow the window policy of core/generate.py, so their tokens agree):

* ``dynamic``: ``model(tok, start_pos=pos, cache=cache)``; attention reads the cached rows
  0..pos only, so its shapes grow by one every token.  Cheapest in arithmetic; on a GPU each token
  pays the launch of every small kernel (a few ms for GPT-2 small), whatever the model's size.
* ``static``: ``decode_step``: the token's position is a device tensor, its keys and values are
  written into the preallocated cache at that position, and attention reads the whole cache with
  the rows past the position masked.  No shape changes and nothing is read back to the host.
* ``graph``: the static step captured once per generation in a CUDA graph and replayed for every
  token: one launch per token instead of hundreds.
* ``recompute``: no cache (``use_cache=False``, or a bidirectional model): every step forwards
  the whole window.

Prefill (the prompt, and the window after a cut) is always the ordinary forward over the window
(SDPA, causal), which fills rows 0..L-1 of the same buffers the static step reads.

Why a hand-written ``torch.cuda.CUDAGraph`` rather than ``torch.compile(mode="reduce-overhead")``:
the step's shapes are static by construction, so a graph is all that is needed; compiling a
12-layer model costs tens of seconds before the first token, recompiles on new shapes or
settings, and brings its own failure modes, while a captured graph costs a few warm-up steps.
A compiled step *inside* our graph is an option (``compile_step``; `tformer sample --compile-step`,
bench/decode_gpu.py --variants): inductor's fused kernels, still replayed by one launch per token.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from tformer_cli.core.device import varying_shape_attention
from tformer_cli.core.model import GPT, Block, CausalSelfAttention, KVCache

PATHS = ("auto", "graph", "static", "dynamic")
GRAPH_WARMUP = 3  # eager runs on a side stream before capture, as torch.cuda.graphs prescribes
# How the static and graph paths compile their step when a call does not say (StaticStepper;
# COMPILE_MODES): generate(compile_step=...) and `sample --compile-step` pick per call, and tests
# change this module setting for every call they make.  Off by default: on an H100 a compiled step
# bought about 1.2x a token in bfloat16 for a compile of 18-34 s before the first (BENCHMARKS.md,
# call 7).
COMPILE_STEP = "off"
COMPILE_MODES = ("off", "block", "whole", "whole-tuned", "whole-gemv")
STATIC_PATHS = ("graph", "static")  # the paths that run the static step, and so compile it
STEP_ATTENTION = ("auto", "sdpa", "matmul")  # how the static step attends (GPT.step_attention)


# ---------------------------------------------------------------- the static step


class StepInputs(NamedTuple):
    """One block's share of the static decode step (decode_step), tensors and a string only, so
    that one compiled block step serves every layer (compiled_step): its layer's keys and values
    (2, B, n_kv, max_len, hs), the position (1,) on the device, the additive mask (1, max_len) of
    that position, how to attend (GPT.step_attention, resolved), and whether to write keys and
    values with one kernel where it can (GPT.paired_kv_write)."""

    kv: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    how: str
    paired: bool


def step_mask(cache: KVCache, dtype: torch.dtype) -> torch.Tensor:
    """(1, max_len) additive mask of the token at ``cache.pos``: 0 on rows 0..pos, -inf past it.
    Additive, made once per step: SDPA would convert a boolean mask again in every layer."""
    return torch.where(cache.key_pos <= cache.pos, 0.0, float("-inf")).to(dtype)


def attend_step(attn: CausalSelfAttention, q, k, v, kv, step: StepInputs) -> torch.Tensor:
    """One token (T = 1) over the whole cache, keys past its position masked: (B, nh, 1, hs).

    Its k, v (B, n_kv, 1, hs) go to row ``step.pos`` of the layer's buffers (one write of
    both where ``kv`` holds them, see CausalSelfAttention._qkv; a write each otherwise), and
    attention reads the whole buffers (rows past pos hold stale keys that the mask hides), so the
    shapes never change from one token to the next.

    Grouped-query attention without repeat_interleave (a copy of the whole cache per layer):
    the g = n_head / n_kv query heads that share a key/value head become g queries of it,
    all at the one position, so one mask serves them all.  ``how`` (GPT.step_attention):
    ``sdpa``, one fused kernel whose choice is PyTorch's; ``matmul``, the formula written
    out (two batched matmuls and a float32 softmax): more launches, but cuBLAS's kernels for a
    single query instead of whatever SDPA picks for it against a masked whole-block cache."""
    if kv is not None:
        step.kv.index_copy_(3, step.pos, kv)
    else:
        step.kv[0].index_copy_(2, step.pos, k)
        step.kv[1].index_copy_(2, step.pos, v)
    k, v, mask, how = step.kv[0], step.kv[1], step.mask, step.how  # (B, n_kv, max_len, hs)
    n_head, n_kv, hs = attn.n_head, attn.n_kv, attn.hs
    B, g = q.size(0), n_head // n_kv
    q = q.reshape(B, n_kv, g, hs)  # (B, n_kv, g, hs): g queries per key/value head
    if how == "sdpa":
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    elif how == "matmul":
        # mask + scale * Q K^T in one baddbmm (the scale applied inside the matmul, the mask
        # as its added input): one launch fewer than a matmul, a multiply and an add
        n, max_len = B * n_kv, k.size(2)
        att = torch.baddbmm(mask, q.reshape(n, g, hs), k.reshape(n, max_len, hs).transpose(1, 2),
                            alpha=1.0 / math.sqrt(hs)).view(B, n_kv, g, max_len)
        y = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype) @ v  # (B, n_kv, g, hs)
    else:
        raise ValueError(f"step_attention must be one of {', '.join(STEP_ATTENTION)}, got {how!r}")
    return y.reshape(B, n_head, 1, hs)


def block_step(block: Block, x: torch.Tensor, rope, step: StepInputs) -> torch.Tensor:
    """One block of the static decode step: a function of tensors (and a string), the block
    passed in, so that torch.compile compiles it once for every layer (compiled_step)."""

    def attend(attn, q, k, v, pair):
        return attend_step(attn, q, k, v, pair if step.paired else None, step)

    return block(x, rope, attend=attend)[0]


def resolved_step_attention(model: GPT) -> str:
    """GPT.step_attention, with auto resolved by the weights' dtype: the written-out matmuls for
    float32, SDPA otherwise.  Measured on an H100 (BENCHMARKS.md, GPT-2 small, CUDA graph): in
    float32, SDPA over the masked whole-block cache takes its memory-efficient kernel at 122 us a
    layer and the step 2.27 ms, the matmuls 1.09 ms; in bfloat16 SDPA takes cuDNN's flash kernel
    (5 us) and is the faster, 0.91 ms against 1.15.  On a CPU the same order held
    (bench/decode_gpu.py --device cpu --small --variants)."""
    if model.step_attention != "auto":
        return model.step_attention
    return "matmul" if model.tok_emb.weight.dtype == torch.float32 else "sdpa"


def decode_step(model: GPT, tok: torch.Tensor, cache: KVCache, run_block: Callable | None = None) -> torch.Tensor:
    """Logits (B, V) of ``model`` after one token ``tok`` (B, 1) at window position ``cache.pos``.

    The static step: its position is a device tensor and it attends over the whole cache with
    later rows masked, so every shape is the same at every token and nothing is read back to the
    host; a CUDA graph can capture it.  The caller sets ``cache.pos`` (and keeps
    ``cache.length``); rows 0..pos-1 must hold the window's keys.  ``run_block`` (default
    block_step) runs one block: compiled_step passes a compiled one.
    """
    x, rope = model.embed(tok, cache.pos)
    mask = step_mask(cache, model.tok_emb.weight.dtype)
    how = resolved_step_attention(model)
    run = run_block or block_step
    for i, block in enumerate(model.blocks):
        x = run(block, x, rope, StepInputs(cache.kv[i], cache.pos, mask, how, model.paired_kv_write))
    return model.logits(x)[:, -1, :]


# ---------------------------------------------------------------- compiled steps


@functools.cache
def _compiled_block_step():
    """block_step under torch.compile (static shapes), made once per process."""
    return torch.compile(block_step, dynamic=False)


def _one_row_addmm(bias, mat1, mat2, beta=1, alpha=1, **_):
    """aten.addmm with one row (batch-1 decoding's linear layers with a bias) as a product and a
    sum over the shared dimension: a reduction inductor fuses with its neighbours (the bias, a
    layer norm before, an activation after) and tunes, where cuBLAS runs a GEMV kernel of its own.
    Arguments as aten.addmm.default's (beta and alpha keywords).  Anything else keeps inductor's
    lowering (NotImplemented)."""
    if mat1.dim() != 2 or mat1.shape[0] != 1 or beta != 1 or alpha != 1:
        return NotImplemented
    out = (mat1.unsqueeze(2).float() * mat2.unsqueeze(0).float()).sum(dim=1) + bias.float()
    return out.to(mat1.dtype)  # float32 products and sums, as inductor's own one-row mm


@functools.cache
def _gemv_backend():
    """Inductor with coordinate-descent tuning and _one_row_addmm among its decompositions (where
    this torch has those internals; otherwise None, and the caller falls back).  One object per
    process: dynamo reuses a compiled step only for the backend that compiled it, so a new one
    per generation would compile every generation again."""
    try:
        from torch._inductor.compile_fx import compile_fx
        from torch._inductor.decomposition import select_decomp_table
    except ImportError:
        return None
    table = {**select_decomp_table(), torch.ops.aten.addmm.default: _one_row_addmm}
    # Inductor's on-disk caches key a graph by its config, not by the decompositions: a graph
    # compiled by whole-tuned (the same config) would be handed to this mode, or this mode's to
    # whole-tuned.  So this mode neither reads nor writes them (a full compile in every process).
    patches = {"coordinate_descent_tuning": True, "force_disable_caches": True}
    return functools.partial(compile_fx, config_patches=patches, decompositions=table)


def compiled_step(model: torch.nn.Module, how: str):
    """The static step (decode_step) of ``model`` compiled ``how``: ``block``, every block through
    one torch.compile'd block_step (static shapes), shared by every layer, generation and model
    in the process; ``whole``, torch.compile of this model's decode_step (fusions across blocks,
    a compile as deep as the model); ``whole-tuned``, the same with inductor's coordinate-descent
    tuning, under which it computes a one-row product without a bias (the head; the attention's
    matmuls) as a fused, tuned reduction instead of a cuBLAS call; ``whole-gemv``, also the
    layers with a bias (_one_row_addmm).  The tuned modes tune kernels as they compile (longer)."""
    step = functools.partial(decode_step, model)
    if how == "whole":
        return torch.compile(step, dynamic=False)
    if how == "whole-tuned":
        return torch.compile(step, dynamic=False, options={"coordinate_descent_tuning": True})
    if how == "whole-gemv":
        backend = _gemv_backend()
        if backend is None:
            return compiled_step(model, "whole-tuned")
        return torch.compile(step, dynamic=False, backend=backend)
    return functools.partial(decode_step, model, run_block=_compiled_block_step())


def _explained(step, how: str):
    """``step`` with a failure of torch.compile (dynamo's or inductor's, raised at the first call,
    where it compiles) turned into one line that names the mode and the way out."""
    from torch._dynamo.exc import TorchDynamoException

    from tformer_cli.errors import RunError

    def call(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except TorchDynamoException as e:
            cause = getattr(e, "inner_exception", None) or e  # BackendCompilerFailed: what the compiler raised
            first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), type(cause).__name__)
            raise RunError(f"compiling the decode step ({how}) failed: {first[:300]}",
                           hint="run without --compile-step (or compile_step='off'); TFORMER_DEBUG=1 shows "
                                "the traceback") from e

    return call


def uses_cache(model: torch.nn.Module, use_cache: bool = True) -> bool:
    """Whether generation will reuse state between steps: a KV cache (causal GPT) or the LSTM state.

    A bidirectional GPT (model.causal=false) cannot: its keys for old tokens change whenever a
    new token arrives, so every step recomputes the window.
    """
    return use_cache and model.supports_cache


def decode_problems(requested: str) -> list[str]:
    """Every problem with a requested decode path (empty when it is one of PATHS)."""
    return [] if requested in PATHS else [f"decode must be one of {', '.join(PATHS)}, got {requested!r}"]


def choose_path(model: torch.nn.Module, requested: str = "auto", use_cache: bool = True) -> str:
    """The path a generation takes: graph, static, dynamic or recompute.

    ``auto`` is the CUDA graph on a CUDA device and the dynamic path elsewhere (on a CPU the
    static step attends over the whole block and is not faster: docs/sample.md).  A request the
    model or device cannot honour falls back rather than fails: a model without a static step
    (the LSTM) decodes dynamically, and a graph asked for off CUDA runs the static step eagerly.
    """
    if not uses_cache(model, use_cache):
        return "recompute"
    if not getattr(model, "supports_static_step", False):
        return "dynamic"
    on_cuda = next(model.parameters()).device.type == "cuda"
    if requested == "auto":
        return "graph" if on_cuda else "dynamic"
    if requested == "graph" and not on_cuda:
        return "static"
    return requested


def path_label(model: torch.nn.Module, path: str) -> str:
    """How output names a path: CUDA graph, static cache, dynamic cache (LSTM state), recompute."""
    if path == "dynamic" and model.cache_name != "KV cache":
        return model.cache_name
    return {"graph": "CUDA graph", "static": "static cache", "dynamic": "dynamic cache"}.get(path, path)


def compile_mode(compile_step: str | None, path: str = "static") -> str:
    """How a generation along ``path`` compiles its step: ``compile_step``, or COMPILE_STEP for
    None; off on a path without the static step."""
    if path not in STATIC_PATHS:
        return "off"
    return COMPILE_STEP if compile_step is None else compile_step


def compile_problems(compile_step: str | None) -> list[str]:
    """Every problem with a requested compile mode (None: the module's COMPILE_STEP)."""
    if compile_step is None or compile_step in COMPILE_MODES:
        return []
    return [f"compile_step must be one of {', '.join(COMPILE_MODES)}, got {str(compile_step)[:40]!r}"]


def make_stepper(model: torch.nn.Module, path: str, compile_step: str | None = None) -> "Stepper":
    """The model calls of one generation along ``path`` (see choose_path); the static and graph
    paths' step compiled ``compile_step`` (default COMPILE_STEP; the other paths ignore it)."""
    if path in STATIC_PATHS:
        return {"graph": GraphStepper, "static": StaticStepper}[path](model, True, compile_step)
    return Stepper(model, path != "recompute")


class Stepper:
    """The dynamic path: a prefill over a window, or one token after the cache (none: recompute)."""

    def __init__(self, model, cached: bool):
        self.model = model
        p = next(model.parameters())
        self.device = p.device
        self.cache = model.new_cache(1, self.device, p.dtype) if cached else None

    def prefill(self, window: list[int]) -> torch.Tensor:
        """Logits (1, V) after ``window`` at positions 0..len-1, (re)building the cache.  Its
        length differs from one generation (or window cut) to the next: attention through the
        kernels that need no build per shape (core/device.varying_shape_attention)."""
        idx = torch.tensor([window], dtype=torch.long, device=self.device)  # (1, T)
        if self.cache is not None:
            self.cache.reset()
        with varying_shape_attention(self.device):
            return self.model(idx, cache=self.cache, last_only=True).logits[:, -1, :]

    def extend(self, tok: torch.Tensor, pos: int) -> torch.Tensor:
        """Logits (1, V) after one more token ``tok`` (1, 1) at window position ``pos``: the cache
        grows by a row each token, a new shape each time (as prefill)."""
        with varying_shape_attention(self.device):
            return self.model(tok, start_pos=pos, cache=self.cache, last_only=True).logits[:, -1, :]


class StaticStepper(Stepper):
    """The static step (decode_step), run eagerly; prefill is the dynamic one.

    compile_step (default COMPILE_STEP; see compiled_step): ``block`` or ``whole`` runs the step
    through torch.compile in the default mode: inductor fuses its small kernels, and no
    cudagraphs of its own (``reduce-overhead``), since GraphStepper captures the compiled step in
    its graph.  ``block`` compiles one block and every layer reuses it (one graph for the whole
    model, tested), so its compile does not grow with depth; the embedding, mask and head stay
    eager.  Inside a CUDA graph both modes replay inductor's kernels without the host's cost per
    compiled call, which is what the option is for.  Every step has the same shapes, so neither
    recompiles within a generation, and later generations reuse the code.
    """

    def __init__(self, model, cached: bool, compile_step: str | None = None):
        super().__init__(model, cached)
        how = compile_mode(compile_step)
        if problems := compile_problems(how):
            raise ValueError(problems[0])
        eager = functools.partial(decode_step, model)
        self.step = eager if how == "off" else _explained(compiled_step(model, how), how)

    def extend(self, tok: torch.Tensor, pos: int) -> torch.Tensor:
        self._place(pos)
        return self.step(tok, self.cache)

    def _place(self, pos: int) -> None:
        """The next token goes to window position ``pos``: the step reads it from the device."""
        self.cache.pos.fill_(pos)  # a scalar kernel argument: no host sync
        self.cache.length = pos + 1


class GraphStepper(StaticStepper):
    """The static step captured in a CUDA graph at the first cached token, replayed for every one.

    The graph reads its inputs from fixed tensors (``self.tok``, ``cache.pos``) and writes the
    logits into one fixed output tensor, which the next replay overwrites: the caller samples
    from it before asking for the next token (core/generate.py does).
    """

    def __init__(self, model, cached: bool, compile_step: str | None = None):
        super().__init__(model, cached, compile_step)
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def extend(self, tok: torch.Tensor, pos: int) -> torch.Tensor:
        self.tok.copy_(tok)
        self._place(pos)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        """Warm up on a side stream, then capture one step (torch.cuda.graphs' recipe).

        The warm-up steps run for real: they write this token's keys at row ``pos``, which the
        replay then writes again with the same values, and nothing else.  A compiled step
        compiles in the first of them, so the capture records inductor's kernels."""
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP):
                    self.step(self.tok, self.cache)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self.step(self.tok, self.cache)
