"""The master key reaches every daemon that serves the same (PostgreSQL) metadata.

Real daemons sharing a PostgreSQL schema: a peer takes the founder's master.key
without anyone copying it (same bytes, mode 0600), follows ``dfs key rotate``
(master.key.old included), and once the founder is killed still serves an
encrypted volume's file written through the founder.  A peer whose key comes from
``DFS_MASTER_KEY`` and differs writes no file and is reported, not overwritten.  A
SQLite primary that lost its key refuses to start rather than make a new one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dfs.core import endpoints, keys
from dfs.core.auth import CallerClass
from dfs.net import rpc
from tests.cluster.test_replication import FAST, loopback_cluster
from tests.conftest import BIN, Daemon, Mount, admin_ok, free_port, needs_fuse, wait_for

pytestmark = [pytest.mark.slow]

CONF = '[cluster]\nreplicas = 2\nconsistency = "strong"\n'
MARKER = b"MASTER-KEY-SYNC-MARKER-77f3"


@pytest.fixture
def pg_meta(pg_dsn: str) -> str:
    return f'engine = "postgresql"\ndsn = "{pg_dsn}"\nfailover_timeout_s = 30.0\n'


@pytest.fixture
def pair(tmp_path: Path, pg_meta: str) -> Iterator[list[Daemon]]:
    with loopback_cluster(tmp_path, 2, CONF, meta_conf=pg_meta) as daemons:
        yield daemons


def key_files(d: Daemon) -> tuple[bytes | None, bytes | None]:
    """(master.key, master.key.old) of ``d``, each None if absent; both must be mode 0600."""
    out: list[bytes | None] = []
    for name in ("master.key", "master.key.old"):
        path = d.data_dir / name
        if not path.exists():
            out.append(None)
            continue
        assert path.stat().st_mode & 0o777 == 0o600, f"{path} is not mode 0600"
        out.append(path.read_bytes())
    return out[0], out[1]


def key_status(d: Daemon) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(d.cli("key", "status", "--json").stdout)
    return status


def fingerprints(d: Daemon) -> dict[str, str | None]:
    """Each metadata-serving daemon's master key fingerprint, as ``dfs key status`` on ``d`` shows."""
    return {str(x.get("node_id")): x.get("fingerprint") for x in key_status(d)["daemons"]}


def store_holds(d: Daemon, needle: bytes) -> bool:
    top = d.data_dir / "chunks"
    return any(needle in p.read_bytes() for p in top.rglob("*") if p.is_file())


@needs_fuse
def test_a_peer_takes_follows_and_serves_with_the_founders_key(pair: list[Daemon], tmp_path: Path) -> None:
    n1, n2 = pair
    # Taken before n2 reported ready, with nobody copying it.
    first, _ = key_files(n1)
    assert first is not None and key_files(n2) == (first, None)
    fp1 = keys.fingerprint(first)
    wait_for(lambda: fingerprints(n2) == {"n1": fp1, "n2": fp1}, 20, "both daemons listed with one key")

    admin_ok(n1, "POST", "/storage/volumes", {"name": "secret", "encryption": True, "compression": "none"})
    data = b"".join(os.urandom(4000) + MARKER for _ in range(300))
    m1 = Mount(n1, tmp_path / "m1")
    m1.start()
    try:
        (m1.path / "secret" / "before").write_bytes(data)
        assert (m1.path / "secret" / "before").read_bytes() == data
    finally:
        m1.stop()
    assert not store_holds(n1, MARKER) and not store_holds(n2, MARKER)

    rotated = json.loads(n1.cli("key", "rotate", "--json").stdout)
    assert rotated["old_fingerprint"] == fp1 and rotated["rewrapped"] == 1
    fp2 = rotated["master_fingerprint"]
    second, old = key_files(n1)
    assert second is not None and keys.fingerprint(second) == fp2 and old == first
    # Followed within a few of its 2 s checks: the new key current, the previous kept.
    wait_for(lambda: key_files(n2) == (second, first), 20, "n2 to follow the rotation")
    status = key_status(n2)
    assert status["cluster_fingerprint"] == fp2 and status["master_fingerprint"] == fp2
    assert all(d["in_sync"] for d in status["daemons"]) and fingerprints(n2) == {"n1": fp2, "n2": fp2}
    assert "MISMATCH" not in n2.cli("key", "status").stdout

    # The founder dies: n2 alone serves the metadata, the data keys and the file (its copy).
    n1.stop(signal.SIGKILL)
    m2 = Mount(n2, tmp_path / "m2")
    m2.start()
    try:
        assert (m2.path / "secret" / "before").read_bytes() == data
    finally:
        m2.stop()
    for d in (n1, n2):
        log = d.log_path.read_text()
        assert first.hex() not in log and second.hex() not in log

    n1.start()  # back, so that every chunk has its R copies for the fsck below
    n2.cli("status", "--wait", "--timeout", "60")
    n2.assert_clean()


