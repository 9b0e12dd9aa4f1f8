"""Unit tests for daemon/meta/dump.py: metadata dumps, their loader and everything they refuse."""

from __future__ import annotations

import hashlib
import io
import os
import re
import sqlite3
import stat
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import zstandard

import daemon.meta.dump as dump
from daemon.meta import MetaStore
from daemon.meta.dump import DUMPED_TABLES, EXCLUDED_TABLES, DumpInfo, load_dump, verify_dump, write_dump
from daemon.meta.schema import _SCHEMA, SCHEMA_VERSION
from dfs.core.errors import ConfigError, DfsError, InternalError, InvalidArgument, NotEmpty, NotFound
from dfs.core.namespace import ROOT_INO, Attr, BlockRef

ROOT = ROOT_INO
BS = 4096
INLINE_MAX = 64
SESSION = "s1"
SECRET = b"cluster-secret-0123456789abcdef!"
S3_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY-7f3a"
OTHER_S3_SECRET = "guest-secret-9d1c0b5e77aa41"
TableRows = dict[str, list[tuple[Any, ...]]]


class Clock:
    """Deterministic now_ns: every call advances 1 µs; ``t`` is the last value handed out."""

    def __init__(self, t: int = 1_700_000_000 * 10**9) -> None:
        self.t = t

    def __call__(self) -> int:
        self.t += 1000
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chunks() -> set[bytes]:
    """The chunk ids the (imaginary) chunk store holds."""
    return set()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = MetaStore(tmp_path / "meta.db", inline_max=INLINE_MAX, block_size=BS, now_ns=clock)
    yield s
    s.close()


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
    write(store, chunks, new_file(store, b"data", vol), [ref(0, cid(5)), ref(2, cid(2))])
    snap = store.snapshot(d, ROOT, b"snap", uid=7, gid=8).ino
    store.register_node("n1", "zone-a", "10.0.0.1:7000")
    store.register_node("n2", "zone-b", "10.0.0.2:7000", 2.0)
    store.set_node("n2", state="draining")
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
    """Every dumped table's rows, sorted, plus the AUTOINCREMENT counters."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in DUMPED_TABLES}
        out["sqlite_sequence"] = sorted(db.execute("SELECT * FROM sqlite_sequence").fetchall())
    finally:
        db.close()
    return out


def dump_bytes(path: Path, **kwargs: Any) -> tuple[bytes, DumpInfo]:
    out = io.BytesIO()
    info = write_dump(path, out, secret=SECRET, **kwargs)
    return out.getvalue(), info


def load(data: bytes, path: Path, *, secret: bytes = SECRET, block_size: int = BS) -> DumpInfo:
    return load_dump(io.BytesIO(data), path, secret=secret, inline_max=INLINE_MAX, block_size=block_size)


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


# -- the round trip ----------------------------------------------------------------------------


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
    assert leftovers(restored) == ["restored.db"]  # no WAL left behind, no temporary file
    got = table_rows(restored)
    # The restored oplog is empty and continues at the dumped head (never reusing a number).
    expected["config"] = [r for r in expected["config"] if r[0] != "oplog_seq"] + [("oplog_seq", head)]
    for table in expected:
        assert sorted(got[table], key=repr) == sorted(expected[table], key=repr), table
    assert info.rows == {t: len(expected[t]) for t in DUMPED_TABLES}
    assert all(info.rows.values()), info.rows  # one of everything: no table went untested
    counters: dict[str, int] = {name: seq for name, seq in expected["sqlite_sequence"]}
    assert counters["inodes"] > max(r[0] for r in expected["inodes"])  # a gap the counter must keep
    assert info.schema_version == SCHEMA_VERSION and info.dump_bytes == len(data)

    clock2 = Clock(clock.t)
    again = MetaStore(restored, inline_max=INLINE_MAX, block_size=BS, now_ns=clock2)
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
    for table in ("inodes", "dentries", "sqlite_sequence", "chunks", "blocks", "xattrs"):
        assert after[table] == before[table], table


def test_new_store_numbers_continue(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    """The counters, not the highest rows, decide the next inode number and cookie."""
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    new_file(store, b"a", d)
    top = new_file(store, b"b", d)
    store.unlink(d, b"b")  # the newest inode and dentry go
    data, _ = dump_bytes(tmp_path / "meta.db")
    load(data, tmp_path / "r.db")
    again = MetaStore(tmp_path / "r.db", inline_max=INLINE_MAX, block_size=BS)
    try:
        ino = new_file(again, b"c", d)
        assert ino == top + 1
        assert again.readdir(d, 0, 10)[-1].cookie == store.readdir(d, 0, 10)[-1].cookie + 2
    finally:
        again.close()


def test_secrets_are_sealed(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    build_rich(store, chunks)
    data, _ = dump_bytes(tmp_path / "meta.db")
    plain = decompressed(data)
    for secret in (S3_SECRET, OTHER_S3_SECRET):
        assert secret.encode() not in data and secret.encode() not in plain
    assert b"AKROOT" in plain  # the access key itself is not secret: it proves we searched the records
    # Admin tokens are digests already: stored as they are, never the token.
    assert hashlib.sha256(b"token-1").digest() in plain and b"token-1" not in plain


def test_verify_reads_everything(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    build_rich(store, chunks)
    data, info = dump_bytes(tmp_path / "meta.db")
    assert verify_dump(io.BytesIO(data), secret=SECRET) == info
    with pytest.raises(ConfigError, match="another cluster secret"):
        verify_dump(io.BytesIO(data), secret=b"x" * 32)


def test_old_schema_dump_loads(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    """A version-1 database (chunks without replicas) dumps as version 1 and loads as NULLs."""
    f = new_file(store, b"f")
    write(store, chunks, f, [ref(0, cid(1))], replicas=2)
    store.close()
    db = sqlite3.connect(tmp_path / "meta.db")
    db.execute("ALTER TABLE chunks DROP COLUMN replicas")
    db.execute("PRAGMA user_version=1")
    db.close()
    data, info = dump_bytes(tmp_path / "meta.db")
    assert info.schema_version == 1
    load(data, tmp_path / "r.db")
    again = MetaStore(tmp_path / "r.db", inline_max=INLINE_MAX, block_size=BS)
    try:
        check(again, chunks)
        assert again.chunk_replicas([cid(1)]) == [None]
    finally:
        again.close()


def test_load_into_fresh_store_in_place(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    build_rich(store, chunks)
    data, _ = dump_bytes(tmp_path / "meta.db")
    target = tmp_path / "fresh.db"
    MetaStore(target, inline_max=INLINE_MAX, block_size=BS).close()
    load(data, target)
    again = MetaStore(target, inline_max=INLINE_MAX, block_size=BS)
    try:
        check(again, chunks)
        assert again.s3_key_get("AKROOT") == S3_SECRET
    finally:
        again.close()


# -- consistency --------------------------------------------------------------------------------


def test_dump_is_one_snapshot_and_never_blocks_the_writer(
    tmp_path: Path, store: MetaStore, chunks: set[bytes]
) -> None:
    """Writes made while the dump's snapshot is open commit at once and do not show in it."""
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    store.mkdir(a, b"m", 0o755, 0, 0)
    for i in range(2500):  # several batches, so the dump is well under way when it writes
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
    write_dump(tmp_path / "meta.db", out, secret=SECRET)
    assert took and took[0] < 1.0  # busy_timeout is 10 s: a blocked writer would show
    load(out.getvalue(), tmp_path / "r.db")
    again = MetaStore(tmp_path / "r.db", inline_max=INLINE_MAX, block_size=BS)
    try:
        check(again, chunks)
        assert [e.name for e in again.readdir(a, 0, 10)] == [b"m"]
        assert b"m" not in {e.name for e in again.readdir(b, 0, 10_000)}
    finally:
        again.close()


