"""Listing a bucket: ListObjects (V1 and V2) and ListObjectVersions.

Keys come from a depth-first walk of the bucket's directory tree in UTF-8
byte order, resumed at the page's marker rather than started over, so a page
costs about its own size whatever the bucket holds.  Directories are listed as
CommonPrefixes; an empty directory is also a zero-byte ``d/`` object.  Without
versioning, ListObjectVersions is a ListObjects page with VersionId ``null``
on every entry; with it, daemon/s3/versioning.py merges this walk with the
non-current versions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.http import Response
from daemon.s3.call import Call, xml
from daemon.s3.tree import EMPTY_MD5, PAGE, XA_VERSION_ID, ObjectTree
from daemon.s3.versioning import VersionLister
from dfs.core import endpoints, s3names, s3xml
from dfs.core.errors import NotADirectory, NotFound, S3Error
from dfs.core.s3xml import ObjectEntry


class Listing:
    """The listing operations of one bucket."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.client = tree.client

    async def list_objects(self, c: Call, *, v2: bool) -> Response:
        bucket_ino = await self.tree.bucket_ino(c.bucket)
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
                owner=c.owner if q.get("fetch-owner") == "true" else None,
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
                owner=c.owner,
            )
        return xml(body)

    async def list_versions(self, c: Call) -> Response:
        """ListObjectVersions: without versioning, a ListObjects page whose every object is its
        one version, ``null``; so key-marker is ListObjects' marker and the only version-id-marker
        there can be is ``null`` (resuming after that key)."""
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        q = c.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        max_keys = s3names.parse_max_keys(q.get("max-keys"))
        encoding_url = _encoding_url(q)
        key_marker = q.get("key-marker", "")
        id_marker = q.get("version-id-marker", "")
        if id_marker and not key_marker:
            raise S3Error(
                "InvalidArgument",
                "A version-id marker cannot be specified without a key marker.",
                400,
                ArgumentName="version-id-marker",
                ArgumentValue=id_marker,
            )
        if await endpoints.S3_VERSIONING_GET.call(self.client, bucket_ino) is not None:
            lister = VersionLister(self.tree, self._walk, c, bucket_ino)
            return xml(await lister.page(key_marker, id_marker, max_keys))
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
        return xml(
            s3xml.list_object_versions(
                page,
                bucket=c.bucket,
                prefix=prefix,
                key_marker=key_marker,
                version_id_marker=id_marker,
                delimiter=delimiter,
                max_keys=max_keys,
                encoding_url=encoding_url,
                owner=c.owner,
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
        self, bucket_ino: int, prefix: str, delimiter: str, start: str, ids: dict[str, str] | None = None
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
        async for item in self._walk_dir(top.ino, base, partial.encode(), delimiter == "/", start, ids):
            yield item

    async def _walk_dir(
        self, ino: int, base: str, partial: bytes, roll_dirs: bool, start: str, ids: dict[str, str] | None
    ) -> AsyncIterator[s3names.Listed]:
        """Depth-first over ``ino``'s subtree in key order, with an explicit stack: keys may be
        512 directories deep, more than Python's recursion allows.  ``ids`` collects the
        version id of each object yielded that has one."""
        start_b = start.encode()
        stack = [_WalkFrame.at(ino, base.encode(), partial, start_b)]
        while stack:
            frame = stack[-1]
            if frame.next >= len(frame.page):
                if frame.done:
                    stack.pop()
                    continue
                frame.page = await self.client.list_dir(frame.ino, frame.after, PAGE)
                frame.next = 0
                frame.done = len(frame.page) < PAGE
                if (
                    frame.first
                    and not frame.page
                    and frame.base
                    and not frame.partial
                    and frame.base > start_b
                ):
                    # An empty directory is a zero-byte "dir/" object.
                    key = frame.base.decode()
                    yield s3names.Listed(key, ObjectEntry(key, 0, 0, EMPTY_MD5))
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
                info = await self.tree.info(entry.attr, key)
                if ids is not None and XA_VERSION_ID in info.xattrs:
                    ids[key] = info.xattrs[XA_VERSION_ID].decode(errors="replace")
                yield s3names.Listed(key, ObjectEntry(key, entry.attr.size, entry.attr.mtime_ns, info.etag))


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


def _before(name: bytes) -> bytes:
    """A sort key just below every name starting with ``name`` (list_dir's ``after`` is exclusive)."""
    if not name:
        return b""
    last = name[-1]
    if last == 0:
        return name[:-1]
    return name[:-1] + bytes([last - 1]) + b"\xff" * 8


def _encoding_url(query: Mapping[str, str]) -> bool:
    """Whether a listing asked for ``encoding-type=url``; any other value is 400."""
    encoding = query.get("encoding-type")
    if encoding not in (None, "", "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
    return encoding == "url"
