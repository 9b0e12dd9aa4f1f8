"""Volume encryption keys: the master key, wrapped per-volume data keys, and what a client needs.

Envelope encryption.  One master key (32 bytes, ``master.key`` on the metadata
primary or ``DFS_MASTER_KEY``) wraps a random 32-byte *data key* per encrypted
volume; metadata keeps only the wrapped form (table ``volume_keys``).  A data key
is numbered by a ``key_id`` (1..65535) that every chunk encrypted under it
carries in its header (dfs/core/codec.py), so a reader finds the key from the
blob alone, also after the volume's policy changed.  Rotating the master key
rewraps the data keys and rewrites no chunk.

Chunk ids of an encrypted volume are keyed by :func:`chunk_id_key` (derived from
its data key) instead of the cluster key: identical plaintext in two volumes,
or in an encrypted and a plain one, then gets unrelated ids and does not reveal
itself by dedup; dedup still works within the volume.

:class:`KeyRing` is a client's picture, answered by the primary (``keys.volumes``):
each volume's compression level and active key id, and the unwrapped data keys.

Pure: no I/O, no trio.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dfs.core.errors import ConfigError, CorruptChunk, InvalidArgument

__all__ = [
    "KEY_BYTES",
    "MASTER_KEY_ENV",
    "MAX_KEY_ID",
    "KeyRing",
    "VolumeCodec",
    "chunk_id_key",
    "codec_of_policy",
    "fingerprint",
    "fingerprint_from_int",
    "fingerprint_to_int",
    "follow_plan",
    "new_key",
    "parse_master_key",
    "unwrap",
    "volume_of",
    "wanted_fingerprint",
    "wrap",
]

KEY_BYTES = 32
MAX_KEY_ID = 0xFFFF  # the codec header's u16; 0 means "not encrypted"
MASTER_KEY_ENV = "DFS_MASTER_KEY"
MAX_COMPRESSION_LEVEL = 19
_NONCE_BYTES = 12
_WRAP_LABEL = b"dfs-volume-key-1\x00"
_CHUNK_ID_CONTEXT = "dfs volume chunk ids"
_FINGERPRINT_CONTEXT = "dfs master key fingerprint"
# A parent walk longer than any real path only happens on a cycle: stop there.
_MAX_DEPTH = 10_000


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def parse_master_key(text: str | bytes) -> bytes:
    """A master key given as 64 hex digits or base64 of 32 bytes (surrounding space ignored)."""
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    raw = raw.strip()
    key: bytes | None = None
    if len(raw) == 2 * KEY_BYTES:
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != KEY_BYTES:
        # Never echo the value: it is a secret even when malformed.
        raise ConfigError(f"the master key must be {KEY_BYTES} bytes as hex or base64")
    return key


def fingerprint(master: bytes) -> str:
    """A short public name of a master key (which key wrapped a row), revealing nothing of it."""
    return blake3.blake3(master, derive_key_context=_FINGERPRINT_CONTEXT).hexdigest(length=8)


def fingerprint_to_int(fp: str) -> int:
    """A fingerprint as the signed 64-bit integer a metadata ``config`` row holds."""
    try:
        raw = bytes.fromhex(fp)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise InvalidArgument(f"a master key fingerprint is 16 hex digits, not {fp!r:.40}")
    return int.from_bytes(raw, "big", signed=True)


def fingerprint_from_int(value: int) -> str:
    """:func:`fingerprint_to_int` undone."""
    return value.to_bytes(8, "big", signed=True).hex()


def wanted_fingerprint(recorded: str | None, row_fingerprints: Iterable[str]) -> str | None:
    """The master key every daemon serving this metadata must hold as its current key.

    ``recorded``: what the metadata says (set with the first data key and by every rotation,
    in their transactions); metadata from before that record names it only through its wrapped
    rows, so if they all agree, theirs.  None: nothing says (no data key yet, or rows wrapped
    under several keys and no record), so any key will do until one is recorded."""
    if recorded is not None:
        return recorded
    found = set(row_fingerprints)
    return found.pop() if len(found) == 1 else None


FollowAction = Literal["in_sync", "adopt_held", "fetch", "fetch_any", "env_mismatch"]


def follow_plan(
    wanted: str | None, current: str | None, held: Iterable[str], *, from_env: bool
) -> FollowAction:
    """What a daemon serving shared metadata does to hold the cluster's master key.

    ``wanted``: :func:`wanted_fingerprint`; ``current``: its own key's fingerprint (None: it
    has none); ``held``: every key it holds (current, previous, a rotation's leftover).
    ``env_mismatch``: its key comes from the environment and differs -- never overwritten,
    only reported.  ``fetch_any``: nothing is recorded yet but it has no key at all (a new
    peer): any peer's current key."""
    if wanted is None:
        return "fetch_any" if current is None and not from_env else "in_sync"
    if wanted == current:
        return "in_sync"
    if from_env:
        return "env_mismatch"
    return "adopt_held" if wanted in set(held) else "fetch"


def _aad(key_id: int, volume_ino: int) -> bytes:
    return _WRAP_LABEL + struct.pack("<HQ", key_id, volume_ino)


def _check_id(key_id: int) -> None:
    if not 1 <= key_id <= MAX_KEY_ID:
        raise InvalidArgument(f"volume key id must be 1..{MAX_KEY_ID}, not {key_id}")


def wrap(master: bytes, key_id: int, volume_ino: int, data_key: bytes) -> bytes:
    """``data_key`` sealed under ``master`` (AES-256-GCM), bound to its id and volume."""
    _check_id(key_id)
    if len(master) != KEY_BYTES or len(data_key) != KEY_BYTES:
        raise InvalidArgument(f"keys must be {KEY_BYTES} bytes")
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(master).encrypt(nonce, data_key, _aad(key_id, volume_ino))


def unwrap(master: bytes, key_id: int, volume_ino: int, wrapped: bytes) -> bytes:
    """The data key :func:`wrap` sealed; ConfigError for another master key (or a moved row)."""
    try:
        key = AESGCM(master).decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], _aad(key_id, volume_ino))
    except (InvalidTag, ValueError):
        raise ConfigError(
            f"volume key {key_id} does not open with the master key {fingerprint(master)}"
        ) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"volume key {key_id} is malformed")
    return key


