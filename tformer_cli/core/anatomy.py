"""Closed-form parameter and FLOP counts by component, from a config alone (no torch).

Training FLOPs per token follow the formula of PaLM / nanoGPT: 6 per parameter (forward
2, backward 4) plus 12 * n_layer * T * d_model for the attention scores and weighted sum
(QK^T and AV, forward and backward), where T is the context length (block_size).
"""

from __future__ import annotations

from dataclasses import dataclass

from tformer_cli.core.config import ModelConfig


@dataclass
class Part:
    name: str  # component, e.g. "attention Q/K/V"
    group: str  # embeddings | attention | ffn | other
    params: int
    flops: int  # training FLOPs per token (6 x matmul params, + attention scores)
    layer: int | None = None


def parts(m: ModelConfig, vocab_size: int) -> list[Part]:
    d, V, b = m.d_model, m.padded_vocab(vocab_size), int(m.bias)
    T = m.block_size
    pad = f", {V - vocab_size} of them padding (model.vocab_multiple)" if V > vocab_size else ""
    out = [Part(f"token embedding (V x d_model{pad})", "embeddings", V * d, 0)]
    if m.arch == "lstm":
        for i in range(m.n_layer):
            p = 4 * (d * d + d * d) + 4 * 2 * d * b  # W_ih, W_hh for 4 gates, two bias vectors
            out.append(Part("LSTM", "recurrent", p, 6 * p, i))
    else:
        if m.pos_encoding == "learned":
            out.append(Part("position embedding (block x d_model)", "embeddings", T * d, 0))
        ln, norm = norm_params(m), m.norm
        f = m.d_ff_resolved
        kv = m.kv_heads * m.d_k  # the width of W_K and of W_V (d_model unless grouped-query)
        for i in range(m.n_layer):
            qkv = (d + 2 * kv) * d + (d + 2 * kv) * b
            o = d * d + d * b
            out.append(Part(f"{norm} 1", "other", ln, 6 * ln, i))
            out.append(Part("attention Q/K/V" + (f" ({m.kv_heads} K/V heads)" if kv != d else ""),
                            "attention", qkv, 6 * qkv, i))
            if m.qk_norm:
                out.append(Part("query/key norm gains", "attention", 2 * m.d_k, 6 * 2 * m.d_k, i))
            out.append(Part("attention scores (QK^T, AV)", "attention", 0, 12 * T * d, i))
            out.append(Part("attention output W_O", "attention", o, 6 * o, i))
            if m.ffn:
                w1 = d * f + f * b
                if m.activation == "swiglu":
                    w1 *= 2  # W1 and the gate W3
                w2 = f * d + d * b
                out.append(Part(f"{norm} 2", "other", ln, 6 * ln, i))
                out.append(Part("FFN W1" + (" + W3 (gate)" if m.activation == "swiglu" else ""), "ffn", w1, 6 * w1, i))
                out.append(Part("FFN W2", "ffn", w2, 6 * w2, i))
    if m.arch == "lstm" or m.norm_position == "pre":  # post-norm blocks end normalised: no final norm
        ln = d * (1 + b) if m.arch == "lstm" else norm_params(m)
        out.append(Part("final " + ("layernorm" if m.arch == "lstm" else m.norm), "other", ln, 6 * ln))
    head_params = 0 if m.tie_weights else V * d
    # the padded rows are computed too (that is what makes the matmul faster): their FLOPs count
    out.append(Part("LM head (d_model x V" + pad + ")" + (", tied to the embedding" if m.tie_weights else ""),
                    "embeddings", head_params, 6 * V * d))
    return out


def norm_params(m: ModelConfig) -> int:
    """One norm's parameters: a gain, plus a bias for a LayerNorm with model.bias."""
    return m.d_model * (1 + int(m.bias and m.norm == "layernorm"))


