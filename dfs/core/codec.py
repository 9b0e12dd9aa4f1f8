"""Chunk encoding: compression, optional encryption and an integrity checksum.

Pure functions over bytes (no I/O, no trio); safe to call from many threads
at once.  A stored chunk ("blob") is a fixed-size header followed by the
payload.

Header layout (``HEADER_FORMAT``, little-endian, ``HEADER_SIZE`` = 38 bytes)::

    offset size field
         0    4 magic            b"DFSC"
         4    1 version          FORMAT_VERSION (1)
         5    1 codec            0 = raw, 1 = zstd (one frame, content size set)
         6    1 flags            bit 0 = encrypted; other bits must be 0
         7    1 reserved         must be 0
         8    2 key_id    (u16)  which cluster key encrypted it; 0 if not encrypted
        10   12 nonce            AES-GCM nonce; all zeros if not encrypted
        22    4 plain_len (u32)  length of the original data
        26    4 payload_len (u32) length of the payload that follows the header
        30    8 checksum  (u64)  xxh3_64 of the payload bytes as stored

The payload is the data, zstd-compressed when that saves at least 1/32, then
(when a cipher key is given) AES-256-GCM encrypted, ciphertext followed by the
16-byte tag.  The GCM associated data is the header *without* its checksum
field (the first 30 bytes): the checksum covers the ciphertext, so it cannot
be known before encryption, and every other header field is authenticated.

Invariants (:func:`verify` checks all of them without the key; GCM
authenticates the remaining header fields of an encrypted chunk in
:func:`decode`, so a change to any single byte of a blob is detected):
- ``len(blob) == HEADER_SIZE + payload_len`` and the checksum matches;
- unencrypted chunks have ``key_id == 0`` and a zero nonce;
- a raw chunk has ``plain_len == payload_len`` (less the tag if encrypted);
- an unencrypted zstd chunk's frame header records ``plain_len`` as its
  content size (this also bounds decompression);
- an encrypted payload is at least one GCM tag long.
Any violation raises :class:`~dfs.core.errors.CorruptChunk`; :func:`decode` never
returns data that differs from what was encoded.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from typing import NamedTuple

import blake3
import xxhash
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dfs.core.errors import CorruptChunk, InvalidArgument

BytesLike = bytes | bytearray | memoryview
# A chunk's plaintext, whole or as the pieces it arrived in (a mount's block is the
# writes the kernel handed over): hashing and encoding read the pieces in place,
# so the plaintext is never assembled apart from the blob.
Plain = BytesLike | Sequence[BytesLike]

MAGIC = b"DFSC"
FORMAT_VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
FLAG_ENCRYPTED = 0x01
ID_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32

HEADER_FORMAT = "<4sBBBBH12sIIQ"
_HEADER = struct.Struct(HEADER_FORMAT)
HEADER_SIZE = _HEADER.size
# Bytes of the header authenticated as GCM associated data: all but the checksum.
_AAD_SIZE = HEADER_SIZE - 8
_ZERO_NONCE = bytes(NONCE_SIZE)
_U32_MAX = 0xFFFFFFFF

# Compression must save at least len >> _MIN_SAVING_SHIFT bytes (1/32) to be kept:
# a smaller gain is not worth the decompression cost on every read.
_MIN_SAVING_SHIFT = 5
# Only this prefix is trial-compressed first, so incompressible data costs
# one small compression instead of a full pass.
_SAMPLE_SIZE = 64 * 1024


class ChunkHeader(NamedTuple):
    """The parsed header of one blob (see the module docstring)."""

    magic: bytes
    version: int
    codec: int
    flags: int
    reserved: int
    key_id: int
    nonce: bytes
    plain_len: int
    payload_len: int
    checksum: int

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)


class _ThreadState(threading.local):
    """Per-thread zstd objects: they are not thread-safe, but costly to rebuild."""

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()
        self.ciphers: dict[bytes, AESGCM] = {}


_local = _ThreadState()


def plain_length(data: Plain) -> int:
    """Bytes of plaintext in ``data`` (whole or in pieces)."""
    return sum(len(v) for v in _pieces(data))


def _pieces(data: Plain) -> list[memoryview]:
    if isinstance(data, bytes | bytearray | memoryview):
        return [_byte_view(data)]
    return [_byte_view(p) for p in data]


def chunk_id(key: bytes, data: Plain) -> bytes:
    """The content address of ``data``: keyed BLAKE3-256 of the plaintext.

    BLAKE3 rather than BLAKE2b: it hashes 4 MiB blocks about four times
    faster here and releases the GIL, and hashing is the costliest step of
    the write path.  The key is the 32-byte cluster secret, so ids reveal
    nothing about content to anyone without it.
    """
    if len(key) != KEY_SIZE:
        raise InvalidArgument(f"chunk id key must be {KEY_SIZE} bytes, got {len(key)}")
    hasher = blake3.blake3(key=key)
    for piece in _pieces(data):
        hasher.update(piece)
    return hasher.digest(length=ID_SIZE)


def chunk_relpath(hexid: str) -> str:
    """Where a chunk lives below a store's ``chunks/`` directory (fan-out by id prefix).

    Shared by the chunk store and by clients that read a co-located store directly.
    """
    return f"{hexid[:2]}/{hexid[2:4]}/{hexid}"


def _compressor(level: int) -> zstandard.ZstdCompressor:
    comp = _local.compressors.get(level)
    if comp is None:
        # No zstd frame checksum: the header's xxh3 already covers the payload.
        comp = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
        _local.compressors[level] = comp
    return comp


def _cipher(key: bytes) -> AESGCM:
    cipher = _local.ciphers.get(key)
    if cipher is None:
        if len(key) != KEY_SIZE:
            raise InvalidArgument(f"cipher key must be {KEY_SIZE} bytes, got {len(key)}")
        if len(_local.ciphers) >= 8:  # keys rotate rarely; bound the cache anyway
            _local.ciphers.clear()
        cipher = AESGCM(key)
        _local.ciphers[key] = cipher
    return cipher


def _shrinks_enough(before: int, after: int) -> bool:
    return before - after >= max(1, before >> _MIN_SAVING_SHIFT)


def _byte_view(data: BytesLike) -> memoryview:
    """A flat byte view, so len() counts bytes even for typed memoryviews."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _joined(pieces: list[memoryview]) -> memoryview:
    return pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))


