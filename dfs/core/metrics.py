"""Metric conventions shared by the daemon's and the mount's Prometheus exporters."""

from __future__ import annotations

# Operation latencies range from ~20 us (an inline metadata read, a cached FUSE getattr) to
# seconds (a 64 MiB chunk over a slow disk): one bucket set for every latency histogram.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
