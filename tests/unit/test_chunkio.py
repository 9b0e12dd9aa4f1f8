"""The pure rules of replicated chunk I/O (dfs/core/replicas.py, dfs/client/chunks.py) and the
daemon's deletion log and controller rule (daemon/cluster/deletions.py, daemon/cluster/controller.py),
plus ChunkIO's acknowledgement rule over fake nodes."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import math
import os
import weakref
from typing import Any

import pytest
import trio
import trio.testing

from daemon.cluster.controller import dead_past_grace
from daemon.cluster.deletions import DeletionLog
from dfs.client.chunks import PROBE_MIN_BYTES, ChunkIO
from dfs.core.endpoints import CHUNK_HAS
from dfs.core.errors import ChunkMissing, CorruptChunk, Unavailable
from dfs.core.placement import Layout, LayoutNode, NodeState, PlacementTable, partition_of
from dfs.core.replicas import ClusterView, Member, Policy, copies_needed, read_order, write_targets


def layout(n: int, zones: int = 3, out: tuple[str, ...] = ()) -> Layout:
    nodes = tuple(
        LayoutNode(
            f"n{i}", f"z{i % zones}", 1.0, NodeState.OUT if f"n{i}" in out else NodeState.ACTIVE, f"h{i}:7400"
        )
        for i in range(n)
    )
    return Layout(1, nodes)


def view(n: int = 5, *, down: tuple[str, ...] = (), home: str = "n0", r: int = 3) -> ClusterView:
    members = {f"n{i}": Member(f"n{i}", "dead" if f"n{i}" in down else "alive") for i in range(n)}
    return ClusterView(PlacementTable(layout(n)), members, home=home, default_policy=Policy(r, "quorum"))


def test_copies_needed() -> None:
    assert [copies_needed("strong", n) for n in (1, 2, 3, 5)] == [1, 2, 3, 5]
    assert [copies_needed("quorum", n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert [copies_needed("eventual", n) for n in (1, 3)] == [1, 1]
    with pytest.raises(ValueError, match="unknown"):
        copies_needed("maybe", 3)


def test_targets_are_the_replicas_when_all_are_up() -> None:
    v = view()
    for _ in range(50):
        cid = os.urandom(32)
        targets, down, spares = write_targets(v, cid, 3)
        assert targets == list(v.table.replicas(partition_of(cid), 3))
        assert down == []
        assert len({v.zone(t) for t in targets}) == 3  # one per zone
        assert set(spares).isdisjoint(targets)


def test_a_dead_replica_is_substituted_by_the_next_live_node() -> None:
    for _ in range(50):
        cid = os.urandom(32)
        reps = view().table.replicas(partition_of(cid), 3)
        v = view(down=(reps[1],))
        targets, down, _spares = write_targets(v, cid, 3)
        assert down == [reps[1]]
        assert len(targets) == 3 and reps[1] not in targets
        assert targets[:2] == [reps[0], reps[2]]


def test_r_larger_than_the_cluster_puts_one_copy_on_every_node() -> None:
    v = view(2)
    targets, down, spares = write_targets(v, os.urandom(32), 3)
    assert sorted(targets) == ["n0", "n1"] and down == [] and spares == []


def test_read_order_prefers_home_then_zone_and_puts_dead_nodes_last() -> None:
    for _ in range(50):
        cid = os.urandom(32)
        reps = list(view().table.replicas(partition_of(cid), 3))
        v = view(home=reps[2], down=(reps[0],))
        order = read_order(v, cid)
        assert order[0] == reps[2]
        assert order[-1] == reps[0]
        assert sorted(order) == sorted(f"n{i}" for i in range(5))


def test_deletion_log_refuses_checks_that_a_deletion_may_have_overtaken() -> None:
    now = [100.0]
    log = DeletionLog(clock=lambda: now[0])
    a, b = b"a" * 32, b"b" * 32
    log.started([a])
    assert log.refuses(a, 99.0) and log.refuses(a, 101.0)  # in progress: no check can vouch
    now[0] = 102.0
    log.finished([a])
    assert log.refuses(a, 101.0)  # the check began before the deletion was done
    assert not log.refuses(a, 103.0)  # began after: its "present" answer means a new copy
    assert not log.refuses(b, 0.0)
    log.started([b], finish_in_s=30.0)
    assert log.refuses(b, 120.0) and not log.refuses(b, 133.0)
    now[0] = 102.0 + 4000
    log.trim()
    assert len(log) == 0
    assert log.refuses(a, 103.0)  # forgotten: an old check can no longer be vouched for
    assert not log.refuses(a, now[0] + 1)


def test_dead_past_grace() -> None:
    lay = layout(4, out=("n3",))
    members: dict[str, dict[str, Any]] = {
        "n0": {"status": "alive", "self": True},
        "n1": {"status": "dead", "for_s": 11.0},
        "n2": {"status": "dead", "for_s": 3.0},
        "n3": {"status": "dead", "for_s": 99.0},
    }
    assert dead_past_grace(lay, members, 10.0) == ["n1"]


class FakeNode:
    """A node's chunk RPCs: stores blobs; may hang (frozen) or fail."""

    def __init__(self, name: str, nodes: dict[str, FakeNode]) -> None:
        self.name = name
        self.blobs: dict[bytes, bytes] = {}
        self.hints: list[tuple[list[str], list[bytes]]] = []
        self.frozen = trio.Event()
        self.frozen.set()
        self.broken = False
        self.verified: list[bytes] = []
        self.calls: list[str] = []
        self.keep_copies = False  # store a copy of each blob, not the caller's object
        nodes[name] = self

    async def call(self, method: str, *args: Any) -> Any:
        await self.frozen.wait()
        await trio.lowlevel.checkpoint()
        if self.broken:
            raise Unavailable(f"{self.name} is broken")
        self.calls.append(method)
        if method == "chunk.has":
            return [cid in self.blobs for cid in args[0]]
        if method == "chunk.put":
            self.blobs[args[0]] = bytes(args[1]) if self.keep_copies else args[1]
            return True
        if method == "chunk.get":
            if args[0] not in self.blobs:
                raise ChunkMissing("not stored")
            return self.blobs[args[0]]
        if method == "chunk.hint":
            self.hints.append((args[0], args[1]))
            return None
        if method == "chunk.verify":
            self.verified.append(args[0])
            return True
        raise AssertionError(method)


