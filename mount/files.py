"""Per-inode file state of the mount: write buffers, block reads, commits.

Design note
-----------
One :class:`OpenFile` exists per inode while any handle on it is open
(writeback and mmap pages may arrive through any handle, so buffers belong
to the inode, not the handle).  Writes land in per-block ``bytearray``
buffers and are acknowledged at once; a block that fills up is snapshotted
and uploaded in the background, so a sequential writer keeps the codec
threads and the daemon busy.

A new block written from its start in order (a sequential writer past the
end of the file) is not copied at all: its writes are kept as the kernel
handed them over (:class:`_Appends`) and the codec thread reads them in
place, copying the bytes once, into the encoded chunk.  Anything else that
touches such a block (a read, an overwrite, a gap) first turns it into an
ordinary buffer.  ``flush`` (close), ``fsync`` and ``release``
upload what is left and commit the block map in one metadata transaction;
nothing is referenced before its chunk is durable.

Every state change happens in synchronous code between awaits, so handler
tasks interleave safely on the trio thread.  Uploads finish in any order,
so each dirty block carries a version: only the newest upload of an index
may enter the commit.
"""

from __future__ import annotations

import logging
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field

import trio

from dfs.client.cluster import Client
from dfs.core.errors import ChunkMissing, DfsError, InternalError, NoSpace, QuotaExceeded
from dfs.core.keys import VolumeCodec
from dfs.core.namespace import Attr, BlockRef, FileMap, chown_clears
from dfs.core.replicas import Policy

log = logging.getLogger("dfs.mount")
_PREFETCH_BLOCKS = 4


