"""The admin REST API (daemon/admin/api.py) against a real Service over real HTTP.

Each test starts a Service on a temp data dir, the metrics background task
and an HttpServer serving AdminApi on a loopback port, and talks to it with
``http.client`` in a worker thread.  Every response is checked against the
OpenAPI document the daemon itself serves (``/storage/openapi.json``), with a
small JSON-schema validator for the subset daemon/admin/openapi.py uses, so the
document cannot drift from the implementation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from prometheus_client import CollectorRegistry

import daemon.admin.tokens as tokens
from daemon.admin import MAX_BODY_BYTES, AdminApi, error_response, load_or_create_token
from daemon.admin.metrics import (
    Metrics,
    instrument_handlers,
    instrument_inline,
    render,
)
from daemon.admin.openapi import OPENAPI
from daemon.changefeed import ChangeFeed
from daemon.http import HttpServer, open_http_listeners
from daemon.service import Service
from daemon.service.frontends import Frontends
from daemon.service.meta_calls import MetaCalls
from dfs import __version__
from dfs.core import config as config_mod
from dfs.core import endpoints
from dfs.core.errors import ConfigError, InvalidArgument, NotFound
from dfs.core.namespace import ROOT_INO
from dfs.net import rpc
from mount.metrics import MountMetrics, serve_mount_metrics
from tests.conftest import http_call

TOKEN = "test-token-0123456789abcdef"
S3_SECRET = "s3cr3t-value-never-shown"
HAVE_PROC = os.path.exists("/proc/self/stat")  # ProcessCollector exports nothing without /proc

# -- a JSON-schema validator for the subset daemon/admin/openapi.py uses ----------------------

_ANNOTATIONS = {"description", "default", "title", "example", "examples", "deprecated", "readOnly"}
_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise AssertionError(f"unknown type {kind}")


def validate(value: Any, schema: dict[str, Any], doc: dict[str, Any], where: str = "$") -> None:
    """Raise AssertionError naming the first place ``value`` breaks ``schema``."""
    if "$ref" in schema:
        validate(value, _resolve(doc, schema), doc, where)
        return
    unknown = (
        set(schema)
        - _ANNOTATIONS
        - {
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "enum",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "minLength",
            "maxLength",
            "pattern",
            "format",
        }
    )
    assert not unknown, f"{where}: validator does not know keyword(s) {unknown}"
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_type_ok(value, k) for k in kinds), f"{where}: {value!r:.80} is not {kinds}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            assert value >= schema["minimum"], f"{where}: {value} < {schema['minimum']}"
        if "maximum" in schema:
            assert value <= schema["maximum"], f"{where}: {value} > {schema['maximum']}"
        if "exclusiveMinimum" in schema:
            assert value > schema["exclusiveMinimum"], f"{where}: {value} <= {schema['exclusiveMinimum']}"
    if isinstance(value, str):
        if "minLength" in schema:
            assert len(value) >= schema["minLength"], f"{where}: too short"
        if "maxLength" in schema:
            assert len(value) <= schema["maxLength"], f"{where}: too long"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), (
                f"{where}: {value!r} does not match {schema['pattern']}"
            )
        if schema.get("format") == "date-time":
            assert _DATE_TIME.fullmatch(value), f"{where}: {value!r} is not a date-time"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                validate(item, props[key], doc, f"{where}.{key}")
            elif extra is False:
                raise AssertionError(f"{where}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                validate(item, extra, doc, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], doc, f"{where}[{i}]")


def test_validator_rejects() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"a": {"type": ["integer", "null"]}},
        "required": ["a"],
    }
    validate({"a": None}, schema, {})
    validate({"a": 3}, schema, {})
    bad: Any
    for bad in ({"a": "x"}, {}, {"a": True}, []):
        with pytest.raises(AssertionError):
            validate(bad, schema, {})
    with pytest.raises(AssertionError):
        validate({"a": 1, "b": 2}, {**schema, "additionalProperties": False}, {})


# -- the daemon under test ---------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def _template(path: str) -> str:
    """The OpenAPI path template a concrete request path belongs to."""
    path = path.split("?", 1)[0]
    for template in OPENAPI["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return str(template)
    raise AssertionError(f"{path} matches no documented route")


@dataclass
class Env:
    port: int
    service: Service
    metrics: Metrics
    api: AdminApi
    doc: dict[str, Any] = field(default_factory=dict)  # the served OpenAPI document

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        return http_call(self.port, method, path, body, headers)

    async def call(
        self,
        method: str,
        path: str,
        doc: Any = None,
        *,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        check: bool = True,
    ) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        body = raw
        if doc is not None:
            body = json.dumps(doc).encode()
            hdrs["Content-Type"] = "application/json"
        status, rheaders, data = await trio.to_thread.run_sync(self._request, method, path, body, hdrs)
        reply = Reply(status, rheaders, data)
        if check:
            self.check(method, path, reply, doc)
        return reply

    def check(self, method: str, path: str, reply: Reply, request_doc: Any) -> None:
        """Validate request and response against the served OpenAPI document."""
        spec = self.doc or OPENAPI
        template = _template(path)
        op = spec["paths"][template].get(method.lower())
        if op is None:  # an undocumented method: the API must say 405 (or 401 before that)
            assert reply.status in (401, 405), (method, path, reply.status)
            validate(reply.json, {"$ref": "#/components/schemas/Error"}, spec)
            return
        if request_doc is not None and "requestBody" in op and reply.status < 300:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            validate(request_doc, schema, spec, f"{method} {template} request")
        responses = op["responses"]
        resp = responses.get(str(reply.status))
        assert resp is not None or reply.status in (405, 500), (
            f"{method} {template} answered {reply.status}, which the document does not list"
        )
        resp = _resolve(spec, resp if resp is not None else responses["default"])
        content = resp.get("content")
        if content is None:
            assert reply.body == b"", f"{method} {template} {reply.status} should have no body"
            return
        if "application/json" in content:
            assert reply.headers["content-type"].startswith("application/json")
            validate(
                reply.json, content["application/json"]["schema"], spec, f"{method} {template} {reply.status}"
            )
        else:
            assert reply.headers["content-type"].startswith("text/plain")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cfg = config_mod.parse(
        f'[s3]\naccess_key = "admin-test-key"\nsecret_key = "{S3_SECRET}"\n', env={}, origin="test"
    )
    cfg = config_mod.replace(cfg, node={"data_dir": str(tmp_path / "var"), "id": "node-a"})
    service = Service(cfg)
    metrics = Metrics(node_id=cfg.node_id, version=__version__)
    api = AdminApi(service, cfg, metrics, token=TOKEN)
    root_level = logging.getLogger().level
    try:
        async with trio.open_nursery() as nursery:
            listeners = await open_http_listeners("127.0.0.1:0")
            server = HttpServer(
                api.handle, error_response=error_response, idle_timeout_s=10, body_timeout_s=10
            )
            await nursery.start(server.serve, listeners)
            nursery.start_soon(metrics.run, service)
            port = listeners[0].socket.getsockname()[1]
            e = Env(port, service, metrics, api)
            served = await e.call("GET", "/storage/openapi.json")
            assert served.status == 200
            e.doc = served.json
            yield e
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger().setLevel(root_level)
        metrics.close()
        service.close()


# -- token ----------------------------------------------------------------------------------


def test_token_file_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    token = load_or_create_token(path)
    assert len(token) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == token
    assert [p.name for p in tmp_path.iterdir()] == ["admin.token"]  # no temp file left behind
    path.write_text("short\n")
    with pytest.raises(ConfigError):
        load_or_create_token(path)
    path.write_text("an-operator-chosen-token-1234\n")
    assert load_or_create_token(path) == "an-operator-chosen-token-1234"


# -- authentication and routing ---------------------------------------------------------------


async def test_health_is_public_and_everything_else_needs_the_token(env: Env) -> None:
    r = await env.call("GET", "/health", token=None)
    assert (r.status, r.json) == (200, {"status": "ok"})
    for path in ("/metrics", "/storage/volumes", "/storage/config", "/storage/openapi.json"):
        r = await env.call("GET", path, token=None)
        assert r.status == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json["error"]["code"] == "Unauthorized"
        r = await env.call("GET", path, token="wrong-token-wrong-token")
        assert r.status == 401, path
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = await env.call("GET", "/storage/volumes", token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status == 401
    # Unknown paths do not reveal themselves to strangers.
    r = await env.call("GET", "/storage/nothing", token=None, check=False)
    assert r.status == 401
    r = await env.call("GET", "/storage/nothing", check=False)
    assert r.status == 404 and r.json["error"]["code"] == "NotFound"


async def test_method_not_allowed_names_the_allowed_ones(env: Env) -> None:
    r = await env.call("POST", "/health", {"x": 1}, token=None)
    assert r.status == 405 and r.headers["allow"] == "GET"
    r = await env.call("PATCH", "/storage/volumes/abc", {"x": 1})
    assert r.status == 405 and r.headers["allow"] == "GET, PUT, DELETE"


# -- scoped tokens ---------------------------------------------------------------------------


def test_scope_decision_is_a_pure_function() -> None:
    for route in tokens.READ_ROUTES:
        assert tokens.allowed("read", "GET", route)
        assert tokens.allowed("admin", "GET", route)
        for method in ("PUT", "POST", "DELETE", "PATCH"):
            assert not tokens.allowed("read", method, route), (method, route)
            assert tokens.allowed("admin", method, route)
    for route in ("/storage/config", "/storage/tokens", "/storage/tokens/{token_id}"):
        assert not tokens.allowed("read", "GET", route)
        assert tokens.allowed("admin", "GET", route)
    assert {"/metrics", "/storage/health", "/storage/metrics", "/storage/nodes", "/storage/volumes"} <= (
        tokens.READ_ROUTES
    )
    assert not tokens.allowed("", "GET", "/storage/health")
    assert not tokens.allowed("Admin", "GET", "/storage/health")  # scopes are exact
    assert not tokens.allowed("read", "GET", "/storage/volumes/x")  # templates, never raw paths


def test_token_shape_and_digest() -> None:
    token_id, token = tokens.new_token()
    assert re.fullmatch(r"dfs_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", token) and token_id in token
    assert tokens.token_id(token) == token_id and tokens.is_token_id(token_id)
    assert tokens.new_token()[1] != token
    for bad in (TOKEN, token + "x", token[:-1], "dfs_" + token_id, token.replace("dfs_", "DFS_")):
        assert tokens.token_id(bad) is None, bad
    d = tokens.digest(token)
    assert len(d) == 32 and tokens.same_digest(d, tokens.digest(token))
    assert not tokens.same_digest(d, tokens.digest(token[:-1] + ("A" if token[-1] != "A" else "B")))
    assert tokens.check_new("read", "") == ("read", "")
    for scope, name in (("write", ""), ("read", "x" * 65), ("admin", "tab\there"), (None, "")):
        with pytest.raises(InvalidArgument):
            tokens.check_new(scope, name)


async def _make_token(env: Env, scope: str, name: str = "") -> dict[str, Any]:
    r = await env.call("POST", "/storage/tokens", {"scope": scope, "name": name})
    assert r.status == 201, r.json
    assert r.headers["location"] == f"/storage/tokens/{r.json['id']}"
    return dict(r.json)


async def test_read_token_reads_and_is_refused_changes(env: Env) -> None:
    made = await _make_token(env, "read", "grafana")
    read = made["token"]
    assert made["scope"] == "read" and made["name"] == "grafana"
    assert (await env.call("POST", "/storage/volumes", {"name": "vol1"})).status == 201
    for path in (
        "/metrics",
        "/storage/health",
        "/storage/metrics",
        "/storage/nodes",
        "/storage/nodes/node-a",
        "/storage/volumes",
        "/storage/volumes/vol1",
        "/storage/openapi.json",
    ):
        r = await env.call("GET", path, token=read)
        assert r.status == 200, (path, r.status)
    for method, path, doc in (
        ("POST", "/storage/volumes", {"name": "vol2"}),
        ("PUT", "/storage/volumes/vol1", {"replication": 2}),
        ("DELETE", "/storage/volumes/vol1", None),
        ("POST", "/storage/nodes", {"node_id": "node-b", "address": "10.0.0.2:7400"}),
        ("PUT", "/storage/nodes/node-a", {"zone": "z1"}),
        ("PUT", "/storage/config", {"log": {"level": "DEBUG"}}),
        ("POST", "/storage/tokens", {"scope": "admin"}),
        ("GET", "/storage/tokens", None),
        ("GET", "/storage/config", None),
        ("DELETE", f"/storage/tokens/{made['id']}", None),
    ):
        r = await env.call(method, path, doc, token=read)
        assert r.status == 403, (method, path, r.status)
        assert r.json["error"]["code"] == "Forbidden"
    # Nothing changed.
    policy = (await env.call("GET", "/storage/volumes/vol1")).json["policy"]
    assert policy["replication"] == env.service.cfg.cluster.replicas  # the refused PUT asked 2
    assert policy["replication_source"] == "cluster"
    assert [v["name"] for v in (await env.call("GET", "/storage/volumes")).json["volumes"]] == ["vol1"]
    # A read token on an unknown route learns only what any authenticated caller does.
    assert (await env.call("GET", "/storage/nothing", token=read, check=False)).status == 404


async def test_admin_token_does_everything_and_revoked_tokens_fail(env: Env) -> None:
    made = await _make_token(env, "admin", "ops")
    admin = made["token"]
    r = await env.call("POST", "/storage/volumes", {"name": "vol3"}, token=admin)
    assert r.status == 201
    assert (await env.call("PUT", "/storage/volumes/vol3", {"replication": 2}, token=admin)).status == 200
    assert (await env.call("GET", "/storage/health", token=admin)).status == 200
    assert (await env.call("GET", "/metrics", token=admin)).status == 200
    second = await _make_token(env, "read")
    r = await env.call("GET", "/storage/tokens", token=admin)
    assert r.status == 200
    listed = r.json["tokens"]
    assert [(t["id"], t["scope"], t["name"]) for t in listed] == [
        (made["id"], "admin", "ops"),
        (second["id"], "read", ""),
    ]
    assert admin not in r.body.decode() and second["token"] not in r.body.decode()
    # Metadata holds the hash, never the token.
    assert env.service.reads.admin_token_get(made["id"]) == ("admin", tokens.digest(admin))
    # Revoked: 401 at once (this daemon holds metadata), other tokens unaffected.
    assert (await env.call("DELETE", f"/storage/tokens/{second['id']}", token=admin)).status == 204
    r = await env.call("GET", "/storage/health", token=second["token"])
    assert r.status == 401 and r.json["error"]["code"] == "Unauthorized"
    assert (await env.call("DELETE", f"/storage/tokens/{second['id']}", token=admin)).status == 404
    assert (await env.call("DELETE", "/storage/tokens/not-an-id", token=admin)).status == 404
    assert (await env.call("DELETE", f"/storage/tokens/{made['id']}")).status == 204  # first-run token
    assert (await env.call("GET", "/storage/health", token=admin)).status == 401
    # A token of the right shape but unknown id, or a known id with another secret: 401.
    token_id, fake = tokens.new_token()
    assert (await env.call("GET", "/storage/health", token=fake)).status == 401
    assert (await env.call("GET", "/storage/tokens")).json["tokens"] == []
    assert (await env.call("POST", "/storage/tokens", {"scope": "root"})).status == 400
    assert (await env.call("POST", "/storage/tokens", {"scope": "read", "x": 1})).status == 400


async def test_a_secondary_asks_the_primary_and_caches_briefly(env: Env) -> None:
    """A secondary holds no metadata: it has the primary check a token (admin.token_check) and
    trusts a positive answer for TOKEN_CACHE_S."""
    made = await _make_token(env, "read")
    primary = env.service.frontends
    asked: list[tuple[Any, ...]] = []

    class Primary:
        async def call(self, method: str, *args: Any) -> Any:
            assert method == endpoints.ADMIN_TOKEN_CHECK.name
            asked.append(args)
            return await primary.admin_token_check(*args)

    class Runner:
        primary: Any = Primary()

    cfg = config_mod.replace(env.service.cfg, cluster={"meta": "127.0.0.1:1"})
    no_store = MetaCalls(None, ChangeFeed(), primary_address="127.0.0.1:1")  # what a secondary has
    secondary = Frontends(cfg, no_store, cast(Any, Runner()))
    assert await secondary.admin_token_scope(made["token"]) == "read"
    assert await secondary.admin_token_scope(made["token"]) == "read"
    assert len(asked) == 1 and made["token"] not in repr(asked)  # the digest crosses, not the token
    assert await secondary.admin_token_scope(TOKEN) is None  # not a scoped token: never asked
    _, other = tokens.new_token()
    assert await secondary.admin_token_scope(other) is None
    assert len(asked) == 2
    await env.service._m(env.service.meta.admin_token_delete, made["id"])
    secondary._token_cache.clear()  # what TOKEN_CACHE_S of time does
    assert await secondary.admin_token_scope(made["token"]) is None


async def test_openapi_document_covers_exactly_the_routes(env: Env) -> None:
    documented = {
        path: tuple(sorted(m.upper() for m in ops if m in ("get", "put", "post", "delete", "patch")))
        for path, ops in env.doc["paths"].items()
    }
    served = {path: tuple(sorted(methods)) for path, methods in env.api.routes_table().items()}
    assert documented == served
    assert env.doc["openapi"].startswith("3.1")
    assert env.doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert env.doc == json.loads(json.dumps(OPENAPI))


# -- health and metrics ----------------------------------------------------------------------


async def test_storage_health_ready_and_not_ready(env: Env) -> None:
    r = await env.call("GET", "/storage/health")
    assert r.status == 200
    assert r.json["status"] == "ok" and r.json["ready"] and r.json["live"]
    assert {c["name"] for c in r.json["checks"]} == {"metadata", "chunk_store_space", "data_dir_writable"}
    # A reserve larger than any disk: the store cannot take writes, so the node is not ready.
    env.api.cfg = config_mod.replace(env.api.cfg, storage={"reserve_bytes": 1 << 62})
    r = await env.call("GET", "/storage/health")
    assert r.status == 503
    assert r.json["status"] == "degraded" and not r.json["ready"] and r.json["live"]
    failed = [c for c in r.json["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["chunk_store_space"]


async def test_storage_metrics_summary(env: Env) -> None:
    await env.call("GET", "/health", token=None)
    r = await env.call("GET", "/storage/metrics")
    assert r.status == 200
    doc = r.json
    assert doc["node_id"] == "node-a" and doc["version"] == __version__
    assert doc["capacity"]["total_bytes"] > 0
    assert doc["namespace"]["inodes"] >= 1
    assert doc["requests"]["admin"] >= 2


async def test_prometheus_metrics_after_requests(env: Env) -> None:
    await env.call("GET", "/storage/volumes")
    await env.call("GET", "/storage/volumes", token=None)
    env.metrics.observe_s3("PutObject", 200, 0.01, 1000, 0)
    env.metrics.observe_meta("create", 0.0005)
    await env.metrics.refresh(env.service)
    await trio.sleep(0.3)  # at least one event-loop lag probe
    r = await env.call("GET", "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    for needle in (
        'dfs_admin_requests_total{route="/storage/volumes",status="200"}',
        'dfs_admin_requests_total{route="/storage/volumes",status="401"}',
        'dfs_chunk_store_bytes{kind="total"}',
        'dfs_chunk_store_bytes{kind="stored"}',
        "dfs_chunk_checksum_failures_total 0.0",
        "dfs_meta_inodes ",
        "dfs_meta_files ",
        "dfs_meta_chunks ",
        'dfs_s3_requests_total{operation="PutObject",status="200"} 1.0',
        "dfs_s3_bytes_in_total 1000.0",
        'dfs_meta_op_seconds_count{op="create"} 1.0',
        "dfs_event_loop_lag_seconds ",
        "dfs_event_loop_lag_histogram_seconds_count",
        f'dfs_build_info{{node="node-a",version="{__version__}"}} 1.0',
        "# TYPE dfs_rpc_requests_total counter",
    ):
        assert needle in text, needle
    if HAVE_PROC:
        assert "dfs_process_cpu_seconds_total" in text
    # Raw paths never become labels.
    await env.call("GET", "/storage/volumes/some-name")
    text = render(env.metrics.registry)[0].decode()
    assert 'route="/storage/volumes/{name}"' in text and "some-name" not in text


async def test_rpc_instrumentation_counts_and_keeps_argument_errors(env: Env) -> None:
    handlers = instrument_handlers(env.service.handlers, env.metrics)
    assert await handlers["sys.ping"]() == "pong"
    with pytest.raises(InvalidArgument, match="bad arguments"):
        await handlers["sys.ping"]("unexpected")
    inline = instrument_inline(env.service.inline_handlers(), env.metrics)
    assert inline["meta.getattr"](ROOT_INO).ino == ROOT_INO
    with pytest.raises(NotFound):
        inline["meta.lookup"](ROOT_INO, b"absent")
    text = render(env.metrics.registry)[0].decode()
    assert 'dfs_rpc_requests_total{method="sys.ping",outcome="ok"} 1.0' in text
    assert 'dfs_rpc_requests_total{method="sys.ping",outcome="error"} 1.0' in text
    assert 'dfs_rpc_requests_total{method="meta.lookup",outcome="error"} 1.0' in text
    assert 'dfs_rpc_request_seconds_count{method="meta.getattr"} 1.0' in text
    assert env.metrics.requests_served["rpc"] == 4


async def test_instrumented_handlers_served_over_rpc(env: Env) -> None:
    """The wiring dfsd uses: the RPC layer's error contract survives the wrappers."""
    server = rpc.RpcServer(
        instrument_handlers(env.service.handlers, env.metrics),
        inline_handlers=instrument_inline(env.service.inline_handlers(), env.metrics),
    )
    async with trio.open_nursery() as nursery:
        listeners = await rpc.open_listeners("127.0.0.1:0")
        await nursery.start(server.serve, listeners)
        port = listeners[0].socket.getsockname()[1]
        async with rpc.open_client(f"127.0.0.1:{port}") as client:
            assert await client.call("sys.ping") == "pong"
            with pytest.raises(InvalidArgument):
                await client.call("sys.ping", 1, 2)
            with pytest.raises(NotFound):
                await client.call("meta.lookup", ROOT_INO, b"absent")
            attr = await client.call("meta.getattr", ROOT_INO)
            assert attr[0] == ROOT_INO
        nursery.cancel_scope.cancel()
    text = render(env.metrics.registry)[0].decode()
    assert 'dfs_rpc_requests_total{method="sys.ping",outcome="ok"} 1.0' in text
    assert 'dfs_rpc_requests_total{method="sys.ping",outcome="error"} 1.0' in text
    assert 'dfs_rpc_requests_total{method="meta.lookup",outcome="error"} 1.0' in text
    assert 'dfs_rpc_requests_total{method="meta.getattr",outcome="ok"} 1.0' in text


