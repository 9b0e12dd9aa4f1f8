"""``dfs meta backup|backups|dump|load|restore``: metadata backups, dumps and restores.

A running cluster makes backups itself (``[meta] backup_interval_s``): each is a dump stored as
chunks with R copies in the cluster, and a manifest (``<data_dir>/backups/<id>.json``) on every
node naming them (daemon/service/backups.py).  ``dfs meta backup`` makes one now, ``dfs meta
backups`` lists what a node holds and ``dfs meta dump`` writes one to a file.  ``load`` and
``restore`` rebuild ``meta.db`` on a host whose daemon is stopped (or, with ``[meta] engine =
"postgresql"``, fill the empty database ``[meta] dsn`` names): from a dump file, from a backup
whose chunks are all on this host (a single host, or a node that happens to hold them), or from a
backup fetched from any surviving daemon (``--from``), which gathers the chunks from wherever they
are.  The loading itself is dfsd's (``dfsd --load-meta``), which owns the metadata format; this
command finds and fetches or reassembles the backup and hands it over.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import click

from dfs.cli import progress
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
from dfs.cli.output import emit_json, json_option
from dfs.core import backup_format, codec
from dfs.core.auth import CallerClass
from dfs.core.config import Config
from dfs.core.endpoints import SYS_BACKUP_LIST, SYS_BACKUP_NOW, SYS_BACKUP_READ
from dfs.core.errors import EX_CONFIG, EX_DATAERR, EX_NOINPUT, DfsError
from dfs.files import write_private
from dfs.net import credentials
from dfs.net.certs import client_context_for

#: What one backup read asks for (the daemon's limit is 8 MiB; it answers at most to the end of
#: the chunk the offset is in).
_PIECE_BYTES = 4 << 20


@main.group()
def meta() -> None:
    """Metadata backups, dumps and restores."""


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


@meta.command("backup")
@dir_option
@config_option
@json_option
def backup_now(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Make a metadata backup now: stored as chunks in the cluster, listed by every node."""
    cfg = config_for(directory, config_path)
    made = run(_backup_now, endpoint_of(cfg), as_json)
    if as_json:
        emit_json(made)
        return
    info = made["backup"]
    stored = f" in {len(info['chunks'])} chunk(s) of {info['replicas']} cop(ies)" if "chunks" in info else ""
    click.echo(f"backup {info['id']}: {info['rows']} rows, {info['dump_bytes']} bytes{stored}")
    for node, outcome in sorted(made["copies"].items()):
        click.echo(f"  {node}: {outcome}")


