"""Pure tests of the RPC framing in dfs.core.wire (no I/O)."""

from __future__ import annotations

import errno
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core import errors, wire
from dfs.core.errors import DfsError, FrameTooLarge, InvalidArgument, ProtocolError
from dfs.core.wire import FrameDecoder, Request, Response

# ----------------------------------------------------------------------------- helpers

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=100)
)
_keys = st.text(max_size=10) | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.binary(max_size=10)
msgpack_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=30,
)
msgids = st.integers(min_value=0, max_value=wire.MAX_MSGID)
methods = st.text(min_size=1, max_size=wire.MAX_METHOD_LEN)
error_classes = st.sampled_from(sorted(errors.BY_CODE.values(), key=lambda c: c.code))


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def packed(obj: object) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


def decode_all(data: bytes, max_frame_bytes: int = wire.MAX_FRAME_BYTES) -> list[Request | Response]:
    dec = FrameDecoder(max_frame_bytes)
    dec.feed(data)
    out: list[Request | Response] = []
    while (ev := dec.next_event()) is not None:
        out.append(ev)
    assert dec.buffered_bytes == 0
    return out


def decode_one(data: bytes) -> Request | Response:
    (ev,) = decode_all(data)
    return ev


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Request | Response]:
    dec = FrameDecoder()
    out: list[Request | Response] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        dec.feed(data[prev:cut])
        prev = cut
        while (ev := dec.next_event()) is not None:
            out.append(ev)
    assert dec.buffered_bytes == 0
    return out


def assert_same_error(got: DfsError | None, want: DfsError) -> None:
    assert type(got) is type(want)
    assert got is not None
    assert got.errno == want.errno
    assert got.message == want.message


# ----------------------------------------------------------------------------- round trips


@given(msgids, methods, st.lists(msgpack_values, max_size=6))
def test_request_round_trip(msgid: int, method: str, args: list[Any]) -> None:
    assert decode_one(wire.encode_request(msgid, method, args)) == Request(msgid, method, args)


@given(msgids, msgpack_values)
def test_response_round_trip(msgid: int, result: Any) -> None:
    assert decode_one(wire.encode_response(msgid, result)) == Response(msgid, None, result)


@given(msgids, error_classes, st.text(max_size=100))
def test_error_round_trip_keeps_class_and_errno(msgid: int, cls: type[DfsError], message: str) -> None:
    err = cls(message)
    ev = decode_one(wire.encode_error(msgid, err))
    assert isinstance(ev, Response)
    assert ev.msgid == msgid
    assert ev.result is None
    assert_same_error(ev.error, err)


def test_error_errno_override_and_unknown_code_survive() -> None:
    err = errors.NotSupported("odd", errno=errno.EXDEV)
    ev = decode_one(wire.encode_error(1, err))
    assert isinstance(ev, Response)
    assert_same_error(ev.error, err)
    # An error code this side does not know becomes a plain DfsError with the errno.
    ev = decode_one(packed([1, 2, ["FutureError", errno.EXDEV, "from the future"], None]))
    assert isinstance(ev, Response)
    assert type(ev.error) is DfsError
    assert ev.error.errno == errno.EXDEV


def test_error_message_with_surrogates_is_still_sendable() -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    ev = decode_one(wire.encode_error(3, errors.NotFound(f"no such file {name}")))
    assert isinstance(ev, Response)
    assert isinstance(ev.error, errors.NotFound)
    assert ev.error.message == "no such file caf\\udce9"


def test_tuple_args_are_accepted_and_arrive_as_list() -> None:
    assert decode_one(wire.encode_request(5, "m", (1, (2, 3)))) == Request(5, "m", [1, [2, 3]])


