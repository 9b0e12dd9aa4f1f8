"""dfs.core.s3names: bucket and key rules, URL encoding, dates, ranges, conditionals, pagination, metadata."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dfs.core import s3names
from dfs.core.errors import S3Error
from dfs.core.s3names import (
    BUCKET_RE,
    Listed,
    check_bucket,
    check_read_conditions,
    check_write_conditions,
    decode_token,
    encode_token,
    http_date,
    is_bucket_name,
    iso8601,
    key_to_names,
    paginate,
    parse_copy_range,
    parse_http_date,
    parse_max_keys,
    parse_range,
    stored_headers,
    url_encode,
    user_metadata,
    walk_order_name,
)
from dfs.core.s3xml import ListPage, ObjectEntry

NS = 1_000_000_000
JAN_2025 = 1_735_689_600  # 2025-01-01T00:00:00Z

# Unicode scalar values only: S3 keys are valid UTF-8, so no lone surrogates.
unicode_text = st.text(alphabet=st.characters(codec="utf-8"))


def _code(exc: pytest.ExceptionInfo[S3Error]) -> tuple[str, int]:
    return exc.value.s3_code, exc.value.status


# ----------------------------------------------------------------------------- buckets


@pytest.mark.parametrize(
    "name",
    ["abc", "a-b.c", "1bucket", "my.bucket.name", "a" * 63, "0.0.0", "1-2", "a.1.2.3", "999.1.1.1x"],
)
def test_valid_bucket_names(name: str) -> None:
    assert is_bucket_name(name)
    assert BUCKET_RE.fullmatch(name)
    check_bucket(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "ab",
        "a" * 64,
        "Abc",
        "abC",
        "-abc",
        "abc-",
        ".abc",
        "abc.",
        "a..b",
        "192.168.1.1",
        "1.2.3.4",
        "a_b",
        "ab c",
        "ab/c",
        "caf\u00e9",
        "abc\n",
        "\u0661\u0662\u0663",  # Arabic-Indic digits are not [0-9]
    ],
)
def test_invalid_bucket_names(name: str) -> None:
    assert not is_bucket_name(name)
    with pytest.raises(S3Error) as exc:
        check_bucket(name)
    assert _code(exc) == ("InvalidBucketName", 400)


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("key", "names", "is_dir"),
    [
        ("a", [b"a"], False),
        ("a/b/c", [b"a", b"b", b"c"], False),
        ("d/", [b"d"], True),
        ("a/b/", [b"a", b"b"], True),
        ("caf\u00e9/\u4e2d\u6587", ["caf\u00e9".encode(), "\u4e2d\u6587".encode()], False),
        ('&+-\u00e9"/ %x', [b'&+-\xc3\xa9"', b" %x"], False),
        (".a/..b/...", [b".a", b"..b", b"..."], False),
        (" ", [b" "], False),
        ("a\\b", [b"a\\b"], False),
        ("a" * 255, [b"a" * 255], False),
        # 1024 bytes, no component over 255
        ("b" * 254 + "/" + "/".join(["b" * 255] * 3) + "/c", [b"b" * 254] + [b"b" * 255] * 3 + [b"c"], False),
        ("e\u0301", ["e\u0301".encode()], False),  # not normalised to U+00E9
    ],
)
def test_key_to_names(key: str, names: list[bytes], is_dir: bool) -> None:
    assert key_to_names(key) == (names, is_dir)


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("", "InvalidArgument"),
        ("/", "InvalidArgument"),
        ("/a", "InvalidArgument"),
        ("a//b", "InvalidArgument"),
        ("a//", "InvalidArgument"),
        (".", "InvalidArgument"),
        ("..", "InvalidArgument"),
        ("./a", "InvalidArgument"),
        ("a/./b", "InvalidArgument"),
        ("a/../b", "InvalidArgument"),
        ("a/..", "InvalidArgument"),
        ("a/../", "InvalidArgument"),
        ("a/.", "InvalidArgument"),
        ("a\0b", "InvalidArgument"),
        ("a\udcffb", "InvalidArgument"),
        ("\ud800", "InvalidArgument"),
        ("a" * 256, "KeyTooLongError"),
        ("x/" + "\u00e9" * 128, "KeyTooLongError"),  # 256 bytes in one component
        ("a/" * 512 + "b", "KeyTooLongError"),  # 1025 bytes
        ("\u4e2d" * 342, "KeyTooLongError"),  # 1026 bytes of UTF-8, 342 characters
    ],
)
def test_key_to_names_refuses(key: str, code: str) -> None:
    with pytest.raises(S3Error) as exc:
        key_to_names(key)
    assert _code(exc) == (code, 400)


def test_key_length_limit_is_in_bytes() -> None:
    key = "/".join(["a" * 200] * 5) + "/" + "b" * 19  # 1005 + 19 = 1024 bytes
    assert len(key.encode()) == 1024
    assert key_to_names(key)[0][-1] == b"b" * 19
    with pytest.raises(S3Error):
        key_to_names(key + "b")


@given(st.lists(unicode_text.filter(lambda s: s not in ("", ".", "..") and "/" not in s and "\0" not in s)))
def test_key_to_names_round_trips(parts: list[str]) -> None:
    key = "/".join(parts)
    assume(key and len(key.encode()) <= 1024 and all(len(p.encode()) <= 255 for p in parts))
    names, is_dir = key_to_names(key)
    assert not is_dir
    assert b"/".join(names).decode() == key
    names2, is_dir2 = key_to_names(key + "/")
    assume(len((key + "/").encode()) <= 1024)
    assert (names2, is_dir2) == (names, True)


# ----------------------------------------------------------------------------- url_encode


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("abc", "abc"),
        ("a b", "a%20b"),
        ("a+b", "a%2Bb"),
        ("a/b/", "a/b/"),
        ("-._~", "-._~"),
        ("%", "%25"),
        ("&=?#", "%26%3D%3F%23"),
        ("\u00e9", "%C3%A9"),
        ("\u4e2d", "%E4%B8%AD"),
        ("\x01\r\n", "%01%0D%0A"),
        ("\U0001f600", "%F0%9F%98%80"),
        ('"', "%22"),
    ],
)
def test_url_encode_table(raw: str, encoded: str) -> None:
    assert url_encode(raw) == encoded


@given(unicode_text)
def test_url_encode_round_trips_through_unquote_plus(s: str) -> None:
    encoded = url_encode(s)
    assert re.fullmatch(r"[A-Za-z0-9\-._~/%]*", encoded)
    # botocore decodes with unquote_plus: '+' must never appear unencoded.
    assert urllib.parse.unquote_plus(encoded) == s
    assert urllib.parse.unquote(encoded) == s


# ----------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("ns", "http", "iso"),
    [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT", "1970-01-01T00:00:00.000Z"),
        (JAN_2025 * NS, "Wed, 01 Jan 2025 00:00:00 GMT", "2025-01-01T00:00:00.000Z"),
        (JAN_2025 * NS + 123_999_999, "Wed, 01 Jan 2025 00:00:00 GMT", "2025-01-01T00:00:00.123Z"),
        (JAN_2025 * NS + 999_999_999, "Wed, 01 Jan 2025 00:00:00 GMT", "2025-01-01T00:00:00.999Z"),
        (784_111_777 * NS + 5_000_000, "Sun, 06 Nov 1994 08:49:37 GMT", "1994-11-06T08:49:37.005Z"),
        (951_782_400 * NS, "Tue, 29 Feb 2000 00:00:00 GMT", "2000-02-29T00:00:00.000Z"),
        (-1, "Wed, 31 Dec 1969 23:59:59 GMT", "1969-12-31T23:59:59.999Z"),
        (253_402_300_799 * NS, "Fri, 31 Dec 9999 23:59:59 GMT", "9999-12-31T23:59:59.000Z"),
    ],
)
def test_date_formats_exact(ns: int, http: str, iso: str) -> None:
    assert http_date(ns) == http
    assert iso8601(ns) == iso


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_777.0),
        ("  Sun, 06 Nov 1994 08:49:37 GMT ", 784_111_777.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784_111_777.0),
        ("Sun Nov  6 08:49:37 1994", 784_111_777.0),
        ("Sun Nov 06 08:49:37 1994", 784_111_777.0),
        ("1994-11-06T08:49:37Z", 784_111_777.0),
        ("1994-11-06T08:49:37.000Z", 784_111_777.0),
        ("1994-11-06T08:49:37.5Z", 784_111_777.5),
        ("Thursday, 01-Jan-15 00:00:00 GMT", 1_420_070_400.0),
        ("Wed, 01 Jan 2025 00:00:00 GMT", float(JAN_2025)),
        ("Mon, 01 Jan 2025 00:00:00 GMT", float(JAN_2025)),  # day name not checked
        ("Wed, 31 Dec 2025 23:59:60 GMT", float(JAN_2025 + 365 * 86400)),  # leap second
        ("", None),
        ("garbage", None),
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 06 Nov 1994 08:49:37 +0000", None),
        ("Sun, 6 Nov 1994 08:49:37 GMT", None),
        ("Sun, 31 Feb 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 25:49:37 GMT", None),
        ("Sun, 06 Foo 1994 08:49:37 GMT", None),
        ("1994-11-06T08:49:37+01:00", None),
        ("1994-11-06 08:49:37Z", None),
        ("1994-13-06T08:49:37Z", None),
        ("784111777", None),
    ],
)
def test_parse_http_date(value: str, expected: float | None) -> None:
    assert parse_http_date(value) == expected


@given(st.integers(min_value=0, max_value=253_402_300_799 * NS))
def test_dates_round_trip(ns: int) -> None:
    assert parse_http_date(http_date(ns)) == ns // NS
    parsed = parse_http_date(iso8601(ns))
    assert parsed is not None
    assert round(parsed * 1000) == ns // 1_000_000


def test_http_date_ignores_locale() -> None:
    code = (
        "import locale\n"
        "try:\n    locale.setlocale(locale.LC_TIME, 'de_DE.UTF-8')\nexcept locale.Error:\n    pass\n"
        "from dfs.core.s3names import http_date\nprint(http_date(0))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "Thu, 01 Jan 1970 00:00:00 GMT"


# ----------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=0-", 10, (0, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-10", 10, (0, 9)),
        ("bytes=-20", 10, (0, 9)),
        ("bytes=0-100", 10, (0, 9)),
        ("bytes=3-99999999999999999999999", 10, (3, 9)),
        ("BYTES=1-2", 10, (1, 2)),
        (" bytes=1-2 ", 10, (1, 2)),
        # Not a single range we understand: AWS ignores the header and sends everything.
        ("bytes=0-1,3-4", 10, None),
        ("bytes=0-1, 3-4", 10, None),
        ("bytes=5-3", 10, None),
        ("bytes=-", 10, None),
        ("bytes=", 10, None),
        ("bytes=abc", 10, None),
        ("bytes=1", 10, None),
        ("bytes=--1", 10, None),
        ("bytes=+1-2", 10, None),
        ("bytes = 0-1", 10, None),
        ("items=0-1", 10, None),
        ("0-1", 10, None),
        ("bytes=\u0661-\u0662", 10, None),
        ("", 10, None),
        ("bytes=0-1,3-4", 0, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=11-11", 10),
        ("bytes=-0", 10),
        # any range on an empty object (ceph test_ranged_request_empty_object)
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=40-50", 0),
        ("bytes=-1", 0),
        ("bytes=-0", 0),
    ],
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(S3Error) as exc:
        parse_range(header, size)
    assert _code(exc) == ("InvalidRange", 416)
    assert exc.value.extra["ActualObjectSize"] == str(size)
    assert exc.value.message == "The requested range is not satisfiable"


@given(st.integers(0, 50), st.integers(0, 60), st.integers(0, 60) | st.none())
def test_parse_range_bounds(size: int, first: int, last: int | None) -> None:
    header = f"bytes={first}-" + ("" if last is None else str(last))
    if last is not None and last < first:
        assert parse_range(header, size) is None  # invalid, so ignored
        return
    if first >= size:
        with pytest.raises(S3Error) as exc:
            parse_range(header, size)
        assert exc.value.status == 416
        return
    got = parse_range(header, size)
    assert got is not None
    start, end = got
    assert 0 <= start <= end < size
    assert start == first
    assert end == (size - 1 if last is None else min(last, size - 1))


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=3-3", 10, (3, 3)),
    ],
)
def test_parse_copy_range(header: str, size: int, expected: tuple[int, int]) -> None:
    assert parse_copy_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size", "code", "status"),
    [
        ("0-2", 10, "InvalidArgument", 400),
        ("bytes=0", 10, "InvalidArgument", 400),
        ("bytes=hello-world", 10, "InvalidArgument", 400),
        ("bytes=0-bar", 10, "InvalidArgument", 400),
        ("bytes=hello-", 10, "InvalidArgument", 400),
        ("bytes=0-2,3-5", 10, "InvalidArgument", 400),
        ("bytes=-5", 10, "InvalidArgument", 400),
        ("bytes=5-", 10, "InvalidArgument", 400),
        ("bytes=5-3", 10, "InvalidArgument", 400),
        ("", 10, "InvalidArgument", 400),
        ("bytes=0-21", 5, "InvalidRange", 416),
        ("bytes=0-10", 10, "InvalidRange", 416),
        ("bytes=10-10", 10, "InvalidRange", 416),
        ("bytes=0-0", 0, "InvalidRange", 416),
    ],
)
def test_parse_copy_range_refuses(header: str, size: int, code: str, status: int) -> None:
    with pytest.raises(S3Error) as exc:
        parse_copy_range(header, size)
    assert _code(exc) == (code, status)


# ----------------------------------------------------------------------------- conditionals

ETAG = "0123456789abcdef0123456789abcdef"
MTIME_NS = JAN_2025 * NS + 700_000_000  # 10:00:00.7 -> compares as second JAN_2025
BEFORE = http_date((JAN_2025 - 10) * NS)
SAME = http_date(JAN_2025 * NS)
AFTER = http_date((JAN_2025 + 10) * NS)
Q = f'"{ETAG}"'
OTHER = '"ffff"'

PRECONDITION = "412"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        # If-Match
        ({"if-match": Q}, None),
        ({"if-match": ETAG}, None),
        ({"if-match": f"W/{Q}"}, None),
        ({"if-match": f"{OTHER}, {Q}"}, None),
        ({"if-match": f"{OTHER},{Q}"}, None),
        ({"if-match": "*"}, None),
        ({"if-match": OTHER}, PRECONDITION),
        ({"if-match": ""}, None),  # empty = absent
        # If-Unmodified-Since
        ({"if-unmodified-since": BEFORE}, PRECONDITION),
        ({"if-unmodified-since": SAME}, None),
        ({"if-unmodified-since": AFTER}, None),
        ({"if-unmodified-since": "not a date"}, None),
        # If-Match beats If-Unmodified-Since
        ({"if-match": Q, "if-unmodified-since": BEFORE}, None),
        ({"if-match": OTHER, "if-unmodified-since": AFTER}, PRECONDITION),
        # If-None-Match
        ({"if-none-match": Q}, 304),
        ({"if-none-match": f"W/{Q}"}, 304),
        ({"if-none-match": f"{OTHER}, {Q}"}, 304),
        ({"if-none-match": "*"}, 304),
        ({"if-none-match": OTHER}, None),
        # If-Modified-Since
        ({"if-modified-since": BEFORE}, None),
        ({"if-modified-since": SAME}, 304),
        ({"if-modified-since": AFTER}, 304),
        ({"if-modified-since": "garbage"}, None),
        # If-None-Match beats If-Modified-Since
        ({"if-none-match": OTHER, "if-modified-since": AFTER}, None),
        ({"if-none-match": Q, "if-modified-since": BEFORE}, 304),
        # 412 conditions are evaluated before 304 ones
        ({"if-match": OTHER, "if-none-match": Q}, PRECONDITION),
        ({"if-unmodified-since": BEFORE, "if-modified-since": AFTER}, PRECONDITION),
        ({"if-match": Q, "if-none-match": Q}, 304),
        ({"if-match": Q, "if-modified-since": AFTER}, 304),
        ({"if-unmodified-since": AFTER, "if-modified-since": BEFORE}, None),
        # AWS's documented combinations
        ({"if-match": Q, "if-unmodified-since": BEFORE, "if-none-match": OTHER}, None),
        ({"if-none-match": Q, "if-modified-since": BEFORE, "if-match": Q}, 304),
    ],
)
def test_read_conditions(headers: dict[str, str], expected: int | str | None) -> None:
    if expected == PRECONDITION:
        with pytest.raises(S3Error) as exc:
            check_read_conditions(headers, etag=ETAG, mtime_ns=MTIME_NS)
        assert _code(exc) == ("PreconditionFailed", 412)
    else:
        assert check_read_conditions(headers, etag=ETAG, mtime_ns=MTIME_NS) == expected


def test_read_conditions_accept_quoted_stored_etag() -> None:
    assert check_read_conditions({"if-none-match": Q}, etag=Q, mtime_ns=MTIME_NS) == 304


@pytest.mark.parametrize(
    ("headers", "fails"),
    [
        ({}, False),
        ({"x-amz-copy-source-if-match": Q}, False),
        ({"x-amz-copy-source-if-match": OTHER}, True),
        ({"x-amz-copy-source-if-unmodified-since": BEFORE}, True),
        ({"x-amz-copy-source-if-match": Q, "x-amz-copy-source-if-unmodified-since": BEFORE}, False),
        # "not modified" is a 412 for a copy source
        ({"x-amz-copy-source-if-none-match": Q}, True),
        ({"x-amz-copy-source-if-none-match": OTHER}, False),
        ({"x-amz-copy-source-if-modified-since": AFTER}, True),
        ({"x-amz-copy-source-if-modified-since": BEFORE}, False),
        ({"x-amz-copy-source-if-none-match": OTHER, "x-amz-copy-source-if-modified-since": AFTER}, False),
        # plain conditional headers are not about the source
        ({"if-match": OTHER, "if-none-match": Q, "if-unmodified-since": BEFORE}, False),
    ],
)
def test_copy_source_conditions(headers: dict[str, str], fails: bool) -> None:
    kwargs = {"etag": ETAG, "mtime_ns": MTIME_NS, "prefix": "x-amz-copy-source-"}
    if fails:
        with pytest.raises(S3Error) as exc:
            check_read_conditions(headers, **kwargs)  # type: ignore[arg-type]
        assert _code(exc) == ("PreconditionFailed", 412)
    else:
        assert check_read_conditions(headers, **kwargs) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "exists", "etag", "expected"),
    [
        ({}, False, None, None),
        ({}, True, ETAG, None),
        ({"if-none-match": "*"}, False, None, None),
        ({"if-none-match": "*"}, True, ETAG, ("PreconditionFailed", 412)),
        ({"if-none-match": Q}, True, ETAG, ("PreconditionFailed", 412)),
        ({"if-none-match": OTHER}, True, ETAG, None),
        ({"if-match": Q}, True, ETAG, None),
        ({"if-match": "*"}, True, ETAG, None),
        ({"if-match": OTHER}, True, ETAG, ("PreconditionFailed", 412)),
        ({"if-match": Q}, False, None, ("NoSuchKey", 404)),
        ({"if-match": "*"}, False, None, ("NoSuchKey", 404)),
        ({"if-match": Q, "if-none-match": "*"}, True, ETAG, ("PreconditionFailed", 412)),
    ],
)
def test_write_conditions(
    headers: dict[str, str], exists: bool, etag: str | None, expected: tuple[str, int] | None
) -> None:
    if expected is None:
        check_write_conditions(headers, exists=exists, etag=etag)
    else:
        with pytest.raises(S3Error) as exc:
            check_write_conditions(headers, exists=exists, etag=etag)
        assert _code(exc) == expected


# ----------------------------------------------------------------------------- listing helpers


def _entry(key: str) -> ObjectEntry:
    return ObjectEntry(key, len(key), JAN_2025 * NS, hashlib.md5(key.encode()).hexdigest())


def _flat(keys: set[str]) -> list[Listed]:
    return [Listed(k, _entry(k)) for k in sorted(keys, key=lambda k: k.encode())]


def _reference(keys: set[str], prefix: str, delimiter: str, start_after: str) -> list[tuple[str, str]]:
    """Every entry of a full listing as ("key"|"prefix", value), by set arithmetic rather than a scan."""
    sa = start_after.encode()
    contents: set[str] = set()
    prefixes: set[str] = set()
    for k in keys:
        if not k.startswith(prefix) or k.encode() <= sa:
            continue
        rest = k[len(prefix) :]
        if delimiter and delimiter in rest:
            prefixes.add(prefix + rest[: rest.index(delimiter) + len(delimiter)])
        else:
            contents.add(k)
    prefixes.discard(start_after)
    entries = [("key", k) for k in contents] + [("prefix", p) for p in prefixes]
    return sorted(entries, key=lambda e: e[1].encode())


def _page_entries(page: ListPage) -> list[tuple[str, str]]:
    entries = [("key", e.key) for e in page.contents] + [("prefix", p) for p in page.prefixes]
    return sorted(entries, key=lambda e: e[1].encode())


def _check_page(page: ListPage, expected: list[tuple[str, str]], max_keys: int) -> None:
    got = _page_entries(page)
    assert got == expected[:max_keys]
    assert page.truncated == (len(expected) > max_keys and max_keys > 0)
    assert page.next_marker == (got[-1][1] if page.truncated else None)
    assert all(e == _entry(e.key) for e in page.contents)


# Characters that stress escaping, byte order (é, CJK, astral vs. U+E000..U+FFFF) and delimiters.
KEY_CHARS = ["a", "b", "/", "-", "+", "&", "\u00e9", '"', " ", "%", "\u4e2d", "\ue000", "\U0001f600", "."]
key_text = st.text(alphabet=st.sampled_from(KEY_CHARS), min_size=1, max_size=6)
delimiters = st.sampled_from(["", "/", "-", "a/", "\u00e9"])


def _cut(pool: list[str], min_len: int) -> st.SearchStrategy[str]:
    """A leading part of one of ``pool``'s keys."""
    return st.sampled_from(pool).flatmap(
        lambda k: st.integers(min(min_len, len(k)), len(k)).map(lambda n: k[:n])
    )


