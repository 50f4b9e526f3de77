"""Output of `tformer embed`: nearest tokens, and the position vectors' similarity (table and PNG)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tformer_cli.inside.embed import EmbedResult
from tformer_cli.render.console import line
from tformer_cli.render.table import Col, show


def show_embed(con: Console, r: EmbedResult, png: Path | None) -> None:
    show(con, [Col("token", key=True), Col("nearest tokens (cosine similarity)")],
         [[escape(n.token), escape(", ".join(f"{t} {s:+.2f}" for t, s in n.nearest))] for n in r.neighbours],
         title="token embeddings")
    if r.why_no_table:
        line(con, f"positions ({r.pos_encoding}): {escape(r.why_no_table)}")
    else:
        show(con, [Col("positions apart", key=True), Col("mean cosine similarity", numeric=True)],
             [[k.split()[-1], f"{v:+.3f}"] for k, v in r.summary.items()],
             title=f"position vectors ({r.pos_encoding})")
    if png is not None:
        line(con, f"plot: {png}")


def embed_png(r: EmbedResult, out: Path, title: str) -> Path | None:
    """The position vectors' cosine-similarity matrix; None without a position table."""
    if r.position_similarity is None:
        return None
    from tformer_cli.render.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.8), dpi=110)
    im = ax.imshow(r.position_similarity.numpy(), cmap="RdBu", vmin=-1, vmax=1)
    ax.set(xlabel="position", ylabel="position", title=title)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
