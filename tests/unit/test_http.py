"""daemon.http over real loopback sockets.

Clients are raw trio streams driven by an h11 client connection (so tests can
send exactly the bytes they want, malformed or slow), or the stdlib
``http.client`` in a worker thread as an independent, real-world client.
"""

from __future__ import annotations

import email.utils
import errno
import hashlib
import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from daemon.http import BodyError, HttpServer, Request, Response, open_http_listeners
from dfs.core.errors import ConfigError

TIMEOUT_S = 5.0

Handler = Callable[[Request], Any]


# --------------------------------------------------------------------------- harness


@asynccontextmanager
async def serving(handler: Handler, **kwargs: Any) -> AsyncIterator[tuple[HttpServer, int]]:
    """Run an HttpServer on 127.0.0.1:<any port> for the duration of the block."""
    server = HttpServer(handler, **kwargs)
    listeners = await open_http_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        try:
            yield server, port
        finally:
            nursery.cancel_scope.cancel()


async def eventually(pred: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Poll *pred* until true (never a blind sleep)."""
    deadline = trio.current_time() + timeout_s
    delay = 0.001
    while not pred():
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await trio.sleep(delay)
        delay = min(delay * 2, 0.05)


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None


class RawClient:
    """A byte-exact client: h11 on the client side, so responses are parsed properly."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawClient]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            yield cls(stream)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        with trio.fail_after(TIMEOUT_S):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(bytes(await self.stream.receive_some(65536)))
                    continue
                assert isinstance(event, h11.Event), event
                return event

    async def response(self) -> Reply:
        informational: list[int] = []
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
                continue
            assert isinstance(event, h11.Response), event
            break
        headers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers]
        body = bytearray()
        while True:
            part = await self.next_event()
            if isinstance(part, h11.Data):
                body += part.data
                continue
            assert isinstance(part, h11.EndOfMessage), part
            break
        return Reply(event.status_code, headers, bytes(body), informational)

    async def request(
        self, method: str, target: str = "/", headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> Reply:
        fields = [("Host", "test"), *(headers or [])]
        if body or method in ("PUT", "POST"):
            fields.append(("Content-Length", str(len(body))))
        raw_fields = [(k.encode(), v.encode("latin-1")) for k, v in fields]
        await self.send(h11.Request(method=method, target=target, headers=raw_fields))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())
        reply = await self.response()
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return reply

    async def wait_eof(self) -> None:
        """Read until the server closes; fail on a reset (the response could have been lost)."""
        with trio.fail_after(TIMEOUT_S):
            while await self.stream.receive_some(65536):
                pass


def replies_from(raw: bytes, count: int, method: str = "GET") -> list[Reply]:
    """Parse *count* complete responses from bytes read until EOF."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    conn.receive_data(b"")
    replies = []
    for _ in range(count):
        if conn.our_state is h11.DONE:
            conn.start_next_cycle()
        # Our side of the exchange only moves the client state machine along.
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        event = conn.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = conn.next_event()
        assert isinstance(event, h11.Response), event
        body = bytearray()
        while isinstance(part := conn.next_event(), h11.Data):
            body += part.data
        assert isinstance(part, h11.EndOfMessage), part
        headers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers]
        replies.append(Reply(event.status_code, headers, bytes(body)))
    return replies


def reply_from(raw: bytes, method: str = "GET") -> Reply:
    """Parse one complete response from bytes read until EOF."""
    (reply,) = replies_from(raw, 1, method)
    return reply


async def exchange_raw(port: int, data: bytes) -> bytes:
    """Send *data*, then read until the server closes the connection."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        received = bytearray()
        with trio.fail_after(TIMEOUT_S):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return bytes(received)


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


