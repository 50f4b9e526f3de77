"""Seeing inside a model: `tformer inspect` (parameters, FLOPs, memory), `tformer attention`
(attention maps and head labels) and `tformer heads` (head importance and pruning)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tformer_cli.cli.options import DeviceOpt, JsonOpt, PresetOpt, SetOpt

RunArg = Annotated[Path, typer.Argument(help="A run directory written by `tformer train`.", show_default=False)]
PngOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG to write (default: inside the run).",
                                                show_default=False)]
SHADES = "\u00b7\u2591\u2592\u2593\u2588"  # light to dark: · ░ ▒ ▓ █


def register(app: typer.Typer) -> None:
    @app.command(
        help="Parameters and training FLOPs per token by component (embedding V x d_model, positions, "
        "attention Q/K/V and W_O, FFN W1/W2, norms, head), per layer and in total, the attention vs FFN "
        "split, and the memory of weights, gradients and AdamW state in fp32 and bf16. Needs no training: "
        "works on a run directory, a YAML config or a preset.\n\n"
        "Examples:\n\n"
        "  tformer inspect --preset gpt2_small --vocab-size 50257\n\n"
        "  tformer inspect runs/20260101-120000\n\n"
        "  tformer inspect experiments/my.yaml --set model.activation=swiglu --out anatomy.png"
    )
    def inspect(
        target: Annotated[Optional[Path], typer.Argument(
            help="A run directory or a YAML config (default: the quick preset).", show_default=False)] = None,
        preset: PresetOpt = None,
        set_: SetOpt = None,
        vocab_size: Annotated[Optional[int], typer.Option(
            "--vocab-size", help="Vocabulary size (default: the run's, or the config's tokenizer on its corpus).",
            show_default=False)] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write a PNG of the parameter and "
                                                    "FLOP shares by component.", show_default=False)] = None,
        json_: JsonOpt = False,
    ) -> None:
        from tformer_cli.render import report

        cfg, vocab, source = _inspect_config(target, preset, set_, vocab_size)
        data = inspect_data(cfg, vocab, source)
        if out is not None:
            from tformer_cli.inside.probes import anatomy_png

            m = cfg.model
            shape = f"{m.arch} d_model={m.d_model} n_layer={m.n_layer}" + (
                f" n_head={m.n_head} block_size={m.block_size}" if m.arch == "gpt" else "")
            data["png"] = str(anatomy_png(data, out, f"{shape}, vocab {vocab:,}: {data['params']:,} parameters, "
                                          f"{data['flops_per_token']:,} training FLOPs/token"))
        if json_:
            report.print_json(data)
            return
        con = report.console()
        con.print(_parts_table(data))
        con.print(_split_table(data))
        con.print(_memory_table(data))
        if data.get("lstm_equal_params"):
            e = data["lstm_equal_params"]
            con.print(f"an LSTM with the same parameter count: --set model.arch=lstm --set model.d_model="
                      f"{e['d_model']}  ({e['params']:,} parameters)")
        if out is not None:
            con.print(f"wrote {out}")

    @app.command(
        help="Attention weights of a trained GPT on a prompt: a PNG grid (one heatmap per head, tokens on "
        "both axes, the masked future grey), a terminal rendering of one head, and a label per head from "
        "simple scores: previous-token, first-token, induction (on a repeated random sequence), the best fixed offset and entropy.\n\n"
        "Examples:\n\n"
        "  tformer attention runs/20260101-120000 --prompt \"The cat sat on the mat\"\n\n"
        "  tformer attention runs/R --prompt \"abcdefgh|abcdefgh\" --layer 1 --head 0 --out att.png"
    )
    def attention(
        run: RunArg,
        prompt: Annotated[str, typer.Option("--prompt", help="Text to look at (its last block_size tokens).")],
        layer: Annotated[Optional[int], typer.Option("--layer", help="Only this layer in the PNG (default: all); "
                                                     "also the layer shown in the terminal (default: last).",
                                                     show_default=False)] = None,
        head: Annotated[int, typer.Option("--head", help="The head shown in the terminal.")] = 0,
        out: PngOpt = None,
        device: DeviceOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        from tformer_cli.inside import probes
        from tformer_cli.render import report

        result = probes.attention_report(run, prompt, device or "auto")
        L, H = result.weights.shape[:2]
        _check_index("--layer", layer, L)
        _check_index("--head", head, H)
        png = probes.attention_png(result, out or Path(run) / "attention.png", layer,
                                   title=f"attention of {Path(run).name} on {len(result.tokens)} tokens "
                                   "(row = query, column = key; grey: masked future)")
        shown = L - 1 if layer is None else layer
        if json_:
            report.print_json({"tokens": result.tokens, "png": str(png), "truncated": result.truncated,
                               "heads": [s.__dict__ for s in result.scores],
                               "weights": result.weights.tolist()})
            return
        con = report.console()
        if result.truncated:
            con.print(f"[yellow]the prompt was cut to its last {len(result.tokens)} tokens (block_size)[/yellow]")
        con.print(_scores_table(result))
        con.print(_shade_rows(result, shown, head))
        con.print(f"wrote {png}")

    @app.command(
        help="Head importance by ablation: the val loss change when each head alone is masked (layer x head "
        "table and PNG), then a pruning curve removing heads least important first, with the val loss at "
        "0%, 10%, ..., 90% removed and how many heads can go for less than --threshold nats of loss.\n\n"
        "Examples:\n\n"
        "  tformer heads runs/20260101-120000\n\n"
        "  tformer heads runs/R --threshold 0.02 --batches 40 --out heads.png --json"
    )
    def heads(
        run: RunArg,
        out: PngOpt = None,
        threshold: Annotated[float, typer.Option("--threshold", help="Allowed val loss increase (nats/token) "
                                                 "for the removable-heads count.")] = 0.05,
        batches: Annotated[Optional[int], typer.Option("--batches", help="Val batches per evaluation "
                                                       "(default: the run's train.eval_iters).",
                                                       show_default=False)] = None,
        device: DeviceOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        from tformer_cli.inside import probes
        from tformer_cli.render import report

        say = (lambda s: None) if json_ else (lambda s: report.err_console().print(f"[dim]{s}[/dim]"))
        result = probes.heads_report(run, batches, threshold, device or "auto", progress=say)
        png = probes.heads_png(result, out or Path(run) / "heads.png",
                               title=f"head importance of {Path(run).name} ({result.tokens:,} val tokens)")
        if json_:
            report.print_json({**result.__dict__, "png": str(png)})
            return
        con = report.console()
        con.print(_importance_table(result))
        con.print(_pruning_table(result))
        n = result.n_layer * result.n_head
        con.print(f"{result.removable} of {n} heads can be removed (least important first) with a val loss "
                  f"increase below {result.threshold:g} nats/token (base {result.base_loss:.4f})")
        con.print(f"wrote {png}")


def _check_index(flag: str, value: Optional[int], n: int) -> None:
    from tformer_cli.errors import ConfigError

    if value is not None and not 0 <= value < n:
        raise ConfigError(f"{flag} {value} is out of range: the model has {n} (0 to {n - 1})")


# ---------------------------------------------------------------- inspect


def _inspect_config(target, preset, sets, vocab_size):
    """(config, vocab size, where the vocabulary came from)."""
    import json

    from tformer_cli.core import config as cfgmod
    from tformer_cli.errors import ConfigError

    overrides = cfgmod.parse_set(sets or [])
    if target is not None and target.is_dir():
        if preset is not None:
            raise ConfigError("give a run directory or --preset, not both")
        if not (target / "config.yaml").exists():
            raise ConfigError(f"{target} is not a run directory (no config.yaml)",
                              hint="give a run directory, a YAML config file or --preset NAME")
        cfg = cfgmod.from_dict(cfgmod.merge(cfgmod.load_yaml(target / "config.yaml"), overrides))
        if vocab_size is None:
            for name in ("checkpoint.json", "summary.json"):
                try:
                    vocab_size = int(json.loads((target / name).read_text())["vocab_size"])
                    return cfg, vocab_size, f"the run ({name})"
                except (OSError, ValueError, KeyError):
                    continue
    else:
        if target is None and preset is None:
            preset = "quick"
        cfg = cfgmod.resolve(target, preset, overrides)
    if vocab_size is not None:
        if vocab_size < 1:
            raise ConfigError(f"--vocab-size must be positive, got {vocab_size}")
        return cfg, vocab_size, "--vocab-size"
    from tformer_cli.core.data import prepare

    ds = prepare(cfg.data)  # cached after the first time
    mask = 1 if cfg.train.objective == "mlm" else 0  # the MLM model's extra [MASK] token
    return cfg, ds.vocab_size + mask, f"the {cfg.data.tokenizer} tokenizer of {ds.corpus}"


def inspect_data(cfg, vocab_size: int, source: str = "") -> dict:
    """Everything `tformer inspect` shows, as plain data (also its --json output)."""
    import dataclasses

    from tformer_cli.core import anatomy

    m = cfg.model
    parts = anatomy.parts(m, vocab_size)
    tot = anatomy.totals(m, vocab_size)
    per_layer = [p for p in parts if p.layer == 0]
    data = {
        "model": dataclasses.asdict(m),
        "vocab_size": vocab_size,
        "vocab_source": source,
        "params": tot.params,
        "non_embedding_params": tot.non_embedding,
        "flops_per_token": tot.flops_per_token,
        "components": [
            {"name": p.name, "group": p.group, "per_layer": p.layer is not None,
             "params": p.params * (m.n_layer if p.layer is not None else 1),
             "params_per_layer": p.params if p.layer is not None else None,
             "flops_per_token": p.flops * (m.n_layer if p.layer is not None else 1)}
            for p in parts if p.layer in (None, 0)
        ],
        "per_layer": {"params": sum(p.params for p in per_layer), "flops_per_token": sum(p.flops for p in per_layer)},
        "groups": {g: {"params": tot.by_group_params[g], "flops_per_token": tot.by_group_flops.get(g, 0)}
                   for g in tot.by_group_params},
        "memory_bytes": anatomy.memory_bytes(tot.params),
    }
    if m.arch == "gpt":
        d = anatomy.matched_lstm_d_model(m, vocab_size)
        data["lstm_equal_params"] = {
            "d_model": d, "params": anatomy.totals(dataclasses.replace(m, arch="lstm", d_model=d), vocab_size).params}
    return data


def _pct(x: int, total: int) -> str:
    return f"{100 * x / total:.1f}%" if total else "-"


def _parts_table(data: dict):
    from rich.table import Table

    from tformer_cli.render import report

    m = data["model"]
    shape = f"{m['arch']}: d_model={m['d_model']} n_layer={m['n_layer']}" + (
        f" n_head={m['n_head']} block_size={m['block_size']}" if m["arch"] == "gpt" else "")
    t = Table(title=f"parameters and training FLOPs per token ({shape}, vocab {data['vocab_size']:,} from "
              f"{data['vocab_source']})", title_justify="left")
    t.add_column("component", no_wrap=True)
    for col in ("per layer", f"total (x{m['n_layer']})", "% params", "FLOPs", "% FLOPs"):
        t.add_column(col, justify="right")
    P, F = data["params"], data["flops_per_token"]
    n = report.fmt_params  # 1.2K, 3.4M: the exact counts are in --json
    for c in data["components"]:
        t.add_row(_short(c["name"]), n(c["params_per_layer"]) if c["per_layer"] else "", n(c["params"]),
                  _pct(c["params"], P), n(c["flops_per_token"]), _pct(c["flops_per_token"], F))
    t.add_row("one layer", n(data["per_layer"]["params"]), "", "", n(data["per_layer"]["flops_per_token"]), "",
              style="dim")
    t.add_row("total", "", f"{P:,}", "100%", n(F), "100%", style="bold")
    return t


def _short(name: str) -> str:
    """anatomy's component names, shortened to fit an 80-column table."""
    return (name.replace("(V x d_model)", "(V x d)").replace(" (block x d_model)", "")
            .replace("(d_model x V), tied to the embedding", "(tied)").replace("(d_model x V)", "(d x V)"))


