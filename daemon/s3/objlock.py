"""S3 object lock: the bucket configuration, retention and legal hold operations, and the lock
a write asks for.

The metadata decides and enforces (daemon/meta/objlock.py): this module turns
requests into its calls and its answers into S3's.  A bucket gets object lock
at creation (``x-amz-bucket-object-lock-enabled: true``, which also enables
versioning, as on AWS) or by PutObjectLockConfiguration once its versioning is
Enabled; its versioning can then never be suspended.  A write (PutObject,
CopyObject, CompleteMultipartUpload, a POST upload) into a bucket with
versioning Enabled hands the metadata a lock request (:func:`stamp_request`):
the ``x-amz-object-lock-*`` headers' values, else the bucket's default
retention, which the metadata applies with its own clock in the commit.

Refusals are AWS's: lock headers or retention on a bucket without object lock
are 400 InvalidRequest; changing a running retention the wrong way, or
deleting a locked version, is 403 AccessDenied (the metadata's NotPermitted);
a GOVERNANCE retention gives way to ``x-amz-bypass-governance-retention:
true`` from a key with ``owner`` on the bucket (or a policy allowing
``s3:BypassGovernanceRetention``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from daemon.http import Response
from daemon.s3.call import Call, authorize, read_checked_body, xml
from dfs.core import endpoints, s3objlock
from dfs.core.errors import S3Error
from dfs.core.namespace import Attr
from dfs.core.s3grants import Perm
from dfs.core.s3objlock import XA_LOCK, XA_LOCK_REQUEST, LockConfig

if TYPE_CHECKING:
    from dfs.client.cluster import Client

# Lock documents are tiny; this bounds what is read of one.
MAX_LOCK_BODY_BYTES = 64 * 1024
BYPASS_HEADER = "x-amz-bypass-governance-retention"
_ENABLED = "Enabled"


class _Info(Protocol):
    @property
    def attr(self) -> Attr: ...


class _Tree(Protocol):
    """What this module needs of daemon/s3/tree.py's ObjectTree (which imports this module)."""

    @property
    def client(self) -> Client: ...

    async def bucket_ino(self, bucket: str) -> int: ...

    async def object(self, c: Call) -> tuple[_Info, bool]: ...


def _missing_config() -> S3Error:
    return S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration", 400)


async def bucket_config(client: Client, bucket_ino: int) -> LockConfig | None:
    raw = await endpoints.S3_OBJLOCK_CONFIG_GET.call(client, bucket_ino)
    return None if raw is None else LockConfig.from_wire(raw)


async def upload_request(client: Client, c: Call, bucket_ino: int, day_s: float) -> dict[bytes, bytes]:
    """CreateMultipartUpload: the lock its headers ask for, kept with the upload's xattrs until
    completion ({} without lock headers: the bucket's default then applies at completion)."""
    explicit = s3objlock.header_request(c.headers, time.time_ns())
    if explicit is None:
        return {}
    if await bucket_config(client, bucket_ino) is None:
        raise _missing_config()
    return {XA_LOCK_REQUEST: s3objlock.encode_request(explicit, day_s)}


async def stamp_request(
    client: Client, c: Call, bucket_ino: int, status: str | None, xattrs: dict[bytes, bytes], day_s: float
) -> None:
    """Add the lock request of a write about to be committed to ``xattrs`` (ObjectTree.commit)."""
    if XA_LOCK_REQUEST in xattrs:  # a multipart upload's, checked at its creation
        return
    explicit = s3objlock.header_request(c.headers, time.time_ns())
    if explicit is not None and (status != _ENABLED or await bucket_config(client, bucket_ino) is None):
        raise _missing_config()
    if explicit is not None or status == _ENABLED:
        xattrs[XA_LOCK_REQUEST] = s3objlock.encode_request(explicit, day_s)


def response_headers(xattrs: Mapping[bytes, bytes]) -> list[tuple[str, str]]:
    """The ``x-amz-object-lock-*`` headers of a GET or HEAD (from the object's mirror xattr)."""
    return s3objlock.response_headers(s3objlock.decode_lock(xattrs.get(XA_LOCK)))


async def bypass_allowed(c: Call) -> bool:
    """Whether the request asks to bypass GOVERNANCE retention and may: AccessDenied if it asks
    without the permission (``owner`` on the bucket, or a policy's s3:BypassGovernanceRetention)."""
    if c.headers.get(BYPASS_HEADER, "").strip().lower() != "true":
        return False
    if c.check is not None:
        await c.check(c.bucket, c.key, "BypassGovernanceRetention")
    else:
        authorize(c, c.bucket, Perm.OWNER)
    return True


