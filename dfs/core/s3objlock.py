"""S3 object lock, pure: the documents, headers and stored forms of retention and legal hold.

Object lock has three parts, each parsed and rendered here and enforced by the
metadata (daemon/meta/objlock.py):

- a bucket's **configuration** (``ObjectLockConfiguration``): enabled, with an
  optional default retention (mode and ``Days`` or ``Years``);
- an object version's **retention**: a mode (``GOVERNANCE``: lifted or
  shortened only with ``x-amz-bypass-governance-retention``; ``COMPLIANCE``:
  never) and a retain-until date;
- its **legal hold**: ``ON`` or ``OFF``, independent of retention.

The S3 shim hands a write's lock to the metadata as a *request* (JSON, the
pseudo-xattr :data:`XA_LOCK_REQUEST` of ``put_object``): explicit values from
the ``x-amz-object-lock-*`` headers, or "the bucket's default", which the
metadata resolves against its own clock in the commit's transaction.  The lock
an object holds is mirrored into the xattr :data:`XA_LOCK` (JSON, read-only to
everything but the lock operations) so that GET and HEAD answer the headers
without another metadata call.  Times are nanoseconds since the epoch.
"""

from __future__ import annotations

import calendar
import datetime
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from dfs.core.errors import S3Error
from dfs.core.s3xml import _doc, _el, _malformed, _one_text, _parse

GOVERNANCE = "GOVERNANCE"
COMPLIANCE = "COMPLIANCE"
MODES = (GOVERNANCE, COMPLIANCE)
# Written by the metadata in the same transaction as the lock row; refused to setxattr.
XA_LOCK = b"user.s3.object-lock"
# What put_object takes (and never stores): a name no mount can set (no xattr namespace).
XA_LOCK_REQUEST = b"dfs.object-lock-request"
# AWS's bounds on a default retention period.
MAX_DAYS = 36500
MAX_YEARS = 100
DAYS_PER_YEAR = 365
_NS = 1_000_000_000
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")


class LockConfig(NamedTuple):
    """A bucket's object lock configuration: enabled, with this default retention (mode None:
    none; then days and years are None too)."""

    mode: str | None = None
    days: int | None = None
    years: int | None = None

    def default_days(self) -> int | None:
        """The default retention in days (a year is 365 days), None without one."""
        if self.mode is None:
            return None
        if self.days is not None:
            return self.days
        assert self.years is not None
        return self.years * DAYS_PER_YEAR

    def to_wire(self) -> dict[str, Any]:
        return {"mode": self.mode, "days": self.days, "years": self.years}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> LockConfig:
        mode, days, years = raw.get("mode"), raw.get("days"), raw.get("years")
        return cls(
            None if mode is None else str(mode),
            None if days is None else int(days),
            None if years is None else int(years),
        )


class ObjectLock(NamedTuple):
    """The lock an object version holds: retention (mode None: none) and legal hold."""

    mode: str | None
    until_ns: int | None
    hold: bool

    def active(self, now_ns: int) -> bool:
        return self.hold or (self.mode is not None and self.until_ns is not None and self.until_ns > now_ns)


# -- dates ----------


def parse_date(text: str) -> int:
    """An ISO 8601 timestamp (``2030-01-01T00:00:00Z``, fractions and offsets allowed) in ns."""
    m = _DATE_RE.fullmatch(text.strip())
    if m is None:
        raise S3Error("InvalidArgument", "The retain until date is not a valid ISO 8601 timestamp", 400)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise S3Error("InvalidArgument", "The retain until date is not a valid date", 400) from None
    seconds = calendar.timegm(moment.timetuple())
    zone = m.group(8)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    fraction = (m.group(7) or "").ljust(9, "0")
    return seconds * _NS + int(fraction)


