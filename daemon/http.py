"""A small HTTP/1.1 server for the S3 and admin APIs: a thin trio adapter around :mod:`h11`.

h11 does all of the protocol work (parsing, framing, keep-alive rules); this
module only moves bytes between h11 and trio streams and adds the policy a
server exposed to arbitrary clients needs: timeouts, size limits, connection
limits, error responses and clean shutdown.

Concurrency design
------------------
* :meth:`HttpServer.serve` runs one accept loop per listener and one task per
  connection, all in one nursery: cancelling ``serve()`` cancels every
  connection (a running handler sees ``Cancelled``) and closes every stream
  and listener.
* A connection's task reads a request head, then calls the handler *in the
  same task* (no task per request), sends the response, and loops for the
  next request (keep-alive, pipelining).  Only that task touches the stream,
  so the handler must read the request body (:meth:`Request.receive_some`)
  from its own task, and only until it returns: whatever it left unread is
  then drained or the connection is closed, and the request is detached.
* Nothing on one connection can affect another: handler exceptions become a
  500, protocol errors a 4xx, and any stream failure closes just that
  connection.  The accept loop survives accept errors (EMFILE and friends:
  logged, then retried after a short pause).

Invariants
----------
* Every response carries ``Date`` and ``Server``.  Framing (Content-Length or
  chunked) is decided here from :class:`Response`, never from the handler's
  headers, and h11 checks that exactly the promised bytes are sent.
* A response is either complete or visibly broken: if a streamed body fails
  or does not match its declared length, the connection is closed before the
  body is complete (no final 0-chunk, fewer than Content-Length bytes), so a
  client can never mistake a short body for a whole one.
* A connection is reused only when both sides are exactly at a message
  boundary (h11 states DONE/DONE).  A request body the handler left unread is
  drained *before* the response is sent (a client that writes its whole body
  before reading cannot deadlock against us), if it is small
  (``drain_limit_bytes``) and the client is actually sending it - not while
  it waits for ``100 Continue``.  Otherwise the response says ``Connection:
  close`` and the connection ends with a short "lingering close" (half-close,
  discard input), so the unread body cannot make the kernel reset the
  connection before the client has read the response.
* Every wait is bounded: ``idle_timeout_s`` for a whole request head (and the
  keep-alive idle time before it, and the TLS handshake), ``body_timeout_s``
  for each piece of request body, ``send_timeout_s`` for each write.

Connection limit: beyond ``max_connections``, new connections are still
accepted but get only a ``503`` (rendered by ``error_response``) with
``Connection: close``; at most ``_MAX_REJECTING`` such refusals are in flight,
beyond that connections are closed without a word.  Refusing quickly lets S3
clients back off and retry, instead of hanging in the kernel's accept queue.
"""

from __future__ import annotations

import email.utils
import errno
import logging
import ssl
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Any, cast

import h11
import trio

from dfs.core.errors import ConfigError
from dfs.net.rpc import open_listeners, parse_address

__all__ = [
    "BodyError",
    "default_error_response",
    "Handler",
    "HttpServer",
    "HttpStatistics",
    "Request",
    "Response",
    "open_http_listeners",
]

log = logging.getLogger("dfs.http")

#: Size of each read from a socket: large enough that a small request arrives in one read.
RECEIVE_BYTES = 64 * 1024
#: Body reads may ask for more (bulk uploads), up to this much per read.
_MAX_BODY_RECEIVE_BYTES = 1024 * 1024
#: Parts smaller than this are joined into one write; larger ones are sent as they are.
_COALESCE_BYTES = 64 * 1024
#: How long a lingering close keeps reading (and discarding) before the real close.
_LINGER_S = 2.0
_LINGER_BYTES = 4 * 1024 * 1024
#: Upper bound for the polite part of a close (TLS close_notify).
_CLOSE_TIMEOUT_S = 1.0
#: Refused connections (503) get this long to send their request head.
_REJECT_HEAD_TIMEOUT_S = 2.0
#: Refusals in flight at once; beyond this, excess connections are just closed.
_MAX_REJECTING = 64
_ACCEPT_BACKOFF_START_S = 0.05
_ACCEPT_BACKOFF_MAX_S = 1.0
#: errnos from accept() that mean "out of resources right now", not "broken listener".
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_BODYLESS_STATUSES = frozenset({204, 304})

