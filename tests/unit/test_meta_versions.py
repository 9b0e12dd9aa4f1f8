"""S3 bucket versioning in the metadata store, on both engines: unlink, rename-over and put_object
keep versions in an Enabled bucket (with delete markers for removals), Suspended replaces the
null version, a permanent removal of the latest makes the next one current, listing pages
against a model, trash loses to versioning, dumps and fsck."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.meta import MetaStore
from daemon.meta.dump import load_dump, write_dump
from daemon.meta.versions import NULL_VERSION, SEQ_ALL, XA_VERSION_ID
from dfs.core.errors import InvalidArgument, NotFound
from tests.metastores import Clock, location, open_meta

pytestmark = pytest.mark.usefixtures("meta_engine")
BS = 4096


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=BS, now_ns=clock)
    yield s
    s.close()


def put(store: MetaStore, bucket: int, key: bytes, data: bytes, vid: str | None = None) -> int:
    names = key.split(b"/")
    xattrs = {} if vid is None else {XA_VERSION_ID: vid.encode()}
    return store.put_object(
        bucket, names[:-1], names[-1], mode=0o644, uid=0, gid=0, size=len(data), mtime_ns=1,
        blocks=[], inline=data, xattrs=xattrs, chunk_exists=lambda _: True,
    ).ino  # fmt: skip


def content(store: MetaStore, ino: int) -> bytes:
    row = store._db.execute("SELECT inline FROM inodes WHERE ino = ?", (ino,)).fetchone()
    return bytes(row[0] or b"")


def bucket(store: MetaStore, status: str | None = "Enabled", **policy: Any) -> int:
    ino = store.create_volume("bkt", policy, mode=0o755, uid=0, gid=0).ino
    if status is not None:
        store.versioning_set(ino, status)
    return ino


def rows(store: MetaStore, b: int, key: bytes) -> list[tuple[str, bool]]:
    """(version id, is a marker) of ``key``'s rows, newest first."""
    out = store.versions_list(b, key, key, SEQ_ALL, 1000)
    return [(r[1], r[4] is None) for r in out if r[0] == key]


def check(store: MetaStore) -> None:
    assert store.fsck(lambda _: True, repair=False) == []


def test_status_needs_a_volume_and_a_known_state(store: MetaStore) -> None:
    plain = store.mkdir(1, b"plain", 0o755, 0, 0).ino
    with pytest.raises(InvalidArgument, match="volume"):
        store.versioning_set(plain, "Enabled")
    b = bucket(store, None)
    assert store.versioning_get(b) is None
    with pytest.raises(InvalidArgument):
        store.versioning_set(b, "Disabled")
    store.versioning_set(b, "Suspended")
    assert store.versioning_get(b) == "Suspended"


def test_enabled_overwrite_and_delete_keep_versions(store: MetaStore) -> None:
    b = bucket(store)
    v1 = put(store, b, b"d/k", b"one", "a" * 32)
    put(store, b, b"d/k", b"two", "b" * 32)
    assert rows(store, b, b"d/k") == [("a" * 32, False)]
    got = store.versions_get(b, b"d/k", "a" * 32)
    assert got["ino"] == v1 and not got["latest"] and content(store, v1) == b"one"
    assert store.versions_get(b, b"d/k", None)["version_id"] == "b" * 32
    store.unlink(store.lookup(b, b"d").ino, b"k")  # as a mount does: a delete marker
    [(marker, is_marker), second, first] = rows(store, b, b"d/k")
    assert is_marker and second == ("b" * 32, False) and first == ("a" * 32, False)
    latest = store.versions_get(b, b"d/k", None)
    assert latest["delete_marker"] and latest["version_id"] == marker
    check(store)
    # Removing the marker for good brings the newest version back at the key's path.
    store.remove_empty_parents(b, [b"d"])
    done = store.versions_delete(b, b"d/k", marker)
    assert done["delete_marker"] and done["found"]
    back = store.resolve(b, [b"d", b"k"])
    assert content(store, back.ino) == b"two"
    assert rows(store, b, b"d/k") == [("a" * 32, False)]
    # Removing the current version for good makes the previous one current.
    store.versions_delete(b, b"d/k", "b" * 32)
    assert store.resolve(b, [b"d", b"k"]).ino == v1
    assert rows(store, b, b"d/k") == []
    check(store)


def test_mount_written_files_get_distinct_ids(store: MetaStore) -> None:
    b = bucket(store)
    put(store, b, b"k", b"one")  # no id: null
    put(store, b, b"k", b"two")  # the null version kept; the new file is null too...
    put(store, b, b"k", b"three")  # ...so when it is replaced it gets an id of its own
    ids = [vid for vid, _ in rows(store, b, b"k")]
    assert ids[1] == NULL_VERSION and len(ids) == 2 and len(ids[0]) == 32
    assert content(store, store.versions_get(b, b"k", NULL_VERSION)["ino"]) == b"one"
    assert content(store, store.versions_get(b, b"k", ids[0])["ino"]) == b"two"
    check(store)


