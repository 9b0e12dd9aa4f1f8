"""dfs.core.s3xml: every rendered body parses back with the right namespace and values;
parsers refuse bad XML."""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core import s3xml
from dfs.core.errors import S3Error
from dfs.core.s3names import decode_token, encode_token
from dfs.core.s3xml import (
    CompletedPart,
    DeleteTarget,
    ListPage,
    ObjectEntry,
    PartInfo,
    UploadInfo,
    parse_complete_multipart,
    parse_create_bucket,
    parse_delete,
    parse_versioning,
)

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
N = "{" + NS + "}"
PROLOG = b'<?xml version="1.0" encoding="UTF-8"?>'
T0 = 1_735_689_600 * 1_000_000_000 + 123_456_789  # 2025-01-01T00:00:00.123Z
T0_ISO = "2025-01-01T00:00:00.123Z"
OWNER = ("owner-id", "owner & name")

# Text XML 1.0 can carry (so no C0 controls but tab/LF/CR, no U+FFFE/U+FFFF, no surrogates).
xml_text = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_characters=[chr(c) for c in range(32) if c not in (9, 10, 13)] + ["\ufffe", "\uffff"],
    )
)
# Anything a valid key may hold, including characters XML cannot carry.
any_key = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"), min_size=1)
SPECIAL_KEY = "a&b<c>d\"e'f +g%h\u00e9\u4e2d\r\n\t /z"


def _root(body: bytes, tag: str) -> ET.Element:
    assert body.startswith(PROLOG)
    root = ET.fromstring(body)
    assert root.tag == N + tag, root.tag
    return root


def _text(elem: ET.Element, path: str) -> str | None:
    found = elem.find(_q(path))
    return None if found is None else (found.text or "")


def _q(path: str) -> str:
    return "/".join(N + p for p in path.split("/"))


def _texts(elem: ET.Element, path: str) -> list[str]:
    return [e.text or "" for e in elem.findall(_q(path))]


def _entry(key: str, size: int = 3) -> ObjectEntry:
    return ObjectEntry(key, size, T0, "9e107d9d372bb6826bd81d3542a419d6")


# ----------------------------------------------------------------------------- error and stubs


def test_error_has_no_namespace() -> None:
    body = s3xml.error(
        "NoSuchKey", "The specified key does not exist.", resource="/b/k&<>", request_id="req-1"
    )
    assert body.startswith(PROLOG)
    root = ET.fromstring(body)
    assert root.tag == "Error"
    assert [(c.tag, c.text) for c in root] == [
        ("Code", "NoSuchKey"),
        ("Message", "The specified key does not exist."),
        ("Resource", "/b/k&<>"),
        ("RequestId", "req-1"),
    ]


def test_error_extra_elements() -> None:
    body = s3xml.error(
        "InvalidRange",
        "The requested range is not satisfiable",
        resource="/b/k",
        request_id="r",
        extra={"ActualObjectSize": "0", "RangeRequested": "bytes=0-"},
    )
    root = ET.fromstring(body)
    assert root.findtext("ActualObjectSize") == "0"
    assert root.findtext("RangeRequested") == "bytes=0-"
    with pytest.raises(ValueError, match="XML element name"):
        s3xml.error("X", "m", resource="r", request_id="i", extra={"bad name": "v"})


def test_list_buckets() -> None:
    body = s3xml.list_buckets([("alpha", T0), ("b-2", 0)], owner_id=OWNER[0], owner_name=OWNER[1])
    root = _root(body, "ListAllMyBucketsResult")
    assert _text(root, "Owner/ID") == "owner-id"
    assert _text(root, "Owner/DisplayName") == "owner & name"
    assert _texts(root, "Buckets/Bucket/Name") == ["alpha", "b-2"]
    assert _texts(root, "Buckets/Bucket/CreationDate") == [T0_ISO, "1970-01-01T00:00:00.000Z"]
    empty = _root(s3xml.list_buckets([], owner_id="i", owner_name="n"), "ListAllMyBucketsResult")
    assert empty.find(_q("Buckets")) is not None
    assert empty.findall(_q("Buckets/Bucket")) == []


def test_location() -> None:
    root = _root(s3xml.location("us-east-1"), "LocationConstraint")
    assert root.text is None and len(root) == 0
    assert _root(s3xml.location("eu-west-3"), "LocationConstraint").text == "eu-west-3"


def test_versioning_never_enabled() -> None:
    root = _root(s3xml.versioning(), "VersioningConfiguration")
    assert len(root) == 0


def test_acl() -> None:
    root = _root(s3xml.acl("id1", "me"), "AccessControlPolicy")
    assert _text(root, "Owner/ID") == "id1"
    grants = root.findall(_q("AccessControlList/Grant"))
    assert len(grants) == 1
    grantee = grants[0].find(_q("Grantee"))
    assert grantee is not None
    assert grantee.get("{http://www.w3.org/2001/XMLSchema-instance}type") == "CanonicalUser"
    assert _text(grantee, "ID") == "id1"
    assert _text(grantee, "DisplayName") == "me"
    assert _text(grants[0], "Permission") == "FULL_CONTROL"