async def _chunkio(nursery: trio.Nursery, v: ClusterView, nodes: dict[str, FakeNode]) -> ChunkIO:
    async def fetch() -> ClusterView:
        return v

    io = ChunkIO(
        nodes["n0"],
        "n0",
        nursery,
        fetch_view=fetch,
        connect=lambda address: nodes["n" + address[1:].split(":")[0]],
        refresh_s=math.inf,
        peer_timeout_s=5.0,
    )
    io.set_view(v)
    return io


@pytest.mark.parametrize(("level", "acked"), [("strong", False), ("quorum", True), ("eventual", True)])
async def test_acknowledgement_with_one_replica_frozen(
    level: str, acked: bool, autojump_clock: trio.testing.MockClock
) -> None:
    nodes: dict[str, FakeNode] = {}
    for i in range(5):
        FakeNode(f"n{i}", nodes)
    v = view()
    cid = os.urandom(32)
    reps = list(v.table.replicas(partition_of(cid), 3))
    frozen = nodes[reps[1]]
    frozen.frozen = trio.Event()  # never set: the node hangs
    async with trio.open_nursery() as nursery:
        io = await _chunkio(nursery, v, nodes)
        with trio.move_on_after(2.0) as scope:
            copies = await io.put(cid, b"blob", Policy(3, level))
        assert scope.cancelled_caught == (not acked)
        if acked:
            assert copies >= copies_needed(level, 3)
            # The frozen replica is owed its copy: a holder recorded a hint for it.
            assert any(reps[1] in t for n in nodes.values() for t, _ in n.hints)
        else:
            # Past peer_timeout_s the frozen replica is replaced by the next node: then it acks.
            copies = await io.put(cid, b"blob", Policy(3, level))
            assert copies == 3
            assert sum(cid in n.blobs for n in nodes.values()) == 3
            assert any(reps[1] in t for n in nodes.values() for t, _ in n.hints)
        nursery.cancel_scope.cancel()


