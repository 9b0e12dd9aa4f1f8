"""The transaction interface every metadata concern is written against, and the errors it raises.

:class:`MetaBase` holds what all concerns share: the connection, the
filesystem's geometry and clock, and the four transaction primitives
(``_write``, ``_read``, ``_scratch``, ``_log``).  The concern mixins
(namespace, files, objects, ...) use nothing else of the engine, and the engine
(:mod:`daemon.meta.engine`: SQLite or PostgreSQL) is one object behind them.

The store is driven from exactly one thread (the daemon's metadata worker),
so it needs no locking of its own.  Every mutating operation runs in one write
transaction (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's SERIALIZABLE; see
:mod:`daemon.meta.engine`) that also appends a row to ``oplog``, so either all
of an operation's effects are committed or none are.  :func:`_api` turns
engine and OS errors escaping a public method into dfs errors, and runs the
method again when PostgreSQL reports a conflict with another daemon's
transaction.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

import msgpack

from daemon.meta.engine import Db
from daemon.meta.schema import _SCRATCH
from dfs.core.errors import (
    DfsError,
    InternalError,
    InvalidArgument,
    NoSpace,
    QuotaExceeded,
    Unavailable,
    from_oserror,
)

# Its own generator: the process-wide one belongs to whoever seeded it (tests, hypothesis),
# and draws from worker threads would perturb it.
_JITTER = random.Random()
# What daemon/meta/quotas.py's triggers raise (kept in step with QUOTA_EXCEEDED_MESSAGE there).
_QUOTA_MESSAGE = "dfs: quota exceeded"
# Ids per ``IN (...)`` list, well under SQLite's bound-parameter limit.
_IN_BATCH = 500
# Oplog rows a write transaction keeps in memory for Oplog.logged_rows; a larger one's rows
# are read back from the database in pages.
KEPT_OPLOG_ROWS = 64
P = ParamSpec("P")
R = TypeVar("R")


# A public method that lost a conflict with another daemon's transaction runs again, this
# many times at most, after a jittered pause that doubles from the first.
RETRY_ATTEMPTS = 12
RETRY_FIRST_S = 0.002


def _db_error(db: Db, exc: Exception, context: str) -> DfsError:
    if _QUOTA_MESSAGE in str(exc):  # raised by the accounting triggers (daemon/meta/quotas.py)
        return QuotaExceeded(f"{context}: disk quota exceeded")
    if db.is_full(exc):
        return NoSpace(f"metadata {context}: {exc}")
    if db.is_range(exc):
        return InvalidArgument(f"metadata {context}: a number out of range: {exc}")
    if db.is_disconnect(exc):
        return Unavailable(f"metadata {context}: the metadata database is unreachable: {exc}")
    return InternalError(f"metadata {context}: {type(exc).__name__}: {exc}")


def _api(fn: Callable[P, R]) -> Callable[P, R]:
    """Translate engine, OS and overflow errors escaping a public method into dfs errors, and
    run the method again (whole: its transaction was rolled back) after a serialization conflict.

    When the database connection is lost (a restart, a failover), the store reconnects (a
    writer waits up to its ``failover_timeout_s``; see :meth:`MetaBase._reconnect`).  It runs
    the method again only when that cannot apply a change twice: on a read-only store, or
    under :meth:`daemon.meta.requests.Requests.call_once`, which records each change with its
    request id; any other call fails with Unavailable (it may or may not have been applied).
    """
    name = fn.__name__
    replayable = name == "call_once"

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self: MetaBase = args[0]  # type: ignore[assignment]
        if self._depth:  # called by another public method: the outermost one handles errors
            return fn(*args, **kwargs)
        db = self._db
        self._depth = 1
        try:
            pause_s = RETRY_FIRST_S
            attempt = 0
            while True:
                try:
                    return fn(*args, **kwargs)
                except db.errors as exc:
                    if db.is_disconnect(exc):
                        if not self._reconnect():
                            raise _db_error(db, exc, name) from exc
                        if not (replayable or self._read_only):
                            raise Unavailable(
                                f"metadata {name}: the database connection was lost; "
                                "the change may or may not have been applied"
                            ) from exc
                        self._outcome_unknown = True  # call_once looks for its record now
                        continue
                    attempt += 1
                    if not db.is_retryable(exc) or attempt >= RETRY_ATTEMPTS:
                        raise _db_error(db, exc, name) from exc
                time.sleep(_JITTER.uniform(0, pause_s))
                pause_s *= 2
        except OSError as exc:
            raise from_oserror(exc, f"metadata {name}") from exc
        except OverflowError as exc:
            # A caller's number the engine cannot store (beyond 64 bits), nested where the RPC
            # server's argument check does not look (a setattr map, an open event).
            raise InvalidArgument(f"metadata {name}: a number out of range: {exc}") from exc
        finally:
            self._depth = 0
            self._outcome_unknown = False

    return wrapper


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


class MetaBase:
    """The shared state and transaction primitives of :class:`daemon.meta.store.MetaStore`."""

    # Set by MetaStore.__init__; declared here so every concern mixin type-checks against them.
    _path: str
    _db: Db
    _inline_limit: int
    _block_size: int
    _default_replicas: int
    _now: Callable[[], int]
    _depth = 0  # >0 while a public method runs (see _api)
    _txn_now: int | None = None  # the open transaction's time, while one is open
    _read_only = False
    # The first and last oplog seq the last call_once wrote (None: it wrote none).
    logged_seqs: tuple[int, int] | None = None
    # The oplog rows the newest write transaction wrote (seq, op, packed args), while at most
    # KEPT_OPLOG_ROWS; None once more (see Oplog.logged_rows).
    _logged_rows: list[tuple[int, str, bytes]] | None = None
    # Set when a call is run again after losing the connection mid-way: only then can a
    # record of it exist (daemon/meta/requests.py).
    _outcome_unknown = False
    # How long a lost connection is retried before calls fail (None: fail at once, for a
    # store whose callers must not wait: the event loop's reader).
    _failover_timeout_s: float | None = None
    _reconnect_after = 0.0  # monotonic time before which a fail-fast store does not retry
    # While Namespace.stamped runs an operation: the ctime of each directory the operation
    # read before changing anything there (see _seen).
    _ctime_seen: dict[int, int] | None = None
    # Commits of this store that changed the nodes table (the layout), counted after each
    # commit: a cache of the layout on this host compares it, so it never serves a layout
    # older than a change made here (daemon/service/cluster_runner.py).
    layout_commits = 0
    _layout_changed = False  # the open transaction changed the layout

    @contextlib.contextmanager
    def _write(self, *, commit: bool = True) -> Iterator[int]:
        """One write transaction, rolled back on error (or always, without ``commit``); yields its time.

        Inside another transaction (a method called by :meth:`call_once`) it is part of that
        one; a nested rollback-only one is a savepoint, rolled back to on leaving.
        """
        db = self._db
        if self._txn_now is not None:
            if commit:
                yield self._txn_now
                return
            db.execute("SAVEPOINT nested")
            try:
                yield self._txn_now
            finally:
                db.execute("ROLLBACK TO SAVEPOINT nested")
                db.execute("RELEASE SAVEPOINT nested")
            return
        db.begin_write()
        self._logged_rows = []
        self._layout_changed = False
        now = self._txn_now = self._now()
        try:
            yield now
            if commit:
                db.commit()
                if self._layout_changed:
                    self.layout_commits += 1
            else:
                db.rollback()
        except BaseException:
            db.abandon()
            raise
        finally:
            self._txn_now = None

    @contextlib.contextmanager
    def _read(self) -> Iterator[None]:
        """One read snapshot for a reader that runs several statements (none of them may write)."""
        if self._txn_now is not None:  # inside a transaction already: its snapshot
            yield
            return
        self._db.begin_read()
        try:
            yield
        finally:
            self._db.commit()

    def _seen(self, ino: int, ctime_ns: int) -> None:
        """An operation read inode ``ino``'s row, with this ctime, before changing it: the
        directory stamp's "before" (each operation reads the directories it changes first)."""
        seen = self._ctime_seen
        if seen is not None and ino not in seen:
            seen[ino] = ctime_ns

    def _reconnect(self) -> bool:
        """Connect the lost connection again; False if this store does not wait or the database
        stayed away for ``failover_timeout_s``."""
        timeout_s = self._failover_timeout_s
        if timeout_s is None:
            now = time.monotonic()
            if now < self._reconnect_after:
                return False
            self._reconnect_after = now + 1.0  # at most one blocking attempt a second
            return self._db.reconnect(deadline=now + 1.0)
        return self._db.reconnect(deadline=time.monotonic() + timeout_s)

    def _scratch(self, kind: str) -> str:
        """An empty TEMP table of ``_SCRATCH[kind]`` for a set-based operation; returns its name.

        TEMP tables live in this connection only and their creation is part of the
        caller's transaction, so a rollback leaves nothing behind.
        """
        self._db.execute(f"CREATE TEMP TABLE IF NOT EXISTS scratch_{kind} ({_SCRATCH[kind]})")
        self._db.execute(f"DELETE FROM temp.scratch_{kind}")
        return f"temp.scratch_{kind}"

    def _log(self, now: int, op: str, args: Sequence[object]) -> None:
        self._logged = True
        packed = msgpack.packb(list(args), use_bin_type=True)
        seq: int = self._db.execute(
            "INSERT INTO oplog (seq, ts_ns, op, args) VALUES (COALESCE((SELECT MAX(seq) FROM oplog), "
            "(SELECT value FROM config WHERE key = 'oplog_seq'), 0) + 1, ?, ?, ?) RETURNING seq",
            (now, op, packed),
        ).fetchone()[0]
        rows = self._logged_rows
        if rows is not None:
            if len(rows) < KEPT_OPLOG_ROWS:
                rows.append((seq, op, packed))
            else:
                self._logged_rows = None  # a large transaction: its rows are read back in pages
        # The rows of one transaction are consecutive: a concurrent writer (another daemon
        # sharing the database) read the same MAX(seq) and conflicts.
        if self.logged_seqs is None:
            self.logged_seqs = (seq, seq)
        else:
            self.logged_seqs = (self.logged_seqs[0], seq)
