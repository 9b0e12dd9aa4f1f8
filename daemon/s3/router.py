"""The S3 API's entry point: a request in, parsed, authenticated, routed to its operation, answered.

:class:`S3Api` is the :mod:`daemon.http` handler.  It turns the request into
a :class:`~daemon.s3.call.Call` (path-style or virtual-host bucket, key,
query), checks its signature (:mod:`daemon.s3.auth`), names the S3
operation and hands it to the module serving it (buckets, objects, listing,
multipart), then answers any error in S3's XML format and reports the
request to the metrics observer.  Sub-resources dfs does not implement get a
fixed "nothing configured" answer on GET and 501 otherwise.
"""

from __future__ import annotations

import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping

import trio

from daemon.http import BodyError, Request, Response
from daemon.s3.acl import CREATING
from daemon.s3.auth import KeyRing
from daemon.s3.buckets import Buckets
from daemon.s3.call import OWNER, AccessCheck, Call, xml
from daemon.s3.cors import BucketCors
from daemon.s3.lifecycle import BucketLifecycle
from daemon.s3.listing import Listing
from daemon.s3.multipart import Multipart
from daemon.s3.objects import Objects
from daemon.s3.objlock import ObjectLocking
from daemon.s3.policy import BucketPolicies
from daemon.s3.post import PostUploads, is_form_upload
from daemon.s3.tagging import Tagging
from daemon.s3.tree import ObjectTree
from dfs.client.cluster import Client
from dfs.core import s3acl, s3xml, sigv4
from dfs.core.config import Config
from dfs.core.errors import DfsError, S3Error, s3_code
from dfs.core.s3grants import ANONYMOUS

log = logging.getLogger("dfs.s3")

# Sub-resources answered with a fixed "nothing configured" reply: GET only.
_BUCKET_STUB_404 = {
    "policy": ("NoSuchBucketPolicy", "The bucket policy does not exist"),
    "object-lock": ("ObjectLockConfigurationNotFoundError", "Object Lock configuration does not exist"),
    "encryption": (
        "ServerSideEncryptionConfigurationNotFoundError",
        "The server side encryption configuration was not found",
    ),
    "website": ("NoSuchWebsiteConfiguration", "The specified bucket does not have a website configuration"),
    "replication": ("ReplicationConfigurationNotFoundError", "The replication configuration was not found"),
    "ownershipControls": ("OwnershipControlsNotFoundError", "The bucket ownership controls were not found"),
    "publicAccessBlock": (
        "NoSuchPublicAccessBlockConfiguration",
        "The public access block configuration was not found",
    ),
}
# Any of these in a query selects a sub-resource we do not implement for writes (or at all).
_SUBRESOURCES = frozenset(
    {
        *_BUCKET_STUB_404,
        "tagging",
        "cors",
        "lifecycle",
        "acl",
        "location",
        "versioning",
        "versions",
        "uploads",
        "uploadId",
        "delete",
        "logging",
        "notification",
        "requestPayment",
        "accelerate",
        "analytics",
        "inventory",
        "metrics",
        "intelligent-tiering",
        "restore",
        "select",
        "torrent",
        "retention",
        "legal-hold",
        "attributes",
        "partNumber",
    }
)


# Operations whose answer names the bucket's owner (as every object's and upload's).
_SHOWS_OWNER = frozenset(
    {"ListObjects", "ListObjectsV2", "ListObjectVersions", "ListParts", "ListMultipartUploads"}
)

Observer = Callable[[str, int, float, int, int], None]
# What routing a request yields: the operation's name and what serves it once authorized.
Plan = tuple[str, Callable[[], Awaitable[Response]]]


