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
from typing import Any, Protocol

from daemon.http import Response
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.keys import new_s3_key
from daemon.service.meta_calls import MetaCalls
from dfs.core import endpoints, sigv4
from dfs.core.config import Config
from dfs.core.errors import InvalidArgument, S3Error, Unavailable


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

    # -- S3 keys --------------------------------------------------------------------------------
    def s3_secret(self, access_key: str) -> str | None:
        """The secret of an S3 key made with `dfs s3 key create`, on the primary (which holds
        them); a secondary has none and asks the primary to verify (s3_authenticate_remote)."""
        reader = self._metacalls.reader
        if reader is not None:
            return reader.s3_key_get(access_key)
        return None

    async def s3_key_create(self, description: str = "") -> dict[str, str]:
        """A new S3 key pair; the secret is returned once and never logged."""
        if not isinstance(description, str) or len(description) > 256:
            raise InvalidArgument("key description must be a string of at most 256 characters")
        access_key, secret_key = new_s3_key()
        await self._metacalls.run(self._metacalls.meta.s3_key_put, access_key, secret_key, description)
        return {"access_key": access_key, "secret_key": secret_key, "description": description}

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
        return {"auth": dataclasses.asdict(ctx)}

    async def s3_authenticate_remote(
        self, view: sigv4.RequestView, vhost_bucket: str | None
    ) -> sigv4.AuthContext:
        """A secondary's S3 endpoint asks the primary to verify a key it does not hold."""
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
        return sigv4.AuthContext(**answer["auth"])

    # -- admin forwarding -----------------------------------------------------------------------
    async def admin_forward(
        self, method: str, target: str, headers: list[list[str]], body: bytes, remote: str
    ) -> list[Any]:
        """Answer an admin API request a secondary forwarded (sys.admin_forward, on the primary)."""
        if self.admin_api is None:
            raise Unavailable("the metadata primary serves no admin API ([admin] enabled = false)")
        if not all(isinstance(h, list | tuple) and len(h) == 2 for h in headers):
            raise InvalidArgument("sys.admin_forward: headers must be [name, value] pairs")
        resp = await self.admin_api.forwarded(
            str(method), str(target), [(str(k), str(v)) for k, v in headers], bytes(body), str(remote)
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
