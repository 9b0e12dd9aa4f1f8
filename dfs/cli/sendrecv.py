"""``dfs snapshot send`` and ``dfs snapshot receive``: snapshots as a byte stream, like zfs send/receive.

``send VOL@SNAP [--from OLD]`` walks ``/.snapshots/VOL/SNAP`` through the cluster client
(snapshot trees never change, so the walk is consistent) in sorted pre-order and writes a
stream (dfs/core/sendstream.py) to stdout: everything, or with ``--from`` only what differs
from ``/.snapshots/VOL/OLD`` by path -- entries whose type, attributes, xattrs and block
chunk ids are equal are left out, and a changed file's blocks whose chunk the base already
has (at any path: renames and copies cost nothing) go as references, not data.  Blocks are
read as plaintext, so a stream of an encrypted volume is NOT encrypted.

``receive VOL`` builds the tree in VOL (full stream: VOL new or empty; incremental: VOL is
first rolled back to its snapshot OLD), checks the trailer's digest against the tree it
made, and takes snapshot SNAP of VOL, the next incremental's base.  Every record is applied
idempotently (a file replaces whatever is at its path), and the receiver notes the stream id
and the last record applied in the volume directory's xattr :data:`PROGRESS_XATTR` (gone
when the receive ends), so ``receive --resume`` with the same stream skips what was done.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any, NamedTuple

import click
import msgpack
import trio

from dfs.cli import progress
from dfs.cli.app import CliError, main, run
from dfs.cli.connect import config_for, config_option, dir_option, endpoint_of
from dfs.cli.output import emit_json, json_option
from dfs.client.cluster import Client, fetch_info, open_chunkio
from dfs.core import endpoints
from dfs.core import sendstream as ss
from dfs.core.config import Config
from dfs.core.errors import DfsError, InvalidArgument, NoAttribute, NotFound, Unavailable, only_dfs_error
from dfs.core.keys import VolumeCodec
from dfs.core.namespace import ROOT_INO, Attr, BlockRef, FileMap
from dfs.core.quotas import QUOTA_XATTR_PREFIX
from dfs.core.replicas import Policy
from dfs.core.snapshot_schedule import NAME_RE

SNAPSHOTS = b".snapshots"
# Where a receive notes its progress: msgpack [stream id, last applied sequence number].
PROGRESS_XATTR = b"trusted.dfs.receive"
# Progress is noted after this many records or this many data bytes, whichever comes first:
# a resume repeats at most that much, and noting costs one metadata write.
PROGRESS_RECORDS = 256
PROGRESS_BYTES = 64 * 1024 * 1024
READDIR_BATCH = 1000
OUT_BUFFER_BYTES = 1024 * 1024  # stdout is written in pieces of about this size, off the event loop
IN_READ_BYTES = 1024 * 1024
BASE_MAPS_MAX = 256  # block maps of base files kept by a receiver resolving Same records
# Block writes and file commits a receiver runs at once: they overlap their round trips and
# fsyncs (the metadata store commits concurrent transactions as a group); each may hold one
# block, so this also bounds the memory held (16 x 4 MiB by default).
IN_FLIGHT = 16


def _managed(name: bytes) -> bool:
    """Xattrs dfs computes (quota usage views) or a receive keeps: not part of a tree's content."""
    return name.startswith(QUOTA_XATTR_PREFIX) or name == PROGRESS_XATTR


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _meta(attr: Attr) -> ss.Meta:
    return ss.Meta(attr.mode, attr.uid, attr.gid, attr.rdev, attr.atime_ns, attr.mtime_ns)


# -- the client ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_cluster_client(cfg: Config) -> AsyncIterator[Client]:
    """A cluster client (metadata and replicated chunk I/O) for the daemon of ``cfg``."""
    ep = endpoint_of(cfg)
    async with ep.client(timeout_s=cfg.rpc.call_timeout_s) as conn:
        info = await fetch_info(conn)
        async with open_chunkio(
            conn,
            info,
            ssl_context=ep.peers_ssl,
            credential=ep.credential,
            max_frame_bytes=cfg.rpc.max_frame_bytes,
            refresh_s=cfg.cluster.refresh_s,
            peer_timeout_s=cfg.cluster.peer_timeout_s,
        ) as chunkio:
            yield Client(conn, info, chunkio=chunkio)


# -- walking a tree --------------------------------------------------------------------------------


class Node(NamedTuple):
    path: bytes
    attr: Attr
    xattrs: dict[bytes, bytes]
    target: bytes  # a symlink's
    fmap: FileMap | None  # a regular file's


async def _xattrs(client: Client, ino: int) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name in await client.listxattr(ino):
        if _managed(name):
            continue
        try:
            out[name] = await client.getxattr(ino, name)
        except NoAttribute:
            pass
    return out


