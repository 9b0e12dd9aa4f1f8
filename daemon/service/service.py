"""The :class:`Service`: one daemon's stores and the objects that serve them, tied together.

It builds the parts (each in its own module here), hands each the stores and
the other parts it needs, and exposes what the rest of the daemon reads off a
node: the handler tables the RPC server serves, the in-process client the S3
shim and admin API use, the background workers the node starts, and the
figures metrics and the admin API show.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from daemon.admin import load_or_create_token
from daemon.changefeed import ChangeFeed
from daemon.cluster.deletions import AnyDeletionLog, DeletionLog, SharedDeletionLog
from daemon.cluster.hints import HintQueue
from daemon.cluster.hot import HotChunks
from daemon.cluster.membership import Membership
from daemon.cluster.repair import Repair
from daemon.disks import STATE_FILE, DiskSet
from daemon.meta import MetaStore
from daemon.meta.checkpoints import CHECKPOINT_INTERVAL_S, WalCheckpointer
from daemon.service.backups import BackupHandlers, Backups, MetaDb
from daemon.service.chunk_handlers import ChunkHandlers
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.frontends import ForwardedAdmin, Frontends
from daemon.service.handlers import HandlerTable
from daemon.service.keys import ClusterKey, load_or_create_root_key
from daemon.service.lane import MetadataLane, no_lane
from daemon.service.leadership import Leadership
from daemon.service.local import Handler, LocalCaller
from daemon.service.master_key_sync import CHECK_INTERVAL_S, MasterKeySync
from daemon.service.meta_calls import MetaCalls
from daemon.service.metadata_handlers import MetaHandlers
from daemon.service.remarker import Remarker
from daemon.service.snapshots import SnapshotDuty, SnapshotTaker
from daemon.service.system_handlers import SystemHandlers
from daemon.service.threads import ChunkThreads
from daemon.service.tiering import TierHandlers, TierSet, TierWorker
from daemon.service.upkeep import Upkeep
from daemon.service.volume_keys import VolumeKeyService, open_master_keys
from daemon.tiers.cache import TierCache
from daemon.workers import Periodic, Retrying
from dfs.client.chunks import ChunkIO
from dfs.client.cluster import Client, ClusterInfo
from dfs.core import endpoints
from dfs.core.auth import Credential
from dfs.core.config import Config, disk_specs
from dfs.core.errors import Unavailable
from dfs.heap import TRIM_INTERVAL_S, HeapTrimmer
from dfs.net import credentials

T = TypeVar("T")


class Service:
    """Owns the stores and exposes them as RPC handlers.

    With SQLite, one daemon of a cluster is the metadata primary (``[cluster]
    meta`` empty): it holds meta.db.  Every other daemon forwards metadata calls
    to it and serves only its chunk store, repair and its own S3/admin endpoints.
    With PostgreSQL (``[meta] engine``) every daemon serves metadata itself from
    the shared database (``is_primary`` is true on each); the cluster-wide duties
    run on whichever holds the leadership lock (daemon/service/leadership.py).
    The founder (``[cluster] meta`` empty) made the cluster secret and key; the
    others took them from it when they joined.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data = cfg.data_path
        self.data.mkdir(parents=True, exist_ok=True)
        self.founder = not cfg.cluster.meta
        self.shared_meta = cfg.meta.engine == "postgresql"
        # Serves metadata itself (SQLite: the primary; PostgreSQL: every daemon).
        self.is_primary = self.founder or self.shared_meta
        # Every door's credential derives from it (dfs/core/auth.py); the founder makes it on
        # first start, a joining daemon must have been given it (node.credential).
        self.secret = credentials.daemon_secret(self.data, joining=not self.founder)
        # A joining daemon takes the cluster key from the founder (chunk ids are keyed by it).
        self.key = ClusterKey(self.data / "cluster.key", create=self.founder)
        store = None
        if self.is_primary:
            store = MetaStore(
                cfg.meta.dsn if cfg.meta.engine == "postgresql" else self.data / "meta.db",
                engine=cfg.meta.engine,
                failover_timeout_s=cfg.meta.failover_timeout_s,
                block_size=cfg.storage.block_size,
                default_replicas=cfg.cluster.replicas,
                default_trash_days=cfg.storage.trash_days,
            )
        # What changed in the namespace, for this daemon's mounts (ns.changes); on the primary
        # read from the oplog after each metadata call, the one place every change passes.
        # Complete where this daemon holds the metadata (or follows the shared op-log); a
        # secondary sees only the changes made through it.
        self.changes = ChangeFeed(complete=store is not None)
        # SQLite's log is copied back into the database file off the metadata thread.
        sqlite = store is not None and not self.shared_meta
        self.checkpointer = WalCheckpointer(str(self.data / "meta.db")) if sqlite else None
        self.metacalls = MetaCalls(
            store,
            self.changes,
            primary_address=cfg.cluster.meta,
            failover_timeout_s=cfg.meta.failover_timeout_s,
        )
        # One disk (the data dir, today's layout) unless [storage] disks lists several.
        self.chunks = DiskSet(
            disk_specs(cfg.storage) or [(self.data, 1.0)],
            fsync=cfg.storage.fsync,
            reserve_bytes=cfg.storage.reserve_bytes,
            state_path=self.data / STATE_FILE,
        )
        self.hints = HintQueue(self.data / "hints.db")
        self.threads = ChunkThreads()
        self.started_at = time.time()
        # Made before the daemon reports ready, so `dfs up` can show them.
        self.s3_root_key = load_or_create_root_key(cfg.s3_root_path) if cfg.s3.enabled else None
        self.admin_token = load_or_create_token(cfg.admin_token_path) if cfg.admin.enabled else None
        self.deletions: AnyDeletionLog = (
            SharedDeletionLog(lambda: self.metacalls.meta) if self.shared_meta else DeletionLog()
        )
        self.leadership = Leadership(
            self.metacalls, dsn=cfg.meta.dsn if self.shared_meta else None, node_id=cfg.node_id
        )

        self.cluster_runner = ClusterRunner(
            cfg,
            self.key,
            self.metacalls,
            self.chunks,
            self.hints,
            self.threads,
            self.local_caller,
            credential=Credential.of_secret(self.secret),
            leadership=self.leadership,
        )
        runner = self.cluster_runner
        backups = Backups(
            self.data, self.secret, cfg.node_id, cfg.meta.backup_keep, piece_bytes=cfg.storage.block_size
        )
        # Metadata backups are stored as chunks no metadata references: fsck and the orphan
        # sweep keep those the manifests list.
        self.upkeep = Upkeep(
            cfg,
            self.metacalls,
            self.chunks,
            self.threads,
            runner,
            self.deletions,
            backup_chunks=backups.chunk_ids,
        )
        self.upkeep.fence = self.leadership.fence
        # Scheduled volume snapshots (daemon/service/snapshots.py): a duty of the leader's.
        self.snapshots = SnapshotTaker(self.metacalls)
        self.snapshot_duty = SnapshotDuty(self.metacalls, self.snapshots)
        self.snapshot_duty.fence = self.leadership.fence
        # Re-marking chunks after replication policy changes (daemon/service/remarker.py).
        self.remarker = Remarker(self.metacalls, runner, self.leadership.fence)
        runner.remark_status = self.remarker.status
        self.backups = BackupHandlers(
            backups,
            runner,
            MetaDb.of(self.data, cfg.meta) if self.is_primary else None,
            lambda: self.key.value,
            chunks=self.chunks,
            threads=self.threads,
            replicas=cfg.cluster.replicas,
        )
        self.frontends = Frontends(cfg, self.metacalls, runner)
        # The master key of encrypted volumes: only where metadata is served (the founder makes
        # it; daemons sharing the metadata take it from each other: master_key_sync.py).
        self.volume_keys = VolumeKeyService(
            open_master_keys(cfg.master_key_path, store, founder=self.founder, shared=self.shared_meta),
            cfg.storage.compression_level,
            lambda: self.metacalls.meta,
        )
        self.key_sync = MasterKeySync(
            cfg,
            self.volume_keys,
            self.metacalls,
            runner,
            Credential.of_secret(self.secret),
            shared=self.shared_meta,
        )
        # Cloud tiers (daemon/service/tiering.py): every daemon reads cold chunks from them; the
        # leader's worker copies and moves chunks there.
        self.tiers = TierSet(
            self._tier_specs,
            cfg.tiers.max_in_flight,
            TierCache(self.data / "tier-cache", cfg.tiers.cache_bytes),
        )
        self.tier_worker = TierWorker(cfg, self.metacalls, self.tiers, self.chunks, self.threads, runner)
        self.tier_worker.fence = self.leadership.fence
        self.upkeep.tier_fsck = self.tier_worker.fsck
        self.table = HandlerTable(
            self.metacalls,
            self.changes,
            runner,
            ChunkHandlers(self.chunks, self.hints, self.threads, runner, self.tiers),
            SystemHandlers(
                cfg,
                self.key,
                self.metacalls,
                self.chunks,
                self.threads,
                runner,
                self.changes,
                started_at=self.started_at,
            ),
            self.upkeep,
            MetaHandlers(self.metacalls, self.chunks, self.threads, runner, self.deletions),
            self.frontends,
            self.backups,
            volume_keys=self.volume_keys,
            key_sync=self.key_sync,
            snapshots=self.snapshots,
            tiers=TierHandlers(self.metacalls, self.tiers, self.tier_worker),
        )
        self.handlers: dict[str, Handler] = self.table.tasks()
        # The metadata lane (daemon/service/lane.py): the primary's, beside its unix socket.
        self.lane: MetadataLane | None = None
        if cfg.rpc.unix_socket and cfg.rpc.metadata_lane and store is not None:
            self.lane = MetadataLane(
                str(cfg.data_path / "lane.sock"),
                self.metacalls,
                self.changes,
                self.table.lane_calls,
                max_frame_bytes=cfg.rpc.max_frame_bytes,
                max_inflight=cfg.rpc.max_inflight_per_conn,
                send_timeout_s=cfg.rpc.call_timeout_s,
            )
        self.handlers[endpoints.META_LANE.name] = self.lane.issue if self.lane is not None else no_lane
        # The background loops; the node starts each once run_cluster has started.
        self.workers: list[Periodic | Retrying] = list(runner.workers)
        st = cfg.storage
        if self.is_primary:
            # Cluster-wide duties: with PostgreSQL only the leader runs them.
            only = self.leadership.only
            self.workers += [
                Periodic("gc", st.gc_interval_s, only(self.upkeep.gc_now)),
                Periodic("session expiry", 30.0, only(self.upkeep.expire_sessions)),
                Periodic("oplog trim", 600.0, only(self.upkeep.trim_oplog)),
                # Often: a busy mount records every change it makes (meta.once).
                Periodic("request trim", 60.0, only(self.upkeep.trim_requests)),
                Periodic("policy re-mark", 1.0, only(self.remarker.step)),
                Periodic("trash expiry", st.trash_interval_s, only(self.upkeep.expire_trash)),
            ]
            if cfg.snapshots.check_interval_s > 0:
                self.workers.append(
                    Periodic("snapshots", cfg.snapshots.check_interval_s, only(self.snapshot_duty.step))
                )
            if cfg.tiers.interval_s > 0:
                self.workers.append(Periodic("tiering", cfg.tiers.interval_s, only(self.tier_worker.step)))
            if cfg.meta.backup_interval_s > 0:
                self.workers.append(
                    Periodic("metadata backup", cfg.meta.backup_interval_s, only(self.backups.periodic))
                )
        if self.shared_meta:
            deletions = self.deletions
            assert isinstance(deletions, SharedDeletionLog)
            self.workers += [
                Periodic("leadership", 1.0, self.leadership.step),
                # Changes other daemons committed, for this daemon's mounts.
                Periodic("peer changes", 0.25, self.metacalls.poll_changes),
                Periodic("deletion log", 1.0, lambda: self.metacalls.run(deletions.flush)),
                # Follows the cluster's master key (a rotation on another daemon).
                Periodic("master key sync", CHECK_INTERVAL_S, self.key_sync.step),
            ]
        self.workers.append(Periodic("orphan sweep", st.orphan_scan_interval_s, self.upkeep.sweep_orphans))
        # Freed block buffers back to the system (dfs/heap.py).
        self.workers.append(Periodic("heap trim", TRIM_INTERVAL_S, HeapTrimmer().step))
        checkpointer = self.checkpointer
        if checkpointer is not None:
            step = functools.partial(trio.to_thread.run_sync, checkpointer.step)
            self.workers.append(Periodic("wal checkpoint", CHECKPOINT_INTERVAL_S, step))

    async def _tier_specs(self) -> list[dict[str, Any]]:
        """The tier definitions: from metadata here, else from the primary."""
        if self.metacalls.store is not None:
            specs: list[dict[str, Any]] = await self.metacalls.run(self.metacalls.meta.tier_specs)
            return specs
        primary = self.cluster_runner.primary
        if primary is None:
            raise Unavailable("not connected to the metadata primary yet")
        return await endpoints.TIER_LIST.call(primary)

    def close(self) -> None:
        self.chunks.close()  # stops a running disk drain
        self.leadership.close()
        self.metacalls.close()
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.hints.close()

    # -- metadata --------------------------------------------------------------------------------
    @property
    def meta(self) -> MetaStore:
        """The writer connection (raises Unavailable on a secondary); use it inside :meth:`_m`."""
        return self.metacalls.meta

    @property
    def reads(self) -> MetaStore:
        """The read-only connection, for point reads on the event loop."""
        return self.metacalls.reads

    async def _m(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the metadata thread (see daemon/service/meta_calls.py)."""
        return await self.metacalls.run(fn, *args, **kwargs)

    async def take_snapshot(self, volume: str, name: str) -> dict[str, Any]:
        """Snapshot ``name`` of ``volume`` in bounded batches (the admin API's way in)."""
        return await self.snapshots.create(volume, name)

    def set_meta_observer(self, observe: Callable[[str, float], None]) -> None:
        """Report each metadata transaction's (operation, seconds), from the metadata thread."""
        self.metacalls.worker.observe = observe

    # -- handler tables and in-process callers ---------------------------------------------------
    def inline_handlers(self) -> dict[str, Callable[..., Any]]:
        """Read-only calls answered by the RPC reader itself."""
        return self.table.inline()

    def local_inline_handlers(self) -> dict[str, Callable[..., Any]]:
        """Inline reads for in-process callers, including those never served over RPC."""
        return self.table.local_inline()

    def local_caller(self) -> LocalCaller:
        return LocalCaller(self.handlers, self.local_inline_handlers())

    def local_client(self) -> Client:
        """A filesystem client calling this service in-process (S3 shim, admin API)."""
        st = self.cfg.storage
        info = ClusterInfo(
            node_id=self.cfg.node_id,
            block_size=st.block_size,
            inline_max=st.inline_max,
            compression_level=st.compression_level,
            cluster_key=self.key.value,
            data_dir=str(self.data.resolve()),
            session_timeout_s=self.cfg.meta.session_timeout_s,
        )
        return Client(self.local_caller(), info, chunkio=self.chunkio)

    # -- what the admin API uses (daemon/service/frontends.py) -----------------------------------
    async def forward_admin(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, remote: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """A secondary's admin API has the primary answer a request backed by metadata."""
        return await self.frontends.forward_admin(method, target, headers, body, remote)

    def ensure_volume_key(self, meta: MetaStore, volume_ino: int) -> int:
        """The encrypted volume's data key id, made now if it has none (metadata thread)."""
        return self.volume_keys.ensure(meta, volume_ino)

    async def admin_token_scope(self, token: str) -> str | None:
        """The scope of a scoped admin token presented to this daemon's admin API, or None."""
        return await self.frontends.admin_token_scope(token)

    async def s3_key_create(self, description: str, allow: list[list[str]]) -> dict[str, Any]:
        """A new S3 key with grants ``allow`` ([bucket, perm] pairs), on the primary."""
        return await self.frontends.s3_key_create(description, allow)

    async def node_repair_status(self, node_id: str) -> dict[str, Any] | None:
        """A node's repair counters (None: it cannot be asked), for node removal."""
        return await self.cluster_runner.node_repair_status(node_id)

    @property
    def admin_api(self) -> ForwardedAdmin | None:
        """The admin API, once the node serves it (the primary answers forwarded requests)."""
        return self.frontends.admin_api

    @admin_api.setter
    def admin_api(self, api: ForwardedAdmin | None) -> None:
        self.frontends.admin_api = api

    # -- the cluster (daemon/service/cluster_runner.py) ------------------------------------------
    async def run_cluster(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.cluster_runner.run)
            if self.shared_meta:
                # The cluster's master key before this daemon reports ready (bounded).
                await self.key_sync.first_sync()
            task_status.started()

    @property
    def membership(self) -> Membership | None:
        return self.cluster_runner.membership

    @membership.setter
    def membership(self, membership: Membership | None) -> None:
        self.cluster_runner.membership = membership

    @property
    def chunkio(self) -> ChunkIO | None:
        return self.cluster_runner.chunkio

    @property
    def repair(self) -> Repair | None:
        return self.cluster_runner.repair

    def tier_figures(self) -> dict[str, float]:
        """Cold reads on this daemon and the tiering passes it ran (metrics)."""
        w = self.tier_worker
        return {
            **self.tiers.read_stats(),
            "moved_bytes": w.total_moved_bytes,
            "made_cold": w.total_made_cold,
            "errors": w.total_errors,
        }

    @property
    def remark(self) -> Remarker:
        return self.remarker

    @property
    def hot(self) -> HotChunks | None:
        return self.cluster_runner.hot

    @property
    def layout_epoch(self) -> int:
        return self.cluster_runner.layout_epoch

    @property
    def marked_out(self) -> int:
        return self.cluster_runner.controller.marked_out

    def layout_states(self) -> dict[str, str]:
        return self.cluster_runner.layout_states()

    def worker_status(self) -> dict[str, dict[str, Any]]:
        """What each background loop last did, by name."""
        return {w.name: w.status() for w in self.workers}
