"""Sealed gossip packets (dfs/core/gossip/seal.py): what opens, what is dropped and why, rotation,
and the replay cache's bound."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core.errors import InvalidArgument, NotFound
from dfs.core.gossip.seal import (
    KEY_BYTES,
    MAX_KEYS,
    SEAL_OVERHEAD_BYTES,
    Keyring,
    Sealer,
    fingerprint,
    new_key,
)

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
K3 = bytes(range(64, 96))
NOW_S = 1_700_000_000.0


def pair(sender_keys: Keyring, receiver_keys: Keyring | None = None, **kw: Any) -> tuple[Sealer, Sealer]:
    """A sender and a receiver (with a copy of the sender's keys unless given its own)."""
    return Sealer(sender_keys), Sealer(receiver_keys or sender_keys.copy(), **kw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.floats(min_value=-59.0, max_value=59.0))
def test_roundtrip_within_the_window(plaintext: bytes, skew_s: float) -> None:
    tx, rx = pair(Keyring.of(K1))
    packet = tx.seal(plaintext, NOW_S + skew_s)
    assert len(packet) == len(plaintext) + SEAL_OVERHEAD_BYTES
    assert rx.open(packet, NOW_S) == plaintext
    assert rx.dropped == {"bad": 0, "stale": 0, "replayed": 0}


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.data())
def test_tampering_with_any_byte_drops_the_packet(plaintext: bytes, data: st.DataObject) -> None:
    tx, rx = pair(Keyring.of(K1))
    packet = bytearray(tx.seal(plaintext, NOW_S))
    i = data.draw(st.integers(0, len(packet) - 1), label="byte")
    packet[i] ^= data.draw(st.integers(1, 255), label="flip")
    assert rx.open(bytes(packet), NOW_S) is None
    assert rx.dropped["bad"] == 1


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=SEAL_OVERHEAD_BYTES + 8))
def test_garbage_is_bad(garbage: bytes) -> None:
    rx = Sealer(Keyring.of(K1))
    assert rx.open(garbage, NOW_S) is None
    assert rx.dropped["bad"] == 1


def test_truncated_and_extended_packets_are_bad() -> None:
    tx, rx = pair(Keyring.of(K1))
    packet = tx.seal(b"hello", NOW_S)
    assert rx.open(packet[:-1], NOW_S) is None
    assert rx.open(packet + b"\x00", NOW_S) is None
    assert rx.open(b"", NOW_S) is None
    assert rx.dropped["bad"] == 3
    assert rx.open(packet, NOW_S) == b"hello"  # the failed attempts did not spend its nonce


def test_wrong_key_drops() -> None:
    tx, rx = pair(Keyring.of(K1), Keyring.of(K2))
    assert rx.open(tx.seal(b"dead n2", NOW_S), NOW_S) is None
    assert rx.dropped == {"bad": 1, "stale": 0, "replayed": 0}


@pytest.mark.parametrize("skew_s", [-60.5, 60.5, -3600.0, 86400.0])
def test_packets_stamped_outside_the_window_are_stale(skew_s: float) -> None:
    tx, rx = pair(Keyring.of(K1))
    assert rx.open(tx.seal(b"x", NOW_S + skew_s), NOW_S) is None
    assert rx.dropped == {"bad": 0, "stale": 1, "replayed": 0}


def test_window_is_a_parameter() -> None:
    tx, rx = pair(Keyring.of(K1), window_s=5.0)
    assert rx.open(tx.seal(b"x", NOW_S - 4.0), NOW_S) == b"x"
    assert rx.open(tx.seal(b"x", NOW_S - 6.0), NOW_S) is None
    assert rx.dropped["stale"] == 1
    with pytest.raises(InvalidArgument):
        Sealer(Keyring.of(K1), window_s=0)


def test_replay_is_dropped() -> None:
    tx, rx = pair(Keyring.of(K1))
    packet = tx.seal(b"suspect n2", NOW_S)
    assert rx.open(packet, NOW_S) == b"suspect n2"
    assert rx.open(packet, NOW_S + 1) is None
    assert rx.open(packet, NOW_S + 59) is None
    assert rx.dropped == {"bad": 0, "stale": 0, "replayed": 2}
    # Out of the window, the same packet is stale, not a replay (its nonce may be forgotten).
    assert rx.open(packet, NOW_S + 61) is None
    assert rx.dropped["stale"] == 1


def test_replay_after_the_wall_clock_steps_back_is_still_dropped() -> None:
    tx, rx = pair(Keyring.of(K1))
    packet = tx.seal(b"x", NOW_S)
    assert rx.open(packet, NOW_S) == b"x"
    # 100 s later another packet prunes the first one's nonce from the cache...
    assert rx.open(tx.seal(b"y", NOW_S + 100), NOW_S + 100) == b"y"
    assert rx.replay_entries == 1
    # ...then the clock steps back 90 s: the first packet is in the window again, yet refused.
    assert rx.open(packet, NOW_S + 10) is None
    assert rx.dropped["stale"] == 1