def padding_rows(m: ModelConfig, vocab_size: int) -> int:
    """The embedding (and untied head) rows model.vocab_multiple adds beyond the vocabulary."""
    return m.padded_vocab(vocab_size) - vocab_size


def kv_cache_bytes_per_token(m: ModelConfig, dtype_bytes: int = 4) -> int:
    """What generation caches per token: a key and a value of d_k for each K/V head of each layer
    (fewer K/V heads, grouped-query or multi-query attention, shrink it by n_head / n_kv_head)."""
    if m.arch != "gpt":
        return 0
    return 2 * m.n_layer * m.kv_heads * m.d_k * dtype_bytes


@dataclass
class Totals:
    params: int  # all parameters (a tied head counted once)
    non_embedding: int  # less the position table: nanoGPT's N
    flops_per_token: int  # training FLOPs per token: 6N + 12 L T d (tied head; see totals)
    by_group_params: dict[str, int]
    by_group_flops: dict[str, int]


def totals(m: ModelConfig, vocab_size: int) -> Totals:
    ps = parts(m, vocab_size)
    params = sum(p.params for p in ps)
    pos = sum(p.params for p in ps if p.name.startswith("position"))
    n = params - pos
    groups_p: dict[str, int] = {}
    groups_f: dict[str, int] = {}
    for p in ps:
        groups_p[p.group] = groups_p.get(p.group, 0) + p.params
        groups_f[p.group] = groups_f.get(p.group, 0) + p.flops
    # The sum of the parts: 6N + 12 L T d for a tied head; an untied embedding is a lookup,
    # not a matmul, so its V x d_model parameters add no FLOPs (only the head's do).
    return Totals(params, n, sum(p.flops for p in ps), groups_p, groups_f)


def muon_params(m: ModelConfig) -> int:
    """The weights Muon steps (train.optimizer=muon): the 2-D matrices inside the blocks."""
    if m.arch == "lstm":
        return m.n_layer * 8 * m.d_model * m.d_model  # W_ih and W_hh of the four gates
    d, kv, f = m.d_model, m.kv_heads * m.d_k, m.d_ff_resolved
    ffn = (3 if m.activation == "swiglu" else 2) * d * f if m.ffn else 0
    return m.n_layer * ((d + 2 * kv) * d + d * d + ffn)


def memory_bytes(params: int, muon: int = 0) -> dict[str, dict[str, int]]:
    """Weights, gradients and optimizer state in fp32 and bf16: AdamW keeps two moments per
    parameter; Muon one momentum buffer for each of its ``muon`` weights."""
    state = 2 * (params - muon) + muon
    return {
        "float32": {"weights": 4 * params, "gradients": 4 * params, "optimizer": 4 * state},
        "bfloat16": {"weights": 2 * params, "gradients": 2 * params, "optimizer": 2 * state},
    }


def matched_lstm_d_model(m: ModelConfig, vocab_size: int, non_embedding: bool = False) -> int:
    """The LSTM hidden size (model.d_model with model.arch=lstm, same n_layer) whose parameter
    count is closest to the config ``m``'s, for comparisons at equal parameters.

    The LSTM's count grows monotonically with d_model, so a bisection finds the crossing;
    ``non_embedding`` matches the counts without the token embedding and position table.
    """
    import dataclasses

    def count(cfg: ModelConfig) -> int:
        t = totals(cfg, vocab_size)
        return t.non_embedding - cfg.padded_vocab(vocab_size) * cfg.d_model if non_embedding else t.params

    target = count(m)
    lstm = lambda d: dataclasses.replace(m, arch="lstm", d_model=d)  # noqa: E731
    lo, hi = 1, max(2, m.d_model)
    while count(lstm(hi)) < target:
        hi *= 2
    while hi - lo > 1:  # invariant: count(lo) < target <= count(hi), or lo == 1
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(lstm(mid)) < target else (lo, mid)
    return min((lo, hi), key=lambda d: abs(count(lstm(d)) - target))
