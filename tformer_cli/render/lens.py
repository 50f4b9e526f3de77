"""Output of `tformer lens`: the logit lens per layer, the direct logit attribution, and a PNG."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tformer_cli.inside.lens import LensResult, total
from tformer_cli.render.console import line
from tformer_cli.render.fmt import fmt_loss
from tformer_cli.render.table import Col, show

SHOWN = 12  # attribution rows in the terminal (the PNG and --json have them all)


def show_lens(con: Console, r: LensResult, png: Path | None) -> None:
    if r.truncated:
        line(con, f"(cut): the prompt's first {r.truncated} tokens were dropped (longer than block_size)")
    rows = [[escape(layer.name), escape(", ".join(f"{t} {100 * p:.0f}%" for t, p in layer.top)),
             fmt_loss(layer.loss)] for layer in r.layers]
    show(con, [Col("residual after", key=True), Col("top next tokens at the last position"),
               Col("loss", numeric=True)], rows, title="logit lens (each layer through the final norm and unembedding)")
    at = f"target {escape(r.target)} at position {r.position}: logit {r.logit:+.3f}"
    if r.why_no_attribution:
        line(con, f"{at}; no direct logit attribution: {escape(r.why_no_attribution)}")
    else:
        parts = sorted(r.attributions, key=lambda a: -abs(a.value))[:SHOWN]
        rows = [[escape(a.part), f"{a.value:+.3f}"] for a in parts]
        rows += [["remainder (norm and head biases)", f"{r.remainder:+.3f}"], ["sum of all parts", f"{total(r):+.3f}"]]
        show(con, [Col("part", key=True), Col("logit contribution", numeric=True)], rows,
             title=f"direct logit attribution ({len(r.attributions)} parts, the largest {len(parts)} shown)")
        line(con, at)
    if png is not None:
        line(con, f"plot: {png}")


def lens_png(r: LensResult, out: Path, title: str) -> Path:
    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    names = [layer.name for layer in r.layers]
    losses = [layer.loss for layer in r.layers]
    if any(v is not None for v in losses):
        ax_l.plot(range(len(names)), [float("nan") if v is None else v for v in losses], "o-")
    ax_l.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax_l.set(ylabel="next-token loss over the prompt (nats)", title="logit lens")
    ax_l.grid(alpha=0.3)
    if r.attributions:
        import numpy as np

        n_layer, n_head = r.n_layer, r.n_head
        grid = np.full((n_layer, n_head + 1), np.nan)
        for a in r.attributions:
            if a.layer is not None and a.head is not None:
                grid[a.layer, a.head] = a.value
            elif a.layer is not None and a.part.endswith("mlp"):
                grid[a.layer, n_head] = a.value
        lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        im = ax_a.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax_a.set_xticks(range(n_head + 1), [f"H{h}" for h in range(n_head)] + ["MLP"], fontsize=7)
        ax_a.set_yticks(range(n_layer), [f"L{i}" for i in range(n_layer)])
        ax_a.set_title(f"direct logit attribution to {r.target!r}")
        fig.colorbar(im, ax=ax_a, label="logit contribution")
    else:
        ax_a.axis("off")
        ax_a.text(0.5, 0.5, "no attribution:\n" + r.why_no_attribution, ha="center", va="center", wrap=True)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