# -- nodes -----------------------------------------------------------------------------------


async def test_nodes(env: Env) -> None:
    r = await env.call("GET", "/storage/nodes")
    assert r.status == 200
    (me,) = r.json["nodes"]
    assert me["node_id"] == "node-a" and me["self"] and me["state"] == "active"
    assert me["address"] == env.service.cfg.rpc.listen and me["capacity"]["total_bytes"] > 0

    new = {"node_id": "node-b", "address": "10.0.0.2:7400", "zone": "rack2", "capacity_weight": 2}
    r = await env.call("POST", "/storage/nodes", new)
    assert r.status == 201 and r.headers["location"] == "/storage/nodes/node-b"
    assert r.json["state"] == "active" and r.json["capacity_weight"] == 2.0 and not r.json["self"]
    assert (await env.call("POST", "/storage/nodes", new)).status == 409
    assert (await env.call("POST", "/storage/nodes", {**new, "node_id": "node-a"})).status == 409
    for bad in (
        {**new, "node_id": "c", "state": "sleeping"},
        {**new, "node_id": "c", "capacity_weight": 0},
        {**new, "node_id": "c", "address": "no-port"},
        {**new, "node_id": "bad id"},
        {"node_id": "c"},
        {**new, "node_id": "c", "colour": "blue"},
    ):
        r = await env.call("POST", "/storage/nodes", bad)
        assert r.status == 400, bad

    r = await env.call("PUT", "/storage/nodes/node-b", {"state": "draining"})
    assert r.status == 200 and r.json["state"] == "draining" and r.json["zone"] == "rack2"
    assert (await env.call("GET", "/storage/nodes/node-b")).json["state"] == "draining"
    assert (await env.call("PUT", "/storage/nodes/node-x", {"state": "out"})).status == 404
    assert (await env.call("PUT", "/storage/nodes/node-b", {"state": 3})).status == 400

    # This node: its state can change, its address is dfs.conf's.
    r = await env.call("PUT", "/storage/nodes/node-a", {"state": "draining"})
    assert r.status == 200 and r.json["registered"] and r.json["state"] == "draining"
    assert (await env.call("PUT", "/storage/nodes/node-a", {"address": "1.2.3.4:1"})).status == 400

    r = await env.call("GET", "/storage/nodes")
    assert [n["node_id"] for n in r.json["nodes"]] == ["node-a", "node-b"]
    assert (await env.call("DELETE", "/storage/nodes/node-a")).status == 409
    # node-b never answers: while draining nothing confirms its chunks moved (dfs/core/node_removal.py).
    r = await env.call("DELETE", "/storage/nodes/node-b")
    assert r.status == 409 and "does not answer" in r.json["error"]["message"]
    assert (await env.call("DELETE", "/storage/nodes/node-b?force=maybe")).status == 400
    assert (await env.call("PUT", "/storage/nodes/node-b", {"state": "active"})).status == 200
    r = await env.call("DELETE", "/storage/nodes/node-b?force=true")
    assert r.status == 409 and "drain it first" in r.json["error"]["message"]  # even forced
    assert (await env.call("PUT", "/storage/nodes/node-b", {"state": "out"})).status == 200
    assert (await env.call("DELETE", "/storage/nodes/node-b")).status == 204
    assert (await env.call("DELETE", "/storage/nodes/node-b")).status == 404
    assert (await env.call("GET", "/storage/nodes/node-b")).status == 404


