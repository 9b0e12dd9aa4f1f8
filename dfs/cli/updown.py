"""``dfs up`` and ``dfs down``: a single-host dfs (daemon plus mount) in one directory.

``dfs up DIR`` writes DIR/var/dfs.conf on first use, starts dfsd unless its daemon already
answers (stale pid and socket files left by a killed daemon are removed first, see
:mod:`dfs.cli.liveness`), and mounts DIR/mnt; ``dfs down DIR`` reverses both.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import trio

from dfs.cli import liveness
from dfs.cli.app import CliError, main, run
from dfs.cli.connect import Endpoint
from dfs.core import config as config_mod
from dfs.core.config import Config
from dfs.core.endpoints import (
    SYS_PING,
)
from dfs.core.errors import AuthFailed, CallerNotAllowed, DfsError
from dfs.net.certs import client_context_for
from dfs.net.rpc import open_client

_UP_TIMEOUT_S = 30.0


_STOP_WAIT_S = 30.0  # for a killed daemon to finish exiting before `dfs up` gives up


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
            endpoint.address,
            connect_timeout_s=0.2,
            call_timeout_s=2,
            ssl_context=endpoint.ssl_context,
            credential=endpoint.credential,
        ) as conn:
            try:
                await SYS_PING.call(conn)
            except (AuthFailed, CallerNotAllowed):
                return True  # a daemon it is, refusing us: it answers all the same
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
    started: subprocess.Popen[bytes] | None = None
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
        started = proc
        run(_wait_ready, own, proc, log_path)
    if not _is_mounted(mnt):
        source = f"{address}:/"
        # The mount reads the same file as the daemon: its [mount] settings are this site's.
        opts = [f"config={cfg.data_path / 'dfs.conf'}", f"log={cfg.data_path / 'mount.log'}"]
        if cfg.rpc.unix_socket:
            opts.append(f"socket={cfg.unix_socket_path}")
        else:  # over TCP a mount proves itself with the client credential the daemon wrote
            opts.append(f"credential={cfg.data_path / 'client.credential'}")
        res = subprocess.run(
            [_bin("mount.dfs"), source, str(mnt), "-o", ",".join(opts)], capture_output=True, text=True
        )
        if res.returncode != 0:
            reason = res.stderr.strip().removeprefix("mount.dfs: ") or "mount.dfs failed"
            if started is not None:
                # All or nothing: a daemon this command started is not left holding its ports.
                _stop_started(started)
                reason += " (the daemon it started is stopped again)"
            raise CliError(reason)
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


def _stop_started(proc: subprocess.Popen[bytes]) -> None:
    """Stop a daemon ``dfs up`` started (SIGTERM, then SIGKILL after 30 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
