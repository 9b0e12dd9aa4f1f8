"""The chunk endpoints every daemon answers for its own store (``chunk.*``).

Store calls run in the chunk-I/O threads.  A copy found corrupt when read is
quarantined at once (never served again) and replaced from another replica in
the background; reads feed the hot-chunk counters (daemon/cluster/hot.py).
"""

from __future__ import annotations

from daemon.chunks import ChunkStore
from daemon.cluster.hints import HintQueue
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.threads import ChunkThreads
from daemon.service.tiering import TierSet
from dfs.core.errors import ChunkMissing, CorruptChunk, InvalidArgument, Unavailable


class ChunkHandlers:
    """``chunk.put``, ``chunk.get`` and the rest, over this node's chunk store and hint queue."""

    def __init__(
        self,
        chunks: ChunkStore,
        hints: HintQueue,
        threads: ChunkThreads,
        cluster: ClusterRunner,
        tiers: TierSet | None = None,
    ) -> None:
        self.tiers = tiers  # where chunks no local disk holds may be (cloud tiers)
        self.chunks = chunks
        self.hints = hints
        self._c = threads.run
        self._cluster = cluster  # its repair and hot-chunk objects, once it runs

    async def chunk_put(self, chunk_id: bytes, blob: bytes) -> bool:
        return await self._c(self.chunks.put, chunk_id, blob)

    async def _read_verified(self, chunk_id: bytes) -> bytes:
        try:
            blob: bytes = await self._c(self.chunks.get, chunk_id)
        except CorruptChunk:
            # Never serve it again; fetch a good copy from another replica in the background.
            await self._c(self.chunks.quarantine, chunk_id)
            cl = self._cluster
            if cl.repair is not None and cl.nursery is not None:
                cl.nursery.start_soon(cl.repair.replace_corrupt, chunk_id)
            raise
        return blob

    async def chunk_get(self, chunk_id: bytes) -> bytes:
        try:
            blob = await self._read_verified(chunk_id)
        except ChunkMissing:
            # A cold chunk (daemon/service/tiering.py) lives only in tiers; a missing local copy
            # of any chunk with a cloud copy is served from there too.
            if self.tiers is None:
                raise
            await self.tiers.refresh()
            if not self.tiers.names():
                raise
            return await self.tiers.fetch(chunk_id)
        if self._cluster.hot is not None:
            self._cluster.hot.on_read(chunk_id, self._cluster.nursery)
        return blob

    async def chunk_verify(self, chunk_id: bytes) -> bool:
        """A client found the copy it got from here bad: check it again, and if the copy on disk
        is corrupt, quarantine and replace it (CorruptChunk).  True: the copy here is sound (the
        damage happened on the way)."""
        await self._read_verified(chunk_id)
        return True

    async def chunk_pin(self, chunk_ids: list[bytes], ttl_s: float) -> None:
        """Keep copies of ``chunk_ids`` here for ``ttl_s`` although placement puts them elsewhere
        (a replica is giving a hot chunk extra copies)."""
        if not isinstance(ttl_s, int | float) or not 0 < ttl_s <= 86400:
            raise InvalidArgument("pin ttl_s must be a number of seconds in (0, 86400]")
        if not isinstance(chunk_ids, list) or not all(
            isinstance(c, bytes) and len(c) == 32 for c in chunk_ids
        ):
            raise InvalidArgument("pin chunk_ids must be a list of 32-byte chunk ids")
        if self._cluster.hot is None:
            raise Unavailable("this node is not serving the cluster yet")
        self._cluster.hot.pins.pin(list(chunk_ids), float(ttl_s))

    async def chunk_has(self, chunk_ids: list[bytes]) -> list[bool]:
        return await self._c(self.chunks.has, chunk_ids)

    async def chunk_hint(self, targets: list[str], chunk_ids: list[bytes]) -> None:
        """Record (durably) that ``targets`` are still owed copies of ``chunk_ids``, held here."""
        if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
            raise InvalidArgument("hint targets must be node ids")
        for target in targets:
            await self._c(self.hints.add, target, list(chunk_ids))

    async def chunk_delete(self, chunk_ids: list[bytes]) -> int:
        """Delete copies the metadata primary collected (GC) or found unknown (orphan sweep)."""
        return await self._c(self.chunks.delete, list(chunk_ids))

    async def chunk_digests(self, partitions: list[int]) -> dict[int, bytes]:
        """This node's digest of each of ``partitions`` it holds chunks of (anti-entropy)."""
        wanted = set(partitions)
        digests: dict[int, bytes] = await self._c(self.chunks.partition_digests)
        return {p: d for p, d in digests.items() if p in wanted}
