"""Cluster certificates: what the CA and leaves contain, key files, and real mutual TLS on loopback."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dfs.core.errors import ConfigError, Unavailable
from dfs.net import certs
from dfs.net.rpc import RpcServer, open_client, open_listeners

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

# ----------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Pki:
    """A cluster on disk: CA, two nodes, one client, plus a foreign CA's node and client."""

    dir: Path
    ca: Path
    node_a: tuple[Path, Path]
    node_b: tuple[Path, Path]
    client: tuple[Path, Path]
    rogue_node: tuple[Path, Path]
    rogue_client: tuple[Path, Path]
    rogue_ca: Path

    def server(self, pair: tuple[Path, Path] | None = None, **kw: Any) -> ssl.SSLContext:
        cert, key = pair or self.node_a
        return certs.server_context(str(cert), str(key), str(self.ca), **kw)

    def client_ctx(self, pair: tuple[Path, Path] | None, ca: Path | None = None, **kw: Any) -> ssl.SSLContext:
        cert, key = pair if pair is not None else (None, None)
        return certs.client_context(
            str(ca or self.ca), str(cert) if cert else None, str(key) if key else None, **kw
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_cert, _ = certs.init_cluster(root / "ca", "test")
    out = root / "issued"
    hosts = ["127.0.0.1", "localhost"]
    a_cert, a_key, ca = certs.issue_files(root / "ca", out, "node-a", kind="node", hosts=hosts)
    b_cert, b_key, _ = certs.issue_files(root / "ca", out, "node-b", kind="node", hosts=hosts)
    c_cert, c_key, _ = certs.issue_files(root / "ca", out, "alice", kind="client")
    assert ca.read_bytes() == ca_cert.read_bytes()
    rogue_ca, _ = certs.init_cluster(root / "rogue-ca", "rogue")
    r_out = root / "rogue"
    rn_cert, rn_key, _ = certs.issue_files(root / "rogue-ca", r_out, "node-a", kind="node", hosts=hosts)
    rc_cert, rc_key, _ = certs.issue_files(root / "rogue-ca", r_out, "alice", kind="client")
    return Pki(
        root,
        ca,
        (a_cert, a_key),
        (b_cert, b_key),
        (c_cert, c_key),
        (rn_cert, rn_key),
        (rc_cert, rc_key),
        rogue_ca,
    )


@pytest.fixture(scope="module")
def ca_pair() -> tuple[bytes, bytes]:
    return certs.create_ca("test", now=NOW)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def ext(cert: x509.Certificate, cls: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(cls)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """umask 0: the files' modes must come from the code, not the environment."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- CA and leaves


def test_ca_is_p256_root_that_signs_leaves_only(ca_pair: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = ca_pair
    ca = load(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "dfs cluster test"
    ca.verify_directly_issued_by(ca)
    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert ca.not_valid_after_utc == NOW + timedelta(days=3650)
    assert ca.not_valid_before_utc < NOW  # backdated for peers with slow clocks
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)


def test_node_cert_names_hosts_and_has_both_ekus(ca_pair: tuple[bytes, bytes]) -> None:
    issued = certs.issue(*ca_pair, "node-a", kind="node", hosts=["127.0.0.1", "LocalHost", "::1"], now=NOW)
    cert = load(issued.cert_pem)
    ca = load(ca_pair[0])
    cert.verify_directly_issued_by(ca)
    assert issued.ca_pem == ca_pair[0]
    assert cert.subject.rfc4514_string() == "O=dfs cluster test,CN=node-a"
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node-a"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert not ext(cert, x509.BasicConstraints).value.ca
    assert ext(cert, x509.KeyUsage).value.digital_signature
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert cert.not_valid_after_utc == NOW + timedelta(days=825)
    other = load(certs.issue(*ca_pair, "node-a", kind="node", now=NOW).cert_pem)
    assert other.serial_number != cert.serial_number  # random serials


def test_client_cert_is_client_auth_only_without_san(ca_pair: tuple[bytes, bytes]) -> None:
    cert = load(certs.issue(*ca_pair, "alice@ops", kind="client", now=NOW).cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice@ops"
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)


def test_node_name_that_is_an_ip_becomes_an_ip_san(ca_pair: tuple[bytes, bytes]) -> None:
    cert = load(certs.issue(*ca_pair, "10.0.0.7", kind="node", hosts=["10.0.0.7"], now=NOW).cert_pem)
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]  # deduplicated
    assert san.get_values_for_type(x509.DNSName) == []


@pytest.mark.parametrize("host", ["bad_host", "-x.example", "a..b", "10.0.0", "fe80::1%eth0", "", "x" * 64])
def test_invalid_hosts_rejected(ca_pair: tuple[bytes, bytes], host: str) -> None:
    with pytest.raises(ConfigError, match="neither an IP address nor a valid DNS host name"):
        certs.issue(*ca_pair, "node-a", kind="node", hosts=[host], now=NOW)


def test_issue_argument_errors(ca_pair: tuple[bytes, bytes]) -> None:
    with pytest.raises(ConfigError, match="names no host"):
        certs.issue(*ca_pair, "node_1", kind="node", now=NOW)
    with pytest.raises(ConfigError, match="client certificates name no hosts"):
        certs.issue(*ca_pair, "alice", kind="client", hosts=["localhost"], now=NOW)
    with pytest.raises(ConfigError, match="longer than 64"):
        certs.issue(*ca_pair, "n" * 65, kind="client", now=NOW)
    with pytest.raises(ConfigError, match="must not be empty"):
        certs.issue(*ca_pair, "", kind="client", now=NOW)
    with pytest.raises(ConfigError, match="kind"):
        certs.issue(*ca_pair, "x", kind="server", now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="valid_days"):
        certs.issue(*ca_pair, "x", kind="client", valid_days=0, now=NOW)
    with pytest.raises(ConfigError, match="longer than"):
        certs.create_ca("c" * 60)


def test_issue_rejects_mismatched_or_bad_ca_material(ca_pair: tuple[bytes, bytes]) -> None:
    other_cert, other_key = certs.create_ca("other", now=NOW)
    with pytest.raises(ConfigError, match="CA key does not match CA certificate"):
        certs.issue(ca_pair[0], other_key, "n", kind="client", now=NOW)
    with pytest.raises(ConfigError, match="CA certificate is not a PEM certificate"):
        certs.issue(b"garbage", ca_pair[1], "n", kind="client", now=NOW)
    with pytest.raises(ConfigError, match="CA key is not a PEM private key"):
        certs.issue(ca_pair[0], b"garbage", "n", kind="client", now=NOW)
    leaf = certs.issue(*ca_pair, "node-a", kind="node", now=NOW)
    with pytest.raises(ConfigError, match="not a CA"):
        certs.issue(leaf.cert_pem, leaf.key_pem, "n", kind="client", now=NOW)


def test_leaf_never_outlives_its_ca() -> None:
    ca = certs.create_ca("short", valid_days=30, now=NOW)
    cert = load(certs.issue(*ca, "node-a", kind="node", now=NOW).cert_pem)
    assert cert.not_valid_after_utc == load(ca[0]).not_valid_after_utc
    with pytest.raises(ConfigError, match="expired"):
        certs.issue(*ca, "node-a", kind="node", now=NOW + timedelta(days=31))


def test_describe(pki: Pki) -> None:
    node_pem = pki.node_a[0].read_bytes()
    d = certs.describe(node_pem)
    assert d["common_name"] == "node-a"
    assert d["organization"] == "dfs cluster test"
    assert d["issuer"] == "O=dfs cluster test,CN=dfs test CA"
    assert d["kind"] == "node"
    assert d["is_ca"] is False
    assert d["dns_names"] == ["localhost", "node-a"]
    assert d["ip_addresses"] == ["127.0.0.1"]
    assert d["extended_key_usage"] == ["serverAuth", "clientAuth"]
    cert = load(node_pem)
    assert datetime.fromisoformat(d["not_after"]) == cert.not_valid_after_utc
    assert datetime.fromisoformat(d["not_before"]) == cert.not_valid_before_utc
    der = cert.public_bytes(serialization.Encoding.DER)
    assert d["fingerprint_sha256"] == hashlib.sha256(der).hexdigest()
    assert d["serial"] == format(cert.serial_number, "x")
    client = certs.describe(pki.client[0].read_bytes())
    assert (client["kind"], client["extended_key_usage"], client["dns_names"]) == (
        "client",
        ["clientAuth"],
        [],
    )
    ca = certs.describe(pki.ca.read_bytes())
    assert (ca["kind"], ca["is_ca"], ca["extended_key_usage"]) == ("ca", True, [])
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        certs.describe(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# ----------------------------------------------------------------------------- files


def test_init_cluster_and_issue_files_modes(tmp_path: Path, umask_zero: None) -> None:
    ca_cert, ca_key = certs.init_cluster(tmp_path / "ca", "prod")
    assert (mode(ca_cert), mode(ca_key)) == (0o644, 0o600)
    assert mode(tmp_path / "ca") == 0o700  # created by init_cluster: it holds the CA key
    cert, key, ca = certs.issue_files(tmp_path / "ca", tmp_path / "out", "node-1", kind="node", hosts=["h1"])
    assert (cert.name, key.name, ca.name) == ("node-1.pem", "node-1.key", "ca.pem")
    assert (mode(cert), mode(key), mode(ca)) == (0o644, 0o600, 0o644)
    assert ca.read_bytes() == ca_cert.read_bytes()
    load(cert.read_bytes()).verify_directly_issued_by(load(ca_cert.read_bytes()))
    # Re-issuing (renewal) replaces the files; no temp files are left behind.
    old = cert.read_bytes()
    certs.issue_files(tmp_path / "ca", tmp_path / "out", "node-1", kind="node", hosts=["h1"])
    assert cert.read_bytes() != old
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ca.pem", "node-1.key", "node-1.pem"]
    # Issuing into the CA directory itself leaves ca.pem alone.
    certs.issue_files(tmp_path / "ca", tmp_path / "ca", "alice", kind="client")
    assert ca_cert.read_bytes() == ca.read_bytes()


def test_init_cluster_refuses_to_overwrite(tmp_path: Path) -> None:
    ca_cert, ca_key = certs.init_cluster(tmp_path, "prod")
    before = ca_cert.read_bytes(), ca_key.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to replace the cluster CA"):
        certs.init_cluster(tmp_path, "prod")
    assert (ca_cert.read_bytes(), ca_key.read_bytes()) == before
    # A lone key (e.g. a half-restored backup) blocks init just the same.
    ca_cert.unlink()
    with pytest.raises(FileExistsError, match=r"ca\.key already exists"):
        certs.init_cluster(tmp_path, "prod")
    assert ca_key.read_bytes() == before[1]
    assert not ca_cert.exists()


def test_issue_files_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA certificate missing"):
        certs.issue_files(tmp_path, tmp_path / "out", "n1", kind="client")
    certs.init_cluster(tmp_path / "ca", "prod")
    (tmp_path / "ca" / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"CA key missing: .*ca\.key does not exist"):
        certs.issue_files(tmp_path / "ca", tmp_path / "out", "n1", kind="client")
    for bad in ("ca", "CA", "../evil", ".hidden", "a/b", ""):
        with pytest.raises(ConfigError, match="certificate name"):
            certs.issue_files(tmp_path / "ca", tmp_path / "out", bad, kind="client")
    assert not (tmp_path / "out").exists()


def test_write_private_is_never_readable_by_others(
    tmp_path: Path, umask_zero: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "k.key"
    target.write_bytes(b"old")
    target.chmod(0o644)  # a world-readable predecessor must not lend its mode
    seen: list[int] = []
    real_replace = os.replace

    def spy_replace(src: Any, dst: Any) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))  # the temp file, just before it goes live
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    certs.write_private(target, b"secret")
    assert seen == [0o600]
    assert target.read_bytes() == b"secret"
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]


def test_write_private_cleans_up_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        certs.write_private(tmp_path / "k.key", b"secret")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- contexts


def test_contexts_are_strict(pki: Pki) -> None:
    server = pki.server()
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    # Only the cluster CA is trusted, never the system store.
    assert [c["subject"] for c in server.get_ca_certs()] == [
        ((("commonName", "dfs test CA"),), (("organizationName", "dfs cluster test"),))
    ]
    assert pki.server(require_client_cert=False).verify_mode == ssl.CERT_OPTIONAL
    client = pki.client_ctx(pki.client)
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert len(client.get_ca_certs()) == 1
    loose = pki.client_ctx(None, check_hostname=False)
    assert loose.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified


def test_context_file_errors(pki: Pki, tmp_path: Path) -> None:
    (a_cert, a_key), (b_cert, b_key) = pki.node_a, pki.node_b
    with pytest.raises(ConfigError, match=r"node-b\.key does not match certificate .*node-a\.pem"):
        certs.server_context(str(a_cert), str(b_key), str(pki.ca))
    with pytest.raises(ConfigError, match="private key missing"):
        certs.server_context(str(a_cert), str(tmp_path / "nope.key"), str(pki.ca))
    with pytest.raises(ConfigError, match="CA file missing"):
        certs.client_context(str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"private key .*node-a\.pem is not a PEM private key"):
        certs.server_context(str(a_cert), str(a_cert), str(pki.ca))  # the certificate given as the key
    with pytest.raises(ConfigError, match="holds no CA certificate"):
        certs.client_context(str(b_cert))
    with pytest.raises(ConfigError, match="needs both cert_file and key_file"):
        certs.client_context(str(pki.ca), str(a_cert))
    with pytest.raises(ConfigError, match="needs .*ca_file"):
        certs.server_context(str(a_cert), str(a_key), "")
    unreadable = tmp_path / "x.key"
    unreadable.write_bytes(a_key.read_bytes())
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads any file
        with pytest.raises(ConfigError, match="cannot read private key .*Permission denied"):
            certs.server_context(str(a_cert), str(unreadable), str(pki.ca))
    encrypted = tmp_path / "enc.key"
    key = serialization.load_pem_private_key(a_key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        certs.server_context(str(a_cert), str(encrypted), str(pki.ca))


# ----------------------------------------------------------------------------- real TLS on loopback


@dataclass
class Outcome:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    echoed: bytes | None = None
    peer_cn: str | None = None
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None and self.echoed == b"ping"


def _cause(exc: BaseException | None) -> str:
    """The ssl error behind trio's BrokenResourceError, as text to match on."""
    assert exc is not None
    inner = exc.__cause__ or exc
    return f"{type(inner).__name__}: {inner}"


def _peer_cn(stream: trio.SSLStream[Any]) -> str | None:
    peer = stream.getpeercert()
    if not peer:
        return None
    return next(str(value) for rdn in peer["subject"] for key, value in rdn if key == "commonName")


async def tls_exchange(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> Outcome:
    """One TLS connection over 127.0.0.1: handshake, ping, echo; records each side's failure."""
    outcome = Outcome()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve_one() -> None:
        tcp = await listeners[0].accept()
        tls = trio.SSLStream(tcp, server_ctx, server_side=True)
        try:
            await tls.do_handshake()
            outcome.peer_cn = _peer_cn(tls)
            await tls.send_all(await tls.receive_some(64))
        except trio.BrokenResourceError as exc:
            outcome.server_error = exc
        finally:
            await trio.aclose_forcefully(tls)

    with trio.fail_after(10):
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_one)
                tcp = await trio.open_tcp_stream("127.0.0.1", port)
                tls = trio.SSLStream(tcp, client_ctx, server_hostname=server_hostname)
                try:
                    await tls.do_handshake()
                    outcome.version = tls.version()
                    # Under TLS 1.3 the server judges the client's certificate after the
                    # client's handshake is done, so a rejection shows up on this read.
                    await tls.send_all(b"ping")
                    outcome.echoed = bytes(await tls.receive_some(64))
                except trio.BrokenResourceError as exc:
                    outcome.client_error = exc
                finally:
                    await trio.aclose_forcefully(tls)
        finally:
            for listener in listeners:
                await listener.aclose()
    return outcome


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
async def test_mutual_tls_between_nodes(pki: Pki, hostname: str) -> None:
    # node-b dials node-a with its own node certificate: a node is both server and client.
    got = await tls_exchange(pki.server(), pki.client_ctx(pki.node_b), hostname)
    assert got.ok, got
    assert got.peer_cn == "node-b"
    assert got.version == "TLSv1.3"


async def test_mutual_tls_client_cert(pki: Pki) -> None:
    got = await tls_exchange(pki.server(), pki.client_ctx(pki.client), "localhost")
    assert got.ok, got
    assert got.peer_cn == "alice"


async def test_client_without_cert_is_rejected(pki: Pki) -> None:
    got = await tls_exchange(pki.server(), pki.client_ctx(None), "localhost")
    assert got.echoed != b"ping"
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in _cause(got.server_error)
    # ...unless client certificates are optional.
    got = await tls_exchange(pki.server(require_client_cert=False), pki.client_ctx(None), "localhost")
    assert got.ok, got
    assert got.peer_cn is None


@pytest.mark.parametrize("which", ["rogue_client", "rogue_node"])
async def test_client_cert_from_another_ca_is_rejected(pki: Pki, which: str) -> None:
    got = await tls_exchange(pki.server(), pki.client_ctx(getattr(pki, which)), "localhost")
    assert got.echoed != b"ping"
    assert "certificate verify failed" in _cause(got.server_error)
    # An optional client certificate that is presented is still verified.
    got = await tls_exchange(
        pki.server(require_client_cert=False), pki.client_ctx(getattr(pki, which)), "localhost"
    )
    assert "certificate verify failed" in _cause(got.server_error)


async def test_server_cert_from_another_ca_is_rejected(pki: Pki) -> None:
    got = await tls_exchange(
        pki.server(pki.rogue_node), pki.client_ctx(pki.client, check_hostname=False), "x"
    )
    assert "certificate verify failed" in _cause(got.client_error)
    assert got.server_error is not None


async def test_wrong_hostname_is_rejected(pki: Pki) -> None:
    got = await tls_exchange(pki.server(), pki.client_ctx(pki.node_b), "node-z.example")
    assert "Hostname mismatch" in _cause(got.client_error)
    # Without the hostname check the same server is accepted on the CA's word alone.
    got = await tls_exchange(pki.server(), pki.client_ctx(pki.node_b, check_hostname=False), "node-z.example")
    assert got.ok, got


async def test_client_cert_cannot_serve(pki: Pki) -> None:
    # A client certificate lacks serverAuth: a stolen one cannot impersonate a node.
    got = await tls_exchange(pki.server(pki.client), pki.client_ctx(pki.node_b, check_hostname=False), "x")
    assert "unsuitable certificate purpose" in _cause(got.client_error)


# ----------------------------------------------------------------------------- through dfs.net.rpc


async def test_rpc_over_mutual_tls(pki: Pki) -> None:
    async def whoami(x: int) -> int:
        return x + 1

    server = RpcServer({"inc": whoami}, ssl_context=pki.server())
    listeners = await open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        async with open_client(f"127.0.0.1:{port}", ssl_context=pki.client_ctx(pki.node_b)) as client:
            assert await client.call("inc", 41) == 42
        async with open_client(f"localhost:{port}", ssl_context=pki.client_ctx(pki.client)) as client:
            assert await client.call("inc", 1) == 2
        rogue = pki.client_ctx(pki.rogue_client)
        async with open_client(f"127.0.0.1:{port}", ssl_context=rogue, call_timeout_s=5) as client:
            with pytest.raises(Unavailable):
                await client.call("inc", 1)
        nursery.cancel_scope.cancel()
    assert server.stats.calls["inc"] == 2


# ----------------------------------------------------------------------------- throughput (printed only)

_PAYLOAD_BYTES = 64 * 1024 * 1024
_SEND_BYTES = 1024 * 1024


async def _stream_pair(tls: tuple[ssl.SSLContext, ssl.SSLContext] | None) -> tuple[float, float, float]:
    """Send 64 MiB over loopback; returns (handshake s, transfer wall s, transfer CPU s of both ends)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    block = memoryview(os.urandom(_SEND_BYTES))
    received = 0
    timings: dict[str, float] = {}

    done = trio.Event()

    async def sink(stream: trio.abc.Stream) -> None:
        nonlocal received
        while received < _PAYLOAD_BYTES:
            data = await stream.receive_some(256 * 1024)
            assert data, "sender closed early"
            received += len(data)
        done.set()

    try:
        async with trio.open_nursery() as nursery:
            accepted: trio.abc.Stream | None = None

            async def accept(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                nonlocal accepted
                task_status.started()
                tcp = await listeners[0].accept()
                accepted = tcp if tls is None else trio.SSLStream(tcp, tls[0], server_side=True)
                try:
                    await sink(accepted)
                finally:
                    await trio.aclose_forcefully(accepted)

            await nursery.start(accept)
            start = time.perf_counter()
            sender: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                if tls is not None:
                    sender = trio.SSLStream(sender, tls[1], server_hostname="127.0.0.1")
                    await sender.do_handshake()
                timings["handshake"] = time.perf_counter() - start
                wall, cpu = time.perf_counter(), time.process_time()
                # Both ends share this thread: send_all yields whenever the socket
                # buffer is full, which is when the sink gets to drain it.
                for _ in range(_PAYLOAD_BYTES // _SEND_BYTES):
                    await sender.send_all(block)
                await done.wait()
                timings["wall"] = time.perf_counter() - wall
                timings["cpu"] = time.process_time() - cpu
            finally:
                await trio.aclose_forcefully(sender)
    finally:
        for listener in listeners:
            await listener.aclose()
    assert received == _PAYLOAD_BYTES
    return timings["handshake"], timings["wall"], timings["cpu"]


@pytest.mark.slow
async def test_throughput_plain_vs_mutual_tls(pki: Pki) -> None:
    """Prints MB/s for 64 MiB over plain trio TCP and over mutual TLS (best of 3, one process)."""
    tls = (pki.server(), pki.client_ctx(pki.node_b))
    results: dict[str, list[tuple[float, float, float]]] = {"plain": [], "mtls": []}
    for _ in range(3):
        results["plain"].append(await _stream_pair(None))
        results["mtls"].append(await _stream_pair(tls))
    print()
    rates = {}
    for label, runs in results.items():
        handshake = min(r[0] for r in runs)
        wall = min(r[1] for r in runs)
        cpu = min(r[2] for r in runs)
        rates[label] = _PAYLOAD_BYTES / wall
        print(
            f"{label:>5}: 64 MiB in {wall * 1000:6.0f} ms = {_PAYLOAD_BYTES / wall / 1e6:6.0f} MB/s "
            f"({_PAYLOAD_BYTES / wall / 2**20:5.0f} MiB/s), "
            f"{cpu / (_PAYLOAD_BYTES / 2**30):4.1f} CPU-s/GiB (both ends), "
            f"{'connect' if label == 'plain' else 'connect+handshake'} {handshake * 1000:.1f} ms"
        )
    print(f"mutual TLS runs at {rates['mtls'] / rates['plain']:.0%} of plain TCP")
