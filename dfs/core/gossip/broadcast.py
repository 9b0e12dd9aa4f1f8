"""The queue of membership updates waiting to be piggybacked on outgoing datagrams.

Each update is keyed by the member it is about; a newer update about a member replaces the queued
one, because the state machine only queues news that won under the incarnation rules.  Updates
that have been sent fewest times go first (newest first among equals), so fresh news spreads
before old news is repeated, and each is dropped after ``limit`` transmissions (a limit that grows
with log N, the number of gossip hops needed to reach everyone).  The queue is bounded: when full,
the most-repeated (then oldest) updates are dropped, since they are the most likely already known.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

__all__ = ["BroadcastQueue"]


@dataclass(slots=True)
class _Broadcast:
    node_id: str
    payload: bytes
    transmits: int
    order: int


class BroadcastQueue:
    """Updates about members, each sent a bounded number of times."""

    __slots__ = ("_items", "_max_items", "_next_order", "dropped")

    def __init__(self, max_items: int) -> None:
        self._items: dict[str, _Broadcast] = {}
        self._max_items = max_items
        self._next_order = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._items

    def push(self, node_id: str, payload: bytes) -> None:
        """Queue ``payload`` (an encoded message about ``node_id``), replacing older news about it."""
        self._items.pop(node_id, None)
        self._items[node_id] = _Broadcast(node_id, payload, 0, self._next_order)
        self._next_order += 1
        if len(self._items) > self._max_items:
            # Evict a small batch at once, so a flood of news (a large push-pull merge) costs one
            # sort per batch instead of a full scan per update.
            batch = len(self._items) - self._max_items + self._max_items // 16
            for stale in heapq.nlargest(batch, self._items.values(), key=lambda b: (b.transmits, -b.order)):
                del self._items[stale.node_id]
            self.dropped += batch

    def take(self, budget_bytes: int, limit: int) -> list[bytes]:
        """As many queued payloads as fit in ``budget_bytes``, counting one transmission each."""
        if budget_bytes <= 0 or not self._items:
            return []
        chosen: list[bytes] = []
        for item in sorted(self._items.values(), key=lambda b: (b.transmits, -b.order)):
            size = len(item.payload)
            if size > budget_bytes:
                continue  # a smaller update further down may still fit
            chosen.append(item.payload)
            budget_bytes -= size
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.node_id]
            if budget_bytes <= 2:  # no message is shorter than 3 bytes
                break
        return chosen