class S3Api:
    """An ``daemon.http`` handler serving the S3 API over one filesystem client."""

    def __init__(self, client: Client, cfg: Config, keys: KeyRing, observe: Observer | None = None) -> None:
        self.client = client
        self.cfg = cfg
        self.s3 = cfg.s3
        self.keys = keys
        self._observe = observe
        self.tree = ObjectTree(client, cfg)
        self.buckets = Buckets(self.tree)
        self.objects = Objects(self.tree)
        self.listing = Listing(self.tree)
        self.multipart = Multipart(self.tree, self.objects)
        self.tagging = Tagging(self.tree)
        self.cors = BucketCors(self.tree)
        self.lifecycle = BucketLifecycle(self.tree, self.objects, self.multipart, self.listing)
        self.policies = BucketPolicies(self.tree)
        self.objlock = ObjectLocking(self.tree)
        self.post = PostUploads(self.tree, keys, self.policies)

    @property
    def nursery(self) -> trio.Nursery | None:
        """Where GET read-ahead tasks run (the server's nursery); None reads without read-ahead."""
        return self.tree.nursery

    @nursery.setter
    def nursery(self, nursery: trio.Nursery | None) -> None:
        self.tree.nursery = nursery

    async def apply_lifecycle(self) -> int:
        """One run of the bucket lifecycle worker; returns how many objects and uploads it removed."""
        return await self.lifecycle.step()

    async def expire_uploads(self) -> int:
        """Remove multipart uploads older than ``upload_expiry_s``; returns how many."""
        return await self.multipart.expire()

    # -- entry point ----------
    async def handle(self, req: Request) -> Response:
        started = time.monotonic()
        request_id = secrets.token_hex(8).upper()
        call: Call | None = None
        try:
            call = self._parse(req, request_id)
            call.check = self._checker(call)
            if req.method == "OPTIONS":
                # A CORS preflight: browsers send it without credentials, and AWS answers it so.
                return await self._finish(req, call, request_id, started, await self.cors.preflight(call))
            if is_form_upload(call):
                # A browser upload (POST Object): the signature is in the form, not the headers.
                return await self._finish(req, call, request_id, started, await self.post.upload(call))
            view = sigv4.RequestView(req.method, req.path, req.query, call.headers)
            vhost_bucket = call.bucket if self._vhost(call.headers) else None
            if sigv4.is_signed(view):
                call.auth, call.principal = await self.keys.authenticate(
                    view, vhost_bucket, region=self.s3.region, max_skew_s=self.s3.max_clock_skew_s
                )
            else:
                # Anonymous: nothing to verify, its payload unsigned; only a bucket policy lets it in.
                call.auth = sigv4.AuthContext("", "anonymous", sigv4.UNSIGNED_PAYLOAD, "", "")
                call.principal = ANONYMOUS
            resp = await self._route(call)
        except Exception as exc:
            resp = self._failure(req, call, request_id, _leaf(exc))
        return await self._finish(req, call, request_id, started, resp)

    async def _finish(
        self, req: Request, call: Call | None, request_id: str, started: float, resp: Response
    ) -> Response:
        """Add the headers every answer carries (CORS ones too), and report the request."""
        if call is not None:
            await self.cors.decorate(call, resp)
        resp.headers.append(("x-amz-request-id", request_id))
        resp.headers.append(("x-amz-id-2", request_id))
        if call is not None:
            resp.headers.extend(call.extra_headers)
        if self._observe is not None:
            out = resp.content_length if resp.content_length is not None else 0
            self._observe(
                call.operation if call else "Unknown",
                resp.status,
                time.monotonic() - started,
                call.bytes_in if call else 0,
                out,
            )
        return resp

    def _failure(self, req: Request, call: Call | None, request_id: str, exc: BaseException) -> Response:
        if isinstance(exc, S3Error):
            return self._error(req, call, request_id, exc.s3_code, exc.message, exc.status, exc.extra)
        if isinstance(exc, BodyError):
            code = {408: "RequestTimeout", 413: "EntityTooLarge"}.get(exc.status, "IncompleteBody")
            return self._error(req, call, request_id, code, str(exc), exc.status, {})
        if isinstance(exc, DfsError):
            code, status = s3_code(exc)
            if status >= 500:
                log.warning("s3 %s %s failed: %s", req.method, req.path[:200], exc.message)
            return self._error(req, call, request_id, code, exc.message, status, {})
        log.error("s3 %s %s failed", req.method, req.path[:200], exc_info=exc)
        return self._error(
            req, call, request_id, "InternalError", "We encountered an internal error", 500, {}
        )

    def _error(
        self,
        req: Request,
        call: Call | None,
        request_id: str,
        code: str,
        message: str,
        status: int,
        extra: Mapping[str, str],
    ) -> Response:
        headers: list[tuple[str, str]] = []
        if req.method == "HEAD":
            return Response(status, headers)
        body = s3xml.error(
            code, message, resource=call.resource if call else req.path, request_id=request_id, extra=extra
        )
        headers.append(("Content-Type", "application/xml"))
        return Response(status, headers, body)

    def error_response(self, status: int, message: str) -> Response:
        """Protocol-level errors (bad HTTP) in S3's format, for the HTTP server."""
        code = {
            400: "BadRequest",
            408: "RequestTimeout",
            413: "EntityTooLarge",
            431: "RequestHeaderSectionTooLarge",
        }
        body = s3xml.error(
            code.get(status, "InternalError"), message, resource="", request_id=secrets.token_hex(8).upper()
        )
        return Response(status, [("Content-Type", "application/xml")], body)

    # -- parsing ----------
    def _vhost(self, headers: Mapping[str, str]) -> bool:
        domain = self.s3.domain
        host = headers.get("host", "").rsplit(":", 1)[0].lower() if headers.get("host") else ""
        return bool(domain) and host.endswith("." + domain.lower())

    def _parse(self, req: Request, request_id: str) -> Call:
        headers = req.header_map()
        try:
            path = urllib.parse.unquote(req.path, errors="strict")
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.") from None
        # Percent-decoding only: "+" is a literal plus in S3 queries (and in what SigV4 signed).
        query: dict[str, str] = {}
        for part in req.query.split("&"):
            if part:
                name, _, value = part.partition("=")
                query.setdefault(urllib.parse.unquote(name), urllib.parse.unquote(value))
        if self._vhost(headers):
            host = headers["host"].rsplit(":", 1)[0].lower()
            bucket = host[: -len(self.s3.domain) - 1]
            key = path[1:] if path.startswith("/") else path
        else:
            rest = path[1:] if path.startswith("/") else path
            bucket, _, key = rest.partition("/")
        return Call(req, request_id, bucket, key, query, headers, path)

    # -- routing ----------
    async def _route(self, c: Call) -> Response:
        """Name the operation, check the key may do it on the bucket, then serve it.

        Every operation passes the one check here (ListBuckets filters instead, CreateBucket
        makes a bucket of the key's own); a copy checks its source bucket too
        (Objects.copy_source)."""
        if not c.bucket:
            if c.req.method == "GET":
                c.operation = "ListBuckets"
                if c.principal is None or c.principal.anonymous:
                    raise S3Error("AccessDenied", "anonymous access is not allowed", 403)
                return await self.buckets.list_all(c)
            raise S3Error(
                "MethodNotAllowed", "The specified method is not allowed against this resource", 405
            )
        c.operation, serve = self._bucket_route(c) if not c.key else self._object_route(c)
        try:
            # ``?versionId=`` acts on one version: a policy judges s3:GetObjectVersion and the like.
            versioned = "versionId" in c.query
            await self.policies.authorize(c, c.bucket, c.key, c.operation, versioned=versioned)
            if c.operation in CREATING:
                c.acl_xattrs = await self.policies.creating_acl(c)
            if c.operation in _SHOWS_OWNER:  # the bucket's owner, from its ACL (cached)
                c.owner = s3acl.owner_of((await self.policies.access(c.bucket)).owner)
        except S3Error:
            # A bucket that does not exist is NoSuchBucket to anyone, as on AWS (but one an
            # anonymous caller may not create is simply refused).
            if c.operation != "CreateBucket":
                await self.tree.bucket_ino(c.bucket)
            raise
        resp = await serve()
        await self.lifecycle.decorate(c, resp)
        return resp

    def _bucket_route(self, c: Call) -> Plan:
        m, q = c.req.method, c.query
        sub = [k for k in q if k in _SUBRESOURCES]
        if m == "PUT" and not sub:
            return "CreateBucket", lambda: self.buckets.create(c)
        if m == "PUT" and sub == ["versioning"]:
            return "PutBucketVersioning", lambda: self.buckets.put_versioning(c)
        if m == "DELETE" and not sub:
            return "DeleteBucket", lambda: self.buckets.delete(c)
        if m == "HEAD" and not sub:
            return "HeadBucket", lambda: self._head_bucket(c)
        if m == "POST" and "delete" in q:
            return "DeleteObjects", lambda: self.objects.delete_many(c)
        if sub == ["tagging"] and m in ("GET", "PUT", "DELETE"):
            t = self.tagging
            serve = {"GET": t.get_bucket, "PUT": t.put_bucket, "DELETE": t.delete_bucket}[m]
            return f"{m.title()}BucketTagging", lambda: serve(c)
        if sub == ["cors"] and m in ("GET", "PUT", "DELETE"):
            serve = {"GET": self.cors.get, "PUT": self.cors.put, "DELETE": self.cors.delete}[m]
            return f"{m.title()}BucketCors", lambda: serve(c)
        if sub == ["lifecycle"] and m in ("GET", "PUT", "DELETE"):
            lc = self.lifecycle
            op, serve = {
                "GET": ("GetBucketLifecycleConfiguration", lc.get),
                "PUT": ("PutBucketLifecycleConfiguration", lc.put),
                "DELETE": ("DeleteBucketLifecycle", lc.delete),
            }[m]
            return op, lambda: serve(c)
        if sub == ["object-lock"] and m in ("GET", "PUT"):
            lock = self.objlock
            op, serve = {
                "GET": ("GetObjectLockConfiguration", lock.get_config),
                "PUT": ("PutObjectLockConfiguration", lock.put_config),
            }[m]
            return op, lambda: serve(c)
        if sub == ["acl"] and m in ("GET", "PUT"):
            if m == "GET":  # the name (and what it needs of grants) it had as a stub
                return "GetBucket.acl", lambda: self.policies.get_bucket_acl(c)
            return "PutBucketAcl", lambda: self.policies.put_bucket_acl(c)
        if sub == ["policy"] and m in ("GET", "PUT", "DELETE"):
            p = self.policies
            serve = {"GET": p.get_policy, "PUT": p.put_policy, "DELETE": p.delete_policy}[m]
            return f"{m.title()}BucketPolicy", lambda: serve(c)
        if sub == ["publicAccessBlock"] and m in ("GET", "PUT", "DELETE"):
            p = self.policies
            serve = {
                "GET": p.get_public_access,
                "PUT": p.put_public_access,
                "DELETE": p.delete_public_access,
            }[m]
            return f"{m.title()}PublicAccessBlock", lambda: serve(c)
        if sub == ["encryption"] and m in ("GET", "PUT", "DELETE"):
            sse = self.tree.sse  # daemon/s3/sse.py; GET keeps the name (and grants) of its stub
            op, serve = {
                "GET": ("GetBucket.encryption", sse.get_config),
                "PUT": ("PutBucketEncryption", sse.put_config),
                "DELETE": ("DeleteBucketEncryption", sse.delete_config),
            }[m]
            return op, lambda: serve(c)
        if m == "GET":
            if not sub:
                if q.get("list-type") == "2":
                    return "ListObjectsV2", lambda: self.listing.list_objects(c, v2=True)
                return "ListObjects", lambda: self.listing.list_objects(c, v2=False)
            name = sub[0]
            if name == "uploads":
                return "ListMultipartUploads", lambda: self._in_bucket(c, self.multipart.list_uploads)
            if name == "versions":
                return "ListObjectVersions", lambda: self._in_bucket(c, self.listing.list_versions)
            if name in ("location", "versioning", "acl") or name in _BUCKET_STUB_404:
                return f"GetBucket.{name}", lambda: self._bucket_sub(c, name)
        raise S3Error(
            "NotImplemented", "A header or query you provided implies functionality not implemented", 501
        )

    def _checker(self, c: Call) -> AccessCheck:
        async def check(bucket: str, key: str, operation: str, *, versioned: bool = False) -> None:
            await self.policies.authorize(c, bucket, key, operation, versioned=versioned)

        return check

    async def _head_bucket(self, c: Call) -> Response:
        await self.tree.bucket_ino(c.bucket)
        return Response(200, [("x-amz-bucket-region", self.s3.region)])

    async def _in_bucket(self, c: Call, serve: Callable[[Call], Awaitable[Response]]) -> Response:
        await self.tree.bucket_ino(c.bucket)
        return await serve(c)

    async def _bucket_sub(self, c: Call, name: str) -> Response:
        """GET of a bucket sub-resource: fixed answers (dfs configures none of them)."""
        await self.tree.bucket_ino(c.bucket)
        if name == "location":
            return xml(s3xml.location(self.s3.region))
        if name == "versioning":
            return await self.buckets.get_versioning(c)
        if name == "acl":
            return xml(s3xml.acl(*OWNER))
        code, message = _BUCKET_STUB_404[name]
        raise S3Error(code, message, 404)

    def _object_route(self, c: Call) -> Plan:
        m, q = c.req.method, c.query
        sub = [k for k in q if k in _SUBRESOURCES and k not in ("uploadId", "partNumber")]
        upload = q.get("uploadId")
        copying = "x-amz-copy-source" in c.headers
        if m == "PUT" and not sub:
            if upload is not None:
                op = "UploadPartCopy" if copying else "UploadPart"
                return op, lambda: self.multipart.upload_part(c, upload)
            if copying:
                return "CopyObject", lambda: self.objects.copy(c)
            return "PutObject", lambda: self.objects.put(c)
        if m in ("GET", "HEAD") and not sub:
            if upload is not None and m == "GET":
                return "ListParts", lambda: self.multipart.list_parts(c, upload)
            head = m == "HEAD"
            return ("HeadObject" if head else "GetObject"), lambda: self.objects.get(c, head=head)
        if m == "DELETE" and not sub:
            if upload is not None:
                return "AbortMultipartUpload", lambda: self.multipart.abort(c, upload)
            return "DeleteObject", lambda: self.objects.delete(c)
        if m == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload", lambda: self.multipart.create(c)
            if upload is not None and not sub:
                return "CompleteMultipartUpload", lambda: self.multipart.complete(c, upload)
        if m == "GET" and sub == ["acl"]:
            return "GetObjectAcl", lambda: self.policies.get_object_acl(c)
        if m == "PUT" and sub == ["acl"]:
            return "PutObjectAcl", lambda: self.policies.put_object_acl(c)
        if sub == ["tagging"] and m in ("GET", "PUT", "DELETE"):
            t = self.tagging
            serve = {"GET": t.get_object, "PUT": t.put_object, "DELETE": t.delete_object}[m]
            return f"{m.title()}ObjectTagging", lambda: serve(c)
        if sub in (["retention"], ["legal-hold"]) and m in ("GET", "PUT"):
            lock = self.objlock
            op, serve = {
                ("GET", "retention"): ("GetObjectRetention", lock.get_retention),
                ("PUT", "retention"): ("PutObjectRetention", lock.put_retention),
                ("GET", "legal-hold"): ("GetObjectLegalHold", lock.get_legal_hold),
                ("PUT", "legal-hold"): ("PutObjectLegalHold", lock.put_legal_hold),
            }[(m, sub[0])]
            return op, lambda: serve(c)
        raise S3Error(
            "NotImplemented", "A header or query you provided implies functionality not implemented", 501
        )

    async def _object_sub(self, c: Call, body: bytes) -> Response:
        await self.tree.object(c)
        return xml(body)


def _leaf(exc: BaseException) -> BaseException:
    """The error to report from what a nursery raised: its first dfs or body error, if any."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        for leaf in leaves:
            if isinstance(leaf, (DfsError, BodyError)):
                return leaf
        return leaves[0] if leaves else exc
    return exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for sub in group.exceptions:
        out.extend(_leaves(sub) if isinstance(sub, BaseExceptionGroup) else [sub])
    return out
