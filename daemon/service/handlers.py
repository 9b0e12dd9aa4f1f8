"""The daemon's handler tables, derived from the endpoint registry (dfs/core/endpoints.py).

Each declared endpoint names its site: every daemon answers ``Site.NODE``
calls itself; the metadata primary answers ``Site.PRIMARY`` calls, inline in
the RPC reader task when declared ``inline`` (point reads on the read-only
connection, see daemon/service/meta_calls.py), else in a task; a secondary
forwards every ``Site.PRIMARY`` call to the primary unchanged, making change
notices for its own mounts from those declared ``notices``.  ``Site.LOCAL``
calls are served to in-process callers only (the S3 shim, the admin API).

``meta.once`` wraps any endpoint declared ``once`` with the client's request id
(:meth:`HandlerTable._once`): the wrapped endpoint's own caller and argument checks
apply, and its handler's metadata calls are recorded under that id
(daemon/service/meta_calls.py), so the client may send it again, to any daemon.

The bindings below say which object answers which endpoint; the wrappers
(metadata-thread call, directory stamps, forwarding) come from the declarations.
tests/unit/test_endpoints.py checks the tables serve exactly what is declared,
with the declared arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from daemon.changefeed import ChangeFeed
from daemon.meta import MetaStore
from daemon.service.backups import BackupHandlers
from daemon.service.chunk_handlers import ChunkHandlers
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.frontends import Frontends
from daemon.service.local import Handler
from daemon.service.master_key_sync import MasterKeySync
from daemon.service.meta_calls import MetaCalls
from daemon.service.metadata_handlers import MetaHandlers
from daemon.service.snapshots import SnapshotTaker
from daemon.service.system_handlers import SystemHandlers
from daemon.service.tiering import TierHandlers
from daemon.service.upkeep import Upkeep
from daemon.service.volume_keys import VolumeKeyService
from dfs.core import endpoints
from dfs.core.auth import CallerClass
from dfs.core.changes import changes_of
from dfs.core.errors import CallerNotAllowed, InvalidArgument, Unavailable
from dfs.net import rpc

T = TypeVar("T")

# The metadata calls a secondary forwards with change notices for its own mounts (by name:
# tests/unit/test_changes.py checks dfs/core/changes.py classifies each).
NOTICED_METHODS = tuple(ep.name for ep in endpoints.ALL.values() if ep.notices)


def _by_name(bindings: Mapping[endpoints.Endpoint[Any], T]) -> dict[str, T]:
    """A handler table keyed by the method names the wire carries."""
    return {ep.name: fn for ep, fn in bindings.items()}


def check_once(request_id: bytes, method: str, args: list[Any], caller: CallerClass | None) -> None:
    """Refuse a meta.once call of ``method`` that ``caller`` (None: the daemon itself) may not
    make, or whose arguments or request id are no such call."""
    ep = endpoints.ALL.get(method)
    if ep is None or not ep.once:
        raise InvalidArgument(f"meta.once: {method!r:.60} is not a call meta.once makes")
    if caller is not None and caller not in ep.callers:
        raise CallerNotAllowed(f"{method}: not open to {caller.value} callers")
    problem = ep.check_args(args)
    if problem is not None:
        raise InvalidArgument(problem)
    low, high = endpoints.REQUEST_ID_BYTES
    if not low <= len(request_id) <= high:
        raise InvalidArgument(f"meta.once: a request id is {low} to {high} bytes")


class HandlerTable:
    """Builds the tables from the objects that answer the calls."""

    def __init__(
        self,
        metacalls: MetaCalls,
        changes: ChangeFeed,
        cluster: ClusterRunner,
        chunk: ChunkHandlers,
        system: SystemHandlers,
        upkeep: Upkeep,
        shaped: MetaHandlers,
        frontends: Frontends,
        backups: BackupHandlers,
        *,
        volume_keys: VolumeKeyService,
        key_sync: MasterKeySync,
        snapshots: SnapshotTaker,
        tiers: TierHandlers,
    ) -> None:
        self._tiers = tiers
        self._volume_keys = volume_keys
        self._key_sync = key_sync
        self._snapshots = snapshots
        self._backups = backups
        self._metacalls = metacalls
        self._changes = changes
        self._cluster = cluster
        self._chunk = chunk
        self._system = system
        self._upkeep = upkeep
        self._shaped = shaped
        self._frontends = frontends
        #: The calls the metadata lane runs itself, by endpoint name (filled by :meth:`tasks`).
        self.lane_calls: dict[str, Callable[..., Any]] = {}

    def tasks(self) -> dict[str, Handler]:
        """Every endpoint this daemon serves in a task."""
        table = self._node_handlers()
        store = self._metacalls.store
        if store is None:
            # A secondary: every call the primary answers goes there, unchanged.
            for ep in endpoints.ALL.values():
                if ep.site is endpoints.Site.PRIMARY:
                    forward = self._forwarder(ep.name)
                    table[ep.name] = self._noticed(ep.name, forward) if ep.notices else forward
            table[endpoints.META_ONCE.name] = self._once(table, forward=True)
            return table
        table.update(self._primary_handlers())
        read_store = self._metacalls.read_store
        if read_store is not None:
            table.update({name: self._read_call(fn) for name, fn in self._point_reads(read_store).items()})
        table[endpoints.META_ONCE.name] = self._once(table, forward=False)
        return table

    def inline(self) -> dict[str, Callable[..., Any]]:
        """Read-only calls answered by the RPC reader itself (see meta_calls.py)."""
        r = self._metacalls.reader
        if r is None or self._metacalls.shared:
            return {}  # a secondary forwards them; on PostgreSQL they are tasks (see tasks)
        return self._point_reads(r)

    def _point_reads(self, r: MetaStore) -> dict[str, Callable[..., Any]]:
        e = endpoints
        return _by_name(
            {
                e.META_LOOKUP: r.lookup,
                e.META_LOOKUP_VERSIONED: r.lookup_versioned,
                e.META_GETATTR: r.getattr,
                e.META_READLINK: r.readlink,
                e.META_READDIR: r.readdir,
                e.META_READ_MAP: r.read_map,
                e.META_GETXATTR: r.getxattr,
                e.META_LISTXATTR: r.listxattr,
                e.META_RESOLVE: r.resolve,
                e.META_LIST_DIR: r.list_dir,
                e.META_INTERNAL_DIR: r.internal_dir,
                e.META_GET_VOLUME: r.get_volume,
                e.META_LIST_VOLUMES: r.list_volumes,
                e.META_LAYOUT: r.layout,
                e.META_CHUNK_REPLICAS: r.chunk_replicas,
                e.META_CHUNK_FACTORS: r.chunk_factors,
                e.META_POLICY: r.policy,
                e.META_VOLUME_OF: r.volume_of,
            }
        )

    def local_inline(self) -> dict[str, Callable[..., Any]]:
        """Reads only in-process callers (the S3 shim, the admin API) may make: never over RPC."""
        return {**self.inline(), endpoints.META_S3_KEY_GET.name: self._frontends.s3_secret}

    # -- bindings --------------------------------------------------------------------------------
    def _node_handlers(self) -> dict[str, Handler]:
        """What every daemon answers itself (Site.NODE)."""
        e, c, s, cl = endpoints, self._chunk, self._system, self._cluster
        return _by_name(
            {
                e.CHUNK_PUT: c.chunk_put,
                e.CHUNK_GET: c.chunk_get,
                e.CHUNK_HAS: c.chunk_has,
                e.CHUNK_HINT: c.chunk_hint,
                e.CHUNK_DELETE: c.chunk_delete,
                e.CHUNK_DIGESTS: c.chunk_digests,
                e.CHUNK_PIN: c.chunk_pin,
                e.CHUNK_VERIFY: c.chunk_verify,
                e.SYS_INFO: s.info,
                e.SYS_PING: s.ping,
                e.SYS_STATUS: s.status,
                e.SYS_SCRUB_LIST: s.scrub_list,
                e.SYS_SCRUB_BATCH: s.scrub_batch,
                e.SYS_DISKS: s.disks,
                e.SYS_SWEEP_ORPHANS: self._upkeep.sweep_orphans,
                e.SYS_MEMBERS: cl.members,
                e.SYS_CLUSTER: cl.cluster,
                e.SYS_REPAIR_STATUS: cl.repair_status,
                e.SYS_REPAIR_NOW: cl.repair_now,
                e.SYS_GOSSIP_KEYRING: cl.gossip_keyring,
                e.SYS_BACKUP_LIST: self._backups.backup_list,
                e.SYS_BACKUP_READ: self._backups.backup_read,
                e.SYS_BACKUP_MANIFEST: self._backups.backup_manifest,
                e.NS_CHANGES: s.ns_changes,
                e.KEYS_MASTER: self._key_sync.master_key,
            }
        )

    def _primary_handlers(self) -> dict[str, Handler]:
        """What the primary answers in a task (Site.PRIMARY, not inline)."""
        e, m, sh = endpoints, self._metacalls.meta, self._shaped
        # Plain metadata-thread calls; those whose declaration names directories answer with
        # their DirStamps too (Endpoint.stamps).
        in_meta_thread: dict[endpoints.Endpoint[Any], Callable[..., Any]] = {
            e.META_OPEN_EVENTS: m.open_events,
            e.META_END_SESSION: m.end_session,
            e.META_SESSION_HEARTBEAT: m.session_heartbeat,
            e.META_SETXATTR: m.setxattr,
            e.META_REMOVEXATTR: m.removexattr,
            e.META_SYNC: m.sync,
            e.META_MAKE_DIRS: sh.make_dirs,
            e.META_REMOVE_TREE: m.remove_tree,
            e.META_REMOVE_EMPTY_PARENTS: m.remove_empty_parents,
            e.META_CREATE_VOLUME: sh.create_volume,
            e.META_UPDATE_VOLUME: m.update_volume,
            e.META_DELETE_VOLUME: sh.delete_volume,
            e.META_SNAPSHOT: sh.snapshot,
            e.META_REGISTER_NODE: m.register_node,
            e.META_SET_NODE: sh.set_node,
            e.META_REMOVE_NODE: m.remove_node,
            e.META_COUNTS: m.counts,
            e.META_MKNOD: m.mknod,
            e.META_MKDIR: m.mkdir,
            e.META_SYMLINK: m.symlink,
            e.META_CREATE: m.create,
            e.META_LINK: m.link,
            e.META_UNLINK: m.unlink,
            e.META_RMDIR: m.rmdir,
            e.META_RENAME: m.rename,
            e.META_SETATTR: sh.setattr,
            e.S3_KEY_LIST: m.s3_key_list,
            e.S3_KEY_REVOKE: m.s3_key_delete,
            e.S3_KEY_GRANT: m.s3_grant,
            e.S3_KEY_REVOKE_GRANT: m.s3_revoke_grant,
            e.S3_BUCKET_OWN: m.s3_bucket_own,
            e.ADMIN_TOKEN_LIST: m.admin_token_list,
            e.QUOTA_SET: m.quota_set_path,
            e.QUOTA_GET: m.quota_get_path,
            e.QUOTA_LIST: m.quota_list_paths,
            e.QUOTA_CLEAR: m.quota_clear_path,
            e.SNAPSHOT_LIST: m.list_snapshots,
            e.SNAPSHOT_DELETE: m.delete_snapshot,
            e.SNAPSHOT_RESTORE: m.snapshot_restore,
            e.SNAPSHOT_CLONE: m.clone_snapshot,
            e.SNAPSHOT_SCHEDULE: m.set_snapshot_schedule,
            e.TRASH_LIST: m.trash_list,
            e.TRASH_USAGE: m.trash_usage,
            e.TRASH_RESTORE: m.trash_restore,
            e.TRASH_EMPTY: m.trash_empty,
            e.S3_VERSIONING_SET: m.versioning_set,
            e.S3_VERSIONING_GET: m.versioning_get,
            e.S3_VERSIONS_GET: m.versions_get,
            e.S3_VERSIONS_DELETE: m.versions_delete,
            e.S3_OBJLOCK_CONFIG_SET: m.objlock_config_set,
            e.S3_OBJLOCK_CONFIG_GET: m.objlock_config_get,
            e.S3_OBJLOCK_GET: m.objlock_get,
            e.S3_OBJLOCK_RETENTION_SET: m.objlock_retention_set,
            e.S3_OBJLOCK_HOLD_SET: m.objlock_hold_set,
            e.S3_VERSIONS_LIST: m.versions_list,
            e.S3_VERSIONS_USAGE: m.versions_usage,
            e.ADMIN_TOKEN_REVOKE: m.admin_token_delete,
            e.KEYS_VOLUMES: self._volume_keys.volumes,
            e.KEYS_VOLUME_KEY: self._volume_keys.volume_key,
        }
        table: dict[str, Handler] = {
            ep.name: self._stamped(fn, *ep.stamps) if ep.stamps else self._meta_call(fn)
            for ep, fn in in_meta_thread.items()
        }
        # What the metadata lane may run in its own thread (daemon/service/lane.py): the changes
        # a handler makes in one metadata-thread call and nothing else.
        self.lane_calls.update(
            {ep.name: self._thread_body(fn, ep.stamps) for ep, fn in in_meta_thread.items() if ep.once}
        )
        self.lane_calls[e.META_COMMIT_WRITE.name] = sh.commit_write_here
        f = self._frontends
        table.update(
            _by_name(
                {
                    e.META_OPEN: sh.open,
                    e.META_COMMIT_WRITE: sh.commit_write,
                    e.META_PUT_OBJECT: sh.put_object,
                    e.META_CLAIM_ORPHANS: self._upkeep.claim_orphans,
                    e.S3_KEY_CREATE: f.s3_key_create,
                    e.S3_AUTHENTICATE: f.s3_authenticate,
                    e.S3_AUTHENTICATE_POST: f.s3_authenticate_post,
                    e.SYS_ADMIN_FORWARD: f.admin_forward,
                    e.ADMIN_TOKEN_CREATE: f.admin_token_create,
                    e.ADMIN_TOKEN_CHECK: f.admin_token_check,
                    e.SYS_STATFS: self._system.statfs,
                    e.SYS_FSCK_META: self._upkeep.fsck_meta,
                    e.SYS_GC: self._upkeep.gc_now,
                    e.SYS_BACKUP_NOW: self._backups.backup_now,
                    # Async: status also asks the peers, rotate writes key files after its commit.
                    e.KEYS_STATUS: self._key_sync.status,
                    e.KEYS_ROTATE: self._key_sync.rotate,
                    # Batches in read snapshot order: a retry checks what the first attempt left.
                    e.SNAPSHOT_CREATE: self._snapshots.create,
                    # Tier definitions are checked against their store; passes move data.
                    e.TIER_PUT: self._tiers.put,
                    e.TIER_DELETE: self._tiers.delete,
                    e.TIER_LIST: self._tiers.specs,
                    e.TIER_STATUS: self._tiers.status,
                    e.TIER_PIN: self._tiers.pin,
                    e.TIER_RUN: self._tiers.run,
                    e.TIER_WARM: self._tiers.warm,
                }
            )
        )
        return table

    # -- wrappers --------------------------------------------------------------------------------
    def _once(self, table: Mapping[str, Handler], *, forward: bool) -> Handler:
        """meta.once: ``method`` from ``table`` under the client's request id (a secondary checks
        the call, then forwards it whole: the primary's metadata thread records it)."""
        metacalls = self._metacalls
        forwarded = table[endpoints.META_ONCE.name] if forward else None

        async def once(request_id: bytes, retried: bool, method: str, args: list[Any]) -> Any:
            check_once(request_id, method, args, rpc.current_caller())
            if forwarded is not None:
                return await forwarded(request_id, retried, method, args)
            with metacalls.request(request_id, retried):
                return await table[method](*args)

        once.__name__ = endpoints.META_ONCE.name
        return once

    def _forwarder(self, method: str) -> Handler:
        cluster = self._cluster

        async def call(*args: Any) -> Any:
            if cluster.primary is None:
                raise Unavailable("not connected to the metadata primary yet")
            return await cluster.primary.call(method, *args)

        call.__name__ = method
        return call

    def _noticed(self, method: str, forward: Handler) -> Handler:
        """A secondary's forwarder that also tells this daemon's mounts what it changed (the
        primary's mounts learn it from the primary's oplog)."""
        op = method.removeprefix("meta.")
        changes = self._changes

        async def call(*args: Any) -> Any:
            origin = rpc.current_connection()
            with changes.busy(origin):
                try:
                    result = await forward(*args)
                except Unavailable:
                    # The reply may be what was lost: the change may have been made.
                    changes.record(changes_of(op, args), origin)
                    raise
                seq = changes.record(changes_of(op, args), origin)
                if seq is not None:
                    await changes.settle(seq, origin)
            return result

        call.__name__ = method
        return call

    def _stamped(self, fn: Callable[..., Any], *dir_args: int) -> Handler:
        """Wrap a call that changes the directories named by positions ``dir_args``.

        Returns ``[result, [[dir, ctime_before, attr_after], ...]]``.  When a
        directory's ``before`` equals the ctime a mount saw after its own
        previous change there, nobody else changed it in between, so the mount
        may keep answering negative lookups in it itself (mount/dirs.py).  The
        ctime, not the mtime, because no one can set it.  The change and the
        stamps are one transaction (MetaStore.stamped): no other write can
        interleave.
        """
        run = self._thread_body(fn, dir_args)
        metacalls = self._metacalls

        # wraps: inspect.signature(handler) shows fn's arguments (tests/unit/test_endpoints.py).
        @functools.wraps(fn)
        async def call(*args: Any) -> Any:
            return await metacalls.run(run, *args)

        return call

    def _thread_body(self, fn: Callable[..., Any], dir_args: tuple[int, ...]) -> Callable[..., Any]:
        """What the metadata thread runs for a call of ``fn`` (see :meth:`_stamped`)."""
        if not dir_args:
            return fn
        meta = self._metacalls.meta

        def run(*args: Any) -> list[Any]:
            return meta.stamped(list(dict.fromkeys(args[i] for i in dir_args)), fn, *args)

        run.__name__ = getattr(fn, "__name__", "run")
        return run

    def _read_call(self, fn: Callable[..., Any]) -> Handler:
        metacalls = self._metacalls

        @functools.wraps(fn)
        async def call(*args: Any) -> Any:
            return await metacalls.read(fn, *args)

        return call

    def _meta_call(self, fn: Callable[..., Any]) -> Handler:
        metacalls = self._metacalls

        @functools.wraps(fn)  # see _stamped
        async def call(*args: Any) -> Any:
            return await metacalls.run(fn, *args)

        return call
