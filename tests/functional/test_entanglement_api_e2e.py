"""The entanglement delivery API end to end: a pairs session created through the controller's RESTCONF.

Real agents A (end), R (repeater) and B (end) share an in-process medium service; A and B run KMEs whose
CA also signs the client certificates of two applications, app-a and app-b. The test creates one
``service entanglement`` session (``src_sae`` app-a at A, ``dst_sae`` app-b at B) through RESTCONF and
makes no NETCONF edit itself: the controller writes the session, with its ``clients``, into the nodes.
Then app-a finds the session at A's KME, the two applications measure the same pairs in the Z basis and
their outcomes agree at the rate the reported fidelity implies (a Werner pair of fidelity F differs with
probability 2(1 - F)/3), app-b is refused at A, and deleting the session through the controller ends the
API at both ends.

No assertion is about wall-clock time: everything polls with a timeout.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.entanglement_provision import segment_session_id
from qsdn.pki import Issued, client_context, issue
from qsdn.ports import free_port
from tests.functional.agents import AgentFactory
from tests.functional.entangled import (
    kme_tls,
    measure_rounds,
    node_pki,
    qber,
    qber_bound,
    running_medium,
)
from tests.functional.labnet import Net
from tests.functional.test_controller_entanglement_sessions import (
    NET,
    entanglement_session,
    node_config,
    running_lab,
    seed,
    texts,
)

pytestmark = pytest.mark.asyncio

BASE = "/api/v1/entanglement"
APPS = {"A": "app-a", "B": "app-b"}
#: Long-lived memories, so that a pair's fidelity when measured is the one it was delivered with.
END_MEMORY = {"memories": 8, "coherence_time_s": 1000.0}
REPEATER_MEMORY = {"memories": 2, "coherence_time_s": 1000.0}
TARGET_FIDELITY = "0.9"
PAIRS = 400


@dataclass
class Apps:
    """app-a and app-b, each with its client certificate, calling a KME of ``net`` by node name."""

    net: Net
    ca: Issued
    session_id: str = ""
    certs: dict[str, Issued] = field(default_factory=dict)
    http: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def _client(self, app: str) -> aiohttp.ClientSession:
        if app not in self.http:
            ctx: ssl.SSLContext = client_context(self.ca.cert_pem, self.certs[app])
            self.http[app] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
        return self.http[app]

    def url(self, node: str, path: str) -> str:
        return f"https://127.0.0.1:{self.net.configs[node]['kme']['port']}{path}"

    async def get(self, node: str, app: str, path: str) -> tuple[int, Any]:
        async with self._client(app).get(self.url(node, path)) as resp:
            return resp.status, await resp.json()

    async def measure(self, node: str, body: Any, app: str | None = None) -> tuple[int, Any]:
        url = self.url(node, f"{BASE}/{self.session_id}/measure")
        async with self._client(app or APPS[node]).post(url, json=body) as resp:
            return resp.status, await resp.json()

    async def status(self, node: str) -> dict[str, Any]:
        code, body = await self.get(node, APPS[node], f"{BASE}/{self.session_id}/status")
        assert code == 200, body
        return dict(body)

    async def close(self) -> None:
        for s in self.http.values():
            await s.close()


async def poll(check: Any, timeout_s: float = 20.0) -> Any:
    """Await ``check()`` every 0.1 s until it returns something true; that value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not (value := await check()):
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.1)
    return value


def configure(net: Net, tmp: Path, medium_port: int) -> Issued:
    """KMEs at the ends A and B; entanglement drivers on the medium at A, R and B."""
    pki = tmp / "pki"
    ca = node_pki(pki, "qsdn pairs e2e test CA", ("A", "B"))
    for n in ("A", "B"):
        net.configs[n]["kme"] = {"port": free_port(), "kme_id": n, **kme_tls(pki, n), "peer_timeout_s": 2.0}
    for n in ("A", "R", "B"):
        net.configs[n]["entanglement"] = {"medium": {"port": medium_port}, "timeout_s": 2.0}
    return ca


