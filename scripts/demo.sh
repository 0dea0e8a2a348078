#!/usr/bin/env bash
# The main job: set everything up, then
#  1. two real agent processes joined by an emulated 50 km fibre: the PHYS link is provisioned over
#     NETCONF, keys are produced at the decoy-BB84 rate and compared at both ends, the fibre is cut
#     and the ETSI sdqkdn_link_down notification arrives;
#  2. the metro-ring lab (six nodes, one red span): agents and controller as processes, the example's
#     key sessions routed around the red span through trusted relays and provisioned as one NETCONF
#     transaction each; the summary and the controller's view are printed; the lab is taken down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
QSDN=.venv/bin/qsdn

echo "== two agents, one fibre"
"$QSDN" demo --seconds 5

echo "== the metro-ring lab"
LAB="$(mktemp -d)/metro"
trap '"$QSDN" lab down --dir "$LAB" >/dev/null 2>&1 || true' EXIT
"$QSDN" lab up examples/labs/metro-ring.yaml --dir "$LAB" --detach
"$QSDN" lab status --dir "$LAB"
"$QSDN" lab down --dir "$LAB"
trap - EXIT
echo "demo OK"
