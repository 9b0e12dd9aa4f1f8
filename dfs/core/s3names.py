"""S3 names, dates, ranges, conditionals and listing pagination: the pure rules of the S3 shim.

Everything here is a pure function of its arguments (no I/O, no clock, no trio):
the shim passes in header mappings, sizes and modification times, and gets back
values or an :class:`~dfs.core.errors.S3Error` carrying the S3 code and HTTP status
to answer with.  The wire formats follow section 3 of
``research/s3-compat.md`` ("Wire details that break clients").

Invariants and conventions:

- Keys are ``str`` holding valid Unicode scalar values; :func:`key_to_names`
  is the one gate between an S3 key and filesystem names, and refuses every key
  that cannot map one-to-one onto a POSIX path (so two different keys never
  name the same file, and every listed path is a valid key again).
- Keys are never normalised (no Unicode normalisation, no case folding).
- Listing order is UTF-8 byte order.  For valid Unicode strings that is the
  same as Python's code-point order of ``str`` (UTF-8 preserves code-point
  order), so comparisons here are done on ``str``; the walker that feeds
  :func:`paginate` must produce the same order, which :func:`walk_order_name`
  gives it.
- Header mappings passed in use lower-case names.
- Times are nanoseconds since the epoch (``st_mtime_ns``); HTTP dates have
  one-second resolution, so conditionals compare whole seconds.

Import note: the listing value types (``ObjectEntry``, ``ListPage``) live in
:mod:`dfs.core.s3xml`, which in turn uses the date and encoding helpers here.  Both
modules import each other as *modules* (``from dfs import s3xml``) and only
look attributes up at call time, so either can be imported first.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as _dt
import math
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from dfs.core.errors import S3Error

# ----------------------------------------------------------------------------- buckets

#: Shape of a bucket name: 3-63 characters of ``a-z 0-9 . -``, alphanumeric at both ends.
#: :func:`check_bucket` adds the rules a regular expression states badly (no ``..``, not an IP).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


def is_bucket_name(name: str) -> bool:
    """True if ``name`` follows the S3 bucket naming rules we enforce.

    The rules are AWS's general-purpose ones that matter for a name that is
    also a top-level directory and a DNS label (virtual-host addressing).
    AWS's reserved prefixes and suffixes (``xn--``, ``-s3alias``...) are not
    enforced: they protect AWS features we do not have.
    """
    return BUCKET_RE.fullmatch(name) is not None and ".." not in name and _IPV4_RE.fullmatch(name) is None


def check_bucket(name: str) -> None:
    """Raise 400 InvalidBucketName unless :func:`is_bucket_name`."""
    if not is_bucket_name(name):
        raise S3Error("InvalidBucketName", "The specified bucket is not valid.", 400, BucketName=name)


# ----------------------------------------------------------------------------- keys

MAX_KEY_BYTES = 1024  # S3's limit on the UTF-8 length of a key
NAME_MAX = 255  # Linux NAME_MAX: the longest single path component in bytes


def key_to_names(key: str) -> tuple[list[bytes], bool]:
    """Split an object key into UTF-8 path components.

    Returns ``(components, is_dir)``; ``is_dir`` is True for a key ending in
    ``/`` (a directory marker such as ``d/``), whose trailing empty component
    is dropped.  Refuses, with 400 InvalidArgument, keys that have no
    one-to-one POSIX path: empty, not valid Unicode (lone surrogates, e.g.
    from a percent-decoded path with bad UTF-8), containing NUL, starting with
    ``/``, containing ``//`` (an empty component), or a ``.`` or ``..``
    component (which would alias or escape the bucket).  Over-long keys
    (> 1024 bytes) and components (> 255 bytes) are 400 KeyTooLongError.
    """
    if not key:
        raise S3Error("InvalidArgument", "Object key must not be empty.", 400)
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", "Object key is not valid UTF-8.", 400) from None
    if len(raw) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long", 400)
    if b"\0" in raw:
        raise S3Error("InvalidArgument", "Object key must not contain NUL.", 400)
    if raw.startswith(b"/"):
        raise S3Error("InvalidArgument", "Object key must not start with '/'.", 400)
    parts = raw.split(b"/")
    is_dir = parts[-1] == b""
    if is_dir:
        parts.pop()
    for part in parts:
        if part == b"":
            raise S3Error("InvalidArgument", "Object key must not contain '//'.", 400)
        if part in (b".", b".."):
            raise S3Error("InvalidArgument", "Object key must not contain '.' or '..' components.", 400)
        if len(part) > NAME_MAX:
            raise S3Error("KeyTooLongError", f"A component of the key is longer than {NAME_MAX} bytes.", 400)
    return parts, is_dir


def url_encode(s: str) -> str:
    """Percent-encode for ``encoding-type=url``: UTF-8, keeping only ``A-Za-z0-9-._~`` and ``/``.

    botocore decodes these values with ``unquote_plus``, so ``+`` must go out
    as ``%2B`` and space as ``%20`` (never ``+``), or keys change on the way.
    """
    return urllib.parse.quote(s, safe="/")


# ----------------------------------------------------------------------------- dates

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NO = {m: i + 1 for i, m in enumerate(_MONTHS)}
_NS = 1_000_000_000


def http_date(ns: int) -> str:
    """IMF-fixdate for a header: ``Wed, 01 Jan 2025 00:00:00 GMT`` (seconds truncated).

    Built by hand, not with ``strftime``, so the day and month names never
    follow the process locale; some clients accept nothing but this form.
    """
    t = time.gmtime(ns // _NS)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def iso8601(ns: int) -> str:
    """ISO 8601 for XML bodies: ``2025-01-01T00:00:00.000Z`` (milliseconds, truncated).

    An RFC 1123 date in XML breaks the Java SDK; a missing fraction breaks others.
    """
    sec, rem = divmod(ns, _NS)
    t = time.gmtime(sec)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{rem // 1_000_000:03d}Z"
    )


_DAY_ALT = "|".join(_DAYS)
_LONG_DAY_ALT = "|".join(_LONG_DAYS)
_MONTH_ALT = "|".join(_MONTHS)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 section 5.6.7: the preferred form and the two obsolete ones a recipient must accept.
_IMF_RE = re.compile(rf"(?:{_DAY_ALT}), ([0-9]{{2}}) ({_MONTH_ALT}) ([0-9]{{4}}) {_TIME} GMT")
_RFC850_RE = re.compile(rf"(?:{_LONG_DAY_ALT}), ([0-9]{{2}})-({_MONTH_ALT})-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME_RE = re.compile(rf"(?:{_DAY_ALT}) ({_MONTH_ALT}) ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})")
# Some SDKs send x-amz-copy-source-if-* dates as ISO 8601; accept the UTC form.
_ISO_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T" + _TIME + r"(\.[0-9]{1,9})?Z")


def _epoch(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float | None:
    # datetime validates the calendar (no 31 Feb); a leap second (60) is
    # allowed by RFC 9110 and is counted as the next second.
    try:
        _dt.datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError:
        return None
    if second > 60:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def parse_http_date(value: str) -> float | None:
    """Seconds since the epoch for an HTTP date, or None if it is not one.

    Accepts IMF-fixdate, RFC 850 and asctime (RFC 9110), plus ISO 8601 in UTC
    (``2025-01-01T00:00:00Z``, optional fraction).  Day names are not checked
    against the date, as RFC 9110 does not require it.  RFC 9110 resolves an
    RFC 850 two-digit year relative to the current date; to stay a pure
    function this uses a fixed pivot instead (70-99 are 19xx, 00-69 are 20xx);
    the two differ only for dates decades away, in an obsolete form no current
    client sends.
    """
    v = value.strip()
    m = _IMF_RE.fullmatch(v)
    if m:
        day, mon, year, hh, mm, ss = m.groups()
        return _epoch(int(year), _MONTH_NO[mon], int(day), int(hh), int(mm), int(ss))
    m = _RFC850_RE.fullmatch(v)
    if m:
        day, mon, yy, hh, mm, ss = m.groups()
        year = int(yy) + (1900 if int(yy) >= 70 else 2000)
        return _epoch(year, _MONTH_NO[mon], int(day), int(hh), int(mm), int(ss))
    m = _ASCTIME_RE.fullmatch(v)
    if m:
        mon, day, hh, mm, ss, year = m.groups()  # day is space-padded: "Nov  6"
        return _epoch(int(year), _MONTH_NO[mon], int(day), int(hh), int(mm), int(ss))
    m = _ISO_RE.fullmatch(v)
    if m:
        year, mon_s, day, hh, mm, ss, frac = m.groups()
        base = _epoch(int(year), int(mon_s), int(day), int(hh), int(mm), int(ss))
        if base is None:
            return None
        return base + (float(frac) if frac else 0.0)
    return None


# ----------------------------------------------------------------------------- ranges

_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
_COPY_RANGE_RE = re.compile(r"bytes=([0-9]+)-([0-9]+)")


def _unsatisfiable(header: str, size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        "The requested range is not satisfiable",
        416,
        RangeRequested=header,
        ActualObjectSize=str(size),
    )


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``(start, end_inclusive)`` byte range a GET asks for, or None for the whole object.

    Only a single ``bytes=`` range is served, as on AWS: a missing header,
    several ranges, another unit and anything syntactically invalid (including
    ``a-b`` with ``b < a``, which RFC 9110 calls invalid) return None and the
    caller sends the whole object with 200.  ``bytes=a-b`` clips ``b`` to the
    last byte, ``bytes=a-`` runs to the end, ``bytes=-n`` is the last ``n``
    bytes (the whole object if ``n >= size``).  A start at or past the end,
    ``bytes=-0``, and any range on an empty object are 416 InvalidRange; the
    caller adds ``Content-Range: bytes */size``.
    """
    if header is None:
        return None
    m = _RANGE_RE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - suffix), size - 1
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(header, size)
    end = size - 1 if last == "" else min(int(last), size - 1)
    return start, end


