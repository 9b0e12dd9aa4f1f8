"""Data a file's last close could not store (the daemon unreachable).

close(2) reports the error; the mount then keeps the data and tries again in the background
for ``[mount] unstored_keep_s``, then drops it.  Before, it stayed in memory with no retry
until the file's next close on this mount, which committed it over whatever the file had
become meanwhile.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from dfs.core.config import MountConfig
from dfs.core.errors import DfsError, NotFound, Unavailable
from dfs.core.namespace import Attr, BlockRef, FileMap
from mount.fs import _UNSTORED_RETRY_S, Operations
from tests.unit.test_open_race import DaemonClient

INO = 5


class FlakyDaemon(DaemonClient):
    """The fake daemon; ``failure`` set: stores and commits fail with it."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: DfsError | None = None
        self.tries = 0
        self.committing: list[int] = []  # the inode of each commit asked for

    async def open(self, ino: int, session: str, *, truncate: bool, read: bool) -> FileMap:
        # Any inode opens as the one file this fake keeps (enough for files never stored).
        fmap = await super().open(ino, session, truncate=truncate, read=read)
        return fmap._replace(attr=fmap.attr._replace(ino=ino))

    async def commit_write(self, ino: int, **kwargs: Any) -> Attr:
        self.tries += 1
        self.committing.append(ino)
        if self.failure is not None:
            await trio.lowlevel.checkpoint()
            raise self.failure
        return await super().commit_write(ino, **kwargs)

    async def write_block(self, index: int, data: Any, policy: object = None, **kwargs: Any) -> BlockRef:
        self.tries += 1
        if self.failure is not None:
            await trio.lowlevel.checkpoint()
            raise self.failure
        return await super().write_block(index, data, policy, **kwargs)

    async def open_events(self, batch: list[tuple[str, int]], session: str) -> None:
        await trio.lowlevel.checkpoint()


async def _closed_unstored(ops: Operations, client: FlakyDaemon, data: bytes) -> None:
    """Open, write ``data`` and close while the daemon is unreachable: close fails."""
    fh = (await ops.open(INO, os.O_WRONLY, None)).fh  # type: ignore[arg-type]
    await ops.write(fh, 0, data)
    client.failure = Unavailable("daemon unreachable")
    with pytest.raises(pyfuse3.FUSEError):
        await ops.flush(fh)
    with pytest.raises(pyfuse3.FUSEError):
        await ops.release(fh)


def _mount(cfg: MountConfig | None = None) -> tuple[FlakyDaemon, Operations]:
    client = FlakyDaemon()
    ops = Operations(client, cfg or MountConfig())  # type: ignore[arg-type]
    ops.parents[INO] = 1  # as the lookup that precedes every open records
    return client, ops


def _check_settled(ops: Operations) -> None:
    """Invariants once nothing is pending: no handle left, nothing dirty, nothing queued."""
    assert not ops.handles
    assert all(not f.is_dirty for f in ops.files.values())
    assert not ops.unstored
    assert ops.budget.used_bytes == 0 and ops.budget.held_bytes == 0


@pytest.mark.parametrize("size", [30, 3 * 64 + 5])  # inline, and blocks
async def test_data_a_failed_close_kept_is_stored_once_the_daemon_is_back(size: int) -> None:
    client, ops = _mount()
    data = os.urandom(size)
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await _closed_unstored(ops, client, data)
        assert INO in ops.unstored and ops.files[INO].is_dirty
        tries = client.tries
        await ops.retry_unstored()  # still unreachable: kept
        assert client.tries > tries
        assert INO in ops.unstored and ops.files[INO].is_dirty
        client.failure = None
        await ops.retry_unstored()
        assert client.committed_bytes() == data
        assert INO not in ops.files  # let go of, as a successful close would have
        _check_settled(ops)
        nursery.cancel_scope.cancel()


