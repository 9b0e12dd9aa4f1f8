"""Who may sign S3 requests, checking a request's SigV4 signature against them, and who signed.

The keys are the root key, the configured key and those made with
``dfs s3 key`` (held in metadata).  A secondary may not know a key the
metadata primary made a moment ago: it has the primary verify such a
request instead of refusing it.

:meth:`KeyRing.authenticate` answers a :class:`~dfs.core.s3grants.Principal`
as well: the root and configured keys may do anything; a metadata key comes
with the grants metadata holds for it, read on the primary in the same
breath as its secret and, on a secondary, carried back by the primary's
``s3.authenticate`` answer (no second round trip, no cache to go stale: a
grant or revocation holds from the next request on).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from dfs.core import s3post, sigv4
from dfs.core.errors import DfsError, S3Error
from dfs.core.s3grants import Principal

Remote = Callable[[sigv4.RequestView, str | None], Awaitable[tuple[sigv4.AuthContext, Mapping[str, str]]]]
RemotePost = Callable[[Mapping[str, str]], Awaitable[tuple[str, str, Mapping[str, str]]]]


class KeyRing:
    """Who may sign requests: the root key, the configured key and keys made with `dfs s3 key`."""

    def __init__(
        self,
        static: Mapping[str, str],
        lookup: Callable[[str], str | None],
        remote: Remote | None = None,
        access: Callable[[str], Mapping[str, str]] | None = None,
        remote_post: RemotePost | None = None,
    ) -> None:
        self._static = dict(static)
        self._lookup = lookup
        # On the primary: a metadata key's {bucket: perm} (None: keys have no grants to read).
        self._access = access
        # On a secondary: the primary verifies requests (and upload forms) signed with keys only
        # it holds.
        self.remote = remote
        self.remote_post = remote_post

    def secret_for(self, access_key: str) -> str | None:
        secret = self._static.get(access_key)
        if secret is not None:
            return secret
        try:
            return self._lookup(access_key)
        except DfsError:
            return None

    def is_root(self, access_key: str) -> bool:
        """The root key of this daemon or the configured ``[s3] access_key``: full access."""
        return access_key in self._static

    async def authenticate_post(self, fields: Mapping[str, str], *, region: str) -> tuple[str, Principal]:
        """How a browser upload's policy was signed ("v4-post" or "v2-post") and who signed it, with
        their grants (form ``fields``, names lower-cased); a key this daemon does not hold is
        asked of the primary, if any."""
        try:
            access_key, method = s3post.verify_signature(fields, self.secret_for, region=region)
        except S3Error as exc:
            if exc.s3_code != "InvalidAccessKeyId" or self.remote_post is None:
                raise
            access_key, method, grants = await self.remote_post(fields)
            return method, Principal.from_wire(access_key, grants)
        if self.is_root(access_key):
            return method, Principal(access_key, root=True)
        grants = self._access(access_key) if self._access is not None else {}
        return method, Principal.from_wire(access_key, grants)

    async def authenticate(
        self, view: sigv4.RequestView, vhost_bucket: str | None, *, region: str, max_skew_s: float
    ) -> tuple[sigv4.AuthContext, Principal]:
        """The verified signature of a request and who made it; an unknown key is asked of the
        primary, if any."""
        remote = self.remote
        try:
            ctx = sigv4.authenticate(
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
        else:
            if self.is_root(ctx.access_key):
                return ctx, Principal(ctx.access_key, root=True)
            grants = self._access(ctx.access_key) if self._access is not None else {}
            return ctx, Principal.from_wire(ctx.access_key, grants)
        ctx, grants = await remote(view, vhost_bucket)
        return ctx, Principal.from_wire(ctx.access_key, grants)
