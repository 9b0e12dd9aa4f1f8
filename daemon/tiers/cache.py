"""A bounded on-disk cache of chunks read from cloud tiers.

Cold chunks (daemon/service/tiering.py) live on no local disk; each read of one
would cost an object-store request.  This cache keeps the most recently read ones
under ``<data dir>/tier-cache/`` up to ``[tiers] cache_bytes``, evicting the least
recently used.  It is only a cache: metadata never counts it, repair and GC never
look at it, and a blob is verified (dfs.core.codec.verify) on every read from it,
so a damaged file costs a refetch, never bad data.

Blocking and thread-safe (the daemon calls it from chunk threads).  Files are
written to a temp name and renamed, so a crash leaves whole files or temp files,
and start-up removes the temp files and indexes the rest (oldest access first).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from dfs.core import codec
from dfs.core.errors import CorruptChunk

log = logging.getLogger("dfs.tiers")

_TMP_SUFFIX = ".tmp"


class TierCache:
    """Up to ``limit_bytes`` of chunk blobs by id; LRU eviction.  ``limit_bytes`` 0: off."""

    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root = root
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._index: OrderedDict[bytes, int] = OrderedDict()  # id -> size, least recent first
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        if limit_bytes > 0:
            self._load()

    def _load(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        found: list[tuple[float, bytes, int]] = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(_TMP_SUFFIX):
                Path(entry.path).unlink(missing_ok=True)
                continue
            try:
                cid = bytes.fromhex(entry.name)
                st = entry.stat()
            except (ValueError, OSError):
                continue
            if len(cid) == codec.ID_SIZE:
                found.append((st.st_atime, cid, st.st_size))
        for _, cid, size in sorted(found):
            self._index[cid] = size
            self._bytes += size
        self._evict()

    def _path(self, chunk_id: bytes) -> Path:
        return self.root / chunk_id.hex()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, chunk_id: bytes) -> bytes | None:
        """The cached blob, verified; None when not cached (or found damaged, then dropped)."""
        if self.limit_bytes <= 0:
            return None
        with self._lock:
            if chunk_id not in self._index:
                self.misses += 1
                return None
            self._index.move_to_end(chunk_id)
        try:
            blob = self._path(chunk_id).read_bytes()
            codec.verify(blob)
        except (OSError, CorruptChunk) as exc:
            log.warning("tier cache: dropping chunk %s: %s", chunk_id.hex(), exc)
            self._drop(chunk_id)
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return blob

    def put(self, chunk_id: bytes, blob: bytes) -> None:
        """Keep ``blob`` (already verified by the caller); errors only cost the cache entry."""
        if self.limit_bytes <= 0 or len(blob) > self.limit_bytes:
            return
        with self._lock:
            if chunk_id in self._index:
                self._index.move_to_end(chunk_id)
                return
        path = self._path(chunk_id)
        tmp = path.with_name(path.name + f".{threading.get_ident()}{_TMP_SUFFIX}")
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.info("tier cache: not kept %s: %s", chunk_id.hex(), exc)
            return
        with self._lock:
            if chunk_id not in self._index:
                self._index[chunk_id] = len(blob)
                self._bytes += len(blob)
        self._evict()

    def _drop(self, chunk_id: bytes) -> None:
        with self._lock:
            size = self._index.pop(chunk_id, None)
            if size is not None:
                self._bytes -= size
        self._path(chunk_id).unlink(missing_ok=True)

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self._bytes <= self.limit_bytes or not self._index:
                    return
                cid, size = self._index.popitem(last=False)
                self._bytes -= size
            self._path(cid).unlink(missing_ok=True)
