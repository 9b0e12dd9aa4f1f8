"""The filesystem seen as buckets and objects: what every S3 operation looks up and writes.

A bucket is a top-level directory; key ``a/b/c`` is the path ``a/b/c`` inside
it.  An object's attributes live in xattrs, so they are visible through the
mount: ``user.s3.etag`` (``"<etag> <size> <mtime_ns>"``: the stamp makes an
ETag stale once the file is changed through the mount),
``user.s3.content-type``, ``user.s3.meta.<name>`` (x-amz-meta-*),
``user.s3.header.<name>`` (the other stored headers) and ``user.s3.checksum``
(``"<ALGORITHM> <base64>"``).  A file written through the mount has no ETag of
its own: it gets a stable synthetic one of the multipart form (``<hex>-1``),
which clients do not take for an MD5.

Objects are written aside: :meth:`ObjectTree.store_body` streams the body
into blocks (dfs.client stores each durably), then :meth:`ObjectTree.commit`
creates the new inode with its blocks and xattrs and links it over the old
name in one metadata transaction.  A reader sees the old object or the new
one, never a mixture; a crash before the commit leaves only unreferenced
chunks, which the orphan sweep collects.

Versioning (daemon/s3/versioning.py, daemon/meta/versions.py): the current
version of a key is the file at its path, its id in ``user.s3.version-id``
(set by :meth:`ObjectTree.commit` when the bucket has versioning; none: ``null``);
``?versionId=`` reads any version (:meth:`ObjectTree.object`).
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import trio

from daemon.s3.body import BlockWriter, open_block_writer, payload
from daemon.s3.call import Call
from daemon.s3.objlock import stamp_request
from daemon.s3.sse import ServerSideEncryption
from dfs.client.cluster import Client
from dfs.core import endpoints, s3names, s3xml, sigv4
from dfs.core.config import Config
from dfs.core.errors import DfsError, IsADirectory, NotADirectory, NotFound, S3Error
from dfs.core.keys import VolumeCodec
from dfs.core.namespace import ROOT_INO, Attr, DirEntry
from dfs.core.replicas import Policy

XA_ETAG = b"user.s3.etag"
XA_TYPE = b"user.s3.content-type"
XA_META = b"user.s3.meta."
XA_HEADER = b"user.s3.header."
XA_CHECKSUM = b"user.s3.checksum"
XA_VERSION_ID = b"user.s3.version-id"
_S3_PREFIX = b"user.s3."
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
_DEFAULT_TYPE = "binary/octet-stream"
PAGE = 1000  # directory entries fetched per list_dir call


@dataclass(frozen=True)
class ObjectInfo:
    attr: Attr
    etag: str
    content_type: str
    meta: dict[str, str]
    headers: dict[str, str]
    checksum: tuple[str, str] | None
    xattrs: dict[bytes, bytes]


class ObjectTree:
    """Buckets and objects over one filesystem client: lookups, attributes, and writing new objects."""

    def __init__(self, client: Client, cfg: Config) -> None:
        self.client = client
        self.s3 = cfg.s3
        # Where GET read-ahead tasks run (the server's nursery); None reads without read-ahead.
        self.nursery: trio.Nursery | None = None
        self.sse = ServerSideEncryption(client, self.bucket_ino)  # S3 server-side encryption

    # -- policy and block writers ----------
    async def policy(self, c: Call) -> Policy | None:
        """How many copies this request's blocks get, and how many before the 200 (the bucket's
        volume policy and the bucket directory's user.dfs.* xattrs)."""
        if not c.policy_known:
            if await self.client.clustered():
                c.policy = await self.client.policy(await self.bucket_ino(c.bucket))
            c.policy_known = True
        return c.policy

    async def writer(self, c: Call) -> AbstractAsyncContextManager[BlockWriter]:
        # The bucket is the volume: its codec comes from the client's ring (no call per request).
        codec = await self.client.volume_codec(await self.bucket_ino(c.bucket))
        sse = c.sse
        if sse is None:
            return open_block_writer(self.client, policy=await self.policy(c), volume_codec=codec)
        if sse.key_id:  # SSE-S3 in a volume that is not encrypted itself: the bucket's dfs-managed key
            codec = VolumeCodec(codec.level, sse.key_id)
        return open_block_writer(
            self.client, policy=await self.policy(c), volume_codec=codec, sse_c=sse.cipher, share=sse.share
        )

    # -- lookups ----------
    async def bucket_ino(self, bucket: str) -> int:
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

    async def object(self, c: Call) -> tuple[ObjectInfo, bool]:
        """The object named by the call's key, and whether the key named a directory marker."""
        bucket_ino = await self.bucket_ino(c.bucket)
        version = c.query.get("versionId")
        names, is_dir = s3names.key_to_names(c.key)
        if version is not None and not is_dir:
            return await self._version(c, bucket_ino, version), False
        if version is not None and version != s3xml.NULL_VERSION:
            raise version_error(version, c.key)
        try:
            attr = await self.client.resolve(bucket_ino, names)
        except (NotFound, NotADirectory):
            await self._deleted(c, bucket_ino, is_dir)
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=c.key) from None
        if is_dir != attr.is_dir or not (attr.is_dir or attr.is_reg):
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=c.key)
        return await self.info(attr, c.key), is_dir

    async def _version(self, c: Call, bucket_ino: int, version: str) -> ObjectInfo:
        """Version ``version`` of the call's key: NoSuchVersion if there is none, 405 for a
        delete marker (x-amz-delete-marker), as AWS answers a GET or HEAD of one."""
        if version != s3xml.NULL_VERSION and VERSION_ID_RE.fullmatch(version) is None:
            raise version_error(version, c.key)
        try:
            got = await endpoints.S3_VERSIONS_GET.call(self.client, bucket_ino, c.key.encode(), version)
        except NotFound:
            if version == s3xml.NULL_VERSION:
                raise S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=c.key) from None
            raise version_error(version, c.key) from None
        if got["delete_marker"]:
            c.extra_headers += [("x-amz-delete-marker", "true"), ("x-amz-version-id", version)]
            raise S3Error(
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
                405,
                Method=c.req.method,
                ResourceType="DeleteMarker",
            )
        info = await self.info(await self.client.getattr(int(got["ino"])), c.key)
        if XA_VERSION_ID not in info.xattrs:
            c.extra_headers.append(("x-amz-version-id", str(got["version_id"])))
        return info

    async def _deleted(self, c: Call, bucket_ino: int, is_dir: bool) -> None:
        """On a 404: if the key's latest version is a delete marker, say so in the headers."""
        if is_dir or await endpoints.S3_VERSIONING_GET.call(self.client, bucket_ino) is None:
            return
        try:
            got = await endpoints.S3_VERSIONS_GET.call(self.client, bucket_ino, c.key.encode(), None)
        except DfsError:
            return
        if got["delete_marker"]:
            c.extra_headers += [("x-amz-delete-marker", "true"), ("x-amz-version-id", str(got["version_id"]))]

    async def info(self, attr: Attr, key: str) -> ObjectInfo:
        xattrs: dict[bytes, bytes] = {}
        for name in await self.client.listxattr(attr.ino):
            if name.startswith(_S3_PREFIX):
                try:
                    xattrs[name] = await self.client.getxattr(attr.ino, name)
                except DfsError:
                    continue  # removed meanwhile
        return object_info(attr, xattrs, key)

    async def maybe_resolve(self, parent: int, names: list[bytes]) -> int | None:
        try:
            return (await self.client.resolve(parent, names)).ino
        except (NotFound, NotADirectory):
            return None

    async def entries(self, ino: int) -> AsyncIterator[DirEntry]:
        """Every entry of a directory, a page at a time (list_dir resumes after a sort key)."""
        after = b""
        while True:
            page = await self.client.list_dir(ino, after, PAGE)
            for entry in page:
                yield entry
            if len(page) < PAGE:
                return
            last = page[-1]
            after = last.name + (b"/" if last.attr.is_dir else b"")

    # -- writing ----------
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

    async def store_body(self, c: Call) -> tuple[list[Any], bytes | None, int, sigv4.BodyChecks]:
        """Stream the request body into blocks: (block refs, inline bytes, size, verified checks)."""
        assert c.auth is not None
        self._body_limits(c)
        checks = sigv4.BodyChecks(c.headers, c.auth)
        async with await self.writer(c) as writer:
            async for piece in payload(c.req, c.auth, checks, max_bytes=self.s3.max_object_bytes):
                await writer.write(piece)
            blocks, inline = await writer.finish(self.client.inline_max)
            size = writer.size
        c.bytes_in = size
        return blocks, inline, size, checks

    async def write_conditions(
        self, c: Call, bucket_ino: int, names: list[bytes]
    ) -> tuple[bytes, bytes] | None:
        """Check If-Match / If-None-Match for a write; returns the atomic re-check for the commit."""
        if "if-match" not in c.headers and "if-none-match" not in c.headers:
            return None
        try:
            attr = await self.client.resolve(bucket_ino, names)
            info: ObjectInfo | None = await self.info(attr, c.key) if attr.is_reg else None
        except (NotFound, NotADirectory):
            info = None
        s3names.check_write_conditions(c.headers, exists=info is not None, etag=info.etag if info else None)
        if info is not None and "if-match" in c.headers and XA_ETAG in info.xattrs:
            return (XA_ETAG, info.xattrs[XA_ETAG])
        return None

    async def commit(
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
        """Link the new object at its key; in a bucket with versioning it gets a version id
        (Enabled: a new one; Suspended: ``null``), answered in ``x-amz-version-id``."""
        status = await endpoints.S3_VERSIONING_GET.call(self.client, parent)
        if status is not None:
            vid = new_version_id() if status == "Enabled" else s3xml.NULL_VERSION
            xattrs[XA_VERSION_ID] = vid.encode()
            c.extra_headers.append(("x-amz-version-id", vid))
        # S3 object lock: what the headers ask, else the bucket's default (daemon/s3/objlock.py).
        await stamp_request(self.client, c, parent, status, xattrs, self.s3.lifecycle_day_s)
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
                replicas=replicas(await self.policy(c)),
            )
        except (NotADirectory, IsADirectory):
            raise conflict(c.key) from None


