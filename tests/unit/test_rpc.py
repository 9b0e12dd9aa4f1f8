"""RPC client/server over real loopback TCP and unix sockets (plus one in-memory stream)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import random
import socket
import ssl
import stat
import struct
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from dfs.core import errors, wire
from dfs.core.errors import (
    ConfigError,
    DfsError,
    FrameTooLarge,
    InternalError,
    InvalidArgument,
    ProtocolError,
    Unavailable,
    UnknownMethod,
)
from dfs.core.wire import FrameDecoder, Response
from dfs.net.rpc import Address, NoReply, RpcServer, open_client, open_listeners, parse_address

# ----------------------------------------------------------------------------- fixtures


class Service:
    """Handlers with knobs the tests can turn (gates, counters)."""

    def __init__(self) -> None:
        self.gates: defaultdict[str, trio.Event] = defaultdict(trio.Event)
        self.entered: defaultdict[str, trio.Event] = defaultdict(trio.Event)
        self.cancelled: defaultdict[str, trio.Event] = defaultdict(trio.Event)
        self.active = 0
        self.max_active = 0

    async def echo(self, *args: Any) -> list[Any]:
        return list(args)

    async def add(self, a: int, b: int) -> int:
        return a + b

    async def gate(self, key: str) -> str:
        self.entered[key].set()
        await self.gates[key].wait()
        return key

    async def sleep(self, seconds: float, value: Any) -> Any:
        await trio.sleep(seconds)
        return value

    async def fail(self, code: str, message: str, err: int | None = None) -> None:
        raise errors.BY_CODE[code](message, errno=err)

    async def boom(self, secret: str) -> None:
        raise RuntimeError("boom")

    async def inner_type_error(self) -> int:
        value: Any = None
        return int(value)  # TypeError raised inside the handler

    async def group(self) -> None:
        raise ExceptionGroup("g", [errors.NotFound("in a group")])

    async def blob(self, n: int) -> bytes:
        return b"\x5a" * n

    async def hang(self) -> None:
        self.entered["hang"].set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled["hang"].set()

    async def unencodable(self) -> object:
        return object()

    async def count(self) -> int:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await trio.sleep(0.001)
        finally:
            self.active -= 1
        return self.max_active

    def handlers(self) -> dict[str, Callable[..., Any]]:
        names = [n for n in dir(self) if not n.startswith("_") and n not in ("handlers",)]
        return {n: getattr(self, n) for n in names if callable(getattr(self, n))}


def address_of(listener: trio.SocketListener) -> str:
    sock = listener.socket
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


@dataclass
class ServerHandle:
    server: RpcServer
    address: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)

    async def stop(self) -> None:
        """Cancel the server and wait until its listeners and connections are closed."""
        self.scope.cancel()
        await self.stopped.wait()


async def start_server(
    nursery: trio.Nursery, handlers: dict[str, Any], address: str, **kwargs: Any
) -> ServerHandle:
    listeners = await open_listeners(address)
    handle = ServerHandle(RpcServer(handlers, **kwargs), address_of(listeners[0]))

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with handle.scope:
                await handle.server.serve(listeners, task_status=task_status)
        finally:
            handle.stopped.set()

    await nursery.start(run)
    return handle


@asynccontextmanager
async def serving(handlers: dict[str, Any], address: str, **kwargs: Any) -> AsyncIterator[ServerHandle]:
    async with trio.open_nursery() as nursery:
        handle = await start_server(nursery, handlers, address, **kwargs)
        try:
            yield handle
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture(params=["tcp", "unix"])
def addr(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where to listen: an ephemeral loopback port or a unix socket in tmp_path."""
    return "127.0.0.1:0" if request.param == "tcp" else f"unix:{tmp_path}/rpc.sock"


