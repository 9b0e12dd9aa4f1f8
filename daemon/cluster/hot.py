"""Hot chunks: temporary extra copies of chunks read faster than one node should serve.

Every replica counts the reads it serves per chunk (:class:`ReadRates`, a
sliding-window estimate in bounded memory).  When a chunk's rate passes
``[cluster] hot_reads_per_s``, the replica copies it to the next
``hot_extra_copies`` live nodes of the chunk's preference list, which *pin*
their copy for ``hot_ttl_s`` (:class:`Pins`): anti-entropy leaves a pinned
copy alone although placement does not assign it there.  The replica
advertises the chunk (a short id prefix) in its gossip state; clients that
see it spread their reads of that chunk over the replicas and the extra
copies (see :func:`dfs.core.replicas.read_order`).

While the chunk stays warm (a quarter of the threshold, since its reads are
now shared) the replica renews the pins every half TTL.  Once it cools, the
pins lapse, the advertisement goes, and anti-entropy removes the extra
copies like any misplaced copy: only when every replica holds the chunk.

Extra copies are not durability: a chunk's R and consistency level are
unchanged, and garbage collection deletes pinned copies like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from daemon.chunks import ChunkStore
from dfs.client.chunks import ChunkIO
from dfs.core.config import Config
from dfs.core.endpoints import CHUNK_HAS, CHUNK_PIN, CHUNK_PUT
from dfs.core.errors import ChunkMissing, CorruptChunk, DfsError
from dfs.core.placement import partition_of
from dfs.core.replicas import HOT_PREFIX_BYTES, hot_targets

log = logging.getLogger("dfs.hot")

MAX_ADVERTISED = 12  # hot chunks in one node's gossip state (it is at most max_meta_bytes)
_COOL_FRACTION = 0.25  # once copies exist, the replica keeps them at this share of the threshold


class ReadRates:
    """Reads per second of each chunk, over a sliding window of ``window_s``.

    Two fixed windows, the previous weighted by how much of it still overlaps
    the sliding one: a close estimate in two counters per chunk.  At most
    ``max_tracked`` chunks are counted per window; reads of further chunks in
    a window that is full are not counted (a chunk read fast enough to matter
    is counted before the window fills).
    """

    def __init__(
        self, window_s: float = 10.0, max_tracked: int = 100_000, clock: Callable[[], float] = time.monotonic
    ):
        self.window_s = window_s
        self.max_tracked = max_tracked
        self._clock = clock
        self._start = clock()
        self._current: dict[bytes, int] = {}
        self._previous: dict[bytes, int] = {}

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed < self.window_s:
            return
        if elapsed < 2 * self.window_s:
            self._previous = self._current
            self._start += self.window_s
        else:  # a quiet spell longer than a window: nothing left to remember
            self._previous = {}
            self._start = now
        self._current = {}

    def record(self, chunk_id: bytes) -> float:
        """Count one read of ``chunk_id``; returns its rate (reads per second) now."""
        now = self._clock()
        self._roll(now)
        count = self._current.get(chunk_id)
        if count is not None:
            self._current[chunk_id] = count + 1
        elif len(self._current) < self.max_tracked:
            self._current[chunk_id] = 1
        return self._rate(chunk_id, now)

    def rate(self, chunk_id: bytes) -> float:
        now = self._clock()
        self._roll(now)
        return self._rate(chunk_id, now)

    def _rate(self, chunk_id: bytes, now: float) -> float:
        overlap = max(0.0, 1.0 - (now - self._start) / self.window_s)
        reads = self._current.get(chunk_id, 0) + self._previous.get(chunk_id, 0) * overlap
        return reads / self.window_s


class Pins:
    """Copies held here for a while although placement does not assign them here (hot copies)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[bytes, float] = {}

    def pin(self, chunk_ids: list[bytes], ttl_s: float) -> None:
        now = self._clock()
        until = now + ttl_s
        for cid in [c for c, t in self._until.items() if t <= now]:
            del self._until[cid]
        for cid in chunk_ids:
            self._until[cid] = max(until, self._until.get(cid, 0.0))

    def pinned(self, chunk_id: bytes) -> bool:
        until = self._until.get(chunk_id)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[chunk_id]
            return False
        return True

    def count(self) -> int:
        """Live pins (read-only: the metrics renderer calls it from a worker thread)."""
        now = self._clock()
        return sum(1 for t in list(self._until.values()) if t > now)


@dataclass
class _Promotion:
    pushed_at: float
    until: float
    targets: tuple[str, ...]


