"""What the listing commands print: `tformer keys`, `tformer presets`, `tformer corpora`."""

from __future__ import annotations

from typing import Sequence

from rich.console import Console

from tformer_cli.render.console import line
from tformer_cli.render.table import Col, show


def show_keys(con: Console, rows: Sequence[tuple[str, str, str]]) -> None:
    """(key, type, default) rows of core.config.describe_keys."""
    show(con, [Col("key", key=True), Col("type"), Col("default")], rows,
         title="configuration keys (YAML key = --set path = sweep axis = table column)")


def show_presets(con: Console, presets: Sequence[tuple[str, str]], studies: Sequence[str]) -> None:
    """(name, first line of its YAML) of each preset, then the study names."""
    show(con, [Col("preset", key=True), Col("description")], presets, title="presets (--preset NAME)")
    line(con, f"\nstudies (tformer study NAME): {', '.join(studies)}")


def show_corpora(con: Console, corpora: Sequence[tuple[str, str]]) -> None:
    """(name, description) of each built-in corpus."""
    show(con, [Col("corpus", key=True), Col("description")], corpora, title="built-in corpora (data.corpus)")
