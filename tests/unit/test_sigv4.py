"""dfs.core.sigv4: requests signed by botocore's real signers and boto3 clients, AWS's published
examples, aws-chunked bodies as boto3/minio-go/AWS write them, and body digest checks."""

from __future__ import annotations

import base64
import calendar
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import random
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import botocore.auth
import botocore.crt.auth
import pytest
from botocore.auth import HmacV1QueryAuth, S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core.checksums import Checksum
from dfs.core.errors import S3Error
from dfs.core.sigv4 import (
    EMPTY_SHA256,
    STREAMING_PAYLOAD,
    STREAMING_PAYLOAD_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    AuthContext,
    BodyChecks,
    ChunkedDecoder,
    RequestView,
    authenticate,
    canonical_query,
    canonical_uri,
    is_streaming,
    signing_key,
)

AK = "AKIDDFSTEST"
SK = "dfs/secret+key=with/odd chars"
SECRETS = {AK: SK}
secret_for: Callable[[str], str | None] = SECRETS.get

# botocore reads the clock through get_current_datetime in botocore.auth and,
# because awscrt is installed, botocore.crt.auth (boto3 clients then sign with
# the CRT signers, not the Python ones: the tests exercise both).  The autouse
# fixture pins both so signatures (and skew tests) are deterministic.
FIXED = dt.datetime(2025, 3, 14, 15, 9, 26, tzinfo=dt.UTC)
NOW = FIXED.timestamp()
AMZ_DATE = "20250314T150926Z"

ENDPOINT = "http://127.0.0.1:9000"

# The AWS documentation's examples ("Signature Calculations for the Authorization Header").
DOC_AK = "AKIAIOSFODNN7EXAMPLE"
DOC_SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = float(calendar.timegm((2013, 5, 24, 0, 0, 0)))
DOC_SCOPE = "20130524/us-east-1/s3/aws4_request"
DOC_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


@pytest.fixture(autouse=True)
def frozen_botocore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def fixed(remove_tzinfo: bool = True) -> dt.datetime:
        return FIXED.replace(tzinfo=None) if remove_tzinfo else FIXED

    monkeypatch.setattr(botocore.auth, "get_current_datetime", fixed)
    monkeypatch.setattr(botocore.crt.auth, "get_current_datetime", fixed)


# --------------------------------------------------------------------------- helpers


def view(req: AWSRequest | AWSPreparedRequest) -> RequestView:
    """What the HTTP layer hands to authenticate(): raw path/query, lower-case Latin-1 headers."""
    prepared = req.prepare() if isinstance(req, AWSRequest) else req
    parts = urlsplit(prepared.url)
    headers: dict[str, str] = {}
    for name, value in prepared.headers.items():
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        key = name.lower()
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    if "host" not in headers:
        # urllib3 adds Host on the wire, without the default port (botocore's _host_from_url).
        default = {"http": 80, "https": 443}[parts.scheme]
        headers["host"] = parts.hostname if parts.port in (None, default) else parts.netloc  # type: ignore[assignment]
    return RequestView(prepared.method, parts.path, parts.query, headers)


def with_headers(v: RequestView, **changes: str | None) -> RequestView:
    headers = dict(v.headers)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return dataclasses.replace(v, headers=headers)


def creds(token: str | None = None) -> Credentials:
    return Credentials(AK, SK, token)


def sign_header(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    region: str = "us-east-1",
    signer: type[SigV4Auth] = S3SigV4Auth,
    service: str = "s3",
    credentials: Credentials | None = None,
) -> RequestView:
    req = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
    signer(credentials or creds(), service, region).add_auth(req)
    return view(req)


def sign_presigned(
    url: str, *, method: str = "GET", expires: int = 3600, region: str = "us-east-1"
) -> RequestView:
    req = AWSRequest(method=method, url=url)
    S3SigV4QueryAuth(creds(), "s3", region, expires=expires).add_auth(req)
    return view(req)


def view_of_url(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> RequestView:
    parts = urlsplit(url)
    return RequestView(method, parts.path, parts.query, {"host": parts.netloc, **(headers or {})})


def expect(code: str, status: int, fn: Callable[..., object], *args: Any, **kwargs: Any) -> S3Error:
    with pytest.raises(S3Error) as ei:
        fn(*args, **kwargs)
    assert (ei.value.s3_code, ei.value.status) == (code, status), ei.value.message
    return ei.value


def auth(v: RequestView, **kw: Any) -> AuthContext:
    kw.setdefault("now_s", NOW)
    return authenticate(v, secret_for, **kw)


def key_url(key: str, bucket: str = "bucket", endpoint: str = ENDPOINT) -> str:
    # How botocore serialises an object key into the path.
    return f"{endpoint}/{bucket}/{quote(key, safe='/~')}"


class Captured(Exception):
    def __init__(self, request: AWSPreparedRequest) -> None:
        super().__init__("captured")
        self.request = request


def _capture(request: AWSPreparedRequest, **_: object) -> None:
    raise Captured(request)


_CLIENTS: dict[tuple[str, str, str], Any] = {}


def client(endpoint: str = ENDPOINT, region: str = "us-east-1", **config: Any) -> Any:
    """A real boto3 S3 client whose requests are captured instead of sent (cached: creating one is slow)."""
    key = (endpoint, region, repr(sorted(config.items())))
    if key not in _CLIENTS:
        c = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=AK,
            aws_secret_access_key=SK,
            region_name=region,
            config=Config(**config) if config else None,
        )
        c.meta.events.register("before-send", _capture)
        _CLIENTS[key] = c
    return _CLIENTS[key]


def capture(call: Callable[[], object]) -> AWSPreparedRequest:
    with pytest.raises(Captured) as ei:
        call()
    return ei.value.request


def body_of(req: AWSPreparedRequest) -> bytes:
    body = req.body
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    data = body.read()
    assert isinstance(data, bytes)
    return data


def receive(req: AWSPreparedRequest, **auth_kw: Any) -> tuple[AuthContext, bytes, BodyChecks]:
    """Authenticate, decode and digest-check a captured request, as the S3 shim will."""
    v = view(req)
    ctx = auth(v, **auth_kw)
    raw = body_of(req)
    checks = BodyChecks(v.headers, ctx)
    trailers: dict[str, str] = {}
    if is_streaming(ctx.payload):
        dec = ChunkedDecoder(ctx)
        payload = dec.feed(raw)
        trailers = dec.finish()
    else:
        payload = raw
    checks.update(payload)
    checks.finish(trailers)
    return ctx, payload, checks


# --------------------------------------------------------------------------- AWS documentation examples


def doc_headers(signed: str, signature: str, **headers: str) -> dict[str, str]:
    return {
        "x-amz-date": "20130524T000000Z",
        **headers,
        "authorization": (
            f"AWS4-HMAC-SHA256 Credential={DOC_AK}/{DOC_SCOPE},SignedHeaders={signed},Signature={signature}"
        ),
    }


def doc_auth(v: RequestView, now_s: float = DOC_NOW) -> AuthContext:
    return authenticate(v, {DOC_AK: DOC_SK}.get, now_s=now_s)


