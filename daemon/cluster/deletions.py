"""The deletion log: which chunk ids the metadata primary started deleting, and when each
deletion finished everywhere.

It closes the race between garbage collection and a commit that references a
chunk nobody referenced before.  On one host both run in the metadata thread,
so "is it stored?" and "delete it" cannot interleave.  Across hosts the
existence check asks other nodes before the commit's transaction, so the
primary remembers which chunk ids it started deleting, and when the deletion
finished everywhere: a commit whose existence check began before a deletion of
one of its chunks finished refuses that chunk (ChunkMissing; the client stores
it again).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.meta import MetaStore

# Deletions are remembered this long: far longer than any existence check takes to reach its commit.
DELETION_MEMORY_S = 3600.0
# ... and at most this many ids (oldest forgotten first; a check older than that refuses everything).
DELETION_MEMORY_MAX = 1_000_000


class DeletionLog:
    """Chunk ids whose deletion started, with the time it finished everywhere (inf until then).

    Thread-safe: deletions start in the metadata thread (inside the GC
    transaction) and finish on the event loop after the broadcast.
    """

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._finished: dict[bytes, float] = {}
        self._forgot_before = -math.inf  # checks that began before this cannot be vouched for

    shared = False  # deletions are entered here, not in the metadata transaction

    def now(self) -> float:
        """The clock :meth:`refuses` compares with: read it before an existence check."""
        return float(self._clock())

    def started(self, chunk_ids: Iterable[bytes], *, finish_in_s: float | None = None) -> None:
        """Deletions begin; they count as finished at :meth:`finished`, or after ``finish_in_s``
        (a node deleting its own copies promises to be done by then or not to delete at all)."""
        done = math.inf if finish_in_s is None else self._clock() + finish_in_s
        with self._lock:
            for cid in chunk_ids:
                self._finished.pop(cid, None)  # re-insert: dicts keep insertion order, oldest first
                self._finished[cid] = done

    def finished(self, chunk_ids: Iterable[bytes]) -> None:
        now = self._clock()
        with self._lock:
            for cid in chunk_ids:
                if cid in self._finished:
                    self._finished[cid] = now

    def refuses(self, chunk_id: bytes, check_started: float) -> bool:
        """True if an existence check that began at ``check_started`` may have seen a copy
        that a deletion has removed since (or is removing)."""
        with self._lock:
            if check_started <= self._forgot_before:
                return True
            done = self._finished.get(chunk_id)
        return done is not None and done >= check_started

    def trim(self) -> None:
        """Forget deletions that finished long ago (and, past the size bound, the oldest)."""
        now = self._clock()
        with self._lock:
            while self._finished:
                cid, done = next(iter(self._finished.items()))
                too_many = len(self._finished) > DELETION_MEMORY_MAX
                if not too_many and (done > now or now - done < DELETION_MEMORY_S):
                    break
                del self._finished[cid]
                self._forgot_before = max(self._forgot_before, min(now, done))

    def __len__(self) -> int:
        return len(self._finished)


# How far apart two daemons' clocks may be: a deletion that finished this long before an
# existence check began still refuses the chunk (PostgreSQL; see SharedDeletionLog).
CLOCK_SKEW_S = 5.0


class SharedDeletionLog:
    """The deletion log of daemons that share a PostgreSQL metadata database: kept in the
    database itself (daemon/meta/deletions.py), with wall-clock times.

    ``started`` and ``refuses`` run in the metadata thread, inside the transaction that
    decides a deletion or a commit; ``finished`` may come from any thread and is written
    by the next :meth:`flush` (until then the chunk stays refused, which is the safe side).
    """

    shared = True

    def __init__(self, store: Callable[[], MetaStore]) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pending: deque[tuple[list[bytes], int]] = deque()
        self._trim_wanted = False

    def now(self) -> float:
        return time.time()

    def started(self, chunk_ids: Iterable[bytes], *, finish_in_s: float | None = None) -> None:
        now_ns = time.time_ns()
        done_ns = None if finish_in_s is None else now_ns + int(finish_in_s * 1e9)
        self._store().deletions_started(list(chunk_ids), now_ns, done_ns)

    def finished(self, chunk_ids: Iterable[bytes]) -> None:
        with self._lock:
            self._pending.append((list(chunk_ids), time.time_ns()))

    def refuses(self, chunk_id: bytes, check_started: float) -> bool:
        return self._store().deletion_refuses(chunk_id, int((check_started - CLOCK_SKEW_S) * 1e9))

    def trim(self) -> None:
        self._trim_wanted = True

    def flush(self) -> None:
        """Metadata thread: record the finished deletions (and trim old ones when asked)."""
        store = self._store()
        while True:
            with self._lock:
                if not self._pending:
                    break
                ids, done_ns = self._pending.popleft()
            store.deletions_finished(ids, done_ns)
        if self._trim_wanted:
            self._trim_wanted = False
            store.deletions_trim(time.time_ns() - int(DELETION_MEMORY_S * 1e9))


# Either log; ``shared`` tells them apart where it matters (when files may be deleted).
AnyDeletionLog = DeletionLog | SharedDeletionLog
