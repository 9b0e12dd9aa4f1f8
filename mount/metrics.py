"""Metrics of one ``mount.dfs`` process, served for Prometheus on an optional address.

``-o metrics=HOST:PORT`` makes the mount serve ``/metrics`` with its FUSE
operation latencies (``dfs_fuse_op_seconds{op}``), errors by errno
(``dfs_fuse_errors_total{op,errno}``) and the times its metadata calls moved to
another daemon (``dfs_fuse_meta_failovers_total``).  The mount runs no HTTP server of its
own, so prometheus_client's threaded one serves the registry.
"""

from __future__ import annotations

import errno as errno_mod
import threading
from collections.abc import Iterable
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric

from dfs.core.metrics import LATENCY_BUCKETS


class FailoverSource(Protocol):
    """The mount's metadata caller (dfs/net/failover.py): how often it changed daemons."""

    switches: int


class _FailoverCollector:
    """Reads the caller's switch count at scrape time (one int, no lock: a scrape that misses
    the latest increment shows it at the next)."""

    def __init__(self, source: FailoverSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "dfs_fuse_meta_failovers",
            "Times the mount moved its metadata calls to another daemon (its daemon was unreachable)",
        )
        family.add_metric([], float(self._source.switches))
        return [family]


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

    def watch_failover(self, source: FailoverSource) -> None:
        """Export ``source.switches`` as ``dfs_fuse_meta_failovers_total`` (0 until one happens)."""
        self.registry.register(_FailoverCollector(source))

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
