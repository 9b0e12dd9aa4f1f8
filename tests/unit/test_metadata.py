"""Unit tests for daemon.meta.MetaStore (the metadata service's SQLite core)."""

from __future__ import annotations

import os
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon.meta import DIR_SIZE, LINK_MAX, MetaStore
from daemon.meta.store import CACHE_BYTES, SCAN_CACHE_BYTES
from dfs.core.errors import (
    ChunkMissing,
    ConfigError,
    DfsError,
    Exists,
    InternalError,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    RangeError,
    TooManyLinks,
)
from dfs.core.namespace import (
    INLINE_LIMIT_BYTES,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    Attr,
    BlockRef,
)
from tests.metastores import Clock, only_sqlite, open_meta

# The whole module runs once per metadata engine (SQLite, PostgreSQL).
pytestmark = pytest.mark.usefixtures("meta_engine")
ROOT = ROOT_INO
BS = 4096
SESSION = "s1"
DAY_NS = 24 * 3600 * 10**9


def open_store(path: Path, clock: Clock, *, block_size: int = BS) -> MetaStore:
    return open_meta(path / "meta.db", block_size=block_size, now_ns=clock)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = open_store(tmp_path, clock)
    yield s
    s.close()


def check(store: MetaStore, chunks: set[bytes]) -> None:
    assert store.fsck(chunks.__contains__, repair=False) == []


def cid(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def ref(index: int, chunk: bytes, length: int = BS, stored: int = 1000) -> BlockRef:
    return BlockRef(index, chunk, length, stored)


def write(
    store: MetaStore, chunks: set[bytes], ino: int, size: int, refs: list[BlockRef], mtime: int = 5
) -> Attr:
    chunks.update(r.chunk_id for r in refs if r.chunk_id)
    return store.commit_write(
        ino, size=size, mtime_ns=mtime, blocks=refs, inline=None, chunk_exists=chunks.__contains__
    )


def new_file(store: MetaStore, name: bytes = b"f", parent: int = ROOT, *, keep_open: bool = False) -> int:
    ino = store.create(parent, name, 0o644, 1000, 1000, SESSION).ino
    if not keep_open:
        store.release(ino, SESSION)
    return ino


def names(store: MetaStore, ino: int) -> list[bytes]:
    return [e.name for e in store.readdir(ino, 0, 10_000)]


def refcount(store: MetaStore, chunk: bytes) -> int | None:
    return store.referenced_chunks().get(chunk)


def oplog_ops(store: MetaStore) -> list[str]:
    return [r[0] for r in store._db.execute("SELECT op FROM oplog ORDER BY seq")]


# -- opening, root, persistence ------------------------------------------------------------


def test_root_created_on_first_open(store: MetaStore, chunks: set[bytes]) -> None:
    root = store.getattr(ROOT)
    assert root.ino == ROOT
    assert root.mode == stat.S_IFDIR | 0o755
    assert (root.uid, root.gid, root.nlink, root.size) == (0, 0, 2, DIR_SIZE)
    assert store.readdir(ROOT, 0, 100) == []
    if store.engine == "sqlite":
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Not Debian's default (1: every freed page zeroed, a deleted inline file written twice).
        assert store._db.execute("PRAGMA secure_delete").fetchone()[0] == 2  # FAST
        # Each connection's own page cache, in KiB: the writer's and a reader's 16 MiB, a
        # scanning reader's (the metrics' counts) 2 MiB.
        assert store._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_BYTES // 1024 == -16384
        for cache_bytes, kib in ((CACHE_BYTES, 16384), (SCAN_CACHE_BYTES, 2048)):
            reader = store.reader(cache_bytes=cache_bytes)
            try:
                assert reader._db.execute("PRAGMA cache_size").fetchone()[0] == -kib
            finally:
                reader.close()
    check(store, chunks)


def test_persistence_across_reopen(tmp_path: Path, clock: Clock, chunks: set[bytes]) -> None:
    s = open_store(tmp_path, clock)
    d = s.mkdir(ROOT, b"d", 0o755, 1, 2).ino
    f = new_file(s, b"f", d)
    write(s, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(2))])
    s.setxattr(f, b"user.k", b"v", 0)
    link = s.symlink(ROOT, b"l", b"d/f", 0, 0).ino
    s.sync()
    s.close()
    s.close()  # idempotent
    s = open_store(tmp_path, clock)
    assert s.lookup(ROOT, b"d").ino == d
    assert s.lookup(d, b"f").ino == f
    assert s.getxattr(f, b"user.k") == b"v"
    assert s.readlink(link) == b"d/f"
    assert [b.chunk_id for b in s.read_map(f).blocks] == [cid(1), cid(2)]
    # inode numbers are never reused, even after the newest inode is removed and the store reopened
    s.unlink(ROOT, b"l")
    s.close()
    s = open_store(tmp_path, clock)
    assert new_file(s, b"g") > link
    check(s, chunks)
    s.close()


def test_block_size_mismatch_is_config_error(tmp_path: Path, clock: Clock) -> None:
    open_store(tmp_path, clock).close()
    with pytest.raises(ConfigError):
        open_store(tmp_path, clock, block_size=BS * 2)


def test_bad_geometry_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        open_meta(tmp_path / "m.db", block_size=0)


def test_unopenable_path_is_dfs_error(tmp_path: Path) -> None:
    only_sqlite("a file in a missing directory")
    with pytest.raises(DfsError):
        open_meta(tmp_path / "missing-dir" / "m.db", block_size=BS)


# -- lookups ---------------------------------------------------------------------------------


def test_lookup_and_getattr(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0)
    f = store.mknod(d.ino, b"f", stat.S_IFREG | 0o600, 0, 5, 6)
    assert (
        store.lookup(ROOT, b"d")
        == store.getattr(d.ino)
        == d._replace(mtime_ns=f.ctime_ns, ctime_ns=f.ctime_ns)
    )
    assert store.lookup(d.ino, b"f") == f
    assert store.lookup(d.ino, b".") == store.getattr(d.ino)
    assert store.lookup(d.ino, b"..").ino == ROOT
    assert store.lookup(ROOT, b"..").ino == ROOT
    assert store.parent(d.ino) == ROOT
    assert store.parent(ROOT) == ROOT
    with pytest.raises(NotFound):
        store.lookup(ROOT, b"nope")
    with pytest.raises(NotFound):
        store.lookup(999, b"x")
    with pytest.raises(NotADirectory):
        store.lookup(f.ino, b"x")
    with pytest.raises(NotADirectory):
        store.parent(f.ino)
    with pytest.raises(NameTooLong):
        store.lookup(ROOT, b"x" * 256)
    with pytest.raises(NotFound):
        store.getattr(999)
    check(store, chunks)


def test_readlink(store: MetaStore, chunks: set[bytes]) -> None:
    attr = store.symlink(ROOT, b"l", b"/some/where", 3, 4)
    assert attr.mode == stat.S_IFLNK | 0o777
    assert attr.size == len(b"/some/where")
    assert attr.nlink == 1
    assert store.readlink(attr.ino) == b"/some/where"
    with pytest.raises(InvalidArgument):
        store.readlink(ROOT)
    with pytest.raises(NotFound):
        store.readlink(999)
    with pytest.raises(InvalidArgument):
        store.symlink(ROOT, b"bad", b"", 0, 0)
    check(store, chunks)


def test_readdir_pagination_and_cookies(store: MetaStore, chunks: set[bytes]) -> None:
    inos = [new_file(store, b"f%d" % i) for i in range(10)]
    first = store.readdir(ROOT, 0, 4)
    assert [e.name for e in first] == [b"f0", b"f1", b"f2", b"f3"]
    assert [e.attr.ino for e in first] == inos[:4]
    assert all(a.cookie < b.cookie for a, b in zip(first, first[1:], strict=False))
    rest = store.readdir(ROOT, first[-1].cookie, 100)
    assert [e.name for e in rest] == [b"f%d" % i for i in range(4, 10)]
    assert store.readdir(ROOT, rest[-1].cookie, 100) == []
    assert store.readdir(ROOT, 0, 0) == []
    with pytest.raises(NotADirectory):
        store.readdir(inos[0], 0, 10)
    with pytest.raises(NotFound):
        store.readdir(999, 0, 10)
    check(store, chunks)


def test_readdir_cookies_stable_under_concurrent_changes(store: MetaStore, chunks: set[bytes]) -> None:
    for i in range(6):
        new_file(store, b"f%d" % i)
    page = store.readdir(ROOT, 0, 3)  # f0 f1 f2
    cookie = page[-1].cookie
    store.unlink(ROOT, b"f1")  # already returned
    store.unlink(ROOT, b"f4")  # not yet returned
    new_file(store, b"a-new")
    store.rename(ROOT, b"f0", ROOT, b"f0-renamed", 0)  # a renamed entry gets a new cookie
    rest = store.readdir(ROOT, cookie, 100)
    assert [e.name for e in rest] == [b"f3", b"f5", b"a-new", b"f0-renamed"]
    # the cookies of surviving entries did not move
    again = store.readdir(ROOT, 0, 100)
    by_name = {e.name: e.cookie for e in again}
    assert by_name[b"f2"] == cookie
    assert [e.name for e in again] == [b"f2", b"f3", b"f5", b"a-new", b"f0-renamed"]
    check(store, chunks)


# -- creating things -------------------------------------------------------------------------


