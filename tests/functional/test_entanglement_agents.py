"""Entanglement sessions in real time: a medium service and three real agents (A end, R repeater, B end).

The agents are configured over NETCONF with the consistent A - R - B configuration of the conformance
chain (hops shaped so that the chain delivers on the order of a hundred pairs per second in real time).
A ``bbm92-key`` session fills the key store of the VIRT key link at both ends with the same BBM92 blocks,
which the ETSI GS QKD 014 KMEs serve directly (enc_keys at A, dec_keys at B). The repeater's files, log
records and driver objects never hold a delivered key byte. Deleting the session stops it and frees the
memories; recreating it with the same id starts a run whose blocks carry a new run nonce (keys keep
flowing); an unreachable medium makes the agent refuse the configuration and keep running as it was.

No assertion is about wall-clock time: everything polls with a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from lxml import etree

from agent.config import parse_config
from agent.drivers.bbm92 import Bbm92Endpoint
from agent.drivers.clock import AsyncioClock
from agent.drivers.emulated_entanglement import DeliveredPair, EndNode
from agent.drivers.entanglement_chain import ChainScenario, HopParams, predict
from agent.drivers.entanglement_driver import EmulatedEntanglementDriver, MediumClient
from agent.drivers.medium_service import MediumServer
from agent.keystore import KeyStore
from agent.server import NetconfAgent, build_agent
from qsdn.netconf.client import NetconfClient, NetconfRpcError
from qsdn.ports import free_port
from qsdn.yang import SchemaContext
from tests.functional.agents import NODE_NS, TYPES_NS, node_config, wait_until
from tests.functional.entangled import (
    BSM_STATION,
    ENT_NS,
    Hop,
    delete_session_xml,
    elementary_link_xml,
    netconf_client,
    running_agents,
    running_medium,
    source_xml,
)
from tests.functional.test_kme import Pki, pki  # noqa: F401 - the module's PKI fixture

pytestmark = pytest.mark.asyncio(loop_scope="module")

NODE_A = "0e000000-0000-4000-8000-00000000000a"
NODE_B = "0e000000-0000-4000-8000-00000000000b"
NODE_R = "0e000000-0000-4000-8000-00000000000c"
STATION_1 = "0e000000-0000-4000-8000-0000000000d1"
STATION_2 = "0e000000-0000-4000-8000-0000000000d2"
LINK_AR = "1e000000-0000-4000-8000-000000000001"
LINK_RB = "1e000000-0000-4000-8000-000000000002"
SESSION = "3e000000-0000-4000-8000-000000000001"
KEY_LINK = "2e000000-0000-4000-8000-000000000001"
APP = "4e000000-0000-4000-8000-0000000000a1"

#: Each hop: 50 km through a midpoint station, 20 dB, 10 modes, F0 = 0.98 (Barrett-Kok heralding).
LENGTH_KM, LOSS_DB, MODES, F0 = 50.0, 20.0, 10, 0.98
HOP = Hop(LENGTH_KM, LOSS_DB, MODES, F0)
COHERENCE_S = 10.0
SCENARIO = ChainScenario(
    hops=(HopParams(LENGTH_KM, extra_loss_db=LOSS_DB - 0.2 * LENGTH_KM),) * 2,
    f0=F0,
    modes=MODES,
    coherence_s=COHERENCE_S,
)
TARGET_FIDELITY = 0.9
TARGET_RATE = 5.0


def node_xml(node: str) -> str:
    """The consistent A - R - B configuration of ``node`` (as the controller would push it)."""
    role = "repeater" if node == NODE_R else "end"
    links, sources, hops = [], [], ""
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
    if node == NODE_A:
        hops = f"<next_hop>{NODE_R}</next_hop>"
    elif node == NODE_B:
        hops = f"<prev_hop>{NODE_R}</prev_hop>"
    else:
        hops = f"<prev_hop>{NODE_A}</prev_hop><next_hop>{NODE_B}</next_hop>"
    key = f"<key_qkdl_id>{KEY_LINK}</key_qkdl_id>" if role == "end" else ""
    qkd = ""
    if role == "end":
        other = NODE_B if node == NODE_A else NODE_A
        qkd = f"""
  <qkd_applications>
    <qkd_app>
      <app_id>{APP}</app_id>
      <app_type>t:CLIENT</app_type>
      <server_app_id>sae-a</server_app_id>
      <client_app_id>sae-b</client_app_id>
      <backing_qkdl_id>{KEY_LINK}</backing_qkdl_id>
      <local_qkdn_id>{node}</local_qkdn_id>
      <remote_qkdn_id>{other}</remote_qkdn_id>
    </qkd_app>
  </qkd_applications>
  <qkd_links>
    <qkd_link>
      <qkdl_id>{KEY_LINK}</qkdl_id>
      <qkdl_enable>true</qkdl_enable>
      <qkdl_local><qkdn_id>{node}</qkdn_id></qkdl_local>
      <qkdl_remote><qkdn_id>{other}</qkdn_id></qkdl_remote>
      <qkdl_type>t:VIRT</qkdl_type>
    </qkd_link>
  </qkd_links>"""
    return f"""
