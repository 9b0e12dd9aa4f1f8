"""S3 request authentication (SigV4 header, SigV4 and SigV2 presigned URLs) and body checks.

Pure (sans-IO): no sockets, no trio, no clock.  The caller passes the request
as it arrived (:class:`RequestView`), a lookup from access key to secret, and
the current time; body bytes are pushed through :class:`ChunkedDecoder`
(aws-chunked framing) and :class:`BodyChecks` (digests) as they stream in.

What this accepts is what real clients send (``/work/shared/research/s3-compat.md``
section 2), not a tidier reading of the AWS documentation:

- The canonical URI is the path percent-decoded once and re-encoded with the
  S3 rule (every byte but ``A-Za-z0-9-._~/`` as ``%XX``), never double
  encoded.  When that does not verify, the raw path as sent is tried too (some
  clients sign exactly what they send).  The same fallback exists for the
  query (sorted raw ``k=v`` pairs, which is what botocore signs when it is
  handed a URL that already carries a query) and for non-ASCII header values
  (UTF-8 or the raw Latin-1 wire bytes).  Each fallback only ever *adds*
  signatures to compare against: the signature must still cover every byte
  the server acts on, so no fallback lets an unsigned change through.
- The credential scope's region is the one signed with; it must be ours or
  ``us-east-1`` (minio-go and s3cmd probe with us-east-1 whatever the real
  region), otherwise AuthorizationHeaderMalformed carries ``Region=<ours>`` so
  those clients can retry.
- ``x-amz-content-sha256`` is required on header-signed requests, as on AWS.

Callers must decode the query they act on the way it was verified: percent
decoding only (``urllib.parse.unquote``), never form decoding (``+`` as space,
``parse_qs``), or ``a%2Bb`` and ``a+b`` would verify alike but mean different
things.  Likewise ``+`` in the path is a literal plus.

Invariants:
- :func:`authenticate` either returns an :class:`AuthContext` for a request
  whose signature verified, or raises :class:`~dfs.core.errors.S3Error`; it never
  returns for an unsigned or unverifiable request.
- :class:`ChunkedDecoder` in the signed modes releases a chunk's bytes only
  after that chunk's signature verified, and reports success at
  :meth:`ChunkedDecoder.finish` only after the signed final chunk (and, with
  signed trailers, the trailer signature) verified; a truncated or reordered
  stream fails.
- Every buffer is bounded: chunk-size lines (:data:`MAX_LINE_BYTES`), chunk
  size (``max_chunk_bytes``), trailers (``max_trailer_bytes``).
- Secrets and signing keys never appear in error messages.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote, unquote, unquote_to_bytes

from dfs.core.checksums import Checksum, algorithm_from_header, header_name, normalize, parse_b64
from dfs.core.errors import S3Error

ALGORITHM: Final = "AWS4-HMAC-SHA256"
SERVICE: Final = "s3"
TERMINATOR: Final = "aws4_request"

UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER: Final = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES: Final = frozenset({STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_TRAILER})

EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
MAX_EXPIRES_S: Final = 604800
MAX_LINE_BYTES: Final = 4096

# The sub-resources a SigV2 canonical resource keeps, exactly botocore's
# HmacV1Auth.QSAOfInterest: the server must pick the same set as the signer.
# fmt: off
V2_SUBRESOURCES: Final = frozenset((
    "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber", "policy",
    "requestPayment", "torrent", "versioning", "versionId", "versions", "website", "uploads", "uploadId",
    "response-content-type", "response-content-language", "response-expires", "response-cache-control",
    "response-content-disposition", "response-content-encoding", "delete", "lifecycle", "tagging",
    "restore", "storageClass", "notification", "replication", "analytics", "metrics", "inventory",
    "select", "select-type", "object-lock",
))
# fmt: on

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True)
class RequestView:
    """The parts of an HTTP request that authentication reads, exactly as received."""

    method: str  # "GET", ...
    path: str  # raw request path exactly as on the wire (percent-encoded), no query
    query: str  # raw query string exactly as on the wire, without "?" ("" if none)
    headers: Mapping[str, str]  # lower-case names; repeated headers already joined with ","


@dataclass(frozen=True)
class AuthContext:
    """Who signed a request, and what a streaming body needs to verify its chunks."""

    access_key: str
    method: str  # "v4-header" | "v4-presigned" | "v2-presigned"
    payload: str  # x-amz-content-sha256: 64-hex, UNSIGNED-PAYLOAD or one of STREAMING_MODES
    amz_date: str  # e.g. 20250101T000000Z ("" for v2)
    scope: str  # "20250101/us-east-1/s3/aws4_request" ("" for v2)
    signing_key: bytes = b""  # derived v4 key (b"" for v2)
    seed_signature: str = ""  # the request's signature (seeds chunk signatures)

    def __repr__(self) -> str:
        # The signing key is a credential: keep it out of logs and tracebacks.
        return (
            f"AuthContext(access_key={self.access_key!r}, method={self.method!r}, payload={self.payload!r}, "
            f"amz_date={self.amz_date!r}, scope={self.scope!r})"
        )


def is_streaming(payload: str) -> bool:
    """True when an x-amz-content-sha256 value means an aws-chunked body (use :class:`ChunkedDecoder`)."""
    return payload in STREAMING_MODES


# --------------------------------------------------------------------------- primitives


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """The SigV4 signing key for ``date`` (yyyymmdd), ``region`` and ``service``."""
    k = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode("utf-8"), "sha256")
    k = hmac.digest(k, region.encode("utf-8"), "sha256")
    k = hmac.digest(k, service.encode("utf-8"), "sha256")
    return hmac.digest(k, TERMINATOR.encode("ascii"), "sha256")


def _hmac_hex(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    # compare_digest on str refuses non-ASCII; the provided signature is untrusted input.
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def canonical_uri(raw_path: str) -> str:
    """The S3 canonical URI: decode once, re-encode all but ``A-Za-z0-9-._~/``."""
    if not raw_path:
        return "/"
    return quote(unquote_to_bytes(raw_path), safe="/")


def _split_query(raw_query: str) -> Iterator[tuple[str, str, bool]]:
    """Raw (key, value, had "=") triples of a query string, empty segments skipped."""
    for part in raw_query.split("&"):
        if part:
            key, eq, value = part.partition("=")
            yield key, value, bool(eq)


def canonical_query(raw_query: str, *, presigned: bool = False) -> str:
    """The SigV4 canonical query: decoded pairs re-encoded strictly, sorted, ``k=v`` joined by ``&``.

    ``+`` stays a literal plus (the query is not decoded as a form); a key
    without ``=`` gets an empty value; for presigned URLs X-Amz-Signature is
    left out, as the signer did not have it yet.
    """
    pairs: list[tuple[str, str]] = []
    for key, value, _ in _split_query(raw_query):
        k = unquote_to_bytes(key)
        if presigned and k == b"X-Amz-Signature":
            continue
        pairs.append((quote(k, safe=""), quote(unquote_to_bytes(value), safe="")))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _raw_sorted_query(raw_query: str, *, presigned: bool) -> str:
    # What botocore signs when the URL it is given already has a query: the
    # pairs as written, sorted, without re-encoding.
    pairs = [
        (k, v)
        for k, v, _ in _split_query(raw_query)
        if not (presigned and unquote_to_bytes(k) == b"X-Amz-Signature")
    ]
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _query_params(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (key, value) pairs, for reading auth parameters (no form decoding)."""
    return [(unquote(k), unquote(v)) for k, v, _ in _split_query(raw_query)]


