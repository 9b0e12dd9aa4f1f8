"""S3 tags: validation as AWS does it, and the one canonical encoding they are stored in.

Object tags (at most 10) and bucket tags (at most 50) are stored as the
xattr ``user.s3.tagging`` of the object's file or the bucket's directory, in
the same form the ``x-amz-tagging`` header carries them: URL-encoded query
text (``k1=v1&k2=v2``), keys sorted, so equal tag sets are equal bytes and
the mount shows something readable.

Invariants of a valid tag set (:func:`check`): keys of 1..128 characters,
values of 0..256, distinct keys, no key starting with ``aws:``, and only the
characters AWS allows in tags (letters, digits, spaces and ``_ . : / = + - @``).
Pure: no I/O, no trio.
"""

from __future__ import annotations

import unicodedata
import urllib.parse
from collections.abc import Sequence

from dfs.core.errors import S3Error

MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 256
# Bound on the x-amz-tagging header and the stored xattr: 50 tags of the longest, fully %-encoded.
MAX_ENCODED_BYTES = MAX_BUCKET_TAGS * (MAX_KEY_CHARS + MAX_VALUE_CHARS + 2) * 12
_PUNCTUATION = frozenset("_.:/=+-@")

Tags = list[tuple[str, str]]


def _allowed_char(ch: str) -> bool:
    # AWS's tag alphabet: Unicode letters, digits and separators (spaces), plus a few punctuation marks.
    return ch in _PUNCTUATION or unicodedata.category(ch)[0] in ("L", "N", "Z")


def check(tags: Sequence[tuple[str, str]], *, max_tags: int, bucket: bool = False) -> None:
    """Refuse a tag set AWS would refuse, with AWS's error code (InvalidTag, or BadRequest for
    too many object tags)."""
    if len(tags) > max_tags:
        if bucket:
            raise S3Error("InvalidTag", f"Bucket tag count cannot be greater than {max_tags}")
        raise S3Error("BadRequest", f"Object tags cannot be greater than {max_tags}")
    seen: set[str] = set()
    for key, value in tags:
        if not 1 <= len(key) <= MAX_KEY_CHARS:
            raise S3Error(
                "InvalidTag", f"The TagKey you have provided is invalid: 1 to {MAX_KEY_CHARS} characters"
            )
        if len(value) > MAX_VALUE_CHARS:
            raise S3Error("InvalidTag", f"The TagValue you have provided is too long, max {MAX_VALUE_CHARS}")
        if key.lower().startswith("aws:"):
            raise S3Error("InvalidTag", "Your TagKey cannot be prefixed with aws:")
        if not all(_allowed_char(ch) for ch in key):
            raise S3Error("InvalidTag", "The TagKey you have provided is invalid")
        if not all(_allowed_char(ch) for ch in value):
            raise S3Error("InvalidTag", "The TagValue you have provided is invalid")
        if key in seen:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
        seen.add(key)


def parse_header(text: str) -> Tags:
    """The tags of an ``x-amz-tagging`` header (URL-encoded query form), checked as object tags."""
    if len(text) > MAX_ENCODED_BYTES:
        raise S3Error("InvalidArgument", "The header 'x-amz-tagging' is too long", 400)
    tags: Tags = []
    for part in text.split("&"):
        if not part:
            continue
        raw_key, _, raw_value = part.partition("=")
        try:
            key = urllib.parse.unquote_plus(raw_key, errors="strict")
            value = urllib.parse.unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise S3Error(
                "InvalidArgument", "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded"
            ) from None
        tags.append((key, value))
    if len({k for k, _ in tags}) != len(tags):
        raise S3Error(
            "InvalidArgument",
            "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters "
            "without tag name duplicates.",
        )
    check(tags, max_tags=MAX_OBJECT_TAGS)
    return tags


def encode(tags: Sequence[tuple[str, str]]) -> bytes:
    """The canonical stored form: keys sorted, each key and value %-encoded (spaces as %20)."""
    return "&".join(
        f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" for k, v in sorted(tags)
    ).encode("ascii")


def decode(raw: bytes) -> Tags:
    """Tags from their stored form (tolerant: an xattr edited through the mount may be anything)."""
    text = raw.decode("utf-8", "replace")
    out: Tags = []
    for part in text.split("&"):
        if part:
            key, _, value = part.partition("=")
            out.append((urllib.parse.unquote_plus(key), urllib.parse.unquote_plus(value)))
    return out
