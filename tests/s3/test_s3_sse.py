"""S3 server-side encryption through real boto3 and the aws CLI against a real dfsd over HTTPS.

SSE-S3 (AES256), SSE-C (customer keys: MD5 checks, 400 without the key, 403 with another one,
ranges, copies, multipart), bucket default encryption, the refusal of SSE-KMS, and what is at
rest: no chunk file holds a plaintext marker of an encrypted object, while the same search finds
the marker of a plain one.  The module's daemons end with fsck clean (tests/s3/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from dfs.core import codec, s3sse
from dfs.core.errors import S3Error
from tests.conftest import Daemon
from tests.s3.conftest import make_client
from tests.s3.test_clients import BIN, base_env, run

MiB = 1024 * 1024


def marked(n: int, marker: bytes) -> bytes:
    """``n`` compressible bytes full of ``marker``: compression alone would not hide it."""
    line = marker + b" the quick brown fox jumps over the lazy dog\n"
    return (line * (n // len(line) + 1))[:n]


def store_holds(d: Daemon, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in d.chunk_files())


def new_chunks(d: Daemon, before: set[Path]) -> list[Path]:
    return [p for p in d.chunk_files() if p not in before]


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    resp = exc.value.response
    return int(resp["ResponseMetadata"]["HTTPStatusCode"]), str(resp["Error"].get("Code", ""))


def customer(key: bytes) -> dict[str, Any]:
    """boto3's SSE-C parameters (it base64-encodes the key and adds the MD5 itself)."""
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}


def copy_customer(key: bytes) -> dict[str, Any]:
    return {"CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": key}


@pytest.fixture
def s3s(s3tls: Daemon) -> Any:
    return make_client(s3tls)


_n = iter(range(1000))


@pytest.fixture
def sbucket(s3s: Any) -> str:
    name = f"sse{next(_n)}"
    s3s.create_bucket(Bucket=name)
    return name


# -- pure: header parsing ----------


def test_customer_headers_are_checked() -> None:
    key = os.urandom(32)
    good = {
        "x-amz-server-side-encryption-customer-algorithm": "AES256",
        "x-amz-server-side-encryption-customer-key": base64.b64encode(key).decode(),
        "x-amz-server-side-encryption-customer-key-md5": base64.b64encode(hashlib.md5(key).digest()).decode(),
    }
    parsed = s3sse.parse_customer(good)
    assert parsed is not None and parsed.key == key and key.hex() not in repr(parsed)
    for name, value in [
        ("x-amz-server-side-encryption-customer-key-md5", base64.b64encode(b"x" * 16).decode()),
        ("x-amz-server-side-encryption-customer-key", base64.b64encode(os.urandom(16)).decode()),
        ("x-amz-server-side-encryption-customer-algorithm", "AES128"),
    ]:
        with pytest.raises(S3Error) as bad:
            s3sse.parse_customer(good | {name: value})
        assert (bad.value.s3_code, bad.value.status) == ("InvalidArgument", 400)
    with pytest.raises(S3Error):
        s3sse.parse_request(good | {"x-amz-server-side-encryption": "AES256"})
    for kms in ("aws:kms", "aws:kms:dsse"):
        with pytest.raises(S3Error) as refused:
            s3sse.parse_request({"x-amz-server-side-encryption": kms})
        assert (refused.value.s3_code, refused.value.status) == ("NotImplemented", 501)
    stored = s3sse.make_verifier(key)
    again = s3sse.parse_stored(s3sse.stored_customer(stored))
    assert again is not None and s3sse.verify(again, key) and not s3sse.verify(again, os.urandom(32))
    assert key.hex() not in s3sse.stored_customer(stored).decode()
    # A damaged marker is refused for every key rather than read as a plain object.
    broken = s3sse.parse_stored(b"C AES256 zz")
    assert broken is not None and broken.kind == "C" and not s3sse.verify(broken, key)


# -- SSE-S3 ----------


