"""A trio stream over a plain socket that skips the scheduler when the kernel is ready.

trio's :class:`trio.SocketStream` yields to the scheduler after every send and
receive that succeeded at once (so a task that never blocks cannot starve the
others), and tries every receive first only to catch ``BlockingIOError``.  An
RPC round trip makes four such calls, and on the 2-core machines this project
is measured on each yield is a full pass of the run loop: together they were
about a third of the cost of a metadata call.  :class:`DirectSocketStream`
sends and receives with ``os.write``/``os.read`` on the socket's descriptor,
waits with :func:`trio.lowlevel.wait_writable`/:func:`~trio.lowlevel.wait_readable`
only when the kernel is not ready, and yields after :data:`YIELD_EVERY`
consecutive calls that did not wait or :data:`YIELD_BYTES` moved by them, so the
fairness trio's own streams give is kept for a peer that keeps the socket full.

Only plain sockets are wrapped (TLS streams keep trio's path): :func:`direct`.
The descriptor is read from the socket at each call, never kept, so a socket
closed by another task is seen as closed rather than its number reused.
"""

from __future__ import annotations

import errno
import os

import trio

#: Calls that succeeded without waiting before one yields to the scheduler anyway...
YIELD_EVERY = 16
#: ...or bytes moved by such calls: a reader flooded with pipelined requests yields after each
#: large receive, as trio's own streams do after every one (the work those bytes bring is bounded).
YIELD_BYTES = 64 * 1024

_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def direct(stream: trio.abc.Stream) -> trio.abc.Stream:
    """``stream`` as a :class:`DirectSocketStream` when it is a plain socket, else itself."""
    if type(stream) is trio.SocketStream:
        return DirectSocketStream(stream)
    return stream


class DirectSocketStream(trio.abc.HalfCloseableStream):
    """A :class:`trio.SocketStream` whose sends and receives yield only when they must wait.

    One task may send and one may receive at a time (the RPC connection's writer
    and reader); closing and half-closing go through the wrapped stream.
    """

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.socket = inner.socket
        self._unyielded = 0
        self._unyielded_bytes = 0

    def _fd(self) -> int:
        fd = self.socket.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("the socket was closed")
        return fd

    async def _fair(self, nbytes: int) -> None:
        self._unyielded += 1
        self._unyielded_bytes += nbytes
        if self._unyielded >= YIELD_EVERY or self._unyielded_bytes >= YIELD_BYTES:
            self._waited()
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _waited(self) -> None:
        self._unyielded = 0
        self._unyielded_bytes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        total = view.nbytes
        sent = 0
        waited = False
        while sent < total:
            fd = self._fd()
            try:
                sent += os.write(fd, view[sent:] if sent else view)
            except BlockingIOError:
                waited = True
                await trio.lowlevel.wait_writable(fd)
            except OSError as exc:
                raise self._error(exc) from exc
        if waited:
            self._waited()
        else:
            await self._fair(total)

    def write_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the kernel takes of ``data`` now, without waiting: the bytes written
        (0 when its buffer is full)."""
        try:
            return os.write(self._fd(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self._error(exc) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = 65536
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            fd = self._fd()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                self._waited()
                continue
            except OSError as exc:
                raise self._error(exc) from exc
            await self._fair(len(data))
            return data

    def _error(self, exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
        if exc.errno in _CLOSED_ERRNOS or self.socket.fileno() == -1:
            return trio.ClosedResourceError("the socket was closed")
        return trio.BrokenResourceError(f"socket connection broken: {exc}")

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()
