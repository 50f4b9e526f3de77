"""`tformer ablate`, `sweep`, `sweep-heads`, `sweep-dmodel`, `study`, `runs`: controlled experiments.

Each command reads its options, builds a Spec with one call into tformer_cli.study.files,
runs it with tformer_cli.study.runner.run_experiment, draws the figures and renders the result.
The options every experiment command shares are gathered in ExperimentOptions, built from the
command's context in one place; --resume refuses every option the user gave except RESUME_OK.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, List, Optional

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
    flag_overrides,
)

SeedsOpt = Annotated[Optional[int], typer.Option("--seeds", help="Run every member with N seeds (train.seed, "
                                                 "+1, ...) and show mean ± std.", show_default=False)]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the experiment in this directory: "
                                                   "finished members are skipped.", show_default=False)]
ParallelOpt = Annotated[bool, typer.Option("--parallel", help="One member per CUDA device at a time, each in "
                                           "its own process (in sequence when one device is visible).")]
TuneOpt = Annotated[Optional[str], typer.Option("--tune", help="'lr': train every member at each learning "
                                               "rate of --lr-grid and compare each at its best rate.",
                                               show_default=False)]
LrGridOpt = Annotated[Optional[str], typer.Option("--lr-grid", help="Multiples of train.lr for --tune lr "
                                                  "(default 0.5,1,2).", show_default=False)]
JobsOpt = Annotated[Optional[int], typer.Option("--jobs", "-j", help="Train N members at a time, each in its "
                                               "own process: on the CPU with cores/N threads each; on GPUs "
                                               "spread over them, as many per GPU as fit its free memory "
                                               "(default: 1; `tformer study`: one per core, a member's "
                                               "batched seeds shared out among them).",
                                               show_default=False)]
IsolateOpt = Annotated[bool, typer.Option("--isolate", help="Run each member in its own process (per-member "
                                          "peak memory on CPU; a few seconds of start-up each).")]
BatchSeedsOpt = Annotated[bool, typer.Option("--batch-seeds/--no-batch-seeds", help="Train a member's seeds "
                                             "as one batched model in one process where they can (the "
                                             "summary says which could not, and why); off: one run each.")]
UntilOpt = Annotated[bool, typer.Option("--until-converged", help="While a verdict is undecided because members "
                                        "are still learning, run the study again at twice the steps (each "
                                        "budget in OUT/steps-N), up to --max-steps.")]
LadderOpt = Annotated[bool, typer.Option("--ladder", help="Run the study at every size of its ladder: section "
                                         "(each rung in OUT/rung-N), a verdict per size and each claim's trend "
                                         "with a plot (scale.png).")]
RungsOpt = Annotated[Optional[str], typer.Option("--rungs", help="With a ladder: only these rungs, e.g. 1,2 "
                                                 "(implies --ladder).", show_default=False)]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="With --until-converged: the largest "
                                                    "budget (default: 4x the study's steps).", show_default=False)]

# What --resume accepts besides itself: how to run and print, never what the experiment is.
RESUME_OK = {"resume", "json_", "parallel", "isolate", "jobs", "all_", "batch_seeds", "ladder", "rungs"}


# ---------------------------------------------------------------- shared options


def given_options(ctx: typer.Context) -> list[tuple[str, str]]:
    """(name, flag) of every parameter the user gave on the command line (or through the environment)."""
    names = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            long = [o for o in p.opts if o.startswith("--")]
            names.append((p.name, long[0] if long else (p.opts[0] if p.opts else p.name).upper()))
    return names


def refuse_with_resume(ctx: typer.Context, resume: Path) -> None:
    from tformer_cli.errors import ConfigError

    named = [flag for name, flag in given_options(ctx) if name not in RESUME_OK]
    if named:
        raise ConfigError(f"--resume {resume} replays the experiment as it was defined; do not also give "
                          f"{', '.join(named)}", hint="start a new experiment with another --out to change it")


@dataclass
class ExperimentOptions:
    """The options every experiment command shares, from the command's context."""

    config: Optional[Path] = None
    preset: Optional[str] = None
    sets: Optional[List[str]] = None
    steps: Optional[int] = None
    device: Optional[str] = None
    seed: Optional[int] = None
    data: Optional[str] = None
    out: Optional[Path] = None
    seeds: Optional[int] = None
    resume: Optional[Path] = None
    parallel: bool = False
    isolate: bool = False
    jobs: Optional[int | str] = None  # 'auto': the runner picks (tformer study)
    batch_seeds: bool = True
    tune: Optional[str] = None
    lr_grid: Optional[str] = None
    json_: bool = False
    until_converged: bool = False
    max_steps: Optional[int] = None
    ladder: bool = False
    rungs: Optional[str] = None

    @classmethod
    def from_context(cls, ctx: typer.Context) -> "ExperimentOptions":
        """Read the shared options; with --resume, refuse every other option the user gave."""
        p = {("sets" if k == "set_" else k): v for k, v in ctx.params.items()}
        # some Typer releases leave a path option a str in ctx.params (the callback alone gets a Path)
        p.update({k: Path(p[k]) for k in ("config", "out", "resume") if isinstance(p.get(k), str)})
        opts = cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})
        if opts.resume is not None:
            refuse_with_resume(ctx, opts.resume)
        return opts

    def source(self):
        """Where the base config comes from (tformer_cli.study.files.Source)."""
        from tformer_cli.study.files import Source

        return Source(self.config, self.preset,
                      flag_overrides(self.steps, self.device, self.seed, self.data, self.sets), self.seeds)


