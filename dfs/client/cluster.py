"""The cluster client: typed metadata calls and block reads/writes.

Used by the mount, the CLI and (later) the S3 shim.  Block writes hash and
encode in worker threads (never on the event loop), skip chunks the store
already holds (dedup), and return a :class:`BlockRef` for the caller to
commit; a block is only referenced by metadata after it is durable.

Short-circuit reads: when the daemon's chunk directory is on this host and
readable (proven by reading the same cluster key the daemon reported), chunks
are read straight from their files, like HDFS short-circuit local reads; the
blob is verified and decoded exactly as one fetched over RPC.  Any local
failure falls back to the daemon, which then also counts and logs a corrupt
copy.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import trio

from dfs.client.chunks import PROBE_MIN_BYTES, ChunkIO
from dfs.core import codec, endpoints, wire
from dfs.core.auth import Credential
from dfs.core.changes import Answer
from dfs.core.endpoints import Caller
from dfs.core.errors import CorruptChunk, DfsError, PermissionDenied, Unavailable
from dfs.core.keys import KeyRing, VolumeCodec
from dfs.core.namespace import Attr, BlockRef, DirEntry, FileMap, StatFs
from dfs.core.replicas import ClusterView, Policy, view_from_wire
from dfs.net import rpc

DEFAULT_PORT = 7400
# How old the volumes' codecs and keys (keys.volumes) may be before a write asks again: a
# volume policy change reaches writers within this.  Asked at most that often, never per file.
RING_REFRESH_S = 2.0
# A write to a top-level directory the ring does not know (a volume made since) asks again
# after this; a read of a chunk under an unknown key id too.
RING_MISS_S = 0.25
log = logging.getLogger("dfs.client")
# Directory -> volume answers kept (cleared with every ring refresh: a rename may move them).
_DIR_VOLUMES_MAX = 4096


class ClusterInfo(NamedTuple):
    node_id: str
    block_size: int
    inline_max: int
    compression_level: int
    cluster_key: bytes
    data_dir: str
    session_timeout_s: float


class DirStamp(NamedTuple):
    """A directory changed by a call: its ctime just before, its attributes just after."""

    ino: int
    ctime_before_ns: int
    after: Attr

    @property
    def ctime_after_ns(self) -> int:
        return self.after.ctime_ns


class Client:
    """Metadata calls go to ``conn`` (the client's own daemon, which forwards them to the
    metadata primary); chunks go to their replicas through ``chunkio`` (without one, to
    ``conn`` alone: a single daemon)."""

    def __init__(
        self,
        conn: Caller,
        info: ClusterInfo,
        *,
        codec_threads: int = 4,
        local_reads: bool = True,
        chunkio: ChunkIO | None = None,
    ) -> None:
        self.rpc = conn
        self.info = info
        self.block_size = info.block_size
        self.inline_max = info.inline_max
        self._codec_limiter = trio.CapacityLimiter(codec_threads)
        self.local_chunks = _local_chunk_dir(info) if local_reads else None
        self.chunkio = chunkio
        # The volumes' codecs and data keys (dfs/core/keys.py), asked of the primary lazily.
        self._ring: KeyRing | None = None
        self._ring_at = -1e18
        self._ring_lock = trio.Lock()
        self._dir_volumes: dict[int, int | None] = {}
        self._ring_misses: set[int] = set()

    async def call(self, method: str, *args: Any) -> Any:
        return await self.rpc.call(method, *args)

    # -- namespace ------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> Attr:
        return Attr.from_wire(await endpoints.META_LOOKUP.call(self.rpc, parent, name))

    async def lookup_versioned(self, parent: int, name: bytes) -> tuple[Attr | None, int]:
        """The entry (None when absent) and the directory's ctime, from one snapshot."""
        attr, ctime_ns = await endpoints.META_LOOKUP_VERSIONED.call(self.rpc, parent, name)
        return (None if attr is None else Attr.from_wire(attr)), ctime_ns

    async def getattr(self, ino: int) -> Attr:
        return Attr.from_wire(await endpoints.META_GETATTR.call(self.rpc, ino))

    async def setattr(self, ino: int, **changes: int) -> tuple[Attr, list[DirStamp]]:
        """Change attributes; a directory's own change comes back as a DirStamp too."""
        return await self._new(endpoints.META_SETATTR, ino, changes)

    async def readlink(self, ino: int) -> bytes:
        value = await endpoints.META_READLINK.call(self.rpc, ino)
        assert isinstance(value, bytes)
        return value

    async def readdir(self, ino: int, cookie: int, limit: int) -> list[DirEntry]:
        return [
            DirEntry.from_wire(e) for e in await endpoints.META_READDIR.call(self.rpc, ino, cookie, limit)
        ]

    async def _stamped(
        self, endpoint: endpoints.Endpoint[Sequence[Any]], *args: Any
    ) -> tuple[Any, list[DirStamp]]:
        assert endpoint.stamps, f"{endpoint.name} answers no DirStamps"
        result, stamps = await endpoint.call(self.rpc, *args)
        return result, [DirStamp(ino, before, Attr.from_wire(after)) for ino, before, after in stamps]

    async def _new(
        self, endpoint: endpoints.Endpoint[Sequence[Any]], *args: Any
    ) -> tuple[Attr, list[DirStamp]]:
        attr, stamps = await self._stamped(endpoint, *args)
        return Attr.from_wire(attr), stamps

    # Calls that change directories also return DirStamps (see DirStamp).
    async def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> tuple[Attr, list[DirStamp]]:
        return await self._new(endpoints.META_MKNOD, parent, name, mode, rdev, uid, gid)

    async def mkdir(
        self, parent: int, name: bytes, mode: int, uid: int, gid: int
    ) -> tuple[Attr, list[DirStamp]]:
        return await self._new(endpoints.META_MKDIR, parent, name, mode, uid, gid)

    async def symlink(
        self, parent: int, name: bytes, target: bytes, uid: int, gid: int
    ) -> tuple[Attr, list[DirStamp]]:
        return await self._new(endpoints.META_SYMLINK, parent, name, target, uid, gid)

    async def create(
        self, parent: int, name: bytes, mode: int, uid: int, gid: int, session: str
    ) -> tuple[Attr, list[DirStamp]]:
        """Create and open a regular file for ``session``."""
        return await self._new(endpoints.META_CREATE, parent, name, mode, uid, gid, session)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> tuple[Attr, list[DirStamp]]:
        return await self._new(endpoints.META_LINK, ino, new_parent, new_name)

    async def unlink(self, parent: int, name: bytes) -> list[DirStamp]:
        return (await self._stamped(endpoints.META_UNLINK, parent, name))[1]

    async def rmdir(self, parent: int, name: bytes) -> list[DirStamp]:
        return (await self._stamped(endpoints.META_RMDIR, parent, name))[1]

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> list[DirStamp]:
        return (await self._stamped(endpoints.META_RENAME, parent, name, new_parent, new_name, flags))[1]

    async def open(self, ino: int, session: str, *, truncate: bool, read: bool) -> FileMap:
        """Register an open by ``session``; returns fresh attributes and the block map."""
        return FileMap.from_wire(await endpoints.META_OPEN.call(self.rpc, ino, session, truncate, read))

    async def open_events(self, events: list[tuple[str, int]], session: str) -> None:
        """Batched ``("open"|"release", ino)`` registrations, applied in order."""
        await endpoints.META_OPEN_EVENTS.call(self.rpc, [list(e) for e in events], session)

    async def end_session(self, session: str) -> None:
        await endpoints.META_END_SESSION.call(self.rpc, session)

    async def session_heartbeat(self, session: str) -> None:
        await endpoints.META_SESSION_HEARTBEAT.call(self.rpc, session)

    async def read_map(self, ino: int) -> FileMap:
        return FileMap.from_wire(await endpoints.META_READ_MAP.call(self.rpc, ino))

    async def commit_write(
        self,
        ino: int,
        *,
        size: int,
        mtime_ns: int,
        blocks: list[BlockRef],
        inline: bytes | None,
        attrs: dict[str, int] | None = None,
        replicas: int | None = None,
    ) -> Attr:
        """Commit new blocks (or inline bytes), then apply held-back setattr ``attrs``.

        ``replicas``: the R the blocks were written with, so repair keeps that many copies."""
        wire_blocks = [list(b) for b in blocks]
        args: list[Any] = [ino, size, mtime_ns, wire_blocks, inline, attrs or None]
        if replicas is not None:
            args.append(replicas)
        return Attr.from_wire(await endpoints.META_COMMIT_WRITE.call(self.rpc, *args))

    async def clustered(self) -> bool:
        """True when chunks have more than one node to go to (so a policy makes a difference)."""
        return self.chunkio is not None and len((await self.chunkio.view()).table.eligible) > 1

    async def write_policy(self, ino: int, parent: int | None = None) -> Policy | None:
        """:meth:`policy` when there is a choice to make: None while the cluster has one node."""
        return await self.policy(ino, parent) if await self.clustered() else None

    async def policy(self, ino: int, parent: int | None = None) -> Policy:
        """The replication factor and consistency level that apply to writes under ``ino``
        (``parent``: a directory a file was reached through; finding one otherwise is slow)."""
        found = await endpoints.META_POLICY.call(self.rpc, ino, parent)
        default = (await self.chunkio.view()).default_policy if self.chunkio else Policy(1, "strong")
        return Policy(
            found.get("replicas") or default.replicas, found.get("consistency") or default.consistency
        )

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        value = await endpoints.META_GETXATTR.call(self.rpc, ino, name)
        assert isinstance(value, bytes)
        return value

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int) -> None:
        await endpoints.META_SETXATTR.call(self.rpc, ino, name, value, flags)

    async def listxattr(self, ino: int) -> list[bytes]:
        return list(await endpoints.META_LISTXATTR.call(self.rpc, ino))

    async def removexattr(self, ino: int, name: bytes) -> None:
        await endpoints.META_REMOVEXATTR.call(self.rpc, ino, name)

    async def sync(self) -> None:
        await endpoints.META_SYNC.call(self.rpc)

    # -- object-store calls (the S3 shim and the admin API) ---------------------
    async def resolve(self, parent: int, names: list[bytes]) -> Attr:
        """The inode at ``parent/names...``: NotFound or NotADirectory on the way."""
        return Attr.from_wire(await endpoints.META_RESOLVE.call(self.rpc, parent, names))

    async def list_dir(self, ino: int, after: bytes, limit: int) -> list[DirEntry]:
        """Entries in S3 key order (directories sort as ``name/``), strictly after ``after``."""
        return [
            DirEntry.from_wire(e) for e in await endpoints.META_LIST_DIR.call(self.rpc, ino, after, limit)
        ]

    async def internal_dir(self, name: str) -> int:
        ino = await endpoints.META_INTERNAL_DIR.call(self.rpc, name)
        assert isinstance(ino, int)
        return ino

    async def put_object(
        self,
        parent: int,
        dirs: list[bytes],
        name: bytes,
        *,
        size: int,
        mtime_ns: int,
        blocks: list[BlockRef],
        inline: bytes | None,
        xattrs: dict[bytes, bytes],
        if_none_match: bool = False,
        if_match: tuple[bytes, bytes] | None = None,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        replicas: int | None = None,
    ) -> Attr:
        """Create ``parent/dirs.../name`` with this content and xattrs, replacing a file, atomically."""
        opts: dict[str, Any] = {
            "size": size,
            "mtime_ns": mtime_ns,
            "blocks": [list(b) for b in blocks],
            "inline": inline,
            "xattrs": xattrs,
            "if_none_match": if_none_match,
            "if_match": list(if_match) if if_match else None,
            "mode": mode,
            "uid": uid,
            "gid": gid,
        }
        if replicas is not None:
            opts["replicas"] = replicas
        return Attr.from_wire(await endpoints.META_PUT_OBJECT.call(self.rpc, parent, dirs, name, opts))

    async def make_dirs(self, parent: int, dirs: list[bytes], *, mode: int = 0o755) -> Attr:
        return Attr.from_wire(await endpoints.META_MAKE_DIRS.call(self.rpc, parent, dirs, mode))

    async def remove_tree(self, parent: int, name: bytes) -> int:
        n = await endpoints.META_REMOVE_TREE.call(self.rpc, parent, name)
        assert isinstance(n, int)
        return n

    async def remove_empty_parents(self, parent: int, dirs: list[bytes]) -> int:
        n = await endpoints.META_REMOVE_EMPTY_PARENTS.call(self.rpc, parent, dirs)
        assert isinstance(n, int)
        return n

    async def statfs(self) -> StatFs:
        return StatFs(*await endpoints.SYS_STATFS.call(self.rpc))

    async def changes(self, epoch: str, cursor: int, wait_s: float) -> Answer:
        """Long poll (dfs/core/changes.py): what others changed through this client's daemon after
        ``cursor``, waiting up to ``wait_s`` for something to; acknowledges all up to ``cursor``."""
        return Answer.from_wire(await endpoints.NS_CHANGES.call(self.rpc, epoch, cursor, wait_s))

    # -- volume codecs and keys ---------------------------------------------------
    async def keyring(self, max_age_s: float = RING_REFRESH_S) -> KeyRing:
        """The volumes' codecs and data keys, asked again when older than ``max_age_s``."""
        ring = self._ring
        if ring is not None and trio.current_time() - self._ring_at < max_age_s:
            return ring
        async with self._ring_lock:
            if self._ring is not None and trio.current_time() - self._ring_at < max_age_s:
                return self._ring
            try:
                raw = await endpoints.KEYS_VOLUMES.call(self.rpc)
            except DfsError:
                if self._ring is None:
                    raise
                return self._ring  # keep writing with what we know; asked again next time
            self._ring = KeyRing.from_wire(raw)
            self._ring_at = trio.current_time()
            self._dir_volumes.clear()
            self._ring_misses.clear()
            return self._ring

    async def volume_codec(self, volume: int | None) -> VolumeCodec:
        """How new chunks of files under top-level directory ``volume`` are encoded."""
        ring = await self.keyring()
        if volume is not None and volume not in ring.codecs and volume not in self._ring_misses:
            ring = await self.keyring(RING_MISS_S)  # a volume made since we last asked?
            if volume not in ring.codecs:
                # A plain top-level directory: not asked again before the next refresh.
                if len(self._ring_misses) >= _DIR_VOLUMES_MAX:
                    self._ring_misses.clear()
                self._ring_misses.add(volume)
        return ring.codec(volume)

    async def volume_of(self, ino: int, parent: int | None = None) -> int | None:
        """The top-level directory above ``ino`` (for a caller that cannot tell from its own
        cache); answers for a directory are kept until the next ring refresh."""
        if parent is not None and parent in self._dir_volumes:
            return self._dir_volumes[parent]
        volume = await endpoints.META_VOLUME_OF.call(self.rpc, ino, parent)
        if parent is not None:
            if len(self._dir_volumes) >= _DIR_VOLUMES_MAX:
                self._dir_volumes.clear()
            self._dir_volumes[parent] = volume
        return volume if volume is None else int(volume)

    async def _data_key(self, key_id: int) -> bytes:
        ring = await self.keyring()
        key = ring.key(key_id)
        if key is None:
            key = (await self.keyring(RING_MISS_S)).key(key_id)
        if key is None:
            raise Unavailable(
                f"chunk is encrypted with volume key {key_id}, which the metadata primary does not know"
            )
        return key

    async def _decode(self, blob: bytes | tuple[bytes, bytes], customer_key: bytes | None = None) -> bytes:
        """Verify and decode a blob; an encrypted one with its volume's data key, or (key id 0:
        S3 SSE-C, dfs/core/s3sse.py) with ``customer_key``, the key derived from the customer's.
        A local chunk file comes as its header and its payload (see _read_local)."""
        head, payload = blob if isinstance(blob, tuple) else (blob, None)
        header = codec.header_info(head)
        key: bytes | None = None
        if header.encrypted and header.key_id == 0:
            if customer_key is None:
                # Never garbage and never EIO: the data exists but only the customer can read it.
                raise PermissionDenied(
                    "the object is encrypted with an S3 customer-provided key (SSE-C): it can only be "
                    "read through S3, with that key"
                )
            key = customer_key
        elif header.encrypted:
            key = await self._data_key(header.key_id)
        if payload is None:
            plain: bytes = await trio.to_thread.run_sync(
                lambda: codec.decode(head, cipher_key=key), limiter=self._codec_limiter
            )
        else:
            plain = await trio.to_thread.run_sync(
                lambda: codec.decode_parts(head, payload, cipher_key=key), limiter=self._codec_limiter
            )
        return plain

    # -- data -------------------------------------------------------------------
    def _prepare(
        self, data: codec.Plain, vc: VolumeCodec, key: bytes | None, id_key: bytes | None
    ) -> tuple[bytes, bytes | wire.Pieces]:
        if key is not None and id_key is not None:
            # An encrypted volume names its chunks with its own key: equal plaintext elsewhere
            # gets another id, so dedup cannot tell it is there (dfs/core/keys.py).
            cid = codec.chunk_id(id_key, data)
            parts = codec.encode_parts(data, level=vc.level, cipher_key=key, key_id=vc.key_id)
        else:
            cid = codec.chunk_id(self.info.cluster_key, data)
            parts = codec.encode_parts(data, level=vc.level)
        # Not joined: the writer's buffers go to the socket as they are (a 4 MiB copy per block
        # was a fifth of a sequential writer's time holding the mount's GIL).
        first = parts[0]
        return cid, first if len(parts) == 1 and isinstance(first, bytes) else wire.Pieces(parts)

    async def write_block(
        self,
        index: int,
        data: codec.Plain,
        policy: Policy | None = None,
        *,
        force: bool = False,
        volume_codec: VolumeCodec | None = None,
        sse_c: tuple[bytes, bytes] | None = None,
    ) -> BlockRef:
        """Store one block durably (as ``policy`` requires) and return its reference (not yet
        committed).  ``data``: the block, whole or in pieces (see :data:`codec.Plain`).
        ``force`` stores it even where a copy is said to exist already.
        ``volume_codec``: the volume's (see :meth:`volume_codec`); None: the cluster default.
        ``sse_c``: (data key, chunk-id key) of an S3 SSE-C object, which wins over the volume's
        key (its chunks carry key id 0: only the customer's key opens them)."""
        vc = volume_codec or VolumeCodec(self.info.compression_level, 0)
        key = id_key = None
        if sse_c is not None:
            key, id_key = sse_c
            vc = VolumeCodec(vc.level, 0)
        elif vc.key_id:
            ring = await self.keyring()
            key, id_key = ring.key(vc.key_id), ring.id_key(vc.key_id)
            if key is None:
                key = await self._data_key(vc.key_id)
                id_key = (await self.keyring()).id_key(vc.key_id)
        cid, blob = await trio.to_thread.run_sync(
            self._prepare, data, vc, key, id_key, limiter=self._codec_limiter
        )
        if self.chunkio is not None:
            await self.chunkio.put(
                cid, blob, policy or (await self.chunkio.view()).default_policy, force=force
            )
        else:
            held = False
            if not force and len(blob) >= PROBE_MIN_BYTES:
                (held,) = await endpoints.CHUNK_HAS.call(self.rpc, [cid])
            if not held:
                await endpoints.CHUNK_PUT.call(self.rpc, cid, blob)
        return BlockRef(index, cid, codec.plain_length(data), len(blob))

    async def read_chunk(self, chunk_id: bytes, customer_key: bytes | None = None) -> bytes:
        """The plaintext of one chunk, verified (checksum and length).  ``customer_key``: what
        opens an S3 SSE-C chunk (see :meth:`_decode`); without it such a chunk is
        PermissionDenied."""

        async def decode(blob: bytes | tuple[bytes, bytes]) -> bytes:
            try:
                return await self._decode(blob, customer_key)
            except PermissionDenied:
                log.warning(
                    "chunk %s is encrypted with an S3 customer key (SSE-C): refused (EACCES); its "
                    "object can only be read through S3, with that key",
                    chunk_id.hex()[:16],
                )
                raise

        if self.local_chunks is not None:
            try:
                local = await trio.to_thread.run_sync(self._read_local, chunk_id, limiter=self._codec_limiter)
                if isinstance(local, bytes):
                    return local
                return await decode(local)
            except (OSError, CorruptChunk):
                pass  # ask the daemon: it has the authoritative view and reports damage
        if self.chunkio is not None:
            plain_bytes: bytes = await self.chunkio.get_plain(chunk_id, decode)
            return plain_bytes
        blob = await endpoints.CHUNK_GET.call(self.rpc, chunk_id)
        return await decode(blob)

    def _read_local(self, chunk_id: bytes) -> bytes | tuple[bytes, bytes]:
        """A chunk file of the local store, read as its header and its payload, each into an
        object of its own (so a raw chunk's payload is its data without a copy), and decoded
        in the same worker thread when it needs no key; else the two parts, for _decode."""
        assert self.local_chunks is not None
        path = os.path.join(self.local_chunks, codec.chunk_relpath(chunk_id.hex()))
        with open(path, "rb", buffering=0) as f:
            head = f.read(codec.HEADER_SIZE)
            payload = f.read()
        if codec.header_info(head).encrypted:
            return head, payload
        return codec.decode_parts(head, payload)


