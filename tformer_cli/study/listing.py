"""`tformer runs`: the runs and experiments under a directory, with their key figures."""

from __future__ import annotations

from pathlib import Path

from tformer_cli.errors import RunError, TformerError
from tformer_cli.run.finetune_dir import FinetuneDir
from tformer_cli.run.rundir import RunDir
from tformer_cli.run.validate import is_num
from tformer_cli.study.results import RESULTS_JSON, ExperimentEntry, RunEntry, read_results
from tformer_cli.study.spec import is_experiment_dir, load_spec


def list_runs(root: str | Path) -> list[RunEntry | ExperimentEntry]:
    """Runs and experiments under ``root`` (two levels deep; member runs are listed with their experiment)."""
    root = Path(root)
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for p in list(candidates):
        if p != root and p.is_dir() and not is_experiment_dir(p) and not RunDir(p).is_run() \
                and not FinetuneDir(p).is_finetune():
            candidates += sorted(c for c in p.iterdir() if c.is_dir())
    found: list[RunEntry | ExperimentEntry] = []
    for p in candidates:
        try:  # one damaged directory is listed as damaged; the others are still listed
            if is_experiment_dir(p):
                found.append(_experiment_entry(p))
            elif RunDir(p).is_run():
                found.append(_run_entry(p))
            elif FinetuneDir(p).is_finetune():
                found.append(_finetune_entry(p))
        except (TformerError, OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            found.append(RunEntry(str(p), f"damaged: {_why(e)}"))
    return found


def _why(e: Exception) -> str:
    text = str(e) if isinstance(e, TformerError) else f"{type(e).__name__}: {e}"
    return text if len(text) <= 120 else text[:117] + "..."


def _run_entry(p: Path) -> RunEntry:
    s, problem = RunDir(p).check_summary()
    if problem is not None:
        return RunEntry(str(p), f"damaged: {_why(RunError(problem))}")
    if s is None:
        return RunEntry(str(p), "imported, not trained" if _imported(p) else "no summary (running or crashed)")
    status = "interrupted" if s.interrupted else "finished"
    exact = s.extra.get("exact_match")
    if is_num(exact):  # a seq2seq run: its held-out exact match
        status += f", exact match {100 * exact:.1f}%"
    return RunEntry(str(p), status, steps=f"{s.steps_done}/{s.steps}", val_loss=s.val_loss, params=s.params,
                    tokens_per_s=s.tokens_per_s, elapsed_s=s.elapsed_s,
                    **({"type": "seq2seq"} if exact is not None else {}))


def _finetune_entry(p: Path) -> RunEntry:
    """A fine-tune (`tformer finetune`): its held-out accuracy and macro-F1 in the status."""
    s, problem = FinetuneDir(p).check_summary()
    if problem is not None:
        return RunEntry(str(p), f"damaged: {_why(RunError(problem))}", type="fine-tune")
    if s is None:
        return RunEntry(str(p), "no summary (running or crashed)", type="fine-tune")
    status = "interrupted" if s.interrupted else "finished"
    if s.test is not None:
        status += f", accuracy {100 * s.test.accuracy:.1f}%, macro-F1 {s.test.macro_f1:.3f}"
    return RunEntry(str(p), status, steps=f"{s.steps_done}/{s.steps}", params=s.params, elapsed_s=s.elapsed_s,
                    type="fine-tune")


def _imported(p: Path) -> bool:
    """A run written by `tformer import` (its checkpoint header names where it came from)."""
    import json

    try:
        return "imported_from" in json.loads(RunDir(p).checkpoint_json.read_text()).get("train_state", {})
    except (OSError, ValueError, AttributeError):
        return False


def _experiment_entry(p: Path) -> ExperimentEntry:
    e = ExperimentEntry(str(p), "no results yet (running or crashed)")
    try:
        spec = load_spec(p)
    except TformerError as err:
        e.status = f"damaged: {_why(err)}"
        return e
    e.kind, e.members, e.seeds = spec.kind, len(spec.members), len(spec.seeds)
    if not (p / RESULTS_JSON).exists():
        return e
    try:
        r = read_results(p)
        ok = [s for s in r.summary if s.n_ok and s.compared_loss is not None]
        best = min(ok, key=lambda s: s.compared_loss) if ok else None
        failed = sum(1 for row in r.rows if row.status == "failed")
        if not (r.elapsed_s is None or is_num(r.elapsed_s)) or not isinstance(r.interrupted, bool):
            raise ValueError("field elapsed_s or interrupted has the wrong type")
        if best is not None and not (isinstance(best.member, str) and is_num(best.compared_loss)):
            raise ValueError("the best member's name or loss has the wrong type")
    except Exception as err:  # any shape of damage in results.json: listed, never fatal
        e.status = f"damaged: {RESULTS_JSON}: {_why(err)}"
        return e
    e.status = "interrupted" if r.interrupted else "finished"
    e.elapsed_s = r.elapsed_s
    e.best, e.val_loss = (best.member, best.compared_loss) if best else (None, None)
    e.failed = failed
    e.verdicts = [v.outcome for v in r.verdicts if isinstance(v.outcome, str)]
    return e
