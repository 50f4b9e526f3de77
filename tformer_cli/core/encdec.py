"""``model.arch: encdec``: a T5-style encoder-decoder, and greedy decoding for it and for a
decoder-only GPT that reads the source as a prefix (the comparison of `tformer seq2seq`).

The encoder is a stack of the GPT's own blocks with the causal mask off (core/model.py Block
with causal=False).  Each decoder block is pre-norm: causal self-attention (the GPT's
attention module, so the same KV cache), then cross-attention to the encoder's output, then the
FFN.  One token embedding is shared by encoder, decoder and the output head (as in T5).  Unlike
T5 (relative position buckets) both stacks use learned absolute positions, as the GPT here does.

Decoding is exact with the cache: the decoder's self-attention keys and values are cached per
layer, and the cross-attention keys and values of the source are computed once per sequence;
greedy tokens then equal those of recomputing the whole target prefix at each step (tested).
Shapes: B batch, S source length, T target length, C = d_model, nh heads, hs = C / nh.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tformer_cli.core.config import ModelConfig
from tformer_cli.core.device import varying_shape_attention
from tformer_cli.core.model import Block, CausalSelfAttention, FeedForward, KVCache, ModelOutput, build_model


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder's output; no mask (every
    target position may read the whole source)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.d_model = cfg.n_head, cfg.d_model
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, C = memory.shape
        k, v = self.kv(memory).split(C, dim=2)
        shape = (B, S, self.n_head, C // self.n_head)
        return k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)  # (B, nh, S, hs) each

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, *kv)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class DecoderBlock(nn.Module):
    """x + SelfAttn(LN(x)) (causal), x + CrossAttn(LN(x), source), x + FFN(LN(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        causal = dataclasses.replace(cfg, causal=True)
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model, bias=cfg.bias), CausalSelfAttention(causal)
        self.ln2, self.cross = nn.LayerNorm(cfg.d_model, bias=cfg.bias), CrossAttention(cfg)
        self.ln3, self.ffn = nn.LayerNorm(cfg.d_model, bias=cfg.bias), FeedForward(cfg)

    def forward(self, x, kv, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), None, cache, layer)[0]
        x = x + self.cross(self.ln2(x), kv)
        return x + self.ffn(self.ln3(x))


class EncoderDecoder(nn.Module):
    """n_layer encoder blocks and n_layer decoder blocks of width d_model; block_size bounds both
    the source and the target length."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.enc_pos = nn.Embedding(cfg.block_size, cfg.d_model)
        self.dec_pos = nn.Embedding(cfg.block_size, cfg.d_model)
        encoder = dataclasses.replace(cfg, causal=False)
        self.encoder = nn.ModuleList(Block(encoder) for _ in range(cfg.n_layer))
        self.ln_enc = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # one embedding for source, target and output
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("proj.weight") or name.endswith("ffn.w2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(4 * cfg.n_layer))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, src: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """src (B, S) -> each decoder layer's cross-attention keys and values of the source."""
        x = self.tok_emb(src) + self.enc_pos.weight[: src.size(1)]
        for block in self.encoder:
            x = block(x)[0]
        memory = self.ln_enc(x)  # (B, S, C)
        return [block.cross.memory_kv(memory) for block in self.decoder]

    def decode(self, tgt: torch.Tensor, kv, cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """tgt (B, T) at target positions start_pos.. -> logits (B, T, V)."""
        T = tgt.size(1)
        x = self.tok_emb(tgt) + self.dec_pos.weight[start_pos:start_pos + T]
        for i, block in enumerate(self.decoder):
            x = block(x, kv[i], cache, i)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.ln_f(x))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None) -> ModelOutput:
        logits = self.decode(tgt_in, self.encode(src))
        loss = None if tgt_out is None else F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten())
        return ModelOutput(logits, loss)

    def new_cache(self, batch: int, device) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.d_k, device, torch.float32)


@torch.no_grad()
def greedy_encdec(model: EncoderDecoder, src: torch.Tensor, n: int, bos: int, use_cache: bool = True):
    """The n greedy target tokens (B, n) for src (B, S): cached, or the whole prefix recomputed."""
    kv = model.encode(src)
    out = torch.full((src.size(0), 1), bos, dtype=torch.long, device=src.device)
    cache = model.new_cache(src.size(0), src.device) if use_cache else None
    with varying_shape_attention(src.device):  # a new length every token
        for i in range(n):
            logits = model.decode(out[:, -1:], kv, cache, i) if use_cache else model.decode(out, kv)
            out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out[:, 1:]


@torch.no_grad()
def greedy_prefix(model, src: torch.Tensor, n: int, sep: int, use_cache: bool = True):
    """The n greedy tokens after ``src SEP`` from a decoder-only GPT (core/model.py)."""
    seq = torch.cat([src, torch.full((src.size(0), 1), sep, dtype=torch.long, device=src.device)], dim=1)
    cache = model.new_cache(src.size(0), src.device, torch.float32) if use_cache else None
    with varying_shape_attention(src.device):  # a new length every token
        logits = model(seq, cache=cache, last_only=True).logits  # the prompt in one pass
        for _ in range(n - 1):
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            if use_cache:
                logits = model(seq[:, -1:], start_pos=seq.size(1) - 1, cache=cache).logits
            else:
                logits = model(seq, last_only=True).logits
    seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, src.size(1) + 1:]


def build_any(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """The model of any run's config: the encoder-decoder of a seq2seq run (``arch: encdec``),
    else core.model.build_model's (a GPT or the LSTM baseline)."""
    return EncoderDecoder(cfg, vocab_size) if cfg.arch == "encdec" else build_model(cfg, vocab_size)
