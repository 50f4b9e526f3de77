"""Output of `tformer import`, `tformer export` and `tformer eval`."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from tformer_cli.render.console import line
from tformer_cli.render.fmt import fmt_int, fmt_loss, fmt_params, fmt_time
from tformer_cli.render.table import show_pairs


def show_import(con: Console, r: dict[str, Any]) -> None:
    m = r["config"]
    show_pairs(con, [
        ("run", r["run_dir"]),
        ("from", r["source"]),
        ("model", f"{m['n_layer']} layers, d_model {m['d_model']}, {m['n_head']} heads, block_size "
                  f"{m['block_size']}, {m['activation']}"),
        ("parameters", f"{r['params']:,} ({fmt_params(r['params'])})"),
        ("vocabulary", fmt_int(r["vocab_size"])),
    ], title="imported")
    for note in r["notes"]:
        line(con, f"note: {note}", style="dim")
    line(con, f"next: tformer sample {r['run_dir']} --prompt \"The \"  |  tformer eval {r['run_dir']} --data FILE")


def show_export(con: Console, r: dict[str, Any]) -> None:
    hf = r["hf_config"]
    show_pairs(con, [
        ("folder", r["out_dir"]),
        ("from run", r["run_dir"]),
        ("files", ", ".join(r["files"])),
        ("GPT-2 config", f"n_layer {hf['n_layer']}, n_embd {hf['n_embd']}, n_head {hf['n_head']}, "
                         f"n_positions {hf['n_positions']}, {hf['activation_function']}"),
    ], title="exported (Hugging Face GPT-2)")
    for note in r["notes"]:
        line(con, f"note: {note}", style="dim")
    line(con, f"load it: transformers.GPT2LMHeadModel.from_pretrained(\"{r['out_dir']}\")")


def show_eval(con: Console, r: dict[str, Any]) -> None:
    rows = [
        ("run", r["run_dir"]),
        ("text", f"{r['data']}: {r['tokens']:,} tokens, {r['bytes_per_token']:.3f} bytes/token"),
        ("windows", f"{r['windows']:,} of up to {r['context']} tokens ({r['scored']:,} tokens scored)"),
        ("loss", f"{fmt_loss(r['loss'])} nats/token  (perplexity {r['perplexity']:,.2f})"),
        ("bits/byte", fmt_loss(r["bpb"])),
    ]
    if r["causal_consistent_loss"] is not None:
        rows.append(("causal-consistent", f"{fmt_loss(r['causal_consistent_loss'])} nats/token "
                     "(each position from its prefix alone)"))
    rows.append(("time", f"{fmt_time(r['seconds'])} on {r['device']}"))
    show_pairs(con, rows, title="evaluation")