@st.composite
def listing_case(draw: st.DrawFn) -> tuple[set[str], str, str, str, int]:
    keys = draw(st.sets(key_text, max_size=25))
    pool = sorted(keys) or ["a"]
    prefix = draw(st.just("") | _cut(pool, 0))
    delimiter = draw(delimiters)
    start_after = draw(
        st.just("")
        | key_text
        | st.sampled_from(pool)
        | st.sampled_from(pool).map(lambda k: k[: k.find("/") + 1] if "/" in k else k)
    )
    max_keys = draw(st.integers(0, 6))
    return keys, prefix, delimiter, start_after, max_keys


@settings(max_examples=300, deadline=None)
@given(listing_case())
def test_paginate_matches_reference(case: tuple[set[str], str, str, str, int]) -> None:
    keys, prefix, delimiter, start_after, max_keys = case
    page = paginate(
        _flat(keys), prefix=prefix, delimiter=delimiter, start_after=start_after, max_keys=max_keys
    )
    _check_page(page, _reference(keys, prefix, delimiter, start_after), max_keys)


@settings(max_examples=200, deadline=None)
@given(listing_case(), st.integers(1, 4))
def test_paginate_pages_cover_listing_exactly(
    case: tuple[set[str], str, str, str, int], max_keys: int
) -> None:
    keys, prefix, delimiter, start_after, _ = case
    expected = _reference(keys, prefix, delimiter, start_after)
    collected: list[tuple[str, str]] = []
    marker = start_after
    for _ in range(len(expected) + 2):
        page = paginate(
            _flat(keys), prefix=prefix, delimiter=delimiter, start_after=marker, max_keys=max_keys
        )
        collected += _page_entries(page)
        if not page.truncated:
            break
        assert page.next_marker is not None
        marker = page.next_marker
    else:
        pytest.fail("pagination did not terminate")
    assert collected == expected  # no duplicates, nothing missing, in order


