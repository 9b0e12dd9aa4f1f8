"""Real-mount POSIX fidelity: what ordinary tools see must be what ext4 would show.

Each test here began as a defect seen through a tool (tar, cp -p, rsync,
setfacl, a conformance suite); the test repeats the tool's system calls.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse]

T2001_NS = 981_173_106_123_456_789  # 2001-02-03 04:05:06.123456789 UTC


def run(*cmd: str, cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed: {res.stderr}{res.stdout}"
    return res.stdout


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_utime_and_chmod_right_after_a_write_are_what_stat_shows(mnt: Path, existing: bool) -> None:
    # `echo x > f; touch -m -d 2001... f; stat f` must show 2001 at once, not the write's time.
    for i in range(20):
        f = mnt / f"f{i}"
        if existing:
            f.write_text("old contents\n")
        with open(f, "w") as fh:  # the shell's `>`: O_CREAT|O_TRUNC
            fh.write("x\n")
        os.utime(f, ns=(T2001_NS, T2001_NS))  # touch -d: utimensat by path, no fd
        assert f.stat().st_mtime_ns == T2001_NS
        assert f.stat().st_atime_ns == T2001_NS
        os.chmod(f, 0o640)
        assert stat.S_IMODE(f.stat().st_mode) == 0o640
        assert f.stat().st_mtime_ns == T2001_NS
        # While another descriptor keeps the file open and has written to it.
        with open(f, "r+") as fh:
            fh.write("y")
            fh.flush()
            os.utime(f, ns=(T2001_NS, T2001_NS + 1))
            assert os.fstat(fh.fileno()).st_mtime_ns == T2001_NS + 1
            assert f.stat().st_mtime_ns == T2001_NS + 1
        assert f.stat().st_mtime_ns == T2001_NS + 1
        assert f.read_text() == "y\n"


def test_touch_after_echo_in_one_shell(mnt: Path) -> None:
    # The shell's close(2) does not wait for the kernel's RELEASE: touch races it.
    script = (
        "for i in $(seq 50); do echo x > f; touch -m -d '2001-02-03 04:05:06.123456789 UTC' f; "
        "stat -c %Y f; done"
    )
    (mnt / "f").write_text("before\n")
    lines = run("bash", "-c", script, cwd=mnt).splitlines()
    assert len(lines) == 50
    assert set(lines) == {"981173106"}, lines


def test_tar_extract_then_compare_finds_no_difference(mnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(30):
        (src / "d" / f"f{i}").write_text(f"{i}\n" * (i * 100))
        os.utime(src / "d" / f"f{i}", ns=(T2001_NS, T2001_NS + i * 1_000_000_000))
    run("tar", "-cf", str(tmp_path / "t.tar"), "-C", str(src), ".")
    for _ in range(3):
        run("tar", "-xf", str(tmp_path / "t.tar"), "-C", str(mnt))
        out = subprocess.run(
            ["tar", "-df", str(tmp_path / "t.tar"), "-C", str(mnt)], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_over_long_names_are_enametoolong_everywhere(mnt: Path) -> None:
    d = mnt / "d"
    d.mkdir()  # made by this mount: it knows every name in it (negative lookups from memory)
    (d / "f").write_text("x")
    (d / "sub").mkdir()
    os.listdir(d)
    long = "n" * 256
    p = d / long
    ops = {
        "stat": lambda: os.stat(p),
        "lstat": lambda: os.lstat(p),
        "chmod": lambda: os.chmod(p, 0o644),
        "chown": lambda: os.chown(p, 1, 1),
        "lchown": lambda: os.lchown(p, 1, 1),
        "truncate": lambda: os.truncate(p, 0),
        "utime": lambda: os.utime(p),
        "open": lambda: os.open(p, os.O_RDONLY),
        "create": lambda: os.open(p, os.O_CREAT | os.O_WRONLY, 0o644),
        "mkdir": lambda: os.mkdir(p),
        "mknod": lambda: os.mknod(p, 0o644 | stat.S_IFIFO),
        "symlink": lambda: os.symlink("f", p),
        "link target": lambda: os.link(d / "f", p),
        "link source": lambda: os.link(p, d / "g"),
        "rename source": lambda: os.rename(p, d / "g"),
        "rename target": lambda: os.rename(d / "f", p),
        "rmdir": lambda: os.rmdir(p),
        "unlink": lambda: os.unlink(p),
        "readlink": lambda: os.readlink(p),
        "getxattr": lambda: os.getxattr(p, "user.x"),
        "setxattr": lambda: os.setxattr(p, "user.x", b"1"),
        "listdir": lambda: os.listdir(p),
    }
    for what, op in ops.items():
        with pytest.raises(OSError) as err:
            op()
        assert err.value.errno == errno.ENAMETOOLONG, f"{what}: {err.value}"
    # A name of exactly NAME_MAX bytes works; the directory is unchanged otherwise.
    ok = d / ("m" * 255)
    ok.write_text("y")
    assert ok.read_text() == "y"
    assert sorted(os.listdir(d)) == sorted(["f", "sub", "m" * 255])
    assert os.statvfs(mnt).f_namemax == 255
    # xattr names have their own limit (255 bytes): the kernel answers ERANGE beyond it.
    with pytest.raises(OSError) as err:
        os.setxattr(d / "f", "user." + "x" * 251, b"1")
    assert err.value.errno == errno.ERANGE


def acl_of(path: Path, default: bool = False) -> list[str]:
    args = ["getfacl", "-c", "-p", "-n"] + (["-d"] if default else []) + [str(path)]
    return [line for line in run(*args).splitlines() if line]


def as_nobody(cmd: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run a shell command as uid/gid 65534 in ``directory`` (reached through an open fd,
    so the test's private temporary directories above it do not get in the way)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                f"cd /proc/self/fd/{fd} && {cmd}",
            ],
            capture_output=True,
            text=True,
            pass_fds=(fd,),
            timeout=60,
        )
    finally:
        os.close(fd)


def test_acls_set_read_chmod_and_enforced(mnt: Path) -> None:
    os.chmod(mnt, 0o755)
    f = mnt / "f"
    f.write_text("secret\n")
    os.chmod(f, 0o600)
    assert as_nobody("cat f", mnt).returncode != 0  # mode alone: nobody may not read
    run("setfacl", "-m", "u:65534:r", str(f))
    assert acl_of(f) == ["user::rw-", "user:65534:r--", "group::---", "mask::r--", "other::---"]
    assert stat.S_IMODE(f.stat().st_mode) == 0o640  # the mask shows in the group bits
    res = as_nobody("cat f", mnt)
    assert res.returncode == 0 and res.stdout == "secret\n", res.stderr
    assert as_nobody("echo x >> f", mnt).returncode != 0  # r only
    # chmod rewrites the mask: the named entry is masked off.
    os.chmod(f, 0o600)
    assert "mask::---" in acl_of(f)
    assert as_nobody("cat f", mnt).returncode != 0
    os.chmod(f, 0o660)
    assert acl_of(f)[3] == "mask::rw-"
    assert as_nobody("cat f", mnt).returncode == 0
    # An ACL that says no more than the mode is the mode: nothing stored.
    run("setfacl", "-b", str(f))
    assert "system.posix_acl_access" not in os.listxattr(f)
    run("setfacl", "--set", "u::rwx,g::r-x,o::--x", str(f))
    assert stat.S_IMODE(f.stat().st_mode) == 0o751
    assert "system.posix_acl_access" not in os.listxattr(f)
    assert as_nobody("cat f", mnt).returncode != 0
    # Group entries and directories.
    d = mnt / "d"
    d.mkdir(mode=0o700)
    assert as_nobody("ls d", mnt).returncode != 0
    run("setfacl", "-m", "g:65534:rx", str(d))
    assert as_nobody("ls d", mnt).returncode == 0
    # Bad values are refused (the kernel validates too), and defaults need a directory.
    with pytest.raises(OSError) as err:
        os.setxattr(f, "system.posix_acl_access", b"\x02\x00\x00\x00\x01\x00")
    assert err.value.errno == errno.EINVAL
    res = subprocess.run(["setfacl", "-d", "-m", "u:1:r", str(f)], capture_output=True, text=True)
    assert res.returncode != 0


def test_default_acls_are_inherited(mnt: Path) -> None:
    d = mnt / "shared"
    d.mkdir(mode=0o750)
    run("setfacl", "-d", "-m", "u:65534:rwx,g::rx,o::-", str(d))
    assert acl_of(d, default=True) == ["user::rwx", "user:65534:rwx", "group::r-x", "mask::rwx", "other::---"]
    old = os.umask(0)
    try:
        fd = os.open(d / "file", os.O_CREAT | os.O_WRONLY, 0o640)
        os.close(fd)
        (d / "sub").mkdir(mode=0o755)
        os.mknod(d / "fifo", 0o666 | stat.S_IFIFO)
    finally:
        os.umask(old)
    # The file: the default masked by the requested mode 0640; the mask shows as group bits.
    assert acl_of(d / "file") == [
        "user::rw-",
        "user:65534:rwx\t#effective:r--",
        "group::r-x\t#effective:r--",
        "mask::r--",
        "other::---",
    ]
    assert stat.S_IMODE((d / "file").stat().st_mode) == 0o640
    # The subdirectory: an access ACL and the default carried on.
    assert acl_of(d / "sub", default=True) == acl_of(d, default=True)
    assert "user:65534:rwx\t#effective:r-x" in acl_of(d / "sub")
    assert stat.S_IMODE((d / "sub").stat().st_mode) == 0o750
    assert "system.posix_acl_access" in os.listxattr(d / "fifo")
    (d / "sub" / "deeper").mkdir()
    assert acl_of(d / "sub" / "deeper", default=True) == acl_of(d, default=True)
    # Removing the default stops inheritance.
    run("setfacl", "-k", str(d))
    (d / "plain").write_text("p")
    assert "system.posix_acl_access" not in os.listxattr(d / "plain")
    # Symlinks never carry ACLs.
    os.symlink("file", d / "sub" / "link")
    assert os.listxattr(d / "sub" / "link", follow_symlinks=False) == []


def _acl_tree(src: Path) -> None:
    (src / "d" / "e").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}").write_text(f"{i}\n")
    run("setfacl", "-m", "u:1234:rw,g:4321:r", str(src / "d" / "f1"))
    run("setfacl", "-m", "u:1234:rwx", str(src / "d" / "e"))
    run("setfacl", "-d", "-m", "u:1234:rx", str(src / "d" / "e"))
    (src / "d" / "e" / "inner").write_text("in\n")
    os.setxattr(src / "d" / "f2", "user.tag", b"v")


def _same_acls(a: Path, b: Path) -> None:
    for p in sorted(a.rglob("*")):
        q = b / p.relative_to(a)
        assert acl_of(q) == acl_of(p), p
        if p.is_dir():
            assert acl_of(q, default=True) == acl_of(p, default=True), p
        assert os.lstat(q).st_mode == os.lstat(p).st_mode, p


def test_cp_a_rsync_and_tar_keep_acls(mnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _acl_tree(src)
    run("cp", "-a", str(src), str(mnt / "cp"))
    _same_acls(src, mnt / "cp")
    run("rsync", "-aHAX", f"{src}/", f"{mnt}/rs/")
    _same_acls(src, mnt / "rs")
    out = run("rsync", "-aHAX", "--stats", "--itemize-changes", f"{src}/", f"{mnt}/rs/")
    assert "Number of regular files transferred: 0" in out, out
    assert [line for line in out.splitlines() if line[:1] in (".", ">", "c")] == [], out
    run("tar", "--acls", "--xattrs", "-cf", str(tmp_path / "t.tar"), "-C", str(src), ".")
    (mnt / "tar").mkdir()
    run("tar", "--acls", "--xattrs", "-xf", str(tmp_path / "t.tar"), "-C", str(mnt / "tar"))
    _same_acls(src, mnt / "tar")
    # And back out of the mount.
    run("tar", "--acls", "--xattrs", "-cf", str(mnt / "again.tar"), "-C", str(mnt / "tar"), ".")
    back = tmp_path / "back"
    back.mkdir()
    run("tar", "--acls", "--xattrs", "-xf", str(mnt / "again.tar"), "-C", str(back))
    _same_acls(src, back)


def test_copy_file_range_copies_through_reads_and_writes(mnt: Path) -> None:
    # No handler in pyfuse3: the kernel falls back to an ordinary copy (README's limits).
    data = os.urandom(3 * 1024 * 1024 + 17)
    (mnt / "src").write_bytes(data)
    with open(mnt / "src", "rb") as src, open(mnt / "dst", "wb") as dst:
        left = len(data)
        while left:
            n = os.copy_file_range(src.fileno(), dst.fileno(), left)
            assert n > 0
            left -= n
    assert (mnt / "dst").read_bytes() == data
