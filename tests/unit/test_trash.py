"""The per-volume trash in the metadata store, on both engines: unlink, rename-over and S3
overwrite move the file to trash (outside its quota domain), restore (to the original place or
elsewhere, refused on a conflict or past a quota), expiry by the volume's retention, emptying,
dumps and fsck."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.meta import MetaStore
from daemon.meta.dump import load_dump, write_dump
from daemon.meta.trash import DAY_NS, trash_days_of
from dfs.core.errors import Exists, NotFound, QuotaExceeded
from dfs.core.namespace import BlockRef
from tests.metastores import Clock, cid, location, open_meta

pytestmark = pytest.mark.usefixtures("meta_engine")
BS = 4096
SESSION = "s1"


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=BS, now_ns=clock)
    yield s
    s.close()


def new_file(store: MetaStore, parent: int, name: bytes, size: int, chunks: set[bytes]) -> int:
    ino = store.create(parent, name, 0o644, 0, 0, SESSION).ino
    blocks = []
    for idx in range(-(-size // BS)):
        c = cid(len(chunks) + 1)
        chunks.add(c)
        blocks.append(BlockRef(idx, c, min(BS, size - idx * BS), 100))
    store.commit_write(
        ino, size=size, mtime_ns=5, blocks=blocks, inline=None, chunk_exists=chunks.__contains__
    )
    store.release(ino, SESSION)
    return ino


def volume(store: MetaStore, name: str = "vol", **policy: Any) -> int:
    return store.create_volume(name, policy, mode=0o755, uid=0, gid=0).ino


def used(store: MetaStore, vol: int) -> tuple[int, int]:
    q = store.get_quota(vol)
    assert q is not None
    return q["used_bytes"], q["used_inodes"]


def refcounts(store: MetaStore) -> dict[bytes, int]:
    return {bytes(c): int(n) for c, n in store._db.execute("SELECT chunk_id, refcount FROM chunks")}


def check(store: MetaStore, chunks: set[bytes]) -> None:
    assert store.fsck(chunks.__contains__, repair=False) == []


def test_trash_days_of_policy_wins_over_the_default() -> None:
    assert trash_days_of({}, 2.0) == 2.0
    assert trash_days_of({"trash_days": 0}, 2.0) == 0.0
    assert trash_days_of({"trash_days": 0.5}, 0.0) == 0.5
    assert trash_days_of({"trash_days": None}, 3.0) == 3.0


def test_unlink_goes_to_trash_and_restores(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, trash_days=7)
    d = store.mkdir(vol, b"d", 0o755, 0, 0).ino
    ino = new_file(store, d, b"f", 3 * BS, chunks)
    before_refs = refcounts(store)
    base = used(store, vol)
    store.unlink(d, b"f")
    with pytest.raises(NotFound):
        store.lookup(d, b"f")
    assert used(store, vol) == (base[0] - 3 * BS, base[1] - 1)  # the quota got it back
    assert refcounts(store) == before_refs  # chunks stay referenced
    [entry] = store.trash_list("vol")
    assert entry["id"] == ino and entry["name"] == "f" and entry["path"] == "/vol/d/f"
    assert entry["size"] == 3 * BS and entry["volume"] == "vol"
    assert store.trash_usage() == [
        {"volume": "vol", "volume_ino": vol, "entries": 1, "bytes": 3 * BS, "stored_bytes": 300}
    ]
    check(store, chunks)
    store.trash_restore("vol", ino)
    assert store.lookup(d, b"f").ino == ino
    assert store.getattr(ino).size == 3 * BS
    assert used(store, vol) == base
    assert store.trash_list() == []
    check(store, chunks)


def test_no_trash_without_retention(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store)
    ino = new_file(store, vol, b"f", BS, chunks)
    store.unlink(vol, b"f")
    assert store.trash_list() == []
    with pytest.raises(NotFound):
        store.getattr(ino)
    check(store, chunks)


def test_cluster_default_applies(tmp_path: Path, clock: Clock, chunks: set[bytes]) -> None:
    s = open_meta(tmp_path / "d.db", block_size=BS, now_ns=clock, default_trash_days=1.0)
    try:
        vol = volume(s)
        off = volume(s, "off", trash_days=0)
        new_file(s, vol, b"f", BS, chunks)
        new_file(s, off, b"g", BS, chunks)
        s.unlink(vol, b"f")
        s.unlink(off, b"g")
        assert [e["name"] for e in s.trash_list()] == ["f"]
        check(s, chunks)
    finally:
        s.close()


def test_rename_over_and_put_object_overwrite_go_to_trash(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, trash_days=1)
    old = new_file(store, vol, b"old", BS, chunks)
    new_file(store, vol, b"new", 2 * BS, chunks)
    store.rename(vol, b"new", vol, b"old", 0)
    [entry] = store.trash_list("vol")
    assert entry["id"] == old and entry["name"] == "old"
    first = store.lookup(vol, b"old").ino
    store.put_object(
        vol, [], b"old", mode=0o644, uid=0, gid=0, size=3, mtime_ns=1, blocks=[], inline=b"abc",
        xattrs={}, chunk_exists=chunks.__contains__,
    )  # fmt: skip
    assert {e["id"] for e in store.trash_list("vol")} == {old, first}
    # The original name is taken now: a restore there is refused, one elsewhere works.
    with pytest.raises(Exists):
        store.trash_restore("vol", first)
    done = store.trash_restore("vol", first, "/vol/back")
    assert done["restored_to"] == "/vol/back"
    assert store.lookup(vol, b"back").ino == first
    check(store, chunks)


def test_restore_refused_when_parent_gone(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, trash_days=1)
    d = store.mkdir(vol, b"d", 0o755, 0, 0).ino
    ino = new_file(store, d, b"f", 10, chunks)
    store.unlink(d, b"f")
    store.rmdir(vol, b"d")  # an empty directory is not kept
    with pytest.raises(NotFound, match="--to"):
        store.trash_restore("vol", ino)
    with pytest.raises(NotFound):
        store.trash_restore("vol", ino + 1000)
    store.trash_restore("vol", ino, "/vol/f")
    check(store, chunks)


def test_open_file_keeps_working_in_trash(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, trash_days=1)
    ino = store.create(vol, b"f", 0o644, 0, 0, SESSION).ino
    store.unlink(vol, b"f")
    assert store.getattr(ino).nlink == 1
    store.release(ino, SESSION)
    store.trash_empty("vol")
    with pytest.raises(NotFound):
        store.getattr(ino)
    check(store, chunks)


def test_restore_past_the_quota_is_refused(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, trash_days=1, quota_bytes=4 * BS)
    ino = new_file(store, vol, b"f", 3 * BS, chunks)
    store.unlink(vol, b"f")
    assert used(store, vol)[0] == 0
    new_file(store, vol, b"g", 2 * BS, chunks)  # fits only because the trash does not count
    with pytest.raises(QuotaExceeded):
        store.trash_restore("vol", ino, "/vol/f")
    assert store.trash_list("vol")[0]["id"] == ino  # nothing changed
    store.unlink(vol, b"g")
    store.trash_restore("vol", ino)
    assert used(store, vol)[0] == 3 * BS
    check(store, chunks)


def test_expiry_follows_the_volume_retention(store: MetaStore, clock: Clock, chunks: set[bytes]) -> None:
    vol = volume(store, trash_days=1)
    volume(store, "long", trash_days=10)
    long = store.get_volume("long")
    assert long is not None
    a = new_file(store, vol, b"a", BS, chunks)
    b = new_file(store, long["ino"], b"b", BS, chunks)
    store.unlink(vol, b"a")
    store.unlink(long["ino"], b"b")
    assert store.trash_expire() == 0
    clock.t += 2 * DAY_NS
    assert store.trash_expire() == 1
    assert [e["id"] for e in store.trash_list()] == [b]
    with pytest.raises(NotFound):
        store.getattr(a)
    zero = {bytes(c) for (c,) in store._db.execute("SELECT chunk_id FROM chunks WHERE refcount = 0")}
    assert len(zero) == 1  # a's chunk awaits GC, b's is still referenced
    check(store, chunks)
    # Emptying: older-than spares recent entries.
    assert store.trash_empty("long", 5) == {"purged": 0, "more": False}
    assert store.trash_empty(None, None) == {"purged": 1, "more": False}
    assert store.trash_list() == []
    check(store, chunks)


def test_trash_survives_a_dump(store: MetaStore, tmp_path: Path, clock: Clock, chunks: set[bytes]) -> None:
    vol = volume(store, trash_days=1)
    ino = new_file(store, vol, b"f", BS, chunks)
    store.unlink(vol, b"f")
    src, kind = location(tmp_path / "meta.db")
    buf = io.BytesIO()
    write_dump(src, buf, secret=b"k" * 32, engine=kind)
    dst, dst_kind = location(tmp_path / "loaded.db")
    buf.seek(0)
    load_dump(buf, dst, secret=b"k" * 32, block_size=BS, engine=dst_kind)
    loaded = open_meta(tmp_path / "loaded.db", block_size=BS, now_ns=clock)
    try:
        assert [e["id"] for e in loaded.trash_list("vol")] == [ino]
        loaded.trash_restore("vol", ino)
        check(loaded, chunks)
    finally:
        loaded.close()


def test_fsck_finds_and_repairs_trash_rows(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, trash_days=1)
    ino = new_file(store, vol, b"f", BS, chunks)
    store.unlink(vol, b"f")
    store._db.execute("BEGIN")
    store._db.execute("DELETE FROM trash WHERE ino = ?", (ino,))
    store._db.execute("INSERT INTO trash VALUES (999999, ?, ?, CAST('x' AS BLOB), 1, 0)", (vol, vol))
    store._db.execute("COMMIT")
    problems = store.fsck(chunks.__contains__, repair=True)
    assert any("999999" in p for p in problems) and any("without a trash entry" in p for p in problems)
    check(store, chunks)
    [entry] = store.trash_list("vol")
    assert entry["id"] == ino
    store.trash_restore("vol", ino, "/vol/again")
    check(store, chunks)
