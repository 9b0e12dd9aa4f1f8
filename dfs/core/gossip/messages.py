"""Gossip wire messages and their msgpack encoding (pure: bytes in, typed messages out).

Datagram (UDP), one msgpack array holding the protocol version and any number of messages,
each itself an array led by its type code::

    [VERSION, msg, msg, ...]

    ping      [1, seq, target_node_id]
    ack       [2, seq]
    ping_req  [3, seq, target_node_id, target_address]
    nack      [4, seq]
    alive     [5, node_id, incarnation, address, meta]
    suspect   [6, node_id, incarnation, from_node_id]
    dead      [7, node_id, incarnation, from_node_id]     (from == node_id: the node left)

Push-pull stream (TCP), the sender's full member table::

    [VERSION, kind, sender_node_id, [[node_id, address, incarnation, status, meta], ...]]

    kind 0 = request (the receiver merges it and answers with a reply), 1 = reply

Invariants:

* Messages are built whole before a datagram is assembled, so a datagram is the array header
  followed by already-encoded messages; :func:`encode_datagram` never re-encodes them and the
  caller can count bytes exactly (:data:`DATAGRAM_OVERHEAD_BYTES` covers the header).
* Decoding never trusts the peer: every field is type- and range-checked, node ids and addresses
  are bounded, meta must be a str-keyed dict whose packing fits ``max_meta_bytes``.  A broken
  envelope raises :class:`~dfs.core.errors.ProtocolError`; a broken message inside a good envelope is
  skipped and counted, so one bad piggybacked update cannot hide the good ones.  Trailing extra
  fields are ignored, which leaves room for later protocol versions to append fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from dfs.core.errors import InvalidArgument, ProtocolError
from dfs.core.gossip.member import Status

__all__ = [
    "DATAGRAM_OVERHEAD_BYTES",
    "MAX_ADDRESS_BYTES",
    "MAX_INCARNATION",
    "MAX_NODE_ID_BYTES",
    "MAX_SEQ",
    "PROTOCOL_VERSION",
    "Ack",
    "Alive",
    "Dead",
    "Message",
    "Nack",
    "Ping",
    "PingReq",
    "PushPull",
    "StateEntry",
    "Suspect",
    "check_address",
    "check_node_id",
    "decode_datagram",
    "decode_push_pull",
    "encode_datagram",
    "encode_message",
    "encode_push_pull",
    "pack_meta",
]

PROTOCOL_VERSION = 1
MAX_NODE_ID_BYTES = 128
#: host:port, where host may be a DNS name (253 bytes) or a bracketed IPv6 address.
MAX_ADDRESS_BYTES = 262
MAX_SEQ = 2**32 - 1
#: Incarnations saturate here (a refutation cannot go higher); msgpack's int64 range.
MAX_INCARNATION = 2**63 - 1
#: Upper bound on the bytes a datagram adds around its messages: array32 header + version.
DATAGRAM_OVERHEAD_BYTES = 6
#: The largest UDP payload; anything longer cannot have come off a UDP socket intact.
MAX_DATAGRAM_BYTES = 65_507

_PING, _ACK, _PING_REQ, _NACK, _ALIVE, _SUSPECT, _DEAD = 1, 2, 3, 4, 5, 6, 7
_STREAM_REQUEST, _STREAM_REPLY = 0, 1
_STATUS_CODES = {Status.ALIVE: 0, Status.SUSPECT: 1, Status.DEAD: 2, Status.LEFT: 3}
_STATUS_BY_CODE = {code: status for status, code in _STATUS_CODES.items()}


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you alive?  ``target`` names the member meant, so a stranger at a reused address stays quiet."""

    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Yes: the answer to a ping with the same ``seq`` (relayed unchanged by indirect probers)."""

    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """Please ping ``target`` at ``target_address`` for me and relay its ack (or send a nack)."""

    seq: int
    target: str
    target_address: str


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: I relayed your ping_req but the target did not answer me within probe_timeout.

    Hearing nacks tells a prober that the indirect path works, so a missing ack is the target's
    fault, not a sign that the prober itself is slow or cut off.
    """

    seq: int


@dataclass(frozen=True, slots=True)
class Alive:
    """``node`` is alive at ``incarnation``, reachable at ``address``, with ``meta``."""

    node: str
    incarnation: int
    address: str
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Suspect:
    """``source`` suspects ``node`` at ``incarnation``."""

    node: str
    incarnation: int
    source: str


