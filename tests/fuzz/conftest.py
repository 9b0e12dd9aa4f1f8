"""Fixtures of the bad-input fuzz tier (tests/fuzz/fuzzkit.py has them and the helpers)."""

from tests.fuzz.fuzzkit import fuzzd as fuzzd
from tests.fuzz.fuzzkit import seed as seed