def test_tagging() -> None:
    root = _root(s3xml.tagging(), "Tagging")
    tagset = root.find(_q("TagSet"))
    assert tagset is not None and len(tagset) == 0


# ----------------------------------------------------------------------------- listings


def _v1(page: ListPage, **kw: object) -> ET.Element:
    args: dict[str, object] = {
        "bucket": "bkt",
        "prefix": "",
        "marker": "",
        "delimiter": "",
        "max_keys": 1000,
        "encoding_url": False,
        "owner": None,
    }
    args.update(kw)
    return _root(s3xml.list_objects_v1(page, **args), "ListBucketResult")  # type: ignore[arg-type]


def _v2(page: ListPage, **kw: object) -> ET.Element:
    args: dict[str, object] = {
        "bucket": "bkt",
        "prefix": "",
        "delimiter": "",
        "max_keys": 1000,
        "encoding_url": False,
    }
    args.update(kw)
    return _root(s3xml.list_objects_v2(page, **args), "ListBucketResult")  # type: ignore[arg-type]


def test_list_v1_fields() -> None:
    page = ListPage([_entry("a/b", 7)], ["c/"], False, None)
    root = _v1(page, prefix="", marker="", delimiter="/", max_keys=2, owner=OWNER)
    assert _text(root, "Name") == "bkt"
    assert _text(root, "Prefix") == ""
    assert _text(root, "Marker") == ""
    assert _text(root, "MaxKeys") == "2"
    assert _text(root, "Delimiter") == "/"
    assert _text(root, "IsTruncated") == "false"
    assert root.find(_q("NextMarker")) is None
    assert root.find(_q("EncodingType")) is None
    (contents,) = root.findall(_q("Contents"))
    assert _text(contents, "Key") == "a/b"
    assert _text(contents, "LastModified") == T0_ISO
    assert _text(contents, "ETag") == '"9e107d9d372bb6826bd81d3542a419d6"'
    assert _text(contents, "Size") == "7"
    assert _text(contents, "StorageClass") == "STANDARD"
    assert _text(contents, "Owner/ID") == "owner-id"
    assert _text(contents, "Owner/DisplayName") == "owner & name"
    assert _texts(root, "CommonPrefixes/Prefix") == ["c/"]


def test_list_v1_optional_fields() -> None:
    root = _v1(ListPage([_entry("k")], [], False, None), delimiter=None, prefix=None, marker=None)
    assert root.find(_q("Delimiter")) is None
    assert _text(root, "Prefix") == ""
    assert _text(root, "Marker") == ""
    assert root.find(_q("Contents/Owner")) is None


def test_list_v1_next_marker_whenever_truncated() -> None:
    # Without a delimiter too (AWS omits it there; s3cmd and minio-go then lose common prefixes).
    root = _v1(ListPage([_entry("a")], ["b/"], True, "b/"))
    assert _text(root, "IsTruncated") == "true"
    assert _text(root, "NextMarker") == "b/"
    # A page built by hand without next_marker still gets one: its last entry.
    root = _v1(ListPage([_entry("c")], ["b/"], True, None))
    assert _text(root, "NextMarker") == "c"
    root = _v1(ListPage([_entry("a")], ["b/"], True, None))
    assert _text(root, "NextMarker") == "b/"


def test_list_v1_url_encoding() -> None:
    key = "a b+c/\u00e9\x01"
    page = ListPage([_entry(key)], ["p q+/"], True, "p q+/")
    root = _v1(page, prefix="a +", marker="m +", delimiter="+", encoding_url=True)
    assert _text(root, "EncodingType") == "url"
    assert _text(root, "Prefix") == "a%20%2B"
    assert _text(root, "Marker") == "m%20%2B"
    assert _text(root, "Delimiter") == "%2B"
    assert _text(root, "NextMarker") == "p%20q%2B/"
    assert _text(root, "Contents/Key") == "a%20b%2Bc/%C3%A9%01"
    assert _texts(root, "CommonPrefixes/Prefix") == ["p%20q%2B/"]
    # Not encoded, not echoed.
    root = _v1(ListPage([_entry("a b+c")], [], False, None), encoding_url=False)
    assert root.find(_q("EncodingType")) is None
    assert _text(root, "Contents/Key") == "a b+c"


def test_list_v2_fields() -> None:
    page = ListPage([_entry("k1"), _entry("k2")], ["d/"], False, None)
    root = _v2(
        page, prefix="", delimiter="/", max_keys=3, owner=OWNER, start_after="a", continuation_token="tok"
    )
    assert _text(root, "Name") == "bkt"
    assert _text(root, "KeyCount") == "3"
    assert _text(root, "MaxKeys") == "3"
    assert _text(root, "Delimiter") == "/"
    assert _text(root, "IsTruncated") == "false"
    assert _text(root, "ContinuationToken") == "tok"
    assert root.find(_q("NextContinuationToken")) is None
    assert _text(root, "StartAfter") == "a"
    assert _texts(root, "Contents/Key") == ["k1", "k2"]
    assert _texts(root, "Contents/Owner/ID") == ["owner-id", "owner-id"]
    assert _texts(root, "CommonPrefixes/Prefix") == ["d/"]
    root = _v2(ListPage([], [], False, None))
    assert _text(root, "KeyCount") == "0"
    for absent in ("ContinuationToken", "StartAfter", "Delimiter", "EncodingType", "Contents/Owner"):
        assert root.find(_q(absent)) is None