def test_paginate_examples() -> None:
    keys = {"a", "a-b", "a/x", "a/y/z", "b/", "b/c", "c"}
    page = paginate(_flat(keys), prefix="", delimiter="/", start_after="", max_keys=1000)
    assert [e.key for e in page.contents] == ["a", "a-b", "c"]
    assert page.prefixes == ["a/", "b/"]
    assert not page.truncated and page.next_marker is None

    page = paginate(_flat(keys), prefix="a/", delimiter="/", start_after="", max_keys=1000)
    assert [e.key for e in page.contents] == ["a/x"]
    assert page.prefixes == ["a/y/"]

    page = paginate(_flat(keys), prefix="b/", delimiter="/", start_after="", max_keys=1000)
    assert [e.key for e in page.contents] == ["b/", "b/c"]  # the marker itself is an object

    page = paginate(_flat(keys), prefix="", delimiter="/", start_after="", max_keys=3)
    assert [e.key for e in page.contents] == ["a", "a-b"]
    assert page.prefixes == ["a/"]
    assert page.truncated and page.next_marker == "a/"
    # Continuing after a common prefix skips everything under it.
    page = paginate(_flat(keys), prefix="", delimiter="/", start_after="a/", max_keys=3)
    assert [e.key for e in page.contents] == ["c"]
    assert page.prefixes == ["b/"]
    assert not page.truncated

    # start_after inside a common prefix lists that prefix again if later keys fall in it.
    page = paginate(_flat(keys), prefix="", delimiter="/", start_after="a/x", max_keys=10)
    assert page.prefixes == ["a/", "b/"]
    page = paginate(_flat(keys), prefix="", delimiter="/", start_after="a/y/z", max_keys=10)
    assert page.prefixes == ["b/"]


