"""Who may do what to which bucket: S3 keys, the buckets they own and the grants they hold.

A key made with ``dfs s3 key create`` owns the buckets it creates and may be
granted ``r`` (read), ``w`` (write), ``rw`` (both) or ``owner`` on others.
``owner`` adds what only an owner may do: delete the bucket and change its
settings.  The root key of ``dfs up`` and ``[s3] access_key`` may do anything.
A bucket without an owner record (made through a mount, or before keys had
grants) is the root key's alone unless granted.

:func:`allowed` is the whole decision: it looks at nothing but its arguments.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Perm(enum.IntFlag):
    """What a grant allows on a bucket."""

    NONE = 0
    READ = 1
    WRITE = 2
    #: Owner-only: delete the bucket, change its settings.
    ADMIN = 4
    OWNER = READ | WRITE | ADMIN


# The spellings the CLI and the admin API accept, and the canonical name of each permission.
_PARSE = {
    "r": Perm.READ,
    "read": Perm.READ,
    "w": Perm.WRITE,
    "write": Perm.WRITE,
    "rw": Perm.READ | Perm.WRITE,
    "wr": Perm.READ | Perm.WRITE,
    "read-write": Perm.READ | Perm.WRITE,
    "owner": Perm.OWNER,
}
_NAMES = {Perm.READ: "r", Perm.WRITE: "w", Perm.READ | Perm.WRITE: "rw", Perm.OWNER: "owner"}
PERM_NAMES = tuple(_NAMES.values())


def parse_perm(text: str) -> Perm:
    """``r``, ``w``, ``rw`` or ``owner`` (also ``read``, ``write``); ValueError otherwise."""
    perm = _PARSE.get(text.strip().lower())
    if perm is None:
        raise ValueError(f"unknown permission {text!r}: use one of {', '.join(PERM_NAMES)}")
    return perm


def perm_name(perm: Perm) -> str:
    """The canonical spelling of a grantable permission (``r``, ``w``, ``rw``, ``owner``)."""
    try:
        return _NAMES[perm]
    except KeyError:
        raise ValueError(f"{perm!r} is not a grantable permission") from None


def parse_allow(spec: str) -> tuple[str, Perm]:
    """``BUCKET:PERM`` (as ``--allow`` and ``dfs s3 key grant`` take it) -> (bucket, permission)."""
    bucket, sep, perm = spec.rpartition(":")
    if not sep or not bucket:
        raise ValueError(f"expected BUCKET:PERM (PERM one of {', '.join(PERM_NAMES)}), got {spec!r}")
    return bucket, parse_perm(perm)


# What each S3 operation (as daemon/s3/router.py names it) needs on its bucket.  ListBuckets
# and CreateBucket need nothing (ListBuckets shows only what the key may see; a new bucket is
# its creator's).  A copy also needs READ on its source bucket (COPY_SOURCE).
NEEDS: Mapping[str, Perm] = MappingProxyType(
    {
        "ListBuckets": Perm.NONE,
        "CreateBucket": Perm.NONE,
        "DeleteBucket": Perm.OWNER,
        "PutBucketVersioning": Perm.OWNER,
        "PutBucketTagging": Perm.OWNER,
        "DeleteBucketTagging": Perm.OWNER,
        "PutBucketCors": Perm.OWNER,
        "DeleteBucketCors": Perm.OWNER,
        "PutBucketLifecycleConfiguration": Perm.OWNER,
        "DeleteBucketLifecycle": Perm.OWNER,
        "GetBucketTagging": Perm.READ,
        "GetBucketCors": Perm.READ,
        "GetBucketLifecycleConfiguration": Perm.READ,
        "HeadBucket": Perm.READ,
        "ListObjects": Perm.READ,
        "ListObjectsV2": Perm.READ,
        "ListObjectVersions": Perm.READ,
        "ListMultipartUploads": Perm.READ,
        "GetObject": Perm.READ,
        "HeadObject": Perm.READ,
        "GetObjectAcl": Perm.READ,
        "GetObjectTagging": Perm.READ,
        "PutObjectTagging": Perm.WRITE,
        "DeleteObjectTagging": Perm.WRITE,
        "ListParts": Perm.READ,
        "PutObject": Perm.WRITE,
        "CopyObject": Perm.WRITE,
        "DeleteObject": Perm.WRITE,
        "DeleteObjects": Perm.WRITE,
        "CreateMultipartUpload": Perm.WRITE,
        "UploadPart": Perm.WRITE,
        "UploadPartCopy": Perm.WRITE,
        "CompleteMultipartUpload": Perm.WRITE,
        "AbortMultipartUpload": Perm.WRITE,
        # S3 object lock (daemon/s3/objlock.py); bypassing GOVERNANCE retention needs OWNER.
        "GetObjectLockConfiguration": Perm.READ,
        "PutObjectLockConfiguration": Perm.OWNER,
        "GetObjectRetention": Perm.READ,
        "PutObjectRetention": Perm.WRITE,
        "GetObjectLegalHold": Perm.READ,
        "PutObjectLegalHold": Perm.WRITE,
        "BypassGovernanceRetention": Perm.OWNER,
    }
)
#: What the source bucket of CopyObject and UploadPartCopy needs.
COPY_SOURCE = Perm.READ


def need_of(operation: str) -> Perm:
    """What ``operation`` needs on its bucket: bucket sub-resource reads (``GetBucket.*``) need
    READ; an operation not listed needs OWNER (deny by default)."""
    need = NEEDS.get(operation)
    if need is not None:
        return need
    if operation.startswith("GetBucket."):
        return Perm.READ
    return Perm.OWNER


@dataclass(frozen=True)
class Principal:
    """Who signed a request: a root key, or a key with its grants (owned buckets as OWNER); or
    nobody (:data:`ANONYMOUS`, an unsigned request: only a bucket policy may let it in)."""

    access_key: str
    root: bool = False
    grants: Mapping[str, Perm] = field(default_factory=dict)
    anonymous: bool = False

    @classmethod
    def from_wire(cls, access_key: str, grants: Mapping[str, str]) -> Principal:
        """A key with the ``{bucket: perm name}`` map metadata answers."""
        return cls(access_key, False, {str(b): parse_perm(str(p)) for b, p in grants.items()})


#: Who made an unsigned request: no grants, not even for what needs nothing (ListBuckets,
#: CreateBucket).  Bucket policies (daemon/s3/policy.py) are what may let it in.
ANONYMOUS = Principal("", anonymous=True)


def allowed(principal: Principal, bucket: str, need: Perm) -> bool:
    """May ``principal`` do what needs ``need`` on ``bucket``, by its grants alone?  (Bucket
    policies may refuse it still, or let in more: daemon/s3/policy.py.)"""
    if principal.anonymous:
        return False
    if principal.root or need == Perm.NONE:
        return True
    have = principal.grants.get(bucket, Perm.NONE)
    return (have & need) == need


def allowed_op(principal: Principal, bucket: str, operation: str) -> bool:
    """:func:`allowed` for an S3 operation named as the router names it."""
    return allowed(principal, bucket, need_of(operation))


def visible(principal: Principal, bucket: str) -> bool:
    """Does ListBuckets show ``bucket`` to ``principal``?  Any grant (or ownership) shows it."""
    if principal.anonymous:
        return False
    return principal.root or principal.grants.get(bucket, Perm.NONE) != Perm.NONE
