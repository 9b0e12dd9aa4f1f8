"""The S3 "flexible checksum" algorithms, computed incrementally.

Pure (no I/O, no trio).  S3 clients send one whole-object checksum per request
body, either as an ``x-amz-checksum-<alg>`` header or as a trailer after an
aws-chunked body; the value is the base64 of the big-endian digest.  botocore,
the JS and Go SDKs default to CRC32; AWS CLI v2 defaults to CRC64NVME.

Invariants:
- :meth:`Checksum.digest` has a fixed size per algorithm (:data:`DIGEST_SIZE`),
  big-endian for the CRCs, so ``b64()`` is exactly what AWS returns;
- feeding the same bytes in any split gives the same digest as feeding them
  at once (the CRCs carry their running value, the SHAs are hashlib objects);
- ``digest()`` does not finalise: more ``update()`` calls may follow.

CRC32C and CRC64NVME come from ``awscrt`` (the C library the AWS SDKs use);
CRC32 is zlib's, which is the same polynomial (ISO-HDLC).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from typing import Final

from awscrt import checksums as _crt  # type: ignore[import-untyped]

from dfs.core.errors import S3Error

ALGORITHMS: Final = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")

DIGEST_SIZE: Final[dict[str, int]] = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}

HEADER_PREFIX: Final = "x-amz-checksum-"


def normalize(algorithm: str) -> str:
    """The canonical (upper-case) name of ``algorithm``; S3Error InvalidRequest if unknown."""
    name = algorithm.strip().upper()
    if name not in DIGEST_SIZE:
        raise S3Error("InvalidRequest", f"unsupported checksum algorithm {algorithm[:64]!r}", 400)
    return name


def header_name(algorithm: str) -> str:
    """The header (and trailer) carrying ``algorithm``'s value: ``x-amz-checksum-crc32`` etc."""
    return HEADER_PREFIX + normalize(algorithm).lower()


def algorithm_from_header(name: str) -> str | None:
    """The algorithm a header name carries, or None.

    None also for the ``x-amz-checksum-`` headers that carry no value
    (``-algorithm``, ``-type``, ``-mode``): they share the prefix.
    """
    lname = name.strip().lower()
    if not lname.startswith(HEADER_PREFIX):
        return None
    alg = lname[len(HEADER_PREFIX) :].upper()
    return alg if alg in DIGEST_SIZE else None


def parse_b64(algorithm: str, value: str) -> bytes:
    """Decode a client-supplied base64 checksum value, checking its length.

    Raises S3Error InvalidRequest (AWS's code for a malformed checksum value).
    """
    alg = normalize(algorithm)
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != DIGEST_SIZE[alg]:
        raise S3Error("InvalidRequest", f"Value for {header_name(alg)} header is invalid.", 400)
    return raw


class Checksum:
    """A running checksum of one algorithm."""

    __slots__ = ("_crc", "_hash", "algorithm")

    def __init__(self, algorithm: str) -> None:
        self.algorithm: str = normalize(algorithm)
        self._crc = 0
        self._hash: hashlib._Hash | None = None
        if self.algorithm == "SHA1":
            self._hash = hashlib.sha1(usedforsecurity=False)
        elif self.algorithm == "SHA256":
            self._hash = hashlib.sha256()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)
        elif self.algorithm == "CRC32":
            self._crc = zlib.crc32(data, self._crc)
        elif self.algorithm == "CRC32C":
            self._crc = int(_crt.crc32c(data, self._crc))
        else:
            self._crc = int(_crt.crc64nvme(data, self._crc))

    def digest(self) -> bytes:
        if self._hash is not None:
            return self._hash.digest()
        return self._crc.to_bytes(DIGEST_SIZE[self.algorithm], "big")

    def b64(self) -> str:
        """The digest as S3 writes it in ``x-amz-checksum-*`` headers."""
        return base64.b64encode(self.digest()).decode("ascii")

    def copy(self) -> Checksum:
        other = Checksum.__new__(Checksum)
        other.algorithm = self.algorithm
        other._crc = self._crc
        other._hash = self._hash.copy() if self._hash is not None else None
        return other

    def __repr__(self) -> str:
        return f"Checksum({self.algorithm!r}, {self.b64()!r})"
