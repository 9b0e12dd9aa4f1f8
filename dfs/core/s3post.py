"""S3 browser uploads (POST Object): the multipart/form-data parser, the policy and its signature.

Pure (sans-IO): bytes in, events out; time and secrets are arguments.  The
daemon side is :mod:`daemon.s3.post`.

:class:`FormParser` turns a ``multipart/form-data`` body, fed in pieces split
anywhere, into :class:`Field` events (small fields, buffered whole) and, for
the part named ``file``, :class:`FileStart`, :class:`FileData` pieces and
:class:`FileEnd`.  AWS requires the file to be the last field and ignores
what follows it, so the parser stops caring after :class:`FileEnd`.

Invariants:
- Every buffer is bounded: the non-file parts (their headers and values
  together) by ``max_fields_bytes``, a part's header section by
  :data:`MAX_PART_HEADER_BYTES`, the look-behind kept while streaming the file
  by the delimiter's length.  File bytes are never accumulated.
- Any input is accepted or raises :class:`~dfs.core.errors.S3Error`
  (MalformedPOSTRequest, or InvalidArgument/MaxPostPreDataLengthExceeded);
  nothing else escapes (the fuzz contract of h11).
- :func:`verify_signature` either returns the access key whose secret signed
  the policy or raises S3Error; :class:`PostPolicy` either accepts the form's
  fields or raises AccessDenied with AWS's "Invalid according to Policy" text.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from dfs.core import sigv4
from dfs.core.errors import S3Error

#: AWS's limit on the form fields before the file (everything but the file part), 20 KB.
MAX_FIELDS_BYTES: Final = 20 * 1024
#: One part's header section (Content-Disposition, Content-Type).
MAX_PART_HEADER_BYTES: Final = 8 * 1024
#: The longest boundary RFC 2046 allows.
MAX_BOUNDARY_BYTES: Final = 70
#: Fields never covered by a policy condition (AWS's list; x-ignore-* too).
EXEMPT_FIELDS: Final = frozenset({"file", "policy", "x-amz-signature", "signature", "awsaccesskeyid"})


@dataclass(frozen=True)
class Field:
    """A non-file form field: its lower-cased name and its value."""

    name: str
    value: bytes


@dataclass(frozen=True)
class FileStart:
    """The ``file`` part begins: its filename (may be empty) and Content-Type (may be empty)."""

    filename: str
    content_type: str


@dataclass(frozen=True)
class FileData:
    data: bytes


@dataclass(frozen=True)
class FileEnd:
    pass


Event = Field | FileStart | FileData | FileEnd


def malformed(detail: str = "") -> S3Error:
    message = "The body of your POST request is not well-formed multipart/form-data."
    return S3Error("MalformedPOSTRequest", f"{message} {detail}".strip(), 400)


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, None when it is not one."""
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    params = _params(rest)
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > MAX_BOUNDARY_BYTES or not boundary.isascii():
        raise malformed("The multipart boundary is missing or invalid.")
    return boundary.encode("ascii")