Body = bytes | bytearray | memoryview | AsyncIterable[bytes]


# --------------------------------------------------------------------------- public types


class BodyError(Exception):
    """The request body could not be read: 400 (truncated or malformed), 408 (the
    client stopped sending for ``body_timeout_s``) or 413 (over the limit).

    Not a :class:`dfs.core.errors.DfsError`, on purpose: it is a condition of one HTTP
    exchange, raised and answered within this server and its two handlers (S3 and
    admin), whose status depends on how the body failed; it has no errno and no
    meaning on the RPC wire, the mount or the CLI, so it has no row in the error
    table.  Each handler names it in its own dialect from ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One request; the body is read on demand while the handler runs."""

    __slots__ = (
        "_conn",
        "_error",
        "_keep_alive",
        "_pending",
        "_received",
        "body_complete",
        "body_started",
        "content_length",
        "headers",
        "http_version",
        "method",
        "path",
        "query",
        "remote",
        "scheme",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        http_version: str,
        remote: str,
        scheme: str,
        content_length: int | None,
        *,
        conn: _Connection | None = None,
        keep_alive: bool = True,
    ) -> None:
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.path = path
        self.query = query
        self.headers = headers
        self.http_version = http_version
        self.remote = remote
        self.scheme = scheme
        self.content_length = content_length
        #: receive_some was called at least once (e.g. the handler began consuming the body).
        self.body_started = False
        #: The whole body has been read (always true for requests without a body).
        self.body_complete = False
        self._conn = conn
        self._keep_alive = keep_alive
        # Body bytes taken from h11 but not yet handed out (a piece larger than asked for).
        self._pending: memoryview | None = None
        # Body bytes taken from h11 so far, handed out or pending.
        self._received = 0
        # The first body failure, re-raised by later reads: the body is unusable after it.
        self._error: BodyError | None = None

    @classmethod
    def buffered(
        cls, method: str, target: str, headers: list[tuple[str, str]], body: bytes, remote: str
    ) -> Request:
        """A request whose whole body is already here (one forwarded from another daemon)."""
        req = cls(method, target, headers, "1.1", remote, "http", len(body))
        if body:
            req._pending = memoryview(body)
            req._received = len(body)
        req.body_complete = True
        return req

    def __repr__(self) -> str:
        # The path only: a query may carry a presigned URL's credentials, which must not reach logs.
        return f"<Request {self.method} {self.path[:100]!r} from {self.remote}>"

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header *name* (case-insensitive), else *default*."""
        key = name.lower()
        for found, value in self.headers:
            if found == key:
                return value
        return default

    def header_map(self) -> dict[str, str]:
        """Lower-case name -> value; repeated headers are joined with ``","``."""
        out: dict[str, str] = {}
        for name, value in self.headers:
            if name in out:
                out[name] = f"{out[name]},{value}"
            else:
                out[name] = value
        return out

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """The next piece of the body (at most *max_bytes*), ``b""`` at its end.

        The first call answers ``Expect: 100-continue`` with ``100 Continue``, so a
        handler that rejects a request without reading it never invites the body.
        Raises :class:`BodyError` (400 truncated/malformed, 408 timeout); after a
        failure every later call raises again.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.body_started = True
        if self._pending is not None:
            return self._take_pending(max_bytes)
        if self.body_complete:
            return b""
        if self._error is not None:
            raise BodyError(self._error.status, self._error.message)
        if self._conn is None:
            raise RuntimeError("the request body can only be read while the handler runs")
        return await self._conn.read_body_piece(self, max_bytes)

    async def read_body(self, limit: int) -> bytes:
        """The whole (remaining) body; more than *limit* bytes raises ``BodyError(413)``.

        A declared Content-Length over the limit fails before anything is read
        (so no ``100 Continue`` is sent).
        """
        if self.content_length is not None and self.content_length > limit:
            raise BodyError(413, f"request body of {self.content_length} bytes exceeds the limit of {limit}")
        parts: list[bytes] = []
        total = 0
        while True:
            piece = await self.receive_some(RECEIVE_BYTES)
            if not piece:
                break
            total += len(piece)
            if total > limit:
                raise BodyError(413, f"request body exceeds the limit of {limit} bytes")
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _take_pending(self, max_bytes: int) -> bytes:
        view = self._pending
        assert view is not None
        if len(view) <= max_bytes:
            self._pending = None
            return bytes(view)
        self._pending = view[max_bytes:]
        return bytes(view[:max_bytes])

    def _remaining(self) -> int | None:
        """Body bytes still on the wire, if known (Content-Length framing)."""
        if self.content_length is None:
            return None
        return self.content_length - self._received


