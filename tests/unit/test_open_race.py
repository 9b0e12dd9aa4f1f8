"""An open whose answer from the daemon predates a commit this mount finished meanwhile.

Issue 13, defect 5 (a sqlite database corrupted on the mount, tests/fuse/test_sqlite_soak.py):
the daemon answers an open (or a read-only open's block map) just before it applies a
commit of another handle of the same file, and the mount resumes the commit first (trio
wakes tasks woken together in either order).  The open then found a clean file whose
attributes differ from its answer and adopted that older block map: the file as this
mount serves it went back one commit, and later writes were built on the old blocks.
"""

from __future__ import annotations

import os
from typing import Any

import trio
import trio.testing

from dfs.core.config import MountConfig
from dfs.core.namespace import FileMap
from mount.fs import Operations
from tests.unit.test_openfile import FakeClient, new_file


class DaemonClient(FakeClient):
    """The fake daemon of test_openfile plus opens; ``hold`` delays the answers to opens."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: trio.Event | None = None
        self.answered = trio.Event()

    async def _answer(self) -> FileMap:
        fmap = self.fmap()  # the daemon's state when it answers...
        self.answered.set()
        if self.hold is not None:
            await self.hold.wait()  # ...reaching the mount only after what happens meanwhile
        return fmap

    async def open(self, ino: int, session: str, *, truncate: bool, read: bool) -> FileMap:
        return await self._answer()

    async def read_map(self, ino: int) -> FileMap:
        return await self._answer()

    async def sync(self) -> None:
        await trio.lowlevel.checkpoint()


async def _race(flags: int) -> None:
    client = DaemonClient()
    ops = Operations(client, MountConfig())  # type: ignore[arg-type]
    ops.parents[5] = 1  # as the lookup that precedes every open records
    ctx: Any = None
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        fh = (await ops.open(5, os.O_RDWR, ctx)).fh
        await ops.write(fh, 0, b"first " * 20)
        await ops.fsync(fh, False)
        await ops.write(fh, 0, b"second" * 20)

        client.hold, client.answered = trio.Event(), trio.Event()
        opened: list[Any] = []

        async def second_open() -> None:
            opened.append(await ops.open(5, flags, ctx))

        nursery.start_soon(second_open)
        await client.answered.wait()  # the daemon answered with "first"...
        await ops.fsync(fh, False)  # ...then committed "second"
        client.hold.set()
        client.hold = None
        await trio.testing.wait_all_tasks_blocked()
        info = opened[0]

        assert await ops.read(info.fh, 0, 120) == b"second" * 20
        assert info.keep_cache  # the page cache holds what this mount wrote: nothing to drop
        # A later partial write builds on "second", not on the older blocks.
        await ops.write(fh, 0, b"third!")
        await ops.fsync(fh, False)
        assert client.committed_bytes() == b"third!" + b"second" * 19
        await ops.release(info.fh)
        await ops.release(fh)
        nursery.cancel_scope.cancel()  # the open-events loop is not running; nothing else to wait for


async def test_read_write_open_racing_a_commit_keeps_the_commit() -> None:
    await _race(os.O_RDWR)


async def test_read_only_open_racing_a_commit_keeps_the_commit() -> None:
    await _race(os.O_RDONLY)


async def test_open_still_adopts_a_change_made_elsewhere() -> None:
    # Close-to-open between mounts: nothing changed here while the daemon answered, so a
    # newer map (another mount's commit) replaces what this mount held, page cache included.
    client = DaemonClient()
    ops = Operations(client, MountConfig())  # type: ignore[arg-type]
    ops.parents[5] = 1
    ctx: Any = None
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        fh = (await ops.open(5, os.O_RDWR, ctx)).fh
        await ops.write(fh, 0, b"first " * 20)
        await ops.fsync(fh, False)
        elsewhere = new_file(client)
        await elsewhere.write(0, b"other!" * 20, nursery)
        await elsewhere.commit(nursery)
        info = await ops.open(5, os.O_RDONLY, ctx)
        assert not info.keep_cache
        assert await ops.read(info.fh, 0, 120) == b"other!" * 20
        nursery.cancel_scope.cancel()
