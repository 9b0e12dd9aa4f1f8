"""Bucket policies and public access blocks: their operations, and the access decision.

A bucket's policy is the xattr ``user.s3.policy`` of its directory (the JSON
document as the client sent it, at most 20 KiB) and its public access block
``user.s3.public-access-block`` (compact JSON of the four flags).  Mounts
hold client credentials and may change any xattr: they are trusted with the
whole filesystem already.

:meth:`BucketPolicies.authorize` is the one access decision for every S3
request, as AWS makes it within one account:

1. the root key and ``[s3] access_key`` may do anything (a policy can never
   lock the operator out);
2. an explicit Deny in the bucket policy refuses (keys with grants too);
3. the key's grants (dfs/core/s3grants.py) or an Allow in the policy let it
   in;
4. anything else is AccessDenied.

An anonymous request (no credentials at all) has no grants: only a policy
statement to Principal "*" lets it in, and not when RestrictPublicBuckets is
set and the policy is public.

Both configurations are read on most requests, so they are cached per bucket
for ``CACHE_TTL_S`` (what a change made through another daemon may take to
show) and dropped at once when this daemon changes them.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass

from daemon.http import Response
from daemon.s3.acl import XA_ACL, Acls, decode_or_private, header_acl, who
from daemon.s3.bucket_cache import BucketCache
from daemon.s3.call import Call, read_checked_body, xml
from daemon.s3.tree import ObjectTree
from dfs.core import s3acl, s3policy, s3xml
from dfs.core.errors import NoAttribute, S3Error
from dfs.core.s3grants import allowed, need_of

log = logging.getLogger("dfs.s3")

XA_POLICY = b"user.s3.policy"
XA_PUBLIC_ACCESS = b"user.s3.public-access-block"
MAX_PUBLIC_ACCESS_BYTES = 4096
_ANONYMOUS_DENIED = "anonymous access is not allowed"


@dataclass(frozen=True)
class BucketAccess:
    """A bucket's policy (None: none), public access block settings (empty: none) and ACL
    (None: none stored; the bucket is then the root key's)."""

    policy: s3policy.Policy | None
    public_access: dict[str, bool]
    acl: s3acl.Acl | None = None

    @property
    def owner(self) -> str:
        return self.acl.owner if self.acl is not None else s3acl.ROOT_ID

    def flag(self, name: str) -> bool:
        return self.public_access.get(name, False)


def source_ip(remote: str) -> str:
    """The address part of ``host:port`` / ``[v6]:port`` as daemon/http.py names the peer."""
    if remote.startswith("["):
        return remote[1:].partition("]")[0]
    return remote.rpartition(":")[0] if remote.count(":") == 1 else remote


class BucketPolicies:
    """The policy and public-access-block operations over one object tree, and the decision."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.client = tree.client
        self.acls = Acls(tree)
        # bucket -> (expiry on the monotonic clock, what it holds)
        self._cache: BucketCache[BucketAccess] = BucketCache()

    # -- the configuration ----------
    async def _read(self, bucket: str, name: bytes) -> bytes | None:
        ino = await self.tree.bucket_ino(bucket)
        try:
            raw: bytes = await self.client.getxattr(ino, name)
        except NoAttribute:
            return None
        return raw or None

    async def access(self, bucket: str) -> BucketAccess:
        """What the bucket holds; NoSuchBucket if it does not exist."""
        fresh, cached = self._cache.get(bucket)
        if fresh and cached is not None:
            return cached
        policy: s3policy.Policy | None = None
        raw = await self._read(bucket, XA_POLICY)
        if raw is not None:
            try:
                policy = s3policy.parse(raw, bucket)
            except S3Error as exc:
                # Refused when put, so only a change made through a mount gets here.  Deny all
                # but root rather than guess what was meant.
                log.warning("bucket %s: malformed policy, denying all but root: %s", bucket, exc.message)
                policy = _DENY_ALL
        public: dict[str, bool] = {}
        raw = await self._read(bucket, XA_PUBLIC_ACCESS)
        if raw is not None:
            try:
                decoded = json.loads(raw)
                public = {n: bool(decoded.get(n, True)) for n in s3xml.PUBLIC_ACCESS_FIELDS}
            except (ValueError, AttributeError):
                log.warning("bucket %s: malformed public access block, blocking all", bucket)
                public = dict.fromkeys(s3xml.PUBLIC_ACCESS_FIELDS, True)
        acl = decode_or_private(await self._read(bucket, XA_ACL), s3acl.ROOT_ID, bucket)
        found = BucketAccess(policy, public, acl)
        self._cache.put(bucket, found)
        return found

    # -- the decision ----------
    def context(
        self, c: Call, bucket: str, key: str, operation: str, *, versioned: bool = False
    ) -> s3policy.RequestContext:
        """The request as a policy sees it (``versioned``: it acts on one version of the key)."""
        action = s3policy.action_of(operation, versioned=versioned)
        principal = c.principal
        assert principal is not None
        now_s = time.time()
        values: dict[str, str] = {
            "aws:sourceip": source_ip(c.req.remote),
            "aws:securetransport": "true" if c.req.scheme == "https" else "false",
            "aws:currenttime": datetime.datetime.fromtimestamp(now_s, datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "aws:epochtime": str(int(now_s)),
        }
        if not principal.anonymous:
            values["aws:username"] = principal.access_key
            values["aws:userid"] = principal.access_key
        for header, name in (
            ("referer", "aws:referer"),
            ("user-agent", "aws:useragent"),
            ("x-amz-acl", "s3:x-amz-acl"),
        ):
            if header in c.headers:
                values[name] = c.headers[header]
        if action == "s3:ListBucket" or action == "s3:ListBucketVersions":
            for param in ("prefix", "delimiter", "max-keys"):
                if param in c.query:
                    values["s3:" + param] = c.query[param]
        return s3policy.RequestContext(
            action,
            s3policy.resource_of(bucket, key, action),
            None if principal.anonymous else principal.access_key,
            "",
            values,
        )

    async def authorize(
        self, c: Call, bucket: str, key: str, operation: str, *, versioned: bool = False
    ) -> None:
        """Refuse with AccessDenied (403) unless the request may do ``operation`` on ``bucket``
        (and ``key``; ``versioned``: on one version of it, which a policy judges as the
        *Version action, s3policy.VERSION_ACTIONS): the decision of the module docstring."""
        principal = c.principal
        if principal is None:
            raise S3Error("AccessDenied", "Access Denied", 403)
        if principal.root:
            return
        denied = S3Error("AccessDenied", _ANONYMOUS_DENIED if principal.anonymous else "Access Denied", 403)
        granted = allowed(principal, bucket, need_of(operation))
        if operation in ("CreateBucket", "ListBuckets"):
            # No bucket (yet) whose policy could speak: the grants decide.
            if not granted:
                raise denied
            return
        found = await self.access(bucket)
        policy = found.policy
        if policy is None and found.acl is None:
            if not granted:
                raise denied
            return
        if operation == "DeleteObjects":
            # Each key is judged on its own as DeleteObject (Objects.delete_many).  Let the request
            # in if some key may be deletable: by the grants or the bucket ACL (the same for every
            # key), or by a policy, which only the keys themselves can be judged against.
            if granted or policy is not None or await self._acl_allows(c, found, bucket, key, operation):
                return
            raise denied
        decision = s3policy.Decision.NONE
        if policy is not None:
            ignore = principal.anonymous and found.flag("RestrictPublicBuckets") and policy.public
            ctx = self.context(c, bucket, key, operation, versioned=versioned)
            decision = s3policy.evaluate(policy, ctx, ignore_everyone=ignore)
        if decision is s3policy.Decision.DENY:
            raise denied
        if granted or decision is s3policy.Decision.ALLOW:
            return
        if not await self._acl_allows(c, found, bucket, key, operation):
            raise denied

    async def _acl_allows(self, c: Call, found: BucketAccess, bucket: str, key: str, operation: str) -> bool:
        """Does the bucket's (or the object's) ACL give what ``operation`` needs?"""
        need = s3acl.ACL_NEEDS.get(operation)
        if need is None:
            return False
        on_object, permission = need
        if on_object:
            acl = await self.acls.object_acl(c, bucket, key, found.owner)
        else:
            acl = found.acl
        if acl is None:
            return False
        return acl.permits(who(c.principal), permission, ignore_public=found.flag("IgnorePublicAcls"))

    # -- ACL operations (the bucket's owner and public access block come from here) ----------
    async def get_bucket_acl(self, c: Call) -> Response:
        found = await self.access(c.bucket)
        return await self.acls.get_bucket(c, found.acl, found.owner)

    async def put_bucket_acl(self, c: Call) -> Response:
        found = await self.access(c.bucket)
        resp = await self.acls.put_bucket(c, found.owner, found.flag("BlockPublicAcls"))
        self._cache.drop(c.bucket)
        return resp

    async def get_object_acl(self, c: Call) -> Response:
        found = await self.access(c.bucket)
        return await self.acls.get_object(c, found.owner)

    async def put_object_acl(self, c: Call) -> Response:
        found = await self.access(c.bucket)
        return await self.acls.put_object(c, found.owner, found.flag("BlockPublicAcls"))

    async def form_acl(self, c: Call, name: str) -> dict[bytes, bytes]:
        """The ACL xattr a browser upload's canned ``acl`` field asks for."""
        owner = who(c.principal) or s3acl.ANONYMOUS_ID
        found = await self.access(c.bucket)
        return header_acl(c, owner, found.owner, found.flag("BlockPublicAcls"), {"x-amz-acl": name})

    async def creating_acl(self, c: Call) -> dict[bytes, bytes]:
        """The ACL xattr a creating request (:data:`daemon.s3.acl.CREATING`) stores with what it makes.
        A new bucket always gets one (recording its owner); an object only when asked."""
        owner = who(c.principal) or s3acl.ANONYMOUS_ID
        if c.operation == "CreateBucket":
            made = header_acl(c, owner, owner, False)
            return made or {XA_ACL: s3acl.encode(s3acl.private(owner))}
        found = await self.access(c.bucket)
        return header_acl(c, owner, found.owner, found.flag("BlockPublicAcls"))

    # -- bucket policy operations ----------
    async def get_policy(self, c: Call) -> Response:
        raw = await self._read(c.bucket, XA_POLICY)
        if raw is None:
            raise S3Error("NoSuchBucketPolicy", "The bucket policy does not exist", 404, BucketName=c.bucket)
        return Response(200, [("Content-Type", "application/json")], raw)

    async def put_policy(self, c: Call) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        body = await read_checked_body(c, s3policy.MAX_POLICY_BYTES + 1)
        policy = s3policy.parse(body, c.bucket)
        found = await self.access(c.bucket)
        if found.flag("BlockPublicPolicy") and policy.public:
            raise S3Error(
                "AccessDenied", "Access Denied: the bucket's BlockPublicPolicy refuses a public policy", 403
            )
        await self.client.setxattr(ino, XA_POLICY, body, 0)
        self._cache.drop(c.bucket)
        return Response(204)

    async def delete_policy(self, c: Call) -> Response:
        await self._remove(c.bucket, XA_POLICY)
        return Response(204)

    # -- public access block operations ----------
    async def get_public_access(self, c: Call) -> Response:
        self._cache.drop(c.bucket)  # a GET of the configuration reads it afresh
        found = await self.access(c.bucket)
        if not found.public_access:
            raise S3Error(
                "NoSuchPublicAccessBlockConfiguration",
                "The public access block configuration was not found",
                404,
                BucketName=c.bucket,
            )
        return xml(s3xml.public_access_block(found.public_access))

    async def put_public_access(self, c: Call) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        settings = s3xml.parse_public_access_block(await read_checked_body(c, MAX_PUBLIC_ACCESS_BYTES))
        await self.client.setxattr(ino, XA_PUBLIC_ACCESS, json.dumps(settings, sort_keys=True).encode(), 0)
        self._cache.drop(c.bucket)
        return Response(200)

    async def delete_public_access(self, c: Call) -> Response:
        await self._remove(c.bucket, XA_PUBLIC_ACCESS)
        return Response(204)

    async def _remove(self, bucket: str, name: bytes) -> None:
        ino = await self.tree.bucket_ino(bucket)
        try:
            await self.client.removexattr(ino, name)
        except NoAttribute:
            pass
        self._cache.drop(bucket)


# What an unreadable stored policy becomes: it denies every request it is asked about.
_DENY_ALL = s3policy.Policy(
    "2012-10-17",
    (s3policy.Statement("dfs-malformed", False, True, frozenset(), ("*",), False, ("*",), False, ()),),
)
