"""``dfs key status|rotate``: the master key that wraps the data keys of encrypted volumes.

The metadata primary holds the master key (``<data_dir>/master.key`` or
``$DFS_MASTER_KEY``); each encrypted volume has a random data key stored only
wrapped by it (dfs/core/keys.py).  ``rotate`` makes a new master key and rewraps
every data key in one transaction: no chunk is rewritten.  The previous key is
kept as ``master.key.old`` until the next rotation replaces it, because metadata
backups made before the rotation still hold data keys wrapped by it.  With
PostgreSQL metadata every daemon holds the key (they take it from each other);
``status`` lists each one's fingerprint, so a daemon that lacks the current key
(or was given another one in ``$DFS_MASTER_KEY``) shows.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.core.endpoints import KEYS_ROTATE, KEYS_STATUS


@main.group()
def key() -> None:
    """The master key of encrypted volumes (losing it loses their data)."""


@key.command("status")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def key_status(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The master key's fingerprint and where it comes from, and every volume data key."""
    cfg = config_for(directory, config_path)
    status: dict[str, Any] = run(call, endpoint_of(cfg), KEYS_STATUS)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    click.echo(f"master key:  {status['master_fingerprint'] or 'NONE on the metadata primary'}")
    click.echo(f"source:      {status['source']}")
    cluster_fp = status.get("cluster_fingerprint")
    if cluster_fp and cluster_fp != status["master_fingerprint"]:
        click.echo(f"MISMATCH:    the cluster's current master key is {cluster_fp}")
    daemons = status.get("daemons") or []
    if len(daemons) > 1 or any(not d.get("in_sync") for d in daemons):
        click.echo(f"{'DAEMON':<16} {'MASTER KEY':<17} SOURCE")
        for d in daemons:
            name = d.get("node_id") or d.get("address") or "?"
            if d.get("error"):
                click.echo(f"{name:<16} {'?':<17} unreachable: {d['error']}")
                continue
            fp = d.get("fingerprint") or "NONE"
            mark = "" if d.get("in_sync") else "  MISMATCH"
            click.echo(f"{name:<16} {fp:<17} {d.get('source')}{mark}")
    if status.get("old_key_file"):
        click.echo(f"previous:    {status['old_key_file']} (opens metadata backups made before the rotation)")
    keys = status["keys"]
    if keys:
        click.echo(f"{'KEY ID':>6}  {'VOLUME':<24} {'WRAPPED BY':<16} CREATED")
        for k in keys:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k["created_ns"] / 1e9))
            name = k["volume"] or f"(ino {k['volume_ino']})"
            wrapped = k["master_fingerprint"] + ("" if k["opens"] else " (MISSING)")
            click.echo(f"{k['key_id']:>6}  {name:<24} {wrapped:<16} {created}Z")
    else:
        click.echo("no volume data keys (no volume was ever encrypted)")
    click.echo(f"WARNING: {status['warning']}")


@key.command("rotate")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def key_rotate(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Make a new master key and rewrap every data key with it (no data is rewritten)."""
    cfg = config_for(directory, config_path)
    done: dict[str, Any] = run(call, endpoint_of(cfg), KEYS_ROTATE)
    if as_json:
        click.echo(json.dumps(done, indent=2, sort_keys=True))
        return
    click.echo(
        f"master key rotated: {done['old_fingerprint']} -> {done['master_fingerprint']}, "
        f"{done['rewrapped']} data key(s) rewrapped"
    )
    click.echo(f"the previous key is kept in {done['old_key_file']} until the next rotation")
    click.echo(f"WARNING: {done['warning']}")
