"""The gossip keyring on disk (daemon/cluster/keyring.py) and the ``sys.gossip_keyring`` handler
that changes a running node's keys (daemon/service/cluster_runner.py)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.cluster.keyring import KEYRING_FILE, load_keyring, save_keyring
from daemon.cluster.membership import Membership
from daemon.service import Service
from dfs.core import config as config_mod
from dfs.core import endpoints
from dfs.core.auth import derive_key
from dfs.core.errors import ConfigError, InvalidArgument, NotFound, NotSupported
from dfs.core.gossip.seal import Keyring, fingerprint

SECRET = b"s" * 32
K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def test_without_a_file_the_key_derives_from_the_cluster_secret(tmp_path: Path) -> None:
    ring = load_keyring(tmp_path, SECRET)
    assert ring.keys == (derive_key(SECRET, "gossip"),)
    assert not (tmp_path / KEYRING_FILE).exists()  # nothing written until an operator changes it


def test_save_and_load_roundtrip_private_and_atomic(tmp_path: Path) -> None:
    ring = Keyring([K1, K2], primary=K2)
    save_keyring(tmp_path, ring)
    path = tmp_path / KEYRING_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_keyring(tmp_path, SECRET) == ring
    assert load_keyring(tmp_path, SECRET).primary == K2
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEYRING_FILE]  # no temporary file left
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and len(doc["keys"]) == 2
    save_keyring(tmp_path, Keyring.of(K1))  # replaces the file
    assert load_keyring(tmp_path, SECRET) == Keyring.of(K1)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"version": 2, "primary": "", "keys": []}',
        '{"version": 1, "keys": []}',
        '{"version": 1, "primary": "AAAA", "keys": ["AAAA"]}',  # 3-byte keys
        '{"version": 1, "primary": "%s", "keys": []}',  # primary not among the keys
        '{"version": 1, "primary": "***", "keys": ["***"]}',
        "x" * 70_000,
    ],
)
def test_a_file_that_is_not_a_keyring_stops_the_daemon(tmp_path: Path, content: str) -> None:
    (tmp_path / KEYRING_FILE).write_text(content.replace("%s", base64.b64encode(K1).decode()))
    with pytest.raises(ConfigError, match=KEYRING_FILE):
        load_keyring(tmp_path, SECRET)


# -- the handler -----------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    cfg = config_mod.parse(
        f'[node]\ndata_dir = "{tmp_path / "var"}"\nid = "n1"\n[gossip]\nlisten = "127.0.0.1:1"\n',
        env={},
        origin="test",
    )
    svc = Service(cfg)
    # Not run: the handler only swaps its keyring (what the running adapter seals with next).
    svc.membership = Membership(cfg, dict, keyring=Keyring.of(K1))
    yield svc
    svc.close()


async def keyring(service: Service, *args: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await endpoints.SYS_GOSSIP_KEYRING.call(service.local_caller(), *args)
    return answer


async def test_handler_rotates_the_running_keyring_and_persists_each_step(service: Service) -> None:
    membership = service.membership
    assert membership is not None
    data = service.cfg.data_path
    f1, f2 = fingerprint(K1), fingerprint(K2)
    listed = await keyring(service, "list")
    assert listed == {"primary": f1, "keys": [f1], "dropped": {"bad": 0, "stale": 0, "replayed": 0}}
    assert not (data / KEYRING_FILE).exists()

    assert (await keyring(service, "install", K2))["keys"] == [f1, f2]
    assert membership.keyring.keys == (K1, K2)
    assert load_keyring(data, SECRET) == membership.keyring
    assert (await keyring(service, "install", K2))["keys"] == [f1, f2]  # again: no change

    assert (await keyring(service, "use", f2))["primary"] == f2
    assert membership.keyring.primary == K2 and load_keyring(data, SECRET).primary == K2

    with pytest.raises(InvalidArgument, match="primary"):
        await keyring(service, "remove", f2)
    assert (await keyring(service, "remove", K1))["keys"] == [f2]
    assert list(membership.keyring.keys) == [K2] and load_keyring(data, SECRET).keys == (K2,)


async def test_handler_refuses_bad_arguments_and_changes_nothing(service: Service) -> None:
    f1 = fingerprint(K1)
    with pytest.raises(InvalidArgument, match="unknown op"):
        await keyring(service, "rotate", K2)
    with pytest.raises(InvalidArgument, match="takes no key"):
        await keyring(service, "list", K2)
    with pytest.raises(InvalidArgument, match="needs a key"):
        await keyring(service, "use")
    with pytest.raises(InvalidArgument, match="not a fingerprint"):
        await keyring(service, "install", f1)
    with pytest.raises(InvalidArgument):
        await keyring(service, "install", b"too short")
    with pytest.raises(NotFound):
        await keyring(service, "use", fingerprint(K2))
    assert (await keyring(service, "list"))["keys"] == [f1]
    assert not (service.cfg.data_path / KEYRING_FILE).exists()


async def test_handler_without_gossip(service: Service) -> None:
    service.membership = None
    with pytest.raises(NotSupported, match="gossip is disabled"):
        await keyring(service, "list")