# -- volumes ---------------------------------------------------------------------------------


async def test_volumes(env: Env) -> None:
    assert (await env.call("GET", "/storage/volumes")).json == {"volumes": []}
    r = await env.call("POST", "/storage/volumes", {"name": "photos"})
    assert r.status == 201 and r.headers["location"] == "/storage/volumes/photos"
    assert r.json["path"] == "/photos"
    cl = env.service.cfg.cluster
    # Unset replication and consistency are the cluster's defaults, shown as in effect.
    assert r.json["policy"] == {
        "replication": cl.replicas,
        "replication_source": "cluster",
        "consistency": cl.consistency,
        "consistency_source": "cluster",
        "compression": "zstd",
        "compression_level": None,
        "encryption": False,
        "quota_bytes": None,
        "quota_inodes": None,
        "trash_days": None,
        "snapshot_schedule": None,
        "tiers": None,
        "tier_mode": None,
        "tier_after_days": None,
        "tier_paths": None,
        "snapshot_retention": None,
    }
    assert env.service.reads.lookup(ROOT_INO, b"photos").is_dir
    full = {
        "name": "backups.2026",
        "replication": 3,
        "consistency": "quorum",
        "compression": "none",
        "compression_level": 5,
        "encryption": True,
        "quota_bytes": 10**12,
        "trash_days": 1.5,
        "snapshot_schedule": "daily=7,hourly=24",
        "snapshot_retention": None,
    }
    r = await env.call("POST", "/storage/volumes", full)
    assert r.status == 201
    assert r.json["policy"] == {
        **{k: v for k, v in full.items() if k != "name"},
        "snapshot_schedule": "hourly=24,daily=7",  # stored in canonical form
        "quota_inodes": None,
        "tiers": None,
        "tier_mode": None,
        "tier_after_days": None,
        "tier_paths": None,
        "replication_source": "volume",
        "consistency_source": "volume",
    }
    # Only what was set is stored: the cluster default stays a default.
    assert "replication" not in (env.service.reads.get_volume("photos") or {})["policy"]
    r = await env.call("PUT", "/storage/volumes/backups.2026", {"replication": None})
    assert r.status == 200 and r.json["policy"]["replication"] == cl.replicas
    assert r.json["policy"]["replication_source"] == "cluster"
    assert (await env.call("PUT", "/storage/volumes/backups.2026", {"replication": 3})).status == 200
    assert (await env.call("POST", "/storage/volumes", {"name": "photos"})).status == 409
    for bad in (
        {"name": "Photos"},
        {"name": "ab"},
        {"name": "-abc"},
        {"name": "a..b"},
        {"name": "192.168.0.1"},
        {"name": "x" * 64},
        {"name": "okname", "replication": 8},
        {"name": "okname", "replication": True},
        {"name": "okname", "consistency": "sometimes"},
        {"name": "okname", "compression": "lz4"},
        {"name": "okname", "encryption": "yes"},
        {"name": "okname", "compression_level": 0},
        {"name": "okname", "compression_level": 20},
        {"name": "okname", "quota_bytes": -1},
        {"name": "okname", "trash_days": -1},
        {"name": "okname", "trash_days": 36501},
        {"name": "okname", "trash_days": "7"},
        {"name": "okname", "trash_days": True},
        {"name": "okname", "snapshot_retention": 0},
        {"name": "okname", "snapshot_retention": 7},  # retention is per tier, in the schedule
        {"name": "okname", "snapshot_schedule": "daily"},
        {"name": "okname", "snapshot_schedule": "yearly=3"},
        {"name": "okname", "snapshot_schedule": "daily=0"},
        {"name": "okname", "colour": "red"},
        {"name": "okname", "tiers": "cold"},
        {"name": "okname", "tiers": []},
        {"name": "okname", "tiers": ["Cold!"]},
        {"name": "okname", "tier_mode": "hot"},
        {"name": "okname", "tier_mode": "tiered"},  # tiered needs tiers
        {"name": "okname", "tier_after_days": -1},
        {"name": "okname", "tier_paths": ["logs"]},
        {"replication": 2},
    ):
        r = await env.call("POST", "/storage/volumes", bad)
        assert r.status == 400, bad
        assert r.json["error"]["code"] == "InvalidArgument"

    # A volume may name only tiers that are defined (`dfs tier add`).
    r = await env.call("POST", "/storage/volumes", {"name": "okname", "tiers": ["nope"]})
    assert r.status == 400 and "no tier 'nope'" in r.json["error"]["message"]

    r = await env.call("GET", "/storage/volumes")
    assert [v["name"] for v in r.json["volumes"]] == ["backups.2026", "photos"]
    r = await env.call("PUT", "/storage/volumes/photos", {"replication": 2, "quota_bytes": 5000})
    assert (
        r.status == 200 and r.json["policy"]["replication"] == 2 and r.json["policy"]["quota_bytes"] == 5000
    )
    assert r.json["policy"]["consistency"] == cl.consistency  # still the cluster's
    assert r.json["policy"]["replication_source"] == "volume"
    r = await env.call("PUT", "/storage/volumes/photos", {"quota_bytes": None})
    assert r.json["policy"]["quota_bytes"] is None and r.json["policy"]["replication"] == 2
    assert (await env.call("PUT", "/storage/volumes/photos", {"replication": 0})).status == 400
    assert (await env.call("PUT", "/storage/volumes/photos", {"name": "other"})).status == 400
    assert (await env.call("PUT", "/storage/volumes/nothing", {"replication": 2})).status == 404
    assert (await env.call("GET", "/storage/volumes/photos")).json["policy"]["replication"] == 2
    assert (await env.call("GET", "/storage/volumes/nothing")).status == 404

    # A volume with files in it stays; force is refused.
    photos = env.service.reads.lookup(ROOT_INO, b"photos")
    await env.service._m(env.service.meta.mkdir, photos.ino, b"2026", 0o755, 0, 0)
    r = await env.call("DELETE", "/storage/volumes/photos")
    assert r.status == 409 and r.json["error"]["code"] == "NotEmpty"
    assert (await env.call("DELETE", "/storage/volumes/photos?force=true")).status == 400
    assert (await env.call("DELETE", "/storage/volumes/photos?keep_dir=maybe")).status == 400
    assert (await env.call("GET", "/storage/volumes/photos")).status == 200

    assert (await env.call("DELETE", "/storage/volumes/backups.2026")).status == 204
    assert (await env.call("DELETE", "/storage/volumes/backups.2026")).status == 404
    with pytest.raises(NotFound):
        env.service.reads.lookup(ROOT_INO, b"backups.2026")

    # keep_dir drops only the policy; adopt brings the directory back as a volume.
    assert (await env.call("DELETE", "/storage/volumes/photos?keep_dir=true")).status == 204
    assert env.service.reads.lookup(ROOT_INO, b"photos").is_dir
    assert (await env.call("POST", "/storage/volumes", {"name": "photos"})).status == 409
    r = await env.call("POST", "/storage/volumes", {"name": "photos", "adopt": True, "replication": 3})
    assert r.status == 201 and r.json["policy"]["replication"] == 3
    assert (await env.call("POST", "/storage/volumes", {"name": "photos", "adopt": True})).status == 409
    assert (await env.call("POST", "/storage/volumes", {"name": "nodir", "adopt": True})).status == 404


