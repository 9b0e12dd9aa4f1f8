"""``dfs admin token create|list|revoke``: scoped tokens for the admin REST API.

Each token has a scope: ``read`` (GETs of health, metrics, nodes, volumes and the
like) or ``admin`` (everything).  Metadata keeps only a hash of each token, so
``create`` prints it once; ``list`` never shows it.  The first-run token in
``<data_dir>/admin.token`` is not listed: it always has scope ``admin``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.core.endpoints import ADMIN_TOKEN_CREATE, ADMIN_TOKEN_LIST, ADMIN_TOKEN_REVOKE


@main.group()
def admin() -> None:
    """The admin REST API."""


@admin.group()
def token() -> None:
    """Create, list and revoke scoped admin API tokens (stored hashed in the metadata service)."""


@token.command("create")
@click.option(
    "--scope",
    type=click.Choice(["read", "admin"]),
    required=True,
    help="read: GET health, metrics, nodes, volumes...; admin: everything",
)
@click.option("--name", default="", help="a note to tell tokens apart (at most 64 characters)")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def token_create(
    scope: str, name: str, directory: str | None, config_path: str | None, as_json: bool
) -> None:
    """Make a token; it is shown only now (use it as `Authorization: Bearer TOKEN`)."""
    cfg = config_for(directory, config_path)
    made: dict[str, Any] = run(call, endpoint_of(cfg), ADMIN_TOKEN_CREATE, scope, name)
    if as_json:
        click.echo(json.dumps(made, indent=2, sort_keys=True))
    else:
        click.echo(f"id:    {made['id']}\nscope: {made['scope']}\ntoken: {made['token']}")


@token.command("list")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def token_list(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The tokens made with `dfs admin token create` (never the tokens themselves)."""
    cfg = config_for(directory, config_path)
    rows: list[dict[str, Any]] = run(call, endpoint_of(cfg), ADMIN_TOKEN_LIST)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    click.echo(f"{'ID':<12}  {'SCOPE':<5}  {'CREATED':<19}  NAME")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created_ns"] / 1e9))
        click.echo(f"{row['id']:<12}  {row['scope']:<5}  {created:<19}  {row['name']}")


@token.command("revoke")
@click.argument("token_id")
@dir_option
@config_option
def token_revoke(token_id: str, directory: str | None, config_path: str | None) -> None:
    """Revoke a token by its id: requests bearing it answer 401 from now on."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), ADMIN_TOKEN_REVOKE, token_id)
    click.echo(f"revoked {token_id}")
