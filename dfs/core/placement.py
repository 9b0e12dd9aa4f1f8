"""Chunk placement: layout -> partition -> ordered replica nodes.

Pure (no I/O, no trio, no sockets).  A chunk id (a 32-byte keyed hash) falls
into one of :data:`PARTITIONS` partitions by its top :data:`PARTITION_BITS`
bits; each partition maps to an ordered *preference list* of nodes computed
by weighted rendezvous hashing (HRW, the draw CRUSH calls straw2) over the
ACTIVE nodes of a :class:`Layout`.  A partition's replicas are the first ``r``
entries of its list; the rest are the fallbacks, best first.  The table is
computed once per layout epoch (:class:`PlacementTable`) because one HRW
lookup costs ~N hash calls, far too slow per chunk.

Score and order.  ``u = hash(partition, node)`` is mapped uniformly into the
open interval (0, 1) and a node's draw is ``ln(u) / weight``; highest draw
first.  That is the same order as the textbook score ``-weight / ln(u)``
(``x -> -1/x`` is increasing on negative numbers) without ever dividing by
``ln(u)``.  The node with the highest draw is the primary with probability
``weight / sum(weights)``.

Failure domains.  The preference list walks the HRW order taking at most one
node per zone until every zone that has an eligible node is used, then goes
on in HRW order over the nodes skipped.  With at least ``r`` zones the ``r``
replicas are in ``r`` different zones; with fewer zones every zone holds one
and the remaining replicas go to the next best nodes.  One node is one host:
the layout has no host level, so "then per host" is "then per node".  When
``r`` equals the number of zones each zone holds ``1/r`` of the data whatever
its capacity; weights only balance nodes inside a zone.

Invariants (the unit tests check each):

- Determinism: the preference list of a partition is a function of the
  ``(node_id, zone, capacity_weight)`` of the ACTIVE nodes only: not of the
  order of ``Layout.nodes``, the epoch, addresses, the Python process or its
  hash seed (xxh3 and BLAKE2b, never ``hash()``).  Every daemon must compute
  the same table, and changing the hash, its inputs or the tie-break moves
  data on upgrade: treat them like an on-disk format (a golden test pins them).
- Eligibility: only ACTIVE nodes appear.  DRAINING and OUT nodes never receive
  new replicas; a draining node still holds copies until repair moves them,
  so a reader that misses on the preferred replicas may look there too.
  That is the caller's business, not this module's.
- Minimal movement: adding an eligible node N changes a partition's replica
  set only by bringing N into it (``new - old`` is empty or ``{N}``); removing,
  draining or outing X only takes X out of sets (``old - new`` is empty or
  ``{X}``).  Without zones this is straw2's "to or from the changed node,
  never between others"; the zone walk keeps it because it only changes
  which node represents the changed node's zone.
- Zone diversity as described above, for every partition and every ``r``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NewType

import xxhash

NodeId = NewType("NodeId", str)

PARTITION_BITS: Final = 12
PARTITIONS: Final = 1 << PARTITION_BITS

# Chunk ids must carry at least the bits that pick the partition.
_PARTITION_PREFIX_BYTES: Final = (PARTITION_BITS + 7) // 8

# The per-node seed is a BLAKE2b of the node id, personalised so that these
# seeds are unrelated to any other use of BLAKE2b over node ids.
_SEED_PERSON: Final = b"dfs-place-v1"

# u = (top 52 bits of the hash + 0.5) / 2**52: every value is exact in a
# double, so 0 < u < 1 strictly and ln(u) is finite and negative.  The naive
# (h + 0.5) / 2**64 rounds to exactly 1.0 for the top ~2**10 hash values.
_U_SHIFT: Final = 64 - 52
_U_SCALE: Final = 2.0**-52

# The partition number is hashed as 8 big-endian bytes: xxh3 takes its 4-8
# byte path, which mixes the seed in more thoroughly than the 1-3 byte one.
_PARTITION_KEYS: Final[tuple[bytes, ...]] = tuple(p.to_bytes(8, "big") for p in range(PARTITIONS))


class NodeState(StrEnum):
    ACTIVE = "active"  # eligible for new replicas
    DRAINING = "draining"  # up, but its data is moving away: no new replicas
    OUT = "out"  # gone (dead past the grace period, or removed by an admin)


@dataclass(frozen=True)
class LayoutNode:
    """One storage node of the layout; invalid values raise ValueError."""

    node_id: str
    zone: str
    capacity_weight: float  # > 0, relative (e.g. TB of disk)
    state: NodeState
    address: str = ""  # RPC "host:port"; carried for callers, not used for placement

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"node id must be a non-empty string, not {self.node_id!r:.80}")
        if not isinstance(self.zone, str):
            raise ValueError(f"node {self.node_id!r}: zone must be a string, not {self.zone!r:.80}")
        w = self.capacity_weight
        # bool is an int subclass; a weight of True is a bug, not 1.0.
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 < w < math.inf):
            raise ValueError(f"node {self.node_id!r}: capacity weight must be finite and > 0, not {w!r:.80}")
        if not isinstance(self.state, NodeState):
            raise ValueError(f"node {self.node_id!r}: state must be a NodeState, not {self.state!r:.80}")
        if not isinstance(self.address, str):
            raise ValueError(f"node {self.node_id!r}: address must be a string, not {self.address!r:.80}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "zone": self.zone,
            "capacity_weight": float(self.capacity_weight),
            "state": self.state.value,
            "address": self.address,
        }

    @classmethod
    def from_wire(cls, d: object) -> LayoutNode:
        fields = _check_keys(d, "layout node", {"node_id", "zone", "capacity_weight", "state"}, {"address"})
        try:
            state = NodeState(fields["state"])
        except ValueError:
            raise ValueError(f"layout node: unknown state {fields['state']!r:.80}") from None
        return cls(
            node_id=fields["node_id"],
            zone=fields["zone"],
            capacity_weight=fields["capacity_weight"],
            state=state,
            address=fields.get("address", ""),
        )


@dataclass(frozen=True)
class Layout:
    """The authoritative cluster layout at one epoch; invalid values raise ValueError.

    Every ``with_*``/``without`` returns a new layout at ``epoch + 1``, so a
    placement table cached by epoch never goes stale.  Two different layouts
    with the same epoch must not exist: whoever stores the layout (metadata)
    changes it by compare-and-set on the epoch.
    """

    epoch: int
    nodes: tuple[LayoutNode, ...]
    replicas: int = 3  # the cluster's default R; volumes may override, placement takes r explicitly

    def __post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 0:
            raise ValueError(f"layout epoch must be an int >= 0, not {self.epoch!r:.80}")
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f"layout replicas must be an int >= 1, not {self.replicas!r:.80}")
        if not isinstance(self.nodes, tuple) or not all(isinstance(n, LayoutNode) for n in self.nodes):
            raise ValueError("layout nodes must be a tuple of LayoutNode")
        seen: set[str] = set()
        for n in self.nodes:
            if n.node_id in seen:
                raise ValueError(f"duplicate node id {n.node_id!r} in layout")
            seen.add(n.node_id)

    def node(self, node_id: str) -> LayoutNode:
        """The node called ``node_id``; KeyError if the layout has none."""
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def with_node(self, node: LayoutNode) -> Layout:
        """Add ``node``, or replace the node with its id in place (e.g. a new weight or zone)."""
        nodes = list(self.nodes)
        for i, n in enumerate(nodes):
            if n.node_id == node.node_id:
                nodes[i] = node
                break
        else:
            nodes.append(node)
        return Layout(self.epoch + 1, tuple(nodes), self.replicas)

    def with_state(self, node_id: str, state: NodeState) -> Layout:
        """Set one node's state; KeyError if the layout has no such node."""
        old = self.node(node_id)
        new = LayoutNode(old.node_id, old.zone, old.capacity_weight, state, old.address)
        return self.with_node(new)

    def without(self, node_id: str) -> Layout:
        """Drop one node entirely; KeyError if the layout has no such node."""
        self.node(node_id)
        return Layout(self.epoch + 1, tuple(n for n in self.nodes if n.node_id != node_id), self.replicas)

    def to_wire(self) -> dict[str, Any]:
        """A msgpack- and JSON-safe dict (str keys; str, int, float and list values)."""
        return {"epoch": self.epoch, "replicas": self.replicas, "nodes": [n.to_wire() for n in self.nodes]}

    @classmethod
    def from_wire(cls, d: object) -> Layout:
        """Parse :meth:`to_wire` output; ValueError on any malformed or invalid field.

        Unknown keys are rejected, not ignored: a field a newer version adds
        may change placement, and a daemon that silently ignored it would
        place chunks differently from its peers.
        """
        fields = _check_keys(d, "layout", {"epoch", "nodes"}, {"replicas"})
        nodes = fields["nodes"]
        if not isinstance(nodes, (list, tuple)):
            raise ValueError(f"layout nodes must be a list, not {type(nodes).__name__}")
        return cls(
            epoch=fields["epoch"],
            nodes=tuple(LayoutNode.from_wire(n) for n in nodes),
            replicas=fields.get("replicas", 3),
        )


