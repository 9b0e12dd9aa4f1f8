"""``dfs nodes``, ``dfs layout``, ``dfs rebalance`` and ``dfs node add|set|drain|remove``:
the cluster's members and the layout that places data on them.
"""

from __future__ import annotations

from typing import Any

import click

from dfs.cli.app import CliError, main, run
from dfs.cli.connect import call, config_for, endpoint_of
from dfs.cli.output import emit_json, human, json_option
from dfs.cli.repair import cluster_status, repair_line, wait_repaired
from dfs.core.config import Config
from dfs.core.endpoints import (
    META_REGISTER_NODE,
    META_REMOVE_NODE,
    META_SET_NODE,
    SYS_CLUSTER,
)
from dfs.core.node_removal import removal_refusal


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@json_option
def nodes(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The cluster's nodes: gossip's live view and each node's layout state."""
    cfg = config_for(directory, config_path)
    cluster: dict[str, Any] = run(call, endpoint_of(cfg), SYS_CLUSTER)
    rows = merge_nodes(cluster)
    if as_json:
        emit_json(rows)
        return
    click.echo(
        f"{'NODE':<20} {'STATUS':<8} {'STATE':<9} {'ZONE':<10} {'WEIGHT':>6} {'RPC':<22} {'FREE':>10}  SINCE"
    )
    for m in rows:
        name = m["node_id"] + (" *" if m.get("self") else "")
        free = human(m["free_bytes"]) if "free_bytes" in m else "-"
        since = f"{m['for_s']:.0f} s" if "for_s" in m else "-"
        zone, rpc_address = m.get("zone", "-"), m.get("rpc", "-")
        weight = f"{m['capacity_weight']:g}" if "capacity_weight" in m else "-"
        click.echo(
            f"{name:<20} {m['status']:<8} {m.get('state', '-'):<9} {zone:<10} {weight:>6} "
            f"{rpc_address:<22} {free:>10}  {since}"
        )


def merge_nodes(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """Gossip members joined with layout nodes (a layout node gossip does not know is "unknown")."""
    by_id: dict[str, dict[str, Any]] = {m["node_id"]: dict(m) for m in cluster.get("members", [])}
    for n in cluster.get("layout", {}).get("nodes", []):
        row = by_id.setdefault(n["node_id"], {"node_id": n["node_id"], "status": "unknown"})
        row["state"] = n["state"]
        row["capacity_weight"] = n["capacity_weight"]
        row.setdefault("zone", n["zone"])
        if n.get("address"):
            row.setdefault("rpc", n["address"])
    return sorted(by_id.values(), key=lambda r: r["node_id"])


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@json_option
def layout(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The authoritative layout: nodes, zones, weights, states and the epoch."""
    cfg = config_for(directory, config_path)
    cluster: dict[str, Any] = run(call, endpoint_of(cfg), SYS_CLUSTER)
    lay = cluster["layout"]
    if as_json:
        emit_json(lay)
        return
    click.echo(
        f"layout epoch {lay['epoch']}, default R={cluster['policy']['replicas']} "
        f"({cluster['policy']['consistency']}), metadata primary {cluster['meta']}"
    )
    click.echo(f"{'NODE':<20} {'STATE':<9} {'ZONE':<12} {'WEIGHT':>6}  RPC")
    for n in lay["nodes"]:
        click.echo(
            f"{n['node_id']:<20} {n['state']:<9} {n['zone']:<12} {n['capacity_weight']:>6g}  {n['address']}"
        )


def _node_change(cfg: Config, node_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run(call, endpoint_of(cfg), META_SET_NODE, node_id, changes)
    return result


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
@click.option("--wait", is_flag=True, help="return once repair has caught up")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True)
@json_option
def rebalance(config_path: str | None, wait: bool, timeout_s: float, as_json: bool) -> None:
    """Weight every active node by its disk capacity, so usage converges; data moves as needed."""
    cfg = config_for(None, config_path)
    cluster: dict[str, Any] = run(call, endpoint_of(cfg), SYS_CLUSTER)
    capacity = {m["node_id"]: int(m.get("capacity_bytes", 0)) for m in cluster["members"]}
    changed = 0
    for n in cluster["layout"]["nodes"]:
        cap = capacity.get(n["node_id"], 0)
        if n["state"] != "active" or cap <= 0:
            continue
        weight = round(cap / 1e12, 3) or 0.001  # TB of disk
        if abs(weight - float(n["capacity_weight"])) > 0.01 * weight:
            _node_change(cfg, n["node_id"], {"capacity_weight": weight})
            changed += 1
    if not as_json:
        click.echo(f"{changed} node weight(s) changed")
    cs = run(wait_repaired, endpoint_of(cfg), timeout_s, as_json) if wait else None
    if as_json:
        emit_json({"weights_changed": changed, "repair": cs})
    elif cs is not None:
        click.echo(repair_line(cs))


@main.group()
def node() -> None:
    """Per-node set-up."""


@node.command("add")
@click.argument("node_id")
@click.option("--address", required=True, help="the node's RPC address, HOST:PORT")
@click.option("--zone", default="default", show_default=True, help="failure domain")
@click.option("--weight", type=float, default=1.0, show_default=True, help="capacity weight")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
@json_option
def node_add(
    node_id: str, address: str, zone: str, weight: float, config_path: str | None, as_json: bool
) -> None:
    """Add a node to the layout (daemons with [cluster] auto_join add themselves)."""
    cfg = config_for(None, config_path)
    lay = run(call, endpoint_of(cfg), META_REGISTER_NODE, node_id, zone, address, weight)
    _layout_said(lay, f"layout epoch {lay['epoch']}: {node_id} active", as_json)


@node.command("set")
@click.argument("node_id")
@click.option("--zone", help="failure domain")
@click.option("--weight", type=float, help="capacity weight")
@click.option("--state", type=click.Choice(["active", "draining", "out"]), help="layout state")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
@json_option
def node_set(
    node_id: str,
    zone: str | None,
    weight: float | None,
    state: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Change a node's zone, weight or state in the layout (moves data as needed)."""
    changes: dict[str, Any] = {}
    if zone is not None:
        changes["zone"] = zone
    if weight is not None:
        changes["capacity_weight"] = weight
    if state is not None:
        changes["state"] = state
    if not changes:
        raise CliError("nothing to change: give --zone, --weight or --state")
    lay = _node_change(config_for(None, config_path), node_id, changes)
    _layout_said(lay, f"layout epoch {lay['epoch']}", as_json)


@node.command("drain")
@click.argument("node_id")
@click.option("--wait", is_flag=True, help="return once its data has moved to the other nodes")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
@json_option
def node_drain(node_id: str, wait: bool, timeout_s: float, config_path: str | None, as_json: bool) -> None:
    """Move a node's data away (it keeps serving reads meanwhile); then `dfs node remove`.
    With --wait, a progress bar (stderr) follows the repair until its data has moved."""
    cfg = config_for(None, config_path)
    lay = _node_change(cfg, node_id, {"state": "draining"})
    if not as_json:
        click.echo(f"layout epoch {lay['epoch']}: {node_id} draining")
    cs = run(wait_repaired, endpoint_of(cfg), timeout_s, as_json) if wait else None
    if as_json:
        emit_json({"layout": lay, "repair": cs})
    elif cs is not None:
        click.echo(f"drained: {repair_line(cs)}")


@node.command("remove")
@click.argument("node_id")
@click.option("--force", is_flag=True, help="even if it still holds chunks (they may be the last copies)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
@json_option
def node_remove(node_id: str, force: bool, config_path: str | None, as_json: bool) -> None:
    """Remove a drained (or out) node from the layout; refuses while it still holds chunks
    (the rule of dfs/core/node_removal.py, which the admin API's DELETE applies too)."""
    cfg = config_for(None, config_path)
    cs = run(cluster_status, endpoint_of(cfg))
    cluster: dict[str, Any] = run(call, endpoint_of(cfg), SYS_CLUSTER)
    states = {n["node_id"]: n["state"] for n in cluster["layout"]["nodes"]}
    if node_id in states:  # not in the layout: the metadata call says so
        mine = next((n for n in cs["nodes"] if n["node_id"] == node_id), None)
        why = removal_refusal(node_id, states[node_id], mine, cluster["layout"]["epoch"], force=force)
        if why is not None:
            raise CliError(why)
    lay = run(call, endpoint_of(cfg), META_REMOVE_NODE, node_id)
    _layout_said(lay, f"layout epoch {lay['epoch']}: {node_id} removed", as_json)


def _layout_said(lay: dict[str, Any], line: str, as_json: bool) -> None:
    """A layout change's answer: the new layout as JSON, or ``line`` for people."""
    if as_json:
        emit_json(lay)
    else:
        click.echo(line)
