"""Volume snapshots through a real FUSE mount, the CLI and the admin API: read-only trees
(EROFS for every change), restore (whole volume and one path), clone, delete, and the
leader's scheduled snapshots with a real minutely tier."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Daemon, free_port, http_call, needs_fuse, wait_for
from tests.conftest import admin_ok as admin

pytestmark = [needs_fuse, pytest.mark.fuse]
EROFS = "Read-only file system"


def sh(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)


def digest(top: Path) -> dict[str, str]:
    """relative path -> content hash (files), 'dir' (directories) or the target (symlinks)."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(top):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), top)] = "dir"
        for name in files:
            p = Path(root) / name
            rel = os.path.relpath(p, top)
            out[rel] = os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fill(vol: Path) -> None:
    (vol / "docs" / "deep").mkdir(parents=True)
    (vol / "docs" / "a.txt").write_bytes(b"alpha\n" * 1000)
    (vol / "docs" / "deep" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (vol / "top.txt").write_text("top\n")
    os.symlink("docs/a.txt", vol / "link")
    os.setxattr(vol / "top.txt", "user.color", b"blue")


def test_snapshot_is_read_only_and_restores(daemon: Daemon, mnt: Path) -> None:
    admin(daemon, "POST", "/storage/volumes", {"name": "data"})
    vol = mnt / "data"
    wait_for(vol.is_dir, timeout_s=10)
    fill(vol)
    before = digest(vol)
    daemon.cli("snapshot", "create", "data", "s1")
    snap = mnt / ".snapshots" / "data" / "s1"
    wait_for(snap.is_dir, timeout_s=10)
    assert digest(snap) == before  # reading works
    assert os.getxattr(snap / "top.txt", "user.color") == b"blue"
    outside = vol / "outside.txt"
    outside.write_text("o\n")

    for cmd in [
        f"echo x > {snap}/top.txt",  # O_TRUNC
        f"echo x >> {snap}/top.txt",  # an open for writing
        f"touch {snap}/new",
        f"touch {snap}/top.txt",  # utimes
        f"mkdir {snap}/d",
        f"rm {snap}/top.txt",
        f"rm -r {snap}/docs/deep",
        f"rmdir {snap}",
        f"mv {snap}/top.txt {snap}/moved",
        f"mv {snap}/top.txt {vol}/moved",
        f"mv {outside} {snap}/in",
        f"ln {outside} {snap}/hard",
        f"ln -s x {snap}/sym",
        f"chmod 600 {snap}/top.txt",
        f"chown 5 {snap}/top.txt",
        f"truncate -s 0 {snap}/top.txt",
        f"setfattr -n user.k -v v {snap}/top.txt",
        f"setfattr -x user.color {snap}/top.txt",
        f"mv {mnt}/.snapshots {mnt}/elsewhere",
        f"mkdir {mnt}/.snapshots/other",
    ]:
        res = sh(cmd)
        assert res.returncode != 0 and EROFS in res.stderr, (cmd, res.returncode, res.stderr)
    assert digest(snap) == before

    # Change the volume, then roll it back: it looks like the snapshot again.
    (vol / "top.txt").write_text("changed\n")
    (vol / "docs" / "a.txt").unlink()
    (vol / "new-dir").mkdir()
    daemon.cli("snapshot", "restore", "data", "s1")
    wait_for(lambda: digest(vol) == before, timeout_s=15)
    assert sh(f"diff -r {snap} {vol}").returncode == 0
    (vol / "docs" / "writable").write_text("yes\n")  # the restored tree is writable

    # One path out of the snapshot; a clone as a new volume.
    daemon.cli("snapshot", "restore", "data", "s1", "--path", "docs/deep", "--to", "/data/deep-again")
    wait_for((vol / "deep-again" / "big.bin").exists, timeout_s=10)
    assert (vol / "deep-again" / "big.bin").read_bytes() == (snap / "docs" / "deep" / "big.bin").read_bytes()
    daemon.cli("snapshot", "clone", "data", "s1", "copy")
    wait_for((mnt / "copy").is_dir, timeout_s=10)
    assert digest(mnt / "copy") == before
    (mnt / "copy" / "more").write_text("m\n")

    listed = json.loads(daemon.cli("snapshot", "list", "data", "--json").stdout)
    assert [(s["name"], s["origin"], s["files"]) for s in listed] == [("s1", "manual", 4)]
    # The CLI's errors: a bad schedule is a usage error, a missing snapshot EX_NOINPUT.
    assert daemon.cli("snapshot", "schedule", "data", "daily", check=False).returncode == 2
    assert daemon.cli("snapshot", "delete", "data", "nope", check=False).returncode == 66
    res = daemon.cli(
        "snapshot", "restore", "data", "s1", "--path", "top.txt", "--to", "/.snapshots/x", check=False
    )
    assert res.returncode == 77 and "read-only" in res.stderr
    daemon.cli("snapshot", "delete", "data", "s1")
    wait_for(lambda: not snap.exists(), timeout_s=10)
    daemon.cli("gc", "--now")
    # fsck at teardown (the mnt fixture): the deleted snapshot's references are all gone.


@pytest.mark.slow
def test_scheduled_snapshots_are_taken_and_expired(tmp_path: Path) -> None:
    """A real minutely tier keeping one: the leader's duty (checking every 0.5 s) takes one
    snapshot a minute and expires the previous; manual ones stay."""
    d = Daemon(tmp_path / "var", free_port(), extra_conf="\n[snapshots]\ncheck_interval_s = 0.5\n")
    d.start()
    try:
        admin(d, "POST", "/storage/volumes", {"name": "data", "snapshot_schedule": "minutely=1"})
        admin(d, "POST", "/storage/snapshot", {"volume": "data", "name": "mine"})

        def autos() -> list[str]:
            rows = admin(d, "GET", "/storage/snapshot?volume=data")["snapshots"]
            return [s["name"] for s in rows if s["origin"] == "minutely"]

        wait_for(lambda: len(autos()) == 1, timeout_s=30)
        first = autos()[0]
        assert first.startswith("auto-minutely-")
        # Within about a minute the next minute's replaces it.
        wait_for(lambda: autos() not in ([], [first]), timeout_s=130)
        assert len(autos()) == 1
        names = [s["name"] for s in admin(d, "GET", "/storage/snapshot?volume=data")["snapshots"]]
        assert "mine" in names
        status = d.cli("status").stdout
        assert "snapshots data" in status and "schedule minutely=1" in status

        def exported() -> bytes:
            auth = {"Authorization": f"Bearer {d.admin_token()}"}
            return http_call(d.admin_port, "GET", "/metrics", None, auth)[2]

        wait_for(lambda: b'dfs_snapshots{volume="data"} 2.0' in exported(), timeout_s=30)
        assert b'dfs_snapshot_last_success_timestamp_seconds{volume="data"}' in exported()
        d.cli("gc", "--now")
        d.assert_clean()
    finally:
        d.stop()


@pytest.mark.slow
def test_snapshot_taken_while_writing_is_one_point_in_time(daemon: Daemon, mnt: Path) -> None:
    """A snapshot of a tree bigger than a batch, taken while a writer keeps creating files in
    sequence: its copy holds exactly the files created before some moment (a prefix of the
    sequence, no gap), though it was copied in several transactions with writes in between."""
    import threading

    admin(daemon, "POST", "/storage/volumes", {"name": "data"})
    vol = mnt / "data"
    wait_for(vol.is_dir, timeout_s=10)
    for d in range(3):
        (vol / f"d{d}").mkdir()
        for i in range(700):
            (vol / f"d{d}" / f"f{i}").write_bytes(b"%d/%d\n" % (d, i))
    seq = vol / "seq"
    seq.mkdir()
    stop = threading.Event()
    made: list[int] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            (seq / f"f{n:06d}").write_bytes(b"x")
            made.append(n)
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(made) > 50, timeout_s=30)
        daemon.cli("snapshot", "create", "data", "s1")
        count = len(made)
        wait_for(lambda: len(made) > count + 50, timeout_s=30)  # and writing went on after
    finally:
        stop.set()
        thread.join()
    snap = mnt / ".snapshots" / "data" / "s1"
    wait_for(snap.is_dir, timeout_s=10)
    names = sorted(os.listdir(snap / "seq"))
    assert names == [f"f{n:06d}" for n in range(len(names))]  # a prefix: one point in time
    assert 50 < len(names) < len(made)
    assert all(len(os.listdir(snap / f"d{d}")) == 700 for d in range(3))
    listed = json.loads(daemon.cli("snapshot", "list", "data", "--json").stdout)
    assert listed[0]["files"] == 2100 + len(names)
