"""What `tformer sample` prints besides the text itself: notes, the speed line, the --bench table."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from tformer_cli.render.console import err_console, line
from tformer_cli.render.fmt import fmt_bytes
from tformer_cli.render.table import Col, show


class TextStream:
    """Generated text written to stdout as it comes (the ``on_token`` callback of core.generate.timed)."""

    def __init__(self, decoder):
        self.decoder = decoder  # core.prompt.IncrementalDecoder

    def begin(self, index: int, prompt: str) -> None:
        self._write(("---\n" if index else "") + prompt)

    def __call__(self, token: int) -> None:
        self._write(self.decoder.push(token))

    def end(self) -> None:
        self._write("\n")

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


def note(msg: str) -> None:
    err_console().print(f"[dim]note: {escape(msg)}[/dim]")


def warn_bidirectional() -> None:
    err_console().print(
        "[yellow]warning:[/yellow] this model was trained with model.causal=false: it saw future tokens "
        "during training, so its next-token predictions are unreliable; each step recomputes the "
        "window (no KV cache for bidirectional attention)")


def print_speed(s, path: str, device, seed: int) -> None:
    """The line after a sample (s: core.generate speed): new tokens, time to first token, tokens/s."""
    ttft = "-" if s.time_to_first_token_s is None else f"{1000 * s.time_to_first_token_s:.1f} ms"
    rate = "-" if s.tokens_per_s is None else f"{s.tokens_per_s:,.0f}"
    line(err_console(), f"[bold]{s.new_tokens}[/bold] new tokens · time to first token [bold]{ttft}[/bold] · "
         f"[bold]{rate}[/bold] tokens/s · {path} · {device} · seed {seed}")


def _ms(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f} ms"


def show_cache_bench(con: Console, r, model_cfg, where: str, dtype: str = "float32") -> None:
    """`tformer sample --bench` (r: core.generate.CacheBench; ``dtype``: the weights')."""
    m = model_cfg
    line(con, f"[bold]tformer sample --bench[/bold]: {r.new_tokens} new tokens, {m.n_layer} layers, "
         f"d_model {m.d_model}, block {r.block_size}, {where}")
    rows = [[name, f"{s.tokens_per_s or 0:,.0f}", _ms(s.ms_per_token, 3), _ms(1000 * (s.time_to_first_token_s or 0), 1)]
            for name, s in ((r.path_label if r.cache_used else "no cache (bidirectional): recompute", r.cached),
                            ("recompute (same window as the cache)", r.recompute),
                            ("recompute, sliding crop (nanoGPT-style)", r.sliding))
            if s is not None]
    show(con, [Col("path", key=True), Col("tokens/s", numeric=True), Col("ms/token", numeric=True),
               Col("time to first token", numeric=True)], rows)
    if r.warmup_s is not None:
        compiled = "" if r.compile_step == "off" else f", the step compiled {r.compile_step}"
        line(con, f"warm-up before the timed run: {r.warmup_s:.1f} s ({r.path_label}{compiled}; "
             "untimed: where a graph is captured and a step compiled)")
    ratio = "-" if r.speedup is None else f"{r.speedup:.1f}x"
    vs_sliding = "" if r.speedup_vs_sliding is None else f" ({r.speedup_vs_sliding:.1f}x the sliding crop)"
    same = "yes" if r.identical else "no"
    if not r.identical and dtype != "float32":
        same += f" ({dtype} rounds the two paths' logits differently; float32 agrees: docs/sample.md, Precision)"
    line(con, f"speed-up of the cache ({r.path_label}): [bold]{ratio}[/bold]{vs_sliding} · same tokens: {same}")
    if r.cache_bytes_per_token:
        kv = m.kv_heads
        line(con, f"KV cache: {fmt_bytes(r.cache_bytes_per_token)} per token, "
             f"{fmt_bytes(r.cache_bytes_per_token * r.block_size)} for a full block ({kv} key/value "
             f"head{'s' if kv > 1 else ''} of {m.n_head} query heads per layer)")
