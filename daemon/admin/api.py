"""The admin REST API of one dfsd: ``/health``, Prometheus ``/metrics`` and ``/storage/...``.

:class:`AdminApi.handle` is a :mod:`daemon.http` handler.  Everything is JSON
in and out (``application/json``) except ``/metrics`` (Prometheus text);
errors are ``{"error": {"code": ..., "message": ...}}`` with a matching
status.  ``daemon/admin/openapi.py`` documents every route; a unit test validates
live responses against it, so the two must change together.

Invariants:

- Only ``GET /health`` answers without the bearer token (compared with
  :func:`hmac.compare_digest`).  An unauthenticated request gets 401 for
  every other path, known or not, so probing learns nothing about routes.
- The web console (``/ui/``, daemon/admin/console.py) logs in with a token and then calls
  this API with a session cookie instead of the header: same scope checks, and every
  change so made needs the session's ``X-CSRF-Token`` (403 otherwise).
- A token has a scope (daemon/admin/tokens.py): the first-run token is
  ``admin``; scoped tokens live hashed in metadata (a secondary has the
  primary check them).  :func:`daemon.admin.tokens.allowed` decides per
  (scope, method, route template); a refusal is 403.  A forwarded request
  was authenticated and scope-checked by the secondary that forwards it.
- Every handler is bounded: bodies are at most :data:`MAX_BODY_BYTES`
  (413 beyond), listings are capped, and probes of the disk run in worker
  threads under a timeout and a small limiter (a hung disk costs at most
  that many threads, never the event loop).
- Metadata writes run on the node's metadata thread (``node._m``);
  a read-check-write sequence runs as *one* call there, so no other write
  interleaves.  Point reads use the read-only connection (``node.reads``)
  directly, like the RPC inline handlers.
- The API takes the node as :class:`AdminNode`, naming only what it uses.
- Logs name the method, the route template and the status: never headers,
  bodies or query strings (tokens and S3 secrets must not reach a log), and
  ``GET /storage/config`` redacts every secret.
- Metric labels are route templates, never raw paths (bounded cardinality).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hmac
import json
import logging
import math
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

import daemon.admin.tokens as tokens
from daemon.admin.console import Console, ConsoleRefused, Totals
from daemon.admin.metrics import Metrics, MetricsSource, render
from daemon.admin.openapi import DEFAULT_POLICY, OPENAPI
from daemon.http import BodyError, Request, Response
from daemon.meta import CONSISTENCY_XATTR, REPLICAS_XATTR
from daemon.meta.tiers import TIER_MODES
from dfs import __version__
from dfs.core import config as config_mod
from dfs.core import s3grants
from dfs.core.config import Config
from dfs.core.errors import (
    ConfigError,
    DfsError,
    Exists,
    InternalError,
    InvalidArgument,
    NoAttribute,
    NotFound,
    PreconditionFailed,
    Unavailable,
    admin_status,
)
from dfs.core.namespace import ROOT_INO, Attr
from dfs.core.node_removal import removal_refusal
from dfs.core.s3names import is_bucket_name
from dfs.core.snapshot_schedule import format_schedule, parse_schedule

if TYPE_CHECKING:
    from daemon.cluster.membership import Membership
    from daemon.meta import MetaStore
    from dfs.client.cluster import Client

log = logging.getLogger("dfs.admin")
T = TypeVar("T")

MAX_BODY_BYTES = 1024 * 1024
JSON_TYPE = "application/json"
SNAPSHOT_DIR = ".snapshots"
MAX_SNAPSHOTS_LISTED = 10_000
# DELETE /storage/trash empties in batches of one transaction each, at most this many.
MAX_TRASH_BATCHES = 100_000
_READDIR_PAGE = 256
_PROBE_TIMEOUT_S = 5.0
_TOKEN_BYTES = 32
_REDACTED = "***"

NODE_STATES = ("active", "draining", "out")
CONSISTENCY_LEVELS = ("strong", "quorum", "eventual")
COMPRESSIONS = ("zstd", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Policy fields whose null means "the cluster default" ([cluster] replicas / consistency).
CLUSTER_DEFAULTED = ("replication", "consistency")

_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ZONE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_TIER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]")
_SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")

# Routes answered from metadata: a secondary forwards them to the metadata primary.
_PRIMARY_ROUTES = frozenset(
    {
        "/storage/nodes",
        "/storage/nodes/{node_id}",
        "/storage/volumes",
        "/storage/volumes/{name}",
        "/storage/snapshot",
        "/storage/snapshot/{volume}/{name}",
        "/storage/snapshot/{volume}/{name}/restore",
        "/storage/snapshot/{volume}/{name}/clone",
        "/storage/policy",
        "/storage/quotas",
        "/storage/trash",
        "/storage/trash/{volume}/{entry_id}/restore",
        "/storage/tokens",
        "/storage/tokens/{token_id}",
        "/storage/s3/keys",
        "/storage/s3/keys/{access_key}",
        "/storage/s3/keys/{access_key}/grants/{bucket}",
    }
)

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    409: "Conflict",
    411: "LengthRequired",
    413: "PayloadTooLarge",
    414: "URITooLong",
    415: "UnsupportedMediaType",
    431: "HeadersTooLarge",
    500: "InternalError",
    503: "ServiceUnavailable",
    507: "InsufficientStorage",
}


# -- token --------------------------------------------------------------------------------


def load_or_create_token(path: Path) -> str:
    """The admin bearer token stored at ``path``; created (32 random bytes) if absent.

    Blocking file I/O: call it before the event loop starts or through
    ``trio.to_thread.run_sync``.  The file is written mode 0600 under a temp
    name and hard-linked into place, so a reader never sees a partial token
    and two daemons starting at once agree on one token.  An operator may
    write their own token into the file (16+ printable characters).
    """
    for _ in range(3):
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read admin token {path}: {exc}") from None
        else:
            if len(text) < 16 or not text.isprintable() or any(c.isspace() for c in text):
                raise ConfigError(
                    f"{path}: admin token must be 16+ printable characters; delete it to regenerate"
                )
            mode = os.stat(path).st_mode
            if mode & 0o077:
                log.warning("admin token %s is readable by group or others (mode %o)", path, mode & 0o777)
            return text
        token = base64.urlsafe_b64encode(secrets.token_bytes(_TOKEN_BYTES)).rstrip(b"=").decode()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.write(fd, token.encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)
        except FileExistsError:
            continue  # another process created it first: read theirs
        finally:
            os.unlink(tmp)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return token
    raise ConfigError(f"cannot create admin token {path}: it keeps appearing and vanishing")


# -- errors and responses -------------------------------------------------------------


class ApiError(Exception):
    """An answer of the admin API's own HTTP contract, as ``{"error": {...}}`` with ``status``.

    Kept apart from :class:`dfs.core.errors.DfsError` on purpose: these are conditions of one HTTP
    exchange (401 with ``WWW-Authenticate``, 405 with ``Allow``, a malformed target, query or
    JSON body, a body too large or too slow, a setting that needs a restart, refusing to remove
    the node serving the request), with codes and headers of their own, no errno, and no
    meaning on the RPC wire, the mount or the CLI.  Errors of dfs itself are raised as
    ``DfsError``s, and their status comes from ``dfs.core.errors.TABLE``."""

    def __init__(self, status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


def _body(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def json_response(status: int, doc: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    base = [
        ("content-type", JSON_TYPE),
        # Admin answers describe live state and may name internals: never cache them anywhere.
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ]
    return Response(status, base + (headers or []), _body(doc))


def error_response(status: int, message: str) -> Response:
    """A JSON error body; also pass this as ``HttpServer(error_response=...)`` so protocol
    errors (malformed request, headers too large, body timeout) look like API errors."""
    return _error(status, _REASONS.get(status, "Error"), message)


def _error(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


def _no_content() -> Response:
    return Response(204, [("cache-control", "no-store")], b"")


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _snapshot_name(name: Any) -> str:
    return _matching(
        "name", name, _SNAPSHOT_NAME_RE, "1-255 characters of A-Z a-z 0-9 . _ + -, starting alphanumeric"
    )


def _snapshot_doc(row: Mapping[str, Any]) -> dict[str, Any]:
    """A registry row (daemon/meta/snapshots.py) as the API shows it."""
    return {
        "volume": row["volume"],
        "name": row["name"],
        "path": f"/{SNAPSHOT_DIR}/{row['volume']}/{row['name']}",
        "created": _iso(row["created_ns"]),
        "created_ns": row["created_ns"],
        "origin": row["origin"],
        "files": row["files"],
        "bytes": row["bytes"],
    }


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# -- field validation -------------------------------------------------------------------


def _check_fields(body: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidArgument(f"unknown field(s) in {what}: {', '.join(unknown)}")


def _int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgument(f"{key} must be an integer in {lo}..{hi}")
    return value


def _enum(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgument(f"{key} must be one of {', '.join(choices)}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{key} must be true or false")
    return value


def _matching(key: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InvalidArgument(f"{key} must be {what}")
    return value


def _days(key: str, value: Any) -> float | int:
    """A number of days 0..MAX_TRASH_DAYS (fractions allowed; 0: off)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= config_mod.MAX_TRASH_DAYS
    ):
        raise InvalidArgument(f"{key} must be a number of days 0..{config_mod.MAX_TRASH_DAYS} (0: off)")
    return value


