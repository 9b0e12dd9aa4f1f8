"""S3 server-side encryption seen through a real FUSE mount: SSE-S3 objects read transparently
(as on AWS, the encryption is the server's business), SSE-C objects are refused with EACCES and
a log line saying why (the mount never has the customer's key), never read as garbage."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, Mount, free_port, needs_fuse, wait_for
from tests.s3.conftest import make_client, make_tls

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.slow]


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """SSE-C keys travel over HTTPS only, so this daemon serves S3 over TLS."""
    base = tmp_path / "var"
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
        d.stop()


def test_sse_objects_through_the_mount(tls_daemon: Daemon, tmp_path: Path) -> None:
    s3 = make_client(tls_daemon)
    s3.create_bucket(Bucket="ssemnt")
    managed = os.urandom(5 * 1024 * 1024 + 17)
    secret = os.urandom(300 * 1024)
    key = os.urandom(32)
    s3.put_object(Bucket="ssemnt", Key="dir/managed.bin", Body=managed, ServerSideEncryption="AES256")
    s3.put_object(
        Bucket="ssemnt", Key="dir/secret.bin", Body=secret, SSECustomerAlgorithm="AES256", SSECustomerKey=key
    )
    m = Mount(tls_daemon, tmp_path / "mnt")
    m.start()
    try:
        root = m.path / "ssemnt" / "dir"
        wait_for((root / "secret.bin").exists, timeout_s=10)
        assert (root / "managed.bin").read_bytes() == managed
        assert (root / "secret.bin").stat().st_size == len(secret)  # metadata is not encrypted
        with pytest.raises(PermissionError) as refused:
            (root / "secret.bin").read_bytes()
        assert refused.value.errno == errno.EACCES
        log = tls_daemon.data_dir / "mount-mnt.log"
        wait_for(lambda: "customer key (SSE-C)" in log.read_text(), timeout_s=10)
        # Written through the mount into the SSE-S3 object's bucket: S3 still reads both.
        (root / "new.txt").write_bytes(b"from the mount\n")
    finally:
        m.stop()
    got = s3.get_object(
        Bucket="ssemnt", Key="dir/secret.bin", SSECustomerAlgorithm="AES256", SSECustomerKey=key
    )
    assert got["Body"].read() == secret
    assert s3.get_object(Bucket="ssemnt", Key="dir/new.txt")["Body"].read() == b"from the mount\n"
    tls_daemon.assert_clean()
