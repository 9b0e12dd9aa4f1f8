"""The failover harness itself (tests/patroni.py): a Patroni pair with a synchronous standby
fails over when its primary dies, keeps every acknowledged commit, and the libpq string of
:meth:`PatroniCluster.dsn` reaches the new primary.  The failover times are printed (-s)."""

from __future__ import annotations

import time

import psycopg
import pytest

from dfs.bench.harness import wait_for
from tests.patroni import PatroniCluster

pytestmark = pytest.mark.slow

_ROWS = 100
# Patroni's timings (tests/patroni.py) give a failover within a few seconds of a crash, and
# within ttl (10 s) plus a loop or two when the whole node dies and its key has to expire.
_FAILOVER_DEADLINE_S = 30.0
_REJOIN_DEADLINE_S = 60.0


def _seed(cluster: PatroniCluster) -> None:
    """Create the table and commit ``_ROWS`` rows, one acknowledged commit each."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        # The guarantee under test rests on these: every commit waits for the standby.
        standbys = conn.execute("SHOW synchronous_standby_names").fetchone()
        assert standbys is not None and standbys[0], "no synchronous standby configured"
        commit = conn.execute("SHOW synchronous_commit").fetchone()
        assert commit is not None and commit[0] == "on"
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, phase text NOT NULL)")
        for i in range(_ROWS):
            conn.execute("INSERT INTO t VALUES (%s, 'before')", (i,))


def _write_until_accepted(cluster: PatroniCluster, since: float) -> float:
    """Insert a row through :meth:`PatroniCluster.dsn` until a server takes it; returns the
    seconds from ``since`` (the kill) to that commit: the failover time a client sees."""

    def attempt() -> bool:
        try:
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                # ON CONFLICT: a commit whose acknowledgement was lost may be retried.
                conn.execute("INSERT INTO t VALUES (%s, 'after') ON CONFLICT DO NOTHING", (_ROWS,))
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction):
            # No server accepts writes yet (refused, read-only, shutting down, demoted).
            return False
        return True

    wait_for(attempt, _FAILOVER_DEADLINE_S, "a write through dsn() after the kill", interval_s=0.1)
    return time.monotonic() - since


def _check_rows(dsn: str) -> None:
    """Every row committed before the kill, and the one after it, are there."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT id, phase FROM t ORDER BY id").fetchall()
    assert [r[0] for r in rows if r[1] == "before"] == list(range(_ROWS))
    assert [r[0] for r in rows if r[1] == "after"] == [_ROWS]


def test_postgres_crash_fails_over(patroni_cluster: PatroniCluster) -> None:
    cluster = patroni_cluster
    _seed(cluster)
    old = cluster.leader()

    killed_at = time.monotonic()
    cluster.kill_postgres(old)
    failover_s = _write_until_accepted(cluster, killed_at)
    new = cluster.wait_for_leader(not_name=old, timeout_s=_FAILOVER_DEADLINE_S)
    print(f"\nkill_postgres({old}): writes accepted again after {failover_s:.2f} s, leader {new}")
    _check_rows(cluster.dsn())

    # Patroni brings the old primary back as a replica of the new one (pg_rewind if needed),
    # and it catches up with what was written after the failover.
    cluster.wait_for_replica(old, _REJOIN_DEADLINE_S)

    def caught_up() -> bool:
        with psycopg.connect(cluster.member_dsn(old), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM t").fetchone()
        return row is not None and row[0] == _ROWS + 1

    wait_for(caught_up, _REJOIN_DEADLINE_S, f"{old} to replay the write made after the failover")
    print(f"kill_postgres({old}): back as a replica {time.monotonic() - killed_at:.2f} s after the kill")
    _check_rows(cluster.member_dsn(old))


def test_node_death_fails_over(patroni_cluster: PatroniCluster) -> None:
    cluster = patroni_cluster
    _seed(cluster)
    old = cluster.leader()

    killed_at = time.monotonic()
    cluster.kill_patroni(old)
    failover_s = _write_until_accepted(cluster, killed_at)
    new = cluster.wait_for_leader(not_name=old, timeout_s=_FAILOVER_DEADLINE_S)
    print(f"\nkill_patroni({old}): writes accepted again after {failover_s:.2f} s, leader {new}")
    _check_rows(cluster.dsn())
