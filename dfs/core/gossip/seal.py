"""Authenticated encryption of every gossip packet (AES-256-GCM), with a rotatable keyring.  Pure.

Without it anyone who can reach a gossip port could forge "suspect" or "dead" news and have a live
member declared dead.  Every UDP datagram and every push-pull frame is sealed by its sender and
opened by its receiver; what does not open is dropped and counted, never parsed.

Packet (``SEAL_OVERHEAD_BYTES`` longer than the gossip bytes it carries)::

    version (1 byte) | nonce (12, random) | AES-GCM(timestamp_ms (8, big-endian) | gossip bytes) | tag (16)

The version byte is the associated data, so it cannot be changed without the tag failing.  The
timestamp is inside the ciphertext, so it is authenticated too: a receiver drops packets stamped
more than ``window_s`` away from its own wall clock (``stale``), and remembers the nonces of the
packets it accepted within that window so a recorded packet sent again is dropped (``replayed``).
Everything else that fails (short, unknown version, no key opens it) is ``bad``.

Keys: a :class:`Keyring` holds 1..``MAX_KEYS`` 32-byte keys, one of them the *primary*, which
seals; every key is tried to open.  That is what makes rotation possible without downtime
(memberlist's procedure): install the new key everywhere (everyone still seals with the old one,
and can already open the new), then use it everywhere (senders switch one by one; receivers open
both), then remove the old one everywhere.  Operators see keys only as :func:`fingerprint`.

Bounds: the replay cache holds at most ``max_replay_entries`` nonces.  Entries that left the
window are pruned first (the timestamp check drops their packets anyway); when the cache is still
full, the entry with the oldest timestamp is evicted.  The timestamp of every forgotten entry
becomes a floor: packets stamped at or below it are dropped as ``stale``, because the cache can
no longer tell whether they were seen.  So no replay is ever accepted, even when the wall clock
steps back; under a flood, old-but-in-window packets are dropped instead, which SWIM tolerates
as loss.

Nonces are random: AES-GCM stays safe for about 2**32 packets per key across the whole
cluster, one more reason to rotate keys now and then.

Sans-IO: wall-clock time arrives as ``now_s``; randomness from :mod:`secrets` (or an injected
``random_bytes``).
"""

from __future__ import annotations

import hashlib
import heapq
import secrets
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dfs.core.errors import InvalidArgument, NotFound

__all__ = [
    "DROP_REASONS",
    "KEY_BYTES",
    "MAX_KEYS",
    "SEAL_OVERHEAD_BYTES",
    "Keyring",
    "Sealer",
    "fingerprint",
    "new_key",
]

SEAL_VERSION = 1
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
TAG_BYTES = 16
_TIMESTAMP = struct.Struct(">Q")  # milliseconds since the epoch
_VERSION_BYTE = bytes([SEAL_VERSION])
_HEADER_BYTES = 1 + NONCE_BYTES
#: What sealing adds to a packet.
SEAL_OVERHEAD_BYTES = _HEADER_BYTES + _TIMESTAMP.size + TAG_BYTES
#: A rotation needs two keys at once; a few more leave room for a slow roll-out, not a pile-up.
MAX_KEYS = 16
#: How many hex characters of a key's SHA-256 identify it to operators.
FINGERPRINT_CHARS = 8
DROP_REASONS = ("bad", "stale", "replayed")


def new_key() -> bytes:
    """A fresh random gossip key."""
    return secrets.token_bytes(KEY_BYTES)


def fingerprint(key: bytes) -> str:
    """What operators see of a key: the first hex characters of its SHA-256, never the key."""
    return hashlib.sha256(key).hexdigest()[:FINGERPRINT_CHARS]


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidArgument(f"a gossip key is {KEY_BYTES} raw bytes")
    return key


