"""`tformer seq2seq`: an encoder-decoder against a decoder-only GPT reading the source as a prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from tformer_cli.cli.options import JsonOpt, OutOpt, StepsOpt

HELP = (
    "Train an encoder-decoder (model.arch: encdec, T5-style: a bidirectional encoder, a causal decoder "
    "with cross-attention) and a decoder-only GPT that reads the source as a prefix, of about the same "
    "size, on built-in sequence-to-sequence tasks (reverse, sort, add); both decode greedily with an "
    "exact KV cache. Compares held-out exact match, paired by seed (Δ with a 95% interval).\n\n"
    "Examples:\n\n"
    "  tformer seq2seq                                  # all three tasks, 3 seeds\n\n"
    "  tformer seq2seq --task add --seeds 5 --steps 600 --out runs/seq2seq"
)


def seq2seq(
    task: Annotated[Optional[List[str]], typer.Option("--task", help="reverse, sort and/or add (default: all).",
                                                      show_default=False)] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per architecture (3 or more to compare).")] = 3,
    steps: StepsOpt = None,
    out: OutOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.cli.options import StopOnInterrupt
    from tformer_cli.core.seq2seq import TASKS
    from tformer_cli.errors import ConfigError
    from tformer_cli.render.console import console, err_console, print_json
    from tformer_cli.render.seq2seq import show_seq2seq
    from tformer_cli.study.seq2seq import BUDGET, run_seq2seq

    tasks = list(dict.fromkeys(task or list(TASKS)))
    problems = [f"--task: '{t}' is not one of {', '.join(TASKS)}" for t in tasks if t not in TASKS]
    problems += [f"--{n}: must be positive, got {v}" for n, v in (("seeds", seeds), ("steps", steps or 1)) if v <= 0]
    if problems:
        raise ConfigError(problems, hint="see `tformer seq2seq --help`")
    say = err_console() if json_ else console()
    with StopOnInterrupt(lambda m: say.print(m.strip()), message="\nstopping (Ctrl-C again to quit at once)\n") as stop:
        result = run_seq2seq(tasks, list(range(seeds)), steps or BUDGET["steps"], Path(out) if out else None,
                             progress=lambda s: say.print(s, soft_wrap=True, highlight=False), should_stop=stop)
    if json_:
        print_json(result.to_dict())
    else:
        show_seq2seq(console(), result)


def register(app: typer.Typer) -> None:
    app.command(help=HELP, short_help="Encoder-decoder vs decoder-only GPT on reverse, sort, add.")(seq2seq)
