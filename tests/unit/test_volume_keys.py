"""Volume keys: wrapping, ids, the client's ring (dfs/core/keys.py), the store's table
(daemon/meta/volume_keys.py, on both engines) and the daemon's master key files."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.meta import MetaStore
from daemon.service.volume_keys import MasterKeys, VolumeKeyService
from dfs.core import codec, keys
from dfs.core.errors import ConfigError, InvalidArgument, NotFound
from dfs.core.namespace import ROOT_INO
from tests.metastores import open_meta

MASTER = bytes(range(32))
OTHER = bytes(range(1, 33))


@given(st.binary(min_size=32, max_size=32), st.integers(1, keys.MAX_KEY_ID), st.integers(1, 2**63 - 1))
def test_wrap_round_trips_and_binds_id_and_volume(data_key: bytes, key_id: int, ino: int) -> None:
    wrapped = keys.wrap(MASTER, key_id, ino, data_key)
    assert data_key not in wrapped
    assert keys.unwrap(MASTER, key_id, ino, wrapped) == data_key
    with pytest.raises(ConfigError):
        keys.unwrap(OTHER, key_id, ino, wrapped)
    with pytest.raises(ConfigError):
        keys.unwrap(MASTER, key_id % keys.MAX_KEY_ID + 1, ino, wrapped)
    with pytest.raises(ConfigError):
        keys.unwrap(MASTER, key_id, ino + 1, wrapped)


def test_key_ids_are_u16_and_not_zero() -> None:
    for bad in (0, keys.MAX_KEY_ID + 1):
        with pytest.raises(InvalidArgument):
            keys.wrap(MASTER, bad, 1, MASTER)


def test_master_key_text_forms() -> None:
    assert keys.parse_master_key(MASTER.hex()) == MASTER
    assert keys.parse_master_key(" " + base64.b64encode(MASTER).decode() + "\n") == MASTER
    for bad in ("", "00" * 31, "not a key", base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigError) as err:
            keys.parse_master_key(bad)
        assert bad not in str(err.value) or not bad


def test_chunk_id_keys_differ_per_volume_and_from_the_data_key() -> None:
    a, b = os.urandom(32), os.urandom(32)
    assert keys.chunk_id_key(a) != keys.chunk_id_key(b)
    assert keys.chunk_id_key(a) != a
    data = b"the same plaintext" * 100
    ids = {codec.chunk_id(k, data) for k in (keys.chunk_id_key(a), keys.chunk_id_key(b), MASTER)}
    assert len(ids) == 3
    assert keys.fingerprint(a) != keys.fingerprint(b) and len(keys.fingerprint(a)) == 16


def test_codec_of_policy() -> None:
    vc = keys.codec_of_policy
    assert vc({}, 3, None) == keys.VolumeCodec(3, 0)
    assert vc({"compression": "none", "compression_level": 9}, 3, None) == keys.VolumeCodec(0, 0)
    assert vc({"compression": "zstd", "compression_level": 9}, 3, None) == keys.VolumeCodec(9, 0)
    assert vc({"compression_level": None}, 1, 4) == keys.VolumeCodec(1, 0)  # encryption off: key kept
    assert vc({"encryption": True}, 1, 4) == keys.VolumeCodec(1, 4)
    assert vc({"encryption": True}, 1, None) == keys.VolumeCodec(1, 0)  # no key yet


def test_volume_of_walks_a_parents_map() -> None:
    parents = {10: ROOT_INO, 11: 10, 12: 11, 20: 99}
    assert keys.volume_of(parents, 12, ROOT_INO) == 10
    assert keys.volume_of(parents, 10, ROOT_INO) == 10
    assert keys.volume_of(parents, 20, ROOT_INO) is None  # chain broken
    assert keys.volume_of(parents, ROOT_INO, ROOT_INO) is None
    assert keys.volume_of({30: 31, 31: 30}, 30, ROOT_INO) is None  # a cycle ends


def test_ring_from_wire_and_encrypted_codec_round_trip() -> None:
    data_key = os.urandom(32)
    ring = keys.KeyRing.from_wire({"default_level": 2, "volumes": [[10, 5, 7]], "keys": [[7, data_key]]})
    assert ring.codec(10) == keys.VolumeCodec(5, 7) and ring.codec(11) == keys.VolumeCodec(2, 0)
    assert ring.codec(None) == keys.VolumeCodec(2, 0)
    assert ring.key(7) == data_key and ring.id_key(7) == keys.chunk_id_key(data_key)
    assert data_key.hex() not in repr(ring)
    marker = b"MARKER-1234567890" * 1000
    blob = codec.encode(marker, level=5, cipher_key=data_key, key_id=7)
    assert b"MARKER" not in blob and codec.header_info(blob).key_id == 7
    assert codec.decode(blob, cipher_key=ring.key(7)) == marker


# -- the store ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path, meta_engine: str) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=1 << 20)
    yield s
    s.close()


def seal_with(master: bytes, ino: int) -> tuple[bytes, object]:
    data_key = os.urandom(32)
    fp = keys.fingerprint(master)
    return data_key, lambda key_id: (keys.wrap(master, key_id, ino, data_key), fp)


def test_store_keys_ids_rewrap_and_volume_of(store: MetaStore) -> None:
    a = store.create_volume("a", {"encryption": True}, mode=0o755, uid=0, gid=0).ino
    b = store.create_volume("b", {}, mode=0o755, uid=0, gid=0).ino
    with pytest.raises(NotFound):
        store.volume_key_create(12345, lambda key_id: (b"x", "fp"))
    key_a, seal = seal_with(MASTER, a)
    assert store.volume_key_create(a, seal) == 1
    _, seal2 = seal_with(MASTER, b)
    assert store.volume_key_create(b, seal2) == 2
    key_a2, seal3 = seal_with(MASTER, a)
    assert store.volume_key_create(a, seal3) == 3  # ids are never reused and grow
    codecs = {ino: (policy, key) for ino, policy, key in store.volume_codecs()}
    assert codecs[a] == ({"encryption": True}, 3) and codecs[b] == ({}, 2)
    rows = store.volume_keys()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert keys.unwrap(MASTER, 1, a, rows[0][2]) == key_a
    ops = [r[0] for r in store._db.execute("SELECT op FROM oplog ORDER BY seq")]
    assert ops.count("volume_key_create") == 3
    assert not any(key_a.hex() in repr(r) for r in store._db.execute("SELECT args FROM oplog"))

    def rewrap(row: tuple[int, int, bytes, str, int]) -> tuple[bytes, str]:
        plain = keys.unwrap(MASTER, row[0], row[1], row[2])
        return keys.wrap(OTHER, row[0], row[1], plain), keys.fingerprint(OTHER)

    assert store.volume_keys_rewrap(rewrap) == 3
    rows = store.volume_keys()
    assert {r[3] for r in rows} == {keys.fingerprint(OTHER)}
    assert keys.unwrap(OTHER, 3, a, rows[2][2]) == key_a2

    def fail(row: tuple[int, int, bytes, str, int]) -> tuple[bytes, str]:
        if row[0] == 2:
            raise ConfigError("no")
        return b"bad", "bad"

    with pytest.raises(ConfigError):
        store.volume_keys_rewrap(fail)
    assert store.volume_keys() == rows  # one transaction: nothing changed

    d = store.mkdir(a, b"d", 0o755, 0, 0).ino
    e = store.mkdir(d, b"e", 0o755, 0, 0).ino
    f = store.create(e, b"f", 0o644, 0, 0, "s1").ino
    top = store.create(ROOT_INO, b"top", 0o644, 0, 0, "s1").ino
    assert store.volume_of(f) == a and store.volume_of(f, e) == a
    assert store.volume_of(d) == a and store.volume_of(a) == a
    assert store.volume_of(top) is None and store.volume_of(ROOT_INO) is None
    other = store.mkdir(b, b"x", 0o755, 0, 0).ino
    assert store.volume_of(other) == b


def test_service_makes_keys_lazily_and_rotates(tmp_path: Path, store: MetaStore) -> None:
    master = MasterKeys(tmp_path / "master.key", create=True, env={})
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    svc = VolumeKeyService(master, 3, lambda: store)
    a = store.create_volume("a", {"encryption": True, "compression_level": 7}, mode=0o755, uid=0, gid=0).ino
    b = store.create_volume("b", {"compression": "none"}, mode=0o755, uid=0, gid=0).ino
    answer = svc.volumes()
    assert sorted(answer["volumes"]) == sorted([[a, 7, 1], [b, 0, 0]])
    ((key_id, data_key),) = answer["keys"]
    assert key_id == 1 and len(data_key) == 32
    assert svc.ensure(store, a) == 1  # no second key
    before = keys.fingerprint(master.require())
    done = svc.rotate()
    assert done["old_fingerprint"] == before and done["rewrapped"] == 1
    assert (tmp_path / "master.key.old").read_bytes() != (tmp_path / "master.key").read_bytes()
    assert not (tmp_path / "master.key.new").exists()
    # A fresh daemon (new service, keys from the files) opens the rewrapped key.
    again = VolumeKeyService(MasterKeys(tmp_path / "master.key", create=False, env={}), 3, lambda: store)
    assert again.volumes()["keys"] == [[1, data_key]]
    status = again.status()
    assert status["master_fingerprint"] == done["master_fingerprint"]
    assert status["keys"][0]["volume"] == "a" and status["keys"][0]["opens"]
    assert "Losing the master key" in status["warning"]
    # A daemon without the master key serves plain volumes and fails closed on encrypted ones:
    # the codec still names the key id, the key itself is left out.
    keyless = VolumeKeyService(MasterKeys.none(), 3, lambda: store).volumes()
    assert keyless["keys"] == [] and [a, 7, 1] in keyless["volumes"]


def test_master_key_files(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    assert MasterKeys(path, create=False, env={}).current is None
    made = MasterKeys(path, create=True, env={}).current
    assert made is not None and path.read_bytes() == made
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        MasterKeys(path, create=True, env={})
    path.chmod(0o600)
    env = {keys.MASTER_KEY_ENV: OTHER.hex()}
    from_env = MasterKeys(path, create=True, env=env)
    assert from_env.current == OTHER and from_env.from_env  # the environment wins
    assert OTHER.hex() not in repr(from_env)
    with pytest.raises(ConfigError):
        MasterKeys(path, create=True, env={keys.MASTER_KEY_ENV: "nonsense"})
