"""Client sessions and the files they hold open.

A mount is a session; ``opens`` counts its handles per inode, so an
unlinked inode lives on (nlink 0) until its last handle is released or its
session ends or expires.  Read-only opens arrive batched, after the fact
(:meth:`Sessions.open_events`).
"""

from __future__ import annotations

from typing import Any

from daemon.meta.base import _api
from daemon.meta.inodes import _IFMT, _IFREG, READ_ONLY, Inodes, _check_writable, _is_dir
from daemon.meta.objlock import check_unlocked
from dfs.core.errors import InvalidArgument, IsADirectory, NotFound
from dfs.core.namespace import Attr

_RELATIME_NS = 24 * 3600 * 10**9
# create/open refresh their session at most this often (heartbeats always do): saves a page write.
_SESSION_REFRESH_NS = 10**9


class Sessions(Inodes):
    """Opens, releases and session lifetimes."""

    def _add_open(self, session: str, ino: int, now: int) -> None:
        self._touch_session(session, now, _SESSION_REFRESH_NS)
        self._db.execute(
            "INSERT INTO opens VALUES (?, ?, 1) "
            "ON CONFLICT (ino, session) DO UPDATE SET count = opens.count + 1",
            (ino, session),
        )

    def _touch_session(self, session: str, now: int, min_age_ns: int = 0) -> None:
        """Create or refresh a session; skip the write when it was refreshed under ``min_age_ns`` ago."""
        self._db.execute(
            "INSERT INTO sessions VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE "
            "SET last_seen_ns = excluded.last_seen_ns WHERE sessions.last_seen_ns <= ?2 - ?3",
            (session, now, min_age_ns),
        )

    @_api
    def open(self, ino: int, session: str, *, truncate: bool = False, read: bool = False) -> Attr:
        with self._write() as now:
            # Whether the file lies in a bucket with versioning Enabled (daemon/meta/versions.py),
            # in the same statement: a truncating open elsewhere pays nothing for it.
            row = self._db.execute(
                "SELECT mode, atime_ns, mtime_ns, ctime_ns, EXISTS (SELECT 1 FROM quota_chain c "
                "JOIN s3_versioning sv ON sv.ino = c.a WHERE c.q = inodes.quota AND sv.status = 'Enabled') "
                "FROM inodes WHERE ino = ?",
                (ino,),
            ).fetchone()
            if row is None:
                raise NotFound(f"inode {ino} not found")
            mode, atime, mtime, ctime, versioned = row
            if truncate and _is_dir(mode):
                raise IsADirectory(f"inode {ino} is a directory")
            if not _is_dir(mode):
                # Mounts register read-only opens with open_events: this open is for writing.
                _check_writable(ino, mode)
                check_unlocked(self._db, ino, mode, now)  # S3 object lock (daemon/meta/objlock.py)
            self._add_open(session, ino, now)
            if truncate and mode & _IFMT == _IFREG:
                # open(O_TRUNC) marks mtime and ctime even when the file was already empty.
                if versioned:
                    self._before_truncate(ino, now)  # the old content becomes a version
                self._shrink(ino, 0, now)
                self._db.execute(
                    "UPDATE inodes SET size = 0, mtime_ns = ?, ctime_ns = ? WHERE ino = ?", (now, now, ino)
                )
            if read:
                self._relatime(ino, atime, mtime, ctime, now)
            self._log(now, "open", [ino, session, truncate, read])
            return self._attr(ino)

    @_api
    def release(self, ino: int, session: str) -> None:
        with self._write() as now:
            if self._release(ino, session, now):
                self._log(now, "release", [ino, session])

    def _release(self, ino: int, session: str, now: int) -> bool:
        """One open fewer; purge at the last one if unlinked.  False if none was registered."""
        row = self._db.execute(
            "UPDATE opens SET count = count - 1 WHERE ino = ? AND session = ? RETURNING count",
            (ino, session),
        ).fetchone()
        if row is None:
            return False  # nothing registered: releasing is idempotent
        if row[0] <= 0:
            self._db.execute("DELETE FROM opens WHERE ino = ? AND session = ?", (ino, session))
            self._purge_if_unused(ino, now)
        return True

    def _relatime(self, ino: int, atime: int, mtime: int, ctime: int, now: int) -> None:
        """A read: update atime if it is not newer than mtime/ctime, or over a day old."""
        if atime <= mtime or atime <= ctime or now - atime >= _RELATIME_NS:
            # Not in a read-only snapshot (no statement of its own: the flag is in the row).
            self._db.execute(
                "UPDATE inodes SET atime_ns = ? WHERE ino = ? AND mode & ? = 0", (now, ino, READ_ONLY)
            )

    @_api
    def open_events(self, events: list[list[Any]], session: str) -> None:
        """Apply a mount's batched ``["open", ino]`` / ``["release", ino]`` events in order.

        Read-only opens are registered this way, after the fact, in one
        transaction per batch; an "open" of an inode purged meanwhile is
        skipped.  "open" also applies relatime to the file's atime.
        """
        for event in events:
            if not (isinstance(event, list | tuple) and len(event) == 2 and type(event[1]) is int):
                raise InvalidArgument(f"an open event is [kind, ino], not {event!r:.60}")
        with self._write() as now:
            for kind, ino in events:
                if kind == "open":
                    row = self._db.execute(
                        "SELECT atime_ns, mtime_ns, ctime_ns FROM inodes WHERE ino = ?", (ino,)
                    ).fetchone()
                    if row is None:
                        continue
                    self._add_open(session, ino, now)
                    atime, mtime, ctime = row
                    self._relatime(ino, atime, mtime, ctime, now)
                elif kind == "release":
                    self._release(ino, session, now)
                else:
                    raise InvalidArgument(f"unknown open event {kind!r}")
            self._log(now, "open_events", [events, session])

    @_api
    def end_session(self, session: str) -> None:
        """A mount going away cleanly: drop its opens now instead of at lease expiry."""
        with self._write() as now:
            self._end_session(session, now)
            self._log(now, "end_session", [session])

    @_api
    def session_heartbeat(self, session: str) -> None:
        with self._write() as now:
            self._touch_session(session, now)
            self._log(now, "session_heartbeat", [session])

    @_api
    def expire_sessions(self, older_than_ns: int) -> int:
        with self._write() as now:
            ids = [
                r[0]
                for r in self._db.execute("SELECT id FROM sessions WHERE last_seen_ns < ?", (older_than_ns,))
            ]
            for session in ids:
                self._end_session(session, now)
            if ids:
                self._log(now, "expire_sessions", [older_than_ns, ids])
        return len(ids)

    def _end_session(self, session: str, now: int) -> None:
        inos = [r[0] for r in self._db.execute("SELECT ino FROM opens WHERE session = ?", (session,))]
        self._db.execute("DELETE FROM opens WHERE session = ?", (session,))
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session,))
        for ino in inos:
            self._purge_if_unused(ino, now)
