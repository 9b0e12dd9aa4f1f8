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
    d.start()
    try:
        yield d
    finally:
        problems = d.fsck()["problems"] if d.proc is not None else []
        d.stop()
    assert problems == [], f"fsck found problems: {problems}"


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
    """A throw-away CA and a server certificate for 127.0.0.1/localhost: (ca, cert, key) PEM paths."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dfs test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


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
    d.start()
    try:
        yield d
    finally:
        problems = d.fsck()["problems"] if d.proc is not None else []
        d.stop()
    assert problems == [], f"fsck found problems: {problems}"