def test_list_v2_truncated_always_has_next_token() -> None:
    root = _v2(ListPage([_entry("k1")], [], True, "k1"), next_token="given")
    assert _text(root, "NextContinuationToken") == "given"
    root = _v2(ListPage([_entry("k +1")], [], True, "k +1"), encoding_url=True)
    token = _text(root, "NextContinuationToken")
    assert token == encode_token("k +1")  # tokens are opaque: never URL-encoded
    assert decode_token(token) == "k +1"


def test_list_v2_url_encoding() -> None:
    root = _v2(ListPage([_entry("a+b")], [], False, None), prefix="a+", start_after="a +", encoding_url=True)
    assert _text(root, "EncodingType") == "url"
    assert _text(root, "Prefix") == "a%2B"
    assert _text(root, "StartAfter") == "a%20%2B"
    assert _text(root, "Contents/Key") == "a%2Bb"


@settings(max_examples=200, deadline=None)
@given(st.lists(xml_text.filter(bool), max_size=5), st.lists(xml_text.filter(bool), max_size=3), xml_text)
def test_list_values_survive_xml(keys: list[str], prefixes: list[str], prefix: str) -> None:
    page = ListPage([_entry(k) for k in keys], prefixes, bool(keys), keys[-1] if keys else None)
    for root in (_v1(page, prefix=prefix, marker=prefix, delimiter=prefix), _v2(page, prefix=prefix)):
        assert _texts(root, "Contents/Key") == keys
        assert _texts(root, "CommonPrefixes/Prefix") == prefixes
        assert _text(root, "Prefix") == prefix


@settings(max_examples=200, deadline=None)
@given(st.lists(any_key, max_size=5), any_key)
def test_url_encoded_listing_decodes_with_unquote_plus(keys: list[str], prefix: str) -> None:
    # botocore's _decode_list_object: unquote_plus on every encoded field.
    page = ListPage([_entry(k) for k in keys], [prefix], True, prefix)
    for root in (_v1(page, prefix=prefix, marker=prefix, encoding_url=True), _v2(page, encoding_url=True)):
        assert [urllib.parse.unquote_plus(k) for k in _texts(root, "Contents/Key")] == keys
        assert [urllib.parse.unquote_plus(p) for p in _texts(root, "CommonPrefixes/Prefix")] == [prefix]
    root = _v1(page, prefix=prefix, marker=prefix, encoding_url=True)
    for field in ("Prefix", "Marker", "NextMarker"):
        value = _text(root, field)
        assert value is not None and urllib.parse.unquote_plus(value) == prefix


def test_special_characters_escaped() -> None:
    page = ListPage([_entry(SPECIAL_KEY)], [], False, None)
    body = s3xml.list_objects_v1(
        page, bucket="b", prefix="", marker="", delimiter="", max_keys=1, encoding_url=False, owner=None
    )
    assert b"&amp;" in body and b"&lt;" in body and b"&quot;" in body and b"&#13;" in body
    # The carriage return survives the parser's newline normalisation.
    assert _text(_root(body, "ListBucketResult"), "Contents/Key") == SPECIAL_KEY


def test_control_characters_written_as_is_without_encoding() -> None:
    # Documented: only encoding-type=url can carry them; the raw key is never silently changed.
    page = ListPage([_entry("a\x01b")], [], False, None)
    body = s3xml.list_objects_v1(
        page, bucket="b", prefix="", marker="", delimiter="", max_keys=1, encoding_url=False, owner=None
    )
    assert b"<Key>a\x01b</Key>" in body


def test_etag_quoted_once() -> None:
    root = _v1(ListPage([ObjectEntry("k", 1, T0, '"abc-2"')], [], False, None))
    assert _text(root, "Contents/ETag") == '"abc-2"'


# ----------------------------------------------------------------------------- object versions


def _versions(page: ListPage, **kw: object) -> ET.Element:
    args: dict[str, object] = {
        "bucket": "bkt",
        "prefix": "",
        "key_marker": "",
        "version_id_marker": "",
        "delimiter": "",
        "max_keys": 1000,
        "encoding_url": False,
        "owner": OWNER,
    }
    args.update(kw)
    body = s3xml.list_object_versions(page, **args)  # type: ignore[arg-type]
    return _root(body, "ListVersionsResult")


def _tags(elem: ET.Element) -> list[str]:
    return [child.tag.removeprefix(N) for child in elem]


