"""S3 versioning through a real FUSE mount: in a bucket with versioning Enabled, overwriting a file
(in place with O_TRUNC, or by renaming another file over it) and rm keep the previous versions,
which S3 reads by versionId and `dfs status` counts; the mount never lists them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, needs_fuse, wait_for
from tests.s3.conftest import make_client

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.slow]


def versions(s3: Any, bucket: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    listed = s3.list_object_versions(Bucket=bucket)
    return listed.get("Versions", []), listed.get("DeleteMarkers", [])


def test_overwrite_and_rm_through_the_mount_keep_versions(daemon: Daemon, mnt: Path) -> None:
    s3 = make_client(daemon)
    s3.create_bucket(Bucket="vbucket")
    s3.put_bucket_versioning(Bucket="vbucket", VersioningConfiguration={"Status": "Enabled"})
    first = os.urandom(300 * 1024)  # in chunks, not inline: the kept copy shares them
    v1 = s3.put_object(Bucket="vbucket", Key="docs/a.bin", Body=first)["VersionId"]
    doc = mnt / "vbucket" / "docs" / "a.bin"
    wait_for(doc.exists, timeout_s=10)

    # In place (open with O_TRUNC): the S3-written version is kept under its id.
    doc.write_bytes(b"second\n")
    assert s3.get_object(Bucket="vbucket", Key="docs/a.bin")["Body"].read() == b"second\n"
    assert s3.get_object(Bucket="vbucket", Key="docs/a.bin", VersionId=v1)["Body"].read() == first

    # Renamed over: the replaced file is kept too (the mount-written one has the id null).
    tmp = mnt / "vbucket" / "docs" / ".a.tmp"
    tmp.write_bytes(b"third\n")
    tmp.rename(doc)
    assert doc.read_bytes() == b"third\n"
    assert s3.get_object(Bucket="vbucket", Key="docs/a.bin", VersionId="null")["Body"].read() == b"second\n"

    # rm: a delete marker; every version stays readable by id.
    doc.unlink()
    kept, markers = versions(s3, "vbucket")
    assert len(markers) == 1 and markers[0]["IsLatest"]
    by_id = {v["VersionId"]: v for v in kept if v["Key"] == "docs/a.bin"}
    assert len(by_id) == 3 and v1 in by_id and "null" in by_id
    third = next(vid for vid in by_id if vid not in (v1, "null"))
    assert s3.get_object(Bucket="vbucket", Key="docs/a.bin", VersionId=third)["Body"].read() == b"third\n"
    # The mount never shows versions: the directory is empty (S3 removed nothing from it).
    assert os.listdir(mnt / "vbucket" / "docs") == []
    assert sorted(os.listdir(mnt / "vbucket")) == ["docs"]

    status = json.loads(daemon.cli("status", "--json").stdout)
    [usage] = status["versions"]
    assert (usage["bucket"], usage["versions"], usage["delete_markers"]) == ("vbucket", 3, 1)
    assert usage["bytes"] == len(first) + len(b"second\n") + len(b"third\n")
    assert "versions vbucket" in daemon.cli("status").stdout

    # Removing the marker for good brings the newest version back at its path in the mount.
    s3.delete_object(Bucket="vbucket", Key="docs/a.bin", VersionId=markers[0]["VersionId"])
    wait_for(doc.exists, timeout_s=10)
    assert doc.read_bytes() == b"third\n"
    # fsck at teardown (the mnt fixture): version rows, names and chunk refcounts agree.