async def test_pairs_session_created_through_restconf_serves_both_applications(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    async with running_medium(seed=17) as medium:
        net = Net(tmp_path, ["A", "R", "B"], [("a-r", "A", "R", 40.0), ("r-b", "R", "B", 40.0)])
        ca = configure(net, tmp_path, medium.port)
        apps = Apps(net, ca, certs={app: issue(ca, app, client=True) for app in APPS.values()})
        try:
            await net.start(start_agent)
            seed(
                net,
                tmp_path / "ctl.sqlite",
                {
                    "A": ("endpoint", True, END_MEMORY),
                    "R": ("repeater", False, REPEATER_MEMORY),
                    "B": ("endpoint", True, END_MEMORY),
                },
            )
            async with running_lab(net, tmp_path / "ctl.sqlite") as lab:
                sid = str(uuid.uuid4())
                status, body = await lab.post(
                    f"/data/{NET}",
                    {"qsdn-orchestrator:qkd_svc_link": [entanglement_session(net, sid, TARGET_FIDELITY)]},
                )
                assert status == 201, body
                link = (await lab.get(f"/data/{NET}/qkd_svc_link={sid}"))["qsdn-orchestrator:qkd_svc_link"][0]
                assert link["status"] == "active" and link["service"] == "entanglement", link
                # the controller named each end's application in that end's part of the session
                assert texts(await node_config(net, "A"), "//e:session/e:clients/text()") == ["app-a"]
                assert texts(await node_config(net, "B"), "//e:session/e:clients/text()") == ["app-b"]
                apps.session_id = segment_session_id(sid, 0, 0)

                # app-a finds the session at A's KME
                async def listed() -> list[dict[str, Any]]:
                    code, body = await apps.get("A", "app-a", f"{BASE}/sessions")
                    return list(body["sessions"]) if code == 200 else []

                (session,) = await poll(listed)
                assert session["session_ID"] == apps.session_id
                assert session["local_qkdn_ID"] == net.ids["A"] and session["peer_qkdn_ID"] == net.ids["B"]
                assert session["target_fidelity"] == float(TARGET_FIDELITY)

                # pairs arrive at both ends; the two applications measure the same ids in Z
                for node in ("A", "B"):
                    await poll(lambda node=node: _available(apps, node), timeout_s=60)
                # An end holds one pair at a time (the memories the controller reserved there), so A takes
                # one pair a round and B frees its memory by measuring the same id. First both ends drop
                # what waited since it arrived: its twin may be near the end of its hold time at the other.
                for node in ("A", "B"):
                    code, body = await apps.measure(node, {"number": 1, "basis": "Z", "timeout_s": 0.5})
                    assert code in (200, 503), body
                matched = await measure_rounds(apps, "Z", "Z", PAIRS, ends=("A", "B"), number=1, timeout_s=3)
                assert all(a["basis"] == "Z" == b["basis"] for a, b in matched)
                st = await apps.status("B")
                fidelity = st["fidelity"]
                assert float(TARGET_FIDELITY) <= fidelity <= 1.0, st
                expected = 2 * (1 - fidelity) / 3
                assert st["expected_qber"] == pytest.approx(expected)
                rate = qber(matched)
                assert abs(rate - expected) <= qber_bound(expected, len(matched)), (rate, expected, fidelity)
                assert (await apps.status("A"))["pairs_measured"] >= len(matched)

                # app-b is not a client of the session at A
                code, body = await apps.get("A", "app-b", f"{BASE}/sessions")
                assert code == 401, body
                code, body = await apps.get("A", "app-b", f"{BASE}/{apps.session_id}/status")
                assert code == 401, body
                code, body = await apps.measure("A", {"number": 1, "basis": "Z"}, app="app-b")
                assert code == 401, body

                # deleting the session through the controller ends the API at both ends
                assert await lab.delete(f"/data/{NET}/qkd_svc_link={sid}") == 204
                for node, app in APPS.items():
                    assert texts(await node_config(net, node), "//e:session/e:session_id/text()") == [], node

                    async def gone(node: str = node, app: str = app) -> bool:
                        code, _ = await apps.get(node, app, f"{BASE}/{apps.session_id}/status")
                        return code != 200

                    await poll(gone)
                    code, body = await apps.get(node, app, f"{BASE}/{apps.session_id}/status")
                    assert code == 404 and "no pairs session" in body["message"], (node, body)
                    code, body = await apps.measure(node, {"number": 1, "basis": "Z"})
                    assert code == 404, (node, body)
        finally:
            await apps.close()


async def _available(apps: Apps, node: str) -> bool:
    return bool((await apps.status(node))["pairs_available"] > 0)
