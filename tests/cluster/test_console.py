"""The web console under /ui/ (daemon/admin/console.py).

Fast tests drive one real daemon over HTTP: login, cookie flags, CSRF and Origin checks on
changes made with the session cookie, scopes, logout, the Content-Security-Policy and HTML
escaping.  Session expiry is checked on the session table with a fake clock.  The slow test
drives headless Chromium against a real three-daemon cluster: log in, watch a node go down
and come back, drain a node and watch repair progress, and look at it on a phone-sized
screen; screenshots land in the test's tmp_path (and docs/console.png with
DFS_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.admin.console import REVALIDATE_S, Console, History, SessionTable, Totals, cookie_value
from daemon.http import Request
from tests.browser import PHONE, chromium, needs_chromium, publish, screenshot, wait_until
from tests.cluster.test_replication import loopback_cluster, s3_client
from tests.conftest import STEADY_CLUSTER, Daemon, admin_ok, free_port, http_call

REPO = Path(__file__).resolve().parents[2]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the fast tests (they only add and remove S3 keys and tokens)."""
    d = Daemon(tmp_path_factory.mktemp("console") / "var", free_port(), node_id="c1")
    d.start()
    try:
        yield d
        d.assert_clean()
    finally:
        d.stop()


def login(d: Daemon, token: str) -> tuple[int, dict[str, str], bytes]:
    return http_call(
        d.admin_port, "POST", "/ui/login", urllib.parse.urlencode({"token": token}).encode(), FORM
    )


def session(d: Daemon, token: str | None = None) -> tuple[str, str]:
    """Log in: (the Cookie header value, the page's CSRF token)."""
    status, headers, _ = login(d, token or d.admin_token())
    assert status == 303 and headers["location"] == "/ui/", status
    cookie = headers["set-cookie"].split(";", 1)[0]
    status, _, page = http_call(d.admin_port, "GET", "/ui/", None, {"Cookie": cookie})
    assert status == 200
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.decode())
    assert match is not None
    return cookie, match.group(1)


