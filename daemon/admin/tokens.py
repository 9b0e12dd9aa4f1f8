"""Scoped admin tokens: their shape, their hash and what each scope may do.

A token made by ``dfs admin token create`` (or ``POST /storage/tokens``) reads
``dfs_<id>_<secret>``: ``id`` is 12 lower-case hex digits that name the token in
listings and revocations, ``secret`` 32 random bytes in unpadded base64url.
Metadata keeps only the SHA-256 of the whole token (table ``admin_tokens``),
so a copy of meta.db grants nothing; checks compare digests with
:func:`hmac.compare_digest`.  The first-run token (``admin.token`` in the data
dir) is not in metadata: it has scope ``admin`` and is compared as before.

Scopes:

- ``read``: GET (and HEAD) of the monitoring and inventory routes
  (:data:`READ_ROUTES`: ``/metrics``, ``/storage/health``, ``/storage/metrics``,
  nodes, volumes, snapshots, directory policy, quotas, trash listings, the OpenAPI document);
- ``admin``: everything, changes and token management included.

Pure: no I/O beyond the random source; :func:`allowed` is the one decision.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from dfs.core.errors import InvalidArgument

SCOPES = ("read", "admin")
TOKEN_PREFIX = "dfs_"
_ID_HEX = 12
_SECRET_BYTES = 32
_TOKEN_RE = re.compile(rf"{TOKEN_PREFIX}([0-9a-f]{{{_ID_HEX}}})_[A-Za-z0-9_-]{{43}}")
_ID_RE = re.compile(rf"[0-9a-f]{{{_ID_HEX}}}")

#: Route templates a ``read`` token may GET.  Not ``/storage/config`` (settings, even redacted,
#: are the operator's) nor ``/storage/tokens`` (who holds access is an admin's question).
READ_ROUTES = frozenset(
    {
        "/metrics",
        "/storage/health",
        "/storage/metrics",
        "/storage/nodes",
        "/storage/nodes/{node_id}",
        "/storage/volumes",
        "/storage/volumes/{name}",
        "/storage/snapshot",
        "/storage/policy",
        "/storage/quotas",
        "/storage/trash",
        "/storage/openapi.json",
    }
)
_READ_METHODS = frozenset({"GET", "HEAD"})
_NAME_RE = re.compile(r"[ -~]{0,64}")  # printable ASCII


def allowed(scope: str, method: str, route: str) -> bool:
    """May a caller holding ``scope`` make ``method`` on the route template ``route``?"""
    if scope == "admin":
        return True
    if scope == "read":
        return method.upper() in _READ_METHODS and route in READ_ROUTES
    return False  # an unknown scope grants nothing


def new_token() -> tuple[str, str]:
    """A fresh (id, token)."""
    token_id = secrets.token_hex(_ID_HEX // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"


def token_id(token: str) -> str | None:
    """The id a presented token claims, or None if it does not have a scoped token's shape."""
    match = _TOKEN_RE.fullmatch(token)
    return None if match is None else match.group(1)


def is_token_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def digest(token: str) -> bytes:
    """What metadata stores of a token: SHA-256 of its text."""
    return hashlib.sha256(token.encode()).digest()


def same_digest(a: bytes, b: bytes) -> bool:
    """Constant-time digest comparison."""
    return hmac.compare_digest(a, b)


def check_new(scope: object, name: object) -> tuple[str, str]:
    """(scope, name) of a token to create, validated (InvalidArgument otherwise)."""
    if not isinstance(scope, str) or scope not in SCOPES:
        raise InvalidArgument(f"scope must be one of {', '.join(SCOPES)}")
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise InvalidArgument("name must be at most 64 printable ASCII characters")
    return scope, name