def test_sse_s3_put_get_copy_and_at_rest(s3tls: Daemon, s3s: Any, sbucket: str) -> None:
    marker = b"SSE-S3-MARKER-5d1f0b77"
    big = marked(6 * MiB + 123, marker)  # two blocks and a bit
    small = marker * 3  # would be stored inline in metadata if it were plain
    before = set(s3tls.chunk_files())
    put = s3s.put_object(Bucket=sbucket, Key="big", Body=big, ServerSideEncryption="AES256")
    assert put["ServerSideEncryption"] == "AES256"
    s3s.put_object(Bucket=sbucket, Key="small", Body=small, ServerSideEncryption="AES256")
    written = new_chunks(s3tls, before)
    assert len(written) >= 3 and all(codec.header_info(p.read_bytes()).encrypted for p in written)
    got = s3s.get_object(Bucket=sbucket, Key="big")
    assert got["ServerSideEncryption"] == "AES256" and got["Body"].read() == big
    assert s3s.head_object(Bucket=sbucket, Key="small")["ServerSideEncryption"] == "AES256"
    assert s3s.get_object(Bucket=sbucket, Key="small")["Body"].read() == small
    ranged = s3s.get_object(Bucket=sbucket, Key="big", Range="bytes=4194000-4194999")
    assert ranged["Body"].read() == big[4194000:4195000]

    # A copy keeps nothing plain: a plain object copied with AES256 is re-encoded encrypted.
    plain_marker = b"SSE-S3-PLAIN-SOURCE-3a9e"
    s3s.put_object(Bucket=sbucket, Key="plain", Body=marked(MiB, plain_marker))
    assert "ServerSideEncryption" not in s3s.head_object(Bucket=sbucket, Key="plain")
    before = set(s3tls.chunk_files())
    copied = s3s.copy_object(
        Bucket=sbucket,
        Key="copy",
        CopySource={"Bucket": sbucket, "Key": "plain"},
        ServerSideEncryption="AES256",
    )
    assert copied["ServerSideEncryption"] == "AES256"
    fresh = new_chunks(s3tls, before)
    assert fresh and all(codec.header_info(p.read_bytes()).encrypted for p in fresh)
    assert s3s.get_object(Bucket=sbucket, Key="copy")["Body"].read() == marked(MiB, plain_marker)
    # Copying an SSE-S3 object without asking for encryption makes a plain object, as on AWS.
    s3s.copy_object(Bucket=sbucket, Key="copy2", CopySource={"Bucket": sbucket, "Key": "big"})
    assert "ServerSideEncryption" not in s3s.head_object(Bucket=sbucket, Key="copy2")
    assert s3s.get_object(Bucket=sbucket, Key="copy2")["Body"].read() == big
    # Encrypting an object in place: a copy onto itself that only changes its encryption.
    s3s.copy_object(
        Bucket=sbucket,
        Key="plain",
        CopySource={"Bucket": sbucket, "Key": "plain"},
        ServerSideEncryption="AES256",
    )
    assert s3s.head_object(Bucket=sbucket, Key="plain")["ServerSideEncryption"] == "AES256"

    assert not store_holds(s3tls, marker)
    # The control: the same search finds a plain object's marker.
    s3s.put_object(Bucket=sbucket, Key="control", Body=marked(MiB, b"SSE-CONTROL-MARKER-77"))
    assert store_holds(s3tls, b"SSE-CONTROL-MARKER-77")


def test_sse_s3_multipart(s3tls: Daemon, s3s: Any, sbucket: str) -> None:
    marker = b"SSE-S3-MULTIPART-MARKER-c2"
    parts = [marked(5 * MiB, marker), marked(5 * MiB + 7, marker), marked(1000, marker)]
    up = s3s.create_multipart_upload(Bucket=sbucket, Key="mp", ServerSideEncryption="AES256")
    assert up["ServerSideEncryption"] == "AES256"
    done = []
    for i, body in enumerate(parts, 1):
        part = s3s.upload_part(Bucket=sbucket, Key="mp", UploadId=up["UploadId"], PartNumber=i, Body=body)
        assert part["ServerSideEncryption"] == "AES256"
        done.append({"PartNumber": i, "ETag": part["ETag"]})
    end = s3s.complete_multipart_upload(
        Bucket=sbucket, Key="mp", UploadId=up["UploadId"], MultipartUpload={"Parts": done}
    )
    assert end["ServerSideEncryption"] == "AES256"
    got = s3s.get_object(Bucket=sbucket, Key="mp")
    assert got["ServerSideEncryption"] == "AES256" and got["Body"].read() == b"".join(parts)
    assert not store_holds(s3tls, marker)