def test_aws_example_get_object_with_range() -> None:
    h = doc_headers(
        "host;range;x-amz-content-sha256;x-amz-date",
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        host="examplebucket.s3.amazonaws.com",
        range="bytes=0-9",
        **{"x-amz-content-sha256": EMPTY_SHA256},
    )
    ctx = doc_auth(RequestView("GET", "/test.txt", "", h))
    assert (ctx.access_key, ctx.method, ctx.payload, ctx.scope) == (
        DOC_AK,
        "v4-header",
        EMPTY_SHA256,
        DOC_SCOPE,
    )


def test_aws_example_put_object_with_dollar_in_key_and_date_header() -> None:
    h = doc_headers(
        "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        host="examplebucket.s3.amazonaws.com",
        date="Fri, 24 May 2013 00:00:00 GMT",
        **{
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "x-amz-content-sha256": hashlib.sha256(b"Welcome to Amazon S3.").hexdigest(),
        },
    )
    doc_auth(RequestView("PUT", "/test%24file.text", "", h))


@pytest.mark.parametrize(
    ("query", "signature"),
    [
        ("lifecycle", "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        ("max-keys=2&prefix=J", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
    ],
)
def test_aws_example_bucket_requests(query: str, signature: str) -> None:
    h = doc_headers(
        "host;x-amz-content-sha256;x-amz-date",
        signature,
        host="examplebucket.s3.amazonaws.com",
        **{"x-amz-content-sha256": EMPTY_SHA256},
    )
    doc_auth(RequestView("GET", "/", query, h))


def test_aws_example_presigned_url() -> None:
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1"
        "%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )
    v = RequestView("GET", "/test.txt", query, {"host": "examplebucket.s3.amazonaws.com"})
    ctx = doc_auth(v, DOC_NOW + 86400)
    assert (ctx.method, ctx.payload) == ("v4-presigned", UNSIGNED_PAYLOAD)
    expect("AccessDenied", 403, lambda: doc_auth(v, DOC_NOW + 86401))


def doc_chunked_request() -> RequestView:
    h = doc_headers(
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class",
        DOC_SEED,
        host="s3.amazonaws.com",
        **{
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "x-amz-content-sha256": STREAMING_PAYLOAD,
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": "66560",
            "content-length": "66824",
        },
    )
    return RequestView("PUT", "/examplebucket/chunkObject.txt", "", h)


DOC_CHUNKED_BODY = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
    + b"a" * 65536
    + b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
    + b"a" * 1024
    + b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"
)


def test_aws_example_chunked_upload() -> None:
    v = doc_chunked_request()
    ctx = doc_auth(v)
    assert (ctx.payload, ctx.seed_signature, ctx.amz_date) == (
        STREAMING_PAYLOAD,
        DOC_SEED,
        "20130524T000000Z",
    )
    assert ctx.signing_key == signing_key(DOC_SK, "20130524", "us-east-1")
    assert len(DOC_CHUNKED_BODY) == int(v.headers["content-length"])
    dec = ChunkedDecoder(ctx)
    checks = BodyChecks(v.headers, ctx)
    out = dec.feed(DOC_CHUNKED_BODY)
    assert out == b"a" * 66560
    assert dec.finish() == {}
    assert dec.decoded_bytes == 66560
    checks.update(out)
    checks.finish({})
    assert checks.md5_hex == hashlib.md5(b"a" * 66560).hexdigest()


def test_aws_example_chunk_signature_chain_is_enforced() -> None:
    ctx = doc_auth(doc_chunked_request())
    tampered = DOC_CHUNKED_BODY.replace(b"a" * 1024 + b"\r\n0;", b"a" * 1023 + b"b\r\n0;")
    dec = ChunkedDecoder(ctx)
    with pytest.raises(S3Error) as ei:
        dec.feed(tampered)
    assert ei.value.s3_code == "SignatureDoesNotMatch"
    # A different seed (another request's signature) breaks the first chunk.
    other = dataclasses.replace(ctx, seed_signature="0" * 64)
    expect("SignatureDoesNotMatch", 403, lambda: ChunkedDecoder(other).feed(DOC_CHUNKED_BODY))


# --------------------------------------------------------------------------- SigV4 header auth (botocore)

KEYS = [
    "plain.txt",
    'a b/é&+-"/ %',
    "漢字/キー 名前.txt",
    "key with  spaces ",
    "~tilde_(x)*!'$@=;:,?#[]{}|^`\\",
    "dir//double/./dot/../x",
]


@pytest.mark.parametrize("key", KEYS)
def test_header_auth_object_keys(key: str) -> None:
    v = sign_header("GET", key_url(key))
    ctx = auth(v)
    assert ctx == AuthContext(
        AK,
        "v4-header",
        EMPTY_SHA256,
        AMZ_DATE,
        "20250314/us-east-1/s3/aws4_request",
        signing_key(SK, "20250314", "us-east-1"),
        ctx.seed_signature,
    )
    assert len(ctx.seed_signature) == 64


def test_boto3_clients_sign_with_the_crt_signers() -> None:
    # With awscrt installed botocore swaps in awscrt's SigV4 signers; the direct
    # S3SigV4Auth tests cover the pure-Python ones.
    assert botocore.auth.AUTH_TYPE_MAPS["s3v4"].__module__ == "botocore.crt.auth"
    assert botocore.auth.AUTH_TYPE_MAPS["s3v4-query"].__module__ == "botocore.crt.auth"


@pytest.mark.parametrize("key", KEYS)
def test_boto3_client_object_keys_and_list_prefixes(key: str) -> None:
    c = client()
    for call in (
        lambda: c.get_object(Bucket="bucket", Key=key, Range="bytes=0-9"),
        lambda: c.head_object(Bucket="bucket", Key=key),
        lambda: c.list_objects_v2(Bucket="bucket", Prefix=key, Delimiter="/", StartAfter=key + "=&x"),
        lambda: c.list_objects(Bucket="bucket", Prefix=key, Marker=key),
        lambda: c.copy_object(
            Bucket="bucket", Key=key + ".copy", CopySource={"Bucket": "bucket", "Key": key}
        ),
        lambda: c.put_object(Bucket="bucket", Key=key, Body=b"x", Metadata={"note": "  two  spaces  "}),
    ):
        ctx, _, _ = receive(capture(call))
        assert ctx.method == "v4-header"


def test_boto3_client_subresource_requests() -> None:
    c = client()
    for call in (
        lambda: c.create_multipart_upload(Bucket="bucket", Key="k"),  # ?uploads (no "=")
        lambda: c.upload_part(Bucket="bucket", Key="k", UploadId="u/+=", PartNumber=3, Body=b"part"),
        lambda: c.list_parts(Bucket="bucket", Key="k", UploadId="u/+="),
        lambda: c.delete_objects(Bucket="bucket", Delete={"Objects": [{"Key": "a"}, {"Key": "b c"}]}),
        lambda: c.get_bucket_location(Bucket="bucket"),
        lambda: c.get_bucket_versioning(Bucket="bucket"),
        lambda: c.list_buckets(),
        lambda: c.create_bucket(Bucket="bucket"),
        lambda: c.delete_object(Bucket="bucket", Key="k"),
    ):
        receive(capture(call))


