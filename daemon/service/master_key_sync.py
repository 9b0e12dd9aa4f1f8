"""Carrying the master key to every daemon that serves the same metadata.

With PostgreSQL every daemon serves metadata, so every daemon needs the master
key that wraps the volumes' data keys (daemon/service/volume_keys.py); with
SQLite only the primary serves metadata and nothing here runs but the endpoints.

Which key is current is recorded in the metadata itself (its fingerprint, never
the key: daemon/meta/volume_keys.py), set with the first data key and moved by
each rotation in the rotation's own transaction.  Each daemon compares that
record with its own key's fingerprint every :data:`CHECK_INTERVAL_S` and, when
they differ, takes the key from a peer over authenticated RPC (``keys.master``:
peer daemons only, mTLS when configured, the node credential) and writes it to
its own ``master_key_file`` (atomically, mode 0600), keeping the key it
replaces as ``master.key.old`` as a rotation does.  Why a poll of the record
rather than a push from the rotating daemon: a push misses a daemon that is down
or partitioned at that moment, the poll catches up whenever it comes back; the
record is one indexed row read on the read connection, next to the 0.25 s
change poll every such daemon already makes, so following a rotation takes at
most a few seconds.  A daemon whose key comes from ``DFS_MASTER_KEY`` writes no
file: if its key is not the recorded one it says so (an error in its log, and
``dfs key status`` shows each daemon's fingerprint) and serves no data key it
cannot open, rather than overwrite anything.

A new daemon also takes a key before it reports ready (:meth:`MasterKeySync.first_sync`,
bounded), so it does not start serving encrypted volumes without it.

Key files change only in tasks holding :attr:`MasterKeySync.lock` (rotation here,
following one elsewhere): the two can never interleave their renames.  Key bytes
never reach a log, an error or a metric: only fingerprints.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio

from daemon.service.cluster_runner import ClusterRunner
from daemon.service.meta_calls import MetaCalls
from daemon.service.volume_keys import VolumeKeyService
from dfs.core import endpoints, keys
from dfs.core.auth import Credential
from dfs.core.config import Config
from dfs.core.errors import DfsError
from dfs.net import rpc
from dfs.net.certs import client_context_for

log = logging.getLogger("dfs.daemon")

#: How often a daemon sharing the metadata compares its key with the recorded one (the
#: bound on how long it serves with a key a rotation elsewhere replaced).
CHECK_INTERVAL_S = 2.0
#: How long a starting daemon waits for a peer's key before it reports ready anyway.
FIRST_SYNC_TIMEOUT_S = 15.0
#: Peers asked per attempt (the founder first, then live members): a bound on one step.
MAX_PEERS = 16
#: ``keys.master``'s ``want``: the answering daemon's current key, whichever it is.
WANT_CURRENT = "current"


class MasterKeySync:
    """The ``keys.master``/``keys.status``/``keys.rotate`` handlers and the follow loop."""

    def __init__(
        self,
        cfg: Config,
        service: VolumeKeyService,
        metacalls: MetaCalls,
        runner: ClusterRunner,
        credential: Credential,
        *,
        shared: bool,
    ) -> None:
        self.cfg = cfg
        self.service = service
        self.master = service.master
        self._metacalls = metacalls
        self._runner = runner
        self._credential = credential
        self.shared = shared
        # Serializes every change of the key files (rotation, adoption).
        self.lock = trio.Lock()
        # The cluster's current master key as last read (None: not read yet, or none recorded).
        self.cluster_fingerprint: str | None = None
        # Fingerprints already complained about (an env key that differs, a key no peer had):
        # one log line each, not one every check.
        self._complained: set[str] = set()
        # Made on first use (it reads the CA file), then kept: None when TLS is off.
        self._ssl: tuple[ssl.SSLContext | None] | None = None

    # -- endpoints -------------------------------------------------------------------------------
    async def master_key(self, want: str) -> dict[str, Any]:
        """keys.master (peer daemons only): this daemon's key fingerprint and source, and the
        key whose fingerprint is ``want`` (or ``"current"``) if it holds it; ``""`` asks for no
        key bytes.  With the current key comes the previous one (master.key.old), which a
        follower keeps as the rotating daemon does."""
        m = self.master
        key: bytes | None = None
        if want == WANT_CURRENT:
            key = m.current
        elif want:
            key = m.by_fp.get(want)
        return {
            "node_id": self.cfg.node_id,
            "serves_metadata": self._metacalls.store is not None,
            "fingerprint": m.fingerprint,
            "source": m.source,
            "cluster_fingerprint": self.cluster_fingerprint,
            "key": key,
            "previous": m.previous if key is not None and key == m.current else None,
        }

    async def status(self) -> dict[str, Any]:
        """keys.status: this daemon's view (volume_keys.py) and each metadata-serving daemon's
        master key fingerprint, so a mismatch shows."""
        status = await self._metacalls.run(self.service.status)
        self.cluster_fingerprint = status["cluster_fingerprint"]
        daemons = [await self.master_key("")]
        if self.shared:
            daemons += await self._survey()
        wanted = status["cluster_fingerprint"]
        for d in daemons:
            d.pop("key", None)
            d.pop("previous", None)
            d["in_sync"] = d.get("fingerprint") is not None and wanted in (None, d.get("fingerprint"))
        status["daemons"] = daemons
        return status

    async def rotate(self) -> dict[str, Any]:
        """keys.rotate: the new key's file first, the rewrap and record in one transaction, the
        renames only once it committed (a failed commit leaves the files as they were)."""
        svc = self.service
        async with self.lock:
            old, new = await trio.to_thread.run_sync(svc.rotate_begin)
            count = await self._metacalls.run(svc.rotate_commit, old, new)
            await trio.to_thread.run_sync(self.master.promote_new)
            done = svc.rotate_finish(old, new, count)
        self.cluster_fingerprint = done["master_fingerprint"]
        return done

    # -- following -------------------------------------------------------------------------------
    async def step(self) -> None:
        """Compare this daemon's key with the recorded one; take the recorded one if they differ."""
        store = self._metacalls.read_store
        if not self.shared or store is None:
            return  # the SQLite primary is the only holder; a secondary needs no master key
        recorded, row_fps = await self._metacalls.read(store.master_state)
        wanted = keys.wanted_fingerprint(recorded, row_fps)
        self.cluster_fingerprint = wanted
        m = self.master
        plan = keys.follow_plan(wanted, m.fingerprint, m.by_fp, from_env=m.from_env)
        if plan == "in_sync":
            return
        if plan == "env_mismatch":
            assert wanted is not None
            if wanted not in self._complained:
                self._complained.add(wanted)
                log.error(
                    "master key MISMATCH: $%s holds %s but the cluster's current master key is %s; "
                    "this daemon serves no data key wrapped under %s and replaces nothing: "
                    "set $%s to the current key (or unset it to take it from a peer)",
                    keys.MASTER_KEY_ENV,
                    m.fingerprint,
                    wanted,
                    wanted,
                    keys.MASTER_KEY_ENV,
                )
            return
        key: bytes | None = None
        previous: bytes | None = None
        origin = "this daemon's own files"
        if plan == "adopt_held":
            assert wanted is not None
            key = m.by_fp[wanted]
        else:
            found = await self._fetch(wanted or WANT_CURRENT)
            if found is not None:
                key, previous, origin = found
        if key is None:
            name = wanted or WANT_CURRENT
            if name not in self._complained:
                self._complained.add(name)
                log.warning("master key %s: no peer daemon could give it yet; asking again", name)
            return
        await self._adopt(key, previous, wanted, origin)

    async def _adopt(self, key: bytes, previous: bytes | None, wanted: str | None, origin: str) -> None:
        m = self.master
        async with self.lock:
            # A rotation on this daemon may have finished meanwhile (it records, then renames).
            if m.current == key or (wanted is not None and m.fingerprint == wanted):
                return
            was = m.fingerprint
            await trio.to_thread.run_sync(m.adopt, key, previous)
        self._complained.clear()
        log.warning("master key: now %s (was %s), from %s", m.fingerprint, was or "none", origin)

    async def _fetch(self, want: str) -> tuple[bytes, bytes | None, str] | None:
        """The key ``want`` names (a fingerprint or ``current``) from the first peer that has it
        (and its previous key), checked against its fingerprint; None if no peer had it."""
        for address in await self._peers():
            try:
                answer = await self._ask(address, want)
            except (DfsError, trio.TooSlowError) as exc:
                log.info("master key from %s: %s", address, _why(exc))
                continue
            key = answer.get("key")
            if not isinstance(key, bytes) or len(key) != keys.KEY_BYTES:
                continue
            got = keys.fingerprint(key)
            if want != WANT_CURRENT and got != want:
                log.warning("master key from %s: asked for %s, got %s; ignored", address, want, got)
                continue
            previous = answer.get("previous")
            if not isinstance(previous, bytes) or len(previous) != keys.KEY_BYTES:
                previous = None
            return key, previous, f"{answer.get('node_id')} ({address})"
        return None

    async def _ask(self, address: str, want: str) -> dict[str, Any]:
        timeout_s = self.cfg.cluster.peer_timeout_s
        if self._ssl is None:
            self._ssl = (client_context_for(self.cfg),)
        with trio.fail_after(timeout_s + 1.0):
            async with rpc.open_client(
                address,
                connect_timeout_s=timeout_s,
                call_timeout_s=timeout_s,
                max_frame_bytes=self.cfg.rpc.max_frame_bytes,
                ssl_context=self._ssl[0],
                credential=self._credential,
            ) as conn:
                answer: dict[str, Any] = await endpoints.KEYS_MASTER.call(conn, want)
                return answer

    async def _peers(self) -> list[str]:
        """Whom to ask: the founder ([cluster] meta), then the live members gossip knows."""
        own = self._runner.advertised_rpc()
        out: list[str] = []
        if self.cfg.cluster.meta:
            out.append(self.cfg.cluster.meta)
        for member in await self._runner.members():
            address = member.get("rpc")
            if member.get("self") or member.get("status") != "alive" or not isinstance(address, str):
                continue
            if not address or address.startswith(":"):
                continue  # listens on every interface and advertises none: not reachable by this
            out.append(address)
        return [a for a in dict.fromkeys(out) if a != own][:MAX_PEERS]

    async def _survey(self) -> list[dict[str, Any]]:
        """keys.master("") of every other live daemon serving metadata (unreachable ones named)."""
        found: list[dict[str, Any]] = []

        async def one(address: str) -> None:
            try:
                answer = await self._ask(address, "")
            except (DfsError, trio.TooSlowError) as exc:
                found.append({"address": address, "error": _why(exc), "fingerprint": None})
                return
            if answer.get("serves_metadata"):
                found.append({**answer, "address": address})

        async with trio.open_nursery() as nursery:
            for address in await self._peers():
                nursery.start_soon(one, address)
        return sorted(found, key=lambda d: str(d.get("node_id") or d["address"]))

    async def first_sync(self) -> None:
        """Before a daemon sharing the metadata reports ready: the recorded key (or, if none is
        recorded yet and it has none, any peer's), for up to :data:`FIRST_SYNC_TIMEOUT_S`."""
        with trio.move_on_after(FIRST_SYNC_TIMEOUT_S):
            while True:
                try:
                    await self.step()
                except DfsError as exc:
                    log.info("master key check: %s", exc.message)
                m = self.master
                wanted = self.cluster_fingerprint
                if m.from_env or (m.current is not None and wanted in (None, m.fingerprint)):
                    return
                await trio.sleep(0.5)
        log.warning(
            "master key: still %s, the cluster's is %s; serving without it (encrypted volumes "
            "fail closed) and asking again every %.0f s",
            self.master.fingerprint or "none",
            self.cluster_fingerprint or "not recorded",
            CHECK_INTERVAL_S,
        )


def _why(exc: DfsError | trio.TooSlowError) -> str:
    return exc.message if isinstance(exc, DfsError) else "no answer in time"
