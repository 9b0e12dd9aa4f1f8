"""`dfs up` right after its daemon was killed with SIGKILL (issue 13).

The killed daemon leaves its pid file and socket file behind, and its pid goes on
existing for a while (exiting, or a zombie until init reaps it): `dfs up` must
still start a daemon, and every file whose fsync returned before the kill must
be intact afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.cli.updown import is_dead_mount
from tests.conftest import BIN, free_port, is_mounted, needs_fuse, wait_for, write_up_site

pytestmark = [needs_fuse, pytest.mark.fuse]

# Writes files of known content into argv[1], appending "name size" to argv[2] once each
# file's fsync has returned; runs until killed (or until the mount fails it).
WRITER = r"""
import os, sys
mnt, log_path, tag = sys.argv[1], sys.argv[2], sys.argv[3]
with open(log_path, "a") as log:
    i = 0
    while True:
        name = f"{mnt}/{tag}-{i:05d}"
        data = os.urandom(16) * ((300_000 if i % 5 == 4 else 2_000 + 97 * i) // 16)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.write(f"{name} {len(data)} {data[:16].hex()}\n")
        log.flush()
        i += 1
"""


def dfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "dfs"), *args], capture_output=True, text=True, timeout=120)


def mount_pids(mnt: Path) -> list[int]:
    res = subprocess.run(["pgrep", "-f", f"mount.main .*{mnt}( |$)"], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split()]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A `dfs up` directory on free ports; brought down (and its mount processes gone) after."""
    base = write_up_site(tmp_path / "site")
    try:
        yield base
    finally:
        down = dfs("down", str(base))
        # Mounts detached lazily end once their last file is closed; none may outlive the test.
        wait_for(lambda: not mount_pids(base / "mnt"), 30, "the mount processes to exit")
    assert down.returncode == 0, down.stderr
    assert not (base / "var" / "dfsd.pid").exists()


def _zombie() -> subprocess.Popen[bytes]:
    child = subprocess.Popen(["true"])
    wait_for(lambda: "State:\tZ" in Path(f"/proc/{child.pid}/status").read_text(), 10, "a zombie child")
    return child


@pytest.mark.parametrize("leftover", ["zombie", "reused pid"])
def test_up_starts_a_daemon_over_what_a_killed_one_left(site: Path, leftover: str) -> None:
    """The pid file names a process that exists but is no daemon of this data dir: a zombie (the
    daemon killed, not yet reaped) or a stranger given the pid again; a socket file nobody listens
    on lies beside it.  Only asking over the socket tells that no daemon runs."""
    other = _zombie() if leftover == "zombie" else subprocess.Popen(["sleep", "600"])
    try:
        (site / "var" / "dfsd.pid").write_text(f"{other.pid}\n")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(site / "var" / "rpc.sock"))  # closed without unlinking, as SIGKILL leaves it
        res = dfs("up", str(site))
        assert res.returncode == 0, res.stderr
        pid = int((site / "var" / "dfsd.pid").read_text())
        assert pid != other.pid
        (site / "mnt" / "hello").write_text("hi")
        assert (site / "mnt" / "hello").read_text() == "hi"
        assert other.poll() is None or leftover == "zombie", "dfs up must not have signalled it"
        # Now a daemon answers: dfs up uses it and its mount.
        again = dfs("up", str(site))
        assert again.returncode == 0, again.stderr
        assert int((site / "var" / "dfsd.pid").read_text()) == pid
    finally:
        other.kill()
        other.wait()


def _count(log_path: Path) -> int:
    return len(log_path.read_text().splitlines())


def _wait_fsynced(log_path: Path, at_least: int, writer: subprocess.Popen[bytes]) -> None:
    wait_for(
        lambda: _count(log_path) >= at_least or writer.poll() is not None, 30, "the writer to fsync files"
    )


