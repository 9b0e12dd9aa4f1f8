""":class:`MetaStore`: the engine's connection (SQLite or PostgreSQL), schema set-up and upgrades,
durability, and the concerns assembled into one store."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Mapping

import psycopg
import psycopg.conninfo

from daemon.meta.base import _api, _db_error
from daemon.meta.deletions import Deletions
from daemon.meta.engine import ENGINES, Db, PgDb, SqliteDb, pg_ddl
from daemon.meta.fsck import Checks
from daemon.meta.gc import Gc
from daemon.meta.keys import Keys
from daemon.meta.leader import Leader
from daemon.meta.namespace import Namespace
from daemon.meta.objects import Objects
from daemon.meta.oplog import Oplog
from daemon.meta.policy import MAX_REPLICAS, Policy, _replicas_or_none
from daemon.meta.quotas import create_triggers
from daemon.meta.registry import Registry
from daemon.meta.remark import Remarks
from daemon.meta.requests import Requests
from daemon.meta.schema import _INTERNAL_KEY, _SCHEMA, COUNTER_COLUMNS, INTERNAL_DIRS, SCHEMA_VERSION
from daemon.meta.snapshots import Snapshots
from daemon.meta.stats import Stats
from daemon.meta.tiers import Tiers
from daemon.meta.tokens import Tokens
from daemon.meta.volume_keys import VolumeKeys
from dfs.core.config import MiB
from dfs.core.errors import ConfigError, InternalError, Unavailable
from dfs.core.namespace import INLINE_LIMIT_BYTES, ROOT_INO

# SQLite pages a connection keeps in this process (each connection has its own cache; the
# operating system's page cache holds the file besides, and a page missed here is read from
# there).  16 MiB holds the inner pages of the indexes of a namespace of millions of entries;
# at 64 MiB the writer's and the event loop's reader's caches filled with the leaf pages of
# small files' inline data, which the mounts cache themselves.
CACHE_BYTES = 16 * MiB
# A connection for whole-table scans (the metrics' counts): the pages it reads are each read
# once, so a large cache only keeps them in the daemon's RSS (20 MiB more after the workload).
SCAN_CACHE_BYTES = 2 * MiB


class MetaStore(
    Namespace,
    Snapshots,  # before Objects, which it extends
    Objects,
    Remarks,
    Policy,
    VolumeKeys,
    Registry,
    Keys,
    Tokens,
    Tiers,  # before Gc, which calls it
    Gc,
    Oplog,
    Stats,
    Checks,
    Requests,
    Deletions,
    Leader,
):
    """All metadata of one filesystem; see :mod:`daemon.meta` for the concerns and the invariants."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        block_size: int,
        now_ns: Callable[[], int] = time.time_ns,
        default_replicas: int = 1,
        engine: str = "sqlite",
        failover_timeout_s: float | None = None,
        default_trash_days: float = 0.0,
    ) -> None:
        """``path`` is the SQLite file, or with ``engine="postgresql"`` a libpq connection string;
        ``default_trash_days``: the trash retention of volumes whose policy names none
        (daemon/meta/trash.py; the Trash concern comes in through Namespace and Objects)."""
        if block_size <= 0:
            raise ConfigError(f"bad metadata geometry: block_size={block_size}")
        if _replicas_or_none(default_replicas) is None:
            raise ConfigError(f"default replicas must be 1..{MAX_REPLICAS}, not {default_replicas!r:.40}")
        if engine not in ENGINES:
            raise ConfigError(f"metadata engine must be one of {', '.join(ENGINES)}, not {engine!r:.40}")
        self._path = os.fspath(path)
        self._engine = engine
        self._where = self._path if engine == "sqlite" else describe_dsn(self._path)
        # Inline data is refused only above the fixed ceiling, never above this daemon's own
        # [storage] inline_max: that is each writer's choice, and daemons of one cluster (a rolling
        # upgrade, a changed default) may differ without breaking each other's small-file closes.
        self._inline_limit = min(INLINE_LIMIT_BYTES, block_size)
        self._block_size = block_size
        self._default_replicas = default_replicas
        self._trash_days_default = float(default_trash_days)
        self._now = now_ns
        self._failover_timeout_s = failover_timeout_s
        self._wal_fd: int | None = None
        self._synced_changes = -1
        self._db = _connect(engine, self._path, self._where)
        try:
            self._setup()
        except self._db.errors as exc:
            self._db.close()
            raise _db_error(self._db, exc, f"opening {self._where}") from exc
        except BaseException:
            self._db.close()
            raise

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def where(self) -> str:
        """The engine and where its data lives, fit for logs (no password)."""
        return f"sqlite {self._path}" if self._engine == "sqlite" else self._where

    def _setup(self) -> None:
        db = self._db
        if db.engine == "sqlite":
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigError(f"{self._path}: SQLite refused WAL mode (got {mode!r})")
            # NORMAL in WAL mode: commits survive a process crash; sync() adds power-loss durability.
            db.execute("PRAGMA synchronous=NORMAL")
            db.set_cache_bytes(CACHE_BYTES)
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute("PRAGMA busy_timeout=10000")  # offline tools may hold the lock briefly
            # Debian's SQLite zeroes every freed page (SECURE_DELETE): deleting a file with inline
            # data wrote its overflow pages to the WAL again, as zeros.  FAST still clears deleted
            # cells within the pages written anyway; a freed overflow page may keep old bytes
            # until reused, as the disk's free blocks keep a deleted chunk file's (neither is
            # shredded: encrypted volumes keep no data inline).
            db.execute("PRAGMA secure_delete=FAST")
            # Checkpoint every ~40 MiB of WAL rather than 4 MiB: checkpoints fsync, and a longer WAL
            # lets hot pages (root directory, sequence table) be written back once per checkpoint.
            db.execute("PRAGMA wal_autocheckpoint=10000")
        with self._write() as now:
            ensure_tables(db, self._where)
            self._check_block_size()
            if db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone() is None:
                self._create_root(now)
                catch_up_sequences(db)
            for name in INTERNAL_DIRS:
                # Only a missing config row is created here; a broken one is fsck's to report and repair.
                if (
                    db.execute("SELECT 1 FROM config WHERE key = ?", (_INTERNAL_KEY + name,)).fetchone()
                    is None
                ):
                    self._create_internal(name, now)
            # Volumes from before quotas get their accounting domain (a one-off walk of each).
            self._adopt_volume_domains()

    def _check_block_size(self) -> None:
        row = self._db.execute("SELECT value FROM config WHERE key = 'block_size'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO config VALUES ('block_size', ?)", (self._block_size,))
        elif row[0] != self._block_size:
            raise ConfigError(
                f"{self._where}: block maps use block_size {row[0]}, configured {self._block_size}"
            )

    def reader(self, *, failover_timeout_s: float | None = None, cache_bytes: int = CACHE_BYTES) -> MetaStore:
        """A second, read-only connection to the same database.

        WAL readers never block the writer and see every committed
        transaction, so lookups can be answered without queueing behind writes.
        ``cache_bytes``: the pages it keeps (SQLite; each connection has its own cache).
        """
        other = MetaStore(
            self._path,
            block_size=self._block_size,
            now_ns=self._now,
            default_replicas=self._default_replicas,
            engine=self._engine,
            failover_timeout_s=failover_timeout_s,
            default_trash_days=self._trash_days_default,
        )
        other._db.set_read_only()
        other._db.set_cache_bytes(cache_bytes)
        other._read_only = True
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
        if self._db.engine != "sqlite":
            return  # a PostgreSQL commit is durable when it returns (synchronous_commit)
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


