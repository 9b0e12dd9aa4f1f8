"""The S3-compatible API: requests in, filesystem operations out.

Mapping (DESIGN.md, "S3 view"): a bucket is a top-level directory, key
``a/b/c`` is the path ``a/b/c`` inside it.  Directories are listed as
CommonPrefixes; an empty directory is also a zero-byte ``d/`` object, and a
zero-byte PUT of ``d/`` makes one.  Keys that cannot be paths (``//``, ``.``,
``..``, NUL, over-long components) are refused with 400, and a write whose
path clashes with the tree (``a`` is a file and ``a/b`` is written, or the
key names a directory) is refused with **409 PathConflict** before anything
is written.

Objects are written aside: the body streams into blocks (dfs.client stores
each durably), then one metadata transaction creates the new inode with its
blocks and xattrs and links it over the old name.  A reader sees the old
object or the new one, never a mixture; a crash before the commit leaves
only unreferenced chunks, which the orphan sweep collects.

Object attributes live in xattrs, so they are visible through the mount:
``user.s3.etag`` (``"<etag> <size> <mtime_ns>"``: the stamp makes an ETag
stale once the file is changed through the mount), ``user.s3.content-type``,
``user.s3.meta.<name>`` (x-amz-meta-*), ``user.s3.header.<name>`` (the other
stored headers) and ``user.s3.checksum`` (``"<ALGORITHM> <base64>"``).  A file
written through the mount has no ETag of its own: it gets a stable synthetic
one of the multipart form (``<hex>-1``), which clients do not take for an MD5.

There is no versioning: every object is its one version, ``null``.  So
ListObjectVersions is a ListObjects page with VersionId ``null`` on every
entry, ``versionId=null`` on a request names the object itself, and any other
version id gets AWS's answer for a version that does not exist (or is
malformed).  PutBucketVersioning with Enabled is refused (501).

Multipart uploads live in the metadata's internal ``uploads`` directory (not
reachable from the root): ``<upload-id>/info`` holds the target and the
object's attributes, ``<upload-id>/<part>`` each part.  Completion reuses the
parts' chunks wherever they are block-aligned (8 MiB parts of boto3 and the
aws CLI are) and re-blocks the rest.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from daemon import s3_io
from daemon.http import BodyError, Request, Response
from dfs import endpoints, s3names, s3xml, sigv4
from dfs.chunkio import Policy
from dfs.client import Client
from dfs.config import Config
from dfs.errors import (
    DfsError,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    S3Error,
    s3_code,
)
from dfs.meta import ROOT_INO, Attr, DirEntry, FileMap
from dfs.s3xml import ObjectEntry

log = logging.getLogger("dfs.s3")

XA_ETAG = b"user.s3.etag"
XA_TYPE = b"user.s3.content-type"
XA_META = b"user.s3.meta."
XA_HEADER = b"user.s3.header."
XA_CHECKSUM = b"user.s3.checksum"
_S3_PREFIX = b"user.s3."
_EMPTY_MD5 = hashlib.md5(b"").hexdigest()
_MIN_PART_BYTES = 5 * 1024 * 1024
_MAX_PARTS = 10000
_MAX_XML_BYTES = 4 * 1024 * 1024
_DEFAULT_TYPE = "binary/octet-stream"
_OWNER = ("dfs", "dfs")
_INFO = b"info"
_PAGE = 1000  # directory entries fetched per list_dir call

# Sub-resources answered with a fixed "nothing configured" reply: GET only.
_BUCKET_STUB_404 = {
    "policy": ("NoSuchBucketPolicy", "The bucket policy does not exist"),
    "lifecycle": ("NoSuchLifecycleConfiguration", "The lifecycle configuration does not exist"),
    "cors": ("NoSuchCORSConfiguration", "The CORS configuration does not exist"),
    "tagging": ("NoSuchTagSet", "The TagSet does not exist"),
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
    bytes_in: int = 0
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    # Replication factor and consistency level of the bucket (None: one node, nothing to choose).
    policy: Policy | None = None
    policy_known: bool = False


@dataclass(frozen=True)
class ObjectInfo:
    attr: Attr
    etag: str
    content_type: str
    meta: dict[str, str]
    headers: dict[str, str]
    checksum: tuple[str, str] | None
    xattrs: dict[bytes, bytes]


class KeyRing:
    """Who may sign requests: the root key, the configured key and keys made with `dfs s3 key`."""

    def __init__(
        self,
        static: Mapping[str, str],
        lookup: Callable[[str], str | None],
        remote: Callable[[sigv4.RequestView, str | None], Awaitable[sigv4.AuthContext]] | None = None,
    ) -> None:
        self._static = dict(static)
        self._lookup = lookup
        # On a secondary: the primary verifies requests signed with keys only it holds.
        self.remote = remote

    def secret_for(self, access_key: str) -> str | None:
        secret = self._static.get(access_key)
        if secret is not None:
            return secret
        try:
            return self._lookup(access_key)
        except DfsError:
            return None


Observer = Callable[[str, int, float, int, int], None]


class S3Api:
    """An ``daemon.http`` handler serving the S3 API over one filesystem client."""

    def __init__(self, client: Client, cfg: Config, keys: KeyRing, observe: Observer | None = None) -> None:
        self.client = client
        self.cfg = cfg
        self.s3 = cfg.s3
        self.keys = keys
        self._observe = observe
        self._uploads_ino: int | None = None
        # Where GET read-ahead tasks run (the server's nursery); None reads without read-ahead.
        self.nursery: trio.Nursery | None = None

    # -- entry point ----------
    async def handle(self, req: Request) -> Response:
        started = time.monotonic()
        request_id = secrets.token_hex(8).upper()
        call: Call | None = None
        try:
            call = self._parse(req, request_id)
            view = sigv4.RequestView(req.method, req.path, req.query, call.headers)
            vhost_bucket = call.bucket if self._vhost(call.headers) else None
            try:
                call.auth = sigv4.authenticate(
                    view,
                    self.keys.secret_for,
                    now_s=time.time(),
                    region=self.s3.region,
                    max_skew_s=self.s3.max_clock_skew_s,
                    vhost_bucket=vhost_bucket,
                )
            except S3Error as exc:
                if exc.s3_code != "InvalidAccessKeyId" or self.keys.remote is None:
                    raise
                call.auth = await self.keys.remote(view, vhost_bucket)
            resp = await self._route(call)
        except Exception as exc:
            resp = self._failure(req, call, request_id, _leaf(exc))
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
        m = c.req.method
        q = c.query
        if not c.bucket:
            if m == "GET":
                c.operation = "ListBuckets"
                return await self._list_buckets(c)
            raise S3Error(
                "MethodNotAllowed", "The specified method is not allowed against this resource", 405
            )
        if not c.key:
            return await self._bucket_route(c, m, q)
        return await self._object_route(c, m, q)

    async def _bucket_route(self, c: Call, m: str, q: dict[str, str]) -> Response:
        sub = [k for k in q if k in _SUBRESOURCES]
        if m == "PUT" and not sub:
            c.operation = "CreateBucket"
            return await self._create_bucket(c)
        if m == "PUT" and sub == ["versioning"]:
            c.operation = "PutBucketVersioning"
            return await self._put_versioning(c)
        if m == "DELETE" and not sub:
            c.operation = "DeleteBucket"
            return await self._delete_bucket(c)
        if m == "HEAD" and not sub:
            c.operation = "HeadBucket"
            await self._bucket_ino(c.bucket)
            return Response(200, [("x-amz-bucket-region", self.s3.region)])
        if m == "POST" and "delete" in q:
            c.operation = "DeleteObjects"
            return await self._delete_objects(c)
        if m == "GET":
            if not sub:
                if q.get("list-type") == "2":
                    c.operation = "ListObjectsV2"
                    return await self._list_objects(c, v2=True)
                c.operation = "ListObjects"
                return await self._list_objects(c, v2=False)
            name = sub[0]
            c.operation = f"GetBucket.{name}"
            await self._bucket_ino(c.bucket)
            if name == "location":
                return _xml(s3xml.location(self.s3.region))
            if name == "versioning":
                return _xml(s3xml.versioning())
            if name == "acl":
                return _xml(s3xml.acl(*_OWNER))
            if name == "uploads":
                c.operation = "ListMultipartUploads"
                return await self._list_uploads(c)
            if name == "versions":
                c.operation = "ListObjectVersions"
                return await self._list_versions(c)
            if name in _BUCKET_STUB_404:
                code, message = _BUCKET_STUB_404[name]
                raise S3Error(code, message, 404)
        raise S3Error(
            "NotImplemented", "A header or query you provided implies functionality not implemented", 501
        )

    async def _object_route(self, c: Call, m: str, q: dict[str, str]) -> Response:
        sub = [k for k in q if k in _SUBRESOURCES and k not in ("uploadId", "partNumber")]
        upload = q.get("uploadId")
        if m == "PUT" and not sub:
            if upload is not None:
                if "x-amz-copy-source" in c.headers:
                    c.operation = "UploadPartCopy"
                else:
                    c.operation = "UploadPart"
                return await self._upload_part(c, upload)
            if "x-amz-copy-source" in c.headers:
                c.operation = "CopyObject"
                return await self._copy_object(c)
            c.operation = "PutObject"
            return await self._put_object(c)
        if m in ("GET", "HEAD") and not sub:
            if upload is not None and m == "GET":
                c.operation = "ListParts"
                return await self._list_parts(c, upload)
            c.operation = "GetObject" if m == "GET" else "HeadObject"
            return await self._get_object(c, head=m == "HEAD")
        if m == "DELETE" and not sub:
            if upload is not None:
                c.operation = "AbortMultipartUpload"
                return await self._abort_upload(c, upload)
            c.operation = "DeleteObject"
            return await self._delete_object(c)
        if m == "POST":
            if "uploads" in q:
                c.operation = "CreateMultipartUpload"
                return await self._create_upload(c)
            if upload is not None and not sub:
                c.operation = "CompleteMultipartUpload"
                return await self._complete_upload(c, upload)
        if m == "GET" and sub == ["acl"]:
            c.operation = "GetObjectAcl"
            await self._object(c)
            return _xml(s3xml.acl(*_OWNER))
        if m == "GET" and sub == ["tagging"]:
            c.operation = "GetObjectTagging"
            await self._object(c)
            return _xml(s3xml.tagging())
        raise S3Error(
            "NotImplemented", "A header or query you provided implies functionality not implemented", 501
        )

    # -- buckets ----------
    async def _policy(self, c: Call) -> Policy | None:
        """How many copies this request's blocks get, and how many before the 200 (the bucket's
        volume policy and the bucket directory's user.dfs.* xattrs)."""
        if not c.policy_known:
            if await self.client.clustered():
                c.policy = await self.client.policy(await self._bucket_ino(c.bucket))
            c.policy_known = True
        return c.policy

    async def _writer(self, c: Call) -> AbstractAsyncContextManager[s3_io.BlockWriter]:
        return s3_io.open_block_writer(self.client, policy=await self._policy(c))

    async def _bucket_ino(self, bucket: str) -> int:
        if not s3names.is_bucket_name(bucket):
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, BucketName=bucket)
        try:
            attr = await self.client.lookup(ROOT_INO, bucket.encode())
        except NotFound:
            raise S3Error(
                "NoSuchBucket", "The specified bucket does not exist", 404, BucketName=bucket
            ) from None
        if not attr.is_dir:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, BucketName=bucket)
        return attr.ino

    async def _list_buckets(self, c: Call) -> Response:
        buckets: list[tuple[str, int]] = []
        async for entry in self._entries(ROOT_INO):
            name = entry.name.decode("utf-8", "replace")
            if entry.attr.is_dir and s3names.is_bucket_name(name):
                volume = await endpoints.META_GET_VOLUME.call(self.client, name)
                created = volume["created_ns"] if volume else entry.attr.mtime_ns
                buckets.append((name, created))
        return _xml(s3xml.list_buckets(buckets, owner_id=_OWNER[0], owner_name=_OWNER[1]))

    async def _create_bucket(self, c: Call) -> Response:
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
            raise S3Error(
                "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded", 409
            ) from None
        return Response(200, [("Location", "/" + c.bucket)])

    async def _delete_bucket(self, c: Call) -> Response:
        await self._bucket_ino(c.bucket)
        try:
            await self.client.rmdir(ROOT_INO, c.bucket.encode())
        except NotEmpty:
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409) from None
        except NotFound:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404) from None
        return Response(204)

    async def _put_versioning(self, c: Call) -> Response:
        """PutBucketVersioning: objects here have one version each, so Enabled is refused.

        Suspended is accepted and changes nothing: in a suspended bucket every
        write replaces the object's ``null`` version, which is what happens
        here anyway.
        """
        await self._bucket_ino(c.bucket)
        body = await c.req.read_body(64 * 1024)
        c.bytes_in = len(body)
        assert c.auth is not None
        checks = sigv4.BodyChecks(c.headers, c.auth)
        checks.update(body)
        checks.finish(None)
        status, mfa_delete = s3xml.parse_versioning(body)
        if status == "Enabled" or mfa_delete == "Enabled":
            raise S3Error(
                "NotImplemented",
                "Bucket versioning is not supported: every object has the single version null",
                501,
            )
        return Response(200)

    # -- object lookups ----------
    async def _object(self, c: Call) -> tuple[ObjectInfo, bool]:
        """The object named by the call's key, and whether the key named a directory marker."""
        bucket_ino = await self._bucket_ino(c.bucket)
        version = c.query.get("versionId")
        if version is not None and version != s3xml.NULL_VERSION:
            raise _version_error(version, c.key)
        names, is_dir = s3names.key_to_names(c.key)
        try:
            attr = await self.client.resolve(bucket_ino, names)
        except (NotFound, NotADirectory):
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=c.key) from None
        if is_dir != attr.is_dir or not (attr.is_dir or attr.is_reg):
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=c.key)
        return await self._info(attr, c.key), is_dir

    async def _info(self, attr: Attr, key: str) -> ObjectInfo:
        xattrs: dict[bytes, bytes] = {}
        for name in await self.client.listxattr(attr.ino):
            if name.startswith(_S3_PREFIX):
                try:
                    xattrs[name] = await self.client.getxattr(attr.ino, name)
                except DfsError:
                    continue  # removed meanwhile
        return _object_info(attr, xattrs, key)

    # -- GET / HEAD ----------
    async def _get_object(self, c: Call, *, head: bool) -> Response:
        info, is_dir = await self._object(c)
        fmap: FileMap | None = None
        if not head and not is_dir and info.attr.size:
            # The block map and the headers must describe the same version of a file that
            # the mount may be changing: read the map, and the xattrs again if it moved on.
            for _ in range(3):
                fmap = await self.client.read_map(info.attr.ino)
                if (fmap.attr.size, fmap.attr.mtime_ns) == (info.attr.size, info.attr.mtime_ns):
                    break
                info = await self._info(fmap.attr, c.key)
            else:
                raise S3Error("SlowDown", "The object keeps changing; please retry", 503)
        attr = info.attr
        status = s3names.check_read_conditions(c.headers, etag=info.etag, mtime_ns=attr.mtime_ns)
        base = [
            ("ETag", f'"{info.etag}"'),
            ("Last-Modified", s3names.http_date(attr.mtime_ns)),
            ("Accept-Ranges", "bytes"),
        ]
        if status == 304:
            return Response(304, base)
        size = 0 if is_dir else attr.size
        headers = base + [("Content-Type", info.content_type)]
        headers += [(f"x-amz-meta-{k}", v) for k, v in info.meta.items()]
        headers += list(info.headers.items())
        for name, value in c.query.items():
            if name.startswith("response-") and name[9:] in _RESPONSE_OVERRIDES:
                headers = [(k, v) for k, v in headers if k.lower() != name[9:]]
                headers.append((name[9:], value))
        part = c.query.get("partNumber")
        if part is not None and part != "1":
            raise S3Error("InvalidPart", "The requested partnumber is not satisfiable", 416)
        rng = s3names.parse_range(c.headers.get("range"), size)
        if rng is None:
            start, end, status = 0, size, 200
            if info.checksum and c.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
                headers.append((f"x-amz-checksum-{info.checksum[0].lower()}", info.checksum[1]))
        else:
            start, end, status = rng[0], rng[1] + 1, 206
            headers.append(("Content-Range", f"bytes {rng[0]}-{rng[1]}/{size}"))
        if head or size == 0:
            return (
                Response(status, headers, b"", content_length=end - start)
                if head
                else Response(status, headers, b"")
            )
        assert fmap is not None
        pieces = (
            s3_io.prefetched_range(self.client, fmap, start, end, self.nursery)
            if self.nursery is not None
            else s3_io.read_range(self.client, fmap, start, end)
        )
        # The first block is read before answering, so a failure there (a corrupt or missing
        # chunk) is a clean S3 error; a later one can only cut the body short.
        try:
            first = await anext(pieces)
        except BaseException:
            await pieces.aclose()
            raise
        return Response(status, headers, _prepend(first, pieces), content_length=end - start)

    # -- PUT ----------
    def _body_limits(self, c: Call) -> None:
        declared = c.headers.get("x-amz-decoded-content-length") or c.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise S3Error("InvalidArgument", "Content-Length is not a number") from None
            if n > self.s3.max_object_bytes:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        elif "chunked" not in c.headers.get("transfer-encoding", "").lower():
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)

    async def _store_body(self, c: Call) -> tuple[list[Any], bytes | None, int, sigv4.BodyChecks]:
        """Stream the request body into blocks: (block refs, inline bytes, size, verified checks)."""
        assert c.auth is not None
        self._body_limits(c)
        checks = sigv4.BodyChecks(c.headers, c.auth)
        async with await self._writer(c) as writer:
            async for piece in s3_io.payload(c.req, c.auth, checks, max_bytes=self.s3.max_object_bytes):
                await writer.write(piece)
            blocks, inline = await writer.finish(self.client.inline_max)
            size = writer.size
        c.bytes_in = size
        return blocks, inline, size, checks

    async def _put_object(self, c: Call) -> Response:
        bucket_ino = await self._bucket_ino(c.bucket)
        names, is_dir = s3names.key_to_names(c.key)
        xattrs = _request_xattrs(c.headers)
        if is_dir:
            blocks, inline, size, checks = await self._store_body(c)
            if size:
                raise S3Error("InvalidArgument", "A key ending in '/' names a directory and takes no body")
            try:
                await self.client.make_dirs(bucket_ino, names)
            except (NotADirectory, IsADirectory):
                raise _conflict(c.key) from None
            await self.client.sync()
            return Response(200, [("ETag", f'"{_EMPTY_MD5}"')])
        if_match = await self._write_conditions(c, bucket_ino, names)
        blocks, inline, size, checks = await self._store_body(c)
        mtime = time.time_ns()
        xattrs[XA_ETAG] = _stamp(checks.md5_hex, size, mtime)
        if checks.checksum:
            xattrs[XA_CHECKSUM] = f"{checks.checksum[0]} {checks.checksum[1]}".encode()
        await self._commit(c, bucket_ino, names, size, mtime, blocks, inline, xattrs, if_match)
        headers = [("ETag", f'"{checks.md5_hex}"')]
        if checks.checksum:
            headers.append((f"x-amz-checksum-{checks.checksum[0].lower()}", checks.checksum[1]))
        return Response(200, headers)

    async def _write_conditions(
        self, c: Call, bucket_ino: int, names: list[bytes]
    ) -> tuple[bytes, bytes] | None:
        """Check If-Match / If-None-Match for a write; returns the atomic re-check for the commit."""
        if "if-match" not in c.headers and "if-none-match" not in c.headers:
            return None
        try:
            attr = await self.client.resolve(bucket_ino, names)
            info: ObjectInfo | None = await self._info(attr, c.key) if attr.is_reg else None
        except (NotFound, NotADirectory):
            info = None
        s3names.check_write_conditions(c.headers, exists=info is not None, etag=info.etag if info else None)
        if info is not None and "if-match" in c.headers and XA_ETAG in info.xattrs:
            return (XA_ETAG, info.xattrs[XA_ETAG])
        return None

    async def _commit(
        self,
        c: Call,
        parent: int,
        names: list[bytes],
        size: int,
        mtime: int,
        blocks: list[Any],
        inline: bytes | None,
        xattrs: dict[bytes, bytes],
        if_match: tuple[bytes, bytes] | None,
    ) -> Attr:
        try:
            return await self.client.put_object(
                parent,
                names[:-1],
                names[-1],
                size=size,
                mtime_ns=mtime,
                blocks=blocks,
                inline=inline,
                xattrs=xattrs,
                if_none_match=c.headers.get("if-none-match", "").strip() == "*",
                if_match=if_match,
                replicas=_replicas(await self._policy(c)),
            )
        except (NotADirectory, IsADirectory):
            raise _conflict(c.key) from None

    # -- copy ----------
    async def _copy_source(self, c: Call) -> tuple[ObjectInfo, FileMap]:
        raw = c.headers["x-amz-copy-source"]
        source = urllib.parse.unquote(raw.split("?", 1)[0])
        version = urllib.parse.parse_qs(raw.partition("?")[2]).get("versionId")
        bucket, _, key = source.lstrip("/").partition("/")
        if version and version[0] != s3xml.NULL_VERSION:
            raise _version_error(version[0], key)
        if not bucket or not key:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key")
        src = Call(c.req, c.request_id, bucket, key, {}, c.headers, "/" + source.lstrip("/"))
        info, is_dir = await self._object(src)
        if is_dir:
            raise S3Error("InvalidRequest", "The source names a directory")
        status = s3names.check_read_conditions(
            c.headers, etag=info.etag, mtime_ns=info.attr.mtime_ns, prefix="x-amz-copy-source-"
        )
        if status == 304:
            raise S3Error(
                "PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412
            )
        fmap = await self.client.read_map(info.attr.ino)
        return _object_info(fmap.attr, info.xattrs, key), fmap

    async def _copy_object(self, c: Call) -> Response:
        bucket_ino = await self._bucket_ino(c.bucket)
        names, is_dir = s3names.key_to_names(c.key)
        if is_dir:
            raise S3Error("InvalidArgument", "A key ending in '/' names a directory")
        info, fmap = await self._copy_source(c)
        directive = c.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.")
        same = info.attr.ino == (await self._maybe_resolve(bucket_ino, names))
        if same and directive != "REPLACE":
            raise S3Error(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without "
                "changing the object's metadata, storage class, website redirect location or encryption "
                "attributes.",
            )
        if directive == "REPLACE":
            xattrs = _request_xattrs(c.headers)
        else:
            xattrs = {k: v for k, v in info.xattrs.items() if k not in (XA_ETAG, XA_CHECKSUM)}
        if_match = await self._write_conditions(c, bucket_ino, names)
        size = fmap.attr.size
        async with await self._writer(c) as writer:
            await s3_io.copy_range(writer, self.client, fmap, 0, size, final=True)
            blocks, inline = await writer.finish(self.client.inline_max)
        mtime = time.time_ns()
        etag = info.etag
        xattrs[XA_ETAG] = _stamp(etag, size, mtime)
        if info.checksum:
            xattrs[XA_CHECKSUM] = f"{info.checksum[0]} {info.checksum[1]}".encode()
        await self._commit(c, bucket_ino, names, size, mtime, blocks, inline, xattrs, if_match)
        return _xml(s3xml.copy_object_result(etag, mtime))

    async def _maybe_resolve(self, parent: int, names: list[bytes]) -> int | None:
        try:
            return (await self.client.resolve(parent, names)).ino
        except (NotFound, NotADirectory):
            return None

    # -- DELETE ----------
    async def _delete_object(self, c: Call) -> Response:
        bucket_ino = await self._bucket_ino(c.bucket)
        version = c.query.get("versionId")
        if version is None:
            await self._delete_key(bucket_ino, c.key)
            return Response(204)
        await self._delete_version(bucket_ino, c.key, version)
        return Response(204, [("x-amz-version-id", version)])

    async def _delete_version(self, bucket_ino: int, key: str, version: str) -> None:
        """Delete one version of ``key``: ``null`` is the object itself.

        Another well-formed id names a version that does not exist, and AWS
        answers that delete with success and deletes nothing; a malformed one is
        400 InvalidArgument.
        """
        if version == s3xml.NULL_VERSION:
            await self._delete_key(bucket_ino, key)
            return
        error = _version_error(version, key)
        if error.s3_code != "NoSuchVersion":
            raise error

    async def _delete_key(self, bucket_ino: int, key: str) -> None:
        names, is_dir = s3names.key_to_names(key)
        try:
            parent = await self.client.resolve(bucket_ino, names[:-1])
        except (NotFound, NotADirectory):
            return
        try:
            if is_dir:
                await self.client.rmdir(parent.ino, names[-1])
            else:
                await self.client.unlink(parent.ino, names[-1])
        except (NotFound, NotADirectory, IsADirectory, NotEmpty):
            return  # deleting what is not there (as that kind of object) succeeds
        if len(names) > 1:
            await self.client.remove_empty_parents(bucket_ino, names[:-1])

    async def _delete_objects(self, c: Call) -> Response:
        bucket_ino = await self._bucket_ino(c.bucket)
        body = await c.req.read_body(_MAX_XML_BYTES)
        c.bytes_in = len(body)
        assert c.auth is not None
        checks = sigv4.BodyChecks(c.headers, c.auth)
        checks.update(body)
        checks.finish(None)
        quiet, targets = s3xml.parse_delete(body)
        deleted: list[s3xml.DeleteTarget] = []
        errors: list[tuple[s3xml.DeleteTarget, str, str]] = []
        for target in targets:
            try:
                if target.version_id is None:
                    await self._delete_key(bucket_ino, target.key)
                else:
                    await self._delete_version(bucket_ino, target.key, target.version_id)
                if not quiet:
                    deleted.append(target)
            except S3Error as exc:
                errors.append((target, exc.s3_code, exc.message))
            except DfsError as exc:
                errors.append((target, s3_code(exc)[0], exc.message))
        return _xml(s3xml.delete_result(deleted, errors))

    # -- listing ----------
    async def _list_objects(self, c: Call, *, v2: bool) -> Response:
        bucket_ino = await self._bucket_ino(c.bucket)
        q = c.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        max_keys = s3names.parse_max_keys(q.get("max-keys"))
        encoding_url = _encoding_url(q)
        if v2:
            token = q.get("continuation-token")
            start_after = q.get("start-after", "")
            start = s3names.decode_token(token) if token else start_after
        else:
            token = None
            start_after = q.get("marker", "")
            start = start_after
        page = await self._page(bucket_ino, prefix, delimiter, start, max_keys)
        if v2:
            next_token = (
                s3names.encode_token(page.next_marker) if page.truncated and page.next_marker else None
            )
            body = s3xml.list_objects_v2(
                page,
                bucket=c.bucket,
                prefix=prefix,
                delimiter=delimiter,
                max_keys=max_keys,
                encoding_url=encoding_url,
                start_after=start_after,
                continuation_token=token,
                next_token=next_token,
                owner=_OWNER if q.get("fetch-owner") == "true" else None,
            )
        else:
            body = s3xml.list_objects_v1(
                page,
                bucket=c.bucket,
                prefix=prefix,
                marker=start_after,
                delimiter=delimiter,
                max_keys=max_keys,
                encoding_url=encoding_url,
                owner=_OWNER,
            )
        return _xml(body)

    async def _list_versions(self, c: Call) -> Response:
        """ListObjectVersions: without versioning, a ListObjects page whose every object is its
        one version, ``null``; so key-marker is ListObjects' marker and the only version-id-marker
        there can be is ``null`` (resuming after that key)."""
        bucket_ino = await self._bucket_ino(c.bucket)
        q = c.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        max_keys = s3names.parse_max_keys(q.get("max-keys"))
        encoding_url = _encoding_url(q)
        key_marker = q.get("key-marker", "")
        id_marker = q.get("version-id-marker", "")
        if id_marker:
            if not key_marker:
                raise S3Error(
                    "InvalidArgument",
                    "A version-id marker cannot be specified without a key marker.",
                    400,
                    ArgumentName="version-id-marker",
                    ArgumentValue=id_marker,
                )
            if id_marker != s3xml.NULL_VERSION:
                raise S3Error(
                    "InvalidArgument",
                    "Invalid version id specified",
                    400,
                    ArgumentName="version-id-marker",
                    ArgumentValue=id_marker,
                )
        page = await self._page(bucket_ino, prefix, delimiter, key_marker, max_keys)
        return _xml(
            s3xml.list_object_versions(
                page,
                bucket=c.bucket,
                prefix=prefix,
                key_marker=key_marker,
                version_id_marker=id_marker,
                delimiter=delimiter,
                max_keys=max_keys,
                encoding_url=encoding_url,
                owner=_OWNER,
            )
        )

    async def _page(
        self, bucket_ino: int, prefix: str, delimiter: str, start: str, max_keys: int
    ) -> s3xml.ListPage:
        items: list[s3names.Listed] = []
        rolled: set[str] = set()
        if max_keys > 0:
            async for item in self._walk(bucket_ino, prefix, delimiter, start):
                key = item.key
                rest = key[len(prefix) :]
                cut = rest.find(delimiter) if delimiter else -1
                group = prefix + rest[: cut + len(delimiter)] if cut >= 0 else key
                items.append(item)
                if group not in rolled:
                    rolled.add(group)
                    if len(rolled) > max_keys:
                        break  # one entry past the page: paginate can tell it is truncated
        return s3names.paginate(
            items, prefix=prefix, delimiter=delimiter, start_after=start, max_keys=max_keys
        )

    async def _walk(
        self, bucket_ino: int, prefix: str, delimiter: str, start: str
    ) -> AsyncIterator[s3names.Listed]:
        """Keys under ``prefix`` after ``start``, in UTF-8 byte order, from a depth-first walk."""
        base, _, partial = prefix.rpartition("/")
        base = base + "/" if base else ""
        try:
            top = await self.client.resolve(
                bucket_ino, [n.encode() for n in base.split("/")[:-1]] if base else []
            )
        except (NotFound, NotADirectory):
            return
        if not top.is_dir:
            return
        async for item in self._walk_dir(top.ino, base, partial.encode(), delimiter == "/", start):
            yield item

    async def _walk_dir(
        self, ino: int, base: str, partial: bytes, roll_dirs: bool, start: str
    ) -> AsyncIterator[s3names.Listed]:
        """Depth-first over ``ino``'s subtree in key order, with an explicit stack: keys may be
        512 directories deep, more than Python's recursion allows."""
        start_b = start.encode()
        stack = [_WalkFrame.at(ino, base.encode(), partial, start_b)]
        while stack:
            frame = stack[-1]
            if frame.next >= len(frame.page):
                if frame.done:
                    stack.pop()
                    continue
                frame.page = await self.client.list_dir(frame.ino, frame.after, _PAGE)
                frame.next = 0
                frame.done = len(frame.page) < _PAGE
                if (
                    frame.first
                    and not frame.page
                    and frame.base
                    and not frame.partial
                    and frame.base > start_b
                ):
                    # An empty directory is a zero-byte "dir/" object.
                    key = frame.base.decode()
                    yield s3names.Listed(key, ObjectEntry(key, 0, 0, _EMPTY_MD5))
                frame.first = False
                continue
            entry = frame.page[frame.next]
            frame.next += 1
            name = entry.name
            frame.after = name + (b"/" if entry.attr.is_dir else b"")
            if frame.partial and not name.startswith(frame.partial):
                if name > frame.partial:
                    stack.pop()  # sorted: nothing later in this directory matches the prefix
                continue
            key_b = frame.base + name
            try:
                key = key_b.decode()
            except UnicodeDecodeError:
                continue  # not a valid key: invisible to S3
            if entry.attr.is_dir:
                dkey_b = key_b + b"/"
                if roll_dirs and start_b == dkey_b:
                    continue  # the previous page ended on this common prefix
                if start_b.startswith(dkey_b) or (dkey_b > start_b and not roll_dirs):
                    stack.append(_WalkFrame.at(entry.attr.ino, dkey_b, b"", start_b))
                elif dkey_b > start_b:
                    yield s3names.Listed(key + "/", None)
            elif entry.attr.is_reg and key_b > start_b:
                info = await self._info(entry.attr, key)
                yield s3names.Listed(key, ObjectEntry(key, entry.attr.size, entry.attr.mtime_ns, info.etag))

    async def _entries(self, ino: int) -> AsyncIterator[DirEntry]:
        """Every entry of a directory, a page at a time (list_dir resumes after a sort key)."""
        after = b""
        while True:
            page = await self.client.list_dir(ino, after, _PAGE)
            for entry in page:
                yield entry
            if len(page) < _PAGE:
                return
            last = page[-1]
            after = last.name + (b"/" if last.attr.is_dir else b"")

    # -- multipart ----------
    async def _uploads(self) -> int:
        if self._uploads_ino is None:
            self._uploads_ino = await self.client.internal_dir("uploads")
        return self._uploads_ino

    async def _upload(self, c: Call, upload_id: str) -> tuple[int, dict[str, Any]]:
        """(directory inode, info) of an upload of this bucket and key."""
        if not upload_id or "/" in upload_id or upload_id in (".", "..") or len(upload_id) > 128:
            raise S3Error("NoSuchUpload", "The specified upload does not exist.", 404, UploadId=upload_id)
        root = await self._uploads()
        try:
            d = await self.client.lookup(root, upload_id.encode())
            fmap = await self.client.read_map((await self.client.lookup(d.ino, _INFO)).ino)
        except (NotFound, NotADirectory):
            raise S3Error(
                "NoSuchUpload", "The specified upload does not exist.", 404, UploadId=upload_id
            ) from None
        info = msgpack.unpackb(fmap.inline or b"", raw=False)
        if info.get("bucket") != c.bucket or info.get("key") != c.key:
            raise S3Error("NoSuchUpload", "The specified upload does not exist.", 404, UploadId=upload_id)
        return d.ino, info

    async def _create_upload(self, c: Call) -> Response:
        await self._bucket_ino(c.bucket)
        names, is_dir = s3names.key_to_names(c.key)
        if is_dir:
            raise S3Error("InvalidArgument", "A key ending in '/' names a directory")
        upload_id = secrets.token_urlsafe(24)
        algorithm = c.headers.get("x-amz-checksum-algorithm", "").upper() or None
        info = {
            "bucket": c.bucket,
            "key": c.key,
            "initiated_ns": time.time_ns(),
            "xattrs": _request_xattrs(c.headers),
            "checksum_algorithm": algorithm,
        }
        blob = msgpack.packb(info, use_bin_type=True)
        await self.client.put_object(
            await self._uploads(),
            [upload_id.encode()],
            _INFO,
            size=len(blob),
            mtime_ns=time.time_ns(),
            blocks=[],
            inline=blob,
            xattrs={},
        )
        if algorithm:
            c.extra_headers.append(("x-amz-checksum-algorithm", algorithm))
        return _xml(s3xml.initiate_multipart(c.bucket, c.key, upload_id))

    def _part_number(self, c: Call) -> int:
        try:
            n = int(c.query.get("partNumber", ""))
        except ValueError:
            raise S3Error(
                "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive"
            ) from None
        if not 1 <= n <= _MAX_PARTS:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
        return n

    async def _upload_part(self, c: Call, upload_id: str) -> Response:
        n = self._part_number(c)
        upload_ino, _ = await self._upload(c, upload_id)
        mtime = time.time_ns()
        if "x-amz-copy-source" in c.headers:
            info, fmap = await self._copy_source(c)
            rng = c.headers.get("x-amz-copy-source-range")
            start, end = s3names.parse_copy_range(rng, fmap.attr.size) if rng else (0, fmap.attr.size - 1)
            async with await self._writer(c) as writer:
                await s3_io.copy_range(writer, self.client, fmap, start, end + 1, final=True)
                blocks, inline = await writer.finish(self.client.inline_max)
                size = writer.size
            # Not the MD5 of the bytes (they were shared, not read), but stable and in MD5 form,
            # as the completion's multipart ETag needs.
            etag = hashlib.md5(f"{info.etag}:{start}:{end}".encode()).hexdigest()
            checksum = None
        else:
            blocks, inline, size, checks = await self._store_body(c)
            etag, checksum = checks.md5_hex, checks.checksum
        xattrs = {XA_ETAG: _stamp(etag, size, mtime)}
        if checksum:
            xattrs[XA_CHECKSUM] = f"{checksum[0]} {checksum[1]}".encode()
        try:
            await self.client.put_object(
                upload_ino,
                [],
                b"%05d" % n,
                size=size,
                mtime_ns=mtime,
                blocks=blocks,
                inline=inline,
                xattrs=xattrs,
                replicas=_replicas(await self._policy(c)),
            )
            await self.client.sync()  # a 200 for a part means it survives power loss too
        except NotFound:
            raise S3Error(
                "NoSuchUpload", "The specified upload does not exist.", 404, UploadId=upload_id
            ) from None
        if "x-amz-copy-source" in c.headers:
            return _xml(s3xml.copy_part_result(etag, mtime))
        headers = [("ETag", f'"{etag}"')]
        if checksum:
            headers.append((f"x-amz-checksum-{checksum[0].lower()}", checksum[1]))
        return Response(200, headers)

    async def _parts(self, upload_ino: int) -> list[tuple[int, Attr, str]]:
        """(number, attr, etag) of every uploaded part, in part order."""
        out: list[tuple[int, Attr, str]] = []
        async for entry in self._entries(upload_ino):
            if entry.name.isdigit() and entry.attr.is_reg:
                info = await self._info(entry.attr, "")
                out.append((int(entry.name), entry.attr, info.etag))
        return out

    async def _list_parts(self, c: Call, upload_id: str) -> Response:
        upload_ino, _ = await self._upload(c, upload_id)
        try:
            marker = int(c.query.get("part-number-marker") or 0)
            max_parts = min(1000, int(c.query.get("max-parts") or 1000))
        except ValueError:
            raise S3Error("InvalidArgument", "part-number-marker and max-parts must be integers") from None
        if max_parts < 0:
            raise S3Error("InvalidArgument", "max-parts must be a non-negative integer")
        parts = [p for p in await self._parts(upload_ino) if p[0] > marker]
        shown = parts[:max_parts]
        truncated = len(parts) > max_parts
        return _xml(
            s3xml.list_parts(
                c.bucket,
                c.key,
                upload_id,
                [s3xml.PartInfo(n, etag, a.size, a.mtime_ns) for n, a, etag in shown],
                part_number_marker=marker,
                next_marker=shown[-1][0] if truncated and shown else None,
                max_parts=max_parts,
                truncated=truncated,
                owner=_OWNER,
            )
        )

    async def _abort_upload(self, c: Call, upload_id: str) -> Response:
        await self._upload(c, upload_id)
        try:
            await self.client.remove_tree(await self._uploads(), upload_id.encode())
        except NotFound:
            raise S3Error(
                "NoSuchUpload", "The specified upload does not exist.", 404, UploadId=upload_id
            ) from None
        return Response(204)

    async def _complete_upload(self, c: Call, upload_id: str) -> Response:
        bucket_ino = await self._bucket_ino(c.bucket)
        upload_ino, info = await self._upload(c, upload_id)
        body = await c.req.read_body(_MAX_XML_BYTES)
        c.bytes_in = len(body)
        wanted = s3xml.parse_complete_multipart(body)
        if not wanted:
            raise S3Error("MalformedXML", "You must specify at least one part")
        numbers = [p.number for p in wanted]
        if any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.")
        have = {n: (attr, etag) for n, attr, etag in await self._parts(upload_ino)}
        chosen: list[Attr] = []
        for i, part in enumerate(wanted):
            got = have.get(part.number)
            if got is None or got[1] != part.etag.strip('"'):
                raise S3Error(
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part may not have been "
                    "uploaded, or the specified entity tag may not match the part's entity tag.",
                )
            if i < len(wanted) - 1 and got[0].size < _MIN_PART_BYTES:
                raise S3Error(
                    "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size"
                )
            chosen.append(got[0])
        total = sum(a.size for a in chosen)
        if total > self.s3.max_object_bytes:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        names, _ = s3names.key_to_names(c.key)
        if_match = await self._write_conditions(c, bucket_ino, names)
        async with await self._writer(c) as writer:
            for i, attr in enumerate(chosen):
                fmap = await self.client.read_map(attr.ino)
                await s3_io.copy_range(writer, self.client, fmap, 0, attr.size, final=i == len(chosen) - 1)
            blocks, inline = await writer.finish(self.client.inline_max)
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag.strip('"')) for p in wanted)).hexdigest()
        etag = f"{digest}-{len(wanted)}"
        mtime = time.time_ns()
        xattrs = dict(info.get("xattrs") or {})
        xattrs[XA_ETAG] = _stamp(etag, total, mtime)
        await self._commit(c, bucket_ino, names, total, mtime, blocks, inline, xattrs, if_match)
        try:
            await self.client.remove_tree(await self._uploads(), upload_id.encode())
        except NotFound:
            pass  # a concurrent completion or abort got there first
        location = f"/{c.bucket}/{urllib.parse.quote(c.key)}"
        return _xml(s3xml.complete_multipart(location, c.bucket, c.key, etag))

    async def _list_uploads(self, c: Call) -> Response:
        q = c.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        key_marker = q.get("key-marker", "")
        id_marker = q.get("upload-id-marker", "")
        max_uploads = s3names.parse_max_keys(q.get("max-uploads"))
        encoding_url = q.get("encoding-type") == "url"
        found: list[s3xml.UploadInfo] = []
        async for entry in self._entries(await self._uploads()):
            try:
                fmap = await self.client.read_map((await self.client.lookup(entry.attr.ino, _INFO)).ino)
            except DfsError:
                continue  # being created or removed
            info = msgpack.unpackb(fmap.inline or b"", raw=False)
            if info.get("bucket") == c.bucket and info.get("key", "").startswith(prefix):
                found.append(s3xml.UploadInfo(info["key"], entry.name.decode(), info["initiated_ns"]))
        found.sort(key=lambda u: (u.key.encode(), u.initiated_ns, u.upload_id))
        if key_marker:
            found = [
                u
                for u in found
                if u.key.encode() > key_marker.encode()
                or (u.key == key_marker and id_marker and u.upload_id > id_marker)
            ]
        prefixes: list[str] = []
        shown: list[s3xml.UploadInfo] = []
        truncated = False
        for u in found:
            rest = u.key[len(prefix) :]
            cut = rest.find(delimiter) if delimiter else -1
            if cut >= 0:
                p = prefix + rest[: cut + len(delimiter)]
                if p in prefixes:
                    continue
                if len(shown) + len(prefixes) >= max_uploads:
                    truncated = True
                    break
                prefixes.append(p)
                continue
            if len(shown) + len(prefixes) >= max_uploads:
                truncated = True
                break
            shown.append(u)
        last = shown[-1] if shown else None
        return _xml(
            s3xml.list_uploads(
                c.bucket,
                shown,
                prefix=prefix,
                delimiter=delimiter,
                key_marker=key_marker,
                upload_id_marker=id_marker,
                next_key_marker=last.key if truncated and last else None,
                next_upload_id_marker=last.upload_id if truncated and last else None,
                max_uploads=max_uploads,
                truncated=truncated,
                common_prefixes=prefixes,
                encoding_url=encoding_url,
                owner=_OWNER,
            )
        )

    async def expire_uploads(self) -> int:
        """Remove multipart uploads older than ``upload_expiry_s``; returns how many."""
        root = await self._uploads()
        cutoff = time.time_ns() - int(self.s3.upload_expiry_s * 1e9)
        removed = 0
        async for entry in self._entries(root):
            if entry.attr.ctime_ns < cutoff:
                try:
                    await self.client.remove_tree(root, entry.name)
                    removed += 1
                except NotFound:
                    pass
        return removed