def test_replay_cache_is_bounded_and_never_accepts_an_evicted_nonce() -> None:
    tx, rx = pair(Keyring.of(K1), max_replay_entries=100)
    packets = [tx.seal(b"%d" % i, NOW_S + i * 0.01) for i in range(250)]
    for p in packets:
        assert rx.open(p, NOW_S + 3) is not None
        assert rx.replay_entries <= 100
    assert rx.replay_entries == 100
    # Every one of them replayed is dropped: the cached ones as replays, the evicted ones because
    # they are stamped at or below the floor the evictions raised.
    for p in packets:
        assert rx.open(p, NOW_S + 3) is None
    assert rx.dropped["replayed"] == 100
    assert rx.dropped["stale"] == 150
    # A fresh packet still opens.
    assert rx.open(tx.seal(b"new", NOW_S + 3), NOW_S + 3) == b"new"


def test_distinct_packets_use_distinct_nonces() -> None:
    tx = Sealer(Keyring.of(K1))
    nonces = {tx.seal(b"same", NOW_S)[1:13] for _ in range(1000)}
    assert len(nonces) == 1000


def test_rotation_install_use_remove() -> None:
    a, b = Keyring.of(K1), Keyring.of(K1)
    tx, rx = Sealer(a), Sealer(b)
    # 1. install K2 everywhere: everyone still seals with K1, and opens both.
    a.install(K2)
    b.install(K2)
    assert a.primary == K1 and set(a.keys) == {K1, K2}
    old = tx.seal(b"old", NOW_S)
    assert rx.open(old, NOW_S) == b"old"
    # 2. use K2: a sender that switched is understood by one that did not yet.
    a.use(K2)
    new = tx.seal(b"new", NOW_S)
    assert Sealer(Keyring.of(K2)).open(new, NOW_S) == b"new"
    assert rx.open(new, NOW_S) == b"new"
    b.use(fingerprint(K2))
    late_old = Sealer(Keyring.of(K1)).seal(b"late", NOW_S)
    assert rx.open(late_old, NOW_S) == b"late"  # K1 packets still open until K1 is removed
    # 3. remove K1: its packets are dropped from now on.
    b.remove(fingerprint(K1))
    assert b.keys == (K2,)
    assert rx.open(Sealer(Keyring.of(K1)).seal(b"gone", NOW_S), NOW_S) is None
    assert rx.dropped["bad"] == 1
    assert rx.open(tx.seal(b"still", NOW_S), NOW_S) == b"still"


def test_removing_the_primary_is_refused() -> None:
    ring = Keyring([K1, K2])
    with pytest.raises(InvalidArgument, match="is the primary: use another key"):
        ring.remove(K1)
    with pytest.raises(InvalidArgument, match="primary"):
        ring.remove(fingerprint(K1))
    assert ring.keys == (K1, K2)
    ring.use(K2)
    ring.remove(K1)
    assert list(ring.keys) == [K2]


def test_use_and_remove_need_an_installed_key() -> None:
    ring = Keyring.of(K1)
    with pytest.raises(NotFound):
        ring.use(K2)
    with pytest.raises(NotFound):
        ring.remove(fingerprint(K2))
    with pytest.raises(InvalidArgument):
        ring.use("abc")  # too short a fingerprint to name a key
    with pytest.raises(InvalidArgument):
        ring.install(b"short")


def test_install_is_idempotent_and_bounded() -> None:
    ring = Keyring.of(K1)
    ring.install(K1)
    ring.install(K2)
    ring.install(K2)
    assert ring.keys == (K1, K2)
    for i in range(MAX_KEYS - 2):
        ring.install(hashlib.sha256(b"%d" % i).digest())
    with pytest.raises(InvalidArgument, match="at most"):
        ring.install(K3)
    assert len(ring.keys) == MAX_KEYS


def test_fingerprints_describe_without_revealing_keys() -> None:
    ring = Keyring([K1, K2], primary=K2)
    assert ring.describe() == {"primary": fingerprint(K2), "keys": [fingerprint(K2), fingerprint(K1)]}
    assert fingerprint(K1) == hashlib.sha256(K1).hexdigest()[:8]
    assert K1.hex() not in repr(ring) and fingerprint(K1) not in repr(ring)
    assert ring.find(hashlib.sha256(K1).hexdigest()) == K1  # a longer prefix names it too
    assert len(new_key()) == KEY_BYTES and new_key() != new_key()


def test_keyring_needs_a_key_and_a_known_primary() -> None:
    with pytest.raises(InvalidArgument):
        Keyring([])
    with pytest.raises(InvalidArgument):
        Keyring([K1], primary=K2)
    assert Keyring([K1, K2]).copy() == Keyring([K1, K2])