def _check_intact(log_path: Path) -> int:
    """Every file the writer saw fsynced has its size and content; returns how many."""
    n = 0
    for line in log_path.read_text().splitlines():
        name, size, head = line.split()
        path = Path(name)
        assert path.stat().st_size == int(size), f"{name}: size"
        data = path.read_bytes()
        block = bytes.fromhex(head)
        assert data == block * (int(size) // len(block)), f"{name}: content"
        n += 1
    return n


@pytest.mark.slow
def test_up_after_kill_9_twenty_times_loses_no_fsynced_byte(site: Path) -> None:
    mnt, var = site / "mnt", site / "var"
    log_path = site / "fsynced.log"
    log_path.touch()
    res = dfs("up", str(site))
    assert res.returncode == 0, res.stderr
    for cycle in range(20):
        before = _count(log_path)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt), str(log_path), f"c{cycle:02d}"])
        try:
            _wait_fsynced(log_path, before + 8, writer)
            assert writer.poll() is None, f"writer failed in cycle {cycle}"
            os.kill(int((var / "dfsd.pid").read_text()), signal.SIGKILL)
        finally:
            writer.kill()
        # The writer cannot end yet: closing its file as it exits waits for the mount, which
        # waits (up to [meta] failover_timeout_s) for the daemon to come back.
        if cycle % 2 == 0:
            # Detached, the old mount process goes on serving the writer's file: it finishes
            # that call with the daemon started below, then ends.
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=True, capture_output=True)
        else:
            # The mount process dies too: `dfs up` finds a dead mount (ENOTCONN) to detach.
            for pid in mount_pids(mnt):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: is_dead_mount(mnt), 10, "the mount to be dead")
        # At once, while the killed daemon may still exist (exiting, or a zombie).
        res = dfs("up", str(site))
        assert res.returncode == 0, f"cycle {cycle}: {res.stderr}"
        writer.wait(timeout=60)
        assert is_mounted(mnt) and not is_dead_mount(mnt)
        assert _check_intact(log_path) >= before + 8
    # A writer killed between uploading a block and committing it leaves that chunk stored
    # and unreferenced (the orphan sweep deletes such chunks after [storage] orphan_delay_s):
    # the only residue a crash may leave. Anything else is damage.
    report = json.loads(dfs("fsck", str(site), "--json").stdout)
    assert [p for p in report["problems"] if "(orphans)" not in p] == [], report
    dfs("fsck", str(site), "--json", "--repair")
    report = json.loads(dfs("fsck", str(site), "--json").stdout)
    assert report["problems"] == [], report


def test_a_second_daemon_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    from tests.conftest import Daemon

    d = Daemon(tmp_path / "var", free_port())
    d.start()
    try:
        res = subprocess.run(
            [str(BIN / "dfsd"), "--config", str(d.conf_path), "--listen", f"127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 1
        assert res.stderr.strip().splitlines() == [
            f"dfsd: {d.data_dir}: another dfsd is running on this data directory"
        ]
        assert d.proc is not None and d.proc.poll() is None
        d.assert_clean()
    finally:
        d.stop()


@pytest.mark.slow
def test_a_close_that_failed_while_the_daemon_was_down_is_stored_once_it_is_back(tmp_path: Path) -> None:
    """The daemon stays away past the mount's failover window: close(2) fails with EIO, and
    the mount keeps the data and stores it by itself once the daemon is back ([mount]
    unstored_keep_s), as a second mount then shows.  Before, it stayed in the first mount's
    memory until the file's next close there."""
    from tests.conftest import Daemon, Mount

    d = Daemon(
        tmp_path / "var",
        free_port(),
        meta_conf="failover_timeout_s = 2.0",
        extra_conf="\n[mount]\nunstored_keep_s = 120.0\n",
    )
    d.start()
    first = Mount(d, tmp_path / "mnt", options=f"config={d.conf_path}")
    second = Mount(d, tmp_path / "mnt2")
    first.start()
    try:
        data = os.urandom((4 << 20) + 123_457)  # a whole block and a tail
        fd = os.open(first.path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            d.stop()
            with pytest.raises(OSError) as closing:
                os.close(fd)
        assert closing.value.errno == errno.EIO
        log_path = d.data_dir / "mount-mnt.log"
        # The kernel sends the release after close(2) returned; it fails the same way.
        # Each of its attempts to reach the daemon waits out a connect timeout: ~35 s in all.
        wait_for(lambda: "release failed" in log_path.read_text(), 120, "the release to fail")
        d.start()
        second.start()
        path = second.path / "f"
        wait_for(
            lambda: path.exists() and path.stat().st_size == len(data),
            30,
            "the first mount to store what its close could not",
        )
        assert path.read_bytes() == data
        assert "stored on a later try" in log_path.read_text()
        second.stop()
        first.stop()
        report = d.fsck()
        assert report["problems"] == [], report
    finally:
        second.stop()
        first.stop()
        d.stop()