_RESPONSE_OVERRIDES = frozenset(
    {
        "content-type",
        "content-language",
        "expires",
        "cache-control",
        "content-disposition",
        "content-encoding",
    }
)


@dataclass
class _WalkFrame:
    """One directory on the listing walk's stack: where its next page starts."""

    ino: int
    base: bytes  # key prefix of its entries ("" or "a/b/")
    partial: bytes  # entries must start with this (the prefix's last, partial component)
    after: bytes  # list_dir cursor (sort key of the last entry seen)
    page: list[Any] = field(default_factory=list)
    next: int = 0
    done: bool = False
    first: bool = True

    @classmethod
    def at(cls, ino: int, base: bytes, partial: bytes, start: bytes) -> _WalkFrame:
        # Resume inside this directory: skip straight to the first entry that can follow start.
        after = b""
        if start.startswith(base):
            rel = start[len(base) :]
            after = rel.split(b"/", 1)[0] if b"/" in rel else rel
        if partial and _before(partial) > after:
            after = _before(partial)
        return cls(ino, base, partial, after)


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        yield first
        async for piece in rest:
            yield piece
    finally:
        await rest.aclose()


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


def _before(name: bytes) -> bytes:
    """A sort key just below every name starting with ``name`` (list_dir's ``after`` is exclusive)."""
    if not name:
        return b""
    last = name[-1]
    if last == 0:
        return name[:-1]
    return name[:-1] + bytes([last - 1]) + b"\xff" * 8


