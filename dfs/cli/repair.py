"""Repair progress across the cluster, as ``dfs status``, ``dfs rebalance`` and ``dfs node``
report and wait for it: every live node's counters, gathered and summed.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from dfs.cli import progress
from dfs.cli.app import CliError
from dfs.cli.connect import Endpoint, call
from dfs.cli.output import human
from dfs.core.endpoints import (
    SYS_CLUSTER,
    SYS_REPAIR_STATUS,
)
from dfs.core.errors import DfsError


def live_nodes(endpoint: Endpoint, cluster: dict[str, Any]) -> tuple[dict[str, Endpoint], set[str]]:
    """(node id -> where to reach it, for every layout node not marked out and not known dead,
    the daemon at ``endpoint`` among them; the layout nodes not marked out but known dead)."""
    here = cluster.get("node_id")
    placed = [n for n in cluster.get("layout", {}).get("nodes", []) if n["state"] != "out"]
    dead = {m["node_id"] for m in cluster.get("members", []) if m.get("status") in ("dead", "left")}
    down = {n["node_id"] for n in placed if n["node_id"] in dead}
    targets = {
        n["node_id"]: endpoint if n["node_id"] == here else endpoint.peer(n["address"])
        for n in placed
        if n["node_id"] not in down
    }
    return targets, down


async def cluster_status(endpoint: Endpoint) -> dict[str, Any]:
    """Every reachable node's repair status, summed (see daemon/cluster/repair.py for the counters)."""
    cluster = await call(endpoint, SYS_CLUSTER)
    nodes: list[dict[str, Any]] = []
    unreachable: list[str] = []

    async def ask(node_id: str, target: Endpoint) -> None:
        try:
            with trio.fail_after(10):
                nodes.append(await call(target, SYS_REPAIR_STATUS, timeout_s=10))
        except (DfsError, trio.TooSlowError):
            unreachable.append(node_id)

    targets, down = live_nodes(endpoint, cluster)
    async with trio.open_nursery() as nursery:
        for node_id, target in targets.items():
            nursery.start_soon(ask, node_id, target)
    keys = (
        "under_replicated",
        "misplaced",
        "hints_pending",
        "copies_made",
        "bytes_moved",
        "surplus_removed",
        "hot_chunks",
        "hot_copies_held",
    )
    totals = {k: sum(int(n.get(k, 0)) for n in nodes) for k in keys}
    pending = totals["under_replicated"] + totals["misplaced"] + totals["hints_pending"]
    # Re-marking after a policy change (the metadata leader reports it): its chunks are repair to come.
    remarks = [n["remark"] for n in nodes if n.get("remark")]
    remark = max(remarks, key=lambda r: int(r.get("jobs", 0)), default=None)
    if remark is not None and remark.get("jobs"):
        pending += int(remark["jobs"]) + max(0, int(remark["total"]) - int(remark["marked"]))
    return {
        "remark": remark,
        "copies_rate_s": round(sum(float(n.get("copies_rate_s", 0.0)) for n in nodes), 2),
        "layout_epoch": cluster["layout"]["epoch"],
        "nodes": sorted(nodes, key=lambda n: n["node_id"]),
        "unreachable": sorted(
            unreachable | down if isinstance(unreachable, set) else set(unreachable) | down
        ),
        "down": sorted(down),
        "pending": pending,
        **totals,
    }


def repair_line(cs: dict[str, Any]) -> str:
    hot = cs.get("hot_chunks", 0)
    return (
        f"{cs['under_replicated']} under-replicated, {cs['misplaced']} misplaced, "
        f"{cs['hints_pending']} hints pending; repaired {cs['copies_made']} copies "
        f"({human(cs['bytes_moved'])})"
        + (f"; {hot} hot chunk(s) with {cs.get('hot_copies_held', 0)} extra copies" if hot else "")
        + (f"; {cs['copies_rate_s']:g} copies/s" if cs.get("copies_rate_s") else "")
    )


def remark_line(cs: dict[str, Any]) -> str:
    """Re-marking after replication policy changes: jobs, chunks marked/total, rate and ETA."""
    rm = cs.get("remark")
    if not rm or not rm.get("jobs"):
        return "up to date"
    if rm.get("counting"):
        return f"{rm['jobs']} subtree(s): counting chunks ({rm['total']} so far)"
    eta = f", ETA {rm['eta_s']:.0f} s" if rm.get("eta_s") is not None else ""
    return (
        f"{rm['jobs']} subtree(s): {rm['marked']}/{rm['total']} chunks marked "
        f"({rm.get('rate_chunks_s', 0):g}/s{eta})"
    )


async def wait_repaired(endpoint: Endpoint, timeout_s: float, as_json: bool) -> dict[str, Any]:
    """Poll until no node reports repair work left (after a round at the current epoch), with
    progress on stderr (dfs/cli/progress.py): the work pending at the start is the total; work
    found meanwhile grows it."""
    start = time.monotonic()
    first = await cluster_status(endpoint)
    total = first["pending"]
    with progress.reporter("repairing", total, unit="chunks", as_json=as_json) as bar:
        while True:
            cs = await cluster_status(endpoint)
            current = all(n.get("round_epoch") == cs["layout_epoch"] for n in cs["nodes"])
            # Work found since the start (a node's round at the new epoch) counts as more to do.
            total = max(total, bar.progress.done + cs["pending"])
            bar.set_total(total)
            bar.update(total - cs["pending"])
            if current and cs["pending"] == 0 and not cs["unreachable"]:
                return cs
            if time.monotonic() - start > timeout_s:
                raise CliError(f"repair not finished after {timeout_s:g}s: {repair_line(cs)}")
            await trio.sleep(1.0)
