"""The transaction interface every metadata concern is written against, and the errors it raises.

:class:`MetaBase` holds what all concerns share: the connection, the
filesystem's geometry and clock, and the four transaction primitives
(``_write``, ``_read``, ``_scratch``, ``_log``).  The concern mixins
(namespace, files, objects, ...) use nothing else of the engine, so a second
engine (issue 16: PostgreSQL beside SQLite) replaces this class and the
connection set-up in :mod:`daemon.meta.store`; what remains engine-specific
in the concerns is SQL dialect.

The store is driven from exactly one thread (the daemon's metadata worker),
so it needs no locking of its own.  Every mutating operation runs in one
``BEGIN IMMEDIATE`` transaction that also appends a row to ``oplog`` (the seam
for future replication), so either all of an operation's effects are
committed or none are.  :func:`_api` turns engine and OS errors escaping a
public method into dfs errors.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

import msgpack

from daemon.meta.schema import _SCRATCH
from dfs.core.errors import DfsError, InternalError, InvalidArgument, NoSpace, from_oserror

# Ids per ``IN (...)`` list, well under SQLite's bound-parameter limit.
_IN_BATCH = 500
P = ParamSpec("P")
R = TypeVar("R")


def _db_error(exc: sqlite3.Error, context: str) -> DfsError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc):
        return NoSpace(f"metadata {context}: {exc}")
    return InternalError(f"metadata {context}: {type(exc).__name__}: {exc}")


def _api(fn: Callable[P, R]) -> Callable[P, R]:
    """Translate sqlite3, OS and overflow errors escaping a public method into dfs errors."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise _db_error(exc, name) from exc
        except OSError as exc:
            raise from_oserror(exc, f"metadata {name}") from exc
        except OverflowError as exc:
            # A caller's number SQLite cannot store (beyond 64 bits), nested where the RPC
            # server's argument check does not look (a setattr map, an open event).
            raise InvalidArgument(f"metadata {name}: a number out of range: {exc}") from exc

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
    _db: sqlite3.Connection
    _inline_max: int
    _block_size: int
    _default_replicas: int
    _now: Callable[[], int]

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