def parse_copy_range(header: str, size: int) -> tuple[int, int]:
    """The ``(start, end_inclusive)`` of an ``x-amz-copy-source-range``; strict.

    Both ends are required and ``first <= last`` (else 400 InvalidArgument,
    as AWS and ceph's ``test_multipart_copy_improper_range`` expect); a range
    reaching past the source's end is 416 InvalidRange
    (``test_multipart_copy_invalid_range``).
    """
    m = _COPY_RANGE_RE.fullmatch(header.strip())
    if m is None or int(m.group(1)) > int(m.group(2)):
        raise S3Error(
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and "
            "last are the zero-based offsets of the first and last bytes to copy",
            400,
            ArgumentName="x-amz-copy-source-range",
            ArgumentValue=header,
        )
    start, end = int(m.group(1)), int(m.group(2))
    if end >= size:
        raise _unsatisfiable(header, size)
    return start, end


# ----------------------------------------------------------------------------- conditionals

_PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold"


def _etag_list(value: str) -> list[str]:
    """Entity tags in an If-Match / If-None-Match value, quotes and ``W/`` removed; ``*`` kept."""
    tags = []
    for item in value.split(","):
        tag = item.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        tag = tag.strip('"')
        if tag:
            tags.append(tag)
    return tags


def _etag_matches(value: str, etag: str) -> bool:
    # Weak comparison: our ETags are content hashes, so a W/ tag naming the same
    # hash is the same content; clients that send W/ expect it to match.
    tags = _etag_list(value)
    return "*" in tags or etag.strip('"') in tags


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # An empty value is treated as no header: it names no entity tag or date,
    # and some HTTP stacks send empty headers for unset options.
    value = headers.get(name)
    if value is None or not value.strip():
        return None
    return value


