"""The metadata primary's stores, and the one way the service changes them.

- Writes (and long reads) go through :meth:`MetaCalls.run`: the call runs in
  the metadata thread (daemon/service/threads.py), and before it returns, the
  change notices for the rows it added to the oplog reach this daemon's mounts
  (dfs/core/changes.py, daemon/changefeed.py).  That is the one place every
  change passes, whether from RPC, S3 or the admin API.  A secondary has no
  store; it makes notices from the calls it forwards (daemon/service/handlers.py).
- Point reads (lookup, getattr, readdir pages, block maps, xattrs) use a
  second, read-only connection (:attr:`MetaCalls.reads`) directly on the event
  loop.  They touch a few cached index pages and take microseconds, far less
  than any thread hand-off; in WAL mode they never wait for the writer and see
  every committed transaction.
- A client's request id (meta.once, see :meth:`MetaCalls.request`) makes every
  call a request runs exactly once: each is recorded under that id (the n-th
  call under a derived one), so the client's repeat after a lost reply, to this
  daemon or another sharing the database, is answered with the recorded result
  (daemon/meta/requests.py).
- With PostgreSQL (every daemon serves metadata from one shared database) every
  other call runs under a request id of its own (exactly once across a lost
  connection); the RPC server's point reads run in a
  read thread that waits out a failover, while the event loop's reader fails
  at once rather than stall the loop; and the notices for changes other
  daemons made come from following the shared op-log (:meth:`poll_changes`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import outcome

from daemon.changefeed import ChangeFeed
from daemon.meta import MetaStore
from daemon.service.threads import MetaWorker
from dfs.core.changes import ALL, Change, changes_of
from dfs.core.errors import DfsError, Unavailable
from dfs.net import rpc

log = logging.getLogger("dfs.daemon")
T = TypeVar("T")


class NotOnLane(Exception):
    """Raised by a metadata lane call (daemon/service/lane.py) before it changes anything: the
    call needs the event loop (it asks other nodes first), which answers it instead."""


@dataclass(slots=True)
class _Request:
    """A client's request id, and how many metadata calls its handler has made under it."""

    request_id: bytes
    retried: bool
    calls: int = 0

    def next_id(self) -> bytes:
        """The id of the handler's next call: the request's own, then derived ones (a handler
        makes the same calls in the same order each time it runs)."""
        n, self.calls = self.calls, self.calls + 1
        return self.request_id if n == 0 else self.request_id + b"/" + str(n).encode()


# Oplog rows read per query for change notices.
_OPLOG_PAGE = 1000

_request: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("dfs_meta_request", default=None)


