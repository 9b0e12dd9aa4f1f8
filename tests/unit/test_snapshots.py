"""Volume snapshots in the metadata store, on both engines: read-only trees, the registry,
delete, restore (whole volume and one path), clone, chunk references and GC."""

from __future__ import annotations

import io
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.meta import MetaStore
from daemon.meta.dump import load_dump, write_dump
from daemon.meta.snapshots import BUILD_STALE_NS
from daemon.service.snapshots import BATCH_ENTRIES, TreeWalk
from dfs.core.errors import Exists, NotFound, ReadOnly
from dfs.core.namespace import RENAME_EXCHANGE, ROOT_INO, BlockRef
from tests.metastores import Clock, cid, engine, location, open_meta

pytestmark = pytest.mark.usefixtures("meta_engine")
BS = 4096
SESSION = "s1"


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=BS, now_ns=clock)
    yield s
    s.close()


def write(store: MetaStore, chunks: set[bytes], ino: int, chunk: bytes, size: int = BS) -> None:
    chunks.add(chunk)
    store.commit_write(
        ino,
        size=size,
        mtime_ns=5,
        blocks=[BlockRef(0, chunk, size, 1000)],
        inline=None,
        chunk_exists=chunks.__contains__,
    )


def new_file(store: MetaStore, parent: int, name: bytes) -> int:
    ino = store.create(parent, name, 0o644, 1000, 1000, SESSION).ino
    store.release(ino, SESSION)
    return ino


def refcount(store: MetaStore, chunk: bytes) -> int:
    row = store._db.execute("SELECT refcount FROM chunks WHERE chunk_id = ?", (chunk,)).fetchone()
    return -1 if row is None else int(row[0])


def tree(store: MetaStore, ino: int) -> dict[bytes, Any]:
    """name -> (mode, size, data chunks) or a subtree: what a volume holds."""
    out: dict[bytes, Any] = {}
    for e in store.readdir(ino, 0, 10_000):
        if e.attr.is_dir:
            out[e.name] = (e.attr.mode, tree(store, e.attr.ino))
        else:
            fmap = store.read_map(e.attr.ino) if stat.S_ISREG(e.attr.mode) else None
            blocks = [b.chunk_id for b in fmap.blocks] if fmap is not None else []
            out[e.name] = (e.attr.mode, e.attr.size, blocks)
    return out


def check(store: MetaStore, chunks: set[bytes]) -> None:
    assert store.fsck(chunks.__contains__, repair=False) == []


def volume(store: MetaStore, chunks: set[bytes]) -> dict[str, int]:
    """Volume "data" holding a/f1 (chunk 1), a/b/f2 (chunk 2), top (chunk 3), a link and a symlink."""
    vol = store.create_volume("data", {"replication": 1}, mode=0o755, uid=1000, gid=1000).ino
    a = store.mkdir(vol, b"a", 0o755, 1000, 1000).ino
    b = store.mkdir(a, b"b", 0o700, 1000, 1000).ino
    f1, f2, top = new_file(store, a, b"f1"), new_file(store, b, b"f2"), new_file(store, vol, b"top")
    write(store, chunks, f1, cid(1))
    write(store, chunks, f2, cid(2))
    write(store, chunks, top, cid(3))
    store.link(f1, vol, b"f1-link")
    store.symlink(vol, b"sym", b"a/f1", 1000, 1000)
    store.setxattr(f2, b"user.k", b"v")
    return {"vol": vol, "a": a, "b": b, "f1": f1, "f2": f2, "top": top}


def snap_inos(store: MetaStore, name: str) -> dict[str, int]:
    snaps = store.lookup(ROOT_INO, b".snapshots").ino
    vol = store.lookup(snaps, b"data").ino
    top = store.lookup(vol, name.encode()).ino
    a = store.lookup(top, b"a").ino
    b = store.lookup(a, b"b").ino
    return {
        "snaps": snaps,
        "voldir": vol,
        "top": top,
        "a": a,
        "b": b,
        "f1": store.lookup(a, b"f1").ino,
        "f2": store.lookup(b, b"f2").ino,
    }


