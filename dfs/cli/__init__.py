"""The ``dfs`` command: set-up, status, fsck, the cluster's nodes, S3 keys, certificates and
benchmarks.

Exit status is 0 on success and non-zero with one clear line on stderr
otherwise; commands that report take ``--json`` for scripts.

:mod:`dfs.cli.app` holds the command group and how a command ends; each other module holds one
group of commands and registers them on it; :mod:`dfs.cli.main` imports them all, and its
``main`` is the console script ``dfs``.
"""