def test_boto3_put_over_http_signs_payload_and_sends_crc32_header() -> None:
    req = capture(lambda: client().put_object(Bucket="bucket", Key="k", Body=b"hello world"))
    ctx, payload, checks = receive(req)
    assert ctx.payload == hashlib.sha256(b"hello world").hexdigest()
    assert payload == b"hello world"
    assert checks.checksum == ("CRC32", "DUoRhQ==")
    assert checks.md5_hex == hashlib.md5(b"hello world").hexdigest()


@pytest.mark.parametrize("size", [0, 11, 3 * 1024 * 1024 + 17])
def test_boto3_put_over_https_streams_unsigned_trailer(size: int) -> None:
    data = random.Random(size).randbytes(size)
    req = capture(lambda: client("https://s3.example.test").put_object(Bucket="bucket", Key="k", Body=data))
    v = view(req)
    assert v.headers["x-amz-content-sha256"] == STREAMING_UNSIGNED_TRAILER
    assert v.headers["x-amz-trailer"] == "x-amz-checksum-crc32"
    ctx, payload, checks = receive(req)
    assert payload == data
    assert checks.checksum == ("CRC32", base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode())
    assert checks.length == size


@pytest.mark.parametrize("algorithm", ["CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_boto3_put_with_each_checksum_algorithm(algorithm: str) -> None:
    for endpoint in (ENDPOINT, "https://s3.example.test"):
        put = functools.partial(
            client(endpoint).put_object,
            Bucket="bucket",
            Key="k",
            Body=b"hello world",
            ChecksumAlgorithm=algorithm,
        )
        req = capture(put)
        _, _, checks = receive(req)
        c = Checksum(algorithm)
        c.update(b"hello world")
        assert checks.checksum == (algorithm, c.b64())


def test_header_auth_query_with_special_characters() -> None:
    # botocore puts already-encoded params in the URL; the canonical query re-encodes the decoded pairs.
    query = "prefix=a%20b%2F%C3%A9%26%2B-%22%25&delimiter=%2F&list-type=2&empty=&flag&x-id=ListObjectsV2"
    auth(sign_header("GET", f"{ENDPOINT}/bucket?{query}"))


def test_botocore_signs_a_raw_query_as_written() -> None:
    # Handed a URL whose query is not strictly encoded, botocore signs it verbatim
    # (sorted, no re-encoding); the strict canonical form differs, the fallback accepts it.
    url = f"{ENDPOINT}/bucket?prefix=a/b~c&marker=x*y"
    v = sign_header("GET", url)
    assert canonical_query(v.query) == "marker=x%2Ay&prefix=a%2Fb~c"
    auth(v)


def test_header_auth_trims_and_collapses_header_whitespace() -> None:
    v = sign_header(
        "PUT",
        key_url("k"),
        headers={"Content-Type": "text/plain;   charset=utf-8", "X-Amz-Meta-Note": "a   b\tc"},
        body=b"x",
    )
    auth(v)
    # The HTTP layer may hand values with surrounding whitespace; trimming makes them equal.
    auth(with_headers(v, content_type="  text/plain;   charset=utf-8  "))


def test_header_auth_non_ascii_header_values_either_wire_encoding() -> None:
    v = sign_header("PUT", key_url("k"), headers={"X-Amz-Meta-Name": "é"}, body=b"x")
    auth(v)  # botocore: sent as the Latin-1 byte, signed as UTF-8
    # A Go client sends (and signs) UTF-8 bytes, which a Latin-1 decoding HTTP layer shows as mojibake.
    auth(with_headers(v, x_amz_meta_name="é".encode().decode("latin-1")))


def test_header_auth_with_date_header_instead_of_x_amz_date() -> None:
    # botocore signs with Date (and sends no X-Amz-Date) when the request already has a Date header.
    v = sign_header("GET", key_url("k"), headers={"Date": "whatever"})
    assert "x-amz-date" not in v.headers
    # formatdate() without usegmt: "-0000", not "GMT".
    assert v.headers["date"] == "Fri, 14 Mar 2025 15:09:26 -0000"
    assert auth(v).amz_date == AMZ_DATE


def test_header_auth_bare_commas_and_extra_whitespace() -> None:
    v = sign_header("GET", key_url("k"))
    a = v.headers["authorization"]
    for variant in (
        a.replace(", ", ","),
        a.replace(", ", "  ,\t").replace("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA256   "),
    ):
        auth(with_headers(v, authorization=variant))


def test_header_auth_session_token() -> None:
    auth(sign_header("GET", key_url("k"), credentials=creds(token="session-token")))


def test_raw_path_fallback_for_clients_that_sign_what_they_send() -> None:
    # A client that sends "/bucket/a+b" unencoded and signs exactly that.
    v = RequestView("GET", "/bucket/a+b", "", {"host": "127.0.0.1:9000", "x-amz-date": AMZ_DATE})
    v = with_headers(v, x_amz_content_sha256=EMPTY_SHA256)
    assert canonical_uri(v.path) == "/bucket/a%2Bb"
    key = signing_key(SK, "20250314", "us-east-1")
    scope = "20250314/us-east-1/s3/aws4_request"
    creq = "\n".join(
        [
            "GET",
            "/bucket/a+b",
            "",
            f"host:127.0.0.1:9000\nx-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{AMZ_DATE}\n",
            "host;x-amz-content-sha256;x-amz-date",
            EMPTY_SHA256,
        ]
    )
    sts = f"AWS4-HMAC-SHA256\n{AMZ_DATE}\n{scope}\n{hashlib.sha256(creq.encode()).hexdigest()}"
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    signed = "host;x-amz-content-sha256;x-amz-date"
    a = f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={signed}, Signature={sig}"
    auth(with_headers(v, authorization=a))


def test_canonical_uri_and_query_rules() -> None:
    assert canonical_uri("") == "/"
    assert canonical_uri("/a%20b/%c3%a9") == "/a%20b/%C3%A9"
    assert canonical_uri("/a b+c") == "/a%20b%2Bc"
    assert canonical_uri("/%7Euser/x%2Dy") == "/~user/x-y"
    assert canonical_uri("/漢") == "/%E6%BC%A2"
    assert canonical_query("") == ""
    assert canonical_query("uploads") == "uploads="
    assert canonical_query("delete=") == "delete="
    assert canonical_query("b=2&a=2&a=1&c") == "a=1&a=2&b=2&c="
    assert canonical_query("p=a+b&q=x/y%2fz&r=%7E") == "p=a%2Bb&q=x%2Fy%2Fz&r=~"
    assert canonical_query("X-Amz-Signature=abc&x=1", presigned=True) == "x=1"
    assert canonical_query("X-Amz-Signature=abc&x=1") == "X-Amz-Signature=abc&x=1"


# --------------------------------------------------------------------------- header auth failures


def test_tampering_is_detected() -> None:
    v = sign_header("PUT", key_url("dir/k"), headers={"X-Amz-Meta-A": "1"}, body=b"data")
    auth(v)
    sig = v.headers["authorization"][-64:]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    cases = [
        with_headers(v, authorization=v.headers["authorization"][:-64] + flipped),
        dataclasses.replace(v, path="/bucket/dir/K"),
        dataclasses.replace(v, query="acl"),
        dataclasses.replace(v, method="POST"),
        with_headers(v, x_amz_meta_a="2"),
        with_headers(v, host="127.0.0.1:9001"),
        with_headers(v, x_amz_content_sha256=hashlib.sha256(b"other").hexdigest()),
    ]
    for case in cases:
        err = expect("SignatureDoesNotMatch", 403, auth, case)
        assert err.extra["AWSAccessKeyId"] == AK
        assert "CanonicalRequest" in err.extra and SK not in str(err.extra)
    # Headers that were not signed may change freely (they are not covered).
    auth(with_headers(v, user_agent="curl/8", x_amz_meta_unsigned="x"))


def test_unknown_access_key() -> None:
    v = sign_header("GET", key_url("k"), credentials=Credentials("AKIDUNKNOWN", SK))
    err = expect("InvalidAccessKeyId", 403, lambda: auth(v))
    assert err.extra == {"AWSAccessKeyId": "AKIDUNKNOWN"}


def test_wrong_secret() -> None:
    v = sign_header("GET", key_url("k"), credentials=Credentials(AK, "not-the-secret"))
    expect("SignatureDoesNotMatch", 403, lambda: auth(v))


def test_clock_skew() -> None:
    v = sign_header("GET", key_url("k"))
    auth(v, now_s=NOW + 899)
    auth(v, now_s=NOW - 899)
    err = expect("RequestTimeTooSkewed", 403, lambda: auth(v, now_s=NOW + 901))
    assert err.extra["MaxAllowedSkewMilliseconds"] == "900000"
    assert err.extra["RequestTime"] == AMZ_DATE
    expect("RequestTimeTooSkewed", 403, lambda: auth(v, now_s=NOW - 3600))
    auth(v, now_s=NOW + 3000, max_skew_s=3600)


def test_missing_date() -> None:
    v = sign_header("GET", key_url("k"))
    expect("AccessDenied", 403, lambda: auth(with_headers(v, x_amz_date=None)))
    expect("AccessDenied", 403, lambda: auth(with_headers(v, x_amz_date="yesterday")))


def test_scope_date_must_match_request_date() -> None:
    v = sign_header("GET", key_url("k"))
    err = expect(
        "AuthorizationHeaderMalformed", 400, lambda: auth(with_headers(v, x_amz_date="20250315T000000Z"))
    )
    assert "Region" not in err.extra


def test_region_handling() -> None:
    # Signed for our region, or for us-east-1 (minio-go/s3cmd probes): verified with the signed region.
    auth(sign_header("GET", key_url("k"), region="eu-west-1"), region="eu-west-1")
    ctx = auth(sign_header("GET", key_url("k"), region="us-east-1"), region="eu-west-1")
    assert ctx.scope == "20250314/us-east-1/s3/aws4_request"
    # Any other region: AuthorizationHeaderMalformed naming ours, so clients retry with it.
    v = sign_header("GET", key_url("k"), region="ap-south-1")
    err = expect("AuthorizationHeaderMalformed", 400, lambda: auth(v, region="eu-west-1"))
    assert err.extra == {"Region": "eu-west-1"}
    err = expect("AuthorizationHeaderMalformed", 400, lambda: auth(v))
    assert err.extra == {"Region": "us-east-1"}


def test_wrong_service() -> None:
    v = sign_header("GET", key_url("k"), signer=SigV4Auth, service="execute-api")
    expect("AuthorizationHeaderMalformed", 400, lambda: auth(v))


def test_missing_content_sha256() -> None:
    # The generic SigV4 signer does not add x-amz-content-sha256; S3 requires it.
    v = sign_header("GET", key_url("k"), signer=SigV4Auth)
    err = expect("InvalidRequest", 400, lambda: auth(v))
    assert "x-amz-content-sha256" in err.message


def test_bad_content_sha256_values() -> None:
    v = sign_header("GET", key_url("k"))
    expect("InvalidArgument", 400, lambda: auth(with_headers(v, x_amz_content_sha256="abc")))
    sigv4a = "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"
    expect("NotImplemented", 501, lambda: auth(with_headers(v, x_amz_content_sha256=sigv4a)))


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256Credential=x",
        "AWS4-HMAC-SHA256 Credential=AKIDDFSTEST/20250314/us-east-1/s3/aws4_request, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDDFSTEST/20250314/us-east-1/s3/aws4_request, SignedHeaders=host, "
        "Signature=xyz",
        "AWS4-HMAC-SHA256 Credential=AKIDDFSTEST/20250314/us-east-1/s3, SignedHeaders=host, Signature="
        + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDDFSTEST/2025031/us-east-1/s3/aws4_request, SignedHeaders=host, "
        "Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDDFSTEST/20250314/us-east-1/s3/aws5_request, SignedHeaders=host, "
        "Signature=" + "0" * 64,
        # host must be signed
        "AWS4-HMAC-SHA256 Credential=AKIDDFSTEST/20250314/us-east-1/s3/aws4_request, "
        "SignedHeaders=x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64,
        # duplicated component
        "AWS4-HMAC-SHA256 Credential=AKIDDFSTEST/20250314/us-east-1/s3/aws4_request, SignedHeaders=host, "
        "SignedHeaders=host, Signature=" + "0" * 64,
    ],
)
def test_malformed_authorization(authorization: str) -> None:
    v = with_headers(sign_header("GET", key_url("k")), authorization=authorization)
    expect("AuthorizationHeaderMalformed", 400, lambda: auth(v))


