"""Long kernel caches while the daemon's change notices are complete (mount/fs.py).

A mount of the daemon that holds the metadata lets the kernel cache names and
attributes for minutes instead of the 1 s default, and stays coherent because
every change made elsewhere arrives as a notice that drops what it changed; a
reset (here: a daemon restart) drops every name the mount ever handed out.

Whether the kernel asked is read from the mount's own metrics (FUSE operations
by kind): a walk answered from the kernel's caches reaches no handler.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Daemon, Mount, free_port, needs_fuse, wait_for

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.slow]

_WALKED = ("lookup", "getattr", "getxattr")


def fuse_ops(port: int, ops: tuple[str, ...] = _WALKED) -> int:
    """How many of these FUSE operations the mount has answered so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for op in ops:
        m = re.search(rf'^dfs_fuse_op_seconds_count\{{op="{op}"\}} (\S+)$', text, re.M)
        total += float(m.group(1)) if m else 0.0
    return int(total)


def test_long_caches_stay_coherent_and_a_reset_drops_them(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    port = free_port()
    writer = Mount(d, tmp_path / "m1")
    reader = Mount(d, tmp_path / "m2", options=f"metrics=127.0.0.1:{port}")
    try:
        writer.start()
        reader.start()
        deep = writer.path / "a" / "b" / "c"
        deep.mkdir(parents=True)
        (deep / "f").write_bytes(b"first")
        seen = reader.path / "a" / "b" / "c" / "f"
        assert seen.stat().st_size == 5  # the reader's kernel caches a, b, c and f now
        # Each try walks again past the 1 s default timeouts (with those, every walk would ask
        # again, so this cannot pass by retrying).  Only a notice of the writer's own changes
        # arriving late (a loaded machine) may drop an entry during a try: then try again.
        uncached: list[int] = []
        for _ in range(4):
            time.sleep(1.5)
            assert seen.stat().st_size == 5
            before = fuse_ops(port, ("lookup", "getxattr"))
            getattrs = fuse_ops(port, ("getattr",))
            time.sleep(1.5)
            assert seen.stat().st_size == 5
            assert os.listdir(reader.path / "a" / "b") == ["c"]
            walked = fuse_ops(port, ("lookup", "getxattr"))
            if walked == before:
                break
            uncached.append(walked - before)
        else:
            raise AssertionError(f"every walk reached the mount (kernel asked {uncached} times)")
        # Only the mount point's own attributes stay short (a dead mount must show as such).
        assert fuse_ops(port, ("getattr",)) <= getattrs + 1

        # Changes made elsewhere still show at once: the notices drop the long-cached entries.
        os.chmod(deep / "f", 0o600)
        assert stat.S_IMODE(seen.stat().st_mode) == 0o600
        (deep / "f").write_bytes(b"second!")
        assert seen.read_bytes() == b"second!"
        os.rename(deep / "f", deep / "g")
        assert not seen.exists()
        assert (reader.path / "a" / "b" / "c" / "g").read_bytes() == b"second!"
        os.rename(writer.path / "a" / "b", writer.path / "a" / "moved")
        assert not (reader.path / "a" / "b").exists()
        assert (reader.path / "a" / "moved" / "c" / "g").exists()

        # A daemon restart starts a new notice log: the reader drops every name it handed out,
        # so its kernel asks again (without that, the walk stays cached for minutes).
        cached = reader.path / "a" / "moved" / "c" / "g"
        assert cached.stat().st_size == 7
        d.stop()
        d.start()
        after = fuse_ops(port, ("lookup",))

        def asks_again() -> bool:
            # Lookups, not getattrs: the reset also drops every inode's attributes, which
            # alone would make the kernel ask for those.
            cached.stat()
            return fuse_ops(port, ("lookup",)) > after

        wait_for(asks_again, 30, "the reader's kernel to drop its cached names after the restart")
        (writer.path / "a" / "moved" / "c" / "g").unlink()
        assert not cached.exists()
    finally:
        reader.stop()
        writer.stop()
        if d.proc is not None:
            d.assert_clean()
        d.stop()


def test_a_change_after_close_is_seen_elsewhere_before_the_file_is_released(tmp_path: Path) -> None:
    """A file created by one mount may still be held by the kernel after close(2) returned
    (RELEASE comes later; here an mmap keeps it): a chmod or utime by path from then on is
    not made through the descriptor that wrote it, and another mount sees it at once."""
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    a, b = Mount(d, tmp_path / "a"), Mount(d, tmp_path / "b")
    try:
        a.start()
        b.start()
        fd = os.open(a.path / "f", os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b"x" * 4096)
        held = mmap.mmap(fd, 4096)
        os.close(fd)  # FLUSH; no RELEASE while the mapping holds the file
        try:
            assert (b.path / "f").read_bytes() == b"x" * 4096
            os.chmod(a.path / "f", 0o600)
            assert stat.S_IMODE((b.path / "f").stat().st_mode) == 0o600
            os.utime(a.path / "f", ns=(1_000_000_000, 2_000_000_000))
            assert (b.path / "f").stat().st_mtime_ns == 2_000_000_000
        finally:
            held.close()
        assert stat.S_IMODE((a.path / "f").stat().st_mode) == 0o600
    finally:
        a.stop()
        b.stop()
        d.assert_clean()
        d.stop()
