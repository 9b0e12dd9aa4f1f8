"""``dfs meta backup|backups|dump|load|restore``: metadata backups, dumps and restores.

A running cluster makes backups itself (``[meta] backup_interval_s``) and keeps them on every node;
``dfs meta backup`` makes one now, ``dfs meta backups`` lists what a node holds and ``dfs meta
dump`` writes one to a file.  ``load`` and ``restore`` rebuild ``meta.db`` on a host whose daemon
is stopped (or, with ``[meta] engine = "postgresql"``, fill the empty database ``[meta] dsn``
names): from a dump file, or from a backup in ``<data_dir>/backups`` or fetched from any
surviving daemon (``--from``).  The loading itself is dfsd's (``dfsd --load-meta``), which owns
the metadata format; this command finds and fetches the backup and hands it over.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import click

from dfs.cli.app import CliError, main, run
from dfs.cli.connect import (
    Endpoint,
    call,
    config_file_for,
    config_for,
    config_option,
    dir_option,
    endpoint_of,
)
from dfs.core.auth import CallerClass
from dfs.core.config import Config
from dfs.core.endpoints import SYS_BACKUP_LIST, SYS_BACKUP_NOW, SYS_BACKUP_READ
from dfs.core.errors import EX_NOINPUT
from dfs.net import credentials
from dfs.net.certs import client_context_for

#: What one backup read asks for (the daemon's limit is 8 MiB).
_PIECE_BYTES = 4 << 20


@main.group()
def meta() -> None:
    """Metadata backups, dumps and restores."""


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


@meta.command("backup")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def backup_now(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Make a metadata backup now and copy it to every node."""
    cfg = config_for(directory, config_path)
    made: dict[str, Any] = run(functools.partial(call, timeout_s=3600), endpoint_of(cfg), SYS_BACKUP_NOW)
    if as_json:
        click.echo(json.dumps(made, indent=2, sort_keys=True))
        return
    info = made["backup"]
    click.echo(f"backup {info['id']}: {info['rows']} rows, {info['dump_bytes']} bytes")
    for node, outcome in sorted(made["copies"].items()):
        click.echo(f"  {node}: {outcome}")