def test_list_versions_every_object_is_its_null_version() -> None:
    page = ListPage([_entry("a/b", 7), _entry("c")], ["d/"], False, None)
    root = _versions(page, prefix="", delimiter="/", max_keys=5)
    # AWS's element order; no Next markers on a complete page, no DeleteMarker without versioning.
    assert _tags(root) == [
        "Name",
        "Prefix",
        "KeyMarker",
        "VersionIdMarker",
        "MaxKeys",
        "Delimiter",
        "IsTruncated",
        "Version",
        "Version",
        "CommonPrefixes",
    ]
    assert _text(root, "Name") == "bkt"
    assert _text(root, "Prefix") == ""
    assert _text(root, "KeyMarker") == ""
    assert _text(root, "VersionIdMarker") == ""
    assert _text(root, "MaxKeys") == "5"
    assert _text(root, "Delimiter") == "/"
    assert _text(root, "IsTruncated") == "false"
    first = root.findall(_q("Version"))[0]
    assert _tags(first) == [
        "Key",
        "VersionId",
        "IsLatest",
        "LastModified",
        "ETag",
        "Size",
        "Owner",
        "StorageClass",
    ]
    assert _text(first, "Key") == "a/b"
    assert _text(first, "VersionId") == "null"
    assert _text(first, "IsLatest") == "true"
    assert _text(first, "LastModified") == T0_ISO
    assert _text(first, "ETag") == '"9e107d9d372bb6826bd81d3542a419d6"'
    assert _text(first, "Size") == "7"
    assert _text(first, "Owner/ID") == "owner-id"
    assert _text(first, "Owner/DisplayName") == "owner & name"
    assert _text(first, "StorageClass") == "STANDARD"
    assert _texts(root, "Version/Key") == ["a/b", "c"]
    assert _texts(root, "Version/VersionId") == ["null", "null"]
    assert _texts(root, "CommonPrefixes/Prefix") == ["d/"]
    assert root.find(_q("DeleteMarker")) is None


def test_list_versions_optional_fields() -> None:
    root = _versions(
        ListPage([], [], False, None), prefix=None, key_marker=None, version_id_marker=None, delimiter=None
    )
    assert _tags(root) == ["Name", "Prefix", "KeyMarker", "VersionIdMarker", "MaxKeys", "IsTruncated"]
    assert _text(root, "Prefix") == "" and _text(root, "KeyMarker") == ""
    root = _versions(ListPage([_entry("k")], [], False, None), owner=None)
    assert root.find(_q("Version/Owner")) is None


def test_list_versions_truncated_after_a_key() -> None:
    root = _versions(
        ListPage([_entry("a"), _entry("b")], [], True, "b"), key_marker="0", version_id_marker="null"
    )
    assert _tags(root)[:7] == [
        "Name",
        "Prefix",
        "KeyMarker",
        "VersionIdMarker",
        "NextKeyMarker",
        "NextVersionIdMarker",
        "MaxKeys",
    ]
    assert _text(root, "KeyMarker") == "0"
    assert _text(root, "VersionIdMarker") == "null"
    assert _text(root, "IsTruncated") == "true"
    assert _text(root, "NextKeyMarker") == "b"
    assert _text(root, "NextVersionIdMarker") == "null"
    # A page built by hand without next_marker resumes after its last entry.
    root = _versions(ListPage([_entry("c")], ["b/"], True, None), delimiter="/")
    assert _text(root, "NextKeyMarker") == "c"
    assert _text(root, "NextVersionIdMarker") == "null"


def test_list_versions_truncated_after_a_common_prefix() -> None:
    # A common prefix has no version: resume with the key marker alone.
    root = _versions(ListPage([_entry("a")], ["b/"], True, "b/"), delimiter="/")
    assert _text(root, "NextKeyMarker") == "b/"
    assert root.find(_q("NextVersionIdMarker")) is None


def test_list_versions_url_encoding() -> None:
    key = "a b+c/\u00e9\x01"
    page = ListPage([_entry(key)], ["p q+/"], True, "p q+/")
    root = _versions(
        page, prefix="a +", key_marker="m +", version_id_marker="null", delimiter="+", encoding_url=True
    )
    assert _tags(root)[-3:] == ["EncodingType", "Version", "CommonPrefixes"]
    assert _text(root, "EncodingType") == "url"
    assert _text(root, "Prefix") == "a%20%2B"
    assert _text(root, "KeyMarker") == "m%20%2B"
    assert _text(root, "VersionIdMarker") == "null"
    assert _text(root, "Delimiter") == "%2B"
    assert _text(root, "NextKeyMarker") == "p%20q%2B/"
    assert _text(root, "Version/Key") == "a%20b%2Bc/%C3%A9%01"
    assert _texts(root, "CommonPrefixes/Prefix") == ["p%20q%2B/"]
    root = _versions(ListPage([_entry("a b+c")], [], False, None))
    assert root.find(_q("EncodingType")) is None
    assert _text(root, "Version/Key") == "a b+c"


def test_list_versions_escapes_special_characters() -> None:
    body = s3xml.list_object_versions(
        ListPage([_entry(SPECIAL_KEY)], [], False, None),
        bucket="b",
        prefix="",
        key_marker="",
        version_id_marker="",
        delimiter="",
        max_keys=1,
        encoding_url=False,
        owner=None,
    )
    assert b"&amp;" in body and b"&lt;" in body and b"&#13;" in body
    assert _text(_root(body, "ListVersionsResult"), "Version/Key") == SPECIAL_KEY


