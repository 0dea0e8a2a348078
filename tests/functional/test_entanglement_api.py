"""The entanglement delivery API over real agents: a medium service, ends A and B, repeater R.

A ``pairs`` session runs over A - R - B (the hops of test_entanglement_agents, with longer-lived
memories so that the pairs' fidelity is the one they were delivered with). Its ``clients`` are
``app-a`` at A and ``app-b`` at B. The application at A takes pairs by number over HTTPS (mutual TLS,
the KME's port), the application at B measures the same pair ids, and their outcomes agree at the rate
the session's fidelity implies: a Werner pair of fidelity F gives the same Z (or X) outcome at both
ends except with probability 2(1 - F)/3. In different bases the outcomes are uncorrelated. Wrong
clients get 401, bad requests 400 without consuming a pair, the repeater (also running a KME) has no
such API (404), and pairs nobody measures are released after the holding time and counted as lost.

No assertion is about wall-clock time: everything polls with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from agent.drivers.medium_service import MediumServer
from agent.kme.entanglement_api import HOLD_S
from agent.server import NetconfAgent
from qsdn.pki import Issued, client_context, issue
from qsdn.ports import free_port
from qsdn.yang import SchemaContext
from tests.functional.agents import NODE_NS, node_config, wait_until
from tests.functional.entangled import (
    BSM_STATION,
    ENT_NS,
    Hop,
    delete_session_xml,
    elementary_link_xml,
    kme_tls,
    measure_rounds,
    netconf_client,
    node_pki,
    qber,
    qber_bound,
    running_agents,
    running_medium,
    source_xml,
    wait_delivering,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODE_A = "0e000000-0000-4000-8000-00000000000a"
NODE_B = "0e000000-0000-4000-8000-00000000000b"
NODE_R = "0e000000-0000-4000-8000-00000000000c"
STATION_1 = "0e000000-0000-4000-8000-0000000000d1"
STATION_2 = "0e000000-0000-4000-8000-0000000000d2"
LINK_AR = "1e000000-0000-4000-8000-000000000001"
LINK_RB = "1e000000-0000-4000-8000-000000000002"
SESSION = "3e000000-0000-4000-8000-000000000007"
OTHER_SESSION = "3e000000-0000-4000-8000-0000000000ff"

HOP = Hop(length_km=50.0, loss_db=20.0, modes=10, f0=0.98)
COHERENCE_S = 1000.0
END_MEMORIES = 16
NODES = {"alice": NODE_A, "repeater": NODE_R, "bob": NODE_B}
CLIENTS = {"alice": "app-a", "bob": "app-b"}
BASE = "/api/v1/entanglement"


def node_xml(node: str) -> str:
    """The A - R - B ``pairs`` session as the controller would push it to ``node``."""
    role = "repeater" if node == NODE_R else "end"
    links, sources = [], []
    if node in (NODE_A, NODE_R):
        links.append(
            elementary_link_xml(LINK_AR, NODE_R if node == NODE_A else NODE_A, STATION_1, HOP, source_id=1)
        )
        sources.append(source_xml(1, HOP))
    if node in (NODE_B, NODE_R):
        links.append(
            elementary_link_xml(LINK_RB, NODE_R if node == NODE_B else NODE_B, STATION_2, HOP, source_id=2)
        )
        sources.append(source_xml(2, HOP))
    # The ends may hold END_MEMORIES pairs each (an application takes up to 16 by number at A while B
    # keeps them for the same ids); the repeater runs with one memory per side (its default).
    if node == NODE_A:
        hops = f"<next_hop>{NODE_R}</next_hop><next_memories>{END_MEMORIES}</next_memories>"
    elif node == NODE_B:
        hops = f"<prev_hop>{NODE_R}</prev_hop><prev_memories>{END_MEMORIES}</prev_memories>"
    else:
        hops = f"<prev_hop>{NODE_A}</prev_hop><next_hop>{NODE_B}</next_hop>"
    clients = {NODE_A: "<clients>app-a</clients>", NODE_B: "<clients>app-b</clients>"}.get(node, "")
    return f"""
