"""Who may sign S3 requests, and checking a request's SigV4 signature against them.

The keys are the root key, the configured key and those made with
``dfs s3 key`` (held in metadata).  A secondary may not know a key the
metadata primary made a moment ago: it has the primary verify such a
request instead of refusing it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from dfs.core import sigv4
from dfs.core.errors import DfsError, S3Error


class KeyRing:
    """Who may sign requests: the root key, the configured key and keys made with `dfs s3 key`."""

    def __init__(
        self,
        static: Mapping[str, str],
        lookup: Callable[[str], str | None],
        remote: Callable[[sigv4.RequestView, str | None], Awaitable[sigv4.AuthContext]] | None = None,
    ) -> None:
        self._static = dict(static)
        self._lookup = lookup
        # On a secondary: the primary verifies requests signed with keys only it holds.
        self.remote = remote

    def secret_for(self, access_key: str) -> str | None:
        secret = self._static.get(access_key)
        if secret is not None:
            return secret
        try:
            return self._lookup(access_key)
        except DfsError:
            return None

    async def authenticate(
        self, view: sigv4.RequestView, vhost_bucket: str | None, *, region: str, max_skew_s: float
    ) -> sigv4.AuthContext:
        """The verified signature of a request; an unknown key is asked of the primary, if any."""
        remote = self.remote
        try:
            return sigv4.authenticate(
                view,
                self.secret_for,
                now_s=time.time(),
                region=region,
                max_skew_s=max_skew_s,
                vhost_bucket=vhost_bucket,
            )
        except S3Error as exc:
            if exc.s3_code != "InvalidAccessKeyId" or remote is None:
                raise
        return await remote(view, vhost_bucket)
