"""The run summary printed after `tformer train`: a key/value table that fits the terminal."""

from __future__ import annotations

from rich.console import Console

from tformer_cli.render.fmt import fmt_bytes, fmt_int, fmt_loss, fmt_time, time_split
from tformer_cli.render.table import show_pairs
from tformer_cli.run.result import TrainResult


def _mfu(r: TrainResult) -> str:
    if r.mfu is None:
        return "-"
    text = f"{100 * r.mfu:.1f}% of {r.peak_flops / 1e9:,.0f} GFLOP/s ({r.peak_source})"
    if r.mfu > 1:
        text += " - over 100%: the machine was busier while the peak was timed"
    return text


def summary_rows(r: TrainResult) -> list[tuple[str, str]]:
    """(label, value) rows of a run's summary (its typed TrainResult)."""
    status = "interrupted" if r.interrupted else "finished"
    resumed = f" (resumed from {r.resumed_from})" if r.resumed_from else ""
    return [
        ("run", str(r.run_dir)),
        ("status", f"{status} at step {r.steps_done} of {r.steps}{resumed}"),
        ("train loss", f"{fmt_loss(r.train_loss)} nats/token"),
        ("val loss", f"{fmt_loss(r.val_loss)} nats/token  (ln(vocab) = {r.init_loss_ref:.3f})"),
        ("val bits/byte", fmt_loss(r.val_bpb)),
        ("best val loss", fmt_loss(r.best_val_loss)),
        ("tokens/s", f"{fmt_int(r.tokens_per_s)}  (median, eval excluded)"),
        ("ms/step", "-" if r.ms_per_step is None else f"{r.ms_per_step:.1f}"),
        ("MFU", _mfu(r)),
        ("peak memory", f"{fmt_bytes(r.peak_memory_bytes)} ({r.memory_source})"),
        ("parameters", f"{r.params:,} ({r.non_embedding_params:,} non-embedding)"),
        ("device", f"{r.device}, {r.dtype}" + (", compiled" if r.compiled else "")),
        ("compile", r.compile_reason or ("on" if r.compiled else "off")),
        *([("cuda graph", r.cuda_graph_reason)] if str(r.device).startswith("cuda")
          and r.cuda_graph_reason else []),
        ("tokens seen", fmt_int(r.tokens_seen) + ("" if r.epochs is None else
                                                   f"  ({r.epochs:.2f} epochs of the training split)")),
        ("wall time", fmt_time(r.elapsed_s) + (f" ({split})" if (split := _split(r)) else "")),
    ]


def _split(r: TrainResult) -> str:
    return time_split(r.setup_s, r.steps_s, r.eval_s, r.checkpoint_s)


def show_summary(con: Console, r: TrainResult, title: str = "run summary") -> None:
    show_pairs(con, summary_rows(r), title=title)
