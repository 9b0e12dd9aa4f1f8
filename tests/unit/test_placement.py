"""dfs.core.placement: determinism, minimal movement, weights, zones, eligibility, the layout's wire form."""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core.placement import (
    PARTITION_BITS,
    PARTITIONS,
    Layout,
    LayoutNode,
    NodeState,
    PlacementTable,
    draw,
    moved_fraction,
    partition_of,
)

ACTIVE, DRAINING, OUT = NodeState.ACTIVE, NodeState.DRAINING, NodeState.OUT
REPO = Path(__file__).resolve().parents[2]

# Building a table costs 20-60 ms for these sizes; hypothesis examples stay few.
FEW = settings(max_examples=25, deadline=None)


@functools.lru_cache(maxsize=256)
def table(layout: Layout) -> PlacementTable:
    """Tables are pure functions of the layout, so tests may share them."""
    return PlacementTable(layout)


def node(node_id: str, zone: str = "z", weight: float = 1.0, state: NodeState = ACTIVE) -> LayoutNode:
    return LayoutNode(node_id, zone, weight, state, address=f"{node_id}:7400")


def flat(n: int, prefix: str = "node") -> Layout:
    """``n`` equal-weight ACTIVE nodes in one zone."""
    return Layout(1, tuple(node(f"{prefix}-{i:02d}") for i in range(n)))


def zone_map(layout: Layout) -> dict[str, str]:
    return {n.node_id: n.zone for n in layout.nodes}


def changed(old: PlacementTable, new: PlacementTable, r: int) -> list[tuple[int, set[str], set[str]]]:
    """Per partition whose replica set changed: (partition, removed nodes, added nodes)."""
    out: list[tuple[int, set[str], set[str]]] = []
    for p in range(PARTITIONS):
        before: set[str] = set(old.replicas(p, r))
        after: set[str] = set(new.replicas(p, r))
        if before != after:
            out.append((p, before - after, after - before))
    return out


# Layouts as hypothesis draws them: up to 9 nodes in up to 4 zones, mixed weights and states.
layouts = st.lists(
    st.builds(
        node,
        node_id=st.text("abcdefgh0123-", min_size=1, max_size=6),
        zone=st.sampled_from(["a", "b", "c", "d"]),
        weight=st.floats(0.25, 8.0),
        state=st.sampled_from([ACTIVE, ACTIVE, ACTIVE, DRAINING, OUT]),
    ),
    max_size=9,
    unique_by=lambda n: n.node_id,
).map(lambda nodes: Layout(7, tuple(nodes)))


# --- partitions and determinism ------------------------------------------------------------------------


@given(st.binary(min_size=2, max_size=40))
def test_partition_of_takes_the_top_12_bits(chunk_id: bytes) -> None:
    expected = int.from_bytes(chunk_id, "big") >> (8 * len(chunk_id) - PARTITION_BITS)
    assert partition_of(chunk_id) == expected
    assert 0 <= partition_of(chunk_id) < PARTITIONS


def test_partition_of_examples() -> None:
    assert PARTITIONS == 4096
    assert partition_of(b"\xab\xcd" + bytes(30)) == 0xABC
    assert partition_of(b"\xff\xff" * 16) == 4095
    assert partition_of(b"\x00\x0f" + b"\xff" * 30) == 0
    assert partition_of(b"\x00\x10") == 1
    with pytest.raises(ValueError, match="too short"):
        partition_of(b"\x01")


# A fixed layout whose table is pinned: three zones, mixed weights, one node draining, one out.
GOLDEN_LAYOUT = Layout(
    5,
    (
        node("alpha", "z1", 1.0),
        node("bravo", "z1", 2.0),
        node("charlie", "z2", 1.0),
        node("delta", "z2", 1.5),
        node("echo", "z3", 1.0),
        node("foxtrot", "z3", 1.0, DRAINING),
        node("golf", "z1", 1.0, OUT),
    ),
)
# Changing these means every existing cluster would reshuffle its data on upgrade: never do it by accident.
GOLDEN_DIGEST = "3621e7851a471a66be46a3746b25866f21b1879a662d576bf64489f6d6c66c7f"
GOLDEN_PREFS = {
    0: ("bravo", "charlie", "echo", "delta", "alpha"),
    1: ("echo", "delta", "bravo", "charlie", "alpha"),
    2048: ("charlie", "echo", "alpha", "delta", "bravo"),
    4095: ("delta", "alpha", "echo", "charlie", "bravo"),
}