# -- snapshots -------------------------------------------------------------------------------


async def test_forwarded_requests_carry_their_body_and_skip_the_token_check(env: Env) -> None:
    """What a secondary forwards over the cluster's RPC was authenticated there (with its token)."""
    body = json.dumps({"name": "fwd", "replication": 2}).encode()
    resp = await env.api.forwarded(
        "POST", "/storage/volumes", [("content-type", "application/json")], body, "10.0.0.2:5000"
    )
    assert resp.status == 201
    resp = await env.api.forwarded("GET", "/storage/volumes/fwd", [], b"", "10.0.0.2:5000")
    assert resp.status == 200 and isinstance(resp.body, bytes)
    assert json.loads(resp.body)["policy"]["replication"] == 2
    resp = await env.api.forwarded("GET", "/storage/volumes/none", [], b"", "10.0.0.2:5000")
    assert resp.status == 404


async def test_directory_policy(env: Env) -> None:
    await env.call("POST", "/storage/volumes", {"name": "media", "replication": 2, "consistency": "quorum"})
    meta = env.service.meta
    vol = meta.lookup(ROOT_INO, b"media").ino
    sub = meta.mkdir(vol, b"raw", 0o755, 0, 0).ino
    meta.mkdir(sub, b"deeper", 0o755, 0, 0)

    r = await env.call("GET", "/storage/policy?path=/media/raw")
    assert r.json == {
        "path": "/media/raw",
        "replication": None,
        "consistency": None,
        "effective": {"replication": 2, "consistency": "quorum"},  # from the volume
    }
    r = await env.call(
        "PUT", "/storage/policy", {"path": "/media/raw", "replication": 3, "consistency": "strong"}
    )
    assert r.status == 200 and r.json["replication"] == 3 and r.json["consistency"] == "strong"
    # The same xattrs the mount shows, and what writes below now follow.
    assert meta.getxattr(sub, b"user.dfs.replicas") == b"3"
    r = await env.call("GET", "/storage/policy?path=/media/raw/deeper/")
    assert r.json["replication"] is None
    assert r.json["effective"] == {"replication": 3, "consistency": "strong"}
    r = await env.call("PUT", "/storage/policy", {"path": "/media/raw", "consistency": None})
    assert r.json["consistency"] is None and r.json["replication"] == 3
    assert r.json["effective"] == {"replication": 3, "consistency": "quorum"}
    r = await env.call("PUT", "/storage/policy", {"path": "/media/raw", "consistency": None})  # idempotent
    assert r.status == 200
    # Outside any volume: the cluster defaults.
    r = await env.call("GET", "/storage/policy?path=/")
    cl = env.service.cfg.cluster
    assert r.json["effective"] == {"replication": cl.replicas, "consistency": cl.consistency}

    for bad in (
        {"path": "media/raw", "replication": 2},
        {"path": "/media/../x", "replication": 2},
        {"path": "/media/raw", "replication": 0},
        {"path": "/media/raw", "replication": 8},
        {"path": "/media/raw", "consistency": "sometimes"},
        {"path": "/media/raw", "owner": "x"},
        {"replication": 2},
    ):
        r = await env.call("PUT", "/storage/policy", bad, check=False)
        assert r.status == 400, (bad, r.status, r.body)
    assert (await env.call("GET", "/storage/policy?path=/media/nope")).status == 404
    assert (await env.call("GET", "/storage/policy")).status == 400
    assert (await env.call("PUT", "/storage/policy", {"path": "/nope/x", "replication": 2})).status == 404