@meta.command("backups")
@dir_option
@config_option
@json_option
def backups(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The metadata backups this node holds, newest first."""
    cfg = config_for(directory, config_path)
    rows: list[dict[str, Any]] = run(call, endpoint_of(cfg), SYS_BACKUP_LIST)
    if as_json:
        emit_json(rows)
        return
    click.echo(f"{'ID':<20}  {'CREATED (UTC)':<19}  {'ROWS':>9}  {'BYTES':>12}  {'COPIES':>6}  ORIGIN")
    for r in rows:
        # COPIES: of each chunk; "file": a backup made before backups were chunks, a file per node.
        copies = r["replicas"] if "chunks" in r else "file"
        size = f"{r['rows']:>9}  {r['dump_bytes']:>12}  {copies:>6}"
        click.echo(f"{r['id']:<20}  {_when(r['created_ns']):<19}  {size}  {r['origin']}")


async def _backup_now(endpoint: Endpoint, as_json: bool = False) -> dict[str, Any]:
    """A new backup (one long call that reports no progress: a spinner and the elapsed time)."""
    async with progress.ticking(progress.reporter("making a backup", None, as_json=as_json)):
        made: dict[str, Any] = await call(endpoint, SYS_BACKUP_NOW, timeout_s=3600)
    return made


async def _download(endpoint: Endpoint, info: dict[str, Any], out: BinaryIO, as_json: bool = False) -> None:
    """Copy backup ``info`` from ``endpoint``'s node to ``out``, checking its SHA-256; its
    bytes against the dump's size as progress on stderr."""
    digest = hashlib.sha256()
    bar = progress.reporter("downloading the backup", info["dump_bytes"], unit="B", as_json=as_json)
    async with endpoint.client(timeout_s=600) as conn:
        with bar:
            offset = 0
            while offset < info["dump_bytes"]:
                piece: bytes = await SYS_BACKUP_READ.call(conn, info["id"], offset, _PIECE_BYTES)
                if not piece:
                    raise CliError(f"backup {info['id']} ended early at {offset} bytes")
                digest.update(piece)
                out.write(piece)
                offset += len(piece)
                bar.advance(len(piece))
    if digest.hexdigest() != info["file_sha256"]:
        raise CliError(f"backup {info['id']} arrived damaged (checksum differs)")


@meta.command("dump")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="file to write (default: stdout)")
@dir_option
@config_option
@click.option(
    "--json", "as_json", is_flag=True, help="the summary as JSON (on stderr when the dump is on stdout)"
)
def dump(output: str | None, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Write a consistent, portable dump of all metadata (a fresh backup) to a file."""
    cfg = config_for(directory, config_path)
    if output is None and sys.stdout.isatty():
        raise CliError("the dump is binary: name a file with --output, or redirect stdout")
    endpoint = endpoint_of(cfg)
    info = run(_backup_now, endpoint, as_json)["backup"]
    # The node this command talks to holds the backup: its own or the copy the primary sent.
    if output is None:
        run(_download, endpoint, info, sys.stdout.buffer, as_json)
        sys.stdout.buffer.flush()
    else:
        path = Path(output)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            run(_download, endpoint, info, f, as_json)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
    if as_json:
        emit_json(
            {"backup": info["id"], "rows": info["rows"], "dump_bytes": info["dump_bytes"]}, err=output is None
        )
    else:
        click.echo(f"dumped {info['rows']} rows ({info['dump_bytes']} bytes), backup {info['id']}", err=True)


def _load(
    config_file: Path | None, dump_path: Path, info: dict[str, Any] | None, as_json: bool = False
) -> None:
    """Have dfsd load ``dump_path`` into this host's (absent) meta.db, or its (empty) PostgreSQL database."""
    argv = [_dfsd(), "--load-meta", str(dump_path)]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    if info is not None:
        # Without the chunk list: dfsd needs the id and the sealed cluster key, and one argument
        # must stay under the kernel's 128 KiB limit (a large dump has thousands of chunks).
        argv += ["--backup-info", json.dumps({k: v for k, v in info.items() if k != "chunks"})]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise CliError(res.stderr.strip().removeprefix("dfsd: ") or "dfsd --load-meta failed", res.returncode)
    said = res.stdout.strip()
    if as_json:
        emit_json({"backup": None if info is None else info["id"], "loaded": str(dump_path), "dfsd": said})
    else:
        click.echo(said)


def _dfsd() -> str:
    here = Path(sys.executable).parent / "dfsd"
    return str(here) if here.exists() else "dfsd"


@meta.command("load")
@click.argument("dump_file", type=click.Path(exists=True, dir_okay=False))
@dir_option
@config_option
@json_option
def load(dump_file: str, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Rebuild this host's metadata from a dump (dfsd stopped, no meta.db yet; with [meta] engine
    = "postgresql", into the empty database of [meta] dsn): e.g. moving a set-up to another host
    or from SQLite to PostgreSQL."""
    _load(config_file_for(directory, config_path), Path(dump_file).resolve(), None, as_json)


@meta.command("restore")
@click.argument("backup_id", required=False)
@click.option("--latest", is_flag=True, help="the newest backup (the default when no ID is given)")
@click.option("--from", "source", metavar="HOST:PORT", help="fetch the backup from this daemon's node")
@dir_option
@config_option
@json_option
def restore(
    backup_id: str | None,
    latest: bool,
    source: str | None,
    directory: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Rebuild this host's meta.db (or, with [meta] engine = "postgresql", fill the empty database
    of [meta] dsn) from a backup, dfsd stopped: one listed here in <data_dir>/backups whose
    chunks this host holds, or fetched from any surviving daemon with --from."""
    if backup_id and latest:
        raise CliError("name a backup ID or --latest, not both", 2)
    cfg = config_for(directory, config_path)
    config_file = config_file_for(directory, config_path)
    local = cfg.data_path / "backups"
    if source:
        info, dump_path = _fetch(cfg, source, backup_id, local, as_json)
    else:
        info = _pick(_local_backups(local), backup_id, str(local))
        dump_path = _part_path(local, info) if "chunks" in info else local / f"{info['id']}.dfsmeta"
    try:
        if "chunks" in info and not source:
            with _private_file(dump_path) as f:
                assemble_backup(info, cfg.data_path / "chunks", _chunk_key(cfg), f)
        _load(config_file, dump_path, info, as_json)
    finally:
        if "chunks" in info:  # the backup stays in the cluster's chunks: no dump file is kept
            dump_path.unlink(missing_ok=True)


def _local_backups(directory: Path) -> list[dict[str, Any]]:
    """The backups listed here, newest first: manifests naming their chunks, and older backups'
    JSON beside their dump file."""
    out = []
    for path in sorted(directory.glob("*.json"), reverse=True):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        backup_id = path.name.removesuffix(".json")
        if not _is_backup_id(backup_id) or not isinstance(info, dict) or info.get("id") != backup_id:
            continue
        if isinstance(info.get("chunks"), list) or (directory / f"{info['id']}.dfsmeta").exists():
            out.append(info)
    return out


def _part_path(local: Path, info: dict[str, Any]) -> Path:
    """Where a dump is put together before dfsd loads it (a crash's leftover: pruned by the daemon)."""
    return local / f"{info['id']}.dfsmeta.part"


def _private_file(path: Path) -> BinaryIO:
    """``path`` opened for writing, mode 0600 from the start (a dump holds sealed secrets)."""
    return open(path, "wb", opener=lambda name, flags: os.open(name, flags, 0o600))


def _is_backup_id(value: Any) -> bool:
    try:
        backup_format.check_id(value)
    except DfsError:
        return False
    return True


def _chunk_key(cfg: Config) -> bytes:
    """The key of backup chunk ids, from this host's node credential (the cluster secret)."""
    node_file = cfg.data_path / credentials.FILE_NAMES[CallerClass.NODE]
    if not node_file.exists():
        raise CliError(
            f"{node_file} is missing: copy node.credential from any member of the cluster first", EX_CONFIG
        )
    secret = credentials.load(node_file).secret
    if secret is None:
        raise CliError(f"{node_file} holds no cluster secret", EX_CONFIG)
    return backup_format.chunk_key(secret)


def assemble_backup(info: dict[str, Any], chunks_dir: Path, chunk_key: bytes, out: BinaryIO) -> None:
    """Write chunked backup ``info``'s dump to ``out`` from the chunk files under ``chunks_dir``
    (a stopped daemon's store, only read), each checked against its id, the whole against the
    backup's SHA-256.  A chunk not here (or bad here) ends it with one line naming --from: a
    running node fetches the pieces from wherever they are."""
    backup_id, ids = info["id"], info["chunks"]
    instead = f"restore from a running node instead: dfs meta restore --from HOST:PORT {backup_id}"
    digest = hashlib.sha256()
    for index, hexid in enumerate(ids):
        if not backup_format.is_chunk_hex(hexid):  # it names a file
            raise CliError(f"backup {backup_id}: its manifest is damaged (chunk {index + 1})", EX_DATAERR)
        what = f"backup {backup_id}: chunk {index + 1} of {len(ids)} ({hexid[:16]})"
        try:
            blob = (chunks_dir / codec.chunk_relpath(hexid)).read_bytes()
        except FileNotFoundError:
            raise CliError(f"{what} is not on this host; {instead}", EX_NOINPUT) from None
        except OSError as exc:
            raise CliError(f"{what} cannot be read here ({exc.strerror}); {instead}") from None
        try:
            plain = backup_format.open_piece(
                chunk_key, bytes.fromhex(hexid), blob, backup_format.piece_bytes_of(info, index)
            )
        except DfsError as exc:
            raise CliError(f"{what} is damaged on this host ({exc.message}); {instead}", EX_DATAERR) from None
        digest.update(plain)
        out.write(plain)
    if digest.hexdigest() != info["file_sha256"]:
        raise CliError(
            f"backup {backup_id}: the dump rebuilt here differs from its checksum; {instead}", EX_DATAERR
        )


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


def _fetch(
    cfg: Config, source: str, backup_id: str | None, local: Path, as_json: bool
) -> tuple[dict[str, Any], Path]:
    """Fetch a backup from ``source``: its JSON into ``local`` (this host's backups directory,
    which lists it as every node does) and its dump into a file; (the JSON, the dump file).  The
    dump of a chunked backup is loaded and then deleted (its chunks stay in the cluster); an older
    backup's is kept beside its JSON, as that node keeps it."""
    # This host's own cluster secret (node.credential) proves it is a node of the cluster.
    credential = credentials.find(cfg, (CallerClass.NODE, CallerClass.ADMIN))
    tls = client_context_for(cfg)
    endpoint = Endpoint(source, tls, tls, credential)
    listed: list[dict[str, Any]] = run(call, endpoint, SYS_BACKUP_LIST)
    found = [i for i in listed if _is_backup_id(i.get("id"))]  # an id names files here
    info = _pick(found, backup_id, source)
    local.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = _part_path(local, info)
    try:
        with _private_file(part) as f:
            run(_download, endpoint, info, f, as_json)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    dump_path = part if "chunks" in info else part.rename(local / f"{info['id']}.dfsmeta")
    write_private(local / f"{info['id']}.json", json.dumps(info, sort_keys=True).encode())
    # Every node holds every manifest: with them this host's fsck and orphan sweep know the
    # chunks of the other backups too (older backups' dumps are files on that node: not listed).
    for other in found:
        if "chunks" in other and other["id"] != info["id"]:
            write_private(local / f"{other['id']}.json", json.dumps(other, sort_keys=True).encode())
    return info, dump_path
