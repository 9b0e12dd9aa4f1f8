"""``dfs cluster init`` and ``dfs node cert``: the cluster CA and the certificates it signs;
``dfs cluster keyring``: the keys that seal gossip, listed and rotated on every member."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import click
import trio

from dfs.cli.app import CliError, main, run
from dfs.cli.connect import Endpoint, call, config_for, config_option, dir_option, endpoint_of
from dfs.cli.nodes import node
from dfs.core.endpoints import SYS_GOSSIP_KEYRING, SYS_MEMBERS
from dfs.core.errors import DfsError
from dfs.core.gossip.seal import FINGERPRINT_CHARS, KEY_BYTES, fingerprint, new_key


@main.group()
def cluster() -> None:
    """Cluster-wide set-up."""


@cluster.command("init")
@click.argument("ca_dir", type=click.Path(file_okay=False))
@click.option(
    "--name", "cluster_name", default="dfs", show_default=True, help="cluster name (in the CA subject)"
)
def cluster_init(ca_dir: str, cluster_name: str) -> None:
    """Create the cluster CA (CA_DIR/ca.pem and CA_DIR/ca.key, the key mode 0600)."""
    from dfs.net import certs

    try:
        cert, key = certs.init_cluster(Path(ca_dir).resolve(), cluster_name)
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    click.echo(f"cluster CA created:\n  certificate: {cert}\n  private key: {key} (keep it off the nodes)")


@node.command("cert")
@click.argument("name")
@click.option(
    "--ca-dir", required=True, type=click.Path(exists=True, file_okay=False), help="from `dfs cluster init`"
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="where to write the files"
)
@click.option(
    "--host", "hosts", multiple=True, help="address or DNS name the node is reached at (repeatable)"
)
@click.option("--client", is_flag=True, help="a client certificate (mount, CLI) instead of a node's")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def node_cert(
    name: str, ca_dir: str, out_dir: str, hosts: tuple[str, ...], client: bool, as_json: bool
) -> None:
    """Issue a certificate signed by the cluster CA: NAME.pem, NAME.key (0600) and ca.pem in OUT."""
    from dfs.net import certs

    cert, key, ca = certs.issue_files(
        Path(ca_dir),
        Path(out_dir).resolve(),
        name,
        kind="client" if client else "node",
        hosts=list(hosts),
    )
    info = certs.describe(cert.read_bytes())
    if as_json:
        click.echo(
            json.dumps({"cert_file": str(cert), "key_file": str(key), "ca_file": str(ca), **info}, indent=2)
        )
        return
    click.echo(f"certificate: {cert}\nprivate key: {key}\nCA:          {ca}")
    click.echo(f"names:       {', '.join(info['dns_names'] + info['ip_addresses']) or info['common_name']}")
    click.echo(f"expires:     {info['not_after']}")
    click.echo(f'dfs.conf:    [tls] cert_file = "{cert}", key_file = "{key}", ca_file = "{ca}"')


# -- dfs cluster keyring --------------------------------------------------------------------------

#: How long one member may take to answer (a member that does not is reported, not waited for).
_MEMBER_TIMEOUT_S = 20.0


@cluster.group("keyring")
def keyring() -> None:
    """The keys that seal gossip (AES-256-GCM), on every member at once.

    Every command visits every live member and prints one line per member.  Rotation without
    downtime, each step on every member before the next:

    \b
      dfs cluster keyring install --generate   (prints the new key's fingerprint)
      dfs cluster keyring use NEW_FINGERPRINT
      dfs cluster keyring remove OLD_FINGERPRINT

    A node that joins later needs a copy of a member's <data_dir>/gossip.keyring.
    """


@keyring.command("list")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def keyring_list(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Each member's keys by fingerprint (* the primary, which seals) and its dropped packets."""
    _apply(directory, config_path, as_json, "list", None)


@keyring.command("install")
@click.argument("keyfile", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--generate", is_flag=True, help="install a fresh random key (its fingerprint is printed)")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def keyring_install(
    keyfile: str | None, generate: bool, directory: str | None, config_path: str | None, as_json: bool
) -> None:
    """Add a key on every member (KEYFILE: 32 raw bytes or their base64); members open packets
    sealed with it at once, and seal with it only after `use`."""
    if generate == (keyfile is not None):
        raise CliError("cluster keyring install: give either KEYFILE or --generate")
    key = new_key() if generate else _read_key(Path(str(keyfile)))
    if not as_json:
        click.echo(f"key {fingerprint(key)}" + (" (generated)" if generate else ""))
    _apply(directory, config_path, as_json, "install", key)


@keyring.command("use")
@click.argument("key_fingerprint", metavar="FINGERPRINT")
@click.option("--force", is_flag=True, help="skip the check that every member has the key installed")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def keyring_use(
    key_fingerprint: str, force: bool, directory: str | None, config_path: str | None, as_json: bool
) -> None:
    """Seal with an installed key from now on, on every member."""
    _apply(directory, config_path, as_json, "use", _fingerprint_arg(key_fingerprint), force=force)


@keyring.command("remove")
@click.argument("key_fingerprint", metavar="FINGERPRINT")
@click.option("--force", is_flag=True, help="skip the check that no member still seals with the key")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def keyring_remove(
    key_fingerprint: str, force: bool, directory: str | None, config_path: str | None, as_json: bool
) -> None:
    """Forget a key on every member: packets sealed with it are dropped from then on."""
    _apply(directory, config_path, as_json, "remove", _fingerprint_arg(key_fingerprint), force=force)


def _read_key(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cluster keyring install: cannot read {path}: {exc.strerror}") from None
    if len(raw) == KEY_BYTES:
        return raw
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise CliError(f"cluster keyring install: {path} holds neither {KEY_BYTES} raw bytes nor base64")
    return key


def _fingerprint_arg(text: str) -> str:
    fp = text.strip().lower()
    if len(fp) < FINGERPRINT_CHARS or any(c not in "0123456789abcdef" for c in fp):
        raise CliError(f"not a key fingerprint: {text!r} (at least {FINGERPRINT_CHARS} hex characters)")
    return fp


def _apply(
    directory: str | None,
    config_path: str | None,
    as_json: bool,
    op: str,
    key: bytes | str | None,
    *,
    force: bool = False,
) -> None:
    """Run ``op`` on every member; one line each; fail if any live member did not take it."""
    cfg = config_for(directory, config_path)
    rows: list[dict[str, Any]] = run(_on_every_member, endpoint_of(cfg), op, key, force)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
    else:
        for row in rows:
            click.echo(_member_line(row))
    failed = [r["node_id"] for r in rows if r["outcome"] == "failed"]
    if failed:
        raise CliError(
            f"cluster keyring {op}: failed on {', '.join(failed)} (fix, then run it again: it is idempotent)"
        )


def _member_line(row: dict[str, Any]) -> str:
    head = f"{row['node_id']:<16} {row['outcome']:<8}"
    if row["outcome"] != "ok":
        return f"{head} {row['error']}"
    keys = " ".join(k + ("*" if k == row["primary"] else "") for k in row["keys"])
    dropped = " ".join(f"{k}={v}" for k, v in sorted(row.get("dropped", {}).items()))
    return f"{head} keys {keys}  dropped {dropped}"


async def _on_every_member(
    endpoint: Endpoint, op: str, key: bytes | str | None, force: bool
) -> list[dict[str, Any]]:
    """``sys.gossip_keyring(op, key)`` on every live gossip member, concurrently.

    Before ``use`` and ``remove``, unless ``force``: every live member must answer, have the
    key (``use``), and no longer seal with it (``remove``) - else members would drop each
    other's packets."""
    members = await call(endpoint, SYS_MEMBERS)
    rows: dict[str, dict[str, Any]] = {}
    targets: dict[str, Endpoint] = {}
    for m in members:
        node_id = str(m["node_id"])
        if m.get("status") not in ("alive", "suspect"):
            rows[node_id] = {
                "node_id": node_id,
                "outcome": "skipped",
                "error": f"member is {m.get('status')}",
            }
        elif m.get("self"):
            targets[node_id] = endpoint
        elif m.get("rpc"):
            targets[node_id] = endpoint.peer(str(m["rpc"]))
        else:
            rows[node_id] = {"node_id": node_id, "outcome": "failed", "error": "advertises no RPC address"}

    async def ask(node_id: str, target: Endpoint, op: str, key: bytes | str | None) -> None:
        try:
            with trio.fail_after(_MEMBER_TIMEOUT_S + 5):
                answer = await call(target, SYS_GOSSIP_KEYRING, op, key, timeout_s=_MEMBER_TIMEOUT_S)
            rows[node_id] = {"node_id": node_id, "outcome": "ok", **answer}
        except DfsError as exc:
            rows[node_id] = {"node_id": node_id, "outcome": "failed", "error": " ".join(exc.message.split())}
        except trio.TooSlowError:
            rows[node_id] = {"node_id": node_id, "outcome": "failed", "error": "did not answer in time"}

    async def everywhere(op: str, key: bytes | str | None, only: dict[str, Endpoint]) -> None:
        async with trio.open_nursery() as nursery:
            for node_id, target in only.items():
                nursery.start_soon(ask, node_id, target, op, key)

    if op in ("use", "remove") and not force:
        assert isinstance(key, str)
        await everywhere("list", None, targets)
        problems = _preflight(rows, targets, op, key)
        if problems:
            why = "; ".join(problems)
            raise CliError(f"cluster keyring {op}: nothing changed: {why} (--force skips this check)")
        if op == "remove":
            # Members that no longer have the key are done already (a re-run after a partial
            # failure): their answers to list stand.
            short = key[:FINGERPRINT_CHARS]
            targets = {n: t for n, t in targets.items() if short in rows[n]["keys"]}
    await everywhere(op, None if op == "list" else key, targets)
    return [rows[n] for n in sorted(rows)]


def _preflight(rows: dict[str, dict[str, Any]], targets: dict[str, Endpoint], op: str, fp: str) -> list[str]:
    """Why ``op`` on the key ``fp`` would split the cluster, from every member's ``list``."""
    problems = []
    short = fp[:FINGERPRINT_CHARS]
    for node_id in sorted(targets):
        row = rows[node_id]
        if row["outcome"] != "ok":
            problems.append(f"{node_id}: {row['error']}")
        elif op == "use" and short not in row["keys"]:
            problems.append(f"{node_id} does not have key {short}: install it everywhere first")
        elif op == "remove" and row["primary"] == short:
            problems.append(f"{node_id} still seals with {short}: use another key everywhere first")
    return problems
