#!/usr/bin/env bash
# The main job: set everything up, then run two real agent processes joined by an emulated 50 km
# fibre, provision the PHYS link over NETCONF, produce and compare keys, cut the fibre and receive
# the ETSI link-down notification.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/qsdn demo "$@"
