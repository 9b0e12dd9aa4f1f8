"""Bucket operations: ListBuckets, CreateBucket, DeleteBucket, PutBucketVersioning.

A bucket is a top-level directory, created as a volume (so it can carry a
policy of its own); listing the buckets lists the root's directories whose
names are valid bucket names and the request's key may see (its own, those
it was granted; all of them for the root key).  A bucket a key creates is
recorded as that key's (dfs/core/s3grants.py).  PutBucketVersioning sets Enabled or
Suspended (daemon/meta/versions.py); MFA Delete is refused (501).
"""

from __future__ import annotations

from daemon.http import Response
from daemon.s3.acl import who
from daemon.s3.call import OWNER, Call, authorize, xml
from daemon.s3.objlock import ObjectLocking
from daemon.s3.tree import ObjectTree
from dfs.core import endpoints, s3acl, s3names, s3xml, sigv4
from dfs.core.errors import DfsError, NotEmpty, NotFound, S3Error
from dfs.core.namespace import ROOT_INO
from dfs.core.s3grants import Perm, visible


class Buckets:
    """The operations on buckets themselves (their contents are :mod:`daemon.s3.listing`'s)."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.client = tree.client
        self.s3 = tree.s3

    async def list_all(self, c: Call) -> Response:
        principal = c.principal
        assert principal is not None
        buckets: list[tuple[str, int]] = []
        async for entry in self.tree.entries(ROOT_INO):
            name = entry.name.decode("utf-8", "replace")
            if entry.attr.is_dir and s3names.is_bucket_name(name) and visible(principal, name):
                volume = await endpoints.META_GET_VOLUME.call(self.client, name)
                created = volume["created_ns"] if volume else entry.attr.mtime_ns
                buckets.append((name, created))
        # The caller's canonical id: ListBuckets shows what the caller owns or was granted.
        owner = who(principal) or OWNER[0]
        return xml(s3xml.list_buckets(buckets, owner_id=owner, owner_name=s3acl.display_name(owner)))

    async def create(self, c: Call) -> Response:
        s3names.check_bucket(c.bucket)
        body = await c.req.read_body(64 * 1024)
        c.bytes_in = len(body)
        region = s3xml.parse_create_bucket(body)
        if region and region not in (self.s3.region, "us-east-1"):
            raise S3Error("InvalidLocationConstraint", "The specified location-constraint is not valid", 400)
        try:
            await endpoints.META_CREATE_VOLUME.call(self.client, c.bucket, {}, 0o755, 0, 0)
        except DfsError as exc:
            if exc.code != "Exists":
                raise
            attr = await self.client.lookup(ROOT_INO, c.bucket.encode())
            if not attr.is_dir:
                raise S3Error("BucketAlreadyExists", "A file of that name exists at the root", 409) from None
            try:
                authorize(c, c.bucket, Perm.OWNER)
            except S3Error:
                raise S3Error(
                    "BucketAlreadyExists", "The requested bucket name is not available", 409
                ) from None
            raise S3Error(
                "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded", 409
            ) from None
        principal = c.principal
        if principal is not None and not principal.root:
            await endpoints.S3_BUCKET_OWN.call(self.client, c.bucket, principal.access_key)
        for name, value in c.acl_xattrs.items():  # its ACL, recording its owner (daemon/s3/acl.py)
            await self.client.setxattr(await self.tree.bucket_ino(c.bucket), name, value, 0)
        if c.headers.get("x-amz-bucket-object-lock-enabled", "").strip().lower() == "true":
            await ObjectLocking(self.tree).enable_at_creation(c)  # with versioning, as on AWS
        return Response(200, [("Location", "/" + c.bucket)])

    async def delete(self, c: Call) -> Response:
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        if await endpoints.S3_VERSIONS_LIST.call(self.client, bucket_ino, b"", b"", 0, 1):
            # As on AWS: non-current versions and delete markers keep a bucket from going.
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409)
        try:
            await self.client.rmdir(ROOT_INO, c.bucket.encode())
        except NotEmpty:
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409) from None
        except NotFound:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404) from None
        return Response(204)

    async def put_versioning(self, c: Call) -> Response:
        """PutBucketVersioning: Enabled or Suspended (once set, never back to "never enabled",
        as on AWS); MfaDelete Enabled is refused: there are no MFA devices here."""
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        body = await c.req.read_body(64 * 1024)
        c.bytes_in = len(body)
        assert c.auth is not None
        checks = sigv4.BodyChecks(c.headers, c.auth)
        checks.update(body)
        checks.finish(None)
        status, mfa_delete = s3xml.parse_versioning(body)
        if mfa_delete == "Enabled":
            raise S3Error(
                "NotImplemented",
                "MFA Delete is not supported: there are no MFA devices to require; "
                "restrict DeleteObject with grants instead",
                501,
            )
        await ObjectLocking(self.tree).check_versioning_change(c, bucket_ino, status)
        if status is not None:
            await endpoints.S3_VERSIONING_SET.call(self.client, bucket_ino, status)
        return Response(200)

    async def get_versioning(self, c: Call) -> Response:
        """GetBucketVersioning: the status, or no Status element if it was never enabled."""
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        return xml(s3xml.versioning(await endpoints.S3_VERSIONING_GET.call(self.client, bucket_ino)))
