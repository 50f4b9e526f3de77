"""PNG figures written without a display (matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

from tformer_cli.run.rundir import RunDir


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    return RunDir(run_dir).curves()


def draw_loss_curve(run_dir: str | Path) -> Path | None:
    """loss.png of a run; None when it could not be drawn (a plot is a convenience: never lose a run over it)."""
    try:
        return loss_curve(run_dir)
    except Exception:
        return None


def loss_curve(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training and validation loss against step, with ln(V) for reference."""
    run_dir = Path(run_dir)
    plt = _pyplot()
    train, val = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train (mean over log interval)", color="#4c72b0", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", color="#dd8452")
    ref = (RunDir(run_dir).read_summary() or {}).get("init_loss_ref")
    if isinstance(ref, (int, float)):
        ax.axhline(ref, ls=":", color="gray", label="ln(vocab): uniform guess")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"tformer run {run_dir.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out) if out else RunDir(run_dir).loss_png
    fig.savefig(out)
    plt.close(fig)
    return out
