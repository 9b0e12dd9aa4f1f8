"""One dfs node, wired: the service and its stores, the RPC listeners, gossip membership, the
S3 and admin endpoints, metrics, and the background workers.

Wiring only: what each part does lives in its own module; this module builds
the parts in order and starts them in one nursery.  :func:`serve` reports the
:class:`Service` as started once every listener accepts connections; cancelling
it stops everything, and the stores are closed after every task has finished.
"""

from __future__ import annotations

import grp
import logging
import ssl

import trio

from daemon.admin import AdminApi, Metrics, instrument_handlers, instrument_inline
from daemon.admin import error_response as admin_error_response
from daemon.cluster.keyring import load_keyring
from daemon.cluster.membership import Membership, node_meta
from daemon.http import HttpServer, open_http_listeners
from daemon.s3 import KeyRing, S3Api
from daemon.service import Service
from daemon.workers import Periodic
from dfs import __version__
from dfs.core import auth, endpoints
from dfs.core.config import Config
from dfs.core.errors import ConfigError
from dfs.net import rpc
from dfs.net.certs import server_context_for

log = logging.getLogger("dfs.daemon")


def _unix_group_gid(cfg: Config) -> int | None:
    name = cfg.rpc.unix_socket_group
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"[rpc] unix_socket_group: no group {name!r} on this host") from None


async def serve(cfg: Config, *, task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED) -> None:
    group_gid = _unix_group_gid(cfg)  # before anything starts: a typo must stop the daemon
    service = Service(cfg)
    metrics = Metrics(node_id=cfg.node_id, version=__version__, tls_cert_file=cfg.tls.cert_file)
    service.set_meta_observer(metrics.observe_meta)
    metrics.watch(service)
    try:
        server = rpc.RpcServer(
            instrument_handlers(service.handlers, metrics),
            max_frame_bytes=cfg.rpc.max_frame_bytes,
            max_inflight_per_conn=cfg.rpc.max_inflight_per_conn,
            inline_handlers=instrument_inline(service.inline_handlers(), metrics),
            validators={ep.name: ep.check_args for ep in endpoints.ALL.values()},
            ssl_context=server_context_for(cfg),
            unix_group_gid=group_gid,
            keys=auth.class_keys(service.secret),
            callers={ep.name: ep.callers for ep in endpoints.ALL.values()},
            max_connections=cfg.rpc.max_connections,
        )
        metrics.watch_rpc(server.stats)
        listeners = await rpc.open_listeners(cfg.rpc.listen)
        if cfg.rpc.unix_socket:
            listeners += await rpc.open_listeners(f"unix:{cfg.unix_socket_path}", unix_group_gid=group_gid)
        lane = service.lane
        lane_listeners = []
        if lane is not None:
            try:
                lane_listeners = await rpc.open_listeners(f"unix:{lane.path}", unix_group_gid=group_gid)
            except ConfigError as exc:
                # e.g. a data_dir path too long for one more socket: mounts go over rpc.sock.
                log.warning("serving no metadata lane: %s", exc.message)
                lane = None
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            if lane is not None:
                metrics.watch_lane(lane)
                await nursery.start(lane.run, lane_listeners[0], server, metrics.observe_rpc, group_gid)
            if cfg.gossip.enabled:
                service.membership = _membership(cfg, service)
                await nursery.start(service.membership.run)
            await nursery.start(service.run_cluster)
            for worker in service.workers:
                nursery.start_soon(worker.run)
            nursery.start_soon(metrics.run, service)
            if cfg.s3.enabled:
                s3: S3Api = await nursery.start(_serve_s3, cfg, service, metrics)
                # Often enough that an upload outlives its expiry by at most a quarter of it.
                every_s = max(1.0, min(3600.0, cfg.s3.upload_expiry_s / 4))
                expiry = Periodic("multipart upload expiry", every_s, s3.expire_uploads)
                service.workers.append(expiry)
                nursery.start_soon(expiry.run)
                if service.is_primary:
                    # Once per cluster: on the daemon leading the cluster-wide duties.
                    lifecycle = Periodic(
                        "s3 lifecycle",
                        cfg.s3.lifecycle_interval_s,
                        service.leadership.only(s3.apply_lifecycle),
                    )
                    service.workers.append(lifecycle)
                    nursery.start_soon(lifecycle.run)
            if cfg.admin.enabled:
                await nursery.start(_serve_admin, cfg, service, metrics)
            task_status.started(service)
            await trio.sleep_forever()
    finally:
        metrics.close()
        service.close()


def _membership(cfg: Config, service: Service) -> Membership:
    """The gossip runner, advertising this node's capacity, layout epoch and hot chunks."""

    def hot() -> list[str]:
        return service.hot.advertised() if service.hot is not None else []

    return Membership(
        cfg,
        lambda: node_meta(cfg, service.chunks.stats, lambda: service.layout_epoch, hot),
        keyring=load_keyring(cfg.data_path, service.secret),
    )


def _tls_context(cfg: Config) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    return ctx


async def _serve_s3(
    cfg: Config, service: Service, metrics: Metrics, *, task_status: trio.TaskStatus[S3Api]
) -> None:
    assert service.s3_root_key is not None
    static = dict([service.s3_root_key])
    if cfg.s3.access_key:
        static[cfg.s3.access_key] = cfg.s3.secret_key
    front = service.frontends
    keys = KeyRing(
        static,
        front.s3_secret,
        None if service.is_primary else front.s3_authenticate_remote,
        front.s3_access if service.is_primary else None,
        None if service.is_primary else front.s3_authenticate_post_remote,
    )
    api = S3Api(service.local_client(), cfg, keys, observe=metrics.observe_s3)
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
        task_status.started(api)


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
        nursery.start_soon(api.run)  # the console's history sampler
        task_status.started()