class Keyring:
    """The gossip keys of one node: the primary seals, all of them open.

    Keys are kept in installation order; :attr:`keys` lists the primary first, which is also
    the order :class:`Sealer` tries them in (the primary is the one almost every packet uses).
    """

    def __init__(self, keys: Iterable[bytes], primary: bytes | None = None) -> None:
        self._keys: dict[bytes, AESGCM] = {}
        for key in keys:
            self._add(key)
        if not self._keys:
            raise InvalidArgument("a gossip keyring needs at least one key")
        self._primary = next(iter(self._keys)) if primary is None else primary
        if self._primary not in self._keys:
            raise InvalidArgument("the primary gossip key is not in the keyring")

    @classmethod
    def of(cls, key: bytes) -> Keyring:
        """A keyring of one key."""
        return cls([key])

    # -- views -----------------------------------------------------------------------
    @property
    def primary(self) -> bytes:
        return self._primary

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every key, the primary first."""
        return (self._primary, *(k for k in self._keys if k != self._primary))

    def ciphers(self) -> list[AESGCM]:
        """The keys' ciphers, the primary's first (the order to try them in)."""
        return [self._keys[k] for k in self.keys]

    def primary_cipher(self) -> AESGCM:
        return self._keys[self._primary]

    def describe(self) -> dict[str, str | list[str]]:
        """What an operator may see: ``{"primary": fingerprint, "keys": [fingerprints]}``."""
        return {"primary": fingerprint(self._primary), "keys": [fingerprint(k) for k in self.keys]}

    def find(self, key_or_fingerprint: bytes | str) -> bytes:
        """The installed key given as raw bytes or by fingerprint (:class:`NotFound` if none)."""
        if isinstance(key_or_fingerprint, str):
            wanted = key_or_fingerprint.strip().lower()
            if len(wanted) < FINGERPRINT_CHARS:
                raise InvalidArgument(f"a key fingerprint has at least {FINGERPRINT_CHARS} hex characters")
            matches = [k for k in self._keys if hashlib.sha256(k).hexdigest().startswith(wanted)]
            if len(matches) > 1:  # 32-bit fingerprints: only ever by accident, but never guess
                raise InvalidArgument(f"fingerprint {wanted} matches {len(matches)} keys: give more of it")
            if not matches:
                raise NotFound(f"no gossip key with fingerprint {wanted} is installed")
            return matches[0]
        key = _check_key(key_or_fingerprint)
        if key not in self._keys:
            raise NotFound(f"gossip key {fingerprint(key)} is not installed")
        return key

    def copy(self) -> Keyring:
        return Keyring(self.keys, self._primary)

    # -- changes ---------------------------------------------------------------------
    def install(self, key: bytes) -> None:
        """Add ``key`` (it opens packets at once; it seals only once :meth:`use` d).  Installing
        an installed key changes nothing, so a roll-out may be retried."""
        if _check_key(key) not in self._keys:
            self._add(key)

    def use(self, key_or_fingerprint: bytes | str) -> None:
        """Make an installed key the primary: it seals from now on."""
        self._primary = self.find(key_or_fingerprint)

    def remove(self, key_or_fingerprint: bytes | str) -> None:
        """Forget a key: packets sealed with it are dropped from now on.  The primary cannot be
        removed (nothing would seal): :meth:`use` another key first."""
        key = self.find(key_or_fingerprint)
        if key == self._primary:
            raise InvalidArgument(
                f"gossip key {fingerprint(key)} is the primary: use another key before removing it"
            )
        del self._keys[key]

    def _add(self, key: bytes) -> None:
        _check_key(key)
        if key in self._keys:
            return
        if len(self._keys) >= MAX_KEYS:
            raise InvalidArgument(f"a gossip keyring holds at most {MAX_KEYS} keys: remove an old one first")
        self._keys[key] = AESGCM(key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyring) and self.keys == other.keys

    def __repr__(self) -> str:  # never the keys themselves: this ends up in logs
        return f"Keyring(primary={fingerprint(self._primary)}, keys={len(self._keys)})"


@dataclass
class _ReplayCache:
    """Nonces of accepted packets with their timestamps, bounded (see the module docstring)."""

    max_entries: int
    seen: set[bytes] = field(default_factory=set)
    by_time: list[tuple[int, bytes]] = field(default_factory=list)  # a min-heap on timestamp_ms
    floor_ms: int = -1  # packets stamped at or below this can no longer be checked

    def __len__(self) -> int:
        return len(self.seen)

    def prune(self, oldest_ms: int) -> None:
        """Forget the nonces stamped before ``oldest_ms``: the window check drops those packets."""
        while self.by_time and self.by_time[0][0] < oldest_ms:
            self._forget_oldest()

    def add(self, nonce: bytes, timestamp_ms: int) -> None:
        while len(self.seen) >= self.max_entries:
            self._forget_oldest()
        self.seen.add(nonce)
        heapq.heappush(self.by_time, (timestamp_ms, nonce))

    def _forget_oldest(self) -> None:
        # Every forgotten timestamp raises the floor, so a forgotten nonce is never accepted
        # again: not after an eviction, nor when the wall clock steps back into its window.
        timestamp_ms, nonce = heapq.heappop(self.by_time)
        self.seen.discard(nonce)
        self.floor_ms = max(self.floor_ms, timestamp_ms)


class Sealer:
    """Seals outgoing packets and opens incoming ones for one node, counting what it drops.

    ``keyring`` may be replaced (or changed in place) at any time: the next packet uses it.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        window_s: float = 60.0,
        max_replay_entries: int = 65_536,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if window_s <= 0:
            raise InvalidArgument("the gossip replay window must be positive")
        if max_replay_entries < 1:
            raise InvalidArgument("the gossip replay cache needs room for at least one entry")
        self.keyring = keyring
        self.window_s = window_s
        self._window_ms = int(window_s * 1000)
        self._replays = _ReplayCache(max_replay_entries)
        self._random_bytes = random_bytes
        #: Packets dropped, by reason (see :data:`DROP_REASONS`).
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.opened = 0

    @property
    def replay_entries(self) -> int:
        """How many nonces the replay cache holds now."""
        return len(self._replays)

    def seal(self, plaintext: bytes, now_s: float) -> bytes:
        """``plaintext`` sealed with the primary key, stamped ``now_s``."""
        nonce = self._random_bytes(NONCE_BYTES)
        stamped = _TIMESTAMP.pack(max(0, int(now_s * 1000))) + plaintext
        return _VERSION_BYTE + nonce + self.keyring.primary_cipher().encrypt(nonce, stamped, _VERSION_BYTE)

    def open(self, packet: bytes, now_s: float) -> bytes | None:
        """The plaintext of ``packet``, or None (dropped and counted) if no key opens it, it is
        stamped outside the window, or it was accepted before."""
        if len(packet) < SEAL_OVERHEAD_BYTES or packet[0] != SEAL_VERSION:
            self.dropped["bad"] += 1
            return None
        nonce = packet[1:_HEADER_BYTES]
        body = packet[_HEADER_BYTES:]
        stamped: bytes | None = None
        for cipher in self.keyring.ciphers():
            try:
                stamped = cipher.decrypt(nonce, body, _VERSION_BYTE)
                break
            except InvalidTag:
                continue
        if stamped is None:
            self.dropped["bad"] += 1
            return None
        # Only authentic packets reach the replay cache: forgeries cannot fill it.
        (timestamp_ms,) = _TIMESTAMP.unpack_from(stamped)
        now_ms = int(now_s * 1000)
        if abs(timestamp_ms - now_ms) > self._window_ms or timestamp_ms <= self._replays.floor_ms:
            self.dropped["stale"] += 1
            return None
        self._replays.prune(now_ms - self._window_ms)
        if nonce in self._replays.seen:
            self.dropped["replayed"] += 1
            return None
        self._replays.add(nonce, timestamp_ms)
        self.opened += 1
        return stamped[_TIMESTAMP.size :]
