"""What every S3 operation shares: the request being served and the shapes of its answer.

:class:`Call` carries one request from the router to the operation that
serves it (parsed bucket and key, query, headers, the authenticated
signature) and back (the operation name and byte counts the metrics record,
extra response headers).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from daemon.http import Request, Response
from dfs.core import s3acl, sigv4
from dfs.core.errors import S3Error
from dfs.core.replicas import Policy
from dfs.core.s3grants import Perm, Principal, allowed
from dfs.core.s3sse import WriteSse

# The owner a bucket, object or upload is reported with when nothing better is known: the root's.
OWNER = s3acl.owner_of(s3acl.ROOT_ID)
# Bound on XML request bodies (DeleteObjects, CompleteMultipartUpload): they are read whole.
MAX_XML_BYTES = 4 * 1024 * 1024


class AccessCheck(Protocol):
    """The router's full access decision for ``operation`` on ``bucket``/``key`` (``versioned``:
    on one version of it, judged as the *Version action); AccessDenied if refused."""

    def __call__(
        self, bucket: str, key: str, operation: str, *, versioned: bool = False
    ) -> Awaitable[None]: ...


@dataclass
class Call:
    """One request being served."""

    req: Request
    request_id: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: dict[str, str]
    resource: str
    operation: str = "Unknown"
    auth: sigv4.AuthContext | None = None
    # Who signed it, with the grants that decide what it may touch (None: nothing yet).
    principal: Principal | None = None
    bytes_in: int = 0
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    # Replication factor and consistency level of the bucket (None: one node, nothing to choose).
    policy: Policy | None = None
    policy_known: bool = False
    # The full access decision (grants, bucket policy) as (bucket, key, operation) -> None or
    # AccessDenied, for what an operation touches beyond its own bucket and key (a copy's
    # source, each key of DeleteObjects).  None: the grants alone decide (authorize()).
    check: AccessCheck | None = None
    # The ACL xattr x-amz-acl / x-amz-grant-* ask the object or bucket being made to carry.
    acl_xattrs: dict[bytes, bytes] = field(default_factory=dict)
    # (ID, DisplayName) of the bucket's owner, for the listings that show it (set by the router).
    owner: tuple[str, str] = OWNER
    # How this request's blocks are encrypted (S3 SSE, daemon/s3/sse.py); None: as the volume says.
    sse: WriteSse | None = None


def xml(body: bytes) -> Response:
    """A 200 answer carrying an XML document."""
    return Response(200, [("Content-Type", "application/xml")], body)


def authorize(c: Call, bucket: str, need: Perm) -> None:
    """Refuse with AccessDenied (403) unless the request's key may do what needs ``need`` on
    ``bucket`` (dfs/core/s3grants.py decides)."""
    principal = c.principal
    if principal is None or not allowed(principal, bucket, need):
        raise S3Error("AccessDenied", "Access Denied", 403)


async def read_checked_body(c: Call, limit_bytes: int) -> bytes:
    """The whole (small) request body, its Content-MD5 / checksum / payload hash verified."""
    body = await c.req.read_body(limit_bytes)
    c.bytes_in = len(body)
    assert c.auth is not None
    checks = sigv4.BodyChecks(c.headers, c.auth)
    checks.update(body)
    checks.finish(None)
    return body
