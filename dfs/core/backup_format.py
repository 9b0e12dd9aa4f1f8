"""What a metadata backup is on the wire and on disk, shared by the daemon that makes and serves
backups (daemon/service/backups.py) and the CLI that reassembles one offline (dfs/cli/meta.py).

A backup is a dump (daemon/meta/dump.py) cut into pieces of ``piece_bytes``, each stored as a
chunk whose id is the keyed BLAKE3 of the piece under :func:`chunk_key` of the cluster secret
(not the cluster key that names files' chunks: a backup chunk never shares an id with a file's,
so no file's GC can delete one), and a manifest (JSON) naming the chunks in order.

Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from dfs.core import codec
from dfs.core.auth import derive_key
from dfs.core.errors import CorruptChunk, InvalidArgument

__all__ = [
    "CHUNK_KEY_PURPOSE",
    "check_id",
    "check_manifest",
    "chunk_key",
    "is_chunk_hex",
    "open_piece",
    "piece_bytes_of",
]

#: What backup chunk ids are keyed by: ``derive_key(cluster secret, this)``.
CHUNK_KEY_PURPOSE = "backup-chunk-ids"
_ID = re.compile(r"\d{8}T\d{6}\.\d{3}Z")
_HEX_ID = re.compile(rf"[0-9a-f]{{{2 * codec.ID_SIZE}}}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def chunk_key(secret: bytes) -> bytes:
    """The key backup chunk ids are keyed by."""
    return derive_key(secret, CHUNK_KEY_PURPOSE)


def check_id(backup_id: Any) -> str:
    """``backup_id`` if it is one (``20261204T233100.123Z``; it names files: nothing else may pass)."""
    if not isinstance(backup_id, str) or not _ID.fullmatch(backup_id):
        raise InvalidArgument(f"not a backup id: {str(backup_id)[:40]!r}")
    return backup_id


def is_chunk_hex(value: Any) -> bool:
    """Whether ``value`` is a chunk id in hex, as manifests name them (it names a file)."""
    return isinstance(value, str) and _HEX_ID.fullmatch(value) is not None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(info: Any) -> dict[str, Any]:
    """``info`` if it is a chunked backup's manifest (it names files and chunks no sweep may
    delete: nothing malformed may pass); InvalidArgument naming what is wrong."""
    if not isinstance(info, dict):
        raise InvalidArgument("backup manifest: not a dict")
    backup_id = check_id(info.get("id"))

    def bad(what: str) -> InvalidArgument:
        return InvalidArgument(f"backup manifest {backup_id}: {what}")

    for key in ("created_ns", "dump_bytes", "rows", "schema_version", "piece_bytes", "replicas"):
        if not _count(info.get(key)):
            raise bad(f"{key} must be a count")
    if info["piece_bytes"] < 1 or info["replicas"] < 1:
        raise bad("piece_bytes and replicas must be at least 1")
    for key in ("origin", "cluster_key"):
        if not isinstance(info.get(key), str):
            raise bad(f"{key} must be a string")
    digest = info.get("file_sha256")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise bad("file_sha256 must be 64 hex digits")
    chunks = info.get("chunks")
    if not isinstance(chunks, list) or not all(is_chunk_hex(c) for c in chunks):
        raise bad(f"chunks must be a list of chunk ids ({2 * codec.ID_SIZE} hex digits each)")
    pieces = -(-info["dump_bytes"] // info["piece_bytes"])
    if len(chunks) != pieces:
        raise bad(
            f"{len(chunks)} chunk(s) for {info['dump_bytes']} bytes in pieces of "
            f"{info['piece_bytes']} (needs {pieces})"
        )
    return dict(info)


def piece_bytes_of(info: dict[str, Any], index: int) -> int:
    """How many bytes piece ``index`` of a checked manifest holds (the last may be short)."""
    return int(min(info["piece_bytes"], info["dump_bytes"] - index * info["piece_bytes"]))


def open_piece(key: bytes, chunk_id: bytes, blob: bytes, plain_bytes: int) -> bytes:
    """The piece a backup chunk's ``blob`` holds, checked: its checksum (decode), the id (the
    content it names, under ``key``) and its length; CorruptChunk if any is wrong."""
    plain = codec.decode(blob)
    if len(plain) != plain_bytes or codec.chunk_id(key, plain) != chunk_id:
        raise CorruptChunk(f"backup chunk {chunk_id.hex()} does not hold the piece its id names")
    return plain
