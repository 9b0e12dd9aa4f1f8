"""Several data disks on one node of a real two-node cluster (R=2), one disk failed on purpose.

n1 stores its chunks on two disks: a plain directory and a small tmpfs.  Files are written
through a mount; then the tmpfs is unmounted under the running daemon (its filesystem gone).
n1 marks only that disk failed (``dfs disks``, ``dfs status``, metrics), every file still reads
correctly, anti-entropy copies the chunks it lost back from n2 onto n1's healthy disk, the disk
comes back with ``dfs disks reset`` and is drained live; fsck is clean at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_replication import FAST, layout
from tests.conftest import Daemon, Mount, free_port, http_call, needs_fuse, wait_for

pytestmark = [pytest.mark.slow, needs_fuse]

CLUSTER = """
[cluster]
replicas = 2
consistency = "quorum"
dead_grace_s = 300.0
hint_interval_s = 0.5
anti_entropy_interval_s = 1.0
refresh_s = 0.5
peer_timeout_s = 5.0
"""


def chunk_names(root: Path) -> set[str]:
    """Chunk file names stored under a disk (or data dir) ``root``, not tmp/ or bad/."""
    top = root / "chunks"
    if not top.is_dir():
        return set()
    return {
        p.name for p in top.rglob("*") if p.is_file() and p.relative_to(top).parts[0] not in ("tmp", "bad")
    }


def disks(d: Daemon) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in json.loads(d.cli("disks", "--json").stdout)}


def metrics(d: Daemon) -> str:
    auth = {"Authorization": f"Bearer {d.admin_token()}"}
    return http_call(d.admin_port, "GET", "/metrics", None, auth)[2].decode()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    """A 64 MiB tmpfs (True), or a plain directory where mounting is not allowed (False)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)]).returncode == 0
    try:
        yield where, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_failed_disk_costs_only_its_own_chunks(tmp_path: Path, small_fs: tuple[Path, bool]) -> None:
    fast_disk, mounted = small_fs
    slow_disk = tmp_path / "plain"
    slow_disk.mkdir()
    n1 = Daemon(tmp_path / "n1", free_port(), node_id="n1", zone="z1", gossip_conf=FAST, extra_conf=CLUSTER)
    conf = n1.conf_path.read_text()
    assert conf.count("[storage]\n") == 1
    n1.conf_path.write_text(
        conf.replace("[storage]\n", f'[storage]\ndisks = ["{slow_disk}", "{fast_disk}"]\n')
    )
    n2 = Daemon(
        tmp_path / "n2",
        free_port(),
        node_id="n2",
        zone="z2",
        gossip_conf=FAST + f'\nseeds = "127.0.0.1:{n1.gossip_port}"',
        extra_conf=CLUSTER + f'meta = "127.0.0.1:{n1.port}"\n',
        joins=n1,
    )
    m1 = Mount(n1, tmp_path / "m1")
    try:
        n1.start()
        n2.start()
        wait_for(lambda: layout(n1) == {"n1": "active", "n2": "active"}, 30, "two active nodes")
        m1.start()
        payload = {f"f{i}": os.urandom(200_000 + i * 7919) for i in range(24)}
        for name, data in payload.items():
            (m1.path / name).write_bytes(data)

        def on_n1() -> tuple[set[str], set[str]]:
            return chunk_names(slow_disk), chunk_names(fast_disk)

        wait_for(lambda: len(chunk_names(n2.data_dir)) >= 24, 30, "n2's copies")
        slow, fast = on_n1()
        assert len(slow | fast) == len(chunk_names(n2.data_dir)) >= 24
        assert slow and fast and not slow & fast  # spread over both disks, each chunk once
        assert chunk_names(n1.data_dir) == set()  # the data dir holds no chunks with disks set
        report = disks(n1)
        assert [r["state"] for r in report.values()] == ["ok", "ok"]
        assert report[str(fast_disk)]["chunk_count"] == len(fast)

        # The fast disk's filesystem goes away under the running daemon.
        if mounted:
            assert subprocess.run(["umount", "-l", str(fast_disk)]).returncode == 0
        else:
            fast_disk.rename(tmp_path / "pulled")
            fast_disk.mkdir()
        wait_for(lambda: disks(n1)[str(fast_disk)]["state"] == "failed", 20, "the disk marked failed")
        report = disks(n1)
        assert report[str(slow_disk)]["state"] == "ok"
        assert "gone" in report[str(fast_disk)]["reason"]
        status = n1.cli("status").stdout
        assert "disks n1" in status and "1 of 2 not ok" in status, status
        wait_for(
            lambda: f'dfs_disk_state{{disk="{fast_disk}",state="failed"}} 1.0' in metrics(n1), 30, "metrics"
        )

        # Every file still reads correctly (a fresh mount: nothing cached).
        m1.stop()
        m1.start()
        for name, data in payload.items():
            assert (m1.path / name).read_bytes() == data, name

        # n2 re-sends what n1 lost; it lands on n1's healthy disk: R=2 copies again.
        wait_for(lambda: chunk_names(slow_disk) >= slow | fast, 60, "n1's lost chunks re-replicated")
        assert chunk_names(n2.data_dir) == slow | fast
        assert disks(n1)[str(slow_disk)]["chunk_count"] == len(slow | fast)

        # The replaced disk comes back by an operator's reset, then is drained live.
        if mounted:
            assert (
                subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(fast_disk)]).returncode
                == 0
            )
        assert disks(n1)[str(fast_disk)]["state"] == "failed"
        assert n1.cli("disks", "drain", str(fast_disk), check=False).returncode != 0  # failed: reset first
        n1.cli("disks", "reset", str(fast_disk))
        assert disks(n1)[str(fast_disk)]["state"] == "ok"
        (m1.path / "late").write_bytes(os.urandom(300_000))
        n1.cli("disks", "drain", str(fast_disk))
        wait_for(lambda: disks(n1)[str(fast_disk)]["state"] == "drained", 30, "drained")
        assert chunk_names(fast_disk) == set()
        assert (m1.path / "f3").read_bytes() == payload["f3"]
        m1.stop()
        n1.cli("status", "--wait", "--timeout", "60")
        n1.assert_clean()
    finally:
        m1.stop()
        n2.stop()
        n1.stop()