def test_other_authorization_schemes() -> None:
    v = sign_header("GET", key_url("k"))
    expect("InvalidRequest", 400, lambda: auth(with_headers(v, authorization="AWS AKIDDFSTEST:c2lnbmF0dXJl")))
    expect("InvalidArgument", 400, lambda: auth(with_headers(v, authorization="Bearer xyz")))
    expect(
        "NotImplemented",
        501,
        lambda: auth(with_headers(v, authorization="AWS4-ECDSA-P256-SHA256 Credential=x")),
    )


def test_anonymous_is_refused() -> None:
    err = expect("AccessDenied", 403, lambda: auth(RequestView("GET", "/bucket/k", "", {"host": "h"})))
    assert err.message == "anonymous access is not allowed"
    expect(
        "AccessDenied",
        403,
        lambda: auth(RequestView("GET", "/", "list-type=2", {"host": "h", "authorization": ""})),
    )


def test_two_auth_mechanisms_are_refused() -> None:
    v = sign_header("GET", key_url("k"))
    p = sign_presigned(key_url("k"))
    both = dataclasses.replace(p, headers={**p.headers, "authorization": v.headers["authorization"]})
    expect("InvalidArgument", 400, lambda: auth(both))


# --------------------------------------------------------------------------- presigned SigV4


