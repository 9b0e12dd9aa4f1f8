"""The namespace model shared by the metadata service, the client and the mount.

Pure types and constants only: no SQLite, no trio.  The metadata service
(``daemon/meta/``) implements the operations; ``dfs/client/cluster.py`` calls
them over RPC as ``meta.<name>``; both agree on the shapes defined here.

Invariants the service keeps (checked by fsck):
- inode numbers are never reused (so the kernel can hold them forever);
- a directory's nlink is 2 + its number of subdirectories; a non-directory's
  nlink is the number of dentries naming it;
- an inode with nlink 0 lives only while some session holds it open;
- a chunk's refcount equals the number of block-map entries naming it.
"""

from __future__ import annotations

import stat
from typing import NamedTuple, NewType

InodeNo = NewType("InodeNo", int)
ChunkId = NewType("ChunkId", bytes)
SessionId = NewType("SessionId", str)

ROOT_INO = InodeNo(1)
NAME_MAX = 255
# Kernel rename(2) flags (linux/fs.h).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
# setxattr(2) flags.
XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
# The most file data metadata holds inline, whatever a daemon's [storage] inline_max.
INLINE_LIMIT_BYTES = 64 * 1024


class Attr(NamedTuple):
    """stat(2) fields of one inode; travels over RPC as a plain list."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int  # allocated 512-byte units, from stored chunk and inline sizes
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    generation: int

    @classmethod
    def from_wire(cls, value: object) -> Attr:
        if not isinstance(value, (list, tuple)) or len(value) != len(cls._fields):
            from dfs.core.errors import ProtocolError

            raise ProtocolError(f"malformed attr: {value!r:.200}")
        return cls(*value)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


class BlockRef(NamedTuple):
    """One entry of a file's block map.

    ``length`` is the number of valid plaintext bytes of the block; bytes of
    the chunk beyond ``length`` (left over from a truncate) read as zeros, as
    do blocks with no entry (holes).
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose
    chunk_id: bytes
    length: int
    stored_bytes: int

    @classmethod
    def from_wire(cls, value: object) -> BlockRef:
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            from dfs.core.errors import ProtocolError

            raise ProtocolError(f"malformed block ref: {value!r:.200}")
        return cls(*value)


class FileMap(NamedTuple):
    """What a reader needs: attributes, inline bytes (small files) or blocks."""

    attr: Attr
    inline: bytes | None
    blocks: list[BlockRef]

    @classmethod
    def from_wire(cls, value: object) -> FileMap:
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            from dfs.core.errors import ProtocolError

            raise ProtocolError(f"malformed file map: {value!r:.200}")
        attr, inline, blocks = value
        return cls(Attr.from_wire(attr), inline, [BlockRef.from_wire(b) for b in blocks])


class DirEntry(NamedTuple):
    """A readdirplus entry; ``cookie`` is the offset to resume after it."""

    name: bytes
    attr: Attr
    cookie: int

    @classmethod
    def from_wire(cls, value: object) -> DirEntry:
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            from dfs.core.errors import ProtocolError

            raise ProtocolError(f"malformed dir entry: {value!r:.200}")
        name, attr, cookie = value
        return cls(name, Attr.from_wire(attr), cookie)


class StatFs(NamedTuple):
    block_size: int
    total_bytes: int
    free_bytes: int
    avail_bytes: int
    files: int
    files_free: int


def check_name(name: bytes) -> None:
    """Reject names no POSIX directory may hold."""
    from dfs.core.errors import InvalidArgument, NameTooLong

    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes exceeds {NAME_MAX}")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidArgument(f"invalid name {name!r}")


def chown_clears(mode: int) -> int:
    """The mode after a chown of a non-directory: set-user-ID goes, and set-group-ID
    when it means "setgid" (group exec set), as Linux does."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode
