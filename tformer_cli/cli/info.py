"""Small listing commands: keys, presets, corpora."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(help="List every configuration key with its type and default.\n\nExample: tformer keys")
    def keys() -> None:
        from rich.table import Table

        from tformer_cli.render import report
        from tformer_cli.core.config import describe_keys

        t = Table(title="configuration keys (YAML key = --set path = sweep axis = table column)")
        for col in ("key", "type", "default"):
            t.add_column(col)
        for row in describe_keys():
            t.add_row(*row)
        report.console().print(t)

    @app.command(help="List the built-in presets (experiments/*.yaml) and studies (experiments/studies/*.yaml)."
                 "\n\nExample: tformer presets")
    def presets() -> None:
        from tformer_cli.render import report
        from tformer_cli.core.config import PRESET_DIR, preset_names

        for name in preset_names():
            first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
            report.console().print(f"[bold]{name}[/bold]  {first}")
        studies = sorted(p.stem for p in (PRESET_DIR / "studies").glob("*.yaml"))
        report.console().print(f"\nstudies (tformer study NAME): {', '.join(studies)}", soft_wrap=True)

    @app.command(help="List the built-in corpora (no download needed).\n\nExample: tformer corpora")
    def corpora() -> None:
        from tformer_cli.render import report
        from tformer_cli.core.data import BUILTIN

        for name, (desc, _) in BUILTIN.items():
            report.console().print(f"[bold]{name}[/bold]  {desc}")