def format_date(ns: int) -> str:
    """``ns`` as AWS writes retain-until dates: ``2030-01-01T00:00:00.000Z``."""
    moment = datetime.datetime.fromtimestamp(ns // _NS, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns % _NS) // 1_000_000:03d}Z"


# -- the bucket configuration ----------


def parse_config(body: bytes) -> LockConfig:
    """A PutObjectLockConfiguration body.  MalformedXML for its shape; InvalidArgument for values
    AWS refuses (a mode other than the two, a period not positive or past its bound)."""
    root = _parse(body, "ObjectLockConfiguration")
    enabled = _one_text(root, "ObjectLockEnabled", required=False)
    if enabled is not None and enabled.strip() != "Enabled":
        raise _malformed("ObjectLockEnabled must be Enabled")
    rules = [child for child in root if child.tag.rsplit("}", 1)[-1] == "Rule"]
    if len(rules) > 1:
        raise _malformed("at most one Rule")
    if not rules:
        return LockConfig()
    retentions = [child for child in rules[0] if child.tag.rsplit("}", 1)[-1] == "DefaultRetention"]
    if len(retentions) != 1:
        raise _malformed("a Rule takes one DefaultRetention")
    dr = retentions[0]
    mode = (_one_text(dr, "Mode", required=False) or "").strip()
    days_text = _one_text(dr, "Days", required=False)
    years_text = _one_text(dr, "Years", required=False)
    if mode not in MODES:
        raise _malformed("DefaultRetention Mode must be GOVERNANCE or COMPLIANCE")
    if (days_text is None) == (years_text is None):
        raise _malformed("DefaultRetention takes either Days or Years")
    days = _period(days_text, MAX_DAYS, "Days")
    years = _period(years_text, MAX_YEARS, "Years")
    return LockConfig(mode, days, years)


def _period(text: str | None, bound: int, name: str) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise _malformed(f"{name} is not a number") from None
    if not 0 < value <= bound:
        raise S3Error("InvalidArgument", f"Default retention period must be a positive {name} up to {bound}")
    return value


def render_config(cfg: LockConfig) -> bytes:
    body = [_el("ObjectLockEnabled", "Enabled")]
    if cfg.mode is not None:
        period = _el("Days", cfg.days) if cfg.days is not None else _el("Years", cfg.years or 0)
        body.append(f"<Rule><DefaultRetention>{_el('Mode', cfg.mode)}{period}</DefaultRetention></Rule>")
    return _doc("ObjectLockConfiguration", body)


# -- retention and legal hold documents ----------


def parse_retention(body: bytes) -> tuple[str | None, int | None]:
    """A PutObjectRetention body: (mode, retain-until ns); (None, None) removes the retention."""
    root = _parse(body, "Retention")
    mode = _one_text(root, "Mode", required=False)
    date = _one_text(root, "RetainUntilDate", required=False)
    mode = mode.strip() if mode is not None and mode.strip() else None
    date = date.strip() if date is not None and date.strip() else None
    if (mode is None) != (date is None):
        raise _malformed("Retention takes both Mode and RetainUntilDate, or neither")
    if mode is not None and mode not in MODES:
        raise _malformed("Retention Mode must be GOVERNANCE or COMPLIANCE")
    return mode, None if date is None else parse_date(date)


def render_retention(mode: str, until_ns: int) -> bytes:
    return _doc("Retention", [_el("Mode", mode), _el("RetainUntilDate", format_date(until_ns))])


def parse_legal_hold(body: bytes) -> bool:
    status = (_one_text(_parse(body, "LegalHold"), "Status", required=True) or "").strip()
    if status not in ("ON", "OFF"):
        raise _malformed("LegalHold Status must be ON or OFF")
    return status == "ON"


def render_legal_hold(hold: bool) -> bytes:
    return _doc("LegalHold", [_el("Status", "ON" if hold else "OFF")])


# -- a write's headers ----------


def header_request(headers: Mapping[str, str], now_ns: int) -> dict[str, Any] | None:
    """The lock the ``x-amz-object-lock-*`` headers of a PutObject, CopyObject or
    CreateMultipartUpload ask for ({"mode", "until_ns", "hold"}, None where not given); None
    without any such header.  Mode and date go together, as on AWS; the date must be ahead."""
    mode = headers.get("x-amz-object-lock-mode")
    date = headers.get("x-amz-object-lock-retain-until-date")
    hold = headers.get("x-amz-object-lock-legal-hold")
    if mode is None and date is None and hold is None:
        return None
    if (mode is None) != (date is None):
        raise S3Error(
            "InvalidArgument",
            "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied",
            400,
        )
    out: dict[str, Any] = {"mode": None, "until_ns": None, "hold": None}
    if mode is not None and date is not None:
        if mode not in MODES:
            raise S3Error("InvalidArgument", "Unknown wormMode directive.", 400)
        until_ns = parse_date(date)
        if until_ns <= now_ns:
            raise S3Error("InvalidArgument", "The retain until date must be in the future!", 400)
        out["mode"], out["until_ns"] = mode, until_ns
    if hold is not None:
        if hold not in ("ON", "OFF"):
            raise S3Error("InvalidArgument", "Legal Hold must be either of 'ON' or 'OFF'", 400)
        out["hold"] = hold == "ON"
    return out


def encode_request(explicit: Mapping[str, Any] | None, day_s: float) -> bytes:
    """The pseudo-xattr value of a write's lock request: explicit values, the rest from the
    bucket's default retention (with days of ``day_s`` seconds)."""
    return json.dumps({**(explicit or {}), "day_s": day_s}, separators=(",", ":")).encode()


def decode_request(raw: bytes) -> tuple[str | None, int | None, bool | None, float]:
    """(mode, until_ns, hold, day_s) of a request; ValueError for a malformed one."""
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("an object lock request is a JSON object")
    mode, until, hold, day_s = value.get("mode"), value.get("until_ns"), value.get("hold"), value.get("day_s")
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown object lock mode {mode!r:.40}")
    if (mode is None) != (until is None) or (until is not None and not isinstance(until, int)):
        raise ValueError("an object lock request takes both a mode and a date, or neither")
    if hold is not None and not isinstance(hold, bool):
        raise ValueError("legal hold must be a boolean")
    if not isinstance(day_s, (int, float)) or day_s <= 0:
        raise ValueError("day_s must be a positive number")
    return mode, until, hold, float(day_s)


# -- the mirror xattr ----------


def encode_lock(lock: ObjectLock) -> bytes:
    return json.dumps(
        {"mode": lock.mode, "until_ns": lock.until_ns, "hold": lock.hold}, separators=(",", ":")
    ).encode()


def decode_lock(raw: bytes | None) -> ObjectLock | None:
    """The mirrored lock; None without one (or a malformed one: the metadata's row decides)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
        mode, until = value.get("mode"), value.get("until_ns")
        return ObjectLock(
            None if mode is None else str(mode),
            None if until is None else int(until),
            bool(value.get("hold")),
        )
    except (ValueError, AttributeError, TypeError):
        return None


def response_headers(lock: ObjectLock | None) -> list[tuple[str, str]]:
    """The ``x-amz-object-lock-*`` headers GET and HEAD answer for an object's lock."""
    if lock is None:
        return []
    out: list[tuple[str, str]] = []
    if lock.mode is not None and lock.until_ns is not None:
        out += [
            ("x-amz-object-lock-mode", lock.mode),
            ("x-amz-object-lock-retain-until-date", format_date(lock.until_ns)),
        ]
    out.append(("x-amz-object-lock-legal-hold", "ON" if lock.hold else "OFF"))
    return out