@dataclass(frozen=True, slots=True)
class Dead:
    """``source`` declares ``node`` dead at ``incarnation``; ``source == node`` means it left."""

    node: str
    incarnation: int
    source: str


Message = Ping | Ack | PingReq | Nack | Alive | Suspect | Dead


@dataclass(frozen=True, slots=True)
class StateEntry:
    """One member's row in a push-pull exchange."""

    node_id: str
    address: str
    incarnation: int
    status: Status
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PushPull:
    """A full-state exchange: a request (answered with a reply) or the reply."""

    is_reply: bool
    sender: str
    entries: list[StateEntry]


# ---------------------------------------------------------------------------- encoding


def encode_message(msg: Message) -> bytes:
    """One message as msgpack, ready to be placed in a datagram."""
    body: list[Any]
    match msg:
        case Ping(seq, target):
            body = [_PING, seq, target]
        case Ack(seq):
            body = [_ACK, seq]
        case PingReq(seq, target, target_address):
            body = [_PING_REQ, seq, target, target_address]
        case Nack(seq):
            body = [_NACK, seq]
        case Alive(node, incarnation, address, meta):
            body = [_ALIVE, node, incarnation, address, meta]
        case Suspect(node, incarnation, source):
            body = [_SUSPECT, node, incarnation, source]
        case Dead(node, incarnation, source):
            body = [_DEAD, node, incarnation, source]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def encode_datagram(parts: Sequence[bytes]) -> bytes:
    """A datagram from messages already encoded by :func:`encode_message`."""
    packer = msgpack.Packer(use_bin_type=True)
    header: bytes = packer.pack_array_header(len(parts) + 1) + packer.pack(PROTOCOL_VERSION)
    return header + b"".join(parts)


def encode_push_pull(msg: PushPull) -> bytes:
    """A push-pull request or reply."""
    rows = [[e.node_id, e.address, e.incarnation, _STATUS_CODES[e.status], e.meta] for e in msg.entries]
    kind = _STREAM_REPLY if msg.is_reply else _STREAM_REQUEST
    packed: bytes = msgpack.packb([PROTOCOL_VERSION, kind, msg.sender, rows], use_bin_type=True)
    return packed


def pack_meta(meta: Mapping[str, Any], max_meta_bytes: int) -> bytes:
    """The local node's meta, packed; :class:`InvalidArgument` if it is not small, str-keyed msgpack."""
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
        raise InvalidArgument("gossip meta must be a dict with str keys")
    try:
        packed: bytes = msgpack.packb(dict(meta), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"gossip meta is not msgpack-able: {exc}") from None
    if len(packed) > max_meta_bytes:
        raise InvalidArgument(f"gossip meta packs to {len(packed)} bytes, over the {max_meta_bytes} limit")
    return packed


def check_node_id(value: object) -> str:
    """A local node id, or :class:`InvalidArgument`."""
    try:
        return _text(value, "node id", MAX_NODE_ID_BYTES)
    except ProtocolError as exc:
        raise InvalidArgument(exc.message) from None


def check_address(value: object) -> str:
    """A local gossip address (``host:port``), or :class:`InvalidArgument`."""
    try:
        return _text(value, "address", MAX_ADDRESS_BYTES)
    except ProtocolError as exc:
        raise InvalidArgument(exc.message) from None


# ---------------------------------------------------------------------------- decoding


def decode_datagram(data: bytes, *, max_meta_bytes: int) -> tuple[list[Message], int]:
    """The messages in a datagram and how many were malformed (skipped).

    Raises :class:`ProtocolError` when the envelope itself is unusable.
    """
    if len(data) > MAX_DATAGRAM_BYTES:
        raise ProtocolError("gossip datagram too large")
    body = _unpack(data)
    if not isinstance(body, list) or not body or type(body[0]) is not int or body[0] != PROTOCOL_VERSION:
        raise ProtocolError("not a gossip datagram of a known version")
    messages: list[Message] = []
    malformed = 0
    for raw in body[1:]:
        try:
            messages.append(_decode_message(raw, max_meta_bytes))
        except ProtocolError:
            malformed += 1
    return messages, malformed


