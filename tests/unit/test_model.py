"""The controller's topology model: validation (errors name the object) and the networkx view."""

from __future__ import annotations

import math
import uuid

import pytest

from controller.model import Node, Reservation, Span, Topology
from qsdn.errors import ConfigError
from qsdn.physics.bb84 import DeviceParams

A = str(uuid.uuid5(uuid.NAMESPACE_DNS, "a.model.test"))
B = str(uuid.uuid5(uuid.NAMESPACE_DNS, "b.model.test"))
C = str(uuid.uuid5(uuid.NAMESPACE_DNS, "c.model.test"))


def nodes() -> list[Node]:
    return [Node(A, "Amsterdam"), Node(B, "Brussels", role="relay"), Node(C, "Cologne", trusted=False)]


def test_a_valid_topology() -> None:
    t = Topology.build(nodes(), [Span("s1", A, B, 50.0), Span("s2", B, C, 80.0, 1.5, bands=("c",))])
    assert set(t.nodes) == {A, B, C} and set(t.spans) == {"s1", "s2"}
    assert t.spans["s2"].bands == ("C",)
    assert t.spans["s1"].device == DeviceParams()
    assert t.spans["s1"].other(A) == B and t.spans["s1"].other(B) == A
    assert t.node_label(B) == "Brussels" and t.node_label("nope") == "nope"
    with pytest.raises(TypeError):
        t.nodes[A] = Node(A, "x")


def test_graph_is_cached_frozen_and_keyed_by_span() -> None:
    t = Topology.build(nodes(), [Span("s2", B, C, 80.0), Span("s1", A, B, 50.0), Span("s3", A, B, 60.0)])
    g = t.graph
    assert g is t.graph
    assert list(g.nodes) == sorted([A, B, C])
    assert sorted(g[A][B]) == ["s1", "s3"]
    assert g[B][C]["s2"]["span"] is t.spans["s2"]
    assert g.nodes[C]["node"].trusted is False
    with pytest.raises(Exception, match=r"[Ff]rozen"):
        g.add_node("x")


@pytest.mark.parametrize(
    ("make", "path", "words"),
    [
        (lambda: Node("not-a-uuid", "x"), "nodes/not-a-uuid/node_id", "uuid"),
        (lambda: Node(A, " "), f"nodes/{A}/name", "name"),
        (lambda: Node(A, "x", role="router"), f"nodes/{A}/role", "role"),
        (lambda: Span("s", A, A, 1.0), "spans/s/b", "self-loop"),
        (lambda: Span("", A, B, 1.0), "spans/", "span_id"),
        (lambda: Span("s", A, B, -1.0), "spans/s/length_km", "length_km"),
        (lambda: Span("s", A, B, math.inf), "spans/s/length_km", "length_km"),
        (lambda: Span("s", A, B, 1.0, extra_loss_db=math.nan), "spans/s/extra_loss_db", "extra_loss_db"),
        (lambda: Span("s", A, B, 1.0, bands=("L",)), "spans/s/bands", "unknown band"),
        (lambda: Span("s", A, B, 1.0, bands=("C", "c")), "spans/s/bands", "twice"),
        (lambda: Span("s", A, B, 1.0, bands=()), "spans/s/bands", "at least one"),
        (lambda: Reservation("sess", "s", -1.0), "reservations/sess/s/rate_bps", "rate_bps"),
        (lambda: Topology.build(nodes(), [Span("s", A, "ghost", 1.0)]), "spans/s/b", "unknown node 'ghost'"),
        (lambda: Topology.build([*nodes(), Node(A, "again")], []), f"nodes/{A}", "twice"),
        (lambda: Topology.build(nodes(), [Span("s", A, B, 1.0), Span("s", B, C, 1.0)]), "spans/s", "twice"),
        (lambda: Topology({"k": Node(A, "x")}, {}), "nodes/k", "keyed"),
        (lambda: Topology({n.node_id: n for n in nodes()}, {"k": Span("s", A, B, 1.0)}), "spans/k", "keyed"),
    ],
)
def test_invalid_inputs_are_named(make: object, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.first.path == path
    assert info.value.first.tag == "invalid-value"
    assert words in str(info.value)


def test_topology_build_accepts_any_iterables() -> None:
    t = Topology.build(iter(nodes()), (s for s in [Span("s1", A, B, 5.0)]))
    assert len(t.nodes) == 3 and len(t.spans) == 1
