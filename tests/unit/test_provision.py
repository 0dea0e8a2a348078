"""Provisioning plans: the 015 configuration of SYSTEM.md section 2, checked node by node."""

from __future__ import annotations

import pytest
from lxml import etree

from controller.provision import SessionSpec, combine, derived_id, phys_link_id, plan_session
from qsdn.errors import QsdnError
from qsdn.yang import SchemaContext, agent_schema

A, B, C = (f"{c * 8}-0000-4000-8000-00000000000{i}" for i, c in ((1, "a"), (2, "b"), (3, "c")))
N = {"n": "urn:etsi:qkd:yang:etsi-qkd-node"}
SPEC = SessionSpec(
    session_id="5e55e55e-0000-4000-8000-000000000001", src_sae="sae-a", dst_sae="sae-c", rate_bps=1000
)
IFACES = {(A, "ab"): 1, (B, "ab"): 1, (B, "bc"): 2, (C, "bc"): 1}


@pytest.fixture(scope="module")
def schema() -> SchemaContext:
    return agent_schema()


def _x(xml: str) -> etree._Element:
    return etree.fromstring(xml)


def _texts(el: etree._Element, path: str) -> list[str]:
    return [str(t) for t in el.xpath(path, namespaces=N)]


def test_relay_plan_matches_the_canonical_flow(schema: SchemaContext) -> None:
    plan = plan_session(SPEC, [A, B, C], ["ab", "bc"], IFACES)
    assert plan.relays == (B,)
    assert plan.virt_qkdl_id == derived_id("virt", SPEC.session_id, "0")
    for node in (A, B, C):
        schema.canonical_config(plan.edits[node])  # each edit is valid 015 configuration
        schema.canonical_config(plan.removals[node])
    a, b, c = (_x(plan.edits[n]) for n in (A, B, C))
    ab, bc = phys_link_id("ab"), phys_link_id("bc")
    # PHYS links: same id at both ends, lower-index end transmits, new links start OFF
    assert _texts(a, f"//n:qkd_link[n:qkdl_id='{ab}']/n:phys_qkd_role/text()") == [
        "etsi-qkdn-types:TRANSMITTER"
    ]
    assert _texts(b, f"//n:qkd_link[n:qkdl_id='{ab}']/n:phys_qkd_role/text()") == ["etsi-qkdn-types:RECEIVER"]
    assert _texts(b, f"//n:qkd_link[n:qkdl_id='{bc}']/n:phys_qkd_role/text()") == [
        "etsi-qkdn-types:TRANSMITTER"
    ]
    assert _texts(b, f"//n:qkd_link[n:qkdl_id='{bc}']/n:qkdl_local/n:qkdi_id/text()") == ["2"]
    assert _texts(a, f"//n:qkd_link[n:qkdl_id='{ab}']/n:qkdl_status/text()") == ["etsi-qkdn-types:OFF"]
    # VIRT link with prev/next hops = adjacent nodes
    v = plan.virt_qkdl_id
    assert _texts(a, f"//n:qkd_link[n:qkdl_id='{v}']/n:virt_next_hop/text()") == [B]
    assert _texts(a, f"//n:qkd_link[n:qkdl_id='{v}']/n:virt_prev_hop/text()") == []
    assert _texts(b, f"//n:qkd_link[n:qkdl_id='{v}']/n:virt_prev_hop/text()") == [A]
    assert _texts(b, f"//n:qkd_link[n:qkdl_id='{v}']/n:virt_next_hop/text()") == [C]
    assert _texts(c, f"//n:qkd_link[n:qkdl_id='{v}']/n:virt_prev_hop/text()") == [B]
    assert _texts(c, f"//n:qkd_link[n:qkdl_id='{v}']/n:virt_bandwidth/text()") == ["1000"]
    # INTERNAL apps on the relay only, one per adjacent PHYS link, listed in that link
    assert _texts(a, "//n:qkd_app[n:app_type='etsi-qkdn-types:INTERNAL']") == []
    internal = _texts(b, "//n:qkd_app[n:app_type='etsi-qkdn-types:INTERNAL']/n:backing_qkdl_id/text()")
    assert sorted(internal) == sorted([ab, bc])
    for link in (ab, bc):
        app = _texts(b, f"//n:qkd_app[n:backing_qkdl_id='{link}']/n:app_id/text()")
        assert _texts(b, f"//n:qkd_link[n:qkdl_id='{link}']/n:qkdl_applications/text()") == app
    # CLIENT apps at both ends, local/remote swapped, backed by the VIRT link
    for node, local, remote in ((a, A, C), (c, C, A)):
        app = "//n:qkd_app[n:app_type='etsi-qkdn-types:CLIENT']"
        assert _texts(node, f"{app}/n:server_app_id/text()") == ["sae-a"]
        assert _texts(node, f"{app}/n:client_app_id/text()") == ["sae-c"]
        assert _texts(node, f"{app}/n:backing_qkdl_id/text()") == [v]
        assert _texts(node, f"{app}/n:local_qkdn_id/text()") == [local]
        assert _texts(node, f"{app}/n:remote_qkdn_id/text()") == [remote]
    assert _texts(b, "//n:qkd_app[n:app_type='etsi-qkdn-types:CLIENT']") == []


