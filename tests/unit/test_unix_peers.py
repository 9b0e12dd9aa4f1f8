"""Who may use a daemon's unix socket: root, the daemon's user, and a configured group.

The socket file's mode is the first guard; SO_PEERCRED is checked too, so a loosened
mode (or a group grant) never lets anyone else in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.net.rpc import unix_peer_allowed
from tests.conftest import Daemon, free_port

NOBODY = 65534

# Runs as another user: pings the daemon through the unix socket in the directory open as fd DIR_FD.
PING = """
import os, sys, trio
from dfs.core import endpoints
from dfs.net import rpc

async def main() -> None:
    address = f"unix:/proc/self/fd/{os.environ['DIR_FD']}/rpc.sock"
    method = endpoints.declared(os.environ.get("METHOD", "sys.ping"))
    async with rpc.open_client(address, connect_timeout_s=5) as conn:
        print(await method.call(conn))

def leaves(exc):
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc

try:
    trio.run(main)
except BaseException as exc:
    print("refused:", "; ".join(f"{type(e).__name__}: {e}" for e in leaves(exc)))
    sys.exit(1)
"""


def test_the_rule() -> None:
    assert unix_peer_allowed(0, 0, frozenset(), own_uid=1000, group_gid=None)
    assert unix_peer_allowed(1000, 5, frozenset(), own_uid=1000, group_gid=None)
    assert not unix_peer_allowed(1001, 5, frozenset({7}), own_uid=1000, group_gid=None)
    assert unix_peer_allowed(1001, 7, frozenset(), own_uid=1000, group_gid=7)
    assert unix_peer_allowed(1001, 5, frozenset({7}), own_uid=1000, group_gid=7)
    assert not unix_peer_allowed(1001, 5, frozenset({8}), own_uid=1000, group_gid=7)


def _ping_as(
    daemon: Daemon, uid: int, gid: int, method: str = "sys.ping"
) -> subprocess.CompletedProcess[str]:
    fd = os.open(daemon.data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", sys.executable, "-c", PING],
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=(fd,),
            env={**os.environ, "DIR_FD": str(fd), "METHOD": method},
        )
    finally:
        os.close(fd)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")


@pytest.fixture
def grouped(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "var", free_port(), rpc_conf='unix_socket_group = "nogroup"')
    d.start()
    try:
        yield d
    finally:
        d.stop()


@needs_root
def test_another_user_is_refused_even_through_a_loosened_socket(daemon: Daemon) -> None:
    sock = daemon.data_dir / "rpc.sock"
    assert sock.stat().st_mode & 0o777 == 0o600
    os.chmod(daemon.data_dir, 0o755)
    os.chmod(sock, 0o666)  # a mistake an operator could make: SO_PEERCRED still holds
    res = _ping_as(daemon, NOBODY, NOBODY)
    assert res.returncode == 1 and "may not use this daemon's unix socket" in res.stdout, (
        res.stdout + res.stderr
    )
    assert "may not use" in daemon.log_path.read_text()
    assert _ping_as(daemon, 0, 0).stdout.strip() == "pong"


@needs_root
def test_a_configured_group_may_use_the_socket(grouped: Daemon) -> None:
    sock = grouped.data_dir / "rpc.sock"
    st = sock.stat()
    assert st.st_mode & 0o777 == 0o660 and st.st_gid == NOBODY  # nogroup
    os.chmod(grouped.data_dir, 0o755)
    res = _ping_as(grouped, NOBODY, NOBODY)
    assert res.stdout.strip() == "pong", res.stdout + res.stderr
    # A group member is a client: what a mount may do, not what an admin may.
    res = _ping_as(grouped, NOBODY, NOBODY, "s3.key_list")
    assert res.returncode == 1 and "CallerNotAllowed" in res.stdout, res.stdout + res.stderr
    assert _ping_as(grouped, 0, 0, "s3.key_list").returncode == 0  # root: every class
    res = _ping_as(grouped, NOBODY, NOBODY - 1)  # not in the group: the file mode stops it already
    assert res.returncode == 1


def test_an_unknown_group_stops_the_daemon(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port(), rpc_conf='unix_socket_group = "no-such-group-dfs"')
    with pytest.raises(AssertionError, match="no group 'no-such-group-dfs'"):
        d.start()
