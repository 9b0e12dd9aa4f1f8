"""Policy changes on a running cluster of three real daemons (issue 17):

- a volume made with a name only takes the cluster's default R, shown as such;
- raising a volume's replication re-marks the chunks already written and repair adds copies
  until each has R on distinct nodes; lowering it trims the surplus copies;
- removing a node through the admin API follows ``dfs node remove``'s rule: refused while
  active, refused until its drain is done, allowed after, and no chunk drops below R.

fsck (cluster-wide: every committed chunk against its replication factor) is clean at the end.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.test_replication import CLUSTER, copies, layout, loopback_cluster, s3_client
from tests.conftest import Daemon, wait_for
from tests.conftest import admin_call as admin

pytestmark = [pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Daemon]]:
    # A long anti-entropy interval: copies appear because re-marking asks every node's repair
    # for a round, not because a periodic round happens to pass by.
    conf = CLUSTER.format(replicas=2).replace(
        "anti_entropy_interval_s = 2.0", "anti_entropy_interval_s = 600.0"
    )
    with loopback_cluster(tmp_path, 3, conf) as daemons:
        yield daemons


def counts(daemons: list[Daemon], names: set[str]) -> list[int]:
    found = copies(daemons)
    return sorted(found.get(n, 0) for n in names)


def test_volume_defaults_and_replication_changes_reach_existing_data(cluster: list[Daemon]) -> None:
    n1, n2, n3 = cluster
    s3 = s3_client(n1, *n1.root_key())
    # A name only: the cluster default R (2 here) and consistency, shown as the cluster's.
    status, plain = admin(n1, "POST", "/storage/volumes", {"name": "plain"})
    assert status == 201, plain
    assert plain["policy"]["replication"] == 2 and plain["policy"]["replication_source"] == "cluster"
    assert plain["policy"]["consistency"] == "quorum" and plain["policy"]["consistency_source"] == "cluster"
    before = set(copies(cluster))
    s3.put_object(Bucket="plain", Key="p", Body=os.urandom(3 << 20))
    plain_chunks = set(copies(cluster)) - before
    assert plain_chunks
    wait_for(lambda: set(counts(cluster, plain_chunks)) == {2}, 30, "the cluster default R=2")

    status, vol = admin(n1, "POST", "/storage/volumes", {"name": "photos", "replication": 1})
    assert status == 201 and vol["policy"]["replication_source"] == "volume", vol
    before = set(copies(cluster))
    payload = {f"o{i}": os.urandom((2 << 20) + i * 4099) for i in range(5)}
    for key, data in payload.items():
        s3.put_object(Bucket="photos", Key=key, Body=data)
    names = set(copies(cluster)) - before
    assert len(names) >= 5
    assert set(counts(cluster, names)) == {1}

    # Raise to 3: every existing chunk ends with a copy on each of the three nodes.
    status, vol = admin(n1, "PUT", "/storage/volumes/photos", {"replication": 3})
    assert status == 200 and vol["policy"]["replication"] == 3
    wait_for(lambda: set(counts(cluster, names)) == {3}, 60, "three copies of every existing chunk")
    for d in cluster:
        held = {p.name for p in d.chunk_files()}
        assert names <= held, f"{d.node_id} lacks copies"
    st = json.loads(n1.cli("status", "--json").stdout)
    remark = st["cluster"]["remark"]
    assert remark is not None and remark["jobs"] == 0
    assert "policy re-mark" in n1.cli("status").stdout
    assert set(counts(cluster, plain_chunks)) == {2}  # another volume's data is left alone

    # Lower to 2: the surplus copies go once the two remaining replicas hold the chunk.
    status, vol = admin(n1, "PUT", "/storage/volumes/photos", {"replication": 2})
    assert status == 200 and vol["policy"]["replication"] == 2
    wait_for(lambda: set(counts(cluster, names)) == {2}, 60, "surplus copies trimmed to two")
    for key, data in payload.items():
        assert s3.get_object(Bucket="photos", Key=key)["Body"].read() == data

    # The directory override (the xattr user.dfs.replicas, here through the admin API) too.
    assert admin(n1, "PUT", "/storage/policy", {"path": "/photos", "replication": 3})[0] == 200
    wait_for(lambda: set(counts(cluster, names)) == {3}, 60, "three copies under the xattr")
    assert admin(n1, "PUT", "/storage/policy", {"path": "/photos", "replication": None})[0] == 200
    wait_for(lambda: set(counts(cluster, names)) == {2}, 60, "the volume's two copies again")

    # Unset: back to the cluster default (2), shown as the cluster's.
    status, vol = admin(n1, "PUT", "/storage/volumes/photos", {"replication": None})
    assert status == 200 and vol["policy"]["replication_source"] == "cluster"
    req = urllib.request.Request(n1.admin_url + "/metrics")
    req.add_header("Authorization", f"Bearer {n1.admin_token()}")
    with urllib.request.urlopen(req, timeout=30) as r:
        metrics = r.read().decode()
    assert "dfs_policy_remarked_chunks_total" in metrics
    n1.cli("status", "--wait", "--timeout", "60")
    n1.assert_clean()


def test_rest_node_removal_keeps_the_cli_rules(cluster: list[Daemon]) -> None:
    n1, n2, n3 = cluster
    s3 = s3_client(n1, *n1.root_key())
    s3.create_bucket(Bucket="data")
    before = set(copies(cluster))
    for i in range(6):
        s3.put_object(Bucket="data", Key=f"k{i}", Body=os.urandom((1 << 20) + i))
    names = set(copies(cluster)) - before
    # At least R: under load a put that outlived peer_timeout_s went to a spare as well, and
    # that surplus copy stays until an anti-entropy round (600 s here) trims it.
    wait_for(lambda: min(counts(cluster, names)) >= 2, 30, "two copies of every chunk")

    # Active: refused by both paths, even forced.
    status, body = admin(n1, "DELETE", "/storage/nodes/n3")
    assert status == 409 and "drain it first" in body["error"]["message"], body
    status, body = admin(n1, "DELETE", "/storage/nodes/n3?force=true")
    assert status == 409 and "drain it first" in body["error"]["message"], body
    res = n1.cli("node", "remove", "n3", check=False)
    assert res.returncode != 0 and "drain it first" in res.stderr, res.stderr
    assert layout(n1)["n3"] == "active"

    # Draining: refused until n3's repair has moved its chunks home.
    assert admin(n1, "PUT", "/storage/nodes/n3", {"state": "draining"})[0] == 200
    status, body = admin(n1, "DELETE", "/storage/nodes/n3")
    assert status == 409 and "n3" in body["error"]["message"], body

    def removed() -> bool:
        return admin(n1, "DELETE", "/storage/nodes/n3")[0] == 204

    wait_for(removed, 90, "n3 drained and removed")
    n3.stop()  # before it registers itself again
    assert "n3" not in layout(n1)
    survivors = [n1, n2]
    assert set(counts(survivors, names)) == {2}  # nothing dropped below R
    for i in range(6):
        assert len(s3.get_object(Bucket="data", Key=f"k{i}")["Body"].read()) == (1 << 20) + i
    n1.assert_clean()
