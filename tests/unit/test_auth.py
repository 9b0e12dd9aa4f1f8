"""The RPC handshake and the credential files (dfs/core/auth.py, dfs/net/credentials.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.core import config as config_mod
from dfs.core.auth import (
    CallerClass,
    ClientHandshake,
    Credential,
    ServerHandshake,
    class_keys,
    derive_key,
    new_cluster_secret,
)
from dfs.core.errors import AuthFailed, ConfigError
from dfs.net import credentials

SECRET = bytes(range(32))
KEYS = class_keys(SECRET)


def _handshake(client: Credential, keys: dict[CallerClass, bytes] = KEYS) -> CallerClass:
    c, s = ClientHandshake(client), ServerHandshake(keys)
    return s.on_proof(c.answer(s.on_hello(c.hello())))


@pytest.mark.parametrize("caller", list(CallerClass))
def test_each_class_proves_itself(caller: CallerClass) -> None:
    assert _handshake(Credential.derived(SECRET, caller)) is caller


def test_class_keys_differ_and_none_is_the_secret() -> None:
    keys = set(KEYS.values())
    assert len(keys) == 3 and SECRET not in keys
    assert derive_key(SECRET, "gossip") not in keys


def test_a_derived_credential_cannot_claim_another_class() -> None:
    client = Credential.derived(SECRET, CallerClass.CLIENT)
    forged = Credential(CallerClass.ADMIN, client.key)  # the client key, presented as admin
    with pytest.raises(AuthFailed):
        _handshake(forged)


def test_another_clusters_daemon_cannot_fool_the_client() -> None:
    """The client checks the server's proof before it proves anything itself."""
    c = ClientHandshake(Credential.derived(SECRET, CallerClass.CLIENT))
    impostor = ServerHandshake(class_keys(new_cluster_secret()))
    with pytest.raises(AuthFailed, match="could not prove"):
        c.answer(impostor.on_hello(c.hello()))


def test_a_replayed_proof_fails_against_a_fresh_nonce() -> None:
    c = ClientHandshake(Credential.derived(SECRET, CallerClass.ADMIN))
    first = ServerHandshake(KEYS)
    proof = c.answer(first.on_hello(c.hello()))
    assert first.on_proof(proof) is CallerClass.ADMIN
    with pytest.raises(AuthFailed):
        first.on_proof(proof)  # one proof per handshake
    second = ServerHandshake(KEYS)
    second.on_hello(c.hello())  # the recorded hello: same client nonce, new server nonce
    with pytest.raises(AuthFailed):
        second.on_proof(proof)


def test_the_servers_proof_is_not_a_clients_proof() -> None:
    """Reflection: sending the server's own proof back as the client's fails (roles differ)."""
    c = ClientHandshake(Credential.derived(SECRET, CallerClass.NODE))
    s = ServerHandshake(KEYS)
    challenge = s.on_hello(c.hello())
    with pytest.raises(AuthFailed):
        s.on_proof([challenge[1]])


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(), st.binary()), max_size=4))
def test_garbage_hello_is_authfailed_only(args: list[object]) -> None:
    s = ServerHandshake(KEYS)
    with pytest.raises(AuthFailed, match="^authentication failed$"):  # the same words, whatever was wrong
        s.on_hello(args)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=0, max_size=64))
def test_no_wrong_proof_passes(server_nonce: bytes, proof: bytes) -> None:
    c = ClientHandshake(Credential.derived(SECRET, CallerClass.CLIENT))
    s = ServerHandshake(KEYS, nonce=server_nonce)
    s.on_hello(c.hello())
    with pytest.raises(AuthFailed):
        s.on_proof([proof])


@pytest.mark.parametrize("caller", list(CallerClass))
def test_credential_text_roundtrip(caller: CallerClass) -> None:
    cred = Credential.derived(SECRET, caller)
    assert Credential.from_text(cred.to_text()) == cred
    assert (cred.secret is not None) == (caller is CallerClass.NODE)


@pytest.mark.parametrize(
    "text", ["", "dfs-credential-1 node", "ssh-rsa AAAA x", "dfs-credential-1 root AAAA"]
)
def test_malformed_credential_text(text: str) -> None:
    with pytest.raises(AuthFailed):
        Credential.from_text(text)


def test_daemon_secret_made_once_and_derived_files_written(tmp_path: Path) -> None:
    secret = credentials.daemon_secret(tmp_path, joining=False)
    assert credentials.daemon_secret(tmp_path, joining=False) == secret
    for cls in CallerClass:
        path = tmp_path / credentials.FILE_NAMES[cls]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert credentials.load(path) == Credential.derived(secret, cls)
    # A derived file that went stale (or was damaged) is rewritten at the next start.
    (tmp_path / "client.credential").write_text("junk")
    credentials.daemon_secret(tmp_path, joining=False)
    assert credentials.load(tmp_path / "client.credential") == Credential.derived(secret, CallerClass.CLIENT)


def test_a_joiner_without_the_secret_is_told_what_to_copy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Copy node.credential"):
        credentials.daemon_secret(tmp_path, joining=True)
    assert not (tmp_path / "node.credential").exists()


def test_find_prefers_the_asked_classes_and_refuses_loose_files(tmp_path: Path) -> None:
    cfg = config_mod.parse(f'[node]\ndata_dir = "{tmp_path}"\n', env={}, origin="test")
    assert credentials.find(cfg) is None or credentials.SERVICE_DIR.exists()
    secret = credentials.daemon_secret(tmp_path, joining=False)
    found = credentials.find(cfg)
    assert found is not None and found.caller is CallerClass.ADMIN
    found = credentials.find(cfg, (CallerClass.CLIENT,))
    assert found == Credential.derived(secret, CallerClass.CLIENT)
    os.chmod(tmp_path / "client.credential", 0o644)
    with pytest.raises(AuthFailed, match="chmod 600"):
        credentials.find(cfg, (CallerClass.CLIENT,))
    named = config_mod.parse(
        f'[node]\ndata_dir = "{tmp_path}"\n[rpc]\ncredential_file = "{tmp_path / "admin.credential"}"\n',
        env={},
        origin="test",
    )
    found = credentials.find(named, (CallerClass.CLIENT,))
    assert found is not None and found.caller is CallerClass.ADMIN
