"""Unit tests for daemon/meta/dump.py: metadata dumps, their loader and everything they refuse.

The tests marked ``engines`` run once per metadata engine (the ``meta_engine`` fixture): the
source store and every target are SQLite files or PostgreSQL schemas alike (tests/metastores.py).
Two tests move a store across engines, both ways; the rest look at SQLite's own files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import stat
import struct
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import zstandard

import daemon.meta.dump as dump
from daemon.chunks import ChunkStore
from daemon.meta import MetaStore
from daemon.meta.dump import DUMPED_TABLES, EXCLUDED_TABLES, DumpInfo, load_dump, verify_dump, write_dump
from daemon.meta.engine import PgDb
from daemon.meta.schema import _SCHEMA, COUNTER_COLUMNS, INTERNAL_DIRS, SCHEMA_VERSION
from daemon.service.backups import Backups, MetaDb, load_offline
from dfs.cli.meta import assemble_backup
from dfs.core import config as config_mod
from dfs.core.auth import CallerClass
from dfs.core.backup_format import chunk_key as backup_chunk_key
from dfs.core.errors import ConfigError, DfsError, InternalError, InvalidArgument, NotEmpty, NotFound
from dfs.core.namespace import ROOT_INO, Attr, BlockRef
from dfs.net import credentials
from tests import metastores
from tests.conftest import BIN, Daemon, free_port
from tests.metastores import Clock, open_meta

# Runs the marked test once per metadata engine.
engines = pytest.mark.usefixtures("meta_engine")

ROOT = ROOT_INO
BS = 4096
SESSION = "s1"
SECRET = b"cluster-secret-0123456789abcdef!"
S3_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY-7f3a"
OTHER_S3_SECRET = "guest-secret-9d1c0b5e77aa41"
TableRows = dict[str, list[tuple[Any, ...]]]


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    """The source store, in the engine of the test (SQLite unless marked ``engines``)."""
    s = open_store(tmp_path / "meta.db", now_ns=clock)
    yield s
    s.close()


def open_store(path: Path, **kwargs: Any) -> MetaStore:
    """The store "at ``path``" in the test's engine (a SQLite file or a PostgreSQL schema)."""
    kwargs.setdefault("block_size", BS)
    return open_meta(path, **kwargs)


def where(path: Path) -> str:
    """What write_dump and load_dump take for the store "at ``path``": a path, or a DSN."""
    return metastores.location(path)[0]


