"""The failover tier: dfs on a Patroni-managed PostgreSQL pair with a synchronous standby.

A mount and the S3 shim keep writing while the database primary dies (its
postgres killed, or its whole node).  Patroni promotes the standby; dfs must
carry on without a failed operation: mounts and S3 clients wait (bounded by
``[meta] failover_timeout_s``), every operation acknowledged before, during
and after the failover is there exactly once, and fsck is clean.  The
failover time (kill -> first metadata write acknowledged after it) and the
longest stall a writer saw are printed (-s).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Mount, free_port, needs_fuse, wait_for
from tests.patroni import PatroniCluster
from tests.s3.conftest import make_client

pytestmark = [pytest.mark.slow, pytest.mark.fuse, needs_fuse]

_BEFORE = 20  # operations each writer completes before the kill
_AFTER = 20  # ... and after the failover
_DEADLINE_S = 120.0


@dataclass
class Writer:
    """Runs ``op(i)`` for i = 0, 1, ... in a thread until stopped; records each acknowledgement."""

    name: str
    op: Callable[[int], None]
    done: list[tuple[int, float, float]] = field(default_factory=list)  # (i, started, acked)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.op(i)
            except Exception as exc:  # every failure is a finding; the test reports them all
                self.errors.append(f"{self.name} op {i}: {type(exc).__name__}: {exc}")
                return
            self.done.append((i, started, time.monotonic()))
            i += 1

    def acked_after(self, t: float) -> int:
        return sum(1 for _, _, acked in self.done if acked > t)


def content(i: int) -> bytes:
    return f"file {i}\n".encode() * (1 + i % 50)


@pytest.fixture
def dfs_on_patroni(patroni_cluster: PatroniCluster, tmp_path: Path) -> Iterator[tuple[Daemon, Mount]]:
    d = Daemon(
        tmp_path / "var",
        free_port(),
        meta_conf=f'engine = "postgresql"\ndsn = "{patroni_cluster.dsn()}"\nfailover_timeout_s = 60.0\n',
    )
    d.start()
    m = Mount(d, tmp_path / "mnt")
    try:
        m.start()
        yield d, m
    finally:
        m.stop()
        d.stop()


def run_through_failover(
    cluster: PatroniCluster, daemon: Daemon, mount: Mount, kill: Callable[[str], None]
) -> None:
    root = mount.path / "w"
    root.mkdir()

    def mount_op(i: int) -> None:
        path = root / f"f{i}"
        path.write_bytes(content(i))
        if i % 5 == 0:  # a rename applied twice would fail: the source is gone
            path.rename(root / f"r{i}")

    s3: Any = make_client(daemon, read_timeout=150, retries={"max_attempts": 1})
    s3.create_bucket(Bucket="failover")

    def s3_op(i: int) -> None:
        s3.put_object(Bucket="failover", Key=f"k{i}", Body=content(i))

    writers = [Writer("mount", mount_op), Writer("s3", s3_op)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    for t in threads:
        t.start()
    try:

        def progressed(since: float, n: int) -> Callable[[], bool]:
            def check() -> bool:
                failed = [e for w in writers for e in w.errors]
                assert not failed, failed
                return all(w.acked_after(since) >= n for w in writers)

            return check

        wait_for(progressed(0.0, _BEFORE), _DEADLINE_S, "writes before the kill")
        leader = cluster.leader()
        killed_at = time.monotonic()
        kill(leader)
        wait_for(progressed(killed_at, _AFTER), _DEADLINE_S, "writes after the failover")
        new = cluster.wait_for_leader(not_name=leader, timeout_s=_DEADLINE_S)
    finally:
        for w in writers:
            w.stop.set()
        for t in threads:
            t.join(_DEADLINE_S)
    assert not [e for w in writers for e in w.errors]

    # The first write begun after the kill (one in flight at the kill may still have made it).
    first_after = min(acked for w in writers for _, started, acked in w.done if started >= killed_at)
    stalls = {w.name: max(acked - started for _, started, acked in w.done) for w in writers}
    print(
        f"\n{kill.__name__}({leader}) -> leader {new}: first metadata write acknowledged "
        f"{first_after - killed_at:.2f} s after the kill; longest writer stall "
        + ", ".join(f"{k} {v:.2f} s" for k, v in stalls.items())
    )

    # Every acknowledged operation is there, once.
    mount_done = [i for i, _, _ in writers[0].done]
    names = sorted(p.name for p in root.iterdir())
    expected = sorted(f"r{i}" if i % 5 == 0 else f"f{i}" for i in mount_done)
    # The writer may have been stopped between a write and its rename (not acknowledged).
    assert [n for n in names if n not in expected] in ([], [f"f{max(mount_done) + 1}"])
    assert [n for n in expected if n not in names] == []
    for i in mount_done:
        assert (root / (f"r{i}" if i % 5 == 0 else f"f{i}")).read_bytes() == content(i)
    for i, _, _ in writers[1].done:
        assert s3.get_object(Bucket="failover", Key=f"k{i}")["Body"].read() == content(i)
    daemon.assert_clean()


def test_postgres_primary_killed(
    patroni_cluster: PatroniCluster, dfs_on_patroni: tuple[Daemon, Mount]
) -> None:
    run_through_failover(patroni_cluster, *dfs_on_patroni, patroni_cluster.kill_postgres)


def test_database_node_killed(patroni_cluster: PatroniCluster, dfs_on_patroni: tuple[Daemon, Mount]) -> None:
    run_through_failover(patroni_cluster, *dfs_on_patroni, patroni_cluster.kill_patroni)
