#!/usr/bin/env bash
# Installs everything dfs needs on a fresh Debian/Ubuntu machine, idempotently:
# system packages (FUSE 3, build tools, the tools the tests drive) and a .venv
# with dfs and its test dependencies.  Re-running it is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: only its binaries; the tests start a throwaway server of their own (tests/pg.py).
# etcd-server, patroni: the failover tier starts its own etcd and Patroni (tests/patroni.py).
# prometheus (its promtool too): the dashboard and alert tests start their own server.
# chromium, chromium-driver: the console tests drive headless Chromium.
# restic: the S3 tests back up to dfs with it.
APT_PACKAGES=(python3 python3-venv python3-dev gcc pkg-config fuse3 libfuse3-dev
              rsync fio attr sqlite3 git tar util-linux procps e2fsprogs kmod
              iproute2 acl postgresql etcd-server patroni
              prometheus chromium chromium-driver restic curl)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -e /dev/fuse ]; then
  $SUDO modprobe fuse 2>/dev/null || true
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11 or newer is required ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

# Azurite, the Azure Blob emulator the cloud-tier tests start (tests/emulators.py), pinned by
# tests/azurite/package-lock.json.  npm writes node_modules/.package-lock.json last, so it is
# the stamp of a complete install.
azurite=tests/azurite
if [ ! -f "$azurite/node_modules/.package-lock.json" ] \
   || [ "$azurite/package-lock.json" -nt "$azurite/node_modules/.package-lock.json" ]; then
  if ! command -v npm >/dev/null; then
    echo "setup: installing nodejs npm" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  npm ci --prefix "$azurite" --no-audit --no-fund --loglevel=error >/dev/null
fi

# Byte code for the project's own modules.  The editable install leaves none, and where
# PYTHONDONTWRITEBYTECODE is set no import writes it later: every daemon, mount and CLI would
# start by compiling its modules from source (the daemon about 150 of them, over a second of CPU).
# Only sources changed since the last run are compiled again.
.venv/bin/python -m compileall -q -j 0 dfs daemon mount >/dev/null