@pytest.mark.parametrize("key", KEYS)
def test_presigned_v4_from_boto3(key: str) -> None:
    c = client(signature_version="s3v4")
    url = c.generate_presigned_url(
        "get_object",
        Params={"Bucket": "bucket", "Key": key, "ResponseContentDisposition": 'attachment; filename="é.txt"'},
        ExpiresIn=600,
    )
    assert "X-Amz-Signature=" in url
    ctx = auth(view_of_url(url))
    assert (ctx.method, ctx.payload, ctx.amz_date) == ("v4-presigned", UNSIGNED_PAYLOAD, AMZ_DATE)
    assert ctx.seed_signature == dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]


def test_presigned_v4_put_with_signed_content_type() -> None:
    c = client(signature_version="s3v4")
    url = c.generate_presigned_url(
        "put_object", Params={"Bucket": "bucket", "Key": "k", "ContentType": "text/plain"}
    )
    assert "content-type%3Bhost" in url
    auth(view_of_url(url, "PUT", {"content-type": "text/plain"}))
    expect("SignatureDoesNotMatch", 403, lambda: auth(view_of_url(url, "PUT", {"content-type": "text/html"})))
    expect(
        "SignatureDoesNotMatch", 403, lambda: auth(view_of_url(url, "GET", {"content-type": "text/plain"}))
    )


def test_presigned_v4_with_security_token_and_extra_params() -> None:
    req = AWSRequest(method="GET", url=key_url("a b/é") + "?versionId=v%2B1&x-id=GetObject")
    S3SigV4QueryAuth(creds(token="tok/en+"), "s3", "us-east-1", expires=60).add_auth(req)
    v = view(req)
    assert "X-Amz-Security-Token=tok%2Fen%2B" in v.query
    auth(v)


def test_presigned_v4_expiry() -> None:
    v = sign_presigned(key_url("k"), expires=60)
    auth(v, now_s=NOW + 60)
    err = expect("AccessDenied", 403, lambda: auth(v, now_s=NOW + 61))
    assert err.message == "Request has expired"
    err = expect("AccessDenied", 403, lambda: auth(v, now_s=NOW - 3600))
    assert err.message == "Request is not valid yet"
    # A week is the limit.
    auth(sign_presigned(key_url("k"), expires=604800), now_s=NOW + 604800)
    expect(
        "AuthorizationQueryParametersError", 400, lambda: auth(sign_presigned(key_url("k"), expires=604801))
    )


def test_presigned_v4_tampering() -> None:
    v = sign_presigned(key_url("k"))
    auth(v)
    sig = dict(parse_qsl(v.query))["X-Amz-Signature"]
    cases = [
        dataclasses.replace(v, query=v.query.replace(sig, sig[::-1])),
        dataclasses.replace(v, path="/bucket/K"),
        dataclasses.replace(v, query=v.query + "&acl"),
        dataclasses.replace(v, query=v.query.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200")),
        dataclasses.replace(v, method="DELETE"),
        with_headers(v, host="evil.example"),
    ]
    for case in cases:
        expect("SignatureDoesNotMatch", 403, auth, case)


def test_presigned_v4_errors() -> None:
    v = sign_presigned(key_url("k"), region="ap-south-1")
    err = expect("AuthorizationQueryParametersError", 400, lambda: auth(v, region="eu-west-1"))
    assert err.extra == {"Region": "eu-west-1"}
    auth(sign_presigned(key_url("k"), region="eu-west-1"), region="eu-west-1")

    good = sign_presigned(key_url("k"))
    unknown = dataclasses.replace(good, query=good.query.replace(f"Credential={AK}", "Credential=NOPE"))
    expect("InvalidAccessKeyId", 403, lambda: auth(unknown))
    no_sig = dataclasses.replace(
        good, query="&".join(p for p in good.query.split("&") if "Signature" not in p)
    )
    expect("AuthorizationQueryParametersError", 400, lambda: auth(no_sig))
    bad_alg = dataclasses.replace(good, query=good.query.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"))
    expect("AuthorizationQueryParametersError", 400, lambda: auth(bad_alg))
    bad_date = dataclasses.replace(good, query=good.query.replace(AMZ_DATE, "2025-03-14"))
    expect("AuthorizationQueryParametersError", 400, lambda: auth(bad_date))
    other_day = dataclasses.replace(good, query=good.query.replace(AMZ_DATE, "20250315T150926Z"))
    expect("AuthorizationQueryParametersError", 400, lambda: auth(other_day, now_s=NOW + 86400))
    twice = dataclasses.replace(good, query=good.query + "&X-Amz-Date=" + AMZ_DATE)
    expect("AuthorizationQueryParametersError", 400, lambda: auth(twice))


# --------------------------------------------------------------------------- presigned SigV2


def v2_expires(url: str) -> int:
    return int(dict(parse_qsl(urlsplit(url).query))["Expires"])


def test_boto3_default_presign_with_custom_endpoint_is_sigv2() -> None:
    # The trap from the research notes: no signature_version + endpoint_url gives a SigV2 URL.
    c = client()
    for key in KEYS:
        url = c.generate_presigned_url("get_object", Params={"Bucket": "bucket", "Key": key}, ExpiresIn=300)
        assert "AWSAccessKeyId=" in url and "X-Amz-Signature" not in url
        expires = v2_expires(url)
        ctx = auth(view_of_url(url), now_s=expires - 300)
        assert ctx == AuthContext(AK, "v2-presigned", UNSIGNED_PAYLOAD, "", "", b"", ctx.seed_signature)
        auth(view_of_url(url), now_s=expires)
        # The method is signed: a GET URL is not a HEAD URL.
        expect("SignatureDoesNotMatch", 403, auth, view_of_url(url, "HEAD"), now_s=expires - 300)
        head = c.generate_presigned_url("head_object", Params={"Bucket": "bucket", "Key": key})
        auth(view_of_url(head, "HEAD"), now_s=v2_expires(head))
        err = expect("AccessDenied", 403, auth, view_of_url(url), now_s=expires + 1)
        assert err.message == "Request has expired"


def test_presigned_v2_subresources_and_token() -> None:
    s = boto3.session.Session()
    c = s.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        aws_session_token="TOKEN/+=",
        region_name="us-east-1",
    )
    url = c.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": "bucket",
            "Key": "a b/é",
            "ResponseContentType": "text/plain; charset=utf-8",
            "ResponseContentDisposition": "attachment",
            "VersionId": "v+1",
        },
    )
    assert "x-amz-security-token=" in url and "response-content-type=" in url
    v = view_of_url(url)
    auth(v, now_s=v2_expires(url) - 10)
    # Sub-resources are signed: changing one fails.
    bad = dataclasses.replace(v, query=v.query.replace("versionId=v%2B1", "versionId=v2"))
    expect("SignatureDoesNotMatch", 403, lambda: auth(bad, now_s=v2_expires(url) - 10))


def test_presigned_v2_virtual_host() -> None:
    req = AWSRequest(method="GET", url="http://bucket.s3.test:9000/dir/k%20x", auth_path="/bucket/dir/k%20x")
    HmacV1QueryAuth(creds(), expires=120).add_auth(req)
    v = view(req)
    assert req.url is not None
    expires = v2_expires(req.url)
    auth(v, now_s=expires - 120, vhost_bucket="bucket")
    expect("SignatureDoesNotMatch", 403, lambda: auth(v, now_s=expires - 120))