def test_paginate_truncation_needs_a_new_entry() -> None:
    # The page is full at "a/" and only more keys under "a/" follow: not truncated.
    keys = {"a/1", "a/2", "a/3"}
    page = paginate(_flat(keys), prefix="", delimiter="/", start_after="", max_keys=1)
    assert page == ListPage([], ["a/"], False, None)
    page = paginate(_flat(keys | {"b"}), prefix="", delimiter="/", start_after="", max_keys=1)
    assert page == ListPage([], ["a/"], True, "a/")


def test_paginate_max_keys_zero() -> None:
    assert paginate(_flat({"a"}), prefix="", delimiter="", start_after="", max_keys=0) == ListPage(
        [], [], False, None
    )


def test_paginate_byte_order() -> None:
    # U+E000 sorts before U+1F600 in UTF-8 (and code points), but after it in UTF-16.
    keys = {"\U0001f600", "\ue000", "\u00e9", "z"}
    page = paginate(_flat(keys), prefix="", delimiter="", start_after="\ue000", max_keys=10)
    assert [e.key for e in page.contents] == ["\U0001f600"]


def _limited(items: list[Listed], limit: int) -> Iterator[Listed]:
    for i, item in enumerate(items):
        if i >= limit:
            raise AssertionError(f"paginate read more than {limit} items")
        yield item