def cid(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def ref(index: int, chunk: bytes, length: int = BS, stored: int = 1000) -> BlockRef:
    return BlockRef(index, chunk, length, stored)


def new_file(store: MetaStore, name: bytes, parent: int = ROOT, *, keep_open: bool = False) -> int:
    ino = store.create(parent, name, 0o644, 1000, 1000, SESSION).ino
    if not keep_open:
        store.release(ino, SESSION)
    return ino


def write(
    store: MetaStore, chunks: set[bytes], ino: int, refs: list[BlockRef], replicas: int | None = None
) -> Attr:
    chunks.update(r.chunk_id for r in refs)
    return store.commit_write(
        ino,
        size=len(refs) * BS,
        mtime_ns=5,
        blocks=refs,
        inline=None,
        chunk_exists=chunks.__contains__,
        replicas=replicas,
    )


def check(store: MetaStore, chunks: set[bytes]) -> None:
    assert store.fsck(chunks.__contains__, repair=False) == []


def build_rich(store: MetaStore, chunks: set[bytes]) -> dict[str, int]:
    """A store with one of everything the schema holds; returns the interesting inodes."""
    d = store.mkdir(ROOT, b"d", 0o755, 1000, 1000).ino
    f1 = new_file(store, b"f1", d)
    write(store, chunks, f1, [ref(0, cid(1)), ref(1, cid(2))], replicas=3)
    f2 = new_file(store, b"f2", d)
    write(store, chunks, f2, [ref(0, cid(1))])  # cid(1) shared: refcount 2
    store.link(f1, ROOT, b"hard")
    store.symlink(ROOT, b"sym", b"d/f1", 1000, 1000)
    store.setxattr(f1, b"user.k", b"\x00binary\xff", 0)
    store.setxattr(d, b"user.dfs.replicas", b"2", 0)
    small = new_file(store, b"small", d)
    store.commit_write(
        small, size=5, mtime_ns=6, blocks=[], inline=b"hello", chunk_exists=chunks.__contains__
    )
    store.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
    store.mknod(ROOT, b"dev", stat.S_IFCHR | 0o600, 0x0103, 0, 0)
    # A chunk nobody references any more, waiting for garbage collection (zero_since_ns set).
    f3 = new_file(store, b"f3", d)
    write(store, chunks, f3, [ref(0, cid(3))])
    write(store, chunks, f3, [ref(0, cid(4))])
    vol = store.create_volume("vol", {"replication": 2, "tags": ["a", "b"]}, mode=0o750, uid=3, gid=4).ino
    store.volume_key_create(vol, lambda key_id: (b"wrapped-%d" % key_id, "f00123456789abcd"))
    write(store, chunks, new_file(store, b"data", vol), [ref(0, cid(5)), ref(2, cid(2))])
    store.create_snapshot("vol", "daily-1", origin="daily")  # read-only tree + registry row
    store.snapshot_build_begin("vol", "building")  # a snapshot being copied in batches
    # A file in a volume's trash (daemon/meta/trash.py): its inode and its trash row.
    binned = store.create_volume("binned", {"trash_days": 1}, mode=0o755, uid=0, gid=0).ino
    write(store, chunks, new_file(store, b"old", binned), [ref(0, cid(5))])
    store.unlink(binned, b"old")
    # A versioned bucket (daemon/meta/versions.py): its status, a version's inode and row, a marker.
    store.versioning_set(binned, "Enabled")
    write(store, chunks, new_file(store, b"kept", binned), [ref(0, cid(5))])
    store.unlink(binned, b"kept")
    # S3 object lock (daemon/meta/objlock.py): the bucket's default retention, and a version's
    # retention row (already run out, so nothing stays locked).
    store.objlock_config_set(binned, {"mode": "GOVERNANCE", "days": 1, "years": None})
    held = new_file(store, b"held", binned)
    write(store, chunks, held, [ref(0, cid(8))])
    store.objlock_retention_set(binned, held, "GOVERNANCE", 1, False)
    snap = store.snapshot(d, ROOT, b"snap", uid=7, gid=8).ino
    store.register_node("n1", "zone-a", "10.0.0.1:7000")
    store.register_node("n2", "zone-b", "10.0.0.2:7000", 2.0)
    store.set_node("n2", state="draining")
    # Cloud tiers (daemon/meta/tiers.py): a tier, a copy of a chunk that is then cold, a copy of
    # a chunk metadata does not know (queued for deletion), a pinned tree.
    store.tier_put("cold", {"name": "cold", "kind": "dir", "bucket": "/srv/cold"})
    store.tier_copies_add([(cid(2), "cold", 100), (cid(9), "cold", 50)])
    assert store.tier_make_cold([cid(2)], ["cold"]) == [cid(2)]
    store.tier_pin("/d", True)
    bucket = store.mkdir(ROOT, b"bucket", 0o755, 0, 0).ino
    store.s3_key_put("AKROOT", S3_SECRET, "main key")
    store.s3_key_put("AKGUEST", OTHER_S3_SECRET, "guest")
    store.s3_bucket_own("bucket", "AKROOT")
    store.s3_grant("AKGUEST", "bucket", "r")
    store.admin_token_put("tok1", "ops", "admin", hashlib.sha256(b"token-1").digest())
    part = new_file(store, b"upload-1.part-1", store.internal_dir("uploads"))
    write(store, chunks, part, [ref(0, cid(6))])
    # Open but unlinked: lives only while its session holds it; one chunk its own, one shared.
    gone = new_file(store, b"gone", d, keep_open=True)
    write(store, chunks, gone, [ref(0, cid(7)), ref(1, cid(1))])
    store.unlink(d, b"gone")
    store.oplog_trim(3)  # config gains 'oplog_seq'
    # The newest inode and the newest dentry go: the counters stay above every remaining row.
    store.rename(d, b"f2", d, b"f2-renamed", 0)
    new_file(store, b"tmp", d)
    store.unlink(d, b"tmp")
    return {"d": d, "f1": f1, "f2": f2, "vol": vol, "snap": snap, "bucket": bucket, "gone": gone}


def table_rows(path: Path) -> TableRows:
    """Every dumped table's rows, sorted (config without the engine's own rows), plus the
    counters (AUTOINCREMENT's or the identity sequences' highest number handed out)."""
    if metastores.engine() == "sqlite":
        db: Any = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        counters = "SELECT name, seq FROM sqlite_sequence"
    else:
        db = PgDb(where(path))
        counters = " UNION ALL ".join(
            f"SELECT '{t}', pg_sequence_last_value(pg_get_serial_sequence('{t}', '{c}')::regclass)"
            for t, c in COUNTER_COLUMNS.items()
        )
    try:
        out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in DUMPED_TABLES}
        own = dump._ENGINE_CONFIG[metastores.engine()]
        out["config"] = [r for r in out["config"] if r[0] not in own]
        out["counters"] = sorted(tuple(r) for r in db.execute(counters).fetchall() if r[1] is not None)
    finally:
        db.close()
    return out


def dump_bytes(path: Path, **kwargs: Any) -> tuple[bytes, DumpInfo]:
    out = io.BytesIO()
    info = write_dump(where(path), out, secret=SECRET, engine=metastores.engine(), **kwargs)
    return out.getvalue(), info


def load(data: bytes, path: Path, *, secret: bytes = SECRET, block_size: int = BS) -> DumpInfo:
    return load_dump(
        io.BytesIO(data),
        where(path),
        secret=secret,
        block_size=block_size,
        engine=metastores.engine(),
    )


def records(data: bytes) -> list[bytes]:
    """The msgpack bytes of a dump's records."""
    out = []
    at = 10
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        out.append(zstandard.ZstdDecompressor().decompress(data[at + 4 : at + 4 + length]))
        at += 4 + length
    return out


def assemble(preamble: bytes, bodies: list[bytes]) -> bytes:
    """A dump of these records (as write_dump frames them)."""
    cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
    frames = [cctx.compress(body) for body in bodies]
    return preamble + b"".join(struct.pack(">I", len(f)) + f for f in frames)


def decompressed(data: bytes) -> bytes:
    return b"".join(records(data))


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


def sized(on_sqlite: int, on_postgresql: int) -> int:
    """A workload's size for the test's engine: PostgreSQL's round trips make each step dearer."""
    return on_sqlite if metastores.engine() == "sqlite" else on_postgresql


def untouched(path: Path) -> bool:
    """Nothing of a failed load at ``path``: no file (SQLite), no table in the schema (PostgreSQL)."""
    if metastores.engine() == "sqlite":
        return leftovers(path) == []
    db = PgDb(where(path))
    try:
        found = db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    finally:
        db.close()
    return found == []


# -- the round trip ----------------------------------------------------------------------------


