"""Entanglement path computation and mixed key paths (controller/entanglement.py).

Predictions are checked against the formulas of SYSTEM.md section 4 written out by hand here (Barrett-Kok
heralding, Shchukin's two-segment waiting time, the 3/2 rule, Werner composition, DEJMPS), not against
the module's own helpers where that can be avoided.
"""

from __future__ import annotations

import itertools
import math
import uuid

import pytest

from controller.entanglement import (
    KEY_FIDELITY,
    EntanglementRequest,
    MemoryReservation,
    compute_entanglement_plan,
    elementary_links,
)
from controller.model import MemoryParams, Node, Span, Topology
from controller.pathcomp import PathRejectedError, Reservation, classify_span
from controller.service import node_from_record
from controller.store import NodeRecord
from qsdn.errors import ConfigError
from qsdn.physics.bb84 import binary_entropy
from qsdn.physics.entanglement import (
    dejmps,
    expected_max_geometric,
    expected_max_geometric_unequal,
    geometric_storage_decay,
    wait_all_decay,
    werner,
)

C_KM_S = 2e5  # light in fibre, km/s
DET = 0.9  # default station detector efficiency


def uid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.entanglement.test"))


def ends(memory: MemoryParams | None = None, *names: str) -> list[Node]:
    return [Node(uid(n), n, memory=memory or MemoryParams(memories=8)) for n in names]


def repeaters(memory: MemoryParams | None = None, *names: str) -> list[Node]:
    return [Node(uid(n), n, trusted=False, role="repeater", memory=memory or MemoryParams()) for n in names]


def span(a: str, b: str, km: float) -> Span:
    return Span(f"{a}-{b}".lower(), uid(a), uid(b), km)


def chain(names: str, km: float, memory: MemoryParams, end_memory: MemoryParams | None = None) -> Topology:
    """A chain of single-letter nodes, the first and last endpoints, the rest repeaters."""
    nodes = ends(end_memory or memory, names[0], names[-1]) + repeaters(memory, *names[1:-1])
    return Topology.build(nodes, [span(a, b, km) for a, b in itertools.pairwise(names)])


def p_direct(km: float) -> float:
    """Barrett-Kok with the station co-located: eta_A eta_B / 2, 0.2 dB/km in the C band."""
    return 0.5 * (10 ** (-0.2 * km / 10) * DET) * DET


def werner_w(f: float) -> float:
    return (4 * f - 1) / 3


def fid(w: float) -> float:
    return 0.25 + 0.75 * w


def names(t: Topology, ids: tuple[str, ...]) -> str:
    return "".join(t.nodes[n].name for n in ids)


def req(src: str, dst: str, **kw: object) -> EntanglementRequest:
    return EntanglementRequest(uid(src), uid(dst), **kw)  # type: ignore[arg-type]


PERFECT = MemoryParams(memories=4, coherence_s=math.inf, initial_fidelity=0.98)


# --------------------------------------------------------------------------------------- predictions


def test_three_node_chain_matches_the_hand_computation() -> None:
    t = chain("ARC", 50.0, PERFECT)
    plan = compute_entanglement_plan(t, req("A", "C"))
    seg = plan.segments[0]
    p = p_direct(50.0)
    attempt_s = 2 * 50.0 / C_KM_S  # the photon crosses the span, the herald comes back
    expected_attempts = (3 - 2 * p) / (p * (2 - p))  # Shchukin et al. 2019, a = 1
    assert seg.links[0].p == pytest.approx(p)
    assert seg.links[0].attempt_s == pytest.approx(attempt_s)
    assert seg.swap_order == "asap" and seg.rounds == 0 and seg.protocol == "none"
    assert plan.pair_rate_hz == pytest.approx(1 / (expected_attempts * attempt_s), rel=1e-9)
    assert plan.fidelity == pytest.approx(fid(werner_w(0.98) ** 2), rel=1e-12)
    q = 2 * (1 - plan.fidelity) / 3
    assert plan.key_rate_bps == pytest.approx(plan.pair_rate_hz * (1 - 2 * binary_entropy(q)), rel=1e-9)
    assert names(t, plan.nodes) == "ARC" and names(t, seg.repeaters) == "R"
    assert dict(plan.memories) == {uid("A"): 1, uid("R"): 2, uid("C"): 1}