class Response:
    """What a handler returns.

    ``body`` is bytes (Content-Length set automatically) or an async iterable of
    byte strings, streamed piece by piece with ``content_length`` as its
    Content-Length (the server enforces it) or, without one, chunked.
    ``content_length`` with an empty bytes body describes a HEAD response.
    Content-Length / Transfer-Encoding in ``headers`` are not passed through:
    a Content-Length there is taken as ``content_length`` if that is not given.
    """

    __slots__ = ("_has_date", "_has_server", "_length_given", "body", "content_length", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: Body = b"",
        *,
        content_length: int | None = None,
    ) -> None:
        if not 200 <= status <= 999:
            raise ValueError(f"bad response status {status} (1xx cannot be a final response)")
        if content_length is not None and content_length < 0:
            raise ValueError("content_length must be >= 0")
        fields = headers if headers is not None else []
        has_date = has_server = framing = False
        for name, _ in fields:
            lname = name.lower()
            if lname == "date":
                has_date = True
            elif lname == "server":
                has_server = True
            elif lname == "content-length" or lname == "transfer-encoding":
                framing = True
        if framing:
            # Framing belongs to the server: it must match what is actually sent.
            kept: list[tuple[str, str]] = []
            for name, value in fields:
                lname = name.lower()
                if lname == "content-length":
                    if content_length is None:
                        content_length = _parse_content_length(value)
                elif lname != "transfer-encoding":
                    kept.append((name, value))
            fields = kept
        if isinstance(body, bytes | bytearray | memoryview):
            if isinstance(body, memoryview) and body.format != "B":
                body = body.cast("B")  # so that len() counts bytes
            size = len(body)
            if content_length is not None and size and content_length != size:
                raise ValueError(f"content_length {content_length} != body size {size}")
            length_given = content_length is not None
            if content_length is None:
                content_length = size
        elif hasattr(body, "__aiter__"):
            length_given = content_length is not None
        else:
            raise TypeError(f"response body must be bytes or an async iterable, not {type(body).__name__}")
        self.status = status
        self.headers = fields
        self.body = body
        #: Content-Length to announce; None means chunked (streamed bodies only).
        self.content_length = content_length
        self._length_given = length_given
        self._has_date = has_date
        self._has_server = has_server

    def __repr__(self) -> str:
        return f"<Response {self.status} length={self.content_length}>"


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HttpStatistics:
    """A snapshot of the server's counters."""

    connections_open: int
    connections_total: int
    connections_rejected: int
    requests_served: int
    protocol_errors: int
    handler_errors: int


def default_error_response(status: int, message: str) -> Response:
    """A plain-text error response (the default ``error_response``)."""
    reason = _REASONS.get(status, b"Error").decode("ascii")
    body = f"{status} {reason}\n{message}\n".encode("utf-8", "replace")
    return Response(status, [("Content-Type", "text/plain; charset=utf-8")], body)


# --------------------------------------------------------------------------- helpers


def _parse_content_length(value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"bad Content-Length header {value!r}")
    return int(text)


class _DateCache:
    """IMF-fixdate of the current second, formatted once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._value = email.utils.formatdate(now, usegmt=True).encode("ascii")
            self._second = now
        return self._value


_date = _DateCache()


def _peer_name(stream: trio.abc.Stream) -> str:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return type(stream).__name__
    try:
        peer = inner.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(peer, tuple):
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peer) or "unix"


def _wants_keep_alive(event: h11.Request) -> bool:
    """The client's side of h11's keep-alive rule (known before the response)."""
    if event.http_version < b"1.1":
        return False
    for name, value in event.headers:
        if name == b"connection" and b"close" in [token.strip() for token in value.lower().split(b",")]:
            return False
    return True


async def _aclose_iterator(iterator: object) -> None:
    """Close an async generator (or anything with ``aclose``) we stopped iterating."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("http: closing a response body iterator failed")


