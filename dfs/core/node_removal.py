"""When a node may leave the layout: the one rule ``dfs node remove`` and the admin API's
``DELETE /storage/nodes/{id}`` both apply (no I/O: the callers gather the facts).

A node may go once nothing would be lost or left under R by its going:

- an **active** node never (its partitions would move with no drain: the chunks only it
  holds would be gone): drain it first (state ``draining``, or ``out``);
- a **draining** or **out** node that answers: once its repair has finished a round at the
  current layout epoch and reports no misplaced copies (every chunk it holds is also held by
  the nodes that should hold it now: ``daemon/cluster/repair.py`` deletes a misplaced copy
  only after its replicas confirm theirs);
- a **draining** node that does not answer: not without force (nothing says its chunks have
  moved; ``out`` says the operator gave it up);
- an **out** node that does not answer: yes (the operator or the controller declared it
  gone; repair restores R from the other copies).

``force`` skips the data checks, never the active-node rule (the metadata store enforces
that one too: :meth:`daemon.meta.registry.Registry.remove_node`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ACTIVE, DRAINING, OUT = "active", "draining", "out"


def removal_refusal(
    node_id: str,
    state: str,
    repair_status: Mapping[str, Any] | None,
    layout_epoch: int,
    *,
    force: bool = False,
) -> str | None:
    """Why ``node_id`` (layout ``state``) may not be removed now, or None if it may.

    ``repair_status`` is the node's own ``sys.repair_status`` answer (None: it could not be
    asked); ``layout_epoch`` the authoritative layout's epoch.
    """
    if state not in (DRAINING, OUT):
        return (
            f"node {node_id} is {state}: removing it would drop the chunks only it holds; "
            f"drain it first (dfs node drain {node_id} --wait, or set its state to draining), "
            "then remove it once its data has moved"
        )
    if force:
        return None
    if repair_status is None:
        if state == DRAINING:
            return (
                f"node {node_id} is draining but does not answer, so nothing confirms its chunks "
                "have moved; set its state to out if it is gone for good, or force"
            )
        return None
    misplaced = int(repair_status.get("misplaced", 0) or 0)
    if repair_status.get("round_epoch") != layout_epoch:
        return (
            f"node {node_id} has not finished a repair round at layout epoch {layout_epoch} yet: "
            "its chunks may have no other home; wait for the drain to finish, or force"
        )
    if misplaced:
        return (
            f"node {node_id} still holds {misplaced} chunk(s) that have no other home yet; "
            "wait for the drain to finish, or force"
        )
    return None
