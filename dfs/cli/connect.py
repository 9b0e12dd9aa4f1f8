"""Which daemon a command talks to, and one call to it.

A command finds its daemon's dfs.conf (``--config``, a ``dfs up`` directory, or the
default), then reaches it over the local unix socket when there is one, else over TCP
(with TLS when the cluster has it), proving itself with the credential
dfs/net/credentials.py finds (the admin one where this user may read it).
"""

from __future__ import annotations

import ssl
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, NamedTuple

import click

from dfs.core import config as config_mod
from dfs.core.auth import Credential
from dfs.core.config import Config
from dfs.core.endpoints import Endpoint as Method
from dfs.net import credentials
from dfs.net.certs import client_context_for
from dfs.net.rpc import RpcClient, open_client


class Endpoint(NamedTuple):
    """Where to reach a daemon, and the TLS context for it (None: plain, or a unix socket);
    ``peers_ssl`` is the context for the other nodes' TCP ports (commands that visit them all),
    ``credential`` what the command proves itself with on TCP ports."""

    address: str
    ssl_context: ssl.SSLContext | None = None
    peers_ssl: ssl.SSLContext | None = None
    credential: Credential | None = None

    def peer(self, address: str) -> Endpoint:
        """Another node of the cluster, at its RPC address."""
        context = self.peers_ssl or self.ssl_context
        return Endpoint(address, context, context, self.credential)

    def client(self, *, timeout_s: float = 60.0) -> AbstractAsyncContextManager[RpcClient]:
        """An RPC client for this endpoint (connected lazily)."""
        return open_client(
            self.address, call_timeout_s=timeout_s, ssl_context=self.ssl_context, credential=self.credential
        )


def endpoint_of(cfg: Config) -> Endpoint:
    sock = cfg.unix_socket_path
    tls = client_context_for(cfg)
    credential = credentials.find(cfg)
    if cfg.rpc.unix_socket and sock.exists():
        return Endpoint(f"unix:{sock}", None, tls, credential)  # local and mode 0600: no TLS needed
    return Endpoint(cfg.rpc.listen, tls, tls, credential)


async def call(endpoint: Endpoint, method: Method[Any], *args: Any, timeout_s: float = 60.0) -> Any:
    async with endpoint.client(timeout_s=timeout_s) as conn:
        return await method.call(conn, *args)


def config_file_for(directory: str | None, config_path: str | None) -> Path | None:
    """The dfs.conf a command reads: ``--config``, a ``dfs up`` directory's, or None (the
    default: $DFS_CONFIG, /etc/dfs/dfs.conf, else built-in defaults)."""
    if config_path:
        return Path(config_path)
    base = Path(directory or ".").resolve()
    if (base / "var" / "dfs.conf").exists():
        return base / "var" / "dfs.conf"
    return None


def config_for(directory: str | None, config_path: str | None) -> Config:
    return config_mod.load(config_file_for(directory, config_path))


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon"
)


dir_option = click.option(
    "--dir", "directory", type=click.Path(file_okay=False), help="a `dfs up` directory (default: .)"
)
