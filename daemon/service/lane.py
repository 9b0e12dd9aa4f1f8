"""The metadata lane: a local mount's changes answered by a thread of its own.

A change a mount makes (create, mkdir, setattr, rename...) is a ``meta.once``
call.  Over the RPC port it crosses three threads in series: the event loop
takes the request, hands it to the metadata thread, takes the result back and
answers; each hand-off is a wake-up across CPUs and a pass of trio's scheduler
(README, "Where a metadata change's time goes").  On the lane, a unix socket of
its own (``<data_dir>/lane.sock``), one thread per connection reads a request,
runs its transaction itself and answers: one wake-up each way.

- **Who.** The socket is made like ``rpc.sock`` (mode 0600, or 0660 for
  ``[rpc] unix_socket_group``) and each connection's peer is checked with
  SO_PEERCRED the same way (:func:`dfs.net.rpc.unix_caller`).  Its first call
  must be ``meta.lane(ticket)`` with a ticket this daemon issued, within the last
  minute, to a ``meta.lane()`` call on another connection: the lane then counts
  as that connection, with that connection's caller class (a mount's ``client``
  credential stays ``client`` here), and for change notices, so a mount is not
  told of its own changes (daemon/changefeed.py).
- **What.** ``meta.once`` only.  A call whose handler is one metadata-thread call
  (HandlerTable.lane_calls; a commit only while this daemon is alone: in a cluster
  it asks other nodes about its chunks first, NotOnLane) runs in the lane's
  thread, under the metadata worker's lock (one transaction at a time, on the
  same connection), while no other mount listens to this daemon's change
  notices; its notices are then
  recorded on the event loop after the answer, since nobody has to apply them
  first.  Any other call, and every call while another mount listens (a change
  must then wait for it to apply the notice, :meth:`ChangeFeed.settle`), goes to
  the event loop as if it had come over the RPC port, and a worker thread writes
  its answer.  A mount that starts listening between the check and the
  recording learns of the change from its first poll, as it does of every change
  made before it listened.
- **Limits.** At most :data:`MAX_CONNECTIONS` connections; per connection
  ``max_inflight`` calls on the event loop at once (reading pauses beyond), and
  a write that the peer does not take within ``send_timeout_s`` closes the
  connection.  Stopping the daemon shuts every connection and joins its thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import outcome
import trio

from daemon.changefeed import ChangeFeed
from daemon.service.handlers import check_once
from daemon.service.meta_calls import MetaCalls, NotOnLane
from dfs.core import endpoints, wire
from dfs.core.auth import CallerClass
from dfs.core.changes import Change
from dfs.core.errors import DfsError, InternalError, InvalidArgument, NotPermitted, ProtocolError
from dfs.net import rpc

log = logging.getLogger("dfs.daemon")

#: Lane connections served at once (a mount opens one); more are refused.
MAX_CONNECTIONS = 64
#: Tickets issued and not yet used; the oldest goes first beyond it.
MAX_TICKETS = 256
#: How long a ticket is good for.
TICKET_TTL_S = 60.0
#: Bytes read from a connection at once.
RECEIVE_BYTES = 256 * 1024
#: Answers whose notices the event loop has not recorded yet: beyond it, calls go to the event
#: loop (whose answers wait for it), until it catches up.
MAX_PENDING = 4096
#: Worker threads writing the answers of calls served on the event loop, all connections together.
SEND_THREADS = 4
#: A connection's first call (the ticket) must come within this, and fit in this many bytes.
ATTACH_TIMEOUT_S = 10.0
ATTACH_FRAME_BYTES = 4096
#: How long the daemon's stop waits for each lane thread to end.
JOIN_TIMEOUT_S = 5.0

_ONCE = endpoints.META_ONCE.name
_LANE = endpoints.META_LANE.name
_thread_ids = itertools.count(1)


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    caller: CallerClass
    #: Calls of this connection on the event loop: reading pauses while all are taken.
    slots: threading.BoundedSemaphore
    #: The connection whose ticket this one presented (None until it has).
    origin: int | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def shut(self) -> None:
        """Ends the connection: its thread's read returns, and it closes the socket."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed or gone already


Observe = Callable[[str, bool, float], None]


