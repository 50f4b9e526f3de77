"""`tformer train`: train a GPT and leave a self-describing run directory."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tformer_cli.cli.options import (
    ConfigArg,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    PresetOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    StopOnInterrupt,
    build_config,
    flag_overrides,
)

HELP = (
    "Train a GPT and write a run directory (config, metrics, checkpoint, tokenizer, summary, plot).\n\n"
    "Examples:\n\n"
    "  tformer train                                   # the quick preset on built-in English prose\n\n"
    "  tformer train --preset shakespeare_char --data ../shared/data/tinyshakespeare.txt\n\n"
    "  tformer train --set model.n_head=8 --set model.pos_encoding=rope --steps 300\n\n"
    "  tformer train --resume runs/20260101-120000      # continue from the last checkpoint\n\n"
    "  tformer train --init-from runs/gpt2 --data my.txt --steps 200   # fine-tune (weights only, new run)\n\n"
    "  tformer train --nproc 4 --steps 5000            # 4 processes (GPUs) with DDP; see docs/scaling.md\n\n"
    "  torchrun --nproc_per_node=4 -m tformer_cli train --out runs/big   # the same, launched by hand"
)


def train(
    ctx: typer.Context,
    config: ConfigArg = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    steps: StepsOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory.",
                                                   show_default=False)] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Start from this run's weights and tokenizer (e.g. an imported GPT-2) in a new "
        "run directory; its model config is kept.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a run in --out (only the files a run writes are deleted).")] = False,
    json_: JsonOpt = False,
    nproc: Annotated[Optional[int], typer.Option(
        "--nproc", help="Run N processes on this machine under torchrun (DDP), e.g. one per GPU.",
        show_default=False)] = None,
) -> None:
    if resume is not None and init_from is not None:
        from tformer_cli.errors import ConfigError

        raise ConfigError("--resume and --init-from cannot be combined",
                          hint="--resume continues a run; --init-from starts a new one from a run's weights")
    if init_from is not None:
        from tformer_cli.run.init import init_config

        cfg = init_config(init_from, flag_overrides(steps, device, seed, data, set_),
                          config_given=config is not None or preset is not None)
    elif resume is not None:
        from tformer_cli.run.resume import resume_config

        overrides = flag_overrides(steps, device, seed, data, set_)
        cfg = resume_config(resume, overrides, config_given=config is not None or preset is not None)
        _stop_if_finished(resume, cfg, "train.steps" in overrides)
    else:
        cfg = build_config(config, preset, set_, steps=steps, device=device, seed=seed, data=data)
    if nproc is not None:  # validated above; the ranks run this same command without --nproc
        raise typer.Exit(_launch(ctx, cfg, nproc, resume, out, overwrite))
    result, run_dir = _train_this_rank(cfg, resume, out, overwrite, json_, init_from)
    _show_result(result, run_dir, json_)


def register(app: typer.Typer) -> None:
    app.command(help=HELP, short_help="Train a GPT into a self-describing run directory.")(train)


def _launch(ctx: typer.Context, cfg, nproc: int, resume: Optional[Path], out, overwrite: bool) -> int:
    """Start ``nproc`` ranks under torchrun running this command; their exit code."""
    from tformer_cli.core.device import select
    from tformer_cli.train import distributed

    cuda = select(cfg.train.device).type == "cuda"
    args = distributed.forwarded_args(ctx, drop=("nproc", "out", "overwrite"))
    if resume is None:  # create --out here: a clash is reported once, as in a 1-process run
        args += ["--out", str(distributed.agree_run_dir(out, overwrite, distributed.DistInfo()))]
    return distributed.launch(nproc, args, cuda=cuda)


def _train_this_rank(cfg, resume: Optional[Path], out, overwrite: bool, json_: bool, init_from=None):
    """Train on this process (one rank of several under torchrun, or the only one).

    Only rank 0 creates, writes and prints; the other ranks leave the process right after."""
    from tformer_cli.train import distributed

    with distributed.process_group(cfg.train.device) as dist:
        try:
            with _claim(cfg, resume, out, overwrite, dist) as run_dir:
                result = run_training(cfg, run_dir, resume=resume is not None, json_=json_, dist=dist,
                                      init_from=init_from)
        except distributed.PeerFailed:
            raise typer.Exit(1) from None  # the failing rank has printed why
    if not dist.main:
        # A worker rank has nothing left to do. Leave at once, without the interpreter's
        # teardown: a C++ thread torch.distributed left behind aborted a rank about one exit
        # in ten here ("terminate called without an active exception", SIGABRT).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130 if result.interrupted else 0)
    return result, run_dir


def _show_result(result, run_dir, json_: bool) -> None:
    from tformer_cli.errors import Interrupted
    from tformer_cli.render.console import console, err_console, print_json
    from tformer_cli.render.summary import show_summary

    if json_:
        print_json(result.to_dict())
    else:
        show_summary(console(), result)
    if result.interrupted:
        err_console().print(f"interrupted: resume with  tformer train --resume {run_dir}",
                            soft_wrap=True)  # a command to copy: never wrapped
        raise Interrupted()
    if not json_ and "exact_match" in result.extra:  # a seq2seq run (train --resume continues one)
        console().print(f"held-out exact match {100 * result.extra['exact_match']:.1f}%, token accuracy "
                        f"{100 * result.extra['token_accuracy']:.1f}%", soft_wrap=True)
    elif not json_:
        console().print(f"next: tformer sample {run_dir} --prompt \"The \"", soft_wrap=True)


def run_training(cfg, run_dir, resume: bool = False, json_: bool = False, title: str = "training", dist=None,
                 init_from=None):
    """Train with the live display and Ctrl-C handling; the result of tformer_cli.train.loop.train.

    ``dist`` (tformer_cli.train.DistInfo) for a rank under torchrun: ranks other than 0 train
    silently (no display; Ctrl-C, which torchrun forwards to every rank, still stops them).
    """
    from tformer_cli.render.plots import draw_loss_curve
    from tformer_cli.render.progress import TrainDisplay
    from tformer_cli.train.loop import train as core_train

    if dist is not None and not dist.main:
        with StopOnInterrupt(lambda message: None, progress=False) as stop:
            return core_train(cfg, run_dir, resume=resume, should_stop=stop, dist=dist, init_from=init_from)
    with TrainDisplay(title, to_stderr=json_) as display, StopOnInterrupt(display.notice) as stop:
        result = core_train(cfg, run_dir, resume=resume, progress=display, should_stop=stop, dist=dist,
                            init_from=init_from)
    draw_loss_curve(run_dir)
    return result


def _stop_if_finished(run_dir: Path, cfg, steps_given: bool) -> None:
    """`--resume FINISHED` (without more steps) says so and changes nothing: exit 0."""
    from tformer_cli.render.console import err_console
    from tformer_cli.run.resume import finished_notice

    notice = finished_notice(run_dir, cfg, steps_given)
    if notice is not None:
        err_console().print(notice, soft_wrap=True)
        raise typer.Exit(0)


@contextlib.contextmanager
def _claim(cfg, resume: Optional[Path], out, overwrite: bool, dist):
    """The run directory, locked by rank 0 for the whole run (another tformer in it is refused).
    A new directory that fails before its first checkpoint is removed again."""
    from tformer_cli.run.lock import DirLock, new_run_dir
    from tformer_cli.run.rundir import default_run_dir
    from tformer_cli.train import distributed

    if resume is not None:
        with DirLock(resume) if dist.main else contextlib.nullcontext():
            yield resume
    elif dist.world <= 1:
        with new_run_dir(Path(out) if out is not None else default_run_dir(), overwrite) as path:
            yield path
    else:
        path = distributed.agree_run_dir(out, overwrite, dist, cfg.train.device)
        with DirLock(path) if dist.main else contextlib.nullcontext():
            yield path
