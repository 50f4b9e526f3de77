"""Seeing inside a model: `tformer inspect` (parameters, FLOPs, memory), `tformer attention`
(attention maps and head labels) and `tformer heads` (head importance and pruning)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tformer_cli.cli.options import DeviceOpt, JsonOpt, PresetOpt, SetOpt, StopOnInterrupt

RunArg = Annotated[Path, typer.Argument(help="A run directory written by `tformer train`.", show_default=False)]
PngOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG to write (default: inside the run).",
                                                show_default=False)]


INSPECT_HELP = (
    "Parameters and training FLOPs per token by component (embedding V x d_model, positions, "
    "attention Q/K/V and W_O, FFN W1/W2, norms, head), per layer and in total, the attention vs FFN "
    "split, and the memory of weights, gradients and AdamW state in fp32 and bf16. Needs no training: "
    "works on a run directory, a YAML config or a preset.\n\n"
    "Examples:\n\n"
    "  tformer inspect --preset gpt2_small --vocab-size 50257\n\n"
    "  tformer inspect runs/20260101-120000\n\n"
    "  tformer inspect experiments/my.yaml --set model.activation=swiglu --out anatomy.png"
)


ATTENTION_HELP = (
    "Attention weights of a trained GPT on a prompt: a PNG grid (one heatmap per head, tokens on "
    "both axes, the masked future grey), a terminal rendering of one head, and a label per head from "
    "simple scores: previous-token, first-token, induction (on repeated sequences drawn like the run's "
    "training text), the best fixed "
    "offset and entropy.\n\n"
    "Examples:\n\n"
    "  tformer attention runs/20260101-120000 --prompt \"The cat sat on the mat\"\n\n"
    "  tformer attention runs/R --prompt \"abcdefgh|abcdefgh\" --layer 1 --head 0 --out att.png"
)


HEADS_HELP = (
    "Head importance by ablation: the val loss change when each head alone is masked (layer x head "
    "table and PNG), then a pruning curve removing heads least important first, with the val loss at "
    "0%, 10%, ..., 90% removed and how many heads can go for less than --threshold nats of loss.\n\n"
    "Examples:\n\n"
    "  tformer heads runs/20260101-120000\n\n"
    "  tformer heads runs/R --threshold 0.02 --batches 40 --out heads.png --json"
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
    from tformer_cli.inside.inspect import inspect_config, inspect_model
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.inside import show_inspect

    cfg, vocab, source = inspect_config(target, preset, set_, vocab_size)
    r = inspect_model(cfg, vocab, source)
    png = None
    if out is not None:
        from tformer_cli.render.plots import anatomy_png

        png = anatomy_png(r, out, f"{cfg.model.arch} {r.shape()}, vocab {vocab:,}: {r.params:,} parameters, "
                          f"{r.flops_per_token:,} training FLOPs/token")
    if json_:
        print_json({**r.to_dict(), **({"png": str(png)} if png is not None else {})})
        return
    show_inspect(console(), r, png)


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
    from tformer_cli.inside.attention import attention_report
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.inside import show_attention
    from tformer_cli.render.plots import attention_png

    _check_image(out)
    with StopOnInterrupt(message=""):  # Ctrl-C or SIGTERM: the probe stops (one line, exit 130)
        result = attention_report(run, prompt, device or "auto")
    L, H = result.weights.shape[:2]
    _check_index("--layer", layer, L)
    _check_index("--head", head, H)
    png = attention_png(result, out or Path(run) / "attention.png", layer,
                        title=f"attention of {Path(run).name} on {len(result.tokens)} tokens "
                        "(row = query, column = key; grey: masked future)")
    if json_:
        print_json({**result.to_dict(), "png": str(png)})
        return
    show_attention(console(), result, L - 1 if layer is None else layer, head, png)


def heads(
    run: RunArg,
    out: PngOpt = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Allowed val loss increase (nats/token) "
                                             "for the removable-heads count.")] = 0.05,
    batches: Annotated[Optional[int], typer.Option("--batches", help="Val batches per evaluation "
                                                   "(default: the run's train.eval_iters).",
                                                   show_default=False)] = None,
    context: Annotated[Optional[int], typer.Option("--context", help="Window length in tokens "
                                                   "[default: the run's block_size].", show_default=False)] = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.inside.heads import heads_report
    from tformer_cli.render.console import console, err_console, print_json
    from tformer_cli.render.inside import show_heads
    from tformer_cli.render.plots import heads_png

    _check_image(out)
    say = (lambda s: None) if json_ else (lambda s: err_console().print(f"[dim]{s}[/dim]"))
    with StopOnInterrupt(message=""):  # Ctrl-C or SIGTERM: the probe stops (one line, exit 130)
        result = heads_report(run, batches, threshold, device or "auto", progress=say, context=context)
    png = heads_png(result, out or Path(run) / "heads.png",
                    title=f"head importance of {Path(run).name} ({result.tokens:,} val tokens)")
    if json_:
        print_json({**result.to_dict(), "png": str(png)})
        return
    show_heads(console(), result, png)


LENS_HELP = (
    "The logit lens (each layer's residual stream through the final norm and unembedding: its top "
    "next tokens and its loss) and direct logit attribution (each head's and each FFN's share of "
    "the target token's logit) of a GPT run, with a PNG.\n\nExamples:\n\n"
    "  tformer lens runs/quick20 --prompt \"The cat sat on the\"\n\n"
    "  tformer lens RUN --prompt \"abcabc\" --target a --json"
)


def lens(
    run: RunArg,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to look at (its last block_size tokens).")],
    target: Annotated[Optional[str], typer.Option("--target", help="The token whose logit is attributed, "
                                                  "at the last position (default: the prompt's last token, "
                                                  "at the position before it).", show_default=False)] = None,
    out: PngOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.inside.lens import lens_report, total
    from tformer_cli.render.lens import lens_png, show_lens

    _probe(out, json_, lambda: lens_report(run, prompt, target, device or "auto"),
           lambda r: lens_png(r, out or Path(run) / "lens.png",
                              f"logit lens of {Path(run).name} on {len(r.tokens)} tokens"),
           show_lens, lambda r: {"sum": total(r)})


PATCH_HELP = (
    "Activation patching: run the corrupted prompt with one activation from the clean run (the "
    "residual stream at one layer and position; one head's output), and show how much of the clean "
    "run's target logit each restores (0 = corrupted, 1 = clean), with heatmaps. The prompts must "
    "be the same length in tokens.\n\nExamples:\n\n"
    "  tformer patch RUN --clean \"abcab\" --corrupt \"abdab\"\n\n"
    "  tformer patch RUN --clean \"The cat\" --corrupt \"The dog\" --target s --json"
)


def patch(
    run: RunArg,
    clean: Annotated[str, typer.Option("--clean", help="The prompt whose activations are patched in.")],
    corrupt: Annotated[str, typer.Option("--corrupt", help="The prompt run with them (same length in tokens).")],
    target: Annotated[Optional[str], typer.Option("--target", help="The token whose logit at the last position "
                                                  "is the metric (default: the clean run's top token).",
                                                  show_default=False)] = None,
    out: PngOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.inside.patch import patch_report
    from tformer_cli.render.patch import patch_png, show_patch

    _probe(out, json_, lambda: patch_report(run, clean, corrupt, target, device or "auto"),
           lambda r: patch_png(r, out or Path(run) / "patch.png", f"activation patching of {Path(run).name}"),
           show_patch)


EMBED_HELP = (
    "How a GPT run arranges its vectors: each chosen token's nearest tokens in the embedding (cosine "
    "similarity), and the similarity of every pair of position vectors (learned or sinusoidal) with a "
    "PNG; RoPE and no positions say why they have none.\n\nExamples:\n\n"
    "  tformer embed RUN\n\n"
    "  tformer embed RUN --tokens a,e,T --json"
)


def embed(
    run: RunArg,
    tokens: Annotated[Optional[str], typer.Option("--tokens", help="Tokens to find neighbours of, comma-separated "
                                                  "(default: a few common characters).", show_default=False)] = None,
    out: PngOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.inside.embed import embed_report
    from tformer_cli.render.embed import embed_png, show_embed

    chosen = tokens.split(",") if tokens else None
    _probe(out, json_, lambda: embed_report(run, chosen, device or "auto"),
           lambda r: embed_png(r, out or Path(run) / "positions.png",
                               f"position vectors of {Path(run).name} ({r.pos_encoding})"),
           show_embed)


FFN_HELP = (
    "The feed-forward layer as key-value memories: for the neurons with the largest effect over a "
    "text (the run's validation split, or --prompt), the tokens at which each fires most and the "
    "tokens its output promotes through the unembedding.\n\nExamples:\n\n"
    "  tformer ffn RUN\n\n"
    "  tformer ffn RUN --layer 1 --prompt \"The cat sat on the mat.\" --json"
)


def ffn(
    run: RunArg,
    layer: Annotated[Optional[int], typer.Option("--layer", help="Only this block's FFN (default: every one).",
                                                 show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="The text to read (default: the run's "
                                                  "validation split, its first windows).", show_default=False)] = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.inside.ffn import ffn_report
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.ffn import show_ffn

    with StopOnInterrupt(message=""):
        result = ffn_report(run, layer, prompt, device or "auto")
    if json_:
        print_json(result.to_dict())
        return
    show_ffn(console(), result)


def register(app: typer.Typer) -> None:
    app.command(help=INSPECT_HELP, short_help="Parameters, FLOPs and memory by component (no training).")(inspect)
    app.command(help=ATTENTION_HELP, short_help="Attention maps of a trained GPT and a label per head.")(attention)
    app.command(help=HEADS_HELP, short_help="Head importance by masking, and a pruning curve.")(heads)
    app.command(help=LENS_HELP, short_help="Logit lens and direct logit attribution of a GPT run.")(lens)
    app.command(help=PATCH_HELP, short_help="Activation patching: what restores a corrupted prompt.")(patch)
    app.command(help=EMBED_HELP, short_help="Nearest tokens and the position vectors' similarity.")(embed)
    app.command(help=FFN_HELP, short_help="FFN neurons as memories: what fires them, what they write.")(ffn)


def _check_index(flag: str, value: Optional[int], n: int) -> None:
    from tformer_cli.errors import ConfigError

    if value is not None and not 0 <= value < n:
        raise ConfigError(f"{flag} {value} is out of range: the model has {n} (0 to {n - 1})")


IMAGE_TYPES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _probe(out, json_: bool, compute, draw, show, extra=lambda r: {}) -> None:
    """A probe command's run: the PNG path checked, the probe computed (Ctrl-C or SIGTERM: one line,
    exit 130), its picture drawn, then --json or the terminal's tables."""
    from tformer_cli.render.console import console, print_json

    _check_image(out)
    with StopOnInterrupt(message=""):
        result = compute()
    png = draw(result)
    if json_:
        print_json({**result.to_dict(), **extra(result), "png": None if png is None else str(png)})
        return
    show(console(), result, png)


def _check_image(out: Optional[Path]) -> None:
    """Refuse an --out matplotlib cannot write before any work is done."""
    from tformer_cli.errors import ConfigError

    if out is not None and out.suffix.lower() not in IMAGE_TYPES:
        raise ConfigError(f"--out {str(out)[:120]}: unknown image type {out.suffix[:20] or '(no extension)'!r}",
                          hint=f"end the name with one of {', '.join(IMAGE_TYPES)}")
    if out is not None and not out.resolve().parent.is_dir():
        raise ConfigError(f"--out {str(out)[:120]}: the directory {str(out.parent)[:120]} does not exist",
                          hint="create it first, or choose another --out")
