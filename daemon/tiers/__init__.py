"""Cloud tiers on the daemon side: object-store backends (backends.py) for the tier
definitions of dfs/core/tiers.py."""