def _check_keys(d: object, what: str, required: set[str], optional: set[str]) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"{what} must be a mapping, not {type(d).__name__}")
    keys = set(d)
    missing = required - keys
    if missing:
        raise ValueError(f"{what}: missing {', '.join(sorted(missing))}")
    unknown = keys - required - optional
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {', '.join(sorted(map(repr, unknown)))[:200]}")
    return d


def partition_of(chunk_id: bytes) -> int:
    """The partition of a chunk: the top :data:`PARTITION_BITS` bits of its id."""
    if len(chunk_id) < _PARTITION_PREFIX_BYTES:
        raise ValueError(f"chunk id too short for a partition: {len(chunk_id)} bytes")
    prefix = int.from_bytes(chunk_id[:_PARTITION_PREFIX_BYTES], "big")
    return prefix >> (8 * _PARTITION_PREFIX_BYTES - PARTITION_BITS)


def node_seed(node_id: str) -> int:
    """The 64-bit xxh3 seed of a node: BLAKE2b of its id, so it is stable everywhere."""
    digest = hashlib.blake2b(node_id.encode("utf-8"), digest_size=8, person=_SEED_PERSON).digest()
    return int.from_bytes(digest, "big")


def draw(node_id: str, capacity_weight: float, partition: int) -> float:
    """The node's straw2 draw for ``partition``: ``ln(u) / weight``, higher is better.

    The reference definition; :class:`PlacementTable` inlines the exact same
    arithmetic for speed, and the tests check the two agree.
    """
    _check_partition(partition)
    h = xxhash.xxh3_64_intdigest(_PARTITION_KEYS[partition], node_seed(node_id))
    return math.log(((h >> _U_SHIFT) + 0.5) * _U_SCALE) / capacity_weight