def test_paginate_reads_lazily() -> None:
    items = _flat({f"k{i:03d}" for i in range(100)})
    page = paginate(_limited(items, 4), prefix="", delimiter="", start_after="", max_keys=3)
    assert page.truncated and page.next_marker == "k002"
    # Stops once keys have moved past the prefix.
    items = _flat({"a1", "a2", "b1", "b2", "c"})
    page = paginate(_limited(items, 3), prefix="a", delimiter="", start_after="", max_keys=10)
    assert [e.key for e in page.contents] == ["a1", "a2"]


def test_paginate_rejects_bad_skipped_directories() -> None:
    with pytest.raises(ValueError, match="ancestor of the prefix"):
        paginate([Listed("a/", None)], prefix="a/b", delimiter="/", start_after="", max_keys=10)
    with pytest.raises(ValueError, match="does not roll up"):
        paginate([Listed("a/", None)], prefix="a/", delimiter="/", start_after="", max_keys=10)
    with pytest.raises(ValueError, match="does not roll up"):
        paginate([Listed("a/", None)], prefix="", delimiter="", start_after="", max_keys=10)
    with pytest.raises(ValueError, match="contains start_after"):
        paginate([Listed("a/", None)], prefix="", delimiter="/", start_after="a/b", max_keys=10)
    # Fine: the skipped directory is the common prefix being continued after, or unrelated.
    page = paginate(
        [Listed("a/", None), Listed("b", _entry("b"))],
        prefix="",
        delimiter="/",
        start_after="a/",
        max_keys=10,
    )
    assert [e.key for e in page.contents] == ["b"] and page.prefixes == []
    page = paginate([Listed("x/", None)], prefix="a", delimiter="/", start_after="", max_keys=10)
    assert page == ListPage([], [], False, None)


