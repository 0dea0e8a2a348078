"""compute-entanglement-path over RESTCONF and through `qsdn path compute`, with real agents.

Network: endpoints A and B (with quantum memories), a trusted relay T, a repeater R; 40 km spans A-T, T-B,
A-R, R-B. The nodes come from a controller topology file (roles and entanglement parameters), so the
loader is exercised too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from controller.api import ControllerBackend
from controller.config import load_topology
from controller.northbound.restconf import build_app
from controller.service import Controller, ControllerSettings
from controller.southbound.asyncssh_client import AsyncsshNodeClient
from controller.store import Store
from tests.functional.agents import PASSWORD, USER, AgentFactory
from tests.functional.labnet import Net

JSON = "application/yang-data+json"
NET = "qsdn-orchestrator:qkd_network"
OP = "qsdn-orchestrator:compute-entanglement-path"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"op:pw").decode()}


class Lab:
    def __init__(self, net: Net, base: str, url: str) -> None:
        self.net, self.base, self.url = net, base, url

    def ids(self, names: str) -> list[str]:
        return [self.net.ids[n] for n in names]


@pytest.fixture
async def lab(start_agent: AgentFactory, tmp_path: Path) -> AsyncIterator[Lab]:
    net = Net(
        tmp_path,
        ["A", "B", "R", "T"],
        [("a-t", "A", "T", 40.0), ("t-b", "T", "B", 40.0), ("a-r", "A", "R", 40.0), ("r-b", "R", "B", 40.0)],
    )
    await net.start(start_agent)
    roles: dict[str, dict[str, Any]] = {
        "A": {"entanglement": {"memories": 4, "coherence_time_s": 10.0}},
        "B": {"entanglement": {"memories": 4, "coherence_time_s": 10.0}},
        "T": {"role": "relay"},
        "R": {
            "role": "repeater",
            "trusted": False,
            "entanglement": {"memories": 2, "coherence_time_s": 10.0},
        },
    }
    topo = net.topology(roles)
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topo))
    nodes, spans = load_topology(tmp_path / "topology.yaml", username=USER, password=PASSWORD)
    store = Store(tmp_path / "ctl.sqlite")
    with store.transaction():
        for rec in nodes:
            store.put_node(rec)
        for srec in spans:
            store.put_span(srec)
    ctl = Controller(store, AsyncsshNodeClient, ControllerSettings(confirm_timeout_s=20, step_timeout_s=5))
    await ctl.start()
    server = TestServer(build_app(ControllerBackend(ctl), users={"op": "pw"}))
    await server.start_server()
    try:
        yield Lab(net, str(server.make_url("/restconf")), str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()
        await ctl.stop()
        store.close()


async def compute(lab: Lab, **inp: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Accept": JSON, "Content-Type": JSON, **AUTH}) as http:
        r = await http.post(f"{lab.base}/operations/{OP}", json={"qsdn-orchestrator:input": inp})
        return r.status, await r.json()


async def test_compute_entanglement_path_over_restconf(lab: Lab) -> None:
    ids = lab.net.ids
    # the node model carries roles and entanglement parameters
    async with aiohttp.ClientSession(headers={"Accept": JSON, **AUTH}) as http:
        r = await http.get(f"{lab.base}/data/{NET}")
        assert r.status == 200, await r.text()
        nodes = {n["name"]: n for n in (await r.json())[NET]["qkd_node"]}
    assert nodes["R"]["role"] == "repeater" and nodes["R"]["entanglement"]["memories"] == 2
    assert float(nodes["A"]["entanglement"]["coherence_time_s"]) == 10.0

    # key, no constraint: the trusted relay T (decoy BB84 hops beat the repeater by far)
    status, body = await compute(lab, src_node=ids["A"], dst_node=ids["B"], service="key")
    assert status == 200, body
    out = body["qsdn-orchestrator:output"]
    assert out["node"] == lab.ids("ATB") and out["key_visible_to"] == lab.ids("ATB")
    assert [s["technology"] for s in out["segment"]] == ["qkd", "qkd"]
    assert out["trusted_relays"] == lab.ids("T")

    # no trusted node: the repeater path, the key seen only by the two ends
    status, body = await compute(
        lab, src_node=ids["A"], dst_node=ids["B"], service="key", max_trusted_nodes=0
    )
    assert status == 200, body
    out = body["qsdn-orchestrator:output"]
    (seg,) = out["segment"]
    assert out["node"] == lab.ids("ARB") and out["key_visible_to"] == lab.ids("AB")
    assert seg["technology"] == "entanglement" and seg["swap_order"] == "asap"
    assert seg["repeaters"] == lab.ids("R") and seg["span"] == ["a-r", "r-b"]
    assert {m["node"]: m["memories"] for m in seg["memory"]} == {ids["A"]: 1, ids["R"]: 2, ids["B"]: 1}
    assert 0 < float(out["key_rate_bps"]) < float(out["pair_rate_hz"])
    assert float(out["fidelity"]) > 0.835 and [link["index"] for link in seg["link"]] == [0, 1]

    # entanglement with a target that needs purification
    status, body = await compute(
        lab, src_node=ids["A"], dst_node=ids["B"], service="entanglement", target_fidelity="0.97"
    )
    assert status == 200, body
    seg = body["qsdn-orchestrator:output"]["segment"][0]
    assert seg["purification_rounds"] >= 1 and seg["purification_protocol"] in ("dejmps", "bbpssw")
    assert float(seg["fidelity"]) >= 0.97 > float(seg["unpurified_fidelity"])

    # impossible: refused with the best achievable and the limit
    status, body = await compute(
        lab,
        src_node=ids["A"],
        dst_node=ids["B"],
        service="entanglement",
        target_fidelity="0.9999",
        max_purification_rounds=1,
    )
    assert status == 409, body
    err = body["ietf-restconf:errors"]["error"][0]
    assert err["error-tag"] == "resource-denied"
    assert "best achievable is F =" in err["error-message"] and "limited by" in err["error-message"]

    # the existing compute-path is unchanged: it never crosses the (untrusted) repeater
    async with aiohttp.ClientSession(headers={"Accept": JSON, "Content-Type": JSON, **AUTH}) as http:
        r = await http.post(
            f"{lab.base}/operations/qsdn-orchestrator:compute-path",
            json={
                "qsdn-orchestrator:input": {
                    "src_node": ids["A"],
                    "dst_node": ids["B"],
                    "requested_rate_bps": "1",
                }
            },
        )
        paths = (await r.json())["qsdn-orchestrator:output"]["path"]
    assert [p["node"] for p in paths] == [lab.ids("ATB")]


async def qsdn(*args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qsdn.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_qsdn_path_compute_service_options(lab: Lab) -> None:
    conn = ["--url", lab.url, "--user", "op", "--password", "pw"]

    async def compute_a_to_b(service: str, *args: str) -> tuple[int, str, str]:
        """``qsdn path compute`` from A to B with ``--service service`` and ``args``."""
        return await qsdn("path", "compute", "--src", "A", "--dst", "B", "--service", service, *args, *conn)

    rc, out, err = await compute_a_to_b("key", "--max-trusted", "0", "--format", "json")
    assert rc == 0, err
    o = json.loads(out)["qsdn-orchestrator:output"]
    assert o["node"] == lab.ids("ARB") and o["key_visible_to"] == lab.ids("AB")
    assert o["segment"][0]["technology"] == "entanglement"

    rc, out, err = await compute_a_to_b("key")
    assert rc == 0, err
    assert "A - T - B" in out and "key visible to A, T, B" in out and "qkd" in out

    rc, out, err = await compute_a_to_b("entanglement", "--fidelity", "0.97")
    assert rc == 0, err
    assert "A - R - B" in out and ("dejmps" in out or "bbpssw" in out)

    rc, out, err = await compute_a_to_b("entanglement", "--fidelity", "0.9999", "--rounds", "0")
    assert rc == 1 and "resource-denied" in err and "best achievable" in err
