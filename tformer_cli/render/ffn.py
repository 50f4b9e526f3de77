"""Output of `tformer ffn`: the neurons with the largest effect, what fires them, what they write."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from tformer_cli.inside.ffn import FfnResult
from tformer_cli.render.console import line
from tformer_cli.render.table import Col, show


def show_ffn(con: Console, r: FfnResult) -> None:
    rows = []
    for n in r.neurons:
        keys = "; ".join(f"{before}[{tok}]" for before, tok, _ in n.keys[:3])
        values = ", ".join(f"{t} {v:+.2f}" for t, v in n.values)
        rows.append([f"L{n.layer} N{n.neuron}", f"{n.effect:.3f}", escape(keys), escape(values)])
    show(con, [Col("neuron", key=True), Col("effect", numeric=True), Col("fires most at (the token in brackets)"),
               Col("its value promotes")], rows, title="FFN neurons as key-value memories")
    line(con, f"read over {escape(r.source)}; effect: mean |activation| x the norm of the neuron's W2 column")