# ---------------------------------------------------------------- running and drawing


def execute(o: ExperimentOptions, spec, out: Path | None = None, emit_json: bool = True):
    """Run the spec (or resume a directory) with live progress, draw, render; exit 130 if interrupted.
    Returns the ExperimentResult.  With --json and ``emit_json`` False the caller prints the JSON."""
    from tformer_cli.errors import Interrupted
    from tformer_cli.render.console import console, err_console, print_json
    from tformer_cli.render.experiments import render
    from tformer_cli.render.progress import TrainDisplay
    from tformer_cli.study.runner import run_experiment
    from tformer_cli.study.spec import experiment_target

    spec, out_dir = experiment_target(_tuned(o, spec), out or o.out, o.resume)
    con = err_console() if o.json_ else console()
    notice = lambda s: con.print(f"[dim]{s}[/dim]")  # noqa: E731
    if not o.json_:
        con.print(f"{spec.kind}: {len(spec.members)} member(s) x {len(spec.seeds)} seed(s) -> {out_dir}")
    with StopOnInterrupt(notice) as stop:
        result = run_experiment(spec, out_dir, resume=o.resume is not None, notice=notice, should_stop=stop,
                                display=lambda label: TrainDisplay(label, to_stderr=o.json_),
                                parallel=o.parallel, isolate=o.isolate, jobs=o.jobs,
                                batch_seeds=o.batch_seeds)
    draw(result)
    if o.json_:
        if emit_json:
            print_json(result.to_dict())
    else:
        render(console(), result)
    if result.interrupted:
        err_console().print(f"interrupted: continue with  tformer {spec.kind} --resume {out_dir}", soft_wrap=True)
        raise Interrupted()
    return result


def _tuned(o: ExperimentOptions, spec):
    """The spec with --tune lr applied (every member at each rate of the grid)."""
    from tformer_cli.errors import ConfigError
    from tformer_cli.study import tune

    if o.tune is None:
        if o.lr_grid is not None:
            raise ConfigError("--lr-grid needs --tune lr")
        return spec
    if o.tune != "lr":
        raise ConfigError(f"--tune {o.tune}: only 'lr' can be tuned", hint="e.g. --tune lr --lr-grid 0.5,1,2")
    return tune.expand(spec, tune.parse_grid(o.lr_grid)) if spec is not None else spec


