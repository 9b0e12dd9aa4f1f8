"""``dfs status``, ``dfs fsck`` and ``dfs gc``: the state of the data, its check and its
garbage collection.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from dfs.cli import progress
from dfs.cli.app import main, run
from dfs.cli.connect import Endpoint, call, config_for, endpoint_of
from dfs.cli.disks import disk_lines
from dfs.cli.output import emit_json, human, json_option
from dfs.cli.quota import format_size, overcommit_warning, provisioned_bytes
from dfs.cli.repair import cluster_status, live_nodes, remark_line, repair_line, wait_repaired
from dfs.cli.snapshot import snapshot_line, snapshot_status
from dfs.cli.trash import trash_usage_line
from dfs.core.endpoints import (
    CHUNK_VERIFY,
    META_LIST_VOLUMES,
    QUOTA_LIST,
    S3_VERSIONS_USAGE,
    SNAPSHOT_LIST,
    SYS_CLUSTER,
    SYS_FSCK_META,
    SYS_GC,
    SYS_SCRUB_BATCH,
    SYS_SCRUB_LIST,
    SYS_STATFS,
    SYS_STATUS,
    SYS_SWEEP_ORPHANS,
    TIER_STATUS,
    TRASH_USAGE,
)
from dfs.core.errors import DfsError
from dfs.core.namespace import StatFs
from dfs.net.rpc import RpcClient

#: Chunk ids verified per call (the daemon's limit, SCRUB_BATCH_MAX, is larger): small enough
#: for the progress bar to move, large enough that round trips do not dominate.
SCRUB_BATCH = 256
#: A sweep of a large store takes a while; the default 60 s call timeout would cut it short.
GC_TIMEOUT_S = 3600.0


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@json_option
@click.option("--wait", is_flag=True, help="wait (with a progress bar) until repair has caught up")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True, help="for --wait")
def status(
    directory: str | None, config_path: str | None, as_json: bool, wait: bool, timeout_s: float
) -> None:
    """Capacity, usage, files, chunks, daemon health and repair progress."""
    cfg = config_for(directory, config_path)
    if wait:
        run(wait_repaired, endpoint_of(cfg), timeout_s, as_json)
    st = run(call, endpoint_of(cfg), SYS_STATUS)
    st["cluster"] = run(cluster_status, endpoint_of(cfg))
    vols = run(call, endpoint_of(cfg), META_LIST_VOLUMES)
    st["volumes"] = [volume_codec_doc(v) for v in vols]
    quota_status(
        st, vols, run(call, endpoint_of(cfg), QUOTA_LIST), run(call, endpoint_of(cfg), SYS_STATFS), cfg
    )
    st["snapshots"] = snapshot_status(vols, run(call, endpoint_of(cfg), SNAPSHOT_LIST))
    # Per volume with trash entries (outside its quota usage): entries, bytes.
    st["trash"] = run(call, endpoint_of(cfg), TRASH_USAGE)
    # Per versioned bucket with non-current versions (outside its quota usage): versions, bytes.
    st["versions"] = run(call, endpoint_of(cfg), S3_VERSIONS_USAGE)
    # Cloud tiers: copies and bytes per tier, cold data (daemon/service/tiering.py).
    st["tiers"] = run(call, endpoint_of(cfg), TIER_STATUS)
    st["disk_warnings"] = disk_warnings(st, run(call, endpoint_of(cfg), SYS_CLUSTER).get("members", []))
    if as_json:
        emit_json(st)
        return
    cap, ns = st["capacity"], st["namespace"]
    used_pct = 100.0 * (cap["total_bytes"] - cap["free_bytes"]) / max(1, cap["total_bytes"])
    rows = [
        ("node", st["node_id"]),
        ("health", st["health"]),
        ("version", st["version"]),
        ("uptime", f"{st['uptime_s']:.0f} s"),
        ("data dir", st["data_dir"]),
        ("metadata", st.get("metadata", "")),
        (
            "capacity",
            f"{human(cap['total_bytes'])} ({human(cap['avail_bytes'])} available, {used_pct:.1f}% used)",
        ),
        ("files", f"{ns['files']} files, {ns['dirs']} directories, {ns['inodes']} inodes"),
        ("logical data", human(ns["logical_bytes"])),
        (
            "chunks",
            f"{ns['chunks']} ({human(ns['stored_bytes'])} stored, {ns['unreferenced_chunks']} awaiting GC)",
        ),
        ("checksum failures", str(cap.get("checksum_failures", 0))),
        ("layout", f"epoch {st['cluster']['layout_epoch']}, {len(st['cluster']['nodes'])} node(s) reporting"),
        ("repair", repair_line(st["cluster"])),
        ("policy re-mark", remark_line(st["cluster"])),
    ]
    rows += [(f"volume {v['name']}", volume_codec_line(v) + volume_usage_text(v)) for v in st["volumes"]]
    rows.append(("provisioned", provisioned_line(st["provisioning"])))
    rows += [(f"snapshots {s['volume']}", snapshot_line(s)) for s in st["snapshots"]]
    rows += [(f"trash {u['volume']}", trash_usage_line(u)) for u in st["trash"]]
    rows += [(f"versions {u['bucket']}", versions_usage_line(u)) for u in st["versions"]]
    rows += tier_rows(st["tiers"])
    rows += [(w["where"], w["text"]) for w in st["disk_warnings"]]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def tier_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Per tier its copies, per tiered volume how many copies its chunks have: a cloud copy
    counts as one replica (a cold chunk's only ones are its cloud copies)."""
    rows = [
        (f"tier {t['name']}", f"{t['kind']} {t['bucket']}: {t['copies']} copies, {format_size(t['bytes'])}")
        for t in doc["tiers"]
    ]
    for v in doc["volumes"]:
        n = len(v["tiers"])
        extra = f"local copies + {n} cloud cop{'y' if n == 1 else 'ies'}"
        if v["mode"] != "copy":
            extra += f"; cold chunks: {n} cloud cop{'y' if n == 1 else 'ies'} only"
        rows.append((f"volume {v['name']} tiers", f"{v['mode']} to {', '.join(v['tiers'])}: {extra}"))
    if doc["tiers"]:
        rows.append(
            ("cold data", f"{doc['cold_chunks']} chunks, {format_size(doc['cold_bytes'])} on no local disk")
        )
    return rows


