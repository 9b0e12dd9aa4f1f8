"""What every S3 operation shares: the request being served and the shapes of its answer.

:class:`Call` carries one request from the router to the operation that
serves it (parsed bucket and key, query, headers, the authenticated
signature) and back (the operation name and byte counts the metrics record,
extra response headers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from daemon.http import Request, Response
from dfs.core import sigv4
from dfs.core.errors import S3Error
from dfs.core.replicas import Policy
from dfs.core.s3grants import Perm, Principal, allowed

# The owner every bucket, object and upload is reported with: dfs has no per-object ownership.
OWNER = ("dfs", "dfs")
# Bound on XML request bodies (DeleteObjects, CompleteMultipartUpload): they are read whole.
MAX_XML_BYTES = 4 * 1024 * 1024


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
    check: Callable[[str, str, str], Awaitable[None]] | None = None
    # The ACL xattr x-amz-acl / x-amz-grant-* ask the object or bucket being made to carry.
    acl_xattrs: dict[bytes, bytes] = field(default_factory=dict)


def xml(body: bytes) -> Response:
    """A 200 answer carrying an XML document."""
    return Response(200, [("Content-Type", "application/xml")], body)


def authorize(c: Call, bucket: str, need: Perm) -> None:
    """Refuse with AccessDenied (403) unless the request's key may do what needs ``need`` on
    ``bucket`` (dfs/core/s3grants.py decides)."""
    principal = c.principal
    if principal is None or not allowed(principal, bucket, need):
        raise S3Error("AccessDenied", "Access Denied", 403)
