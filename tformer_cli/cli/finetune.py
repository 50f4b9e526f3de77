"""`tformer finetune` (a classification head on a run, or from scratch) and `tformer classify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from tformer_cli.cli.experiments import JobsOpt
from tformer_cli.cli.options import DeviceOpt, JsonOpt, OutOpt, PresetOpt, SeedOpt, SetOpt, StepsOpt

FINETUNE_HELP = (
    "Fine-tune a run for classification: a head on a pooled representation, trained on labelled "
    "text, scored on a held-out split (accuracy and macro-F1 with 95% intervals).\n\n"
    "DATA is a built-in task (source: prose or Python code; order: does x come before y) or a "
    "labelled file: TSV (text<TAB>label) or JSONL ({\"text\": ..., \"label\": ...}).\n\n"
    "Examples:\n\n"
    "  tformer finetune runs/gpt --data source                # all weights, last-token pooling\n\n"
    "  tformer finetune runs/bert --data reviews.tsv --pool mean --freeze   # a linear probe\n\n"
    "  tformer finetune runs/gpt --data order --from-scratch  # same architecture, random weights\n\n"
    "  tformer finetune --from-scratch --preset quick --data order   # no run: a char tokenizer from the data\n\n"
    "  tformer finetune --bag --data order                    # the bag-of-tokens baseline\n\n"
    "  tformer finetune --resume runs/finetune/20260101-120000 # continue after Ctrl-C"
)

CLASSIFY_HELP = (
    "Predict labels with a fine-tuned classifier (a directory written by `tformer finetune`).\n\n"
    "Examples:\n\n"
    "  tformer classify runs/finetune/20260101-120000 --text 'for i in range(10):'\n\n"
    "  tformer classify RUN --text 'abxcdyef' --text 'abycdxef' --json"
)


def finetune(
    run: Annotated[Optional[Path], typer.Argument(help="The pretrained run to start from.", show_default=False)] = None,
    task: Annotated[str, typer.Option("--task", help="What to fine-tune for: classify.")] = "classify",
    data: Annotated[Optional[str], typer.Option(
        "--data", help="A built-in task (source, order) or a TSV/JSONL file. Default: source.",
        show_default=False)] = None,
    pool: Annotated[Optional[str], typer.Option(
        "--pool", help="last | mean | first. Default: last for a causal body, mean for a bidirectional one.",
        show_default=False)] = None,
    freeze: Annotated[bool, typer.Option("--freeze", help="Train only the head (the body's weights stay).")] = False,
    from_scratch: Annotated[bool, typer.Option(
        "--from-scratch", help="Random weights: RUN's architecture and tokenizer, or without RUN the preset's "
        "architecture and a character tokenizer built from the data.")] = False,
    bag: Annotated[bool, typer.Option("--bag", help="The bag-of-tokens baseline: mean token embedding and the "
                                      "head, no attention and no positions (implies --from-scratch).")] = False,
    steps: StepsOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Examples per step (default 32).",
                                                      show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (default 1e-3).",
                                                show_default=False)] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the fine-tune in this directory.",
                                                   show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a fine-tune in --out.")] = False,
    json_: JsonOpt = False,
) -> None:
    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device}
    given = {k: v for k, v in given.items() if v is not None}
    if resume is not None:
        changed = [name for name, value in (("RUN", run), ("--data", data), ("--pool", pool), ("--preset", preset),
                                            ("--set", set_), ("--out", out), ("--freeze", freeze),
                                            ("--from-scratch", from_scratch), ("--bag", bag),
                                            ("--overwrite", overwrite)) if value]
        spec = _resume_spec(resume, changed, given)
        path = resume
    else:
        spec = _new_spec(run, task, data, pool, freeze, from_scratch, bag, given, preset, set_)
        path = out if out is not None else _default_out()
    result = _run(spec, path, resume is not None, overwrite, json_)
    _show(result, json_)


def _new_spec(run, task, data, pool, freeze, from_scratch, bag, given, preset, sets):
    from tformer_cli.core import finetune_config as fc
    from tformer_cli.errors import ConfigError

    if run is not None:
        from tformer_cli.run.resume import run_config

        if preset is not None or sets:
            raise ConfigError("a fine-tune of RUN takes its model from RUN; do not pass --preset or --set",
                              hint="for another architecture use --from-scratch without RUN")
        model = run_config(run, "finetune", False, "give a directory written by `tformer train`", "").model
    elif from_scratch or bag:
        from tformer_cli.cli.options import build_config

        model = build_config(None, preset, sets).model
    else:
        raise ConfigError("give a RUN to fine-tune, or --from-scratch (or --bag) to start from random weights",
                          hint="e.g. tformer finetune runs/NAME --data source")
    if pool is None:
        pool = "mean" if bag or not model.causal else "last"
    values = dict(task=task, data=data or "source", pool=pool, freeze=freeze, from_scratch=from_scratch or bag,
                  body="bag" if bag else "transformer", source_run=None if run is None else str(run), **given)
    return fc.build(values, model)


RESUMABLE = {"steps", "device"}


def _resume_spec(resume: Path, changed: list[str], given: dict):
    """The fine-tune's own spec; only --steps and --device may change."""
    import dataclasses

    from tformer_cli.core import finetune_config as fc
    from tformer_cli.errors import ConfigError
    from tformer_cli.run.finetune_dir import FinetuneDir

    changed = changed + ["--" + k.replace("_", "-") for k in given if k not in RESUMABLE]
    if changed:
        raise ConfigError(f"--resume takes its settings from the fine-tune; cannot also give {', '.join(changed)}",
                          hint="only --steps and --device may change on resume")
    spec = FinetuneDir(resume).read_spec()
    values = {**dataclasses.asdict(spec.finetune), **given}
    return fc.build(values, spec.model)


