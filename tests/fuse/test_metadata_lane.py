"""The metadata lane (daemon/service/lane.py, dfs/net/lane.py) with a real daemon and real mounts.

A mount's changes go over the lane once it is open, and are answered there by
the lane's own thread while no other mount listens; with a second mount they
go to the event loop, which waits for the other mount to apply each change
(coherence).  The lane serves only callers that hold a ticket, only meta.once
calls, and only with the rights of the connection the ticket came from.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from dfs.core import endpoints, wire
from dfs.core.errors import DfsError, InvalidArgument, NotPermitted
from dfs.net import rpc
from tests.conftest import Daemon, Mount, free_port, http_call, needs_fuse, wait_for

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.slow]


def lane_calls(d: Daemon) -> dict[str, int]:
    """The daemon's dfs_rpc_lane_calls_total, by where the calls were answered."""
    headers = {"Authorization": f"Bearer {d.admin_token()}"}
    _, _, body = http_call(d.admin_port, "GET", "/metrics", headers=headers)
    found = re.findall(r'^dfs_rpc_lane_calls_total\{answered="(\w+)"\} (\S+)$', body.decode(), re.M)
    return {where: int(float(n)) for where, n in found}


def lane_answers(d: Daemon, directory: Path) -> bool:
    """Whether a change here (a chmod: one meta.once call) was answered by the lane's thread.
    The lane opens in the background: until then changes go over the mount's connection."""
    before = lane_calls(d).get("lane", 0)
    os.chmod(directory, 0o755)
    return lane_calls(d).get("lane", 0) > before


def changes(root: Path, n: int) -> None:
    """A mkdir, creates, chmods, renames and unlinks: each a meta.once call of the mount's."""
    (root / "d").mkdir()
    for i in range(n):
        f = root / "d" / f"f{i}"
        f.write_bytes(b"x" * (i + 1))
        os.chmod(f, 0o600)
        os.rename(f, root / "d" / f"g{i}")
    for i in range(0, n, 2):
        os.unlink(root / "d" / f"g{i}")


def listing(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "d").iterdir())