class MetaCalls:
    """The writer and reader connections (None on a secondary) and the metadata thread."""

    def __init__(
        self,
        store: MetaStore | None,
        changes: ChangeFeed,
        *,
        primary_address: str,
        failover_timeout_s: float = 60.0,
    ) -> None:
        self.store = store
        # On the event loop: must never wait for a database that went away (fails at once).
        self.reader = store.reader() if store is not None else None
        self.changes = changes
        self.worker = MetaWorker()
        # PostgreSQL: point reads are network round trips that a failover can stall for
        # seconds, so the RPC server's reads run in a thread of their own, on a connection
        # that waits for the database as the writer does (daemon/service/handlers.py).
        self.shared = store is not None and store.engine == "postgresql"
        self.read_store: MetaStore | None = None
        self.read_worker = MetaWorker()
        if store is not None and self.shared:
            self.read_store = store.reader(failover_timeout_s=failover_timeout_s)
        self._primary_address = primary_address  # for the error a secondary's caller gets
        self._oplog_seen = store.oplog_head() if store is not None else 0

    @property
    def meta(self) -> MetaStore:
        """The writer connection: use it only inside :meth:`run`."""
        if self.store is None:
            raise Unavailable(f"this daemon is not the metadata primary (that is {self._primary_address})")
        return self.store

    @property
    def reads(self) -> MetaStore:
        """The read-only connection, for point reads on the event loop."""
        if self.reader is None:
            raise Unavailable(f"this daemon is not the metadata primary (that is {self._primary_address})")
        return self.reader

    def close(self) -> None:
        self.worker.stop()
        self.read_worker.stop()
        if self.read_store is not None:
            self.read_store.close()
        if self.reader is not None:
            self.reader.close()
        if self.store is not None:
            self.store.close()

    @staticmethod
    @contextlib.contextmanager
    def request(request_id: bytes, retried: bool) -> Iterator[None]:
        """Within: every :meth:`run` is made exactly once under ``request_id`` (see the module
        docstring); ``retried``: the client sent this id before."""
        token = _request.set(_Request(request_id, retried))
        try:
            yield
        finally:
            _request.reset(token)

    @staticmethod
    @contextlib.contextmanager
    def outside_request() -> Iterator[bool]:
        """Within: calls run without the client's request id, for a handler whose calls depend on
        a read snapshot, so a retry cannot replay them call by call (it must check what the first
        attempt left instead); yields whether the client sent this request before."""
        request = _request.get()
        token = _request.set(None)
        try:
            yield request is not None and request.retried
        finally:
            _request.reset(token)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the metadata thread; returns once this daemon's other mounts
        applied the changes it made."""
        call = partial(fn, *args, **kwargs)
        store = self.store
        if store is None:
            return await self.worker.run(call)
        request = _request.get()
        if request is not None:
            call = partial(store.call_once, request.next_id(), fn, *args, retried=request.retried, **kwargs)
        elif self.shared:
            # Recorded with a request id of its own, so the store can run it again after losing
            # the database mid-commit without applying it twice (daemon/meta/requests.py).
            call = partial(store.call_once, secrets.token_bytes(16), fn, *args, retried=False, **kwargs)
        found: list[Change] = []
        others: list[Change] = []  # shared metadata: what other daemons committed meanwhile

        def run() -> T:
            return self._noting_changes(store, call, request is not None, found, others)

        run.__name__ = getattr(fn, "__name__", "call")  # the metadata observer's label
        origin = rpc.current_connection()
        with self.changes.busy(origin):
            try:
                result = await self.worker.run(run)
            finally:
                # Peers' changes are news to every mount here, the caller's included.
                self.changes.record(others, None)
                seq = self.changes.record(found, origin)
            if seq is not None:
                await self.changes.settle(seq, origin)
        return result

    def run_here(
        self, fn: Callable[..., T], args: Sequence[Any], request_id: bytes, retried: bool
    ) -> tuple[outcome.Outcome[T], list[Change], list[Change]]:
        """The metadata lane's thread (daemon/service/lane.py): ``fn(*args)`` exactly once under
        ``request_id``, as :meth:`run` would in the metadata thread, serialized with it; its
        outcome, the notices for the changes it made and for other daemons' (shared metadata).
        The caller records those on the event loop."""
        store = self.meta
        found: list[Change] = []
        others: list[Change] = []
        call = partial(store.call_once, request_id, fn, *args, retried=retried)
        name = getattr(fn, "__name__", "call")
        with self.worker.holding(name):
            result = outcome.capture(self._noting_changes, store, call, True, found, others)
        return result, found, others

    def _noting_changes(
        self,
        store: MetaStore,
        call: Callable[[], T],
        requested: bool,
        found: list[Change],
        others: list[Change],
    ) -> T:
        """Metadata thread: ``call()``, then the notices for exactly the rows it committed into
        ``found`` (and, with shared metadata, other daemons' since the last look into ``others``),
        whether it succeeded or not."""
        written = store.total_changes
        try:
            return call()
        finally:
            # Reads, which wrote nothing, skip the oplog query.
            if not self.shared and not requested:
                if store.total_changes != written:
                    found.extend(self._changes_since_last(store))
            elif store.last_call_changed:
                own, peers = self._changes_split(store, store.logged_seqs, store.logged_rows())
                found.extend(own)
                others.extend(peers)

    async def poll_changes(self) -> None:
        """Shared metadata: notices for the changes other daemons committed (the oplog is one for
        the whole cluster), for this daemon's mounts."""
        store = self.store
        if store is None:
            return
        found = await self.worker.run(partial(self._changes_since_last, store))
        self.changes.record(found, None)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A point read in the read thread (PostgreSQL; see ``read_store``)."""
        return await self.read_worker.run(partial(fn, *args))

    def _changes_since_last(self, store: MetaStore) -> list[Change]:
        """Metadata thread: the change notices for the oplog rows written since the last call."""
        own, others = self._changes_split(store, None)
        return own + others

    def _changes_split(
        self,
        store: MetaStore,
        own_seqs: tuple[int, int] | None,
        own_rows: list[tuple[int, str, list[Any]]] | None = None,
    ) -> tuple[list[Change], list[Change]]:
        """Metadata thread: the notices for the oplog rows since the last look, split into the
        rows ``own_seqs`` spans (the call just made) and the others (other daemons').
        ``own_rows``: those rows as the call wrote them (Oplog.logged_rows), if it kept them."""
        out: list[Change] = []
        others: list[Change] = []

        def resolve(parent: int, name: bytes) -> int | None:
            try:
                return store.lookup(parent, name).ino
            except DfsError:
                return None

        try:
            if (
                own_seqs is not None
                and own_rows
                and own_rows[0][0] == self._oplog_seen + 1
                and own_rows[-1][0] == own_seqs[1]
            ):
                # The call's rows follow the last look directly, so nobody else committed in
                # between (rows commit in seq order: see MetaBase._log), and what it wrote is
                # all there is to see: no query (on PostgreSQL a round trip per change).  A
                # peer's row after them is found by the next look, which starts from a gap.
                for _, op, args in own_rows:
                    out.extend(changes_of(op, args, resolve))
                self._oplog_seen = own_seqs[1]
                return out, others
            while True:
                rows = store.oplog_since(self._oplog_seen, _OPLOG_PAGE)
                if rows:
                    self._oplog_seen = rows[-1][0]
                for seq, op, args in rows:
                    mine = own_seqs is None or own_seqs[0] <= seq <= own_seqs[1]
                    (out if mine else others).extend(changes_of(op, args, resolve))
                if len(rows) < _OPLOG_PAGE:
                    break  # the last page: no query that can only come back empty
        except Exception:
            # Never fail the call that made the change; the mounts drop everything instead.
            log.exception("reading the oplog for change notices failed")
            with contextlib.suppress(DfsError):
                self._oplog_seen = store.oplog_head()
            return [], [Change(ALL)]
        return out, others
