"""`tformer ablate`, `sweep`, `sweep-heads`, `sweep-dmodel`, `study`, `runs`: controlled experiments.

Each command builds a list of members (dotted overrides of one base config), hands them to
tformer_cli.study.engine.run_experiment and renders its result.  A config file may carry an
``experiment:`` section (a study file, see experiments/studies/*.yaml); its settings are defaults
that command-line flags add to or override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from tformer_cli.cli.options import ConfigArg, DataOpt, DeviceOpt, JsonOpt, OutOpt, PresetOpt, SeedOpt, SetOpt, StepsOpt, StopOnInterrupt, flag_overrides

SeedsOpt = Annotated[Optional[int], typer.Option("--seeds", help="Run every member with N seeds (train.seed, "
                                                 "+1, ...) and show mean ± std.", show_default=False)]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the experiment in this directory: "
                                                   "finished members are skipped.", show_default=False)]
ParallelOpt = Annotated[bool, typer.Option("--parallel", help="One member per CUDA device at a time, each in "
                                           "its own process (in sequence when one device is visible).")]
IsolateOpt = Annotated[bool, typer.Option("--isolate", help="Run each member in its own process (per-member "
                                          "peak memory on CPU; a few seconds of start-up each).")]

ABLATE_KEYS = {"kind", "no_causal_mask", "no_ffn", "pos", "activation", "ffn_mult", "combine", "match",
               "match_by", "seeds", "prompt"}
SWEEP_KEYS = {"kind", "grid", "seeds", "prompt"}


# ---------------------------------------------------------------- config and study files


def experiment_config(config, preset, sets, steps, device, seed, data) -> tuple[Any, dict[str, Any]]:
    """(base Config, the file's experiment: section); defaults < preset < file < flags < --set."""
    from tformer_cli.core import config as cfgmod
    from tformer_cli.errors import ConfigError

    file_over: dict[str, Any] = {}
    exp: dict[str, Any] = {}
    if config is not None:
        data_ = cfgmod.load_yaml(config)
        exp = data_.pop("experiment", None) or {}
        if not isinstance(exp, dict):
            raise ConfigError(f"{config}: experiment: must be a mapping (kind, flags, grid, seeds)")
        for section, values in data_.items():
            if not isinstance(values, dict):  # let from_dict name the problem
                values = {"__invalid__": values} if values is not None else {}
            file_over.update({f"{section}.{k}": v for k, v in values.items()})
    if config is None and preset is None:
        preset = "quick"
    overrides = {**file_over, **flag_overrides(steps, device, seed, data, sets)}
    return cfgmod.resolve(None, preset, overrides), exp


def _check_section(exp: dict[str, Any], allowed: set[str], kind: str, path) -> None:
    from tformer_cli.errors import ConfigError

    problems = [f"experiment.{k}: unknown key for kind {kind} (known: {', '.join(sorted(allowed))})"
                for k in exp if k not in allowed]
    if exp.get("kind", kind) != kind:
        problems.append(f"experiment.kind: the file is a '{exp['kind']}' study; run it with "
                        f"`tformer study {path}`")
    if problems:
        raise ConfigError(problems)


def _as_list(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _seeds(cfg, n: Optional[int]) -> list[int]:
    from tformer_cli.errors import ConfigError

    n = 1 if n is None else n
    if n < 1:
        raise ConfigError(f"--seeds {n}: must be at least 1")
    return [cfg.train.seed + i for i in range(n)]


# ---------------------------------------------------------------- running and rendering


def _refuse_with_resume(resume, **given) -> None:
    from tformer_cli.errors import ConfigError

    named = [k for k, v in given.items() if v not in (None, False, [], ())]
    if named:
        raise ConfigError(f"--resume {resume} replays the experiment as it was defined; do not also give "
                          f"{', '.join('--' + n.replace('_', '-') for n in named)}",
                          hint="start a new experiment with another --out to change it")


def execute(spec, out: Optional[Path], resume: Optional[Path], json_: bool, parallel: bool, isolate: bool):
    """Run the spec (or resume a directory) with live progress, render, and exit 130 if interrupted."""
    from tformer_cli.render import console as report, fmt as _fmt, progress as _progress  # noqa: F401
    from tformer_cli.study import engine as study
    from tformer_cli.run.rundir import default_run_dir

    if resume is not None:
        spec = study.load_spec(resume)
        out_dir = resume
    else:
        study.validate_members(spec)  # every member config, before anything trains
        stamp = default_run_dir("runs").name  # runs/<stamp>, unique
        out_dir = out or Path("runs") / f"{spec.kind}-{stamp}"
    con = report.err_console() if json_ else report.console()
    notice = lambda s: con.print(f"[dim]{s}[/dim]")  # noqa: E731
    if not json_:
        con.print(f"{spec.kind}: {len(spec.members)} member(s) x {len(spec.seeds)} seed(s) -> {out_dir}")

    def display(label: str):
        return _progress.TrainDisplay(label, to_stderr=json_)

    with StopOnInterrupt(notice) as stop:
        result = study.run_experiment(spec, out_dir, resume=resume is not None, display=display, notice=notice,
                                      should_stop=stop, parallel=parallel, isolate=isolate)
    if json_:
        report.print_json(result.to_dict())
    else:
        render(result)
    if result.interrupted:
        report.err_console().print(f"interrupted: continue with  tformer {spec.kind} --resume {out_dir}",
                                   soft_wrap=True)
        from tformer_cli.errors import Interrupted

        raise Interrupted()


def _pm(mean, std, fmt) -> str:
    if mean is None:
        return "-"
    return fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")


def _loss(x) -> str:
    from tformer_cli.render.fmt import fmt_loss

    return fmt_loss(x)


def _diff(s: dict[str, Any]) -> str:
    if s["is_baseline"]:
        return "(baseline)"
    d = s["diff_vs_baseline"]
    if d is None:
        return "-"
    text = f"{d:+.4f}"
    if s["significant"] is False:
        text += " (n.s.)"
    elif s["significant"]:
        text += f" (p={s['p_value']:.3f})"
    return text


def results_table(r: dict[str, Any]):
    from rich.table import Table

    from tformer_cli.render.fmt import fmt_bytes, fmt_int, fmt_params

    multi = len(r["seeds"]) > 1
    t = Table(title=f"tformer {r['kind']}: {r['out_dir']}" + (f" ({len(r['seeds'])} seeds, mean ± std)"
                                                              if multi else ""), title_justify="left")
    cols = ["member", "what changed"] + [a for a in r["axes"]] + (["d_k"] if "model.n_head" in r["axes"]
                                                                   or "model.d_model" in r["axes"] else [])
    cols += ["params", "train loss", "val loss (teacher-forced)", "val loss (causal-consistent)",
             "Δ vs baseline", "tokens/s", "peak memory"]
    extra_keys = sorted({k for s in r["summary"] for k in (s.get("extra") or {})})
    cols += extra_keys
    for c in cols:
        t.add_column(c, overflow="fold")
    for s in r["summary"]:
        if not s["n_ok"]:
            t.add_row(s["member"], s["changed"], *[str(s["axes"].get(a, "")) for a in r["axes"]],
                      *([""] if "d_k" in cols else []),
                      "FAILED: " + "; ".join(s["errors"]) if s["errors"] else "not run",
                      *(["-"] * 6), *(["-"] * len(extra_keys)))
            continue
        row = [s["member"], s["changed"] + (f"\n[resized] {s['resized']}" if s["resized"] else "")]
        row += [str(s["axes"].get(a, "")) for a in r["axes"]]
        if "d_k" in cols:
            row.append(str(s["d_k"]))
        row += [fmt_params(s["params"]), _pm(s["train_loss"], s["train_loss_std"], _loss),
                _pm(s["val_loss"], s["val_loss_std"], _loss),
                _pm(s["val_loss_causal"], s["val_loss_causal_std"], _loss) if s["val_loss_causal"] is not None
                else "n/a (MLM)" if s["sample"] == "n/a (MLM)" else "-",
                _diff(s), fmt_int(s["tokens_per_s"]), fmt_bytes(s["peak_memory_bytes"])]
        row += [_fmt_extra((s.get("extra") or {}).get(k)) for k in extra_keys]
        if s["n_ok"] < s["n_seeds"]:
            row[0] += f"\n({s['n_seeds'] - s['n_ok']} seed(s) failed)"
        t.add_row(*row)
    return t


def samples_table(r: dict[str, Any]):
    """The greedy continuation of the fixed prompt by each member (first seed)."""
    from rich.table import Table

    t = Table(title="greedy continuation of a fixed prompt (first seed)", title_justify="left")
    t.add_column("member")
    t.add_column("sample", overflow="fold")
    for s in r["summary"]:
        sample = s["sample"]
        t.add_row(s["member"], repr(sample) if sample and sample != "n/a (MLM)" else str(sample or "-"))
    return t


def _fmt_extra(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def anatomy_table(r: dict[str, Any]):
    from rich.table import Table

    from tformer_cli.render.fmt import fmt_params

    t = Table(title="parameters and training FLOPs per token by group", title_justify="left")
    for c in ("member", "params: embeddings", "attention", "FFN", "total", "FLOPs/token: embeddings",
              "attention", "FFN", "total", "resized (--match params)"):
        t.add_column(c)
    for s in r["summary"]:
        if s["params"] is None:
            continue
        t.add_row(s["member"], fmt_params(s["params_embeddings"]), fmt_params(s["params_attention"]),
                  fmt_params(s["params_ffn"]), fmt_params(s["params"]), fmt_params(s["flops_embeddings"]),
                  fmt_params(s["flops_attention"]), fmt_params(s["flops_ffn"]), fmt_params(s["flops_per_token"]),
                  s["resized"] or "-")
    return t


def pivot_table(r: dict[str, Any]):
    """Two swept keys: rows by the first, columns by the second, the compared loss in each cell."""
    from rich.table import Table

    from tformer_cli.study.engine import comparable_loss

    a, b = r["axes"][:2]
    rows = list(dict.fromkeys(s["axes"][a] for s in r["summary"]))
    cols = list(dict.fromkeys(s["axes"][b] for s in r["summary"]))
    cell = {(s["axes"][a], s["axes"][b]): s for s in r["summary"]}
    t = Table(title=f"validation loss (causal-consistent), {a} down, {b} across", title_justify="left")
    t.add_column(f"{a} \\ {b}")
    for c in cols:
        t.add_column(str(c))
    for v in rows:
        line = [str(v)]
        for c in cols:
            s = cell.get((v, c))
            line.append("failed" if s and not s["n_ok"] else "-" if not s else _pm(
                comparable_loss(s), s["val_loss_causal_std"] if s["val_loss_causal"] is not None
                else s["val_loss_std"], _loss))
        t.add_row(*line)
    return t


def render(result) -> None:
    from tformer_cli.render import console as report, fmt as _fmt, progress as _progress  # noqa: F401

    r = result.to_dict()
    con = report.console()
    con.print(results_table(r))
    con.print(samples_table(r))
    if len(r["axes"]) >= 2:
        con.print(pivot_table(r))
    con.print(anatomy_table(r))
    captions = [
        "val loss (teacher-forced): one forward pass per window, every position predicted (what training "
        "optimises); val loss (causal-consistent): each prediction from a forward pass on its prefix only "
        "(what generation sees), on the same validation windows (at most 256). Δ vs baseline uses the "
        "causal-consistent loss (teacher-forced for MLM).",
        f"significance: {r['significance_rule']}." + ("" if len(r["seeds"]) > 1 else
                                                        " One seed here: noise unknown (use --seeds N)."),
        r["memory_note"] + ".",
        f"members ran {r['execution']}; tokens/s: median over log intervals, eval excluded.",
    ]
    for c in captions + r["notes"]:
        con.print(c, style="dim" if c not in r["notes"] else "bold")
    failed = [row for row in r["rows"] if row["status"] == "failed"]
    if failed:
        con.print(f"{len(failed)} member run(s) failed; the others completed", style="red")
    con.print(f"results: {r['out_dir']}/results.json, results.csv" +
              (f"; plot: {r['plot']}" if r["plot"] else "") + f"; wall time {_fmt.fmt_time(r['elapsed_s'])}")


# ---------------------------------------------------------------- spec builders (used by the commands)


def ablate_spec(cfg, exp: dict[str, Any], *, no_causal_mask=False, no_ffn=False, pos=None, activation=None,
                ffn_mult=None, combine=False, match=None, match_by=None, seeds=None):
    """The ablation spec: CLI flags add to (or, for single values, override) the study file's."""
    from tformer_cli.study import engine as study
    from tformer_cli.errors import ConfigError

    members = study.ablation_members(
        cfg, no_causal_mask=no_causal_mask or bool(exp.get("no_causal_mask")),
        no_ffn=no_ffn or bool(exp.get("no_ffn")),
        pos=list(dict.fromkeys(_as_list(exp.get("pos")) + list(pos or []))),
        activation=list(dict.fromkeys(_as_list(exp.get("activation")) + list(activation or []))),
        ffn_mult=[float(x) for x in dict.fromkeys(_as_list(exp.get("ffn_mult")) + list(ffn_mult or []))],
        combine=combine or bool(exp.get("combine")))
    spec = study.Spec("ablate", cfg.to_dict(), members, _seeds(cfg, seeds or exp.get("seeds")),
                      prompt=exp.get("prompt"))
    match = match or exp.get("match")
    if match is not None:
        if match != "params":
            raise ConfigError(f"--match {match}: only 'params' is supported")
        study.match_params(spec, match_by or exp.get("match_by") or "d_ff")
    elif match_by is not None:
        raise ConfigError("--match-by needs --match params")
    return spec


def sweep_spec(cfg, grid: dict[str, list], seeds=None, prompt=None):
    from tformer_cli.study import engine as study

    return study.Spec("sweep", cfg.to_dict(), study.grid_members(cfg, grid), _seeds(cfg, seeds),
                      axes=list(grid), prompt=prompt)


def _int_list(text: str, flag: str) -> list[int]:
    from tformer_cli.errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text}: expected integers separated by commas, e.g. 1,2,4") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{flag} {text}: expected positive integers separated by commas")
    return values


def heads_grid(cfg, heads: list[int], d_model: Optional[int]) -> dict[str, list]:
    """model.n_head values at a fixed d_model; refuses every head count that does not divide it."""
    from tformer_cli.study import engine as study
    from tformer_cli.errors import ConfigError

    d = d_model or cfg.model.d_model
    problems = study.head_problems(d, heads)
    if problems:
        raise ConfigError(problems, hint="nothing was trained; choose head counts from the valid ones")
    grid: dict[str, list] = {"model.n_head": heads}
    if d_model is not None:
        grid = {"model.d_model": [d_model], **grid}
    return grid


# ---------------------------------------------------------------- commands


def register(app: typer.Typer) -> None:  # noqa: C901 (one function per command, registered together)
    @app.command(
        help="Train the baseline and one member per flag with the same data, budget, optimizer and seeds; "
        "compare params, train/val loss (teacher-forced and causal-consistent), tokens/s, memory and a "
        "sample.\n\nExamples:\n\n"
        "  tformer ablate --no-causal-mask --steps 300          # see the leak\n\n"
        "  tformer ablate --no-ffn --match params --match-by n_layer --seeds 3\n\n"
        "  tformer ablate --pos none --pos rope --activation swiglu\n\n"
        "  tformer ablate experiments/studies/ablate_causal_mask.yaml    # a study file as it ships\n\n"
        "  tformer ablate --resume runs/ablate-20260101-120000"
    )
    def ablate(
        config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None, steps: StepsOpt = None,
        device: DeviceOpt = None, seed: SeedOpt = None, data: DataOpt = None, out: OutOpt = None,
        no_causal_mask: Annotated[bool, typer.Option("--no-causal-mask", help="A member with model.causal=false "
                                                     "(bidirectional attention).")] = False,
        no_ffn: Annotated[bool, typer.Option("--no-ffn", help="A member with model.ffn=false "
                                             "(attention-only blocks).")] = False,
        pos: Annotated[Optional[List[str]], typer.Option("--pos", help="A member with model.pos_encoding=X "
                       "(none, learned, sinusoidal, rope; repeatable).", show_default=False)] = None,
        activation: Annotated[Optional[List[str]], typer.Option("--activation", help="A member with "
                              "model.activation=X (relu, gelu, swiglu; repeatable).", show_default=False)] = None,
        ffn_mult: Annotated[Optional[List[float]], typer.Option("--ffn-mult", help="A member with model.d_ff = "
                            "X * d_model (repeatable).", show_default=False)] = None,
        combine: Annotated[bool, typer.Option("--combine", help="One member with all the flags together.")] = False,
        match: Annotated[Optional[str], typer.Option("--match", help="'params': resize each member to within 5% "
                         "of the baseline's parameter count.", show_default=False)] = None,
        match_by: Annotated[Optional[str], typer.Option("--match-by", help="What --match params resizes: d_ff "
                            "(default), n_layer or d_model.", show_default=False)] = None,
        seeds: SeedsOpt = None, resume: ResumeOpt = None, parallel: ParallelOpt = False,
        isolate: IsolateOpt = False, json_: JsonOpt = False,
    ) -> None:
        spec = None
        if resume is not None:
            _refuse_with_resume(resume, config=config, preset=preset, set=set_, steps=steps, device=device,
                                seed=seed, data=data, out=out, no_causal_mask=no_causal_mask, no_ffn=no_ffn,
                                pos=pos, activation=activation, ffn_mult=ffn_mult, combine=combine,
                                match=match, match_by=match_by, seeds=seeds)
        else:
            cfg, exp = experiment_config(config, preset, set_, steps, device, seed, data)
            _check_section(exp, ABLATE_KEYS, "ablate", config)
            spec = ablate_spec(cfg, exp, no_causal_mask=no_causal_mask, no_ffn=no_ffn, pos=pos,
                               activation=activation, ffn_mult=ffn_mult, combine=combine, match=match,
                               match_by=match_by, seeds=seeds)
        execute(spec, out, resume, json_, parallel, isolate)

    @app.command(
        help="Train every combination of the --grid values (the full grid) and print a table, a pivot "
        "table for two keys, and a comparison plot.\n\nExamples:\n\n"
        "  tformer sweep --grid model.n_head=1,2,4 --grid model.d_model=64,128 --steps 300\n\n"
        "  tformer sweep --grid train.lr=1e-3,3e-3 --seeds 2\n\n"
        "  tformer sweep experiments/studies/sweep_heads.yaml"
    )
    def sweep(
        config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None, steps: StepsOpt = None,
        device: DeviceOpt = None, seed: SeedOpt = None, data: DataOpt = None, out: OutOpt = None,
        grid: Annotated[Optional[List[str]], typer.Option("--grid", help="KEY=V1,V2,... (repeatable; the "
                        "full grid of all keys is trained).", show_default=False)] = None,
        seeds: SeedsOpt = None, resume: ResumeOpt = None, parallel: ParallelOpt = False,
        isolate: IsolateOpt = False, json_: JsonOpt = False,
    ) -> None:
        from tformer_cli.study import engine as study

        spec = None
        if resume is not None:
            _refuse_with_resume(resume, config=config, preset=preset, set=set_, steps=steps, device=device,
                                seed=seed, data=data, out=out, grid=grid, seeds=seeds)
        else:
            cfg, exp = experiment_config(config, preset, set_, steps, device, seed, data)
            _check_section(exp, SWEEP_KEYS, "sweep", config)
            g = _file_grid(exp)
            g.update(study.parse_grid(grid) if grid else {})
            if not g:
                study.parse_grid([])  # raises the "no --grid given" error
            spec = sweep_spec(cfg, g, seeds or exp.get("seeds"), exp.get("prompt"))
        execute(spec, out, resume, json_, parallel, isolate)

    @app.command(
        "sweep-heads",
        help="Same d_model, different head counts (d_k = d_model / n_head shown as a column). Head counts "
        "that do not divide d_model are refused before anything trains. A front end of `tformer sweep`.\n\n"
        "Examples:\n\n"
        "  tformer sweep-heads --heads 1,2,4,8,16 --steps 300\n\n"
        "  tformer sweep-heads --heads 1,4,16 --d-model 64 --seeds 2"
    )
    def sweep_heads(
        config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None, steps: StepsOpt = None,
        device: DeviceOpt = None, seed: SeedOpt = None, data: DataOpt = None, out: OutOpt = None,
        heads: Annotated[str, typer.Option("--heads", help="Head counts, comma separated.")] = "1,2,4,8,16",
        d_model: Annotated[Optional[int], typer.Option("--d-model", help="model.d_model for every member "
                           "(default: the config's).", show_default=False)] = None,
        seeds: SeedsOpt = None, resume: ResumeOpt = None, parallel: ParallelOpt = False,
        isolate: IsolateOpt = False, json_: JsonOpt = False,
    ) -> None:
        spec = None
        if resume is not None:
            _refuse_with_resume(resume, config=config, preset=preset, set=set_, steps=steps, device=device,
                                seed=seed, data=data, out=out, d_model=d_model, seeds=seeds)
        else:
            cfg, exp = experiment_config(config, preset, set_, steps, device, seed, data)
            grid = heads_grid(cfg, _int_list(heads, "--heads"), d_model)
            spec = sweep_spec(cfg, grid, seeds or exp.get("seeds"), exp.get("prompt"))
        execute(spec, out, resume, json_, parallel, isolate)

    @app.command(
        "sweep-dmodel",
        help="Different widths d_model at a fixed head count; d_ff follows d_model (4x, or 8/3x for swiglu) "
        "unless model.d_ff is set. A front end of `tformer sweep`.\n\nExamples:\n\n"
        "  tformer sweep-dmodel --d-model 64,128,256 --steps 300\n\n"
        "  tformer sweep-dmodel --d-model 32,64,128 --heads 2 --seeds 2"
    )
    def sweep_dmodel(
        config: ConfigArg = None, preset: PresetOpt = None, set_: SetOpt = None, steps: StepsOpt = None,
        device: DeviceOpt = None, seed: SeedOpt = None, data: DataOpt = None, out: OutOpt = None,
        d_model: Annotated[str, typer.Option("--d-model", help="Widths, comma separated.")] = "64,128,256",
        heads: Annotated[Optional[int], typer.Option("--heads", help="model.n_head for every member "
                         "(default: the config's).", show_default=False)] = None,
        seeds: SeedsOpt = None, resume: ResumeOpt = None, parallel: ParallelOpt = False,
        isolate: IsolateOpt = False, json_: JsonOpt = False,
    ) -> None:
        from tformer_cli.study import engine as study
        from tformer_cli.errors import ConfigError

        spec = None
        if resume is not None:
            _refuse_with_resume(resume, config=config, preset=preset, set=set_, steps=steps, device=device,
                                seed=seed, data=data, out=out, heads=heads, seeds=seeds)
        else:
            cfg, exp = experiment_config(config, preset, set_, steps, device, seed, data)
            widths = _int_list(d_model, "--d-model")
            h = heads or cfg.model.n_head
            problems = [p for d in widths for p in study.head_problems(d, [h])]
            if problems:
                raise ConfigError(problems, hint="nothing was trained; choose widths divisible by the head count")
            grid: dict[str, list] = {"model.d_model": widths}
            if heads is not None:
                grid["model.n_head"] = [heads]
            spec = sweep_spec(cfg, grid, seeds or exp.get("seeds"), exp.get("prompt"))
        execute(spec, out, resume, json_, parallel, isolate)

    @app.command(
        "study",
        help="Run a study file (a config with an experiment: section, see experiments/studies/) as it is; flags "
        "override its settings. A built-in study can be named without its path (`tformer presets` lists them)."
        "\n\nExamples:\n\n"
        "  tformer study ablate_causal_mask                  # a built-in study by name\n\n"
        "  tformer study experiments/studies/ablate_causal_mask.yaml\n\n"
        "  tformer study experiments/studies/sweep_heads.yaml --steps 100 --out runs/heads-quick"
    )
    def study_(
        config: Annotated[Path, typer.Argument(help="A study file (model:, data:, train: and experiment:) or "
                                               "the name of a built-in study.")],
        set_: SetOpt = None, steps: StepsOpt = None, device: DeviceOpt = None, seed: SeedOpt = None,
        data: DataOpt = None, out: OutOpt = None, seeds: SeedsOpt = None, parallel: ParallelOpt = False,
        isolate: IsolateOpt = False, json_: JsonOpt = False,
    ) -> None:
        from tformer_cli.core.config import PRESET_DIR
        from tformer_cli.errors import ConfigError

        builtin = PRESET_DIR / "studies" / f"{config}.yaml"
        if not config.exists() and builtin.exists():
            config = builtin
        cfg, exp = experiment_config(config, None, set_, steps, device, seed, data)
        kind = exp.get("kind")
        if kind == "ablate":
            _check_section(exp, ABLATE_KEYS, "ablate", config)
            spec = ablate_spec(cfg, exp, seeds=seeds)
        elif kind == "sweep":
            _check_section(exp, SWEEP_KEYS, "sweep", config)
            spec = sweep_spec(cfg, _file_grid(exp), seeds or exp.get("seeds"), exp.get("prompt"))
        else:
            raise ConfigError(f"{config}: experiment.kind must be ablate or sweep, got {kind!r}",
                              hint="a study file has an experiment: section; see experiments/studies/*.yaml")
        execute(spec, out, None, json_, parallel, isolate)

    @app.command(
        help="List runs and experiments under DIR with their key figures.\n\nExamples:\n\n"
        "  tformer runs\n\n  tformer runs runs/ --json"
    )
    def runs(
        directory: Annotated[Path, typer.Argument(help="Where to look (two levels deep).")] = Path("runs"),
        json_: JsonOpt = False,
    ) -> None:
        from tformer_cli.render import console as report, fmt as _fmt, progress as _progress  # noqa: F401
        from tformer_cli.study import engine as study
        from tformer_cli.errors import ConfigError

        if not directory.is_dir():
            raise ConfigError(f"{directory}: no such directory", hint="give the --out root of your runs")
        entries = study.list_runs(directory)
        if json_:
            report.print_json(entries)
            return
        report.console().print(runs_table(entries, directory))


def _file_grid(exp: dict[str, Any]) -> dict[str, list]:
    from tformer_cli.study import engine as study
    from tformer_cli.errors import ConfigError

    grid = exp.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError("experiment.grid: expected a mapping KEY: [V1, V2, ...]")
    return study.parse_grid([f"{k}={','.join(str(v) for v in _as_list(vs))}" for k, vs in grid.items()]) \
        if grid else {}


def runs_table(entries: list[dict[str, Any]], root: Path):
    from rich.table import Table

    from tformer_cli.render.fmt import fmt_int, fmt_loss, fmt_params, fmt_time

    t = Table(title=f"runs and experiments under {root}", title_justify="left")
    for c in ("path", "type", "status", "steps / members", "val loss", "params / best member", "tokens/s",
              "wall time"):
        t.add_column(c)
    for e in entries:
        if e["type"] == "run":
            t.add_row(e["path"], "run", e["status"], e.get("steps", "-"), fmt_loss(e.get("val_loss")),
                      fmt_params(e.get("params")), fmt_int(e.get("tokens_per_s")), fmt_time(e.get("elapsed_s")))
        else:
            what = f"{e.get('members', '?')} x {e.get('seeds', '?')} seeds"
            failed = f", {e['failed']} failed" if e.get("failed") else ""
            t.add_row(e["path"], e.get("kind", "experiment"), e["status"] + failed, what,
                      fmt_loss(e.get("val_loss")), e.get("best") or "-", "-", fmt_time(e.get("elapsed_s")))
    if not entries:
        t.caption = "nothing found: runs are directories with config.yaml, experiments with experiment.json"
    return t
