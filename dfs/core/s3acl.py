"""S3 access control lists: canned ACLs, grant headers, the stored encoding, what an ACL permits.

Pure: no I/O.  An :class:`Acl` is an owner (a canonical user id) and grants
of READ / WRITE / READ_ACP / WRITE_ACP / FULL_CONTROL to canonical users or
to the AllUsers (anyone, anonymous included) and AuthenticatedUsers (any
key) groups.  Grants by e-mail address are refused: dfs has no e-mail
addresses.

Canonical user ids are stable per key: the hex SHA-256 of a fixed label and
the access key (:func:`canonical_id`); the root key and ``[s3] access_key``
share one fixed id (:data:`ROOT_ID`).

Stored as the xattr ``user.s3.acl`` of a bucket directory or object file, in
the compact JSON of :func:`encode` (``{"o": owner, "g": [[kind, id, perm]]}``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from dfs.core.errors import S3Error

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
GROUPS = frozenset({ALL_USERS, AUTHENTICATED_USERS})
PERMISSIONS = ("READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL")
CANNED = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
#: Bound on grants in one ACL (AWS allows 100).
MAX_GRANTS = 100
MAX_ACL_BYTES = 64 * 1024
_ID_LABEL = b"dfs-s3-canonical-user\x00"
#: The canonical id of the root key and ``[s3] access_key`` (one operator, one id).
ROOT_ID = hashlib.sha256(_ID_LABEL + b"\x00root").hexdigest()
#: AWS's canonical id for an anonymous writer.
ANONYMOUS_ID = "65a011a29cdf8ec533ec3d1ccaae921c"
# The display name of the root id: what every Owner was called before owners were per key.
ROOT_NAME = "dfs"
# x-amz-grant-* headers -> the permission each grants.
GRANT_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "x-amz-grant-read": "READ",
        "x-amz-grant-write": "WRITE",
        "x-amz-grant-read-acp": "READ_ACP",
        "x-amz-grant-write-acp": "WRITE_ACP",
        "x-amz-grant-full-control": "FULL_CONTROL",
    }
)


def canonical_id(access_key: str, *, root: bool = False) -> str:
    """The canonical user id of a key: stable, and reveals nothing of the key but equality."""
    if root:
        return ROOT_ID
    return hashlib.sha256(_ID_LABEL + access_key.encode()).hexdigest()


def display_name(canonical: str) -> str:
    """The DisplayName answered with a canonical id: ``dfs`` for the root id, ``anonymous`` for
    an anonymous writer, else ``dfs-`` and the id's first 16 digits.  Made from the id alone, so
    every answer naming one owner (ListBuckets, ACLs, listings, uploads) gives it the same name,
    and distinct owners distinct names."""
    if canonical == ROOT_ID:
        return ROOT_NAME
    if canonical == ANONYMOUS_ID:
        return "anonymous"
    return "dfs-" + canonical[:16]


def owner_of(canonical: str) -> tuple[str, str]:
    """(ID, DisplayName) of an Owner element."""
    return canonical, display_name(canonical)


@dataclass(frozen=True)
class Grant:
    group: bool  # True: ``grantee`` is a group URI; False: a canonical user id
    grantee: str
    permission: str  # one of PERMISSIONS


@dataclass(frozen=True)
class Acl:
    owner: str
    grants: tuple[Grant, ...]

    @property
    def public(self) -> bool:
        """Does it grant anything to a group (AWS's "public" ACL)?"""
        return any(g.group for g in self.grants)

    def permits(self, who: str | None, permission: str, *, ignore_public: bool = False) -> bool:
        """Does it give ``permission`` to ``who`` (a canonical id; None: anonymous)?  FULL_CONTROL
        gives everything; ``ignore_public`` drops group grants (IgnorePublicAcls)."""
        for g in self.grants:
            if g.permission not in (permission, "FULL_CONTROL"):
                continue
            if g.group:
                if ignore_public:
                    continue
                if g.grantee == ALL_USERS or (g.grantee == AUTHENTICATED_USERS and who is not None):
                    return True
            elif who is not None and g.grantee == who:
                return True
        return False


def private(owner: str) -> Acl:
    return Acl(owner, (Grant(False, owner, "FULL_CONTROL"),))


def canned(name: str, owner: str, bucket_owner: str) -> Acl:
    """A canned ACL by its ``x-amz-acl`` name; InvalidArgument for an unknown one."""
    full = Grant(False, owner, "FULL_CONTROL")
    extra: tuple[Grant, ...]
    if name == "private":
        extra = ()
    elif name == "public-read":
        extra = (Grant(True, ALL_USERS, "READ"),)
    elif name == "public-read-write":
        extra = (Grant(True, ALL_USERS, "READ"), Grant(True, ALL_USERS, "WRITE"))
    elif name == "authenticated-read":
        extra = (Grant(True, AUTHENTICATED_USERS, "READ"),)
    elif name == "bucket-owner-read":
        extra = () if bucket_owner == owner else (Grant(False, bucket_owner, "READ"),)
    elif name == "bucket-owner-full-control":
        extra = () if bucket_owner == owner else (Grant(False, bucket_owner, "FULL_CONTROL"),)
    else:
        raise S3Error(
            "InvalidArgument", f"Unknown canned ACL {name[:64]!r}: use one of {', '.join(CANNED)}", 400
        )
    return Acl(owner, (full, *extra))


def parse_grantee(text: str) -> Grant | None:
    """One ``id="..."`` / ``uri="..."`` item of an x-amz-grant-* header (permission unset)."""
    kind, sep, value = text.strip().partition("=")
    value = value.strip().strip('"')
    kind = kind.strip().lower()
    if not sep or not value:
        raise S3Error("InvalidArgument", f'Invalid grantee {text.strip()[:64]!r}: use id="..." or uri="..."')
    if kind == "emailaddress":
        raise S3Error("NotImplemented", "dfs has no e-mail addresses: grant to a canonical user id", 501)
    if kind == "id":
        return Grant(False, value, "")
    if kind == "uri":
        if value not in GROUPS:
            raise S3Error("InvalidArgument", f"Unknown group {value[:100]!r}", 400)
        return Grant(True, value, "")
    raise S3Error("InvalidArgument", f"Invalid grantee type {kind[:32]!r}", 400)


def from_headers(headers: Mapping[str, str], owner: str, bucket_owner: str) -> Acl | None:
    """The ACL ``x-amz-acl`` or the ``x-amz-grant-*`` headers ask for (None: neither)."""
    name = headers.get("x-amz-acl")
    granted = [h for h in GRANT_HEADERS if h in headers]
    if name is not None and granted:
        raise S3Error("InvalidRequest", "Specifying both Canned ACLs and Header Grants is not allowed", 400)
    if name is not None:
        return canned(name.strip(), owner, bucket_owner)
    if not granted:
        return None
    grants: list[Grant] = []
    for header in granted:
        for item in headers[header].split(","):
            g = parse_grantee(item)
            assert g is not None
            grants.append(Grant(g.group, g.grantee, GRANT_HEADERS[header]))
    return checked(Acl(owner, tuple(grants)))


def checked(acl: Acl) -> Acl:
    """``acl`` if it is within bounds and names only known permissions; else an S3Error."""
    if len(acl.grants) > MAX_GRANTS:
        raise S3Error("InvalidArgument", f"An ACL may hold at most {MAX_GRANTS} grants", 400)
    for g in acl.grants:
        if g.permission not in PERMISSIONS:
            raise S3Error("MalformedACLError", f"Unknown permission {g.permission[:32]!r}", 400)
        if g.group and g.grantee not in GROUPS:
            raise S3Error("InvalidArgument", f"Unknown group {g.grantee[:100]!r}", 400)
        if not g.grantee:
            raise S3Error("MalformedACLError", "A grant needs a grantee", 400)
    return acl


def encode(acl: Acl) -> bytes:
    grants = [["g" if g.group else "u", g.grantee, g.permission] for g in acl.grants]
    return json.dumps({"o": acl.owner, "g": grants}, separators=(",", ":")).encode()


def decode(raw: bytes) -> Acl:
    """The stored form back; ValueError if it is not one :func:`encode` makes."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("o"), str) or not isinstance(doc.get("g"), list):
        raise ValueError("not a stored ACL")
    grants: list[Grant] = []
    for item in doc["g"]:
        if not (isinstance(item, list) and len(item) == 3 and item[0] in ("g", "u")):
            raise ValueError("not a stored grant")
        grants.append(Grant(item[0] == "g", str(item[1]), str(item[2])))
    try:
        return checked(Acl(doc["o"], tuple(grants)))
    except S3Error as exc:
        raise ValueError(exc.message) from None


def from_xml_grants(owner: str | None, grants: Sequence[tuple[str, str, str]], expected_owner: str) -> Acl:
    """An AccessControlPolicy's parsed (type, id-or-uri, permission) grants as an Acl.  Its
    Owner, if given, must be the resource's (AWS refuses to change the owner so)."""
    if owner is not None and owner != expected_owner:
        raise S3Error("AccessDenied", "An ACL may not change the owner", 403)
    out: list[Grant] = []
    for kind, grantee, permission in grants:
        if kind == "AmazonCustomerByEmail":
            raise S3Error("NotImplemented", "dfs has no e-mail addresses: grant to a canonical user id", 501)
        if kind not in ("CanonicalUser", "Group"):
            raise S3Error("MalformedACLError", f"Unknown grantee type {kind[:32]!r}", 400)
        out.append(Grant(kind == "Group", grantee, permission))
    return checked(Acl(expected_owner, tuple(out)))


# What each operation needs from an ACL: (on the object or on the bucket, permission).  An
# operation missing here is never allowed by an ACL (bucket settings, deleting the bucket).
ACL_NEEDS: Mapping[str, tuple[bool, str]] = MappingProxyType(
    {
        "HeadBucket": (False, "READ"),
        "ListObjects": (False, "READ"),
        "ListObjectsV2": (False, "READ"),
        "ListObjectVersions": (False, "READ"),
        "ListMultipartUploads": (False, "READ"),
        "PutObject": (False, "WRITE"),
        "CopyObject": (False, "WRITE"),
        "DeleteObject": (False, "WRITE"),
        "DeleteObjects": (False, "WRITE"),
        "CreateMultipartUpload": (False, "WRITE"),
        "UploadPart": (False, "WRITE"),
        "UploadPartCopy": (False, "WRITE"),
        "CompleteMultipartUpload": (False, "WRITE"),
        "AbortMultipartUpload": (False, "WRITE"),
        "ListParts": (False, "WRITE"),
        "PostObject": (False, "WRITE"),
        "GetBucket.acl": (False, "READ_ACP"),
        "GetBucketAcl": (False, "READ_ACP"),
        "PutBucketAcl": (False, "WRITE_ACP"),
        "GetObject": (True, "READ"),
        "HeadObject": (True, "READ"),
        "GetObjectAcl": (True, "READ_ACP"),
        "PutObjectAcl": (True, "WRITE_ACP"),
    }
)
