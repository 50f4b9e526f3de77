"""What `tformer bench` prints: one key/value table of a train.bench.BenchResult."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from tformer_cli.render.fmt import fmt_bytes
from tformer_cli.render.table import show_pairs


def _share(d: dict[str, float]) -> str:
    return "  ".join(f"{k} {100 * v:.0f}%" for k, v in d.items()) if d else "-"


def bench_rows(r) -> list[tuple[str, str]]:
    return [
        ("training step", f"{r.step_ms:.1f} ms median ({r.step_ms_min:.1f} to {r.step_ms_max:.1f}, "
                          f"{r.steps_timed} steps)"),
        ("training tokens/s", f"{r.train_tokens_per_s:,.0f}"),
        ("forward step", f"{r.forward_ms:.1f} ms ({r.forward_tokens_per_s:,.0f} tokens/s)"),
        ("MFU", f"{100 * r.mfu:.1f}%  ({r.flops_per_token / 1e6:.2f} MFLOP/token, peak "
                f"{r.peak_flops / 1e9:,.0f} GFLOP/s: {escape(r.peak_source)})"),
        ("peak memory", f"{fmt_bytes(r.peak_memory_bytes)} ({escape(r.memory_source)})"),
        ("parameters", f"{r.params:,}"),
        ("FLOPs share", _share(r.flops_share)),
        ("forward time share", _share(r.time_share)),
    ]


def show_bench(con: Console, r) -> None:
    """r: tformer_cli.train.bench.BenchResult."""
    title = f"tformer bench: {r.shape}, {r.device} {r.dtype}" + (" compiled" if r.compiled else "")
    show_pairs(con, bench_rows(r), title=title)
