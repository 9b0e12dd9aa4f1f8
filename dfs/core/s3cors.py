"""A bucket's CORS rules: validation, the stored form, and which rule answers a browser.

A CORS configuration is a list of :class:`CorsRule` (at most 100, its XML at
most 64 KiB), stored as JSON in the xattr ``user.s3.cors`` of the bucket
directory.  As on AWS, the *first* rule matching a request answers it:

* a preflight (``OPTIONS`` with Origin, Access-Control-Request-Method and
  maybe -Headers) matches a rule whose AllowedOrigin matches the origin, whose
  AllowedMethod holds the method, and whose AllowedHeader patterns cover every
  requested header (case-insensitively);
* an actual request with an Origin matches on origin and method only.

Origins and headers match patterns holding at most one ``*`` (any run of
characters).  Pure: no I/O, no trio.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from dfs.core.errors import S3Error

MAX_RULES = 100
MAX_CONFIG_BYTES = 64 * 1024
MAX_ID_CHARS = 255
METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
# What a matching response varies on, so caches keep one answer per origin and preflight.
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"


@dataclass(frozen=True)
class CorsRule:
    allowed_methods: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_s: int | None = None
    rule_id: str | None = None


def check(rules: Sequence[CorsRule]) -> None:
    """Refuse a configuration AWS would refuse (MalformedXML / InvalidRequest, 400)."""
    if not rules:
        raise S3Error("MalformedXML", "The CORS configuration must hold at least one CORSRule")
    if len(rules) > MAX_RULES:
        raise S3Error("MalformedXML", f"A CORS configuration holds at most {MAX_RULES} rules")
    for rule in rules:
        if not rule.allowed_methods or not rule.allowed_origins:
            raise S3Error("MalformedXML", "Every CORSRule needs an AllowedMethod and an AllowedOrigin")
        for method in rule.allowed_methods:
            if method not in METHODS:
                raise S3Error(
                    "InvalidRequest",
                    f"Found unsupported HTTP method in CORS config. Unsupported method is {method}",
                )
        for origin in rule.allowed_origins:
            if origin.count("*") > 1:
                raise S3Error(
                    "InvalidRequest", f'AllowedOrigin "{origin}" can not have more than one wildcard.'
                )
        for header in rule.allowed_headers:
            if header.count("*") > 1:
                raise S3Error(
                    "InvalidRequest", f'AllowedHeader "{header}" can not have more than one wildcard.'
                )
        if rule.max_age_s is not None and rule.max_age_s < 0:
            raise S3Error("MalformedXML", "MaxAgeSeconds must be a non-negative integer")
        if rule.rule_id is not None and len(rule.rule_id) > MAX_ID_CHARS:
            raise S3Error("InvalidArgument", f"The ID of a CORSRule is at most {MAX_ID_CHARS} characters")


def encode(rules: Sequence[CorsRule]) -> bytes:
    """The stored form: compact JSON, one object per rule."""
    return json.dumps(
        [
            {
                "methods": list(r.allowed_methods),
                "origins": list(r.allowed_origins),
                "headers": list(r.allowed_headers),
                "expose": list(r.expose_headers),
                "max_age_s": r.max_age_s,
                "id": r.rule_id,
            }
            for r in rules
        ],
        separators=(",", ":"),
    ).encode()


def decode(raw: bytes) -> list[CorsRule]:
    """Rules from their stored form; ValueError if it is not (an xattr edited through the mount)."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, list):
            raise TypeError("not a list of rules")
        rules = [
            CorsRule(
                tuple(str(m) for m in r["methods"]),
                tuple(str(o) for o in r["origins"]),
                tuple(str(h) for h in r.get("headers", ())),
                tuple(str(h) for h in r.get("expose", ())),
                None if r.get("max_age_s") is None else int(r["max_age_s"]),
                None if r.get("id") is None else str(r["id"]),
            )
            for r in doc
        ]
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a stored CORS configuration: {exc}") from None
    return rules


def wildcard_match(pattern: str, text: str, *, fold: bool = False) -> bool:
    """Does ``text`` match ``pattern``, whose single ``*`` (if any) stands for any characters?"""
    if fold:
        pattern, text = pattern.lower(), text.lower()
    star = pattern.find("*")
    if star < 0:
        return pattern == text
    head, tail = pattern[:star], pattern[star + 1 :]
    return len(text) >= len(head) + len(tail) and text.startswith(head) and text.endswith(tail)


def _origin_ok(rule: CorsRule, origin: str) -> bool:
    return any(wildcard_match(p, origin) for p in rule.allowed_origins)


def _headers_ok(rule: CorsRule, headers: Sequence[str]) -> bool:
    return all(any(wildcard_match(p, h, fold=True) for p in rule.allowed_headers) for h in headers)


def request_headers(value: str) -> list[str]:
    """The header names of an Access-Control-Request-Headers value, lower-cased."""
    return [h.strip().lower() for h in value.split(",") if h.strip()]


def match_preflight(
    rules: Sequence[CorsRule], origin: str, method: str, headers: Sequence[str]
) -> CorsRule | None:
    """The first rule allowing this preflight, or None."""
    for rule in rules:
        if method in rule.allowed_methods and _origin_ok(rule, origin) and _headers_ok(rule, headers):
            return rule
    return None


def match_request(rules: Sequence[CorsRule], origin: str, method: str) -> CorsRule | None:
    """The first rule covering an actual request from ``origin`` with ``method``, or None."""
    for rule in rules:
        if method in rule.allowed_methods and _origin_ok(rule, origin):
            return rule
    return None


def _allow_origin(rule: CorsRule, origin: str) -> list[tuple[str, str]]:
    # A rule allowing every origin answers "*", which browsers refuse with credentials; a
    # rule naming origins echoes the caller's and allows credentials, as AWS does.
    if "*" in rule.allowed_origins:
        return [("Access-Control-Allow-Origin", "*")]
    return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true")]


def preflight_headers(rule: CorsRule, origin: str, headers: Sequence[str]) -> list[tuple[str, str]]:
    """The headers of a 200 preflight answer from ``rule``."""
    out = _allow_origin(rule, origin)
    out.append(("Access-Control-Allow-Methods", ", ".join(rule.allowed_methods)))
    if headers:
        out.append(("Access-Control-Allow-Headers", ", ".join(headers)))
    if rule.expose_headers:
        out.append(("Access-Control-Expose-Headers", ", ".join(rule.expose_headers)))
    if rule.max_age_s is not None:
        out.append(("Access-Control-Max-Age", str(rule.max_age_s)))
    out.append(("Vary", VARY))
    return out


def response_headers(rule: CorsRule, origin: str) -> list[tuple[str, str]]:
    """The headers an actual request's answer gains from ``rule``."""
    out = _allow_origin(rule, origin)
    out.append(("Access-Control-Allow-Methods", ", ".join(rule.allowed_methods)))
    if rule.expose_headers:
        out.append(("Access-Control-Expose-Headers", ", ".join(rule.expose_headers)))
    if rule.max_age_s is not None:
        out.append(("Access-Control-Max-Age", str(rule.max_age_s)))
    out.append(("Vary", VARY))
    return out