<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}">
  <qkdn_id>{node}</qkdn_id>{qkd}
  <entanglement xmlns="{ENT_NS}">
    <memories><count>{8 if role == "repeater" else 4}</count>
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
        <target_fidelity>{TARGET_FIDELITY}</target_fidelity>
        <target_rate_pairs_per_s>{TARGET_RATE}</target_rate_pairs_per_s>
        <application>bbm92-key</application>
        {key}
      </session>
    </sessions>
  </entanglement>
</qkd_node>"""


DELETE_SESSION = delete_session_xml(SESSION)


@dataclass
class Chain:
    medium: MediumServer
    agents: dict[str, NetconfAgent]
    cfgs: dict[str, dict[str, Any]]
    pki: Pki
    http: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def client(self, name: str) -> NetconfClient:
        return netconf_client(self.agents[name])

    def keystore(self, name: str) -> KeyStore:
        return self.agents[name].keystore

    def blocks(self, name: str) -> dict[str, bytes]:
        ks = self.keystore(name)
        return {b.block_id: ks.get_block(KEY_LINK, b.block_id) for b in ks.blocks(KEY_LINK)}

    async def kme(self, name: str, sae: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if sae not in self.http:
            self.http[sae] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.pki.ctx(sae)))
        url = f"https://127.0.0.1:{self.cfgs[name]['kme']['port']}{path}"
        async with self.http[sae].post(url, json=body) as resp:
            return resp.status, await resp.json()

    async def skip(self, name: str, sae: str, path: str) -> tuple[int, Any]:
        """``GET`` a SKIP path at ``name``'s KME as ``sae``."""
        if sae not in self.http:
            self.http[sae] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.pki.ctx(sae)))
        url = f"https://127.0.0.1:{self.cfgs[name]['kme']['port']}{path}"
        async with self.http[sae].get(url) as resp:
            return resp.status, await resp.json()


def _cfg(
    tmp: Path, name: str, node_id: str, medium_port: int, certs: Pki | None, kme_ports: dict[str, int]
) -> Any:
    cfg = node_config(tmp, name, node_id=node_id)
    cfg["entanglement"] = {"medium": {"port": medium_port}, "timeout_s": 2.0, "bbm92": {"block_size": 256}}
    if certs is not None:
        other, other_id = ("bob", NODE_B) if name == "alice" else ("alice", NODE_A)
        cfg["kme"] = {
            "port": kme_ports[name],
            "cert": str(certs.root / f"{name}.crt"),
            "key": str(certs.root / f"{name}.key"),
            "ca": str(certs.root / "ca.crt"),
            "min_key_size": 64,
            "peer_timeout_s": 2.0,
            "peers": {other_id: {"url": f"https://127.0.0.1:{kme_ports[other]}", "kme_id": other}},
        }
    return cfg


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chain(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,  # noqa: F811
    schema: SchemaContext,
) -> AsyncIterator[Chain]:
    tmp = tmp_path_factory.mktemp("chain")
    async with running_medium(seed=7) as medium:
        kme_ports = {"alice": free_port(), "bob": free_port()}
        cfgs = {
            "alice": _cfg(tmp, "alice", NODE_A, medium.port, pki, kme_ports),
            "repeater": _cfg(tmp, "repeater", NODE_R, medium.port, None, kme_ports),
            "bob": _cfg(tmp, "bob", NODE_B, medium.port, pki, kme_ports),
        }
        ch = Chain(medium, {}, cfgs, pki)
        async with running_agents(cfgs, schema, ch.agents):
            try:
                yield ch
            finally:
                for s in ch.http.values():
                    await s.close()


