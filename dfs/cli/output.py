"""How the CLI prints: quantities for people, and ``--json`` for scripts.

The convention every reporting command follows: ``--json`` (:data:`json_option`) prints one
JSON document on stdout (:func:`emit_json`) and nothing else there; without it, lines for
people.  Progress of a long operation goes to stderr (dfs/cli/progress.py), never stdout, and
is off with ``--json``.
"""

from __future__ import annotations

import json
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output (JSON on stdout)")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def emit_json(doc: Any, *, err: bool = False) -> None:
    """``doc`` as indented JSON with sorted keys: on stdout, or on stderr (``err``) when stdout
    carries data (``dfs snapshot send`` writing its stream there)."""
    click.echo(json.dumps(doc, indent=2, sort_keys=True), err=err)
