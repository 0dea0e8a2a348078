"""The controller's RESTCONF API over plain HTTP, driving real agents."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from lxml import etree

from controller.api import ControllerBackend
from controller.northbound.restconf import build_app
from controller.service import Controller, ControllerSettings
from controller.southbound.asyncssh_client import AsyncsshNodeClient
from controller.store import Store
from tests.functional.agents import NODE_NS, AgentFactory
from tests.functional.labnet import five_node_net

JSON = "application/yang-data+json"
NET = "qsdn-orchestrator:qkd_network"


async def test_sessions_through_restconf(start_agent: AgentFactory, tmp_path: Path) -> None:
    net = five_node_net(tmp_path)
    await net.start(start_agent)
    store = Store(tmp_path / "ctl.sqlite")
    for rec in net.node_records():
        store.put_node(rec)
    for srec in net.span_records():
        store.put_span(srec)
    ctl = Controller(store, AsyncsshNodeClient, ControllerSettings(confirm_timeout_s=20, step_timeout_s=5))
    await ctl.start()
    server = TestServer(build_app(ControllerBackend(ctl), users={"op": "pw"}))
    await server.start_server()
    auth_header = {"Authorization": "Basic " + base64.b64encode(b"op:pw").decode()}
    base = str(server.make_url("/restconf"))
    try:
        async with aiohttp.ClientSession(headers={"Accept": JSON, **auth_header}) as http:
            # the network as the controller sees it
            r = await http.get(f"{base}/data/{NET}")
            assert r.status == 200, await r.text()
            body = await r.json()
            spans = {s["span_id"]: s for s in body[NET]["qkd_phys_link"]}
            assert spans["s-ae"]["span_class"] == "red"
            assert spans["s-ab"]["span_class"] in ("green", "orange")
            nodes = {n["name"]: n for n in body[NET]["qkd_node"]}
            assert all(n["status"] == "reachable" for n in nodes.values())

            # dry run
            r = await http.post(
                f"{base}/operations/qsdn-orchestrator:compute-path",
                json={
                    "qsdn-orchestrator:input": {
                        "src_node": net.ids["A"],
                        "dst_node": net.ids["E"],
                        "requested_rate_bps": "1000",
                    }
                },
                headers={"Content-Type": JSON},
            )
            assert r.status == 200, await r.text()
            out = (await r.json())["qsdn-orchestrator:output"]
            assert out["path"][0]["node"] == [net.ids["A"], net.ids["D"], net.ids["E"]]

            # a session as configuration: POST creates it, the controller provisions it
            sid = str(uuid.uuid4())
            r = await http.post(
                f"{base}/data/{NET}",
                data=json.dumps(
                    {
                        "qsdn-orchestrator:qkd_svc_link": [
                            {
                                "session_id": sid,
                                "src_node": net.ids["A"],
                                "dst_node": net.ids["E"],
                                "src_sae": "sae-a",
                                "dst_sae": "sae-e",
                                "requested_rate_bps": "1000",
                            }
                        ]
                    }
                ),
                headers={"Content-Type": JSON},
            )
            assert r.status == 201, await r.text()
            r = await http.get(f"{base}/data/{NET}/qkd_svc_link={sid}")
            link = (await r.json())["qsdn-orchestrator:qkd_svc_link"][0]
            assert link["status"] == "active"
            assert link["path"] == [net.ids["A"], net.ids["D"], net.ids["E"]]
            assert link["relays"] == [net.ids["D"]]

            # a node's own ETSI 015 data, read through the controller
            r = await http.post(
                f"{base}/operations/qsdn-orchestrator:get-node-data",
                json={"qsdn-orchestrator:input": {"qkdn_id": net.ids["D"], "content": "config"}},
                headers={"Content-Type": JSON},
            )
            assert r.status == 200, await r.text()
            text = await r.text()
            assert "qkd_link" in text and link["virt_qkdl_id"] in text

            # impossible request: 409/400 with the reason; nothing left behind
            bad = str(uuid.uuid4())
            r = await http.post(
                f"{base}/data/{NET}",
                json={
                    "qsdn-orchestrator:qkd_svc_link": [
                        {
                            "session_id": bad,
                            "src_node": net.ids["A"],
                            "dst_node": net.ids["E"],
                            "requested_rate_bps": str(10**9),
                        }
                    ]
                },
                headers={"Content-Type": JSON},
            )
            assert r.status in (400, 409), await r.text()
            err = (await r.json())["ietf-restconf:errors"]["error"][0]
            assert err["error-tag"] == "resource-denied"
            r = await http.get(f"{base}/data/{NET}/qkd_svc_link={bad}")
            assert r.status == 404

            # DELETE tears the session down on every node
            r = await http.delete(f"{base}/data/{NET}/qkd_svc_link={sid}")
            assert r.status == 204, await r.text()
        for name in ("A", "D", "E"):
            async with net.agents[name].client() as c:
                data = await c.get_config()
            assert not data.xpath("//n:qkd_app", namespaces={"n": NODE_NS}), name
    finally:
        await server.close()
        await ctl.stop()
        store.close()


_ = etree
