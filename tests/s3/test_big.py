"""A 5 GiB object in and out with the daemon's memory staying flat (slow tier)."""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Iterator

import pytest
from test_s3_wire import signed_headers

from tests.conftest import Daemon

pytestmark = pytest.mark.slow

GiB = 1024**3
PIECE = 8 * 1024 * 1024


def peak_rss_mib(daemon: Daemon) -> float:
    assert daemon.proc is not None
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def pattern(i: int) -> bytes:
    # Cheap to make, and never all zeros (zero blocks are stored as holes, which would not
    # exercise the chunk path); repeats compress, which keeps the disk use small.
    return hashlib.sha256(i.to_bytes(8, "big")).digest() * (PIECE // 32)


def test_5gib_object_streams_with_flat_memory(s3d: Daemon, s3: object) -> None:
    s3.create_bucket(Bucket="big-object")  # type: ignore[attr-defined]
    size = 5 * GiB
    pieces = size // PIECE
    headers = signed_headers(
        s3d, "PUT", "/big-object/five", {"Content-Length": str(size)}, "UNSIGNED-PAYLOAD"
    )
    before = peak_rss_mib(s3d)
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for i in range(pieces):
            data = pattern(i % 64)
            sent.update(data)
            yield data

    conn = http.client.HTTPConnection("127.0.0.1", s3d.s3_port, timeout=600)
    conn.request("PUT", "/big-object/five", body=body(), headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    conn.close()
    got = hashlib.sha256()
    n = 0
    get_headers = signed_headers(s3d, "GET", "/big-object/five", {}, hashlib.sha256(b"").hexdigest())
    conn = http.client.HTTPConnection("127.0.0.1", s3d.s3_port, timeout=600)
    conn.request("GET", "/big-object/five", headers=get_headers)
    resp = conn.getresponse()
    assert resp.status == 200
    while chunk := resp.read(PIECE):
        got.update(chunk)
        n += len(chunk)
    conn.close()
    assert n == size
    assert got.hexdigest() == sent.hexdigest()
    grew = peak_rss_mib(s3d) - before
    assert grew < 200, f"daemon peak RSS grew by {grew:.0f} MiB while moving a 5 GiB object"
    s3.delete_object(Bucket="big-object", Key="five")  # type: ignore[attr-defined]