def _local_chunk_dir(info: ClusterInfo) -> str | None:
    """The daemon's chunk directory if this process can read it, else None."""
    if not info.data_dir:
        return None
    try:
        with open(os.path.join(info.data_dir, "cluster.key"), "rb") as f:
            same_store = hmac.compare_digest(f.read(), info.cluster_key)
    except OSError:
        return None
    return os.path.join(info.data_dir, "chunks") if same_store else None


async def fetch_info(conn: rpc.RpcClient) -> ClusterInfo:
    raw = await endpoints.SYS_INFO.call(conn)
    return ClusterInfo(
        node_id=raw["node_id"],
        block_size=raw["block_size"],
        inline_max=raw["inline_max"],
        compression_level=raw["compression_level"],
        cluster_key=raw["cluster_key"],
        data_dir=raw.get("data_dir", ""),
        session_timeout_s=float(raw.get("session_timeout_s", 300.0)),
    )


@contextlib.asynccontextmanager
async def open_chunkio(
    conn: rpc.RpcClient,
    info: ClusterInfo,
    *,
    ssl_context: Any = None,
    credential: Credential | None = None,
    max_frame_bytes: int = 72 * 1024 * 1024,
    refresh_s: float = 2.0,
    peer_timeout_s: float = 30.0,
    views: Caller | None = None,
) -> AsyncIterator[ChunkIO]:
    """Replicated chunk I/O for a client whose own daemon is ``conn``; peers are reached
    at the RPC addresses the layout gives (TLS with ``ssl_context``).  The cluster view comes
    from ``views`` (default ``conn``): any daemon can give it, also when ``conn``'s is down."""
    async with trio.open_nursery() as nursery:
        holder: list[ClusterView] = []
        source = views or conn

        async def fetch_view() -> ClusterView:
            raw = await endpoints.SYS_CLUSTER.call(source)
            previous = holder[0].table if holder else None
            view = await trio.to_thread.run_sync(view_from_wire, raw, info.node_id, previous)
            holder[:] = [view]
            return view

        def connect(address: str) -> rpc.RpcClient:
            return rpc.RpcClient(
                rpc.parse_address(address, DEFAULT_PORT),
                nursery,
                call_timeout_s=None,
                max_frame_bytes=max_frame_bytes,
                ssl_context=ssl_context,
                credential=credential,
            )

        chunkio = ChunkIO(
            conn,
            info.node_id,
            nursery,
            fetch_view=fetch_view,
            connect=connect,
            refresh_s=refresh_s,
            peer_timeout_s=peer_timeout_s,
        )
        chunkio.set_view(await fetch_view())
        try:
            yield chunkio
        finally:
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def connect(
    address: str, *, call_timeout_s: float = 60.0, credential: Credential | None = None
) -> AsyncIterator[Client]:
    async with rpc.open_client(address, call_timeout_s=call_timeout_s, credential=credential) as conn:
        info = await fetch_info(conn)
        async with open_chunkio(conn, info, credential=credential) as chunkio:
            yield Client(conn, info, chunkio=chunkio)