def _trim(value: str) -> str:
    # SigV4 "Trimall", as botocore does it: strip, and collapse whitespace runs to one space.
    return " ".join(value.split())


def _unique(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _header_blocks(headers: Mapping[str, str], signed: list[str]) -> list[bytes]:
    """Canonical header blocks to try: UTF-8, and the raw Latin-1 wire bytes if that differs.

    botocore sends ``é`` as the Latin-1 byte but signs its UTF-8; Go sends and
    signs the UTF-8 bytes, which an HTTP layer decoding Latin-1 shows as
    ``Ã©``.  Only non-ASCII values produce the second candidate.
    """
    lines = [f"{name}:{_trim(headers.get(name, ''))}" for name in signed]
    block = "\n".join(lines)
    out = [block.encode("utf-8")]
    if not block.isascii():
        try:
            out.append(block.encode("latin-1"))
        except UnicodeEncodeError:
            pass
    return out


def _iso(epoch_s: float) -> str:
    return _dt.datetime.fromtimestamp(epoch_s, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_amz_date(value: str) -> float | None:
    if not _AMZ_DATE.fullmatch(value):
        return None
    try:
        when = _dt.datetime.strptime(value, _AMZ_DATE_FORMAT).replace(tzinfo=_dt.UTC)
    except ValueError:
        return None
    return when.timestamp()


def _request_date(headers: Mapping[str, str]) -> tuple[str, float, str]:
    """(yyyymmddThhmmssZ, epoch seconds, raw header value) from X-Amz-Date, else Date.

    X-Amz-Date wins when both are present (as on AWS); botocore signs with
    Date alone when the request already carries one.
    """
    raw = headers.get("x-amz-date")
    if raw is not None:
        epoch = _parse_amz_date(raw.strip())
        if epoch is not None:
            return raw.strip(), epoch, raw
    else:
        raw = headers.get("date")
        if raw is not None:
            try:
                when = parsedate_to_datetime(raw.strip())
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=_dt.UTC)
                when = when.astimezone(_dt.UTC)
                return when.strftime(_AMZ_DATE_FORMAT), when.timestamp(), raw
    raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header", 403)


# --------------------------------------------------------------------------- authenticate


def _malformed(presigned: bool, message: str, **extra: str) -> S3Error:
    if presigned:
        return S3Error("AuthorizationQueryParametersError", message, 400, **extra)
    return S3Error("AuthorizationHeaderMalformed", message, 400, **extra)


def _parse_credential(cred: str, *, presigned: bool, region: str) -> tuple[str, str, str]:
    """(access key, yyyymmdd, region) from ``AK/yyyymmdd/region/s3/aws4_request``."""
    what = (
        "Error parsing the X-Amz-Credential parameter"
        if presigned
        else "The authorization header is malformed"
    )
    parts = cred.split("/")
    if len(parts) < 5 or not parts[0]:
        raise _malformed(
            presigned,
            f"{what}; the Credential is mal-formed; "
            'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".',
        )
    # An access key is not expected to hold "/", but the scope's four fields are fixed.
    access_key = "/".join(parts[:-4])
    date, scope_region, service, terminator = parts[-4:]
    if not (len(date) == 8 and date.isdigit()):
        raise _malformed(
            presigned, f"{what}; incorrect date format {date[:16]!r}. This date should be YYYYMMDD."
        )
    if terminator != TERMINATOR:
        raise _malformed(
            presigned, f"{what}; incorrect terminal {terminator[:32]!r}. This endpoint uses aws4_request."
        )
    if service != SERVICE:
        raise _malformed(
            presigned, f"{what}; incorrect service {service[:32]!r}. This endpoint belongs to s3."
        )
    if not scope_region:
        raise _malformed(presigned, f"{what}; the region is empty; expecting {region!r}", Region=region)
    if scope_region != region and scope_region != "us-east-1":
        raise _malformed(
            presigned,
            f"{what}; the region {scope_region[:64]!r} is wrong; expecting {region!r}",
            Region=region,
        )
    return access_key, date, scope_region


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    """(Credential, SignedHeaders list, Signature) of a SigV4 Authorization header.

    Parts may be separated by ", " or by a bare "," (s3cmd, minio-go), with any
    whitespace around them.
    """
    rest = value.strip()[len(ALGORITHM) :]
    if not rest[:1].isspace():
        raise _malformed(False, "The authorization header is malformed; unexpected text after the algorithm.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key in fields:
            raise _malformed(False, f"The authorization header is malformed; bad component {part[:64]!r}.")
        fields[key] = val.strip()
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if missing:
        raise _malformed(False, f"The authorization header is malformed; missing {', '.join(missing)}.")
    signed = fields["SignedHeaders"].split(";")
    return fields["Credential"], signed, fields["Signature"]


def _check_signed_headers(signed: list[str], presigned: bool) -> list[str]:
    names = [s.strip().lower() for s in signed]
    if any(not n for n in names):
        raise _malformed(presigned, "SignedHeaders contains an empty header name.")
    if "host" not in names:
        raise _malformed(presigned, "SignedHeaders must include host.")
    return names


def _check_signature_format(sig: str, presigned: bool) -> str:
    if not _HEX64.fullmatch(sig):
        raise _malformed(presigned, "The signature must be 64 hexadecimal characters.")
    return sig.lower()


def _check_payload(payload: str) -> str:
    if _HEX64.fullmatch(payload) or payload == UNSIGNED_PAYLOAD or payload in STREAMING_MODES:
        return payload
    if payload.startswith("STREAMING-AWS4-ECDSA"):
        raise S3Error("NotImplemented", "SigV4a (ECDSA) streaming payloads are not supported", 501)
    raise S3Error(
        "InvalidArgument",
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-UNSIGNED-PAYLOAD-TRAILER "
        "or a valid sha256 value.",
        400,
        ArgumentName="x-amz-content-sha256",
    )


def secret_of(secret_for: Callable[[str], str | None], access_key: str) -> str:
    """The secret of ``access_key``; InvalidAccessKeyId (403) if no key has that id."""
    secret = secret_for(access_key)
    if secret is None:
        raise S3Error(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            403,
            AWSAccessKeyId=access_key,
        )
    return secret


def _verify_v4(
    req: RequestView,
    *,
    access_key: str,
    key: bytes,
    amz_date: str,
    scope: str,
    signed: list[str],
    payload: str,
    provided: str,
    presigned: bool,
) -> None:
    paths = _unique([canonical_uri(req.path), req.path or "/"])
    queries = _unique(
        [canonical_query(req.query, presigned=presigned), _raw_sorted_query(req.query, presigned=presigned)]
    )
    tail = b"\n".join([b"", ";".join(signed).encode("ascii"), payload.encode("ascii")])
    first: tuple[bytes, str] | None = None
    for block in _header_blocks(req.headers, signed):
        for path in paths:
            for query in queries:
                creq = b"\n".join(
                    [req.method.encode("utf-8"), path.encode("utf-8"), query.encode("utf-8"), block]
                )
                creq += b"\n" + tail
                sts = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(creq).hexdigest()}"
                if _same(_hmac_hex(key, sts), provided):
                    return
                if first is None:
                    first = (creq, sts)
    assert first is not None
    raise S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        403,
        AWSAccessKeyId=access_key,
        SignatureProvided=provided,
        StringToSign=first[1],
        CanonicalRequest=first[0].decode("utf-8", "replace"),
    )