def test_mknod_types(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    reg = store.mknod(ROOT, b"reg", 0o640, 77, 1, 2)  # zero file type means regular
    assert reg.mode == stat.S_IFREG | 0o640
    assert reg.rdev == 0
    assert (reg.nlink, reg.size, reg.blocks, reg.uid, reg.gid) == (1, 0, 0, 1, 2)
    assert reg.atime_ns == reg.mtime_ns == reg.ctime_ns == clock.t
    fifo = store.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
    assert stat.S_ISFIFO(fifo.mode)
    sock = store.mknod(ROOT, b"sock", stat.S_IFSOCK | 0o600, 0, 0, 0)
    assert stat.S_ISSOCK(sock.mode)
    chr_ = store.mknod(ROOT, b"chr", stat.S_IFCHR | 0o600, os.makedev(1, 3), 0, 0)
    assert stat.S_ISCHR(chr_.mode)
    assert chr_.rdev == os.makedev(1, 3)
    blk = store.mknod(ROOT, b"blk", stat.S_IFBLK | 0o600, os.makedev(8, 0), 0, 0)
    assert stat.S_ISBLK(blk.mode)
    assert store.getattr(blk.ino).rdev == os.makedev(8, 0)
    with pytest.raises(InvalidArgument):
        store.mknod(ROOT, b"dir", stat.S_IFDIR | 0o755, 0, 0, 0)
    with pytest.raises(InvalidArgument):
        store.mknod(ROOT, b"lnk", stat.S_IFLNK | 0o777, 0, 0, 0)
    with pytest.raises(Exists):
        store.mknod(ROOT, b"reg", 0o640, 0, 0, 0)
    with pytest.raises(NotADirectory):
        store.mknod(reg.ino, b"x", 0o640, 0, 0, 0)
    with pytest.raises(NotFound):
        store.mknod(999, b"x", 0o640, 0, 0, 0)
    assert sorted(names(store, ROOT)) == [b"blk", b"chr", b"fifo", b"reg", b"sock"]
    check(store, chunks)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        (b"", InvalidArgument),
        (b".", InvalidArgument),
        (b"..", InvalidArgument),
        (b"a/b", InvalidArgument),
        (b"a\0b", InvalidArgument),
        (b"x" * 256, NameTooLong),
    ],
)
def test_bad_names_rejected_everywhere(
    store: MetaStore, chunks: set[bytes], name: bytes, error: type[DfsError]
) -> None:
    f = new_file(store, b"f")
    with pytest.raises(error):
        store.mknod(ROOT, name, 0o644, 0, 0, 0)
    with pytest.raises(error):
        store.mkdir(ROOT, name, 0o755, 0, 0)
    with pytest.raises(error):
        store.symlink(ROOT, name, b"t", 0, 0)
    with pytest.raises(error):
        store.create(ROOT, name, 0o644, 0, 0, SESSION)
    with pytest.raises(error):
        store.link(f, ROOT, name)
    with pytest.raises(error):
        store.rename(ROOT, b"f", ROOT, name, 0)
    assert names(store, ROOT) == [b"f"]
    check(store, chunks)


def test_name_of_255_bytes_is_fine(store: MetaStore, chunks: set[bytes]) -> None:
    name = b"n" * 255
    ino = new_file(store, name)
    assert store.lookup(ROOT, name).ino == ino
    check(store, chunks)