def _check_partition(partition: int) -> None:
    if not 0 <= partition < PARTITIONS:
        raise ValueError(f"partition {partition!r} out of range 0..{PARTITIONS - 1}")


class PlacementTable:
    """Partition -> ordered replica list for one layout epoch, computed once and cached.

    Building it costs one xxh3 call and one log per (partition, eligible
    node): 15-35 ms for 6 nodes, 0.1-0.2 s for 50.  Build it when the epoch
    changes, off the event loop if the cluster is large, and share it:
    it is immutable.
    """

    __slots__ = ("_prefs", "eligible", "epoch", "layout", "max_replicas")

    layout: Layout
    epoch: int
    max_replicas: int
    eligible: tuple[NodeId, ...]  # the ACTIVE nodes, sorted by id
    _prefs: tuple[tuple[NodeId, ...], ...]

    def __init__(self, layout: Layout, *, max_replicas: int = 7) -> None:
        # max_replicas bounds the r callers may ask for: a larger r is a bug
        # (a byte count passed as a copy count), not a request to replicate.
        if max_replicas < 1:
            raise ValueError(f"max_replicas must be >= 1, not {max_replicas}")
        self.layout = layout
        self.epoch = layout.epoch
        self.max_replicas = max_replicas
        active = sorted((n for n in layout.nodes if n.state is NodeState.ACTIVE), key=lambda n: n.node_id)
        self.eligible = tuple(NodeId(n.node_id) for n in active)
        self._prefs = _build(active)

    def __repr__(self) -> str:
        return f"PlacementTable(epoch={self.epoch}, eligible={len(self.eligible)})"

    def _check_r(self, r: int) -> None:
        if r < 1:
            raise ValueError(f"replica count must be >= 1, not {r}")
        if r > self.max_replicas:
            raise ValueError(f"replica count {r} exceeds max_replicas={self.max_replicas}")

    def preference(self, partition: int) -> tuple[NodeId, ...]:
        """Every eligible node, best first: one per zone while zones last, then HRW order."""
        _check_partition(partition)
        return self._prefs[partition]

    def replicas(self, partition: int, r: int) -> tuple[NodeId, ...]:
        """The first ``r`` nodes of the partition's preference list.

        Fewer than ``r`` when fewer nodes are eligible: whether that is
        enough (strong writes need all r) is the caller's decision.
        """
        self._check_r(r)
        return self.preference(partition)[:r]

    def for_chunk(self, chunk_id: bytes, r: int) -> tuple[NodeId, ...]:
        """The replicas of the chunk's partition."""
        return self.replicas(partition_of(chunk_id), r)

    def owned_by(self, node_id: str, r: int) -> list[int]:
        """The partitions, ascending, of which ``node_id`` holds one of the first ``r`` replicas."""
        self._check_r(r)
        return [p for p, pref in enumerate(self._prefs) if node_id in pref[:r]]


