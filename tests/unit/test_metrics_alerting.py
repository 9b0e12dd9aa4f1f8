"""The metrics the alert rules need (deploy/monitoring/dfs-alerts.yml), on fakes of the
daemon's objects: which layout node is up, layout states, the leader flag and its changes,
the last repair round's time, the TLS certificate's expiry; and leadership changes counted
by the real Leadership over a real PostgreSQL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.admin.metrics import Metrics, Snapshot, _CertExpiry, render
from daemon.cluster.repair import RepairStats
from daemon.meta import MetaStore
from daemon.service.leadership import Leadership
from dfs.net import certs
from mount.metrics import MountMetrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class FakeMembership:
    rows: list[dict[str, Any]]
    event_counts: dict[str, int] = field(default_factory=dict)
    packets_dropped: dict[str, int] = field(default_factory=dict)

    def members(self) -> list[dict[str, Any]]:
        return self.rows


@dataclass
class FakeLeader:
    leader: bool = True
    changes: int = 0


@dataclass
class FakeRemark:
    marked: int = 0
    changed: int = 0

    def status(self) -> dict[str, Any] | None:
        return None


@dataclass
class FakeRepair:
    stats: RepairStats = field(default_factory=RepairStats)
    scrubber: None = None


@dataclass
class FakeCluster:
    """The parts of a Service that Metrics.watch reads."""

    states: dict[str, str]
    membership: FakeMembership | None = None
    is_primary: bool = True
    leadership: FakeLeader = field(default_factory=FakeLeader)
    layout_epoch: int = 3
    marked_out: int = 0
    repair: FakeRepair | None = None
    hot: None = None
    chunkio: None = None
    remark: FakeRemark = field(default_factory=FakeRemark)

    def layout_states(self) -> dict[str, str]:
        return self.states

    def tier_figures(self) -> dict[str, float]:
        return {}


def samples(metrics: Metrics) -> Samples:
    text, _ = render(metrics.registry)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def watched(cluster: FakeCluster) -> tuple[Metrics, Samples]:
    metrics = Metrics(node_id="a", version="1", process_metrics=False)
    metrics.watch(cluster)  # type: ignore[arg-type]  # a fake of the Service
    return metrics, samples(metrics)


def member_up(got: Samples) -> dict[str, float]:
    return {dict(labels)["member"]: v for (name, labels), v in got.items() if name == "dfs_cluster_member_up"}


def test_member_up_follows_gossip_for_the_nodes_the_layout_counts_on() -> None:
    states = {"a": "active", "b": "active", "c": "draining", "d": "out", "e": "active"}
    gossip = FakeMembership(
        [
            {"node_id": "a", "status": "alive"},
            {"node_id": "b", "status": "dead"},
            {"node_id": "c", "status": "suspect"},  # maybe just slow: not down yet
            {"node_id": "d", "status": "dead"},  # marked out: no longer counted on
            {"node_id": "f", "status": "alive"},  # not in the layout (yet)
        ]
    )
    _, got = watched(FakeCluster(states, gossip))
    # e: in the layout, gossip has not heard of it: up, as the replica view treats it.
    assert member_up(got) == {"a": 1.0, "b": 0.0, "c": 1.0, "e": 1.0}
    layout = {dict(labels)["state"]: v for (name, labels), v in got.items() if name == "dfs_layout_nodes"}
    assert layout == {"active": 3.0, "draining": 1.0, "out": 1.0}

    gossip.rows[1]["status"] = "left"
    assert member_up(samples(watched(FakeCluster(states, gossip))[0]))["b"] == 0.0


def test_without_gossip_or_a_layout() -> None:
    _, got = watched(FakeCluster({"a": "active", "b": "active"}, membership=None))
    assert member_up(got) == {"a": 1.0, "b": 1.0}
    _, got = watched(FakeCluster({}))
    assert member_up(got) == {}
    # Every state is exported, 0 included, so queries have a series before anything happens.
    assert got[("dfs_layout_nodes", (("state", "draining"),))] == 0.0


def test_leader_flag_and_changes() -> None:
    leader = FakeLeader(leader=True, changes=0)
    _, got = watched(FakeCluster({}, leadership=leader))
    assert got[("dfs_meta_leader", ())] == 1.0
    assert got[("dfs_meta_leader_changes_total", ())] == 0.0  # a series from the start
    # A SQLite secondary's Leadership says "leader" (nothing to contend for); it does not lead.
    _, got = watched(FakeCluster({}, is_primary=False, leadership=leader))
    assert got[("dfs_meta_leader", ())] == 0.0
    _, got = watched(FakeCluster({}, leadership=FakeLeader(leader=False, changes=2)))
    assert got[("dfs_meta_leader", ())] == 0.0
    assert got[("dfs_meta_leader_changes_total", ())] == 2.0


def test_last_repair_round_time() -> None:
    repair = FakeRepair()
    metrics, got = watched(FakeCluster({}, repair=repair))
    # No round yet: the daemon's start, so a loop that never finishes one still alerts.
    assert got[("dfs_repair_last_round_timestamp_seconds", ())] == pytest.approx(metrics.started_at)
    assert got[("dfs_repair_rounds_total", ())] == 0.0
    repair.stats.rounds, repair.stats.last_round_at, repair.stats.errors = 4, 1_700_000_000.5, 1
    got = samples(metrics)
    assert got[("dfs_repair_last_round_timestamp_seconds", ())] == 1_700_000_000.5
    assert got[("dfs_repair_rounds_total", ())] == 4.0
    assert got[("dfs_repair_round_errors_total", ())] == 1.0


def _write_cert(path: Path, valid_days: int) -> float:
    ca_pem, ca_key = certs.create_ca("metrics-tests")
    issued = certs.issue(ca_pem, ca_key, "node", kind="node", hosts=["127.0.0.1"], valid_days=valid_days)
    tmp = path.with_suffix(".new")
    tmp.write_bytes(issued.cert_pem)
    os.replace(tmp, path)  # as a renewal does: a new file in place of the old
    from cryptography import x509

    return x509.load_pem_x509_certificate(issued.cert_pem).not_valid_after_utc.timestamp()


def test_certificate_expiry_read_and_followed_across_renewal(tmp_path: Path, caplog: Any) -> None:
    assert _CertExpiry("").read() is None  # no [tls] cert_file: no series
    path = tmp_path / "node.pem"
    reader = _CertExpiry(str(path))
    assert reader.read() is None  # missing: logged once, not at every refresh
    assert reader.read() is None
    assert sum("cannot read the TLS certificate" in r.message for r in caplog.records) == 1

    first = _write_cert(path, 30)
    assert reader.read() == first
    assert first - datetime.now(UTC).timestamp() == pytest.approx(30 * 86400, abs=120)
    renewed = _write_cert(path, 90)
    assert reader.read() == renewed != first

    path.write_bytes(b"not a certificate")
    assert reader.read() is None

    metrics = Metrics(node_id="a", version="1", process_metrics=False)
    assert ("dfs_tls_certificate_expiry_timestamp_seconds", ()) not in samples(metrics)
    metrics.snapshot = Snapshot(tls_cert_expiry_s=renewed)
    assert samples(metrics)[("dfs_tls_certificate_expiry_timestamp_seconds", ())] == renewed


async def test_leadership_changes_count_failovers_not_the_first_step(pg_dsn: str) -> None:
    # The schema: its config table keeps the fencing epoch.
    MetaStore(pg_dsn, engine="postgresql", block_size=4096).close()
    a = Leadership(None, dsn=pg_dsn, node_id="a")  # type: ignore[arg-type]  # metacalls: fence only
    b = Leadership(None, dsn=pg_dsn, node_id="b")  # type: ignore[arg-type]
    try:
        await a.step()
        await b.step()
        assert (a.leader, a.changes, b.leader, b.changes) == (True, 0, False, 0)
        await a.step()
        assert a.changes == 0  # still leading: no change
        a.close()  # its session ends, and the lock with it: a failover
        await b.step()
        assert (b.leader, b.changes) == (True, 1)
        await a.step()  # a's new session finds the lock taken: it lost the duties
        assert (a.leader, a.changes) == (False, 1)
    finally:
        a.close()
        b.close()


@dataclass
class FakeFailoverCaller:
    switches: int = 0


def test_mount_failovers_counted_from_zero() -> None:
    caller = FakeFailoverCaller()
    mm = MountMetrics(process_metrics=False)
    mm.watch_failover(caller)
    text, _ = render(mm.registry)
    assert b"dfs_fuse_meta_failovers_total 0.0" in text  # a series before any failover
    caller.switches = 2
    text, _ = render(mm.registry)
    assert b"dfs_fuse_meta_failovers_total 2.0" in text
