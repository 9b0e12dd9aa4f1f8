"""This daemon's part in the cluster: the connection to the metadata primary, the layout it
caches, replicated chunk I/O, repair, hot chunks, and its registration in the layout.

:meth:`ClusterRunner.run` (in the node's nursery) connects a secondary to the
primary and takes the cluster key from it, starts :class:`dfs.client.chunks.ChunkIO`
and the repair loop; the node then starts the runner's workers: registration in
the layout (retried until the primary answers, then now and then, so a primary
restored from an old backup learns this node again) and, on the primary, the
layout controller (daemon/cluster/controller.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from daemon.chunks import ChunkStore
from daemon.cluster.controller import Controller
from daemon.cluster.hints import HintQueue
from daemon.cluster.hot import HotChunks
from daemon.cluster.keyring import save_keyring
from daemon.cluster.membership import Membership
from daemon.cluster.repair import Repair
from daemon.service.keys import ClusterKey
from daemon.service.leadership import Leadership
from daemon.service.local import LocalCaller
from daemon.service.meta_calls import MetaCalls
from daemon.service.threads import ChunkThreads
from daemon.workers import Periodic, Retrying
from dfs.client.chunks import ChunkIO
from dfs.core import endpoints
from dfs.core.auth import Credential
from dfs.core.config import Config
from dfs.core.errors import DfsError, InvalidArgument, NotSupported, Unavailable
from dfs.core.gossip.seal import fingerprint
from dfs.core.placement import Layout, NodeState
from dfs.core.replicas import ClusterView, single_node_view, view_from_wire
from dfs.net import rpc
from dfs.net.certs import client_context_for

log = logging.getLogger("dfs.daemon")

_NEVER = -1e18  # a layout fetched at this time is stale: the next layout_wire() asks again


class ClusterRunner:
    """The cluster as this daemon sees and serves it (the objects exist once :meth:`run` started)."""

    def __init__(
        self,
        cfg: Config,
        key: ClusterKey,
        metacalls: MetaCalls,
        chunks: ChunkStore,
        hints: HintQueue,
        threads: ChunkThreads,
        local_caller: Callable[[], LocalCaller],
        *,
        credential: Credential,
        leadership: Leadership,
    ) -> None:
        self.cfg = cfg
        # What this daemon proves itself with to its peers (the cluster secret: class node).
        self._credential = credential
        # Serves metadata itself (SQLite: the primary; PostgreSQL: every daemon); a joining
        # daemon ([cluster] meta set) took the cluster key from the daemon that address names.
        self.is_primary = not cfg.cluster.meta or cfg.meta.engine == "postgresql"
        self.joining = bool(cfg.cluster.meta)
        self._key = key
        self._metacalls = metacalls
        self._chunks = chunks
        self._hints = hints
        self._threads = threads
        self._local_caller = local_caller
        # The gossip runner, once the node starts it (None: gossip disabled, or not started yet).
        self.membership: Membership | None = None
        # Set by run: the connection to the primary (secondaries), replicated chunk I/O, repair.
        self.primary: rpc.RpcClient | None = None
        self.chunkio: ChunkIO | None = None
        self.repair: Repair | None = None
        # The re-mark worker's progress (daemon/service/remarker.py), set by the service.
        self.remark_status: Callable[[], dict[str, Any] | None] = lambda: None
        self.hot: HotChunks | None = None
        self.nursery: trio.Nursery | None = None
        self.layout_epoch = 0
        # One keyring change at a time: each is saved before it takes effect, in order.
        self._keyring_lock = trio.Lock()
        self._layout_wire: dict[str, Any] | None = None
        self._layout_at = _NEVER
        self._layout_commits = 0  # the store's layout_commits when the cached layout was read
        cl = cfg.cluster
        self.controller = Controller(cl.dead_grace_s, self._members_seen, self.layout_wire, self._mark_out)
        self.registration = Retrying(
            "registering in the layout", self.register, ok_interval_s=max(30.0, cl.refresh_s)
        )
        self.workers: list[Periodic | Retrying] = [self.registration]
        self._leadership = leadership
        if self.is_primary:
            every_s = min(cl.refresh_s, max(0.1, cl.dead_grace_s / 4))
            self.workers.append(Periodic("layout controller", every_s, leadership.only(self.controller.step)))

    def clustered(self) -> bool:
        """True once the layout names any node besides this one."""
        wire = self._layout_wire
        return wire is not None and any(n["node_id"] != self.cfg.node_id for n in wire["nodes"])

    def layout_states(self) -> dict[str, str]:
        """Each layout node's state (active, draining, out) as last read: no I/O, for metrics."""
        wire = self._layout_wire
        return {} if wire is None else {str(n["node_id"]): str(n["state"]) for n in wire["nodes"]}

    def advertised_rpc(self) -> str:
        return self.cfg.rpc.advertise or self.cfg.rpc.listen

    async def layout_wire(self) -> dict[str, Any]:
        """The layout (cached for ``refresh_s``; a secondary asks the primary).

        The primary reads it again at once after a layout change committed here (an admin's
        ``dfs node remove`` sees the node gone in the next ``dfs layout``).
        """
        now = time.monotonic()
        store = self._metacalls.store
        commits = store.layout_commits if store is not None else 0
        cached = self._layout_wire
        expired = now - self._layout_at >= self.cfg.cluster.refresh_s
        if cached is None or expired or commits != self._layout_commits:
            if self._metacalls.reader is not None:
                try:
                    wire = self._metacalls.reader.layout()
                except Unavailable:
                    # The metadata database is away (a failover): the layout last read stays
                    # right until it is back, and is far better than none.
                    if cached is None:
                        raise
                    return cached
            elif self.primary is not None:
                try:
                    wire = await endpoints.META_LAYOUT.call(self.primary)
                except DfsError:
                    # The primary is down: the layout last asked for still says where chunks
                    # are (a restore through this node must find every backup piece).
                    if cached is None:
                        raise
                    return cached
            else:
                raise Unavailable("not connected to the metadata primary yet")
            self._layout_wire = cached = wire
            self._layout_at = now
            self._layout_commits = commits  # read before the layout: a later commit reads again
            self.layout_epoch = int(wire["epoch"])
        return cached

    async def members(self) -> list[dict[str, Any]]:
        """The cluster as gossip sees it (just this node when gossip is off)."""
        if self.membership is not None:
            return self.membership.members()
        return [
            {
                "node_id": self.cfg.node_id,
                "status": "alive",
                "self": True,
                "zone": self.cfg.node.zone,
                "rpc": self.cfg.rpc.listen,
                "gossip_address": "",
            }
        ]

    def _members_seen(self) -> list[dict[str, Any]] | None:
        return self.membership.members() if self.membership is not None else None

    async def cluster(self) -> dict[str, Any]:
        """What clients need to place and find chunks: layout, member liveness, default policy."""
        cl = self.cfg.cluster
        try:
            layout = await self.layout_wire()
        except DfsError:
            layout = Layout(0, ()).to_wire()
        return {
            "layout": layout,
            "members": await self.members(),
            "policy": {"replicas": cl.replicas, "consistency": cl.consistency},
            "meta": cl.meta or self.advertised_rpc(),
            "node_id": self.cfg.node_id,
        }

    async def view(self) -> ClusterView:
        raw = await self.cluster()
        previous = self.chunkio._view.table if self.chunkio is not None else None
        return await trio.to_thread.run_sync(view_from_wire, raw, self.cfg.node_id, previous)

    async def repair_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node_id": self.cfg.node_id, "layout_epoch": self.layout_epoch}
        if self.repair is not None:
            out.update(self.repair.status())
        if self.hot is not None:
            out.update(self.hot.status())
        remark = self.remark_status()
        if remark is not None:
            out["remark"] = remark
        return out

    async def node_repair_status(self, node_id: str) -> dict[str, Any] | None:
        """Node ``node_id``'s ``sys.repair_status`` (None: gossip says it is down, or it does
        not answer within peer_timeout_s): the facts node removal decides on."""
        if node_id == self.cfg.node_id:
            return await self.repair_status()
        chunkio = self.chunkio
        if chunkio is None:
            return None
        view = await chunkio.view()
        if view.is_down(node_id):
            return None
        try:
            status: dict[str, Any] = await chunkio.call_node(node_id, endpoints.SYS_REPAIR_STATUS, view=view)
        except DfsError as exc:
            log.info("repair status of %s: %s", node_id, exc.message)
            return None
        return status

    async def repair_now(self) -> None:
        if self.repair is not None:
            self.repair.kick()

    async def gossip_keyring(self, op: str, key: bytes | str | None = None) -> dict[str, Any]:
        """List or change this node's gossip keys (``dfs cluster keyring``).

        ``op``: ``list``; ``install`` (``key``: 32 raw bytes); ``use`` or ``remove`` (``key``:
        the raw key or its fingerprint).  A change is saved to gossip.keyring before it takes
        effect, so a restart keeps it and a failed save changes nothing.  Answers the keyring
        by fingerprints, and the packets gossip dropped by reason."""
        membership = self.membership
        if membership is None:
            raise NotSupported("gossip is disabled on this node: it has no gossip keyring")
        if op not in ("list", "install", "use", "remove"):
            raise InvalidArgument(f"gossip keyring: unknown op {op!r} (list, install, use or remove)")
        if (op == "list") != (key is None):
            raise InvalidArgument(
                f"gossip keyring {op}: " + ("takes no key" if op == "list" else "needs a key")
            )
        async with self._keyring_lock:
            current = membership.keyring
            changed = current.copy()
            if op == "install":
                if not isinstance(key, bytes):
                    raise InvalidArgument(
                        "gossip keyring install: the key is 32 raw bytes, not a fingerprint"
                    )
                subject = key
                changed.install(key)
            elif key is not None:  # use, remove
                subject = current.find(key)
                if op == "use":
                    changed.use(subject)
                else:
                    changed.remove(subject)
            if changed != current:
                await trio.to_thread.run_sync(save_keyring, self.cfg.data_path, changed)
                membership.keyring = changed
                log.info(
                    "gossip keyring: %s key %s (primary %s, %d key(s))",
                    op,
                    fingerprint(subject),
                    fingerprint(changed.primary),
                    len(changed.keys),
                )
        return {**membership.keyring.describe(), "dropped": membership.packets_dropped}

    async def replicas_of(self, chunk_ids: list[bytes]) -> list[int | None]:
        """Each chunk's R for repair: 0 = the default, None = unknown to metadata (leave it)."""
        if self._metacalls.reader is not None:
            return self._metacalls.reader.chunk_factors(chunk_ids)
        assert self.primary is not None
        return await endpoints.META_CHUNK_FACTORS.call(self.primary, chunk_ids)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect to the primary (secondaries), register in the layout (the primary), start
        replicated chunk I/O and repair."""
        cl = self.cfg.cluster
        ssl_context = client_context_for(self.cfg)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            if self.joining:
                self.primary = rpc.RpcClient(
                    rpc.parse_address(cl.meta, 7400),
                    nursery,
                    call_timeout_s=self.cfg.rpc.call_timeout_s,
                    max_frame_bytes=self.cfg.rpc.max_frame_bytes,
                    ssl_context=ssl_context,
                    credential=self._credential,
                )
                if not self._key.value:
                    await self._adopt_cluster_key()  # first start: nothing can be stored without it
                else:
                    nursery.start_soon(self._adopt_cluster_key)  # a check; the primary may be down

            def connect(address: str) -> rpc.RpcClient:
                return rpc.RpcClient(
                    rpc.parse_address(address, 7400),
                    nursery,
                    call_timeout_s=None,
                    max_frame_bytes=self.cfg.rpc.max_frame_bytes,
                    ssl_context=ssl_context,
                    credential=self._credential,
                )

            self.chunkio = ChunkIO(
                self._local_caller(),
                self.cfg.node_id,
                nursery,
                fetch_view=self.view,
                connect=connect,
                refresh_s=cl.refresh_s,
                peer_timeout_s=cl.peer_timeout_s,
            )
            self.chunkio.set_view(single_node_view(self.cfg.node_id))
            self.hot = HotChunks(
                self.cfg,
                self._chunks,
                self.chunkio,
                self.replicas_of,
                limiter=self._threads.limiter,
                on_change=self._advertise_soon,
            )
            self.repair = Repair(
                self.cfg,
                self._chunks,
                self._hints,
                self.chunkio,
                self.replicas_of,
                limiter=self._threads.limiter,
                pinned=self.hot.pins.pinned,
            )
            if self.is_primary:
                await self.registration.run_once()
            nursery.start_soon(self.repair.run)
            task_status.started()

    def _advertise_soon(self) -> None:
        if self.membership is not None:
            self.membership.refresh_meta_soon()

    async def _adopt_cluster_key(self) -> None:
        """A secondary takes the primary's cluster key (retrying until the primary answers)."""
        assert self.primary is not None
        delay = 0.2
        while True:
            try:
                raw = await endpoints.SYS_INFO.call(self.primary)
                break
            except Unavailable as exc:
                log.warning("waiting for the metadata primary %s: %s", self.cfg.cluster.meta, exc.message)
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._key.adopt(bytes(raw["cluster_key"]))

    async def register(self) -> bool:
        """Put this node in the layout (or refresh its address there)."""
        if not self.cfg.cluster.auto_join and self.joining:
            return True
        args = (self.cfg.node_id, self.cfg.node.zone, self.advertised_rpc())
        if self.is_primary:
            await self._metacalls.run(self._metacalls.meta.register_node, *args)
        else:
            assert self.primary is not None
            await endpoints.META_REGISTER_NODE.call(self.primary, *args)
        await self.reread_layout()
        return True

    async def reread_layout(self) -> None:
        """Read the layout again now; chunk I/O takes it on its next call."""
        self._layout_at = _NEVER
        await self.layout_wire()
        if self.chunkio is not None:
            self.chunkio.invalidate()

    async def _mark_out(self, node_id: str) -> None:
        set_node = self._leadership.fence(self._metacalls.meta.set_node)
        await self._metacalls.run(set_node, node_id, state=NodeState.OUT.value)
        if self.repair is not None:
            self.repair.kick()