def _leaf(data: etree._Element, path: str) -> str | None:
    found = data.xpath(path, namespaces={"n": NODE_NS, "e": ENT_NS})
    assert isinstance(found, list)
    return str(found[0]) if found else None


async def test_bbm92_session_delivers_identical_key_served_over_etsi_014(
    chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clients = {name: chain.client(name) for name in chain.agents}
    for c in clients.values():
        await c.connect()
    try:
        await clients["alice"].create_subscription()
        for name, node in (("repeater", NODE_R), ("bob", NODE_B), ("alice", NODE_A)):
            reply = await clients[name].edit_config(node_xml(node))
            assert reply.ok

        # Both ends hold identical BBM92 blocks under the key link.
        await wait_until(
            lambda: len(chain.blocks("alice")) >= 2 and len(chain.blocks("bob")) >= 2, timeout_s=40
        )
        a_blocks, b_blocks = chain.blocks("alice"), chain.blocks("bob")
        common = set(a_blocks) & set(b_blocks)
        assert len(common) >= 2
        assert all(a_blocks[k] == b_blocks[k] for k in common)
        key_bytes = [a_blocks[k] for k in sorted(common)]

        # <get>: counters, rates, fidelity near the closed form, QBER and key bits at the ends only.
        pred = predict(SCENARIO)
        assert pred.fidelity is not None and pred.rate_per_s is not None
        s = "n:qkd_node/e:entanglement/e:sessions/e:session"
        data = await clients["alice"].get()
        assert data is not None
        assert int(_leaf(data, f"{s}/e:pairs_delivered/text()") or 0) > 0
        rate = float(_leaf(data, f"{s}/e:rate_pairs_per_s/text()") or 0)
        fidelity = float(_leaf(data, f"{s}/e:achieved_fidelity/text()") or 0)
        assert 0.1 * pred.rate_per_s < rate < 1.5 * pred.rate_per_s, (rate, pred.rate_per_s)
        assert fidelity == pytest.approx(pred.fidelity, abs=0.02), (fidelity, pred.fidelity)
        assert int(_leaf(data, f"{s}/e:key_bits/text()") or 0) > 0
        assert float(_leaf(data, f"{s}/e:qber/text()") or 1) < 0.11
        assert _leaf(data, f"{s}/e:status/text()") in ("active", "degraded")
        el = "n:qkd_node/e:entanglement/e:elementary_links/e:elementary_link"
        assert int(_leaf(data, f"{el}/e:pairs_generated/text()") or 0) > 0
        assert _leaf(data, f"{el}/e:status/text()") == "generating"
        assert float(_leaf(data, f"{el}/e:mean_fidelity/text()") or 0) == pytest.approx(F0)
        mem = "n:qkd_node/e:entanglement/e:memories"
        in_use, free = (
            int(_leaf(data, f"{mem}/e:in_use/text()") or -1),
            int(_leaf(data, f"{mem}/e:free/text()") or -1),
        )
        assert in_use + free == 4 and in_use >= 1
        rdata = await clients["repeater"].get()
        assert rdata is not None
        assert int(_leaf(rdata, f"{s}/e:pairs_delivered/text()") or 0) > 0
        assert _leaf(rdata, f"{s}/e:key_bits/text()") is None and _leaf(rdata, f"{s}/e:qber/text()") is None

        # The status change was notified.
        note = await asyncio.wait_for(clients["alice"].notifications.get(), 10)
        while note.body.tag != f"{{{ENT_NS}}}entanglement_session_update":
            note = await asyncio.wait_for(clients["alice"].notifications.get(), 10)
        assert _leaf(note.body, "e:session/e:session_id/text()") == SESSION

        # ETSI GS QKD 014: enc_keys at A, dec_keys at B, the same keys (served directly from the VIRT link).
        status, enc = await chain.kme(
            "alice", "sae-a", "/api/v1/keys/sae-b/enc_keys", {"number": 2, "size": 64}
        )
        assert status == 200, enc
        ids = [k["key_ID"] for k in enc["keys"]]
        body = {"key_IDs": [{"key_ID": i} for i in ids]}
        status, dec = await chain.kme("bob", "sae-b", "/api/v1/keys/sae-a/dec_keys", body)
        assert status == 200, dec
        assert dec["keys"] == enc["keys"]
        served = [base64.b64decode(k["key"]) for k in enc["keys"]]

        # SKIP, the second front end, serves the same key store: a key at A, the same key by keyId at B.
        # (503 while the chain has not yet stored 128 more bits: a refusal takes nothing, so ask again.)
        status, new = await chain.skip("alice", "sae-a", "/key?remoteSystemID=sae-b&size=128")
        for _ in range(100):
            if status != 503:
                break
            await asyncio.sleep(0.2)
            status, new = await chain.skip("alice", "sae-a", "/key?remoteSystemID=sae-b&size=128")
        assert status == 200, new
        status, got = await chain.skip("bob", "sae-b", f"/key/{new['keyId']}?remoteSystemID=sae-a")
        assert status == 200, got
        assert got == new
        stream = b"".join(key_bytes)  # blocks are consumed in block-id order, keys may span two
        assert all(k in stream for k in served)
        served.append(bytes.fromhex(new["key"]))  # may come from a block stored after the snapshot

        # The repeater never holds a delivered key byte: files, logs, driver objects.
        _assert_repeater_holds_no_key(chain, key_bytes + served, caplog)

        # Deleting the session stops it everywhere and frees the memories.
        for c in clients.values():
            await c.edit_config(DELETE_SESSION)
        await wait_until(lambda: not chain.medium._sessions, timeout_s=10)
        data = await clients["alice"].get()
        assert data is not None
        assert _leaf(data, f"{s}/e:session_id/text()") is None
        assert _leaf(data, f"{mem}/e:in_use/text()") == "0" and _leaf(data, f"{mem}/e:free/text()") == "4"
        for name in chain.agents:
            driver = chain.agents[name].entanglement
            assert isinstance(driver, EmulatedEntanglementDriver)
            assert not driver._runs
        assert chain.medium.medium.live_qubits() == 0
    finally:
        for c in clients.values():
            await c.close()


async def test_recreated_session_names_new_blocks_and_keys_flow(chain: Chain) -> None:
    """A session recreated with the same id (here: deleted and configured again, twice, after the test
    above) starts a new run: its blocks carry a new run nonce, so neither key store refuses them as
    repeats, and ETSI 014 keys keep flowing."""
    before = {name: set(chain.blocks(name)) for name in ("alice", "bob")}
    runs: list[set[str]] = []
    clients = {name: chain.client(name) for name in chain.agents}
    for c in clients.values():
        await c.connect()
    try:
        for _ in range(2):
            for name, node in (("repeater", NODE_R), ("bob", NODE_B), ("alice", NODE_A)):
                assert (await clients[name].edit_config(node_xml(node))).ok
            seen = set().union(before["alice"], before["bob"], *runs)

            def fresh(name: str, seen: set[str] = seen) -> set[str]:
                return set(chain.blocks(name)) - seen

            await wait_until(lambda: len(fresh("alice") & fresh("bob")) >= 1, timeout_s=40)
            new = fresh("alice") & fresh("bob")
            a_blocks, b_blocks = chain.blocks("alice"), chain.blocks("bob")
            assert all(a_blocks[k] == b_blocks[k] for k in new)
            runs.append(new)
            status, enc = await chain.kme(
                "alice", "sae-a", "/api/v1/keys/sae-b/enc_keys", {"number": 1, "size": 64}
            )
            assert status == 200, enc
            body = {"key_IDs": [{"key_ID": k["key_ID"]} for k in enc["keys"]]}
            status, dec = await chain.kme("bob", "sae-b", "/api/v1/keys/sae-a/dec_keys", body)
            assert status == 200 and dec["keys"] == enc["keys"], dec
            for c in clients.values():
                await c.edit_config(DELETE_SESSION)
            await wait_until(lambda: not chain.medium._sessions, timeout_s=10)
        # block ids: bbm92-<session>-<run nonce>-<block number>; each run its own nonce, sorting later
        nonces = [{k.split("-")[2] for k in run} for run in runs]
        assert all(len(n) == 1 for n in nonces), nonces
        assert nonces[0] != nonces[1] and min(nonces[0]) < min(nonces[1])
        assert not any(k.split("-")[2] in nonces[0] | nonces[1] for k in before["alice"])
    finally:
        for c in clients.values():
            await c.close()


def _assert_repeater_holds_no_key(chain: Chain, keys: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    data_dir = Path(chain.cfgs["repeater"]["data_dir"])
    assert_node_holds_no_key(chain.agents["repeater"], data_dir, keys, caplog)


def assert_node_holds_no_key(
    agent: NetconfAgent, data_dir: Path, keys: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A repeater's agent holds none of ``keys``: not in its data directory, its log records or any
    object its entanglement driver reaches."""
    keys = [k for k in keys if len(k) >= 8]
    assert keys
    # Files of its data directory (the key store included) hold configuration and counters only.
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        content = path.read_bytes()
        assert not [k for k in keys if k in content or k.hex().encode() in content], path
    assert agent.keystore.links() == []
    # Log records: no key byte in any form.
    text = "\n".join(r.getMessage() for r in caplog.records)
    for k in keys:
        assert k.hex() not in text and base64.b64encode(k).decode() not in text
    # Every object its driver can reach, stopping at the event loop, functions and the shared world.
    driver = agent.entanglement
    assert isinstance(driver, EmulatedEntanglementDriver)
    boundary = (
        asyncio.AbstractEventLoop,
        asyncio.Task,
        asyncio.Future,
        asyncio.StreamReader,
        asyncio.StreamWriter,
        asyncio.BaseTransport,
        AsyncioClock,
        MediumServer,
        types.FunctionType,
        types.BuiltinFunctionType,
        types.CodeType,
        types.FrameType,
        types.ModuleType,
        type,
    )
    seen: dict[int, object] = {}
    stack: list[object] = [driver]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, boundary):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    objects = list(seen.values())
    assert any(isinstance(o, MediumClient) for o in objects)
    assert not [o for o in objects if isinstance(o, EndNode | Bbm92Endpoint | DeliveredPair)]
    blobs = [o for o in objects if isinstance(o, bytes | bytearray | str) and len(o) >= 8]
    for k in keys:
        hexed, b64 = k.hex(), base64.b64encode(k).decode()
        for blob in blobs:
            if isinstance(blob, str):
                assert hexed not in blob and b64 not in blob
            else:
                assert k not in blob


async def test_unreachable_medium_refuses_the_configuration_and_keeps_running(
    schema: SchemaContext, tmp_path: Path
) -> None:
    cfg = node_config(tmp_path, "lonely", node_id=NODE_A)
    cfg["entanglement"] = {"medium": {"port": free_port()}, "timeout_s": 1.0}
    agent = build_agent(parse_config(cfg, source="lonely.yaml"), schema)
    await agent.start()
    try:
        async with netconf_client(agent) as c:
            before = await c.get_config()
            with pytest.raises(NetconfRpcError) as err:
                await c.edit_config(node_xml(NODE_A))
            after = await c.get_config()
    finally:
        await agent.stop()
    message = err.value.errors[0].message
    assert "entanglement session" in message and "unreachable" in message, message
    assert "127.0.0.1:" in message
    assert etree.tostring(before) == etree.tostring(after)
    driver = agent.entanglement
    assert isinstance(driver, EmulatedEntanglementDriver) and not driver._runs
