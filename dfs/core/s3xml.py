"""S3 XML bodies: rendering the answers and parsing what clients send.

Pure functions from values to ``bytes`` and back; no I/O.  Formats follow
section 3 of ``research/s3-compat.md``:

- Success bodies start with the ``<?xml?>`` prolog and carry the S3 namespace
  on the root (minio-dotnet and Net::Amazon::S3 break without it); ``<Error>``
  has no namespace, as on AWS.
- Dates are ISO 8601 with milliseconds and ``Z`` (:func:`dfs.core.s3names.iso8601`).
- ETags are stored unquoted (``ObjectEntry.etag`` etc.) and always rendered
  in double quotes.
- All text is escaped (``& < > "``, and ``\\r`` as ``&#13;`` so a carriage
  return in a key survives the parser's newline normalisation).  Characters
  XML 1.0 cannot carry at all (C0 controls other than tab/LF/CR, U+FFFE,
  U+FFFF) are written as they are: a key containing them can only be listed
  correctly with ``encoding-type=url``, which percent-encodes them (boto3 and
  minio-go always ask for it).  Replacing them would silently report a
  different key.
- With ``encoding-type=url`` the key-like fields are percent-encoded with
  :func:`dfs.core.s3names.url_encode` and ``<EncodingType>url</EncodingType>`` is
  echoed; never one without the other, because botocore decodes only when
  it sees the echo.

Parsing goes through ``defusedxml`` with DTDs forbidden (so no entity or
external-reference tricks) and a size cap; namespaces are ignored (mc and
s3cmd send DeleteObjects without one).  Anything malformed is
``S3Error("MalformedXML", ..., 400)``.

Import note: see :mod:`dfs.core.s3names`; the two modules import each other as
modules and resolve attributes at call time.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

import defusedxml
import defusedxml.ElementTree as DET

from dfs.core import s3acl, s3cors, s3lifecycle, s3names
from dfs.core.errors import S3Error
from dfs.core.s3names import ListPage as ListPage  # re-exported: callers render pages from here
from dfs.core.s3names import ObjectEntry as ObjectEntry

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
PROLOG = '<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_XML_BODY_BYTES = 2 * 1024 * 1024
MAX_DELETE_KEYS = 1000
MAX_PART_NUMBER = 10000
#: The version id of every object in a bucket without versioning (AWS's name for it).
NULL_VERSION = "null"

#: Checksum algorithms S3 names in ``Checksum<ALGO>`` elements.
CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")


# ----------------------------------------------------------------------------- value types


class PartInfo(NamedTuple):
    """One uploaded part for ListParts.  ``etag`` is unquoted."""

    number: int
    etag: str
    size: int
    last_modified_ns: int


class UploadInfo(NamedTuple):
    """One in-progress multipart upload for ListMultipartUploads."""

    key: str
    upload_id: str
    initiated_ns: int


class DeleteTarget(NamedTuple):
    """One ``<Object>`` of a DeleteObjects body, or one entry of its DeleteResult.

    ``version_id`` is None when the client named no version (and then none is
    echoed back).  ``marker_id``: in a result, the delete marker the deletion
    made or removed (DeleteMarker, DeleteMarkerVersionId).
    """

    key: str
    version_id: str | None = None
    marker_id: str | None = None


class VersionEntry(NamedTuple):
    """One ``<Version>`` or ``<DeleteMarker>`` of a ListObjectVersions answer."""

    key: str
    version_id: str
    is_latest: bool
    mtime_ns: int
    etag: str  # unquoted; unused for a marker
    size: int
    marker: bool


class CompletedPart(NamedTuple):
    """One ``<Part>`` of a CompleteMultipartUpload body.

    ``etag`` is as the client sent it minus surrounding quotes; ``checksums``
    maps an algorithm from :data:`CHECKSUM_ALGORITHMS` to the base64 value.
    """

    number: int
    etag: str
    checksums: dict[str, str]


# ----------------------------------------------------------------------------- rendering helpers

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;"})
_XML_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _esc(text: str) -> str:
    return text.translate(_ESCAPES)


def _el(name: str, text: str | int) -> str:
    return f"<{name}>{_esc(str(text))}</{name}>"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _quoted(etag: str) -> str:
    # Callers store ETags unquoted; tolerate an already-quoted one rather than doubling the quotes.
    return '"' + etag.strip('"') + '"'


def _doc(root: str, body: Sequence[str]) -> bytes:
    return (PROLOG + f'<{root} xmlns="{S3_NS}">' + "".join(body) + f"</{root}>").encode("utf-8")


def _owner(owner: tuple[str, str], tag: str = "Owner") -> str:
    owner_id, owner_name = owner
    return f"<{tag}>{_el('ID', owner_id)}{_el('DisplayName', owner_name)}</{tag}>"


def _maybe_encode(value: str, encoding_url: bool) -> str:
    return s3names.url_encode(value) if encoding_url else value


# ----------------------------------------------------------------------------- rendering


def error(
    code: str, message: str, *, resource: str, request_id: str, extra: Mapping[str, str] = _EMPTY
) -> bytes:
    """An ``<Error>`` body (no namespace, as AWS sends it).

    ``extra`` adds elements after RequestId (e.g. ``Region``,
    ``ActualObjectSize``); their names must be XML names.
    """
    parts = [
        _el("Code", code),
        _el("Message", message),
        _el("Resource", resource),
        _el("RequestId", request_id),
    ]
    for name, value in extra.items():
        if not _XML_NAME_RE.fullmatch(name):
            raise ValueError(f"not an XML element name: {name!r}")
        parts.append(_el(name, value))
    return (PROLOG + "<Error>" + "".join(parts) + "</Error>").encode("utf-8")


def list_buckets(buckets: Sequence[tuple[str, int]], *, owner_id: str, owner_name: str) -> bytes:
    """ListAllMyBucketsResult for ``(name, creation time ns)`` pairs, in the order given (AWS: by name)."""
    items = [
        f"<Bucket>{_el('Name', name)}{_el('CreationDate', s3names.iso8601(ns))}</Bucket>"
        for name, ns in buckets
    ]
    return _doc("ListAllMyBucketsResult", [_owner((owner_id, owner_name)), "<Buckets>", *items, "</Buckets>"])


def location(region: str) -> bytes:
    """GetBucketLocation: the region, or an empty LocationConstraint for us-east-1 (AWS's legacy null)."""
    return _doc("LocationConstraint", [] if region == "us-east-1" else [_esc(region)])


def versioning(status: str | None = None) -> bytes:
    """GetBucketVersioning: Enabled or Suspended; no Status element: versioning was never enabled."""
    return _doc("VersioningConfiguration", [] if status is None else [_el("Status", status)])


def acl(owner_id: str, owner_name: str) -> bytes:
    """Get{Bucket,Object}Acl stub: the owner has FULL_CONTROL, nobody else has anything."""
    grantee = (
        f'<Grantee xmlns:xsi="{XSI_NS}" xsi:type="CanonicalUser">'
        f"{_el('ID', owner_id)}{_el('DisplayName', owner_name)}</Grantee>"
    )
    return _doc(
        "AccessControlPolicy",
        [
            _owner((owner_id, owner_name)),
            "<AccessControlList><Grant>",
            grantee,
            _el("Permission", "FULL_CONTROL"),
            "</Grant></AccessControlList>",
        ],
    )


def tagging(tags: Sequence[tuple[str, str]] = ()) -> bytes:
    """Get{Object,Bucket}Tagging: the TagSet (empty when there are no tags)."""
    items = [f"<Tag>{_el('Key', k)}{_el('Value', v)}</Tag>" for k, v in tags]
    return _doc("Tagging", ["<TagSet>", *items, "</TagSet>"])


def cors(rules: Sequence[s3cors.CorsRule]) -> bytes:
    """GetBucketCors: the CORSConfiguration, one CORSRule per rule in order."""
    body: list[str] = []
    for r in rules:
        body.append("<CORSRule>")
        if r.rule_id is not None:
            body.append(_el("ID", r.rule_id))
        body += [_el("AllowedHeader", h) for h in r.allowed_headers]
        body += [_el("AllowedMethod", m) for m in r.allowed_methods]
        body += [_el("AllowedOrigin", o) for o in r.allowed_origins]
        body += [_el("ExposeHeader", h) for h in r.expose_headers]
        if r.max_age_s is not None:
            body.append(_el("MaxAgeSeconds", r.max_age_s))
        body.append("</CORSRule>")
    return _doc("CORSConfiguration", body)


def _contents(entry: ObjectEntry, encoding_url: bool, owner: tuple[str, str] | None) -> str:
    return (
        "<Contents>"
        + _el("Key", _maybe_encode(entry.key, encoding_url))
        + _el("LastModified", s3names.iso8601(entry.mtime_ns))
        + _el("ETag", _quoted(entry.etag))
        + _el("Size", entry.size)
        + _el("StorageClass", "STANDARD")
        + (_owner(owner) if owner is not None else "")
        + "</Contents>"
    )


def _common_prefixes(prefixes: Sequence[str], encoding_url: bool) -> list[str]:
    return [
        f"<CommonPrefixes>{_el('Prefix', _maybe_encode(p, encoding_url))}</CommonPrefixes>" for p in prefixes
    ]


def _page_last(page: ListPage) -> str | None:
    """The marker to continue after ``page``: its ``next_marker``, else its last entry."""
    if page.next_marker is not None:
        return page.next_marker
    candidates = [page.contents[-1].key] if page.contents else []
    candidates += page.prefixes[-1:]
    return max(candidates) if candidates else None


def list_objects_v1(
    page: ListPage,
    *,
    bucket: str,
    prefix: str | None,
    marker: str | None,
    delimiter: str | None,
    max_keys: int,
    encoding_url: bool,
    owner: tuple[str, str] | None,
) -> bytes:
    """ListBucketResult (ListObjects V1).  ``None`` and ``""`` both mean an absent parameter.

    NextMarker is sent whenever the page is truncated, not only with a
    delimiter as AWS does: without it s3cmd and minio-go resume from the last
    key and lose the common prefixes after it.
    """
    enc = encoding_url
    body = [
        _el("Name", bucket),
        _el("Prefix", _maybe_encode(prefix or "", enc)),
        _el("Marker", _maybe_encode(marker or "", enc)),
        _el("MaxKeys", max_keys),
    ]
    if delimiter:
        body.append(_el("Delimiter", _maybe_encode(delimiter, enc)))
    body.append(_el("IsTruncated", _bool(page.truncated)))
    next_marker = _page_last(page) if page.truncated else None
    if next_marker is not None:
        body.append(_el("NextMarker", _maybe_encode(next_marker, enc)))
    if enc:
        body.append(_el("EncodingType", "url"))
    body += [_contents(e, enc, owner) for e in page.contents]
    body += _common_prefixes(page.prefixes, enc)
    return _doc("ListBucketResult", body)


def list_objects_v2(
    page: ListPage,
    *,
    bucket: str,
    prefix: str | None,
    delimiter: str | None,
    max_keys: int,
    encoding_url: bool,
    start_after: str | None = None,
    continuation_token: str | None = None,
    next_token: str | None = None,
    owner: tuple[str, str] | None = None,
) -> bytes:
    """ListBucketResult (ListObjects V2).  Pass ``owner`` only when the client sent ``fetch-owner=true``.

    A truncated page always carries NextContinuationToken (minio-go treats its
    absence as an error); if ``next_token`` is None it is derived from the
    page's last entry with :func:`dfs.core.s3names.encode_token`.  Tokens are
    opaque and never URL-encoded.
    """
    enc = encoding_url
    body = [
        _el("Name", bucket),
        _el("Prefix", _maybe_encode(prefix or "", enc)),
        _el("MaxKeys", max_keys),
        _el("KeyCount", len(page.contents) + len(page.prefixes)),
    ]
    if delimiter:
        body.append(_el("Delimiter", _maybe_encode(delimiter, enc)))
    body.append(_el("IsTruncated", _bool(page.truncated)))
    if continuation_token:
        body.append(_el("ContinuationToken", continuation_token))
    if page.truncated:
        if next_token is None:
            last = _page_last(page)
            next_token = s3names.encode_token(last) if last is not None else None
        if next_token is not None:
            body.append(_el("NextContinuationToken", next_token))
    if start_after:
        body.append(_el("StartAfter", _maybe_encode(start_after, enc)))
    if enc:
        body.append(_el("EncodingType", "url"))
    body += [_contents(e, enc, owner) for e in page.contents]
    body += _common_prefixes(page.prefixes, enc)
    return _doc("ListBucketResult", body)


def list_versions_result(
    entries: Sequence[VersionEntry],
    prefixes: Sequence[str],
    *,
    bucket: str,
    prefix: str,
    key_marker: str,
    version_id_marker: str,
    next_markers: tuple[str, str | None] | None,
    delimiter: str,
    max_keys: int,
    encoding_url: bool,
    owner: tuple[str, str] | None,
) -> bytes:
    """ListVersionsResult of a versioned bucket: Versions and DeleteMarkers in listing order
    (key, then newest first), CommonPrefixes after; ``next_markers`` (NextKeyMarker,
    NextVersionIdMarker or None after a common prefix) when the page is truncated."""
    enc = encoding_url
    body = [
        _el("Name", bucket),
        _el("Prefix", _maybe_encode(prefix, enc)),
        _el("KeyMarker", _maybe_encode(key_marker, enc)),
        _el("VersionIdMarker", version_id_marker),
    ]
    if next_markers is not None:
        body.append(_el("NextKeyMarker", _maybe_encode(next_markers[0], enc)))
        if next_markers[1] is not None:
            body.append(_el("NextVersionIdMarker", next_markers[1]))
    body.append(_el("MaxKeys", max_keys))
    if delimiter:
        body.append(_el("Delimiter", _maybe_encode(delimiter, enc)))
    body.append(_el("IsTruncated", _bool(next_markers is not None)))
    if enc:
        body.append(_el("EncodingType", "url"))
    for e in entries:
        common = (
            _el("Key", _maybe_encode(e.key, enc))
            + _el("VersionId", e.version_id)
            + _el("IsLatest", _bool(e.is_latest))
            + _el("LastModified", s3names.iso8601(e.mtime_ns))
        )
        if e.marker:
            body.append("<DeleteMarker>" + common + (_owner(owner) if owner else "") + "</DeleteMarker>")
        else:
            body.append(
                "<Version>"
                + common
                + _el("ETag", _quoted(e.etag))
                + _el("Size", e.size)
                + (_owner(owner) if owner else "")
                + _el("StorageClass", "STANDARD")
                + "</Version>"
            )
    body += _common_prefixes(prefixes, enc)
    return _doc("ListVersionsResult", body)


def _version(entry: ObjectEntry, encoding_url: bool, owner: tuple[str, str] | None) -> str:
    return (
        "<Version>"
        + _el("Key", _maybe_encode(entry.key, encoding_url))
        + _el("VersionId", NULL_VERSION)
        + _el("IsLatest", "true")
        + _el("LastModified", s3names.iso8601(entry.mtime_ns))
        + _el("ETag", _quoted(entry.etag))
        + _el("Size", entry.size)
        + (_owner(owner) if owner is not None else "")
        + _el("StorageClass", "STANDARD")
        + "</Version>"
    )


def list_object_versions(
    page: ListPage,
    *,
    bucket: str,
    prefix: str | None,
    key_marker: str | None,
    version_id_marker: str | None,
    delimiter: str | None,
    max_keys: int,
    encoding_url: bool,
    owner: tuple[str, str] | None,
) -> bytes:
    """ListVersionsResult for a bucket without versioning: each object is its one version.

    ``page`` is a ListObjects page (:func:`dfs.core.s3names.paginate` with
    ``start_after=key_marker``): every entry becomes a ``<Version>`` with
    VersionId ``null`` and IsLatest true; there are no DeleteMarkers.  Element
    order follows AWS's answers (Name, Prefix, KeyMarker, VersionIdMarker, the
    Next markers, MaxKeys, Delimiter, IsTruncated, EncodingType, then the
    entries).

    A truncated page names where to resume: NextKeyMarker is its last key or
    common prefix; NextVersionIdMarker is ``null`` after a key and absent
    after a common prefix, which has no version (a client resumes with
    key-marker alone, and the whole prefix is skipped as in ListObjects).
    """
    enc = encoding_url
    body = [
        _el("Name", bucket),
        _el("Prefix", _maybe_encode(prefix or "", enc)),
        _el("KeyMarker", _maybe_encode(key_marker or "", enc)),
        _el("VersionIdMarker", version_id_marker or ""),
    ]
    next_key = _page_last(page) if page.truncated else None
    if next_key is not None:
        body.append(_el("NextKeyMarker", _maybe_encode(next_key, enc)))
        # A content key never equals a common prefix of the same listing: the
        # prefix holds the delimiter after the listed prefix, the key does not.
        if next_key not in page.prefixes:
            body.append(_el("NextVersionIdMarker", NULL_VERSION))
    body.append(_el("MaxKeys", max_keys))
    if delimiter:
        body.append(_el("Delimiter", _maybe_encode(delimiter, enc)))
    body.append(_el("IsTruncated", _bool(page.truncated)))
    if enc:
        body.append(_el("EncodingType", "url"))
    body += [_version(e, enc, owner) for e in page.contents]
    body += _common_prefixes(page.prefixes, enc)
    return _doc("ListVersionsResult", body)


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    """InitiateMultipartUploadResult."""
    return _doc(
        "InitiateMultipartUploadResult", [_el("Bucket", bucket), _el("Key", key), _el("UploadId", upload_id)]
    )


def _checksum_element(algorithm: str) -> str:
    algo = algorithm.upper()
    if algo not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    return "Checksum" + algo


def complete_multipart(
    location: str, bucket: str, key: str, etag: str, checksum: tuple[str, str] | None = None
) -> bytes:
    """CompleteMultipartUploadResult.

    ``checksum`` is ``(algorithm, base64 value)``, e.g. ``("CRC32", "...")``.
    """
    body = [_el("Location", location), _el("Bucket", bucket), _el("Key", key), _el("ETag", _quoted(etag))]
    if checksum is not None:
        body.append(_el(_checksum_element(checksum[0]), checksum[1]))
    return _doc("CompleteMultipartUploadResult", body)


def copy_object_result(etag: str, last_modified_ns: int) -> bytes:
    """CopyObjectResult."""
    return _doc(
        "CopyObjectResult",
        [_el("ETag", _quoted(etag)), _el("LastModified", s3names.iso8601(last_modified_ns))],
    )


def post_response(location: str, bucket: str, key: str, etag: str) -> bytes:
    """PostResponse: the answer to a browser (POST Object) upload asking for status 201."""
    return _doc(
        "PostResponse",
        [_el("Location", location), _el("Bucket", bucket), _el("Key", key), _el("ETag", _quoted(etag))],
    )


def copy_part_result(etag: str, last_modified_ns: int) -> bytes:
    """CopyPartResult (UploadPartCopy)."""
    return _doc(
        "CopyPartResult", [_el("ETag", _quoted(etag)), _el("LastModified", s3names.iso8601(last_modified_ns))]
    )


def list_parts(
    bucket: str,
    key: str,
    upload_id: str,
    parts: Sequence[PartInfo],
    *,
    part_number_marker: int,
    next_marker: int | None,
    max_parts: int,
    truncated: bool,
    owner: tuple[str, str] | None,
) -> bytes:
    """ListPartsResult.  NextPartNumberMarker falls back to the last part listed when truncated."""
    if next_marker is None and truncated and parts:
        next_marker = parts[-1].number
    body = [_el("Bucket", bucket), _el("Key", key), _el("UploadId", upload_id)]
    if owner is not None:
        body += [_owner(owner, "Initiator"), _owner(owner)]
    body += [_el("StorageClass", "STANDARD"), _el("PartNumberMarker", part_number_marker)]
    if next_marker is not None:
        body.append(_el("NextPartNumberMarker", next_marker))
    body += [_el("MaxParts", max_parts), _el("IsTruncated", _bool(truncated))]
    for part in parts:
        body.append(
            "<Part>"
            + _el("PartNumber", part.number)
            + _el("LastModified", s3names.iso8601(part.last_modified_ns))
            + _el("ETag", _quoted(part.etag))
            + _el("Size", part.size)
            + "</Part>"
        )
    return _doc("ListPartsResult", body)


def list_uploads(
    bucket: str,
    uploads: Sequence[UploadInfo],
    *,
    prefix: str | None,
    delimiter: str | None,
    key_marker: str | None,
    upload_id_marker: str | None,
    next_key_marker: str | None,
    next_upload_id_marker: str | None,
    max_uploads: int,
    truncated: bool,
    common_prefixes: Sequence[str],
    encoding_url: bool,
    owner: tuple[str, str] | None,
) -> bytes:
    """ListMultipartUploadsResult.

    With ``encoding_url``, Key, Prefix, Delimiter and the key markers are encoded.
    """
    enc = encoding_url
    body = [
        _el("Bucket", bucket),
        _el("KeyMarker", _maybe_encode(key_marker or "", enc)),
        _el("UploadIdMarker", upload_id_marker or ""),
    ]
    if next_key_marker is not None:
        body.append(_el("NextKeyMarker", _maybe_encode(next_key_marker, enc)))
    if next_upload_id_marker is not None:
        body.append(_el("NextUploadIdMarker", next_upload_id_marker))
    body.append(_el("Prefix", _maybe_encode(prefix or "", enc)))
    if delimiter:
        body.append(_el("Delimiter", _maybe_encode(delimiter, enc)))
    body += [_el("MaxUploads", max_uploads), _el("IsTruncated", _bool(truncated))]
    if enc:
        body.append(_el("EncodingType", "url"))
    for up in uploads:
        body.append(
            "<Upload>"
            + _el("Key", _maybe_encode(up.key, enc))
            + _el("UploadId", up.upload_id)
            + (_owner(owner, "Initiator") + _owner(owner) if owner is not None else "")
            + _el("StorageClass", "STANDARD")
            + _el("Initiated", s3names.iso8601(up.initiated_ns))
            + "</Upload>"
        )
    body += _common_prefixes(common_prefixes, enc)
    return _doc("ListMultipartUploadsResult", body)


def _target(target: DeleteTarget, encoding_url: bool) -> str:
    version = target.version_id
    return _el("Key", _maybe_encode(target.key, encoding_url)) + (
        _el("VersionId", version) if version is not None else ""
    )


def delete_result(
    deleted: Sequence[DeleteTarget],
    errors: Sequence[tuple[DeleteTarget, str, str]],
    *,
    encoding_url: bool = False,
) -> bytes:
    """DeleteResult: ``<Deleted>`` per deleted target, ``<Error>`` per ``(target, code, message)``.

    Each carries the Key and, when the client named one, the VersionId (AWS
    echoes it).  DeleteResult has no EncodingType element; ``encoding_url``
    only encodes the keys, for a caller that knows its client decodes them.
    """
    body = [
        f"<Deleted>{_target(t, encoding_url)}"
        + (
            ""
            if t.marker_id is None
            else _el("DeleteMarker", "true") + _el("DeleteMarkerVersionId", t.marker_id)
        )
        + "</Deleted>"
        for t in deleted
    ]
    body += [
        f"<Error>{_target(t, encoding_url)}{_el('Code', code)}{_el('Message', msg)}</Error>"
        for t, code, msg in errors
    ]
    return _doc("DeleteResult", body)


# ----------------------------------------------------------------------------- parsing

_MALFORMED = "The XML you provided was not well-formed or did not validate against our published schema"


def _malformed(detail: str = "") -> S3Error:
    # The detail goes into the message only for our logs' sake; clients key on the code.
    return S3Error("MalformedXML", _MALFORMED + (f" ({detail})" if detail else ""), 400)


def _local(tag: str) -> str:
    """Element name without its ``{namespace}``: bodies come with or without the S3 namespace."""
    return tag.rsplit("}", 1)[-1]


def _parse(body: bytes, root_name: str) -> ET.Element:
    if len(body) > MAX_XML_BODY_BYTES:
        raise _malformed("body too large")
    try:
        # forbid_dtd: no S3 body has a DOCTYPE, and refusing it outright stops
        # entity expansion (billion laughs) and external references early.
        root = DET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, defusedxml.DefusedXmlException, ValueError) as exc:
        raise _malformed(type(exc).__name__) from None
    if _local(root.tag) != root_name:
        raise _malformed(f"root element is not {root_name}")
    return root


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in elem if _local(child.tag) == name]


