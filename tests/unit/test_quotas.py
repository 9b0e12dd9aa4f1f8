"""Directory quotas in the metadata store, on both engines: accounting on every path that
creates, grows, shrinks, moves or removes inodes, enforcement inside the transaction (also
against a racing writer), EXDEV across domains, nesting, fsck, dumps and the CLI's size parser."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.meta import MetaStore
from daemon.meta.dump import load_dump, write_dump
from dfs.cli.quota import format_size, parse_size
from dfs.core.errors import CrossDevice, InvalidArgument, NotPermitted, QuotaExceeded
from dfs.core.namespace import ROOT_INO, BlockRef
from tests.metastores import Clock, cid, engine, location, open_meta

pytestmark = pytest.mark.usefixtures("meta_engine")
BS = 4096
SESSION = "s1"


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=BS, now_ns=clock)
    yield s
    s.close()


class Writer:
    """Block commits with fresh chunks, the way the mount commits them."""

    def __init__(self, store: MetaStore, chunks: set[bytes], base: int = 0) -> None:
        self.store, self.chunks, self.n = store, chunks, base

    def write(self, ino: int, size: int, stored: int = 100) -> None:
        blocks = []
        for idx in range(-(-size // BS)):
            self.n += 1
            self.chunks.add(cid(self.n))
            blocks.append(BlockRef(idx, cid(self.n), min(BS, size - idx * BS), stored))
        self.store.commit_write(
            ino, size=size, mtime_ns=5, blocks=blocks, inline=None, chunk_exists=self.chunks.__contains__
        )


def new_file(store: MetaStore, parent: int, name: bytes) -> int:
    ino = store.create(parent, name, 0o644, 0, 0, SESSION).ino
    store.release(ino, SESSION)
    return ino


def usage(store: MetaStore, ino: int) -> tuple[int, int, int]:
    q = store.get_quota(ino)
    assert q is not None
    return q["used_bytes"], q["used_inodes"], q["used_stored_bytes"]


def check(store: MetaStore, chunks: set[bytes]) -> None:
    assert store.fsck(chunks.__contains__, repair=False) == []


def volume(store: MetaStore, name: str = "vol", **policy: Any) -> int:
    return store.create_volume(name, policy, mode=0o755, uid=0, gid=0).ino


def test_every_volume_has_an_accounting_row(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store)
    assert store.get_quota(vol) == {
        "ino": vol,
        "parent": None,
        "max_bytes": None,
        "max_inodes": None,
        "used_bytes": 0,
        "used_inodes": 1,  # the volume's directory itself
        "used_stored_bytes": 0,
    }
    # The quota row is the truth; a volume's policy shows its limits, whoever set them.
    store.set_quota(vol, {"max_bytes": 5000})
    doc = store.get_volume("vol")
    assert doc is not None and doc["policy"] == {"quota_bytes": 5000}
    store.update_volume("vol", {"quota_bytes": 7000, "quota_inodes": 9})
    q = store.get_quota(vol)
    assert q is not None and (q["max_bytes"], q["max_inodes"]) == (7000, 9)
    store.clear_quota(vol)
    doc = store.get_volume("vol")
    assert doc is not None and doc["policy"] == {"quota_bytes": None, "quota_inodes": None}
    check(store, chunks)


def test_bytes_limit_on_commit_truncate_and_inline(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, quota_bytes=3 * BS)
    w = Writer(store, chunks)
    f = new_file(store, vol, b"f")
    w.write(f, 2 * BS, stored=10)
    assert usage(store, vol) == (2 * BS, 2, 20)
    with pytest.raises(QuotaExceeded):
        w.write(f, 4 * BS)
    assert usage(store, vol) == (2 * BS, 2, 20)  # the refused commit changed nothing
    with pytest.raises(QuotaExceeded):
        store.setattr(f, size=3 * BS + 1)  # truncate up counts st_size
    store.setattr(f, size=3 * BS)  # exactly at the limit is allowed
    assert usage(store, vol)[0] == 3 * BS
    store.setattr(f, size=BS)  # shrinking gives the bytes back
    assert usage(store, vol) == (BS, 2, 10)
    g = new_file(store, vol, b"g")
    store.commit_write(g, size=50, mtime_ns=5, blocks=[], inline=b"x" * 50, chunk_exists=chunks.__contains__)
    assert usage(store, vol) == (BS + 50, 3, 60)
    # A limit below the usage refuses growth, never shrinking or removal.
    store.update_volume("vol", {"quota_bytes": 100})
    with pytest.raises(QuotaExceeded):
        store.setattr(g, size=51)
    store.setattr(f, size=10)
    store.unlink(vol, b"g")
    assert usage(store, vol) == (10, 2, 10)
    check(store, chunks)


def test_inode_limit_on_every_creating_call(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, quota_inodes=3)  # the directory itself and two more
    store.mkdir(vol, b"d", 0o755, 0, 0)
    store.symlink(vol, b"s", b"target", 0, 0)
    for make in (
        lambda: store.mknod(vol, b"n", 0o644, 0, 0, 0),
        lambda: store.create(vol, b"c", 0o644, 0, 0, SESSION),
        lambda: store.mkdir(vol, b"d2", 0o755, 0, 0),
        lambda: store.symlink(vol, b"s2", b"t", 0, 0),
        lambda: store.put_object(
            vol,
            [b"a", b"b"],
            b"o",
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
    ):
        with pytest.raises(QuotaExceeded):
            make()
    # A hard link adds a name, not an inode.
    store.unlink(vol, b"s")
    f = new_file(store, vol, b"f")
    store.link(f, vol, b"f2")
    assert usage(store, vol)[1] == 3
    check(store, chunks)


def test_put_object_replacing_in_a_full_domain(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, quota_bytes=BS, quota_inodes=2)
    w = Writer(store, chunks)

    def put(size: int) -> None:
        w.n += 1
        chunks.add(cid(w.n))
        store.put_object(
            vol,
            [],
            b"obj",
            mode=0o644,
            uid=0,
            gid=0,
            size=size,
            mtime_ns=1,
            blocks=[BlockRef(0, cid(w.n), size, 7)],
            inline=None,
            xattrs={},
            chunk_exists=chunks.__contains__,
        )

    put(BS - 1)
    put(BS)  # replaces the old object: its bytes and inode are given back first
    assert usage(store, vol) == (BS, 2, 7)
    store.update_volume("vol", {"quota_bytes": BS - 1})
    with pytest.raises(QuotaExceeded):
        put(BS)
    assert usage(store, vol) == (BS, 2, 7)
    check(store, chunks)


def test_rename_and_link_across_domains_are_exdev(store: MetaStore, chunks: set[bytes]) -> None:
    a, b = volume(store, "a"), volume(store, "b")
    f = new_file(store, a, b"f")
    sub = store.mkdir(a, b"sub", 0o755, 0, 0).ino
    with pytest.raises(CrossDevice):
        store.rename(a, b"f", b, b"f", 0)
    with pytest.raises(CrossDevice):
        store.rename(a, b"sub", b, b"sub", 0)
    with pytest.raises(CrossDevice):
        store.link(f, b, b"f")
    store.rename(a, b"f", sub, b"f", 0)  # within a domain: fine
    store.link(f, a, b"again")
    store.set_quota(sub, {"max_bytes": 10})
    with pytest.raises(CrossDevice):  # a nested domain is a domain of its own
        store.rename(sub, b"f", a, b"f", 0)
    store.rename(ROOT_INO, b"a", ROOT_INO, b"a2", 0)  # a volume renamed in the root keeps its row
    assert store.get_quota(a) is not None
    check(store, chunks)


def test_nested_domains_set_on_a_full_tree_and_cleared(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store)
    w = Writer(store, chunks)
    d = store.mkdir(vol, b"d", 0o755, 0, 0).ino
    e = store.mkdir(d, b"e", 0o755, 0, 0).ino
    w.write(new_file(store, e, b"x"), 3 * BS)
    w.write(new_file(store, d, b"y"), BS)
    assert usage(store, vol) == (4 * BS, 5, 400)
    # Innermost first, then around it: the outer walk re-parents the inner domain.
    store.set_quota(e, {"max_bytes": 3 * BS})
    assert usage(store, e) == (3 * BS, 2, 300)
    store.set_quota(d, {"max_bytes": 10 * BS, "max_inodes": 100})
    assert usage(store, d) == (4 * BS, 4, 400)
    assert store.get_quota(e)["parent"] == d  # type: ignore[index]
    assert usage(store, vol) == (4 * BS, 5, 400)  # nothing counted twice
    with pytest.raises(QuotaExceeded):
        w.write(new_file(store, e, b"z"), BS)  # e is full though d and vol are not
    # A limit on the enclosing domain applies to the nested one's growth too.
    store.set_quota(e, {"max_bytes": None})
    store.set_quota(d, {"max_bytes": 5 * BS})
    z = store.lookup(e, b"z").ino
    with pytest.raises(QuotaExceeded):
        w.write(z, 2 * BS)
    w.write(z, BS)
    assert usage(store, vol)[0] == 5 * BS
    check(store, chunks)
    store.clear_quota(d)  # its inodes and e go back to the volume
    assert store.get_quota(d) is None
    assert store.get_quota(e)["parent"] == vol  # type: ignore[index]
    assert usage(store, vol) == (5 * BS, 6, 500)
    check(store, chunks)
    store.clear_quota(vol)  # a volume keeps its accounting row, without limits
    q = store.get_quota(vol)
    assert q is not None and q["max_bytes"] is None
    store.remove_tree(vol, b"d")
    assert usage(store, vol) == (0, 1, 0)
    assert store.get_quota(e) is None  # removed with its directory
    check(store, chunks)


def test_unlinked_open_file_counts_until_released(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, quota_bytes=2 * BS)
    w = Writer(store, chunks)
    f = store.create(vol, b"f", 0o644, 0, 0, SESSION).ino
    w.write(f, 2 * BS)
    store.unlink(vol, b"f")
    assert usage(store, vol)[0] == 2 * BS  # still held open, as a local file system
    store.release(f, SESSION)
    assert usage(store, vol) == (0, 1, 0)
    check(store, chunks)


def test_snapshots_are_charged_where_they_are_placed(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, quota_bytes=3 * BS)
    w = Writer(store, chunks)
    src = store.mkdir(vol, b"src", 0o755, 0, 0).ino
    w.write(new_file(store, src, b"f"), BS)
    store.snapshot(src, vol, b"copy1", uid=0, gid=0)  # a writable copy inside the volume
    assert usage(store, vol) == (2 * BS, 5, 200)
    w.write(new_file(store, src, b"g"), BS)
    with pytest.raises(QuotaExceeded):
        store.snapshot(src, vol, b"copy2", uid=0, gid=0)
    # Read-only volume snapshots under /.snapshots lie outside every volume: charged nowhere.
    store.create_snapshot("vol", "s1")
    assert usage(store, vol) == (3 * BS, 6, 300)
    store.remove_tree(vol, b"copy1")
    assert usage(store, vol) == (2 * BS, 4, 200)
    store.restore_snapshot("vol", "s1")
    assert usage(store, vol) == (3 * BS, 6, 300)
    store.clone_snapshot("vol", "s1", "vol2")
    vol2 = store.get_volume("vol2")
    assert vol2 is not None and usage(store, vol2["ino"]) == (3 * BS, 6, 300)
    check(store, chunks)


def test_two_racing_writers_never_overshoot(tmp_path: Path, chunks: set[bytes]) -> None:
    limit = 20 * BS
    stores = [open_meta(tmp_path / "meta.db", block_size=BS) for _ in range(2)]
    try:
        vol = volume(stores[0], quota_bytes=limit)
        files = [new_file(stores[0], vol, b"f%d" % i) for i in range(2)]
        lock = threading.Lock()
        refused = [0, 0]

        def run(i: int) -> None:
            store, ino = stores[i], files[i]
            n, size = (i + 1) * 10_000, 0
            while True:
                n += 1
                with lock:
                    chunks.add(cid(n))
                try:
                    store.commit_write(
                        ino,
                        size=size + BS,
                        mtime_ns=1,
                        blocks=[BlockRef(size // BS, cid(n), BS, 1)],
                        inline=None,
                        chunk_exists=lambda c: True,
                    )
                except QuotaExceeded:
                    refused[i] += 1
                    return
                size += BS

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert refused == [1, 1]
        total = sum(stores[0].getattr(f).size for f in files)
        assert total == limit  # both stopped at the limit, together: never beyond it
        assert usage(stores[0], vol)[0] == limit
        check(stores[0], chunks)
    finally:
        for s in stores:
            s.close()


def test_fsck_finds_and_repairs_drifted_usage(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store)
    Writer(store, chunks).write(new_file(store, vol, b"f"), BS)
    with store._write():
        store._db.execute("UPDATE quotas SET used_bytes = 7, used_inodes = 99 WHERE ino = ?", (vol,))
    problems = store.fsck(chunks.__contains__, repair=False)
    assert (
        len(problems) == 1 and "quota domain /vol" in problems[0] and "actual (4096, 2, 100)" in problems[0]
    )
    assert store.fsck(chunks.__contains__, repair=True) == problems
    assert usage(store, vol) == (BS, 2, 100)
    check(store, chunks)


def test_quota_xattrs_are_a_read_only_view(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, quota_bytes=1000)
    assert b"user.dfs.quota.used_bytes" in store.listxattr(vol)
    assert store.getxattr(vol, b"user.dfs.quota.bytes") == b"1000"
    assert store.getxattr(vol, b"user.dfs.quota.inodes") == b"none"
    assert store.getxattr(vol, b"user.dfs.quota.used_inodes") == b"1"
    with pytest.raises(NotPermitted):
        store.setxattr(vol, b"user.dfs.quota.bytes", b"5")
    d = store.mkdir(vol, b"d", 0o755, 0, 0).ino
    assert not any(n.startswith(b"user.dfs.quota.") for n in store.listxattr(d))
    check(store, chunks)


def test_limits_are_checked_and_thin_provisioning_sums(store: MetaStore, chunks: set[bytes]) -> None:
    a, b = volume(store, "a", quota_bytes=100), volume(store, "b", quota_bytes=50)
    d = store.mkdir(a, b"d", 0o755, 0, 0).ino
    store.set_quota(d, {"max_bytes": 80})  # nested in a limit: promises nothing more
    assert store.provisioned_bytes() == 150
    with pytest.raises(InvalidArgument):
        store.set_quota(b, {"max_bytes": -1})
    with pytest.raises(InvalidArgument):
        store.set_quota(ROOT_INO, {"max_bytes": 1})
    f = new_file(store, b, b"f")
    with pytest.raises(Exception):  # noqa: B017 (NotADirectory)
        store.set_quota(f, {"max_bytes": 1})
    check(store, chunks)


def test_dump_and_load_keep_quotas(store: MetaStore, chunks: set[bytes], tmp_path: Path) -> None:
    vol = volume(store, quota_bytes=10 * BS)
    w = Writer(store, chunks)
    w.write(new_file(store, vol, b"f"), 2 * BS)
    held = store.create(vol, b"open", 0o644, 0, 0, SESSION).ino
    w.write(held, BS)
    store.unlink(vol, b"open")  # nameless and open: left out of the dump, so not charged after
    src, kind = location(tmp_path / "meta.db")
    out = io.BytesIO()
    write_dump(src, out, secret=b"k" * 32, engine=kind)
    dst, dst_kind = location(tmp_path / "loaded.db")
    out.seek(0)
    load_dump(out, dst, secret=b"k" * 32, block_size=BS, engine=dst_kind)
    loaded = open_meta(tmp_path / "loaded.db", block_size=BS)
    try:
        q = loaded.get_quota(vol)
        assert q is not None and q["max_bytes"] == 10 * BS
        assert usage(loaded, vol) == (2 * BS, 2, 200)
        check(loaded, chunks)
    finally:
        loaded.close()
    store.release(held, SESSION)


def test_volumes_from_before_quotas_get_their_domain_at_open(tmp_path: Path, chunks: set[bytes]) -> None:
    s = open_meta(tmp_path / "meta.db", block_size=BS)
    vol = volume(s)
    Writer(s, chunks).write(new_file(s, vol, b"f"), BS)
    with s._write():  # what a version-2 database looks like: no domain, nothing charged
        s._db.execute("UPDATE inodes SET quota = NULL")
        s._db.execute("DELETE FROM quota_chain")
        s._db.execute("DELETE FROM quotas")
    s.close()
    s = open_meta(tmp_path / "meta.db", block_size=BS)
    try:
        assert usage(s, vol) == (BS, 2, 100)
        check(s, chunks)
    finally:
        s.close()


def test_parse_and_format_sizes() -> None:
    assert parse_size("0") == 0
    assert parse_size("1500") == 1500
    assert parse_size("10K") == 10 * 1024
    assert parse_size("2m") == 2 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("1T") == 1 << 40
    for bad in ("", "-1", "K", "1X", "1.5.5G", "nan"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(None) == "-"
    assert format_size(1536) == "1.5K"
    assert format_size(10) == "10"
    assert engine() in ("sqlite", "postgresql")


def test_fsck_repairs_charges_and_nesting(store: MetaStore, chunks: set[bytes]) -> None:
    vol = volume(store, quota_bytes=BS)
    w = Writer(store, chunks)
    d = store.mkdir(vol, b"d", 0o755, 0, 0).ino
    f = new_file(store, d, b"f")
    w.write(f, BS)
    store.set_quota(d, {"max_inodes": 10})
    with store._write():  # a file charged nowhere, and the nesting table emptied
        store._db.execute("UPDATE inodes SET quota = NULL WHERE ino = ?", (f,))
        store._db.execute("DELETE FROM quota_chain WHERE q != a")
    problems = store.fsck(chunks.__contains__, repair=True)
    assert any("quota nesting table" in p for p in problems)
    assert any("/vol/d/f: charged to quota domain None" in p for p in problems)
    # Repaired even though the volume is at its byte limit: repairs are not refused.
    assert usage(store, vol) == (BS, 3, 100) and usage(store, d) == (BS, 2, 100)
    check(store, chunks)


def test_quota_outside_any_volume_with_a_nested_one(store: MetaStore, chunks: set[bytes]) -> None:
    w = Writer(store, chunks)
    top = store.mkdir(ROOT_INO, b"plain", 0o755, 0, 0).ino
    inner = store.mkdir(top, b"inner", 0o755, 0, 0).ino
    w.write(new_file(store, inner, b"f"), BS)
    store.set_quota(inner, {"max_bytes": 10 * BS})
    store.set_quota(top, {"max_bytes": 2 * BS})
    assert usage(store, top) == (BS, 3, 100)
    assert store.get_quota(inner)["parent"] == top  # type: ignore[index]
    with pytest.raises(QuotaExceeded):  # the outer limit binds the inner domain
        w.write(new_file(store, inner, b"g"), 2 * BS)
    assert store.quota_get_path("/plain/inner")["path"] == "/plain/inner"
    assert [q["path"] for q in store.quota_list_paths()] == ["/plain", "/plain/inner"]
    store.quota_clear_path("/plain")
    assert store.get_quota(inner)["parent"] is None  # type: ignore[index]
    check(store, chunks)


def test_a_version_2_database_is_upgraded(tmp_path: Path, chunks: set[bytes]) -> None:
    s = open_meta(tmp_path / "meta.db", block_size=BS)
    vol = volume(s)
    Writer(s, chunks).write(new_file(s, vol, b"f"), BS)
    with s._write():  # back to what version 2 had: no column, tables or triggers
        if engine() == "sqlite":
            for trigger in ("quota_insert", "quota_update", "quota_move", "quota_delete", "quota_detach"):
                s._db.execute(f"DROP TRIGGER {trigger}")
        else:
            s._db.execute("DROP TRIGGER quota_account ON inodes")
            s._db.execute("UPDATE config SET value = 2 WHERE key = 'schema_version'")
        s._db.execute("DROP TABLE quotas")
        s._db.execute("DROP TABLE quota_chain")
        s._db.execute("ALTER TABLE inodes DROP COLUMN quota")
    if engine() == "sqlite":
        s._db.execute("PRAGMA user_version=2")
    s.close()
    s = open_meta(tmp_path / "meta.db", block_size=BS)
    try:
        assert usage(s, vol) == (BS, 2, 100)
        check(s, chunks)
    finally:
        s.close()


def test_reopening_leaves_the_triggers_alone(tmp_path: Path) -> None:
    def version(s: MetaStore) -> Any:
        if engine() == "sqlite":
            return s._db.execute("PRAGMA schema_version").fetchone()[0]
        return s._db.execute(
            "SELECT xmin::text FROM pg_proc WHERE proname = 'dfs_quota_account' "
            "AND pronamespace = current_schema()::regnamespace"
        ).fetchone()[0]

    s = open_meta(tmp_path / "meta.db", block_size=BS)
    before = version(s)
    s.close()
    s = open_meta(tmp_path / "meta.db", block_size=BS)
    try:
        assert version(s) == before  # no DDL at open: other connections keep their statements
    finally:
        s.close()