# ----------------------------------------------------------------------------- tree walks


@dataclass
class Dir:
    files: set[str] = field(default_factory=set)
    dirs: dict[str, Dir] = field(default_factory=dict)
    marker: bool = False


def _tree(keys: set[str]) -> tuple[Dir, set[str]]:
    """A directory tree holding ``keys``.

    Keys that clash with a file or directory of the same name are dropped.
    """
    root = Dir()
    kept: set[str] = set()
    for key in sorted(keys, key=len):
        names, is_dir = key_to_names(key)
        node = root
        ok = True
        for name in names[:-1] if not is_dir else names:
            n = name.decode()
            if n in node.files:
                ok = False
                break
            node = node.dirs.setdefault(n, Dir())
        if not ok:
            continue
        if is_dir:
            node.marker = True
        else:
            last = names[-1].decode()
            if last in node.dirs:
                continue
            node.files.add(last)
        kept.add(key)
    # A directory exists only as an ancestor of some key, so kept keys describe it exactly.
    return root, kept


def _walk(
    node: Dir, path: str, *, prefix: str, delimiter: str, start_after: str, skip: bool
) -> Iterator[Listed]:
    """A depth-first walker like the shim's: siblings by walk_order_name.

    With ``skip``, directories that roll up into one common prefix are yielded
    as ``Listed(key, None)`` instead of being descended into.
    """
    if path and node.marker:
        yield Listed(path, _entry(path))
    children = [(n, True) for n in node.dirs] + [(n, False) for n in node.files]
    children.sort(key=lambda c: walk_order_name(c[0].encode(), c[1]))
    for name, is_dir in children:
        if not is_dir:
            yield Listed(path + name, _entry(path + name))
            continue
        dkey = path + name + "/"
        if skip and dkey.startswith(prefix) and delimiter and delimiter in dkey[len(prefix) :]:
            rest = dkey[len(prefix) :]
            cp = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if not start_after.startswith(dkey) or cp == start_after:
                yield Listed(dkey, None)
                continue
        yield from _walk(
            node.dirs[name], dkey, prefix=prefix, delimiter=delimiter, start_after=start_after, skip=skip
        )


