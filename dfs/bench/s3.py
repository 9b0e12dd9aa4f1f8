"""``dfs s3 bench``: S3 throughput with many concurrent clients, every byte verified.

Steps (sizes fixed by the options):

- ``put_small`` / ``get_small`` / ``head_small`` / ``delete_small``: N objects of
  4 KiB, shared out among ``clients`` clients (ops/s);
- ``put_large`` / ``get_large``: one object of ``large_mb`` MiB per client, all
  clients at once, single PUT and single GET (MB/s, 10^6 bytes, aggregate).

Each client is its own process running boto3 (the test extra installs it):
one Python process with many threads tops out near 300 requests/s in
botocore itself, which would measure the client, not the server.  Clients
are started, build their boto3 client and then wait at a barrier; the clock
runs from the barrier to the last client's finish.  Bodies are compared with
what was sent.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

SMALL = 4096


def _client(endpoint: str, access_key: str, secret_key: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _small_body(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (SMALL // 32)


def _large_body(i: int, size: int) -> bytes:
    # Distinct per client, so dedup does not flatter the figure.
    block = hashlib.sha256(f"large {i}".encode()).digest() * 32768  # 1 MiB
    return (block * (size // len(block) + 1))[:size]


def _work(spec: dict[str, Any], barrier: Any, results: Any) -> None:
    try:
        s3 = _client(spec["endpoint"], spec["access_key"], spec["secret_key"])
        op, bucket = spec["op"], spec["bucket"]
        large = spec["large_bytes"]
        body = _large_body(spec["client"], large) if op.endswith("large") else b""
        barrier.wait()
        for i in spec["indices"]:
            key = f"small/{i:06d}"
            if op == "put_small":
                s3.put_object(Bucket=bucket, Key=key, Body=_small_body(i))
            elif op == "get_small":
                if s3.get_object(Bucket=bucket, Key=key)["Body"].read() != _small_body(i):
                    raise AssertionError(f"{key}: wrong content")
            elif op == "head_small":
                if s3.head_object(Bucket=bucket, Key=key)["ContentLength"] != SMALL:
                    raise AssertionError(f"{key}: wrong size")
            elif op == "delete_small":
                s3.delete_object(Bucket=bucket, Key=key)
            elif op == "put_large":
                s3.put_object(Bucket=bucket, Key=f"large/{i}", Body=body)
            elif op == "get_large":
                stream = s3.get_object(Bucket=bucket, Key=f"large/{i}")["Body"]
                got = bytearray()
                while chunk := stream.read(1024 * 1024):
                    got += chunk
                if got != body:
                    raise AssertionError(f"large/{i}: wrong content")
        results.put(None)
    except BaseException as exc:  # reported by the parent; a worker never hangs the run
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")


def _step(base: dict[str, Any], op: str, clients: int, work: list[list[int]]) -> float:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_work, args=({**base, "op": op, "client": c, "indices": work[c]}, barrier, results)
        )
        for c in range(clients)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=120)
        started = time.perf_counter()
        errors = [e for e in (results.get(timeout=600) for _ in procs) if e]
        seconds = time.perf_counter() - started
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError(f"{op}: {errors[0]}")
    return seconds


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
    try:
        s3 = _client(endpoint, access_key, secret_key)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("dfs s3 bench needs boto3 (pip install boto3)") from exc
    try:
        s3.create_bucket(Bucket=bucket)
    except Exception as exc:  # already there from an earlier run is fine
        if "BucketAlreadyOwnedByYou" not in str(exc):
            raise
    base = {
        "endpoint": endpoint,
        "access_key": access_key,
        "secret_key": secret_key,
        "bucket": bucket,
        "large_bytes": large_mb * 1024 * 1024,
    }
    small_work = [list(range(c, n_small, clients)) for c in range(clients)]
    large_work = [[c] for c in range(clients)]
    total_mb = clients * large_mb * 1024 * 1024 / 1e6
    plan = [
        ("put_small", small_work, n_small, "ops/s"),
        ("get_small", small_work, n_small, "ops/s"),
        ("head_small", small_work, n_small, "ops/s"),
        ("delete_small", small_work, n_small, "ops/s"),
        ("put_large", large_work, total_mb, "MB/s"),
        ("get_large", large_work, total_mb, "MB/s"),
    ]
    results: list[dict[str, Any]] = []
    for op, work, amount, unit in plan:
        if progress:
            progress(op)
        seconds = _step(base, op, clients, work)
        results.append(
            {"step": op, "seconds": round(seconds, 3), "rate": round(amount / seconds, 1), "unit": unit}
        )
    for c in range(clients):
        s3.delete_object(Bucket=bucket, Key=f"large/{c}")
    s3.delete_bucket(Bucket=bucket)
    return results


def table(results: list[dict[str, Any]], *, clients: int, large_mb: int) -> str:
    lines = [f"S3 with {clients} concurrent clients (4 KiB objects; {large_mb} MiB objects, one per client)"]
    lines.append(f"{'step':<14} {'rate':>12}  unit")
    for r in results:
        lines.append(f"{r['step']:<14} {r['rate']:>12,.1f}  {r['unit']}")
    return "\n".join(lines)
