"""Fixtures for the S3 tests: one real dfsd per module, boto3 clients signed with its root key."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.conftest import Daemon, free_port

_names = itertools.count()


def make_client(daemon: Daemon, *, keys: tuple[str, str] | None = None, **config: Any) -> Any:
    access_key, secret_key = keys or daemon.root_key()
    options: dict[str, Any] = {"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1}}
    options.update(config)
    return boto3.client(
        "s3",
        endpoint_url=daemon.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(**options),
        verify=str(daemon.data_dir / "tls" / "ca.pem") if daemon.s3_endpoint.startswith("https") else None,
    )


@pytest.fixture(scope="module")
def s3d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("s3") / "var", free_port(), s3_conf='domain = "s3.localhost"')
    yield from _serve(d)


@pytest.fixture
def s3(s3d: Daemon) -> Any:
    return make_client(s3d)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"b{next(_names)}-test"
    s3.create_bucket(Bucket=name)
    return name


def data_path(daemon: Daemon) -> Path:
    return daemon.data_dir


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away cluster CA and a certificate for 127.0.0.1/localhost: (ca, cert, key) paths."""
    from dfs.net import certs

    certs.init_cluster(directory / "ca", "s3-tests")
    cert, key, ca = certs.issue_files(
        directory / "ca", directory, "server", kind="node", hosts=["127.0.0.1", "localhost"]
    )
    return ca, cert, key


def _serve(d: Daemon) -> Iterator[Daemon]:
    """Run ``d`` for a module's tests; at the end fsck must find nothing."""
    d.start()
    try:
        yield d
    finally:
        problems = d.fsck()["problems"] if d.proc is not None else []
        d.stop()
    assert problems == [], f"fsck found problems: {problems}"


@pytest.fixture(scope="module")
def s3tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon serving S3 over HTTPS (boto3 sends checksums as trailers only over TLS)."""
    base = tmp_path_factory.mktemp("s3tls") / "var"
    ca, cert, key = make_tls(base / "tls")
    d = Daemon(
        base,
        free_port(),
        s3_conf="https = true",
        extra_conf=f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nca_file = "{ca}"\n',
    )
    yield from _serve(d)