def _one_text(elem: ET.Element, name: str, *, required: bool) -> str | None:
    """Text of the single child ``name`` (``""`` if empty); None if absent and not required."""
    found = _children(elem, name)
    if len(found) > 1:
        raise _malformed(f"more than one {name}")
    if not found:
        if required:
            raise _malformed(f"missing {name}")
        return None
    if len(found[0]):
        raise _malformed(f"{name} has child elements")
    return found[0].text or ""


def parse_complete_multipart(body: bytes) -> list[CompletedPart]:
    """The parts of a CompleteMultipartUpload body, in document order.

    Each ``<Part>`` needs a PartNumber (a decimal integer, else MalformedXML;
    outside 1..10000, 400 InvalidArgument) and an ETag; ``Checksum<ALGO>``
    elements are collected.  Order and existence of the parts
    (InvalidPartOrder, InvalidPart) are the caller's to check against the
    stored upload.
    """
    root = _parse(body, "CompleteMultipartUpload")
    parts: list[CompletedPart] = []
    for part in _children(root, "Part"):
        number_text = _one_text(part, "PartNumber", required=True)
        assert number_text is not None
        number_text = number_text.strip()
        if not (number_text.isascii() and number_text.isdigit()):
            raise _malformed("PartNumber is not an integer")
        number = int(number_text)
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error(
                "InvalidArgument",
                f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive",
                400,
                ArgumentName="partNumber",
                ArgumentValue=number_text,
            )
        etag = _one_text(part, "ETag", required=True)
        assert etag is not None
        checksums: dict[str, str] = {}
        for algo in CHECKSUM_ALGORITHMS:
            value = _one_text(part, "Checksum" + algo, required=False)
            if value is not None:
                checksums[algo] = value.strip()
        parts.append(CompletedPart(number, etag.strip().strip('"'), checksums))
    if not parts:
        raise _malformed("no Part")
    return parts