def _policy_value(key: str, value: Any) -> Any:
    if value is None and key in CLUSTER_DEFAULTED:
        return None  # unset: the cluster default applies
    if key == "replication":
        return _int(key, value, 1, 7)
    if key == "consistency":
        return _enum(key, value, CONSISTENCY_LEVELS)
    if key == "compression":
        return _enum(key, value, COMPRESSIONS)
    if key == "encryption":
        return _bool(key, value)
    if value is None:
        return None  # the remaining fields are nullable: null means "no quota / no schedule"
    if key == "compression_level":
        return _int(key, value, 1, 19)
    if key in ("quota_bytes", "quota_inodes"):  # the volume directory's quota (daemon/meta/quotas.py)
        return _int(key, value, 0, 2**63 - 1)
    if key == "trash_days":  # daemon/meta/trash.py; null: [storage] trash_days
        return _days(key, value)
    if key == "snapshot_schedule":
        try:  # stored in canonical form: what the scheduler duty parses again
            return format_schedule(parse_schedule(value))
        except ValueError as exc:
            raise InvalidArgument(
                f"snapshot_schedule: {exc} (e.g. 'hourly=24,daily=7'; null: none)"
            ) from None
    if key == "tiers":  # that each exists is checked by metadata (daemon/meta/tiers.py)
        if not isinstance(value, list) or not 1 <= len(value) <= 4 or len(set(value)) != len(value):
            raise InvalidArgument("tiers must be a list of 1..4 distinct tier names (null: none)")
        return [_matching(key, v, _TIER_NAME_RE, "tier names (a-z 0-9 -)") for v in value]
    if key == "tier_mode":
        return _enum(key, value, TIER_MODES)
    if key == "tier_paths":
        if not isinstance(value, list) or not 1 <= len(value) <= 16:
            raise InvalidArgument("tier_paths must be a list of 1..16 paths inside the volume (null: all)")
        for v in value:
            if not isinstance(v, str) or not v.startswith("/") or len(v) > 4096 or "/../" in v + "/":
                raise InvalidArgument("tier_paths entries must be paths inside the volume such as /logs")
        return value
    if key == "tier_after_days":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 36500:
            raise InvalidArgument("tier_after_days must be a number of days 0..36500 (null: 0)")
        return value
    if key == "snapshot_retention":
        # Retention is per tier, in snapshot_schedule; manual snapshots stay until deleted.
        raise InvalidArgument(
            "snapshot_retention is not used: give how many to keep per tier in snapshot_schedule "
            "(e.g. 'daily=7'); manual snapshots are kept until deleted"
        )
    raise AssertionError(key)


def _usage_doc(quota: Mapping[str, Any]) -> dict[str, Any]:
    stored = int(quota["used_stored_bytes"])
    return {
        "bytes": int(quota["used_bytes"]),
        "inodes": int(quota["used_inodes"]),
        "stored_bytes": stored,
        # logical / stored: what compression (and sparse files) saved; null with nothing stored.
        "compression_ratio": round(int(quota["used_bytes"]) / stored, 3) if stored else None,
    }


def _quota_doc(quota: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "path": quota["path"],
        "max_bytes": quota["max_bytes"],
        "max_inodes": quota["max_inodes"],
        "usage": _usage_doc(quota),
    }


def _policy(body: Mapping[str, Any]) -> dict[str, Any]:
    """The policy fields present in ``body``, validated."""
    return {key: _policy_value(key, body[key]) for key in DEFAULT_POLICY if key in body}


def _full_policy(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored policy with defaults for fields it lacks (rows written by older code or other tools)."""
    return {key: stored.get(key, default) for key, default in DEFAULT_POLICY.items()}


def _stored_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """What a volume row keeps: the cluster-defaulted fields only when set, so "unset" stays
    unset (MetaStore.policy and Client.policy then fall back to the cluster default)."""
    return {k: v for k, v in policy.items() if not (k in CLUSTER_DEFAULTED and v is None)}


def _effective_policy(stored: Mapping[str, Any], cluster: config_mod.ClusterConfig) -> dict[str, Any]:
    """A volume's policy as the API shows it: the values in effect, and where the cluster-defaulted
    ones come from ("volume" or "cluster")."""
    out = _full_policy(stored)
    defaults = {"replication": cluster.replicas, "consistency": cluster.consistency}
    for key, default in defaults.items():
        out[f"{key}_source"] = "cluster" if out[key] is None else "volume"
        if out[key] is None:
            out[key] = default
    return out


def _address(key: str, value: Any) -> str:
    if isinstance(value, str) and len(value) <= 260:
        host, sep, port = value.rpartition(":")
        if sep and _HOST_RE.fullmatch(host) and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise InvalidArgument(f"{key} must be HOST:PORT")


def _weight(key: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= 1e6
    ):
        raise InvalidArgument(f"{key} must be a number in (0, 1000000]")
    return float(value)


def _node_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "address" in body:
        out["address"] = _address("address", body["address"])
    if "zone" in body:
        out["zone"] = _matching("zone", body["zone"], _ZONE_RE, "1-63 characters of A-Z a-z 0-9 . _ -")
    if "capacity_weight" in body:
        out["capacity_weight"] = _weight("capacity_weight", body["capacity_weight"])
    if "state" in body:
        out["state"] = _enum("state", body["state"], NODE_STATES)
    return out


def _is_secret(option: str) -> bool:
    return "secret" in option or "token" in option or "password" in option or option.endswith("key_file")


# -- routing ----------------------------------------------------------------------------

RouteHandler = Callable[[Request, dict[str, str]], Awaitable[Response]]


@dataclasses.dataclass(frozen=True)
class Route:
    template: str  # "/storage/volumes/{name}": also the metrics label
    handlers: Mapping[str, RouteHandler]
    public: bool = False

    @property
    def parts(self) -> list[str]:
        return self.template.strip("/").split("/")

    def match(self, segments: list[str]) -> dict[str, str] | None:
        parts = self.parts
        if len(parts) != len(segments):
            return None
        params: dict[str, str] = {}
        for part, seg in zip(parts, segments, strict=True):
            if part.startswith("{"):
                if not seg:
                    return None
                params[part[1:-1]] = seg
            elif part != seg:
                return None
        return params


def _segments(raw_path: str) -> list[str]:
    """Percent-decoded path segments; a trailing slash is ignored."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/"):
        raise ApiError(400, "BadRequest", "request target must be an absolute path")
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    try:
        return [urllib.parse.unquote(seg, errors="strict") for seg in path[1:].split("/")]
    except UnicodeDecodeError:
        raise ApiError(400, "BadRequest", "path is not valid percent-encoded UTF-8") from None