def test_mkdir_nlink_and_parent_times(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    d = store.mkdir(ROOT, b"d", 0o750, 1, 2)
    assert d.mode == stat.S_IFDIR | 0o750
    assert (d.nlink, d.size, d.uid, d.gid) == (2, DIR_SIZE, 1, 2)
    root = store.getattr(ROOT)
    assert root.nlink == 3
    assert root.mtime_ns == root.ctime_ns == clock.t
    sub = store.mkdir(d.ino, b"sub", stat.S_IFDIR | 0o700, 1, 2)
    assert sub.mode == stat.S_IFDIR | 0o700
    assert store.getattr(d.ino).nlink == 3
    new_file(store, b"file", d.ino)
    assert store.getattr(d.ino).nlink == 3  # files do not count
    with pytest.raises(Exists):
        store.mkdir(ROOT, b"d", 0o755, 0, 0)
    with pytest.raises(InvalidArgument):
        store.mkdir(ROOT, b"x", stat.S_IFREG | 0o755, 0, 0)
    check(store, chunks)


def test_mkdir_too_many_links(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    store._db.execute("UPDATE inodes SET nlink = ? WHERE ino = ?", (LINK_MAX, d))
    with pytest.raises(TooManyLinks):
        store.mkdir(d, b"sub", 0o755, 0, 0)
    new_file(store, b"file-ok", d)  # files do not add directory links
    store._db.execute("UPDATE inodes SET nlink = 2 WHERE ino = ?", (d,))
    check(store, chunks)


def test_setgid_directory_inheritance(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"shared", 0o2775, 0, 50)
    assert d.mode & stat.S_ISGID
    f = store.create(d.ino, b"f", 0o644, 1000, 1000, SESSION)
    assert f.gid == 50
    assert not f.mode & stat.S_ISGID
    store.release(f.ino, SESSION)
    sub = store.mkdir(d.ino, b"sub", 0o755, 1000, 1000)
    assert sub.gid == 50
    assert sub.mode & stat.S_ISGID
    node = store.mknod(sub.ino, b"n", stat.S_IFIFO | 0o600, 0, 1000, 1000)
    assert node.gid == 50
    link = store.symlink(sub.ino, b"l", b"t", 1000, 1000)
    assert link.gid == 50
    plain = store.mkdir(ROOT, b"plain", 0o755, 1000, 1000)
    assert plain.gid == 1000
    assert not plain.mode & stat.S_ISGID
    check(store, chunks)


def test_create_registers_open_and_session(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    attr = store.create(ROOT, b"f", stat.S_IFREG | 0o600, 7, 8, SESSION)
    assert attr.mode == stat.S_IFREG | 0o600
    assert attr.atime_ns == attr.mtime_ns == attr.ctime_ns == clock.t
    assert store.getattr(ROOT).mtime_ns == clock.t
    rows = store._db.execute("SELECT ino, session, count FROM opens").fetchall()
    assert rows == [(attr.ino, SESSION, 1)]
    assert store._db.execute("SELECT id FROM sessions").fetchall() == [(SESSION,)]
    with pytest.raises(Exists):
        store.create(ROOT, b"f", 0o600, 0, 0, SESSION)
    with pytest.raises(InvalidArgument):
        store.create(ROOT, b"g", stat.S_IFDIR | 0o600, 0, 0, SESSION)
    store.release(attr.ino, SESSION)
    assert store._db.execute("SELECT * FROM opens").fetchall() == []
    check(store, chunks)


def test_create_in_removed_directory(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    store.open(d, SESSION)  # opendir keeps the removed directory alive
    store.rmdir(ROOT, b"d")
    assert store.getattr(d).nlink == 0
    with pytest.raises(NotFound):
        store.create(d, b"f", 0o644, 0, 0, SESSION)
    assert store.readdir(d, 0, 10) == []
    store.release(d, SESSION)
    with pytest.raises(NotFound):
        store.getattr(d)
    check(store, chunks)


# -- links and unlinking ---------------------------------------------------------------------


def test_link_nlink_and_times(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    attr = store.link(f, d, b"g")
    assert attr.nlink == 2
    assert attr.ctime_ns == clock.t
    dattr = store.getattr(d)
    assert dattr.mtime_ns == dattr.ctime_ns == clock.t
    assert store.lookup(d, b"g").ino == f
    assert store.getattr(d).nlink == 2
    with pytest.raises(Exists):
        store.link(f, ROOT, b"d")
    with pytest.raises(NotPermitted):
        store.link(d, ROOT, b"dirlink")
    with pytest.raises(NotFound):
        store.link(999, ROOT, b"x")
    with pytest.raises(NotADirectory):
        store.link(f, f, b"x")
    store.unlink(ROOT, b"f")
    assert store.getattr(f).nlink == 1
    assert store.lookup(d, b"g").ino == f
    check(store, chunks)


def test_link_too_many_links(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    store._db.execute("UPDATE inodes SET nlink = ? WHERE ino = ?", (LINK_MAX, f))
    with pytest.raises(TooManyLinks):
        store.link(f, ROOT, b"g")
    store._db.execute("UPDATE inodes SET nlink = 1 WHERE ino = ?", (f,))
    check(store, chunks)


def test_link_to_unlinked_open_file_is_not_found(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f", keep_open=True)
    store.unlink(ROOT, b"f")
    with pytest.raises(NotFound):
        store.link(f, ROOT, b"again")
    store.release(f, SESSION)
    check(store, chunks)


def test_unlink(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    store.link(f, ROOT, b"g")
    store.setxattr(f, b"user.a", b"1", 0)
    store.unlink(ROOT, b"f")
    attr = store.getattr(f)
    assert attr.nlink == 1
    assert attr.ctime_ns == clock.t
    root = store.getattr(ROOT)
    assert root.mtime_ns == root.ctime_ns == clock.t
    store.unlink(ROOT, b"g")
    with pytest.raises(NotFound):
        store.getattr(f)
    assert store._db.execute("SELECT COUNT(*) FROM xattrs").fetchone()[0] == 0
    with pytest.raises(NotFound):
        store.unlink(ROOT, b"g")
    store.mkdir(ROOT, b"d", 0o755, 0, 0)
    with pytest.raises(IsADirectory):
        store.unlink(ROOT, b"d")
    with pytest.raises(NameTooLong):
        store.unlink(ROOT, b"x" * 300)
    with pytest.raises(NotFound):
        store.unlink(999, b"x")
    check(store, chunks)


def test_unlink_special_files(store: MetaStore, chunks: set[bytes]) -> None:
    fifo = store.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0).ino
    link = store.symlink(ROOT, b"l", b"target", 0, 0).ino
    store.unlink(ROOT, b"fifo")
    store.unlink(ROOT, b"l")
    for ino in (fifo, link):
        with pytest.raises(NotFound):
            store.getattr(ino)
    check(store, chunks)


def test_rmdir(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    sub = store.mkdir(d, b"sub", 0o755, 0, 0).ino
    with pytest.raises(NotEmpty):
        store.rmdir(ROOT, b"d")
    new_file(store, b"f", sub)
    with pytest.raises(NotEmpty):
        store.rmdir(d, b"sub")
    with pytest.raises(NotADirectory):
        store.rmdir(sub, b"f")
    with pytest.raises(NotFound):
        store.rmdir(ROOT, b"nope")
    with pytest.raises(InvalidArgument):
        store.rmdir(d, b".")
    with pytest.raises(NotEmpty):
        store.rmdir(d, b"..")
    store.unlink(sub, b"f")
    store.rmdir(d, b"sub")
    dattr = store.getattr(d)
    assert dattr.nlink == 2
    assert dattr.mtime_ns == dattr.ctime_ns == clock.t
    with pytest.raises(NotFound):
        store.getattr(sub)
    store.rmdir(ROOT, b"d")
    assert store.getattr(ROOT).nlink == 2
    assert names(store, ROOT) == []
    check(store, chunks)


# -- rename ----------------------------------------------------------------------------------


def test_rename_simple_and_times(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    f = new_file(store, b"f", a)
    store.rename(a, b"f", b, b"g", 0)
    now = clock.t
    assert store.lookup(b, b"g").ino == f
    with pytest.raises(NotFound):
        store.lookup(a, b"f")
    assert store.getattr(f).ctime_ns == now
    for d in (a, b):
        attr = store.getattr(d)
        assert attr.mtime_ns == attr.ctime_ns == now
    # same directory rename
    store.rename(b, b"g", b, b"h", 0)
    assert names(store, b) == [b"h"]
    with pytest.raises(NotFound):
        store.rename(b, b"g", b, b"x", 0)
    with pytest.raises(NotADirectory):
        store.rename(b, b"h", f, b"x", 0)
    with pytest.raises(NameTooLong):
        store.rename(b, b"x" * 256, a, b"y", 0)
    check(store, chunks)


def test_rename_directory_between_parents_fixes_nlink(store: MetaStore, chunks: set[bytes]) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    d = store.mkdir(a, b"d", 0o755, 0, 0).ino
    assert store.getattr(a).nlink == 3
    store.rename(a, b"d", b, b"d", 0)
    assert store.getattr(a).nlink == 2
    assert store.getattr(b).nlink == 3
    assert store.lookup(d, b"..").ino == b
    check(store, chunks)


def test_rename_over_existing_file(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    src = new_file(store, b"src")
    dst = new_file(store, b"dst")
    write(store, chunks, dst, BS, [ref(0, cid(1))])
    store.rename(ROOT, b"src", ROOT, b"dst", 0)
    assert store.lookup(ROOT, b"dst").ino == src
    assert names(store, ROOT) == [b"dst"]
    with pytest.raises(NotFound):
        store.getattr(dst)
    assert refcount(store, cid(1)) == 0
    # a replaced target that keeps another link survives with a new ctime
    other = new_file(store, b"other")
    store.link(other, ROOT, b"other2")
    store.rename(ROOT, b"dst", ROOT, b"other", 0)
    attr = store.getattr(other)
    assert attr.nlink == 1
    assert attr.ctime_ns == clock.t
    check(store, chunks)


def test_rename_replacing_open_file_keeps_it_until_release(store: MetaStore, chunks: set[bytes]) -> None:
    new_file(store, b"a")
    victim = new_file(store, b"b", keep_open=True)
    store.rename(ROOT, b"a", ROOT, b"b", 0)
    assert store.getattr(victim).nlink == 0
    check(store, chunks)
    store.release(victim, SESSION)
    with pytest.raises(NotFound):
        store.getattr(victim)
    check(store, chunks)


def test_rename_directory_over_directory(store: MetaStore, chunks: set[bytes]) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    store.mkdir(b, b"inner", 0o755, 0, 0)
    c = store.mkdir(ROOT, b"c", 0o755, 0, 0).ino
    with pytest.raises(NotEmpty):
        store.rename(ROOT, b"a", ROOT, b"b", 0)
    assert store.getattr(ROOT).nlink == 5
    store.rename(ROOT, b"a", ROOT, b"c", 0)  # over an empty directory
    assert store.lookup(ROOT, b"c").ino == a
    with pytest.raises(NotFound):
        store.getattr(c)
    assert store.getattr(ROOT).nlink == 4
    # across parents: the replaced directory's parent loses a subdir, gains the moved one
    x = store.mkdir(b, b"x", 0o755, 0, 0).ino
    store.rename(b, b"x", ROOT, b"c", 0)
    assert store.getattr(b).nlink == 3
    assert store.getattr(ROOT).nlink == 4
    assert store.lookup(ROOT, b"c").ino == x
    check(store, chunks)


def test_rename_type_mismatches(store: MetaStore, chunks: set[bytes]) -> None:
    store.mkdir(ROOT, b"d", 0o755, 0, 0)
    new_file(store, b"f")
    with pytest.raises(NotADirectory):
        store.rename(ROOT, b"d", ROOT, b"f", 0)
    with pytest.raises(IsADirectory):
        store.rename(ROOT, b"f", ROOT, b"d", 0)
    assert sorted(names(store, ROOT)) == [b"d", b"f"]
    check(store, chunks)


def test_rename_hard_links_to_same_inode_is_noop(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"a")
    store.link(f, ROOT, b"b")
    before = store.getattr(f)
    ops = len(oplog_ops(store))
    store.rename(ROOT, b"a", ROOT, b"b", 0)
    assert sorted(names(store, ROOT)) == [b"a", b"b"]
    assert store.getattr(f) == before
    store.rename(ROOT, b"a", ROOT, b"a", 0)
    store.rename(ROOT, b"a", ROOT, b"b", RENAME_EXCHANGE)
    assert len(oplog_ops(store)) == ops
    with pytest.raises(Exists):
        store.rename(ROOT, b"a", ROOT, b"a", RENAME_NOREPLACE)
    check(store, chunks)


def test_rename_noreplace(store: MetaStore, chunks: set[bytes]) -> None:
    new_file(store, b"a")
    new_file(store, b"b")
    with pytest.raises(Exists):
        store.rename(ROOT, b"a", ROOT, b"b", RENAME_NOREPLACE)
    store.rename(ROOT, b"a", ROOT, b"c", RENAME_NOREPLACE)
    assert sorted(names(store, ROOT)) == [b"b", b"c"]
    check(store, chunks)


def test_rename_exchange(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    f = new_file(store, b"f", a)
    d = store.mkdir(b, b"d", 0o755, 0, 0).ino
    assert (store.getattr(a).nlink, store.getattr(b).nlink) == (2, 3)
    store.rename(a, b"f", b, b"d", RENAME_EXCHANGE)
    now = clock.t
    assert store.lookup(a, b"f").ino == d
    assert store.lookup(b, b"d").ino == f
    assert (store.getattr(a).nlink, store.getattr(b).nlink) == (3, 2)
    assert store.lookup(d, b"..").ino == a
    for ino in (a, b):
        assert store.getattr(ino).mtime_ns == now
    for ino in (f, d):
        assert store.getattr(ino).ctime_ns == now
    # same-directory exchange of two files
    g = new_file(store, b"g", a)
    store.rename(a, b"f", a, b"g", RENAME_EXCHANGE)
    assert store.lookup(a, b"f").ino == g
    assert store.lookup(a, b"g").ino == d
    with pytest.raises(NotFound):
        store.rename(a, b"f", a, b"missing", RENAME_EXCHANGE)
    with pytest.raises(NotFound):
        store.rename(a, b"missing", a, b"f", RENAME_EXCHANGE)
    check(store, chunks)


def test_rename_exchange_too_many_links(store: MetaStore, chunks: set[bytes]) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT, b"b", 0o755, 0, 0).ino
    new_file(store, b"f", a)
    store.mkdir(b, b"d", 0o755, 0, 0)
    store._db.execute("UPDATE inodes SET nlink = ? WHERE ino = ?", (LINK_MAX, a))
    with pytest.raises(TooManyLinks):
        store.rename(a, b"f", b, b"d", RENAME_EXCHANGE)
    with pytest.raises(TooManyLinks):
        store.rename(b, b"d", a, b"new", 0)
    store._db.execute("UPDATE inodes SET nlink = 2 WHERE ino = ?", (a,))
    check(store, chunks)


def test_rename_into_own_subtree(store: MetaStore, chunks: set[bytes]) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(a, b"b", 0o755, 0, 0).ino
    c = store.mkdir(b, b"c", 0o755, 0, 0).ino
    with pytest.raises(InvalidArgument):
        store.rename(ROOT, b"a", c, b"x", 0)
    with pytest.raises(InvalidArgument):
        store.rename(ROOT, b"a", a, b"x", 0)  # into itself
    with pytest.raises(InvalidArgument):
        store.rename(ROOT, b"a", c, b"x", RENAME_NOREPLACE)
    # exchange: the target directory may not land inside itself either
    new_file(store, b"f", c)
    with pytest.raises(InvalidArgument):
        store.rename(c, b"f", ROOT, b"a", RENAME_EXCHANGE)
    with pytest.raises(InvalidArgument):
        store.rename(ROOT, b"a", c, b"f", RENAME_EXCHANGE)
    # a target that is an ancestor of the source is a non-empty directory
    with pytest.raises(NotEmpty):
        store.rename(b, b"c", ROOT, b"a", 0)
    # moving a subtree sideways or upwards is fine
    store.rename(b, b"c", ROOT, b"c", 0)
    assert store.lookup(ROOT, b"c").ino == c
    check(store, chunks)


def test_rename_flags(store: MetaStore, chunks: set[bytes]) -> None:
    new_file(store, b"a")
    with pytest.raises(NotSupported):
        store.rename(ROOT, b"a", ROOT, b"b", RENAME_WHITEOUT)
    with pytest.raises(InvalidArgument):
        store.rename(ROOT, b"a", ROOT, b"b", RENAME_NOREPLACE | RENAME_EXCHANGE)
    with pytest.raises(InvalidArgument):
        store.rename(ROOT, b"a", ROOT, b"b", 0x100)
    assert names(store, ROOT) == [b"a"]
    check(store, chunks)


def test_rename_into_removed_directory(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    new_file(store, b"f")
    store.open(d, SESSION)
    store.rmdir(ROOT, b"d")
    with pytest.raises(NotFound):
        store.rename(ROOT, b"f", d, b"f", 0)
    store.release(d, SESSION)
    check(store, chunks)


# -- setattr ---------------------------------------------------------------------------------


def test_setattr_mode_owner_times(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    attr = store.setattr(f, mode=stat.S_IFDIR | 0o4755)  # file-type bits are ignored
    assert attr.mode == stat.S_IFREG | 0o4755
    assert attr.ctime_ns == clock.t
    attr = store.setattr(f, uid=5)
    assert attr.uid == 5
    assert attr.mode == stat.S_IFREG | 0o755
    store.setattr(f, mode=0o2750)
    assert store.setattr(f, gid=9).mode == stat.S_IFREG | 0o750  # setgid with group-exec cleared
    store.setattr(f, mode=0o2740)
    assert store.setattr(f, gid=9).mode == stat.S_IFREG | 0o2740  # mandatory-locking bit stays
    assert store.setattr(f, uid=1, mode=0o4755).mode == stat.S_IFREG | 0o4755  # explicit mode wins
    d = store.mkdir(ROOT, b"d", 0o2755, 0, 0).ino
    assert store.setattr(d, uid=3, gid=4).mode == stat.S_IFDIR | 0o2755  # directories keep it
    attr = store.setattr(f, atime_ns=11, mtime_ns=22)
    assert (attr.atime_ns, attr.mtime_ns, attr.ctime_ns) == (11, 22, clock.t)
    before = store.getattr(f)
    attr = store.setattr(f)  # nothing but ctime
    assert attr._replace(ctime_ns=0) == before._replace(ctime_ns=0)
    assert attr.ctime_ns == clock.t
    with pytest.raises(NotFound):
        store.setattr(999, mode=0o644)
    check(store, chunks)


def test_setattr_size_errors(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    link = store.symlink(ROOT, b"l", b"t", 0, 0).ino
    fifo = store.mknod(ROOT, b"p", stat.S_IFIFO | 0o644, 0, 0, 0).ino
    f = new_file(store, b"f")
    with pytest.raises(IsADirectory):
        store.setattr(d, size=0)
    with pytest.raises(InvalidArgument):
        store.setattr(link, size=0)
    with pytest.raises(InvalidArgument):
        store.setattr(fifo, size=0)
    with pytest.raises(InvalidArgument):
        store.setattr(f, size=-1)
    check(store, chunks)


def test_setattr_size_times(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    attr = store.setattr(f, size=100)
    assert attr.size == 100
    assert attr.mtime_ns == attr.ctime_ns == clock.t
    attr = store.setattr(f, size=100, mtime_ns=7)  # explicit mtime wins
    assert attr.mtime_ns == 7
    attr = store.setattr(f, size=100)  # unchanged size: only ctime
    assert attr.mtime_ns == 7
    assert attr.ctime_ns == clock.t
    attr = store.setattr(f, size=50, mtime_ns=9)
    assert (attr.size, attr.mtime_ns) == (50, 9)
    check(store, chunks)


def test_truncate_trims_blocks(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    refs = [ref(i, cid(i), BS, 1000 + i) for i in range(4)]
    attr = write(store, chunks, f, 4 * BS, refs)
    assert attr.blocks == -(-(4000 + 6) // 512)
    attr = store.setattr(f, size=BS + 10)  # block 1 straddles, 2 and 3 go
    assert attr.size == BS + 10
    blocks = store.read_map(f).blocks
    assert blocks == [BlockRef(0, cid(0), BS, 1000), BlockRef(1, cid(1), 10, 1001)]
    assert refcount(store, cid(2)) == refcount(store, cid(3)) == 0
    assert attr.blocks == -(-2001 // 512)
    store.setattr(f, size=BS)  # exactly at a boundary: block 1 dropped whole
    assert [b.index for b in store.read_map(f).blocks] == [0]
    assert refcount(store, cid(1)) == 0
    attr = store.setattr(f, size=10 * BS)  # grow: holes, block 0 untouched
    assert attr.size == 10 * BS
    assert store.read_map(f).blocks == [BlockRef(0, cid(0), BS, 1000)]
    attr = store.setattr(f, size=0)
    assert store.read_map(f).blocks == []
    assert attr.blocks == 0
    assert refcount(store, cid(0)) == 0
    check(store, chunks)


def test_truncate_trims_inline(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    store.commit_write(
        f, size=0, mtime_ns=1, blocks=[], inline=b"0123456789", chunk_exists=chunks.__contains__
    )
    attr = store.setattr(f, size=4)
    fm = store.read_map(f)
    assert fm.inline == b"0123"
    assert attr.size == 4
    assert attr.blocks == 1
    store.setattr(f, size=40)
    assert store.read_map(f).inline == b"0123"  # the tail reads as zeros
    attr = store.setattr(f, size=0)
    assert store.read_map(f).inline is None
    assert attr.blocks == 0
    check(store, chunks)


# -- open / release / sessions ----------------------------------------------------------------


def test_open_release_counts(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    store.open(f, "a")
    store.open(f, "a")
    store.open(f, "b")
    assert store._db.execute("SELECT session, count FROM opens ORDER BY session").fetchall() == [
        ("a", 2),
        ("b", 1),
    ]
    store.release(f, "a")
    store.release(f, "a")
    store.release(f, "a")  # one too many: ignored
    store.release(f, "nobody")
    store.release(999, "a")  # never NotFound
    assert store._db.execute("SELECT session, count FROM opens").fetchall() == [("b", 1)]
    with pytest.raises(NotFound):
        store.open(999, "a")
    store.release(f, "b")
    check(store, chunks)


def test_open_truncate(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(2))])
    attr = store.open(f, SESSION, truncate=True)
    assert attr.size == 0
    assert attr.blocks == 0
    assert attr.mtime_ns == attr.ctime_ns == clock.t
    assert store.read_map(f).blocks == []
    assert refcount(store, cid(1)) == 0
    store.release(f, SESSION)
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    with pytest.raises(IsADirectory):
        store.open(d, SESSION, truncate=True)
    fifo = store.mknod(ROOT, b"p", stat.S_IFIFO | 0o644, 0, 0, 0).ino
    store.open(fifo, SESSION, truncate=True)  # O_TRUNC is ignored on fifos
    store.release(fifo, SESSION)
    check(store, chunks)


def test_open_relatime(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    attr = store.open(f, SESSION, read=True)  # atime == mtime: updated
    assert attr.atime_ns == clock.t
    atime = attr.atime_ns
    assert store.open(f, SESSION, read=True).atime_ns == atime  # atime newer than m/ctime: kept
    assert store.open(f, SESSION).atime_ns == atime  # not a read
    clock.t += DAY_NS
    assert store.open(f, SESSION, read=True).atime_ns == clock.t  # older than a day
    atime = clock.t
    store.setattr(f, mode=0o600)  # ctime moves past atime
    assert store.open(f, SESSION, read=True).atime_ns > atime
    for _ in range(5):
        store.release(f, SESSION)
    check(store, chunks)


def test_lookup_versioned_reports_absence_and_dir_ctime(store: MetaStore, chunks: set[bytes]) -> None:
    attr, ctime = store.lookup_versioned(ROOT, b"nope")
    assert attr is None
    assert ctime == store.getattr(ROOT).ctime_ns
    f = new_file(store, b"f")
    attr, ctime2 = store.lookup_versioned(ROOT, b"f")
    assert attr is not None
    assert attr.ino == f
    assert ctime2 > ctime  # adding a name moved the directory's ctime
    with pytest.raises(NotADirectory):
        store.lookup_versioned(f, b"x")
    check(store, chunks)


def test_open_events_batch(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    """A mount's batched read-only opens and releases, applied in order in one transaction."""
    f = new_file(store, b"f")
    g = new_file(store, b"g")
    store.open_events([["open", f], ["open", g], ["release", g], ["open", 999]], "m")
    assert store._db.execute("SELECT ino, count FROM opens WHERE session = 'm'").fetchall() == [(f, 1)]
    assert store.getattr(f).atime_ns == store.getattr(g).atime_ns  # relatime applied to both opens
    store.unlink(ROOT, b"f")
    assert store.getattr(f).nlink == 0  # registered: survives its last name
    store.open_events([["release", f]], "m")
    with pytest.raises(NotFound):
        store.getattr(f)
    with pytest.raises(InvalidArgument):
        store.open_events([["bogus", g]], "m")
    assert store.getattr(g).nlink == 1  # the failed batch changed nothing
    check(store, chunks)


def test_unlink_while_open(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f", keep_open=True)
    write(store, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(2))])
    store.setxattr(f, b"user.x", b"y", 0)
    store.unlink(ROOT, b"f")
    attr = store.getattr(f)
    assert attr.nlink == 0
    assert attr.size == 2 * BS
    assert len(store.read_map(f).blocks) == 2
    write(store, chunks, f, 3 * BS, [ref(2, cid(3))])  # still writable
    assert store.getxattr(f, b"user.x") == b"y"
    assert refcount(store, cid(1)) == 1
    check(store, chunks)  # an unlinked, open inode is not a leak
    store.open(f, SESSION)  # reopen by handle (e.g. /proc/self/fd)
    store.release(f, SESSION)
    assert store.getattr(f).nlink == 0
    store.release(f, SESSION)
    with pytest.raises(NotFound):
        store.getattr(f)
    with pytest.raises(NotFound):
        store.read_map(f)
    assert [refcount(store, cid(i)) for i in (1, 2, 3)] == [0, 0, 0]
    assert store._db.execute("SELECT COUNT(*) FROM xattrs").fetchone()[0] == 0
    check(store, chunks)


def test_session_expiry(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f", keep_open=True)
    g = new_file(store, b"g")
    store.open(g, "other")
    write(store, chunks, f, BS, [ref(0, cid(1))])
    store.unlink(ROOT, b"f")
    store.unlink(ROOT, b"g")
    t0 = clock.t
    clock.t += 10**10
    store.session_heartbeat("other")
    assert store.expire_sessions(t0 - 10**9) == 0  # nobody is that old
    assert store.expire_sessions(t0 + 1) == 1  # SESSION expires, "other" does not
    with pytest.raises(NotFound):
        store.getattr(f)
    assert refcount(store, cid(1)) == 0
    assert store.getattr(g).nlink == 0  # still open by "other"
    assert store._db.execute("SELECT id FROM sessions").fetchall() == [("other",)]
    assert store.expire_sessions(clock.t + 1) == 1
    with pytest.raises(NotFound):
        store.getattr(g)
    assert store.expire_sessions(clock.t + 1) == 0
    check(store, chunks)


def test_session_heartbeat_refreshes(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    store.session_heartbeat("s")
    first = clock.t
    store.session_heartbeat("s")
    assert store._db.execute("SELECT last_seen_ns FROM sessions").fetchone()[0] == clock.t > first
    # create/open refresh too, coarsely (at most once a second)
    clock.t += 2 * 10**9
    new_file(store, b"f", keep_open=True)
    seen = store._db.execute("SELECT last_seen_ns FROM sessions WHERE id = ?", (SESSION,)).fetchone()[0]
    assert seen > first
    store.release(store.lookup(ROOT, b"f").ino, SESSION)
    check(store, chunks)


# -- xattrs ----------------------------------------------------------------------------------


def test_xattrs(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    link = store.symlink(ROOT, b"l", b"t", 0, 0).ino
    for ino in (f, d, link):
        store.setxattr(ino, b"user.b", b"2", 0)
        assert store.getattr(ino).ctime_ns == clock.t
        store.setxattr(ino, b"user.a", b"", 0)
        assert store.getxattr(ino, b"user.b") == b"2"
        assert store.getxattr(ino, b"user.a") == b""
        assert store.listxattr(ino) == [b"user.a", b"user.b"]
    store.setxattr(f, b"user.b", b"3", XATTR_REPLACE)
    assert store.getxattr(f, b"user.b") == b"3"
    with pytest.raises(Exists):
        store.setxattr(f, b"user.b", b"4", XATTR_CREATE)
    with pytest.raises(NoAttribute):
        store.setxattr(f, b"user.c", b"4", XATTR_REPLACE)
    store.setxattr(f, b"user.c", b"4", XATTR_CREATE)
    store.removexattr(f, b"user.c")
    assert store.getattr(f).ctime_ns == clock.t
    with pytest.raises(NoAttribute):
        store.removexattr(f, b"user.c")
    with pytest.raises(NoAttribute):
        store.getxattr(f, b"user.c")
    with pytest.raises(NotFound):
        store.getxattr(999, b"user.a")
    with pytest.raises(NotFound):
        store.listxattr(999)
    with pytest.raises(NotFound):
        store.setxattr(999, b"user.a", b"", 0)
    with pytest.raises(NotFound):
        store.removexattr(999, b"user.a")
    check(store, chunks)


def test_xattr_limits(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    store.setxattr(f, b"n" * 255, b"v" * XATTR_SIZE_MAX, 0)
    assert len(store.getxattr(f, b"n" * 255)) == XATTR_SIZE_MAX
    with pytest.raises(NameTooLong):
        store.setxattr(f, b"n" * 256, b"v", 0)
    with pytest.raises(NameTooLong):
        store.getxattr(f, b"n" * 256)
    with pytest.raises(RangeError):
        store.setxattr(f, b"user.big", b"v" * (XATTR_SIZE_MAX + 1), 0)
    with pytest.raises(RangeError):
        store.setxattr(f, b"", b"v", 0)
    with pytest.raises(InvalidArgument):
        store.setxattr(f, b"user.x", b"v", 8)
    with pytest.raises(Exists):
        store.setxattr(f, b"n" * 255, b"v", XATTR_CREATE | XATTR_REPLACE)
    with pytest.raises(NoAttribute):
        store.setxattr(f, b"user.new", b"v", XATTR_CREATE | XATTR_REPLACE)
    check(store, chunks)


# -- data: commit_write / read_map ------------------------------------------------------------


def test_read_map_of_new_file(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    fm = store.read_map(f)
    assert fm.inline is None
    assert fm.blocks == []
    assert fm.attr == store.getattr(f)
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    with pytest.raises(IsADirectory):
        store.read_map(d)
    with pytest.raises(InvalidArgument):
        store.read_map(store.symlink(ROOT, b"l", b"t", 0, 0).ino)
    with pytest.raises(NotFound):
        store.read_map(999)
    check(store, chunks)


def test_commit_write_blocks(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    attr = write(store, chunks, f, BS + 100, [ref(1, cid(2), 100, 300), ref(0, cid(1), BS, 900)], mtime=42)
    assert attr.size == BS + 100
    assert attr.mtime_ns == attr.ctime_ns == 42
    assert attr.blocks == -(-1200 // 512)
    fm = store.read_map(f)
    assert fm.inline is None
    assert fm.blocks == [BlockRef(0, cid(1), BS, 900), BlockRef(1, cid(2), 100, 300)]
    assert fm.attr == attr
    # overwrite block 0: old chunk decref'd, new one incref'd
    attr = write(store, chunks, f, BS + 100, [ref(0, cid(3), BS, 500)])
    assert refcount(store, cid(1)) == 0
    assert refcount(store, cid(3)) == 1
    assert attr.blocks == -(-800 // 512)
    # rewriting the same chunk at the same index keeps the refcount
    write(store, chunks, f, BS + 100, [ref(0, cid(3), BS, 500)])
    assert refcount(store, cid(3)) == 1
    # an empty chunk id punches a hole
    attr = write(store, chunks, f, BS + 100, [ref(0, b"")])
    assert [b.index for b in store.read_map(f).blocks] == [1]
    assert refcount(store, cid(3)) == 0
    # size drops entries at or beyond it
    write(store, chunks, f, 3 * BS, [ref(2, cid(4))])
    attr = write(store, chunks, f, BS, [])
    assert store.read_map(f).blocks == []
    assert attr.size == BS
    assert refcount(store, cid(2)) == refcount(store, cid(4)) == 0
    check(store, chunks)


def test_commit_write_dedup_refcounts(store: MetaStore, chunks: set[bytes]) -> None:
    a = new_file(store, b"a")
    b = new_file(store, b"b")
    write(store, chunks, a, BS, [ref(0, cid(7))])
    write(store, chunks, b, 2 * BS, [ref(0, cid(7)), ref(1, cid(7))])
    assert refcount(store, cid(7)) == 3
    assert store.counts()["chunk_refs"] == 3
    assert store.counts()["chunks"] == 1
    store.unlink(ROOT, b"b")
    assert refcount(store, cid(7)) == 1
    store.unlink(ROOT, b"a")
    assert refcount(store, cid(7)) == 0
    check(store, chunks)


def test_commit_write_swapping_chunks_between_indices(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(2))])
    chunks.clear()  # nothing needs checking: both chunks stay referenced throughout
    attr = store.commit_write(
        f,
        size=2 * BS,
        mtime_ns=1,
        blocks=[ref(0, cid(2)), ref(1, cid(1))],
        inline=None,
        chunk_exists=lambda c: False,
    )
    assert [b.chunk_id for b in store.read_map(f).blocks] == [cid(2), cid(1)]
    assert refcount(store, cid(1)) == refcount(store, cid(2)) == 1
    assert attr.size == 2 * BS
    chunks.update({cid(1), cid(2)})
    check(store, chunks)


def test_commit_write_chunk_missing_rolls_back(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, BS, [ref(0, cid(1))])
    before = (store.read_map(f), store.referenced_chunks())
    with pytest.raises(ChunkMissing):
        store.commit_write(
            f,
            size=2 * BS,
            mtime_ns=9,
            blocks=[ref(0, cid(5)), ref(1, cid(6))],
            inline=None,
            chunk_exists=lambda c: c == cid(5),
        )
    assert (store.read_map(f), store.referenced_chunks()) == before
    check(store, chunks)


def test_commit_write_zero_refcount_chunk_must_exist(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, BS, [ref(0, cid(1))])
    write(store, chunks, f, BS, [ref(0, b"")])
    assert refcount(store, cid(1)) == 0
    chunks.discard(cid(1))  # collected behind our back
    with pytest.raises(ChunkMissing):
        store.commit_write(
            f, size=BS, mtime_ns=1, blocks=[ref(0, cid(1))], inline=None, chunk_exists=chunks.__contains__
        )
    chunks.add(cid(1))
    write(store, chunks, f, BS, [ref(0, cid(1))])
    assert refcount(store, cid(1)) == 1
    assert store._db.execute("SELECT zero_since_ns FROM chunks").fetchone()[0] is None
    check(store, chunks)


def test_commit_write_inline(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(2))])
    attr = store.commit_write(
        f, size=999, mtime_ns=3, blocks=[], inline=b"hello", chunk_exists=chunks.__contains__
    )
    assert attr.size == 5
    assert attr.blocks == 1
    assert attr.mtime_ns == 3
    fm = store.read_map(f)
    assert fm.inline == b"hello"
    assert fm.blocks == []
    assert refcount(store, cid(1)) == refcount(store, cid(2)) == 0
    # going back to blocks drops the inline data
    attr = write(store, chunks, f, BS, [ref(0, cid(3), BS, 512)])
    assert store.read_map(f).inline is None
    assert attr.blocks == 1
    empty = store.commit_write(f, size=0, mtime_ns=4, blocks=[], inline=b"", chunk_exists=chunks.__contains__)
    assert empty.size == 0
    assert store.read_map(f).inline == b""
    with pytest.raises(InvalidArgument):
        store.commit_write(
            f, size=0, mtime_ns=4, blocks=[], inline=b"x" * (BS + 1), chunk_exists=chunks.__contains__
        )
    with pytest.raises(InvalidArgument):
        store.commit_write(
            f, size=0, mtime_ns=4, blocks=[ref(0, cid(1))], inline=b"x", chunk_exists=chunks.__contains__
        )
    check(store, chunks)


def test_inline_limit_is_the_ceiling_not_a_daemon_setting(tmp_path: Path, chunks: set[bytes]) -> None:
    """Any daemon's mounts may write inline up to the fixed ceiling (daemons of one cluster may
    differ in [storage] inline_max, e.g. during a rolling upgrade); one byte more is refused,
    and a block size below the ceiling bounds it too."""
    store = open_meta(tmp_path / "big.db", block_size=1 << 20, now_ns=Clock())
    try:
        f = new_file(store, b"f")
        data = os.urandom(INLINE_LIMIT_BYTES)
        attr = store.commit_write(
            f, size=len(data), mtime_ns=4, blocks=[], inline=data, chunk_exists=chunks.__contains__
        )
        assert attr.size == INLINE_LIMIT_BYTES and store.read_map(f).inline == data
        with pytest.raises(InvalidArgument, match="exceeds 65536"):
            store.commit_write(
                f, size=0, mtime_ns=5, blocks=[], inline=data + b"x", chunk_exists=chunks.__contains__
            )
        check(store, chunks)
    finally:
        store.close()


def test_commit_write_errors(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    link = store.symlink(ROOT, b"l", b"t", 0, 0).ino
    with pytest.raises(NotFound):
        write(store, chunks, 999, 0, [])
    with pytest.raises(IsADirectory):
        write(store, chunks, d, 0, [])
    with pytest.raises(InvalidArgument):
        write(store, chunks, link, 0, [])
    with pytest.raises(InvalidArgument):
        write(store, chunks, f, -1, [])
    with pytest.raises(InvalidArgument):
        write(store, chunks, f, BS, [ref(-1, cid(1))])
    with pytest.raises(InvalidArgument):
        write(store, chunks, f, BS, [ref(0, cid(1), BS + 1)])
    with pytest.raises(InvalidArgument):
        store.commit_write(
            f,
            size=BS,
            mtime_ns=1,
            blocks=[BlockRef(0, "text", BS, 1)],  # type: ignore[arg-type]
            inline=None,
            chunk_exists=lambda c: True,
        )
    # wire-shaped lists are accepted too
    chunks.add(cid(1))
    store.commit_write(
        f,
        size=BS,
        mtime_ns=1,
        blocks=[[0, cid(1), BS, 10]],  # type: ignore[list-item]
        inline=None,
        chunk_exists=chunks.__contains__,
    )
    assert store.read_map(f).blocks == [BlockRef(0, cid(1), BS, 10)]
    check(store, chunks)


# -- maintenance -----------------------------------------------------------------------------


def test_gc_collect(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, 3 * BS, [ref(0, cid(1)), ref(1, cid(2)), ref(2, cid(3))])
    write(store, chunks, f, BS, [])  # cid(2), cid(3) drop to 0
    dropped_at = clock.t
    deleted: list[list[bytes]] = []

    def delete(ids: list[bytes]) -> None:
        deleted.append(list(ids))
        chunks.difference_update(ids)

    assert store.gc_collect(dropped_at, 10, delete) == []  # not old enough (strictly before cutoff)
    assert deleted == []
    assert store.gc_collect(dropped_at + 1, 1, delete) in ([cid(2)], [cid(3)])
    assert store.gc_collect(dropped_at + 1, 10, delete) in ([cid(2)], [cid(3)])
    assert sorted(sum(deleted, [])) == [cid(2), cid(3)]
    assert store.referenced_chunks() == {cid(1): 1}
    assert store.gc_collect(clock.t + 10, 10, delete) == []
    assert store.counts()["unreferenced_chunks"] == 0
    check(store, chunks)


def test_gc_collect_delete_failure_keeps_rows(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, BS, [ref(0, cid(1))])
    store.unlink(ROOT, b"f")

    def broken(ids: list[bytes]) -> None:
        raise OSError(5, "disk on fire")

    with pytest.raises(DfsError):
        store.gc_collect(clock.t + 1, 10, broken)
    assert store.referenced_chunks() == {cid(1): 0}
    assert store.gc_collect(clock.t + 1, 10, lambda ids: chunks.difference_update(ids)) == [cid(1)]
    check(store, chunks)


def test_counts(store: MetaStore, chunks: set[bytes]) -> None:
    store.mkdir(ROOT, b"d", 0o755, 0, 0)
    a = new_file(store, b"a")
    b = new_file(store, b"b")
    store.symlink(ROOT, b"l", b"target", 0, 0)
    write(store, chunks, a, 2 * BS, [ref(0, cid(1), BS, 100), ref(1, cid(2), BS, 200)])
    write(store, chunks, b, 100, [ref(0, cid(1), 100, 100)])
    write(store, chunks, b, 100, [ref(0, cid(3), 100, 50)])  # cid(1) back to 1 ref
    write(store, chunks, a, BS, [])  # cid(2) unreferenced
    store.open(a, SESSION)
    store.open(a, "other-session")
    assert store.counts() == {
        "inodes": 5,
        "files": 2,
        "dirs": 2,
        "logical_bytes": BS + 100,
        "chunks": 3,
        "chunk_refs": 2,
        "stored_bytes": 350,
        "unreferenced_chunks": 1,
        "open_files": 2,
    }
    store.release(a, SESSION)
    store.release(a, "other-session")
    check(store, chunks)


def test_oplog_rows_and_trim(tmp_path: Path, store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    f = new_file(store, b"f", d)
    store.rename(d, b"f", ROOT, b"g", 0)
    store.unlink(ROOT, b"g")
    assert oplog_ops(store) == ["mkdir", "create", "release", "rename", "unlink"]
    ts, args = store._db.execute("SELECT ts_ns, args FROM oplog WHERE op = 'rename'").fetchone()
    assert msgpack.unpackb(args) == [d, b"f", ROOT, b"g", 0]
    assert ts > 0
    with pytest.raises(NotFound):
        store.unlink(ROOT, b"g")  # failed operations leave no oplog row
    assert len(oplog_ops(store)) == 5
    seqs = [r[0] for r in store._db.execute("SELECT seq FROM oplog ORDER BY seq")]
    assert store.oplog_trim(2) == 3
    assert [r[0] for r in store._db.execute("SELECT seq FROM oplog ORDER BY seq")] == seqs[-2:]
    assert store.oplog_trim(10) == 0
    assert store.oplog_trim(0) == 2
    assert store.oplog_trim(0) == 0
    store.session_heartbeat("x")  # sequence numbers continue, never reused
    assert store._db.execute("SELECT seq FROM oplog").fetchall() == [(seqs[-1] + 1,)]
    assert f > d
    check(store, chunks)


def test_sync_is_cheap_when_idle(
    store: MetaStore, chunks: set[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    only_sqlite("fsyncs SQLite's WAL")
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    new_file(store, b"f")
    store.sync()
    first = len(calls)
    assert first >= 1
    store.sync()
    assert len(calls) == first  # nothing changed
    store.getattr(ROOT)
    store.sync()
    assert len(calls) == first  # reads change nothing
    store.mkdir(ROOT, b"d", 0o755, 0, 0)
    store.sync()
    assert len(calls) == first + 1  # just the WAL this time
    check(store, chunks)


def test_disk_full_maps_to_no_space(store: MetaStore, chunks: set[bytes]) -> None:
    only_sqlite("fills the database with max_page_count")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(NoSpace):  # noqa: PT012 - the loop is how we fill the database
        for i in range(10_000):
            store.mkdir(ROOT, b"%d-" % i + b"x" * 200, 0o755, 0, 0)
    store._db.execute("PRAGMA max_page_count = 1073741823")
    store.mkdir(ROOT, b"after", 0o755, 0, 0)
    check(store, chunks)


def test_unexpected_sqlite_errors_become_internal_error(store: MetaStore) -> None:
    store._db.execute("DROP TABLE oplog")
    with pytest.raises(InternalError, match="mkdir"):
        store.mkdir(ROOT, b"d", 0o755, 0, 0)
    with pytest.raises(NotFound):
        store.lookup(ROOT, b"d")  # rolled back
    check(store, set())


# -- fsck ------------------------------------------------------------------------------------


def repair(store: MetaStore, chunks: set[bytes]) -> list[str]:
    found = store.fsck(chunks.__contains__, repair=False)
    assert found, "expected fsck to find a problem"
    repaired = store.fsck(chunks.__contains__, repair=True)
    # Repairs run in order, so later findings may differ (e.g. no nlink error once a dentry is fixed).
    assert repaired[0] == found[0]
    check(store, chunks)
    return found


def test_fsck_clean_on_busy_store(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    f = new_file(store, b"f", d, keep_open=True)
    write(store, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(1))])
    store.link(f, ROOT, b"f2")
    store.symlink(d, b"l", b"x", 0, 0)
    store.unlink(d, b"f")
    assert store.fsck(chunks.__contains__, repair=True) == []
    check(store, chunks)
    store.release(f, SESSION)


def test_fsck_dangling_dentry(store: MetaStore, chunks: set[bytes]) -> None:
    store._db.execute(
        "INSERT INTO dentries (parent, name, ino, is_dir) VALUES (?, ?, ?, 0)", (ROOT, b"ghost", 999)
    )
    found = repair(store, chunks)
    assert any("missing inode 999" in line for line in found)
    assert names(store, ROOT) == []


def test_fsck_dentry_with_bad_parent(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    g = new_file(store, b"g")
    store._db.execute("UPDATE dentries SET parent = ? WHERE ino = ?", (f, g))  # a file as parent
    found = repair(store, chunks)
    assert any("non-directory parent" in line for line in found)
    assert store.lookup(store.lookup(ROOT, b"lost+found").ino, b"#%d" % g).ino == g


def test_fsck_wrong_nlink(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    f = new_file(store, b"f", d)
    store._db.execute("UPDATE inodes SET nlink = 7 WHERE ino IN (?, ?)", (d, f))
    store._db.execute("UPDATE inodes SET nlink = 9 WHERE ino = ?", (ROOT,))
    found = repair(store, chunks)
    assert len([line for line in found if "nlink" in line]) == 3
    assert (store.getattr(ROOT).nlink, store.getattr(d).nlink, store.getattr(f).nlink) == (3, 2, 1)


def test_fsck_orphan_inode_goes_to_lost_found(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    store._db.execute("DELETE FROM dentries WHERE ino = ?", (f,))
    found = repair(store, chunks)
    assert any(f"inode {f} has nlink 1" in line for line in found)
    lost = store.lookup(ROOT, b"lost+found")
    assert lost.mode == stat.S_IFDIR | 0o700
    assert store.lookup(lost.ino, b"#%d" % f).ino == f


def test_fsck_leaked_inode_is_purged(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f", keep_open=True)
    write(store, chunks, f, BS, [ref(0, cid(1))])
    store.unlink(ROOT, b"f")
    store._db.execute("DELETE FROM opens")  # the open vanished without a release
    found = repair(store, chunks)
    assert any("leaked" in line for line in found)
    with pytest.raises(NotFound):
        store.getattr(f)
    assert refcount(store, cid(1)) == 0


def test_fsck_open_by_unknown_session(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f", keep_open=True)
    store.unlink(ROOT, b"f")
    store._db.execute("DELETE FROM sessions")
    found = repair(store, chunks)
    assert any("unknown session" in line for line in found)
    with pytest.raises(NotFound):
        store.getattr(f)  # with the bogus open gone it was a leak, and got purged


def test_fsck_refcount_mismatch(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(2))])
    write(store, chunks, f, BS, [])
    store._db.execute("UPDATE chunks SET refcount = 5 WHERE chunk_id = ?", (cid(1),))
    store._db.execute("UPDATE chunks SET zero_since_ns = NULL WHERE chunk_id = ?", (cid(2),))
    found = repair(store, chunks)
    assert any("refcount 5, but 1" in line for line in found)
    assert any("not marked unreferenced" in line for line in found)
    assert store.referenced_chunks() == {cid(1): 1, cid(2): 0}


def test_fsck_block_without_chunk_row(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(2))])
    store._db.execute("DELETE FROM chunks")
    chunks.discard(cid(2))  # cid(1) is still stored, cid(2) is gone
    found = repair(store, chunks)
    assert any("no chunks row" in line for line in found)
    assert store.referenced_chunks() == {cid(1): 1}
    assert [b.index for b in store.read_map(f).blocks] == [0]


def test_fsck_dangling_block_becomes_hole(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"dir", 0o755, 0, 0).ino
    f = new_file(store, b"file", d)
    write(store, chunks, f, 3 * BS, [ref(0, cid(1)), ref(1, cid(2)), ref(2, cid(1))])
    chunks.discard(cid(1))
    found = repair(store, chunks)
    assert any("/dir/file" in line and "2 blocks name missing chunks" in line for line in found)
    assert [b.index for b in store.read_map(f).blocks] == [1]
    assert store.getattr(f).size == 3 * BS
    assert refcount(store, cid(1)) == 0


def test_fsck_block_beyond_size_and_bad_length(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, 2 * BS, [ref(0, cid(1)), ref(1, cid(2))])
    store._db.execute("UPDATE inodes SET size = 10 WHERE ino = ?", (f,))
    store._db.execute("UPDATE blocks SET length = ? WHERE idx = 0", (BS * 3,))
    found = repair(store, chunks)
    assert any("block 1 lies beyond size 10" in line for line in found)
    assert any("invalid length" in line for line in found)
    assert store.read_map(f).blocks == [BlockRef(0, cid(1), BS, 1000)]
    assert refcount(store, cid(2)) == 0


def test_fsck_inline_problems(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    store.commit_write(f, size=0, mtime_ns=1, blocks=[], inline=b"abcdef", chunk_exists=chunks.__contains__)
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    store._db.execute("UPDATE inodes SET size = 3 WHERE ino = ?", (f,))
    store._db.execute("UPDATE inodes SET inline = X'00', stored = 1 WHERE ino = ?", (d,))
    found = repair(store, chunks)
    assert any("exceed size 3" in line for line in found)
    assert any("non-regular" in line for line in found)
    assert store.read_map(f).inline == b"abc"
    assert store.getattr(f).blocks == 1


def test_fsck_stored_total_and_stray_rows(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, BS, [ref(0, cid(1))])
    store._db.execute("UPDATE inodes SET stored = 123456 WHERE ino = ?", (f,))
    store._db.execute("INSERT INTO xattrs VALUES (4242, X'61', X'62')")
    store._db.execute("INSERT INTO blocks VALUES (4242, 0, ?, 10, 10)", (cid(1),))
    store._db.execute("UPDATE chunks SET refcount = 2")
    found = repair(store, chunks)
    assert any("stored bytes 123456" in line for line in found)
    assert any("xattrs of missing inode 4242" in line for line in found)
    assert any("inode 4242, which is missing" in line for line in found)
    assert store.getattr(f).blocks == 2
    assert refcount(store, cid(1)) == 1


def test_fsck_cycle(store: MetaStore, chunks: set[bytes]) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(a, b"b", 0o755, 0, 0).ino
    new_file(store, b"f", b)
    store._db.execute("UPDATE dentries SET parent = ? WHERE ino = ?", (b, a))  # a inside b inside a
    found = repair(store, chunks)
    assert any("cycle" in line for line in found)
    lost = store.lookup(ROOT, b"lost+found").ino
    entry = store.readdir(lost, 0, 10)[0]
    assert entry.attr.ino in (a, b)
    assert store.getattr(a).nlink + store.getattr(b).nlink == 5


def test_fsck_directory_with_two_names_and_root_dentry(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    store._db.execute(
        "INSERT INTO dentries (parent, name, ino, is_dir) VALUES (?, ?, ?, 1)", (ROOT, b"d2", d)
    )
    store._db.execute(
        "INSERT INTO dentries (parent, name, ino, is_dir) VALUES (?, ?, ?, 1)", (d, b"up", ROOT)
    )
    found = repair(store, chunks)
    assert any("has 2 names" in line for line in found)
    assert any("names the root" in line for line in found)
    assert names(store, ROOT) == [b"d"]


def test_fsck_wrong_dentry_kind_flag(store: MetaStore, chunks: set[bytes]) -> None:
    store.mkdir(ROOT, b"d", 0o755, 0, 0)
    store._db.execute("UPDATE dentries SET is_dir = 0")
    found = repair(store, chunks)
    assert any("is_dir" in line for line in found)


def test_fsck_missing_root_is_recreated(store: MetaStore, chunks: set[bytes]) -> None:
    store._db.execute("DELETE FROM inodes WHERE ino = ?", (ROOT,))
    found = repair(store, chunks)
    assert found[0] == "root inode missing"
    assert store.getattr(ROOT).is_dir


def test_fsck_without_repair_changes_nothing(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    store._db.execute("UPDATE inodes SET nlink = 3 WHERE ino = ?", (f,))
    ops = oplog_ops(store)
    assert store.fsck(chunks.__contains__, repair=False) == store.fsck(chunks.__contains__, repair=False)
    assert store.getattr(f).nlink == 3
    assert oplog_ops(store) == ops
    store.fsck(chunks.__contains__, repair=True)
    assert oplog_ops(store) == [*ops, "fsck_repair"]
    check(store, chunks)


# -- model-based test ------------------------------------------------------------------------

NAMES = st.sampled_from([b"a", b"b"])  # few names: collisions (Exists, replace, NotEmpty) are the point
IDX = st.integers(0, 20)
CREATE = st.tuples(st.just("create"), IDX, NAMES)
MKDIR = st.tuples(st.just("mkdir"), IDX, NAMES)
RENAME = st.tuples(
    st.just("rename"), IDX, NAMES, IDX, NAMES, st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
)
# A small starting tree, so that short random sequences already hit non-trivial cases:
# directories /a /b /a/a /a/a/b and one file linked as /a/b and /a/a/a.
SETUP: list[tuple[Any, ...]] = [
    ("mkdir", 0, b"a"),
    ("mkdir", 0, b"b"),
    ("mkdir", 1, b"a"),
    ("create", 1, b"b"),
    ("link", 0, 3, b"a"),
    ("mkdir", 3, b"b"),
]
OPS = st.one_of(
    CREATE,
    MKDIR,
    MKDIR,
    RENAME,
    RENAME,
    RENAME,
    st.tuples(st.just("link"), IDX, IDX, NAMES),
    st.tuples(st.just("unlink"), IDX, NAMES),
    st.tuples(st.just("rmdir"), IDX, NAMES),
    st.tuples(st.just("open"), IDX),
    st.tuples(st.just("release"), IDX),
)


class Model:
    """The namespace as plain dicts, with the same error precedence as MetaStore."""

    def __init__(self) -> None:
        self.children: dict[int, dict[bytes, int]] = {ROOT: {}}  # directories only
        self.parent: dict[int, int] = {ROOT: ROOT}  # directories only
        self.links: Counter[int] = Counter()  # files: number of names
        self.opens: Counter[int] = Counter()
        self.purged: set[int] = set()

    def pick_dir(self, i: int) -> int:
        dirs = sorted(self.children)
        return dirs[i % len(dirs)]

    def pick_entry(self, i: int, name: bytes) -> tuple[int, bytes]:
        """Mostly an existing (directory, name); sometimes a random one, which may not exist."""
        entries = sorted((d, n) for d, names in self.children.items() for n in names)
        if not entries or i % 5 == 0:
            return self.pick_dir(i), name
        return entries[i % len(entries)]

    def files(self) -> list[int]:
        return sorted(set(self.links) | set(self.opens))

    def is_dir(self, ino: int) -> bool:
        return ino in self.children

    def nlink(self, ino: int) -> int:
        if self.is_dir(ino):
            return 2 + sum(self.is_dir(c) for c in self.children[ino].values())
        return self.links[ino]

    def maybe_purge(self, ino: int) -> None:
        if self.links[ino] == 0 and self.opens[ino] == 0:
            del self.links[ino]
            del self.opens[ino]
            self.purged.add(ino)

    def ancestor_or_self(self, anc: int, ino: int) -> bool:
        while True:
            if ino == anc:
                return True
            if ino == ROOT:
                return False
            ino = self.parent[ino]

    def drop_name(self, parent: int, name: bytes) -> None:
        ino = self.children[parent].pop(name)
        if self.is_dir(ino):
            del self.children[ino]
            del self.parent[ino]
            self.purged.add(ino)
        else:
            self.links[ino] -= 1
            self.maybe_purge(ino)

    def rename(self, p: int, n: bytes, q: int, m: bytes, flags: int) -> type[DfsError] | None:
        """Apply a rename to the model; return the error MetaStore must raise instead, if any."""
        src = self.children[p].get(n)
        if src is None:
            return NotFound
        dst = self.children[q].get(m)
        if flags & RENAME_NOREPLACE and dst is not None:
            return Exists
        if flags & RENAME_EXCHANGE:
            return self.exchange(p, n, q, m, src, dst)
        if dst == src:
            return None
        if self.is_dir(src) and p != q and self.ancestor_or_self(src, q):
            return InvalidArgument
        if dst is not None:
            if self.is_dir(src) and not self.is_dir(dst):
                return NotADirectory
            if self.is_dir(dst) and not self.is_dir(src):
                return IsADirectory
            if self.is_dir(dst) and self.children[dst]:
                return NotEmpty
            self.drop_name(q, m)
        del self.children[p][n]
        self.children[q][m] = src
        if self.is_dir(src):
            self.parent[src] = q
        return None

    def exchange(
        self, p: int, n: bytes, q: int, m: bytes, src: int, dst: int | None
    ) -> type[DfsError] | None:
        if dst is None:
            return NotFound
        if src == dst:
            return None
        if p != q and self.is_dir(src) and self.ancestor_or_self(src, q):
            return InvalidArgument
        if p != q and self.is_dir(dst) and self.ancestor_or_self(dst, p):
            return InvalidArgument
        self.children[p][n], self.children[q][m] = dst, src
        for ino, parent in ((dst, p), (src, q)):
            if self.is_dir(ino):
                self.parent[ino] = parent
        return None


def expect(error: type[DfsError] | None, fn: Callable[..., object], *args: object) -> None:
    event(f"{getattr(fn, '__name__', fn)}: {error.__name__ if error else 'ok'}")
    if error is None:
        fn(*args)
    else:
        with pytest.raises(error):
            fn(*args)


def op_create(store: MetaStore, model: Model, i: int, name: bytes) -> None:
    d = model.pick_dir(i)
    if name in model.children[d]:
        expect(Exists, store.create, d, name, 0o644, 0, 0, SESSION)
        return
    ino = store.create(d, name, 0o644, 0, 0, SESSION).ino
    model.children[d][name] = ino
    model.links[ino] += 1
    model.opens[ino] += 1


def op_mkdir(store: MetaStore, model: Model, i: int, name: bytes) -> None:
    d = model.pick_dir(i)
    if name in model.children[d]:
        expect(Exists, store.mkdir, d, name, 0o755, 0, 0)
        return
    ino = store.mkdir(d, name, 0o755, 0, 0).ino
    model.children[d][name] = ino
    model.children[ino] = {}
    model.parent[ino] = d


def op_link(store: MetaStore, model: Model, i: int, j: int, name: bytes) -> None:
    linked = sorted(f for f, n in model.links.items() if n > 0)
    if not linked:
        return
    f, d = linked[i % len(linked)], model.pick_dir(j)
    if name in model.children[d]:
        expect(Exists, store.link, f, d, name)
        return
    store.link(f, d, name)
    model.children[d][name] = f
    model.links[f] += 1


def op_unlink(store: MetaStore, model: Model, i: int, name: bytes) -> None:
    d, name = model.pick_entry(i, name)
    target = model.children[d].get(name)
    error = NotFound if target is None else IsADirectory if model.is_dir(target) else None
    expect(error, store.unlink, d, name)
    if error is None:
        model.drop_name(d, name)


def op_rmdir(store: MetaStore, model: Model, i: int, name: bytes) -> None:
    d, name = model.pick_entry(i, name)
    target = model.children[d].get(name)
    error: type[DfsError] | None = None
    if target is None:
        error = NotFound
    elif not model.is_dir(target):
        error = NotADirectory
    elif model.children[target]:
        error = NotEmpty
    expect(error, store.rmdir, d, name)
    if error is None:
        model.drop_name(d, name)


def op_rename(store: MetaStore, model: Model, i: int, n: bytes, j: int, m: bytes, flags: int) -> None:
    (p, n), q = model.pick_entry(i, n), model.pick_dir(j)
    expect(model.rename(p, n, q, m, flags), store.rename, p, n, q, m, flags)


def op_open(store: MetaStore, model: Model, i: int) -> None:
    files = model.files()
    if files:
        f = files[i % len(files)]
        store.open(f, SESSION)
        model.opens[f] += 1


def op_release(store: MetaStore, model: Model, i: int) -> None:
    files = model.files()
    if files:
        f = files[i % len(files)]
        store.release(f, SESSION)
        if model.opens[f] > 0:
            model.opens[f] -= 1
        model.maybe_purge(f)


OP_HANDLERS: dict[str, Callable[..., None]] = {
    "create": op_create,
    "mkdir": op_mkdir,
    "link": op_link,
    "unlink": op_unlink,
    "rmdir": op_rmdir,
    "rename": op_rename,
    "open": op_open,
    "release": op_release,
}


def compare(store: MetaStore, model: Model) -> None:
    for d, children in model.children.items():
        entries = store.readdir(d, 0, 1000)
        assert {e.name: e.attr.ino for e in entries} == children
        assert store.getattr(d).nlink == model.nlink(d)
    for f in model.files():
        assert store.getattr(f).nlink == model.nlink(f)
    for ino in model.purged:
        with pytest.raises(NotFound):
            store.getattr(ino)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=1, max_size=50))
def test_random_namespace_operations_match_model(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_meta(Path(tmp) / "meta.db", block_size=BS, now_ns=Clock())
        try:
            model = Model()
            for op in [*SETUP, *ops]:
                OP_HANDLERS[op[0]](store, model, *op[1:])
            compare(store, model)
            assert store.fsck(lambda c: True, repair=False) == []
        finally:
            store.close()
