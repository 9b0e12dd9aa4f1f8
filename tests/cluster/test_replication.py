"""Three real daemons on loopback ports: one metadata primary, two secondaries.

Files written through a mount on one node are read through a mount on
another; every chunk gets R copies on distinct nodes; a node killed for good
is marked out after the grace period and the survivors restore R copies;
fsck (cluster-wide: metadata against every node's chunks, and every
committed chunk against its replication factor) finds nothing at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        for p in d.chunk_files():
            count[p.name] = count.get(p.name, 0) + 1
    return count


@contextlib.contextmanager
def loopback_cluster(
    tmp_path: Path, n: int, conf: str, meta_conf: str = "", *, seeds: bool = True
) -> Iterator[list[Daemon]]:
    """Daemons n1..n<n> in zones z1..z<n>, n1 the metadata primary (the founder, with shared
    PostgreSQL metadata: ``meta_conf``) and gossip seed, all with the ``[cluster]`` section
    ``conf``; yields once all are active in the layout, stops them after.  Without ``seeds``
    the daemons do not gossip with each other: one stopped and started again is never marked
    dead meanwhile."""
    primary_port = free_port()
    daemons = [
        Daemon(
            tmp_path / "n1",
            primary_port,
            node_id="n1",
            zone="z1",
            gossip_conf=FAST,
            extra_conf=conf,
            meta_conf=meta_conf,
        )
    ]
    seed = f'\nseeds = "127.0.0.1:{daemons[0].gossip_port}"' if seeds else ""
    for i in range(2, n + 1):
        daemons.append(
            Daemon(
                tmp_path / f"n{i}",
                free_port(),
                node_id=f"n{i}",
                zone=f"z{i}",
                gossip_conf=FAST + seed,
                extra_conf=conf + f'meta = "127.0.0.1:{primary_port}"\n',
                meta_conf=meta_conf,
                joins=daemons[0],
            )
        )
    try:
        for d in daemons:
            d.start()
        wanted = {d.node_id: "active" for d in daemons}
        wait_for(lambda: layout(daemons[0]) == wanted, 30, f"{n} active nodes")
        yield daemons
    finally:
        for d in daemons:
            d.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Daemon]]:
    with loopback_cluster(tmp_path, 3, CLUSTER.format(replicas=2)) as daemons:
        yield daemons


def s3_client(d: Daemon, access_key: str, secret_key: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=d.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )


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


def test_directory_policy_s3_on_a_secondary_mount_failover_and_metrics(
    cluster: list[Daemon], tmp_path: Path
) -> None:
    import errno
    import subprocess

    from tests.conftest import BIN, http_call, is_mounted

    n1, n2, n3 = cluster
    # A mount naming a dead daemon first connects to the next one.
    mnt = tmp_path / "m"
    mnt.mkdir()
    source = f"127.0.0.1:{free_port()},{n3.address}:/"
    res = subprocess.run(
        [
            str(BIN / "mount.dfs"),
            source,
            str(mnt),
            "-o",
            f"log={tmp_path / 'mount.log'},credential={n3.data_dir / 'client.credential'}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert res.returncode == 0, res.stderr
    try:
        three = mnt / "three"
        three.mkdir()
        os.setxattr(three, "user.dfs.replicas", b"3")
        os.setxattr(three, "user.dfs.consistency", b"strong")
        with pytest.raises(OSError) as ei:
            os.setxattr(three, "user.dfs.replicas", b"9")
        assert ei.value.errno == errno.EINVAL
        data = os.urandom(9 * 1024 * 1024)
        (three / "f").write_bytes(data)
        (mnt / "two").write_bytes(os.urandom(4 * 1024 * 1024 + 1))
        before = copies(cluster)
        assert sorted(before.values()) == [2, 2, 3, 3, 3]  # R=3 under three/, the default R=2 elsewhere
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        wait_for(lambda: not is_mounted(mnt), 30, "unmount")

    # S3 on a secondary: the object lands with the default R and reads back through the primary.
    def s3(d: Daemon) -> Any:
        return s3_client(d, *d.root_key())

    body = os.urandom(6 * 1024 * 1024)
    s3(n2).create_bucket(Bucket="bkt")
    s3(n2).put_object(Bucket="bkt", Key="k/obj", Body=body)
    got = s3(n1).get_object(Bucket="bkt", Key="k/obj")["Body"].read()
    assert got == body
    assert sorted(copies(cluster).values()) == [2, 2, 2, 2, 3, 3, 3]

    # A key made with `dfs s3 key create` (stored in metadata, on the primary) signs requests to a
    # secondary too: the secondary has the primary verify them, and learns the key's grants in
    # the same answer (bkt was made by n2's root key: only a grant lets the key in).
    from botocore.exceptions import ClientError

    made = json.loads(n1.cli("s3", "key", "create", "--json").stdout)
    ak, sk = made["access_key"], made["secret_key"]
    with pytest.raises(ClientError) as err:
        s3_client(n3, ak, sk).get_object(Bucket="bkt", Key="k/obj")
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    assert "bkt" not in {b["Name"] for b in s3_client(n2, ak, sk).list_buckets()["Buckets"]}
    n1.cli("s3", "key", "grant", ak, "bkt:rw")

    def keyed(d: Daemon, secret: str = sk) -> Any:
        return s3_client(d, ak, secret)

    small = os.urandom(300_000)
    keyed(n3).put_object(Bucket="bkt", Key="k/by-key", Body=small)
    assert keyed(n2).get_object(Bucket="bkt", Key="k/by-key")["Body"].read() == small
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    keyed(n3).upload_file(str(big), "bkt", "k/multipart")  # a multipart upload
    assert keyed(n2).get_object(Bucket="bkt", Key="k/multipart")["Body"].read() == big.read_bytes()
    with pytest.raises(ClientError) as err:
        keyed(n3, secret="x" * 40).get_object(Bucket="bkt", Key="k/by-key")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    # A browser upload form signed with the key: the secondary has the primary verify the policy.
    from tests.s3.forms import post_form

    form = keyed(n3).generate_presigned_post(Bucket="bkt", Key="k/by-form")
    answer = post_form(n3, "/bkt", form["fields"].items(), b"form body")
    assert answer.status == 204, answer
    assert keyed(n2).get_object(Bucket="bkt", Key="k/by-form")["Body"].read() == b"form body"
    form["fields"]["key"] = "k/other"  # not what the policy allows
    assert post_form(n3, "/bkt", form["fields"].items(), b"x").status == 403
    n1.cli("s3", "key", "revoke", ak)
    with pytest.raises(ClientError) as err:
        keyed(n3).get_object(Bucket="bkt", Key="k/by-key")
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"  # at once: nothing is cached

    # The admin API of a secondary answers metadata routes through the primary.
    def admin(
        d: Daemon, method: str, path: str, doc: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or d.admin_token()}"}
        body = None
        if doc is not None:
            body = json.dumps(doc).encode()
            headers["Content-Type"] = "application/json"
        status, _, raw = http_call(d.admin_port, method, path, body, headers)
        return status, json.loads(raw) if raw else None

    status, doc = admin(n2, "POST", "/storage/volumes", {"name": "vol-via-n2", "replication": 3})
    assert status == 201, doc
    assert admin(n1, "GET", "/storage/volumes/vol-via-n2")[1]["policy"]["replication"] == 3
    status, doc = admin(n3, "PUT", "/storage/policy", {"path": "/vol-via-n2", "consistency": "strong"})
    assert status == 200 and doc["effective"] == {"replication": 3, "consistency": "strong"}, doc
    assert sorted(n["node_id"] for n in admin(n3, "GET", "/storage/nodes")[1]["nodes"]) == ["n1", "n2", "n3"]
    assert admin(n2, "GET", "/storage/volumes/nope")[0] == 404
    assert admin(n2, "GET", "/storage/volumes", token="wrong")[0] == 401  # checked on n2, never forwarded
    assert admin(n2, "DELETE", "/storage/volumes/vol-via-n2")[0] == 204

    status, _, text = http_call(
        n1.admin_port, "GET", "/metrics", headers={"Authorization": f"Bearer {n1.admin_token()}"}
    )
    assert status == 200
    assert b'dfs_gossip_members{status="alive"} 3.0' in text
    assert b"dfs_layout_epoch" in text and b"dfs_repair_bytes_moved_total" in text
    n1.assert_clean()


def test_mount_naming_two_daemons_keeps_working_when_its_daemon_is_killed(
    cluster: list[Daemon], tmp_path: Path
) -> None:
    """``mount.dfs n2,n3:/`` uses n2; after SIGKILL of n2 the same mount goes on: metadata
    calls move to n3, reads fall back to the surviving replicas, new writes get their copies
    on n1 and n3, and everything written before and after reads back intact."""
    import subprocess

    from tests.conftest import BIN, is_mounted

    n1, n2, n3 = cluster
    mnt = tmp_path / "m"
    mnt.mkdir()
    log_file = tmp_path / "mount.log"
    res = subprocess.run(
        [
            str(BIN / "mount.dfs"),
            f"{n2.address},{n3.address}:/",
            str(mnt),
            "-o",
            f"log={log_file},credential={n2.data_dir / 'client.credential'}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert res.returncode == 0, res.stderr
    try:
        before = {f"before-{i}": os.urandom(2 * 1024 * 1024 + i) for i in range(4)}
        (mnt / "dir").mkdir()
        for name, data in before.items():
            (mnt / "dir" / name).write_bytes(data)
        wait_for(lambda: set(copies(cluster).values()) == {2}, 30, "two copies of every chunk")

        n2.stop(signal.SIGKILL)
        assert sorted(os.listdir(mnt / "dir")) == sorted(before)
        for name, data in before.items():
            assert (mnt / "dir" / name).read_bytes() == data
        after = os.urandom(5 * 1024 * 1024 + 3)
        with open(mnt / "dir" / "after", "wb") as f:
            f.write(after)
            f.flush()
            os.fsync(f.fileno())
        (mnt / "dir" / "before-0").rename(mnt / "dir" / "renamed")
        (mnt / "newdir").mkdir()
        assert (mnt / "dir" / "after").read_bytes() == after
        assert (mnt / "dir" / "renamed").read_bytes() == before["before-0"]
        assert "metadata calls go to" in log_file.read_text()
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        wait_for(lambda: not is_mounted(mnt), 30, "unmount")
    wait_for(lambda: layout(n1).get("n2") == "out", 30, "n2 marked out")
    wait_for(lambda: set(copies([n1, n3]).values()) == {2}, 60, "R copies on the survivors")
    n1.cli("status", "--wait", "--timeout", "60")
    n1.assert_clean()


def test_fsck_verifies_every_nodes_copies_and_repair_replaces_a_corrupt_one(
    cluster: list[Daemon], tmp_path: Path
) -> None:
    """`dfs fsck` on the primary verifies the checksum of every copy on every node; a copy
    corrupted on a secondary is reported with its node, and `fsck --repair` has that node
    quarantine it and fetch it again from the other replica."""
    n1, n2, n3 = cluster
    m = Mount(n1, tmp_path / "m")
    m.start()
    try:
        data = os.urandom(20 * 1024 * 1024)
        (m.path / "f").write_bytes(data)
    finally:
        m.stop()
    wait_for(lambda: set(copies(cluster).values()) == {2}, 30, "two copies of every chunk")
    report = n1.fsck()
    assert report["problems"] == [] and report["chunks_checked"] == 2 * len(copies(cluster)), report

    holder = next(d for d in (n3, n2) if d.chunk_files())  # a secondary (each holds 2 of 3 copies)
    victim = holder.chunk_files()[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    victim.write_bytes(bytes(raw))
    report = n1.fsck()
    assert report["problems"] == [f"chunk {victim.name} on {holder.node_id} fails its checksum"], report
    n1.fsck(repair=True)
    wait_for(lambda: victim.exists() and victim.read_bytes() != bytes(raw), 30, "the corrupt copy replaced")
    n1.assert_clean()
    m.start()
    try:
        assert (m.path / "f").read_bytes() == data
    finally:
        m.stop()
