"""Random and mutated HTTP requests at a real daemon's S3 and admin ports, raw over sockets (slow tier).

Bad methods and targets, huge and malformed headers, broken chunked encodings and lengths, bad
SigV4 (header and presigned), and correctly signed requests carrying bad XML bodies; half a
request head then silence on other connections.  A boto3 client and an admin ``/health`` GET
must keep being answered (tests/fuzz/fuzzkit.py:Watch).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import Daemon
from tests.fuzz.fuzzkit import Watch, frame_budget, http_probe, mutate_bytes, time_budget

pytestmark = pytest.mark.slow

WORKERS = 3
SLOWLORIS = 32
CLOSE_DEADLINE_S = 15.0
#: HTTP requests cost far more than RPC frames; a tenth of the frame budget.
HTTP_SHARE = 10

_METHODS = [
    "GET",
    "PUT",
    "POST",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "CONNECT",
    "G\x00T",
    "get",
    "X" * 300,
    "",
    "PUT PUT",
    "\xff",
]
_TARGETS = [
    "/",
    "/fuzz-b0",
    "/fuzz-b0/k",
    "/fuzz-b0/k?uploads",
    "/fuzz-b0?delete",
    "/fuzz-b0?list-type=2&max-keys=-1",
    "*",
    "http://x/",
    "/%zz",
    "/%00",
    "/" + "a" * 5000,
    "/fuzz-b0/../../etc/passwd",
    "/fuzz-b0?versioning",
    "/fuzz-b0/k?uploadId=zz&partNumber=99999999999",
    "/fuzz-b0?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a",
    "/health",
    "/metrics",
    "/storage/health",
    "/storage/nodes",
    "/storage/volumes/%ff",
    "/storage/config",
    "/storage/s3/keys",
    "/storage/tokens",
    "/storage/nodes/x/../y",
]
_AUTHS = [
    "AWS4-HMAC-SHA256",
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20200101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=00",
    "AWS4-HMAC-SHA256 Credential=/////, SignedHeaders=;;;, Signature=" + "z" * 64,
    "AWS4-HMAC-SHA256 Credential=" + "A" * 5000,
    "AWS AKID:c2lnbmF0dXJl",
    "Bearer " + "x" * 40,
    "Bearer",
    "Basic Og==",
    "AWS4-HMAC-SHA256 Credential=AKID/2020/us-east-1/s3/aws4_request,"
    "SignedHeaders=host;x-amz-date,Signature=",
]
_XML = [
    b"",
    b"<",
    b"<Delete><Object><Key>k</Key></Object>",
    b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
    b"<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>]><Delete><Object><Key>&c;</Key></Object></Delete>",
    b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><Delete><Object><Key>&e;</Key>"
    b"</Object></Delete>",
    b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1500 + b"</Delete>",
    b"<a>" * 5000 + b"</a>" * 5000,
    b"<Delete><Object><Key>\xff\xfe</Key></Object></Delete>",
    b"<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>99999999999999999999</PartNumber></Part></CompleteMultipartUpload>",
    b"<CreateBucketConfiguration><LocationConstraint>" + b"x" * 10000 + b"</LocationConstraint>"
    b"</CreateBucketConfiguration>",
    b"<VersioningConfiguration><Status>Sideways</Status></VersioningConfiguration>",
    b"<Tagging><TagSet><Tag><Key></Key><Value/></Tag></TagSet></Tagging>",
]


def _head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


class HttpFuzzer:
    def __init__(self, daemon: Daemon, seed: int, budget: int, deadline: float) -> None:
        self.daemon = daemon
        self.seed = seed
        self.budget = budget
        self.deadline = deadline
        self.creds = Credentials(*daemon.root_key())
        self.token = daemon.admin_token()
        self.lock = threading.Lock()
        self.sent = 0
        self.statuses: dict[str, int] = {}
        self.failure: str | None = None

    def _take(self) -> bool:
        with self.lock:
            if self.sent >= self.budget or time.monotonic() > self.deadline or self.failure:
                return False
            self.sent += 1
            return True

    def signed(self, rng: random.Random) -> bytes:
        """A correctly signed S3 request with a bad or hostile XML body (or a mutated signature)."""
        method, path = rng.choice(
            [
                ("POST", "/fuzz-b0?delete"),
                ("PUT", f"/fuzz-f{rng.randrange(5)}"),
                ("POST", "/fuzz-b0/k?uploadId=nope"),
                ("PUT", "/fuzz-b0?versioning"),
                ("PUT", "/fuzz-b0?tagging"),
                ("PUT", "/fuzz-b0/k?tagging"),
                ("PUT", "/fuzz-b0/k"),
            ]
        )
        body = rng.choice(_XML)
        if rng.random() < 0.3:
            body = mutate_bytes(rng, body or b"<x/>")
        url = f"http://127.0.0.1:{self.daemon.s3_port}{path}"
        req = AWSRequest(method=method, url=url, data=body, headers={"Content-Length": str(len(body))})
        S3SigV4Auth(self.creds, "s3", "us-east-1").add_auth(req)
        headers = [(k, v) for k, v in req.headers.items()] + [("Host", f"127.0.0.1:{self.daemon.s3_port}")]
        if rng.random() < 0.2:  # the signature, the date or the payload hash no longer matches
            i = rng.randrange(len(headers))
            headers[i] = (headers[i][0], headers[i][1][::-1])
        target = req.url.split(str(self.daemon.s3_port), 1)[1] or "/"
        return _head(method, target, headers) + body

    def raw(self, rng: random.Random, admin: bool) -> bytes:
        method = rng.choice(_METHODS) if rng.random() < 0.5 else rng.choice(["GET", "PUT", "POST", "DELETE"])
        target = rng.choice(_TARGETS)
        headers: list[tuple[str, str]] = [("Host", "127.0.0.1")]
        body = b""
        for _ in range(rng.randrange(0, 4)):
            pick = rng.randrange(12)
            if pick == 0:
                headers.append(("X-Big", "v" * rng.choice([1000, 70_000, 200_000])))
            elif pick == 1:
                headers += [(f"X-H{i}", "v") for i in range(rng.choice([100, 1000, 5000]))]
            elif pick == 2:
                headers.append(("Authorization", rng.choice(_AUTHS)))
            elif pick == 3 and admin:
                headers.append(("Authorization", f"Bearer {self.token}"))  # valid token, bad request
            elif pick == 4:
                headers.append(("Transfer-Encoding", "chunked"))
                body = rng.choice(
                    [
                        b"zz\r\nabc\r\n0\r\n\r\n",
                        b"ffffffffffffffff\r\nx",
                        b"-1\r\n\r\n",
                        b"5\r\nab",
                        b"3;ext=" + b"e" * 10000 + b"\r\nabc\r\n0\r\n\r\n",
                        b"0\r\nTrailer: x\r\n\r\n",
                        b"4\r\nabcd\r\n0\r\n",
                    ]
                )
            elif pick == 5:
                headers.append(
                    ("Content-Length", rng.choice(["-1", "abc", "99999999999999999999", "10", "1, 2"]))
                )
                body = rng.randbytes(rng.randrange(0, 20))
            elif pick == 6:
                headers.append(
                    ("Transfer-Encoding", rng.choice(["gzip", "chunked, chunked", "identity", "x"]))
                )
            elif pick == 7:
                headers.append(("X-Amz-Date", rng.choice(["", "2020", "99999999T999999Z", "\x00"])))
                headers.append(
                    ("X-Amz-Content-Sha256", rng.choice(["", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "zz"]))
                )
            elif pick == 8:
                headers.append((rng.choice(["", " X", "X Y", "\x00", "é"]), "v"))
            elif pick == 9:
                headers.append(("Expect", rng.choice(["100-continue", "banana"])))
            elif pick == 10:
                headers.append(("Content-Type", "application/json"))
                body = rng.choice([b"{", b"[]", b'{"name": 1}', b'{"state": []}', b"\xff", b'{"a":' * 3000])
                headers.append(("Content-Length", str(len(body))))
            else:
                headers.append(("Connection", rng.choice(["close", "keep-alive", "upgrade", "\x01"])))
        data = _head(method, target, headers) + body
        if rng.random() < 0.15:
            data = mutate_bytes(rng, data)
        if rng.random() < 0.05:
            data = rng.randbytes(rng.randrange(1, 3000))
        if rng.random() < 0.05:
            data = data[: rng.randrange(1, len(data))]  # truncated, then we close
        return data

    def one(self, rng: random.Random) -> None:
        admin = rng.random() < 0.3
        port = self.daemon.admin_port if admin else self.daemon.s3_port
        data = self.raw(rng, admin) if admin or rng.random() < 0.6 else self.signed(rng)
        with socket.create_connection(("127.0.0.1", port), timeout=CLOSE_DEADLINE_S) as s:
            reply = b""
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    reply += chunk[: 64 - len(reply)] if len(reply) < 64 else b""
            except TimeoutError:
                self.failure = f"{'admin' if admin else 's3'}: no answer nor close within {CLOSE_DEADLINE_S}s"
                return
            except OSError:
                pass  # reset or closed on us mid-send: an answer
        status = reply[9:12].decode("latin-1") if reply.startswith(b"HTTP/1.1 ") else "none"
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == "500":  # 501 (unknown transfer coding), 503 (busy) and 505 are proper answers
            self.failure = f"{'admin' if admin else 's3'} answered {status} to {data[:200]!r}"

    def worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        try:
            while self._take():
                self.one(rng)
        except Exception as exc:
            self.failure = f"worker {index}: {type(exc).__name__}: {exc}"


def test_s3_and_admin_survive_random_and_mutated_requests(fuzzd: Daemon, seed: int) -> None:
    from tests.s3.conftest import make_client

    s3: Any = make_client(fuzzd)
    s3.create_bucket(Bucket="fuzz-b0")
    s3.create_bucket(Bucket="fuzz-probe")  # the fuzzer never names it
    s3.put_object(Bucket="fuzz-probe", Key="k", Body=b"hello")

    def s3_probe() -> None:
        assert s3.get_object(Bucket="fuzz-probe", Key="k")["Body"].read() == b"hello"

    budget = max(1, frame_budget() // HTTP_SHARE)
    fuzzer = HttpFuzzer(fuzzd, seed, budget, time.monotonic() + time_budget())
    with Watch(fuzzd, [s3_probe, lambda: http_probe(fuzzd.admin_port, "/health")]) as watch:
        held = []
        for i in range(SLOWLORIS):
            s = socket.create_connection(
                ("127.0.0.1", fuzzd.s3_port if i % 2 else fuzzd.admin_port), timeout=5
            )
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(s)
        t0 = time.monotonic()
        threads = [threading.Thread(target=fuzzer.worker, args=(i,)) for i in range(WORKERS)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if watch.failure is not None:
                fuzzer.failure = "watch failed"
            for t in threads:
                t.join(0.2)
        elapsed = time.monotonic() - t0
        watch.check()
        assert fuzzer.failure is None, f"seed {seed}: {fuzzer.failure}"
        watch.finish("http requests", fuzzer.sent, elapsed)
        for s in held:
            s.close()
    print(f"statuses {dict(sorted(fuzzer.statuses.items()))}")
    # Whatever the fuzzer created stays consistent; remove it so the store is as it started.
    for bucket in s3.list_buckets()["Buckets"]:
        for obj in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            s3.delete_object(Bucket=bucket["Name"], Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket["Name"])