async def test_read_falls_back_past_missing_and_broken_copies() -> None:
    nodes: dict[str, FakeNode] = {}
    for i in range(5):
        FakeNode(f"n{i}", nodes)
    v = view()
    cid = os.urandom(32)
    reps = list(v.table.replicas(partition_of(cid), 3))
    nodes[reps[2]].blobs[cid] = b"good"
    nodes[reps[0]].broken = True
    async with trio.open_nursery() as nursery:
        io = await _chunkio(nursery, v, nodes)
        blob, source = await io.get(cid)
        assert (blob, source) == (b"good", reps[2])
        with pytest.raises(Unavailable):  # a node could not be asked: the chunk may be there
            await io.get(os.urandom(32))
        nodes[reps[0]].broken = False
        with pytest.raises(ChunkMissing):  # every node answered: it is nowhere
            await io.get(os.urandom(32))
        nursery.cancel_scope.cancel()


async def test_a_copy_that_fails_to_decode_is_skipped_and_reported_to_its_node() -> None:
    nodes: dict[str, FakeNode] = {}
    for i in range(5):
        FakeNode(f"n{i}", nodes)
    v = view(home="")
    cid = os.urandom(32)
    for node in nodes.values():
        node.blobs[cid] = b"bad"
    first = read_order(v, cid)[0]
    good = read_order(v, cid)[1]
    nodes[good].blobs[cid] = b"good"

    async def decode(blob: bytes) -> bytes:
        if blob != b"good":
            raise CorruptChunk("checksum mismatch")
        return blob

    async with trio.open_nursery() as nursery:
        io = await _chunkio(nursery, v, nodes)
        assert await io.get_plain(cid, decode) == b"good"
        await trio.testing.wait_all_tasks_blocked()
        assert nodes[first].verified == [cid]  # asked to check (and replace) its copy
        assert all(not n.verified for name, n in nodes.items() if name != first)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("level", ["strong", "quorum"])
async def test_a_replica_known_dead_is_substituted_and_the_write_acknowledged(level: str) -> None:
    nodes: dict[str, FakeNode] = {}
    for i in range(5):
        FakeNode(f"n{i}", nodes)
    cid = os.urandom(32)
    reps = list(view().table.replicas(partition_of(cid), 3))
    v = view(down=(reps[1],))
    nodes[reps[1]].broken = True
    async with trio.open_nursery() as nursery:
        io = await _chunkio(nursery, v, nodes)
        copies = await io.put(cid, b"blob", Policy(3, level))
        nursery.cancel_scope.cancel()
    assert copies == 3  # R copies on R live nodes: the need counts replicas, not substitutes
    assert sum(cid in n.blobs for n in nodes.values()) == 3
    assert any(reps[1] in t for n in nodes.values() for t, _ in n.hints)


async def test_has_any_does_not_wait_for_a_frozen_node_when_others_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes: dict[str, FakeNode] = {}
    for i in range(5):
        FakeNode(f"n{i}", nodes)
    v = view()
    ids = [os.urandom(32) for _ in range(20)]
    for cid in ids:
        for node_id in v.table.replicas(partition_of(cid), 3)[1:]:
            nodes[node_id].blobs[cid] = b"x"
    frozen = nodes["n1"]
    frozen.frozen = trio.Event()
    async with trio.open_nursery() as nursery:
        io = await _chunkio(nursery, v, nodes)
        start = trio.current_time()
        assert await io.has_any(ids) == set(ids)
        assert trio.current_time() - start < 1.0  # not the 5 s peer timeout
        nursery.cancel_scope.cancel()


