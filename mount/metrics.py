"""Metrics of one ``mount.dfs`` process, served for Prometheus on an optional address.

``-o metrics=HOST:PORT`` makes the mount serve ``/metrics`` with its FUSE
operation latencies (``dfs_fuse_op_seconds{op}``) and errors by errno
(``dfs_fuse_errors_total{op,errno}``).  The mount runs no HTTP server of its
own, so prometheus_client's threaded one serves the registry.
"""

from __future__ import annotations

import errno as errno_mod
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server

from dfs.core.metrics import LATENCY_BUCKETS


class MountMetrics:
    """Metrics of one mount.dfs process: FUSE operation latency and errors by errno.

    ``op`` values are FUSE operation names (lookup, getattr, read...), a closed
    set; errno labels are symbolic names (ENOENT), also a closed set.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.op_seconds = Histogram(
            "dfs_fuse_op_seconds",
            "FUSE operation time, kernel request to reply",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "dfs_fuse_errors_total",
            "FUSE operations answered with an error, by operation and errno name",
            ["op", "errno"],
            registry=self.registry,
        )
        if process_metrics:
            ProcessCollector(namespace="dfs", registry=self.registry)

    def observe(self, op: str, seconds: float, errno: int | None) -> None:
        """One answered operation; ``errno`` is None on success."""
        self.op_seconds.labels(op).observe(seconds)
        if errno is not None:
            self.errors.labels(op, errno_mod.errorcode.get(errno, str(errno))).inc()


def _mount_split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address must be HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def serve_mount_metrics(address: str, registry: CollectorRegistry) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` at http://ADDRESS/metrics from a daemon thread; returns (server, thread).

    The mount has no trio HTTP server, so prometheus_client's own threaded
    server is used.  Call ``server.shutdown()`` to stop it.
    """
    host, port = _mount_split_address(address)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, thread
