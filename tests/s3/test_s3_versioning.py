"""S3 bucket versioning against a real daemon (boto3; the aws CLI for one call): versions kept by
PUT, copy and multipart, reads and copies by versionId, delete markers, permanent deletes that
bring the previous version back, Suspended and its null version, DeleteObjects by version, and
ListObjectVersions paged with small max-keys against a reference model."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon

BIN = Path(sys.executable).parent


def code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def status(exc: ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


def enable(s3: Any, bucket: str, state: str = "Enabled") -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": state})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == state


def body(s3: Any, bucket: str, key: str, **kw: Any) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()
    return data


def test_put_get_delete_by_version(s3d: Daemon, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pre", Body=b"before")  # written before: version null
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="d/k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="d/k", Body=b"two")["VersionId"]
    assert v1 != v2 and len(v1) == 32
    assert body(s3, bucket, "d/k") == b"two"
    got = s3.get_object(Bucket=bucket, Key="d/k", VersionId=v1)
    assert got["Body"].read() == b"one" and got["VersionId"] == v1
    assert s3.head_object(Bucket=bucket, Key="d/k", VersionId=v1)["ContentLength"] == 3
    assert s3.head_object(Bucket=bucket, Key="d/k")["VersionId"] == v2
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="d/k", VersionId="A" * 32)
    assert (code(err.value), status(err.value)) == ("NoSuchVersion", 404)
    # The pre-versioning object is version null, kept when overwritten.
    s3.put_object(Bucket=bucket, Key="pre", Body=b"after")
    assert body(s3, bucket, "pre", VersionId="null") == b"before"

    # DELETE without a version: a delete marker; the key is gone, its versions stay.
    gone = s3.delete_object(Bucket=bucket, Key="d/k")
    assert gone["DeleteMarker"] is True
    marker = gone["VersionId"]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="d/k")
    assert code(err.value) == "NoSuchKey"
    headers = err.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amz-delete-marker"] == "true" and headers["x-amz-version-id"] == marker
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="d/k", VersionId=marker)
    assert (code(err.value), status(err.value)) == ("MethodNotAllowed", 405)
    assert body(s3, bucket, "d/k", VersionId=v2) == b"two"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1  # only "pre"

    # Removing the marker for good undeletes; removing the current version brings v1 back.
    assert s3.delete_object(Bucket=bucket, Key="d/k", VersionId=marker)["DeleteMarker"] is True
    assert body(s3, bucket, "d/k") == b"two"
    s3.delete_object(Bucket=bucket, Key="d/k", VersionId=v2)
    assert body(s3, bucket, "d/k") == b"one"
    assert s3.head_object(Bucket=bucket, Key="d/k")["VersionId"] == v1
    s3d.assert_clean()


def test_copy_and_multipart_make_versions(s3d: Daemon, s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="src", Body=b"first")["VersionId"]
    s3.put_object(Bucket=bucket, Key="src", Body=b"second")
    copied = s3.copy_object(
        Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src", "VersionId": v1}
    )
    assert copied["VersionId"] and copied["VersionId"] != v1 and copied["CopySourceVersionId"] == v1
    assert body(s3, bucket, "dst") == b"first"
    up = s3.create_multipart_upload(Bucket=bucket, Key="dst")
    part = s3.upload_part(Bucket=bucket, Key="dst", UploadId=up["UploadId"], PartNumber=1, Body=b"parts")
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="dst",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert done["VersionId"] not in (copied["VersionId"], None)
    assert body(s3, bucket, "dst", VersionId=copied["VersionId"]) == b"first"
    assert body(s3, bucket, "dst") == b"parts"
    s3d.assert_clean()


def test_suspended_writes_replace_the_null_version(s3d: Daemon, s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    enable(s3, bucket, "Suspended")
    assert s3.put_object(Bucket=bucket, Key="k", Body=b"two")["VersionId"] == "null"
    assert s3.put_object(Bucket=bucket, Key="k", Body=b"three")["VersionId"] == "null"
    ids = [v["VersionId"] for v in s3.list_object_versions(Bucket=bucket)["Versions"]]
    assert ids == ["null", v1]
    gone = s3.delete_object(Bucket=bucket, Key="k")
    assert gone["VersionId"] == "null" and gone["DeleteMarker"] is True
    listed = s3.list_object_versions(Bucket=bucket)
    assert [m["VersionId"] for m in listed["DeleteMarkers"]] == ["null"]
    assert [v["VersionId"] for v in listed["Versions"]] == [v1]
    s3d.assert_clean()


def test_delete_objects_by_version_and_bucket_removal(s3d: Daemon, s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    ids = [s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x")["VersionId"] for i in range(3)]
    res = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "k0"}, {"Key": "k1", "VersionId": ids[1]}]}
    )
    by_key = {d["Key"]: d for d in res["Deleted"]}
    assert by_key["k0"]["DeleteMarker"] is True and by_key["k1"]["VersionId"] == ids[1]
    s3.delete_object(Bucket=bucket, Key="k2")
    # Versions and markers keep the bucket; removing every one of them lets it go.
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket=bucket)
    assert code(err.value) == "BucketNotEmpty"
    listed = s3.list_object_versions(Bucket=bucket)
    doomed = [
        {"Key": v["Key"], "VersionId": v["VersionId"]} for v in listed["Versions"] + listed["DeleteMarkers"]
    ]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed})
    s3.delete_bucket(Bucket=bucket)
    s3d.assert_clean()


def _model_list(model: dict[str, list[tuple[str, bool]]], prefix: str) -> list[tuple[str, str, bool, bool]]:
    """(key, version id, is a marker, is latest) in ListObjectVersions order."""
    out = []
    for key in sorted(model, key=lambda k: k.encode()):
        if key.startswith(prefix):
            out += [(key, vid, marker, i == 0) for i, (vid, marker) in enumerate(model[key])]
    return out


def _paged(
    s3: Any, bucket: str, prefix: str, max_keys: int, order: dict[tuple[str, str], int]
) -> list[tuple[str, str, bool, bool]]:
    got: list[tuple[str, str, bool, bool]] = []
    kw: dict[str, str] = {}
    for _ in range(1000):
        page = s3.list_object_versions(Bucket=bucket, Prefix=prefix, MaxKeys=max_keys, **kw)
        entries = [(v["Key"], v["VersionId"], False, v["IsLatest"]) for v in page.get("Versions", [])]
        entries += [(m["Key"], m["VersionId"], True, m["IsLatest"]) for m in page.get("DeleteMarkers", [])]
        # boto3 splits Versions and DeleteMarkers: each list must be in listing order on its own.
        assert len(entries) <= max_keys
        for kind in (False, True):
            ranks = [order[(k, v)] for k, v, marker, _ in entries if marker is kind]
            assert ranks == sorted(ranks)
            assert not got or not ranks or ranks[0] > max(order[(k, v)] for k, v, _, _ in got)
        got += entries
        if not page["IsTruncated"]:
            return got
        kw = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    raise AssertionError("listing never ended")


@pytest.mark.slow
def test_list_versions_paging_matches_a_model(s3d: Daemon, s3: Any, bucket: str, tmp_path: Path) -> None:
    enable(s3, bucket)
    rng = random.Random(19)
    keys = [f"{d}/k{i}" for d in ("a", "b", "c\u00e9") for i in range(6)] + ["top", "top-x"]
    model: dict[str, list[tuple[str, bool]]] = {}
    for _ in range(240):
        key = rng.choice(keys)
        if rng.random() < 0.2:
            r = s3.delete_object(Bucket=bucket, Key=key)
            model.setdefault(key, []).insert(0, (r["VersionId"], True))
        else:
            r = s3.put_object(Bucket=bucket, Key=key, Body=b"v" * rng.randrange(5))
            model.setdefault(key, []).insert(0, (r["VersionId"], False))
    for prefix, max_keys in (("", 7), ("b/", 3), ("", 1000)):
        want = _model_list(model, prefix)
        order = {(k, v): i for i, (k, v, _, _) in enumerate(want)}
        got = _paged(s3, bucket, prefix, max_keys, order)
        assert sorted(got, key=lambda e: order[(e[0], e[1])]) == want
    # A delimiter rolls the directories up into common prefixes, each counted once.
    rolled = s3.list_object_versions(Bucket=bucket, Delimiter="/", MaxKeys=2)
    prefixes = [p["Prefix"] for p in rolled.get("CommonPrefixes", [])]
    assert prefixes == ["a/", "b/"] and rolled["IsTruncated"]
    rest = s3.list_object_versions(Bucket=bucket, Delimiter="/", KeyMarker=rolled["NextKeyMarker"])
    assert [p["Prefix"] for p in rest.get("CommonPrefixes", [])] == ["c\u00e9/"]
    tops = {v["Key"] for v in rest.get("Versions", []) + rest.get("DeleteMarkers", [])}
    assert tops == {"top", "top-x"} & set(model)

    # The aws CLI follows NextKeyMarker/NextVersionIdMarker itself.
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
    cmd = [str(BIN / "aws"), "--endpoint-url", s3d.s3_endpoint, "--output", "json", "s3api"]
    cmd += ["list-object-versions", "--bucket", bucket, "--prefix", "a/", "--page-size", "5"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    ids = {v["VersionId"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])}
    assert ids == {vid for _, vid, _, _ in _model_list(model, "a/")}
    s3d.assert_clean()