def test_plan_is_deterministic_and_generations_differ() -> None:
    p1 = plan_session(SPEC, [A, B, C], ["ab", "bc"], IFACES)
    p2 = plan_session(SPEC, [A, B, C], ["ab", "bc"], IFACES)
    assert p1.edits == p2.edits and p1.removals == p2.removals
    p3 = plan_session(SPEC, [A, B, C], ["ab", "bc"], IFACES, generation=1)
    assert p3.virt_qkdl_id != p1.virt_qkdl_id and p3.client_app_id != p1.client_app_id


def test_direct_session_backs_the_client_app_with_the_phys_link(schema: SchemaContext) -> None:
    plan = plan_session(SPEC, [A, B], ["ab"], IFACES)
    assert plan.virt_qkdl_id is None
    a = _x(plan.edits[A])
    ab = phys_link_id("ab")
    assert _texts(a, "//n:qkd_app/n:backing_qkdl_id/text()") == [ab]
    assert _texts(a, f"//n:qkd_link[n:qkdl_id='{ab}']/n:qkdl_applications/text()") == [plan.client_app_id]
    for node in (A, B):
        schema.canonical_config(plan.edits[node])


def test_existing_phys_links_are_only_annotated(schema: SchemaContext) -> None:
    ab = phys_link_id("ab")
    plan = plan_session(SPEC, [A, B, C], ["ab", "bc"], IFACES, existing=frozenset({ab}))
    a = _x(plan.edits[A])
    assert _texts(a, f"//n:qkd_link[n:qkdl_id='{ab}']") == []  # nothing to change at A for ab
    b = _x(plan.edits[B])
    assert _texts(b, f"//n:qkd_link[n:qkdl_id='{ab}']/n:qkdl_type") == []
    assert len(_texts(b, f"//n:qkd_link[n:qkdl_id='{ab}']/n:qkdl_applications/text()")) == 1


def test_removal_then_new_generation_combine_into_one_valid_edit(schema: SchemaContext) -> None:
    old = plan_session(SPEC, [A, B, C], ["ab", "bc"], IFACES)
    new = plan_session(SPEC, [A, C], ["ac"], {**IFACES, (A, "ac"): 2, (C, "ac"): 2}, generation=1)
    edit = combine(old.removals[A], new.edits[A])
    root = _x(edit)
    assert len(root.xpath("//n:qkd_app", namespaces=N)) == 2
    assert schema.canonical_config(
        edit.replace(' xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"', "").replace(
            'nc:operation="remove"', ""
        )
    )


@pytest.mark.parametrize(
    ("path", "spans", "fragment"),
    [
        ([A], [], "a path needs"),
        ([A, B, C], ["ab"], "a path needs"),
        ([A, B, A], ["ab", "ab"], "visits a node twice"),
        ([A, C], ["zz"], "no interface known"),
    ],
)
def test_bad_paths_are_refused(path: list[str], spans: list[str], fragment: str) -> None:
    with pytest.raises(QsdnError, match=fragment):
        plan_session(SPEC, path, spans, IFACES)