def _build(active: list[LayoutNode]) -> tuple[tuple[NodeId, ...], ...]:
    """The preference list of every partition over ``active`` (already filtered and sorted)."""
    if not active:
        return ((),) * PARTITIONS
    ids = [NodeId(n.node_id) for n in active]
    seeds = [node_seed(n.node_id) for n in active]
    weights = [float(n.capacity_weight) for n in active]
    zone_of = {NodeId(n.node_id): n.zone for n in active}
    n_zones = len(set(zone_of.values()))
    per_node = list(zip(seeds, weights, strict=True))
    indices = range(len(active))
    # Locals: this loop runs PARTITIONS * len(active) times.
    xxh3, log, shift, scale = xxhash.xxh3_64_intdigest, math.log, _U_SHIFT, _U_SCALE
    prefs: list[tuple[NodeId, ...]] = []
    for key in _PARTITION_KEYS:
        # Same arithmetic as draw().  Sorting indices by draw is faster than sorting
        # (draw, id) tuples; the sort is stable, so a tie (practically never) goes to
        # the smaller node id, the same on every daemon because ``active`` is sorted by id.
        draws = [log(((xxh3(key, seed) >> shift) + 0.5) * scale) / w for seed, w in per_node]
        order = [ids[i] for i in sorted(indices, key=draws.__getitem__, reverse=True)]
        prefs.append(tuple(_zone_walk(order, zone_of, n_zones)) if n_zones > 1 else tuple(order))
    return tuple(prefs)


def _zone_walk(order: list[NodeId], zone_of: Mapping[NodeId, str], n_zones: int) -> list[NodeId]:
    """``order`` with the first node of each zone moved to the front, HRW order kept within each part."""
    head: list[NodeId] = []
    skipped: list[NodeId] = []
    used: set[str] = set()
    for i, nid in enumerate(order):
        zone = zone_of[nid]
        if zone in used:
            skipped.append(nid)
            continue
        used.add(zone)
        head.append(nid)
        if len(used) == n_zones:
            # Every zone is represented (usually after a few nodes): the rest keep HRW order.
            return head + skipped + order[i + 1 :]
    raise AssertionError("zone_of names more zones than the nodes it was given")


def moved_fraction(old: PlacementTable, new: PlacementTable, r: int) -> float:
    """The fraction of old replica slots whose node is no longer in the partition's new set.

    Per partition ``|old_set - new_set| / |old_set|``, averaged over all
    partitions (a partition with no old replicas moves nothing).  With at
    least ``r`` eligible nodes in the old layout ``|old_set| == r``; dividing
    by the real size keeps a shrinking small cluster from reading as less
    movement than it is.  This counts copies to move, not copies to create:
    growing from 2 nodes to 3 at r=3 moves 0.
    """
    total = 0.0
    for p in range(PARTITIONS):
        before = set(old.replicas(p, r))
        if before:
            total += len(before - set(new.replicas(p, r))) / len(before)
    return total / PARTITIONS
