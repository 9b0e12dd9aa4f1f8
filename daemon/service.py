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
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from daemon.admin import load_or_create_token
from daemon.chunks import ChunkStore
from daemon.membership import Membership
from daemon.metadata import MetaStore
from dfs import __version__
from dfs.client import Client, ClusterInfo
from dfs.config import Config
from dfs.errors import DfsError, InvalidArgument, UnknownMethod
from dfs.meta import Attr, BlockRef, FileMap, StatFs

log = logging.getLogger("dfs.daemon")
T = TypeVar("T")
Handler = Callable[..., Awaitable[Any]]

_FSCK_BATCH = 256


def _load_or_create_secret(path: Path) -> bytes:
    """The cluster key that keys chunk ids; created once, mode 0600."""
    try:
        data = path.read_bytes()
        if len(data) == 32:
            return data
        raise DfsError(f"{path} is corrupt: expected 32 bytes, found {len(data)}")
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return key


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


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


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
    """Owns the stores and exposes them as RPC handlers."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data = cfg.data_path
        self.data.mkdir(parents=True, exist_ok=True)
        self.cluster_key = _load_or_create_secret(self.data / "cluster.key")
        self.meta = MetaStore(
            self.data / "meta.db",
            inline_max=cfg.storage.inline_max,
            block_size=cfg.storage.block_size,
        )
        self.chunks = ChunkStore(self.data, fsync=cfg.storage.fsync, reserve_bytes=cfg.storage.reserve_bytes)
        self.reads = self.meta.reader()
        self._meta = MetaWorker()
        self._chunk_limiter = trio.CapacityLimiter(8)
        self.started_at = time.time()
        # Made before the daemon reports ready, so `dfs up` can show them.
        self.s3_root_key = load_or_create_root_key(cfg.s3_root_path) if cfg.s3.enabled else None
        self.admin_token = load_or_create_token(cfg.admin_token_path) if cfg.admin.enabled else None
        # The gossip runner, once dfsd starts it (None: gossip disabled, or not started yet).
        self.membership: Membership | None = None
        self.handlers: dict[str, Handler] = self._handlers()

    def close(self) -> None:
        self._meta.stop()
        self.reads.close()
        self.meta.close()

    # -- thread helpers -------------------------------------------------
    async def _m(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._meta.run(partial(fn, *args, **kwargs))

    async def _c(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self._chunk_limiter)

    # -- handler table ----------------------------------------------------
    def _handlers(self) -> dict[str, Handler]:
        m = self.meta
        simple: dict[str, Callable[..., Any]] = {
            "open_events": m.open_events,
            "end_session": m.end_session,
            "session_heartbeat": m.session_heartbeat,
            "setxattr": m.setxattr,
            "removexattr": m.removexattr,
            "sync": m.sync,
            "make_dirs": self._make_dirs,
            "remove_tree": m.remove_tree,
            "remove_empty_parents": m.remove_empty_parents,
            "create_volume": self._create_volume,
            "update_volume": m.update_volume,
            "delete_volume": self._delete_volume,
            "snapshot": self._snapshot,
        }
        table: dict[str, Handler] = {f"meta.{name}": self._meta_call(fn) for name, fn in simple.items()}
        table.update(
            {
                "meta.mknod": self._stamped(m.mknod, 0),
                "meta.mkdir": self._stamped(m.mkdir, 0),
                "meta.symlink": self._stamped(m.symlink, 0),
                "meta.create": self._stamped(m.create, 0),
                "meta.link": self._stamped(m.link, 1),
                "meta.unlink": self._stamped(m.unlink, 0),
                "meta.rmdir": self._stamped(m.rmdir, 0),
                "meta.rename": self._stamped(m.rename, 0, 2),
                "meta.setattr": self._stamped(self._setattr, 0),
                "meta.open": self.open,
                "meta.commit_write": self.commit_write,
                "meta.put_object": self.put_object,
                "chunk.put": self.chunk_put,
                "chunk.get": self.chunk_get,
                "chunk.has": self.chunk_has,
                "sys.info": self.info,
                "sys.ping": self.ping,
                "sys.statfs": self.statfs,
                "sys.status": self.status,
                "sys.scrub_list": self.scrub_list,
                "sys.scrub_batch": self.scrub_batch,
                "sys.fsck_meta": self.fsck_meta,
                "sys.gc": self.gc_now,
                "sys.sweep_orphans": self.sweep_orphans,
                "sys.members": self.members,
                "s3.key_create": self.s3_key_create,
                "s3.key_list": self._meta_call(m.s3_key_list),
                "s3.key_revoke": self._meta_call(m.s3_key_delete),
            }
        )
        return table

    def inline_handlers(self) -> dict[str, Callable[..., Any]]:
        """Read-only calls answered by the RPC reader itself (see the module docstring)."""
        r = self.reads
        return {
            f"meta.{fn.__name__}": fn
            for fn in (
                r.lookup,
                r.lookup_versioned,
                r.getattr,
                r.readlink,
                r.readdir,
                r.read_map,
                r.getxattr,
                r.listxattr,
                r.resolve,
                r.list_dir,
                r.internal_dir,
                r.get_volume,
                r.list_volumes,
            )
        }

    def local_inline_handlers(self) -> dict[str, Callable[..., Any]]:
        """Reads only in-process callers (the S3 shim, the admin API) may make: never over RPC."""
        return {**self.inline_handlers(), "meta.s3_key_get": self.reads.s3_key_get}

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

        async def call(*args: Any) -> Any:
            return await self._m(run, *args)

        return call

    def _meta_call(self, fn: Callable[..., Any]) -> Handler:
        async def call(*args: Any) -> Any:
            return await self._m(fn, *args)

        call.__name__ = getattr(fn, "__name__", "meta_call")
        return call

    # -- metadata calls needing argument shaping --------------------------
    def _setattr(self, ino: int, changes: dict[str, Any]) -> Attr:
        allowed = {"mode", "uid", "gid", "size", "atime_ns", "mtime_ns"}
        if not isinstance(changes, dict) or set(changes) - allowed:
            raise InvalidArgument(f"setattr: bad fields {changes!r:.100}")
        return self.meta.setattr(ino, **changes)

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
        }
        if not isinstance(opts, dict) or set(opts) - allowed:
            raise InvalidArgument(f"put_object: bad options {opts!r:.100}")
        refs = [BlockRef.from_wire(b) for b in opts.get("blocks") or []]
        if_match = opts.get("if_match")

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
                chunk_exists=self.chunks.exists,
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
    ) -> Any:
        """Commit a file's new blocks; ``attrs`` are setattr changes the mount held
        back while it wrote the file, applied right after (same metadata-thread call)."""
        refs = [BlockRef.from_wire(b) for b in blocks]

        def run() -> Attr:
            attr = self.meta.commit_write(
                ino, size=size, mtime_ns=mtime_ns, blocks=refs, inline=inline, chunk_exists=self.chunks.exists
            )
            return self._setattr(ino, attrs) if attrs else attr

        return await self._m(run)

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
        return Client(LocalCaller(self.handlers, self.local_inline_handlers()), info)

    # -- chunks --------------------------------------------------------------
    async def chunk_put(self, chunk_id: bytes, blob: bytes) -> bool:
        return await self._c(self.chunks.put, chunk_id, blob)

    async def chunk_get(self, chunk_id: bytes) -> bytes:
        return await self._c(self.chunks.get, chunk_id)

    async def chunk_has(self, chunk_ids: list[bytes]) -> list[bool]:
        return await self._c(self.chunks.has, chunk_ids)

    # -- system ----------------------------------------------------------------
    async def ping(self) -> str:
        return "pong"

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
        counts = await self._m(self.meta.counts)
        inodes = counts["inodes"]
        # Each inode costs roughly one metadata row; estimate free inodes from free space.
        files_free = max(0, cs["avail_bytes"] // 512)
        return StatFs(
            4096, cs["total_bytes"], cs["free_bytes"], cs["avail_bytes"], inodes + files_free, files_free
        )

    async def status(self) -> dict[str, Any]:
        cs = await self._c(self.chunks.stats)
        counts = await self._m(self.meta.counts)
        return {
            "node_id": self.cfg.node_id,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "data_dir": str(self.data),
            "health": "ok",
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
        problems: list[str] = await self._m(self.meta.fsck, self.chunks.exists, repair=repair)
        refs: dict[bytes, int] = await self._m(self.meta.referenced_chunks)
        stored = await self._c(lambda: list(self.chunks.iter_ids()))
        orphans = [cid for cid in stored if cid not in refs]
        if orphans:
            problems.append(f"{len(orphans)} stored chunk(s) referenced by no metadata (orphans)")
            if repair:
                await self._m(self._delete_orphans, orphans)
        return {"problems": problems, "chunks_stored": len(stored), "orphans": len(orphans)}

    def _delete_orphans(self, orphans: list[bytes]) -> None:
        # Runs in the metadata thread: a chunk referenced meanwhile is kept.
        refs = self.meta.referenced_chunks()
        self.chunks.delete([cid for cid in orphans if cid not in refs])

    async def gc_now(self, delay_s: float | None = None) -> int:
        delay = self.cfg.storage.gc_delay_s if delay_s is None else float(delay_s)
        cutoff = time.time_ns() - int(delay * 1e9)
        total = 0
        while True:
            ids = await self._m(self.meta.gc_collect, cutoff, 1000, self.chunks.delete)
            total += len(ids)
            if len(ids) < 1000:
                return total

    # -- background work ------------------------------------------------------
    async def run_background(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.every, self.cfg.storage.gc_interval_s, self.gc_now, "gc")
            nursery.start_soon(self.every, 30.0, self._expire_sessions, "session expiry")
            nursery.start_soon(self.every, 600.0, self._trim_oplog, "oplog trim")
            st = self.cfg.storage
            nursery.start_soon(self.every, st.orphan_scan_interval_s, self.sweep_orphans, "orphan sweep")

    async def sweep_orphans(self, older_than_s: float | None = None) -> int:
        """Delete stored chunks no metadata knows that were left untouched for ``orphan_delay_s``.

        Such chunks come from writes that never committed (a failed S3 upload,
        a client or daemon crash between storing blocks and committing them).
        The check and the delete run together in the metadata thread, like every
        incref, so a chunk cannot gain a reference in between.
        """
        delay = self.cfg.storage.orphan_delay_s if older_than_s is None else older_than_s
        candidates = await self._c(self.chunks.old_ids, delay)
        removed = 0
        for i in range(0, len(candidates), 1000):
            removed += await self._m(self._delete_unknown, candidates[i : i + 1000])
        if removed:
            log.info("orphan sweep removed %d chunk(s) no metadata referenced", removed)
        return removed

    def _delete_unknown(self, chunk_ids: list[bytes]) -> int:
        unknown = self.meta.unknown_chunks(chunk_ids)
        self.chunks.delete(unknown)
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
