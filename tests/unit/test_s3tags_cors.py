"""dfs.core.s3tags and dfs.core.s3cors, and their XML in dfs.core.s3xml: the pure parts of
tagging and CORS (validation, stored forms, rule matching)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.core import s3cors, s3tags, s3xml
from dfs.core.errors import S3Error
from dfs.core.s3cors import CorsRule

# Characters AWS allows in tags: letters, digits, spaces and a few punctuation marks.
_TAG_CHARS = st.characters(whitelist_categories=("L", "N", "Zs"), whitelist_characters="_.:/=+-@")
_keys = st.text(_TAG_CHARS, min_size=1, max_size=128).filter(lambda k: not k.lower().startswith("aws:"))
_values = st.text(_TAG_CHARS, max_size=256)
_tag_sets = st.dictionaries(_keys, _values, max_size=10).map(lambda d: sorted(d.items()))


# ----------------------------------------------------------------------------- tags


@given(_tag_sets)
def test_tags_encode_decode_round_trip(tags: list[tuple[str, str]]) -> None:
    s3tags.check(tags, max_tags=s3tags.MAX_OBJECT_TAGS)
    raw = s3tags.encode(tags)
    assert s3tags.decode(raw) == tags
    # The stored form is the header's form too, and canonical: order does not change it.
    assert s3tags.parse_header(raw.decode()) == tags
    assert s3tags.encode(list(reversed(tags))) == raw


@given(_tag_sets)
def test_tags_xml_round_trip(tags: list[tuple[str, str]]) -> None:
    assert s3xml.parse_tagging(s3xml.tagging(tags)) == tags


@pytest.mark.parametrize(
    ("tags", "max_tags", "expected"),
    [
        ([(f"k{i}", "") for i in range(11)], 10, "BadRequest"),
        ([("k" * 129, "v")], 10, "InvalidTag"),
        ([("", "v")], 10, "InvalidTag"),
        ([("k", "v" * 257)], 10, "InvalidTag"),
        ([("AWS:x", "v")], 10, "InvalidTag"),
        ([("k", "1"), ("k", "2")], 10, "InvalidTag"),
        ([("k", "semi;colon")], 10, "InvalidTag"),
        ([("k<", "v")], 10, "InvalidTag"),
    ],
)
def test_tag_check_refuses(tags: list[tuple[str, str]], max_tags: int, expected: str) -> None:
    with pytest.raises(S3Error) as err:
        s3tags.check(tags, max_tags=max_tags)
    assert err.value.s3_code == expected and err.value.status == 400


def test_bucket_tag_limit() -> None:
    fifty = [(f"k{i}", "v") for i in range(50)]
    s3tags.check(fifty, max_tags=s3tags.MAX_BUCKET_TAGS, bucket=True)
    with pytest.raises(S3Error) as err:
        s3tags.check([*fifty, ("one", "more")], max_tags=s3tags.MAX_BUCKET_TAGS, bucket=True)
    assert err.value.s3_code == "InvalidTag"


def test_header_parsing() -> None:
    assert s3tags.parse_header("a=1&b+c=d%20e&empty=&&") == [("a", "1"), ("b c", "d e"), ("empty", "")]
    assert s3tags.parse_header("") == []
    for bad in ["a=1&a=2", "k=%ff"]:
        with pytest.raises(S3Error) as err:
            s3tags.parse_header(bad)
        assert err.value.s3_code == "InvalidArgument"


@pytest.mark.parametrize(
    "body",
    [
        b"<Tagging/>",
        b"<Tagging><TagSet/><TagSet/></Tagging>",
        b"<Tagging><TagSet><Tag><Value>v</Value></Tag></TagSet></Tagging>",
        b"<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>",
        b"<Other><TagSet/></Other>",
        b"<Tagging><TagSet>",
    ],
)
def test_parse_tagging_malformed(body: bytes) -> None:
    with pytest.raises(S3Error) as err:
        s3xml.parse_tagging(body)
    assert err.value.s3_code == "MalformedXML"


# ----------------------------------------------------------------------------- CORS

_patterns = st.text(st.sampled_from("ab.*"), max_size=6).filter(lambda p: p.count("*") <= 1)
_texts = st.text(st.sampled_from("ab."), max_size=8)


@given(_patterns, _texts)
def test_wildcard_match_agrees_with_fnmatch(pattern: str, text: str) -> None:
    import fnmatch

    # With no "[" or "?" in the alphabet, fnmatch's "*" is the same single wildcard.
    assert s3cors.wildcard_match(pattern, text) == fnmatch.fnmatchcase(text, pattern)


def test_wildcard_match_cases() -> None:
    assert s3cors.wildcard_match("https://*.example.com", "https://a.b.example.com")
    assert not s3cors.wildcard_match("https://*.example.com", "https://example.com")
    assert s3cors.wildcard_match("*", "")
    assert s3cors.wildcard_match("X-Amz-*", "x-amz-date", fold=True)
    assert not s3cors.wildcard_match("X-Amz-*", "x-amz-date")
    # Head and tail must not overlap: "ab*ba" does not match "aba".
    assert not s3cors.wildcard_match("ab*ba", "aba")


RULES = [
    CorsRule(("PUT",), ("https://up.example",), ("content-type", "x-amz-*"), ("ETag",), 60, "up"),
    CorsRule(("GET", "HEAD"), ("https://*.example",)),
    CorsRule(("GET",), ("*",)),
]


def test_first_matching_rule_answers() -> None:
    assert s3cors.match_preflight(RULES, "https://up.example", "PUT", ["x-amz-date"]) is RULES[0]
    assert s3cors.match_preflight(RULES, "https://up.example", "PUT", ["authorization"]) is None
    assert s3cors.match_preflight(RULES, "https://up.example", "GET", []) is RULES[1]
    assert s3cors.match_preflight(RULES, "http://other", "GET", []) is RULES[2]
    assert s3cors.match_preflight(RULES, "http://other", "HEAD", []) is None
    assert s3cors.match_preflight(RULES, "http://other", "GET", ["x-custom"]) is None
    assert s3cors.match_request(RULES, "https://up.example", "PUT") is RULES[0]
    assert s3cors.match_request(RULES, "https://up.example", "DELETE") is None
    assert s3cors.request_headers(" X-Amz-Date ,Content-Type,, ") == ["x-amz-date", "content-type"]


def test_headers_of_a_match() -> None:
    got = dict(s3cors.preflight_headers(RULES[0], "https://up.example", ["x-amz-date"]))
    assert got == {
        "Access-Control-Allow-Origin": "https://up.example",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "PUT",
        "Access-Control-Allow-Headers": "x-amz-date",
        "Access-Control-Expose-Headers": "ETag",
        "Access-Control-Max-Age": "60",
        "Vary": s3cors.VARY,
    }
    got = dict(s3cors.response_headers(RULES[2], "http://other"))
    assert got["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in got


_rules = st.builds(
    CorsRule,
    st.lists(st.sampled_from(s3cors.METHODS), min_size=1, max_size=5, unique=True).map(tuple),
    st.lists(_patterns.filter(bool), min_size=1, max_size=3).map(tuple),
    st.lists(_patterns.filter(bool), max_size=3).map(tuple),
    st.lists(st.sampled_from(["ETag", "x-amz-request-id"]), max_size=2).map(tuple),
    st.none() | st.integers(0, 86400),
    st.none() | st.text(st.sampled_from("abc 1"), min_size=1, max_size=10).map(str.strip).filter(bool),
)


@given(st.lists(_rules, min_size=1, max_size=5))
def test_cors_stored_and_xml_round_trip(rules: list[CorsRule]) -> None:
    assert s3cors.decode(s3cors.encode(rules)) == rules
    assert s3xml.parse_cors(s3xml.cors(rules)) == rules


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<CORSConfiguration/>", "MalformedXML"),
        (
            b"<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod></CORSRule></CORSConfiguration>",
            "MalformedXML",
        ),
        (
            b"<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod><AllowedOrigin>*</AllowedOrigin>"
            b"<MaxAgeSeconds>-1</MaxAgeSeconds></CORSRule></CORSConfiguration>",
            "MalformedXML",
        ),
        (
            b"<CORSConfiguration><CORSRule><AllowedMethod>TRACE</AllowedMethod><AllowedOrigin>*</AllowedOrigin>"
            b"</CORSRule></CORSConfiguration>",
            "InvalidRequest",
        ),
        (
            b"<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod><AllowedOrigin>**</AllowedOrigin>"
            b"</CORSRule></CORSConfiguration>",
            "InvalidRequest",
        ),
        (b"<CORSConfiguration>" + b" " * (64 * 1024) + b"</CORSConfiguration>", "MalformedXML"),
    ],
)
def test_parse_cors_refuses(body: bytes, expected: str) -> None:
    with pytest.raises(S3Error) as err:
        s3xml.parse_cors(body)
    assert err.value.s3_code == expected


def test_decode_refuses_garbage() -> None:
    for raw in [b"not json", b"{}", b'[{"methods": ["GET"]}]', b"[1]"]:
        with pytest.raises(ValueError, match="CORS"):
            s3cors.decode(raw)