class MetadataLane:
    """The lane's tickets, connections and threads (see the module docstring)."""

    def __init__(
        self,
        path: str,
        metacalls: MetaCalls,
        changes: ChangeFeed,
        calls: Mapping[str, Callable[..., Any]],
        *,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        max_inflight: int = 256,
        send_timeout_s: float = 60.0,
    ) -> None:
        self.path = path
        self._own_uid = os.geteuid()
        self._unix_group_gid: int | None = None
        self._metacalls = metacalls
        self._changes = changes
        self._calls = calls
        self._max_frame_bytes = max_frame_bytes
        self._max_inflight = max_inflight
        self._send_timeout_s = send_timeout_s
        self._tickets: dict[bytes, tuple[int, CallerClass, float]] = {}
        self._tickets_lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._connections_lock = threading.Lock()
        # Notices and observations from the lane's threads, for the event loop to record.
        self._pending: list[tuple[int | None, list[Change], list[Change], str, bool, float]] = []
        self._pending_lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._server: rpc.RpcServer | None = None
        self._observe: Observe | None = None
        self._senders = trio.CapacityLimiter(SEND_THREADS)
        # Counters (dfs_rpc_lane_*): written by the lane's threads, read at a scrape.
        self.answered_here = 0
        self.answered_on_loop = 0
        self.refused = 0

    @property
    def connections_open(self) -> int:
        return len(self._connections)

    # -- the event loop's side --------------------------------------------------------------------
    async def issue(self, ticket: bytes | None = None) -> dict[str, Any] | None:
        """``meta.lane()`` on another connection: where the lane is, and a ticket for it."""
        if ticket is not None:
            raise InvalidArgument("meta.lane: a ticket is shown on the lane's own socket")
        origin, caller = rpc.current_connection(), rpc.current_caller()
        if origin is None or caller is None or self._token is None:
            return None  # an in-process caller has no connection to stand for; not running yet
        ticket = secrets.token_bytes(16)
        now = time.monotonic()
        with self._tickets_lock:
            for old in [t for t, (_, _, expires) in self._tickets.items() if expires < now]:
                del self._tickets[old]
            while len(self._tickets) >= MAX_TICKETS:
                del self._tickets[next(iter(self._tickets))]
            self._tickets[ticket] = (origin, caller, now + TICKET_TTL_S)
        return {"socket": self.path, "ticket": ticket}

    async def run(
        self,
        listener: trio.SocketListener,
        server: rpc.RpcServer,
        observe: Observe | None = None,
        unix_group_gid: int | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the lane on ``listener`` until cancelled; ``server`` answers the calls sent to the
        event loop, ``observe(method, ok, seconds)`` is told of those answered in the lane; the
        members of ``unix_group_gid`` may connect besides root and the daemon's user."""
        self._server = server
        self._observe = observe
        self._unix_group_gid = unix_group_gid
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                await nursery.start(trio.serve_listeners, self._accept, [listener])
                task_status.started()
        finally:
            self._token = None
            self._nursery = None
            with self._connections_lock:
                connections = list(self._connections)
            for conn in connections:
                conn.shut()
            with trio.CancelScope(shield=True):
                for conn in connections:
                    if conn.thread is not None:
                        await trio.to_thread.run_sync(conn.thread.join, JOIN_TIMEOUT_S)

    async def _accept(self, stream: trio.SocketStream) -> None:
        # The socket leaves trio: its thread reads and writes it blocking.
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(True)
        try:
            caller = rpc.unix_caller(sock, own_uid=self._own_uid, group_gid=self._unix_group_gid)
            with self._connections_lock:
                if len(self._connections) >= MAX_CONNECTIONS:
                    raise NotPermitted(f"the metadata lane serves {MAX_CONNECTIONS} connections at most")
                conn = _Connection(sock, caller, threading.BoundedSemaphore(self._max_inflight))
                self._connections.add(conn)
        except NotPermitted as exc:
            self.refused += 1
            log.info("metadata lane refusing a connection: %s", exc.message)
            with sock:
                sock.settimeout(1.0)
                with contextlib.suppress(OSError):
                    sock.sendall(_joined(wire.encode_error_parts(0, exc)))
            return
        _set_send_timeout(sock, self._send_timeout_s)
        conn.thread = threading.Thread(
            target=self._serve, args=(conn,), name=f"dfs-lane-{next(_thread_ids)}", daemon=True
        )
        conn.thread.start()

    def _record_pending(self) -> None:
        """Event loop: the notices and observations the lane's threads left."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for origin, found, others, method, ok, seconds in pending:
            self._changes.record(others, None)
            self._changes.record(found, origin)
            if self._observe is not None:
                self._observe(method, ok, seconds)

    def _start_on_loop(self, conn: _Connection, req: wire.Request) -> None:
        nursery = self._nursery
        try:
            if nursery is None:
                raise RuntimeError("the lane stopped")
            nursery.start_soon(self._answer_on_loop, conn, req)
        except RuntimeError:  # the daemon is stopping: nobody to answer
            conn.slots.release()
            conn.shut()

    async def _answer_on_loop(self, conn: _Connection, req: wire.Request) -> None:
        assert self._server is not None and conn.origin is not None
        try:
            with rpc.serving(conn.origin, conn.caller):
                parts = await self._server.dispatch(req)
            await trio.to_thread.run_sync(self._send, conn, parts, limiter=self._senders)
        finally:
            conn.slots.release()

    # -- the lane's threads -----------------------------------------------------------------------
    def _serve(self, conn: _Connection) -> None:
        try:
            # Until the ticket: a small frame, soon (then reads wait as long as it takes).
            conn.sock.settimeout(ATTACH_TIMEOUT_S)
            decoder = wire.FrameDecoder(ATTACH_FRAME_BYTES)
            while data := conn.sock.recv(RECEIVE_BYTES):
                decoder.feed(data)
                while (event := decoder.next_event()) is not None:
                    if not isinstance(event, wire.Request):
                        raise ProtocolError("client sent a response")
                    if conn.origin is None:
                        self._attach(conn, event)
                        conn.sock.settimeout(None)
                        decoder.max_frame_bytes = self._max_frame_bytes
                    else:
                        self._handle(conn, event)
        except DfsError as exc:  # a malformed frame, or no ticket first: say why, then close
            if conn.origin is None:
                self.refused += 1
            log.info("metadata lane closing a connection: %s", exc.message)
            self._send(conn, wire.encode_error_parts(0, exc))
        except OSError:
            pass  # the peer went away, or the daemon is stopping
        except Exception:
            log.exception("metadata lane thread failed")
        finally:
            with self._connections_lock:
                self._connections.discard(conn)
            conn.shut()
            with conn.send_lock:  # not under a worker thread's write: its fd could be reused
                conn.sock.close()

    def _attach(self, conn: _Connection, req: wire.Request) -> None:
        ticket = req.args[0] if req.method == _LANE and len(req.args) == 1 else None
        with self._tickets_lock:
            found = self._tickets.pop(ticket, None) if type(ticket) is bytes else None
        if found is None or found[2] < time.monotonic():
            raise NotPermitted("the metadata lane's first call is meta.lane with a ticket from this daemon")
        # The rights of the connection the ticket came from, never more than that.
        conn.origin, conn.caller = found[0], found[1]
        self._send(conn, wire.encode_response_parts(req.msgid, True))

    def _handle(self, conn: _Connection, req: wire.Request) -> None:
        problem = "the metadata lane serves meta.once only" if req.method != _ONCE else None
        problem = problem or endpoints.META_ONCE.check_args(req.args)
        if problem is not None:
            self._send(conn, wire.encode_error_parts(req.msgid, InvalidArgument(problem)))
            return
        request_id, retried, method, args = req.args
        call = self._calls.get(method)
        if call is None or len(self._pending) >= MAX_PENDING or self._changes.others_listening(conn.origin):
            self._to_loop(conn, req)
            return
        started = time.perf_counter()
        found: list[Change] = []
        others: list[Change] = []
        try:
            check_once(request_id, method, args, conn.caller)
            result, found, others = self._metacalls.run_here(call, args, request_id, retried)
            if isinstance(result, outcome.Error) and isinstance(result.error, NotOnLane):
                self._to_loop(conn, req)
                return
            parts = wire.encode_response_parts(req.msgid, result.unwrap())
            ok = True
        except DfsError as exc:
            parts, ok = wire.encode_error_parts(req.msgid, exc), False
        except Exception as exc:
            log.exception("metadata lane call %r failed", method)
            err = InternalError(f"{method}: internal error ({type(exc).__name__})")
            parts, ok = wire.encode_error_parts(req.msgid, err), False
        self._send(conn, parts)
        self.answered_here += 1
        self._leave(conn.origin, found, others, method, ok, time.perf_counter() - started)

    def _to_loop(self, conn: _Connection, req: wire.Request) -> None:
        conn.slots.acquire()
        token = self._token
        if token is None:
            raise OSError("the daemon is stopping")
        self.answered_on_loop += 1
        try:
            token.run_sync_soon(self._start_on_loop, conn, req)
        except trio.RunFinishedError:
            raise OSError("the daemon stopped") from None

    def _leave(
        self, origin: int | None, found: list[Change], others: list[Change], method: str, ok: bool, s: float
    ) -> None:
        """For the event loop to record (one wake-up for all that piles up meanwhile)."""
        with self._pending_lock:
            first = not self._pending
            self._pending.append((origin, found, others, method, ok, s))
        token = self._token
        if first and token is not None:
            try:
                token.run_sync_soon(self._record_pending)
            except trio.RunFinishedError:
                pass

    def _send(self, conn: _Connection, parts: list[wire.Buffer]) -> None:
        """Write one frame (a lane thread, or a worker thread for the event loop's answers); a
        peer that does not take it within the send timeout loses the connection."""
        try:
            with conn.send_lock:
                conn.sock.sendall(_joined(parts))
        except OSError:
            conn.shut()


async def no_lane(ticket: bytes | None = None) -> None:
    """``meta.lane`` on a daemon that serves no lane (a secondary, or ``[rpc] metadata_lane``
    off): the caller goes on over its connection."""
    if ticket is not None:
        raise InvalidArgument("this daemon serves no metadata lane")


def _joined(parts: list[wire.Buffer]) -> bytes:
    return parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)


def _set_send_timeout(sock: socket.socket, timeout_s: float) -> None:
    """A blocking send gives up after ``timeout_s`` (reads still wait for as long as it takes)."""
    seconds = int(timeout_s)
    micros = int((timeout_s - seconds) * 1e6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros))
