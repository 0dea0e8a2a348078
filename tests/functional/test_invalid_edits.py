"""Invalid ``<edit-config>`` requests against a real agent over SSH.

Every case of the table sends one edit that RFC 6241 (section 7.2, appendix A) or RFC 7950
(sections 8.3.1-8.3.3, 15) requires a server to refuse, or that the node itself refuses (its own
qkdn_id, PHYS links its hardware cannot have), and checks the ``<rpc-error>``: error-tag,
error-type (one that appendix A allows for the tag), error-path, the error-info elements appendix A
defines for the tag, and no error-app-tag (the qsdn schema has none of the constraints that section 15
gives app-tags to: no unique, min/max-elements, must, leafref, mandatory choice or ordered-by user).
After each case every datastore must be byte-identical to what it was before. Two cases (``remove`` of
what does not exist) must instead succeed, and also change nothing. The schema has no ``must``
statement, so only ``when`` violations are covered.

One agent serves the whole table (module-scoped, on a module-scoped event loop). It is seeded first
with a PHYS link, a VIRT link and an application, so that cases can address existing entries.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from lxml import etree

from agent.config import parse_config
from agent.server import NetconfAgent, build_agent
from qsdn.errors import DriverError, ErrorInfo, ErrorType
from qsdn.netconf.client import NetconfClient, NetconfRpcError
from qsdn.netconf.messages import RpcReply, xpath_for_error_path
from qsdn.yang import SchemaContext
from tests.functional.agents import NODE_NS, PASSWORD, TYPES_NS, USER, free_port, node_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
EMU = "urn:qsdn:yang:qsdn-qkd-emulation"
YANG = "urn:ietf:params:xml:ns:yang:1"
APP = ErrorType.APPLICATION
PROTO = ErrorType.PROTOCOL

# RFC 6241 appendix A: the error-types each error-tag may have.
APPENDIX_A_TYPES: dict[str, set[ErrorType]] = {
    "in-use": {PROTO, APP},
    "invalid-value": {PROTO, APP},
    "too-big": {ErrorType.TRANSPORT, ErrorType.RPC, PROTO, APP},
    "missing-attribute": {ErrorType.RPC, PROTO, APP},
    "bad-attribute": {ErrorType.RPC, PROTO, APP},
    "unknown-attribute": {ErrorType.RPC, PROTO, APP},
    "missing-element": {PROTO, APP},
    "bad-element": {PROTO, APP},
    "unknown-element": {PROTO, APP},
    "unknown-namespace": {PROTO, APP},
    "access-denied": {PROTO, APP},
    "lock-denied": {PROTO},
    "resource-denied": {ErrorType.TRANSPORT, ErrorType.RPC, PROTO, APP},
    "rollback-failed": {PROTO, APP},
    "data-exists": {APP},
    "data-missing": {APP},
    "operation-not-supported": {PROTO, APP},
    "operation-failed": {ErrorType.RPC, PROTO, APP},
    "malformed-message": {ErrorType.RPC},
}

# RFC 6241 appendix A: the error-info elements each error-tag carries.
APPENDIX_A_INFO: dict[str, tuple[str, ...]] = {
    "missing-attribute": ("bad-attribute", "bad-element"),
    "bad-attribute": ("bad-attribute", "bad-element"),
    "unknown-attribute": ("bad-attribute", "bad-element"),
    "missing-element": ("bad-element",),
    "bad-element": ("bad-element",),
    "unknown-element": ("bad-element",),
    "unknown-namespace": ("bad-element", "bad-namespace"),
    "lock-denied": ("session-id",),
}


# --- the seeded agent -----------------------------------------------------------------------------


@dataclass
class Seeded:
    agent: NetconfAgent
    client: NetconfClient
    ids: dict[str, str]

    async def snapshot(self) -> tuple[bytes, ...]:
        return tuple(
            [etree.tostring(await self.client.get_config(ds)) for ds in ("running", "candidate", "startup")]
        )


def _seed_xml(ids: dict[str, str]) -> str:
    return """