def test_snapshot_is_registered_and_reads_like_the_volume(store: MetaStore, chunks: set[bytes]) -> None:
    v = volume(store, chunks)
    doc = store.create_snapshot("data", "s1")
    assert doc["origin"] == "manual" and doc["files"] == 4 and doc["bytes"] == 3 * BS + len(b"a/f1")
    s = snap_inos(store, "s1")
    assert doc["ino"] == s["top"]
    assert tree(store, s["top"]) == tree(store, v["vol"])
    # The flag bit never shows: modes are plain file types and permission bits.
    assert store.getattr(s["f1"]).mode == stat.S_IFREG | 0o644
    assert store.getattr(s["snaps"]).mode == stat.S_IFDIR | 0o755
    assert store.getxattr(s["f2"], b"user.k") == b"v"
    assert store.lookup(s["top"], b"f1-link").ino == s["f1"] and store.getattr(s["f1"]).nlink == 2
    assert [d["name"] for d in store.list_snapshots("data")] == ["s1"]
    assert store.list_snapshots("other") == []
    with pytest.raises(Exists):
        store.create_snapshot("data", "s1")
    with pytest.raises(NotFound):
        store.create_snapshot("nope", "s1")
    store.create_snapshot("data", "s2", origin="hourly")
    assert [(d["name"], d["origin"]) for d in store.list_snapshots()] == [("s1", "manual"), ("s2", "hourly")]
    # Reading works: read_map, readlink, getxattr, listxattr, read-only opens.
    assert store.read_map(s["f1"]).blocks[0].chunk_id == cid(1)
    assert store.readlink(store.lookup(s["top"], b"sym").ino) == b"a/f1"
    store.open_events([["open", s["f1"]], ["release", s["f1"]]], SESSION)
    assert refcount(store, cid(1)) == 3  # the volume and two snapshots
    check(store, chunks)


def _mutations(store: MetaStore, s: dict[str, int], chunks: set[bytes]) -> dict[str, Callable[[], Any]]:
    outside = store.mkdir(ROOT_INO, b"outside", 0o755, 0, 0).ino
    out_file = new_file(store, outside, b"o")
    return {
        "create": lambda: store.create(s["a"], b"new", 0o644, 0, 0, SESSION),
        "mkdir": lambda: store.mkdir(s["a"], b"new", 0o755, 0, 0),
        "mknod": lambda: store.mknod(s["a"], b"new", stat.S_IFIFO | 0o644, 0, 0, 0),
        "symlink": lambda: store.symlink(s["a"], b"new", b"x", 0, 0),
        "link into": lambda: store.link(out_file, s["a"], b"new"),
        "link out": lambda: store.link(s["f1"], outside, b"new"),
        "unlink": lambda: store.unlink(s["a"], b"f1"),
        "rmdir": lambda: store.rmdir(s["a"], b"b"),
        "rmdir top": lambda: store.rmdir(s["voldir"], b"s1"),
        "rmdir .snapshots": lambda: store.rmdir(ROOT_INO, b".snapshots"),
        "rename within": lambda: store.rename(s["a"], b"f1", s["a"], b"g", 0),
        "rename out": lambda: store.rename(s["a"], b"f1", outside, b"g", 0),
        "rename into": lambda: store.rename(outside, b"o", s["a"], b"g", 0),
        "rename over": lambda: store.rename(outside, b"o", s["a"], b"f1", 0),
        "exchange": lambda: store.rename(outside, b"o", s["a"], b"f1", RENAME_EXCHANGE),
        "rename top": lambda: store.rename(s["voldir"], b"s1", s["voldir"], b"s9", 0),
        "rename .snapshots": lambda: store.rename(ROOT_INO, b".snapshots", ROOT_INO, b"x", 0),
        "chmod": lambda: store.setattr(s["f1"], mode=0o777),
        "chown": lambda: store.setattr(s["top"], uid=5),
        "truncate": lambda: store.setattr(s["f1"], size=0),
        "utimes": lambda: store.setattr(s["a"], atime_ns=1, mtime_ns=1),
        "open for write": lambda: store.open(s["f1"], SESSION),
        "open truncating": lambda: store.open(s["f1"], SESSION, truncate=True),
        "commit_write": lambda: write(store, chunks, s["f1"], cid(9)),
        "setxattr": lambda: store.setxattr(s["f2"], b"user.k", b"w"),
        "removexattr": lambda: store.removexattr(s["f2"], b"user.k"),
        "remove_tree": lambda: store.remove_tree(s["voldir"], b"s1"),
        "remove_tree inside": lambda: store.remove_tree(s["a"], b"b"),
        "put_object": lambda: store.put_object(
            s["top"],
            [b"a"],
            b"obj",
            mode=0o644,
            uid=0,
            gid=0,
            size=0,
            mtime_ns=1,
            blocks=[],
            inline=b"",
            xattrs={},
            chunk_exists=chunks.__contains__,
        ),
        "put_object over": lambda: store.put_object(
            s["a"],
            [],
            b"f1",
            mode=0o644,
            uid=0,
            gid=0,
            size=0,
            mtime_ns=1,
            blocks=[],
            inline=b"",
            xattrs={},
            chunk_exists=chunks.__contains__,
        ),
        "make_dirs": lambda: store.make_dirs(s["top"], [b"a", b"new"], mode=0o755, uid=0, gid=0),
        "snapshot into": lambda: store.snapshot(outside, s["a"], b"new", uid=0, gid=0),
        "mkdir in /.snapshots": lambda: store.mkdir(s["snaps"], b"new", 0o755, 0, 0),
        "quota on a snapshot": lambda: store.set_quota(s["a"], {"max_bytes": 10}),
        "quota on its top": lambda: store.set_quota(s["top"], {"max_inodes": 10}),
    }


