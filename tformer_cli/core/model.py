"""The GPT, one model whose every switch is a ModelConfig field read here, in one place.

Classes in dependency order: positional encodings, KV cache, attention, FFN, block, GPT,
and the LSTM baseline.  Shapes are written as B batch, T time, C = d_model,
nh = n_head, hs = d_k = C / nh, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tformer_cli.core import hooks as _hooks
from tformer_cli.core.config import ModelConfig, head_count_problem
from tformer_cli.core.loss import lm_loss
from tformer_cli.errors import ConfigError

NORM_EPS = 1e-5  # LayerNorm's default, used by every norm of the model


# ---------------------------------------------------------------- positions


def sinusoidal_table(n_pos: int, d: int) -> torch.Tensor:
    """The fixed encoding of Vaswani et al. (2017): sin on even dims, cos on odd dims."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n_pos, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table  # (n_pos, d)


def rope_tables(n_pos: int, hs: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings (Su et al., 2021), rotating pairs (i, i + hs/2)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
    angles = torch.arange(n_pos, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (n_pos, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (n_pos, hs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hs); cos/sin: (T, hs)
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


# ---------------------------------------------------------------- KV cache


class KVCache:
    """Per-layer key/value buffers for generation: (B, n_kv_head, block_size, hs) each, filled left to right.

    The cached tokens occupy positions 0..length-1 of the current window; the model's
    positional encodings use those same positions, so cached and recomputed keys agree.
    A layer's keys and values are the two halves of one buffer ``kv[layer]`` (2, B, n_kv_head,
    block_size, hs), so that the static step writes both with one kernel (core/decode.py).
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, hs: int, device, dtype):
        shape = (2, batch, n_head, max_len, hs)
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.k = [kv[0] for kv in self.kv]
        self.v = [kv[1] for kv in self.kv]
        self.length = 0
        self.max_len = max_len
        # The static step's position, on the device: a CUDA graph replays it without a host value.
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.key_pos = torch.arange(max_len, device=device)[None, :]  # (1, max_len): each buffer row's position

    def reset(self) -> None:
        """Forget the cached positions (the buffers are reused: update() writes from ``length``)."""
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:  # a slice past the buffer would silently drop the write
            raise ValueError(f"KV cache overflow: {end} positions, the cache holds {self.max_len}")
        self.k[layer].narrow(2, start, end - start).copy_(k)
        self.v[layer].narrow(2, start, end - start).copy_(v)
        return self.k[layer].narrow(2, 0, end), self.v[layer].narrow(2, 0, end)


# ---------------------------------------------------------------- attention


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; causal unless config.causal is False (then it is an encoder's)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.d_model, self.causal = cfg.n_head, cfg.kv_heads, cfg.d_model, cfg.causal
        self.hs = cfg.d_k
        # W_Q (d_model x d_model), then W_K and W_V (n_kv_head * d_k each), stacked.
        self.qkv = nn.Linear(cfg.d_model, cfg.d_model + 2 * self.n_kv * self.hs, bias=cfg.bias)
        self.q_norm = nn.RMSNorm(self.hs, eps=NORM_EPS) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.hs, eps=NORM_EPS) if cfg.qk_norm else None
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)  # W_O
        self.dropout = cfg.dropout
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        explicit: bool = False,
        attend: Callable | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """attend (the static decode step, core/decode.py): ``attend(self, q, k, v, pair)`` -> y
        (B, nh, T, hs) attends in place of the attention over the cached positions; ``pair`` is
        the keys and values as one view of the projection's output, or None (see _qkv)."""
        B, T, C = x.shape
        q, k, v, pair = self._qkv(x, rope, paired=attend is not None)
        hooked = _hooks.ACTIVE is not None  # named hook points (core/hooks.py): nothing to do without one
        if hooked:
            q, k, v = (_hooks.apply(f"blocks.{layer}.attn.{n}", t) for n, t in (("q", q), ("k", k), ("v", v)))
            explicit = explicit or _hooks.wants(f"blocks.{layer}.attn.pattern")
        if attend is not None:
            y, weights = attend(self, q, k, v, pair), None
        else:
            y, weights = self._attend(q, k, v, cache, layer, explicit)
        if hooked:  # each head's output before W_O: `tformer heads` masks a head here
            y = _hooks.apply(f"blocks.{layer}.attn.z", y)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        out = self.resid_dropout(self.proj(y))
        return (_hooks.apply(f"blocks.{layer}.attn.out", out) if hooked else out), weights

    def _qkv(self, x: torch.Tensor, rope, paired: bool = False):
        """Queries (B, nh, T, hs), keys and values (B, n_kv, T, hs), normed and rotated; and, when
        ``paired`` (the static step) and neither a norm nor a rotation changed the keys, the keys
        and values as one (2, B, n_kv, T, hs) view of the projection's output (else None).  Only
        the step asks: in training, views of the output other than split's cost its backward a
        zero-filled gradient and an add per view (3.7 ms of a 44 ms eager GPT-2-small step on an H100)."""
        B, T, C = x.shape
        hs, kv = self.hs, self.n_kv * self.hs
        out = self.qkv(x)
        q, k, v = out.split((C, kv, kv), dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, self.n_kv, hs).transpose(1, 2)
        pair = None
        if paired and self.q_norm is None and rope is None:
            pair = out[..., C:].view(B, T, 2, self.n_kv, hs).permute(2, 0, 3, 1, 4)  # (2, B, n_kv, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v, pair

    def _attend(self, q, k, v, cache, layer, explicit) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softmax(QK^T / sqrt(d_k) + M) V over the cached and the new positions: (B, nh, T, hs)."""
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, n_kv, Tk, hs), Tk = cached + T: shared heads only
        if self.n_kv != self.n_head:  # query head i reads key/value head i // (n_head / n_kv)
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        T, Tk = q.size(2), k.size(2)
        if explicit:
            # The readable path: softmax(QK^T / sqrt(d_k) + M) V, with M = -inf above the diagonal.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hs))  # (B, nh, T, Tk)
            if self.causal:
                att = att.masked_fill(_future_mask(T, Tk, q.device), float("-inf"))
            weights = F.softmax(att.float(), dim=-1).type_as(q)
            if _hooks.ACTIVE is not None:
                weights = _hooks.apply(f"blocks.{layer}.attn.pattern", weights)
            return self.attn_dropout(weights) @ v, weights  # (B, nh, T, hs)
        # The fast path: fused kernels (flash / memory-efficient on GPU).
        dropout = self.dropout if self.training else 0.0
        if not self.causal or T == 1:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout), None
        if T == Tk:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True), None
        mask = ~_future_mask(T, Tk, q.device)  # a chunk of queries after cached keys: mask by absolute position
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout), None


def _future_mask(T: int, Tk: int, device) -> torch.Tensor:
    """True where query i (at absolute position Tk - T + i) would see a later key."""
    q_pos = torch.arange(Tk - T, Tk, device=device)[:, None]
    k_pos = torch.arange(Tk, device=device)[None, :]
    return k_pos > q_pos  # (T, Tk)


def _rows(table: torch.Tensor, rows) -> torch.Tensor:
    """Rows of a position table: a slice (a view), or a long tensor of positions on the device."""
    return table[rows] if isinstance(rows, slice) else table.index_select(0, rows)


# ---------------------------------------------------------------- feed-forward


class FeedForward(nn.Module):
    """Position-wise FFN: act(x W1 + b1) W2 + b2 (relu, relu2 = relu squared, gelu, gelu_tanh),
    or SwiGLU: (silu(x W1) * x W3) W2."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_ff = cfg.d_ff_resolved
        self.activation = cfg.activation
        self.w1 = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias)
        self.w3 = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias) if cfg.activation == "swiglu" else None
        self.w2 = nn.Linear(d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
        hooked = _hooks.ACTIVE is not None
        h = self.w1(x)
        if hooked:
            h = _hooks.apply(f"blocks.{layer}.mlp.pre", h)
        if self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "gelu":
            h = F.gelu(h)
        elif self.activation == "gelu_tanh":  # GPT-2's tanh approximation ("gelu_new")
            h = F.gelu(h, approximate="tanh")
        elif self.activation == "relu2":  # squared ReLU (So et al., 2021)
            h = F.relu(h).square()
        else:
            h = F.silu(h) * self.w3(x)
        if hooked:
            h = _hooks.apply(f"blocks.{layer}.mlp.post", h)
        out = self.dropout(self.w2(h))
        return _hooks.apply(f"blocks.{layer}.mlp.out", out) if hooked else out


# ---------------------------------------------------------------- block and GPT


def make_norm(cfg: ModelConfig) -> nn.Module:
    """model.norm, read here only: LayerNorm (bias per model.bias) or RMSNorm (a gain, no bias)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
    return nn.LayerNorm(cfg.d_model, eps=NORM_EPS, bias=cfg.bias)


class Block(nn.Module):
    """Pre-norm: x + Attn(N(x)), then x + FFN(N(x)); post-norm (the 2017 paper's): N(x + Attn(x)),
    then N(x + FFN(x)).  N is model.norm; the FFN half is absent when ffn=False."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.post = cfg.norm_position == "post"
        self.ln1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = make_norm(cfg) if cfg.ffn else None
        self.ffn = FeedForward(cfg) if cfg.ffn else None

    def forward(self, x, rope=None, cache=None, layer=0, explicit=False, attend=None):
        """attend: the static decode step's attention (CausalSelfAttention.forward)."""
        hooked = _hooks.ACTIVE is not None  # the residual stream's named points (core/hooks.py)
        if hooked:
            x = _hooks.apply(f"blocks.{layer}.resid_pre", x)
        if self.post:
            a, weights = self.attn(x, rope, cache, layer, explicit, attend)
            x = self.ln1(x + a)
        else:
            a, weights = self.attn(self.ln1(x), rope, cache, layer, explicit, attend)
            x = x + a
        if hooked:
            x = _hooks.apply(f"blocks.{layer}.resid_mid", x)
        if self.ffn is not None:
            x = self.ln2(x + self.ffn(x, layer)) if self.post else x + self.ffn(self.ln2(x), layer)
        if hooked:
            x = _hooks.apply(f"blocks.{layer}.resid_post", x)
        return x, weights


def real_vocab(logits: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The logits of the real vocabulary, (..., V): model.vocab_multiple's padded columns dropped.
    Dropping a column is what setting it to -inf would do (probability zero) in the loss and in
    every sample, without a pass over the logits; the padded rows of the head get zero gradient.
    A body whose head was removed (core/classifier.py) sets padding_rows to 0: nothing to drop."""
    return logits[..., : model.vocab_size] if model.padding_rows else logits


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, V), or (B, 1, V) with last_only
    loss: torch.Tensor | None = None


class GPT(nn.Module):
    # Two settings of the static decode step, read by core/decode.py only: plain attributes, not
    # config keys, because they change the kernels of decoding, never the model (bench/decode_gpu.py
    # --variants compares them).  How it attends (decode.STEP_ATTENTION; auto: see
    # decode.resolved_step_attention), and whether it writes a layer's keys and values with one
    # kernel where they come straight from the projection (the cache holds the same rows either way).
    step_attention = "auto"
    paired_kv_write = True

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        if problem := head_count_problem(cfg.d_model, cfg.n_head):
            raise ConfigError(problem)
        self.cfg, self.vocab_size = cfg, vocab_size
        rows = cfg.padded_vocab(vocab_size)  # V, or more with model.vocab_multiple (never-used rows)
        self.padding_rows = rows - vocab_size
        self.tok_emb = nn.Embedding(rows, cfg.d_model)  # the V x d_model embedding matrix
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.pos_encoding == "learned" else None
        if cfg.pos_encoding == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.block_size, cfg.d_model), persistent=False)
        if cfg.pos_encoding == "rope":
            cos, sin = rope_tables(cfg.block_size, cfg.d_k, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # Post-norm blocks end normalised: the 2017 decoder feeds its last block to the output layer.
        self.ln_f = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, rows, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # weight tying (Press & Wolf, 2017)
        self.apply(self._init_weights)
        # GPT-2: scale the init of residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("ffn.w2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """All parameters; with non_embedding, less the position table (nanoGPT's N for MFU)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        start_pos: int = 0,
        cache: KVCache | None = None,
        explicit: bool = False,
        last_only: bool = False,
    ) -> ModelOutput:
        """idx (B, T) token ids at window positions start_pos..start_pos+T-1.

        targets: (B, T) ids, -100 where no loss is taken.  explicit: the written-out softmax
        attention instead of the fused kernel (the batched trainer's).  To read or change an
        activation (attention weights, a head's output, ...) use the hook points (core/hooks.py).
        """
        B, T = idx.shape
        if cache is not None and start_pos != cache.length:
            raise ValueError(f"start_pos={start_pos} but the KV cache holds {cache.length} positions")
        if start_pos + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds block_size={self.cfg.block_size}")
        x, rope = self.embed(idx, slice(start_pos, start_pos + T))
        for i, block in enumerate(self.blocks):
            x, _ = block(x, rope, cache, i, explicit)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:, :]
        logits = self.logits(x)  # (B, T, V)
        return ModelOutput(logits, None if targets is None else lm_loss(logits, targets))

    def embed(self, idx: torch.Tensor, rows) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token embeddings plus positions, and RoPE's cos/sin rows: ``rows`` is a slice of window
        positions, or a (T,) long tensor of them on the device (the static step, core/decode.py)."""
        x = self.tok_emb(idx)  # (B, T, C)
        hooked = _hooks.ACTIVE is not None
        if hooked:
            x = _hooks.apply("embed", x)
        if self.pos_emb is not None:
            x = x + _rows(self.pos_emb.weight, rows)
        elif self.cfg.pos_encoding == "sinusoidal":
            # Vaswani et al. (2017), 3.4: embeddings times sqrt(d_model), so the fixed table
            # (amplitude 1) does not drown embeddings initialised with std 0.02.
            x = x * math.sqrt(self.cfg.d_model) + _rows(self.pos_table, rows).to(x.dtype)
        if hooked and self.cfg.pos_encoding in ("learned", "sinusoidal"):
            x = _hooks.apply("pos_embed", x)
        rope = None
        if self.cfg.pos_encoding == "rope":
            rope = (_rows(self.rope_cos, rows), _rows(self.rope_sin, rows))
        return self.drop(x), rope

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, V) logits of the real vocabulary, capped when model.logit_softcap is set."""
        x = self.ln_f(x)
        if _hooks.ACTIVE is not None:
            x = _hooks.apply("ln_final", x)
        logits = real_vocab(self.lm_head(x), self)
        if (cap := self.cfg.logit_softcap) is not None:  # smooth cap to (-cap, cap) (Gemma 2)
            logits = cap * torch.tanh(logits / cap)
        return _hooks.apply("logits", logits) if _hooks.ACTIVE is not None else logits

    cache_name = "KV cache"

    def new_cache(self, batch: int, device, dtype) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, batch, c.kv_heads, c.block_size, c.d_k, device, dtype)

    @property
    def supports_cache(self) -> bool:
        # A bidirectional model's keys for old tokens change when new tokens arrive: no cache.
        return self.cfg.causal

    @property
    def supports_static_step(self) -> bool:
        """Whether the static step (core/decode.py decode_step) can replace the cached forward
        (it is the same computation)."""
        return self.supports_cache


class LSTMState:
    """The LSTM's counterpart of the KV cache: its (h, c) state after ``length`` tokens."""

    def __init__(self):
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.length = 0

    def reset(self) -> None:
        self.state, self.length = None, 0


class LSTMLM(nn.Module):
    """A recurrent baseline: the same embedding and head around torch.nn.LSTM (n_layer layers).

    The hidden size is d_model; the LSTM state plays the role of the KV cache in generation.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        rows = cfg.padded_vocab(vocab_size)
        self.padding_rows = rows - vocab_size
        self.tok_emb = nn.Embedding(rows, cfg.d_model)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0, bias=cfg.bias)
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, rows, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        if not cfg.tie_weights:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, start_pos: int = 0,
                cache: LSTMState | None = None, last_only: bool = False) -> ModelOutput:
        """idx (B, T); with ``cache`` the LSTM continues from the state after ``cache.length`` tokens."""
        if cache is not None and start_pos != cache.length:
            raise ValueError(f"start_pos={start_pos} but the LSTM state holds {cache.length} positions")
        h, state = self.lstm(self.tok_emb(idx), cache.state if cache is not None else None)
        if cache is not None:
            cache.state, cache.length = state, cache.length + idx.size(1)
        if last_only:
            h = h[:, -1:, :]
        logits = real_vocab(self.lm_head(self.ln_f(h)), self)
        return ModelOutput(logits, None if targets is None else lm_loss(logits, targets))

    cache_name = "LSTM state"
    supports_cache = True  # a recurrent state is exact to carry forward
    supports_static_step = False  # its state is a tensor returned by nn.LSTM, not a buffer written in place

    def new_cache(self, batch: int, device, dtype) -> LSTMState:
        return LSTMState()


def build_model(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    if cfg.arch == "lstm":
        return LSTMLM(cfg, vocab_size)
    return GPT(cfg, vocab_size)