def parse_delete(body: bytes) -> tuple[bool, list[DeleteTarget]]:
    """``(quiet, targets)`` of a DeleteObjects body.

    Keys are taken verbatim (not stripped: spaces are legal in keys).  No
    objects, or more than 1000, is MalformedXML, as on AWS.  A VersionId is
    returned as sent (stripped of surrounding whitespace); whether it names a
    version is the caller's to judge, per object.
    """
    root = _parse(body, "Delete")
    quiet_text = _one_text(root, "Quiet", required=False)
    quiet = False
    if quiet_text is not None:
        q = quiet_text.strip().lower()
        if q not in ("true", "false"):
            raise _malformed("Quiet is not a boolean")
        quiet = q == "true"
    objects = _children(root, "Object")
    if not objects:
        raise _malformed("no Object")
    if len(objects) > MAX_DELETE_KEYS:
        raise _malformed(f"more than {MAX_DELETE_KEYS} objects")
    targets = []
    for obj in objects:
        key = _one_text(obj, "Key", required=True)
        assert key is not None
        version = _one_text(obj, "VersionId", required=False)
        targets.append(DeleteTarget(key, version.strip() if version is not None else None))
    return quiet, targets


def parse_versioning(body: bytes) -> tuple[str | None, str | None]:
    """``(Status, MfaDelete)`` of a PutBucketVersioning body; None for an absent element.

    Values other than ``Enabled``/``Suspended`` (Status) or
    ``Enabled``/``Disabled`` (MfaDelete) are MalformedXML, as on AWS.
    """
    root = _parse(body, "VersioningConfiguration")
    status = _one_text(root, "Status", required=False)
    mfa = _one_text(root, "MfaDelete", required=False)
    status = status.strip() if status is not None else None
    mfa = mfa.strip() if mfa is not None else None
    if status not in (None, "Enabled", "Suspended"):
        raise _malformed("Status is not Enabled or Suspended")
    if mfa not in (None, "Enabled", "Disabled"):
        raise _malformed("MfaDelete is not Enabled or Disabled")
    return status, mfa


