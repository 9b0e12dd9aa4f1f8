"""The S3 endpoint on the wire: hand-made requests, streaming signatures and bad input.

Requests are signed with botocore's own SigV4 signer, then sent over raw
sockets, so each test controls exactly which bytes reach the daemon.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import time
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import Daemon

EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def signed_headers(
    daemon: Daemon, method: str, path: str, headers: dict[str, str], payload_hash: str, body: bytes = b""
) -> dict[str, str]:
    ak, sk = daemon.root_key()
    req = AWSRequest(method=method, url=daemon.s3_endpoint + path, data=body, headers=dict(headers))

    class Signer(S3SigV4Auth):
        def payload(self, request: Any, chunk_size: int = 1024 * 1024) -> str:
            return payload_hash  # what this test wants declared, not what botocore would pick

    Signer(Credentials(ak, sk), "s3", "us-east-1").add_auth(req)
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in req.headers.items()}


def request(
    daemon: Daemon, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    h = signed_headers(daemon, method, path, headers or {}, hashlib.sha256(body).hexdigest(), body)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.s3_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(daemon: Daemon, data: bytes, *, read_timeout_s: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", daemon.s3_port), timeout=read_timeout_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"</Error>" in out:
                    break
        except TimeoutError:
            pass
        return out


def chunk_signature(key: bytes, amz_date: str, scope: str, previous: str, data: bytes) -> str:
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY_SHA, hashlib.sha256(data).hexdigest()]
    )
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def signed_streaming_put(
    daemon: Daemon, path: str, data: bytes, *, tamper: bool = False
) -> tuple[int, bytes]:
    """A PUT as minio-go (restic) sends it over plain HTTP: STREAMING-AWS4-HMAC-SHA256-PAYLOAD."""
    from dfs.sigv4 import signing_key

    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)] + [b""]
    framed_len = sum(len(f"{len(p):x};chunk-signature=") + 64 + 2 + len(p) + 2 for p in pieces)
    headers = signed_headers(
        daemon,
        "PUT",
        path,
        {
            "x-amz-decoded-content-length": str(len(data)),
            "content-length": str(framed_len),
        },
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    )
    auth = headers["Authorization"]
    seed = auth.rsplit("Signature=", 1)[1]
    amz_date = headers["X-Amz-Date"]
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/", 1)[1]
    _, sk = daemon.root_key()
    key = signing_key(sk, amz_date[:8], "us-east-1")
    body = b""
    previous = seed
    for p in pieces:
        sig = chunk_signature(key, amz_date, scope, previous, p)
        previous = sig
        if tamper and p:
            p = b"X" + p[1:]
        body += f"{len(p):x};chunk-signature={sig}\r\n".encode() + p + b"\r\n"
    assert len(body) == framed_len
    conn = http.client.HTTPConnection("127.0.0.1", daemon.s3_port, timeout=30)
    try:
        conn.request("PUT", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_signed_streaming_upload(s3d: Daemon, s3: Any) -> None:
    s3.create_bucket(Bucket="wire-stream")
    data = bytes(range(256)) * 1000
    status, body = signed_streaming_put(s3d, "/wire-stream/chunked", data)
    assert status == 200, body
    assert s3.get_object(Bucket="wire-stream", Key="chunked")["Body"].read() == data
    status, body = signed_streaming_put(s3d, "/wire-stream/tampered", data, tamper=True)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, _, _ = request(s3d, "HEAD", "/wire-stream/tampered")
    assert status == 404  # nothing half-written


def test_malformed_xml_bodies(s3d: Daemon, s3: Any) -> None:
    s3.create_bucket(Bucket="wire-xml")
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b"<Delete><Object><Key>&b;</Key></Object></Delete>"
    )
    for body in (b"<Delete><Object><Key>x</Key>", bomb, b"not xml at all"):
        status, _, out = request(s3d, "POST", "/wire-xml?delete", body)
        assert status == 400 and b"<Code>MalformedXML</Code>" in out, out
    uid = s3.create_multipart_upload(Bucket="wire-xml", Key="mp")["UploadId"]
    status, _, out = request(s3d, "POST", f"/wire-xml/mp?uploadId={uid}", b"<CompleteMultipartUpload><Part>")
    assert status == 400 and b"MalformedXML" in out
    s3.abort_multipart_upload(Bucket="wire-xml", Key="mp", UploadId=uid)


def test_error_document_shape(s3d: Daemon, s3: Any) -> None:
    status, headers, out = request(s3d, "GET", "/no-such-bucket-here/key")
    assert status == 404
    assert out.startswith(b"<?xml") and b"<Code>NoSuchBucket</Code>" in out
    assert f"<RequestId>{headers['x-amz-request-id']}</RequestId>".encode() in out
    assert headers["content-type"] == "application/xml"
    assert headers["date"].endswith(" GMT")
    status, headers, out = request(s3d, "HEAD", "/no-such-bucket-here/key")
    assert status == 404 and out == b""
    status, _, out = request(s3d, "GET", "/")
    assert status == 200 and b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' in out


def test_truncated_body_writes_nothing(s3d: Daemon, s3: Any) -> None:
    s3.create_bucket(Bucket="wire-trunc")
    body = b"z" * 100_000
    headers = signed_headers(s3d, "PUT", "/wire-trunc/partial", {}, "UNSIGNED-PAYLOAD")
    head = f"PUT /wire-trunc/partial HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
    with socket.create_connection(("127.0.0.1", s3d.s3_port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body[:50_000])
        sock.shutdown(socket.SHUT_WR)  # the client goes away mid-body
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    status, _, _ = request(s3d, "HEAD", "/wire-trunc/partial")
    assert status == 404
    s3.put_object(Bucket="wire-trunc", Key="after", Body=b"daemon still fine")


def test_expect_continue_rejected_before_body(s3d: Daemon) -> None:
    """A request that fails authentication gets its 403 without a 100 Continue."""
    head = (
        "PUT /anything/key HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n"
        "Expect: 100-continue\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIANOPE/20250101/us-east-1/s3/"
        "aws4_request, SignedHeaders=host, Signature=" + "0" * 64 + "\r\n"
        "x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nx-amz-date: "
        + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        + "\r\n\r\n"
    )
    out = raw(s3d, head.encode())
    assert out.startswith(b"HTTP/1.1 403"), out[:200]
    assert b"100 Continue" not in out
    assert b"InvalidAccessKeyId" in out


def test_bad_http_and_huge_headers(s3d: Daemon) -> None:
    assert raw(s3d, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw(s3d, huge).startswith(b"HTTP/1.1 431")
    # The daemon is unharmed.
    status, _, _ = request(s3d, "GET", "/")
    assert status == 200


def test_clock_skew_and_unsupported(s3d: Daemon) -> None:
    ak, sk = s3d.root_key()
    req = AWSRequest(method="GET", url=s3d.s3_endpoint + "/", headers={"x-amz-content-sha256": EMPTY_SHA})
    auth = S3SigV4Auth(Credentials(ak, sk), "s3", "us-east-1")
    auth._timestamp = "20000101T000000Z"  # type: ignore[attr-defined]
    import datetime
    from unittest import mock

    with mock.patch("botocore.auth.get_current_datetime", return_value=datetime.datetime(2001, 1, 1)):
        auth.add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", s3d.s3_port, timeout=10)
    conn.request("GET", "/", headers=dict(req.headers.items()))
    resp = conn.getresponse()
    assert resp.status == 403 and b"RequestTimeTooSkewed" in resp.read()
    conn.close()
    status, _, out = request(s3d, "PUT", "/wire-unsupported?website", b"")
    assert status in (404, 501)
