"""Replica policy: which nodes hold a chunk, and how many copies make a write durable.

The layout's placement table plus what gossip says about liveness, load,
zones and hot chunks, as one client sees them (:class:`ClusterView`), and
the rules every client of the cluster follows over it (:func:`write_targets`,
:func:`read_order`, :func:`copies_needed`, :func:`hot_targets`).  No I/O:
unit-tested without sockets; :class:`dfs.client.chunks.ChunkIO` carries
the copies.

Write rule.  A chunk's replica set is the first ``n = min(R, active nodes)``
nodes of its partition's preference list.  A replica that gossip reports
dead (or that fails or times out) is replaced by the next live node of the
list (a hinted handoff: that copy is misplaced and repair moves it home).
The write is acknowledged once ``copies_needed(level, n)`` copies are
durable (each node fsyncs before answering) *and* every copy still missing
is recorded as a hint on a node that holds the chunk, so a copy is never
owed silently.  Copies still in flight when the write is acknowledged may
finish in the background within a memory budget; the hint covers them
either way (replay first asks the target whether it already has the chunk).

Read rule.  The partition's replicas first, best first: this host's daemon,
then the same zone, then the least loaded; then the rest of the preference
list; then every other node in the layout (a draining or recently outed node
may still hold a copy).  Nodes gossip reports dead go last.  A hot chunk (one a replica advertises
in gossip as having temporary extra copies, see ``daemon/cluster/hot.py``) is read
from its replicas and its extra copies alike, in random order after this
host's daemon, so that many clients spread its load.  Every node
verifies a chunk's checksum before serving it (and quarantines a bad copy
for repair), and the client verifies again when it decodes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dfs.core.placement import Layout, PlacementTable, partition_of

CONSISTENCY_LEVELS = ("strong", "quorum", "eventual")
# Gossip states in which a node cannot take a write now (suspects still may: they often refute).
DOWN_STATES = frozenset({"dead", "left"})
# Hot chunks are advertised in gossip by this many leading bytes of their id (hex).
HOT_PREFIX_BYTES = 6
# Read orders shuffle with their own generator: the process-wide one belongs to whoever seeded it.
_SHUFFLE = random.Random()


class Policy(NamedTuple):
    """How many copies a file's chunks get, and how many must be durable before a write returns."""

    replicas: int
    consistency: str


def copies_needed(level: str, n: int) -> int:
    """Durable copies required before acknowledging a write of ``n`` copies at ``level``."""
    if n < 1:
        return 0
    if level == "strong":
        return n
    if level == "quorum":
        return n // 2 + 1
    if level == "eventual":
        return 1
    raise ValueError(f"unknown consistency level {level!r}")


@dataclass(frozen=True)
class Member:
    """What gossip says about one node (``status`` is "alive" when gossip is not running)."""

    node_id: str
    status: str = "alive"
    zone: str = ""
    address: str = ""
    load: float = 0.0

    @property
    def down(self) -> bool:
        return self.status in DOWN_STATES


@dataclass(frozen=True)
class ClusterView:
    """The layout's placement table plus member liveness, as one client sees them now."""

    table: PlacementTable
    members: dict[str, Member] = field(default_factory=dict)
    home: str = ""  # the node this client's own daemon runs (its copies are the cheapest to read)
    default_policy: Policy = Policy(3, "quorum")
    hot: dict[str, int] = field(default_factory=dict)  # hot chunk id prefix (hex) -> extra copies

    def hot_extra(self, chunk_id: bytes) -> int:
        """How many extra copies ``chunk_id`` has now (0: not hot)."""
        if not self.hot:
            return 0
        return self.hot.get(chunk_id[:HOT_PREFIX_BYTES].hex(), 0)

    @property
    def layout(self) -> Layout:
        return self.table.layout

    @property
    def epoch(self) -> int:
        return self.table.epoch

    def member(self, node_id: str) -> Member:
        return self.members.get(node_id) or Member(node_id)

    def is_down(self, node_id: str) -> bool:
        return self.member(node_id).down

    def address(self, node_id: str) -> str:
        for n in self.layout.nodes:
            if n.node_id == node_id and n.address:
                return n.address
        return self.member(node_id).address

    def zone(self, node_id: str) -> str:
        for n in self.layout.nodes:
            if n.node_id == node_id:
                return n.zone
        return self.member(node_id).zone

    def replica_count(self, r: int) -> int:
        """How many copies a chunk of R=``r`` gets: every active node holds one when there are fewer."""
        return max(1, min(r, len(self.table.eligible)))


