"""dfs.core.codec: round trips, the compression decision, encryption, and corruption detection."""

from __future__ import annotations

import os
import struct
import threading

import blake3
import pytest
import xxhash
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core import codec
from dfs.core.codec import (
    CODEC_RAW,
    CODEC_ZSTD,
    FORMAT_VERSION,
    HEADER_FORMAT,
    HEADER_SIZE,
    MAGIC,
    ChunkHeader,
    decode,
    decode_parts,
    encode,
    header_info,
    verify,
)
from dfs.core.errors import CorruptChunk, InvalidArgument

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
TEXT = b"".join(b"line %d of a fairly repetitive log file\n" % i for i in range(2000))


def _blob(
    payload: bytes,
    *,
    magic: bytes = MAGIC,
    version: int = FORMAT_VERSION,
    codec_id: int = CODEC_RAW,
    flags: int = 0,
    reserved: int = 0,
    key_id: int = 0,
    nonce: bytes = bytes(12),
    plain_len: int | None = None,
    payload_len: int | None = None,
) -> bytes:
    """A hand-made blob whose checksum is right, so other checks are exercised."""
    header = struct.pack(
        HEADER_FORMAT,
        magic,
        version,
        codec_id,
        flags,
        reserved,
        key_id,
        nonce,
        len(payload) if plain_len is None else plain_len,
        len(payload) if payload_len is None else payload_len,
        xxhash.xxh3_64_intdigest(payload),
    )
    return header + payload


def _rejected(blob: bytes, cipher_key: bytes | None = None) -> bool:
    """Whether every way of reading ``blob`` refuses it (verify, decode, and decode_parts of
    the blob split as a mount reads a local chunk file); a disagreement fails the test."""
    refused = []
    for check in (
        lambda: verify(blob),
        lambda: decode(blob, cipher_key=cipher_key),
        lambda: decode_parts(blob[:HEADER_SIZE], blob[HEADER_SIZE:], cipher_key=cipher_key),
    ):
        try:
            check()
            refused.append(False)
        except CorruptChunk:
            refused.append(True)
    if refused[0]:
        assert all(refused), f"verify refused what a decode accepted: {refused}"
    return refused[1] and refused[2]


@pytest.mark.parametrize(
    ("data", "cipher_key", "level"),
    [
        (os.urandom(100_000), None, 1),  # raw
        (TEXT, None, 1),  # zstd
        (TEXT, KEY, 1),  # zstd + encrypted
        (os.urandom(1000), KEY, 1),  # raw + encrypted
        (b"", None, 1),
    ],
)
def test_decode_parts_matches_decode(data: bytes, cipher_key: bytes | None, level: int) -> None:
    blob = encode(data, level=level, cipher_key=cipher_key, key_id=3 if cipher_key else 0)
    head, payload = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    assert decode_parts(head, payload, cipher_key=cipher_key) == decode(blob, cipher_key=cipher_key) == data


def test_decode_parts_hands_a_raw_payload_back_uncopied() -> None:
    blob = encode(os.urandom(4 << 20))
    assert header_info(blob).codec == CODEC_RAW
    payload = blob[HEADER_SIZE:]
    assert decode_parts(blob[:HEADER_SIZE], payload) is payload


def test_decode_parts_refuses_a_short_header() -> None:
    blob = encode(b"x" * 100)
    with pytest.raises(CorruptChunk, match="header of 37 bytes"):
        decode_parts(blob[: HEADER_SIZE - 1], blob[HEADER_SIZE - 1 :])


# -- chunk ids -------------------------------------------------------------------
def test_chunk_id_is_keyed_blake3() -> None:
    cid = codec.chunk_id(KEY, b"hello")
    assert cid == blake3.blake3(b"hello", key=KEY).digest()
    assert len(cid) == codec.ID_SIZE
    assert codec.chunk_id(OTHER_KEY, b"hello") != cid
    assert codec.chunk_id(KEY, b"hello!") != cid


# -- round trips -----------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=20_000), level=st.integers(min_value=-3, max_value=25))
def test_round_trip_random(data: bytes, level: int) -> None:
    blob = encode(data, level=level)
    verify(blob)
    assert decode(blob) == data
    h = header_info(blob)
    assert h.plain_len == len(data)
    assert h.payload_len == len(blob) - HEADER_SIZE
    assert len(blob) <= HEADER_SIZE + len(data)  # never larger than raw


@settings(max_examples=100, deadline=None)
@given(
    piece=st.binary(min_size=1, max_size=64),
    repeat=st.integers(min_value=1, max_value=3000),
    level=st.integers(min_value=1, max_value=9),
    encrypt=st.booleans(),
    key_id=st.integers(min_value=0, max_value=0xFFFF),
)
def test_round_trip_compressible(piece: bytes, repeat: int, level: int, encrypt: bool, key_id: int) -> None:
    data = piece * repeat
    cipher_key = KEY if encrypt else None
    blob = encode(data, level=level, cipher_key=cipher_key, key_id=key_id)
    assert decode(blob, cipher_key=cipher_key) == data
    h = header_info(blob)
    assert h.encrypted == encrypt
    assert h.key_id == (key_id if encrypt else 0)


