"""The admin API and Prometheus metrics of a real dfsd, beside its S3 endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.conftest import Daemon


def get(daemon: Daemon, path: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(daemon.admin_url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_metrics_and_token(s3d: Daemon, s3: Any) -> None:
    assert (s3d.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    assert (s3d.data_dir / "s3-root.json").stat().st_mode & 0o777 == 0o600
    token = s3d.admin_token()
    assert get(s3d, "/health")[0] == 200
    assert get(s3d, "/storage/health")[0] == 401
    assert get(s3d, "/storage/health", "wrong-token-0000000")[0] == 401
    status, body = get(s3d, "/storage/health", token)
    assert status == 200 and json.loads(body)["ready"] is True
    s3.create_bucket(Bucket="metered")
    s3.put_object(Bucket="metered", Key="k", Body=b"12345")
    s3.get_object(Bucket="metered", Key="k")["Body"].read()
    assert get(s3d, "/metrics")[0] == 401
    status, text = get(s3d, "/metrics", token)
    assert status == 200
    for name in (
        'dfs_s3_requests_total{operation="PutObject",status="200"}',
        "dfs_s3_request_seconds_bucket",
        "dfs_s3_bytes_in_total",
        "dfs_rpc_request_seconds",
        "dfs_chunk_store_bytes",
        "dfs_event_loop_lag_seconds",
        "dfs_meta_op_seconds_count",
    ):
        assert name.encode() in text, name
    status, body = get(s3d, "/storage/volumes", token)
    assert status == 200 and "metered" in body.decode()
    status, body = get(s3d, "/storage/openapi.json", token)
    assert status == 200 and json.loads(body)["openapi"].startswith("3.")


@pytest.mark.parametrize("secret_field", ["secret_key"])
def test_config_never_shows_secrets(s3d: Daemon, secret_field: str) -> None:
    status, body = get(s3d, "/storage/config", s3d.admin_token())
    assert status == 200
    _, sk = s3d.root_key()
    assert sk.encode() not in body
    assert s3d.admin_token().encode() not in body
    assert secret_field in json.loads(body)["s3"]


def call(daemon: Daemon, method: str, path: str, token: str, doc: Any = None) -> tuple[int, Any]:
    """One admin API request; (status, parsed JSON body or None)."""
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(daemon.admin_url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, json.loads(body) if body.startswith(b"{") else None


def test_scoped_tokens_from_the_cli(s3d: Daemon) -> None:
    """`dfs admin token create|list|revoke` against a real daemon: a read token reads and is refused
    every change (403), an admin token does both, a revoked token answers 401, and no token
    reaches the daemon's log."""
    read = json.loads(
        s3d.cli("admin", "token", "create", "--scope", "read", "--name", "grafana", "--json").stdout
    )
    admin_out = s3d.cli("admin", "token", "create", "--scope", "admin").stdout
    admin = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in admin_out.splitlines())}
    assert read["scope"] == "read" and admin["scope"] == "admin"
    shown = [read["token"], admin["token"]]

    listed = s3d.cli("admin", "token", "list").stdout
    assert read["id"] in listed and admin["id"] in listed and "grafana" in listed
    assert not any(t in listed for t in shown)
    rows = json.loads(s3d.cli("admin", "token", "list", "--json").stdout)
    assert {(r["id"], r["scope"]) for r in rows} >= {(read["id"], "read"), (admin["id"], "admin")}
    assert all(set(r) == {"id", "name", "scope", "created_ns"} for r in rows)

    for path in ("/metrics", "/storage/health", "/storage/metrics", "/storage/nodes", "/storage/volumes"):
        assert get(s3d, path, read["token"])[0] == 200, path
        assert get(s3d, path, admin["token"])[0] == 200, path
    for method, path, doc in (
        ("POST", "/storage/volumes", {"name": "scoped-vol"}),
        ("PUT", "/storage/volumes/scoped-vol", {"replication": 1}),
        ("DELETE", "/storage/volumes/scoped-vol", None),
        ("POST", "/storage/tokens", {"scope": "admin"}),
    ):
        status, body = call(s3d, method, path, read["token"], doc)
        assert status == 403 and body["error"]["code"] == "Forbidden", (method, path, status)
    status, _ = call(s3d, "POST", "/storage/volumes", admin["token"], {"name": "scoped-vol"})
    assert status == 201
    assert call(s3d, "PUT", "/storage/volumes/scoped-vol", admin["token"], {"replication": 1})[0] == 200
    assert call(s3d, "DELETE", "/storage/volumes/scoped-vol", admin["token"])[0] == 204
    # An admin-scoped token manages tokens through the API too.
    status, made = call(s3d, "POST", "/storage/tokens", admin["token"], {"scope": "read", "name": "api"})
    assert status == 201 and made["scope"] == "read"
    shown.append(made["token"])
    assert get(s3d, "/storage/health", made["token"])[0] == 200
    assert call(s3d, "DELETE", f"/storage/tokens/{made['id']}", admin["token"])[0] == 204
    assert get(s3d, "/storage/health", made["token"])[0] == 401

    assert s3d.cli("admin", "token", "revoke", read["id"]).stdout.strip() == f"revoked {read['id']}"
    assert get(s3d, "/storage/health", read["token"])[0] == 401
    assert get(s3d, "/storage/health", admin["token"])[0] == 200
    assert not s3d.cli_ok("admin", "token", "revoke", read["id"])  # already gone
    s3d.cli("admin", "token", "revoke", admin["id"])
    assert get(s3d, "/storage/health", admin["token"])[0] == 401
    assert get(s3d, "/storage/health", s3d.admin_token())[0] == 200  # the first-run token is unaffected
    log = s3d.log_path.read_text()
    for token in [*shown, s3d.admin_token()]:
        assert token not in log
    for token in shown:
        assert token[len("dfs_") + 13 :] not in log  # nor the secret part alone