def test_dump_while_another_connection_writes(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    """A directory moves back and forth between two parents (dentries and both parents' nlink
    change together): every dump holds it in exactly one, with fsck-clean link counts."""
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    store.mkdir(a, b"m", 0o755, 0, 0)
    for i in range(2000):
        new_file(store, b"f%d" % i, ROOT)
    stop = threading.Event()
    moves = [0]
    errors: list[BaseException] = []

    def mover() -> None:
        other = MetaStore(tmp_path / "meta.db", inline_max=INLINE_MAX, block_size=BS)
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
        for n in range(12):
            data, _ = dump_bytes(tmp_path / "meta.db")
            target = tmp_path / f"r{n}.db"
            load(data, target)
            again = MetaStore(target, inline_max=INLINE_MAX, block_size=BS)
            try:
                check(again, chunks)
                homes = [p for p in (a, b) if b"m" in {e.name for e in again.readdir(p, 0, 10)}]
                assert len(homes) == 1
            finally:
                again.close()
            os.unlink(target)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert moves[0] > first  # the writer kept going while the dumps ran


# -- refusals -----------------------------------------------------------------------------------


@pytest.fixture
def rich_dump(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> tuple[bytes, DumpInfo]:
    build_rich(store, chunks)
    return dump_bytes(tmp_path / "meta.db")


def test_truncated_dump_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo]) -> None:
    data, _ = rich_dump
    target = tmp_path / "r.db"
    for cut in (0, 5, 10, 11, 20, len(data) // 3, len(data) // 2, len(data) - 20, len(data) - 1):
        with pytest.raises(InvalidArgument):
            load(data[:cut], target)
        assert leftovers(target) == []  # nothing half-loaded, not even an empty store
    # Whole records missing at the end (cut at every record boundary): refused, never loaded.
    bodies = records(data)
    for n in range(len(bodies)):
        with pytest.raises(InvalidArgument, match="truncated"):
            verify_dump(io.BytesIO(assemble(data[:10], bodies[:n])), secret=SECRET)
    assert verify_dump(io.BytesIO(assemble(data[:10], bodies)), secret=SECRET) == rich_dump[1]
    with pytest.raises(InvalidArgument, match="after the end"):
        load(data + b"\x00", target)
    assert leftovers(target) == []


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
    for at in range(0, len(data), max(1, len(data) // 40)):
        bad = bytearray(data)
        bad[at] ^= 0x01
        with pytest.raises(DfsError):
            load(bytes(bad), target)
        assert leftovers(target) == []


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
    assert leftovers(tmp_path / "r.db") == []


def test_wrong_secret_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo], store: MetaStore) -> None:
    data, _ = rich_dump
    with pytest.raises(ConfigError, match="another cluster secret"):
        load(data, tmp_path / "r.db", secret=b"another-secret-0123456789abcdef")
    assert leftovers(tmp_path / "r.db") == []
    # Without a single S3 key, the MAC still tells.
    empty = tmp_path / "empty.db"
    MetaStore(empty, inline_max=INLINE_MAX, block_size=BS).close()
    plain_data, _ = dump_bytes(empty)
    with pytest.raises(ConfigError, match="another cluster secret"):
        load(plain_data, tmp_path / "r.db", secret=b"another-secret-0123456789abcdef")


def test_non_empty_target_refused(
    tmp_path: Path, rich_dump: tuple[bytes, DumpInfo], store: MetaStore, chunks: set[bytes]
) -> None:
    data, _ = rich_dump
    with pytest.raises(NotEmpty):
        load(data, tmp_path / "meta.db")  # the source itself
    target = tmp_path / "used.db"
    used = MetaStore(target, inline_max=INLINE_MAX, block_size=BS)
    used.mkdir(ROOT, b"precious", 0o755, 0, 0)
    used.close()
    before = table_rows(target)
    with pytest.raises(NotEmpty, match="already holds"):
        load(data, target)
    assert table_rows(target) == before
    # Even a store that only registered a node (a daemon started on it) is not empty.
    other = tmp_path / "started.db"
    started = MetaStore(other, inline_max=INLINE_MAX, block_size=BS)
    started.register_node("n1", "z", "addr")
    started.close()
    with pytest.raises(NotEmpty):
        load(data, other)


def test_block_size_mismatch_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo]) -> None:
    data, _ = rich_dump
    with pytest.raises(ConfigError, match="block_size 4096, configured 8192"):
        load(data, tmp_path / "r.db", block_size=8192)
    assert leftovers(tmp_path / "r.db") == []