def test_finite_memories_decay_as_wait_all_decay() -> None:
    mem = MemoryParams(memories=4, coherence_s=0.05, initial_fidelity=0.99)
    plan = compute_entanglement_plan(chain("ARC", 25.0, mem), req("A", "C"))
    p, attempt_s = p_direct(25.0), 2 * 25.0 / C_KM_S
    w = werner_w(0.99) ** 2 * wait_all_decay(p, 2, attempt_s, 0.05)
    assert plan.fidelity == pytest.approx(fid(w), rel=1e-9)
    assert plan.fidelity < fid(werner_w(0.99) ** 2)


def test_bsm_station_in_the_middle_halves_the_attempt() -> None:
    nodes = [
        *ends(PERFECT, "A", "B"),
        Node(uid("S"), "S", trusted=False, role="bsm-station"),
    ]
    t = Topology.build(nodes, [span("A", "S", 30.0), span("S", "B", 30.0)])
    link = elementary_links(t)[tuple(sorted((uid("A"), uid("B"))))]  # type: ignore[index]
    eta = 10 ** (-0.2 * 30.0 / 10) * DET
    assert link.station == uid("S")
    assert link.p == pytest.approx(0.5 * eta * eta)
    assert link.attempt_s == pytest.approx(60.0 / C_KM_S)  # L / c with the station in the middle
    plan = compute_entanglement_plan(t, req("A", "B"))
    seg = plan.segments[0]
    assert seg.swap_order == "none" and names(t, seg.stations) == "S"
    assert plan.pair_rate_hz == pytest.approx(link.p / link.attempt_s)
    assert plan.fidelity == pytest.approx(0.98)


def test_five_node_chain_nested_when_swaps_fail_asap_when_they_do_not() -> None:
    p, attempt_s = p_direct(40.0), 2 * 40.0 / C_KM_S
    two = (3 - 2 * p) / (p * (2 - p))
    # a = 1/2: nested pays a^2 per chain, asap a^3 (restart on any failed swap)
    lossy = MemoryParams(memories=4, coherence_s=math.inf, swap_success=0.5)
    plan = compute_entanglement_plan(chain("AXYZC", 40.0, lossy), req("A", "C"))
    assert plan.segments[0].swap_order == "nested"
    nested_attempts = 1.5 * (two / 0.5) / 0.5  # level 1 exact, level 2 by the 3/2 rule
    assert plan.pair_rate_hz == pytest.approx(1 / (nested_attempts * attempt_s), rel=1e-9)
    asap_attempts = expected_max_geometric(p, 4) / 0.5**3
    assert plan.pair_rate_hz > 1 / (asap_attempts * attempt_s)
    # a = 1: all links in parallel beats doubling (E[max of 4] < (3/2)^2 / p)
    plan = compute_entanglement_plan(chain("AXYZC", 40.0, PERFECT), req("A", "C"))
    assert plan.segments[0].swap_order == "asap"
    assert plan.pair_rate_hz == pytest.approx(1 / (expected_max_geometric(p, 4) * attempt_s), rel=1e-9)
    assert plan.fidelity == pytest.approx(fid(werner_w(0.98) ** 4), rel=1e-12)
    assert names(plan_topo := chain("AXYZC", 40.0, PERFECT), plan.segments[0].repeaters) == "XYZ"
    assert plan_topo.nodes[uid("X")].trusted is False


