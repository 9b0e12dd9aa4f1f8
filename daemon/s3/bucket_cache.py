"""The short-lived per-daemon cache of bucket settings kept as xattrs of the bucket's directory
(CORS rules, lifecycle rules, policy, ACL and public access block).

Each S3 feature caches what it parsed for :data:`CACHE_TTL_S`: a change made
through this daemon drops the entry at once, one made through another daemon
(or a mount) is seen within the TTL.  Bounded: at most :data:`CACHE_MAX_BUCKETS`
entries; when full, expired entries go, and if all are fresh (a burst over
many buckets) the cache starts again.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

T = TypeVar("T")

CACHE_TTL_S = 5.0
CACHE_MAX_BUCKETS = 1024


class BucketCache(Generic[T]):
    """bucket -> a parsed setting, for CACHE_TTL_S."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, T]] = {}

    def get(self, bucket: str) -> tuple[bool, T | None]:
        """(whether a fresh entry exists, its value)."""
        hit = self._entries.get(bucket)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def put(self, bucket: str, value: T) -> None:
        now = time.monotonic()
        if len(self._entries) >= CACHE_MAX_BUCKETS:
            self._entries = {b: e for b, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= CACHE_MAX_BUCKETS:
                self._entries.clear()
        self._entries[bucket] = (now + CACHE_TTL_S, value)

    def drop(self, bucket: str) -> None:
        self._entries.pop(bucket, None)