def _maybe_compress(pieces: list[memoryview], plain_len: int, level: int) -> bytes | None:
    """The zstd frame of the plaintext, or None when compression is not worth it."""
    if level <= 0 or not plain_len:
        return None
    comp = _compressor(min(level, zstandard.MAX_COMPRESSION_LEVEL))
    if plain_len > _SAMPLE_SIZE:
        head = pieces[0] if len(pieces[0]) >= _SAMPLE_SIZE else _joined(pieces)
        sample = head[:_SAMPLE_SIZE]
        if not _shrinks_enough(len(sample), len(comp.compress(sample))):
            return None
    frame: bytes = comp.compress(_joined(pieces))
    return frame if _shrinks_enough(plain_len, len(frame)) else None


def _pack_header(
    codec: int, flags: int, key_id: int, nonce: bytes, plain_len: int, payload_len: int, checksum: int
) -> bytes:
    return _HEADER.pack(
        MAGIC, FORMAT_VERSION, codec, flags, 0, key_id, nonce, plain_len, payload_len, checksum
    )


def encode(
    data: Plain,
    *,
    level: int = 1,
    cipher_key: bytes | None = None,
    key_id: int = 0,
) -> bytes:
    """Encode ``data`` (whole or in pieces) into a self-checking blob (header + payload).

    ``level <= 0`` disables compression.  With ``cipher_key`` (32 bytes) the
    payload is AES-256-GCM encrypted and ``key_id`` is recorded; without it
    ``key_id`` is ignored (stored as 0).  Data kept raw and unencrypted (the
    common case for incompressible data) is copied once, into the blob.
    """
    parts = encode_parts(data, level=level, cipher_key=cipher_key, key_id=key_id)
    first = parts[0]
    return first if len(parts) == 1 and isinstance(first, bytes) else b"".join(parts)


