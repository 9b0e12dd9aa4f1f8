"""ListObjectVersions of a bucket with versioning: the current objects merged with the rest.

The current version of each key is the file at its path, found by the
listing walk (daemon/s3/listing.py) in key order; the non-current versions and
delete markers are ``s3_versions`` rows (daemon/meta/versions.py), read in
pages in (key, newest first) order.  Merging the two streams gives AWS's order:
by key, then the current version, then older ones.  A version is the latest
when its key has no current file and it is the key's newest row.

Paging: ``key-marker`` alone resumes after every version of that key (or after
the whole common prefix it names); with ``version-id-marker`` the rest of that
key's versions come first.  Common prefixes (``delimiter``) count as one entry
each.  The walk does not skip rolled-up directories here (a deleted key has no
directory to skip), so a page with a delimiter costs the keys under its
prefixes: bounded by the bucket, not by the page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from daemon.s3.call import Call
from daemon.s3.tree import PAGE, XA_ETAG, ObjectTree, object_info
from dfs.core import endpoints, s3names, s3xml
from dfs.core.errors import DfsError
from dfs.core.namespace import Attr
from dfs.core.s3xml import VersionEntry

# Listing._walk (daemon/s3/listing.py): (bucket, prefix, delimiter, start, version ids out) -> keys.
Walk = Callable[[int, str, str, str, dict[str, str]], AsyncIterator[s3names.Listed]]
# A seq above every real one (daemon/meta/versions.py SEQ_ALL): every row of the marker key.
_SEQ_ALL = 2**62
# Pages of one key's rows read to resume inside it (PAGE rows each).
_KEY_PAGES_MAX = 100


class VersionLister:
    """One ListObjectVersions request on a bucket that has (had) versioning."""

    def __init__(self, tree: ObjectTree, walk: Walk, c: Call, bucket_ino: int) -> None:
        self.walk = walk
        self.tree = tree
        self.client = tree.client
        self.c = c
        self.bucket = bucket_ino
        q = c.query
        self.prefix = q.get("prefix", "")
        self.delimiter = q.get("delimiter", "")
        self.encoding_url = q.get("encoding-type") == "url"

    async def page(self, key_marker: str, id_marker: str, max_keys: int) -> bytes:
        entries: list[VersionEntry] = []
        prefixes: list[str] = []
        last: tuple[str, str | None] | None = None
        truncated = False
        if max_keys > 0:
            async for entry in self._entries(key_marker, id_marker):
                cp = self._common_prefix(entry.key)
                if cp is not None and (cp == key_marker or (prefixes and prefixes[-1] == cp)):
                    continue
                if len(entries) + len(prefixes) == max_keys:
                    truncated = True
                    break
                if cp is not None:
                    prefixes.append(cp)
                    last = (cp, None)
                else:
                    entries.append(entry)
                    last = (entry.key, entry.version_id)
        return s3xml.list_versions_result(
            entries,
            prefixes,
            bucket=self.c.bucket,
            prefix=self.prefix,
            key_marker=key_marker,
            version_id_marker=id_marker,
            next_markers=last if truncated else None,
            delimiter=self.delimiter,
            max_keys=max_keys,
            encoding_url=self.encoding_url,
            owner=self.c.owner,
        )

    def _common_prefix(self, key: str) -> str | None:
        if not self.delimiter:
            return None
        i = key.find(self.delimiter, len(self.prefix))
        return None if i < 0 else key[: i + len(self.delimiter)]

    async def _entries(self, key_marker: str, id_marker: str) -> AsyncIterator[VersionEntry]:
        """Every version after the markers, in listing order."""
        if id_marker:
            group = await self._key_versions(key_marker)
            at = next((i for i, e in enumerate(group) if e.version_id == id_marker), None)
            if at is not None:  # an unknown id: resume after the key
                for entry in group[at + 1 :]:
                    yield entry
        current = self._current(key_marker).__aiter__()
        rows = self._rows(key_marker).__aiter__()
        cur = await anext(current, None)
        row = await anext(rows, None)
        current_key: str | None = None
        row_key: str | None = None
        while cur is not None or row is not None:
            if row is None or (cur is not None and cur.key.encode() <= row.key.encode()):
                assert cur is not None
                yield cur
                current_key = cur.key
                cur = await anext(current, None)
            else:
                yield row._replace(is_latest=row.key not in (current_key, row_key))
                row_key = row.key
                row = await anext(rows, None)

    async def _current(self, start: str) -> AsyncIterator[VersionEntry]:
        ids: dict[str, str] = {}
        async for item in self.walk(self.bucket, self.prefix, "", start, ids):
            entry = item.entry
            if entry is None or not item.key.startswith(self.prefix):
                continue
            vid = ids.pop(item.key, s3xml.NULL_VERSION)
            yield VersionEntry(entry.key, vid, True, entry.mtime_ns, entry.etag, entry.size, False)

    async def _rows(self, start: str) -> AsyncIterator[VersionEntry]:
        after_key, after_seq = start.encode(), 0
        while True:
            page: list[Any] = await endpoints.S3_VERSIONS_LIST.call(
                self.client, self.bucket, self.prefix.encode(), after_key, after_seq, PAGE
            )
            for row in page:
                entry = _row_entry(row)
                if entry is not None:
                    yield entry
            if len(page) < PAGE:
                return
            after_key, after_seq = bytes(page[-1][0]), int(page[-1][2])

    async def _key_versions(self, key: str) -> list[VersionEntry]:
        """Every version of ``key``, newest first (to resume inside it)."""
        group: list[VersionEntry] = []
        try:
            got = await endpoints.S3_VERSIONS_GET.call(self.client, self.bucket, key.encode(), None)
        except DfsError:  # no current version, or a key the metadata refuses: none
            got = None
        if got is not None and not got["delete_marker"]:
            attr = await self.client.getattr(int(got["ino"]))
            info = await self.tree.info(attr, key)
            group.append(
                VersionEntry(key, str(got["version_id"]), True, attr.mtime_ns, info.etag, attr.size, False)
            )
        after_seq = _SEQ_ALL
        for _ in range(_KEY_PAGES_MAX):
            page: list[Any] = await endpoints.S3_VERSIONS_LIST.call(
                self.client, self.bucket, key.encode(), key.encode(), after_seq, PAGE
            )
            mine = [row for row in page if bytes(row[0]) == key.encode()]
            for row in mine:
                entry = _row_entry(row)
                if entry is not None:
                    group.append(entry._replace(is_latest=not group))
            if len(mine) < PAGE:
                break
            after_seq = int(mine[-1][2])
        return group


def _row_entry(row: list[Any]) -> VersionEntry | None:
    """A versions_list row as a listing entry (is_latest False: the merge decides); None for a
    key that is not UTF-8 (invisible to S3)."""
    raw_key, vid, _, created_ns, attr_row, etag_raw = row
    try:
        key = bytes(raw_key).decode()
    except UnicodeDecodeError:
        return None
    if attr_row is None:
        return VersionEntry(key, str(vid), False, int(created_ns), "", 0, True)
    attr = Attr(*attr_row)
    xattrs = {} if etag_raw is None else {XA_ETAG: bytes(etag_raw)}
    etag = object_info(attr, xattrs, key).etag
    return VersionEntry(key, str(vid), False, attr.mtime_ns, etag, attr.size, False)
