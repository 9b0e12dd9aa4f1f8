"""Browser uploads (POST Object): forms made by botocore's generate_presigned_post, posted by hand.

The multipart/form-data bodies are encoded here (as a browser would) and sent with
http.client, so what reaches the daemon is exactly a form, not anything boto3 adds.
The module's daemon is fsck-checked at teardown (tests/s3/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon
from tests.s3.conftest import make_client
from tests.s3.forms import post_form

MiB = 1024 * 1024


def new_key(d: Daemon, *allow: str) -> tuple[str, str]:
    """A key made with `dfs s3 key create` with the given BUCKET:PERM grants."""
    args = [a for spec in allow for a in ("--allow", spec)]
    made = json.loads(d.cli("s3", "key", "create", *args, "--json").stdout)
    return made["access_key"], made["secret_key"]


def peak_rss_mib(d: Daemon) -> float:
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def presigned(s3: Any, bucket: str, key: str, **kwargs: Any) -> tuple[str, list[tuple[str, str]]]:
    """(path to post to, the form's fields in order) from generate_presigned_post, signed with SigV4
    (botocore's default for a POST policy is SigV2: ask for s3v4 explicitly)."""
    post = s3.generate_presigned_post(Bucket=bucket, Key=key, **kwargs)
    path = urllib.parse.urlsplit(post["url"]).path
    return path, list(post["fields"].items())


@pytest.fixture
def v4(s3d: Daemon) -> Any:
    """A root-key client that signs POST policies with SigV4."""
    return make_client(s3d, signature_version="s3v4")


def missing(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        return bool(exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404)
    return False


def test_upload_stores_object_with_headers_and_metadata(s3d: Daemon, s3: Any, v4: Any, bucket: str) -> None:
    fields = {
        "Content-Type": "text/x-form",
        "Cache-Control": "max-age=60",
        "Content-Disposition": 'attachment; filename="x.txt"',
        "x-amz-meta-color": "blue",
    }
    conditions: list[Any] = [
        {"Content-Type": "text/x-form"},
        {"Cache-Control": "max-age=60"},
        ["starts-with", "$Content-Disposition", ""],
        ["eq", "$x-amz-meta-color", "blue"],
        ["content-length-range", 1, 1000],
    ]
    path, form = presigned(v4, bucket, "docs/a.txt", Fields=fields, Conditions=conditions)
    assert {"x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature"} <= dict(form).keys()
    data = b"hello from a form\r\n--not-a-boundary\r\n" + os.urandom(300)
    ans = post_form(s3d, path, form, data)
    assert ans.status == 204, ans
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    assert ans.headers["etag"] == etag
    assert ans.headers["location"].endswith(f"/{bucket}/docs/a.txt")
    got = s3.get_object(Bucket=bucket, Key="docs/a.txt")
    assert got["Body"].read() == data
    assert got["ETag"] == etag
    assert got["ContentType"] == "text/x-form"
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentDisposition"] == 'attachment; filename="x.txt"'
    assert got["Metadata"] == {"color": "blue"}


def test_success_status_redirect_and_filename(s3d: Daemon, s3: Any, v4: Any, bucket: str) -> None:
    # 201: a PostResponse document naming the object.
    path, form = presigned(
        s3,
        bucket,
        "k201",
        Fields={"success_action_status": "201"},
        Conditions=[{"success_action_status": "201"}],
    )
    ans = post_form(s3d, path, form, b"one")
    assert ans.status == 201, ans
    assert b"<PostResponse" in ans.body and b"<Key>k201</Key>" in ans.body
    assert f"<Bucket>{bucket}</Bucket>".encode() in ans.body
    assert hashlib.md5(b"one").hexdigest().encode() in ans.body
    # 200: empty.
    path, form = presigned(
        s3,
        bucket,
        "k200",
        Fields={"success_action_status": "200"},
        Conditions=[{"success_action_status": "200"}],
    )
    ans = post_form(s3d, path, form, b"two")
    assert (ans.status, ans.body) == (200, b""), ans
    # A redirect: 303 to it with bucket, key and etag in the query.
    target = "https://example.test/done?x=1"
    path, form = presigned(
        s3,
        bucket,
        "kredirect",
        Fields={"success_action_redirect": target},
        Conditions=[{"success_action_redirect": target}],
    )
    ans = post_form(s3d, path, form, b"three")
    assert ans.status == 303, ans
    where = urllib.parse.urlsplit(ans.headers["location"])
    assert where.netloc == "example.test"
    query = urllib.parse.parse_qs(where.query)
    assert query["x"] == ["1"] and query["bucket"] == [bucket] and query["key"] == ["kredirect"]
    assert query["etag"] == [f'"{hashlib.md5(b"three").hexdigest()}"']
    # ${filename}: botocore signs a starts-with on the prefix.
    path, form = presigned(v4, bucket, "uploads/${filename}")
    ans = post_form(s3d, path, form, b"four", filename="report.pdf")
    assert ans.status == 204, ans
    assert s3.get_object(Bucket=bucket, Key="uploads/report.pdf")["Body"].read() == b"four"
    for key in ("k201", "k200", "kredirect"):
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0


def test_tagging_field(s3d: Daemon, s3: Any, bucket: str) -> None:
    doc = "<Tagging><TagSet><Tag><Key>team</Key><Value>web</Value></Tag></TagSet></Tagging>"
    path, form = presigned(s3, bucket, "tagged", Fields={"tagging": doc}, Conditions=[{"tagging": doc}])
    ans = post_form(s3d, path, form, b"tagged body")
    assert ans.status == 204, ans
    assert s3.get_object_tagging(Bucket=bucket, Key="tagged")["TagSet"] == [{"Key": "team", "Value": "web"}]
    assert (
        s3.head_object(Bucket=bucket, Key="tagged")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"]
        == "1"
    )
    bad = "<Tagging><TagSet><Tag><Key>aws:x</Key><Value>v</Value></Tag></TagSet></Tagging>"
    path, form = presigned(s3, bucket, "badtag", Fields={"tagging": bad}, Conditions=[{"tagging": bad}])
    ans = post_form(s3d, path, form, b"x")
    assert (ans.status, ans.code) == (400, "InvalidTag"), ans
    assert missing(s3, bucket, "badtag")


def test_v2_signature_and_virtual_host(s3d: Daemon, bucket: str) -> None:
    v2 = make_client(s3d, signature_version="s3")
    path, form = presigned(v2, bucket, "v2-object")
    names = {name for name, _ in form}
    assert {"AWSAccessKeyId", "signature", "policy"} <= names, form
    ans = post_form(s3d, path, form, b"signed with v2")
    assert ans.status == 204, ans
    s3 = make_client(s3d)
    assert s3.get_object(Bucket=bucket, Key="v2-object")["Body"].read() == b"signed with v2"
    # Virtual-host style: the bucket in the Host header, the form posted to "/".
    _, form = presigned(make_client(s3d, signature_version="s3v4"), bucket, "vhost-object")
    ans = post_form(s3d, "/", form, b"by host", host=f"{bucket}.s3.localhost:{s3d.s3_port}")
    assert ans.status == 204, ans
    assert s3.get_object(Bucket=bucket, Key="vhost-object")["Body"].read() == b"by host"


def _replace(form: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    assert any(n == name for n, _ in form), (name, form)
    return [(n, value if n == name else v) for n, v in form]


def test_refusals(s3d: Daemon, s3: Any, v4: Any, bucket: str) -> None:
    def refused(form: list[tuple[str, str]], data: bytes, status: int, code: str, text: str = "") -> None:
        ans = post_form(s3d, f"/{bucket}", form, data)
        assert (ans.status, ans.code) == (status, code), ans
        assert text.encode() in ans.body, ans
        assert missing(s3, bucket, "refused")

    _, form = presigned(v4, bucket, "refused", ExpiresIn=-60)
    refused(form, b"x", 403, "AccessDenied", "Policy expired")
    _, form = presigned(v4, bucket, "refused")
    policy = json.loads(base64.b64decode(dict(form)["policy"]))
    policy["expiration"] = "2099-01-01T00:00:00Z"
    tampered = base64.b64encode(json.dumps(policy).encode()).decode()
    refused(_replace(form, "policy", tampered), b"x", 403, "SignatureDoesNotMatch")
    refused(_replace(form, "x-amz-signature", "0" * 64), b"x", 403, "SignatureDoesNotMatch")
    # A field the policy does not cover; an x-ignore- one is fine.
    refused(
        [*form, ("x-amz-meta-extra", "1")], b"x", 403, "AccessDenied", "Extra input fields: x-amz-meta-extra"
    )
    # The key is signed: another one fails its condition.
    refused(_replace(form, "key", "elsewhere"), b"x", 403, "AccessDenied", "Policy Condition failed")
    # starts-with.
    _, form = presigned(
        s3,
        bucket,
        "refused",
        Fields={"Content-Type": "text/plain"},
        Conditions=[["starts-with", "$Content-Type", "image/"]],
    )
    refused(form, b"x", 403, "AccessDenied", "Policy Condition failed")
    # content-length-range, both ends.
    _, form = presigned(v4, bucket, "refused", Conditions=[["content-length-range", 10, 20]])
    refused(form, b"x" * 21, 400, "EntityTooLarge")
    refused(form, b"x" * 9, 400, "EntityTooSmall")
    ans = post_form(s3d, f"/{bucket}", [*form, ("x-ignore-note", "hi")], b"x" * 15)
    assert ans.status == 204, ans
    s3.delete_object(Bucket=bucket, Key="refused")
    # Anonymous (no signature fields at all), an ACL that is not a canned one, no file part.
    refused([("key", "refused")], b"x", 403, "AccessDenied")
    _, form = presigned(
        s3, bucket, "refused", Fields={"acl": "world-writable"}, Conditions=[{"acl": "world-writable"}]
    )
    refused(form, b"x", 400, "InvalidArgument", "ACL")
    # No file part; a body cut short before the closing delimiter.
    field = b'--b\r\nContent-Disposition: form-data; name="key"\r\n\r\nrefused'
    for body, code in ((field + b"\r\n--b--\r\n", b"InvalidArgument"), (field, b"MalformedPOSTRequest")):
        conn = http.client.HTTPConnection("127.0.0.1", s3d.s3_port, timeout=30)
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        conn.request("POST", f"/{bucket}", body=body, headers=headers)
        resp = conn.getresponse()
        assert (resp.status, code in resp.read()) == (400, True)
        conn.close()
    assert missing(s3, bucket, "refused")


def test_the_signing_keys_grants_apply(s3d: Daemon, s3: Any, bucket: str) -> None:
    reader = make_client(s3d, keys=new_key(s3d, f"{bucket}:r"), signature_version="s3v4")
    _, form = presigned(reader, bucket, "by-reader")
    ans = post_form(s3d, f"/{bucket}", form, b"x")
    assert (ans.status, ans.code) == (403, "AccessDenied"), ans
    writer = make_client(s3d, keys=new_key(s3d, f"{bucket}:rw"), signature_version="s3v4")
    _, form = presigned(writer, bucket, "by-writer")
    ans = post_form(s3d, f"/{bucket}", form, b"x")
    assert ans.status == 204, ans
    assert missing(s3, bucket, "by-reader")
    assert s3.get_object(Bucket=bucket, Key="by-writer")["Body"].read() == b"x"


def test_large_upload_streams(s3d: Daemon, s3: Any, v4: Any, bucket: str) -> None:
    size = 48 * MiB
    piece = MiB
    sent = hashlib.md5()

    def data() -> Iterator[bytes]:
        for i in range(size // piece):
            chunk = hashlib.sha256(i.to_bytes(4, "big")).digest() * (piece // 32)
            sent.update(chunk)
            yield chunk

    _, form = presigned(v4, bucket, "large", Conditions=[["content-length-range", 0, size]])
    before = peak_rss_mib(s3d)
    ans = post_form(s3d, f"/{bucket}", form, data(), size=size)
    assert ans.status == 204, ans
    grew = peak_rss_mib(s3d) - before
    assert ans.headers["etag"] == f'"{sent.hexdigest()}"'
    head = s3.head_object(Bucket=bucket, Key="large")
    assert head["ContentLength"] == size
    got = hashlib.md5()
    for chunk in s3.get_object(Bucket=bucket, Key="large")["Body"].iter_chunks(MiB):
        got.update(chunk)
    assert got.hexdigest() == sent.hexdigest()
    # Buffering the file would grow the peak by its 48 MiB; streaming holds a few 4 MiB blocks.
    assert grew < 32, f"daemon peak RSS grew by {grew:.0f} MiB for a {size // MiB} MiB upload"


def test_checksum_fields_and_quota(s3d: Daemon, s3: Any, v4: Any, bucket: str) -> None:
    data = os.urandom(2000)
    good = base64.b64encode(hashlib.sha256(data).digest()).decode()
    for value, want in ((base64.b64encode(hashlib.sha256(b"other").digest()).decode(), 400), (good, 204)):
        fields = {"x-amz-checksum-sha256": value}
        _, form = presigned(v4, bucket, "summed", Fields=fields, Conditions=[fields])
        ans = post_form(s3d, f"/{bucket}", form, data)
        assert ans.status == want, ans
        if want == 400:
            assert ans.code == "BadDigest" and missing(s3, bucket, "summed")
    head = s3.head_object(Bucket=bucket, Key="summed", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == good
    # The bucket's quota holds for form uploads as for PutObject: refused whole.
    s3d.cli("quota", "set", f"/{bucket}", "--bytes", "1M")
    _, form = presigned(v4, bucket, "over-quota")
    ans = post_form(s3d, f"/{bucket}", form, os.urandom(2 * MiB))
    assert (ans.status, ans.code) == (403, "QuotaExceeded"), ans
    assert missing(s3, bucket, "over-quota")
    # The refused body was stored before the commit failed: chunks no metadata names, for the sweep.
    s3d.cli("gc", "--orphans", "--now")
