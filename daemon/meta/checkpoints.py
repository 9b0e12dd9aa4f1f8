"""Copying SQLite's write-ahead log back into the database file, away from the metadata thread.

Left to SQLite, the writer connection checkpoints inside the commit that pushes the
log past ``wal_autocheckpoint`` pages: that commit copies every page logged since the
last checkpoint and fsyncs the database file, 20-50 ms during which no metadata call
runs (one create in about every 1,200 waited that long, so the same untar took
visibly longer depending on where those stalls fell).

A :class:`WalCheckpointer` does the same work from its own connection, in a worker
thread, four times a second: a PASSIVE checkpoint never waits for, nor blocks, the writer
or any reader, so commits go on meanwhile.  The writer keeps its automatic
checkpoint as a backstop (a log that grows faster than this keeps up with still gets
copied back).  Durability does not change: a commit is in the log before it is
acknowledged, and a checkpoint only moves pages already there.
"""

from __future__ import annotations

import logging
import sqlite3

from dfs.core.errors import InternalError

log = logging.getLogger("dfs.meta")

CHECKPOINT_INTERVAL_S = 0.25


class WalCheckpointer:
    """PASSIVE checkpoints of the SQLite database at ``path`` from a connection of its own."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def step(self) -> int:
        """One checkpoint (blocking: run it in a worker thread); the log frames it copied back,
        counting those copied before (0: the log was empty)."""
        try:
            if self._conn is None:
                # Used from whichever worker thread runs the step, one at a time.
                self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self.close()
            raise InternalError(f"checkpointing {self._path}: {type(exc).__name__}: {exc}") from exc
        if busy:
            log.debug("checkpoint of %s could not run (%d of %d frames copied)", self._path, copied, frames)
        return int(max(copied, 0))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("closing the checkpoint connection failed: %s", exc)
