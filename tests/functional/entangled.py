"""Helpers for functional tests of agents sharing a quantum medium: configuration snippets, node PKI,
the medium service and the agents' start and stop.

Each test module keeps its own node ids, hop parameters and sessions; these helpers only build the parts
every chain of real agents has in common.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