async def _entries(client: Client, ino: int) -> list[tuple[bytes, Attr]]:
    out: list[tuple[bytes, Attr]] = []
    cookie = 0
    while True:
        batch = await client.readdir(ino, cookie, READDIR_BATCH)
        out += [(e.name, e.attr) for e in batch]
        if len(batch) < READDIR_BATCH:
            return sorted(out)
        cookie = batch[-1].cookie


async def walk(client: Client, top: Attr, *, symlinks_with_xattrs: bool = False) -> list[Node]:
    """Every entry below and including ``top``, pre-order with names sorted (deterministic)."""
    out: list[Node] = []
    stack: list[tuple[bytes, Attr]] = [(b"", top)]
    while stack:
        path, attr = stack.pop()
        target, fmap = b"", None
        if stat.S_ISLNK(attr.mode):
            target = await client.readlink(attr.ino)
        elif stat.S_ISREG(attr.mode):
            fmap = await client.read_map(attr.ino)
        xattrs = (
            {} if stat.S_ISLNK(attr.mode) and not symlinks_with_xattrs else await _xattrs(client, attr.ino)
        )
        out.append(Node(path, attr, xattrs, target, fmap))
        if attr.is_dir:
            for name, child in reversed(await _entries(client, attr.ino)):
                stack.append((_join(path, name), child))
    return out


def extents(n: Node, block_size: int) -> tuple[tuple[int, int], ...]:
    """A file's (block index, valid length) pairs; inline bytes count as block 0 (a receiver may
    store a small file either way)."""
    fmap, size = n.fmap, n.attr.size
    if fmap is None:
        return ()
    out = tuple(
        (r.index, min(r.length, size - r.index * block_size))
        for r in sorted(fmap.blocks)
        if r.chunk_id and r.length > 0 and r.index * block_size < size
    )
    if not out and fmap.inline and size:
        return ((0, size),)
    return out


def tree_entry(n: Node, block_size: int) -> ss.TreeEntry:
    a = n.attr
    return ss.TreeEntry(
        n.path,
        a.mode,
        a.uid,
        a.gid,
        a.rdev,
        0 if a.is_dir else a.size,
        a.mtime_ns,
        a.nlink,
        n.target,
        n.xattrs,
        extents(n, block_size),
    )


# -- send --------------------------------------------------------------------------------------------


