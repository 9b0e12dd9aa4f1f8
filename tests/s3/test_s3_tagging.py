"""Object and bucket tagging against a real dfsd, through boto3, raw signed requests and the aws CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon
from tests.s3.conftest import make_client
from tests.s3.s3signed import signed_call
from tests.s3.test_clients import BIN, base_env


def new_key(d: Daemon, allow: str) -> tuple[str, str]:
    made = json.loads(d.cli("s3", "key", "create", "--allow", allow, "--json").stdout)
    return made["access_key"], made["secret_key"]


def code(err: ClientError) -> str:
    return str(err.response["Error"]["Code"])


def tagset(tags: dict[str, str]) -> dict[str, Any]:
    return {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}


def as_dict(resp: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resp["TagSet"]}


def test_object_tagging_round_trip(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"data", Tagging="colour=blue&with%20space=a%2Bb&empty=")
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="o")) == {
        "colour": "blue",
        "with space": "a+b",
        "empty": "",
    }
    head = s3.head_object(Bucket=bucket, Key="o")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "3"
    assert s3.get_object(Bucket=bucket, Key="o")["TagCount"] == 3
    etag, modified = head["ETag"], head["LastModified"]

    s3.put_object_tagging(Bucket=bucket, Key="o", Tagging=tagset({"k": "é ünï:/=+-@._"}))
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="o")) == {"k": "é ünï:/=+-@._"}
    head = s3.head_object(Bucket=bucket, Key="o")
    # Tags are not content: ETag and Last-Modified stay.
    assert (head["ETag"], head["LastModified"]) == (etag, modified)
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "1"

    s3.delete_object_tagging(Bucket=bucket, Key="o")
    assert s3.get_object_tagging(Bucket=bucket, Key="o")["TagSet"] == []
    assert (
        "x-amz-tagging-count" not in s3.head_object(Bucket=bucket, Key="o")["ResponseMetadata"]["HTTPHeaders"]
    )
    s3.delete_object_tagging(Bucket=bucket, Key="o")  # nothing to delete: still fine
    # A new PUT is a new object: the old tags do not survive it.
    s3.put_object_tagging(Bucket=bucket, Key="o", Tagging=tagset({"a": "1"}))
    s3.put_object(Bucket=bucket, Key="o", Body=b"again")
    assert s3.get_object_tagging(Bucket=bucket, Key="o")["TagSet"] == []
    with pytest.raises(ClientError) as err:
        s3.get_object_tagging(Bucket=bucket, Key="missing")
    assert code(err.value) == "NoSuchKey"
    with pytest.raises(ClientError) as err:
        s3.put_object_tagging(Bucket=bucket, Key="missing", Tagging=tagset({"a": "1"}))
    assert code(err.value) == "NoSuchKey"


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([(f"k{i}", "v") for i in range(11)], "BadRequest"),
        ([("k" * 129, "v")], "InvalidTag"),
        ([("k", "v" * 257)], "InvalidTag"),
        ([("aws:owner", "v")], "InvalidTag"),
        ([("k", "a"), ("k", "b")], "InvalidTag"),
        ([("bad#char", "v")], "InvalidTag"),
    ],
)
def test_object_tag_limits(s3: Any, bucket: str, tags: list[tuple[str, str]], expected: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"x")
    with pytest.raises(ClientError) as err:
        s3.put_object_tagging(
            Bucket=bucket, Key="o", Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags]}
        )
    assert code(err.value) == expected
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert s3.get_object_tagging(Bucket=bucket, Key="o")["TagSet"] == []


def test_limits_at_the_edge_and_in_headers(s3: Any, bucket: str) -> None:
    ten = {f"k{i}": "v" * 256 for i in range(9)} | {"k" * 128: ""}
    s3.put_object(Bucket=bucket, Key="o", Body=b"x")
    s3.put_object_tagging(Bucket=bucket, Key="o", Tagging=tagset(ten))
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="o")) == ten
    eleven = "&".join(f"k{i}=v" for i in range(11))
    for header, expected in [
        (eleven, "BadRequest"),
        ("a=1&a=2", "InvalidArgument"),
        ("aws:x=1", "InvalidTag"),
    ]:
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket=bucket, Key="h", Body=b"x", Tagging=header)
        assert code(err.value) == expected
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="h")  # nothing was written


def test_malformed_tagging_xml(s3d: Daemon, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"x")
    for body in [b"<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>", b"<Tagging/>", b"<nope"]:
        status, _, answer = signed_call(s3d, "PUT", f"/{bucket}/o?tagging", body)
        assert status == 400 and b"<Code>MalformedXML</Code>" in answer, answer
    # boto3 refuses to send an empty key itself.
    empty_key = b"<Tagging><TagSet><Tag><Key></Key><Value>v</Value></Tag></TagSet></Tagging>"
    status, _, answer = signed_call(s3d, "PUT", f"/{bucket}/o?tagging", empty_key)
    assert status == 400 and b"<Code>InvalidTag</Code>" in answer, answer


def test_copy_tagging_directive(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"x", Tagging="a=1&b=2", Metadata={"m": "v"})
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "src"})
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="copy")) == {"a": "1", "b": "2"}
    s3.copy_object(
        Bucket=bucket,
        Key="replaced",
        CopySource={"Bucket": bucket, "Key": "src"},
        TaggingDirective="REPLACE",
        Tagging="c=3",
    )
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="replaced")) == {"c": "3"}
    assert s3.head_object(Bucket=bucket, Key="replaced")["Metadata"] == {"m": "v"}
    # Metadata replaced, tags copied: the two directives are independent.
    s3.copy_object(
        Bucket=bucket,
        Key="meta",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        Metadata={"n": "w"},
    )
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="meta")) == {"a": "1", "b": "2"}
    s3.copy_object(
        Bucket=bucket, Key="bare", CopySource={"Bucket": bucket, "Key": "src"}, TaggingDirective="REPLACE"
    )
    assert s3.get_object_tagging(Bucket=bucket, Key="bare")["TagSet"] == []


def test_multipart_tagging(s3: Any, bucket: str) -> None:
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", Tagging="project=dfs&tier=cold")
    part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=1, Body=b"p" * 1000)
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key="mp")) == {"project": "dfs", "tier": "cold"}
    assert s3.get_object(Bucket=bucket, Key="mp")["TagCount"] == 2
    with pytest.raises(ClientError) as err:
        s3.create_multipart_upload(Bucket=bucket, Key="mp2", Tagging="aws:no=1")
    assert code(err.value) == "InvalidTag"


def test_bucket_tagging(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_bucket_tagging(Bucket=bucket)
    assert code(err.value) == "NoSuchTagSet"
    fifty = {f"key{i}": f"value {i}" for i in range(50)}
    s3.put_bucket_tagging(Bucket=bucket, Tagging=tagset(fifty))
    assert as_dict(s3.get_bucket_tagging(Bucket=bucket)) == fifty
    with pytest.raises(ClientError) as err:
        s3.put_bucket_tagging(Bucket=bucket, Tagging=tagset(fifty | {"one": "more"}))
    assert code(err.value) == "InvalidTag"
    with pytest.raises(ClientError) as err:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "aws:x", "Value": "1"}]})
    assert code(err.value) == "InvalidTag"
    assert as_dict(s3.get_bucket_tagging(Bucket=bucket)) == fifty  # refused puts changed nothing
    s3.delete_bucket_tagging(Bucket=bucket)
    with pytest.raises(ClientError) as err:
        s3.get_bucket_tagging(Bucket=bucket)
    assert code(err.value) == "NoSuchTagSet"
    with pytest.raises(ClientError) as err:
        s3.get_bucket_tagging(Bucket="no-such-bucket-here")
    assert code(err.value) == "NoSuchBucket"


def test_tagging_permissions(s3d: Daemon, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"x", Tagging="a=1")
    reader = make_client(s3d, keys=new_key(s3d, f"{bucket}:r"))
    writer = make_client(s3d, keys=new_key(s3d, f"{bucket}:rw"))
    assert as_dict(reader.get_object_tagging(Bucket=bucket, Key="o")) == {"a": "1"}
    for call in [
        lambda: reader.put_object_tagging(Bucket=bucket, Key="o", Tagging=tagset({"b": "2"})),
        lambda: reader.delete_object_tagging(Bucket=bucket, Key="o"),
        lambda: writer.put_bucket_tagging(Bucket=bucket, Tagging=tagset({"b": "2"})),
        lambda: writer.delete_bucket_tagging(Bucket=bucket),
    ]:
        with pytest.raises(ClientError) as err:
            call()
        assert code(err.value) == "AccessDenied"
    writer.put_object_tagging(Bucket=bucket, Key="o", Tagging=tagset({"b": "2"}))
    assert as_dict(reader.get_object_tagging(Bucket=bucket, Key="o")) == {"b": "2"}


def test_aws_cli_put_object_tagging(s3d: Daemon, s3: Any, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="cli", Body=b"x")
    env = base_env(tmp_path, s3d)
    aws = [str(BIN / "aws"), "--endpoint-url", s3d.s3_endpoint, "s3api"]
    tagging = json.dumps(tagset({"via": "aws cli"}))
    args = ["--bucket", bucket, "--key", "cli"]
    res = subprocess.run(
        [*aws, "put-object-tagging", *args, "--tagging", tagging], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*aws, "get-object-tagging", *args], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert as_dict(json.loads(res.stdout)) == {"via": "aws cli"}
