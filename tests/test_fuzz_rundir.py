"""Fuzz (hypothesis): damage any file of a run directory; every command still answers well.

Each example mutates one file of a tiny trained run (truncate, flip bytes, change a JSON or
YAML value's type, drop a key, put in a huge number; for the checkpoint, its JSON header) and
runs sample, train --resume, inspect, runs and heads on it, in a subprocess with an
address-space limit (RLIMIT_AS) and a timeout.  Each command must either work (exit 0) or exit
1 or 2 with one `error:` line (a hint and a list of problems may follow) that is not
"unexpected": no traceback, no segfault, no unbounded allocation, no hang.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import train_tiny_run

pytestmark = pytest.mark.slow

MEMORY_LIMIT = 6 << 30  # bytes of address space: torch alone maps about 1 GiB
TIMEOUT_S = 120
FILES = ("checkpoint.safetensors", "config.yaml", "tokenizer.json", "summary.json", "metrics.jsonl",
         "checkpoint.json")
KINDS = ("truncate", "flip", "retype", "drop", "huge")
ODD_VALUES = ["ten", None, [], {}, -1, 10**30, 1e308, True, "x" * 10_000, [1] * 1000]

DRIVER = r"""
import contextlib, io, json, sys
from tformer_cli.cli.app import main
run, root = sys.argv[1], sys.argv[2]
commands = [["sample", run, "--prompt", "a", "--max-new-tokens", "3", "--seed", "1", "--device", "cpu"],
            ["train", "--resume", run, "--steps", "12"],
            ["inspect", run],
            ["runs", root],
            ["heads", run, "--batches", "1", "--device", "cpu"]]
results = []
for args in commands:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    results.append({"cmd": args[0], "code": code, "err": err.getvalue()[-3000:]})
sys.__stdout__.write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("fuzz"), steps=10, eval_interval=5, log_interval=5)


def _mutate_value(data, rnd, kind):
    """Change one value (or drop one key) somewhere in nested JSON-like ``data``."""
    path = []
    node = data
    while isinstance(node, (dict, list)) and node:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        k = keys[rnd.randrange(len(keys))]
        path.append(k)
        if rnd.random() < 0.4 or not isinstance(node[k], (dict, list)) or not node[k]:
            break
        node = node[k]
    if not path:
        return ODD_VALUES[rnd.randrange(len(ODD_VALUES))]
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    if kind == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif kind == "huge":
        parent[path[-1]] = rnd.choice([10**30, -(10**30), 1e308, 2**64, 10**100])
    else:
        parent[path[-1]] = ODD_VALUES[rnd.randrange(len(ODD_VALUES))]
    return data


def mutate(path, kind, rnd):
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: rnd.randrange(len(data) + 1)])
        return
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rnd.randrange(1, 9)):
            if b:
                b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(b))
        return
    name = path.name
    if name == "checkpoint.safetensors":
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        meta = {k: json.loads(v) for k, v in header["__metadata__"].items()}
        if rnd.random() < 0.3:  # a tensor entry instead of the metadata
            key = rnd.choice([k for k in header if k != "__metadata__"])
            header[key] = _mutate_value(header[key], rnd, kind)
        else:
            meta = _mutate_value(meta, rnd, kind)
        header["__metadata__"] = {k: json.dumps(v) for k, v in meta.items()} if isinstance(meta, dict) else meta
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    elif name == "config.yaml":
        path.write_text(yaml.safe_dump(_mutate_value(yaml.safe_load(data), rnd, kind)))
    elif name == "metrics.jsonl":
        lines = data.decode().splitlines()
        i = rnd.randrange(len(lines))
        lines[i] = json.dumps(_mutate_value(json.loads(lines[i]), rnd, kind))
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(json.dumps(_mutate_value(json.loads(data), rnd, kind)))


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(FILES), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1))
def test_damaged_run_directories_get_a_clear_answer(base_run, tmp_path_factory, name, kind, seed):
    import random

    root = tmp_path_factory.mktemp("case")
    run = root / "r"
    shutil.copytree(base_run, run)
    mutate(run / name, kind, random.Random(seed))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    env.pop("TFORMER_DEBUG", None)
    try:
        p = subprocess.run([sys.executable, "-c", DRIVER, str(run), str(root)], capture_output=True, text=True,
                           timeout=TIMEOUT_S, preexec_fn=_limits, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} {kind} {seed}: no answer within {TIMEOUT_S} s")
    assert p.returncode == 0, f"{name} {kind} {seed}: the driver died ({p.returncode}): {p.stderr[-2000:]}"
    for r in json.loads(p.stdout):
        what = f"{name} {kind} {seed}: {r['cmd']} -> {r['code']}: {r['err'][-600:]}"
        assert r["code"] in (0, 1, 2), what
        assert "Traceback" not in r["err"] and "unexpected" not in r["err"], what
        if r["code"]:
            lines = [line for line in r["err"].splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("error: ")]
            assert len(errors) == 1, what
            assert all(line.startswith(("error: ", "hint: ", "  - ")) for line in lines[lines.index(errors[0]):]), what
            assert len(errors[0]) < 600, what