class _Close(Enum):
    """How a connection ends."""

    GRACEFUL = "graceful"  # all input consumed: a normal close (TLS close_notify)
    LINGER = "linger"  # input may be pending: half-close and discard it for a moment first
    ABORT = "abort"  # the stream is broken or a response is incomplete: close right away


class _Abort(Exception):
    """Unwinds to the connection loop, which then closes the connection at once."""


class _BadHead(Exception):
    """A request head h11 parsed but this server refuses (answered, then closed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- connection


class _Connection:
    """One client connection: h11 state plus the policy around it."""

    __slots__ = (
        "broken",
        "continue_sent",
        "h11",
        "must_close",
        "reject",
        "remote",
        "scheme",
        "server",
        "stream",
    )

    def __init__(
        self, server: HttpServer, stream: trio.abc.Stream, remote: str, scheme: str, reject: bool
    ) -> None:
        self.server = server
        self.stream = stream
        self.remote = remote
        self.scheme = scheme
        self.reject = reject
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server._max_header_bytes)
        #: The connection cannot carry another request (a body read failed).
        self.must_close = False
        # Whether this request was sent "100 Continue" (see _finish).
        self.continue_sent = False
        #: A read or write failed or was cut short: send nothing more.
        self.broken = False

    # ----------------------------------------------------------------- main loop

    async def run(self) -> _Close:
        """Serve requests until the connection should end; returns how to close it."""
        while True:
            request, mode = await self._read_request()
            if request is None:
                return mode
            try:
                if self.reject:
                    response = self._error_response(503, "server busy: too many connections")
                else:
                    response = await self._call_handler(request)
                request._conn = None  # the body is ours now: drained or abandoned below
                mode_after = await self._finish(request, response)
            except _Abort as exc:
                log.debug("http connection from %s aborted: %s", self.remote, exc)
                return _Close.ABORT
            if mode_after is not None:
                return mode_after
            self.h11.start_next_cycle()

    async def close(self, mode: _Close) -> None:
        stream = self.stream
        if mode is _Close.ABORT or self.broken:
            await trio.aclose_forcefully(stream)
            return
        if mode is _Close.LINGER:
            with trio.move_on_after(_LINGER_S):
                try:
                    if isinstance(stream, trio.abc.HalfCloseableStream):
                        await stream.send_eof()  # the client sees the end of our response now
                    discarded = 0
                    while discarded < _LINGER_BYTES:
                        data = await stream.receive_some(RECEIVE_BYTES)
                        if not data:
                            break
                        discarded += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        # aclose closes the stream even when the timeout cuts the TLS goodbye short.
        with trio.move_on_after(_CLOSE_TIMEOUT_S):
            await stream.aclose()

    # ----------------------------------------------------------------- request head

    async def _read_request(self) -> tuple[Request | None, _Close]:
        """The next request, or (None, how to close) at EOF, timeout or bad input."""
        failure: tuple[int, str] | None = None
        event: h11.Request | None = None
        timeout = _REJECT_HEAD_TIMEOUT_S if self.reject else self.server._idle_timeout_s
        with trio.move_on_after(timeout) as scope:
            try:
                event = await self._next_head_event()
            except h11.RemoteProtocolError as exc:
                failure = (exc.error_status_hint, str(exc))
        if scope.cancelled_caught:
            if not self.h11.trailing_data[0]:
                return None, _Close.GRACEFUL  # an idle keep-alive connection: just close it
            failure = (408, f"request head not complete within {timeout}s")
        if failure is not None:
            return None, await self._fail_head(*failure)
        if event is None:
            return None, _Close.ABORT if self.broken else _Close.GRACEFUL
        try:
            return self._make_request(event), _Close.GRACEFUL
        except _BadHead as exc:
            return None, await self._fail_head(exc.status, exc.message)

    async def _next_head_event(self) -> h11.Request | None:
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self._receive(RECEIVE_BYTES)
                if data is None:
                    return None
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                return event
            return None  # ConnectionClosed (PAUSED cannot happen at a cycle start)

    def _make_request(self, event: h11.Request) -> Request:
        """Wrap h11's request; raises :class:`_BadHead` for heads h11 accepts but we do not."""
        headers: list[tuple[str, str]] = []
        size = len(event.target)
        content_length: int | None = None
        chunked = False
        for raw_name, raw_value in event.headers:
            size += len(raw_name) + len(raw_value) + 4
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name == "content-length":
                content_length = int(value)  # h11 has validated it
            elif name == "transfer-encoding":
                chunked = True  # h11 accepts nothing but "chunked"
            headers.append((name, value))
        if size > self.server._max_header_bytes:
            # h11 enforces the limit only on a head it is still waiting for; one that
            # arrived whole in a single read is measured here (give or take whitespace).
            raise _BadHead(431, f"request head of about {size} bytes is too large")
        if event.method == b"CONNECT":
            # A 2xx would make h11 hand the connection over as a tunnel; we are no proxy.
            raise _BadHead(501, "CONNECT is not supported")
        if chunked and content_length is not None:
            # h11 lets Transfer-Encoding win (RFC 9112 6.1), but a proxy in front may
            # have framed it differently: refuse rather than risk request smuggling.
            raise _BadHead(400, "both Content-Length and Transfer-Encoding")
        self.continue_sent = False
        request = Request(
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            headers,
            event.http_version.decode("ascii"),
            self.remote,
            self.scheme,
            content_length,
            conn=self,
            keep_alive=_wants_keep_alive(event),
        )
        # Without a body (most GETs) h11 has the end of message ready already, and a
        # small body often came with the head: taking it now (no I/O, so no 100
        # Continue) saves the handler a call and the server a drain step.
        try:
            nxt = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            request._error = BodyError(400, f"malformed request body: {exc}")
            self.must_close = True
        else:
            if isinstance(nxt, h11.EndOfMessage):
                request.body_complete = True
            elif isinstance(nxt, h11.Data):
                self._accept_piece(request, nxt)
        return request

    async def _fail_head(self, status: int, message: str) -> _Close:
        """Answer an unusable request head with *status*; the connection then closes."""
        self.server._protocol_errors += 1
        log.debug("http bad request from %s: %d %s", self.remote, status, message)
        if self.broken:
            return _Close.ABORT
        try:
            await self._send_response(None, "-", self._error_response(status, message), close=True)
        except _Abort:
            return _Close.ABORT
        return _Close.LINGER

    # ----------------------------------------------------------------- handler

    async def _call_handler(self, request: Request) -> Response:
        try:
            response = await self.server._handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not Response")
            return response
        except BodyError as exc:
            # The handler let a body failure propagate: answer it in its own terms.
            log.debug("http %r: request body failed: %d %s", request, exc.status, exc.message)
            return self._error_response(exc.status, exc.message)
        except Exception:
            self.server._handler_errors += 1
            log.exception(
                "http handler failed: %s %s from %s", request.method, request.path[:200], self.remote
            )
            return self._error_response(500, "internal server error")

    def _error_response(self, status: int, message: str) -> Response:
        factory = self.server._error_factory
        if factory is not None:
            try:
                response = factory(status, message)
            except Exception:
                log.exception("http error_response(%d) failed; using the plain-text default", status)
            else:
                if isinstance(response, Response):
                    return response
                log.error("http error_response(%d) returned %r, not a Response", status, response)
        return default_error_response(status, message)

    # ----------------------------------------------------------------- request body

    async def read_body_piece(self, request: Request, max_bytes: int) -> bytes:
        try:
            event = await self._next_body_event(max_bytes)
        except BodyError as exc:
            request._error = exc
            self.must_close = True  # h11 is mid-body or in ERROR: the stream is unusable
            raise
        if isinstance(event, h11.EndOfMessage):
            request.body_complete = True
            return b""
        self._accept_piece(request, event)
        return request._take_pending(max_bytes)

    def _accept_piece(self, request: Request, event: h11.Data) -> None:
        data = event.data
        request._received += len(data)
        request._pending = memoryview(data)
        if request.content_length == request._received:
            # With Content-Length framing h11 has the end of message ready now; taking it
            # marks the body complete even if the handler never asks for the final b"".
            nxt = self.h11.next_event()
            if isinstance(nxt, h11.EndOfMessage):
                request.body_complete = True

    async def _next_body_event(self, max_bytes: int) -> h11.Data | h11.EndOfMessage:
        conn = self.h11
        if conn.they_are_waiting_for_100_continue:
            await self._send_continue()
        receive_bytes = max(RECEIVE_BYTES, min(max_bytes, _MAX_BODY_RECEIVE_BYTES))
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BodyError(400, f"malformed or truncated request body: {exc}") from None
            if event is h11.NEED_DATA:
                data: bytes | None = b""
                with trio.move_on_after(self.server._body_timeout_s) as scope:
                    data = await self._receive(receive_bytes)
                if scope.cancelled_caught:
                    raise BodyError(408, f"no request body data for {self.server._body_timeout_s}s")
                if data is None:
                    raise BodyError(400, "connection lost while reading the request body")
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Data | h11.EndOfMessage):
                return event
            raise BodyError(400, f"unexpected {type(event).__name__} in request body")

    async def _send_continue(self) -> None:
        self.continue_sent = True
        data = self.h11.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        try:
            await self._send(data)
        except _Abort as exc:
            raise BodyError(400, f"cannot send 100 Continue: {exc}") from None

    async def _drain(self, request: Request) -> bool:
        """Read and discard the rest of the body (small enough); False if that failed."""
        limit = self.server._drain_limit_bytes
        request._pending = None
        drained = 0
        with trio.move_on_after(self.server._body_timeout_s):
            while True:
                try:
                    event = await self._next_body_event(RECEIVE_BYTES)
                except BodyError as exc:
                    log.debug("http %r: draining the body failed: %s", request, exc.message)
                    return False
                if isinstance(event, h11.EndOfMessage):
                    request.body_complete = True
                    return True
                drained += len(event.data)
                if drained > limit:
                    return False
        return False

    # ----------------------------------------------------------------- response

    async def _finish(self, request: Request, response: Response) -> _Close | None:
        """Deal with an unread body, send *response*; None if the connection can be reused."""
        close = self.must_close or self.reject or not request._keep_alive
        if (
            request.body_complete
            and not close
            and not self.continue_sent
            and (request.header("expect") or "").lower() == "100-continue"
        ):
            # An empty body (Content-Length: 0) sent with "Expect: 100-continue" is complete
            # before anyone asks for it.  A final answer without a 100 first is legal, but
            # botocore then misreads the *next* response on that keep-alive connection (its
            # early-response path leaves the connection out of step); S3 always sends the
            # 100, so do the same.
            try:
                await self._send_continue()
            except BodyError:
                return _Close.ABORT
        if not request.body_complete and not close:
            if self.h11.they_are_waiting_for_100_continue:
                # The client holds its body back until we say 100 Continue; we answer
                # without it, and only closing resynchronises the connection.
                close = True
            else:
                remaining = request._remaining()
                too_big = remaining is not None and remaining > self.server._drain_limit_bytes
                if too_big or not await self._drain(request):
                    close = True
        if self.broken:
            return _Close.ABORT
        # The path only: a query may carry a presigned URL's credentials, which logs must not.
        await self._send_response(request.method, request.path, response, close=close)
        if not self.reject:
            self.server._requests_served += 1
        if close or self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            return _Close.GRACEFUL if request.body_complete else _Close.LINGER
        return None

    async def _send_response(
        self, method: str | None, target: str, response: Response, *, close: bool
    ) -> None:
        """Send *response* completely or raise :class:`_Abort` (the connection must die)."""
        bodyless = method == "HEAD" or response.status in _BODYLESS_STATUSES
        try:
            event = self._response_event(response, bodyless, close)
        except (ValueError, UnicodeError, h11.LocalProtocolError) as exc:
            # Nothing is sent yet, so a bad response can still become a clean 500.
            log.error("http handler returned an invalid response to %s %s: %s", method, target[:200], exc)
            await _aclose_iterator(response.body)
            response = default_error_response(500, "internal server error: invalid response")
            event = self._response_event(response, bodyless, close)
        body = response.body
        if not isinstance(body, bytes | bytearray | memoryview):
            if not bodyless:
                await self._send_stream(event, body, f"{method} {target[:200]}")
                return
            await _aclose_iterator(body)  # the body of a HEAD/204/304 response is never sent
            body = b""
        try:
            parts = [self.h11.send(event)]
            if len(body) and not bodyless:
                parts.extend(self._encode_data(body))
            parts.append(self.h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:  # a bug here or in h11: never send a broken message
            log.error("http: h11 refused the response to %s %s: %s", method, target[:200], exc)
            raise _Abort("h11 refused the response") from exc
        await self._send_parts(parts)

    def _response_event(self, response: Response, bodyless: bool, close: bool) -> h11.Response:
        status = response.status
        fields = [(name.encode("ascii"), value.encode("latin-1")) for name, value in response.headers]
        if not response._has_date:
            fields.append((b"Date", _date.get()))
        if not response._has_server:
            fields.append(self.server._server_field)
        length = response.content_length
        body = response.body
        if isinstance(body, bytes | bytearray | memoryview) and not bodyless and length != len(body):
            raise ValueError(f"content_length {length} but a body of {len(body)} bytes")
        # RFC 9110 8.6: no Content-Length on 204; on 304 only if it was given on purpose.
        if length is not None and status != 204 and (status != 304 or response._length_given):
            fields.append((b"Content-Length", b"%d" % length))
        if close:
            fields.append((b"Connection", b"close"))
        return h11.Response(status_code=status, headers=fields, reason=_REASONS.get(status, b""))

    async def _send_stream(self, event: h11.Response, body: AsyncIterable[bytes], what: str) -> None:
        iterator = aiter(body)
        try:
            try:
                head = self.h11.send(event)
            except h11.LocalProtocolError as exc:
                log.error("http: h11 refused the response to %s: %s", what, exc)
                raise _Abort("h11 refused the response") from exc
            # The head waits for the first piece so that both usually go out in one write.
            held: bytes | None = head
            while True:
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    log.exception(
                        "http response body for %s to %s failed; closing the connection", what, self.remote
                    )
                    raise _Abort("response body iterator failed") from exc
                if not chunk:
                    continue  # an empty chunk would read as the end of a chunked body
                try:
                    parts = self._encode_data(chunk)
                except h11.LocalProtocolError as exc:
                    log.error("http response body for %s is longer than its Content-Length; closing", what)
                    raise _Abort("response body too long") from exc
                if held is not None:
                    parts.insert(0, held)
                    held = None
                await self._send_parts(parts)
            try:
                tail = self.h11.send(h11.EndOfMessage())
            except h11.LocalProtocolError as exc:
                log.error("http response body for %s is shorter than its Content-Length; closing", what)
                raise _Abort("response body too short") from exc
            await self._send(tail if held is None else held + tail)
        finally:
            await _aclose_iterator(iterator)

    def _encode_data(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        # send_with_data_passthrough hands the caller's buffer back untouched (no copy of
        # the body); h11 only takes len() of it, so any bytes-like object will do.
        parts = self.h11.send_with_data_passthrough(h11.Data(data=cast(bytes, data)))
        assert parts is not None  # only ConnectionClosed yields None
        return parts

    # ----------------------------------------------------------------- stream I/O

    async def _receive(self, max_bytes: int) -> bytes | None:
        """Bytes from the client, b"" at EOF, None if the stream failed."""
        try:
            # Typed bytes for h11, which only appends it to its bytearray buffer.
            return cast(bytes, await self.stream.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("http receive from %s failed: %s", self.remote, exc)
            self.broken = True
            return None

    async def _send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        small: list[bytes | bytearray | memoryview] = []
        for part in parts:
            if len(part) < _COALESCE_BYTES:
                small.append(part)
                continue
            if small:
                await self._send(b"".join(small))
                small = []
            await self._send(part)
        if small:
            await self._send(small[0] if len(small) == 1 else b"".join(small))

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self.broken:
            raise _Abort("connection already broken")
        timeout = self.server._send_timeout_s
        with trio.move_on_after(timeout) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.broken = True
                raise _Abort(f"send failed: {exc}") from exc
        if scope.cancelled_caught:
            self.broken = True  # the write may have stopped halfway through a message
            raise _Abort(f"client accepted no data for {timeout}s")


# --------------------------------------------------------------------------- server


class HttpServer:
    """Serves *handler* over HTTP/1.1 (or HTTPS with *ssl_context*) on any number of listeners.

    ``error_response(status, message)`` renders errors the server produces itself
    (bad request, header too large, timeouts, 500 for a failed handler, 503 when
    full) in the application's format.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        server_header: str = "dfs",
        error_response: Callable[[int, str], Response] | None = None,
        max_header_bytes: int = 16384,
        max_connections: int = 1024,
        idle_timeout_s: float = 60.0,
        body_timeout_s: float = 60.0,
        send_timeout_s: float = 60.0,
        drain_limit_bytes: int = 1 << 20,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if any(c in server_header for c in "\r\n\0"):
            raise ValueError("server_header must be a single line")
        if max_header_bytes < 256 or max_connections < 1 or drain_limit_bytes < 0:
            raise ValueError("max_header_bytes >= 256, max_connections >= 1, drain_limit_bytes >= 0")
        if min(idle_timeout_s, body_timeout_s, send_timeout_s) <= 0:
            raise ValueError("timeouts must be > 0")
        self._handler = handler
        self._server_field = (b"Server", server_header.encode("latin-1"))
        self._error_factory = error_response
        self._max_header_bytes = max_header_bytes
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._body_timeout_s = body_timeout_s
        self._send_timeout_s = send_timeout_s
        self._drain_limit_bytes = drain_limit_bytes
        self._ssl_context = ssl_context
        self._connections_open = 0
        self._connections_total = 0
        self._connections_rejected = 0
        self._rejecting = 0
        self._requests_served = 0
        self._protocol_errors = 0
        self._handler_errors = 0

    def statistics(self) -> HttpStatistics:
        return HttpStatistics(
            connections_open=self._connections_open,
            connections_total=self._connections_total,
            connections_rejected=self._connections_rejected,
            requests_served=self._requests_served,
            protocol_errors=self._protocol_errors,
            handler_errors=self._handler_errors,
        )

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections until cancelled (or every listener is closed).

        ``task_status.started(listeners)`` once accepting.  The listeners are
        closed on exit; cancellation also cancels every connection.
        """
        listeners = list(listeners)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(listeners)

    async def _accept_loop(self, listener: trio.abc.Listener[Any], nursery: trio.Nursery) -> None:
        delay = _ACCEPT_BACKOFF_START_S
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except trio.ClosedResourceError:
                    return  # closed on purpose: stop serving it
                except OSError as exc:
                    # EMFILE and friends: existing connections must finish before we can
                    # accept more, so pause instead of spinning; the loop never gives up.
                    level = logging.WARNING if exc.errno in _ACCEPT_CAPACITY_ERRNOS else logging.ERROR
                    log.log(level, "http accept failed (%s); retrying in %.2fs", exc, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, _ACCEPT_BACKOFF_MAX_S)
                    continue
                except Exception:
                    log.exception("http accept failed; retrying in %.2fs", delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, _ACCEPT_BACKOFF_MAX_S)
                    continue
                delay = _ACCEPT_BACKOFF_START_S
                self._connections_total += 1
                if self._connections_open < self._max_connections:
                    self._connections_open += 1
                    nursery.start_soon(self._handle_stream, stream, False)
                elif self._rejecting < _MAX_REJECTING:
                    self._rejecting += 1
                    self._connections_rejected += 1
                    nursery.start_soon(self._handle_stream, stream, True)
                else:
                    self._connections_rejected += 1
                    await trio.aclose_forcefully(stream)

    async def _handle_stream(self, stream: trio.abc.Stream, reject: bool) -> None:
        """Serve (or refuse) one accepted connection.  Never raises except Cancelled."""
        remote = _peer_name(stream)
        try:
            if self._ssl_context is not None:
                stream = trio.SSLStream(stream, self._ssl_context, server_side=True, https_compatible=True)
                if not await self._handshake(stream, remote):
                    return
            conn = _Connection(self, stream, remote, "https" if self._ssl_context else "http", reject)
            await conn.close(await conn.run())
        except Exception:
            # Only a bug in this module gets here; it must not take the server down.
            log.exception("http connection from %s crashed", remote)
        finally:
            if reject:
                self._rejecting -= 1
            else:
                self._connections_open -= 1
            await trio.aclose_forcefully(stream)  # no-op when already closed

    async def _handshake(self, stream: trio.SSLStream[trio.abc.Stream], remote: str) -> bool:
        with trio.move_on_after(self._idle_timeout_s):
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                log.debug("http TLS handshake with %s failed: %s", remote, exc.__cause__ or exc)
                return False
            return True
        log.debug("http TLS handshake with %s timed out", remote)
        return False


async def open_http_listeners(address: str) -> list[trio.SocketListener]:
    """Listen on ``HOST:PORT`` (``[v6]:PORT``; empty host = all interfaces; port 0 = any)."""
    addr = parse_address(address, -1)
    if addr.is_unix or addr.port < 0:
        raise ConfigError(f"HTTP address must be HOST:PORT, not {address!r}")
    return await open_listeners(addr)
