"""S3 over HTTPS: boto3 then streams bodies aws-chunked with checksum trailers."""

from __future__ import annotations

import hashlib
import io
import os
import ssl
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon
from tests.s3.conftest import make_client


def test_https_put_get_with_trailers(s3tls: Daemon, tmp_path: Path) -> None:
    s3 = make_client(s3tls)  # default checksum settings: CRC32 trailer on every upload
    s3.create_bucket(Bucket="tls-bucket")
    for size in (0, 1, 4096, 5 * 1024 * 1024 + 1):
        body = os.urandom(size)
        put = s3.put_object(Bucket="tls-bucket", Key=f"obj-{size}", Body=body)
        assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        got = s3.get_object(Bucket="tls-bucket", Key=f"obj-{size}", ChecksumMode="ENABLED")
        assert got["Body"].read() == body
    for algorithm in ("CRC32C", "SHA256", "CRC64NVME"):
        s3.put_object(
            Bucket="tls-bucket", Key=f"alg-{algorithm}", Body=b"trailer " * 999, ChecksumAlgorithm=algorithm
        )
        got = s3.get_object(Bucket="tls-bucket", Key=f"alg-{algorithm}", ChecksumMode="ENABLED")
        assert got["Body"].read() == b"trailer " * 999 and got.get(f"Checksum{algorithm}")
    src = tmp_path / "mp.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024 + 7))
    s3.upload_file(str(src), "tls-bucket", "multipart.bin")
    out = io.BytesIO()
    s3.download_fileobj("tls-bucket", "multipart.bin", out)
    assert out.getvalue() == src.read_bytes()


def test_https_presigned_and_bad_signature(s3tls: Daemon) -> None:
    s3 = make_client(s3tls)
    s3.create_bucket(Bucket="tls-pre")
    s3.put_object(Bucket="tls-pre", Key="k", Body=b"secure")
    v4 = make_client(s3tls, signature_version="s3v4")
    url = v4.generate_presigned_url("get_object", Params={"Bucket": "tls-pre", "Key": "k"}, ExpiresIn=60)
    ctx = ssl.create_default_context(cafile=str(s3tls.data_dir / "tls" / "ca.pem"))
    with urllib.request.urlopen(url, context=ctx) as r:
        assert r.read() == b"secure"
    ak, sk = s3tls.root_key()
    with pytest.raises(ClientError) as err:
        make_client(s3tls, keys=(ak, "wrong-secret-key")).get_object(Bucket="tls-pre", Key="k")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
