"""``dfs bench``, ``dfs s3 bench`` and ``dfs cluster bench``: the command side of
:mod:`dfs.bench` (each benchmark is imported only when its command runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dfs.cli.app import CliError, main
from dfs.cli.cluster import cluster
from dfs.cli.connect import config_for, config_option, dir_option
from dfs.cli.s3keys import s3


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--local",
    "local_dir",
    type=click.Path(file_okay=False),
    help="local directory to compare with (default: a temp dir under /var/tmp)",
)
@click.option("--size-mb", default=256, show_default=True, help="large-file size in MiB")
@click.option("--files", "n_files", default=2000, show_default=True, help="number of small files")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def bench(path: str, local_dir: str | None, size_mb: int, n_files: int, as_json: bool) -> None:
    """Large-file, small-file and metadata throughput in PATH versus a local directory."""
    from dfs.bench import mount as bench_mod

    results = bench_mod.run(
        Path(path), Path(local_dir) if local_dir else None, size_mb=size_mb, n_files=n_files
    )
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(bench_mod.table(results))


@s3.command("bench")
@dir_option
@config_option
@click.option("--endpoint", help="S3 endpoint URL (default: the daemon's [s3] listen address)")
@click.option("--clients", default=16, show_default=True, help="concurrent clients")
@click.option("--objects", "n_small", default=2000, show_default=True, help="number of 4 KiB objects")
@click.option("--large-mb", default=64, show_default=True, help="size of each client's large object")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def s3_bench(
    directory: str | None,
    config_path: str | None,
    endpoint: str | None,
    clients: int,
    n_small: int,
    large_mb: int,
    as_json: bool,
) -> None:
    """PUT/GET/HEAD/DELETE ops/s for 4 KiB objects and MB/s for large ones, many clients at once."""
    from dfs.bench import s3 as bench_s3

    cfg = config_for(directory, config_path)
    try:
        root = json.loads(cfg.s3_root_path.read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"cannot read the root S3 key {cfg.s3_root_path}: {exc}") from None
    url = endpoint or f"{'https' if cfg.s3.https else 'http'}://{cfg.s3.listen}"
    show = None if as_json else (lambda name: click.echo(f"  {name}...", err=True))
    try:
        results = bench_s3.run(
            url,
            root["access_key"],
            root["secret_key"],
            clients=clients,
            n_small=n_small,
            large_mb=large_mb,
            progress=show,
        )
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(bench_s3.table(results, clients=clients, large_mb=large_mb))


@cluster.command("bench")
@click.option(
    "--nodes", "n_nodes", default=4, show_default=True, type=click.IntRange(3, 32), help="daemons to start"
)
@click.option(
    "--size-mb", default=256, show_default=True, type=click.IntRange(1), help="file size per R, in MiB"
)
@click.option(
    "--repair-mb", default=256, show_default=True, type=click.IntRange(1), help="R=2 data when a node dies"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--keep", "keep_dir", type=click.Path(file_okay=False), help="work in DIR (empty) and keep it afterwards"
)
def cluster_bench(n_nodes: int, size_mb: int, repair_mb: int, as_json: bool, keep_dir: str | None) -> None:
    """Write/read MB/s at R=1, 2, 3 and the time to repair a lost node, on a throwaway local cluster.

    Starts the daemons on 127.0.0.1, mounts through n2, compares with a local
    directory on the same disk, then kills the last node and times its repair.
    Everything is stopped and removed at the end (unless --keep).
    """
    from dfs.bench import cluster as bench_cluster

    show = None if as_json else (lambda msg: click.echo(f"  {msg}...", err=True))
    results = bench_cluster.run(
        n_nodes=n_nodes,
        size_mb=size_mb,
        repair_mb=repair_mb,
        keep=Path(keep_dir) if keep_dir else None,
        progress=show,
    )
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(bench_cluster.table(results))
