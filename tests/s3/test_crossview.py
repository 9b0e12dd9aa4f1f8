"""One namespace, two views: objects written through S3 are files in the mount, and back."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon, Mount, free_port, needs_fuse, wait_for
from tests.s3.conftest import make_client

pytestmark = [needs_fuse, pytest.mark.fuse]


@pytest.fixture
def both(tmp_path: Path) -> Iterator[tuple[Any, Path, Daemon]]:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    m = Mount(d, tmp_path / "mnt")
    try:
        m.start()
        yield make_client(d), m.path, d
    finally:
        m.stop()
        ok = d.proc is not None
        if ok:
            d.assert_clean()
        d.stop()


def test_s3_write_mount_read(both: tuple[Any, Path, Daemon]) -> None:
    s3, mnt, _ = both
    s3.create_bucket(Bucket="cross")
    assert (mnt / "cross").is_dir()
    body = os.urandom(6 * 1024 * 1024 + 5)
    before = time.time()
    s3.put_object(
        Bucket="cross", Key="docs/report.bin", Body=body, ContentType="x/report", Metadata={"owner": "ann"}
    )
    path = mnt / "cross" / "docs" / "report.bin"
    assert path.read_bytes() == body
    st = path.stat()
    assert st.st_size == len(body)
    assert before - 1 <= st.st_mtime <= time.time() + 1
    head = s3.head_object(Bucket="cross", Key="docs/report.bin")
    assert int(head["LastModified"].timestamp()) == int(st.st_mtime)
    assert os.getxattr(path, "user.s3.content-type") == b"x/report"
    assert os.getxattr(path, "user.s3.meta.owner") == b"ann"
    s3.put_object(Bucket="cross", Key="small.txt", Body=b"tiny")
    assert (mnt / "cross" / "small.txt").read_text() == "tiny"
    s3.delete_object(Bucket="cross", Key="docs/report.bin")
    # The mount's kernel caches entries for up to entry_timeout_s (1 s): poll, do not sleep.
    wait_for(lambda: not path.exists(), 10, "the deleted object to leave the mount")
    wait_for(lambda: not (mnt / "cross" / "docs").exists(), 10, "its implicit parent to go too")


def test_mount_write_s3_read(both: tuple[Any, Path, Daemon]) -> None:
    s3, mnt, _ = both
    bucket = mnt / "fromfs"
    bucket.mkdir()
    (bucket / "sub").mkdir()
    (bucket / "empty-dir").mkdir()
    data = os.urandom(5 * 1024 * 1024 + 77)
    (bucket / "sub" / "file.bin").write_bytes(data)
    (bucket / "notes.txt").write_text("hello")
    os.setxattr(bucket / "notes.txt", "user.s3.meta.tag", b"v1")
    os.utime(bucket / "notes.txt", (1_600_000_000, 1_600_000_000))
    assert "fromfs" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fromfs")["Contents"]]
    assert keys == ["empty-dir/", "notes.txt", "sub/file.bin"]
    got = s3.get_object(Bucket="fromfs", Key="sub/file.bin")
    assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(data).digest()
    assert got["ETag"].endswith('-1"')  # written by the mount: not an MD5
    notes = s3.get_object(Bucket="fromfs", Key="notes.txt")
    assert notes["Body"].read() == b"hello"
    assert notes["Metadata"] == {"tag": "v1"}
    assert notes["LastModified"].timestamp() == 1_600_000_000
    assert notes["ContentType"] == "text/plain"
    # A file changed through the mount loses its S3 ETag rather than keep a stale one.
    s3.put_object(Bucket="fromfs", Key="s3file", Body=b"version 1")
    etag = s3.head_object(Bucket="fromfs", Key="s3file")["ETag"]
    (bucket / "s3file").write_bytes(b"version 2!")
    head = s3.head_object(Bucket="fromfs", Key="s3file")
    assert head["ETag"] != etag and head["ContentLength"] == 10
    # Renames through the mount are seen by S3 at once.
    os.rename(bucket / "sub", bucket / "moved")
    assert s3.get_object(Bucket="fromfs", Key="moved/file.bin")["ContentLength"] == len(data)
    with pytest.raises(ClientError):
        s3.head_object(Bucket="fromfs", Key="sub/file.bin")
