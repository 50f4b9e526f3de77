"""Controlled experiments: one engine behind `tformer ablate`, `sweep`, `sweep-heads`, `sweep-dmodel`.

An experiment is a base Config and a list of members, each a dict of dotted overrides
(``{"model.causal": False}``).  Every member is trained with the same data, split, token
budget, optimizer and seeds (only its overrides differ), then measured the same way:
parameters by group (tformer_cli.anatomy), train and validation loss, the causal-consistent
validation loss (tformer_cli.train.causal_consistent_loss), tokens/s, peak memory and a
greedy continuation of a fixed prompt.

Layout of an experiment directory::

    experiment.json          the spec (base config, members, seeds): what --resume replays
    results.json / .csv      one row per member and seed, every metric; plus the per-member summary
    comparison.png           validation curves of all members, final loss and tokens/s per member
    members/<name>-s<seed>/  each member's own run directory (a normal `tformer train` run)

The core is silent: it reports through callbacks and returns an ExperimentResult.  The
trainer and the post-training evaluator are injectable so tests can use fast fakes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

from tformer_cli.core import config as cfgmod
from tformer_cli.core.config import Config
from tformer_cli.errors import ConfigError, RunError, TformerError
from tformer_cli.core.io import atomic_write_text

SPEC_NAME = "experiment.json"
RESULTS_JSON, RESULTS_CSV, PLOT_NAME = "results.json", "results.csv", "comparison.png"
MEMBER_METRICS = "member.json"  # post-training metrics of a member, so --resume need not recompute them
DEFAULT_PROMPT = "The "
SAMPLE_TOKENS = 40
CAUSAL_WINDOWS = 256  # at most this many validation windows for the causal-consistent loss (T passes each)
MATCH_TOLERANCE = 0.05
SIGNIFICANCE_RULE = ("Welch's t-test over seeds, p < 0.05 (the member's values against the baseline's); "
                     "with one seed the noise is unknown and nothing is marked")
LEAK_EXPLANATION = ("Without the causal mask every position can attend to the token it is asked to predict, "
                    "so the teacher-forced loss collapses by copying it; at generation time that future token "
                    "does not exist yet, so the causal-consistent loss and the sample expose a model that never "
                    "learned to predict.")

# Columns of results.csv in order; extra metrics (TrainResult.extra, swept axes) follow.
CSV_COLUMNS = [
    "member", "seed", "changed", "status", "error", "resized",
    "params", "params_embeddings", "params_attention", "params_ffn",
    "flops_per_token", "flops_embeddings", "flops_attention", "flops_ffn",
    "train_loss", "val_loss", "val_loss_causal", "diff_vs_baseline",
    "tokens_per_s", "peak_memory_bytes", "memory_source", "steps_done", "elapsed_s", "sample", "run_dir",
]


@dataclass
class Member:
    """One arm of an experiment: its overrides of the base config and what they mean in words."""

    name: str  # also the directory name: members/<name>-s<seed>
    overrides: dict[str, Any] = field(default_factory=dict)
    changed: str = "baseline"
    resized: str = ""  # what --match params changed, in words
    axes: dict[str, Any] = field(default_factory=dict)  # swept key -> value (sweeps)


@dataclass
class Spec:
    kind: str  # ablate | sweep
    base: dict[str, Any]  # Config.to_dict() of the base config
    members: list[Member]
    seeds: list[int]
    axes: list[str] = field(default_factory=list)  # swept keys, in order (sweeps)
    prompt: str | None = None

    def config(self) -> Config:
        return cfgmod.from_dict(self.base)

    def member_config(self, m: Member, seed: int) -> Config:
        return self.config().replace({**m.overrides, "train.seed": seed})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Spec":
        return cls(d["kind"], d["base"], [Member(**m) for m in d["members"]], list(d["seeds"]),
                   list(d.get("axes", [])), d.get("prompt"))


@dataclass
class ExperimentResult:
    kind: str
    out_dir: str
    rows: list[dict[str, Any]]  # one per member and seed
    summary: list[dict[str, Any]]  # one per member: mean/std over seeds and significance
    members: list[dict[str, Any]]
    axes: list[str]
    seeds: list[int]
    interrupted: bool
    execution: str  # how members were run (sequential / one process per device ...)
    memory_note: str
    significance_rule: str
    notes: list[str]
    plot: str | None
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- building members


def member_dir(out_dir: Path, m: Member, seed: int) -> Path:
    return Path(out_dir) / "members" / f"{m.name}-s{seed}"


def describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in overrides.items()) or "baseline"


def _fmt_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def ablation_members(base: Config, *, no_causal_mask: bool = False, no_ffn: bool = False,
                     pos: list[str] | None = None, activation: list[str] | None = None,
                     ffn_mult: list[float] | None = None, combine: bool = False) -> list[Member]:
    """The baseline plus one member per flag (or one member with all flags when ``combine``)."""
    arms: list[tuple[str, dict[str, Any]]] = []
    if no_causal_mask:
        arms.append(("no-causal-mask", {"model.causal": False}))
    if no_ffn:
        arms.append(("no-ffn", {"model.ffn": False}))
    for p in pos or []:
        arms.append((f"pos-{p}", {"model.pos_encoding": p}))
    for a in activation or []:
        arms.append((f"act-{a}", {"model.activation": a}))
    for x in ffn_mult or []:
        arms.append((f"ffn-mult-{x:g}", {"model.d_ff": int(round(x * base.model.d_model))}))
    problems = [f"{name}: {describe(ov)} is the baseline's value already (the member would equal the baseline)"
                for name, ov in arms if all(base.get(k) == v for k, v in ov.items())]
    if problems:
        raise ConfigError(problems, hint="ablate a setting the base config does not have")
    if not arms:
        raise ConfigError("nothing to ablate: give at least one of --no-causal-mask, --no-ffn, --pos, "
                          "--activation, --ffn-mult", hint="e.g. tformer ablate --no-ffn")
    if combine:
        keys = [k for _, ov in arms for k in ov]
        if len(keys) != len(set(keys)):
            raise ConfigError("--combine: each key may be changed once (two values given for the same key)")
        merged = {k: v for _, ov in arms for k, v in ov.items()}
        arms = [("+".join(n for n, _ in arms), merged)]
    return [Member("baseline")] + [Member(n, ov, describe(ov)) for n, ov in arms]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["model.n_head=1,2,4"]`` -> ``{"model.n_head": [1, 2, 4]}`` (values parsed like --set)."""
    grid: dict[str, list[Any]] = {}
    problems = []
    for item in items:
        if "=" not in item:
            problems.append(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. model.n_head=1,2,4")
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        values = [cfgmod.parse_set([f"{key}={v.strip()}"])[key] for v in raw.split(",") if v.strip()]
        if not values:
            problems.append(f"--grid {key}: no values")
        elif key in grid:
            problems.append(f"--grid {key}: given twice")
        else:
            grid[key] = values
    if problems:
        raise ConfigError(problems)
    if not grid:
        raise ConfigError("no --grid given", hint="e.g. --grid model.n_head=1,2,4")
    return grid


def grid_members(base: Config, grid: dict[str, list[Any]]) -> list[Member]:
    """The full Cartesian product, in the order the values were given."""
    keys = list(grid)
    members = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        axes = dict(zip(keys, combo))
        name = "_".join(f"{k.split('.', 1)[1]}-{_fmt_value(v)}" for k, v in axes.items())
        ov = dict(axes)
        if ov.get("train.objective") == "mlm" and "model.causal" not in ov:
            ov["model.causal"] = False  # MLM is defined with bidirectional attention (config.validate)
        changed = describe({k: v for k, v in ov.items() if base.get(k) != v})
        members.append(Member(name, ov, changed, axes=axes))
    return members


def head_problems(d_model: int, heads: list[int]) -> list[str]:
    """Every head count that does not divide d_model, in config.head_count_problem's words."""
    return [p for h in heads if (p := cfgmod.head_count_problem(d_model, h))]


def validate_members(spec: Spec) -> None:
    """Build every member config before anything trains; report all problems at once."""
    problems = []
    names = [m.name for m in spec.members]
    if len(names) != len(set(names)):
        problems.append(f"member names must be unique, got {names}")
    for m in spec.members:
        try:
            spec.member_config(m, spec.seeds[0])
        except ConfigError as e:
            problems.extend(f"member {m.name}: {p}" for p in e.problems)
    if problems:
        raise ConfigError(problems, hint="no member was trained; fix the values above")


# ---------------------------------------------------------------- parameter matching


def _params(cfg: Config, vocab_size: int) -> int:
    from tformer_cli.core import anatomy

    return anatomy.totals(cfg.model, vocab_size).params


def model_vocab(cfg: Config) -> int:
    """The vocabulary the model is built with (+1 for the [MASK] token of MLM)."""
    from tformer_cli.core.data import prepare

    return prepare(cfg.data).vocab_size + (1 if cfg.train.objective == "mlm" else 0)


def match_params(spec: Spec, by: str = "d_ff", vocab_size: int | None = None) -> None:
    """Resize every non-baseline member so its parameter count is within 5% of the baseline's.

    ``by`` is d_ff, n_layer or d_model; a member without an FFN cannot be resized by d_ff and
    falls back to n_layer (said in its ``resized`` note).  The closest size is chosen.
    """
    if by not in ("d_ff", "n_layer", "d_model"):
        raise ConfigError(f"--match-by {by}: expected d_ff, n_layer or d_model")
    base = spec.config()
    vocab = vocab_size or model_vocab(base)
    target = _params(base, vocab)
    for m in spec.members:
        if not m.overrides:
            continue
        cfg = base.replace(m.overrides)
        key = by if (by != "d_ff" or cfg.model.ffn) else "n_layer"
        before = _params(cfg, vocab)
        value, after = _closest(cfg, key, target, vocab)
        if value == cfg.get(f"model.{key}") and key != "d_ff":
            m.resized = f"none needed ({_pct(before, target)})"
            continue
        m.overrides = {**m.overrides, f"model.{key}": value}
        note = f"model.{key} {cfg.get(f'model.{key}') if key != 'd_ff' else cfg.model.d_ff_resolved} -> {value}: " \
               f"{before:,} -> {after:,} params ({_pct(after, target)} vs baseline)"
        if key != by:
            note += f"; no FFN, so n_layer instead of {by}"
        if abs(after - target) > MATCH_TOLERANCE * target:
            note += " [not within 5%: no size of this kind gets closer]"
        m.resized = note
        m.changed = describe(m.overrides)


def _pct(n: int, target: int) -> str:
    return f"{100 * (n - target) / target:+.1f}%"


def _closest(cfg: Config, key: str, target: int, vocab: int) -> tuple[int, int]:
    """(value of model.<key>, params) closest to ``target``; parameters grow with each key."""
    m = cfg.model
    if key == "d_model":
        # d_model must stay divisible by n_head (and even for sinusoidal; d_k even for rope)
        step = math.lcm(m.n_head * (2 if m.pos_encoding == "rope" else 1), 2 if m.pos_encoding == "sinusoidal" else 1)
        candidates = range(step, 8 * m.d_model + step, step)
    elif key == "n_layer":
        candidates = range(1, 8 * m.n_layer + 9)
    else:
        candidates = range(1, 16 * m.d_model + 1)
    best = None
    for v in candidates:  # closed-form counts: a few thousand evaluations take milliseconds
        n = _params(cfg.replace({f"model.{key}": v}), vocab) if key != "d_ff" else _ffn_params(cfg, v, vocab)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (v, n)
        if n > target and best[0] != v:
            break
    assert best is not None
    return best


def _ffn_params(cfg: Config, d_ff: int, vocab: int) -> int:
    import dataclasses

    from tformer_cli.core import anatomy

    return anatomy.totals(dataclasses.replace(cfg.model, d_ff=d_ff), vocab).params


# ---------------------------------------------------------------- measuring a member


def anatomy_columns(cfg: Config, vocab_size: int) -> dict[str, int]:
    """Parameters and training FLOPs per token split into embeddings, attention and FFN."""
    from tformer_cli.core import anatomy

    t = anatomy.totals(cfg.model, vocab_size)
    out = {"params": t.params, "flops_per_token": t.flops_per_token}
    for g in ("embeddings", "attention", "ffn"):
        out[f"params_{g}"] = t.by_group_params.get(g, 0)
        out[f"flops_{g}"] = t.by_group_flops.get(g, 0)
    return out


def default_evaluator(run_dir: Path, cfg: Config, prompt: str | None) -> dict[str, Any]:
    """Causal-consistent val loss and a greedy sample, from the member's checkpoint."""
    import torch

    from tformer_cli.core import device as dev
    from tformer_cli.core.data import prepare
    from tformer_cli.train.batches import Batcher
    from tformer_cli.train.distributed import DistInfo
    from tformer_cli.train.evaluate import causal_consistent_loss
    from tformer_cli.run.load import load_for_inference

    model, tok, mcfg, ckpt, device = load_for_inference(run_dir, cfg.train.device)
    if mcfg.train.objective == "mlm":
        return {"val_loss_causal": None, "sample": "n/a (MLM)"}
    dtype = dev.resolve_dtype(mcfg.train.dtype, device)
    ds = prepare(mcfg.data)
    batcher = Batcher(ds, mcfg, device, DistInfo(), ckpt.vocab_size)
    # Whole eval batches, the first of those evaluate() uses: with eval_iters * batch_size <= 256 the
    # windows are exactly the teacher-forced val loss's, so a causal model shows two equal numbers.
    B = mcfg.train.batch_size
    n = B * min(mcfg.train.eval_iters, max(1, CAUSAL_WINDOWS // B))
    causal = causal_consistent_loss(model, batcher, n, device, dtype)
    text = prompt if prompt is not None else DEFAULT_PROMPT
    if not text or tok.unknown(text):  # a corpus without these characters: start from its own text
        text = tok.decode([int(i) for i in ds.val[:8]])
    ids = tok.encode(text)[-(mcfg.model.block_size // 2):]
    with torch.no_grad():
        new = _greedy(model, ids, SAMPLE_TOKENS)
    return {"val_loss_causal": causal, "sample": one_line(text + tok.decode(new))}


def _greedy(model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation (temperature 0); the KV cache only where the model supports one."""
    from tformer_cli.core.generate import generate

    use_cache = bool(getattr(model, "supports_cache", False))  # a bidirectional model has none
    return [int(t) for t in generate(model, ids, n, temperature=0, use_cache=use_cache)]


def one_line(text: str, width: int = 60) -> str:
    flat = text.replace("\r", "").replace("\n", "⏎").replace("\t", " ")
    return flat[:width]


def _default_trainer(cfg: Config, run_dir: Path, *, resume: bool, progress, should_stop):
    from tformer_cli.train.loop import train

    return train(cfg, run_dir, resume=resume, progress=progress, should_stop=should_stop)


def _as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


# ---------------------------------------------------------------- running


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a member that ran to the end, else None."""
    try:
        s = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return s if not s.get("interrupted") and s.get("steps_done") == s.get("steps") else None


def _has_checkpoint(run_dir: Path) -> bool:
    from tformer_cli.run.checkpoint import CKPT_NAME

    return (run_dir / CKPT_NAME).exists()


def prepare_experiment_dir(out_dir: Path, spec: Spec) -> None:
    """Create a fresh experiment directory and write its spec; never clobber anything."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"--out {out_dir} exists and is not empty",
                          hint=f"continue it with --resume {out_dir}, or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {out_dir}: {e.strerror}", hint="choose a writable --out") from None
    atomic_write_text(out_dir / SPEC_NAME, json.dumps(spec.to_dict(), indent=2) + "\n")


def load_spec(exp_dir: Path) -> Spec:
    try:
        return Spec.from_dict(json.loads((Path(exp_dir) / SPEC_NAME).read_text()))
    except OSError:
        raise ConfigError(f"--resume {exp_dir}: not an experiment directory (no {SPEC_NAME})",
                          hint="give a directory written by tformer ablate or tformer sweep") from None
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{exp_dir}/{SPEC_NAME} is damaged: {e}") from None


@dataclass
class _Job:
    member: Member
    seed: int
    cfg: Config
    run_dir: Path
    label: str


def run_experiment(
    spec: Spec,
    out_dir: str | Path,
    *,
    resume: bool = False,
    trainer: Callable[..., Any] | None = None,
    evaluator: Callable[[Path, Config, str | None], dict[str, Any]] | None = None,
    display: Callable[[str], ContextManager[Callable]] | None = None,
    notice: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    parallel: bool = False,
    isolate: bool = False,
    devices: list[str] | None = None,
) -> ExperimentResult:
    """Train and measure every member x seed into ``out_dir``; write results.json/.csv and the plot.

    ``display(label)`` gives a context manager yielding the progress callback of one member.
    ``parallel`` runs one process per device when more than one is given (or visible);
    ``isolate`` runs each member in its own process even on one device (honest peak memory).
    A member that fails is recorded with its error; the others still run.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    validate_members(spec)
    if resume:
        if not (out_dir / SPEC_NAME).exists():
            raise ConfigError(f"--resume {out_dir}: not an experiment directory (no {SPEC_NAME})")
    else:
        prepare_experiment_dir(out_dir, spec)
    say = notice or (lambda s: None)
    stop = should_stop or (lambda: False)
    trainer = trainer or _default_trainer
    evaluator = evaluator or default_evaluator
    jobs = [_Job(m, s, spec.member_config(m, s), member_dir(out_dir, m, s), f"{m.name} seed {s}")
            for m in spec.members for s in spec.seeds]
    for i, j in enumerate(jobs):
        j.label = f"[{i + 1}/{len(jobs)}] {j.label}"

    devices = devices if devices is not None else _visible_devices(spec.config())
    if parallel and len(devices) > 1:
        execution = f"in parallel, one process per device ({', '.join(devices)})"
        outcomes = _run_processes(jobs, devices, resume, say)
    elif isolate or parallel:
        why = "" if isolate else " (--parallel needs more than one CUDA device; only one is visible)"
        execution = f"in sequence, one process per member{why}"
        outcomes = _run_processes(jobs, devices[:1] or [spec.config().train.device], resume, say)
    else:
        execution = "in sequence, in this process"
        outcomes = [_run_inline(j, trainer, resume, display, stop, say) if not stop() else None for j in jobs]
    interrupted = any(o is None or (o.get("summary") or {}).get("interrupted") for o in outcomes)

    rows = []
    for j, o in zip(jobs, outcomes):
        if o is None:
            rows.append(_row(j, {"status": "not run", "error": ""}, {}))
            continue
        post = {}
        if o["status"] == "ok":
            post = _post_metrics(j, evaluator, spec.prompt, o, say)
        rows.append(_row(j, o, post))
    _add_baseline_diffs(rows, spec)
    summary = summarize(rows, spec)
    memory_note = _memory_note(rows, execution)
    result = ExperimentResult(
        kind=spec.kind, out_dir=str(out_dir), rows=rows, summary=summary,
        members=[asdict(m) for m in spec.members], axes=spec.axes, seeds=spec.seeds, interrupted=interrupted,
        execution=execution, memory_note=memory_note, significance_rule=SIGNIFICANCE_RULE,
        notes=_notes(summary, spec), plot=None, elapsed_s=0.0)
    write_results(result, out_dir)
    try:
        result.plot = str(comparison_plot(result, out_dir))
    except Exception as e:  # a plot is a convenience; never lose the results over it
        result.notes.append(f"comparison plot not written: {type(e).__name__}: {e}")
    result.elapsed_s = time.perf_counter() - t0
    write_results(result, out_dir)
    return result


def _visible_devices(cfg: Config) -> list[str]:
    """One entry per CUDA device when the config may use CUDA; else the configured device."""
    dev = cfg.train.device
    if dev in ("auto", "cuda"):
        try:
            import torch

            n = torch.cuda.device_count()
        except Exception:
            n = 0
        if n > 0:
            return [f"cuda:{i}" for i in range(n)]
    return [dev]


def _run_inline(j: _Job, trainer, resume: bool, display, stop, say) -> dict[str, Any]:
    """Train one member in this process; a TformerError becomes a failed row, not a crash."""
    done = _finished(j.run_dir) if resume else None
    if done is not None:
        say(f"{j.label}: finished earlier, skipped")
        return {"status": "ok", "summary": done, "skipped": True}
    cont = resume and _has_checkpoint(j.run_dir)
    ctx = display(j.label) if display else contextlib.nullcontext(lambda e: None)
    try:
        if not cont:
            from tformer_cli.run.rundir import prepare_run_dir

            prepare_run_dir(j.run_dir, overwrite=True)  # a member dir without a checkpoint has nothing to keep
        with ctx as progress:
            result = _as_dict(trainer(j.cfg, j.run_dir, resume=cont, progress=progress, should_stop=stop))
    except TformerError as e:
        say(f"{j.label}: failed: {e}")
        return {"status": "failed", "error": str(e), "summary": {}}
    status = "interrupted" if result.get("interrupted") else "ok"
    return {"status": status, "summary": result, "error": ""}


def _run_processes(jobs: list[_Job], devices: list[str], resume: bool, say) -> list[dict[str, Any]]:
    """One `tformer train` process per member, at most one per device at a time."""
    import queue

    free: queue.Queue[str] = queue.Queue()
    for d in devices:
        free.put(d)
    configs = jobs[0].run_dir.parent.parent / "configs"
    configs.mkdir(parents=True, exist_ok=True)

    def one(j: _Job) -> dict[str, Any]:
        done = _finished(j.run_dir) if resume else None
        if done is not None:
            say(f"{j.label}: finished earlier, skipped")
            return {"status": "ok", "summary": done, "skipped": True}
        device = free.get()
        try:
            return _run_process(j, device, resume and _has_checkpoint(j.run_dir), configs, say)
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        return list(pool.map(one, jobs))


def _run_process(j: _Job, device: str, cont: bool, configs: Path, say) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tformer_cli", "train"]
    if cont:
        cmd += ["--resume", str(j.run_dir), "--device", device, "--json"]
    else:
        cfg_path = configs / f"{j.run_dir.name}.yaml"
        atomic_write_text(cfg_path, j.cfg.to_yaml())
        cmd += [str(cfg_path), "--out", str(j.run_dir), "--overwrite", "--device", device, "--json"]
    say(f"{j.label}: started on {device}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TFORMER_DEBUG": "0"})
    summary = _finished(j.run_dir)
    if proc.returncode != 0 or summary is None:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        error = lines[-1][7:] if lines else (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]
        say(f"{j.label}: failed: {error}")
        return {"status": "failed" if proc.returncode != 130 else "interrupted", "error": error, "summary": {}}
    say(f"{j.label}: done")
    return {"status": "ok", "summary": summary, "error": ""}


def _post_metrics(j: _Job, evaluator, prompt, outcome, say) -> dict[str, Any]:
    """Causal-consistent loss and sample, cached in the member dir (a resume does not redo them)."""
    path = j.run_dir / MEMBER_METRICS
    if outcome.get("skipped") and path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    try:
        post = evaluator(j.run_dir, j.cfg, prompt)
    except TformerError as e:
        say(f"{j.label}: evaluation failed: {e}")
        return {"val_loss_causal": None, "sample": f"(evaluation failed: {e})"}
    atomic_write_text(path, json.dumps(post) + "\n")
    return post


def _row(j: _Job, outcome: dict[str, Any], post: dict[str, Any]) -> dict[str, Any]:
    s = outcome.get("summary") or {}
    vocab = s.get("vocab_size")
    row: dict[str, Any] = {c: None for c in CSV_COLUMNS}
    row.update(member=j.member.name, seed=j.seed, changed=j.member.changed, status=outcome["status"],
               error=outcome.get("error", ""), resized=j.member.resized, run_dir=str(j.run_dir))
    if vocab:
        row.update(anatomy_columns(j.cfg, vocab))
    for k in ("params", "train_loss", "val_loss", "tokens_per_s", "peak_memory_bytes", "memory_source",
              "steps_done", "elapsed_s"):
        if s.get(k) is not None:
            row[k] = s[k]
    row["val_loss_causal"] = post.get("val_loss_causal")
    row["sample"] = post.get("sample")
    if j.cfg.train.objective == "mlm":
        row["sample"] = "n/a (MLM)"
    row.update(j.member.axes)
    row["d_k"] = j.cfg.model.d_k
    for k, v in (s.get("extra") or {}).items():  # task metrics (synthetic corpora): extra columns
        row.setdefault(k, v)
    return row


def comparable_loss(row: dict[str, Any]) -> float | None:
    """The loss members are compared on: causal-consistent where defined (what generation sees),
    the teacher-forced loss otherwise (MLM members)."""
    return row["val_loss_causal"] if row.get("val_loss_causal") is not None else row.get("val_loss")


def _baseline(spec: Spec) -> Member:
    """The member with no changes from the base config, else the first."""
    base = spec.config()
    for m in spec.members:
        if all(base.get(k) == v for k, v in m.overrides.items()):
            return m
    return spec.members[0]


def _add_baseline_diffs(rows: list[dict[str, Any]], spec: Spec) -> None:
    base = _baseline(spec).name
    ref = {r["seed"]: comparable_loss(r) for r in rows if r["member"] == base}
    for r in rows:
        mine, theirs = comparable_loss(r), ref.get(r["seed"])
        r["diff_vs_baseline"] = mine - theirs if mine is not None and theirs is not None else None


# ---------------------------------------------------------------- statistics


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances); None with fewer than 2 values each."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:
        return 0.0 if diff != 0 else 1.0
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    return _betainc(df / 2, 0.5, df / (df + t * t))  # P(|T| > |t|) for Student's t with df


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return math.exp(ln_front) * h / a


def summarize(rows: list[dict[str, Any]], spec: Spec) -> list[dict[str, Any]]:
    """Per member: mean and std over seeds of every loss, the difference and its significance."""
    base = _baseline(spec).name
    by = {m.name: [r for r in rows if r["member"] == m.name] for m in spec.members}
    ref = [comparable_loss(r) for r in by[base] if r["status"] == "ok" and comparable_loss(r) is not None]
    out = []
    for m in spec.members:
        ok = [r for r in by[m.name] if r["status"] == "ok"]
        s: dict[str, Any] = {"member": m.name, "changed": m.changed, "resized": m.resized, "axes": m.axes,
                             "is_baseline": m.name == base, "n_ok": len(ok), "n_seeds": len(by[m.name]),
                             "errors": sorted({r["error"] for r in by[m.name] if r["error"]})}
        for k in ("train_loss", "val_loss", "val_loss_causal", "tokens_per_s", "peak_memory_bytes",
                  "diff_vs_baseline"):
            s[k], s[f"{k}_std"] = _mean_std([r[k] for r in ok if r.get(k) is not None])
        first = ok[0] if ok else (by[m.name][0] if by[m.name] else {})
        for k in ("params", "params_embeddings", "params_attention", "params_ffn", "flops_per_token",
                  "flops_embeddings", "flops_attention", "flops_ffn", "sample", "d_k"):
            s[k] = first.get(k)
        extra_keys = [k for k in first if k not in CSV_COLUMNS and k not in m.axes and k not in ("d_k",)]
        for k in extra_keys:
            vals = [r[k] for r in ok if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
            s.setdefault("extra", {})[k] = _mean_std(vals)[0] if vals else first.get(k)
        mine = [comparable_loss(r) for r in ok if comparable_loss(r) is not None]
        p = None if m.name == base else welch_p(mine, ref)
        s["p_value"] = p
        s["significant"] = None if p is None else p < 0.05
        out.append(s)
    return out


def _memory_note(rows: list[dict[str, Any]], execution: str) -> str:
    sources = {r["memory_source"] for r in rows if r.get("memory_source")}
    if sources == {"process peak RSS"} and "in this process" in execution:
        return ("peak memory: process peak RSS, which only grows: with members run in one process a member's "
                "figure includes every member before it (use --isolate for one process per member)")
    if sources == {"process peak RSS"}:
        return "peak memory: peak RSS of each member's own process"
    return "peak memory: " + ", ".join(sorted(sources)) if sources else "peak memory: not measured"


def _notes(summary: list[dict[str, Any]], spec: Spec) -> list[str]:
    notes = []
    base = spec.config()
    for s in summary:
        m = next(mm for mm in spec.members if mm.name == s["member"])
        if m.overrides.get("model.causal") is False and base.model.causal and base.train.objective == "clm":
            notes.append(LEAK_EXPLANATION)
            break
    return notes


# ---------------------------------------------------------------- files


def write_results(result: ExperimentResult, out_dir: Path) -> None:
    """results.json (everything) and results.csv (one row per member and seed, every metric)."""
    atomic_write_text(out_dir / RESULTS_JSON, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    columns = list(CSV_COLUMNS)
    for r in result.rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in result.rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(out_dir / RESULTS_CSV, buf.getvalue())


def comparison_plot(result: ExperimentResult, out_dir: Path) -> Path:
    """Validation-loss curves of all members on one axis; final loss and tokens/s per member."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tformer_cli.render.plots import read_metrics

    fig, (ax_c, ax_l, ax_t) = plt.subplots(1, 3, figsize=(15, 4.5), dpi=110)
    cmap = plt.get_cmap("tab10")
    names = [s["member"] for s in result.summary]
    for i, name in enumerate(names):
        for k, r in enumerate(x for x in result.rows if x["member"] == name):
            _, val = read_metrics(Path(r["run_dir"]))
            if val:
                ax_c.plot(*zip(*val), "o-", ms=3, color=cmap(i % 10), alpha=1.0 if k == 0 else 0.4,
                          label=name if k == 0 else None)
    ax_c.set(xlabel="step", ylabel="validation loss (teacher-forced, nats/token)", title="validation loss")
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=7)
    xs, labels = _x_axis(result)
    fmt = "o" if labels.get("ticks") else "o-"  # categories are not joined by lines: no order between them
    for ax, key, title in ((ax_l, None, "final validation loss"), (ax_t, "tokens_per_s", "training tokens/s")):
        if key is None:
            for k, name in (("val_loss", "teacher-forced"), ("val_loss_causal", "causal-consistent")):
                ys = [s[k] for s in result.summary]
                es = [s[f"{k}_std"] or 0 for s in result.summary]
                if any(y is not None for y in ys):
                    ax.errorbar(xs, [math.nan if y is None else y for y in ys], yerr=es, fmt=fmt, capsize=3,
                                label=name)
            ax.legend(fontsize=7)
        else:
            ys = [math.nan if s[key] is None else s[key] for s in result.summary]
            ax.errorbar(xs, ys, yerr=[s[f"{key}_std"] or 0 for s in result.summary], fmt=fmt, capsize=3)
            ax.set_ylim(bottom=0)  # from zero, so a 3% difference does not look like a cliff
        ax.set_title(title)
        ax.set_xlabel(labels["xlabel"])
        if labels.get("ticks"):
            ax.set_xticks(xs, labels["ticks"], rotation=30, ha="right", fontsize=7)
            ax.margins(x=0.2)  # keep the first and last member off the frame
        ax.grid(alpha=0.3)
    fig.suptitle(f"tformer {result.kind}: {Path(result.out_dir).name}")
    fig.tight_layout()
    out = out_dir / PLOT_NAME
    fig.savefig(out)
    plt.close(fig)
    return out


def _x_axis(result: ExperimentResult) -> tuple[list[float], dict[str, Any]]:
    """A numeric x for a one-axis numeric sweep; member names as categories otherwise."""
    if len(result.axes) == 1:
        vals = [s["axes"].get(result.axes[0]) for s in result.summary]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            return [float(v) for v in vals], {"xlabel": result.axes[0]}
    return list(range(len(result.summary))), {"xlabel": "member",
                                              "ticks": [s["member"] for s in result.summary]}


# ---------------------------------------------------------------- listing


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """Runs and experiments under ``root`` (two levels deep; member runs are listed with their experiment)."""
    root = Path(root)
    found = []
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for p in list(candidates):
        if p != root and p.is_dir() and not (p / SPEC_NAME).exists() and not (p / "config.yaml").exists():
            candidates += sorted(c for c in p.iterdir() if c.is_dir())
    for p in candidates:
        if (p / SPEC_NAME).exists():
            found.append(_experiment_entry(p))
        elif (p / "config.yaml").exists():
            found.append(_run_entry(p))
    return found


def _run_entry(p: Path) -> dict[str, Any]:
    e: dict[str, Any] = {"type": "run", "path": str(p), "status": "no summary (running or crashed)"}
    try:
        s = json.loads((p / "summary.json").read_text())
    except (OSError, ValueError):
        return e
    e.update(status="interrupted" if s.get("interrupted") else "finished", steps=f"{s['steps_done']}/{s['steps']}",
             val_loss=s.get("val_loss"), params=s.get("params"), tokens_per_s=s.get("tokens_per_s"),
             elapsed_s=s.get("elapsed_s"))
    return e


def _experiment_entry(p: Path) -> dict[str, Any]:
    e: dict[str, Any] = {"type": "experiment", "path": str(p), "status": "no results yet (running or crashed)"}
    try:
        spec = json.loads((p / SPEC_NAME).read_text())
        e.update(kind=spec["kind"], members=len(spec["members"]), seeds=len(spec["seeds"]))
        r = json.loads((p / RESULTS_JSON).read_text())
    except (OSError, ValueError, KeyError):
        return e
    ok = [s for s in r["summary"] if s["n_ok"] and comparable_loss(s) is not None]
    best = min(ok, key=comparable_loss) if ok else None
    e.update(status="interrupted" if r.get("interrupted") else "finished", elapsed_s=r.get("elapsed_s"),
             best=best["member"] if best else None, val_loss=comparable_loss(best) if best else None,
             failed=sum(1 for row in r["rows"] if row["status"] == "failed"))
    return e
