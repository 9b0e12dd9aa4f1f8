"""Exactly-once metadata changes: each change is recorded with its request id in its own
transaction, so a call repeated after a lost reply is answered, not applied again.

A caller that may repeat a call (the daemon after losing its database connection
mid-commit, during a PostgreSQL failover; a client retrying through another daemon with
meta.once) runs it through :meth:`Requests.call_once` with the same id each time. The
first run that commits leaves a ``requests`` row with the call's result; a repeat finds
the row and returns that result without running the call. Two runs of one id at once (a
client gave up waiting for one daemon and asked another) cannot both commit: the row's
key admits one, and the other run is rolled back and answered from the record. Calls
that change nothing (reads; every change appends an oplog row, see ``MetaBase._log``)
leave no row. Rows older than the longest retry window are trimmed
(:meth:`Requests.trim_requests`).

Results are msgpack, with the namespace's tuples (Attr, DirEntry, ...) tagged so that a
replayed answer has the type the first one had.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from daemon.meta.base import MetaBase, _api
from dfs.core.errors import InternalError, InvalidArgument
from dfs.core.namespace import Attr, BlockRef, DirEntry, FileMap, StatFs

T = TypeVar("T")
REQUEST_ID_MAX_BYTES = 64
_TUPLE_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (Attr, BlockRef, DirEntry, FileMap, StatFs)
}
_EXT_NAMED = 1
# The tuples whose fields are all plain values (no tuple inside): packed without a walk.
_FLAT_TUPLES = frozenset({Attr, BlockRef, StatFs})


def _tagged(value: Any) -> Any:
    """``value`` with the namespace's tuples as tagged extension values (msgpack would write
    any tuple as a plain array)."""
    if isinstance(value, tuple):
        cls = type(value)
        if cls in _FLAT_TUPLES:  # the common case (every stamped answer holds two Attrs)
            flat = msgpack.packb([cls.__name__, list(value)], use_bin_type=True)
            return msgpack.ExtType(_EXT_NAMED, flat)
        if _TUPLE_TYPES.get(cls.__name__) is cls:
            return msgpack.ExtType(_EXT_NAMED, pack_result([cls.__name__, list(value)]))
        return [_tagged(v) for v in value]
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    return value


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _EXT_NAMED:
        raise InternalError(f"recorded result with unknown type code {code}")
    name, fields = unpack_result(data)
    return _TUPLE_TYPES[name](*fields)


def pack_result(value: object) -> bytes:
    packed: bytes = msgpack.packb(_tagged(value), use_bin_type=True)
    return packed


def unpack_result(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False, ext_hook=_ext_hook)


class _RecordedMeanwhile(Exception):
    """Another run of the same request committed first: roll this one back, replay that one."""


class Requests(MetaBase):
    """``call_once`` and the trimming of its records."""

    _logged = False  # set by MetaBase._log: the running transaction changed something
    last_call_changed = False  # whether the last call_once changed anything

    @_api
    def call_once(
        self, request_id: bytes, fn: Callable[..., T], *args: Any, retried: bool = True, **kwargs: Any
    ) -> T:
        """``fn(*args, **kwargs)`` (this store's methods, or a function calling them) in one
        transaction, applied at most once per ``request_id``.  ``retried=False``: the id is new
        (the daemon just made it), so there is no record to look for unless the connection
        is lost mid-way."""
        if not isinstance(request_id, bytes) or not 0 < len(request_id) <= REQUEST_ID_MAX_BYTES:
            raise InvalidArgument(f"a request id is 1 to {REQUEST_ID_MAX_BYTES} bytes")
        try:
            return self._run_once(request_id, fn, args, kwargs, retried or self._outcome_unknown)
        except _RecordedMeanwhile:
            return self._run_once(request_id, fn, args, kwargs, True)
        except self._db.errors as exc:
            if not self._db.is_duplicate(exc, "requests"):
                raise
            # A fresh id's record is written without looking (below), so a run of the same
            # request elsewhere that committed first surfaces here, as a duplicate key.
            return self._run_once(request_id, fn, args, kwargs, True)

    def _run_once(self, request_id: bytes, fn: Callable[..., T], args: Any, kwargs: Any, look: bool) -> T:
        self.last_call_changed = False
        self.logged_seqs = None
        with self._write() as now:
            # A fresh id has no record; only a call run again after a lost connection (or a
            # caller's retry, with ``retried``) may find the one its first run left.
            if look or self._outcome_unknown:
                row = self._db.execute("SELECT result FROM requests WHERE id = ?", (request_id,)).fetchone()
                if row is not None:
                    replayed: T = unpack_result(bytes(row[0]))
                    return replayed
            self._logged = False
            self.logged_seqs = None  # a run again after a conflict starts afresh
            result = fn(*args, **kwargs)
            if self._logged and not look:
                # Sent with the commit (no round trip of its own): nobody else has this id, but
                # for a client's repeat elsewhere that ran meanwhile (call_once then answers
                # from that run's record).
                self._db.execute_later(
                    "INSERT INTO requests (id, ts_ns, result) VALUES (?, ?, ?)",
                    (request_id, now, pack_result(result)),
                )
            elif self._logged:
                recorded = self._db.execute(
                    "INSERT INTO requests (id, ts_ns, result) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING RETURNING id",
                    (request_id, now, pack_result(result)),
                ).fetchone()
                if recorded is None:
                    raise _RecordedMeanwhile
            self.last_call_changed = self._logged
            return result

    @_api
    def trim_requests(self, before_ns: int) -> int:
        """Forget the requests recorded before ``before_ns``."""
        with self._write():
            deleted: int = self._db.execute("DELETE FROM requests WHERE ts_ns < ?", (before_ns,)).rowcount
            return deleted
