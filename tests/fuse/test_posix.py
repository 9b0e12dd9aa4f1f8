"""Real-mount tests: dfsd + mount.dfs, driven with the os module and ordinary tools."""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
import trio

from dfs.core.auth import CallerClass
from dfs.core.errors import CorruptChunk
from dfs.net import rpc
from tests.conftest import Daemon, Mount, needs_fuse, wait_for

pytestmark = [needs_fuse, pytest.mark.fuse]


def run(*cmd: str, cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed: {res.stderr}{res.stdout}"
    return res.stdout


def make_tree(root: Path) -> None:
    """A varied tree: nested dirs, empty and big files, symlinks, hard links, modes."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "small.txt").write_text("hello dfs\n")
    (root / "a" / "b" / "mid.bin").write_bytes(os.urandom(300_000))
    (root / "a" / "b" / "c" / "zeros").write_bytes(bytes(5_000_000))
    (root / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024 + 123))
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o755)
    os.symlink("a/small.txt", root / "link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.link(root / "a" / "small.txt", root / "hard")
    for i in range(50):
        (root / "a" / f"f{i:03d}").write_text(f"file {i}\n" * i)


def test_basic_io_and_stat(mnt: Path) -> None:
    p = mnt / "hello.txt"
    p.write_bytes(b"hello world")
    assert p.read_bytes() == b"hello world"
    st = p.stat()
    assert st.st_size == 11
    assert stat.S_ISREG(st.st_mode)
    assert st.st_nlink == 1
    # overwrite in the middle, extend, read back
    with open(p, "r+b") as f:
        f.seek(6)
        f.write(b"WORLD and more")
    assert p.read_bytes() == b"hello WORLD and more"
    assert sorted(os.listdir(mnt)) == ["hello.txt"]
    p.unlink()
    assert os.listdir(mnt) == []


def test_large_file_roundtrip_and_partial_overwrite(mnt: Path) -> None:
    data = bytearray(os.urandom(13 * 1024 * 1024 + 7))
    p = mnt / "large"
    with open(p, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(data).digest()
    with open(p, "r+b") as f:
        f.seek(4 * 1024 * 1024 - 3)
        f.write(b"X" * 10)
    data[4 * 1024 * 1024 - 3 : 4 * 1024 * 1024 + 7] = b"X" * 10
    assert p.read_bytes() == bytes(data)
    os.truncate(p, 5 * 1024 * 1024)
    assert p.read_bytes() == bytes(data[: 5 * 1024 * 1024])
    os.truncate(p, 6 * 1024 * 1024)
    assert p.read_bytes() == bytes(data[: 5 * 1024 * 1024]) + bytes(1024 * 1024)


def test_cp_a_and_diff(mnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    run("cp", "-a", str(src), str(mnt / "copy"))
    run("diff", "-r", "--no-dereference", str(src), str(mnt / "copy"))
    a = os.lstat(src / "exec.sh")
    b = os.lstat(mnt / "copy" / "exec.sh")
    assert (a.st_mode, a.st_mtime_ns) == (b.st_mode, b.st_mtime_ns)
    assert os.lstat(mnt / "copy" / "hard").st_ino == os.lstat(mnt / "copy" / "a" / "small.txt").st_ino


def test_rsync_twice_transfers_nothing(mnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    os.setxattr(src / "a" / "small.txt", "user.color", b"blue")
    run("rsync", "-aHAX", f"{src}/", f"{mnt}/dst/")
    out = run("rsync", "-aHAX", "--stats", "--itemize-changes", f"{src}/", f"{mnt}/dst/")
    assert "Number of regular files transferred: 0" in out, out
    run("diff", "-r", "--no-dereference", str(src), str(mnt / "dst"))
    assert os.getxattr(mnt / "dst" / "a" / "small.txt", "user.color") == b"blue"


def test_tar_roundtrip(mnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    tarball = tmp_path / "t.tar"
    run("tar", "-cf", str(tarball), "-C", str(src), ".")
    (mnt / "x").mkdir()
    run("tar", "-xf", str(tarball), "-C", str(mnt / "x"))
    run("diff", "-r", "--no-dereference", str(src), str(mnt / "x"))
    run("tar", "-cf", str(mnt / "again.tar"), "-C", str(mnt / "x"), ".")
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-xf", str(mnt / "again.tar"), "-C", str(out))
    run("diff", "-r", "--no-dereference", str(src), str(out))


def test_git_init_commit_clone_fsck(mnt: Path) -> None:
    repo = mnt / "repo"
    repo.mkdir()
    env_args = ["-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "init.defaultBranch=main"]
    run("git", *env_args, "init", "-q", cwd=repo)
    for i in range(20):
        (repo / f"file{i}.txt").write_text(f"content {i}\n" * 100)
    run("git", *env_args, "add", ".", cwd=repo)
    run("git", *env_args, "commit", "-q", "-m", "first", cwd=repo)
    (repo / "file0.txt").write_text("changed\n")
    run("git", *env_args, "commit", "-q", "-am", "second", cwd=repo)
    run("git", "fsck", "--strict", cwd=repo)
    run("git", "clone", "-q", str(repo), str(mnt / "clone"))
    run("git", "fsck", "--strict", cwd=mnt / "clone")
    assert (mnt / "clone" / "file0.txt").read_text() == "changed\n"
    assert "second" in run("git", "log", "--oneline", cwd=mnt / "clone")


def test_sqlite_wal_integrity(mnt: Path) -> None:
    db = sqlite3.connect(mnt / "test.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(300):
        with db:
            db.execute("INSERT INTO t (v) VALUES (?)", (f"value {i}" * 10,))
            if i % 7 == 0:
                db.execute("DELETE FROM t WHERE id = ?", (i // 2,))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    count = db.execute("SELECT count(*) FROM t").fetchone()[0]
    db.close()
    db = sqlite3.connect(mnt / "test.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == count
    db.close()


def test_mmap_read_write(mnt: Path) -> None:
    p = mnt / "mm"
    p.write_bytes(b"a" * 20000)
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        assert m[:5] == b"aaaaa"
        m[100:105] = b"HELLO"
        m[19995:20000] = b"WORLD"
        m.flush()
        m.close()
    data = p.read_bytes()
    assert data[100:105] == b"HELLO" and data[-5:] == b"WORLD" and len(data) == 20000


def test_hard_links_and_nlink(mnt: Path) -> None:
    a = mnt / "a"
    a.write_text("x")
    os.link(a, mnt / "b")
    (mnt / "d").mkdir()
    os.link(a, mnt / "d" / "c")
    assert a.stat().st_nlink == 3
    assert (mnt / "b").stat().st_ino == a.stat().st_ino
    (mnt / "b").unlink()
    assert a.stat().st_nlink == 2
    assert (mnt / "d" / "c").read_text() == "x"
    with pytest.raises(PermissionError):
        os.link(mnt / "d", mnt / "dlink")
    # directory nlink: 2 + subdirs
    (mnt / "d" / "s1").mkdir()
    (mnt / "d" / "s2").mkdir()
    assert (mnt / "d").stat().st_nlink == 4
    os.rmdir(mnt / "d" / "s1")
    assert (mnt / "d").stat().st_nlink == 3


def test_symlinks(mnt: Path) -> None:
    (mnt / "target").write_text("t")
    os.symlink("target", mnt / "l1")
    os.symlink("/does/not/exist", mnt / "l2")
    assert os.readlink(mnt / "l1") == "target"
    assert (mnt / "l1").read_text() == "t"
    assert os.readlink(mnt / "l2") == "/does/not/exist"
    st = os.lstat(mnt / "l2")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("/does/not/exist")
    with pytest.raises(FileNotFoundError):
        (mnt / "l2").read_text()


def test_xattrs(mnt: Path) -> None:
    p = mnt / "x"
    p.write_text("x")
    os.setxattr(p, "user.a", b"1")
    os.setxattr(p, "user.b", b"\x00\xff" * 100)
    assert os.getxattr(p, "user.a") == b"1"
    assert os.getxattr(p, "user.b") == b"\x00\xff" * 100
    assert sorted(os.listxattr(p)) == ["user.a", "user.b"]
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user.a", b"2", os.XATTR_CREATE)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "user.none")
    assert ei.value.errno == errno.ENODATA
    os.removexattr(p, "user.a")
    assert os.listxattr(p) == ["user.b"]
    (mnt / "dir").mkdir()
    os.setxattr(mnt / "dir", "user.d", b"dir")
    assert os.getxattr(mnt / "dir", "user.d") == b"dir"


def test_chmod_chown_utime(mnt: Path) -> None:
    p = mnt / "f"
    p.write_text("x")
    os.chmod(p, 0o4751)
    assert stat.S_IMODE(p.stat().st_mode) == 0o4751
    os.chown(p, 1234, 5678)
    st = p.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert not st.st_mode & stat.S_ISUID  # chown clears setuid
    os.utime(p, ns=(1_000_000_000_123, 2_000_000_000_456))
    st = p.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123, 2_000_000_000_456)
    before = p.stat().st_ctime_ns
    os.chmod(p, 0o600)
    assert p.stat().st_ctime_ns >= before


def test_times_on_write_and_dir_change(mnt: Path) -> None:
    d = mnt / "d"
    d.mkdir()
    m0 = d.stat().st_mtime_ns
    (d / "f").write_text("1")
    m1 = d.stat().st_mtime_ns
    assert m1 >= m0
    f = d / "f"
    t0 = f.stat().st_mtime_ns
    with open(f, "a") as fh:
        fh.write("more")
    assert f.stat().st_mtime_ns >= t0
    assert f.read_text() == "1more"


def test_sparse_10gib(mnt: Path) -> None:
    p = mnt / "sparse"
    with open(p, "wb") as f:
        f.truncate(10 * 1024**3)
        f.seek(5 * 1024**3)
        f.write(b"middle")
    st = p.stat()
    assert st.st_size == 10 * 1024**3
    assert st.st_blocks * 512 < 16 * 1024 * 1024  # du: only the written block is stored
    with open(p, "rb") as f:
        f.seek(5 * 1024**3 - 4)
        assert f.read(10) == b"\0\0\0\0middle"
        f.seek(10 * 1024**3 - 8)
        assert f.read(100) == bytes(8)
    du = run("du", "-k", str(p)).split()[0]
    assert int(du) < 16 * 1024


def test_rename_over_existing(mnt: Path) -> None:
    (mnt / "a").write_text("A")
    (mnt / "b").write_text("B")
    with open(mnt / "b", "rb") as held:
        os.rename(mnt / "a", mnt / "b")
        assert (mnt / "b").read_text() == "A"
        assert not (mnt / "a").exists()
        assert held.read() == b"B"  # the replaced file stays readable while open
    (mnt / "d1").mkdir()
    (mnt / "d2").mkdir()
    (mnt / "d1" / "x").write_text("x")
    os.rename(mnt / "d1", mnt / "d2")  # dir over empty dir
    assert (mnt / "d2" / "x").read_text() == "x"
    (mnt / "d3").mkdir()
    with pytest.raises(OSError) as ei:
        os.rename(mnt / "d3", mnt / "d2")
    assert ei.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    with pytest.raises(OSError) as ei:
        os.rename(mnt / "d2", mnt / "d2" / "sub")
    assert ei.value.errno == errno.EINVAL


def test_rename_noreplace_and_exchange(mnt: Path) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
    at_fdcwd = -100
    (mnt / "a").write_text("A")
    (mnt / "b").write_text("B")
    rc = renameat2(at_fdcwd, bytes(mnt / "a"), at_fdcwd, bytes(mnt / "b"), 1)
    assert rc == -1 and ctypes.get_errno() == errno.EEXIST
    rc = renameat2(at_fdcwd, bytes(mnt / "a"), at_fdcwd, bytes(mnt / "b"), 2)
    assert rc == 0
    assert (mnt / "a").read_text() == "B" and (mnt / "b").read_text() == "A"


def test_unlink_while_open(mnt: Path) -> None:
    p = mnt / "tmp"
    with open(p, "w+b") as f:
        f.write(b"still here" * 1000)
        f.flush()
        p.unlink()
        assert not p.exists()
        f.seek(0)
        assert f.read(10) == b"still here"
        f.write(b"more")
        f.flush()
        assert os.fstat(f.fileno()).st_nlink == 0


def test_o_append_two_processes(mnt: Path) -> None:
    p = mnt / "log"
    p.write_bytes(b"")
    script = (
        "import os,sys\n"
        "fd=os.open(sys.argv[1], os.O_WRONLY|os.O_APPEND)\n"
        "for i in range(200): os.write(fd, (sys.argv[2]*99+'\\n').encode())\n"
        "os.close(fd)\n"
    )
    procs = [subprocess.Popen(["python3", "-c", script, str(p), c]) for c in "AB"]
    for proc in procs:
        assert proc.wait(60) == 0
    lines = p.read_bytes().splitlines()
    assert len(lines) == 400
    assert all(line in (b"A" * 99, b"B" * 99) for line in lines)


def test_special_files(mnt: Path) -> None:
    os.mkfifo(mnt / "fifo")
    assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
    os.mknod(mnt / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(mnt / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    # FUSE mounts are nodev by default: the node exists but cannot be opened as a device.
    with pytest.raises(PermissionError):
        open(mnt / "null", "wb")  # noqa: SIM115
    sock = mnt / "sock"
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)


def test_readdir_large_directory(mnt: Path) -> None:
    d = mnt / "many"
    d.mkdir()
    names = {f"entry-{i:05d}" for i in range(3000)}
    for n in names:
        (d / n).touch()
    assert set(os.listdir(d)) == names
    # remove half while iterating: nothing skipped or repeated among survivors
    seen = []
    with os.scandir(d) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 100:
                for n in sorted(names)[2000:]:
                    os.unlink(d / n)
    assert len(seen) == len(set(seen))
    assert set(sorted(names)[:2000]) <= set(seen)


def test_statfs_real_capacity(mnt: Path, daemon: Daemon) -> None:
    st = os.statvfs(mnt)
    real = os.statvfs(daemon.data_dir)
    assert abs(st.f_blocks * st.f_frsize - real.f_blocks * real.f_frsize) < 64 * 1024 * 1024
    assert st.f_bavail > 0
    assert "fuse.dfs" in Path("/proc/mounts").read_text()


def test_errors_are_errnos(mnt: Path) -> None:
    with pytest.raises(FileNotFoundError):
        (mnt / "nope").read_text()
    (mnt / "d").mkdir()
    (mnt / "d" / "f").touch()
    with pytest.raises(OSError) as ei:
        os.rmdir(mnt / "d")
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        os.mkdir(mnt / "d")
    with pytest.raises(NotADirectoryError):
        os.listdir(mnt / "d" / "f")
    with pytest.raises(IsADirectoryError):
        os.unlink(mnt / "d")
    with pytest.raises(OSError) as ei:
        (mnt / ("x" * 256)).touch()
    assert ei.value.errno == errno.ENAMETOOLONG


def test_permissions_enforced(mnt: Path) -> None:
    d = mnt / "private"
    d.mkdir(mode=0o700)
    (d / "secret").write_text("s")
    os.chmod(d / "secret", 0o600)
    os.chmod(mnt, 0o755)
    script = f"open({str(d / 'secret')!r}).read()"
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "python3", "-c", script],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "Permission denied" in res.stderr


def test_data_survives_daemon_restart(daemon: Daemon, tmp_path: Path) -> None:
    m = Mount(daemon, tmp_path / "m1")
    m.start()
    try:
        data = os.urandom(6 * 1024 * 1024)
        (m.path / "keep.bin").write_bytes(data)
        (m.path / "small").write_text("small file")
    finally:
        m.stop()
    daemon.stop()
    daemon.start()
    m.start()
    try:
        assert (m.path / "keep.bin").read_bytes() == data
        assert (m.path / "small").read_text() == "small file"
    finally:
        m.stop()
    daemon.assert_clean()


def test_two_mounts_see_closed_files(daemon: Daemon, tmp_path: Path) -> None:
    m1, m2 = Mount(daemon, tmp_path / "m1"), Mount(daemon, tmp_path / "m2")
    m1.start()
    m2.start()
    try:
        (m1.path / "shared.txt").write_text("version 1")
        wait_for(lambda: (m2.path / "shared.txt").exists(), 10, "file to appear in the second mount")
        assert (m2.path / "shared.txt").read_text() == "version 1"
        (m1.path / "shared.txt").write_text("version 2, longer")
        wait_for(
            lambda: (m2.path / "shared.txt").read_text() == "version 2, longer",
            10,
            "new content in the second mount",
        )
        big = os.urandom(5 * 1024 * 1024)
        (m2.path / "big").write_bytes(big)
        wait_for(
            lambda: (m1.path / "big").exists() and (m1.path / "big").stat().st_size == len(big),
            10,
            "big file",
        )
        assert (m1.path / "big").read_bytes() == big
        (m2.path / "shared.txt").unlink()
        wait_for(lambda: not (m1.path / "shared.txt").exists(), 10, "unlink to show in the first mount")
    finally:
        m1.stop()
        m2.stop()
    daemon.assert_clean()


def test_fsync_durable_after_sigkill(daemon: Daemon, tmp_path: Path) -> None:
    import signal

    m = Mount(daemon, tmp_path / "m")
    m.start()
    payloads = {f"f{i}": os.urandom(1000 + i * 300_000) for i in range(8)}
    try:
        for name, data in payloads.items():
            with open(m.path / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        daemon.stop(signal.SIGKILL)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
        wait_for(lambda: not os.path.ismount(m.path), 30, "mount to go away")
    daemon.start()
    m.start()
    try:
        for name, data in payloads.items():
            assert (m.path / name).read_bytes() == data
    finally:
        m.stop()
    daemon.assert_clean()


def test_corrupt_chunk_gives_eio(daemon: Daemon, tmp_path: Path) -> None:
    m = Mount(daemon, tmp_path / "m")
    m.start()
    try:
        data = os.urandom(2 * 1024 * 1024)
        (m.path / "victim").write_bytes(data)
    finally:
        m.stop()
    chunk_files = daemon.chunk_files()
    assert len(chunk_files) == 1
    raw = bytearray(chunk_files[0].read_bytes())
    raw[len(raw) // 2] ^= 0x40
    chunk_files[0].write_bytes(bytes(raw))
    m.start()
    try:
        with pytest.raises(OSError) as ei:
            (m.path / "victim").read_bytes()
        assert ei.value.errno == errno.EIO
    finally:
        m.stop()
    # The bad copy was quarantined at the first read (never served again; a cluster would
    # have replaced it from another replica): the file's block now names a missing chunk.
    assert len(list((daemon.data_dir / "chunks" / "bad").iterdir())) == 1
    report = daemon.fsck()
    assert any("missing chunks" in str(p) for p in report["problems"])  # type: ignore[union-attr]


def test_chunk_verify_quarantines_a_copy_a_client_reports_bad(daemon: Daemon, tmp_path: Path) -> None:
    """A client whose decode of a copy failed asks its node to check again (chunk.verify): a sound
    copy is confirmed, a corrupt one is quarantined like on a read."""
    m = Mount(daemon, tmp_path / "m")
    m.start()
    try:
        (m.path / "reported").write_bytes(os.urandom(1024 * 1024))
    finally:
        m.stop()
    (chunk_file,) = daemon.chunk_files()
    cid = bytes.fromhex(chunk_file.name)

    async def verify() -> object:
        # What a mount would do when it read a bad copy: a client credential is enough.
        client = daemon.credential(CallerClass.CLIENT)
        async with rpc.open_client(daemon.address, call_timeout_s=10, credential=client) as conn:
            try:
                return await conn.call("chunk.verify", cid)
            except CorruptChunk:
                return "corrupt"

    assert trio.run(verify) is True
    raw = bytearray(chunk_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk_file.write_bytes(bytes(raw))
    assert trio.run(verify) == "corrupt"
    assert not chunk_file.exists()
    (bad,) = (daemon.data_dir / "chunks" / "bad").iterdir()
    assert bad.name.startswith(chunk_file.name)
    report = daemon.fsck()
    assert any("missing chunks" in str(p) for p in report["problems"])  # type: ignore[union-attr]


@pytest.mark.slow
def test_full_disk_gives_enospc(tmp_path: Path) -> None:
    from tests.conftest import free_port

    data_dir = tmp_path / "small"
    data_dir.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(data_dir)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip("cannot mount tmpfs")
    # The reserve keeps room for metadata, so deleting works on a full disk.
    d = Daemon(data_dir / "var", free_port(), reserve_bytes=4 * 1024 * 1024)
    m = Mount(d, tmp_path / "m")
    try:
        d.start()
        m.start()
        written: dict[str, bytes] = {}
        try:
            with pytest.raises(OSError) as ei:
                for i in range(100):
                    data = os.urandom(2 * 1024 * 1024)
                    with open(m.path / f"f{i}", "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    written[f"f{i}"] = data
            assert ei.value.errno == errno.ENOSPC
            # Writes into the full store fail at once, not only at close: before, each one
            # succeeded and the mount kept them all in memory, and still did after close.  What
            # was not stored is let go of at close: the file keeps what it had.
            appended = 0
            with pytest.raises(OSError) as ei, open(m.path / "f0", "ab", buffering=0) as f:
                for _ in range(64):
                    f.write(os.urandom(1 << 20))
                    appended += 1
            assert ei.value.errno == errno.ENOSPC and appended < 64
            assert "f0" in written  # (read back below, as it was)
            for name, data in written.items():
                assert (m.path / name).read_bytes() == data
            for name in list(written)[: len(written) // 2]:
                os.unlink(m.path / name)
            # --orphans: a block of the append above was stored before the store filled, and
            # went unreferenced when the rest was dropped (no write is in flight now).
            d.cli("gc", "--now", "--orphans")
            wait_for(lambda: os.statvfs(data_dir).f_bavail * 4096 > 8 * 1024 * 1024, 30, "space to come back")
            (m.path / "after").write_bytes(b"space again")
            assert (m.path / "after").read_bytes() == b"space again"
        finally:
            m.stop()
        d.assert_clean()
    finally:
        d.stop()  # a daemon left running would keep the tmpfs (and the test run) busy
        subprocess.run(["umount", "-l", str(data_dir)], capture_output=True)


@pytest.mark.slow
def test_dfs_up_and_down(tmp_path: Path) -> None:
    from dfs.cli.updown import is_dead_mount
    from tests.conftest import BIN, free_port

    env = dict(os.environ)
    base = tmp_path / "site"
    (base / "var").mkdir(parents=True)
    # A free port, so a dfs already up on this machine (port 7400) does not interfere.
    s3_port, admin_port = free_port(), free_port()
    (base / "var" / "dfs.conf").write_text(
        f'[node]\ndata_dir = "{base / "var"}"\n[rpc]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[s3]\nlisten = "127.0.0.1:{s3_port}"\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
        f'[gossip]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    res = subprocess.run(
        [str(BIN / "dfs"), "up", str(base)], capture_output=True, text=True, env=env, timeout=120
    )
    try:
        assert res.returncode == 0, res.stderr
        assert str(base / "mnt") in res.stdout
        # It prints the S3 endpoint with the root key, and the admin URL with its token.
        root = json.loads((base / "var" / "s3-root.json").read_text())
        assert f"http://127.0.0.1:{s3_port}" in res.stdout
        assert root["access_key"] in res.stdout and root["secret_key"] in res.stdout
        assert f"http://127.0.0.1:{admin_port}/storage/" in res.stdout
        assert (base / "var" / "admin.token").read_text().strip() in res.stdout
        (base / "mnt" / "hello").write_text("hi")
        again = subprocess.run(
            [str(BIN / "dfs"), "up", str(base)], capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stderr
        # The mount process dies: `dfs up` replaces the dead mount.
        for pid in run("pgrep", "-f", f"mount.main .*{base / 'mnt'}").split():
            os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: is_dead_mount(base / "mnt"), 10, "the mount to be dead")
        again = subprocess.run(
            [str(BIN / "dfs"), "up", str(base)], capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stderr
        assert (base / "mnt" / "hello").read_text() == "hi"
        st = subprocess.run([str(BIN / "dfs"), "status", str(base), "--json"], capture_output=True, text=True)
        assert st.returncode == 0 and '"files"' in st.stdout
    finally:
        down = subprocess.run(
            [str(BIN / "dfs"), "down", str(base)], capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert not os.path.ismount(base / "mnt")
    assert not (base / "var" / "dfsd.pid").exists()
    shutil.rmtree(base)


def _site(command: str, base: Path) -> subprocess.CompletedProcess[str]:
    """``dfs up|down BASE`` as a user runs it: without the test run's $DFS_CONFIG."""
    from tests.conftest import BIN

    env = {k: v for k, v in os.environ.items() if k != "DFS_CONFIG"}
    return subprocess.run(
        [str(BIN / "dfs"), command, str(base)], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.slow
def test_dfs_up_stops_the_daemon_it_started_when_the_mount_fails(tmp_path: Path) -> None:
    # All or nothing: a daemon left running would hold the ports, and the next `dfs up` of
    # another directory would fail on them.
    from tests.conftest import write_up_site

    base = write_up_site(tmp_path / "site")
    # Only the mount fails: its log file (the daemon has its own) cannot be opened.
    log = base / "var" / "mount.log"
    log.mkdir()
    try:
        res = _site("up", base)
        assert res.returncode != 0
        # One line naming the cause, no traceback.
        assert res.stderr.strip() == (
            f"dfs: log file {log}: Is a directory (the daemon it started is stopped again)"
        )
        assert not os.path.ismount(base / "mnt")
        assert not (base / "var" / "dfsd.pid").exists()
        pattern = f"dfsd --config {base / 'var'}"
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert left.returncode == 1, f"a dfsd still runs: {left.stdout}"
        log.rmdir()
        again = _site("up", base)
        assert again.returncode == 0, again.stderr
        (base / "mnt" / "hello").write_text("hi")
        assert (base / "mnt" / "hello").read_text() == "hi"
    finally:
        down = _site("down", base)
    assert down.returncode == 0, down.stderr
    assert not (base / "var" / "dfsd.pid").exists()
    shutil.rmtree(base)


def test_dfs_up_mounts_with_the_sites_own_config(tmp_path: Path) -> None:
    """The mount `dfs up` starts reads DIR/var/dfs.conf, as its daemon does (it used to read
    $DFS_CONFIG or /etc/dfs/dfs.conf, so the site's [mount] settings did nothing)."""
    from tests.conftest import write_up_site

    base = write_up_site(tmp_path / "site")
    conf = base / "var" / "dfs.conf"
    conf.write_text(conf.read_text() + '[log]\nlevel = "DEBUG"\n')
    res = _site("up", base)
    down = _site("down", base)
    assert res.returncode == 0 and down.returncode == 0, res.stderr + down.stderr
    # The default level is WARNING: debug records come only from the site's [log] level.
    assert " debug " in (base / "var" / "mount.log").read_text()
    shutil.rmtree(base)


def test_mount_t_dfs_and_subdir(daemon: Daemon, tmp_path: Path) -> None:
    """`mount -t dfs` finds the helper as /sbin/mount.dfs; a SUBDIR source mounts a subtree."""
    from tests.conftest import BIN, is_mounted

    helper = Path("/sbin/mount.dfs")
    original = os.readlink(helper) if helper.is_symlink() else None
    if original is None and helper.exists():
        pytest.skip("a /sbin/mount.dfs that is not a symlink is installed; not replacing it")
    if original is not None:
        helper.unlink()
    helper.symlink_to(BIN / "mount.dfs")
    top, sub = tmp_path / "top", tmp_path / "sub"
    top.mkdir()
    sub.mkdir()
    try:
        # As an fstab line would say it: the credential is a mount option.
        cred = f"credential={daemon.data_dir / 'client.credential'}"
        run("mount", "-t", "dfs", "-o", cred, f"{daemon.address}:/", str(top))
        assert is_mounted(top)
        (top / "vol" / "inner").mkdir(parents=True)
        (top / "vol" / "inner" / "f").write_text("in the subtree")
        run("mount", "-t", "dfs", "-o", f"noatime,_netdev,{cred}", f"{daemon.address}:/vol", str(sub))
        assert sorted(os.listdir(sub)) == ["inner"]
        assert (sub / "inner" / "f").read_text() == "in the subtree"
        assert os.stat(sub).st_ino == 1
        (sub / "new").write_text("via sub")
        # Another mount's new name shows within the entry timeout (1 s).
        wait_for(lambda: (top / "vol" / "new").exists(), 10, "the name to appear in the other mount")
        assert (top / "vol" / "new").read_text() == "via sub"
        assert "fuse.dfs" in run("findmnt", "-n", "-o", "FSTYPE", str(sub))
    finally:
        for m in (sub, top):
            if is_mounted(m):
                subprocess.run(["umount", str(m)], capture_output=True)
                wait_for(lambda m=m: not is_mounted(m), 30, f"{m} to unmount")
        helper.unlink()
        if original is not None:
            helper.symlink_to(original)
    daemon.assert_clean()


def test_locks_within_one_mount(mnt: Path) -> None:
    """flock and fcntl locks are enforced by the kernel among processes of one mount."""
    p = mnt / "locked"
    p.write_text("x")
    script = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'r+')\n"
        "for kind in ('flock', 'lockf'):\n"
        "    try:\n"
        "        (fcntl.flock if kind == 'flock' else fcntl.lockf)(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "        print(kind, 'acquired')\n"
        "    except OSError:\n"
        "        print(kind, 'busy')\n"
    )
    import fcntl

    with open(p, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        fcntl.lockf(f, fcntl.LOCK_EX)
        out = run("python3", "-c", script, str(p))
        assert out.split("\n")[:2] == ["flock busy", "lockf busy"]
    out = run("python3", "-c", script, str(p))
    assert out.split("\n")[:2] == ["flock acquired", "lockf acquired"]


def test_posix_fallocate_falls_back_to_zeros(mnt: Path) -> None:
    """fallocate(2) is EOPNOTSUPP (pyfuse3 has no handler); glibc's posix_fallocate then writes zeros."""
    p = mnt / "prealloc"
    with open(p, "wb") as f:
        f.write(b"head")
        os.posix_fallocate(f.fileno(), 0, 3 * 1024 * 1024)
    assert p.stat().st_size == 3 * 1024 * 1024
    assert p.read_bytes() == b"head" + bytes(3 * 1024 * 1024 - 4)


def test_dfs_bench_reports_against_local(mnt: Path, tmp_path: Path) -> None:
    import json

    from tests.conftest import BIN

    local = tmp_path / "local"
    local.mkdir()
    out = run(
        str(BIN / "dfs"),
        "bench",
        str(mnt),
        "--local",
        str(local),
        "--size-mb",
        "8",
        "--files",
        "40",
        "--json",
    )
    report = json.loads(out)
    steps = {row["step"]: row for row in report["rows"]}
    for step in ("large_write MB/s", "large_read MB/s", "small_create files/s", "small_stat files/s"):
        assert steps[step]["dfs"] > 0
        assert steps[step]["local"] > 0
    assert os.listdir(mnt) == []  # the bench cleans up after itself


def test_attrs_through_the_fd_of_a_new_file(daemon: Daemon, tmp_path: Path) -> None:
    """chmod/chown/utime on a file being written (as tar and cp -a do) take effect in
    order, are visible at once here, and reach other mounts with the data at close."""
    m1, m2 = Mount(daemon, tmp_path / "m1"), Mount(daemon, tmp_path / "m2")
    m1.start()
    m2.start()
    try:
        fd = os.open(m1.path / "f", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.write(fd, b"data")
        os.fchmod(fd, 0o4755)
        os.fchown(fd, 1000, 1000)  # after the chmod: clears set-user-ID
        os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 1000, 1000)
        assert st.st_mtime_ns == 2_000_000_000
        os.close(fd)
        wait_for(lambda: (m2.path / "f").exists(), 10, "the file in the other mount")
        wait_for(
            lambda: (m2.path / "f").stat().st_mtime_ns == 2_000_000_000, 10, "its mtime in the other mount"
        )
        st2 = (m2.path / "f").stat()
        assert (stat.S_IMODE(st2.st_mode), st2.st_uid, st2.st_gid, st2.st_size) == (0o755, 1000, 1000, 4)
        assert (m2.path / "f").read_bytes() == b"data"
        # A write after utime moves mtime to now again.
        fd = os.open(m1.path / "g", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
        os.write(fd, b"later")
        assert os.fstat(fd).st_mtime_ns > 2_000_000_000
        os.close(fd)
    finally:
        m1.stop()
        m2.stop()
    daemon.assert_clean()


def test_mount_exports_fuse_metrics(daemon: Daemon, tmp_path: Path) -> None:
    """-o metrics=HOST:PORT serves the mount's FUSE op latencies and errors for Prometheus."""
    import urllib.request

    from tests.conftest import free_port

    port = free_port()
    m = Mount(daemon, tmp_path / "metered", options=f"metrics=127.0.0.1:{port}")
    m.start()
    try:
        (m.path / "f").write_text("x")
        assert not (m.path / "missing").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
            text = r.read().decode()
        assert 'dfs_fuse_op_seconds_count{op="create"}' in text
        assert 'dfs_fuse_errors_total{errno="ENOENT",op="lookup"}' in text
    finally:
        m.stop()
    daemon.assert_clean()