def test_bad_magic_and_versions_refused(tmp_path: Path, rich_dump: tuple[bytes, DumpInfo]) -> None:
    data, _ = rich_dump
    target = tmp_path / "r.db"
    with pytest.raises(InvalidArgument, match="not a dfs metadata dump"):
        load(b"SQLite format 3\x00" + data, target)
    with pytest.raises(InvalidArgument, match="not a dfs metadata dump"):
        load(b"", target)
    with pytest.raises(ConfigError, match="format 2"):
        load(data[:8] + struct.pack(">H", 2) + data[10:], target)
    assert leftovers(target) == []


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
    assert leftovers(tmp_path / "r.db") == []


async def test_dump_in_a_worker_thread(tmp_path: Path, store: MetaStore, chunks: set[bytes]) -> None:
    """As the daemon runs it: trio.to_thread, its own connection made and used in that thread."""
    build_rich(store, chunks)
    out = io.BytesIO()
    info = await trio.to_thread.run_sync(partial(write_dump, tmp_path / "meta.db", out, secret=SECRET))
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


def test_dump_refuses_an_undecided_table(tmp_path: Path, store: MetaStore) -> None:
    store._db.execute("CREATE TABLE future (k TEXT PRIMARY KEY, v BLOB)")
    with pytest.raises(InternalError, match="future"):
        dump_bytes(tmp_path / "meta.db")


