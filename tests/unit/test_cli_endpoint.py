"""Commands that visit every node (fsck, status) reach the others over TLS when the cluster uses
it, also when the command reached its own daemon over the plain unix socket."""

from __future__ import annotations

import ssl

from dfs.cli.connect import Endpoint


def test_peers_get_the_tls_context_even_from_a_unix_socket_endpoint() -> None:
    ctx = ssl.create_default_context()
    local = Endpoint("unix:/var/lib/dfs/rpc.sock", None, ctx)
    assert local.peer("10.0.0.2:7400") == Endpoint("10.0.0.2:7400", ctx, ctx)
    tcp = Endpoint("10.0.0.1:7400", ctx, ctx)
    assert tcp.peer("10.0.0.3:7400").ssl_context is ctx
    plain = Endpoint("unix:/var/lib/dfs/rpc.sock")
    assert plain.peer("10.0.0.2:7400") == Endpoint("10.0.0.2:7400", None, None)
