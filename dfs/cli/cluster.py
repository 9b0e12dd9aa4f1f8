"""``dfs cluster init`` and ``dfs node cert``: the cluster CA and the certificates it signs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dfs.cli.app import CliError, main
from dfs.cli.nodes import node


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
