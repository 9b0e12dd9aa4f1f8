""":class:`MetaStore`: the SQLite connection, schema set-up and upgrades, durability, and the concerns
assembled into one store."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

from daemon.meta.base import _api, _db_error
from daemon.meta.fsck import Checks
from daemon.meta.gc import Gc
from daemon.meta.keys import Keys
from daemon.meta.namespace import Namespace
from daemon.meta.objects import Objects
from daemon.meta.oplog import Oplog
from daemon.meta.policy import MAX_REPLICAS, Policy, _replicas_or_none
from daemon.meta.registry import Registry
from daemon.meta.schema import _INTERNAL_KEY, _SCHEMA, INTERNAL_DIRS, SCHEMA_VERSION
from daemon.meta.snapshots import Snapshots
from daemon.meta.stats import Stats
from daemon.meta.tokens import Tokens
from dfs.core.errors import ConfigError
from dfs.core.namespace import ROOT_INO


class MetaStore(Namespace, Objects, Snapshots, Policy, Registry, Keys, Tokens, Gc, Oplog, Stats, Checks):
    """All metadata of one filesystem; see :mod:`daemon.meta` for the concerns and the invariants."""

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
