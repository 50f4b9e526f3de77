"""What `tformer inspect`, `tformer attention` and `tformer heads` print: tables that fit."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from tformer_cli.render.console import line
from tformer_cli.render.fmt import fmt_bytes, fmt_int, fmt_params
from tformer_cli.render.table import Col, show

SHADES = "\u00b7\u2591\u2592\u2593\u2588"  # light to dark: · ░ ▒ ▓ █


def _pct(x: int, total: int) -> str:
    return f"{100 * x / total:.1f}%" if total else "-"


def _short(name: str) -> str:
    """anatomy's component names, shortened to fit an 80-column table."""
    return (name.replace("(V x d_model)", "(V x d)").replace(" (block x d_model)", "")
            .replace("(d_model x V), tied to the embedding", "(tied)").replace("(d_model x V)", "(d x V)"))


# ---------------------------------------------------------------- inspect


def show_inspect(con: Console, r, png=None) -> None:
    """The three tables of `tformer inspect` (r: inside.inspect.InspectReport)."""
    _parts(con, r)
    _split(con, r)
    _memory(con, r)
    if r.lstm_equal_params is not None:
        e = r.lstm_equal_params
        line(con, f"an LSTM with the same parameter count: --set model.arch=lstm --set model.d_model="
                  f"{e.d_model}  ({e.params:,} parameters)")
    if png is not None:
        line(con, f"wrote {png}")


def _parts(con: Console, r) -> None:
    m = r.model
    n = fmt_params  # 1.2K, 3.4M: the exact counts are in --json
    P, F = r.params, r.flops_per_token
    rows = [[_short(c.name), n(c.params_per_layer) if c.per_layer else "", n(c.params), _pct(c.params, P),
             n(c.flops_per_token), _pct(c.flops_per_token, F)] for c in r.components]
    rows.append(["one layer", n(r.per_layer.params), "", "", n(r.per_layer.flops_per_token), ""])
    rows.append(["total", "", f"{P:,}", "100%", n(F), "100%"])
    cols = [Col("component", key=True), Col("per layer", numeric=True), Col(f"total (x{m.n_layer})", numeric=True),
            Col("% params", numeric=True), Col("FLOPs", numeric=True), Col("% FLOPs", numeric=True)]
    show(con, cols, rows, title=f"parameters and training FLOPs per token ({m.arch}: {r.shape()}, vocab "
         f"{r.vocab_size:,} from {r.vocab_source}"
         + (f", + {r.padding_rows} padding rows" if r.padding_rows else "") + ")")


def _split(con: Console, r) -> None:
    P, F = r.params, r.flops_per_token
    rows = [[g, fmt_params(v.params), _pct(v.params, P), fmt_int(v.flops_per_token), _pct(v.flops_per_token, F)]
            for g, v in r.groups.items()]
    cols = [Col("group", key=True)] + [Col(h, numeric=True) for h in ("params", "% params", "FLOPs/token",
                                                                      "% FLOPs")]
    show(con, cols, rows, title="where the parameters and FLOPs are (attention vs FFN)")


def _memory(con: Console, r) -> None:
    rows = [[dtype, *(fmt_bytes(v[k]) for k in ("weights", "gradients", "optimizer")), fmt_bytes(sum(v.values()))]
            for dtype, v in r.memory_bytes.items()]
    state = "Muon + AdamW state" if r.optimizer == "muon" else "AdamW state (2 moments)"
    cols = [Col("dtype", key=True)] + [Col(h, numeric=True) for h in ("weights", "gradients", state, "total")]
    show(con, cols, rows, title=f"memory for {r.params:,} parameters (activations not included)")
    if r.kv_cache_bytes_per_token:
        m = r.model
        line(con, f"KV cache for generation (float32, batch 1): {fmt_bytes(r.kv_cache_bytes_per_token)} per token "
             f"(2 x {m.n_layer} layers x {m.kv_heads} key/value head{'s' if m.kv_heads > 1 else ''} x d_k {m.d_k}), "
             f"{fmt_bytes(r.kv_cache_bytes_per_token * m.block_size)} for a full block of {m.block_size}")


# ---------------------------------------------------------------- attention


def show_attention(con: Console, result, layer: int, head: int, png) -> None:
    """Head labels, one head as shades, and where the PNG went (result: inside.attention.AttentionResult)."""
    if result.truncated:
        con.print(f"[yellow]the prompt was cut to its last {len(result.tokens)} tokens (block_size)[/yellow]")
    rows = [[str(s.layer), str(s.head), f"{s.previous_token:.2f}", f"{s.first_token:.2f}", f"{s.induction:.2f}",
             f"{s.entropy:.2f}", f"{s.label} ({s.offset_score:.2f})" if s.label.startswith("offset") else
             f"induction (key +{s.induction_shift})" if s.label == "induction" and s.induction_shift else s.label]
            for s in result.scores]
    cols = [Col("layer", numeric=True, key=True), Col("head", numeric=True, key=True)] + [
        Col(h, numeric=True) for h in ("previous-token", "first-token", "induction", "entropy")] + [Col("label")]
    show(con, cols, rows, title="head labels (scores in [0, 1])")
    if result.induction_probe:
        line(con, f"induction scored on {result.induction_probe}")
    con.print(shade_rows(result, layer, head, columns=con.width if con.is_terminal else None))
    line(con, f"wrote {png}")


def shade_rows(result, layer: int, head: int, max_tokens: int = 48, columns: int | None = None) -> Text:
    """One head as text: a row per query token, a shade per key (blank: masked future); the last
    ``max_tokens`` tokens, fewer when a row would not fit in ``columns``."""
    w = result.weights[layer, head]
    T = w.size(0)
    lo = max(0, T - max_tokens)
    width = max(len(tok) for tok in result.tokens[lo:])
    if columns is not None and width + 1 + (T - lo) > columns:
        lo = T - max(1, columns - width - 1)
    text = Text(f"layer {layer} head {head}: row = query, column = key, shade = sqrt(weight)"
                + (f" (last {T - lo} tokens)" if lo else "") + "\n")
    for i in range(lo, T):
        line = "".join(" " if (result.causal and j > i) else
                       SHADES[min(len(SHADES) - 1, int(float(w[i, j]) ** 0.5 * len(SHADES)))]
                       for j in range(lo, T))
        text.append(f"{result.tokens[i]:>{width}} {line}\n")
    return text


# ---------------------------------------------------------------- heads


def show_heads(con: Console, result, png) -> None:
    """The importance table, the pruning curve and what can go (result: inside.heads.HeadsResult)."""
    rows = [[str(layer), *(f"{v:+.4f}" for v in row)] for layer, row in enumerate(result.importance)]
    cols = [Col("layer", numeric=True, key=True)] + [Col(f"head {h}", numeric=True) for h in range(result.n_head)]
    show(con, cols, rows, title=f"val loss change when one head is masked (base {result.base_loss:.4f} "
         "nats/token)")
    rows = [[f"{100 * frac:.0f}%", str(k), f"{loss:.4f}", f"{loss - result.base_loss:+.4f}"]
            for frac, k, loss in result.milestones]
    show(con, [Col(h, numeric=True) for h in ("removed", "heads", "val loss", "increase")], rows,
         title="pruning curve (least important heads first)")
    n = result.n_layer * result.n_head
    line(con, f"{result.removable} of {n} heads can be removed (least important first) with a val loss "
              f"increase below {result.threshold:g} nats/token (base {result.base_loss:.4f})")
    line(con, f"wrote {png}")
