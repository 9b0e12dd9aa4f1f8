"""Prometheus metrics of one dfsd (a mount's own are in :mod:`mount.metrics`).

Everything lives on a dedicated :class:`~prometheus_client.CollectorRegistry`
owned by a :class:`Metrics` instance, never on prometheus_client's global
registry: several daemons may run in one process (the in-process cluster
tests), and each must export only its own numbers.

Names follow ``dfs_<subsystem>_<noun>_<unit>``; label values always come from
closed sets (RPC method names declared in dfs/core/endpoints.py, S3 operation names
chosen by the shim, admin route templates, fixed ``kind`` values), never from
request data, so the number of series is bounded.

Invariants:

- Nothing here blocks the event loop.  Values that cost I/O to obtain
  (statvfs of the chunk store, namespace counts from SQLite) are read in
  worker threads by :meth:`Metrics.refresh`, which :meth:`Metrics.run` calls
  every few seconds; the collector only reads the cached snapshot.  The
  namespace counts use a dedicated read-only SQLite connection, so a full
  count never queues behind (or holds up) the metadata writer thread.
- Hot-path observations (:func:`instrument_handlers`,
  :func:`instrument_inline`, :meth:`Metrics.observe_s3`) cost a couple of
  ``perf_counter`` calls and two locked increments; label children of the
  RPC metrics are resolved once per method, not per call.
- A wrapped RPC handler behaves exactly like the original, including the
  RPC layer's "wrong arguments are InvalidArgument" contract (see
  :func:`_call_checked`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio
from cryptography import x509
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from daemon.meta.store import SCAN_CACHE_BYTES
from dfs.core import endpoints
from dfs.core.endpoints import declared
from dfs.core.errors import DfsError, InvalidArgument
from dfs.core.metrics import LATENCY_BUCKETS
from dfs.core.placement import NodeState
from dfs.core.replicas import DOWN_STATES

if TYPE_CHECKING:
    # Type names only: the metrics read these objects off the node, they never build them.
    from daemon.chunks import ChunkStore
    from daemon.cluster.hot import HotChunks
    from daemon.cluster.membership import Membership
    from daemon.cluster.repair import Repair
    from daemon.meta import MetaStore
    from dfs.client.chunks import ChunkIO
    from dfs.net.rpc import RpcStats

log = logging.getLogger("dfs.metrics")

T = TypeVar("T")
AsyncHandler = Callable[..., Awaitable[Any]]
SyncHandler = Callable[..., Any]

# The text format every Prometheus version scrapes; generate_latest() writes exactly this.
try:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as _TEXT_CONTENT_TYPE
except ImportError:  # prometheus_client < 0.21 only knows the one text format
    from prometheus_client.exposition import CONTENT_TYPE_LATEST as _TEXT_CONTENT_TYPE

# Event-loop lag: a healthy loop stays under a millisecond; gossip starts suspecting us near a second.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_PROBE_INTERVAL_S = 0.25
REFRESH_INTERVAL_S = 5.0
# A certificate chain file is a few KiB; anything past this is not one.
_MAX_CERT_BYTES = 1 << 20

# dfs_chunk_store_bytes{kind} <- ChunkStore.stats() keys.
_STORE_KINDS = (
    ("total", "total_bytes"),
    ("free", "free_bytes"),
    ("avail", "avail_bytes"),
    ("stored", "used_bytes"),
)


class MetricsSource(Protocol):
    """What :meth:`Metrics.refresh` reads off the node: the chunk store's usage and, on the
    metadata primary, the namespace counts (through a read-only connection of its own)."""

    @property
    def is_primary(self) -> bool: ...

    @property
    def chunks(self) -> ChunkStore: ...

    @property
    def meta(self) -> MetaStore: ...


class RemarkSource(Protocol):
    """The re-mark worker's figures (daemon/service/remarker.py)."""

    marked: int
    changed: int

    def status(self) -> dict[str, Any] | None: ...


class LeaderSource(Protocol):
    """Who runs the cluster-wide duties (daemon/service/leadership.py)."""

    @property
    def leader(self) -> bool: ...

    changes: int