def versions_usage_line(u: dict[str, Any]) -> str:
    """``4 non-current versions, 1.5M, 2 delete markers`` for ``dfs status``."""
    return (
        f"{u['versions']} non-current versions, {format_size(u['bytes'])}, "
        f"{u['delete_markers']} delete markers"
    )


def disk_warnings(st: dict[str, Any], members: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A row per node with a data disk not ok: from gossip, this node from its own report."""
    here = st["node_id"]
    bad = [d for d in st.get("disks", []) if d["state"] != "ok"]
    own = {
        "node_id": here,
        "disks": len(st.get("disks", [])),
        "disks_not_ok": len(bad),
    }
    others = [m for m in members if m.get("node_id") != here and m.get("status") in ("alive", "suspect")]
    rows = [{"where": where, "text": text} for where, text in disk_lines([own, *others])]
    for d in bad:
        rows.append({"where": f"disk {d['path']}", "text": f"{d['state']}: {d['reason'] or '-'}"})
    return rows


def quota_status(
    st: dict[str, Any], vols: list[dict[str, Any]], quotas: list[dict[str, Any]], statfs: Any, cfg: Any
) -> None:
    """Per-volume usage and compression ratio, and thin provisioning, from the quota rows."""
    by_ino = {q["ino"]: q for q in quotas}
    for doc, vol in zip(st["volumes"], vols, strict=True):
        q = by_ino.get(vol["ino"])
        if q is not None:
            stored = q["used_stored_bytes"]
            doc["usage"] = {
                "bytes": q["used_bytes"],
                "inodes": q["used_inodes"],
                "stored_bytes": stored,
                "compression_ratio": round(q["used_bytes"] / stored, 3) if stored else None,
                "quota_bytes": q["max_bytes"],
                "quota_inodes": q["max_inodes"],
            }
    capacity = int(StatFs(*statfs).total_bytes)
    provisioned = provisioned_bytes(quotas)
    ratio = cfg.storage.overcommit_warn_ratio
    st["provisioning"] = {
        "provisioned_bytes": provisioned,
        "capacity_bytes": capacity,
        "overcommit_warn_ratio": ratio,
        "warning": overcommit_warning(provisioned, capacity, ratio),
    }


def volume_usage_text(v: dict[str, Any]) -> str:
    """``; 1.2G of 10G, 340 inodes, ratio 2.10`` (empty without an accounting row)."""
    u = v.get("usage")
    if u is None:
        return ""
    limit = f" of {format_size(u['quota_bytes'])}" if u["quota_bytes"] is not None else ""
    inodes = f" of {u['quota_inodes']}" if u["quota_inodes"] is not None else ""
    ratio = f"{u['compression_ratio']:.2f}" if u["compression_ratio"] is not None else "-"
    return f"; {format_size(u['bytes'])}{limit} used, {u['inodes']}{inodes} inodes, ratio {ratio}"


def provisioned_line(p: dict[str, Any]) -> str:
    line = f"{format_size(p['provisioned_bytes'])} in quotas of {format_size(p['capacity_bytes'])} capacity"
    return line if p["warning"] is None else f"{line}  WARNING: {p['warning']}"


def volume_codec_doc(vol: dict[str, Any]) -> dict[str, Any]:
    """A volume's storage settings for ``dfs status`` (how new chunks are written)."""
    policy = vol.get("policy") or {}
    return {
        "name": vol["name"],
        "compression": policy.get("compression", "zstd"),
        "compression_level": policy.get("compression_level"),
        "encryption": policy.get("encryption") is True,
    }


def volume_codec_line(v: dict[str, Any]) -> str:
    """``compression zstd (level 3), encryption on``; other columns (usage) may be appended."""
    if v["compression"] == "none":
        compression = "compression none"
    else:
        level = v.get("compression_level")
        compression = f"compression {v['compression']} (level {level if level else 'default'})"
    return f"{compression}, encryption {'on' if v['encryption'] else 'off'}"


async def _fsck(endpoint: Endpoint, repair: bool, as_json: bool) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:

        async def connect(ep: Endpoint) -> RpcClient:
            return await stack.enter_async_context(ep.client(timeout_s=600))

        local = await connect(endpoint)
        cluster = await SYS_CLUSTER.call(local)
        here = str(cluster.get("node_id", ""))
        targets, _down = live_nodes(endpoint, cluster)
        conns = {here: local} | {node: await connect(ep) for node, ep in targets.items() if node != here}
        ids: dict[str, list[bytes]] = {}
        problems: list[str] = []
        for node, conn in conns.items():
            try:
                ids[node] = await SYS_SCRUB_LIST.call(conn)
            except DfsError as exc:
                problems.append(f"node {node}: chunks not verified: {exc.message}")
        bad: list[tuple[str, bytes]] = []
        total = sum(len(v) for v in ids.values())
        with progress.reporter("verifying chunks", total, unit="chunks", as_json=as_json) as bar:
            for node, node_ids in ids.items():
                try:
                    for i in range(0, len(node_ids), SCRUB_BATCH):
                        batch = node_ids[i : i + SCRUB_BATCH]
                        bad.extend((node, cid) for cid in await SYS_SCRUB_BATCH.call(conns[node], batch))
                        bar.advance(len(batch))
                except DfsError as exc:
                    problems.append(f"node {node}: chunk verification stopped: {exc.message}")
        if repair and len(conns) > 1:
            # A corrupt copy in a cluster is quarantined on its node and fetched again from a replica.
            for node, cid in bad:
                with contextlib.suppress(DfsError):
                    await CHUNK_VERIFY.call(conns[node], cid)
        # One call with no progress report of its own: a spinner and the elapsed time.
        async with progress.ticking(progress.reporter("checking metadata", None, as_json=as_json)):
            report = await SYS_FSCK_META.call(local, repair)
    report["chunks_checked"] = total
    report["corrupt_chunks"] = [cid.hex() for _, cid in bad]
    report["problems"][:0] = problems
    for node, cid in bad:
        where = f" on {node}" if len(conns) > 1 else ""
        report["problems"].append(f"chunk {cid.hex()}{where} fails its checksum")
    return report


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--repair", is_flag=True, help="fix what can be fixed (counts, dangling entries, orphans)")
@json_option
def fsck(directory: str | None, config_path: str | None, repair: bool, as_json: bool) -> None:
    """Check metadata and chunks agree; verify every chunk's checksum."""
    cfg = config_for(directory, config_path)
    report = run(_fsck, endpoint_of(cfg), repair, as_json)
    if as_json:
        emit_json(report)
    else:
        click.echo(f"checked {report['chunks_checked']} chunks")
        for line in report["problems"]:
            click.echo(f"problem: {line}")
        click.echo(
            "clean"
            if not report["problems"]
            else f"{len(report['problems'])} problem(s)" + (" (repaired what could be)" if repair else "")
        )
    if report["problems"] and not repair:
        sys.exit(3)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--now", is_flag=True, help="collect unreferenced chunks at once, without the safety delay")
@click.option("--orphans", is_flag=True, help="also sweep chunks of writes that never committed")
@json_option
def gc(directory: str | None, config_path: str | None, now: bool, orphans: bool, as_json: bool) -> None:
    """Delete chunks no file references any more (after [storage] gc_delay_s unless --now).

    With --orphans, also delete stored chunks that no metadata knows (left by
    uploads that failed before committing) once untouched for
    [storage] orphan_delay_s, or at once with --now.
    """
    cfg = config_for(directory, config_path)
    doc = run(_gc, endpoint_of(cfg), now, orphans, as_json)
    if as_json:
        emit_json(doc)
        return
    click.echo(f"collected {doc['collected']} chunk(s)")
    if orphans:
        click.echo(f"swept {doc['orphans_swept']} orphan chunk(s)")


async def _gc(endpoint: Endpoint, now: bool, orphans: bool, as_json: bool) -> dict[str, int]:
    """Each sweep is one call that reports no progress: a spinner and the elapsed time meanwhile."""
    delay = 0.0 if now else None
    doc: dict[str, int] = {}
    async with progress.ticking(progress.reporter("collecting garbage", None, as_json=as_json)):
        doc["collected"] = await call(endpoint, SYS_GC, delay, timeout_s=GC_TIMEOUT_S)
    if orphans:
        async with progress.ticking(progress.reporter("sweeping orphans", None, as_json=as_json)):
            doc["orphans_swept"] = await call(endpoint, SYS_SWEEP_ORPHANS, delay, timeout_s=GC_TIMEOUT_S)
    return doc
