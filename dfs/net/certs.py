"""Cluster certificates for mutual TLS: a private CA, node and client certificates, SSL contexts.

Every dfs cluster has its own certificate authority.  Nodes present a node
certificate both when they serve and when they call a peer (a node is a TLS
server *and* a TLS client), so node certificates carry both the serverAuth and
clientAuth extended key usages and name the node's hosts in their SAN.  Tools
and mounts present client certificates, which carry clientAuth only, so a
stolen client key cannot impersonate a node.  Contexts are built for
:mod:`dfs.net.rpc` (``RpcServer(ssl_context=...)``, ``open_client(ssl_context=...)``),
which wraps its streams in ``trio.SSLStream``.

Invariants
----------
* Trust anchors are only the cluster CA file given to :func:`server_context`
  or :func:`client_context`, never the system store: any public CA could
  otherwise mint a certificate that the cluster would accept.
* Both sides verify (``CERT_REQUIRED``); TLS 1.2 is the floor, and only
  forward-secret AEAD suites are allowed there.  OpenSSL negotiates TLS 1.3
  whenever both ends support it.
* The CA may only sign end-entity certificates (``path_length=0``), and a
  leaf never outlives its CA (its ``not_after`` is clamped).
* Private keys are written with :func:`write_private`: mode 0600 from the
  moment the file exists (a temp file made 0600, fsynced, renamed into place),
  so no other user can ever read a key, not even mid-write.
* The CA files are written without clobbering (a hard link, which fails with
  EEXIST), so two concurrent ``init`` runs cannot both believe they made the CA.
* Errors an operator can fix (unreadable or malformed PEM, a key that does not
  match its certificate, a missing CA key, bad names) are
  :class:`~dfs.core.errors.ConfigError` with the file named.

All keys are ECDSA P-256 and all signatures SHA-256: P-256 is supported by
every TLS stack and keeps handshakes cheap (a few milliseconds on loopback).
The module does blocking file I/O and a little CPU; call it from a thread or
before the event loop starts, not inside a hot trio task.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dfs.core.config import Config
from dfs.core.errors import ConfigError
from dfs.files import write_atomic as _write_atomic
from dfs.files import write_private as write_private

__all__ = [
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "Issued",
    "Kind",
    "client_context",
    "create_ca",
    "describe",
    "init_cluster",
    "issue",
    "issue_files",
    "server_context",
    "write_private",
]

Kind = Literal["node", "client"]

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"
#: Prefix of the Organization attribute; the rest is the cluster name.
_ORG_PREFIX = "dfs cluster "
#: X.509 upper bound for CommonName and Organization (RFC 5280 ub-common-name).
_MAX_NAME_CHARS = 64
#: Certificates start this far in the past so a peer whose clock is a little
#: behind does not reject a certificate issued a moment ago as "not yet valid".
_BACKDATE = timedelta(hours=1)
#: TLS 1.2 fallback suites: ECDHE only (forward secrecy), AEAD only.  TLS 1.3
#: suites are all AEAD and are left at OpenSSL's defaults.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
#: Names that become file names in issue_files: no path separators, no dot files.
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


@dataclass(frozen=True)
class Issued:
    """PEM bytes of an issued certificate, its private key and the issuing CA's certificate."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


# --------------------------------------------------------------------------- issuing


