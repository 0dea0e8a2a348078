"""A small network of real agents for controller tests: nodes, fibre spans, interfaces per span."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.store import NodeRecord, SpanRecord
from tests.functional.agents import PASSWORD, USER, AgentFactory, AgentHandle, free_port, node_config


@dataclass
class Net:
    tmp: Path
    names: list[str]
    spans: list[tuple[str, str, str, float]]  # (span_id, a, b, length_km)
    ids: dict[str, str] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    agents: dict[str, AgentHandle] = field(default_factory=dict)
    qkdi: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for n in self.names:
            self.ids[n] = str(uuid.UUID(int=uuid.uuid5(uuid.NAMESPACE_DNS, f"{n}.qsdn.test").int))
        ifaces: dict[str, list[dict[str, Any]]] = {n: [] for n in self.names}
        ports = {}
        for span_id, a, b, km in self.spans:
            for end in (a, b):
                self.qkdi[(end, span_id)] = len(ifaces[end]) + 1
                ports[(end, span_id)] = free_port()
            for end, other in ((a, b), (b, a)):
                ifaces[end].append(
                    {
                        "qkdi_id": self.qkdi[(end, span_id)],
                        "listen": {"port": ports[(end, span_id)]},
                        "peer": {"port": ports[(other, span_id)]},
                        "fibre": {"length_km": km, "band": "C", "extra_loss_db": 0.0},
                    }
                )
        for n in self.names:
            self.configs[n] = node_config(self.tmp, n, node_id=self.ids[n], interfaces=ifaces[n])

    async def start(self, start_agent: AgentFactory, only: list[str] | None = None) -> None:
        for n in only or self.names:
            self.agents[n] = await start_agent(self.configs[n])

    def node_records(self) -> list[NodeRecord]:
        return [
            NodeRecord(
                node_id=self.ids[n],
                name=n,
                host="127.0.0.1",
                port=int(self.configs[n]["netconf"]["port"]),
                username=USER,
                password=PASSWORD,
            )
            for n in self.names
        ]

    def topology(self, node_extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The controller topology file (``controller.config.load_topology``) of this network.

        ``node_extra`` adds keys (role, trust, entanglement, ...) to the named nodes' entries.
        """
        extra = node_extra or {}
        return {
            "nodes": [
                {
                    "name": n,
                    "id": self.ids[n],
                    "netconf": {"host": "127.0.0.1", "port": self.configs[n]["netconf"]["port"]},
                    **extra.get(n, {}),
                }
                for n in self.names
            ],
            "spans": [
                {
                    "id": sid,
                    "a": a,
                    "b": b,
                    "length_km": km,
                    "a_qkdi": self.qkdi[(a, sid)],
                    "b_qkdi": self.qkdi[(b, sid)],
                }
                for sid, a, b, km in self.spans
            ],
        }

    def span_records(self) -> list[SpanRecord]:
        return [
            SpanRecord(
                span_id=sid,
                a=self.ids[a],
                b=self.ids[b],
                length_km=km,
                bands=("C", "O"),
                a_qkdi_id=self.qkdi[(a, sid)],
                b_qkdi_id=self.qkdi[(b, sid)],
            )
            for sid, a, b, km in self.spans
        ]


def five_node_net(tmp: Path) -> Net:
    """A-E direct is red (200 km); A-D-E is the short way round, A-B-C-E the long one."""
    return Net(
        tmp,
        ["A", "B", "C", "D", "E"],
        [
            ("s-ae", "A", "E", 200.0),
            ("s-ab", "A", "B", 30.0),
            ("s-bc", "B", "C", 40.0),
            ("s-ce", "C", "E", 30.0),
            ("s-ad", "A", "D", 30.0),
            ("s-de", "D", "E", 50.0),
        ],
    )


__all__ = ["Net", "five_node_net", "free_port"]
