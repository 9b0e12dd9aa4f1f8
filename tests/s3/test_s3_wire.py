"""The S3 endpoint on the wire: hand-made requests, streaming signatures and bad input.

Requests are signed with botocore's own SigV4 signer, then sent over raw
sockets, so each test controls exactly which bytes reach the daemon.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import socket
import time
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import Daemon, http_call

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
    return http_call(daemon.s3_port, method, path, body, h)


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
    from dfs.core.sigv4 import signing_key

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


def put_then_hang_up(daemon: Daemon, path: str, declared: int, sent: bytes) -> None:
    """A signed PUT that declares ``declared`` body bytes, sends ``sent`` and goes away."""
    headers = signed_headers(daemon, "PUT", path, {"Content-Length": str(declared)}, "UNSIGNED-PAYLOAD")
    head = f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{daemon.s3_port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", daemon.s3_port), timeout=30) as sock:
        sock.sendall(head.encode() + sent)
        sock.shutdown(socket.SHUT_WR)  # the client goes away mid-body
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


def test_truncated_body_writes_nothing(s3d: Daemon, s3: Any) -> None:
    s3.create_bucket(Bucket="wire-trunc")
    put_then_hang_up(s3d, "/wire-trunc/partial", 100_000, b"z" * 50_000)
    status, _, _ = request(s3d, "HEAD", "/wire-trunc/partial")
    assert status == 404
    s3.put_object(Bucket="wire-trunc", Key="after", Body=b"daemon still fine")


def test_failed_big_upload_leaves_no_orphans_after_sweep(s3d: Daemon, s3: Any) -> None:
    """Blocks stored by an upload that never committed are swept, not leaked."""
    s3.create_bucket(Bucket="wire-orphans")
    size = 9 * 1024 * 1024
    put_then_hang_up(s3d, "/wire-orphans/big", size, os.urandom(size - 1024 * 1024))  # 2 blocks' worth
    status, _, _ = request(s3d, "HEAD", "/wire-orphans/big")
    assert status == 404
    # Whether the failed upload's blocks reached the store depends on timing (its block writes
    # are cancelled with it), so also store a block the way a writer that crashed before its
    # commit would have: durably, and never referenced.
    import trio

    from dfs.client.cluster import connect

    async def store_uncommitted() -> None:
        async with connect(s3d.address, credential=s3d.credential()) as client:
            await client.write_block(0, os.urandom(100_000))

    trio.run(store_uncommitted)
    orphans = s3d.fsck()["orphans"]
    assert orphans >= 1
    out = s3d.cli("gc", "--orphans", "--now").stdout
    assert f"swept {orphans} orphan chunk(s)" in out
    assert s3d.fsck()["problems"] == []


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


def test_virtual_hosted_style(s3d: Daemon, s3: Any) -> None:
    """BUCKET.<[s3] domain> addresses BUCKET; the key is the whole path."""
    s3.create_bucket(Bucket="vhost-bucket")
    host = f"vhost-bucket.s3.localhost:{s3d.s3_port}"
    ak, sk = s3d.root_key()
    for method, body in (("PUT", b"virtual"), ("GET", b"")):
        req = AWSRequest(method=method, url=f"http://{host}/dir/key", data=body)
        req.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        S3SigV4Auth(Credentials(ak, sk), "s3", "us-east-1").add_auth(req)
        conn = http.client.HTTPConnection("127.0.0.1", s3d.s3_port, timeout=10)
        conn.request(method, "/dir/key", body=body, headers={**dict(req.headers.items()), "Host": host})
        resp = conn.getresponse()
        out = resp.read()
        conn.close()
        assert resp.status == 200, out
    assert out == b"virtual"
    assert s3.get_object(Bucket="vhost-bucket", Key="dir/key")["Body"].read() == b"virtual"


def test_key_management_cli(s3d: Daemon, s3: Any) -> None:
    """dfs s3 key create/list/revoke: a new key works at once and stops working once revoked."""
    import json

    from botocore.exceptions import ClientError

    from tests.s3.conftest import make_client

    made = json.loads(s3d.cli("s3", "key", "create", "--description", "ci key", "--json").stdout)
    listed = json.loads(s3d.cli("s3", "key", "list", "--json").stdout)
    assert [k["description"] for k in listed if k["access_key"] == made["access_key"]] == ["ci key"]
    assert made["secret_key"] not in json.dumps(listed)
    client = make_client(s3d, keys=(made["access_key"], made["secret_key"]))
    client.list_buckets()
    s3d.cli("s3", "key", "revoke", made["access_key"])
    with pytest.raises(ClientError) as err:
        client.list_buckets()
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert made["secret_key"] not in (s3d.data_dir / "dfsd.log").read_text()


def test_oversized_upload_refused_before_its_body(s3d: Daemon, s3: Any) -> None:
    s3.create_bucket(Bucket="wire-huge")
    size = 6 * 1024**4  # over [s3] max_object_bytes (5 TiB)
    headers = signed_headers(
        s3d,
        "PUT",
        "/wire-huge/k",
        {"Content-Length": str(size), "Expect": "100-continue"},
        "UNSIGNED-PAYLOAD",
    )
    head = f"PUT /wire-huge/k HTTP/1.1\r\nHost: 127.0.0.1:{s3d.s3_port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    out = raw(s3d, head.encode())
    assert out.startswith(b"HTTP/1.1 400") and b"EntityTooLarge" in out, out[:300]
    assert b"100 Continue" not in out


def test_abandoned_uploads_expire(tmp_path: Any) -> None:
    from tests.conftest import free_port, wait_for
    from tests.s3.conftest import make_client

    d = Daemon(tmp_path / "var", free_port(), s3_conf="upload_expiry_s = 2.0")
    d.start()
    try:
        s3 = make_client(d)
        s3.create_bucket(Bucket="expiring")
        uid = s3.create_multipart_upload(Bucket="expiring", Key="k")["UploadId"]
        s3.upload_part(Bucket="expiring", Key="k", UploadId=uid, PartNumber=1, Body=os.urandom(100_000))
        assert s3.list_multipart_uploads(Bucket="expiring").get("Uploads")
        wait_for(
            lambda: not s3.list_multipart_uploads(Bucket="expiring").get("Uploads"),
            30,
            "the upload to expire",
        )
        d.assert_clean()
    finally:
        d.stop()


def test_empty_body_with_expect_continue_gets_its_100(s3d: Daemon, s3: Any) -> None:
    """An empty PUT sent with Expect: 100-continue is answered 100 first, then 200, as S3 does.

    Without the 100, botocore's early-response path misparses the next response on that
    keep-alive connection (the aws CLI then fails a multipart upload with KeyError 'ETag').
    """
    s3.create_bucket(Bucket="wire-empty")
    headers = signed_headers(
        s3d, "PUT", "/wire-empty/k", {"Content-Length": "0", "Expect": "100-continue"}, EMPTY_SHA
    )
    head = f"PUT /wire-empty/k HTTP/1.1\r\nHost: 127.0.0.1:{s3d.s3_port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", s3d.s3_port), timeout=10) as sock:
        sock.sendall(head.encode())
        out = b""
        while out.count(b"\r\n\r\n") < 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), out[:200]


def test_corrupt_chunk_fails_the_download_not_the_daemon(tmp_path: Any) -> None:
    """A chunk that fails its checksum mid-GET cuts the response short (never wrong bytes), and
    the daemon keeps serving, whether the client waits for the error or has gone away."""
    from tests.conftest import free_port
    from tests.s3.conftest import make_client

    d = Daemon(tmp_path / "var", free_port())
    d.start()
    try:
        s3 = make_client(d)
        s3.create_bucket(Bucket="rot")
        s3.put_object(Bucket="rot", Key="big", Body=os.urandom(13 * 1024 * 1024))
        s3.put_object(Bucket="rot", Key="first", Body=os.urandom(5 * 1024 * 1024))
        import trio

        from dfs.client.cluster import connect
        from dfs.core import codec
        from dfs.core.namespace import ROOT_INO

        async def chunk_path(key: str, index: int) -> Any:
            async with connect(d.address, credential=d.credential()) as client:
                attr = await client.resolve(ROOT_INO, [b"rot", key.encode()])
                cid = (await client.read_map(attr.ino)).blocks[index].chunk_id
                return d.data_dir / "chunks" / codec.chunk_relpath(cid.hex())

        for key, index in (("big", 1), ("first", 0)):
            path = trio.run(chunk_path, key, index)
            data = bytearray(path.read_bytes())
            data[-100] ^= 0xFF
            path.write_bytes(bytes(data))
        # The first block is bad: a clean 500 before any byte of the body.
        status, _, out = request(d, "GET", "/rot/first")
        assert status == 500 and b"InternalError" in out
        status, headers, _ = request(d, "HEAD", "/rot/big")
        assert status == 200
        h = signed_headers(d, "GET", "/rot/big", {}, EMPTY_SHA)
        conn = http.client.HTTPConnection("127.0.0.1", d.s3_port, timeout=30)
        conn.request("GET", "/rot/big", headers=h)
        resp = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        conn.close()
        # A client that leaves before the bad block is reached.
        conn = http.client.HTTPConnection("127.0.0.1", d.s3_port, timeout=30)
        conn.request("GET", "/rot/big", headers=h)
        conn.getresponse().read(1000)
        conn.close()
        assert request(d, "GET", "/")[0] == 200
        assert d.proc is not None and d.proc.poll() is None
        # The bad copies were quarantined when read (never served again): fsck reports the loss.
        assert len(list((d.data_dir / "chunks" / "bad").iterdir())) == 2
        assert any("missing chunks" in p for p in d.fsck()["problems"])  # type: ignore[union-attr]
    finally:
        d.stop()
