"""S3 ACLs: Get/Put{Bucket,Object}Acl, ACLs asked for by headers, and what an ACL lets in.

A bucket's or object's ACL is its xattr ``user.s3.acl`` (dfs/core/s3acl.py's
compact JSON).  A bucket made through S3 gets one at once (private, or what
``x-amz-acl``/``x-amz-grant-*`` ask), recording its creator as owner; an
object gets one only when asked for.  Without one, a bucket is owned by the
root key's id and an object by its bucket's owner, and nobody else is
granted anything: the key grants and bucket policies decide, as before ACLs.

:meth:`Acls.allows` is the ACL step of the access decision
(daemon/s3/policy.py), asked only when neither the grants nor the policy
let a request in, so the common path reads no object xattrs for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from daemon.http import Response
from daemon.s3.call import Call, read_checked_body, xml
from daemon.s3.tree import ObjectTree
from dfs.core import s3acl, s3xml
from dfs.core.errors import NotFound, S3Error
from dfs.core.s3grants import Principal

log = logging.getLogger("dfs.s3")

XA_ACL = b"user.s3.acl"
# Operations that may carry x-amz-acl / x-amz-grant-* headers for what they create.
CREATING = frozenset({"CreateBucket", "PutObject", "CopyObject", "CreateMultipartUpload"})


def who(principal: Principal | None) -> str | None:
    """The canonical id an ACL names ``principal`` by (None: anonymous)."""
    if principal is None or principal.anonymous:
        return None
    return s3acl.canonical_id(principal.access_key, root=principal.root)


def decode_or_private(raw: bytes | None, owner: str, where: str) -> s3acl.Acl | None:
    """A stored ACL (None when there is none); a malformed one grants nothing beyond its owner."""
    if not raw:
        return None
    try:
        return s3acl.decode(raw)
    except ValueError as exc:
        log.warning("%s: ignoring a malformed ACL: %s", where, exc)
        return s3acl.private(owner)


class Acls:
    """ACL operations over one object tree.  ``bucket_acl`` answers a bucket's stored ACL and
    public access block (BucketPolicies.access caches both)."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.client = tree.client

    async def object_acl(self, c: Call, bucket: str, key: str, bucket_owner: str) -> s3acl.Acl | None:
        """The object's own ACL (None: none stored, or no such object)."""
        probe = Call(c.req, c.request_id, bucket, key, {}, c.headers, f"/{bucket}/{key}")
        try:
            info, _ = await self.tree.object(probe)
        except (NotFound, S3Error):
            return None
        return decode_or_private(info.xattrs.get(XA_ACL), bucket_owner, f"{bucket}/{key}")

    # -- operations ----------
    async def get_bucket(self, c: Call, acl: s3acl.Acl | None, owner: str) -> Response:
        await self.tree.bucket_ino(c.bucket)
        return xml(_render(acl or s3acl.private(owner)))

    async def put_bucket(self, c: Call, owner: str, block_public: bool) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        acl = await self._requested(c, owner, owner)
        _check_public(acl, block_public)
        await self.client.setxattr(ino, XA_ACL, s3acl.encode(acl), 0)
        return Response(200)

    async def get_object(self, c: Call, bucket_owner: str) -> Response:
        info, _ = await self.tree.object(c)
        acl = decode_or_private(info.xattrs.get(XA_ACL), bucket_owner, c.resource)
        return xml(_render(acl or s3acl.private(bucket_owner)))

    async def put_object(self, c: Call, bucket_owner: str, block_public: bool) -> Response:
        info, _ = await self.tree.object(c)
        current = decode_or_private(info.xattrs.get(XA_ACL), bucket_owner, c.resource)
        owner = current.owner if current is not None else bucket_owner
        acl = await self._requested(c, owner, bucket_owner)
        _check_public(acl, block_public)
        await self.client.setxattr(info.attr.ino, XA_ACL, s3acl.encode(acl), 0)
        return Response(200)

    async def _requested(self, c: Call, owner: str, bucket_owner: str) -> s3acl.Acl:
        """The ACL a Put*Acl asks for: by headers, or an AccessControlPolicy body (not both)."""
        body = await read_checked_body(c, s3acl.MAX_ACL_BYTES)
        by_headers = s3acl.from_headers(c.headers, owner, bucket_owner)
        if by_headers is not None:
            if body.strip():
                raise S3Error("UnexpectedContent", "This request does not support content", 400)
            return by_headers
        if not body.strip():
            raise S3Error("MissingSecurityHeader", "Your request was missing a required header", 400)
        named_owner, grants = s3xml.parse_access_control_policy(body)
        return s3acl.from_xml_grants(named_owner, grants, owner)


def _render(acl: s3acl.Acl) -> bytes:
    return s3xml.access_control_policy(acl.owner, [(g.group, g.grantee, g.permission) for g in acl.grants])


def _check_public(acl: s3acl.Acl, block_public: bool) -> None:
    if block_public and acl.public:
        raise S3Error("AccessDenied", "Access Denied: the bucket's BlockPublicAcls refuses a public ACL", 403)


def header_acl(
    c: Call, owner: str, bucket_owner: str, block_public: bool, headers: Mapping[str, str] | None = None
) -> dict[bytes, bytes]:
    """The ACL xattr the headers of a creating request (or ``headers``) ask for ({} when none)."""
    acl = s3acl.from_headers(c.headers if headers is None else headers, owner, bucket_owner)
    if acl is None:
        return {}
    _check_public(acl, block_public)
    return {XA_ACL: s3acl.encode(acl)}
