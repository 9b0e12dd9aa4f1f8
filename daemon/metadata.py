"""The metadata service's synchronous core: namespace, inodes, block maps and chunk refcounts in SQLite.

:class:`MetaStore` owns one SQLite database and is driven from exactly one
thread (the daemon's metadata worker), so it needs no locking of its own.
Every mutating operation runs in one ``BEGIN IMMEDIATE`` transaction that
also appends a row to ``oplog`` (the seam for future replication), so either
all of an operation's effects are committed or none are.

Schema (see ``_SCHEMA``):

- ``inodes``: one row per inode.  ``stored`` caches the sum of the file's
  block-map ``stored_bytes`` plus the length of its inline data; st_blocks is
  derived from it.  Variable-size columns (symlink target, inline data) come
  last so the fixed attributes stay in the row's local payload.
- ``dentries``: ``(parent, name) -> ino`` with an AUTOINCREMENT ``id`` that is
  the readdir cookie (never reused; a renamed entry gets a new one).
- ``blocks``: the block map, ``(ino, idx) -> chunk_id, length, stored_bytes``.
- ``chunks``: one row per chunk with its refcount; ``zero_since_ns`` is set
  while the refcount is 0.  Only :meth:`MetaStore.gc_collect` deletes rows.
  ``replicas`` is the highest replication factor any write asked of the
  chunk (NULL: none asked; the cluster default applies), so repair knows how
  many copies a chunk needs without walking the files that name it.
- ``xattrs``, ``sessions``, ``opens`` (open counts per session and inode),
  ``oplog`` and ``config`` (the block size the block maps were written with;
  ``internal:<name>`` -> the inode of each internal root, see below;
  ``layout_epoch``, see ``nodes``).
- ``volumes``: ``name -> ino`` of a top-level directory plus its msgpack
  policy.  A row follows its directory: a rename within the root renames it,
  a move out of the root or a removal drops it.
- ``nodes``: the cluster's node registry (msgpack info per node id); the
  fields ``zone``, ``capacity_weight``, ``state`` and ``address`` make up the
  placement layout (:meth:`MetaStore.layout`).  Every change of the table
  bumps ``layout_epoch`` in the same transaction, so an epoch names exactly
  one layout and daemons can cache placement tables by epoch.
- ``s3_keys``: S3 access keys with their secrets.  Secrets never enter the
  oplog (its rows name the access key only).

Added tables are created with ``CREATE TABLE IF NOT EXISTS``, so an existing
database simply gains them on open; ``SCHEMA_VERSION`` changes only for
changes to existing tables, which :meth:`MetaStore._upgrade` applies at open
(version 2 added ``chunks.replicas``).  A database newer than the code is refused.

Internal roots (:data:`INTERNAL_DIRS`, e.g. ``uploads`` for S3 multipart
parts) are directories created at open that, like the root, have no dentry;
nothing under ``ROOT_INO`` reaches them, so the mount never shows them.  Their
contents are ordinary inodes managed with the ordinary operations.

Invariants (all checked, and where possible repaired, by :meth:`MetaStore.fsck`):

- inode numbers are never reused; the root is ``ROOT_INO`` and has no dentry;
- each internal root exists, is a directory other than the root, and has no
  dentry;
- a directory other than the root and the internal roots has exactly one
  dentry; a directory's nlink is 2 + its subdirectories (0 once removed); a
  non-directory's nlink is its number of dentries;
- an inode with nlink 0 exists only while some session holds it open;
- every directory is reachable from the root or an internal root, and none
  from itself;
- a chunk's refcount equals the number of block-map entries naming it;
- block entries lie below the file size and name chunks that are stored;
- only regular files hold inline data or blocks, never both, and inline data
  is no longer than the file;
- a volume row names a live top-level directory whose name is the row's name.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

import msgpack

from dfs import acl
from dfs.errors import (
    ChunkMissing,
    ConfigError,
    DfsError,
    Exists,
    InternalError,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    PermissionDenied,
    PreconditionFailed,
    RangeError,
    TooManyLinks,
    from_oserror,
)
from dfs.meta import (
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_NAME_MAX,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    Attr,
    BlockRef,
    DirEntry,
    FileMap,
    check_name,
    chown_clears,
)
from dfs.placement import Layout, LayoutNode, NodeState

SCHEMA_VERSION = 2
# Marks a directory put_object created only to hold an object (see MetaStore.remove_empty_parents).
IMPLICIT_XATTR = b"user.s3.implicit"
LINK_MAX = 65000
DIR_SIZE = 4096  # st_size reported for every directory: stable and what tools expect
_IFMT = 0o170000
_IFDIR = stat.S_IFDIR
_IFREG = stat.S_IFREG
_PERM_BITS = 0o7777
_RELATIME_NS = 24 * 3600 * 10**9
# create/open refresh their session at most this often (heartbeats always do): saves a page write.
_SESSION_REFRESH_NS = 10**9
_LOST_FOUND = b"lost+found"
# Per-directory (or per-file) overrides of the volume's policy, see MetaStore.policy.
REPLICAS_XATTR = b"user.dfs.replicas"
CONSISTENCY_XATTR = b"user.dfs.consistency"
MAX_REPLICAS = 7  # PlacementTable's default bound: more copies than this is a bug, not a policy
CONSISTENCY_LEVELS = ("strong", "quorum", "eventual")
_REPLICAS_VALUES = {str(n).encode(): n for n in range(1, MAX_REPLICAS + 1)}
_CONSISTENCY_VALUES = {level.encode(): level for level in CONSISTENCY_LEVELS}
# A parent walk longer than any real path only happens on a cycle (a corrupt database): stop there.
_MAX_DEPTH = 10_000
# Ids per ``IN (...)`` list, well under SQLite's bound-parameter limit.
_IN_BATCH = 500
_LAYOUT_EPOCH = "layout_epoch"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS inodes (
        ino INTEGER PRIMARY KEY AUTOINCREMENT,
        mode INTEGER NOT NULL,
        nlink INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        rdev INTEGER NOT NULL,
        size INTEGER NOT NULL,
        stored INTEGER NOT NULL,
        atime_ns INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        symlink BLOB,
        inline BLOB)""",
    """CREATE TABLE IF NOT EXISTS dentries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        parent INTEGER NOT NULL,
        name BLOB NOT NULL,
        ino INTEGER NOT NULL,
        is_dir INTEGER NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS dentries_by_name ON dentries (parent, name)",
    # readdir scans (parent, id > cookie) in id order.
    "CREATE INDEX IF NOT EXISTS dentries_by_cookie ON dentries (parent, id)",
    # Only directories are ever looked up by ino (parent walks); leaving files out of this
    # index saves a page write on every file create/unlink/rename.
    "CREATE INDEX IF NOT EXISTS dentries_dirs ON dentries (ino) WHERE is_dir = 1",
    """CREATE TABLE IF NOT EXISTS xattrs (
        ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
        PRIMARY KEY (ino, name)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS blocks (
        ino INTEGER NOT NULL, idx INTEGER NOT NULL, chunk_id BLOB NOT NULL,
        length INTEGER NOT NULL, stored_bytes INTEGER NOT NULL,
        PRIMARY KEY (ino, idx)) WITHOUT ROWID""",
    # ``replicas`` comes last: version-1 databases gain it by ALTER TABLE, which appends.
    """CREATE TABLE IF NOT EXISTS chunks (
        chunk_id BLOB PRIMARY KEY, refcount INTEGER NOT NULL,
        stored_bytes INTEGER NOT NULL, zero_since_ns INTEGER, replicas INTEGER) WITHOUT ROWID""",
    # gc_collect only ever looks at unreferenced chunks, oldest first.
    "CREATE INDEX IF NOT EXISTS chunks_unreferenced ON chunks (zero_since_ns) WHERE refcount = 0",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, last_seen_ns INTEGER NOT NULL) WITHOUT ROWID""",
    # Keyed by ino first: "is it open?" is the hot question; by-session scans (expiry) are rare
    # and the table only holds currently open files.
    """CREATE TABLE IF NOT EXISTS opens (
        ino INTEGER NOT NULL, session TEXT NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (ino, session)) WITHOUT ROWID""",
    # Plain rowid keys (no AUTOINCREMENT page write); _log continues from config's
    # 'oplog_seq' when oplog_trim emptied the table, so sequence numbers never repeat.
    """CREATE TABLE IF NOT EXISTS oplog (
        seq INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL,
        op TEXT NOT NULL, args BLOB NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS volumes (
        name TEXT PRIMARY KEY, ino INTEGER NOT NULL, policy BLOB NOT NULL,
        created_ns INTEGER NOT NULL) WITHOUT ROWID""",
    # Renames and removals in the root look up the row of the directory they touch.
    "CREATE INDEX IF NOT EXISTS volumes_by_ino ON volumes (ino)",
    """CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT PRIMARY KEY, info BLOB NOT NULL, updated_ns INTEGER NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS s3_keys (
        access_key TEXT PRIMARY KEY, secret TEXT NOT NULL, created_ns INTEGER NOT NULL,
        description TEXT NOT NULL) WITHOUT ROWID""",
)

# Directories outside the namespace (no dentry, unreachable from ROOT_INO), created at open.
INTERNAL_DIRS = ("uploads", "trash")
_INTERNAL_KEY = "internal:"
# The SQL list of their config keys, for queries that treat internal roots as roots.
_INTERNAL_KEYS_SQL = ", ".join(f"'{_INTERNAL_KEY}{name}'" for name in INTERNAL_DIRS)
_INTERNAL_INOS_SQL = f"SELECT value FROM config WHERE key IN ({_INTERNAL_KEYS_SQL})"

# Scratch TEMP tables of the set-based multi-inode operations (remove_tree, snapshot).
_SCRATCH = {
    "dirs": "ino INTEGER PRIMARY KEY",
    "inos": "ino INTEGER PRIMARY KEY",
    "links": "ino INTEGER PRIMARY KEY, n INTEGER NOT NULL",
    "purge": "ino INTEGER PRIMARY KEY",
    "map": "old INTEGER PRIMARY KEY, new INTEGER NOT NULL",
}
_SLASH = 0x2F
# list_dir reads this many rows beyond its limit per batch: directories whose keys are still open
# (prefixes of the last name read) cannot be emitted yet, and there are rarely more than a few.
_LIST_DIR_SLACK = 16


def _attr_cols(prefix: str) -> str:
    """The SELECT list that maps an inodes row onto :class:`Attr`, in field order."""
    p = prefix
    return (
        f"{p}ino, {p}mode, {p}nlink, {p}uid, {p}gid, {p}rdev, {p}size, ({p}stored + 511) / 512, "
        f"{p}atime_ns, {p}mtime_ns, {p}ctime_ns, {p}generation"
    )


_ATTR = _attr_cols("")
_ATTR_I = _attr_cols("i.")

P = ParamSpec("P")
R = TypeVar("R")


def _db_error(exc: sqlite3.Error, context: str) -> DfsError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc):
        return NoSpace(f"metadata {context}: {exc}")
    return InternalError(f"metadata {context}: {type(exc).__name__}: {exc}")


def _api(fn: Callable[P, R]) -> Callable[P, R]:
    """Translate sqlite3 and OS errors escaping a public method into dfs errors."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise _db_error(exc, name) from exc
        except OSError as exc:
            raise from_oserror(exc, f"metadata {name}") from exc

    return wrapper


def _is_dir(mode: int) -> bool:
    return mode & _IFMT == _IFDIR


def _check_lookup_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes exceeds {NAME_MAX}")


def _check_xattr_name(name: bytes) -> None:
    if not name:
        raise RangeError("empty xattr name")
    if len(name) > XATTR_NAME_MAX:
        raise NameTooLong(f"xattr name of {len(name)} bytes exceeds {XATTR_NAME_MAX}")


def _pack_dict(value: dict[str, Any], what: str) -> bytes:
    """msgpack of a caller's dict, checked before any transaction starts."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a map, not {type(value).__name__}")
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"{what} cannot be stored: {exc}") from exc
    return packed


def _unpack_dict(blob: bytes) -> dict[str, Any]:
    value = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    if not isinstance(value, dict):
        raise InternalError(f"stored map is a {type(value).__name__}")
    return value


