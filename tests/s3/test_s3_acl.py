"""S3 ACLs against a real dfsd, through boto3 (signed and anonymous): canned ACLs, grant headers,
AccessControlPolicy documents, owner ids, and the public access block's ACL settings."""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from dfs.core.s3acl import ALL_USERS, AUTHENTICATED_USERS, ROOT_ID, canonical_id
from tests.conftest import Daemon
from tests.s3.conftest import make_client
from tests.s3.forms import post_form

_names = itertools.count()


def fresh_bucket(client: Any, **options: Any) -> str:
    name = f"acl{next(_names)}-test"
    client.create_bucket(Bucket=name, **options)
    return name


def new_key(d: Daemon, *allow: str) -> tuple[str, str]:
    args = [a for spec in allow for a in ("--allow", spec)]
    made = json.loads(d.cli("s3", "key", "create", *args, "--json").stdout)
    return made["access_key"], made["secret_key"]


def fails(fn: Callable[[], Any], code: str = "AccessDenied", status: int = 403) -> None:
    with pytest.raises(ClientError) as err:
        fn()
    resp = err.value.response
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == status, resp
    assert resp["Error"]["Code"] in (code, str(status)), resp


def grants_of(answer: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for g in answer["Grants"]:
        grantee = g["Grantee"]
        out.add((grantee["Type"], grantee.get("ID") or grantee.get("URI", ""), g["Permission"]))
    return out


@pytest.fixture
def anon(s3d: Daemon) -> Any:
    return make_client(s3d, signature_version=UNSIGNED)


def test_canned_object_acl_and_private_bucket(s3: Any, anon: Any) -> None:
    b = fresh_bucket(s3)
    s3.put_object(Bucket=b, Key="open", Body=b"for all", ACL="public-read")
    s3.put_object(Bucket=b, Key="closed", Body=b"mine")
    assert anon.get_object(Bucket=b, Key="open")["Body"].read() == b"for all"
    assert anon.head_object(Bucket=b, Key="open")["ContentLength"] == 7
    fails(lambda: anon.get_object(Bucket=b, Key="closed"))
    fails(lambda: anon.get_object(Bucket=b, Key="missing"))
    fails(lambda: anon.list_objects_v2(Bucket=b))  # the bucket itself stays private
    fails(lambda: anon.put_object(Bucket=b, Key="open", Body=b"overwrite"))
    fails(lambda: anon.get_object_acl(Bucket=b, Key="open"))  # READ is not READ_ACP
    assert grants_of(s3.get_object_acl(Bucket=b, Key="open")) == {
        ("CanonicalUser", ROOT_ID, "FULL_CONTROL"),
        ("Group", ALL_USERS, "READ"),
    }
    # A copy does not take its source's ACL.
    s3.copy_object(Bucket=b, Key="copy", CopySource={"Bucket": b, "Key": "open"})
    fails(lambda: anon.get_object(Bucket=b, Key="copy"))
    # Back to private.
    s3.put_object_acl(Bucket=b, Key="open", ACL="private")
    fails(lambda: anon.get_object(Bucket=b, Key="open"))
    # Grant headers, and a multipart upload's ACL lands on the finished object.
    s3.put_object(Bucket=b, Key="granted", Body=b"g", GrantRead=f'uri="{ALL_USERS}"')
    assert anon.get_object(Bucket=b, Key="granted")["Body"].read() == b"g"
    uid = s3.create_multipart_upload(Bucket=b, Key="mp", ACL="public-read")["UploadId"]
    etag = s3.upload_part(Bucket=b, Key="mp", UploadId=uid, PartNumber=1, Body=b"part")["ETag"]
    s3.complete_multipart_upload(
        Bucket=b, Key="mp", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    assert anon.get_object(Bucket=b, Key="mp")["Body"].read() == b"part"
    fails(
        lambda: s3.put_object(Bucket=b, Key="x", Body=b"x", GrantRead='emailAddress="a@example.com"'),
        "NotImplemented",
        501,
    )
    fails(lambda: s3.put_object(Bucket=b, Key="x", Body=b"x", ACL="world-writable"), "InvalidArgument", 400)


def test_bucket_acl_documents_and_owner_ids(s3d: Daemon, s3: Any, anon: Any) -> None:
    carol_key = new_key(s3d)
    carol = make_client(s3d, keys=carol_key)
    carol_id = canonical_id(carol_key[0])
    assert carol_id != ROOT_ID and len(carol_id) == 64

    # Owner ids: the root key's one fixed id; a key's its own, the same on every bucket it makes.
    b = fresh_bucket(s3)
    assert s3.get_bucket_acl(Bucket=b)["Owner"]["ID"] == ROOT_ID
    assert s3.list_buckets()["Owner"]["ID"] == ROOT_ID
    c1, c2 = fresh_bucket(carol), fresh_bucket(carol)
    assert carol.get_bucket_acl(Bucket=c1)["Owner"]["ID"] == carol_id
    assert carol.get_bucket_acl(Bucket=c2)["Owner"]["ID"] == carol_id
    assert carol.list_buckets()["Owner"]["ID"] == carol_id
    assert grants_of(carol.get_bucket_acl(Bucket=c1)) == {("CanonicalUser", carol_id, "FULL_CONTROL")}

    s3.put_object(Bucket=b, Key="k", Body=b"v")
    fails(lambda: carol.list_objects_v2(Bucket=b))
    fails(lambda: carol.put_object(Bucket=b, Key="c", Body=b"c"))
    document = {
        "Owner": {"ID": ROOT_ID},
        "Grants": [
            {"Grantee": {"Type": "CanonicalUser", "ID": ROOT_ID}, "Permission": "FULL_CONTROL"},
            {"Grantee": {"Type": "CanonicalUser", "ID": carol_id}, "Permission": "WRITE"},
            {"Grantee": {"Type": "Group", "URI": AUTHENTICATED_USERS}, "Permission": "READ"},
        ],
    }
    s3.put_bucket_acl(Bucket=b, AccessControlPolicy=document)
    assert grants_of(s3.get_bucket_acl(Bucket=b)) == {
        ("CanonicalUser", ROOT_ID, "FULL_CONTROL"),
        ("CanonicalUser", carol_id, "WRITE"),
        ("Group", AUTHENTICATED_USERS, "READ"),
    }
    assert [o["Key"] for o in carol.list_objects_v2(Bucket=b)["Contents"]] == ["k"]
    carol.put_object(Bucket=b, Key="c", Body=b"c")
    fails(lambda: anon.list_objects_v2(Bucket=b))  # AuthenticatedUsers is not anyone
    fails(lambda: carol.get_object(Bucket=b, Key="k"))  # bucket READ lists, it does not read objects
    fails(lambda: carol.put_bucket_acl(Bucket=b, ACL="public-read-write"))

    bad_owner = {**document, "Owner": {"ID": carol_id}}
    fails(lambda: s3.put_bucket_acl(Bucket=b, AccessControlPolicy=bad_owner))
    by_mail = {
        "Owner": {"ID": ROOT_ID},
        "Grants": [
            {"Grantee": {"Type": "AmazonCustomerByEmail", "EmailAddress": "a@b.c"}, "Permission": "READ"}
        ],
    }
    fails(lambda: s3.put_bucket_acl(Bucket=b, AccessControlPolicy=by_mail), "NotImplemented", 501)

    # A canned ACL on CreateBucket: anyone may list it.
    p = fresh_bucket(s3, ACL="public-read")
    assert anon.list_objects_v2(Bucket=p)["KeyCount"] == 0
    s3.put_bucket_acl(Bucket=p, ACL="private")
    fails(lambda: anon.list_objects_v2(Bucket=p))


def test_public_access_block_and_acls(s3: Any, anon: Any) -> None:
    b = fresh_bucket(s3)
    s3.put_object(Bucket=b, Key="open", Body=b"o", ACL="public-read")
    assert anon.get_object(Bucket=b, Key="open")["Body"].read() == b"o"

    s3.put_public_access_block(Bucket=b, PublicAccessBlockConfiguration={"IgnorePublicAcls": True})
    fails(lambda: anon.get_object(Bucket=b, Key="open"))
    s3.put_object(Bucket=b, Key="open2", Body=b"o", ACL="public-read")  # accepted, and ignored
    fails(lambda: anon.get_object(Bucket=b, Key="open2"))

    s3.put_public_access_block(Bucket=b, PublicAccessBlockConfiguration={"BlockPublicAcls": True})
    assert anon.get_object(Bucket=b, Key="open")["Body"].read() == b"o"  # no longer ignored
    fails(lambda: s3.put_object(Bucket=b, Key="new", Body=b"n", ACL="public-read"))
    fails(lambda: s3.put_object(Bucket=b, Key="new", Body=b"n", GrantRead=f'uri="{ALL_USERS}"'))
    fails(lambda: s3.put_object_acl(Bucket=b, Key="open", ACL="public-read-write"))
    fails(lambda: s3.put_bucket_acl(Bucket=b, ACL="public-read"))
    s3.put_object(Bucket=b, Key="new", Body=b"n", ACL="private")  # not public: fine
    s3.delete_public_access_block(Bucket=b)
    s3.put_object(Bucket=b, Key="new", Body=b"n", ACL="public-read")
    assert anon.get_object(Bucket=b, Key="new")["Body"].read() == b"n"


def test_post_form_canned_acl(s3d: Daemon, anon: Any) -> None:
    v4 = make_client(s3d, signature_version="s3v4")
    b = fresh_bucket(v4)
    for key, acl in (("form-open", "public-read"), ("form-closed", "private")):
        post = v4.generate_presigned_post(Bucket=b, Key=key, Fields={"acl": acl}, Conditions=[{"acl": acl}])
        path = urllib.parse.urlsplit(post["url"]).path
        ans = post_form(s3d, path, list(post["fields"].items()), b"posted")
        assert ans.status == 204, ans
    assert anon.get_object(Bucket=b, Key="form-open")["Body"].read() == b"posted"
    fails(lambda: anon.get_object(Bucket=b, Key="form-closed"))