def _precondition_failed(condition: str) -> S3Error:
    return S3Error("PreconditionFailed", _PRECONDITION_MESSAGE, 412, Condition=condition)


def check_read_conditions(
    headers: Mapping[str, str], *, etag: str, mtime_ns: int, prefix: str = ""
) -> int | None:
    """Evaluate GET/HEAD (or, with ``prefix="x-amz-copy-source-"``, CopyObject source) preconditions.

    Returns None to proceed or 304 for "not modified"; raises 412
    PreconditionFailed.  RFC 9110 section 13.2.2 order: If-Match, else
    If-Unmodified-Since (412 on failure); then If-None-Match, else
    If-Modified-Since (304).  So If-Match beats If-Unmodified-Since and
    If-None-Match beats If-Modified-Since.  For a copy source a "not modified"
    is also 412 (AWS CopyObject), so that path never returns 304.  Unparseable
    dates are ignored, as RFC 9110 requires; a date in the future is not (the
    RFC's rule for that needs the clock, which this pure function does not
    have; the caller may drop such a header first).  Times compare in whole seconds
    because HTTP dates carry no fraction: an object modified at 10.7 s is not
    "modified since" 10 s.
    """
    mtime_s = mtime_ns // _NS
    if_match = _header(headers, prefix + "if-match")
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            raise _precondition_failed(prefix + "If-Match")
    else:
        since = _header(headers, prefix + "if-unmodified-since")
        date = parse_http_date(since) if since is not None else None
        if date is not None and mtime_s > math.floor(date):
            raise _precondition_failed(prefix + "If-Unmodified-Since")

    not_modified: str | None = None
    if_none_match = _header(headers, prefix + "if-none-match")
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            not_modified = prefix + "If-None-Match"
    else:
        since = _header(headers, prefix + "if-modified-since")
        date = parse_http_date(since) if since is not None else None
        if date is not None and mtime_s <= math.floor(date):
            not_modified = prefix + "If-Modified-Since"
    if not_modified is None:
        return None
    if prefix:
        raise _precondition_failed(not_modified)
    return 304