def _split_table(data: dict):
    from rich.table import Table

    from tformer_cli.render import report

    t = Table(title="where the parameters and FLOPs are (attention vs FFN)", title_justify="left")
    for col in ("group", "params", "% params", "FLOPs/token", "% FLOPs"):
        t.add_column(col, justify="left" if col == "group" else "right")
    P, F = data["params"], data["flops_per_token"]
    for g, v in data["groups"].items():
        t.add_row(g, report.fmt_params(v["params"]), _pct(v["params"], P), report.fmt_int(v["flops_per_token"]),
                  _pct(v["flops_per_token"], F))
    return t


def _memory_table(data: dict):
    from rich.table import Table

    from tformer_cli.render import report

    t = Table(title=f"memory for {data['params']:,} parameters (activations not included)", title_justify="left")
    for col in ("dtype", "weights", "gradients", "AdamW state (2 moments)", "total"):
        t.add_column(col, justify="left" if col == "dtype" else "right")
    for dtype, v in data["memory_bytes"].items():
        t.add_row(dtype, *(report.fmt_bytes(v[k]) for k in ("weights", "gradients", "adamw")),
                  report.fmt_bytes(sum(v.values())))
    return t


# ---------------------------------------------------------------- attention and heads


def _scores_table(result):
    from rich.table import Table

    t = Table(title="head labels (scores in [0, 1])", title_justify="left")
    for col in ("layer", "head", "previous-token", "first-token", "induction", "entropy", "label"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for s in result.scores:
        t.add_row(str(s.layer), str(s.head), f"{s.previous_token:.2f}", f"{s.first_token:.2f}",
                  f"{s.induction:.2f}", f"{s.entropy:.2f}",
                  f"{s.label} ({s.offset_score:.2f})" if s.label.startswith("offset") else s.label)
    return t


def _shade_rows(result, layer: int, head: int, max_tokens: int = 48):
    """One head as text: a row per query token, a shade per key (blank: masked future)."""
    from rich.text import Text

    w = result.weights[layer, head]
    T = w.size(0)
    lo = max(0, T - max_tokens)
    width = max(len(tok) for tok in result.tokens[lo:])
    text = Text(f"layer {layer} head {head}: row = query, column = key, shade = sqrt(weight)"
                + (f" (last {T - lo} tokens)" if lo else "") + "\n")
    for i in range(lo, T):
        line = "".join(" " if (result.causal and j > i) else
                       SHADES[min(len(SHADES) - 1, int(float(w[i, j]) ** 0.5 * len(SHADES)))]
                       for j in range(lo, T))
        text.append(f"{result.tokens[i]:>{width}} {line}\n")
    return text


def _importance_table(result):
    from rich.table import Table

    t = Table(title=f"val loss change when one head is masked (base {result.base_loss:.4f} nats/token)",
              title_justify="left")
    t.add_column("layer", justify="right")
    for h in range(result.n_head):
        t.add_column(f"head {h}", justify="right")
    for layer, row in enumerate(result.importance):
        t.add_row(str(layer), *(f"{v:+.4f}" for v in row))
    return t


def _pruning_table(result):
    from rich.table import Table

    t = Table(title="pruning curve (least important heads first)", title_justify="left")
    for col in ("removed", "heads", "val loss", "increase"):
        t.add_column(col, justify="right")
    for frac, k, loss in result.milestones:
        t.add_row(f"{100 * frac:.0f}%", str(k), f"{loss:.4f}", f"{loss - result.base_loss:+.4f}")
    return t