async def test_trash(env: Env) -> None:
    """/storage/trash: list, restore (409 on a taken name, elsewhere with "to"), empty."""
    assert (await env.call("POST", "/storage/volumes", {"name": "binned", "trash_days": 0.5})).status == 201
    meta = env.service.meta
    vol = env.service.reads.lookup(ROOT_INO, b"binned").ino
    attr = await env.service._m(meta.mknod, vol, b"f", 0o100644, 0, 0, 0)
    await env.service._m(meta.unlink, vol, b"f")
    r = await env.call("GET", "/storage/trash?volume=binned")
    assert r.status == 200 and [e["id"] for e in r.json["entries"]] == [attr.ino]
    assert r.json["entries"][0]["path"] == "/binned/f" and r.json["usage"][0]["entries"] == 1
    assert (await env.call("GET", "/storage/trash?volume=nope")).status == 404
    await env.service._m(meta.mknod, vol, b"f", 0o100644, 0, 0, 0)
    r = await env.call("POST", f"/storage/trash/binned/{attr.ino}/restore")
    assert r.status == 409, r.json
    r = await env.call("POST", f"/storage/trash/binned/{attr.ino}/restore", {"to": "/binned/g"})
    assert r.status == 200 and r.json["restored_to"] == "/binned/g"
    assert (await env.call("POST", "/storage/trash/binned/x/restore")).status == 400
    assert (await env.call("POST", f"/storage/trash/binned/{attr.ino}/restore")).status == 404
    await env.service._m(meta.unlink, vol, b"g")
    assert (await env.call("DELETE", "/storage/trash?older_than_days=x")).status == 400
    assert (await env.call("DELETE", "/storage/trash?volume=binned&older_than_days=1")).json["purged"] == 0
    r = await env.call("DELETE", "/storage/trash?volume=binned")
    assert r.status == 200 and r.json == {"volume": "binned", "purged": 1}
    assert (await env.call("GET", "/storage/trash")).json["entries"] == []


