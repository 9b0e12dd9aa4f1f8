"""Changes made through S3, the admin API or another mount show in a mount at once.

The mounts keep the default entry/attribute timeouts (1 s), and every check
runs right after the change returned, with no wait: without change notices
(dfs/core/changes.py) the kernel and the mount would answer from their caches.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Mount, free_port, http_call, needs_fuse, wait_for
from tests.s3.conftest import make_client

pytestmark = [needs_fuse, pytest.mark.fuse]

_names = itertools.count()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Any, Path, Path]]:
    """One daemon, its S3 client and two mounts of it."""
    top = tmp_path_factory.mktemp("coherence")
    d = Daemon(top / "var", free_port())
    d.start()
    mounts = [Mount(d, top / "m1"), Mount(d, top / "m2")]
    try:
        for m in mounts:
            m.start()
        yield d, make_client(d), mounts[0].path, mounts[1].path
    finally:
        for m in mounts:
            m.stop()
        if d.proc is not None:
            d.assert_clean()
        d.stop()


@pytest.fixture
def env(setup: tuple[Daemon, Any, Path, Path]) -> tuple[Daemon, Any, Path, Path]:
    return setup


@pytest.fixture
def bucket(env: tuple[Daemon, Any, Path, Path]) -> str:
    _, s3, _, _ = env
    name = f"coh{next(_names)}"
    s3.create_bucket(Bucket=name)
    return name


def test_deleted_bucket_leaves_the_mount_at_once(env: tuple[Daemon, Any, Path, Path]) -> None:
    _, s3, mnt, _ = env
    s3.create_bucket(Bucket="short-lived")
    assert (mnt / "short-lived").is_dir()  # the kernel now caches the entry
    s3.delete_bucket(Bucket="short-lived")
    assert not os.path.exists(mnt / "short-lived")
    assert "short-lived" not in os.listdir(mnt)


def test_new_object_shows_where_the_name_was_known_absent(
    env: tuple[Daemon, Any, Path, Path], bucket: str
) -> None:
    _, s3, mnt, _ = env
    d = mnt / bucket / "dir"
    d.mkdir()  # made here: the mount answers lookups in it from memory
    assert not (d / "obj").exists()
    assert os.listdir(d) == []
    s3.put_object(Bucket=bucket, Key="dir/obj", Body=b"x" * 1234)
    assert (d / "obj").stat().st_size == 1234
    assert os.listdir(d) == ["obj"]
    assert not (d / "sub").exists()
    s3.put_object(Bucket=bucket, Key="dir/sub/deeper/obj2", Body=b"y" * 99)
    assert (d / "sub" / "deeper" / "obj2").read_bytes() == b"y" * 99


def test_overwritten_object_shows_new_size_and_content(
    env: tuple[Daemon, Any, Path, Path], bucket: str
) -> None:
    _, s3, mnt, _ = env
    s3.put_object(Bucket=bucket, Key="a/f.txt", Body=b"first")
    path = mnt / bucket / "a" / "f.txt"
    assert path.stat().st_size == 5  # entry and attributes cached
    assert path.read_bytes() == b"first"  # and the page cache
    s3.put_object(Bucket=bucket, Key="a/f.txt", Body=b"second version")
    assert path.stat().st_size == 14
    assert path.read_bytes() == b"second version"


def test_deleted_object_and_its_implicit_directory_go_at_once(
    env: tuple[Daemon, Any, Path, Path], bucket: str
) -> None:
    _, s3, mnt, _ = env
    s3.put_object(Bucket=bucket, Key="docs/x/report.txt", Body=b"r")
    path = mnt / bucket / "docs" / "x" / "report.txt"
    assert path.read_bytes() == b"r"
    s3.delete_object(Bucket=bucket, Key="docs/x/report.txt")
    assert not path.exists()
    assert not (mnt / bucket / "docs").exists()  # removed with its last object


def test_admin_volume_delete_shows_at_once(env: tuple[Daemon, Any, Path, Path]) -> None:
    d, _, mnt, _ = env
    headers = {"Authorization": f"Bearer {d.admin_token()}", "Content-Type": "application/json"}
    body = json.dumps({"name": "adminvol"}).encode()
    status, _, text = http_call(d.admin_port, "POST", "/storage/volumes", body, headers)
    assert status in (200, 201), text
    assert (mnt / "adminvol").is_dir()
    status, _, text = http_call(d.admin_port, "DELETE", "/storage/volumes/adminvol", None, headers)
    assert status == 204, text
    assert not (mnt / "adminvol").exists()


def test_changes_in_one_mount_show_in_the_other_at_once(
    env: tuple[Daemon, Any, Path, Path], bucket: str
) -> None:
    _, _, m1, m2 = env
    a, b = m1 / bucket, m2 / bucket
    (a / "f").write_bytes(b"one")
    assert (b / "f").read_bytes() == b"one"  # m2 caches entry, attributes and pages

    os.chmod(a / "f", 0o600)
    assert stat.S_IMODE((b / "f").stat().st_mode) == 0o600

    os.utime(a / "f", ns=(1_000_000_000, 2_000_000_000))
    assert (b / "f").stat().st_mtime_ns == 2_000_000_000

    with open(a / "f", "ab") as f:
        f.write(b" and two")
    assert (b / "f").stat().st_size == 11
    assert (b / "f").read_bytes() == b"one and two"

    assert not (b / "g").exists()
    os.rename(a / "f", a / "g")
    assert not (b / "f").exists()
    assert (b / "g").read_bytes() == b"one and two"

    os.unlink(a / "g")
    assert not (b / "g").exists()

    (b / "made-here").mkdir()  # m2 answers lookups in it from memory
    assert not (b / "made-here" / "new").exists()
    (a / "made-here" / "new").touch()
    assert (b / "made-here" / "new").exists()
    os.unlink(a / "made-here" / "new")
    os.rmdir(a / "made-here")
    assert not (b / "made-here").exists()


def test_mount_follows_a_daemon_restart(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    m = Mount(d, tmp_path / "mnt")
    try:
        m.start()
        s3 = make_client(d)
        d.stop()
        d.start()
        probes = itertools.count()

        def bucket_deletes_show_at_once() -> bool:
            # True once the mount is told of changes again (it reconnects with backoff).
            name = f"probe{next(probes)}"
            s3.create_bucket(Bucket=name)
            assert (m.path / name).is_dir()
            s3.delete_bucket(Bucket=name)
            return not (m.path / name).exists()

        wait_for(bucket_deletes_show_at_once, 20, "the mount to follow changes after the restart")
        s3.create_bucket(Bucket="after")
        (m.path / "after" / "f").write_bytes(b"ok")
        assert s3.get_object(Bucket="after", Key="f")["Body"].read() == b"ok"
    finally:
        m.stop()
        if d.proc is not None:
            d.assert_clean()
        d.stop()