def check_write_conditions(headers: Mapping[str, str], *, exists: bool, etag: str | None) -> None:
    """Evaluate PutObject / CompleteMultipartUpload preconditions against the current object.

    ``If-Match`` on a missing key is 404 NoSuchKey (AWS), on a different ETag
    412.  ``If-None-Match: *`` on an existing key is 412: this is the
    exclusive create the shim maps onto a no-replace rename.  A listed ETag in
    If-None-Match that equals the current one is also 412 (RFC 9110).
    """
    if_match = _header(headers, "if-match")
    if if_match is not None:
        if not exists:
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404)
        if not _etag_matches(if_match, etag or ""):
            raise _precondition_failed("If-Match")
    if_none_match = _header(headers, "if-none-match")
    if if_none_match is not None and exists:
        tags = _etag_list(if_none_match)
        if "*" in tags or (etag is not None and etag.strip('"') in tags):
            raise _precondition_failed("If-None-Match")


# ----------------------------------------------------------------------------- listing


# Listing value types (rendered by dfs.core.s3xml; paginated here, so they live here).


class ObjectEntry(NamedTuple):
    """One object in a listing.  ``etag`` is unquoted (``"`` added when rendered)."""

    key: str
    size: int
    mtime_ns: int
    etag: str


class ListPage(NamedTuple):
    """One page of a listing (see :func:`paginate`).

    ``next_marker`` is the last key or common prefix on the page when
    ``truncated``, else None.
    """

    contents: list[ObjectEntry]
    prefixes: list[str]
    truncated: bool
    next_marker: str | None


class Listed(NamedTuple):
    """One item from the namespace walker, in ascending UTF-8 byte order of ``key``.

    ``entry`` is None for a directory the walker did not descend into; its key
    ends with ``/`` and it stands for every key under it (all of which roll up
    into one common prefix).  The walker may skip a directory only when that
    roll-up is complete (the delimiter occurs in the key after the list
    prefix), and must descend into a directory that is an ancestor of the
    prefix or of ``start_after``; :func:`paginate` raises ValueError otherwise.
    """

    key: str
    entry: ObjectEntry | None


def _common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    i = key.find(delimiter, len(prefix))
    return None if i < 0 else key[: i + len(delimiter)]


def paginate(
    items: Iterable[Listed], *, prefix: str, delimiter: str, start_after: str, max_keys: int
) -> ListPage:
    """One page of a ListObjects answer from a sorted stream of keys.

    Keys that start with ``prefix`` and sort after ``start_after`` are listed;
    with a ``delimiter``, a key whose remainder after the prefix contains it
    rolls up into the common prefix ``prefix + remainder[: first delimiter end]``,
    reported once.  ``start_after`` equal to a common prefix skips that whole
    prefix (that is how a page that ended on a common prefix continues); one
    *inside* a common prefix lists it again if a later key rolls into it, as AWS
    does.  Contents and common prefixes together count toward ``max_keys``.
    ``truncated`` is True when at least one more entry (content or new common
    prefix) exists, and then ``next_marker`` is the last entry returned, so
    passing it back as ``start_after`` continues exactly where this page ended.

    Stops reading ``items`` as soon as the answer is known (the page is full and
    one more entry was seen, or keys have moved past ``prefix``), so the walker
    should be lazy.
    """
    if max_keys <= 0:
        return ListPage([], [], False, None)
    contents: list[ObjectEntry] = []
    prefixes: list[str] = []
    last: str | None = None  # last entry returned, key or common prefix
    last_prefix: str | None = None
    for key, entry in items:
        if not key.startswith(prefix):
            if entry is None and prefix.startswith(key):
                raise ValueError(f"walker skipped directory {key!r}, an ancestor of the prefix {prefix!r}")
            if key > prefix:
                break  # keys with this prefix are contiguous in sorted order: none can follow
            continue
        cp = _common_prefix(key, prefix, delimiter)
        if entry is None:
            if cp is None:
                raise ValueError(f"walker skipped directory {key!r} that the delimiter does not roll up")
            if cp != start_after and key <= start_after and start_after.startswith(key):
                raise ValueError(f"walker skipped directory {key!r} that contains start_after")
        if cp is None:
            assert entry is not None
            if key <= start_after:
                continue
            if len(contents) + len(prefixes) == max_keys:
                return ListPage(contents, prefixes, True, last)
            contents.append(entry)
            last = key
        else:
            # A skipped directory stands for keys that all sort after its own
            # key; a real key must itself be after start_after.
            if cp in (last_prefix, start_after) or key <= start_after:
                continue
            if len(contents) + len(prefixes) == max_keys:
                return ListPage(contents, prefixes, True, last)
            prefixes.append(cp)
            last = last_prefix = cp
    return ListPage(contents, prefixes, False, None)


