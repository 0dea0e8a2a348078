"""Path computation: span classes, request graph, k shortest paths, disjoint backup, rejections.

The property tests compare :func:`compute_paths` with a brute-force enumeration of every simple path
on small random topologies (fixed seeds), so the ranking, the max-hops limit and the existence of a
node-disjoint pair are checked against the definitions rather than against the algorithms.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections.abc import Iterable, Sequence

import pytest

from controller.model import Node, Reservation, Span, Topology
from controller.pathcomp import (
    PENALTY_SCALE_BPS,
    Path,
    PathComputation,
    PathComputer,
    PathRejectedError,
    PathRequest,
    classify_span,
    compute_paths,
)
from qsdn.physics.bb84 import DeviceParams, secret_key_rate_bps
from qsdn.physics.loss import Band, SpanClass, fibre_loss_db, planning_class


def uid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.pathcomp.test"))


def topo(
    spans: Iterable[tuple[str, str, float] | tuple[str, str, float, str]],
    *,
    untrusted: Iterable[str] = (),
    extra_nodes: Iterable[str] = (),
) -> Topology:
    """Nodes named by letters, spans ``(a, b, length_km[, span_id])``; span ids default to ``a-b``."""
    spans = list(spans)
    names = sorted({n for sp in spans for n in sp[:2]} | set(extra_nodes))
    bad = set(untrusted)
    nodes = [Node(uid(n), n, trusted=n not in bad) for n in names]
    return Topology.build(
        nodes,
        [Span(sp[3] if len(sp) > 3 else f"{sp[0]}-{sp[1]}", uid(sp[0]), uid(sp[1]), sp[2]) for sp in spans],
    )


def names(t: Topology, path: Path) -> str:
    return "".join(t.nodes[n].name for n in path.nodes)


def req(src: str, dst: str, rate: float = 1000.0, **kw: object) -> PathRequest:
    return PathRequest(uid(src), uid(dst), rate, **kw)


def rejected(
    t: Topology, request: PathRequest, reservations: Sequence[Reservation] = ()
) -> PathRejectedError:
    with pytest.raises(PathRejectedError) as info:
        compute_paths(t, reservations, request)
    return info.value


# The five-node lab of the acceptance test: A and E joined by a red span; around it through relays.
#   A --- E  130 km (red)
#   A - B - C - E  40, 45, 50 km (green)
#   A - D - E      70, 80 km (orange)
FIVE = [
    ("A", "E", 130.0),
    ("A", "B", 40.0),
    ("B", "C", 45.0),
    ("C", "E", 50.0),
    ("A", "D", 70.0),
    ("D", "E", 80.0),
]


# ----------------------------------------------------------------------------------- span assessment


@pytest.mark.parametrize(
    ("length_km", "extra_db", "expected", "band"),
    [
        (0.0, 0.0, SpanClass.GREEN, Band.O),
        (60.0, 0.0, SpanClass.GREEN, Band.O),  # O 19.8 dB
        (61.0, 0.0, SpanClass.ORANGE, Band.C),  # O 20.13 dB, C 12.2 dB
        (99.0, 0.0, SpanClass.ORANGE, Band.C),  # C 19.8 dB
        (101.0, 0.0, SpanClass.RED, None),  # C 20.2 dB
        (0.0, 19.999, SpanClass.GREEN, Band.O),
        (0.0, 20.0, SpanClass.RED, None),  # exactly 20 dB is not below the budget, in either band
        (40.0, 7.0, SpanClass.ORANGE, Band.C),  # O 20.2, C 15.0: extra loss counts
        (50.0, 10.0, SpanClass.RED, None),  # C 20.0
    ],
)
def test_planning_classes_at_the_boundaries(
    length_km: float, extra_db: float, expected: SpanClass, band: Band | None
) -> None:
    a = classify_span(Span("s", uid("A"), uid("B"), length_km, extra_loss_db=extra_db))
    assert a.span_class is expected is planning_class(length_km, extra_db)
    assert a.band is band
    assert a.usable is (band is not None)
    assert a.loss_db_by_band[Band.O] == fibre_loss_db(length_km, Band.O, extra_db)
    assert a.loss_db_by_band[Band.C] == fibre_loss_db(length_km, Band.C, extra_db)
    if band is None:
        assert a.predicted_rate_bps == 0.0
        assert a.reason is not None and a.reason.startswith("red")
    else:
        assert a.predicted_rate_bps == secret_key_rate_bps(a.loss_db_by_band[band])
        assert a.predicted_rate_bps > 0
        assert a.reason is None


def test_rate_prediction_follows_the_physics_and_the_device() -> None:
    device = DeviceParams(eta_det=0.1, pulse_rate_hz=1e9)
    for length in (5.0, 30.0, 57.0, 70.0, 90.0):
        a = classify_span(Span("s", uid("A"), uid("B"), length, extra_loss_db=1.0, device=device))
        assert a.band is not None
        loss = fibre_loss_db(length, a.band, 1.0)
        assert a.predicted_rate_bps == pytest.approx(secret_key_rate_bps(loss, device), rel=1e-12)
    # A green span carries its key in the O band, though the C band would give more.
    green = classify_span(Span("s", uid("A"), uid("B"), 50.0))
    assert green.band is Band.O
    assert green.predicted_rate_bps < secret_key_rate_bps(fibre_loss_db(50.0, Band.C))


def test_band_availability() -> None:
    c_only = classify_span(Span("s", uid("A"), uid("B"), 30.0, bands=("c",)))
    assert c_only.span_class is SpanClass.GREEN and c_only.band is Band.C and c_only.usable
    o_only = classify_span(Span("s", uid("A"), uid("B"), 80.0, bands=("O",)))
    assert o_only.span_class is SpanClass.ORANGE and o_only.band is None and not o_only.usable
    assert o_only.reason is not None and "C band" in o_only.reason
    # A device that produces no key at this loss leaves the span unusable.
    poor = classify_span(Span("s", uid("A"), uid("B"), 95.0, device=DeviceParams(dark_count=1e-3)))
    assert poor.span_class is SpanClass.ORANGE and not poor.usable and poor.predicted_rate_bps == 0.0


def test_assessments_of_a_topology() -> None:
    t = topo(FIVE)
    assessments = PathComputer(t).assessments
    assert {sid: a.span_class for sid, a in assessments.items()} == {
        "A-E": SpanClass.RED,
        "A-B": SpanClass.GREEN,
        "B-C": SpanClass.GREEN,
        "C-E": SpanClass.GREEN,
        "A-D": SpanClass.ORANGE,
        "D-E": SpanClass.ORANGE,
    }


# ----------------------------------------------------------------------------------- paths


def test_five_nodes_path_goes_around_the_red_span_through_a_trusted_relay() -> None:
    t = topo(FIVE)
    result = compute_paths(t, [], req("A", "E", k=3))
    best = result.best
    assert names(t, best) == "ADE"  # two hops beat three
    assert best.relays == (uid("D"),)
    assert best.spans == ("A-D", "D-E")
    assert [(h.a, h.b) for h in best.hops] == [(uid("A"), uid("D")), (uid("D"), uid("E"))]
    assert all(h.span_class is SpanClass.ORANGE and h.band is Band.C for h in best.hops)
    assert best.bottleneck_bps == min(h.available_bps for h in best.hops)
    assert best.bottleneck_bps == secret_key_rate_bps(fibre_loss_db(80.0, Band.C))
    assert [names(t, p) for p in result.alternatives] == ["ABCE"]  # the only other route
    assert result.backup is None
    # D untrusted: the three-hop route through B and C.
    t2 = topo(FIVE, untrusted=["D"])
    assert names(t2, compute_paths(t2, [], req("A", "E")).best) == "ABCE"


def test_hop_details_and_reservations() -> None:
    t = topo([("A", "B", 20.0), ("B", "C", 30.0)])
    predicted = PathComputer(t).assessments["A-B"].predicted_rate_bps
    best = compute_paths(
        t, [Reservation("x", "A-B", 1000.0), Reservation("y", "A-B", 500.0)], req("A", "C")
    ).best
    hop = best.hops[0]
    assert (hop.span_id, hop.predicted_bps, hop.reserved_bps) == ("A-B", predicted, 1500.0)
    assert hop.available_bps == predicted - 1500.0
    assert best.penalty == sum(math.ceil(PENALTY_SCALE_BPS / h.available_bps) for h in best.hops)
    assert best.hop_count == 2 and best.rank_key == (2, best.penalty, best.nodes)


def test_admission_control_rejects_the_second_session_and_names_the_span() -> None:
    t = topo([("A", "B", 20.0), ("B", "C", 58.0)])
    capacity = PathComputer(t).assessments["B-C"].predicted_rate_bps  # about 5 kbit/s in the O band
    rate = 0.6 * capacity
    first = compute_paths(t, [], req("A", "C", rate))
    held = [Reservation("s1", span, rate) for span in first.best.spans]
    exc = rejected(t, req("A", "C", rate), held)
    assert exc.first.tag == "resource-denied" and exc.http_status == 409
    assert exc.constraint == "rate"
    info = exc.first.info
    assert info["span"] == "B-C"
    assert float(info["available_bps"]) == pytest.approx(capacity - rate, abs=1e-3)
    assert float(info["requested_bps"]) == pytest.approx(rate, abs=1e-3)
    assert "B-C" in str(exc) and "A to C" in str(exc)
    # A smaller second session still fits.
    assert compute_paths(t, held, req("A", "C", 0.3 * capacity)).best.spans == ("A-B", "B-C")
    # Reservations on spans the topology no longer has are ignored.
    assert compute_paths(t, [Reservation("old", "gone", 1e9)], req("A", "C", rate)).best


def test_rate_steers_around_a_busy_span() -> None:
    # Two two-hop routes; the one through B is better until a reservation eats its capacity.
    t = topo([("A", "B", 10.0), ("B", "D", 10.0), ("A", "C", 30.0), ("C", "D", 30.0)])
    assert names(t, compute_paths(t, [], req("A", "D")).best) == "ABD"
    cap = PathComputer(t).assessments["A-B"].predicted_rate_bps
    busy = [Reservation("x", "A-B", cap - 10_000.0)]
    assert names(t, compute_paths(t, busy, req("A", "D")).best) == "ACD"  # penalty: little rate left
    full = [Reservation("x", "A-B", cap - 500.0)]
    assert names(t, compute_paths(t, full, req("A", "D")).best) == "ACD"  # admission: too little left


def test_parallel_spans_collapse_to_the_best() -> None:
    t = topo([("A", "B", 20.0, "s1"), ("A", "B", 10.0, "s2"), ("B", "C", 10.0)])
    assert compute_paths(t, [], req("A", "C")).best.spans == ("s2", "B-C")
    cap = PathComputer(t).assessments["s2"].predicted_rate_bps
    assert compute_paths(t, [Reservation("x", "s2", cap)], req("A", "C")).best.spans == ("s1", "B-C")


def test_untrusted_relay_is_rejected() -> None:
    t = topo([("A", "B", 20.0), ("B", "C", 20.0)], untrusted=["B"])
    exc = rejected(t, req("A", "C"))
    assert exc.constraint == "untrusted-relay"
    assert exc.first.info["node"] == uid("B") and exc.first.info["reason"] == "untrusted"
    assert "B" in str(exc)
    # An untrusted node can still be an end.
    assert names(t, compute_paths(t, [], req("A", "B")).best) == "AB"
    # request.trusted restricts relays further.
    t2 = topo([("A", "B", 20.0), ("B", "C", 20.0)])
    exc2 = rejected(t2, req("A", "C", trusted=frozenset({uid("A")})))
    assert exc2.constraint == "untrusted-relay" and exc2.first.info["reason"] == "not-in-trusted-set"
    assert names(t2, compute_paths(t2, [], req("A", "C", trusted=frozenset({uid("B")}))).best) == "ABC"


def test_avoid() -> None:
    t = topo(FIVE)
    assert names(t, compute_paths(t, [], req("A", "E", avoid=frozenset({uid("D")}))).best) == "ABCE"
    exc = rejected(t, req("A", "E", avoid=frozenset({uid("D"), uid("C")})))
    assert exc.constraint == "avoid" and exc.first.info["node"] == uid("D")
    bad = rejected(t, req("A", "E", avoid=frozenset({uid("A")})))
    assert bad.first.tag == "invalid-value" and bad.http_status == 400
    assert bad.first.info["field"] == "avoid" and bad.first.info["node"] == uid("A")


def test_max_hops() -> None:
    t = topo(FIVE, untrusted=["D"])
    exc = rejected(t, req("A", "E", max_hops=2))
    assert exc.constraint == "max-hops"
    assert exc.first.info == {"constraint": "max-hops", "max_hops": "2", "min_hops": "3"}
    assert names(t, compute_paths(t, [], req("A", "E", max_hops=3)).best) == "ABCE"
    # The limit also bounds the alternatives.
    t2 = topo(FIVE)
    assert compute_paths(t2, [], req("A", "E", max_hops=2)).alternatives == []
    assert len(compute_paths(t2, [], req("A", "E", max_hops=3)).alternatives) == 1


def test_red_span_no_path_and_rate_diagnoses() -> None:
    t = topo([("A", "B", 20.0), ("B", "C", 130.0)], extra_nodes=["Z"])
    exc = rejected(t, req("A", "C"))
    assert exc.constraint == "red-span"
    assert exc.first.info["span"] == "B-C" and exc.first.info["span_class"] == "red"
    assert exc.first.info["loss_db"] == "26"
    assert "B-C" in str(exc) and "relay" in str(exc)
    nopath = rejected(t, req("A", "Z"))
    assert nopath.constraint == "no-path" and nopath.first.info == {"constraint": "no-path"}
    # An orange span offered only in the O band.
    t2 = Topology.build(
        [Node(uid("A"), "A"), Node(uid("B"), "B")], [Span("o", uid("A"), uid("B"), 80.0, bands=("O",))]
    )
    assert rejected(t2, req("A", "B")).constraint == "unusable-span"
    # More than any span can give.
    exc3 = rejected(topo([("A", "B", 20.0)]), req("A", "B", 1e9))
    assert exc3.constraint == "rate" and exc3.first.info["span"] == "A-B"


def test_the_diagnosis_follows_the_shortest_route() -> None:
    # Two routes: A-B-C needs the untrusted B, A-D-E-C crosses a red span. Constraints are added in
    # order (usable spans, then avoid, then trust), so the answer names B, not the red span.
    t = topo([("A", "B", 20.0), ("B", "C", 20.0), ("A", "D", 20.0), ("D", "E", 20.0), ("E", "C", 130.0)])
    t = Topology.build(
        [*(Node(n.node_id, n.name, trusted=n.name != "B") for n in t.nodes.values())], t.spans.values()
    )
    assert rejected(t, req("A", "C")).constraint == "untrusted-relay"


def test_k_alternatives_are_distinct_and_ranked() -> None:
    t = grid(4, 4)
    result = compute_paths(t, [], req("n0_0", "n3_3", k=6))
    paths = [result.best, *result.alternatives]
    assert len(paths) == 6
    assert len({p.nodes for p in paths}) == 6
    keys = [p.rank_key for p in paths]
    assert keys == sorted(keys)
    assert all(p.hop_count == 6 for p in paths)  # a 4x4 grid has 20 shortest routes corner to corner
    for p in paths:
        assert len(set(p.nodes)) == len(p.nodes)
        assert p.relays == p.nodes[1:-1]


def test_disjoint_backup() -> None:
    t = grid(3, 4)
    result = compute_paths(t, [], req("n0_0", "n2_3", disjoint_backup=True))
    assert result.backup is not None
    assert not set(result.best.relays) & set(result.backup.relays)
    assert result.best.nodes[0] == result.backup.nodes[0] and result.best.nodes[-1] == result.backup.nodes[-1]
    assert result.best.rank_key <= result.backup.rank_key
    # Without the flag no backup is computed.
    assert compute_paths(t, [], req("n0_0", "n2_3")).backup is None


def test_disjoint_backup_with_a_direct_span() -> None:
    t = topo([("A", "B", 10.0), ("A", "C", 10.0), ("C", "B", 10.0)])
    result = compute_paths(t, [], req("A", "B", disjoint_backup=True))
    assert names(t, result.best) == "AB" and result.backup is not None and names(t, result.backup) == "ACB"
    only = topo([("A", "B", 10.0)])
    exc = rejected(only, req("A", "B", disjoint_backup=True))
    assert exc.constraint == "disjoint-backup" and exc.first.info["span"] == "A-B"


def test_no_disjoint_pair_names_the_cut_node() -> None:
    # Two diamonds joined at C: every route from A to E crosses C.
    spans = [("A", "B", 10.0), ("A", "D", 10.0), ("B", "C", 10.0), ("D", "C", 10.0)]
    spans += [("C", "F", 10.0), ("C", "G", 10.0), ("F", "E", 10.0), ("G", "E", 10.0)]
    t = topo(spans)
    exc = rejected(t, req("A", "E", disjoint_backup=True))
    assert exc.constraint == "disjoint-backup" and exc.first.info["node"] == uid("C")
    assert "C" in str(exc)
    # A dead end: the single neighbour is the cut node.
    t2 = topo([*spans, ("E", "H", 10.0)])
    exc2 = rejected(t2, req("A", "H", disjoint_backup=True))
    assert exc2.first.info["node"] == uid("E")


def test_trap_topology_uses_the_disjoint_pair() -> None:
    # The best path S-A-B-T is a trap: no path avoids both A and B, yet S-A-D-T and S-C-B-T are disjoint.
    spans = [("S", "A", 5.0), ("A", "B", 5.0), ("B", "T", 5.0), ("S", "C", 30.0), ("C", "B", 30.0)]
    spans += [("A", "D", 30.0), ("D", "T", 30.0)]
    t = topo(spans)
    plain = compute_paths(t, [], req("S", "T"))
    assert names(t, plain.best) == "SABT"
    result = compute_paths(t, [], req("S", "T", disjoint_backup=True))
    assert result.backup is not None
    assert {names(t, result.best), names(t, result.backup)} == {"SADT", "SCBT"}
    assert "SABT" in [names(t, p) for p in result.alternatives]
    # Under a hop limit the pair still fits; one hop less and no pair does.
    assert compute_paths(t, [], req("S", "T", disjoint_backup=True, max_hops=3)).backup is not None
    exc = rejected(t, req("S", "T", disjoint_backup=True, max_hops=2))
    assert exc.constraint == "max-hops"


def test_disjoint_pair_beyond_max_hops() -> None:
    # A - B - Z directly (2 hops); the only other route is 4 hops long.
    t = topo(
        [
            ("A", "B", 10.0),
            ("B", "Z", 10.0),
            ("A", "C", 10.0),
            ("C", "D", 10.0),
            ("D", "E", 10.0),
            ("E", "Z", 10.0),
        ]
    )
    exc = rejected(t, req("A", "Z", disjoint_backup=True, max_hops=3))
    assert exc.constraint == "disjoint-backup" and exc.first.info["reason"] == "max-hops"
    assert compute_paths(t, [], req("A", "Z", disjoint_backup=True, max_hops=4)).backup is not None


# ----------------------------------------------------------------------------------- determinism


def test_same_answer_whatever_the_insertion_order() -> None:
    base = random_topology(random.Random(7), 40, 90)
    nodes, spans = list(base.nodes.values()), list(base.spans.values())
    rng = random.Random(3)
    ids = sorted(base.nodes)
    requests = [
        PathRequest(a, b, 500.0, k=5, disjoint_backup=bool(i % 2))
        for i, (a, b) in enumerate(rng.sample(ids, 2) for _ in range(25))
    ]
    reservations = [Reservation(f"r{i}", s.span_id, 2000.0) for i, s in enumerate(spans[::3])]

    def answers(t: Topology, res: list[Reservation]) -> list[PathComputation | str]:
        out: list[PathComputation | str] = []
        for r in requests:
            try:
                out.append(compute_paths(t, res, r))
            except PathRejectedError as exc:
                out.append(f"{exc.first.info} {exc}")
        return out

    expected = answers(base, reservations)
    assert any(isinstance(a, PathComputation) and a.backup for a in expected)
    for _ in range(3):
        rng.shuffle(nodes)
        rng.shuffle(spans)
        rng.shuffle(reservations)
        assert answers(Topology.build(nodes, spans), reservations) == expected


# ----------------------------------------------------------------------------------- validation


def test_request_validation() -> None:
    a, b = uid("A"), uid("B")
    for kwargs, field in [
        ({"rate_bps": 0.0}, "rate_bps"),
        ({"rate_bps": math.nan}, "rate_bps"),
        ({"rate_bps": -5.0}, "rate_bps"),
        ({"k": 0}, "k"),
        ({"k": 1000}, "k"),
        ({"max_hops": 0}, "max_hops"),
        ({"dst": a}, "dst"),
    ]:
        args: dict[str, object] = {"src": a, "dst": b, "rate_bps": 1.0, **kwargs}
        with pytest.raises(PathRejectedError) as info:
            PathRequest(**args)
        assert info.value.first.tag == "invalid-value" and info.value.first.info["field"] == field
        assert info.value.first.path == field
    t = topo([("A", "B", 10.0)])
    for request, field in [
        (PathRequest(uid("X"), b, 1.0), "src"),
        (PathRequest(a, uid("X"), 1.0), "dst"),
        (PathRequest(a, b, 1.0, avoid=frozenset({uid("X")})), "avoid"),
        (PathRequest(a, b, 1.0, trusted=frozenset({uid("X")})), "trusted"),
    ]:
        exc = rejected(t, request)
        assert exc.first.tag == "invalid-value" and exc.first.info["field"] == field
    assert PathRequest(a, b, 1, avoid={uid("C")}).avoid == frozenset({uid("C")})


# ----------------------------------------------------------------------------------- brute force


def grid(rows: int, cols: int) -> Topology:
    spans = []
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols:
                spans.append((f"n{r}_{c}", f"n{r}_{c + 1}", 20.0))
            if r + 1 < rows:
                spans.append((f"n{r}_{c}", f"n{r + 1}_{c}", 20.0))
    return topo(spans)


def random_topology(rng: random.Random, n: int, m: int) -> Topology:
    nodes = [Node(uid(f"r{i}"), f"r{i}", trusted=rng.random() > 0.15) for i in range(n)]
    spans = []
    for k in range(m):
        a, b = rng.sample(range(n), 2)
        length = rng.choice([5.0, 15.0, 25.0, 40.0, 55.0, 65.0, 80.0, 95.0, 110.0])
        spans.append(Span(f"s{k}", nodes[a].node_id, nodes[b].node_id, length + rng.choice([0.0, 0.3, 1.1])))
    return Topology.build(nodes, spans)


def brute_force_paths(
    t: Topology, reservations: Sequence[Reservation], r: PathRequest
) -> list[tuple[int, int, tuple[str, ...]]]:
    """Every simple path of the request graph, with its ranking key (hops, penalty, nodes)."""
    assessments = PathComputer(t).assessments
    held: dict[str, float] = {}
    for res in reservations:
        held[res.span_id] = held.get(res.span_id, 0.0) + res.rate_bps
    best_hop: dict[tuple[str, str], int] = {}
    for sid, span in t.spans.items():
        a = assessments[sid]
        avail = a.predicted_rate_bps - held.get(sid, 0.0)
        if not a.usable or avail < r.rate_bps:
            continue
        pen = math.ceil(PENALTY_SCALE_BPS / max(avail, 1.0))
        for key in ((span.a, span.b), (span.b, span.a)):
            best_hop[key] = min(best_hop.get(key, pen), pen)
    relay = {
        nid
        for nid, node in t.nodes.items()
        if node.trusted and nid not in r.avoid and (r.trusted is None or nid in r.trusted)
    }
    out = []

    def walk(path: list[str], pen: int) -> None:
        u = path[-1]
        if u == r.dst:
            out.append((len(path) - 1, pen, tuple(path)))
            return
        if u != r.src and u not in relay:
            return
        for v in t.nodes:
            if (u, v) in best_hop and v not in path:
                walk([*path, v], pen + best_hop[(u, v)])

    walk([r.src], 0)
    if r.max_hops is not None:
        out = [p for p in out if p[0] <= r.max_hops]
    return sorted(out)


def disjoint(p: Sequence[str], q: Sequence[str]) -> bool:
    return p != q and not set(p[1:-1]) & set(q[1:-1])


def check_backup(
    t: Topology,
    reservations: Sequence[Reservation],
    r: PathRequest,
    expected: list[tuple[int, int, tuple[str, ...]]],
) -> str:
    """Check the backup of ``r`` against the brute-force paths; say which case it was."""
    pairs = [(p, q) for p, q in itertools.combinations(expected, 2) if disjoint(p[2], q[2])]
    if not pairs:
        exc = rejected(t, r, reservations)
        assert exc.constraint == "disjoint-backup"
        if "node" in exc.first.info:  # the named node is on every route
            assert all(exc.first.info["node"] in p[2] for p in expected)
        return "no-pair"
    both = compute_paths(t, reservations, r)
    assert both.backup is not None
    assert disjoint(both.best.nodes, both.backup.nodes)
    assert both.best.rank_key <= both.backup.rank_key
    backups = [p for p in expected if disjoint(p[2], expected[0][2])]
    if backups:  # the best path stays, with the best path disjoint from it
        assert both.best.nodes == expected[0][2]
        assert (both.backup.hop_count, both.backup.penalty, both.backup.nodes) == backups[0]
        return "pairs"
    # A trap: the pair of least total cost (Suurballe).
    cheapest = min((p[0] + q[0], p[1] + q[1]) for p, q in pairs)
    total = (both.best.hop_count + both.backup.hop_count, both.best.penalty + both.backup.penalty)
    assert total == cheapest
    return "trap"


@pytest.mark.parametrize("seed", range(12))
def test_against_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    t = random_topology(rng, 9, rng.randint(14, 22))
    spans = sorted(t.spans)
    assessments = PathComputer(t).assessments
    reservations = [
        Reservation(f"x{i}", sid, rng.uniform(0.2, 0.95) * assessments[sid].predicted_rate_bps)
        for i, sid in enumerate(rng.sample(spans, len(spans) // 3))
    ]
    ids = sorted(t.nodes)
    checked = {"paths": 0, "pairs": 0, "trap": 0, "no-pair": 0, "rejected": 0}
    for _ in range(30):
        src, dst = rng.sample(ids, 2)
        k = rng.randint(1, 6)
        max_hops = rng.choice([None, None, 2, 3, 4])
        avoid = frozenset(rng.sample([i for i in ids if i not in (src, dst)], rng.choice([0, 0, 1])))
        rate = rng.choice([100.0, 2000.0, 20_000.0])
        r = PathRequest(src, dst, rate, max_hops=max_hops, k=k, avoid=avoid)
        expected = brute_force_paths(t, reservations, r)
        try:
            result = compute_paths(t, reservations, r)
        except PathRejectedError as exc:
            assert not expected, exc
            assert exc.first.tag == "resource-denied"
            assert exc.constraint in {
                "no-path",
                "red-span",
                "unusable-span",
                "avoid",
                "untrusted-relay",
                "rate",
                "max-hops",
            }
            checked["rejected"] += 1
            continue
        got = [result.best, *result.alternatives]
        assert [(p.hop_count, p.penalty, p.nodes) for p in got] == expected[:k]
        checked["paths"] += 1
        # The disjoint pair: exists exactly when brute force finds one (without a hop limit).
        if max_hops is not None:
            continue
        outcome = check_backup(
            t, reservations, PathRequest(src, dst, rate, k=k, avoid=avoid, disjoint_backup=True), expected
        )
        checked[outcome] += 1
    assert checked["paths"] > 3, checked


def test_brute_force_traps_and_cuts() -> None:
    """Random cases built around the classic trap (the best path has no disjoint partner, a pair exists)."""
    seen = {"pairs": 0, "trap": 0, "no-pair": 0}
    for seed in range(40):
        rng = random.Random(1000 + seed)
        lengths = [5.0, 10.0, 20.0, 30.0, 45.0, 70.0]
        spans = [("S", "A", 5.0), ("A", "B", 5.0), ("B", "T", 5.0)]
        spans += [(a, b, rng.choice(lengths)) for a, b in (("S", "C"), ("C", "B"), ("A", "D"), ("D", "T"))]
        for k in range(rng.randint(0, 3)):
            a, b = rng.sample("SABTCDEF", 2)
            spans.append((a, b, rng.choice(lengths), f"x{k}"))
        t = topo(spans, untrusted=rng.sample("ABCDEF", rng.choice([0, 0, 1])))
        for src, dst in [("S", "T"), *(rng.sample("SABTCD", 2) for _ in range(2))]:
            expected = brute_force_paths(t, [], PathRequest(uid(src), uid(dst), 100.0))
            if expected:
                r = PathRequest(uid(src), uid(dst), 100.0, disjoint_backup=True)
                seen[check_backup(t, [], r, expected)] += 1
    assert min(seen.values()) >= 3, seen


def test_against_networkx_on_a_larger_topology() -> None:
    """150 nodes: the k costs equal Yen's in networkx, and a backup exists iff networkx finds two disjoint paths."""
    import networkx as nx

    rng = random.Random(11)
    t = random_topology(rng, 150, 330)
    assessments = PathComputer(t).assessments
    reservations = [Reservation(f"x{i}", sid, 3000.0) for i, sid in enumerate(sorted(t.spans)[::4])]
    held: dict[str, float] = {}
    for res in reservations:
        held[res.span_id] = held.get(res.span_id, 0.0) + res.rate_bps
    rate = 1500.0
    g = nx.Graph()
    for sid, span in t.spans.items():
        avail = assessments[sid].predicted_rate_bps - held.get(sid, 0.0)
        if assessments[sid].usable and avail >= rate:
            pen = math.ceil(PENALTY_SCALE_BPS / max(avail, 1.0))
            if not g.has_edge(span.a, span.b) or g[span.a][span.b]["pen"] > pen:
                g.add_edge(span.a, span.b, pen=pen, weight=(len(t.nodes) * 10**9 + 1) + pen)
    untrusted = {nid for nid, node in t.nodes.items() if not node.trusted}
    ids = sorted(g.nodes)
    compared = 0
    for _ in range(30):
        src, dst = rng.sample(ids, 2)
        view = nx.subgraph_view(g, filter_node=lambda v, s=src, d=dst: v in (s, d) or v not in untrusted)
        try:
            theirs = list(itertools.islice(nx.shortest_simple_paths(view, src, dst, weight="weight"), 5))
        except nx.NetworkXNoPath:
            theirs = []
        pair = len(list(nx.node_disjoint_paths(view, src, dst, cutoff=2))) if theirs else 0
        r = PathRequest(src, dst, rate, k=5, disjoint_backup=True)
        try:
            result = compute_paths(t, reservations, r)
        except PathRejectedError as exc:
            assert exc.constraint == ("disjoint-backup" if theirs else exc.constraint)
            assert not theirs or pair < 2
            continue
        ours = sorted((p.hop_count, p.penalty) for p in [result.best, *result.alternatives])
        assert pair == 2
        yen = [(len(p) - 1, sum(g[a][b]["pen"] for a, b in itertools.pairwise(p))) for p in theirs]
        if result.best.rank_key == min(p.rank_key for p in [result.best, *result.alternatives]):
            assert ours == yen
        compared += 1
    assert compared >= 10