def run_study(o: ExperimentOptions, path: Path, out: Path | None = None):
    """One study file: as it is, or with --until-converged as doubling budgets.
    Returns the ExperimentResult of the last budget run."""
    from tformer_cli.study import files

    def build(steps: int | None):
        src = o.source()
        if steps is not None:
            src = replace(src, overrides={**src.overrides, "train.steps": steps})
        return files.study_from(replace(src, config=path))

    if o.ladder or o.rungs is not None:
        return run_scale(o, path, out)[1]
    if not o.until_converged:
        if o.max_steps is not None:
            from tformer_cli.errors import ConfigError

            raise ConfigError("--max-steps needs --until-converged")
        return execute(o, build(None), out)
    return climb(o, build, out)


def run_scale(o: ExperimentOptions, path: Path, out: Path | None = None, show_result: bool = True):
    """--ladder: the study at each rung of its ladder (tformer_cli.study.scale), each in OUT/rung-N
    (continued when it is there), then each claim's trend, scale.json and scale.png in OUT.
    Returns (the ScaleRungs with their trends and plot, the last rung's ExperimentResult)."""
    import json

    from tformer_cli.core.io import atomic_write_text
    from tformer_cli.errors import ConfigError
    from tformer_cli.render.console import console, line, print_json
    from tformer_cli.render.scale import SCALE_PNG, scale_plot, show_scale
    from tformer_cli.run.rundir import default_run_dir
    from tformer_cli.study import files, scale

    if o.until_converged:
        raise ConfigError("--ladder and --until-converged are two different ladders: give one",
                          hint="--ladder grows the model; --until-converged doubles the steps")
    src = replace(o.source(), config=path)
    ladder = files.ladder_of(src)
    if ladder is None:
        raise ConfigError(f"{path.stem} has no ladder: section", hint="a study with one: tformer presets lists "
                          "them; or add ladder: (rule, rungs) to the study file")
    picked = ladder.pick(o.rungs)
    specs = [(r, files.study_from(src, r)) for r in picked]  # every rung checked before one trains
    root = Path(out or o.out or Path("runs") / f"scale-{path.stem}-{default_run_dir('runs').name}")
    done = []
    for r, spec in specs:
        where = scale.rung_dir(root, r.index)
        if not o.json_:
            changed = ", ".join(f"{k}={v}" for k, v in r.set.items()) or "the study as written"
            line(console(), f"rung {r.index} of {len(ladder.rungs)}: {changed}, {len(spec.seeds)} seed(s)")
        again = (where / "experiment.json").exists()
        one = replace(o, resume=where if again else None, ladder=False, rungs=None)
        done.append(scale.ScaleRung(r.index, execute(one, None if again else spec, where, emit_json=False)))
    trends = scale.trends(done, len(ladder.rungs))
    plot = None
    try:
        plot = scale_plot(trends, root / SCALE_PNG, f"tformer study {path.stem}: the claim at each size")
    except Exception as e:  # a plot is a convenience; never lose the results over it
        console().print(f"scale plot not written: {type(e).__name__}: {e}", soft_wrap=True)
    report = scale.ScaleReport(path.stem, ladder, done, trends, str(plot) if plot else None)
    atomic_write_text(root / scale.SCALE_JSON, json.dumps(report.to_dict(), indent=2) + "\n")
    if o.json_:
        print_json(report.to_dict())
    elif show_result:
        show_scale(console(), path.stem, ladder, trends, plot)
    return report, done[-1].result


def climb(o: ExperimentOptions, build, out: Path | None):
    """--until-converged: the study at its budget, then at twice the steps while a verdict asks for
    more (tformer_cli.study.doubling), each budget in OUT/steps-N; a table of the rungs at the end."""
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.findings import show_doubling
    from tformer_cli.run.rundir import default_run_dir
    from tformer_cli.study import doubling

    spec = build(None)
    steps = spec.config().train.steps
    cap = doubling.max_steps_for(steps, o.max_steps)
    root = Path(out or o.out or Path("runs") / f"study-{default_run_dir('runs').name}")
    rungs: list[doubling.Rung] = []
    while True:
        rungs.append(doubling.Rung(steps, execute(o, spec, doubling.rung_dir(root, steps), emit_json=False)))
        nxt = doubling.next_steps(rungs[-1].result, steps, cap)
        if nxt is None:
            break
        steps, spec = nxt, build(nxt)
    reason = doubling.stop_reason(rungs, cap)
    if o.json_:
        print_json({"rungs": [{"steps": r.steps, "result": r.result.to_dict()} for r in rungs], "stopped": reason})
    else:
        show_doubling(console(), rungs, reason)
    return rungs[-1].result


