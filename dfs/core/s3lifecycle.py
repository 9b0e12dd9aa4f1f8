"""A bucket's lifecycle rules: validation, the stored form, and which objects and uploads are due.

A lifecycle configuration is a list of :class:`LifecycleRule` (at most 1000),
stored as JSON in the xattr ``user.s3.lifecycle`` of the bucket directory;
dfs/core/s3xml.py parses and renders its XML.  A rule selects objects by a
:class:`RuleFilter` (key prefix, tags, object size; all must hold) and says
what happens to them:

* ``Expiration`` with ``Days``: a current object expires ``Days`` days after
  its Last-Modified, rounded up to the next day boundary (AWS rounds to the
  next midnight UTC); with ``Date``: from that midnight on;
* ``AbortIncompleteMultipartUpload``: an upload is aborted
  ``DaysAfterInitiation`` days after it began (prefix filters only, as AWS);
* ``NoncurrentVersionExpiration`` (``NoncurrentDays`` after a version stopped
  being current, keeping the ``NewerNoncurrentVersions`` newest) and
  ``ExpiredObjectDeleteMarker`` (a delete marker with no versions behind it)
  act in buckets with versioning (daemon/s3/lifecycle.py walks their versions).

Transitions move objects to another storage class; dfs has none (and no cloud
tier), so a configuration holding one is refused with 501 NotImplemented rather
than stored and ignored.

The length of a day is a parameter (``day_s``) of every due-time function, so
tests can run a 1-day rule in a second.  Pure: no I/O, no trio; times are
nanoseconds since the epoch, passed in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dfs.core.errors import S3Error

MAX_RULES = 1000
MAX_CONFIG_BYTES = 1024 * 1024
MAX_ID_CHARS = 255
MAX_NEWER_NONCURRENT = 100
DAY_S = 86400
_NS = 1_000_000_000
# ISO 8601 as clients send a Date: a day, optionally with a time (which must be midnight UTC).
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]00:?00)?)?")
_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)

Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RuleFilter:
    """What a rule applies to: every condition given must hold (none given: the whole bucket).

    ``form`` remembers how the client wrote it, so GET renders it back the same way:
    ``"prefix"`` (the legacy rule-level <Prefix>), ``"filter"`` (<Filter> with one
    condition, or empty) or ``"and"`` (<Filter><And>)."""

    prefix: str = ""
    tags: Tags = ()
    size_greater_than: int | None = None
    size_less_than: int | None = None
    form: str = "filter"

    def conditions(self) -> int:
        return (
            bool(self.prefix)
            + len(self.tags)
            + (self.size_greater_than is not None)
            + (self.size_less_than is not None)
        )


@dataclass(frozen=True)
class LifecycleRule:
    rule_id: str
    enabled: bool
    filter: RuleFilter = field(default_factory=RuleFilter)
    expiration_days: int | None = None
    # Midnight UTC of the Expiration Date, in seconds since the epoch.
    expiration_date_s: int | None = None
    expired_object_delete_marker: bool | None = None
    noncurrent_days: int | None = None
    newer_noncurrent_versions: int | None = None
    abort_upload_days: int | None = None

    @property
    def expires_current(self) -> bool:
        return self.expiration_days is not None or self.expiration_date_s is not None


def refuse_transition() -> S3Error:
    """What a configuration with a Transition gets: there is nowhere to move objects to."""
    return S3Error(
        "NotImplemented",
        "Lifecycle transitions are not supported: dfs has no storage classes or cloud tiers yet",
        501,
    )


def parse_date(text: str) -> int:
    """Seconds since the epoch of an Expiration Date; it must be a midnight UTC (InvalidArgument)."""
    m = _DATE_RE.fullmatch(text.strip())
    if m is None:
        raise S3Error("InvalidArgument", f"Invalid date: {text[:64]!r}, expected ISO 8601")
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    if not (1970 <= year <= 9999 and 1 <= month <= 12 and 1 <= day <= _month_days(year, month)):
        raise S3Error("InvalidArgument", f"Invalid date: {text[:64]!r}")
    if any(part is not None and int(part) != 0 for part in (m[4], m[5], m[6], m[7])):
        raise S3Error("InvalidArgument", "'Date' must be at midnight GMT")
    return _days_from_civil(year, month, day) * DAY_S


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _month_days(year: int, month: int) -> int:
    if month == 2:
        return 29 if _leap(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to the given date (proleptic Gregorian)."""
    y = year - 1
    days = y * 365 + y // 4 - y // 100 + y // 400 - 719162  # days before Jan 1 of ``year``
    days += _DAYS_BEFORE_MONTH[month - 1] + (1 if month > 2 and _leap(year) else 0)
    return days + day - 1