def write_targets(view: ClusterView, chunk_id: bytes, r: int) -> tuple[list[str], list[str], list[str]]:
    """(nodes to write now, replicas that cannot take it now, spare nodes to substitute, in order).

    ``len(targets) + len(down)`` is the chunk's copy count ``n``; each down
    replica already has a substitute in ``targets`` when a live spare exists.
    """
    pref: list[str] = list(view.table.preference(partition_of(chunk_id)))
    if not pref:
        # No layout yet (a daemon that has not registered): its own store is all there is.
        return [view.home], [], []
    n = view.replica_count(r)
    replicas, rest = pref[:n], pref[n:]
    down = [x for x in replicas if view.is_down(x)]
    targets = [x for x in replicas if not view.is_down(x)]
    spares = [x for x in rest if not view.is_down(x)]
    subs, spares = spares[: len(down)], spares[len(down) :]
    return targets + subs, down, spares


def hot_targets(view: ClusterView, chunk_id: bytes, r: int, extra: int) -> list[str]:
    """The nodes that hold a hot chunk's ``extra`` temporary copies: the next live nodes of its
    preference list after its replicas."""
    pref: list[str] = list(view.table.preference(partition_of(chunk_id)))
    n = view.replica_count(r)
    return [x for x in pref[n:] if not view.is_down(x)][:extra]


def read_order(
    view: ClusterView,
    chunk_id: bytes,
    r: int | None = None,
    rng: Callable[[], float] = _SHUFFLE.random,
) -> list[str]:
    """Every node that may hold ``chunk_id``, the ones to try first first (see the module docstring)."""
    pref: list[str] = list(view.table.preference(partition_of(chunk_id)))
    n = view.replica_count(r or view.default_policy.replicas)
    home_zone = view.zone(view.home)
    extra = view.hot_extra(chunk_id)
    if extra:
        # Every copy serves: this host's first, then a random one, so many readers spread out.
        group = pref[:n] + hot_targets(view, chunk_id, r or view.default_policy.replicas, extra)
        first = sorted(group, key=lambda x: (x != view.home, rng()))
    else:

        def rank(node_id: str) -> tuple[int, int, float]:
            return (node_id != view.home, view.zone(node_id) != home_zone, view.member(node_id).load)

        first = sorted(pref[:n], key=rank)
    others = [node.node_id for node in view.layout.nodes if node.node_id not in pref]
    order = first + [x for x in pref[n:] if x not in first] + sorted(others)
    if view.home and view.home not in order:
        order.append(view.home)  # a daemon outside the layout (not yet registered) serves its own store
    up = [x for x in order if not view.is_down(x)]
    return up + [x for x in order if view.is_down(x)]


def view_from_wire(raw: dict[str, Any], home: str, table: PlacementTable | None = None) -> ClusterView:
    """A view from ``sys.cluster``'s answer; ``table`` is reused when its epoch is current."""
    layout = Layout.from_wire(raw["layout"])
    if table is None or table.epoch != layout.epoch or table.layout != layout:
        table = PlacementTable(layout)
    members = {
        m["node_id"]: Member(
            node_id=m["node_id"],
            status=str(m.get("status", "alive")),
            zone=str(m.get("zone", "")),
            address=str(m.get("rpc", "")),
            load=float(m.get("cpu_percent", 0.0) or 0.0),
        )
        for m in raw.get("members", [])
    }
    hot: dict[str, int] = {}
    for m in raw.get("members", []):
        if m.get("status") in DOWN_STATES:
            continue
        extra = int(m.get("hot_extra", 0) or 0)
        for prefix in m.get("hot") or ():
            hot[str(prefix)] = max(extra, hot.get(str(prefix), 0))
    policy = raw.get("policy") or {}
    return ClusterView(
        table,
        members,
        home=home,
        default_policy=Policy(int(policy.get("replicas", 3)), str(policy.get("consistency", "quorum"))),
        hot=hot,
    )


def single_node_view(home: str) -> ClusterView:
    """The view of a daemon that is alone (no layout known yet)."""
    return ClusterView(PlacementTable(Layout(0, ())), {}, home=home, default_policy=Policy(1, "strong"))