component = st.text(
    alphabet=st.sampled_from([c for c in KEY_CHARS if c != "/"]), min_size=1, max_size=3
).filter(lambda s: s not in (".", ".."))
tree_key = st.builds(
    lambda parts, marker: "/".join(parts) + ("/" if marker else ""),
    st.lists(component, min_size=1, max_size=4),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(st.sets(tree_key, max_size=25))
def test_walk_order_gives_byte_order(keys: set[str]) -> None:
    root, kept = _tree(keys)
    walked = [item.key for item in _walk(root, "", prefix="", delimiter="", start_after="", skip=False)]
    assert walked == sorted(kept, key=lambda k: k.encode())


@st.composite
def tree_case(draw: st.DrawFn) -> tuple[set[str], str, str, str, int]:
    keys = _tree(draw(st.sets(tree_key, max_size=25)))[1]
    pool = sorted(keys) or ["a"]
    prefix = draw(st.just("") | _cut(pool, 0))
    delimiter = draw(st.sampled_from(["/", "/", "", "-"]))
    start_after = draw(st.just("") | _cut(pool, 1))
    return keys, prefix, delimiter, start_after, draw(st.integers(1, 5))


@settings(max_examples=300, deadline=None)
@given(tree_case())
def test_paginate_over_skipping_walker(case: tuple[set[str], str, str, str, int]) -> None:
    """A walker that does not descend into rolled-up directories gives the same pages as a full walk."""
    keys, prefix, delimiter, start_after, max_keys = case
    root, _ = _tree(keys)
    expected = _reference(keys, prefix, delimiter, start_after)
    collected: list[tuple[str, str]] = []
    marker = start_after
    for _ in range(len(expected) + 2):
        kw = {"prefix": prefix, "delimiter": delimiter, "start_after": marker}
        page = paginate(_walk(root, "", skip=True, **kw), max_keys=max_keys, **kw)
        assert page == paginate(_walk(root, "", skip=False, **kw), max_keys=max_keys, **kw)
        collected += _page_entries(page)
        if not page.truncated:
            break
        assert page.next_marker is not None
        marker = page.next_marker
    assert collected == expected


def test_walk_order_name() -> None:
    assert walk_order_name(b"a", True) == b"a/"
    assert walk_order_name(b"a", False) == b"a"
    names = sorted([(b"a", True), (b"a-b", False), (b"a0", False)], key=lambda c: walk_order_name(*c))
    assert names == [(b"a-b", False), (b"a", True), (b"a0", False)]


# ----------------------------------------------------------------------------- max-keys and tokens


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 1000),
        ("", 1000),
        ("0", 0),
        ("1", 1),
        ("999", 999),
        ("1000", 1000),
        ("5000", 1000),
        ("0010", 10),
    ],
)
def test_parse_max_keys(value: str | None, expected: int) -> None:
    assert parse_max_keys(value) == expected


