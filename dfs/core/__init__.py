"""The pure core shared by the daemon, the mount and the CLI: protocols, formats and policies.

Bytes and time in, decisions and events out: no trio, sockets, TLS or pyfuse3, so every
module here runs and is tested without I/O (tests/unit/test_layering.py checks it, and that
nothing here imports the adapters built on top: dfs.net, dfs.client, dfs.cli, dfs.bench).
"""
