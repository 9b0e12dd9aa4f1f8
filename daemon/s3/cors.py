"""Bucket CORS: Put/Get/DeleteBucketCors, the unauthenticated preflight, and headers on answers.

The configuration is the xattr ``user.s3.cors`` of the bucket directory
(dfs/core/s3cors.py's JSON).  Browsers send a preflight ``OPTIONS`` without
credentials, so the router answers it before authentication
(:meth:`BucketCors.preflight`); a signed request carrying ``Origin`` gets the
matching rule's headers added to its answer, errors included
(:meth:`BucketCors.decorate`).

Both read the configuration on every such request, so it is cached per
bucket: a bounded dict whose entries live ``CACHE_TTL_S`` (what a change made
through another daemon may take to show) and are dropped at once when this
daemon changes the configuration.
"""

from __future__ import annotations

import logging

from daemon.http import Response
from daemon.s3.bucket_cache import BucketCache
from daemon.s3.call import Call, read_checked_body, xml
from daemon.s3.tree import ObjectTree
from dfs.core import s3cors, s3xml
from dfs.core.errors import DfsError, NoAttribute, S3Error

log = logging.getLogger("dfs.s3")

XA_CORS = b"user.s3.cors"
_NOT_ALLOWED = (
    "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, "
    "request method / Access-Control-Request-Method or Access-Control-Request-Headers are not "
    "whitelisted by the resource's CORS spec."
)


class BucketCors:
    """The CORS operations and checks over one object tree, with the per-bucket cache."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.client = tree.client
        # bucket -> (expiry on the monotonic clock, its rules or None for no configuration)
        self._cache: BucketCache[list[s3cors.CorsRule] | None] = BucketCache()

    # -- the configuration ----------
    async def rules(self, bucket: str) -> list[s3cors.CorsRule] | None:
        """The bucket's rules (None: no configuration); NoSuchBucket if it does not exist."""
        fresh, cached = self._cache.get(bucket)
        if fresh:
            return cached
        ino = await self.tree.bucket_ino(bucket)
        try:
            raw: bytes | None = await self.client.getxattr(ino, XA_CORS)
        except NoAttribute:
            raw = None
        rules: list[s3cors.CorsRule] | None = None
        if raw:
            try:
                rules = s3cors.decode(raw)
            except ValueError as exc:
                log.warning("bucket %s: ignoring a malformed CORS configuration: %s", bucket, exc)
        self._cache.put(bucket, rules)
        return rules

    async def get(self, c: Call) -> Response:
        self._cache.drop(c.bucket)  # a GET of the configuration reads it afresh
        rules = await self.rules(c.bucket)
        if not rules:
            raise S3Error(
                "NoSuchCORSConfiguration", "The CORS configuration does not exist", 404, BucketName=c.bucket
            )
        return xml(s3xml.cors(rules))

    async def put(self, c: Call) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        rules = s3xml.parse_cors(await read_checked_body(c, s3cors.MAX_CONFIG_BYTES))
        await self.client.setxattr(ino, XA_CORS, s3cors.encode(rules), 0)
        self._cache.drop(c.bucket)
        return Response(200)

    async def delete(self, c: Call) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        try:
            await self.client.removexattr(ino, XA_CORS)
        except NoAttribute:
            pass
        self._cache.drop(c.bucket)
        return Response(204)

    # -- browsers ----------
    async def preflight(self, c: Call) -> Response:
        """An OPTIONS preflight, unauthenticated: 200 with the first matching rule's headers, else 403."""
        c.operation = "PreflightCors"
        origin = c.headers.get("origin")
        method = c.headers.get("access-control-request-method")
        if not c.bucket:
            raise S3Error(
                "MethodNotAllowed", "The specified method is not allowed against this resource", 405
            )
        if not origin:
            raise S3Error("BadRequest", "Insufficient information. Origin request header needed.")
        if not method:
            raise S3Error("BadRequest", "Invalid Access-Control-Request-Method: null")
        rules = await self.rules(c.bucket)
        if not rules:
            raise S3Error("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket.", 403)
        wanted = s3cors.request_headers(c.headers.get("access-control-request-headers", ""))
        rule = s3cors.match_preflight(rules, origin, method, wanted)
        if rule is None:
            raise S3Error(
                "AccessForbidden",
                _NOT_ALLOWED,
                403,
                Method=method,
                ResourceType="OBJECT" if c.key else "BUCKET",
            )
        return Response(200, s3cors.preflight_headers(rule, origin, wanted), b"")

    async def decorate(self, c: Call, resp: Response) -> None:
        """Add the CORS headers of the rule matching a request with an Origin (never raises)."""
        origin = c.headers.get("origin")
        if not origin or not c.bucket or c.req.method == "OPTIONS":
            return
        try:
            rules = await self.rules(c.bucket)
        except DfsError:
            return  # no such bucket (or it cannot be read now): an answer without CORS headers
        if rules:
            rule = s3cors.match_request(rules, origin, c.req.method)
            if rule is not None:
                resp.headers.extend(s3cors.response_headers(rule, origin))
