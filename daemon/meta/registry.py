"""The cluster's node registry and the placement layout derived from it (one epoch, one layout)."""

from __future__ import annotations

import math
from typing import Any

from daemon.meta.base import MetaBase, _api, _pack_dict, _unpack_dict
from dfs.core.errors import InternalError, InvalidArgument, NotFound, PreconditionFailed
from dfs.core.placement import Layout, LayoutNode, NodeState

_LAYOUT_EPOCH = "layout_epoch"


def _check_zone(zone: object) -> None:
    # LayoutNode accepts "", but an unnamed zone is a forgotten setting, not a failure domain.
    if not isinstance(zone, str) or not zone:
        raise InvalidArgument(f"zone must be a non-empty string, not {zone!r:.80}")


def _check_weight(weight: object) -> None:
    # As LayoutNode checks it, but as InvalidArgument: a caller's mistake, not a corrupt layout.
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < math.inf):
        raise InvalidArgument(f"capacity weight must be finite and > 0, not {weight!r:.80}")


_PUT_NODE = (
    "INSERT INTO nodes VALUES (?, ?, ?) "
    "ON CONFLICT (node_id) DO UPDATE SET info = excluded.info, updated_ns = excluded.updated_ns"
)


class Registry(MetaBase):
    """Nodes, their layout fields (zone, weight, state, address) and the layout epoch."""

    @staticmethod
    def _node(row: tuple[str, bytes, int]) -> dict[str, Any]:
        node_id, info, updated_ns = row
        return {**_unpack_dict(info), "node_id": node_id, "updated_ns": updated_ns}

    def _node_info(self, node_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT info FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return None if row is None else _unpack_dict(row[0])

    def _store_node(self, node_id: str, info: dict[str, Any], now: int) -> None:
        """Write one node row and bump the layout epoch: the caller has checked that it changes."""
        packed = _pack_dict(info, "node info")
        self._db.execute(_PUT_NODE, (node_id, packed, now))
        self._bump_layout_epoch()

    def _bump_layout_epoch(self) -> None:
        """Part of every transaction that changes the nodes table: one epoch, one layout."""
        self._db.execute(
            "INSERT INTO config VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET value = config.value + 1",
            (_LAYOUT_EPOCH,),
        )
        self._layout_changed = True

    @_api
    def put_node(self, node_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Create or replace node ``node_id``'s info; returns it with ``node_id`` and ``updated_ns``.

        The layout epoch moves only when the info differs (a rewrite of the same
        info must not make every daemon rebuild its placement table).
        """
        packed = _pack_dict(info, "node info")
        with self._write() as now:
            if self._node_info(node_id) != _unpack_dict(packed):
                self._bump_layout_epoch()
            self._db.execute(_PUT_NODE, (node_id, packed, now))
            self._log(now, "put_node", [node_id, info])
        return self._node((node_id, packed, now))

    @_api
    def get_node(self, node_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT node_id, info, updated_ns FROM nodes WHERE node_id = ?", (node_id,)
        ).fetchone()
        return None if row is None else self._node(row)

    @_api
    def list_nodes(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT node_id, info, updated_ns FROM nodes ORDER BY node_id").fetchall()
        return [self._node(row) for row in rows]

    @_api
    def delete_node(self, node_id: str) -> None:
        """Remove node ``node_id`` whatever its state (the admin API's DELETE; see :meth:`remove_node`)."""
        with self._write() as now:
            if self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount == 0:
                raise NotFound(f"no node {node_id!r}")
            self._bump_layout_epoch()
            self._log(now, "delete_node", [node_id])

    def _layout(self) -> dict[str, Any]:
        """:meth:`layout` inside the caller's transaction."""
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (_LAYOUT_EPOCH,)).fetchone()
        nodes: list[LayoutNode] = []
        for node_id, packed in self._db.execute("SELECT node_id, info FROM nodes ORDER BY node_id"):
            info = {k: v for k, v in _unpack_dict(packed).items() if v is not None}
            try:
                nodes.append(
                    LayoutNode(
                        node_id=node_id,
                        zone=info.get("zone", "default"),
                        capacity_weight=info.get("capacity_weight", 1.0),
                        state=NodeState(info.get("state", NodeState.ACTIVE.value)),
                        address=info.get("address", ""),
                    )
                )
            except ValueError as exc:
                # Never guess (an unreadable state read as "active" would place data on the node).
                raise InternalError(f"node {node_id!r} has an invalid layout entry: {exc}") from exc
        return Layout(0 if row is None else row[0], tuple(nodes), self._default_replicas).to_wire()

    @_api
    def layout(self) -> dict[str, Any]:
        """The placement layout as ``Layout.to_wire()`` data: epoch, default replicas, nodes by id.

        Fields a node row lacks read as zone "default", weight 1.0, state
        "active", address "".  Epoch and nodes come from one read snapshot.
        """
        with self._read():
            return self._layout()

    @_api
    def register_node(
        self, node_id: str, zone: str, address: str, capacity_weight: float = 1.0
    ) -> dict[str, Any]:
        """A daemon announcing itself at start; returns :meth:`layout`.

        A new node joins ACTIVE with the given zone and weight.  After that the
        zone, weight and state are the admin's (a restart with another config
        must not move data behind the admin's back); only the address follows
        the daemon.  Re-registering unchanged writes nothing.
        """
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgument(f"node id must be a non-empty string, not {node_id!r:.80}")
        _check_zone(zone)
        _check_weight(capacity_weight)
        if not isinstance(address, str):
            raise InvalidArgument(f"node address must be a string, not {address!r:.80}")
        with self._write() as now:
            info = self._node_info(node_id)
            if info is None:
                new: dict[str, Any] = {
                    "zone": zone,
                    "capacity_weight": float(capacity_weight),
                    "state": NodeState.ACTIVE.value,
                    "address": address,
                }
            elif info.get("address", "") != address:  # a missing address reads as "" in the layout
                new = {**info, "address": address}
            else:
                return self._layout()
            self._store_node(node_id, new, now)
            self._log(now, "register_node", [node_id, zone, address, float(capacity_weight)])
            return self._layout()

    @_api
    def set_node(
        self,
        node_id: str,
        *,
        state: str | None = None,
        zone: str | None = None,
        capacity_weight: float | None = None,
    ) -> dict[str, Any]:
        """Change a node's state, zone or weight (None: keep); returns :meth:`layout`."""
        changes: dict[str, Any] = {}
        if state is not None:
            if not isinstance(state, str) or state not in {s.value for s in NodeState}:
                raise InvalidArgument(f"node state must be one of active, draining, out, not {state!r:.40}")
            changes["state"] = state
        if zone is not None:
            _check_zone(zone)
            changes["zone"] = zone
        if capacity_weight is not None:
            _check_weight(capacity_weight)
            changes["capacity_weight"] = float(capacity_weight)
        with self._write() as now:
            info = self._node_info(node_id)
            if info is None:
                raise NotFound(f"no node {node_id!r}")
            new = {**info, **changes}
            if new != info:
                self._store_node(node_id, new, now)
                self._log(now, "set_node", [node_id, state, zone, changes.get("capacity_weight")])
            return self._layout()

    @_api
    def remove_node(self, node_id: str) -> dict[str, Any]:
        """Drop a node from the layout; returns :meth:`layout`.

        Only a node already draining or out may go: removing an active one would
        move its partitions with no drain, so PreconditionFailed says to drain first.
        """
        with self._write() as now:
            info = self._node_info(node_id)
            if info is None:
                raise NotFound(f"no node {node_id!r}")
            state = info.get("state") or NodeState.ACTIVE.value
            if state not in (NodeState.DRAINING.value, NodeState.OUT.value):
                raise PreconditionFailed(f"node {node_id!r} is {state}: set it draining or out first")
            self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            self._bump_layout_epoch()
            self._log(now, "remove_node", [node_id])
            return self._layout()
