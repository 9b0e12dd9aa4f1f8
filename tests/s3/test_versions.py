"""Object versions on buckets without versioning, as AWS answers them: every object is its one
version, ``null``.  Clients that list or delete by version (backup tools, test suites emptying a
bucket, rclone --s3-versions, the aws CLI) must work unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from daemon.s3.tree import version_error as _version_error
from tests.conftest import Daemon

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
BIN = Path(sys.executable).parent
WELL_FORMED = "Rb_l2T8UHDkFEwCgJjhlgPOZC0qJ.vpD"  # the shape of an AWS version id; no such version here
# Keys in UTF-8 byte order, with characters boto3's encoding-type=url has to carry, an empty
# directory marker ("g/") and a prefix ("b/") that rolls up under a delimiter.
KEYS = ["a", "b/c", "b/d", "b/e/f", "e f+g&h", "g/", "z\u00e9"]


def code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def status(exc: ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


def fill(s3: Any, bucket: str, keys: list[str] = KEYS) -> dict[str, str]:
    """Put every key (a key ending in "/" is an empty directory marker); returns key -> ETag."""
    etags = {}
    for key in keys:
        etags[key] = s3.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else key.encode())[
            "ETag"
        ]
    return etags


def versions_by_hand(s3: Any, bucket: str, **kw: Any) -> tuple[list[str], list[str], int]:
    """(keys, common prefixes, page count) from following NextKeyMarker/NextVersionIdMarker."""
    keys: list[str] = []
    prefixes: list[str] = []
    markers: dict[str, str] = {}
    pages = 0
    while True:
        page = s3.list_object_versions(Bucket=bucket, **kw, **markers)
        pages += 1
        assert "DeleteMarkers" not in page
        keys += [v["Key"] for v in page.get("Versions", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            assert "NextKeyMarker" not in page and "NextVersionIdMarker" not in page
            return keys, prefixes, pages
        markers = {"KeyMarker": page["NextKeyMarker"]}
        if "NextVersionIdMarker" in page:
            assert page["NextVersionIdMarker"] == "null"
            markers["VersionIdMarker"] = page["NextVersionIdMarker"]


def test_list_versions_every_object_once_as_null(s3: Any, bucket: str) -> None:
    etags = fill(s3, bucket)
    got = s3.list_object_versions(Bucket=bucket)
    assert got["Name"] == bucket
    assert got["IsTruncated"] is False
    assert "DeleteMarkers" not in got and "CommonPrefixes" not in got
    versions = got["Versions"]
    assert [v["Key"] for v in versions] == KEYS
    for v in versions:
        assert v["VersionId"] == "null"
        assert v["IsLatest"] is True
        assert v["ETag"] == etags[v["Key"]]
        assert v["Size"] == (0 if v["Key"].endswith("/") else len(v["Key"].encode()))
        assert v["StorageClass"] == "STANDARD"
        assert v["Owner"]["ID"]
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [v["LastModified"] for v in versions] == [o["LastModified"] for o in listed]


def test_list_versions_wire_format(s3: Any, bucket: str) -> None:
    fill(s3, bucket, ["a", "b/c", "d", "e"])
    bodies: list[bytes] = []
    s3.meta.events.register(
        "after-call.s3.ListObjectVersions", lambda http_response, **_: bodies.append(http_response.content)
    )
    s3.list_object_versions(Bucket=bucket, Delimiter="/", MaxKeys=3)
    root = ET.fromstring(bodies[0])
    assert root.tag == NS + "ListVersionsResult"
    assert [child.tag.removeprefix(NS) for child in root] == [
        "Name",
        "Prefix",
        "KeyMarker",
        "VersionIdMarker",
        "NextKeyMarker",
        "NextVersionIdMarker",
        "MaxKeys",
        "Delimiter",
        "IsTruncated",
        "EncodingType",  # boto3 always asks for encoding-type=url
        "Version",
        "Version",
        "CommonPrefixes",
    ]
    version = root.find(NS + "Version")
    assert version is not None
    assert [child.tag.removeprefix(NS) for child in version] == [
        "Key",
        "VersionId",
        "IsLatest",
        "LastModified",
        "ETag",
        "Size",
        "Owner",
        "StorageClass",
    ]


def test_list_versions_prefix_and_delimiter(s3: Any, bucket: str) -> None:
    fill(s3, bucket)
    top = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert top["Delimiter"] == "/"
    assert [v["Key"] for v in top["Versions"]] == ["a", "e f+g&h", "z\u00e9"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["b/", "g/"]
    under_b = s3.list_object_versions(Bucket=bucket, Prefix="b/", Delimiter="/")
    assert under_b["Prefix"] == "b/"
    assert [v["Key"] for v in under_b["Versions"]] == ["b/c", "b/d"]
    assert [p["Prefix"] for p in under_b["CommonPrefixes"]] == ["b/e/"]
    assert [v["Key"] for v in s3.list_object_versions(Bucket=bucket, Prefix="b")["Versions"]] == [
        "b/c",
        "b/d",
        "b/e/f",
    ]
    assert "Versions" not in s3.list_object_versions(Bucket=bucket, Prefix="nothing")


@pytest.mark.parametrize("delimiter", ["", "/"])
def test_list_versions_paging_with_max_keys(s3: Any, bucket: str, delimiter: str) -> None:
    fill(s3, bucket)
    whole = s3.list_object_versions(Bucket=bucket, Delimiter=delimiter)
    want_keys = [v["Key"] for v in whole["Versions"]]
    want_prefixes = [p["Prefix"] for p in whole.get("CommonPrefixes", [])]
    for max_keys in (1, 2, 3):
        keys, prefixes, pages = versions_by_hand(s3, bucket, Delimiter=delimiter, MaxKeys=max_keys)
        assert (keys, prefixes) == (want_keys, want_prefixes), max_keys
        # A page is truncated only when another entry exists: no empty last page.
        assert pages == -(-(len(want_keys) + len(want_prefixes)) // max_keys), max_keys
    first = s3.list_object_versions(Bucket=bucket, Delimiter=delimiter, MaxKeys=1)
    assert first["IsTruncated"] is True and first["MaxKeys"] == 1
    assert first["NextKeyMarker"] == "a" and first["NextVersionIdMarker"] == "null"
    # Resuming with key-marker alone continues after that key as well.
    rest = s3.list_object_versions(Bucket=bucket, Delimiter=delimiter, KeyMarker="a")
    assert rest["KeyMarker"] == "a"
    assert [v["Key"] for v in rest["Versions"]] == want_keys[1:]


def test_list_versions_page_ending_on_common_prefix(s3: Any, bucket: str) -> None:
    fill(s3, bucket)
    page = s3.list_object_versions(Bucket=bucket, Delimiter="/", MaxKeys=2)
    assert [v["Key"] for v in page["Versions"]] == ["a"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["b/"]
    assert page["NextKeyMarker"] == "b/" and "NextVersionIdMarker" not in page
    rest = s3.list_object_versions(Bucket=bucket, Delimiter="/", KeyMarker="b/")
    assert [v["Key"] for v in rest["Versions"]] == ["e f+g&h", "z\u00e9"]
    assert [p["Prefix"] for p in rest["CommonPrefixes"]] == ["g/"]


@pytest.mark.parametrize("delimiter", ["", "/"])
def test_list_versions_paginator(s3: Any, bucket: str, delimiter: str) -> None:
    fill(s3, bucket)
    whole = s3.list_object_versions(Bucket=bucket, Delimiter=delimiter)
    pages = list(
        s3.get_paginator("list_object_versions").paginate(
            Bucket=bucket, Delimiter=delimiter, PaginationConfig={"PageSize": 2}
        )
    )
    assert len(pages) > 1
    assert [v["Key"] for p in pages for v in p.get("Versions", [])] == [v["Key"] for v in whole["Versions"]]
    assert [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])] == [
        c["Prefix"] for c in whole.get("CommonPrefixes", [])
    ]
    assert {v["VersionId"] for p in pages for v in p.get("Versions", [])} == {"null"}


def test_list_versions_bad_parameters(s3: Any, bucket: str) -> None:
    fill(s3, bucket, ["a"])
    for kw in ({"VersionIdMarker": "null"}, {"KeyMarker": "a", "VersionIdMarker": "bad"}):
        with pytest.raises(ClientError) as err:
            s3.list_object_versions(Bucket=bucket, **kw)
        assert (code(err.value), status(err.value)) == ("InvalidArgument", 400), kw
    with pytest.raises(ClientError) as err:
        s3.list_object_versions(Bucket="no-such-bucket")
    assert code(err.value) == "NoSuchBucket"
    assert s3.list_object_versions(Bucket=bucket, MaxKeys=0)["IsTruncated"] is False


def test_get_and_head_by_version(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"body")["ETag"]
    got = s3.get_object(Bucket=bucket, Key="k", VersionId="null")
    assert got["Body"].read() == b"body" and got["ETag"] == etag
    assert s3.head_object(Bucket=bucket, Key="k", VersionId="null")["ContentLength"] == 4
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="k", VersionId=WELL_FORMED)
    assert (code(err.value), status(err.value)) == ("NoSuchVersion", 404)
    assert err.value.response["Error"]["VersionId"] == WELL_FORMED
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="k", VersionId="not-a-version")
    assert (code(err.value), status(err.value)) == ("InvalidArgument", 400)
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket=bucket, Key="k", VersionId=WELL_FORMED)
    assert status(err.value) == 404
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket=bucket, Key="k", VersionId="not-a-version")
    assert status(err.value) == 400
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="missing", VersionId="null")
    assert code(err.value) == "NoSuchKey"
    assert s3.get_object_acl(Bucket=bucket, Key="k", VersionId="null")["Grants"]
    with pytest.raises(ClientError) as err:
        s3.get_object_tagging(Bucket=bucket, Key="k", VersionId=WELL_FORMED)
    assert code(err.value) == "NoSuchVersion"
    copied = s3.copy_object(
        Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "k", "VersionId": "null"}
    )
    assert copied["CopyObjectResult"]["ETag"] == etag


def test_delete_object_by_version(s3d: Daemon, s3: Any, bucket: str) -> None:
    fill(s3, bucket, ["k", "d/k"])
    # A version that does not exist: success, nothing deleted, the id echoed (as AWS does).
    gone = s3.delete_object(Bucket=bucket, Key="k", VersionId=WELL_FORMED)
    assert gone["ResponseMetadata"]["HTTPStatusCode"] == 204 and gone["VersionId"] == WELL_FORMED
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"k"
    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket=bucket, Key="k", VersionId="bad")
    assert (code(err.value), status(err.value)) == ("InvalidArgument", 400)
    for key in ("k", "d/k"):
        deleted = s3.delete_object(Bucket=bucket, Key=key, VersionId="null")
        assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
        assert deleted["VersionId"] == "null"
    assert "Versions" not in s3.list_object_versions(Bucket=bucket)
    assert "CommonPrefixes" not in s3.list_object_versions(Bucket=bucket, Delimiter="/")
    # Deleting the null version of what is not there succeeds, as a plain delete does.
    again = s3.delete_object(Bucket=bucket, Key="k", VersionId="null")
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 204
    s3.delete_bucket(Bucket=bucket)
    s3d.assert_clean()


def test_delete_objects_by_version(s3d: Daemon, s3: Any, bucket: str) -> None:
    fill(s3, bucket, ["a", "b/c", "e f+g&h", "keep"])
    result = s3.delete_objects(
        Bucket=bucket,
        Delete={
            "Objects": [
                {"Key": "a", "VersionId": "null"},
                {"Key": "b/c", "VersionId": "null"},
                {"Key": "e f+g&h"},
                {"Key": "keep", "VersionId": WELL_FORMED},
                {"Key": "keep", "VersionId": "bad"},
            ]
        },
    )
    assert result["Deleted"] == [
        {"Key": "a", "VersionId": "null"},
        {"Key": "b/c", "VersionId": "null"},
        {"Key": "e f+g&h"},
        {"Key": "keep", "VersionId": WELL_FORMED},
    ]
    (error,) = result["Errors"]
    assert (error["Key"], error["VersionId"], error["Code"]) == ("keep", "bad", "InvalidArgument")
    assert [v["Key"] for v in s3.list_object_versions(Bucket=bucket)["Versions"]] == ["keep"]
    s3d.assert_clean()


def test_empty_bucket_by_listing_versions(s3d: Daemon, s3: Any, bucket: str) -> None:
    # What test suites and backup tools do to remove a bucket, whether it is versioned or not.
    fill(s3, bucket)
    for page in s3.get_paginator("list_object_versions").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 3}
    ):
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
        objects += [{"Key": m["Key"], "VersionId": m["VersionId"]} for m in page.get("DeleteMarkers", [])]
        if objects:
            result = s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
            assert "Errors" not in result
    assert "Versions" not in s3.list_object_versions(Bucket=bucket)
    s3.delete_bucket(Bucket=bucket)
    s3d.assert_clean()


def test_bucket_versioning_never_enabled_and_mfa_delete_refused(s3: Any, bucket: str) -> None:
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    with pytest.raises(ClientError) as err:
        s3.put_bucket_versioning(
            Bucket=bucket,
            VersioningConfiguration={"Status": "Enabled", "MFADelete": "Enabled"},
            MFA="arn:aws:iam::1:mfa/x 123456",
        )
    assert (code(err.value), status(err.value)) == ("NotImplemented", 501)
    assert "MFA Delete is not supported" in err.value.response["Error"]["Message"]
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)  # nothing changed
    with pytest.raises(ClientError) as err:
        s3.put_bucket_versioning(Bucket="no-such-bucket", VersioningConfiguration={"Status": "Enabled"})
    assert code(err.value) == "NoSuchBucket"


def test_aws_cli_list_object_versions(s3d: Daemon, s3: Any, bucket: str, tmp_path: Path) -> None:
    fill(s3, bucket)
    ak, sk = s3d.root_key()
    env = dict(os.environ)
    env.update(
        HOME=str(tmp_path),
        AWS_ACCESS_KEY_ID=ak,
        AWS_SECRET_ACCESS_KEY=sk,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
    )
    aws = [str(BIN / "aws"), "--endpoint-url", s3d.s3_endpoint, "--output", "json", "s3api"]

    def run(*args: str) -> Any:
        res = subprocess.run([*aws, *args], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"aws {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
        return json.loads(res.stdout) if res.stdout.strip() else {}

    # --page-size makes the CLI follow NextKeyMarker/NextVersionIdMarker itself.
    listed = run("list-object-versions", "--bucket", bucket, "--page-size", "2")
    assert [v["Key"] for v in listed["Versions"]] == KEYS
    assert {v["VersionId"] for v in listed["Versions"]} == {"null"}
    assert all(v["IsLatest"] for v in listed["Versions"])
    rolled = run("list-object-versions", "--bucket", bucket, "--delimiter", "/", "--page-size", "1")
    assert [v["Key"] for v in rolled["Versions"]] == ["a", "e f+g&h", "z\u00e9"]
    assert [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["b/", "g/"]
    under_b = run("list-object-versions", "--bucket", bucket, "--prefix", "b/")
    assert [v["Key"] for v in under_b["Versions"]] == ["b/c", "b/d", "b/e/f"]
    deleted = run("delete-object", "--bucket", bucket, "--key", "a", "--version-id", "null")
    assert deleted["VersionId"] == "null"
    assert [v["Key"] for v in run("list-object-versions", "--bucket", bucket)["Versions"]] == KEYS[1:]


@pytest.mark.parametrize(
    ("version_id", "expected"),
    [
        ("", ("InvalidArgument", 400)),
        ("bad", ("InvalidArgument", 400)),
        ("3/L4kqtJl40Nr8X8gdRQBpUMLUo", ("InvalidArgument", 400)),
        (WELL_FORMED + "x", ("InvalidArgument", 400)),
        ("\u00e9" * 32, ("InvalidArgument", 400)),
        (WELL_FORMED, ("NoSuchVersion", 404)),
        ("zWzF8uUy1bvPjvIjOMofwFPXZoRcn8G9", ("NoSuchVersion", 404)),
    ],
)
def test_version_error_is_what_aws_answers(version_id: str, expected: tuple[str, int]) -> None:
    # AWS: "" and ids not of its 32-character shape are 400, a well-formed unknown id is 404.
    error = _version_error(version_id, "k")
    assert (error.s3_code, error.status) == expected
    if error.s3_code == "NoSuchVersion":
        assert error.extra == {"Key": "k", "VersionId": version_id}
    else:
        assert error.extra["ArgumentName"] == "versionId"


def test_rclone_s3_versions(s3d: Daemon, s3: Any, bucket: str, tmp_path: Path) -> None:
    fill(s3, bucket, ["a", "b/c", "e f"])
    ak, sk = s3d.root_key()
    env = dict(os.environ)
    env.update(
        HOME=str(tmp_path),
        RCLONE_CONFIG=str(tmp_path / "rclone.conf"),
        RCLONE_CONFIG_DFS_TYPE="s3",
        RCLONE_CONFIG_DFS_PROVIDER="Other",
        RCLONE_CONFIG_DFS_ACCESS_KEY_ID=ak,
        RCLONE_CONFIG_DFS_SECRET_ACCESS_KEY=sk,
        RCLONE_CONFIG_DFS_ENDPOINT=s3d.s3_endpoint,
        RCLONE_CONFIG_DFS_REGION="us-east-1",
    )
    rclone = [str(BIN / "rclone"), "--retries", "1", "--low-level-retries", "1", "--s3-versions"]
    res = subprocess.run(
        [*rclone, "lsf", "-R", f"dfs:{bucket}"], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    # Only current versions exist, so they are listed under their plain names.
    assert sorted(res.stdout.splitlines()) == ["a", "b/", "b/c", "e f"]
