"""Volume snapshots seen through S3 (boto3 against the real S3 port).

/.snapshots is no bucket S3 can name (bucket names start alphanumeric), so every
S3 write into a snapshot path is refused before it reaches metadata, where the
read-only flag refuses it again (tests/unit/test_snapshots.py).  A bucket rolled
back with a restore serves the snapshot's objects at once, and a clone is a new
bucket holding them.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon
from tests.conftest import admin_ok as admin


def objects(s3: Any, bucket: str) -> dict[str, bytes]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_snapshot_restore_and_clone_through_s3(s3d: Daemon, s3: Any) -> None:
    admin(s3d, "POST", "/storage/volumes", {"name": "snapdata"})
    s3.put_object(Bucket="snapdata", Key="a/one.txt", Body=b"one")
    s3.put_object(Bucket="snapdata", Key="two.bin", Body=bytes(range(256)) * 4096)
    before = objects(s3, "snapdata")
    doc = admin(s3d, "POST", "/storage/snapshot", {"volume": "snapdata", "name": "s1"})
    assert doc["files"] == 2

    # Writes into the snapshot's path are refused; nothing there changes.
    for call in (
        lambda: s3.put_object(Bucket=".snapshots", Key="snapdata/s1/a/one.txt", Body=b"x"),
        lambda: s3.delete_object(Bucket=".snapshots", Key="snapdata/s1/two.bin"),
        lambda: s3.copy_object(
            Bucket=".snapshots", Key="snapdata/s1/c", CopySource={"Bucket": "snapdata", "Key": "two.bin"}
        ),
        lambda: s3.create_multipart_upload(Bucket=".snapshots", Key="snapdata/s1/m"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        # Not a bucket S3 knows: NoSuchBucket (or InvalidBucketName where the name is checked first).
        assert err.value.response["Error"]["Code"] in ("NoSuchBucket", "InvalidBucketName", "AccessDenied")
    assert "snapdata" in [b["Name"] for b in s3.list_buckets()["Buckets"]]

    # Change the bucket through S3, roll it back: S3 serves the snapshot's objects at once.
    s3.put_object(Bucket="snapdata", Key="a/one.txt", Body=b"changed")
    s3.delete_object(Bucket="snapdata", Key="two.bin")
    s3.put_object(Bucket="snapdata", Key="new.txt", Body=b"new")
    admin(s3d, "POST", "/storage/snapshot/snapdata/s1/restore")
    assert objects(s3, "snapdata") == before
    s3.put_object(Bucket="snapdata", Key="after.txt", Body=b"writable")  # the restored bucket is writable

    # A clone is a new bucket with the snapshot's objects.
    admin(s3d, "POST", "/storage/snapshot/snapdata/s1/clone", {"volume": "snapclone"})
    assert objects(s3, "snapclone") == before
    s3.delete_object(Bucket="snapclone", Key="two.bin")
    admin(s3d, "DELETE", "/storage/snapshot/snapdata/s1")
    assert objects(s3, "snapdata")["two.bin"] == before["two.bin"]
