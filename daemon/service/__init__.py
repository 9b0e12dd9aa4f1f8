"""The daemon's RPC service: one node's stores served as RPC handlers, split by concern.

- :mod:`~daemon.service.service`: :class:`Service`, which builds the parts below and ties them
  together (the package exposes it);
- :mod:`~daemon.service.keys`: the cluster key and root S3 key files;
- :mod:`~daemon.service.threads`: the metadata thread and the chunk-I/O threads;
- :mod:`~daemon.service.meta_calls`: the metadata stores and the one way to change them
  (metadata thread plus change notices for mounts);
- :mod:`~daemon.service.handlers`: the handler tables, derived from dfs/core/endpoints.py;
- :mod:`~daemon.service.local`: the in-process caller the S3 shim and admin API use;
- :mod:`~daemon.service.chunk_handlers`, :mod:`~daemon.service.system_handlers`,
  :mod:`~daemon.service.metadata_handlers`, :mod:`~daemon.service.frontends`: the endpoints
  that answer more than a plain metadata call;
- :mod:`~daemon.service.cluster_runner`: the connection to the primary, the layout cache,
  replicated chunk I/O, repair, registration and the layout controller;
- :mod:`~daemon.service.upkeep`: fsck, garbage collection, the orphan sweep, session expiry.

Concurrency: metadata writes run in one thread, point reads inline on the event loop,
chunk I/O in a bounded thread pool, background loops as workers (daemon/workers.py) in
the node's nursery.
"""

from daemon.service.service import Service

__all__ = ["Service"]
