"""Exactly-once metadata changes (daemon/meta/requests.py) on both engines, and what a store
does when it loses its PostgreSQL connection: through a real proxy that cuts the connection
right after the server committed, so the reply is lost."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg.conninfo
import pytest

from daemon.meta import MetaStore, base
from daemon.meta.requests import pack_result, unpack_result
from dfs.core.errors import Exists, InvalidArgument, Unavailable
from dfs.core.namespace import ROOT_INO, Attr, DirEntry
from tests.metastores import open_meta
from tests.pg import PgServer

BS = 4096


def ops(store: MetaStore) -> list[str]:
    return [r[0] for r in store._db.execute("SELECT op FROM oplog ORDER BY seq")]


def recorded(store: MetaStore) -> int:
    return int(store._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


@pytest.fixture
def store(tmp_path: Path, meta_engine: str) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=BS)
    yield s
    s.close()


def test_a_repeated_request_is_answered_not_applied(store: MetaStore) -> None:
    first = store.call_once(b"r1", store.mkdir, ROOT_INO, b"d", 0o755, 0, 0)
    again = store.call_once(b"r1", store.mkdir, ROOT_INO, b"d", 0o755, 0, 0)
    assert again == first and isinstance(again, Attr)
    assert ops(store) == ["mkdir"]
    with pytest.raises(Exists):  # another request is another change
        store.call_once(b"r2", store.mkdir, ROOT_INO, b"d", 0o755, 0, 0)
    assert recorded(store) == 1
    assert store.fsck(lambda c: True, repair=False) == []


def test_a_calls_oplog_rows_are_kept_as_the_log_gives_them(
    store: MetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the daemon's change notices use instead of reading the rows back (one round trip
    less per change on PostgreSQL): exactly what oplog_since returns for them, and nothing
    once a transaction wrote more than the bound."""
    head = store.oplog_head()
    store.call_once(b"m", store.mkdir, ROOT_INO, b"d", 0o755, 0, 0)
    assert store.logged_seqs == (head + 1, head + 1)
    assert store.logged_rows() == store.oplog_since(head)
    d = store.lookup(ROOT_INO, b"d").ino
    store.call_once(b"x", store.setxattr, d, b"user.k", b"\x00v", 0)  # bytes stay bytes
    assert store.logged_rows() == store.oplog_since(head + 1) and store.logged_seqs == (head + 2, head + 2)

    def two() -> None:
        store.mkdir(d, b"a", 0o755, 0, 0)
        store.mkdir(d, b"b", 0o755, 0, 0)

    store.call_once(b"two", two)
    assert store.logged_rows() == store.oplog_since(head + 2) and len(store.oplog_since(head + 2)) == 2
    monkeypatch.setattr(base, "KEPT_OPLOG_ROWS", 1)

    def four() -> None:
        store.rmdir(d, b"a")
        store.rmdir(d, b"b")
        two()

    store.call_once(b"four", four)
    assert store.logged_rows() is None and store.logged_seqs == (head + 5, head + 8)
    assert store.fsck(lambda c: True, repair=False) == []


def test_reads_and_failures_leave_no_record(store: MetaStore) -> None:
    store.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    assert store.call_once(b"read", store.readdir, ROOT_INO, 0, 10)[0].name == b"d"
    with pytest.raises(Exists):
        store.call_once(b"fails", store.mkdir, ROOT_INO, b"d", 0o755, 0, 0)
    assert recorded(store) == 0
    # A failed request may be tried again and then succeed.
    store.rmdir(ROOT_INO, b"d")
    store.call_once(b"fails", store.mkdir, ROOT_INO, b"d", 0o755, 0, 0)
    assert recorded(store) == 1


def test_a_function_of_several_calls_is_one_transaction(store: MetaStore) -> None:
    def two() -> int:
        a = store.mkdir(ROOT_INO, b"a", 0o755, 0, 0).ino
        store.mkdir(a, b"b", 0o755, 0, 0)
        raise Exists("the second half fails")

    with pytest.raises(Exists):
        store.call_once(b"two", two)
    assert store.readdir(ROOT_INO, 0, 10) == []  # the first half was rolled back with it


def test_trim_forgets_old_requests(store: MetaStore) -> None:
    store.call_once(b"old", store.mkdir, ROOT_INO, b"d", 0o755, 0, 0)
    assert store.trim_requests(0) == 0
    assert store.trim_requests(2**62) == 1
    assert recorded(store) == 0


