"""Fencing for the cluster-wide duties when several daemons share the metadata (PostgreSQL).

Whichever daemon holds the leadership lock (daemon/service/leadership.py) runs
the duties (GC, session expiry, op-log and request trimming, marking dead
nodes out, scheduled backups).  Each time a daemon takes the lock it bumps the
``leader_epoch`` config row; each duty's transaction runs under
:meth:`Leader.fenced`, which checks the row still holds the epoch the daemon
took.  A daemon that lost the lock without noticing (a stalled process, a
partition) fails that check, or serializes before the new leader's bump: it
can never act after its successor started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from daemon.meta.base import MetaBase, _api
from dfs.core.errors import Unavailable

T = TypeVar("T")
LEADER_EPOCH_KEY = "leader_epoch"


class NotLeader(Unavailable):
    """A cluster-wide duty was attempted by a daemon that no longer leads."""


class Leader(MetaBase):
    @_api
    def fenced(self, epoch: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in one transaction, only while ``epoch`` is the leader's."""
        with self._write():
            row = self._db.execute("SELECT value FROM config WHERE key = ?", (LEADER_EPOCH_KEY,)).fetchone()
            if row is None or int(row[0]) != epoch:
                raise NotLeader(f"leadership epoch {epoch} is over (now {None if row is None else row[0]})")
            return fn(*args, **kwargs)
