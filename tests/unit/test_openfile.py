"""The mount's per-inode write buffers (mount/files.py) against a byte-array model.

A fake in-memory client stands in for the daemon (blocks, inline data, block
maps, commits), with deliberately tiny blocks so random writes cross block
boundaries, grow inline files into blocks and leave holes.  After every
operation the file read through the OpenFile equals the model; after every
commit the committed state read back alone equals it too.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.core.errors import ChunkMissing, NoSpace
from dfs.core.keys import VolumeCodec
from dfs.core.namespace import Attr, BlockRef, FileMap
from mount.files import BlockCache, DirtyBudget, OpenFile

BS = 64
INLINE_MAX = 40


class FakeClient:
    block_size = BS
    inline_max = INLINE_MAX
    chunkio = None

    def __init__(self) -> None:
        self.pieced = 0  # blocks handed over as the writes' own pieces (no copy)
        self.stored: list[int] = []  # the block index of each write_block, in order
        self.chunks: dict[bytes, bytes] = {}
        self.size = 0
        self.inline: bytes | None = None
        self.blocks: dict[int, BlockRef] = {}
        self.attrs: dict[str, int] = {}
        self.commits = 0
        self.forced = 0
        self.lose_chunks_once = False  # the next commit finds its chunks collected (ChunkMissing)
        self.volume_gate: trio.Event | None = None
        self.commit_gate: trio.Event | None = None
        self.full = False  # the store refuses new chunks (ENOSPC)

    def fmap(self) -> FileMap:
        attr = Attr(5, 0o100644, 1, 0, 0, 0, self.size, 0, 0, self.commits, 0, 0)
        return FileMap(attr, self.inline, sorted(self.blocks.values()))

    async def volume_of(self, ino: int, parent: int | None = None) -> int | None:
        if self.volume_gate is not None:
            await self.volume_gate.wait()  # the daemon answering slowly
        return None

    async def volume_codec(self, volume: int | None) -> VolumeCodec:
        return VolumeCodec(1, 0)

    async def write_block(
        self,
        index: int,
        data: bytes | bytearray | tuple[bytes | memoryview, ...],
        policy: object = None,
        *,
        force: bool = False,
        volume_codec: VolumeCodec | None = None,
    ) -> BlockRef:
        await trio.lowlevel.checkpoint()
        if self.full:
            raise NoSpace("no space left on the data disks")
        self.stored.append(index)
        if isinstance(data, tuple):
            self.pieced += 1
            data = b"".join(data)
        self.forced += force
        cid = hashlib.sha256(bytes(data)).digest()
        self.chunks[cid] = bytes(data)
        return BlockRef(index, cid, len(data), len(data))

    async def read_chunk(self, chunk_id: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.chunks[chunk_id]

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
        await trio.lowlevel.checkpoint()
        if self.commit_gate is not None:
            await self.commit_gate.wait()  # the daemon answering slowly
        if self.lose_chunks_once and blocks:
            self.lose_chunks_once = False
            for ref in blocks:
                self.chunks.pop(ref.chunk_id, None)
            raise ChunkMissing("collected meanwhile")
        assert all(ref.chunk_id in self.chunks for ref in blocks)
        self.commits += 1
        if inline is not None:
            self.inline, self.blocks, self.size = inline, {}, len(inline)
        else:
            self.inline = None
            for ref in blocks:
                self.blocks[ref.index] = ref
            self.size = size
            for index in [i for i in self.blocks if i * BS >= size]:
                del self.blocks[index]
            tail = size // BS
            if tail in self.blocks:  # the daemon trims the block that straddles the size
                ref = self.blocks[tail]
                self.blocks[tail] = ref._replace(length=min(ref.length, size - tail * BS))
        self.attrs.update(attrs or {})
        return self.fmap().attr

    async def setattr(self, ino: int, **changes: int) -> tuple[Attr, list[Any]]:
        await trio.lowlevel.checkpoint()
        self.attrs.update(changes)
        return self.fmap().attr, []

    def truncate(self, size: int) -> None:
        """What the daemon's setattr(size) does to committed state."""
        if self.inline is not None:
            self.inline = self.inline[:size]  # growing leaves a hole after the inline bytes
        for index in [i for i in self.blocks if i * BS >= size]:
            del self.blocks[index]
        tail = size // BS
        if tail in self.blocks:
            ref = self.blocks[tail]
            self.blocks[tail] = ref._replace(length=min(ref.length, size - tail * BS))
        self.size = size
        self.commits += 1

    def committed_bytes(self) -> bytes:
        if self.inline is not None:
            return self.inline + bytes(self.size - len(self.inline))
        out = bytearray(self.size)
        for ref in self.blocks.values():
            data = self.chunks[ref.chunk_id][: ref.length]
            start = ref.index * BS
            out[start : start + len(data)] = data[: max(0, self.size - start)]
        return bytes(out)