def create_ca(
    cluster_name: str, *, valid_days: int = 3650, now: datetime | None = None
) -> tuple[bytes, bytes]:
    """Make a self-signed P-256 cluster CA; returns ``(ca_cert_pem, ca_key_pem)``.

    Subject: ``CN=dfs <cluster_name> CA, O=dfs cluster <cluster_name>``; the O
    attribute is copied into every certificate the CA issues.
    """
    _check_text("cluster name", cluster_name, _MAX_NAME_CHARS - len(_ORG_PREFIX))
    _check_days(valid_days)
    start = _utc(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            # Within 64 characters: the cluster name was limited to fit the O attribute.
            x509.NameAttribute(NameOID.COMMON_NAME, f"dfs {cluster_name} CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG_PREFIX + cluster_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(start + timedelta(days=valid_days))
        # path_length=0: this CA signs leaves only, never a subordinate CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    name: str,
    *,
    kind: Kind,
    hosts: Sequence[str] = (),
    valid_days: int = 825,
    now: datetime | None = None,
) -> Issued:
    """Issue a P-256 certificate for a node or a client, signed by the cluster CA.

    * ``node``: SAN = *hosts* (IP literals as IP addresses, the rest as DNS
      names) plus *name* itself when it is a host name or an IP literal; EKU
      serverAuth + clientAuth.  At least one SAN entry is required, since a
      node certificate without one fails every hostname check.
    * ``client``: no SAN (clients are not connected to); EKU clientAuth only.

    Subject is ``CN=<name>, O=<the CA's O>``.  The serial is random and the
    validity is clamped to the CA's own.
    """
    if kind not in ("node", "client"):
        raise ConfigError(f"certificate kind must be 'node' or 'client', not {kind!r}")
    _check_text("certificate name", name, _MAX_NAME_CHARS)
    _check_days(valid_days)
    ca_cert = _load_cert(ca_cert_pem, "CA certificate")
    ca_key = _load_key(ca_key_pem, "CA key")
    _check_pair(ca_cert, ca_key, "CA certificate", "CA key")
    _check_is_ca(ca_cert)
    start = _utc(now)
    if ca_cert.not_valid_after_utc <= start:
        raise ConfigError(f"the CA certificate expired on {ca_cert.not_valid_after_utc.isoformat()}")

    san: list[x509.GeneralName] = []
    if kind == "node":
        san = _node_san(name, hosts)
    elif hosts:
        raise ConfigError("client certificates name no hosts; issue a node certificate for a server")

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        + list(ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))[:1]
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind == "node":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(start - _BACKDATE, ca_cert.not_valid_before_utc))
        # A leaf outliving its CA would fail verification on that day anyway; clamping
        # makes `describe` tell the truth about when it stops working.
        .not_valid_after(min(start + timedelta(days=valid_days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                # ECDSA keys only sign in TLS (ECDHE does the key exchange).
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_key_pem(key),
        # Re-encoded so the bundle holds exactly the CA certificate, whatever surrounded it.
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
    )


def _node_san(name: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        entry = _san_entry(host)
        if entry is None:
            raise ConfigError(f"{host!r} is neither an IP address nor a valid DNS host name")
        entries.append(entry)
    own = _san_entry(name)
    if own is not None:
        entries.append(own)
    unique = list(dict.fromkeys(entries))  # GeneralNames are hashable; keep first-seen order
    if not unique:
        raise ConfigError(
            f"node certificate {name!r} names no host: pass its DNS names or IP addresses "
            "(the name itself is not a valid host name)"
        )
    return unique


def _san_entry(host: str) -> x509.GeneralName | None:
    """An IPAddress or DNSName entry for *host*, or None if it is neither."""
    text = host.strip()
    if "%" in text:
        return None  # IPv6 zone indexes (fe80::1%eth0) are local to one host; a SAN cannot hold them
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    dns = text.lower().rstrip(".")  # DNS is case-insensitive; the root dot is implied
    if not dns or len(dns) > 253:
        return None
    labels = dns.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return None
    # An all-numeric last label (e.g. "10.0.0") is a mistyped address, not a name.
    if labels[-1].isdigit():
        return None
    return x509.DNSName(dns)


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Copy the CA's own SKI when it has one: that is what chain builders match on.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_issuer_public_key(ca_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _issuer_public_key(ca_cert: x509.Certificate) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ConfigError("the CA certificate's key must be EC or RSA")
    return public


# --------------------------------------------------------------------------- files


def init_cluster(directory: Path, cluster_name: str) -> tuple[Path, Path]:
    """Create the cluster CA in *directory*: ``ca.pem`` (0644) and ``ca.key`` (0600).

    Refuses (FileExistsError) if either file already exists: replacing a CA
    silently would orphan every certificate it issued.  Returns ``(cert, key)``.
    """
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    for path in (cert_path, key_path):
        if path.exists() or path.is_symlink():
            raise FileExistsError(
                f"{path} already exists: refusing to replace the cluster CA "
                "(every certificate it issued would stop working); remove it first if you really mean to"
            )
    cert_pem, key_pem = create_ca(cluster_name)
    _make_dir(directory)
    _write_file(key_path, key_pem, 0o600, overwrite=False)
    try:
        _write_file(cert_path, cert_pem, 0o644, overwrite=False)
    except BaseException:
        key_path.unlink(missing_ok=True)  # ours: created just above, so no half-made CA is left
        raise
    return cert_path, key_path


def issue_files(
    ca_dir: Path, out_dir: Path, name: str, *, kind: Kind, hosts: Sequence[str] = ()
) -> tuple[Path, Path, Path]:
    """Issue a certificate with the CA in *ca_dir* and write it into *out_dir*.

    Writes ``<name>.pem`` (0644), ``<name>.key`` (0600) and ``ca.pem`` (0644),
    replacing earlier files of the same name (that is how a certificate is
    renewed).  Returns ``(cert, key, ca)``.
    """
    if not _FILE_NAME_RE.match(name) or name.lower() == "ca":
        raise ConfigError(
            f"certificate name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "start with a letter or digit, and not be 'ca' (it names the files written)"
        )
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert_pem = _read(ca_dir / CA_CERT_NAME, "CA certificate")
    ca_key_pem = _read(ca_dir / CA_KEY_NAME, "CA key")
    issued = issue(ca_cert_pem, ca_key_pem, name, kind=kind, hosts=hosts)
    cert_path, key_path, ca_path = out_dir / f"{name}.pem", out_dir / f"{name}.key", out_dir / CA_CERT_NAME
    _make_dir(out_dir)
    # Key first: a crash in between leaves a new key with the old certificate, which
    # server_context reports as a mismatch rather than silently serving a stale pair.
    _write_file(key_path, issued.key_pem, 0o600, overwrite=True)
    _write_file(cert_path, issued.cert_pem, 0o644, overwrite=True)
    if ca_path.resolve() != (ca_dir / CA_CERT_NAME).resolve():
        _write_file(ca_path, issued.ca_pem, 0o644, overwrite=True)
    return cert_path, key_path, ca_path


def _make_dir(directory: Path) -> None:
    try:
        # 0700 for directories we create: they may hold private keys.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {directory}: {exc.strerror or exc}") from exc


def _write_file(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """_write_atomic with operator-facing errors; FileExistsError passes through."""
    try:
        _write_atomic(path, data, mode, overwrite=overwrite)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists: refusing to overwrite it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} missing: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- SSL contexts


def server_context(
    cert_file: str, key_file: str, ca_file: str, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A server-side context presenting *cert_file*/*key_file*.

    With *require_client_cert* (the default, mutual TLS) every client must
    present a certificate that chains to *ca_file*.  Without it a certificate
    is still verified if one is presented and *ca_file* is given.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    _load_chain(ctx, cert_file, key_file)
    if ca_file:
        _load_ca(ctx, ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ConfigError("mutual TLS needs [tls] ca_file to verify client certificates")
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(
    ca_file: str,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client-side context trusting only *ca_file*, presenting *cert_file*/*key_file* if given.

    The server's certificate is always verified against the CA; *check_hostname*
    additionally requires it to name the host connected to (``check_hostname=False``
    suits peers dialled by an address their certificate does not list).
    """
    if not ca_file:
        raise ConfigError("TLS client needs [tls] ca_file to verify servers")
    if bool(cert_file) != bool(key_file):
        raise ConfigError("a client certificate needs both cert_file and key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED  # even without hostname checks, the chain must verify
    _load_ca(ctx, ca_file)
    if cert_file and key_file:
        _load_chain(ctx, cert_file, key_file)
    return ctx


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    # Renegotiation and compression only add attack surface (CRIME, renegotiation DoS).
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # RFC 5280 strictness (Python 3.13's default): rejects malformed certificates,
    # e.g. a CA without key identifiers, instead of accepting whatever parses.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT


def _load_ca(ctx: ssl.SSLContext, ca_file: str) -> None:
    pem = _read(Path(ca_file), "CA file")
    certs = _load_certs(pem, f"CA file {ca_file}")
    if not any(_is_ca(cert) for cert in certs):
        raise ConfigError(f"CA file {ca_file} holds no CA certificate")
    try:
        ctx.load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file}: {exc}") from exc


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    # Parse and match here first: OpenSSL's own errors ("KEY_VALUES_MISMATCH",
    # "PEM lib") do not say which file is wrong.
    cert = _load_cert(_read(Path(cert_file), "certificate"), f"certificate {cert_file}")
    key = _load_key(_read(Path(key_file), "private key"), f"private key {key_file}")
    _check_pair(cert, key, f"certificate {cert_file}", f"key {key_file}")
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load certificate {cert_file} with key {key_file}: {exc}") from exc


# --------------------------------------------------------------------------- inspection


def describe(cert_pem: bytes) -> dict[str, Any]:
    """A JSON-ready summary of a PEM certificate (for ``dfs node cert`` output).

    Keys: ``common_name``, ``organization``, ``issuer``, ``serial`` (hex),
    ``kind`` (``ca``, ``node``, ``client`` or ``other``), ``is_ca``,
    ``dns_names``, ``ip_addresses``, ``extended_key_usage``, ``not_before`` and
    ``not_after`` (ISO 8601, UTC), ``fingerprint_sha256`` (lower-case hex of the DER).
    """
    cert = _load_cert(cert_pem, "certificate")
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        dns_names = san.get_values_for_type(x509.DNSName)
        ip_addresses = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    try:
        eku_ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        ekus = [_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku_ext]
    except x509.ExtensionNotFound:
        ekus = []
    is_ca = _is_ca(cert)
    if is_ca:
        kind = "ca"
    elif set(ekus) >= {"serverAuth", "clientAuth"}:
        kind = "node"
    elif ekus == ["clientAuth"]:
        kind = "client"
    else:
        kind = "other"
    return {
        "common_name": _attr(cert.subject, NameOID.COMMON_NAME),
        "organization": _attr(cert.subject, NameOID.ORGANIZATION_NAME),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "kind": kind,
        "is_ca": is_ca,
        "dns_names": dns_names,
        "ip_addresses": ip_addresses,
        "extended_key_usage": ekus,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint_sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    }


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


# --------------------------------------------------------------------------- helpers


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    # A naive datetime is taken as UTC, the way cryptography itself reads one.
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _check_days(valid_days: int) -> None:
    if valid_days < 1:
        raise ConfigError(f"valid_days must be at least 1, not {valid_days}")


def _check_text(what: str, value: str, max_chars: int) -> None:
    if not value or not value.strip():
        raise ConfigError(f"{what} must not be empty")
    if len(value) > max_chars:
        raise ConfigError(f"{what} {value!r} is longer than {max_chars} characters")
    if not value.isprintable():
        raise ConfigError(f"{what} {value!r} contains control characters")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_certs(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(f"{what} is not a PEM certificate: {exc}") from None
    return certs


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    # The first certificate is the subject's; any that follow are chain certificates.
    return _load_certs(pem, what)[0]


def _load_key(pem: bytes, what: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError(f"{what} is encrypted; dfs needs an unencrypted key file (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{what} is not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{what} must be an EC or RSA key, not {type(key).__name__}")
    return key


def _check_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cert_what: str, key_what: str
) -> None:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError(f"{key_what} does not match {cert_what} (was one of them replaced?)")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_is_ca(ca_cert: x509.Certificate) -> None:
    if not _is_ca(ca_cert):
        raise ConfigError("the CA certificate is not a CA (BasicConstraints ca=False)")
    try:
        ca_cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        # Only self-signed roots: an intermediate would need its chain shipped with
        # every leaf, which issue_files does not do.
        raise ConfigError("the CA certificate is not a self-signed root") from None


def client_context_for(cfg: Config) -> ssl.SSLContext | None:
    """The TLS context a client (CLI, mount) uses for the daemon's TCP RPC port: None unless
    ``[rpc] tls`` is on, else mutual TLS with the ``[tls]`` certificate of this host."""
    if not cfg.rpc.tls:
        return None
    tls = cfg.tls
    return client_context(tls.ca_file, tls.cert_file or None, tls.key_file or None)


def server_context_for(cfg: Config) -> ssl.SSLContext | None:
    """The RPC listener's TLS context: mutual TLS when ``[rpc] tls`` is on, else None."""
    if not cfg.rpc.tls:
        return None
    tls = cfg.tls
    return server_context(tls.cert_file, tls.key_file, tls.ca_file, require_client_cert=True)
