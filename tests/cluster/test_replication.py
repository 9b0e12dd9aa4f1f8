"""Three real daemons on loopback ports: one metadata primary, two secondaries.

Files written through a mount on one node are read through a mount on
another; every chunk gets R copies on distinct nodes; a node killed for good
is marked out after the grace period and the survivors restore R copies;
fsck (cluster-wide: metadata against every node's chunks, and every
committed chunk against its replication factor) finds nothing at the end.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, Mount, free_port, needs_fuse, wait_for

pytestmark = [pytest.mark.slow, needs_fuse]

FAST = 'preset = "fast_test"'
CLUSTER = """
[cluster]
replicas = {replicas}
consistency = "quorum"
dead_grace_s = 3.0
hint_interval_s = 0.5
anti_entropy_interval_s = 2.0
refresh_s = 0.5
peer_timeout_s = 5.0
"""


def layout(d: Daemon) -> dict[str, str]:
    raw = json.loads(d.cli("layout", "--json").stdout)
    return {n["node_id"]: n["state"] for n in raw["nodes"]}


def copies(daemons: list[Daemon]) -> dict[str, int]:
    """Chunk file name -> number of live daemons holding it."""
    count: dict[str, int] = {}
    for d in daemons:
        top = d.data_dir / "chunks"
        for root, _dirs, files in os.walk(top):
            if Path(root).relative_to(top).parts[:1] in (("tmp",), ("bad",)):
                continue
            for name in files:
                count[name] = count.get(name, 0) + 1
    return count


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Daemon]]:
    primary_port = free_port()
    conf = CLUSTER.format(replicas=2)
    daemons = [
        Daemon(tmp_path / "n1", primary_port, node_id="n1", zone="z1", gossip_conf=FAST, extra_conf=conf)
    ]
    seed = f"127.0.0.1:{daemons[0].gossip_port}"
    for i in (2, 3):
        daemons.append(
            Daemon(
                tmp_path / f"n{i}",
                free_port(),
                node_id=f"n{i}",
                zone=f"z{i}",
                gossip_conf=f'{FAST}\nseeds = "{seed}"',
                extra_conf=conf + f'meta = "127.0.0.1:{primary_port}"\n',
            )
        )
    try:
        for d in daemons:
            d.start()
        wait_for(lambda: layout(daemons[0]) == {f"n{i}": "active" for i in (1, 2, 3)}, 30, "3 active nodes")
        yield daemons
    finally:
        for d in daemons:
            d.stop()


def test_replicated_writes_cross_node_reads_and_repair_after_loss(
    cluster: list[Daemon], tmp_path: Path
) -> None:
    n1, n2, n3 = cluster
    m2 = Mount(n2, tmp_path / "m2")
    m3 = Mount(n3, tmp_path / "m3")
    m2.start()
    m3.start()
    try:
        payload = {f"f{i}": os.urandom(3 * 1024 * 1024 + i * 4097) for i in range(6)}
        for name, data in payload.items():
            (m2.path / name).write_bytes(data)
        for name, data in payload.items():
            assert (m3.path / name).read_bytes() == data
        # Every chunk on exactly R=2 distinct nodes once repair has settled.
        wait_for(lambda: set(copies(cluster).values()) == {2}, 30, "two copies of every chunk")
        assert len(copies(cluster)) >= 6
        n1.assert_clean()

        # n3 dies for good: after the grace period it is marked out, the survivors re-replicate.
        m3.stop()
        n3.stop(signal.SIGKILL)
        more = os.urandom(5 * 1024 * 1024)
        (m2.path / "after").write_bytes(more)  # quorum of 2: a substitute takes n3's copies
        wait_for(lambda: layout(n1).get("n3") == "out", 30, "n3 marked out")
        survivors = [n1, n2]
        wait_for(lambda: set(copies(survivors).values()) == {2}, 60, "R copies on the survivors")
        assert (m2.path / "after").read_bytes() == more
        for name, data in payload.items():
            assert (m2.path / name).read_bytes() == data
    finally:
        m2.stop()
        m3.stop()
    n1.cli("status", "--wait", "--timeout", "60")
    n1.assert_clean()
