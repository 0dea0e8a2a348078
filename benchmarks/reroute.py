"""Re-route benchmark: how long a key session takes to move after its fibre is cut.

Six ``qsdn agent run`` processes in a ring (20 km spans), a controller in this process. Each round:
create a session n0 -> n2 (it takes the short way, over n1), cut the fibre n0-n1 through the
emulated hardware's fault switch, and time

- detection: from the cut until the controller receives ``sdqkdn_link_down``;
- move: from that notification until the transaction that moves the session to n0-n5-n4-n3-n2 is
  committed on every node;

then repair the fibre, wait until the span is usable again, delete the session.

    .venv/bin/python benchmarks/reroute.py [--rounds 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from controller.provision import phys_link_id
from controller.service import Controller, ControllerSettings
from controller.southbound.asyncssh_client import AsyncsshNodeClient
from controller.store import NodeRecord, SessionRecord, SpanRecord, Store
from qsdn.netconf.client import NetconfClient
from qsdn.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provision import agent_processes, machine, wait_ports

PASSWORD = "bench-pw"
N = 6
NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
EMU_NS = "urn:qsdn:yang:qsdn-qkd-emulation"


def build_ring(work: Path) -> tuple[list[NodeRecord], list[SpanRecord], list[Path]]:
    names = [f"n{i}" for i in range(N)]
    ids = {n: str(uuid.uuid4()) for n in names}
    nc = {n: free_port() for n in names}
    q = {(n, side): free_port() for n in names for side in ("cw", "ccw")}
    paths = []
    for i, n in enumerate(names):
        nxt, prv = names[(i + 1) % N], names[(i - 1) % N]
        fibre = {"length_km": 20.0, "band": "C"}
        cfg = {
            "node_id": ids[n],
            "name": n,
            "data_dir": str(work / n),
            "netconf": {
                "host": "127.0.0.1",
                "port": nc[n],
                "users": [{"name": "admin", "password": PASSWORD}],
            },
            "device": {"tick_s": 0.05},
            "interfaces": [
                {
                    "qkdi_id": 1,
                    "listen": {"port": q[(n, "cw")]},
                    "peer": {"port": q[(nxt, "ccw")]},
                    "fibre": fibre,
                },
                {
                    "qkdi_id": 2,
                    "listen": {"port": q[(n, "ccw")]},
                    "peer": {"port": q[(prv, "cw")]},
                    "fibre": fibre,
                },
            ],
        }
        p = work / f"{n}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        paths.append(p)
    nodes = [NodeRecord(ids[n], n, "127.0.0.1", nc[n], "admin", PASSWORD) for n in names]
    spans = [
        SpanRecord(f"s{i}", ids[names[i]], ids[names[(i + 1) % N]], 20.0, a_qkdi_id=1, b_qkdi_id=2)
        for i in range(N)
    ]
    return nodes, spans, paths


def fault(qkdl_id: str, cut: bool) -> str:
    return (
        f'<qkd_node xmlns="{NODE_NS}"><qkd_links><qkd_link><qkdl_id>{qkdl_id}</qkdl_id>'
        f'<qsdn_faults xmlns="{EMU_NS}"><fibre_cut>{str(cut).lower()}</fibre_cut></qsdn_faults>'
        "</qkd_link></qkd_links></qkd_node>"
    )


async def wait_for(pred: Any, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


async def rounds(
    nodes: list[NodeRecord], spans: list[SpanRecord], work: Path, count: int
) -> list[dict[str, float]]:
    store = Store(work / "ctl.sqlite")
    for n in nodes:
        store.put_node(n)
    for s in spans:
        store.put_span(s)
    ctl = Controller(store, AsyncsshNodeClient, ControllerSettings(confirm_timeout_s=30, step_timeout_s=10))
    await ctl.start()
    n0 = nodes[0]
    out: list[dict[str, float]] = []
    try:
        async with NetconfClient(n0.host, n0.port, "admin", password=PASSWORD) as c0:
            for _ in range(count):
                s = await ctl.create_session(
                    SessionRecord(
                        str(uuid.uuid4()), nodes[0].node_id, nodes[2].node_id, "sae-a", "sae-c", 100
                    )
                )
                assert s.path == (nodes[0].node_id, nodes[1].node_id, nodes[2].node_id), s.path
                before = len(ctl.reroutes)
                t_cut = time.monotonic()
                await c0.edit_config(fault(phys_link_id("s0"), True))
                await wait_for(lambda: len(ctl.reroutes) > before, 30)  # noqa: B023
                ev = ctl.reroutes[-1]
                if not ev.ok:
                    raise RuntimeError(f"re-route failed: {ev.detail}")
                out.append(
                    {
                        "detect_ms": (ev.started - t_cut) * 1e3,
                        "move_ms": ev.seconds * 1e3,
                        "total_ms": (ev.finished - t_cut) * 1e3,
                    }
                )
                await c0.edit_config(fault(phys_link_id("s0"), False))
                await wait_for(lambda: "s0" not in ctl.down_spans, 30)
                await ctl.delete_session(s.session_id)
    finally:
        await ctl.stop()
        store.close()
    return out


async def main_async(args: argparse.Namespace) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="qsdn-bench-reroute-") as d:
        work = Path(d)
        nodes, spans, configs = build_ring(work)
        async with agent_processes(configs):
            await wait_ports(nodes)
            return await rounds(nodes, spans, work, args.rounds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    res = asyncio.run(main_async(args))
    summary = {
        k: {"median": statistics.median(r[k] for r in res), "max": max(r[k] for r in res)}
        for k in ("detect_ms", "move_ms", "total_ms")
    }
    if args.json:
        print(json.dumps({"machine": machine(), "rounds": res, "summary": summary}, indent=2))
        return 0
    console = Console()
    console.print(f"machine: {machine()}")
    t = Table(title=f"fibre cut -> session moved ({args.rounds} rounds, 6-node ring, 2 -> 4 hops)")
    for c in ("phase", "median ms", "max ms"):
        t.add_column(c)
    for k, label in (("detect_ms", "cut -> link-down at controller"), ("move_ms", "link-down -> moved"),
                     ("total_ms", "cut -> moved")):  # fmt: skip
        t.add_row(label, f"{summary[k]['median']:.1f}", f"{summary[k]['max']:.1f}")
    console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
