"""``dfsd``: run one dfs daemon in the foreground.

Start-up order: config, logging, the data-directory lock, then the node
(daemon/node.py: stores, listeners, workers); then readiness is announced
(systemd ``READY=1`` when ``NOTIFY_SOCKET`` is set, and the pid file
``<data_dir>/dfsd.pid``).  SIGTERM or SIGINT cancel everything; the stores are
closed after every task has finished, so shutdown is graceful.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import click
import trio

from daemon.node import serve
from daemon.service.backups import MetaDb, load_offline
from dfs import heap, logs
from dfs.core import config as config_mod
from dfs.core.config import Config
from dfs.core.errors import DfsError, only_dfs_error

log = logging.getLogger("dfs.daemon")


def _sd_notify(message: str) -> None:
    """Tell systemd about readiness (Type=notify); a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)


async def _wait_for_signal(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            cancel.cancel()
            return


def _lock_data_dir(data: Path) -> int:
    """Hold an exclusive lock on the data directory for the life of this process.

    Two daemons on one data directory would both write its metadata database
    and chunk store; the kernel drops the lock with the process however it
    dies, so a crashed daemon never blocks its successor.
    """
    data.mkdir(parents=True, exist_ok=True)
    fd = os.open(data / "dfsd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DfsError(f"{data}: another dfsd is running on this data directory") from None
        raise
    return fd


async def _main(cfg: Config) -> None:
    _lock_data_dir(cfg.data_path)  # released by the kernel when this process ends
    pid_path = cfg.data_path / "dfsd.pid"
    with trio.CancelScope() as cancel:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wait_for_signal, cancel)
            await nursery.start(serve, cfg)
            pid_path.write_text(f"{os.getpid()}\n")
            _sd_notify("READY=1")
            log.info("dfsd ready", extra={"ctx": {"node": cfg.node_id, "listen": cfg.rpc.listen}})
    _sd_notify("STOPPING=1")
    try:
        if pid_path.read_text().strip() == str(os.getpid()):
            pid_path.unlink()
    except OSError:
        pass


def _load_meta(cfg: Config, dump_path: Path, backup_info: str | None) -> str:
    """Load a dump into this host's metadata database, under the data-directory lock (no daemon
    runs here): meta.db, which must not exist, or with ``[meta] engine = "postgresql"`` the
    database ``[meta] dsn`` names, which must be empty (every daemon shares it: any host loads)."""
    if cfg.meta.engine == "sqlite" and cfg.cluster.meta:
        raise DfsError(f"this host is not the metadata primary ([cluster] meta = {cfg.cluster.meta!r})")
    fd = _lock_data_dir(cfg.data_path)
    try:
        info = json.loads(backup_info) if backup_info else None
        st = cfg.storage
        return load_offline(
            cfg.data_path,
            dump_path,
            info,
            block_size=st.block_size,
            meta=MetaDb.of(cfg.data_path, cfg.meta),
        )
    finally:
        os.close(fd)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf to read")
@click.option("--data-dir", type=click.Path(file_okay=False), help="override [node] data_dir")
@click.option("--listen", help="override [rpc] listen (HOST:PORT)")
@click.option(
    "--load-meta",
    type=click.Path(exists=True, dir_okay=False),
    help=(
        "do not serve: load this dump into the metadata database (a new meta.db, or the empty "
        "PostgreSQL database of [meta] dsn) and exit (what `dfs meta load|restore` run)"
    ),
)
@click.option("--backup-info", help="with --load-meta: the backup's JSON (restores the cluster key too)")
@click.version_option(package_name="dfs")
def main(
    config_path: str | None,
    data_dir: str | None,
    listen: str | None,
    load_meta: str | None,
    backup_info: str | None,
) -> None:
    """Run the dfs daemon in the foreground."""
    try:
        cfg = config_mod.load(config_path)
        overrides: dict[str, dict[str, object]] = {}
        if data_dir:
            overrides["node"] = {"data_dir": str(Path(data_dir).resolve())}
        if listen:
            overrides["rpc"] = {"listen": listen}
        if overrides:
            cfg = config_mod.replace(cfg, **overrides)
        logs.setup(cfg.log)
        if load_meta:
            click.echo(_load_meta(cfg, Path(load_meta), backup_info))
            return
        heap.leave_trimming_to_the_trimmer()  # the service runs the trimmer
        trio.run(_main, cfg)
    except OSError as exc:
        click.echo(f"dfsd: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        err = only_dfs_error(exc)  # raised while starting up, inside a nursery: in a group
        if err is None:
            raise
        click.echo(f"dfsd: {' '.join(err.message.split())}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
