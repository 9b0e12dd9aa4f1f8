"""Hinted handoff: the copies this node still owes to other nodes, persisted.

When a write reaches its consistency level without every replica (a replica
was down or slow), the writer records a *hint* ``(target node, chunk id)``
here; the repair loop replays hints once the target is back and removes each
as the target acknowledges the copy.  Hints must outlive a restart of this
daemon, or a quorum write acknowledged while a replica was down would stay
under-replicated until anti-entropy happened to find it.

Storage: one SQLite file (WAL, ``synchronous=FULL``, so :meth:`HintQueue.add`
is durable on power loss when it returns), one connection shared by all
threads and serialised by a lock.  Every method is one short transaction, so
the lock is held only as long as one statement batch.

Invariants: a (target, chunk id) pair is queued at most once (adding it
again keeps its original place); :meth:`HintQueue.peek` returns a target's
hints oldest first.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from dfs.core.errors import ConfigError, DfsError, InternalError, InvalidArgument, NoSpace

# rowid orders hints: SQLite gives a new row a rowid above every existing one
# (max + 1), so ascending rowid is oldest first without AUTOINCREMENT's extra table.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS hints ("
    " seq INTEGER PRIMARY KEY,"
    " target TEXT NOT NULL,"
    " chunk_id BLOB NOT NULL,"
    " UNIQUE (target, chunk_id))",
    "CREATE INDEX IF NOT EXISTS hints_by_target ON hints (target, seq)",
)


def _db_error(exc: sqlite3.Error, context: str) -> DfsError:
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    if full or "database or disk is full" in str(exc):
        return NoSpace(f"hint queue {context}: {exc}")
    return InternalError(f"hint queue {context}: {type(exc).__name__}: {exc}")


class HintQueue:
    """A persisted queue of (target node id, chunk id) pairs; thread-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _db_error(exc, f"opening {self.path}") from exc
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            # FULL in WAL mode syncs the WAL on every commit: a hint is a promise to another node.
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                for statement in _SCHEMA:
                    self._db.execute(statement)
        except sqlite3.Error as exc:
            self._db.close()
            raise _db_error(exc, f"opening {self.path}") from exc
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (or rolled back) before the caller goes on."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (e.g. on SQLITE_FULL); a failed COMMIT may not.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @staticmethod
    def _check_target(target: str) -> None:
        if not isinstance(target, str) or not target:
            raise InvalidArgument(f"hint target must be a non-empty node id, not {target!r:.80}")

    def add(self, target: str, chunk_ids: list[bytes]) -> None:
        """Queue copies of ``chunk_ids`` owed to ``target``; durable when it returns.

        Pairs already queued are ignored and keep their place.
        """
        self._check_target(target)
        for cid in chunk_ids:
            if not isinstance(cid, bytes) or not cid:
                raise InvalidArgument(f"hint chunk id must be non-empty bytes, not {cid!r:.80}")
        if not chunk_ids:
            return
        try:
            with self._lock, self._transaction() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO hints (target, chunk_id) VALUES (?, ?)",
                    [(target, cid) for cid in chunk_ids],
                )
        except sqlite3.Error as exc:
            raise _db_error(exc, f"add for {target}") from exc

    def targets(self) -> dict[str, int]:
        """How many hints each target has (targets without hints are absent)."""
        try:
            with self._lock:
                rows = self._db.execute("SELECT target, COUNT(*) FROM hints GROUP BY target").fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, "targets") from exc
        return {target: n for target, n in rows}

    def peek(self, target: str, limit: int) -> list[bytes]:
        """Up to ``limit`` of ``target``'s chunk ids, oldest first; they stay queued."""
        self._check_target(target)
        if limit < 0:
            raise InvalidArgument(f"peek limit must be >= 0, not {limit}")
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT chunk_id FROM hints WHERE target = ? ORDER BY seq LIMIT ?", (target, limit)
                ).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, f"peek for {target}") from exc
        return [bytes(cid) for (cid,) in rows]

    def remove(self, target: str, chunk_ids: list[bytes]) -> None:
        """Forget hints the target now holds; ids not queued are ignored."""
        self._check_target(target)
        if not chunk_ids:
            return
        try:
            with self._lock, self._transaction() as db:
                db.executemany(
                    "DELETE FROM hints WHERE target = ? AND chunk_id = ?",
                    [(target, cid) for cid in chunk_ids],
                )
        except sqlite3.Error as exc:
            raise _db_error(exc, f"remove for {target}") from exc

    def drop_target(self, target: str) -> int:
        """Forget every hint for ``target`` (say, it left the cluster); how many were dropped."""
        self._check_target(target)
        try:
            with self._lock, self._transaction() as db:
                dropped: int = db.execute("DELETE FROM hints WHERE target = ?", (target,)).rowcount
        except sqlite3.Error as exc:
            raise _db_error(exc, f"drop_target {target}") from exc
        return dropped

    def count(self) -> int:
        """All hints, over all targets."""
        try:
            with self._lock:
                n: int = self._db.execute("SELECT COUNT(*) FROM hints").fetchone()[0]
        except sqlite3.Error as exc:
            raise _db_error(exc, "count") from exc
        return n

    def close(self) -> None:
        """Close the database; idempotent.  Every added hint is already durable."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> HintQueue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
