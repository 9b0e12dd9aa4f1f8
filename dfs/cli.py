"""The ``dfs`` command: set-up, status, fsck and benchmarks.

Exit status is 0 on success and non-zero with one clear line on stderr
otherwise; commands that report take ``--json`` for scripts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import click
import trio

from dfs import config as config_mod
from dfs import liveness
from dfs.certs import client_context_for
from dfs.config import Config
from dfs.endpoints import (
    CHUNK_VERIFY,
    META_REGISTER_NODE,
    META_REMOVE_NODE,
    META_SET_NODE,
    S3_KEY_CREATE,
    S3_KEY_LIST,
    S3_KEY_REVOKE,
    SYS_CLUSTER,
    SYS_FSCK_META,
    SYS_GC,
    SYS_PING,
    SYS_REPAIR_STATUS,
    SYS_SCRUB_BATCH,
    SYS_SCRUB_LIST,
    SYS_STATUS,
    SYS_SWEEP_ORPHANS,
)
from dfs.endpoints import Endpoint as Method
from dfs.errors import EX_FAILURE, DfsError, exit_code
from dfs.rpc import RpcClient, _only_dfs_error, open_client

T = TypeVar("T")
_UP_TIMEOUT_S = 30.0
_STOP_WAIT_S = 30.0  # for a killed daemon to finish exiting before `dfs up` gives up


class CliError(click.ClickException):
    """Ends a command with one line on stderr, ``dfs: MESSAGE``, and ``exit_code``.

    Not a DfsError: it is how click ends a command, never raised across a boundary.  A
    DfsError ending a command becomes one in :meth:`_Command.invoke`, with the exit code
    from ``dfs.errors.TABLE``; the CLI raises it itself for what it finds wrong locally."""

    def __init__(self, message: str, exit_code: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: Any = None) -> None:
        click.echo(f"dfs: {self.message}", err=True)


def _debug(ctx: click.Context) -> bool:
    """``dfs --debug``, or DFS_DEBUG set to anything but empty or 0."""
    return bool(ctx.find_root().params.get("debug")) or os.environ.get("DFS_DEBUG", "") not in ("", "0")


class _Command(click.Command):
    """A dfs command.  A DfsError ending it, the CLI's own or one a daemon answered (which trio
    hands on wrapped in an ExceptionGroup), is one line, ``dfs: <command>: <why>``, and the
    error table's exit code; with --debug or DFS_DEBUG=1, the traceback and the same code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            err = exc if isinstance(exc, DfsError) else _only_dfs_error(exc)
            if err is None:
                raise  # not an error dfs raises on purpose (a bug): its traceback is the report
            code = exit_code(err)
            if _debug(ctx):
                traceback.print_exception(exc)
                raise click.exceptions.Exit(code) from None
            what = ctx.command_path.partition(" ")[2]
            why = " ".join(err.message.split())  # a message from a peer may span lines
            raise CliError(f"{what}: {why}", code) from None


class _Group(click.Group):
    command_class = _Command
    group_class = type  # sub-groups are _Groups too, so every command is a _Command


def _run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``fn(*args)`` under trio; its errors end the command (see :class:`_Command`)."""
    return trio.run(fn, *args)


class Endpoint(NamedTuple):
    """Where to reach a daemon, and the TLS context for it (None: plain, or a unix socket);
    ``peers_ssl`` is the context for the other nodes' TCP ports (commands that visit them all)."""

    address: str
    ssl_context: ssl.SSLContext | None = None
    peers_ssl: ssl.SSLContext | None = None

    def peer(self, address: str) -> Endpoint:
        """Another node of the cluster, at its RPC address."""
        context = self.peers_ssl or self.ssl_context
        return Endpoint(address, context, context)


def _address(cfg: Config) -> Endpoint:
    sock = cfg.unix_socket_path
    tls = client_context_for(cfg)
    if cfg.rpc.unix_socket and sock.exists():
        return Endpoint(f"unix:{sock}", None, tls)  # local and mode 0600: no TLS needed
    return Endpoint(cfg.rpc.listen, tls, tls)


