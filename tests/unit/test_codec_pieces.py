"""dfs.core.codec on a chunk's plaintext in pieces (a mount's block as the writes that made it):
the same id and the same blob as the whole, for every way of cutting it."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core import codec

KEY = b"c" * 32
CIPHER = b"e" * 32

# Incompressible, compressible and mixed plaintexts, on both sides of the 64 KiB sample.
plaintexts = st.one_of(
    st.binary(max_size=300),
    st.integers(0, 200_000).map(os.urandom),
    st.integers(0, 200_000).map(bytes),
    st.tuples(st.integers(0, 70_000), st.integers(0, 70_000)).map(lambda t: os.urandom(t[0]) + bytes(t[1])),
)


def cut(data: bytes, points: list[int]) -> list[bytes | memoryview]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    view = memoryview(data)
    return [view[a:b] if i % 2 else data[a:b] for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))]


@settings(max_examples=60, deadline=None)
@given(
    data=plaintexts, points=st.lists(st.integers(0, 1 << 20), max_size=6), level=st.sampled_from([0, 1, 3])
)
def test_pieces_encode_and_hash_like_the_whole(data: bytes, points: list[int], level: int) -> None:
    pieces = cut(data, points)
    assert b"".join(pieces) == data
    assert codec.plain_length(pieces) == len(data)
    assert codec.chunk_id(KEY, pieces) == codec.chunk_id(KEY, data)
    blob = codec.encode(pieces, level=level)
    assert blob == codec.encode(data, level=level)
    assert codec.decode(blob) == data


@settings(max_examples=20, deadline=None)
@given(data=plaintexts, points=st.lists(st.integers(0, 1 << 20), max_size=4))
def test_encrypted_pieces_round_trip(data: bytes, points: list[int]) -> None:
    blob = codec.encode(cut(data, points), level=1, cipher_key=CIPHER, key_id=7)
    assert codec.header_info(blob).key_id == 7
    assert codec.decode(blob, cipher_key=CIPHER) == data


def test_a_four_mib_block_in_one_mib_writes() -> None:
    data = os.urandom(4 << 20)
    writes = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    blob = codec.encode(writes, level=1)
    assert codec.header_info(blob).codec == codec.CODEC_RAW  # incompressible: stored raw
    assert blob == codec.encode(data, level=1)
    assert codec.chunk_id(KEY, writes) == codec.chunk_id(KEY, data)


@settings(max_examples=40, deadline=None)
@given(
    data=plaintexts,
    points=st.lists(st.integers(0, 1 << 20), max_size=6),
    level=st.sampled_from([0, 1, 3]),
    encrypted=st.booleans(),
)
def test_encode_parts_are_the_blob_unjoined(
    data: bytes, points: list[int], level: int, encrypted: bool
) -> None:
    pieces = cut(data, points)
    key = CIPHER if encrypted else None
    parts = codec.encode_parts(pieces, level=level, cipher_key=key, key_id=3 if encrypted else 0)
    blob = b"".join(parts)
    if encrypted:  # a fresh nonce each time: compare what it decodes to
        assert codec.decode(blob, cipher_key=CIPHER) == data
    else:
        assert blob == codec.encode(data, level=level)


def test_raw_parts_are_the_writers_own_buffers() -> None:
    writes = [os.urandom(1 << 20) for _ in range(4)]
    parts = codec.encode_parts(writes, level=1)
    assert len(parts) == 5 and len(parts[0]) == codec.HEADER_SIZE
    assert [memoryview(p).obj for p in parts[1:]] == writes  # not copied
