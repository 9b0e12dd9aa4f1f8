"""The ``dfs`` command: set-up, status, fsck and benchmarks.

Exit status is 0 on success and non-zero with one clear line on stderr
otherwise; commands that report take ``--json`` for scripts.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import click
import trio

from dfs import config as config_mod
from dfs.certs import client_context_for
from dfs.config import Config
from dfs.errors import DfsError
from dfs.rpc import open_client

T = TypeVar("T")
_UP_TIMEOUT_S = 30.0


class CliError(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"dfs: {self.message}", err=True)


def _run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    try:
        return trio.run(fn, *args)
    except DfsError as exc:
        raise CliError(exc.message) from None


class Endpoint(NamedTuple):
    """Where to reach a daemon, and the TLS context for it (None: plain, or a unix socket)."""

    address: str
    ssl_context: ssl.SSLContext | None = None


def _address(cfg: Config) -> Endpoint:
    sock = cfg.unix_socket_path
    if cfg.rpc.unix_socket and sock.exists():
        return Endpoint(f"unix:{sock}")  # local and mode 0600: no TLS needed
    return Endpoint(cfg.rpc.listen, client_context_for(cfg))


async def _call(endpoint: Endpoint, method: str, *args: Any, timeout_s: float = 60.0) -> Any:
    async with open_client(
        endpoint.address, call_timeout_s=timeout_s, ssl_context=endpoint.ssl_context
    ) as conn:
        return await conn.call(method, *args)


# -- dfs up / down -------------------------------------------------------------------------
def up_config(base: Path) -> Config:
    """The embedded single-host configuration for ``dfs up DIR``."""
    var = base / "var"
    conf = var / "dfs.conf"
    if conf.exists():
        return config_mod.load(conf)
    cfg = config_mod.replace(config_mod.parse("", origin="defaults"), node={"data_dir": str(var)})
    var.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "# written by `dfs up`; edit and run `dfs down && dfs up` to apply\n" + config_mod.render(cfg)
    )
    return cfg


def _daemon_pid(cfg: Config) -> int | None:
    try:
        pid = int((cfg.data_path / "dfsd.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if (
                len(fields) > 2
                and fields[1].encode().decode("unicode_escape") == target
                and fields[2] == "fuse.dfs"
            ):
                return True
    return False


def is_dead_mount(path: Path) -> bool:
    """A FUSE mount whose process is gone (every access fails with ENOTCONN)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _bin(name: str) -> str:
    """Our own entry points live beside the running interpreter (the venv)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


async def _wait_ready(endpoint: Endpoint, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = trio.current_time() + _UP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            tail = (await trio.Path(log_path).read_text(errors="replace")).strip().splitlines()[-3:]
            raise CliError(
                "dfsd exited during start-up: " + (" | ".join(tail) or f"status {proc.returncode}")
            )
        try:
            with trio.fail_after(2):
                await _call(endpoint, "sys.ping", timeout_s=2)
            return
        except (DfsError, trio.TooSlowError):
            pass
        if trio.current_time() > deadline:
            raise CliError(f"dfsd did not become ready within {_UP_TIMEOUT_S:.0f}s (see {log_path})")
        await trio.sleep(0.05)


@click.group()
@click.version_option(package_name="dfs")
def main() -> None:
    """dfs: a FUSE-mountable POSIX distributed filesystem."""


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def up(directory: str) -> None:
    """Start a daemon with data in DIR/var and mount it at DIR/mnt."""
    base = Path(directory).resolve()
    cfg = up_config(base)
    mnt = base / "mnt"
    if _is_mounted(mnt) and is_dead_mount(mnt):
        # The mount process died (crash, kill -9): detach the dead mount and mount again.
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    mnt.mkdir(parents=True, exist_ok=True)
    address = cfg.rpc.listen
    # Poll our own daemon: the unix socket lives in this data dir, while the TCP
    # port might be answered by another dfsd that already holds it.
    own = (
        Endpoint(f"unix:{cfg.unix_socket_path}")
        if cfg.rpc.unix_socket
        else Endpoint(address, client_context_for(cfg))
    )
    if _daemon_pid(cfg) is None:
        log_path = cfg.data_path / "dfsd.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [_bin("dfsd"), "--config", str(cfg.data_path / "dfs.conf")],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        _run(_wait_ready, own, proc, log_path)
    if not _is_mounted(mnt):
        source = f"{address}:/"
        opts = [f"log={cfg.data_path / 'mount.log'}"]
        if cfg.rpc.unix_socket:
            opts.append(f"socket={cfg.unix_socket_path}")
        res = subprocess.run(
            [_bin("mount.dfs"), source, str(mnt), "-o", ",".join(opts)], capture_output=True, text=True
        )
        if res.returncode != 0:
            raise CliError(res.stderr.strip().removeprefix("mount.dfs: ") or "mount.dfs failed")
    click.echo(f"dfs is up.\n  mount point: {mnt}\n  daemon:      {address} (data in {cfg.data_path})")
    if cfg.s3.enabled and cfg.s3_root_path.exists():
        root = json.loads(cfg.s3_root_path.read_text())
        scheme = "https" if cfg.s3.https else "http"
        click.echo(f"  S3 endpoint: {scheme}://{cfg.s3.listen} (region {cfg.s3.region})")
        click.echo(f"    access key: {root['access_key']}\n    secret key: {root['secret_key']}")
    if cfg.admin.enabled and cfg.admin_token_path.exists():
        scheme = "https" if cfg.admin.https else "http"
        click.echo(f"  admin API:   {scheme}://{cfg.admin.listen}/storage/ (metrics at /metrics)")
        click.echo(f"    token:      {cfg.admin_token_path.read_text().strip()} (Authorization: Bearer)")
    click.echo(f"  status:      dfs status {directory}\n  stop:        dfs down {directory}")


def _unmount(mnt: Path) -> None:
    if not _is_mounted(mnt):
        return
    res = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        # Busy: detach now, the kernel finishes open files, then the mount process exits.
        res = subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, text=True)
        if res.returncode != 0:
            raise CliError(f"cannot unmount {mnt}: {res.stderr.strip()}")


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def down(directory: str) -> None:
    """Unmount DIR/mnt and stop the daemon of DIR/var."""
    base = Path(directory).resolve()
    if not (base / "var" / "dfs.conf").exists():
        raise CliError(f"{base} has no dfs set-up (no var/dfs.conf)")
    cfg = config_mod.load(base / "var" / "dfs.conf")
    _unmount(base / "mnt")
    pid = _daemon_pid(cfg)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _daemon_pid(cfg) == pid:
            if time.monotonic() > deadline:
                raise CliError(f"dfsd (pid {pid}) did not stop within 30s")
            time.sleep(0.05)
    click.echo("dfs is down.")


# -- status / fsck --------------------------------------------------------------------------
def _cfg_for(directory: str | None, config_path: str | None) -> Config:
    if config_path:
        return config_mod.load(config_path)
    base = Path(directory or ".").resolve()
    if (base / "var" / "dfs.conf").exists():
        return config_mod.load(base / "var" / "dfs.conf")
    return config_mod.load(None)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Capacity, usage, files, chunks and daemon health."""
    cfg = _cfg_for(directory, config_path)
    st = _run(_call, _address(cfg), "sys.status")
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    cap, ns = st["capacity"], st["namespace"]
    used_pct = 100.0 * (cap["total_bytes"] - cap["free_bytes"]) / max(1, cap["total_bytes"])
    rows = [
        ("node", st["node_id"]),
        ("health", st["health"]),
        ("version", st["version"]),
        ("uptime", f"{st['uptime_s']:.0f} s"),
        ("data dir", st["data_dir"]),
        (
            "capacity",
            f"{_human(cap['total_bytes'])} ({_human(cap['avail_bytes'])} available, {used_pct:.1f}% used)",
        ),
        ("files", f"{ns['files']} files, {ns['dirs']} directories, {ns['inodes']} inodes"),
        ("logical data", _human(ns["logical_bytes"])),
        (
            "chunks",
            f"{ns['chunks']} ({_human(ns['stored_bytes'])} stored, {ns['unreferenced_chunks']} awaiting GC)",
        ),
        ("checksum failures", str(cap.get("checksum_failures", 0))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def nodes(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The cluster's members as this daemon's gossip sees them."""
    cfg = _cfg_for(directory, config_path)
    members: list[dict[str, Any]] = _run(_call, _address(cfg), "sys.members")
    if as_json:
        click.echo(json.dumps(members, indent=2, sort_keys=True))
        return
    click.echo(f"{'NODE':<20} {'STATUS':<8} {'ZONE':<10} {'RPC':<22} {'FREE':>10}  SINCE")
    for m in members:
        name = m["node_id"] + (" *" if m.get("self") else "")
        free = _human(m["free_bytes"]) if "free_bytes" in m else "-"
        since = f"{m['for_s']:.0f} s" if "for_s" in m else "-"
        zone, rpc_address = m.get("zone", "-"), m.get("rpc", "-")
        click.echo(f"{name:<20} {m['status']:<8} {zone:<10} {rpc_address:<22} {free:>10}  {since}")


async def _fsck(endpoint: Endpoint, repair: bool, show_progress: bool) -> dict[str, Any]:
    async with open_client(endpoint.address, call_timeout_s=600, ssl_context=endpoint.ssl_context) as conn:
        ids: list[bytes] = await conn.call("sys.scrub_list")
        bad: list[bytes] = []
        bar = click.progressbar(length=len(ids), label="verifying chunks", file=sys.stderr)
        if show_progress:
            bar.__enter__()
        try:
            for i in range(0, len(ids), 256):
                batch = ids[i : i + 256]
                bad.extend(await conn.call("sys.scrub_batch", batch))
                if show_progress:
                    bar.update(len(batch))
        finally:
            if show_progress:
                bar.__exit__(None, None, None)
        report: dict[str, Any] = await conn.call("sys.fsck_meta", repair)
        report["chunks_checked"] = len(ids)
        report["corrupt_chunks"] = [cid.hex() for cid in bad]
        for cid in bad:
            report["problems"].append(f"chunk {cid.hex()} fails its checksum")
        return report


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--repair", is_flag=True, help="fix what can be fixed (counts, dangling entries, orphans)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def fsck(directory: str | None, config_path: str | None, repair: bool, as_json: bool) -> None:
    """Check metadata and chunks agree; verify every chunk's checksum."""
    cfg = _cfg_for(directory, config_path)
    report = _run(_fsck, _address(cfg), repair, not as_json and sys.stderr.isatty())
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(f"checked {report['chunks_checked']} chunks")
        for line in report["problems"]:
            click.echo(f"problem: {line}")
        click.echo(
            "clean"
            if not report["problems"]
            else f"{len(report['problems'])} problem(s)" + (" (repaired what could be)" if repair else "")
        )
    if report["problems"] and not repair:
        sys.exit(3)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--now", is_flag=True, help="collect unreferenced chunks at once, without the safety delay")
@click.option("--orphans", is_flag=True, help="also sweep chunks of writes that never committed")
def gc(directory: str | None, config_path: str | None, now: bool, orphans: bool) -> None:
    """Delete chunks no file references any more (after [storage] gc_delay_s unless --now).

    With --orphans, also delete stored chunks that no metadata knows (left by
    uploads that failed before committing) once untouched for
    [storage] orphan_delay_s, or at once with --now.
    """
    cfg = _cfg_for(directory, config_path)
    n = _run(_call, _address(cfg), "sys.gc", 0.0 if now else None)
    click.echo(f"collected {n} chunk(s)")
    if orphans:
        n = _run(_call, _address(cfg), "sys.sweep_orphans", 0.0 if now else None)
        click.echo(f"swept {n} orphan chunk(s)")


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
    from dfs import certs

    try:
        cert, key = certs.init_cluster(Path(ca_dir).resolve(), cluster_name)
    except (FileExistsError, DfsError) as exc:
        raise CliError(str(exc)) from None
    click.echo(f"cluster CA created:\n  certificate: {cert}\n  private key: {key} (keep it off the nodes)")


@main.group()
def node() -> None:
    """Per-node set-up."""


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
    from dfs import certs

    try:
        cert, key, ca = certs.issue_files(
            Path(ca_dir),
            Path(out_dir).resolve(),
            name,
            kind="client" if client else "node",
            hosts=list(hosts),
        )
    except DfsError as exc:
        raise CliError(exc.message) from None
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


@main.group()
def s3() -> None:
    """S3 access keys."""


@s3.group()
def key() -> None:
    """Create, list and revoke S3 access keys (stored in the metadata service)."""


_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon"
)
_dir_option = click.option(
    "--dir", "directory", type=click.Path(file_okay=False), help="a `dfs up` directory (default: .)"
)


@key.command("create")
@click.option("--description", default="", help="a note to tell keys apart")
@_dir_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def key_create(description: str, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Make a new key pair; the secret is shown only now."""
    cfg = _cfg_for(directory, config_path)
    made: dict[str, str] = _run(_call, _address(cfg), "s3.key_create", description)
    if as_json:
        click.echo(json.dumps(made, indent=2, sort_keys=True))
    else:
        click.echo(f"access key: {made['access_key']}\nsecret key: {made['secret_key']}")


@key.command("list")
@_dir_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def key_list(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The keys made with `dfs s3 key create` (never their secrets)."""
    cfg = _cfg_for(directory, config_path)
    keys: list[dict[str, Any]] = _run(_call, _address(cfg), "s3.key_list")
    if as_json:
        click.echo(json.dumps(keys, indent=2, sort_keys=True))
        return
    click.echo(f"{'ACCESS KEY':<22}  {'CREATED':<20}  DESCRIPTION")
    for k in keys:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k["created_ns"] / 1e9))
        click.echo(f"{k['access_key']:<22}  {created:<20}  {k['description']}")


@key.command("revoke")
@click.argument("access_key")
@_dir_option
@_config_option
def key_revoke(access_key: str, directory: str | None, config_path: str | None) -> None:
    """Revoke a key: requests signed with it fail from now on."""
    cfg = _cfg_for(directory, config_path)
    _run(_call, _address(cfg), "s3.key_revoke", access_key)
    click.echo(f"revoked {access_key}")


@s3.command("bench")
@_dir_option
@_config_option
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
    from dfs import bench_s3

    cfg = _cfg_for(directory, config_path)
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
    from dfs import bench as bench_mod

    results = bench_mod.run(
        Path(path), Path(local_dir) if local_dir else None, size_mb=size_mb, n_files=n_files
    )
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(bench_mod.table(results))


if __name__ == "__main__":
    main()
