"""Output of `tformer patch`: the cells that restore most of the clean run, and the heatmaps."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tformer_cli.inside.patch import PatchResult
from tformer_cli.render.console import line
from tformer_cli.render.table import Col, show

SHOWN = 8


def show_patch(con: Console, r: PatchResult, png: Path | None) -> None:
    line(con, f"target {escape(r.target)} at the last position: logit {r.clean_metric:+.3f} clean, "
              f"{r.corrupt_metric:+.3f} corrupted (patched: 0 = corrupted, 1 = clean)")
    cells = [(v, f"{r.residual_rows[i]}, position {p} ({r.clean[p]} / {r.corrupt[p]})")
             for i, row in enumerate(r.residual) for p, v in enumerate(row)]
    cells.sort(key=lambda c: -abs(c[0]))
    show(con, [Col("residual stream patched at", key=True), Col("restored", numeric=True)],
         [[escape(w), f"{v:+.3f}"] for v, w in cells[:SHOWN]], title="by layer and position (the largest)")
    heads = sorted(((v, f"L{i} H{h}") for i, row in enumerate(r.heads) for h, v in enumerate(row)),
                   key=lambda c: -abs(c[0]))
    show(con, [Col("head's output patched", key=True), Col("restored", numeric=True)],
         [[w, f"{v:+.3f}"] for v, w in heads[:SHOWN]], title="by head, every position (the largest)")
    if png is not None:
        line(con, f"plot: {png}")


def patch_png(r: PatchResult, out: Path, title: str) -> Path:
    import numpy as np

    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    res, heads = np.array(r.residual), np.array(r.heads)
    fig, (ax_r, ax_h) = plt.subplots(1, 2, figsize=(max(8, 0.35 * len(r.clean) + 5), 4.5), dpi=110,
                                     gridspec_kw={"width_ratios": [max(len(r.clean), 4), max(heads.shape[1], 4)]})
    lim = max(1.0, float(np.abs(res).max()), float(np.abs(heads).max()))
    im = ax_r.imshow(res, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax_r.set_xticks(range(len(r.clean)), [f"{c}/{k}" if c != k else c for c, k in zip(r.clean, r.corrupt)],
                    rotation=90, fontsize=7)
    ax_r.set_yticks(range(len(r.residual_rows)), r.residual_rows, fontsize=7)
    ax_r.set_title("residual stream, by layer and position")
    ax_h.imshow(heads, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax_h.set_xticks(range(heads.shape[1]), [f"H{h}" for h in range(heads.shape[1])], fontsize=7)
    ax_h.set_yticks(range(heads.shape[0]), [f"L{i}" for i in range(heads.shape[0])], fontsize=7)
    ax_h.set_title("each head's output (z), every position")
    fig.colorbar(im, ax=[ax_r, ax_h], label="restored (0 = corrupted, 1 = clean)")
    fig.suptitle(title)
    fig.savefig(out)
    plt.close(fig)
    return out
