"""Bucket lifecycle: Put/Get/DeleteBucketLifecycle(Configuration), ``x-amz-expiration``, and the
worker that applies the rules.

The configuration is the xattr ``user.s3.lifecycle`` of the bucket directory
(dfs/core/s3lifecycle.py's JSON; its XML is dfs/core/s3xml.py's).

:meth:`BucketLifecycle.step` is one run of the worker, which the node starts
on the daemon leading the cluster's duties only (so each object is expired
once, not once per daemon).  A run walks every bucket holding a configuration:

* current objects a rule has made due are deleted through the same path as a
  DeleteObject (so the trash, quotas and change feed all see an ordinary
  delete; in a versioned bucket that path makes a delete marker, as AWS
  expiration does);
* multipart uploads older than a rule's ``DaysAfterInitiation`` are aborted.

Each run is bounded (:data:`MAX_SCANNED_PER_RUN` keys looked at,
:data:`MAX_EXPIRED_PER_RUN` objects deleted, :data:`MAX_ABORTED_PER_RUN`
uploads aborted); a bucket cut short is resumed at its key next run.  An
object rewritten between the walk and the delete (its mtime moved on) is left
alone: its age starts again.  Day length is ``[s3] lifecycle_day_s``, so tests
can make a 1-day rule fire in a second.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from daemon.http import Response
from daemon.s3.bucket_cache import BucketCache
from daemon.s3.call import Call, read_checked_body, xml
from daemon.s3.listing import Listing
from daemon.s3.multipart import Multipart
from daemon.s3.objects import Objects
from daemon.s3.tagging import XA_TAGGING
from daemon.s3.tree import ObjectInfo, ObjectTree
from dfs.core import endpoints, s3lifecycle, s3names, s3tags, s3xml
from dfs.core.errors import DfsError, NoAttribute, NotADirectory, NotFound, NotPermitted, S3Error
from dfs.core.namespace import ROOT_INO, Attr
from dfs.core.s3lifecycle import LifecycleRule

log = logging.getLogger("dfs.s3")

XA_LIFECYCLE = b"user.s3.lifecycle"
MAX_SCANNED_PER_RUN = 100_000
MAX_EXPIRED_PER_RUN = 10_000
MAX_ABORTED_PER_RUN = 10_000
# Version rows fetched per s3.versions_list call (its own cap is 1000).
VERSIONS_PAGE = 1000
# A seq above every real one: resuming "at" a key includes all its rows (daemon/meta/versions.py).
SEQ_ALL = 2**62
# Operations whose answer carries x-amz-expiration when a rule will expire the object.
EXPIRATION_HEADER_OPS = frozenset({"GetObject", "HeadObject", "PutObject"})


@dataclass
class RunReport:
    """What one run of the worker did (its status shows the total)."""

    buckets: int = 0
    scanned: int = 0
    expired: int = 0
    aborted: int = 0

    def total(self) -> int:
        return self.expired + self.aborted


class BucketLifecycle:
    """The lifecycle operations, the ``x-amz-expiration`` header, and the worker's runs."""

    def __init__(self, tree: ObjectTree, objects: Objects, multipart: Multipart, listing: Listing) -> None:
        self.tree = tree
        self.client = tree.client
        self.s3 = tree.s3
        self.objects = objects
        self.multipart = multipart
        self.listing = listing
        # bucket -> (expiry on the monotonic clock, its rules or None for no configuration)
        self._cache: BucketCache[list[LifecycleRule] | None] = BucketCache()
        # bucket -> the key a run cut short at (the next run resumes after it)
        self._cursors: dict[str, str] = {}
        # bucket -> (key, seq) of the version row a run cut short at
        self._version_cursors: dict[str, tuple[bytes, int]] = {}
        self.last_run = RunReport()

    # -- the configuration ----------
    async def _stored(self, ino: int, bucket: str) -> list[LifecycleRule] | None:
        try:
            raw: bytes | None = await self.client.getxattr(ino, XA_LIFECYCLE)
        except NoAttribute:
            raw = None
        if not raw:
            return None
        try:
            return s3lifecycle.decode(raw)
        except ValueError as exc:
            log.warning("bucket %s: ignoring a malformed lifecycle configuration: %s", bucket, exc)
            return None

    async def rules(self, bucket: str) -> list[LifecycleRule] | None:
        """The bucket's rules, cached for CACHE_TTL_S (None: no configuration)."""
        fresh, cached = self._cache.get(bucket)
        if fresh:
            return cached
        rules = await self._stored(await self.tree.bucket_ino(bucket), bucket)
        self._cache.put(bucket, rules)
        return rules

    async def get(self, c: Call) -> Response:
        rules = await self._stored(await self.tree.bucket_ino(c.bucket), c.bucket)
        if not rules:
            raise S3Error(
                "NoSuchLifecycleConfiguration",
                "The lifecycle configuration does not exist",
                404,
                BucketName=c.bucket,
            )
        return xml(s3xml.lifecycle(rules))

    async def put(self, c: Call) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        rules = s3xml.parse_lifecycle(await read_checked_body(c, s3lifecycle.MAX_CONFIG_BYTES))
        await self.client.setxattr(ino, XA_LIFECYCLE, s3lifecycle.encode(rules), 0)
        self._cache.drop(c.bucket)
        self._cursors.pop(c.bucket, None)  # new rules: the next run walks the bucket afresh
        return Response(200)

    async def delete(self, c: Call) -> Response:
        ino = await self.tree.bucket_ino(c.bucket)
        try:
            await self.client.removexattr(ino, XA_LIFECYCLE)
        except NoAttribute:
            pass
        self._cache.drop(c.bucket)
        return Response(204)

    # -- x-amz-expiration ----------
    async def decorate(self, c: Call, resp: Response) -> None:
        """Add ``x-amz-expiration`` to a successful GET/HEAD/PUT of an object a rule will expire
        (never raises: the header is advice, the answer stands without it)."""
        if c.operation not in EXPIRATION_HEADER_OPS or not 200 <= resp.status < 300 or not c.key:
            return
        try:
            rules = await self.rules(c.bucket)
            if not rules or not any(r.enabled and r.expires_current for r in rules):
                return
            info, is_dir = await self.tree.object(c)
            if is_dir:
                return
            when = s3lifecycle.first_expiry(
                rules, c.key, info.attr.size, info.attr.mtime_ns, _tags(info), self.s3.lifecycle_day_s
            )
        except DfsError:
            return
        if when is not None:
            value = f'expiry-date="{s3names.http_date(when[0])}", rule-id="{when[1]}"'
            resp.headers.append(("x-amz-expiration", value))

    # -- the worker ----------
    async def step(self) -> int:
        """One run over every bucket with a configuration: how many objects and uploads it removed."""
        now_ns = time.time_ns()
        report = RunReport()
        configs: dict[str, tuple[int, list[LifecycleRule]]] = {}
        async for entry in self.tree.entries(ROOT_INO):
            name = entry.name.decode("utf-8", "replace")
            if entry.attr.is_dir and s3names.is_bucket_name(name):
                rules = await self._stored(entry.attr.ino, name)
                if rules and any(r.enabled for r in rules):
                    configs[name] = (entry.attr.ino, rules)
        report.buckets = len(configs)
        self._cursors = {b: k for b, k in self._cursors.items() if b in configs}
        self._version_cursors = {b: k for b, k in self._version_cursors.items() if b in configs}
        for bucket, (ino, rules) in configs.items():
            if report.scanned >= MAX_SCANNED_PER_RUN or report.expired >= MAX_EXPIRED_PER_RUN:
                break
            await self._expire_bucket(bucket, ino, rules, now_ns, report)
            await self._expire_versions(bucket, ino, rules, now_ns, report)
        if any(r.abort_upload_days is not None for _, rules in configs.values() for r in rules):
            await self._abort_uploads({b: rules for b, (_, rules) in configs.items()}, now_ns, report)
        self.last_run = report
        if report.total():
            log.info(
                "lifecycle: %d objects expired, %d uploads aborted in %d buckets",
                report.expired,
                report.aborted,
                report.buckets,
            )
        return report.total()

    async def _expire_bucket(
        self, bucket: str, ino: int, rules: list[LifecycleRule], now_ns: int, report: RunReport
    ) -> None:
        prefix = s3lifecycle.scan_prefix(rules)
        start = self._cursors.pop(bucket, "")
        if prefix is None:
            return
        day_s = self.s3.lifecycle_day_s
        last = start
        try:
            # The listing's walk: keys in order from ``start``, each with its size and mtime.
            async for item in self.listing._walk(ino, prefix, "", start):
                if report.scanned >= MAX_SCANNED_PER_RUN or report.expired >= MAX_EXPIRED_PER_RUN:
                    self._cursors[bucket] = last
                    return
                report.scanned += 1
                last = item.key
                entry = item.entry
                if entry is None:
                    continue
                if await self._due(ino, rules, entry, now_ns, day_s) and await self._expire(
                    ino, entry.key, entry.mtime_ns
                ):
                    report.expired += 1
        except (NotFound, NotADirectory):
            # A directory the walk was in went away (its last object expired, or a delete
            # through the mount): resume after the last key next run.
            self._cursors[bucket] = last

    async def _due(
        self, ino: int, rules: list[LifecycleRule], entry: s3xml.ObjectEntry, now_ns: int, day_s: float
    ) -> bool:
        """Has a rule made this object due?  Its tags are read only when a due rule asks for them."""
        due = [
            r
            for r in rules
            if (when := s3lifecycle.expiry_ns(r, entry.mtime_ns, day_s)) is not None
            and when <= now_ns
            and s3lifecycle.matches(r, entry.key, entry.size, r.filter.tags)
        ]
        if not due or entry.key.endswith("/"):
            return False
        if any(not r.filter.tags for r in due):
            return True
        names, _ = s3names.key_to_names(entry.key)
        try:
            attr = await self.client.resolve(ino, names)
            raw = await self.client.getxattr(attr.ino, XA_TAGGING)
        except (NotFound, NotADirectory, NoAttribute):
            return False
        tags = s3tags.decode(raw)
        return any(s3lifecycle.matches(r, entry.key, entry.size, tags) for r in due)

    async def _expire(self, bucket_ino: int, key: str, mtime_ns: int) -> bool:
        """Delete ``key`` as a DeleteObject would, unless it changed since the walk saw it."""
        names, _ = s3names.key_to_names(key)
        try:
            attr = await self.client.resolve(bucket_ino, names)
        except (NotFound, NotADirectory):
            return False
        if not attr.is_reg or attr.mtime_ns != mtime_ns:
            return False  # rewritten meanwhile: the new object's age starts now
        await self.objects._delete_key(bucket_ino, key)
        return True

    async def _expire_versions(
        self, bucket: str, ino: int, rules: list[LifecycleRule], now_ns: int, report: RunReport
    ) -> None:
        """NoncurrentVersionExpiration and ExpiredObjectDeleteMarker, in a bucket with versioning.

        Version rows come key by key, newest first (daemon/meta/versions.py).  A key with a
        file at its path has only non-current rows; without one, its newest row is its current
        version (a delete marker), and the marker is expired when it is the key's only row."""
        wanted = [
            r
            for r in rules
            if r.enabled and (r.noncurrent_days is not None or r.expired_object_delete_marker)
        ]
        if not wanted or await endpoints.S3_VERSIONING_GET.call(self.client, ino) is None:
            self._version_cursors.pop(bucket, None)
            return
        after_key, after_seq = self._version_cursors.pop(bucket, (b"", 0))
        group: list[_VersionRow] = []
        while True:
            rows = await endpoints.S3_VERSIONS_LIST.call(
                self.client, ino, b"", after_key, after_seq, VERSIONS_PAGE
            )
            for raw in rows:
                row = _VersionRow.from_wire(raw)
                if group and group[0].key != row.key:
                    await self._version_group(ino, wanted, group, now_ns, report)
                    group = []
                group.append(row)
                after_key, after_seq = row.key, row.seq
                report.scanned += 1
            if len(rows) < VERSIONS_PAGE:
                break
            if report.scanned >= MAX_SCANNED_PER_RUN or report.expired >= MAX_EXPIRED_PER_RUN:
                # Resume at the start of the unfinished key: its rows are judged together.
                if group:
                    self._version_cursors[bucket] = (group[0].key, SEQ_ALL)
                return
        if group:
            await self._version_group(ino, wanted, group, now_ns, report)

    async def _version_group(
        self, ino: int, rules: list[LifecycleRule], rows: list[_VersionRow], now_ns: int, report: RunReport
    ) -> None:
        """Expire what is due among one key's version rows (newest first)."""
        key = rows[0].key.decode("utf-8", "replace")
        try:
            current = await self.client.resolve(ino, s3names.key_to_names(key)[0])
            has_file = current.is_reg
        except (NotFound, NotADirectory, S3Error):
            has_file = False
        noncurrent = rows if has_file else rows[1:]
        day_s = self.s3.lifecycle_day_s
        doomed: list[str] = []
        for rank, row in enumerate(noncurrent, start=1):
            tags: s3tags.Tags = []
            if row.attr is not None and any(r.filter.tags for r in rules):
                try:
                    tags = s3tags.decode(await self.client.getxattr(row.attr.ino, XA_TAGGING))
                except (NoAttribute, NotFound):
                    pass
            size = row.attr.size if row.attr is not None else 0
            for r in rules:
                days = r.noncurrent_days
                if (
                    days is not None
                    and s3lifecycle.due_after_days_ns(row.created_ns, days, day_s) <= now_ns
                    and rank > (r.newer_noncurrent_versions or 0)
                    and s3lifecycle.matches(r, key, size, tags)
                ):
                    doomed.append(row.version_id)
                    break
        # A delete marker with nothing behind it: ExpiredObjectDeleteMarker removes it.
        lone_marker = not has_file and len(rows) == 1 and rows[0].attr is None
        if lone_marker and any(
            r.expired_object_delete_marker and s3lifecycle.matches(r, key, 0, []) for r in rules
        ):
            doomed.append(rows[0].version_id)
        for vid in doomed:
            if report.expired >= MAX_EXPIRED_PER_RUN:
                return
            try:
                done = await endpoints.S3_VERSIONS_DELETE.call(self.client, ino, rows[0].key, vid)
            except NotPermitted:
                continue  # under an S3 object lock (daemon/meta/objlock.py): it stays
            if done.get("found"):
                report.expired += 1

    async def _abort_uploads(
        self, rules_of: dict[str, list[LifecycleRule]], now_ns: int, report: RunReport
    ) -> None:
        day_s = self.s3.lifecycle_day_s
        async for upload_id, info in self.multipart.each():
            if report.aborted >= MAX_ABORTED_PER_RUN:
                return
            rules = rules_of.get(str(info.get("bucket", "")))
            initiated = info.get("initiated_ns")
            if not rules or not isinstance(initiated, int):
                continue
            due = s3lifecycle.upload_abort_ns(rules, str(info.get("key", "")), initiated, day_s)
            if due is not None and due[0] <= now_ns and await self.multipart.remove(upload_id):
                report.aborted += 1


@dataclass(frozen=True)
class _VersionRow:
    """One row of s3.versions_list: a non-current version, or a delete marker (attr None)."""

    key: bytes
    version_id: str
    seq: int
    created_ns: int  # when it stopped being current (the row was made)
    attr: Attr | None

    @classmethod
    def from_wire(cls, raw: list[Any]) -> _VersionRow:
        key, vid, seq, created, attr = raw[0], raw[1], raw[2], raw[3], raw[4]
        return cls(
            bytes(key), str(vid), int(seq), int(created), None if attr is None else Attr.from_wire(attr)
        )


def _tags(info: ObjectInfo) -> s3tags.Tags:
    raw = info.xattrs.get(XA_TAGGING)
    return s3tags.decode(raw) if raw else []
