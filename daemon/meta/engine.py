"""The two metadata engines behind one connection interface: SQLite (embedded default) and PostgreSQL.

The concerns (namespace, files, objects, ...) are written in one SQL dialect:
SQLite's, restricted to what PostgreSQL also understands or what
:func:`pg_sql` rewrites mechanically.  Each engine gives them the same four
things: ``execute``/``executemany`` returning a cursor (``fetchone``,
``fetchall``, ``rowcount``, iteration), write and read transactions, and a
count of committed changes.

Why translate rather than keep two copies of every query: the queries *are*
the metadata semantics (nlink, refcounts, rename atomicity), and two copies
would drift.  The rewrite is small and mechanical -- placeholders, type names,
SQLite's ``CROSS JOIN ... ON`` join-order hint, ``temp.`` -- and runs once
per distinct statement (cached).  What it cannot rewrite, the concerns write
portably (``ON CONFLICT ... DO UPDATE``, ``RETURNING``, ``CASE`` instead of
scalar ``MIN``/``MAX``), which also keeps the path open to distributed
PostgreSQL-compatible engines: no extensions, no PostgreSQL-only functions in
the concerns.

PostgreSQL transactions are SERIALIZABLE: the concerns read, check and then
write (a name is free, a directory is empty), which is only safe against
other daemons' concurrent transactions at that level.  A transaction that
loses a conflict fails with a serialization failure; :func:`daemon.meta.base._api`
runs the whole public method again (bounded, jittered).

Each PostgreSQL statement is a network round trip, and a metadata operation is
a dozen statements, so PgDb saves the round trips it can: a transaction's
BEGIN travels with its first statement, and the changes the concerns hand to
``execute_later`` (no result needed: a dentry inserted, a directory touched,
an inode purged) travel with the next statement or the COMMIT, in one psycopg
pipeline.  A mkdir through the daemon is 6 round trips instead of 14.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Protocol

import psycopg
import psycopg.adapt
import psycopg.errors
import psycopg.pq
from psycopg.types.numeric import Int8Dumper

ENGINES = ("sqlite", "postgresql")
log = logging.getLogger("dfs.daemon")
# Pause between attempts to reach a database that went away (a failover takes seconds).
_RECONNECT_PAUSE_S = 0.25


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Db:
    """One connection of either engine, as the concerns use it."""

    engine: str
    execute: Callable[..., Cursor]
    errors: tuple[type[Exception], ...]

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def execute_later(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A change whose result (rows, rowcount) nobody reads, inside a write transaction: an
        engine may send it with the next statement (PostgreSQL: one round trip for both).  Its
        failure then surfaces there, or at the commit; the transaction fails either way."""
        self.execute(sql, params)

    def begin_write(self) -> None:
        raise NotImplementedError

    def begin_read(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    def abandon(self) -> None:
        """Roll back after a failure; a connection that is gone has rolled back already."""
        try:
            self.rollback()
        except self.errors:
            pass

    @property
    def in_transaction(self) -> bool:
        raise NotImplementedError

    @property
    def total_changes(self) -> int:
        """Grows whenever a transaction through this connection wrote something."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def set_read_only(self) -> None:
        """Refuse writes through this connection from now on."""
        raise NotImplementedError

    def set_cache_bytes(self, n: int) -> None:
        """Keep at most about ``n`` bytes of database pages in this process for this
        connection (an engine whose cache is the server's has nothing to set)."""

    def reconnect(self, *, deadline: float) -> bool:
        """Replace a lost connection, trying until ``deadline`` (monotonic); False if it could not."""
        return False

    # What an engine error means, for the error table in daemon.meta.base.
    def is_full(self, exc: Exception) -> bool:
        raise NotImplementedError

    def is_duplicate(self, exc: Exception, table: str) -> bool:
        """A row with the same primary key as one inserted into ``table`` exists."""
        raise NotImplementedError

    def is_retryable(self, exc: Exception) -> bool:
        """A conflict with another transaction: running the whole operation again may succeed."""
        return False

    def is_disconnect(self, exc: Exception) -> bool:
        """The database went away (a restart or a failover): reconnect and try again."""
        return False

    def is_range(self, exc: Exception) -> bool:
        """A number out of the column's range."""
        return False


class SqliteDb(Db):
    engine = "sqlite"
    errors = (sqlite3.Error,)

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=512
        )
        # Bound directly: the hot path pays no wrapper call.
        self.execute = self.conn.execute

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def begin_write(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def begin_read(self) -> None:
        self.conn.execute("BEGIN")

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    @property
    def total_changes(self) -> int:
        return self.conn.total_changes

    def close(self) -> None:
        self.conn.close()

    def set_read_only(self) -> None:
        self.conn.execute("PRAGMA query_only=ON")

    def set_cache_bytes(self, n: int) -> None:
        self.conn.execute(f"PRAGMA cache_size=-{max(1, n // 1024)}")  # negative: KiB, not pages

    def is_full(self, exc: Exception) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)

    def is_duplicate(self, exc: Exception, table: str) -> bool:
        # "UNIQUE constraint failed: requests.id" (SQLite names the columns, not the key).
        return isinstance(exc, sqlite3.IntegrityError) and f"constraint failed: {table}." in str(exc)


# -- PostgreSQL -------------------------------------------------------------------------

_NUMBERED = re.compile(r"\?(\d+)")
_BLOB_LITERAL = re.compile(r"X'([0-9A-Fa-f]*)'")
_CROSS_JOIN_ON = re.compile(r"CROSS JOIN ([\w.]+(?: (?!ON\b)\w+)?) ON\b")
_DDL_TYPES = (
    (re.compile(r"INTEGER PRIMARY KEY AUTOINCREMENT"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    # Byte order, as SQLite compares text: listings must not depend on the server's locale.
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
)


def pg_ddl(statement: str) -> str:
    """A ``CREATE TABLE``/``CREATE INDEX`` of :mod:`daemon.meta.schema` in PostgreSQL's types."""
    for pattern, replacement in _DDL_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def pg_sql(sql: str) -> tuple[str, bool]:
    """One of the concerns' statements for PostgreSQL: (the statement, whether it numbers its
    parameters ``?N``, so that they are passed by name)."""
    out = sql.replace("%", "%%")
    numbered = bool(_NUMBERED.search(out))
    if numbered:
        out = _NUMBERED.sub(r"%(p\1)s", out)
    else:
        out = out.replace("?", "%s")
    out = _CROSS_JOIN_ON.sub(r"JOIN \1 ON", out)
    out = out.replace("temp.scratch_", "pg_temp.scratch_")
    out = _BLOB_LITERAL.sub(r"'\\x\1'::bytea", out)
    out = out.replace(" AS BLOB)", " AS BYTEA)").replace(" AS INTEGER)", " AS BIGINT)")
    if out.startswith("CREATE TEMP TABLE"):
        out = pg_ddl(out)
    return out, numbered


class _BoolAsInt(psycopg.adapt.Dumper):
    """Python bools into the concerns' 0/1 integer columns, as SQLite stores them."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _NumericLoader(psycopg.adapt.Loader):
    """``SUM`` of integers is ``numeric`` in PostgreSQL; the concerns expect an int, as SQLite gives."""

    def load(self, data: Any) -> Any:
        text = bytes(data)
        if b"." in text or b"N" in text or b"e" in text.lower():
            return Decimal(text.decode())
        return int(text)


_RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


class _QuietPipelineAbort(logging.Filter):
    """psycopg logs a warning when a pipeline whose statement failed is closed ("error ignored
    terminating <psycopg.Pipeline ...>: pipeline aborted"); the statement's own error reaches
    PgDb's caller, which handles it (a conflict runs the operation again), so it says nothing
    more: dropped, or every serialization conflict would log a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("error ignored terminating"))


logging.getLogger("psycopg").addFilter(_QuietPipelineAbort())


class PgDb(Db):
    engine = "postgresql"
    errors = (psycopg.Error,)

    def __init__(self, dsn: str, *, connect_timeout_s: float = 10.0) -> None:
        self.dsn = dsn
        self._statements: dict[str, tuple[str, bool]] = {}
        self._changes = 0
        self._writing = False
        self._read_only = False
        # The BEGIN of the transaction just started, not sent yet, and the changes queued by
        # execute_later: they go out with the next statement, in one round trip (see _execute).
        self._begin: str | None = None
        self._later: list[tuple[str, Any]] = []
        self.trace: Callable[[str], object] | None = None  # sees every statement (tests count them)
        self.conn = self._connect(connect_timeout_s)
        self.execute = self._execute

    def _connect(self, timeout_s: float) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(timeout_s)))
        # Every Python int as bigint, the concerns' one integer type (psycopg would pick the
        # smallest type that holds the value, which recursive queries then refuse to mix).
        conn.adapters.register_dumper(int, Int8Dumper)
        conn.adapters.register_dumper(bool, _BoolAsInt)
        conn.adapters.register_loader("numeric", _NumericLoader)
        return conn

    def reconnect(self, *, deadline: float) -> bool:
        try:
            self.conn.close()
        except psycopg.Error:
            pass
        self._writing = False
        self._begin = None
        self._later.clear()
        warned = False
        while True:
            left_s = deadline - time.monotonic()
            try:
                conn = self._connect(min(max(left_s, 1.0), 5.0))
                if self._read_only:
                    conn.execute("SET default_transaction_read_only = on")
            except psycopg.Error as exc:
                if time.monotonic() + _RECONNECT_PAUSE_S >= deadline:
                    log.warning("metadata database still unreachable, giving up: %s", exc)
                    return False
                if not warned:
                    log.warning("metadata database unreachable, waiting for it: %s", exc)
                    warned = True
                time.sleep(_RECONNECT_PAUSE_S)
                continue
            self.conn = conn
            if warned:
                log.warning("metadata database reachable again")
            return True

    def _statement(self, sql: str) -> tuple[str, bool]:
        found = self._statements.get(sql)
        if found is None:
            found = self._statements[sql] = pg_sql(sql)
        return found

    def _bind(self, sql: str, params: Sequence[Any]) -> tuple[str, Any]:
        """``sql`` in PostgreSQL's dialect and its parameters as psycopg takes them."""
        statement, numbered = self._statement(sql)
        if self.trace is not None:
            self.trace(sql)
        args: Any = {f"p{i}": v for i, v in enumerate(params, 1)} if numbered else params
        return statement, args or None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        statement, args = self._bind(sql, params)
        if self._begin is None and not self._later:
            return self.conn.execute(statement, args)
        # Pipelined: the pending BEGIN and changes leave with this statement and their results
        # come back together (the first failure among them is raised here, as without the
        # pipeline), saving a round trip each.
        # A statement after queued changes is not prepared in the pipeline: if one of them
        # fails, the server skips the rest, and psycopg would take a skipped statement for
        # prepared ("prepared statement ... does not exist" ever after).
        prepare = None if not self._later else False
        with self.conn.pipeline():
            self._send_pending()
            cursor = self.conn.execute(statement, args, prepare=prepare)
        return cursor

    def execute_later(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._later.append(self._bind(sql, params))

    def _send_pending(self) -> None:
        begin, self._begin = self._begin, None
        later, self._later = self._later, []
        if begin is not None:
            self.conn.execute(begin, prepare=False)
        for statement, args in later:
            self.conn.execute(statement, args, prepare=False)  # see _execute

    def flush(self) -> None:
        """Send what is pending (BEGIN, queued changes) now: before using :attr:`conn` directly."""
        if self._begin is None and not self._later:
            return
        with self.conn.pipeline():
            self._send_pending()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        statement, numbered = self._statement(sql)
        if numbered:
            rows = [{f"p{i}": v for i, v in enumerate(row, 1)} for row in rows]  # type: ignore[misc]
        self.flush()
        with self.conn.cursor() as cur:
            cur.executemany(statement, rows)

    def begin_write(self) -> None:
        self._begin = "BEGIN ISOLATION LEVEL SERIALIZABLE"
        self._writing = True

    def begin_read(self) -> None:
        # A snapshot, as SQLite's WAL readers see: no serializable bookkeeping for plain reads.
        self._begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        self._writing = False

    def commit(self) -> None:
        if self._begin is not None and not self._later:
            self._begin = None  # nothing was sent: nothing to commit
        elif self._later:
            with self.conn.pipeline():
                self._send_pending()
                self.conn.execute("COMMIT", prepare=False)
        else:
            self.conn.execute("COMMIT")
        if self._writing:
            self._changes += 1
            self._writing = False

    def rollback(self) -> None:
        self._begin = None
        self._later.clear()
        self._writing = False
        if self.in_transaction:
            self.conn.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    @property
    def total_changes(self) -> int:
        return self._changes

    def close(self) -> None:
        self.conn.close()

    def set_read_only(self) -> None:
        self._read_only = True
        self.conn.execute("SET default_transaction_read_only = on")

    def is_full(self, exc: Exception) -> bool:
        return isinstance(exc, (psycopg.errors.DiskFull, psycopg.errors.OutOfMemory))

    def is_duplicate(self, exc: Exception, table: str) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation) and exc.diag.constraint_name == f"{table}_pkey"

    def is_retryable(self, exc: Exception) -> bool:
        return isinstance(exc, _RETRYABLE)

    def is_disconnect(self, exc: Exception) -> bool:
        # A dropped connection, or the server going down under it (a fast shutdown, a failover).
        return isinstance(exc, psycopg.OperationalError) and (
            bool(self.conn.closed) or isinstance(exc, psycopg.errors.AdminShutdown)
        )

    def is_range(self, exc: Exception) -> bool:
        return isinstance(exc, psycopg.errors.NumericValueOutOfRange)