async def test_snapshots(env: Env) -> None:
    assert (await env.call("POST", "/storage/volumes", {"name": "data"})).status == 201
    data = env.service.reads.lookup(ROOT_INO, b"data")
    await env.service._m(env.service.meta.mkdir, data.ino, b"sub", 0o755, 0, 0)

    r = await env.call("POST", "/storage/snapshot", {"volume": "data", "name": "before-upgrade"})
    assert r.status == 201
    assert r.json["path"] == "/.snapshots/data/before-upgrade" and r.json["volume"] == "data"
    reads = env.service.reads
    snaps = reads.lookup(reads.lookup(ROOT_INO, b".snapshots").ino, b"data")
    copy = reads.lookup(snaps.ino, b"before-upgrade")
    assert reads.lookup(copy.ino, b"sub").is_dir

    r = await env.call("POST", "/storage/snapshot", {"volume": "data", "name": "before-upgrade"})
    assert r.status == 409
    r = await env.call("POST", "/storage/snapshot", {"volume": "data"})
    assert r.status == 201 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", r.json["name"])
    assert (await env.call("POST", "/storage/snapshot", {"volume": "nope"})).status == 404
    for bad in ({}, {"volume": "data", "name": "a/b"}, {"volume": "data", "name": ".."}, {"volume": 3}):
        assert (await env.call("POST", "/storage/snapshot", bad)).status == 400, bad

    r = await env.call("GET", "/storage/snapshot?volume=data")
    assert r.status == 200 and not r.json["truncated"]
    names = [s["name"] for s in r.json["snapshots"]]
    assert len(names) == 2 and names[0] == "before-upgrade"  # oldest first
    first = r.json["snapshots"][0]
    assert first["origin"] == "manual" and first["files"] == 0 and first["bytes"] == 0
    assert (await env.call("GET", "/storage/snapshot?volume=nope")).status == 404
    assert [s["name"] for s in (await env.call("GET", "/storage/snapshot")).json["snapshots"]] == names
    assert (await env.call("GET", "/storage/snapshot?volume=data&x=1")).status == 400
    # A volume never snapshotted has an empty list.
    assert (await env.call("POST", "/storage/volumes", {"name": "fresh"})).status == 201
    assert (await env.call("GET", "/storage/snapshot?volume=fresh")).json["snapshots"] == []


