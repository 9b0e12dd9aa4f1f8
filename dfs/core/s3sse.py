"""S3 server-side encryption: the request headers, the stored marker, keys derived from a
customer key, and the bucket default configuration.  Pure (no I/O, no trio).

Two kinds, both AES-256-GCM through the chunk codec (dfs/core/codec.py):

- **SSE-S3** (``x-amz-server-side-encryption: AES256``): the object's chunks are encrypted
  with a dfs-managed data key of the bucket's volume (dfs/core/keys.py), wrapped by the
  master key; the chunk header names the key id, so every reader with the volume keys (the
  S3 gateways, the mounts) decrypts it transparently, as AWS does.
- **SSE-C** (``x-amz-server-side-encryption-customer-*``): the request carries a 256-bit key.
  The chunks are encrypted under :func:`customer_data_key` (a one-way derivation of it) with
  key id :data:`SSE_C_KEY_ID` in their header, and their ids are keyed by a key derived from
  it, so equal content under another key gets another id.  The key is never stored; the
  object keeps only a salted HMAC of it (:func:`make_verifier`) to tell the right key from a
  wrong one.

Every refusal is the S3 error AWS answers, raised as :class:`~dfs.core.errors.S3Error`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import blake3

from dfs.core import s3xml
from dfs.core.errors import S3Error
from dfs.core.keys import KEY_BYTES, chunk_id_key

__all__ = [
    "ALGORITHM",
    "SSE_C_KEY_ID",
    "BucketDefault",
    "CustomerKey",
    "Requested",
    "Stored",
    "WriteSse",
    "bucket_default_xml",
    "customer_cipher",
    "customer_data_key",
    "customer_headers",
    "decode_bucket_default",
    "encode_bucket_default",
    "make_verifier",
    "parse_bucket_default",
    "parse_copy_source",
    "parse_customer",
    "parse_request",
    "parse_stored",
    "requested_any",
    "s3_headers",
    "stored_customer",
    "stored_s3",
    "verify",
]

ALGORITHM = "AES256"
# The codec header's key id of an SSE-C chunk: 0 is never a volume key id (those are 1..65535),
# so a reader tells "needs the customer's key" from "needs volume key N" by the header alone.
SSE_C_KEY_ID = 0

H_SSE = "x-amz-server-side-encryption"
H_KMS_KEY = "x-amz-server-side-encryption-aws-kms-key-id"
H_KMS_CONTEXT = "x-amz-server-side-encryption-context"
H_BUCKET_KEY = "x-amz-server-side-encryption-bucket-key-enabled"
_CUSTOMER = "x-amz-server-side-encryption-customer-"
_COPY_CUSTOMER = "x-amz-copy-source-server-side-encryption-customer-"
H_C_ALGORITHM = _CUSTOMER + "algorithm"
H_C_KEY_MD5 = _CUSTOMER + "key-md5"

_KMS = ("aws:kms", "aws:kms:dsse")
_NO_KMS = (
    "Server-side encryption with KMS keys (aws:kms, aws:kms:dsse) is not available: no KMS key "
    "source is configured on this dfs server. Use AES256 (SSE-S3) or SSE-C."
)
_DATA_KEY_CONTEXT = "dfs s3 sse-c data key"
_VERIFIER_LABEL = b"dfs s3 sse-c verifier 1"
_SALT_BYTES = 16
# The stored marker (xattr user.s3.sse): "AES256", or "C AES256 <salt hex> <hmac hex>".
_STORED_C = "C"
MAX_CONFIG_BYTES = 16 * 1024


@dataclass(frozen=True)
class CustomerKey:
    """A customer key from a request, checked: the 32 raw bytes and their MD5 as base64."""

    key: bytes = field(repr=False)
    md5_b64: str


@dataclass(frozen=True)
class Requested:
    """What a write asks for: SSE-S3 (``s3``), SSE-C (``customer``) or neither."""

    s3: bool = False
    customer: CustomerKey | None = None
    bucket_key: bool = False


@dataclass(frozen=True)
class Stored:
    """An object's marker: ``kind`` "S3" or "C"; for "C" the salt and HMAC of the key."""

    kind: Literal["S3", "C"]
    salt: bytes = b""
    mac: bytes = b""


@dataclass(frozen=True)
class BucketDefault:
    """A bucket's default encryption (PutBucketEncryption): only AES256 is stored."""

    algorithm: str = ALGORITHM
    bucket_key: bool = False


