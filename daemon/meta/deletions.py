"""The chunk deletion log in the metadata database, for daemons that share it (PostgreSQL).

On SQLite one daemon commits every change, and its in-memory log
(daemon/cluster/deletions.py) closes the race between deleting a chunk and a
commit that references it anew.  With PostgreSQL any daemon commits, so the
log lives beside the chunks table: a deletion is entered in the same
serializable transaction that decides it (GC's, an orphan claim's), files are
deleted only after that commits, and a commit that references a chunk anew
reads the log in its own transaction.  Either the commit serializes first (the
deleter's transaction then fails and deletes nothing) or it sees the entry and
refuses the chunk until the deletion finished.
"""

from __future__ import annotations

from daemon.meta.base import MetaBase, _api


class Deletions(MetaBase):
    """Entering, finishing, consulting and trimming chunk deletions."""

    @_api
    def deletions_started(self, chunk_ids: list[bytes], started_ns: int, finished_ns: int | None) -> None:
        """Deletions of ``chunk_ids`` begin; ``finished_ns``: when they will have finished at the
        latest (None: not known until :meth:`deletions_finished`)."""
        with self._write():
            self._db.executemany(
                "INSERT INTO chunk_deletions VALUES (?, ?, ?) ON CONFLICT (chunk_id) DO UPDATE "
                "SET started_ns = excluded.started_ns, finished_ns = excluded.finished_ns",
                [(cid, started_ns, finished_ns) for cid in chunk_ids],
            )

    @_api
    def deletions_finished(self, chunk_ids: list[bytes], finished_ns: int) -> None:
        with self._write():
            self._db.executemany(
                "UPDATE chunk_deletions SET finished_ns = ? WHERE chunk_id = ? AND started_ns <= ?",
                [(finished_ns, cid, finished_ns) for cid in chunk_ids],
            )

    @_api
    def deletion_refuses(self, chunk_id: bytes, since_ns: int) -> bool:
        """True if a deletion of ``chunk_id`` may have run after ``since_ns``: unfinished, or
        finished since."""
        row = self._db.execute(
            "SELECT 1 FROM chunk_deletions WHERE chunk_id = ? AND (finished_ns IS NULL OR finished_ns >= ?)",
            (chunk_id, since_ns),
        ).fetchone()
        return row is not None

    @_api
    def deletions_trim(self, before_ns: int) -> int:
        """Forget the deletions that finished before ``before_ns``."""
        with self._write():
            deleted: int = self._db.execute(
                "DELETE FROM chunk_deletions WHERE finished_ns < ?", (before_ns,)
            ).rowcount
            return deleted
