"""PNG figures written without a display (matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

from tformer_cli.run.rundir import RunDir


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    train, val = RunDir(run_dir).curves()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train (mean over log interval)", color="#4c72b0", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", color="#dd8452")
    summary = RunDir(run_dir).read_summary()
    if summary is not None and (ref := summary.init_loss_ref) is not None:
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


# ---------------------------------------------------------------- inside a model (tformer attention, heads, inspect)


def attention_png(result, out: str | Path, layer: int | None = None,
                  title: str = "") -> Path:
    """One heatmap per head (rows: layers, columns: heads); the masked future is drawn grey."""
    import numpy as np


    plt = _pyplot()
    w = result.weights.numpy()
    layers = [layer] if layer is not None else list(range(w.shape[0]))
    nh, T = w.shape[1], w.shape[-1]
    size = 2.4 if T <= 24 else 3.0
    fig, axes = plt.subplots(len(layers), nh, figsize=(size * nh + 0.8, size * len(layers) + 0.6),
                             dpi=90, squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")  # the masked future: visibly empty
    future = np.triu(np.ones((T, T), dtype=bool), k=1) if result.causal else np.zeros((T, T), dtype=bool)
    labels = {(s.layer, s.head): s.label for s in result.scores}
    show_ticks = T <= 40
    for r, li in enumerate(layers):
        for h in range(nh):
            ax = axes[r][h]
            img = ax.imshow(np.where(future, np.nan, w[li, h]), cmap=cmap, vmin=0.0, vmax=1.0,
                            interpolation="nearest")
            ax.set_title(f"L{li} H{h}: {labels[(li, h)]}", fontsize=8)
            ticks = range(T) if show_ticks else []
            ax.set_xticks(list(ticks))
            ax.set_yticks(list(ticks))
            if show_ticks:
                ax.set_xticklabels(result.tokens if r == len(layers) - 1 else [], rotation=90, fontsize=6)
                ax.set_yticklabels(result.tokens if h == 0 else [], fontsize=6)
    fig.colorbar(img, ax=axes, shrink=0.6, label="attention weight (row = query, column = key)")
    fig.suptitle(title or "attention weights (grey: masked future)", fontsize=10)
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def heads_png(result, out: str | Path, title: str = "") -> Path:
    """Left: loss change per masked head (layer x head); right: the pruning curve."""
    import numpy as np


    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    imp = np.array(result.importance)
    lim = max(abs(imp).max(), 1e-6)
    img = ax1.imshow(imp, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for (li, h), v in np.ndenumerate(imp):
        if imp.size <= 64:
            ax1.text(h, li, f"{v:+.3f}", ha="center", va="center", fontsize=7)
    ax1.set_xlabel("head")
    ax1.set_ylabel("layer")
    ax1.set_xticks(range(result.n_head))
    ax1.set_yticks(range(result.n_layer))
    ax1.set_title("val loss change when one head is masked")
    fig.colorbar(img, ax=ax1, label="delta loss (nats/token)")
    n = result.n_layer * result.n_head
    ks, losses = zip(*result.curve)
    ax2.plot([100 * k / n for k in ks], losses, "o-", color="#4c72b0", ms=3)
    ax2.axhline(result.base_loss + result.threshold, ls=":", color="gray",
                label=f"base + {result.threshold:g} nats")
    ax2.axvline(100 * result.removable / n, ls="--", color="#dd8452",
                label=f"{result.removable} of {n} heads removable")
    ax2.set_xlabel("% of heads removed (least important first)")
    ax2.set_ylabel("val loss (nats/token)")
    ax2.set_title("pruning curve")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def anatomy_png(report, out: str | Path, title: str = "") -> Path:
    """Share of parameters and of training FLOPs per token by component (summed over layers);
    ``report`` is an inside.inspect.InspectReport."""
    plt = _pyplot()
    comps = [c for c in report.components if c.params or c.flops_per_token]
    names = [c.name for c in comps][::-1]  # top to bottom in model order
    P, F = report.params, report.flops_per_token
    params = [100 * c.params / P for c in comps][::-1]
    flops = [100 * c.flops_per_token / F for c in comps][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(names) + 1.6), dpi=100)
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], params, height=0.4, color="#4c72b0", label="% of parameters")
    ax.barh([i - 0.2 for i in y], flops, height=0.4, color="#dd8452", label="% of training FLOPs/token")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("% of the model's total")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title.replace(": ", ":\n", 1), fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


# ---------------------------------------------------------------- experiments (tformer ablate / sweep)


def comparison_plot(result, out: str | Path | None = None) -> Path:
    """comparison.png of an experiment (a tformer_cli.study.results.ExperimentResult): validation-loss
    curves of all members on one axis; final loss and tokens/s per member."""
    import math

    plt = _pyplot()
    fig, (ax_c, ax_l, ax_t) = plt.subplots(1, 3, figsize=(15, 4.5), dpi=110)
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(result.summary):
        for k, r in enumerate(x for x in result.rows if x.member == s.member):
            _, val = RunDir(r.run_dir).curves()
            if val:
                ax_c.plot(*zip(*val), "o-", ms=3, color=cmap(i % 10), alpha=1.0 if k == 0 else 0.4,
                          label=s.member if k == 0 else None)
    ax_c.set(xlabel="step", ylabel="validation loss (teacher-forced, nats/token)", title="validation loss")
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=7)
    xs, xlabel, ticks = _member_axis(result)
    fmt = "o" if ticks else "o-"  # categories are not joined by lines: no order between them
    nan = lambda y: math.nan if y is None else y  # noqa: E731
    for key, name in (("val_loss", "teacher-forced"), ("val_loss_causal", "causal-consistent")):
        ys = [getattr(s, key) for s in result.summary]
        if any(y is not None for y in ys):
            ax_l.errorbar(xs, [nan(y) for y in ys], yerr=[getattr(s, f"{key}_std") or 0 for s in result.summary],
                          fmt=fmt, capsize=3, label=name)
    ax_l.legend(fontsize=7)
    ax_t.errorbar(xs, [nan(s.tokens_per_s) for s in result.summary],
                  yerr=[s.tokens_per_s_std or 0 for s in result.summary], fmt=fmt, capsize=3)
    ax_t.set_ylim(bottom=0)  # from zero, so a 3% difference does not look like a cliff
    for ax, title in ((ax_l, "final validation loss"), (ax_t, "training tokens/s")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if ticks:
            ax.set_xticks(xs, ticks, rotation=30, ha="right", fontsize=7)
            ax.margins(x=0.2)  # keep the first and last member off the frame
        ax.grid(alpha=0.3)
    fig.suptitle(f"tformer {result.kind}: {Path(result.out_dir).name}")
    fig.tight_layout()
    out = Path(out) if out else Path(result.out_dir) / "comparison.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def _member_axis(result) -> tuple[list[float], str, list[str] | None]:
    """(x, label, tick labels): a numeric x for a one-axis numeric sweep, member names otherwise."""
    if len(result.axes) == 1:
        vals = [s.axes.get(result.axes[0]) for s in result.summary]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            return [float(v) for v in vals], result.axes[0], None
    return list(range(len(result.summary))), "member", [s.member for s in result.summary]
