"""The cluster client: what the mount, the S3 shim, the CLI and the daemon's own loops use to
talk to daemons.

:mod:`dfs.client.cluster` holds :class:`~dfs.client.cluster.Client` (typed metadata calls, block
reads and writes, the cluster facts a client needs) and :func:`~dfs.client.cluster.connect`;
:mod:`dfs.client.chunks` holds :class:`~dfs.client.chunks.ChunkIO`, which puts and reads chunk
copies on the nodes that hold them.
"""
