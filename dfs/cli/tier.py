"""``dfs tier``: cloud tiers (object stores holding copies of chunks) and the volumes using them.

A tier is defined once for the cluster (``add``: checked against the store first); a volume's
policy names the tiers that hold its chunks (``attach``), in ``copy`` mode (an extra copy,
e.g. off-site) or ``tiered`` (chunks of files untouched for N days leave the local disks).
See daemon/service/tiering.py."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.cli.quota import format_size
from dfs.core.endpoints import (
    META_GET_VOLUME,
    META_UPDATE_VOLUME,
    TIER_DELETE,
    TIER_LIST,
    TIER_PIN,
    TIER_PUT,
    TIER_RUN,
    TIER_STATUS,
)
from dfs.core.errors import NotFound

# A pass may move gigabytes: `dfs tier run` waits this long for it.
_RUN_TIMEOUT_S = 6 * 3600.0


@main.group()
def tier() -> None:
    """Cloud tiers: add, list, remove, attach to volumes, status, pin, run."""


@tier.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(["s3", "azure", "gcs", "dir"]), required=True)
@click.option("--bucket", required=True, help="bucket (s3, gcs), container (azure) or directory (dir)")
@click.option("--prefix", default="", help="key prefix inside the bucket")
@click.option("--endpoint", "endpoint_url", help="the store's URL (S3-compatible stores, emulators)")
@click.option("--region")
@click.option("--credentials-file", help="JSON credentials, readable on every daemon (never stored)")
@click.option("--allow-http", is_flag=True, help="allow an http:// endpoint")
@click.option("--bandwidth", "bandwidth", type=int, help="bytes per second per daemon (default: unlimited)")
@click.option("--cost-per-gib-month", type=float, help="storage price, for `dfs tier status`")
@click.option("--cost-per-1k-requests", type=float, help="request price, for `dfs tier status`")
@click.option("--request-timeout", type=float, help="seconds per request before it fails (default 30)")
@click.option("--max-retries", type=click.IntRange(0, 10), help="retries of a failed request (default 3)")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def tier_add(
    name: str,
    kind: str,
    bucket: str,
    prefix: str,
    endpoint_url: str | None,
    region: str | None,
    credentials_file: str | None,
    allow_http: bool,
    bandwidth: int | None,
    cost_per_gib_month: float | None,
    cost_per_1k_requests: float | None,
    request_timeout: float | None,
    max_retries: int | None,
    directory: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Define tier NAME (or change its settings); the metadata primary checks that the store
    answers with these credentials before it is saved."""
    spec: dict[str, Any] = {"name": name, "kind": kind, "bucket": bucket, "prefix": prefix}
    optional = {
        "endpoint": endpoint_url,
        "region": region,
        "credentials_file": credentials_file,
        "bandwidth_bytes_per_s": bandwidth,
        "cost_per_gib_month": cost_per_gib_month,
        "cost_per_1k_requests": cost_per_1k_requests,
        "request_timeout_s": request_timeout,
        "max_retries": max_retries,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    if allow_http:
        spec["allow_http"] = True
    cfg = config_for(directory, config_path)
    doc: dict[str, Any] = run(
        functools.partial(call, timeout_s=120.0), endpoint_of(cfg), TIER_PUT, name, spec
    )
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(f"tier {name}: {kind} {bucket}{'/' + prefix if prefix else ''}")


@tier.command("list")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def tier_list(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Every tier and where it stores chunks (never a secret)."""
    cfg = config_for(directory, config_path)
    docs: list[dict[str, Any]] = run(call, endpoint_of(cfg), TIER_LIST)
    if as_json:
        click.echo(json.dumps(docs, indent=2, sort_keys=True))
        return
    click.echo(f"{'NAME':<16}  {'KIND':<6}  {'BUCKET':<24}  ENDPOINT")
    for doc in docs:
        s = doc["spec"]
        where = s["bucket"] + ("/" + s["prefix"] if s.get("prefix") else "")
        click.echo(f"{doc['name']:<16}  {s['kind']:<6}  {where:<24}  {s.get('endpoint') or '-'}")


@tier.command("remove")
@click.argument("name")
@dir_option
@config_option
def tier_remove(name: str, directory: str | None, config_path: str | None) -> None:
    """Forget tier NAME (refused while a volume names it or it holds copies)."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), TIER_DELETE, name)
    click.echo(f"tier {name} removed")


def _set_policy(cfg: Any, volume: str, changes: dict[str, Any]) -> dict[str, Any]:
    endpoint = endpoint_of(cfg)
    vol: dict[str, Any] | None = run(call, endpoint, META_GET_VOLUME, volume)
    if vol is None:
        raise NotFound(f"no volume {volume!r}")
    policy = {**vol["policy"], **changes}
    updated: dict[str, Any] = run(call, endpoint, META_UPDATE_VOLUME, volume, policy)
    return updated


@tier.command("attach")
@click.argument("volume")
@click.argument("tiers", nargs=-1, required=True)
@click.option("--mode", type=click.Choice(["copy", "tiered", "cloud"]), default="copy", show_default=True)
@click.option("--after-days", type=click.FloatRange(0, 36500), default=0.0, show_default=True)
@click.option(
    "--path", "paths", multiple=True, help="only files under this path inside the volume (repeatable)"
)
@dir_option
@config_option
def tier_attach(
    volume: str,
    tiers: tuple[str, ...],
    mode: str,
    after_days: float,
    paths: tuple[str, ...],
    directory: str | None,
    config_path: str | None,
) -> None:
    """Make VOLUME keep its chunks in TIERS (two or more: a copy in each).  copy: one more copy
    besides the local ones; tiered: chunks of files untouched for --after-days leave the local
    disks once every tier holds them; cloud: every chunk leaves them at the next pass (local
    disks are a cache)."""
    cfg = config_for(directory, config_path)
    for path in paths:
        if not path.startswith("/") or "/../" in path + "/":
            raise click.BadParameter(
                f"{path!r}: give a path inside the volume such as /logs", param_hint="--path"
            )
    changes = {
        "tiers": list(tiers),
        "tier_mode": mode,
        "tier_after_days": after_days,
        "tier_paths": list(paths) or None,
    }
    _set_policy(cfg, volume, changes)
    where = f" (only {', '.join(paths)})" if paths else ""
    click.echo(f"volume {volume}: {mode} to {', '.join(tiers)} after {after_days:g} day(s){where}")


@tier.command("detach")
@click.argument("volume")
@dir_option
@config_option
def tier_detach(volume: str, directory: str | None, config_path: str | None) -> None:
    """Stop copying VOLUME's chunks to tiers (chunks already cold stay cold: pin them back)."""
    cfg = config_for(directory, config_path)
    _set_policy(cfg, volume, {"tiers": None, "tier_mode": None, "tier_after_days": None, "tier_paths": None})
    click.echo(f"volume {volume}: no tiers")


def _pass_lines(doc: dict[str, Any], label: str) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(doc["started"]))
    lines = [
        f"{label} (started {when} UTC): {format_size(doc['moved_bytes'])} of "
        f"{format_size(doc['planned_bytes'])} moved, {doc['copies_stored']} copies stored, "
        f"{doc['chunks_made_cold']} chunks made cold, {doc['objects_deleted']} objects deleted"
    ]
    if doc.get("eta_s") is not None:
        lines.append(f"  rate {format_size(int(doc['rate_bytes_per_s']))}/s, ETA {doc['eta_s']:.0f} s")
    if doc["tiers_down"]:
        lines.append(f"  tiers down: {', '.join(doc['tiers_down'])}")
    for err in doc["errors"][:5]:
        lines.append(f"  error: {err}")
    for cid in doc.get("lost_chunks", [])[:5]:
        lines.append(f"  LOST: chunk {cid}")
    return lines


@tier.command("status")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def tier_status(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Bytes per tier, cold data, the tiering worker's progress, cold reads."""
    cfg = config_for(directory, config_path)
    doc: dict[str, Any] = run(call, endpoint_of(cfg), TIER_STATUS)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    click.echo(f"{'TIER':<16}  {'KIND':<6}  {'COPIES':>8}  {'BYTES':>8}  {'$/MONTH':>8}  VOLUMES")
    for t in doc["tiers"]:
        cost = "-" if t["monthly_cost"] is None else f"{t['monthly_cost']:.2f}"
        click.echo(
            f"{t['name']:<16}  {t['kind']:<6}  {t['copies']:>8}  {format_size(t['bytes']):>8}  {cost:>8}  "
            f"{', '.join(t['volumes']) or '-'}"
        )
    click.echo(
        f"cold: {doc['cold_chunks']} chunks, {format_size(doc['cold_bytes'])} (on no local disk); "
        f"{doc['deletions_pending']} deletions pending; {doc['pins']} pinned trees"
    )
    reads = doc["reads"]
    if reads["cold_reads"]:
        avg_ms = 1000 * reads["cold_read_seconds"] / reads["cold_reads"]
        click.echo(
            f"cold reads on this daemon: {reads['cold_reads']} "
            f"({format_size(reads['cold_read_bytes'])}, {avg_ms:.1f} ms each)"
        )
    if doc["running"] is not None:
        click.echo("\n".join(_pass_lines(doc["running"], "pass running")))
    elif doc["last_pass"] is not None:
        click.echo("\n".join(_pass_lines(doc["last_pass"], "last pass")))


@tier.command("pin")
@click.argument("path")
@dir_option
@config_option
def tier_pin(path: str, directory: str | None, config_path: str | None) -> None:
    """Keep the tree at PATH (/volume/dir) on local disks; its cold chunks come back at the next pass."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), TIER_PIN, path, True)
    click.echo(f"{path}: pinned to local disks")


@tier.command("unpin")
@click.argument("path")
@dir_option
@config_option
def tier_unpin(path: str, directory: str | None, config_path: str | None) -> None:
    """Let the tree at PATH tier again."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), TIER_PIN, path, False)
    click.echo(f"{path}: unpinned")


@tier.command("run")
@click.option("--verify", is_flag=True, help="also list every tier and compare it with metadata")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def tier_run(verify: bool, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Run a tiering pass now and wait for it (normally every [tiers] interval_s)."""
    cfg = config_for(directory, config_path)
    doc: dict[str, Any] = run(
        functools.partial(call, timeout_s=_RUN_TIMEOUT_S), endpoint_of(cfg), TIER_RUN, verify
    )
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(_pass_lines(doc, "pass")))