class BlockCache:
    """LRU of decoded chunk plaintext keyed by chunk id (content ids never go stale).

    With ``written`` (the mount's :class:`DirtyBudget`), the cache and the mount's written
    data share its capacity: while written data is held the cache keeps only what is left,
    and never less than an eighth (so readahead still finds the blocks it fetched).  Reads
    and writes then need the memory one at a time, not together: a random writer's buffers
    and a random reader's cache each have the whole capacity, and a mount's peak is about
    the larger of the two, not their sum."""

    def __init__(self, capacity_bytes: int, written: DirtyBudget | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._written = written
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._loading: dict[bytes, trio.Event] = {}
        if written is not None:
            written.on_grow = self.shrink

    def room_bytes(self) -> int:
        """What the cache may hold now."""
        if self._written is None:
            return self.capacity_bytes
        return max(self.capacity_bytes - self._written.written_bytes(), self.capacity_bytes // 8)

    def shrink(self) -> None:
        """Let the least recently used blocks go until the cache is within its room."""
        if self.used_bytes <= self.capacity_bytes // 8:
            return  # the floor: nothing to let go, and no sum to take on every write
        self._let_go(self.room_bytes())

    def _let_go(self, room: int, keep: int = 0) -> None:
        """Drop the least recently used blocks until ``room`` is kept, sparing the ``keep``
        newest."""
        while self.used_bytes > room and len(self._items) > keep:
            _, old = self._items.popitem(last=False)
            self.used_bytes -= len(old)

    def get_nowait(self, chunk_id: bytes) -> bytes | None:
        data = self._items.get(chunk_id)
        if data is not None:
            self._items.move_to_end(chunk_id)
        return data

    def is_loading(self, chunk_id: bytes) -> bool:
        return chunk_id in self._loading

    def put(self, chunk_id: bytes, data: bytes) -> None:
        if len(data) > self.capacity_bytes or chunk_id in self._items:
            return
        self._items[chunk_id] = data
        self.used_bytes += len(data)
        self._let_go(self.room_bytes(), keep=1)  # the block just put stays, whatever the room

    async def get(self, client: Client, chunk_id: bytes) -> bytes:
        while True:
            data = self.get_nowait(chunk_id)
            if data is not None:
                return data
            pending = self._loading.get(chunk_id)
            if pending is None:
                break
            # Someone else is fetching it (readahead); wait instead of fetching twice.
            await pending.wait()
            if chunk_id not in self._items and chunk_id not in self._loading:
                break
        done = trio.Event()
        self._loading[chunk_id] = done
        try:
            data = await client.read_chunk(chunk_id)
            self.put(chunk_id, data)
            return data
        finally:
            del self._loading[chunk_id]
            done.set()


# A block's bytes: one buffer, or the pieces a sequential writer appended.
_BlockData = bytes | bytearray | tuple[bytes | memoryview, ...]


def _as_bytes(data: _BlockData) -> bytes | bytearray:
    return b"".join(data) if isinstance(data, tuple) else data


class _Appends:
    """The writes appended to a new block so far, uncopied (the kernel's ``bytes`` are immutable)."""

    __slots__ = ("length", "pieces")

    def __init__(self) -> None:
        self.pieces: list[bytes | memoryview] = []
        self.length = 0


class _Buffers(MutableMapping[int, bytearray]):
    """A file's block buffers, their bytes counted in the mount's :class:`DirtyBudget`.

    Every way a buffer enters or leaves goes through ``__setitem__``/``__delitem__``; a write
    that lengthens one in place reports it (:meth:`grew`)."""

    __slots__ = ("_budget", "_items")

    def __init__(self, budget: DirtyBudget) -> None:
        self._items: dict[int, bytearray] = {}
        self._budget = budget

    def __getitem__(self, index: int) -> bytearray:
        return self._items[index]

    def get(self, index: int, default: bytearray | None = None) -> bytearray | None:  # type: ignore[override]
        return self._items.get(index, default)

    def __contains__(self, index: object) -> bool:
        return index in self._items

    def __setitem__(self, index: int, buf: bytearray) -> None:
        old = self._items.get(index)
        self._items[index] = buf
        self._budget.buffered(len(buf) - (len(old) if old is not None else 0))

    def __delitem__(self, index: int) -> None:
        self._budget.buffered_bytes -= len(self._items.pop(index))

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def grew(self, delta: int) -> None:
        self._budget.buffered(delta)


@dataclass
class _Upload:
    version: int
    data: _BlockData
    size: int
    ref: BlockRef | None = None
    error: DfsError | None = None
    done: trio.Event = field(default_factory=trio.Event)
    held: bool = False  # stored, its bytes still kept for the commit (DirtyBudget.held_bytes)
    started: bool = False  # past the budget: being stored (before, it waits for the budget)


class OpenFile:
    """What this mount knows about one open regular file."""

    def __init__(
        self,
        ino: int,
        fmap: FileMap,
        client: Client,
        cache: BlockCache,
        budget: DirtyBudget,
        *,
        attr_timeout_s: float = 1.0,
    ) -> None:
        self.ino = ino
        self.attr_timeout_s = attr_timeout_s
        self.client = client
        self.cache = cache
        self.budget = budget
        self.block_size = client.block_size
        self.handles = 0
        self._load_map(fmap)
        self.dirty = _Buffers(budget)
        self.appends: dict[int, _Appends] = {}  # blocks without a buffer yet (see the design note)
        self.versions: dict[int, int] = {}
        self.uploads: dict[int, _Upload] = {}
        self._committing_early = False
        self.mtime_ns = fmap.attr.mtime_ns
        # The time of this mount's last write(2), while it may be newer than what the
        # daemon answers (a getattr racing our commit).  None once an explicit utime
        # (or a fresh view of the file) has set the mtime: then the daemon's answer,
        # or the pending utime, is the truth, as POSIX requires of the next stat.
        self.write_mtime_ns: int | None = None
        self.commit_lock = trio.Lock()
        # Created by this mount and not closed since (a flush ends it): its chmod/chown/utime
        # may wait for the commit at close (see hold_attrs), like its data.
        self.fresh = False
        self.pending_attrs: dict[str, int] = {}
        # Replication factor and consistency level for this file's blocks, asked once per open file.
        self.policy: Policy | None = None
        self.parent: int | None = None  # a directory this file was reached through (for its policy)
        # The top-level directory (volume) the file is in, when the mount could tell from its
        # cache of parents (fs.py); not known: asked once (Client.volume_of).
        self.volume: int | None = None
        self.volume_known = False
        # The store is full (or the quota reached): set when storing or committing this file
        # failed so, until a commit succeeds.  Writes then retry that commit first and fail as
        # it does, as a full ext4 fails write(2): kept in memory instead, a writer filling a
        # full store grew the mount without bound.
        self.full_error: DfsError | None = None

    # -- state ------------------------------------------------------------------
    def _load_map(self, fmap: FileMap) -> None:
        self.set_attr(fmap.attr)
        self.size = fmap.attr.size
        self.inline: bytes | None = fmap.inline
        self.blocks: dict[int, BlockRef] = {b.index: b for b in fmap.blocks}

    def set_attr(self, attr: Attr) -> None:
        self.attr = attr
        self.attr_fresh_until = time.monotonic() + self.attr_timeout_s

    def mtime_set(self, attr: Attr) -> None:
        """The daemon applied an explicit utime: its mtime now beats our last write's."""
        self.set_attr(attr)
        if not (self.dirty or self.appends or self.uploads):
            self.write_mtime_ns = None
            self.mtime_ns = attr.mtime_ns

    def refresh(self, fmap: FileMap) -> None:
        """Adopt the daemon's view (after open by another writer); only when nothing is pending."""
        if not self.is_dirty:
            self._load_map(fmap)
            self.mtime_ns = fmap.attr.mtime_ns
            self.write_mtime_ns = None

    @property
    def held_bytes(self) -> int:
        """Bytes of blocks stored but not yet committed, still kept in memory (a read may want
        them, a commit may store them again); all files' together are the budget's."""
        return sum(up.size for up in self.uploads.values() if up.held)

    @property
    def is_dirty(self) -> bool:
        return bool(self.dirty or self.appends or self.uploads or self.pending_attrs)

    def hold_attrs(self, changes: dict[str, int], now_ns: int) -> Attr:
        """Apply chmod/chown/utime locally, to be sent with the commit at close.

        Only for files this mount created and still holds open (untar, cp -a and
        rsync set modes, owners and times through the fd they are writing): other
        mounts see them at close, with the data, as close-to-open promises.  The
        result is exactly what applying the calls one by one would give: the
        chown rule is applied here and the mode is then always sent explicitly.
        """
        pending = self.pending_attrs
        mode = pending.get("mode", stat.S_IMODE(self.attr.mode))
        if "mode" in changes:
            mode = changes["mode"]
        elif "uid" in changes or "gid" in changes:
            mode = chown_clears(mode)
        pending.update(changes)
        pending["mode"] = mode
        if "mtime_ns" in changes:
            self.write_mtime_ns = None
        self.set_attr(self.attr._replace(ctime_ns=now_ns))
        return self.overlay(self.attr)

    def overlay(self, attr: Attr) -> Attr:
        """Attributes as the kernel should see them, including unflushed writes.

        While the file is open here, this mount's size wins even when clean: a
        getattr answered by the daemon just before our own commit landed would
        otherwise hand the kernel a stale, smaller size, and the next O_APPEND
        write would overwrite the tail.
        """
        out = attr._replace(size=self.size)
        if self.write_mtime_ns is not None:
            out = out._replace(mtime_ns=max(attr.mtime_ns, self.write_mtime_ns))
        p = self.pending_attrs
        if p:
            out = out._replace(
                mode=(out.mode & ~0o7777) | p.get("mode", stat.S_IMODE(out.mode)),
                uid=p.get("uid", out.uid),
                gid=p.get("gid", out.gid),
                atime_ns=p.get("atime_ns", out.atime_ns),
                mtime_ns=p.get("mtime_ns", out.mtime_ns),
            )
        return out

    # -- reading ----------------------------------------------------------------
    async def _committed_block(self, index: int) -> bytes:
        """Valid bytes of block ``index`` as committed (may be shorter than a block)."""
        if self.inline is not None:
            return self.inline if index == 0 else b""
        ref = self.blocks.get(index)
        if ref is None:
            return b""
        data = await self.cache.get(self.client, ref.chunk_id)
        return data[: ref.length]

    async def _block_view(self, index: int) -> bytes | bytearray:
        self._to_buffer(index)
        buf = self.dirty.get(index)
        if buf is not None:
            return buf
        up = self.uploads.get(index)
        if up is not None:
            if isinstance(up.data, tuple):
                up.data = _as_bytes(up.data)  # read back while uploading: join once
            return up.data
        return await self._committed_block(index)

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """``size`` bytes at ``offset`` (fewer at the end of the file).

        A read within one committed block comes back as a view of the cached
        plaintext, not a copy: a chunk's plaintext is immutable ``bytes``, and
        pyfuse3 copies the view into its reply before any other task runs.
        That copy was about a seventh of the mount's event-loop time on a
        sequential read.
        """
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        bs = self.block_size
        index, start = divmod(offset, bs)
        if start + (end - offset) <= bs:
            data = await self._block_view(index)
            if type(data) is bytes and start + (end - offset) <= len(data):
                return memoryview(data)[start : start + (end - offset)]
        parts: list[bytes] = []
        pos = offset
        while pos < end:
            index, start = divmod(pos, bs)
            take = min(bs - start, end - pos)
            data = await self._block_view(index)
            piece = bytes(data[start : start + take])
            if len(piece) < take:
                piece += bytes(take - len(piece))  # holes and truncated tails read as zeros
            parts.append(piece)
            pos += take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def prefetch(self, nursery: trio.Nursery, offset: int) -> None:
        """Fetch the next few blocks after ``offset`` so a sequential reader never waits.

        Several blocks in flight keep the daemon's disk reads, the transfer and
        the decoding overlapped; the cache bounds what they can occupy.
        """
        first = offset // self.block_size + 1
        depth = max(1, min(_PREFETCH_BLOCKS, self.cache.capacity_bytes // (4 * self.block_size)))
        for index in range(first, first + depth):
            ref = self.blocks.get(index)
            if ref is None or index in self.dirty or index in self.appends:
                return
            if self.cache.get_nowait(ref.chunk_id) is not None or self.cache.is_loading(ref.chunk_id):
                continue
            nursery.start_soon(self._fetch_quietly, ref.chunk_id)

    async def _fetch_quietly(self, chunk_id: bytes) -> None:
        try:
            await self.cache.get(self.client, chunk_id)
        except DfsError:
            pass  # the foreground read will report it

    # -- writing ----------------------------------------------------------------
    async def write(self, offset: int, data: bytes, nursery: trio.Nursery) -> None:
        if self.full_error is not None:
            await self.commit(nursery)  # raises while the store is still full
            self.full_error = None  # stored now, or nothing was left to store
        bs = self.block_size
        view = memoryview(data)  # slices of a view copy nothing
        pos = 0
        while pos < len(data):
            index, start = divmod(offset + pos, bs)
            take = min(bs - start, len(data) - pos)
            piece = data if take == len(data) else view[pos : pos + take]
            if self._append(index, start, piece):
                full = self.appends[index].length == bs
            else:
                buf = await self._dirty_buffer(index, covers_all=(start == 0 and take == bs))
                before = len(buf)
                if before < start:
                    buf.extend(bytes(start - before))
                buf[start : start + take] = piece
                self.dirty.grew(len(buf) - before)  # (buf is dirty[index]: no await since)
                full = len(buf) == bs and start + take == bs
            # Every change bumps the version, so a commit racing this write keeps it dirty.
            self.versions[index] += 1
            pos += take
            # Before any wait: a commit that takes this block's version takes its size too.
            self.size = max(self.size, offset + pos)
            if full:
                await self._start_upload(index, nursery, writer=True)
            elif self.budget.buffers_over():
                await self._store_buffers(index, nursery)
        self.mtime_ns = self.write_mtime_ns = time.time_ns()
        self.pending_attrs.pop("mtime_ns", None)  # a write after utime sets mtime to now

    def _append(self, index: int, start: int, piece: bytes | memoryview) -> bool:
        """Keep ``piece`` uncopied if it continues a new block written in order; False: it does not."""
        app = self.appends.get(index)
        if app is None:
            # Only a block with nothing before it: past the end of the file (so nothing
            # committed counts), no buffer, no upload of an older version.
            if start or index * self.block_size < self.size or index in self.dirty or index in self.uploads:
                return False
            app = self.appends[index] = _Appends()
            self.versions.setdefault(index, 0)
        elif start != app.length:
            self._to_buffer(index)
            return False
        app.pieces.append(piece)
        app.length += len(piece)
        return True

    def _to_buffer(self, index: int) -> None:
        """Turn a block's appended pieces into an ordinary buffer (one copy)."""
        app = self.appends.pop(index, None)
        if app is not None:
            self.dirty[index] = bytearray().join(app.pieces)

    async def _store_buffers(self, keep: int, nursery: trio.Nursery) -> None:
        """Store this file's oldest buffers but ``keep`` (the block just written) while the
        mount's buffers pass their budget (DirtyBudget.buffers_over).  Writes scattered over a
        large file made a buffer of every block they touched, without bound (a random writer
        over 1.5 GiB took the mount to 2.1 GiB); stored, a block's bytes go with the early
        commit that follows, and a later write starts a new buffer from the stored block."""
        for index in list(self.dirty):
            if not self.budget.buffers_over():
                return
            if index != keep and index in self.dirty:  # (a wait below may have stored it)
                await self._start_upload(index, nursery, writer=True)

    async def _dirty_buffer(self, index: int, *, covers_all: bool) -> bytearray:
        self._to_buffer(index)
        buf = self.dirty.get(index)
        if buf is not None:
            return buf
        if covers_all:
            initial: bytes | bytearray = b""
        else:
            initial = await self._block_view(index)
            valid = max(0, min(len(initial), self.size - index * self.block_size))
            initial = initial[:valid]
        # Re-check: another task may have created the buffer while we awaited.
        buf = self.dirty.get(index)
        if buf is None:
            buf = bytearray(initial)
            self.dirty[index] = buf
            self.versions.setdefault(index, 0)
        return buf

    async def _start_upload(self, index: int, nursery: trio.Nursery, *, writer: bool) -> None:
        # The buffer itself becomes the upload (no copy): it is never written again,
        # a later write to this block starts a new buffer from it.
        app = self.appends.pop(index, None)
        data: _BlockData = tuple(app.pieces) if app is not None else self.dirty.pop(index)
        size = app.length if app is not None else len(data)
        # Taken and registered with no wait between: a write landing while this waits for the
        # budget starts from this upload's bytes and supersedes it.  (Registered after the
        # wait, a commit's upload of a block still being filled could supersede the writer's
        # newer one of the full block and commit the older, shorter bytes; and meanwhile the
        # block's bytes were in no buffer a read could see.)
        up = _Upload(self.versions[index], data, size)
        self._forget_upload(index)
        self.uploads[index] = up
        try:
            await self.budget.acquire(size, writer=writer)
        except BaseException:
            # Cancelled (unmount): a commit waiting for it must not wait forever, and one
            # retrying later puts the bytes back in a buffer (see commit).
            up.error = InternalError("block upload cancelled")
            up.done.set()
            raise
        up.started = True
        nursery.start_soon(self._upload, index, up, nursery)

    def _forget_upload(self, index: int) -> None:
        """Drop block ``index``'s upload, if any, from ``uploads`` (and its bytes from the count)."""
        up = self.uploads.pop(index, None)
        if up is not None and up.held:
            up.held = False
            self.budget.unhold(up.size)

    async def _policy(self) -> Policy | None:
        if self.policy is None and self.client.chunkio is not None:
            self.policy = await self.client.write_policy(self.ino, self.parent)
        return self.policy

    async def _codec(self) -> VolumeCodec:
        """How this file's blocks are encoded now (its volume's compression and encryption):
        from the client's ring of volume codecs, no metadata call per file."""
        if not self.volume_known:
            self.volume = await self.client.volume_of(self.ino, self.parent)
            self.volume_known = True
        return await self.client.volume_codec(self.volume)

    async def _upload(self, index: int, up: _Upload, nursery: trio.Nursery) -> None:
        try:
            up.ref = await self.client.write_block(
                index, up.data, await self._policy(), volume_codec=await self._codec()
            )
            if self.uploads.get(index) is up:
                up.held = True
                # All files' held bytes count: several long writers together stay within the
                # budget, not each of them (four parallel `dd`s held four budgets' worth).
                if self.budget.hold(up.size) and not self._committing_early:
                    self._committing_early = True
                    self.budget.early_commit_due()
                    nursery.start_soon(self._commit_early, nursery)
        except DfsError as exc:
            up.error = exc
            self._note_full(exc)
        except Exception as exc:
            log.exception("block upload failed", extra={"ctx": {"ino": self.ino, "block": index}})
            up.error = InternalError(f"block upload failed: {exc}")
        finally:
            self.budget.release(up.size)
            up.done.set()

    # -- committing -------------------------------------------------------------
    async def _commit_early(self, nursery: trio.Nursery) -> None:
        """Commit what is stored so far, before close, to let go of its bytes.  A failure keeps
        the data dirty: the next flush, fsync or close tries again and reports it."""
        try:
            # A commit running already lets the stored blocks go itself; waiting for it could
            # wait for a writer whose block waits for this one (the held bytes it counts).
            if not self.commit_lock.locked():
                await self.commit(nursery, early=True)
        except DfsError as exc:
            log.warning(
                "early commit failed (retried at close): %s", exc.message, extra={"ctx": {"ino": self.ino}}
            )
        except Exception:
            # A background task: a bug here must not take the mount's nursery down.
            log.exception("early commit failed (retried at close)", extra={"ctx": {"ino": self.ino}})
        finally:
            self._committing_early = False
            self.budget.early_commit_ended()

    async def commit(self, nursery: trio.Nursery, *, early: bool = False) -> Attr | None:
        """Upload what is dirty and commit it; returns the new attributes, or None if clean.

        ``early``: only the blocks stored or being stored, to let their bytes go while the
        file is still being written.  A block still being filled stays as it is: storing it
        now would store it again once full.  The size committed then ends with the stored
        blocks, so a crash shows no hole where unstored bytes were.
        """
        async with self.commit_lock:
            if not self.is_dirty:
                return None
            if early and not any(up.started for up in self.uploads.values()):
                return None  # nothing stored to let go of (a close committed it meanwhile)
            return await self._commit(nursery, early=early)

    async def _commit(self, nursery: trio.Nursery, *, early: bool) -> Attr | None:
        """:meth:`commit`, holding the commit lock.  An early commit waits for no block that
        waits for the budget: such a block may be waiting for this commit to end."""
        attrs = dict(self.pending_attrs)
        if not (self.dirty or self.appends or self.uploads):
            attr, _ = await self.client.setattr(self.ino, **attrs)
            self._attrs_sent(attrs)
            self.set_attr(attr)
            return attr
        # An encrypted volume's files never live inline: metadata is not encrypted.  Asked
        # before the snapshot below, since it may wait for the daemon: a write landing
        # during that wait must be inside the snapshot of size and versions, or outside
        # both (then it stays dirty), never inside the versions only, which dropped it.
        checked = bool(self.size) and self.inline_candidate(self.size)
        encrypted = checked and bool((await self._codec()).key_id)
        size = self.size
        mtime_ns = self.mtime_ns
        if early and self.inline_candidate(size):
            return None  # small enough to go inline at close: no block to let go of
        if self.inline_candidate(size) and (size == 0 or (checked and not encrypted)):
            for index in list(self.appends):
                self._to_buffer(index)
            # Snapshot versions before reading: a write racing the read stays dirty.
            versions = {i: self.versions[i] for i in self.dirty}
            inline = bytes(await self.read(0, size))
            attr = await self.client.commit_write(
                self.ino, size=size, mtime_ns=mtime_ns, blocks=[], inline=inline, attrs=attrs
            )
            self._attrs_sent(attrs)
            self._after_commit(versions, size, [], inline, attr)
            return attr
        if self.inline is not None and not {0} & (
            self.dirty.keys() | self.appends.keys() | self.uploads.keys()
        ):
            # An inline file growing into blocks: block 0 must carry the old bytes.
            self.dirty[0] = bytearray(self.inline)
            self.versions.setdefault(0, 0)
        # Early: only an inline file's block 0, which must go with the first blocks.
        todo = ([0] if self.inline is not None else []) if early else [*self.dirty, *self.appends]
        for index in todo:
            if index in self.dirty or index in self.appends:  # not uploaded while we awaited
                await self._start_upload(index, nursery, writer=False)
        if early and self.inline is not None and not (0 in self.uploads and self.uploads[0].started):
            return None  # block 0, carrying the inline bytes, waits for the budget: at close then
        uploads = {i: up for i, up in self.uploads.items() if up.started or not early}
        versions = {i: up.version for i, up in uploads.items()}
        # The size goes with the blocks taken, with no wait between: a write that landed
        # while the blocks above were being started is either in them (its size counts,
        # or its block would be marked clean past the committed size) or still dirty (its
        # size waits for it: a crash must not show zeros where its bytes were).  An early
        # commit's size ends with the blocks it stores.
        end = max((i * self.block_size + up.size for i, up in uploads.items()), default=0)
        size = min(self.size, max(self.attr.size if early else size, end))
        mtime_ns = self.mtime_ns
        for up in uploads.values():
            await up.done.wait()
        errors = [up.error for up in uploads.values() if up.error is not None]
        if errors:
            # Keep the data dirty so a later fsync/close can retry.
            for index, up in uploads.items():
                if self.uploads.get(index) is up and up.error is not None:
                    self._forget_upload(index)
                    if index not in self.appends:
                        self.dirty.setdefault(index, bytearray(_as_bytes(up.data)))
            raise errors[0]
        refs = [up.ref for up in uploads.values() if up.ref is not None]
        policy = await self._policy()

        async def commit_refs() -> Attr:
            return await self.client.commit_write(
                self.ino,
                size=size,
                mtime_ns=mtime_ns,
                blocks=refs,
                inline=None,
                attrs=attrs,
                replicas=policy.replicas if policy else None,
            )

        try:
            attr = await commit_refs()
        except (NoSpace, QuotaExceeded) as exc:
            self._note_full(exc)
            raise
        except ChunkMissing:
            # A copy we relied on (dedup) was collected meanwhile: store every block again.
            for index, up in uploads.items():
                up.ref = await self.client.write_block(
                    index, up.data, policy, force=True, volume_codec=await self._codec()
                )
            refs = [up.ref for up in uploads.values() if up.ref is not None]
            attr = await commit_refs()
        self._attrs_sent(attrs)
        self._after_commit(versions, size, refs, None, attr)
        return attr

    def _note_full(self, exc: DfsError) -> None:
        if isinstance(exc, (NoSpace, QuotaExceeded)):
            self.full_error = exc

    def discard(self) -> None:
        """Let go of what could not be stored: after the last close, with the store full, no
        one is left to retry it (close(2) or fsync(2) reported the error)."""
        for index in list(self.uploads):
            self._forget_upload(index)
        self.dirty.clear()
        self.appends.clear()
        self.pending_attrs.clear()
        self.full_error = None
        self.size = self.attr.size  # back to what was committed
        self.mtime_ns = self.attr.mtime_ns
        self.write_mtime_ns = None

    def _attrs_sent(self, sent: dict[str, int]) -> None:
        # Keep what changed meanwhile: it goes with the next commit.
        for key, value in sent.items():
            if self.pending_attrs.get(key) == value:
                del self.pending_attrs[key]

    def inline_candidate(self, size: int) -> bool:
        return size <= self.client.inline_max and (self.inline is not None or not self.blocks)

    def _after_commit(
        self, versions: dict[int, int], size: int, refs: list[BlockRef], inline: bytes | None, attr: Attr
    ) -> None:
        if inline is not None:
            self.inline = inline
            self.blocks = {}
        else:
            self.inline = None
            for ref in refs:
                self.blocks[ref.index] = ref
            bs = self.block_size
            for index in [i for i in self.blocks if i * bs >= size]:
                del self.blocks[index]
        # Drop only what this commit covered: newer writes stay dirty.
        for index, version in versions.items():
            up = self.uploads.get(index)
            if up is not None and up.version == version:
                self._forget_upload(index)
            if inline is not None and index in self.dirty and self.versions.get(index) == version:
                del self.dirty[index]
        self.set_attr(attr)
        self.full_error = None
        if not self.is_dirty:
            self.size = attr.size


class DirtyBudget:
    """Caps the bytes of block snapshots a mount keeps, so writers wait instead of exhausting
    memory: those in flight to the daemon (``used_bytes``) and those stored but kept until
    their file's commit (``held_bytes``) together.  Past half the capacity held, a file whose
    block was just stored commits early to let its bytes go; the writers go on meanwhile,
    within the other half.  The files' block buffers (``buffered_bytes``) have a capacity of
    their own (:meth:`buffers_over`)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.held_bytes = 0
        self.buffered_bytes = 0  # in files' block buffers, not yet snapshotted (_Buffers)
        self.early_commits = 0  # running now, in any file
        self._waiters: list[trio.Event] = []
        # Called when the written bytes grew (the BlockCache sharing this capacity shrinks).
        self.on_grow: Callable[[], None] | None = None

    def written_bytes(self) -> int:
        """Written data the mount holds: in flight, stored until their commit, and buffered."""
        return self.used_bytes + self.held_bytes + self.buffered_bytes

    def buffered(self, delta: int) -> None:
        """Files' block buffers grew (or shrank) by ``delta`` bytes."""
        self.buffered_bytes += delta
        if delta > 0 and self.on_grow is not None:
            self.on_grow()

    async def acquire(self, n: int, *, writer: bool) -> None:
        """Wait until ``n`` more bytes may go in flight.  A commit's own blocks (``writer``
        False) wait only for those in flight: held bytes go only when a commit ends, and that
        commit may be this one.  A writer waits for held bytes only while an early commit runs,
        which lets them go when it ends; one that failed must not stop every writer."""
        while self._over(n, writer):
            event = trio.Event()
            self._waiters.append(event)
            await event.wait()
        self.used_bytes += n
        if self.on_grow is not None:
            self.on_grow()

    def _over(self, n: int, writer: bool) -> bool:
        held = self.held_bytes if writer and self.early_commits else 0
        if self.used_bytes == 0 and held == 0:
            return False  # alone, a request proceeds even past the capacity: nothing waits forever
        return self.used_bytes + held + n > self.capacity_bytes

    def buffers_over(self) -> bool:
        """The files' block buffers pass the capacity: a file that just wrote into a buffer
        stores its older ones (OpenFile._store_buffers).  They have a capacity of their own,
        not a share of the one for blocks in flight and held: a random writer then keeps a
        working set of the whole capacity buffered (storing a buffer costs a whole block), while
        the stores it causes have the other capacity to themselves."""
        return self.buffered_bytes > self.capacity_bytes

    def release(self, n: int) -> None:
        """``n`` bytes are no longer in flight (stored, or failed)."""
        self.used_bytes -= n
        self._wake()

    def hold(self, n: int) -> bool:
        """``n`` stored bytes are kept until their commit; True: time for an early commit."""
        self.held_bytes += n
        return self.held_bytes >= self.capacity_bytes // 2

    def unhold(self, n: int) -> None:
        self.held_bytes -= n
        self._wake()

    def early_commit_due(self) -> None:
        """An early commit is about to start.  Counted from now: writers wait for held bytes
        while one is due or runs (it never waits for a writer's block, see
        OpenFile._commit_early), and it lets them go when it ends."""
        self.early_commits += 1

    def early_commit_ended(self) -> None:
        self.early_commits -= 1
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()