def stdlib_get(port: int, target: str = "/", method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def echo(request: Request) -> Response:
    body = await request.read_body(16 << 20)
    return Response(200, [("Content-Type", "application/octet-stream")], body)


async def hello(request: Request) -> Response:
    return Response(200, [("Content-Type", "text/plain")], b"hello " + request.path.encode())


# --------------------------------------------------------------------------- basics


IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$"
)


async def test_get_has_date_server_and_request_fields() -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return Response(200, [("Content-Type", "text/plain")], b"hi")

    async with serving(handler, server_header="dfs-test/1") as (_, port):
        status, headers, body = await in_thread(lambda: stdlib_get(port, "/b/k%20ey?list-type=2&x=%2F"))
    assert (status, body) == (200, b"hi")
    assert headers["server"] == "dfs-test/1"
    assert headers["content-length"] == "2"
    assert IMF_FIXDATE.match(headers["date"]), headers["date"]
    sent = email.utils.parsedate_to_datetime(headers["date"])
    assert abs((sent - datetime.now(UTC)).total_seconds()) < 5
    (req,) = seen
    assert req.method == "GET"
    assert req.target == "/b/k%20ey?list-type=2&x=%2F"
    assert req.path == "/b/k%20ey"
    assert req.query == "list-type=2&x=%2F"
    assert req.http_version == "1.1"
    assert req.scheme == "http"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", req.remote)
    assert req.content_length is None
    assert req.body_complete and not req.body_started
    assert req.header("HOST") == f"127.0.0.1:{port}"


async def test_request_header_helpers() -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return Response(204)

    async with serving(handler) as (_, port), RawClient.connect(port) as client:
        extra = [("X-Amz-Meta-A", "1"), ("x-amz-meta-a", "2"), ("X-Latin", "caf\xe9")]
        reply = await client.request("GET", "/", extra)
    assert reply.status == 204
    assert reply.header("content-length") is None  # never on a 204
    req = seen[0]
    assert req.header("x-amz-meta-a") == "1"
    assert req.header("X-AMZ-META-A") == "1"
    assert req.header("missing") is None
    assert req.header("missing", "d") == "d"
    assert req.header_map()["x-amz-meta-a"] == "1,2"
    assert req.header("x-latin") == "caf\xe9"  # latin-1 decoded
    assert ("x-amz-meta-a", "2") in req.headers