class HotChunks:
    """This node's side of hot chunks: counts reads, makes and renews the extra copies."""

    def __init__(
        self,
        cfg: Config,
        store: ChunkStore,
        chunkio: ChunkIO,
        replicas_of: Callable[[list[bytes]], Awaitable[list[int | None]]],
        *,
        limiter: trio.CapacityLimiter,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cl = cfg.cluster
        self.node_id = cfg.node_id
        self.threshold = cl.hot_reads_per_s
        self.extra = cl.hot_extra_copies
        self.ttl_s = cl.hot_ttl_s
        self.store = store
        self.io = chunkio
        self._replicas_of = replicas_of
        self._limiter = limiter
        self._clock = clock
        self._on_change = on_change
        self.rates = ReadRates(clock=clock)
        self.pins = Pins(clock)
        self._promoted: dict[bytes, _Promotion] = {}
        self._busy: set[bytes] = set()
        self.promotions = 0  # extra copies made or renewed (metrics)
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0 and self.extra > 0

    def due(self, chunk_id: bytes, rate: float) -> bool:
        """Whether a read at ``rate`` should (re)make ``chunk_id``'s extra copies now."""
        if not self.enabled or chunk_id in self._busy:
            return False
        now = self._clock()
        p = self._promoted.get(chunk_id)
        if p is None or p.until <= now:
            return rate >= self.threshold
        return now - p.pushed_at >= self.ttl_s / 2 and rate >= self.threshold * _COOL_FRACTION

    def on_read(self, chunk_id: bytes, nursery: trio.Nursery | None) -> None:
        """Called for every chunk this node serves; starts a promotion when one is due."""
        if not self.enabled:
            return
        rate = self.rates.record(chunk_id)
        if nursery is not None and self.due(chunk_id, rate):
            self._busy.add(chunk_id)
            nursery.start_soon(self.promote, chunk_id)

    async def promote(self, chunk_id: bytes) -> None:
        """Copy ``chunk_id`` to its extra nodes and pin it there.  A background task: never raises."""
        try:
            await self._promote(chunk_id)
        except Exception as exc:
            reason = exc.message if isinstance(exc, DfsError) else repr(exc)
            log.info("hot chunk %s: extra copies failed: %s", chunk_id.hex()[:16], reason)
            self.errors += 1
        finally:
            self._busy.discard(chunk_id)

    async def _promote(self, chunk_id: bytes) -> None:
        view = await self.io.view()
        (r,) = await self._replicas_of([chunk_id])
        if r is None:
            return  # not committed (or collected): nothing to serve widely
        r = r or view.default_policy.replicas
        replicas = view.table.preference(partition_of(chunk_id))[: view.replica_count(r)]
        if self.node_id not in replicas:
            return  # an extra copy (or a substitute) serving reads: the replicas decide
        targets = hot_targets(view, chunk_id, r, self.extra)
        if not targets:
            return
        try:
            blob: bytes = await trio.to_thread.run_sync(self.store.get, chunk_id, limiter=self._limiter)
        except (ChunkMissing, CorruptChunk):
            return  # not here any more: its other replicas will notice the heat themselves
        made: list[str] = []
        for target in targets:
            try:
                # Pin first, so the target's anti-entropy never removes the new copy as misplaced.
                await self.io.call_node(target, CHUNK_PIN, [chunk_id], self.ttl_s, view=view)
                (held,) = await self.io.call_node(target, CHUNK_HAS, [chunk_id], view=view)
                if not held:
                    await self.io.call_node(target, CHUNK_PUT, chunk_id, blob, view=view)
            except DfsError as exc:
                log.info("hot chunk %s: copy to %s failed: %s", chunk_id.hex()[:16], target, exc.message)
                self.errors += 1
                continue
            made.append(target)
        if not made:
            return
        now = self._clock()
        for cid in [c for c, p in self._promoted.items() if p.until <= now]:
            del self._promoted[cid]
        first = chunk_id not in self._promoted
        self._promoted[chunk_id] = _Promotion(now, now + self.ttl_s, tuple(made))
        self.promotions += 1
        if first:
            log.info("hot chunk %s: extra copies on %s", chunk_id.hex()[:16], ", ".join(made))
            self._on_change()  # readers learn of the copies from gossip: tell it now

    def advertised(self) -> list[str]:
        """Id prefixes (hex) of the chunks whose extra copies are live, most recent first.

        Called from the gossip runner's worker thread: it only reads (a snapshot taken in one
        C-level step); expired entries are dropped on the event loop, by the next promotion.
        """
        now = self._clock()
        live = [(cid, p) for cid, p in list(self._promoted.items()) if p.until > now]
        live.sort(key=lambda kv: kv[1].pushed_at, reverse=True)
        return [cid[:HOT_PREFIX_BYTES].hex() for cid, _ in live[:MAX_ADVERTISED]]

    def status(self) -> dict[str, int]:
        """Figures for `dfs status` and metrics (read-only, like :meth:`advertised`)."""
        now = self._clock()
        return {
            "hot_chunks": sum(1 for p in list(self._promoted.values()) if p.until > now),
            "hot_copies_held": self.pins.count(),
            "hot_promotions": self.promotions,
        }
