"""Entanglement configuration (``qsdn-entanglement``) through a real agent over NETCONF.

The agent implements the module: an edit-config of a node's entanglement resources, elementary links
and sessions goes into running, and get-config and get return it. The state leaves come from the
entanglement emulator driver, which is not wired into the agent yet; until then ``<get>`` returns the
configuration without them and still validates.

The configurations are the conformance documents of the chain A - R - B
(``tests/conformance/instances/valid/entanglement-chain-*``), so the agent accepts exactly what the
conformance suite calls valid. Invalid edits are applied on top of the repeater's valid configuration
and must get the ``<rpc-error>`` that RFC 6241 appendix A and RFC 7950 section 15 give (``must``:
operation-failed with app-tag must-violation; a range or an unknown identity: invalid-value; a false
``when``: unknown-element), with the data path, and leave every datastore byte-identical.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lxml import etree

from agent.config import parse_config
from agent.server import build_agent
from qsdn.errors import ErrorType
from qsdn.netconf.client import NetconfClient
from qsdn.netconf.messages import xpath_for_error_path
from qsdn.yang import SchemaContext
from tests.functional.agents import NODE_NS, PASSWORD, TYPES_NS, USER, AgentFactory, node_config

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
ENT_NS = "urn:qsdn:yang:qsdn-entanglement"
ENT_MOD = "qsdn-entanglement"
VALID = Path(__file__).resolve().parents[1] / "conformance" / "instances" / "valid"

NODE_A = "0e000000-0000-4000-8000-00000000000a"
NODE_B = "0e000000-0000-4000-8000-00000000000b"
NODE_R = "0e000000-0000-4000-8000-00000000000c"
SESSION = "3e000000-0000-4000-8000-000000000001"
LINK_RB = "1e000000-0000-4000-8000-000000000002"
KEY_LINK = "2e000000-0000-4000-8000-000000000001"


def repeater_xml(schema: SchemaContext) -> str:
    """The repeater's conformance document (JSON) as XML, as a controller would send it."""
    text = (VALID / "entanglement-chain-repeater.json").read_text(encoding="utf-8")
    return schema.convert(text, "json", "xml", config_only=True)


def entanglement_of(schema: SchemaContext, xml: str) -> dict[str, Any]:
    """The entanglement container of a qkd_node document, as canonical RFC 7951 JSON data."""
    document = json.loads(schema.convert(xml, "xml", "json", config_only=True))
    node: dict[str, Any] = document["etsi-qkd-sdn-node:qkd_node"]
    ent: dict[str, Any] = node[f"{ENT_MOD}:entanglement"]
    return ent


def qkd_node_xml(data: etree._Element) -> str:
    (node,) = data.iterfind(f"{{{NODE_NS}}}qkd_node")
    return etree.tostring(node, encoding="unicode")


def find(el: etree._Element, path: str) -> list[Any]:
    return el.xpath(path, namespaces={"n": NODE_NS, "e": ENT_NS})  # type: ignore[no-any-return]


