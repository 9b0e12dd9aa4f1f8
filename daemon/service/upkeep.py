"""Keeping the store honest: fsck, garbage collection, the orphan sweep, session expiry and
op-log trimming.

Chunk existence and chunk deletion meet in the metadata thread: on one host GC
and the orphan sweep check "is it referenced?" and delete in the same call that
commits run in, so a chunk can never be collected between "it exists" and "it
is referenced".  Across hosts the deletion log (daemon/cluster/deletions.py)
covers the gap: the primary records which chunks it started deleting, a
secondary *claims* its orphans from the primary before deleting them, and
commits refuse chunks whose deletion may have raced their existence check.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from daemon.chunks import ChunkStore
from daemon.cluster.deletions import AnyDeletionLog
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.meta_calls import MetaCalls
from daemon.service.threads import ChunkThreads
from dfs.core import endpoints
from dfs.core.config import Config
from dfs.core.errors import DfsError, InvalidArgument
from dfs.core.placement import NodeState

log = logging.getLogger("dfs.daemon")

# Exactly-once request records (daemon/meta/requests.py) are kept this many times [meta]
# failover_timeout_s, the longest a client goes on sending a request again (dfs/net/failover.py),
# and at least REQUEST_MEMORY_MIN_S.
REQUEST_MEMORY_FACTOR = 10
REQUEST_MEMORY_MIN_S = 600.0
# A secondary deletes the orphans the primary let it claim within this many seconds, or not at all.
CLAIM_WINDOW_S = 30.0
_BATCH = 1000  # chunk ids per metadata-thread call in GC and the orphan sweep
# The longest GC delay a caller may ask for (in nanoseconds, the cutoff must stay a 64-bit time).
_MAX_DELAY_S = 100 * 365 * 86400.0
# Trash expiry: entries per metadata call (one transaction), calls per run at most.
TRASH_EXPIRE_BATCH = 500
TRASH_EXPIRE_BATCHES = 100


class Upkeep:
    """fsck, GC and the orphan sweep (each also an endpoint), and the metadata housekeeping."""

    def __init__(
        self,
        cfg: Config,
        metacalls: MetaCalls,
        chunks: ChunkStore,
        threads: ChunkThreads,
        cluster: ClusterRunner,
        deletions: AnyDeletionLog,
        *,
        backup_chunks: Callable[[], set[bytes]] = set,
    ) -> None:
        self.cfg = cfg
        self._metacalls = metacalls
        self._m = metacalls.run
        self.chunks = chunks
        self._c = threads.run
        self._cluster = cluster
        self.deletions = deletions
        # The chunks metadata backups are stored in (daemon/service/backups.py; blocking, run in a
        # worker thread): referenced by no metadata, yet no orphans.  Backup chunk ids are keyed
        # apart from files' chunks, so GC never meets them; only the orphan checks must skip them.
        self._backup_chunks = backup_chunks
        # Cloud tiers' own fsck (daemon/service/tiering.py TierWorker.fsck); set by the service.
        self.tier_fsck: Callable[[bool], Awaitable[list[str]]] | None = None
        # Wraps the metadata-thread calls of cluster-wide duties in the leader's fencing check
        # (daemon/service/leadership.py); set by the service.
        self.fence: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda fn: fn

    # -- fsck ------------------------------------------------------------------------------------
    async def fsck_meta(self, repair: bool) -> dict[str, Any]:
        doc = await self._fsck_chunks(repair)
        if self.tier_fsck is not None:
            doc["problems"] += await self.tier_fsck(repair)
        return doc

    async def _fsck_chunks(self, repair: bool) -> dict[str, Any]:
        if self._cluster.clustered():
            return await self._fsck_cluster(repair)
        meta = self._metacalls.meta
        problems: list[str] = await self._m(meta.fsck, self.chunks.exists, repair=repair)
        refs: dict[bytes, int] = await self._m(meta.referenced_chunks)
        stored = await self._c(lambda: list(self.chunks.iter_ids()))
        # Read after the inventory: a backup's chunks stored meanwhile are listed (or pending) by now.
        kept = await self._c(self._backup_chunks)
        orphans = [cid for cid in stored if cid not in refs and cid not in kept]
        if orphans:
            problems.append(f"{len(orphans)} stored chunk(s) referenced by no metadata (orphans)")
            if repair:
                await self._after_commit(await self._m(self._delete_orphans, orphans))
        return {"problems": problems, "chunks_stored": len(stored), "orphans": len(orphans)}

    async def _inventories(self) -> tuple[dict[str, set[bytes]], list[str]]:
        """Every reachable layout node's chunk ids, and the nodes that could not be asked."""
        chunkio = self._cluster.chunkio
        assert chunkio is not None
        view = await self._cluster.view()
        chunkio.set_view(view)
        found: dict[str, set[bytes]] = {}
        missed: list[str] = []

        async def ask(node_id: str) -> None:
            try:
                found[node_id] = set(await chunkio.call_node(node_id, endpoints.SYS_SCRUB_LIST, view=view))
            except DfsError as exc:
                log.info("fsck: inventory of %s: %s", node_id, exc.message)
                missed.append(node_id)

        async with trio.open_nursery() as nursery:
            for node in view.layout.nodes:
                if node.state is not NodeState.OUT or node.node_id == self.cfg.node_id:
                    nursery.start_soon(ask, node.node_id)
        return found, sorted(missed)

    async def _fsck_cluster(self, repair: bool) -> dict[str, Any]:
        """fsck across the cluster: metadata against every node's chunks, and every committed
        chunk against its replication factor (the invariant repair restores)."""
        inventories, missed = await self._inventories()
        present = set().union(*inventories.values()) if inventories else set()
        meta = self._metacalls.meta
        problems: list[str] = await self._m(meta.fsck, present.__contains__, repair=repair)
        problems += [f"node {n} could not be checked (unreachable)" for n in missed]
        refs: dict[bytes, int] = await self._m(meta.referenced_chunks)
        live = [cid for cid, n in refs.items() if n > 0]
        wanted = await self._cluster.replicas_of(live) if live else []
        assert self._cluster.chunkio is not None
        view = await self._cluster.chunkio.view()
        under = 0
        for cid, r in zip(live, wanted, strict=True):
            if r is None:
                continue  # cold (daemon/meta/tiers.py): its copies are in tiers, checked there
            copies = sum(1 for ids in inventories.values() if cid in ids)
            if copies < view.replica_count(r or self.cfg.cluster.replicas):
                under += 1
        if under:
            problems.append(f"{under} chunk(s) have fewer copies than their replication factor")
        # Every node holds every backup manifest: this node's list every backup's chunks.
        kept = await self._c(self._backup_chunks)
        orphans = {
            node: [c for c in ids if c not in refs and c not in kept] for node, ids in inventories.items()
        }
        n_orphans = sum(len(v) for v in orphans.values())
        if n_orphans:
            problems.append(f"{n_orphans} stored chunk cop(ies) referenced by no metadata (orphans)")
            if repair:
                for node_id, ids in orphans.items():
                    if ids:
                        await self._delete_everywhere(await self._m(self._claim, ids, None), [node_id])
        return {
            "problems": problems,
            "chunks_stored": sum(len(v) for v in inventories.values()),
            "orphans": n_orphans,
            "under_replicated": under,
            "nodes_checked": sorted(inventories),
        }

    # -- deleting chunks -------------------------------------------------------------------------
    def _claim(self, chunk_ids: list[bytes], finish_in_s: float | None) -> list[bytes]:
        """Metadata thread: the ids no metadata knows, entered in the deletion log as deleting."""
        unknown = self._metacalls.meta.unknown_chunks(chunk_ids)
        self.deletions.started(unknown, finish_in_s=finish_in_s)
        return unknown

    async def claim_orphans(self, chunk_ids: list[bytes]) -> list[bytes]:
        """For a secondary's orphan sweep: which of its old unknown chunks it may delete now.
        It must delete them within ``CLAIM_WINDOW_S`` (or not at all)."""
        if len(chunk_ids) > 4096:
            raise InvalidArgument("claim_orphans: at most 4096 ids at once")
        return await self._m(self._claim, list(chunk_ids), CLAIM_WINDOW_S)

    async def _delete_everywhere(self, chunk_ids: list[bytes], nodes: list[str] | None = None) -> None:
        """Delete copies on ``nodes`` (default: every reachable layout node), then mark the
        deletions finished.  A node that misses it deletes its copy in its orphan sweep."""
        try:
            chunkio = self._cluster.chunkio
            if chunkio is not None:
                await chunkio.delete_everywhere(chunk_ids, nodes)
        finally:
            self.deletions.finished(chunk_ids)

    def _delete_orphans(self, orphans: list[bytes]) -> list[bytes]:
        # Runs in the metadata thread: a chunk referenced meanwhile is kept.
        refs = self._metacalls.meta.referenced_chunks()
        doomed = [cid for cid in orphans if cid not in refs]
        self.deletions.started(doomed)
        if not self.deletions.shared:
            self.chunks.delete(doomed)
            self.deletions.finished(doomed)
        return doomed

    async def gc_now(self, delay_s: float | None = None) -> int:
        if delay_s is not None and not (math.isfinite(delay_s) and 0 <= delay_s <= _MAX_DELAY_S):
            raise InvalidArgument(f"sys.gc: delay_s must be a number of seconds in [0, {_MAX_DELAY_S:.0f}]")
        delay = self.cfg.storage.gc_delay_s if delay_s is None else float(delay_s)
        cutoff = time.time_ns() - int(delay * 1e9)
        total = 0

        shared = self.deletions.shared

        def delete(ids: list[bytes]) -> None:
            self.deletions.started(ids)
            if not shared:  # one metadata server: the files go inside the transaction
                self.chunks.delete(ids)

        while True:
            ids = await self._m(self.fence(self._metacalls.meta.gc_collect), cutoff, _BATCH, delete)
            total += len(ids)
            if shared and ids:
                # Daemons share the database: the files go only once the transaction that
                # entered their deletion committed (a conflict could still have undone it).
                await self._c(self.chunks.delete, ids)
            if self._cluster.clustered():
                await self._delete_everywhere(ids)
            else:
                self.deletions.finished(ids)
            if len(ids) < _BATCH:
                self.deletions.trim()
                return total

    async def sweep_orphans(self, older_than_s: float | None = None) -> int:
        """Delete stored chunks no metadata knows that were left untouched for ``orphan_delay_s``.

        Such chunks come from writes that never committed (a failed S3 upload,
        a client or daemon crash between storing blocks and committing them).
        On the primary the check and the delete run together in the metadata
        thread, like every incref, so a chunk cannot gain a reference in
        between; a secondary claims its candidates from the primary first,
        which then refuses commits of them until the deletion is done.
        """
        delay = self.cfg.storage.orphan_delay_s if older_than_s is None else older_than_s
        listed = await self._c(self.chunks.old_ids, delay)
        # Read after the candidates, for the same reason as in fsck_meta.
        kept = await self._c(self._backup_chunks)
        candidates = [cid for cid in listed if cid not in kept]
        removed = 0
        for i in range(0, len(candidates), _BATCH):
            batch = candidates[i : i + _BATCH]
            if self._metacalls.store is not None:
                if self.deletions.shared:
                    removed += len(await self._after_commit(await self._m(self._claim, batch, None)))
                else:
                    removed += await self._m(self._delete_unknown, batch)
                continue
            assert self._cluster.primary is not None
            asked_at = time.monotonic()
            doomed = await endpoints.META_CLAIM_ORPHANS.call(self._cluster.primary, batch)
            if time.monotonic() - asked_at < CLAIM_WINDOW_S / 2:
                removed += await self._c(self.chunks.delete, doomed)
        if removed:
            log.info("orphan sweep removed %d chunk(s) no metadata referenced", removed)
        return removed

    def _delete_unknown(self, chunk_ids: list[bytes]) -> int:
        unknown = self._claim(chunk_ids, None)
        self.chunks.delete(unknown)
        self.deletions.finished(unknown)
        return len(unknown)

    async def _after_commit(self, doomed: list[bytes]) -> list[bytes]:
        """Shared metadata: delete the files whose deletion a committed transaction entered."""
        if self.deletions.shared and doomed:
            try:
                await self._c(self.chunks.delete, doomed)
            finally:
                self.deletions.finished(doomed)
        return doomed

    # -- metadata housekeeping -------------------------------------------------------------------
    async def expire_sessions(self) -> int:
        cutoff = time.time_ns() - int(self.cfg.meta.session_timeout_s * 1e9)
        n: int = await self._m(self.fence(self._metacalls.meta.expire_sessions), cutoff)
        if n:
            log.info("expired %d client session(s)", n)
        return n

    async def trim_oplog(self) -> None:
        await self._m(self.fence(self._metacalls.meta.oplog_trim), self.cfg.meta.oplog_keep)

    async def expire_trash(self) -> int:
        """Purge trash entries past their volume's retention (daemon/meta/trash.py), a bounded
        batch per metadata call, at most TRASH_EXPIRE_BATCHES of them per run; their chunks then
        go through normal GC."""
        expire = self.fence(self._metacalls.meta.trash_expire)
        total = 0
        for _ in range(TRASH_EXPIRE_BATCHES):
            n: int = await self._m(expire, TRASH_EXPIRE_BATCH)
            total += n
            if n < TRASH_EXPIRE_BATCH:
                break
        return total

    async def trim_requests(self) -> int:
        """Forget the exactly-once records no client can still be retrying."""
        keep_s = max(REQUEST_MEMORY_MIN_S, REQUEST_MEMORY_FACTOR * self.cfg.meta.failover_timeout_s)
        trim = self.fence(self._metacalls.meta.trim_requests)
        n: int = await self._m(trim, time.time_ns() - int(keep_s * 1e9))
        return n