def test_presigned_v2_failures() -> None:
    url = client().generate_presigned_url("get_object", Params={"Bucket": "bucket", "Key": "k"})
    now = v2_expires(url) - 10
    v = view_of_url(url)
    sig = dict(parse_qsl(v.query))["Signature"]
    tampered = dataclasses.replace(v, query=v.query.replace(quote(sig, safe=""), quote(sig[::-1], safe="")))
    expect("SignatureDoesNotMatch", 403, lambda: auth(tampered, now_s=now))
    expect("SignatureDoesNotMatch", 403, lambda: auth(dataclasses.replace(v, path="/bucket/K"), now_s=now))
    # x-amz-* headers are part of the v2 string to sign.
    expect("SignatureDoesNotMatch", 403, lambda: auth(with_headers(v, x_amz_meta_a="1"), now_s=now))
    unknown = dataclasses.replace(v, query=v.query.replace(f"AWSAccessKeyId={AK}", "AWSAccessKeyId=NOPE"))
    expect("InvalidAccessKeyId", 403, lambda: auth(unknown, now_s=now))
    # No payload hash in a v2 URL: refuse methods with a body.
    expect("AccessDenied", 403, lambda: auth(dataclasses.replace(v, method="PUT"), now_s=now))
    partial = dataclasses.replace(
        v, query="&".join(p for p in v.query.split("&") if not p.startswith("Expires"))
    )
    expect("AccessDenied", 403, lambda: auth(partial, now_s=now))


# --------------------------------------------------------------------------- aws-chunked bodies

SCOPE = "20250314/us-east-1/s3/aws4_request"
KEY = signing_key(SK, "20250314", "us-east-1")
SEED = "1" * 64


def ctx_for(payload: str) -> AuthContext:
    return AuthContext(AK, "v4-header", payload, AMZ_DATE, SCOPE, KEY, SEED)


def _sig(sts: str) -> str:
    # Independent of dfs.core.sigv4: the string-to-sign layouts straight from the AWS documentation.
    return hmac.new(KEY, sts.encode(), hashlib.sha256).hexdigest()


def signed_chunked(
    chunks: list[bytes],
    trailers: list[tuple[str, str]] | None = None,
    *,
    style: str = "aws",
) -> bytes:
    """A STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER] body.

    style "aws": the documentation's layout (CRLF everywhere).  style "minio":
    minio-go's, whose trailer lines end in a bare LF and whose signature line
    follows a blank CRLF line.
    """
    prev = SEED
    out = bytearray()
    for data in [*chunks, b""]:
        prev = _sig(
            "\n".join(
                [
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    AMZ_DATE,
                    SCOPE,
                    prev,
                    EMPTY_SHA256,
                    hashlib.sha256(data).hexdigest(),
                ]
            )
        )
        out += b"%x;chunk-signature=%s\r\n" % (len(data), prev.encode())
        if data:
            out += data + b"\r\n"
    if trailers is None:
        return bytes(out + b"\r\n")
    canon = "".join(f"{n}:{v}\n" for n, v in trailers)
    tsig = _sig(
        "\n".join(
            ["AWS4-HMAC-SHA256-TRAILER", AMZ_DATE, SCOPE, prev, hashlib.sha256(canon.encode()).hexdigest()]
        )
    )
    if style == "minio":
        return bytes(out + canon.encode() + b"\r\nx-amz-trailer-signature:" + tsig.encode() + b"\r\n\r\n")
    lines = "".join(f"{n}:{v}\r\n" for n, v in trailers)
    return bytes(out + f"{lines}x-amz-trailer-signature:{tsig}\r\n\r\n".encode())


def unsigned_chunked(chunks: list[bytes], trailers: list[tuple[str, str]], *, style: str = "aws") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n"
    if style == "minio":
        # minio-go: "name:value\n" lines, then "\r\n\r\n".
        return out + "".join(f"{n}:{v}\n" for n, v in trailers).encode() + b"\r\n\r\n"
    return out + "".join(f"{n}:{v}\r\n" for n, v in trailers).encode() + b"\r\n"


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


PAYLOAD = b"The quick brown fox jumps over the lazy dog. " * 50
PIECES = [PAYLOAD[:1000], PAYLOAD[1000:1001], PAYLOAD[1001:]]
TRAILER = [("x-amz-checksum-crc32", crc32_b64(PAYLOAD))]

BODIES: dict[str, tuple[str, bytes, dict[str, str]]] = {
    "aws-example": (STREAMING_PAYLOAD, DOC_CHUNKED_BODY, {}),
    "signed": (STREAMING_PAYLOAD, signed_chunked(PIECES), {}),
    "signed-trailer": (STREAMING_PAYLOAD_TRAILER, signed_chunked(PIECES, TRAILER), dict(TRAILER)),
    "signed-trailer-minio": (
        STREAMING_PAYLOAD_TRAILER,
        signed_chunked(PIECES, TRAILER, style="minio"),
        dict(TRAILER),
    ),
    "unsigned-trailer": (STREAMING_UNSIGNED_TRAILER, unsigned_chunked(PIECES, TRAILER), dict(TRAILER)),
    "unsigned-trailer-minio": (
        STREAMING_UNSIGNED_TRAILER,
        unsigned_chunked(PIECES, TRAILER, style="minio"),
        dict(TRAILER),
    ),
}


def body_ctx(name: str) -> AuthContext:
    if name == "aws-example":
        return doc_auth(doc_chunked_request())
    return ctx_for(BODIES[name][0])


def decode(ctx: AuthContext, pieces: list[bytes], **kw: int) -> tuple[bytes, dict[str, str], int]:
    dec = ChunkedDecoder(ctx, **kw)
    out = b"".join(dec.feed(p) for p in pieces)
    return out, dec.finish(), dec.decoded_bytes


def splits(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:], strict=False):
        yield data[a:b]


@pytest.mark.parametrize("name", sorted(BODIES))
def test_chunked_bodies_decode(name: str) -> None:
    _, body, trailers = BODIES[name]
    out, got, n = decode(body_ctx(name), [body])
    expected = b"a" * 66560 if name == "aws-example" else PAYLOAD
    assert (out, got, n) == (expected, trailers, len(expected))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(BODIES)), cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_chunked_any_split_points(name: str, cuts: list[int]) -> None:
    _, body, trailers = BODIES[name]
    out, got, _ = decode(body_ctx(name), list(splits(body, cuts)))
    assert out == (b"a" * 66560 if name == "aws-example" else PAYLOAD)
    assert got == trailers


def test_chunked_byte_by_byte() -> None:
    _, body, trailers = BODIES["signed-trailer"]
    out, got, _ = decode(ctx_for(STREAMING_PAYLOAD_TRAILER), [body[i : i + 1] for i in range(len(body))])
    assert (out, got) == (PAYLOAD, trailers)


