"""Metadata stores on either engine for the metadata test suite (issue 16: one suite, two engines).

The suite's modules open stores with :func:`open_meta` (a path, as SQLite takes) and run once
per engine through the ``meta_engine`` fixture (tests/conftest.py).  On PostgreSQL a path
names a schema of its own, so reopening "the same file" reopens the same schema and two
paths are two independent databases, as two SQLite files are.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from daemon.meta import MetaStore
from tests.pg import PgServer


class Clock:
    """Deterministic now_ns: every call advances 1 µs; ``t`` is the last value handed out."""

    def __init__(self, t: int = 1_700_000_000 * 10**9) -> None:
        self.t = t

    def __call__(self) -> int:
        self.t += 1000
        return self.t


class _Current:
    engine = "sqlite"
    server: PgServer | None = None
    schemas: set[str] = set()


def engine() -> str:
    """The engine the running test stores its metadata in."""
    return _Current.engine


def use(engine_name: str, server: PgServer | None) -> None:
    _Current.engine = engine_name
    _Current.server = server
    _Current.schemas = set()


def drop_all() -> None:
    """Drop the schemas this test's stores lived in."""
    if _Current.server is not None:
        for name in _Current.schemas:
            _Current.server.drop_schema(name)
    use("sqlite", None)


def location(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Where a store "at ``path``" lives for the current engine: (location, engine)."""
    if _Current.engine == "sqlite":
        return os.fspath(path), "sqlite"
    assert _Current.server is not None
    name = "m_" + hashlib.sha1(os.fspath(path).encode()).hexdigest()[:24]
    _Current.schemas.add(name)
    return _Current.server.fresh_schema(name), "postgresql"


def open_meta(path: str | os.PathLike[str], **kwargs: Any) -> MetaStore:
    where, engine_name = location(path)
    return MetaStore(where, engine=engine_name, **kwargs)


def cid(n: int) -> bytes:
    """A made-up 32-byte chunk id, distinct for each ``n``."""
    return n.to_bytes(4, "big") * 8


def only_sqlite(why: str) -> None:
    """Skip the rest of a test that looks at SQLite's own files or pragmas."""
    if _Current.engine != "sqlite":
        pytest.skip(f"SQLite only: {why}")


def trace(store: MetaStore, callback: Any) -> None:
    """Report every statement the store runs to ``callback`` (None: stop)."""
    db: Any = store._db
    if db.engine == "sqlite":
        db.conn.set_trace_callback(callback)
    else:
        db.trace = callback
