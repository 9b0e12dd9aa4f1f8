"""RPC over trio streams (TCP, unix sockets, optionally TLS), framed by :mod:`dfs.core.wire`.

Every filesystem operation crosses this layer, so it is built for many calls
in flight on one connection.

Concurrency design
------------------
Both sides give each connection exactly one *reader* task and one *writer*
task.  The writer owns all sends: callers and handlers only append frames to
the connection's :class:`_Outbox` (a deque, no await).  This is the "send
lock" in its cheapest form: frames can never interleave, no caller holds
anything while awaiting a reply, a cancelled caller cannot cut a frame in
half, and frames queued while a write was in progress are coalesced into one
``send_all`` - which is what makes pipelining pay off.  A watchdog per
connection closes it if a write makes no progress for the timeout (a peer
that stopped reading), without a cancel scope per write.

Client (:class:`RpcClient`, opened with :func:`open_client`):

* One connection at a time, shared by all callers.  Each call takes a fresh
  msgid, parks a :class:`_Waiter` (``trio.Event`` + result slot) in
  ``pending[msgid]``, queues its frame and waits.  The reader wakes the
  matching waiter.  A caller that times out or is cancelled marks its waiter
  gone: if the frame is still queued it is never sent, and a late reply is
  dropped silently.
* When the connection fails (EOF, reset, garbage, a stalled write), every
  pending waiter is failed with :class:`Unavailable` and the connection is
  discarded; the next call reconnects lazily (retrying with backoff for up to
  ``connect_timeout_s``).  A frame is written at most once and never re-sent,
  so non-idempotent calls are never doubled; callers decide about retries.

Server (:class:`RpcServer`, or :func:`serve_rpc`):

* The reader decodes requests and spawns one task per request in the
  connection's nursery.  A semaphore slot (``max_inflight_per_conn``) is taken
  *before* spawning and returned only after the response is written, so a
  flood pauses reading (TCP backpressure) and queued responses stay bounded.
* Handler failures become error responses; the connection survives.  A
  malformed, truncated or oversized frame gets one best-effort error response
  with msgid 0, then that connection and its in-flight handlers are closed.
  When a client disconnects, its in-flight handlers are cancelled.  Nothing
  on one connection can stop the server.

Authentication (:mod:`dfs.core.auth`):

* A TCP connection starts with the handshake: the client proves its caller class
  (``auth.hello``, the server's challenge and proof, ``auth.proof``) before its first
  call, which it pipelines right behind the proof.  Until then the server reads frames of
  at most :data:`HANDSHAKE_FRAME_BYTES` and waits at most :data:`HANDSHAKE_TIMEOUT_S`, so
  an unauthenticated peer can hold neither memory nor a connection slot for long.  A
  failed handshake gets one error frame (:class:`AuthFailed`, saying nothing about the
  cluster) and the connection is closed.
* A unix socket caller's class comes from its SO_PEERCRED: root and this process's user
  are ``node`` (they can read the credential files anyway), the allowed group ``client``.
* Each request's method must list the connection's class among its callers (from the
  endpoint declarations); otherwise the answer is :class:`CallerNotAllowed` and no
  handler runs.

Large payloads travel as separate buffers from the caller's memory (see
:func:`dfs.core.wire.encode_request_parts`) rather than being copied into a frame.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import math
import os
import socket
import ssl
import stat
import struct
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import trio

from dfs.core import wire
from dfs.core.auth import HELLO, PROOF, CallerClass, ClientHandshake, Credential, ServerHandshake
from dfs.core.errors import (
    AuthFailed,
    CallerNotAllowed,
    ConfigError,
    DfsError,
    FrameTooLarge,
    InternalError,
    InvalidArgument,
    NotPermitted,
    ProtocolError,
    Unavailable,
    UnknownMethod,
    only_dfs_error,
)
from dfs.net.sockstream import DirectSocketStream, direct

__all__ = [
    "DEFAULT_PORT",
    "Address",
    "Handler",
    "RpcClient",
    "RpcServer",
    "RpcStats",
    "current_caller",
    "current_connection",
    "open_client",
    "open_listeners",
    "parse_address",
    "serve_rpc",
]

log = logging.getLogger("dfs.rpc")

DEFAULT_PORT = 7400
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_CALL_TIMEOUT_S = 60.0
DEFAULT_MAX_INFLIGHT_PER_CONN = 128
#: Large reads amortise syscalls and keep the decoder's append path cheap.
RECEIVE_BYTES = 256 * 1024
#: How long the server tries to deliver a connection-level error before closing...
_ERROR_SEND_TIMEOUT_S = 1.0
#: ...and how much it reads and drops meanwhile, so the error is not lost to a reset.
_DRAIN_BYTES = 1024 * 1024
_UNKNOWN_METHOD_KEY = "<unknown>"
_BACKOFF_START_S = 0.01
_BACKOFF_MAX_S = 0.5
#: Small queued frames are joined into writes of up to about this many bytes.
_BATCH_BYTES = 1024 * 1024
#: Large buffers are written in slices of this size so the watchdog sees progress.
_WRITE_SLICE_BYTES = 1024 * 1024
#: Before a peer has authenticated, its frames may be no larger than this (a handshake
#: message is about 100 bytes)...
HANDSHAKE_FRAME_BYTES = 4096
#: ...and it has this long to finish the handshake.
HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 4096
#: Where a caller without a credential should look (the files dfs/net/credentials.py finds).
CREDENTIAL_HINT = (
    "copy the daemon's <data_dir>/client.credential or admin.credential next to its dfs.conf's "
    "data_dir, or name one with DFS_RPC_CREDENTIAL_FILE"
)

Handler = Callable[..., Awaitable[Any]]

# The server connection whose request the running task serves (each connection's task sets it;
# its request tasks inherit it).
_serving_connection: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "dfs_rpc_connection", default=None
)
_connection_ids = itertools.count(1)
# The caller class of that connection, once known (set by its task before it reads requests).
_serving_caller: contextvars.ContextVar[CallerClass | None] = contextvars.ContextVar(
    "dfs_rpc_caller", default=None
)


def current_connection() -> int | None:
    """A number for the server connection whose request is being handled (None outside one).

    Lets a service tell one client's calls from another's, e.g. not to notify a client of
    its own changes (daemon/changefeed.py).  Never reused within a process."""
    return _serving_connection.get()


@contextlib.contextmanager
def serving(connection: int, caller: CallerClass) -> Iterator[None]:
    """Within: handlers see ``connection`` and ``caller`` as the ones they serve (the metadata
    lane's calls handed to the event loop stand for the connection their ticket came from)."""
    tokens = _serving_connection.set(connection), _serving_caller.set(caller)
    try:
        yield
    finally:
        _serving_caller.reset(tokens[1])
        _serving_connection.reset(tokens[0])


def current_caller() -> CallerClass | None:
    """The caller class of the connection whose request is being handled (None outside one: an
    in-process caller, the daemon itself).  For a handler that calls another endpoint on the
    caller's behalf (meta.once) and must check that endpoint admits it too."""
    return _serving_caller.get()


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP ``host:port`` or a unix socket ``path`` (exactly one is meaningful)."""

    host: str = ""
    port: int = 0
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _parse_port(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise ConfigError(f"bad port in address {whole!r}")
    return int(text)


def parse_address(s: str | Address, default_port: int) -> Address:
    """Parse ``host:port``, ``[v6]:port``, ``host``, ``[v6]`` or ``unix:/path``.

    An empty host (``":7400"``) means "all interfaces" when listening.
    """
    if isinstance(s, Address):
        return s
    text = s.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ConfigError(f"empty unix socket path in {s!r}")
        return Address(path=path)
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad address {s!r}")
        port = _parse_port(rest[1:], s) if rest else default_port
        return Address(host=text[1:end], port=port)
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return Address(host=host, port=_parse_port(port_text, s))
    # A bare host name, or a bare IPv6 literal (several colons, no brackets).
    return Address(host=text, port=default_port)


async def _open_stream(addr: Address, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    stream: trio.abc.Stream
    if addr.path is not None:
        stream = await trio.open_unix_socket(addr.path)
        server_hostname = None
    else:
        if not addr.host:
            raise ConfigError(f"no host to connect to in {addr}")
        stream = await trio.open_tcp_stream(addr.host, addr.port)
        server_hostname = addr.host
    if ssl_context is None or addr.path is not None:
        return stream  # a unix socket is local and guarded by its file mode: no TLS
    tls = trio.SSLStream(stream, ssl_context, server_hostname=server_hostname)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return tls


def _describe(exc: BaseException) -> str:
    """A one-line reason; trio's stream errors carry the useful part in __cause__."""
    inner = exc.__cause__ if exc.__cause__ is not None and not str(exc) else exc
    text = str(inner)
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


async def _connect_with_retry(
    addr: Address, ssl_context: ssl.SSLContext | None, timeout_s: float
) -> trio.abc.Stream:
    """Connect, retrying refused/failed attempts with capped backoff until timeout_s."""
    delay = _BACKOFF_START_S
    last = "timed out"
    with trio.move_on_after(timeout_s):
        while True:
            try:
                return await _open_stream(addr, ssl_context)
            except (OSError, trio.BrokenResourceError) as exc:
                last = _describe(exc)
            except (UnicodeError, TypeError) as exc:
                # A host name the resolver cannot even encode (bad IDNA, NUL): retrying cannot help.
                # Such addresses reach us from the layout and from peers, so they fail like any
                # unreachable peer instead of escaping as a crash.
                raise Unavailable(f"cannot connect to {addr}: bad host name ({exc})") from None
            await trio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
    raise Unavailable(f"cannot connect to {addr} within {timeout_s}s: {last}")


# --------------------------------------------------------------------------- outbox


# Parts of a frame whose caller gave up before it was sent (see RpcClient._round_trip).
_NO_PARTS: list[wire.Buffer] = []
# Queued frames past which a new one first drops those whose caller gave up (_Outbox.put).
_QUEUE_PRUNE_ITEMS = 256


class _Outgoing:
    """One queued frame.  *waiter* lets the writer skip a call whose caller already
    gave up; *on_sent* runs once the frame is fully written."""

    __slots__ = ("on_sent", "parts", "waiter")

    def __init__(
        self,
        parts: list[wire.Buffer],
        waiter: _Waiter | None = None,
        on_sent: Callable[[], object] | None = None,
    ) -> None:
        self.parts = parts
        self.waiter = waiter
        self.on_sent = on_sent


class _Outbox:
    """The outgoing frames of one connection, written in order by one task at a time.

    Frames never interleave, and frames queued while a write was in progress
    are coalesced into one ``send_all`` (small parts joined, large parts sent
    from the caller's memory), which is what makes pipelined calls cheap.
    Two ways to drive it:

    * :meth:`put` + :meth:`run`: a dedicated writer task (the client), so a
      caller's cancellation can never cut a frame in half;
    * :meth:`send`: the calling task writes if nobody else is (the server,
      whose handler tasks are only cancelled when the connection is closing
      anyway) - one scheduling hop less per response.

    ``last_progress`` lets a watchdog detect a peer that stopped reading
    without a cancel scope per write.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._queue: deque[_Outgoing] = deque()
        self._prune_at = _QUEUE_PRUNE_ITEMS
        self._lot = trio.lowlevel.ParkingLot()
        self._writing = False
        #: Set when a write was interrupted: the stream may end in half a frame.
        self.broken = False
        #: Time of the last write progress while a write is under way, else None.
        self.last_progress: float | None = None

    def put(self, item: _Outgoing) -> None:
        """Queue *item* for the writer task running :meth:`run`."""
        queue = self._queue
        if len(queue) >= self._prune_at:
            # A writer stuck on a peer that does not read: drop the calls given up on meanwhile.
            self._queue = queue = deque(x for x in queue if x.waiter is None or not x.waiter.gone)
            self._prune_at = max(_QUEUE_PRUNE_ITEMS, 2 * len(queue))
        queue.append(item)
        self.wake()

    @property
    def direct(self) -> bool:
        """Whether :meth:`write_now` can write (a plain socket), rather than only queue."""
        return isinstance(self._stream, DirectSocketStream)

    async def run(self) -> NoReturn:
        """Be the writer task: write queued frames forever (stream errors propagate)."""
        while True:
            # Another task may be writing through send(); it drains the whole queue.
            while not self._queue or self._writing:
                await self._lot.park()
            await self._drain()

    @property
    def idle(self) -> bool:
        return not self._writing and not self._queue and not self.broken

    async def send_eof(self) -> bool:
        """Half-close the stream once nothing is being written; later sends fail as on a closed
        stream.  False if that cannot be done (a write is under way, or the stream cannot)."""
        if not self.idle or not isinstance(self._stream, trio.abc.HalfCloseableStream):
            return False
        # Before the await: send_eof checkpoints while it holds the stream's send side, and a
        # handler finishing meanwhile must not write into it.
        self.broken = True
        await self._stream.send_eof()
        return True

    async def send(self, item: _Outgoing) -> None:
        """Queue *item*; if no task is writing, write the queue from this task."""
        if self.broken:
            raise trio.ClosedResourceError("this connection's sending side is closed")
        if not self.write_now(item) and not self._writing:
            await self._drain()

    def write_now(self, item: _Outgoing) -> bool:
        """Write *item* from the calling task without waiting, when nothing else is queued or
        being written and the kernel takes the whole frame: True (its ``on_sent`` ran).
        Otherwise it is queued - or, if the kernel took part of it, the rest is queued first,
        never to be skipped - and False: a writer must drain the queue.

        The common small call or answer thus costs one system call and no scheduling."""
        stream = self._stream
        if not self.idle or len(item.parts) != 1 or not isinstance(stream, DirectSocketStream):
            self._queue.append(item)  # (TLS: only a task's send_all can write)
            return False
        frame = item.parts[0]
        try:
            sent = stream.write_nowait(frame)
        except BaseException:
            self.broken = True
            raise
        size = frame.nbytes if isinstance(frame, memoryview) else len(frame)
        if sent == size:
            if item.on_sent is not None:
                item.on_sent()
            return True
        if sent:
            # Half a frame is on the wire: the rest goes next, even if its caller gives up.
            self._queue.appendleft(_Outgoing([memoryview(frame)[sent:]], None, item.on_sent))
        else:
            self._queue.appendleft(item)
        return False

    def wake(self) -> None:
        """Have the writer task (:meth:`run`) look at the queue."""
        if self._lot:
            self._lot.unpark()

    async def _drain(self) -> None:
        self._writing = True
        try:
            while self._queue:
                buffers, taken = self._take_batch()
                if buffers:
                    await self._write(buffers)
                for item in taken:
                    if item.on_sent is not None:
                        item.on_sent()
        except BaseException:
            self.broken = True
            self.last_progress = None  # nothing left for the watchdog to judge
            raise
        finally:
            self._writing = False

    async def _write(self, buffers: list[wire.Buffer]) -> None:
        self.last_progress = trio.current_time()
        for buf in buffers:
            if len(buf) <= _WRITE_SLICE_BYTES:
                await self._stream.send_all(buf)
            else:
                await self._write_sliced(memoryview(buf))
            self.last_progress = trio.current_time()
        self.last_progress = None

    async def _write_sliced(self, view: memoryview) -> None:
        # Big parts go out in slices so progress is visible to the watchdog.
        for start in range(0, view.nbytes, _WRITE_SLICE_BYTES):
            await self._stream.send_all(view[start : start + _WRITE_SLICE_BYTES])
            self.last_progress = trio.current_time()

    def _take_batch(self) -> tuple[list[wire.Buffer], list[_Outgoing]]:
        buffers: list[wire.Buffer] = []
        small: list[wire.Buffer] = []
        taken: list[_Outgoing] = []
        total = 0
        while self._queue and total < _BATCH_BYTES:
            item = self._queue.popleft()
            if item.waiter is not None and item.waiter.gone:
                continue  # the caller stopped waiting before we sent it: never send
            taken.append(item)
            for part in item.parts:
                size = part.nbytes if isinstance(part, memoryview) else len(part)
                total += size
                if size < wire.LARGE_BUFFER_BYTES:
                    small.append(part)
                    continue
                if small:
                    buffers.append(b"".join(small))
                    small = []
                buffers.append(part)
        if small:
            buffers.append(small[0] if len(small) == 1 else b"".join(small))
        return buffers, taken


async def _watch_writes(outbox: _Outbox, timeout_s: float, on_stall: Callable[[str], object]) -> None:
    """Call *on_stall* if a write makes no progress for *timeout_s* (peer not reading)."""
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        return
    while True:
        await trio.sleep(timeout_s / 4)
        since = outbox.last_progress
        if since is not None and trio.current_time() - since >= timeout_s:
            on_stall(f"peer accepted no data for {timeout_s}s")
            return


# --------------------------------------------------------------------------- client

#: A waiter's failure when its deadline passed (the caller reports its own timeout).
_TIMED_OUT = "timed out"
#: How often a connection's watchdog looks for calls past their deadline: a call times out
#: within this much after it (or an eighth of the timeout, if less).
_DEADLINE_TICK_S = 1.0


class _Waiter:
    """One outstanding call: woken with either a response or a failure reason."""

    __slots__ = ("deadline", "error", "event", "failure", "gone", "response")

    def __init__(self, deadline: float = math.inf) -> None:
        self.event = trio.Event()
        #: When the connection's watchdog gives up on the reply (see RpcClient.call).
        self.deadline = deadline
        self.response: wire.Response | None = None
        self.failure: str | None = None
        #: The server's reason for refusing the whole connection, when it is one the caller
        #: must see as such (AuthFailed, CallerNotAllowed) rather than as a lost reply.
        self.error: DfsError | None = None
        #: Set when the caller stops waiting (reply, timeout or cancellation).
        self.gone = False


class _ClientConnection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = direct(stream)
        self.outbox = _Outbox(self.stream)
        self.pending: dict[int, _Waiter] = {}
        self.failure: str | None = None
        # Created up front so fail() can stop tasks that have not started yet.
        self.scope = trio.CancelScope()

    def fail(self, reason: str, error: DfsError | None = None) -> None:
        """Mark dead, wake every pending call with *reason*, stop reader and writer.

        Idempotent: the first reason wins."""
        if self.failure is not None:
            return
        self.failure = reason
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            waiter.failure = reason
            waiter.error = error
            waiter.event.set()
        self.scope.cancel()


async def _watch_deadlines(conn: _ClientConnection, timeout_s: float) -> None:
    """End the wait of each call on ``conn`` whose deadline passed (calls with the client's
    default timeout; see RpcClient.call), looking every tick rather than arming a cancel scope
    per call."""
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        return
    tick_s = min(_DEADLINE_TICK_S, timeout_s / 8)
    while True:
        await trio.sleep(tick_s)
        now = trio.current_time()
        late = [msgid for msgid, waiter in conn.pending.items() if waiter.deadline <= now]
        for msgid in late:
            waiter = conn.pending.pop(msgid)
            waiter.failure = _TIMED_OUT
            waiter.event.set()


class NoReply(Unavailable):
    """The peer did not answer: the connection was lost or the call timed out.  Raised here, on
    the client; a peer's own Unavailable answer arrives as plain Unavailable."""


class ConnectFailed(NoReply):
    """No connection to the peer could be made: the request was never sent (safe to send
    elsewhere, unlike after a lost connection, when the request may have been applied)."""


class _Refused(Exception):
    """The server refused the whole connection (a msgid 0 error frame)."""

    def __init__(self, error: DfsError) -> None:
        super().__init__(error.message)
        self.error = error


class RpcClient:
    """Calls methods on one peer over one (lazily re-established) connection.

    Create with :func:`open_client`; the constructor needs the nursery that will
    own the connection's reader and writer tasks.
    """

    def __init__(
        self,
        address: Address,
        nursery: trio.Nursery,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        call_timeout_s: float | None = DEFAULT_CALL_TIMEOUT_S,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        credential: Credential | None = None,
    ) -> None:
        """``credential`` is what the client proves itself with on a TCP connection (a unix
        socket's server knows its caller from the kernel)."""
        self.address = address
        self._credential = credential
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = math.inf if call_timeout_s is None else call_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self._nursery = nursery
        self._ssl_context = ssl_context
        self._ids = itertools.count(1)  # msgid 0 is reserved for connection-level errors
        self._conn: _ClientConnection | None = None
        self._connect_lock = trio.Lock()
        self._connect_attempts = 0
        self._last_connect_error: str | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        """True while a live connection exists (False before the first call or after a loss)."""
        return self._conn is not None and self._conn.failure is None

    async def connect(self) -> None:
        """Establish the connection now instead of on the first call."""
        await self._connection()

    async def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call *method* with *args* and return its result.

        Raises the :class:`DfsError` subclass the server raised, or
        :class:`Unavailable` if no reply arrived (timeout, connection lost,
        connect failure).  The request is sent at most once.  ``timeout_s``
        overrides the client default; ``math.inf`` waits forever.
        """
        if self._closed:
            raise Unavailable(f"rpc client for {self.address} is closed")
        timeout = self.call_timeout_s if timeout_s is None else timeout_s
        msgid = next(self._ids)
        parts = wire.encode_request_parts(msgid, method, args)
        self._check_size(parts, method)
        conn = self._conn
        if timeout == math.inf:
            waiter = _Waiter()
            await self._round_trip(msgid, parts, waiter)
        elif timeout == self.call_timeout_s and conn is not None and conn.failure is None:
            # The usual call: its connection's watchdog ends the wait at the deadline (a cancel
            # scope per call was a tenth of a mount's CPU time per metadata call).
            waiter = _Waiter(trio.current_time() + timeout)
            await self._round_trip(msgid, parts, waiter)
        else:
            # Another timeout, or a connection to make first (the deadline bounds that too).
            waiter = _Waiter()
            with trio.CancelScope(deadline=trio.current_time() + timeout):
                await self._round_trip(msgid, parts, waiter)
        return self._outcome(waiter, method, timeout)

    async def _round_trip(self, msgid: int, parts: list[wire.Buffer], waiter: _Waiter) -> None:
        conn = self._conn
        if conn is None or conn.failure is not None:
            conn = await self._connection()
        conn.pending[msgid] = waiter
        item = _Outgoing(parts, waiter)
        try:
            if conn.outbox.idle and len(parts) == 1 and len(parts[0]) < wire.LARGE_BUFFER_BYTES:
                # Small frame, nobody writing: written from this task if the kernel takes it
                # at once (no await, so no cancellation can cut it in half), else by the
                # writer task, which a stalled peer's write watchdog stops.
                try:
                    if conn.outbox.direct:
                        if not conn.outbox.write_now(item):
                            conn.outbox.wake()
                    else:
                        # TLS: sent from this task too, shielded so a cancelled caller never
                        # cuts a frame in half.
                        with trio.CancelScope(shield=True):
                            await conn.outbox.send(item)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    conn.fail(f"send failed: {_describe(exc)}")
            else:
                conn.outbox.put(item)
            await waiter.event.wait()
        finally:
            # If still queued, the writer now skips the frame; a late reply
            # finds no waiter and is dropped by the reader.
            waiter.gone = True
            conn.pending.pop(msgid, None)
            # Its payload goes now, not when the writer reaches the item: to a peer that
            # stopped reading, with no stall watchdog on the connection (peer connections
            # have none), every abandoned chunk put kept its blob queued.  A frame the writer
            # took already is written from its own references to the parts.
            item.parts = _NO_PARTS

    def _check_size(self, parts: list[wire.Buffer], method: str) -> None:
        body = wire.parts_nbytes(parts) - 4
        if body > self.max_frame_bytes:
            # Refuse locally: the server would drop the whole connection for it.
            raise FrameTooLarge(f"{method}: request of {body} bytes exceeds limit {self.max_frame_bytes}")

    def _outcome(self, waiter: _Waiter, method: str, timeout: float) -> Any:
        response = waiter.response
        if response is not None:
            if response.error is not None:
                response.error.add_note(f"raised by {self.address} in rpc {method!r}")
                raise response.error
            return response.result
        if waiter.error is not None:
            hint = ""
            if isinstance(waiter.error, AuthFailed) and self._credential is None:
                hint = f" (no credential was found for it: {CREDENTIAL_HINT})"
            raise type(waiter.error)(f"{self.address}: {waiter.error.message}{hint}")
        if waiter.failure is not None and waiter.failure is not _TIMED_OUT:
            raise NoReply(f"rpc {method!r} to {self.address}: {waiter.failure}")
        raise NoReply(f"rpc {method!r} to {self.address}: no reply within {timeout}s")

    async def _connection(self) -> _ClientConnection:
        attempts_seen = self._connect_attempts
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.failure is None:
                return conn
            if self._closed:
                raise Unavailable(f"rpc client for {self.address} is closed")
            if self._connect_attempts != attempts_seen and self._last_connect_error is not None:
                # Someone else just tried and failed while we queued: fail fast
                # rather than serialising one full connect timeout per caller.
                raise ConnectFailed(self._last_connect_error)
            return await self._reconnect()

    async def _reconnect(self) -> _ClientConnection:
        self._connect_attempts += 1
        try:
            stream = await _connect_with_retry(self.address, self._ssl_context, self.connect_timeout_s)
        except Unavailable as exc:
            self._last_connect_error = exc.message
            raise ConnectFailed(exc.message) from None
        if self._closed:
            await trio.aclose_forcefully(stream)
            raise Unavailable(f"rpc client for {self.address} is closed")
        try:
            await self._authenticate(stream)
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, AuthFailed):
                self._last_connect_error = exc.message
            raise
        self._last_connect_error = None
        conn = _ClientConnection(stream)
        self._conn = conn
        self._nursery.start_soon(self._run_connection, conn)
        return conn

    async def _authenticate(self, stream: trio.abc.Stream) -> None:
        """Run the handshake on a fresh TCP connection (see :mod:`dfs.core.auth`).

        Only the server's challenge is awaited: the proof goes out with the first call."""
        if self.address.is_unix or self._credential is None:
            return  # a daemon that wants a credential refuses the first call (see _outcome)
        handshake = ClientHandshake(self._credential)
        decoder = wire.FrameDecoder(HANDSHAKE_FRAME_BYTES)
        with trio.move_on_after(self.connect_timeout_s) as scope:
            try:
                await stream.send_all(wire.encode_request(0, HELLO, handshake.hello()))
                while (event := decoder.next_event()) is None:
                    data = await stream.receive_some(HANDSHAKE_FRAME_BYTES)
                    if not data:
                        raise Unavailable(f"{self.address} closed the connection during the handshake")
                    decoder.feed(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectFailed(f"{self.address}: handshake failed: {_describe(exc)}") from None
            except ProtocolError as exc:
                raise ConnectFailed(f"{self.address}: handshake failed: {exc.message}") from None
        if scope.cancelled_caught:
            raise ConnectFailed(f"{self.address}: no answer to the handshake in {self.connect_timeout_s}s")
        if not isinstance(event, wire.Response) or event.msgid != 0:
            raise AuthFailed(f"{self.address} does not speak the dfs handshake")
        if event.error is not None:
            if isinstance(event.error, AuthFailed):
                raise AuthFailed(f"{self.address}: {event.error.message}")
            raise event.error
        proof = handshake.answer(event.result)  # AuthFailed: not a daemon of our cluster
        with trio.CancelScope(shield=True):
            try:
                await stream.send_all(wire.encode_request(0, PROOF, proof))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectFailed(f"{self.address}: handshake failed: {_describe(exc)}") from None

    async def _run_connection(self, conn: _ClientConnection) -> None:
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, conn)
                    nursery.start_soon(_watch_writes, conn.outbox, self.call_timeout_s, conn.fail)
                    nursery.start_soon(_watch_deadlines, conn, self.call_timeout_s)
                    await self._read_loop(conn)
        finally:
            conn.fail("connection closed")  # no-op unless cancelled from outside
            await trio.aclose_forcefully(conn.stream)

    async def _write_loop(self, conn: _ClientConnection) -> None:
        try:
            await conn.outbox.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            conn.fail(f"send failed: {_describe(exc)}")
        except Exception as exc:
            log.exception("rpc client writer for %s crashed", self.address)
            conn.fail(f"internal error in writer: {_describe(exc)}")

    async def _read_loop(self, conn: _ClientConnection) -> None:
        decoder = wire.FrameDecoder(self.max_frame_bytes)
        try:
            while True:
                data = await conn.stream.receive_some(RECEIVE_BYTES)
                if not data:
                    conn.fail("connection closed by peer")
                    return
                decoder.feed(data)
                while (event := decoder.next_event()) is not None:
                    self._deliver(conn, event)
        except _Refused as exc:
            conn.fail(f"server refused the connection: {exc.error.code}: {exc.error.message}", exc.error)
        except DfsError as exc:
            conn.fail(f"bad data from peer: {exc.code}: {exc.message}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            conn.fail(f"connection lost: {_describe(exc)}")
        except Exception as exc:
            log.exception("rpc client reader for %s crashed", self.address)
            conn.fail(f"internal error in reader: {_describe(exc)}")

    @staticmethod
    def _deliver(conn: _ClientConnection, event: wire.Request | wire.Response) -> None:
        if not isinstance(event, wire.Response):
            raise ProtocolError(f"server sent a request ({event.method!r})")
        if event.msgid == 0:
            err = event.error
            if isinstance(err, AuthFailed | CallerNotAllowed):
                raise _Refused(err)
            detail = f"{err.code}: {err.message}" if err is not None else "unexpected msgid 0"
            raise ProtocolError(f"server rejected the connection: {detail}")
        waiter = conn.pending.pop(event.msgid, None)
        if waiter is not None:  # None: the caller gave up; drop the late reply
            waiter.response = event
            waiter.event.set()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._conn is not None:
            self._conn.fail("client closed")

    async def aclose(self) -> None:
        """Close the connection; pending and later calls raise :class:`Unavailable`."""
        self._shutdown()
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_client(
    address: str | Address,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    call_timeout_s: float | None = DEFAULT_CALL_TIMEOUT_S,
    max_frame_bytes: int = wire.MAX_FRAME_BYTES,
    ssl_context: ssl.SSLContext | None = None,
    credential: Credential | None = None,
) -> AsyncIterator[RpcClient]:
    """Open an :class:`RpcClient`; the connection is made lazily by the first call.

    ``call_timeout_s=None`` disables the default call timeout.
    """
    addr = parse_address(address, DEFAULT_PORT)
    async with trio.open_nursery() as nursery:
        client = RpcClient(
            addr,
            nursery,
            connect_timeout_s=connect_timeout_s,
            call_timeout_s=call_timeout_s,
            max_frame_bytes=max_frame_bytes,
            ssl_context=ssl_context,
            credential=credential,
        )
        try:
            yield client
        finally:
            client._shutdown()  # sync, so it also runs under cancellation


# --------------------------------------------------------------------------- server


@dataclass
class RpcStats:
    """Server counters.  Unknown method names are folded into one key so a
    hostile client cannot grow these dicts without bound."""

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    connections_opened: int = 0
    connections_open: int = 0
    protocol_errors: int = 0
    peers_refused: int = 0  # unix socket callers that are neither root, us nor the allowed group
    auth_failures: int = 0  # TCP connections that did not complete the handshake
    connections_refused: int = 0  # beyond max_connections
    #: Calls refused because the caller's class may not make them, by method.
    calls_refused: Counter[str] = field(default_factory=Counter)


class _ServerConnection:
    def __init__(self, stream: trio.abc.Stream, max_inflight: int, nursery: trio.Nursery) -> None:
        self.stream = direct(stream)
        self.outbox = _Outbox(self.stream)
        # A slot is taken before a request is spawned and given back only once
        # its response is written, bounding both tasks and queued responses.
        self.slots = trio.Semaphore(max_inflight)
        self.nursery = nursery
        self.peer = _peer_name(stream)
        #: Who the peer proved to be (None until it has).
        self.caller: CallerClass | None = None

    def close(self, reason: str = "") -> None:
        """Stop reading and writing and cancel every in-flight handler."""
        if reason:
            log.warning("rpc closing connection from %s: %s", self.peer, reason)
        self.nursery.cancel_scope.cancel()


def _peer_name(stream: trio.abc.Stream) -> str:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        try:
            return str(inner.socket.getpeername()) or "unix-peer"
        except OSError:
            return "unknown-peer"
    return type(stream).__name__


def _raised_by_call(exc: BaseException) -> bool:
    """True if *exc* was raised by the call expression itself (bad arity), not
    from inside the callee: the traceback then has no frame below ours."""
    tb = exc.__traceback__
    return tb is not None and tb.tb_next is None


def _apply(fn: Callable[..., Any], req: wire.Request) -> Any:
    """``fn(*req.args)``, with a wrong number or kind of arguments as InvalidArgument."""
    try:
        return fn(*req.args)
    except TypeError as exc:
        if _raised_by_call(exc):
            raise InvalidArgument(f"{req.method}: bad arguments: {exc}") from None
        raise


class RpcServer:
    """Serves *handlers* (``method name -> async callable``) on any number of listeners."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        max_inflight_per_conn: int = DEFAULT_MAX_INFLIGHT_PER_CONN,
        ssl_context: ssl.SSLContext | None = None,
        send_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        inline_handlers: Mapping[str, Callable[..., Any]] | None = None,
        validators: Mapping[str, Callable[[Sequence[Any]], str | None]] | None = None,
        unix_group_gid: int | None = None,
        keys: Mapping[CallerClass, bytes] | None = None,
        callers: Mapping[str, frozenset[CallerClass]] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        """``inline_handlers`` are plain functions that answer in microseconds
        (indexed reads): the connection's reader runs them itself, saving the
        task start and the scheduling round trip that dominate such calls.

        ``validators`` (method -> a check of its arguments that says what is wrong with them,
        or None: the declarations' :meth:`dfs.core.endpoints.Endpoint.check_args`) refuse a
        call with a wrong argument count or type with InvalidArgument before its handler
        runs, inline or in a task: many handlers hand their arguments to another thread,
        where a bad argument would otherwise surface as a handler failure (InternalError and
        a logged traceback).

        Unix socket callers must be root, this process's user or (when ``unix_group_gid``
        is set) a member of that group, checked with SO_PEERCRED: the socket file's mode
        is the first guard, this one holds even if the file's mode is loosened.

        ``keys`` (each caller class's handshake key, :func:`dfs.core.auth.class_keys`) makes
        every TCP connection authenticate first; None serves every caller as ``node``
        (in-process tests only: a daemon always passes keys).  ``callers`` (method -> the
        classes that may call it) refuses the others; a method it does not name is open
        to ``node`` alone.  Connections beyond ``max_connections`` get one error frame."""
        if max_inflight_per_conn < 1:
            raise ValueError("max_inflight_per_conn must be >= 1")
        self._validators = dict(validators or {})
        self._handlers = dict(handlers)
        self._inline = dict(inline_handlers or {})
        self._max_frame_bytes = max_frame_bytes
        self._max_inflight = max_inflight_per_conn
        self._ssl_context = ssl_context
        self._send_timeout_s = send_timeout_s
        self._own_uid = os.geteuid()
        self._unix_group_gid = unix_group_gid
        self._keys = keys
        self._callers = dict(callers or {})
        self._served = frozenset(self._handlers) | frozenset(self._inline)
        self._max_connections = max_connections
        self.stats = RpcStats()

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Accept connections forever; ``task_status.started(listeners)`` once listening."""
        await trio.serve_listeners(self.handle_stream, list(listeners), task_status=task_status)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection until it closes or misbehaves.  Never raises
        (except cancellation), so one connection cannot take down the server."""
        if self._ssl_context is not None and not _is_unix(stream):
            stream = trio.SSLStream(stream, self._ssl_context, server_side=True)
        self.stats.connections_opened += 1
        self.stats.connections_open += 1
        # This task serves only this connection, so the value stays with it and its request tasks.
        _serving_connection.set(next(_connection_ids))
        unix = _is_unix(stream)
        refusal: DfsError | None = None
        if self.stats.connections_open > self._max_connections:
            self.stats.connections_refused += 1
            refusal = Unavailable(f"too many connections (limit {self._max_connections})")
        elif unix:
            refusal = self._check_unix_peer(stream)
            if refusal is not None:
                self.stats.peers_refused += 1
        try:
            async with trio.open_nursery() as nursery:
                conn = _ServerConnection(stream, self._max_inflight, nursery)
                nursery.start_soon(_watch_writes, conn.outbox, self._send_timeout_s, conn.close)
                if refusal is not None:
                    await self._reject_connection(conn, refusal)
                    conn.close()
                    return
                decoder = wire.FrameDecoder(self._max_frame_bytes)
                if unix:
                    conn.caller = self._unix_class(stream)
                elif self._keys is None:
                    conn.caller = CallerClass.NODE
                else:
                    decoder = wire.FrameDecoder(HANDSHAKE_FRAME_BYTES)
                    if not await self._authenticate(conn, decoder, self._keys):
                        conn.close()
                        return
                    decoder.max_frame_bytes = self._max_frame_bytes  # keeps what was pipelined
                await self._read_requests(conn, decoder)
                conn.close()  # peer is gone: abandon its in-flight handlers
        except Exception:
            log.exception("rpc connection handler crashed")
        finally:
            self.stats.connections_open -= 1
            await trio.aclose_forcefully(stream)

    async def _authenticate(
        self, conn: _ServerConnection, decoder: wire.FrameDecoder, keys: Mapping[CallerClass, bytes]
    ) -> bool:
        """Run the server's side of the handshake; False (after one error frame) if it failed."""
        handshake = ServerHandshake(keys)
        failure: DfsError | None = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S) as scope:
            try:
                hello = await self._next_request(conn, decoder)
                if hello is None:
                    return False
                if hello.method != HELLO:
                    raise AuthFailed("this daemon serves authenticated callers only: authenticate first")
                await self._respond(conn, wire.encode_response_parts(0, handshake.on_hello(hello.args)))
                proof = await self._next_request(conn, decoder)
                if proof is None:
                    return False
                if proof.method != PROOF:
                    raise AuthFailed("authentication failed")
                conn.caller = handshake.on_proof(proof.args)
                return True
            except ProtocolError as exc:
                # A frame over the pre-authentication limit, or garbage: say only that.
                failure = AuthFailed(f"authentication failed: {exc.message}")
            except AuthFailed as exc:
                failure = exc
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        if scope.cancelled_caught:
            failure = AuthFailed(f"authentication failed: no handshake within {HANDSHAKE_TIMEOUT_S}s")
        assert failure is not None
        self.stats.auth_failures += 1
        await self._reject_connection(conn, failure)
        return False

    @staticmethod
    async def _next_request(conn: _ServerConnection, decoder: wire.FrameDecoder) -> wire.Request | None:
        """The next whole request (None: the peer closed the connection)."""
        while (event := decoder.next_event()) is None:
            data = await conn.stream.receive_some(HANDSHAKE_FRAME_BYTES)
            if not data:
                return None
            decoder.feed(data)
        if not isinstance(event, wire.Request):
            raise ProtocolError("client sent a response")
        return event

    def _unix_class(self, stream: trio.abc.Stream) -> CallerClass:
        """The class of a unix socket caller admitted by :meth:`_check_unix_peer`."""
        try:
            return unix_caller(
                getattr(stream, "socket", None), own_uid=self._own_uid, group_gid=self._unix_group_gid
            )
        except NotPermitted:
            return CallerClass.CLIENT  # gone meanwhile: the least the check admitted

    def _refusal(self, conn: _ServerConnection, method: str) -> CallerNotAllowed | None:
        """Why this connection's caller may not call ``method`` (None: it may)."""
        allowed = self._callers.get(method)
        caller = conn.caller
        if caller is None or caller not in (allowed or {CallerClass.NODE}):
            who = caller.value if caller is not None else "unauthenticated"
            return CallerNotAllowed(f"{method}: not open to {who} callers")
        return None

    async def _read_requests(self, conn: _ServerConnection, decoder: wire.FrameDecoder) -> None:
        # This connection's task: its request tasks, spawned here, inherit the value.
        _serving_caller.set(conn.caller)
        try:
            while True:
                event = decoder.next_event()
                if event is None:
                    data = await conn.stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        if decoder.buffered_bytes:
                            raise ProtocolError(
                                f"connection closed inside a frame ({decoder.buffered_bytes} bytes)"
                            )
                        return
                    decoder.feed(data)
                    continue
                if not isinstance(event, wire.Request):
                    raise ProtocolError("client sent a response")
                await self._take_slot(conn)
                if self._callers and event.method in self._served:
                    refused = self._refusal(conn, event.method)
                    if refused is not None:
                        self.stats.calls_refused[event.method] += 1
                        parts = self._error(event, event.method, refused)
                        await self._respond(conn, parts, on_sent=conn.slots.release)
                        continue
                inline = self._inline.get(event.method)
                if inline is not None:
                    parts = self._run_inline(inline, event)
                    await self._respond(conn, parts, on_sent=conn.slots.release)
                    continue
                conn.nursery.start_soon(self._run_request, conn, event)
        except ProtocolError as exc:
            await self._reject_connection(conn, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    @staticmethod
    async def _take_slot(conn: _ServerConnection) -> None:
        # Fast path without a scheduling round trip; when full, reading pauses.
        try:
            conn.slots.acquire_nowait()
        except trio.WouldBlock:
            await conn.slots.acquire()

    def _check_unix_peer(self, stream: trio.abc.Stream) -> DfsError | None:
        """Why a unix socket caller is refused (None: admitted), from its SO_PEERCRED."""
        try:
            unix_caller(
                getattr(stream, "socket", None), own_uid=self._own_uid, group_gid=self._unix_group_gid
            )
        except NotPermitted as exc:
            return exc
        return None

    async def _reject_connection(self, conn: _ServerConnection, exc: DfsError) -> None:
        if isinstance(exc, ProtocolError):
            self.stats.protocol_errors += 1
        self.stats.error_codes[exc.code] += 1
        # Strangers knocking are counted (dfs_rpc_connections_refused_total), not logged loudly:
        # a port scan must not flood the log.
        level = logging.INFO if isinstance(exc, AuthFailed) else logging.WARNING
        log.log(level, "rpc refusing connection from %s: %s", conn.peer, exc.message)
        sent = trio.Event()
        with trio.move_on_after(_ERROR_SEND_TIMEOUT_S):
            await self._respond(conn, wire.encode_error_parts(0, exc), on_sent=sent.set)
            await sent.wait()  # another task may be the one writing it
            # Closing with unread bytes would reset the connection, and the peer could lose the
            # frame that says why: half-close, and read (and drop) what it still sends.
            # Only once nothing else is being written (send_eof would race the writer), and
            # the peer may be gone already: then there is nobody left to tell.
            try:
                if await conn.outbox.send_eof():
                    drained = 0
                    while drained < _DRAIN_BYTES and (data := await conn.stream.receive_some(RECEIVE_BYTES)):
                        drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass

    async def _run_request(self, conn: _ServerConnection, req: wire.Request) -> None:
        try:
            parts = await self.dispatch(req)
        except BaseException:
            conn.slots.release()  # only cancellation gets here: the connection is closing
            raise
        await self._respond(conn, parts, on_sent=conn.slots.release)

    @staticmethod
    async def _respond(
        conn: _ServerConnection, parts: list[wire.Buffer], on_sent: Callable[[], object] | None = None
    ) -> None:
        try:
            await conn.outbox.send(_Outgoing(parts, on_sent=on_sent))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.close()  # the client went away (or a write broke): nobody to answer

    async def dispatch(self, req: wire.Request) -> list[wire.Buffer]:
        """Run one request and return its encoded response frame (also for a request that came
        another way: the metadata lane's, daemon/service/lane.py, within :func:`serving`)."""
        handler = self._handlers.get(req.method)
        if handler is None:
            self.stats.calls[_UNKNOWN_METHOD_KEY] += 1
            return self._error(req, _UNKNOWN_METHOD_KEY, UnknownMethod(f"unknown method {req.method!r}"))
        self.stats.calls[req.method] += 1
        bad = self._bad_args(req)
        if bad is not None:
            return self._error(req, req.method, bad)
        try:
            result = await self._invoke(handler, req)
        except DfsError as exc:
            return self._error(req, req.method, exc)
        return self._encode_result(req, result)

    def _run_inline(self, fn: Callable[..., Any], req: wire.Request) -> list[wire.Buffer]:
        """Run a synchronous handler in the reader task; same error contract as :meth:`_invoke`."""
        self.stats.calls[req.method] += 1
        bad = self._bad_args(req)
        if bad is not None:
            return self._error(req, req.method, bad)
        try:
            result = _apply(fn, req)
        except DfsError as exc:
            return self._error(req, req.method, exc)
        except Exception as exc:
            log.exception("rpc handler %r failed", req.method)
            err = InternalError(f"{req.method}: internal error ({type(exc).__name__})")
            return self._error(req, req.method, err)
        return self._encode_result(req, result)

    def _bad_args(self, req: wire.Request) -> InvalidArgument | None:
        check = self._validators.get(req.method)
        if check is None:
            return None
        problem = check(req.args)
        return None if problem is None else InvalidArgument(problem)

    def _encode_result(self, req: wire.Request, result: Any) -> list[wire.Buffer]:
        try:
            parts = wire.encode_response_parts(req.msgid, result)
        except DfsError as exc:
            log.error("rpc handler %r returned an unencodable result: %s", req.method, exc.message)
            return self._error(req, req.method, InternalError(f"{req.method}: result cannot be encoded"))
        size = wire.parts_nbytes(parts) - 4
        if size > self._max_frame_bytes:
            err = FrameTooLarge(f"{req.method}: result of {size} bytes exceeds limit {self._max_frame_bytes}")
            return self._error(req, req.method, err)
        return parts

    @staticmethod
    async def _invoke(handler: Handler, req: wire.Request) -> Any:
        """Await the handler; every failure leaves as a DfsError (args are never logged)."""
        try:
            return await _apply(handler, req)
        except DfsError:
            raise
        except Exception as exc:
            inner = only_dfs_error(exc)
            if inner is not None:
                raise inner from None
            log.exception("rpc handler %r failed", req.method)
            raise InternalError(f"{req.method}: internal error ({type(exc).__name__})") from None

    def _error(self, req: wire.Request, key: str, err: DfsError) -> list[wire.Buffer]:
        self.stats.errors[key] += 1
        self.stats.error_codes[err.code] += 1
        return wire.encode_error_parts(req.msgid, err)


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def unix_caller(sock: Any, *, own_uid: int, group_gid: int | None) -> CallerClass:
    """The caller class of the peer of unix socket ``sock``, from its SO_PEERCRED: root and
    ``own_uid`` (who could read every credential file) are ``node``, members of ``group_gid``
    ``client``; NotPermitted for anyone else, or when the kernel cannot say who it is."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        pid, uid, gid = _PEERCRED.unpack(raw)
    except (OSError, AttributeError, struct.error) as exc:
        raise NotPermitted(f"cannot tell who is calling on the unix socket: {exc}") from None
    groups: frozenset[int] = frozenset()
    if group_gid is not None and gid != group_gid:
        groups = _supplementary_groups(pid)
    if not unix_peer_allowed(uid, gid, groups, own_uid=own_uid, group_gid=group_gid):
        raise NotPermitted(f"uid {uid} may not use this daemon's unix socket")
    return CallerClass.NODE if uid in (0, own_uid) else CallerClass.CLIENT


def unix_peer_allowed(
    uid: int, gid: int, groups: frozenset[int], *, own_uid: int, group_gid: int | None
) -> bool:
    """Root, the daemon's own user, or a member of the configured group (primary or supplementary)."""
    if uid in (0, own_uid):
        return True
    return group_gid is not None and (gid == group_gid or group_gid in groups)


def _supplementary_groups(pid: int) -> frozenset[int]:
    # SO_PEERCRED names only the primary group; /proc has the rest (a few hundred bytes, in memory).
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def _is_unix(stream: trio.abc.Stream) -> bool:
    sock = getattr(stream, "socket", None)
    return sock is not None and sock.family == socket.AF_UNIX


async def serve_rpc(
    handlers: Mapping[str, Handler],
    listeners: Sequence[trio.abc.Listener[Any]],
    *,
    max_frame_bytes: int = wire.MAX_FRAME_BYTES,
    max_inflight_per_conn: int = DEFAULT_MAX_INFLIGHT_PER_CONN,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Convenience wrapper: ``RpcServer(handlers, ...).serve(listeners)``."""
    server = RpcServer(
        handlers,
        max_frame_bytes=max_frame_bytes,
        max_inflight_per_conn=max_inflight_per_conn,
        ssl_context=ssl_context,
    )
    await server.serve(listeners, task_status=task_status)


# --------------------------------------------------------------------------- listeners


async def open_listeners(
    address: str | Address, default_port: int = DEFAULT_PORT, *, unix_group_gid: int | None = None
) -> list[trio.SocketListener]:
    """Listen on a TCP address (empty host = all interfaces) or a unix socket path.

    Unix sockets: a stale socket file is removed first (a live one is an error)
    and the new one is made 0600.  The chmod happens after bind, so keep the
    socket in a private directory if that brief window matters.
    """
    addr = parse_address(address, default_port)
    try:
        if addr.path is not None:
            return [await _open_unix_listener(addr.path, unix_group_gid)]
        return await trio.open_tcp_listeners(addr.port, host=addr.host or None)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {addr}: {_describe(exc)}") from exc


async def _open_unix_listener(path: str, group_gid: int | None = None) -> trio.SocketListener:
    await _remove_stale_socket(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o600)
        if group_gid is not None:
            # The allowed group may connect too (the server checks SO_PEERCRED as well).
            os.chown(path, -1, group_gid)
            os.chmod(path, 0o660)
        sock.listen(trio.socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket")
    probe = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)  # nobody listens: left over from a dead process
        except FileNotFoundError:
            pass
        return
    finally:
        probe.close()
    raise ConfigError(f"{path}: another server is already listening")