def test_purification_is_chosen_when_the_target_needs_it() -> None:
    t = chain("ARC", 50.0, PERFECT)
    plain = compute_entanglement_plan(t, req("A", "C"))
    assert plain.fidelity is not None and plain.fidelity < 0.97
    plan = compute_entanglement_plan(t, req("A", "C", target_fidelity=0.97))
    seg = plan.segments[0]
    assert seg.rounds == 1 and seg.protocol == "dejmps"
    # by hand: one DEJMPS round on two copies (perfect memories: no decay while the first waits)
    p_ok, out = dejmps(werner(plain.fidelity), werner(plain.fidelity))
    assert plan.fidelity == pytest.approx(out.fidelity, rel=1e-12) and plan.fidelity >= 0.97
    assert plan.pair_rate_hz == pytest.approx(plain.pair_rate_hz * p_ok / 2, rel=1e-12)
    assert seg.unpurified_fidelity == pytest.approx(plain.fidelity)
    assert dict(plan.memories) == {uid("A"): 2, uid("R"): 2, uid("C"): 2}  # 1 + rounds at each end


def test_an_impossible_target_is_rejected_with_the_best_and_the_limiting_link() -> None:
    t = chain("ARC", 50.0, PERFECT)
    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "C", target_fidelity=0.999, max_rounds=1))
    e = exc.value
    assert e.constraint == "fidelity" and e.first.tag == "resource-denied"
    assert "at most 1 purification round(s)" in e.first.message
    assert "the best achievable is F = 0.9" in e.first.message
    assert "limited by link" in e.first.message and e.first.info["span"] in ("a-r", "r-c")
    best = float(e.first.info["best_fidelity"])
    reachable = compute_entanglement_plan(t, req("A", "C", target_fidelity=best - 1e-6, max_rounds=1))
    assert reachable.fidelity == pytest.approx(best, abs=1e-6)


def test_short_memories_are_named_as_the_limit() -> None:
    poor = MemoryParams(memories=4, coherence_s=1e-4, initial_fidelity=0.999)
    good = MemoryParams(memories=4, coherence_s=10.0, initial_fidelity=0.999)
    t = chain("ARC", 50.0, poor, end_memory=good)
    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "C", target_fidelity=0.9, max_rounds=0))
    assert exc.value.first.info["limit"] == "memory" and exc.value.first.info["node"] == uid("R")
    assert "storage in the memory of R" in exc.value.first.message


def test_key_needs_the_bbm92_threshold() -> None:
    noisy = MemoryParams(memories=2, coherence_s=math.inf, initial_fidelity=0.88)
    t = chain("AXYZC", 20.0, noisy)  # w = ((4 * 0.88 - 1)/3)^4: F ~ 0.63 before purification
    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "C", service="key", max_rounds=0))
    assert exc.value.constraint == "key-fidelity"
    assert f"needs F > {KEY_FIDELITY}" in exc.value.first.message


def test_min_rate_rejection_names_the_slowest_link() -> None:
    t = Topology.build(
        ends(PERFECT, "A", "C") + repeaters(PERFECT, "R"), [span("A", "R", 20.0), span("R", "C", 90.0)]
    )
    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "C", min_pair_rate_hz=1e6))
    assert exc.value.constraint == "rate" and exc.value.first.info["span"] == "r-c"


def test_same_request_same_plan_whatever_the_insertion_order() -> None:
    # a diamond: A-X-C and A-Y-C are identical; the smaller node ids win, on every build order
    nodes = ends(PERFECT, "A", "C") + repeaters(PERFECT, "X", "Y")
    spans = [span("A", "X", 30.0), span("X", "C", 30.0), span("A", "Y", 30.0), span("Y", "C", 30.0)]
    plans = {
        compute_entanglement_plan(Topology.build(ns, ss), req("A", "C", target_fidelity=0.95))
        for ns, ss in ((nodes, spans), (nodes[::-1], spans[::-1]))
    }
    assert len(plans) == 1
    (plan,) = plans
    assert plan.segments[0].repeaters == (min(uid("X"), uid("Y")),)