def check(rules: Sequence[LifecycleRule]) -> None:
    """Refuse a configuration AWS would refuse (MalformedXML, InvalidArgument, InvalidRequest)."""
    if not rules:
        raise S3Error("MalformedXML", "A lifecycle configuration must hold at least one Rule")
    if len(rules) > MAX_RULES:
        raise S3Error("MalformedXML", f"A lifecycle configuration holds at most {MAX_RULES} rules")
    seen: set[str] = set()
    for rule in rules:
        if len(rule.rule_id) > MAX_ID_CHARS:
            raise S3Error("InvalidArgument", f"ID length should not exceed allowed limit of {MAX_ID_CHARS}")
        if rule.rule_id in seen:
            raise S3Error("InvalidArgument", "Rule ID must be unique. Found same ID for more than one rule")
        seen.add(rule.rule_id)
        _check_rule(rule)


def _check_rule(rule: LifecycleRule) -> None:
    f = rule.filter
    keys = [k for k, _ in f.tags]
    if len(set(keys)) != len(keys):
        raise S3Error("InvalidArgument", "Duplicate Tag Keys are not allowed.")
    if f.size_greater_than is not None and f.size_greater_than < 0:
        raise S3Error("InvalidArgument", "ObjectSizeGreaterThan must be a non-negative integer")
    if f.size_less_than is not None and f.size_less_than <= 0:
        raise S3Error("InvalidArgument", "ObjectSizeLessThan must be a positive integer")
    if (
        f.size_greater_than is not None
        and f.size_less_than is not None
        and f.size_greater_than >= f.size_less_than
    ):
        raise S3Error("InvalidArgument", "ObjectSizeGreaterThan must be less than ObjectSizeLessThan")
    actions = (
        rule.expires_current
        or rule.expired_object_delete_marker is not None
        or rule.noncurrent_days is not None
        or rule.abort_upload_days is not None
    )
    if not actions:
        raise S3Error("InvalidRequest", "At least one action needs to be specified in a rule")
    given = sum(
        x is not None
        for x in (rule.expiration_days, rule.expiration_date_s, rule.expired_object_delete_marker)
    )
    if given > 1:
        raise S3Error(
            "MalformedXML", "Expiration takes exactly one of Days, Date and ExpiredObjectDeleteMarker"
        )
    for name, days in (
        ("Expiration", rule.expiration_days),
        ("NoncurrentVersionExpiration", rule.noncurrent_days),
        ("AbortIncompleteMultipartUpload", rule.abort_upload_days),
    ):
        if days is not None and days <= 0:
            raise S3Error("InvalidArgument", f"'Days' for {name} action must be a positive integer")
    newer = rule.newer_noncurrent_versions
    if newer is not None and not 1 <= newer <= MAX_NEWER_NONCURRENT:
        raise S3Error(
            "InvalidArgument", f"NewerNoncurrentVersions must be between 1 and {MAX_NEWER_NONCURRENT}"
        )
    if newer is not None and rule.noncurrent_days is None:
        raise S3Error("InvalidArgument", "NewerNoncurrentVersions needs NoncurrentDays")
    if rule.expired_object_delete_marker is not None and f.tags:
        raise S3Error("InvalidRequest", "ExpiredObjectDeleteMarker cannot be specified with object tags")
    if rule.abort_upload_days is not None and (
        f.tags or f.size_greater_than is not None or f.size_less_than is not None
    ):
        raise S3Error(
            "InvalidRequest",
            "AbortIncompleteMultipartUpload cannot be specified with Tags or object size filters",
        )


# ----------------------------------------------------------------------------- stored form


def encode(rules: Sequence[LifecycleRule]) -> bytes:
    """The stored form: compact JSON, one object per rule, absent fields left out."""
    out: list[dict[str, Any]] = []
    for r in rules:
        f = r.filter
        doc: dict[str, Any] = {"id": r.rule_id, "enabled": r.enabled, "form": f.form}
        if f.prefix:
            doc["prefix"] = f.prefix
        if f.tags:
            doc["tags"] = [list(t) for t in f.tags]
        for name, value in (
            ("gt", f.size_greater_than),
            ("lt", f.size_less_than),
            ("days", r.expiration_days),
            ("date_s", r.expiration_date_s),
            ("delete_marker", r.expired_object_delete_marker),
            ("noncurrent_days", r.noncurrent_days),
            ("newer_noncurrent", r.newer_noncurrent_versions),
            ("abort_days", r.abort_upload_days),
        ):
            if value is not None:
                doc[name] = value
        out.append(doc)
    return json.dumps(out, separators=(",", ":")).encode()


