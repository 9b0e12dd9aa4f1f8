"""``dfs s3 key create|list|revoke|grant|revoke-grant``: the S3 access keys kept by the metadata
service and their grants on buckets.

Grants are written ``BUCKET:PERM`` with PERM one of ``r`` (read), ``w`` (write),
``rw`` (both) or ``owner`` (everything, including deleting the bucket); see
dfs/core/s3grants.py.  A key owns the buckets it creates."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.core.endpoints import (
    S3_KEY_CREATE,
    S3_KEY_GRANT,
    S3_KEY_LIST,
    S3_KEY_REVOKE,
    S3_KEY_REVOKE_GRANT,
)
from dfs.core.s3grants import parse_allow, perm_name


@main.group()
def s3() -> None:
    """S3 access keys."""


@s3.group()
def key() -> None:
    """Create, list and revoke S3 access keys (stored in the metadata service)."""


def _allow(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[list[str]]:
    out: list[list[str]] = []
    for spec in values:
        try:
            bucket, perm = parse_allow(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        out.append([bucket, perm_name(perm)])
    return out


def _grants_text(grants: dict[str, str]) -> str:
    return ", ".join(f"{bucket}:{perm}" for bucket, perm in sorted(grants.items())) or "-"


@key.command("create")
@click.option("--description", default="", help="a note to tell keys apart")
@click.option(
    "--allow",
    "allow",
    multiple=True,
    callback=_allow,
    metavar="BUCKET:PERM",
    help="grant PERM (r, w, rw or owner) on an existing BUCKET; repeatable",
)
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def key_create(
    description: str, allow: list[list[str]], directory: str | None, config_path: str | None, as_json: bool
) -> None:
    """Make a new key pair; the secret is shown only now.

    The key owns the buckets it creates; --allow grants it access to others."""
    cfg = config_for(directory, config_path)
    args: tuple[Any, ...] = (description, allow) if allow else (description,)
    made: dict[str, Any] = run(call, endpoint_of(cfg), S3_KEY_CREATE, *args)
    if as_json:
        click.echo(json.dumps(made, indent=2, sort_keys=True))
    else:
        click.echo(f"access key: {made['access_key']}\nsecret key: {made['secret_key']}")
        if made.get("grants"):
            click.echo(f"grants:     {_grants_text(made['grants'])}")


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
    click.echo(f"{'ACCESS KEY':<22}  {'CREATED':<20}  {'GRANTS':<30}  DESCRIPTION")
    for k in keys:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k["created_ns"] / 1e9))
        grants = _grants_text(k.get("grants") or {})
        click.echo(f"{k['access_key']:<22}  {created:<20}  {grants:<30}  {k['description']}")


@key.command("revoke")
@click.argument("access_key")
@dir_option
@config_option
def key_revoke(access_key: str, directory: str | None, config_path: str | None) -> None:
    """Revoke a key: requests signed with it fail from now on."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), S3_KEY_REVOKE, access_key)
    click.echo(f"revoked {access_key}")


@key.command("grant")
@click.argument("access_key")
@click.argument("grant", metavar="BUCKET:PERM")
@dir_option
@config_option
def key_grant(access_key: str, grant: str, directory: str | None, config_path: str | None) -> None:
    """Let ACCESS_KEY use BUCKET: PERM is r (read), w (write), rw or owner.

    Replaces the key's grant on that bucket; takes effect on the next request."""
    try:
        bucket, perm = parse_allow(grant)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="BUCKET:PERM") from None
    cfg = config_for(directory, config_path)
    grants: dict[str, str] = run(call, endpoint_of(cfg), S3_KEY_GRANT, access_key, bucket, perm_name(perm))
    click.echo(f"{access_key}: {_grants_text(grants)}")


@key.command("revoke-grant")
@click.argument("access_key")
@click.argument("bucket")
@dir_option
@config_option
def key_revoke_grant(access_key: str, bucket: str, directory: str | None, config_path: str | None) -> None:
    """Take back the grant ACCESS_KEY holds on BUCKET (not ownership of a bucket it created)."""
    cfg = config_for(directory, config_path)
    grants: dict[str, str] = run(call, endpoint_of(cfg), S3_KEY_REVOKE_GRANT, access_key, bucket)
    click.echo(f"{access_key}: {_grants_text(grants)}")