def parse_create_bucket(body: bytes) -> str | None:
    """The LocationConstraint of a CreateBucket body; None for an empty body or constraint."""
    if not body.strip():
        return None
    root = _parse(body, "CreateBucketConfiguration")
    value = _one_text(root, "LocationConstraint", required=False)
    if value is None or not value.strip():
        return None
    return value.strip()


def parse_tagging(body: bytes) -> list[tuple[str, str]]:
    """The (key, value) pairs of a Put{Object,Bucket}Tagging body, in document order.

    A Tagging without a TagSet, or a Tag without its Key or Value, is
    MalformedXML; the limits (count, lengths, duplicates) are s3tags.check's.
    """
    root = _parse(body, "Tagging")
    sets = _children(root, "TagSet")
    if len(sets) != 1:
        raise _malformed("Tagging needs exactly one TagSet")
    tags: list[tuple[str, str]] = []
    for tag in _children(sets[0], "Tag"):
        key = _one_text(tag, "Key", required=True)
        value = _one_text(tag, "Value", required=True)
        assert key is not None and value is not None
        tags.append((key, value))
    return tags


def parse_cors(body: bytes) -> list[s3cors.CorsRule]:
    """The rules of a PutBucketCors body, checked (s3cors.check), in document order."""
    if len(body) > s3cors.MAX_CONFIG_BYTES:
        raise _malformed(f"CORS configuration over {s3cors.MAX_CONFIG_BYTES} bytes")
    root = _parse(body, "CORSConfiguration")
    rules: list[s3cors.CorsRule] = []
    for rule in _children(root, "CORSRule"):

        def texts(name: str, rule: ET.Element = rule) -> tuple[str, ...]:
            out = []
            for child in _children(rule, name):
                if len(child):
                    raise _malformed(f"{name} has child elements")
                out.append((child.text or "").strip())
            return tuple(out)

        max_age_text = _one_text(rule, "MaxAgeSeconds", required=False)
        max_age: int | None = None
        if max_age_text is not None:
            text = max_age_text.strip()
            if not (text.isascii() and text.isdigit()):
                raise _malformed("MaxAgeSeconds is not an integer")
            max_age = int(text)
        rule_id = _one_text(rule, "ID", required=False)
        rules.append(
            s3cors.CorsRule(
                allowed_methods=texts("AllowedMethod"),
                allowed_origins=texts("AllowedOrigin"),
                allowed_headers=texts("AllowedHeader"),
                expose_headers=texts("ExposeHeader"),
                max_age_s=max_age,
                rule_id=rule_id,
            )
        )
    s3cors.check(rules)
    return rules


