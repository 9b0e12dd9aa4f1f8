"""Streaming object data for the S3 shim: request bodies into blocks, blocks into response bodies.

Memory stays flat whatever the object size:

- :func:`payload` yields a request body piece by piece, removing aws-chunked
  framing (chunk signatures checked as they pass) and feeding every decoded
  byte to :class:`~dfs.core.sigv4.BodyChecks`;
- :class:`BlockWriter` cuts the bytes into the filesystem's fixed-size
  blocks and stores each one (hash, compress, fsync) while the next is being
  received, with at most ``parallel`` blocks in flight; whole blocks of an
  existing file can be appended by reference instead (server-side copy and
  multipart completion share chunks rather than copying them);
- :func:`read_range` yields the bytes of a byte range of a file, a block at a
  time, each verified by the chunk codec, with the next block fetched while
  the current one is being sent.

Nothing here is committed to metadata: callers commit the returned block
refs in one transaction, so an object is either wholly visible or absent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import trio

from daemon.http import Request
from dfs.client.cluster import Client
from dfs.core.errors import S3Error
from dfs.core.keys import VolumeCodec
from dfs.core.namespace import BlockRef, FileMap
from dfs.core.replicas import Policy
from dfs.core.sigv4 import AuthContext, BodyChecks, ChunkedDecoder

_PIECE_BYTES = 256 * 1024


async def payload(
    req: Request, ctx: AuthContext, checks: BodyChecks, *, max_bytes: int
) -> AsyncIterator[bytes]:
    """The decoded request body, verified as it streams; ends after ``checks.finish``."""
    decoder = ChunkedDecoder(ctx) if ctx.payload.startswith("STREAMING-") else None
    total = 0
    while True:
        raw = await req.receive_some(_PIECE_BYTES)
        if not raw:
            break
        data = decoder.feed(raw) if decoder is not None else raw
        if data:
            total += len(data)
            if total > max_bytes:
                raise S3Error("EntityTooLarge", f"Your proposed upload exceeds the maximum of {max_bytes}")
            checks.update(data)
            yield data
    trailers = decoder.finish() if decoder is not None else None
    expected = req.content_length
    if decoder is None and expected is not None and total != expected:
        raise S3Error("IncompleteBody", "You did not provide the number of bytes specified by Content-Length")
    checks.finish(trailers)


class BlockWriter:
    """Cuts a byte stream into blocks and stores them, a few at a time."""

    def __init__(
        self,
        client: Client,
        nursery: trio.Nursery,
        *,
        parallel: int = 2,
        policy: Policy | None = None,
        volume_codec: VolumeCodec | None = None,
        sse_c: tuple[bytes, bytes] | None = None,
        share: bool | None = None,
    ) -> None:
        self._client = client
        self._policy = policy
        # The destination volume's compression and encryption; an encrypted one takes no block by
        # reference (it may be another volume's plain chunk): copies re-encode (dedup within the
        # volume still stores nothing twice).
        self._volume_codec = volume_codec
        self._by_reference = volume_codec is None or not volume_codec.key_id
        # S3 server-side encryption (daemon/s3/sse.py): SSE-C keys, and whether blocks already
        # encrypted as this object wants may be shared (parts at a multipart completion).
        self._sse_c = sse_c
        if share is not None:
            self._by_reference = share
        self._nursery = nursery
        self.block_size = client.block_size
        self._buf = bytearray()
        self._offset = 0  # stream offset of the buffer's first byte: always block-aligned
        self._refs: dict[int, BlockRef] = {}
        self._parallel = parallel
        self._slots = trio.Semaphore(parallel)
        self._closed = False  # a short block was added by reference: it must be the last

    @property
    def size(self) -> int:
        return self._offset + len(self._buf)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self._closed, "nothing may follow a short block"
        view = memoryview(data)
        bs = self.block_size
        while view:
            room = bs - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) == bs:
                await self._flush()

    def aligned(self) -> bool:
        """True when the next byte starts a block: a whole block may then be added by reference."""
        return not self._buf and not self._closed and self._by_reference

    def add_ref(self, ref: BlockRef) -> None:
        """Append an existing block (``ref.length`` bytes: a whole block unless it ends the stream)."""
        assert self.aligned(), "add_ref needs the stream to be at a block boundary"
        index = self._offset // self.block_size
        self._refs[index] = BlockRef(index, ref.chunk_id, ref.length, ref.stored_bytes)
        self._offset += ref.length
        self._closed = ref.length < self.block_size

    async def _flush(self) -> None:
        index = self._offset // self.block_size
        data = bytes(self._buf)
        self._offset += len(data)
        self._buf.clear()
        await self._slots.acquire()
        self._nursery.start_soon(self._store, index, data)

    async def _store(self, index: int, data: bytes) -> None:
        try:
            if data.count(0) == len(data):
                # An all-zero block is a hole: nothing to store, reads give zeros.
                self._refs[index] = BlockRef(index, b"", len(data), 0)
            else:
                self._refs[index] = await self._client.write_block(
                    index, data, self._policy, volume_codec=self._volume_codec, sse_c=self._sse_c
                )
        finally:
            self._slots.release()

    async def finish(self, inline_max: int) -> tuple[list[BlockRef], bytes | None]:
        """Store the tail and wait for every block: (block refs, or the bytes of a small object)."""
        if (self._volume_codec is not None and self._volume_codec.key_id) or self._sse_c is not None:
            inline_max = 0  # an encrypted volume's objects never live inline: metadata is not encrypted
        if self._offset == 0 and len(self._buf) <= inline_max:
            return [], bytes(self._buf)
        if self._buf:
            await self._flush()
        # Every store holds a slot until it is done: taking them all waits for the last one.
        for _ in range(self._parallel):
            await self._slots.acquire()
        for _ in range(self._parallel):
            self._slots.release()
        return [self._refs[i] for i in sorted(self._refs) if self._refs[i].chunk_id], None


@contextlib.asynccontextmanager
async def open_block_writer(
    client: Client,
    *,
    parallel: int = 2,
    policy: Policy | None = None,
    volume_codec: VolumeCodec | None = None,
    sse_c: tuple[bytes, bytes] | None = None,
    share: bool | None = None,
) -> AsyncIterator[BlockWriter]:
    async with trio.open_nursery() as nursery:
        yield BlockWriter(
            client,
            nursery,
            parallel=parallel,
            policy=policy,
            volume_codec=volume_codec,
            sse_c=sse_c,
            share=share,
        )


async def _block_bytes(client: Client, fmap: FileMap, index: int, customer_key: bytes | None = None) -> bytes:
    """Block ``index`` of a file, ``min(block_size, size - start)`` bytes, holes as zeros
    (``customer_key``: what opens an SSE-C object's chunks)."""
    bs = client.block_size
    want = max(0, min(bs, fmap.attr.size - index * bs))
    ref = _ref_at(fmap, index)
    if ref is None or not ref.chunk_id:
        return bytes(want)
    data = await client.read_chunk(ref.chunk_id, customer_key)
    valid = data[: min(ref.length, want)]
    return valid if len(valid) == want else valid + bytes(want - len(valid))


def _ref_at(fmap: FileMap, index: int) -> BlockRef | None:
    # Block maps are sorted by index; a bisect keeps huge files cheap.
    lo, hi = 0, len(fmap.blocks)
    while lo < hi:
        mid = (lo + hi) // 2
        if fmap.blocks[mid].index < index:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(fmap.blocks) and fmap.blocks[lo].index == index:
        return fmap.blocks[lo]
    return None


async def read_range(
    client: Client, fmap: FileMap, start: int, end: int, customer_key: bytes | None = None
) -> AsyncGenerator[bytes, None]:
    """Bytes ``start..end`` (exclusive) of a file as verified pieces, one block at a time."""
    if start >= end:
        return
    if fmap.inline is not None or not fmap.blocks:
        data = fmap.inline or b""
        piece = data[start:end]
        yield piece + bytes(end - start - len(piece))
        return
    bs = client.block_size
    for index in range(start // bs, (end - 1) // bs + 1):
        yield _cut(await _block_bytes(client, fmap, index, customer_key), index * bs, start, end)


def _cut(data: bytes, base: int, start: int, end: int) -> bytes:
    lo, hi = max(start, base) - base, min(end, base + len(data)) - base
    return data if (lo, hi) == (0, len(data)) else data[lo:hi]


async def prefetched_range(
    client: Client,
    fmap: FileMap,
    start: int,
    end: int,
    nursery: trio.Nursery,
    customer_key: bytes | None = None,
) -> AsyncGenerator[bytes, None]:
    """:func:`read_range`, with the next block read and verified while this one is sent.

    The reader runs in ``nursery`` (the server's) and hands blocks over a
    one-slot channel, so at most two blocks are in memory.  When the consumer
    stops early (client gone) closing the channel ends the reader.
    """
    bs = client.block_size
    if fmap.inline is not None or (end - start) <= bs:
        async for piece in read_range(client, fmap, start, end, customer_key):
            yield piece
        return
    send, receive = trio.open_memory_channel[tuple[bytes, BaseException | None]](1)

    async def reader() -> None:
        # Runs in the server's nursery: it must never raise, or it would take the server down.
        async with send:
            for index in range(start // bs, (end - 1) // bs + 1):
                item: tuple[bytes, BaseException | None]
                try:
                    block = await _block_bytes(client, fmap, index, customer_key)
                    item = (_cut(block, index * bs, start, end), None)
                except Exception as exc:  # handed to the consumer, which fails the response
                    item = (b"", exc)
                try:
                    await send.send(item)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the consumer went away
                if item[1] is not None:
                    return

    nursery.start_soon(reader)
    with receive:
        async for piece, error in receive:
            if error is not None:
                raise error
            yield piece


async def copy_range(
    writer: BlockWriter,
    client: Client,
    fmap: FileMap,
    start: int,
    end: int,
    *,
    final: bool,
    customer_key: bytes | None = None,
) -> None:
    """Append bytes ``start..end`` of a file to ``writer``, sharing whole blocks where alignment allows.

    ``final`` says nothing will be appended after this range, so a short last
    block may be shared too.
    """
    bs = client.block_size
    pos = start
    while pos < end:
        index = pos // bs
        ref = _ref_at(fmap, index) if fmap.inline is None else None
        block_end = min((index + 1) * bs, fmap.attr.size)
        if (
            ref is not None
            and ref.chunk_id
            and pos == index * bs
            and writer.aligned()
            and ref.length == block_end - pos
            and block_end <= end
            and (ref.length == bs or (final and block_end == end))
        ):
            writer.add_ref(ref)
            pos = block_end
            continue
        stop = min(end, (index + 1) * bs)
        async for piece in read_range(client, fmap, pos, stop, customer_key):
            await writer.write(piece)
        pos = stop
