"""dfsd's service wiring: RPC handlers over the metadata service and chunk store.

Concurrency design
------------------
- Every metadata transaction that writes runs in one dedicated thread
  (:class:`MetaWorker`) on the writer connection, so commits never block the
  event loop and are serialized without extra locks.  The hand-off is a
  queue plus ``run_sync_soon``, about half the cost of ``trio.to_thread``.
- Point reads (lookup, getattr, readdir pages, block maps, xattrs) run on a
  second, read-only connection directly in the RPC reader task
  (``inline_handlers``).  They touch a few cached index pages and take
  microseconds, far less than any thread hand-off; in WAL mode they never
  wait for the writer and see every committed transaction.  This is what
  S3QL does for all of its metadata; we keep it to reads.  Chunk
  existence checks needed by ``commit_write`` and chunk deletion by GC run
  inside that same serialized call, so a chunk can never be collected
  between "it exists" and "it is referenced".
- Chunk I/O (read, verify, write, fsync) runs in worker threads under a
  separate limiter; the chunk store is thread-safe.
- Background work (GC, session expiry, op-log trimming) are tasks in the
  daemon's nursery; each unit of work is short and bounded.
- Change notices for mounts (dfs/changes.py, daemon/changefeed.py): after
  each metadata-thread call the rows it added to the oplog become notices
  (the one place every change passes, whether from RPC, S3 or the admin
  API), and the call returns once this daemon's other mounts applied them.
  A secondary makes them from the calls it forwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from daemon.admin import AdminApi, load_or_create_token
from daemon.changefeed import ChangeFeed
from daemon.chunks import ChunkStore
from daemon.cluster import DeletionLog, dead_past_grace
from daemon.hints import HintQueue
from daemon.hot import HotChunks
from daemon.membership import Membership
from daemon.metadata import MetaStore
from daemon.repair import Repair
from dfs import __version__, endpoints, rpc, sigv4
from dfs.certs import client_context_for
from dfs.changes import ALL, Change, changes_of
from dfs.chunkio import ChunkIO, ClusterView, single_node_view, view_from_wire
from dfs.client import Client, ClusterInfo
from dfs.config import Config
from dfs.errors import CorruptChunk, DfsError, InvalidArgument, S3Error, Unavailable, UnknownMethod
from dfs.meta import Attr, BlockRef, FileMap, StatFs
from dfs.placement import Layout, NodeState

log = logging.getLogger("dfs.daemon")
T = TypeVar("T")
Handler = Callable[..., Awaitable[Any]]

_FSCK_BATCH = 256
# A secondary deletes the orphans the primary let it claim within this many seconds, or not at all.
_CLAIM_WINDOW_S = 30.0


def _load_or_create_secret(path: Path) -> bytes:
    """The cluster key that keys chunk ids; created once, mode 0600."""
    key = _load_secret(path)
    if key is None:
        key = secrets.token_bytes(32)
        _write_private_bytes(path, key)
    return key


def _replicas_arg(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 7:
        raise InvalidArgument(f"replicas must be an integer in 1..7, not {value!r:.40}")
    return value


def _load_secret(path: Path) -> bytes | None:
    """The cluster key if this data directory has one (a secondary gets it from the primary)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != 32:
        raise DfsError(f"{path} is corrupt: expected 32 bytes, found {len(data)}")
    return data