@settings(max_examples=200, deadline=None)
@given(st.lists(any_key, max_size=5), any_key)
def test_url_encoded_versions_decode_with_unquote_plus(keys: list[str], prefix: str) -> None:
    # botocore's decode_list_object_versions: unquote_plus on keys, prefixes and key markers.
    root = _versions(
        ListPage([_entry(k) for k in keys], [prefix], True, prefix),
        prefix=prefix,
        key_marker=prefix,
        encoding_url=True,
    )
    assert [urllib.parse.unquote_plus(k) for k in _texts(root, "Version/Key")] == keys
    assert [urllib.parse.unquote_plus(p) for p in _texts(root, "CommonPrefixes/Prefix")] == [prefix]
    for field in ("Prefix", "KeyMarker", "NextKeyMarker"):
        value = _text(root, field)
        assert value is not None and urllib.parse.unquote_plus(value) == prefix


# ----------------------------------------------------------------------------- multipart, copy, delete


def test_initiate_multipart() -> None:
    root = _root(s3xml.initiate_multipart("b", SPECIAL_KEY, "up-1"), "InitiateMultipartUploadResult")
    assert (_text(root, "Bucket"), _text(root, "Key"), _text(root, "UploadId")) == ("b", SPECIAL_KEY, "up-1")


def test_complete_multipart() -> None:
    root = _root(s3xml.complete_multipart("http://h/b/k", "b", "k", "abc-3"), "CompleteMultipartUploadResult")
    assert _text(root, "Location") == "http://h/b/k"
    assert _text(root, "Bucket") == "b"
    assert _text(root, "Key") == "k"
    assert _text(root, "ETag") == '"abc-3"'
    assert not [c for c in root if c.tag.startswith(N + "Checksum")]
    body = s3xml.complete_multipart("l", "b", "k", "e", checksum=("crc32", "AAAAAA==-3"))
    assert _text(_root(body, "CompleteMultipartUploadResult"), "ChecksumCRC32") == "AAAAAA==-3"
    with pytest.raises(ValueError, match="checksum"):
        s3xml.complete_multipart("l", "b", "k", "e", checksum=("md5", "x"))


@pytest.mark.parametrize(
    ("fn", "tag"),
    [(s3xml.copy_object_result, "CopyObjectResult"), (s3xml.copy_part_result, "CopyPartResult")],
)
def test_copy_results(fn: object, tag: str) -> None:
    root = _root(fn("abc", T0), tag)  # type: ignore[operator]
    assert _text(root, "ETag") == '"abc"'
    assert _text(root, "LastModified") == T0_ISO


def test_list_parts() -> None:
    parts = [PartInfo(1, "e1", 5 << 20, T0), PartInfo(2, "e2", 10, 0)]
    body = s3xml.list_parts(
        "b", "k", "u", parts, part_number_marker=0, next_marker=None, max_parts=2, truncated=True, owner=OWNER
    )
    root = _root(body, "ListPartsResult")
    assert (_text(root, "Bucket"), _text(root, "Key"), _text(root, "UploadId")) == ("b", "k", "u")
    assert _text(root, "Initiator/ID") == "owner-id"
    assert _text(root, "Owner/ID") == "owner-id"
    assert _text(root, "PartNumberMarker") == "0"
    assert _text(root, "NextPartNumberMarker") == "2"
    assert _text(root, "MaxParts") == "2"
    assert _text(root, "IsTruncated") == "true"
    assert _texts(root, "Part/PartNumber") == ["1", "2"]
    assert _texts(root, "Part/ETag") == ['"e1"', '"e2"']
    assert _texts(root, "Part/Size") == [str(5 << 20), "10"]
    assert _texts(root, "Part/LastModified") == [T0_ISO, "1970-01-01T00:00:00.000Z"]
    body = s3xml.list_parts(
        "b", "k", "u", [], part_number_marker=3, next_marker=None, max_parts=9, truncated=False, owner=None
    )
    root = _root(body, "ListPartsResult")
    assert root.find(_q("NextPartNumberMarker")) is None
    assert root.find(_q("Owner")) is None


