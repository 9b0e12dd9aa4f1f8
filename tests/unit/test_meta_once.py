"""meta.once end to end: a real daemon applied a change, its reply was lost on the way, and the
client's FailoverCaller sends the change again with the same request id; the daemon answers
with the first run's result and applies nothing twice (daemon/meta/requests.py,
daemon/service/handlers.py, dfs/net/failover.py)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from dfs.core import endpoints
from dfs.core.auth import CallerClass
from dfs.core.errors import CallerNotAllowed, Exists, InvalidArgument, NotFound
from dfs.core.namespace import ROOT_INO, Attr
from dfs.net import rpc
from dfs.net.failover import FailoverCaller
from tests.conftest import Daemon


class ReplyCutter:
    """A TCP proxy to the daemon that, when armed, swallows the next bytes the daemon sends and
    cuts the connection: the request arrived and ran, its reply never reaches the client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = False
        self.cut = 0
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, server, trio.open_nursery() as nursery:

            async def up() -> None:
                async for data in client:
                    await server.send_all(data)
                nursery.cancel_scope.cancel()

            async def down() -> None:
                async for data in server:
                    if self.armed:
                        self.armed = False
                        self.cut += 1
                        break
                    await client.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(up)
            nursery.start_soon(down)


@contextlib.asynccontextmanager
async def cut_client(
    daemon: Daemon, caller: CallerClass
) -> AsyncIterator[tuple[FailoverCaller, ReplyCutter]]:
    async with trio.open_nursery() as nursery:
        proxy = ReplyCutter(daemon.port)
        await nursery.start(proxy.serve)
        async with rpc.open_client(
            f"127.0.0.1:{proxy.port}", credential=daemon.credential(caller), call_timeout_s=30
        ) as conn:
            await endpoints.SYS_PING.call(conn)  # connected and authenticated before anything is cut
            yield FailoverCaller([conn], ["d0"], retry_window_s=30), proxy
        nursery.cancel_scope.cancel()


async def names_in_root(fo: FailoverCaller) -> list[bytes]:
    entries = await endpoints.META_READDIR.call(fo, ROOT_INO, 0, 100)
    return sorted(e[0] for e in entries if e[0] not in (b".", b".."))


async def test_a_change_whose_reply_was_lost_is_answered_again_not_applied_twice(daemon: Daemon) -> None:
    async with cut_client(daemon, CallerClass.CLIENT) as (fo, proxy):
        proxy.armed = True
        made, stamps = await endpoints.META_MKDIR.call(fo, ROOT_INO, b"d", 0o755, 0, 0)
        assert proxy.cut == 1  # the first reply was lost: this is the recorded one, replayed
        assert (
            Attr.from_wire(made).ino
            == Attr.from_wire(await endpoints.META_LOOKUP.call(fo, ROOT_INO, b"d")).ino
        )
        assert stamps[0][0] == ROOT_INO
        await endpoints.META_CREATE.call(fo, ROOT_INO, b"a", 0o644, 0, 0, "s1")
        # Without the record a second run of the rename would find no "a" (ENOENT).
        proxy.armed = True
        await endpoints.META_RENAME.call(fo, ROOT_INO, b"a", ROOT_INO, b"b", 0)
        assert proxy.cut == 2
        proxy.armed = True
        await endpoints.META_UNLINK.call(fo, ROOT_INO, b"b")
        assert proxy.cut == 3
        assert await names_in_root(fo) == [b"d"]
    daemon.assert_clean()


async def test_without_a_request_id_the_lost_change_would_be_made_again(daemon: Daemon) -> None:
    """The control: the same lost reply, answered by running the change again."""
    async with cut_client(daemon, CallerClass.CLIENT) as (fo, proxy):
        (conn,) = fo._clients
        proxy.armed = True
        with pytest.raises(rpc.NoReply):
            await endpoints.META_MKDIR.call(conn, ROOT_INO, b"d", 0o755, 0, 0)
        with pytest.raises(Exists):
            await endpoints.META_MKDIR.call(conn, ROOT_INO, b"d", 0o755, 0, 0)
    daemon.assert_clean()


async def test_a_new_id_runs_the_change_and_a_repeat_only_finds_its_record(daemon: Daemon) -> None:
    async with rpc.open_client(daemon.address, credential=daemon.credential(CallerClass.CLIENT)) as conn:
        rid = secrets.token_bytes(16)
        args: list[Any] = [ROOT_INO, b"x", 0o755, 0, 0]
        first = await endpoints.META_ONCE.call(conn, rid, False, endpoints.META_MKDIR.name, args)
        again = await endpoints.META_ONCE.call(conn, rid, True, endpoints.META_MKDIR.name, args)
        assert again == first
        # A repeat not marked retried looks for no record: the change runs, and fails.
        with pytest.raises(Exists):
            await endpoints.META_ONCE.call(conn, rid, False, endpoints.META_MKDIR.name, args)
        # A failed change leaves no record: its repeat runs again.
        gone = secrets.token_bytes(16)
        for retried in (False, True):
            with pytest.raises(NotFound):
                await endpoints.META_ONCE.call(
                    conn, gone, retried, endpoints.META_UNLINK.name, [ROOT_INO, b"no"]
                )
    daemon.assert_clean()


# (request id, method, args, the error, what it says)
BAD_CALLS: list[tuple[bytes, str, list[Any], type[Exception], str]] = [
    (b"r" * 16, "meta.lookup", [ROOT_INO, b"x"], InvalidArgument, "not a call meta.once makes"),
    (b"r" * 16, "meta.claim_orphans", [[]], InvalidArgument, "not a call meta.once makes"),
    (b"r" * 16, "meta.once", [b"r" * 16, False, "meta.mkdir", []], InvalidArgument, "meta.once makes"),
    (b"r" * 16, "meta.mkdir", [ROOT_INO, "x", 0, 0, 0], InvalidArgument, r"meta\.mkdir: name must be bytes"),
    (b"r" * 16, "meta.mkdir", [ROOT_INO], InvalidArgument, r"meta\.mkdir: takes 5 arguments"),
    (b"short", "meta.mkdir", [ROOT_INO, b"x", 0, 0, 0], InvalidArgument, "request id is 16 to 32 bytes"),
    (b"r" * 16, "meta.create_volume", ["v", {}], CallerNotAllowed, "not open to client callers"),
]


async def test_meta_once_checks_the_call_it_wraps(daemon: Daemon) -> None:
    async with rpc.open_client(daemon.address, credential=daemon.credential(CallerClass.CLIENT)) as conn:
        for request_id, method, args, error, match in BAD_CALLS:
            with pytest.raises(error, match=match):
                await endpoints.META_ONCE.call(conn, request_id, False, method, args)
        assert await names_in_root(FailoverCaller([conn], ["d0"])) == []
    daemon.assert_clean()