def new_file(client: FakeClient, budget_bytes: int = 1 << 20) -> OpenFile:
    return OpenFile(5, client.fmap(), client, BlockCache(1 << 20), DirtyBudget(budget_bytes))  # type: ignore[arg-type]


offsets = st.one_of(st.integers(0, INLINE_MAX), st.integers(0, 6 * BS))
payloads = st.one_of(st.binary(min_size=1, max_size=12), st.binary(min_size=1, max_size=3 * BS))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), offsets, payloads),
        # Several writes in order at the end of the file (a sequential writer's pieces).
        st.tuples(st.just("append"), st.integers(1, 4), payloads),
        st.tuples(st.just("truncate"), offsets, st.just(b"")),
        st.tuples(st.just("commit"), st.just(0), st.just(b"")),
        st.tuples(st.just("reopen"), st.just(0), st.just(b"")),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A small dirty budget makes stored blocks commit early, in the middle of the writes.
@given(ops=ops, budget_bytes=st.sampled_from([1 << 20, 2 * BS]))
def test_random_writes_read_back_and_commit_exactly(
    ops: list[tuple[str, int, bytes]], budget_bytes: int
) -> None:
    async def scenario() -> None:
        client = FakeClient()
        model = bytearray()
        f = new_file(client, budget_bytes)
        async with trio.open_nursery() as nursery:
            for kind, offset, data in ops:
                if kind == "append":
                    step = -(-len(data) // offset)
                    for start in range(0, len(data), step):
                        await f.write(len(model), data[start : start + step], nursery)
                        model += data[start : start + step]
                elif kind == "write":
                    await f.write(offset, data, nursery)
                    if len(model) < offset:
                        model.extend(bytes(offset - len(model)))
                    model[offset : offset + len(data)] = data
                elif kind == "truncate":  # as fs.setattr(size): commit, daemon truncates, refresh
                    await f.commit(nursery)
                    client.truncate(offset)
                    f.refresh(client.fmap())
                    model = model[:offset] + bytearray(max(0, offset - len(model)))
                elif kind == "commit":
                    await f.commit(nursery)
                    assert client.committed_bytes() == bytes(model)
                    assert not f.is_dirty
                else:  # close and open again: only committed state survives
                    await f.commit(nursery)
                    f = new_file(client, budget_bytes)
                assert f.size == len(model)
                assert await f.read(0, len(model) + 10) == bytes(model)
                assert f.budget.buffered_bytes == sum(len(b) for b in f.dirty.values())
            await f.commit(nursery)
        assert client.committed_bytes() == bytes(model)
        if len(model) <= INLINE_MAX and client.inline is not None:
            assert client.blocks == {}

    trio.run(scenario)


async def test_sequential_blocks_are_uploaded_uncopied_and_read_back() -> None:
    client = FakeClient()
    f = new_file(client)
    data = os.urandom(5 * BS + 10)
    half = BS // 2
    async with trio.open_nursery() as nursery:
        for start in range(0, len(data), half):
            await f.write(start, data[start : start + half], nursery)
        await trio.testing.wait_all_tasks_blocked()  # the full blocks' uploads are under way
        # Reading a block still being appended to, then writing into it, keeps every byte.
        assert await f.read(0, len(data)) == data
        await f.write(5 * BS + 2, b"xy", nursery)
        data = data[: 5 * BS + 2] + b"xy" + data[5 * BS + 4 :]
        await f.commit(nursery)
    assert client.committed_bytes() == data
    assert client.pieced == 5  # the full blocks went out as the writes' own pieces


async def test_a_read_within_a_committed_block_is_a_view_of_the_cached_chunk() -> None:
    """No copy on the way to pyfuse3 for a read inside one clean block; reads across blocks,
    of a dirty block or past a short block's end are copies and still exact."""
    client = FakeClient()
    f = new_file(client)
    data = os.urandom(2 * BS + 10)
    async with trio.open_nursery() as nursery:
        await f.write(0, data, nursery)
        await f.commit(nursery)
    reopened = new_file(client)
    inside = await reopened.read(BS + 3, 20)
    assert isinstance(inside, memoryview) and inside == data[BS + 3 : BS + 23]
    assert inside.obj is client.chunks[client.blocks[1].chunk_id]  # the chunk's own bytes
    across = await reopened.read(BS - 5, 10)
    assert isinstance(across, bytes) and across == data[BS - 5 : BS + 5]
    assert await reopened.read(2 * BS + 4, 20) == data[2 * BS + 4 :]  # the file's end
    async with trio.open_nursery() as nursery:
        await reopened.write(BS + 5, b"new", nursery)
    dirty = await reopened.read(BS + 3, 20)
    assert isinstance(dirty, bytes) and dirty == data[BS + 3 : BS + 5] + b"new" + data[BS + 8 : BS + 23]


async def test_a_write_landing_while_an_inline_commit_asks_for_the_volume_is_kept() -> None:
    """The inline commit may wait for the daemon (the file's volume) before it snapshots what it
    commits; a write landing then (two O_APPEND writers, one closing) was counted as committed
    while the bytes committed ended before it: the write was lost."""
    client = FakeClient()
    f = new_file(client)
    client.volume_gate = trio.Event()
    async with trio.open_nursery() as nursery:
        await f.write(0, b"a" * 10, nursery)
        nursery.start_soon(f.commit, nursery)
        await trio.testing.wait_all_tasks_blocked()  # the commit waits for the volume
        await f.write(10, b"b" * 10, nursery)
        client.volume_gate.set()
    async with trio.open_nursery() as nursery:
        await f.commit(nursery)
    assert f.size == 20 and not f.is_dirty
    assert client.committed_bytes() == b"a" * 10 + b"b" * 10


async def test_write_racing_a_commit_stays_dirty() -> None:
    client = FakeClient()
    f = new_file(client)
    async with trio.open_nursery() as nursery:
        await f.write(0, os.urandom(3 * BS), nursery)
        done = trio.Event()

        async def commit() -> None:
            await f.commit(nursery)
            done.set()

        nursery.start_soon(commit)
        await trio.testing.wait_all_tasks_blocked()
        await f.write(BS + 5, b"late", nursery)  # lands while the commit is in flight
        await done.wait()
        expected = await f.read(0, 3 * BS)
        assert f.is_dirty or client.committed_bytes() == expected
        await f.commit(nursery)
        assert client.committed_bytes() == expected
        assert expected[BS + 5 : BS + 9] == b"late"


async def test_commit_stores_blocks_again_when_their_chunks_were_collected() -> None:
    # A dedup hit whose chunk garbage collection removed before the commit: the metadata
    # service answers ChunkMissing and the file must still be committed, whole.
    client = FakeClient()
    f = new_file(client)
    data = os.urandom(3 * BS)
    async with trio.open_nursery() as nursery:
        await f.write(0, data, nursery)
        client.lose_chunks_once = True
        await f.commit(nursery)
    assert client.forced == 3
    assert client.committed_bytes() == data


async def test_held_attrs_follow_the_data_and_the_chown_rule() -> None:
    client = FakeClient()
    f = new_file(client)
    f.fresh = True
    async with trio.open_nursery() as nursery:
        await f.write(0, b"x" * 10, nursery)
        f.hold_attrs({"mode": 0o4755}, 1)
        attr = f.hold_attrs({"uid": 7}, 2)
        assert (attr.mode & 0o7777, attr.uid) == (0o755, 7)  # chown after chmod clears set-user-ID
        f.hold_attrs({"mtime_ns": 123}, 3)
        assert f.overlay(f.attr).mtime_ns == 123
        await f.commit(nursery)
    assert client.attrs == {"mode": 0o755, "uid": 7, "mtime_ns": 123}
    assert client.committed_bytes() == b"x" * 10  # in the same commit as the attributes
    assert client.commits == 1
    assert not f.pending_attrs
    assert not f.is_dirty


async def test_a_long_sequential_write_commits_early_and_lets_go_of_its_bytes() -> None:
    client = FakeClient()
    budget = DirtyBudget(4 * BS)
    f = OpenFile(5, client.fmap(), client, BlockCache(1 << 20), budget)  # type: ignore[arg-type]
    data = os.urandom(50 * BS)
    piece = BS // 3 + 1  # a write that fills a block goes on into the next
    peak = 0
    async with trio.open_nursery() as nursery:
        for start in range(0, len(data), piece):
            await f.write(start, data[start : start + piece], nursery)
            peak = max(peak, budget.held_bytes + budget.used_bytes)
            await trio.testing.wait_all_tasks_blocked()
            peak = max(peak, budget.held_bytes + budget.used_bytes)
        assert client.commits > 0  # committed before any flush or close
        await f.commit(nursery)
    assert f.held_bytes == 0 and not f.uploads
    # Stored and in-flight blocks together within the budget, however long the file.
    assert 0 < peak <= 4 * BS
    assert client.committed_bytes() == data
    # An early commit leaves the block being filled alone: every block is stored once.
    assert sorted(client.stored) == list(range(50))


async def test_a_writer_waits_while_an_early_commit_runs_instead_of_storing_more() -> None:
    """A slow early commit (the daemon busy) must not let the writer store block after block
    meanwhile, each kept until a commit: stored and in-flight blocks stay within the budget."""
    client = FakeClient()
    client.commit_gate = trio.Event()
    budget = DirtyBudget(4 * BS)
    f = OpenFile(5, client.fmap(), client, BlockCache(1 << 20), budget)  # type: ignore[arg-type]
    data = os.urandom(20 * BS)
    written = 0
    finished = trio.Event()

    async def writer(nursery: trio.Nursery) -> None:
        nonlocal written
        for start in range(0, len(data), BS // 2):
            await f.write(start, data[start : start + BS // 2], nursery)
            written = start + BS // 2
        finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert client.commits == 0  # the early commit is waiting for the daemon
        assert 0 < written < len(data)  # and so is the writer, for the budget
        assert 0 < budget.held_bytes + budget.used_bytes <= 4 * BS
        client.commit_gate.set()
        await finished.wait()
        await f.commit(nursery)
    assert budget.held_bytes == 0 and budget.used_bytes == 0
    assert client.committed_bytes() == data


async def test_a_block_filled_while_its_commit_waits_for_the_budget_is_kept_whole() -> None:
    """A commit stores the block still being filled while other files' blocks fill the budget;
    the writer fills the block meanwhile.  The block's bytes stay readable throughout, and the
    full block is what gets committed (the commit's older, half block once superseded the
    writer's newer one: the half the writer added read back as zeros)."""
    client = FakeClient()
    budget = DirtyBudget(2 * BS)
    f = OpenFile(5, client.fmap(), client, BlockCache(1 << 20), budget)  # type: ignore[arg-type]
    data = os.urandom(2 * BS)
    half = BS + BS // 2
    async with trio.open_nursery() as nursery:
        await f.write(0, data[:half], nursery)  # block 0 stored, block 1 half written
        await trio.testing.wait_all_tasks_blocked()
        budget.used_bytes += 2 * BS  # other files' blocks in flight
        nursery.start_soon(f.commit, nursery)  # waits to store the half block 1
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(f.write, half, data[half:], nursery)  # fills it, waits to store it
        await trio.testing.wait_all_tasks_blocked()
        assert await f.read(0, half) == data[:half]  # (the write has not returned yet)
        budget.release(2 * BS)
        await trio.testing.wait_all_tasks_blocked()
        await f.commit(nursery)
    assert client.committed_bytes() == data
    assert budget.used_bytes == 0 and budget.held_bytes == 0


async def test_parallel_writers_share_one_budget_of_held_bytes() -> None:
    """Four files written side by side hold about one budget of stored blocks between them,
    not one budget each; all of it is let go once they are committed."""
    budget = DirtyBudget(4 * BS)
    clients = [FakeClient() for _ in range(4)]
    files = [OpenFile(5, c.fmap(), c, BlockCache(1 << 20), budget) for c in clients]  # type: ignore[arg-type]
    data = [os.urandom(30 * BS) for _ in files]
    peak = 0
    async with trio.open_nursery() as nursery:
        for start in range(0, 30 * BS, BS // 2):
            for f, d in zip(files, data, strict=True):
                await f.write(start, d[start : start + BS // 2], nursery)
            await trio.testing.wait_all_tasks_blocked()
            assert budget.held_bytes == sum(f.held_bytes for f in files)
            peak = max(peak, budget.held_bytes + budget.used_bytes)
        for f in files:
            await f.commit(nursery)
    # One budget for all, stored and in flight together (four budgets of stored ones before).
    assert 0 < peak <= 4 * BS
    assert budget.held_bytes == 0 and budget.used_bytes == 0
    assert [c.committed_bytes() for c in clients] == data


async def write_somewhere(f: OpenFile, model: bytearray, rng: random.Random, nursery: trio.Nursery) -> None:
    """8 random bytes at a random offset of the file and of its model; then whatever the write
    started (stores, early commits) runs until it waits."""
    offset = rng.randrange(len(model) - 8)
    piece = os.urandom(8)
    await f.write(offset, piece, nursery)
    model[offset : offset + 8] = piece
    await trio.testing.wait_all_tasks_blocked()


async def test_scattered_writes_keep_no_more_buffers_than_the_budget() -> None:
    """Writes scattered over a large file buffer the blocks they touch; past the budget the
    oldest buffers are stored (and committed early) so a random writer's memory stays bounded
    (a buffer for every block touched took a mount to 2.1 GiB over a 1.5 GiB file)."""
    client = FakeClient()
    budget = DirtyBudget(4 * BS)
    f = OpenFile(5, client.fmap(), client, BlockCache(1 << 20), budget)  # type: ignore[arg-type]
    model = bytearray(os.urandom(40 * BS))
    rng = random.Random(7)
    peak = 0
    async with trio.open_nursery() as nursery:
        await f.write(0, bytes(model), nursery)
        await f.commit(nursery)
        for _ in range(400):
            await write_somewhere(f, model, rng, nursery)
            assert budget.buffered_bytes == sum(len(b) for b in f.dirty.values())
            peak = max(peak, budget.buffered_bytes)
            assert budget.used_bytes + budget.held_bytes <= 4 * BS
        assert await f.read(0, len(model)) == bytes(model)
        await f.commit(nursery)
    assert peak <= 5 * BS  # the budget, and the block just written
    assert client.committed_bytes() == bytes(model)
    assert budget.buffered_bytes == budget.used_bytes == budget.held_bytes == 0


async def test_writes_into_a_full_store_fail_instead_of_piling_up_in_memory() -> None:
    """Once a block cannot be stored for want of space, the next write retries the commit and
    fails with ENOSPC as it does (kept in memory, a writer grew the mount without bound); once
    space is back, the next write commits what was kept and goes on."""
    client = FakeClient()
    budget = DirtyBudget(4 * BS)
    f = OpenFile(5, client.fmap(), client, BlockCache(1 << 20), budget)  # type: ignore[arg-type]
    data = os.urandom(40 * BS)
    client.full = True
    async with trio.open_nursery() as nursery:
        written = 0
        with pytest.raises(NoSpace):
            for start in range(0, len(data), BS):
                await f.write(start, data[start : start + BS], nursery)
                written = start + BS
                await trio.testing.wait_all_tasks_blocked()
        assert 0 < written <= 2 * BS  # failed at once, not after the whole file
        kept = sum(len(b) for b in f.dirty.values()) + budget.used_bytes + budget.held_bytes
        assert kept <= 2 * BS
        client.full = False  # space again (files deleted elsewhere)
        await f.write(written, data[written : written + BS], nursery)
        await f.commit(nursery)
    assert client.committed_bytes() == data[: written + BS]
    assert f.full_error is None and not f.is_dirty


async def test_discarding_what_a_full_store_refused_lets_go_of_its_bytes() -> None:
    client = FakeClient()
    budget = DirtyBudget(4 * BS)
    f = OpenFile(5, client.fmap(), client, BlockCache(1 << 20), budget)  # type: ignore[arg-type]
    client.full = True
    async with trio.open_nursery() as nursery:
        await f.write(0, os.urandom(3 * BS), nursery)
        with pytest.raises(NoSpace):
            await f.commit(nursery)
        assert f.is_dirty and f.full_error is not None
        f.discard()
        assert f.size == 0 and await f.read(0, BS) == b""  # as committed
    assert not f.is_dirty and f.full_error is None
    assert budget.used_bytes == 0 and budget.held_bytes == 0


def test_the_cache_gives_written_data_its_room_and_takes_it_back() -> None:
    budget = DirtyBudget(8 * BS)
    cache = BlockCache(8 * BS, written=budget)
    for n in range(8):
        cache.put(bytes([n]), bytes(BS))
    assert cache.used_bytes == 8 * BS
    budget.buffered(3 * BS)  # a writer's buffers: the oldest cached blocks make room
    assert cache.used_bytes == 5 * BS
    assert cache.get_nowait(bytes([0])) is None and cache.get_nowait(bytes([7])) is not None
    trio.run(functools.partial(budget.acquire, 4 * BS, writer=True))  # blocks in flight count too
    assert cache.used_bytes == BS  # down to the floor: an eighth of the capacity
    budget.release(4 * BS)
    budget.buffered(-3 * BS)
    for n in range(8, 16):  # the writes are done: reads have the whole capacity again
        cache.put(bytes([n]), bytes(BS))
    assert cache.used_bytes == 8 * BS


async def test_a_random_writer_over_a_file_just_read_shares_the_capacity_with_the_cache() -> None:
    """The blocks a writer buffers and the cache of what was read share one capacity: a file
    read whole and then rewritten at random holds about the capacity, not twice it (the
    fio rows of the workload held 256 MiB of cache and 256 MiB of buffers at once)."""
    client = FakeClient()
    budget = DirtyBudget(8 * BS)
    cache = BlockCache(8 * BS, written=budget)
    f = OpenFile(5, client.fmap(), client, cache, budget)  # type: ignore[arg-type]
    model = bytearray(os.urandom(16 * BS))
    rng = random.Random(3)
    async with trio.open_nursery() as nursery:
        await f.write(0, bytes(model), nursery)
        await f.commit(nursery)
        f = OpenFile(5, client.fmap(), client, cache, budget)  # type: ignore[arg-type]
        assert await f.read(0, len(model)) == bytes(model)
        assert cache.used_bytes == 8 * BS  # the cache is full
        for _ in range(200):
            await write_somewhere(f, model, rng, nursery)
            # The budget (plus the block just written) and the cache's floor, not their sum.
            assert cache.used_bytes + budget.buffered_bytes <= 8 * BS + BS + BS
        assert await f.read(0, len(model)) == bytes(model)
        await f.commit(nursery)
    assert client.committed_bytes() == bytes(model)