# ----------------------------------------------------------------------------- public access block
#: The four settings of a PublicAccessBlockConfiguration, in their XML order.
PUBLIC_ACCESS_FIELDS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


def public_access_block(settings: Mapping[str, bool]) -> bytes:
    """GetPublicAccessBlock: each of :data:`PUBLIC_ACCESS_FIELDS` as true/false."""
    return _doc(
        "PublicAccessBlockConfiguration",
        [_el(name, _bool(settings.get(name, False))) for name in PUBLIC_ACCESS_FIELDS],
    )


def parse_public_access_block(body: bytes) -> dict[str, bool]:
    """PutPublicAccessBlock's body -> {field: bool} (a field left out is false)."""
    root = _parse(body, "PublicAccessBlockConfiguration")
    known = set(PUBLIC_ACCESS_FIELDS)
    for child in root:
        if _local(child.tag) not in known:
            raise _malformed(f"unknown element {_local(child.tag)}")
    out: dict[str, bool] = {}
    for name in PUBLIC_ACCESS_FIELDS:
        text = _one_text(root, name, required=False)
        if text is None:
            out[name] = False
            continue
        value = text.strip().lower()
        if value not in ("true", "false"):
            raise _malformed(f"{name} must be true or false")
        out[name] = value == "true"
    return out