async def test_keep_alive_sequential_requests_share_one_connection() -> None:
    async with serving(hello) as (server, port):

        def client() -> list[bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
            bodies = []
            try:
                for i in range(5):
                    conn.request("GET", f"/{i}")
                    resp = conn.getresponse()
                    assert resp.getheader("connection") is None
                    bodies.append(resp.read())
                return bodies
            finally:
                conn.close()

        bodies = await in_thread(client)
        await eventually(lambda: server.statistics().connections_open == 0, "connection closed")
        stats = server.statistics()
    assert bodies == [b"hello /%d" % i for i in range(5)]
    assert stats.connections_total == 1
    assert stats.requests_served == 5


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serving(hello) as (_, port):
        raw = await exchange_raw(
            port,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert [r.body for r in replies_from(raw, 3)] == [b"hello /a", b"hello /b", b"hello /c"]


async def test_upgrade_is_declined_and_connection_continues() -> None:
    async with serving(hello) as (_, port):
        raw = await exchange_raw(
            port,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert [(r.status, r.body) for r in replies_from(raw, 2)] == [(200, b"hello /ws"), (200, b"hello /next")]


async def test_connection_close_is_honoured() -> None:
    async with serving(hello) as (_, port):
        raw = await exchange_raw(port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = reply_from(raw)
    assert (reply.status, reply.body) == (200, b"hello /x")
    assert reply.header("connection") == "close"


async def test_http10_request_and_close_delimited_stream() -> None:
    versions: list[str] = []

    async def handler(request: Request) -> Response:
        versions.append(request.http_version)

        async def stream() -> AsyncIterator[bytes]:
            yield b"one,"
            yield b"two"

        return Response(200, body=stream())

    async with serving(handler) as (_, port):
        raw = await exchange_raw(port, b"GET / HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()  # HTTP/1.0 has no chunked encoding
    assert body == b"one,two"
    assert versions == ["1.0"]


async def test_head_keeps_content_length_and_sends_no_body() -> None:
    unread: list[AsyncGenerator[bytes, None]] = []

    async def handler(request: Request) -> Response:
        if request.method == "HEAD" and request.path == "/stream":

            async def never_read() -> AsyncGenerator[bytes, None]:
                yield b"x" * 10

            unread.append(never_read())
            return Response(200, [("ETag", '"e"')], unread[-1], content_length=10)
        if request.method == "HEAD":
            return Response(200, [("ETag", '"e"')], b"", content_length=1234)
        return Response(200, body=b"body!")

    async with serving(handler) as (_, port):

        def client() -> list[tuple[int, str | None, bytes]]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
            out = []
            try:
                for method, target in [("HEAD", "/"), ("GET", "/"), ("HEAD", "/stream"), ("GET", "/")]:
                    conn.request(method, target)
                    resp = conn.getresponse()
                    out.append((resp.status, resp.getheader("content-length"), resp.read()))
                return out
            finally:
                conn.close()

        results = await in_thread(client)
    # The unused body iterator was closed, not left to the garbage collector.
    with pytest.raises(StopAsyncIteration):
        await anext(unread[0])
    # A stray body byte after a HEAD response would corrupt the following GET.
    assert results == [(200, "1234", b""), (200, "5", b"body!"), (200, "10", b""), (200, "5", b"body!")]


async def test_handler_cannot_inject_headers() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/bad":
            return Response(200, [("X-Evil", "a\r\nSet-Cookie: x=1")], b"no")
        return Response(200, body=b"fine")

    async with serving(handler) as (_, port), RawClient.connect(port) as client:
        bad = await client.request("GET", "/bad")
        good = await client.request("GET", "/good")
    assert bad.status == 500
    assert bad.header("set-cookie") is None
    assert (good.status, good.body) == (200, b"fine")


# --------------------------------------------------------------------------- request bodies


async def test_content_length_upload_echo_in_small_pieces() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    pieces: list[int] = []

    async def handler(request: Request) -> Response:
        assert request.content_length == len(payload)
        digest = hashlib.sha256()
        while piece := await request.receive_some(1000):
            pieces.append(len(piece))
            digest.update(piece)
        assert request.body_complete and request.body_started
        return Response(200, body=digest.hexdigest().encode())

    async with serving(handler) as (_, port), RawClient.connect(port) as client:
        reply = await client.request("PUT", "/big", body=payload)
        again = await client.request("PUT", "/big", body=payload)  # the connection stays in sync
    assert reply.body == again.body == hashlib.sha256(payload).hexdigest().encode()
    assert max(pieces) <= 1000


async def test_chunked_upload_echo() -> None:
    lengths: list[int | None] = []

    async def handler(request: Request) -> Response:
        lengths.append(request.content_length)
        return await echo(request)

    async with serving(handler) as (_, port), RawClient.connect(port) as client:
        await client.send(
            h11.Request(method="PUT", target="/c", headers=[("Host", "x"), ("Transfer-Encoding", "chunked")])
        )
        for piece in (b"hello ", b"chunked ", b"world" * 10000):
            await client.send(h11.Data(data=piece))
        await client.send(h11.EndOfMessage())
        reply = await client.response()
    assert reply.body == b"hello chunked " + b"world" * 10000
    assert lengths == [None]


async def test_read_body_limit_gives_413() -> None:
    async def handler(request: Request) -> Response:
        await request.read_body(10)  # BodyError(413) propagates: the server answers it
        return Response(200)

    async with serving(handler) as (_, port), RawClient.connect(port) as client:
        declared = await client.request("PUT", "/", body=b"x" * 11)
        # Small enough to drain: the connection stays usable.
        await client.send(
            h11.Request(method="PUT", target="/", headers=[("Host", "x"), ("Transfer-Encoding", "chunked")])
        )
        await client.send(h11.Data(data=b"x" * 20), h11.EndOfMessage())
        streamed = await client.response()
    assert declared.status == streamed.status == 413


async def test_truncated_body_raises_body_error_400() -> None:
    errors: list[int] = []
    failed = trio.Event()

    async def handler(request: Request) -> Response:
        try:
            await request.read_body(1000)
        except BodyError as exc:
            errors.append(exc.status)
            failed.set()
            raise
        return Response(200)

    async with serving(handler) as (_, port), await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a few")
        await stream.send_eof()
        with trio.fail_after(TIMEOUT_S):
            await failed.wait()
    assert errors == [400]


async def test_expect_100_continue_sent_only_when_handler_reads() -> None:
    started_reading = trio.Event()

    async def handler(request: Request) -> Response:
        started_reading.set()
        return await echo(request)

    async with serving(handler) as (_, port), RawClient.connect(port) as client:
        headers = [("Host", "x"), ("Content-Length", "5"), ("Expect", "100-continue")]
        await client.send(h11.Request(method="PUT", target="/", headers=headers))
        event = await client.next_event()
        assert isinstance(event, h11.InformationalResponse) and event.status_code == 100
        assert started_reading.is_set()  # the 100 came from the handler's first read
        await client.send(h11.Data(data=b"hello"), h11.EndOfMessage())
        reply = await client.response()
        client.h11.start_next_cycle()
        follow_up = await client.request("PUT", "/", body=b"next")
    assert (reply.status, reply.body) == (200, b"hello")
    assert follow_up.body == b"next"


@pytest.mark.parametrize("status", [403, 413])
async def test_expect_100_continue_rejected_without_reading(status: int) -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        if status == 413:
            await request.read_body(10)  # declared length over the limit: fails before reading
        return Response(403, body=b"denied")

    async with serving(handler) as (server, port):
        async with RawClient.connect(port) as client:
            headers = [("Host", "x"), ("Content-Length", "100000"), ("Expect", "100-continue")]
            await client.send(h11.Request(method="PUT", target="/", headers=headers))
            reply = await client.response()
            await client.wait_eof()
        # The server's lingering close ends when the client hangs up.
        await eventually(lambda: server.statistics().connections_open == 0, "server-side close")
    assert reply.status == status
    assert reply.informational == []  # no 100 Continue: the client never sends the body
    assert reply.header("connection") == "close"
    assert not seen[0].body_started or status == 413


async def test_unread_small_body_is_drained_and_connection_reused() -> None:
    async def handler(request: Request) -> Response:
        return Response(403, body=b"nope")  # never reads the body

    async with serving(handler, drain_limit_bytes=64 * 1024) as (server, port):
        async with RawClient.connect(port) as client:
            first = await client.request("PUT", "/", body=b"a" * 30000)
            second = await client.request("PUT", "/", body=b"b" * 30000)
            # Chunked bodies (unknown length) are drained the same way.
            await client.send(
                h11.Request(
                    method="PUT", target="/", headers=[("Host", "x"), ("Transfer-Encoding", "chunked")]
                )
            )
            await client.send(h11.Data(data=b"c" * 1000), h11.EndOfMessage())
            third = await client.response()
        stats = server.statistics()
    assert first.status == second.status == third.status == 403
    assert first.header("connection") is None and third.header("connection") is None
    assert stats.connections_total == 1


async def test_unread_large_body_closes_connection() -> None:
    async def handler(request: Request) -> Response:
        return Response(403, body=b"nope")

    async with serving(handler, drain_limit_bytes=64 * 1024) as (_, port):
        # Declared length beyond the drain limit: answered and closed without reading it all.
        async with RawClient.connect(port) as client:
            await client.send_raw(
                b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 100000
            )
            reply = await client.response()
            assert (reply.status, reply.header("connection")) == (403, "close")
            await client.wait_eof()
        # Unknown length that turns out too big: drained up to the limit, then closed.
        async with RawClient.connect(port) as client:
            await client.send(
                h11.Request(
                    method="PUT", target="/", headers=[("Host", "x"), ("Transfer-Encoding", "chunked")]
                )
            )
            await client.send(h11.Data(data=b"y" * 200000), h11.EndOfMessage())
            reply = await client.response()
            assert (reply.status, reply.header("connection")) == (403, "close")
            await client.wait_eof()


async def test_slow_body_times_out_with_408() -> None:
    statuses: list[int] = []

    async def handler(request: Request) -> Response:
        try:
            await request.read_body(1000)
        except BodyError as exc:
            statuses.append(exc.status)
            raise
        return Response(200)

    async with serving(handler, body_timeout_s=0.2) as (_, port), RawClient.connect(port) as client:
        start = time.monotonic()
        await client.send_raw(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        reply = await client.response()
        await client.wait_eof()
        elapsed = time.monotonic() - start
    assert statuses == [408]
    assert (reply.status, reply.header("connection")) == (408, "close")
    assert elapsed < 3


async def test_idle_and_slow_head_timeouts() -> None:
    async with serving(hello, idle_timeout_s=0.2) as (server, port):
        # Nothing sent: closed quietly.
        start = time.monotonic()
        assert await exchange_raw(port, b"") == b""
        # Half a head: 408, then closed.
        raw = await exchange_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert reply_from(raw).status == 408
        # Idle keep-alive connection: closed after the idle time.
        async with RawClient.connect(port) as client:
            assert (await client.request("GET", "/")).status == 200
            await client.wait_eof()
        assert time.monotonic() - start < 4
        assert server.statistics().protocol_errors == 1


# --------------------------------------------------------------------------- bad input


def json_error(status: int, message: str) -> Response:
    return Response(status, [("Content-Type", "application/json")], json.dumps({"status": status}).encode())


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
        # Ambiguous framing (request smuggling): refused.
        (
            b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    ],
)
async def test_malformed_request_gets_4xx_and_close(raw: bytes, status: int) -> None:
    async with serving(hello, error_response=json_error) as (server, port):
        reply = reply_from(await exchange_raw(port, raw))
        assert server.statistics().protocol_errors == 1
    assert reply.status == status
    assert reply.header("connection") == "close"
    assert reply.header("content-type") == "application/json"
    assert json.loads(reply.body) == {"status": status}
    assert reply.header("date") and reply.header("server") == "dfs"


async def test_huge_headers_get_431() -> None:
    async with serving(hello, max_header_bytes=2048) as (_, port):
        raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
        reply = reply_from(await exchange_raw(port, raw))
        assert reply.status == 431
        # Just under the limit is fine.
        ok = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 1500 + b"\r\n\r\n"
        assert reply_from(await exchange_raw(port, ok)).status == 200


# --------------------------------------------------------------------------- responses


async def test_streamed_response_with_content_length_and_chunked() -> None:
    pieces = [b"a" * 100, b"", b"b" * 70000, b"c"]

    async def handler(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        if request.path == "/sized":
            return Response(200, body=stream(), content_length=sum(map(len, pieces)))
        return Response(200, body=stream())

    async with serving(handler) as (_, port):
        sized = await in_thread(lambda: stdlib_get(port, "/sized"))
        chunked = await in_thread(lambda: stdlib_get(port, "/chunked"))
    assert sized[2] == chunked[2] == b"".join(pieces)
    assert sized[1]["content-length"] == str(len(b"".join(pieces)))
    assert "transfer-encoding" not in sized[1]
    assert chunked[1]["transfer-encoding"] == "chunked"
    assert "content-length" not in chunked[1]


@pytest.mark.parametrize("mode", ["sized", "chunked", "too-short", "too-long"])
async def test_broken_stream_truncates_response(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: Request) -> Response:
        if request.path != "/obj":
            return Response(200, body=b"fine")

        async def stream() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            if mode in ("sized", "chunked"):
                raise RuntimeError("disk on fire")
            if mode == "too-long":
                yield b"y" * 1000

        length = {"sized": 5000, "chunked": None, "too-short": 5000, "too-long": 1500}[mode]
        return Response(200, body=stream(), content_length=length)

    async with serving(handler) as (server, port):

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
            try:
                conn.request("GET", "/obj")
                resp = conn.getresponse()
                assert resp.status == 200
                with pytest.raises(http.client.IncompleteRead):
                    resp.read()
                resp.close()
            finally:
                conn.close()

        with caplog.at_level(logging.ERROR, logger="dfs.http"):
            await in_thread(client)
        # The server carries on with other connections.
        assert (await in_thread(lambda: stdlib_get(port)))[0] == 200
        assert server.statistics().connections_total == 2
    expected = "disk on fire" if mode in ("sized", "chunked") else "Content-Length"
    assert any(expected in (r.getMessage() + (r.exc_text or "")) for r in caplog.records), caplog.text


async def test_handler_exception_gives_500_and_server_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise ValueError("kaboom")
        return Response(200, body=b"ok")

    async with serving(handler, error_response=json_error) as (server, port):
        async with RawClient.connect(port) as other:
            assert (await other.request("GET", "/")).status == 200
            with caplog.at_level(logging.ERROR, logger="dfs.http"):
                async with RawClient.connect(port) as client:
                    boom = await client.request("GET", "/boom?x=1")
                    assert (await client.request("GET", "/")).status == 200  # same connection still fine
            assert (await other.request("GET", "/")).status == 200
        assert server.statistics().handler_errors == 1
    assert boom.status == 500
    assert json.loads(boom.body) == {"status": 500}
    (record,) = [r for r in caplog.records if r.name == "dfs.http"]
    # The path, never the query: it may carry a presigned URL's credentials.
    assert "GET /boom from" in record.getMessage() and "127.0.0.1" in record.getMessage()
    assert "x=1" not in record.getMessage()
    assert record.exc_info is not None and "kaboom" in str(record.exc_info[1])


async def test_stalled_client_is_disconnected_after_send_timeout() -> None:
    finished = trio.Event()

    async def handler(request: Request) -> Response:
        async def endless() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"z" * 65536
            finally:
                finished.set()

        return Response(200, body=endless())

    async with (
        serving(handler, send_timeout_s=0.2) as (server, port),
        await trio.open_tcp_stream("127.0.0.1", port) as stream,
    ):
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never read: the server's writes stall once the socket buffers are full.
        with trio.fail_after(TIMEOUT_S):
            await finished.wait()
        await eventually(lambda: server.statistics().connections_open == 0, "stalled connection closed")


async def test_max_connections_refuses_with_503() -> None:
    async with serving(hello, max_connections=1, error_response=json_error) as (server, port):
        async with RawClient.connect(port) as first:
            assert (await first.request("GET", "/")).status == 200
            raw = await exchange_raw(port, b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\ndata")
            refused = reply_from(raw)
            assert (refused.status, refused.header("connection")) == (503, "close")
            assert json.loads(refused.body) == {"status": 503}
            assert (await first.request("GET", "/")).status == 200
        await eventually(lambda: server.statistics().connections_open == 0, "first connection gone")
        assert (await in_thread(lambda: stdlib_get(port)))[0] == 200
        assert server.statistics().connections_rejected == 1


# --------------------------------------------------------------------------- TLS, lifecycle, listeners


def make_tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dfs-http-test")])
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
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert_path))
    return server_ctx, client_ctx


async def test_tls(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    schemes: list[str] = []

    async def handler(request: Request) -> Response:
        schemes.append(request.scheme)
        return await echo(request)

    async with serving(handler, ssl_context=server_ctx) as (server, port):

        def client() -> list[bytes]:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT_S, context=client_ctx)
            out = []
            try:
                for body in (b"secret", b"x" * 200000):
                    conn.request("PUT", "/", body=body)
                    out.append(conn.getresponse().read())
                return out
            finally:
                conn.close()

        assert await in_thread(client) == [b"secret", b"x" * 200000]
        # A plain-text client gets nowhere, and the server does not mind.
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(TIMEOUT_S):
                try:
                    while await stream.receive_some(4096):
                        pass
                except trio.BrokenResourceError:
                    pass
        await eventually(lambda: server.statistics().connections_open == 0, "plain-text client dropped")
    assert schemes == ["https", "https"]


async def test_serve_cancellation_closes_everything() -> None:
    entered = trio.Event()
    outcome: list[str] = []

    async def handler(request: Request) -> Response:
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            outcome.append("cancelled")
            raise
        raise AssertionError("unreachable")

    server = HttpServer(handler)
    listeners = await open_http_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    busy = await trio.open_tcp_stream("127.0.0.1", port)
    idle = await trio.open_tcp_stream("127.0.0.1", port)
    async with busy, idle:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            await busy.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(TIMEOUT_S):
                await entered.wait()
            await eventually(lambda: server.statistics().connections_open == 2, "both connections accepted")
            nursery.cancel_scope.cancel()
        # serve() has returned: the handler was cancelled and both clients see the close.
        assert outcome == ["cancelled"]
        assert server.statistics().connections_open == 0
        with trio.fail_after(TIMEOUT_S):
            assert await busy.receive_some(100) == b""
            assert await idle.receive_some(100) == b""
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)  # the listener is closed too


class FlakyListener(trio.abc.Listener[trio.SocketStream]):
    """Fails the first accept with EMFILE, as a process out of file descriptors would."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self.failures = 1

    async def accept(self) -> trio.SocketStream:
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.inner.accept()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_accept_errors_do_not_stop_the_listener(caplog: pytest.LogCaptureFixture) -> None:
    (inner,) = await open_http_listeners("127.0.0.1:0")
    port = inner.socket.getsockname()[1]
    server = HttpServer(hello)
    with caplog.at_level(logging.WARNING, logger="dfs.http"):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [FlakyListener(inner)])
            assert (await in_thread(lambda: stdlib_get(port)))[0] == 200
            nursery.cancel_scope.cancel()
    assert any("accept failed" in r.getMessage() for r in caplog.records)


async def test_open_http_listeners_addresses() -> None:
    listeners = await open_http_listeners("127.0.0.1:0")
    try:
        assert listeners[0].socket.getsockname()[0] == "127.0.0.1"
    finally:
        for listener in listeners:
            await listener.aclose()
    if socket.has_ipv6:
        try:
            v6 = await open_http_listeners("[::1]:0")
        except ConfigError:
            pass  # no IPv6 loopback in this environment
        else:
            for listener in v6:
                assert listener.socket.getsockname()[0] == "::1"
                await listener.aclose()
    for bad in ("127.0.0.1", "unix:/tmp/x.sock", "host:notaport"):
        with pytest.raises(ConfigError):
            await open_http_listeners(bad)


def test_response_validation() -> None:
    assert Response(200, body=b"abc").content_length == 3
    assert Response(200, [("Content-Length", "42")]).content_length == 42  # HEAD style
    assert Response(200, [("content-length", "3"), ("X", "y")], b"abc").headers == [("X", "y")]
    with pytest.raises(ValueError):
        Response(100)
    with pytest.raises(ValueError):
        Response(200, body=b"abc", content_length=4)
    with pytest.raises(TypeError):
        Response(200, body="text")  # type: ignore[arg-type]
