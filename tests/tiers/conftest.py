"""The cloud-tier tests' fixtures: real emulators (tests/emulators.py)."""

from tests.emulators import cloud_tier, emulators, make_tier

__all__ = ["cloud_tier", "emulators", "make_tier"]