def walk_order_name(name: bytes, is_dir: bool) -> bytes:
    """Sort key for sibling directory entries so a depth-first walk yields keys in byte order.

    A directory ``a`` holds keys ``a/...``, so it must sort as ``a/``, not
    ``a``: otherwise a file ``a-b`` (key ``a-b``) would be walked after
    ``a/x`` although ``a-b`` < ``a/x`` (``-`` is 0x2D, ``/`` is 0x2F).  Names
    contain no ``/``, so no sibling's sort key starts with ``a/`` and each
    directory's keys form one contiguous run starting at ``a/``.
    """
    return name + b"/" if is_dir else name


MAX_KEYS_DEFAULT = 1000


def parse_max_keys(value: str | None, default: int = MAX_KEYS_DEFAULT, cap: int = MAX_KEYS_DEFAULT) -> int:
    """``max-keys`` (or ``max-uploads``/``max-parts``): default when absent or empty, capped at ``cap``.

    Anything but a non-negative decimal integer is 400 InvalidArgument.
    """
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit():
        raise S3Error(
            "InvalidArgument",
            "Provided max-keys not an integer or within integer range",
            400,
            ArgumentName="max-keys",
            ArgumentValue=value,
        )
    return min(int(value), cap)


_BAD_TOKEN = "The continuation token provided is incorrect"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def encode_token(key: str) -> str:
    """Opaque V2 continuation token for "continue after ``key``": unpadded urlsafe base64 of its UTF-8."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_token(token: str) -> str:
    """The key a continuation token from :func:`encode_token` names; 400 InvalidArgument if it is not one.

    Padding is optional on input.  The token must be canonical (re-encoding
    gives it back), so arbitrary strings cannot smuggle in a different key.
    """
    if not _TOKEN_RE.fullmatch(token):
        raise S3Error("InvalidArgument", _BAD_TOKEN, 400, ArgumentName="continuation-token")
    bare = token.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
        key = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", _BAD_TOKEN, 400, ArgumentName="continuation-token") from None
    if not key or encode_token(key) != bare:
        raise S3Error("InvalidArgument", _BAD_TOKEN, 400, ArgumentName="continuation-token")
    return key


# ----------------------------------------------------------------------------- metadata

META_PREFIX = "x-amz-meta-"
MAX_USER_METADATA_BYTES = 2048

#: Standard headers stored with an object and returned on GET/HEAD.
STORED_HEADERS = (
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
)


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-amz-meta-*`` headers, keyed by their full lower-cased header name.

    AWS limits user metadata to 2 KB, counted as the UTF-8 bytes of each name
    (without the ``x-amz-meta-`` prefix) plus its value; more is 400
    MetadataTooLarge.
    """
    out: dict[str, str] = {}
    size = 0
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith(META_PREFIX):
            out[lname] = value
            size += len(lname[len(META_PREFIX) :].encode("utf-8", "surrogatepass"))
            size += len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_USER_METADATA_BYTES:
        raise S3Error(
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size.",
            400,
            Size=str(size),
            MaxSizeAllowed=str(MAX_USER_METADATA_BYTES),
        )
    return out


def stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The :data:`STORED_HEADERS` present in ``headers``, lower-cased names.

    ``aws-chunked`` is removed from Content-Encoding: it describes the upload
    framing, not the stored bytes, and returning it makes clients try to
    un-chunk the download (boto3 #4435).  If nothing is left, the header is dropped.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    out: dict[str, str] = {}
    for name in STORED_HEADERS:
        value = lowered.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            codings = [c.strip() for c in value.split(",")]
            value = ", ".join(c for c in codings if c and c.lower() != "aws-chunked")
            if not value:
                continue
        out[name] = value
    return out