# -- SSE-C ----------


def test_sse_c_put_get_head_ranges_and_wrong_keys(s3tls: Daemon, s3s: Any, sbucket: str) -> None:
    key, other = os.urandom(32), os.urandom(32)
    marker = b"SSE-C-MARKER-e1c4a5"
    data = marked(5 * MiB + 99, marker)
    before = set(s3tls.chunk_files())
    put = s3s.put_object(Bucket=sbucket, Key="c/obj", Body=data, **customer(key))
    assert put["SSECustomerAlgorithm"] == "AES256"
    assert put["SSECustomerKeyMD5"] == base64.b64encode(hashlib.md5(key).digest()).decode()
    s3s.put_object(Bucket=sbucket, Key="c/small", Body=marker, **customer(key))
    written = new_chunks(s3tls, before)
    headers = [codec.header_info(p.read_bytes()) for p in written]
    assert len(written) >= 3 and all(h.encrypted and h.key_id == s3sse.SSE_C_KEY_ID for h in headers)
    assert not store_holds(s3tls, marker)

    got = s3s.get_object(Bucket=sbucket, Key="c/obj", **customer(key))
    assert got["SSECustomerAlgorithm"] == "AES256" and got["Body"].read() == data
    assert s3s.get_object(Bucket=sbucket, Key="c/small", **customer(key))["Body"].read() == marker
    for start, stop in [(0, 0), (4 * MiB - 5, 4 * MiB + 5), (len(data) - 10, len(data) - 1)]:
        part = s3s.get_object(Bucket=sbucket, Key="c/obj", Range=f"bytes={start}-{stop}", **customer(key))
        assert part["Body"].read() == data[start : stop + 1]
    assert s3s.head_object(Bucket=sbucket, Key="c/obj", **customer(key))["ContentLength"] == len(data)

    with pytest.raises(ClientError) as missing:
        s3s.get_object(Bucket=sbucket, Key="c/obj")
    assert error_of(missing) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as wrong:
        s3s.get_object(Bucket=sbucket, Key="c/obj", **customer(other))
    assert error_of(wrong) == (403, "AccessDenied")
    with pytest.raises(ClientError) as head_missing:
        s3s.head_object(Bucket=sbucket, Key="c/obj")
    assert error_of(head_missing)[0] == 400
    with pytest.raises(ClientError) as head_wrong:
        s3s.head_object(Bucket=sbucket, Key="c/obj", **customer(other))
    assert error_of(head_wrong)[0] == 403
    # A key for an object that has none is refused too, as on AWS.
    s3s.put_object(Bucket=sbucket, Key="plain", Body=b"plain")
    with pytest.raises(ClientError) as needless:
        s3s.get_object(Bucket=sbucket, Key="plain", **customer(key))
    assert error_of(needless) == (400, "InvalidRequest")
    # The MD5 must match the key (given explicitly, botocore sends both as they are).
    with pytest.raises(ClientError) as bad_md5:
        s3s.put_object(
            Bucket=sbucket,
            Key="c/bad",
            Body=b"x",
            SSECustomerAlgorithm="AES256",
            SSECustomerKey=base64.b64encode(key).decode(),
            SSECustomerKeyMD5=base64.b64encode(hashlib.md5(other).digest()).decode(),
        )
    assert error_of(bad_md5) == (400, "InvalidArgument")
    # The key is never stored: not in the object's xattrs, not in the metadata database.
    raw_key = key
    meta = [p for p in s3tls.data_dir.rglob("*") if p.is_file() and p.suffix in (".db", ".db-wal", "")]
    assert not any(raw_key in p.read_bytes() or base64.b64encode(raw_key) in p.read_bytes() for p in meta)


