#!/usr/bin/env bash
# Install what qsdn needs on a Debian/Ubuntu machine: system packages (libyang 2, yanglint,
# iproute2, docker-compose for validating the compose file) and a virtualenv in .venv with qsdn
# and its development tools. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
dpkg -s libyang2-dev >/dev/null 2>&1 || need_apt+=(libyang2-dev)
command -v yanglint >/dev/null 2>&1 || need_apt+=(libyang-tools)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
[ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# Install (or refresh) qsdn in editable mode with the test tools; quiet unless something fails.
.venv/bin/pip install -q -e '.[dev]'
