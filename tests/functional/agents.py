"""Helpers for functional tests: agent configurations, a two-node pair, payload builders."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.server import NetconfAgent, build_agent
from qsdn.netconf.client import NetconfClient
from qsdn.ports import free_port
from qsdn.yang import SchemaContext, agent_schema

USER = "admin"
PASSWORD = "qsdn-test-pw"


@dataclass
class AgentHandle:
    agent: NetconfAgent
    node_id: str
    port: int
    data_dir: Path
    config: dict[str, Any]

    def client(self, **kw: Any) -> NetconfClient:
        return NetconfClient("127.0.0.1", self.port, USER, password=PASSWORD, known_hosts=None, **kw)


def node_config(
    tmp: Path,
    name: str,
    *,
    node_id: str | None = None,
    port: int | None = None,
    interfaces: list[dict[str, Any]] | None = None,
    netconf: dict[str, Any] | None = None,
    device: dict[str, Any] | None = None,
) -> dict[str, Any]:
    nc: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port or free_port(),
        "users": [{"name": USER, "password": PASSWORD}],
    }
    nc.update(netconf or {})
    return {
        "node_id": node_id or str(uuid.uuid4()),
        "name": name,
        "data_dir": str(tmp / name),
        "netconf": nc,
        "device": device or {"tick_s": 0.05},
        "interfaces": interfaces or [],
    }


@pytest.fixture(scope="session")
def schema() -> SchemaContext:
    return agent_schema()


AgentFactory = Callable[[dict[str, Any]], Awaitable[AgentHandle]]


@pytest.fixture
async def start_agent(schema: SchemaContext) -> AsyncIterator[AgentFactory]:
    stack = AsyncExitStack()

    async def start(cfg: dict[str, Any]) -> AgentHandle:
        config = parse_config(cfg, source=f"{cfg['name']}.yaml")
        agent = build_agent(config, schema)
        await agent.start()
        stack.push_async_callback(agent.stop)
        assert agent.port is not None
        return AgentHandle(agent, config.node_id, agent.port, config.data_dir, cfg)

    async with stack:
        yield start


def pair_configs(
    tmp: Path, *, length_km: float = 50.0, band: str = "C"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two nodes joined by one fibre: interface 1 on each, each pointing at the other's channel port."""
    qa, qb = free_port(), free_port()
    fibre = {"length_km": length_km, "band": band, "extra_loss_db": 0.0}
    a = node_config(
        tmp,
        "alice",
        interfaces=[{"qkdi_id": 1, "listen": {"port": qa}, "peer": {"port": qb}, "fibre": fibre}],
    )
    b = node_config(
        tmp,
        "bob",
        interfaces=[{"qkdi_id": 1, "listen": {"port": qb}, "peer": {"port": qa}, "fibre": fibre}],
    )
    return a, b


TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"


def phys_link_xml(
    qkdl_id: str, local_node: str, remote_node: str, role: str, *, enable: bool = True, extra: str = ""
) -> str:
    return f"""
<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}">
  <qkdn_id>{local_node}</qkdn_id>
  <qkd_links>
    <qkd_link>
      <qkdl_id>{qkdl_id}</qkdl_id>
      <qkdl_enable>{str(enable).lower()}</qkdl_enable>
      <qkdl_local><qkdn_id>{local_node}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_local>
      <qkdl_remote><qkdn_id>{remote_node}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_remote>
      <qkdl_type>t:PHYS</qkdl_type>
      <phys_qkd_role>t:{role}</phys_qkd_role>
      <phys_wavelength>20</phys_wavelength>{extra}
    </qkd_link>
  </qkd_links>
</qkd_node>"""


async def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step_s)