def test_login_cookie_flags_csp_and_static_files(node: Daemon) -> None:
    port = node.admin_port
    status, headers, _ = http_call(port, "GET", "/ui/")
    assert (status, headers["location"]) == (303, "/ui/login")
    status, headers, body = http_call(port, "GET", "/ui/login")
    assert status == 200 and b'name="token"' in body
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert b"<script>" not in body and b" style=" not in body  # nothing inline for the CSP to block

    status, headers, body = login(node, "not-the-token-at-all")
    assert status == 401 and "set-cookie" not in headers and b"not valid" in body

    status, headers, _ = login(node, node.admin_token())
    assert status == 303 and headers["location"] == "/ui/"
    flags = [f.strip() for f in headers["set-cookie"].split(";")]
    name, _, value = flags[0].partition("=")
    assert name == "dfs_session" and len(value) >= 43  # 256 random bits, base64url
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(flags)
    assert "Secure" not in flags  # this admin port is plain HTTP
    assert node.admin_token() not in (node.data_dir / "dfsd.log").read_text()
    assert value not in (node.data_dir / "dfsd.log").read_text()

    cookie = flags[0]
    for path in ("/ui/", "/ui/nodes", "/ui/volumes", "/ui/s3"):
        status, headers, body = http_call(port, "GET", path, None, {"Cookie": cookie})
        assert status == 200 and headers["content-type"].startswith("text/html"), path
        assert "script-src 'self'" in headers["content-security-policy"]
        assert b'<script src="/ui/static/console.js" defer></script>' in body
        assert b'name="viewport"' in body
    status, headers, _ = http_call(port, "GET", "/ui/static/console.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    status, headers, _ = http_call(port, "GET", "/ui/static/console.css")
    assert status == 200 and headers["content-type"].startswith("text/css")
    assert http_call(port, "GET", "/ui/static/../api.py")[0] == 404
    status, _, body = http_call(port, "GET", "/ui/api/history", None, {"Cookie": cookie})
    assert status == 200 and json.loads(body)["interval_s"] == 10
    # Bearer use of the API is unchanged, and a console page without a session is refused.
    assert admin_ok(node, "GET", "/storage/nodes")["nodes"][0]["node_id"] == "c1"
    assert http_call(port, "GET", "/ui/fragment/nodes")[0] == 401


def test_changes_with_the_cookie_need_the_csrf_token_and_our_origin(node: Daemon) -> None:
    port = node.admin_port
    cookie, csrf = session(node)
    body = json.dumps({"description": "csrf test"}).encode()
    # Reads with the cookie need nothing more.
    status, _, raw = http_call(port, "GET", "/storage/nodes", None, {"Cookie": cookie})
    assert status == 200 and json.loads(raw)["nodes"]
    refused = [
        {"Cookie": cookie, **JSON},
        {"Cookie": cookie, **JSON, "X-CSRF-Token": "wrong"},
        {"Cookie": cookie, **JSON, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    ]
    for headers in refused:
        status, _, raw = http_call(port, "POST", "/storage/s3/keys", body, headers)
        assert status == 403, (headers, raw)
    assert not [
        k for k in admin_ok(node, "GET", "/storage/s3/keys")["keys"] if k["description"] == "csrf test"
    ]
    own = f"http://127.0.0.1:{port}"
    headers = {"Cookie": cookie, **JSON, "X-CSRF-Token": csrf, "Origin": own, "Host": f"127.0.0.1:{port}"}
    status, _, raw = http_call(port, "POST", "/storage/s3/keys", body, headers)
    assert status == 201, raw
    access_key = json.loads(raw)["access_key"]
    status, _, _ = http_call(port, "DELETE", f"/storage/s3/keys/{access_key}", None, headers)
    assert status == 204
    # A forged or stale cookie is no session at all.
    status, _, _ = http_call(port, "GET", "/storage/nodes", None, {"Cookie": "dfs_session=forged"})
    assert status == 401


def test_read_scope_session_sees_but_cannot_drain(node: Daemon) -> None:
    made = admin_ok(node, "POST", "/storage/tokens", {"scope": "read", "name": "console viewer"})
    try:
        cookie, csrf = session(node, made["token"])
        port = node.admin_port
        status, _, page = http_call(port, "GET", "/ui/nodes", None, {"Cookie": cookie})
        assert status == 200 and b'data-node="c1"' in page and b"Drain" not in page
        status, _, page = http_call(port, "GET", "/ui/s3", None, {"Cookie": cookie})
        assert status == 200 and b"may not see this page" in page and b"s3key-form" not in page
        drain = json.dumps({"state": "draining"}).encode()
        headers = {"Cookie": cookie, **JSON, "X-CSRF-Token": csrf}
        status, _, raw = http_call(port, "PUT", "/storage/nodes/c1", drain, headers)
        assert status == 403 and b"read token" in raw
        assert admin_ok(node, "GET", "/storage/nodes/c1")["state"] == "active"
    finally:
        admin_ok(node, "DELETE", f"/storage/tokens/{made['id']}")


def test_logout_ends_the_session(node: Daemon) -> None:
    port = node.admin_port
    cookie, csrf = session(node)
    assert http_call(port, "POST", "/ui/logout", None, {"Cookie": cookie})[0] == 403  # CSRF applies
    status, headers, _ = http_call(port, "POST", "/ui/logout", None, {"Cookie": cookie, "X-CSRF-Token": csrf})
    assert status == 303 and headers["location"] == "/ui/login"
    assert "Max-Age=0" in headers["set-cookie"]
    status, headers, _ = http_call(port, "GET", "/ui/", None, {"Cookie": cookie})
    assert (status, headers["location"]) == (303, "/ui/login")
    assert http_call(port, "GET", "/storage/nodes", None, {"Cookie": cookie})[0] == 401


def test_values_are_html_escaped(node: Daemon) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    made = admin_ok(node, "POST", "/storage/s3/keys", {"description": evil})
    try:
        cookie, _ = session(node)
        status, _, raw = http_call(node.admin_port, "GET", "/ui/fragment/s3", None, {"Cookie": cookie})
        page = raw.decode()
        assert status == 200 and made["access_key"] in page
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    finally:
        admin_ok(node, "DELETE", f"/storage/s3/keys/{made['access_key']}")
    # Volume names cannot carry markup at all: the API holds them to S3 bucket rules.
    status, _, _ = http_call(
        node.admin_port,
        "POST",
        "/storage/volumes",
        json.dumps({"name": "<script>"}).encode(),
        {"Authorization": f"Bearer {node.admin_token()}", **JSON},
    )
    assert status == 400


@pytest.mark.slow  # a CA and a certificate to make, then a TLS daemon
def test_https_admin_port_marks_the_cookie_secure(tmp_path: Path) -> None:
    import http.client
    import ssl

    from tests.s3.conftest import make_tls

    ca, cert, key = make_tls(tmp_path / "tls")
    d = Daemon(
        tmp_path / "var",
        free_port(),
        extra_conf=f'https = true\n[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nca_file = "{ca}"\n',
    )
    d.start()
    try:
        ctx = ssl.create_default_context(cafile=str(ca))

        def call(method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
            conn = http.client.HTTPSConnection("127.0.0.1", d.admin_port, timeout=30, context=ctx)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                return resp
            finally:
                conn.close()

        form = urllib.parse.urlencode({"token": d.admin_token()}).encode()
        # A form posted from the plain-HTTP origin of the same host is another origin.
        origin = f"http://127.0.0.1:{d.admin_port}"
        assert call("POST", "/ui/login", form, {**FORM, "Origin": origin}).status == 403
        resp = call("POST", "/ui/login", form, {**FORM, "Origin": "https" + origin.removeprefix("http")})
        assert resp.status == 303
        flags = [f.strip() for f in resp.getheader("set-cookie").split(";")]
        assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= set(flags)
        assert call("GET", "/ui/nodes", None, {"Cookie": flags[0]}).status == 200
    finally:
        d.stop()


def test_session_table_expires_and_stays_bounded() -> None:
    now = [1000.0]
    table = SessionTable(max_sessions=3, idle_s=60, max_age_s=300, clock=lambda: now[0])
    sid, s = table.create("admin")
    assert len(sid) >= 43 and len(s.csrf) >= 43 and sid != s.csrf
    now[0] += 59
    assert table.get(sid) is s  # used: the idle timer restarts
    now[0] += 59
    assert table.get(sid) is s
    now[0] += 61
    assert table.get(sid) is None  # idle too long
    sid, s = table.create("read")
    for _ in range(5):
        now[0] += 50
        assert table.get(sid) is s
    now[0] += 60
    assert table.get(sid) is None  # older than max_age_s, however busy
    ids = [table.create("read")[0] for _ in range(5)]
    assert len(table) == 3 and table.get(ids[0]) is None and table.get(ids[-1]) is not None
    table.drop(ids[-1])
    assert table.get(ids[-1]) is None


def test_history_rates_and_bound() -> None:
    history = History(capacity=3)
    history.sample(100.0, 10.0, Totals(ops=5, s3_in_bytes=0, s3_out_bytes=0, repair_bytes=0))
    assert history.doc()["points"] == []  # the first sample is only the base
    history.sample(110.0, 20.0, Totals(ops=25, s3_in_bytes=1000, s3_out_bytes=0, repair_bytes=0))
    point = history.doc()["points"][0]
    assert (point["t"], point["ops_s"], point["s3_in_bytes_s"]) == (110.0, 2.0, 100.0)
    # A restart of the counters reads as zero, never as a negative rate.
    history.sample(120.0, 30.0, Totals(ops=0, s3_in_bytes=0, s3_out_bytes=0, repair_bytes=0))
    assert history.doc()["points"][-1]["ops_s"] == 0
    for i in range(5):
        history.sample(130.0 + i, 40.0 + i, Totals(ops=i, s3_in_bytes=0, s3_out_bytes=0, repair_bytes=0))
    assert len(history.doc()["points"]) == 3


async def test_revoking_the_token_ends_its_sessions() -> None:
    now = [1000.0]
    valid = {"dfs_tok_read": "read"}

    async def scope_of(token: str) -> str | None:
        return valid.get(token)

    async def nothing(_: str) -> Any:
        raise AssertionError("not called")

    console = Console(
        node_id="t",
        https=False,
        api_get=nothing,
        scope_of=scope_of,
        members=list,
        repair_status=nothing,
        totals=nothing,
        loop_lag_s=lambda: 0.0,
        sessions=SessionTable(clock=lambda: now[0]),
    )
    session_id, _ = console.sessions.create("read", "dfs_tok_read")
    req = Request.buffered("GET", "/storage/nodes", [("cookie", f"dfs_session={session_id}")], b"", "t")
    assert await console.session_scope(req) == "read"
    del valid["dfs_tok_read"]  # revoked
    now[0] += REVALIDATE_S / 2
    assert await console.session_scope(req) == "read"  # not checked again yet
    now[0] += REVALIDATE_S
    assert await console.session_scope(req) is None
    assert len(console.sessions) == 0


def test_cookie_parsing() -> None:
    req = Request.buffered("GET", "/ui/", [("cookie", "a=1; dfs_session=abc=; b=2")], b"", "t")
    assert cookie_value(req) == "abc="
    assert cookie_value(Request.buffered("GET", "/ui/", [("cookie", "dfs_sessionx=1")], b"", "t")) is None


# -- in Chromium ----------------------------------------------------------------------------


def _text(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


@pytest.mark.slow
@needs_chromium
def test_console_in_chromium(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    artifacts = tmp_path / "artifacts"
    with loopback_cluster(tmp_path, 3, STEADY_CLUSTER) as daemons:
        n1, n2, n3 = daemons
        # Some data, so draining a node has chunks to move.
        s3 = s3_client(n1, *n1.root_key())
        s3.create_bucket(Bucket="photos")
        for i in range(8):
            s3.upload_fileobj(io.BytesIO(os.urandom(512 * 1024 + i)), "photos", f"p{i}")
        admin_ok(n1, "POST", "/storage/snapshot", {"volume": "photos", "name": "before-drain"})

        with chromium(tmp_path / "profile") as driver:
            driver.get(n1.admin_url + "/ui/")
            wait_until(driver, lambda d: d.current_url.endswith("/ui/login"), 10, "the login page")
            driver.find_element(By.ID, "token").send_keys("wrong-token-wrong-token")
            driver.find_element(By.ID, "login").click()
            wait_until(driver, lambda d: "not valid" in _text(d, ".error"), 10, "the refusal")
            driver.find_element(By.ID, "token").send_keys(n1.admin_token())
            driver.find_element(By.ID, "login").click()
            wait_until(driver, lambda d: d.current_url.endswith("/ui/"), 10, "the overview")
            wait_until(
                driver,
                lambda d: _text(d, "#members").count("alive") >= 4,  # the summary badge and 3 nodes
                20,
                "three live nodes on the overview",
            )
            assert "ok" in _text(driver, "#health")
            wait_until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-ops text"), 10, "the chart")
            screenshot(driver, artifacts, "overview")

            driver.get(n1.admin_url + "/ui/nodes")
            row = 'tr[data-node="n3"] td.gossip'
            wait_until(driver, lambda d: "alive" in _text(d, row), 10, "n3 alive")
            n3.stop()  # SIGTERM: it says goodbye ("left"); a crash would read "dead"
            wait_until(driver, lambda d: {"left", "dead"} & set(_text(d, row).split()), 30, "n3 shown down")
            screenshot(driver, artifacts, "node-down")
            n3.start()
            wait_until(driver, lambda d: "alive" in _text(d, row), 30, "n3 alive again")

            # Repair settled first, and the page refreshed since: what it counts next is the drain's.
            n1.cli("status", "--wait", "--timeout", "60")
            settled_ms = time.time() * 1000 + 3000  # the repair figures are cached for 2 s
            wait_until(
                driver,
                lambda d: (
                    int(d.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed")) > settled_ms
                ),
                15,
                "a refresh after repair settled",
            )
            copies_before = int(_text(driver, "#repair-copies"))
            drain = driver.find_element(By.CSS_SELECTOR, 'tr[data-node="n2"] button.action')
            assert drain.text == "Drain"
            drain.click()
            wait_until(driver, expected_conditions.alert_is_present(), 5, "the confirmation").accept()
            wait_until(
                driver, lambda d: "draining" in _text(d, 'tr[data-node="n2"] td.state'), 15, "n2 draining"
            )

            def repair_seen(d: Any) -> bool:
                copies = _text(d, "#repair-copies")
                pending = _text(d, "#repair-pending")
                return (
                    copies.isdigit()
                    and pending.isdigit()
                    and (int(pending) > 0 or int(copies) > copies_before)
                )

            wait_until(driver, repair_seen, 30, "repair progress")
            screenshot(driver, artifacts, "draining")
            assert admin_ok(n1, "GET", "/storage/nodes/n2")["state"] == "draining"

            # A snapshot, an S3 key and a grant made through the pages' forms.
            volume_row = 'tr[data-volume="photos"]'
            driver.get(n1.admin_url + "/ui/volumes")
            wait_until(driver, lambda d: "before-drain" in _text(d, volume_row), 10, "snapshots")
            driver.find_element(By.CSS_SELECTOR, '#snapshot-form input[name="name"]').send_keys("from-ui")
            driver.find_element(By.CSS_SELECTOR, '#snapshot-form button[type="submit"]').click()
            wait_until(driver, lambda d: "from-ui" in _text(d, volume_row), 10, "the new snapshot")

            driver.get(n1.admin_url + "/ui/s3")
            driver.find_element(By.CSS_SELECTOR, '#s3key-form input[name="description"]').send_keys(
                "made in ui"
            )
            driver.find_element(By.CSS_SELECTOR, '#s3key-form button[type="submit"]').click()
            secret = wait_until(driver, lambda d: _text(d, "#new-secret-key"), 10, "the new key's secret")
            access_key = _text(driver, "#new-access-key")
            assert len(secret) >= 20 and access_key
            key_row = f'tr[data-key="{access_key}"]'
            wait_until(driver, lambda d: "made in ui" in _text(d, key_row), 10, "the new key listed")
            driver.find_element(By.CSS_SELECTOR, '#grant-form input[name="access_key"]').send_keys(access_key)
            driver.find_element(By.CSS_SELECTOR, '#grant-form input[name="bucket"]').send_keys("photos")
            driver.find_element(By.CSS_SELECTOR, '#grant-form button[type="submit"]').click()
            wait_until(driver, lambda d: "photos: rw" in _text(d, key_row), 10, "the grant listed")
            screenshot(driver, artifacts, "s3-keys")
            revoke = f"{key_row} button.action[data-confirm]"
            driver.find_element(By.CSS_SELECTOR, revoke).click()
            wait_until(driver, expected_conditions.alert_is_present(), 5, "the confirmation").accept()
            wait_until(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, key_row), 10, "the key revoked")
            keys = admin_ok(n1, "GET", "/storage/s3/keys")["keys"]
            assert access_key not in {k["access_key"] for k in keys}

            # The overview once more, mid-drain, with some history in the charts: the README's picture.
            driver.get(n1.admin_url + "/ui/")
            wait_until(
                driver, lambda d: "draining" in _text(d, "#members"), 10, "n2 draining on the overview"
            )
            wait_until(
                driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-ops polyline"), 20, "a chart line"
            )
            publish(screenshot(driver, artifacts, "overview-draining"), REPO / "docs" / "console.png")

            driver.set_window_size(*PHONE)
            driver.get(n1.admin_url + "/ui/")
            wait_until(driver, lambda d: "alive" in _text(d, "#members"), 10, "the overview on a phone")
            width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1] + 1, f"the page scrolls sideways on a phone: {width}"
            assert driver.find_element(By.CSS_SELECTOR, 'nav a[href="/ui/nodes"]').is_displayed()
            screenshot(driver, artifacts, "phone")

            driver.find_element(By.ID, "logout").click()
            wait_until(driver, lambda d: d.current_url.endswith("/ui/login"), 10, "logged out")
            driver.get(n1.admin_url + "/ui/nodes")
            assert driver.current_url.endswith("/ui/login")  # the session is gone, not just the page

        # A secondary's console shows the same cluster (its API forwards to the primary).
        cookie, _ = session(n2)
        status, _, raw = http_call(n2.admin_port, "GET", "/ui/fragment/nodes", None, {"Cookie": cookie})
        assert status == 200 and all(f'data-node="{n}"'.encode() in raw for n in ("n1", "n2", "n3"))
        assert b"draining" in raw
        admin_ok(n1, "PUT", "/storage/nodes/n2", {"state": "active"})
        n1.cli("status", "--wait", "--timeout", "60")
        n1.assert_clean()
    assert {p.name for p in artifacts.iterdir()} >= {
        "overview.png",
        "node-down.png",
        "draining.png",
        "phone.png",
    }