def _default_out() -> Path:
    from tformer_cli.run.rundir import default_run_dir

    return default_run_dir(Path("runs") / "finetune")


def _run(spec, path: Path, resume: bool, overwrite: bool, json_: bool):
    from tformer_cli.cli.options import StopOnInterrupt
    from tformer_cli.render.finetune import confusion_png
    from tformer_cli.render.progress import TrainDisplay
    from tformer_cli.run.finetune_dir import FinetuneDir, claim
    from tformer_cli.train.loop import finetune as core_finetune

    with claim(Path(path), resume, overwrite) as p:
        with TrainDisplay("fine-tuning", to_stderr=json_) as display, StopOnInterrupt(display.notice) as stop:
            result = core_finetune(spec, p, resume=resume, progress=display, should_stop=stop)
        if result.test is not None:
            confusion_png(FinetuneDir(p).file(FinetuneDir.CONFUSION_PNG), result.labels, result.test.confusion,
                          f"{result.data}: {result.pool} pooling")
    return result


def _show(result, json_: bool) -> None:
    from tformer_cli.errors import Interrupted
    from tformer_cli.render.console import console, err_console, print_json
    from tformer_cli.render.finetune import show_finetune

    if json_:
        print_json(result.to_dict())
    else:
        show_finetune(console(), result)
    if result.interrupted:
        err_console().print(f"interrupted: resume with  tformer finetune --resume {result.run_dir}", soft_wrap=True)
        raise Interrupted()
    if not json_:
        console().print(f"next: tformer classify {result.run_dir} --text \"...\"", soft_wrap=True)