def digest_of(t: PlacementTable) -> str:
    return hashlib.sha256(json.dumps([t.preference(p) for p in range(PARTITIONS)]).encode()).hexdigest()


def test_golden_table() -> None:
    t = table(GOLDEN_LAYOUT)
    assert {p: t.preference(p) for p in GOLDEN_PREFS} == GOLDEN_PREFS
    assert digest_of(t) == GOLDEN_DIGEST


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_same_table_in_another_process(hash_seed: str) -> None:
    # Python's str hash() is salted per process; a placement that used it would differ here.
    script = (
        "import hashlib, json, sys\n"
        "from dfs.core.placement import PARTITIONS, Layout, PlacementTable\n"
        "t = PlacementTable(Layout.from_wire(json.loads(sys.argv[1])))\n"
        "prefs = [t.preference(p) for p in range(PARTITIONS)]\n"
        "print(hashlib.sha256(json.dumps(prefs).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(GOLDEN_LAYOUT.to_wire())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == digest_of(table(GOLDEN_LAYOUT))


@FEW
@given(layouts, st.randoms(use_true_random=False))
def test_table_depends_only_on_the_active_nodes(layout: Layout, rnd: object) -> None:
    nodes = list(layout.nodes)
    rnd.shuffle(nodes)  # type: ignore[attr-defined]
    # Another order, epoch and addresses, and the non-ACTIVE nodes dropped: the same table.
    other = Layout(
        layout.epoch + 3,
        tuple(
            LayoutNode(n.node_id, n.zone, n.capacity_weight, n.state, "elsewhere:1")
            for n in nodes
            if n.state is ACTIVE
        ),
    )
    a, b = table(layout), table(other)
    assert all(a.preference(p) == b.preference(p) for p in range(PARTITIONS))
    assert a.epoch == layout.epoch


# --- the preference list -------------------------------------------------------------------------------


def check_preference(layout: Layout, pref: Sequence[str], partition: int) -> None:
    """``pref`` is exactly what the module docstring promises for ``partition``."""
    active = {n.node_id: n for n in layout.nodes if n.state is ACTIVE}
    assert sorted(pref) == sorted(active), "a permutation of the ACTIVE nodes"
    score = {i: draw(i, n.capacity_weight, partition) for i, n in active.items()}
    zones = {n.zone for n in active.values()}
    head, tail = pref[: len(zones)], pref[len(zones) :]
    # One node per zone first: each the best of its zone; then the others; both parts best first.
    assert {active[i].zone for i in head} == zones
    for i in head:
        assert all(score[i] >= score[j] for j in active if active[j].zone == active[i].zone)
    for part in (head, tail):
        assert [score[i] for i in part] == sorted((score[i] for i in part), reverse=True)


@FEW
@given(layouts, st.lists(st.integers(0, PARTITIONS - 1), min_size=1, max_size=8))
def test_preference_matches_the_reference_draw(layout: Layout, partitions: list[int]) -> None:
    t = table(layout)
    for p in partitions:
        check_preference(layout, t.preference(p), p)


@FEW
@given(layouts)
def test_zones_and_eligibility_on_every_partition(layout: Layout) -> None:
    t = table(layout)
    zone = zone_map(layout)
    active = {n.node_id for n in layout.nodes if n.state is ACTIVE}
    n_zones = len({zone[i] for i in active})
    for p in range(PARTITIONS):
        pref = t.preference(p)
        assert set(pref) == active and len(pref) == len(active)  # never a DRAINING or OUT node
        for r in (1, 2, 3, 5):
            zs = [zone[i] for i in t.replicas(p, r)]
            # Distinct zones while zones last, then every zone used.
            assert len(set(zs)) == min(r, n_zones, len(active))


def test_three_zones_three_replicas_one_per_zone() -> None:
    layout = Layout(1, tuple(node(f"n{i}", f"zone-{i % 3}", 1.0 + i % 4) for i in range(10)))
    t, zone = table(layout), zone_map(layout)
    for p in range(PARTITIONS):
        assert sorted(zone[i] for i in t.replicas(p, 3)) == ["zone-0", "zone-1", "zone-2"]


def test_two_zones_three_replicas_uses_both() -> None:
    layout = Layout(1, tuple(node(f"n{i}", f"zone-{i % 2}") for i in range(6)))
    t, zone = table(layout), zone_map(layout)
    third_in: collections.Counter[str] = collections.Counter()
    for p in range(PARTITIONS):
        reps = t.replicas(p, 3)
        assert len(set(reps)) == 3
        assert {zone[reps[0]], zone[reps[1]]} == {"zone-0", "zone-1"}
        third_in[zone[reps[2]]] += 1
    # The third replica is just the next best node: either zone, about evenly.
    assert abs(third_in["zone-0"] - third_in["zone-1"]) < 0.1 * PARTITIONS


# --- movement ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(4, 13))
def test_adding_a_node_moves_one_over_n_plus_one(n: int) -> None:
    old_layout = flat(n)
    new_layout = old_layout.with_node(node("newcomer"))
    old, new = table(old_layout), table(new_layout)
    moved = moved_fraction(old, new, 3)
    assert abs(moved - 1 / (n + 1)) < 0.03, moved
    for _, removed, added in changed(old, new, 3):
        # Every change hands one slot to the new node; nothing moves between old nodes.
        assert added == {"newcomer"} and len(removed) == 1
    # The newcomer holds its fair share of replica slots, R/(N+1) of the partitions.
    assert abs(len(new.owned_by("newcomer", 3)) / PARTITIONS - 3 / (n + 1)) < 0.03


@pytest.mark.parametrize("how", ["without", "out", "draining"])
def test_removing_a_node_moves_only_its_slots(how: str) -> None:
    old_layout = flat(8)
    victim = "node-03"
    if how == "without":
        new_layout = old_layout.without(victim)
    else:
        new_layout = old_layout.with_state(victim, OUT if how == "out" else DRAINING)
    old, new = table(old_layout), table(new_layout)
    owned = old.owned_by(victim, 3)
    diffs = changed(old, new, 3)
    assert [p for p, _, _ in diffs] == owned
    assert all(removed == {victim} and len(added) == 1 for _, removed, added in diffs)
    assert moved_fraction(old, new, 3) == pytest.approx(len(owned) / 3 / PARTITIONS)
    assert moved_fraction(old, new, 3) == pytest.approx(1 / 8, abs=0.03)


@settings(max_examples=15, deadline=None)
@given(layouts, st.builds(node, st.just("newcomer"), st.sampled_from(["a", "b", "e"]), st.floats(0.25, 8.0)))
def test_adding_a_node_only_moves_slots_to_it_even_with_zones(layout: Layout, extra: LayoutNode) -> None:
    old, new = table(layout), table(layout.with_node(extra))
    for r in (1, 3):
        for _, removed, added in changed(old, new, r):
            assert added == {"newcomer"} and len(removed) <= 1


@settings(max_examples=15, deadline=None)
@given(layouts.filter(lambda lay: any(n.state is ACTIVE for n in lay.nodes)), st.data())
def test_removing_a_node_only_moves_its_slots_even_with_zones(layout: Layout, data: st.DataObject) -> None:
    victim = data.draw(st.sampled_from([n.node_id for n in layout.nodes if n.state is ACTIVE]))
    old = table(layout)
    new = table(data.draw(st.sampled_from([layout.without(victim), layout.with_state(victim, DRAINING)])))
    for r in (1, 3):
        for _, removed, added in changed(old, new, r):
            assert removed == {victim} and len(added) <= 1


def test_reweighting_moves_data_only_to_or_from_that_node() -> None:
    old_layout = flat(7)
    new_layout = old_layout.with_node(node("node-02", weight=3.0))
    old, new = table(old_layout), table(new_layout)
    diffs = changed(old, new, 3)
    assert diffs, "a heavier node must gain partitions"
    assert all(added == {"node-02"} and len(removed) == 1 for _, removed, added in diffs)


def test_moved_fraction() -> None:
    a = table(flat(6))
    assert moved_fraction(a, a, 3) == 0.0
    assert moved_fraction(a, table(flat(6, prefix="other")), 3) == 1.0
    # Growing 2 -> 3 nodes at r=3 creates copies but moves none; shrinking 3 -> 2 moves a third.
    assert moved_fraction(table(flat(2)), table(flat(3)), 3) == 0.0
    assert moved_fraction(table(flat(3)), table(flat(2)), 3) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        moved_fraction(a, a, 0)


# --- weights -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 6, 10])
def test_double_weight_node_gets_twice_the_primaries(n: int) -> None:
    layout = Layout(1, tuple(node(f"node-{i:02d}", weight=2.0 if i == 0 else 1.0) for i in range(n)))
    t = table(layout)
    primaries: collections.Counter[str] = collections.Counter(t.replicas(p, 1)[0] for p in range(PARTITIONS))
    ideal = 2 / (n + 1)
    assert primaries["node-00"] / PARTITIONS == pytest.approx(ideal, rel=0.03)


def test_primary_shares_follow_weights() -> None:
    layout = Layout(1, tuple(node(f"w{w}", weight=float(w)) for w in (1, 2, 3, 4)))
    t = table(layout)
    primaries: collections.Counter[str] = collections.Counter(t.replicas(p, 1)[0] for p in range(PARTITIONS))
    for w in (1, 2, 3, 4):
        assert primaries[f"w{w}"] / PARTITIONS == pytest.approx(w / 10, abs=0.02)


# --- table API -----------------------------------------------------------------------------------------


def test_replicas_slices_the_preference_and_validates() -> None:
    t = table(flat(4))
    for p in (0, 17, PARTITIONS - 1):
        assert t.replicas(p, 2) == t.preference(p)[:2]
        assert t.replicas(p, 7) == t.preference(p)  # more than eligible: all of them
    chunk = bytes.fromhex("abcd") + bytes(30)
    assert t.for_chunk(chunk, 3) == t.replicas(0xABC, 3)
    for bad_r in (0, -1, 8):  # 8 > max_replicas
        with pytest.raises(ValueError):
            t.replicas(0, bad_r)
    for bad_p in (-1, PARTITIONS):
        with pytest.raises(ValueError):
            t.preference(bad_p)
    with pytest.raises(ValueError):
        PlacementTable(flat(2), max_replicas=0)
    assert PlacementTable(flat(2), max_replicas=12).replicas(0, 12) == table(flat(2)).preference(0)


def test_no_eligible_nodes() -> None:
    t = table(Layout(0, (node("a", state=DRAINING), node("b", state=OUT))))
    assert t.eligible == ()
    assert t.replicas(0, 3) == () and t.owned_by("a", 3) == []


def test_owned_by_agrees_with_replicas() -> None:
    layout = Layout(1, tuple(node(f"n{i}", f"z{i % 3}") for i in range(7)))
    t = table(layout)
    owned = {n.node_id: t.owned_by(n.node_id, 2) for n in layout.nodes}
    for p in range(PARTITIONS):
        assert {i for i, parts in owned.items() if p in parts} == set(t.replicas(p, 2))
    assert sum(map(len, owned.values())) == 2 * PARTITIONS
    assert t.owned_by("stranger", 2) == []


def test_fifty_nodes_build_fast() -> None:
    # A loose bound against algorithmic regressions (e.g. a per-partition BLAKE2b); typical is ~0.2 s.
    layout = Layout(1, tuple(node(f"node-{i:02d}", f"z{i % 5}", 1.0 + i % 3) for i in range(50)))
    start = time.perf_counter()
    PlacementTable(layout)
    assert time.perf_counter() - start < 2.0


# --- layout --------------------------------------------------------------------------------------------


@FEW
@given(layouts, st.integers(0, 2**40), st.integers(1, 9))
def test_layout_wire_round_trip(layout: Layout, epoch: int, replicas: int) -> None:
    layout = Layout(epoch, layout.nodes, replicas)
    wire = layout.to_wire()
    assert Layout.from_wire(wire) == layout
    assert Layout.from_wire(json.loads(json.dumps(wire))) == layout
    assert Layout.from_wire(msgpack.unpackb(msgpack.packb(wire))) == layout


def good_wire() -> dict[str, object]:
    return Layout(3, (node("a"), node("b", "y", 2.5, DRAINING))).to_wire()


def _set(path: tuple[object, ...], value: object) -> dict[str, object]:
    wire = good_wire()
    target: object = wire
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return wire


def _drop(path: tuple[object, ...]) -> dict[str, object]:
    wire = good_wire()
    target: object = wire
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    del target[path[-1]]  # type: ignore[attr-defined]
    return wire


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param([], id="not-a-dict"),
        pytest.param(_set(("epoch",), -1), id="negative-epoch"),
        pytest.param(_set(("epoch",), "3"), id="string-epoch"),
        pytest.param(_set(("epoch",), True), id="bool-epoch"),
        pytest.param(_set(("replicas",), 0), id="zero-replicas"),
        pytest.param(_set(("nodes",), "ab"), id="nodes-not-a-list"),
        pytest.param(_set(("nodes", 1, "node_id"), "a"), id="duplicate-id"),
        pytest.param(_set(("nodes", 0, "node_id"), ""), id="empty-id"),
        pytest.param(_set(("nodes", 0, "capacity_weight"), 0), id="zero-weight"),
        pytest.param(_set(("nodes", 0, "capacity_weight"), -1.0), id="negative-weight"),
        pytest.param(_set(("nodes", 0, "capacity_weight"), float("nan")), id="nan-weight"),
        pytest.param(_set(("nodes", 0, "capacity_weight"), float("inf")), id="inf-weight"),
        pytest.param(_set(("nodes", 0, "capacity_weight"), "1"), id="string-weight"),
        pytest.param(_set(("nodes", 0, "state"), "dead"), id="unknown-state"),
        pytest.param(_set(("nodes", 0, "state"), 1), id="int-state"),
        pytest.param(_set(("nodes", 0, "zone"), None), id="null-zone"),
        pytest.param(_set(("nodes", 0), "a"), id="node-not-a-dict"),
        pytest.param(_set(("nodes", 0, "host"), "h1"), id="unknown-node-key"),
        pytest.param(_set(("version",), 2), id="unknown-key"),
        pytest.param(_drop(("epoch",)), id="missing-epoch"),
        pytest.param(_drop(("nodes", 0, "zone")), id="missing-zone"),
    ],
)
def test_layout_from_wire_rejects(wire: object) -> None:
    with pytest.raises(ValueError):
        Layout.from_wire(wire)


