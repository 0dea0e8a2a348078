"""Per-node configuration of entanglement and mixed key sessions, validated with the agent's schema."""

from __future__ import annotations

import json
import uuid

import pytest
from lxml import etree

from controller.entanglement import EntanglementPlan, EntanglementRequest, compute_entanglement_plan
from controller.entanglement_provision import (
    ENT_NS,
    EntanglementSpec,
    elementary_link_id,
    key_link_id,
    plan_entanglement_session,
    plan_from_json,
    plan_to_json,
    segment_session_id,
    swap_rounds,
)
from controller.model import MemoryParams, Node, Span, Topology
from controller.provision import NODE_NS, derived_id, phys_link_id
from qsdn.errors import QsdnError
from qsdn.yang import SchemaContext, agent_schema

NS = {"n": NODE_NS, "e": ENT_NS}
SID = "5e55e55e-0000-4000-8000-0000000000e1"


def uid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.ent-provision.test"))


A, R, B, T, D = (uid(n) for n in "ARBTD")


@pytest.fixture(scope="module")
def schema() -> SchemaContext:
    return agent_schema()


def chain_topology(*, station: bool = False) -> Topology:
    """A - R - B, 40 km spans (or A - D - R with a BSM station D in the middle of the first hop)."""
    nodes = [
        Node(A, "A", memory=MemoryParams(memories=4, coherence_s=10.0)),
        Node(B, "B", memory=MemoryParams(memories=4, coherence_s=10.0)),
        Node(R, "R", trusted=False, role="repeater", memory=MemoryParams(memories=2, coherence_s=5.0)),
    ]
    if station:
        nodes.append(Node(D, "D", trusted=False, role="bsm-station"))
        spans = [Span("a-d", A, D, 20.0), Span("d-r", D, R, 20.0), Span("r-b", R, B, 40.0)]
    else:
        spans = [Span("a-r", A, R, 40.0), Span("r-b", R, B, 40.0)]
    return Topology.build(nodes, spans)


def mixed_topology() -> Topology:
    """A -(QKD, 20 km)- T -(repeater R)- B; A has no memories, so A-T can only be a QKD hop."""
    return Topology.build(
        [
            Node(A, "A"),
            Node(T, "T", role="relay", memory=MemoryParams(memories=4, coherence_s=10.0)),
            Node(R, "R", trusted=False, role="repeater", memory=MemoryParams(memories=2, coherence_s=10.0)),
            Node(B, "B", memory=MemoryParams(memories=4, coherence_s=10.0)),
        ],
        [Span("a-t", A, T, 20.0), Span("t-r", T, R, 40.0), Span("r-b", R, B, 40.0)],
    )


def x(xml: str) -> etree._Element:
    return etree.fromstring(xml)


def texts(el: etree._Element, path: str) -> list[str]:
    found = el.xpath(path, namespaces=NS)
    return [str(t) for t in found] if isinstance(found, list) else []


def removal_parses(schema: SchemaContext, xml: str) -> None:
    """A removal is an edit (list keys with nc:operation), not a complete configuration: it must parse."""
    with schema.parsed(xml, validate=False) as tree:
        assert tree is not None


def key_bearing(el: etree._Element) -> list[str]:
    """Everything key-bearing in a node edit: 015 links and applications, key_qkdl_id."""
    return texts(el, "//n:qkd_link/n:qkdl_id/text() | //n:qkd_app/n:app_id/text() | //e:key_qkdl_id/text()")


def test_swap_rounds_of_the_nested_protocol() -> None:
    assert swap_rounds(2) == [1]
    assert swap_rounds(4) == [1, 2, 1]
    assert swap_rounds(8) == [1, 2, 1, 3, 1, 2, 1]