@pytest.mark.parametrize("size", [0, 1, 100, 65_536, 65_537, 1 << 20])
def test_incompressible_is_stored_raw(size: int) -> None:
    data = os.urandom(size)
    blob = encode(data)
    h = header_info(blob)
    assert h.codec == CODEC_RAW
    assert len(blob) == HEADER_SIZE + size
    assert blob[HEADER_SIZE:] == data
    assert decode(blob) == data


def test_compressible_is_compressed() -> None:
    blob = encode(TEXT)
    h = header_info(blob)
    assert h.codec == CODEC_ZSTD
    assert len(blob) < len(TEXT) // 4
    assert decode(blob) == TEXT


def test_zeros_compress_hugely() -> None:
    data = bytes(4 << 20)
    blob = encode(data)
    assert header_info(blob).codec == CODEC_ZSTD
    assert len(blob) < 4096
    assert decode(blob) == data


def test_level_zero_never_compresses() -> None:
    for level in (0, -1):
        blob = encode(TEXT, level=level)
        assert header_info(blob).codec == CODEC_RAW
        assert decode(blob) == TEXT


def test_small_gain_is_not_worth_it() -> None:
    # The sample (first 64 KiB) compresses, but the whole block saves < 1/32.
    data = bytes(16 * 1024) + os.urandom((1 << 20) - 16 * 1024)
    blob = encode(data)
    assert header_info(blob).codec == CODEC_RAW
    assert decode(blob) == data


def test_incompressible_sample_skips_compression() -> None:
    # Documented trade-off: a random first 64 KiB means the block is stored raw.
    data = os.urandom(64 * 1024) + bytes(1 << 20)
    blob = encode(data)
    assert header_info(blob).codec == CODEC_RAW
    assert decode(blob) == data


def test_accepts_buffers() -> None:
    assert decode(encode(memoryview(TEXT))) == TEXT
    assert decode(encode(bytearray(TEXT))) == TEXT
    raw = os.urandom(1000)
    assert decode(memoryview(encode(memoryview(raw)))) == raw
    words = memoryview(raw).cast("I")  # len() counts items, not bytes
    assert decode(encode(words)) == raw
    assert decode(memoryview(encode(raw)).cast("H")) == raw  # 1038 bytes


def test_threads_share_nothing() -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(50):
                data = (b"%d-%d " % (seed, i)) * (100 + i * 37)
                for level in (1, 3):
                    assert decode(encode(data, level=level, cipher_key=KEY), cipher_key=KEY) == data
                    assert decode(encode(data, level=level)) == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# -- encryption --------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"x", TEXT, os.urandom(100_000)])
def test_encryption_round_trip(data: bytes) -> None:
    blob = encode(data, cipher_key=KEY, key_id=7)
    h = header_info(blob)
    assert h.encrypted
    assert h.key_id == 7
    assert h.nonce != bytes(12)
    if len(data) >= 16:  # a shorter plaintext may occur in random ciphertext by chance
        assert data not in blob[HEADER_SIZE:]
    verify(blob)  # checking does not need the key
    assert decode(blob, cipher_key=KEY) == data


def test_encryption_uses_fresh_nonces() -> None:
    a = encode(TEXT, cipher_key=KEY)
    b = encode(TEXT, cipher_key=KEY)
    assert a != b
    assert header_info(a).nonce != header_info(b).nonce


def test_wrong_key_is_corrupt() -> None:
    blob = encode(TEXT, cipher_key=KEY)
    with pytest.raises(CorruptChunk, match="authentication"):
        decode(blob, cipher_key=OTHER_KEY)


def test_encrypted_without_key_is_corrupt() -> None:
    blob = encode(b"secret", cipher_key=KEY, key_id=3)
    with pytest.raises(CorruptChunk, match="encrypted"):
        decode(blob)


def test_bad_key_and_key_id_rejected() -> None:
    with pytest.raises(InvalidArgument):
        encode(b"x", cipher_key=b"short")
    with pytest.raises(InvalidArgument):
        encode(b"x", cipher_key=KEY, key_id=1 << 16)


def test_plain_chunk_decodes_with_a_key() -> None:
    # Chunks written before encryption was enabled stay readable.
    assert decode(encode(TEXT), cipher_key=KEY) == TEXT


# -- corruption ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "cipher_key"),
    [
        (b"abcdefgh" * 40, None),  # zstd
        (bytes(range(200)), None),  # raw
        (b"", None),
        (b"abcdefgh" * 40, KEY),  # zstd + encrypted
        (bytes(range(200)), KEY),  # raw + encrypted
        (b"", KEY),
    ],
)
def test_every_single_byte_change_is_detected(data: bytes, cipher_key: bytes | None) -> None:
    blob = encode(data, cipher_key=cipher_key, key_id=5 if cipher_key else 0)
    assert decode(blob, cipher_key=cipher_key) == data
    undetected = []
    for pos in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[pos] ^= mask
            if not _rejected(bytes(bad), cipher_key):
                undetected.append((pos, mask))
    assert not undetected