<qkd_node xmlns="{NODE_NS}">
  <qkdn_id>{node}</qkdn_id>
  <entanglement xmlns="{ENT_NS}">
    <memories><count>{8 if role == "repeater" else END_MEMORIES}</count>
      <coherence_time_s>{COHERENCE_S}</coherence_time_s></memories>
    <sources>{"".join(sources)}</sources>
    {BSM_STATION if role == "repeater" else ""}
    <elementary_links>{"".join(links)}</elementary_links>
    <sessions>
      <session>
        <session_id>{SESSION}</session_id>
        <role>{role}</role>
        <end_a_qkdn_id>{NODE_A}</end_a_qkdn_id>
        <end_b_qkdn_id>{NODE_B}</end_b_qkdn_id>
        <path>{NODE_A}</path><path>{NODE_R}</path><path>{NODE_B}</path>
        {hops}
        <target_fidelity>0.9</target_fidelity>
        <application>pairs</application>
        {clients}
      </session>
    </sessions>
  </entanglement>
</qkd_node>"""


@dataclass
class Chain:
    medium: MediumServer
    agents: dict[str, NetconfAgent]
    cfgs: dict[str, dict[str, Any]]
    certs: dict[str, Issued]
    ca: Issued
    http: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def _session(self, app: str) -> aiohttp.ClientSession:
        if app not in self.http:
            ctx: ssl.SSLContext = client_context(self.ca.cert_pem, self.certs[app])
            self.http[app] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
        return self.http[app]

    def url(self, node: str, path: str) -> str:
        return f"https://127.0.0.1:{self.cfgs[node]['kme']['port']}{path}"

    async def get(self, node: str, app: str, path: str) -> tuple[int, Any]:
        async with self._session(app).get(self.url(node, path)) as resp:
            return resp.status, await resp.json()

    async def post(self, node: str, app: str, path: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else None
        kw: dict[str, Any] = {"data": data} if data is not None else {"json": body}
        async with self._session(app).post(self.url(node, path), **kw) as resp:
            return resp.status, await resp.json()

    async def measure(self, node: str, body: Any, app: str | None = None) -> tuple[int, Any]:
        return await self.post(node, app or CLIENTS[node], f"{BASE}/{SESSION}/measure", body)

    async def status(self, node: str) -> dict[str, Any]:
        code, body = await self.get(node, CLIENTS[node], f"{BASE}/{SESSION}/status")
        assert code == 200, body
        return dict(body)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chain(tmp_path_factory: pytest.TempPathFactory, schema: SchemaContext) -> AsyncIterator[Chain]:
    tmp = tmp_path_factory.mktemp("pairs-chain")
    root = tmp / "pki"
    ca = node_pki(root, "qsdn pairs test CA", NODES)
    certs = {app: issue(ca, app, client=True) for app in ("app-a", "app-b", "app-evil")}
    async with running_medium(seed=11) as medium:
        cfgs: dict[str, dict[str, Any]] = {}
        for name, node_id in NODES.items():
            cfg = node_config(tmp, name, node_id=node_id)
            cfg["entanglement"] = {"medium": {"port": medium.port}, "timeout_s": 2.0}
            cfg["kme"] = {"port": free_port(), **kme_tls(root, name), "peer_timeout_s": 2.0}
            cfgs[name] = cfg
        ch = Chain(medium, {}, cfgs, certs, ca)
        async with running_agents(cfgs, schema, ch.agents):
            try:
                for name in ("repeater", "bob", "alice"):
                    async with netconf_client(ch.agents[name]) as c:
                        assert (await c.edit_config(node_xml(NODES[name]))).ok
                yield ch
            finally:
                for s in ch.http.values():
                    await s.close()


async def test_sessions_status_and_the_repeater(chain: Chain) -> None:
    await wait_delivering(chain, ("alice", "bob"))
    code, body = await chain.get("alice", "app-a", f"{BASE}/sessions")
    assert code == 200, body
    assert body["sessions"] == [
        {
            "session_ID": SESSION,
            "local_qkdn_ID": NODE_A,
            "peer_qkdn_ID": NODE_B,
            "end_a_qkdn_ID": NODE_A,
            "end_b_qkdn_ID": NODE_B,
            "status": body["sessions"][0]["status"],
            "target_fidelity": 0.9,
        }
    ]
    assert body["sessions"][0]["status"] in ("pending", "establishing", "active", "degraded")
    st = await chain.status("bob")
    assert st["peer_qkdn_ID"] == NODE_A and st["local_qkdn_ID"] == NODE_B
    assert st["pairs_delivered"] > 0 and st["pairs_available"] > 0
    assert 0.9 < st["fidelity"] <= 1.0
    assert st["expected_qber"] == pytest.approx(2 * (1 - st["fidelity"]) / 3)
    assert st["hold_time_s"] == HOLD_S and st["max_pairs_per_request"] >= 16
    # The repeater runs a KME too, but it ends no pairs session: no such API there, for anyone.
    for app in ("app-a", "app-b", "app-evil"):
        code, body = await chain.get("repeater", app, f"{BASE}/sessions")
        assert code == 404 and set(body) == {"message"}, body
        assert "no pairs session" in body["message"]
        code, body = await chain.post("repeater", app, f"{BASE}/{SESSION}/measure", {"basis": "Z"})
        assert code == 404, body


async def test_same_basis_outcomes_agree_at_the_rate_the_fidelity_implies(chain: Chain) -> None:
    await wait_delivering(chain, ("alice", "bob"))
    fidelity = (await chain.status("alice"))["fidelity"]
    expected = 2 * (1 - fidelity) / 3
    for basis in ("Z", "X"):
        matched = await measure_rounds(chain, basis, basis, 400)
        assert all(a["basis"] == basis and b["basis"] == basis for a, b in matched)
        assert all(a["outcome"] in (0, 1) for a, _ in matched)
        assert all(a["delivered_at"].endswith("Z") for a, _ in matched)
        rate = qber(matched)
        assert abs(rate - expected) <= qber_bound(expected, len(matched)), (basis, rate, expected, fidelity)
    st = await chain.status("bob")
    assert st["pairs_measured"] >= 800


async def test_different_bases_are_uncorrelated_and_random_bases_are_reported(chain: Chain) -> None:
    matched = await measure_rounds(chain, "Z", "X", 400)
    agree = 1 - qber(matched)
    assert abs(agree - 0.5) <= qber_bound(0.5, len(matched)), agree
    # Random bases at A; B follows the bases A reports, pair by pair: correlated where they match.
    matched = await measure_rounds(chain, "random", lambda pairs: [p["basis"] for p in pairs], 300)
    bases = [a["basis"] for a, _ in matched]
    assert {"Z", "X"} == set(bases)
    assert abs(bases.count("Z") / len(bases) - 0.5) <= qber_bound(0.5, len(bases))
    assert all(a["basis"] == b["basis"] for a, b in matched)
    fidelity = (await chain.status("alice"))["fidelity"]
    expected = 2 * (1 - fidelity) / 3
    assert abs(qber(matched) - expected) <= qber_bound(expected, len(matched))


async def test_wrong_clients_get_401(chain: Chain) -> None:
    measured = (await chain.status("alice"))["pairs_measured"]
    for node, app in (("alice", "app-b"), ("alice", "app-evil"), ("bob", "app-a")):
        code, body = await chain.get(node, app, f"{BASE}/sessions")
        assert code == 401 and set(body) == {"message"}, body
        code, body = await chain.get(node, app, f"{BASE}/{SESSION}/status")
        assert code == 401, body
        code, body = await chain.measure(node, {"number": 1, "basis": "Z"}, app=app)
        assert code == 401, body
    assert (await chain.status("alice"))["pairs_measured"] == measured


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "JSON"),
        ({"number": 2}, "basis is required"),
        ({"number": 0, "basis": "Z"}, "number 0"),
        ({"number": "2", "basis": "Z"}, "number must be an integer"),
        ({"number": 2, "basis": "Y"}, "basis must be"),
        ({"number": 2, "basis": ["Z"]}, "one per pair"),
        ({"number": 2, "basis": ["Z", "Y"]}, "basis[1]"),
        ({"number": 1, "pair_IDs": ["0-1"], "basis": "Z"}, "not both"),
        ({"pair_IDs": ["zero"], "basis": "Z"}, "malformed"),
        ({"pair_IDs": ["0-5", "0-5"], "basis": "Z"}, "more than once"),
        ({"number": 1, "basis": "Z", "timeout_s": -1}, "timeout_s"),
        ({"number": 1, "basis": "Z", "size": 8}, "unknown member"),
    ],
)
async def test_bad_bodies_get_400_and_consume_nothing(chain: Chain, body: Any, fragment: str) -> None:
    before = await chain.status("alice")
    code, answer = await chain.measure("alice", body)
    assert code == 400 and set(answer) == {"message"}, answer
    assert fragment in answer["message"], answer
    after = await chain.status("alice")
    assert after["pairs_measured"] == before["pairs_measured"]


async def test_unknown_session_and_used_pair_ids_get_400(chain: Chain) -> None:
    for sid in ("not-a-uuid", OTHER_SESSION):
        code, body = await chain.post("alice", "app-a", f"{BASE}/{sid}/measure", {"basis": "Z"})
        assert code == 400, body
        code, body = await chain.get("alice", "app-a", f"{BASE}/{sid}/status")
        assert code == 400, body
    code, a = await chain.measure("alice", {"number": 3, "basis": "Z"})
    assert code == 200, a
    ids = [p["pair_ID"] for p in a["pairs"]]
    # Measured here already: refused at A, untouched at B.
    code, body = await chain.measure("alice", {"pair_IDs": ids, "basis": "Z"})
    assert code == 400 and ids[0] in body["message"], body
    code, b = await chain.measure("bob", {"pair_IDs": ids, "basis": "Z"})
    assert code == 200 and [p["pair_ID"] for p in b["pairs"]] == ids, b
    code, body = await chain.measure("bob", {"pair_IDs": ids[:1], "basis": "X"})
    assert code == 400, body


async def test_no_pair_in_time_is_503(chain: Chain) -> None:
    code, body = await chain.measure("bob", {"pair_IDs": ["0-999999999"], "basis": "Z", "timeout_s": 0.3})
    assert code == 503 and set(body) == {"message"}, body


async def test_pairs_nobody_measures_are_released_and_counted_lost(
    chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.kme.entanglement_api")
    lost = (await chain.status("bob"))["pairs_lost"]
    code, a = await chain.measure("alice", {"number": 4, "basis": "Z"})
    assert code == 200, a
    ids = [p["pair_ID"] for p in a["pairs"]]
    await asyncio.sleep(HOLD_S + 0.5)
    code, body = await chain.measure("bob", {"pair_IDs": ids, "basis": "Z"})
    assert code == 400 and "released" in body["message"], body
    assert (await chain.status("bob"))["pairs_lost"] >= lost + len(ids)
    # What was logged names callers, sessions and counts, never an outcome.
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "measured" in text and "outcome" not in text


async def test_removing_the_session_ends_the_api_there(chain: Chain) -> None:
    for name in ("alice", "repeater", "bob"):
        async with netconf_client(chain.agents[name]) as c:
            await c.edit_config(delete_session_xml(SESSION))
    code, body = await chain.get("alice", "app-a", f"{BASE}/sessions")
    assert code == 404, body
    api = chain.agents["alice"].kme.pairs if chain.agents["alice"].kme is not None else None
    assert api is not None
    await wait_until(lambda: not api._pools, timeout_s=5)
    assert chain.medium.medium.live_qubits() == 0 or await _no_qubits(chain)


async def _no_qubits(chain: Chain) -> bool:
    await wait_until(lambda: chain.medium.medium.live_qubits() == 0, timeout_s=5)
    return True
