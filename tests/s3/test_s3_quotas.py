"""Directory quotas through the S3 shim with boto3: PutObject, CopyObject and
CompleteMultipartUpload refused whole with QuotaExceeded (403) when the bucket's quota
would be exceeded, overwrites that fit allowed, implicit directories counted as inodes,
nothing left behind (fsck clean at the end of the module, see tests/s3/conftest.py)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon

MiB = 1 << 20


def refused(err: pytest.ExceptionInfo[ClientError]) -> bool:
    e = err.value.response
    return bool(e["Error"]["Code"] == "QuotaExceeded" and e["ResponseMetadata"]["HTTPStatusCode"] == 403)


def usage(d: Daemon, path: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(d.cli("quota", "get", path, "--json").stdout)
    return got


def keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_put_copy_and_multipart_refused_whole(s3d: Daemon, s3: Any, bucket: str) -> None:
    s3d.cli("quota", "set", f"/{bucket}", "--bytes", "8M")
    small = os.urandom(MiB)
    s3.put_object(Bucket=bucket, Key="one", Body=small)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(8 * MiB))
    assert refused(err)
    assert keys(s3, bucket) == ["one"]
    # Replacing an object frees the old one first: an overwrite that fits is taken.
    s3.put_object(Bucket=bucket, Key="one", Body=os.urandom(7 * MiB))
    assert usage(s3d, f"/{bucket}")["used_bytes"] == 7 * MiB
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "one"})
    assert refused(err)
    s3.put_object(Bucket=bucket, Key="one", Body=small)

    # Multipart: the parts wait outside the bucket (not charged); completion is all or nothing.
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    parts = []
    for n in (1, 2):
        etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=n, Body=os.urandom(5 * MiB))
        parts.append({"PartNumber": n, "ETag": etag["ETag"]})
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": parts})
    assert refused(err)
    assert keys(s3, bucket) == ["one"]
    assert usage(s3d, f"/{bucket}")["used_bytes"] == MiB
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # With room made, the same multipart upload completes.
    s3d.cli("quota", "set", f"/{bucket}", "--bytes", "16M")
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    parts = []
    for n in (1, 2):
        etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=n, Body=os.urandom(5 * MiB))
        parts.append({"PartNumber": n, "ETag": etag["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": parts})
    assert sorted(keys(s3, bucket)) == ["mp", "one"]
    assert usage(s3d, f"/{bucket}")["used_bytes"] == 11 * MiB
    # Deleting gives the room back.
    s3.delete_object(Bucket=bucket, Key="mp")
    assert usage(s3d, f"/{bucket}")["used_bytes"] == MiB
    # The refused bodies were stored before the refusal: chunks no metadata names, for the sweep.
    s3d.cli("gc", "--orphans", "--now")


def test_implicit_directories_count_as_inodes(s3d: Daemon, s3: Any, bucket: str) -> None:
    s3d.cli("quota", "set", f"/{bucket}", "--inodes", "3")  # the bucket, a/ and one object
    s3.put_object(Bucket=bucket, Key="a/x", Body=b"1")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="b/y", Body=b"2")  # b/ and y: two more
    assert refused(err)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="a/z", Body=b"3")
    assert refused(err)
    s3.put_object(Bucket=bucket, Key="a/x", Body=b"replaced")  # an overwrite needs no new inode
    assert keys(s3, bucket) == ["a/x"]
    s3.delete_object(Bucket=bucket, Key="a/x")
    assert usage(s3d, f"/{bucket}")["used_inodes"] == 1  # the implied a/ went with its last object