def classify(
    run: Annotated[Path, typer.Argument(help="A directory written by `tformer finetune`.")],
    text: Annotated[Optional[List[str]], typer.Option("--text", "-t", help="A text to classify (repeatable).",
                                                      show_default=False)] = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.errors import ConfigError
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.finetune import show_predictions
    from tformer_cli.train.classify import classify as core_classify

    if not text:
        raise ConfigError("give at least one --text to classify", hint="e.g. --text 'def f(x):'")
    preds = core_classify(run, list(text), device or "cpu")
    if json_:
        print_json([p.to_dict() for p in preds])
    else:
        show_predictions(console(), preds)


STUDY_HELP = (
    "Seed question 1, measured: can a decoder-only GPT classify? Pretrains a GPT (causal) and an encoder "
    "(masked LM) of the same size on prose, fine-tunes both and the same architectures from scratch, plus a "
    "bag of tokens, on each task with every seed; compares held-out accuracy paired by seed (Δ with a 95% "
    "interval) and ends with a verdict. About 2 minutes on 2 CPU cores.\n\n"
    "Examples:\n\n"
    "  tformer finetune-study                      # both tasks, 3 seeds\n\n"
    "  tformer finetune-study --task order --seeds 5 --out runs/q1\n\n"
    "  tformer finetune-study --out runs/q1        # again after Ctrl-C: finished members are kept\n\n"
    "Each task is an experiment of the study runner in OUT/<task> (members' directories, results.json "
    "with the five claims' verdicts, listed by `tformer runs`)."
)


def finetune_study(
    task: Annotated[Optional[List[str]], typer.Option("--task", help="source and/or order (default: both).",
                                                      show_default=False)] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per member (3 or more for a verdict).")] = 3,
    steps: StepsOpt = None,
    pretrain_steps: Annotated[int, typer.Option("--pretrain-steps", help="Pretraining steps of each body.")] = 600,
    out: OutOpt = None,
    jobs: JobsOpt = None,
    json_: JsonOpt = False,
) -> None:
    import os

    from tformer_cli.cli.options import StopOnInterrupt
    from tformer_cli.core.labelled import TASKS
    from tformer_cli.errors import ConfigError
    from tformer_cli.render.console import console, err_console, print_json
    from tformer_cli.render.finetune import show_study
    from tformer_cli.render.progress import TrainDisplay
    from tformer_cli.run.lock import DirLock
    from tformer_cli.study.classify import run_study

    tasks = list(dict.fromkeys(task or ["source", "order"]))
    problems = [f"--task: '{t}' is not one of {', '.join(TASKS)}" for t in tasks if t not in TASKS]
    problems += [f"--{n}: must be positive, got {v}" for n, v in (("seeds", seeds), ("steps", steps or 1),
                                                                  ("pretrain-steps", pretrain_steps),
                                                                  ("jobs", jobs or 1)) if v <= 0]
    if problems:
        raise ConfigError(problems, hint="see `tformer finetune-study --help`")
    path = out if out is not None else Path("runs") / "finetune-study"
    path.mkdir(parents=True, exist_ok=True)
    say = err_console() if json_ else console()
    with DirLock(path, what="study"), StopOnInterrupt(lambda m: say.print(m.strip()), message="\nstopping after "
                                                      "this member (Ctrl-C again to quit at once)\n") as stop:
        result = run_study(path, tasks, list(range(seeds)), steps or 300, pretrain_steps,
                           progress=lambda s: say.print(s, soft_wrap=True, highlight=False), should_stop=stop,
                           notice=lambda m: say.print(f"[dim]{m}[/dim]"), jobs=jobs or os.cpu_count() or 1,
                           display=lambda label: TrainDisplay(label, to_stderr=json_))
    if json_:
        print_json(result.to_dict())
    else:
        show_study(console(), result)


def register(app: typer.Typer) -> None:
    app.command(help=FINETUNE_HELP, short_help="Fine-tune a run (or from scratch) to classify text.")(finetune)
    app.command(help=CLASSIFY_HELP, short_help="Predict labels with a fine-tuned classifier.")(classify)
    app.command("finetune-study", help=STUDY_HELP,
                short_help="Q1: GPT vs encoder vs scratch vs bag of tokens, fine-tuned to classify.")(finetune_study)
