"""Shared fixtures: real daemons on loopback ports and real FUSE mounts in subprocesses.

Every fixture that lets a test change the filesystem checks, at teardown,
that ``dfs fsck`` finds nothing (metadata and chunks agree, refcounts and
nlinks right), as S3QL's tests do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The process harness is shared with the benchmarks; tests import these names from here.
from dfs.bench.harness import BIN as BIN
from dfs.bench.harness import Daemon as Daemon
from dfs.bench.harness import Mount as Mount
from dfs.bench.harness import free_port as free_port
from dfs.bench.harness import is_mounted as is_mounted
from dfs.bench.harness import wait_for as wait_for
from tests.metastores import Clock
from tests.patroni import PatroniCluster
from tests.pg import PgServer, sanitize_schema


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to 127.0.0.1:port: (status, lower-cased headers, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def admin_call(d: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One admin API request to ``d`` with its admin token and a JSON body: (status, parsed JSON or None)."""
    status, _, raw = http_call(
        d.admin_port,
        method,
        path,
        None if body is None else json.dumps(body).encode(),
        {"Authorization": f"Bearer {d.admin_token()}", "Content-Type": "application/json"},
    )
    return status, json.loads(raw) if raw.startswith((b"{", b"[")) else None


def admin_ok(d: Daemon, method: str, path: str, body: Any = None) -> Any:
    """:func:`admin_call` that must succeed (2xx): the parsed answer."""
    status, doc = admin_call(d, method, path, body)
    assert 200 <= status < 300, (status, doc)
    return doc


# A loopback cluster whose nodes are never marked out (a stopped node comes back) and whose
# repair and hints run often: for tests that watch a node go and return.
STEADY_CLUSTER = """
[cluster]
replicas = 2
consistency = "quorum"
dead_grace_s = 300.0
hint_interval_s = 0.5
anti_entropy_interval_s = 1.0
refresh_s = 0.5
peer_timeout_s = 5.0
"""


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and root")


def write_up_site(base: Path) -> Path:
    """A `dfs up` directory whose daemon listens on free loopback ports (so a dfs already up on
    this machine keeps its own); returns ``base``."""
    (base / "var").mkdir(parents=True)
    (base / "var" / "dfs.conf").write_text(
        f'[node]\ndata_dir = "{base / "var"}"\n[rpc]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[s3]\nlisten = "127.0.0.1:{free_port()}"\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[gossip]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    return base


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def mnt(daemon: Daemon, tmp_path: Path) -> Iterator[Path]:
    m = Mount(daemon, tmp_path / "mnt")
    m.start()
    try:
        yield m.path
    finally:
        m.stop()
    if daemon.proc is not None:
        daemon.assert_clean()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the whole session (tests/pg.py)."""
    # Not under tmp_path_factory: pytest's base temp dir is 0700 root, which the postgres
    # user (the server's, when the tests run as root) cannot traverse.
    base = Path(tempfile.mkdtemp(prefix="dfs-pg-"))
    try:
        base.chmod(0o755)
        server = PgServer.start(base / "pg")
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A DSN whose search_path is a schema of this test's own, dropped at teardown."""
    # Readable prefix for debugging, hash of the full node id for uniqueness within 60 chars.
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    name = f"t_{sanitize_schema(request.node.name)[:40]}_{digest}"
    dsn = pg_server.fresh_schema(name)
    try:
        yield dsn
    finally:
        pg_server.drop_schema(name)


@pytest.fixture
def clock() -> Clock:
    """The metadata tests' deterministic clock (tests/metastores.py)."""
    return Clock()


@pytest.fixture
def chunks() -> set[bytes]:
    """The chunk ids the (imaginary) chunk store of a metadata test holds."""
    return set()


@pytest.fixture(params=["sqlite", "postgresql"])
def meta_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a metadata test once per engine; stores opened with tests.metastores.open_meta
    land in SQLite files or in PostgreSQL schemas of the session's server."""
    from tests import metastores

    server = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    metastores.use(request.param, server)
    try:
        yield request.param
    finally:
        metastores.drop_all()


@pytest.fixture
def patroni_cluster() -> Iterator[PatroniCluster]:
    """etcd and two Patroni members with a synchronous standby (tests/patroni.py), fresh for
    each test: failover tests kill members, so nothing of one may carry over to the next."""
    # Not under tmp_path: pytest's base temp dir is 0700 root, which the postgres user (the
    # servers', when the tests run as root) cannot traverse.
    base = Path(tempfile.mkdtemp(prefix="dfs-patroni-"))
    try:
        base.chmod(0o755)
        cluster = PatroniCluster.start(base / "cluster")
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
