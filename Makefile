# The two commands of the README:
#   make run   - install everything needed, start a daemon on the embedded default and mount it (./mnt)
#   make test  - install everything needed and run the whole test suite (lint, types, all test tiers)
.PHONY: run test setup lint unit down bench

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/dfs up .

down:
	.venv/bin/dfs down .

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -m "slow or not slow" -p no:cacheprovider

unit: setup
	.venv/bin/pytest tests/unit

bench: setup
	.venv/bin/dfs bench ./mnt
