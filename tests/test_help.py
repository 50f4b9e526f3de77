"""Help is instant: `tformer --help` and every `tformer CMD --help` never import torch."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from tformer_cli.cli.app import app, main
import typer.main
names = [c.name for c in typer.main.get_command(app).commands.values()]
bad = []
for args in [["--help"]] + [[n, "--help"] for n in names]:
    try:
        main(args)
    except SystemExit as e:
        if e.code not in (0, None):
            bad.append((args, e.code))
heavy = [m for m in ("torch", "numpy", "matplotlib", "tokenizers", "safetensors") if m in sys.modules]
print("COMMANDS", len(names))
print("BAD", bad)
print("HEAVY", heavy)
"""


def test_help_never_imports_torch():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "BAD []" in out.stdout, out.stdout
    assert "HEAVY []" in out.stdout, out.stdout
    assert int(out.stdout.split("COMMANDS ")[1].split()[0]) >= 4


def test_every_command_help_has_an_example(cli):
    import typer.main

    from tformer_cli.cli.app import app

    for name, cmd in typer.main.get_command(app).commands.items():
        assert "xample" in (cmd.help or ""), f"`tformer {name} --help` has no example"


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "tformer_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("tformer ")


def test_shell_completion_script_without_torch():
    probe = ("import sys\nfrom tformer_cli.cli.app import main\ntry:\n    main(['--show-completion', 'bash'])\n"
             "except SystemExit as e:\n    code = e.code\n"
             "sys.stderr.write(f'CODE {code} HEAVY {[m for m in (\"torch\", \"numpy\") if m in sys.modules]}')\n")
    # typer finds the shell among the parent processes: run under bash (not exec-ed away by "; exit"), so
    # the test does not depend on whether pytest was started from a shell (a detached job may not be)
    out = subprocess.run(["bash", "-c", '"$0" -c "$1"; exit $?', sys.executable, probe], capture_output=True, text=True,
                         timeout=60)
    assert "CODE 0 HEAVY []" in out.stderr, out.stderr
    assert "complete" in out.stdout and "tformer" in out.stdout
