"""``dfsd``: run one dfs daemon in the foreground.

Start-up order: config, logging, stores, listeners; then readiness is
announced (systemd ``READY=1`` when ``NOTIFY_SOCKET`` is set, and the pid
file ``<data_dir>/dfsd.pid``).  SIGTERM or SIGINT cancel everything; the
stores are closed after every task has finished, so shutdown is graceful.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path

import click
import trio

from daemon.admin import AdminApi
from daemon.admin import error_response as admin_error_response
from daemon.http import HttpServer, open_http_listeners
from daemon.membership import Membership, node_meta
from daemon.metrics import Metrics, instrument_handlers, instrument_inline
from daemon.s3 import KeyRing, S3Api
from daemon.service import Service
from dfs import __version__, logs, rpc
from dfs import config as config_mod
from dfs.certs import server_context_for
from dfs.config import Config
from dfs.errors import DfsError

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


async def serve(cfg: Config, *, task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED) -> None:
    service = Service(cfg)
    metrics = Metrics(node_id=cfg.node_id, version=__version__)
    service.observe_s3 = metrics.observe_s3  # type: ignore[method-assign]
    service.set_meta_observer(metrics.observe_meta)
    metrics.watch(service)
    try:
        server = rpc.RpcServer(
            instrument_handlers(service.handlers, metrics),
            max_frame_bytes=cfg.rpc.max_frame_bytes,
            max_inflight_per_conn=cfg.rpc.max_inflight_per_conn,
            inline_handlers=instrument_inline(service.inline_handlers(), metrics),
            ssl_context=server_context_for(cfg),
        )
        listeners = await rpc.open_listeners(cfg.rpc.listen)
        if cfg.rpc.unix_socket:
            listeners += await rpc.open_listeners(f"unix:{cfg.unix_socket_path}")
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            if cfg.gossip.enabled:

                def hot() -> list[str]:
                    return service.hot.advertised() if service.hot is not None else []

                membership = Membership(
                    cfg, lambda: node_meta(cfg, service.chunks.stats, lambda: service.layout_epoch, hot)
                )
                service.membership = membership
                await nursery.start(membership.run)
            await nursery.start(service.run_cluster)
            nursery.start_soon(service.run_background)
            nursery.start_soon(metrics.run, service)
            if cfg.s3.enabled:
                await nursery.start(_serve_s3, cfg, service)
            if cfg.admin.enabled:
                await nursery.start(_serve_admin, cfg, service, metrics)
            task_status.started(service)
            await trio.sleep_forever()
    finally:
        metrics.close()
        service.close()


def _tls_context(cfg: Config) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    return ctx


async def _serve_s3(cfg: Config, service: Service, *, task_status: trio.TaskStatus[None]) -> None:
    assert service.s3_root_key is not None
    static = dict([service.s3_root_key])
    if cfg.s3.access_key:
        static[cfg.s3.access_key] = cfg.s3.secret_key
    keys = KeyRing(static, service.s3_secret, None if service.is_primary else service.s3_authenticate_remote)
    api = S3Api(service.local_client(), cfg, keys, observe=service.observe_s3)
    server = HttpServer(
        api.handle,
        server_header="dfs",
        error_response=api.error_response,
        max_connections=cfg.s3.max_connections,
        idle_timeout_s=cfg.s3.idle_timeout_s,
        body_timeout_s=cfg.s3.body_timeout_s,
        ssl_context=_tls_context(cfg) if cfg.s3.https else None,
    )
    listeners = await open_http_listeners(cfg.s3.listen)
    async with trio.open_nursery() as nursery:
        api.nursery = nursery
        await nursery.start(server.serve, listeners)
        # Often enough that an upload outlives its expiry by at most a quarter of it.
        every_s = max(1.0, min(3600.0, cfg.s3.upload_expiry_s / 4))
        nursery.start_soon(service.every, every_s, api.expire_uploads, "multipart upload expiry")
        task_status.started()


async def _serve_admin(
    cfg: Config, service: Service, metrics: Metrics, *, task_status: trio.TaskStatus[None]
) -> None:
    assert service.admin_token is not None
    api = AdminApi(service, cfg, metrics, token=service.admin_token)
    service.admin_api = api
    server = HttpServer(
        api.handle,
        error_response=admin_error_response,
        max_connections=64,
        ssl_context=_tls_context(cfg) if cfg.admin.https else None,
    )
    listeners = await open_http_listeners(cfg.admin.listen)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        task_status.started()


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


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf to read")
@click.option("--data-dir", type=click.Path(file_okay=False), help="override [node] data_dir")
@click.option("--listen", help="override [rpc] listen (HOST:PORT)")
@click.version_option(package_name="dfs")
def main(config_path: str | None, data_dir: str | None, listen: str | None) -> None:
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
        trio.run(_main, cfg)
    except DfsError as exc:
        click.echo(f"dfsd: {exc.message}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"dfsd: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