def run_all(o: ExperimentOptions) -> None:
    """`tformer study --all`: every built-in study into one directory, then a findings report."""
    from tformer_cli.render.console import console
    from tformer_cli.render.findings import show_verdicts, write_findings
    from tformer_cli.run.rundir import default_run_dir
    from tformer_cli.study import files

    root = o.resume or o.out or Path("runs") / f"studies-{default_run_dir('runs').name}"
    results, ladders = [], []
    for path in files.builtin_studies():
        src = files.Source(path, None, {}, None)
        if (o.ladder or o.rungs is not None) and files.ladder_of(src) is not None:  # rungs continue themselves
            report, _ = run_scale(replace(o, resume=None), path, root / path.stem, show_result=False)
            results += [r.result for r in report.rungs]
            ladders.append(report)
            continue
        one = replace(o, resume=root / path.stem if o.resume and (root / path.stem).is_dir() else None,
                      ladder=False, rungs=None)  # a study without a ladder runs as written
        results.append(execute(one, None, root / path.stem) if one.resume else run_study(one, path, root / path.stem))
    report = write_findings(root, results, ladders)
    show_verdicts(console(), results)
    console().print(f"findings: {report}", soft_wrap=True)


def draw(result) -> None:
    """loss.png of every member run and the experiment's comparison.png (recorded in results.json);
    their time joins the experiment's wall time."""
    import time

    from tformer_cli.render.plots import comparison_plot, draw_loss_curve
    from tformer_cli.study.results import write_results

    t0 = time.perf_counter()
    for row in result.rows:
        if row.status != "not run" and Path(row.run_dir).is_dir():
            draw_loss_curve(row.run_dir)
    try:
        result.plot = str(comparison_plot(result))
    except Exception as e:  # a plot is a convenience; never lose the results over it
        result.notes.append(f"comparison plot not written: {type(e).__name__}: {e}")
    result.elapsed_s += time.perf_counter() - t0
    write_results(result)


# ---------------------------------------------------------------- commands


ABLATE_HELP = (
    "Train the baseline and one member per flag with the same data, budget, optimizer and seeds; "
    "compare params, train/val loss (teacher-forced and causal-consistent), tokens/s, memory and a "
    "sample.\n\nExamples:\n\n"
    "  tformer ablate --no-causal-mask --steps 300          # see the leak\n\n"
    "  tformer ablate --no-ffn --match params --match-by n_layer --seeds 3\n\n"
    "  tformer ablate --pos none --pos rope --activation swiglu\n\n"
    "  tformer ablate --post-norm --norm rmsnorm --kv-heads 1 --optimizer muon\n\n"
    "  tformer ablate experiments/studies/ablate_causal_mask.yaml    # a study file as it ships\n\n"
    "  tformer ablate --resume runs/ablate-20260101-120000"
)


