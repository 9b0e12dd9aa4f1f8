"""Per-volume compression and encryption at rest through the S3 shim (real boto3, real daemon).

Buckets are volumes: PutObject, multipart uploads and CopyObject into an
encrypted bucket leave no trace of a marker in the chunk store, while the same
marker in a plain, uncompressed bucket is there to find.
"""

from __future__ import annotations

import os
from typing import Any

from dfs.core import codec
from tests.conftest import Daemon
from tests.conftest import admin_ok as admin

MARKER = b"S3-AT-REST-MARKER-9b7d41c3"
PART = 5 * 1024 * 1024


def compressible(n: int) -> bytes:
    line = MARKER + b" the quick brown fox " * 4 + b"\n"
    return (line * (n // len(line) + 1))[:n]


def incompressible(n: int, marker: bytes = MARKER) -> bytes:
    piece = os.urandom(4000) + marker
    return b"".join(os.urandom(4000) + marker for _ in range(n // len(piece) + 1))[:n]


def store_holds(d: Daemon, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in d.chunk_files())


def test_s3_writes_into_an_encrypted_bucket(s3d: Daemon, s3: Any) -> None:
    admin(s3d, "POST", "/storage/volumes", {"name": "enc-bucket", "encryption": True})
    admin(s3d, "POST", "/storage/volumes", {"name": "enc-raw", "encryption": True, "compression": "none"})
    admin(s3d, "POST", "/storage/volumes", {"name": "plain-bucket", "compression": "none"})
    objects: dict[tuple[str, str], bytes] = {
        ("enc-bucket", "c.txt"): compressible(6 << 20),
        ("enc-raw", "r.bin"): incompressible(5 << 20),
        ("enc-bucket", "small"): MARKER * 3,  # would live inline in metadata in a plain bucket
    }
    for (bucket, key), data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    parts = [compressible(PART), incompressible(PART), MARKER * 100]
    up = s3.create_multipart_upload(Bucket="enc-bucket", Key="multi")
    done = [
        {
            "PartNumber": i + 1,
            "ETag": s3.upload_part(
                Bucket="enc-bucket", Key="multi", UploadId=up["UploadId"], PartNumber=i + 1, Body=body
            )["ETag"],
        }
        for i, body in enumerate(parts)
    ]
    s3.complete_multipart_upload(
        Bucket="enc-bucket", Key="multi", UploadId=up["UploadId"], MultipartUpload={"Parts": done}
    )
    objects[("enc-bucket", "multi")] = b"".join(parts)
    # A copy from a plain bucket must not carry its plain chunks into the encrypted one.
    # (its own marker: deleted chunks stay in the store until GC, an hour later)
    plain = incompressible(5 << 20, b"PLAIN-SOURCE-MARKER-0c4e")
    s3.put_object(Bucket="plain-bucket", Key="src", Body=plain)
    before = set(s3d.chunk_files())
    s3.copy_object(Bucket="enc-raw", Key="copy", CopySource={"Bucket": "plain-bucket", "Key": "src"})
    objects[("enc-raw", "copy")] = plain
    copied = set(s3d.chunk_files()) - before
    assert copied and all(codec.header_info(p.read_bytes()).encrypted for p in copied)

    for (bucket, key), data in objects.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data, (bucket, key)
    assert not store_holds(s3d, MARKER)
    s3.put_object(Bucket="plain-bucket", Key="c.txt", Body=compressible(1 << 20))
    assert store_holds(s3d, MARKER)  # the control: the search does find a plain marker
    s3.delete_object(Bucket="plain-bucket", Key="c.txt")

    # Identical content in two encrypted buckets: two chunks, not one.
    same = os.urandom(1 << 20)
    before = set(s3d.chunk_files())
    s3.put_object(Bucket="enc-bucket", Key="same", Body=same)
    s3.put_object(Bucket="enc-raw", Key="same", Body=same)
    assert len(set(s3d.chunk_files()) - before) == 2
    assert s3.get_object(Bucket="enc-raw", Key="same")["Body"].read() == same
