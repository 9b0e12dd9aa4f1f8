"""Cloud tiers across a real three-node cluster (R=2): a tiered volume's chunks leave every
node's disks for a tier, reads through a mount on a secondary fetch them back, repair does
not copy cold chunks back, and cluster fsck (every node's inventory) is clean."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_hot_chunks import call
from tests.cluster.test_replication import CLUSTER, loopback_cluster
from tests.conftest import Mount, admin_ok, needs_fuse, wait_for
from tests.tiers.test_tiering import chunk_files, run_pass, tier_objects

pytestmark = [pytest.mark.slow, needs_fuse]

# [tiers] before [cluster]: the cluster helper appends the secondaries' meta line to the end.
TIERS = "\n[tiers]\ninterval_s = 0\nverify_interval_s = 0\ncache_bytes = 0\n"


def test_cold_chunks_leave_every_node_and_read_back_on_a_secondary(tmp_path: Path) -> None:
    conf = TIERS + CLUSTER.format(replicas=2)
    with loopback_cluster(tmp_path, 3, conf) as daemons:
        n1, n2 = daemons[0], daemons[1]
        m1 = Mount(n1, tmp_path / "m1")
        m2 = Mount(n2, tmp_path / "m2")
        try:
            admin_ok(n1, "POST", "/storage/volumes", {"name": "cold"})
            m1.start()
            payload = {f"f{i}": os.urandom(1_500_000 + i * 7919) for i in range(6)}
            for name, data in payload.items():
                (m1.path / "cold" / name).write_bytes(data)
            m1.stop()
            store = tmp_path / "store"
            store.mkdir()
            n1.cli("tier", "add", "vault", "--kind", "dir", "--bucket", str(store))
            n1.cli("tier", "attach", "cold", "vault", "--mode", "tiered")
            done = run_pass(n1)
            cold = done["chunks_made_cold"]
            assert cold >= 6 and not done["errors"], done
            moved = set(tier_objects(store))
            assert len(moved) == cold
            held = {d.node_id: chunk_files(d) for d in daemons}
            assert not any(names & moved for names in held.values()), "a cold chunk kept a local copy"

            # Repair leaves cold chunks alone: two more anti-entropy rounds everywhere bring none back.
            rounds = {d.node_id: call(d, "sys.repair_status")["rounds"] for d in daemons}
            wait_for(
                lambda: all(call(d, "sys.repair_status")["rounds"] >= rounds[d.node_id] + 2 for d in daemons),
                60,
                "two anti-entropy rounds",
            )
            assert not any(chunk_files(d) & moved for d in daemons)

            # A mount on a secondary reads everything back from the tier.
            m2.start()
            for name, data in payload.items():
                assert (m2.path / "cold" / name).read_bytes() == data
            status: dict[str, Any] = json.loads(n2.cli("tier", "status", "--json").stdout)
            assert status["cold_chunks"] == cold
            m2.stop()
            n1.assert_clean()
        finally:
            m1.stop()
            m2.stop()