def test_load_refuses_an_unknown_table(
    tmp_path: Path, store: MetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store._db.execute("CREATE TABLE future (k TEXT PRIMARY KEY, v BLOB)")
    store._db.execute("INSERT INTO future VALUES ('a', x'00')")
    with monkeypatch.context() as m:  # a newer dfs that dumps its new table
        m.setattr(dump, "DUMPED_TABLES", (*DUMPED_TABLES, "future"))
        data, info = dump_bytes(tmp_path / "meta.db")
    assert info.rows["future"] == 1
    with pytest.raises(ConfigError, match="future"):
        load(data, tmp_path / "r.db")
    assert leftovers(tmp_path / "r.db") == []


def test_load_refuses_an_unknown_column(tmp_path: Path, store: MetaStore) -> None:
    store._db.execute("ALTER TABLE nodes ADD COLUMN extra TEXT")
    data, _ = dump_bytes(tmp_path / "meta.db")
    with pytest.raises(ConfigError, match="extra"):
        load(data, tmp_path / "r.db")
    assert leftovers(tmp_path / "r.db") == []


# -- bounded memory -----------------------------------------------------------------------------


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """50k files (random, incompressible inline data): dump and load hold one batch at a time."""
    src = tmp_path / "big.db"
    inline_max = 1024
    MetaStore(src, inline_max=inline_max, block_size=BS).close()
    db = sqlite3.connect(src)
    rng = os.urandom
    n = 50_000
    with db:
        db.executemany(
            "INSERT INTO inodes (ino, mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, "
            "ctime_ns, generation, symlink, inline) VALUES (?, ?, 1, 0, 0, 0, 512, 512, 1, 2, 3, 0, NULL, ?)",
            ((100 + i, stat.S_IFREG | 0o644, rng(512)) for i in range(n)),
        )
        db.executemany(
            "INSERT INTO dentries (parent, name, ino, is_dir) VALUES (?, ?, ?, 0)",
            ((ROOT, rng(16).hex().encode(), 100 + i) for i in range(n)),
        )
    db.close()
    path = tmp_path / "big.dump"
    tracemalloc.start()
    try:
        with open(path, "wb") as out:
            info = write_dump(src, out, secret=SECRET)
        dump_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with open(path, "rb") as inp:
            load_dump(inp, tmp_path / "r.db", secret=SECRET, inline_max=inline_max, block_size=BS)
        load_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert info.rows["inodes"] == n + 3 and size > 20 << 20
    assert dump_peak < min(size // 4, 8 << 20), (dump_peak, size)
    assert load_peak < min(size // 4, 8 << 20), (load_peak, size)
    again = MetaStore(tmp_path / "r.db", inline_max=inline_max, block_size=BS)
    try:
        assert again.fsck(lambda _: True, repair=False) == []
        assert again.counts()["files"] == n
    finally:
        again.close()
