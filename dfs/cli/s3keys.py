"""``dfs s3 key create|list|revoke``: the S3 access keys kept by the metadata service."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.core.endpoints import (
    S3_KEY_CREATE,
    S3_KEY_LIST,
    S3_KEY_REVOKE,
)


@main.group()
def s3() -> None:
    """S3 access keys."""


@s3.group()
def key() -> None:
    """Create, list and revoke S3 access keys (stored in the metadata service)."""


@key.command("create")
@click.option("--description", default="", help="a note to tell keys apart")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def key_create(description: str, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Make a new key pair; the secret is shown only now."""
    cfg = config_for(directory, config_path)
    made: dict[str, str] = run(call, endpoint_of(cfg), S3_KEY_CREATE, description)
    if as_json:
        click.echo(json.dumps(made, indent=2, sort_keys=True))
    else:
        click.echo(f"access key: {made['access_key']}\nsecret key: {made['secret_key']}")


@key.command("list")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def key_list(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The keys made with `dfs s3 key create` (never their secrets)."""
    cfg = config_for(directory, config_path)
    keys: list[dict[str, Any]] = run(call, endpoint_of(cfg), S3_KEY_LIST)
    if as_json:
        click.echo(json.dumps(keys, indent=2, sort_keys=True))
        return
    click.echo(f"{'ACCESS KEY':<22}  {'CREATED':<20}  DESCRIPTION")
    for k in keys:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k["created_ns"] / 1e9))
        click.echo(f"{k['access_key']:<22}  {created:<20}  {k['description']}")


@key.command("revoke")
@click.argument("access_key")
@dir_option
@config_option
def key_revoke(access_key: str, directory: str | None, config_path: str | None) -> None:
    """Revoke a key: requests signed with it fail from now on."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), S3_KEY_REVOKE, access_key)
    click.echo(f"revoked {access_key}")