def chunk_id_key(data_key: bytes) -> bytes:
    """The BLAKE3 key naming an encrypted volume's chunks (never the data key itself)."""
    return blake3.blake3(data_key, derive_key_context=_CHUNK_ID_CONTEXT).digest()


class VolumeCodec(NamedTuple):
    """How new chunks of one volume are encoded: zstd ``level`` (0: raw), ``key_id`` (0: plain)."""

    level: int
    key_id: int


def codec_of_policy(policy: Mapping[str, Any], default_level: int, key_id: int | None) -> VolumeCodec:
    """The codec a volume's stored policy asks for; ``key_id``: its newest data key, if any."""
    if policy.get("compression") == "none":
        level = 0
    else:
        own = policy.get("compression_level")
        level = own if isinstance(own, int) and not isinstance(own, bool) and own > 0 else default_level
    encrypted = policy.get("encryption") is True and key_id is not None
    return VolumeCodec(level, key_id if encrypted and key_id else 0)


def volume_of(parents: Mapping[int, int], ino: int, root: int) -> int | None:
    """The top-level directory (a child of ``root``) above ``ino``, from a child -> parent map;
    None if the chain breaks before reaching ``root`` (or ``ino`` is ``root``)."""
    here = ino
    for _ in range(_MAX_DEPTH):
        parent = parents.get(here)
        if parent is None:
            return None
        if parent == root:
            return here
        here = parent
    return None


class KeyRing:
    """A client's copy of the volumes' codecs and data keys (from ``keys.volumes``)."""

    def __init__(self, default_level: int) -> None:
        self.default_level = default_level
        self.codecs: dict[int, VolumeCodec] = {}
        self._keys: dict[int, bytes] = {}
        self._id_keys: dict[int, bytes] = {}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> KeyRing:
        ring = cls(int(raw["default_level"]))
        for ino, level, key_id in raw["volumes"]:
            ring.codecs[int(ino)] = VolumeCodec(int(level), int(key_id))
        for key_id, key in raw["keys"]:
            if len(key) != KEY_BYTES:
                raise CorruptChunk(f"volume key {key_id} is malformed")
            ring._keys[int(key_id)] = bytes(key)
            ring._id_keys[int(key_id)] = chunk_id_key(bytes(key))
        return ring

    def codec(self, volume: int | None) -> VolumeCodec:
        """The codec of files under ``volume`` (the cluster default for none or a plain directory)."""
        found = None if volume is None else self.codecs.get(volume)
        return found if found is not None else VolumeCodec(self.default_level, 0)

    def key(self, key_id: int) -> bytes | None:
        return self._keys.get(key_id)

    def id_key(self, key_id: int) -> bytes | None:
        return self._id_keys.get(key_id)

    def __repr__(self) -> str:  # never the key bytes
        return f"KeyRing(volumes={len(self.codecs)}, keys={sorted(self._keys)})"