# ----------------------------------------------------------------------------- lifecycle

_INT_RE = re.compile(r"-?\d{1,18}")
_FILTER_PARTS = frozenset({"Prefix", "Tag", "And", "ObjectSizeGreaterThan", "ObjectSizeLessThan"})


def _int_of(elem: ET.Element, name: str, *, required: bool = False) -> int | None:
    text = _one_text(elem, name, required=required)
    if text is None:
        return None
    if not (text.strip().isascii() and _INT_RE.fullmatch(text.strip())):
        raise _malformed(f"{name} is not an integer")
    return int(text.strip())


def _lifecycle_tag(elem: ET.Element) -> tuple[str, str]:
    key = _one_text(elem, "Key", required=True)
    value = _one_text(elem, "Value", required=True)
    assert key is not None and value is not None
    return key, value


def _lifecycle_filter(rule: ET.Element) -> s3lifecycle.RuleFilter:
    """A rule's filter: its legacy <Prefix> or its <Filter> (exactly one of the two, as AWS)."""
    legacy = _one_text(rule, "Prefix", required=False)
    filters = _children(rule, "Filter")
    if len(filters) > 1 or (filters and legacy is not None):
        raise _malformed("a Rule takes one Filter or one Prefix")
    if legacy is not None:
        return s3lifecycle.RuleFilter(prefix=legacy, form="prefix")
    if not filters:
        raise _malformed("a Rule needs a Filter or a Prefix")
    f = filters[0]
    parts = [_local(child.tag) for child in f]
    if any(p not in _FILTER_PARTS for p in parts) or len(parts) > 1:
        raise _malformed("a Filter takes one of Prefix, Tag, And, ObjectSizeGreaterThan, ObjectSizeLessThan")
    body, form = f, "filter"
    if parts == ["And"]:
        body, form = _children(f, "And")[0], "and"
        if any(_local(child.tag) not in _FILTER_PARTS - {"And"} for child in body):
            raise _malformed("And takes Prefix, Tag, ObjectSizeGreaterThan and ObjectSizeLessThan")
    result = s3lifecycle.RuleFilter(
        prefix=_one_text(body, "Prefix", required=False) or "",
        tags=tuple(_lifecycle_tag(t) for t in _children(body, "Tag")),
        size_greater_than=_int_of(body, "ObjectSizeGreaterThan"),
        size_less_than=_int_of(body, "ObjectSizeLessThan"),
        form=form,
    )
    if form == "and" and result.conditions() == 0:
        raise _malformed("And needs at least one condition")
    return result