def ablate(
    ctx: typer.Context,
    config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None, steps: StepsOpt = None,
    device: DeviceOpt = None, seed: SeedOpt = None, data: DataOpt = None, out: OutOpt = None,
    no_causal_mask: Annotated[bool, typer.Option("--no-causal-mask", help="A member with model.causal=false "
                                                 "(bidirectional attention).")] = False,
    no_ffn: Annotated[bool, typer.Option("--no-ffn", help="A member with model.ffn=false "
                                         "(attention-only blocks).")] = False,
    pos: Annotated[Optional[List[str]], typer.Option("--pos", help="A member with model.pos_encoding=X "
                   "(none, learned, sinusoidal, rope; repeatable).", show_default=False)] = None,
    activation: Annotated[Optional[List[str]], typer.Option("--activation", help="A member with "
                          "model.activation=X (relu, relu2, gelu, gelu_tanh, swiglu; repeatable).",
                          show_default=False)] = None,
    ffn_mult: Annotated[Optional[List[float]], typer.Option("--ffn-mult", help="A member with model.d_ff = "
                        "X * d_model (repeatable).", show_default=False)] = None,
    norm: Annotated[Optional[List[str]], typer.Option("--norm", help="A member with model.norm=X "
                    "(layernorm, rmsnorm).", show_default=False)] = None,
    post_norm: Annotated[bool, typer.Option("--post-norm", help="A member with model.norm_position=post "
                                            "(the 2017 paper's norm after the residual sum).")] = False,
    kv_heads: Annotated[Optional[List[int]], typer.Option("--kv-heads", help="A member with model.n_kv_head=N "
                        "(grouped-query; 1 = multi-query; repeatable).", show_default=False)] = None,
    qk_norm: Annotated[bool, typer.Option("--qk-norm", help="A member with model.qk_norm=true.")] = False,
    softcap: Annotated[Optional[List[float]], typer.Option("--softcap", help="A member with "
                       "model.logit_softcap=C (repeatable).", show_default=False)] = None,
    optimizer: Annotated[Optional[List[str]], typer.Option("--optimizer", help="A member with "
                         "train.optimizer=X (adamw, muon).", show_default=False)] = None,
    combine: Annotated[bool, typer.Option("--combine", help="One member with all the flags together.")] = False,
    match: Annotated[Optional[str], typer.Option("--match", help="'params': resize each member to within 5% "
                     "of the baseline's parameter count.", show_default=False)] = None,
    match_by: Annotated[Optional[str], typer.Option("--match-by", help="What --match params resizes: d_ff "
                        "(default), n_layer or d_model.", show_default=False)] = None,
    seeds: SeedsOpt = None, resume: ResumeOpt = None, parallel: ParallelOpt = False,
    isolate: IsolateOpt = False, jobs: JobsOpt = None, batch_seeds: BatchSeedsOpt = True, tune: TuneOpt = None,
    lr_grid: LrGridOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.study import files

    o = ExperimentOptions.from_context(ctx)
    spec = None if o.resume else files.ablate_from(
        o.source(), no_causal_mask=no_causal_mask, no_ffn=no_ffn, pos=pos, activation=activation,
        ffn_mult=ffn_mult, norm=norm, post_norm=post_norm, kv_heads=kv_heads, qk_norm=qk_norm, softcap=softcap,
        optimizer=optimizer, combine=combine, match=match, match_by=match_by)
    execute(o, spec)


SWEEP_HELP = (
    "Train every combination of the --grid values (the full grid) and print a table, a pivot "
    "table for two keys, and a comparison plot.\n\nExamples:\n\n"
    "  tformer sweep --grid model.n_head=1,2,4 --grid model.d_model=64,128 --steps 300\n\n"
    "  tformer sweep --grid train.lr=1e-3,3e-3 --seeds 2\n\n"
    "  tformer sweep experiments/studies/sweep_heads.yaml"
)


def sweep(
    ctx: typer.Context,
    config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None, steps: StepsOpt = None,
    device: DeviceOpt = None, seed: SeedOpt = None, data: DataOpt = None, out: OutOpt = None,
    grid: Annotated[Optional[List[str]], typer.Option("--grid", help="KEY=V1,V2,... (repeatable; the "
                    "full grid of all keys is trained).", show_default=False)] = None,
    seeds: SeedsOpt = None, resume: ResumeOpt = None, parallel: ParallelOpt = False,
    isolate: IsolateOpt = False, jobs: JobsOpt = None, batch_seeds: BatchSeedsOpt = True, tune: TuneOpt = None,
    lr_grid: LrGridOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.study import files

    o = ExperimentOptions.from_context(ctx)
    execute(o, None if o.resume else files.sweep_from(o.source(), grid))


SWEEP_HEADS_HELP = (
    "Same d_model, different head counts (d_k = d_model / n_head shown as a column). Head counts "
    "that do not divide d_model are refused before anything trains. A front end of `tformer sweep`.\n\n"
    "Examples:\n\n"
    "  tformer sweep-heads --heads 1,2,4,8,16 --steps 300\n\n"
    "  tformer sweep-heads --heads 1,4,16 --d-model 64 --seeds 2\n\n"
    "  tformer sweep-heads --heads 8 --kv-heads 1,2,4,8     # MQA, GQA, MHA: loss vs KV-cache bytes"
)


def sweep_heads(
    ctx: typer.Context,
    config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None, steps: StepsOpt = None,
    device: DeviceOpt = None, seed: SeedOpt = None, data: DataOpt = None, out: OutOpt = None,
    heads: Annotated[str, typer.Option("--heads", help="Head counts, comma separated.")] = "1,2,4,8,16",
    d_model: Annotated[Optional[int], typer.Option("--d-model", help="model.d_model for every member "
                       "(default: the config's).", show_default=False)] = None,
    kv_heads: Annotated[Optional[str], typer.Option("--kv-heads", help="model.n_kv_head values, comma "
                        "separated: key/value heads shared by the query heads (each must divide every "
                        "head count).", show_default=False)] = None,
    seeds: SeedsOpt = None, resume: ResumeOpt = None, parallel: ParallelOpt = False,
    isolate: IsolateOpt = False, jobs: JobsOpt = None, batch_seeds: BatchSeedsOpt = True, tune: TuneOpt = None,
    lr_grid: LrGridOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.study import files

    o = ExperimentOptions.from_context(ctx)
    execute(o, None if o.resume else files.heads_from(o.source(), heads, d_model, kv_heads))


SWEEP_DMODEL_HELP = (
    "Different widths d_model at a fixed head count; d_ff follows d_model (4x, or 8/3x for swiglu) "
    "unless model.d_ff is set. A front end of `tformer sweep`.\n\nExamples:\n\n"
    "  tformer sweep-dmodel --d-model 64,128,256 --steps 300\n\n"
    "  tformer sweep-dmodel --d-model 32,64,128 --heads 2 --seeds 2"
)


def sweep_dmodel(
    ctx: typer.Context,
    config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None, steps: StepsOpt = None,
    device: DeviceOpt = None, seed: SeedOpt = None, data: DataOpt = None, out: OutOpt = None,
    d_model: Annotated[str, typer.Option("--d-model", help="Widths, comma separated.")] = "64,128,256",
    heads: Annotated[Optional[int], typer.Option("--heads", help="model.n_head for every member "
                     "(default: the config's).", show_default=False)] = None,
    seeds: SeedsOpt = None, resume: ResumeOpt = None, parallel: ParallelOpt = False,
    isolate: IsolateOpt = False, jobs: JobsOpt = None, batch_seeds: BatchSeedsOpt = True, tune: TuneOpt = None,
    lr_grid: LrGridOpt = None,
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.study import files

    o = ExperimentOptions.from_context(ctx)
    execute(o, None if o.resume else files.dmodel_from(o.source(), d_model, heads))


STUDY_HELP = (
    "Run a study file (a config with an experiment: section, see experiments/studies/) as it is; flags "
    "override its settings. A built-in study can be named without its path (`tformer presets` lists them)."
    "\n\nExamples:\n\n"
    "  tformer study ablate_causal_mask                  # a built-in study by name\n\n"
    "  tformer study experiments/studies/ablate_causal_mask.yaml\n\n"
    "  tformer study experiments/studies/sweep_heads.yaml --steps 100 --out runs/heads-quick\n\n"
    "  tformer study --all                                # every built-in study and a findings report"
)


def study_(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Argument(help="A study file (model:, data:, train: and experiment:) "
                                                     "or the name of a built-in study.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Run every built-in study, one after another, and write a "
                                       "findings report (findings.md) beside them.")] = False,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="With --all: continue the studies in this "
                                                   "directory (finished members are skipped) and rewrite "
                                                   "findings.md.", show_default=False)] = None,
    set_: SetOpt = None, steps: StepsOpt = None, device: DeviceOpt = None, seed: SeedOpt = None,
    data: DataOpt = None, out: OutOpt = None, seeds: SeedsOpt = None, parallel: ParallelOpt = False,
    isolate: IsolateOpt = False, jobs: JobsOpt = None, batch_seeds: BatchSeedsOpt = True, tune: TuneOpt = None,
    lr_grid: LrGridOpt = None, until_converged: UntilOpt = False, max_steps: MaxStepsOpt = None,
    ladder: LadderOpt = False, rungs: RungsOpt = None, json_: JsonOpt = False,
) -> None:
    from tformer_cli.errors import ConfigError
    from tformer_cli.study import files

    o = ExperimentOptions.from_context(ctx)
    if o.jobs is None:  # a study's members are many and small: the runner picks for the machine
        o.jobs = "auto"
    if all_ == (config is not None):
        raise ConfigError("give a study (a name or a file) or --all, not both" if all_ else
                          "which study? give a name (`tformer presets` lists them), a study file, or --all")
    if resume is not None and not all_:
        raise ConfigError("tformer study --resume needs --all",
                          hint=f"continue one study's directory with tformer ablate (or sweep) --resume {resume}")
    if all_:
        run_all(o)
        return
    run_study(o, files.find_study(config))


RUNS_HELP = (
    "List runs and experiments under DIR with their key figures.\n\nExamples:\n\n"
    "  tformer runs\n\n  tformer runs runs/ --json"
)


def runs(
    directory: Annotated[Path, typer.Argument(help="Where to look (two levels deep).")] = Path("runs"),
    json_: JsonOpt = False,
) -> None:
    from tformer_cli.errors import ConfigError
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.experiments import show_runs
    from tformer_cli.study.listing import list_runs

    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such directory", hint="give the --out root of your runs")
    entries = list_runs(directory)
    if json_:
        print_json([e.to_dict() for e in entries])
        return
    show_runs(console(), entries, directory)


COMPARE_HELP = (
    "Draw the validation curves of runs and of experiments' members on one axis (compare.png) and "
    "list where each ended. A run is one curve; an experiment gives one per member and seed, a "
    "member's seeds in one colour.\n\nExamples:\n\n"
    "  tformer compare runs/a runs/b\n\n"
    "  tformer compare runs/base runs/ablate-20260101-120000 --x tokens --out cmp.png"
)


def compare(
    paths: Annotated[List[Path], typer.Argument(help="Run or experiment directories.", show_default=False)],
    x: Annotated[str, typer.Option("--x", help="The x axis: steps, tokens, or time (training seconds, "
                                   "evaluation left out).")] = "steps",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the PNG.")] = Path("compare.png"),
    json_: JsonOpt = False,
) -> None:
    from dataclasses import asdict

    from tformer_cli.render.compare import compare_plot, show_compare
    from tformer_cli.render.console import console, print_json
    from tformer_cli.study.compare import curves

    found = curves([Path(p) for p in paths], x)
    plot = compare_plot(found, x, out)
    if json_:
        print_json({"plot": str(plot), "x": x, "curves": [asdict(c) for c in found]})
    else:
        show_compare(console(), found, plot)


def register(app: typer.Typer) -> None:
    for name, fn, help_, short in (
        (None, ablate, ABLATE_HELP, "Baseline vs one member per flag, same data, seeds and budget."),
        (None, sweep, SWEEP_HELP, "Train every combination of --grid values and compare them."),
        ("sweep-heads", sweep_heads, SWEEP_HEADS_HELP, "Same d_model, different head counts (d_k = d_model / h)."),
        ("sweep-dmodel", sweep_dmodel, SWEEP_DMODEL_HELP, "Different widths d_model at a fixed head count."),
        ("study", study_, STUDY_HELP, "Run a built-in study or a study file as it ships."),
        (None, runs, RUNS_HELP, "List runs and experiments with their key figures."),
        (None, compare, COMPARE_HELP, "Validation curves of runs and experiment members on one plot."),
    ):
        app.command(name, help=help_, short_help=short)(fn)