@engines
def test_round_trip_is_faithful(tmp_path: Path, store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    inos = build_rich(store, chunks)
    src = tmp_path / "meta.db"
    head = store.oplog_head()
    listing = store.readdir(inos["d"], 0, 1000)
    # The dump holds the store as it is once every session ended: "gone" purged, its chunks
    # released.  end_session below does exactly that, at the next clock tick, which is the
    # time the dump marks the released chunk unreferenced.
    data, info = dump_bytes(src, now_ns=clock.t + 1000)
    store.end_session(SESSION)
    assert clock.t == info.created_ns
    expected = table_rows(src)

    restored = tmp_path / "restored.db"
    loaded = load(data, restored)
    assert loaded == info
    if metastores.engine() == "sqlite":
        assert leftovers(restored) == ["restored.db"]  # no WAL left behind, no temporary file
    got = table_rows(restored)
    # The restored oplog is empty and continues at the dumped head (never reusing a number).
    expected["config"] = [r for r in expected["config"] if r[0] != "oplog_seq"] + [("oplog_seq", head)]
    for table in expected:
        assert sorted(got[table], key=repr) == sorted(expected[table], key=repr), table
    assert info.rows == {t: len(expected[t]) for t in DUMPED_TABLES}
    assert all(info.rows.values()), info.rows  # one of everything: no table went untested
    counters: dict[str, int] = {name: seq for name, seq in expected["counters"]}
    assert counters["inodes"] > max(r[0] for r in expected["inodes"])  # a gap the counter must keep
    assert info.schema_version == SCHEMA_VERSION and info.dump_bytes == len(data)

    clock2 = Clock(clock.t)
    again = open_store(restored, now_ns=clock2)
    try:
        check(again, chunks)
        assert again.oplog_head() == head and again.oplog_since(0) == []
        assert again.counts() == store.counts()
        assert again.layout() == store.layout()
        assert again.list_volumes() == store.list_volumes()
        assert again.list_nodes() == store.list_nodes()
        assert again.s3_key_list() == store.s3_key_list()
        assert again.s3_key_get("AKROOT") == S3_SECRET
        assert again.s3_key_get("AKGUEST") == OTHER_S3_SECRET
        assert again.admin_token_get("tok1") == store.admin_token_get("tok1")
        assert again.policy(inos["f1"]) == store.policy(inos["f1"])
        assert again.referenced_chunks() == store.referenced_chunks()
        assert again.readdir(inos["d"], 0, 1000) == store.readdir(inos["d"], 0, 1000)
        # A listing interrupted before the dump continues from its cookie on the restored store.
        cookie = listing[1].cookie
        assert again.readdir(inos["d"], cookie, 1000) == store.readdir(inos["d"], cookie, 1000)
        # The next changes get the same inode numbers and cookies on both: none is reused.
        clock2.t = clock.t  # and the same times
        for s in (store, again):
            new_file(s, b"new", inos["d"])
            s.mkdir(inos["snap"], b"sub", 0o700, 0, 0)
            s.rename(inos["d"], b"f1", ROOT, b"moved", 0)
        assert again.readdir(inos["d"], 0, 1000) == store.readdir(inos["d"], 0, 1000)
        assert again.readdir(ROOT, 0, 1000) == store.readdir(ROOT, 0, 1000)
        assert again.lookup(inos["d"], b"new").ino == counters["inodes"] + 1
        assert again.lookup(inos["d"], b"new") == store.lookup(inos["d"], b"new")
        assert again.oplog_head() == head + 4  # create, release, mkdir, rename
        check(again, chunks)
    finally:
        again.close()
    after, before = table_rows(restored), table_rows(src)
    for table in ("inodes", "dentries", "counters", "chunks", "blocks", "xattrs"):
        assert after[table] == before[table], table


@engines
def test_new_store_numbers_continue(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    """The counters, not the highest rows, decide the next inode number and cookie."""
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    new_file(store, b"a", d)
    top = new_file(store, b"b", d)
    store.unlink(d, b"b")  # the newest inode and dentry go
    data, _ = dump_bytes(tmp_path / "meta.db")
    load(data, tmp_path / "r.db")
    again = open_store(tmp_path / "r.db")
    try:
        ino = new_file(again, b"c", d)
        assert ino == top + 1
        assert again.readdir(d, 0, 10)[-1].cookie == store.readdir(d, 0, 10)[-1].cookie + 2
    finally:
        again.close()


@engines
def test_secrets_are_sealed(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    build_rich(store, chunks)
    data, _ = dump_bytes(tmp_path / "meta.db")
    plain = decompressed(data)
    for secret in (S3_SECRET, OTHER_S3_SECRET):
        assert secret.encode() not in data and secret.encode() not in plain
    assert b"AKROOT" in plain  # the access key itself is not secret: it proves we searched the records
    # Admin tokens are digests already: stored as they are, never the token.
    assert hashlib.sha256(b"token-1").digest() in plain and b"token-1" not in plain


@engines
def test_verify_reads_everything(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    build_rich(store, chunks)
    data, info = dump_bytes(tmp_path / "meta.db")
    assert verify_dump(io.BytesIO(data), secret=SECRET) == info
    with pytest.raises(ConfigError, match="another cluster secret"):
        verify_dump(io.BytesIO(data), secret=b"x" * 32)


@engines
def test_old_schema_dump_loads(tmp_path: Path, chunks: set[bytes]) -> None:
    """A version-1 database (chunks without replicas; SQLite only) dumps as version 1 and loads
    as NULLs, into either engine."""
    old = tmp_path / "v1.db"
    store = MetaStore(old, block_size=BS)
    f = new_file(store, b"f")
    write(store, chunks, f, [ref(0, cid(1))], replicas=2)
    store.close()
    db = sqlite3.connect(old)
    db.execute("ALTER TABLE chunks DROP COLUMN replicas")
    db.execute("PRAGMA user_version=1")
    db.close()
    out = io.BytesIO()
    info = write_dump(old, out, secret=SECRET)
    assert info.schema_version == 1
    load(out.getvalue(), tmp_path / "r.db")
    again = open_store(tmp_path / "r.db")
    try:
        check(again, chunks)
        assert again.chunk_replicas([cid(1)]) == [None]
    finally:
        again.close()


@engines
def test_load_into_fresh_store_in_place(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    build_rich(store, chunks)
    data, _ = dump_bytes(tmp_path / "meta.db")
    target = tmp_path / "fresh.db"
    open_store(target).close()
    load(data, target)
    again = open_store(target)
    try:
        check(again, chunks)
        assert again.s3_key_get("AKROOT") == S3_SECRET
    finally:
        again.close()


# -- consistency --------------------------------------------------------------------------------


@engines
def test_dump_is_one_snapshot_and_never_blocks_the_writer(
    tmp_path: Path, store: MetaStore, chunks: set[bytes]
) -> None:
    """Writes made while the dump's snapshot is open commit at once and do not show in it."""
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    store.mkdir(a, b"m", 0o755, 0, 0)
    # Several batches, so the dump is well under way when it writes (fewer on PostgreSQL, where
    # each file costs two round trips: still more than one batch).
    for i in range(sized(2500, 1200)):
        new_file(store, b"f%d" % i, b)
    took: list[float] = []

    class Meddling(io.BytesIO):
        def write(self, data: Any) -> int:
            if not took:  # the first write: the preamble, inside the snapshot
                started = time.monotonic()
                store.rename(a, b"m", b, b"m", 0)
                new_file(store, b"late", a)
                took.append(time.monotonic() - started)
            return super().write(data)

    out = Meddling()
    write_dump(where(tmp_path / "meta.db"), out, secret=SECRET, engine=metastores.engine())
    assert took and took[0] < 1.0  # busy_timeout is 10 s: a blocked writer would show
    load(out.getvalue(), tmp_path / "r.db")
    again = open_store(tmp_path / "r.db")
    try:
        check(again, chunks)
        assert [e.name for e in again.readdir(a, 0, 10)] == [b"m"]
        assert b"m" not in {e.name for e in again.readdir(b, 0, 10_000)}
    finally:
        again.close()


@engines
def test_dump_while_another_connection_writes(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    """A directory moves back and forth between two parents (dentries and both parents' nlink
    change together): every dump holds it in exactly one, with fsck-clean link counts."""
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    store.mkdir(a, b"m", 0o755, 0, 0)
    for i in range(sized(2000, 1200)):
        new_file(store, b"f%d" % i, ROOT)
    stop = threading.Event()
    moves = [0]
    errors: list[BaseException] = []

    def mover() -> None:
        other = open_store(tmp_path / "meta.db")
        try:
            where = (a, b)
            while not stop.is_set():
                other.rename(where[0], b"m", where[1], b"m", 0)
                where = where[::-1]
                moves[0] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            other.close()

    thread = threading.Thread(target=mover)
    thread.start()
    try:
        while moves[0] < 10 and not errors:  # the writer is under way
            time.sleep(0.001)
        first = moves[0]
        for n in range(sized(12, 6)):
            data, _ = dump_bytes(tmp_path / "meta.db")
            target = tmp_path / f"r{n}.db"
            load(data, target)
            again = open_store(target)
            try:
                check(again, chunks)
                homes = [p for p in (a, b) if b"m" in {e.name for e in again.readdir(p, 0, 10)}]
                assert len(homes) == 1
            finally:
                again.close()
            if metastores.engine() == "sqlite":
                os.unlink(target)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert moves[0] > first  # the writer kept going while the dumps ran


# -- across engines -----------------------------------------------------------------------------


def public_views(store: MetaStore) -> dict[str, Any]:
    """Everything clients see of a store: every directory listed (the namespace and the internal
    roots), every inode's attributes, xattrs, policy, block map or target, and the tables that
    are not inodes (chunk references, volumes, nodes, S3 keys and grants, admin tokens)."""
    views: dict[str, Any] = {}
    internal = [store.internal_dir(name) for name in INTERNAL_DIRS]
    inos = {ROOT, *internal}
    todo = [ROOT, *internal]
    while todo:
        d = todo.pop()
        entries = store.readdir(d, 0, 10_000)
        views[f"readdir {d}"] = entries
        for entry in entries:
            if entry.attr.ino not in inos and stat.S_ISDIR(entry.attr.mode):
                todo.append(entry.attr.ino)
            inos.add(entry.attr.ino)
    for ino in sorted(inos):
        attr = store.getattr(ino)
        views[f"getattr {ino}"] = attr
        views[f"xattrs {ino}"] = {name: store.getxattr(ino, name) for name in store.listxattr(ino)}
        views[f"policy {ino}"] = store.policy(ino)
        if stat.S_ISREG(attr.mode):
            views[f"read_map {ino}"] = store.read_map(ino)
        if stat.S_ISLNK(attr.mode):
            views[f"readlink {ino}"] = store.readlink(ino)
    views["referenced_chunks"] = store.referenced_chunks()
    every_chunk = sorted({cid(n) for n in range(1, 8)} | set(views["referenced_chunks"]))
    views["chunk_replicas"] = store.chunk_replicas(every_chunk)
    views["volumes"] = store.list_volumes()
    views["nodes"] = store.list_nodes()
    views["layout"] = store.layout()
    views["s3 keys"] = store.s3_key_list()
    for key in ("AKROOT", "AKGUEST"):
        views[f"s3 key {key}"] = (store.s3_key_get(key), store.s3_access(key))
    views["admin tokens"] = store.admin_token_list()
    views["admin token tok1"] = store.admin_token_get("tok1")
    views["counts"] = store.counts()
    return views


def move_across(
    src: MetaStore,
    src_where: str,
    dst_where: str,
    dst_engine: str,
    chunks: set[bytes],
    clock: Clock,
) -> None:
    """Dump a rich store from one engine, load it into the other and compare what clients see."""
    inos = build_rich(src, chunks)
    head = src.oplog_head()
    out = io.BytesIO()
    info = write_dump(src_where, out, secret=SECRET, now_ns=clock.t + 1000, engine=src.engine)
    src.end_session(SESSION)  # the store as the dump holds it: the session's open unlinked file gone
    expected = public_views(src)
    loaded = load_dump(
        io.BytesIO(out.getvalue()),
        dst_where,
        secret=SECRET,
        block_size=BS,
        engine=dst_engine,
    )
    assert loaded == info and all(info.rows.values()), info.rows
    dst = MetaStore(dst_where, block_size=BS, now_ns=Clock(clock.t), engine=dst_engine)
    try:
        assert dst.engine == dst_engine != src.engine
        check(dst, chunks)
        got = public_views(dst)
        assert got.keys() == expected.keys()
        for view, value in expected.items():
            assert got[view] == value, view
        assert dst.s3_key_get("AKROOT") == S3_SECRET  # unsealed on the way in
        assert dst.oplog_head() == head and dst.oplog_since(0) == []
        loaded_inos = [v.ino for k, v in got.items() if k.startswith("getattr ")]
        loaded_cookies = [e.cookie for k, v in got.items() if k.startswith("readdir ") for e in v]
        # New inodes and readdir cookies carry on after the loaded ones, exactly as on the source.
        new = new_file(dst, b"new", inos["d"])
        assert new > max(loaded_inos)
        assert new == new_file(src, b"new", inos["d"])  # the number the source hands out next

        def numbers(store: MetaStore) -> dict[bytes, tuple[int, int]]:
            return {e.name: (e.attr.ino, e.cookie) for e in store.readdir(inos["d"], 0, 10_000)}

        assert numbers(dst) == numbers(src)
        assert numbers(dst)[b"new"][1] > max(loaded_cookies)
        assert dst.mkdir(ROOT, b"newdir", 0o755, 0, 0).ino == new + 1
        assert dst.oplog_head() == head + 3  # create, release, mkdir: the oplog carries on too
        check(dst, chunks)
    finally:
        dst.close()


def test_sqlite_dump_loads_into_postgresql(
    tmp_path: Path, pg_dsn: str, chunks: set[bytes], clock: Clock
) -> None:
    """How a single host moves to PostgreSQL: its meta.db dumped, the dump loaded into a database."""
    src = MetaStore(tmp_path / "meta.db", block_size=BS, now_ns=clock)
    try:
        move_across(src, str(tmp_path / "meta.db"), pg_dsn, "postgresql", chunks, clock)
    finally:
        src.close()


def test_postgresql_dump_loads_into_sqlite(
    tmp_path: Path, pg_dsn: str, chunks: set[bytes], clock: Clock
) -> None:
    src = MetaStore(pg_dsn, block_size=BS, now_ns=clock, engine="postgresql")
    try:
        move_across(src, pg_dsn, str(tmp_path / "meta.db"), "sqlite", chunks, clock)
    finally:
        src.close()


def test_postgresql_dump_leaves_the_engines_bookkeeping_out(
    tmp_path: Path, pg_dsn: str, chunks: set[bytes]
) -> None:
    """PostgreSQL keeps the schema version in config; a dump carries it in its header only."""
    src = MetaStore(pg_dsn, block_size=BS, engine="postgresql")
    try:
        assert src._db.execute("SELECT value FROM config WHERE key = 'schema_version'").fetchone()
        out = io.BytesIO()
        info = write_dump(pg_dsn, out, secret=SECRET, engine="postgresql")
    finally:
        src.close()
    assert info.schema_version == SCHEMA_VERSION
    bodies = [msgpack.unpackb(body, raw=False) for body in records(out.getvalue())]
    at = next(i for i, r in enumerate(bodies) if r.get("table") == "config" and r["kind"] == "table")
    config = [row for r in bodies[at + 1 :] if r["kind"] == "rows" for row in r["rows"]]
    keys = {row[0] for row in config[: info.rows["config"]]}
    assert "block_size" in keys and "schema_version" not in keys
    load(out.getvalue(), tmp_path / "r.db")  # SQLite: PRAGMA user_version, no config row
    db = sqlite3.connect(tmp_path / "r.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM config WHERE key = 'schema_version'").fetchone() == (0,)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        db.close()


def test_postgresql_messages_never_show_the_password(tmp_path: Path, store: MetaStore) -> None:
    """A database that cannot be reached: the errors name it without its password."""
    data, _ = dump_bytes(tmp_path / "meta.db")
    dsn = "host=127.0.0.1 port=1 dbname=meta user=dfs password=hunter2 connect_timeout=2"
    with pytest.raises(DfsError) as dumping:
        write_dump(dsn, io.BytesIO(), secret=SECRET, engine="postgresql")
    with pytest.raises(DfsError) as loading:
        load_dump(io.BytesIO(data), dsn, secret=SECRET, block_size=BS, engine="postgresql")
    for raised in (dumping, loading):
        assert "hunter2" not in str(raised.value) and "dbname=meta" in str(raised.value)


def test_postgresql_source_without_tables_refused(pg_dsn: str) -> None:
    with pytest.raises(ConfigError, match="not a dfs metadata database"):
        write_dump(pg_dsn, io.BytesIO(), secret=SECRET, engine="postgresql")


# -- refusals -----------------------------------------------------------------------------------


@pytest.fixture
def rich_dump(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> tuple[bytes, DumpInfo]:
    build_rich(store, chunks)
    return dump_bytes(tmp_path / "meta.db")


@engines
def test_truncated_dump_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo]) -> None:
    data, _ = rich_dump
    target = tmp_path / "r.db"
    for cut in (0, 5, 10, 11, 20, len(data) // 3, len(data) // 2, len(data) - 20, len(data) - 1):
        with pytest.raises(InvalidArgument):
            load(data[:cut], target)
        assert untouched(target)  # nothing half-loaded, not even an empty store
    # Whole records missing at the end (cut at every record boundary): refused, never loaded.
    bodies = records(data)
    for n in range(len(bodies)):
        with pytest.raises(InvalidArgument, match="truncated"):
            verify_dump(io.BytesIO(assemble(data[:10], bodies[:n])), secret=SECRET)
    assert verify_dump(io.BytesIO(assemble(data[:10], bodies)), secret=SECRET) == rich_dump[1]
    with pytest.raises(InvalidArgument, match="after the end"):
        load(data + b"\x00", target)
    assert untouched(target)


@engines
def test_flipped_byte_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo]) -> None:
    data, info = rich_dump
    refused = 0
    for at in range(len(data)):
        bad = bytearray(data)
        bad[at] ^= 0x10
        try:
            same = verify_dump(io.BytesIO(bytes(bad)), secret=SECRET)
        except (InvalidArgument, ConfigError):  # any other error fails the test
            refused += 1
        else:
            # A flip zstd ignores (a frame's window size, ...) decodes the very same records.
            assert same.sha256 == info.sha256
    # What a frame's header says beyond its content (window size, ...) is all that may pass.
    assert refused >= 0.95 * len(data)
    target = tmp_path / "r.db"
    for at in range(0, len(data), max(1, len(data) // sized(40, 12))):
        bad = bytearray(data)
        bad[at] ^= 0x01
        with pytest.raises(DfsError):
            load(bytes(bad), target)
        assert untouched(target)


@engines
def test_altered_records_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo]) -> None:
    """A checksum mismatch is found even when the compressed stream itself is sound."""
    data, _ = rich_dump
    plain = decompressed(data)

    def forged(old: bytes, new: bytes) -> bytes:
        """The dump with the first ``old`` replaced."""
        assert old in plain
        bodies = records(data)
        first = next(i for i, body in enumerate(bodies) if old in body)
        bodies[first] = bodies[first].replace(old, new, 1)
        return assemble(data[:10], bodies)

    # A sealed secret moved to another access key (s3_keys comes before s3_grants): its
    # associated data no longer matches.
    with pytest.raises(ConfigError, match="another cluster secret"):
        load(forged(b"AKGUEST", b"AKGUESX"), tmp_path / "r.db")
    # The admin token's name: nothing sealed, the checksum catches it.
    with pytest.raises(InvalidArgument, match="checksum"):
        load(forged(b"\xa3ops", b"\xa3opz"), tmp_path / "r.db")
    assert untouched(tmp_path / "r.db")


@engines
def test_wrong_secret_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo], store: MetaStore) -> None:
    data, _ = rich_dump
    with pytest.raises(ConfigError, match="another cluster secret"):
        load(data, tmp_path / "r.db", secret=b"another-secret-0123456789abcdef")
    assert untouched(tmp_path / "r.db")
    # Without a single S3 key, the MAC still tells.
    empty = tmp_path / "empty.db"
    open_store(empty).close()
    plain_data, _ = dump_bytes(empty)
    with pytest.raises(ConfigError, match="another cluster secret"):
        load(plain_data, tmp_path / "r.db", secret=b"another-secret-0123456789abcdef")


@engines
def test_non_empty_target_refused(
    tmp_path: Path, rich_dump: tuple[bytes, DumpInfo], store: MetaStore, chunks: set[bytes]
) -> None:
    data, _ = rich_dump
    with pytest.raises(NotEmpty):
        load(data, tmp_path / "meta.db")  # the source itself
    target = tmp_path / "used.db"
    used = open_store(target)
    used.mkdir(ROOT, b"precious", 0o755, 0, 0)
    used.close()
    before = table_rows(target)
    with pytest.raises(NotEmpty, match="already holds"):
        load(data, target)
    assert table_rows(target) == before
    # Even a store that only registered a node (a daemon started on it) is not empty.
    other = tmp_path / "started.db"
    started = open_store(other)
    started.register_node("n1", "z", "addr")
    started.close()
    with pytest.raises(NotEmpty):
        load(data, other)


@engines
def test_block_size_mismatch_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo]) -> None:
    data, _ = rich_dump
    with pytest.raises(ConfigError, match="block_size 4096, configured 8192"):
        load(data, tmp_path / "r.db", block_size=8192)
    assert untouched(tmp_path / "r.db")