def test_boto3_unsigned_trailer_example() -> None:
    body = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    ctx = ctx_for(STREAMING_UNSIGNED_TRAILER)
    out, trailers, n = decode(ctx, [body])
    assert (out, trailers, n) == (b"hello world", {"x-amz-checksum-crc32": "DUoRhQ=="}, 11)
    headers = {"x-amz-trailer": "x-amz-checksum-crc32", "x-amz-decoded-content-length": "11"}
    checks = BodyChecks(headers, ctx)
    checks.update(out)
    checks.finish(trailers)
    assert checks.checksum == ("CRC32", "DUoRhQ==")


def test_chunked_endings_without_trailers() -> None:
    for ending in (b"0\r\n\r\n", b"0\r\n"):
        assert decode(ctx_for(STREAMING_UNSIGNED_TRAILER), [b"3\r\nabc\r\n" + ending]) == (b"abc", {}, 3)
    # The signed final chunk line alone (no closing CRLF) is complete too.
    body = signed_chunked([b"abc"])
    assert body.endswith(b"\r\n\r\n")
    assert decode(ctx_for(STREAMING_PAYLOAD), [body[:-2]])[0] == b"abc"


def test_signed_chunk_bytes_are_held_until_verified() -> None:
    body = signed_chunked([b"hello", b"world"])
    dec = ChunkedDecoder(ctx_for(STREAMING_PAYLOAD))
    first_end = body.index(b"hello") + 5
    assert dec.feed(body[:first_end]) == b""
    assert dec.decoded_bytes == 0
    assert dec.feed(body[first_end : first_end + 2]) == b"hello"
    assert dec.decoded_bytes == 5
    # Unsigned mode streams bytes as they arrive.
    udec = ChunkedDecoder(ctx_for(STREAMING_UNSIGNED_TRAILER))
    assert udec.feed(b"a;chunk-signature=ignored\r\nhello") == b"hello"


SMALL_TRAILER = [("x-amz-checksum-crc32", crc32_b64(b"abcde"))]
SMALL_BODIES = {
    "signed": (STREAMING_PAYLOAD, signed_chunked([b"abc", b"de"])),
    "signed-trailer": (STREAMING_PAYLOAD_TRAILER, signed_chunked([b"abc", b"de"], SMALL_TRAILER)),
    "signed-trailer-minio": (
        STREAMING_PAYLOAD_TRAILER,
        signed_chunked([b"abc", b"de"], SMALL_TRAILER, style="minio"),
    ),
    "unsigned-trailer": (STREAMING_UNSIGNED_TRAILER, unsigned_chunked([b"abc", b"de"], SMALL_TRAILER)),
}


@pytest.mark.parametrize("name", sorted(SMALL_BODIES))
def test_chunked_every_truncation_fails(name: str) -> None:
    mode, body = SMALL_BODIES[name]
    accepted = []
    codes = set()
    for cut in range(len(body)):
        dec = ChunkedDecoder(ctx_for(mode))
        try:
            dec.feed(body[:cut])
            dec.finish()
        except S3Error as e:
            codes.add(e.s3_code)
        else:
            accepted.append(cut)
    assert codes == {"IncompleteBody"}
    if mode == STREAMING_UNSIGNED_TRAILER:
        # Unsigned: an empty body, or a body cut after the final chunk (BodyChecks then
        # reports the checksum trailer named by x-amz-trailer as missing), or the closing
        # blank line missing.
        assert accepted == [0, body.index(b"0\r\n") + 3, len(body) - 2]
    else:
        # Signed: only the closing blank line may be missing.
        assert accepted == [len(body) - 2]


def test_chunked_bad_signatures() -> None:
    body = signed_chunked([b"abc", b"def"])
    ctx = ctx_for(STREAMING_PAYLOAD)
    expect("SignatureDoesNotMatch", 403, lambda: decode(ctx, [body.replace(b"abc", b"abd")]))
    # Chunks swapped: each signature chains from the previous one.
    line1, data1, line2, data2, rest = body.split(b"\r\n", 4)
    swapped = b"\r\n".join([line2, data2, line1, data1, rest])
    expect("SignatureDoesNotMatch", 403, lambda: decode(ctx, [swapped]))
    # A chunk without a signature in a signed mode.
    expect("SignatureDoesNotMatch", 403, lambda: decode(ctx, [b"3\r\nabc\r\n"]))
    # The final chunk's signature is checked as well (it proves nothing was cut off).
    last = body.rindex(b"chunk-signature=") + len(b"chunk-signature=")
    expect("SignatureDoesNotMatch", 403, lambda: decode(ctx, [body[:last] + b"0" * 64 + b"\r\n\r\n"]))


def test_chunked_bad_trailer_signatures() -> None:
    ctx = ctx_for(STREAMING_PAYLOAD_TRAILER)
    body = signed_chunked([b"abc"], [("x-amz-checksum-crc32", crc32_b64(b"abc"))])
    decode(ctx, [body])
    forged = body.replace(crc32_b64(b"abc").encode(), crc32_b64(b"abd").encode())
    expect("SignatureDoesNotMatch", 403, lambda: decode(ctx, [forged]))
    unsigned = body[: body.index(b"x-amz-trailer-signature")] + b"\r\n"
    expect("IncompleteBody", 400, lambda: decode(ctx, [unsigned]))
    extra = body[:-2] + b"x-amz-checksum-sha1:AAAA\r\n\r\n"
    expect("InvalidRequest", 400, lambda: decode(ctx, [extra]))


