"""Unit tests for MetaStore's object-store operations (S3 and admin API): resolve, list_dir,
put_object, make_dirs, remove_tree, remove_empty_parents, internal roots, snapshots, and the
volumes, nodes and S3-key tables."""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daemon.meta.objects
from daemon.meta import DIR_SIZE, INTERNAL_DIRS, MetaStore
from dfs.core.errors import (
    ChunkMissing,
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    PreconditionFailed,
    RangeError,
    TooManyLinks,
)
from dfs.core.namespace import RENAME_EXCHANGE, ROOT_INO, XATTR_SIZE_MAX, Attr, BlockRef
from tests.metastores import Clock, open_meta

# The whole module runs once per metadata engine (SQLite, PostgreSQL).
pytestmark = pytest.mark.usefixtures("meta_engine")
ROOT = ROOT_INO
BS = 4096
SESSION = "s1"


# -- helpers (the same shapes as tests/unit/test_metadata.py) ----------------------------------


def open_store(path: Path, clock: Clock) -> MetaStore:
    return open_meta(path / "meta.db", block_size=BS, now_ns=clock)


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


def new_file(store: MetaStore, name: bytes = b"f", parent: int = ROOT, *, keep_open: bool = False) -> int:
    ino = store.create(parent, name, 0o644, 1000, 1000, SESSION).ino
    if not keep_open:
        store.release(ino, SESSION)
    return ino


def write(store: MetaStore, chunks: set[bytes], ino: int, size: int, refs: list[BlockRef]) -> Attr:
    chunks.update(r.chunk_id for r in refs if r.chunk_id)
    return store.commit_write(
        ino, size=size, mtime_ns=5, blocks=refs, inline=None, chunk_exists=chunks.__contains__
    )


def names(store: MetaStore, ino: int) -> list[bytes]:
    return [e.name for e in store.readdir(ino, 0, 10_000)]


def refcount(store: MetaStore, chunk: bytes) -> int | None:
    return store.referenced_chunks().get(chunk)


def oplog(store: MetaStore) -> list[tuple[str, list[Any]]]:
    return [
        (op, msgpack.unpackb(args))
        for op, args in store._db.execute("SELECT op, args FROM oplog ORDER BY seq")
    ]


def oplog_ops(store: MetaStore) -> list[str]:
    return [op for op, _ in oplog(store)]


def put(
    store: MetaStore,
    chunks: set[bytes],
    path: bytes,
    *,
    parent: int = ROOT,
    size: int | None = None,
    refs: tuple[BlockRef, ...] = (),
    inline: bytes | None = None,
    xattrs: dict[bytes, bytes] | None = None,
    **kwargs: Any,
) -> Attr:
    """put_object of ``path`` (components split on '/'), making its chunks stored first."""
    *dirs, name = path.split(b"/")
    chunks.update(r.chunk_id for r in refs if r.chunk_id)
    if size is None:
        size = len(inline) if inline is not None else len(refs) * BS
    return store.put_object(
        parent,
        dirs,
        name,
        mode=0o644,
        uid=1000,
        gid=1000,
        size=size,
        mtime_ns=7,
        blocks=list(refs),
        inline=inline,
        xattrs=xattrs or {},
        chunk_exists=chunks.__contains__,
        **kwargs,
    )


def sort_key(entry_name: bytes, is_dir: bool) -> bytes:
    return entry_name + b"/" if is_dir else entry_name


# -- resolve ------------------------------------------------------------------------------------


def test_resolve(store: MetaStore, chunks: set[bytes]) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(a, b"b", 0o755, 0, 0).ino
    f = new_file(store, b"f", b)
    assert store.resolve(ROOT, []) == store.getattr(ROOT)
    assert store.resolve(ROOT, [b"a", b"b", b"f"]) == store.getattr(f)
    assert store.resolve(a, [b"b"]) == store.getattr(b)
    with pytest.raises(NotFound):
        store.resolve(ROOT, [b"x"])
    with pytest.raises(NotFound):
        store.resolve(ROOT, [b"a", b"b", b"g"])
    with pytest.raises(NotADirectory):
        store.resolve(ROOT, [b"a", b"b", b"f", b"x"])
    with pytest.raises(NotADirectory):
        store.resolve(f, [b"x"])
    with pytest.raises(NotFound):
        store.resolve(999, [])
    with pytest.raises(NameTooLong):
        store.resolve(ROOT, [b"x" * 256])
    reader = store.reader()
    try:
        assert reader.resolve(ROOT, [b"a", b"b", b"f"]).ino == f
    finally:
        reader.close()
    check(store, chunks)


# -- list_dir -------------------------------------------------------------------------------------


def test_list_dir_sorts_directories_as_name_slash(store: MetaStore, chunks: set[bytes]) -> None:
    for name in (b"a", b"a-"):
        store.mkdir(ROOT, name, 0o755, 0, 0)
    for name in (b"a-b", b"a.", b"a0", b"b", b"\xff"):
        new_file(store, name)

    def listed(after: bytes, limit: int = 100) -> list[bytes]:
        return [e.name for e in store.list_dir(ROOT, after, limit)]

    # keys: a-/ < a-b < a. < a/ < a0 < b < \xff
    assert listed(b"") == [b"a-", b"a-b", b"a.", b"a", b"a0", b"b", b"\xff"]
    assert listed(b"a-b") == [b"a.", b"a", b"a0", b"b", b"\xff"]
    assert listed(b"a/") == [b"a0", b"b", b"\xff"]
    assert listed(b"a") == listed(b"")  # the file key "a" precedes every key here
    assert listed(b"a-/zzz") == [b"a-b", b"a.", b"a", b"a0", b"b", b"\xff"]  # inside a-/
    assert listed(b"a/zzz") == [b"a0", b"b", b"\xff"]
    assert listed(b"", 2) == [b"a-", b"a-b"]
    assert listed(b"\xff") == []
    assert store.list_dir(ROOT, b"", 0) == []
    entry = store.list_dir(ROOT, b"a.", 1)[0]
    assert entry.name == b"a" and entry.attr == store.lookup(ROOT, b"a") and entry.cookie == 0
    check(store, chunks)


