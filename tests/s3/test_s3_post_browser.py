"""Browser uploads (POST Object) sent by real clients: headless Chromium and ``curl -F``.

tests/s3/test_s3_post.py encodes the forms by hand; here the multipart/form-data body is
whatever Chromium makes of an HTML form (field order, filename quoting, Content-Length,
following the 303) and whatever curl makes of ``-F`` (``Expect: 100-continue``).  The
form is a botocore ``generate_presigned_post`` policy (SigV4) with a content-length-range
and a ``${filename}`` key; the page is served from a loopback http.server thread and the
success redirect points back at it.  Every test ends with the daemon's fsck clean.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import html
import http.server
import json
import os
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import chromium, needs_chromium, wait_until
from tests.conftest import Daemon
from tests.s3.conftest import make_client

MAX_BYTES = 64 * 1024
# The file a browser user picks: a space and a non-ASCII letter, so ${filename} is more than ASCII.
FILENAME = "menu du café.txt"
PAGE_WAIT_S = 20.0
CURL_TIMEOUT_S = 30.0

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest would show every GET as noise on stderr


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on loopback from a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="form-page", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def presigned_post(s3d: Daemon, bucket: str, **success: str) -> tuple[str, dict[str, str]]:
    """(URL to post to, hidden fields): key ``uploads/${filename}``, 1..MAX_BYTES bytes, and the
    given success_action_status or success_action_redirect (echoed as an exact condition)."""
    v4 = make_client(s3d, signature_version="s3v4")  # botocore signs a POST policy with SigV2 by default
    post = v4.generate_presigned_post(
        Bucket=bucket,
        Key="uploads/${filename}",
        Fields=dict(success),
        Conditions=[["content-length-range", 1, MAX_BYTES], *({k: v} for k, v in success.items())],
        ExpiresIn=600,
    )
    fields: dict[str, str] = post["fields"]
    conditions = json.loads(base64.b64decode(fields["policy"]))["conditions"]
    # botocore turns the ${filename} key into a prefix condition: what the server must enforce.
    assert ["starts-with", "$key", "uploads/"] in conditions, conditions
    return post["url"], fields


def form_page(url: str, fields: dict[str, str]) -> str:
    hidden = "\n".join(
        f'    <input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>upload</title></head><body>
  <form id="upload" method="post" enctype="multipart/form-data" action="{html.escape(url)}">
{hidden}
    <input type="file" name="file" id="file">
    <input type="submit" id="send" value="Upload">
  </form>
</body></html>
"""


def missing(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        return bool(exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404)
    return False


def navigation_status(driver: WebDriver) -> int:
    """The HTTP status of the page the browser is showing (Navigation Timing's responseStatus)."""
    status = driver.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")
    assert isinstance(status, int), status
    return status


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module's browser tests (starting one costs ~1 s)."""
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def upload_in_browser(driver: WebDriver, site: Path, base_url: str, page: str, picked: Path) -> None:
    """Open the form page, pick ``picked`` in the file input and submit."""
    from selenium.webdriver.common.by import By

    (site / "form.html").write_text(page, encoding="utf-8")
    driver.get(f"{base_url}/form.html")
    wait_until(driver, lambda d: d.find_elements(By.ID, "file"), PAGE_WAIT_S, "the form")
    driver.find_element(By.ID, "file").send_keys(str(picked))  # what "Choose file" does
    driver.find_element(By.ID, "send").click()


@pytest.mark.slow
@needs_chromium
def test_chromium_form_upload_redirects(
    s3d: Daemon, s3: Any, bucket: str, browser: WebDriver, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "done.html").write_text("<!doctype html><title>done</title><p id=done>uploaded</p>\n")
    picked = tmp_path / "picked" / FILENAME
    picked.parent.mkdir()
    data = b"form upload from chromium\r\n--not-a-boundary\r\n" + os.urandom(20_000)
    picked.write_bytes(data)
    with serve_directory(site) as base_url:
        target = f"{base_url}/done.html"
        url, fields = presigned_post(s3d, bucket, success_action_redirect=target)
        assert url == f"{s3d.s3_endpoint}/{bucket}"
        upload_in_browser(browser, site, base_url, form_page(url, fields), picked)
        wait_until(browser, lambda d: d.current_url.startswith(target), PAGE_WAIT_S, "the success page")
        assert navigation_status(browser) == 200

    key = f"uploads/{FILENAME}"
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    assert query == {"bucket": [bucket], "key": [key], "etag": [etag]}, browser.current_url
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == data
    assert got["ETag"] == etag
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    s3d.assert_clean()


@pytest.mark.slow
@needs_chromium
def test_chromium_form_too_large_is_refused(
    s3d: Daemon, s3: Any, bucket: str, browser: WebDriver, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    picked = tmp_path / "picked" / "too-big.bin"
    picked.parent.mkdir()
    # Past one receive piece (256 KiB) so the refusal comes mid-body, yet under the 1 MiB the
    # HTTP server drains after an early answer (so the browser reads the answer, not a reset).
    picked.write_bytes(os.urandom(5 * MAX_BYTES))
    with serve_directory(site) as base_url:
        url, fields = presigned_post(s3d, bucket, success_action_redirect=f"{base_url}/done.html")
        upload_in_browser(browser, site, base_url, form_page(url, fields), picked)
        wait_until(browser, lambda d: "EntityTooLarge" in d.page_source, PAGE_WAIT_S, "the error page")
        assert browser.current_url == url  # no redirect: the answer to the POST itself
        assert navigation_status(browser) == 400
    assert "exceeds the maximum allowed size" in browser.page_source
    assert missing(s3, bucket, "uploads/too-big.bin")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    s3d.assert_clean()


@pytest.mark.slow
@needs_curl
def test_curl_form_upload(s3d: Daemon, s3: Any, bucket: str, tmp_path: Path) -> None:
    picked = tmp_path / "curl-upload.bin"
    data = os.urandom(MAX_BYTES)  # exactly the policy's maximum: the range is inclusive
    picked.write_bytes(data)
    url, fields = presigned_post(s3d, bucket, success_action_status="201")
    body_path = tmp_path / "answer.xml"

    def curl(path: Path, filename: str) -> int:
        # --form-string: a value is never read as "@file" or "<file"; -F for the file part only.
        args = [a for k, v in fields.items() for a in ("--form-string", f"{k}={v}")]
        done = subprocess.run(
            ["curl", "-sS", "-o", str(body_path), "-w", "%{http_code}", *args]
            + ["-F", f"file=@{path};filename={filename}", url],
            capture_output=True,
            text=True,
            timeout=CURL_TIMEOUT_S,
            check=True,
        )
        return int(done.stdout)

    assert curl(picked, "report 1.bin") == 201, body_path.read_text()
    answer = body_path.read_text()
    key = "uploads/report 1.bin"
    assert f"<Bucket>{bucket}</Bucket>" in answer and f"<Key>{key}</Key>" in answer, answer
    assert hashlib.md5(data).hexdigest() in answer
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data

    # One byte over the range: refused, nothing stored.
    picked.write_bytes(data + b"x")
    assert curl(picked, "over.bin") == 400
    assert "<Code>EntityTooLarge</Code>" in body_path.read_text()
    assert missing(s3, bucket, "uploads/over.bin")
    s3d.assert_clean()
