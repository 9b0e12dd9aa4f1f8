"""The ``sys.*`` and ``ns.changes`` endpoints about the daemon itself: liveness, identity,
status, capacity (statfs) and the chunk inventory the CLI scrubs."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from daemon.changefeed import ChangeFeed
from daemon.disks import DiskSet
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.keys import ClusterKey
from daemon.service.meta_calls import MetaCalls
from daemon.service.threads import ChunkThreads
from dfs import __version__
from dfs.core import endpoints
from dfs.core.config import Config
from dfs.core.errors import DfsError, InvalidArgument
from dfs.core.namespace import StatFs
from dfs.net import rpc

SCRUB_BATCH_MAX = 1024  # chunk ids in one sys.scrub_batch


class SystemHandlers:
    """What a daemon says about itself."""

    def __init__(
        self,
        cfg: Config,
        key: ClusterKey,
        metacalls: MetaCalls,
        chunks: DiskSet,
        threads: ChunkThreads,
        cluster: ClusterRunner,
        changes: ChangeFeed,
        *,
        started_at: float,
    ) -> None:
        self.cfg = cfg
        self.data: Path = cfg.data_path
        self._key = key
        self._metacalls = metacalls
        self.chunks = chunks
        self._c = threads.run
        self._cluster = cluster
        self._changes = changes
        self.started_at = started_at

    async def ping(self) -> str:
        return "pong"

    async def ns_changes(self, epoch: str, cursor: int, wait_s: float) -> dict[str, Any]:
        """Long poll: this daemon's namespace changes after ``cursor`` (see dfs/core/changes.py)."""
        if not isinstance(epoch, str) or isinstance(cursor, bool) or not isinstance(cursor, int):
            raise InvalidArgument("ns.changes: bad epoch or cursor")
        if not isinstance(wait_s, int | float) or isinstance(wait_s, bool) or math.isnan(wait_s):
            raise InvalidArgument("ns.changes: bad wait_s")
        return await self._changes.poll(rpc.current_connection(), epoch, cursor, float(wait_s))

    async def info(self) -> dict[str, Any]:
        st = self.cfg.storage
        return {
            "node_id": self.cfg.node_id,
            "version": __version__,
            "block_size": st.block_size,
            "inline_max": st.inline_max,
            "compression_level": st.compression_level,
            "cluster_key": self._key.value,
            # Mounts heartbeat well within the daemon's lease, whatever their own config says.
            "session_timeout_s": self.cfg.meta.session_timeout_s,
            # Lets a client on this host read chunk files directly (short-circuit reads).
            "data_dir": str(self.data.resolve()),
        }

    async def statfs(self) -> StatFs:
        cs = await self._c(self.chunks.stats)
        total, free, avail = cs["total_bytes"], cs["free_bytes"], cs["avail_bytes"]
        membership = self._cluster.membership
        if self._cluster.clustered() and membership is not None:
            # Raw capacity of the cluster's live members (as gossip last reported it).
            live = [m for m in membership.members() if m["status"] in ("alive", "suspect")]
            total = sum(int(m.get("capacity_bytes", 0)) for m in live) or total
            avail = free = sum(int(m.get("free_bytes", 0)) for m in live) or avail
        counts = await self._metacalls.run(self._metacalls.meta.counts)
        inodes = counts["inodes"]
        # Each inode costs roughly one metadata row; estimate free inodes from free space.
        files_free = max(0, avail // 512)
        return StatFs(4096, total, free, avail, inodes + files_free, files_free)

    async def status(self) -> dict[str, Any]:
        cs = await self._c(self.chunks.stats)
        disks = await self._c(self.chunks.disk_report)
        store = self._metacalls.store
        if store is not None:
            counts = await self._metacalls.run(store.counts)
        else:
            try:
                assert self._cluster.primary is not None
                counts = await endpoints.META_COUNTS.call(self._cluster.primary)
            except DfsError:
                counts = {}
        return {
            "node_id": self.cfg.node_id,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            # This host's wall clock: `dfs doctor` compares the members' clocks (gossip drops
            # packets stamped more than 60 s off).
            "time_ns": time.time_ns(),
            "data_dir": str(self.data),
            "metadata": store.where if store is not None else f"via {self.cfg.cluster.meta}",
            "health": "ok",
            "role": (
                "peer"  # PostgreSQL: every daemon serves metadata
                if self.cfg.meta.engine == "postgresql"
                else "primary"
                if self._cluster.is_primary
                else "secondary"
            ),
            "layout_epoch": self._cluster.layout_epoch,
            "capacity": cs,
            "disks": disks,
            "namespace": counts,
        }

    async def disks(self, op: str, path: str = "") -> list[dict[str, Any]]:
        """``dfs disks``: list this node's data disks, or drain, undrain or reset one first."""
        actions = {"drain": self.chunks.drain, "undrain": self.chunks.undrain, "reset": self.chunks.reset}
        if op != "list":
            if op not in actions:
                raise InvalidArgument(f"sys.disks: op must be list, {', '.join(actions)}; got {op!r:.40}")
            if not path:
                raise InvalidArgument(f"sys.disks: {op} needs the disk's path")
            await self._c(actions[op], path)
        report: list[dict[str, Any]] = await self._c(self.chunks.disk_report)
        return report

    async def scrub_list(self) -> list[bytes]:
        """Every stored chunk id, sorted: the CLI scrubs them in batches for a progress bar."""
        return sorted(await self._c(lambda: list(self.chunks.iter_ids())))

    async def scrub_batch(self, chunk_ids: list[bytes]) -> list[bytes]:
        if len(chunk_ids) > SCRUB_BATCH_MAX:
            raise InvalidArgument("scrub batch too large")
        return await self._c(self.chunks.scrub, chunk_ids)
