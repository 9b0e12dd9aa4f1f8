"""``dfs trash list|restore|empty``: files deleted from volumes that keep a trash.

A volume keeps deleted files (removed through a mount, replaced by a rename, deleted or
overwritten through S3) for its policy's ``trash_days`` (else ``[storage] trash_days``);
see daemon/meta/trash.py.  Entries are named by their id (the file's inode number)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.cli.quota import format_size
from dfs.core.config import MAX_TRASH_DAYS
from dfs.core.endpoints import TRASH_EMPTY, TRASH_LIST, TRASH_RESTORE

# `dfs trash empty` asks for batches until done, at most this many (each is one transaction).
_MAX_BATCHES = 100_000


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


def trash_line(entry: dict[str, Any]) -> str:
    where = entry["path"] or f"{entry['name']} (in directory {entry['parent']})"
    return (
        f"{entry['id']:>10}  {entry['volume']:<16}  {_when(entry['deleted_ns'])}  "
        f"{format_size(entry['size']):>8}  {where}"
    )


def trash_usage_line(u: dict[str, Any]) -> str:
    """``3 entries, 1.5M`` for ``dfs status``."""
    return f"{u['entries']} entries, {format_size(u['bytes'])}"


@main.group()
def trash() -> None:
    """Deleted files kept by volumes with trash_days > 0: list, restore, empty."""


@trash.command("list")
@click.argument("volume", required=False)
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def trash_list(volume: str | None, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The trash entries of VOLUME (else of every volume), oldest first."""
    cfg = config_for(directory, config_path)
    entries: list[dict[str, Any]] = run(call, endpoint_of(cfg), TRASH_LIST, volume)
    if as_json:
        click.echo(json.dumps(entries, indent=2, sort_keys=True))
        return
    click.echo(f"{'ID':>10}  {'VOLUME':<16}  {'DELETED (UTC)':<19}  {'SIZE':>8}  PATH")
    for entry in entries:
        click.echo(trash_line(entry))


@trash.command("restore")
@click.argument("volume")
@click.argument("entry_id", type=int)
@click.option("--to", "to", help="restore to this path (/volume/dir/name) instead of where it was")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def trash_restore(
    volume: str, entry_id: int, to: str | None, directory: str | None, config_path: str | None, as_json: bool
) -> None:
    """Put trash entry ENTRY_ID of VOLUME back where it was deleted (refused if that name is
    taken or its directory is gone: give --to then)."""
    cfg = config_for(directory, config_path)
    done: dict[str, Any] = run(call, endpoint_of(cfg), TRASH_RESTORE, volume, entry_id, to)
    if as_json:
        click.echo(json.dumps(done, indent=2, sort_keys=True))
        return
    click.echo(f"restored {done['id']} to {done['restored_to']}")


@trash.command("empty")
@click.argument("volume", required=False)
@click.option(
    "--older-than",
    "older_than_days",
    type=click.FloatRange(0, MAX_TRASH_DAYS),
    help="only entries deleted more than this many days ago",
)
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def trash_empty(
    volume: str | None,
    older_than_days: float | None,
    directory: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Purge the trash of VOLUME (else of every volume) for good; their chunks then go through GC."""
    cfg = config_for(directory, config_path)
    purged = 0
    for _ in range(_MAX_BATCHES):
        got: dict[str, Any] = run(call, endpoint_of(cfg), TRASH_EMPTY, volume, older_than_days)
        purged += int(got["purged"])
        if not got["more"]:
            break
    if as_json:
        click.echo(json.dumps({"purged": purged}, indent=2, sort_keys=True))
        return
    click.echo(f"purged {purged} trash entr{'y' if purged == 1 else 'ies'}")