def test_sse_c_copies(s3tls: Daemon, s3s: Any, sbucket: str) -> None:
    key, key2 = os.urandom(32), os.urandom(32)
    data = marked(4 * MiB + 5, b"SSE-C-COPY-MARKER-91")
    s3s.put_object(Bucket=sbucket, Key="src", Body=data, **customer(key))
    src = {"Bucket": sbucket, "Key": "src"}
    with pytest.raises(ClientError) as no_key:
        s3s.copy_object(Bucket=sbucket, Key="dst", CopySource=src)
    assert error_of(no_key) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as wrong:
        s3s.copy_object(Bucket=sbucket, Key="dst", CopySource=src, **copy_customer(key2))
    assert error_of(wrong) == (403, "AccessDenied")
    # To another customer key (key rotation), to SSE-S3, and to plain.
    s3s.copy_object(Bucket=sbucket, Key="rekeyed", CopySource=src, **copy_customer(key), **customer(key2))
    assert s3s.get_object(Bucket=sbucket, Key="rekeyed", **customer(key2))["Body"].read() == data
    with pytest.raises(ClientError):
        s3s.get_object(Bucket=sbucket, Key="rekeyed", **customer(key))
    s3s.copy_object(
        Bucket=sbucket, Key="managed", CopySource=src, ServerSideEncryption="AES256", **copy_customer(key)
    )
    assert s3s.get_object(Bucket=sbucket, Key="managed")["Body"].read() == data
    s3s.copy_object(Bucket=sbucket, Key="plain", CopySource=src, **copy_customer(key))
    assert s3s.get_object(Bucket=sbucket, Key="plain")["Body"].read() == data
    # UploadPartCopy from an SSE-C source into an SSE-C upload under another key.
    up = s3s.create_multipart_upload(Bucket=sbucket, Key="mpc", **customer(key2))
    part = s3s.upload_part_copy(
        Bucket=sbucket,
        Key="mpc",
        UploadId=up["UploadId"],
        PartNumber=1,
        CopySource=src,
        CopySourceRange="bytes=10-2000009",
        **copy_customer(key),
        **customer(key2),
    )
    s3s.complete_multipart_upload(
        Bucket=sbucket,
        Key="mpc",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
        **customer(key2),
    )
    assert s3s.get_object(Bucket=sbucket, Key="mpc", **customer(key2))["Body"].read() == data[10:2000010]


def test_sse_c_multipart(s3tls: Daemon, s3s: Any, sbucket: str) -> None:
    key = os.urandom(32)
    marker = b"SSE-C-MULTIPART-MARKER-4f"
    # 5 MiB parts do not line up with 4 MiB blocks: completion re-reads them, with the key.
    parts = [marked(5 * MiB, marker), marked(5 * MiB, marker), marked(333, marker)]
    up = s3s.create_multipart_upload(Bucket=sbucket, Key="mp", **customer(key))
    uid = up["UploadId"]
    with pytest.raises(ClientError) as no_key:
        s3s.upload_part(Bucket=sbucket, Key="mp", UploadId=uid, PartNumber=1, Body=parts[0])
    assert error_of(no_key) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as wrong:
        s3s.upload_part(
            Bucket=sbucket, Key="mp", UploadId=uid, PartNumber=1, Body=parts[0], **customer(os.urandom(32))
        )
    assert error_of(wrong) == (403, "AccessDenied")
    done = [
        {
            "PartNumber": i,
            "ETag": s3s.upload_part(
                Bucket=sbucket, Key="mp", UploadId=uid, PartNumber=i, Body=b, **customer(key)
            )["ETag"],
        }
        for i, b in enumerate(parts, 1)
    ]
    s3s.complete_multipart_upload(
        Bucket=sbucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": done}, **customer(key)
    )
    got = s3s.get_object(Bucket=sbucket, Key="mp", **customer(key))
    assert got["SSECustomerAlgorithm"] == "AES256" and got["Body"].read() == b"".join(parts)
    with pytest.raises(ClientError):
        s3s.get_object(Bucket=sbucket, Key="mp")
    # Block-aligned parts complete without the key (optional on AWS): their blocks are shared.
    aligned = [os.urandom(8 * MiB), os.urandom(100)]
    up = s3s.create_multipart_upload(Bucket=sbucket, Key="mp2", **customer(key))
    done = [
        {
            "PartNumber": i,
            "ETag": s3s.upload_part(
                Bucket=sbucket, Key="mp2", UploadId=up["UploadId"], PartNumber=i, Body=b, **customer(key)
            )["ETag"],
        }
        for i, b in enumerate(aligned, 1)
    ]
    s3s.complete_multipart_upload(
        Bucket=sbucket, Key="mp2", UploadId=up["UploadId"], MultipartUpload={"Parts": done}
    )
    assert s3s.get_object(Bucket=sbucket, Key="mp2", **customer(key))["Body"].read() == b"".join(aligned)
    assert not store_holds(s3tls, marker)


