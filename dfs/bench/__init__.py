"""The benchmarks behind ``dfs bench``, ``dfs s3 bench`` and ``dfs cluster bench``, and the process
harness they share with the tests.

:mod:`dfs.bench.mount` measures a dfs mount against a local directory, :mod:`dfs.bench.s3` the S3
endpoint under many clients, :mod:`dfs.bench.cluster` replication and repair on a throwaway local
cluster; :mod:`dfs.bench.harness` starts and watches the dfsd and mount.dfs processes (the tests'
fixtures are built on it too).  Benchmarks only print: none runs in the default test tier.
"""