# ------------------------------------------------------------------------------------ mixed networks


def mixed_topology() -> Topology:
    """A and B (endpoints with memories); T a trusted relay; R a repeater. A-T-B and A-R-B, 40 km spans."""
    nodes = [
        *ends(PERFECT, "A", "B"),
        Node(uid("T"), "T", trusted=True, role="relay"),
        *repeaters(PERFECT, "R"),
    ]
    spans = [span("A", "T", 40.0), span("T", "B", 40.0), span("A", "R", 40.0), span("R", "B", 40.0)]
    return Topology.build(nodes, spans)


def test_mixed_network_prefers_relays_for_rate_and_repeaters_when_asked() -> None:
    t = mixed_topology()
    plan = compute_entanglement_plan(t, req("A", "B", service="key"))
    qkd_rate = classify_span(t.spans["a-t"]).predicted_rate_bps
    assert [s.technology for s in plan.segments] == ["qkd", "qkd"]
    assert names(t, plan.nodes) == "ATB" and names(t, plan.key_visible_to) == "ATB"
    assert plan.key_rate_bps == pytest.approx(qkd_rate) and plan.pair_rate_hz is None

    private = compute_entanglement_plan(t, req("A", "B", service="key", max_trusted_nodes=0))
    assert [s.technology for s in private.segments] == ["entanglement"]
    assert names(t, private.nodes) == "ARB" and names(t, private.key_visible_to) == "AB"
    assert uid("R") not in private.key_visible_to and private.trusted_relays == ()
    assert 0 < private.key_rate_bps < plan.key_rate_bps

    # what the relays have left after other sessions counts (SYSTEM.md section 4, trusted-relay rule)
    busy = [Reservation("other", "a-t", qkd_rate - 1.0)]
    detour = compute_entanglement_plan(t, req("A", "B", service="key"), reservations=busy)
    assert names(t, detour.nodes) == "ARB"


def test_a_mixed_path_takes_the_minimum_over_segments_and_reports_who_sees_the_key() -> None:
    # A -(QKD)- T -(repeater R)- B, T is a trusted relay with memories; no other route
    nodes = [
        *ends(PERFECT, "A", "B"),
        Node(uid("T"), "T", trusted=True, role="relay", memory=PERFECT),
        *repeaters(PERFECT, "R"),
    ]
    t = Topology.build(nodes, [span("A", "T", 20.0), span("T", "R", 60.0), span("R", "B", 60.0)])
    plan = compute_entanglement_plan(t, req("A", "B", service="key"))
    assert [s.technology for s in plan.segments] == ["qkd", "entanglement"]
    assert names(t, plan.nodes) == "ATRB"
    assert names(t, plan.key_visible_to) == "ATB" and names(t, plan.trusted_relays) == "T"
    assert plan.key_rate_bps == min(s.key_rate_bps for s in plan.segments) == plan.segments[1].key_rate_bps
    assert plan.segments[1].nodes == (uid("T"), uid("R"), uid("B"))

    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "B", service="key", max_trusted_nodes=0))
    assert exc.value.constraint == "max-trusted"
    assert exc.value.first.info["min_trusted_nodes"] == "1"


def test_untrusted_relays_never_carry_key() -> None:
    nodes = [*ends(PERFECT, "A", "B"), Node(uid("T"), "T", trusted=False, role="relay")]
    t = Topology.build(nodes, [span("A", "T", 20.0), span("T", "B", 20.0)])
    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "B", service="key"))
    assert exc.value.constraint == "no-path"


# ------------------------------------------------------------------------------------------- memories