def test_bad_request_ids_are_refused(store: MetaStore) -> None:
    for bad in (b"", b"x" * 65, "text"):
        with pytest.raises(InvalidArgument):
            store.call_once(bad, store.mkdir, ROOT_INO, b"d", 0o755, 0, 0)  # type: ignore[arg-type]


def test_results_keep_their_types() -> None:
    attr = Attr(5, 0o40755, 2, 0, 0, 0, 4096, 8, 1, 2, 3, 0)
    value = {"a": [attr, DirEntry(b"n", attr, 7)], "b": (1, None, b"x")}
    back = unpack_result(pack_result(value))
    assert back["a"][0] == attr and type(back["a"][0]) is Attr
    assert type(back["a"][1]) is DirEntry and back["a"][1].attr == attr


# -- a lost connection (PostgreSQL) -----------------------------------------------------------


class CuttingProxy:
    """A TCP proxy to the PostgreSQL server that, when armed, forwards a COMMIT, waits for the
    server's answer, drops it and closes the connection: the change is committed, the reply lost."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            committing = threading.Event()
            threading.Thread(target=self._up, args=(client, server, committing), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, committing), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket, committing: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if self.armed.is_set() and b"COMMIT" in data:
                    committing.set()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def _down(self, src: socket.socket, dst: socket.socket, committing: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if committing.is_set() and b"COMMIT\x00" in data:
                    self.armed.clear()
                    self.cuts += 1
                    break  # the server committed; the client never hears so
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        # shutdown first: a thread blocked in accept() would otherwise take one more connection.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


@pytest.fixture
def proxied(pg_server: PgServer, pg_dsn: str) -> Iterator[tuple[MetaStore, CuttingProxy]]:
    proxy = CuttingProxy(pg_server.port)
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", port=proxy.port)
    store = MetaStore(dsn, engine="postgresql", block_size=BS, failover_timeout_s=10.0)
    try:
        yield store, proxy
    finally:
        store.close()
        proxy.close()


def test_a_commit_whose_reply_was_lost_is_applied_once(proxied: tuple[MetaStore, CuttingProxy]) -> None:
    store, proxy = proxied
    proxy.armed.set()
    # retried=False: a fresh id, as the daemon makes them; the lost reply makes the store look.
    attr = store.call_once(b"lost-reply", store.mkdir, ROOT_INO, b"d", 0o755, 0, 0, retried=False)
    assert proxy.cuts == 1  # the first attempt's answer never came back
    assert store.lookup(ROOT_INO, b"d") == attr
    assert ops(store) == ["mkdir"]  # applied once, answered from the record on the second attempt
    assert store.fsck(lambda c: True, repair=False) == []


def test_a_plain_change_whose_reply_was_lost_fails_clearly(proxied: tuple[MetaStore, CuttingProxy]) -> None:
    store, proxy = proxied
    proxy.armed.set()
    with pytest.raises(Unavailable, match="may or may not have been applied"):
        store.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    assert proxy.cuts == 1
    assert store.lookup(ROOT_INO, b"d").ino > ROOT_INO  # it was (the store reconnected)


def test_a_reader_that_must_not_wait_fails_at_once(pg_server: PgServer, pg_dsn: str) -> None:
    proxy = CuttingProxy(pg_server.port)
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", port=proxy.port)
    store = MetaStore(dsn, engine="postgresql", block_size=BS)
    reader = store.reader()
    try:
        proxy.close()  # no new connections from now on
        # Every TCP client of the server is this test's (the proxy's); the wait makes sure
        # they are gone before the read.
        pg_server.psql(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND client_port > 0 AND pid <> pg_backend_pid()"
        )
        with pytest.raises(Unavailable):
            reader.getattr(ROOT_INO)
    finally:
        reader.close()
        store.close()


def test_a_fresh_id_run_again_elsewhere_meanwhile_is_answered_from_that_run(store: MetaStore) -> None:
    """A client gave up on one daemon and sent its request, marked retried, to another, which
    committed first; the first daemon's run (its id fresh, so it looked for no record) then
    finds the id taken when it commits, and answers with the record instead."""
    ino = store.mkdir(ROOT_INO, b"d", 0o755, 0, 0).ino
    store.call_once(b"r1", store.setxattr, ino, b"user.a", b"1", 0, retried=True)
    assert store.call_once(b"r1", store.setxattr, ino, b"user.a", b"2", 0, retried=False) is None
    assert store.getxattr(ino, b"user.a") == b"1"  # the second run was rolled back
    assert ops(store) == ["mkdir", "setxattr"] and recorded(store) == 1
    assert store.fsck(lambda c: True, repair=False) == []
