"""``dfs snapshot create|list|delete|restore|clone|schedule``: read-only volume snapshots.

A snapshot is a copy-on-write image of a volume at ``/.snapshots/VOLUME/NAME``
(readable through mounts and S3, never writable).  ``restore`` rolls the whole
volume back to it, or with ``--path``/``--to`` copies one file or directory out
as a writable copy; ``clone`` makes a new volume from it.  ``schedule`` sets the
volume's automatic snapshots, e.g. ``hourly=24,daily=7`` (see
dfs/core/snapshot_schedule.py); the leader daemon takes and expires them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.core.endpoints import (
    SNAPSHOT_CLONE,
    SNAPSHOT_CREATE,
    SNAPSHOT_DELETE,
    SNAPSHOT_LIST,
    SNAPSHOT_RESTORE,
    SNAPSHOT_SCHEDULE,
)
from dfs.core.snapshot_schedule import NAME_RE, format_schedule, parse_schedule


def _name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and NAME_RE.fullmatch(value) is None:
        raise click.BadParameter("1-255 characters of A-Z a-z 0-9 . _ + -, starting alphanumeric")
    return value


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


@main.group()
def snapshot() -> None:
    """Read-only volume snapshots: take, list, delete, restore, clone, schedule."""


@snapshot.command("create")
@click.argument("volume")
@click.argument("name", required=False, callback=_name)
@dir_option
@config_option
def snapshot_create(volume: str, name: str | None, directory: str | None, config_path: str | None) -> None:
    """Take snapshot NAME of VOLUME (default name: the UTC time, e.g. 2026-12-05T09-00-00Z)."""
    cfg = config_for(directory, config_path)
    name = name or time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    doc: dict[str, Any] = run(call, endpoint_of(cfg), SNAPSHOT_CREATE, volume, name)
    click.echo(f"/.snapshots/{doc['volume']}/{doc['name']}  ({doc['files']} files, {doc['bytes']} bytes)")


@snapshot.command("list")
@click.argument("volume", required=False)
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def snapshot_list(volume: str | None, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Snapshots of VOLUME (or of every volume), oldest first."""
    cfg = config_for(directory, config_path)
    rows: list[dict[str, Any]] = run(call, endpoint_of(cfg), SNAPSHOT_LIST, volume)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    click.echo(f"{'VOLUME':<16}  {'NAME':<32}  {'CREATED (UTC)':<19}  {'ORIGIN':<8}  {'FILES':>9}  BYTES")
    for r in rows:
        click.echo(
            f"{r['volume']:<16}  {r['name']:<32}  {_when(r['created_ns']):<19}  {r['origin']:<8}  "
            f"{r['files']:>9}  {r['bytes']}"
        )


@snapshot.command("delete")
@click.argument("volume")
@click.argument("name", callback=_name)
@dir_option
@config_option
def snapshot_delete(volume: str, name: str, directory: str | None, config_path: str | None) -> None:
    """Delete snapshot NAME of VOLUME (GC reclaims the data nothing else holds)."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), SNAPSHOT_DELETE, volume, name)
    click.echo(f"deleted /.snapshots/{volume}/{name}")


@snapshot.command("restore")
@click.argument("volume")
@click.argument("name", callback=_name)
@click.option("--path", "path", default=None, help="one file or directory in the snapshot, e.g. docs/a.txt")
@click.option("--to", "to", default=None, help="with --path: the copy's new absolute path, e.g. /vol/a.txt")
@dir_option
@config_option
def snapshot_restore(
    volume: str, name: str, path: str | None, to: str | None, directory: str | None, config_path: str | None
) -> None:
    """Roll VOLUME back to snapshot NAME (its current contents are replaced), or with --path
    and --to copy one file or directory out of the snapshot as a new writable copy."""
    if (path is None) != (to is None):
        raise click.UsageError("--path and --to go together")
    cfg = config_for(directory, config_path)
    doc: dict[str, Any] = run(call, endpoint_of(cfg), SNAPSHOT_RESTORE, volume, name, path, to)
    if path is None:
        click.echo(f"restored /{volume} from /.snapshots/{volume}/{name}")
    else:
        click.echo(f"restored {doc['path']} from /.snapshots/{volume}/{name}/{path.strip('/')}")


@snapshot.command("clone")
@click.argument("volume")
@click.argument("name", callback=_name)
@click.argument("new_volume")
@dir_option
@config_option
def snapshot_clone(
    volume: str, name: str, new_volume: str, directory: str | None, config_path: str | None
) -> None:
    """A new writable volume NEW_VOLUME copied from snapshot NAME of VOLUME (data shared)."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), SNAPSHOT_CLONE, volume, name, new_volume)
    click.echo(f"cloned /.snapshots/{volume}/{name} to /{new_volume}")


@snapshot.command("schedule")
@click.argument("volume")
@click.argument("schedule")
@dir_option
@config_option
def snapshot_schedule(volume: str, schedule: str, directory: str | None, config_path: str | None) -> None:
    """Set VOLUME's automatic snapshots: SCHEDULE is tier=N,... (tiers minutely, hourly, daily,
    weekly, monthly; N: how many of the tier to keep), e.g. hourly=24,daily=7; "none" stops them
    (the automatic snapshots taken stay until deleted)."""
    value: str | None = None
    if schedule.lower() != "none":
        try:
            value = format_schedule(parse_schedule(schedule))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="SCHEDULE") from None
    cfg = config_for(directory, config_path)
    stored = run(call, endpoint_of(cfg), SNAPSHOT_SCHEDULE, volume, value)
    click.echo(f"{volume}: snapshot schedule {stored or 'none'}")


def snapshot_status(volumes: list[dict[str, Any]], snaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per volume with a schedule or snapshots, for ``dfs status``: schedule, count, last taken."""
    out: dict[str, dict[str, Any]] = {}
    for vol in volumes:
        schedule = (vol.get("policy") or {}).get("snapshot_schedule")
        if schedule:
            out[vol["name"]] = {"volume": vol["name"], "schedule": schedule, "count": 0, "last_ns": None}
    for s in snaps:
        row = out.setdefault(
            s["volume"], {"volume": s["volume"], "schedule": None, "count": 0, "last_ns": None}
        )
        row["count"] += 1
        row["last_ns"] = max(row["last_ns"] or 0, s["created_ns"])
    return [out[name] for name in sorted(out)]


def snapshot_line(s: dict[str, Any]) -> str:
    """``3 held, last 2026-12-05 09:00:00 UTC, schedule hourly=24,daily=7``."""
    last = "never" if s["last_ns"] is None else _when(s["last_ns"]) + " UTC"
    return f"{s['count']} held, last {last}, schedule {s['schedule'] or 'none'}"


# `dfs snapshot send|receive`: snapshots as streams, like zfs send/receive (dfs/cli/sendrecv.py).
from dfs.cli.sendrecv import receive_command, send_command  # noqa: E402  # it needs nothing of this module

snapshot.add_command(send_command)
snapshot.add_command(receive_command)
