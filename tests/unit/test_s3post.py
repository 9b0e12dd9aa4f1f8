"""dfs.core.s3post: the multipart/form-data parser, POST policy evaluation and policy signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dfs.core import s3post, sigv4
from dfs.core.errors import S3Error
from dfs.core.s3post import Field, FileData, FileEnd, FileStart, FormParser, PostPolicy

BOUNDARY = b"XbOuNdArYx"
DELIMITER = b"\r\n--" + BOUNDARY


def form(
    fields: list[tuple[str, bytes]], data: bytes, *, filename: str = "f.txt", epilogue: bytes = b""
) -> bytes:
    out = b"preamble to skip\r\n"
    for name, value in fields:
        out += b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
        out += value + b"\r\n"
    out += b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="'
    out += filename.encode() + b'"\r\nContent-Type: text/plain\r\n\r\n' + data
    return out + b"\r\n--" + BOUNDARY + b"--\r\n" + epilogue


def parse(
    body: bytes, cuts: list[int], **kwargs: Any
) -> tuple[dict[str, bytes], FileStart | None, bytes, bool]:
    """Feed ``body`` split at ``cuts``: (fields, file start, file bytes, whether the file ended)."""
    parser = FormParser(BOUNDARY, **kwargs)
    events: list[Any] = []
    last = 0
    for cut in [*sorted(cuts), len(body)]:
        events += parser.feed(body[last:cut])
        last = cut
    events += parser.finish()
    fields = {e.name: e.value for e in events if isinstance(e, Field)}
    starts = [e for e in events if isinstance(e, FileStart)]
    data = b"".join(e.data for e in events if isinstance(e, FileData))
    ends = [e for e in events if isinstance(e, FileEnd)]
    assert len(starts) <= 1 and len(ends) <= 1
    return fields, (starts[0] if starts else None), data, bool(ends)


# Bytes that look like the delimiter, or pieces of it, make the parser's look-behind work.
_tricky = st.lists(
    st.sampled_from([b"\r\n", b"--", BOUNDARY, BOUNDARY[:5], b"\r\n--" + BOUNDARY[:-1], b"x", b"\r", b"-"]),
    max_size=30,
).map(b"".join)
_data = st.one_of(st.binary(max_size=3000), _tricky)


@given(
    data=_data,
    value=_tricky,
    cuts=st.lists(st.integers(0, 4000), max_size=12),
)
def test_any_split_yields_the_same_fields_and_file(data: bytes, value: bytes, cuts: list[int]) -> None:
    # A form's boundary is chosen not to occur in its contents.
    assume(DELIMITER not in value and DELIMITER not in data)
    body = form([("key", b"a/${filename}"), ("X-Amz-Meta-Note", value)], data, epilogue=b"junk after")
    cuts = [c for c in cuts if c <= len(body)]
    fields, start, got, ended = parse(body, cuts)
    assert fields == {"key": b"a/${filename}", "x-amz-meta-note": value}
    assert start == FileStart("f.txt", "text/plain")
    assert got == data
    assert ended


@given(body=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_garbage_is_refused_as_s3_errors_only(body: bytes, cuts: list[int]) -> None:
    status = 0
    try:
        parse(body, [c for c in cuts if c <= len(body)])
    except S3Error as exc:
        status = exc.status
    assert status in (0, 400)


@given(prefix=st.binary(max_size=200), cut=st.integers(0, 400))
def test_mutilated_forms_are_refused_or_parsed(prefix: bytes, cut: int) -> None:
    body = form([("key", b"k")], b"payload")
    mutilated = body[:cut] + prefix + body[cut:]
    code = ""
    try:
        parse(mutilated, [cut])
    except S3Error as exc:
        code = exc.s3_code
    assert code in ("", "MalformedPOSTRequest", "MaxPostPreDataLengthExceeded")


def test_field_limits_and_truncation() -> None:
    with pytest.raises(S3Error) as err:
        parse(form([("policy", b"p" * 5000)], b"x"), [], max_fields_bytes=4096)
    assert err.value.s3_code == "MaxPostPreDataLengthExceeded"
    # The file itself is not limited by the field cap, and is streamed.
    fields, _, data, ended = parse(form([("key", b"k")], b"d" * 100_000), [10, 500], max_fields_bytes=4096)
    assert (fields, len(data), ended) == ({"key": b"k"}, 100_000, True)
    body = form([("key", b"k")], b"data")
    cut = body.index(b"data") + 2
    with pytest.raises(S3Error) as err:
        parse(body[:cut], [])
    assert err.value.s3_code == "MalformedPOSTRequest"
    with pytest.raises(S3Error):
        parse(b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nv\r\n--" + BOUNDARY + b"--", [])
    # The file name is a base name, whatever path a browser sent.
    _, start, _, _ = parse(form([], b"", filename="C:\\\\Users\\\\me\\\\doc.pdf"), [])
    assert start is not None and start.filename == "doc.pdf"


def test_boundary_of() -> None:
    assert s3post.boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    assert s3post.boundary_of("Multipart/Form-Data;boundary=xyz; charset=utf-8") == b"xyz"
    assert s3post.boundary_of("application/octet-stream") is None
    with pytest.raises(S3Error):
        s3post.boundary_of("multipart/form-data")
    with pytest.raises(S3Error):
        s3post.boundary_of("multipart/form-data; boundary=" + "b" * 71)


# --------------------------------------------------------------------------- policy

NOW = 1_800_000_000.0


def policy(*conditions: Any, expiration: str = "2027-01-15T08:00:00Z") -> PostPolicy:
    doc = {"expiration": expiration, "conditions": list(conditions)}
    return PostPolicy.parse(base64.b64encode(json.dumps(doc).encode()).decode())


def denied(p: PostPolicy, fields: dict[str, str], reason: str, bucket: str = "b") -> None:
    with pytest.raises(S3Error) as err:
        p.check(fields, bucket=bucket, now_s=NOW)
    assert (err.value.s3_code, err.value.status) == ("AccessDenied", 403)
    assert err.value.message.startswith("Invalid according to Policy: ")
    assert reason in err.value.message


def test_policy_conditions() -> None:
    p = policy(
        {"bucket": "b"},
        ["starts-with", "$key", "user/"],
        {"Content-Type": "image/png"},
        ["eq", "$x-amz-meta-a", "1"],
        ["starts-with", "$x-amz-meta-b", ""],
    )
    ok = {"key": "user/x", "content-type": "image/png", "x-amz-meta-a": "1", "x-amz-meta-b": "any"}
    p.check(ok, bucket="b", now_s=NOW)
    p.check({**ok, "x-amz-meta-b": ""}, bucket="b", now_s=NOW)  # empty prefix: anything
    p.check({**ok, "policy": "p", "x-amz-signature": "s", "x-ignore-me": "1"}, bucket="b", now_s=NOW)
    denied(p, ok, "Policy Condition failed", bucket="other")
    denied(p, {**ok, "key": "admin/x"}, "Policy Condition failed")
    denied(p, {**ok, "content-type": "image/png2"}, "Policy Condition failed")
    denied(p, {**ok, "x-amz-meta-a": "2"}, "Policy Condition failed")
    denied(p, {**ok, "x-amz-meta-c": "3"}, "Extra input fields: x-amz-meta-c")
    denied(p, {k: v for k, v in ok.items() if k != "x-amz-meta-a"}, "Policy Condition failed")
    expired = policy({"bucket": "b"}, expiration="2020-01-01T00:00:00.000Z")
    denied(expired, {}, "Policy expired.")
    # Content-Type: every one of several must match a starts-with.
    ct = policy(["starts-with", "$Content-Type", "image/"])
    ct.check({"content-type": "image/png, image/gif"}, bucket="b", now_s=NOW)
    denied(ct, {"content-type": "image/png, text/html"}, "Policy Condition failed")
    # ${filename} must not take the key out of its prefix.
    p.check_key("user/report.pdf")
    with pytest.raises(S3Error):
        p.check_key("other/report.pdf")


def test_content_length_range() -> None:
    p = policy(["content-length-range", 10, 20])
    for size in (10, 15, 20):
        p.check_length(size, final=True)
    p.check_length(3, final=False)  # too small only once the file ended
    with pytest.raises(S3Error) as err:
        p.check_length(21, final=False)
    assert err.value.s3_code == "EntityTooLarge"
    with pytest.raises(S3Error) as err:
        p.check_length(9, final=True)
    assert err.value.s3_code == "EntityTooSmall"
    policy().check_length(10**12, final=True)  # no range: no limit from the policy


@pytest.mark.parametrize(
    "doc",
    [
        b"not base64!",
        base64.b64encode(b"[1, 2]"),
        base64.b64encode(b'{"conditions": []}'),
        base64.b64encode(b'{"expiration": "tomorrow", "conditions": []}'),
        base64.b64encode(b'{"expiration": "2027-01-01T00:00:00Z"}'),
        base64.b64encode(b'{"expiration": "2027-01-01T00:00:00Z", "conditions": [["lt", "$key", "a"]]}'),
        base64.b64encode(b'{"expiration": "2027-01-01T00:00:00Z", "conditions": [["eq", "key", "a"]]}'),
        base64.b64encode(b'{"expiration": "2027-01-01T00:00:00Z", "conditions": [{"key": 1}]}'),
        base64.b64encode(
            b'{"expiration": "2027-01-01T00:00:00Z", "conditions": [["content-length-range", 5, 1]]}'
        ),
    ],
)
def test_malformed_policies(doc: bytes) -> None:
    with pytest.raises(S3Error) as err:
        PostPolicy.parse(doc.decode())
    assert (err.value.s3_code, err.value.status) == ("InvalidPolicyDocument", 400)


# --------------------------------------------------------------------------- signatures

SECRETS = {"AKID": "s3cr3t"}
POLICY_B64 = base64.b64encode(b'{"expiration": "2027-01-01T00:00:00Z", "conditions": []}').decode()


def v4_fields(*, secret: str = "s3cr3t", date: str = "20261205", region: str = "us-east-1") -> dict[str, str]:
    key = sigv4.signing_key(secret, date, region)
    return {
        "policy": POLICY_B64,
        "x-amz-algorithm": "AWS4-HMAC-SHA256",
        "x-amz-credential": f"AKID/{date}/{region}/s3/aws4_request",
        "x-amz-date": f"{date}T120000Z",
        "x-amz-signature": hmac.new(key, POLICY_B64.encode(), hashlib.sha256).hexdigest(),
    }


def verify(fields: dict[str, str]) -> tuple[str, str]:
    return s3post.verify_signature(fields, SECRETS.get, region="eu-west-1")


def test_signatures() -> None:
    assert verify(v4_fields()) == ("AKID", "v4-post")
    assert verify(v4_fields(region="eu-west-1")) == ("AKID", "v4-post")
    v2 = base64.b64encode(hmac.digest(b"s3cr3t", POLICY_B64.encode(), "sha1")).decode()
    assert verify({"policy": POLICY_B64, "awsaccesskeyid": "AKID", "signature": v2}) == ("AKID", "v2-post")

    def refused(fields: dict[str, str], code: str) -> None:
        with pytest.raises(S3Error) as err:
            verify(fields)
        assert err.value.s3_code == code

    refused(v4_fields(secret="wrong"), "SignatureDoesNotMatch")
    refused({**v4_fields(), "policy": POLICY_B64 + " "}, "SignatureDoesNotMatch")
    refused(
        {**v4_fields(), "x-amz-credential": "NOBODY/20261205/us-east-1/s3/aws4_request"}, "InvalidAccessKeyId"
    )
    refused({**v4_fields(), "x-amz-date": "20261204T120000Z"}, "InvalidArgument")
    refused(v4_fields(region="ap-south-1"), "InvalidArgument")
    refused({k: v for k, v in v4_fields().items() if k != "policy"}, "InvalidArgument")
    refused({"policy": POLICY_B64, "awsaccesskeyid": "AKID", "signature": "AAAA"}, "SignatureDoesNotMatch")
    refused({"policy": POLICY_B64, "key": "k"}, "AccessDenied")  # anonymous
