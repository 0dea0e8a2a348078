"""A key delivered end to end over a mixed path: A - T by QKD, then T - R - B through the repeater R.

Real agents: A (endpoint) and T (trusted relay) joined by a PHYS QKD link (emulated QKD over loopback),
T and B the ends of a repeater segment through R over an in-process medium service (BBM92 key into the
segment's VIRT key link at T and B). The controller provisions one mixed key session through RESTCONF
(as in tests/functional/test_controller_entanglement_admission.py); the KMEs then relay the key: the
master's KME at A draws it, pads it hop by hop (A - T with the PHYS link's key, T - B with the key link's
BBM92 key), and B keeps it for its slave.

What each node sees: B and A hold the key (its ends); T is a *trusted relay*: it receives the key padded
with the A - T hop key and re-pads it with the T - B hop key, so it holds both pads and the key passes
through its memory (that is what trusting a relay means; the plan says so in ``key_visible_to``). R, the
repeater, only swaps entanglement: it holds no key link, no key byte in its data directory, its log
records or its driver's objects.

No assertion is about wall-clock time: everything polls with a timeout.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qsdn.pki import Issued, client_context, issue
from qsdn.ports import free_port
from tests.functional.agents import AgentFactory, wait_until
from tests.functional.entangled import kme_tls, node_pki, running_medium
from tests.functional.labnet import Net
from tests.functional.test_controller_entanglement_sessions import (
    MEMORY,
    NET,
    REPEATER,
    key,
    node_config,
    running_lab,
    seed,
    texts,
)
from tests.functional.test_entanglement_agents import assert_node_holds_no_key

pytestmark = pytest.mark.asyncio

KME_NODES = ("A", "T", "B")
PEERS = {"A": ("T",), "T": ("A", "B"), "B": ("T",)}
SIZE = 128  # bits per key


class Saes:
    def __init__(self, ca: Issued, net: Net) -> None:
        self.ca = ca
        self.net = net
        self.certs = {sae: issue(ca, sae, client=True) for sae in ("sae-a", "sae-b")}
        self.http: dict[str, aiohttp.ClientSession] = {}

    def ctx(self, sae: str) -> ssl.SSLContext:
        return client_context(self.ca.cert_pem, self.certs[sae])

    async def post(self, node: str, sae: str, path: str, body: Any) -> tuple[int, Any]:
        if sae not in self.http:
            self.http[sae] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx(sae)))
        url = f"https://127.0.0.1:{self.net.configs[node]['kme']['port']}{path}"
        async with self.http[sae].post(url, json=body) as resp:
            return resp.status, json.loads(await resp.text())

    async def close(self) -> None:
        for s in self.http.values():
            await s.close()


def kme_bits(net: Net, node: str, qkdl_id: str) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for r in net.agents[node].agent.keystore.accounting(qkdl_id):
        if r.consumer.startswith("kme:"):
            out[r.kind] += r.nbits
    return out


def configure(net: Net, tmp: Path, medium_port: int) -> Issued:
    """KMEs on A, T and B (peers along the key path: A - T, T - B), entanglement drivers on T, R, B."""
    pki = tmp / "pki"
    ca = node_pki(pki, "qsdn mixed test CA", KME_NODES)
    ports = {n: free_port() for n in KME_NODES}
    for n in KME_NODES:
        net.configs[n]["kme"] = {
            "port": ports[n],
            "kme_id": n,
            **kme_tls(pki, n),
            "min_key_size": 64,
            "peer_timeout_s": 3.0,
            "peers": {net.ids[m]: {"url": f"https://127.0.0.1:{ports[m]}", "kme_id": m} for m in PEERS[n]},
        }
    for n in ("T", "R", "B"):
        net.configs[n]["entanglement"] = {
            "medium": {"port": medium_port},
            "timeout_s": 2.0,
            "bbm92": {"block_size": 256},
        }
    return ca


async def test_key_over_a_qkd_hop_and_a_repeater_segment(
    start_agent: AgentFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_medium(seed=5) as medium:
        net = Net(
            tmp_path,
            ["A", "T", "R", "B"],
            [("a-t", "A", "T", 10.0), ("t-r", "T", "R", 40.0), ("r-b", "R", "B", 40.0)],
        )
        saes = Saes(configure(net, tmp_path, medium.port), net)
        try:
            await net.start(start_agent)
            seed(
                net,
                tmp_path / "ctl.sqlite",
                {
                    "T": ("relay", True, MEMORY),
                    "R": ("repeater", False, REPEATER),
                    "B": ("endpoint", True, MEMORY),
                },
            )
            a, t, r, b = (net.ids[n] for n in "ATRB")
            async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
                sid = str(uuid.uuid4())
                status, body = await lab.post(
                    f"/data/{NET}", {"qsdn-orchestrator:qkd_svc_link": [key(net, sid, repeaters=True)]}
                )
                assert status == 201, body
                link = (await lab.get(f"/data/{NET}/qkd_svc_link={sid}"))["qsdn-orchestrator:qkd_svc_link"][0]
                assert link["path"] == [a, t, r, b] and link["plan"]["key_visible_to"] == [a, t, b]

                # the hop links: the A - T PHYS link, the T - B key link of the repeater segment
                t_cfg = await node_config(net, "T")
                (key_link,) = texts(t_cfg, "//e:key_qkdl_id/text()")
                phys = [
                    q
                    for q in texts(t_cfg, "//n:qkd_link[contains(n:qkdl_type, 'PHYS')]/n:qkdl_id/text()")
                    if q != key_link
                ]
                assert len(phys) == 1, phys
                (ab,) = phys
                kss = {n: net.agents[n].agent.keystore for n in KME_NODES}
                await wait_until(
                    lambda: kss["A"].stored_bits(ab) >= 4 * SIZE and kss["T"].stored_bits(ab) >= 4 * SIZE,
                    timeout_s=30,
                )
                await wait_until(
                    lambda: kss["T"].stored_bits(key_link) >= SIZE and kss["B"].stored_bits(key_link) >= SIZE,
                    timeout_s=60,
                )
                a_blocks = {
                    x.block_id: kss["B"].get_block(key_link, x.block_id) for x in kss["B"].blocks(key_link)
                }

                # ETSI 014: enc_keys at A, the same bytes at B by key_ID, once
                status, enc = await saes.post(
                    "A", "sae-a", "/api/v1/keys/sae-b/enc_keys", {"number": 1, "size": SIZE}
                )
                assert status == 200, enc
                ids = [k["key_ID"] for k in enc["keys"]]
                body = {"key_IDs": [{"key_ID": i} for i in ids]}
                status, dec = await saes.post("B", "sae-b", "/api/v1/keys/sae-a/dec_keys", body)
                assert status == 200, dec
                assert dec["keys"] == enc["keys"]
                status, again = await saes.post("B", "sae-b", "/api/v1/keys/sae-a/dec_keys", body)
                assert status == 400 and "unknown or already delivered" in again["message"], again

                # each hop's key taken once at both of its ends, nothing discarded
                assert kme_bits(net, "A", ab) == {"consumed": SIZE}
                assert kme_bits(net, "T", ab) == {"consumed": SIZE}
                assert kme_bits(net, "T", key_link) == {"consumed": SIZE}
                assert kme_bits(net, "B", key_link) == {"consumed": SIZE}
                # T relayed it (a trusted relay: it held both hop pads, so it could read the key)
                assert net.agents["T"].agent.kme.relay.relayed == 1

                # R, the repeater, holds nothing of the key: no key link, no byte in files, logs or driver
                rep = await node_config(net, "R")
                assert texts(rep, "//n:qkd_link | //n:qkd_app | //e:key_qkdl_id") == []
                served = [base64.b64decode(k["key"]) for k in enc["keys"]]
                handle = net.agents["R"]
                assert handle.agent.kme is None
                assert_node_holds_no_key(
                    handle.agent, Path(handle.data_dir), served + list(a_blocks.values()), caplog
                )
        finally:
            await saes.close()
