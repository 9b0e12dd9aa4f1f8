"""Bucket policies and public access blocks against a real dfsd, through boto3 (signed and anonymous).

An unsigned request is anonymous: refused unless a policy statement to
Principal "*" allows it.  An explicit Deny refuses keys with grants too, but
never the root key.  RestrictPublicBuckets and BlockPublicPolicy do what AWS
does for one account.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from tests.conftest import Daemon, http_call
from tests.s3.conftest import make_client

_names = itertools.count()


def fresh_bucket(s3: Any) -> str:
    name = f"pol{next(_names)}-test"
    s3.create_bucket(Bucket=name)
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


def policy(bucket: str, *statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def public_read(bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "Sid": "PublicRead",
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
        **extra,
    }


@pytest.fixture
def anon(s3d: Daemon) -> Any:
    return make_client(s3d, signature_version=UNSIGNED)


def test_anonymous_access_follows_the_policy(s3d: Daemon, s3: Any, anon: Any) -> None:
    b = fresh_bucket(s3)
    s3.put_object(Bucket=b, Key="pub/a", Body=b"public")
    s3.put_object(Bucket=b, Key="private/b", Body=b"secret")

    # Nothing grants anything: today's answer to an unsigned request.
    fails(lambda: anon.get_object(Bucket=b, Key="pub/a"))
    status, _, body = http_call(s3d.s3_port, "GET", f"/{b}/pub/a")
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    fails(lambda: anon.list_buckets())
    fails(lambda: anon.create_bucket(Bucket=f"anon{next(_names)}-test"))

    s3.put_bucket_policy(Bucket=b, Policy=policy(b, public_read(b)))
    assert anon.get_object(Bucket=b, Key="pub/a")["Body"].read() == b"public"
    assert http_call(s3d.s3_port, "GET", f"/{b}/pub/a")[2] == b"public"
    fails(lambda: anon.list_objects_v2(Bucket=b))  # s3:ListBucket not granted
    fails(lambda: anon.put_object(Bucket=b, Key="pub/new", Body=b"x"))
    fails(lambda: anon.delete_object(Bucket=b, Key="pub/a"))
    fails(lambda: anon.get_bucket_policy(Bucket=b))

    deny_private = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{b}/private/*",
    }
    s3.put_bucket_policy(Bucket=b, Policy=policy(b, public_read(b), deny_private))
    fails(lambda: anon.get_object(Bucket=b, Key="private/b"))
    assert anon.get_object(Bucket=b, Key="pub/a")["Body"].read() == b"public"
    # The root key is never refused, even by a Deny naming everyone.
    assert s3.get_object(Bucket=b, Key="private/b")["Body"].read() == b"secret"

    # RestrictPublicBuckets: the public policy no longer lets anonymous callers in.
    block = {"RestrictPublicBuckets": True}
    s3.put_public_access_block(Bucket=b, PublicAccessBlockConfiguration=block)
    got = s3.get_public_access_block(Bucket=b)["PublicAccessBlockConfiguration"]
    assert got == {
        "BlockPublicAcls": False,
        "IgnorePublicAcls": False,
        "BlockPublicPolicy": False,
        "RestrictPublicBuckets": True,
    }
    fails(lambda: anon.get_object(Bucket=b, Key="pub/a"))
    assert s3.get_object(Bucket=b, Key="pub/a")["Body"].read() == b"public"
    s3.delete_public_access_block(Bucket=b)
    fails(lambda: s3.get_public_access_block(Bucket=b), "NoSuchPublicAccessBlockConfiguration", 404)
    assert anon.get_object(Bucket=b, Key="pub/a")["Body"].read() == b"public"

    # Anonymous writes where the policy allows them; the body is simply unsigned.
    drop = {
        "Effect": "Allow",
        "Principal": {"AWS": "*"},
        "Action": ["s3:PutObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/drop/*"],
    }
    s3.put_bucket_policy(Bucket=b, Policy=policy(b, public_read(b), deny_private, drop))
    anon.put_object(Bucket=b, Key="drop/x", Body=b"dropped")
    fails(lambda: anon.put_object(Bucket=b, Key="pub/x", Body=b"no"))
    listed = {o["Key"] for o in anon.list_objects_v2(Bucket=b)["Contents"]}
    assert listed == {"pub/a", "private/b", "drop/x"}
    assert s3.get_object(Bucket=b, Key="drop/x")["Body"].read() == b"dropped"

    s3.delete_bucket_policy(Bucket=b)
    fails(lambda: anon.get_object(Bucket=b, Key="pub/a"))


def test_policy_documents(s3: Any) -> None:
    b = fresh_bucket(s3)
    fails(lambda: s3.get_bucket_policy(Bucket=b), "NoSuchBucketPolicy", 404)
    fails(lambda: s3.put_bucket_policy(Bucket=b, Policy="{not json"), "MalformedPolicy", 400)
    bad_key = public_read(b, Condition={"StringEquals": {"aws:NoSuchKey": "x"}})
    with pytest.raises(ClientError) as err:
        s3.put_bucket_policy(Bucket=b, Policy=policy(b, bad_key))
    assert err.value.response["Error"]["Code"] == "MalformedPolicy"
    assert "aws:NoSuchKey" in err.value.response["Error"]["Message"]
    no_principal = {"Effect": "Allow", "NotPrincipal": "*", "Action": "s3:*", "Resource": f"arn:aws:s3:::{b}"}
    fails(lambda: s3.put_bucket_policy(Bucket=b, Policy=policy(b, no_principal)), "MalformedPolicy", 400)
    other = public_read("elsewhere")
    fails(lambda: s3.put_bucket_policy(Bucket=b, Policy=policy(b, other)), "MalformedPolicy", 400)
    fails(lambda: s3.get_bucket_policy(Bucket=b), "NoSuchBucketPolicy", 404)

    document = policy(b, public_read(b))
    s3.put_bucket_policy(Bucket=b, Policy=document)
    assert json.loads(s3.get_bucket_policy(Bucket=b)["Policy"]) == json.loads(document)
    s3.delete_bucket_policy(Bucket=b)
    fails(lambda: s3.get_bucket_policy(Bucket=b), "NoSuchBucketPolicy", 404)
    s3.delete_bucket_policy(Bucket=b)  # deleting none is fine, as on AWS
    fails(lambda: s3.put_bucket_policy(Bucket="pol-none-test", Policy=document), "NoSuchBucket", 404)


def test_explicit_deny_beats_grants_but_not_root(s3d: Daemon, s3: Any) -> None:
    b = fresh_bucket(s3)
    src = fresh_bucket(s3)
    s3.put_object(Bucket=b, Key="keep/x", Body=b"1")
    s3.put_object(Bucket=b, Key="other/y", Body=b"2")
    s3.put_object(Bucket=src, Key="s", Body=b"source")
    alice_key = new_key(s3d, f"{b}:rw", f"{src}:r")
    alice = make_client(s3d, keys=alice_key)
    carol_key = new_key(s3d)
    carol = make_client(s3d, keys=carol_key)
    alice.put_object(Bucket=b, Key="mine", Body=b"ok")
    alice.copy_object(Bucket=b, Key="copied", CopySource={"Bucket": src, "Key": "s"})
    fails(lambda: carol.get_object(Bucket=b, Key="mine"))

    statements = [
        {
            "Effect": "Deny",
            "Principal": {"AWS": [alice_key[0]]},
            "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{b}/*",
        },
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:DeleteObject",
            "Resource": f"arn:aws:s3:::{b}/keep/*",
        },
        {
            # A policy lets in a key that has no grant at all.
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::000000000000:user/{carol_key[0]}"},
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{b}/*",
        },
    ]
    s3.put_bucket_policy(Bucket=b, Policy=policy(b, *statements))
    fails(lambda: alice.put_object(Bucket=b, Key="mine", Body=b"again"))
    assert alice.get_object(Bucket=b, Key="mine")["Body"].read() == b"ok"
    assert carol.get_object(Bucket=b, Key="mine")["Body"].read() == b"ok"
    fails(lambda: carol.put_object(Bucket=b, Key="c", Body=b"no"))
    fails(lambda: alice.delete_object(Bucket=b, Key="keep/x"))
    # DeleteObjects judges each key as DeleteObject.
    result = alice.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "keep/x"}, {"Key": "other/y"}]})
    assert [d["Key"] for d in result.get("Deleted", [])] == ["other/y"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("keep/x", "AccessDenied")]
    # The key may not change the policy (owner only), the root key may.
    fails(lambda: alice.delete_bucket_policy(Bucket=b))

    # A Deny on the copy source's bucket refuses the copy.
    deny_read = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{src}/*",
    }
    s3.put_bucket_policy(Bucket=src, Policy=policy(src, deny_read))
    fails(lambda: alice.copy_object(Bucket=b, Key="copied2", CopySource={"Bucket": src, "Key": "s"}))

    # Root is never locked out, even by a policy denying everything to everyone.
    lock = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*"],
    }
    s3.put_bucket_policy(Bucket=b, Policy=policy(b, lock))
    fails(lambda: alice.get_object(Bucket=b, Key="mine"))
    fails(lambda: alice.list_objects_v2(Bucket=b))
    assert s3.get_object(Bucket=b, Key="mine")["Body"].read() == b"ok"
    s3.delete_bucket_policy(Bucket=b)
    s3.delete_bucket_policy(Bucket=src)
    assert alice.get_object(Bucket=b, Key="mine")["Body"].read() == b"ok"


def test_source_ip_condition(s3: Any, anon: Any) -> None:
    b = fresh_bucket(s3)
    s3.put_object(Bucket=b, Key="k", Body=b"v")
    private_net = public_read(b, Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    s3.put_bucket_policy(Bucket=b, Policy=policy(b, private_net))
    fails(lambda: anon.get_object(Bucket=b, Key="k"))
    loopback = public_read(b, Condition={"IpAddress": {"aws:SourceIp": ["127.0.0.1/32", "::1/128"]}})
    s3.put_bucket_policy(Bucket=b, Policy=policy(b, loopback))
    assert anon.get_object(Bucket=b, Key="k")["Body"].read() == b"v"
    insecure_only = public_read(b, Condition={"Bool": {"aws:SecureTransport": "true"}})
    s3.put_bucket_policy(Bucket=b, Policy=policy(b, insecure_only))
    fails(lambda: anon.get_object(Bucket=b, Key="k"))  # plain HTTP here


def test_block_public_policy(s3: Any, anon: Any) -> None:
    b = fresh_bucket(s3)
    s3.put_object(Bucket=b, Key="k", Body=b"v")
    s3.put_public_access_block(Bucket=b, PublicAccessBlockConfiguration={"BlockPublicPolicy": True})
    fails(lambda: s3.put_bucket_policy(Bucket=b, Policy=policy(b, public_read(b))))
    fails(lambda: s3.get_bucket_policy(Bucket=b), "NoSuchBucketPolicy", 404)
    pinned = public_read(b, Condition={"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}})
    s3.put_bucket_policy(Bucket=b, Policy=policy(b, pinned))  # not public: accepted
    assert anon.get_object(Bucket=b, Key="k")["Body"].read() == b"v"
    s3.delete_bucket_policy(Bucket=b)
    s3.delete_public_access_block(Bucket=b)
