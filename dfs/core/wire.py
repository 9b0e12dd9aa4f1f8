"""RPC framing for dfs: pure bytes-in / events-out, no I/O (in the style of h11).

Frame layout::

    +-------------------+------------------------------------------+
    | u32 big-endian N  | N bytes of msgpack (use_bin_type=True)   |
    +-------------------+------------------------------------------+

Body shapes::

    request   [0, msgid:int, method:str, args:list]
    response  [1, msgid:int, error:[code, errno, message] | None, result:any]

Invariants:

* ``msgid`` is an ``int`` (never ``bool``) in ``0 <= msgid < 2**63``.  ``0`` is
  reserved for connection-level errors sent by a server about a frame it could
  not even parse; clients number their calls from 1.
* ``method`` is a non-empty ``str`` of at most :data:`MAX_METHOD_LEN` characters.
* A :class:`FrameDecoder` never buffers the body of a frame whose length prefix
  exceeds its limit: :class:`~dfs.core.errors.FrameTooLarge` is raised as soon as the
  four prefix bytes are known.  After any error the decoder is dead and every
  later call raises :class:`~dfs.core.errors.ProtocolError`; the caller must drop the
  connection, because the byte stream can no longer be trusted.
* Encoders never copy a large ``bytes``-like payload more than once, and the
  ``*_parts`` variants do not copy it at all: a top-level (or shallowly nested)
  buffer of at least :data:`LARGE_BUFFER_BYTES` is emitted as its own part
  behind a hand-written msgpack ``bin32`` header, so a transport can send it
  straight from the caller's memory.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from dfs.core import errors
from dfs.core.errors import DfsError, FrameTooLarge, InvalidArgument, ProtocolError

__all__ = [
    "LARGE_BUFFER_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_METHOD_LEN",
    "MAX_MSGID",
    "REQUEST",
    "RESPONSE",
    "Buffer",
    "FrameDecoder",
    "Pieces",
    "Request",
    "Response",
    "encode_error",
    "encode_error_parts",
    "encode_request",
    "encode_request_parts",
    "encode_response",
    "encode_response_parts",
    "join_parts",
    "parts_nbytes",
]

#: Default frame-body limit: a 64 MiB block plus generous room for its header.
MAX_FRAME_BYTES = 72 * 1024 * 1024
#: Buffers at least this large are sent as their own part instead of being copied.
LARGE_BUFFER_BYTES = 64 * 1024
MAX_METHOD_LEN = 200
MAX_MSGID = 2**63 - 1
REQUEST = 0
RESPONSE = 1

#: The length prefix can describe at most this many body bytes.
_MAX_ENCODABLE = 0xFFFFFFFF
_PREFIX = struct.Struct(">I")
_PREFIX_LEN = _PREFIX.size
#: Only short sequences are scanned for large buffers: big blobs travel in small
#: argument tuples, while long lists (directory listings) never hold them and
#: scanning them would cost a Python-level loop per element.
_SCAN_MAX_ITEMS = 16
_SCAN_MAX_DEPTH = 2
#: Compact the decoder buffer once the consumed prefix is at least this large
#: and at least half of the buffer, so each byte is moved O(1) times overall.
_COMPACT_MIN = 64 * 1024

Buffer = bytes | bytearray | memoryview


class Request(NamedTuple):
    msgid: int
    method: str
    args: list[Any]


class Response(NamedTuple):
    msgid: int
    error: DfsError | None
    result: Any


# --------------------------------------------------------------------------- encoding


def _packb(obj: object) -> bytes:
    try:
        out: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # ValueError covers UnicodeEncodeError (lone surrogates) and deep nesting.
        raise InvalidArgument(f"value cannot be encoded: {exc}") from exc
    return out


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class Pieces:
    """One binary value given as several buffers: the encoder sends them back to back behind a
    single ``bin32`` header and never joins them; the receiver decodes one ``bytes``.

    What a chunk encoder makes of a writer's pieces (header, then the kernel's write buffers),
    so a block travels to the daemon without being copied into one string first.
    """

    __slots__ = ("nbytes", "views")

    def __init__(self, buffers: Sequence[Buffer]) -> None:
        self.views = tuple(_flat(b) for b in buffers)
        self.nbytes = sum(v.nbytes for v in self.views)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.views)


def _flat(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _large_buffer(obj: object) -> memoryview | None:
    """Return a flat byte view of *obj* if it should travel uncopied, else None."""
    if isinstance(obj, (bytes, bytearray)):
        return memoryview(obj) if len(obj) >= LARGE_BUFFER_BYTES else None
    if isinstance(obj, memoryview) and obj.nbytes >= LARGE_BUFFER_BYTES and obj.c_contiguous:
        return _flat(obj)
    return None


def _has_large(obj: object, depth: int) -> bool:
    # A plain loop, not any(genexpr): this runs for every message, so the
    # common small case must stay cheap.
    if isinstance(obj, (bytes, bytearray)):
        return len(obj) >= LARGE_BUFFER_BYTES
    if isinstance(obj, Pieces):
        return True
    if isinstance(obj, memoryview):
        return _large_buffer(obj) is not None
    if isinstance(obj, (list, tuple)) and depth < _SCAN_MAX_DEPTH and len(obj) <= _SCAN_MAX_ITEMS:
        for item in obj:
            if _has_large(item, depth + 1):
                return True
    return False


class _PartsBuilder:
    """Accumulates a frame as small packed runs interleaved with large buffers."""

    def __init__(self) -> None:
        self.parts: list[Buffer] = []
        # Reserve the length prefix in the first run; filled in by finish().
        self.run = bytearray(_PREFIX_LEN)

    def add(self, obj: object, depth: int) -> None:
        big = _large_buffer(obj)
        if big is not None:
            self._add_large((big,), big.nbytes)
        elif isinstance(obj, Pieces):
            self._add_large(obj.views, obj.nbytes)
        elif isinstance(obj, (list, tuple)) and depth < _SCAN_MAX_DEPTH and _has_large(obj, depth):
            self.run += _array_header(len(obj))
            for item in obj:
                self.add(item, depth + 1)
        else:
            self.run += _packb(obj)

    def _add_large(self, views: Sequence[memoryview], nbytes: int) -> None:
        """One ``bin32`` whose bytes are ``views``, back to back, each its own part."""
        if nbytes > _MAX_ENCODABLE:
            raise FrameTooLarge(f"buffer of {nbytes} bytes cannot be framed")
        self.run += b"\xc6" + nbytes.to_bytes(4, "big")
        self.parts.append(self.run)
        self.parts.extend(views)
        self.run = bytearray()

    def finish(self) -> list[Buffer]:
        if self.run:
            self.parts.append(self.run)
        body_len = parts_nbytes(self.parts) - _PREFIX_LEN
        _check_encodable(body_len)
        first = self.parts[0]
        assert isinstance(first, bytearray)
        _PREFIX.pack_into(first, 0, body_len)
        return self.parts


def _check_encodable(body_len: int) -> None:
    if body_len > _MAX_ENCODABLE:
        raise FrameTooLarge(f"frame body of {body_len} bytes exceeds the 4 GiB framing limit")


def _frame(kind: int, msgid: int, third: object, payload: object) -> list[Buffer]:
    """Encode ``[kind, msgid, third, payload]`` as parts (fast path: one part).

    Only *payload* (args or result) can hold large buffers.
    """
    if not _has_large(payload, 1):
        body = _packb([kind, msgid, third, payload])
        _check_encodable(len(body))
        return [_PREFIX.pack(len(body)) + body]
    builder = _PartsBuilder()
    builder.run += _array_header(4) + _packb(kind) + _packb(msgid) + _packb(third)
    builder.add(payload, 1)
    return builder.finish()


def _check_msgid(msgid: int) -> None:
    if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
        raise InvalidArgument(f"msgid must be an int in 0..2**63-1, got {msgid!r:.50}")


def _check_method(method: str) -> None:
    if type(method) is not str or not method or len(method) > MAX_METHOD_LEN:
        raise InvalidArgument(f"method must be a non-empty str of <= {MAX_METHOD_LEN} chars")


def parts_nbytes(parts: list[Buffer]) -> int:
    """Total size of an encoded frame (length prefix included)."""
    return sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)


def join_parts(parts: list[Buffer]) -> bytes:
    """Concatenate encoder parts into one ``bytes`` (a single copy)."""
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return parts[0]
    return b"".join(parts)


def encode_request_parts(msgid: int, method: str, args: list[Any] | tuple[Any, ...]) -> list[Buffer]:
    """Encode a request as buffers to send back to back; large payloads are not copied.

    Raises :class:`InvalidArgument` for a bad msgid/method or unencodable args,
    :class:`FrameTooLarge` if the frame cannot be described by the length prefix.
    """
    _check_msgid(msgid)
    _check_method(method)
    return _frame(REQUEST, msgid, method, list(args))


def encode_response_parts(msgid: int, result: Any) -> list[Buffer]:
    _check_msgid(msgid)
    return _frame(RESPONSE, msgid, None, result)


def encode_error_parts(msgid: int, err: DfsError) -> list[Buffer]:
    _check_msgid(msgid)
    code, errno, message = err.to_wire()
    if isinstance(message, str) and not message.isascii():
        # Messages often embed file names decoded with surrogateescape; lone
        # surrogates are not valid UTF-8, and an error must always be sendable.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return _frame(RESPONSE, msgid, [code, errno, message], None)


def encode_request(msgid: int, method: str, args: list[Any] | tuple[Any, ...]) -> bytes:
    return join_parts(encode_request_parts(msgid, method, args))


def encode_response(msgid: int, result: Any) -> bytes:
    return join_parts(encode_response_parts(msgid, result))


def encode_error(msgid: int, err: DfsError) -> bytes:
    return join_parts(encode_error_parts(msgid, err))


# --------------------------------------------------------------------------- decoding


def _valid_msgid(msgid: object) -> bool:
    return type(msgid) is int and 0 <= msgid <= MAX_MSGID


def _valid_error(err: object) -> bool:
    return (
        isinstance(err, list)
        and len(err) == 3
        and type(err[0]) is str
        and type(err[1]) is int
        and type(err[2]) is str
    )


def _to_event(msg: object) -> Request | Response:
    """Validate a decoded body and turn it into an event, or raise ProtocolError."""
    if not isinstance(msg, list) or len(msg) != 4:
        raise ProtocolError("message is not a 4-element array")
    kind, msgid, third, fourth = msg
    if not _valid_msgid(msgid):
        raise ProtocolError(f"bad msgid {msgid!r:.50}")
    if type(kind) is int and kind == REQUEST:
        if type(third) is not str or not third or len(third) > MAX_METHOD_LEN:
            raise ProtocolError(f"bad method name {third!r:.50}")
        if not isinstance(fourth, list):
            raise ProtocolError("request args is not an array")
        return Request(msgid, third, fourth)
    if type(kind) is int and kind == RESPONSE:
        if third is None:
            return Response(msgid, None, fourth)
        if not _valid_error(third):
            raise ProtocolError(f"malformed error {third!r:.100}")
        return Response(msgid, errors.from_wire(third), None)
    raise ProtocolError(f"unknown message type {kind!r:.50}")


def _unpack(body: memoryview) -> object:
    limit = len(body)
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=False,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=limit,
        )
    except Exception as exc:  # noqa: BLE001 - any failure on peer bytes is a protocol error
        raise ProtocolError(f"undecodable frame body: {type(exc).__name__}: {exc}") from exc


class FrameDecoder:
    """Incremental frame parser: :meth:`feed` bytes, then drain :meth:`next_event`.

    Buffering: one ``bytearray`` plus a read offset.  Consumed bytes are dropped
    lazily (when the consumed prefix dominates the buffer), so many small frames
    cost O(total bytes) and a large frame fed in pieces is appended, never
    re-copied per piece.  Bodies are decoded from a ``memoryview`` slice, so the
    only copy of a large payload is msgpack materialising the result ``bytes``.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0
        self._dead: str | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as events (a partial frame)."""
        return len(self._buf) - self._pos

    @property
    def dead(self) -> bool:
        return self._dead is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._check_alive()
        self._buf += data

    def next_event(self) -> Request | Response | None:
        """Return the next complete message, or None if more bytes are needed."""
        self._check_alive()
        try:
            return self._next_event()
        except DfsError as exc:
            self._dead = exc.message
            self._buf = bytearray()
            self._pos = 0
            raise

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise ProtocolError(f"decoder is unusable after an earlier error: {self._dead}")

    def _next_event(self) -> Request | Response | None:
        avail = len(self._buf) - self._pos
        if avail < _PREFIX_LEN:
            return None
        (body_len,) = _PREFIX.unpack_from(self._buf, self._pos)
        if body_len > self.max_frame_bytes:
            raise FrameTooLarge(f"frame of {body_len} bytes exceeds limit of {self.max_frame_bytes}")
        if avail < _PREFIX_LEN + body_len:
            return None
        start = self._pos + _PREFIX_LEN
        end = start + body_len
        # The views must be released before the bytearray is resized again.
        with memoryview(self._buf) as view, view[start:end] as body:
            msg = _unpack(body)
        self._pos = end
        self._maybe_compact()
        return _to_event(msg)

    def _maybe_compact(self) -> None:
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos >= _COMPACT_MIN and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