def _auth_v4_header(
    req: RequestView,
    auth: str,
    secret_for: Callable[[str], str | None],
    *,
    now_s: float,
    region: str,
    max_skew_s: float,
) -> AuthContext:
    cred, signed_raw, sig_raw = _parse_authorization(auth)
    access_key, date, scope_region = _parse_credential(cred, presigned=False, region=region)
    signed = _check_signed_headers(signed_raw, False)
    provided = _check_signature_format(sig_raw, False)
    secret = secret_of(secret_for, access_key)
    amz_date, epoch, raw_date = _request_date(req.headers)
    if amz_date[:8] != date:
        raise _malformed(
            False,
            f"The authorization header is malformed; Invalid credential date {date!r}. "
            f"Date is not the same as X-Amz-Date {amz_date[:8]!r}.",
        )
    if abs(epoch - now_s) > max_skew_s:
        raise S3Error(
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            403,
            RequestTime=raw_date,
            ServerTime=_iso(now_s),
            MaxAllowedSkewMilliseconds=str(int(max_skew_s * 1000)),
        )
    payload = req.headers.get("x-amz-content-sha256")
    if payload is None:
        raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256", 400)
    return _verified_v4(
        req, secret, access_key, date, scope_region, amz_date, signed, payload, provided, presigned=False
    )