class ObjectLocking:
    """The object lock operations over one object tree."""

    def __init__(self, tree: _Tree) -> None:
        self.tree = tree
        self.client = tree.client

    # -- the bucket configuration ----------
    async def get_config(self, c: Call) -> Response:
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        cfg = await bucket_config(self.client, bucket_ino)
        if cfg is None:
            raise S3Error(
                "ObjectLockConfigurationNotFoundError", "Object Lock configuration does not exist", 404
            )
        return xml(s3objlock.render_config(cfg))

    async def put_config(self, c: Call) -> Response:
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        cfg = s3objlock.parse_config(await read_checked_body(c, MAX_LOCK_BODY_BYTES))
        status = await endpoints.S3_VERSIONING_GET.call(self.client, bucket_ino)
        if status != _ENABLED:
            raise S3Error(
                "InvalidBucketState",
                "Versioning must be 'Enabled' on the bucket to apply a Object Lock configuration",
                409,
            )
        await endpoints.S3_OBJLOCK_CONFIG_SET.call(self.client, bucket_ino, cfg.to_wire())
        return Response(200)

    async def enable_at_creation(self, c: Call) -> None:
        """CreateBucket with ``x-amz-bucket-object-lock-enabled: true``: versioning and lock on."""
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        await endpoints.S3_VERSIONING_SET.call(self.client, bucket_ino, _ENABLED)
        await endpoints.S3_OBJLOCK_CONFIG_SET.call(self.client, bucket_ino, LockConfig().to_wire())

    async def check_versioning_change(self, c: Call, bucket_ino: int, status: str | None) -> None:
        """PutBucketVersioning: a bucket with object lock keeps versioning Enabled."""
        if status not in (None, _ENABLED) and await bucket_config(self.client, bucket_ino) is not None:
            raise S3Error(
                "InvalidBucketState",
                "An Object Lock configuration is present on this bucket, so the versioning state "
                "cannot be changed.",
                409,
            )

    # -- an object version's retention and legal hold ----------
    async def _target(self, c: Call) -> tuple[int, int, dict[str, Any] | None]:
        """(bucket inode, the version's inode, its lock) of the call's key and versionId."""
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        info, is_dir = await self.tree.object(c)
        if is_dir:
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=c.key)
        lock = await endpoints.S3_OBJLOCK_GET.call(self.client, info.attr.ino)
        return bucket_ino, info.attr.ino, lock

    async def get_retention(self, c: Call) -> Response:
        bucket_ino, _, lock = await self._target(c)
        if lock is None or lock.get("mode") is None:
            raise await self._no_lock(bucket_ino)
        return xml(s3objlock.render_retention(str(lock["mode"]), int(lock["until_ns"])))

    async def put_retention(self, c: Call) -> Response:
        bucket_ino, ino, _ = await self._target(c)
        mode, until_ns = s3objlock.parse_retention(await read_checked_body(c, MAX_LOCK_BODY_BYTES))
        if until_ns is not None and until_ns <= time.time_ns():
            raise S3Error("InvalidArgument", "The retain until date must be in the future!", 400)
        if await bucket_config(self.client, bucket_ino) is None:
            raise _missing_config()
        bypass = await bypass_allowed(c)
        await endpoints.S3_OBJLOCK_RETENTION_SET.call(self.client, bucket_ino, ino, mode, until_ns, bypass)
        return Response(200)

    async def get_legal_hold(self, c: Call) -> Response:
        bucket_ino, _, lock = await self._target(c)
        if lock is None:
            raise await self._no_lock(bucket_ino)
        return xml(s3objlock.render_legal_hold(bool(lock["hold"])))

    async def put_legal_hold(self, c: Call) -> Response:
        bucket_ino, ino, _ = await self._target(c)
        hold = s3objlock.parse_legal_hold(await read_checked_body(c, MAX_LOCK_BODY_BYTES))
        if await bucket_config(self.client, bucket_ino) is None:
            raise _missing_config()
        await endpoints.S3_OBJLOCK_HOLD_SET.call(self.client, bucket_ino, ino, hold)
        return Response(200)

    async def _no_lock(self, bucket_ino: int) -> S3Error:
        """What a Get of a lock the object does not have answers (as AWS: by the bucket's)."""
        if await bucket_config(self.client, bucket_ino) is None:
            return _missing_config()
        return S3Error(
            "NoSuchObjectLockConfiguration",
            "The specified object does not have a ObjectLock configuration",
            404,
        )