# The shape of the version ids AWS issues: 32 characters of letters, digits, "." and "_".  Any
# other id (but "null") is malformed, which AWS answers with 400 rather than 404.
VERSION_ID_RE = re.compile(r"[A-Za-z0-9._]{32}")


def new_version_id() -> str:
    """32 hex digits, time first: ids of one key sort by age (daemon/meta/versions.py makes the
    same kind for delete markers)."""
    return f"{time.time_ns():016x}{secrets.randbits(64):016x}"


def version_error(version_id: str, key: str) -> S3Error:
    """What AWS answers for a version id other than ``null``, the only version here."""
    if not version_id:
        return S3Error(
            "InvalidArgument",
            "Version id cannot be the empty string",
            400,
            ArgumentName="versionId",
            ArgumentValue=version_id,
        )
    if VERSION_ID_RE.fullmatch(version_id) is None:
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


def replicas(policy: Policy | None) -> int | None:
    return None if policy is None else policy.replicas


def conflict(key: str) -> S3Error:
    return S3Error(
        "PathConflict",
        "The key clashes with the filesystem tree: a prefix of it is an object, or it names a directory",
        409,
        Key=key,
    )


def stamp(etag: str, size: int, mtime_ns: int) -> bytes:
    return f"{etag} {size} {mtime_ns}".encode()


def request_xattrs(headers: Mapping[str, str]) -> dict[bytes, bytes]:
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


def object_info(attr: Attr, xattrs: dict[bytes, bytes], key: str) -> ObjectInfo:
    etag = None
    raw = xattrs.get(XA_ETAG)
    if raw:
        parts = raw.decode(errors="replace").split(" ")
        if len(parts) == 3 and parts[1] == str(attr.size) and parts[2] == str(attr.mtime_ns):
            etag = parts[0]
    if etag is None:
        if attr.is_dir:
            etag = EMPTY_MD5
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