def test_entanglement_chain_config_per_node_is_valid_and_consistent(schema: SchemaContext) -> None:
    topo = chain_topology()
    plan = compute_entanglement_plan(
        topo, EntanglementRequest(A, B, service="entanglement", target_fidelity=0.9, min_pair_rate_hz=1.0)
    )
    spec = EntanglementSpec(SID, "entanglement", target_fidelity=0.9, min_pair_rate_hz=1.0)
    sp = plan_entanglement_session(spec, plan, topo, {})
    assert sorted(sp.edits) == sorted((A, R, B))
    for n in (A, R, B):
        schema.canonical_config(sp.edits[n])  # libyang: types, musts, leafrefs of qsdn-entanglement
        removal_parses(schema, sp.removals[n])
    a, r, b = (x(sp.edits[n]) for n in (A, R, B))
    l0, l1 = (elementary_link_id(SID, 0, 0, j) for j in (0, 1))
    # the same link_id at both ends of each hop, pointing at each other
    assert texts(a, "//e:elementary_link/e:link_id/text()") == [l0]
    assert sorted(texts(r, "//e:elementary_link/e:link_id/text()")) == sorted([l0, l1])
    assert texts(b, "//e:elementary_link/e:link_id/text()") == [l1]
    assert texts(a, "//e:elementary_link/e:remote_qkdn_id/text()") == [R]
    assert texts(r, f"//e:elementary_link[e:link_id='{l1}']/e:remote_qkdn_id/text()") == [B]
    assert texts(a, "//e:elementary_link/e:station_qkdn_id/text()") == []  # co-located station
    # one session everywhere, roles and hops from each node's point of view
    es = segment_session_id(SID, 0, 0)
    for el, role, prev, nxt in ((a, "end", [], [R]), (r, "repeater", [A], [B]), (b, "end", [R], [])):
        assert texts(el, "//e:session/e:session_id/text()") == [es]
        assert texts(el, "//e:session/e:role/text()") == [role]
        assert texts(el, "//e:session/e:path/text()") == [A, R, B]
        assert texts(el, "//e:session/e:prev_hop/text()") == prev
        assert texts(el, "//e:session/e:next_hop/text()") == nxt
        assert texts(el, "//e:session/e:application/text()") == ["pairs"]
        assert float(texts(el, "//e:session/e:target_fidelity/text()")[0]) == 0.9
        assert float(texts(el, "//e:session/e:cutoff_time_s/text()")[0]) == 5.0  # R's coherence time
        assert texts(el, "//e:session/e:swap_order/text()") == [plan.segments[0].swap_order]
        # memories written because no node announced its own
        assert texts(el, "//e:memories/e:count/text()") == ["2" if el is r else "4"]
        assert key_bearing(el) == []  # entanglement service: nothing key-bearing anywhere
    # nodes that carry their own memories keep them
    sp2 = plan_entanglement_session(spec, plan, topo, {}, nodes_with_memories=frozenset((A, R, B)))
    assert all(not texts(x(sp2.edits[n]), "//e:memories") for n in (A, R, B))
    # the removal takes away the session's entries, not the node's memories
    rm = x(sp.removals[R])
    assert sorted(texts(rm, "//e:elementary_link/e:link_id/text()")) == sorted([l0, l1])
    assert texts(rm, "//e:session/e:session_id/text()") == [es]
    assert not texts(rm, "//e:memories")
    # deterministic: the same plan gives the same configuration; a new generation new ids
    assert plan_entanglement_session(spec, plan, topo, {}).edits == sp.edits
    sp3 = plan_entanglement_session(spec, plan, topo, {}, generation=1)
    assert es not in sp3.edits[A]


def test_bbm92_key_over_one_repeater_segment(schema: SchemaContext) -> None:
    topo = chain_topology(station=True)
    plan = compute_entanglement_plan(topo, EntanglementRequest(A, B, service="key", max_trusted_nodes=0))
    assert plan.key_visible_to == (A, B)
    spec = EntanglementSpec(SID, "key", "sae-a", "sae-b", 10)
    sp = plan_entanglement_session(spec, plan, topo, {})
    assert sorted(sp.edits) == sorted((A, R, B))  # the station gets nothing
    for n in (A, R, B):
        schema.canonical_config(sp.edits[n])
        removal_parses(schema, sp.removals[n])
    a, r, b = (x(sp.edits[n]) for n in (A, R, B))
    kl = key_link_id(SID, 0, 0)
    client = derived_id("client", SID, "0")
    for el, me, other in ((a, A, B), (b, B, A)):
        # the key link: VIRT between the two ends, no relay hops, backing the CLIENT app
        assert texts(el, "//n:qkd_link/n:qkdl_id/text()") == [kl]
        assert texts(el, "//n:qkd_link/n:qkdl_type/text()") == ["etsi-qkdn-types:VIRT"]
        assert texts(el, "//n:qkd_link/n:qkdl_local/n:qkdn_id/text()") == [me]
        assert texts(el, "//n:qkd_link/n:qkdl_remote/n:qkdn_id/text()") == [other]
        assert texts(el, "//n:virt_prev_hop | //n:virt_next_hop") == []
        assert texts(el, "//n:qkd_app/n:app_id/text()") == [client]
        assert texts(el, "//n:qkd_app/n:app_type/text()") == ["etsi-qkdn-types:CLIENT"]
        assert texts(el, "//n:qkd_app/n:backing_qkdl_id/text()") == [kl]
        assert texts(el, "//n:qkd_app/n:server_app_id/text()") == ["sae-a"]
        assert texts(el, "//n:qkd_app/n:client_app_id/text()") == ["sae-b"]
        assert texts(el, "//e:session/e:key_qkdl_id/text()") == [kl]
        assert texts(el, "//e:session/e:application/text()") == ["bbm92-key"]
        assert float(texts(el, "//e:session/e:target_fidelity/text()")[0]) > 0.835
    # the elementary link A-R is heralded at the station D
    assert texts(a, "//e:elementary_link/e:station_qkdn_id/text()") == [D]
    assert texts(r, f"//e:elementary_link[e:remote_qkdn_id='{A}']/e:station_qkdn_id/text()") == [D]
    # the repeater holds nothing key-bearing
    assert key_bearing(r) == []
    assert texts(r, "//e:session/e:role/text()") == ["repeater"]
    # removal: the key link and the apps go at the ends
    rm = x(sp.removals[A])
    assert texts(rm, "//n:qkd_link/n:qkdl_id/text()") == [kl]
    assert texts(rm, "//n:qkd_app/n:app_id/text()") == [client]
    assert sp.new_links == frozenset()