def _params(text: str) -> dict[str, str]:
    """``; a=b; c="d \\" e"`` parameters (names lower-cased), quoted strings unescaped."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        start = i
        while i < n and text[i] not in "=;":
            i += 1
        name = text[start:i].strip().lower()
        value = ""
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(text[i])
                    i += 1
                i += 1  # the closing quote (or past the end)
                value = "".join(chars)
            else:
                start = i
                while i < n and text[i] != ";":
                    i += 1
                value = text[start:i].strip()
        if name:
            out.setdefault(name, value)
    return out


# Parser states.
_PREAMBLE, _AFTER_DELIM, _HEADERS, _VALUE, _FILE, _DONE = range(6)


class FormParser:
    """``multipart/form-data`` as events; :meth:`feed` pieces, then :meth:`finish`."""

    def __init__(self, boundary: bytes, *, max_fields_bytes: int = MAX_FIELDS_BYTES) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY_BYTES:
            raise malformed("The multipart boundary is missing or invalid.")
        # Every delimiter but the first is CRLF--boundary; a virtual CRLF before the body makes the
        # first one look the same (RFC 2046 allows a preamble before it, which is skipped).
        self._delim = b"\r\n--" + boundary
        self._buf = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._max_fields_bytes = max_fields_bytes
        self._fields_bytes = 0  # headers and values of the non-file parts so far
        self._name = ""
        self._value = bytearray()

    @property
    def done(self) -> bool:
        """True once the file part (or the closing delimiter) was seen: the rest is ignored."""
        return self._state == _DONE

    def feed(self, data: bytes) -> list[Event]:
        if self._state == _DONE:
            return []
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """The body ended: it must have ended after the file part or a closing delimiter."""
        if self._state != _DONE:
            raise malformed("The body ended inside a part.")
        return []

    def _count(self, n: int) -> None:
        self._fields_bytes += n
        if self._fields_bytes > self._max_fields_bytes:
            raise S3Error(
                "MaxPostPreDataLengthExceeded",
                "Your POST request fields preceding the upload file were too large.",
                400,
                MaxPostPreDataLength=str(self._max_fields_bytes),
            )

    def _step(self, events: list[Event]) -> bool:
        """One step of the state machine; False when it needs more bytes."""
        buf, delim = self._buf, self._delim
        if self._state == _PREAMBLE:
            at = buf.find(delim)
            if at < 0:
                # Keep only what could still begin a delimiter; the preamble counts against the cap.
                keep = len(delim) - 1
                if len(buf) > keep:
                    self._count(len(buf) - keep)
                    del buf[: len(buf) - keep]
                return False
            self._count(at)
            del buf[: at + len(delim)]
            self._state = _AFTER_DELIM
            return True
        if self._state == _AFTER_DELIM:
            # "--" closes the body; otherwise optional transport padding, then CRLF.
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = _DONE
                buf.clear()
                return False
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > 256:
                    raise malformed("Junk after a boundary.")
                return False
            if buf[:eol].strip(b" \t"):
                raise malformed("Junk after a boundary.")
            del buf[: eol + 2]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buf.startswith(b"\r\n"):
                raw, used = b"", 2  # a part without headers (refused below: it has no name)
            else:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_PART_HEADER_BYTES:
                        raise malformed("A part's headers are too long.")
                    return False
                raw, used = bytes(buf[:end]), end + 4
            if len(raw) > MAX_PART_HEADER_BYTES:
                raise malformed("A part's headers are too long.")
            del buf[:used]
            self._start_part(raw, events)
            return True
        if self._state in (_VALUE, _FILE):
            at = buf.find(delim)
            if at < 0:
                # Hand out all but a possible delimiter prefix at the end.
                cut = len(buf) - (len(delim) - 1)
                if cut > 0:
                    self._data(bytes(buf[:cut]), events)
                    del buf[:cut]
                return False
            if at:
                self._data(bytes(buf[:at]), events)
            del buf[: at + len(delim)]
            if self._state == _FILE:
                events.append(FileEnd())
                self._state = _DONE
                buf.clear()
                return False
            events.append(Field(self._name, bytes(self._value)))
            self._value.clear()
            self._state = _AFTER_DELIM
            return True
        return False

    def _data(self, data: bytes, events: list[Event]) -> None:
        if self._state == _FILE:
            events.append(FileData(data))
        else:
            self._count(len(data))
            self._value += data

    def _start_part(self, raw: bytes, events: list[Event]) -> None:
        if self._state != _HEADERS:
            raise AssertionError("headers outside a part")
        self._count(len(raw))
        disposition = ""
        content_type = ""
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                raise malformed("A part header has no colon.")
            text = value.decode("utf-8", "replace").strip()
            lname = name.strip().lower()
            if lname == b"content-disposition":
                disposition = text
            elif lname == b"content-type":
                content_type = text
        kind, _, rest = disposition.partition(";")
        if kind.strip().lower() != "form-data":
            raise malformed("A part has no Content-Disposition: form-data.")
        params = _params(rest)
        if "name" not in params:
            raise malformed("A part has no name.")
        self._name = params["name"].lower()
        if self._name == "file":
            self._state = _FILE
            # Browsers send a base name; old IE sent a full Windows path.
            filename = params.get("filename", "").replace("\\", "/").rsplit("/", 1)[-1]
            events.append(FileStart(filename, content_type))
        else:
            self._state = _VALUE


# --------------------------------------------------------------------------- policy


def _denied(reason: str) -> S3Error:
    return S3Error("AccessDenied", f"Invalid according to Policy: {reason}", 403)


def _invalid_policy(reason: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", f"Invalid Policy: {reason}", 400)


@dataclass(frozen=True)
class Condition:
    """One policy condition: op is "eq" or "starts-with" over a lower-cased field name."""

    op: str
    field: str
    value: str
    text: str  # as written, for the error message


@dataclass(frozen=True)
class PostPolicy:
    """A decoded POST policy: when it expires and what it allows."""

    expiration_s: float
    conditions: tuple[Condition, ...]
    length_range: tuple[int, int] | None

    @classmethod
    def parse(cls, policy_b64: str) -> PostPolicy:
        try:
            raw = base64.b64decode(policy_b64.strip(), validate=True)
            doc = json.loads(raw)
        except (binascii.Error, ValueError):
            raise _invalid_policy("Invalid JSON.") from None
        if not isinstance(doc, dict):
            raise _invalid_policy("Invalid JSON.")
        expiration = doc.get("expiration")
        if not isinstance(expiration, str):
            raise _invalid_policy("Policy missing expiration.")
        try:
            when = _dt.datetime.fromisoformat(expiration)
        except ValueError:
            raise _invalid_policy(f"Invalid 'expiration' value: '{expiration[:64]}'") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        raw_conditions = doc.get("conditions")
        if not isinstance(raw_conditions, list):
            raise _invalid_policy("Policy missing conditions.")
        conditions: list[Condition] = []
        length_range: tuple[int, int] | None = None
        for item in raw_conditions:
            text = json.dumps(item)[:256]
            if isinstance(item, dict):
                if not item:
                    raise _invalid_policy(f"Invalid Simple-Condition: {text}")
                for name, value in item.items():
                    if not isinstance(value, str):
                        raise _invalid_policy(f"Invalid Simple-Condition: {text}")
                    conditions.append(Condition("eq", str(name).lower().removeprefix("$"), value, text))
            elif isinstance(item, list) and len(item) == 3 and isinstance(item[0], str):
                op = item[0].lower()
                if op == "content-length-range":
                    low, high = item[1], item[2]
                    if not (isinstance(low, int) and isinstance(high, int)) or not 0 <= low <= high:
                        raise _invalid_policy(f"Invalid content-length-range: {text}")
                    length_range = (low, high)
                elif op in ("eq", "starts-with"):
                    name, value = item[1], item[2]
                    if not (isinstance(name, str) and name.startswith("$") and isinstance(value, str)):
                        raise _invalid_policy(f"Invalid Condition: {text}")
                    conditions.append(Condition(op, name[1:].lower(), value, text))
                else:
                    raise _invalid_policy(f"Unknown condition: {text}")
            else:
                raise _invalid_policy(f"Invalid Condition: {text}")
        return cls(when.timestamp(), tuple(conditions), length_range)

    def check(self, fields: Mapping[str, str], *, bucket: str, now_s: float) -> None:
        """Refuse (AccessDenied) an expired policy, a failed condition or an uncovered field.

        ``fields`` are the form's non-file fields with lower-cased names; ``bucket``
        is the bucket the form was posted to (the ``bucket`` condition checks it).
        """
        if now_s > self.expiration_s:
            raise _denied("Policy expired.")
        values = {**fields, "bucket": bucket}
        covered = {"bucket"}
        for cond in self.conditions:
            covered.add(cond.field)
            if not cond_holds(cond, values.get(cond.field, "")):
                raise _denied(f"Policy Condition failed: {cond.text}")
        extra = sorted(
            name
            for name in fields
            if name not in covered and name not in EXEMPT_FIELDS and not name.startswith("x-ignore-")
        )
        if extra:
            raise _denied(f"Extra input fields: {', '.join(extra)[:256]}")

    def check_key(self, key: str) -> None:
        """The key after ``${filename}`` substitution must still meet every starts-with on $key
        (so a file name cannot move the object out of the prefix the signer allowed)."""
        for cond in self.conditions:
            if cond.field == "key" and cond.op == "starts-with" and not key.startswith(cond.value):
                raise _denied(f"Policy Condition failed: {cond.text}")

    def check_length(self, size_bytes: int, *, final: bool) -> None:
        """EntityTooLarge as soon as the file passes the maximum; EntityTooSmall at its end."""
        if self.length_range is None:
            return
        low, high = self.length_range
        if size_bytes > high:
            raise S3Error(
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size",
                400,
                MaxSizeAllowed=str(high),
            )
        if final and size_bytes < low:
            raise S3Error(
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size",
                400,
                MinSizeAllowed=str(low),
            )


def cond_holds(cond: Condition, value: str) -> bool:
    if cond.op == "eq":
        return value == cond.value
    if cond.field == "content-type":
        # AWS: each of several comma-separated content types must match.
        return all(part.strip().startswith(cond.value) for part in value.split(","))
    return value.startswith(cond.value)


# --------------------------------------------------------------------------- signature


def _field(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if not value:
        raise S3Error(
            "InvalidArgument",
            f"Bucket POST must contain a field named '{name}'.  If it is specified, please check the "
            "order of the fields.",
            400,
            ArgumentName=name,
        )
    return value


def verify_signature(
    fields: Mapping[str, str], secret_for: Callable[[str], str | None], *, region: str
) -> tuple[str, str]:
    """(access key, "v4-post" or "v2-post") of the key whose secret signed the form's policy.

    SigV4: ``x-amz-signature`` is the hex HMAC-SHA256 of the base64 policy under
    the signing key of ``x-amz-credential``'s scope.  SigV2: ``signature`` is
    the base64 HMAC-SHA1 of the base64 policy under the secret.  A form with
    neither is anonymous, refused until bucket policies exist.
    """
    if "x-amz-signature" in fields or "x-amz-credential" in fields or "x-amz-algorithm" in fields:
        return _verify_v4(fields, secret_for, region=region), "v4-post"
    if "awsaccesskeyid" in fields or "signature" in fields:
        return _verify_v2(fields, secret_for), "v2-post"
    raise S3Error("AccessDenied", "Anonymous POST uploads are not allowed", 403)


def _mismatch(access_key: str) -> S3Error:
    return S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        403,
        AWSAccessKeyId=access_key,
    )


def _verify_v4(fields: Mapping[str, str], secret_for: Callable[[str], str | None], *, region: str) -> str:
    algorithm = _field(fields, "x-amz-algorithm")
    credential = _field(fields, "x-amz-credential")
    amz_date = _field(fields, "x-amz-date")
    provided = _field(fields, "x-amz-signature")
    policy_b64 = _field(fields, "policy")
    if algorithm != sigv4.ALGORITHM:
        raise S3Error(
            "InvalidArgument", "Only AWS4-HMAC-SHA256 is supported", 400, ArgumentName="x-amz-algorithm"
        )
    parts = credential.split("/")
    if len(parts) < 5 or not parts[0]:
        raise S3Error("InvalidArgument", "The credential is malformed", 400, ArgumentName="x-amz-credential")
    access_key = "/".join(parts[:-4])
    date, scope_region, service, terminator = parts[-4:]
    in_scope = (service, terminator) == (sigv4.SERVICE, sigv4.TERMINATOR)
    if not in_scope or scope_region not in (region, "us-east-1"):
        raise S3Error(
            "InvalidArgument",
            f"The credential scope is wrong; expecting region {region!r} and service s3",
            400,
            ArgumentName="x-amz-credential",
        )
    if not (len(date) == 8 and date.isdigit()) or amz_date[:8] != date:
        raise S3Error(
            "InvalidArgument",
            "x-amz-date does not match the credential's date",
            400,
            ArgumentName="x-amz-date",
        )
    key = sigv4.signing_key(sigv4.secret_of(secret_for, access_key), date, scope_region)
    ours = hmac.new(key, policy_b64.encode("utf-8"), "sha256").hexdigest()
    if not hmac.compare_digest(ours, provided.strip().lower()):
        raise _mismatch(access_key)
    return access_key


def _verify_v2(fields: Mapping[str, str], secret_for: Callable[[str], str | None]) -> str:
    access_key = _field(fields, "awsaccesskeyid")
    provided = _field(fields, "signature")
    policy_b64 = _field(fields, "policy")
    digest = hmac.digest(
        sigv4.secret_of(secret_for, access_key).encode("utf-8"), policy_b64.encode("utf-8"), "sha1"
    )
    # A "+" decoded as a space somewhere upstream is still base64 "+".
    if not hmac.compare_digest(base64.b64encode(digest).decode("ascii"), provided.strip().replace(" ", "+")):
        raise _mismatch(access_key)
    return access_key
