"""S3 versioning gaps (issue 19), against a real dfsd:

- the version id xattr ``user.s3.version-id`` is the metadata's alone: a mount can neither set
  nor remove it (EPERM), and S3 user metadata lands elsewhere, so nobody forges which version
  of a key is current;
- a request naming ``versionId`` is judged by a bucket policy as the *Version action
  (s3:GetObjectVersion, s3:DeleteObjectVersion, s3:GetObjectVersionTagging, ...), as AWS does;
- UploadPartCopy from ``/bucket/key?versionId=ID`` copies that version and answers
  ``x-amz-copy-source-version-id``.

fsck clean at the end (the s3d fixture of tests/s3/conftest.py; the mnt fixture).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon, needs_fuse, wait_for
from tests.s3.conftest import make_client

XA_VERSION_ID = "user.s3.version-id"
_names = itertools.count()


def fresh_bucket(s3: Any, *, versioned: bool = True) -> str:
    name = f"vgap{next(_names)}-test"
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def new_key(d: Daemon, *allow: str) -> tuple[str, str]:
    args = [a for spec in allow for a in ("--allow", spec)]
    made = json.loads(d.cli("s3", "key", "create", *args, "--json").stdout)
    return made["access_key"], made["secret_key"]


def denied(fn: Callable[[], Any]) -> None:
    with pytest.raises(ClientError) as err:
        fn()
    resp = err.value.response
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 403, resp
    assert resp["Error"]["Code"] in ("AccessDenied", "403"), resp


def refused(fn: Callable[[], Any]) -> None:
    with pytest.raises(PermissionError) as err:
        fn()
    assert err.value.errno == errno.EPERM, err.value


@needs_fuse
@pytest.mark.fuse
@pytest.mark.slow
def test_the_version_id_xattr_cannot_be_forged_through_a_mount(daemon: Daemon, mnt: Path) -> None:
    s3 = make_client(daemon)
    b = fresh_bucket(s3)
    v1 = s3.put_object(Bucket=b, Key="d/k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=b, Key="d/k", Body=b"two")["VersionId"]
    path = mnt / b / "d" / "k"
    wait_for(lambda: path.exists() and os.getxattr(path, XA_VERSION_ID) == v2.encode(), timeout_s=10)

    refused(lambda: os.setxattr(path, XA_VERSION_ID, v1.encode()))  # forging the current version
    mine = mnt / b / "d" / "mine"
    mine.write_bytes(b"written through the mount")  # no id of its own: version null
    refused(lambda: os.setxattr(mine, XA_VERSION_ID, v1.encode(), os.XATTR_CREATE))
    assert s3.head_object(Bucket=b, Key="d/mine").get("VersionId", "null") == "null"
    refused(lambda: os.removexattr(path, XA_VERSION_ID))  # making it "null"
    os.setxattr(path, "user.other", b"fine")  # other user xattrs still change
    assert os.getxattr(path, XA_VERSION_ID) == v2.encode()
    assert s3.head_object(Bucket=b, Key="d/k")["VersionId"] == v2

    # The versioning code itself still sets it: an overwrite through the mount keeps v2 as a
    # version, and deleting the new current one (null) brings v2 back, id and all.
    path.write_bytes(b"three")
    assert s3.get_object(Bucket=b, Key="d/k", VersionId=v2)["Body"].read() == b"two"
    s3.delete_object(Bucket=b, Key="d/k", VersionId="null")
    got = s3.get_object(Bucket=b, Key="d/k")
    assert got["Body"].read() == b"two" and got["VersionId"] == v2
    assert s3.get_object(Bucket=b, Key="d/k", VersionId=v1)["Body"].read() == b"one"


def test_user_metadata_cannot_name_the_version_id(s3: Any) -> None:
    """x-amz-meta-* lands under user.s3.meta.: a header named like the id is metadata, no more."""
    b = fresh_bucket(s3)
    v1 = s3.put_object(Bucket=b, Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=b, Key="k", Body=b"two", Metadata={"version-id": v1})["VersionId"]
    head = s3.head_object(Bucket=b, Key="k")
    assert v2 != v1 and head["VersionId"] == v2 and head["Metadata"] == {"version-id": v1}
    assert s3.get_object(Bucket=b, Key="k", VersionId=v1)["Body"].read() == b"one"


def test_version_requests_are_judged_as_version_actions(s3d: Daemon, s3: Any) -> None:
    b = fresh_bucket(s3)
    v1 = s3.put_object(Bucket=b, Key="k", Body=b"one")["VersionId"]
    s3.put_object(Bucket=b, Key="k", Body=b"two")
    s3.put_object(Bucket=b, Key="free", Body=b"free")
    alice = make_client(s3d, keys=new_key(s3d, f"{b}:rw"))
    deny_versions = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": [
            "s3:GetObjectVersion",
            "s3:DeleteObjectVersion",
            "s3:GetObjectVersionTagging",
            "s3:PutObjectVersionTagging",
        ],
        "Resource": f"arn:aws:s3:::{b}/k",
    }
    s3.put_bucket_policy(Bucket=b, Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny_versions]}))

    # The current object stays readable and taggable; one version of it does not.
    assert alice.get_object(Bucket=b, Key="k")["Body"].read() == b"two"
    assert alice.head_object(Bucket=b, Key="k")["ContentLength"] == 3
    alice.put_object_tagging(Bucket=b, Key="k", Tagging={"TagSet": [{"Key": "t", "Value": "1"}]})
    assert alice.get_object_tagging(Bucket=b, Key="k")["TagSet"] == [{"Key": "t", "Value": "1"}]
    denied(lambda: alice.get_object(Bucket=b, Key="k", VersionId=v1))
    denied(lambda: alice.head_object(Bucket=b, Key="k", VersionId=v1))
    denied(lambda: alice.get_object_tagging(Bucket=b, Key="k", VersionId=v1))
    denied(
        lambda: alice.put_object_tagging(
            Bucket=b, Key="k", VersionId=v1, Tagging={"TagSet": [{"Key": "t", "Value": "2"}]}
        )
    )
    denied(lambda: alice.delete_object(Bucket=b, Key="k", VersionId=v1))
    # A copy's source named by version is a read of that version.
    denied(
        lambda: alice.copy_object(Bucket=b, Key="c", CopySource={"Bucket": b, "Key": "k", "VersionId": v1})
    )
    alice.copy_object(Bucket=b, Key="c", CopySource={"Bucket": b, "Key": "k"})
    # DeleteObjects judges a key with a VersionId as DeleteObjectVersion.
    result = alice.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "k", "VersionId": v1}]})
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("k", "AccessDenied")]
    # Versions of other keys, and the root key, are not refused.
    free_vid = s3.head_object(Bucket=b, Key="free")["VersionId"]
    assert alice.get_object(Bucket=b, Key="free", VersionId=free_vid)["Body"].read() == b"free"
    assert s3.get_object(Bucket=b, Key="k", VersionId=v1)["Body"].read() == b"one"
    assert s3.get_object(Bucket=b, Key="k", VersionId=v1)["VersionId"] == v1

    # A plain delete is a delete marker (s3:DeleteObject): allowed; the version survives.
    assert alice.delete_object(Bucket=b, Key="k")["DeleteMarker"] is True
    assert s3.get_object(Bucket=b, Key="k", VersionId=v1)["Body"].read() == b"one"
    s3.delete_bucket_policy(Bucket=b)
    assert alice.get_object(Bucket=b, Key="k", VersionId=v1)["Body"].read() == b"one"


def test_upload_part_copy_copies_the_named_version(s3: Any) -> None:
    src = fresh_bucket(s3)
    dst = fresh_bucket(s3, versioned=False)
    old = os.urandom(5 * 1024 * 1024 + 17)  # a part of a multipart upload must be >= 5 MiB (but the last)
    v1 = s3.put_object(Bucket=src, Key="big", Body=old)["VersionId"]
    v2 = s3.put_object(Bucket=src, Key="big", Body=b"new and short")["VersionId"]
    assert v1 != v2

    upload = s3.create_multipart_upload(Bucket=dst, Key="joined")["UploadId"]
    part1 = s3.upload_part_copy(
        Bucket=dst,
        Key="joined",
        UploadId=upload,
        PartNumber=1,
        CopySource={"Bucket": src, "Key": "big", "VersionId": v1},
    )
    assert part1["CopySourceVersionId"] == v1
    part2 = s3.upload_part_copy(
        Bucket=dst,
        Key="joined",
        UploadId=upload,
        PartNumber=2,
        CopySource={"Bucket": src, "Key": "big"},  # the current version
    )
    assert part2["CopySourceVersionId"] == v2
    s3.complete_multipart_upload(
        Bucket=dst,
        Key="joined",
        UploadId=upload,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": part1["CopyPartResult"]["ETag"]},
                {"PartNumber": 2, "ETag": part2["CopyPartResult"]["ETag"]},
            ]
        },
    )
    assert s3.get_object(Bucket=dst, Key="joined")["Body"].read() == old + b"new and short"

    # A range of the old version; a version that does not exist is NoSuchVersion.
    upload = s3.create_multipart_upload(Bucket=dst, Key="ranged")["UploadId"]
    part = s3.upload_part_copy(
        Bucket=dst,
        Key="ranged",
        UploadId=upload,
        PartNumber=1,
        CopySource={"Bucket": src, "Key": "big", "VersionId": v1},
        CopySourceRange="bytes=10-99",
    )
    assert part["CopySourceVersionId"] == v1
    with pytest.raises(ClientError) as err:
        s3.upload_part_copy(
            Bucket=dst,
            Key="ranged",
            UploadId=upload,
            PartNumber=2,
            CopySource={"Bucket": src, "Key": "big", "VersionId": "A" * 32},
        )
    assert err.value.response["Error"]["Code"] == "NoSuchVersion"
    s3.complete_multipart_upload(
        Bucket=dst,
        Key="ranged",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
    )
    assert s3.get_object(Bucket=dst, Key="ranged")["Body"].read() == old[10:100]