class AdminNode(MetricsSource, Protocol):
    """What the admin API uses of its node (the daemon's service satisfies it structurally)."""

    @property
    def started_at(self) -> float: ...

    @property
    def data(self) -> Path: ...

    @property
    def reads(self) -> MetaStore: ...

    @property
    def membership(self) -> Membership | None:
        """The gossip runner (None: gossip off or not started yet): the console's node states."""
        ...

    def local_client(self) -> Client:
        """A filesystem client calling this daemon in-process (a secondary's reaches the primary)."""
        ...

    async def _m(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the metadata thread: every write, and a read-check-write as one call."""
        ...

    async def forward_admin(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, remote: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Have the metadata primary's admin API answer a request (on a secondary)."""
        ...

    def ensure_volume_key(self, meta: MetaStore, volume_ino: int) -> int:
        """An encrypted volume's data key id, made (wrapped under the master key) if it has none;
        metadata thread."""
        ...

    async def take_snapshot(self, volume: str, name: str) -> dict[str, Any]:
        """Snapshot ``name`` of ``volume``, copied in bounded batches (daemon/service/snapshots.py)."""
        ...

    async def admin_token_scope(self, token: str) -> str | None:
        """The scope of a scoped admin token (daemon/admin/tokens.py), or None if it is not one."""
        ...

    async def s3_key_create(self, description: str, allow: list[list[str]]) -> dict[str, Any]:
        """A new S3 key with grants ``allow`` ([bucket, perm] pairs), on the primary."""
        ...

    async def node_repair_status(self, node_id: str) -> dict[str, Any] | None:
        """Node ``node_id``'s repair counters (``sys.repair_status``); None: it cannot be asked."""
        ...


class AdminApi:
    """The admin endpoint of one daemon; :meth:`handle` is its HTTP handler."""

    def __init__(self, node: AdminNode, cfg: Config, metrics: Metrics, *, token: str) -> None:
        if not token:
            raise ConfigError("the admin API needs a token")
        self.node = node
        self.cfg = cfg  # the effective config: PUT /storage/config replaces it with live changes
        self.metrics = metrics
        self._token = token.encode()
        # Disk probes of /storage/health: two at most in flight, so a hung disk strands two threads.
        self._probe_limiter = trio.CapacityLimiter(2)
        # The web console under /ui/ (daemon/admin/console.py): pages over this same API.
        self.console = Console(
            node_id=cfg.node_id,
            https=cfg.admin.https,
            api_get=self._console_get,
            scope_of=self._token_scope,
            members=self._members,
            repair_status=node.node_repair_status,
            totals=self._totals,
            loop_lag_s=lambda: self.metrics.last_loop_lag_s,
        )
        self.routes: tuple[Route, ...] = (
            Route("/health", {"GET": self._health}, public=True),
            Route("/metrics", {"GET": self._prometheus}),
            Route("/storage/health", {"GET": self._storage_health}),
            Route("/storage/metrics", {"GET": self._storage_metrics}),
            Route("/storage/nodes", {"GET": self._list_nodes, "POST": self._create_node}),
            Route(
                "/storage/nodes/{node_id}",
                {"GET": self._get_node, "PUT": self._update_node, "DELETE": self._delete_node},
            ),
            Route("/storage/volumes", {"GET": self._list_volumes, "POST": self._create_volume}),
            Route(
                "/storage/volumes/{name}",
                {"GET": self._get_volume, "PUT": self._update_volume, "DELETE": self._delete_volume},
            ),
            Route("/storage/snapshot", {"GET": self._list_snapshots, "POST": self._create_snapshot}),
            Route("/storage/snapshot/{volume}/{name}", {"DELETE": self._delete_snapshot}),
            Route("/storage/snapshot/{volume}/{name}/restore", {"POST": self._restore_snapshot}),
            Route("/storage/snapshot/{volume}/{name}/clone", {"POST": self._clone_snapshot}),
            Route("/storage/policy", {"GET": self._get_policy, "PUT": self._put_policy}),
            Route(
                "/storage/quotas",
                {"GET": self._get_quotas, "PUT": self._put_quota, "DELETE": self._delete_quota},
            ),
            Route("/storage/trash", {"GET": self._list_trash, "DELETE": self._empty_trash}),
            Route("/storage/trash/{volume}/{entry_id}/restore", {"POST": self._restore_trash}),
            Route("/storage/config", {"GET": self._get_config, "PUT": self._put_config}),
            Route("/storage/openapi.json", {"GET": self._openapi}),
            Route("/storage/tokens", {"GET": self._list_tokens, "POST": self._create_token}),
            Route("/storage/tokens/{token_id}", {"DELETE": self._revoke_token}),
            Route("/storage/s3/keys", {"GET": self._list_s3_keys, "POST": self._create_s3_key}),
            Route("/storage/s3/keys/{access_key}", {"DELETE": self._revoke_s3_key}),
            Route(
                "/storage/s3/keys/{access_key}/grants/{bucket}",
                {"PUT": self._grant_s3_key, "DELETE": self._revoke_s3_grant},
            ),
        )

    # -- dispatch ---------------------------------------------------------------------
    async def handle(self, req: Request) -> Response:
        if Console.owns(req.path):
            return await self._console(req)
        return await self._dispatch(req, forwarded=False)

    async def run(self) -> None:
        """The API's background work (the console's history sampler); runs until cancelled."""
        await self.console.run()

    # -- the web console (daemon/admin/console.py) -------------------------------------------
    async def _console(self, req: Request) -> Response:
        try:
            resp = await self.console.handle(req)
        except Exception:
            log.exception("console %s failed", req.method)
            resp = Response(500, [("content-type", "text/plain"), ("cache-control", "no-store")], b"error\n")
        self.metrics.observe_admin("/ui", resp.status)  # one label for every page: bounded
        return resp

    async def _console_get(self, target: str) -> tuple[int, Any]:
        """GET ``target`` of this API in-process, as the first-run token (the console checked its
        session's scope first): (status, parsed JSON or None).  A secondary forwards as usual."""
        auth = [("authorization", "Bearer " + self._token.decode())]
        resp = await self._dispatch(Request.buffered("GET", target, auth, b"", "console"), forwarded=False)
        body = resp.body if isinstance(resp.body, bytes) else b""
        return resp.status, json.loads(body) if body.startswith((b"{", b"[")) else None

    async def _token_scope(self, presented: str) -> str | None:
        """The scope of an admin token (the first-run one: admin), or None if it is none."""
        if hmac.compare_digest(presented.encode(), self._token):
            return "admin"
        return await self.node.admin_token_scope(presented)

    def _members(self) -> list[dict[str, Any]]:
        membership = self.node.membership
        if membership is not None:
            return membership.members()
        return [{"node_id": self.cfg.node_id, "status": "alive", "self": True, "zone": self.cfg.node.zone}]

    async def _totals(self) -> Totals:
        def counter(c: Any) -> int:
            # Public prometheus API: a Counter's samples are <name>_total and <name>_created.
            return int(sum(s.value for m in c.collect() for s in m.samples if s.name.endswith("_total")))

        repair = await self.node.node_repair_status(self.cfg.node_id)
        return Totals(
            ops=sum(self.metrics.requests_served.values()),
            s3_in_bytes=counter(self.metrics.s3_bytes_in),
            s3_out_bytes=counter(self.metrics.s3_bytes_out),
            repair_bytes=int((repair or {}).get("bytes_moved", 0) or 0),
        )

    async def forwarded(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, remote: str
    ) -> Response:
        """A request a secondary's admin API took (and authenticated) and forwards here, to the
        metadata primary, over the cluster's RPC (see sys.admin_forward)."""
        return await self._dispatch(Request.buffered(method, target, headers, body, remote), forwarded=True)

    async def _dispatch(self, req: Request, *, forwarded: bool) -> Response:
        started = time.perf_counter()
        label = "other"
        try:
            found = self._route(req)
            if found is None:
                await self._authenticate(req)  # unknown paths answer 401 until the caller proves who they are
                raise NotFound("no such route")
            route, params = found
            label = route.template
            if not route.public and not forwarded:
                # A forwarded request was authenticated and its scope checked by the secondary.
                scope = await self._authenticate(req)
                if not tokens.allowed(scope, req.method, route.template):
                    raise ApiError(403, "Forbidden", f"a {scope} token may not {req.method} {route.template}")
            handler = route.handlers.get(req.method)
            if handler is None:
                allow = ", ".join(route.handlers)
                raise ApiError(
                    405, "MethodNotAllowed", f"{req.method} is not allowed here", [("allow", allow)]
                )
            if route.template in _PRIMARY_ROUTES and not self.node.is_primary and not forwarded:
                resp = await self._forward(req)
            else:
                resp = await handler(req, params)
        except ApiError as exc:
            resp = _error(exc.status, exc.code, exc.message, exc.headers)
        except DfsError as exc:
            status = admin_status(exc)
            if status == 500:
                log.error("admin %s %s failed: %s", req.method, label, exc.message)
            resp = _error(status, exc.code, exc.message)
        except Exception as exc:
            log.exception("admin %s %s failed", req.method, label)
            resp = _error(500, "InternalError", f"internal error ({type(exc).__name__})")
        self.metrics.observe_admin(label, resp.status)
        log.debug(
            "admin %s %s -> %d (%.1f ms)",
            req.method,
            label,
            resp.status,
            (time.perf_counter() - started) * 1e3,
        )
        return resp

    async def _forward(self, req: Request) -> Response:
        """Have the metadata primary's admin API answer (routes backed by metadata)."""
        try:
            body = await req.read_body(MAX_BODY_BYTES)
        except BodyError as exc:
            raise ApiError(exc.status, _REASONS.get(exc.status, "BadRequest"), exc.message) from None
        # Only what the handlers read: never the Authorization header (checked here already).
        headers = [(k, v) for k, v in req.headers if k == "content-type"]
        status, rheaders, rbody = await self.node.forward_admin(
            req.method, req.target, headers, body, req.remote
        )
        return Response(int(status), [(str(k), str(v)) for k, v in rheaders], bytes(rbody))

    def _route(self, req: Request) -> tuple[Route, dict[str, str]] | None:
        segments = _segments(req.path)
        for route in self.routes:
            params = route.match(segments)
            if params is not None:
                return route, params
        return None

    async def _authenticate(self, req: Request) -> str:
        """The scope of the bearer token presented (``admin`` for the first-run token); 401 if none."""
        header = req.header("authorization")
        if header is None:
            # The web console's pages call this API with their session cookie instead.
            try:
                session_scope = await self.console.session_scope(req)
            except ConsoleRefused as exc:
                raise ApiError(403, "Forbidden", str(exc)) from None
            if session_scope is not None:
                return session_scope
            raise ApiError(
                401, "Unauthorized", "missing bearer token", [("www-authenticate", 'Bearer realm="dfs"')]
            )
        scheme, _, presented = header.strip().partition(" ")
        presented = presented.strip()
        scope: str | None = None
        if scheme.lower() == "bearer":
            if hmac.compare_digest(presented.encode(), self._token):
                scope = "admin"
            else:
                scope = await self.node.admin_token_scope(presented)
        if scope is None:
            raise ApiError(
                401,
                "Unauthorized",
                "invalid bearer token",
                [("www-authenticate", 'Bearer realm="dfs", error="invalid_token"')],
            )
        return scope

    async def _json_body(self, req: Request) -> dict[str, Any]:
        length = req.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise ApiError(413, "PayloadTooLarge", f"request body exceeds {MAX_BODY_BYTES} bytes")
        try:
            raw = await req.read_body(MAX_BODY_BYTES)
        except BodyError as exc:  # 413 over the limit, 408 client stalled, 400 truncated
            raise ApiError(exc.status, _REASONS.get(exc.status, "BadRequest"), exc.message) from None
        try:
            doc = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError and undecodable bytes; RecursionError, nesting bombs.
            detail = str(exc) if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise ApiError(400, "InvalidJSON", f"request body is not valid JSON: {detail}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "InvalidJSON", "request body must be a JSON object")
        return doc

    @staticmethod
    def _query(req: Request, allowed: tuple[str, ...]) -> dict[str, str]:
        try:
            pairs = urllib.parse.parse_qsl(
                req.query, keep_blank_values=True, max_num_fields=16, errors="strict"
            )
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "BadRequest", "malformed query string") from None
        out = dict(pairs)
        unknown = sorted(set(out) - set(allowed))
        if unknown:
            raise InvalidArgument(f"unknown query parameter(s): {', '.join(unknown)}")
        return out

    def routes_table(self) -> dict[str, tuple[str, ...]]:
        """Route template -> methods (the OpenAPI test checks the document covers exactly these)."""
        return {route.template: tuple(route.handlers) for route in self.routes}

    # -- helpers ----------------------------------------------------------------------
    async def _probe(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` in a worker thread; None if it has not returned within the probe timeout."""
        with trio.move_on_after(_PROBE_TIMEOUT_S):
            return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=self._probe_limiter)
        return None

    def _uptime_s(self) -> float:
        return round(time.time() - self.node.started_at, 1)

    # -- liveness, health, metrics ----------------------------------------------------------
    async def _health(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, {"status": "ok"})

    async def _prometheus(self, req: Request, params: dict[str, str]) -> Response:
        # Collection walks every metric and reads /proc: CPU work kept off the event loop.
        body, content_type = await trio.to_thread.run_sync(render, self.metrics.registry)
        return Response(200, [("content-type", content_type), ("cache-control", "no-store")], body)

    async def _storage_health(self, req: Request, params: dict[str, str]) -> Response:
        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool, detail: str) -> None:
            checks.append({"name": name, "ok": ok, "detail": detail})

        meta_ok = True
        try:
            if self.node.is_primary:
                # A point read on the read-only connection: microseconds when SQLite is healthy.
                self.node.reads.getattr(ROOT_INO)
                check("metadata", True, "metadata database answers")
            else:
                # A secondary serves metadata through the primary: that is what must answer.
                with trio.move_on_after(_PROBE_TIMEOUT_S) as waited:
                    await self.node.local_client().getattr(ROOT_INO)
                if waited.cancelled_caught:
                    raise Unavailable(f"the metadata primary did not answer within {_PROBE_TIMEOUT_S:g} s")
                check("metadata", True, "the metadata primary answers")
        except DfsError as exc:
            meta_ok = False
            check("metadata", False, f"metadata read failed: {exc.message}")

        reserve = self.cfg.storage.reserve_bytes
        try:
            stats = await self._probe(self.node.chunks.stats)
            if stats is None:
                check("chunk_store_space", False, f"chunk store did not answer within {_PROBE_TIMEOUT_S:g} s")
            else:
                avail = stats["avail_bytes"]
                check(
                    "chunk_store_space",
                    avail > reserve,
                    f"{avail} bytes available, reserve {reserve}",
                )
        except DfsError as exc:
            check("chunk_store_space", False, exc.message)

        data = self.node.data
        writable = await self._probe(lambda: os.access(data, os.W_OK))
        if writable is None:
            check("data_dir_writable", False, f"{data} did not answer within {_PROBE_TIMEOUT_S:g} s")
        else:
            check("data_dir_writable", writable, f"{data} is {'writable' if writable else 'not writable'}")

        ready = all(c["ok"] for c in checks)
        status = "ok" if ready else ("degraded" if meta_ok else "down")
        doc = {"status": status, "live": True, "ready": ready, "checks": checks}
        return json_response(200 if ready else 503, doc)

    async def _storage_metrics(self, req: Request, params: dict[str, str]) -> Response:
        snap = await self.metrics.current(self.node)
        capacity = {
            key: int(snap.store.get(key, 0))
            for key in (
                "total_bytes",
                "free_bytes",
                "avail_bytes",
                "used_bytes",
                "chunk_count",
                "checksum_failures",
            )
        }
        capacity["reserve_bytes"] = self.cfg.storage.reserve_bytes
        doc = {
            "node_id": self.cfg.node_id,
            "version": __version__,
            "uptime_s": self._uptime_s(),
            "capacity": capacity,
            "namespace": {key: int(value) for key, value in snap.counts.items()},
            "requests": dict(self.metrics.requests_served),
            "event_loop_lag_s": self.metrics.last_loop_lag_s,
            "refreshed": _iso(int((snap.refreshed_at or time.time()) * 1e9)),
        }
        return json_response(200, doc)

    # -- nodes ------------------------------------------------------------------------
    def _node_doc(
        self, node_id: str, row: Mapping[str, Any] | None, store: Mapping[str, int] | None
    ) -> dict[str, Any]:
        is_self = node_id == self.cfg.node_id
        row = row or {}
        if is_self:
            cfg = self.cfg
            base: dict[str, Any] = {
                "address": cfg.rpc.listen,
                "zone": cfg.node.zone,
                "capacity_weight": 1.0,
                "state": "active",
            }
            s3_address = cfg.s3.listen if cfg.s3.enabled else None
            admin_address = cfg.admin.listen if cfg.admin.enabled else None
        else:
            base = {"address": "", "zone": "default", "capacity_weight": 1.0, "state": "active"}
            s3_address = admin_address = None
        for key in base:
            if key in row and not (is_self and key == "address"):  # our address is [rpc] listen
                base[key] = row[key]
        capacity = None
        if is_self and store:
            capacity = {k: int(store.get(k, 0)) for k in ("total_bytes", "avail_bytes", "used_bytes")}
        updated = row.get("updated_ns")
        return {
            "node_id": node_id,
            **base,
            "capacity_weight": float(base["capacity_weight"]),
            "self": is_self,
            "registered": bool(row),
            "updated": _iso(updated) if isinstance(updated, int) else None,
            "s3_address": s3_address,
            "admin_address": admin_address,
            "capacity": capacity,
        }

    async def _store_snapshot(self) -> Mapping[str, int] | None:
        try:
            return (await self.metrics.current(self.node)).store
        except DfsError as exc:  # capacity is a detail of a node listing: never fail the listing for it
            log.warning("chunk store stats failed: %s", exc.message)
            return None

    async def _list_nodes(self, req: Request, params: dict[str, str]) -> Response:
        rows = {str(row["node_id"]): row for row in self.node.reads.list_nodes()}
        store = await self._store_snapshot()
        me = self.cfg.node_id
        nodes = [self._node_doc(me, rows.pop(me, None), store)]
        nodes += [self._node_doc(node_id, row, None) for node_id, row in sorted(rows.items())]
        return json_response(200, {"nodes": nodes})

    async def _get_node(self, req: Request, params: dict[str, str]) -> Response:
        node_id = params["node_id"]
        row = self.node.reads.get_node(node_id)
        if node_id == self.cfg.node_id:
            return json_response(200, self._node_doc(node_id, row, await self._store_snapshot()))
        if row is None:
            raise NotFound(f"no node {node_id!r}")
        return json_response(200, self._node_doc(node_id, row, None))

    async def _create_node(self, req: Request, params: dict[str, str]) -> Response:
        body = await self._json_body(req)
        _check_fields(body, ("node_id", "address", "zone", "capacity_weight", "state"), "node")
        for key in ("node_id", "address"):
            if key not in body:
                raise InvalidArgument(f"{key} is required")
        node_id = _matching("node_id", body["node_id"], _NODE_ID_RE, "1-63 characters of A-Z a-z 0-9 . _ -")
        info = {"zone": "default", "capacity_weight": 1.0, "state": "active", **_node_fields(body)}
        if node_id == self.cfg.node_id:
            raise Exists(f"node {node_id!r} is this node; change it with PUT")
        meta = self.node.meta

        def create() -> dict[str, Any]:
            if meta.get_node(node_id) is not None:
                raise Exists(f"node {node_id!r} is already registered")
            return meta.put_node(node_id, info)

        row = await self.node._m(create)
        path = "/storage/nodes/" + urllib.parse.quote(node_id, safe="")
        return json_response(201, self._node_doc(node_id, row, None), [("location", path)])

    async def _update_node(self, req: Request, params: dict[str, str]) -> Response:
        node_id = params["node_id"]
        body = await self._json_body(req)
        _check_fields(body, ("address", "zone", "capacity_weight", "state"), "node update")
        changes = _node_fields(body)
        is_self = node_id == self.cfg.node_id
        if is_self and "address" in changes:
            raise InvalidArgument("this node's address is [rpc] listen in dfs.conf")
        cfg = self.cfg
        meta = self.node.meta

        def update() -> dict[str, Any]:
            row = meta.get_node(node_id)
            if row is None and not is_self:
                raise NotFound(f"no node {node_id!r}")
            if row is None:  # this node, first change: start from what dfs.conf says
                row = {"zone": cfg.node.zone, "capacity_weight": 1.0, "state": "active"}
            info = {k: v for k, v in row.items() if k not in ("node_id", "updated_ns")}
            return meta.put_node(node_id, {**info, **changes})

        row = await self.node._m(update)
        store = await self._store_snapshot() if is_self else None
        return json_response(200, self._node_doc(node_id, row, store))

    async def _delete_node(self, req: Request, params: dict[str, str]) -> Response:
        """Remove a node from the layout under the rule ``dfs node remove`` applies
        (dfs/core/node_removal.py); ``?force=true`` skips its data checks, as ``--force`` does."""
        force = self._query(req, ("force",)).get("force", "false").lower()
        if force not in ("true", "false"):
            raise InvalidArgument("force must be true or false")
        node_id = params["node_id"]
        if node_id == self.cfg.node_id:
            raise ApiError(409, "Conflict", "refusing to remove the node serving this request")
        row = self.node.reads.get_node(node_id)
        if row is None:
            raise NotFound(f"no node {node_id!r}")
        state = str(row.get("state") or "active")
        status = None if force == "true" else await self.node.node_repair_status(node_id)
        epoch = int(self.node.reads.layout()["epoch"])
        why = removal_refusal(node_id, state, status, epoch, force=force == "true")
        if why is not None:
            raise ApiError(409, "Conflict", why + ("" if state == "active" else " (?force=true)"))
        meta = self.node.meta

        def remove() -> None:
            # Checked again in the transaction: the state may have changed meanwhile.
            meta.remove_node(node_id)

        try:
            await self.node._m(remove)
        except PreconditionFailed as exc:
            raise ApiError(409, "Conflict", exc.message) from None
        return _no_content()

    # -- volumes ----------------------------------------------------------------------
    def _volume_doc(self, vol: Mapping[str, Any]) -> dict[str, Any]:
        name = str(vol["name"])
        doc = {
            "name": name,
            "path": "/" + name,
            "created": _iso(int(vol["created_ns"])),
            "policy": _effective_policy(vol.get("policy") or {}, self.cfg.cluster),
        }
        # Usage from the volume's quota row (kept incrementally: one row read, no walk).
        quota = self.node.reads.get_quota(int(vol["ino"]))
        if quota is not None:
            doc["usage"] = _usage_doc(quota)
        return doc

    # -- quotas -----------------------------------------------------------------------
    async def _get_quotas(self, req: Request, params: dict[str, str]) -> Response:
        path = self._query(req, ("path",)).get("path")
        meta = self.node.meta
        if path is None:
            found = await self.node._m(meta.quota_list_paths)
            return json_response(200, {"quotas": [_quota_doc(q) for q in found]})
        return json_response(200, _quota_doc(await self.node._m(meta.quota_get_path, path)))

    async def _put_quota(self, req: Request, params: dict[str, str]) -> Response:
        path = self._query(req, ("path",)).get("path")
        body = await self._json_body(req)
        _check_fields(body, ("path", "max_bytes", "max_inodes"), "quota")
        path = body.get("path", path)
        if not isinstance(path, str):
            raise InvalidArgument("path is required (query or body), e.g. /volume/dir")
        limits: dict[str, int | None] = {}
        for key in ("max_bytes", "max_inodes"):
            if key in body:
                limits[key] = None if body[key] is None else _int(key, body[key], 0, 2**63 - 1)
        if not limits:
            raise InvalidArgument("name at least one of max_bytes, max_inodes (null: no limit)")
        doc = await self.node._m(self.node.meta.quota_set_path, path, limits)
        return json_response(200, _quota_doc(doc))

    async def _delete_quota(self, req: Request, params: dict[str, str]) -> Response:
        path = self._query(req, ("path",)).get("path")
        if path is None:
            raise InvalidArgument("path is required, e.g. ?path=/volume/dir")
        await self.node._m(self.node.meta.quota_clear_path, path)
        return _no_content()

    # -- trash (daemon/meta/trash.py) -----------------------------------------------------
    async def _list_trash(self, req: Request, params: dict[str, str]) -> Response:
        volume = self._query(req, ("volume",)).get("volume") or None
        entries = await self.node._m(self.node.meta.trash_list, volume)
        usage = await self.node._m(self.node.meta.trash_usage)
        return json_response(200, {"volume": volume, "entries": entries, "usage": usage})

    async def _empty_trash(self, req: Request, params: dict[str, str]) -> Response:
        query = self._query(req, ("volume", "older_than_days"))
        volume = query.get("volume") or None
        older: float | None = None
        if query.get("older_than_days") is not None:
            try:
                older = float(query["older_than_days"])
            except ValueError:
                raise InvalidArgument("older_than_days must be a number of days") from None
            _days("older_than_days", older)
        purged = 0
        for _ in range(MAX_TRASH_BATCHES):  # each batch is one bounded transaction
            got = await self.node._m(self.node.meta.trash_empty, volume, older)
            purged += int(got["purged"])
            if not got["more"]:
                break
        return json_response(200, {"volume": volume, "purged": purged})

    async def _restore_trash(self, req: Request, params: dict[str, str]) -> Response:
        """Back to where it was deleted, or ``{"to": "/volume/dir/name"}``."""
        volume = params["volume"]
        try:
            entry_id = int(params["entry_id"])
        except ValueError:
            raise InvalidArgument("a trash entry id is an integer") from None
        body = await self._json_body(req) if req.content_length else {}
        _check_fields(body, ("to",), "trash restore")
        to = body.get("to")
        if to is not None and not isinstance(to, str):
            raise InvalidArgument("to must be a path such as /volume/dir/name")
        doc = await self.node._m(self.node.meta.trash_restore, volume, entry_id, to)
        return json_response(200, doc)

    async def _list_volumes(self, req: Request, params: dict[str, str]) -> Response:
        volumes = [self._volume_doc(v) for v in self.node.reads.list_volumes()]
        return json_response(200, {"volumes": volumes})

    async def _get_volume(self, req: Request, params: dict[str, str]) -> Response:
        vol = self.node.reads.get_volume(params["name"])
        if vol is None:
            raise NotFound(f"no volume {params['name']!r}")
        return json_response(200, self._volume_doc(vol))

    async def _create_volume(self, req: Request, params: dict[str, str]) -> Response:
        body = await self._json_body(req)
        _check_fields(body, ("name", "adopt", *DEFAULT_POLICY), "volume")
        name = body.get("name")
        if not isinstance(name, str) or not is_bucket_name(name):
            raise InvalidArgument(
                "name must be 3-63 characters of a-z 0-9 . -, starting and ending with a letter or digit "
                "(S3 bucket rules)",
            )
        adopt = _bool("adopt", body.get("adopt", False))
        policy = _stored_policy({**DEFAULT_POLICY, **_policy(body)})
        meta = self.node.meta

        def create() -> dict[str, Any] | None:
            if adopt:
                meta.adopt_volume(name, policy)
            else:
                meta.create_volume(name, policy, mode=0o755, uid=0, gid=0)
            vol = meta.get_volume(name)
            if vol is not None and policy["encryption"]:
                self.node.ensure_volume_key(meta, int(vol["ino"]))
            return vol

        try:
            vol = await self.node._m(create)
        except Exists:
            hint = "" if adopt else ' (to make an existing directory a volume, POST with "adopt": true)'
            raise Exists(f"{name!r} already exists{hint}") from None
        except NotFound:
            raise NotFound(f"no top-level directory {name!r} to adopt") from None
        if vol is None:  # renamed away between the two steps? impossible in one metadata call
            raise InternalError(f"volume {name!r} vanished after creation")
        path = "/storage/volumes/" + urllib.parse.quote(name, safe="")
        return json_response(201, self._volume_doc(vol), [("location", path)])

    async def _update_volume(self, req: Request, params: dict[str, str]) -> Response:
        name = params["name"]
        body = await self._json_body(req)
        _check_fields(body, tuple(DEFAULT_POLICY), "volume policy")
        changes = _policy(body)
        meta = self.node.meta

        def update() -> dict[str, Any]:
            vol = meta.get_volume(name)
            if vol is None:
                raise NotFound(f"no volume {name!r}")
            if changes.get("encryption"):
                # Made before the policy says "encrypted", so no writer sees it without a key.
                self.node.ensure_volume_key(meta, int(vol["ino"]))
            return meta.update_volume(name, _stored_policy({**_full_policy(vol["policy"]), **changes}))

        vol = await self.node._m(update)
        return json_response(200, self._volume_doc(vol))

    async def _delete_volume(self, req: Request, params: dict[str, str]) -> Response:
        query = self._query(req, ("force", "keep_dir"))
        if "force" in query:
            raise InvalidArgument("force is not supported: empty the volume first")
        keep_dir = query.get("keep_dir", "false").lower()
        if keep_dir not in ("true", "false"):
            raise InvalidArgument("keep_dir must be true or false")
        name = params["name"]
        await self.node._m(self.node.meta.delete_volume, name, remove_dir=keep_dir == "false")
        return _no_content()

    # -- per-directory replication policy --------------------------------------------
    @staticmethod
    def _fs_path(value: Any) -> list[bytes]:
        """The names of an absolute path in the namespace ("/vol/a/b")."""
        if not isinstance(value, str) or not value.startswith("/") or len(value) > 4096:
            raise InvalidArgument("path must be an absolute path such as /volume/dir")
        names = [n.encode("utf-8", "surrogateescape") for n in value.split("/") if n]
        if any(n in (b".", b"..") for n in names):
            raise InvalidArgument("path must not contain . or ..")
        return names

    def _policy_doc(
        self, path: str, own: Mapping[bytes, bytes], effective: Mapping[str, Any]
    ) -> dict[str, Any]:
        replicas = own.get(REPLICAS_XATTR)
        consistency = own.get(CONSISTENCY_XATTR)
        cl = self.cfg.cluster
        return {
            "path": path,
            "replication": int(replicas) if replicas is not None else None,
            "consistency": consistency.decode() if consistency is not None else None,
            "effective": {
                "replication": effective.get("replicas") or cl.replicas,
                "consistency": effective.get("consistency") or cl.consistency,
            },
        }

    def _policy_state(self, names: list[bytes]) -> tuple[dict[bytes, bytes], dict[str, Any]]:
        """(the overrides set on the inode at ``names``, the policy in effect there); metadata thread."""
        return self._policy_at(self.node.meta.resolve(ROOT_INO, names).ino)

    def _policy_at(self, ino: int) -> tuple[dict[bytes, bytes], dict[str, Any]]:
        meta = self.node.meta
        own: dict[bytes, bytes] = {}
        for name in (REPLICAS_XATTR, CONSISTENCY_XATTR):
            try:
                own[name] = meta.getxattr(ino, name)
            except NoAttribute:
                pass
        return own, meta.policy(ino)

    async def _get_policy(self, req: Request, params: dict[str, str]) -> Response:
        path = self._query(req, ("path",)).get("path", "")
        names = self._fs_path(path)
        own, effective = await self.node._m(self._policy_state, names)
        return json_response(200, self._policy_doc(path, own, effective))

    async def _put_policy(self, req: Request, params: dict[str, str]) -> Response:
        body = await self._json_body(req)
        _check_fields(body, ("path", "replication", "consistency"), "directory policy")
        path = body.get("path")
        names = self._fs_path(path)
        changes: dict[bytes, bytes | None] = {}
        if "replication" in body:
            r = body["replication"]
            changes[REPLICAS_XATTR] = None if r is None else str(_int("replication", r, 1, 7)).encode()
        if "consistency" in body:
            c = body["consistency"]
            changes[CONSISTENCY_XATTR] = (
                None if c is None else _enum("consistency", c, CONSISTENCY_LEVELS).encode()
            )
        meta = self.node.meta

        def apply() -> tuple[dict[bytes, bytes], dict[str, Any]]:
            ino = meta.resolve(ROOT_INO, names).ino
            for name, value in changes.items():
                if value is not None:
                    meta.setxattr(ino, name, value)
                else:
                    try:
                        meta.removexattr(ino, name)
                    except NoAttribute:
                        pass  # already inherited
            return self._policy_at(ino)

        own, effective = await self.node._m(apply)
        return json_response(200, self._policy_doc(str(path), own, effective))

    # -- snapshots --------------------------------------------------------------------
    async def _create_snapshot(self, req: Request, params: dict[str, str]) -> Response:
        body = await self._json_body(req)
        _check_fields(body, ("volume", "name"), "snapshot")
        volume = body.get("volume")
        if not isinstance(volume, str) or not volume:
            raise InvalidArgument("volume is required")
        name = body.get("name")
        if name is None:
            name = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
        name = _snapshot_name(name)
        doc = await self.node.take_snapshot(volume, name)
        return json_response(201, _snapshot_doc(doc))

    async def _list_snapshots(self, req: Request, params: dict[str, str]) -> Response:
        query = self._query(req, ("volume",))
        volume = query.get("volume") or None
        reads = self.node.reads
        if volume is not None and reads.get_volume(volume) is None and not reads.list_snapshots(volume):
            raise NotFound(f"no volume {volume!r}")
        rows = reads.list_snapshots(volume)
        truncated = len(rows) > MAX_SNAPSHOTS_LISTED
        snapshots = [_snapshot_doc(r) for r in rows[:MAX_SNAPSHOTS_LISTED]]
        return json_response(200, {"volume": volume, "snapshots": snapshots, "truncated": truncated})

    async def _delete_snapshot(self, req: Request, params: dict[str, str]) -> Response:
        volume, name = params["volume"], _snapshot_name(params["name"])
        meta = self.node.meta
        removed = await self.node._m(lambda: meta.delete_snapshot(volume, name))
        return json_response(200, {"volume": volume, "name": name, "removed_inodes": removed})

    async def _restore_snapshot(self, req: Request, params: dict[str, str]) -> Response:
        """Whole volume (no body, or ``{}``), or ``{"path": "a/b", "to": "/vol/dest"}``: one
        file or directory copied out of the snapshot to a new name."""
        volume, name = params["volume"], _snapshot_name(params["name"])
        body = await self._json_body(req) if req.content_length else {}
        _check_fields(body, ("path", "to"), "snapshot restore")
        meta = self.node.meta
        if "path" not in body and "to" not in body:
            attr = await self.node._m(lambda: meta.restore_snapshot(volume, name))
            return json_response(200, {"volume": volume, "name": name, "path": f"/{volume}", "ino": attr.ino})
        path, to = body.get("path"), body.get("to")
        if not isinstance(path, str) or not isinstance(to, str):
            raise InvalidArgument("restore of one path needs both path (in the snapshot) and to (a new path)")
        parts = [p.encode() for p in path.split("/") if p]
        dest = [p.encode() for p in to.split("/") if p]
        if not dest or any(p in (b".", b"..") for p in parts + dest):
            raise InvalidArgument("to must be a new path below the root, without . or .. steps")

        def restore() -> Attr:
            parent = meta.resolve(ROOT_INO, dest[:-1])
            return meta.restore_snapshot_path(volume, name, parts, parent.ino, dest[-1])

        attr = await self.node._m(restore)
        doc = {
            "volume": volume,
            "name": name,
            "path": "/" + "/".join(p.decode() for p in dest),
            "ino": attr.ino,
        }
        return json_response(201, doc)

    async def _clone_snapshot(self, req: Request, params: dict[str, str]) -> Response:
        volume, name = params["volume"], _snapshot_name(params["name"])
        body = await self._json_body(req)
        _check_fields(body, ("volume",), "snapshot clone")
        new = body.get("volume")
        if not isinstance(new, str) or not new:
            raise InvalidArgument("volume (the new volume's name) is required")
        meta = self.node.meta
        vol = await self.node._m(lambda: meta.clone_snapshot(volume, name, new))
        return json_response(201, {"name": vol["name"], "from": {"volume": volume, "snapshot": name}})

    # -- config -----------------------------------------------------------------------
    def _config_doc(self) -> dict[str, dict[str, Any]]:
        doc: dict[str, dict[str, Any]] = {}
        for section in dataclasses.fields(self.cfg):
            values = getattr(self.cfg, section.name)
            doc[section.name] = {
                f.name: (
                    _REDACTED if _is_secret(f.name) and getattr(values, f.name) else getattr(values, f.name)
                )
                for f in dataclasses.fields(values)
            }
        return doc

    async def _get_config(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self._config_doc())

    async def _put_config(self, req: Request, params: dict[str, str]) -> Response:
        body = await self._json_body(req)
        current = self._config_doc()
        level: str | None = None
        for section, options in body.items():
            if section not in current:
                raise InvalidArgument(f"unknown config section [{section}]")
            if not isinstance(options, dict):
                raise InvalidArgument(f"[{section}] must be an object of options")
            for option, value in options.items():
                if option not in current[section]:
                    raise InvalidArgument(f"unknown option [{section}] {option}")
                if (section, option) != ("log", "level"):
                    # Everything else is read once at start-up (listeners, stores, background task
                    # intervals): changing it here would report a value the daemon does not use.
                    raise ApiError(
                        400,
                        "RestartRequired",
                        f"[{section}] {option} cannot change while dfsd runs: set it in dfs.conf and restart",
                    )
                if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
                    raise InvalidArgument(f"[log] level must be one of {', '.join(LOG_LEVELS)}")
                level = value.upper()
        if level is not None:
            self.cfg = config_mod.replace(self.cfg, log={"level": level})
            logging.getLogger().setLevel(level)
            log.warning("log level set to %s through the admin API (not persisted to dfs.conf)", level)
        return json_response(200, self._config_doc())

    async def _openapi(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, OPENAPI)

    # -- scoped admin tokens (daemon/admin/tokens.py) ---------------------------------------
    @staticmethod
    def _token_doc(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": str(row["id"]),
            "name": str(row["name"]),
            "scope": str(row["scope"]),
            "created": _iso(int(row["created_ns"])),
        }

    async def _list_tokens(self, req: Request, params: dict[str, str]) -> Response:
        rows = self.node.reads.admin_token_list()
        return json_response(200, {"tokens": [self._token_doc(row) for row in rows]})

    async def _create_token(self, req: Request, params: dict[str, str]) -> Response:
        body = await self._json_body(req)
        _check_fields(body, ("scope", "name"), "token")
        scope, name = tokens.check_new(body.get("scope"), body.get("name", ""))
        token_id, token = tokens.new_token()
        row = await self.node._m(self.node.meta.admin_token_put, token_id, name, scope, tokens.digest(token))
        path = "/storage/tokens/" + token_id
        return json_response(201, {**self._token_doc(row), "token": token}, [("location", path)])

    async def _revoke_token(self, req: Request, params: dict[str, str]) -> Response:
        token_id = params["token_id"]
        if not tokens.is_token_id(token_id):
            raise NotFound(f"no admin token {token_id!r}")
        await self.node._m(self.node.meta.admin_token_delete, token_id)
        return _no_content()

    # -- S3 keys and their grants on buckets (dfs/core/s3grants.py) -------------------------
    @staticmethod
    def _s3_key_doc(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "access_key": str(row["access_key"]),
            "description": str(row["description"]),
            "created": _iso(int(row["created_ns"])),
            "grants": dict(row["grants"]),
        }

    def _s3_key(self, access_key: str) -> dict[str, Any]:
        for row in self.node.reads.s3_key_list():
            if row["access_key"] == access_key:
                return self._s3_key_doc(row)
        raise NotFound(f"no S3 access key {access_key!r}")

    async def _list_s3_keys(self, req: Request, params: dict[str, str]) -> Response:
        rows = self.node.reads.s3_key_list()
        return json_response(200, {"keys": [self._s3_key_doc(row) for row in rows]})

    async def _create_s3_key(self, req: Request, params: dict[str, str]) -> Response:
        body = await self._json_body(req)
        _check_fields(body, ("description", "allow"), "S3 key")
        description = body.get("description", "")
        allow = body.get("allow", {})
        if not isinstance(allow, dict) or not all(isinstance(p, str) for p in allow.values()):
            raise InvalidArgument("allow must be an object of bucket -> permission (r, w, rw, owner)")
        pairs = [[_s3_bucket(str(b)), _s3_perm(p)] for b, p in allow.items()]
        made = await self.node.s3_key_create(description, pairs)
        path = "/storage/s3/keys/" + urllib.parse.quote(made["access_key"], safe="")
        return json_response(201, made, [("location", path)])

    async def _revoke_s3_key(self, req: Request, params: dict[str, str]) -> Response:
        await self.node._m(self.node.meta.s3_key_delete, params["access_key"])
        return _no_content()

    async def _grant_s3_key(self, req: Request, params: dict[str, str]) -> Response:
        body = await self._json_body(req)
        _check_fields(body, ("perm",), "grant")
        perm = _s3_perm(body.get("perm"))
        bucket = _s3_bucket(params["bucket"])
        await self.node._m(self.node.meta.s3_grant, params["access_key"], bucket, perm)
        return json_response(200, self._s3_key(params["access_key"]))

    async def _revoke_s3_grant(self, req: Request, params: dict[str, str]) -> Response:
        await self.node._m(self.node.meta.s3_revoke_grant, params["access_key"], params["bucket"])
        return json_response(200, self._s3_key(params["access_key"]))


def _s3_perm(value: Any) -> str:
    try:
        return s3grants.perm_name(s3grants.parse_perm(value if isinstance(value, str) else ""))
    except ValueError as exc:
        raise InvalidArgument(f"perm: {exc}") from None


def _s3_bucket(name: str) -> str:
    if not is_bucket_name(name):
        raise InvalidArgument(f"{name!r} is not a valid bucket name")
    return name
