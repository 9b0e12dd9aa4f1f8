"""S3 keys isolated by grants: two keys made with `dfs s3 key create`, through boto3 and the aws CLI.

A key owns the buckets it creates; on another owner's bucket (or one without
an owner, made by the root key) every operation is AccessDenied until a grant
(`dfs s3 key grant`, `--allow`, the admin API) allows it, and again once the
grant is revoked.  The root key is never refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from daemon.admin.openapi import OPENAPI
from tests.conftest import Daemon, http_call
from tests.s3.conftest import make_client
from tests.unit.test_admin import validate

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
# Multipart from 5 MiB on, so a 6 MiB upload is two parts.
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)


def new_key(d: Daemon, *allow: str) -> tuple[str, str]:
    args = [a for spec in allow for a in ("--allow", spec)]
    made = json.loads(d.cli("s3", "key", "create", *args, "--json").stdout)
    return made["access_key"], made["secret_key"]


def denied(fn: Callable[[], Any], status: int = 403) -> None:
    """``fn()`` fails with AccessDenied (a HEAD has no body: the status alone)."""
    with pytest.raises(ClientError) as err:
        fn()
    resp = err.value.response
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == status, resp
    assert resp["Error"]["Code"] in ("AccessDenied", str(status)), resp


def bucket_names(client: Any) -> set[str]:
    return {b["Name"] for b in client.list_buckets()["Buckets"]}


def grants(d: Daemon, access_key: str) -> dict[str, str]:
    listed = json.loads(d.cli("s3", "key", "list", "--json").stdout)
    return next(k["grants"] for k in listed if k["access_key"] == access_key)


def test_keys_are_isolated_by_grants(s3d: Daemon, s3: Any, tmp_path: Path) -> None:
    alice = make_client(s3d, keys=new_key(s3d))
    bob_key = new_key(s3d)
    bob = make_client(s3d, keys=bob_key)
    s3.create_bucket(Bucket="g-root")  # no owner record: the root key's alone
    s3.put_object(Bucket="g-root", Key="k", Body=b"root's")
    alice.create_bucket(Bucket="g-alice")
    alice.put_object(Bucket="g-alice", Key="k", Body=b"alice's")
    bob.create_bucket(Bucket="g-bob")
    bob.put_object(Bucket="g-bob", Key="mine", Body=b"bob's")
    uid = alice.create_multipart_upload(Bucket="g-alice", Key="mp")["UploadId"]
    alice.upload_part(Bucket="g-alice", Key="mp", UploadId=uid, PartNumber=1, Body=b"x" * 100)

    # ListBuckets: each key sees its own; the root key sees everything.
    assert bucket_names(alice) >= {"g-alice"} and not bucket_names(alice) & {"g-bob", "g-root"}
    assert bucket_names(bob) >= {"g-bob"} and not bucket_names(bob) & {"g-alice", "g-root"}
    assert bucket_names(s3) >= {"g-root", "g-alice", "g-bob"}
    assert grants(s3d, bob_key[0]) == {"g-bob": "owner"}

    def every_operation_denied(bucket: str) -> None:
        denied(lambda: bob.get_object(Bucket=bucket, Key="k"))
        denied(lambda: bob.head_object(Bucket=bucket, Key="k"))
        denied(lambda: bob.head_bucket(Bucket=bucket))
        denied(lambda: bob.put_object(Bucket=bucket, Key="new", Body=b"no"))
        denied(lambda: bob.delete_object(Bucket=bucket, Key="k"))
        denied(lambda: bob.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]}))
        denied(lambda: bob.list_objects_v2(Bucket=bucket))
        denied(lambda: bob.list_objects(Bucket=bucket))
        denied(lambda: bob.list_object_versions(Bucket=bucket))
        denied(lambda: bob.get_bucket_location(Bucket=bucket))
        denied(lambda: bob.delete_bucket(Bucket=bucket))
        denied(lambda: bob.create_multipart_upload(Bucket=bucket, Key="mp2"))
        denied(lambda: bob.list_multipart_uploads(Bucket=bucket))
        # Copying out of it, into a bucket of bob's own: the source needs read.
        denied(
            lambda: bob.copy_object(Bucket="g-bob", Key="stolen", CopySource={"Bucket": bucket, "Key": "k"})
        )
        # Copying into it from bob's own bucket: the target needs write.
        denied(lambda: bob.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": "g-bob", "Key": "mine"}))

    every_operation_denied("g-alice")
    every_operation_denied("g-root")
    # Alice's upload, under bob's hands.
    denied(lambda: bob.upload_part(Bucket="g-alice", Key="mp", UploadId=uid, PartNumber=2, Body=b"y"))
    denied(lambda: bob.list_parts(Bucket="g-alice", Key="mp", UploadId=uid))
    denied(lambda: bob.abort_multipart_upload(Bucket="g-alice", Key="mp", UploadId=uid))
    parts = [{"PartNumber": 1, "ETag": "x"}]
    denied(
        lambda: bob.complete_multipart_upload(
            Bucket="g-alice", Key="mp", UploadId=uid, MultipartUpload={"Parts": parts}
        )
    )
    bob_uid = bob.create_multipart_upload(Bucket="g-bob", Key="mpc")["UploadId"]
    denied(
        lambda: bob.upload_part_copy(
            Bucket="g-bob", Key="mpc", UploadId=bob_uid, PartNumber=1, CopySource="g-alice/k"
        )
    )
    bob.abort_multipart_upload(Bucket="g-bob", Key="mpc", UploadId=bob_uid)
    # Somebody else's bucket name is taken, not "yours"; a missing bucket is missing to anyone.
    with pytest.raises(ClientError) as err:
        bob.create_bucket(Bucket="g-alice")
    assert err.value.response["Error"]["Code"] == "BucketAlreadyExists"
    with pytest.raises(ClientError) as err:
        alice.create_bucket(Bucket="g-alice")
    assert err.value.response["Error"]["Code"] == "BucketAlreadyOwnedByYou"
    with pytest.raises(ClientError) as err:
        bob.get_object(Bucket="g-nowhere", Key="k")
    assert err.value.response["Error"]["Code"] == "NoSuchBucket"

    # Read: reads and copying out work, writes still do not.
    s3d.cli("s3", "key", "grant", bob_key[0], "g-alice:r")
    assert grants(s3d, bob_key[0]) == {"g-bob": "owner", "g-alice": "r"}
    assert bob.get_object(Bucket="g-alice", Key="k")["Body"].read() == b"alice's"
    assert bob.head_object(Bucket="g-alice", Key="k")["ContentLength"] == 7
    assert [o["Key"] for o in bob.list_objects_v2(Bucket="g-alice")["Contents"]] == ["k"]
    assert bob.list_parts(Bucket="g-alice", Key="mp", UploadId=uid)["Parts"]
    bob.copy_object(Bucket="g-bob", Key="copied", CopySource={"Bucket": "g-alice", "Key": "k"})
    assert bob.get_object(Bucket="g-bob", Key="copied")["Body"].read() == b"alice's"
    assert "g-alice" in bucket_names(bob)
    denied(lambda: bob.put_object(Bucket="g-alice", Key="new", Body=b"no"))
    denied(lambda: bob.delete_object(Bucket="g-alice", Key="k"))
    denied(lambda: bob.create_multipart_upload(Bucket="g-alice", Key="mp2"))

    # Read-write: writes, multipart and DeleteObjects work; deleting the bucket is the owner's.
    s3d.cli("s3", "key", "grant", bob_key[0], "g-alice:rw")
    bob.put_object(Bucket="g-alice", Key="from-bob", Body=b"hi")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * MiB))
    bob.upload_file(str(big), "g-alice", "big", Config=SMALL_PARTS)
    assert alice.get_object(Bucket="g-alice", Key="big")["Body"].read() == big.read_bytes()
    bob.copy_object(Bucket="g-alice", Key="from-bob-copy", CopySource={"Bucket": "g-bob", "Key": "mine"})
    bob.delete_objects(Bucket="g-alice", Delete={"Objects": [{"Key": "from-bob"}, {"Key": "from-bob-copy"}]})
    bob.abort_multipart_upload(Bucket="g-alice", Key="mp", UploadId=uid)
    denied(lambda: bob.delete_bucket(Bucket="g-alice"))
    # Write only: no reading.
    s3d.cli("s3", "key", "grant", bob_key[0], "g-alice:w")
    bob.put_object(Bucket="g-alice", Key="drop", Body=b"box")
    denied(lambda: bob.get_object(Bucket="g-alice", Key="drop"))
    denied(lambda: bob.list_objects_v2(Bucket="g-alice"))

    # Revoked: refused again at once.
    s3d.cli("s3", "key", "revoke-grant", bob_key[0], "g-alice")
    every_operation_denied("g-alice")
    assert bucket_names(bob) >= {"g-bob"} and "g-alice" not in bucket_names(bob)

    # Owner (granted through the admin API): bob may empty and delete the bucket.
    status, _, body = http_call(
        s3d.admin_port,
        "PUT",
        f"/storage/s3/keys/{bob_key[0]}/grants/g-alice",
        json.dumps({"perm": "owner"}).encode(),
        {"Authorization": f"Bearer {s3d.admin_token()}", "Content-Type": "application/json"},
    )
    assert status == 200, body
    assert json.loads(body)["grants"] == {"g-bob": "owner", "g-alice": "owner"}
    for key in ("k", "big", "drop"):
        bob.delete_object(Bucket="g-alice", Key=key)
    bob.delete_bucket(Bucket="g-alice")
    status, _, body = http_call(
        s3d.admin_port,
        "GET",
        "/storage/s3/keys",
        headers={"Authorization": f"Bearer {s3d.admin_token()}"},
    )
    assert status == 200, body
    listed = {k["access_key"]: k["grants"] for k in json.loads(body)["keys"]}
    assert listed[bob_key[0]] == {"g-bob": "owner"}  # the bucket is gone, and its grant with it

    # The root key was never refused.
    assert s3.get_object(Bucket="g-root", Key="k")["Body"].read() == b"root's"
    assert s3.get_object(Bucket="g-bob", Key="copied")["Body"].read() == b"alice's"
    for key in ("mine", "copied"):
        s3.delete_object(Bucket="g-bob", Key=key)
    s3.delete_bucket(Bucket="g-bob")
    s3.delete_object(Bucket="g-root", Key="k")
    s3.delete_bucket(Bucket="g-root")


def test_allow_at_creation_and_the_aws_cli(s3d: Daemon, s3: Any, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="g-shared")
    s3.put_object(Bucket="g-shared", Key="doc.txt", Body=b"shared")
    s3.create_bucket(Bucket="g-private")
    reader = new_key(s3d, "g-shared:r")
    outsider = new_key(s3d)

    def aws(keys: tuple[str, str], *args: str, ok: bool = True) -> str:
        env = dict(os.environ)
        env.update(
            HOME=str(tmp_path),
            AWS_ACCESS_KEY_ID=keys[0],
            AWS_SECRET_ACCESS_KEY=keys[1],
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
        )
        res = subprocess.run(
            [str(BIN / "aws"), "--endpoint-url", s3d.s3_endpoint, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (res.returncode == 0) == ok, (
            f"aws {' '.join(args)}: {res.returncode}\n{res.stdout}{res.stderr}"
        )
        return res.stdout + res.stderr

    src = tmp_path / "up.txt"
    src.write_bytes(b"upload")
    # The reader: sees and reads g-shared, writes nowhere but its own buckets.
    assert "g-shared" in aws(reader, "s3", "ls") and "g-private" not in aws(reader, "s3", "ls")
    assert "doc.txt" in aws(reader, "s3", "ls", "s3://g-shared/")
    aws(reader, "s3", "cp", "s3://g-shared/doc.txt", str(tmp_path / "got.txt"))
    assert (tmp_path / "got.txt").read_bytes() == b"shared"
    assert "AccessDenied" in aws(reader, "s3", "cp", str(src), "s3://g-shared/up.txt", ok=False)
    assert "AccessDenied" in aws(reader, "s3", "ls", "s3://g-private/", ok=False)
    assert "AccessDenied" in aws(reader, "s3", "rm", "s3://g-shared/doc.txt", ok=False)
    aws(reader, "s3", "mb", "s3://g-readers-own")
    aws(reader, "s3", "cp", "s3://g-shared/doc.txt", "s3://g-readers-own/doc.txt")  # copy source: read
    # The outsider: nothing at all, HEAD included.
    assert "g-shared" not in aws(outsider, "s3", "ls")
    assert "(403)" in aws(outsider, "s3", "cp", "s3://g-shared/doc.txt", "-", ok=False)  # HEAD first
    assert "403" in aws(
        outsider, "s3api", "head-object", "--bucket", "g-shared", "--key", "doc.txt", ok=False
    )
    out = aws(outsider, "s3", "cp", "s3://g-shared/doc.txt", "s3://g-readers-own/x", ok=False)
    assert "AccessDenied" in out or "403" in out
    # Granted write, the outsider uploads; revoked, it cannot.
    s3d.cli("s3", "key", "grant", outsider[0], "g-shared:rw")
    aws(outsider, "s3", "cp", str(src), "s3://g-shared/up.txt")
    assert s3.get_object(Bucket="g-shared", Key="up.txt")["Body"].read() == b"upload"
    s3d.cli("s3", "key", "revoke-grant", outsider[0], "g-shared")
    assert "AccessDenied" in aws(outsider, "s3", "cp", str(src), "s3://g-shared/up2.txt", ok=False)
    # A bad grant spelling is refused by the CLI.
    res = s3d.cli("s3", "key", "grant", outsider[0], "g-shared:everything", check=False)
    assert res.returncode != 0 and "r, w, rw, owner" in res.stderr

    # The admin API: a key made with a grant, the grant taken back, the key revoked.
    def admin(method: str, path: str, doc: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {s3d.admin_token()}"}
        body = None
        if doc is not None:
            body = json.dumps(doc).encode()
            headers["Content-Type"] = "application/json"
        status, _, raw = http_call(s3d.admin_port, method, path, body, headers)
        return status, json.loads(raw) if raw else None

    status, made = admin("POST", "/storage/s3/keys", {"description": "api", "allow": {"g-shared": "read"}})
    assert status == 201, made
    validate(made, OPENAPI["components"]["schemas"]["S3KeyCreated"], OPENAPI)
    assert made["grants"] == {"g-shared": "r"}
    api_key = make_client(s3d, keys=(made["access_key"], made["secret_key"]))
    assert api_key.get_object(Bucket="g-shared", Key="doc.txt")["Body"].read() == b"shared"
    status, doc = admin("GET", "/storage/s3/keys")
    assert status == 200
    validate(doc, OPENAPI["components"]["schemas"]["S3KeyList"], OPENAPI)
    assert made["secret_key"] not in json.dumps(doc)
    status, doc = admin("DELETE", f"/storage/s3/keys/{made['access_key']}/grants/g-shared")
    assert status == 200 and doc["grants"] == {}, doc
    validate(doc, OPENAPI["components"]["schemas"]["S3Key"], OPENAPI)
    denied(lambda: api_key.get_object(Bucket="g-shared", Key="doc.txt"))
    assert admin("DELETE", f"/storage/s3/keys/{made['access_key']}/grants/g-shared")[0] == 404
    assert admin("PUT", f"/storage/s3/keys/{made['access_key']}/grants/g-shared", {"perm": "all"})[0] == 400
    assert admin("PUT", f"/storage/s3/keys/{made['access_key']}/grants/g-nowhere", {"perm": "r"})[0] == 404
    assert admin("POST", "/storage/s3/keys", {"allow": {"g-nowhere": "r"}})[0] == 404
    assert admin("DELETE", f"/storage/s3/keys/{made['access_key']}")[0] == 204
    # The root key's view is whole.
    aws(s3d.root_key(), "s3", "rm", "--recursive", "s3://g-shared/")
    aws(s3d.root_key(), "s3", "rb", "s3://g-shared")
    aws(s3d.root_key(), "s3", "rb", "s3://g-private")
    aws(s3d.root_key(), "s3", "rm", "--recursive", "s3://g-readers-own/")
    aws(s3d.root_key(), "s3", "rb", "s3://g-readers-own")