<qkd_node xmlns="{ns}" xmlns:t="{tns}">
  <qkdn_id>{node}</qkdn_id>
  <qkd_applications>
    <qkd_app>
      <app_id>{app}</app_id>
      <app_type>t:CLIENT</app_type>
      <server_app_id>urn:qsdn:sae:alice</server_app_id>
      <client_app_id>urn:qsdn:sae:bob</client_app_id>
      <app_priority>3</app_priority>
      <backing_qkdl_id>{virt}</backing_qkdl_id>
    </qkd_app>
  </qkd_applications>
  <qkd_links>
    <qkd_link>
      <qkdl_id>{phys}</qkdl_id>
      <qkdl_enable>true</qkdl_enable>
      <qkdl_local><qkdn_id>{node}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_local>
      <qkdl_remote><qkdn_id>{remote}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_remote>
      <qkdl_type>t:PHYS</qkdl_type>
      <phys_wavelength>20</phys_wavelength>
      <phys_qkd_role>t:RECEIVER</phys_qkd_role>
    </qkd_link>
    <qkd_link>
      <qkdl_id>{virt}</qkdl_id>
      <qkdl_local><qkdn_id>{node}</qkdn_id></qkdl_local>
      <qkdl_remote><qkdn_id>{remote}</qkdn_id></qkdl_remote>
      <qkdl_type>t:VIRT</qkdl_type>
      <virt_next_hop>{remote}</virt_next_hop>
      <virt_bandwidth>1000</virt_bandwidth>
    </qkd_link>
  </qkd_links>