async def test_snapshot_delete_restore_clone(env: Env) -> None:
    assert (await env.call("POST", "/storage/volumes", {"name": "data", "replication": 2})).status == 201
    meta = env.service.meta
    data = meta.lookup(ROOT_INO, b"data").ino
    sub = meta.mkdir(data, b"sub", 0o755, 0, 0).ino
    meta.mkdir(sub, b"inner", 0o755, 0, 0)
    assert (await env.call("POST", "/storage/snapshot", {"volume": "data", "name": "s1"})).status == 201
    # Read-only through the admin API too: a directory policy inside the snapshot is refused.
    r = await env.call("PUT", "/storage/policy", {"path": "/.snapshots/data/s1/sub", "replication": 3})
    assert r.status == 409 and r.json["error"]["code"] == "ReadOnly"

    meta.rmdir(sub, b"inner")
    meta.rmdir(data, b"sub")
    meta.mkdir(data, b"later", 0o755, 0, 0)
    r = await env.call("POST", "/storage/snapshot/data/s1/restore")
    assert r.status == 200 and r.json["ino"] == data
    assert sorted(e.name for e in meta.readdir(data, 0, 100)) == [b"sub"]
    sub = meta.lookup(data, b"sub").ino
    meta.mkdir(sub, b"writable-again", 0o755, 0, 0)

    r = await env.call(
        "POST", "/storage/snapshot/data/s1/restore", {"path": "sub/inner", "to": "/data/inner2"}
    )
    assert r.status == 201 and r.json["path"] == "/data/inner2"
    assert meta.lookup(data, b"inner2").is_dir
    r = await env.call(
        "POST", "/storage/snapshot/data/s1/restore", {"path": "sub/inner", "to": "/data/inner2"}
    )
    assert r.status == 409
    r = await env.call("POST", "/storage/snapshot/data/s1/restore", {"path": "sub"})
    assert r.status == 400
    r = await env.call(
        "POST", "/storage/snapshot/data/s1/restore", {"path": "sub", "to": "/.snapshots/data/y"}
    )
    assert r.status == 409 and r.json["error"]["code"] == "ReadOnly"

    r = await env.call("POST", "/storage/snapshot/data/s1/clone", {"volume": "copy"})
    assert r.status == 201
    r = await env.call("GET", "/storage/volumes/copy")
    assert r.status == 200 and r.json["policy"]["replication"] == 2
    assert meta.lookup(meta.lookup(ROOT_INO, b"copy").ino, b"sub").is_dir
    assert (await env.call("POST", "/storage/snapshot/data/s1/clone", {"volume": "copy"})).status == 409
    assert (await env.call("POST", "/storage/snapshot/data/nope/clone", {"volume": "c2"})).status == 404

    assert (await env.call("DELETE", "/storage/snapshot/data/s1")).status == 200
    assert (await env.call("DELETE", "/storage/snapshot/data/s1")).status == 404
    assert (await env.call("GET", "/storage/snapshot?volume=data")).json["snapshots"] == []
    with pytest.raises(NotFound):
        meta.lookup(meta.lookup(meta.lookup(ROOT_INO, b".snapshots").ino, b"data").ino, b"s1")