def _verified_v4(
    req: RequestView,
    secret: str,
    access_key: str,
    date: str,
    scope_region: str,
    amz_date: str,
    signed: list[str],
    payload: str,
    provided: str,
    *,
    presigned: bool,
) -> AuthContext:
    """The part header and presigned SigV4 share: derive the key, check the signature."""
    payload = _check_payload(payload.strip())
    key = signing_key(secret, date, scope_region)
    scope = f"{date}/{scope_region}/{SERVICE}/{TERMINATOR}"
    _verify_v4(
        req,
        access_key=access_key,
        key=key,
        amz_date=amz_date,
        scope=scope,
        signed=signed,
        payload=payload,
        provided=provided,
        presigned=presigned,
    )
    method = "v4-presigned" if presigned else "v4-header"
    return AuthContext(access_key, method, payload, amz_date, scope, key, provided)


def _single(params: list[tuple[str, str]], name: str, *, presigned_v4: bool) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        if presigned_v4:
            raise _malformed(True, f"The {name} query parameter appears more than once.")
        raise S3Error("AccessDenied", f"The {name} query parameter appears more than once.", 403)
    return values[0] if values else None


def _auth_v4_presigned(
    req: RequestView,
    params: list[tuple[str, str]],
    secret_for: Callable[[str], str | None],
    *,
    now_s: float,
    region: str,
    max_skew_s: float,
) -> AuthContext:
    got = {
        name: _single(params, name, presigned_v4=True)
        for name in (
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
        )
    }
    algorithm = got["X-Amz-Algorithm"]
    if algorithm is not None and algorithm.startswith("AWS4-ECDSA"):
        raise S3Error("NotImplemented", "SigV4a (ECDSA) presigned URLs are not supported", 501)
    if algorithm != ALGORITHM:
        raise _malformed(True, 'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    if any(v is None or v == "" for v in got.values()):
        raise _malformed(
            True,
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.",
        )
    cred, amz_date, expires_s, signed_raw, sig_raw = (
        str(got[n])
        for n in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature")
    )
    access_key, date, scope_region = _parse_credential(cred, presigned=True, region=region)
    signed = _check_signed_headers(signed_raw.split(";"), True)
    provided = _check_signature_format(sig_raw, True)
    epoch = _parse_amz_date(amz_date)
    if epoch is None:
        raise _malformed(True, "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if amz_date[:8] != date:
        raise _malformed(
            True,
            f"Error parsing the X-Amz-Credential parameter; Invalid credential date {date!r}. "
            f"Date is not the same as X-Amz-Date {amz_date[:8]!r}.",
        )
    if not expires_s.isdigit() or len(expires_s) > 10:
        raise _malformed(True, "X-Amz-Expires should be a number")
    expires = int(expires_s)
    if expires > MAX_EXPIRES_S:
        raise _malformed(True, "X-Amz-Expires must be less than a week (in seconds) that is 604800")
    secret = secret_of(secret_for, access_key)
    if epoch - now_s > max_skew_s:
        raise S3Error("AccessDenied", "Request is not valid yet", 403)
    if now_s > epoch + expires:
        raise S3Error(
            "AccessDenied",
            "Request has expired",
            403,
            **{"X-Amz-Expires": expires_s, "Expires": _iso(epoch + expires), "ServerTime": _iso(now_s)},
        )
    # botocore hashes a payload header present at presign time; otherwise the
    # presigned payload is UNSIGNED-PAYLOAD by definition.
    payload = req.headers.get("x-amz-content-sha256")
    if payload is None:
        payload = next((v for k, v in params if k.lower() == "x-amz-content-sha256"), UNSIGNED_PAYLOAD)
    return _verified_v4(
        req, secret, access_key, date, scope_region, amz_date, signed, payload, provided, presigned=True
    )


def _v2_subresources(raw_query: str) -> str:
    # botocore (HmacV1Auth.canonical_resource): keys as written, values
    # percent-decoded, "k" alone when the URL had no "=", stable-sorted by key.
    picked = [(k, unquote(v), eq) for k, v, eq in _split_query(raw_query) if k in V2_SUBRESOURCES]
    if not picked:
        return ""
    picked.sort(key=lambda item: item[0])
    return "?" + "&".join(f"{k}={v}" if eq else k for k, v, eq in picked)


def _auth_v2_presigned(
    req: RequestView,
    params: list[tuple[str, str]],
    secret_for: Callable[[str], str | None],
    *,
    now_s: float,
    vhost_bucket: str | None,
) -> AuthContext:
    access_key = _single(params, "AWSAccessKeyId", presigned_v4=False)
    expires_s = _single(params, "Expires", presigned_v4=False)
    provided = _single(params, "Signature", presigned_v4=False)
    if not access_key or not expires_s or not provided:
        raise S3Error(
            "AccessDenied",
            "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters",
            403,
        )
    if req.method not in ("GET", "HEAD"):
        # A v2 URL signs no payload hash; allow it only where there is no body.
        raise S3Error(
            "AccessDenied",
            "SigV2 presigned URLs are accepted for GET and HEAD only; presign with signature_version='s3v4'",
            403,
        )
    if not expires_s.isdigit() or len(expires_s) > 12:
        raise S3Error("AccessDenied", f"Invalid date (should be seconds since epoch): {expires_s[:32]}", 403)
    secret = secret_of(secret_for, access_key)
    if now_s > int(expires_s):
        raise S3Error(
            "AccessDenied", "Request has expired", 403, Expires=_iso(int(expires_s)), ServerTime=_iso(now_s)
        )
    # A "+" left raw by a client and decoded as a space somewhere upstream is still base64 "+".
    provided = provided.replace(" ", "+")
    # Signers move x-amz-* headers (and Content-MD5/Content-Type) into the query of a v2 URL.
    amz: dict[str, list[str]] = {}
    for name, value in req.headers.items():
        if name.startswith("x-amz-"):
            amz.setdefault(name, []).append(value.strip())
    lower_params = [(k.lower(), v) for k, v in params]
    for name, value in lower_params:
        if name.startswith("x-amz-"):
            amz.setdefault(name, []).append(value.strip())
    amz_block = "".join(f"{name}:{','.join(values)}\n" for name, values in sorted(amz.items()))
    content_md5 = req.headers.get("content-md5") or next(
        (v for k, v in lower_params if k == "content-md5"), ""
    )
    content_type = req.headers.get("content-type") or next(
        (v for k, v in lower_params if k == "content-type"), ""
    )
    prefix = f"/{vhost_bucket}" if vhost_bucket else ""
    sub = _v2_subresources(req.query)
    first = ""
    for path in _unique([req.path or "/", canonical_uri(req.path)]):
        sts = f"{req.method}\n{content_md5.strip()}\n{content_type.strip()}\n{expires_s}\n"
        sts += f"{amz_block}{prefix}{path}{sub}"
        digest = hmac.digest(secret.encode("utf-8"), sts.encode("utf-8"), "sha1")
        if _same(base64.b64encode(digest).decode("ascii"), provided):
            return AuthContext(access_key, "v2-presigned", UNSIGNED_PAYLOAD, "", "", b"", provided)
        first = first or sts
    raise S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        403,
        AWSAccessKeyId=access_key,
        SignatureProvided=provided,
        StringToSign=first,
    )


def is_signed(req: RequestView) -> bool:
    """Does the request carry any credentials at all (an Authorization header, or a presigned
    URL's query)?  One that does not is anonymous: no signature to check, its payload unsigned."""
    auth = req.headers.get("authorization")
    if auth is not None and auth.strip():
        return True
    names = {k for k, _ in _query_params(req.query)}
    return bool(
        names & {"X-Amz-Algorithm", "X-Amz-Signature", "X-Amz-Credential", "AWSAccessKeyId", "Signature"}
    )


def authenticate(
    req: RequestView,
    secret_for: Callable[[str], str | None],
    *,
    now_s: float,
    region: str = "us-east-1",
    max_skew_s: float = 900.0,
    vhost_bucket: str | None = None,
) -> AuthContext:
    """Verify ``req``'s signature and return who signed it; raise S3Error otherwise.

    ``secret_for`` maps an access key to its secret (None if unknown).
    ``now_s`` is the current Unix time.  ``vhost_bucket`` is the bucket taken
    from the Host header of a virtual-host-style request: only SigV2 needs it,
    since its canonical resource always names the bucket.
    """
    auth = req.headers.get("authorization")
    params = _query_params(req.query)
    names = {k for k, _ in params}
    v4_query = "X-Amz-Algorithm" in names or "X-Amz-Signature" in names or "X-Amz-Credential" in names
    v2_query = "AWSAccessKeyId" in names or "Signature" in names
    if auth is not None and auth.strip():
        if v4_query or v2_query:
            raise S3Error(
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
                400,
                ArgumentName="Authorization",
            )
        auth = auth.strip()
        if auth.startswith(ALGORITHM):
            return _auth_v4_header(req, auth, secret_for, now_s=now_s, region=region, max_skew_s=max_skew_s)
        if auth.startswith("AWS "):
            raise S3Error("InvalidRequest", "SigV2 header signing is not supported; use SigV4", 400)
        if auth.startswith("AWS4-ECDSA"):
            raise S3Error("NotImplemented", "SigV4a (ECDSA) signing is not supported", 501)
        raise S3Error("InvalidArgument", "Unsupported Authorization Type", 400, ArgumentName="Authorization")
    if v4_query:
        return _auth_v4_presigned(req, params, secret_for, now_s=now_s, region=region, max_skew_s=max_skew_s)
    if v2_query:
        return _auth_v2_presigned(req, params, secret_for, now_s=now_s, vhost_bucket=vhost_bucket)
    raise S3Error("AccessDenied", "anonymous access is not allowed", 403)


# --------------------------------------------------------------------------- aws-chunked bodies

_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ChunkedDecoder:
    """Decodes an aws-chunked body (after HTTP framing is already removed).

    Wire format: ``hex-size[;chunk-signature=sig]\\r\\n<data>\\r\\n`` repeated,
    then ``0[;chunk-signature=sig]\\r\\n``, then optional trailer lines
    ``name:value`` and a blank line.  Lines may end in a bare LF: minio-go
    writes its trailer lines that way, and puts a blank line before
    ``x-amz-trailer-signature``; so the trailer section runs to the end of the
    body, blank lines are skipped, and the body may end right after the final
    chunk's line.

    In the signed modes a chunk's bytes are held until its signature verified
    (at most ``max_chunk_bytes``), so callers never see unauthenticated data,
    and the body must reach the signed final chunk (plus, in the signed-trailer
    mode, ``x-amz-trailer-signature``): that signature is what proves nothing
    was cut off.  After an S3Error the decoder is in an undefined state; drop it.
    """

    def __init__(
        self,
        ctx: AuthContext,
        *,
        max_chunk_bytes: int = 16 * 1024 * 1024,
        max_trailer_bytes: int = 16384,
    ) -> None:
        if ctx.payload not in STREAMING_MODES:
            raise ValueError(f"not an aws-chunked payload mode: {ctx.payload!r}")
        self._ctx = ctx
        self._signed = ctx.payload != STREAMING_UNSIGNED_TRAILER
        self._trailer_allowed = ctx.payload != STREAMING_PAYLOAD
        self._trailer_signed = ctx.payload == STREAMING_PAYLOAD_TRAILER
        self._max_chunk = max_chunk_bytes
        self._max_trailer = max_trailer_bytes
        self._prev = ctx.seed_signature
        self._state = _SIZE
        self._line = bytearray()  # partial size line, data-terminating CRLF, or trailer line
        self._remaining = 0  # data bytes of the current chunk still to come
        self._chunk_sig = ""
        self._chunk_hash = hashlib.sha256()
        self._held: list[bytes] = []
        self._trailer_lines: list[bytes] = []
        self._trailer_sig: str | None = None
        self._trailer_bytes = 0
        self._fed_any = False
        self._finished = False
        self.decoded_bytes = 0  # payload bytes returned by feed() so far

    # -- framing

    def feed(self, data: bytes) -> bytes:
        """Consume the next body bytes; return the payload bytes now available (may be b"")."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not data:
            return b""
        self._fed_any = True
        data = bytes(data)
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            if self._state == _DATA:
                take = min(self._remaining, end - pos)
                piece = data[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._signed:
                    self._chunk_hash.update(piece)
                    self._held.append(piece)
                else:
                    out.append(piece)
                    self.decoded_bytes += take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif self._state == _DATA_END:
                take = min(2 - len(self._line), end - pos)
                self._line += data[pos : pos + take]
                pos += take
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise S3Error("IncompleteBody", "aws-chunked data is longer than its chunk size", 400)
                    self._line.clear()
                    self._end_chunk(out)
            else:
                nl = data.find(b"\n", pos)
                stop = end if nl < 0 else nl
                self._line += data[pos:stop]
                pos = stop if nl < 0 else nl + 1
                self._check_line_length()
                if nl >= 0:
                    line = bytes(self._line[:-1] if self._line.endswith(b"\r") else self._line)
                    self._line.clear()
                    if self._state == _SIZE:
                        self._start_chunk(line)
                    else:
                        self._trailer_line(line)
        return b"".join(out)

    def _check_line_length(self) -> None:
        if self._state == _SIZE:
            if len(self._line) > MAX_LINE_BYTES:
                raise S3Error("InvalidRequest", "aws-chunked chunk-size line is too long", 400)
        elif self._trailer_bytes + len(self._line) > self._max_trailer:
            raise S3Error("InvalidRequest", "aws-chunked trailer is too long", 400)

    def _start_chunk(self, line: bytes) -> None:
        size_part, _, ext = line.partition(b";")
        size_part = size_part.strip()
        if not size_part or not set(size_part) <= _HEX_DIGITS:
            raise S3Error("IncompleteBody", f"malformed aws-chunked chunk-size line {line[:64]!r}", 400)
        digits = size_part.lstrip(b"0")
        size = int(digits, 16) if digits else 0
        if size > self._max_chunk:
            raise S3Error(
                "InvalidRequest", f"aws-chunked chunk of {size} bytes exceeds {self._max_chunk}", 400
            )
        sig = ""
        for item in ext.split(b";"):
            name, _, value = item.partition(b"=")
            if name.strip() == b"chunk-signature":
                sig = value.strip().decode("ascii", "replace").lower()
        if self._signed and not sig:
            raise S3Error("SignatureDoesNotMatch", "aws-chunked chunk without a chunk-signature", 403)
        self._chunk_sig = sig
        self._chunk_hash = hashlib.sha256()
        if size == 0:
            # The final chunk: signed over empty data, then the trailer section.
            if self._signed:
                self._verify_chunk()
            self._state = _TRAILER
        else:
            self._remaining = size
            self._state = _DATA

    def _end_chunk(self, out: list[bytes]) -> None:
        if self._signed:
            self._verify_chunk()
            out.extend(self._held)
            self.decoded_bytes += sum(len(piece) for piece in self._held)
            self._held.clear()
        self._state = _SIZE

    def _verify_chunk(self) -> None:
        ctx = self._ctx
        sts = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                ctx.amz_date,
                ctx.scope,
                self._prev,
                EMPTY_SHA256,
                self._chunk_hash.hexdigest(),
            ]
        )
        expected = _hmac_hex(ctx.signing_key, sts)
        if not _same(expected, self._chunk_sig):
            raise S3Error(
                "SignatureDoesNotMatch",
                "The chunk signature we calculated does not match the signature you provided.",
                403,
            )
        self._prev = expected

    def _trailer_line(self, line: bytes) -> None:
        self._trailer_bytes += len(line) + 1
        if not line.strip():
            return
        if not self._trailer_allowed:
            raise S3Error("InvalidRequest", "unexpected trailer after the final aws-chunked chunk", 400)
        if self._trailer_sig is not None:
            raise S3Error("InvalidRequest", "trailer lines after x-amz-trailer-signature", 400)
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise S3Error("InvalidRequest", f"malformed aws-chunked trailer line {line[:64]!r}", 400)
        if name.strip().lower() == b"x-amz-trailer-signature":
            self._trailer_sig = value.strip().decode("ascii", "replace").lower()
        else:
            self._trailer_lines.append(line)

    def _verify_trailer(self) -> None:
        assert self._trailer_sig is not None
        ctx = self._ctx
        raw = b"".join(line + b"\n" for line in self._trailer_lines)
        normal = b"".join(
            name.strip().lower() + b":" + value.strip() + b"\n"
            for name, _, value in (line.partition(b":") for line in self._trailer_lines)
        )
        for canon in _unique_bytes([raw, normal]):
            sts = "\n".join(
                [
                    "AWS4-HMAC-SHA256-TRAILER",
                    ctx.amz_date,
                    ctx.scope,
                    self._prev,
                    hashlib.sha256(canon).hexdigest(),
                ]
            )
            if _same(_hmac_hex(ctx.signing_key, sts), self._trailer_sig):
                return
        raise S3Error(
            "SignatureDoesNotMatch",
            "The trailer signature we calculated does not match the signature you provided.",
            403,
        )

    def finish(self) -> dict[str, str]:
        """Call when the HTTP body ended; return the trailers (lower-case names, signature excluded)."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        if not self._fed_any and not self._signed:
            # An empty unsigned-trailer body is an empty payload.  Signed modes
            # need their signed final chunk: it is what proves nothing was cut off.
            return {}
        if self._state != _TRAILER or self._line:
            raise S3Error("IncompleteBody", "The request body ended before the final aws-chunked chunk", 400)
        if self._trailer_signed:
            if self._trailer_sig is None:
                # This mode promises a signed trailer; without it the end of the body is unproven.
                raise S3Error("IncompleteBody", "The request body ended before x-amz-trailer-signature", 400)
            self._verify_trailer()
        trailers: dict[str, str] = {}
        for line in self._trailer_lines:
            name, _, value = line.partition(b":")
            key = name.strip().lower().decode("latin-1")
            if key in trailers:
                raise S3Error("InvalidRequest", f"trailer {key[:64]!r} appears more than once", 400)
            trailers[key] = value.strip().decode("latin-1")
        return trailers


def _unique_bytes(items: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


# --------------------------------------------------------------------------- body digests


class BodyChecks:
    """Verifies a request body as it streams: x-amz-content-sha256 (hex mode), Content-MD5,
    x-amz-checksum-* (header or trailer), x-amz-decoded-content-length; always computes MD5 (the ETag).

    Feed it the *decoded* payload (after :class:`ChunkedDecoder` for aws-chunked
    bodies).  Header problems raise from the constructor, before any body is
    read; digest mismatches raise from :meth:`finish`.
    """

    def __init__(self, headers: Mapping[str, str], ctx: AuthContext | None) -> None:
        payload = (
            ctx.payload if ctx is not None else headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD).strip()
        )
        self._payload = payload
        self._sha256 = hashlib.sha256() if _HEX64.fullmatch(payload) else None
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.md5_hex = ""
        self.checksum: tuple[str, str] | None = None
        self.length = 0
        self._finished = False

        self._content_md5: bytes | None = None
        raw_md5 = headers.get("content-md5")
        if raw_md5 is not None:
            try:
                self._content_md5 = base64.b64decode(raw_md5.strip(), validate=True)
            except (binascii.Error, ValueError):
                self._content_md5 = None
            if self._content_md5 is None or len(self._content_md5) != 16:
                raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.", 400)

        # One checksum at most: an x-amz-checksum-<alg> header, or a trailer named by x-amz-trailer.
        in_header = [(alg, name) for name in headers if (alg := algorithm_from_header(name)) is not None]
        in_trailer: list[tuple[str, str]] = []
        for name in (n.strip().lower() for n in headers.get("x-amz-trailer", "").split(",")):
            if not name:
                continue
            alg = algorithm_from_header(name)
            if alg is None:
                raise S3Error("InvalidRequest", f"unsupported trailer {name[:64]!r} in x-amz-trailer", 400)
            in_trailer.append((alg, name))
        if len(in_header) + len(in_trailer) > 1:
            raise S3Error(
                "InvalidRequest",
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
                400,
            )
        sdk_alg = headers.get("x-amz-sdk-checksum-algorithm")
        self._algorithm: str | None = None
        self._expected: bytes | None = None
        self._trailer_name: str | None = None
        if in_header:
            alg, name = in_header[0]
            self._algorithm = alg
            self._expected = parse_b64(alg, headers[name])
        elif in_trailer:
            self._algorithm, self._trailer_name = in_trailer[0]
        if sdk_alg is not None and sdk_alg.strip():
            wanted = normalize(sdk_alg)
            if self._algorithm is None:
                raise S3Error(
                    "InvalidRequest",
                    "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* "
                    "or x-amz-trailer headers were found.",
                    400,
                )
            if wanted != self._algorithm:
                raise S3Error(
                    "InvalidRequest",
                    f"x-amz-sdk-checksum-algorithm {wanted} does not match the {self._algorithm} checksum",
                    400,
                )
        self._checksum = Checksum(self._algorithm) if self._algorithm is not None else None

        self._decoded_length: int | None = None
        raw_len = headers.get("x-amz-decoded-content-length")
        if raw_len is not None and is_streaming(payload):
            raw_len = raw_len.strip()
            if not raw_len.isdigit() or len(raw_len) > 19:
                raise S3Error("InvalidArgument", "x-amz-decoded-content-length is not a number", 400)
            self._decoded_length = int(raw_len)

    def update(self, data: bytes) -> None:
        if self._finished:
            raise RuntimeError("update() after finish()")
        self.length += len(data)
        if self._decoded_length is not None and self.length > self._decoded_length:
            # Stop early: more bytes than the signed length is never going to verify.
            raise S3Error("IncompleteBody", "The body is longer than x-amz-decoded-content-length", 400)
        self._md5.update(data)
        if self._sha256 is not None:
            self._sha256.update(data)
        if self._checksum is not None:
            self._checksum.update(data)

    def finish(self, trailers: Mapping[str, str] | None = None) -> None:
        """Check every digest against the whole body; raise S3Error on the first mismatch."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self.md5_hex = self._md5.hexdigest()
        if self._decoded_length is not None and self.length != self._decoded_length:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the "
                "x-amz-decoded-content-length HTTP header",
                400,
            )
        if self._sha256 is not None:
            ours = self._sha256.hexdigest()
            if ours != self._payload.lower():
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    400,
                    ClientComputedContentSHA256=self._payload,
                    S3ComputedContentSHA256=ours,
                )
        if self._content_md5 is not None and self._md5.digest() != self._content_md5:
            raise S3Error(
                "BadDigest",
                "The Content-MD5 you specified did not match what we received.",
                400,
                ExpectedDigest=base64.b64encode(self._content_md5).decode("ascii"),
                CalculatedDigest=base64.b64encode(self._md5.digest()).decode("ascii"),
            )
        if self._checksum is None:
            return
        alg = self._checksum.algorithm
        expected = self._expected
        if expected is None:
            value = (trailers or {}).get(self._trailer_name or header_name(alg))
            if value is None:
                raise S3Error(
                    "InvalidRequest",
                    f"x-amz-trailer named {header_name(alg)} but the body had no such trailer",
                    400,
                )
            expected = parse_b64(alg, value)
        if self._checksum.digest() != expected:
            raise S3Error("BadDigest", f"The {alg} you specified did not match the calculated checksum.", 400)
        self.checksum = (alg, self._checksum.b64())