async def _call(endpoint: Endpoint, method: Method[Any], *args: Any, timeout_s: float = 60.0) -> Any:
    async with open_client(
        endpoint.address, call_timeout_s=timeout_s, ssl_context=endpoint.ssl_context
    ) as conn:
        return await method.call(conn, *args)


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
    """The pid of this data dir's daemon while it runs: not a zombie, not a reused pid."""
    pid = liveness.read_pid(cfg.data_path / "dfsd.pid")
    proc, _ = liveness.process_of(pid, cfg.data_path)
    return pid if proc is liveness.Proc.DAEMON else None


async def _answers(endpoint: Endpoint) -> bool:
    """Whether a daemon answers a ping at ``endpoint`` now (one short try, no waiting)."""
    with trio.move_on_after(3):
        async with open_client(
            endpoint.address, connect_timeout_s=0.2, call_timeout_s=2, ssl_context=endpoint.ssl_context
        ) as conn:
            try:
                await SYS_PING.call(conn)
            except DfsError:  # caught in here, before the client's nursery wraps it in a group
                return False
            return True
    return False


def _settle(cfg: Config, own: Endpoint) -> bool:
    """True when this data dir's daemon answers; False when none runs and one must be started
    (stale pid and socket files removed).  A daemon still going away (killed, but holding the
    data dir while it exits) is waited for, up to _STOP_WAIT_S."""
    pid_path, sock_path = cfg.data_path / "dfsd.pid", cfg.unix_socket_path
    started = time.monotonic()
    while True:
        answered = trio.run(_answers, own)
        pid = liveness.read_pid(pid_path)
        proc, state = liveness.process_of(pid, cfg.data_path)
        sock = liveness.socket_state(sock_path) if cfg.rpc.unix_socket else liveness.Sock.ABSENT
        decision = liveness.decide(
            liveness.Found(answered, pid, proc, state, sock),
            waited_s=time.monotonic() - started,
            limit_s=_STOP_WAIT_S,
            data_dir=cfg.data_path,
            endpoint=own.address,
        )
        if decision.step is liveness.Step.USE:
            return True
        if decision.step is liveness.Step.FAIL:
            raise CliError(decision.message)
        if decision.step is liveness.Step.START:
            if decision.remove_pid_file and pid is not None:
                liveness.remove_pid_file(pid_path, pid)
            if decision.remove_socket:
                liveness.remove_stale_socket(sock_path)
            return False
        time.sleep(0.05)


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


def _detach_dead_mount(mnt: Path) -> None:
    """The mount process died (crash, kill -9): detach the dead mount, so it can be mounted again.
    A loop, as an older dead mount may lie beneath the one detached."""
    for _ in range(8):
        if not (_is_mounted(mnt) and is_dead_mount(mnt)):
            return
        res = subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, text=True)
        if res.returncode != 0:
            raise CliError(f"cannot detach the dead mount at {mnt}: {res.stderr.strip()}")
    raise CliError(f"{mnt} is still a dead mount after detaching it 8 times")


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
        if await _answers(endpoint):
            return
        if trio.current_time() > deadline:
            raise CliError(f"dfsd did not become ready within {_UP_TIMEOUT_S:.0f}s (see {log_path})")
        await trio.sleep(0.05)


