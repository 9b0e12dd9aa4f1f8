"""Unit tests for MetaStore's cluster metadata: the placement layout and its epoch, node
registration and admin changes, per-chunk replication factors, and the effective
replication/consistency policy of an inode."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from daemon.meta import (
    CONSISTENCY_XATTR,
    REPLICAS_XATTR,
    SCHEMA_VERSION,
    MetaStore,
)
from dfs.core.errors import (
    ConfigError,
    InternalError,
    InvalidArgument,
    NotADirectory,
    NotFound,
    PreconditionFailed,
)
from dfs.core.namespace import ROOT_INO, Attr, BlockRef
from dfs.core.placement import Layout, PlacementTable
from tests.metastores import Clock, only_sqlite, open_meta, trace

# The whole module runs once per metadata engine (SQLite, PostgreSQL).
pytestmark = pytest.mark.usefixtures("meta_engine")
ROOT = ROOT_INO
BS = 4096
INLINE_MAX = 64
SESSION = "s1"


# -- helpers (the same shapes as tests/unit/test_metadata.py) ----------------------------------


def open_store(path: Path, clock: Clock, **kwargs: Any) -> MetaStore:
    return open_meta(path / "meta.db", block_size=BS, now_ns=clock, **kwargs)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = open_store(tmp_path, clock)
    yield s
    s.close()


@pytest.fixture
def reader(store: MetaStore) -> Iterator[MetaStore]:
    r = store.reader()
    yield r
    r.close()


def check(store: MetaStore, chunks: set[bytes]) -> None:
    assert store.fsck(chunks.__contains__, repair=False) == []


def cid(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def ref(index: int, chunk: bytes, length: int = BS, stored: int = 1000) -> BlockRef:
    return BlockRef(index, chunk, length, stored)


def new_file(store: MetaStore, name: bytes = b"f", parent: int = ROOT) -> int:
    ino = store.create(parent, name, 0o644, 1000, 1000, SESSION).ino
    store.release(ino, SESSION)
    return ino


def write(
    store: MetaStore, chunks: set[bytes], ino: int, refs: list[BlockRef], replicas: int | None = None
) -> Attr:
    chunks.update(r.chunk_id for r in refs if r.chunk_id)
    size = max((r.index + 1 for r in refs), default=0) * BS
    return store.commit_write(
        ino,
        size=size,
        mtime_ns=5,
        blocks=refs,
        inline=None,
        chunk_exists=chunks.__contains__,
        replicas=replicas,
    )


def put(
    store: MetaStore,
    chunks: set[bytes],
    path: bytes,
    refs: list[BlockRef],
    *,
    replicas: int | None = None,
    xattrs: dict[bytes, bytes] | None = None,
) -> Attr:
    *dirs, name = path.split(b"/")
    chunks.update(r.chunk_id for r in refs)
    return store.put_object(
        ROOT,
        dirs,
        name,
        mode=0o644,
        uid=0,
        gid=0,
        size=len(refs) * BS,
        mtime_ns=7,
        blocks=refs,
        inline=None,
        xattrs=xattrs or {},
        chunk_exists=chunks.__contains__,
        replicas=replicas,
    )


def oplog(store: MetaStore) -> list[tuple[str, list[Any]]]:
    return [
        (op, msgpack.unpackb(args))
        for op, args in store._db.execute("SELECT op, args FROM oplog ORDER BY seq")
    ]


def oplog_ops(store: MetaStore) -> list[str]:
    return [op for op, _ in oplog(store)]


def epoch(store: MetaStore) -> int:
    value: int = store.layout()["epoch"]
    return value


def wire_node(
    node_id: str, zone: str = "default", weight: float = 1.0, state: str = "active", address: str = ""
) -> dict[str, Any]:
    return {"node_id": node_id, "zone": zone, "capacity_weight": weight, "state": state, "address": address}


# -- layout -----------------------------------------------------------------------------------------


def test_layout_of_a_new_store(tmp_path: Path, clock: Clock, store: MetaStore) -> None:
    assert store.layout() == {"epoch": 0, "replicas": 1, "nodes": []}
    assert store._db.execute("SELECT 1 FROM config WHERE key = 'layout_epoch'").fetchone() is None
    other = open_meta(tmp_path / "other.db", block_size=BS, default_replicas=3)
    try:
        assert other.layout()["replicas"] == 3
        reader = other.reader()
        try:
            assert reader.layout()["replicas"] == 3  # the reader inherits the default
        finally:
            reader.close()
    finally:
        other.close()
    for bad in (0, 8, -1, True, 2.0, "3"):
        with pytest.raises(ConfigError):
            open_store(tmp_path, clock, default_replicas=bad)


def test_layout_defaults_order_and_wire_form(store: MetaStore, chunks: set[bytes]) -> None:
    store.put_node("n2", {"free": 5})  # nothing placement cares about: every default
    store.put_node(
        "n1", {"zone": "z1", "capacity_weight": 2, "state": "draining", "address": "10.0.0.1:7400"}
    )
    store.put_node("n0", {"zone": "z0", "address": None, "state": "out"})  # null reads as absent
    layout = store.layout()
    assert layout == {
        "epoch": 3,
        "replicas": 1,
        "nodes": [
            wire_node("n0", "z0", state="out"),
            wire_node("n1", "z1", 2.0, "draining", "10.0.0.1:7400"),
            wire_node("n2"),
        ],
    }
    assert all(type(n["capacity_weight"]) is float for n in layout["nodes"])
    parsed = Layout.from_wire(layout)
    assert parsed.to_wire() == layout
    assert PlacementTable(parsed).eligible == ("n2",)
    check(store, chunks)


def test_layout_refuses_a_node_row_it_cannot_place(store: MetaStore) -> None:
    store.put_node("n1", {"state": "gone"})
    with pytest.raises(InternalError, match="n1"):
        store.layout()
    store.put_node("n1", {"capacity_weight": 0})
    with pytest.raises(InternalError, match="n1"):
        store.layout()
    store.put_node("n1", {"zone": 7})
    with pytest.raises(InternalError, match="n1"):
        store.layout()
    store.delete_node("n1")
    assert store.layout()["nodes"] == []


def test_every_change_of_the_nodes_table_bumps_the_epoch(store: MetaStore, clock: Clock) -> None:
    first = store.put_node("n1", {"zone": "a"})
    assert epoch(store) == 1
    again = store.put_node("n1", {"zone": "a"})  # same info: the row is rewritten, the layout is not
    assert again["updated_ns"] > first["updated_ns"]
    assert epoch(store) == 1
    store.put_node("n1", {"zone": "b"})
    assert epoch(store) == 2
    store.put_node("n2", {})
    assert epoch(store) == 3
    store.delete_node("n2")
    assert epoch(store) == 4
    with pytest.raises(NotFound):
        store.delete_node("n2")
    with pytest.raises(InvalidArgument):
        store.put_node("n3", {"bad": {1, 2}})
    assert epoch(store) == 4  # failures leave the epoch alone
    # The epoch lives in config and survives everything else that writes there.
    assert store._db.execute("SELECT value FROM config WHERE key = 'layout_epoch'").fetchone() == (4,)
    store.oplog_trim(0)
    assert epoch(store) == 4


def test_layout_epoch_persists_and_readers_see_it(tmp_path: Path, clock: Clock) -> None:
    s = open_store(tmp_path, clock)
    s.register_node("n1", "z1", "h1:7400")
    reader = s.reader()
    try:
        assert reader.layout() == s.layout()
        s.set_node("n1", state="draining")
        assert reader.layout() == s.layout() and reader.layout()["epoch"] == 2
        with pytest.raises(InternalError):  # read-only connection
            reader.register_node("n2", "z1", "h2:7400")
    finally:
        reader.close()
    s.close()
    s = open_store(tmp_path, clock)
    try:
        assert s.layout() == {
            "epoch": 2,
            "replicas": 1,
            "nodes": [wire_node("n1", "z1", 1.0, "draining", "h1:7400")],
        }
    finally:
        s.close()


# -- register_node, set_node, remove_node -------------------------------------------------------


def test_register_node_inserts_an_active_node(store: MetaStore, chunks: set[bytes]) -> None:
    layout = store.register_node("n1", "z1", "10.0.0.1:7400", 2.5)
    assert layout == {
        "epoch": 1,
        "replicas": 1,
        "nodes": [wire_node("n1", "z1", 2.5, "active", "10.0.0.1:7400")],
    }
    assert layout == store.layout()
    row = store.get_node("n1")
    assert row is not None and row["state"] == "active" and row["capacity_weight"] == 2.5
    assert store.register_node("n0", "z2", "10.0.0.2:7400")["nodes"][0] == wire_node(
        "n0", "z2", 1.0, "active", "10.0.0.2:7400"
    )
    assert oplog(store) == [
        ("register_node", ["n1", "z1", "10.0.0.1:7400", 2.5]),
        ("register_node", ["n0", "z2", "10.0.0.2:7400", 1.0]),
    ]
    check(store, chunks)


def test_register_known_node_only_follows_its_address(store: MetaStore) -> None:
    store.register_node("n1", "z1", "h1:7400", 1.0)
    store.set_node("n1", state="draining", zone="z9", capacity_weight=4.0)
    ops = oplog_ops(store)
    assert epoch(store) == 2
    # The same address: nothing is written, whatever the config now says about zone and weight.
    layout = store.register_node("n1", "z1", "h1:7400", 1.0)
    assert layout["epoch"] == 2 and oplog_ops(store) == ops
    assert layout["nodes"] == [wire_node("n1", "z9", 4.0, "draining", "h1:7400")]
    # A new address: only the address changes (zone, weight and state are the admin's).
    layout = store.register_node("n1", "z1", "h1:7500", 8.0)
    assert layout["epoch"] == 3
    assert layout["nodes"] == [wire_node("n1", "z9", 4.0, "draining", "h1:7500")]
    assert oplog_ops(store) == [*ops, "register_node"]
    # A row the admin API made without an address: "" is what the layout already said.
    store.put_node("n2", {"zone": "z2"})
    assert store.register_node("n2", "z2", "")["epoch"] == 4


@pytest.mark.parametrize(
    "args",
    [
        ("", "z", "a"),
        (7, "z", "a"),
        ("n", "", "a"),
        ("n", None, "a"),
        ("n", "z", None),
        ("n", "z", "a", 0),
        ("n", "z", "a", -1.0),
        ("n", "z", "a", math.inf),
        ("n", "z", "a", math.nan),
        ("n", "z", "a", True),
        ("n", "z", "a", "1"),
    ],
)
def test_register_node_validates(store: MetaStore, args: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidArgument):
        store.register_node(*args)
    assert store.layout() == {"epoch": 0, "replicas": 1, "nodes": []}
    assert oplog_ops(store) == []


def test_set_node(store: MetaStore, chunks: set[bytes]) -> None:
    with pytest.raises(NotFound):
        store.set_node("n1", state="out")
    store.register_node("n1", "z1", "h1:7400")
    layout = store.set_node("n1", state="draining")
    assert layout == store.layout() and layout["epoch"] == 2
    assert layout["nodes"] == [wire_node("n1", "z1", 1.0, "draining", "h1:7400")]
    assert store.set_node("n1", state="draining")["epoch"] == 2  # no change, no new epoch
    assert store.set_node("n1")["epoch"] == 2
    assert store.set_node("n1", capacity_weight=1)["epoch"] == 2  # 1 == 1.0
    layout = store.set_node("n1", state="active", zone="z2", capacity_weight=3)
    assert layout["epoch"] == 3 and layout["nodes"] == [wire_node("n1", "z2", 3.0, "active", "h1:7400")]
    assert type(store.get_node("n1")["capacity_weight"]) is float  # type: ignore[index]
    ops = oplog_ops(store)
    for bad in (
        {"state": "gone"},
        {"state": "ACTIVE"},
        {"zone": ""},
        {"zone": 5},
        {"capacity_weight": 0},
        {"capacity_weight": math.inf},
        {"capacity_weight": False},
    ):
        with pytest.raises(InvalidArgument):
            store.set_node("n1", **bad)
    assert epoch(store) == 3 and oplog_ops(store) == ops
    assert ops.count("set_node") == 2
    check(store, chunks)


def test_remove_node_only_after_drain_or_out(store: MetaStore, chunks: set[bytes]) -> None:
    with pytest.raises(NotFound):
        store.remove_node("n1")
    for node in ("n1", "n2", "n3"):
        store.register_node(node, "z", f"{node}:7400")
    store.put_node("n4", {"zone": "z"})  # no state: active by default
    for node in ("n1", "n4"):
        with pytest.raises(PreconditionFailed):
            store.remove_node(node)
    assert epoch(store) == 4
    store.set_node("n2", state="draining")
    store.set_node("n3", state="out")
    layout = store.remove_node("n2")
    assert layout == store.layout() and layout["epoch"] == 7
    assert [n["node_id"] for n in layout["nodes"]] == ["n1", "n3", "n4"]
    assert store.remove_node("n3")["epoch"] == 8
    assert store.get_node("n3") is None
    with pytest.raises(NotFound):
        store.remove_node("n3")
    assert oplog_ops(store)[-2:] == ["remove_node", "remove_node"]
    check(store, chunks)


# -- per-chunk replication factor -------------------------------------------------------------------


def test_commit_write_records_the_highest_replicas(store: MetaStore, chunks: set[bytes]) -> None:
    a, b = new_file(store, b"a"), new_file(store, b"b")
    write(store, chunks, a, [ref(0, cid(1)), ref(1, b""), ref(2, cid(2))])  # no policy given
    assert store.chunk_replicas([cid(1), cid(2)]) == [None, None]
    write(store, chunks, a, [ref(0, cid(1)), ref(1, cid(3))], replicas=2)
    assert store.chunk_replicas([cid(1), cid(2), cid(3)]) == [2, None, 2]
    write(store, chunks, b, [ref(0, cid(1)), ref(1, cid(1))], replicas=1)  # lower: the higher need stays
    assert store.chunk_replicas([cid(1)]) == [2]
    write(store, chunks, b, [ref(0, cid(1))], replicas=3)
    write(store, chunks, b, [ref(0, cid(1))])
    assert store.chunk_replicas([cid(1), cid(3)]) == [3, 2]
    assert oplog(store)[-2][1][-1] == 3 and oplog(store)[-1][1][-1] is None
    ops = oplog_ops(store)
    bad: Any
    for bad in (0, 8, -1, True, 2.0, "2"):
        with pytest.raises(InvalidArgument):
            write(store, chunks, a, [ref(0, cid(9))], replicas=bad)
    assert oplog_ops(store) == ops
    assert store.chunk_replicas([cid(9)]) == [None]  # unknown
    check(store, chunks)


def test_put_object_records_replicas(store: MetaStore, chunks: set[bytes]) -> None:
    put(store, chunks, b"bucket/a/obj", [ref(0, cid(1)), ref(1, cid(2))], replicas=3)
    put(store, chunks, b"bucket/other", [ref(0, cid(2)), ref(1, cid(4))])
    assert store.chunk_replicas([cid(1), cid(2), cid(4)]) == [3, 3, None]
    put(store, chunks, b"bucket/a/obj", [ref(0, cid(1))], replicas=5)  # replaced: cid(2) keeps its 3
    assert store.chunk_replicas([cid(1), cid(2)]) == [5, 3]
    assert oplog(store)[-1][1][-1] == 5
    with pytest.raises(InvalidArgument):
        put(store, chunks, b"bucket/x", [ref(0, cid(7))], replicas=0)
    assert store.chunk_replicas([cid(7)]) == [None]
    check(store, chunks)


def test_chunk_replicas_batches_and_keeps_order(
    store: MetaStore, chunks: set[bytes], reader: MetaStore
) -> None:
    f = new_file(store)
    write(store, chunks, f, [ref(i, cid(i + 1)) for i in range(1200)], replicas=2)
    g = new_file(store, b"g")
    write(store, chunks, g, [ref(0, cid(5000))])
    ids = [cid(5000), cid(99_999)] + [cid(i) for i in range(1200, 0, -1)] + [cid(5)]
    expected = [None, None] + [2] * 1200 + [2]
    assert store.chunk_replicas(ids) == expected
    assert reader.chunk_replicas(ids) == expected
    assert store.chunk_replicas([]) == []
    check(store, chunks)


def test_chunk_replicas_survive_snapshot_and_go_with_gc(
    store: MetaStore, chunks: set[bytes], clock: Clock
) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    f = new_file(store, b"f", d)
    write(store, chunks, f, [ref(0, cid(1)), ref(1, cid(2))], replicas=2)
    store.snapshot(d, ROOT, b"snap", uid=0, gid=0)
    assert store.referenced_chunks() == {cid(1): 2, cid(2): 2}
    assert store.chunk_replicas([cid(1), cid(2)]) == [2, 2]
    check(store, chunks)
    store.remove_tree(ROOT, b"d")
    store.remove_tree(ROOT, b"snap")
    assert store.chunk_replicas([cid(1)]) == [2]  # unreferenced, not yet collected
    assert store.gc_collect(clock.t + 1, 10, lambda ids: None) == [cid(1), cid(2)]
    assert store.chunk_replicas([cid(1), cid(2)]) == [None, None]
    # A chunk written again after collection starts afresh.
    h = new_file(store, b"h")
    write(store, chunks, h, [ref(0, cid(1))])
    assert store.chunk_replicas([cid(1)]) == [None]
    check(store, chunks)


def test_fsck_repair_recreates_chunk_rows(store: MetaStore, chunks: set[bytes]) -> None:
    f = new_file(store)
    write(store, chunks, f, [ref(0, cid(1))], replicas=2)
    store._db.execute("DELETE FROM chunks")
    assert store.fsck(chunks.__contains__, repair=True)
    assert store.referenced_chunks() == {cid(1): 1}
    assert store.chunk_replicas([cid(1)]) == [None]  # the need is re-learnt on the next write
    check(store, chunks)


def test_version_1_database_gains_the_replicas_column(
    tmp_path: Path, clock: Clock, chunks: set[bytes]
) -> None:
    only_sqlite("rewrites the file to what version 1 stored")
    s = open_store(tmp_path, clock)
    f = new_file(s)
    write(s, chunks, f, [ref(0, cid(1))], replicas=4)
    s.close()
    # What a version-1 database looks like: chunks without the column.
    db = sqlite3.connect(tmp_path / "meta.db")
    db.execute("ALTER TABLE chunks DROP COLUMN replicas")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    s = open_store(tmp_path, clock)
    try:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3  # 3: quotas
        assert "replicas" in {row[1] for row in s._db.execute("PRAGMA table_info(chunks)")}
        assert s.chunk_replicas([cid(1)]) == [None]
        assert s.referenced_chunks() == {cid(1): 1}
        write(s, chunks, f, [ref(0, cid(1)), ref(1, cid(2))], replicas=2)
        assert s.chunk_replicas([cid(1), cid(2)]) == [2, 2]
        check(s, chunks)
    finally:
        s.close()
    s = open_store(tmp_path, clock)  # reopening an upgraded database changes nothing
    try:
        assert s.chunk_replicas([cid(1)]) == [2]
    finally:
        s.close()


def test_database_from_a_newer_version_is_refused(tmp_path: Path, clock: Clock) -> None:
    s = open_store(tmp_path, clock)
    if s.engine == "sqlite":
        s.close()
        db = sqlite3.connect(tmp_path / "meta.db")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        db.commit()
        db.close()
    else:
        s._db.execute("UPDATE config SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
        s.close()
    with pytest.raises(ConfigError):
        open_store(tmp_path, clock)


# -- policy xattrs ----------------------------------------------------------------------------------


def test_policy_xattrs_are_validated(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    for n in range(1, 8):
        store.setxattr(d, REPLICAS_XATTR, str(n).encode())
    for level in (b"strong", b"quorum", b"eventual"):
        store.setxattr(d, CONSISTENCY_XATTR, level)
    for bad in (b"0", b"8", b"10", b"02", b"", b"2\n", b" 2", b"two", b"\xd9\xa3"):
        with pytest.raises(InvalidArgument):
            store.setxattr(d, REPLICAS_XATTR, bad)
    for bad in (b"", b"Strong", b"strong\n", b"all", b"quorum "):
        with pytest.raises(InvalidArgument):
            store.setxattr(d, CONSISTENCY_XATTR, bad)
    assert store.getxattr(d, REPLICAS_XATTR) == b"7"
    assert store.getxattr(d, CONSISTENCY_XATTR) == b"eventual"
    store.setxattr(d, b"user.dfs.other", b"anything")  # only the two policy names are checked
    store.setxattr(d, b"user.dfs.replicas2", b"x")
    with pytest.raises(InvalidArgument):
        put(store, chunks, b"d/obj", [ref(0, cid(1))], xattrs={REPLICAS_XATTR: b"9"})
    with pytest.raises(NotFound):
        store.lookup(d, b"obj")
    put(store, chunks, b"d/obj", [ref(0, cid(1))], xattrs={CONSISTENCY_XATTR: b"quorum"})
    check(store, chunks)


# -- effective policy -------------------------------------------------------------------------------


NONE = {"replicas": None, "consistency": None}


def policy(replicas: int | None, consistency: str | None) -> dict[str, Any]:
    return {"replicas": replicas, "consistency": consistency}


def test_policy_without_anything_set(store: MetaStore) -> None:
    d = store.make_dirs(ROOT, [b"a", b"b"], mode=0o755, uid=0, gid=0).ino
    f = new_file(store, b"f", d)
    for ino in (ROOT, d, f):
        assert store.policy(ino) == NONE
    with pytest.raises(NotFound):
        store.policy(999_999)


def test_policy_from_the_volume(store: MetaStore) -> None:
    v = store.create_volume("v", {"replication": 3, "consistency": "quorum"}, mode=0o755, uid=0, gid=0).ino
    b = store.make_dirs(v, [b"a", b"b"], mode=0o755, uid=0, gid=0).ino
    f = new_file(store, b"f", b)
    top = new_file(store, b"top", v)
    for ino in (v, store.lookup(v, b"a").ino, b, f, top):
        assert store.policy(ino) == policy(3, "quorum")
    assert store.policy(ROOT) == NONE
    store.update_volume("v", {"replication": 2})  # a key the volume lacks is None
    assert store.policy(f) == policy(2, None)
    # A directory that is not a volume has no volume policy, even next to one.
    plain = store.mkdir(ROOT, b"plain", 0o755, 0, 0).ino
    assert store.policy(new_file(store, b"g", plain)) == NONE
    # The row follows its directory: renamed within the root it still applies, moved below it does not.
    store.rename(ROOT, b"v", ROOT, b"v2", 0)
    assert store.policy(f) == policy(2, None)
    store.rename(ROOT, b"v2", plain, b"v", 0)
    assert store.policy(f) == NONE


def test_policy_nearest_xattr_wins_per_key(store: MetaStore) -> None:
    v = store.create_volume("v", {"replication": 3, "consistency": "strong"}, mode=0o755, uid=0, gid=0).ino
    a = store.mkdir(v, b"a", 0o755, 0, 0).ino
    b = store.mkdir(a, b"b", 0o755, 0, 0).ino
    f = new_file(store, b"f", b)
    store.setxattr(a, REPLICAS_XATTR, b"2")
    assert store.policy(f) == policy(2, "strong")
    assert store.policy(v) == policy(3, "strong")
    store.setxattr(b, REPLICAS_XATTR, b"5")
    store.setxattr(a, CONSISTENCY_XATTR, b"eventual")
    assert store.policy(f) == policy(5, "eventual")
    assert store.policy(a) == policy(2, "eventual")
    store.setxattr(f, CONSISTENCY_XATTR, b"quorum")  # the file itself is nearest of all
    assert store.policy(f) == policy(5, "quorum")
    assert store.policy(b) == policy(5, "eventual")
    store.removexattr(b, REPLICAS_XATTR)
    assert store.policy(f) == policy(2, "quorum")
    # An xattr on the root is an ancestor like any other: it is nearer than the volume's policy.
    store.setxattr(ROOT, REPLICAS_XATTR, b"1")
    store.removexattr(a, REPLICAS_XATTR)
    assert store.policy(f) == policy(1, "quorum")
    assert store.policy(store.mkdir(ROOT, b"plain", 0o755, 0, 0).ino) == policy(1, None)


def test_policy_skips_values_it_cannot_parse(store: MetaStore) -> None:
    v = store.create_volume("v", {"replication": 9, "consistency": "sometimes"}, mode=0o755, uid=0, gid=0).ino
    a = store.mkdir(v, b"a", 0o755, 0, 0).ino
    b = store.mkdir(a, b"b", 0o755, 0, 0).ino
    store.setxattr(a, REPLICAS_XATTR, b"4")
    # Written before values were checked (or by hand): ignored, the next ancestor decides.
    store._db.execute("INSERT INTO xattrs VALUES (?, ?, ?)", (b, REPLICAS_XATTR, b"lots"))
    store._db.execute("INSERT INTO xattrs VALUES (?, ?, ?)", (b, CONSISTENCY_XATTR, b"STRONG"))
    assert store.policy(b) == policy(4, None)
    for bad in ({"replication": True}, {"replication": "3"}, {"replication": 0}, {"consistency": ["strong"]}):
        store.update_volume("v", bad)
        assert store.policy(v) == NONE


def test_policy_of_files_with_several_or_no_names(store: MetaStore) -> None:
    x = store.mkdir(ROOT, b"x", 0o755, 0, 0).ino
    y = store.mkdir(ROOT, b"y", 0o755, 0, 0).ino
    store.setxattr(x, REPLICAS_XATTR, b"2")
    store.setxattr(y, REPLICAS_XATTR, b"3")
    f = new_file(store, b"f", x)
    store.link(f, y, b"f")
    # A hard link has no single parent: the caller says which name it came through.
    assert store.policy(f, parent=x) == policy(2, None)
    assert store.policy(f, parent=y) == policy(3, None)
    assert store.policy(f, y) == policy(3, None)  # positional too: RPC calls pass a list
    assert store.policy(f) in (policy(2, None), policy(3, None))
    assert store.policy(x, parent=y) == policy(2, None)  # a directory has its own parent
    with pytest.raises(NotADirectory):
        store.policy(f, parent=f)
    with pytest.raises(NotFound):
        store.policy(f, parent=999_999)
    # Open and unlinked: no name, so only its own xattrs count.
    g = store.create(x, b"g", 0o644, 0, 0, SESSION).ino
    store.setxattr(g, CONSISTENCY_XATTR, b"eventual")
    store.unlink(x, b"g")
    assert store.policy(g) == policy(None, "eventual")
    store.release(g, SESSION)


def test_policy_below_internal_roots_and_on_readers(store: MetaStore, reader: MetaStore) -> None:
    uploads = store.internal_dir("uploads")
    part = store.make_dirs(uploads, [b"u1"], mode=0o755, uid=0, gid=0).ino
    f = new_file(store, b"1", part)
    assert store.policy(f) == NONE
    store.setxattr(uploads, CONSISTENCY_XATTR, b"quorum")
    assert store.policy(f) == policy(None, "quorum")
    v = store.create_volume("v", {"replication": 2}, mode=0o755, uid=0, gid=0).ino
    g = new_file(store, b"g", v)
    assert reader.policy(g) == store.policy(g) == policy(2, None)
    assert reader.policy(f, parent=part) == policy(None, "quorum")


def test_policy_is_a_few_statements_at_any_depth(store: MetaStore) -> None:
    v = store.create_volume("v", {"replication": 3, "consistency": "strong"}, mode=0o755, uid=0, gid=0).ino
    deepest = store.make_dirs(v, [b"x"] * 400, mode=0o755, uid=0, gid=0).ino
    f = new_file(store, b"f", deepest)
    top = store.lookup(v, b"x").ino
    store.setxattr(top, CONSISTENCY_XATTR, b"quorum")
    statements: list[str] = []
    trace(store, statements.append)
    try:
        assert store.policy(f, parent=deepest) == policy(3, "quorum")
        assert store.policy(deepest) == policy(3, "quorum")
    finally:
        trace(store, None)
    assert len(statements) <= 12, statements


def test_chunk_factors_tell_unknown_chunks_from_default_ones(tmp_path: Path) -> None:
    store = open_meta(tmp_path / "f.db", block_size=64)
    try:
        ino = store.create(ROOT_INO, b"f", 0o644, 0, 0, "s").ino
        refs = [BlockRef(0, cid(1), 64, 64), BlockRef(1, cid(2), 64, 64)]
        store.commit_write(
            ino, size=128, mtime_ns=1, blocks=refs[:1], inline=None, chunk_exists=lambda c: True
        )
        store.commit_write(
            ino, size=128, mtime_ns=2, blocks=refs[1:], inline=None, chunk_exists=lambda c: True, replicas=2
        )
        assert store.chunk_factors([cid(1), cid(2), cid(3)]) == [0, 2, None]
    finally:
        store.close()
