"""Several data disks on one host: a :class:`DiskSet` is a chunk store over one
:class:`~daemon.chunks.ChunkStore` per disk directory.

Callers see the :class:`ChunkStore` interface unchanged (DiskSet is one), so the
chunk handlers, repair, scrub, upkeep, gossip and metrics need no change.

Placement: a new chunk goes to the writable disk with the highest weighted
rendezvous draw ``ln(u) / weight`` for its id, ``u`` from xxh3 of the id seeded
with a BLAKE2b of the disk's path (the style of :mod:`dfs.core.placement`).
Adding a disk moves only the ids it wins (about weight share of them); reads
look on the preferred disk first and then on the others, so a chunk stored
before a disk set change, or moved by a drain, is still found.

Health, per disk (state ``ok``, ``failed``, ``draining``, ``drained``):

- a write refused with EROFS, a store root that vanished or turned read-only
  (checked at most every :data:`CHECK_INTERVAL_S` by the operations that pass
  by, and by :meth:`DiskSet.disks`), or more than ``max_io_errors`` I/O
  errors (OSError other than not-found and no-space) or ``max_checksum_errors``
  checksum failures within ``error_window_s`` marks the disk ``failed``;
- a failed disk takes no writes and serves no reads: its chunks drop out of
  :meth:`has`, :meth:`iter_ids` and the partition digests, so anti-entropy on
  the other nodes sees them missing here and re-replicates them; the other
  disks keep serving;
- a failed disk comes back only by an operator's ``dfs disks reset PATH``
  (which opens the store again and re-scans it) or a daemon restart: a disk
  that flaps must not be trusted again on its own;
- ``dfs disks drain PATH`` stops writes to the disk and moves its chunks to
  the other writable disks in a background thread (at most
  ``drain_bytes_per_s``), then marks it ``drained``: it can be removed from
  ``[storage] disks``.  Drained paths are remembered in ``<data dir>/disks.json``
  so a restart does not write to them again; ``dfs disks undrain PATH`` undoes it.

Identity (several disks only): each disk directory holds a marker file
:data:`MARKER` with a random id, made when the disk is first used, and the
ids are remembered in ``disks.json``.  A disk whose marker is missing although
its id is remembered is failed at open instead of used: an unmounted mount
point (an empty directory on the root filesystem) or a replaced disk never
takes chunks silently.  A marker naming another disk's id (disks swapped) is
failed too.  ``dfs disks reset PATH`` is the operator's word that the
directory is the right one: it takes a missing or other marker as a new disk.

Thread-safety: like ChunkStore, called from several worker threads; ``_lock``
guards the per-disk state only and is never held during I/O.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import xxhash

from daemon.chunks import ChunkStore, ids_digest
from dfs.core.errors import ChunkMissing, ConfigError, CorruptChunk, DfsError, InvalidArgument, NoSpace

log = logging.getLogger("dfs.disks")

T = TypeVar("T")

_SEED_PERSON = b"dfs-disk-v1"
_U_SHIFT = 64 - 52
_U_SCALE = 2.0**-52
#: How often passing operations re-check that each disk's root is still there and writable.
CHECK_INTERVAL_S = 2.0
ERROR_WINDOW_S = 600.0
MAX_IO_ERRORS = 10
MAX_CHECKSUM_ERRORS = 50
#: Error timestamps kept per disk and kind: bounded whatever the thresholds say.
_ERROR_HISTORY = 1024
DRAIN_BYTES_PER_S = 64 * 1024 * 1024
#: A drain passes over the disk again for chunks written while it started; this many at most.
_DRAIN_PASSES = 3
STATE_FILE = "disks.json"
#: The disk identity marker in each disk directory of a set of several.
MARKER = "dfs-disk.id"


class DiskState(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    DRAINING = "draining"
    DRAINED = "drained"


#: States whose chunks are served (a draining or drained disk keeps what has not moved yet).
_READABLE = frozenset({DiskState.OK, DiskState.DRAINING, DiskState.DRAINED})


def disk_seed(path: str) -> int:
    """The 64-bit xxh3 seed of a disk: BLAKE2b of its path, stable across restarts."""
    digest = hashlib.blake2b(path.encode("utf-8"), digest_size=8, person=_SEED_PERSON).digest()
    return int.from_bytes(digest, "big")


def draw(seed: int, weight: float, chunk_id: bytes) -> float:
    """A disk's rendezvous draw for a chunk: ``ln(u) / weight``, higher is better."""
    h = xxhash.xxh3_64_intdigest(chunk_id, seed)
    return math.log(((h >> _U_SHIFT) + 0.5) * _U_SCALE) / weight


