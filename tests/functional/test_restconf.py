"""The controller's RESTCONF server (RFC 8040) over real sockets, with plain HTTP clients.

The server runs on loopback (aiohttp's ``TestServer``) over a ``MemoryBackend``; requests are made with
aiohttp's ``TestClient`` and, for a few, a bare ``aiohttp.ClientSession``: no RESTCONF library, so
every status line, header and body is checked as a client sees it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from controller.northbound import MemoryBackend, build_app, northbound_schema
from qsdn.yang import SchemaContext

JSON = "application/yang-data+json"
XML = "application/yang-data+xml"
ORCH = "qsdn-orchestrator"
NS = "urn:qsdn:yang:qsdn-orchestrator"
RC_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf"
YL_NS = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
ETSI_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
ETSI_TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
WD_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"

A = "aaaaaaaa-0000-4000-8000-00000000000a"
B = "aaaaaaaa-0000-4000-8000-00000000000b"
C = "aaaaaaaa-0000-4000-8000-00000000000c"
D = "aaaaaaaa-0000-4000-8000-00000000000d"
S1 = "5e55e55e-0000-4000-8000-000000000001"
S2 = "5e55e55e-0000-4000-8000-000000000002"

DATA = "/restconf/data"
NET = f"{DATA}/{ORCH}:qkd_network"
NODE_A = f"{NET}/qkd_node={A}"
NODE_D = f"{NET}/qkd_node={D}"

ERROR_TYPES = {"transport", "rpc", "protocol", "application"}
ERROR_MEMBERS = {"error-type", "error-tag", "error-app-tag", "error-path", "error-message", "error-info"}


def node_xml(qkdn_id: str, name: str, host: str, extra: str = "") -> str:
    return (
        f"<qkd_node><qkdn_id>{qkdn_id}</qkdn_id><name>{name}</name>"
        f"<netconf><host>{host}</host></netconf>{extra}</qkd_node>"
    )


INITIAL = (
    f'<qkd_network xmlns="{NS}"><network_id>00000000-0000-4000-8000-000000000000</network_id>'
    + node_xml(A, "amsterdam", "10.0.0.1", "<location>Amsterdam</location>")
    + node_xml(B, "brussels", "10.0.0.2", "<trusted>true</trusted><role>relay</role>")
    + node_xml(C, "cologne", "10.0.0.3")
    + f"<qkd_phys_link><span_id>ab</span_id><node_a>{A}</node_a><node_b>{B}</node_b>"
    "<length_km>40</length_km><bands>O</bands></qkd_phys_link>"
    + f"<qkd_phys_link><span_id>bc</span_id><node_a>{B}</node_a><node_b>{C}</node_b>"
    "<length_km>120.5</length_km><extra_loss_db>1.5</extra_loss_db></qkd_phys_link>"
    + f"<qkd_svc_link><session_id>{S1}</session_id><src_node>{A}</src_node><dst_node>{C}</dst_node>"
    "<src_sae>sae-a</src_sae><dst_sae>sae-c</dst_sae><requested_rate_bps>1000</requested_rate_bps>"
    "</qkd_svc_link></qkd_network>"
)

NODE_015 = (
    f'<qkd_node xmlns="{ETSI_NS}" xmlns:t="{ETSI_TYPES_NS}"><qkdn_id>{A}</qkdn_id>'
    "<qkdn_status>t:OPERATING</qkdn_status>"
    "<qkd_interfaces><qkd_interface><qkdi_id>1</qkdi_id></qkd_interface></qkd_interfaces></qkd_node>"
)


def derived_state(config: str) -> str:
    """State the fake controller reports: every node reachable, every session active on src->dst."""
    if not config:
        return ""
    root = etree.fromstring(f"<r>{config}</r>")
    ns = {"o": NS}
    out = [f'<qkd_network xmlns="{NS}">']
    for qkdn_id in root.xpath("//o:qkd_node/o:qkdn_id/text()", namespaces=ns):
        out.append(f"<qkd_node><qkdn_id>{qkdn_id}</qkdn_id><status>reachable</status></qkd_node>")
    for link in root.xpath("//o:qkd_svc_link", namespaces=ns):
        sid, src, dst = (link.findtext(f"{{{NS}}}{n}") for n in ("session_id", "src_node", "dst_node"))
        out.append(
            f"<qkd_svc_link><session_id>{sid}</session_id><status>active</status>"
            f"<path>{src}</path><path>{dst}</path></qkd_svc_link>"
        )
    out.append("</qkd_network>")
    return "".join(out)


def compute_path(input_xml: str, user: str) -> str:
    root = etree.fromstring(input_xml)
    src = root.findtext(f"{{{NS}}}src_node")
    dst = root.findtext(f"{{{NS}}}dst_node")
    k = root.findtext(f"{{{NS}}}k")
    return (
        f'<compute-path xmlns="{NS}"><path><index>1</index><node>{src}</node><node>{dst}</node>'
        f"<bottleneck_bps>{k}000</bottleneck_bps><hop><span_id>ab</span_id><span_class>green</span_class>"
        "<band>O</band><predicted_skr_bps>5000</predicted_skr_bps><available_bps>4000</available_bps>"
        "</hop></path></compute-path>"
    )


def make_backend(schema: SchemaContext, **kw: Any) -> MemoryBackend:
    backend = MemoryBackend(
        schema,
        {f"{ORCH}:compute-path": compute_path},
        state=derived_state,
        config_xml=INITIAL,
        **kw,
    )

    async def delete_session(input_xml: str, user: str) -> str:
        sid = etree.fromstring(input_xml).findtext(f"{{{NS}}}session_id")
        root = etree.fromstring(f"<r>{backend.config_xml()}</r>")
        for link in root.iter(f"{{{NS}}}qkd_svc_link"):
            if link.findtext(f"{{{NS}}}session_id") == sid:
                link.getparent().remove(link)
        await backend.replace_config("".join(etree.tostring(c, encoding="unicode") for c in root), user=user)
        return ""

    backend.add_handler(f"{ORCH}:delete-session", delete_session)
    return backend


@pytest.fixture(scope="module")
def schema() -> SchemaContext:
    return northbound_schema()


@pytest.fixture
def backend(schema: SchemaContext) -> MemoryBackend:
    return make_backend(schema)


@pytest.fixture
async def client(backend: MemoryBackend) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_app(backend))) as c:
        yield c


Client = TestClient[web.Request, web.Application]


def js(body: Any) -> dict[str, Any]:
    return {"data": json.dumps(body), "headers": {"Content-Type": JSON}}


def xs(body: str) -> dict[str, Any]:
    return {"data": body, "headers": {"Content-Type": XML, "Accept": XML}}


def the_error(doc: dict[str, Any]) -> dict[str, Any]:
    """Check an ietf-restconf:errors JSON body (RFC 8040 section 7.1) and return its first error."""
    assert set(doc) == {"ietf-restconf:errors"}, doc
    errors = doc["ietf-restconf:errors"]["error"]
    assert isinstance(errors, list) and errors
    for e in errors:
        assert set(e) <= ERROR_MEMBERS, e
        assert e["error-type"] in ERROR_TYPES
        assert isinstance(e["error-tag"], str) and e["error-tag"]
    first: dict[str, Any] = errors[0]
    return first


async def error_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == JSON
    return the_error(await resp.json(content_type=JSON))


def xml_error(text: str) -> etree._Element:
    """Check an ietf-restconf:errors XML body and return its first <error>."""
    root = etree.fromstring(text.encode())
    assert root.tag == f"{{{RC_NS}}}errors"
    errors = root.findall(f"{{{RC_NS}}}error")
    assert errors
    order = ["error-type", "error-tag", "error-app-tag", "error-path", "error-message", "error-info"]
    for e in errors:
        names = [etree.QName(c).localname for c in e]
        assert names == [n for n in order if n in names], names
        assert e.findtext(f"{{{RC_NS}}}error-type") in ERROR_TYPES
    return errors[0]


# ------------------------------------------------------------------------------------------------
# Discovery: host-meta, API root, yang-library
# ------------------------------------------------------------------------------------------------
async def test_host_meta_points_at_restconf(client: Client) -> None:
    resp = await client.get("/.well-known/host-meta")
    assert resp.status == 200
    assert resp.content_type == "application/xrd+xml"
    root = etree.fromstring((await resp.text()).encode())
    link = root.find("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")
    assert link is not None and link.get("rel") == "restconf" and link.get("href") == "/restconf"


async def test_host_meta_json(client: Client) -> None:
    resp = await client.get("/.well-known/host-meta.json")
    assert (await resp.json())["links"] == [{"rel": "restconf", "href": "/restconf"}]


async def test_root_resource_json_and_xml(client: Client) -> None:
    resp = await client.get("/restconf", headers={"Accept": JSON})
    assert resp.status == 200 and resp.content_type == JSON
    root = (await resp.json(content_type=JSON))["ietf-restconf:restconf"]
    assert root == {"data": {}, "operations": {}, "yang-library-version": "2019-01-04"}
    resp = await client.get("/restconf", headers={"Accept": XML})
    assert resp.content_type == XML
    doc = etree.fromstring((await resp.text()).encode())
    assert doc.tag == f"{{{RC_NS}}}restconf"
    assert [etree.QName(c).localname for c in doc] == ["data", "operations", "yang-library-version"]
    assert doc.findtext(f"{{{RC_NS}}}yang-library-version") == "2019-01-04"


async def test_yang_library_version_resource(client: Client) -> None:
    resp = await client.get("/restconf/yang-library-version")
    assert await resp.json(content_type=JSON) == {"ietf-restconf:yang-library-version": "2019-01-04"}
    resp = await client.get("/restconf/yang-library-version", headers={"Accept": XML})
    doc = etree.fromstring((await resp.text()).encode())
    assert doc.tag == f"{{{RC_NS}}}yang-library-version" and doc.text == "2019-01-04"


async def test_yang_library_json_lists_modules_with_fetchable_locations(client: Client) -> None:
    resp = await client.get(f"{DATA}/ietf-yang-library:yang-library")
    assert resp.status == 200, await resp.text()
    lib = (await resp.json(content_type=JSON))["ietf-yang-library:yang-library"]
    modules = {m["name"]: m for m in lib["module-set"][0]["module"]}
    orch = modules[ORCH]
    assert orch["revision"] == "2026-11-28" and orch["namespace"] == NS
    assert {"etsi-qkd-sdn-node", "ietf-yang-library", "ietf-restconf"} <= set(modules)
    assert "content-id" in lib
    location = orch["location"][0]
    assert location.endswith(f"/yang/{ORCH}@2026-11-28") and not location.startswith("file:")
    text = await (await client.get(location.split("/yang/", 1)[1].join(["/yang/", ""]))).text()
    assert text.startswith(f"module {ORCH} {{")


async def test_yang_library_xml(client: Client) -> None:
    resp = await client.get(f"{DATA}/ietf-yang-library:yang-library", headers={"Accept": XML})
    assert resp.status == 200 and resp.content_type == XML
    doc = etree.fromstring((await resp.text()).encode())
    assert doc.tag == f"{{{YL_NS}}}yang-library"
    names = doc.xpath("y:module-set/y:module/y:name/text()", namespaces={"y": YL_NS})
    assert ORCH in names


async def test_yang_library_is_state_data(client: Client) -> None:
    resp = await client.get(f"{DATA}/ietf-yang-library:yang-library?content=config")
    await error_of(resp, 404)
    resp = await client.get(f"{DATA}/ietf-yang-library:yang-library?content=nonconfig&depth=1")
    assert resp.status == 200
    resp = await client.put(f"{DATA}/ietf-yang-library:yang-library", **js({}))
    assert resp.status == 405 and "PUT" not in resp.headers["Allow"]


async def test_restconf_monitoring_capabilities(client: Client) -> None:
    resp = await client.get(f"{DATA}/ietf-restconf-monitoring:restconf-state/capabilities")
    caps = (await resp.json(content_type=JSON))["ietf-restconf-monitoring:capabilities"]["capability"]
    assert "urn:ietf:params:restconf:capability:defaults:1.0?basic-mode=explicit" in caps
    assert "urn:ietf:params:restconf:capability:depth:1.0" in caps


# ------------------------------------------------------------------------------------------------
# GET: encodings and query parameters
# ------------------------------------------------------------------------------------------------
async def test_get_datastore_json(client: Client) -> None:
    resp = await client.get(f"{DATA}?content=config")
    assert resp.status == 200 and resp.content_type == JSON
    data = (await resp.json(content_type=JSON))["ietf-restconf:data"]
    assert list(data) == [f"{ORCH}:qkd_network"]
    net = data[f"{ORCH}:qkd_network"]
    assert [n["qkdn_id"] for n in net["qkd_node"]] == [A, B, C]
    span = net["qkd_phys_link"][1]
    assert span["length_km"] == "120.5" and span["extra_loss_db"] == "1.5"  # decimal64: strings


async def test_get_datastore_xml(client: Client) -> None:
    resp = await client.get(DATA, headers={"Accept": XML})
    assert resp.status == 200 and resp.content_type == XML
    doc = etree.fromstring((await resp.text()).encode())
    assert doc.tag == f"{{{RC_NS}}}data"
    assert doc.find(f"{{{NS}}}qkd_network") is not None


async def test_get_list_entry_json_and_xml(client: Client) -> None:
    resp = await client.get(NODE_A)
    assert resp.status == 200
    entry = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_node"]
    assert entry == [
        {
            "qkdn_id": A,
            "name": "amsterdam",
            "location": "Amsterdam",
            "netconf": {"host": "10.0.0.1"},
            "status": "reachable",
        }
    ]
    resp = await client.get(NODE_A, headers={"Accept": XML})
    doc = etree.fromstring((await resp.text()).encode())
    assert doc.tag == f"{{{NS}}}qkd_node" and doc.findtext(f"{{{NS}}}name") == "amsterdam"


async def test_get_leaf_and_leaf_list_entry(client: Client) -> None:
    resp = await client.get(f"{NODE_A}/name")
    assert await resp.json(content_type=JSON) == {f"{ORCH}:name": "amsterdam"}
    resp = await client.get(f"{NET}/qkd_phys_link=ab/bands=O")
    assert await resp.json(content_type=JSON) == {f"{ORCH}:bands": ["O"]}
    resp = await client.get(f"{NET}/qkd_phys_link=ab/bands=C")
    await error_of(resp, 404)


async def test_get_missing_entry_is_404(client: Client) -> None:
    err = await error_of(await client.get(NODE_D), 404)
    assert err["error-tag"] == "invalid-value"
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_node[qkdn_id='{D}']"


async def test_get_empty_non_presence_container(schema: SchemaContext) -> None:
    async with TestClient(TestServer(build_app(MemoryBackend(schema)))) as c:
        resp = await c.get(NET)
        assert resp.status == 200
        assert await resp.json(content_type=JSON) == {f"{ORCH}:qkd_network": {}}
        resp = await c.get(f"{DATA}?content=config")
        assert await resp.json(content_type=JSON) == {"ietf-restconf:data": {}}


async def test_depth(client: Client) -> None:
    resp = await client.get(f"{NET}?depth=1")
    assert await resp.json(content_type=JSON) == {f"{ORCH}:qkd_network": {}}
    resp = await client.get(f"{NET}?depth=2&content=config")
    net = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_network"]
    # List entries at the last level keep their keys, nothing else.
    assert net["qkd_node"] == [{"qkdn_id": A}, {"qkdn_id": B}, {"qkdn_id": C}]
    assert net["network_id"] == "00000000-0000-4000-8000-000000000000"
    resp = await client.get(f"{NET}?depth=3&content=config")
    node = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_network"]["qkd_node"][0]
    assert node["netconf"] == {} and node["name"] == "amsterdam"
    resp = await client.get(f"{NET}?depth=unbounded&content=config")
    node = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_network"]["qkd_node"][0]
    assert node["netconf"] == {"host": "10.0.0.1"}
    resp = await client.get(f"{DATA}?depth=1&content=config")
    assert await resp.json(content_type=JSON) == {"ietf-restconf:data": {f"{ORCH}:qkd_network": {}}}
    for bad in ("0", "65536", "two", "-1"):
        await error_of(await client.get(f"{NET}?depth={bad}"), 400)


async def test_fields(client: Client) -> None:
    resp = await client.get(f"{NET}?fields=qkd_node(name;netconf/host)&content=config")
    net = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_network"]
    assert list(net) == ["qkd_node"]
    assert net["qkd_node"][0] == {"qkdn_id": A, "name": "amsterdam", "netconf": {"host": "10.0.0.1"}}
    resp = await client.get(f"{NET}?fields={ORCH}:network_id;qkd_phys_link/length_km")
    net = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_network"]
    assert net == {
        "network_id": "00000000-0000-4000-8000-000000000000",
        "qkd_phys_link": [{"span_id": "ab", "length_km": "40.0"}, {"span_id": "bc", "length_km": "120.5"}],
    }
    # Fields and depth: selected nodes and their ancestors have depth 1.
    resp = await client.get(f"{NET}?fields=qkd_node/netconf&depth=1")
    node = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_network"]["qkd_node"][0]
    assert node == {"qkdn_id": A, "netconf": {}}
    resp = await client.get(f"{DATA}?fields={ORCH}:qkd_network/qkd_svc_link/session_id")
    data = (await resp.json(content_type=JSON))["ietf-restconf:data"]
    assert data == {f"{ORCH}:qkd_network": {"qkd_svc_link": [{"session_id": S1}]}}
    resp = await client.get(f"{NET}?fields=qkd_node(name)", headers={"Accept": XML})
    doc = etree.fromstring((await resp.text()).encode())
    assert [etree.QName(c).localname for c in doc[0]] == ["qkdn_id", "name"]


@pytest.mark.parametrize(
    "expr", ["bogus", "qkd_node(bogus)", "qkd_node(", "qkd_node;;name", "name/x", "qkd_node()", "nomod:x"]
)
async def test_bad_fields_are_400(client: Client, expr: str) -> None:
    err = await error_of(await client.get(f"{NET}?fields={expr}"), 400)
    assert err["error-tag"] == "invalid-value"


async def test_content(client: Client) -> None:
    resp = await client.get(f"{NODE_A}?content=config")
    entry = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_node"][0]
    assert "status" not in entry and entry["name"] == "amsterdam"
    resp = await client.get(f"{NODE_A}?content=nonconfig")
    assert (await resp.json(content_type=JSON))[f"{ORCH}:qkd_node"] == [{"qkdn_id": A, "status": "reachable"}]
    resp = await client.get(f"{NET}/qkd_svc_link={S1}?content=all")
    link = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_svc_link"][0]
    assert link["requested_rate_bps"] == "1000" and link["status"] == "active" and link["path"] == [A, C]
    await error_of(await client.get(f"{NODE_A}/name?content=nonconfig"), 404)
    await error_of(await client.get(f"{NODE_A}/status?content=config"), 404)
    await error_of(await client.get(f"{NODE_A}?content=everything"), 400)


async def test_with_defaults(client: Client) -> None:
    # port 830 is a default; role is set explicitly to its default on node B.
    async def netconf_and_role(mode: str, node: str = A) -> dict[str, Any]:
        query = f"?with-defaults={mode}&content=config" if mode else "?content=config"
        resp = await client.get(f"{NET}/qkd_node={node}{query}")
        assert resp.status == 200, await resp.text()
        entry: dict[str, Any] = (await resp.json(content_type=JSON))[f"{ORCH}:qkd_node"][0]
        return entry

    assert "port" not in (await netconf_and_role(""))["netconf"]
    assert "port" not in (await netconf_and_role("explicit"))["netconf"]
    all_ = await netconf_and_role("report-all")
    assert all_["netconf"]["port"] == 830 and all_["trusted"] is True and all_["role"] == "endpoint"
    b_explicit = await netconf_and_role("explicit", B)
    assert b_explicit["trusted"] is True  # set explicitly, even though it equals the default
    b_trim = await netconf_and_role("trim", B)
    assert "trusted" not in b_trim and b_trim["role"] == "relay"
    tagged = await netconf_and_role("report-all-tagged")
    assert tagged["netconf"]["@port"] == {"ietf-netconf-with-defaults:default": True}
    resp = await client.get(
        f"{NODE_A}?with-defaults=report-all-tagged&content=config", headers={"Accept": XML}
    )
    doc = etree.fromstring((await resp.text()).encode())
    port = doc.find(f"{{{NS}}}netconf/{{{NS}}}port")
    assert port is not None and port.text == "830" and port.get(f"{{{WD_NS}}}default") == "true"
    await error_of(await client.get(f"{NODE_A}?with-defaults=all"), 400)


async def test_get_of_a_default_leaf_reports_its_value(client: Client) -> None:
    resp = await client.get(f"{NODE_A}/netconf/port")
    assert await resp.json(content_type=JSON) == {f"{ORCH}:port": 830}
    await error_of(await client.get(f"{NODE_A}/netconf/port?with-defaults=trim"), 404)


async def test_head_has_headers_and_no_body(client: Client) -> None:
    get = await client.get(NET)
    body = await get.read()
    resp = await client.head(NET)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(body))
    assert resp.headers["ETag"] == get.headers["ETag"]
    assert await resp.read() == b""


async def test_query_parameter_rules(client: Client) -> None:
    await error_of(await client.get(f"{NET}?depth=1&depth=2"), 400)
    err = await error_of(await client.get(f"{NET}?color=blue"), 400)
    assert "unknown" in err["error-message"]
    err = await error_of(await client.delete(f"{NODE_A}?depth=1"), 400)
    assert "not allowed" in err["error-message"]
    await error_of(await client.get("/restconf/operations?depth=1"), 400)


# ------------------------------------------------------------------------------------------------
# Resource identifiers
# ------------------------------------------------------------------------------------------------
async def test_uri_errors(client: Client) -> None:
    err = await error_of(await client.get(f"{DATA}/qkd_network"), 400)
    assert "module-qualified" in err["error-message"]
    err = await error_of(await client.get(f"{DATA}/nomodule:qkd_network"), 400)
    assert err["error-tag"] == "unknown-namespace"
    err = await error_of(await client.get(f"{NET}/bogus"), 400)
    assert err["error-tag"] == "unknown-element"
    await error_of(await client.get(f"{NET}/qkd_node"), 400)  # list without keys
    await error_of(await client.get(f"{NET}/qkd_node={A},{B}"), 400)  # one key too many
    await error_of(await client.get(f"{NET}=x"), 400)  # a container has no keys
    await error_of(await client.get(f"{NET}//qkd_node={A}"), 400)
    await error_of(await client.get("/restconf/nothing"), 404)


async def test_percent_encoded_keys(client: Client) -> None:
    span = {
        f"{ORCH}:qkd_phys_link": [
            {"span_id": "ams:bru.2", "node_a": A, "node_b": B, "length_km": "10", "bands": ["C"]}
        ]
    }
    resp = await client.post(NET, **js(span))
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    assert location == f"{NET}/qkd_phys_link=ams%3Abru.2"
    resp = await client.get(location)
    assert (await resp.json(content_type=JSON))[f"{ORCH}:qkd_phys_link"][0]["span_id"] == "ams:bru.2"
    resp = await client.get(f"{NET}/qkd_phys_link=ams%3abru%2E2/length_km")
    assert await resp.json(content_type=JSON) == {f"{ORCH}:length_km": "10.0"}


async def test_module_qualified_later_segments_are_accepted(client: Client) -> None:
    resp = await client.get(f"{NET}/{ORCH}:qkd_node={A}/{ORCH}:name")
    assert await resp.json(content_type=JSON) == {f"{ORCH}:name": "amsterdam"}


# ------------------------------------------------------------------------------------------------
# Writes: status codes per method
# ------------------------------------------------------------------------------------------------
NEW_NODE_JSON = {f"{ORCH}:qkd_node": [{"qkdn_id": D, "name": "delft", "netconf": {"host": "10.0.0.4"}}]}
NEW_NODE_XML = (
    f'<qkd_node xmlns="{NS}"><qkdn_id>{D}</qkdn_id><name>delft</name>'
    "<netconf><host>10.0.0.4</host><port>2830</port></netconf></qkd_node>"
)


async def test_post_creates_child_then_409(client: Client, backend: MemoryBackend) -> None:
    resp = await client.post(NET, **js(NEW_NODE_JSON))
    assert resp.status == 201, await resp.text()
    assert resp.headers["Location"] == NODE_D
    assert "ETag" in resp.headers and "Last-Modified" in resp.headers
    assert f"<qkdn_id>{D}</qkdn_id>" in backend.config_xml()
    resp = await client.get(resp.headers["Location"])
    assert (await resp.json(content_type=JSON))[f"{ORCH}:qkd_node"][0]["name"] == "delft"
    err = await error_of(await client.post(NET, **js(NEW_NODE_JSON)), 409)
    assert err["error-tag"] == "data-exists"
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_node[qkdn_id='{D}']"


async def test_post_xml_and_post_to_datastore(schema: SchemaContext) -> None:
    backend = MemoryBackend(schema)
    async with TestClient(TestServer(build_app(backend))) as c:
        body = f'<qkd_network xmlns="{NS}"><network_id>{S2}</network_id></qkd_network>'
        resp = await c.post(DATA, **xs(body))
        assert resp.status == 201 and resp.headers["Location"] == NET
        assert (await c.post(DATA, **xs(body))).status == 409
        resp = await c.post(NET, **xs(NEW_NODE_XML))
        assert resp.status == 201 and resp.headers["Location"] == NODE_D
        resp = await c.get(f"{NODE_D}/netconf/port")
        assert await resp.json(content_type=JSON) == {f"{ORCH}:port": 2830}


async def test_post_below_missing_entry_is_404(client: Client) -> None:
    await error_of(await client.post(NODE_D, **js({f"{ORCH}:name": "x"})), 404)


async def test_post_leaf_and_leaf_list_value(client: Client) -> None:
    resp = await client.post(f"{NET}/qkd_node={C}", **js({f"{ORCH}:location": "Köln"}))
    assert resp.status == 201 and resp.headers["Location"] == f"{NET}/qkd_node={C}/location"
    resp = await client.post(f"{NET}/qkd_phys_link=ab", **js({f"{ORCH}:bands": ["C"]}))
    assert resp.status == 201
    assert resp.headers["Location"] == f"{NET}/qkd_phys_link=ab/bands=C"
    resp = await client.get(f"{NET}/qkd_phys_link=ab/bands=C")
    assert resp.status == 200


async def test_post_of_more_than_one_resource_is_400(client: Client) -> None:
    two = {f"{ORCH}:qkd_node": [NEW_NODE_JSON[f"{ORCH}:qkd_node"][0], {"qkdn_id": S2}]}
    await error_of(await client.post(NET, **js(two)), 400)


async def test_put_creates_201_then_replaces_204(client: Client) -> None:
    resp = await client.put(NODE_D, **js(NEW_NODE_JSON))
    assert resp.status == 201, await resp.text()
    replacement = {f"{ORCH}:qkd_node": [{"qkdn_id": D, "netconf": {"host": "10.9.9.9"}}]}
    resp = await client.put(NODE_D, **js(replacement))
    assert resp.status == 204
    entry = (await (await client.get(f"{NODE_D}?content=config")).json(content_type=JSON))[f"{ORCH}:qkd_node"]
    assert entry == [{"qkdn_id": D, "netconf": {"host": "10.9.9.9"}}]  # name is gone: replaced


async def test_put_xml_leaf(client: Client) -> None:
    resp = await client.put(f"{NODE_A}/name", **xs(f'<name xmlns="{NS}">adam</name>'))
    assert resp.status == 204
    assert await (await client.get(f"{NODE_A}/name")).json(content_type=JSON) == {f"{ORCH}:name": "adam"}


async def test_put_key_mismatch_is_400(client: Client, backend: MemoryBackend) -> None:
    before = backend.config_xml()
    err = await error_of(await client.put(NODE_D, **js({f"{ORCH}:qkd_node": [{"qkdn_id": C}]})), 400)
    assert err["error-tag"] == "invalid-value" and "key" in err["error-message"]
    err = await error_of(await client.put(NODE_D, **js({f"{ORCH}:name": "x"})), 400)
    assert "target resource" in err["error-message"]
    assert backend.config_xml() == before


async def test_put_datastore_replaces_everything(client: Client, backend: MemoryBackend) -> None:
    body = {
        "ietf-restconf:data": {
            f"{ORCH}:qkd_network": {"qkd_node": [{"qkdn_id": D, "netconf": {"host": "h"}}]}
        }
    }
    resp = await client.put(DATA, **js(body))
    assert resp.status == 204, await resp.text()
    assert A not in backend.config_xml() and D in backend.config_xml()
    resp = await client.put(DATA, **xs(f'<data xmlns="{RC_NS}"/>'))
    assert resp.status == 204 and backend.config_xml() == ""
    err = await error_of(await client.put(DATA, **js({f"{ORCH}:qkd_network": {}})), 400)
    assert "ietf-restconf:data" in err["error-message"]


async def test_patch_merges_and_keeps_siblings(client: Client) -> None:
    patch = {f"{ORCH}:qkd_node": [{"qkdn_id": A, "location": "Haarlem", "netconf": {"port": 2022}}]}
    resp = await client.patch(NODE_A, **js(patch))
    assert resp.status == 204, await resp.text()
    entry = (await (await client.get(f"{NODE_A}?content=config")).json(content_type=JSON))[
        f"{ORCH}:qkd_node"
    ][0]
    assert entry["location"] == "Haarlem"
    assert entry["name"] == "amsterdam"  # sibling kept
    assert entry["netconf"] == {"host": "10.0.0.1", "port": 2022}  # merged inside the container too


async def test_patch_leaf_xml(client: Client) -> None:
    resp = await client.patch(
        f"{NET}/qkd_phys_link=bc/length_km", **xs(f'<length_km xmlns="{NS}">99</length_km>')
    )
    assert resp.status == 204
    span = await (await client.get(f"{NET}/qkd_phys_link=bc?content=config")).json(content_type=JSON)
    assert span[f"{ORCH}:qkd_phys_link"][0]["length_km"] == "99.0"
    assert span[f"{ORCH}:qkd_phys_link"][0]["extra_loss_db"] == "1.5"


async def test_patch_datastore_merges(client: Client, backend: MemoryBackend) -> None:
    body = {
        "ietf-restconf:data": {
            f"{ORCH}:qkd_network": {"qkd_node": [{"qkdn_id": D, "netconf": {"host": "h"}}]}
        }
    }
    resp = await client.patch(DATA, **js(body))
    assert resp.status == 204
    assert A in backend.config_xml() and D in backend.config_xml()


async def test_patch_missing_target_is_404(client: Client) -> None:
    err = await error_of(await client.patch(NODE_D, **js(NEW_NODE_JSON)), 404)
    assert err["error-tag"] == "invalid-value"


async def test_patch_key_change_is_400(client: Client) -> None:
    await error_of(await client.patch(NODE_A, **js({f"{ORCH}:qkd_node": [{"qkdn_id": D}]})), 400)


async def test_delete_204_then_404(client: Client, backend: MemoryBackend) -> None:
    resp = await client.delete(f"{NET}/qkd_svc_link={S1}")
    assert resp.status == 204
    assert S1 not in backend.config_xml()
    err = await error_of(await client.delete(f"{NET}/qkd_svc_link={S1}"), 404)
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_svc_link[session_id='{S1}']"
    assert (await client.delete(f"{NODE_A}/location")).status == 204
    assert (await client.get(f"{NODE_A}/location")).status == 404


async def test_delete_referenced_node_is_refused_with_path(client: Client, backend: MemoryBackend) -> None:
    before = backend.config_xml()
    err = await error_of(await client.delete(NODE_A), 409)
    assert err["error-tag"] == "data-missing" and err["error-app-tag"] == "instance-required"
    assert err["error-path"].startswith(f"/{ORCH}:qkd_network/")
    assert backend.config_xml() == before


async def test_methods_not_allowed(client: Client) -> None:
    resp = await client.put(f"{NODE_A}/status", **js({f"{ORCH}:status": "unknown"}))
    err = await error_of(resp, 405)
    assert err["error-tag"] == "operation-not-supported"
    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"
    resp = await client.delete(DATA)
    assert resp.status == 405 and "DELETE" not in resp.headers["Allow"]
    resp = await client.post(f"{NODE_A}/name", **js({f"{ORCH}:x": 1}))
    assert resp.status == 405 and "POST" not in resp.headers["Allow"]
    resp = await client.put("/restconf", **js({}))
    assert resp.status == 405
    resp = await client.get(f"/restconf/operations/{ORCH}:compute-path")
    assert resp.status == 405 and resp.headers["Allow"] == "POST, OPTIONS"


async def test_options(client: Client) -> None:
    resp = await client.options(NODE_A)
    assert resp.status == 200
    assert resp.headers["Allow"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert JSON in resp.headers["Accept-Patch"] and XML in resp.headers["Accept-Patch"]
    resp = await client.options(f"{NODE_A}/name")
    assert "POST" not in resp.headers["Allow"]
    resp = await client.options(DATA)
    assert resp.headers["Allow"] == "GET, HEAD, POST, PUT, PATCH, OPTIONS"


# ------------------------------------------------------------------------------------------------
# Bad bodies
# ------------------------------------------------------------------------------------------------
async def test_malformed_json_and_xml(client: Client) -> None:
    resp = await client.post(NET, data='{"qsdn-orchestrator:qkd_node": [', headers={"Content-Type": JSON})
    err = await error_of(resp, 400)
    assert err["error-tag"] == "malformed-message"
    resp = await client.post(NET, data="<qkd_node xmlns='x'>", headers={"Content-Type": XML, "Accept": XML})
    assert resp.status == 400
    assert xml_error(await resp.text()).findtext(f"{{{RC_NS}}}error-tag") == "malformed-message"
    resp = await client.post(NET, data=b"", headers={"Content-Type": JSON})
    await error_of(resp, 400)


async def test_xml_with_doctype_is_refused(client: Client) -> None:
    body = '<!DOCTYPE x [<!ENTITY e "boom">]><qkd_node xmlns="urn:qsdn:yang:qsdn-orchestrator"/>'
    resp = await client.post(NET, data=body, headers={"Content-Type": XML, "Accept": JSON})
    err = await error_of(resp, 400)
    assert err["error-tag"] == "malformed-message"


async def test_unknown_leaf_error_path_points_at_it(client: Client) -> None:
    body = {f"{ORCH}:qkd_node": [{"qkdn_id": D, "netconf": {"host": "h", "hostname": "x"}}]}
    err = await error_of(await client.post(NET, **js(body)), 400)
    assert err["error-tag"] == "unknown-element"
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_node[qkdn_id='{D}']/netconf/hostname"


async def test_wrong_type_error_path(client: Client) -> None:
    body = {f"{ORCH}:qkd_node": [{"qkdn_id": A, "netconf": {"port": "eighty"}}]}
    err = await error_of(await client.patch(NODE_A, **js(body)), 400)
    assert err["error-tag"] == "invalid-value"
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_node[qkdn_id='{A}']/netconf/port"
    resp = await client.put(f"{NET}/qkd_phys_link=bc/length_km", **js({f"{ORCH}:length_km": "-3"}))
    err = await error_of(resp, 400)
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_phys_link[span_id='bc']/length_km"


async def test_state_leaf_in_body_is_refused(client: Client) -> None:
    body = {f"{ORCH}:qkd_node": [{"qkdn_id": A, "status": "reachable"}]}
    err = await error_of(await client.patch(NODE_A, **js(body)), 400)
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_node[qkdn_id='{A}']/status"


async def test_xml_error_path_declares_its_prefixes(client: Client) -> None:
    body = f'<qkd_node xmlns="{NS}"><qkdn_id>{A}</qkdn_id><netconf><port>x</port></netconf></qkd_node>'
    resp = await client.patch(NODE_A, **xs(body))
    assert resp.status == 400 and resp.content_type == XML
    error = xml_error(await resp.text())
    path = error.find(f"{{{RC_NS}}}error-path")
    assert path is not None
    assert (
        path.text
        == f"/qsdn-orch:qkd_network/qsdn-orch:qkd_node[qsdn-orch:qkdn_id='{A}']/qsdn-orch:netconf/qsdn-orch:port"
    )
    assert path.nsmap["qsdn-orch"] == NS


async def test_unqualified_json_member_is_refused(client: Client) -> None:
    err = await error_of(await client.post(NET, **js({"qkd_node": [{"qkdn_id": D}]})), 400)
    assert "module-qualified" in err["error-message"]


async def test_must_violation_is_400_with_app_tag(client: Client, backend: MemoryBackend) -> None:
    before = backend.config_xml()
    span = {f"{ORCH}:qkd_phys_link": [{"span_id": "loop", "node_a": A, "node_b": A, "length_km": "1"}]}
    err = await error_of(await client.post(NET, **js(span)), 400)
    assert err["error-app-tag"] == "same-node"
    assert err["error-message"] == "a fibre span joins two different nodes"  # the module's error-message
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_phys_link[span_id='loop']/node_b"
    assert backend.config_xml() == before


async def test_missing_mandatory_and_dangling_leafref(client: Client) -> None:
    err = await error_of(await client.post(NET, **js({f"{ORCH}:qkd_node": [{"qkdn_id": D}]})), 409)
    assert err["error-tag"] == "data-missing"
    assert err["error-path"] == f"/{ORCH}:qkd_network/qkd_node[qkdn_id='{D}']/netconf/host"
    span = {f"{ORCH}:qkd_phys_link": [{"span_id": "x", "node_a": A, "node_b": D, "length_km": "1"}]}
    err = await error_of(await client.post(NET, **js(span)), 409)
    assert err["error-app-tag"] == "instance-required"


# ------------------------------------------------------------------------------------------------
# Media types
# ------------------------------------------------------------------------------------------------
async def test_406_and_415(client: Client) -> None:
    err = await error_of(await client.get(NET, headers={"Accept": "text/html"}), 406)
    assert err["error-tag"] == "invalid-value"
    resp = await client.get(NET, headers={"Accept": "text/html, application/yang-data+xml;q=0.5"})
    assert resp.status == 200 and resp.content_type == XML
    resp = await client.get(NET, headers={"Accept": "application/yang-data+xml;q=0, */*"})
    assert resp.content_type == JSON
    resp = await client.put(f"{NODE_A}/name", data="adam", headers={"Content-Type": "text/plain"})
    await error_of(resp, 415)
    resp = await client.patch(NODE_A, data="{}", headers={"Content-Type": "application/yang-patch+json"})
    await error_of(resp, 415)
    assert JSON in resp.headers["Accept-Patch"]


async def test_error_follows_request_encoding_without_accept(client: Client) -> None:
    resp = await client.post(NET, data=f'<bogus xmlns="{NS}"/>', headers={"Content-Type": XML})
    assert resp.status == 400 and resp.content_type == XML
    xml_error(await resp.text())


async def test_generic_json_media_type_is_accepted(client: Client) -> None:
    resp = await client.get(NODE_A, headers={"Accept": "application/json"})
    assert resp.status == 200 and resp.content_type == JSON
    resp = await client.put(
        f"{NODE_A}/name", data=json.dumps({f"{ORCH}:name": "x"}), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 204


# ------------------------------------------------------------------------------------------------
# Entity tags and conditional requests
# ------------------------------------------------------------------------------------------------
async def test_etag_and_last_modified(client: Client) -> None:
    config = f"{NET}?content=config"
    resp = await client.get(config)
    etag = resp.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    last = resp.headers["Last-Modified"]
    assert (await client.get(DATA)).headers["ETag"] == etag  # one tag for the datastore
    resp = await client.get(config, headers={"If-None-Match": etag})
    assert resp.status == 304 and resp.headers["ETag"] == etag and await resp.read() == b""
    assert (await client.head(config, headers={"If-None-Match": etag})).status == 304
    # A configuration leaf holds no state: 304 without content=config too.
    assert (await client.get(f"{NODE_A}/name", headers={"If-None-Match": etag})).status == 304
    # The tag follows configuration only (RFC 8040 3.4.1.2): answers holding state are never 304.
    assert (await client.get(NET, headers={"If-None-Match": etag})).status == 200
    future = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)
    assert (await client.get(config, headers={"If-Modified-Since": future})).status == 304
    past = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
    assert (await client.get(config, headers={"If-Modified-Since": past})).status == 200
    resp = await client.patch(NODE_A, **js({f"{ORCH}:qkd_node": [{"qkdn_id": A, "name": "x"}]}))
    assert resp.status == 204
    new = resp.headers["ETag"]
    assert new != etag
    assert (await client.get(NET)).headers["ETag"] == new
    assert (await client.get(config, headers={"If-None-Match": etag})).status == 200
    assert datetime.strptime(resp.headers["Last-Modified"], "%a, %d %b %Y %H:%M:%S GMT") >= datetime.strptime(
        last, "%a, %d %b %Y %H:%M:%S GMT"
    )


async def test_etag_changes_when_the_backend_changes_the_datastore(
    client: Client, backend: MemoryBackend
) -> None:
    config = f"{NET}?content=config"
    etag = (await client.get(config)).headers["ETag"]
    assert (await client.get(config, headers={"If-None-Match": etag})).status == 304
    await backend.replace_config(INITIAL.replace("amsterdam", "amstel"), user="controller")
    assert (await client.get(config, headers={"If-None-Match": etag})).status == 200


async def test_if_match(client: Client, backend: MemoryBackend) -> None:
    etag = (await client.get(NET)).headers["ETag"]
    body = js({f"{ORCH}:name": "adam"})
    before = backend.config_xml()
    resp = await client.put(
        f"{NODE_A}/name", data=body["data"], headers={**body["headers"], "If-Match": '"stale"'}
    )
    err = await error_of(resp, 412)
    assert err["error-tag"] == "operation-failed"
    assert backend.config_xml() == before
    resp = await client.put(
        f"{NODE_A}/name", data=body["data"], headers={**body["headers"], "If-Match": etag}
    )
    assert resp.status == 204
    # Create-only with If-None-Match: *, update-only with If-Match: *.
    resp = await client.put(
        NODE_A,
        data=json.dumps({f"{ORCH}:qkd_node": [{"qkdn_id": A, "netconf": {"host": "h"}}]}),
        headers={"Content-Type": JSON, "If-None-Match": "*"},
    )
    await error_of(resp, 412)
    resp = await client.put(
        NODE_D, data=json.dumps(NEW_NODE_JSON), headers={"Content-Type": JSON, "If-Match": "*"}
    )
    await error_of(resp, 412)
    resp = await client.put(
        NODE_D, data=json.dumps(NEW_NODE_JSON), headers={"Content-Type": JSON, "If-None-Match": "*"}
    )
    assert resp.status == 201


async def test_if_unmodified_since(client: Client) -> None:
    past = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
    resp = await client.delete(f"{NODE_A}/location", headers={"If-Unmodified-Since": past})
    await error_of(resp, 412)
    future = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)
    resp = await client.delete(f"{NODE_A}/location", headers={"If-Unmodified-Since": future})
    assert resp.status == 204


# ------------------------------------------------------------------------------------------------
# Operations
# ------------------------------------------------------------------------------------------------
#: The orchestrator module's operations, in schema order (RFC 8040 section 3.3.2 lists every rpc).
OPERATIONS = (
    "compute-path",
    "create-session",
    "delete-session",
    "get-node-data",
    "compute-entanglement-path",
)


async def test_operations_listing(client: Client) -> None:
    resp = await client.get("/restconf/operations")
    ops = (await resp.json(content_type=JSON))["ietf-restconf:operations"]
    assert ops == {f"{ORCH}:{n}": [None] for n in OPERATIONS}
    resp = await client.get("/restconf/operations", headers={"Accept": XML})
    doc = etree.fromstring((await resp.text()).encode())
    assert doc.tag == f"{{{RC_NS}}}operations"
    assert [c.tag for c in doc] == [f"{{{NS}}}{n}" for n in OPERATIONS]


async def test_invoke_json(client: Client) -> None:
    body = {f"{ORCH}:input": {"src_node": A, "dst_node": C, "k": 2}}
    resp = await client.post(f"/restconf/operations/{ORCH}:compute-path", **js(body))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == JSON
    out = await resp.json(content_type=JSON)
    assert list(out) == [f"{ORCH}:output"]
    path = out[f"{ORCH}:output"]["path"][0]
    assert path["node"] == [A, C] and path["bottleneck_bps"] == "2000"
    assert path["hop"] == [
        {
            "span_id": "ab",
            "span_class": "green",
            "band": "O",
            "predicted_skr_bps": "5000",
            "available_bps": "4000",
        }
    ]


async def test_invoke_xml_with_defaults_filled_in(client: Client) -> None:
    body = f'<input xmlns="{NS}"><src_node>{A}</src_node><dst_node>{B}</dst_node></input>'
    resp = await client.post(f"/restconf/operations/{ORCH}:compute-path", **xs(body))
    assert resp.status == 200 and resp.content_type == XML
    doc = etree.fromstring((await resp.text()).encode())
    assert doc.tag == f"{{{NS}}}output"
    assert doc.findtext(f"{{{NS}}}path/{{{NS}}}bottleneck_bps") == "4000"  # k defaults to 4


async def test_invoke_without_output_is_204(client: Client, backend: MemoryBackend) -> None:
    resp = await client.post(
        f"/restconf/operations/{ORCH}:delete-session", **js({f"{ORCH}:input": {"session_id": S1}})
    )
    assert resp.status == 204
    assert S1 not in backend.config_xml()


async def test_invoke_errors(client: Client) -> None:
    url = f"/restconf/operations/{ORCH}:compute-path"
    err = await error_of(await client.post(url, **js({f"{ORCH}:input": {"src_node": A}})), 409)
    assert err["error-tag"] == "data-missing" and err["error-path"].endswith("dst_node")
    err = await error_of(await client.post(url, **js({f"{ORCH}:input": {"src_node": A, "dst_node": D}})), 409)
    assert err["error-app-tag"] == "instance-required"
    err = await error_of(await client.post(url, **js({f"{ORCH}:input": {"src_node": A, "speed": 1}})), 400)
    assert err["error-tag"] == "unknown-element"
    await error_of(await client.post(url, **js({"src_node": A})), 400)
    await error_of(
        await client.post(url, **js({f"{ORCH}:input": {"src_node": A, "dst_node": C, "k": 0}})), 400
    )
    await error_of(await client.post(f"/restconf/operations/{ORCH}:teleport", **js({})), 404)
    await error_of(await client.post("/restconf/operations/ietf-netconf:get-config", **js({})), 404)
    err = await error_of(
        await client.post(
            f"/restconf/operations/{ORCH}:create-session",
            **js({f"{ORCH}:input": {"src_node": A, "dst_node": C, "requested_rate_bps": "10"}}),
        ),
        501,
    )
    assert err["error-tag"] == "operation-not-supported"


async def test_invalid_backend_output_is_500(schema: SchemaContext) -> None:
    backend = make_backend(schema)
    backend.add_handler(
        f"{ORCH}:compute-path", lambda i, u: f'<compute-path xmlns="{NS}"><nope/></compute-path>'
    )
    async with TestClient(TestServer(build_app(backend))) as c:
        body = {f"{ORCH}:input": {"src_node": A, "dst_node": C}}
        err = await error_of(await c.post(f"/restconf/operations/{ORCH}:compute-path", **js(body)), 500)
        assert err["error-tag"] == "operation-failed"


async def test_invalid_backend_state_is_500(schema: SchemaContext) -> None:
    def bad_state(config: str) -> str:
        return f'<qkd_network xmlns="{NS}"><qkd_node><qkdn_id>{A}</qkdn_id><status>dazed</status></qkd_node></qkd_network>'

    backend = MemoryBackend(schema, state=bad_state, config_xml=INITIAL)
    async with TestClient(TestServer(build_app(backend))) as c:
        err = await error_of(await c.get(NODE_A), 500)
        assert err["error-tag"] == "operation-failed" and "does not validate" in err["error-message"]
        assert (await c.get(f"{NODE_A}?content=config")).status == 200


async def test_concurrent_writes_are_serialised(client: Client) -> None:
    async def patch(leaf: str, value: str) -> int:
        body = {f"{ORCH}:qkd_node": [{"qkdn_id": A, leaf: value}]}
        return (await client.patch(NODE_A, **js(body))).status

    assert (
        await asyncio.gather(*(patch(leaf, f"v{i}") for i, leaf in enumerate(["name", "location"] * 5)))
        == [204] * 10
    )
    entry = (await (await client.get(f"{NODE_A}?content=config")).json(content_type=JSON))[
        f"{ORCH}:qkd_node"
    ][0]
    assert entry["name"] == "v8" and entry["location"] == "v9"  # the last write of each leaf, none lost


async def test_node_015_data_through_the_controller(schema: SchemaContext) -> None:
    asked: list[tuple[str, str]] = []

    async def node_data(qkdn_id: str, content: str) -> str:
        asked.append((qkdn_id, content))
        return NODE_015

    async with TestClient(TestServer(build_app(make_backend(schema, node_data=node_data)))) as c:
        url = f"/restconf/operations/{ORCH}:get-node-data"
        resp = await c.post(url, **js({f"{ORCH}:input": {"qkdn_id": A, "content": "config"}}))
        assert resp.status == 200, await resp.text()
        data = (await resp.json(content_type=JSON))[f"{ORCH}:output"]["data"]
        node = data["etsi-qkd-sdn-node:qkd_node"]
        assert node["qkdn_id"] == A
        assert node["qkdn_status"] == "etsi-qkd-node-types:OPERATING"  # RFC 7951 identity, not "t:OPERATING"
        assert node["qkd_interfaces"]["qkd_interface"] == [{"qkdi_id": 1}]
        resp = await c.post(url, **xs(f'<input xmlns="{NS}"><qkdn_id>{A}</qkdn_id></input>'))
        doc = etree.fromstring((await resp.text()).encode())
        status = doc.find(f"{{{NS}}}data/{{{ETSI_NS}}}qkd_node/{{{ETSI_NS}}}qkdn_status")
        assert status is not None
        prefix, _, name = (status.text or "").partition(":")
        assert status.nsmap[prefix] == ETSI_TYPES_NS and name == "OPERATING"
    assert asked == [(A, "config"), (A, "all")]


async def test_unreachable_node_is_resource_denied(client: Client) -> None:
    resp = await client.post(
        f"/restconf/operations/{ORCH}:get-node-data", **js({f"{ORCH}:input": {"qkdn_id": B}})
    )
    err = await error_of(resp, 409)
    assert err["error-tag"] == "resource-denied" and err["error-info"] == {"qkdn_id": B}


# ------------------------------------------------------------------------------------------------
# Authentication, plain client sessions
# ------------------------------------------------------------------------------------------------
def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_basic_authentication(backend: MemoryBackend) -> None:
    app = build_app(backend, users={"operator": "s3cret"})
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = str(server.make_url(NET))
        async with session.get(url) as resp:
            err = await error_of(resp, 401)
            assert err["error-tag"] == "access-denied"
            assert resp.headers["WWW-Authenticate"].startswith('Basic realm="qsdn"')
        async with session.get(url, headers=basic("operator", "wrong")) as resp:
            assert resp.status == 401
        async with session.get(url, headers=basic("nobody", "s3cret")) as resp:
            assert resp.status == 401
        async with session.get(url, headers={"Authorization": "Basic !!!"}) as resp:
            assert resp.status == 401
        async with session.get(url, headers=basic("operator", "s3cret")) as resp:
            assert resp.status == 200
        async with session.get(str(server.make_url("/.well-known/host-meta"))) as resp:
            assert resp.status == 200


async def test_writes_carry_the_user(schema: SchemaContext) -> None:
    users: list[str] = []
    backend = make_backend(schema)

    async def who(input_xml: str, user: str) -> str:
        users.append(user)
        return ""

    backend.add_handler(f"{ORCH}:create-session", who)
    async with (
        TestServer(build_app(backend, users={"ops": "pw"})) as server,
        aiohttp.ClientSession(headers=basic("ops", "pw")) as session,
    ):
        body = json.dumps({f"{ORCH}:input": {"src_node": A, "dst_node": C, "requested_rate_bps": "5"}})
        url = str(server.make_url(f"/restconf/operations/{ORCH}:create-session"))
        async with session.post(url, data=body, headers={"Content-Type": JSON}) as resp:
            assert resp.status == 204
    assert users == ["ops"]


async def test_raw_session_round_trip_in_xml(backend: MemoryBackend) -> None:
    async with TestServer(build_app(backend)) as server, aiohttp.ClientSession() as session:
        async with session.post(
            str(server.make_url(NET)), data=NEW_NODE_XML, headers={"Content-Type": XML}
        ) as resp:
            assert resp.status == 201
            location = resp.headers["Location"]
        async with session.get(str(server.make_url(location)), headers={"Accept": XML}) as resp:
            assert resp.status == 200 and resp.content_type == XML
            doc = etree.fromstring(await resp.read())
            assert doc.findtext(f"{{{NS}}}netconf/{{{NS}}}port") == "2830"
        async with session.delete(str(server.make_url(location))) as resp:
            assert resp.status == 204


async def test_large_body_is_413(backend: MemoryBackend) -> None:
    async with TestClient(TestServer(build_app(backend, client_max_size=1024))) as c:
        resp = await c.put(
            f"{NODE_A}/name", data=json.dumps({f"{ORCH}:name": "x" * 4096}), headers={"Content-Type": JSON}
        )
        err = await error_of(resp, 413)
        assert err["error-tag"] == "too-big"
