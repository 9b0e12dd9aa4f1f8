"""What the S3 and admin front ends need from the metadata primary: S3 keys and request
authentication, and admin requests a secondary forwards.

S3 keys made by ``dfs s3 key create`` live in metadata, on the primary.  A
secondary's S3 endpoint therefore asks the primary to verify a request signed
with one (``s3.authenticate``); the secret never leaves the primary, which
answers who signed and, for SigV4, the day's signing key the secondary needs
for a streaming body's chunk signatures.  Likewise a secondary's admin API has
the primary answer requests backed by metadata (``sys.admin_forward``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import daemon.admin.tokens as tokens
from daemon.http import Response
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.keys import new_s3_key
from daemon.service.meta_calls import MetaCalls
from dfs.core import endpoints, s3post, sigv4
from dfs.core.config import Config
from dfs.core.errors import InvalidArgument, S3Error, Unavailable

#: How long a secondary trusts a token the primary verified (a revocation reaches it this late).
TOKEN_CACHE_S = 5.0
_TOKEN_CACHE_MAX = 256


class ForwardedAdmin(Protocol):
    """The primary's admin API, as far as forwarded requests go."""

    async def forwarded(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, remote: str
    ) -> Response: ...


class Frontends:
    """S3 key and authentication calls, and admin forwarding, both ways."""

    def __init__(self, cfg: Config, metacalls: MetaCalls, cluster: ClusterRunner) -> None:
        self.cfg = cfg
        self._metacalls = metacalls
        self._cluster = cluster
        # The admin API, once the node serves it: the primary answers requests secondaries forward.
        self.admin_api: ForwardedAdmin | None = None
        # A secondary's recently verified scoped admin tokens: digest -> (scope, expires at, monotonic).
        self._token_cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    # -- S3 keys --------------------------------------------------------------------------------
    def s3_secret(self, access_key: str) -> str | None:
        """The secret of an S3 key made with `dfs s3 key create`, on the primary (which holds
        them); a secondary has none and asks the primary to verify (s3_authenticate_remote)."""
        reader = self._metacalls.reader
        if reader is not None:
            return reader.s3_key_get(access_key)
        return None

    def s3_access(self, access_key: str) -> dict[str, str]:
        """The ``{bucket: perm}`` of a key made with `dfs s3 key create`, on the primary."""
        return self._metacalls.reads.s3_access(access_key)

    async def s3_key_create(self, description: str = "", allow: Any = ()) -> dict[str, Any]:
        """A new S3 key pair, with grants ``allow`` ([bucket, perm] pairs); the secret is
        returned once and never logged."""
        if not isinstance(description, str) or len(description) > 256:
            raise InvalidArgument("key description must be a string of at most 256 characters")
        if not isinstance(allow, list | tuple) or not all(
            isinstance(g, list | tuple) and len(g) == 2 and all(isinstance(x, str) for x in g) for g in allow
        ):
            raise InvalidArgument("allow must be a list of [bucket, perm] pairs")
        access_key, secret_key = new_s3_key()
        meta = self._metacalls.meta
        await self._metacalls.run(meta.s3_key_put, access_key, secret_key, description, allow)
        made: dict[str, Any] = {"access_key": access_key, "secret_key": secret_key}
        made.update(description=description, grants=self._metacalls.reads.s3_access(access_key))
        return made

    async def s3_authenticate(
        self, request: list[Any], vhost_bucket: str | None, region: str, max_skew_s: float
    ) -> dict[str, Any]:
        """Verify an S3 request signed with a key made by `dfs s3 key create`, for a secondary's S3
        endpoint (see the module docstring)."""
        try:
            method, path, query, headers = request
            view = sigv4.RequestView(
                str(method), str(path), str(query), {str(k): str(v) for k, v in headers.items()}
            )
            ctx = sigv4.authenticate(
                view,
                self._metacalls.reads.s3_key_get,
                now_s=time.time(),
                region=str(region),
                max_skew_s=float(max_skew_s),
                vhost_bucket=vhost_bucket,
            )
        except S3Error as exc:
            return {"error": [exc.s3_code, exc.message, exc.status, dict(exc.extra)]}
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidArgument(f"s3.authenticate: malformed request: {exc}") from None
        # The key's grants come along: a secondary needs no second round trip to authorize.
        return {"auth": dataclasses.asdict(ctx), "grants": self._metacalls.reads.s3_access(ctx.access_key)}

    async def s3_authenticate_post(self, fields: dict[str, Any], region: str) -> dict[str, Any]:
        """Verify a browser upload's policy signed with a key made by `dfs s3 key create`, for a
        secondary's S3 endpoint."""
        try:
            form = {str(k): str(v) for k, v in fields.items()}
            access_key, method = s3post.verify_signature(
                form, self._metacalls.reads.s3_key_get, region=str(region)
            )
        except S3Error as exc:
            return {"error": [exc.s3_code, exc.message, exc.status, dict(exc.extra)]}
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidArgument(f"s3.authenticate_post: malformed form: {exc}") from None
        return {
            "access_key": access_key,
            "method": method,
            "grants": self._metacalls.reads.s3_access(access_key),
        }

    async def s3_authenticate_post_remote(self, fields: Mapping[str, str]) -> tuple[str, str, dict[str, str]]:
        """A secondary's S3 endpoint asks the primary to verify a form signed with a key it does
        not hold: (access key, method, the key's grants)."""
        assert self._cluster.primary is not None
        answer = await endpoints.S3_AUTHENTICATE_POST.call(
            self._cluster.primary, dict(fields), self.cfg.s3.region
        )
        if "error" in answer:
            code, message, status, extra = answer["error"]
            raise S3Error(str(code), str(message), int(status), **{str(k): str(v) for k, v in extra.items()})
        grants = answer.get("grants") or {}
        return str(answer["access_key"]), str(answer["method"]), {str(b): str(p) for b, p in grants.items()}

    async def s3_authenticate_remote(
        self, view: sigv4.RequestView, vhost_bucket: str | None
    ) -> tuple[sigv4.AuthContext, dict[str, str]]:
        """A secondary's S3 endpoint asks the primary to verify a key it does not hold; the
        answer carries the key's grants ``{bucket: perm}``."""
        assert self._cluster.primary is not None
        answer = await endpoints.S3_AUTHENTICATE.call(
            self._cluster.primary,
            [view.method, view.path, view.query, dict(view.headers)],
            vhost_bucket,
            self.cfg.s3.region,
            self.cfg.s3.max_clock_skew_s,
        )
        if "error" in answer:
            code, message, status, extra = answer["error"]
            raise S3Error(str(code), str(message), int(status), **{str(k): str(v) for k, v in extra.items()})
        grants = answer.get("grants") or {}
        return sigv4.AuthContext(**answer["auth"]), {str(b): str(p) for b, p in grants.items()}

    # -- scoped admin tokens --------------------------------------------------------------------
    async def admin_token_create(self, scope: str, name: str = "") -> dict[str, Any]:
        """A new scoped admin token; the token is returned once, metadata keeps its hash."""
        scope, name = tokens.check_new(scope, name)
        token_id, token = tokens.new_token()
        meta = self._metacalls.meta
        row = await self._metacalls.run(meta.admin_token_put, token_id, name, scope, tokens.digest(token))
        return {**row, "token": token}

    async def admin_token_check(self, token_id: str, digest: bytes) -> str | None:
        """The scope of the token ``token_id`` if ``digest`` is its hash, else None (on the primary)."""
        if not isinstance(token_id, str) or not isinstance(digest, bytes):
            raise InvalidArgument("admin.token_check: token_id must be a string and digest bytes")
        row = self._metacalls.reads.admin_token_get(token_id)
        if row is None:
            return None
        scope, stored = row
        return scope if tokens.same_digest(stored, digest) else None

    async def admin_token_scope(self, token: str) -> str | None:
        """The scope of a presented scoped token, on any daemon; None if it is none of ours.

        A secondary asks the primary and trusts a positive answer for :data:`TOKEN_CACHE_S`."""
        token_id = tokens.token_id(token)
        if token_id is None:
            return None
        digest = tokens.digest(token)
        if self._metacalls.store is not None:  # metadata is here
            return await self.admin_token_check(token_id, digest)
        now = time.monotonic()
        cached = self._token_cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        if self._cluster.primary is None:
            raise Unavailable("not connected to the metadata primary yet")
        scope = await endpoints.ADMIN_TOKEN_CHECK.call(self._cluster.primary, token_id, digest)
        if scope is None:
            self._token_cache.pop(digest, None)
            return None
        self._token_cache[digest] = (str(scope), now + TOKEN_CACHE_S)
        self._token_cache.move_to_end(digest)
        while len(self._token_cache) > _TOKEN_CACHE_MAX:
            self._token_cache.popitem(last=False)
        return str(scope)

    # -- admin forwarding -----------------------------------------------------------------------
    async def admin_forward(
        self, method: str, target: str, headers: list[list[str]], body: bytes, remote: str
    ) -> list[Any]:
        """Answer an admin API request a secondary forwarded (sys.admin_forward, on the primary)."""
        if self.admin_api is None:
            raise Unavailable("the metadata primary serves no admin API ([admin] enabled = false)")
        if not all(isinstance(h, list | tuple) and len(h) == 2 for h in headers):
            raise InvalidArgument("sys.admin_forward: headers must be [name, value] pairs")
        if not isinstance(body, bytes):
            # Not bytes(body): for an int that allocates that many zero bytes (bytes(2**32) is 4 GiB).
            raise InvalidArgument("sys.admin_forward: body must be bytes")
        resp = await self.admin_api.forwarded(
            str(method), str(target), [(str(k), str(v)) for k, v in headers], body, str(remote)
        )
        assert isinstance(resp.body, bytes)  # admin answers are small JSON documents, never streamed
        return [resp.status, [list(h) for h in resp.headers], resp.body]

    async def forward_admin(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, remote: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """A secondary's admin API has the primary answer a request backed by metadata."""
        if self._cluster.primary is None:
            raise Unavailable("not connected to the metadata primary yet")
        status, rheaders, rbody = await endpoints.SYS_ADMIN_FORWARD.call(
            self._cluster.primary, method, target, [list(h) for h in headers], body, remote
        )
        return int(status), [(str(k), str(v)) for k, v in rheaders], bytes(rbody)
