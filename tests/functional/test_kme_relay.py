"""Trusted key relay over VIRT links (agent/kme/relay.py): real agents in a chain, the full 015
configuration of a relayed session written over NETCONF as controller/provision.plan_session produces it,
SAEs over mutual TLS."""

from __future__ import annotations

import base64
import collections
import itertools
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.provision import SessionSpec, plan_session
from qsdn.pki import Issued, client_context, create_ca, issue, write_pem
from qsdn.ports import free_port
from tests.functional.agents import AgentFactory, AgentHandle, wait_until
from tests.functional.labnet import Net

pytestmark = pytest.mark.asyncio

RATE = 200_000  # virt_bandwidth, bit/s


@dataclass
class Chain:
    net: Net
    path: list[str]
    ca: Issued
    virt: str = ""
    hops: list[str] = field(default_factory=list)
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)
    saes: dict[str, Issued] = field(default_factory=dict)
    plan: Any = None

    def ctx(self, sae: str) -> ssl.SSLContext:
        return client_context(self.ca.cert_pem, self.saes[sae])

    def session(self, sae: str) -> aiohttp.ClientSession:
        if sae not in self.sessions:
            self.sessions[sae] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx(sae)))
        return self.sessions[sae]

    async def call(self, node: str, sae: str, path: str, body: Any) -> tuple[int, Any]:
        url = f"https://127.0.0.1:{self.net.configs[node]['kme']['port']}{path}"
        async with self.session(sae).post(url, json=body) as resp:
            return resp.status, json.loads(await resp.text())

    async def enc(self, sae: str, slave: str, **body: Any) -> tuple[int, Any]:
        return await self.call(self.path[0], sae, f"/api/v1/keys/{slave}/enc_keys", body)

    async def dec(self, sae: str, master: str, ids: list[str]) -> tuple[int, Any]:
        body = {"key_IDs": [{"key_ID": k} for k in ids]}
        return await self.call(self.path[-1], sae, f"/api/v1/keys/{master}/dec_keys", body)

    def agent(self, node: str) -> Any:
        return self.net.agents[node].agent

    def kme_bits(self, node: str, qkdl_id: str) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for r in self.agent(node).keystore.accounting(qkdl_id):
            if r.consumer.startswith("kme:"):
                out[r.kind] += r.nbits
        return out


@asynccontextmanager
async def chain(
    tmp: Path, start_agent: AgentFactory, names: list[str], *, peer_timeout_s: float = 3.0
) -> AsyncIterator[Chain]:
    spans = [(f"s-{a}{b}".lower(), a, b, 10.0) for a, b in itertools.pairwise(names)]
    net = Net(tmp, names, spans)
    ca = create_ca("qsdn relay test CA")
    pki = tmp / "pki"
    pki.mkdir()
    write_pem(ca, pki / "ca.crt", pki / "ca.key")
    ports = {n: free_port() for n in names}
    for n in names:
        leaf = issue(ca, n, server=True, client=True, ips=["127.0.0.1"], dns=["localhost"])
        write_pem(leaf, pki / f"{n}.crt", pki / f"{n}.key")
    for i, n in enumerate(names):
        adjacent = [names[j] for j in (i - 1, i + 1) if 0 <= j < len(names)]
        net.configs[n]["kme"] = {
            "port": ports[n],
            "kme_id": n,
            "cert": str(pki / f"{n}.crt"),
            "key": str(pki / f"{n}.key"),
            "ca": str(pki / "ca.crt"),
            "peer_timeout_s": peer_timeout_s,
            "peers": {net.ids[m]: {"url": f"https://127.0.0.1:{ports[m]}", "kme_id": m} for m in adjacent},
        }
    c = Chain(net, names, ca)
    for sae in ("sae-a", "sae-c", "sae-evil"):
        c.saes[sae] = issue(ca, sae, client=True)
    try:
        await net.start(start_agent)
        plan = plan_session(
            SessionSpec("50000000-0000-4000-8000-000000000001", "sae-a", "sae-c", RATE),
            [net.ids[n] for n in names],
            [s[0] for s in spans],
            {(net.ids[n], s): q for (n, s), q in net.qkdi.items()},
        )
        assert plan.virt_qkdl_id is not None
        c.virt = plan.virt_qkdl_id
        c.plan = plan
        c.hops = [h.qkdl_id for h in plan.hops]
        for n in names:
            handle: AgentHandle = net.agents[n]
            async with handle.client() as nc:
                await nc.edit_config(plan.edits[net.ids[n]])
        for i, h in enumerate(c.hops):
            for n in (names[i], names[i + 1]):
                ks = c.agent(n).keystore
                await wait_until(lambda ks=ks, h=h: ks.stored_bits(h) >= 20_000, timeout_s=15)
        yield c
    finally:
        for s in c.sessions.values():
            await s.close()


