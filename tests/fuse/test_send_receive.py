"""``dfs snapshot send`` / ``receive`` between two independent single-host dfs instances, compared
through real FUSE mounts of both: a full stream, then an incremental one after all kinds of
changes; a corrupt stream refused; a cut stream resumed."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfs.core import codec
from dfs.core import sendstream as ss
from tests.conftest import BIN, Daemon, Mount, free_port, needs_fuse, wait_for
from tests.conftest import admin_ok as admin

pytestmark = [needs_fuse, pytest.mark.fuse]
MiB = 1024 * 1024
# Xattrs dfs computes itself (quota usage views) or a receive keeps while it runs.
MANAGED = ("user.dfs.quota.", "trusted.dfs.receive")


def dfs(d: Daemon, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / "dfs"), "snapshot", *args, "--config", str(d.conf_path)],
        capture_output=True,
        timeout=120,
        **kw,
    )


def pipe(src: Daemon, send_args: list[str], dst: Daemon, recv_args: list[str]) -> tuple[int, str]:
    """``dfs snapshot send ... | dfs snapshot receive ...``: the receiver's exit code and stderr."""
    sender = subprocess.Popen(
        [str(BIN / "dfs"), "snapshot", "send", *send_args, "--config", str(src.conf_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    recv = dfs(dst, "receive", *recv_args, stdin=sender.stdout)
    assert sender.stdout is not None and sender.stderr is not None
    sender.stdout.close()
    code = sender.wait(120)
    with sender.stderr:
        assert code == 0, sender.stderr.read()
    return recv.returncode, recv.stderr.decode()


def decode_all(raw: bytes) -> list[tuple[int, ss.Frame]]:
    dec = ss.Decoder()
    frames = dec.feed(raw)
    dec.close()
    return frames


def tree(top: Path) -> dict[str, Any]:
    """Everything a receive must reproduce, per relative path, read through the mount."""
    out: dict[str, Any] = {}
    groups: dict[int, list[str]] = {}
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in [".", *sorted(dirs + files)] if root == str(top) else sorted(dirs + files):
            p = Path(root) / name if name != "." else top
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            xattrs = {
                n: os.getxattr(p, n, follow_symlinks=False)
                for n in sorted(os.listxattr(p, follow_symlinks=False))
                if not n.startswith(MANAGED)
            }
            row: dict[str, Any] = {
                "mode": oct(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns,
                "nlink": st.st_nlink,
                "xattrs": xattrs,
            }
            if stat.S_ISREG(st.st_mode):
                row["size"] = st.st_size
                row["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    groups.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                row["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                row["rdev"] = st.st_rdev
            out[rel] = row
    out["hard link groups"] = sorted(sorted(g) for g in groups.values())
    return out


def same_tree(a: Path, b: Path) -> None:
    # diff cannot compare fifos and devices (it reports them as differing): tree() does.
    res = subprocess.run(
        ["diff", "-r", "--no-dereference", "--exclude=fifo", "--exclude=null", str(a), str(b)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert tree(a) == tree(b)


@pytest.fixture
def other(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A second, independent single-host dfs and a mount of it."""
    d = Daemon(tmp_path / "var2", free_port())
    d.start()
    m = Mount(d, tmp_path / "mnt2")
    try:
        m.start()
        yield d, m.path
        m.stop()
        d.assert_clean()
    finally:
        m.stop()
        d.stop()


def fill(vol: Path) -> None:
    (vol / "docs" / "deep").mkdir(parents=True)
    (vol / "docs" / "a.txt").write_bytes(b"alpha\n" * 1000)
    (vol / "docs" / "deep" / "big.bin").write_bytes(os.urandom(9 * MiB))  # three blocks
    (vol / "docs" / "small.txt").write_text("small\n")  # inline
    (vol / "empty").write_bytes(b"")
    with open(vol / "sparse", "wb") as f:
        f.truncate(10 * MiB)
        f.seek(9 * MiB)
        f.write(b"end")
    (vol / "top.txt").write_text("top\n")
    with open(vol / "holes", "wb") as f:
        f.truncate(5 * MiB)  # no data at all
    os.symlink("docs/a.txt", vol / "link")
    os.link(vol / "docs" / "a.txt", vol / "hard")
    os.setxattr(vol / "top.txt", "user.color", b"blue")
    os.setxattr(vol / "docs", "user.kind", b"folder")
    os.chmod(vol / "top.txt", 0o640)
    os.chown(vol / "docs" / "small.txt", 1234, 5678)
    os.mkfifo(vol / "fifo", 0o600)
    os.mknod(vol / "null", stat.S_IFCHR | 0o620, os.makedev(1, 3))
    (vol / "private").mkdir(mode=0o2750)
    (vol / "private" / "gone").mkdir()
    (vol / "private" / "gone" / "x").write_text("x\n")


def change(vol: Path) -> None:
    with open(vol / "docs" / "deep" / "big.bin", "r+b") as f:  # one block of three
        f.seek(5 * MiB)
        f.write(b"changed")
    os.rename(vol / "docs" / "deep" / "big.bin", vol / "moved.bin")
    (vol / "new.txt").write_text("new\n")
    (vol / "top.txt").unlink()
    os.symlink("moved.bin", vol / "link2")
    os.link(vol / "new.txt", vol / "docs" / "new-hard")
    os.setxattr(vol / "docs" / "a.txt", "user.tag", b"x" * 100)
    os.removexattr(vol / "docs", "user.kind")
    os.chmod(vol / "docs" / "small.txt", 0o600)
    subprocess.run(["rm", "-r", str(vol / "private" / "gone")], check=True)
    (vol / "empty").unlink()
    (vol / "empty").mkdir()  # a file became a directory


def test_send_receive_full_then_incremental(daemon: Daemon, mnt: Path, other: tuple[Daemon, Path]) -> None:
    d2, mnt2 = other
    # An encrypted source: the stream carries plaintext, the receiver stores it under its own policy.
    admin(daemon, "POST", "/storage/volumes", {"name": "data", "encryption": True})
    vol = mnt / "data"
    wait_for(vol.is_dir, timeout_s=10)
    fill(vol)
    daemon.cli("snapshot", "create", "data", "s1")

    # Full: to a file, received from it.
    stream = mnt.parent / "s1.stream"
    res = dfs(daemon, "send", "data@s1", "-o", str(stream))
    assert res.returncode == 0, res.stderr
    res = dfs(d2, "receive", "copy", "-i", str(stream))
    assert res.returncode == 0, res.stderr
    wait_for((mnt2 / ".snapshots" / "copy" / "s1").is_dir, timeout_s=10)
    same_tree(mnt / ".snapshots" / "data" / "s1", mnt2 / "copy")
    same_tree(mnt / ".snapshots" / "data" / "s1", mnt2 / ".snapshots" / "copy" / "s1")

    # Incremental, through a pipe.
    change(vol)
    daemon.cli("snapshot", "create", "data", "s2")
    code, err = pipe(daemon, ["data@s2", "--from", "s1"], d2, ["copy"])
    assert code == 0, err
    wait_for((mnt2 / ".snapshots" / "copy" / "s2").is_dir, timeout_s=10)
    same_tree(mnt / ".snapshots" / "data" / "s2", mnt2 / "copy")
    same_tree(mnt / ".snapshots" / "data" / "s2", mnt2 / ".snapshots" / "copy" / "s2")

    # Data travels only for the changed block of the renamed file and for new.txt (an encrypted
    # volume keeps no file inline); the renamed file's other blocks, and the blocks of
    # docs/a.txt and docs/small.txt, sent again for a new xattr and a chmod, are references.
    res = dfs(daemon, "send", "data@s2", "--from", "s1", "-o", str(mnt.parent / "s2.stream"))
    assert res.returncode == 0, res.stderr
    assert b" 2 data blocks, 4 base blocks" in res.stderr, res.stderr
    assert (mnt.parent / "s2.stream").stat().st_size < 5 * MiB
    # The same pair always gives the same bytes (what a resume relies on).
    again = dfs(daemon, "send", "data@s2", "--from", "s1")
    assert again.stdout == (mnt.parent / "s2.stream").read_bytes()

    # A cut incremental stream, resumed: no second rollback, the applied part is kept.
    (vol / "more").mkdir()
    for i in range(20):
        (vol / "more" / f"f{i:02}").write_bytes(os.urandom(300 * 1024))
    (vol / "moved.bin").unlink()
    daemon.cli("snapshot", "create", "data", "s3")
    res = dfs(daemon, "send", "data@s3", "--from", "s2")
    assert res.returncode == 0, res.stderr
    raw = res.stdout
    res = dfs(d2, "receive", "copy", input=raw[: len(raw) // 2])
    assert res.returncode != 0 and b"truncated" in res.stderr, res.stderr
    res = dfs(d2, "receive", "copy", "--resume", input=raw)
    assert res.returncode == 0, res.stderr
    assert b"resuming after record" in res.stderr, res.stderr
    wait_for((mnt2 / ".snapshots" / "copy" / "s3").is_dir, timeout_s=10)
    same_tree(mnt / ".snapshots" / "data" / "s3", mnt2 / "copy")


def test_corrupt_stream_refused_and_cut_stream_resumed(
    daemon: Daemon, mnt: Path, other: tuple[Daemon, Path]
) -> None:
    d2, mnt2 = other
    admin(daemon, "POST", "/storage/volumes", {"name": "data"})
    vol = mnt / "data"
    wait_for(vol.is_dir, timeout_s=10)
    fill(vol)
    daemon.cli("snapshot", "create", "data", "s1")
    stream = mnt.parent / "s1.stream"
    res = dfs(daemon, "send", "data@s1", "-o", str(stream))
    assert res.returncode == 0, res.stderr
    raw = stream.read_bytes()

    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 0x01
    res = dfs(d2, "receive", "bad", input=bytes(bad))
    lines = res.stderr.decode().strip().splitlines()
    assert res.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("dfs: snapshot receive:"), lines
    assert "corrupt" in lines[0], lines
    assert not (mnt2 / ".snapshots" / "bad").exists()

    # Cut in the middle (head -c), then resumed with the whole stream, into an empty encrypted
    # volume made beforehand: the receiver encodes under the volume's policy.
    admin(d2, "POST", "/storage/volumes", {"name": "half", "encryption": True})
    cut = subprocess.run(
        f"head -c {len(raw) * 2 // 3} {stream} | {BIN / 'dfs'} snapshot receive half --config {d2.conf_path}",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cut.returncode != 0
    assert "truncated" in cut.stderr, cut.stderr
    res = dfs(d2, "receive", "half", input=raw)  # without --resume: refused, nothing lost
    assert res.returncode != 0 and b"--resume" in res.stderr, res.stderr
    res = dfs(d2, "receive", "half", "--resume", input=raw)
    assert res.returncode == 0, res.stderr
    assert b"resuming after record" in res.stderr, res.stderr
    wait_for((mnt2 / ".snapshots" / "half" / "s1").is_dir, timeout_s=10)
    same_tree(mnt / ".snapshots" / "data" / "s1", mnt2 / "half")
    assert any(codec.header_info(p.read_bytes()).encrypted for p in d2.chunk_files())

    # A well-formed stream whose digest does not match what it builds: refused, no snapshot.
    frames = [f for _, f in decode_all(raw)]
    enc = ss.Encoder()
    assert isinstance(frames[0], ss.Header)
    records = [f for f in frames if not isinstance(f, ss.Header | ss.Trailer)]
    wrong = enc.start(frames[0]) + b"".join(enc.record(r) for r in records) + enc.finish(b"w" * 32)
    res = dfs(d2, "receive", "wrong", input=wrong)
    assert res.returncode != 0
    assert b"does not match the stream's digest" in res.stderr, res.stderr
    assert len(res.stderr.decode().strip().splitlines()) == 1
    assert not (mnt2 / ".snapshots" / "wrong").exists()

    # The corrupt one's volume resumes from the good stream too.
    res = dfs(d2, "receive", "bad", "--resume", input=raw)
    assert res.returncode == 0, res.stderr
    same_tree(mnt / ".snapshots" / "data" / "s1", mnt2 / "bad")