@dataclass(frozen=True)
class WriteSse:
    """How one write stores its blocks.  ``key_id``: a volume data key to encrypt with (SSE-S3;
    0: the volume's own setting).  ``cipher``: (data key, chunk-id key) of SSE-C.  ``share``:
    whether existing blocks may be added by reference (only when they are already encrypted
    as this write would encrypt them).  ``xattr``: the marker to store, None for a plain object."""

    key_id: int = 0
    cipher: tuple[bytes, bytes] | None = field(default=None, repr=False)
    share: bool = False
    xattr: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _bad(message: str, code: str = "InvalidArgument", status: int = 400) -> S3Error:
    return S3Error(code, message, status)


def requested_any(headers: Mapping[str, str]) -> bool:
    """Whether a request names any server-side encryption of its own (for a copy onto itself)."""
    return H_SSE in headers or any(k.startswith(_CUSTOMER) for k in headers)


def parse_customer(headers: Mapping[str, str], prefix: str = _CUSTOMER) -> CustomerKey | None:
    """The SSE-C key of a request (``prefix``: the copy source's headers), checked as AWS does;
    None when none of the three headers is there."""
    algorithm = headers.get(prefix + "algorithm")
    key_b64 = headers.get(prefix + "key")
    md5_b64 = headers.get(prefix + "key-md5")
    if algorithm is None and key_b64 is None and md5_b64 is None:
        return None
    if algorithm is None:
        raise _bad(
            "Requests specifying Server Side Encryption with Customer provided keys must provide a valid "
            "encryption algorithm."
        )
    if algorithm.strip() != ALGORITHM:
        raise _bad("The encryption algorithm specified is not supported: only AES256 is.")
    if key_b64 is None:
        raise _bad(
            "Requests specifying Server Side Encryption with Customer provided keys must provide an "
            "appropriate secret key."
        )
    if md5_b64 is None:
        raise _bad(
            "Requests specifying Server Side Encryption with Customer provided keys must provide the "
            "client calculated MD5 of the secret key."
        )
    try:
        key = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        # Never echo the key, not even a malformed one.
        raise _bad("The secret key was invalid for the specified algorithm.")
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    if not hmac.compare_digest(md5, md5_b64.strip()):
        raise _bad("The calculated MD5 hash of the key did not match the hash that was provided.")
    return CustomerKey(key, md5)


def parse_copy_source(headers: Mapping[str, str]) -> CustomerKey | None:
    """The customer key a copy gives for its source (``x-amz-copy-source-...-customer-*``)."""
    return parse_customer(headers, _COPY_CUSTOMER)


def parse_request(headers: Mapping[str, str]) -> Requested:
    """The encryption a write (PUT, copy, multipart create) asks for in its headers."""
    value = headers.get(H_SSE)
    customer = parse_customer(headers)
    if value is not None:
        value = value.strip()
        if value in _KMS or H_KMS_KEY in headers:
            raise S3Error("NotImplemented", _NO_KMS, 501)
        if value != ALGORITHM:
            raise _bad("The encryption method specified is not supported")
        if customer is not None:
            raise _bad(
                "Server Side Encryption with Customer provided key is incompatible with the encryption "
                "method specified"
            )
    elif H_KMS_KEY in headers or H_KMS_CONTEXT in headers:
        raise S3Error("NotImplemented", _NO_KMS, 501)
    bucket_key = headers.get(H_BUCKET_KEY, "").strip().lower() == "true"
    return Requested(s3=value == ALGORITHM, customer=customer, bucket_key=bucket_key)


def customer_data_key(customer_key: bytes) -> bytes:
    """The key that encrypts an SSE-C object's chunks: one-way from the customer's, so even a
    chunk-id key leaking would not give the customer key back."""
    if len(customer_key) != KEY_BYTES:
        raise ValueError(f"a customer key is {KEY_BYTES} bytes")
    return blake3.blake3(customer_key, derive_key_context=_DATA_KEY_CONTEXT).digest()


def customer_cipher(customer_key: bytes) -> tuple[bytes, bytes]:
    """(data key, chunk-id key) of an SSE-C write."""
    data_key = customer_data_key(customer_key)
    return data_key, chunk_id_key(data_key)


def _mac(salt: bytes, customer_key: bytes) -> bytes:
    return hmac.new(customer_key, _VERIFIER_LABEL + salt, hashlib.sha256).digest()