# The shape of the version ids AWS issues: 32 characters of letters, digits, "." and "_".  Any
# other id (but "null") is malformed, which AWS answers with 400 rather than 404.
_VERSION_ID_RE = re.compile(r"[A-Za-z0-9._]{32}")


def _version_error(version_id: str, key: str) -> S3Error:
    """What AWS answers for a version id other than ``null``, the only version here."""
    if not version_id:
        return S3Error(
            "InvalidArgument",
            "Version id cannot be the empty string",
            400,
            ArgumentName="versionId",
            ArgumentValue=version_id,
        )
    if _VERSION_ID_RE.fullmatch(version_id) is None:
        return S3Error(
            "InvalidArgument",
            "Invalid version id specified",
            400,
            ArgumentName="versionId",
            ArgumentValue=version_id,
        )
    return S3Error(
        "NoSuchVersion", "The specified version does not exist.", 404, Key=key, VersionId=version_id
    )


def _encoding_url(query: Mapping[str, str]) -> bool:
    """Whether a listing asked for ``encoding-type=url``; any other value is 400."""
    encoding = query.get("encoding-type")
    if encoding not in (None, "", "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
    return encoding == "url"


def _xml(body: bytes) -> Response:
    return Response(200, [("Content-Type", "application/xml")], body)


def _replicas(policy: Policy | None) -> int | None:
    return None if policy is None else policy.replicas


def _conflict(key: str) -> S3Error:
    return S3Error(
        "PathConflict",
        "The key clashes with the filesystem tree: a prefix of it is an object, or it names a directory",
        409,
        Key=key,
    )


def _stamp(etag: str, size: int, mtime_ns: int) -> bytes:
    return f"{etag} {size} {mtime_ns}".encode()


def _request_xattrs(headers: Mapping[str, str]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in s3names.user_metadata(headers).items():
        out[XA_META + name.removeprefix("x-amz-meta-").encode()] = value.encode()
    stored = s3names.stored_headers(headers)
    ctype = stored.pop("content-type", None)
    if ctype:
        out[XA_TYPE] = ctype.encode()
    for name, value in stored.items():
        out[XA_HEADER + name.encode()] = value.encode()
    return out


def _object_info(attr: Attr, xattrs: dict[bytes, bytes], key: str) -> ObjectInfo:
    etag = None
    raw = xattrs.get(XA_ETAG)
    if raw:
        parts = raw.decode(errors="replace").split(" ")
        if len(parts) == 3 and parts[1] == str(attr.size) and parts[2] == str(attr.mtime_ns):
            etag = parts[0]
    if etag is None:
        if attr.is_dir:
            etag = _EMPTY_MD5
        else:
            # Written through the mount: stable while the file is unchanged, never mistaken for an MD5.
            etag = hashlib.md5(f"{attr.ino}:{attr.size}:{attr.mtime_ns}".encode()).hexdigest() + "-1"
    ctype_raw = xattrs.get(XA_TYPE)
    if ctype_raw:
        ctype = ctype_raw.decode(errors="replace")
    else:
        ctype = mimetypes.guess_type(key)[0] or _DEFAULT_TYPE if key and not attr.is_dir else _DEFAULT_TYPE
    meta = {
        k[len(XA_META) :].decode(errors="replace"): v.decode(errors="replace")
        for k, v in xattrs.items()
        if k.startswith(XA_META)
    }
    headers = {
        k[len(XA_HEADER) :].decode(errors="replace"): v.decode(errors="replace")
        for k, v in xattrs.items()
        if k.startswith(XA_HEADER)
    }
    checksum = None
    raw_sum = xattrs.get(XA_CHECKSUM)
    if raw_sum and etag and raw and etag == raw.decode(errors="replace").split(" ")[0]:
        algorithm, _, value = raw_sum.decode(errors="replace").partition(" ")
        checksum = (algorithm, value)
    return ObjectInfo(attr, etag, ctype, meta, headers, checksum, xattrs)