def test_sse_c_needs_https(s3: Any, bucket: str) -> None:
    """Over plain HTTP AWS refuses a customer key (it would have crossed the network in clear)."""
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=bucket, Key="k", Body=b"x", **customer(os.urandom(32)))
    assert error_of(refused) == (400, "InvalidRequest")
    # SSE-S3 needs no key on the wire: fine over HTTP.
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", ServerSideEncryption="AES256")
    assert s3.head_object(Bucket=bucket, Key="k")["ServerSideEncryption"] == "AES256"


def test_sse_c_versions(s3tls: Daemon, s3s: Any, sbucket: str) -> None:
    s3s.put_bucket_versioning(Bucket=sbucket, VersioningConfiguration={"Status": "Enabled"})
    key = os.urandom(32)
    v1 = s3s.put_object(Bucket=sbucket, Key="v", Body=b"secret one", **customer(key))["VersionId"]
    s3s.put_object(Bucket=sbucket, Key="v", Body=b"plain two")
    assert s3s.get_object(Bucket=sbucket, Key="v")["Body"].read() == b"plain two"
    with pytest.raises(ClientError) as no_key:
        s3s.get_object(Bucket=sbucket, Key="v", VersionId=v1)
    assert error_of(no_key) == (400, "InvalidRequest")
    assert (
        s3s.get_object(Bucket=sbucket, Key="v", VersionId=v1, **customer(key))["Body"].read() == b"secret one"
    )


# -- bucket default, KMS ----------


