"""Helpers for functional tests of agents sharing a quantum medium: configuration snippets, node PKI,
the medium service and the agents' start and stop.

Each test module keeps its own node ids, hop parameters and sessions; these helpers only build the parts
every chain of real agents has in common.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.config import parse_config
from agent.drivers.medium_service import MediumServer
from agent.server import NetconfAgent, build_agent
from qsdn.netconf.client import NetconfClient
from qsdn.pki import Issued, create_ca, issue, write_pem
from qsdn.yang import SchemaContext
from tests.functional.agents import NODE_NS, PASSWORD, USER

ENT_NS = "urn:qsdn:yang:qsdn-entanglement"
#: A co-located Bell-state measurement that always succeeds (the repeaters' ``bsm_station``).
BSM_STATION = "<bsm_station><swap_success_probability>1</swap_success_probability></bsm_station>"


@dataclass(frozen=True)
class Hop:
    """The fibre and source of every hop of a test chain (heralded through a midpoint station)."""

    length_km: float
    loss_db: float
    modes: int
    f0: float


def elementary_link_xml(
    link_id: str, remote: str, station: str, hop: Hop, *, source_id: int | None = None
) -> str:
    """An ``elementary_link`` to ``remote`` through ``station`` (with ``source_id`` when one is given)."""
    source = f"\n        <source_id>{source_id}</source_id>" if source_id is not None else ""
    return f"""
      <elementary_link>
        <link_id>{link_id}</link_id>
        <remote_qkdn_id>{remote}</remote_qkdn_id>
        <station_qkdn_id>{station}</station_qkdn_id>{source}
        <length_km>{hop.length_km}</length_km>
        <loss_db>{hop.loss_db}</loss_db>
        <modes>{hop.modes}</modes>
        <heralding>barrett-kok</heralding>
        <initial_fidelity>{hop.f0}</initial_fidelity>
      </elementary_link>"""


def source_xml(source_id: int, hop: Hop) -> str:
    """A Barrett-Kok ``source`` with the hop's modes and initial fidelity."""
    return f"""
      <source><source_id>{source_id}</source_id><kind>barrett-kok</kind><modes>{hop.modes}</modes>
        <initial_fidelity>{hop.f0}</initial_fidelity></source>"""


def delete_session_xml(session_id: str) -> str:
    """An edit that deletes the entanglement session ``session_id``."""
    return f"""
<qkd_node xmlns="{NODE_NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">
  <entanglement xmlns="{ENT_NS}"><sessions>
    <session nc:operation="delete"><session_id>{session_id}</session_id></session>
  </sessions></entanglement>
</qkd_node>"""


def netconf_client(agent: NetconfAgent) -> NetconfClient:
    """A NETCONF client for the test user of a started ``agent``."""
    assert agent.port is not None
    return NetconfClient("127.0.0.1", agent.port, USER, password=PASSWORD, known_hosts=None)


def node_pki(root: Path, ca_name: str, names: Iterable[str]) -> Issued:
    """A CA (``root/ca.crt``) and a server-and-client leaf per name (``root/<name>.crt``) for 127.0.0.1."""
    root.mkdir(parents=True, exist_ok=True)
    ca = create_ca(ca_name)
    write_pem(ca, root / "ca.crt", root / "ca.key")
    for name in names:
        leaf = issue(ca, name, server=True, client=True, ips=["127.0.0.1"], dns=["localhost"])
        write_pem(leaf, root / f"{name}.crt", root / f"{name}.key")
    return ca


def kme_tls(root: Path, name: str) -> dict[str, str]:
    """The ``cert``, ``key`` and ``ca`` entries of ``name``'s KME configuration, from :func:`node_pki`."""
    return {"cert": str(root / f"{name}.crt"), "key": str(root / f"{name}.key"), "ca": str(root / "ca.crt")}


@asynccontextmanager
async def running_medium(seed: int) -> AsyncIterator[MediumServer]:
    """A medium service on loopback, stopped on exit."""
    medium = MediumServer(seed=seed)
    await medium.start()
    try:
        yield medium
    finally:
        await medium.stop()


@asynccontextmanager
async def running_agents(
    configs: Mapping[str, dict[str, Any]], schema: SchemaContext, agents: dict[str, NetconfAgent]
) -> AsyncIterator[dict[str, NetconfAgent]]:
    """Build and start an agent per configuration, in order, into ``agents``; stop all that started on
    exit."""
    try:
        for name, cfg in configs.items():
            agent = build_agent(parse_config(cfg, source=f"{name}.yaml"), schema)
            await agent.start()
            agents[name] = agent
        yield agents
    finally:
        for agent in agents.values():
            await agent.stop()


# --- the applications' side of the pairs API (agent/kme/entanglement_api.py) ------------------------------

#: One (A's pair, B's pair) measured by the two applications, matched by ``pair_ID``.
Matched = tuple[dict[str, Any], Any]


class PairsClients(Protocol):
    """The applications of a ``pairs`` session, each calling its own end's API by node name."""

    async def measure(self, node: str, body: Any, app: str | None = None) -> tuple[int, Any]:
        """POST ``measure`` of the session at ``node`` as ``app`` (default: that end's application)."""
        ...

    async def status(self, node: str) -> dict[str, Any]:
        """The session's ``status`` at ``node`` (asserting a 200)."""
        ...


async def wait_delivering(api: PairsClients, ends: Iterable[str], timeout_s: float = 20.0) -> None:
    """Poll until each of ``ends`` has a pair waiting for its application."""
    loop = asyncio.get_running_loop()
    for node in ends:
        end = loop.time() + timeout_s
        while (await api.status(node))["pairs_available"] <= 0:
            assert loop.time() < end, f"no pair delivered at {node}"
            await asyncio.sleep(0.1)


async def measure_rounds(
    api: PairsClients,
    basis_a: Any,
    basis_b: Any | Callable[[list[dict[str, Any]]], Any],
    pairs: int,
    ends: tuple[str, str] = ("alice", "bob"),
    *,
    number: int = 16,
    timeout_s: float = 5.0,
) -> list[Matched]:
    """Measure ``pairs`` pairs at the first end by number (up to ``number`` a request, which waits at most
    ``timeout_s``) and the same ids at the second; matched.

    A pair waits at each end for at most the API's hold time from its delivery there, so the second end
    must ask for the ids before the oldest pair the first end took has waited that long: a slow chain
    needs a ``timeout_s`` well below the hold time."""
    first, second = ends
    matched: list[Matched] = []
    while len(matched) < pairs:
        code, a = await api.measure(first, {"number": number, "basis": basis_a, "timeout_s": timeout_s})
        assert code == 200, a
        ids = [p["pair_ID"] for p in a["pairs"]]
        b_basis = basis_b(a["pairs"]) if callable(basis_b) else basis_b
        code, b = await api.measure(second, {"pair_IDs": ids, "basis": b_basis, "timeout_s": 5})
        assert code == 200, b
        assert "missing_pair_IDs" not in b, b
        assert [p["pair_ID"] for p in b["pairs"]] == ids
        matched += list(zip(a["pairs"], b["pairs"], strict=True))
    return matched


def qber(matched: list[Matched]) -> float:
    """The fraction of matched pairs whose outcomes differ."""
    return sum(1 for a, b in matched if a["outcome"] != b["outcome"]) / len(matched)


def qber_bound(p: float, n: int) -> float:
    """Four standard deviations of a binomial rate over ``n`` samples (at least that of p = 1 %)."""
    return 4 * math.sqrt(max(p, 0.01) * (1 - max(p, 0.01)) / n)