def _replicas_or_none(value: object) -> int | None:
    """``value`` if it is a replication factor (an int 1..MAX_REPLICAS, never a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_REPLICAS:
        return value
    return None


def _check_replicas(replicas: int | None) -> None:
    if replicas is not None and _replicas_or_none(replicas) is None:
        raise InvalidArgument(f"replicas must be 1..{MAX_REPLICAS}, not {replicas!r:.40}")


def _check_policy_xattr(name: bytes, value: bytes) -> None:
    """Policy xattrs hold exactly what :meth:`MetaStore.policy` parses: a typo must fail, not be ignored."""
    if name == REPLICAS_XATTR and value not in _REPLICAS_VALUES:
        raise InvalidArgument(f"{name.decode()} must be one of 1..{MAX_REPLICAS}, not {value!r:.40}")
    if name == CONSISTENCY_XATTR and value not in _CONSISTENCY_VALUES:
        raise InvalidArgument(
            f"{name.decode()} must be one of {', '.join(CONSISTENCY_LEVELS)}, not {value!r:.40}"
        )


def _check_zone(zone: object) -> None:
    # LayoutNode accepts "", but an unnamed zone is a forgotten setting, not a failure domain.
    if not isinstance(zone, str) or not zone:
        raise InvalidArgument(f"zone must be a non-empty string, not {zone!r:.80}")


def _check_weight(weight: object) -> None:
    # As LayoutNode checks it, but as InvalidArgument: a caller's mistake, not a corrupt layout.
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < math.inf):
        raise InvalidArgument(f"capacity weight must be finite and > 0, not {weight!r:.80}")


class MetaStore:
    """All metadata of one filesystem; see the module docstring for the invariants."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        inline_max: int,
        block_size: int,
        now_ns: Callable[[], int] = time.time_ns,
        default_replicas: int = 1,
    ) -> None:
        if block_size <= 0 or inline_max < 0:
            raise ConfigError(f"bad metadata geometry: block_size={block_size} inline_max={inline_max}")
        if _replicas_or_none(default_replicas) is None:
            raise ConfigError(f"default replicas must be 1..{MAX_REPLICAS}, not {default_replicas!r:.40}")
        self._path = os.fspath(path)
        self._inline_max = inline_max
        self._block_size = block_size
        self._default_replicas = default_replicas
        self._now = now_ns
        self._wal_fd: int | None = None
        self._synced_changes = -1
        try:
            self._db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, cached_statements=512
            )
        except sqlite3.Error as exc:
            raise _db_error(exc, f"opening {self._path}") from exc
        try:
            self._setup()
        except sqlite3.Error as exc:
            self._db.close()
            raise _db_error(exc, f"opening {self._path}") from exc
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise ConfigError(f"{self._path}: SQLite refused WAL mode (got {mode!r})")
        # NORMAL in WAL mode: commits survive a process crash; sync() adds power-loss durability.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("PRAGMA busy_timeout=10000")  # offline tools may hold the lock briefly
        # Checkpoint every ~40 MiB of WAL rather than 4 MiB: checkpoints fsync, and a longer WAL
        # lets hot pages (root directory, sequence table) be written back once per checkpoint.
        db.execute("PRAGMA wal_autocheckpoint=10000")
        with self._write() as now:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if not 0 <= version <= SCHEMA_VERSION:
                raise ConfigError(f"{self._path}: metadata schema {version}, expected {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                db.execute(statement)
            self._upgrade()
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._check_block_size()
            if db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone() is None:
                self._create_root(now)
            for name in INTERNAL_DIRS:
                # Only a missing config row is created here; a broken one is fsck's to report and repair.
                if (
                    db.execute("SELECT 1 FROM config WHERE key = ?", (_INTERNAL_KEY + name,)).fetchone()
                    is None
                ):
                    self._create_internal(name, now)

    def _upgrade(self) -> None:
        """Bring an older database's tables up to this schema; each step checks first (reruns are no-ops)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(chunks)")}
        if "replicas" not in columns:  # version 1: chunks had no replication factor
            self._db.execute("ALTER TABLE chunks ADD COLUMN replicas INTEGER")

    def _check_block_size(self) -> None:
        row = self._db.execute("SELECT value FROM config WHERE key = 'block_size'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO config VALUES ('block_size', ?)", (self._block_size,))
        elif row[0] != self._block_size:
            raise ConfigError(
                f"{self._path}: block maps use block_size {row[0]}, configured {self._block_size}"
            )

    def _create_root(self, now: int) -> None:
        self._db.execute(
            "INSERT INTO inodes VALUES (?, ?, 2, 0, 0, 0, ?, 0, ?, ?, ?, 0, NULL, NULL)",
            (ROOT_INO, _IFDIR | 0o755, DIR_SIZE, now, now, now),
        )

    def _create_internal(self, name: str, now: int) -> int:
        """A new, empty internal root ``name`` (no dentry), recorded in config."""
        ino = self._db.execute(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline) VALUES (?, 2, 0, 0, 0, ?, 0, ?, ?, ?, 0, NULL, NULL)",
            (_IFDIR | 0o700, DIR_SIZE, now, now, now),
        ).lastrowid
        assert ino is not None
        self._db.execute("INSERT OR REPLACE INTO config VALUES (?, ?)", (_INTERNAL_KEY + name, ino))
        return ino

    def _internal_inos(self) -> dict[int, str]:
        """ino -> name of the internal roots as recorded (fsck checks that they are sound)."""
        prefix = len(_INTERNAL_KEY)
        return {
            ino: key[prefix:]
            for key, ino in self._db.execute(
                f"SELECT key, value FROM config WHERE key IN ({_INTERNAL_KEYS_SQL})"
            )
        }

    def reader(self) -> MetaStore:
        """A second, read-only connection to the same database.

        WAL readers never block the writer and see every committed
        transaction, so lookups can be answered without queueing behind writes.
        """
        other = MetaStore(
            self._path,
            inline_max=self._inline_max,
            block_size=self._block_size,
            now_ns=self._now,
            default_replicas=self._default_replicas,
        )
        other._db.execute("PRAGMA query_only=ON")
        return other

    @_api
    def close(self) -> None:
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self._db.close()

    @_api
    def sync(self) -> None:
        """Make every committed transaction durable against power loss.

        With synchronous=NORMAL, commits sit in the WAL without fsync; fsyncing
        the WAL file makes them durable.  Skipped when nothing was committed
        since the last call (``total_changes`` counts every row written, and
        every mutating transaction writes at least its oplog row).
        """
        changes = self._db.total_changes
        if changes == self._synced_changes:
            return
        fd = self._wal()
        if fd is not None:
            os.fsync(fd)
        self._synced_changes = changes

    def _wal(self) -> int | None:
        wal_path = self._path + "-wal"
        if self._wal_fd is not None:
            try:
                same = os.stat(wal_path).st_ino == os.fstat(self._wal_fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._wal_fd
            os.close(self._wal_fd)
            self._wal_fd = None
        try:
            self._wal_fd = os.open(wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        # The WAL (and the database) may be newly created: make their directory entries durable.
        dir_fd = os.open(os.path.dirname(os.path.abspath(self._path)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self._wal_fd

    # -- transactions and small helpers -----------------------------------------------

    @contextlib.contextmanager
    def _write(self, *, commit: bool = True) -> Iterator[int]:
        """One write transaction, rolled back on error (or always, without ``commit``); yields its time."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield self._now()
            db.execute("COMMIT" if commit else "ROLLBACK")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[None]:
        """One read snapshot for a reader that runs several statements (none of them may write)."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _scratch(self, kind: str) -> str:
        """An empty TEMP table of ``_SCRATCH[kind]`` for a set-based operation; returns its name.

        TEMP tables live in this connection only and their creation is part of the
        caller's transaction, so a rollback leaves nothing behind.
        """
        self._db.execute(f"CREATE TEMP TABLE IF NOT EXISTS scratch_{kind} ({_SCRATCH[kind]})")
        self._db.execute(f"DELETE FROM temp.scratch_{kind}")
        return f"temp.scratch_{kind}"

    def _log(self, now: int, op: str, args: Sequence[object]) -> None:
        self._db.execute(
            "INSERT INTO oplog (seq, ts_ns, op, args) VALUES (COALESCE((SELECT MAX(seq) FROM oplog), "
            "(SELECT value FROM config WHERE key = 'oplog_seq'), 0) + 1, ?, ?, ?)",
            (now, op, msgpack.packb(list(args), use_bin_type=True)),
        )

    def _inode(self, ino: int) -> tuple[int, int]:
        """(mode, nlink) of an existing inode."""
        row: tuple[int, int] | None = self._db.execute(
            "SELECT mode, nlink FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        return row

    def _dir(self, ino: int, *, live: bool) -> tuple[int, int, int]:
        """(mode, nlink, gid) of a directory; ``live`` also rejects a removed (nlink 0) one."""
        row: tuple[int, int, int] | None = self._db.execute(
            "SELECT mode, nlink, gid FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        if not _is_dir(row[0]):
            raise NotADirectory(f"inode {ino} is not a directory")
        if live and row[1] == 0:
            raise NotFound(f"directory {ino} was removed")
        return row

    def _dentry(self, parent: int, name: bytes) -> tuple[int, int, int, int] | None:
        """(dentry id, ino, mode, nlink) of ``name`` in ``parent``, if present."""
        row: tuple[int, int, int, int] | None = self._db.execute(
            "SELECT d.id, d.ino, i.mode, i.nlink FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.name = ?",
            (parent, name),
        ).fetchone()
        return row

    def _attr(self, ino: int) -> Attr:
        row = self._db.execute(f"SELECT {_ATTR} FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        return Attr(*row)

    def _has_children(self, ino: int) -> bool:
        return (
            self._db.execute("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,)).fetchone() is not None
        )

    def _is_open(self, ino: int) -> bool:
        return self._db.execute("SELECT 1 FROM opens WHERE ino = ? LIMIT 1", (ino,)).fetchone() is not None

    def _touch_dir(self, ino: int, now: int, nlink_delta: int = 0) -> None:
        self._db.execute(
            "UPDATE inodes SET nlink = nlink + ?, mtime_ns = ?, ctime_ns = ? WHERE ino = ?",
            (nlink_delta, now, now, ino),
        )

    def _add_dentry(self, parent: int, name: bytes, ino: int, is_dir: bool) -> None:
        self._db.execute(
            "INSERT INTO dentries (parent, name, ino, is_dir) VALUES (?, ?, ?, ?)",
            (parent, name, ino, is_dir),
        )

    def _del_dentry(self, dentry_id: int) -> None:
        self._db.execute("DELETE FROM dentries WHERE id = ?", (dentry_id,))

    def _set_nlink(self, ino: int, nlink: int, now: int) -> None:
        """Give ``ino`` a new link count after losing a name; purge it when nothing holds it."""
        if nlink == 0 and not self._is_open(ino):
            self._purge(ino, now)
        else:
            self._db.execute("UPDATE inodes SET nlink = ?, ctime_ns = ? WHERE ino = ?", (nlink, now, ino))

    def _purge_if_unused(self, ino: int, now: int) -> None:
        row = self._db.execute("SELECT nlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is not None and row[0] == 0 and not self._is_open(ino):
            self._purge(ino, now)

    def _purge(self, ino: int, now: int) -> None:
        """Delete an inode and everything it owns; its chunks lose one reference per block."""
        self._drop_blocks(ino, 0, now, adjust_inode=False)
        self._db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
        self._db.execute("DELETE FROM inodes WHERE ino = ?", (ino,))

    # -- chunk references ---------------------------------------------------------------

    def _incref(self, chunk_id: bytes, stored_bytes: int, chunk_exists: Callable[[bytes], bool]) -> None:
        row = self._db.execute("SELECT refcount FROM chunks WHERE chunk_id = ?", (chunk_id,)).fetchone()
        # A chunk nobody references may have been (or be about to be) collected: confirm it is stored.
        if (row is None or row[0] <= 0) and not chunk_exists(chunk_id):
            raise ChunkMissing(f"chunk {chunk_id.hex()} is not stored")
        if row is None:
            self._db.execute(
                "INSERT INTO chunks (chunk_id, refcount, stored_bytes) VALUES (?, 1, ?)",
                (chunk_id, stored_bytes),
            )
        else:
            self._db.execute(
                "UPDATE chunks SET refcount = refcount + 1, zero_since_ns = NULL WHERE chunk_id = ?",
                (chunk_id,),
            )

    def _decref(self, chunk_ids: list[bytes], now: int) -> None:
        self._db.executemany(
            "UPDATE chunks SET refcount = refcount - 1, "
            "zero_since_ns = CASE WHEN refcount <= 1 THEN ? ELSE zero_since_ns END WHERE chunk_id = ?",
            [(now, chunk_id) for chunk_id in chunk_ids],
        )

    def _drop_blocks(self, ino: int, first_idx: int, now: int, *, adjust_inode: bool = True) -> None:
        """Delete the entries at ``idx >= first_idx``, decref'ing their chunks in bulk."""
        db = self._db
        db.execute(
            "UPDATE chunks SET refcount = chunks.refcount - d.n, "
            "zero_since_ns = CASE WHEN chunks.refcount - d.n <= 0 THEN ? ELSE chunks.zero_since_ns END "
            "FROM (SELECT chunk_id, COUNT(*) AS n FROM blocks WHERE ino = ? AND idx >= ? "
            "GROUP BY chunk_id) d "
            "WHERE chunks.chunk_id = d.chunk_id",
            (now, ino, first_idx),
        )
        if adjust_inode:
            db.execute(
                "UPDATE inodes SET stored = stored - (SELECT COALESCE(SUM(stored_bytes), 0) FROM blocks "
                "WHERE ino = ?1 AND idx >= ?2) WHERE ino = ?1",
                (ino, first_idx),
            )
        db.execute("DELETE FROM blocks WHERE ino = ? AND idx >= ?", (ino, first_idx))

    def _drop_block(self, ino: int, idx: int, now: int) -> None:
        row = self._db.execute(
            "DELETE FROM blocks WHERE ino = ? AND idx = ? RETURNING chunk_id, stored_bytes", (ino, idx)
        ).fetchone()
        if row is not None:
            self._decref([row[0]], now)
            self._db.execute("UPDATE inodes SET stored = stored - ? WHERE ino = ?", (row[1], ino))

    def _shrink(self, ino: int, size: int, now: int) -> None:
        """Cut block map and inline data to ``size``; bytes past a block's ``length`` read as zeros."""
        bs = self._block_size
        self._drop_blocks(ino, -(-size // bs), now)
        if size % bs:
            self._db.execute(
                "UPDATE blocks SET length = MIN(length, ?) WHERE ino = ? AND idx = ?",
                (size % bs, ino, size // bs),
            )
        self._db.execute(
            "UPDATE inodes SET stored = stored - (length(inline) - ?1), "
            "inline = CASE WHEN ?1 = 0 THEN NULL ELSE substr(inline, 1, ?1) END "
            "WHERE ino = ?2 AND length(inline) > ?1",
            (size, ino),
        )

    # -- lookups -------------------------------------------------------------------------

    @_api
    def lookup(self, parent: int, name: bytes) -> Attr:
        _check_lookup_name(name)
        row = self._db.execute(
            f"SELECT {_ATTR_I} FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.name = ?",
            (parent, name),
        ).fetchone()
        if row is not None:
            return Attr(*row)
        self._dir(parent, live=False)  # the right error for a bad parent
        if name == b".":
            return self._attr(parent)
        if name == b"..":
            return self._attr(self._parent_of(parent))
        raise NotFound(f"{name!r} not found in directory {parent}")

    @_api
    def lookup_versioned(self, parent: int, name: bytes) -> tuple[Attr | None, int]:
        """``lookup`` that reports absence as None, plus the directory's ctime.

        Both come from one read snapshot, so a caller that knew the directory's
        names at that ctime knows they are still exactly its names.
        """
        self._db.execute("BEGIN")
        try:
            try:
                attr: Attr | None = self.lookup(parent, name)
            except NotFound:
                attr = None
            return attr, self._attr(parent).ctime_ns
        finally:
            self._db.execute("COMMIT")

    @_api
    def parent(self, ino: int) -> int:
        """The directory containing directory ``ino`` (the root is its own parent)."""
        self._dir(ino, live=False)
        return self._parent_of(ino)

    def _parent_of(self, ino: int) -> int:
        if ino == ROOT_INO:
            return ROOT_INO
        row = self._db.execute(
            "SELECT parent FROM dentries WHERE is_dir = 1 AND ino = ? LIMIT 1", (ino,)
        ).fetchone()
        if row is None:
            if ino in self._internal_inos():
                return ino  # an internal root is its own parent, like the root
            raise NotFound(f"directory {ino} was removed")
        parent: int = row[0]
        return parent

    @_api
    def getattr(self, ino: int) -> Attr:
        return self._attr(ino)

    @_api
    def readlink(self, ino: int) -> bytes:
        row = self._db.execute("SELECT mode, symlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        if not stat.S_ISLNK(row[0]):
            raise InvalidArgument(f"inode {ino} is not a symlink")
        target: bytes = row[1]
        return target

    @_api
    def readdir(self, ino: int, cookie: int, limit: int) -> list[DirEntry]:
        self._dir(ino, live=False)
        rows = self._db.execute(
            f"SELECT d.name, d.id, {_ATTR_I} FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
            (ino, cookie, max(limit, 0)),
        ).fetchall()
        return [DirEntry(row[0], Attr(*row[2:]), row[1]) for row in rows]

    # -- namespace changes ---------------------------------------------------------------

    def _make(
        self,
        now: int,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        *,
        rdev: int = 0,
        size: int = 0,
        symlink: bytes | None = None,
    ) -> Attr:
        """Insert a new inode named ``name`` in ``parent`` (inside the caller's transaction)."""
        check_name(name)
        pmode, pnlink, pgid = self._dir(parent, live=True)
        if self._db.execute(
            "SELECT 1 FROM dentries WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone():
            raise Exists(f"{name!r} exists in directory {parent}")
        is_dir = _is_dir(mode)
        if is_dir and pnlink >= LINK_MAX:
            raise TooManyLinks(f"directory {parent} has {pnlink} links")
        if pmode & stat.S_ISGID:  # BSD group semantics for setgid directories
            gid = pgid
            if is_dir:
                mode |= stat.S_ISGID
        inherited: list[tuple[bytes, bytes]] = []
        if symlink is None:
            mode, inherited = self._inherit_acl(parent, mode)
        nlink = 2 if is_dir else 1
        cur = self._db.execute(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 0, ?, NULL)",
            (mode, nlink, uid, gid, rdev, size, now, now, now, symlink),
        )
        ino = cur.lastrowid
        assert ino is not None
        if inherited:
            self._db.executemany("INSERT INTO xattrs VALUES (?, ?, ?)", [(ino, k, v) for k, v in inherited])
        self._add_dentry(parent, name, ino, is_dir)
        self._touch_dir(parent, now, 1 if is_dir else 0)
        return Attr(ino, mode, nlink, uid, gid, rdev, size, 0, now, now, now, 0)

    def _inherit_acl(self, parent: int, mode: int) -> tuple[int, list[tuple[bytes, bytes]]]:
        """A new inode's mode and ACL xattrs under ``parent``'s default ACL, if it has one."""
        row = self._db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (parent, acl.DEFAULT)
        ).fetchone()
        if row is None:
            return mode, []
        mode, access, default = acl.inherit(row[0], mode)
        xattrs = [(acl.ACCESS, access)] if access is not None else []
        if default is not None:
            xattrs.append((acl.DEFAULT, default))
        return mode, xattrs

    @_api
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        kind = mode & _IFMT or _IFREG  # mknod(2): a zero file type means a regular file
        if kind not in (_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise InvalidArgument(f"mknod cannot create file type {kind:o}")
        mode = kind | (mode & _PERM_BITS)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        with self._write() as now:
            attr = self._make(now, parent, name, mode, uid, gid, rdev=rdev)
            self._log(now, "mknod", [parent, name, mode, rdev, uid, gid, attr.ino])
        return attr

    @_api
    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        if mode & _IFMT not in (0, _IFDIR):
            raise InvalidArgument(f"mkdir with file type {mode & _IFMT:o}")
        mode = _IFDIR | (mode & _PERM_BITS)
        with self._write() as now:
            attr = self._make(now, parent, name, mode, uid, gid, size=DIR_SIZE)
            self._log(now, "mkdir", [parent, name, mode, uid, gid, attr.ino])
        return attr

    @_api
    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        if not target or b"\0" in target or len(target) > 4096:
            raise InvalidArgument("symlink target must be 1..4096 bytes without NUL")
        mode = stat.S_IFLNK | 0o777
        with self._write() as now:
            attr = self._make(now, parent, name, mode, uid, gid, size=len(target), symlink=target)
            self._log(now, "symlink", [parent, name, target, uid, gid, attr.ino])
        return attr

    @_api
    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, session: str) -> Attr:
        if mode & _IFMT not in (0, _IFREG):
            raise InvalidArgument(f"create with file type {mode & _IFMT:o}")
        mode = _IFREG | (mode & _PERM_BITS)
        with self._write() as now:
            attr = self._make(now, parent, name, mode, uid, gid)
            self._add_open(session, attr.ino, now)
            self._log(now, "create", [parent, name, mode, uid, gid, session, attr.ino])
        return attr

    @_api
    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        check_name(new_name)
        with self._write() as now:
            mode, nlink = self._inode(ino)
            if _is_dir(mode):
                raise NotPermitted(f"cannot hard-link directory {ino}")
            if nlink == 0:
                raise NotFound(f"inode {ino} was unlinked")
            if nlink >= LINK_MAX:
                raise TooManyLinks(f"inode {ino} has {nlink} links")
            self._dir(new_parent, live=True)
            if self._dentry(new_parent, new_name) is not None:
                raise Exists(f"{new_name!r} exists in directory {new_parent}")
            self._add_dentry(new_parent, new_name, ino, False)
            row = self._db.execute(
                f"UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? WHERE ino = ? RETURNING {_ATTR}",
                (now, ino),
            ).fetchone()
            self._touch_dir(new_parent, now)
            self._log(now, "link", [ino, new_parent, new_name])
        return Attr(*row)

    @_api
    def unlink(self, parent: int, name: bytes) -> None:
        _check_lookup_name(name)
        with self._write() as now:
            self._dir(parent, live=False)
            entry = self._dentry(parent, name)
            if entry is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            dentry_id, ino, mode, nlink = entry
            if _is_dir(mode):
                raise IsADirectory(f"{name!r} is a directory")
            self._del_dentry(dentry_id)
            self._touch_dir(parent, now)
            self._set_nlink(ino, nlink - 1, now)
            self._log(now, "unlink", [parent, name])

    @_api
    def rmdir(self, parent: int, name: bytes) -> None:
        _check_lookup_name(name)
        if name == b".":
            raise InvalidArgument("cannot remove '.'")
        if name == b"..":
            raise NotEmpty("cannot remove '..'")
        with self._write() as now:
            self._dir(parent, live=False)
            entry = self._dentry(parent, name)
            if entry is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            dentry_id, ino, mode, _ = entry
            if not _is_dir(mode):
                raise NotADirectory(f"{name!r} is not a directory")
            if self._has_children(ino):
                raise NotEmpty(f"directory {name!r} is not empty")
            self._del_dentry(dentry_id)
            self._touch_dir(parent, now, -1)
            self._set_nlink(ino, 0, now)
            if parent == ROOT_INO:
                self._follow_volumes([ino])
            self._log(now, "rmdir", [parent, name])

    @_api
    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        if flags & RENAME_WHITEOUT:
            raise NotSupported("RENAME_WHITEOUT is not supported")
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise InvalidArgument(f"bad rename flags {flags:#x}")
        _check_lookup_name(name)
        check_name(new_name)
        with self._write() as now:
            pnlink = self._dir(parent, live=False)[1]
            src = self._dentry(parent, name)
            if src is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            new_pnlink = self._dir(new_parent, live=True)[1]
            dst = self._dentry(new_parent, new_name)
            if flags & RENAME_NOREPLACE and dst is not None:
                raise Exists(f"{new_name!r} exists in directory {new_parent}")
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise NotFound(f"{new_name!r} not found in directory {new_parent}")
                changed = self._exchange(
                    src, dst, (parent, name, pnlink), (new_parent, new_name, new_pnlink), now
                )
            else:
                changed = self._move(src, dst, parent, (new_parent, new_name, new_pnlink), now)
            if changed:
                if ROOT_INO in (parent, new_parent):  # only top-level directories can be volumes
                    self._follow_volumes(e[1] for e in (src, dst) if e is not None and _is_dir(e[2]))
                self._log(now, "rename", [parent, name, new_parent, new_name, flags])

    def _is_ancestor(self, dir_ino: int, start: int) -> bool:
        """Whether ``dir_ino`` is ``start`` or one of its ancestors."""
        # UNION (not UNION ALL) makes the walk terminate even on a corrupted, cyclic tree.
        hit = self._db.execute(
            "WITH RECURSIVE up(ino) AS "
            "(SELECT ? UNION SELECT d.parent FROM dentries d JOIN up ON d.is_dir = 1 AND d.ino = up.ino) "
            "SELECT 1 FROM up WHERE ino = ? LIMIT 1",
            (start, dir_ino),
        ).fetchone()
        return hit is not None

    def _check_not_ancestor(self, dir_ino: int, start: int) -> None:
        """InvalidArgument if ``dir_ino`` is ``start`` or one of its ancestors."""
        if self._is_ancestor(dir_ino, start):
            raise InvalidArgument(f"cannot move directory {dir_ino} into its own subtree")

    def _move(
        self,
        src: tuple[int, int, int, int],
        dst: tuple[int, int, int, int] | None,
        parent: int,
        target: tuple[int, bytes, int],
        now: int,
    ) -> bool:
        """Plain rename (optionally replacing ``dst``); False when it is a no-op."""
        src_id, src_ino, src_mode, _ = src
        new_parent, new_name, new_pnlink = target
        src_dir = _is_dir(src_mode)
        if dst is not None and dst[1] == src_ino:
            return False  # both names are links to the same inode: POSIX says do nothing
        if src_dir and parent != new_parent:
            self._check_not_ancestor(src_ino, new_parent)
        dst_dir = False
        if dst is not None:
            dst_dir = _is_dir(dst[2])
            if src_dir and not dst_dir:
                raise NotADirectory(f"{new_name!r} is not a directory")
            if dst_dir and not src_dir:
                raise IsADirectory(f"{new_name!r} is a directory")
            if dst_dir and self._has_children(dst[1]):
                raise NotEmpty(f"directory {new_name!r} is not empty")
        elif src_dir and parent != new_parent and new_pnlink >= LINK_MAX:
            raise TooManyLinks(f"directory {new_parent} has {new_pnlink} links")
        if dst is not None:
            self._del_dentry(dst[0])
            self._set_nlink(dst[1], 0 if dst_dir else dst[3] - 1, now)
        self._del_dentry(src_id)
        self._add_dentry(new_parent, new_name, src_ino, src_dir)  # a fresh id: the entry's new cookie
        self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, src_ino))
        if parent == new_parent:
            self._touch_dir(parent, now, -int(dst_dir))
        else:
            self._touch_dir(parent, now, -int(src_dir))
            self._touch_dir(new_parent, now, int(src_dir) - int(dst_dir))
        return True

    def _exchange(
        self,
        src: tuple[int, int, int, int],
        dst: tuple[int, int, int, int],
        origin: tuple[int, bytes, int],
        target: tuple[int, bytes, int],
        now: int,
    ) -> bool:
        """RENAME_EXCHANGE: swap two existing names atomically; False when it is a no-op."""
        parent, name, pnlink = origin
        new_parent, new_name, new_pnlink = target
        if src[1] == dst[1]:
            return False
        src_dir, dst_dir = _is_dir(src[2]), _is_dir(dst[2])
        moved = parent != new_parent
        if moved and src_dir:
            self._check_not_ancestor(src[1], new_parent)
        if moved and dst_dir:
            self._check_not_ancestor(dst[1], parent)
        gain = int(src_dir) - int(dst_dir)  # subdirectories new_parent gains (parent loses as many)
        if moved and ((gain > 0 and new_pnlink >= LINK_MAX) or (gain < 0 and pnlink >= LINK_MAX)):
            raise TooManyLinks("rename exchange would exceed the directory link limit")
        self._del_dentry(src[0])
        self._del_dentry(dst[0])
        self._add_dentry(parent, name, dst[1], dst_dir)
        self._add_dentry(new_parent, new_name, src[1], src_dir)
        self._db.executemany("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", [(now, src[1]), (now, dst[1])])
        if moved:
            self._touch_dir(parent, now, -gain)
            self._touch_dir(new_parent, now, gain)
        else:
            self._touch_dir(parent, now)
        return True

    # -- attributes -----------------------------------------------------------------------

    @_api
    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Attr:
        with self._write() as now:
            row = self._db.execute("SELECT mode, size FROM inodes WHERE ino = ?", (ino,)).fetchone()
            if row is None:
                raise NotFound(f"inode {ino} not found")
            cur_mode, cur_size = row
            new_mode = cur_mode if mode is None else (cur_mode & _IFMT) | (mode & _PERM_BITS)
            if (uid is not None or gid is not None) and mode is None and not _is_dir(cur_mode):
                new_mode = chown_clears(new_mode)
            if size is not None:
                self._check_truncate(ino, cur_mode, size)
                if size != cur_size:
                    self._shrink(ino, size, now)
                    if mtime_ns is None:
                        mtime_ns = now
            if mode is not None:
                self._chmod_acl(ino, new_mode)
            result = self._db.execute(
                "UPDATE inodes SET mode = ?, uid = COALESCE(?, uid), gid = COALESCE(?, gid), "
                "size = COALESCE(?, size), atime_ns = COALESCE(?, atime_ns), "
                "mtime_ns = COALESCE(?, mtime_ns), "
                f"ctime_ns = ? WHERE ino = ? RETURNING {_ATTR}",
                (new_mode, uid, gid, size, atime_ns, mtime_ns, now, ino),
            ).fetchone()
            self._log(now, "setattr", [ino, mode, uid, gid, size, atime_ns, mtime_ns])
        return Attr(*result)

    def _chmod_acl(self, ino: int, mode: int) -> None:
        row = self._db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, acl.ACCESS)
        ).fetchone()
        if row is not None:
            self._db.execute(
                "UPDATE xattrs SET value = ? WHERE ino = ? AND name = ?",
                (acl.chmod(row[0], mode), ino, acl.ACCESS),
            )

    @staticmethod
    def _check_truncate(ino: int, mode: int, size: int) -> None:
        if _is_dir(mode):
            raise IsADirectory(f"inode {ino} is a directory")
        if mode & _IFMT != _IFREG:
            raise InvalidArgument(f"inode {ino} is not a regular file")
        if size < 0:
            raise InvalidArgument(f"negative size {size}")

    # -- opens and sessions ---------------------------------------------------------------

    def _add_open(self, session: str, ino: int, now: int) -> None:
        self._touch_session(session, now, _SESSION_REFRESH_NS)
        self._db.execute(
            "INSERT INTO opens VALUES (?, ?, 1) ON CONFLICT (ino, session) DO UPDATE SET count = count + 1",
            (ino, session),
        )

    def _touch_session(self, session: str, now: int, min_age_ns: int = 0) -> None:
        """Create or refresh a session; skip the write when it was refreshed under ``min_age_ns`` ago."""
        self._db.execute(
            "INSERT INTO sessions VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE "
            "SET last_seen_ns = excluded.last_seen_ns WHERE last_seen_ns <= ?2 - ?3",
            (session, now, min_age_ns),
        )

    @_api
    def open(self, ino: int, session: str, *, truncate: bool = False, read: bool = False) -> Attr:
        with self._write() as now:
            row = self._db.execute(
                "SELECT mode, atime_ns, mtime_ns, ctime_ns FROM inodes WHERE ino = ?", (ino,)
            ).fetchone()
            if row is None:
                raise NotFound(f"inode {ino} not found")
            mode, atime, mtime, ctime = row
            if truncate and _is_dir(mode):
                raise IsADirectory(f"inode {ino} is a directory")
            self._add_open(session, ino, now)
            if truncate and mode & _IFMT == _IFREG:
                # open(O_TRUNC) marks mtime and ctime even when the file was already empty.
                self._shrink(ino, 0, now)
                self._db.execute(
                    "UPDATE inodes SET size = 0, mtime_ns = ?, ctime_ns = ? WHERE ino = ?", (now, now, ino)
                )
            if read:
                self._relatime(ino, atime, mtime, ctime, now)
            self._log(now, "open", [ino, session, truncate, read])
            return self._attr(ino)

    @_api
    def release(self, ino: int, session: str) -> None:
        with self._write() as now:
            if self._release(ino, session, now):
                self._log(now, "release", [ino, session])

    def _release(self, ino: int, session: str, now: int) -> bool:
        """One open fewer; purge at the last one if unlinked.  False if none was registered."""
        row = self._db.execute(
            "UPDATE opens SET count = count - 1 WHERE ino = ? AND session = ? RETURNING count",
            (ino, session),
        ).fetchone()
        if row is None:
            return False  # nothing registered: releasing is idempotent
        if row[0] <= 0:
            self._db.execute("DELETE FROM opens WHERE ino = ? AND session = ?", (ino, session))
            self._purge_if_unused(ino, now)
        return True

    def _relatime(self, ino: int, atime: int, mtime: int, ctime: int, now: int) -> None:
        """A read: update atime if it is not newer than mtime/ctime, or over a day old."""
        if atime <= mtime or atime <= ctime or now - atime >= _RELATIME_NS:
            self._db.execute("UPDATE inodes SET atime_ns = ? WHERE ino = ?", (now, ino))

    @_api
    def open_events(self, events: list[list[Any]], session: str) -> None:
        """Apply a mount's batched ``["open", ino]`` / ``["release", ino]`` events in order.

        Read-only opens are registered this way, after the fact, in one
        transaction per batch; an "open" of an inode purged meanwhile is
        skipped.  "open" also applies relatime to the file's atime.
        """
        with self._write() as now:
            for kind, ino in events:
                if kind == "open":
                    row = self._db.execute(
                        "SELECT atime_ns, mtime_ns, ctime_ns FROM inodes WHERE ino = ?", (ino,)
                    ).fetchone()
                    if row is None:
                        continue
                    self._add_open(session, ino, now)
                    atime, mtime, ctime = row
                    self._relatime(ino, atime, mtime, ctime, now)
                elif kind == "release":
                    self._release(ino, session, now)
                else:
                    raise InvalidArgument(f"unknown open event {kind!r}")
            self._log(now, "open_events", [events, session])

    @_api
    def end_session(self, session: str) -> None:
        """A mount going away cleanly: drop its opens now instead of at lease expiry."""
        with self._write() as now:
            self._end_session(session, now)
            self._log(now, "end_session", [session])

    @_api
    def session_heartbeat(self, session: str) -> None:
        with self._write() as now:
            self._touch_session(session, now)
            self._log(now, "session_heartbeat", [session])

    @_api
    def expire_sessions(self, older_than_ns: int) -> int:
        with self._write() as now:
            ids = [
                r[0]
                for r in self._db.execute("SELECT id FROM sessions WHERE last_seen_ns < ?", (older_than_ns,))
            ]
            for session in ids:
                self._end_session(session, now)
            if ids:
                self._log(now, "expire_sessions", [older_than_ns, ids])
        return len(ids)

    def _end_session(self, session: str, now: int) -> None:
        inos = [r[0] for r in self._db.execute("SELECT ino FROM opens WHERE session = ?", (session,))]
        self._db.execute("DELETE FROM opens WHERE session = ?", (session,))
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session,))
        for ino in inos:
            self._purge_if_unused(ino, now)

    # -- extended attributes -------------------------------------------------------------

    @_api
    def getxattr(self, ino: int, name: bytes) -> bytes:
        _check_xattr_name(name)
        row = self._db.execute("SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)).fetchone()
        if row is None:
            self._inode(ino)
            raise NoAttribute(f"no xattr {name!r} on inode {ino}")
        value: bytes = row[0]
        return value

    @_api
    def listxattr(self, ino: int) -> list[bytes]:
        self._inode(ino)
        return [r[0] for r in self._db.execute("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,))]

    @_api
    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        _check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise RangeError(f"xattr value of {len(value)} bytes exceeds {XATTR_SIZE_MAX}")
        if flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise InvalidArgument(f"bad xattr flags {flags:#x}")
        _check_policy_xattr(name, value)
        with self._write() as now:
            self._inode(ino)
            exists = self._db.execute(
                "SELECT 1 FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
            ).fetchone()
            if exists and flags & XATTR_CREATE:
                raise Exists(f"xattr {name!r} exists on inode {ino}")
            if not exists and flags & XATTR_REPLACE:
                raise NoAttribute(f"no xattr {name!r} on inode {ino}")
            if name in acl.NAMES:
                self._set_acl(ino, name, value, now)
            else:
                self._db.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", (ino, name, value))
                self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, ino))
            self._log(now, "setxattr", [ino, name, value, flags])

    def _set_acl(self, ino: int, name: bytes, value: bytes, now: int) -> None:
        """Store an ACL xattr and keep the mode in step (see dfs.acl), in the caller's transaction."""
        mode = self._inode(ino)[0]
        if name == acl.ACCESS:
            mode, stored = acl.after_set(value, mode)
        elif _is_dir(mode):
            stored = acl.check_default(value)
        else:
            raise PermissionDenied(f"inode {ino} is not a directory: it cannot have a default ACL")
        if stored is None:
            self._db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
        else:
            self._db.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", (ino, name, stored))
        self._db.execute("UPDATE inodes SET mode = ?, ctime_ns = ? WHERE ino = ?", (mode, now, ino))

    @_api
    def removexattr(self, ino: int, name: bytes) -> None:
        _check_xattr_name(name)
        with self._write() as now:
            self._inode(ino)
            if self._db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name)).rowcount == 0:
                raise NoAttribute(f"no xattr {name!r} on inode {ino}")
            self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, ino))
            self._log(now, "removexattr", [ino, name])

    # -- data ---------------------------------------------------------------------------

    def _regular(self, ino: int) -> None:
        mode = self._inode(ino)[0]
        if _is_dir(mode):
            raise IsADirectory(f"inode {ino} is a directory")
        if mode & _IFMT != _IFREG:
            raise InvalidArgument(f"inode {ino} is not a regular file")

    @_api
    def read_map(self, ino: int) -> FileMap:
        self._regular(ino)
        row = self._db.execute(f"SELECT {_ATTR}, inline FROM inodes WHERE ino = ?", (ino,)).fetchone()
        blocks = self._db.execute(
            "SELECT idx, chunk_id, length, stored_bytes FROM blocks WHERE ino = ? ORDER BY idx", (ino,)
        ).fetchall()
        return FileMap(Attr(*row[:-1]), row[-1], [BlockRef(*b) for b in blocks])

    @_api
    def commit_write(
        self,
        ino: int,
        *,
        size: int,
        mtime_ns: int,
        blocks: list[BlockRef],
        inline: bytes | None,
        chunk_exists: Callable[[bytes], bool],
        replicas: int | None = None,
    ) -> Attr:
        """Point the file at new data; ``replicas`` (its policy) raises its chunks' factor to at least it."""
        if inline is not None and blocks:
            raise InvalidArgument("commit_write got both inline data and blocks")
        _check_replicas(replicas)
        if inline is not None and len(inline) > self._inline_max:
            raise InvalidArgument(f"inline data of {len(inline)} bytes exceeds {self._inline_max}")
        if size < 0:
            raise InvalidArgument(f"negative size {size}")
        refs = [self._check_ref(ref) for ref in blocks]
        with self._write() as now:
            self._regular(ino)
            if inline is not None:
                self._drop_blocks(ino, 0, now, adjust_inode=False)
                size = len(inline)
                self._db.execute(
                    "UPDATE inodes SET inline = ?, stored = ? WHERE ino = ?", (inline, size, ino)
                )
            else:
                self._db.execute(
                    "UPDATE inodes SET stored = stored - length(inline), inline = NULL "
                    "WHERE ino = ? AND inline IS NOT NULL",
                    (ino,),
                )
                self._apply_refs(ino, refs, chunk_exists, now)
                self._raise_replicas([r.chunk_id for r in refs if r.chunk_id], replicas)
                self._shrink(ino, size, now)
            row = self._db.execute(
                f"UPDATE inodes SET size = ?, mtime_ns = ?, ctime_ns = ? WHERE ino = ? RETURNING {_ATTR}",
                (size, mtime_ns, mtime_ns, ino),
            ).fetchone()
            self._log(now, "commit_write", [ino, size, mtime_ns, [list(r) for r in refs], inline, replicas])
        return Attr(*row)

    def _check_ref(self, ref: Sequence[Any]) -> BlockRef:
        index, chunk_id, length, stored_bytes = ref
        if not (
            isinstance(index, int)
            and isinstance(chunk_id, bytes)
            and isinstance(length, int)
            and isinstance(stored_bytes, int)
        ):
            raise InvalidArgument(f"malformed block ref {ref!r:.200}")
        if index < 0 or not 0 <= length <= self._block_size or stored_bytes < 0:
            raise InvalidArgument(f"block ref out of range: {ref!r:.200}")
        return BlockRef(index, chunk_id, length, stored_bytes)

    def _apply_refs(
        self, ino: int, refs: list[BlockRef], chunk_exists: Callable[[bytes], bool], now: int
    ) -> None:
        """Point each block index at its new chunk (or a hole), increfs first so no row dips to 0."""
        db = self._db
        dropped: list[bytes] = []
        delta = 0
        for index, chunk_id, length, stored_bytes in refs:
            old = db.execute(
                "DELETE FROM blocks WHERE ino = ? AND idx = ? RETURNING chunk_id, stored_bytes", (ino, index)
            ).fetchone()
            if old is not None:
                dropped.append(old[0])
                delta -= old[1]
            if chunk_id:
                self._incref(chunk_id, stored_bytes, chunk_exists)
                db.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", (ino, index, chunk_id, length, stored_bytes)
                )
                delta += stored_bytes
        self._decref(dropped, now)
        if delta:
            db.execute("UPDATE inodes SET stored = stored + ? WHERE ino = ?", (delta, ino))

    def _raise_replicas(self, chunk_ids: list[bytes], replicas: int | None) -> None:
        """Record that ``chunk_ids`` need at least ``replicas`` copies (a chunk shared by two policies
        needs the larger); rows already that high are not rewritten."""
        if replicas is None or not chunk_ids:
            return
        self._db.executemany(
            "UPDATE chunks SET replicas = ? WHERE chunk_id = ? AND (replicas IS NULL OR replicas < ?)",
            [(replicas, chunk_id, replicas) for chunk_id in dict.fromkeys(chunk_ids)],
        )

    # -- object-store (S3) namespace operations --------------------------------------------

    @_api
    def resolve(self, parent: int, names: list[bytes]) -> Attr:
        """The inode at path ``names`` below ``parent`` (``parent`` itself for an empty path)."""
        for name in names:
            _check_lookup_name(name)
        with self._read():
            attr = self._attr(parent)
            for name in names:
                if not attr.is_dir:
                    raise NotADirectory(f"inode {attr.ino} is not a directory")
                row = self._db.execute(
                    f"SELECT {_ATTR_I} FROM dentries d JOIN inodes i ON i.ino = d.ino "
                    "WHERE d.parent = ? AND d.name = ?",
                    (attr.ino, name),
                ).fetchone()
                if row is None:
                    raise NotFound(f"{name!r} not found in directory {attr.ino}")
                attr = Attr(*row)
            return attr

    @_api
    def list_dir(self, ino: int, after: bytes, limit: int) -> list[DirEntry]:
        """Up to ``limit`` entries of directory ``ino`` whose sort key is greater than ``after``, in
        sort-key order; the key is ``name + b"/"`` for a directory and ``name`` otherwise.

        A depth-first walk that lists directory ``d`` where its key ``d/`` falls
        yields full paths in byte order, which is S3's key order ("a-b" < "a/x").
        Cookies are 0: the caller resumes with the last key it saw.
        """
        with self._read():
            self._dir(ino, live=False)
            if limit <= 0:
                return []
            return self._list_dir(ino, after, limit)

    def _list_dir(self, ino: int, after: bytes, limit: int) -> list[DirEntry]:
        # Key order is name order except that a directory d sorts as d/, i.e. after the names that
        # extend d with a byte below '/' (d-x, d.y) and so after names the index yields later.
        # A key above ``after`` belongs to a name >= ``after`` or to a directory named by a proper
        # prefix p of ``after`` whose next byte is below '/': those are looked up exactly, the rest
        # is scanned in name order.  After scanning up to name n, every unscanned key exceeds n, so
        # candidates with keys <= n are final; the others (at most one per prefix of n) wait.
        db = self._db
        select = f"SELECT d.name, {_ATTR_I} FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ?"
        found: list[tuple[bytes, DirEntry]] = []

        def add(rows: Iterable[tuple[Any, ...]]) -> None:
            for name, *attr in rows:
                key = name + b"/" if _is_dir(attr[1]) else name
                if key > after:
                    found.append((key, DirEntry(name, Attr(*attr), 0)))

        prefixes = [after[:n] for n in range(1, min(len(after), NAME_MAX + 1)) if after[n] < _SLASH]
        if prefixes:
            marks = ", ".join("?" * len(prefixes))
            add(db.execute(f"{select} AND d.is_dir = 1 AND d.name IN ({marks})", (ino, *prefixes)))
        batch = limit + _LIST_DIR_SLACK
        rows = db.execute(f"{select} AND d.name >= ? ORDER BY d.name LIMIT ?", (ino, after, batch)).fetchall()
        while True:
            add(rows)
            found.sort(key=lambda item: item[0])
            if len(rows) < batch:  # the directory is exhausted: every candidate is final
                return [entry for _, entry in found[:limit]]
            last: bytes = rows[-1][0]
            final = bisect.bisect_right(found, last, key=lambda item: item[0])
            if final >= limit:
                return [entry for _, entry in found[:limit]]
            batch *= 2
            rows = db.execute(
                f"{select} AND d.name > ? ORDER BY d.name LIMIT ?", (ino, last, batch)
            ).fetchall()

    def _make_dirs(
        self, now: int, parent: int, dirs: Sequence[bytes], mode: int, uid: int, gid: int, *, implicit: bool
    ) -> int:
        """mkdir -p ``dirs`` below ``parent`` inside the caller's transaction; the last directory's ino.

        ``implicit`` marks the directories it creates with :data:`IMPLICIT_XATTR`:
        made only to hold an object, they go again with their last entry
        (:meth:`remove_empty_parents`); directories made any other way stay.
        """
        self._dir(parent, live=True)
        cur = parent
        for name in dirs:
            check_name(name)
            entry = self._dentry(cur, name)
            if entry is None:
                cur = self._make(now, cur, name, mode, uid, gid, size=DIR_SIZE).ino
                if implicit:
                    self._db.execute("INSERT INTO xattrs VALUES (?, ?, ?)", (cur, IMPLICIT_XATTR, b"1"))
            elif _is_dir(entry[2]):
                cur = entry[1]
            else:
                raise NotADirectory(f"{name!r} in directory {cur} is not a directory")
        return cur

    @staticmethod
    def _dir_mode(mode: int) -> int:
        if mode & _IFMT not in (0, _IFDIR):
            raise InvalidArgument(f"directory mode with file type {mode & _IFMT:o}")
        return _IFDIR | (mode & _PERM_BITS)

    @_api
    def make_dirs(self, parent: int, dirs: list[bytes], *, mode: int, uid: int, gid: int) -> Attr:
        """mkdir -p: create the missing directories of ``dirs`` below ``parent``; existing ones are kept."""
        mode = self._dir_mode(mode)
        with self._write() as now:
            ino = self._make_dirs(now, parent, dirs, mode, uid, gid, implicit=False)
            # Asked for by name: no longer an implied directory that vanishes when emptied.
            self._db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, IMPLICIT_XATTR))
            self._log(now, "make_dirs", [parent, dirs, mode, uid, gid, ino])
            return self._attr(ino)

    @_api
    def put_object(
        self,
        parent: int,
        dirs: list[bytes],
        name: bytes,
        *,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime_ns: int,
        blocks: list[BlockRef],
        inline: bytes | None,
        xattrs: dict[bytes, bytes],
        chunk_exists: Callable[[bytes], bool],
        if_none_match: bool = False,
        if_match: tuple[bytes, bytes] | None = None,
        dir_mode: int = 0o755,
        replicas: int | None = None,
    ) -> Attr:
        """Write a whole object atomically: a new regular file ``dirs/name`` below ``parent``.

        Missing directories are created (mkdir -p with ``dir_mode``); an existing
        non-directory there is replaced (like rename over it, so an open old
        inode lives on until released).  ``if_none_match`` requires that nothing
        is at the name; ``if_match=(xattr, value)`` requires an existing entry
        whose xattr has that value (NotFound / PreconditionFailed otherwise).
        Readers never see a partial object: the inode, its data and xattrs and
        its name appear in one transaction.  ``replicas`` as for :meth:`commit_write`.
        """
        if mode & _IFMT not in (0, _IFREG):
            raise InvalidArgument(f"put_object with file type {mode & _IFMT:o}")
        mode = _IFREG | (mode & _PERM_BITS)
        dir_mode = self._dir_mode(dir_mode)
        check_name(name)
        _check_replicas(replicas)
        refs = self._object_refs(size, blocks, inline)
        for key, value in xattrs.items():
            _check_xattr_name(key)
            if len(value) > XATTR_SIZE_MAX:
                raise RangeError(f"xattr value of {len(value)} bytes exceeds {XATTR_SIZE_MAX}")
            _check_policy_xattr(key, value)
        with self._write() as now:
            final = self._make_dirs(now, parent, dirs, dir_mode, uid, gid, implicit=True)
            old = self._dentry(final, name)
            if old is not None and _is_dir(old[2]):
                raise IsADirectory(f"{name!r} in directory {final} is a directory")
            if if_none_match and old is not None:
                raise PreconditionFailed(f"{name!r} exists in directory {final}")
            if if_match is not None:
                if old is None:
                    raise NotFound(f"{name!r} not found in directory {final}")
                row = self._db.execute(
                    "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (old[1], if_match[0])
                ).fetchone()
                if row is None or row[0] != if_match[1]:
                    raise PreconditionFailed(f"{name!r} in directory {final} does not match {if_match[0]!r}")
            if old is not None:
                self._del_dentry(old[0])
            ino = self._make(now, final, name, mode, uid, gid).ino
            # The new inode takes its references before the old one drops its own, so a chunk both
            # share never passes through refcount 0 (which would demand chunk_exists).
            for ref in refs:
                self._incref(ref.chunk_id, ref.stored_bytes, chunk_exists)
            self._db.executemany(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                [(ino, r.index, r.chunk_id, r.length, r.stored_bytes) for r in refs],
            )
            self._raise_replicas([r.chunk_id for r in refs], replicas)
            stored = len(inline) if inline is not None else sum(r.stored_bytes for r in refs)
            self._db.execute(
                "UPDATE inodes SET size = ?, stored = ?, inline = ?, atime_ns = ?, mtime_ns = ? "
                "WHERE ino = ?",
                (size, stored, inline, mtime_ns, mtime_ns, ino),
            )
            self._db.executemany(
                "INSERT INTO xattrs VALUES (?, ?, ?)", [(ino, k, v) for k, v in xattrs.items()]
            )
            if old is not None:
                self._set_nlink(old[1], old[3] - 1, now)
            self._log(
                now,
                "put_object",
                [
                    parent,
                    dirs,
                    name,
                    mode,
                    uid,
                    gid,
                    size,
                    mtime_ns,
                    [list(r) for r in refs],
                    inline,
                    sorted(xattrs.items()),
                    if_none_match,
                    None if if_match is None else list(if_match),
                    dir_mode,
                    ino,
                    replicas,
                ],
            )
            return self._attr(ino)

    def _object_refs(self, size: int, blocks: list[BlockRef], inline: bytes | None) -> list[BlockRef]:
        """Validate a whole object's data; its block refs (holes left out, lengths cut at ``size``)."""
        if size < 0:
            raise InvalidArgument(f"negative size {size}")
        if inline is not None:
            if blocks:
                raise InvalidArgument("put_object got both inline data and blocks")
            if len(inline) > self._inline_max:
                raise InvalidArgument(f"inline data of {len(inline)} bytes exceeds {self._inline_max}")
            if len(inline) != size:
                raise InvalidArgument(f"inline data of {len(inline)} bytes for size {size}")
            return []
        bs = self._block_size
        refs: list[BlockRef] = []
        seen: set[int] = set()
        for raw in blocks:
            ref = self._check_ref(raw)
            if ref.index * bs >= size:
                raise InvalidArgument(f"block {ref.index} lies beyond size {size}")
            if ref.index in seen:
                raise InvalidArgument(f"block {ref.index} given twice")
            seen.add(ref.index)
            if ref.chunk_id:  # an empty chunk id is a hole, as in commit_write
                # Bytes past ``size`` are not the file's: cut them as a truncate would.
                refs.append(ref._replace(length=min(ref.length, size - ref.index * bs)))
        return refs

    @_api
    def remove_tree(self, parent: int, name: bytes) -> int:
        """rm -r ``name`` in ``parent``; the number of inodes that lost names (or, for a file, 1).

        Inodes still open keep living unlinked (nlink 0) until released, and files
        with names outside the tree keep those.
        """
        _check_lookup_name(name)
        with self._write() as now:
            self._dir(parent, live=False)
            entry = self._dentry(parent, name)
            if entry is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            dentry_id, ino, mode, nlink = entry
            self._del_dentry(dentry_id)
            if _is_dir(mode):
                removed = self._remove_subtree(ino, now)
                self._touch_dir(parent, now, -1)
                if parent == ROOT_INO:
                    self._follow_volumes([ino])
            else:
                self._touch_dir(parent, now)
                self._set_nlink(ino, nlink - 1, now)
                removed = 1
            self._log(now, "remove_tree", [parent, name])
        return removed

    def _remove_subtree(self, top: int, now: int) -> int:
        """Unlink everything below directory ``top`` (whose own dentry is already gone) and ``top``.

        Set-based over scratch tables rather than a Python recursion: a whole
        bucket is a handful of statements, and no depth limit applies.  Joins
        name the scratch table first with CROSS JOIN, which SQLite keeps as the
        outer loop: without statistics on the TEMP tables the planner would
        otherwise scan the whole dentries or blocks table to remove a tiny tree.
        """
        db = self._db
        dirs, links, purge = self._scratch("dirs"), self._scratch("links"), self._scratch("purge")
        db.execute(
            "WITH RECURSIVE sub(ino) AS "
            "(SELECT ? UNION SELECT d.ino FROM dentries d JOIN sub ON d.parent = sub.ino WHERE d.is_dir = 1) "
            f"INSERT INTO {dirs} SELECT ino FROM sub",
            (top,),
        )
        # A file may have several names inside the tree, and others outside it.
        db.execute(
            f"INSERT INTO {links} SELECT d.ino, COUNT(*) FROM {dirs} s "
            "CROSS JOIN dentries d ON d.parent = s.ino WHERE d.is_dir = 0 GROUP BY d.ino"
        )
        db.execute(f"DELETE FROM dentries WHERE parent IN (SELECT ino FROM {dirs})")
        db.execute(
            f"UPDATE inodes SET nlink = nlink - (SELECT l.n FROM {links} l WHERE l.ino = inodes.ino), "
            f"ctime_ns = ? WHERE ino IN (SELECT ino FROM {links})",
            (now,),
        )
        db.execute(f"UPDATE inodes SET nlink = 0, ctime_ns = ? WHERE ino IN (SELECT ino FROM {dirs})", (now,))
        db.execute(
            f"INSERT INTO {purge} SELECT i.ino FROM inodes i "
            f"WHERE i.ino IN (SELECT ino FROM {dirs} UNION ALL SELECT ino FROM {links}) AND i.nlink = 0 "
            "AND NOT EXISTS (SELECT 1 FROM opens o WHERE o.ino = i.ino)"
        )
        self._purge_set(purge, now)
        count: int = db.execute(
            f"SELECT (SELECT COUNT(*) FROM {dirs}) + (SELECT COUNT(*) FROM {links})"
        ).fetchone()[0]
        return count

    def _purge_set(self, table: str, now: int) -> None:
        """:meth:`_purge` for every inode listed in scratch table ``table``, in bulk."""
        db = self._db
        db.execute(
            "UPDATE chunks SET refcount = chunks.refcount - d.n, "
            "zero_since_ns = CASE WHEN chunks.refcount - d.n <= 0 THEN ? ELSE chunks.zero_since_ns END "
            f"FROM (SELECT b.chunk_id, COUNT(*) AS n FROM {table} p CROSS JOIN blocks b ON b.ino = p.ino "
            "GROUP BY b.chunk_id) d WHERE chunks.chunk_id = d.chunk_id",
            (now,),
        )
        for owned in ("blocks", "xattrs", "inodes"):
            db.execute(f"DELETE FROM {owned} WHERE ino IN (SELECT ino FROM {table})")

    @_api
    def remove_empty_parents(self, parent: int, dirs: list[bytes], keep_depth: int = 0) -> int:
        """rmdir ``dirs`` below ``parent`` from the deepest up while empty; how many went.

        S3 has no directories: once its last object goes, an implied parent must
        vanish too.  Only directories :meth:`put_object` created (marked with
        :data:`IMPLICIT_XATTR`) count as implied; one made by mkdir, by
        :meth:`make_dirs` (an S3 ``dir/`` marker) or by the mount stays.  The walk
        stops there, at the first non-empty directory, at depth
        ``keep_depth`` (``dirs[:keep_depth]`` stay) or where the path ends early
        (a missing or non-directory component is no error).
        """
        for name in dirs:
            _check_lookup_name(name)
        with self._write() as now:
            self._dir(parent, live=False)
            chain = [parent]  # chain[i]: the directory at depth i
            for name in dirs:
                entry = self._dentry(chain[-1], name)
                if entry is None or not _is_dir(entry[2]):
                    break
                chain.append(entry[1])
            removed = 0
            for depth in range(len(chain) - 1, max(keep_depth, 0), -1):
                ino, up = chain[depth], chain[depth - 1]
                if self._has_children(ino) or not self._is_implicit(ino):
                    break
                self._db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (up, dirs[depth - 1]))
                self._touch_dir(up, now, -1)
                self._set_nlink(ino, 0, now)
                if up == ROOT_INO:
                    self._follow_volumes([ino])
                removed += 1
            self._log(now, "remove_empty_parents", [parent, dirs, keep_depth])
        return removed

    def _is_implicit(self, ino: int) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM xattrs WHERE ino = ? AND name = ?", (ino, IMPLICIT_XATTR)
        ).fetchone()
        return row is not None

    @_api
    def internal_dir(self, name: str) -> int:
        """The inode of internal root ``name`` (one of :data:`INTERNAL_DIRS`)."""
        if name not in INTERNAL_DIRS:
            raise InvalidArgument(f"unknown internal directory {name!r}")
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (_INTERNAL_KEY + name,)).fetchone()
        if row is None:
            raise NotFound(f"internal directory {name!r} is missing")
        ino: int = row[0]
        return ino

    @_api
    def snapshot(self, src_dir: int, dst_parent: int, name: bytes, *, uid: int, gid: int) -> Attr:
        """Copy-on-write clone of the tree at ``src_dir`` as new directory ``name`` in ``dst_parent``.

        Every inode is copied with its attributes, xattrs and block map; chunks
        are shared (their refcounts rise), never copied.  Hard links within the
        tree stay hard links.  The new top directory is owned by ``uid``/``gid``
        (setgid rules as mkdir); everything below keeps its owner.
        """
        check_name(name)
        with self._write() as now:
            self._dir(src_dir, live=True)
            pmode, pnlink, pgid = self._dir(dst_parent, live=True)
            if self._dentry(dst_parent, name) is not None:
                raise Exists(f"{name!r} exists in directory {dst_parent}")
            if self._is_ancestor(src_dir, dst_parent):
                raise InvalidArgument(f"cannot snapshot directory {src_dir} into its own subtree")
            if pnlink >= LINK_MAX:
                raise TooManyLinks(f"directory {dst_parent} has {pnlink} links")
            setgid = 0
            if pmode & stat.S_ISGID:
                gid, setgid = pgid, stat.S_ISGID
            top = self._clone_tree(src_dir)
            self._db.execute(
                "UPDATE inodes SET uid = ?, gid = ?, mode = mode | ?, ctime_ns = ? WHERE ino = ?",
                (uid, gid, setgid, now, top),
            )
            self._add_dentry(dst_parent, name, top, True)
            self._touch_dir(dst_parent, now, 1)
            self._log(now, "snapshot", [src_dir, dst_parent, name, uid, gid, top])
            return self._attr(top)

    def _clone_tree(self, src: int) -> int:
        """Copy the tree at directory ``src`` (inodes, names, xattrs, block maps); the copy's nameless top."""
        db = self._db
        dirs, inos, mapping = self._scratch("dirs"), self._scratch("inos"), self._scratch("map")
        db.execute(
            "WITH RECURSIVE sub(ino) AS "
            "(SELECT ? UNION SELECT d.ino FROM dentries d JOIN sub ON d.parent = sub.ino WHERE d.is_dir = 1) "
            f"INSERT INTO {dirs} SELECT ino FROM sub",
            (src,),
        )
        db.execute(
            f"INSERT INTO {inos} SELECT ino FROM {dirs} "
            f"UNION SELECT d.ino FROM {dirs} s CROSS JOIN dentries d ON d.parent = s.ino"
        )
        # Every new inode number exceeds every existing one (AUTOINCREMENT), and the copies carry
        # their original's number (negated) in ``generation`` until the mapping is read back.
        base: int = db.execute("SELECT COALESCE(MAX(ino), 0) FROM inodes").fetchone()[0]
        db.execute(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline) SELECT mode, nlink, uid, gid, rdev, size, stored, atime_ns, "
            f"mtime_ns, ctime_ns, -ino, symlink, inline FROM inodes WHERE ino IN (SELECT ino FROM {inos}) "
            "ORDER BY ino"
        )
        db.execute(f"INSERT INTO {mapping} SELECT -generation, ino FROM inodes WHERE ino > ?", (base,))
        db.execute(
            f"UPDATE inodes SET generation = o.generation FROM {mapping} m "
            "CROSS JOIN inodes o ON o.ino = m.old WHERE inodes.ino = m.new"
        )
        db.execute(
            "INSERT INTO dentries (parent, name, ino, is_dir) "
            f"SELECT mp.new, d.name, mi.new, d.is_dir FROM {dirs} s "
            f"CROSS JOIN dentries d ON d.parent = s.ino CROSS JOIN {mapping} mp ON mp.old = d.parent "
            f"CROSS JOIN {mapping} mi ON mi.old = d.ino ORDER BY d.id"
        )
        # A file's copy has only the names the copied tree gives it (its other names stay with the original).
        db.execute(
            "UPDATE inodes SET nlink = c.n FROM (SELECT d.ino, COUNT(*) AS n FROM dentries d "
            f"WHERE d.parent IN (SELECT new FROM {mapping}) AND d.is_dir = 0 GROUP BY d.ino) c "
            "WHERE inodes.ino = c.ino"
        )
        db.execute(
            f"INSERT INTO xattrs SELECT m.new, x.name, x.value FROM {mapping} m "
            "CROSS JOIN xattrs x ON x.ino = m.old"
        )
        db.execute(
            "INSERT INTO blocks SELECT m.new, b.idx, b.chunk_id, b.length, b.stored_bytes "
            f"FROM {mapping} m CROSS JOIN blocks b ON b.ino = m.old"
        )
        # The originals hold these chunks, so their refcounts are positive: no chunk_exists check.
        db.execute(
            "UPDATE chunks SET refcount = chunks.refcount + c.n, zero_since_ns = NULL "
            f"FROM (SELECT b.chunk_id, COUNT(*) AS n FROM {mapping} m CROSS JOIN blocks b ON b.ino = m.new "
            "GROUP BY b.chunk_id) c WHERE chunks.chunk_id = c.chunk_id"
        )
        top: int = db.execute(f"SELECT new FROM {mapping} WHERE old = ?", (src,)).fetchone()[0]
        return top

    # -- volumes, nodes, S3 keys ----------------------------------------------------------

    def _follow_volumes(self, inos: Iterable[int]) -> None:
        """Keep the volume rows of directories ``inos`` on their directories after a namespace change.

        A directory still named in the root keeps its row under that name; one
        removed or moved out of the root (or renamed to a non-UTF-8 name) loses it.
        """
        rows: list[tuple[int, bytes, int]] = []
        for ino in inos:
            rows += self._db.execute(
                "DELETE FROM volumes WHERE ino = ? RETURNING ino, policy, created_ns", (ino,)
            ).fetchall()
        for ino, policy, created_ns in rows:
            entry = self._db.execute(
                "SELECT name FROM dentries WHERE is_dir = 1 AND ino = ? AND parent = ?", (ino, ROOT_INO)
            ).fetchone()
            if entry is None:
                continue
            try:
                name = entry[0].decode()
            except UnicodeDecodeError:
                continue
            # OR REPLACE: a row already under the new name named the directory this one replaced.
            self._db.execute(
                "INSERT OR REPLACE INTO volumes VALUES (?, ?, ?, ?)", (name, ino, policy, created_ns)
            )

    @staticmethod
    def _volume_name(name: str) -> bytes:
        if not isinstance(name, str):
            raise InvalidArgument(f"volume name must be a string, not {type(name).__name__}")
        encoded = name.encode()
        check_name(encoded)
        return encoded

    @staticmethod
    def _volume(row: tuple[str, int, bytes, int]) -> dict[str, Any]:
        name, ino, policy, created_ns = row
        return {"name": name, "ino": ino, "policy": _unpack_dict(policy), "created_ns": created_ns}

    def _volume_row(self, name: str) -> tuple[str, int, bytes, int] | None:
        row: tuple[str, int, bytes, int] | None = self._db.execute(
            "SELECT name, ino, policy, created_ns FROM volumes WHERE name = ?", (name,)
        ).fetchone()
        return row

    @_api
    def create_volume(self, name: str, policy: dict[str, Any], *, mode: int, uid: int, gid: int) -> Attr:
        """A new top-level directory ``name`` registered as a volume with ``policy``."""
        encoded = self._volume_name(name)
        packed = _pack_dict(policy, "volume policy")
        mode = self._dir_mode(mode)
        with self._write() as now:
            attr = self._make(now, ROOT_INO, encoded, mode, uid, gid, size=DIR_SIZE)
            # A row without a directory is stale by definition: the name was free.
            self._db.execute(
                "INSERT OR REPLACE INTO volumes VALUES (?, ?, ?, ?)", (name, attr.ino, packed, now)
            )
            self._log(now, "create_volume", [name, policy, mode, uid, gid, attr.ino])
        return attr

    @_api
    def adopt_volume(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Register the existing top-level directory ``name`` as a volume with ``policy``."""
        encoded = self._volume_name(name)
        packed = _pack_dict(policy, "volume policy")
        with self._write() as now:
            entry = self._dentry(ROOT_INO, encoded)
            if entry is None:
                raise NotFound(f"no top-level directory {name!r}")
            if not _is_dir(entry[2]):
                raise NotADirectory(f"{name!r} is not a directory")
            row = self._volume_row(name)
            if row is not None and row[1] == entry[1]:
                raise Exists(f"{name!r} is already a volume")
            self._db.execute(
                "INSERT OR REPLACE INTO volumes VALUES (?, ?, ?, ?)", (name, entry[1], packed, now)
            )
            self._log(now, "adopt_volume", [name, policy, entry[1]])
        return self._volume((name, entry[1], packed, now))

    @_api
    def get_volume(self, name: str) -> dict[str, Any] | None:
        """``{"name", "ino", "policy", "created_ns"}`` of a registered volume, else None."""
        row = self._volume_row(name)
        return None if row is None else self._volume(row)

    @_api
    def list_volumes(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT name, ino, policy, created_ns FROM volumes ORDER BY name").fetchall()
        return [self._volume(row) for row in rows]

    @_api
    def update_volume(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        packed = _pack_dict(policy, "volume policy")
        with self._write() as now:
            row = self._db.execute(
                "UPDATE volumes SET policy = ? WHERE name = ? RETURNING name, ino, policy, created_ns",
                (packed, name),
            ).fetchone()
            if row is None:
                raise NotFound(f"no volume {name!r}")
            self._log(now, "update_volume", [name, policy])
        return self._volume(row)

    @_api
    def delete_volume(self, name: str, *, remove_dir: bool) -> None:
        """Unregister volume ``name``; ``remove_dir`` also removes its (empty) directory."""
        with self._write() as now:
            row = self._volume_row(name)
            if row is None:
                raise NotFound(f"no volume {name!r}")
            self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))
            entry = self._dentry(ROOT_INO, name.encode())
            if remove_dir and entry is not None and entry[1] == row[1]:
                if self._has_children(entry[1]):
                    raise NotEmpty(f"volume {name!r} is not empty")
                self._del_dentry(entry[0])
                self._touch_dir(ROOT_INO, now, -1)
                self._set_nlink(entry[1], 0, now)
            self._log(now, "delete_volume", [name, remove_dir])

    @staticmethod
    def _node(row: tuple[str, bytes, int]) -> dict[str, Any]:
        node_id, info, updated_ns = row
        return {**_unpack_dict(info), "node_id": node_id, "updated_ns": updated_ns}

    def _node_info(self, node_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT info FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return None if row is None else _unpack_dict(row[0])

    def _store_node(self, node_id: str, info: dict[str, Any], now: int) -> None:
        """Write one node row and bump the layout epoch: the caller has checked that it changes."""
        packed = _pack_dict(info, "node info")
        self._db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)", (node_id, packed, now))
        self._bump_layout_epoch()

    def _bump_layout_epoch(self) -> None:
        """Part of every transaction that changes the nodes table: one epoch, one layout."""
        self._db.execute(
            "INSERT INTO config VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET value = value + 1",
            (_LAYOUT_EPOCH,),
        )

    @_api
    def put_node(self, node_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Create or replace node ``node_id``'s info; returns it with ``node_id`` and ``updated_ns``.

        The layout epoch moves only when the info differs (a rewrite of the same
        info must not make every daemon rebuild its placement table).
        """
        packed = _pack_dict(info, "node info")
        with self._write() as now:
            if self._node_info(node_id) != _unpack_dict(packed):
                self._bump_layout_epoch()
            self._db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)", (node_id, packed, now))
            self._log(now, "put_node", [node_id, info])
        return self._node((node_id, packed, now))

    @_api
    def get_node(self, node_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT node_id, info, updated_ns FROM nodes WHERE node_id = ?", (node_id,)
        ).fetchone()
        return None if row is None else self._node(row)

    @_api
    def list_nodes(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT node_id, info, updated_ns FROM nodes ORDER BY node_id").fetchall()
        return [self._node(row) for row in rows]

    @_api
    def delete_node(self, node_id: str) -> None:
        """Remove node ``node_id`` whatever its state (the admin API's DELETE; see :meth:`remove_node`)."""
        with self._write() as now:
            if self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount == 0:
                raise NotFound(f"no node {node_id!r}")
            self._bump_layout_epoch()
            self._log(now, "delete_node", [node_id])

    # -- placement layout and policy ------------------------------------------------------

    def _layout(self) -> dict[str, Any]:
        """:meth:`layout` inside the caller's transaction."""
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (_LAYOUT_EPOCH,)).fetchone()
        nodes: list[LayoutNode] = []
        for node_id, packed in self._db.execute("SELECT node_id, info FROM nodes ORDER BY node_id"):
            info = {k: v for k, v in _unpack_dict(packed).items() if v is not None}
            try:
                nodes.append(
                    LayoutNode(
                        node_id=node_id,
                        zone=info.get("zone", "default"),
                        capacity_weight=info.get("capacity_weight", 1.0),
                        state=NodeState(info.get("state", NodeState.ACTIVE.value)),
                        address=info.get("address", ""),
                    )
                )
            except ValueError as exc:
                # Never guess (an unreadable state read as "active" would place data on the node).
                raise InternalError(f"node {node_id!r} has an invalid layout entry: {exc}") from exc
        return Layout(0 if row is None else row[0], tuple(nodes), self._default_replicas).to_wire()

    @_api
    def layout(self) -> dict[str, Any]:
        """The placement layout as ``Layout.to_wire()`` data: epoch, default replicas, nodes by id.

        Fields a node row lacks read as zone "default", weight 1.0, state
        "active", address "".  Epoch and nodes come from one read snapshot.
        """
        with self._read():
            return self._layout()

    @_api
    def register_node(
        self, node_id: str, zone: str, address: str, capacity_weight: float = 1.0
    ) -> dict[str, Any]:
        """A daemon announcing itself at start; returns :meth:`layout`.

        A new node joins ACTIVE with the given zone and weight.  After that the
        zone, weight and state are the admin's (a restart with another config
        must not move data behind the admin's back); only the address follows
        the daemon.  Re-registering unchanged writes nothing.
        """
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgument(f"node id must be a non-empty string, not {node_id!r:.80}")
        _check_zone(zone)
        _check_weight(capacity_weight)
        if not isinstance(address, str):
            raise InvalidArgument(f"node address must be a string, not {address!r:.80}")
        with self._write() as now:
            info = self._node_info(node_id)
            if info is None:
                new: dict[str, Any] = {
                    "zone": zone,
                    "capacity_weight": float(capacity_weight),
                    "state": NodeState.ACTIVE.value,
                    "address": address,
                }
            elif info.get("address", "") != address:  # a missing address reads as "" in the layout
                new = {**info, "address": address}
            else:
                return self._layout()
            self._store_node(node_id, new, now)
            self._log(now, "register_node", [node_id, zone, address, float(capacity_weight)])
            return self._layout()

    @_api
    def set_node(
        self,
        node_id: str,
        *,
        state: str | None = None,
        zone: str | None = None,
        capacity_weight: float | None = None,
    ) -> dict[str, Any]:
        """Change a node's state, zone or weight (None: keep); returns :meth:`layout`."""
        changes: dict[str, Any] = {}
        if state is not None:
            if state not in {s.value for s in NodeState}:
                raise InvalidArgument(f"node state must be one of active, draining, out, not {state!r:.40}")
            changes["state"] = state
        if zone is not None:
            _check_zone(zone)
            changes["zone"] = zone
        if capacity_weight is not None:
            _check_weight(capacity_weight)
            changes["capacity_weight"] = float(capacity_weight)
        with self._write() as now:
            info = self._node_info(node_id)
            if info is None:
                raise NotFound(f"no node {node_id!r}")
            new = {**info, **changes}
            if new != info:
                self._store_node(node_id, new, now)
                self._log(now, "set_node", [node_id, state, zone, changes.get("capacity_weight")])
            return self._layout()

    @_api
    def remove_node(self, node_id: str) -> dict[str, Any]:
        """Drop a node from the layout; returns :meth:`layout`.

        Only a node already draining or out may go: removing an active one would
        move its partitions with no drain, so PreconditionFailed says to drain first.
        """
        with self._write() as now:
            info = self._node_info(node_id)
            if info is None:
                raise NotFound(f"no node {node_id!r}")
            state = info.get("state") or NodeState.ACTIVE.value
            if state not in (NodeState.DRAINING.value, NodeState.OUT.value):
                raise PreconditionFailed(f"node {node_id!r} is {state}: set it draining or out first")
            self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            self._bump_layout_epoch()
            self._log(now, "remove_node", [node_id])
            return self._layout()

    @_api
    def policy(self, ino: int, parent: int | None = None) -> dict[str, Any]:
        """``{"replicas", "consistency"}`` that apply to ``ino`` (None: nothing set; use the defaults).

        Each comes from the nearest of ``ino`` and its ancestors carrying
        :data:`REPLICAS_XATTR` / :data:`CONSISTENCY_XATTR`, else from the policy
        (``replication``, ``consistency``) of the volume the path goes through.
        Stored values that do not parse are skipped, as if absent.  A file has
        no parent pointer: pass ``parent`` (the directory it was opened through,
        which the caller knows); without it finding one costs a scan of all
        names.  A file with no name left (open, unlinked) has only its own xattrs.
        """
        with self._read():
            mode = self._inode(ino)[0]
            if parent is not None:
                self._dir(parent, live=False)
            elif not _is_dir(mode):
                row = self._db.execute("SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,)).fetchone()
                parent = None if row is None else row[0]
            # The chain ino, its parent, ... up to the root (or an internal root, or a removed directory);
            # a file's parent is seeded (directories are found by the partial index dentries_dirs).
            rows = self._db.execute(
                "WITH RECURSIVE chain(ino, depth) AS ("
                "SELECT ?1, 0 UNION ALL SELECT ?2, 1 WHERE ?2 IS NOT NULL "
                "UNION SELECT d.parent, c.depth + 1 FROM chain c "
                "JOIN dentries d ON d.ino = c.ino AND d.is_dir = 1 WHERE c.ino != ?3 AND c.depth < ?4) "
                "SELECT c.ino, x.name, x.value FROM chain c "
                "LEFT JOIN xattrs x ON x.ino = c.ino AND x.name IN (?5, ?6) ORDER BY c.depth",
                (
                    ino,
                    parent if not _is_dir(mode) else None,
                    ROOT_INO,
                    _MAX_DEPTH,
                    REPLICAS_XATTR,
                    CONSISTENCY_XATTR,
                ),
            ).fetchall()
            replicas: int | None = None
            consistency: str | None = None
            chain: list[int] = []
            for node, name, value in rows:
                if not chain or chain[-1] != node:
                    chain.append(node)
                if name == REPLICAS_XATTR and replicas is None:
                    replicas = _REPLICAS_VALUES.get(value)
                elif name == CONSISTENCY_XATTR and consistency is None:
                    consistency = _CONSISTENCY_VALUES.get(value)
            if (replicas is None or consistency is None) and len(chain) >= 2 and chain[-1] == ROOT_INO:
                row = self._db.execute("SELECT policy FROM volumes WHERE ino = ?", (chain[-2],)).fetchone()
                if row is not None:
                    volume = _unpack_dict(row[0])
                    if replicas is None:
                        replicas = _replicas_or_none(volume.get("replication"))
                    if consistency is None and volume.get("consistency") in CONSISTENCY_LEVELS:
                        consistency = volume["consistency"]
            return {"replicas": replicas, "consistency": consistency}

    @_api
    def s3_key_put(self, access_key: str, secret: str, description: str) -> None:
        if not access_key or not secret:
            raise InvalidArgument("S3 access key and secret must not be empty")
        with self._write() as now:
            if self._db.execute("SELECT 1 FROM s3_keys WHERE access_key = ?", (access_key,)).fetchone():
                raise Exists(f"S3 access key {access_key!r} exists")
            self._db.execute(
                "INSERT INTO s3_keys VALUES (?, ?, ?, ?)", (access_key, secret, now, description)
            )
            self._log(now, "s3_key_put", [access_key])  # never the secret: the oplog is not secret

    @_api
    def s3_key_get(self, access_key: str) -> str | None:
        """The secret of ``access_key``, or None."""
        row = self._db.execute("SELECT secret FROM s3_keys WHERE access_key = ?", (access_key,)).fetchone()
        return None if row is None else str(row[0])

    @_api
    def s3_key_list(self) -> list[dict[str, Any]]:
        """Every key's ``access_key``, ``created_ns`` and ``description`` (never the secret)."""
        rows = self._db.execute(
            "SELECT access_key, created_ns, description FROM s3_keys ORDER BY access_key"
        ).fetchall()
        return [{"access_key": a, "created_ns": c, "description": d} for a, c, d in rows]

    @_api
    def s3_key_delete(self, access_key: str) -> None:
        with self._write() as now:
            if self._db.execute("DELETE FROM s3_keys WHERE access_key = ?", (access_key,)).rowcount == 0:
                raise NotFound(f"no S3 access key {access_key!r}")
            self._log(now, "s3_key_delete", [access_key])

    # -- maintenance ----------------------------------------------------------------------

    @_api
    def gc_collect(
        self, older_than_ns: int, limit: int, delete: Callable[[list[bytes]], None]
    ) -> list[bytes]:
        with self._write() as now:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT chunk_id FROM chunks WHERE refcount = 0 AND zero_since_ns < ? "
                    "ORDER BY zero_since_ns LIMIT ?",
                    (older_than_ns, max(limit, 0)),
                )
            ]
            if not ids:
                return []
            # The rows go only after the files are gone, so a crash in between just retries.
            delete(ids)
            self._db.executemany(
                "DELETE FROM chunks WHERE chunk_id = ? AND refcount = 0", [(i,) for i in ids]
            )
            self._log(now, "gc_collect", [ids])
        return ids

    @_api
    def unknown_chunks(self, chunk_ids: list[bytes]) -> list[bytes]:
        """The ids among ``chunk_ids`` that no chunks row names (never committed, or collected)."""
        known: set[bytes] = set()
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            known.update(
                r[0]
                for r in self._db.execute(f"SELECT chunk_id FROM chunks WHERE chunk_id IN ({marks})", batch)
            )
        return [cid for cid in chunk_ids if cid not in known]

    @_api
    def chunk_replicas(self, chunk_ids: list[bytes]) -> list[int | None]:
        """The recorded replication factor of each of ``chunk_ids`` (None: unset, or no such chunk)."""
        found: dict[bytes, int | None] = {}
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            found.update(
                self._db.execute(f"SELECT chunk_id, replicas FROM chunks WHERE chunk_id IN ({marks})", batch)
            )
        return [found.get(chunk_id) for chunk_id in chunk_ids]

    @_api
    def chunk_factors(self, chunk_ids: list[bytes]) -> list[int | None]:
        """For repair: each chunk's replication factor, 0 when metadata knows the chunk but
        recorded none (the default applies), None when it does not know it at all (an
        uncommitted write, or collected: repair must leave such a copy alone, or it would
        bring back what garbage collection or the orphan sweep removed)."""
        found: dict[bytes, int] = {}
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            found.update(
                self._db.execute(
                    f"SELECT chunk_id, coalesce(replicas, 0) FROM chunks WHERE chunk_id IN ({marks})", batch
                )
            )
        return [found.get(chunk_id) for chunk_id in chunk_ids]

    @_api
    def referenced_chunks(self) -> dict[bytes, int]:
        return dict(self._db.execute("SELECT chunk_id, refcount FROM chunks WHERE refcount >= 0"))

    @_api
    def counts(self) -> dict[str, int]:
        """Totals over inodes and the chunks table.

        ``files`` counts regular files and ``logical_bytes`` sums their sizes.
        ``chunks`` and ``stored_bytes`` cover every chunks row, including the
        ``unreferenced_chunks`` still awaiting garbage collection; ``chunk_refs``
        is the sum of refcounts (block-map entries).
        """
        # The internal roots are bookkeeping, not part of the filesystem (their contents are).
        inodes, files, dirs, logical = self._db.execute(
            "SELECT COUNT(*), TOTAL(mode & ?1 = ?2), TOTAL(mode & ?1 = ?3), "
            "TOTAL(CASE WHEN mode & ?1 = ?2 THEN size ELSE 0 END) FROM inodes "
            f"WHERE ino NOT IN ({_INTERNAL_INOS_SQL})",
            (_IFMT, _IFREG, _IFDIR),
        ).fetchone()
        chunks, refs, stored, unreferenced = self._db.execute(
            "SELECT COUNT(*), TOTAL(refcount), TOTAL(stored_bytes), TOTAL(refcount = 0) FROM chunks"
        ).fetchone()
        values = {
            "inodes": inodes,
            "files": files,
            "dirs": dirs,
            "logical_bytes": logical,
            "chunks": chunks,
            "chunk_refs": refs,
            "stored_bytes": stored,
            "unreferenced_chunks": unreferenced,
            # Open handles over all client sessions (the opens table holds only open files).
            "open_files": self._db.execute("SELECT TOTAL(count) FROM opens").fetchone()[0],
        }
        return {key: int(value) for key, value in values.items()}

    @property
    def total_changes(self) -> int:
        """Rows changed through this connection so far: a cheap "did that call write?\"."""
        return self._db.total_changes

    @_api
    def oplog_head(self) -> int:
        """The seq of the newest oplog row (0: none yet)."""
        row = self._db.execute(
            "SELECT COALESCE((SELECT MAX(seq) FROM oplog), "
            "(SELECT value FROM config WHERE key = 'oplog_seq'), 0)"
        ).fetchone()
        return int(row[0])

    @_api
    def oplog_since(self, seq: int, limit: int = 1000) -> list[tuple[int, str, list[Any]]]:
        """Up to ``limit`` oplog rows after ``seq``, oldest first: (seq, op, args).  The daemon
        derives the change notices it sends mounts from them (dfs/changes.py)."""
        rows = self._db.execute(
            "SELECT seq, op, args FROM oplog WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [(int(s), str(op), msgpack.unpackb(args, raw=False)) for s, op, args in rows]

    @_api
    def oplog_trim(self, keep: int) -> int:
        # Not logged itself: trimming is local housekeeping, not a replicated change.
        with self._write():
            top = self._db.execute("SELECT MAX(seq) FROM oplog").fetchone()[0]
            if top is None:
                return 0
            # Remember the high-water mark so _log never reuses a number even if all rows go.
            self._db.execute(
                "INSERT INTO config VALUES ('oplog_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                (top,),
            )
            deleted: int = self._db.execute(
                "DELETE FROM oplog WHERE seq <= ?", (top - max(keep, 0),)
            ).rowcount
            return deleted

    @_api
    def fsck(self, stored: Callable[[bytes], bool], *, repair: bool) -> list[str]:
        """Check every invariant; one line per problem found.  ``repair`` also fixes them."""
        with self._write(commit=repair) as now:
            problems = _Fsck(self, stored, repair, now).run()
            if repair and problems:
                self._log(now, "fsck_repair", problems)
        return problems


class _Fsck:
    """One fsck pass.  Checks run in dependency order so each repair feeds the next check."""

    def __init__(self, store: MetaStore, stored: Callable[[bytes], bool], repair: bool, now: int) -> None:
        self.store = store
        self.db = store._db
        self.stored_fn = stored
        self.repair = repair
        self.now = now
        self.problems: list[str] = []
        self._stored_memo: dict[bytes, bool] = {}
        self._paths_left = 100

    def run(self) -> list[str]:
        for check in (
            self.root,
            self.internal_roots,
            self.dangling_dentries,
            self.dentry_kinds,
            self.directory_names,
            self.opens,
            self.xattrs,
            self.orphans,
            self.reachability,
            self.nlink,
            self.leaks,
            self.volumes,
            self.stray_blocks,
            self.blocks_beyond_size,
            self.block_lengths,
            self.missing_chunk_rows,
            self.dangling_blocks,
            self.inline,
            self.stored_totals,
            self.refcounts,
        ):
            check()
        return self.problems

    def report(self, line: str) -> None:
        self.problems.append(line)

    def is_stored(self, chunk_id: bytes) -> bool:
        if chunk_id not in self._stored_memo:
            self._stored_memo[chunk_id] = bool(self.stored_fn(chunk_id))
        return self._stored_memo[chunk_id]

    def path(self, ino: int) -> str:
        """Best-effort path of an inode for messages (a file's first name costs a table scan,
        so only the first few messages get one)."""
        self._paths_left -= 1
        if self._paths_left < 0:
            return f"<inode {ino}>"
        parts: list[bytes] = []
        seen: set[int] = set()
        internal = self.store._internal_inos()
        cur = ino
        while cur != ROOT_INO and cur not in internal and cur not in seen:
            seen.add(cur)
            row = self.db.execute(
                "SELECT parent, name FROM dentries WHERE ino = ? ORDER BY id LIMIT 1", (cur,)
            )
            found = row.fetchone()
            if found is None:
                return f"<inode {ino}, detached>"
            cur = found[0]
            parts.append(found[1])
        if cur in internal:
            top = f"<{internal[cur]}>/"
        elif cur == ROOT_INO:
            top = "/"
        else:
            return f"<inode {ino}, in a cycle>"
        return top + "/".join(p.decode("utf-8", "backslashreplace") for p in reversed(parts))

    # -- namespace --------------------------------------------------------------------

    def root(self) -> None:
        row = self.db.execute("SELECT mode FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone()
        if row is not None and _is_dir(row[0]):
            return
        self.report("root inode missing" if row is None else "root inode is not a directory")
        if self.repair:
            self.db.execute("DELETE FROM inodes WHERE ino = ?", (ROOT_INO,))
            self.store._create_root(self.now)

    def internal_roots(self) -> None:
        """Each internal root: a config row naming a directory that is neither the root nor named."""
        seen: set[int] = set()
        for name in INTERNAL_DIRS:
            row = self.db.execute(
                "SELECT value FROM config WHERE key = ?", (_INTERNAL_KEY + name,)
            ).fetchone()
            if row is None:
                why = "is missing"
            else:
                ino = row[0]
                inode = self.db.execute("SELECT mode FROM inodes WHERE ino = ?", (ino,)).fetchone()
                if inode is None:
                    why = f"names missing inode {ino}"
                elif not _is_dir(inode[0]):
                    why = f"names inode {ino}, which is not a directory"
                elif ino == ROOT_INO or ino in seen:
                    why = f"names inode {ino}, which is another root"
                elif self.db.execute(
                    "SELECT 1 FROM dentries WHERE is_dir = 1 AND ino = ? LIMIT 1", (ino,)
                ).fetchone():
                    why = f"names directory {ino}, which has a name"
                else:
                    seen.add(ino)
                    continue
            self.report(f"internal directory {name!r} {why}")
            if self.repair:
                # A fresh one; a named directory it wrongly pointed at stays where it is.
                seen.add(self.store._create_internal(name, self.now))

    def dangling_dentries(self) -> None:
        rows = self.db.execute(
            "SELECT d.id, d.parent, d.name, d.ino, i.ino IS NULL, p.ino IS NULL, p.mode FROM dentries d "
            "LEFT JOIN inodes i ON i.ino = d.ino LEFT JOIN inodes p ON p.ino = d.parent "
            "WHERE i.ino IS NULL OR p.ino IS NULL OR p.mode & ? != ? OR d.ino = ?",
            (_IFMT, _IFDIR, ROOT_INO),
        ).fetchall()
        for dentry_id, parent, name, ino, no_inode, no_parent, _ in rows:
            if ino == ROOT_INO:
                why = "names the root"
            elif no_inode:
                why = f"names missing inode {ino}"
            else:
                why = "has a missing parent" if no_parent else "has a non-directory parent"
            self.report(f"dentry {name!r} in directory {parent} {why}")
            if self.repair:
                self.db.execute("DELETE FROM dentries WHERE id = ?", (dentry_id,))

    def dentry_kinds(self) -> None:
        rows = self.db.execute(
            "SELECT d.id, d.parent, d.name, i.mode & ?1 = ?2 FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.is_dir != (i.mode & ?1 = ?2)",
            (_IFMT, _IFDIR),
        ).fetchall()
        for dentry_id, parent, name, is_dir in rows:
            self.report(f"dentry {name!r} in directory {parent} has the wrong is_dir flag")
            if self.repair:
                self.db.execute("UPDATE dentries SET is_dir = ? WHERE id = ?", (is_dir, dentry_id))

    def directory_names(self) -> None:
        rows = self.db.execute(
            "SELECT d.ino, MIN(d.id), COUNT(*) FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE i.mode & ? = ? GROUP BY d.ino HAVING COUNT(*) > 1",
            (_IFMT, _IFDIR),
        ).fetchall()
        for ino, keep, count in rows:
            self.report(f"directory {ino} ({self.path(ino)}) has {count} names")
            if self.repair:
                self.db.execute("DELETE FROM dentries WHERE ino = ? AND id != ?", (ino, keep))

    def opens(self) -> None:
        rows = self.db.execute(
            "SELECT o.session, o.ino, s.id IS NULL, i.ino IS NULL, o.count FROM opens o "
            "LEFT JOIN sessions s ON s.id = o.session LEFT JOIN inodes i ON i.ino = o.ino "
            "WHERE s.id IS NULL OR i.ino IS NULL OR o.count <= 0"
        ).fetchall()
        for session, ino, no_session, no_inode, count in rows:
            why = "unknown session" if no_session else "missing inode" if no_inode else f"count {count}"
            self.report(f"open of inode {ino} by session {session!r}: {why}")
            if self.repair:
                self.db.execute("DELETE FROM opens WHERE session = ? AND ino = ?", (session, ino))

    def xattrs(self) -> None:
        rows = self.db.execute(
            "SELECT x.ino, COUNT(*) FROM xattrs x LEFT JOIN inodes i ON i.ino = x.ino "
            "WHERE i.ino IS NULL GROUP BY x.ino"
        ).fetchall()
        for ino, count in rows:
            self.report(f"{count} xattrs of missing inode {ino}")
            if self.repair:
                self.db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))

    def _unreachable_dirs(self) -> list[int]:
        return [
            r[0]
            for r in self.db.execute(
                f"WITH RECURSIVE reach(ino) AS (SELECT ?1 UNION {_INTERNAL_INOS_SQL} "
                "UNION SELECT d.ino FROM dentries d JOIN reach r ON d.parent = r.ino) "
                "SELECT i.ino FROM inodes i WHERE i.mode & ?2 = ?3 AND i.ino NOT IN reach "
                "AND EXISTS (SELECT 1 FROM dentries d WHERE d.is_dir = 1 AND d.ino = i.ino) ORDER BY i.ino",
                (ROOT_INO, _IFMT, _IFDIR),
            )
        ]

    def reachability(self) -> None:
        for ino in self._unreachable_dirs():
            path = self.path(ino)
            if path.endswith("in a cycle>"):
                self.report(f"directory {ino} is reachable from itself (cycle)")
            else:
                self.report(f"directory {ino} ({path}) is unreachable from the root")
        if not self.repair:
            return
        # Re-home one directory at a time: each move reconnects its whole subtree (or breaks a cycle).
        while unreachable := self._unreachable_dirs():
            ino = unreachable[0]
            self.db.execute("DELETE FROM dentries WHERE is_dir = 1 AND ino = ?", (ino,))
            self._attach_lost(ino, True)

    def orphans(self) -> None:
        # A nameless inode is fine only while it is an unlinked (nlink 0), childless open file.
        rows = self.db.execute(
            "SELECT ino, nlink, mode FROM inodes WHERE ino != ? AND ino NOT IN (SELECT ino FROM dentries) "
            f"AND ino NOT IN ({_INTERNAL_INOS_SQL}) AND (nlink > 0 OR ino IN (SELECT parent FROM dentries))",
            (ROOT_INO,),
        ).fetchall()
        for ino, nlink, mode in rows:
            self.report(f"inode {ino} has nlink {nlink} and children or links, but no name")
            if self.repair:
                self._attach_lost(ino, _is_dir(mode))

    def _lost_found(self) -> int:
        """The /lost+found directory (created on demand) where repairs re-home detached inodes."""
        name = _LOST_FOUND
        for n in range(1, 1000):
            row = self.db.execute(
                "SELECT d.ino, i.mode FROM dentries d JOIN inodes i ON i.ino = d.ino "
                "WHERE d.parent = ? AND d.name = ?",
                (ROOT_INO, name),
            ).fetchone()
            if row is None:
                return self.store._make(self.now, ROOT_INO, name, _IFDIR | 0o700, 0, 0, size=DIR_SIZE).ino
            if _is_dir(row[1]):
                ino: int = row[0]
                return ino
            name = _LOST_FOUND + b".%d" % n
        raise InternalError("cannot find a name for lost+found")

    def _attach_lost(self, ino: int, is_dir: bool) -> None:
        lost = self._lost_found()
        name = b"#%d" % ino
        suffix = 0
        while self.db.execute(
            "SELECT 1 FROM dentries WHERE parent = ? AND name = ?", (lost, name)
        ).fetchone():
            suffix += 1
            name = b"#%d.%d" % (ino, suffix)
        self.store._add_dentry(lost, name, ino, is_dir)
        self.report(f"repair: inode {ino} re-linked as /{_LOST_FOUND.decode()}/{name.decode()}")

    def nlink(self) -> None:
        rows = self.db.execute(
            "SELECT i.ino, i.mode, i.nlink, COALESCE(n.names, 0), COALESCE(s.subdirs, 0) FROM inodes i "
            "LEFT JOIN (SELECT ino, COUNT(*) AS names FROM dentries GROUP BY ino) n ON n.ino = i.ino "
            "LEFT JOIN (SELECT parent, COUNT(*) AS subdirs FROM dentries WHERE is_dir = 1 GROUP BY parent) s "
            "ON s.parent = i.ino"
        ).fetchall()
        roots = {ROOT_INO, *self.store._internal_inos()}
        for ino, mode, nlink, names, subdirs in rows:
            if _is_dir(mode):
                expected = 2 + subdirs if names or ino in roots else 0
            else:
                expected = names
            if nlink != expected:
                self.report(f"inode {ino} has nlink {nlink}, expected {expected}")
                if self.repair:
                    self.db.execute("UPDATE inodes SET nlink = ? WHERE ino = ?", (expected, ino))

    def leaks(self) -> None:
        rows = self.db.execute(
            "SELECT i.ino FROM inodes i "
            "WHERE i.nlink = 0 AND NOT EXISTS (SELECT 1 FROM opens o WHERE o.ino = i.ino)"
        ).fetchall()
        for (ino,) in rows:
            self.report(f"inode {ino} has no links and is not open (leaked)")
            if self.repair:
                self.store._purge(ino, self.now)

    def volumes(self) -> None:
        rows = self.db.execute(
            "SELECT v.name, v.ino FROM volumes v WHERE NOT EXISTS (SELECT 1 FROM dentries d "
            "JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? AND d.name = CAST(v.name AS BLOB) "
            "AND d.ino = v.ino AND i.mode & ? = ?)",
            (ROOT_INO, _IFMT, _IFDIR),
        ).fetchall()
        for name, ino in rows:
            self.report(f"volume {name!r} names inode {ino}, which is not the top-level directory {name!r}")
            if self.repair:
                self.db.execute("DELETE FROM volumes WHERE name = ?", (name,))

    # -- data -----------------------------------------------------------------------------

    def stray_blocks(self) -> None:
        rows = self.db.execute(
            "SELECT b.ino, COUNT(*) FROM blocks b LEFT JOIN inodes i ON i.ino = b.ino "
            "WHERE i.ino IS NULL OR i.mode & ? != ? GROUP BY b.ino",
            (_IFMT, _IFREG),
        ).fetchall()
        for ino, count in rows:
            self.report(f"{count} block entries of inode {ino}, which is missing or not a regular file")
            if self.repair:
                self.store._drop_blocks(ino, 0, self.now)

    def blocks_beyond_size(self) -> None:
        rows = self.db.execute(
            "SELECT b.ino, b.idx, i.size FROM blocks b JOIN inodes i ON i.ino = b.ino "
            "WHERE b.idx * ? >= i.size",
            (self.store._block_size,),
        ).fetchall()
        for ino, idx, size in rows:
            self.report(f"inode {ino} ({self.path(ino)}): block {idx} lies beyond size {size}")
            if self.repair:
                self.store._drop_block(ino, idx, self.now)

    def block_lengths(self) -> None:
        rows = self.db.execute(
            "SELECT ino, idx, length FROM blocks WHERE length < 0 OR length > ?", (self.store._block_size,)
        ).fetchall()
        for ino, idx, length in rows:
            self.report(f"inode {ino}: block {idx} has invalid length {length}")
            if self.repair:
                self.db.execute(
                    "UPDATE blocks SET length = MAX(0, MIN(length, ?)) WHERE ino = ? AND idx = ?",
                    (self.store._block_size, ino, idx),
                )

    def missing_chunk_rows(self) -> None:
        rows = self.db.execute(
            "SELECT b.chunk_id, COUNT(*), MAX(b.stored_bytes) FROM blocks b "
            "LEFT JOIN chunks c ON c.chunk_id = b.chunk_id WHERE c.chunk_id IS NULL GROUP BY b.chunk_id"
        ).fetchall()
        for chunk_id, count, stored_bytes in rows:
            self.report(f"chunk {chunk_id.hex()} is named by {count} block entries but has no chunks row")
            if self.repair and self.is_stored(chunk_id):
                # The refcount check below sets the right count; unstored ones become holes next.
                self.db.execute(
                    "INSERT INTO chunks (chunk_id, refcount, stored_bytes, zero_since_ns) "
                    "VALUES (?, 0, ?, ?)",
                    (chunk_id, stored_bytes, self.now),
                )

    def dangling_blocks(self) -> None:
        lost: dict[int, list[tuple[int, bytes]]] = {}
        for ino, idx, chunk_id in self.db.execute("SELECT ino, idx, chunk_id FROM blocks").fetchall():
            if not self.is_stored(chunk_id):
                lost.setdefault(ino, []).append((idx, chunk_id))
        for ino, entries in lost.items():
            first_idx, first_chunk = entries[0]
            self.report(
                f"inode {ino} ({self.path(ino)}): {len(entries)} blocks name missing chunks "
                f"(first: block {first_idx}, chunk {first_chunk.hex()})"
            )
            if self.repair:
                for idx, _ in entries:
                    self.store._drop_block(ino, idx, self.now)
                self.report(f"repair: inode {ino}: {len(entries)} blocks turned into holes")

    def inline(self) -> None:
        rows = self.db.execute(
            "SELECT i.ino, i.mode, i.size, length(i.inline), "
            "EXISTS (SELECT 1 FROM blocks b WHERE b.ino = i.ino) FROM inodes i WHERE i.inline IS NOT NULL"
        ).fetchall()
        for ino, mode, size, length, has_blocks in rows:
            if mode & _IFMT != _IFREG:
                self.report(f"inode {ino}: inline data on a non-regular file")
                self._set_inline(ino, "NULL")
            elif has_blocks:
                self.report(
                    f"inode {ino} ({self.path(ino)}): both inline data and blocks; dropping inline data"
                )
                self._set_inline(ino, "NULL")
            elif length > size:
                self.report(
                    f"inode {ino} ({self.path(ino)}): {length} bytes of inline data exceed size {size}"
                )
                self._set_inline(ino, "substr(inline, 1, size)")

    def _set_inline(self, ino: int, expr: str) -> None:
        if self.repair:
            self.db.execute(
                "UPDATE inodes SET stored = stored - COALESCE(length(inline), 0) "
                f"+ COALESCE(length({expr}), 0), "
                f"inline = {expr} WHERE ino = ?",
                (ino,),
            )

    def stored_totals(self) -> None:
        rows = self.db.execute(
            "SELECT i.ino, i.stored, COALESCE(length(i.inline), 0) + "
            "(SELECT COALESCE(SUM(b.stored_bytes), 0) FROM blocks b WHERE b.ino = i.ino) AS actual "
            "FROM inodes i WHERE i.stored != actual"
        ).fetchall()
        for ino, recorded, actual in rows:
            self.report(f"inode {ino}: stored bytes {recorded}, actual {actual}")
            if self.repair:
                self.db.execute("UPDATE inodes SET stored = ? WHERE ino = ?", (actual, ino))

    def refcounts(self) -> None:
        rows = self.db.execute(
            "SELECT c.chunk_id, c.refcount, c.zero_since_ns IS NOT NULL, COALESCE(b.n, 0) FROM chunks c "
            "LEFT JOIN (SELECT chunk_id, COUNT(*) AS n FROM blocks GROUP BY chunk_id) b "
            "ON b.chunk_id = c.chunk_id "
            "WHERE c.refcount != COALESCE(b.n, 0) OR (c.refcount = 0) != (c.zero_since_ns IS NOT NULL)"
        ).fetchall()
        for chunk_id, refcount, zero_marked, actual in rows:
            if refcount != actual:
                self.report(f"chunk {chunk_id.hex()} has refcount {refcount}, but {actual} block entries")
            else:
                state = "marked" if zero_marked else "not marked"
                self.report(f"chunk {chunk_id.hex()} with refcount {refcount} is {state} unreferenced")
            if self.repair:
                self.db.execute(
                    "UPDATE chunks SET refcount = ?1, zero_since_ns = CASE WHEN ?1 > 0 THEN NULL "
                    "ELSE COALESCE(zero_since_ns, ?2) END WHERE chunk_id = ?3",
                    (actual, self.now, chunk_id),
                )