def test_chunked_framing_errors() -> None:
    u = ctx_for(STREAMING_UNSIGNED_TRAILER)
    expect("IncompleteBody", 400, lambda: decode(u, [b"3\r\nabcd\r\n0\r\n\r\n"]))  # data longer than size
    expect("IncompleteBody", 400, lambda: decode(u, [b"xyz\r\n"]))
    expect("IncompleteBody", 400, lambda: decode(u, [b"\r\n"]))
    expect("IncompleteBody", 400, lambda: decode(u, [b"-1\r\n"]))
    expect("IncompleteBody", 400, lambda: decode(u, [b"3\r\nab"]))
    expect("InvalidRequest", 400, lambda: decode(u, [b"0\r\nno-colon-here\r\n\r\n"]))
    expect("InvalidRequest", 400, lambda: decode(u, [b"0\r\nx-amz-a:1\r\nx-amz-a:2\r\n\r\n"]))
    # Trailers are not part of the plain signed mode.
    s = ctx_for(STREAMING_PAYLOAD)
    body = signed_chunked([b"abc"])
    expect("InvalidRequest", 400, lambda: decode(s, [body[:-2] + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n"]))
    with pytest.raises(ValueError, match="aws-chunked"):
        ChunkedDecoder(ctx_for(UNSIGNED_PAYLOAD))


def test_chunked_limits() -> None:
    u = ctx_for(STREAMING_UNSIGNED_TRAILER)
    dec = ChunkedDecoder(u, max_chunk_bytes=1024)
    expect("InvalidRequest", 400, lambda: dec.feed(b"401\r\n"))
    assert decode(u, [b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n"], max_chunk_bytes=1024)[2] == 1024
    # A chunk-size line without its end, fed in small pieces, stops at 4 KiB.
    dec = ChunkedDecoder(u)
    with pytest.raises(S3Error) as ei:
        for _ in range(100):
            dec.feed(b"0" * 100)
    assert ei.value.s3_code == "InvalidRequest"
    expect("InvalidRequest", 400, lambda: decode(u, [b"1" + b"0" * 16 + b"\r\n"]))  # > 2**64
    big_trailer = b"0\r\nx-amz-meta:" + b"v" * 20000 + b"\r\n\r\n"
    expect("InvalidRequest", 400, lambda: decode(u, [big_trailer]))
    many_lines = b"0\r\n" + b"x-amz-a:b\r\n" * 2000
    expect("InvalidRequest", 400, lambda: decode(u, [many_lines], max_trailer_bytes=16384))


def test_chunked_empty_bodies() -> None:
    # An empty unsigned-trailer body is an empty payload; a signed one must carry its final chunk.
    assert decode(ctx_for(STREAMING_UNSIGNED_TRAILER), []) == (b"", {}, 0)
    expect("IncompleteBody", 400, lambda: decode(ctx_for(STREAMING_PAYLOAD), []))
    assert decode(ctx_for(STREAMING_PAYLOAD), [signed_chunked([])]) == (b"", {}, 0)


# --------------------------------------------------------------------------- BodyChecks


def run_checks(
    headers: dict[str, str],
    body: bytes,
    ctx: AuthContext | None = None,
    trailers: dict[str, str] | None = None,
) -> BodyChecks:
    checks = BodyChecks(headers, ctx)
    for i in range(0, len(body), 7):
        checks.update(body[i : i + 7])
    checks.finish(trailers)
    return checks


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_body_md5_is_always_computed() -> None:
    checks = run_checks({}, b"hello world")
    assert checks.md5_hex == hashlib.md5(b"hello world").hexdigest()
    assert (checks.checksum, checks.length) == (None, 11)


def test_content_md5() -> None:
    good = b64(hashlib.md5(b"hello world").digest())
    run_checks({"content-md5": good}, b"hello world")
    err = expect("BadDigest", 400, lambda: run_checks({"content-md5": good}, b"hello world!"))
    assert err.extra["ExpectedDigest"] == good
    for bad in ("not base64", b64(b"x" * 15), b64(b"x" * 17), ""):
        expect("InvalidDigest", 400, BodyChecks, {"content-md5": bad}, None)


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_checksum_headers(algorithm: str) -> None:
    c = Checksum(algorithm)
    c.update(b"hello world")
    name = f"x-amz-checksum-{algorithm.lower()}"
    checks = run_checks({name: c.b64(), "x-amz-sdk-checksum-algorithm": algorithm.lower()}, b"hello world")
    assert checks.checksum == (algorithm, c.b64())
    err = expect("BadDigest", 400, lambda: run_checks({name: c.b64()}, b"hello worle"))
    assert algorithm in err.message
    # As a trailer.
    t = {"x-amz-trailer": name, "x-amz-content-sha256": STREAMING_UNSIGNED_TRAILER}
    assert run_checks(t, b"hello world", trailers={name: c.b64()}).checksum == (algorithm, c.b64())
    expect("BadDigest", 400, lambda: run_checks(t, b"hello worle", trailers={name: c.b64()}))
    expect("InvalidRequest", 400, lambda: run_checks(t, b"hello world", trailers={}))
    expect("InvalidRequest", 400, lambda: run_checks(t, b"hello world", trailers={name: "short"}))
    expect("InvalidRequest", 400, lambda: BodyChecks({name: "AAAA"}, None))


def test_checksum_header_conflicts() -> None:
    crc = crc32_b64(b"x")
    expect(
        "InvalidRequest",
        400,
        lambda: BodyChecks({"x-amz-checksum-crc32": crc, "x-amz-checksum-sha1": "x"}, None),
    )
    both = {"x-amz-checksum-crc32": crc, "x-amz-trailer": "x-amz-checksum-crc32c"}
    expect("InvalidRequest", 400, lambda: BodyChecks(both, None))
    expect("InvalidRequest", 400, lambda: BodyChecks({"x-amz-trailer": "x-amz-meta-foo"}, None))
    mismatch = {"x-amz-checksum-crc32": crc, "x-amz-sdk-checksum-algorithm": "SHA256"}
    expect("InvalidRequest", 400, lambda: BodyChecks(mismatch, None))
    expect("InvalidRequest", 400, lambda: BodyChecks({"x-amz-sdk-checksum-algorithm": "CRC32"}, None))
    expect("InvalidRequest", 400, lambda: BodyChecks({"x-amz-sdk-checksum-algorithm": "MD4"}, None))
    # Same-prefix headers that carry no value are not checksums.
    others = {
        "x-amz-checksum-type": "FULL_OBJECT",
        "x-amz-checksum-algorithm": "CRC32",
        "x-amz-checksum-mode": "x",
    }
    assert run_checks(others, b"x").checksum is None


def test_content_sha256() -> None:
    digest = hashlib.sha256(b"hello world").hexdigest()
    ctx = dataclasses.replace(ctx_for(STREAMING_PAYLOAD), payload=digest)
    run_checks({}, b"hello world", ctx)
    run_checks({}, b"hello world", dataclasses.replace(ctx, payload=digest.upper()))
    err = expect("XAmzContentSHA256Mismatch", 400, lambda: run_checks({}, b"hello", ctx))
    assert err.extra["ClientComputedContentSHA256"] == digest
    # Without a context (not authenticated by us), the header is still checked.
    expect("XAmzContentSHA256Mismatch", 400, lambda: run_checks({"x-amz-content-sha256": digest}, b"x"))
    run_checks({"x-amz-content-sha256": UNSIGNED_PAYLOAD}, b"anything")


def test_decoded_content_length() -> None:
    ctx = ctx_for(STREAMING_UNSIGNED_TRAILER)
    run_checks({"x-amz-decoded-content-length": "11"}, b"hello world", ctx)
    expect(
        "IncompleteBody", 400, lambda: run_checks({"x-amz-decoded-content-length": "12"}, b"hello world", ctx)
    )
    checks = BodyChecks({"x-amz-decoded-content-length": "5"}, ctx)
    checks.update(b"hello")
    expect("IncompleteBody", 400, lambda: checks.update(b"!"))
    expect("InvalidArgument", 400, lambda: BodyChecks({"x-amz-decoded-content-length": "-1"}, ctx))
    # Only meaningful for aws-chunked bodies.
    run_checks({"x-amz-decoded-content-length": "99"}, b"x", ctx_for(UNSIGNED_PAYLOAD))


def test_signing_key_matches_aws_example() -> None:
    # From the AWS SigV4 documentation ("Examples of how to derive a signing key").
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_auth_context_repr_hides_the_key() -> None:
    assert KEY.hex() not in repr(ctx_for(STREAMING_PAYLOAD))
    assert str(KEY) not in repr(ctx_for(STREAMING_PAYLOAD))


def test_now_is_only_an_argument() -> None:
    # Purity: the same request verifies at its own time whatever the wall clock says.
    v = sign_header("GET", key_url("k"))
    assert abs(time.time() - NOW) > 900
    auth(v, now_s=NOW)
