"""Reading and trimming the operation log that every mutating transaction appends to (``MetaBase._log``)."""

from __future__ import annotations

from typing import Any

import msgpack

from daemon.meta.base import MetaBase, _api


class Oplog(MetaBase):
    """The log's head, the rows since a sequence number (the daemon's change feed), trimming."""

    @property
    def total_changes(self) -> int:
        """Rows changed through this connection so far: a cheap "did that call write?\"."""
        return self._db.total_changes

    @_api
    def oplog_head(self) -> int:
        """The seq of the newest oplog row (0: none yet)."""
        row = self._db.execute(
            "SELECT COALESCE((SELECT MAX(seq) FROM oplog), "
            "(SELECT value FROM config WHERE key = 'oplog_seq'), 0)"
        ).fetchone()
        return int(row[0])

    @_api
    def oplog_since(self, seq: int, limit: int = 1000) -> list[tuple[int, str, list[Any]]]:
        """Up to ``limit`` oplog rows after ``seq``, oldest first: (seq, op, args).  The daemon
        derives the change notices it sends mounts from them (dfs/core/changes.py)."""
        rows = self._db.execute(
            "SELECT seq, op, args FROM oplog WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        # Keys as the writer packed them: args from a client may hold maps with non-str keys.
        return [
            (int(s), str(op), msgpack.unpackb(args, raw=False, strict_map_key=False)) for s, op, args in rows
        ]

    def logged_rows(self) -> list[tuple[int, str, list[Any]]] | None:
        """The oplog rows the newest write transaction wrote, as :meth:`oplog_since` gives
        them, without reading them back; None when it wrote more than ``KEPT_OPLOG_ROWS``.
        Meaningful in the metadata thread right after the call that committed them."""
        rows = self._logged_rows
        if rows is None:
            return None
        return [(seq, op, msgpack.unpackb(args, raw=False, strict_map_key=False)) for seq, op, args in rows]

    @_api
    def oplog_trim(self, keep: int) -> int:
        # Not logged itself: trimming is local housekeeping, not a replicated change.
        with self._write():
            top = self._db.execute("SELECT MAX(seq) FROM oplog").fetchone()[0]
            if top is None:
                return 0
            # Remember the high-water mark so _log never reuses a number even if all rows go.
            self._db.execute(
                "INSERT INTO config VALUES ('oplog_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = "
                "CASE WHEN config.value > excluded.value THEN config.value ELSE excluded.value END",
                (top,),
            )
            deleted: int = self._db.execute(
                "DELETE FROM oplog WHERE seq <= ?", (top - max(keep, 0),)
            ).rowcount
            return deleted
