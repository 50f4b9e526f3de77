"""The layout shows the architecture: arrows point one way (cli -> render -> engines -> run -> core).

Every import in the package, at module level or inside a function, is checked: a module may
import its own layer or a lower one, never a higher one, and the import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tformer_cli"

# Lower numbers are lower layers.  study/ and inside/ are engines side by side: neither uses the other.
LAYERS = {"errors": 0, "core": 0, "run": 1, "train": 2, "study": 3, "inside": 3, "render": 4, "cli": 5,
          "__main__": 6, "__init__": 0}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """tformer_cli modules imported anywhere in ``path`` (``from x import name`` counts x.name when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tformer_cli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tformer_cli"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if _exists(sub) else node.module)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (PKG.parent / rel).with_suffix(".py").exists() or (PKG.parent / rel / "__init__.py").exists()


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return top, LAYERS[top]


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
GRAPH = {m: {i for i in _imports(p) if i != m and i != "tformer_cli"} for m, p in MODULES.items()}


def test_every_package_has_a_layer():
    unknown = sorted({_layer(m)[0] for m in MODULES if _layer(m)[0] not in LAYERS})
    assert not unknown


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    top, level = _layer(module)
    upward = []
    for target in GRAPH[module]:
        t_top, t_level = _layer(target)
        same_tier_other = t_level == level and t_top != top and top not in ("core", "errors") \
            and t_top not in ("core", "errors")
        if t_level > level or same_tier_other:
            upward.append(target)
    assert not upward, f"{module} (layer {top}) imports {sorted(upward)}"


def test_no_import_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in MODULES:
        if m not in index:
            visit(m)
    assert not cycles


def test_the_core_never_prints_or_draws():
    """Only render/ (and the CLI's error boundary) write to the terminal or draw figures."""
    offenders = []
    for m, p in MODULES.items():
        top, _ = _layer(m)
        if top in ("render", "cli", "__main__"):
            continue
        text = p.read_text()
        if "print(" in text or "matplotlib" in text or "import rich" in text or "from rich" in text:
            offenders.append(m)
    assert not offenders


# ---------------------------------------------------------------- one verdict rule, statistics in study/

STATS = "tformer_cli.study.stats"
RULE_HOMES = ("tformer_cli.study.verdict", "tformer_cli.study.stats")  # the interval is tested only here
BOUNDS = {"ci_low", "ci_high", "diff_ci_low", "diff_ci_high"}
ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _stats_imports(tree: ast.AST) -> list[str]:
    """What ``tree`` takes from study.stats beyond its constants (UPPER_CASE names)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == STATS]
        elif isinstance(node, ast.ImportFrom) and node.module == "tformer_cli.study":
            found += [f"{node.module}.{a.name}" for a in node.names if a.name == "stats"]
        elif isinstance(node, ast.ImportFrom) and node.module == STATS:
            found += [f"{STATS}.{a.name}" for a in node.names if not a.name.isupper()]
    return found


def _is_bound(node: ast.AST) -> bool:
    """``x.ci_low`` or ``x["ci_low"]`` (either end of a 95% interval)."""
    if isinstance(node, ast.Attribute):
        return node.attr in BOUNDS
    return isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in BOUNDS


def _interval_tests(source: str) -> list[int]:
    """Lines that test an interval bound against something (<, <=, >, >=) or take its width
    (ci_high - ci_low, as the seeds-needed formula does).  ``is None`` checks are not tests."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, ORDER) for op in node.ops):
            if any(_is_bound(n) for operand in (node.left, *node.comparators) for n in ast.walk(operand)):
                lines.append(node.lineno)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub):
            if any(_is_bound(n) for n in ast.walk(node.left)) and any(_is_bound(n) for n in ast.walk(node.right)):
                lines.append(node.lineno)
    return lines


def test_render_takes_no_statistics_from_study_stats():
    """Means, sds, intervals and verdicts come computed from study/; render/ only formats them."""
    offenders = {m: _stats_imports(ast.parse(p.read_text())) for m, p in MODULES.items() if _layer(m)[0] == "render"}
    assert not {m: names for m, names in offenders.items() if names}


def test_the_verdict_rule_lives_in_one_place():
    """Only study/verdict.py (verdict.rule, with its seeds-needed formula) decides from an interval;
    everyone else words verdict.rule's finding."""
    offenders = {m: lines for m, p in MODULES.items()
                 if m not in RULE_HOMES and (lines := _interval_tests(p.read_text()))}
    assert not offenders


def test_the_checks_catch_a_second_rule():
    assert _interval_tests("if p.ci_low > 0:\n    pass")
    assert _interval_tests('ok = -MARGIN < p["ci_low"] and p["ci_high"] < MARGIN')
    assert _interval_tests("half = (p.ci_high - p.ci_low) / 2")
    assert not _interval_tests('if v.ci_low is None or p["ci_high"] is not None:\n    s = f"{100 * v.ci_low:+.1f}"')
    assert _stats_imports(ast.parse("from tformer_cli.study import stats"))
    assert _stats_imports(ast.parse("from tformer_cli.study.stats import mean_std"))
    assert not _stats_imports(ast.parse("from tformer_cli.study.stats import MIN_SEEDS"))


# ---------------------------------------------------------------- one loop: one optimizer, one schedule

OPTIMIZER_HOME = "tformer_cli.train.optim"
LR_WRITERS = {OPTIMIZER_HOME, "tformer_cli.train.graph_step"}  # the schedule; its value moved to the device


def _optimizers_built(tree: ast.AST) -> list[int]:
    """Lines that construct a torch optimizer (torch.optim.X(...), optim.X(...))."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr[:1].isupper():
            inner = node.func.value
            if isinstance(inner, ast.Attribute) and inner.attr == "optim" or \
                    isinstance(inner, ast.Name) and inner.id == "optim":
                out.append(node.lineno)
    return out


def _lr_written(tree: ast.AST) -> list[int]:
    """Lines that assign a learning rate into an optimizer group (group["lr"] = ...)."""
    out = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) \
            else []
        out += [t.lineno for t in targets if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                and t.slice.value == "lr"]
    return out


def test_one_optimizer_builder_and_one_schedule():
    """Every task trains with train/optim.py's optimizer and lr_at schedule: no module builds an
    optimizer or writes a learning rate itself (the seq2seq and fine-tune loops once did)."""
    built = {m: lines for m, p in MODULES.items() if m != OPTIMIZER_HOME
             and (lines := _optimizers_built(ast.parse(p.read_text())))}
    trains = [m for m in MODULES if _layer(m)[0] in ("core", "run", "train", "study", "inside")]  # not the display
    written = {m: lines for m in trains if m not in LR_WRITERS
               and (lines := _lr_written(ast.parse(MODULES[m].read_text())))}
    assert not built and not written, (built, written)
    assert _optimizers_built(ast.parse("opt = torch.optim.AdamW(model.parameters())"))
    assert _lr_written(ast.parse("for g in opt.param_groups:\n    g['lr'] = 0.1"))


def test_the_code_is_lint_clean():
    """ruff (lint and import order, configured in pyproject.toml) finds nothing: .ci/run fails on a
    new finding, and so does the test suite a developer runs."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    out = subprocess.run([ruff, "check", "--no-cache", str(PKG.parent)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