def test_memory_reservations_are_shared_and_exhaust() -> None:
    t = chain("ARC", 50.0, MemoryParams(memories=4, coherence_s=math.inf))
    first = compute_entanglement_plan(t, req("A", "C"))
    held = first.reservations("s1")
    assert {(r.node_id, r.memories) for r in held} == {(uid("A"), 1), (uid("R"), 2), (uid("C"), 1)}
    second = compute_entanglement_plan(t, req("A", "C"), memory_reservations=held)
    assert second.segments[0].repeaters == (uid("R"),)
    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "C"), memory_reservations=held + second.reservations("s2"))
    e = exc.value
    assert e.constraint == "memory" and e.first.info["node"] == uid("R")
    assert "needs 2 at R, which has 0 of 4 free" in e.first.message


def test_purification_needs_memories_at_the_ends() -> None:
    t = chain(
        "ARC", 50.0, MemoryParams(memories=1, coherence_s=math.inf), end_memory=MemoryParams(memories=1)
    )
    # 2 at the repeater: nothing fits with 1 memory there
    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "C"))
    assert exc.value.constraint == "memory" and exc.value.first.info["node"] == uid("R")
    t = chain("ARC", 50.0, PERFECT, end_memory=MemoryParams(memories=1, coherence_s=math.inf))
    with pytest.raises(PathRejectedError) as exc:
        compute_entanglement_plan(t, req("A", "C", target_fidelity=0.97))
    assert exc.value.constraint == "memory" and exc.value.first.info["node"] in (uid("A"), uid("C"))


# ------------------------------------------------------------------------------- model and requests


def test_repeaters_and_stations_are_never_trusted() -> None:
    with pytest.raises(ConfigError, match="never holds key"):
        Node(uid("R"), "R", role="repeater")
    with pytest.raises(ConfigError, match="has no quantum memories"):
        Node(uid("S"), "S", trusted=False, role="bsm-station", memory=MemoryParams())
    with pytest.raises(ConfigError, match="swap_success"):
        Node(uid("R"), "R", trusted=False, role="repeater", memory=MemoryParams(swap_success=0))
    node = node_from_record(NodeRecord(uid("R"), "R", "h", role="repeater", entanglement={"memories": 6}))
    assert node.trusted is False and node.memory == MemoryParams(memories=6)
    node = node_from_record(NodeRecord(uid("E"), "E", "h"))
    assert node.memory is None and node.role == "endpoint"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"target_fidelity": 1.5}, "target_fidelity"),
        ({"max_rounds": 9}, "max_rounds"),
        ({"max_trusted_nodes": -1}, "max_trusted_nodes"),
        ({"service": "teleport"}, "service"),
        ({"k": 0}, "k"),
    ],
)
def test_malformed_requests_are_invalid(kw: dict[str, object], field: str) -> None:
    with pytest.raises(PathRejectedError) as exc:
        req("A", "C", **kw)
    assert exc.value.first.tag == "invalid-value" and exc.value.first.info["field"] == field


def test_reservation_must_be_non_negative() -> None:
    with pytest.raises(PathRejectedError):
        MemoryReservation("s", uid("R"), -1)


# ---------------------------------------------------------------------------------- physics additions


def test_expected_max_of_unequal_geometrics() -> None:
    assert expected_max_geometric_unequal([0.1] * 3) == pytest.approx(expected_max_geometric(0.1, 3))
    p1, p2 = 0.2, 0.05
    closed = 1 / p1 + 1 / p2 - 1 / (1 - (1 - p1) * (1 - p2))
    assert expected_max_geometric_unequal([p1, p2]) == pytest.approx(closed)
    assert expected_max_geometric_unequal([1.0, 1.0]) == 1.0


def test_geometric_storage_decay_is_the_generating_function() -> None:
    p, t, big_t = 0.3, 1e-3, 0.01
    z = math.exp(-2 * t / big_t)
    series = math.fsum(p * (1 - p) ** (k - 1) * z**k for k in range(1, 400))
    assert geometric_storage_decay(p, t, big_t) == pytest.approx(series)
    assert geometric_storage_decay(p, t, math.inf) == 1.0