async def wait_until(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while True:
            if pred():
                return
            await trio.sleep(0.001)


async def open_raw(address: str) -> trio.abc.Stream:
    a = parse_address(address, 0)
    if a.path is not None:
        return await trio.open_unix_socket(a.path)
    return await trio.open_tcp_stream(a.host, a.port)


async def raw_exchange(address: str, payload: bytes, *, send_eof: bool = False) -> tuple[list[Any], str]:
    """Send raw bytes, read until the server closes; return (events, how it ended)."""
    stream = await open_raw(address)
    events: list[Any] = []
    ending = "eof"
    async with stream:
        await stream.send_all(payload)
        if send_eof:
            assert isinstance(stream, trio.SocketStream)
            await stream.send_eof()
        dec = FrameDecoder()
        with trio.fail_after(5):
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    ending = "reset"
                    break
                if not data:
                    break
                dec.feed(data)
                while (ev := dec.next_event()) is not None:
                    events.append(ev)
    return events, ending


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# ----------------------------------------------------------------------------- basics


async def test_simple_call(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        assert not client.connected
        assert await client.call("add", 2, 3) == 5
        assert client.connected
        assert await client.call("echo", "x", b"y", [1, {"k": None}]) == ["x", b"y", [1, {"k": None}]]
        assert await client.call("echo") == []
        assert srv.server.stats.calls["add"] == 1
        assert srv.server.stats.connections_open == 1


async def test_concurrent_calls_complete_out_of_order(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        done: list[str] = []

        async def one(key: str) -> None:
            done.append(await client.call("gate", key))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for key in "abc":
                    nursery.start_soon(one, key)
                for key in "abc":
                    await svc.entered[key].wait()  # all three are in flight at once
                for key in "cba":
                    svc.gates[key].set()
                    await wait_until(lambda k=key: k in done)  # type: ignore[misc]
        assert done == ["c", "b", "a"]


async def test_many_concurrent_calls_with_different_delays(addr: str) -> None:
    svc = Service()
    rng = random.Random(7)
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await client.call("sleep", rng.random() * 0.02, i)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
        assert results == {i: i for i in range(200)}


@pytest.mark.parametrize("cls", sorted(errors.BY_CODE.values(), key=attrgetter("code")))
async def test_errors_reraised_as_same_class(cls: type[DfsError], tmp_path: Path) -> None:
    svc = Service()
    async with serving(svc.handlers(), f"unix:{tmp_path}/s") as srv, open_client(srv.address) as client:
        with pytest.raises(cls) as info:
            await client.call("fail", cls.code, "it broke")
        assert type(info.value) is cls
        assert info.value.errno == cls.errno
        assert info.value.message == "it broke"


async def test_error_errno_override_travels(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        with pytest.raises(errors.NoSpace) as info:
            await client.call("fail", "NoSpace", "quota", errno.EDQUOT)
        assert info.value.errno == errno.EDQUOT
        assert srv.server.stats.error_codes["NoSpace"] == 1
        assert srv.server.stats.errors["fail"] == 1


async def test_unknown_method_bad_arity_and_handler_bugs(addr: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="dfs.rpc")
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        with pytest.raises(UnknownMethod):
            await client.call("no_such_method")
        with pytest.raises(InvalidArgument):
            await client.call("add", 1)
        with pytest.raises(InvalidArgument):
            await client.call("add", 1, 2, 3)
        # A TypeError raised *inside* the handler is a bug, not bad arguments.
        with pytest.raises(InternalError):
            await client.call("inner_type_error")
        with pytest.raises(InternalError):
            await client.call("boom", "SECRET-VALUE")
        with pytest.raises(InternalError):
            await client.call("unencodable")
        with pytest.raises(errors.NotFound):
            await client.call("group")
        # The connection survived all of it.
        assert await client.call("add", 1, 2) == 3
        assert srv.server.stats.calls["<unknown>"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "dfs.rpc"]
    assert any("boom" in m for m in messages)
    assert any("inner_type_error" in m for m in messages)
    assert all("SECRET-VALUE" not in m for m in messages)


async def test_16mib_payload_round_trip(addr: str) -> None:
    svc = Service()
    data = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        got = await client.call("echo", "key", data, 7)
        assert got[0] == "key"
        assert got[2] == 7
        assert got[1] == data


async def test_64mib_result(tmp_path: Path) -> None:
    svc = Service()
    size = 64 * 1024 * 1024
    async with serving(svc.handlers(), f"unix:{tmp_path}/s") as srv, open_client(srv.address) as client:
        got = await client.call("blob", size)
        assert len(got) == size
        assert got[:4] == b"ZZZZ"


async def test_tls_mutual_auth(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    svc = Service()
    async with (
        serving(svc.handlers(), "127.0.0.1:0", ssl_context=server_ctx) as srv,
        open_client(srv.address, ssl_context=client_ctx) as client,
    ):
        assert await client.call("add", 20, 22) == 42
        got = await client.call("echo", b"t" * 300_000)
        assert got == [b"t" * 300_000]
        # A plaintext client cannot talk to a TLS server.
        async with open_client(srv.address, call_timeout_s=5) as plain:
            with pytest.raises(Unavailable):
                await plain.call("add", 1, 1)


# ----------------------------------------------------------------------------- failure modes


async def test_timeout_raises_unavailable_and_late_reply_is_dropped(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        with trio.fail_after(5), pytest.raises(Unavailable, match="no reply"):
            await client.call("gate", "late", timeout_s=0.05)
        svc.gates["late"].set()  # its reply now arrives with no one waiting
        assert await client.call("add", 1, 2) == 3
        assert client.connected


async def test_default_call_timeout(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address, call_timeout_s=0.05) as client:
        with trio.fail_after(5), pytest.raises(Unavailable):
            await client.call("hang")
        assert await client.call("add", 1, 2) == 3


async def test_default_call_timeout_on_a_live_connection_ends_the_wait(addr: str) -> None:
    # On a live connection the default timeout is kept by the connection's watchdog, not by a
    # cancel scope per call: a hung call still ends, with the usual message, and others go on.
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address, call_timeout_s=0.2) as client:
        assert await client.call("add", 1, 2) == 3  # the connection is up: the watchdog path
        failed: list[tuple[NoReply, float]] = []

        async def hang() -> None:
            started = trio.current_time()
            with pytest.raises(NoReply, match=r"no reply within 0\.2s") as info:
                await client.call("hang")
            failed.append((info.value, trio.current_time() - started))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                for i in range(20):
                    assert await client.call("add", i, 1) == i + 1
        [(_, waited_s)] = failed
        assert 0.2 <= waited_s < 0.2 + 2 * 0.2 / 8 + 0.5
        assert await client.call("add", 2, 2) == 4


@pytest.mark.parametrize(
    ("payload", "send_eof", "expected"),
    [
        pytest.param(frame(b"\xc1"), False, ProtocolError, id="garbage"),
        pytest.param(frame(msgpack.packb([0, 1, "", []])), False, ProtocolError, id="bad-shape"),
        pytest.param(wire.encode_response(1, None), False, ProtocolError, id="response-to-server"),
        pytest.param(struct.pack(">I", 4097), False, FrameTooLarge, id="oversized-prefix-only"),
        pytest.param(struct.pack(">I", 100) + b"0123456789", True, ProtocolError, id="truncated"),
    ],
)
async def test_bad_frames_get_error_and_close_while_others_continue(
    addr: str, payload: bytes, send_eof: bool, expected: type[DfsError]
) -> None:
    svc = Service()
    async with (
        serving(svc.handlers(), addr, max_frame_bytes=4096) as srv,
        open_client(srv.address, max_frame_bytes=4096) as good,
    ):
        assert await good.call("add", 1, 1) == 2
        events, ending = await raw_exchange(srv.address, payload, send_eof=send_eof)
        assert ending == "eof"
        assert len(events) == 1
        (ev,) = events
        assert isinstance(ev, Response)
        assert ev.msgid == 0
        assert type(ev.error) is expected
        assert srv.server.stats.protocol_errors == 1
        assert await good.call("add", 2, 2) == 4
        assert good.connected


async def test_client_disconnecting_mid_request_cancels_handler(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv:
        stream = await open_raw(srv.address)
        await stream.send_all(wire.encode_request(1, "hang", []))
        with trio.fail_after(5):
            await svc.entered["hang"].wait()
            await stream.aclose()
            await svc.cancelled["hang"].wait()
            await wait_until(lambda: srv.server.stats.connections_open == 0)
        async with open_client(srv.address) as client:
            assert await client.call("add", 1, 1) == 2


async def test_handle_stream_over_memory_stream() -> None:
    """The server side is transport-agnostic; an abrupt close never raises."""
    svc = Service()
    server = RpcServer(svc.handlers())
    client_side, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_side)
        await client_side.send_all(wire.encode_request(3, "add", [4, 5]) + wire.encode_request(4, "hang", []))
        dec = FrameDecoder()
        with trio.fail_after(5):
            while (ev := dec.next_event()) is None:
                dec.feed(await client_side.receive_some())
            assert ev == Response(3, None, 9)
            await svc.entered["hang"].wait()
            await client_side.aclose()
    assert svc.cancelled["hang"].is_set()
    assert server.stats.connections_open == 0


async def test_inflight_limit_bounds_handler_concurrency(addr: str) -> None:
    svc = Service()
    async with (
        serving(svc.handlers(), addr, max_inflight_per_conn=4) as srv,
        open_client(srv.address) as client,
    ):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(client.call, "count")
        assert svc.max_active == 4


async def test_request_over_client_limit_is_refused_locally(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address, max_frame_bytes=1000) as client:
        assert await client.call("add", 1, 1) == 2
        with pytest.raises(FrameTooLarge):
            await client.call("echo", b"x" * 2000)
        assert await client.call("add", 1, 2) == 3


async def test_result_over_server_limit_becomes_error(addr: str) -> None:
    svc = Service()
    async with (
        serving(svc.handlers(), addr, max_frame_bytes=100_000) as srv,
        open_client(srv.address, max_frame_bytes=100_000) as client,
    ):
        with pytest.raises(FrameTooLarge):
            await client.call("blob", 200_000)
        assert await client.call("blob", 10) == b"Z" * 10


async def test_unencodable_arguments_raise_before_sending(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        with pytest.raises(InvalidArgument):
            await client.call("echo", object())
        with pytest.raises(InvalidArgument):
            await client.call("")
        assert srv.server.stats.calls.total() == 0


async def test_connection_lost_mid_call_raises_unavailable(addr: str) -> None:
    svc = Service()
    async with trio.open_nursery() as nursery:
        handle = await start_server(nursery, svc.handlers(), addr)
        async with open_client(handle.address) as client:
            outcome: list[BaseException] = []

            async def caller() -> None:
                try:
                    await client.call("hang")
                except Unavailable as exc:
                    outcome.append(exc)

            with trio.fail_after(5):
                async with trio.open_nursery() as inner:
                    inner.start_soon(caller)
                    await svc.entered["hang"].wait()
                    await handle.stop()
            assert len(outcome) == 1
            assert "closed" in str(outcome[0]) or "lost" in str(outcome[0])
            assert not client.connected
            client.connect_timeout_s = 0.1
            with trio.fail_after(5), pytest.raises(Unavailable, match="cannot connect"):
                await client.call("add", 1, 1)


async def test_client_survives_server_restart(addr: str) -> None:
    svc = Service()
    async with trio.open_nursery() as nursery:
        handle = await start_server(nursery, svc.handlers(), addr)
        # Keep the resolved address (same port / same socket path) for the restart.
        address = handle.address
        async with open_client(address, connect_timeout_s=0.2) as client:
            assert await client.call("add", 1, 1) == 2
            await handle.stop()
            await wait_until(lambda: not client.connected)
            with trio.fail_after(5), pytest.raises(Unavailable, match="cannot connect"):
                await client.call("add", 1, 2)
            # Restart on the same address: for unix this also removes the stale socket file.
            handle = await start_server(nursery, svc.handlers(), address)
            client.connect_timeout_s = 5
            assert await client.call("add", 2, 2) == 4
            assert client.connected
            await handle.stop()


async def garbage_server(stream: trio.abc.Stream) -> None:
    await stream.receive_some(1024)
    await stream.send_all(frame(b"\xc1"))


async def request_sending_server(stream: trio.abc.Stream) -> None:
    await stream.receive_some(1024)
    await stream.send_all(wire.encode_request(1, "evil", []))


@pytest.mark.parametrize("peer", [garbage_server, request_sending_server])
async def test_peer_sending_garbage_fails_pending_calls(peer: Callable[..., Any]) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, peer, listeners)
        async with open_client(address_of(listeners[0])) as client:
            with trio.fail_after(5), pytest.raises(Unavailable, match="bad data from peer"):
                await client.call("add", 1, 1)
        nursery.cancel_scope.cancel()


async def test_closed_client_fails_pending_and_later_calls(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        outcome: list[BaseException] = []

        async def caller() -> None:
            try:
                await client.call("hang")
            except Unavailable as exc:
                outcome.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
                await svc.entered["hang"].wait()
                await client.aclose()
        assert client.closed
        assert len(outcome) == 1
        with pytest.raises(Unavailable, match="closed"):
            await client.call("add", 1, 1)


async def test_server_drops_client_that_stops_reading(addr: str) -> None:
    svc = Service()
    async with serving(svc.handlers(), addr, send_timeout_s=0.2) as srv:
        stream = await open_raw(srv.address)
        async with stream:
            # Ask for far more than the socket buffers hold, then never read.
            await stream.send_all(wire.encode_request(1, "blob", [48 * 1024 * 1024]))
            await wait_until(lambda: srv.server.stats.calls["blob"] == 1)
            await wait_until(lambda: srv.server.stats.connections_open == 0, timeout_s=10)
        async with open_client(srv.address) as client:
            assert await client.call("add", 1, 1) == 2


@asynccontextmanager
async def deaf_peer(addr: str) -> AsyncIterator[tuple[str, trio.Event]]:
    """A server that accepts connections and never reads from them: (its address, accepted)."""
    accepted = trio.Event()

    async def deaf(stream: trio.abc.Stream) -> None:
        accepted.set()
        await trio.sleep_forever()

    listeners = await open_listeners(addr)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, deaf, listeners)
        yield address_of(listeners[0]), accepted
        nursery.cancel_scope.cancel()


async def test_client_drops_server_that_stops_reading(addr: str, tmp_path: Path) -> None:
    async with deaf_peer(addr) as (address, accepted), open_client(address, call_timeout_s=0.2) as client:
        with trio.fail_after(10), pytest.raises(Unavailable):
            await client.call("echo", bytes(48 * 1024 * 1024))
        assert accepted.is_set()
        await wait_until(lambda: not client.connected, timeout_s=10)


async def test_calls_given_up_on_a_peer_that_stops_reading_let_go_of_their_payloads(addr: str) -> None:
    """A connection without a stall watchdog (those to other nodes have none) to a peer that
    accepts but never reads: each call given up on releases its payload at once, and the
    queue drops such calls, instead of keeping every blob until the peer reads again."""
    async with deaf_peer(addr) as (address, accepted), open_client(address, call_timeout_s=None) as client:
        with trio.move_on_after(0.5):  # fills the socket buffers: the writer is stuck
            await client.call("echo", bytes(48 * 1024 * 1024))
        assert accepted.is_set()
        for _ in range(300):
            with trio.move_on_after(0.001):  # as a chunk put gives up past peer_timeout_s
                await client.call("echo", bytes(1024 * 1024))
        conn = client._conn
        assert conn is not None and conn.failure is None  # nothing noticed the stall
        queue = conn.outbox._queue
        held = sum(wire.parts_nbytes(item.parts) for item in queue)
        assert held < 1024 * 1024  # not 300 MiB of abandoned payloads
        assert len(queue) < 300


async def test_outbox_coalesces_and_skips_abandoned_calls() -> None:
    from dfs.net.rpc import _Outbox, _Outgoing, _Waiter

    client_side, server_side = trio.testing.memory_stream_pair()
    outbox = _Outbox(client_side)
    abandoned = _Waiter()
    abandoned.gone = True
    sent: list[int] = []
    outbox.put(_Outgoing(wire.encode_request_parts(1, "a", []), on_sent=lambda: sent.append(1)))
    outbox.put(_Outgoing(wire.encode_request_parts(2, "b", []), waiter=abandoned))
    outbox.put(_Outgoing(wire.encode_request_parts(3, "c", [bytes(100_000)]), on_sent=lambda: sent.append(3)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run)
        dec = FrameDecoder()
        got: list[int] = []
        with trio.fail_after(5):
            while len(got) < 2:
                dec.feed(await server_side.receive_some())
                while (ev := dec.next_event()) is not None:
                    got.append(ev.msgid)
            await wait_until(lambda: len(sent) == 2)
        nursery.cancel_scope.cancel()
    assert got == [1, 3]  # msgid 2's caller had given up: never sent
    assert sent == [1, 3]


async def test_connect_failure_is_unavailable(tmp_path: Path) -> None:
    async with open_client(f"unix:{tmp_path}/nobody", connect_timeout_s=0.05) as client:
        with trio.fail_after(5), pytest.raises(Unavailable, match="cannot connect"):
            await client.call("add", 1, 1)


# ----------------------------------------------------------------------------- addresses & listeners


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host:7400", Address(host="host", port=7400)),
        ("10.0.0.1:1", Address(host="10.0.0.1", port=1)),
        ("host", Address(host="host", port=99)),
        ("[::1]:7400", Address(host="::1", port=7400)),
        ("[::1]", Address(host="::1", port=99)),
        ("::1", Address(host="::1", port=99)),
        (":7400", Address(host="", port=7400)),
        ("unix:/run/dfs.sock", Address(path="/run/dfs.sock")),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text, 99) == expected
    assert parse_address(str(expected), 5) == expected


@pytest.mark.parametrize("text", ["host:", "host:x", "host:70000", "[::1", "[::1]x", "unix:", "[::1]:-1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text, 1)


async def test_unix_listener_permissions_and_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    # A stale socket file from a dead process.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    listeners = await open_listeners(f"unix:{path}")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # A live socket must not be stolen.
        with pytest.raises(ConfigError, match="already listening"):
            await open_listeners(f"unix:{path}")
    finally:
        for listener in listeners:
            await listener.aclose()
    regular = tmp_path / "file"
    regular.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        await open_listeners(f"unix:{regular}")


async def test_tcp_listener_in_use_is_config_error() -> None:
    listeners = await open_listeners("127.0.0.1:0")
    try:
        with pytest.raises(ConfigError):
            await open_listeners(address_of(listeners[0]))
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listeners = await open_listeners("[::1]:0")
    except ConfigError:
        pytest.skip("IPv6 loopback unavailable")
    for listener in listeners:
        await listener.aclose()
    svc = Service()
    async with serving(svc.handlers(), "[::1]:0") as srv, open_client(srv.address) as client:
        assert srv.address.startswith("[::1]:")
        assert await client.call("add", 3, 4) == 7


# ----------------------------------------------------------------------------- benchmark


async def test_benchmark(addr: str) -> None:
    """Printed, not asserted: run with -s to see the numbers."""
    svc = Service()
    async with serving(svc.handlers(), addr) as srv, open_client(srv.address) as client:
        await client.call("add", 0, 0)  # connect + warm up
        n = 2000
        t0 = time.perf_counter()
        for i in range(n):
            await client.call("add", i, 1)
        seq = time.perf_counter() - t0

        workers, per_worker = 64, 200

        async def worker() -> None:
            for i in range(per_worker):
                await client.call("add", i, 1)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
        pipe = time.perf_counter() - t0

        block = bytes(4 * 1024 * 1024)
        rounds = 16
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(rounds):
                nursery.start_soon(client.call, "echo", block)
        bulk = time.perf_counter() - t0
    kind = addr.split(":")[0] if addr.startswith("unix") else "tcp"
    print(
        f"\n[rpc bench {kind}] sequential: {seq / n * 1e6:.1f} us/call; "
        f"pipelined ({workers} in flight): {workers * per_worker / pipe:,.0f} calls/s; "
        f"4 MiB echo x{rounds}: {rounds * 2 * len(block) / bulk / 2**20:,.0f} MiB/s"
    )


# ----------------------------------------------------------------------------- TLS helper


def make_tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed cert for 127.0.0.1 used by both sides (mutual TLS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dfs-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cert_path))
    server_ctx.load_cert_chain(cert_path, key_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert_path))
    client_ctx.load_cert_chain(cert_path, key_path)
    return server_ctx, client_ctx
