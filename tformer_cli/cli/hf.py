"""Real models: `tformer import` (a Hugging Face GPT-2 into a run), `tformer export --format hf`
(a run into a GPT-2 folder) and `tformer eval` (loss and bits per byte of a run on any text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tformer_cli.cli.options import DeviceOpt, JsonOpt

IMPORT_HELP = (
    "Import a Hugging Face GPT-2 (a folder with config.json, model.safetensors and tokenizer.json, or a "
    "hub name such as gpt2, gpt2-medium, distilgpt2, downloaded through huggingface_hub when online) into "
    "a tformer run directory: every command that reads a run then works on it. Only safetensors are "
    "read: a folder with only pytorch_model.bin (a pickle) is refused. Models that are not GPT-2-shaped "
    "are refused, naming what tformer's GPT lacks.\n\n"
    "Examples:\n\n"
    "  tformer import gpt2 --out runs/gpt2\n\n"
    "  tformer import ./my-gpt2-folder --out runs/mine"
)

EXPORT_HELP = (
    "Write a run as a Hugging Face GPT-2 folder (config.json, model.safetensors and, for BPE and imported "
    "runs, tokenizer.json), loadable with transformers' GPT2LMHeadModel.from_pretrained. The run must use "
    "GPT-2's switches (learned positions, gelu/gelu_tanh/relu, biases, causal, FFN on); otherwise the "
    "refusal names the switch.\n\n"
    "Examples:\n\n"
    "  tformer export runs/20260101-120000 --format hf --out hf/my-model"
)

EVAL_HELP = (
    "Loss (nats/token), perplexity and bits per byte of a run on any UTF-8 text, with the run's own "
    "tokenizer: measure an imported model, or a model before and after fine-tuning. --causal-consistent "
    "also predicts each position from its prefix alone, as in generation (one forward pass per position).\n\n"
    "Examples:\n\n"
    "  tformer eval runs/gpt2 --data mytext.txt\n\n"
    "  tformer eval runs/R --data prose --context 128 --max-tokens 20000 --causal-consistent"
)


def import_(
    source: Annotated[str, typer.Argument(help="A Hugging Face GPT-2 folder, or a hub name (e.g. gpt2).",
                                          show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The run directory to write.", show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run in --out.")] = False,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.hf import show_import
    from tformer_cli.run.hf import import_hf

    result = import_hf(source, out, overwrite).to_dict()
    if json_:
        print_json(result)
    else:
        show_import(console(), result)


def export(
    run: Annotated[Path, typer.Argument(help="A run directory.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to write.", show_default=False)],
    format_: Annotated[str, typer.Option("--format", help="Output format: hf (Hugging Face GPT-2).")] = "hf",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --out.")] = False,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.errors import ConfigError
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.hf import show_export
    from tformer_cli.run.hf import export_hf

    if format_ != "hf":
        raise ConfigError(f"--format {format_}: the only format is hf (Hugging Face GPT-2)")
    result = export_hf(run, out, overwrite).to_dict()
    if json_:
        print_json(result)
    else:
        show_export(console(), result)


def eval_(
    run: Annotated[Path, typer.Argument(help="A run directory.", show_default=False)],
    data: Annotated[str, typer.Option("--data", help="A UTF-8 text file, or a built-in corpus name.",
                                      show_default=False)],
    context: Annotated[Optional[int], typer.Option("--context", help="Window length in tokens "
                                                   "[default: the run's block_size].", show_default=False)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Score only the first N tokens.",
                                                      show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Windows per forward pass "
                                                      "[default: the run's train.batch_size].",
                                                      show_default=False)] = None,
    causal_consistent: Annotated[bool, typer.Option("--causal-consistent", help="Also the causal-consistent "
                                                    "loss (one forward pass per position).")] = False,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.errors import ConfigError
    from tformer_cli.render.console import console, err_console, print_json
    from tformer_cli.render.hf import show_eval
    from tformer_cli.train.score import eval_text

    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    say = (lambda s: None) if json_ else (lambda s: err_console().print(f"[dim]{s}[/dim]"))
    result = eval_text(run, data, context, max_tokens, causal_consistent, batch_size, device or "auto",
                       progress=say).to_dict()
    if json_:
        print_json(result)
    else:
        show_eval(console(), result)


def register(app: typer.Typer) -> None:
    app.command("import", help=IMPORT_HELP, short_help="Import a Hugging Face GPT-2 into a run directory.")(import_)
    app.command(help=EXPORT_HELP, short_help="Write a run as a Hugging Face GPT-2 folder.")(export)
    app.command("eval", help=EVAL_HELP, short_help="Loss and bits per byte of a run on any text.")(eval_)