def make_verifier(customer_key: bytes, salt: bytes | None = None) -> Stored:
    """The marker an SSE-C object keeps: a random salt and HMAC-SHA256(key, label + salt)."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    return Stored("C", salt, _mac(salt, customer_key))


def verify(stored: Stored, customer_key: bytes) -> bool:
    """Whether ``customer_key`` is the key an SSE-C object was written with."""
    return stored.kind == "C" and hmac.compare_digest(stored.mac, _mac(stored.salt, customer_key))


def stored_s3() -> bytes:
    return ALGORITHM.encode()


def stored_customer(stored: Stored) -> bytes:
    return f"{_STORED_C} {ALGORITHM} {stored.salt.hex()} {stored.mac.hex()}".encode()


def parse_stored(raw: bytes | None) -> Stored | None:
    """The marker of an object (None: plain); a malformed one counts as SSE-C with no key
    matching, so such an object is refused rather than served as if it were plain."""
    if not raw:
        return None
    text = raw.decode("ascii", "replace").strip()
    if text == ALGORITHM:
        return Stored("S3")
    parts = text.split(" ")
    if len(parts) == 4 and parts[0] == _STORED_C and parts[1] == ALGORITHM:
        try:
            return Stored("C", bytes.fromhex(parts[2]), bytes.fromhex(parts[3]))
        except ValueError:
            pass
    return Stored("C", b"", b"\x00")


def s3_headers(bucket_key: bool = False) -> tuple[tuple[str, str], ...]:
    """What a response about an SSE-S3 object carries."""
    out = [(H_SSE, ALGORITHM)]
    if bucket_key:
        out.append((H_BUCKET_KEY, "true"))
    return tuple(out)


def customer_headers(key: CustomerKey) -> tuple[tuple[str, str], ...]:
    """What a response about an SSE-C object carries: the algorithm and the key's MD5."""
    return ((H_C_ALGORITHM, ALGORITHM), (H_C_KEY_MD5, key.md5_b64))


# -- bucket default encryption (PutBucketEncryption) ----------


def parse_bucket_default(body: bytes) -> BucketDefault:
    """A ServerSideEncryptionConfiguration: one Rule with ApplyServerSideEncryptionByDefault.
    AES256 is kept; aws:kms and aws:kms:dsse are refused (501: no KMS key source)."""
    root = s3xml._parse(body, "ServerSideEncryptionConfiguration")
    rules = s3xml._children(root, "Rule")
    if len(rules) != 1:
        raise s3xml._malformed("exactly one Rule is expected")
    rule = rules[0]
    applies = s3xml._children(rule, "ApplyServerSideEncryptionByDefault")
    if len(applies) != 1:
        raise s3xml._malformed("exactly one ApplyServerSideEncryptionByDefault is expected")
    algorithm = (s3xml._one_text(applies[0], "SSEAlgorithm", required=True) or "").strip()
    kms_key = s3xml._one_text(applies[0], "KMSMasterKeyID", required=False)
    bucket_key_text = (s3xml._one_text(rule, "BucketKeyEnabled", required=False) or "false").strip()
    if bucket_key_text not in ("true", "false"):
        raise s3xml._malformed("BucketKeyEnabled is not true or false")
    if algorithm in _KMS:
        raise S3Error("NotImplemented", _NO_KMS, 501)
    if algorithm != ALGORITHM:
        raise _bad("The encryption method specified is not supported")
    if kms_key is not None:
        raise _bad("a KMSMasterKeyID is only allowed with aws:kms")
    return BucketDefault(ALGORITHM, bucket_key_text == "true")


def bucket_default_xml(default: BucketDefault) -> bytes:
    rule = (
        "<Rule><ApplyServerSideEncryptionByDefault>"
        + s3xml._el("SSEAlgorithm", default.algorithm)
        + "</ApplyServerSideEncryptionByDefault>"
        + s3xml._el("BucketKeyEnabled", "true" if default.bucket_key else "false")
        + "</Rule>"
    )
    return s3xml._doc("ServerSideEncryptionConfiguration", [rule])


def encode_bucket_default(default: BucketDefault) -> bytes:
    """The xattr value of a bucket's default: ``AES256`` or ``AES256 bucket-key``."""
    return (default.algorithm + (" bucket-key" if default.bucket_key else "")).encode()


def decode_bucket_default(raw: bytes | None) -> BucketDefault | None:
    if not raw:
        return None
    words = raw.decode("ascii", "replace").split()
    if not words or words[0] != ALGORITHM:
        raise ValueError(f"unknown bucket encryption {raw[:40]!r}")
    return BucketDefault(ALGORITHM, "bucket-key" in words[1:])
