"""Object and bucket tagging: Put/Get/Delete{Object,Bucket}Tagging and the x-amz-tagging header.

Tags are the xattr ``user.s3.tagging`` (dfs/core/s3tags.py's canonical
encoding) of the object's file or of the bucket directory, so the mount sees
them.  A PutObject, CopyObject (``x-amz-tagging-directive: REPLACE``) or
CreateMultipartUpload carrying ``x-amz-tagging`` stores the tags with the
object in its one commit (:func:`header_xattrs`); a CopyObject with the
default directive COPY keeps the source's.  Changing the tags of an existing
object sets the xattr alone: ETag and Last-Modified stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

from daemon.http import Response
from daemon.s3.call import Call, read_checked_body, xml
from daemon.s3.tree import ObjectInfo, ObjectTree
from dfs.core import s3tags, s3xml
from dfs.core.errors import NoAttribute, NotFound, S3Error

XA_TAGGING = b"user.s3.tagging"
# Tagging bodies are small: 50 tags of the longest are well under this.
MAX_TAGGING_BODY_BYTES = 256 * 1024


def header_xattrs(headers: Mapping[str, str]) -> dict[bytes, bytes]:
    """The tagging xattr an ``x-amz-tagging`` header asks for (none without the header)."""
    raw = headers.get("x-amz-tagging")
    if raw is None:
        return {}
    tags = s3tags.parse_header(raw)
    return {XA_TAGGING: s3tags.encode(tags)} if tags else {}


def copy_xattrs(headers: Mapping[str, str], source: ObjectInfo) -> dict[bytes, bytes]:
    """The tagging xattr of a copy: the source's (directive COPY, the default) or the header's."""
    directive = headers.get("x-amz-tagging-directive", "COPY").upper()
    if directive == "REPLACE":
        return header_xattrs(headers)
    if directive != "COPY":
        raise S3Error("InvalidArgument", "Unknown tagging directive.")
    raw = source.xattrs.get(XA_TAGGING)
    return {XA_TAGGING: raw} if raw else {}


def count_header(info: ObjectInfo) -> list[tuple[str, str]]:
    """``x-amz-tagging-count`` for a GET/HEAD answer, when the object has tags."""
    raw = info.xattrs.get(XA_TAGGING)
    if not raw:
        return []
    return [("x-amz-tagging-count", str(len(s3tags.decode(raw))))]


class Tagging:
    """The tagging operations over one object tree."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.client = tree.client

    # -- objects ----------
    async def get_object(self, c: Call) -> Response:
        info, _ = await self.tree.object(c)
        raw = info.xattrs.get(XA_TAGGING)
        return xml(s3xml.tagging(s3tags.decode(raw) if raw else []))

    async def put_object(self, c: Call) -> Response:
        info, _ = await self.tree.object(c)
        tags = s3xml.parse_tagging(await read_checked_body(c, MAX_TAGGING_BODY_BYTES))
        s3tags.check(tags, max_tags=s3tags.MAX_OBJECT_TAGS)
        await self._set(info.attr.ino, tags, c.key)
        return Response(200)

    async def delete_object(self, c: Call) -> Response:
        info, _ = await self.tree.object(c)
        await self._set(info.attr.ino, [], c.key)
        return Response(204)

    async def _set(self, ino: int, tags: s3tags.Tags, key: str) -> None:
        try:
            if tags:
                await self.client.setxattr(ino, XA_TAGGING, s3tags.encode(tags), 0)
            else:
                await self.client.removexattr(ino, XA_TAGGING)
        except NoAttribute:
            pass  # no tags to remove
        except NotFound:
            # Deleted between the lookup and the write.
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=key) from None

    # -- buckets ----------
    async def get_bucket(self, c: Call) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        try:
            raw = await self.client.getxattr(ino, XA_TAGGING)
        except NoAttribute:
            raw = b""
        tags = s3tags.decode(raw) if raw else []
        if not tags:
            raise S3Error("NoSuchTagSet", "The TagSet does not exist", 404, BucketName=c.bucket)
        return xml(s3xml.tagging(tags))

    async def put_bucket(self, c: Call) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        tags = s3xml.parse_tagging(await read_checked_body(c, MAX_TAGGING_BODY_BYTES))
        s3tags.check(tags, max_tags=s3tags.MAX_BUCKET_TAGS, bucket=True)
        if tags:
            await self.client.setxattr(ino, XA_TAGGING, s3tags.encode(tags), 0)
        else:
            await self._remove_bucket(ino)
        return Response(204)

    async def delete_bucket(self, c: Call) -> Response:
        await self._remove_bucket(await self.tree.bucket_ino(c.bucket))
        return Response(204)

    async def _remove_bucket(self, ino: int) -> None:
        try:
            await self.client.removexattr(ino, XA_TAGGING)
        except NoAttribute:
            pass