def test_parse_max_keys_custom_default_and_cap() -> None:
    assert parse_max_keys(None, default=50, cap=100) == 50
    assert parse_max_keys("500", default=50, cap=100) == 100


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", " 1", "1e3", "\u0661", "+5", "0x10"])
def test_parse_max_keys_refuses(value: str) -> None:
    with pytest.raises(S3Error) as exc:
        parse_max_keys(value)
    assert _code(exc) == ("InvalidArgument", 400)


@given(unicode_text.filter(bool))
def test_token_round_trip(key: str) -> None:
    token = encode_token(key)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert decode_token(token) == key
    assert decode_token(token + "=" * (-len(token) % 4)) == key


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "a",  # impossible length
        "QR",  # non-canonical: trailing bits set (decodes like "QQ")
        encode_token("a")[:-1] + "+",  # standard alphabet
        "_w",  # b"\xff", not UTF-8
        "QQ===",
        "QQ==x",
        "Q Q",
    ],
)
def test_bad_tokens(token: str) -> None:
    with pytest.raises(S3Error) as exc:
        decode_token(token)
    assert _code(exc) == ("InvalidArgument", 400)
    assert exc.value.message == "The continuation token provided is incorrect"


# ----------------------------------------------------------------------------- metadata


def test_user_metadata() -> None:
    headers = {
        "x-amz-meta-mtime": "1700000000",
        "X-Amz-Meta-Mode": "0644",
        "content-type": "text/plain",
        "x-amz-metadata-directive": "REPLACE",
    }
    assert user_metadata(headers) == {"x-amz-meta-mtime": "1700000000", "x-amz-meta-mode": "0644"}
    assert user_metadata({}) == {}


def test_user_metadata_size_limit() -> None:
    # Name without the prefix plus value: 1 + 2047 = 2048 bytes is allowed.
    assert user_metadata({"x-amz-meta-a": "v" * 2047})
    with pytest.raises(S3Error) as exc:
        user_metadata({"x-amz-meta-a": "v" * 2048})
    assert _code(exc) == ("MetadataTooLarge", 400)
    with pytest.raises(S3Error):
        user_metadata({f"x-amz-meta-k{i}": "\u00e9" * 60 for i in range(17)})  # UTF-8 bytes count


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, {}),
        (
            {"content-type": "text/plain", "cache-control": "no-cache", "x-amz-meta-a": "b", "host": "h"},
            {"content-type": "text/plain", "cache-control": "no-cache"},
        ),
        ({"content-encoding": "aws-chunked"}, {}),
        ({"content-encoding": "aws-chunked,gzip"}, {"content-encoding": "gzip"}),
        ({"content-encoding": "gzip, AWS-Chunked"}, {"content-encoding": "gzip"}),
        ({"content-encoding": "gzip"}, {"content-encoding": "gzip"}),
        (
            {
                "Content-Disposition": "attachment",
                "content-language": "fr",
                "expires": "Thu, 01 Jan 1970 00:00:00 GMT",
            },
            {
                "content-disposition": "attachment",
                "content-language": "fr",
                "expires": "Thu, 01 Jan 1970 00:00:00 GMT",
            },
        ),
    ],
)
def test_stored_headers(headers: dict[str, str], expected: dict[str, str]) -> None:
    assert stored_headers(headers) == expected
    assert set(stored_headers(headers)) <= set(s3names.STORED_HEADERS)


# ----------------------------------------------------------------------------- module shape


@pytest.mark.parametrize("first", ["dfs.core.s3names", "dfs.core.s3xml"])
def test_modules_import_in_either_order(first: str) -> None:
    # The two modules import each other; each must be importable on its own and first.
    code = (
        f"import {first}\nimport dfs.core.s3names, dfs.core.s3xml\n"
        "assert dfs.core.s3names.paginate and dfs.core.s3xml.ListPage\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pure_module_imports() -> None:
    code = (
        "import sys, dfs.core.s3names, dfs.core.s3xml\n"
        "bad = [m for m in ('trio', 'socket', 'pyfuse3') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
