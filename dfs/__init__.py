"""dfs: a FUSE-mountable POSIX distributed filesystem."""

__version__ = "0.1.0"