# The advisory lock key daemons take while creating or upgrading the tables ("dfs" "meta").
_SETUP_LOCK = 0x6466_7300_6D65_7461


def describe_dsn(dsn: str) -> str:
    """A connection string fit for messages and logs: its password never is."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable connection string)"
    names = ("host", "hostaddr", "port", "dbname", "user")
    shown = " ".join(f"{k}={v}" for k, v in parts.items() if k in names)
    return f"postgresql {shown}".rstrip()


def _connect(engine: str, path: str, where: str) -> Db:
    try:
        if engine == "sqlite":
            return SqliteDb(path)
        return PgDb(path)
    except sqlite3.Error as exc:
        raise InternalError(f"metadata opening {where}: {type(exc).__name__}: {exc}") from exc
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"metadata opening {where}: {exc}") from exc
    except psycopg.Error as exc:
        raise Unavailable(f"metadata opening {where}: {exc}") from exc


def schema_version(db: Db) -> int:
    """The schema version of the database's tables (0: none yet)."""
    if db.engine == "sqlite":
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if not db.execute("SELECT to_regclass('config') IS NOT NULL").fetchone()[0]:
        return 0
    row = db.execute("SELECT value FROM config WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])


def ensure_tables(db: Db, where: str) -> None:
    """Inside a write transaction: create the tables that are missing, bring an older
    database's up to this schema (each step checks first: reruns are no-ops) and record the
    version; a database newer than the code is refused."""
    if db.engine == "postgresql":
        # Daemons starting together against an empty database (or a load): one creates the tables.
        db.execute("SELECT pg_advisory_xact_lock(?)", (_SETUP_LOCK,))
    version = schema_version(db)
    if not 0 <= version <= SCHEMA_VERSION:
        raise ConfigError(f"{where}: metadata schema {version}, expected {SCHEMA_VERSION}")
    for statement in _SCHEMA:
        db.execute(statement if db.engine == "sqlite" else pg_ddl(statement))
    if db.engine == "sqlite":
        columns = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
        if "replicas" not in columns:  # version 1: chunks had no replication factor
            db.execute("ALTER TABLE chunks ADD COLUMN replicas INTEGER")
        if "quota" not in {row[1] for row in db.execute("PRAGMA table_info(inodes)")}:
            db.execute("ALTER TABLE inodes ADD COLUMN quota INTEGER")  # version 2: no quota domains
    elif (
        db.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'inodes' AND column_name = 'quota'"
        ).fetchone()
        is None
    ):
        db.execute("ALTER TABLE inodes ADD COLUMN quota BIGINT")  # version 2: no quota domains
    create_triggers(db)
    if db.engine == "sqlite":
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    else:  # PostgreSQL databases start at version 2
        db.execute(
            "INSERT INTO config VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (SCHEMA_VERSION,),
        )


def catch_up_sequences(db: Db, floors: Mapping[str, int] | None = None) -> None:
    """PostgreSQL: move the inode and dentry-id sequences past rows inserted with explicit
    numbers (the root, a loaded dump) and past ``floors`` (a dump's counters), as SQLite's
    AUTOINCREMENT does by itself."""
    if db.engine != "postgresql":
        return
    for table, column in COUNTER_COLUMNS.items():
        db.execute(
            f"SELECT setval(pg_get_serial_sequence(?, ?), "
            f"GREATEST(?, (SELECT MAX({column}) FROM {table}), 1))",
            (table, column, (floors or {}).get(table, 0)),
        )