class _Out:
    """Frames to a binary file, buffered, written in a worker thread (a pipe may block)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.buf = bytearray()
        self.bytes = 0

    async def write(self, data: bytes) -> None:
        self.buf += data
        self.bytes += len(data)
        if len(self.buf) >= OUT_BUFFER_BYTES:
            await self.flush()

    async def flush(self) -> None:
        data, self.buf = bytes(self.buf), bytearray()

        def put() -> None:
            self.f.write(data)
            self.f.flush()

        try:
            await trio.to_thread.run_sync(put)
        except OSError as exc:  # a closed pipe, a full disk: one line, not a traceback
            raise Unavailable(f"cannot write the stream: {exc.strerror or exc}") from None


def _same_entry(a: Node, b: Node) -> bool:
    """Nothing to send for ``a`` when the base had ``b`` at its path (dirs: their own fields only)."""
    x, y = a.attr, b.attr
    if (x.mode, x.uid, x.gid, x.rdev, x.mtime_ns, x.nlink) != (
        y.mode,
        y.uid,
        y.gid,
        y.rdev,
        y.mtime_ns,
        y.nlink,
    ):
        return False
    if a.xattrs != b.xattrs or a.target != b.target:
        return False
    if a.fmap is None or b.fmap is None:
        return a.fmap is None and b.fmap is None
    if x.nlink > 1:
        return False  # a hard-link group is always sent whole: a receiver rebuilds it as one
    return (
        x.size == y.size
        and a.fmap.inline == b.fmap.inline
        and [(r.index, r.chunk_id, r.length) for r in a.fmap.blocks]
        == [(r.index, r.chunk_id, r.length) for r in b.fmap.blocks]
    )


def _kind(mode: int) -> int:
    return stat.S_IFMT(mode)


def plan(new: list[Node], old: list[Node] | None) -> tuple[list[bytes], list[Node]]:
    """(paths to delete, entries to send) for the walk ``new`` against base walk ``old``."""
    if old is None:
        return [], new
    old_by = {n.path: n for n in old}
    new_by = {n.path: n for n in new}
    gone = sorted(
        p
        for p, n in old_by.items()
        if p and (p not in new_by or _kind(new_by[p].attr.mode) != _kind(n.attr.mode))
    )
    deletes: list[bytes] = []
    removed: set[bytes] = set()
    for p in gone:  # a removed directory's contents go with it
        parts = p.split(b"/")
        if not any(b"/".join(parts[:i]) in removed for i in range(1, len(parts))):
            deletes.append(p)
            removed.add(p)
    changed = {n.path for n in new if n.path not in old_by or not _same_entry(n, old_by[n.path])}
    dirty_dirs = {b""}  # the receiver's rollback stamps the top with the time: always sent
    for p in changed | set(gone):
        if p:
            dirty_dirs.add(ss.split(p)[0])  # a change in a directory changes its times
    return deletes, [n for n in new if n.path in changed or (n.attr.is_dir and n.path in dirty_dirs)]


def stream_id(volume: str, snap: dict[str, Any], base: dict[str, Any] | None) -> bytes:
    """The same for every send of one snapshot pair (a resume needs the same id), new otherwise."""
    parts = [volume, snap["name"], snap["created_ns"], snap["ino"]]
    if base is not None:
        parts += [base["name"], base["created_ns"], base["ino"]]
    return hashlib.blake2b(msgpack.packb(parts), digest_size=ss.STREAM_ID_BYTES).digest()


async def _snapshot_row(client: Client, volume: str, name: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = await endpoints.SNAPSHOT_LIST.call(client.rpc, volume)
    for r in rows:
        if r["name"] == name:
            return r
    raise NotFound(f"no snapshot {name!r} of volume {volume!r}")


async def _snapshot_top(client: Client, volume: str, name: str) -> Attr:
    return await client.resolve(ROOT_INO, [SNAPSHOTS, volume.encode(), name.encode()])


async def send(
    cfg: Config, volume: str, snap: str, base: str | None, out: IO[bytes], *, as_json: bool = False
) -> dict[str, int]:
    """Write the stream of ``volume@snap`` (incremental from ``base``) to ``out``; counts.
    Progress on stderr (dfs/cli/progress.py): a spinner while the trees are read, then the
    file bytes written against the total the plan makes travel as data."""
    async with open_cluster_client(cfg) as client:
        row = await _snapshot_row(client, volume, snap)
        base_row = None if base is None else await _snapshot_row(client, volume, base)
        async with progress.ticking(progress.reporter("reading the snapshot", None, as_json=as_json)):
            new = await walk(client, await _snapshot_top(client, volume, snap))
            old = None if base is None else await walk(client, await _snapshot_top(client, volume, base))
        deletes, entries = plan(new, old)
        # Any block the base holds can be referenced, wherever it is there: chunk id -> (path, index, length).
        held: dict[bytes, tuple[bytes, int, int]] = {}
        for n in old or []:
            if n.fmap is not None:
                for r in n.fmap.blocks:
                    held.setdefault(r.chunk_id, (n.path, r.index, r.length))
        total = data_bytes(entries, held, client.block_size)
        w = _Out(out)
        enc = ss.Encoder()
        base_digest = None if old is None else ss.tree_digest(tree_entry(n, client.block_size) for n in old)
        header = ss.Header(
            volume, snap, base, stream_id(volume, row, base_row), client.block_size, base_digest
        )
        await w.write(enc.start(header))
        counts = {"deletes": len(deletes), "entries": len(entries), "data_blocks": 0, "same_blocks": 0}
        for p in deletes:
            await w.write(enc.record(ss.Delete(p)))
        first_path: dict[int, bytes] = {}  # inode -> its first path in this stream (hard links)
        with progress.reporter("sending", total, unit="B", as_json=as_json) as bar:
            for n in entries:
                a = n.attr
                if a.is_dir:
                    await w.write(enc.record(ss.Dir(n.path, _meta(a), n.xattrs)))
                elif stat.S_ISLNK(a.mode):
                    await w.write(enc.record(ss.Symlink(n.path, _meta(a), n.target)))
                elif n.fmap is None:
                    await w.write(enc.record(ss.Special(n.path, _meta(a), n.xattrs)))
                elif a.nlink > 1 and a.ino in first_path:
                    await w.write(enc.record(ss.Link(n.path, first_path[a.ino])))
                else:
                    if a.nlink > 1:
                        first_path[a.ino] = n.path
                    await _send_file(client, w, enc, n, held, counts, bar)
            await w.write(enc.finish(ss.tree_digest(tree_entry(n, client.block_size) for n in new)))
            await w.flush()
        counts["bytes"] = w.bytes
        counts["records"] = enc.records
        return counts


async def _send_file(
    client: Client,
    w: _Out,
    enc: ss.Encoder,
    n: Node,
    held: dict[bytes, tuple[bytes, int, int]],
    counts: dict[str, int],
    bar: progress.Reporter,
) -> None:
    inline, blocks = _file_parts(n, client.block_size)
    nblocks = 0 if inline is not None else len(blocks)
    await w.write(enc.record(ss.File(n.path, _meta(n.attr), n.xattrs, n.attr.size, inline, nblocks)))
    if inline is not None:
        bar.advance(len(inline))
        return
    for r, length in blocks:
        base = _held_base(held, r, length)
        if base is not None:
            await w.write(enc.record(ss.Same(r.index, length, base[0], base[1])))
            counts["same_blocks"] += 1
            continue
        data = await client.read_chunk(r.chunk_id)
        await w.write(enc.record(ss.Data(r.index, data[:length].ljust(length, b"\0"))))
        counts["data_blocks"] += 1
        bar.advance(length)


def _file_parts(n: Node, block_size: int) -> tuple[bytes | None, list[tuple[BlockRef, int]]]:
    """A file's content as a stream carries it: its inline bytes (None: blocks), or its blocks
    with the length of each that is valid (a truncate may leave a longer block length)."""
    fmap = n.fmap
    assert fmap is not None
    size = n.attr.size
    blocks = [r for r in fmap.blocks if r.length > 0 and r.chunk_id and r.index * block_size < size]
    if fmap.inline is not None and not blocks:
        return fmap.inline[:size].ljust(size, b"\0"), []
    return None, [(r, min(r.length, size - r.index * block_size)) for r in blocks]


def _held_base(
    held: dict[bytes, tuple[bytes, int, int]], r: BlockRef, length: int
) -> tuple[bytes, int, int] | None:
    """Where the base holds block ``r`` (sent as a reference, not data), if it does."""
    base = held.get(r.chunk_id)
    return base if base is not None and length <= base[2] else None


def data_bytes(entries: list[Node], held: dict[bytes, tuple[bytes, int, int]], block_size: int) -> int:
    """The file bytes a send of ``entries`` writes as data (inline or blocks; not the blocks it
    references in the base, nor a hard link's later paths): the total of its progress."""
    total = 0
    linked: set[int] = set()
    for n in entries:
        if n.fmap is None or n.attr.is_dir:
            continue
        if n.attr.nlink > 1:
            if n.attr.ino in linked:
                continue
            linked.add(n.attr.ino)
        inline, blocks = _file_parts(n, block_size)
        total += (
            len(inline)
            if inline is not None
            else sum(length for r, length in blocks if _held_base(held, r, length) is None)
        )
    return total


# -- receive -----------------------------------------------------------------------------------------


class _In:
    def __init__(self, f: IO[bytes], bar: progress.Reporter) -> None:
        self.f = f
        self.bar = bar

    async def read(self) -> bytes:
        read1 = getattr(self.f, "read1", self.f.read)
        try:
            data: bytes = await trio.to_thread.run_sync(read1, IN_READ_BYTES)
        except OSError as exc:
            raise Unavailable(f"cannot read the stream: {exc.strerror or exc}") from None
        self.bar.advance(len(data))
        return data


def _size_of(f: IO[bytes]) -> int | None:
    """The size of a stream in a regular file (the total of a receive's progress); None for a pipe."""
    try:
        st = os.fstat(f.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class _PendingFile:
    """A file record being received: its blocks as they are stored, and whether any write is
    still running (its commit waits for them)."""

    def __init__(self, file: ss.File) -> None:
        self.file = file
        self.blocks: list[BlockRef] = []
        self.writing = 0  # block writes started and not finished
        self.ended = False  # every block is handed on (its commit is started)
        self.written = trio.Event()  # set once ended and no write runs


class Receiver:
    """Applies a decoded stream's records to volume ``volume`` (see the module docstring)."""

    def __init__(self, client: Client, volume: str, vol_ino: int, header: ss.Header) -> None:
        self.client = client
        self.volume = volume
        self.vol_ino = vol_ino
        self.header = header
        self.dirs: dict[bytes, int] = {b"": vol_ino}
        self.dir_times: dict[bytes, tuple[int, int]] = {}
        self.file: _PendingFile | None = None
        self.left = 0
        self.nursery: trio.Nursery | None = None  # where block writes and file commits run
        self._slots = trio.Semaphore(IN_FLIGHT)
        self._busy = 0
        self._idle = trio.Event()
        self._idle.set()
        self.base_top: int | None = None
        self.base_maps: dict[bytes, FileMap] = {}
        self.policy: Policy | None = None
        self.codec = VolumeCodec(0, 0)
        self.data_bytes = 0

    async def setup(self) -> None:
        self.policy = await self.client.write_policy(self.vol_ino)
        self.codec = await self.client.volume_codec(self.vol_ino)
        if self.header.base is not None:
            self.base_top = (await _snapshot_top(self.client, self.volume, self.header.base)).ino

    async def _dir(self, path: bytes) -> int:
        ino = self.dirs.get(path)
        if ino is None:
            parts = path.split(b"/")
            ino = (await self.client.resolve(self.vol_ino, parts)).ino
            self.dirs[path] = ino
        return ino

    async def _clear(self, parent: int, path: bytes, keep_dir: bool = False) -> Attr | None:
        """Remove whatever is at ``path`` (in directory ``parent``), except a directory when
        ``keep_dir``: that one is returned."""
        name = ss.split(path)[1]
        try:
            attr = await self.client.lookup(parent, name)
        except NotFound:
            return None
        if attr.is_dir and keep_dir:
            return attr
        if attr.is_dir:
            await self.client.remove_tree(parent, name)
            self._forget(path)
        else:
            await self.client.unlink(parent, name)
        return None

    async def _set_xattrs(self, ino: int, want: dict[bytes, bytes]) -> None:
        have = await _xattrs(self.client, ino)
        for name in have:
            if name not in want:
                await self.client.removexattr(ino, name)
        for name, value in want.items():
            if have.get(name) != value:
                await self.client.setxattr(ino, name, value, 0)

    async def apply(self, item: ss.Record) -> bool:
        """Apply one record; True when it completed an entry (a point a resume may start after)."""
        c = self.client
        if isinstance(item, ss.Data | ss.Same):
            pf = self.file
            assert pf is not None
            if isinstance(item, ss.Data):
                pf.writing += 1
                await self._start(self._write, pf, item)
                self.data_bytes += len(item.data)
            else:
                pf.blocks.append(await self._base_block(item))
            self.left -= 1
            if self.left == 0:
                pf.ended = True
                await self._start(self._commit_file, pf)
                self.file = None
                return True
            return False
        if isinstance(item, ss.Dir):
            m = item.meta
            if item.path == b"":
                ino = self.vol_ino
            else:
                ppath, name = ss.split(item.path)
                parent = await self._dir(ppath)
                attr = await self._clear(parent, item.path, keep_dir=True)
                if attr is None:
                    attr = (await c.mkdir(parent, name, m.mode, m.uid, m.gid))[0]
                ino = attr.ino
                self.dirs[item.path] = ino
            await c.setattr(ino, mode=stat.S_IMODE(m.mode), uid=m.uid, gid=m.gid)
            await self._set_xattrs(ino, item.xattrs)
            return True
        if isinstance(item, ss.File):
            pf = _PendingFile(item)
            self.left = item.nblocks
            if item.nblocks == 0:
                pf.ended = True
                await self._start(self._commit_file, pf)
                return True
            self.file = pf
            return False
        if isinstance(item, ss.Delete):
            ppath = ss.split(item.path)[0]
            try:
                parent = await self._dir(ppath)
            except NotFound:
                return True  # already gone with its directory
            await self._clear(parent, item.path)
            return True
        ppath, name = ss.split(item.path)
        parent = await self._dir(ppath)
        await self._clear(parent, item.path)
        if isinstance(item, ss.Symlink):
            m = item.meta
            attr = (await c.symlink(parent, name, item.target, m.uid, m.gid))[0]
            await c.setattr(attr.ino, atime_ns=m.atime_ns, mtime_ns=m.mtime_ns)
        elif isinstance(item, ss.Link):
            await self.drain()  # its target may still be being committed
            tparent, tname = ss.split(item.target)
            target = await c.lookup(await self._dir(tparent), tname)
            await c.link(target.ino, parent, name)
        else:
            m = item.meta
            attr = (await c.mknod(parent, name, m.mode, m.rdev, m.uid, m.gid))[0]
            await self._set_xattrs(attr.ino, item.xattrs)
            await c.setattr(attr.ino, mode=stat.S_IMODE(m.mode), atime_ns=m.atime_ns, mtime_ns=m.mtime_ns)
        return True

    def _forget(self, path: bytes) -> None:
        for p in [p for p in self.dirs if p == path or p.startswith(path + b"/")]:
            del self.dirs[p]

    async def _base_block(self, item: ss.Same) -> BlockRef:
        assert self.base_top is not None
        fmap = self.base_maps.get(item.base_path)
        if fmap is None:
            try:
                attr = await self.client.resolve(self.base_top, item.base_path.split(b"/"))
                fmap = await self.client.read_map(attr.ino)
            except NotFound:
                raise InvalidArgument(
                    f"the stream refers to {item.base_path!r} of snapshot {self.header.base!r}, "
                    f"which volume {self.volume!r}'s snapshot of that name lacks: not the same base"
                ) from None
            if len(self.base_maps) >= BASE_MAPS_MAX:
                self.base_maps.clear()
            self.base_maps[item.base_path] = fmap
        for r in fmap.blocks:
            if r.index == item.base_index and r.length >= item.length:
                return BlockRef(item.index, r.chunk_id, item.length, r.stored_bytes)
        raise InvalidArgument(
            f"the stream refers to block {item.base_index} of {item.base_path!r} in snapshot "
            f"{self.header.base!r}, which volume {self.volume!r}'s snapshot lacks: not the same base"
        )

    async def _start(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)`` in the nursery once one of the IN_FLIGHT slots is free."""
        assert self.nursery is not None
        await self._slots.acquire()
        if self._busy == 0:
            self._idle = trio.Event()
        self._busy += 1

        async def task() -> None:
            try:
                await fn(*args)
            finally:
                self._slots.release()
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

        self.nursery.start_soon(task)

    async def drain(self) -> None:
        """Until every block write and file commit started so far is done."""
        await self._idle.wait()

    async def _write(self, pf: _PendingFile, item: ss.Data) -> None:
        ref = await self.client.write_block(item.index, item.data, self.policy, volume_codec=self.codec)
        pf.blocks.append(ref)
        pf.writing -= 1
        if pf.writing == 0 and pf.ended:
            pf.written.set()

    async def _commit_file(self, pf: _PendingFile) -> None:
        if pf.writing:
            await pf.written.wait()
        f = pf.file
        c = self.client
        ppath, name = ss.split(f.path)
        parent = await self._dir(ppath)
        await self._clear(parent, f.path)  # a directory there (put_object replaces anything else)
        inline, blocks = f.inline, sorted(pf.blocks)
        # An encrypted volume keeps no file data inline: metadata is not encrypted (as the mount).
        inline_max = 0 if self.codec.key_id else c.inline_max
        if inline and len(inline) > inline_max:
            blocks = [await c.write_block(0, inline, self.policy, volume_codec=self.codec)]
            inline = None
        m = f.meta
        attr = await c.put_object(
            parent,
            [],
            name,
            size=f.size,
            mtime_ns=m.mtime_ns,
            blocks=blocks,
            inline=inline,
            xattrs=f.xattrs,
            mode=stat.S_IMODE(m.mode),
            uid=m.uid,
            gid=m.gid,
            replicas=self.policy.replicas if self.policy is not None else None,
        )
        if m.atime_ns != m.mtime_ns:  # put_object sets both to mtime
            await c.setattr(attr.ino, atime_ns=m.atime_ns, mtime_ns=m.mtime_ns)

    def note_dir(self, item: ss.Dir) -> None:
        self.dir_times[item.path] = (item.meta.atime_ns, item.meta.mtime_ns)

    async def finish_times(self) -> None:
        """Directory times last: making their entries changed them (deepest first)."""
        for path in sorted(self.dir_times, key=lambda p: -p.count(b"/") - (p != b"")):
            atime, mtime = self.dir_times[path]
            await self.client.setattr(await self._dir(path), atime_ns=atime, mtime_ns=mtime)


async def _progress(client: Client, vol_ino: int) -> tuple[bytes, int] | None:
    try:
        raw = msgpack.unpackb(await client.getxattr(vol_ino, PROGRESS_XATTR))
    except NoAttribute:
        return None
    except ValueError:
        return None
    if isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], bytes) and isinstance(raw[1], int):
        return raw[0], raw[1]
    return None


async def _volume_top(client: Client, volume: str) -> Attr | None:
    if await endpoints.META_GET_VOLUME.call(client.rpc, volume) is None:
        return None
    return await client.resolve(ROOT_INO, [volume.encode()])


async def receive(
    cfg: Config, volume: str, inp: IO[bytes], *, resume: bool, say: Any = None, as_json: bool = False
) -> dict[str, Any]:
    """Read a stream from ``inp`` into ``volume``; what was done.  Progress on stderr: the
    stream's bytes read (of its size when it is a file)."""
    with progress.reporter("receiving", _size_of(inp), unit="B", as_json=as_json) as bar:
        # Messages go through the bar, which keeps them off its own line on a terminal.
        note = None if say is None else bar.note
        return await _receive(cfg, volume, _In(inp, bar), resume=resume, say=note)


async def _receive(cfg: Config, volume: str, src: _In, *, resume: bool, say: Any) -> dict[str, Any]:
    dec = ss.Decoder()
    pending: list[tuple[int, ss.Frame]] = []
    while dec.header is None:
        data = await src.read()
        if not data:
            dec.close()
        pending += dec.feed(data)
    header = dec.header
    async with open_cluster_client(cfg) as client:
        if header.block_size != client.block_size:
            raise InvalidArgument(
                f"the stream's block size is {header.block_size} bytes, this cluster's {client.block_size}: "
                "receive it into a cluster with the same [storage] block size"
            )
        top = await _volume_top(client, volume)
        progress = None if top is None else await _progress(client, top.ino)
        ours = progress is not None and progress[0] == header.stream_id
        if ours and not resume and header.base is None:
            raise InvalidArgument(
                f"volume {volume!r} holds an interrupted receive of this stream: add --resume to "
                "continue it (or delete the volume to start again)"
            )
        # Resuming: no rollback or emptiness check; records are applied idempotently, so the
        # ones after the last noted one may be applied again.
        resuming = ours and resume
        skip_to = progress[1] if resuming and progress is not None else 0
        if not resuming:
            top = await _prepare(client, volume, header, top)
        assert top is not None
        vol_ino = top.ino
        rx = Receiver(client, volume, vol_ino, header)
        await rx.setup()
        since_mark, bytes_at_mark = 0, 0
        # submitted: the last record that ended an entry and was handed on; done: the last one
        # known applied with everything before it (block writes and file commits run on).
        submitted = done = skip_to

        async def mark(seq: int) -> None:
            await client.setxattr(vol_ino, PROGRESS_XATTR, msgpack.packb([header.stream_id, seq]), 0)

        if not resuming:
            await mark(0)
        elif say is not None:
            say(f"resuming after record {skip_to}")
        applied = 0
        try:
            async with trio.open_nursery() as nursery:
                rx.nursery = nursery
                while True:
                    for seq, item in pending:
                        if isinstance(item, ss.Header | ss.Trailer):
                            continue
                        if isinstance(item, ss.Dir):
                            rx.note_dir(item)  # skipped ones too: directory times are set at the end
                        if seq <= skip_to:
                            continue
                        if await rx.apply(item):
                            applied += 1
                            submitted = seq
                            since_mark += 1
                            if (
                                since_mark >= PROGRESS_RECORDS
                                or rx.data_bytes - bytes_at_mark >= PROGRESS_BYTES
                            ):
                                await rx.drain()
                                done = submitted
                                await mark(done)
                                since_mark, bytes_at_mark = 0, rx.data_bytes
                    if dec.done:
                        break
                    data = await src.read()
                    try:
                        if not data:
                            dec.close()  # raises: the stream ended before its trailer
                        pending = dec.feed(data)
                    except ss.StreamError:
                        await rx.drain()  # what was handed on is applied before the error ends it
                        done = submitted
                        raise
                await rx.drain()
        except BaseException as exc:
            # A cut or damaged stream, or a refusal: note how far it got for --resume.
            if only_dfs_error(exc) is not None and done > skip_to:
                with contextlib.suppress(DfsError):
                    await mark(done)
            raise
        trailer = dec.trailer
        assert trailer is not None
        await rx.finish_times()
        await client.removexattr(vol_ino, PROGRESS_XATTR)
        top = await client.getattr(vol_ino)
        got = ss.tree_digest(tree_entry(n, client.block_size) for n in await walk(client, top))
        if got != trailer.digest:
            raise InvalidArgument(
                f"volume {volume!r} does not match the stream's digest after receiving it (no snapshot "
                f"{header.snapshot!r} taken): it was changed meanwhile, or the stream is damaged; "
                "receive it again (an incremental stream rolls back first; a full one needs a new volume)"
            )
        await endpoints.SNAPSHOT_CREATE.call(client.rpc, volume, header.snapshot)
        return {"volume": volume, "snapshot": header.snapshot, "base": header.base, "records": applied}


async def _prepare(client: Client, volume: str, header: ss.Header, top: Attr | None) -> Attr:
    """Make ``volume`` ready for the stream from its start: new or empty (full), or rolled back
    to the base (incremental)."""
    if header.base is None:
        if top is None:
            await endpoints.META_CREATE_VOLUME.call(client.rpc, volume, {}, 0o755, 0, 0)
            return await client.resolve(ROOT_INO, [volume.encode()])
        if await client.readdir(top.ino, 0, 1):
            raise InvalidArgument(
                f"volume {volume!r} is not empty: a full stream is received into a new or empty volume"
            )
        rows = await endpoints.SNAPSHOT_LIST.call(client.rpc, volume)
        if any(r["name"] == header.snapshot for r in rows):
            raise InvalidArgument(f"volume {volume!r} already has a snapshot {header.snapshot!r}")
        return top
    if top is None:
        raise NotFound(f"no volume {volume!r} to receive an incremental stream (from {header.base!r}) into")
    rows = await endpoints.SNAPSHOT_LIST.call(client.rpc, volume)
    names = {r["name"] for r in rows}
    if header.base not in names:
        raise NotFound(
            f"volume {volume!r} has no snapshot {header.base!r}, the base of this incremental stream"
        )
    if header.snapshot in names:
        raise InvalidArgument(f"volume {volume!r} already has a snapshot {header.snapshot!r}")
    base_top = await _snapshot_top(client, volume, header.base)
    got = ss.tree_digest(tree_entry(n, client.block_size) for n in await walk(client, base_top))
    if got != header.base_digest:
        raise InvalidArgument(
            f"snapshot {header.base!r} of volume {volume!r} is not the tree the stream's base "
            f"{header.volume}@{header.base} was: receive into the volume that received that one"
        )
    await endpoints.SNAPSHOT_RESTORE.call(client.rpc, volume, header.base, None, None)
    return await client.resolve(ROOT_INO, [volume.encode()])


# -- the commands ------------------------------------------------------------------------------------


def _split_spec(spec: str) -> tuple[str, str]:
    volume, at, snap = spec.partition("@")
    if not at or not volume or NAME_RE.fullmatch(snap) is None:
        raise click.BadParameter("VOLUME@SNAPSHOT, e.g. data@2026-12-05", param_hint="VOLUME@SNAPSHOT")
    return volume, snap


@click.command("send", cls=main.command_class)
@click.argument("spec", metavar="VOLUME@SNAPSHOT")
@click.option("--from", "base", default=None, help="incremental: only what changed since this snapshot")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="write here, not stdout")
@dir_option
@config_option
@click.option(
    "--json", "as_json", is_flag=True, help="the summary as JSON (on stderr when the stream is on stdout)"
)
def send_command(
    spec: str,
    base: str | None,
    output: str | None,
    directory: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Write snapshot SNAPSHOT of VOLUME as a stream to stdout (or --output), for `dfs snapshot
    receive`: all of it, or with --from OLD what changed since snapshot OLD.  The stream holds
    plaintext even from an encrypted volume: pipe it through age or gpg to keep it secret.
    Progress (bytes, rate, ETA) goes to stderr."""
    volume, snap = _split_spec(spec)
    if base is not None and NAME_RE.fullmatch(base) is None:
        raise click.BadParameter("a snapshot name", param_hint="--from")
    if output is None and sys.stdout.isatty():
        raise CliError("snapshot send: stdout is a terminal; redirect it to a file or pipe (or use --output)")
    cfg = config_for(directory, config_path)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(output, "wb")) if output else sys.stdout.buffer
        counts = run(functools.partial(send, as_json=as_json), cfg, volume, snap, base, out)
    if as_json:
        doc = {"volume": volume, "snapshot": snap, "base": base, **counts}
        emit_json(doc, err=output is None)  # stdout is the stream unless --output took it
        return
    click.echo(
        f"sent {volume}@{snap}" + (f" from {base}" if base else "") + f": {counts['records']} records, "
        f"{counts['data_blocks']} data blocks, {counts['same_blocks']} base blocks, {counts['bytes']} bytes",
        err=True,
    )


@click.command("receive", cls=main.command_class)
@click.argument("volume")
@click.option("--resume", is_flag=True, help="continue an interrupted receive of the same stream")
@click.option(
    "-i", "--input", "input_path", type=click.Path(dir_okay=False, exists=True), help="read here, not stdin"
)
@dir_option
@config_option
@json_option
def receive_command(
    volume: str,
    resume: bool,
    input_path: str | None,
    directory: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Read a `dfs snapshot send` stream from stdin (or --input) into VOLUME and take its
    snapshot there.  A full stream needs VOLUME new or empty; an incremental one rolls VOLUME
    back to the stream's base snapshot first (changes made since are lost).  After an
    interruption, run it again with --resume and the same stream.  Progress goes to stderr
    (against the stream's size when it is a file, else the bytes read and the rate)."""
    cfg = config_for(directory, config_path)

    def say(msg: str) -> None:
        click.echo(msg, err=True)

    if input_path is None and sys.stdin.isatty():
        raise CliError("snapshot receive: stdin is a terminal; redirect a stream to it (or use --input)")
    with contextlib.ExitStack() as stack:
        inp = stack.enter_context(open(input_path, "rb")) if input_path else sys.stdin.buffer
        doc = run(functools.partial(receive, resume=resume, say=say, as_json=as_json), cfg, volume, inp)
    if as_json:
        emit_json(doc)
        return
    base = f" (incremental from {doc['base']})" if doc["base"] else ""
    click.echo(f"received {volume}@{doc['snapshot']}{base}: {doc['records']} records applied", err=True)