def _lifecycle_rule(rule: ET.Element, rule_id: str) -> s3lifecycle.LifecycleRule:
    if _children(rule, "Transition") or _children(rule, "NoncurrentVersionTransition"):
        raise s3lifecycle.refuse_transition()
    status = (_one_text(rule, "Status", required=True) or "").strip()
    if status not in ("Enabled", "Disabled"):
        raise _malformed("Status is not Enabled or Disabled")
    days: int | None = None
    date_s: int | None = None
    marker: bool | None = None
    expirations = _children(rule, "Expiration")
    if len(expirations) > 1:
        raise _malformed("more than one Expiration")
    if expirations:
        e = expirations[0]
        days = _int_of(e, "Days")
        date_text = _one_text(e, "Date", required=False)
        date_s = None if date_text is None else s3lifecycle.parse_date(date_text)
        marker_text = _one_text(e, "ExpiredObjectDeleteMarker", required=False)
        if marker_text is not None:
            if marker_text.strip().lower() not in ("true", "false"):
                raise _malformed("ExpiredObjectDeleteMarker is not a boolean")
            marker = marker_text.strip().lower() == "true"
        if days is None and date_s is None and marker is None:
            raise _malformed("Expiration needs Days, Date or ExpiredObjectDeleteMarker")
    noncurrent_days: int | None = None
    newer: int | None = None
    noncurrent = _children(rule, "NoncurrentVersionExpiration")
    if len(noncurrent) > 1:
        raise _malformed("more than one NoncurrentVersionExpiration")
    if noncurrent:
        noncurrent_days = _int_of(noncurrent[0], "NoncurrentDays", required=True)
        newer = _int_of(noncurrent[0], "NewerNoncurrentVersions")
    abort_days: int | None = None
    aborts = _children(rule, "AbortIncompleteMultipartUpload")
    if len(aborts) > 1:
        raise _malformed("more than one AbortIncompleteMultipartUpload")
    if aborts:
        abort_days = _int_of(aborts[0], "DaysAfterInitiation", required=True)
    return s3lifecycle.LifecycleRule(
        rule_id=rule_id,
        enabled=status == "Enabled",
        filter=_lifecycle_filter(rule),
        expiration_days=days,
        expiration_date_s=date_s,
        expired_object_delete_marker=marker,
        noncurrent_days=noncurrent_days,
        newer_noncurrent_versions=newer,
        abort_upload_days=abort_days,
    )


