#!/usr/bin/env bash
# The main job: set everything up, then
#  1. two real agent processes joined by an emulated 50 km fibre: the PHYS link is provisioned over
#     NETCONF, keys are produced at the decoy-BB84 rate and compared at both ends, the fibre is cut
#     and the ETSI sdqkdn_link_down notification arrives;
#  2. the metro-ring lab (six nodes, one red span): agents and controller as processes, the example's
#     key sessions routed around the red span through trusted relays and provisioned as one NETCONF
#     transaction each; the summary and the controller's view are printed; then a live ETSI GS QKD 014
#     key exchange: the Amsterdam SAE gets keys for the Utrecht SAE from its KME, the key travels
#     through four trusted relays (one-time-padded hop by hop) and the Utrecht SAE fetches the same
#     keys by key_ID from its own KME; the lab is taken down;
#  3. the repeater-chain lab (two endpoints, one repeater, two BSM stations, one quantum medium): the
#     controller provisions an entanglement key session on every node in one transaction, the chain
#     delivers entangled pairs in real time, the endpoints turn them into BBM92 key (the repeater never
#     sees it), and an ETSI GS QKD 014 exchange hands the same keys to both SAEs; the lab is taken down.
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
sleep 2  # let every PHYS link store some key
"$QSDN" lab keys ams-utr --dir "$LAB"
"$QSDN" lab down --dir "$LAB"

echo "== the repeater-chain lab"
LAB="$(mktemp -d)/chain"
"$QSDN" lab up examples/labs/repeater-chain.yaml --dir "$LAB" --detach
"$QSDN" lab status --dir "$LAB"
# BBM92 key accumulates block by block at the pair rate: wait for the first blocks.
for attempt in $(seq 1 30); do
  if "$QSDN" lab keys alice-bob --dir "$LAB"; then break; fi
  if [ "$attempt" -eq 30 ]; then echo "no BBM92 key after 60 s" >&2; exit 1; fi
  sleep 2
done
"$QSDN" lab down --dir "$LAB"
trap - EXIT
echo "demo OK"