def test_every_truncation_and_extension_is_detected() -> None:
    for blob in (encode(TEXT[:500]), encode(os.urandom(300)), encode(TEXT[:500], cipher_key=KEY)):
        for cut in range(len(blob)):
            assert _rejected(blob[:cut], KEY), cut
        assert _rejected(blob + b"\0", KEY)


def test_short_blob_message() -> None:
    with pytest.raises(CorruptChunk, match="truncated"):
        verify(b"DFSC")
    with pytest.raises(CorruptChunk, match="truncated"):
        header_info(b"")


def test_bad_magic_and_version() -> None:
    with pytest.raises(CorruptChunk, match="magic"):
        verify(_blob(b"data", magic=b"XXXX"))
    with pytest.raises(CorruptChunk, match="version"):
        verify(_blob(b"data", version=2))
    with pytest.raises(CorruptChunk, match="codec"):
        verify(_blob(b"data", codec_id=9))
    with pytest.raises(CorruptChunk, match="flags"):
        verify(_blob(b"data", flags=2))
    with pytest.raises(CorruptChunk, match="flags"):
        verify(_blob(b"data", reserved=1))
    with pytest.raises(CorruptChunk, match="key id or nonce"):
        verify(_blob(b"data", key_id=1))
    with pytest.raises(CorruptChunk, match="key id or nonce"):
        verify(_blob(b"data", nonce=b"\1" * 12))
    verify(_blob(b"data"))  # the helper itself makes valid blobs


def test_checksum_mismatch_message() -> None:
    blob = bytearray(encode(os.urandom(100)))
    blob[-1] ^= 1
    with pytest.raises(CorruptChunk, match="checksum mismatch"):
        verify(bytes(blob))


def test_lying_lengths() -> None:
    with pytest.raises(CorruptChunk, match="payload length"):
        verify(_blob(b"data", payload_len=3))
    with pytest.raises(CorruptChunk, match="payload length"):
        verify(_blob(b"data", payload_len=5))
    with pytest.raises(CorruptChunk, match="plaintext length"):
        verify(_blob(b"data", plain_len=5))
    frame = zstandard.ZstdCompressor().compress(TEXT)
    verify(_blob(frame, codec_id=CODEC_ZSTD, plain_len=len(TEXT)))
    assert decode(_blob(frame, codec_id=CODEC_ZSTD, plain_len=len(TEXT))) == TEXT
    for wrong in (0, 1, len(TEXT) - 1, len(TEXT) + 1, 0xFFFFFFFF):
        with pytest.raises(CorruptChunk, match="content size"):
            verify(_blob(frame, codec_id=CODEC_ZSTD, plain_len=wrong))
    # An encrypted raw chunk's plaintext is the payload less the tag.
    with pytest.raises(CorruptChunk, match="plaintext length"):
        verify(_blob(bytes(20), flags=1, nonce=b"\1" * 12, plain_len=20))
    with pytest.raises(CorruptChunk, match="shorter than a tag"):
        verify(_blob(bytes(10), flags=1, nonce=b"\1" * 12, plain_len=0))


def test_frame_without_content_size_is_rejected() -> None:
    # encode() always records the content size; without it decompression could not be bounded cheaply.
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
    for plain_len in (0, 10, len(TEXT)):
        with pytest.raises(CorruptChunk, match="no content size"):
            verify(_blob(frame, codec_id=CODEC_ZSTD, plain_len=plain_len))


def test_empty_zstd_frame_is_rejected() -> None:
    frame = zstandard.ZstdCompressor().compress(b"")
    assert _rejected(_blob(frame, codec_id=CODEC_ZSTD, plain_len=0))


def test_garbage_zstd_payload() -> None:
    assert _rejected(_blob(b"not a zstd frame at all", codec_id=CODEC_ZSTD, plain_len=100))
    frame = zstandard.ZstdCompressor().compress(TEXT)
    assert _rejected(_blob(frame + b"trailing", codec_id=CODEC_ZSTD, plain_len=len(TEXT)))
    assert _rejected(_blob(frame + frame, codec_id=CODEC_ZSTD, plain_len=len(TEXT)))


def test_header_info_fields() -> None:
    blob = encode(TEXT, cipher_key=KEY, key_id=42)
    h = header_info(blob)
    assert isinstance(h, ChunkHeader)
    assert h.magic == MAGIC
    assert h.version == FORMAT_VERSION
    assert h.codec == CODEC_ZSTD
    assert h.flags == 1
    assert h.key_id == 42
    assert h.plain_len == len(TEXT)
    assert h.payload_len == len(blob) - HEADER_SIZE
    assert h.checksum == xxhash.xxh3_64_intdigest(blob[HEADER_SIZE:])
    assert HEADER_SIZE == 38
