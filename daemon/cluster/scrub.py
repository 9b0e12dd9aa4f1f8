"""Continuous verification of the local chunk store, at a bounded rate.

Disks rot silently: a chunk that verified when it was written can fail its
checksum years later, and nobody notices until the last good copy is gone.
The :class:`Scrubber` reads every stored chunk once per pass (the store's
``get`` verifies it), moves a corrupt copy out of the way with
``ChunkStore.quarantine`` and tells the repair loop through ``on_corrupt``,
which fetches a good copy from a peer.

Reading every chunk costs disk bandwidth that clients want too, so the pass is
paced by a :class:`TokenBucket`.  The bucket is a pure object (time comes from
the clock it is given, it never sleeps) so other budgets, such as the repair
loop's bandwidth, reuse it.

Design note.  A pass walks the partitions in order and snapshots each one's
ids from the store's in-memory index just before checking them: cheap (no disk
walk, one partition's ids in memory at a time) and sorted.  Chunks stored
during a pass may or may not be checked in it; a chunk deleted meanwhile is
skipped (``ChunkMissing``).  All store calls that touch the disk run in worker
threads; the statistics are only changed on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from daemon.chunks import ChunkStore
from dfs.core.errors import ChunkMissing, CorruptChunk, DfsError

log = logging.getLogger("dfs.scrub")

DEFAULT_PASS_INTERVAL_S = 3600.0
# An empty store finishes a pass instantly: without a floor a short interval would spin.
MIN_IDLE_INTERVAL_S = 1.0
# The scrubber's burst: one second at its rate, so pacing starts after the first second's reads.
_BURST_S = 1.0


class TokenBucket:
    """A byte-rate budget: :meth:`take` says how long to wait before sending ``n`` bytes.

    Pure: it reads time from ``clock`` and never sleeps, so one bucket can
    be shared by several tasks (each sleeps for what its own ``take``
    returned) and tested without a clock of its own.  The bucket holds up to
    ``burst_bytes`` and refills at ``rate_bytes_s``; a take larger than what
    is there runs the bucket into debt, and the returned wait is the time
    until that debt is paid.  Later takes queue behind it, so the long-run
    rate holds whatever the sizes.  A rate <= 0 means unlimited.
    """

    def __init__(self, rate_bytes_s: float, burst_bytes: float, clock: Callable[[], float]) -> None:
        if burst_bytes < 0:
            raise ValueError(f"burst_bytes must be >= 0, not {burst_bytes!r}")
        self.rate_bytes_s = rate_bytes_s
        self.burst_bytes = burst_bytes
        self._clock = clock
        self._tokens = burst_bytes  # starts full
        self._at: float | None = None  # first take: the clock may not be usable before (trio)

    def take(self, n: float) -> float:
        """Spend ``n`` bytes of budget now; the seconds to wait before they may go (>= 0)."""
        if n < 0:
            raise ValueError(f"cannot take a negative amount: {n!r}")
        if self.rate_bytes_s <= 0:
            return 0.0
        now = self._clock()
        if self._at is not None:
            elapsed_s = max(0.0, now - self._at)  # a clock that steps back refills nothing
            self._tokens = min(self.burst_bytes, self._tokens + elapsed_s * self.rate_bytes_s)
        self._at = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_bytes_s


class Scrubber:
    """Verifies every chunk of a store, pass after pass, at ``rate_bytes_s`` (<= 0: unlimited).

    A corrupt copy is quarantined and then ``on_corrupt(chunk_id)`` is
    awaited; its exceptions propagate.  Other errors on one chunk (say
    EACCES) are logged, counted and skipped: the next pass tries again.
    """

    def __init__(
        self,
        store: ChunkStore,
        *,
        rate_bytes_s: float,
        on_corrupt: Callable[[bytes], Awaitable[None]],
        limiter: trio.CapacityLimiter | None = None,
        pass_interval_s: float = DEFAULT_PASS_INTERVAL_S,
    ) -> None:
        if pass_interval_s < 0:
            raise ValueError(f"pass_interval_s must be >= 0, not {pass_interval_s!r}")
        self.store = store
        self.pass_interval_s = pass_interval_s
        self._on_corrupt = on_corrupt
        self._limiter = limiter
        self._bucket = TokenBucket(rate_bytes_s, max(rate_bytes_s, 0.0) * _BURST_S, trio.current_time)
        self._passes = 0
        self._chunks_checked = 0
        self._bytes_checked = 0
        self._corrupt_found = 0
        self._errors = 0
        self._last_pass_s = 0.0
        self._pass_total = 0  # chunks in the store when the current pass began; 0 between passes
        self._pass_done = 0

    def statistics(self) -> dict[str, float]:
        """Counters since start-up, and how far the current pass is (0 between passes).

        ``corrupt_found`` counts copies found corrupt and quarantined;
        ``last_pass_s`` is how long the last complete pass took.
        """
        progress = min(1.0, self._pass_done / self._pass_total) if self._pass_total else 0.0
        return {
            "passes": self._passes,
            "chunks_checked": self._chunks_checked,
            "bytes_checked": self._bytes_checked,
            "corrupt_found": self._corrupt_found,
            "errors": self._errors,
            "last_pass_s": self._last_pass_s,
            "current_pass_progress": progress,
        }

    async def run(self) -> NoReturn:
        """Scrub forever: a pass, then ``pass_interval_s`` (at least 1 s when the store was empty)."""
        while True:
            checked = await self.run_pass()
            delay_s = self.pass_interval_s if checked else max(self.pass_interval_s, MIN_IDLE_INTERVAL_S)
            await trio.sleep(delay_s)

    async def run_pass(self) -> int:
        """One pass over every chunk stored when it reaches it; returns how many were checked.

        :meth:`run` calls it in a loop; public so that an operator's "scrub
        now" can run one.  Not to be run concurrently with another pass of
        the same Scrubber.
        """
        await trio.lowlevel.checkpoint()  # even a pass over an empty store is a checkpoint
        started = trio.current_time()
        counts = self.store.partition_counts()  # at most one entry per partition: cheap
        self._pass_total, self._pass_done = sum(counts.values()), 0
        checked = 0
        try:
            for part in sorted(counts):
                for chunk_id in self.store.ids_in_partition(part):
                    checked += await self._check(chunk_id)
                    self._pass_done += 1
        finally:
            self._pass_total = self._pass_done = 0
        self._passes += 1
        self._last_pass_s = trio.current_time() - started
        return checked

    async def _check(self, chunk_id: bytes) -> int:
        """Verify one chunk, quarantine and report it if corrupt, then pay for its bytes; 1 if checked."""
        try:
            size_bytes, corrupt = await trio.to_thread.run_sync(self._verify, chunk_id, limiter=self._limiter)
        except ChunkMissing:
            return 0  # deleted since the partition was listed
        except DfsError as exc:
            self._errors += 1
            log.error("scrub: cannot check chunk %s: %s", chunk_id.hex(), exc.message)
            return 0
        self._chunks_checked += 1
        self._bytes_checked += size_bytes
        if corrupt:
            self._corrupt_found += 1
            await self._on_corrupt(chunk_id)
        await trio.sleep(self._bucket.take(size_bytes))
        return 1

    def _verify(self, chunk_id: bytes) -> tuple[int, bool]:
        """In a worker thread: (bytes read, whether a corrupt copy was quarantined).

        ChunkMissing when the chunk is gone, including when a concurrent
        delete or quarantine moved it between the read and our quarantine.
        """
        try:
            return len(self.store.get(chunk_id)), False
        except CorruptChunk:
            pass
        size_bytes = self.store.stored_bytes(chunk_id)
        if not self.store.quarantine(chunk_id):
            raise ChunkMissing(f"chunk {chunk_id.hex()} went away before it could be quarantined")
        log.warning("scrub: chunk %s was corrupt; quarantined", chunk_id.hex())
        return size_bytes, True
