"""Multipart uploads: create, upload a part (or copy one), list parts, abort, complete, list uploads.

Uploads live in the metadata's internal ``uploads`` directory (not reachable
from the root): ``<upload-id>/info`` holds the target and the object's
attributes, ``<upload-id>/<part>`` each part.  Completion reuses the parts'
chunks wherever they are block-aligned (8 MiB parts of boto3 and the aws CLI
are) and re-blocks the rest.  Uploads left unfinished are removed after
``upload_expiry_s`` by :meth:`Multipart.expire`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import msgpack

from daemon.http import Response
from daemon.s3.body import copy_range
from daemon.s3.call import MAX_XML_BYTES, Call, xml
from daemon.s3.objects import Objects
from daemon.s3.objlock import upload_request
from daemon.s3.tagging import header_xattrs
from daemon.s3.tree import XA_CHECKSUM, XA_ETAG, ObjectTree, replicas, request_xattrs, stamp
from dfs.core import s3names, s3xml
from dfs.core.errors import DfsError, NotADirectory, NotFound, S3Error
from dfs.core.namespace import Attr
from dfs.core.s3sse import WriteSse

_MIN_PART_BYTES = 5 * 1024 * 1024
_MAX_PARTS = 10000
_INFO = b"info"


class Multipart:
    """The multipart uploads of the whole filesystem (one internal directory holds them all)."""

    def __init__(self, tree: ObjectTree, objects: Objects) -> None:
        self.tree = tree
        self.objects = objects  # an UploadPartCopy reads its source as CopyObject does
        self.client = tree.client
        self.s3 = tree.s3
        self._uploads_ino: int | None = None

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

    async def create(self, c: Call) -> Response:
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        names, is_dir = s3names.key_to_names(c.key)
        if is_dir:
            raise S3Error("InvalidArgument", "A key ending in '/' names a directory")
        # SSE (daemon/s3/sse.py): the marker goes with the object's xattrs; every part follows it.
        sse_xattrs = await self.tree.sse.for_write(c, bucket_ino)
        # Object lock headers are checked now and applied at completion (daemon/s3/objlock.py).
        sse_xattrs = sse_xattrs | await upload_request(self.client, c, bucket_ino, self.s3.lifecycle_day_s)
        upload_id = secrets.token_urlsafe(24)
        algorithm = c.headers.get("x-amz-checksum-algorithm", "").upper() or None
        info = {
            "bucket": c.bucket,
            "key": c.key,
            "initiated_ns": time.time_ns(),
            # Tags are checked now and stored with the object at completion.
            "xattrs": request_xattrs(c.headers) | header_xattrs(c.headers) | c.acl_xattrs | sse_xattrs,
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
        return xml(s3xml.initiate_multipart(c.bucket, c.key, upload_id))

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

    async def upload_part(self, c: Call, upload_id: str) -> Response:
        n = self._part_number(c)
        upload_ino, upload = await self._upload(c, upload_id)
        await self.tree.sse.for_part(c, await self.tree.bucket_ino(c.bucket), upload.get("xattrs") or {})
        mtime = time.time_ns()
        if "x-amz-copy-source" in c.headers:
            info, fmap = await self.objects.copy_source(c)
            source_sse, source_key = self.tree.sse.source_key(c, info.xattrs)
            if c.sse is None and source_sse is not None and source_sse.kind == "C":
                c.sse = WriteSse(share=False)  # never share a customer-encrypted block into a plain part
            rng = c.headers.get("x-amz-copy-source-range")
            start, end = s3names.parse_copy_range(rng, fmap.attr.size) if rng else (0, fmap.attr.size - 1)
            async with await self.tree.writer(c) as writer:
                await copy_range(
                    writer, self.client, fmap, start, end + 1, final=True, customer_key=source_key
                )
                blocks, inline = await writer.finish(self.client.inline_max)
                size = writer.size
            # Not the MD5 of the bytes (they were shared, not read), but stable and in MD5 form,
            # as the completion's multipart ETag needs.
            etag = hashlib.md5(f"{info.etag}:{start}:{end}".encode()).hexdigest()
            checksum = None
        else:
            blocks, inline, size, checks = await self.tree.store_body(c)
            etag, checksum = checks.md5_hex, checks.checksum
        xattrs = {XA_ETAG: stamp(etag, size, mtime)}
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
                replicas=replicas(await self.tree.policy(c)),
            )
            await self.client.sync()  # a 200 for a part means it survives power loss too
        except NotFound:
            raise S3Error(
                "NoSuchUpload", "The specified upload does not exist.", 404, UploadId=upload_id
            ) from None
        if "x-amz-copy-source" in c.headers:
            return xml(s3xml.copy_part_result(etag, mtime))
        headers = [("ETag", f'"{etag}"')]
        if checksum:
            headers.append((f"x-amz-checksum-{checksum[0].lower()}", checksum[1]))
        return Response(200, headers)

    async def _parts(self, upload_ino: int) -> list[tuple[int, Attr, str]]:
        """(number, attr, etag) of every uploaded part, in part order."""
        out: list[tuple[int, Attr, str]] = []
        async for entry in self.tree.entries(upload_ino):
            if entry.name.isdigit() and entry.attr.is_reg:
                info = await self.tree.info(entry.attr, "")
                out.append((int(entry.name), entry.attr, info.etag))
        return out

    async def list_parts(self, c: Call, upload_id: str) -> Response:
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
        return xml(
            s3xml.list_parts(
                c.bucket,
                c.key,
                upload_id,
                [s3xml.PartInfo(n, etag, a.size, a.mtime_ns) for n, a, etag in shown],
                part_number_marker=marker,
                next_marker=shown[-1][0] if truncated and shown else None,
                max_parts=max_parts,
                truncated=truncated,
                owner=c.owner,
            )
        )

    async def abort(self, c: Call, upload_id: str) -> Response:
        await self._upload(c, upload_id)
        try:
            await self.client.remove_tree(await self._uploads(), upload_id.encode())
        except NotFound:
            raise S3Error(
                "NoSuchUpload", "The specified upload does not exist.", 404, UploadId=upload_id
            ) from None
        return Response(204)

    async def complete(self, c: Call, upload_id: str) -> Response:
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        upload_ino, info = await self._upload(c, upload_id)
        body = await c.req.read_body(MAX_XML_BYTES)
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
        if_match = await self.tree.write_conditions(c, bucket_ino, names)
        parts_key = await self.tree.sse.for_complete(c, bucket_ino, info.get("xattrs") or {})
        async with await self.tree.writer(c) as writer:
            for i, attr in enumerate(chosen):
                fmap = await self.client.read_map(attr.ino)
                last = i == len(chosen) - 1
                await copy_range(writer, self.client, fmap, 0, attr.size, final=last, customer_key=parts_key)
            blocks, inline = await writer.finish(self.client.inline_max)
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag.strip('"')) for p in wanted)).hexdigest()
        etag = f"{digest}-{len(wanted)}"
        mtime = time.time_ns()
        xattrs = dict(info.get("xattrs") or {})
        xattrs[XA_ETAG] = stamp(etag, total, mtime)
        await self.tree.commit(c, bucket_ino, names, total, mtime, blocks, inline, xattrs, if_match)
        try:
            await self.client.remove_tree(await self._uploads(), upload_id.encode())
        except NotFound:
            pass  # a concurrent completion or abort got there first
        location = f"/{c.bucket}/{urllib.parse.quote(c.key)}"
        return xml(s3xml.complete_multipart(location, c.bucket, c.key, etag))

    async def list_uploads(self, c: Call) -> Response:
        q = c.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        key_marker = q.get("key-marker", "")
        id_marker = q.get("upload-id-marker", "")
        max_uploads = s3names.parse_max_keys(q.get("max-uploads"))
        encoding_url = q.get("encoding-type") == "url"
        found: list[s3xml.UploadInfo] = []
        async for entry in self.tree.entries(await self._uploads()):
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
        return xml(
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
                owner=c.owner,
            )
        )

    async def each(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(upload id, info) of every upload in progress (the lifecycle worker's walk)."""
        async for entry in self.tree.entries(await self._uploads()):
            try:
                fmap = await self.client.read_map((await self.client.lookup(entry.attr.ino, _INFO)).ino)
            except DfsError:
                continue  # being created or removed
            yield entry.name.decode("utf-8", "replace"), msgpack.unpackb(fmap.inline or b"", raw=False)

    async def remove(self, upload_id: str) -> bool:
        """Abort an upload without a request (a lifecycle rule): False if it was already gone."""
        try:
            await self.client.remove_tree(await self._uploads(), upload_id.encode())
        except NotFound:
            return False
        return True

    async def expire(self) -> int:
        """Remove multipart uploads older than ``upload_expiry_s``; returns how many."""
        root = await self._uploads()
        cutoff = time.time_ns() - int(self.s3.upload_expiry_s * 1e9)
        removed = 0
        async for entry in self.tree.entries(root):
            if entry.attr.ctime_ns < cutoff:
                try:
                    await self.client.remove_tree(root, entry.name)
                    removed += 1
                except NotFound:
                    pass
        return removed