def test_bucket_default_encryption(s3tls: Daemon, s3s: Any, sbucket: str) -> None:
    with pytest.raises(ClientError) as none:
        s3s.get_bucket_encryption(Bucket=sbucket)
    assert error_of(none) == (404, "ServerSideEncryptionConfigurationNotFoundError")
    s3s.put_bucket_encryption(
        Bucket=sbucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}
            ]
        },
    )
    [rule] = s3s.get_bucket_encryption(Bucket=sbucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256" and rule["BucketKeyEnabled"]
    marker = b"SSE-DEFAULT-MARKER-08d2"
    put = s3s.put_object(Bucket=sbucket, Key="d", Body=marked(2 * MiB, marker))
    assert put["ServerSideEncryption"] == "AES256"
    assert s3s.head_object(Bucket=sbucket, Key="d")["ServerSideEncryption"] == "AES256"
    assert s3s.get_object(Bucket=sbucket, Key="d")["Body"].read() == marked(2 * MiB, marker)
    # A request's own SSE-C wins over the default.
    key = os.urandom(32)
    s3s.put_object(Bucket=sbucket, Key="own", Body=b"mine", **customer(key))
    with pytest.raises(ClientError):
        s3s.get_object(Bucket=sbucket, Key="own")
    up = s3s.create_multipart_upload(Bucket=sbucket, Key="mpd")
    assert up["ServerSideEncryption"] == "AES256"
    s3s.abort_multipart_upload(Bucket=sbucket, Key="mpd", UploadId=up["UploadId"])
    assert not store_holds(s3tls, marker)
    s3s.delete_bucket_encryption(Bucket=sbucket)
    with pytest.raises(ClientError) as gone:
        s3s.get_bucket_encryption(Bucket=sbucket)
    assert error_of(gone)[0] == 404
    assert "ServerSideEncryption" not in s3s.put_object(Bucket=sbucket, Key="after", Body=b"plain")


def test_kms_is_refused(s3s: Any, sbucket: str) -> None:
    for algorithm in ("aws:kms", "aws:kms:dsse"):
        with pytest.raises(ClientError) as put:
            s3s.put_object(Bucket=sbucket, Key="k", Body=b"x", ServerSideEncryption=algorithm)
        assert error_of(put) == (501, "NotImplemented")
        assert "KMS" in put.value.response["Error"]["Message"]
        with pytest.raises(ClientError) as default:
            s3s.put_bucket_encryption(
                Bucket=sbucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": algorithm}}]
                },
            )
        assert error_of(default) == (501, "NotImplemented")
    with pytest.raises(ClientError) as multipart:
        s3s.create_multipart_upload(Bucket=sbucket, Key="k", ServerSideEncryption="aws:kms")
    assert error_of(multipart)[0] == 501
    with pytest.raises(ClientError) as bogus:
        s3s.put_object(Bucket=sbucket, Key="k", Body=b"x", ServerSideEncryption="AES128")
    assert error_of(bogus) == (400, "InvalidArgument")
    with pytest.raises(ClientError):
        s3s.head_object(Bucket=sbucket, Key="k")  # nothing was stored


# -- the aws CLI ----------


@pytest.mark.slow
def test_aws_cli_sse(s3tls: Daemon, tmp_path: Path) -> None:
    env = base_env(tmp_path, s3tls)
    env["AWS_CA_BUNDLE"] = str(s3tls.data_dir / "tls" / "ca.pem")
    aws = [str(BIN / "aws"), "--endpoint-url", s3tls.s3_endpoint]
    src = tmp_path / "src.bin"
    marker = b"SSE-AWSCLI-MARKER-6b"
    src.write_bytes(marked(20 * MiB + 3, marker))  # multipart for the CLI
    key = os.urandom(32)
    (tmp_path / "key.bin").write_bytes(key)
    sse_c = ["--sse-c", "AES256", "--sse-c-key", f"fileb://{tmp_path / 'key.bin'}"]
    run([*aws, "s3", "mb", "s3://awssse"], env)
    run([*aws, "s3", "cp", str(src), "s3://awssse/managed.bin", "--sse", "AES256"], env)
    run([*aws, "s3", "cp", str(src), "s3://awssse/customer.bin", *sse_c], env)
    run([*aws, "s3", "cp", "s3://awssse/managed.bin", str(tmp_path / "m.out")], env)
    run([*aws, "s3", "cp", "s3://awssse/customer.bin", str(tmp_path / "c.out"), *sse_c], env)
    assert (tmp_path / "m.out").read_bytes() == src.read_bytes()
    assert (tmp_path / "c.out").read_bytes() == src.read_bytes()
    head = run([*aws, "s3api", "head-object", "--bucket", "awssse", "--key", "managed.bin"], env)
    assert '"ServerSideEncryption": "AES256"' in head
    refused = run([*aws, "s3", "cp", "s3://awssse/customer.bin", str(tmp_path / "x.out")], env, check=False)
    assert "400" in refused or "Bad Request" in refused
    assert not store_holds(s3tls, marker)
    run([*aws, "s3", "rm", "--recursive", "s3://awssse/"], env)
    run([*aws, "s3", "rb", "s3://awssse"], env)
