"""`tformer seq2seq`: an encoder-decoder against a decoder-only GPT reading the source as a prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from tformer_cli.cli.experiments import JobsOpt
from tformer_cli.cli.options import JsonOpt, OutOpt, StepsOpt

HELP = (
    "Train an encoder-decoder (model.arch: encdec, T5-style: a bidirectional encoder, a causal decoder "
    "with cross-attention) and a decoder-only GPT that reads the source as a prefix, of about the same "
    "size, on built-in sequence-to-sequence tasks (reverse, sort, add); both decode greedily with an "
    "exact KV cache. Compares held-out exact match, paired by seed (Δ with a 95% interval). Each task is "
    "an experiment in OUT/<task> (the members' run directories, results.json, the study's verdict); "
    "the same command with the same --out continues it.\n\n"
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
    jobs: JobsOpt = None,
    json_: JsonOpt = False,
) -> None:
    import os

    from tformer_cli.cli.options import StopOnInterrupt
    from tformer_cli.core.seq2seq import TASKS
    from tformer_cli.errors import ConfigError, Interrupted
    from tformer_cli.render.console import console, err_console, print_json
    from tformer_cli.render.progress import TrainDisplay
    from tformer_cli.render.seq2seq import show_seq2seq
    from tformer_cli.run.rundir import default_run_dir
    from tformer_cli.study.seq2seq import BUDGET, run_seq2seq

    tasks = list(dict.fromkeys(task or list(TASKS)))
    problems = [f"--task: '{t}' is not one of {', '.join(TASKS)}" for t in tasks if t not in TASKS]
    problems += [f"--{n}: must be positive, got {v}" for n, v in (("seeds", seeds), ("steps", steps or 1),
                                                                   ("jobs", jobs or 1)) if v <= 0]
    if problems:
        raise ConfigError(problems, hint="see `tformer seq2seq --help`")
    out = Path(out) if out else Path("runs") / f"seq2seq-{default_run_dir('runs').name}"
    say = err_console() if json_ else console()
    with StopOnInterrupt(lambda m: say.print(f"[dim]{m}[/dim]")) as stop:
        result = run_seq2seq(tasks, list(range(seeds)), steps or BUDGET["steps"], out, should_stop=stop,
                             notice=lambda m: say.print(f"[dim]{m}[/dim]"), jobs=jobs or os.cpu_count() or 1,
                             display=lambda label: TrainDisplay(label, to_stderr=json_))
    if json_:
        print_json(result.to_dict())
    else:
        show_seq2seq(console(), result)
    if result.interrupted:
        err_console().print(f"interrupted: continue with  tformer seq2seq {' '.join(f'--task {t}' for t in tasks)} "
                            f"--seeds {seeds} --steps {result.budget['steps']} --out {out}", soft_wrap=True)
        raise Interrupted()


def register(app: typer.Typer) -> None:
    app.command(help=HELP, short_help="Encoder-decoder vs decoder-only GPT on reverse, sort, add.")(seq2seq)