def encode_parts(
    data: Plain,
    *,
    level: int = 1,
    cipher_key: bytes | None = None,
    key_id: int = 0,
) -> list[BytesLike]:
    """:func:`encode`, as the blob's parts in order (header first) without joining them: raw
    data is not copied at all (a transport sends the parts back to back; see wire.Pieces).
    The parts refer to ``data``'s buffers, which must not change while they are in use."""
    pieces = _pieces(data)
    plain_len = sum(len(v) for v in pieces)
    if plain_len > _U32_MAX - TAG_SIZE:
        raise InvalidArgument(f"chunk too large to encode: {plain_len} bytes")
    frame = _maybe_compress(pieces, plain_len, level)
    codec = CODEC_RAW if frame is None else CODEC_ZSTD
    if cipher_key is None:
        parts = pieces if frame is None else [memoryview(frame)]
        digest = xxhash.xxh3_64()
        for part in parts:
            digest.update(part)
        header = _pack_header(
            codec,
            0,
            0,
            _ZERO_NONCE,
            plain_len,
            plain_len if frame is None else len(frame),
            digest.intdigest(),
        )
        return [header, *parts]
    payload: BytesLike = _joined(pieces) if frame is None else frame
    if not 0 <= key_id <= 0xFFFF:
        raise InvalidArgument(f"key_id out of range: {key_id}")
    cipher = _cipher(cipher_key)
    nonce = os.urandom(NONCE_SIZE)
    aad = _pack_header(codec, FLAG_ENCRYPTED, key_id, nonce, plain_len, len(payload) + TAG_SIZE, 0)
    aad = aad[:_AAD_SIZE]
    sealed = cipher.encrypt(nonce, payload, aad)
    return [aad + struct.pack("<Q", xxhash.xxh3_64_intdigest(sealed)), sealed]


def _parse(blob: BytesLike) -> ChunkHeader:
    size = len(_byte_view(blob))
    if size < HEADER_SIZE:
        raise CorruptChunk(f"chunk truncated: {size} bytes, shorter than the {HEADER_SIZE}-byte header")
    return ChunkHeader(*_HEADER.unpack_from(blob))


def header_info(blob: BytesLike) -> ChunkHeader:
    """The parsed header, without checking it (for tools; see :func:`verify`)."""
    return _parse(blob)


def _check_header(h: ChunkHeader, blob_len: int) -> None:
    if h.magic != MAGIC:
        raise CorruptChunk(f"bad chunk magic {h.magic!r}")
    if h.version != FORMAT_VERSION:
        raise CorruptChunk(f"unsupported chunk format version {h.version}")
    if h.codec not in (CODEC_RAW, CODEC_ZSTD):
        raise CorruptChunk(f"unknown chunk codec {h.codec}")
    if h.flags & ~FLAG_ENCRYPTED or h.reserved:
        raise CorruptChunk(f"unknown chunk flags {h.flags:#x}/{h.reserved:#x}")
    if blob_len != HEADER_SIZE + h.payload_len:
        raise CorruptChunk(f"chunk length {blob_len} does not match header payload length {h.payload_len}")
    stored_plain = h.payload_len
    if h.encrypted:
        if h.payload_len < TAG_SIZE:
            raise CorruptChunk(f"encrypted chunk payload of {h.payload_len} bytes is shorter than a tag")
        stored_plain -= TAG_SIZE
    elif h.key_id or h.nonce != _ZERO_NONCE:
        raise CorruptChunk("unencrypted chunk has a key id or nonce set")
    if h.codec == CODEC_RAW and h.plain_len != stored_plain:
        raise CorruptChunk(f"raw chunk plaintext length {h.plain_len} != stored length {stored_plain}")