@engines
def test_bad_magic_and_versions_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo]) -> None:
    data, _ = rich_dump
    target = tmp_path / "r.db"
    with pytest.raises(InvalidArgument, match="not a dfs metadata dump"):
        load(b"SQLite format 3\x00" + data, target)
    with pytest.raises(InvalidArgument, match="not a dfs metadata dump"):
        load(b"", target)
    with pytest.raises(ConfigError, match="format 2"):
        load(data[:8] + struct.pack(">H", 2) + data[10:], target)
    assert untouched(target)


def test_newer_schema_refused(tmp_path: Path, store: MetaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.close()
    db = sqlite3.connect(tmp_path / "meta.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ConfigError, match="newer"):
        dump_bytes(tmp_path / "meta.db")
    with monkeypatch.context() as m:  # a dump by a newer dfs
        m.setattr(dump, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        data, _ = dump_bytes(tmp_path / "meta.db")
    with pytest.raises(ConfigError, match="newer than this dfs"):
        load(data, tmp_path / "r.db")
    assert untouched(tmp_path / "r.db")


@engines
async def test_dump_in_a_worker_thread(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    """As the daemon runs it: trio.to_thread, its own connection made and used in that thread."""
    build_rich(store, chunks)
    out = io.BytesIO()
    dumping = partial(write_dump, where(tmp_path / "meta.db"), out, secret=SECRET, engine=metastores.engine())
    info = await trio.to_thread.run_sync(dumping)
    assert verify_dump(io.BytesIO(out.getvalue()), secret=SECRET) == info


def test_missing_source_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        dump_bytes(tmp_path / "nothing.db")


# -- every table decided ------------------------------------------------------------------------


def schema_tables() -> dict[str, str]:
    return {
        m.group(1): ddl
        for ddl in _SCHEMA
        if (m := re.match(r"\s*CREATE TABLE IF NOT EXISTS (\w+)", ddl)) is not None
    }


def test_every_schema_table_is_decided() -> None:
    """A table added to the schema fails here until daemon/meta/dump.py dumps or excludes it."""
    tables = set(schema_tables())
    assert not set(DUMPED_TABLES) & EXCLUDED_TABLES
    assert tables == set(DUMPED_TABLES) | EXCLUDED_TABLES
    assert len(DUMPED_TABLES) == len(set(DUMPED_TABLES))


def test_every_counter_is_dumped() -> None:
    autoincrement = {t for t, ddl in schema_tables().items() if "AUTOINCREMENT" in ddl}
    assert autoincrement == set(dump._COUNTER_TABLES)
    assert autoincrement <= set(DUMPED_TABLES)


def test_every_schema_version_loads() -> None:
    """Bumping SCHEMA_VERSION fails here until the loader says how older dumps load."""
    assert set(dump._LOADABLE_SCHEMAS) == set(range(1, SCHEMA_VERSION + 1))


@engines
def test_dump_refuses_an_undecided_table(tmp_path: Path, store: MetaStore) -> None:
    store._db.execute("CREATE TABLE future (k TEXT PRIMARY KEY, v INTEGER)")
    with pytest.raises(InternalError, match="future"):
        dump_bytes(tmp_path / "meta.db")


@engines
def test_load_refuses_an_unknown_table(
    tmp_path: Path, store: MetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store._db.execute("CREATE TABLE future (k TEXT PRIMARY KEY, v INTEGER)")
    store._db.execute("INSERT INTO future VALUES ('a', 0)")
    with monkeypatch.context() as m:  # a newer dfs that dumps its new table
        m.setattr(dump, "DUMPED_TABLES", (*DUMPED_TABLES, "future"))
        data, info = dump_bytes(tmp_path / "meta.db")
    assert info.rows["future"] == 1
    with pytest.raises(ConfigError, match="future"):
        load(data, tmp_path / "r.db")
    assert untouched(tmp_path / "r.db")


@engines
def test_load_refuses_an_unknown_column(tmp_path: Path, store: MetaStore) -> None:
    store._db.execute("ALTER TABLE nodes ADD COLUMN extra TEXT")
    data, _ = dump_bytes(tmp_path / "meta.db")
    with pytest.raises(ConfigError, match="extra"):
        load(data, tmp_path / "r.db")
    assert untouched(tmp_path / "r.db")


# -- bounded memory -----------------------------------------------------------------------------


@engines
def test_memory_stays_bounded(tmp_path: Path) -> None:
    """Many files (random, incompressible inline data): dump and load hold one batch at a time
    (on PostgreSQL the dump reads through a server-side cursor)."""
    src = tmp_path / "big.db"
    open_store(src).close()
    rng = os.urandom
    n = sized(50_000, 25_000)
    db: Any = sqlite3.connect(src) if metastores.engine() == "sqlite" else PgDb(where(src))
    try:
        # Inode numbers given explicitly: on PostgreSQL the identity sequence stays behind them,
        # and the dump's counter must still cover them.
        db.executemany(
            "INSERT INTO inodes (ino, mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, "
            "ctime_ns, generation, symlink, inline) VALUES (?, ?, 1, 0, 0, 0, 512, 512, 1, 2, 3, 0, NULL, ?)",
            ((100 + i, stat.S_IFREG | 0o644, rng(512)) for i in range(n)),
        )
        db.executemany(
            "INSERT INTO dentries (parent, name, ino, is_dir) VALUES (?, ?, ?, 0)",
            ((ROOT, rng(16).hex().encode(), 100 + i) for i in range(n)),
        )
        if metastores.engine() == "sqlite":
            db.commit()
    finally:
        db.close()
    path = tmp_path / "big.dump"
    tracemalloc.start()
    try:
        with open(path, "wb") as out:
            info = write_dump(where(src), out, secret=SECRET, engine=metastores.engine())
        dump_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with open(path, "rb") as inp:
            load_dump(
                inp,
                where(tmp_path / "r.db"),
                secret=SECRET,
                block_size=BS,
                engine=metastores.engine(),
            )
        load_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert info.rows["inodes"] == n + 1 + len(INTERNAL_DIRS) and size > n * 512
    assert dump_peak < min(size // 4, 8 << 20), (dump_peak, size)
    assert load_peak < min(size // 4, 8 << 20), (load_peak, size)
    again = open_store(tmp_path / "r.db")
    try:
        assert again.fsck(lambda _: True, repair=False) == []
        assert again.counts()["files"] == n
        assert new_file(again, b"next", ROOT) == 100 + n  # after the highest loaded inode
    finally:
        again.close()


# -- backups and dfsd --load-meta with [meta] engine = "postgresql" ------------------------------


def test_backup_from_postgresql_restores_on_a_sqlite_host(
    tmp_path: Path, pg_dsn: str, chunks: set[bytes]
) -> None:
    """A node whose metadata is in PostgreSQL backs it up; a fresh SQLite host restores it."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    secret = credentials.daemon_secret(data_dir, joining=False)
    src = MetaStore(pg_dsn, block_size=BS, engine="postgresql")
    try:
        build_rich(src, chunks)
        src.end_session(SESSION)
        expected = public_views(src)
    finally:
        src.close()
    meta = MetaDb("postgresql", pg_dsn + " password=hunter2")
    assert "hunter2" not in repr(meta) and "hunter2" not in meta.describe()
    # Small pieces: the dump is stored in several chunks, reassembled in order.
    backups = Backups(data_dir, secret, "n1", keep=2, piece_bytes=1024)
    store = ChunkStore(data_dir, fsync=False)
    info = backups.make(meta, b"k" * 32, store)
    assert backups.list() == [info] and info["rows"] > 0
    assert len(info["chunks"]) > 1 and sorted(store.iter_ids()) == sorted(
        bytes.fromhex(c) for c in info["chunks"]
    )
    assert [p.name for p in backups.dir.iterdir()] == [f"{info['id']}.json"]  # no dump file kept

    other = tmp_path / "other"
    other.mkdir()
    node = credentials.FILE_NAMES[CallerClass.NODE]
    credentials.write(other / node, credentials.load(data_dir / node))
    dump_path = tmp_path / "rebuilt.dump"
    with dump_path.open("wb") as out:
        assemble_backup(info, data_dir / "chunks", backup_chunk_key(secret), out)
    done = load_offline(other, dump_path, info, block_size=BS)
    assert done == f"loaded {info['rows']} rows from backup {info['id']} into {other / 'meta.db'}"
    assert (other / "cluster.key").read_bytes() == b"k" * 32
    again = MetaStore(other / "meta.db", block_size=BS)
    try:
        check(again, chunks)
        assert public_views(again) == expected
    finally:
        again.close()


def test_dfsd_load_meta_fills_the_configured_postgresql_database(
    tmp_path: Path, pg_dsn: str, chunks: set[bytes]
) -> None:
    """``dfsd --load-meta`` (what ``dfs meta load|restore`` run) with [meta] engine = "postgresql":
    the dump goes into the database, never over metadata already there, and no message shows
    the DSN's password."""
    dsn = pg_dsn + " password=hunter2"  # the test server trusts: the password is never checked
    d = Daemon(tmp_path / "var", free_port(), meta_conf=f'engine = "postgresql"\ndsn = {json.dumps(dsn)}\n')
    secret = credentials.daemon_secret(d.data_dir, joining=False)
    bs = config_mod.load(d.conf_path).storage.block_size
    # A single host's meta.db, in the daemon's geometry.
    src = MetaStore(tmp_path / "single.db", block_size=bs)
    try:
        top = src.mkdir(ROOT, b"d", 0o755, 0, 0).ino
        f = new_file(src, b"f", top)
        refs = [BlockRef(0, cid(1), bs, 1000), BlockRef(1, cid(2), 10, 10)]
        chunks.update(r.chunk_id for r in refs)
        src.commit_write(
            f, size=bs + 10, mtime_ns=5, blocks=refs, inline=None, chunk_exists=chunks.__contains__
        )
        src.link(f, ROOT, b"hard")
        src.symlink(top, b"sym", b"f", 0, 0)
        src.setxattr(f, b"user.note", b"kept", 0)
        expected = public_views(src)
    finally:
        src.close()
    dump_file = tmp_path / "meta.dump"
    with dump_file.open("wb") as f:
        write_dump(tmp_path / "single.db", f, secret=secret)

    def load_meta() -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "dfsd"), "--load-meta", str(dump_file), "--config", str(d.conf_path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    res = load_meta()
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("loaded ") and "into postgresql " in res.stdout
    assert "hunter2" not in res.stdout + res.stderr
    assert not (d.data_dir / "meta.db").exists()
    again = MetaStore(pg_dsn, block_size=bs, engine="postgresql")
    try:
        check(again, chunks)
        assert public_views(again) == expected
    finally:
        again.close()

    res = load_meta()  # never over metadata already there
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("dfsd: ")]
    assert len(errors) == 1 and "already holds metadata" in errors[0], res.stderr
    assert "hunter2" not in res.stdout + res.stderr


def test_postgresql_load_refuses_a_database_written_meanwhile(
    tmp_path: Path, pg_dsn: str, store: MetaStore, chunks: set[bytes]
) -> None:
    """A daemon already connected writes while the load runs: the load fails, nothing is committed."""
    build_rich(store, chunks)
    data, _ = dump_bytes(tmp_path / "meta.db")
    running = MetaStore(pg_dsn, block_size=BS, engine="postgresql")
    try:

        class Meddling(io.BytesIO):
            wrote = False

            def read(self, size: int | None = -1) -> bytes:
                if self.tell() > 200 and not self.wrote:  # inside the load's transaction
                    running.s3_key_put("AKLATE", "late-secret", "written during the load")
                    self.wrote = True
                return super().read(size)

        with pytest.raises(NotEmpty, match="in use"):
            load_dump(
                Meddling(data),
                pg_dsn,
                secret=SECRET,
                block_size=BS,
                engine="postgresql",
            )
        assert [k["access_key"] for k in running.s3_key_list()] == ["AKLATE"]
        assert running.readdir(ROOT, 0, 100) == []  # none of the dump's rows
    finally:
        running.close()
