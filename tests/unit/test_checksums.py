"""dfs.core.checksums: known vectors, agreement with botocore's own implementations,
incremental == one-shot."""

from __future__ import annotations

import base64
import hashlib
import zlib

import awscrt.checksums as crt  # type: ignore[import-untyped]
import pytest
from botocore import httpchecksum
from hypothesis import given
from hypothesis import strategies as st

from dfs.core.checksums import (
    ALGORITHMS,
    DIGEST_SIZE,
    Checksum,
    algorithm_from_header,
    header_name,
    normalize,
    parse_b64,
)
from dfs.core.errors import S3Error

# The catalogue "check" values (CRC of b"123456789") pin the exact CRC variant,
# independently of awscrt.
CHECK_VALUES = {
    "CRC32": 0xCBF43926,
    "CRC32C": 0xE3069283,
    "CRC64NVME": 0xAE8B14860A799888,
}

BOTOCORE = {
    "CRC32": httpchecksum.Crc32Checksum,
    "CRC32C": httpchecksum.CrtCrc32cChecksum,
    "CRC64NVME": httpchecksum.CrtCrc64NvmeChecksum,
    "SHA1": httpchecksum.Sha1Checksum,
    "SHA256": httpchecksum.Sha256Checksum,
}


def one_shot(algorithm: str, data: bytes) -> Checksum:
    c = Checksum(algorithm)
    c.update(data)
    return c


def test_crc32_of_hello_world_is_what_boto3_sends() -> None:
    # The value boto3 sends in the x-amz-checksum-crc32 trailer for b"hello world".
    assert one_shot("CRC32", b"hello world").b64() == "DUoRhQ=="


@pytest.mark.parametrize(("algorithm", "check"), sorted(CHECK_VALUES.items()))
def test_crc_check_values(algorithm: str, check: int) -> None:
    c = one_shot(algorithm, b"123456789")
    assert c.digest() == check.to_bytes(DIGEST_SIZE[algorithm], "big")


def test_sha_digests_match_hashlib() -> None:
    data = b"The quick brown fox jumps over the lazy dog"
    assert one_shot("SHA1", data).digest() == hashlib.sha1(data).digest()
    assert one_shot("SHA256", data).digest() == hashlib.sha256(data).digest()


def test_crcs_match_awscrt_and_zlib_directly() -> None:
    data = bytes(range(256)) * 41
    assert one_shot("CRC32", data).digest() == zlib.crc32(data).to_bytes(4, "big")
    assert one_shot("CRC32C", data).digest() == crt.crc32c(data).to_bytes(4, "big")
    assert one_shot("CRC64NVME", data).digest() == crt.crc64nvme(data).to_bytes(8, "big")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("data", [b"", b"hello world", bytes(range(256)) * 300])
def test_matches_botocore(algorithm: str, data: bytes) -> None:
    theirs = BOTOCORE[algorithm]()
    theirs.update(data)
    assert one_shot(algorithm, data).b64() == theirs.b64digest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_sizes_and_empty_input(algorithm: str) -> None:
    c = Checksum(algorithm)
    assert len(c.digest()) == DIGEST_SIZE[algorithm]
    assert base64.b64decode(c.b64()) == c.digest()


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    data=st.binary(max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_incremental_equals_one_shot(algorithm: str, data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    c = Checksum(algorithm)
    for a, b in zip(points, points[1:], strict=False):
        piece = data[a:b]
        # Every accepted buffer type gives the same result.
        c.update(memoryview(piece) if a % 2 else bytearray(piece))
    assert c.digest() == one_shot(algorithm, data).digest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_copy_is_independent(algorithm: str) -> None:
    c = one_shot(algorithm, b"hello ")
    d = c.copy()
    d.update(b"world")
    assert c.digest() == one_shot(algorithm, b"hello ").digest()
    assert d.digest() == one_shot(algorithm, b"hello world").digest()
    # digest() does not finalise: updating afterwards continues the same stream.
    c.digest()
    c.update(b"world")
    assert c.digest() == d.digest()


def test_names_are_case_insensitive() -> None:
    assert Checksum("crc32c").algorithm == "CRC32C"
    assert normalize(" Sha256 ") == "SHA256"


def test_unknown_algorithm() -> None:
    with pytest.raises(S3Error) as ei:
        Checksum("MD5")
    assert (ei.value.s3_code, ei.value.status) == ("InvalidRequest", 400)


def test_header_names() -> None:
    assert header_name("crc32") == "x-amz-checksum-crc32"
    assert header_name("CRC64NVME") == "x-amz-checksum-crc64nvme"
    for alg in ALGORITHMS:
        assert algorithm_from_header(header_name(alg)) == alg
    assert algorithm_from_header("X-Amz-Checksum-SHA256") == "SHA256"
    # Same prefix, but these carry no checksum value.
    for other in ("x-amz-checksum-algorithm", "x-amz-checksum-type", "x-amz-checksum-mode", "content-md5"):
        assert algorithm_from_header(other) is None


def test_parse_b64() -> None:
    assert parse_b64("crc32", "DUoRhQ==") == zlib.crc32(b"hello world").to_bytes(4, "big")
    for bad in ("DUoRhQ", "not base64!", "AAAAAAAAAAA=", ""):
        with pytest.raises(S3Error) as ei:
            parse_b64("CRC32", bad)
        assert ei.value.s3_code == "InvalidRequest"