def decode_push_pull(
    data: bytes, *, max_meta_bytes: int, max_members: int, max_stream_bytes: int
) -> tuple[PushPull, int]:
    """A push-pull message and how many of its rows were malformed (skipped)."""
    if len(data) > max_stream_bytes:
        raise ProtocolError("push-pull message too large")
    body = _unpack(data)
    if not (
        isinstance(body, list) and len(body) >= 4 and type(body[0]) is int and body[0] == PROTOCOL_VERSION
    ):
        raise ProtocolError("not a push-pull message of a known version")
    if type(body[1]) is not int or body[1] not in (_STREAM_REQUEST, _STREAM_REPLY):
        raise ProtocolError("unknown push-pull kind")
    sender = _text(body[2], "sender", MAX_NODE_ID_BYTES)
    rows = body[3]
    if not isinstance(rows, list) or len(rows) > max_members:
        raise ProtocolError("push-pull state is not a bounded list")
    entries: list[StateEntry] = []
    malformed = 0
    for row in rows:
        try:
            entries.append(_decode_entry(row, max_meta_bytes))
        except ProtocolError:
            malformed += 1
    return PushPull(is_reply=body[1] == _STREAM_REPLY, sender=sender, entries=entries), malformed


def _unpack(data: bytes) -> Any:
    # unpackb bounds every container and string by len(data), so garbage cannot make it allocate
    # more than the input suggests.
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        # ValueError covers ExtraData, FormatError, StackError, OutOfData and bad UTF-8;
        # TypeError an unhashable map key.
        raise ProtocolError(f"undecodable gossip message: {type(exc).__name__}") from None


def _decode_message(raw: object, max_meta_bytes: int) -> Message:
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
        raise ProtocolError("gossip message is not [type, ...]")
    kind = raw[0]
    if kind == _PING and len(raw) >= 3:
        return Ping(_seq(raw[1]), _text(raw[2], "target", MAX_NODE_ID_BYTES))
    if kind == _ACK and len(raw) >= 2:
        return Ack(_seq(raw[1]))
    if kind == _PING_REQ and len(raw) >= 4:
        target = _text(raw[2], "target", MAX_NODE_ID_BYTES)
        return PingReq(_seq(raw[1]), target, _text(raw[3], "address", MAX_ADDRESS_BYTES))
    if kind == _NACK and len(raw) >= 2:
        return Nack(_seq(raw[1]))
    if kind == _ALIVE and len(raw) >= 5:
        node = _text(raw[1], "node id", MAX_NODE_ID_BYTES)
        address = _text(raw[3], "address", MAX_ADDRESS_BYTES)
        return Alive(node, _incarnation(raw[2]), address, _meta(raw[4], max_meta_bytes))
    if kind in (_SUSPECT, _DEAD) and len(raw) >= 4:
        node = _text(raw[1], "node id", MAX_NODE_ID_BYTES)
        source = _text(raw[3], "source", MAX_NODE_ID_BYTES)
        cls = Suspect if kind == _SUSPECT else Dead
        return cls(node, _incarnation(raw[2]), source)
    raise ProtocolError(f"unknown or short gossip message type {kind}")


def _decode_entry(row: object, max_meta_bytes: int) -> StateEntry:
    if not isinstance(row, list) or len(row) < 5:
        raise ProtocolError("push-pull row is not [node, address, incarnation, status, meta]")
    code = row[3]
    if type(code) is not int or code not in _STATUS_BY_CODE:
        raise ProtocolError("unknown member status")
    return StateEntry(
        node_id=_text(row[0], "node id", MAX_NODE_ID_BYTES),
        address=_text(row[1], "address", MAX_ADDRESS_BYTES),
        incarnation=_incarnation(row[2]),
        status=_STATUS_BY_CODE[code],
        meta=_meta(row[4], max_meta_bytes),
    )


def _text(value: object, what: str, max_bytes: int) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"gossip {what} must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError(f"gossip {what} is not valid UTF-8") from None
    if size > max_bytes:
        raise ProtocolError(f"gossip {what} longer than {max_bytes} bytes")
    return value


def _seq(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise ProtocolError("gossip sequence number out of range")
    return value


def _incarnation(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INCARNATION:
        raise ProtocolError("gossip incarnation out of range")
    return value


def _meta(value: object, max_meta_bytes: int) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError("gossip meta must be a dict with str keys")
    try:
        size = len(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError("gossip meta cannot be re-encoded") from None
    if size > max_meta_bytes:
        raise ProtocolError("gossip meta over the size limit")
    return value
