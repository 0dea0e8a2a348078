"""The SeQUeNCe side of ``benchmarks/entanglement.py``: a 3-node repeater chain in SeQUeNCe 0.8.5.

Runs in its own virtualenv (``.venv-sequence/``, made by ``benchmarks/entanglement.py``), never in
the project's, and prints one JSON object on stdout. It imports nothing from qsdn.

Scenario: quantum routers ``a`` - ``r`` - ``b``; each hop is a SeQUeNCe "meet in the middle"
quantum connection, i.e. a BSM node half-way with two single-photon detectors, Barrett-Kok
heralding (SeQUeNCe's default generation protocol), and classical channels whose delay is the
fibre's ``L / c``. A ``RequestApp`` on ``a`` reserves ``memories`` memories at ``a`` and ``b`` and
``2 * memories`` at ``r`` for end-to-end pairs with ``b`` over ``[start, start + emulated_s]``; the
network manager turns the reservation into rules (generation on each hop, swapping at ``r``;
purification only below the target fidelity, which is set under every fidelity that can occur so
that no purification runs). Every end-to-end pair that reaches ``a`` is counted and its memories
freed for the next one.

What SeQUeNCe 0.8.5 does not let a rule set, and how this script sets it (documented, no patching
of SeQUeNCe's files): the swapping success probability and fidelity "degradation" of the
``EntanglementSwappingA`` protocols that the rules create are that class's constructor defaults
(``success_prob=1, degradation=0.95``); the script replaces those defaults before the run.

Counters beside the pairs (for the comparison with qsdn's model): generation attempts per hop
(one Barrett-Kok attempt = both rounds), heralded successes, and the mean time an attempt takes
(the attempt period, protocol overheads included): from its start to the next attempt's start on
the same memory when it failed, to its herald when it succeeded, so that the expected time to a
herald is the expected number of attempts times this period.

    .venv-sequence/bin/python benchmarks/sequence_chain.py --emulated-s 1 --seed 1 [...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

PS_PER_S = 10**12
#: Speed of light in fibre, m/s (SeQUeNCe's SPEED_OF_LIGHT is 2e-4 m/ps, the same figure).
FIBRE_LIGHT_SPEED_M_S = 2.0e8


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emulated-s", type=float, default=1.0, help="virtual seconds of service measured")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hop-length-km", type=float, default=20.0, help="router to router (BSM half-way)")
    p.add_argument("--attenuation-db-per-km", type=float, default=0.2)
    p.add_argument("--memories", type=int, default=1, help="memories per hop end (r has twice as many)")
    p.add_argument("--raw-fidelity", type=float, default=0.95)
    p.add_argument("--memory-efficiency", type=float, default=0.9)
    p.add_argument("--coherence-time-s", type=float, default=1.0, help="SeQUeNCe: storage cut-off")
    p.add_argument("--detector-efficiency", type=float, default=0.9)
    p.add_argument("--swap-success", type=float, default=0.5)
    p.add_argument("--swap-degradation", type=float, default=0.95)
    p.add_argument("--target-fidelity", type=float, default=0.5, help="below every possible fidelity")
    p.add_argument("--setup-s", type=float, default=0.01, help="virtual time before the reservation starts")
    return p.parse_args(argv)


def topology_config(a: argparse.Namespace) -> dict[str, Any]:
    """The JSON configuration of SeQUeNCe's ``RouterNetTopo`` for the chain a - r - b."""
    hop_m = a.hop_length_km * 1000.0
    hop_delay_ps = round(hop_m / FIBRE_LIGHT_SPEED_M_S * PS_PER_S)
    memory = {
        "fidelity": a.raw_fidelity,
        "efficiency": a.memory_efficiency,
        "coherence_time": a.coherence_time_s,
    }
    detector = {"efficiency": a.detector_efficiency, "dark_count": 0}
    router = {"MemoryArray": memory}
    bsm = {"SingleAtomBSM": {"detectors": [dict(detector), dict(detector)]}}
    end_ps = round((a.setup_s + a.emulated_s) * PS_PER_S)
    return {
        "stop_time": end_ps + 1,
        "templates": {"router": router, "bsm": bsm},
        "nodes": [
            {
                "name": "a",
                "type": "QuantumRouter",
                "seed": a.seed * 10 + 1,
                "memo_size": a.memories,
                "template": "router",
            },
            {
                "name": "r",
                "type": "QuantumRouter",
                "seed": a.seed * 10 + 2,
                "memo_size": 2 * a.memories,
                "template": "router",
            },
            {
                "name": "b",
                "type": "QuantumRouter",
                "seed": a.seed * 10 + 3,
                "memo_size": a.memories,
                "template": "router",
            },
        ],
        "qconnections": [
            {
                "node1": n1,
                "node2": n2,
                "attenuation": a.attenuation_db_per_km / 1000.0,
                "distance": hop_m,
                "type": "meet_in_the_middle",
                "seed": a.seed * 10 + 4 + i,
                "template": "bsm",
            }
            for i, (n1, n2) in enumerate((("a", "r"), ("r", "b")))
        ],
        "cconnections": [
            {"node1": "a", "node2": "r", "delay": hop_delay_ps},
            {"node1": "r", "node2": "b", "delay": hop_delay_ps},
            {"node1": "a", "node2": "b", "delay": 2 * hop_delay_ps},
        ],
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    from sequence.app.request_app import RequestApp  # type: ignore[import-not-found]
    from sequence.constants import BARRET_KOK  # type: ignore[import-not-found]
    from sequence.entanglement_management.generation import EntanglementGenerationA  # type: ignore[import-not-found]
    from sequence.entanglement_management.generation.barret_kok import BarretKokA  # type: ignore[import-not-found]
    from sequence.entanglement_management.swapping import EntanglementSwappingA  # type: ignore[import-not-found]
    from sequence.topology.router_net_topo import RouterNetTopo  # type: ignore[import-not-found]

    # Swapping parameters the rules cannot pass (see the module docstring).
    EntanglementSwappingA.__init__.__defaults__ = (a.swap_success, a.swap_degradation)

    stats: dict[str, Any] = {"attempts": {}, "heralded": {}, "attempt_ps": [0, 0]}
    open_attempt: dict[str, int] = {}  # memory name -> start of its attempt still undecided

    def close_attempt(memory: str, now: int) -> None:
        started = open_attempt.pop(memory, None)
        if started is not None:
            stats["attempt_ps"][0] += now - started
            stats["attempt_ps"][1] += 1

    class CountedBarrettKok(BarretKokA):  # type: ignore[misc]
        """SeQUeNCe's Barrett-Kok protocol, counting attempts, heralds and the time attempts take.

        An attempt lasts from its round 1 to the next attempt's round 1 on the same memory if it
        failed (the resource manager's re-pairing included), to its herald if it succeeded.
        """

        def start(self) -> None:
            if self.ent_round == 0:  # round 1 of a new attempt (round 2 calls start again)
                now = self.owner.timeline.now()
                hop = "-".join(sorted((self.owner.name, self.remote_node_name)))
                stats["attempts"][hop] = stats["attempts"].get(hop, 0) + 1
                close_attempt(self.memory.name, now)
                open_attempt[self.memory.name] = now
            super().start()

        def _entanglement_succeed(self) -> None:
            hop = "-".join(sorted((self.owner.name, self.remote_node_name)))
            stats["heralded"][hop] = stats["heralded"].get(hop, 0) + 1
            close_attempt(self.memory.name, self.owner.timeline.now())
            super()._entanglement_succeed()

    EntanglementGenerationA.register(BARRET_KOK, CountedBarrettKok)

    fidelities: list[float] = []

    class CountingApp(RequestApp):  # type: ignore[misc]
        """A ``RequestApp`` that also keeps the fidelity SeQUeNCe assigns to each delivered pair."""

        def get_memory(self, info: Any) -> None:
            if (
                info.state == "ENTANGLED"
                and info.index in self.memo_to_reservation
                and info.remote_node == self.memo_to_reservation[info.index].responder
                and info.fidelity >= self.memo_to_reservation[info.index].fidelity
            ):
                fidelities.append(float(info.fidelity))
            super().get_memory(info)

    build_start = time.perf_counter()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(topology_config(a), fh)
        config_path = fh.name
    try:
        topo = RouterNetTopo(config_path)
    finally:
        os.unlink(config_path)
    tl = topo.get_timeline()
    routers = {n.name: n for n in topo.get_nodes_by_type(RouterNetTopo.QUANTUM_ROUTER)}
    initiator = CountingApp(routers["a"])
    CountingApp(routers["b"])
    start_ps = round(a.setup_s * PS_PER_S)
    end_ps = start_ps + round(a.emulated_s * PS_PER_S)
    tl.init()
    initiator.start("b", start_ps, end_ps, a.memories, a.target_fidelity)
    build_s = time.perf_counter() - build_start

    run_start = time.perf_counter()
    tl.run()
    wall_s = time.perf_counter() - run_start
    if not initiator.reservation_result:
        raise SystemExit("SeQUeNCe rejected the reservation")

    pairs = initiator.memory_counter
    total_attempts = sum(stats["attempts"].values())
    total_heralded = sum(stats["heralded"].values())
    attempt_sum, attempt_n = stats["attempt_ps"]
    return {
        "model": "SeQUeNCe",
        "version": importlib.metadata.version("sequence"),
        "python": sys.version.split()[0],
        "emulated_s": a.emulated_s,
        "wall_s": wall_s,
        "build_s": build_s,
        "events": tl.run_counter,
        "pairs": pairs,
        "rate_per_s": pairs / a.emulated_s,
        "mean_fidelity": math.fsum(fidelities) / len(fidelities) if fidelities else None,
        # both ends start (and herald) every attempt: halve the per-end counts
        "attempts_per_hop": {hop: n // 2 for hop, n in sorted(stats["attempts"].items())},
        "heralded_per_hop": {hop: n // 2 for hop, n in sorted(stats["heralded"].items())},
        "heralding_probability": total_heralded / total_attempts if total_attempts else None,
        "attempt_period_s": attempt_sum / attempt_n / PS_PER_S if attempt_n else None,
        "parameters": {
            k: getattr(a, k)
            for k in (
                "seed",
                "hop_length_km",
                "attenuation_db_per_km",
                "memories",
                "raw_fidelity",
                "memory_efficiency",
                "coherence_time_s",
                "detector_efficiency",
                "swap_success",
                "swap_degradation",
                "target_fidelity",
                "setup_s",
            )
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    result = run(parse_args(argv))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