def test_list_uploads() -> None:
    body = s3xml.list_uploads(
        "b",
        [UploadInfo("a +b", "u1", T0)],
        prefix="a +",
        delimiter="/",
        key_marker="k +",
        upload_id_marker="u0",
        next_key_marker="a +b",
        next_upload_id_marker="u1",
        max_uploads=1,
        truncated=True,
        common_prefixes=["a +/"],
        encoding_url=True,
        owner=OWNER,
    )
    root = _root(body, "ListMultipartUploadsResult")
    assert _text(root, "Bucket") == "b"
    assert _text(root, "Prefix") == "a%20%2B"
    assert _text(root, "Delimiter") == "/"
    assert _text(root, "KeyMarker") == "k%20%2B"
    assert _text(root, "UploadIdMarker") == "u0"
    assert _text(root, "NextKeyMarker") == "a%20%2Bb"
    assert _text(root, "NextUploadIdMarker") == "u1"
    assert _text(root, "MaxUploads") == "1"
    assert _text(root, "IsTruncated") == "true"
    assert _text(root, "EncodingType") == "url"
    assert _texts(root, "Upload/Key") == ["a%20%2Bb"]
    assert _texts(root, "Upload/UploadId") == ["u1"]
    assert _texts(root, "Upload/Initiated") == [T0_ISO]
    assert _texts(root, "Upload/Owner/ID") == ["owner-id"]
    assert _texts(root, "CommonPrefixes/Prefix") == ["a%20%2B/"]

    body = s3xml.list_uploads(
        "b",
        [UploadInfo("a +b", "u1", T0)],
        prefix=None,
        delimiter=None,
        key_marker=None,
        upload_id_marker=None,
        next_key_marker=None,
        next_upload_id_marker=None,
        max_uploads=1000,
        truncated=False,
        common_prefixes=[],
        encoding_url=False,
        owner=None,
    )
    root = _root(body, "ListMultipartUploadsResult")
    assert _texts(root, "Upload/Key") == ["a +b"]
    for absent in ("EncodingType", "Delimiter", "NextKeyMarker", "NextUploadIdMarker", "Upload/Owner"):
        assert root.find(_q(absent)) is None


def test_delete_result() -> None:
    root = _root(
        s3xml.delete_result(
            [DeleteTarget("a"), DeleteTarget(SPECIAL_KEY)],
            [(DeleteTarget("c d"), "AccessDenied", "Access Denied")],
        ),
        "DeleteResult",
    )
    assert _texts(root, "Deleted/Key") == ["a", SPECIAL_KEY]
    assert root.find(_q("Deleted/VersionId")) is None
    assert _texts(root, "Error/Key") == ["c d"]
    assert _texts(root, "Error/Code") == ["AccessDenied"]
    assert _texts(root, "Error/Message") == ["Access Denied"]
    assert root.find(_q("Error/VersionId")) is None
    root = _root(
        s3xml.delete_result([DeleteTarget("a +")], [(DeleteTarget("b +"), "X", "m")], encoding_url=True),
        "DeleteResult",
    )
    assert _texts(root, "Deleted/Key") == ["a%20%2B"]
    assert _texts(root, "Error/Key") == ["b%20%2B"]
    root = _root(s3xml.delete_result([], []), "DeleteResult")
    assert len(root) == 0


def test_delete_result_echoes_version_ids() -> None:
    # AWS echoes the VersionId the client named, right after the Key.
    root = _root(
        s3xml.delete_result(
            [DeleteTarget("a", "null"), DeleteTarget("b")],
            [(DeleteTarget("c", "bad"), "InvalidArgument", "Invalid version id specified")],
        ),
        "DeleteResult",
    )
    deleted = root.findall(_q("Deleted"))
    assert [[child.tag for child in d] for d in deleted] == [[N + "Key", N + "VersionId"], [N + "Key"]]
    assert _texts(root, "Deleted/VersionId") == ["null"]
    (error,) = root.findall(_q("Error"))
    assert [child.tag.removeprefix(N) for child in error] == ["Key", "VersionId", "Code", "Message"]
    assert _text(error, "VersionId") == "bad"


