"""Object operations: GetObject/HeadObject, PutObject, CopyObject, DeleteObject, DeleteObjects.

A key ending in ``/`` names a directory: a zero-byte PUT of ``d/`` makes one
(an empty directory is also listed as the zero-byte object ``d/``).  A write
whose path clashes with the tree (``a`` is a file and ``a/b`` is written, or
the key names a directory) is refused with **409 PathConflict** before
anything is written.  In a bucket that never had versioning ``versionId=null``
names the object itself; deleting any other well-formed version id succeeds
and deletes nothing, as AWS does for a version that does not exist.  With
versioning, deletes go through ``s3.versions_delete`` (daemon/meta/versions.py):
delete markers, and versions removed for good.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncGenerator

from daemon.http import Response
from daemon.s3.acl import XA_ACL
from daemon.s3.body import copy_range, prefetched_range, read_range
from daemon.s3.call import MAX_XML_BYTES, Call, authorize, read_checked_body, xml
from daemon.s3.objlock import bypass_allowed, response_headers
from daemon.s3.sse import XA_SSE
from daemon.s3.tagging import XA_TAGGING, copy_xattrs, count_header, header_xattrs
from daemon.s3.tree import (
    EMPTY_MD5,
    VERSION_ID_RE,
    XA_CHECKSUM,
    XA_ETAG,
    XA_VERSION_ID,
    ObjectInfo,
    ObjectTree,
    conflict,
    object_info,
    request_xattrs,
    stamp,
    version_error,
)
from dfs.core import endpoints, s3names, s3sse, s3xml
from dfs.core.errors import DfsError, IsADirectory, NotADirectory, NotEmpty, NotFound, S3Error, s3_code
from dfs.core.namespace import FileMap
from dfs.core.s3grants import COPY_SOURCE

# The response-* query parameters of a GET that override the stored header of that name.
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


class Objects:
    """Reading, writing, copying and deleting single objects."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.client = tree.client

    # -- GET / HEAD ----------
    async def get(self, c: Call, *, head: bool) -> Response:
        info, is_dir = await self.tree.object(c)
        customer_key = None if is_dir else self.tree.sse.for_read(c, info.xattrs)  # SSE-C: 400/403 here
        fmap: FileMap | None = None
        if not head and not is_dir and info.attr.size:
            # The block map and the headers must describe the same version of a file that
            # the mount may be changing: read the map, and the xattrs again if it moved on.
            for _ in range(3):
                fmap = await self.client.read_map(info.attr.ino)
                if (fmap.attr.size, fmap.attr.mtime_ns) == (info.attr.size, info.attr.mtime_ns):
                    break
                info = await self.tree.info(fmap.attr, c.key)
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
        if XA_VERSION_ID in info.xattrs:
            headers.append(("x-amz-version-id", info.xattrs[XA_VERSION_ID].decode(errors="replace")))
        headers += [(f"x-amz-meta-{k}", v) for k, v in info.meta.items()]
        headers += list(info.headers.items())
        headers += count_header(info)
        headers += response_headers(info.xattrs)  # x-amz-object-lock-* (daemon/s3/objlock.py)
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
        nursery = self.tree.nursery
        pieces = (
            prefetched_range(self.client, fmap, start, end, nursery, customer_key)
            if nursery is not None
            else read_range(self.client, fmap, start, end, customer_key)
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
    async def put(self, c: Call) -> Response:
        tree = self.tree
        bucket_ino = await tree.bucket_ino(c.bucket)
        names, is_dir = s3names.key_to_names(c.key)
        xattrs = request_xattrs(c.headers)
        xattrs.update(header_xattrs(c.headers))  # checked before the body is read
        xattrs.update(c.acl_xattrs)  # x-amz-acl / x-amz-grant-*, checked by the router
        if is_dir:
            blocks, inline, size, checks = await tree.store_body(c)
            if size:
                raise S3Error("InvalidArgument", "A key ending in '/' names a directory and takes no body")
            try:
                await self.client.make_dirs(bucket_ino, names)
            except (NotADirectory, IsADirectory):
                raise conflict(c.key) from None
            await self.client.sync()
            return Response(200, [("ETag", f'"{EMPTY_MD5}"')])
        if_match = await tree.write_conditions(c, bucket_ino, names)
        xattrs.update(await tree.sse.for_write(c, bucket_ino))
        blocks, inline, size, checks = await tree.store_body(c)
        mtime = time.time_ns()
        xattrs[XA_ETAG] = stamp(checks.md5_hex, size, mtime)
        if checks.checksum:
            xattrs[XA_CHECKSUM] = f"{checks.checksum[0]} {checks.checksum[1]}".encode()
        await tree.commit(c, bucket_ino, names, size, mtime, blocks, inline, xattrs, if_match)
        headers = [("ETag", f'"{checks.md5_hex}"')]
        if checks.checksum:
            headers.append((f"x-amz-checksum-{checks.checksum[0].lower()}", checks.checksum[1]))
        return Response(200, headers)

    # -- copy ----------
    async def copy_source(self, c: Call) -> tuple[ObjectInfo, FileMap]:
        """The object ``x-amz-copy-source`` names (its conditions checked) and its block map: the
        current one, or the version ``?versionId=`` names; CopyObject and UploadPartCopy answer
        its id in ``x-amz-copy-source-version-id``."""
        raw = c.headers["x-amz-copy-source"]
        source = urllib.parse.unquote(raw.split("?", 1)[0])
        version = urllib.parse.parse_qs(raw.partition("?")[2]).get("versionId")
        bucket, _, key = source.lstrip("/").partition("/")
        if not bucket or not key:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key")
        try:
            if c.check is not None:
                # The source must be readable too (one version of it: s3:GetObjectVersion).
                await c.check(bucket, key, "GetObject", versioned=bool(version))
            else:
                authorize(c, bucket, COPY_SOURCE)
        except S3Error:
            await self.tree.bucket_ino(bucket)  # NoSuchBucket first, as for any request
            raise
        query = {"versionId": version[0]} if version else {}
        src = Call(c.req, c.request_id, bucket, key, query, c.headers, "/" + source.lstrip("/"))
        info, is_dir = await self.tree.object(src)
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
        if XA_VERSION_ID in info.xattrs:
            source_id: str | None = info.xattrs[XA_VERSION_ID].decode(errors="replace")
        else:  # a version without an id of its own (null, or one derived by the metadata)
            source_id = version[0] if version else None
        if source_id is not None:
            c.extra_headers.append(("x-amz-copy-source-version-id", source_id))
        return object_info(fmap.attr, info.xattrs, key), fmap

    async def copy(self, c: Call) -> Response:
        tree = self.tree
        bucket_ino = await tree.bucket_ino(c.bucket)
        names, is_dir = s3names.key_to_names(c.key)
        if is_dir:
            raise S3Error("InvalidArgument", "A key ending in '/' names a directory")
        info, fmap = await self.copy_source(c)
        source_sse, source_key = tree.sse.source_key(c, info.xattrs)
        directive = c.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.")
        same = info.attr.ino == (await tree.maybe_resolve(bucket_ino, names))
        if same and directive != "REPLACE" and not s3sse.requested_any(c.headers):
            raise S3Error(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without "
                "changing the object's metadata, storage class, website redirect location or encryption "
                "attributes.",
            )
        if directive == "REPLACE":
            xattrs = request_xattrs(c.headers)
        else:
            # A copy never takes its source's ACL: it gets the one its headers ask (or none).
            dropped = (XA_ETAG, XA_CHECKSUM, XA_TAGGING, XA_VERSION_ID, XA_ACL, XA_SSE)
            xattrs = {k: v for k, v in info.xattrs.items() if k not in dropped}
        # Tags follow their own directive (x-amz-tagging-directive), whatever the metadata's.
        xattrs.update(copy_xattrs(c.headers, info))
        xattrs.update(c.acl_xattrs)
        xattrs.update(await tree.sse.for_write(c, bucket_ino, source=source_sse))
        if_match = await tree.write_conditions(c, bucket_ino, names)
        size = fmap.attr.size
        async with await tree.writer(c) as writer:
            await copy_range(writer, self.client, fmap, 0, size, final=True, customer_key=source_key)
            blocks, inline = await writer.finish(self.client.inline_max)
        mtime = time.time_ns()
        etag = info.etag
        xattrs[XA_ETAG] = stamp(etag, size, mtime)
        if info.checksum:
            xattrs[XA_CHECKSUM] = f"{info.checksum[0]} {info.checksum[1]}".encode()
        await tree.commit(c, bucket_ino, names, size, mtime, blocks, inline, xattrs, if_match)
        return xml(s3xml.copy_object_result(etag, mtime))

    # -- DELETE ----------
    async def delete(self, c: Call) -> Response:
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        version = c.query.get("versionId")
        status = await endpoints.S3_VERSIONING_GET.call(self.client, bucket_ino)
        if status is not None and not c.key.endswith("/"):
            bypass = version is not None and await bypass_allowed(c)  # object lock (objlock.py)
            vid, marker = await self._delete_versioned(bucket_ino, c.key, version, bypass)
            headers = [("x-amz-version-id", vid)]
            if marker:
                headers.append(("x-amz-delete-marker", "true"))
            return Response(204, headers)
        if version is None:
            await self._delete_key(bucket_ino, c.key)
            return Response(204)
        await self._delete_version(bucket_ino, c.key, version)
        return Response(204, [("x-amz-version-id", version)])

    async def _delete_versioned(
        self, bucket_ino: int, key: str, version: str | None, bypass: bool = False
    ) -> tuple[str, bool]:
        """DeleteObject in a bucket with versioning: (the version id, whether it is a marker)."""
        if version is not None and version != s3xml.NULL_VERSION and VERSION_ID_RE.fullmatch(version) is None:
            raise version_error(version, key)
        names, _ = s3names.key_to_names(key)  # a malformed key is refused before the metadata sees it
        done = await endpoints.S3_VERSIONS_DELETE.call(self.client, bucket_ino, key.encode(), version, bypass)
        if len(names) > 1:
            await self.client.remove_empty_parents(bucket_ino, names[:-1])
        return str(done["version_id"]), bool(done["delete_marker"])

    async def _delete_version(self, bucket_ino: int, key: str, version: str) -> None:
        """Delete one version of ``key``: ``null`` is the object itself.

        Another well-formed id names a version that does not exist, and AWS
        answers that delete with success and deletes nothing; a malformed one is
        400 InvalidArgument.
        """
        if version == s3xml.NULL_VERSION:
            await self._delete_key(bucket_ino, key)
            return
        error = version_error(version, key)
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

    async def delete_many(self, c: Call) -> Response:
        """DeleteObjects: each key (or version) deleted on its own, failures reported per key."""
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        body = await read_checked_body(c, MAX_XML_BYTES)
        quiet, targets = s3xml.parse_delete(body)
        deleted: list[s3xml.DeleteTarget] = []
        errors: list[tuple[s3xml.DeleteTarget, str, str]] = []
        status = await endpoints.S3_VERSIONING_GET.call(self.client, bucket_ino)
        bypass = await bypass_allowed(c)  # object lock: for every version named (objlock.py)
        for target in targets:
            try:
                if c.check is not None:
                    versioned = target.version_id is not None  # s3:DeleteObjectVersion
                    await c.check(c.bucket, target.key, "DeleteObject", versioned=versioned)
                if status is not None and not target.key.endswith("/"):
                    vid, marker = await self._delete_versioned(
                        bucket_ino, target.key, target.version_id, bypass
                    )
                    if marker:
                        target = target._replace(marker_id=vid)
                elif target.version_id is None:
                    await self._delete_key(bucket_ino, target.key)
                else:
                    await self._delete_version(bucket_ino, target.key, target.version_id)
                if not quiet:
                    deleted.append(target)
            except S3Error as exc:
                errors.append((target, exc.s3_code, exc.message))
            except DfsError as exc:
                errors.append((target, s3_code(exc)[0], exc.message))
        return xml(s3xml.delete_result(deleted, errors))


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        yield first
        async for piece in rest:
            yield piece
    finally:
        await rest.aclose()
