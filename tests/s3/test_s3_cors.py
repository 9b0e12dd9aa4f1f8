"""Bucket CORS against a real dfsd: the configuration through boto3 and the aws CLI, unsigned
preflights and Origin-bearing requests as raw HTTP."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon, http_call
from tests.s3.s3signed import signed_call
from tests.s3.test_clients import BIN, base_env

RULES: dict[str, Any] = {
    "CORSRules": [
        {
            "ID": "uploads",
            "AllowedOrigins": ["https://app.example.com"],
            "AllowedMethods": ["PUT", "POST"],
            "AllowedHeaders": ["content-type", "x-amz-*"],
            "ExposeHeaders": ["ETag", "x-amz-request-id"],
            "MaxAgeSeconds": 600,
        },
        {"AllowedOrigins": ["https://*.example.org"], "AllowedMethods": ["GET", "HEAD"]},
        {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]},
    ]
}


def code(err: ClientError) -> str:
    return str(err.response["Error"]["Code"])


def preflight(
    d: Daemon, target: str, origin: str | None, method: str | None, headers: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    sent: dict[str, str] = {}
    if origin is not None:
        sent["Origin"] = origin
    if method is not None:
        sent["Access-Control-Request-Method"] = method
    if headers is not None:
        sent["Access-Control-Request-Headers"] = headers
    return http_call(d.s3_port, "OPTIONS", target, None, sent)


def test_configuration_round_trip(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_bucket_cors(Bucket=bucket)
    assert code(err.value) == "NoSuchCORSConfiguration"
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == RULES["CORSRules"]
    s3.delete_bucket_cors(Bucket=bucket)
    with pytest.raises(ClientError) as err:
        s3.get_bucket_cors(Bucket=bucket)
    assert code(err.value) == "NoSuchCORSConfiguration"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}, "InvalidRequest"),
        ({"AllowedOrigins": ["https://*.*.example.com"], "AllowedMethods": ["GET"]}, "InvalidRequest"),
        ({"AllowedOrigins": ["*"], "AllowedMethods": ["GET"], "AllowedHeaders": ["x-*-*"]}, "InvalidRequest"),
        ({"AllowedOrigins": ["*"], "AllowedMethods": ["GET"], "ID": "i" * 256}, "InvalidArgument"),
    ],
)
def test_invalid_rules(s3: Any, bucket: str, rule: dict[str, Any], expected: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})
    assert code(err.value) == expected
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_rule_count_limit(s3: Any, bucket: str) -> None:
    rule = {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule] * 100})
    with pytest.raises(ClientError) as err:
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule] * 101})
    assert code(err.value) == "MalformedXML"
    assert len(s3.get_bucket_cors(Bucket=bucket)["CORSRules"]) == 100


def test_preflight(s3d: Daemon, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"x")
    target = f"/{bucket}/o"
    # No configuration: refused, unauthenticated and all.
    status, _, body = preflight(s3d, target, "https://app.example.com", "PUT")
    assert status == 403 and b"CORSResponse" in body, body
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)

    status, headers, _ = preflight(
        s3d, target, "https://app.example.com", "PUT", "Content-Type, X-Amz-Meta-Colour"
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    assert headers["access-control-allow-methods"] == "PUT, POST"
    assert headers["access-control-allow-headers"] == "content-type, x-amz-meta-colour"
    assert headers["access-control-expose-headers"] == "ETag, x-amz-request-id"
    assert headers["access-control-max-age"] == "600"
    assert headers["access-control-allow-credentials"] == "true"
    assert "Origin" in headers["vary"]

    # The wildcard origin rule, and the catch-all "*" (answered as "*", without credentials).
    status, headers, _ = preflight(s3d, f"/{bucket}", "https://www.example.org", "HEAD")
    assert status == 200 and headers["access-control-allow-origin"] == "https://www.example.org"
    status, headers, _ = preflight(s3d, target, "http://elsewhere.test", "GET")
    assert status == 200 and headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in headers

    for origin, method, wanted in [
        ("https://app.example.com", "DELETE", None),  # method not allowed anywhere
        ("https://app.example.com", "PUT", "authorization-extra"),  # header not allowed
        ("http://elsewhere.test", "PUT", None),  # origin matches only a GET rule
        ("https://example.org", "HEAD", None),  # "*." needs a subdomain
    ]:
        status, headers, body = preflight(s3d, target, origin, method, wanted)
        assert status == 403, (origin, method, wanted)
        assert b"<Code>AccessForbidden</Code>" in body and b"CORSResponse" in body
        assert "access-control-allow-origin" not in headers
    status, _, body = preflight(s3d, target, None, "GET")
    assert status == 400
    status, _, body = preflight(s3d, target, "https://app.example.com", None)
    assert status == 400

    # Deleting the configuration takes effect at once on this daemon (its cache is dropped).
    s3.delete_bucket_cors(Bucket=bucket)
    status, _, _ = preflight(s3d, target, "http://elsewhere.test", "GET")
    assert status == 403


def test_headers_on_actual_requests(s3d: Daemon, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"hello")
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    status, headers, body = signed_call(
        s3d, "GET", f"/{bucket}/o", headers={"Origin": "https://a.example.org"}
    )
    assert (status, body) == (200, b"hello")
    assert headers["access-control-allow-origin"] == "https://a.example.org"
    assert headers["access-control-allow-credentials"] == "true"
    assert "Origin" in headers["vary"]
    # Errors carry them too (the browser must be able to read the error).
    status, headers, body = signed_call(
        s3d, "GET", f"/{bucket}/missing", headers={"Origin": "https://a.example.org"}
    )
    assert status == 404 and b"NoSuchKey" in body
    assert headers["access-control-allow-origin"] == "https://a.example.org"
    # A PUT from the upload origin gets its expose list.
    status, headers, _ = signed_call(
        s3d, "PUT", f"/{bucket}/up", b"data", headers={"Origin": "https://app.example.com"}
    )
    assert status == 200
    assert headers["access-control-expose-headers"] == "ETag, x-amz-request-id"
    # No rule for DELETE: no CORS headers (the request itself still succeeds).
    status, headers, _ = signed_call(
        s3d, "DELETE", f"/{bucket}/up", headers={"Origin": "https://app.example.com"}
    )
    assert status == 204 and "access-control-allow-origin" not in headers
    # No Origin: nothing added.
    status, headers, _ = signed_call(s3d, "GET", f"/{bucket}/o")
    assert status == 200 and "access-control-allow-origin" not in headers


def test_cors_permissions(s3d: Daemon, s3: Any, bucket: str) -> None:
    from tests.s3.conftest import make_client

    made = json.loads(s3d.cli("s3", "key", "create", "--allow", f"{bucket}:rw", "--json").stdout)
    writer = make_client(s3d, keys=(made["access_key"], made["secret_key"]))
    with pytest.raises(ClientError) as err:
        writer.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    assert code(err.value) == "AccessDenied"
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    assert writer.get_bucket_cors(Bucket=bucket)["CORSRules"] == RULES["CORSRules"]
    with pytest.raises(ClientError) as err:
        writer.delete_bucket_cors(Bucket=bucket)
    assert code(err.value) == "AccessDenied"


def test_aws_cli_put_bucket_cors(s3d: Daemon, bucket: str, tmp_path: Path) -> None:
    env = base_env(tmp_path, s3d)
    aws = [str(BIN / "aws"), "--endpoint-url", s3d.s3_endpoint, "s3api"]
    config = json.dumps({"CORSRules": [{"AllowedOrigins": ["https://cli.test"], "AllowedMethods": ["GET"]}]})
    res = subprocess.run(
        [*aws, "put-bucket-cors", "--bucket", bucket, "--cors-configuration", config],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        [*aws, "get-bucket-cors", "--bucket", bucket], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["CORSRules"] == [
        {"AllowedOrigins": ["https://cli.test"], "AllowedMethods": ["GET"]}
    ]
    status, headers, _ = preflight(s3d, f"/{bucket}/k", "https://cli.test", "GET")
    assert status == 200 and headers["access-control-allow-origin"] == "https://cli.test"
