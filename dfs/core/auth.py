"""Who may call a daemon: caller classes, credentials and the RPC handshake.  Pure.

One random *cluster secret* stands behind every door of a cluster.  Every daemon holds it
(``node.credential`` in its data directory; a new host gets it by copying that one file).
The keys callers prove with are derived from it, one per class, so a credential of one
class never reveals another's:

- ``node``: a peer daemon.  Its credential is the cluster secret itself.
- ``admin``: the CLI commands that change layout, keys and volumes (``admin.credential``).
- ``client``: a mount, or the CLI's read-only commands (``client.credential``).

The handshake (HMAC-SHA256 challenge-response over fresh nonces from both sides; nothing
secret ever crosses the wire) runs before the first call of every TCP connection:

1. client -> ``auth.hello`` [version, class, client nonce]
2. server -> [server nonce, server proof]  (the client checks it: it talks to a daemon of
   *its* cluster, not an impostor)
3. client -> ``auth.proof`` [client proof], then its calls, pipelined behind it

A proof is ``HMAC(class key, label || role || class || client nonce || server nonce)``.  The
roles differ, so one side's proof never serves as the other's; the server's nonce is fresh,
so a recorded handshake replayed later fails.  The server answers a bad proof with one error
frame that says nothing about the cluster, and closes the connection.

Also the sealing key of gossip (:func:`derive_key` with purpose ``"gossip"``): one secret, one
file to copy.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dfs.core.errors import AuthFailed

__all__ = [
    "HELLO",
    "PROOF",
    "CallerClass",
    "ClientHandshake",
    "Credential",
    "ServerHandshake",
    "class_keys",
    "derive_key",
    "new_cluster_secret",
]

#: Bumped when the handshake changes; a daemon refuses versions it does not speak.
VERSION = 1
HELLO = "auth.hello"
PROOF = "auth.proof"
SECRET_BYTES = 32
NONCE_BYTES = 32
_LABEL = b"dfs-rpc-handshake-1\x00"
_FILE_MAGIC = "dfs-credential-1"


class CallerClass(enum.Enum):
    """What a caller is (see the module docstring); each endpoint names the classes it serves."""

    CLIENT = "client"
    ADMIN = "admin"
    NODE = "node"


def new_cluster_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from the cluster secret (HMAC-SHA256 as a PRF)."""
    return hmac.new(secret, b"dfs-derive\x00" + purpose.encode(), hashlib.sha256).digest()


def class_keys(secret: bytes) -> dict[CallerClass, bytes]:
    """The handshake key of every caller class (what a daemon checks proofs against)."""
    return {cls: derive_key(secret, f"rpc-{cls.value}") for cls in CallerClass}


@dataclass(frozen=True, slots=True)
class Credential:
    """What a caller proves with: its class and the class's handshake key.

    ``secret`` is set only for a node credential (the cluster secret, from which a daemon
    derives every other key)."""

    caller: CallerClass
    key: bytes
    secret: bytes | None = None

    @classmethod
    def of_secret(cls, secret: bytes) -> Credential:
        return cls(CallerClass.NODE, class_keys(secret)[CallerClass.NODE], secret)

    @classmethod
    def derived(cls, secret: bytes, caller: CallerClass) -> Credential:
        if caller is CallerClass.NODE:
            return cls.of_secret(secret)
        return cls(caller, class_keys(secret)[caller])

    def to_text(self) -> str:
        """The credential file's content: one line, ``dfs-credential-1 <class> <base64>``."""
        raw = self.secret if self.caller is CallerClass.NODE else self.key
        assert raw is not None
        return f"{_FILE_MAGIC} {self.caller.value} {base64.b64encode(raw).decode()}\n"

    @classmethod
    def from_text(cls, text: str, where: str = "credential") -> Credential:
        words = text.split()
        if len(words) != 3 or words[0] != _FILE_MAGIC:
            raise AuthFailed(f"{where}: not a dfs credential file")
        try:
            caller = CallerClass(words[1])
            raw = base64.b64decode(words[2], validate=True)
        except (ValueError, binascii.Error):
            raise AuthFailed(f"{where}: not a dfs credential file") from None
        if len(raw) != SECRET_BYTES:
            raise AuthFailed(f"{where}: the key has {len(raw)} bytes, expected {SECRET_BYTES}")
        if caller is CallerClass.NODE:
            return cls.of_secret(raw)
        return cls(caller, raw)


def _proof(key: bytes, role: bytes, caller: CallerClass, client_nonce: bytes, server_nonce: bytes) -> bytes:
    message = _LABEL + role + b"\x00" + caller.value.encode() + b"\x00" + client_nonce + server_nonce
    return hmac.new(key, message, hashlib.sha256).digest()


def _nonce(value: Any, who: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != NONCE_BYTES:
        raise AuthFailed(f"{who}: malformed handshake")
    return value


class ClientHandshake:
    """The caller's side: :meth:`hello`, then :meth:`answer` the server's challenge."""

    def __init__(self, credential: Credential, nonce: bytes | None = None) -> None:
        self.credential = credential
        self._nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)

    def hello(self) -> list[Any]:
        """The ``auth.hello`` arguments."""
        return [VERSION, self.credential.caller.value, self._nonce]

    def answer(self, challenge: Any) -> list[Any]:
        """The ``auth.proof`` arguments for the server's reply to hello.  Raises
        :class:`AuthFailed` when the server did not prove it holds this class's key."""
        if not isinstance(challenge, Sequence) or len(challenge) != 2:
            raise AuthFailed("the daemon answered the handshake with something else")
        server_nonce = _nonce(challenge[0], "the daemon")
        c = self.credential
        want = _proof(c.key, b"server", c.caller, self._nonce, server_nonce)
        if not isinstance(challenge[1], bytes) or not hmac.compare_digest(challenge[1], want):
            raise AuthFailed("the daemon could not prove it belongs to this credential's cluster")
        return [_proof(c.key, b"client", c.caller, self._nonce, server_nonce)]


class ServerHandshake:
    """The daemon's side: :meth:`on_hello`, then :meth:`on_proof` gives the caller's class.

    Every failure raises :class:`AuthFailed` with the same message, so a prober learns
    nothing (not even which classes exist)."""

    def __init__(self, keys: Mapping[CallerClass, bytes], nonce: bytes | None = None) -> None:
        self._keys = keys
        self._nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self._caller: CallerClass | None = None
        self._client_nonce = b""

    def on_hello(self, args: Sequence[Any]) -> list[Any]:
        if len(args) != 3 or args[0] != VERSION or not isinstance(args[1], str):
            raise AuthFailed("authentication failed")
        try:
            caller = CallerClass(args[1])
        except ValueError:
            raise AuthFailed("authentication failed") from None
        key = self._keys.get(caller)
        if key is None:
            raise AuthFailed("authentication failed")
        self._client_nonce = _nonce(args[2], "authentication failed")
        self._caller = caller
        return [self._nonce, _proof(key, b"server", caller, self._client_nonce, self._nonce)]

    def on_proof(self, args: Sequence[Any]) -> CallerClass:
        caller = self._caller
        if caller is None or len(args) != 1 or not isinstance(args[0], bytes):
            raise AuthFailed("authentication failed")
        want = _proof(self._keys[caller], b"client", caller, self._client_nonce, self._nonce)
        if not hmac.compare_digest(args[0], want):
            raise AuthFailed("authentication failed")
        self._caller = None  # one proof per handshake
        return caller
