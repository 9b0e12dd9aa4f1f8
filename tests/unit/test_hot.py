"""Hot chunks without sockets: read-rate estimates, pins, when a promotion is due, and how readers
spread over a hot chunk's copies."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.cluster.hot import MAX_ADVERTISED, HotChunks, Pins, ReadRates, _Promotion
from dfs.core import config
from dfs.core.placement import Layout, LayoutNode, NodeState, PlacementTable, partition_of
from dfs.core.replicas import HOT_PREFIX_BYTES, ClusterView, Member, hot_targets, read_order, view_from_wire


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CID = bytes(range(32))


def test_rate_counts_reads_over_the_window() -> None:
    clock = Clock()
    rates = ReadRates(window_s=10.0, clock=clock)
    for _ in range(50):
        rates.record(CID)
    assert rates.rate(CID) == pytest.approx(5.0)
    assert rates.rate(b"other") == 0.0


def test_rate_slides_from_the_previous_window_and_forgets_after_a_quiet_spell() -> None:
    clock = Clock()
    rates = ReadRates(window_s=10.0, clock=clock)
    for _ in range(100):
        rates.record(CID)
    clock.now += 12.5  # a quarter of the previous window still overlaps the sliding one
    assert rates.rate(CID) == pytest.approx(100 * 0.75 / 10)
    clock.now += 30.0
    assert rates.rate(CID) == 0.0


def test_rate_tracking_is_bounded() -> None:
    clock = Clock()
    rates = ReadRates(window_s=10.0, max_tracked=3, clock=clock)
    for i in range(10):
        rates.record(bytes([i]) * 32)
    assert rates.rate(bytes([9]) * 32) == 0.0  # not counted: the window was full
    assert rates.rate(bytes([0]) * 32) == pytest.approx(0.1)
    assert len(rates._current) == 3


def test_pins_expire_extend_and_count() -> None:
    clock = Clock()
    pins = Pins(clock)
    pins.pin([CID], 10.0)
    assert pins.pinned(CID) and pins.count() == 1
    clock.now += 5
    pins.pin([CID], 2.0)  # a shorter renewal never shortens a pin
    clock.now += 4
    assert pins.pinned(CID)
    pins.pin([CID], 10.0)
    clock.now += 9
    assert pins.pinned(CID)
    clock.now += 2
    assert not pins.pinned(CID) and pins.count() == 0


def _hot(threshold: float = 10.0, extra: int = 2, ttl: float = 100.0) -> tuple[HotChunks, Clock]:
    cfg = config.parse(
        f"[cluster]\nhot_reads_per_s = {threshold}\nhot_extra_copies = {extra}\nhot_ttl_s = {ttl}\n", env={}
    )
    clock = Clock()
    none: Any = None  # the store, chunk I/O and limiter are only used by a promotion itself
    return HotChunks(cfg, none, none, none, limiter=none, clock=clock), clock


def test_promotion_is_due_above_the_threshold_then_renewed_at_half_ttl_while_warm() -> None:
    hot, clock = _hot(threshold=10.0, ttl=100.0)
    assert not hot.due(CID, 9.9)
    assert hot.due(CID, 10.0)
    hot._promoted[CID] = _Promotion(clock.now, clock.now + 100.0, ("n2",))
    assert not hot.due(CID, 50.0)  # copies are fresh
    clock.now += 50
    assert not hot.due(CID, 2.0)  # cooled below a quarter of the threshold: let them lapse
    assert hot.due(CID, 2.5)  # warm: renew, although its reads are now shared by more copies
    clock.now += 51  # lapsed: the full threshold again
    assert not hot.due(CID, 9.0)
    assert hot.due(CID, 10.0)


def test_promotion_is_not_started_twice_and_not_at_all_when_off() -> None:
    hot, _ = _hot()
    hot._busy.add(CID)
    assert not hot.due(CID, 1000.0)
    off, _ = _hot(threshold=0.0)
    assert not off.enabled and not off.due(CID, 1e9)
    no_extra, _ = _hot(extra=0)
    assert not no_extra.enabled


def test_advertises_the_most_recent_live_promotions_as_short_prefixes() -> None:
    hot, clock = _hot(ttl=100.0)
    for i in range(MAX_ADVERTISED + 3):
        cid = bytes([i]) * 32
        hot._promoted[cid] = _Promotion(clock.now + i, clock.now + 100.0, ("n2",))
    hot._promoted[b"\xee" * 32] = _Promotion(clock.now + 99, clock.now - 1, ("n2",))  # lapsed
    ads = hot.advertised()
    assert len(ads) == MAX_ADVERTISED
    assert ads[0] == (bytes([MAX_ADVERTISED + 2]) * HOT_PREFIX_BYTES).hex()
    assert (b"\xee" * HOT_PREFIX_BYTES).hex() not in ads
    assert hot.status()["hot_chunks"] == MAX_ADVERTISED + 3


# --------------------------------------------------------------------------- readers


def _view(n: int = 6, hot: dict[str, int] | None = None, down: tuple[str, ...] = ()) -> ClusterView:
    nodes = tuple(
        LayoutNode(f"n{i}", f"z{i}", 1.0, NodeState.ACTIVE, f"127.0.0.1:{7400 + i}") for i in range(n)
    )
    members = {f"n{i}": Member(f"n{i}", "dead" if f"n{i}" in down else "alive") for i in range(n)}
    return ClusterView(PlacementTable(Layout(3, nodes)), members, home="", hot=hot or {})


def test_hot_targets_are_the_next_live_nodes_after_the_replicas() -> None:
    view = _view()
    pref = list(view.table.preference(partition_of(CID)))
    assert hot_targets(view, CID, 2, 2) == pref[2:4]
    down = _view(down=(pref[2],))
    assert hot_targets(down, CID, 2, 2) == pref[3:5]


def test_readers_spread_over_a_hot_chunks_replicas_and_extra_copies() -> None:
    prefix = CID[:HOT_PREFIX_BYTES].hex()
    cold = _view()
    hot = _view(hot={prefix: 2})
    pref = list(cold.table.preference(partition_of(CID)))
    firsts_cold = {read_order(cold, CID, 2)[0] for _ in range(50)}
    assert firsts_cold <= set(pref[:2])
    seen: set[str] = set()
    for i in range(200):
        order = read_order(hot, CID, 2, rng=iter([(i * 0.37 + k * 0.61) % 1 for k in range(10)]).__next__)
        assert set(order[:4]) == set(pref[:4])  # every copy first, in some order
        assert sorted(order) == sorted(n.node_id for n in hot.layout.nodes)
        seen.add(order[0])
    assert seen == set(pref[:4])
    other = bytes(32)  # a cold chunk in a view with a hot one is read as before
    assert read_order(hot, other, 2)[:2] == read_order(cold, other, 2)[:2]


def test_view_from_wire_collects_hot_chunks_from_live_members() -> None:
    layout = Layout(1, (LayoutNode("a", "z1", 1.0, NodeState.ACTIVE, "x:1"),)).to_wire()
    raw = {
        "layout": layout,
        "members": [
            {"node_id": "a", "status": "alive", "hot": ["aabbccddeeff"], "hot_extra": 2},
            {"node_id": "b", "status": "alive", "hot": ["aabbccddeeff", "001122334455"], "hot_extra": 3},
            {"node_id": "c", "status": "dead", "hot": ["ffffffffffff"], "hot_extra": 2},
        ],
    }
    view = view_from_wire(raw, "a")
    assert view.hot == {"aabbccddeeff": 3, "001122334455": 3}
    assert view.hot_extra(bytes.fromhex("aabbccddeeff") + bytes(26)) == 3
    assert view.hot_extra(bytes(32)) == 0