def test_every_change_inside_a_snapshot_is_refused(store: MetaStore, chunks: set[bytes]) -> None:
    volume(store, chunks)
    store.create_snapshot("data", "s1")
    s = snap_inos(store, "s1")
    before = tree(store, s["snaps"])
    refused = []
    for what, change in _mutations(store, s, chunks).items():
        with pytest.raises(ReadOnly):
            change()
        refused.append(what)
    assert tree(store, s["snaps"]) == before
    assert store.getattr(s["f1"]).size == BS
    # Not even atime moves on a read.
    atime = store.getattr(s["f1"]).atime_ns
    store.open_events([["open", s["f1"]], ["release", s["f1"]]], SESSION)
    assert store.getattr(s["f1"]).atime_ns == atime
    assert len(refused) == 35
    check(store, chunks)


def test_delete_drops_references_and_gc_collects(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    v = volume(store, chunks)
    store.create_snapshot("data", "s1")
    store.remove_tree(v["vol"], b"a")  # f1 (linked at the top too) and f2 live on in the snapshot only
    assert refcount(store, cid(2)) == 1
    assert store.delete_snapshot("data", "s1") > 0
    assert store.list_snapshots("data") == []
    assert refcount(store, cid(2)) == 0 and refcount(store, cid(3)) == 1
    collected: list[bytes] = []
    assert set(store.gc_collect(clock.t + 1, 100, collected.extend)) == {cid(2)}
    chunks.discard(cid(2))
    assert store.lookup(ROOT_INO, b".snapshots").is_dir  # the directories stay, empty
    with pytest.raises(NotFound):
        store.delete_snapshot("data", "s1")
    check(store, chunks)


def test_restore_rolls_the_whole_volume_back(store: MetaStore, chunks: set[bytes]) -> None:
    v = volume(store, chunks)
    store.setattr(v["vol"], mode=0o750)
    expected = tree(store, v["vol"])
    store.create_snapshot("data", "s1")
    # Change everything: remove, add, rewrite, chmod.
    store.remove_tree(v["vol"], b"a")
    write(store, chunks, v["top"], cid(7))
    new_file(store, v["vol"], b"added")
    store.mkdir(v["vol"], b"newdir", 0o755, 0, 0)
    store.setattr(v["vol"], mode=0o700)
    attr = store.restore_snapshot("data", "s1")
    assert attr.ino == v["vol"] == (store.get_volume("data") or {})["ino"]  # the volume directory stays
    assert attr.mode == stat.S_IFDIR | 0o750
    assert tree(store, v["vol"]) == expected
    # The restored tree is writable again; the snapshot is unchanged and still read-only.
    a = store.lookup(v["vol"], b"a").ino
    f1 = store.lookup(a, b"f1").ino
    write(store, chunks, f1, cid(8))
    store.unlink(a, b"f1")
    s = snap_inos(store, "s1")
    assert store.read_map(s["f1"]).blocks[0].chunk_id == cid(1)
    with pytest.raises(ReadOnly):
        store.unlink(s["a"], b"f1")
    assert refcount(store, cid(7)) == 0  # the rewritten top's data went with the rollback
    check(store, chunks)


def test_restore_one_path_and_clone(store: MetaStore, chunks: set[bytes]) -> None:
    v = volume(store, chunks)
    store.create_snapshot("data", "s1")
    store.remove_tree(v["vol"], b"a")
    attr = store.restore_snapshot_path("data", "s1", [b"a", b"b"], v["vol"], b"b-again")
    assert attr.is_dir and tree(store, attr.ino) == tree(store, snap_inos(store, "s1")["b"])
    new_file(store, attr.ino, b"writable")
    f = store.restore_snapshot_path("data", "s1", [b"a", b"f1"], v["vol"], b"f1-again")
    assert f.nlink == 1 and store.read_map(f.ino).blocks[0].chunk_id == cid(1)
    write(store, chunks, f.ino, cid(5))
    with pytest.raises(Exists):
        store.restore_snapshot_path("data", "s1", [b"top"], v["vol"], b"f1-again")
    with pytest.raises(NotFound):
        store.restore_snapshot_path("data", "s1", [b"nope"], v["vol"], b"x")
    with pytest.raises(ReadOnly):
        store.restore_snapshot_path("data", "s1", [b"top"], snap_inos(store, "s1")["a"], b"x")
    doc = store.clone_snapshot("data", "s1", "copy")
    assert doc["policy"]["replication"] == 1 and (store.get_volume("copy") or {})["ino"] == doc["ino"]
    assert tree(store, doc["ino"]) == tree(store, snap_inos(store, "s1")["top"])
    new_file(store, doc["ino"], b"writable")
    store.unlink(doc["ino"], b"top")
    with pytest.raises(Exists):
        store.clone_snapshot("data", "s1", "copy")
    # f1 lives on in the volume (as f1-link), the snapshot and the clone; f1-again was rewritten.
    assert refcount(store, cid(1)) == 3
    check(store, chunks)


def test_dump_carries_the_registry_and_the_flag(
    store: MetaStore, chunks: set[bytes], tmp_path: Path, clock: Clock
) -> None:
    volume(store, chunks)
    store.create_snapshot("data", "s1", origin="daily")
    out = io.BytesIO()
    write_dump(location(tmp_path / "meta.db")[0], out, secret=b"k" * 32, engine=engine())
    load_dump(
        io.BytesIO(out.getvalue()),
        location(tmp_path / "other.db")[0],
        secret=b"k" * 32,
        block_size=BS,
        engine=engine(),
    )
    other = open_meta(tmp_path / "other.db", block_size=BS, now_ns=clock)
    try:
        assert [(d["name"], d["origin"]) for d in other.list_snapshots()] == [("s1", "daily")]
        s = snap_inos(other, "s1")
        with pytest.raises(ReadOnly):
            other.unlink(s["a"], b"f1")
        check(other, chunks)
    finally:
        other.close()


def test_fsck_finds_a_registry_row_without_its_tree(store: MetaStore, chunks: set[bytes]) -> None:
    v = volume(store, chunks)
    store.create_snapshot("data", "s1")
    with store._write():
        store._db.execute("INSERT INTO snapshots VALUES ('data', 'ghost', ?, 1, 'manual', 0, 0)", (v["vol"],))
    problems = store.fsck(chunks.__contains__, repair=True)
    assert len(problems) == 1 and "snapshot 'ghost'" in problems[0]
    assert [d["name"] for d in store.list_snapshots("data")] == ["s1"]
    check(store, chunks)


def test_snapshots_taken_before_they_were_read_only_are_adopted(store: MetaStore, chunks: set[bytes]) -> None:
    """What the old admin route made: a writable copy at /.snapshots/VOLUME/NAME, unregistered."""
    v = volume(store, chunks)
    parent = store.make_dirs(ROOT_INO, [b".snapshots", b"data"], mode=0o755, uid=0, gid=0).ino
    store.snapshot(v["vol"], parent, b"old", uid=0, gid=0)
    store.create_snapshot("data", "new")
    assert [d["name"] for d in store.list_snapshots("data")] == ["old", "new"]
    old = snap_inos(store, "old")
    with pytest.raises(ReadOnly):
        store.unlink(old["a"], b"f1")
    store.delete_snapshot("data", "old")
    check(store, chunks)


def test_snapshot_of_100k_files_timing(store: MetaStore, chunks: set[bytes]) -> None:
    """How long one snapshot transaction holds the writer (reported in README)."""
    if engine() != "sqlite":
        pytest.skip("the figure is for SQLite")
    vol = store.create_volume("big", {}, mode=0o755, uid=0, gid=0).ino
    db = store._db
    # Bulk-built tree: 100 directories of 1000 one-block files (the store's API would take minutes).
    with store._write() as now:
        for d in range(100):
            dino = store.mkdir(vol, f"d{d}".encode(), 0o755, 0, 0).ino
            for f in range(1000):
                ino = db.execute(
                    "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, "
                    "ctime_ns, generation, symlink, inline) "
                    "VALUES (?, 1, 0, 0, 0, ?, 1000, ?, ?, ?, 0, NULL, NULL) RETURNING ino",
                    (stat.S_IFREG | 0o644, BS, now, now, now),
                ).fetchone()[0]
                db.execute(
                    "INSERT INTO dentries (parent, name, ino, is_dir) VALUES (?, ?, ?, 0)",
                    (dino, f"f{f}".encode(), ino),
                )
                chunk = cid(d * 1000 + f)
                db.execute("INSERT INTO blocks VALUES (?, 0, ?, ?, 1000)", (ino, chunk, BS))
                db.execute(
                    "INSERT INTO chunks (chunk_id, refcount, stored_bytes) VALUES (?, 1, 1000)", (chunk,)
                )
                chunks.add(chunk)
    t0 = time.monotonic()
    doc = store.create_snapshot("big", "s")
    took = time.monotonic() - t0
    assert doc["files"] == 100_000
    print(f"\nsnapshot of 100k files: {took:.2f} s")
    t0 = time.monotonic()
    store.delete_snapshot("big", "s")
    print(f"delete of the 100k-file snapshot: {time.monotonic() - t0:.2f} s")
    # As the daemon takes it: batches of BATCH_ENTRIES names, each its own short transaction.
    t0 = time.monotonic()
    src = store.snapshot_build_begin("big", "b")
    reader = store.reader()
    reader.snapshot_read_open()
    walk = TreeWalk(reader, src)
    longest = 0.0
    while (batch := walk.next_batch(BATCH_ENTRIES)) is not None:
        t1 = time.monotonic()
        walk.copied(store.snapshot_build_batch("big", "b", *batch))
        longest = max(longest, time.monotonic() - t1)
    reader.snapshot_read_close()
    reader.close()
    assert store.snapshot_build_finish("big", "b")["files"] == 100_000
    print(
        f"batched snapshot of 100k files: {time.monotonic() - t0:.2f} s, "
        f"longest transaction {longest * 1000:.1f} ms"
    )


# -- snapshots copied in bounded batches (daemon/service/snapshots.py drives them) ------------------


def build(
    store: MetaStore, name: str, limit: int, between: Callable[[int], None] = lambda n: None
) -> dict[str, Any]:
    """Snapshot ``name`` of "data" as the daemon takes it: ``limit`` names a batch, read in one
    read snapshot on a second connection; ``between(n)`` runs before batch n is written."""
    src = store.snapshot_build_begin("data", name)
    reader = store.reader()
    reader.snapshot_read_open()
    walk = TreeWalk(reader, src)
    try:
        n = 0
        while (batch := walk.next_batch(limit)) is not None:
            between(n)
            walk.copied(store.snapshot_build_batch("data", name, *batch))
            n += 1
    finally:
        reader.snapshot_read_close()
        reader.close()
    assert n > 3  # the tree really went in several batches
    return store.snapshot_build_finish("data", name)


def test_batched_snapshot_is_the_tree_as_it_began(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    v = volume(store, chunks)
    for i in range(5):
        write(store, chunks, new_file(store, v["b"], b"g%d" % i), cid(10 + i))
    expected = tree(store, v["vol"])
    one_shot = store.create_snapshot("data", "whole")
    seen: list[Any] = []

    def meanwhile(n: int) -> None:
        # Other writers go on between batches: none of it may show in the snapshot, and no chunk
        # the read snapshot names may be collected while the copy is under way.
        if n == 0:
            store.delete_snapshot("data", "whole")
            store.remove_tree(v["vol"], b"a")  # f1 lives on at f1-link, f2 and g* in the snapshot only
            write(store, chunks, v["top"], cid(20))  # cid(3) loses its last live reference
            store.mkdir(v["vol"], b"late", 0o755, 0, 0)
        seen.append(store.gc_collect(clock.t + 1, 100, lambda ids: None))
        with pytest.raises(NotFound):  # the partial copy is nowhere in the namespace
            store.lookup(store.lookup(store.lookup(ROOT_INO, b".snapshots").ino, b"data").ino, b"s")

    doc = build(store, "s", 2, meanwhile)
    assert all(ids == [] for ids in seen)  # GC waited
    assert (doc["files"], doc["bytes"]) == (one_shot["files"], one_shot["bytes"])
    s = snap_inos(store, "s")
    assert doc["ino"] == s["top"] and tree(store, s["top"]) == expected
    assert store.getattr(s["f1"]).nlink == 2 and store.lookup(s["top"], b"f1-link").ino == s["f1"]
    assert store.getxattr(s["f2"], b"user.k") == b"v"
    assert store.readlink(store.lookup(s["top"], b"sym").ino) == b"a/f1"
    assert refcount(store, cid(3)) == 1 and refcount(store, cid(2)) == 1 and refcount(store, cid(12)) == 1
    assert [(d["name"], d["files"]) for d in store.list_snapshots("data")] == [("s", 9)]
    assert store.snapshot_builds() == []
    with pytest.raises(ReadOnly):
        store.unlink(s["b"], b"f2")
    check(store, chunks)
    store.delete_snapshot("data", "s")  # now GC may take what only the snapshot held
    assert set(store.gc_collect(clock.t + 1, 100, lambda ids: None)) >= {cid(2), cid(3), cid(12)}
    chunks.difference_update({cid(2), cid(3)} | {cid(10 + i) for i in range(5)})
    check(store, chunks)


def test_a_stalled_build_is_given_up(store: MetaStore, chunks: set[bytes], clock: Clock) -> None:
    v = volume(store, chunks)
    src = store.snapshot_build_begin("data", "s")
    with pytest.raises(Exists):  # one build per name, and no snapshot of that name meanwhile
        store.snapshot_build_begin("data", "s")
    with pytest.raises(Exists):
        store.create_snapshot("data", "s")
    reader = store.reader()
    reader.snapshot_read_open()
    walk = TreeWalk(reader, src)
    batch = walk.next_batch(2)
    assert batch is not None
    walk.copied(store.snapshot_build_batch("data", "s", *batch))
    assert refcount(store, cid(3)) == 2  # top's block map was in the first batch
    assert [b["name"] for b in store.snapshot_builds()] == ["s"]
    check(store, chunks)  # the partial copy is sound where it sits
    assert store.snapshot_build_expire() == []
    clock.t += BUILD_STALE_NS + 1  # the builder died
    store.unlink(v["vol"], b"top")
    assert store.gc_collect(clock.t + 1, 100, lambda ids: None) == []  # the partial copy holds cid(3)
    assert store.snapshot_build_expire() == [("data", "s")]
    batch = walk.next_batch(2)
    assert batch is not None
    with pytest.raises(NotFound):  # a late builder finds its build gone
        store.snapshot_build_batch("data", "s", *batch)
    reader.snapshot_read_close()
    reader.close()
    assert store.snapshot_builds() == [] and refcount(store, cid(3)) == 0
    assert store.gc_collect(clock.t + 1, 100, lambda ids: None) == [cid(3)]  # GC runs again
    chunks.discard(cid(3))
    check(store, chunks)
    assert build(store, "s", 1)["files"] == 3  # the name is free again
    assert store.snapshot_build_abort("data", "s") is False
    check(store, chunks)