async def _round_trip(c: Chain) -> None:
    url = f"https://127.0.0.1:{c.net.configs[c.path[0]]['kme']['port']}/api/v1/keys/sae-c/status"
    async with c.session("sae-a").get(url) as resp:
        st = json.loads(await resp.text())
        assert resp.status == 200, st
    assert st["target_KME_ID"] == c.net.ids[c.path[-1]] and st["stored_key_count"] > 0
    status, data = await c.enc("sae-a", "sae-c", number=3, size=256)
    assert status == 200, data
    keys = data["keys"]
    assert [len(base64.b64decode(k["key"])) for k in keys] == [32, 32, 32]
    ids = [k["key_ID"] for k in keys]
    # a wrong SAE is refused, and takes nothing
    status, body = await c.dec("sae-evil", "sae-a", ids)
    assert status == 401, body
    status, got = await c.dec("sae-c", "sae-a", ids)
    assert status == 200, got
    assert got["keys"] == keys
    status, again = await c.dec("sae-c", "sae-a", ids[:1])
    assert status == 400 and "unknown or already delivered" in again["message"]
    # every hop: the same bits consumed at both ends, nothing discarded
    for i, h in enumerate(c.hops):
        for n in (c.path[i], c.path[i + 1]):
            assert c.kme_bits(n, h) == {"consumed": 768}, (n, h)


async def test_one_relay_same_bytes_once_and_accounted(tmp_path: Path, start_agent: AgentFactory) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C"]) as c:
        ids = c.net.ids
        # both ways of taking a hop key are exercised: A-B reserved at B, B-C drawn by B
        assert ids["B"] < ids["A"] and ids["B"] < ids["C"]
        await _round_trip(c)
        relay = c.agent("B").kme
        assert relay.relay.relayed == 1
        # over virt_bandwidth: 503 with a message, nothing consumed
        before = [c.kme_bits("A", h) for h in c.hops]
        status, body = await c.enc("sae-a", "sae-c", number=128, size=4096)
        assert status == 503 and "virt_bandwidth" in body["message"], body
        assert [c.kme_bits("A", h) for h in c.hops] == before


async def test_node_down_aborts_everything(tmp_path: Path, start_agent: AgentFactory) -> None:
    async with chain(tmp_path, start_agent, ["A", "B", "C"]) as c:
        ab, bc = c.hops
        # A > B: A reserves its hop key at B; B < C: B draws the hop key to C itself
        assert c.net.ids["B"] < c.net.ids["A"] and c.net.ids["B"] < c.net.ids["C"]
        # the far end is down: the relay B already took both hop keys for the request
        await c.agent("C").stop()
        status, body = await c.enc("sae-a", "sae-c", number=2, size=256)
        assert status == 503, body
        assert c.kme_bits("A", ab) == {"discarded": 512}
        assert c.kme_bits("B", ab) == {"discarded": 512}
        assert c.kme_bits("B", bc) == {"discarded": 512}
        for n in ("A", "B"):
            assert await c.agent(n).kme.store.waiting_keys() == 0
        # C comes back: B's abort reaches it and C uses up the same bits, as discarded
        await c.net.start(start_agent, only=["C"])
        c.agent("B").kme._wake_aborts()
        await wait_until(lambda: c.kme_bits("C", bc) == {"discarded": 512}, timeout_s=10)
        assert await c.agent("C").kme.store.waiting_keys() == 0
        assert c.kme_bits("B", bc) == {"discarded": 512}
        # the relay is down: 503, nothing delivered, and nothing consumed anywhere
        await c.agent("B").stop()
        status, body = await c.enc("sae-a", "sae-c", number=2, size=256)
        assert status == 503, body
        assert c.kme_bits("A", ab) == {"discarded": 512}
        assert await c.agent("C").kme.store.waiting_keys() == 0
        assert c.kme_bits("C", bc) == {"discarded": 512}


async def test_three_relays_end_to_end(tmp_path: Path, start_agent: AgentFactory) -> None:
    async with chain(tmp_path, start_agent, ["N1", "N2", "N3", "N4", "N5"]) as c:
        await _round_trip(c)
        for n in ("N2", "N3", "N4"):
            assert c.agent(n).kme.relay.relayed == 1
