"""The on-disk content-addressed chunk store of one dfsd.

Synchronous and thread-safe: the daemon calls it from several worker threads
at once.  There is no lock on the data path; a small lock guards only the
in-memory state (chunk count, bytes, cached free space, partition index).

Layout under ``root``::

    chunks/ab/cd/<64 hex chars>   one encoded chunk (see dfs.core.codec), named by its id
    chunks/tmp/                   temp files being written; emptied at start-up
    chunks/bad/<hex>.<time_ns>    quarantined (corrupt) chunks, kept for the operator;
                                  never served, counted, indexed or cleaned up by us

Only two-hex-digit names are fan-out directories, so ``tmp/`` and ``bad/`` can
never be taken for chunk directories by the start-up scan or :meth:`ChunkStore.iter_ids`.

Invariants:
- a file under ``chunks/ab/cd/`` is always a complete blob that passed
  :func:`dfs.core.codec.verify` when written: it is written (and fsynced, unless
  ``fsync=False``) under ``tmp/``, then hard-linked into place, so readers
  never see a partial chunk, also not after a crash or ENOSPC;
- publishing uses ``link(2)``, which fails if the name exists, so concurrent
  puts of one id store it once and exactly one of them returns True; the
  counters therefore stay exact without locking the data path.  On a
  filesystem without hard links, publishing falls back to check-then-rename
  under a per-id stripe lock;
- :meth:`ChunkStore.get` never returns bytes that fail verification;
- one ChunkStore per root at a time: start-up removes everything in ``tmp/``;
- the partition index (partition -> ids, see :func:`dfs.core.placement.partition_of`)
  lists exactly the chunk files on disk once no put, delete or quarantine is
  in flight.  It is built by the start-up scan and then only adjusted by the
  operations that created or removed a file, by +1/-1 per id under the small
  lock.  Counting rather than set-adding matters: the file operation and the
  index update are not atomic, so a put and a delete of one id may update the
  index in the opposite order to the one they changed the disk in.  Each
  successful link or rename into place is matched by exactly one successful
  unlink or rename away, and additions commute, so once the racing calls
  have returned the net count is 1 exactly when the file exists, else 0.
  Meanwhile a count may briefly be -1 or 2; only positive counts are reported.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import mmap
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from dfs.core.codec import ID_SIZE, chunk_relpath, verify
from dfs.core.errors import ChunkMissing, CorruptChunk, DfsError, InvalidArgument, NoSpace, from_oserror
from dfs.core.placement import PARTITIONS, partition_of

log = logging.getLogger("dfs.chunks")

_HEX2 = re.compile(r"[0-9a-f]{2}")
_HEX_ID = re.compile(rf"[0-9a-f]{{{2 * ID_SIZE}}}")
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# link(2) failures meaning "this filesystem cannot hard-link": fall back to rename.
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS})
# How long a statvfs result is trusted for the reserve check (adjusted by our own writes).
_SPACE_CACHE_S = 1.0
_FILE_MODE = 0o600
# Blobs at least this large are written with O_DIRECT (see ChunkStore._write_direct).
_DIRECT_MIN_BYTES = 1024 * 1024
# O_DIRECT wants the memory, the file offset and the length aligned; 4 KiB suits every
# logical block size in use.
_DIRECT_ALIGN = 4096


class _AlignedBuffers(threading.local):
    """One page-aligned staging buffer per chunk-I/O thread, grown on demand and reused, so
    O_DIRECT writes never touch fresh memory.  Bounded by the threads times the largest blob."""

    def __init__(self) -> None:
        self.buf: mmap.mmap | None = None

    def get(self, size: int) -> mmap.mmap:
        if self.buf is None or len(self.buf) < size:
            if self.buf is not None:
                self.buf.close()
            self.buf = mmap.mmap(-1, size)  # anonymous maps are page-aligned
        return self.buf


# Shared by every store (a DiskSet holds one per disk): one buffer per thread, not per disk.
_staging = _AlignedBuffers()


def _aligned_up(n: int) -> int:
    return -(-n // _DIRECT_ALIGN) * _DIRECT_ALIGN


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ids_digest(chunk_ids: Iterable[bytes]) -> bytes:
    """The 8-byte digest of a set of chunk ids: xxh3_64 over the sorted, concatenated ids.

    What anti-entropy compares per partition: two nodes holding the same ids
    get the same digest whatever order they list them in.  Every daemon must
    compute it the same way, so treat it like a wire format.
    """
    return bytes(xxhash.xxh3_64(b"".join(sorted(chunk_ids))).digest())


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # cleanup of a temp file must not hide the real error
        log.warning("could not remove temp file %s: %s", path, exc)


class ChunkStore:
    """Encoded chunks on local disk, addressed by their 32-byte id."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, reserve_bytes: int = 0) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.reserve_bytes = reserve_bytes
        self.checksum_failures = 0
        self._chunks = os.path.join(self.root, "chunks")
        self._tmp = os.path.join(self._chunks, "tmp")
        self._bad = os.path.join(self._chunks, "bad")
        self.quarantined = 0  # chunks moved to bad/ since start-up
        self._lock = threading.Lock()  # guards the state below, never held during I/O
        self._count = 0
        self._bytes = 0
        # partition -> {id: net count}; see the module docstring for why it counts.
        self._index: dict[int, dict[bytes, int]] = {}
        # partition -> number of ids with a positive count; absent when zero.
        self._present: dict[int, int] = {}
        self._space_at = -_SPACE_CACHE_S
        self._space_avail = 0
        # "ab/cd" fan-out dirs known to exist (and durable): skips a mkdir per put.
        self._dirs: set[str] = set()
        self._seq = itertools.count()  # unique temp names; next() is atomic
        self._use_link = True
        # O_DIRECT for large blobs until the filesystem refuses it (tmpfs, some FUSE and
        # network filesystems): then buffered writes, as before.
        self._use_direct = fsync and hasattr(os, "O_DIRECT")
        self._rename_locks = [threading.Lock() for _ in range(64)]  # only without hard links
        try:
            os.makedirs(self._tmp, exist_ok=True)
            os.makedirs(self._bad, exist_ok=True)
            self._clean_tmp()
            self._scan()
        except OSError as exc:
            raise from_oserror(exc, f"opening chunk store {self._chunks}") from exc

    # -- start-up ---------------------------------------------------------------
    def _clean_tmp(self) -> None:
        """Remove temp files left by a crash (they were never published)."""
        removed = 0
        with os.scandir(self._tmp) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    _unlink_quietly(entry.path)
                removed += 1
        if removed:
            log.info("removed %d leftover temp file(s) from %s", removed, self._tmp)

    def _scan(self) -> None:
        """Count and index stored chunks once, so stats() and the index need not walk the disk."""
        started = time.monotonic()
        count = size = 0
        ids: list[bytes] = []
        for entry in self._walk(record_dirs=True):
            count += 1
            size += entry.stat(follow_symlinks=False).st_size
            ids.append(bytes.fromhex(entry.name))
        with self._lock:
            self._count, self._bytes = count, size
            self._index.clear()
            self._present.clear()
            for cid in ids:
                self._index_move(cid, +1)
        log.info(
            "chunk store %s: %d chunks, %d bytes (scanned in %.2fs)",
            self._chunks,
            count,
            size,
            time.monotonic() - started,
        )

    def _walk(self, *, record_dirs: bool = False) -> Iterator[os.DirEntry[str]]:
        """Every chunk file; skips tmp/, bad/ and anything not named like a chunk.

        tmp/ and bad/ are skipped because :meth:`_subdirs` only takes
        two-hex-digit names; a test pins this, as a quarantined chunk served
        or counted again would defeat the quarantine.
        """
        for top in self._subdirs(self._chunks):
            for mid in self._subdirs(top.path):
                if record_dirs:  # at start-up every existing dir is as durable as it will get
                    self._dirs.add(f"{top.name}/{mid.name}")
                prefix = top.name + mid.name
                try:
                    with os.scandir(mid.path) as it:
                        for entry in it:
                            name = entry.name
                            if (
                                name.startswith(prefix)
                                and _HEX_ID.fullmatch(name)
                                and entry.is_file(follow_symlinks=False)
                            ):
                                yield entry
                except FileNotFoundError:
                    continue

    @staticmethod
    def _subdirs(path: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as it:
                return [e for e in it if _HEX2.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    # -- naming -----------------------------------------------------------------
    @staticmethod
    def _hex(chunk_id: bytes) -> str:
        if not isinstance(chunk_id, bytes) or len(chunk_id) != ID_SIZE:
            raise InvalidArgument(f"chunk id must be {ID_SIZE} bytes, got {chunk_id!r:.80}")
        return chunk_id.hex()

    def _path(self, hexid: str) -> str:
        return os.path.join(self._chunks, chunk_relpath(hexid))

    def path_of(self, chunk_id: bytes) -> Path:
        """Where the chunk lives (whether or not it exists)."""
        return Path(self._path(self._hex(chunk_id)))

    # -- writing ----------------------------------------------------------------
    def put(self, chunk_id: bytes, blob: bytes) -> bool:
        """Store ``blob`` under ``chunk_id``; False if it was already stored.

        Raises CorruptChunk for a blob that fails verification and NoSpace
        when the disk (or the configured reserve) is full.
        """
        hexid = self._hex(chunk_id)
        verify(blob)
        final = self._path(hexid)
        if self._exists(final):
            return False
        self._check_reserve(hexid, len(blob))
        self._ensure_dir(hexid)
        tmp = self._write_temp(hexid, blob)
        try:
            created = self._publish(hexid, tmp, final)
        finally:
            _unlink_quietly(tmp)
        if not created:
            return False
        with self._lock:
            self._count += 1
            self._bytes += len(blob)
            self._space_avail -= len(blob)
            self._index_move(chunk_id, +1)
        if self.fsync:
            # The chunk is complete and counted; a failure here is reported but leaves it.
            self._sync(os.path.dirname(final), f"syncing directory of chunk {hexid}")
        self._dir_durable(hexid)
        return True

    def _sync(self, directory: str, context: str) -> None:
        try:
            _sync_dir(directory)
        except OSError as exc:
            raise self._error(exc, context) from exc

    def _error(self, exc: OSError, context: str) -> DfsError:
        if exc.errno in _NO_SPACE_ERRNOS:
            return NoSpace(f"{context}: no space left in {self._chunks} ({exc.strerror})")
        return from_oserror(exc, context)

    def _check_reserve(self, hexid: str, size: int) -> None:
        if self.reserve_bytes <= 0:
            return
        avail = self._avail_bytes()
        if avail - size < self.reserve_bytes:
            raise NoSpace(
                f"storing chunk {hexid} ({size} bytes) would leave {avail - size} bytes free in "
                f"{self._chunks}, below the reserve of {self.reserve_bytes}"
            )

    def _avail_bytes(self) -> int:
        now = time.monotonic()
        with self._lock:
            if now - self._space_at < _SPACE_CACHE_S:
                return self._space_avail
        try:
            st = os.statvfs(self._chunks)
        except OSError as exc:
            raise from_oserror(exc, f"statvfs {self._chunks}") from exc
        avail = st.f_bavail * st.f_frsize
        with self._lock:
            self._space_at, self._space_avail = now, avail
        return avail

    def _ensure_dir(self, hexid: str) -> None:
        """Create the chunk's fan-out directory if needed; made durable by :meth:`_dir_durable`."""
        rel = f"{hexid[:2]}/{hexid[2:4]}"
        if rel in self._dirs:
            return
        mid = os.path.join(self._chunks, rel)
        try:
            os.makedirs(mid, exist_ok=True)
        except OSError as exc:
            raise self._error(exc, f"creating chunk directory {mid}") from exc

    def _dir_durable(self, hexid: str) -> None:
        """Sync the parents of a fan-out directory not yet known durable (after the chunk's
        own directory was synced, before the put returns).

        Syncing them after the link rather than right after the mkdir lets one journal
        commit cover the new directories and the chunk's entry: on ext4 and XFS a
        directory fsync commits every metadata change before it, so these two syncs
        usually find nothing left to write.  A crash before they finish loses only an
        unacknowledged chunk.
        """
        rel = f"{hexid[:2]}/{hexid[2:4]}"
        if rel in self._dirs:
            return
        top = os.path.join(self._chunks, hexid[:2])
        if self.fsync:
            self._sync(top, f"syncing chunk directory {top}")
            self._sync(self._chunks, f"syncing chunk directory {self._chunks}")
        self._dirs.add(rel)  # only after it is durable: others then skip the syncs

    def _write_temp(self, hexid: str, blob: bytes) -> str:
        """Write and fsync ``blob`` to a new temp file; on failure remove it."""
        tmp = os.path.join(self._tmp, f"{hexid}.{os.getpid()}.{next(self._seq)}")
        direct = self._use_direct and len(blob) >= _DIRECT_MIN_BYTES
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags | os.O_DIRECT if direct else flags, _FILE_MODE)
            except OSError as exc:
                if not direct or exc.errno != errno.EINVAL:
                    raise
                self._direct_refused(exc)
                direct = False
                fd = os.open(tmp, flags, _FILE_MODE)
        except OSError as exc:
            raise self._error(exc, f"creating temp file for chunk {hexid}") from exc
        try:
            try:
                if not (direct and self._write_direct(fd, blob)):
                    view = memoryview(blob)
                    while view:
                        view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise self._error(exc, f"writing chunk {hexid} ({len(blob)} bytes)") from exc
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _write_direct(self, fd: int, blob: bytes) -> bool:
        """Write ``blob`` through O_DIRECT; False (nothing written) if the filesystem refuses.

        A large blob goes from an aligned staging buffer straight to the device
        instead of being copied into the page cache and written back at fsync:
        on the write path that copy was the daemon's largest cost (about 60% of
        its CPU per GiB, measured with perf), and a chunk just written is rarely
        read back soon.  The length is padded to the alignment and the file then
        cut to size; the fsync that follows still makes data and size durable.
        """
        size = len(blob)
        padded = _aligned_up(size)
        staging = _staging.get(padded)
        staging[:size] = blob
        staging[size:padded] = bytes(padded - size)
        view = memoryview(staging)
        try:
            done = 0
            while done < padded:
                written = os.write(fd, view[done:padded])
                if written <= 0 or written % _DIRECT_ALIGN:
                    raise OSError(errno.EIO, f"short O_DIRECT write ({written} bytes)")
                done += written
        except OSError as exc:
            if exc.errno != errno.EINVAL or done:
                raise
            self._direct_refused(exc)
            # Nothing was written: carry on through the page cache on the same file.
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            return False
        finally:
            view.release()
        os.ftruncate(fd, size)
        return True

    def _direct_refused(self, exc: OSError) -> None:
        if self._use_direct:
            self._use_direct = False
            log.info("%s refuses O_DIRECT (%s); writing chunks through the page cache", self._chunks, exc)

    def _publish(self, hexid: str, tmp: str, final: str) -> bool:
        """Give the written temp file its final name; False if the chunk already exists."""
        for attempt in (1, 2):
            try:
                return self._link(hexid, tmp, final)
            except FileNotFoundError as exc:
                # The fan-out dir vanished behind our cache: recreate it once.
                self._dirs.discard(f"{hexid[:2]}/{hexid[2:4]}")
                if attempt == 2:
                    raise self._error(exc, f"publishing chunk {hexid}") from exc
                self._ensure_dir(hexid)
            except OSError as exc:
                raise self._error(exc, f"publishing chunk {hexid}") from exc
        raise AssertionError("unreachable")

    def _link(self, hexid: str, tmp: str, final: str) -> bool:
        if self._use_link:
            try:
                os.link(tmp, final)
                return True
            except FileExistsError:
                os.utime(final)  # stored already: now in use again (see old_ids)
                return False  # a concurrent put of the same id won
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                log.info("%s cannot hard-link (%s); publishing chunks by rename", self._chunks, exc)
                self._use_link = False
        # rename() would silently replace, so check-then-rename under a per-id stripe lock.
        with self._rename_locks[int(hexid[:4], 16) % len(self._rename_locks)]:
            if self._exists(final):
                return False
            os.rename(tmp, final)
            return True

    # -- reading ----------------------------------------------------------------
    def get(self, chunk_id: bytes) -> bytes:
        """The stored blob, verified; ChunkMissing if absent, CorruptChunk if damaged."""
        hexid = self._hex(chunk_id)
        path = self._path(hexid)
        try:
            with open(path, "rb", buffering=0) as f:
                blob = f.read()
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {hexid} is not stored in {self._chunks}") from None
        except OSError as exc:
            if exc.errno == errno.EIO:
                # Unreadable media is a damaged chunk: callers can repair it like one.
                raise CorruptChunk(f"chunk {hexid} at {path} is unreadable: {exc.strerror}") from exc
            raise from_oserror(exc, f"reading chunk {hexid}") from exc
        try:
            verify(blob)
        except CorruptChunk as exc:
            with self._lock:
                self.checksum_failures += 1
            log.warning("corrupt chunk %s at %s: %s", hexid, path, exc.message)
            raise CorruptChunk(f"chunk {hexid} at {path} is corrupt: {exc.message}") from None
        return blob

    @staticmethod
    def _exists(path: str) -> bool:
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def exists(self, chunk_id: bytes) -> bool:
        return self._exists(self._path(self._hex(chunk_id)))

    def has(self, chunk_ids: list[bytes]) -> list[bool]:
        """Which chunks are stored; each one found is touched, as a writer is about to reuse it."""
        found = [self.exists(cid) for cid in chunk_ids]
        for cid, there in zip(chunk_ids, found, strict=True):
            if there:
                self.touch(cid)
        return found

    def touch(self, chunk_id: bytes) -> None:
        """Mark a chunk as just used: the orphan sweep only takes chunks left untouched a long time."""
        try:
            os.utime(self._path(self._hex(chunk_id)))
        except OSError:
            pass  # gone or read-only: the sweep's reference check still protects referenced chunks

    def old_ids(self, older_than_s: float) -> list[bytes]:
        """Chunks whose files were last written or touched more than ``older_than_s`` ago."""
        cutoff = time.time() - older_than_s
        out: list[bytes] = []
        for entry in self._walk():
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    out.append(bytes.fromhex(entry.name))
            except FileNotFoundError:
                continue
        return out

    def stored_bytes(self, chunk_id: bytes) -> int:
        """Size on disk of the stored blob (header included)."""
        hexid = self._hex(chunk_id)
        try:
            return os.stat(self._path(hexid)).st_size
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {hexid} is not stored in {self._chunks}") from None
        except OSError as exc:
            raise from_oserror(exc, f"stat of chunk {hexid}") from exc

    def iter_ids(self) -> Iterator[bytes]:
        """Every stored chunk id, in no particular order."""
        for entry in self._walk():
            yield bytes.fromhex(entry.name)

    def scrub(self, chunk_ids: Iterable[bytes]) -> list[bytes]:
        """The ids among ``chunk_ids`` that are missing or fail verification."""
        bad: list[bytes] = []
        for cid in chunk_ids:
            try:
                self.get(cid)
            except (CorruptChunk, ChunkMissing):
                bad.append(cid)
        return bad

    # -- deleting ---------------------------------------------------------------
    def delete(self, chunk_ids: Iterable[bytes]) -> int:
        """Remove the given chunks (absent ones are ignored); returns how many were removed."""
        removed = freed = 0
        dirs: set[str] = set()
        gone: list[bytes] = []
        try:
            for cid in chunk_ids:
                hexid = self._hex(cid)
                path = self._path(hexid)
                try:
                    # A put cannot replace an existing chunk, so this size is the one unlinked.
                    size = os.stat(path).st_size
                    os.unlink(path)
                except FileNotFoundError:
                    continue  # absent, or a concurrent delete won
                except OSError as exc:
                    raise from_oserror(exc, f"deleting chunk {hexid}") from exc
                removed += 1
                freed += size
                gone.append(cid)
                dirs.add(os.path.dirname(path))
        finally:
            with self._lock:
                self._count -= removed
                self._bytes -= freed
                self._space_avail += freed
                for cid in gone:
                    self._index_move(cid, -1)
        if self.fsync:
            for d in dirs:
                self._sync(d, f"syncing chunk directory {d}")
        return removed

    def quarantine(self, chunk_id: bytes) -> bool:
        """Move a (corrupt) chunk to ``bad/``; False if it was not stored.

        From then on the chunk is not served, counted or indexed, so a peer's
        good copy can be stored under its id again (put() would refuse while
        the bad file sat in place).  The file is kept, not deleted, so the
        operator can look at what the disk did to it.
        """
        hexid = self._hex(chunk_id)
        path = self._path(hexid)
        dest = os.path.join(self._bad, f"{hexid}.{time.time_ns()}")
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return False  # never stored, or deleted or quarantined meanwhile
        except OSError as exc:
            raise from_oserror(exc, f"quarantining chunk {hexid}") from exc
        try:
            # Stat the new name, which is ours alone: that is exactly the file we moved.
            size = os.stat(dest, follow_symlinks=False).st_size
        except OSError as exc:
            size = 0
            log.warning("cannot stat quarantined chunk %s: %s", dest, exc)
        with self._lock:
            self._count -= 1
            self._bytes -= size
            self._space_avail += size
            self.quarantined += 1
            self._index_move(chunk_id, -1)
        log.warning("quarantined chunk %s to %s", hexid, dest)
        if self.fsync:
            self._sync(os.path.dirname(path), f"syncing directory of quarantined chunk {hexid}")
            self._sync(self._bad, f"syncing {self._bad}")
        return True

    # -- partition index --------------------------------------------------------
    def _index_move(self, chunk_id: bytes, delta: int) -> None:
        """Add ``delta`` to the id's count in the partition index.  Caller holds ``_lock``."""
        part = partition_of(chunk_id)
        ids = self._index.get(part)
        if ids is None:
            ids = self._index[part] = {}
        old = ids.get(chunk_id, 0)
        new = old + delta
        if new:
            ids[chunk_id] = new
        else:
            del ids[chunk_id]
            if not ids:
                del self._index[part]
        if (old > 0) != (new > 0):
            present = self._present.get(part, 0) + (1 if new > 0 else -1)
            if present:
                self._present[part] = present
            else:
                del self._present[part]

    def ids_in_partition(self, partition: int) -> list[bytes]:
        """The stored ids in one partition, sorted (what anti-entropy exchanges)."""
        if not isinstance(partition, int) or not 0 <= partition < PARTITIONS:
            raise InvalidArgument(f"partition must be 0..{PARTITIONS - 1}, got {partition!r:.40}")
        with self._lock:
            ids = [cid for cid, n in self._index.get(partition, {}).items() if n > 0]
        ids.sort()  # outside the lock: puts and deletes need not wait for it
        return ids

    def partition_digests(self) -> dict[int, bytes]:
        """:func:`ids_digest` of every non-empty partition.

        Each partition is read under the lock on its own, so the lock is never
        held for the whole index; the result is per-partition consistent,
        which is all a per-partition comparison needs.
        """
        with self._lock:
            parts = sorted(self._present)
        out: dict[int, bytes] = {}
        for part in parts:
            ids = self.ids_in_partition(part)
            if ids:  # emptied since the snapshot of partitions
                out[part] = ids_digest(ids)
        return out

    def partition_counts(self) -> dict[int, int]:
        """How many chunks each non-empty partition holds."""
        with self._lock:
            return dict(self._present)

    # -- accounting -------------------------------------------------------------
    def disk_report(self) -> list[dict[str, Any]]:
        """Per data disk, what ``dfs disks`` shows: one disk here (a DiskSet reports several)."""
        st = self.stats()
        return [
            {
                "path": str(self.root),
                "weight": 1.0,
                "state": "ok",
                "reason": "",
                "used_bytes": st["used_bytes"],
                "free_bytes": st["avail_bytes"],
                "total_bytes": st["total_bytes"],
                "chunk_count": st["chunk_count"],
                "io_errors": 0,
                "io_errors_recent": 0,
                "checksum_errors": st["checksum_failures"],
                "drain_moved": 0,
            }
        ]

    def stats(self) -> dict[str, int]:
        """Capacity of the filesystem holding the store, and what the store uses."""
        try:
            st = os.statvfs(self._chunks)
        except OSError as exc:
            raise from_oserror(exc, f"statvfs {self._chunks}") from exc
        with self._lock:
            return {
                "total_bytes": st.f_blocks * st.f_frsize,
                "free_bytes": st.f_bfree * st.f_frsize,
                "avail_bytes": st.f_bavail * st.f_frsize,
                "chunk_count": self._count,
                "used_bytes": self._bytes,
                "checksum_failures": self.checksum_failures,
            }