</qkd_node>""".format(ns=NODE_NS, tns=TYPES_NS, **ids)


@asynccontextmanager
async def seeded_agent(tmp: Path, schema: SchemaContext) -> AsyncIterator[Seeded]:
    """An agent with one interface (no peer running: the PHYS link receives, it never dials out)."""
    iface = {
        "qkdi_id": 1,
        "listen": {"port": free_port()},
        "peer": {"port": free_port()},
        "fibre": {"length_km": 10.0},
    }
    cfg = node_config(tmp, "edits", interfaces=[iface])
    config = parse_config(cfg, source="edits.yaml")
    agent = build_agent(config, schema)
    await agent.start()
    try:
        assert agent.port is not None
        ids = {
            "node": config.node_id,
            "phys": str(uuid.uuid4()),
            "virt": str(uuid.uuid4()),
            "app": str(uuid.uuid4()),
            "remote": str(uuid.uuid4()),
            "new": str(uuid.uuid4()),
        }
        async with NetconfClient("127.0.0.1", agent.port, USER, password=PASSWORD, known_hosts=None) as c:
            await c.edit_config(_seed_xml(ids))
            yield Seeded(agent, c, ids)
    finally:
        await agent.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(schema: SchemaContext, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Seeded]:
    async with seeded_agent(tmp_path_factory.mktemp("edits"), schema) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(schema: SchemaContext, tmp_path: Path) -> AsyncIterator[Seeded]:
    """A seeded agent of its own, for tests whose edits succeed in part."""
    async with seeded_agent(tmp_path, schema) as s:
        yield s


# --- payload builders -------------------------------------------------------------------------------


def node(inner: str) -> str:
    return f'<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}" xmlns:nc="{NC}">{inner}</qkd_node>'


def link(qkdl_id: str, inner: str, attrs: str = "") -> str:
    return node(f"<qkd_links><qkd_link{attrs}><qkdl_id>{qkdl_id}</qkdl_id>{inner}</qkd_link></qkd_links>")


def app(inner: str) -> str:
    return node(f"<qkd_applications><qkd_app><app_id>{{app}}</app_id>{inner}</qkd_app></qkd_applications>")


def iface(inner: str, qkdi_id: str = "1") -> str:
    return node(
        f"<qkd_interfaces><qkd_interface><qkdi_id>{qkdi_id}</qkdi_id>{inner}</qkd_interface></qkd_interfaces>"
    )


def faults(inner: str) -> str:
    return f'<qsdn_faults xmlns="{EMU}">{inner}</qsdn_faults>'


def edit_config(config: str | None, target: str | None = "running", options: str = "") -> bytes:
    """The ``<edit-config>`` element as bytes (anything may be missing or wrong)."""
    t = f"<target><{target}/></target>" if target is not None else ""
    c = f"<config>{config}</config>" if config is not None else ""
    return f'<edit-config xmlns="{NC}">{t}{options}{c}</edit-config>'.encode()


# Data paths as libyang writes them; the server sends them as XPath with declared prefixes.
NODE = "/etsi-qkd-sdn-node:qkd_node"
PHYS = NODE + "/qkd_links/qkd_link[qkdl_id='{phys}']"
VIRT = NODE + "/qkd_links/qkd_link[qkdl_id='{virt}']"
NEW = NODE + "/qkd_links/qkd_link[qkdl_id='{new}']"
APP_PATH = NODE + "/qkd_applications/qkd_app[app_id='{app}']"
IF1 = NODE + "/qkd_interfaces/qkd_interface[qkdi_id='1']"
EMU_MOD = "qsdn-qkd-emulation"

NEW_PHYS = (
    "<qkdl_local><qkdn_id>{node}</qkdn_id><qkdi_id>{iface}</qkdi_id></qkdl_local>"
    "<qkdl_remote><qkdn_id>{remote}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_remote>"
    "<qkdl_type>t:PHYS</qkdl_type><phys_qkd_role>t:RECEIVER</phys_qkd_role>"
)


@dataclass(frozen=True)
class Case:
    """One edit and the rpc-error it must get (``tag=None``: the reply is ``<ok/>``)."""

    request: bytes
    tag: str | None
    type: ErrorType | None = APP
    path: str | None = None
    info: dict[str, str] = field(default_factory=dict)
    # False where a case deliberately gives less error-info than appendix A defines.
    full_info: bool = True


def case(
    id: str,
    config: str | None,
    tag: str | None,
    type: ErrorType | None = APP,
    path: str | None = None,
    info: dict[str, str] | None = None,
    *,
    target: str | None = "running",
    options: str = "",
    full_info: bool = True,
) -> tuple[str, Case]:
    return id, Case(edit_config(config, target, options), tag, type, path, info or {}, full_info)


def _on_candidate(id: str, c: Case) -> tuple[str, Case]:
    """The same case against the candidate (RFC 7950 8.3.1 payload errors do not depend on it)."""
    req = c.request.replace(b"<target><running/></target>", b"<target><candidate/></target>")
    return "candidate-" + id, Case(req, c.tag, c.type, c.path, c.info, c.full_info)


RUNNING_CASES = [
    # --- types (RFC 7950 8.3.1: invalid-value) ------------------------------------------------
    case("uint32-not-a-number", app("<app_priority>abc</app_priority>"), "invalid-value",
         path=APP_PATH + "/app_priority"),
    case("uint32-negative", app("<app_priority>-1</app_priority>"), "invalid-value",
         path=APP_PATH + "/app_priority"),
    case("uint32-too-big", app("<app_priority>4294967296</app_priority>"), "invalid-value",
         path=APP_PATH + "/app_priority"),
    case("uint32-fraction", iface("<qkdi_att_point><port>1.5</port></qkdi_att_point>"), "invalid-value",
         path=IF1 + "/qkdi_att_point/port"),
    case("uint32-list-key-not-a-number", iface("", qkdi_id="abc"), "invalid-value",
         path=NODE + "/qkd_interfaces/qkd_interface/qkdi_id"),
    case("decimal64-too-many-digits", link("{phys}", "<phys_channel_att>1.2345</phys_channel_att>"),
         "invalid-value", path=PHYS + "/phys_channel_att"),
    case("decimal64-too-many-digits-deep",
         iface("<qkdi_capabilities><max_absorption>1.00001</max_absorption></qkdi_capabilities>"),
         "invalid-value", path=IF1 + "/qkdi_capabilities/max_absorption"),
    case("boolean-yes", link("{phys}", "<qkdl_enable>yes</qkdl_enable>"), "invalid-value",
         path=PHYS + "/qkdl_enable"),
    case("date-and-time-bad", app("<expiration_time>tomorrow</expiration_time>"), "invalid-value",
         path=APP_PATH + "/expiration_time"),
    case("uuid-bad-list-key", link("not-a-uuid", "<qkdl_type>t:PHYS</qkdl_type>"), "invalid-value",
         path=NODE + "/qkd_links/qkd_link/qkdl_id"),
    case("uuid-bad-leaf", app("<remote_qkdn_id>xyz</remote_qkdn_id>"), "invalid-value",
         path=APP_PATH + "/remote_qkdn_id"),
    case("uuid-bad-leaf-list", app("<backing_qkdl_id>zzz</backing_qkdl_id>"), "invalid-value",
         path=APP_PATH + "/backing_qkdl_id"),
    case("identity-unknown", link("{phys}", "<qkdl_status>t:NOT_AN_IDENTITY</qkdl_status>"),
         "invalid-value", path=PHYS + "/qkdl_status"),
    case("identity-wrong-base-qkdl_type", link("{new}", "<qkdl_type>t:CLIENT</qkdl_type>"),
         "invalid-value", path=NEW + "/qkdl_type"),
    case("identity-wrong-base-app_type", app("<app_type>t:PHYS</app_type>"), "invalid-value",
         path=APP_PATH + "/app_type"),
    case("identity-undeclared-prefix", link("{phys}", "<qkdl_status>zz:ACTIVE</qkdl_status>"),
         "invalid-value", path=PHYS + "/qkdl_status"),
    case("identity-unprefixed", link("{phys}", "<qkdl_status>ACTIVE</qkdl_status>"), "invalid-value",
         path=PHYS + "/qkdl_status"),
    case("eavesdropper-above-1", link("{phys}", faults("<eavesdropper>1.5</eavesdropper>")),
         "invalid-value", path=PHYS + f"/{EMU_MOD}:qsdn_faults/eavesdropper"),
    case("eavesdropper-negative", link("{phys}", faults("<eavesdropper>-0.1</eavesdropper>")),
         "invalid-value", path=PHYS + f"/{EMU_MOD}:qsdn_faults/eavesdropper"),
    case("eavesdropper-not-a-number", link("{phys}", faults("<eavesdropper>much</eavesdropper>")),
         "invalid-value", path=PHYS + f"/{EMU_MOD}:qsdn_faults/eavesdropper"),
    case("wavelength-leading-zero", link("{phys}", "<phys_wavelength>020</phys_wavelength>"),
         "invalid-value", path=PHYS + "/phys_wavelength"),
    case("wavelength-five-digits", link("{phys}", "<phys_wavelength>12345</phys_wavelength>"),
         "invalid-value", path=PHYS + "/phys_wavelength"),
    case("wavelength-range-pattern",
         iface("<qkdi_capabilities><wavelength_range>5-</wavelength_range></qkdi_capabilities>"),
         "invalid-value", path=IF1 + "/qkdi_capabilities/wavelength_range"),
    # --- unknown elements and namespaces (RFC 6241 appendix A) -----------------------------------
    case("unknown-element", node("<frobnicator>1</frobnicator>"), "unknown-element",
         path=NODE + "/frobnicator", info={"bad-element": "frobnicator"}),
    case("unknown-element-in-list-entry", link("{phys}", "<qkdl_colour>blue</qkdl_colour>"),
         "unknown-element", path=PHYS + "/qkdl_colour", info={"bad-element": "qkdl_colour"}),
    case("unknown-namespace-top", '<qkd_node xmlns="urn:example:nope"><x/></qkd_node>',
         "unknown-namespace", path="/",
         info={"bad-element": "qkd_node", "bad-namespace": "urn:example:nope"}),
    case("unknown-namespace-child", node('<x:foo xmlns:x="urn:example:nope">1</x:foo>'),
         "unknown-namespace", path=NODE, info={"bad-element": "foo", "bad-namespace": "urn:example:nope"}),
    case("augment-in-wrong-place", node(faults("<fibre_cut>true</fibre_cut>")), "unknown-element",
         path=NODE + f"/{EMU_MOD}:qsdn_faults", info={"bad-element": "qsdn_faults"}),
    case("augment-at-top-level", faults(""), "unknown-element", path=f"/{EMU_MOD}:qsdn_faults",
         info={"bad-element": "qsdn_faults"}),
    case("etsi-leaf-in-augment-namespace", link("{phys}", f'<qkdl_enable xmlns="{EMU}">true</qkdl_enable>'),
         "unknown-element", path=PHYS + f"/{EMU_MOD}:qkdl_enable", info={"bad-element": "qkdl_enable"}),
    # --- structure (RFC 7950 8.3.1, RFC 6241 appendix A) ---------------------------------------
    case("list-entry-without-key", node("<qkd_links><qkd_link><qkdl_enable>false</qkdl_enable></qkd_link></qkd_links>"),
         "missing-element", path=NODE + "/qkd_links/qkd_link", info={"bad-element": "qkdl_id"}),
    case("app-entry-without-key",
         node("<qkd_applications><qkd_app><app_priority>1</app_priority></qkd_app></qkd_applications>"),
         "missing-element", path=NODE + "/qkd_applications/qkd_app", info={"bad-element": "app_id"}),
    case("list-key-twice", link("{phys}", "<qkdl_id>{new}</qkdl_id>"), "bad-element",
         path=NODE + "/qkd_links/qkd_link", info={"bad-element": "qkdl_id"}),
    case("leaf-twice", node("<qkdn_version>a</qkdn_version><qkdn_version>b</qkdn_version>"), "bad-element",
         path=NODE + "/qkdn_version", info={"bad-element": "qkdn_version"}),
    case("text-in-container", node("<qkd_links>hello</qkd_links>"), "bad-element",
         path=NODE + "/qkd_links", info={"bad-element": "qkd_links"}),
    case("element-in-leaf", node("<qkdn_version><x/></qkdn_version>"), "bad-element",
         path=NODE + "/qkdn_version", info={"bad-element": "qkdn_version"}),
    # --- existence (RFC 6241 section 7.2) ------------------------------------------------------
    case("create-existing-link", link("{phys}", "", ' nc:operation="create"'), "data-exists", path=PHYS),
    case("create-existing-leaf", app('<app_priority nc:operation="create">5</app_priority>'),
         "data-exists", path=APP_PATH + "/app_priority"),
    case("create-same-entry-twice",
         node('<qkd_links><qkd_link nc:operation="create"><qkdl_id>{new}</qkdl_id></qkd_link>'
              '<qkd_link nc:operation="create"><qkdl_id>{new}</qkdl_id></qkd_link></qkd_links>'),
         "data-exists", path=NEW),
    case("delete-missing-link", link("{new}", "", ' nc:operation="delete"'), "data-missing", path=NEW),
    case("delete-missing-leaf", app('<expiration_time nc:operation="delete"/>'), "data-missing",
         path=APP_PATH + "/expiration_time"),
    case("delete-missing-leaf-list-entry", app('<client_app_id nc:operation="delete">urn:x</client_app_id>'),
         "data-missing", path=APP_PATH + "/client_app_id[.='urn:x']"),
    case("delete-empty-np-container", node('<qkdn_capabilities nc:operation="delete"/>'), "data-missing",
         path=NODE + "/qkdn_capabilities"),
    case("default-operation-none-missing-entry", link("{new}", "<qkdl_enable>false</qkdl_enable>"),
         "data-missing", path=NEW, options="<default-operation>none</default-operation>"),
    case("remove-missing-link-is-ok", link("{new}", "", ' nc:operation="remove"'), None, None),
    case("remove-missing-leaf-is-ok", app('<expiration_time nc:operation="remove"/>'), None, None),
    case("delete-mandatory-qkdn_id", node('<qkdn_id nc:operation="delete"/>'), "data-missing",
         path=NODE + "/qkdn_id"),
    # --- state data (config false) -------------------------------------------------------------
    case("state-qkdn_status", node("<qkdn_status>t:OPERATING</qkdn_status>"), "invalid-value",
         path=NODE + "/qkdn_status"),
    case("state-skr", link("{phys}", "<qkdl_performance><skr>5</skr></qkdl_performance>"), "invalid-value",
         path=PHYS + "/qkdl_performance/skr"),
    case("state-phys_perf-list",
         link("{phys}", "<qkdl_performance><phys_perf><perf_type>t:QBER</perf_type></phys_perf></qkdl_performance>"),
         "invalid-value", path=PHYS + "/qkdl_performance/phys_perf"),
    case("state-qsdn_phys", link("{phys}", f'<qsdn_phys xmlns="{EMU}"><qber>0.1</qber></qsdn_phys>'),
         "invalid-value", path=PHYS + f"/{EMU_MOD}:qsdn_phys"),
    case("state-qsdn_fibre", iface(f'<qsdn_fibre xmlns="{EMU}"><length_km>1</length_km></qsdn_fibre>'),
         "invalid-value", path=IF1 + f"/{EMU_MOD}:qsdn_fibre"),
    case("state-app_status", app("<app_status>t:ON</app_status>"), "invalid-value",
         path=APP_PATH + "/app_status"),
    case("state-qkdi_status", iface("<qkdi_status>t:ENABLED</qkdi_status>"), "invalid-value",
         path=IF1 + "/qkdi_status"),
    # --- when (RFC 7950 8.3.1: data whose "when" is false is an unknown element) -----------------
    case("when-phys-leaf-on-virt-link", link("{virt}", "<phys_wavelength>20</phys_wavelength>"),
         "unknown-element", path=VIRT + "/phys_wavelength"),
    case("when-phys-role-on-virt-link", link("{virt}", "<phys_qkd_role>t:TRANSMITTER</phys_qkd_role>"),
         "unknown-element", path=VIRT + "/phys_qkd_role"),
    case("when-virt-leaf-on-phys-link", link("{phys}", "<virt_bandwidth>5</virt_bandwidth>"),
         "unknown-element", path=PHYS + "/virt_bandwidth"),
    case("when-virt-hop-on-phys-link", link("{phys}", "<virt_next_hop>{remote}</virt_next_hop>"),
         "unknown-element", path=PHYS + "/virt_next_hop[.='{remote}']"),
    case("when-faults-on-virt-link", link("{virt}", faults("<fibre_cut>true</fibre_cut>")),
         "unknown-element", path=VIRT + f"/{EMU_MOD}:qsdn_faults"),
    case("when-retyping-link-strands-phys-leaves", link("{phys}", "<qkdl_type>t:VIRT</qkdl_type>"),
         "unknown-element", path=PHYS + "/phys_qkd_role"),
    # --- edit-config parameters (RFC 6241 section 7.2) ------------------------------------------
    case("default-operation-bad", node("<qkdn_version>x</qkdn_version>"), "invalid-value", PROTO,
         options="<default-operation>frob</default-operation>"),
    case("test-option-bad", node("<qkdn_version>x</qkdn_version>"), "invalid-value", PROTO,
         options="<test-option>maybe</test-option>"),
    case("error-option-bad", node("<qkdn_version>x</qkdn_version>"), "invalid-value", PROTO,
         options="<error-option>ignore</error-option>"),
    case("target-missing", node("<qkdn_version>x</qkdn_version>"), "missing-element", PROTO,
         info={"bad-element": "target"}, target=None),
    case("config-missing", None, "missing-element", PROTO, info={"bad-element": "config"}),
    case("target-startup", node("<qkdn_version>x</qkdn_version>"), "operation-not-supported", PROTO,
         target="startup"),
    case("target-unknown-datastore", node("<qkdn_version>x</qkdn_version>"), "invalid-value", PROTO,
         target="bogus"),
    case("test-only-invalid", app("<app_priority>abc</app_priority>"), "invalid-value",
         path=APP_PATH + "/app_priority", options="<test-option>test-only</test-option>"),
    # --- the node refuses (running only: applied to the hardware) -------------------------------
    case("qkdn_id-changed", node("<qkdn_id>{new}</qkdn_id>"), "invalid-value", path=NODE + "/qkdn_id"),
    case("phys-link-on-missing-interface", link("{new}", NEW_PHYS.replace("{iface}", "7")), "invalid-value",
         path=NEW + "/qkdl_local/qkdi_id"),
    case("phys-link-local-node-not-this-node",
         link("{new}", NEW_PHYS.replace("{iface}", "1").replace("<qkdn_id>{node}", "<qkdn_id>{remote}")),
         "invalid-value", path=NEW + "/qkdl_local/qkdn_id"),
    case("phys-link-on-busy-interface", link("{new}", NEW_PHYS.replace("{iface}", "1")), "operation-failed"),
    # --- nc:operation and other attributes (RFC 6241 7.2, RFC 7950 8.3.1) --------------------------
    case("operation-unknown-value", node('<qkdn_version nc:operation="frobnicate">x</qkdn_version>'),
         "bad-attribute", PROTO, path=NODE + "/qkdn_version",
         info={"bad-attribute": "operation", "bad-element": "qkdn_version"}),
    case("operation-empty-value", link("{phys}", "", ' nc:operation=""'), "bad-attribute", PROTO,
         path=NODE + "/qkd_links/qkd_link", info={"bad-attribute": "operation", "bad-element": "qkd_link"}),
    case("operation-create-inside-delete",
         node('<qkd_links nc:operation="delete"><qkd_link nc:operation="create"><qkdl_id>{phys}</qkdl_id>'
              "</qkd_link></qkd_links>"),
         "bad-attribute", PROTO, path=NODE + "/qkd_links/qkd_link",
         info={"bad-attribute": "operation", "bad-element": "qkd_link"}),
    case("operation-on-key-disagrees",
         node('<qkd_links><qkd_link><qkdl_id nc:operation="delete">{phys}</qkdl_id></qkd_link></qkd_links>'),
         "bad-attribute", PROTO, path=NODE + "/qkd_links/qkd_link",
         info={"bad-attribute": "operation", "bad-element": "qkdl_id"}),
    case("attribute-without-namespace", node('<qkdn_version foo="bar">x</qkdn_version>'),
         "unknown-attribute", PROTO, path=NODE + "/qkdn_version",
         info={"bad-attribute": "foo", "bad-element": "qkdn_version"}),
    case("yang-insert-on-system-ordered-list",
         link("{phys}", "", f' xmlns:yang="{YANG}" yang:insert="first"'),
         "unknown-attribute", PROTO, path=NODE + "/qkd_links/qkd_link",
         info={"bad-attribute": "insert", "bad-element": "qkd_link"}),
]  # fmt: skip

CANDIDATE_IDS = {
    "uint32-not-a-number",
    "decimal64-too-many-digits",
    "identity-wrong-base-qkdl_type",
    "eavesdropper-above-1",
    "unknown-element",
    "unknown-namespace-child",
    "list-entry-without-key",
    "create-existing-link",
    "delete-missing-link",
    "remove-missing-link-is-ok",
    "state-skr",
    "when-virt-leaf-on-phys-link",
    "when-phys-leaf-on-virt-link",
    "operation-unknown-value",
}
CANDIDATE_CASES = [_on_candidate(i, c) for i, c in RUNNING_CASES if i in CANDIDATE_IDS]
ALL_CASES = [pytest.param(c, id=i) for i, c in RUNNING_CASES + CANDIDATE_CASES]


def _fmt(text: str, ids: dict[str, str]) -> str:
    for k, v in ids.items():
        text = text.replace("{" + k + "}", v)
    return text


def _check_error(err: ErrorInfo, c: Case, ids: dict[str, str], schema: SchemaContext) -> None:
    assert err.severity == "error"
    assert err.tag == c.tag, err.message
    assert err.type == c.type, err.message
    assert err.type in APPENDIX_A_TYPES[err.tag]
    assert err.app_tag is None, "no RFC 7950 section 15 constraint applies to these cases"
    if c.path is None:
        assert err.path is None
    else:
        expected, _ = xpath_for_error_path(_fmt(c.path, ids), schema.module_namespace)
        assert err.path == expected
    want = dict(c.info)
    if c.path and c.tag == "unknown-element" and "bad-element" not in want:
        # a 'when' that is false: the element at fault is the last step of the path
        want["bad-element"] = c.path.rsplit("/", 1)[-1].split("[", 1)[0].split(":")[-1]
    if c.full_info:
        for k in APPENDIX_A_INFO.get(c.tag or "", ()):
            assert k in want, f"the table must give {k} for {c.tag}"
    assert {k: err.info.get(k) for k in want} == want
    assert err.message


async def _send(client: NetconfClient, request: bytes) -> RpcReply:
    return await client.rpc(request, check=False)


@pytest.mark.parametrize("c", ALL_CASES)
async def test_invalid_edit_is_refused_and_changes_nothing(
    c: Case, seeded: Seeded, schema: SchemaContext
) -> None:
    before = await seeded.snapshot()
    reply = await _send(seeded.client, _fmt(c.request.decode(), seeded.ids).encode())
    if c.tag is None:
        assert reply.ok and not reply.errors, reply.errors
    else:
        assert not reply.ok
        assert len(reply.errors) == 1, reply.errors
        _check_error(reply.errors[0], c, seeded.ids, schema)
    assert await seeded.snapshot() == before
    # The hardware was not touched either (or was put back): the seeded PHYS link is still there and
    # no new link was left behind.
    assert seeded.agent.node.link_state(seeded.ids["phys"]) is not None
    with pytest.raises(DriverError):
        seeded.agent.node.link_state(seeded.ids["new"])


async def test_table_is_large_enough() -> None:
    assert len(RUNNING_CASES) >= 40
    assert len(CANDIDATE_CASES) == len(CANDIDATE_IDS)
    assert len({i for i, _ in RUNNING_CASES}) == len(RUNNING_CASES)


async def test_when_violation_names_the_bad_element(seeded: Seeded) -> None:
    for qkdl, leaf in (("virt", "phys_wavelength"), ("phys", "virt_bandwidth")):
        body = link("{" + qkdl + "}", f"<{leaf}>20</{leaf}>")
        reply = await _send(seeded.client, _fmt(edit_config(body).decode(), seeded.ids).encode())
        assert reply.errors[0].tag == "unknown-element"
        assert reply.errors[0].info.get("bad-element") == leaf


# --- error-option and test-option ----------------------------------------------------------------


def _version(data: etree._Element) -> list[str]:
    return data.xpath("n:qkd_node/n:qkdn_version/text()", namespaces={"n": NODE_NS})  # type: ignore[return-value]


async def test_continue_on_error_applies_the_good_subtree_and_reports_both_errors(
    fresh: Seeded, schema: SchemaContext
) -> None:
    before = await fresh.snapshot()
    body = node(
        "<qkdn_version>coe</qkdn_version>"
        '<qkd_links><qkd_link nc:operation="create"><qkdl_id>{phys}</qkdl_id></qkd_link>'
        '<qkd_link nc:operation="delete"><qkdl_id>{new}</qkdl_id></qkd_link></qkd_links>'
    )
    req = edit_config(body, options="<error-option>continue-on-error</error-option>")
    reply = await _send(fresh.client, _fmt(req.decode(), fresh.ids).encode())
    assert not reply.ok
    assert [e.tag for e in reply.errors] == ["data-exists", "data-missing"]
    _check_error(reply.errors[0], Case(b"", "data-exists", path=PHYS), fresh.ids, schema)
    _check_error(reply.errors[1], Case(b"", "data-missing", path=NEW), fresh.ids, schema)
    assert _version(await fresh.client.get_config()) == ["coe"]
    # Only qkdn_version changed: removing it gives the datastore back byte for byte.
    await fresh.client.edit_config(node('<qkdn_version nc:operation="remove"/>'))
    assert (await fresh.snapshot())[0] == before[0]


async def test_continue_on_error_with_a_bad_value_skips_only_that_subtree(fresh: Seeded) -> None:
    body = node(
        "<qkdn_version>coe</qkdn_version>"
        "<qkd_applications><qkd_app><app_id>{app}</app_id><app_priority>abc</app_priority></qkd_app>"
        "</qkd_applications>"
        '<qkd_links><qkd_link nc:operation="create"><qkdl_id>{phys}</qkdl_id></qkd_link></qkd_links>'
    )
    req = edit_config(body, options="<error-option>continue-on-error</error-option>")
    reply = await _send(fresh.client, _fmt(req.decode(), fresh.ids).encode())
    assert sorted(e.tag for e in reply.errors) == ["data-exists", "invalid-value"]
    assert _version(await fresh.client.get_config()) == ["coe"]


async def test_rollback_on_error_applies_nothing(fresh: Seeded, schema: SchemaContext) -> None:
    before = await fresh.snapshot()
    body = node(
        "<qkdn_version>rb</qkdn_version>"
        '<qkd_links><qkd_link nc:operation="create"><qkdl_id>{phys}</qkdl_id></qkd_link></qkd_links>'
        "<qkdn_location_id>after-the-error</qkdn_location_id>"
    )
    req = edit_config(body, options="<error-option>rollback-on-error</error-option>")
    reply = await _send(fresh.client, _fmt(req.decode(), fresh.ids).encode())
    assert [e.tag for e in reply.errors] == ["data-exists"]
    _check_error(reply.errors[0], Case(b"", "data-exists", path=PHYS), fresh.ids, schema)
    assert await fresh.snapshot() == before


async def test_stop_on_error_reports_the_first_error_only(fresh: Seeded) -> None:
    before = await fresh.snapshot()
    body = node(
        "<qkdn_version>stop</qkdn_version>"
        '<qkd_links><qkd_link nc:operation="create"><qkdl_id>{phys}</qkdl_id></qkd_link>'
        '<qkd_link nc:operation="delete"><qkdl_id>{new}</qkdl_id></qkd_link></qkd_links>'
    )
    reply = await _send(fresh.client, _fmt(edit_config(body).decode(), fresh.ids).encode())
    assert [e.tag for e in reply.errors] == ["data-exists"]
    assert await fresh.snapshot() == before


async def test_test_only_validates_a_valid_edit_and_applies_nothing(fresh: Seeded) -> None:
    before = await fresh.snapshot()
    for target in ("running", "candidate"):
        body = node(
            "<qkdn_version>to</qkdn_version><qkd_links><qkd_link><qkdl_id>{new}</qkdl_id>"
            "<qkdl_type>t:VIRT</qkdl_type></qkd_link></qkd_links>"
        )
        req = edit_config(body, target, options="<test-option>test-only</test-option>")
        reply = await _send(fresh.client, _fmt(req.decode(), fresh.ids).encode())
        assert reply.ok and not reply.errors
    assert await fresh.snapshot() == before


async def test_candidate_accepts_a_new_qkdn_id_but_commit_refuses_it(
    fresh: Seeded, schema: SchemaContext
) -> None:
    before = await fresh.snapshot()
    c = fresh.client
    await c.edit_config(_fmt(node("<qkdn_id>{new}</qkdn_id>"), fresh.ids), target="candidate")
    with pytest.raises(NetconfRpcError) as ei:
        await c.commit()
    _check_error(ei.value.first, Case(b"", "invalid-value", path=NODE + "/qkdn_id"), fresh.ids, schema)
    after = await fresh.snapshot()
    assert after[0] == before[0] and after[2] == before[2]
    await c.discard_changes()
    assert await fresh.snapshot() == before


async def test_commit_after_direct_running_edit_keeps_that_edit(fresh: Seeded) -> None:
    c = fresh.client
    await c.edit_config(node("<qkdn_version>direct</qkdn_version>"))
    await c.edit_config(node("<qkdn_location_id>site-7</qkdn_location_id>"), target="candidate")
    await c.commit()
    assert _version(await c.get_config()) == ["direct"]
