"""The console script ``dfs``: the command group of :mod:`dfs.cli.app` with every command on it.

Each command module registers its commands on the group when imported; importing them here, and
only here, keeps the group complete wherever ``dfs`` starts from.
"""

from __future__ import annotations

# Imported for their commands, which they register on ``main``.
from dfs.cli import (  # noqa: F401
    admintokens,
    bench,
    cluster,
    disks,
    doctor,
    key,
    meta,
    nodes,
    quota,
    s3keys,
    snapshot,
    status,
    tier,
    trash,
    updown,
)
from dfs.cli.app import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
