"""Cloud tiers: what a tier is, where a chunk lives in it, and how fast we may send to it.

Pure (no I/O, no trio): the daemon's backends (daemon/tiers/backends.py) and the metadata
both use these definitions.

A tier is an object store beside the local disks: an S3, Azure Blob or Google Cloud Storage
bucket, or a plain directory (``kind="dir"``, e.g. an NFS mount; also what unit tests use).
Chunks are stored there as they are on disk (already compressed and encrypted, see
dfs/core/codec.py), one object per chunk, named by :func:`chunk_key`.

Invariants:
- a :class:`TierSpec` that exists is valid: every field is checked when it is built, also
  by :meth:`TierSpec.from_dict`, and a bad field raises InvalidArgument with a one-line
  message naming the field;
- a TierSpec holds no secret (it is stored in the metadata and shown by ``dfs tier list``):
  credentials live in the file ``credentials_file`` names, read on each node;
- ``chunk_id_of_key(spec, chunk_key(spec, cid)) == cid`` for every 32-byte id, and
  chunk_id_of_key returns None for any key chunk_key cannot produce.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from dfs.core.codec import ID_SIZE, chunk_relpath
from dfs.core.errors import InvalidArgument

KINDS = ("s3", "azure", "gcs", "dir")

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Bucket names as each provider accepts them (a subset where the rules are intricate: S3's
# "no IP-address-like names" and the like are left to the provider, which answers clearly).
_BUCKET_RE = {
    # S3: 3-63 lowercase letters, digits, dots and hyphens; starts and ends alphanumeric.
    "s3": re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"),
    # Azure containers: 3-63 lowercase letters, digits and single hyphens; starts and ends alphanumeric.
    "azure": re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]"),
    # GCS: 3-63 lowercase letters, digits, dots, hyphens and underscores (222 with dots).
    "gcs": re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"),
}
_REGION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_PREFIX_MAX_BYTES = 512  # keeps every chunk key well below the providers' 1024-byte key limit
_PATH_MAX_BYTES = 4096
_ENDPOINT_MAX_BYTES = 2048
_TIMEOUT_MAX_S = 3600.0
MAX_RETRIES_LIMIT = 10
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


def _fail(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"tier {field}: {why}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def _check_text(field: str, value: object, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise _fail(field, f"must be a string, not {type(value).__name__}")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise _fail(field, f"longer than {max_bytes} bytes")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise _fail(field, "contains a control character")
    return value


def _check_prefix(value: object) -> None:
    prefix = _check_text("prefix", value, _PREFIX_MAX_BYTES)
    if not prefix:
        return
    if prefix.startswith("/") or prefix.endswith("/"):
        raise _fail("prefix", f"{prefix!r} must not start or end with '/'")
    for part in prefix.split("/"):
        # Empty, "." and ".." segments would name another place in a "dir" tier and are
        # ambiguous in object stores that normalise paths (obstore does).
        if part in ("", ".", ".."):
            raise _fail("prefix", f"{prefix!r} has an empty, '.' or '..' segment")


def _check_endpoint(value: object, allow_http: bool) -> None:
    endpoint = _check_text("endpoint", value, _ENDPOINT_MAX_BYTES)
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise _fail("endpoint", f"{endpoint!r} is not an http:// or https:// URL")
    if any(c.isspace() for c in endpoint) or "@" in rest.split("/", 1)[0]:
        # userinfo in the URL would be a secret in a field that is shown to everyone.
        raise _fail("endpoint", f"{endpoint!r} must not hold spaces or user:password@")
    if scheme == "http" and not allow_http:
        raise _fail("endpoint", f"{endpoint!r} is plain http: set allow_http to use it")


@dataclass(frozen=True)
class TierSpec:
    """One cloud tier's definition, as stored in the metadata.  See the module docstring."""

    name: str
    kind: str  # one of KINDS
    bucket: str  # bucket or container name; for "dir" an absolute directory path
    prefix: str = ""  # inside the bucket; no leading or trailing "/"
    endpoint: str | None = None  # None: the provider's own; http:// only with allow_http
    region: str | None = None  # S3 only; None: the environment's or the provider's default
    credentials_file: str | None = None  # absolute path read on each node; None: default chain
    allow_http: bool = False
    bandwidth_bytes_per_s: int | None = None  # None: unlimited
    cost_per_gib_month: float | None = None
    cost_per_1k_requests: float | None = None
    request_timeout_s: float = 30.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        name = _check_text("name", self.name, 63)
        if not NAME_RE.fullmatch(name):
            raise _fail("name", f"{name!r} must match [a-z0-9][a-z0-9-]{{0,62}}")
        if self.kind not in KINDS:
            raise _fail("kind", f"{self.kind!r} is not one of {', '.join(KINDS)}")
        self._check_bucket()
        _check_prefix(self.prefix)
        if not isinstance(self.allow_http, bool):
            raise _fail("allow_http", "must be true or false")
        if self.endpoint is not None:
            if self.kind == "dir":
                raise _fail("endpoint", "a dir tier has no endpoint")
            _check_endpoint(self.endpoint, self.allow_http)
        if self.region is not None:
            if self.kind != "s3":
                raise _fail("region", f"only s3 tiers have a region, not {self.kind}")
            region = _check_text("region", self.region, 64)
            if not _REGION_RE.fullmatch(region):
                raise _fail("region", f"{region!r} is not a region name")
        if self.credentials_file is not None:
            if self.kind == "dir":
                raise _fail("credentials_file", "a dir tier has no credentials")
            path = _check_text("credentials_file", self.credentials_file, _PATH_MAX_BYTES)
            if not path.startswith("/"):
                raise _fail("credentials_file", f"{path!r} is not an absolute path")
        bw = self.bandwidth_bytes_per_s
        if bw is not None and not (_is_int(bw) and bw > 0):
            raise _fail("bandwidth_bytes_per_s", f"{bw!r} is not a positive integer (omit it for no limit)")
        for field in ("cost_per_gib_month", "cost_per_1k_requests"):
            cost = getattr(self, field)
            if cost is None:
                continue
            if not (_is_number(cost) and cost >= 0):
                raise _fail(field, f"{cost!r} is not a finite number >= 0")
            object.__setattr__(self, field, float(cost))
        timeout = self.request_timeout_s
        if not (_is_number(timeout) and 0 < timeout <= _TIMEOUT_MAX_S):
            raise _fail("request_timeout_s", f"{timeout!r} is not a number in (0, {_TIMEOUT_MAX_S:g}]")
        object.__setattr__(self, "request_timeout_s", float(timeout))
        retries = self.max_retries
        if not (_is_int(retries) and 0 <= retries <= MAX_RETRIES_LIMIT):
            raise _fail("max_retries", f"{retries!r} is not an integer in 0..{MAX_RETRIES_LIMIT}")

    def _check_bucket(self) -> None:
        bucket = _check_text("bucket", self.bucket, _PATH_MAX_BYTES)
        if self.kind == "dir":
            if not bucket.startswith("/"):
                raise _fail("bucket", f"a dir tier's bucket must be an absolute path, not {bucket!r}")
            if bucket != "/" and (bucket.endswith("/") or "//" in bucket):
                raise _fail("bucket", f"{bucket!r} is not a normalised path")
            if any(part in (".", "..") for part in bucket.split("/")):
                raise _fail("bucket", f"{bucket!r} has a '.' or '..' segment")
            return
        if not _BUCKET_RE[self.kind].fullmatch(bucket):
            raise _fail("bucket", f"{bucket!r} is not a valid {self.kind} bucket name")

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON- and msgpack-ready (the inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> TierSpec:
        """A spec from :meth:`to_dict`'s output; unknown or missing fields are refused."""
        if not isinstance(data, dict):
            raise InvalidArgument(f"tier: expected a mapping, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise InvalidArgument(f"tier: unknown field(s) {', '.join(unknown)}")
        missing = [f for f in ("name", "kind", "bucket") if f not in data]
        if missing:
            raise InvalidArgument(f"tier: missing field(s) {', '.join(missing)}")
        return cls(**data)


def chunk_key(spec: TierSpec, chunk_id: bytes) -> str:
    """The object key of a chunk in ``spec``'s bucket: ``{prefix}/chunks/ab/cd/<64 hex>``."""
    if not isinstance(chunk_id, bytes) or len(chunk_id) != ID_SIZE:
        raise InvalidArgument(f"chunk id must be {ID_SIZE} bytes")
    rel = "chunks/" + chunk_relpath(chunk_id.hex())
    return f"{spec.prefix}/{rel}" if spec.prefix else rel


def chunk_id_of_key(spec: TierSpec, key: str) -> bytes | None:
    """The chunk id :func:`chunk_key` named ``key`` after, or None if it names no chunk of
    ``spec`` (another prefix, a temp or probe object, a malformed name)."""
    head = f"{spec.prefix}/chunks/" if spec.prefix else "chunks/"
    if not key.startswith(head):
        return None
    parts = key[len(head) :].split("/")
    if len(parts) != 3:
        return None
    a, b, hexid = parts
    if not _HEX64_RE.fullmatch(hexid) or a != hexid[:2] or b != hexid[2:4]:
        return None
    return bytes.fromhex(hexid)


class TokenBucket:
    """A bandwidth limiter: ``rate_bytes_per_s`` on average, bursts of up to ``burst_bytes``.

    Pure and clock-free: the caller passes the time.  :meth:`delay_s` *reserves* the bytes
    (the bucket may go into debt, so a send larger than the burst still goes through, just
    later) and answers how long to wait before sending them; a caller that waits that long
    keeps every prefix of its sends within ``burst_bytes + rate * elapsed``.  Not
    thread-safe: callers sharing one hold a lock around :meth:`delay_s` (it is quick).
    """

    def __init__(self, rate_bytes_per_s: float | None, burst_bytes: int) -> None:
        if rate_bytes_per_s is not None and not (_is_number(rate_bytes_per_s) and rate_bytes_per_s >= 0):
            raise InvalidArgument(f"token bucket rate {rate_bytes_per_s!r} is not a number >= 0")
        if not (_is_int(burst_bytes) and burst_bytes > 0):
            raise InvalidArgument(f"token bucket burst {burst_bytes!r} is not a positive integer")
        self.rate_bytes_per_s = float(rate_bytes_per_s) if rate_bytes_per_s else None
        self.burst_bytes = burst_bytes
        self._tokens = float(burst_bytes)  # may be negative: bytes reserved ahead of the rate
        self._last_s: float | None = None

    def delay_s(self, now_s: float, nbytes: int) -> float:
        """Reserve ``nbytes`` at time ``now_s``; seconds to wait before sending them (0: now)."""
        if nbytes < 0:
            raise InvalidArgument(f"token bucket: negative byte count {nbytes}")
        rate = self.rate_bytes_per_s
        if rate is None:
            return 0.0
        if self._last_s is not None and now_s > self._last_s:
            self._tokens = min(float(self.burst_bytes), self._tokens + (now_s - self._last_s) * rate)
        # A clock that stepped back refills nothing (and does not move _last_s back).
        if self._last_s is None or now_s > self._last_s:
            self._last_s = now_s
        self._tokens -= nbytes
        if self._tokens >= 0:
            return 0.0
        # Waiting since _last_s (not now_s, which may be earlier after a clock step).
        return max(0.0, self._last_s - now_s) + (-self._tokens / rate)