def test_list_dir_errors_and_reader(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    with pytest.raises(NotFound):
        store.list_dir(999, b"", 10)
    with pytest.raises(NotADirectory):
        store.list_dir(f, b"", 10)
    with pytest.raises(NotADirectory):
        store.list_dir(f, b"", 0)
    reader = store.reader()
    try:
        assert [e.name for e in reader.list_dir(ROOT, b"", 10)] == [b"f"]
    finally:
        reader.close()
    check(store, chunks)


def test_list_dir_directory_after_many_longer_names(store: MetaStore, chunks: set[bytes]) -> None:
    """A directory d sorts after every d-NNN: small pages must still scan past all of them."""
    store.mkdir(ROOT, b"d", 0o755, 0, 0)
    for i in range(300):
        new_file(store, b"d-%03d" % i)
    new_file(store, b"e")
    expected = [b"d-%03d" % i for i in range(300)] + [b"d", b"e"]
    for page in (1, 7, 50, 1000):
        seen: list[bytes] = []
        after = b""
        while batch := store.list_dir(ROOT, after, page):
            seen += [e.name for e in batch]
            after = sort_key(batch[-1].name, batch[-1].attr.is_dir)
        assert seen == expected
    assert [e.name for e in store.list_dir(ROOT, b"d-299", 1)] == [b"d"]
    assert [e.name for e in store.list_dir(ROOT, b"d-", 1)] == [b"d-000"]
    check(store, chunks)


def test_list_dir_long_chain_of_open_directories(store: MetaStore, chunks: set[bytes]) -> None:
    """a, a-, a--, ...: each directory's key a-…-/ sorts before its shorter prefixes' keys, so the
    first entry in key order is the last name in name order."""
    chain = [b"a" + b"-" * i for i in range(60)]
    for name in chain:
        store.mkdir(ROOT, name, 0o755, 0, 0)
    new_file(store, b"a-" + b"-" * 70 + b"x")  # a file after all of them in name order, first in key order
    new_file(store, b"b")
    expected = [b"a-" + b"-" * 70 + b"x", *reversed(chain), b"b"]
    assert [e.name for e in store.list_dir(ROOT, b"", 1)] == expected[:1]
    assert [e.name for e in store.list_dir(ROOT, b"", 2)] == expected[:2]
    for page in (1, 3, 100):
        seen: list[bytes] = []
        after = b""
        while batch := store.list_dir(ROOT, after, page):
            seen += [e.name for e in batch]
            after = sort_key(batch[-1].name, batch[-1].attr.is_dir)
        assert seen == expected
    check(store, chunks)


LIST_NAMES = (
    st.binary(min_size=1, max_size=4)
    # a small alphabet around '/': the bytes that reorder directories, plus the extremes
    .map(lambda raw: bytes(b"a-.0\x01\xff"[x % 6] for x in raw))
    .filter(lambda name: name not in (b".", b".."))
)
LIST_ENTRIES = st.dictionaries(LIST_NAMES, st.booleans(), max_size=25)
LIST_AFTER = st.one_of(
    st.just(b""), LIST_NAMES, LIST_NAMES.map(lambda n: n + b"/"), st.binary(max_size=6), LIST_NAMES
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LIST_ENTRIES, st.integers(1, 6), st.lists(LIST_AFTER, max_size=5), st.sampled_from([0, 1, 16]))
def test_list_dir_matches_model(
    entries: dict[bytes, bool], page: int, afters: list[bytes], slack: int
) -> None:
    # A small read-ahead slack makes the small examples take list_dir's multi-batch path too.
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(daemon.meta.objects, "_LIST_DIR_SLACK", slack),
    ):
        store = open_meta(Path(tmp) / "meta.db", block_size=BS, now_ns=Clock())
        try:
            for name, is_dir in entries.items():
                if is_dir:
                    store.mkdir(ROOT, name, 0o755, 0, 0)
                else:
                    new_file(store, name)
            model = sorted(sort_key(n, d) for n, d in entries.items())
            # Paging from the start yields every key exactly once, in order.
            keys: list[bytes] = []
            after = b""
            while batch := store.list_dir(ROOT, after, page):
                assert len(batch) <= page
                keys += [sort_key(e.name, e.attr.is_dir) for e in batch]
                after = keys[-1]
            assert keys == model
            # Any starting point (including ones that are no entry's key).
            for after in afters:
                got = [sort_key(e.name, e.attr.is_dir) for e in store.list_dir(ROOT, after, page)]
                assert got == [k for k in model if k > after][:page]
            assert store.fsck(lambda c: True, repair=False) == []
        finally:
            store.close()


# -- put_object -----------------------------------------------------------------------------------