def _check_frame_size(frame: BytesLike, plain_len: int) -> None:
    """Reject a zstd frame whose recorded content size is not ``plain_len``.

    Cheap (parses the frame header only) and bounds decompression: zstd
    allocates the recorded size, ignoring ``max_output_size``, whenever a
    frame records one.
    """
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise CorruptChunk(f"bad zstd frame header: {exc}") from None
    if size < 0:  # -1: the frame does not record it
        raise CorruptChunk("zstd frame has no content size")
    if size != plain_len:
        raise CorruptChunk(f"zstd frame content size {size} != header plaintext length {plain_len}")


def verify(blob: BytesLike) -> None:
    """Check the header and the payload checksum; raise CorruptChunk on a mismatch.

    Does not decompress or decrypt, so it is cheap enough for every read.
    """
    _verify(blob)


def _verify(blob: BytesLike) -> ChunkHeader:
    view = _byte_view(blob)
    _parse(view)  # a blob shorter than the header is refused before it is split
    return _verify_parts(view[:HEADER_SIZE], view[HEADER_SIZE:])


def _verify_parts(head: memoryview, payload: memoryview) -> ChunkHeader:
    h = _parse(head)
    _check_header(h, HEADER_SIZE + len(payload))
    actual = xxhash.xxh3_64_intdigest(payload)
    if actual != h.checksum:
        raise CorruptChunk(f"chunk checksum mismatch: stored {h.checksum:016x}, computed {actual:016x}")
    if h.codec == CODEC_ZSTD and not h.encrypted:
        _check_frame_size(payload, h.plain_len)
    return h


def _decrypt(h: ChunkHeader, head: memoryview, payload: memoryview, cipher_key: bytes | None) -> bytes:
    if cipher_key is None:
        raise CorruptChunk(f"chunk is encrypted (key id {h.key_id}) but no cipher key was given")
    try:
        return _cipher(cipher_key).decrypt(h.nonce, payload, head[:_AAD_SIZE])
    except InvalidTag:
        raise CorruptChunk(f"chunk failed authentication (wrong key for key id {h.key_id}?)") from None


def _decompress(frame: BytesLike, plain_len: int) -> bytes:
    if plain_len == 0:
        # max_output_size=0 would mean "unbounded"; we never compress empty data.
        raise CorruptChunk("zstd chunk with an empty plaintext")
    _check_frame_size(frame, plain_len)
    try:
        out: bytes = _local.decompressor.decompress(frame, max_output_size=plain_len, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise CorruptChunk(f"chunk failed to decompress: {exc}") from None
    if len(out) != plain_len:
        raise CorruptChunk(f"chunk decompressed to {len(out)} bytes, header says {plain_len}")
    return out


def decode(blob: BytesLike, *, cipher_key: bytes | None = None) -> bytes:
    """Verify, decrypt and decompress a blob back into the original data."""
    view = _byte_view(blob)
    _parse(view)
    return decode_parts(view[:HEADER_SIZE], view[HEADER_SIZE:], cipher_key=cipher_key)


def decode_parts(head: BytesLike, payload: BytesLike, *, cipher_key: bytes | None = None) -> bytes:
    """:func:`decode` of a blob held as its header and its payload apart (a chunk file read in
    two parts): a raw chunk's data is then ``payload`` itself when it is ``bytes``, with no
    copy of it made (a mount reading a file sequentially copied every 4 MiB chunk once more
    here, holding the GIL its other threads wait for)."""
    head_view, payload_view = _byte_view(head), _byte_view(payload)
    if len(head_view) != HEADER_SIZE:
        raise CorruptChunk(f"chunk header of {len(head_view)} bytes, not {HEADER_SIZE}")
    h = _verify_parts(head_view, payload_view)
    plain: BytesLike = payload
    if h.encrypted:
        plain = _decrypt(h, head_view, payload_view, cipher_key)
    if h.codec == CODEC_ZSTD:
        return _decompress(plain, h.plain_len)
    return plain if isinstance(plain, bytes) else bytes(plain)