def test_layout_from_wire_defaults() -> None:
    wire = good_wire()
    del wire["replicas"]
    del wire["nodes"][0]["address"]  # type: ignore[index]
    layout = Layout.from_wire(wire)
    assert layout.replicas == 3 and layout.nodes[0].address == ""


def test_layout_edits_bump_the_epoch() -> None:
    base = Layout(4, (node("a"), node("b"), node("c")))
    grown = base.with_node(node("d", "other"))
    assert grown.epoch == 5 and [n.node_id for n in grown.nodes] == ["a", "b", "c", "d"]
    heavier = base.with_node(node("b", weight=4.0))
    assert heavier.epoch == 5 and heavier.node("b").capacity_weight == 4.0
    assert [n.node_id for n in heavier.nodes] == ["a", "b", "c"]  # replaced in place
    drained = base.with_state("c", DRAINING)
    assert drained.epoch == 5 and drained.node("c").state is DRAINING
    assert drained.node("c").address == "c:7400"
    shrunk = base.without("a")
    assert shrunk.epoch == 5 and [n.node_id for n in shrunk.nodes] == ["b", "c"]
    assert base.epoch == 4 and len(base.nodes) == 3  # layouts are values
    for edit in (lambda: base.with_state("zz", OUT), lambda: base.without("zz"), lambda: base.node("zz")):
        with pytest.raises(KeyError):
            edit()


def test_direct_construction_validates() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Layout(0, (node("a"), node("a")))
    with pytest.raises(ValueError):
        Layout(-1, ())
    with pytest.raises(ValueError):
        LayoutNode("a", "z", 0.0, ACTIVE)
    with pytest.raises(ValueError):
        LayoutNode("a", "z", 1.0, "active")  # type: ignore[arg-type]