# -- config ----------------------------------------------------------------------------------


async def test_config_redacts_secrets(env: Env) -> None:
    r = await env.call("GET", "/storage/config")
    assert r.status == 200
    assert S3_SECRET.encode() not in r.body
    assert TOKEN.encode() not in r.body
    cfg = r.json
    assert cfg["s3"]["secret_key"] == "***"
    assert cfg["s3"]["access_key"] == "admin-test-key"
    assert cfg["tls"]["key_file"] == ""  # empty secrets stay empty: nothing to hide
    assert cfg["node"]["id"] == "node-a" and cfg["rpc"]["listen"] == "127.0.0.1:7400"


async def test_config_live_changes(env: Env) -> None:
    r = await env.call("PUT", "/storage/config", {"log": {"level": "debug"}})
    assert r.status == 200 and r.json["log"]["level"] == "DEBUG"
    assert logging.getLogger().level == logging.DEBUG
    assert (await env.call("GET", "/storage/config")).json["log"]["level"] == "DEBUG"
    assert S3_SECRET.encode() not in r.body

    r = await env.call("PUT", "/storage/config", {"storage": {"gc_interval_s": 5}})
    assert r.status == 400 and "[storage] gc_interval_s" in r.json["error"]["message"]
    assert "restart" in r.json["error"]["message"]
    r = await env.call("PUT", "/storage/config", {"log": {"level": "LOUD"}})
    assert r.status == 400
    r = await env.call("PUT", "/storage/config", {"log": {"colour": "red"}})
    assert r.status == 400 and "unknown option [log] colour" in r.json["error"]["message"]
    r = await env.call("PUT", "/storage/config", {"nosuch": {}})
    assert r.status == 400
    r = await env.call("PUT", "/storage/config", {"log": "DEBUG"})
    assert r.status == 400


# -- request bodies --------------------------------------------------------------------------


async def test_bad_bodies(env: Env) -> None:
    for raw in (b"{not json", b"[1, 2]", b"", b'{"name": NaN}', b"[" * 100_000, b"\xff\xfe"):
        r = await env.call("POST", "/storage/volumes", raw=raw, headers={"Content-Type": "application/json"})
        assert r.status == 400, raw[:20]
        assert r.json["error"]["code"] == "InvalidJSON"
    big = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
    r = await env.call("POST", "/storage/volumes", raw=big)
    assert r.status == 413 and r.json["error"]["code"] == "PayloadTooLarge"


async def test_protocol_errors_are_json(env: Env) -> None:
    def send_garbage() -> bytes:
        import socket

        with socket.create_connection(("127.0.0.1", env.port), timeout=10) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    reply = await trio.to_thread.run_sync(send_garbage)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "BadRequest"


# -- the mount's metrics ---------------------------------------------------------------------


def test_mount_metrics_served_over_http() -> None:
    registry = CollectorRegistry()
    mm = MountMetrics(registry)
    mm.observe("lookup", 0.0002, None)
    mm.observe("lookup", 0.0001, 2)
    mm.observe("write", 0.01, 28)
    server, thread = serve_mount_metrics("127.0.0.1:0", registry)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert 'dfs_fuse_op_seconds_count{op="lookup"} 2.0' in text
    assert 'dfs_fuse_errors_total{errno="ENOENT",op="lookup"} 1.0' in text
    assert 'dfs_fuse_errors_total{errno="ENOSPC",op="write"} 1.0' in text
    with pytest.raises(ValueError):
        serve_mount_metrics("no-port", registry)


def test_two_daemons_in_one_process_have_separate_registries() -> None:
    a = Metrics(node_id="a", version="1", process_metrics=False)
    b = Metrics(node_id="b", version="1", process_metrics=False)
    a.observe_admin("/health", 200)
    text_a, ctype = render(a.registry)
    text_b, _ = render(b.registry)
    assert ctype.startswith("text/plain")
    assert b'dfs_admin_requests_total{route="/health",status="200"} 1.0' in text_a
    assert b"dfs_admin_requests_total{" not in text_b
    assert b'node="b"' in text_b and b'node="a"' not in text_b