async def test_only_a_chunk_worth_a_round_trip_is_asked_about_before_it_is_sent() -> None:
    nodes: dict[str, FakeNode] = {}
    for i in range(3):
        FakeNode(f"n{i}", nodes)
    small, large = b"s" * (PROBE_MIN_BYTES - 1), b"l" * PROBE_MIN_BYTES
    async with trio.open_nursery() as nursery:
        io = await _chunkio(nursery, view(3), nodes)
        for blob in (small, small, large, large):
            await io.put(hashlib.sha256(blob).digest(), blob, Policy(3, "strong"))
        nursery.cancel_scope.cancel()
    for node in nodes.values():
        # The small chunk is sent twice (a put of a chunk held is a cheap no-op there); the
        # large one is asked about each time and sent once.
        assert node.calls == ["chunk.put", "chunk.put", "chunk.has", "chunk.put", "chunk.has"]


class _Blob(bytearray):
    """A blob a test can hold a weak reference to."""


@pytest.mark.parametrize("broken", [False, True])
async def test_a_put_lets_go_of_the_blob_without_the_cycle_collector(broken: bool) -> None:
    """Once its copies are made the blob is freed by reference counting alone.  A reference
    cycle among put's tasks (or a kept traceback of a failed copy) held every block a mount
    wrote until Python's cycle collector ran: 100-150 MiB of them in a mount under a long write."""
    nodes: dict[str, FakeNode] = {}
    for i in range(5):
        FakeNode(f"n{i}", nodes).keep_copies = True
    cid = os.urandom(32)
    if broken:  # a replica fails: the copy goes on to a spare, and the failure is kept
        nodes[view().table.replicas(partition_of(cid), 3)[1]].broken = True
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            io = await _chunkio(nursery, view(), nodes)
            blob = _Blob(b"x" * PROBE_MIN_BYTES)
            ref = weakref.ref(blob)
            assert await io.put(cid, blob, Policy(3, "strong")) == 3
            await trio.testing.wait_all_tasks_blocked()
            del blob
            assert ref() is None
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()
    assert sum(cid in n.blobs for n in nodes.values()) == 3


async def test_connections_to_addresses_no_node_has_are_closed_on_refresh() -> None:
    """A node that comes back at another address gets a new connection; the old one is closed
    when the view no longer names its address (kept, there was one per address ever seen)."""
    nodes: dict[str, FakeNode] = {}
    for i in range(3):
        FakeNode(f"n{i}", nodes)
    closed: list[str] = []

    class Peer:
        def __init__(self, address: str) -> None:
            self.address = address
            self.node = nodes["n" + address[1:].split(":")[0]]

        async def call(self, method: str, *args: Any) -> Any:
            return await self.node.call(method, *args)

        async def aclose(self) -> None:
            closed.append(self.address)

    current = [view(3)]

    async def fetch() -> ClusterView:
        return current[0]

    async with trio.open_nursery() as nursery:
        io = ChunkIO(nodes["n0"], "n0", nursery, fetch_view=fetch, connect=Peer, refresh_s=math.inf)
        await io.view()
        for i in (1, 2):
            await io.call_node(f"n{i}", CHUNK_HAS, [os.urandom(32)])
        assert sorted(io._peers) == ["h1:7400", "h2:7400"]
        moved = list(layout(3).nodes)
        moved[2] = dataclasses.replace(moved[2], address="h2:7401")  # n2 restarted elsewhere
        current[0] = ClusterView(PlacementTable(Layout(2, tuple(moved))), home="n0")
        io.invalidate()
        await io.view()
        await trio.testing.wait_all_tasks_blocked()
        assert closed == ["h2:7400"]
        assert sorted(io._peers) == ["h1:7400"]
        await io.call_node("n2", CHUNK_HAS, [os.urandom(32)])
        assert sorted(io._peers) == ["h1:7400", "h2:7401"]
        nursery.cancel_scope.cancel()