@meta.command("backups")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def backups(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The metadata backups this node holds, newest first."""
    cfg = config_for(directory, config_path)
    rows: list[dict[str, Any]] = run(call, endpoint_of(cfg), SYS_BACKUP_LIST)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    click.echo(f"{'ID':<20}  {'CREATED (UTC)':<19}  {'ROWS':>9}  {'BYTES':>12}  ORIGIN")
    for r in rows:
        size = f"{r['rows']:>9}  {r['dump_bytes']:>12}"
        click.echo(f"{r['id']:<20}  {_when(r['created_ns']):<19}  {size}  {r['origin']}")


async def _download(endpoint: Endpoint, info: dict[str, Any], out: BinaryIO) -> None:
    """Copy backup ``info`` from ``endpoint``'s node to ``out``, checking its SHA-256."""
    digest = hashlib.sha256()
    async with endpoint.client(timeout_s=600) as conn:
        offset = 0
        while offset < info["dump_bytes"]:
            piece: bytes = await SYS_BACKUP_READ.call(conn, info["id"], offset, _PIECE_BYTES)
            if not piece:
                raise CliError(f"backup {info['id']} ended early at {offset} bytes")
            digest.update(piece)
            out.write(piece)
            offset += len(piece)
    if digest.hexdigest() != info["file_sha256"]:
        raise CliError(f"backup {info['id']} arrived damaged (checksum differs)")


@meta.command("dump")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="file to write (default: stdout)")
@dir_option
@config_option
def dump(output: str | None, directory: str | None, config_path: str | None) -> None:
    """Write a consistent, portable dump of all metadata (a fresh backup) to a file."""
    cfg = config_for(directory, config_path)
    if output is None and sys.stdout.isatty():
        raise CliError("the dump is binary: name a file with --output, or redirect stdout")
    endpoint = endpoint_of(cfg)
    made: dict[str, Any] = run(functools.partial(call, timeout_s=3600), endpoint, SYS_BACKUP_NOW)
    info = made["backup"]
    # The node this command talks to holds the backup: its own or the copy the primary sent.
    if output is None:
        run(_download, endpoint, info, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        path = Path(output)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            run(_download, endpoint, info, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
    click.echo(f"dumped {info['rows']} rows ({info['dump_bytes']} bytes), backup {info['id']}", err=True)


def _load(config_file: Path | None, dump_path: Path, info: dict[str, Any] | None) -> None:
    """Have dfsd load ``dump_path`` into this host's (absent) meta.db, or its (empty) PostgreSQL database."""
    argv = [_dfsd(), "--load-meta", str(dump_path)]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    if info is not None:
        argv += ["--backup-info", json.dumps(info)]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise CliError(res.stderr.strip().removeprefix("dfsd: ") or "dfsd --load-meta failed", res.returncode)
    click.echo(res.stdout.strip())


def _dfsd() -> str:
    here = Path(sys.executable).parent / "dfsd"
    return str(here) if here.exists() else "dfsd"


@meta.command("load")
@click.argument("dump_file", type=click.Path(exists=True, dir_okay=False))
@dir_option
@config_option
def load(dump_file: str, directory: str | None, config_path: str | None) -> None:
    """Rebuild this host's metadata from a dump (dfsd stopped, no meta.db yet; with [meta] engine
    = "postgresql", into the empty database of [meta] dsn): e.g. moving a set-up to another host
    or from SQLite to PostgreSQL."""
    _load(config_file_for(directory, config_path), Path(dump_file).resolve(), None)


@meta.command("restore")
@click.argument("backup_id", required=False)
@click.option("--latest", is_flag=True, help="the newest backup (the default when no ID is given)")
@click.option("--from", "source", metavar="HOST:PORT", help="fetch the backup from this daemon's node")
@dir_option
@config_option
def restore(
    backup_id: str | None, latest: bool, source: str | None, directory: str | None, config_path: str | None
) -> None:
    """Rebuild this host's meta.db (or, with [meta] engine = "postgresql", fill the empty database
    of [meta] dsn) from a backup, dfsd stopped: one kept here in <data_dir>/backups, or fetched
    from any surviving daemon with --from."""
    if backup_id and latest:
        raise CliError("name a backup ID or --latest, not both", 2)
    cfg = config_for(directory, config_path)
    local = cfg.data_path / "backups"
    if source:
        info = _fetch(cfg, source, backup_id, local)
    else:
        info = _pick(_local_backups(local), backup_id, str(local))
    _load(config_file_for(directory, config_path), local / f"{info['id']}.dfsmeta", info)


def _local_backups(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("*.json"), reverse=True):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (directory / f"{info.get('id')}.dfsmeta").exists():
            out.append(info)
    return out


def _pick(found: list[dict[str, Any]], backup_id: str | None, where: str) -> dict[str, Any]:
    if not found:
        raise CliError(f"no metadata backups in {where}", EX_NOINPUT)
    if backup_id is None:
        return found[0]
    for info in found:
        if info["id"] == backup_id:
            return info
    raise CliError(
        f"no backup {backup_id} in {where} (have: {', '.join(i['id'] for i in found[:5])})", EX_NOINPUT
    )


def _fetch(cfg: Config, source: str, backup_id: str | None, local: Path) -> dict[str, Any]:
    """Copy a backup from ``source`` into ``local`` (this host's backups directory)."""
    # This host's own cluster secret (node.credential) proves it is a node of the cluster.
    credential = credentials.find(cfg, (CallerClass.NODE, CallerClass.ADMIN))
    tls = client_context_for(cfg)
    endpoint = Endpoint(source, tls, tls, credential)
    found: list[dict[str, Any]] = run(call, endpoint, SYS_BACKUP_LIST)
    info = _pick(found, backup_id, source)
    local.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = local / f"{info['id']}.dfsmeta"
    part = target.with_name(target.name + ".part")
    with part.open("wb") as f:
        run(_download, endpoint, info, f)
        f.flush()
        os.fsync(f.fileno())
    part.rename(target)
    (local / f"{info['id']}.json").write_text(json.dumps(info, sort_keys=True))
    return info
