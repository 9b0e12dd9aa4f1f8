"""The snapshot send stream (``dfs snapshot send`` / ``receive``): a sans-IO encoder and decoder.

A stream is :data:`MAGIC`, then frames.  A frame is a fixed 28-byte head -- payload length
(u32), sequence number (u64, 0 for the header, then 1, 2, ... with no gap), and the
xxh3-128 of length, sequence number and payload -- then the payload: one msgpack list whose
first item says what it is.  Frame 0 is the :class:`Header`; then the records; the last frame
is the :class:`Trailer` (how many records came, and :func:`tree_digest` of the tree the
stream leaves behind), after which nothing may follow.

Records, in the sender's walk order (pre-order, names sorted: the same snapshot pair always
gives the same stream, so a receiver can resume by sequence number):

- :class:`Dir`: a directory (``b""`` is the volume's top) with attributes and xattrs;
- :class:`File`: a regular file's attributes, xattrs, size and either its inline bytes or
  ``nblocks``: exactly that many :class:`Data` (the block's plaintext) or :class:`Same`
  ("the block ``base_index`` of ``base_path`` in the base snapshot": incremental streams
  only) frames follow it, indexes rising; at most one block per frame;
- :class:`Symlink`, :class:`Special` (fifo, socket, device: ``meta.rdev``), :class:`Link`
  (a hard link to a file sent earlier in this stream), :class:`Delete` (incremental only).

The decoder refuses, with a :class:`StreamError` naming the frame, anything but exactly
that: a flipped byte anywhere fails the magic, a checksum, a bound or the grammar; a
truncated stream fails :meth:`Decoder.close`.  The stream is not encrypted.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgpack
import xxhash

from dfs.core.errors import ProtocolError

MAGIC = b"DFSSEND\x01"
VERSION = 1
_HEAD = struct.Struct(">IQ16s")  # payload length, sequence number, xxh3-128
HEAD_BYTES = _HEAD.size
# A frame holds at most one block (the largest block size dfs allows is 64 MiB) plus its
# record's few fields; a length above this is corruption, refused before buffering it.
MAX_FRAME_BYTES = 64 * 1024 * 1024 + 64 * 1024
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
STREAM_ID_BYTES = 16

_HEADER, _DIR, _FILE, _DATA, _SAME, _SYMLINK, _LINK, _SPECIAL, _DELETE, _TRAILER = range(10)


class StreamError(ProtocolError):
    """A send stream that is truncated, corrupt, out of order or not well formed."""


class Meta(NamedTuple):
    """The attributes a stream carries for every entry (ctime cannot be set: not carried)."""

    mode: int
    uid: int
    gid: int
    rdev: int
    atime_ns: int
    mtime_ns: int


class Header(NamedTuple):
    volume: str
    snapshot: str
    base: str | None  # the base snapshot of an incremental stream
    stream_id: bytes
    block_size: int
    # The base's tree_digest: a receiver checks that its snapshot of that name is the same tree.
    base_digest: bytes | None = None
    version: int = VERSION


class Dir(NamedTuple):
    path: bytes
    meta: Meta
    xattrs: dict[bytes, bytes]


class File(NamedTuple):
    path: bytes
    meta: Meta
    xattrs: dict[bytes, bytes]
    size: int
    inline: bytes | None
    nblocks: int  # Data/Same frames that follow (0 with inline bytes)


class Data(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose (as BlockRef)
    data: bytes


class Same(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose (as BlockRef)
    length: int
    base_path: bytes
    base_index: int


class Symlink(NamedTuple):
    path: bytes
    meta: Meta
    target: bytes


class Link(NamedTuple):
    path: bytes
    target: bytes  # a path sent as a File earlier in this stream


class Special(NamedTuple):
    path: bytes
    meta: Meta
    xattrs: dict[bytes, bytes]


class Delete(NamedTuple):
    path: bytes


class Trailer(NamedTuple):
    records: int
    digest: bytes


Record = Dir | File | Data | Same | Symlink | Link | Special | Delete
Frame = Header | Record | Trailer


# -- paths -------------------------------------------------------------------------------------


def check_path(path: bytes, *, root_ok: bool = False) -> None:
    """A relative path of real names: no empty, ``.``, ``..`` or NUL parts (``b""``: the top)."""
    if not isinstance(path, bytes):
        raise StreamError(f"path is {type(path).__name__}, not bytes")
    if path == b"":
        if not root_ok:
            raise StreamError("empty path where a name is required")
        return
    if len(path) > MAX_PATH_BYTES:
        raise StreamError(f"path of {len(path)} bytes exceeds {MAX_PATH_BYTES}")
    for part in path.split(b"/"):
        if part in (b"", b".", b"..") or b"\0" in part or len(part) > MAX_NAME_BYTES:
            raise StreamError(f"bad path {path!r:.200}")


def split(path: bytes) -> tuple[bytes, bytes]:
    """(parent path, last name) of a non-empty path."""
    parent, _, name = path.rpartition(b"/")
    return parent, name


# -- the digest of a tree ----------------------------------------------------------------------


class TreeEntry(NamedTuple):
    """What :func:`tree_digest` covers of one entry: a receiver reproduces all of it."""

    path: bytes
    mode: int
    uid: int
    gid: int
    rdev: int
    size: int  # 0 for directories
    mtime_ns: int
    nlink: int
    target: bytes  # a symlink's, else b""
    xattrs: dict[bytes, bytes]
    # A file's stored blocks as (index, valid length): holes and a block lost on the way show.
    blocks: tuple[tuple[int, int], ...] = ()


def tree_digest(entries: Iterable[TreeEntry]) -> bytes:
    """32 bytes over ``entries`` in path order (sorted here, so the caller's walk order is free)."""
    h = xxhash.xxh3_128()
    h2 = xxhash.xxh3_128(seed=1)  # two seeds: 256 bits, so a chance collision is out of reach
    for e in sorted(entries, key=lambda e: e.path):
        blob = msgpack.packb(
            [
                e.path,
                e.mode,
                e.uid,
                e.gid,
                e.rdev,
                e.size,
                e.mtime_ns,
                e.nlink,
                e.target,
                sorted(e.xattrs.items()),
                e.blocks,
            ]
        )
        head = struct.pack(">I", len(blob))
        h.update(head + blob)
        h2.update(head + blob)
    return h.digest() + h2.digest()


# -- encoding ----------------------------------------------------------------------------------


def _meta_wire(m: Meta) -> list[int]:
    return [m.mode, m.uid, m.gid, m.rdev, m.atime_ns, m.mtime_ns]


def _payload(item: Frame) -> list[Any]:
    if isinstance(item, Header):
        return [
            _HEADER,
            item.version,
            item.volume,
            item.snapshot,
            item.base,
            item.stream_id,
            item.block_size,
            item.base_digest,
        ]
    if isinstance(item, Dir):
        return [_DIR, item.path, _meta_wire(item.meta), item.xattrs]
    if isinstance(item, File):
        return [_FILE, item.path, _meta_wire(item.meta), item.xattrs, item.size, item.inline, item.nblocks]
    if isinstance(item, Data):
        return [_DATA, item.index, item.data]
    if isinstance(item, Same):
        return [_SAME, item.index, item.length, item.base_path, item.base_index]
    if isinstance(item, Symlink):
        return [_SYMLINK, item.path, _meta_wire(item.meta), item.target]
    if isinstance(item, Link):
        return [_LINK, item.path, item.target]
    if isinstance(item, Special):
        return [_SPECIAL, item.path, _meta_wire(item.meta), item.xattrs]
    if isinstance(item, Delete):
        return [_DELETE, item.path]
    return [_TRAILER, item.records, item.digest]


def frame(seq: int, item: Frame) -> bytes:
    payload: bytes = msgpack.packb(_payload(item), use_bin_type=True)
    if len(payload) > MAX_FRAME_BYTES:
        raise StreamError(f"frame {seq} of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEAD.pack(len(payload), seq, _checksum(len(payload), seq, payload)) + payload


def _checksum(length: int, seq: int, payload: bytes) -> bytes:
    return xxhash.xxh3_128_digest(struct.pack(">IQ", length, seq) + payload)


class Encoder:
    """Numbers frames: ``start(header)``, then ``record(r)`` for each record, then ``finish(digest)``."""

    def __init__(self) -> None:
        self.seq = 0
        self.records = 0

    def start(self, header: Header) -> bytes:
        assert self.seq == 0
        self.seq = 1
        return MAGIC + frame(0, header)

    def record(self, item: Record) -> bytes:
        assert self.seq > 0
        out = frame(self.seq, item)
        self.seq += 1
        self.records += 1
        return out

    def finish(self, digest: bytes) -> bytes:
        out = frame(self.seq, Trailer(self.records, digest))
        self.seq += 1
        return out


# -- decoding ----------------------------------------------------------------------------------


def _int(v: Any, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise StreamError(f"bad {what}: {v!r:.60}")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes):
        raise StreamError(f"bad {what}: not bytes")
    return v


def _meta(v: Any) -> Meta:
    if not isinstance(v, list) or len(v) != 6:
        raise StreamError("bad attributes")
    return Meta(
        _int(v[0], "mode", 0, 0o177777),
        _int(v[1], "uid", 0, 2**32 - 1),
        _int(v[2], "gid", 0, 2**32 - 1),
        _int(v[3], "rdev", 0, 2**64 - 1),
        _int(v[4], "atime", -(2**63), 2**63 - 1),
        _int(v[5], "mtime", -(2**63), 2**63 - 1),
    )


def _xattrs(v: Any) -> dict[bytes, bytes]:
    if not isinstance(v, dict) or not all(
        isinstance(k, bytes) and k and isinstance(x, bytes) for k, x in v.items()
    ):
        raise StreamError("bad xattrs")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 255:
        raise StreamError(f"bad {what}")
    return v


def _parse(raw: Any) -> Frame:
    """One payload as a frame (fields checked for type and range; grammar is the Decoder's)."""
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
        raise StreamError("payload is not a record")
    kind, f = raw[0], raw[1:]
    shapes = {
        _HEADER: 7,
        _DIR: 3,
        _FILE: 6,
        _DATA: 2,
        _SAME: 4,
        _SYMLINK: 3,
        _LINK: 2,
        _SPECIAL: 3,
        _DELETE: 1,
        _TRAILER: 2,
    }
    if kind == _HEADER and f:  # the version first: another version may have other fields
        version = _int(f[0], "format version")
        if version != VERSION:
            raise StreamError(f"stream format version {version}; this dfs reads version {VERSION}")
    if kind not in shapes or len(f) != shapes[kind]:
        raise StreamError(f"unknown record kind {kind} or wrong field count")
    if kind == _HEADER:
        base = None if f[3] is None else _str(f[3], "base snapshot name")
        sid = _bytes(f[4], "stream id")
        if len(sid) != STREAM_ID_BYTES:
            raise StreamError("bad stream id")
        base_digest = None if f[6] is None else _bytes(f[6], "base digest")
        if (base is None) != (base_digest is None) or (base_digest is not None and len(base_digest) != 32):
            raise StreamError("bad base digest")
        return Header(
            _str(f[1], "volume name"),
            _str(f[2], "snapshot name"),
            base,
            sid,
            _int(f[5], "block size", 1, 64 * 1024 * 1024),
            base_digest,
            VERSION,
        )
    if kind == _DIR:
        path = _bytes(f[0], "path")
        check_path(path, root_ok=True)
        return Dir(path, _meta(f[1]), _xattrs(f[2]))
    if kind == _FILE:
        path = _bytes(f[0], "path")
        check_path(path)
        inline = None if f[4] is None else _bytes(f[4], "inline data")
        return File(path, _meta(f[1]), _xattrs(f[2]), _int(f[3], "size"), inline, _int(f[5], "block count"))
    if kind == _DATA:
        return Data(_int(f[0], "block index"), _bytes(f[1], "block data"))
    if kind == _SAME:
        base_path = _bytes(f[2], "base path")
        check_path(base_path)
        return Same(
            _int(f[0], "block index"), _int(f[1], "block length"), base_path, _int(f[3], "base index")
        )
    if kind == _SYMLINK:
        path = _bytes(f[0], "path")
        check_path(path)
        target = _bytes(f[2], "symlink target")
        if not target or len(target) > MAX_PATH_BYTES or b"\0" in target:
            raise StreamError("bad symlink target")
        return Symlink(path, _meta(f[1]), target)
    if kind == _LINK:
        path, target = _bytes(f[0], "path"), _bytes(f[1], "link target")
        check_path(path)
        check_path(target)
        return Link(path, target)
    if kind == _SPECIAL:
        path = _bytes(f[0], "path")
        check_path(path)
        return Special(path, _meta(f[1]), _xattrs(f[2]))
    if kind == _DELETE:
        path = _bytes(f[0], "path")
        check_path(path)
        return Delete(path)
    digest = _bytes(f[1], "digest")
    if len(digest) != 32:
        raise StreamError("bad digest")
    return Trailer(_int(f[0], "record count"), digest)


class Decoder:
    """Bytes in (:meth:`feed`, any split), checked frames out as ``(seq, frame)``; :meth:`close`
    at the end of input raises unless the trailer came.  After an error it stays failed."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._magic = False
        self._seq = 0  # the next frame's expected sequence number
        self.header: Header | None = None
        self.trailer: Trailer | None = None
        self._blocks_left = 0  # Data/Same frames still owed to the last File
        self._block_limit = 0  # the file's block count by its size: no index beyond it
        self._last_index = -1
        self._files: set[bytes] = set()
        self._failed: StreamError | None = None

    @property
    def done(self) -> bool:
        return self.trailer is not None

    def feed(self, data: bytes) -> list[tuple[int, Frame]]:
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data)
        except StreamError as exc:
            self._failed = exc
            raise

    def close(self) -> None:
        """End of input: the stream must be complete."""
        if self._failed is not None:
            raise self._failed
        if self.trailer is None:
            got = "nothing" if self._seq == 0 and not self._magic else f"{self._seq} frames"
            raise StreamError(f"stream truncated: it ends after {got}, before its trailer")

    def _feed(self, data: bytes) -> list[tuple[int, Frame]]:
        if self.trailer is not None:
            if data:
                raise StreamError("bytes after the stream's trailer")
            return []
        self._buf += data
        out: list[tuple[int, Frame]] = []
        if not self._magic:
            if len(self._buf) < len(MAGIC):
                if not MAGIC.startswith(bytes(self._buf)):
                    raise StreamError("not a dfs send stream (bad magic)")
                return out
            if bytes(self._buf[: len(MAGIC)]) != MAGIC:
                raise StreamError("not a dfs send stream (bad magic)")
            del self._buf[: len(MAGIC)]
            self._magic = True
        while len(self._buf) >= HEAD_BYTES:
            length, seq, checksum = _HEAD.unpack_from(self._buf)
            if length > self.max_frame_bytes:
                raise StreamError(
                    f"frame {self._seq}: length {length} exceeds {self.max_frame_bytes} (corrupt)"
                )
            if len(self._buf) < HEAD_BYTES + length:
                break
            payload = bytes(self._buf[HEAD_BYTES : HEAD_BYTES + length])
            if _checksum(length, seq, payload) != checksum:
                raise StreamError(f"frame {self._seq}: checksum mismatch (corrupt stream)")
            if seq != self._seq:
                raise StreamError(f"frame out of order: sequence number {seq} where {self._seq} was due")
            del self._buf[: HEAD_BYTES + length]
            try:
                raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:
                raise StreamError(f"frame {seq}: undecodable payload: {exc}") from None
            item = _parse(raw)
            self._check(seq, item)
            self._seq += 1
            out.append((seq, item))
            if self.trailer is not None:
                if self._buf:
                    raise StreamError("bytes after the stream's trailer")
                break
        return out

    def _check(self, seq: int, item: Frame) -> None:
        """The grammar: header first, blocks right after their file, trailer last and counted."""
        if seq == 0:
            if not isinstance(item, Header):
                raise StreamError("frame 0 is not the stream header")
            self.header = item
            return
        header = self.header
        assert header is not None
        if isinstance(item, Header):
            raise StreamError(f"frame {seq}: a second header")
        if self._blocks_left:
            if not isinstance(item, Data | Same):
                raise StreamError(f"frame {seq}: {self._blocks_left} blocks of a file still due")
            if not self._last_index < item.index < self._block_limit:
                raise StreamError(f"frame {seq}: block index {item.index} out of order or beyond the file")
            length = len(item.data) if isinstance(item, Data) else item.length
            if not 0 < length <= header.block_size:
                raise StreamError(f"frame {seq}: block of {length} bytes")
            if isinstance(item, Same) and header.base is None:
                raise StreamError(f"frame {seq}: a base block in a full stream")
            self._last_index = item.index
            self._blocks_left -= 1
            return
        if isinstance(item, Data | Same):
            raise StreamError(f"frame {seq}: a block outside a file")
        if isinstance(item, Trailer):
            if item.records != seq - 1:
                raise StreamError(f"trailer counts {item.records} records; the stream had {seq - 1}")
            self.trailer = item
            return
        if isinstance(item, Delete) and header.base is None:
            raise StreamError(f"frame {seq}: a delete in a full stream")
        if isinstance(item, File):
            if item.inline is not None and (item.nblocks or len(item.inline) != item.size):
                raise StreamError(f"frame {seq}: inline data that does not match the file")
            limit = -(-item.size // header.block_size)
            if item.nblocks > limit:
                raise StreamError(f"frame {seq}: {item.nblocks} blocks for a file of {item.size} bytes")
            self._blocks_left, self._block_limit, self._last_index = item.nblocks, limit, -1
            self._files.add(item.path)
        if isinstance(item, Link) and item.target not in self._files:
            raise StreamError(f"frame {seq}: hard link to {item.target!r:.200}, not a file sent before")