# --- accepted configurations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "document"),
    [(NODE_A, "entanglement-chain-end-a.xml"), (NODE_B, "entanglement-chain-end-b.xml")],
    ids=["end-a", "end-b"],
)
async def test_end_node_config_goes_into_running(
    start_agent: AgentFactory, schema: SchemaContext, tmp_path: Path, node_id: str, document: str
) -> None:
    h = await start_agent(node_config(tmp_path, "end", node_id=node_id))
    sent = (VALID / document).read_text(encoding="utf-8")
    async with h.client() as c:
        reply = await c.edit_config(sent)
        assert reply.ok
        data = await c.get_config()
    got = qkd_node_xml(data)
    assert entanglement_of(schema, got) == entanglement_of(schema, sent)
    # The key link the session's BBM92 key goes to went in with it, in the same edit.
    assert find(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_id/text()") == [KEY_LINK]
    assert find(data, "//e:session/e:key_qkdl_id/text()") == [KEY_LINK]


async def test_repeater_config_goes_into_running_and_get_works_without_state(
    start_agent: AgentFactory, schema: SchemaContext, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "repeater", node_id=NODE_R))
    sent = repeater_xml(schema)
    async with h.client() as c:
        assert f"{ENT_NS}?module={ENT_MOD}&revision=2026-11-28" in c.server_capabilities
        await c.edit_config(sent)
        running = await c.get_config()
        operational = await c.get()
        filtered = await c.get(f'<qkd_node xmlns="{NODE_NS}"><entanglement xmlns="{ENT_NS}"/></qkd_node>')
    want = entanglement_of(schema, sent)
    assert entanglement_of(schema, qkd_node_xml(running)) == want
    assert find(running, "//e:session/e:role/text()") == ["repeater"]
    assert find(running, "//e:session/e:path/text()") == [NODE_A, NODE_R, NODE_B]  # order kept
    # <get> carries the configuration; no state yet (the emulator driver is not wired in).
    assert find(operational, "//e:memories/e:count/text()") == ["8"]
    assert len(find(operational, "//e:elementary_link")) == 2
    for state in ("in_use", "free", "success_probability", "status", "achieved_fidelity", "pairs_delivered"):
        assert not find(operational, f"//e:{state}"), state
    schema.validate_data(qkd_node_xml(operational))
    assert len(find(filtered, "n:qkd_node/*")) == 1  # the subtree filter selects the container only
    assert len(find(filtered, "//e:session")) == 1


async def test_config_is_removed_with_the_container(
    start_agent: AgentFactory, schema: SchemaContext, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "repeater", node_id=NODE_R))
    async with h.client() as c:
        await c.edit_config(repeater_xml(schema))
        await c.edit_config(
            f'<qkd_node xmlns="{NODE_NS}"><entanglement xmlns="{ENT_NS}" xmlns:nc="{NC}"'
            ' nc:operation="delete"/></qkd_node>'
        )
        data = await c.get_config()
    assert not find(data, "//e:entanglement")
    assert find(data, "n:qkd_node/n:qkdn_id/text()") == [NODE_R]


# --- refused configurations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """An edit on top of the repeater's configuration and the rpc-error it must get."""

    edit: str  # inside <session>, unless it starts with "<" + a top-level entanglement child
    tag: str
    path: str
    message: str
    app_tag: str | None = None


ENT = f"/etsi-qkd-sdn-node:qkd_node/{ENT_MOD}:entanglement"
SESSION_PATH = f"{ENT}/sessions/session[session_id='{SESSION}']"
MUST = "must-violation"


def in_session(inner: str) -> str:
    return f"<sessions><session><session_id>{SESSION}</session_id>{inner}</session></sessions>"


