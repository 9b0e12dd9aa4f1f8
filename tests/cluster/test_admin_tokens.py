"""Scoped admin tokens across a cluster: a token made on the metadata primary works on a secondary's
admin API (which has the primary check it), with its scope, and stops working there once revoked
(within the secondary's short cache, daemon/service/frontends.py TOKEN_CACHE_S)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, free_port, wait_for


def call(daemon: Daemon, method: str, path: str, token: str, doc: Any = None) -> tuple[int, Any]:
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(daemon.admin_url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, json.loads(body) if body.startswith(b"{") else None


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    primary_port = free_port()
    primary = Daemon(tmp_path / "n1", primary_port, node_id="n1")
    secondary = Daemon(
        tmp_path / "n2",
        free_port(),
        node_id="n2",
        extra_conf=f'[cluster]\nmeta = "127.0.0.1:{primary_port}"\n',
        joins=primary,
    )
    try:
        primary.start()
        secondary.start()
        yield primary, secondary
    finally:
        secondary.stop()
        primary.stop()


def test_tokens_work_on_a_secondary(pair: tuple[Daemon, Daemon]) -> None:
    primary, secondary = pair
    read = json.loads(primary.cli("admin", "token", "create", "--scope", "read", "--json").stdout)
    # The CLI on the secondary reaches the primary's metadata too.
    admin = json.loads(secondary.cli("admin", "token", "create", "--scope", "admin", "--json").stdout)
    listed = {r["id"] for r in json.loads(secondary.cli("admin", "token", "list", "--json").stdout)}
    assert {read["id"], admin["id"]} <= listed

    wait_for(lambda: call(secondary, "GET", "/storage/nodes", read["token"])[0] == 200, 30, "secondary up")
    for path in ("/metrics", "/storage/metrics", "/storage/volumes"):
        assert call(secondary, "GET", path, read["token"])[0] == 200, path
    status, body = call(secondary, "POST", "/storage/volumes", read["token"], {"name": "from-n2"})
    assert status == 403 and body["error"]["code"] == "Forbidden"
    assert call(secondary, "POST", "/storage/volumes", admin["token"], {"name": "from-n2"})[0] == 201
    assert call(primary, "GET", "/storage/volumes/from-n2", read["token"])[0] == 200
    assert call(secondary, "DELETE", "/storage/volumes/from-n2", admin["token"])[0] == 204
    # Token management through a secondary's API (forwarded to the primary, which holds them).
    status, made = call(secondary, "POST", "/storage/tokens", admin["token"], {"scope": "read", "name": "n2"})
    assert status == 201 and call(primary, "GET", "/storage/nodes", made["token"])[0] == 200
    assert call(secondary, "POST", "/storage/tokens", read["token"], {"scope": "admin"})[0] == 403
    assert call(secondary, "DELETE", f"/storage/tokens/{made['id']}", admin["token"])[0] == 204
    assert call(primary, "GET", "/storage/nodes", made["token"])[0] == 401
    _, bogus = call(secondary, "GET", "/storage/nodes", read["token"][:-2] + "AA")
    assert bogus["error"]["code"] == "Unauthorized"

    secondary.cli("admin", "token", "revoke", read["id"])
    assert call(primary, "GET", "/storage/nodes", read["token"])[0] == 401
    wait_for(lambda: call(secondary, "GET", "/storage/nodes", read["token"])[0] == 401, 20, "revocation")
    assert call(secondary, "GET", "/storage/nodes", admin["token"])[0] == 200
    assert call(secondary, "GET", "/storage/nodes", secondary.admin_token())[0] == 200
    for d in (primary, secondary):
        log = d.log_path.read_text()
        assert read["token"] not in log and admin["token"] not in log


def test_a_secondary_is_healthy_while_its_primary_answers(pair: tuple[Daemon, Daemon]) -> None:
    primary, secondary = pair
    token = secondary.admin_token()
    wait_for(lambda: call(secondary, "GET", "/storage/health", token)[0] == 200, 30, "secondary healthy")
    _, doc = call(secondary, "GET", "/storage/health", token)
    assert doc["status"] == "ok"
    assert {c["name"]: c["detail"] for c in doc["checks"]}["metadata"] == "the metadata primary answers"
    primary.stop()
    status, doc = call(secondary, "GET", "/storage/health", token)
    assert status == 503 and doc["status"] == "down"
    assert not {c["name"]: c["ok"] for c in doc["checks"]}["metadata"]
