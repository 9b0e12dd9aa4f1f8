"""Browser-upload forms (multipart/form-data POSTs) sent by hand, and their answers."""

from __future__ import annotations

import http.client
import secrets
from collections.abc import Iterable, Iterator

from tests.conftest import Daemon


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def code(self) -> str:
        """The <Code> of an S3 error body ("" if none)."""
        text = self.body.decode("utf-8", "replace")
        start = text.find("<Code>")
        return text[start + 6 : text.find("</Code>")] if start >= 0 else ""

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:400]!r})"


def post_form(
    d: Daemon,
    path: str,
    fields: Iterable[tuple[str, str]],
    data: bytes | Iterable[bytes],
    *,
    size: int | None = None,
    filename: str = "upload.bin",
    host: str | None = None,
) -> Answer:
    """POST a multipart/form-data body: ``fields`` in order, then the file part."""
    boundary = "----dfsform" + secrets.token_hex(8)
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    if isinstance(data, bytes):
        size = len(data)
        data = [data]
    assert size is not None

    def body() -> Iterator[bytes]:
        yield head
        yield from data
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    if host is not None:
        headers["Host"] = host
    conn = http.client.HTTPConnection("127.0.0.1", d.s3_port, timeout=120)
    try:
        conn.request("POST", path, body=body(), headers=headers)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
