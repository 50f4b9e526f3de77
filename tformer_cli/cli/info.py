"""Small listing commands: keys, presets, corpora."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(short_help="List every configuration key with its type and default.",
                 help="List every configuration key with its type and default.\n\nExample: tformer keys")
    def keys() -> None:
        from tformer_cli.core.config import describe_keys
        from tformer_cli.render.console import console
        from tformer_cli.render.info import show_keys

        show_keys(console(), describe_keys())

    @app.command(short_help="List the built-in presets and studies.",
                 help="List the built-in presets (experiments/*.yaml) and studies (experiments/studies/*.yaml)."
                 "\n\nExample: tformer presets")
    def presets() -> None:
        from tformer_cli.core.config import PRESET_DIR, preset_names
        from tformer_cli.render.console import console
        from tformer_cli.render.info import show_presets

        rows = [(name, (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# "))
                for name in preset_names()]
        studies = sorted(p.stem for p in (PRESET_DIR / "studies").glob("*.yaml"))
        show_presets(console(), rows, studies)

    @app.command(short_help="List the built-in corpora (no download needed).",
                 help="List the built-in corpora (no download needed).\n\nExample: tformer corpora")
    def corpora() -> None:
        from tformer_cli.core.data import BUILTIN
        from tformer_cli.render.console import console
        from tformer_cli.render.info import show_corpora

        show_corpora(console(), [(name, desc) for name, (desc, _) in BUILTIN.items()])