def test_suspended_replaces_the_null_version(store: MetaStore) -> None:
    b = bucket(store)
    put(store, b, b"k", b"one", "a" * 32)
    store.versioning_set(b, "Suspended")
    put(store, b, b"k", b"two", NULL_VERSION)
    put(store, b, b"k", b"three", NULL_VERSION)  # the null "two" goes for good
    assert rows(store, b, b"k") == [("a" * 32, False)]
    done = store.versions_delete(b, b"k", None)
    assert done["version_id"] == NULL_VERSION and done["delete_marker"]
    assert rows(store, b, b"k") == [(NULL_VERSION, True), ("a" * 32, False)]
    with pytest.raises(NotFound):
        store.resolve(b, [b"k"])
    check(store)


def test_rename_over_keeps_a_version_and_versioning_beats_trash(store: MetaStore) -> None:
    b = bucket(store, trash_days=7)
    old = put(store, b, b"k", b"old", "a" * 32)
    put(store, b, b"tmp", b"new")
    store.rename(b, b"tmp", b, b"k", 0)
    assert rows(store, b, b"k") == [("a" * 32, False)]
    assert rows(store, b, b"tmp") == []  # a rename's source is no removal
    assert store.trash_list("bkt") == []
    assert store.versions_get(b, b"k", "a" * 32)["ino"] == old
    usage = store.versions_usage()
    assert usage == [
        {"bucket": "bkt", "bucket_ino": b, "versions": 1, "delete_markers": 0, "bytes": 3, "stored_bytes": 3}
    ]
    check(store)


def test_delete_of_a_missing_key_adds_a_marker_and_unknown_versions_are_not_found(store: MetaStore) -> None:
    b = bucket(store)
    done = store.versions_delete(b, b"nothing", None)
    assert done["delete_marker"] and rows(store, b, b"nothing") == [(done["version_id"], True)]
    assert store.versions_delete(b, b"nothing", "c" * 32)["found"] is False
    with pytest.raises(NotFound):
        store.versions_get(b, b"nothing", "c" * 32)
    check(store)


def test_listing_pages_match_a_model(store: MetaStore) -> None:
    b = bucket(store)
    rng = random.Random(7)
    keys = [f"p{i % 3}/k{i:02d}".encode() for i in range(30)]
    for n in range(150):
        key = rng.choice(keys)
        if rng.random() < 0.25:
            store.versions_delete(b, key, None)
        else:
            put(store, b, key, b"x" * (n % 7), f"{n:032d}")
    everything = store.versions_list(b, b"", b"", 0, 1000)
    model = sorted(everything, key=lambda r: (r[0], -r[2]))
    assert everything == model and len(model) > 100
    for prefix in (b"", b"p1/"):
        want = [r for r in model if r[0].startswith(prefix)]
        got: list[Any] = []
        after_key, after_seq = b"", 0
        while True:
            page = store.versions_list(b, prefix, after_key, after_seq, 7)
            got += page
            if len(page) < 7:
                break
            after_key, after_seq = page[-1][0], page[-1][2]
        assert got == want
    check(store)


def test_versions_survive_a_dump(store: MetaStore, tmp_path: Path, clock: Clock) -> None:
    b = bucket(store)
    put(store, b, b"k", b"one", "a" * 32)
    put(store, b, b"k", b"two", "b" * 32)
    src, kind = location(tmp_path / "meta.db")
    buf = io.BytesIO()
    write_dump(src, buf, secret=b"k" * 32, engine=kind)
    dst, dst_kind = location(tmp_path / "loaded.db")
    buf.seek(0)
    load_dump(buf, dst, secret=b"k" * 32, block_size=BS, engine=dst_kind)
    loaded = open_meta(tmp_path / "loaded.db", block_size=BS, now_ns=clock)
    try:
        assert loaded.versioning_get(b) == "Enabled"
        assert content(loaded, loaded.versions_get(b, b"k", "a" * 32)["ino"]) == b"one"
        check(loaded)
    finally:
        loaded.close()


def test_fsck_finds_and_repairs_version_rows(store: MetaStore) -> None:
    b = bucket(store)
    put(store, b, b"k", b"one", "a" * 32)
    put(store, b, b"k", b"two", "b" * 32)
    store._db.execute("BEGIN")
    store._db.execute(
        "INSERT INTO s3_versions VALUES (?, CAST('gone' AS BLOB), ?, 999999, 1, 1)", (b, "c" * 32)
    )
    store._db.execute("COMMIT")
    problems = store.fsck(lambda _: True, repair=True)
    assert any("999999" in p for p in problems)
    check(store)
    assert rows(store, b, b"k") == [("a" * 32, False)]


def test_truncating_open_keeps_the_old_content(store: MetaStore) -> None:
    b = bucket(store)
    ino = put(store, b, b"k", b"old", "a" * 32)
    store.open(ino, "s1", truncate=True)  # a mount overwriting the file in place
    store.release(ino, "s1")
    assert store.getattr(ino).size == 0
    kept = store.versions_get(b, b"k", "a" * 32)
    assert kept["ino"] != ino and content(store, kept["ino"]) == b"old"
    assert store.versions_get(b, b"k", None)["ino"] == ino
    empty = put(store, b, b"e", b"")
    store.open(empty, "s1", truncate=True)  # nothing to keep
    store.release(empty, "s1")
    assert rows(store, b, b"e") == []
    check(store)