@dataclass
class Disk:
    """One data directory and what this node knows about its health."""

    path: str
    weight: float
    store: ChunkStore | None  # None: it could not be opened (failed from the start)
    state: DiskState = DiskState.OK
    reason: str = ""
    seed: int = 0
    io_errors_total: int = 0
    checksum_errors_total: int = 0
    io_error_times: deque[float] = field(default_factory=lambda: deque(maxlen=_ERROR_HISTORY))
    checksum_error_times: deque[float] = field(default_factory=lambda: deque(maxlen=_ERROR_HISTORY))
    drain_moved: int = 0

    def __post_init__(self) -> None:
        self.seed = disk_seed(self.path)


def _is_io_error(exc: BaseException) -> bool:
    """Whether a store error is the disk's fault: an OSError other than not-found or no-space."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if not isinstance(cause, OSError) or isinstance(cause, (FileNotFoundError, NotADirectoryError)):
        return False
    return cause.errno not in (errno.ENOSPC, errno.EDQUOT)


def _erofs(exc: BaseException) -> bool:
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.EROFS


class DiskSet(ChunkStore):
    """Chunks spread over several disks by weighted rendezvous hashing (see the module docstring).

    A ChunkStore subclass so every caller typed on ChunkStore takes it as is; it shares no
    state with the base class and overrides every public operation but ``has``, which
    it takes as is (``exists`` and ``touch`` there are this class's).
    """

    def __init__(  # thresholds are arguments so tests can use small ones
        self,
        disks: Iterable[tuple[str | os.PathLike[str], float]],
        *,
        fsync: bool = True,
        reserve_bytes: int = 0,
        state_path: str | os.PathLike[str] | None = None,
        error_window_s: float = ERROR_WINDOW_S,
        max_io_errors: int = MAX_IO_ERRORS,
        max_checksum_errors: int = MAX_CHECKSUM_ERRORS,
        drain_bytes_per_s: int = DRAIN_BYTES_PER_S,
    ) -> None:
        # The base initializer is not called: it would open a store at ``root``.
        entries = [(os.fspath(p), float(w)) for p, w in disks]
        if not entries:
            raise ConfigError("a disk set needs at least one disk")
        if len({p for p, _ in entries}) != len(entries):
            raise ConfigError("a disk is listed twice")
        self.root = Path(entries[0][0])
        self.fsync = fsync
        self.reserve_bytes = reserve_bytes
        self.error_window_s = error_window_s
        self.max_io_errors = max_io_errors
        self.max_checksum_errors = max_checksum_errors
        self.drain_bytes_per_s = drain_bytes_per_s
        self._state_path = None if state_path is None else Path(state_path)
        self._lock = threading.Lock()  # guards disk states and counters, never held during I/O
        self._checked_at = time.monotonic()
        self._drains: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        drained, self._ids = self._load_state()
        self._drained_at_start = drained  # for disks not opened yet when the state is saved
        self._disks: list[Disk] = []
        for path, weight in entries:
            if not weight > 0:
                raise ConfigError(f"disk {path}: weight must be > 0, got {weight}")
            disk = Disk(path, weight, None)
            if os.path.exists(path) and not os.path.isdir(path):
                raise ConfigError(f"disk {path} is not a directory")
            # A lone disk (the default: the data dir) that cannot be opened stops the daemon, as
            # before there were several; one of several is failed, and the others serve.
            self._open(disk, fatal=len(entries) == 1)
            if path in drained and disk.state is DiskState.OK:
                disk.state = DiskState.DRAINED
            self._disks.append(disk)

    # -- opening and state ----------------------------------------------------------------------
    def _open(self, disk: Disk, *, fatal: bool = False, adopt: bool = False) -> None:
        """Open (or re-open) the disk's store; unless ``fatal``, a disk that cannot be opened is
        failed, not an error: one dead disk must not keep the node's other disks offline.
        ``adopt``: a missing or foreign identity marker makes it a new disk (an operator's reset)."""
        if fatal:
            disk.store, disk.state, disk.reason = self._store(disk.path), DiskState.OK, ""
            return
        if not os.path.isdir(disk.path):
            disk.store, disk.state, disk.reason = None, DiskState.FAILED, "directory missing"
            log.error("disk %s: directory missing; marked failed", disk.path)
            return
        wrong = self._check_marker(disk.path, adopt=adopt)
        if wrong:
            disk.store, disk.state, disk.reason = None, DiskState.FAILED, wrong
            log.error("disk %s: %s; marked failed", disk.path, wrong)
            return
        try:
            disk.store = self._store(disk.path)
        except DfsError as exc:
            disk.store, disk.state, disk.reason = None, DiskState.FAILED, f"cannot open: {exc.message}"
            log.error("disk %s cannot be opened (%s); marked failed", disk.path, exc.message)
            return
        disk.state, disk.reason = DiskState.OK, ""

    def _store(self, path: str) -> ChunkStore:
        return ChunkStore(path, fsync=self.fsync, reserve_bytes=self.reserve_bytes)

    def _load_state(self) -> tuple[set[str], dict[str, str]]:
        """(drained paths, disk path -> identity id) as ``disks.json`` remembers them."""
        if self._state_path is None:
            return set(), {}
        try:
            raw = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return set(), {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self._state_path, exc)
            return set(), {}
        if not isinstance(raw, dict):
            return set(), {}
        drained = {p for p in raw.get("drained", []) if isinstance(p, str)}
        ids = raw.get("ids", {})
        known = (
            {p: i for p, i in ids.items() if isinstance(p, str) and isinstance(i, str)}
            if isinstance(ids, dict)
            else {}
        )
        return drained, known

    def _save_drained(self) -> None:
        if self._state_path is None:
            return
        with self._lock:
            opened = {d.path for d in self._disks}
            drained = sorted(
                {d.path for d in self._disks if d.state is DiskState.DRAINED}
                | {p for p in self._drained_at_start if p not in opened}
            )
            ids = dict(self._ids)
        tmp = self._state_path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps({"drained": drained, "ids": ids}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state_path)
        except OSError as exc:  # the drain itself stands; only its memory across restarts is lost
            log.error("cannot record the disks' state in %s: %s", self._state_path, exc)

    def _check_marker(self, path: str, *, adopt: bool) -> str:
        """Why the directory at ``path`` is not the disk remembered there ("" if it is, or it
        is new: then it gets a marker and its id is remembered)."""
        marker = os.path.join(path, MARKER)
        try:
            with open(marker) as f:
                found: str | None = f.read().strip()
        except FileNotFoundError:
            found = None
        except OSError as exc:
            return f"identity marker unreadable: {exc.strerror}"
        known = self._ids.get(path)
        if found is not None and (known is None or found == known):
            if known is None:
                self._ids[path] = found
                self._save_drained()
            return ""
        if known is not None and not adopt:
            if found is None:
                return (
                    f"identity marker {MARKER} missing (an unmounted mount point, or a new disk): "
                    "mount the disk, or `dfs disks reset PATH` to take the directory as a new disk"
                )
            return f"holds disk {found}, not {known} (disks swapped?): `dfs disks reset PATH` to take it"
        new = secrets.token_hex(16)
        tmp = marker + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(new + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, marker)
        except OSError as exc:
            return f"cannot write identity marker: {exc.strerror}"
        self._ids[path] = new
        self._save_drained()
        return ""

    def _fail(self, disk: Disk, reason: str) -> None:
        with self._lock:
            if disk.state is DiskState.FAILED:
                return
            disk.state, disk.reason = DiskState.FAILED, reason
        log.error("disk %s failed: %s; its chunks are re-replicated from other nodes", disk.path, reason)

    def _note_error(self, disk: Disk, exc: BaseException, *, reading: bool) -> None:
        """Count an error against the disk and fail it past a threshold."""
        now = time.monotonic()
        reason = ""
        if _erofs(exc):
            reason = "read-only filesystem"
        elif isinstance(exc, CorruptChunk) and not _is_io_error(exc):
            if not reading:
                return  # a put's blob failed verification: the sender's fault, not the disk's
            with self._lock:
                disk.checksum_errors_total += 1
                disk.checksum_error_times.append(now)
                recent = sum(1 for t in disk.checksum_error_times if now - t <= self.error_window_s)
            if recent > self.max_checksum_errors:
                reason = f"{recent} checksum failures within {self.error_window_s:.0f} s"
        elif _is_io_error(exc):
            with self._lock:
                disk.io_errors_total += 1
                disk.io_error_times.append(now)
                recent = sum(1 for t in disk.io_error_times if now - t <= self.error_window_s)
            if recent > self.max_io_errors:
                reason = f"{recent} I/O errors within {self.error_window_s:.0f} s"
        if reason:
            self._fail(disk, reason)

    def _probe(self, disk: Disk) -> str:
        """Why the disk's root is unusable, or "" if it looks fine (no write)."""
        root = os.path.join(disk.path, "chunks")
        try:
            st = os.statvfs(root)
        except FileNotFoundError:
            return "filesystem gone (chunks directory missing)"
        except OSError as exc:
            return f"statvfs failed: {exc.strerror}"
        if st.f_flag & os.ST_RDONLY:
            return "read-only filesystem"
        return ""

    def check(self) -> None:
        """Probe every serving disk's root now (cheap: one statvfs each)."""
        with self._lock:
            self._checked_at = time.monotonic()
            serving = [d for d in self._disks if d.state is not DiskState.FAILED]
        for disk in serving:
            reason = self._probe(disk)
            if reason:
                self._fail(disk, reason)

    def _maybe_check(self) -> None:
        if time.monotonic() - self._checked_at >= CHECK_INTERVAL_S:
            self.check()

    def _readable(self) -> list[Disk]:
        self._maybe_check()
        with self._lock:
            return [d for d in self._disks if d.state in _READABLE and d.store is not None]

    def _ranked(self, chunk_id: bytes, disks: list[Disk]) -> list[Disk]:
        """``disks`` by their draw for the chunk, the preferred first."""
        if len(disks) <= 1:
            return disks
        return sorted(disks, key=lambda d: draw(d.seed, d.weight, chunk_id), reverse=True)

    def _on(self, disk: Disk, op: Callable[[ChunkStore], T], *, reading: bool) -> T:
        """``op`` on one disk's store, its errors counted against that disk."""
        assert disk.store is not None
        try:
            return op(disk.store)
        except (ChunkMissing, InvalidArgument):
            raise
        except (DfsError, OSError) as exc:
            self._note_error(disk, exc, reading=reading)
            raise

    def preferred(self, chunk_id: bytes) -> str:
        """The path of the writable disk a new chunk with this id goes to (NoSpace: none)."""
        with self._lock:
            writable = [d for d in self._disks if d.state is DiskState.OK and d.store is not None]
        if not writable:
            raise NoSpace("no writable disk on this node")
        return self._ranked(chunk_id, writable)[0].path

    # -- writing ------------------------------------------------------------------------------
    def put(self, chunk_id: bytes, blob: bytes) -> bool:
        self._hex(chunk_id)
        readable = self._readable()
        if len(readable) > 1:  # one disk: its own put finds an existing copy
            for disk in readable:
                if self._held(disk, chunk_id):
                    return False
        return self._put_new(chunk_id, blob, exclude=None)

    def _held(self, disk: Disk, chunk_id: bytes) -> bool:
        try:
            return self._on(disk, lambda s: s.exists(chunk_id), reading=True)
        except DfsError:
            return False

    def _put_new(self, chunk_id: bytes, blob: bytes, *, exclude: Disk | None) -> bool:
        """Store on the first writable disk in preference order that takes it."""
        with self._lock:
            writable = [
                d for d in self._disks if d.state is DiskState.OK and d.store is not None and d is not exclude
            ]
        last: DfsError = NoSpace("no writable disk on this node")
        for disk in self._ranked(chunk_id, writable):
            try:
                return self._on(disk, lambda s: s.put(chunk_id, blob), reading=False)
            except CorruptChunk:
                raise  # the blob itself is bad: no disk will take it
            except DfsError as exc:
                last = exc  # full or failing: the next disk in order may take it
        raise last

    # -- reading ------------------------------------------------------------------------------
    def _first(self, chunk_id: bytes, op: Callable[[ChunkStore], T]) -> T:
        """``op`` on the disks in preference order until one has the chunk."""
        hexid = self._hex(chunk_id)
        error: DfsError | None = None
        for disk in self._ranked(chunk_id, self._readable()):
            try:
                return self._on(disk, op, reading=True)
            except ChunkMissing:
                continue
            except DfsError as exc:
                error = error or exc  # another disk may hold a good copy
        if error is not None:
            raise error
        raise ChunkMissing(f"chunk {hexid} is not stored on this node's disks")

    def get(self, chunk_id: bytes) -> bytes:
        return self._first(chunk_id, lambda s: s.get(chunk_id))

    def stored_bytes(self, chunk_id: bytes) -> int:
        return self._first(chunk_id, lambda s: s.stored_bytes(chunk_id))

    def path_of(self, chunk_id: bytes) -> Path:
        """Where the chunk lives: the disk holding it, else where a put would store it."""
        readable = self._ranked(chunk_id, self._readable())
        for disk in readable:
            assert disk.store is not None
            if disk.store.exists(chunk_id):
                return disk.store.path_of(chunk_id)
        if not readable or readable[0].store is None:
            raise ChunkMissing(f"chunk {chunk_id.hex()}: no readable disk on this node")
        return readable[0].store.path_of(chunk_id)

    def exists(self, chunk_id: bytes) -> bool:
        self._hex(chunk_id)
        return any(self._held(d, chunk_id) for d in self._ranked(chunk_id, self._readable()))

    def touch(self, chunk_id: bytes) -> None:
        for disk in self._readable():
            assert disk.store is not None
            disk.store.touch(chunk_id)

    def old_ids(self, older_than_s: float) -> list[bytes]:
        return list(dict.fromkeys(cid for d in self._readable() for cid in self._each(d, older_than_s)))

    def _each(self, disk: Disk, older_than_s: float) -> list[bytes]:
        try:
            return self._on(disk, lambda s: s.old_ids(older_than_s), reading=True)
        except DfsError:
            return []

    def iter_ids(self) -> Iterator[bytes]:
        seen: set[bytes] = set()
        for disk in self._readable():
            assert disk.store is not None
            for cid in disk.store.iter_ids():
                if cid not in seen:  # a chunk mid-drain sits on two disks for a moment
                    seen.add(cid)
                    yield cid

    def scrub(self, chunk_ids: Iterable[bytes]) -> list[bytes]:
        bad: list[bytes] = []
        for cid in chunk_ids:
            try:
                self.get(cid)
            except DfsError:
                bad.append(cid)
        return bad

    # -- deleting -----------------------------------------------------------------------------
    def delete(self, chunk_ids: Iterable[bytes]) -> int:
        ids = list(chunk_ids)
        removed = 0
        for disk in self._readable():
            removed += self._on(disk, lambda s: s.delete(ids), reading=False)
        return removed

    def quarantine(self, chunk_id: bytes) -> bool:
        holders = [d for d in self._readable() if self._held(d, chunk_id)]
        if len(holders) == 1:
            assert holders[0].store is not None
            return holders[0].store.quarantine(chunk_id)
        moved = False
        for disk in holders:  # several copies: only the damaged ones go
            assert disk.store is not None
            try:
                disk.store.get(chunk_id)
            except CorruptChunk:
                moved = disk.store.quarantine(chunk_id) or moved
            except DfsError:
                continue
        return moved

    # -- partition index ----------------------------------------------------------------------
    def ids_in_partition(self, partition: int) -> list[bytes]:
        ids: set[bytes] = set()
        for disk in self._readable():
            assert disk.store is not None
            ids.update(disk.store.ids_in_partition(partition))
        return sorted(ids)

    def partition_digests(self) -> dict[int, bytes]:
        parts: set[int] = set()
        for disk in self._readable():
            assert disk.store is not None
            parts.update(disk.store.partition_counts())
        out: dict[int, bytes] = {}
        for part in sorted(parts):
            ids = self.ids_in_partition(part)
            if ids:
                out[part] = ids_digest(ids)
        return out

    def partition_counts(self) -> dict[int, int]:
        """Summed over disks: a chunk mid-drain may count twice for a moment."""
        out: dict[int, int] = {}
        for disk in self._readable():
            assert disk.store is not None
            for part, n in disk.store.partition_counts().items():
                out[part] = out.get(part, 0) + n
        return out

    # -- accounting ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Sums: capacity and free space of the writable disks (each filesystem once), chunks
        and bytes of the readable ones, checksum failures of all; and how many disks are not ok."""
        self.check()
        total = free = avail = count = used = failures = 0
        devices: set[int] = set()
        with self._lock:
            disks = list(self._disks)
            not_ok = sum(1 for d in disks if d.state is not DiskState.OK)
        for disk in disks:
            if disk.store is None:
                continue
            failures += disk.store.checksum_failures
            if disk.state not in _READABLE:
                continue
            try:
                st = disk.store.stats()
                dev = os.stat(disk.path).st_dev
            except (DfsError, OSError) as exc:
                self._note_error(disk, exc, reading=True)
                continue
            count += st["chunk_count"]
            used += st["used_bytes"]
            if disk.state is DiskState.OK and dev not in devices:
                devices.add(dev)  # two disk directories on one filesystem: count its space once
                total += st["total_bytes"]
                free += st["free_bytes"]
                avail += st["avail_bytes"]
        return {
            "total_bytes": total,
            "free_bytes": free,
            "avail_bytes": avail,
            "chunk_count": count,
            "used_bytes": used,
            "checksum_failures": failures,
            "disks": len(disks),
            "disks_not_ok": not_ok,
        }

    def disk_report(self) -> list[dict[str, Any]]:
        """Per disk: path, weight, state, reason, used/free/total bytes, chunk count, errors."""
        self.check()
        now = time.monotonic()
        out: list[dict[str, Any]] = []
        with self._lock:
            disks = list(self._disks)
        for disk in disks:
            st: dict[str, int] = {}
            if disk.store is not None and disk.state is not DiskState.FAILED:
                with contextlib.suppress(DfsError):
                    st = disk.store.stats()
            with self._lock:
                recent_io = sum(1 for t in disk.io_error_times if now - t <= self.error_window_s)
                out.append(
                    {
                        "path": disk.path,
                        "weight": disk.weight,
                        "state": str(disk.state),
                        "reason": disk.reason,
                        "used_bytes": st.get("used_bytes", 0),
                        "free_bytes": st.get("avail_bytes", 0),
                        "total_bytes": st.get("total_bytes", 0),
                        "chunk_count": st.get("chunk_count", 0),
                        "io_errors": disk.io_errors_total,
                        "io_errors_recent": recent_io,
                        "checksum_errors": disk.checksum_errors_total,
                        "drain_moved": disk.drain_moved,
                    }
                )
        return out

    # -- operator actions ---------------------------------------------------------------------
    def _disk(self, path: str) -> Disk:
        for disk in self._disks:
            if disk.path == path or os.path.realpath(disk.path) == os.path.realpath(path):
                return disk
        raise InvalidArgument(f"no disk {path!r} on this node (see `dfs disks`)")

    def reset(self, path: str) -> dict[str, Any]:
        """Open a failed disk again (rescanning it) and clear its error counts."""
        disk = self._disk(path)
        with self._lock:
            if disk.state is not DiskState.FAILED:
                raise InvalidArgument(f"disk {disk.path} is {disk.state}, not failed")
        self._open(disk, adopt=True)
        with self._lock:
            disk.io_error_times.clear()
            disk.checksum_error_times.clear()
        if disk.state is DiskState.FAILED:
            raise InvalidArgument(f"disk {disk.path} is still unusable: {disk.reason}")
        log.warning("disk %s reset by an operator: serving again", disk.path)
        return self._report_of(disk)

    def drain(self, path: str) -> dict[str, Any]:
        """Stop writes to the disk and move its chunks to the other writable disks."""
        disk = self._disk(path)
        with self._lock:
            if disk.state is not DiskState.OK:
                raise InvalidArgument(f"disk {disk.path} is {disk.state}: only an ok disk can be drained")
            if not any(d.state is DiskState.OK for d in self._disks if d is not disk):
                raise InvalidArgument(f"disk {disk.path} is the only writable disk: nowhere to drain to")
            disk.state, disk.reason, disk.drain_moved = DiskState.DRAINING, "", 0
            worker = threading.Thread(target=self._drain, args=(disk,), name="dfs-drain", daemon=True)
            self._drains[disk.path] = worker
        worker.start()
        log.warning("draining disk %s", disk.path)
        return self._report_of(disk)

    def undrain(self, path: str) -> dict[str, Any]:
        """Take a draining or drained disk back into service (the drain thread stops)."""
        disk = self._disk(path)
        with self._lock:
            if disk.state not in (DiskState.DRAINING, DiskState.DRAINED):
                raise InvalidArgument(f"disk {disk.path} is {disk.state}, not draining or drained")
            disk.state, disk.reason = DiskState.OK, ""
        self._save_drained()
        return self._report_of(disk)

    def wait_drained(self, path: str, timeout_s: float) -> bool:
        """Wait for a running drain of ``path`` to end; True once the disk is drained."""
        worker = self._drains.get(self._disk(path).path)
        if worker is not None:
            worker.join(timeout_s)
        return self._disk(path).state is DiskState.DRAINED

    def close(self) -> None:
        """Stop running drains (they resume only when started again)."""
        self._stop.set()
        for worker in list(self._drains.values()):
            worker.join(5.0)

    def _report_of(self, disk: Disk) -> dict[str, Any]:
        return next(r for r in self.disk_report() if r["path"] == disk.path)

    def _draining(self, disk: Disk) -> bool:
        return disk.state is DiskState.DRAINING and not self._stop.is_set()

    def _drain(self, disk: Disk) -> None:
        """Drain thread: copy each chunk to its best other disk, then delete it here."""
        assert disk.store is not None
        store = disk.store
        started, budget_bytes = time.monotonic(), 0
        try:
            for _ in range(_DRAIN_PASSES):
                moved = 0
                for cid in list(store.iter_ids()):
                    if not self._draining(disk):
                        return
                    try:
                        blob = store.get(cid)
                    except ChunkMissing:
                        continue  # deleted meanwhile
                    except CorruptChunk:
                        store.quarantine(cid)  # repair fetches a good copy from a peer
                        continue
                    self._put_new(cid, blob, exclude=disk)
                    store.delete([cid])
                    moved += 1
                    with self._lock:
                        disk.drain_moved += 1
                    budget_bytes += len(blob)
                    # Bounded rate: stay behind drain_bytes_per_s on average (this is a thread).
                    ahead_s = budget_bytes / self.drain_bytes_per_s - (time.monotonic() - started)
                    if ahead_s > 0:
                        self._stop.wait(min(ahead_s, 1.0))
                if moved == 0:
                    break
        except DfsError as exc:
            with self._lock:
                disk.reason = f"drain stalled: {exc.message}"
            log.error("drain of disk %s stalled: %s", disk.path, exc.message)
            return
        with self._lock:
            if disk.state is not DiskState.DRAINING or self._stop.is_set():
                return
            disk.state = DiskState.DRAINED
        self._save_drained()
        log.warning("disk %s drained (%d chunks moved): it can be removed", disk.path, disk.drain_moved)
