"""Mutual TLS on the RPC port: certificates from `dfs cluster init` / `dfs node cert`, a daemon that
demands them, and a CLI and a mount that present them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from dfs.net import rpc
from tests.conftest import BIN, Daemon, Mount, free_port, needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse]


def dfs(*args: str) -> str:
    res = subprocess.run([str(BIN / "dfs"), *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_rpc_mutual_tls(tmp_path: Path) -> None:
    ca_dir, certs = tmp_path / "ca", tmp_path / "certs"
    dfs("cluster", "init", str(ca_dir), "--name", "tls-test")
    dfs("node", "cert", "node1", "--ca-dir", str(ca_dir), "--out", str(certs), "--host", "127.0.0.1")
    assert (certs / "node1.key").stat().st_mode & 0o777 == 0o600
    d = Daemon(
        tmp_path / "var",
        free_port(),
        rpc_conf="unix_socket = false\ntls = true",
        extra_conf=(
            f'[tls]\ncert_file = "{certs / "node1.pem"}"\nkey_file = "{certs / "node1.key"}"\n'
            f'ca_file = "{certs / "ca.pem"}"\n'
        ),
    )
    d.start()  # readiness is `dfs status` over the TCP port: it already went through mutual TLS
    try:

        async def plain_call() -> object:
            async with rpc.open_client(d.address, call_timeout_s=5, connect_timeout_s=5) as conn:
                return await conn.call("sys.ping")

        with pytest.raises(Exception):  # noqa: B017 - any failure: a plain client gets nowhere
            trio.run(plain_call)
        m = Mount(d, tmp_path / "mnt", options=f"config={d.conf_path}")
        m.start()
        try:
            (m.path / "over-tls.txt").write_text("encrypted in transit")
            assert (m.path / "over-tls.txt").read_text() == "encrypted in transit"
        finally:
            m.stop()
        d.assert_clean()
    finally:
        d.stop()
