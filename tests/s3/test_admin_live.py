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