REFUSALS = {
    "key-link-on-repeater": Refusal(
        in_session(f"<key_qkdl_id>{KEY_LINK}</key_qkdl_id>"),
        "operation-failed",
        SESSION_PATH + "/key_qkdl_id",
        "key_qkdl_id is set on a repeater: BBM92 key exists only at the two end nodes",
        MUST,
    ),
    "fidelity-above-one": Refusal(
        in_session("<target_fidelity>1.2</target_fidelity>"),
        "invalid-value",
        SESSION_PATH + "/target_fidelity",
        "a pair fidelity is between 0.25 (maximally mixed) and 1",
    ),
    "bbm92-target-below-threshold": Refusal(
        in_session("<target_fidelity>0.8</target_fidelity>"),
        "operation-failed",
        SESSION_PATH + "/target_fidelity",
        "a bbm92-key session needs a target fidelity above 0.835",
        MUST,
    ),
    "zero-memories": Refusal(
        "<memories><count>0</count></memories>",
        "invalid-value",
        ENT + "/memories/count",
        "a node with memories has at least one",
    ),
    "unknown-swap-order": Refusal(
        in_session("<swap_order>fastest-first</swap_order>"),
        "invalid-value",
        SESSION_PATH + "/swap_order",
        'Invalid enumeration value "fastest-first"',
    ),
    "detector-efficiency-above-one": Refusal(
        "<bsm_station><detector_efficiency>1.5</detector_efficiency></bsm_station>",
        "invalid-value",
        ENT + "/bsm_station/detector_efficiency",
        "a probability is between 0 and 1",
    ),
    "hop-without-elementary-link": Refusal(
        "<elementary_links><elementary_link nc:operation='delete'>"
        f"<link_id>{LINK_RB}</link_id></elementary_link></elementary_links>",
        "operation-failed",
        SESSION_PATH + "/next_hop",
        "next_hop needs an elementary link to that node",
        MUST,
    ),
    "repeater-as-end": Refusal(
        in_session('<role>end</role><swap_round nc:operation="remove"/>'),
        "operation-failed",
        SESSION_PATH,
        "role is 'end' exactly on the two end nodes of the session, 'repeater' on the others",
        MUST,
    ),
    "rounds-without-purification": Refusal(
        in_session("<purification><protocol>none</protocol></purification>"),
        "unknown-element",
        SESSION_PATH + "/purification/rounds",
        "When condition \"../protocol != 'none'\" not satisfied",
    ),
    "state-in-config": Refusal(
        in_session("<achieved_fidelity>0.9</achieved_fidelity>"),
        "invalid-value",
        SESSION_PATH + "/achieved_fidelity",
        "leaf 'achieved_fidelity' is state data (config false) and cannot be edited",
    ),
}


@dataclass
class Repeater:
    client: NetconfClient
    schema: SchemaContext

    async def snapshot(self) -> tuple[bytes, ...]:
        return tuple(
            [etree.tostring(await self.client.get_config(ds)) for ds in ("running", "candidate", "startup")]
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def repeater(
    schema: SchemaContext, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Repeater]:
    """The repeater R with its configuration and a VIRT key link (a leafref target for key_qkdl_id)."""
    cfg = node_config(tmp_path_factory.mktemp("ent"), "repeater", node_id=NODE_R)
    agent = build_agent(parse_config(cfg, source="repeater.yaml"), schema)
    await agent.start()
    try:
        assert agent.port is not None
        key_link = (
            f'<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}"><qkdn_id>{NODE_R}</qkdn_id><qkd_links>'
            f"<qkd_link><qkdl_id>{KEY_LINK}</qkdl_id><qkdl_type>t:VIRT</qkdl_type></qkd_link>"
            "</qkd_links></qkd_node>"
        )
        async with NetconfClient("127.0.0.1", agent.port, USER, password=PASSWORD, known_hosts=None) as c:
            await c.edit_config(repeater_xml(schema))
            await c.edit_config(key_link)
            yield Repeater(c, schema)
    finally:
        await agent.stop()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("target", ["running", "candidate"])
@pytest.mark.parametrize("name", sorted(REFUSALS))
async def test_invalid_entanglement_edit_is_refused_and_changes_nothing(
    repeater: Repeater, name: str, target: str
) -> None:
    r = REFUSALS[name]
    edit = (
        f'<qkd_node xmlns="{NODE_NS}"><entanglement xmlns="{ENT_NS}"'
        f' xmlns:nc="{NC}">{r.edit}</entanglement></qkd_node>'
    )
    before = await repeater.snapshot()
    root = etree.fromstring(
        f'<edit-config xmlns="{NC}"><target><{target}/></target><config>{edit}</config></edit-config>'
    )
    reply = await repeater.client.rpc(root, check=False)
    assert not reply.ok
    assert len(reply.errors) == 1, reply.errors
    (err,) = reply.errors
    assert err.severity == "error"
    assert (err.tag, err.type, err.app_tag) == (r.tag, ErrorType.APPLICATION, r.app_tag), err.message
    assert r.message in err.message
    expected_path, _ = xpath_for_error_path(r.path, repeater.schema.module_namespace)
    assert err.path == expected_path
    assert await repeater.snapshot() == before