async def test_the_retry_loop_stores_it_by_itself(autojump_clock: trio.testing.MockClock) -> None:
    client, ops = _mount()
    data = b"kept for a while " * 10
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(ops.retry_unstored_loop)
        await _closed_unstored(ops, client, data)
        await trio.sleep(3 * _UNSTORED_RETRY_S)
        assert INO in ops.unstored  # tried, and kept
        tries = client.tries
        client.failure = None
        await trio.sleep(_UNSTORED_RETRY_S + 0.5)
        assert client.tries > tries
        assert client.committed_bytes() == data
        _check_settled(ops)
        nursery.cancel_scope.cancel()


async def test_unstored_data_is_dropped_after_unstored_keep_s() -> None:
    client, ops = _mount()
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        fh = (await ops.open(INO, os.O_WRONLY, None)).fh  # type: ignore[arg-type]
        await ops.write(fh, 0, b"committed")
        await ops.release(fh)
        await _closed_unstored(ops, client, b"never stored")
        ops.unstored[INO] = time.monotonic() - 1  # the keep time is over
        await ops.retry_unstored()
        assert INO not in ops.files
        client.failure = None
        assert client.committed_bytes() == b"committed"
        _check_settled(ops)
        # A later open sees what was committed, not the dropped data.
        fh = (await ops.open(INO, os.O_RDONLY, None)).fh  # type: ignore[arg-type]
        assert await ops.read(fh, 0, 100) == b"committed"
        await ops.release(fh)
        nursery.cancel_scope.cancel()


async def test_unstored_data_of_a_deleted_file_is_dropped_at_once() -> None:
    client, ops = _mount()
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await _closed_unstored(ops, client, b"x" * 50)
        client.failure = NotFound("inode 5 not found")
        await ops.retry_unstored()
        assert INO not in ops.files
        _check_settled(ops)
        nursery.cancel_scope.cancel()


async def test_unstored_keep_s_zero_drops_at_the_last_close() -> None:
    client, ops = _mount(MountConfig(unstored_keep_s=0))
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await _closed_unstored(ops, client, b"x" * 50)
        assert INO not in ops.files
        _check_settled(ops)
        nursery.cancel_scope.cancel()


async def test_a_reopen_takes_the_unstored_data_over() -> None:
    client, ops = _mount()
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await _closed_unstored(ops, client, b"first")
        client.failure = None
        fh = (await ops.open(INO, os.O_RDWR, None)).fh  # type: ignore[arg-type]
        assert await ops.read(fh, 0, 100) == b"first"  # its own unstored write, still there
        tries = client.tries
        await ops.retry_unstored()  # reopened: left to that handle
        assert client.tries == tries and INO not in ops.unstored
        await ops.write(fh, 5, b", second")
        await ops.release(fh)
        assert client.committed_bytes() == b"first, second"
        _check_settled(ops)
        nursery.cancel_scope.cancel()


async def test_a_pass_stops_trying_once_the_daemon_is_unreachable() -> None:
    """Each try with the daemon away waits out connect timeouts: one per pass is enough."""
    client, ops = _mount()
    ops.parents[INO + 1] = 1
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        handles = [(await ops.open(ino, os.O_WRONLY, None)).fh for ino in (INO, INO + 1)]  # type: ignore[arg-type]
        for fh in handles:
            await ops.write(fh, 0, b"small, inline")
        client.failure = Unavailable("daemon unreachable")
        for fh in handles:
            with pytest.raises(pyfuse3.FUSEError):
                await ops.release(fh)
        assert sorted(ops.unstored) == [INO, INO + 1]
        client.committing.clear()
        await ops.retry_unstored()
        assert client.committing == [INO]  # the second file was not tried...
        assert sorted(ops.unstored) == [INO, INO + 1]
        await ops.retry_unstored()
        assert client.committing == [INO, INO + 1]  # ...but first in the next pass
        # Past their time, both go in one pass, still with a single try.
        for ino in ops.unstored:
            ops.unstored[ino] = time.monotonic() - 1
        client.committing.clear()
        await ops.retry_unstored()
        assert len(client.committing) == 1
        assert not ops.files
        _check_settled(ops)
        nursery.cancel_scope.cancel()