def test_put_object_creates_directories_and_file(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    before = len(oplog(store))
    attr = put(
        store,
        chunks,
        b"a/b/obj",
        size=BS + 10,
        refs=(ref(0, cid(1), BS, 100), ref(1, cid(2), BS, 200)),
        xattrs={b"user.etag": b"e1", b"user.meta": b"m"},
        dir_mode=0o750,
    )
    now = clock.t
    assert attr.mode == stat.S_IFREG | 0o644
    assert (attr.nlink, attr.uid, attr.gid, attr.size) == (1, 1000, 1000, BS + 10)
    assert (attr.atime_ns, attr.mtime_ns, attr.ctime_ns) == (7, 7, now)
    assert attr.blocks == 1  # (300 + 511) // 512
    assert store.resolve(ROOT, [b"a", b"b", b"obj"]) == attr
    a = store.lookup(ROOT, b"a")
    b = store.lookup(a.ino, b"b")
    assert a.mode == b.mode == stat.S_IFDIR | 0o750
    assert (a.uid, a.gid, a.size, a.nlink, b.nlink) == (1000, 1000, DIR_SIZE, 3, 2)
    assert b.mtime_ns == b.ctime_ns == now
    assert store.getattr(ROOT).nlink == 3
    fmap = store.read_map(attr.ino)
    assert fmap.inline is None
    # the last block's length is cut at the size, as a truncate would
    assert fmap.blocks == [ref(0, cid(1), BS, 100), ref(1, cid(2), 10, 200)]
    assert store.listxattr(attr.ino) == [b"user.etag", b"user.meta"]
    assert store.getxattr(attr.ino, b"user.etag") == b"e1"
    assert refcount(store, cid(1)) == refcount(store, cid(2)) == 1
    log = oplog(store)[before:]
    assert [op for op, _ in log] == ["put_object"]
    assert log[0][1][:3] == [ROOT, [b"a", b"b"], b"obj"]
    check(store, chunks)


def test_put_object_inline_empty_and_holes(store: MetaStore, chunks: set[bytes]) -> None:
    small = put(store, chunks, b"small", inline=b"hello")
    assert store.read_map(small.ino) == (small, b"hello", [])
    assert small.size == 5 and small.blocks == 1
    empty = put(store, chunks, b"empty", size=0)
    assert store.read_map(empty.ino) == (empty, None, [])
    assert (empty.size, empty.blocks) == (0, 0)
    sparse = put(store, chunks, b"sparse", size=3 * BS, refs=(ref(0, b""), ref(2, cid(1))))
    assert store.read_map(sparse.ino).blocks == [ref(2, cid(1))]
    assert refcount(store, cid(1)) == 1
    check(store, chunks)


def test_put_object_replaces_existing(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    old = put(store, chunks, b"d/k", refs=(ref(0, cid(1)), ref(1, cid(2))))
    d = store.lookup(ROOT, b"d").ino
    new = put(store, chunks, b"d/k", refs=(ref(0, cid(2)), ref(1, cid(3))))
    assert new.ino != old.ino
    with pytest.raises(NotFound):
        store.getattr(old.ino)
    assert store.lookup(d, b"k") == new
    assert names(store, d) == [b"k"]
    assert store.getattr(d).mtime_ns == clock.t
    assert store.referenced_chunks() == {cid(1): 0, cid(2): 1, cid(3): 1}
    # a symlink (any non-directory) is replaced too
    store.symlink(d, b"l", b"target", 0, 0)
    put(store, chunks, b"d/l", inline=b"x")
    assert store.read_map(store.lookup(d, b"l").ino).inline == b"x"
    check(store, chunks)


def test_put_object_replacing_open_file_keeps_it_until_release(store: MetaStore, chunks: set[bytes]) -> None:
    old = new_file(store, b"k", keep_open=True)
    write(store, chunks, old, BS, [ref(0, cid(1))])
    put(store, chunks, b"k", refs=(ref(0, cid(2)),))
    assert store.getattr(old).nlink == 0
    assert store.read_map(old).blocks == [ref(0, cid(1))]
    assert refcount(store, cid(1)) == 1
    check(store, chunks)
    store.release(old, SESSION)
    with pytest.raises(NotFound):
        store.getattr(old)
    assert refcount(store, cid(1)) == 0
    check(store, chunks)


def test_put_object_replacing_hard_linked_file(store: MetaStore, chunks: set[bytes]) -> None:
    old = new_file(store, b"k")
    write(store, chunks, old, BS, [ref(0, cid(1))])
    store.link(old, ROOT, b"other")
    put(store, chunks, b"k", refs=(ref(0, cid(1)),))
    assert store.getattr(old).nlink == 1
    assert store.lookup(ROOT, b"other").ino == old
    assert refcount(store, cid(1)) == 2
    check(store, chunks)


def test_put_object_conditions(store: MetaStore, chunks: set[bytes]) -> None:
    first = put(store, chunks, b"k", inline=b"1", if_none_match=True, xattrs={b"user.etag": b"e1"})
    with pytest.raises(PreconditionFailed):
        put(store, chunks, b"k", inline=b"2", if_none_match=True)
    with pytest.raises(NotFound):
        put(store, chunks, b"missing", inline=b"2", if_match=(b"user.etag", b"e1"))
    with pytest.raises(PreconditionFailed):
        put(store, chunks, b"k", inline=b"2", if_match=(b"user.etag", b"other"))
    with pytest.raises(PreconditionFailed):
        put(store, chunks, b"k", inline=b"2", if_match=(b"user.absent", b"e1"))
    assert store.lookup(ROOT, b"k") == first
    second = put(store, chunks, b"k", inline=b"2", if_match=(b"user.etag", b"e1"))
    assert store.read_map(second.ino).inline == b"2"
    assert store.listxattr(second.ino) == []  # xattrs belong to the object, not the name
    with pytest.raises(NotFound):
        store.lookup(ROOT, b"missing")
    check(store, chunks)


def test_put_object_errors(store: MetaStore, chunks: set[bytes]) -> None:
    store.mkdir(ROOT, b"dir", 0o755, 0, 0)
    f = new_file(store, b"file")
    ops = oplog_ops(store)
    cases: list[tuple[type[Exception], bytes, dict[str, Any]]] = [
        (IsADirectory, b"dir", {"inline": b"x"}),
        (NotADirectory, b"file/x", {"inline": b"x"}),
        (InvalidArgument, b"new/..", {"inline": b"x"}),
        (InvalidArgument, b"new/", {"inline": b"x"}),
        (InvalidArgument, b"./x", {"inline": b"x"}),
        (NameTooLong, b"x" * 256, {"inline": b"x"}),
        (InvalidArgument, b"x", {"inline": b"x", "refs": (ref(0, cid(1)),)}),
        (InvalidArgument, b"x", {"inline": b"x" * (BS + 1)}),
        (InvalidArgument, b"x", {"inline": b"xy", "size": 5}),
        (InvalidArgument, b"x", {"refs": (ref(1, cid(1)),), "size": BS}),
        (InvalidArgument, b"x", {"refs": (ref(0, cid(1)), ref(0, cid(2)))}),
        (InvalidArgument, b"x", {"refs": (ref(0, cid(1), BS + 1),)}),
        (InvalidArgument, b"x", {"size": -1}),
        (RangeError, b"x", {"inline": b"x", "xattrs": {b"": b"v"}}),
        (RangeError, b"x", {"inline": b"x", "xattrs": {b"user.k": b"v" * (XATTR_SIZE_MAX + 1)}}),
        (NameTooLong, b"x", {"inline": b"x", "xattrs": {b"u" * 256: b"v"}}),
        (NotFound, b"x", {"inline": b"x", "parent": 999}),
        (NotADirectory, b"x", {"inline": b"x", "parent": f}),
    ]
    for error, path, kwargs in cases:
        with pytest.raises(error):
            put(store, chunks, path, **kwargs)
    with pytest.raises(InvalidArgument):
        store.put_object(
            ROOT, [], b"x", mode=stat.S_IFDIR | 0o755, uid=0, gid=0, size=0, mtime_ns=0, blocks=[],
            inline=None, xattrs={}, chunk_exists=chunks.__contains__,
        )  # fmt: skip
    with pytest.raises(InvalidArgument):
        put(store, chunks, b"d/x", inline=b"x", dir_mode=stat.S_IFREG | 0o755)
    assert oplog_ops(store) == ops  # failures leave no oplog row
    assert sorted(names(store, ROOT)) == [b"dir", b"file"]
    assert store.referenced_chunks() == {}
    check(store, chunks)


def test_put_object_failure_is_atomic(store: MetaStore, chunks: set[bytes]) -> None:
    keep = put(store, chunks, b"a/k", refs=(ref(0, cid(1)),))
    ops = oplog_ops(store)
    # cid(9) is not stored: the whole write rolls back, including the new directories.
    with pytest.raises(ChunkMissing):
        store.put_object(
            ROOT, [b"x", b"y"], b"obj", mode=0o644, uid=0, gid=0, size=2 * BS, mtime_ns=1,
            blocks=[ref(0, cid(1)), ref(1, cid(9))], inline=None, xattrs={b"user.k": b"v"},
            chunk_exists=chunks.__contains__,
        )  # fmt: skip
    with pytest.raises(ChunkMissing):  # replacing an object: the old one stays
        store.put_object(
            ROOT, [b"a"], b"k", mode=0o644, uid=0, gid=0, size=BS, mtime_ns=1,
            blocks=[ref(0, cid(9))], inline=None, xattrs={}, chunk_exists=chunks.__contains__,
        )  # fmt: skip
    with pytest.raises(NotFound):
        store.lookup(ROOT, b"x")
    assert store.resolve(ROOT, [b"a", b"k"]) == keep
    assert store.referenced_chunks() == {cid(1): 1}
    assert store.getattr(ROOT).nlink == 3
    assert oplog_ops(store) == ops
    # An unreferenced chunk (refcount 0) must be confirmed stored before it is reused.
    store.remove_tree(ROOT, b"a")
    assert refcount(store, cid(1)) == 0
    chunks.discard(cid(1))
    with pytest.raises(ChunkMissing):
        store.put_object(
            ROOT, [], b"k", mode=0o644, uid=0, gid=0, size=BS, mtime_ns=1, blocks=[ref(0, cid(1))],
            inline=None, xattrs={}, chunk_exists=chunks.__contains__,
        )  # fmt: skip
    chunks.add(cid(1))
    put(store, chunks, b"k", refs=(ref(0, cid(1)),))
    assert refcount(store, cid(1)) == 1
    check(store, chunks)


def test_put_object_setgid_directories(store: MetaStore, chunks: set[bytes]) -> None:
    top = store.mkdir(ROOT, b"shared", 0o2775, 0, 50).ino
    obj = put(store, chunks, b"x/y/obj", parent=top, inline=b"v")
    x = store.lookup(top, b"x")
    y = store.lookup(x.ino, b"y")
    assert x.gid == y.gid == obj.gid == 50
    assert x.mode & stat.S_ISGID and y.mode & stat.S_ISGID
    assert not obj.mode & stat.S_ISGID
    check(store, chunks)


def test_put_object_too_many_links(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    store._db.execute("UPDATE inodes SET nlink = 65000 WHERE ino = ?", (d,))
    with pytest.raises(TooManyLinks):
        put(store, chunks, b"d/sub/obj", inline=b"x")
    store._db.execute("UPDATE inodes SET nlink = 2 WHERE ino = ?", (d,))
    check(store, chunks)


# -- make_dirs ------------------------------------------------------------------------------------


def test_make_dirs(store: MetaStore, chunks: set[bytes]) -> None:
    c = store.make_dirs(ROOT, [b"a", b"b", b"c"], mode=0o700, uid=3, gid=4)
    assert c.is_dir and c.mode == stat.S_IFDIR | 0o700 and (c.uid, c.gid, c.nlink) == (3, 4, 2)
    assert store.resolve(ROOT, [b"a", b"b", b"c"]) == c
    assert store.make_dirs(ROOT, [b"a", b"b", b"c"], mode=0o755, uid=0, gid=0) == c  # idempotent
    assert store.make_dirs(ROOT, [], mode=0o755, uid=0, gid=0) == store.getattr(ROOT)
    assert oplog_ops(store) == ["make_dirs"] * 3
    new_file(store, b"f", c.ino)
    with pytest.raises(NotADirectory):
        store.make_dirs(ROOT, [b"a", b"b", b"c", b"f", b"g"], mode=0o755, uid=0, gid=0)
    with pytest.raises(InvalidArgument):
        store.make_dirs(ROOT, [b"a", b".."], mode=0o755, uid=0, gid=0)
    with pytest.raises(InvalidArgument):
        store.make_dirs(ROOT, [b"z"], mode=stat.S_IFREG | 0o755, uid=0, gid=0)
    with pytest.raises(NotFound):
        store.make_dirs(999, [b"z"], mode=0o755, uid=0, gid=0)
    check(store, chunks)


# -- remove_tree ----------------------------------------------------------------------------------


def test_remove_tree_nested_with_links_and_open_files(store: MetaStore, chunks: set[bytes]) -> None:
    a = store.mkdir(ROOT, b"a", 0o755, 0, 0).ino
    b = store.mkdir(a, b"b", 0o755, 0, 0).ino
    c = store.mkdir(b, b"c", 0o755, 0, 0).ino
    f1 = new_file(store, b"f1", c)
    write(store, chunks, f1, BS, [ref(0, cid(1))])
    f2 = new_file(store, b"f2", a)  # also named outside the tree
    write(store, chunks, f2, BS, [ref(0, cid(2))])
    store.link(f2, ROOT, b"keep")
    h = new_file(store, b"h1", b)  # two names, both inside the tree
    write(store, chunks, h, BS, [ref(0, cid(3))])
    store.link(h, a, b"h2")
    held = new_file(store, b"open", a, keep_open=True)
    write(store, chunks, held, BS, [ref(0, cid(4))])
    store.symlink(b, b"l", b"target", 0, 0)
    store.setxattr(c, b"user.d", b"v", 0)
    store.setxattr(f1, b"user.f", b"v", 0)
    before = len(oplog(store))
    # 3 directories + f1, f2, h, open, l
    assert store.remove_tree(ROOT, b"a") == 8
    assert [op for op, _ in oplog(store)[before:]] == ["remove_tree"]
    assert names(store, ROOT) == [b"keep"]
    assert store.getattr(ROOT).nlink == 2
    for gone in (a, b, c, f1, h):
        with pytest.raises(NotFound):
            store.getattr(gone)
    assert store.getattr(f2).nlink == 1
    assert store.getattr(held).nlink == 0
    assert store.read_map(held).blocks == [ref(0, cid(4))]
    assert store.referenced_chunks() == {cid(1): 0, cid(2): 1, cid(3): 0, cid(4): 1}
    assert store._db.execute("SELECT COUNT(*) FROM xattrs").fetchone()[0] == 0
    check(store, chunks)
    store.release(held, SESSION)
    with pytest.raises(NotFound):
        store.getattr(held)
    assert refcount(store, cid(4)) == 0
    check(store, chunks)


def test_remove_tree_file_and_errors(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store, b"f")
    write(store, chunks, f, BS, [ref(0, cid(1))])
    store.link(f, ROOT, b"g")
    assert store.remove_tree(ROOT, b"f") == 1
    assert store.getattr(f).nlink == 1
    assert store.remove_tree(ROOT, b"g") == 1
    assert refcount(store, cid(1)) == 0
    with pytest.raises(NotFound):
        store.remove_tree(ROOT, b"f")
    with pytest.raises(NotFound):
        store.remove_tree(999, b"f")
    store.mkdir(ROOT, b"empty", 0o755, 0, 0)
    assert store.remove_tree(ROOT, b"empty") == 1
    assert store.getattr(ROOT).nlink == 2
    check(store, chunks)


def test_remove_tree_deep_is_iterative(store: MetaStore, chunks: set[bytes]) -> None:
    depth = 3000  # far beyond Python's default recursion limit
    deepest = store.make_dirs(ROOT, [b"d"] * depth, mode=0o755, uid=0, gid=0).ino
    put(store, chunks, b"obj", parent=deepest, refs=(ref(0, cid(1)),))
    check(store, chunks)
    assert store.remove_tree(ROOT, b"d") == depth + 1
    assert names(store, ROOT) == []
    assert store.counts()["inodes"] == 1
    assert refcount(store, cid(1)) == 0
    check(store, chunks)


# -- remove_empty_parents -------------------------------------------------------------------------


def test_remove_empty_parents(store: MetaStore, chunks: set[bytes]) -> None:
    put(store, chunks, b"a/b/c/obj", inline=b"x")
    put(store, chunks, b"a/other", inline=b"x")
    store.unlink(store.resolve(ROOT, [b"a", b"b", b"c"]).ino, b"obj")
    assert store.remove_empty_parents(ROOT, [b"a", b"b", b"c"]) == 2  # c and b; a holds "other"
    assert names(store, store.lookup(ROOT, b"a").ino) == [b"other"]
    assert store.getattr(store.lookup(ROOT, b"a").ino).nlink == 2
    store.unlink(store.lookup(ROOT, b"a").ino, b"other")
    assert store.remove_empty_parents(ROOT, [b"a"], keep_depth=1) == 0
    assert store.remove_empty_parents(ROOT, [b"a", b"gone", b"deeper"]) == 1  # missing tail: start at a
    assert names(store, ROOT) == []
    assert store.getattr(ROOT).nlink == 2
    assert store.remove_empty_parents(ROOT, [b"nothing"]) == 0
    assert store.remove_empty_parents(ROOT, []) == 0
    check(store, chunks)


def test_remove_empty_parents_keep_depth_and_files(store: MetaStore, chunks: set[bytes]) -> None:
    vol = store.mkdir(ROOT, b"vol", 0o755, 0, 0).ino
    put(store, chunks, b"vol/x/y/z/obj", inline=b"x")
    store.unlink(store.resolve(ROOT, [b"vol", b"x", b"y", b"z"]).ino, b"obj")
    assert store.remove_empty_parents(ROOT, [b"vol", b"x", b"y", b"z"], keep_depth=2) == 2  # z, y
    assert store.resolve(ROOT, [b"vol", b"x"]).nlink == 2
    new_file(store, b"f", vol)
    assert store.remove_empty_parents(ROOT, [b"vol", b"f", b"q"]) == 0  # vol is not empty
    assert store.remove_empty_parents(vol, [b"x"]) == 1
    assert names(store, vol) == [b"f"]
    # Directories made on purpose (mkdir, an S3 "dir/" marker) stay when emptied.
    store.make_dirs(vol, [b"kept", b"inner"], mode=0o755, uid=0, gid=0)
    put(store, chunks, b"vol/kept/implied/obj", inline=b"x")
    store.unlink(store.resolve(ROOT, [b"vol", b"kept", b"implied"]).ino, b"obj")
    assert store.remove_empty_parents(ROOT, [b"vol", b"kept", b"implied"]) == 1  # implied only
    assert names(store, store.resolve(ROOT, [b"vol", b"kept"]).ino) == [b"inner"]
    with pytest.raises(NotFound):
        store.remove_empty_parents(999, [b"x"])
    check(store, chunks)


# -- internal roots -------------------------------------------------------------------------------


def test_internal_dirs_are_hidden_roots_that_persist(
    tmp_path: Path, clock: Clock, chunks: set[bytes]
) -> None:
    s = open_store(tmp_path, clock)
    inos = {name: s.internal_dir(name) for name in INTERNAL_DIRS}
    assert set(inos) == {"uploads", "trash", "snapshot-builds", "versions"} and len(set(inos.values())) == 4
    for ino in inos.values():
        attr = s.getattr(ino)
        assert attr.is_dir and attr.nlink == 2 and attr.mode == stat.S_IFDIR | 0o700
        assert s.readdir(ino, 0, 10) == []
        assert s.parent(ino) == ino
        assert s.lookup(ino, b"..").ino == ino
    assert s.readdir(ROOT, 0, 10) == []
    assert s.counts()["inodes"] == 1 and s.counts()["dirs"] == 1
    assert s._db.execute("SELECT COUNT(*) FROM oplog").fetchone()[0] == 0  # setup is not an operation
    with pytest.raises(InvalidArgument):
        s.internal_dir("nope")
    put(s, chunks, b"u1/1", parent=inos["uploads"], inline=b"part")
    s.close()
    s = open_store(tmp_path, clock)
    assert {name: s.internal_dir(name) for name in INTERNAL_DIRS} == inos
    assert s.resolve(inos["uploads"], [b"u1", b"1"]).size == 4
    reader = s.reader()
    try:
        assert reader.internal_dir("uploads") == inos["uploads"]
    finally:
        reader.close()
    check(s, chunks)
    s.close()


def test_internal_dirs_created_for_existing_database(tmp_path: Path, clock: Clock) -> None:
    s = open_store(tmp_path, clock)
    # What a database from before internal roots looks like.
    s._db.execute("DELETE FROM inodes WHERE ino IN (SELECT value FROM config WHERE key LIKE 'internal:%')")
    s._db.execute("DELETE FROM config WHERE key LIKE 'internal:%'")
    s.close()
    s = open_store(tmp_path, clock)
    assert s.getattr(s.internal_dir("trash")).is_dir
    check(s, set())
    s.close()


def test_multipart_parts_in_uploads(store: MetaStore, chunks: set[bytes]) -> None:
    uploads = store.internal_dir("uploads")
    for n in (1, 2, 3):
        put(store, chunks, b"up-1/%d" % n, parent=uploads, refs=(ref(0, cid(n)),))
    up = store.lookup(uploads, b"up-1").ino
    assert [e.name for e in store.list_dir(up, b"", 10)] == [b"1", b"2", b"3"]
    assert store.getattr(uploads).nlink == 3
    # Completing: the parts' chunks become one object's blocks, then the upload goes.
    blocks = tuple(ref(i, cid(i + 1)) for i in range(3))
    put(store, chunks, b"bucket/big", refs=blocks)
    assert refcount(store, cid(1)) == 2
    trash = store.internal_dir("trash")
    store.rename(uploads, b"up-1", trash, b"up-1", 0)  # moves between internal roots are fine
    check(store, chunks)
    assert store.remove_tree(trash, b"up-1") == 4
    assert store.getattr(uploads).nlink == store.getattr(trash).nlink == 2
    assert [refcount(store, cid(n)) for n in (1, 2, 3)] == [1, 1, 1]
    check(store, chunks)


def test_fsck_clean_with_internal_content(store: MetaStore, chunks: set[bytes]) -> None:
    uploads, trash = store.internal_dir("uploads"), store.internal_dir("trash")
    put(store, chunks, b"u/1", parent=uploads, refs=(ref(0, cid(1)),))
    deep = store.make_dirs(trash, [b"x", b"y"], mode=0o755, uid=0, gid=0).ino
    f = new_file(store, b"f", deep, keep_open=True)
    store.link(f, uploads, b"link")
    store.unlink(deep, b"f")
    store.mkdir(ROOT, b"visible", 0o755, 0, 0)
    store.rename(ROOT, b"visible", uploads, b"moved", 0)
    assert store.fsck(chunks.__contains__, repair=True) == []
    check(store, chunks)
    store.release(f, SESSION)
    check(store, chunks)


def test_fsck_repairs_internal_roots(store: MetaStore, chunks: set[bytes]) -> None:
    uploads = store.internal_dir("uploads")
    put(store, chunks, b"u/1", parent=uploads, inline=b"x")
    store._db.execute("DELETE FROM config WHERE key = 'internal:uploads'")
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    store._db.execute("UPDATE config SET value = ? WHERE key = 'internal:trash'", (d,))
    found = store.fsck(chunks.__contains__, repair=False)
    assert found[:2] == [
        "internal directory 'uploads' is missing",
        f"internal directory 'trash' names directory {d}, which has a name",
    ]
    assert store.fsck(chunks.__contains__, repair=True)[:2] == found[:2]
    assert store.internal_dir("uploads") != uploads
    assert store.internal_dir("trash") not in (d, uploads)
    # The old uploads directory lost its root status and was re-homed with its contents.
    lost = store.lookup(ROOT, b"lost+found").ino
    assert store.resolve(lost, [b"#%d" % uploads, b"u", b"1"]).size == 1
    assert store.lookup(ROOT, b"d").ino == d  # the directory trash wrongly named stays put
    check(store, chunks)


# -- snapshot -------------------------------------------------------------------------------------


def build_tree(store: MetaStore, chunks: set[bytes]) -> dict[str, int]:
    """/d/{f (2 blocks, xattr), sub/{g (inline), h (= f), dev}, l -> target}, /outside (= f)."""
    d = store.mkdir(ROOT, b"d", 0o750, 5, 6).ino
    sub = store.mkdir(d, b"sub", 0o700, 5, 6).ino
    f = new_file(store, b"f", d)
    write(store, chunks, f, 2 * BS, [ref(0, cid(1), BS, 100), ref(1, cid(2), BS, 200)])
    store.setxattr(f, b"user.k", b"v", 0)
    store.setxattr(d, b"user.dir", b"dv", 0)
    store.link(f, sub, b"h")
    store.link(f, ROOT, b"outside")
    g = new_file(store, b"g", sub)
    store.commit_write(g, size=3, mtime_ns=9, blocks=[], inline=b"abc", chunk_exists=chunks.__contains__)
    dev = store.mknod(sub, b"dev", stat.S_IFCHR | 0o600, 0x0103, 0, 0).ino
    store.symlink(d, b"l", b"target", 5, 6)
    return {"d": d, "sub": sub, "f": f, "g": g, "dev": dev}


def test_snapshot_copies_tree_and_shares_chunks(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    t = build_tree(store, chunks)
    top = max(r[0] for r in store._db.execute("SELECT ino FROM inodes"))
    before = len(oplog(store))
    snap = store.snapshot(t["d"], ROOT, b"snap", uid=7, gid=8)
    assert [op for op, _ in oplog(store)[before:]] == ["snapshot"]
    src = store.getattr(t["d"])
    assert snap.ino > top and snap.mode == src.mode and (snap.uid, snap.gid) == (7, 8)
    assert (snap.nlink, snap.mtime_ns, snap.ctime_ns) == (3, src.mtime_ns, clock.t)
    assert store.getattr(ROOT).nlink == 4
    assert store.getxattr(snap.ino, b"user.dir") == b"dv"
    f2 = store.resolve(snap.ino, [b"f"])
    f1 = store.getattr(t["f"])
    assert f2.ino > top
    # same attributes; nlink counts only the names inside the copy
    assert f2._replace(ino=0, nlink=0) == f1._replace(ino=0, nlink=0)
    assert (f1.nlink, f2.nlink) == (3, 2)
    assert store.resolve(snap.ino, [b"sub", b"h"]).ino == f2.ino
    assert store.read_map(f2.ino).blocks == store.read_map(t["f"]).blocks
    assert store.getxattr(f2.ino, b"user.k") == b"v"
    assert store.referenced_chunks() == {cid(1): 2, cid(2): 2}
    g2 = store.resolve(snap.ino, [b"sub", b"g"])
    assert store.read_map(g2.ino).inline == b"abc"
    assert g2._replace(ino=0) == store.getattr(t["g"])._replace(ino=0)
    dev2 = store.resolve(snap.ino, [b"sub", b"dev"])
    assert dev2.rdev == 0x0103 and stat.S_ISCHR(dev2.mode)
    assert store.readlink(store.resolve(snap.ino, [b"l"]).ino) == b"target"
    sub2 = store.resolve(snap.ino, [b"sub"])
    assert sub2._replace(ino=0) == store.getattr(t["sub"])._replace(ino=0)
    assert store.parent(sub2.ino) == snap.ino
    assert sorted(names(store, snap.ino)) == sorted(names(store, t["d"]))
    check(store, chunks)
    # Changing the original leaves the copy alone (copy on write at the block-map level).
    write(store, chunks, t["f"], 2 * BS, [ref(0, cid(3))])
    assert [b.chunk_id for b in store.read_map(f2.ino).blocks] == [cid(1), cid(2)]
    check(store, chunks)
    # Removing the original keeps the snapshot readable with the same blocks.
    store.remove_tree(ROOT, b"d")
    store.unlink(ROOT, b"outside")
    assert store.read_map(f2.ino).blocks == [ref(0, cid(1), BS, 100), ref(1, cid(2), BS, 200)]
    assert store.referenced_chunks() == {cid(1): 1, cid(2): 1, cid(3): 0}
    check(store, chunks)


def test_snapshot_errors(store: MetaStore, chunks: set[bytes]) -> None:
    t = build_tree(store, chunks)
    ops = oplog_ops(store)
    with pytest.raises(InvalidArgument):
        store.snapshot(t["d"], t["sub"], b"s", uid=0, gid=0)
    with pytest.raises(InvalidArgument):
        store.snapshot(t["d"], t["d"], b"s", uid=0, gid=0)
    with pytest.raises(Exists):
        store.snapshot(t["sub"], ROOT, b"outside", uid=0, gid=0)
    with pytest.raises(NotADirectory):
        store.snapshot(t["f"], ROOT, b"s", uid=0, gid=0)
    with pytest.raises(NotADirectory):
        store.snapshot(t["sub"], t["f"], b"s", uid=0, gid=0)
    with pytest.raises(NotFound):
        store.snapshot(999, ROOT, b"s", uid=0, gid=0)
    with pytest.raises(InvalidArgument):
        store.snapshot(t["sub"], ROOT, b"a/b", uid=0, gid=0)
    assert oplog_ops(store) == ops
    # A subtree may be snapshotted next to itself, and a snapshot into a setgid directory
    # follows mkdir's group rules.
    shared = store.mkdir(ROOT, b"shared", 0o2770, 0, 77).ino
    copy = store.snapshot(t["sub"], shared, b"s", uid=1, gid=2)
    assert copy.gid == 77 and copy.mode & stat.S_ISGID
    store.snapshot(t["sub"], t["d"], b"sub2", uid=0, gid=0)
    assert store.getattr(t["d"]).nlink == 4
    assert refcount(store, cid(1)) == 3
    check(store, chunks)


def test_snapshot_of_snapshot_and_deep_tree(store: MetaStore, chunks: set[bytes]) -> None:
    deepest = store.make_dirs(ROOT, [b"t"] + [b"x"] * 500, mode=0o755, uid=0, gid=0).ino
    put(store, chunks, b"obj", parent=deepest, refs=(ref(0, cid(1)),))
    a = store.snapshot(store.lookup(ROOT, b"t").ino, ROOT, b"a", uid=0, gid=0)
    b = store.snapshot(a.ino, ROOT, b"b", uid=0, gid=0)
    assert store.resolve(b.ino, [b"x"] * 500 + [b"obj"]).size == BS
    assert refcount(store, cid(1)) == 3
    check(store, chunks)
    assert store.remove_tree(ROOT, b"a") == 502
    assert refcount(store, cid(1)) == 2
    check(store, chunks)


# -- volumes ----------------------------------------------------------------------------------------


def test_volume_crud(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    attr = store.create_volume("photos", {"replicas": 2, "tags": ["a"]}, mode=0o750, uid=3, gid=4)
    created = clock.t
    assert attr.is_dir and attr.mode == stat.S_IFDIR | 0o750 and (attr.uid, attr.gid) == (3, 4)
    assert store.lookup(ROOT, b"photos") == attr
    vol = {"name": "photos", "ino": attr.ino, "policy": {"replicas": 2, "tags": ["a"]}, "created_ns": created}
    assert store.get_volume("photos") == vol
    assert store.get_volume("nope") is None
    with pytest.raises(Exists):
        store.create_volume("photos", {}, mode=0o755, uid=0, gid=0)
    store.mkdir(ROOT, b"plain", 0o755, 0, 0)
    assert store.get_volume("plain") is None  # a directory without a row is not a volume here
    adopted = store.adopt_volume("plain", {"replicas": 1})
    assert adopted["ino"] == store.lookup(ROOT, b"plain").ino
    assert store.get_volume("plain") == adopted
    with pytest.raises(Exists):
        store.adopt_volume("plain", {})
    with pytest.raises(NotFound):
        store.adopt_volume("absent", {})
    new_file(store, b"file")
    with pytest.raises(NotADirectory):
        store.adopt_volume("file", {})
    assert [v["name"] for v in store.list_volumes()] == ["photos", "plain"]
    updated = store.update_volume("photos", {"replicas": 3})
    assert updated == {**vol, "policy": {"replicas": 3}}
    assert store.get_volume("photos") == updated
    with pytest.raises(NotFound):
        store.update_volume("absent", {})
    for bad_name in ("", "a/b", "..", "x" * 256):
        with pytest.raises((InvalidArgument, NameTooLong)):
            store.create_volume(bad_name, {}, mode=0o755, uid=0, gid=0)
    with pytest.raises(InvalidArgument):
        store.create_volume("v", [1, 2], mode=0o755, uid=0, gid=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.create_volume("v", {"x": object()}, mode=0o755, uid=0, gid=0)
    with pytest.raises(InvalidArgument):
        store.update_volume("photos", {"x": object()})
    assert [op for op, _ in oplog(store) if "volume" in op] == [
        "create_volume",
        "adopt_volume",
        "update_volume",
    ]
    reader = store.reader()
    try:
        assert reader.get_volume("photos") == updated
        assert len(reader.list_volumes()) == 2
    finally:
        reader.close()
    check(store, chunks)


def test_delete_volume(store: MetaStore, chunks: set[bytes]) -> None:
    keep = store.create_volume("keep", {}, mode=0o755, uid=0, gid=0).ino
    store.delete_volume("keep", remove_dir=False)
    assert store.get_volume("keep") is None
    assert store.lookup(ROOT, b"keep").ino == keep
    full = store.create_volume("full", {}, mode=0o755, uid=0, gid=0).ino
    new_file(store, b"f", full)
    with pytest.raises(NotEmpty):
        store.delete_volume("full", remove_dir=True)
    assert store.get_volume("full") is not None  # rolled back with the failed rmdir
    store.unlink(full, b"f")
    store.delete_volume("full", remove_dir=True)
    assert store.get_volume("full") is None
    with pytest.raises(NotFound):
        store.getattr(full)
    assert names(store, ROOT) == [b"keep"]
    assert store.getattr(ROOT).nlink == 3
    with pytest.raises(NotFound):
        store.delete_volume("full", remove_dir=False)
    check(store, chunks)


def test_volume_rows_follow_their_directories(store: MetaStore, chunks: set[bytes]) -> None:
    def vols() -> dict[str, int]:
        return {v["name"]: v["ino"] for v in store.list_volumes()}

    a = store.create_volume("a", {"k": "a"}, mode=0o755, uid=0, gid=0).ino
    b = store.create_volume("b", {"k": "b"}, mode=0o755, uid=0, gid=0).ino
    store.rename(ROOT, b"a", ROOT, b"a2", 0)
    assert vols() == {"a2": a, "b": b}
    assert store.get_volume("a2")["policy"] == {"k": "a"}  # type: ignore[index]
    store.rename(ROOT, b"a2", ROOT, b"b", RENAME_EXCHANGE)
    assert vols() == {"b": a, "a2": b}
    store.rename(ROOT, b"b", ROOT, b"a2", 0)  # a replaces the (empty) directory b
    assert vols() == {"a2": a}
    outer = store.mkdir(ROOT, b"outer", 0o755, 0, 0).ino
    store.rename(ROOT, b"a2", outer, b"inner", 0)
    assert vols() == {}
    store.rename(outer, b"inner", ROOT, b"back", 0)
    assert vols() == {}  # a directory moving into the root does not become a volume by itself
    store.rename(ROOT, b"back", ROOT, b"\xff", 0)  # not UTF-8: cannot be a volume name
    c = store.create_volume("c", {}, mode=0o755, uid=0, gid=0).ino
    store.rmdir(ROOT, b"c")
    assert vols() == {}
    with pytest.raises(NotFound):
        store.getattr(c)
    store.create_volume("d", {}, mode=0o755, uid=0, gid=0)
    put(store, chunks, b"d/x/y", inline=b"1")
    store.remove_tree(ROOT, b"d")
    assert vols() == {}
    store.create_volume("e", {}, mode=0o755, uid=0, gid=0)
    assert store.remove_empty_parents(ROOT, [b"e"]) == 0  # a volume is never an implied directory
    store.rmdir(ROOT, b"e")
    assert vols() == {}
    f = store.create_volume("f", {}, mode=0o755, uid=0, gid=0).ino
    store.make_dirs(f, [b"g"], mode=0o755, uid=0, gid=0)
    with pytest.raises(NotEmpty):  # a failed rename leaves the row alone
        store.rename(f, b"g", ROOT, b"f", 0)
    assert vols() == {"f": f}
    check(store, chunks)


def test_fsck_reports_and_drops_stale_volume_rows(store: MetaStore, chunks: set[bytes]) -> None:
    store.create_volume("ok", {}, mode=0o755, uid=0, gid=0)
    f = new_file(store, b"file")
    packed = msgpack.packb({})
    store._db.execute("INSERT INTO volumes VALUES ('ghost', 999, ?, 0)", (packed,))
    store._db.execute("INSERT INTO volumes VALUES ('file', ?, ?, 0)", (f, packed))
    store._db.execute(
        "INSERT INTO volumes VALUES ('wrong', ?, ?, 0)", (store.lookup(ROOT, b"ok").ino, packed)
    )
    found = store.fsck(chunks.__contains__, repair=False)
    assert sorted(found) == [
        f"volume 'file' names inode {f}, which is not the top-level directory 'file'",
        "volume 'ghost' names inode 999, which is not the top-level directory 'ghost'",
        f"volume 'wrong' names inode {store.lookup(ROOT, b'ok').ino}, which is not the top-level directory "
        "'wrong'",
    ]
    assert sorted(store.fsck(chunks.__contains__, repair=True)) == sorted(found)
    assert [v["name"] for v in store.list_volumes()] == ["ok"]
    check(store, chunks)


# -- nodes and S3 keys ------------------------------------------------------------------------------


def test_nodes(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    assert store.get_node("n1") is None
    n1 = store.put_node("n1", {"addr": "10.0.0.1:7000", "free": 5})
    assert n1 == {"addr": "10.0.0.1:7000", "free": 5, "node_id": "n1", "updated_ns": clock.t}
    assert store.get_node("n1") == n1
    store.put_node("n0", {"addr": "x"})
    n1b = store.put_node("n1", {"addr": "10.0.0.2:7000"})
    assert n1b["updated_ns"] > n1["updated_ns"] and "free" not in n1b
    assert [n["node_id"] for n in store.list_nodes()] == ["n0", "n1"]
    store.delete_node("n0")
    with pytest.raises(NotFound):
        store.delete_node("n0")
    with pytest.raises(InvalidArgument):
        store.put_node("n2", {"bad": {1, 2}})
    assert store.list_nodes() == [n1b]
    assert oplog_ops(store) == ["put_node", "put_node", "put_node", "delete_node"]
    check(store, chunks)


def test_s3_keys(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    store.s3_key_put("AKID1", secret, "ci")
    created = clock.t
    with pytest.raises(Exists):
        store.s3_key_put("AKID1", "other", "")
    with pytest.raises(InvalidArgument):
        store.s3_key_put("", "s", "")
    store.s3_key_put("AKID0", "s0", "")
    assert store.s3_key_get("AKID1") == secret
    assert store.s3_key_get("nope") is None
    listed = store.s3_key_list()
    assert listed[1] == {"access_key": "AKID1", "created_ns": created, "description": "ci", "grants": {}}
    assert [k["access_key"] for k in listed] == ["AKID0", "AKID1"]
    assert all("secret" not in k for k in listed)
    reader = store.reader()
    try:
        assert reader.s3_key_get("AKID1") == secret
    finally:
        reader.close()
    store.s3_key_delete("AKID0")
    with pytest.raises(NotFound):
        store.s3_key_delete("AKID0")
    assert store.s3_key_get("AKID0") is None
    rows = store._db.execute("SELECT op, args FROM oplog").fetchall()
    assert [op for op, _ in rows] == ["s3_key_put", "s3_key_put", "s3_key_delete"]
    assert all(secret.encode() not in args and b"s0" not in args for _, args in rows)
    check(store, chunks)