# ----------------------------------------------------------------------------- parsers

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Delete><Object><Key>&lol3;</Key></Object></Delete>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Delete><Object><Key>&xxe;</Key></Object></Delete>"""
DTD_ONLY = b"""<?xml version="1.0"?>
<!DOCTYPE Delete SYSTEM "http://example.invalid/s3.dtd">
<Delete><Object><Key>k</Key></Object></Delete>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY % p SYSTEM "http://example.invalid/x.dtd"> %p;]>
<Delete><Object><Key>k</Key></Object></Delete>"""


def _malformed(fn: object, body: bytes) -> None:
    with pytest.raises(S3Error) as exc:
        fn(body)  # type: ignore[operator]
    assert (exc.value.s3_code, exc.value.status) == ("MalformedXML", 400)


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, DTD_ONLY, PARAMETER_ENTITY])
@pytest.mark.parametrize("fn", [parse_delete, parse_complete_multipart, parse_create_bucket])
def test_parsers_refuse_dtds_and_entities(fn: object, body: bytes) -> None:
    for root_name in ("Delete", "CompleteMultipartUpload", "CreateBucketConfiguration"):
        _malformed(fn, body.replace(b"Delete", root_name.encode()))


@pytest.mark.parametrize(
    "body",
    [b"not xml", b"<Delete>", b"<Delete></Delet>", b"\xff\xfe<", b"<?xml version='1.0'?>", b"<a/><b/>"],
)
@pytest.mark.parametrize("fn", [parse_delete, parse_complete_multipart, parse_create_bucket])
def test_parsers_refuse_broken_xml(fn: object, body: bytes) -> None:
    _malformed(fn, body)


def test_parsers_refuse_huge_bodies() -> None:
    objects = b"<Object><Key>k</Key></Object>" * 10
    padding = b" " * (2 * 1024 * 1024)
    _malformed(parse_delete, b"<Delete>" + objects + padding + b"</Delete>")
    _malformed(
        parse_create_bucket, b"<CreateBucketConfiguration>" + padding + b"</CreateBucketConfiguration>"
    )


def _complete(parts: str, ns: bool = True) -> bytes:
    xmlns = f' xmlns="{NS}"' if ns else ""
    return f"{PROLOG.decode()}<CompleteMultipartUpload{xmlns}>{parts}</CompleteMultipartUpload>".encode()


@pytest.mark.parametrize("ns", [True, False])
def test_parse_complete_multipart(ns: bool) -> None:
    body = _complete(
        '<Part><PartNumber>1</PartNumber><ETag>"aaa"</ETag></Part>'
        "<Part><ETag>&quot;bbb-2&quot;</ETag><PartNumber> 2 </PartNumber>"
        "<ChecksumCRC32>AAAAAA==</ChecksumCRC32><ChecksumSHA256>x/y=</ChecksumSHA256></Part>"
        "<Part><PartNumber>10000</PartNumber><ETag>ccc</ETag><Unknown>ignored</Unknown></Part>",
        ns,
    )
    assert parse_complete_multipart(body) == [
        CompletedPart(1, "aaa", {}),
        CompletedPart(2, "bbb-2", {"CRC32": "AAAAAA==", "SHA256": "x/y="}),
        CompletedPart(10000, "ccc", {}),
    ]


def test_parse_complete_multipart_keeps_document_order() -> None:
    body = _complete(
        "<Part><PartNumber>3</PartNumber><ETag>c</ETag></Part><Part><PartNumber>1</PartNumber><ETag>a</ETag></Part>"
    )
    assert [p.number for p in parse_complete_multipart(body)] == [3, 1]


@pytest.mark.parametrize(
    "parts",
    [
        "",
        "<Part><ETag>a</ETag></Part>",
        "<Part><PartNumber>1</PartNumber></Part>",
        "<Part><PartNumber>one</PartNumber><ETag>a</ETag></Part>",
        "<Part><PartNumber>1.0</PartNumber><ETag>a</ETag></Part>",
        "<Part><PartNumber>-1</PartNumber><ETag>a</ETag></Part>",
        "<Part><PartNumber></PartNumber><ETag>a</ETag></Part>",
        "<Part><PartNumber>\u0661</PartNumber><ETag>a</ETag></Part>",
        "<Part><PartNumber>1</PartNumber><PartNumber>2</PartNumber><ETag>a</ETag></Part>",
        "<Part><PartNumber>1</PartNumber><ETag>a</ETag><ETag>b</ETag></Part>",
        "<Part><PartNumber><x/>1</PartNumber><ETag>a</ETag></Part>",
    ],
)
def test_parse_complete_multipart_malformed(parts: str) -> None:
    _malformed(parse_complete_multipart, _complete(parts))


@pytest.mark.parametrize("number", ["0", "10001", "99999999999999999999"])
def test_parse_complete_multipart_part_number_range(number: str) -> None:
    with pytest.raises(S3Error) as exc:
        parse_complete_multipart(_complete(f"<Part><PartNumber>{number}</PartNumber><ETag>a</ETag></Part>"))
    assert (exc.value.s3_code, exc.value.status) == ("InvalidArgument", 400)


def test_parse_complete_multipart_wrong_root() -> None:
    _malformed(
        parse_complete_multipart, b"<Delete><Part><PartNumber>1</PartNumber><ETag>a</ETag></Part></Delete>"
    )


def _delete(inner: str, ns: bool = False) -> bytes:
    xmlns = f' xmlns="{NS}"' if ns else ""
    return f"<Delete{xmlns}>{inner}</Delete>".encode()


@pytest.mark.parametrize("ns", [True, False])
def test_parse_delete(ns: bool) -> None:
    body = _delete(
        "<Object><Key>a</Key></Object>"
        "<Object><Key> spaced key </Key><VersionId>v1</VersionId></Object>"
        "<Object><Key>&amp;&lt;&#13;\u00e9</Key></Object>",
        ns,
    )
    assert parse_delete(body) == (
        False,
        [DeleteTarget("a"), DeleteTarget(" spaced key ", "v1"), DeleteTarget("&<\r\u00e9")],
    )


@pytest.mark.parametrize(
    ("quiet", "expected"), [("true", True), ("True", True), (" false ", False), ("FALSE", False)]
)
def test_parse_delete_quiet(quiet: str, expected: bool) -> None:
    assert parse_delete(_delete(f"<Quiet>{quiet}</Quiet><Object><Key>k</Key></Object>")) == (
        expected,
        [DeleteTarget("k")],
    )


def test_parse_delete_limits() -> None:
    one = "<Object><Key>k</Key></Object>"
    assert len(parse_delete(_delete(one * 1000))[1]) == 1000
    _malformed(parse_delete, _delete(one * 1001))
    _malformed(parse_delete, _delete(""))
    _malformed(parse_delete, _delete("<Quiet>true</Quiet>"))


@pytest.mark.parametrize(
    "inner",
    [
        "<Object></Object>",
        "<Object><Key>a</Key><Key>b</Key></Object>",
        "<Quiet>yes</Quiet><Object><Key>k</Key></Object>",
        "<Quiet>true</Quiet><Quiet>true</Quiet><Object><Key>k</Key></Object>",
        "<Object><Key>k</Key><VersionId>a</VersionId><VersionId>b</VersionId></Object>",
        "<Object><Key>k</Key><VersionId><x/></VersionId></Object>",
    ],
)
def test_parse_delete_malformed(inner: str) -> None:
    _malformed(parse_delete, _delete(inner))


def test_parse_delete_empty_key_is_returned() -> None:
    # An empty key is the caller's to refuse per key (key_to_names), not a malformed body.
    assert parse_delete(_delete("<Object><Key></Key></Object>")) == (False, [DeleteTarget("")])


def test_parse_delete_version_ids() -> None:
    # Returned as sent (minus surrounding blanks); judging them is the caller's job, per object.
    body = _delete(
        "<Object><Key>a</Key><VersionId>null</VersionId></Object>"
        "<Object><VersionId> xyz </VersionId><Key>b</Key></Object>"
        "<Object><Key>c</Key><VersionId></VersionId></Object>"
        "<Object><Key>d</Key></Object>",
        ns=True,
    )
    assert parse_delete(body) == (
        False,
        [DeleteTarget("a", "null"), DeleteTarget("b", "xyz"), DeleteTarget("c", ""), DeleteTarget("d")],
    )


def _vc(inner: str, ns: bool = True) -> bytes:
    xmlns = f' xmlns="{NS}"' if ns else ""
    return f"<VersioningConfiguration{xmlns}>{inner}</VersioningConfiguration>".encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_vc("<Status>Enabled</Status>"), ("Enabled", None)),
        (_vc("<Status> Suspended </Status>", ns=False), ("Suspended", None)),
        (_vc("<MfaDelete>Disabled</MfaDelete><Status>Suspended</Status>"), ("Suspended", "Disabled")),
        (_vc("<MfaDelete>Enabled</MfaDelete>"), (None, "Enabled")),
        (_vc(""), (None, None)),
    ],
)
def test_parse_versioning(body: bytes, expected: tuple[str | None, str | None]) -> None:
    assert parse_versioning(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        _vc("<Status>enabled</Status>"),
        _vc("<Status>Disabled</Status>"),
        _vc("<MfaDelete>On</MfaDelete>"),
        _vc("<Status>Enabled</Status><Status>Enabled</Status>"),
        _delete("<Object><Key>k</Key></Object>"),
    ],
)
def test_parse_versioning_malformed(body: bytes) -> None:
    _malformed(parse_versioning, body)


def _cbc(inner: str, ns: bool = False) -> bytes:
    xmlns = f' xmlns="{NS}"' if ns else ""
    return f"<CreateBucketConfiguration{xmlns}>{inner}</CreateBucketConfiguration>".encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", None),
        (b"  \r\n", None),
        (b"<CreateBucketConfiguration/>", None),
        (_cbc("<LocationConstraint>eu-west-1</LocationConstraint>", ns=True), "eu-west-1"),
        (_cbc("<LocationConstraint> us-west-2 </LocationConstraint>"), "us-west-2"),
        (_cbc("<LocationConstraint></LocationConstraint>"), None),
        (PROLOG + _cbc("<Bucket/><LocationConstraint>r</LocationConstraint>"), "r"),
    ],
)
def test_parse_create_bucket(body: bytes, expected: str | None) -> None:
    assert parse_create_bucket(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"<Delete/>",
        _cbc("<LocationConstraint>a</LocationConstraint><LocationConstraint>b</LocationConstraint>"),
    ],
)
def test_parse_create_bucket_malformed(body: bytes) -> None:
    _malformed(parse_create_bucket, body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parsers_fuzz_only_raise_s3error(body: bytes) -> None:
    # Like h11's fuzz contract: any input is accepted or refused with a 400, nothing else.
    statuses = []
    for fn in (parse_delete, parse_complete_multipart, parse_create_bucket, parse_versioning):
        try:
            fn(body)
        except S3Error as exc:
            statuses.append((exc.s3_code, exc.status))
    assert set(statuses) <= {("MalformedXML", 400)}


@settings(max_examples=100, deadline=None)
@given(st.lists(xml_text, min_size=1, max_size=20), st.booleans())
def test_delete_keys_round_trip(keys: list[str], quiet: bool) -> None:
    # A client body built with an XML library round-trips, whatever the key.
    root = ET.Element("Delete", xmlns=NS)
    ET.SubElement(root, "Quiet").text = "true" if quiet else "false"
    for key in keys:
        ET.SubElement(ET.SubElement(root, "Object"), "Key").text = key
    body = ET.tostring(root, encoding="utf-8").replace(b"\r", b"&#13;")
    assert parse_delete(body) == (quiet, [DeleteTarget(k) for k in keys])