def test_mixed_key_plan_relays_over_a_phys_hop_and_a_repeater_segment(schema: SchemaContext) -> None:
    topo = mixed_topology()
    plan = compute_entanglement_plan(topo, EntanglementRequest(A, B, service="key"))
    assert [s.technology for s in plan.segments] == ["qkd", "entanglement"]
    assert plan.key_visible_to == (A, T, B) and plan.trusted_relays == (T,)
    spec = EntanglementSpec(SID, "key", "sae-a", "sae-b", 10)
    sp = plan_entanglement_session(spec, plan, topo, {(A, "a-t"): 1, (T, "a-t"): 1})
    assert sorted(sp.edits) == sorted((A, T, R, B))
    for n in (A, T, R, B):
        schema.canonical_config(sp.edits[n])
        removal_parses(schema, sp.removals[n])
    a, t, r, b = (x(sp.edits[n]) for n in (A, T, R, B))
    ph, kl, virt = phys_link_id("a-t"), key_link_id(SID, 0, 1), derived_id("virt", SID, "0")
    # A: PHYS link to T, the end-to-end VIRT link, its CLIENT app; no entanglement
    assert sorted(texts(a, "//n:qkd_link/n:qkdl_id/text()")) == sorted([ph, virt])
    assert texts(a, f"//n:qkd_link[n:qkdl_id='{virt}']/n:virt_next_hop/text()") == [T]
    assert texts(a, "//e:entanglement") == []
    # T: the trusted relay: PHYS to A, key link to B, one INTERNAL app on each, the relayed VIRT link
    assert sorted(texts(t, "//n:qkd_link/n:qkdl_id/text()")) == sorted([ph, kl, virt])
    assert texts(t, f"//n:qkd_link[n:qkdl_id='{virt}']/n:virt_prev_hop/text()") == [A]
    assert texts(t, f"//n:qkd_link[n:qkdl_id='{virt}']/n:virt_next_hop/text()") == [B]
    assert sorted(texts(t, "//n:qkd_app/n:backing_qkdl_id/text()")) == sorted([ph, kl])
    assert set(texts(t, "//n:qkd_app/n:app_type/text()")) == {"etsi-qkdn-types:INTERNAL"}
    assert texts(t, "//e:session/e:key_qkdl_id/text()") == [kl]
    assert texts(t, "//e:session/e:role/text()") == ["end"]
    # B: the far end of the VIRT link and of the key link
    assert sorted(texts(b, "//n:qkd_link/n:qkdl_id/text()")) == sorted([kl, virt])
    assert texts(b, "//n:qkd_app/n:backing_qkdl_id/text()") == [virt]
    assert texts(b, f"//n:qkd_link[n:qkdl_id='{kl}']/n:qkdl_applications/text()") == []
    # R: the repeater sees no key
    assert key_bearing(r) == []
    assert sp.new_links == frozenset({ph})
    # key visible to exactly the key-holding nodes of the plan
    holders = {n for n in sp.edits if texts(x(sp.edits[n]), "//n:qkd_app")}
    assert holders == set(plan.key_visible_to)


def test_plan_round_trips_through_json_and_refuses_a_mismatch() -> None:
    topo = mixed_topology()
    plan = compute_entanglement_plan(topo, EntanglementRequest(A, B, service="key"))
    again = plan_from_json(json.loads(json.dumps(plan_to_json(plan))))
    assert isinstance(again, EntanglementPlan) and again == plan
    with pytest.raises(QsdnError, match="cannot provision"):
        plan_entanglement_session(EntanglementSpec(SID, "entanglement"), plan, topo, {})
