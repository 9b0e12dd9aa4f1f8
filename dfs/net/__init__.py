"""Network adapters over the pure core: the RPC transport, metadata failover, TLS certificates.

Everything here touches sockets, TLS or trio; the formats and policies they carry live in
dfs.core.
"""