def _opt_int(doc: dict[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} is not an integer")
    return value


def decode(raw: bytes) -> list[LifecycleRule]:
    """Rules from their stored form; ValueError if it is not one (an xattr edited through the mount)."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, list):
            raise TypeError("not a list of rules")
        rules = []
        for r in doc:
            marker = r.get("delete_marker")
            rules.append(
                LifecycleRule(
                    rule_id=str(r["id"]),
                    enabled=bool(r["enabled"]),
                    filter=RuleFilter(
                        prefix=str(r.get("prefix", "")),
                        tags=tuple((str(k), str(v)) for k, v in r.get("tags", ())),
                        size_greater_than=_opt_int(r, "gt"),
                        size_less_than=_opt_int(r, "lt"),
                        form=str(r.get("form", "filter")),
                    ),
                    expiration_days=_opt_int(r, "days"),
                    expiration_date_s=_opt_int(r, "date_s"),
                    expired_object_delete_marker=None if marker is None else bool(marker),
                    noncurrent_days=_opt_int(r, "noncurrent_days"),
                    newer_noncurrent_versions=_opt_int(r, "newer_noncurrent"),
                    abort_upload_days=_opt_int(r, "abort_days"),
                )
            )
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a stored lifecycle configuration: {exc}") from None
    return rules


# ----------------------------------------------------------------------------- evaluation


def matches(rule: LifecycleRule, key: str, size: int, tags: Sequence[tuple[str, str]]) -> bool:
    """Does ``rule``'s filter select the object ``key`` of ``size`` bytes with ``tags``?"""
    f = rule.filter
    if not key.startswith(f.prefix):
        return False
    if f.size_greater_than is not None and not size > f.size_greater_than:
        return False
    if f.size_less_than is not None and not size < f.size_less_than:
        return False
    have = set(tags)
    return all(tag in have for tag in f.tags)


def due_after_days_ns(start_ns: int, days: int, day_s: float) -> int:
    """When something started at ``start_ns`` is ``days`` days old, rounded up to a day boundary
    (AWS: the next midnight UTC; with a short test day, the next multiple of it)."""
    assert days > 0 and day_s > 0
    day_ns = max(1, int(day_s * _NS))
    raw = start_ns + days * day_ns
    return -(-raw // day_ns) * day_ns


def expiry_ns(rule: LifecycleRule, mtime_ns: int, day_s: float) -> int | None:
    """When ``rule`` expires a current object last modified at ``mtime_ns`` (None: it does not)."""
    if not rule.enabled:
        return None
    if rule.expiration_days is not None:
        return due_after_days_ns(mtime_ns, rule.expiration_days, day_s)
    if rule.expiration_date_s is not None:
        return rule.expiration_date_s * _NS
    return None


def needs_tags(rules: Sequence[LifecycleRule]) -> bool:
    """Must the object's tags be read to decide (some enabled rule filters on tags)?"""
    return any(r.enabled and r.filter.tags for r in rules)


def first_expiry(
    rules: Sequence[LifecycleRule],
    key: str,
    size: int,
    mtime_ns: int,
    tags: Sequence[tuple[str, str]],
    day_s: float,
) -> tuple[int, str] | None:
    """(when, rule id) of the earliest current-version expiration of this object, or None.

    What ``x-amz-expiration`` reports and what the worker acts on.  A key
    naming a directory (ending in ``/``) is never expired: it is the
    filesystem's structure, not an object written through S3."""
    if key.endswith("/"):
        return None
    best: tuple[int, str] | None = None
    for rule in rules:
        when = expiry_ns(rule, mtime_ns, day_s)
        if when is not None and matches(rule, key, size, tags) and (best is None or when < best[0]):
            best = (when, rule.rule_id)
    return best


def upload_abort_ns(
    rules: Sequence[LifecycleRule], key: str, initiated_ns: int, day_s: float
) -> tuple[int, str] | None:
    """(when, rule id) of the earliest abort of an upload of ``key`` begun at ``initiated_ns``."""
    best: tuple[int, str] | None = None
    for rule in rules:
        days = rule.abort_upload_days
        if not rule.enabled or days is None or not key.startswith(rule.filter.prefix):
            continue
        when = due_after_days_ns(initiated_ns, days, day_s)
        if best is None or when < best[0]:
            best = (when, rule.rule_id)
    return best


def scan_prefix(rules: Sequence[LifecycleRule]) -> str | None:
    """The longest prefix every enabled current-expiration rule's keys share (where a walk of the
    bucket can start); None if no enabled rule expires current objects."""
    prefixes = [r.filter.prefix for r in rules if r.enabled and r.expires_current]
    if not prefixes:
        return None
    common = prefixes[0]
    for p in prefixes[1:]:
        n = 0
        while n < min(len(common), len(p)) and common[n] == p[n]:
            n += 1
        common = common[:n]
    return common


def assign_ids(raw: Sequence[str | None]) -> list[str]:
    """Rule ids: as given, and for a rule without one a generated ``rule-N`` not otherwise used
    (AWS generates one too, and returns it on GET)."""
    taken = {r for r in raw if r is not None}
    out: list[str] = []
    n = 0
    for given in raw:
        if given is not None:
            out.append(given)
            continue
        n += 1
        while f"rule-{n}" in taken:
            n += 1
        taken.add(f"rule-{n}")
        out.append(f"rule-{n}")
    return out
