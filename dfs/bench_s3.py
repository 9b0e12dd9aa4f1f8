"""``dfs s3 bench``: S3 throughput with many concurrent clients, every byte verified.

Steps (sizes fixed by the options):

- ``put_small`` / ``get_small`` / ``head_small`` / ``delete_small``: N objects of
  4 KiB, spread over ``clients`` threads (ops/s);
- ``put_large`` / ``get_large``: one object of ``large_mb`` MiB per client, all
  clients at once, single PUT and single GET (MB/s, 10^6 bytes, aggregate).

boto3 is the client (the test extra installs it): one client object per
thread, path-style, SigV4, default checksum settings.  Timings are wall-clock
for the whole step; bodies are compared with what was sent.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

SMALL = 4096


def _client(endpoint: str, access_key: str, secret_key: str, clients: int) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("dfs s3 bench needs boto3 (pip install boto3)") from exc
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=clients * 2,
            retries={"max_attempts": 1},
        ),
    )


def run(
    endpoint: str,
    access_key: str,
    secret_key: str,
    *,
    clients: int = 16,
    n_small: int = 2000,
    large_mb: int = 64,
    bucket: str = "dfs-bench",
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    local = threading.local()

    def s3() -> Any:
        if not hasattr(local, "client"):
            local.client = _client(endpoint, access_key, secret_key, clients)
        return local.client

    results: list[dict[str, Any]] = []

    def step(name: str, count: int, unit: str, fn: Callable[[int], None], n: int, scale: float = 1.0) -> None:
        if progress:
            progress(name)
        started = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            list(pool.map(fn, range(n)))
        seconds = time.perf_counter() - started
        rate = round(count * scale / seconds, 1)
        results.append({"step": name, "seconds": round(seconds, 3), "rate": rate, "unit": unit})

    try:
        s3().create_bucket(Bucket=bucket)
    except Exception as exc:  # already there from an earlier run is fine
        if "BucketAlreadyOwnedByYou" not in str(exc):
            raise
    bodies = [os.urandom(SMALL) for _ in range(min(n_small, 256))]

    def key(i: int) -> str:
        return f"small/{i:06d}"

    def put_small(i: int) -> None:
        s3().put_object(Bucket=bucket, Key=key(i), Body=bodies[i % len(bodies)])

    def get_small(i: int) -> None:
        if s3().get_object(Bucket=bucket, Key=key(i))["Body"].read() != bodies[i % len(bodies)]:
            raise AssertionError(f"{key(i)}: wrong content")

    def head_small(i: int) -> None:
        if s3().head_object(Bucket=bucket, Key=key(i))["ContentLength"] != SMALL:
            raise AssertionError(f"{key(i)}: wrong size")

    def delete_small(i: int) -> None:
        s3().delete_object(Bucket=bucket, Key=key(i))

    step("put_small", n_small, "ops/s", put_small, n_small)
    step("get_small", n_small, "ops/s", get_small, n_small)
    step("head_small", n_small, "ops/s", head_small, n_small)
    step("delete_small", n_small, "ops/s", delete_small, n_small)

    large = large_mb * 1024 * 1024
    seed = os.urandom(1024 * 1024)
    # Distinct per client (so dedup does not flatter the figure), cheap to make and check.
    big = [bytes([i]) * 64 + seed[64:] for i in range(clients)]
    digests = [hashlib.sha256(b * large_mb).hexdigest() for b in big]

    def put_large(i: int) -> None:
        s3().put_object(Bucket=bucket, Key=f"large/{i}", Body=big[i] * large_mb)

    def get_large(i: int) -> None:
        h = hashlib.sha256()
        body = s3().get_object(Bucket=bucket, Key=f"large/{i}")["Body"]
        while chunk := body.read(1024 * 1024):
            h.update(chunk)
        if h.hexdigest() != digests[i]:
            raise AssertionError(f"large/{i}: wrong content")

    total_mb = clients * large / 1e6
    step("put_large", 1, "MB/s", put_large, clients, scale=total_mb)
    step("get_large", 1, "MB/s", get_large, clients, scale=total_mb)
    for i in range(clients):
        s3().delete_object(Bucket=bucket, Key=f"large/{i}")
    s3().delete_bucket(Bucket=bucket)
    return results


def table(results: list[dict[str, Any]], *, clients: int, large_mb: int) -> str:
    lines = [f"S3 with {clients} concurrent clients (4 KiB objects; {large_mb} MiB objects, one per client)"]
    lines.append(f"{'step':<14} {'rate':>12}  unit")
    for r in results:
        lines.append(f"{r['step']:<14} {r['rate']:>12,.1f}  {r['unit']}")
    return "\n".join(lines)