@click.group(cls=_Group)
@click.version_option(package_name="dfs")
@click.option("--debug", is_flag=True, help="on failure, show the traceback (also: DFS_DEBUG=1)")
def main(debug: bool) -> None:
    """dfs: a FUSE-mountable POSIX distributed filesystem."""


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def up(directory: str) -> None:
    """Start a daemon with data in DIR/var and mount it at DIR/mnt."""
    base = Path(directory).resolve()
    cfg = up_config(base)
    mnt = base / "mnt"
    _detach_dead_mount(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    address = cfg.rpc.listen
    # Poll our own daemon: the unix socket lives in this data dir, while the TCP
    # port might be answered by another dfsd that already holds it.
    own = (
        Endpoint(f"unix:{cfg.unix_socket_path}")
        if cfg.rpc.unix_socket
        else Endpoint(address, client_context_for(cfg))
    )
    if not _settle(cfg, own):
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
    stale = liveness.read_pid(cfg.data_path / "dfsd.pid") if pid is None else None
    if stale is not None:
        # Left by a daemon killed outright; its pid may be another process's by now.
        liveness.remove_pid_file(cfg.data_path / "dfsd.pid", stale)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except PermissionError:
            raise CliError(f"dfsd (pid {pid}) belongs to another user: cannot stop it") from None
        except ProcessLookupError:
            pass  # it exited meanwhile; the wait below ends at once
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
@click.option("--wait", is_flag=True, help="wait (with a progress bar) until repair has caught up")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True, help="for --wait")
def status(
    directory: str | None, config_path: str | None, as_json: bool, wait: bool, timeout_s: float
) -> None:
    """Capacity, usage, files, chunks, daemon health and repair progress."""
    cfg = _cfg_for(directory, config_path)
    if wait:
        _run(_wait_repaired, _address(cfg), timeout_s, sys.stderr.isatty() and not as_json)
    st = _run(_call, _address(cfg), SYS_STATUS)
    st["cluster"] = _run(_cluster_status, _address(cfg))
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
        ("layout", f"epoch {st['cluster']['layout_epoch']}, {len(st['cluster']['nodes'])} node(s) reporting"),
        ("repair", _repair_line(st["cluster"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def nodes(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The cluster's nodes: gossip's live view and each node's layout state."""
    cfg = _cfg_for(directory, config_path)
    cluster: dict[str, Any] = _run(_call, _address(cfg), SYS_CLUSTER)
    rows = merge_nodes(cluster)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    click.echo(
        f"{'NODE':<20} {'STATUS':<8} {'STATE':<9} {'ZONE':<10} {'WEIGHT':>6} {'RPC':<22} {'FREE':>10}  SINCE"
    )
    for m in rows:
        name = m["node_id"] + (" *" if m.get("self") else "")
        free = _human(m["free_bytes"]) if "free_bytes" in m else "-"
        since = f"{m['for_s']:.0f} s" if "for_s" in m else "-"
        zone, rpc_address = m.get("zone", "-"), m.get("rpc", "-")
        weight = f"{m['capacity_weight']:g}" if "capacity_weight" in m else "-"
        click.echo(
            f"{name:<20} {m['status']:<8} {m.get('state', '-'):<9} {zone:<10} {weight:>6} "
            f"{rpc_address:<22} {free:>10}  {since}"
        )


def merge_nodes(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """Gossip members joined with layout nodes (a layout node gossip does not know is "unknown")."""
    by_id: dict[str, dict[str, Any]] = {m["node_id"]: dict(m) for m in cluster.get("members", [])}
    for n in cluster.get("layout", {}).get("nodes", []):
        row = by_id.setdefault(n["node_id"], {"node_id": n["node_id"], "status": "unknown"})
        row["state"] = n["state"]
        row["capacity_weight"] = n["capacity_weight"]
        row.setdefault("zone", n["zone"])
        if n.get("address"):
            row.setdefault("rpc", n["address"])
    return sorted(by_id.values(), key=lambda r: r["node_id"])


# -- layout and repair -----------------------------------------------------------------------
async def _cluster_status(endpoint: Endpoint) -> dict[str, Any]:
    """Every reachable node's repair status, summed (see daemon/repair.py for the counters)."""
    cluster = await _call(endpoint, SYS_CLUSTER)
    nodes: list[dict[str, Any]] = []
    unreachable: list[str] = []

    async def ask(node_id: str, target: Endpoint) -> None:
        try:
            with trio.fail_after(10):
                nodes.append(await _call(target, SYS_REPAIR_STATUS, timeout_s=10))
        except (DfsError, trio.TooSlowError):
            unreachable.append(node_id)

    targets, down = _live_nodes(endpoint, cluster)
    async with trio.open_nursery() as nursery:
        for node_id, target in targets.items():
            nursery.start_soon(ask, node_id, target)
    keys = (
        "under_replicated",
        "misplaced",
        "hints_pending",
        "copies_made",
        "bytes_moved",
        "surplus_removed",
        "hot_chunks",
        "hot_copies_held",
    )
    totals = {k: sum(int(n.get(k, 0)) for n in nodes) for k in keys}
    pending = totals["under_replicated"] + totals["misplaced"] + totals["hints_pending"]
    return {
        "layout_epoch": cluster["layout"]["epoch"],
        "nodes": sorted(nodes, key=lambda n: n["node_id"]),
        "unreachable": sorted(
            unreachable | down if isinstance(unreachable, set) else set(unreachable) | down
        ),
        "down": sorted(down),
        "pending": pending,
        **totals,
    }


def _repair_line(cs: dict[str, Any]) -> str:
    hot = cs.get("hot_chunks", 0)
    return (
        f"{cs['under_replicated']} under-replicated, {cs['misplaced']} misplaced, "
        f"{cs['hints_pending']} hints pending; repaired {cs['copies_made']} copies "
        f"({_human(cs['bytes_moved'])})"
        + (f"; {hot} hot chunk(s) with {cs.get('hot_copies_held', 0)} extra copies" if hot else "")
    )


async def _wait_repaired(endpoint: Endpoint, timeout_s: float, show: bool) -> dict[str, Any]:
    """Poll until no node reports repair work left (after a round at the current epoch)."""
    start = time.monotonic()
    first = await _cluster_status(endpoint)
    total = max(1, first["pending"])
    bar = click.progressbar(length=total, label="repairing", file=sys.stderr, show_eta=True)
    if show:
        bar.__enter__()
    try:
        while True:
            cs = await _cluster_status(endpoint)
            current = all(n.get("round_epoch") == cs["layout_epoch"] for n in cs["nodes"])
            done = total - min(total, cs["pending"])
            if show:
                bar.update(done - bar.pos)
            if current and cs["pending"] == 0 and not cs["unreachable"]:
                return cs
            if time.monotonic() - start > timeout_s:
                raise CliError(f"repair not finished after {timeout_s:g}s: {_repair_line(cs)}")
            await trio.sleep(1.0)
    finally:
        if show:
            bar.__exit__(None, None, None)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def layout(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The authoritative layout: nodes, zones, weights, states and the epoch."""
    cfg = _cfg_for(directory, config_path)
    cluster: dict[str, Any] = _run(_call, _address(cfg), SYS_CLUSTER)
    lay = cluster["layout"]
    if as_json:
        click.echo(json.dumps(lay, indent=2, sort_keys=True))
        return
    click.echo(
        f"layout epoch {lay['epoch']}, default R={cluster['policy']['replicas']} "
        f"({cluster['policy']['consistency']}), metadata primary {cluster['meta']}"
    )
    click.echo(f"{'NODE':<20} {'STATE':<9} {'ZONE':<12} {'WEIGHT':>6}  RPC")
    for n in lay["nodes"]:
        click.echo(
            f"{n['node_id']:<20} {n['state']:<9} {n['zone']:<12} {n['capacity_weight']:>6g}  {n['address']}"
        )


def _node_change(cfg: Config, node_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _run(_call, _address(cfg), META_SET_NODE, node_id, changes)
    return result


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
@click.option("--wait", is_flag=True, help="return once repair has caught up")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True)
def rebalance(config_path: str | None, wait: bool, timeout_s: float) -> None:
    """Weight every active node by its disk capacity, so usage converges; data moves as needed."""
    cfg = _cfg_for(None, config_path)
    cluster: dict[str, Any] = _run(_call, _address(cfg), SYS_CLUSTER)
    capacity = {m["node_id"]: int(m.get("capacity_bytes", 0)) for m in cluster["members"]}
    changed = 0
    for n in cluster["layout"]["nodes"]:
        cap = capacity.get(n["node_id"], 0)
        if n["state"] != "active" or cap <= 0:
            continue
        weight = round(cap / 1e12, 3) or 0.001  # TB of disk
        if abs(weight - float(n["capacity_weight"])) > 0.01 * weight:
            _node_change(cfg, n["node_id"], {"capacity_weight": weight})
            changed += 1
    click.echo(f"{changed} node weight(s) changed")
    if wait:
        cs = _run(_wait_repaired, _address(cfg), timeout_s, sys.stderr.isatty())
        click.echo(_repair_line(cs))


def _live_nodes(endpoint: Endpoint, cluster: dict[str, Any]) -> tuple[dict[str, Endpoint], set[str]]:
    """(node id -> where to reach it, for every layout node not marked out and not known dead,
    the daemon at ``endpoint`` among them; the layout nodes not marked out but known dead)."""
    here = cluster.get("node_id")
    placed = [n for n in cluster.get("layout", {}).get("nodes", []) if n["state"] != "out"]
    dead = {m["node_id"] for m in cluster.get("members", []) if m.get("status") in ("dead", "left")}
    down = {n["node_id"] for n in placed if n["node_id"] in dead}
    targets = {
        n["node_id"]: endpoint if n["node_id"] == here else endpoint.peer(n["address"])
        for n in placed
        if n["node_id"] not in down
    }
    return targets, down


async def _fsck(endpoint: Endpoint, repair: bool, show_progress: bool) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:

        async def connect(ep: Endpoint) -> RpcClient:
            return await stack.enter_async_context(
                open_client(ep.address, call_timeout_s=600, ssl_context=ep.ssl_context)
            )

        local = await connect(endpoint)
        cluster = await SYS_CLUSTER.call(local)
        here = str(cluster.get("node_id", ""))
        targets, _down = _live_nodes(endpoint, cluster)
        conns = {here: local} | {node: await connect(ep) for node, ep in targets.items() if node != here}
        ids: dict[str, list[bytes]] = {}
        problems: list[str] = []
        for node, conn in conns.items():
            try:
                ids[node] = await SYS_SCRUB_LIST.call(conn)
            except DfsError as exc:
                problems.append(f"node {node}: chunks not verified: {exc.message}")
        bad: list[tuple[str, bytes]] = []
        total = sum(len(v) for v in ids.values())
        bar = click.progressbar(length=total, label="verifying chunks", file=sys.stderr)
        if show_progress:
            bar.__enter__()
        try:
            for node, node_ids in ids.items():
                try:
                    for i in range(0, len(node_ids), 256):
                        batch = node_ids[i : i + 256]
                        bad.extend((node, cid) for cid in await SYS_SCRUB_BATCH.call(conns[node], batch))
                        if show_progress:
                            bar.update(len(batch))
                except DfsError as exc:
                    problems.append(f"node {node}: chunk verification stopped: {exc.message}")
        finally:
            if show_progress:
                bar.__exit__(None, None, None)
        if repair and len(conns) > 1:
            # A corrupt copy in a cluster is quarantined on its node and fetched again from a replica.
            for node, cid in bad:
                with contextlib.suppress(DfsError):
                    await CHUNK_VERIFY.call(conns[node], cid)
        report = await SYS_FSCK_META.call(local, repair)
    report["chunks_checked"] = total
    report["corrupt_chunks"] = [cid.hex() for _, cid in bad]
    report["problems"][:0] = problems
    for node, cid in bad:
        where = f" on {node}" if len(conns) > 1 else ""
        report["problems"].append(f"chunk {cid.hex()}{where} fails its checksum")
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
    n = _run(_call, _address(cfg), SYS_GC, 0.0 if now else None)
    click.echo(f"collected {n} chunk(s)")
    if orphans:
        n = _run(_call, _address(cfg), SYS_SWEEP_ORPHANS, 0.0 if now else None)
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
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    click.echo(f"cluster CA created:\n  certificate: {cert}\n  private key: {key} (keep it off the nodes)")


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
    from dfs import bench_cluster

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


@node.command("add")
@click.argument("node_id")
@click.option("--address", required=True, help="the node's RPC address, HOST:PORT")
@click.option("--zone", default="default", show_default=True, help="failure domain")
@click.option("--weight", type=float, default=1.0, show_default=True, help="capacity weight")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
def node_add(node_id: str, address: str, zone: str, weight: float, config_path: str | None) -> None:
    """Add a node to the layout (daemons with [cluster] auto_join add themselves)."""
    cfg = _cfg_for(None, config_path)
    lay = _run(_call, _address(cfg), META_REGISTER_NODE, node_id, zone, address, weight)
    click.echo(f"layout epoch {lay['epoch']}: {node_id} active")


@node.command("set")
@click.argument("node_id")
@click.option("--zone", help="failure domain")
@click.option("--weight", type=float, help="capacity weight")
@click.option("--state", type=click.Choice(["active", "draining", "out"]), help="layout state")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
def node_set(
    node_id: str, zone: str | None, weight: float | None, state: str | None, config_path: str | None
) -> None:
    """Change a node's zone, weight or state in the layout (moves data as needed)."""
    changes: dict[str, Any] = {}
    if zone is not None:
        changes["zone"] = zone
    if weight is not None:
        changes["capacity_weight"] = weight
    if state is not None:
        changes["state"] = state
    if not changes:
        raise CliError("nothing to change: give --zone, --weight or --state")
    lay = _node_change(_cfg_for(None, config_path), node_id, changes)
    click.echo(f"layout epoch {lay['epoch']}")


@node.command("drain")
@click.argument("node_id")
@click.option("--wait", is_flag=True, help="return once its data has moved to the other nodes")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
def node_drain(node_id: str, wait: bool, timeout_s: float, config_path: str | None) -> None:
    """Move a node's data away (it keeps serving reads meanwhile); then `dfs node remove`."""
    cfg = _cfg_for(None, config_path)
    lay = _node_change(cfg, node_id, {"state": "draining"})
    click.echo(f"layout epoch {lay['epoch']}: {node_id} draining")
    if wait:
        cs = _run(_wait_repaired, _address(cfg), timeout_s, sys.stderr.isatty())
        click.echo(f"drained: {_repair_line(cs)}")


@node.command("remove")
@click.argument("node_id")
@click.option("--force", is_flag=True, help="even if it still holds chunks (they may be the last copies)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of a daemon")
def node_remove(node_id: str, force: bool, config_path: str | None) -> None:
    """Remove a drained (or out) node from the layout; refuses while it still holds chunks."""
    cfg = _cfg_for(None, config_path)
    if not force:
        cs = _run(_cluster_status, _address(cfg))
        mine = [n for n in cs["nodes"] if n["node_id"] == node_id]
        if mine and (mine[0].get("misplaced", 0) or mine[0].get("round_epoch") != cs["layout_epoch"]):
            raise CliError(f"{node_id} still holds chunks that have no other home yet; wait, or --force")
    lay = _run(_call, _address(cfg), META_REMOVE_NODE, node_id)
    click.echo(f"layout epoch {lay['epoch']}: {node_id} removed")


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
    made: dict[str, str] = _run(_call, _address(cfg), S3_KEY_CREATE, description)
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
    keys: list[dict[str, Any]] = _run(_call, _address(cfg), S3_KEY_LIST)
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
    _run(_call, _address(cfg), S3_KEY_REVOKE, access_key)
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
