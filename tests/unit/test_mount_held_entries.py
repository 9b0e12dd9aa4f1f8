"""What the mount answers from memory for a tree it wrote, while notices are complete.

A lookup in a directory whose names this mount knows (mount/dirs.py) is answered with the
held attributes of the inode the name was given; a read-only open of a file closed here uses
its parked block map (mount/attrs.py); the attributes a commit answered serve the getattr
after close(2); and the open events queued meanwhile are sent before an unlink or rename
only when the inode losing its name is among them.  Each answer from memory ends with a
change notice, a truncation here, or the end of complete notices.
"""

from __future__ import annotations

import os
from typing import Any

import pyfuse3
import pytest
import trio

from dfs.client.cluster import Client, ClusterInfo
from dfs.core.changes import ATTR, DATA, Change
from dfs.core.config import MountConfig
from dfs.core.namespace import Attr, BlockRef, FileMap
from mount import fs
from mount.attrs import AttrCache
from mount.coherence import Coherence
from mount.dirs import CompleteDirs
from mount.fs import Operations
from tests.unit.test_mount_long_caches import Ctx

_INFO = ClusterInfo("n", 1 << 20, 4096, 1, b"k" * 32, "", 60.0)


class TreeMeta:
    """A daemon that makes inodes and applies setattr; records every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.attrs: dict[int, Attr] = {}
        self.next_ino = 100
        self.events_sent_at: list[float] = []  # when each meta.open_events call came
        self.events_sent: list[list[tuple[str, int]]] = []  # and what it carried

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        if method == "meta.listxattr":
            return []
        if method in ("meta.mkdir", "meta.create"):
            self.next_ino += 1
            mode = 0o40755 if method == "meta.mkdir" else 0o100600
            attr = Attr(self.next_ino, mode, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0)
            self.attrs[attr.ino] = attr
            return [list(attr), []]
        if method == "meta.setattr":
            ino, changes = args
            attr = self.attrs[ino]
            if "mode" in changes:
                attr = attr._replace(mode=(attr.mode & ~0o7777) | changes["mode"])
            if "size" in changes:
                attr = attr._replace(size=changes["size"])
            self.attrs[ino] = attr = attr._replace(ctime_ns=attr.ctime_ns + 1)
            return [list(attr), []]
        if method in ("meta.read_map", "meta.getattr"):
            attr = self.attrs[args[0]]
            return list(attr) if method == "meta.getattr" else [list(attr), None, []]
        if method == "meta.lookup_versioned":
            return [None, 0]
        if method in ("meta.unlink", "meta.rename"):
            return [None, []]
        if method == "meta.open_events":
            self.events_sent_at.append(trio.current_time())
            self.events_sent.append([(kind, ino) for kind, ino in args[0]])
            return None
        raise AssertionError(method)


class Fields:
    """What setattr reads of pyfuse3.SetattrFields (whose fields cannot be set from Python)."""

    def __init__(self, **set_: bool) -> None:
        for name in ("mode", "uid", "gid", "atime", "mtime", "size"):
            setattr(self, f"update_{name}", set_.get(name, False))


def mounted(nursery: trio.Nursery) -> tuple[TreeMeta, Operations]:
    meta = TreeMeta()
    ops = Operations(Client(meta, _INFO, local_reads=False), MountConfig())
    ops.nursery = nursery  # (as run() sets it: commits start their uploads there)
    ops.coherent = True
    return meta, ops


async def written(ops: Operations, parent: int, name: bytes) -> int:
    """A file made here, chmod through its descriptor and closed (rsync, tar, cp -a)."""
    info, entry = await ops.create(parent, name, 0o600, os.O_WRONLY | os.O_CREAT, Ctx())  # type: ignore[arg-type]
    mode = pyfuse3.EntryAttributes()
    mode.st_mode = 0o100644
    await ops.setattr(entry.st_ino, mode, Fields(mode=True), info.fh, Ctx())  # type: ignore[arg-type]
    await ops.flush(info.fh)
    await ops.release(info.fh)
    return int(entry.st_ino)


async def read_open(ops: Operations, ino: int) -> None:
    info = await ops.open(ino, os.O_RDONLY, Ctx())  # type: ignore[arg-type]
    await ops.release(info.fh)


async def test_a_tree_written_here_is_looked_up_stat_and_opened_without_calls(nursery: trio.Nursery) -> None:
    meta, ops = mounted(nursery)
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    sub = (await ops.mkdir(top, b"sub", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    ino = await written(ops, top, b"f")
    assert meta.calls.count("meta.setattr") == 1  # the held chmod, sent at close
    meta.calls.clear()
    # After the kernel dropped its caches (drop_caches, memory pressure): tar, rsync, cat.
    entry = await ops.lookup(top, b"f", Ctx())  # type: ignore[arg-type]
    assert (entry.st_ino, entry.st_mode) == (ino, 0o100644)
    assert (await ops.getattr(ino, Ctx())).st_mode == 0o100644  # type: ignore[arg-type]
    assert (await ops.lookup(top, b"sub", Ctx())).st_ino == sub  # type: ignore[arg-type]
    await read_open(ops, ino)
    assert await ops.opendir(top, Ctx()) > 0  # type: ignore[arg-type]
    assert meta.calls == []
    # A change elsewhere: the next open and lookup ask the daemon.
    await Coherence(ops, kernel=lambda todo: None).apply([Change(DATA, ino)])
    await read_open(ops, ino)
    await ops.lookup(top, b"f", Ctx())  # type: ignore[arg-type]
    assert meta.calls == ["meta.read_map"]  # (the open's answer is held again for the lookup)
    meta.calls.clear()
    await Coherence(ops, kernel=lambda todo: None).apply([Change(ATTR, top)])
    with pytest.raises(pyfuse3.FUSEError):
        await ops.lookup(top, b"f", Ctx())  # type: ignore[arg-type]
    assert meta.calls == ["meta.lookup_versioned"]  # the directory's names are no longer known


async def test_nothing_is_answered_from_memory_without_complete_notices(nursery: trio.Nursery) -> None:
    meta, ops = mounted(nursery)
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    ino = await written(ops, top, b"f")
    ops.coherent = False
    meta.calls.clear()
    await ops.getattr(ino, Ctx())  # type: ignore[arg-type]
    await read_open(ops, ino)
    await ops.opendir(top, Ctx())  # type: ignore[arg-type]
    assert meta.calls == ["meta.getattr", "meta.read_map", "meta.getattr"]


async def test_a_truncation_here_drops_the_map_even_at_the_same_size(nursery: trio.Nursery) -> None:
    meta, ops = mounted(nursery)
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    ino = await written(ops, top, b"f")
    size = pyfuse3.EntryAttributes()
    size.st_size = 0  # the size it has: truncating and growing back keeps no bytes
    await ops.setattr(ino, size, Fields(size=True), None, Ctx())  # type: ignore[arg-type]
    meta.calls.clear()
    await read_open(ops, ino)
    assert meta.calls == ["meta.read_map"]


async def test_open_events_are_sent_first_only_for_the_inode_losing_its_name(nursery: trio.Nursery) -> None:
    meta, ops = mounted(nursery)
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    closed = await written(ops, top, b"closed")  # its release is queued, not sent
    await ops.create(top, b"other", 0o600, os.O_WRONLY | os.O_CREAT, Ctx())  # type: ignore[arg-type]
    await read_open(ops, closed)  # an open and its release, queued
    meta.calls.clear()
    await ops.rename(top, b"other", top, b"new", 0, Ctx())  # type: ignore[arg-type]
    assert meta.calls == ["meta.rename"]  # no name is taken from anything
    await ops.unlink(top, b"new", Ctx())  # type: ignore[arg-type]
    assert meta.calls == ["meta.rename", "meta.unlink"]  # none of its events is queued
    meta.calls.clear()
    await ops.unlink(top, b"closed", Ctx())  # type: ignore[arg-type]
    assert meta.calls == ["meta.open_events", "meta.unlink"]


async def test_without_complete_notices_any_queued_event_is_sent_first(nursery: trio.Nursery) -> None:
    meta, ops = mounted(nursery)
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    await written(ops, top, b"a")
    await written(ops, top, b"b")
    ops.coherent = False
    meta.calls.clear()
    await ops.rename(top, b"a", top, b"c", 0, Ctx())  # type: ignore[arg-type]
    assert meta.calls == ["meta.open_events", "meta.rename"]


def test_a_parked_map_lives_exactly_as_long_as_the_held_attributes() -> None:
    attr = Attr(7, 0o100644, 1, 0, 0, 0, 3, 8, 0, 0, 0, 0)
    cache = AttrCache(max_maps=2, max_inline_bytes=5)
    cache.park_map(7, 3, b"abc", [])
    assert cache.file_map(7) is None  # no attributes held: nothing to vouch for it
    cache.begin(7)
    cache.end(7, attr)
    cache.park_map(7, 3, b"abc", [])
    assert cache.file_map(7) == FileMap(attr, b"abc", [])
    cache.begin(7)
    cache.end(7, attr._replace(size=4))  # a size this map does not have
    cache.begin(7)
    cache.end(7, attr)
    assert cache.file_map(7) is None  # gone, not merely hidden, even at its old size again
    cache.park_map(7, 3, b"abc", [])
    cache.drop(7)
    assert cache.file_map(7) is None
    # Bounded in entries and in inline bytes.
    for ino in (1, 2, 3):
        cache.begin(ino)
        cache.end(ino, attr._replace(ino=ino, size=0))
        cache.park_map(ino, 0, None, [BlockRef(0, b"c" * 32, 0, 0)])
    assert [cache.file_map(i) is not None for i in (1, 2, 3)] == [False, True, True]
    huge = [BlockRef(i, b"c" * 32, 0, 0) for i in range(cache.max_map_blocks + 1)]
    cache.park_map(3, 0, None, huge)  # too large a map is not parked (nor the older one kept)
    assert cache.file_map(3) is None
    cache.begin(4)
    cache.end(4, attr._replace(ino=4, size=6))
    cache.park_map(4, 6, b"abcdef", [])  # more inline bytes than the whole budget
    assert cache.file_map(4) is None
    cache.clear()
    assert cache.file_map(2) is None


def test_names_carry_their_inodes_and_forget_them_with_the_directory() -> None:
    now = [0.0]
    dirs = CompleteDirs(1.0, clock=lambda: now[0])
    dirs.made(Attr(7, 0o40755, 2, 0, 0, 0, 0, 0, 0, 10, 10, 0))
    dirs.changed([], added=[(7, b"a", 70), (7, b"b", None)])
    assert (dirs.entry(7, b"a"), dirs.entry(7, b"b"), dirs.entry(7, b"c")) == (70, None, None)
    assert not dirs.absent(7, b"b")
    dirs.changed([], removed=[(7, b"a")])
    assert dirs.entry(7, b"a") is None and dirs.absent(7, b"a")
    dirs.changed([], added=[(7, b"a", 71)])
    now[0] = 2.0  # the lease ran out unproven: ask
    assert dirs.entry(7, b"a") is None


async def test_releases_alone_wait_longer_than_an_open(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    meta, ops = mounted(nursery)
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    sent_at = meta.events_sent_at
    async with trio.open_nursery() as background:
        background.start_soon(ops.open_events_loop)
        # A tree written file after file: its releases go in one call per second at most.
        started = trio.current_time()
        closed = [await written(ops, top, b"f%d" % i) for i in range(50)]
        await trio.sleep(0.5)
        assert sent_at == []
        await trio.sleep(0.6)
        waited = fs._RELEASES_BATCH_S + fs._OPEN_EVENTS_BATCH_S
        assert len(sent_at) == 1 and sent_at[0] - started == pytest.approx(waited)
        # A read-only open waits no longer than before, releases queued ahead of it or not.
        await written(ops, top, b"g")
        opened_at = trio.current_time()
        await read_open(ops, closed[0])
        await trio.sleep(0.1)
        assert len(sent_at) == 2 and sent_at[1] - opened_at == pytest.approx(fs._OPEN_EVENTS_BATCH_S)
        # A queue grown to its bound goes at once.
        filled_at = trio.current_time()
        for _ in range(fs._OPEN_EVENTS_MAX // 2):
            await read_open(ops, closed[1])  # (its open is sent too; then only releases)
        await trio.sleep(0.1)
        for i in range(fs._OPEN_EVENTS_MAX):
            ops._queue_open_event("release", closed[i % 50])
        await trio.sleep(0.1)
        assert len(sent_at) == 4 and sent_at[3] - filled_at < 0.5
        background.cancel_scope.cancel()


async def test_an_open_behind_a_queued_release_of_its_file_waits_with_the_releases(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    meta, ops = mounted(nursery)
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    async with trio.open_nursery() as background:
        background.start_soon(ops.open_events_loop)
        started = trio.current_time()
        # rsync: write the temporary file, close it, open it again to chmod it, close.
        ino = await written(ops, top, b".f.tmp")
        await read_open(ops, ino)
        await trio.sleep(0.5)
        assert meta.events_sent_at == []  # the daemon still counted the create's open
        await trio.sleep(0.6)
        waited = fs._RELEASES_BATCH_S + fs._OPEN_EVENTS_BATCH_S
        assert len(meta.events_sent_at) == 1 and meta.events_sent_at[0] - started == pytest.approx(waited)
        # Ahead of the earlier release: the count goes 1, 2, 1, 0, never 0 in between.
        assert meta.events_sent == [[("open", ino), ("release", ino), ("release", ino)]]
        # With no release of it queued, an open still goes within the short batch.
        opened_at = trio.current_time()
        await read_open(ops, ino)
        await trio.sleep(0.1)
        assert meta.events_sent[1] == [("open", ino), ("release", ino)]
        assert meta.events_sent_at[1] - opened_at == pytest.approx(fs._OPEN_EVENTS_BATCH_S)
        background.cancel_scope.cancel()


async def test_a_file_made_below_directories_made_here_knows_its_volume(nursery: trio.Nursery) -> None:
    meta, ops = mounted(nursery)
    vol = (await ops.mkdir(pyfuse3.ROOT_INODE, b"vol", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    sub = (await ops.mkdir(vol, b"sub", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    info, entry = await ops.create(sub, b"f", 0o600, os.O_WRONLY | os.O_CREAT, Ctx())  # type: ignore[arg-type]
    f = ops.files[entry.st_ino]
    # Its blocks are encoded with its volume's codec, found without a meta.volume_of call.
    assert (f.volume_known, f.volume) == (True, vol)
    await ops.release(info.fh)