def _keys_volumes(d: Daemon) -> dict[str, Any]:
    """keys.volumes as a mount asks it (it makes an encrypted volume's first data key)."""

    async def go() -> dict[str, Any]:
        async with rpc.open_client(
            d.address, call_timeout_s=30, credential=d.credential(CallerClass.CLIENT)
        ) as c:
            return await endpoints.KEYS_VOLUMES.call(c)

    return trio.run(go)


def test_an_environment_key_that_differs_is_reported_not_replaced(
    tmp_path: Path, pg_meta: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n1 = Daemon(
        tmp_path / "n1",
        free_port(),
        node_id="n1",
        zone="z1",
        gossip_conf=FAST,
        extra_conf=CONF,
        meta_conf=pg_meta,
    )
    seed = f'\nseeds = "127.0.0.1:{n1.gossip_port}"'
    n2 = Daemon(
        tmp_path / "n2",
        free_port(),
        node_id="n2",
        zone="z2",
        gossip_conf=FAST + seed,
        extra_conf=CONF + f'meta = "127.0.0.1:{n1.port}"\n',
        meta_conf=pg_meta,
        joins=n1,
    )
    other = os.urandom(32)
    n1.start()
    try:
        with monkeypatch.context() as env:
            env.setenv(keys.MASTER_KEY_ENV, other.hex())
            n2.start()  # inherits the environment
        admin_ok(n1, "POST", "/storage/volumes", {"name": "secret", "encryption": True})
        answer = _keys_volumes(n1)  # the first data key, wrapped under n1's key: now recorded
        assert len(answer["keys"]) == 1
        first, _ = key_files(n1)
        assert first is not None
        fp1, fp_env = keys.fingerprint(first), keys.fingerprint(other)
        wait_for(lambda: "master key MISMATCH" in n2.log_path.read_text(), 20, "n2 to report the mismatch")
        assert not (n2.data_dir / "master.key").exists() and not (n2.data_dir / "master.key.old").exists()
        wait_for(lambda: "n2" in fingerprints(n1), 20, "n1 to list n2")
        status = key_status(n1)
        by_node = {d["node_id"]: d for d in status["daemons"]}
        assert by_node["n1"]["fingerprint"] == fp1 and by_node["n1"]["in_sync"]
        assert by_node["n2"]["fingerprint"] == fp_env and by_node["n2"]["source"] == "environment"
        assert not by_node["n2"]["in_sync"]
        assert "MISMATCH" in n1.cli("key", "status").stdout
        # n2 serves no data key it cannot open (fails closed), and never the wrong one.
        assert _keys_volumes(n2)["keys"] == []
        log = n2.log_path.read_text()
        assert other.hex() not in log and first.hex() not in log
        n1.assert_clean()
    finally:
        n2.stop()
        n1.stop()


def test_a_sqlite_primary_without_its_key_refuses_to_start(tmp_path: Path) -> None:
    """Never a new master key over data keys wrapped under another: with SQLite nobody could
    hand the key back, so the daemon refuses to start: one line naming the key, no traceback."""
    d = Daemon(tmp_path / "n1", free_port(), node_id="s1")
    d.start()
    try:
        admin_ok(d, "POST", "/storage/volumes", {"name": "secret", "encryption": True})
        assert len(_keys_volumes(d)["keys"]) == 1
        d.assert_clean()
    finally:
        d.stop()
    key_file = d.data_dir / "master.key"
    fp = keys.fingerprint(key_file.read_bytes())
    saved = key_file.read_bytes()
    key_file.unlink()
    proc = subprocess.run(
        [str(BIN / "dfsd"), "--config", str(d.conf_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert fp in last and "refusing to start" in last and "Traceback" not in proc.stderr
    assert not key_file.exists()
    key_file.write_bytes(saved)
    key_file.chmod(0o600)
    d.start()  # the key back: it serves the data key again
    try:
        assert len(_keys_volumes(d)["keys"]) == 1
    finally:
        d.stop()
