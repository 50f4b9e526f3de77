"""PNG figures written without a display (matplotlib's Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train, val = [], []
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "train_loss" in row:
                train.append((row["step"], row["train_loss"]))
            if "val_loss" in row:
                val.append((row["step"], row["val_loss"]))
    return train, val


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
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        ax.axhline(summary["init_loss_ref"], ls=":", color="gray", label="ln(vocab): uniform guess")
    except (OSError, ValueError, KeyError):
        pass
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"tformer run {run_dir.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out) if out else run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out