@given(
    st.lists(
        st.tuples(msgids, methods, st.lists(msgpack_values, max_size=3)) | st.tuples(msgids, msgpack_values),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
@settings(max_examples=200)
def test_stream_of_frames_in_random_splits(msgs: list[tuple[Any, ...]], cuts: list[int]) -> None:
    data = b""
    want: list[Request | Response] = []
    for m in msgs:
        if len(m) == 3:
            data += wire.encode_request(*m)
            want.append(Request(*m))
        else:
            data += wire.encode_response(*m)
            want.append(Response(m[0], None, m[1]))
    assert feed_in_pieces(data, [c % (len(data) + 1) for c in cuts]) == want


def test_byte_by_byte_feeding() -> None:
    blob = bytes(range(256)) * 300  # above LARGE_BUFFER_BYTES: exercises the parts path too
    data = wire.encode_request(7, "write", ["k", blob, 12]) + wire.encode_response(8, {"a": [1, 2]})
    dec = FrameDecoder()
    out: list[Request | Response] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        ev = dec.next_event()
        if ev is not None:
            out.append(ev)
            assert dec.next_event() is None
    assert out == [Request(7, "write", ["k", blob, 12]), Response(8, None, {"a": [1, 2]})]


# ----------------------------------------------------------------------------- large payloads


@pytest.mark.parametrize(
    "args",
    [
        [b"x" * wire.LARGE_BUFFER_BYTES],
        ["key", b"y" * 100_000, 42, None],
        [[b"z" * 70_000, True], b"small", bytearray(b"q" * 80_000)],
        [memoryview(b"m" * 90_000)],
        [memoryview(bytes(range(256)) * 400).cast("B", (400, 256))],
    ],
)
def test_large_buffers_use_uncopied_parts(args: list[Any]) -> None:
    parts = wire.encode_request_parts(9, "put", args)
    assert len(parts) > 1
    big = [p for p in parts if isinstance(p, memoryview)]
    assert big
    joined = wire.join_parts(parts)
    assert wire.parts_nbytes(parts) == len(joined)
    ev = decode_one(joined)
    assert isinstance(ev, Request)

    def normal(v: Any) -> Any:
        if isinstance(v, (bytearray, memoryview)):
            return bytes(v)
        if isinstance(v, list):
            return [normal(x) for x in v]
        return v

    assert ev.args == normal(args)
    # Parts path and plain msgpack agree byte for byte on the body framing.
    assert msgpack.unpackb(joined[4:], raw=False) == [0, 9, "put", normal(args)]


def test_large_result_part_is_the_callers_buffer() -> None:
    data = bytes(1 << 20)
    parts = wire.encode_response_parts(1, data)
    assert [type(p) for p in parts] == [bytearray, memoryview]
    view = parts[1]
    assert isinstance(view, memoryview)
    assert view.obj is data  # not copied
    assert decode_one(wire.join_parts(parts)) == Response(1, None, data)


def test_pieces_travel_as_one_bin_without_being_joined() -> None:
    chunks = [b"h" * 64, bytes(range(256)) * 4096, memoryview(b"t" * 70_000)]
    pieces = wire.Pieces(chunks)
    assert len(pieces) == sum(len(c) for c in chunks) and bytes(pieces) == b"".join(chunks)
    parts = wire.encode_request_parts(5, "chunk.put", [b"i" * 32, pieces])
    assert any(isinstance(p, memoryview) and p.obj is chunks[1] for p in parts)  # not copied
    ev = decode_one(wire.join_parts(parts))
    assert ev == Request(5, "chunk.put", [b"i" * 32, b"".join(chunks)])
    # Small pieces are still one bin, decoded as plain msgpack decodes it.
    small = wire.encode_request(6, "m", [wire.Pieces([b"a", b"bc"])])
    assert msgpack.unpackb(small[4:], raw=False) == [0, 6, "m", [b"abc"]]


def test_64mib_result_round_trip() -> None:
    data = b"\xab" * (64 * 1024 * 1024)
    frame_bytes = wire.encode_response(2, [data, True])
    ev = decode_one(frame_bytes)
    assert isinstance(ev, Response)
    assert ev.result[1] is True
    assert ev.result[0] == data


def test_eight_mib_frame_in_64k_pieces() -> None:
    data = wire.encode_request(1, "write", [bytes(8 * 1024 * 1024)])
    dec = FrameDecoder()
    step = 64 * 1024
    events = []
    for i in range(0, len(data), step):
        dec.feed(data[i : i + step])
        ev = dec.next_event()
        if ev is not None:
            events.append(ev)
        else:
            assert dec.buffered_bytes == min(i + step, len(data))
    assert len(events) == 1
    assert dec.buffered_bytes == 0


def test_many_small_frames_do_not_accumulate() -> None:
    one = wire.encode_response(1, "ok")
    dec = FrameDecoder()
    # Feed in chunks that always leave a partial frame behind, so the buffer is
    # never cleared outright and has to be compacted.
    data = one * 20_000
    for i in range(0, len(data), 1000):
        dec.feed(data[i : i + 1000])
        while dec.next_event() is not None:
            pass
    assert dec.buffered_bytes == 0


# ----------------------------------------------------------------------------- errors


def test_truncated_frame_stays_pending() -> None:
    data = wire.encode_request(1, "m", [b"abc"])
    dec = FrameDecoder()
    dec.feed(data[:-1])
    assert dec.next_event() is None
    assert dec.next_event() is None
    assert dec.buffered_bytes == len(data) - 1
    dec.feed(data[-1:])
    assert dec.next_event() == Request(1, "m", [b"abc"])


def test_partial_length_prefix_is_pending() -> None:
    dec = FrameDecoder()
    dec.feed(b"\x00\x00")
    assert dec.next_event() is None
    assert dec.buffered_bytes == 2


def test_oversized_length_rejected_before_body() -> None:
    dec = FrameDecoder(max_frame_bytes=1000)
    dec.feed(struct.pack(">I", 1001))  # only the prefix: no body has arrived
    with pytest.raises(FrameTooLarge):
        dec.next_event()


def test_frame_at_exact_limit_is_accepted() -> None:
    data = wire.encode_response(1, b"x" * 50)
    dec = FrameDecoder(max_frame_bytes=len(data) - 4)
    dec.feed(data)
    assert dec.next_event() == Response(1, None, b"x" * 50)


def test_default_limit_rejects_huge_prefix() -> None:
    dec = FrameDecoder()
    dec.feed(struct.pack(">I", wire.MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameTooLarge):
        dec.next_event()


@pytest.mark.parametrize(
    "body",
    [
        b"",  # empty body
        b"\xc1",  # never-used msgpack byte
        b"\x94\x00\x01",  # array cut short
        msgpack.packb([0, 1, "m", []]) + b"\x00",  # trailing bytes
        b"\x94\x00\x01\xa1m\x91\xc7\xff",  # broken ext header
        b"\x81\x90\x01",  # unhashable map key
        b"\x94\x00\x01\xa2\xff\xfe\x90",  # invalid UTF-8 in a str
        b"\x91" * 5000 + b"\x01",  # nesting deeper than the unpacker allows
    ],
)
def test_malformed_msgpack_is_protocol_error(body: bytes) -> None:
    dec = FrameDecoder()
    dec.feed(frame(body))
    with pytest.raises(ProtocolError):
        dec.next_event()


@pytest.mark.parametrize(
    "msg",
    [
        5,
        "text",
        {"a": 1},
        [],
        [0, 1, "m"],
        [0, 1, "m", [], "extra"],
        [2, 1, "m", []],  # unknown type
        [True, 1, "m", []],  # bool is not a type code
        [0.0, 1, "m", []],
        [0, -1, "m", []],  # msgid range
        [0, 2**63, "m", []],
        [0, True, "m", []],  # bool msgid
        [0, 1.5, "m", []],
        [0, "1", "m", []],
        [0, None, "m", []],
        [0, 1, "", []],  # empty method
        [0, 1, "x" * (wire.MAX_METHOD_LEN + 1), []],
        [0, 1, b"m", []],  # bytes method
        [0, 1, 7, []],
        [0, 1, "m", {"a": 1}],  # args not a list
        [0, 1, "m", None],
        [1, 1, "oops", None],  # error is not a list
        [1, 1, ["NotFound", 2], None],  # short error
        [1, 1, ["NotFound", "2", "msg"], None],
        [1, 1, ["NotFound", 2, b"msg"], None],
        [1, 1, [5, 2, "msg"], None],
        [1, 1, ["NotFound", True, "msg"], None],
        [1, -5, None, 1],
    ],
)
def test_wrong_shapes_are_protocol_errors(msg: object) -> None:
    dec = FrameDecoder()
    dec.feed(packed(msg))
    with pytest.raises(ProtocolError):
        dec.next_event()


def test_decoder_is_dead_after_an_error() -> None:
    dec = FrameDecoder()
    dec.feed(packed([9, 9, 9, 9]) + wire.encode_response(1, "fine"))
    with pytest.raises(ProtocolError):
        dec.next_event()
    with pytest.raises(ProtocolError):
        dec.next_event()
    with pytest.raises(ProtocolError):
        dec.feed(b"more")
    assert dec.dead


def test_decoder_is_dead_after_frame_too_large() -> None:
    dec = FrameDecoder(max_frame_bytes=10)
    dec.feed(struct.pack(">I", 11))
    with pytest.raises(FrameTooLarge):
        dec.next_event()
    with pytest.raises(ProtocolError) as info:
        dec.next_event()
    assert type(info.value) is ProtocolError


def test_bad_max_frame_bytes() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)


# ----------------------------------------------------------------------------- encoder checks


@pytest.mark.parametrize("msgid", [-1, 2**63, True, 1.0, "1"])
def test_encoder_rejects_bad_msgid(msgid: Any) -> None:
    with pytest.raises(InvalidArgument):
        wire.encode_request(msgid, "m", [])
    with pytest.raises(InvalidArgument):
        wire.encode_response(msgid, None)


@pytest.mark.parametrize("method", ["", "x" * (wire.MAX_METHOD_LEN + 1), b"m", None])
def test_encoder_rejects_bad_method(method: Any) -> None:
    with pytest.raises(InvalidArgument):
        wire.encode_request(1, method, [])


@pytest.mark.parametrize("value", [object(), 2**64, "\udcff", {1, 2}])
def test_encoder_rejects_unencodable_values(value: object) -> None:
    with pytest.raises(InvalidArgument):
        wire.encode_request(1, "m", [value])
    with pytest.raises(InvalidArgument):
        wire.encode_response(1, value)
    # Same check on the large-buffer path.
    with pytest.raises(InvalidArgument):
        wire.encode_request(1, "m", [bytes(wire.LARGE_BUFFER_BYTES), value])


def test_join_parts_single_bytes_is_not_copied() -> None:
    parts = wire.encode_response_parts(1, "ok")
    assert len(parts) == 1
    assert wire.join_parts(parts) is parts[0]
