"""An error a daemon answers reaches a `dfs` user as one line, `dfs: <what failed>: <why>`, with
the exit code of the error table (dfs/core/errors.py); --debug or DFS_DEBUG=1 shows the traceback."""

from __future__ import annotations

import subprocess

import pytest

from dfs.core.errors import EX_NOINPUT, EX_UNAVAILABLE, EX_USAGE
from tests.conftest import Daemon


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfs: "), res.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (("node", "remove", "no-such-node"), EX_NOINPUT, "dfs: node remove: no node 'no-such-node'"),
        (("s3", "key", "revoke", "BOGUS"), EX_NOINPUT, "dfs: s3 key revoke: no S3 access key 'BOGUS'"),
        (("node", "set", "n1", "--weight", "-1"), EX_USAGE, "dfs: node set: capacity weight must be"),
    ],
)
def test_a_daemon_error_is_one_line(daemon: Daemon, args: tuple[str, ...], code: int, line: str) -> None:
    res = daemon.cli(*args, check=False)
    assert _one_line(res).startswith(line)
    assert res.returncode == code
    assert res.stdout == ""


def test_no_daemon_is_one_line(daemon: Daemon) -> None:
    daemon.stop()
    res = daemon.cli("status", check=False)
    assert _one_line(res).startswith("dfs: status: cannot connect to ")
    assert res.returncode == EX_UNAVAILABLE


def test_debug_shows_the_traceback(daemon: Daemon) -> None:
    res = daemon.cli("--debug", "node", "remove", "no-such-node", check=False)
    assert "Traceback" in res.stderr and "dfs.core.errors.NotFound: no node 'no-such-node'" in res.stderr
    assert res.returncode == EX_NOINPUT, "the same exit code as without --debug"


def test_dfs_debug_in_the_environment_shows_the_traceback(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DFS_DEBUG", "1")
    res = daemon.cli("s3", "key", "revoke", "BOGUS", check=False)
    assert "Traceback" in res.stderr and "no S3 access key 'BOGUS'" in res.stderr
    assert res.returncode == EX_NOINPUT
    monkeypatch.setenv("DFS_DEBUG", "0")
    res = daemon.cli("s3", "key", "revoke", "BOGUS", check=False)
    assert _one_line(res) == "dfs: s3 key revoke: no S3 access key 'BOGUS'"
