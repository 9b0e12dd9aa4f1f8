"""Raw S3 requests signed with botocore's SigV4 signer, for what boto3 cannot send as is
(a hand-made body, an Origin header) and for reading every response header."""

from __future__ import annotations

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import Daemon, http_call


def signed_call(
    d: Daemon,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    keys: tuple[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One signed request to ``d``'s S3 port (``target`` is path and query): (status, lower-cased
    headers, body).  Extra ``headers`` are signed along."""
    url = f"http://127.0.0.1:{d.s3_port}{target}"
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    S3SigV4Auth(Credentials(*(keys or d.root_key())), "s3", "us-east-1").add_auth(req)
    sent = {k: str(v) for k, v in req.headers.items()}
    return http_call(d.s3_port, method, target, body or None, sent)