def load_or_create_root_key(path: Path) -> tuple[str, str]:
    """The root S3 key pair (``s3-root.json``: access_key, secret_key), created once, mode 0600."""
    try:
        raw = json.loads(path.read_text())
        return str(raw["access_key"]), str(raw["secret_key"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        raise DfsError(f"{path} is corrupt: {exc}") from None
    access_key, secret_key = new_s3_key()
    _write_private(path, json.dumps({"access_key": access_key, "secret_key": secret_key}, indent=2) + "\n")
    return access_key, secret_key


def new_s3_key() -> tuple[str, str]:
    """A fresh (access key, secret key) pair in AWS's shapes: 20 upper-case characters, 40 base64."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    access_key = "DFS" + "".join(secrets.choice(alphabet) for _ in range(17))
    return access_key, secrets.token_urlsafe(30)[:40]


def _write_private_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _write_private(path: Path, text: str) -> None:
    _write_private_bytes(path, text.encode())


# The metadata calls a secondary forwards with change notices for its own mounts (by name:
# tests/unit/test_changes.py checks dfs/changes.py classifies each).
_META_METHODS = tuple(ep.name for ep in endpoints.ALL.values() if ep.notices)


def _by_name(bindings: Mapping[endpoints.Endpoint[Any], T]) -> dict[str, T]:
    """A handler table keyed by the method names the wire carries."""
    return {ep.name: fn for ep, fn in bindings.items()}


class MetaWorker:
    """One thread that runs every metadata call, in arrival order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], trio.lowlevel.Task] | None] = (
            queue.SimpleQueue()
        )
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        # Called in the metadata thread with (operation, seconds) after each transaction.
        self.observe: Callable[[str, float], None] | None = None

    def _loop(self) -> None:
        token = self._token
        assert token is not None
        while (item := self._queue.get()) is not None:
            fn, task = item
            started = time.perf_counter()
            result = outcome.capture(fn)
            if self.observe is not None:
                inner = getattr(fn, "func", fn)
                self.observe(getattr(inner, "__name__", "call"), time.perf_counter() - started)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                return

    async def run(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            self._token = trio.lowlevel.current_trio_token()
            self._thread = threading.Thread(target=self._loop, name="dfs-meta", daemon=True)
            self._thread.start()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._queue.put((fn, trio.lowlevel.current_task()))

        def abort(_: Any) -> trio.lowlevel.Abort:
            # A metadata transaction is short and must not be torn: it always finishes.
            return trio.lowlevel.Abort.FAILED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class LocalCaller:
    """Calls the service's handlers in-process: the S3 shim and admin API use it as their
    ``dfs.client.Client`` transport, skipping serialization and sockets."""

    def __init__(self, handlers: dict[str, Handler], inline: dict[str, Callable[..., Any]]) -> None:
        self._handlers = handlers
        self._inline = inline

    async def call(self, method: str, *args: Any) -> Any:
        fn = self._inline.get(method)
        if fn is not None:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        handler = self._handlers.get(method)
        if handler is None:
            raise UnknownMethod(f"unknown method {method!r}")
        return await handler(*args)


class Service:
    """Owns the stores and exposes them as RPC handlers.

    One daemon of a cluster is the metadata primary (``[cluster] meta`` empty):
    it holds meta.db.  Every other daemon forwards metadata calls to it and
    serves only its chunk store, repair and its own S3/admin endpoints.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data = cfg.data_path
        self.data.mkdir(parents=True, exist_ok=True)
        self.is_primary = not cfg.cluster.meta
        key_path = self.data / "cluster.key"
        # A secondary takes the cluster key from the primary (chunk ids are keyed by it).
        self.cluster_key = (
            _load_or_create_secret(key_path) if self.is_primary else (_load_secret(key_path) or b"")
        )
        self._store: MetaStore | None = None
        self._reader: MetaStore | None = None
        if self.is_primary:
            self._store = MetaStore(
                self.data / "meta.db",
                inline_max=cfg.storage.inline_max,
                block_size=cfg.storage.block_size,
                default_replicas=cfg.cluster.replicas,
            )
            self._reader = self._store.reader()
        self.chunks = ChunkStore(self.data, fsync=cfg.storage.fsync, reserve_bytes=cfg.storage.reserve_bytes)
        self.hints = HintQueue(self.data / "hints.db")
        self._meta = MetaWorker()
        self._chunk_limiter = trio.CapacityLimiter(8)
        self.started_at = time.time()
        # Made before the daemon reports ready, so `dfs up` can show them.
        self.s3_root_key = load_or_create_root_key(cfg.s3_root_path) if cfg.s3.enabled else None
        self.admin_token = load_or_create_token(cfg.admin_token_path) if cfg.admin.enabled else None
        # The gossip runner, once dfsd starts it (None: gossip disabled, or not started yet).
        self.membership: Membership | None = None
        # Set by run_cluster: the connection to the primary (secondaries), replicated chunk I/O, repair.
        self.primary: rpc.RpcClient | None = None
        self.chunkio: ChunkIO | None = None
        self.repair: Repair | None = None
        self.hot: HotChunks | None = None
        # The admin API, once dfsd serves it: the primary answers requests secondaries forward.
        self.admin_api: AdminApi | None = None
        self.deletions = DeletionLog()
        self.layout_epoch = 0
        self._layout_wire: dict[str, Any] | None = None
        self._layout_at = -1e18
        self.marked_out = 0
        self._nursery: trio.Nursery | None = None
        # What changed in the namespace, for this daemon's mounts (ns.changes); on the primary
        # read from the oplog after each metadata call (_m), the one place every change passes.
        self.changes = ChangeFeed()
        self._oplog_seen = self._store.oplog_head() if self._store is not None else 0
        self.handlers: dict[str, Handler] = self._handlers()

    @property
    def meta(self) -> MetaStore:
        if self._store is None:
            raise Unavailable(f"this daemon is not the metadata primary (that is {self.cfg.cluster.meta})")
        return self._store

    @property
    def reads(self) -> MetaStore:
        if self._reader is None:
            raise Unavailable(f"this daemon is not the metadata primary (that is {self.cfg.cluster.meta})")
        return self._reader

    def close(self) -> None:
        self._meta.stop()
        if self._reader is not None:
            self._reader.close()
        if self._store is not None:
            self._store.close()
        self.hints.close()

    # -- thread helpers -------------------------------------------------
    async def _m(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = partial(fn, *args, **kwargs)
        store = self._store
        if store is None:
            return await self._meta.run(call)
        found: list[Change] = []

        def run() -> T:
            written = store.total_changes
            try:
                return call()
            finally:
                # Still in the metadata thread: exactly the rows this call committed
                # (reads, which wrote nothing, skip the oplog query).
                if store.total_changes != written:
                    found.extend(self._changes_since_last(store))

        run.__name__ = getattr(fn, "__name__", "call")  # the metadata observer's label
        origin = rpc.current_connection()
        with self.changes.busy(origin):
            try:
                result = await self._meta.run(run)
            finally:
                seq = self.changes.record(found, origin)
            if seq is not None:
                await self.changes.settle(seq, origin)
        return result

    def _changes_since_last(self, store: MetaStore) -> list[Change]:
        """Metadata thread: the change notices for the oplog rows written since the last call."""
        out: list[Change] = []

        def resolve(parent: int, name: bytes) -> int | None:
            try:
                return store.lookup(parent, name).ino
            except DfsError:
                return None

        try:
            while rows := store.oplog_since(self._oplog_seen):
                self._oplog_seen = rows[-1][0]
                for _, op, args in rows:
                    out.extend(changes_of(op, args, resolve))
        except Exception:
            # Never fail the call that made the change; the mounts drop everything instead.
            log.exception("reading the oplog for change notices failed")
            with contextlib.suppress(DfsError):
                self._oplog_seen = store.oplog_head()
            return [Change(ALL)]
        return out

    async def _c(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self._chunk_limiter)

    # -- handler table ----------------------------------------------------
    def _handlers(self) -> dict[str, Handler]:
        """Every endpoint this daemon serves in a task (dfs/endpoints.py says which and how)."""
        table = self._node_handlers()
        if self._store is None:
            # A secondary: every call the primary answers goes there, unchanged.
            for ep in endpoints.ALL.values():
                if ep.site is endpoints.Site.PRIMARY:
                    forward = self._forwarder(ep.name)
                    table[ep.name] = self._noticed(ep.name, forward) if ep.notices else forward
            return table
        table.update(self._meta_handlers(self._store))
        return table

    def _forwarder(self, method: str) -> Handler:
        async def call(*args: Any) -> Any:
            if self.primary is None:
                raise Unavailable("not connected to the metadata primary yet")
            return await self.primary.call(method, *args)

        call.__name__ = method
        return call

    def _noticed(self, method: str, forward: Handler) -> Handler:
        """A secondary's forwarder that also tells this daemon's mounts what it changed (the
        primary's mounts learn it from the primary's oplog)."""
        op = method.removeprefix("meta.")

        async def call(*args: Any) -> Any:
            origin = rpc.current_connection()
            with self.changes.busy(origin):
                try:
                    result = await forward(*args)
                except Unavailable:
                    # The reply may be what was lost: the change may have been made.
                    self.changes.record(changes_of(op, args), origin)
                    raise
                seq = self.changes.record(changes_of(op, args), origin)
                if seq is not None:
                    await self.changes.settle(seq, origin)
            return result

        call.__name__ = method
        return call

    def _node_handlers(self) -> dict[str, Handler]:
        """What every daemon answers itself (Site.NODE)."""
        e = endpoints
        return _by_name(
            {
                e.CHUNK_PUT: self.chunk_put,
                e.CHUNK_GET: self.chunk_get,
                e.CHUNK_HAS: self.chunk_has,
                e.CHUNK_HINT: self.chunk_hint,
                e.CHUNK_DELETE: self.chunk_delete,
                e.CHUNK_DIGESTS: self.chunk_digests,
                e.CHUNK_PIN: self.chunk_pin,
                e.CHUNK_VERIFY: self.chunk_verify,
                e.SYS_INFO: self.info,
                e.SYS_PING: self.ping,
                e.SYS_STATUS: self.status,
                e.SYS_SCRUB_LIST: self.scrub_list,
                e.SYS_SCRUB_BATCH: self.scrub_batch,
                e.SYS_SWEEP_ORPHANS: self.sweep_orphans,
                e.SYS_MEMBERS: self.members,
                e.SYS_CLUSTER: self.cluster,
                e.SYS_REPAIR_STATUS: self.repair_status,
                e.SYS_REPAIR_NOW: self.repair_now,
                e.NS_CHANGES: self.ns_changes,
            }
        )

    def _meta_handlers(self, m: MetaStore) -> dict[str, Handler]:
        """What the primary answers in a task (Site.PRIMARY, not inline)."""
        e = endpoints
        # Plain metadata-thread calls; those whose declaration names directories answer with
        # their DirStamps too (Endpoint.stamps).
        in_meta_thread: dict[endpoints.Endpoint[Any], Callable[..., Any]] = {
            e.META_OPEN_EVENTS: m.open_events,
            e.META_END_SESSION: m.end_session,
            e.META_SESSION_HEARTBEAT: m.session_heartbeat,
            e.META_SETXATTR: m.setxattr,
            e.META_REMOVEXATTR: m.removexattr,
            e.META_SYNC: m.sync,
            e.META_MAKE_DIRS: self._make_dirs,
            e.META_REMOVE_TREE: m.remove_tree,
            e.META_REMOVE_EMPTY_PARENTS: m.remove_empty_parents,
            e.META_CREATE_VOLUME: self._create_volume,
            e.META_UPDATE_VOLUME: m.update_volume,
            e.META_DELETE_VOLUME: self._delete_volume,
            e.META_SNAPSHOT: self._snapshot,
            e.META_REGISTER_NODE: m.register_node,
            e.META_SET_NODE: self._set_node,
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
            e.META_SETATTR: self._setattr,
            e.S3_KEY_LIST: m.s3_key_list,
            e.S3_KEY_REVOKE: m.s3_key_delete,
        }
        table: dict[str, Handler] = {
            ep.name: self._stamped(fn, *ep.stamps) if ep.stamps else self._meta_call(fn)
            for ep, fn in in_meta_thread.items()
        }
        table.update(
            _by_name(
                {
                    e.META_OPEN: self.open,
                    e.META_COMMIT_WRITE: self.commit_write,
                    e.META_PUT_OBJECT: self.put_object,
                    e.META_CLAIM_ORPHANS: self.claim_orphans,
                    e.S3_KEY_CREATE: self.s3_key_create,
                    e.S3_AUTHENTICATE: self.s3_authenticate,
                    e.SYS_ADMIN_FORWARD: self.admin_forward,
                    e.SYS_STATFS: self.statfs,
                    e.SYS_FSCK_META: self.fsck_meta,
                    e.SYS_GC: self.gc_now,
                }
            )
        )
        return table

    def inline_handlers(self) -> dict[str, Callable[..., Any]]:
        """Read-only calls answered by the RPC reader itself (see the module docstring)."""
        if self._reader is None:
            return {}  # a secondary forwards them (see _handlers)
        r, e = self._reader, endpoints
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
            }
        )

    def local_inline_handlers(self) -> dict[str, Callable[..., Any]]:
        """Reads only in-process callers (the S3 shim, the admin API) may make: never over RPC."""
        return {**self.inline_handlers(), endpoints.META_S3_KEY_GET.name: self.s3_secret}

    def s3_secret(self, access_key: str) -> str | None:
        """The secret of an S3 key made with `dfs s3 key create`, on the primary (which holds
        them); a secondary has none and asks the primary to verify (s3_authenticate_remote)."""
        if self._reader is not None:
            return self._reader.s3_key_get(access_key)
        return None

    def _stamped(self, fn: Callable[..., Any], *dir_args: int) -> Handler:
        """Wrap a call that changes the directories named by positions ``dir_args``.

        Returns ``[result, [[dir, ctime_before, attr_after], ...]]``.  When a
        directory's ``before`` equals the ctime a mount saw after its own
        previous change there, nobody else changed it in between, so the mount
        may keep answering negative lookups in it itself (mount/dirs.py).  The
        ctime, not the mtime, because no one can set it.  All steps run in one
        metadata-thread call: no other write can interleave.
        """

        def run(*args: Any) -> list[Any]:
            dirs = list(dict.fromkeys(args[i] for i in dir_args))
            before = [self.meta.getattr(d).ctime_ns for d in dirs]
            result = fn(*args)
            return [result, [[d, b, self.meta.getattr(d)] for d, b in zip(dirs, before, strict=True)]]

        run.__name__ = getattr(fn, "__name__", "run")

        # wraps: inspect.signature(handler) shows fn's arguments (tests/unit/test_endpoints.py).
        @functools.wraps(fn)
        async def call(*args: Any) -> Any:
            return await self._m(run, *args)

        return call

    def _meta_call(self, fn: Callable[..., Any]) -> Handler:
        @functools.wraps(fn)  # see _stamped
        async def call(*args: Any) -> Any:
            return await self._m(fn, *args)

        return call

    # -- metadata calls needing argument shaping --------------------------
    def _setattr(self, ino: int, changes: dict[str, Any]) -> Attr:
        allowed = {"mode", "uid", "gid", "size", "atime_ns", "mtime_ns"}
        if not isinstance(changes, dict) or set(changes) - allowed:
            raise InvalidArgument(f"setattr: bad fields {changes!r:.100}")
        return self.meta.setattr(ino, **changes)

    def _set_node(self, node_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        allowed = {"state", "zone", "capacity_weight"}
        if not isinstance(changes, dict) or set(changes) - allowed:
            raise InvalidArgument(f"set_node: bad fields {changes!r:.100}")
        return self.meta.set_node(node_id, **changes)

    def _make_dirs(
        self, parent: int, dirs: list[bytes], mode: int = 0o755, uid: int = 0, gid: int = 0
    ) -> Attr:
        return self.meta.make_dirs(parent, list(dirs), mode=mode, uid=uid, gid=gid)

    def _create_volume(
        self, name: str, policy: dict[str, Any], mode: int = 0o755, uid: int = 0, gid: int = 0
    ) -> Attr:
        return self.meta.create_volume(name, dict(policy), mode=mode, uid=uid, gid=gid)

    def _delete_volume(self, name: str, remove_dir: bool = True) -> None:
        self.meta.delete_volume(name, remove_dir=remove_dir)

    def _snapshot(self, src_dir: int, dst_parent: int, name: bytes, uid: int = 0, gid: int = 0) -> Attr:
        return self.meta.snapshot(src_dir, dst_parent, name, uid=uid, gid=gid)

    async def put_object(self, parent: int, dirs: list[bytes], name: bytes, opts: dict[str, Any]) -> Attr:
        """The S3 shim's atomic object write (MetaStore.put_object); ``opts`` carries its keywords."""
        allowed = {
            "size",
            "mtime_ns",
            "blocks",
            "inline",
            "xattrs",
            "if_none_match",
            "if_match",
            "mode",
            "uid",
            "gid",
            "replicas",
        }
        if not isinstance(opts, dict) or set(opts) - allowed:
            raise InvalidArgument(f"put_object: bad options {opts!r:.100}")
        refs = [BlockRef.from_wire(b) for b in opts.get("blocks") or []]
        if_match = opts.get("if_match")
        exists = await self._chunk_exists_for(refs)
        replicas = _replicas_arg(opts.get("replicas"))

        def run() -> Attr:
            return self.meta.put_object(
                parent,
                list(dirs),
                name,
                mode=int(opts.get("mode", 0o644)),
                uid=int(opts.get("uid", 0)),
                gid=int(opts.get("gid", 0)),
                size=int(opts["size"]),
                mtime_ns=int(opts["mtime_ns"]),
                blocks=refs,
                inline=opts.get("inline"),
                xattrs=dict(opts.get("xattrs") or {}),
                chunk_exists=exists,
                replicas=replicas,
                if_none_match=bool(opts.get("if_none_match")),
                if_match=(bytes(if_match[0]), bytes(if_match[1])) if if_match else None,
            )

        return await self._m(run)

    async def open(self, ino: int, session: str, truncate: bool, read: bool) -> FileMap:
        """Register an open and return what a reader needs, in one round trip."""
        return await self._m(self._open, ino, session, truncate, read)

    def _open(self, ino: int, session: str, truncate: bool, read: bool) -> FileMap:
        attr = self.meta.open(ino, session, truncate=truncate, read=read)
        if not attr.is_reg:
            return FileMap(attr, None, [])
        return self.meta.read_map(ino)

    async def commit_write(
        self,
        ino: int,
        size: int,
        mtime_ns: int,
        blocks: list[Any],
        inline: bytes | None,
        attrs: dict[str, Any] | None = None,
        replicas: int | None = None,
    ) -> Any:
        """Commit a file's new blocks; ``attrs`` are setattr changes the mount held
        back while it wrote the file, applied right after (same metadata-thread call).
        ``replicas`` is the R the blocks were written with (repair keeps that many copies)."""
        refs = [BlockRef.from_wire(b) for b in blocks]
        exists = await self._chunk_exists_for(refs)
        r = _replicas_arg(replicas)

        def run() -> Attr:
            attr = self.meta.commit_write(
                ino,
                size=size,
                mtime_ns=mtime_ns,
                blocks=refs,
                inline=inline,
                chunk_exists=exists,
                replicas=r,
            )
            return self._setattr(ino, attrs) if attrs else attr

        return await self._m(run)

    def clustered(self) -> bool:
        """True once the layout names any node besides this one."""
        wire = self._layout_wire
        return wire is not None and any(n["node_id"] != self.cfg.node_id for n in wire["nodes"])

    async def _chunk_exists_for(self, refs: list[BlockRef]) -> Callable[[bytes], bool]:
        """The "is this chunk stored?" test a commit uses for chunks it references anew.

        Alone, the local store answers inside the metadata thread (GC runs there too).
        In a cluster the chunk may be on other nodes: ask them first, then refuse any
        chunk whose deletion finished after the question was asked (see DeletionLog).
        """
        if not self.clustered() or self.chunkio is None:
            return self.chunks.exists
        asked_at = time.monotonic()
        ids = list({r.chunk_id for r in refs if r.chunk_id})
        local = set(await self._c(lambda: [c for c in ids if self.chunks.exists(c)]))
        remote = [c for c in ids if c not in local]
        present = local | (await self.chunkio.has_any(remote) if remote else set())
        deletions = self.deletions

        def exists(chunk_id: bytes) -> bool:
            return chunk_id in present and not deletions.refuses(chunk_id, asked_at)

        return exists

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

    async def s3_authenticate(
        self, request: list[Any], vhost_bucket: str | None, region: str, max_skew_s: float
    ) -> dict[str, Any]:
        """Verify an S3 request signed with a key made by `dfs s3 key create`, for a secondary's S3
        endpoint (the keys live in metadata, here).  The secret never leaves this node: the answer
        is who signed and, for SigV4, the signing key derived for that day, region and service,
        which the secondary needs to verify a streaming body's chunk signatures."""
        try:
            method, path, query, headers = request
            view = sigv4.RequestView(
                str(method), str(path), str(query), {str(k): str(v) for k, v in headers.items()}
            )
            assert self._reader is not None
            ctx = sigv4.authenticate(
                view,
                self._reader.s3_key_get,
                now_s=time.time(),
                region=str(region),
                max_skew_s=float(max_skew_s),
                vhost_bucket=vhost_bucket,
            )
        except S3Error as exc:
            return {"error": [exc.s3_code, exc.message, exc.status, dict(exc.extra)]}
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidArgument(f"s3.authenticate: malformed request: {exc}") from None
        return {"auth": dataclasses.asdict(ctx)}

    async def s3_authenticate_remote(
        self, view: sigv4.RequestView, vhost_bucket: str | None
    ) -> sigv4.AuthContext:
        """A secondary's S3 endpoint asks the primary to verify a key it does not hold."""
        assert self.primary is not None
        answer = await endpoints.S3_AUTHENTICATE.call(
            self.primary,
            [view.method, view.path, view.query, dict(view.headers)],
            vhost_bucket,
            self.cfg.s3.region,
            self.cfg.s3.max_clock_skew_s,
        )
        if "error" in answer:
            code, message, status, extra = answer["error"]
            raise S3Error(str(code), str(message), int(status), **{str(k): str(v) for k, v in extra.items()})
        return sigv4.AuthContext(**answer["auth"])

    async def admin_forward(
        self, method: str, target: str, headers: list[list[str]], body: bytes, remote: str
    ) -> list[Any]:
        """Answer an admin API request a secondary forwarded (sys.admin_forward, on the primary)."""
        if self.admin_api is None:
            raise Unavailable("the metadata primary serves no admin API ([admin] enabled = false)")
        if not all(isinstance(h, list | tuple) and len(h) == 2 for h in headers):
            raise InvalidArgument("sys.admin_forward: headers must be [name, value] pairs")
        resp = await self.admin_api.forwarded(
            str(method), str(target), [(str(k), str(v)) for k, v in headers], bytes(body), str(remote)
        )
        assert isinstance(resp.body, bytes)  # admin answers are small JSON documents, never streamed
        return [resp.status, [list(h) for h in resp.headers], resp.body]

    async def forward_admin(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, remote: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """A secondary's admin API has the primary answer a request backed by metadata."""
        if self.primary is None:
            raise Unavailable("not connected to the metadata primary yet")
        status, rheaders, rbody = await endpoints.SYS_ADMIN_FORWARD.call(
            self.primary, method, target, [list(h) for h in headers], body, remote
        )
        return int(status), [(str(k), str(v)) for k, v in rheaders], bytes(rbody)

    async def s3_key_create(self, description: str = "") -> dict[str, str]:
        """A new S3 key pair; the secret is returned once and never logged."""
        if not isinstance(description, str) or len(description) > 256:
            raise InvalidArgument("key description must be a string of at most 256 characters")
        access_key, secret_key = new_s3_key()
        await self._m(self.meta.s3_key_put, access_key, secret_key, description)
        return {"access_key": access_key, "secret_key": secret_key, "description": description}

    def local_client(self) -> Client:
        """A filesystem client calling this service in-process (S3 shim, admin API)."""
        st = self.cfg.storage
        info = ClusterInfo(
            node_id=self.cfg.node_id,
            block_size=st.block_size,
            inline_max=st.inline_max,
            compression_level=st.compression_level,
            cluster_key=self.cluster_key,
            data_dir=str(self.data.resolve()),
            session_timeout_s=self.cfg.meta.session_timeout_s,
        )
        return Client(self.local_caller(), info, chunkio=self.chunkio)

    def local_caller(self) -> LocalCaller:
        return LocalCaller(self.handlers, self.local_inline_handlers())

    # -- chunks --------------------------------------------------------------
    async def chunk_put(self, chunk_id: bytes, blob: bytes) -> bool:
        return await self._c(self.chunks.put, chunk_id, blob)

    async def _read_verified(self, chunk_id: bytes) -> bytes:
        try:
            blob: bytes = await self._c(self.chunks.get, chunk_id)
        except CorruptChunk:
            # Never serve it again; fetch a good copy from another replica in the background.
            await self._c(self.chunks.quarantine, chunk_id)
            if self.repair is not None and self._nursery is not None:
                self._nursery.start_soon(self.repair.replace_corrupt, chunk_id)
            raise
        return blob

    async def chunk_get(self, chunk_id: bytes) -> bytes:
        blob = await self._read_verified(chunk_id)
        if self.hot is not None:
            self.hot.on_read(chunk_id, self._nursery)
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
        if self.hot is None:
            raise Unavailable("this node is not serving the cluster yet")
        self.hot.pins.pin(list(chunk_ids), float(ttl_s))

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

    # -- cluster ---------------------------------------------------------------
    async def layout_wire(self) -> dict[str, Any]:
        """The layout (cached for ``refresh_s``; a secondary asks the primary)."""
        now = time.monotonic()
        if self._layout_wire is None or now - self._layout_at >= self.cfg.cluster.refresh_s:
            if self._reader is not None:
                wire = self._reader.layout()
            elif self.primary is not None:
                wire = await endpoints.META_LAYOUT.call(self.primary)
            else:
                raise Unavailable("not connected to the metadata primary yet")
            self._layout_wire = wire
            self._layout_at = now
            self.layout_epoch = int(wire["epoch"])
        return self._layout_wire

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

    def advertised_rpc(self) -> str:
        return self.cfg.rpc.advertise or self.cfg.rpc.listen

    async def _view(self) -> ClusterView:
        raw = await self.cluster()
        previous = self.chunkio._view.table if self.chunkio is not None else None
        return await trio.to_thread.run_sync(view_from_wire, raw, self.cfg.node_id, previous)

    async def repair_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node_id": self.cfg.node_id, "layout_epoch": self.layout_epoch}
        if self.repair is not None:
            out.update(self.repair.status())
        if self.hot is not None:
            out.update(self.hot.status())
        return out

    async def repair_now(self) -> None:
        if self.repair is not None:
            self.repair.kick()

    async def replicas_of(self, chunk_ids: list[bytes]) -> list[int | None]:
        """Each chunk's R for repair: 0 = the default, None = unknown to metadata (leave it)."""
        if self._reader is not None:
            return self._reader.chunk_factors(chunk_ids)
        assert self.primary is not None
        return await endpoints.META_CHUNK_FACTORS.call(self.primary, chunk_ids)

    async def run_cluster(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect to the primary (secondaries), register in the layout, start replicated
        chunk I/O and repair; the controller runs on the primary."""
        cl = self.cfg.cluster
        ssl_context = client_context_for(self.cfg)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if not self.is_primary:
                self.primary = rpc.RpcClient(
                    rpc.parse_address(cl.meta, 7400),
                    nursery,
                    call_timeout_s=self.cfg.rpc.call_timeout_s,
                    max_frame_bytes=self.cfg.rpc.max_frame_bytes,
                    ssl_context=ssl_context,
                )
                if not self.cluster_key:
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
                )

            self.chunkio = ChunkIO(
                self.local_caller(),
                self.cfg.node_id,
                nursery,
                fetch_view=self._view,
                connect=connect,
                refresh_s=cl.refresh_s,
                peer_timeout_s=cl.peer_timeout_s,
            )
            self.chunkio.set_view(single_node_view(self.cfg.node_id))
            self.hot = HotChunks(
                self.cfg,
                self.chunks,
                self.chunkio,
                self.replicas_of,
                limiter=self._chunk_limiter,
                on_change=self._advertise_soon,
            )
            self.repair = Repair(
                self.cfg,
                self.chunks,
                self.hints,
                self.chunkio,
                self.replicas_of,
                limiter=self._chunk_limiter,
                pinned=self.hot.pins.pinned,
            )
            if self.is_primary:
                await self._register()
            nursery.start_soon(self._register_loop)
            nursery.start_soon(self.repair.run)
            if self.is_primary:
                nursery.start_soon(self._controller)
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
        key = bytes(raw["cluster_key"])
        if self.cluster_key and self.cluster_key != key:
            raise DfsError(
                f"{self.data / 'cluster.key'} differs from the primary's: this data directory belongs "
                "to another cluster"
            )
        if not self.cluster_key:
            _write_private_bytes(self.data / "cluster.key", key)
            self.cluster_key = key

    async def _register(self) -> bool:
        """Put this node in the layout (or refresh its address there); False if the primary is away."""
        if not self.cfg.cluster.auto_join and not self.is_primary:
            return True
        args = (self.cfg.node_id, self.cfg.node.zone, self.advertised_rpc())
        try:
            if self.is_primary:
                await self._m(self.meta.register_node, *args)
            else:
                assert self.primary is not None
                await endpoints.META_REGISTER_NODE.call(self.primary, *args)
            self._layout_at = -1e18
            await self.layout_wire()
        except DfsError as exc:
            log.warning("registering in the layout failed: %s", exc.message)
            return False
        except Exception:
            log.exception("registering in the layout failed")
            return False
        if self.chunkio is not None:
            self.chunkio.invalidate()
        return True

    async def _register_loop(self) -> None:
        # Until it works (the primary may start later), then now and then: a primary restored
        # from an old backup learns us again.
        delay = 0.2
        while True:
            if await self._register():
                delay = max(30.0, self.cfg.cluster.refresh_s)
            else:
                delay = min(delay * 2, 5.0)
            await trio.sleep(delay)

    async def _controller(self) -> None:
        """The primary marks nodes out once gossip has reported them dead past the grace period."""
        cl = self.cfg.cluster
        while True:
            await trio.sleep(min(cl.refresh_s, max(0.1, cl.dead_grace_s / 4)))
            if self.membership is None:
                continue
            try:
                layout = Layout.from_wire(await self.layout_wire())
                members = {m["node_id"]: m for m in self.membership.members()}
                for node_id in dead_past_grace(layout, members, cl.dead_grace_s):
                    await self._m(self.meta.set_node, node_id, state=NodeState.OUT.value)
                    self.marked_out += 1
                    log.warning(
                        "node %s dead for over %gs: marked out, its data is re-replicated",
                        node_id,
                        cl.dead_grace_s,
                    )
                    self._layout_at = -1e18
                    if self.repair is not None:
                        self.repair.kick()
            except DfsError as exc:
                log.warning("layout controller: %s", exc.message)
            except Exception:
                log.exception("layout controller failed")

    # -- system ----------------------------------------------------------------
    async def ping(self) -> str:
        return "pong"

    async def ns_changes(self, epoch: str, cursor: int, wait_s: float) -> dict[str, Any]:
        """Long poll: this daemon's namespace changes after ``cursor`` (see dfs/changes.py)."""
        if not isinstance(epoch, str) or isinstance(cursor, bool) or not isinstance(cursor, int):
            raise InvalidArgument("ns.changes: bad epoch or cursor")
        if not isinstance(wait_s, int | float) or isinstance(wait_s, bool):
            raise InvalidArgument("ns.changes: bad wait_s")
        return await self.changes.poll(rpc.current_connection(), epoch, cursor, float(wait_s))

    async def info(self) -> dict[str, Any]:
        st = self.cfg.storage
        return {
            "node_id": self.cfg.node_id,
            "version": __version__,
            "block_size": st.block_size,
            "inline_max": st.inline_max,
            "compression_level": st.compression_level,
            "cluster_key": self.cluster_key,
            # Mounts heartbeat well within the daemon's lease, whatever their own config says.
            "session_timeout_s": self.cfg.meta.session_timeout_s,
            # Lets a client on this host read chunk files directly (short-circuit reads).
            "data_dir": str(self.data.resolve()),
        }

    async def statfs(self) -> StatFs:
        cs = await self._c(self.chunks.stats)
        total, free, avail = cs["total_bytes"], cs["free_bytes"], cs["avail_bytes"]
        if self.clustered() and self.membership is not None:
            # Raw capacity of the cluster's live members (as gossip last reported it).
            live = [m for m in self.membership.members() if m["status"] in ("alive", "suspect")]
            total = sum(int(m.get("capacity_bytes", 0)) for m in live) or total
            avail = free = sum(int(m.get("free_bytes", 0)) for m in live) or avail
        counts = await self._m(self.meta.counts)
        inodes = counts["inodes"]
        # Each inode costs roughly one metadata row; estimate free inodes from free space.
        files_free = max(0, avail // 512)
        return StatFs(4096, total, free, avail, inodes + files_free, files_free)

    async def status(self) -> dict[str, Any]:
        cs = await self._c(self.chunks.stats)
        if self._store is not None:
            counts = await self._m(self._store.counts)
        else:
            try:
                assert self.primary is not None
                counts = await endpoints.META_COUNTS.call(self.primary)
            except DfsError:
                counts = {}
        return {
            "node_id": self.cfg.node_id,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "data_dir": str(self.data),
            "health": "ok",
            "role": "primary" if self.is_primary else "secondary",
            "layout_epoch": self.layout_epoch,
            "capacity": cs,
            "namespace": counts,
        }

    async def scrub_list(self) -> list[bytes]:
        """Every stored chunk id, sorted: the CLI scrubs them in batches for a progress bar."""
        return sorted(await self._c(lambda: list(self.chunks.iter_ids())))

    async def scrub_batch(self, chunk_ids: list[bytes]) -> list[bytes]:
        if len(chunk_ids) > 4 * _FSCK_BATCH:
            raise InvalidArgument("scrub batch too large")
        return await self._c(self.chunks.scrub, chunk_ids)

    async def fsck_meta(self, repair: bool) -> dict[str, Any]:
        if self.clustered():
            return await self._fsck_cluster(repair)
        problems: list[str] = await self._m(self.meta.fsck, self.chunks.exists, repair=repair)
        refs: dict[bytes, int] = await self._m(self.meta.referenced_chunks)
        stored = await self._c(lambda: list(self.chunks.iter_ids()))
        orphans = [cid for cid in stored if cid not in refs]
        if orphans:
            problems.append(f"{len(orphans)} stored chunk(s) referenced by no metadata (orphans)")
            if repair:
                await self._m(self._delete_orphans, orphans)
        return {"problems": problems, "chunks_stored": len(stored), "orphans": len(orphans)}

    async def _inventories(self) -> tuple[dict[str, set[bytes]], list[str]]:
        """Every reachable layout node's chunk ids, and the nodes that could not be asked."""
        assert self.chunkio is not None
        view = await self._view()
        self.chunkio.set_view(view)
        found: dict[str, set[bytes]] = {}
        missed: list[str] = []

        async def ask(node_id: str) -> None:
            assert self.chunkio is not None
            try:
                found[node_id] = set(
                    await self.chunkio.call_node(node_id, endpoints.SYS_SCRUB_LIST, view=view)
                )
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
        problems: list[str] = await self._m(self.meta.fsck, present.__contains__, repair=repair)
        problems += [f"node {n} could not be checked (unreachable)" for n in missed]
        refs: dict[bytes, int] = await self._m(self.meta.referenced_chunks)
        live = [cid for cid, n in refs.items() if n > 0]
        wanted = await self.replicas_of(live) if live else []
        assert self.chunkio is not None
        view = await self.chunkio.view()
        under = 0
        for cid, r in zip(live, wanted, strict=True):
            copies = sum(1 for ids in inventories.values() if cid in ids)
            if copies < view.replica_count(r or self.cfg.cluster.replicas):
                under += 1
        if under:
            problems.append(f"{under} chunk(s) have fewer copies than their replication factor")
        orphans = {node: [c for c in ids if c not in refs] for node, ids in inventories.items()}
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

    def _claim(self, chunk_ids: list[bytes], finish_in_s: float | None) -> list[bytes]:
        """Metadata thread: the ids no metadata knows, entered in the deletion log as deleting."""
        unknown = self.meta.unknown_chunks(chunk_ids)
        self.deletions.started(unknown, finish_in_s=finish_in_s)
        return unknown

    async def claim_orphans(self, chunk_ids: list[bytes]) -> list[bytes]:
        """For a secondary's orphan sweep: which of its old unknown chunks it may delete now.
        It must delete them within ``_CLAIM_WINDOW_S`` (or not at all)."""
        if len(chunk_ids) > 4096:
            raise InvalidArgument("claim_orphans: at most 4096 ids at once")
        return await self._m(self._claim, list(chunk_ids), _CLAIM_WINDOW_S)

    async def _delete_everywhere(self, chunk_ids: list[bytes], nodes: list[str] | None = None) -> None:
        """Delete copies on ``nodes`` (default: every reachable layout node), then mark the
        deletions finished.  A node that misses it deletes its copy in its orphan sweep."""
        try:
            if not chunk_ids or self.chunkio is None:
                return
            view = await self.chunkio.view()
            targets = nodes or [n.node_id for n in view.layout.nodes if not view.is_down(n.node_id)]

            async def one(node_id: str) -> None:
                assert self.chunkio is not None
                try:
                    await self.chunkio.call_node(node_id, endpoints.CHUNK_DELETE, chunk_ids, view=view)
                except DfsError as exc:
                    log.info("deleting %d chunk(s) on %s: %s", len(chunk_ids), node_id, exc.message)

            async with trio.open_nursery() as nursery:
                for node_id in targets:
                    nursery.start_soon(one, node_id)
        finally:
            self.deletions.finished(chunk_ids)

    def _delete_orphans(self, orphans: list[bytes]) -> None:
        # Runs in the metadata thread: a chunk referenced meanwhile is kept.
        refs = self.meta.referenced_chunks()
        doomed = [cid for cid in orphans if cid not in refs]
        self.deletions.started(doomed)
        self.chunks.delete(doomed)
        self.deletions.finished(doomed)

    async def gc_now(self, delay_s: float | None = None) -> int:
        delay = self.cfg.storage.gc_delay_s if delay_s is None else float(delay_s)
        cutoff = time.time_ns() - int(delay * 1e9)
        total = 0

        def delete(ids: list[bytes]) -> None:
            self.deletions.started(ids)
            self.chunks.delete(ids)

        while True:
            ids = await self._m(self.meta.gc_collect, cutoff, 1000, delete)
            total += len(ids)
            if self.clustered():
                await self._delete_everywhere(ids)
            else:
                self.deletions.finished(ids)
            if len(ids) < 1000:
                self.deletions.trim()
                return total

    # -- background work ------------------------------------------------------
    async def run_background(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.is_primary:
                nursery.start_soon(self.every, self.cfg.storage.gc_interval_s, self.gc_now, "gc")
                nursery.start_soon(self.every, 30.0, self._expire_sessions, "session expiry")
                nursery.start_soon(self.every, 600.0, self._trim_oplog, "oplog trim")
            st = self.cfg.storage
            nursery.start_soon(self.every, st.orphan_scan_interval_s, self.sweep_orphans, "orphan sweep")

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
        candidates = await self._c(self.chunks.old_ids, delay)
        removed = 0
        for i in range(0, len(candidates), 1000):
            batch = candidates[i : i + 1000]
            if self._store is not None:
                removed += await self._m(self._delete_unknown, batch)
                continue
            assert self.primary is not None
            asked_at = time.monotonic()
            doomed = await endpoints.META_CLAIM_ORPHANS.call(self.primary, batch)
            if time.monotonic() - asked_at < _CLAIM_WINDOW_S / 2:
                removed += await self._c(self.chunks.delete, doomed)
        if removed:
            log.info("orphan sweep removed %d chunk(s) no metadata referenced", removed)
        return removed

    def _delete_unknown(self, chunk_ids: list[bytes]) -> int:
        unknown = self._claim(chunk_ids, None)
        self.chunks.delete(unknown)
        self.deletions.finished(unknown)
        return len(unknown)

    def observe_s3(self, operation: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        """Per-request figures from the S3 shim (dfsd points this at its metrics registry)."""

    def set_meta_observer(self, observe: Callable[[str, float], None]) -> None:
        """Report each metadata transaction's (operation, seconds), from the metadata thread."""
        self._meta.observe = observe

    async def every(self, interval_s: float, fn: Callable[[], Awaitable[Any]], what: str) -> None:
        while True:
            await trio.sleep(interval_s)
            try:
                await fn()
            except DfsError as exc:
                log.warning("%s failed: %s", what, exc.message)
            except Exception:
                log.exception("%s failed", what)

    async def _expire_sessions(self) -> None:
        cutoff = time.time_ns() - int(self.cfg.meta.session_timeout_s * 1e9)
        n = await self._m(self.meta.expire_sessions, cutoff)
        if n:
            log.info("expired %d client session(s)", n)

    async def _trim_oplog(self) -> None:
        await self._m(self.meta.oplog_trim, self.cfg.meta.oplog_keep)
