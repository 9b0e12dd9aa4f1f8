"""The layout controller, run by the metadata primary: it marks a node out once gossip has
reported it dead (or gone) for longer than ``[cluster] dead_grace_s``, so that repair
re-replicates its data on the others.

:func:`dead_past_grace` is the rule (pure: a layout and gossip's member list in, node ids
out); :class:`Controller` applies it one step at a time, a step being what a
:class:`daemon.workers.Periodic` runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dfs.core.placement import Layout, NodeState

log = logging.getLogger("dfs.daemon")


class Controller:
    """Marks nodes out that gossip reports dead past the grace period, counting them."""

    def __init__(
        self,
        grace_s: float,
        members: Callable[[], list[dict[str, Any]] | None],
        layout: Callable[[], Awaitable[dict[str, Any]]],
        mark_out: Callable[[str], Awaitable[None]],
    ) -> None:
        self.grace_s = grace_s
        self._members = members  # None while gossip is not running: nothing is known to be dead
        self._layout = layout
        self._mark_out = mark_out
        self.marked_out = 0

    async def step(self) -> list[str]:
        """Mark out every node dead past the grace period; the ids marked out."""
        listed = self._members()
        if listed is None:
            return []
        layout = Layout.from_wire(await self._layout())
        members = {m["node_id"]: m for m in listed}
        done = []
        for node_id in dead_past_grace(layout, members, self.grace_s):
            await self._mark_out(node_id)
            self.marked_out += 1
            done.append(node_id)
            log.warning(
                "node %s dead for over %gs: marked out, its data is re-replicated", node_id, self.grace_s
            )
        return done


def dead_past_grace(layout: Layout, members: Mapping[str, Mapping[str, Any]], grace_s: float) -> list[str]:
    """Layout nodes (active or draining) that gossip has seen dead or gone for ``grace_s`` or more."""
    out = []
    for node in layout.nodes:
        if node.state is NodeState.OUT:
            continue
        m = members.get(node.node_id)
        if m is None or m.get("self"):
            continue
        if m.get("status") in ("dead", "left") and float(m.get("for_s", 0.0)) >= grace_s:
            out.append(node.node_id)
    return out