def test_a_mount_alone_has_its_changes_answered_by_the_lane(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    m = Mount(d, tmp_path / "m")
    try:
        m.start()
        (m.path / "warm").mkdir()
        wait_for(lambda: lane_answers(d, m.path / "warm"), 20, "the lane to answer a change")
        before = lane_calls(d)
        changes(m.path, 20)
        after = lane_calls(d)
        # 1 mkdir + 20 × (create, commit at close, chmod, rename) + 10 unlinks.
        assert after["lane"] - before["lane"] >= 1 + 20 * 4 + 10
        assert listing(m.path) == sorted(f"g{i}" for i in range(1, 20, 2))
        assert all((m.path / "d" / f"g{i}").stat().st_size == i + 1 for i in range(1, 20, 2))
        assert (m.path / "d" / "g1").stat().st_mode & 0o777 == 0o600
    finally:
        m.stop()
        d.stop()
    d.start()  # what the lane answered was committed: the restarted daemon has all of it
    again = Mount(d, tmp_path / "again")
    try:
        again.start()
        assert listing(again.path) == sorted(f"g{i}" for i in range(1, 20, 2))
        assert (again.path / "d" / "g1").stat().st_mode & 0o777 == 0o600
    finally:
        again.stop()
        d.assert_clean()
        d.stop()


def test_with_a_second_mount_changes_wait_for_it_on_the_event_loop(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    a, b = Mount(d, tmp_path / "a"), Mount(d, tmp_path / "b")
    try:
        a.start()
        (a.path / "seen").mkdir()
        wait_for(lambda: lane_answers(d, a.path / "seen"), 20, "mount a's lane to answer a change")
        b.start()
        assert (b.path / "seen").is_dir()
        before = lane_calls(d)
        for i in range(10):
            (a.path / "seen" / f"f{i}").write_bytes(b"y")
            # Mount b listens to the daemon's change notices: a's change reached it before the
            # call returned, so b's kernel cannot answer from what it cached before.
            assert (b.path / "seen" / f"f{i}").read_bytes() == b"y"
            os.chmod(a.path / "seen" / f"f{i}", 0o640)
            assert (b.path / "seen" / f"f{i}").stat().st_mode & 0o777 == 0o640
        after = lane_calls(d)
        assert after["loop"] - before["loop"] >= 20  # every create and chmod, since b listens
        assert after["lane"] == before["lane"]
    finally:
        a.stop()
        b.stop()
        d.assert_clean()
        d.stop()


class Lane:
    """A raw connection to a daemon's lane socket, speaking the RPC framing."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.decoder = wire.FrameDecoder()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, msgid: int, method: str, *args: Any) -> None:
        self.send(b"".join(bytes(p) for p in wire.encode_request_parts(msgid, method, list(args))))

    def answer(self) -> wire.Response | None:
        """The next response (None: the daemon closed the connection)."""
        while (event := self.decoder.next_event()) is None:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)
        assert isinstance(event, wire.Response)
        return event

    def close(self) -> None:
        self.sock.close()


def ticket(d: Daemon) -> bytes:
    """A ticket from ``d``, asked for on its RPC unix socket (the test runs as root)."""

    async def ask() -> bytes:
        async with rpc.open_client(f"unix:{d.data_dir / 'rpc.sock'}") as conn:
            where = await endpoints.META_LANE.call(conn)
        assert where["socket"] == str(d.data_dir / "lane.sock")
        assert isinstance(where["ticket"], bytes)
        return where["ticket"]

    return trio.run(ask)


def test_the_lane_serves_only_a_ticket_holder_and_only_meta_once(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    try:
        path = str(d.data_dir / "lane.sock")
        wait_for(lambda: os.path.exists(path), 20, "the lane's socket")
        assert os.stat(path).st_mode & 0o777 == 0o600
        mkdir = ["meta.mkdir", [1, b"x", 0o755, 0, 0]]
        # No ticket, a forged one, garbage: one error frame each, then the daemon hangs up.
        for first in (
            lambda lane: lane.call(1, "meta.once", b"r" * 16, False, *mkdir),
            lambda lane: lane.call(1, "meta.lane", b"forged-ticket-16"),
            lambda lane: lane.send(b"\xff\xff\xff\xff garbage"),
        ):
            lane = Lane(path)
            first(lane)
            refused = lane.answer()
            assert refused is not None and isinstance(refused.error, DfsError), refused
            assert lane.answer() is None
            lane.close()
        # With a ticket: meta.once calls are answered, anything else is refused, the connection
        # stays; the ticket is good once.
        t = ticket(d)
        lane = Lane(path)
        lane.call(1, "meta.lane", t)
        attached = lane.answer()
        assert attached is not None and attached.error is None and attached.result is True
        lane.call(2, "meta.getattr", 1)
        other = lane.answer()
        assert other is not None and isinstance(other.error, InvalidArgument)
        lane.call(3, "meta.once", b"s" * 16, False, "meta.mkdir", [1, b"made", 0o755, 0, 0])
        made = lane.answer()
        assert made is not None and made.error is None, made
        lane.call(4, "meta.once", b"s" * 16, True, "meta.mkdir", [1, b"made", 0o755, 0, 0])
        again = lane.answer()  # the same request id again: the first answer, not a second mkdir
        assert again is not None and again.error is None and again.result == made.result
        lane.close()
        second = Lane(path)
        second.call(1, "meta.lane", t)
        reused = second.answer()
        assert reused is not None and isinstance(reused.error, NotPermitted)
        second.close()
        m = Mount(d, tmp_path / "m")
        m.start()
        try:
            assert sorted(os.listdir(m.path)) == ["made"]  # and no "x": refused calls ran nothing
        finally:
            m.stop()
        d.assert_clean()
    finally:
        d.stop()
