"""Three daemons sharing PostgreSQL metadata: no daemon is special.

Every daemon serves metadata itself from the shared database (no primary, no
forwarding); mounts and S3 on different daemons see each other's changes; the
cluster-wide duties run on whichever daemon holds the leadership lock, and
another takes them over when it dies; killing any one daemon -- the founder
and gossip seed included -- leaves the namespace fully available through the
others, and fsck is clean at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.test_replication import CLUSTER, copies, layout, loopback_cluster, s3_client
from tests.conftest import Daemon, Mount, needs_fuse, wait_for

pytestmark = [pytest.mark.slow, needs_fuse]


@pytest.fixture
def shared(tmp_path: Path, pg_dsn: str) -> Iterator[list[Daemon]]:
    meta = f'engine = "postgresql"\ndsn = "{pg_dsn}"\nfailover_timeout_s = 30.0\n'
    with loopback_cluster(tmp_path, 3, CLUSTER.format(replicas=2), meta_conf=meta) as daemons:
        yield daemons


def leaders(daemons: list[Daemon]) -> list[str]:
    """The daemons whose latest word on the cluster duties is that they lead."""
    out = []
    for d in daemons:
        lines = [ln for ln in d.log_path.read_text().splitlines() if "cluster duties:" in ln]
        if lines and "this daemon leads" in lines[-1]:
            out.append(d.node_id)
    return out


def test_no_daemon_is_special(shared: list[Daemon], tmp_path: Path) -> None:
    n1, n2, n3 = shared
    for d in shared:
        st = json.loads(d.cli("status", "--json").stdout)
        assert st["role"] == "peer" and st["metadata"].startswith("postgresql")
        assert not (d.data_dir / "meta.db").exists()
    wait_for(lambda: len(leaders(shared)) == 1, 30, "one daemon to lead the cluster duties")

    m2, m3 = Mount(n2, tmp_path / "m2"), Mount(n3, tmp_path / "m3")
    m2.start()
    m3.start()
    try:
        payload = {f"f{i}": os.urandom(1024 * 1024 + i) for i in range(4)}
        for name, data in payload.items():
            (m2.path / name).write_bytes(data)
        for name, data in payload.items():
            assert (m3.path / name).read_bytes() == data  # served by n3's own metadata
        (m3.path / "d").mkdir()
        (m3.path / "f0").rename(m3.path / "d" / "moved")
        wait_for(lambda: (m2.path / "d" / "moved").exists(), 10, "n2's mount to see n3's rename")

        # The leader dies (whichever it is), then the founder and gossip seed if it still lives.
        victims = [leaders(shared)[0]] + (["n1"] if leaders(shared)[0] != "n1" else [])
        alive = [d for d in shared if d.node_id not in victims]
        for d, m in ((n1, None), (n2, m2), (n3, m3)):
            if d.node_id in victims:
                if m is not None:
                    m.stop()
                d.stop(signal.SIGKILL)
        print(f"\nkilled {victims}")
        wait_for(lambda: len(leaders(alive)) == 1, 30, "a survivor to take over the cluster duties")
        mounts = [m for m, d in ((m2, n2), (m3, n3)) if d in alive]
        for i, m in enumerate(mounts):
            (m.path / f"after{i}").write_bytes(b"written with a daemon gone %d" % i)
            for name, data in payload.items():
                if name != "f0":
                    assert (m.path / name).read_bytes() == data
        body = os.urandom(300_000)
        s3 = s3_client(alive[0], *alive[0].root_key())
        s3.create_bucket(Bucket="shared")
        s3.put_object(Bucket="shared", Key="k", Body=body)
        assert s3.get_object(Bucket="shared", Key="k")["Body"].read() == body
        # The dead nodes are marked out by the new leader, and their copies restored.
        for v in victims:
            wait_for(lambda v=v: layout(alive[0]).get(v) == "out", 30, f"{v} marked out")
        wait_for(lambda: set(copies(alive).values()) == {2}, 60, "R copies on the survivors")
    finally:
        m2.stop()
        m3.stop()
    alive[0].cli("status", "--wait", "--timeout", "60")
    alive[0].assert_clean()


# Makes names in argv[1] until killed, each change one that fails if applied twice: a directory
# every tenth step (mkdir), a file created exclusively, written, fsynced and closed, every third
# renamed.  Appends "name content-hex" to argv[2] once each file is done; the first error ends it.
CHANGER = r"""
import os, sys
mnt, log_path = sys.argv[1], sys.argv[2]
with open(log_path, "a") as log:
    i = 0
    while True:
        d = f"{mnt}/d{i // 10:04d}"
        try:
            if i % 10 == 0:
                os.mkdir(d)
            name = f"{d}/f{i:05d}"
            data = os.urandom(500)  # inline: metadata only, no chunk to place
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if i % 3 == 0:
                os.rename(name, name + ".r")
                name += ".r"
        except OSError as exc:
            log.write(f"ERROR {i} {exc!r}\n")
            log.flush()
            sys.exit(1)
        log.write(f"{name} {data.hex()}\n")
        log.flush()
        i += 1
"""


def test_a_mount_carries_on_through_another_daemon_when_its_own_is_killed(
    shared: list[Daemon], tmp_path: Path
) -> None:
    """``mount.dfs n2,n3:/`` writing while n2 is killed: the changes in flight go to n3 with their
    request ids, so none fails (EIO) and none is applied twice (an exclusive create or a mkdir
    run again would fail with EEXIST)."""
    _, n2, n3 = shared
    m = Mount(n2, tmp_path / "m", others=(n3,))
    m.start()
    log_path = tmp_path / "changes.log"
    log_path.touch()
    changer = subprocess.Popen([sys.executable, "-c", CHANGER, str(m.path), str(log_path)])

    def done() -> int:
        return len(log_path.read_text().splitlines())

    try:
        try:
            wait_for(lambda: done() >= 40 or changer.poll() is not None, 60, "changes before the kill")
            n2.stop(signal.SIGKILL)
            at_kill = done()
            wait_for(lambda: done() >= at_kill + 40 or changer.poll() is not None, 120, "changes after it")
            assert changer.poll() is None, log_path.read_text().splitlines()[-1]
        finally:
            changer.kill()
            changer.wait()
        lines = [ln.split() for ln in log_path.read_text().splitlines()]
        assert not [ln for ln in lines if ln[0] == "ERROR"]
        for name, content in lines:
            assert Path(name).read_bytes() == bytes.fromhex(content), name
        assert "metadata calls go to" in (n2.data_dir / "mount-m.log").read_text()
    finally:
        m.stop()
    wait_for(lambda: layout(n3).get("n2") == "out", 30, "n2 marked out")
    n3.cli("status", "--wait", "--timeout", "60")
    n3.assert_clean()
