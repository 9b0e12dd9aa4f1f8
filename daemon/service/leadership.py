"""Which daemon runs the cluster-wide duties.

With SQLite the metadata primary is the only daemon that can, so it always
leads.  With PostgreSQL every daemon serves metadata, and the duties (GC,
session expiry, op-log and request trimming, marking dead nodes out, scheduled
backups) run on whichever daemon holds a PostgreSQL advisory lock, on a
connection of its own: the server releases the lock the moment that
connection's session ends (a crash, a partition the server notices), and
another daemon's next attempt takes it.  Taking it bumps the fencing epoch
(daemon/meta/leader.py); every duty's transaction checks it, so a daemon that
lost the lock without noticing cannot act after its successor began.

The lock holder re-checks its connection every step; if the check fails it
stops leading at once (and its duties' transactions would fail the epoch check
anyway).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import trio

from daemon.meta.engine import PgDb
from daemon.meta.leader import LEADER_EPOCH_KEY
from daemon.service.meta_calls import MetaCalls

log = logging.getLogger("dfs.daemon")
T = TypeVar("T")
# The advisory lock key ("dfs" "lead").
LEADER_LOCK = 0x6466_7300_6C65_6164
STEP_S = 1.0


class Leadership:
    def __init__(self, metacalls: MetaCalls, *, dsn: str | None, node_id: str) -> None:
        self._metacalls = metacalls
        self._dsn = dsn  # None: SQLite, this daemon always leads (it is the only metadata server)
        self._node_id = node_id
        self._db: PgDb | None = None
        self._guard = threading.Lock()
        self.epoch: int | None = None if dsn else 0
        # Times leadership moved to or from this daemon after its first step (which only finds
        # out how things stand): a metadata failover, for dfs_meta_leader_changes_total.
        self.changes = 0
        self._stepped = False

    @property
    def leader(self) -> bool:
        return self.epoch is not None

    def status(self) -> dict[str, Any]:
        return {"leader": self.leader, "epoch": self.epoch, "shared": self._dsn is not None}

    async def step(self) -> None:
        """Take or keep the lock (PostgreSQL); a no-op with SQLite."""
        if self._dsn is None:
            return
        was = self.epoch
        self.epoch = await trio.to_thread.run_sync(self._hold)
        if self.epoch != was and self._stepped:
            self.changes += 1
        self._stepped = True
        if self.epoch != was:
            log.warning(
                "cluster duties: %s (epoch %s)",
                "this daemon leads" if self.leader else "not leading",
                self.epoch,
            )

    def _hold(self) -> int | None:
        with self._guard:
            held = self.epoch
            try:
                if self._db is None or self._db.conn.closed:
                    self._db = PgDb(self._dsn or "", connect_timeout_s=5.0)
                    held = None  # a new session holds no lock
                db = self._db
                if held is not None:
                    db.execute("SELECT 1").fetchone()  # the session, and so the lock, still lives
                    return held
                if not db.execute("SELECT pg_try_advisory_lock(?)", (LEADER_LOCK,)).fetchone()[0]:
                    return None
                row = db.execute(
                    "INSERT INTO config VALUES (?, 1) ON CONFLICT (key) DO UPDATE "
                    "SET value = config.value + 1 RETURNING value",
                    (LEADER_EPOCH_KEY,),
                ).fetchone()
                return int(row[0])
            except psycopg.Error as exc:
                log.info("cluster duties: the leadership lock is out of reach: %s", exc)
                if self._db is not None:
                    self._db.close()
                    self._db = None
                return None

    def close(self) -> None:
        with self._guard:
            if self._db is not None:
                self._db.close()
                self._db = None

    def only(self, step: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """``step`` as a periodic duty that runs on the leader only."""

        @functools.wraps(step)
        async def duty() -> Any:
            if self.leader:
                return await step()
            return None

        return duty

    def fence(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` (a metadata-thread call) under the leader's epoch check; unchanged when this
        daemon does not lead (an operator's call) or with SQLite (nothing to fence)."""
        epoch = self.epoch
        store = self._metacalls.store
        if self._dsn is None or epoch is None or store is None:
            return fn
        return functools.partial(store.fenced, epoch, fn)
