"""S3 object lock in the metadata store, on both engines: a locked inode refuses every namespace and
data path (unlink, rename both ways, link, setattr, write-open, commit, ACL xattrs, the mirror
xattr, remove_tree, a snapshot restore, a permanent version delete), until its retention passes
on the store's clock; GOVERNANCE gives way to bypass, COMPLIANCE and legal holds never; a new
version over a locked one keeps it as a version; versioning stays Enabled; dumps keep locks;
purging drops the row.  fsck clean after each."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.meta import MetaStore
from daemon.meta.dump import load_dump, write_dump
from daemon.meta.objlock import LOCKED
from dfs.core import acl, s3objlock
from dfs.core.errors import InvalidArgument, NoAttribute, NotPermitted
from dfs.core.s3objlock import XA_LOCK, XA_LOCK_REQUEST
from tests.metastores import Clock, location, open_meta

pytestmark = pytest.mark.usefixtures("meta_engine")
BS = 4096
SESSION = "s1"


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=BS, now_ns=clock)
    yield s
    s.close()


def lock_bucket(store: MetaStore, default: dict[str, object] | None = None) -> int:
    ino = store.create_volume("bkt", {}, mode=0o755, uid=0, gid=0).ino
    store.versioning_set(ino, "Enabled")
    store.objlock_config_set(ino, default or {})
    return ino


def put(store: MetaStore, bucket: int, key: bytes, data: bytes, request: dict[str, object] | None) -> int:
    names = key.split(b"/")
    xattrs = {} if request is None else {XA_LOCK_REQUEST: s3objlock.encode_request(request, 1.0)}
    return store.put_object(
        bucket, names[:-1], names[-1], mode=0o644, uid=0, gid=0, size=len(data), mtime_ns=1,
        blocks=[], inline=data, xattrs=xattrs, chunk_exists=lambda _: True,
    ).ino  # fmt: skip


def mode_of(store: MetaStore, ino: int) -> int:
    return int(store._db.execute("SELECT mode FROM inodes WHERE ino = ?", (ino,)).fetchone()[0])


def check(store: MetaStore) -> None:
    assert store.fsck(lambda _: True, repair=False) == []


def test_a_locked_inode_refuses_every_path_until_its_retention_ends(store: MetaStore, clock: Clock) -> None:
    b = lock_bucket(store)
    until = clock.t + 10**9  # one second on the store's clock
    ino = put(store, b, b"d/f", b"data", {"mode": "COMPLIANCE", "until_ns": until, "hold": None})
    d = store.lookup(b, b"d").ino
    other = put(store, b, b"d/g", b"other", None)
    assert mode_of(store, ino) & LOCKED and not mode_of(store, other) & LOCKED
    assert store.getattr(ino).mode & LOCKED == 0  # never shown
    assert s3objlock.decode_lock(store.getxattr(ino, XA_LOCK)) == s3objlock.ObjectLock(
        "COMPLIANCE", until, False
    )
    refusals = [
        lambda: store.unlink(d, b"f"),
        lambda: store.rename(d, b"f", d, b"moved", 0),
        lambda: store.rename(d, b"g", d, b"f", 0),
        lambda: store.link(ino, d, b"hard"),
        lambda: store.setattr(ino, size=0),
        lambda: store.setattr(ino, mode=0o600),
        lambda: store.open(ino, SESSION, truncate=False),
        lambda: store.commit_write(
            ino, size=1, mtime_ns=2, blocks=[], inline=b"x", chunk_exists=lambda _: True
        ),
        lambda: store.setxattr(ino, acl.ACCESS, b"", 0),
        lambda: store.setxattr(ino, XA_LOCK, b"{}", 0),
        lambda: store.removexattr(ino, XA_LOCK),
        lambda: store.remove_tree(b, b"d"),
        lambda: store.remove_tree(d, b"f"),
        lambda: store.versions_delete(b, b"d/f", store.versions_get(b, b"d/f", None)["version_id"], True),
    ]
    for refuse in refusals:
        with pytest.raises(NotPermitted):
            refuse()
    store.setxattr(ino, b"user.s3.tagging", b"k=v", 0)  # tags may change
    assert store.read_map(ino).inline == b"data"
    with pytest.raises(InvalidArgument, match="object lock"):
        store.versioning_set(b, "Suspended")
    check(store)
    clock.t = until  # the retention ends on the metadata's clock
    store.rename(d, b"f", d, b"moved", 0)
    store.unlink(d, b"moved")  # in an Enabled bucket: a version now (and a delete marker)
    check(store)


def test_governance_bypass_compliance_and_legal_hold(store: MetaStore, clock: Clock) -> None:
    b = lock_bucket(store)
    far = clock.t + 3600 * 10**9
    gov = put(store, b, b"gov", b"g", {"mode": "GOVERNANCE", "until_ns": far, "hold": None})
    with pytest.raises(NotPermitted):
        store.objlock_retention_set(b, gov, "GOVERNANCE", far - 1, False)
    store.objlock_retention_set(b, gov, "GOVERNANCE", far + 1, False)  # extending: always
    store.objlock_retention_set(b, gov, None, None, True)  # removed, with bypass
    assert store.objlock_get(gov) is None and not mode_of(store, gov) & LOCKED
    with pytest.raises(NoAttribute):
        store.getxattr(gov, XA_LOCK)
    comp = put(store, b, b"comp", b"c", {"mode": "COMPLIANCE", "until_ns": far, "hold": True})
    for mode, until in (("COMPLIANCE", far - 1), ("GOVERNANCE", far + 1), (None, None)):
        with pytest.raises(NotPermitted):
            store.objlock_retention_set(b, comp, mode, until, True)
    # A new version over the locked one: allowed, the locked one is kept as a version.
    newer = put(store, b, b"comp", b"newer", None)
    rows = store.versions_list(b, b"comp", b"", 0, 10)
    assert [r[4][0] for r in rows] == [comp] and newer != comp
    vid = rows[0][1]
    with pytest.raises(NotPermitted):
        store.versions_delete(b, b"comp", vid, True)
    clock.t = far  # retention over, the legal hold stays
    with pytest.raises(NotPermitted):
        store.versions_delete(b, b"comp", vid, False)
    store.objlock_hold_set(b, comp, False)
    store.versions_delete(b, b"comp", vid, False)
    assert store._db.execute("SELECT COUNT(*) FROM s3_object_locks").fetchone()[0] == 0  # purged with it
    check(store)


def test_default_retention_snapshot_restore_and_dump(store: MetaStore, clock: Clock, tmp_path: Path) -> None:
    b = lock_bucket(store, {"mode": "GOVERNANCE", "days": 2, "years": None})
    assert store.objlock_config_get(b) == {"mode": "GOVERNANCE", "days": 2, "years": None}
    start = clock.t
    ino = put(store, b, b"k", b"v", {})  # no explicit lock: the bucket's default, days of 1 s
    lock = store.objlock_get(ino)
    assert lock is not None and lock["mode"] == "GOVERNANCE"
    assert start + 2 * 10**9 <= lock["until_ns"] <= clock.t + 2 * 10**9
    with pytest.raises(InvalidArgument):  # a lock request where object lock is off
        other = store.create_volume("plain", {}, mode=0o755, uid=0, gid=0).ino
        put(store, other, b"k", b"v", {"mode": "GOVERNANCE", "until_ns": clock.t + 10**9, "hold": None})
    store.create_snapshot("bkt", "s1")
    with pytest.raises(NotPermitted):
        store.restore_snapshot("bkt", "s1")  # would replace the locked file
    src, kind = location(tmp_path / "meta.db")
    buf = io.BytesIO()
    write_dump(src, buf, secret=b"k" * 32, engine=kind)
    dst, dst_kind = location(tmp_path / "loaded.db")
    buf.seek(0)
    load_dump(buf, dst, secret=b"k" * 32, block_size=BS, engine=dst_kind)
    loaded = open_meta(tmp_path / "loaded.db", block_size=BS, now_ns=clock)
    try:
        assert loaded.objlock_get(ino) == lock and loaded.objlock_config_get(b) is not None
        with pytest.raises(NotPermitted):
            loaded.unlink(b, b"k")
    finally:
        loaded.close()
    clock.t = lock["until_ns"]
    store.restore_snapshot("bkt", "s1")
    check(store)


def test_fsck_finds_and_repairs_lock_rows(store: MetaStore, clock: Clock) -> None:
    b = lock_bucket(store)
    ino = put(store, b, b"k", b"v", {"mode": None, "until_ns": None, "hold": True})
    store._db.execute("BEGIN")
    store._db.execute("UPDATE inodes SET mode = mode & ? WHERE ino = ?", (~LOCKED, ino))
    store._db.execute(
        "INSERT INTO s3_object_locks (ino, mode, retain_until_ns, legal_hold, changed_ns) "
        "VALUES (999999, NULL, NULL, 1, 1)"
    )
    store._db.commit()
    found = store.fsck(lambda _: True, repair=True)
    assert len(found) == 2 and any("without its flag" in f for f in found), found
    check(store)
    with pytest.raises(NotPermitted):  # the lock holds again
        store.unlink(b, b"k")
