"""Pure tests of the SWIM + Lifeguard state machine in dfs.core.gossip (no sockets, no clock).

Single-node tests feed hand-built messages to one :class:`Gossip` and read what it sends.  Cluster
tests run N instances in :class:`Sim`: a fake clock that jumps from one deadline to the next, and
a fake network with per-datagram loss, random delay, partitions, killed nodes and a slow member
(a node whose loop only gets to run every ``lag_s``, as if it kept blocking).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core.errors import ConfigError, InvalidArgument
from dfs.core.gossip import (
    Ack,
    Alive,
    Dead,
    EventKind,
    Gossip,
    GossipConfig,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    StateEntry,
    Status,
    Suspect,
    decode_datagram,
    decode_push_pull,
    encode_datagram,
    encode_message,
    encode_push_pull,
)
from dfs.core.gossip.awareness import Awareness
from dfs.core.gossip.broadcast import BroadcastQueue
from dfs.core.gossip.member import MemberEvent
from dfs.core.gossip.suspicion import Suspicion, suspicion_timeout_s

CFG = GossipConfig.fast_test()


# ============================================================================ simulator


@dataclass
class SimNode:
    name: str
    address: str
    gossip: Gossip
    up: bool = True
    lag_s: float = 0.0  # > 0: the node's loop only runs at multiples of lag_s
    health: list[tuple[float, int]] = field(default_factory=list)  # (time, local_health) after each call


@dataclass(order=True)
class _Delivery:
    at_s: float
    order: int
    kind: str = field(compare=False)  # "dgram", "req" (push-pull request) or "rep" (its reply)
    src: str = field(compare=False)
    dst: str = field(compare=False)
    payload: bytes = field(compare=False)


class Sim:
    """N gossip nodes on a deterministic fake clock and network."""

    def __init__(
        self,
        config: GossipConfig = CFG,
        *,
        seed: int = 1,
        loss: float = 0.0,
        delay_s: tuple[float, float] = (0.0005, 0.004),
    ) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.loss = loss
        self.delay_s = delay_s
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.by_address: dict[str, SimNode] = {}
        self.group: dict[str, int] = {}  # partition group per address; only equal groups talk
        self.log: list[tuple[float, str, MemberEvent]] = []  # (time, observer, event)
        self.max_datagram_bytes = 0
        self.sent = 0
        self.lost = 0
        self._heap: list[_Delivery] = []
        self._order = 0

    # ------------------------------------------------------------------ topology

    def add(self, name: str, *, join: str | None = None, lag_s: float = 0.0) -> SimNode:
        address = f"10.0.0.{len(self.nodes) + 1}:7401"
        node = SimNode(name, address, self._new_gossip(name, address), lag_s=lag_s)
        self.nodes[name] = node
        self.by_address[address] = node
        self.group[address] = 0
        if join is not None:
            node.gossip.join([self.nodes[join].address], self.now)
            self._drain(node)
        return node

    def cluster(self, n: int, *, settle_s: float = 3.0) -> list[SimNode]:
        nodes = [self.add("n0")] + [self.add(f"n{i}", join="n0") for i in range(1, n)]
        self.run_for(settle_s)
        return nodes

    def _new_gossip(self, name: str, address: str) -> Gossip:
        meta = {"zone": "z1", "free_bytes": 10**12}
        return Gossip(name, address, meta, self.config, now_s=self.now, rng=random.Random(self.rng.random()))

    def kill(self, name: str) -> None:
        self.nodes[name].up = False

    def restart(self, name: str, *, join: str) -> None:
        """A fresh process at the same address: new state, incarnation 0."""
        node = self.nodes[name]
        node.gossip = self._new_gossip(name, node.address)
        node.up = True
        node.gossip.join([self.nodes[join].address], self.now)
        self._drain(node)

    def update_meta(self, name: str, meta: dict[str, Any]) -> None:
        node = self.nodes[name]
        node.gossip.update_meta(meta, self.now)
        self._drain(node)

    def leave(self, name: str) -> None:
        node = self.nodes[name]
        node.gossip.leave(self.now)
        self._drain(node)

    def partition(self, *names: str) -> None:
        for name in names:
            self.group[self.nodes[name].address] = 1

    def heal(self) -> None:
        for address in self.group:
            self.group[address] = 0

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    # ------------------------------------------------------------------ clock

    def run_for(self, duration_s: float) -> None:
        self.run_until(self.now + duration_s)

    def run_until(self, t_end: float, stop: Callable[[], bool] | None = None) -> bool:
        stalled = 0
        while True:
            if stop is not None and stop():
                return True
            t_net = self._heap[0].at_s if self._heap else math.inf
            t_node, who = min(((self._wake(n), n.name) for n in self.live()), default=(math.inf, ""))
            t = min(t_net, t_node)
            if t > t_end:
                self.now = t_end
                return stop is not None and stop()
            stalled = stalled + 1 if t <= self.now else 0
            assert stalled < 10_000, "simulation made no progress (a deadline that never moves)"
            self.now = max(self.now, t)
            if t_net <= t_node:
                self._deliver(heapq.heappop(self._heap))
            else:
                node = self.nodes[who]
                node.gossip.tick(self.now)
                self._drain(node)

    def _wake(self, node: SimNode) -> float:
        return self._grid(node, max(node.gossip.next_deadline(), self.now))

    @staticmethod
    def _grid(node: SimNode, t: float) -> float:
        if node.lag_s <= 0 or math.isinf(t):
            return t
        # max(): float rounding must never move a wake-up before the deadline it serves.
        return max(t, math.ceil(t / node.lag_s - 1e-9) * node.lag_s)

    # ------------------------------------------------------------------ network

    def _talks(self, src: str, dst: str) -> bool:
        a, b = self.by_address.get(src), self.by_address.get(dst)
        return a is not None and b is not None and a.up and b.up and self.group[src] == self.group[dst]

    def _schedule(self, kind: str, src: str, dst: str, payload: bytes) -> None:
        if kind == "dgram":
            self.sent += 1
            self.max_datagram_bytes = max(self.max_datagram_bytes, len(payload))
            if self.rng.random() < self.loss:
                self.lost += 1
                return
        at = self.now + self.rng.uniform(*self.delay_s)
        target = self.by_address.get(dst)
        if target is not None:
            at = self._grid(target, at)  # a slow node reads its socket only when its loop runs
        self._order += 1
        heapq.heappush(self._heap, _Delivery(at, self._order, kind, src, dst, payload))

    def _deliver(self, d: _Delivery) -> None:
        if not self._talks(d.src, d.dst):
            return
        node = self.by_address[d.dst]
        if d.kind == "dgram":
            node.gossip.receive(d.src, d.payload, self.now)
        else:
            reply = node.gossip.receive_stream(d.src, d.payload, self.now)
            assert (reply is None) == (d.kind == "rep")
            if reply is not None:
                self._schedule("rep", d.dst, d.src, reply)
        self._drain(node)

    def _drain(self, node: SimNode) -> None:
        node.health.append((self.now, node.gossip.local_health))
        for address, data in node.gossip.outgoing():
            self._schedule("dgram", node.address, address, data)
        for address, data in node.gossip.outgoing_streams():
            self._schedule("req", node.address, address, data)
        for event in node.gossip.events():
            self.log.append((self.now, node.name, event))

    # ------------------------------------------------------------------ observations

    def statuses(self, about: str) -> dict[str, Status | None]:
        """What every other live node believes about ``about``."""
        out: dict[str, Status | None] = {}
        for n in self.live():
            if n.name != about:
                member = n.gossip.members.get(about)
                out[n.name] = None if member is None else member.status
        return out

    def all_see(self, about: str, status: Status) -> bool:
        return all(s is status for s in self.statuses(about).values())

    def converged(self) -> bool:
        names = {n.name for n in self.live()}
        return all(
            {k for k, m in n.gossip.members.items() if m.status is Status.ALIVE} == names for n in self.live()
        )

    def events(
        self, kind: EventKind, about: str | None = None, after_s: float = -1.0
    ) -> list[tuple[float, str]]:
        return [
            (t, observer)
            for t, observer, e in self.log
            if e.kind is kind and (about is None or e.member.node_id == about) and t > after_s
        ]


def detection_window_s(config: GossipConfig, n: int) -> tuple[float, float]:
    """Earliest and latest time from a death to DEAD at every observer, with no loss.

    Earliest: a suspicion can shrink no further than its minimum.  Latest: in the worst slot of the
    round-robin a member waits n − 1 rounds to be probed, plus the failing round, the longest
    suspicion and a few gossip rounds to spread the verdict.
    """
    lower = config.suspicion_min_s(n)
    upper = n * config.probe_interval_s + config.suspicion_max_s(n) + 10 * config.gossip_interval_s
    return lower, upper


# ============================================================================ single-node helpers


def one(name: str = "a", config: GossipConfig = CFG, meta: dict[str, Any] | None = None) -> Gossip:
    return Gossip(name, f"{name}:7401", meta or {"zone": "z1"}, config, now_s=0.0, rng=random.Random(7))


def dgram(*msgs: Message) -> bytes:
    return encode_datagram([encode_message(m) for m in msgs])


def sent(g: Gossip) -> list[tuple[str, Message]]:
    out: list[tuple[str, Message]] = []
    for address, data in g.outgoing():
        messages, malformed = decode_datagram(data, max_meta_bytes=g.config.max_meta_bytes)
        assert malformed == 0
        out.extend((address, m) for m in messages)
    return out


def next_ping(g: Gossip) -> tuple[float, str, Ping]:
    """Tick ``g`` from deadline to deadline until it starts a probe: (time, address, ping)."""
    for _ in range(100):
        t = g.next_deadline()
        g.tick(t)
        pings = [(a, m) for a, m in sent(g) if isinstance(m, Ping)]
        if pings:
            [(address, ping)] = pings
            assert isinstance(ping, Ping)
            return t, address, ping
    raise AssertionError("no probe started")


def status(g: Gossip, node: str) -> tuple[Status, int]:
    m = g.members[node]
    return m.status, m.incarnation


# ============================================================================ config and formulas


def test_presets_follow_memberlist() -> None:
    lan, local = GossipConfig.lan(), GossipConfig.local()
    assert (lan.probe_interval_s, lan.probe_timeout_s, lan.suspicion_mult, lan.retransmit_mult) == (
        1.0,
        0.5,
        4,
        4,
    )
    assert (lan.gossip_interval_s, lan.gossip_nodes, lan.push_pull_interval_s) == (0.2, 3, 30.0)
    assert (local.probe_timeout_s, local.suspicion_mult, local.retransmit_mult) == (0.2, 3, 2)
    assert (local.gossip_interval_s, local.push_pull_interval_s, local.gossip_to_the_dead_s) == (
        0.1,
        15.0,
        15.0,
    )
    assert GossipConfig.wan().probe_interval_s == 5.0
    assert CFG.probe_timeout_s < CFG.probe_interval_s


@pytest.mark.parametrize(
    "changes",
    [
        {"probe_timeout_s": 1.0},
        {"probe_interval_s": 0.0},
        {"gossip_nodes": 0},
        {"indirect_checks": -1},
        {"max_meta_bytes": 1000},
        {"max_packet_bytes": 70_000},
        {"reap_after_s": 1.0},
        {"probe_interval_s": math.nan},
    ],
)
def test_config_rejects_nonsense(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        GossipConfig(**changes)


def test_lan_scaling_formulas_match_memberlist() -> None:
    lan = GossipConfig.lan()
    # N=3: no confirmations possible (k=0), dead after the minimum, 4 s.
    assert (lan.suspicion_min_s(3), lan.suspicion_confirmations(3)) == (4.0, 0)
    assert (lan.suspicion_min_s(5), lan.suspicion_max_s(5), lan.suspicion_confirmations(5)) == (4.0, 24.0, 2)
    assert lan.suspicion_min_s(100) == pytest.approx(8.0)
    assert lan.suspicion_max_s(100) == pytest.approx(48.0)
    assert [lan.retransmit_limit(n) for n in (1, 9, 10, 99, 100)] == [4, 4, 8, 8, 12]
    assert lan.scaled_push_pull_interval_s(32) == 30.0
    assert lan.scaled_push_pull_interval_s(33) == 60.0
    assert lan.scaled_push_pull_interval_s(1000) == 30.0 * 6


def test_suspicion_shrinks_with_independent_confirmations() -> None:
    assert suspicion_timeout_s(0, 2, 4.0, 24.0) == 24.0
    assert suspicion_timeout_s(1, 2, 4.0, 24.0) == pytest.approx(24 - math.log(2) / math.log(3) * 20)
    assert suspicion_timeout_s(2, 2, 4.0, 24.0) == pytest.approx(4.0)
    assert suspicion_timeout_s(0, 0, 4.0, 24.0) == 4.0
    s = Suspicion("a", k=2, min_s=4.0, max_s=24.0, start_s=100.0)
    assert s.deadline_s == 124.0
    assert not s.confirm("a")  # the accuser itself is not a confirmation
    assert s.confirm("b") and not s.confirm("b")
    assert s.deadline_s == pytest.approx(100 + suspicion_timeout_s(1, 2, 4.0, 24.0))
    assert s.confirm("c") and s.deadline_s == pytest.approx(104.0)
    assert not s.confirm("d")  # already at the minimum


def test_awareness_is_bounded() -> None:
    a = Awareness(8)
    a.apply_delta(-1)
    assert a.score == 0 and a.scale(1.0) == 1.0
    for _ in range(20):
        a.apply_delta(1)
    assert a.score == 7 and a.scale(0.5) == 4.0


def test_broadcast_queue_replaces_older_news_and_is_bounded() -> None:
    q = BroadcastQueue(max_items=3)
    q.push("x", b"old-x")
    q.push("x", b"new-x")
    assert len(q) == 1 and q.take(100, limit=5) == [b"new-x"]
    for name in "abc":
        q.push(name, name.encode() * 4)
    assert len(q) == 3 and q.dropped == 1 and "x" not in q  # the most-sent item went first
    q.push("d", b"dddd")
    assert q.dropped == 2 and "a" not in q  # then the oldest
    assert q.take(8, limit=1) == [b"dddd", b"cccc"]  # fewest transmits, newest first, within budget
    assert q.take(100, limit=1) == [b"bbbb"] and len(q) == 0


# ============================================================================ incarnation rules


def test_incarnation_precedence() -> None:
    g = one()
    steps: list[tuple[Message, tuple[Status, int]]] = [
        (Alive("b", 5, "b:7401", {}), (Status.ALIVE, 5)),
        (Suspect("b", 4, "c"), (Status.ALIVE, 5)),  # older suspicion: ignored
        (Suspect("b", 5, "c"), (Status.SUSPECT, 5)),  # suspect(i) beats alive(j) at i >= j
        (Alive("b", 5, "b:7401", {}), (Status.SUSPECT, 5)),  # alive needs i > j
        (Alive("b", 6, "b:7401", {}), (Status.ALIVE, 6)),
        (Dead("b", 5, "c"), (Status.ALIVE, 6)),
        (Dead("b", 6, "c"), (Status.DEAD, 6)),  # dead beats alive at i >= j
        (Alive("b", 6, "b:7401", {}), (Status.DEAD, 6)),
        (Suspect("b", 9, "c"), (Status.DEAD, 6)),  # suspect never beats dead
        (Alive("b", 7, "b:7402", {"v": 1}), (Status.ALIVE, 7)),
        (Dead("b", 7, "b"), (Status.LEFT, 7)),  # from == node: it left
    ]
    for now, (msg, expected) in enumerate(steps, start=1):
        g.receive("c:7401", dgram(msg), float(now) * 1e-3)
        assert status(g, "b") == expected, msg
    kinds = [e.kind for e in g.events()]
    assert kinds == [
        EventKind.JOIN,
        EventKind.SUSPECT,
        EventKind.ALIVE,
        EventKind.DEAD,
        EventKind.JOIN,
        EventKind.LEFT,
    ]
    assert g.members["b"].address == "b:7402" and g.members["b"].meta == {"v": 1}


@pytest.mark.parametrize(
    "accusation",
    [Suspect("a", 0, "b"), Dead("a", 0, "b"), Dead("a", 4, "a"), Alive("a", 3, "a:7401", {"zone": "old"})],
)
def test_accusations_about_self_are_refuted_above_them(accusation: Suspect | Dead | Alive) -> None:
    g = one()
    g.receive("b:7401", dgram(Alive("b", 0, "b:7401", {})), 0.001)
    g.outgoing()
    g.receive("b:7401", dgram(accusation), 0.002)
    assert g.incarnation == accusation.incarnation + 1
    assert g.members["a"].status is Status.ALIVE and g.local_health == 1
    assert g.stats.refutations == 1
    g.tick(g.next_deadline())
    alive = [m for _, m in sent(g) if isinstance(m, Alive) and m.node == "a"]
    assert alive[-1] == Alive("a", g.incarnation, "a:7401", {"zone": "z1"})


def test_own_news_echoed_back_is_not_refuted() -> None:
    g = one()
    g.receive("b:7401", dgram(Alive("a", 0, "a:7401", {"zone": "z1"}), Suspect("a", 0, "b")), 0.001)
    assert g.incarnation == 1  # the suspicion is refuted...
    g.receive("b:7401", dgram(Alive("a", 1, "a:7401", {"zone": "z1"})), 0.002)
    assert g.incarnation == 1 and g.stats.refutations == 1  # ...our own alive echo is not


def test_suspicion_in_a_ping_is_refuted_in_the_ack() -> None:
    g = one()
    g.receive("b:7401", dgram(Suspect("a", 0, "b"), Ping(42, "a")), 0.001)
    out = sent(g)
    assert ("b:7401", Ack(42)) in out
    assert ("b:7401", Alive("a", 1, "a:7401", {"zone": "z1"})) in out


def test_confirmations_from_distinct_members_shorten_the_suspicion() -> None:
    g = one()
    for name in "bcdef":
        g.receive(f"{name}:7401", dgram(Alive(name, 0, f"{name}:7401", {})), 0.0)
    n = g.live_count
    min_s, max_s = CFG.suspicion_min_s(n), CFG.suspicion_max_s(n)
    k = CFG.suspicion_confirmations(n)
    assert k == 2
    g.receive("c:7401", dgram(Suspect("b", 0, "c")), 1.0)
    assert g._suspicions["b"].deadline_s == pytest.approx(1.0 + max_s)
    g.receive("c:7401", dgram(Suspect("b", 0, "c")), 1.0)  # a repeat
    g.receive("d:7401", dgram(Suspect("b", 0, "d")), 1.0)
    assert g._suspicions["b"].deadline_s == pytest.approx(1.0 + suspicion_timeout_s(1, k, min_s, max_s))
    g.receive("e:7401", dgram(Suspect("b", 0, "e")), 1.0)
    g.tick(1.0 + min_s - 1e-6)
    assert status(g, "b") == (Status.SUSPECT, 0)
    g.tick(1.0 + min_s + 1e-6)
    assert status(g, "b") == (Status.DEAD, 0) and g.stats.deaths == 1


# ============================================================================ probing, relaying, limits


def test_ping_for_another_node_id_is_ignored() -> None:
    g = one()
    g.receive("x:7401", dgram(Ping(1, "not-a")), 0.0)
    assert sent(g) == [] and g.stats.misdirected == 1


def test_ping_req_is_relayed_with_ack_or_nack() -> None:
    g = one()
    g.receive("c:7401", dgram(PingReq(10, "b", "b:7401")), 0.0)
    (address, ping), *_ = sent(g)
    assert address == "b:7401" and isinstance(ping, Ping) and ping.target == "b"
    g.receive("b:7401", dgram(Ack(ping.seq)), 0.01)
    assert ("c:7401", Ack(10)) in sent(g)
    g.receive("c:7401", dgram(PingReq(11, "b", "b:7401")), 1.0)
    sent(g)
    g.tick(1.0 + CFG.probe_timeout_s)
    assert ("c:7401", Nack(11)) in sent(g)


def test_failed_probe_asks_others_then_suspects_and_counts_missing_nacks() -> None:
    g = one()
    for name in "bcde":
        g.receive(f"{name}:7401", dgram(Alive(name, 0, f"{name}:7401", {})), 0.0)
    t, target_address, ping = next_ping(g)
    g.tick(t + CFG.probe_timeout_s)
    reqs = [(a, m) for a, m in sent(g) if isinstance(m, PingReq)]
    assert len(reqs) == CFG.indirect_checks and all(m.target == ping.target for _, m in reqs)
    assert target_address not in {a for a, _ in reqs}
    g.receive(reqs[0][0], dgram(Nack(ping.seq)), t + 0.06)  # one of three nacks
    g.tick(t + CFG.probe_interval_s)
    assert g.members[ping.target].status is Status.SUSPECT
    assert g.local_health == 1 and g.stats.probe_failures == 1 and g.stats.nacks == 1
    # Next time round it succeeds: health recovers.
    t2, address, ping2 = next_ping(g)
    g.receive(address, dgram(Ack(ping2.seq)), t2 + 0.01)
    assert g.local_health == 0 and g.stats.acks == 1


def test_late_ack_does_not_count_whatever_the_call_order() -> None:
    g = one()
    g.receive("b:7401", dgram(Alive("b", 0, "b:7401", {})), 0.0)
    t, _, ping = next_ping(g)
    # The owner never ticked at the deadline and hands the ack over afterwards: it is late.
    g.receive("b:7401", dgram(Ack(ping.seq)), t + CFG.probe_interval_s + 0.01)
    assert g.members["b"].status is Status.SUSPECT and g.stats.stale_acks == 1


def test_datagrams_fill_up_with_broadcasts_but_never_exceed_the_packet_limit() -> None:
    g = one()
    big = {"pad": "x" * 300}
    for i in range(200):
        g.receive("b:7401", dgram(Alive(f"m{i:03}", 1, f"10.1.{i // 250}.{i % 250}:7401", big)), 0.0)
    datagrams: list[tuple[str, bytes]] = []
    for _ in range(20):
        g.tick(g.next_deadline())
        datagrams += g.outgoing()
    assert datagrams and all(len(d) <= CFG.max_packet_bytes for _, d in datagrams)
    per_datagram = [decode_datagram(d, max_meta_bytes=512)[0] for _, d in datagrams]
    assert max(len(msgs) for msgs in per_datagram) >= 3  # several updates per packet


def test_member_table_and_meta_are_bounded() -> None:
    g = one(config=dataclasses.replace(CFG, max_members=10))
    for i in range(20):
        g.receive("b:7401", dgram(Alive(f"m{i}", 0, f"m{i}:7401", {})), 0.0)
    assert len(g.members) == 10 and g.stats.members_rejected == 11
    with pytest.raises(InvalidArgument):
        g.update_meta({"pad": "x" * 600}, 0.0)
    with pytest.raises(InvalidArgument):
        g.update_meta({1: "non-str key"}, 0.0)  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument):
        one(meta={"bad": object()})
    with pytest.raises(InvalidArgument):
        one(name="x" * 200)
    with pytest.raises(InvalidArgument):
        g.join([""], 0.0)
    oversized = msgpack.packb([1, [5, "big", 0, "big:7401", {"pad": "x" * 600}]])
    g.receive("b:7401", oversized, 0.0)
    assert "big" not in g.members and g.stats.malformed == 1


def test_large_table_samples_only_eligible_members_and_reaps_the_dead() -> None:
    g = one()
    for i in range(300):
        g.receive("b:7401", dgram(Alive(f"m{i:03}", 0, f"10.2.{i // 250}.{i % 250}:7401", {})), 0.0)
    for i in range(0, 300, 2):
        g.receive("b:7401", dgram(Dead(f"m{i:03}", 0, "b")), 0.0)
    assert g.live_count == 151
    for _ in range(20):
        picked = g._random_members(3, lambda m: m.status is Status.ALIVE and m.node_id != "a")
        assert len(picked) == 3 and len({m.node_id for m in picked}) == 3
        assert all(int(m.node_id[1:]) % 2 == 1 for m in picked)
    # Reaping happens when a probe pass wraps around, once reap_after_s has passed.
    dead = {f"m{i:03}" for i in range(0, 300, 2)}
    t = CFG.reap_after_s
    while dead & set(g.members):
        assert t < 10 * CFG.reap_after_s
        g.tick(t)
        t = g.next_deadline()
    assert sorted(g._member_ids) == sorted(g.members)
    assert dead <= {e.member.node_id for e in g.events() if e.kind is EventKind.REAP}


def test_push_pull_reply_carries_full_state_and_merges_dead_as_suspect() -> None:
    a, b = one("a"), one("b")
    a.receive("c:7401", dgram(Alive("c", 3, "c:7401", {"zone": "z2"})), 0.0)
    b.receive("c:7401", dgram(Alive("c", 3, "c:7401", {"zone": "z2"})), 0.0)
    b.receive("d:7401", dgram(Dead("c", 3, "d")), 0.0)
    a.join(["b:7401"], 0.0)
    [(address, request)] = a.outgoing_streams()
    assert address == "b:7401"
    reply = b.receive_stream("a:7401", request, 0.01)
    assert reply is not None and "a" in b.members
    assert a.receive_stream("b:7401", reply, 0.02) is None
    assert status(a, "b") == (Status.ALIVE, 0)
    assert status(a, "c") == (Status.SUSPECT, 3)  # second-hand DEAD: suspicion first


def test_clock_stepping_back_is_harmless() -> None:
    g = one()
    g.tick(5.0)
    g.tick(1.0)
    assert g.next_deadline() > 1.0


# ============================================================================ malformed input


_scalar = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=4)
)
_field = _scalar | st.lists(_scalar, max_size=3) | st.dictionaries(st.text(max_size=3), _scalar, max_size=3)
#: [type, fields...] with a plausible type code, so the fuzz reaches the per-message validators.
message_like = st.tuples(st.integers(0, 8), st.lists(_field, max_size=5)).map(lambda t: [t[0], *t[1]])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    g = one()
    g.receive("x:7401", data, 0.1)
    assert g.receive_stream("x:7401", data, 0.2) is None
    g.tick(g.next_deadline())


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(message_like, max_size=4), rows=st.lists(st.lists(_field, max_size=6), max_size=3))
def test_message_shaped_garbage_never_raises(messages: list[list[Any]], rows: list[list[Any]]) -> None:
    g = one()
    g.receive("b:7401", dgram(Alive("b", 0, "b:7401", {})), 0.0)
    g.receive("x:7401", msgpack.packb([1, *messages]), 0.1)
    for kind in (0, 1):
        g.receive_stream("x:7401", msgpack.packb([1, kind, "x", rows]), 0.2)
    for _ in range(5):
        g.tick(g.next_deadline())
    assert g.next_deadline() > 0.2
    for _, data in g.outgoing():
        assert len(data) <= CFG.max_packet_bytes


def test_wire_round_trip() -> None:
    msgs: list[Message] = [
        Ping(1, "b"),
        Ack(2),
        PingReq(3, "b", "b:1"),
        Nack(4),
        Alive("b", 5, "b:1", {"k": [1, 2]}),
        Suspect("b", 6, "c"),
        Dead("b", 7, "b"),
    ]
    assert decode_datagram(dgram(*msgs), max_meta_bytes=512) == (msgs, 0)
    pp = PushPull(True, "a", [StateEntry("b", "b:1", 9, Status.LEFT, {})])
    assert decode_push_pull(
        encode_push_pull(pp), max_meta_bytes=512, max_members=10, max_stream_bytes=1 << 20
    ) == (
        pp,
        0,
    )


def test_invariants_hold_for_any_sequence_of_valid_messages() -> None:
    ids = st.sampled_from(["a", "b", "c", "d"])
    incs = st.integers(0, 4)
    message = st.one_of(
        st.builds(
            Alive, ids, incs, st.sampled_from(["a:7401", "b:7401", "c:7401"]), st.sampled_from([{}, {"z": 1}])
        ),
        st.builds(Suspect, ids, incs, ids),
        st.builds(Dead, ids, incs, ids),
        st.builds(Ping, st.integers(0, 3), ids),
        st.builds(PingReq, st.integers(0, 3), ids, st.sampled_from(["b:7401", "c:7401"])),
        st.builds(Ack, st.integers(0, 3)),
        st.builds(Nack, st.integers(0, 3)),
    )
    steps = st.lists(
        st.tuples(st.floats(0.0, 0.3), st.lists(message, max_size=3), st.booleans()), max_size=30
    )

    @settings(max_examples=150, deadline=None)
    @given(steps=steps)
    def run(steps: list[tuple[float, list[Message], bool]]) -> None:
        g = one()
        now, seen = 0.0, {"a": 0}
        for dt, msgs, tick in steps:
            now += dt
            g.receive("b:7401", dgram(*msgs), now)
            if tick:
                now = max(now, g.next_deadline())
                g.tick(now)
            assert g.next_deadline() > now or g.next_deadline() == math.inf or g.members  # never stuck
            g.tick(now)
            assert g.next_deadline() > now
            me = g.members["a"]
            assert me.status is Status.ALIVE and me.incarnation == g.incarnation
            assert g.live_count == sum(m.status.is_live for m in g.members.values())
            suspects = {n for n, m in g.members.items() if m.status is Status.SUSPECT}
            assert suspects == set(g._suspicions)  # SUSPECT exactly while a timer runs
            assert sorted(g._member_ids) == sorted(g.members)
            assert 0 <= g.local_health < CFG.awareness_max_multiplier
            for node_id, m in g.members.items():
                assert m.incarnation >= seen.get(node_id, 0)  # incarnations never go back
                seen[node_id] = m.incarnation
            assert all(len(d) <= CFG.max_packet_bytes for _, d in g.outgoing())

    run()


# ============================================================================ clusters


def test_five_nodes_join_through_one_seed_and_all_see_all_alive() -> None:
    sim = Sim(seed=1)
    sim.cluster(5, settle_s=0.0)
    assert sim.run_until(2.0, stop=sim.converged)
    for node in sim.live():
        assert len(node.gossip.members) == 5
        assert {m.status for m in node.gossip.members.values()} == {Status.ALIVE}
        joined = {e.member.node_id for _, o, e in sim.log if o == node.name and e.kind is EventKind.JOIN}
        assert joined == {f"n{i}" for i in range(5)} - {node.name}
        assert node.gossip.incarnation == 0  # nobody had to refute anything
    assert sim.max_datagram_bytes <= CFG.max_packet_bytes


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_node_is_dead_everywhere_within_the_detection_window(seed: int) -> None:
    sim = Sim(seed=seed)
    sim.cluster(5)
    assert sim.converged()
    t_kill = sim.now
    sim.kill("n4")
    lower, upper = detection_window_s(CFG, 5)
    assert sim.run_until(t_kill + upper, stop=lambda: sim.all_see("n4", Status.DEAD))
    dead = sim.events(EventKind.DEAD, "n4")
    assert sorted(o for _, o in dead) == ["n0", "n1", "n2", "n3"]
    assert all(lower <= t - t_kill <= upper for t, _ in dead), [t - t_kill for t, _ in dead]
    first_suspicion = min(t for t, _ in sim.events(EventKind.SUSPECT, "n4"))
    assert min(t for t, _ in dead) >= first_suspicion + lower
    assert sim.events(EventKind.DEAD) == dead


def test_no_live_node_is_ever_declared_dead_under_10_percent_loss() -> None:
    sim = Sim(seed=3, loss=0.1)
    sim.cluster(8)
    sim.run_for(30.0)
    t_kill = sim.now
    sim.kill("n7")
    sim.run_for(30.0)
    assert 0.08 < sim.lost / sim.sent < 0.12
    false_positives = [
        (t, o, e.member.node_id)
        for t, o, e in sim.log
        if e.kind is EventKind.DEAD and e.member.node_id != "n7"
    ]
    assert false_positives == []
    # Loss did make members suspect each other; every such suspicion was refuted in time.
    assert len(sim.events(EventKind.SUSPECT)) > 50
    assert sum(n.gossip.stats.refutations for n in sim.live()) > 10
    dead = sim.events(EventKind.DEAD, "n7")
    assert sorted(o for _, o in dead) == [f"n{i}" for i in range(7)]
    lower, upper = detection_window_s(CFG, 8)
    assert all(lower <= t - t_kill <= upper for t, _ in dead)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_briefly_partitioned_node_is_suspected_then_refutes(seed: int) -> None:
    sim = Sim(seed=seed)
    sim.cluster(5)
    t_cut = sim.now
    sim.partition("n4")
    # Heal as soon as anyone suspects it: well inside the (at least suspicion_min_s) window.
    assert sim.run_until(t_cut + 1.0, stop=lambda: bool(sim.events(EventKind.SUSPECT, "n4", t_cut)))
    sim.heal()
    isolated = sim.nodes["n4"].gossip
    assert sim.run_until(sim.now + 2.0, stop=lambda: sim.converged() and isolated.incarnation >= 1)
    sim.run_for(1.0)
    assert sim.events(EventKind.DEAD) == []
    # Whoever had it SUSPECT saw it come back ALIVE (the others only saw a new incarnation).
    suspecters = {o for _, o in sim.events(EventKind.SUSPECT, "n4", t_cut)}
    assert suspecters and suspecters <= {o for _, o in sim.events(EventKind.ALIVE, "n4", t_cut)}
    assert all(n.gossip.members["n4"].incarnation == isolated.incarnation for n in sim.live())


def test_long_partition_marks_node_dead_and_it_rejoins_with_a_higher_incarnation() -> None:
    sim = Sim(seed=1)
    sim.cluster(5)
    t_cut = sim.now
    sim.partition("n4")
    _, upper = detection_window_s(CFG, 5)
    assert sim.run_until(t_cut + upper, stop=lambda: sim.all_see("n4", Status.DEAD))
    dead_incarnation = max(n.gossip.members["n4"].incarnation for n in sim.live() if n.name != "n4")
    isolated = sim.nodes["n4"].gossip
    # Its own view takes longer: each failed probe raises its awareness and stretches its round.
    assert sim.run_until(
        sim.now + 10.0, stop=lambda: {isolated.members[f"n{i}"].status for i in range(4)} == {Status.DEAD}
    )
    assert isolated.local_health == CFG.awareness_max_multiplier - 1
    # Past gossip-to-the-dead neither side sends the other anything; only reconnect can heal it.
    sim.run_for(CFG.gossip_to_the_dead_s + 1.0)
    t_heal = sim.now
    sim.heal()

    def rejoined() -> bool:
        views = [n.gossip.members["n4"].incarnation for n in sim.live()]
        return sim.converged() and views == [isolated.incarnation] * len(views)

    assert sim.run_until(t_heal + 3 * CFG.reconnect_interval_s, stop=rejoined)
    assert isolated.incarnation > dead_incarnation
    assert sorted(o for _, o in sim.events(EventKind.JOIN, "n4", t_heal)) == ["n0", "n1", "n2", "n3"]


def test_restart_with_fresh_incarnation_rejoins_after_being_declared_dead() -> None:
    sim = Sim(seed=1)
    sim.cluster(5)
    sim.update_meta("n4", {"zone": "z1", "v": 1})
    sim.update_meta("n4", {"zone": "z1", "v": 2})
    sim.run_for(1.0)
    assert {n.gossip.members["n4"].incarnation for n in sim.live()} == {2}
    sim.kill("n4")
    _, upper = detection_window_s(CFG, 5)
    assert sim.run_until(sim.now + upper, stop=lambda: sim.all_see("n4", Status.DEAD))
    t_restart = sim.now
    sim.restart("n4", join="n0")
    fresh = sim.nodes["n4"].gossip
    assert fresh.incarnation == 0

    def rejoined() -> bool:
        return sim.converged() and {n.gossip.members["n4"].incarnation for n in sim.live()} == {
            fresh.incarnation
        }

    assert sim.run_until(t_restart + 2.0, stop=rejoined)
    assert fresh.incarnation > 2
    assert all(n.gossip.members["n4"].meta == {"zone": "z1", "free_bytes": 10**12} for n in sim.live())
    assert sorted(o for _, o in sim.events(EventKind.JOIN, "n4", t_restart)) == ["n0", "n1", "n2", "n3"]


def test_quick_restart_wins_over_its_previous_life_without_a_death() -> None:
    sim = Sim(seed=2)
    sim.cluster(5)
    sim.update_meta("n4", {"zone": "z1", "v": 1})
    sim.run_for(1.0)
    sim.kill("n4")
    sim.run_for(CFG.probe_timeout_s)
    t_restart = sim.now
    sim.restart("n4", join="n0")
    fresh = sim.nodes["n4"].gossip

    def rejoined() -> bool:
        return sim.converged() and {n.gossip.members["n4"].incarnation for n in sim.live()} == {
            fresh.incarnation
        }

    assert sim.run_until(t_restart + 2.0, stop=rejoined)
    assert fresh.incarnation == 2  # above the previous life's 1, learnt from the seed's push-pull
    assert sim.events(EventKind.DEAD) == []


def test_meta_updates_propagate() -> None:
    sim = Sim(seed=1)
    sim.cluster(5)
    t0 = sim.now
    meta = {"zone": "z2", "free_bytes": 5 * 10**11, "load": 0.25, "layout_epoch": 7}
    sim.update_meta("n2", meta)
    assert sim.run_until(t0 + 1.0, stop=lambda: all(n.gossip.members["n2"].meta == meta for n in sim.live()))
    assert sorted(o for _, o in sim.events(EventKind.UPDATE, "n2", t0)) == ["n0", "n1", "n3", "n4"]
    assert {n.gossip.members["n2"].incarnation for n in sim.live()} == {1}
    sim.update_meta("n2", dict(meta))  # unchanged: no new incarnation, nothing to gossip
    sim.run_for(1.0)
    assert {n.gossip.members["n2"].incarnation for n in sim.live()} == {1}


def test_slow_member_raises_its_local_health_and_stretches_its_probe_round() -> None:
    sim = Sim(seed=1)
    sim.add("n0")
    for i in range(1, 4):
        sim.add(f"n{i}", join="n0")
    # Its loop gets to run only every two probe intervals: what it sends and reads is that late.
    slow = sim.add("slow", join="n0", lag_s=2 * CFG.probe_interval_s)
    run_s = 10.0
    sim.run_for(run_s)
    healthy = [n for n in sim.live() if n is not slow]
    slow_health = [h for t, h in slow.health if t > 2.0]
    assert max(slow_health) >= CFG.awareness_max_multiplier // 2
    assert sum(slow_health) / len(slow_health) > 1.5
    for n in healthy:
        assert max(h for _, h in n.health) <= 2 and sum(h for _, h in n.health) / len(n.health) < 0.3
    assert slow.gossip.stats.refutations > 10  # others keep suspecting it; each refutation costs +1
    # The stretched round: several probe intervals per probe, where healthy members take about one.
    assert run_s / slow.gossip.stats.probes > 3 * CFG.probe_interval_s
    assert all(run_s / n.gossip.stats.probes < 1.3 * CFG.probe_interval_s for n in healthy)
    # Refutations kept it alive, and its own late acks did not get anyone else declared dead.
    assert sim.events(EventKind.DEAD) == []


def test_graceful_leave_is_seen_as_left_everywhere_then_reaped() -> None:
    sim = Sim(seed=1)
    sim.cluster(5)
    t0 = sim.now
    leaver = sim.nodes["n3"].gossip
    probes = leaver.stats.probes
    sim.leave("n3")
    assert leaver.members["n3"].status is Status.LEFT
    assert sim.run_until(t0 + 0.5, stop=lambda: sim.all_see("n3", Status.LEFT))
    assert sim.run_until(t0 + 1.0, stop=lambda: not leaver.leave_broadcast_pending)
    sim.run_for(5.0)
    assert sim.all_see("n3", Status.LEFT) and leaver.stats.probes == probes
    assert leaver.next_deadline() == math.inf  # nothing left to do
    leaver.update_meta({"zone": "elsewhere"}, sim.now)  # ignored after leaving
    assert leaver.outgoing() == [] and leaver.members["n3"].meta["zone"] == "z1"
    assert sorted(o for _, o in sim.events(EventKind.LEFT, "n3")) == ["n0", "n1", "n2", "n4"]
    assert sim.events(EventKind.DEAD) == [] and sim.events(EventKind.SUSPECT, "n3", t0) == []
    sim.run_for(CFG.reap_after_s)
    assert all("n3" not in n.gossip.members for n in sim.live() if n.name != "n3")
    assert sorted(o for _, o in sim.events(EventKind.REAP, "n3")) == ["n0", "n1", "n2", "n4"]