class ClusterSource(Protocol):
    """What :meth:`Metrics.watch` exports: the node's cluster figures, from live objects that
    stay None until (and unless) the daemon starts them."""

    @property
    def is_primary(self) -> bool: ...

    @property
    def leadership(self) -> LeaderSource: ...

    def layout_states(self) -> Mapping[str, str]: ...

    @property
    def layout_epoch(self) -> int: ...

    @property
    def marked_out(self) -> int: ...

    @property
    def membership(self) -> Membership | None: ...

    @property
    def repair(self) -> Repair | None: ...

    @property
    def hot(self) -> HotChunks | None: ...

    @property
    def chunkio(self) -> ChunkIO | None: ...

    @property
    def remark(self) -> RemarkSource: ...

    def tier_figures(self) -> Mapping[str, float]: ...


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its Content-Type.

    Runs every collector (including ProcessCollector's /proc reads): call it
    from a worker thread when on the event loop.
    """
    return generate_latest(registry), _TEXT_CONTENT_TYPE


@dataclass(frozen=True)
class Snapshot:
    """Values read off the event loop by :meth:`Metrics.refresh`; replaced whole, never mutated."""

    store: Mapping[str, int] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    # volume -> (snapshots held, created_ns of the newest): from the snapshot registry.
    snapshots: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # volume -> its quota row (limits and usage, daemon/meta/quotas.py), and the byte limits
    # promised in all (thin provisioning): read off the accounting rows, never by a walk.
    volumes: Mapping[str, Mapping[str, int | None]] = field(default_factory=dict)
    provisioned_bytes: int | None = None
    # not_after of [tls] cert_file as a Unix time; None: no certificate configured (or unreadable).
    tls_cert_expiry_s: float | None = None
    refreshed_at: float | None = None  # time.time() of the refresh; None: never refreshed
    # Per data disk (daemon/disks.py DiskSet.disk_report): path, state, free bytes, error counts.
    disks: tuple[Mapping[str, Any], ...] = ()


class _CachedCollector:
    """Exports the last :class:`Snapshot`; collect() does no I/O."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Lets the registry detect name clashes at registration time.
        return self._families(Snapshot())

    def collect(self) -> Iterable[Metric]:
        return self._families(self._metrics.snapshot)

    @staticmethod
    def _families(snap: Snapshot) -> list[Metric]:
        store, counts = snap.store, snap.counts
        out: list[Metric] = []
        sizes = GaugeMetricFamily(
            "dfs_chunk_store_bytes",
            "Chunk store filesystem size, free bytes, bytes free to the daemon (avail), and bytes stored",
            labels=["kind"],
        )
        for kind, key in _STORE_KINDS:
            if key in store:
                sizes.add_metric([kind], float(store[key]))
        out.append(sizes)
        out.append(
            _gauge("dfs_chunk_store_chunks", "Chunks held by this node's store", store.get("chunk_count"))
        )
        failures = CounterMetricFamily(
            "dfs_chunk_checksum_failures", "Chunk reads that failed verification since start"
        )
        if "checksum_failures" in store:
            failures.add_metric([], float(store["checksum_failures"]))
        out.append(failures)
        out.extend(_disk_families(snap.disks))
        out.append(
            _gauge(
                "dfs_meta_inodes", "Inodes in the namespace (live and open-unlinked)", counts.get("inodes")
            )
        )
        out.append(_gauge("dfs_meta_files", "Regular files in the namespace", counts.get("files")))
        out.append(_gauge("dfs_meta_chunks", "Chunks known to the metadata service", counts.get("chunks")))
        out.append(_gauge("dfs_meta_logical_bytes", "Sum of regular file sizes", counts.get("logical_bytes")))
        # MetaStore.counts() has no open-file total today; exported as soon as it reports one.
        out.append(_gauge("dfs_open_files", "Files held open by client sessions", counts.get("open_files")))
        # Labelled by volume: volumes are made by admins, so the series stay few.
        held = GaugeMetricFamily("dfs_snapshots", "Snapshots held, by volume", labels=["volume"])
        newest = GaugeMetricFamily(
            "dfs_snapshot_last_success_timestamp_seconds",
            "When the volume's newest snapshot (manual or scheduled) was taken",
            labels=["volume"],
        )
        for volume, (count, last_ns) in sorted(snap.snapshots.items()):
            held.add_metric([volume], float(count))
            newest.add_metric([volume], last_ns / 1e9)
        out += [held, newest]
        out.append(
            _gauge(
                "dfs_quota_provisioned_bytes",
                "Sum of directory byte quotas not nested in another (may exceed capacity: thin "
                'provisioning; compare with dfs_chunk_store_bytes{kind="total"})',
                snap.provisioned_bytes,
            )
        )
        families = {
            "used_bytes": GaugeMetricFamily(
                "dfs_volume_used_bytes", "Logical bytes (st_size) in the volume", labels=["volume"]
            ),
            "used_stored_bytes": GaugeMetricFamily(
                "dfs_volume_stored_bytes",
                "Bytes stored for the volume's files (compressed)",
                labels=["volume"],
            ),
            "used_inodes": GaugeMetricFamily("dfs_volume_inodes", "Inodes in the volume", labels=["volume"]),
            "max_bytes": GaugeMetricFamily(
                "dfs_volume_quota_bytes", "The volume's byte quota (absent: none)", labels=["volume"]
            ),
            "max_inodes": GaugeMetricFamily(
                "dfs_volume_quota_inodes", "The volume's inode quota (absent: none)", labels=["volume"]
            ),
            "trash_bytes": GaugeMetricFamily(
                "dfs_volume_trash_bytes",
                "Logical bytes in the volume's trash (not in its used bytes; absent: empty)",
                labels=["volume"],
            ),
            "trash_entries": GaugeMetricFamily(
                "dfs_volume_trash_entries", "Files in the volume's trash (absent: empty)", labels=["volume"]
            ),
        }
        for volume, row in sorted(snap.volumes.items()):
            for key, family in families.items():
                value = row.get(key)
                if value is not None:
                    family.add_metric([volume], float(value))
        out += families.values()
        out.append(
            _gauge(
                "dfs_tls_certificate_expiry_timestamp_seconds",
                "When the node's TLS certificate ([tls] cert_file) expires (absent: none configured)",
                snap.tls_cert_expiry_s,
            )
        )
        return out


class _ClusterCollector:
    """Membership, layout, repair and replication figures, read from live objects (no I/O)."""

    def __init__(self, source: ClusterSource, started_at: float) -> None:
        self._source = source
        self._started_at = started_at

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily: the daemon's objects appear as it starts

    def collect(self) -> Iterable[Metric]:
        svc = self._source
        out: list[Metric] = [
            _gauge("dfs_layout_epoch", "Layout epoch this node last saw", svc.layout_epoch),
            _counter(
                "dfs_layout_nodes_marked_out",
                "Nodes the controller marked out (dead past the grace period)",
                svc.marked_out,
            ),
        ]
        members = GaugeMetricFamily("dfs_gossip_members", "Known members by gossip status", labels=["status"])
        events = CounterMetricFamily(
            "dfs_gossip_events", "Membership changes seen (join, suspect, dead, alive...)", labels=["kind"]
        )
        dropped = CounterMetricFamily(
            "dfs_gossip_packets_dropped",
            "Gossip packets that did not open: bad (forged, or not under a key we hold), stale, replayed",
            labels=["reason"],
        )
        if svc.membership is not None:
            by_status: dict[str, int] = {}
            for m in svc.membership.members():
                by_status[m["status"]] = by_status.get(m["status"], 0) + 1
            for status, n in sorted(by_status.items()):
                members.add_metric([status], float(n))
            for kind, n in sorted(svc.membership.event_counts.items()):
                events.add_metric([kind], float(n))
            for reason, n in sorted(svc.membership.packets_dropped.items()):
                dropped.add_metric([reason], float(n))
        out += [members, events, dropped]
        out += self._layout_families(svc)
        # With SQLite only the primary can lead; a secondary's Leadership says "leader" (it has
        # nothing to contend for), so the flag is ANDed with is_primary.
        out += [
            _gauge(
                "dfs_meta_leader",
                "1 while this daemon runs the cluster-wide duties (GC, marking dead nodes out...)",
                1.0 if svc.is_primary and svc.leadership.leader else 0.0,
            ),
            _counter(
                "dfs_meta_leader_changes",
                "Times this daemon took over or lost the cluster-wide duties after its first attempt "
                "(a metadata failover)",
                svc.leadership.changes,
            ),
        ]
        if svc.repair is not None:
            st = svc.repair.stats
            out += [
                _gauge(
                    "dfs_repair_under_replicated_chunks",
                    "Chunks this node leads with < R copies",
                    st.under_replicated,
                ),
                _gauge("dfs_repair_misplaced_chunks", "Copies here that belong on other nodes", st.misplaced),
                _gauge(
                    "dfs_repair_hints_pending",
                    "Copies this node owes to nodes that were down",
                    st.hints_pending,
                ),
                _gauge(
                    "dfs_repair_last_round_seconds",
                    "Duration of the last anti-entropy round",
                    st.last_round_s,
                ),
                # Before the first round: the daemon's start, so "no round for an hour" also
                # catches a repair loop that never finishes one (and a new daemon is not an hour late).
                _gauge(
                    "dfs_repair_last_round_timestamp_seconds",
                    "When the last anti-entropy round ended (the daemon's start until one has)",
                    st.last_round_at if st.rounds else self._started_at,
                ),
                _counter("dfs_repair_rounds", "Anti-entropy rounds completed", st.rounds),
                _counter("dfs_repair_round_errors", "Anti-entropy rounds that failed", st.errors),
                _counter("dfs_repair_copies", "Chunk copies made by repair", st.copies_made),
                _counter("dfs_repair_bytes_moved", "Bytes sent by repair", st.bytes_moved),
                _counter(
                    "dfs_repair_surplus_removed", "Surplus copies removed after re-homing", st.surplus_removed
                ),
                _counter("dfs_repair_hints_delivered", "Owed copies delivered", st.hints_delivered),
                _counter(
                    "dfs_repair_corrupt_replaced",
                    "Corrupt copies replaced from a replica",
                    st.corrupt_replaced,
                ),
            ]
            if svc.repair.scrubber is not None:
                sc = svc.repair.scrubber.statistics()
                out += [
                    _counter(
                        "dfs_scrub_bytes_checked", "Bytes verified by the scrubber", sc["bytes_checked"]
                    ),
                    _counter(
                        "dfs_scrub_corrupt_found", "Corrupt copies found by the scrubber", sc["corrupt_found"]
                    ),
                ]
        if svc.hot is not None:
            hot = svc.hot.status()
            out += [
                _gauge(
                    "dfs_hot_chunks", "Chunks this node has given temporary extra copies", hot["hot_chunks"]
                ),
                _gauge(
                    "dfs_hot_copies_held",
                    "Pinned extra copies of hot chunks held here",
                    hot["hot_copies_held"],
                ),
                _counter(
                    "dfs_hot_promotions", "Extra copies of hot chunks made or renewed", hot["hot_promotions"]
                ),
            ]
        tiers = svc.tier_figures()
        if tiers:  # cloud tiers (daemon/service/tiering.py): reads here, moves by the leader
            out += [
                _counter("dfs_tier_cold_reads", "Chunk reads served from a cloud tier", tiers["cold_reads"]),
                _counter(
                    "dfs_tier_cold_read_bytes",
                    "Bytes of chunks read from cloud tiers",
                    tiers["cold_read_bytes"],
                ),
                _counter(
                    "dfs_tier_cold_read_seconds",
                    "Seconds spent reading chunks from cloud tiers (divide by reads for latency)",
                    tiers["cold_read_seconds"],
                ),
                _counter(
                    "dfs_tier_cold_read_failures",
                    "Chunk reads no tier could serve",
                    tiers["cold_read_failures"],
                ),
                _counter(
                    "dfs_tier_moved_bytes",
                    "Bytes copied to cloud tiers by tiering passes",
                    tiers["moved_bytes"],
                ),
                _counter(
                    "dfs_tier_chunks_made_cold",
                    "Chunks whose local copies left for tiers",
                    tiers["made_cold"],
                ),
                _counter(
                    "dfs_tier_errors",
                    "Errors tiering passes met (a tier down, a chunk unreadable)",
                    tiers["errors"],
                ),
            ]
        remark = svc.remark.status()
        if remark is not None:  # the daemon that runs the re-mark duty (daemon/service/remarker.py)
            out += [
                _gauge("dfs_policy_remark_jobs", "Subtrees whose chunks await re-marking", remark["jobs"]),
                _gauge(
                    "dfs_policy_remark_chunks_total",
                    "Block references the pending jobs cover",
                    remark["total"],
                ),
                _gauge(
                    "dfs_policy_remark_chunks_marked",
                    "Block references the pending jobs marked",
                    remark["marked"],
                ),
                _counter("dfs_policy_remarked_chunks", "Block references re-marked", svc.remark.marked),
                _counter(
                    "dfs_policy_remark_changed_chunks", "Chunk factors re-marking changed", svc.remark.changed
                ),
            ]
        if svc.chunkio is not None:
            io = svc.chunkio.stats
            out += [
                _counter("dfs_replication_hints_written", "Copies left owed by this node's writes", io.hints),
                _counter("dfs_replication_substitutes", "Copies sent to a substitute node", io.substitutes),
                _counter(
                    "dfs_replication_read_fallbacks",
                    "Chunk reads that had to try another node",
                    io.read_fallbacks,
                ),
            ]
        return out

    @staticmethod
    def _layout_families(svc: ClusterSource) -> list[Metric]:
        """Layout nodes by state, and whether each node the layout counts on is up.

        Both come from the layout this node last read (cached by the cluster runner) and its
        gossip table: a few dozen entries at most, no I/O.  Every state is exported, 0
        included, so a query for "draining" nodes has a series before any node drains.
        """
        states = svc.layout_states()
        nodes = GaugeMetricFamily("dfs_layout_nodes", "Nodes in the layout, by state", labels=["state"])
        for state in NodeState:
            nodes.add_metric([state.value], float(sum(1 for s in states.values() if s == state.value)))
        up = GaugeMetricFamily(
            "dfs_cluster_member_up",
            "Per layout node not marked out: 1 while this node's gossip sees it alive or suspect, "
            "0 once dead or left",
            labels=["member"],
        )
        members = svc.membership.members() if svc.membership is not None else []
        seen = {str(m["node_id"]): str(m["status"]) for m in members}
        for node_id, node_state in sorted(states.items()):
            if node_state != NodeState.OUT.value:
                # A member gossip has not heard of yet counts as up, as the replica view has it.
                up.add_metric([node_id], 0.0 if seen.get(node_id) in DOWN_STATES else 1.0)
        return [nodes, up]


class LaneSource(Protocol):
    """What :meth:`Metrics.watch_lane` exports: the metadata lane's counters."""

    answered_here: int
    answered_on_loop: int
    refused: int

    @property
    def connections_open(self) -> int: ...


class _LaneCollector:
    """The metadata lane's calls by where they were answered, read at scrape time."""

    def __init__(self, lane: LaneSource) -> None:
        self._lane = lane

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        lane = self._lane
        calls = CounterMetricFamily(
            "dfs_rpc_lane_calls",
            "Calls on the metadata lane: answered by its own thread (lane), or on the event loop "
            "(loop: calls it does not run itself, and every call while another mount listens)",
            labels=["answered"],
        )
        calls.add_metric(["lane"], float(lane.answered_here))
        calls.add_metric(["loop"], float(lane.answered_on_loop))
        refused = CounterMetricFamily(
            "dfs_rpc_lane_connections_refused",
            "Metadata lane connections closed after one error frame (peer, limit, no ticket)",
        )
        refused.add_metric([], float(lane.refused))
        return [
            calls,
            refused,
            _gauge("dfs_rpc_lane_connections_open", "Metadata lane connections open", lane.connections_open),
        ]


class _RpcCollector:
    """Who the RPC port turned away: read off the server's counters at scrape time."""

    def __init__(self, stats: RpcStats) -> None:
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        st = self._stats
        refused = CounterMetricFamily(
            "dfs_rpc_connections_refused",
            "RPC connections closed after one error frame: auth (no or a failed handshake), "
            "unix_peer (a unix socket caller not allowed), limit (over [rpc] max_connections)",
            labels=["reason"],
        )
        refused.add_metric(["auth"], float(st.auth_failures))
        refused.add_metric(["unix_peer"], float(st.peers_refused))
        refused.add_metric(["limit"], float(st.connections_refused))
        calls = CounterMetricFamily(
            "dfs_rpc_calls_refused",
            "RPC calls refused because the caller's class may not make them",
            labels=["method"],
        )
        for method, n in sorted(st.calls_refused.items()):
            calls.add_metric([method], float(n))
        return [
            refused,
            calls,
            _gauge("dfs_rpc_connections_open", "RPC connections open", st.connections_open),
        ]


class _CertExpiry:
    """The ``not_after`` of a PEM certificate file, parsed again only when the file changes.

    A renewal replaces the file (``dfs node cert`` renames a new one into place), so its
    (inode, mtime, size) changes; between renewals a refresh costs one stat().
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._expiry_s: float | None = None
        self._error = ""  # the last failure, logged once rather than at every refresh

    def read(self) -> float | None:
        """Worker thread: the certificate's expiry as a Unix time; None without a readable one."""
        if not self._path:
            return None
        try:
            st = os.stat(self._path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._seen:
                with open(self._path, "rb") as f:
                    pem = f.read(_MAX_CERT_BYTES)
                cert = x509.load_pem_x509_certificate(pem)
                self._seen, self._expiry_s = key, cert.not_valid_after_utc.timestamp()
        except (OSError, ValueError) as exc:
            # The daemon loaded this file at start; a broken replacement shows as a missing series
            # (and the next restart would fail loudly), not as a failed refresh.
            if str(exc) != self._error:
                log.warning("cannot read the TLS certificate %s: %s", self._path, exc)
            self._seen, self._expiry_s, self._error = None, None, str(exc)
        return self._expiry_s


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[])
    family.add_metric([], float(value))
    return family


_DISK_STATES = ("ok", "draining", "drained", "failed")


def _disk_families(disks: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """Per data disk (few per host, so the series stay few): state one-hot, errors, free bytes."""
    state = GaugeMetricFamily(
        "dfs_disk_state",
        "1 for the data disk's current state (ok, draining, drained, failed)",
        labels=["disk", "state"],
    )
    errors = CounterMetricFamily(
        "dfs_disk_errors",
        "Errors a data disk gave since start, by kind (io, checksum)",
        labels=["disk", "kind"],
    )
    free = GaugeMetricFamily(
        "dfs_disk_free_bytes", "Bytes free to the daemon on a data disk", labels=["disk"]
    )
    for d in disks:
        path = str(d["path"])
        for name in _DISK_STATES:
            state.add_metric([path, name], 1.0 if d["state"] == name else 0.0)
        errors.add_metric([path, "io"], float(d["io_errors"]))
        errors.add_metric([path, "checksum"], float(d["checksum_errors"]))
        free.add_metric([path], float(d["free_bytes"]))
    return [state, errors, free]


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[])
    if value is not None:
        family.add_metric([], float(value))
    return family


class Metrics:
    """All metrics of one daemon, on its own registry.

    Observation methods are cheap; :meth:`run` is the
    background task that keeps the cached values and the loop-lag probe
    going.  Call :meth:`close` when the daemon stops (closes the metrics'
    SQLite connection).
    """

    def __init__(
        self,
        *,
        node_id: str,
        version: str,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
        tls_cert_file: str = "",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.started_at = time.time()
        self._tls_cert = _CertExpiry(tls_cert_file)
        reg = self.registry

        self.rpc_requests = Counter(
            "dfs_rpc_requests_total",
            "RPC requests handled, by method and outcome (ok, error, cancelled)",
            ["method", "outcome"],
            registry=reg,
        )
        self.rpc_seconds = Histogram(
            "dfs_rpc_request_seconds", "RPC handler time", ["method"], buckets=LATENCY_BUCKETS, registry=reg
        )
        self.s3_requests = Counter(
            "dfs_s3_requests_total",
            "S3 requests, by operation and HTTP status",
            ["operation", "status"],
            registry=reg,
        )
        self.s3_seconds = Histogram(
            "dfs_s3_request_seconds", "S3 request time", ["operation"], buckets=LATENCY_BUCKETS, registry=reg
        )
        self.s3_bytes_in = Counter("dfs_s3_bytes_in_total", "Request body bytes received by S3", registry=reg)
        self.s3_bytes_out = Counter("dfs_s3_bytes_out_total", "Response body bytes sent by S3", registry=reg)
        self.admin_requests = Counter(
            "dfs_admin_requests_total",
            "Admin API requests, by route and HTTP status",
            ["route", "status"],
            registry=reg,
        )
        self.meta_op_seconds = Histogram(
            "dfs_meta_op_seconds",
            "Metadata write transaction time",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.loop_lag = Gauge(
            "dfs_event_loop_lag_seconds", "Latest event-loop lag (sleep overshoot) measured", registry=reg
        )
        # A histogram needs its own family name: _bucket/_sum/_count would clash with the gauge.
        self.loop_lag_hist = Histogram(
            "dfs_event_loop_lag_histogram_seconds",
            f"Event-loop lag measured every {LAG_PROBE_INTERVAL_S} s",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.build_info = Gauge(
            "dfs_build_info", "Always 1; labels name the build", ["version", "node"], registry=reg
        )
        self.build_info.labels(version, node_id).set(1)
        reg.register(_CachedCollector(self))
        if process_metrics:
            ProcessCollector(namespace="dfs", registry=reg)

        self.snapshot = Snapshot()
        self.last_loop_lag_s = 0.0
        # Plain totals for the admin JSON summary (reading them back out of prometheus is costly).
        self.requests_served: dict[str, int] = {"rpc": 0, "s3": 0, "admin": 0}
        self._refresh_lock = trio.Lock()  # one refresh at a time: the reader below is not shared
        self._reader: MetaStore | None = None
        self._reader_guard = threading.Lock()  # close() vs a refresh thread using the reader
        self._closed = False

    def watch(self, source: ClusterSource) -> None:
        """Export the daemon's membership, layout, repair and replication figures."""
        self.registry.register(_ClusterCollector(source, self.started_at))

    def watch_rpc(self, stats: RpcStats) -> None:
        """Export the RPC server's refusals (connections and calls)."""
        self.registry.register(_RpcCollector(stats))

    def watch_lane(self, lane: LaneSource) -> None:
        """Export the metadata lane's counters (daemon/service/lane.py)."""
        self.registry.register(_LaneCollector(lane))

    # -- observations ----------------------------------------------------------------
    # observe_meta may run in any thread (prometheus values are locked); the others touch the
    # plain ``requests_served`` ints too, so they belong on the event loop, where their callers are.
    def observe_s3(self, operation: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        """One finished S3 request; ``operation`` is the S3 action name (GetObject, PutObject...)."""
        self.s3_requests.labels(operation, str(status)).inc()
        self.s3_seconds.labels(operation).observe(seconds)
        if bytes_in:
            self.s3_bytes_in.inc(bytes_in)
        if bytes_out:
            self.s3_bytes_out.inc(bytes_out)
        self.requests_served["s3"] += 1

    def observe_admin(self, route: str, status: int) -> None:
        """One admin request; ``route`` is the route template, never the raw path."""
        self.admin_requests.labels(route, str(status)).inc()
        self.requests_served["admin"] += 1

    def observe_rpc(self, method: str, ok: bool, seconds: float) -> None:
        """One call answered outside the RPC server's handlers: the metadata lane's own
        (daemon/service/lane.py), under the method meta.once made."""
        self.rpc_requests.labels(method, "ok" if ok else "error").inc()
        self.rpc_seconds.labels(method).observe(seconds)
        self.requests_served["rpc"] += 1

    def observe_meta(self, op: str, seconds: float) -> None:
        """One metadata write transaction (the service times its metadata-thread calls)."""
        self.meta_op_seconds.labels(op).observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self.last_loop_lag_s = seconds
        self.loop_lag.set(seconds)
        self.loop_lag_hist.observe(seconds)

    # -- cached values ----------------------------------------------------------------
    async def refresh(self, node: MetricsSource) -> Snapshot:
        """Read store usage and namespace counts in worker threads and cache them."""
        async with self._refresh_lock:
            store = await trio.to_thread.run_sync(node.chunks.stats)
            counts = await trio.to_thread.run_sync(self._counts, node)
            snaps = await trio.to_thread.run_sync(self._snapshot_stats, node)
            volumes, provisioned = await trio.to_thread.run_sync(self._quota_stats, node)
            cert_expiry_s = await trio.to_thread.run_sync(self._tls_cert.read)
            disks = await trio.to_thread.run_sync(node.chunks.disk_report)
            self.snapshot = Snapshot(
                store=store,
                counts=counts,
                snapshots=snaps,
                volumes=volumes,
                provisioned_bytes=provisioned,
                tls_cert_expiry_s=cert_expiry_s,
                refreshed_at=time.time(),
                disks=tuple(disks),
            )
            return self.snapshot

    async def current(self, node: MetricsSource, *, max_age_s: float = REFRESH_INTERVAL_S * 2) -> Snapshot:
        """The cached snapshot, refreshed first when older than ``max_age_s`` (or never taken)."""
        snap = self.snapshot
        if snap.refreshed_at is None or time.time() - snap.refreshed_at > max_age_s:
            snap = await self.refresh(node)
        return snap

    def _scan_reader(self, node: MetricsSource) -> MetaStore:
        """The metrics' own reader (under ``_reader_guard``), opened on first use.  A small page
        cache: its scans read each page once, and kept, they only grew the daemon's RSS."""
        if self._reader is None:
            self._reader = node.meta.reader(cache_bytes=SCAN_CACHE_BYTES)
        return self._reader

    def _counts(self, node: MetricsSource) -> dict[str, int]:
        # Worker thread.  A private read-only connection: WAL readers neither wait for nor block
        # the writer, and counts() scans whole tables, too slow for the event-loop reader.
        with self._reader_guard:
            if self._closed:
                return dict(self.snapshot.counts)
            if not node.is_primary:
                return {}  # the namespace lives on the metadata primary; its /metrics has the counts
            return self._scan_reader(node).counts()

    def _snapshot_stats(self, node: MetricsSource) -> dict[str, tuple[int, int]]:
        # Worker thread, the same private reader as _counts: one indexed scan of the registry.
        with self._reader_guard:
            if self._closed:
                return dict(self.snapshot.snapshots)
            if not node.is_primary:
                return {}
            out: dict[str, tuple[int, int]] = {}
            for row in self._scan_reader(node).list_snapshots():
                count, last = out.get(row["volume"], (0, 0))
                out[row["volume"]] = (count + 1, max(last, row["created_ns"]))
            return out

    def _quota_stats(self, node: MetricsSource) -> tuple[dict[str, dict[str, int | None]], int | None]:
        # Worker thread, the same private reader: one row per volume, and one sum.
        with self._reader_guard:
            if self._closed:
                return dict(self.snapshot.volumes), self.snapshot.provisioned_bytes  # type: ignore[arg-type]
            if not node.is_primary:
                return {}, None
            reader = self._scan_reader(node)
            volumes: dict[str, dict[str, int | None]] = {}
            for vol in reader.list_volumes():
                row = reader.get_quota(int(vol["ino"]))
                if row is not None:
                    volumes[str(vol["name"])] = row
            for usage in reader.trash_usage():  # one grouped scan of the trash table
                name = str(usage["volume"])
                if name in volumes:
                    volumes[name] = {
                        **volumes[name],
                        "trash_bytes": int(usage["bytes"]),
                        "trash_entries": int(usage["entries"]),
                    }
            return volumes, reader.provisioned_bytes()

    def close(self) -> None:
        """Release the metrics' SQLite connection; idempotent."""
        with self._reader_guard:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- background task ----------------------------------------------------------------
    async def run(self, node: MetricsSource, *, refresh_interval_s: float = REFRESH_INTERVAL_S) -> None:
        """Keep the cached values fresh and probe event-loop lag until cancelled; closes on exit."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe_loop_lag)
                while True:
                    try:
                        await self.refresh(node)
                    except DfsError as exc:
                        log.warning("metrics refresh failed: %s", exc.message)
                    except Exception:
                        log.exception("metrics refresh failed")
                    await trio.sleep(refresh_interval_s)
        finally:
            self.close()

    async def _probe_loop_lag(self) -> None:
        # A sleep that overshoots means some task held the loop: exactly what gossip peers would
        # see as our slowness (DESIGN: "the daemon measures its own loop lag and exports it").
        while True:
            start = trio.current_time()
            await trio.sleep(LAG_PROBE_INTERVAL_S)
            self.observe_loop_lag(max(0.0, trio.current_time() - start - LAG_PROBE_INTERVAL_S))


# -- RPC handler instrumentation ---------------------------------------------------------


def _call_checked(method: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """``fn(*args)``; a TypeError from the call itself (bad arity) becomes InvalidArgument.

    The RPC layer maps such TypeErrors to InvalidArgument by checking that the
    traceback ends in its own frame; behind a wrapper it would end one frame
    deeper and turn into an InternalError, so the wrapper applies the same
    rule with the same message.
    """
    try:
        return fn(*args)
    except TypeError as exc:
        tb = exc.__traceback__
        if tb is not None and tb.tb_next is None:
            raise InvalidArgument(f"{method}: bad arguments: {exc}") from None
        raise


def instrument_handlers(handlers: Mapping[str, AsyncHandler], metrics: Metrics) -> dict[str, AsyncHandler]:
    """Wrap each async RPC handler to count and time it (``dfs_rpc_*{method}``).

    The label is the endpoint's declared name: a handler without a declaration is a
    KeyError here, so the label set stays the registry's closed set.  A meta.once call is
    labelled with the endpoint it wraps (a mount sends most changes that way)."""
    timed = {method: _timed_async(declared(method).name, fn, metrics) for method, fn in handlers.items()}
    once = endpoints.META_ONCE.name
    if once in handlers:
        timed[once] = _timed_once(handlers[once], timed[once], metrics)
    return timed


def _timed_once(fn: AsyncHandler, unwrapped: AsyncHandler, metrics: Metrics) -> AsyncHandler:
    """meta.once (request_id, retried, method, args), timed under ``method``'s label when that is
    an endpoint meta.once makes (else under meta.once's own, by ``unwrapped``)."""
    by_method = {name: _timed_async(name, fn, metrics) for name, ep in endpoints.ALL.items() if ep.once}

    @functools.wraps(fn)
    async def call(*args: Any) -> Any:
        timed = by_method.get(args[2]) if len(args) == 4 and isinstance(args[2], str) else None
        return await (timed or unwrapped)(*args)

    return call


def instrument_inline(handlers: Mapping[str, SyncHandler], metrics: Metrics) -> dict[str, SyncHandler]:
    """Same as :func:`instrument_handlers` for the synchronous inline (read) handlers."""
    return {method: _timed_sync(declared(method).name, fn, metrics) for method, fn in handlers.items()}


def _timed_async(method: str, fn: AsyncHandler, metrics: Metrics) -> AsyncHandler:
    ok = metrics.rpc_requests.labels(method, "ok")
    error = metrics.rpc_requests.labels(method, "error")
    cancelled = metrics.rpc_requests.labels(method, "cancelled")
    seconds = metrics.rpc_seconds.labels(method)
    served = metrics.requests_served

    @functools.wraps(fn)
    async def call(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            result = await _call_checked(method, fn, args)
        except trio.Cancelled:
            cancelled.inc()  # the client went away or the daemon is stopping: not a handler error
            raise
        except BaseException:
            _record(error, seconds, served, start)
            raise
        _record(ok, seconds, served, start)
        return result

    return call


def _record(outcome: Counter, seconds: Histogram, served: dict[str, int], start: float) -> None:
    """One finished RPC: its outcome, its time, and the served count."""
    outcome.inc()
    seconds.observe(time.perf_counter() - start)
    served["rpc"] += 1


def _timed_sync(method: str, fn: SyncHandler, metrics: Metrics) -> SyncHandler:
    ok = metrics.rpc_requests.labels(method, "ok")
    error = metrics.rpc_requests.labels(method, "error")
    seconds = metrics.rpc_seconds.labels(method)
    served = metrics.requests_served

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            result = _call_checked(method, fn, args)
        except BaseException:
            _record(error, seconds, served, start)
            raise
        _record(ok, seconds, served, start)
        return result

    return call