def test_landmarks_and_graph_reuse_do_not_change_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions admitted one by one on 120 nodes: the same answers with and without the landmark bound,
    and whether the request graph comes from an earlier request (cache) or is built afresh."""
    import controller.pathcomp as pathcomp

    rng = random.Random(5)
    base = random_topology(rng, 120, 300)
    ids = sorted(base.nodes)
    requests = [
        PathRequest(a, b, rng.choice([1000.0, 5000.0]), k=4, disjoint_backup=bool(rng.random() < 0.5))
        for a, b in (rng.sample(ids, 2) for _ in range(40))
    ]

    def admit_all() -> list[object]:
        t = Topology.build(base.nodes.values(), base.spans.values())
        held: list[Reservation] = []
        out: list[object] = []
        for i, r in enumerate(requests):
            try:
                result = compute_paths(t, held, r)
            except PathRejectedError as exc:
                out.append(exc.first.info)
                continue
            out.append(result)
            held += [Reservation(f"s{i}", span, r.rate_bps) for span in result.best.spans]
        return out

    with_everything = admit_all()
    assert sum(isinstance(a, PathComputation) for a in with_everything) >= 15
    monkeypatch.setattr(pathcomp, "_GRAPH_CACHE", 0)
    assert admit_all() == with_everything
    monkeypatch.setattr(pathcomp, "_LANDMARK_MIN_NODES", 10**9)
    assert admit_all() == with_everything


def test_reservation_order_never_changes_the_sums() -> None:
    t = topo([("A", "B", 20.0), ("B", "C", 20.0)])
    rates = [0.1, 0.2, 0.3, 1e4, 3e-3, 7.7]
    assert sum(rates) != sum(reversed(rates))  # float addition is not associative
    answers = set()
    for order in itertools.permutations(rates):
        held = [Reservation(f"s{i}", "A-B", r) for i, r in enumerate(order)]
        answers.add(compute_paths(t, held, req("A", "C")).best.hops[0].reserved_bps)
    assert answers == {math.fsum(rates)}
