"""The cluster's current master key: its record in the metadata (daemon/meta/volume_keys.py,
both engines), what a daemon does to follow it (dfs/core/keys.py), adopting a peer's key
into the key files, and the start-up refusal to make a key over wrapped ones
(daemon/service/volume_keys.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.meta import MetaStore
from daemon.service.volume_keys import MasterKeys, VolumeKeyService, open_master_keys
from dfs.core import keys
from dfs.core.errors import ConfigError, InvalidArgument, Unavailable
from tests.metastores import open_meta

A = bytes(range(32))
B = bytes(range(1, 33))
C = bytes(range(2, 34))
FA, FB, FC = (keys.fingerprint(k) for k in (A, B, C))


@given(st.binary(min_size=8, max_size=8))
def test_fingerprints_fit_a_signed_64_bit_column(raw: bytes) -> None:
    fp = raw.hex()
    value = keys.fingerprint_to_int(fp)
    assert -(2**63) <= value < 2**63
    assert keys.fingerprint_from_int(value) == fp


def test_a_malformed_fingerprint_is_refused() -> None:
    for bad in ("", "abc", "00" * 9):
        with pytest.raises(InvalidArgument):
            keys.fingerprint_to_int(bad)


def test_wanted_fingerprint() -> None:
    assert keys.wanted_fingerprint(None, []) is None
    assert keys.wanted_fingerprint(FA, []) == FA
    assert keys.wanted_fingerprint(FA, [FB]) == FA  # the record wins over old rows
    assert keys.wanted_fingerprint(None, [FB, FB]) == FB  # metadata from before the record
    assert keys.wanted_fingerprint(None, [FA, FB]) is None  # rows disagree: nothing says


@pytest.mark.parametrize(
    ("wanted", "current", "held", "from_env", "plan"),
    [
        (FA, FA, [FA], False, "in_sync"),
        (None, FA, [FA], False, "in_sync"),
        (None, None, [], False, "fetch_any"),  # a new peer, nothing recorded yet
        (FB, FA, [FA], False, "fetch"),  # a rotation elsewhere
        (FA, None, [], False, "fetch"),
        (FB, FA, [FA, FB], False, "adopt_held"),  # e.g. a rotation's master.key.new
        (FB, FA, [FA], True, "env_mismatch"),  # never overwritten, only reported
        (FB, FA, [FA, FB], True, "env_mismatch"),
        (FA, FA, [FA], True, "in_sync"),
    ],
)
def test_follow_plan(
    wanted: str | None, current: str | None, held: list[str], from_env: bool, plan: str
) -> None:
    assert keys.follow_plan(wanted, current, held, from_env=from_env) == plan


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_adopting_a_peers_key_keeps_the_replaced_one(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    fresh = MasterKeys(path, create=False, env={})
    assert fresh.current is None and fresh.source == "none"
    fresh.adopt(A, previous=C)  # no key of its own: the peer's previous one becomes .old
    assert path.read_bytes() == A and _mode(path) == 0o600
    old = path.with_name("master.key.old")
    assert old.read_bytes() == C and _mode(old) == 0o600
    fresh.adopt(B, previous=A)  # a rotation elsewhere: its own key becomes .old
    assert path.read_bytes() == B and old.read_bytes() == A
    assert fresh.current == B and fresh.previous == A and {FA, FB, FC} <= set(fresh.by_fp)
    fresh.adopt(B, previous=C)  # already current: nothing changes
    assert old.read_bytes() == A
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    again = MasterKeys(path, create=False, env={})  # what a restart loads
    assert again.current == B and again.previous == A
    assert B.hex() not in repr(again) and A.hex() not in repr(again)
    with pytest.raises(ConfigError):
        fresh.adopt(b"short", previous=None)


def test_an_environment_key_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    env_keys = MasterKeys(path, create=True, env={keys.MASTER_KEY_ENV: A.hex()})
    assert env_keys.source == "environment" and not path.exists()
    with pytest.raises(ConfigError, match="DFS_MASTER_KEY"):
        env_keys.adopt(B, previous=None)
    assert not path.exists() and env_keys.current == A


@pytest.fixture
def store(tmp_path: Path, meta_engine: str) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=1 << 20)
    yield s
    s.close()


def _seal(master: bytes, ino: int) -> object:
    fp = keys.fingerprint(master)
    return lambda key_id: (keys.wrap(master, key_id, ino, os.urandom(32)), fp)


def test_the_record_follows_the_first_key_and_each_rotation(store: MetaStore) -> None:
    vol = store.create_volume("v", {"encryption": True}, mode=0o755, uid=0, gid=0).ino
    assert store.master_state() == (None, [])
    store.volume_key_create(vol, _seal(A, vol))
    assert store.master_state() == (FA, [FA])
    with pytest.raises(Unavailable, match="not the cluster's current"):
        store.volume_key_create(vol, _seal(B, vol))  # a daemon still on another key
    assert len(store.volume_keys()) == 1

    def to_b(row: tuple[int, int, bytes, str, int]) -> tuple[bytes, str]:
        return keys.wrap(B, row[0], row[1], keys.unwrap(A, row[0], row[1], row[2])), FB

    before = store.volume_keys()
    with pytest.raises(Unavailable, match="another rotation came first"):
        store.volume_keys_rewrap(to_b, FB, FC)  # rotating from a key that is not current
    assert store.volume_keys() == before and store.master_state() == (FA, [FA])
    assert store.volume_keys_rewrap(to_b, FB, FA) == 1
    assert store.master_state() == (FB, [FB])
    store.volume_key_create(vol, _seal(B, vol))
    assert store.master_state() == (FB, [FB])


def test_a_rotation_commits_before_its_files_change(tmp_path: Path, store: MetaStore) -> None:
    """The steps the daemon runs (master_key_sync.py): a refused commit leaves master.key as
    it was, and the record names the new key only once the files do."""
    path = tmp_path / "master.key"
    master = MasterKeys(path, create=True, env={})
    svc = VolumeKeyService(master, 3, lambda: store)
    vol = store.create_volume("v", {"encryption": True}, mode=0o755, uid=0, gid=0).ino
    (key_id, data_key), *_ = svc.volumes()["keys"]
    first = path.read_bytes()
    first_fp = keys.fingerprint(first)

    def same(row: tuple[int, int, bytes, str, int]) -> tuple[bytes, str]:
        return row[2], row[3]

    # Another daemon rotated meanwhile: the record moved away from this daemon's key.
    store.volume_keys_rewrap(same, FC, first_fp)
    old, new = svc.rotate_begin()
    with pytest.raises(Unavailable):
        svc.rotate_commit(old, new)
    assert path.read_bytes() == first and not path.with_name("master.key.old").exists()
    store.volume_keys_rewrap(same, first_fp, FC)  # (and back)
    done = svc.rotate()
    assert store.master_state() == (done["master_fingerprint"], [done["master_fingerprint"]])
    assert keys.fingerprint(path.read_bytes()) == done["master_fingerprint"]
    assert path.with_name("master.key.old").read_bytes() == first
    assert svc.volumes()["keys"] == [[key_id, data_key]]
    assert svc.status()["cluster_fingerprint"] == done["master_fingerprint"]
    assert [r[1] for r in store.volume_keys()] == [vol]


def test_no_new_master_key_over_wrapped_ones(tmp_path: Path, store: MetaStore) -> None:
    vol = store.create_volume("v", {"encryption": True}, mode=0o755, uid=0, gid=0).ino
    path = tmp_path / "master.key"
    made = open_master_keys(path, store, founder=True, shared=False, env={})
    assert made.current is not None and path.exists()  # nothing named yet: the founder makes one
    store.volume_key_create(vol, _seal(made.current, vol))
    path.unlink()
    # SQLite: nobody could hand it the key, so it refuses to start, and makes no key.
    with pytest.raises(ConfigError, match="refusing to start") as err:
        open_master_keys(path, store, founder=True, shared=False, env={})
    assert keys.fingerprint(made.current) in err.value.message and not path.exists()
    # Another key in the environment does not open them either.
    with pytest.raises(ConfigError, match="refusing to start"):
        open_master_keys(path, store, founder=True, shared=False, env={keys.MASTER_KEY_ENV: B.hex()})
    # Shared metadata: it starts without a key (and takes it from a peer), making none.
    shared = open_master_keys(path, store, founder=True, shared=True, env={})
    assert shared.current is None and not path.exists()
    # Given the key back, it starts.
    path.write_bytes(made.current)
    path.chmod(0o600)
    assert open_master_keys(path, store, founder=True, shared=False, env={}).current == made.current
    assert open_master_keys(path, None, founder=False, shared=False, env={}).current is None