def parse_lifecycle(body: bytes) -> list[s3lifecycle.LifecycleRule]:
    """The rules of a PutBucketLifecycleConfiguration body, checked (s3lifecycle.check), in
    document order; a rule without an ID gets a generated one.  A Transition is refused (501)."""
    if len(body) > s3lifecycle.MAX_CONFIG_BYTES:
        raise _malformed(f"lifecycle configuration over {s3lifecycle.MAX_CONFIG_BYTES} bytes")
    root = _parse(body, "LifecycleConfiguration")
    elems = _children(root, "Rule")
    if len(elems) > s3lifecycle.MAX_RULES:
        raise _malformed(f"more than {s3lifecycle.MAX_RULES} rules")
    ids = s3lifecycle.assign_ids([_one_text(e, "ID", required=False) for e in elems])
    rules = [_lifecycle_rule(e, rule_id) for e, rule_id in zip(elems, ids, strict=True)]
    s3lifecycle.check(rules)
    return rules


def _lifecycle_filter_xml(f: s3lifecycle.RuleFilter) -> str:
    if f.form == "prefix":
        return _el("Prefix", f.prefix)
    parts: list[str] = []
    if f.prefix:
        parts.append(_el("Prefix", f.prefix))
    parts += [f"<Tag>{_el('Key', k)}{_el('Value', v)}</Tag>" for k, v in f.tags]
    if f.size_greater_than is not None:
        parts.append(_el("ObjectSizeGreaterThan", f.size_greater_than))
    if f.size_less_than is not None:
        parts.append(_el("ObjectSizeLessThan", f.size_less_than))
    if f.form == "and" or len(parts) > 1:
        return "<Filter><And>" + "".join(parts) + "</And></Filter>"
    return "<Filter>" + "".join(parts) + "</Filter>"


def lifecycle(rules: Sequence[s3lifecycle.LifecycleRule]) -> bytes:
    """GetBucketLifecycleConfiguration: the LifecycleConfiguration, one Rule per rule in order."""
    body: list[str] = []
    for r in rules:
        body += ["<Rule>", _el("ID", r.rule_id), _lifecycle_filter_xml(r.filter)]
        body.append(_el("Status", "Enabled" if r.enabled else "Disabled"))
        if r.expiration_days is not None:
            body.append(f"<Expiration>{_el('Days', r.expiration_days)}</Expiration>")
        elif r.expiration_date_s is not None:
            date = s3names.iso8601(r.expiration_date_s * 1_000_000_000)
            body.append(f"<Expiration>{_el('Date', date)}</Expiration>")
        elif r.expired_object_delete_marker is not None:
            marker = _bool(r.expired_object_delete_marker)
            body.append(f"<Expiration>{_el('ExpiredObjectDeleteMarker', marker)}</Expiration>")
        if r.noncurrent_days is not None:
            newer = r.newer_noncurrent_versions
            body.append(
                "<NoncurrentVersionExpiration>"
                + _el("NoncurrentDays", r.noncurrent_days)
                + (_el("NewerNoncurrentVersions", newer) if newer is not None else "")
                + "</NoncurrentVersionExpiration>"
            )
        if r.abort_upload_days is not None:
            body.append(
                "<AbortIncompleteMultipartUpload>"
                + _el("DaysAfterInitiation", r.abort_upload_days)
                + "</AbortIncompleteMultipartUpload>"
            )
        body.append("</Rule>")
    return _doc("LifecycleConfiguration", body)


# ----------------------------------------------------------------------------- access control lists
def access_control_policy(owner_id: str, grants: Sequence[tuple[bool, str, str]]) -> bytes:
    """Get{Bucket,Object}Acl: the owner and each (is-group, canonical id or group URI, permission)."""
    body = [_owner(s3acl.owner_of(owner_id)), "<AccessControlList>"]
    for group, grantee, permission in grants:
        if group:
            who = f'<Grantee xmlns:xsi="{XSI_NS}" xsi:type="Group">{_el("URI", grantee)}</Grantee>'
        else:
            who = (
                f'<Grantee xmlns:xsi="{XSI_NS}" xsi:type="CanonicalUser">'
                f"{_el('ID', grantee)}{_el('DisplayName', s3acl.display_name(grantee))}</Grantee>"
            )
        body.append(f"<Grant>{who}{_el('Permission', permission)}</Grant>")
    body.append("</AccessControlList>")
    return _doc("AccessControlPolicy", body)


_XSI_TYPE = f"{{{XSI_NS}}}type"


def parse_access_control_policy(body: bytes) -> tuple[str | None, list[tuple[str, str, str]]]:
    """Put{Bucket,Object}Acl's body -> (owner id if given, [(grantee type, id/URI/e-mail, permission)])."""
    root = _parse(body, "AccessControlPolicy")
    owner_id: str | None = None
    owners = _children(root, "Owner")
    if len(owners) > 1:
        raise _malformed("more than one Owner")
    if owners:
        owner_id = _one_text(owners[0], "ID", required=True)
    lists = _children(root, "AccessControlList")
    if len(lists) != 1:
        raise _malformed("exactly one AccessControlList needed")
    grants: list[tuple[str, str, str]] = []
    for grant in _children(lists[0], "Grant"):
        grantees = _children(grant, "Grantee")
        if len(grantees) != 1:
            raise _malformed("each Grant needs one Grantee")
        grantee = grantees[0]
        kind = grantee.get(_XSI_TYPE) or grantee.get("type") or ""
        field = {"CanonicalUser": "ID", "Group": "URI", "AmazonCustomerByEmail": "EmailAddress"}.get(kind)
        if field is None:
            raise _malformed(f"unknown Grantee type {kind[:32]!r}")
        value = (_one_text(grantee, field, required=True) or "").strip()
        permission = (_one_text(grant, "Permission", required=True) or "").strip()
        grants.append((kind, value, permission))
    return owner_id, grants
