"""Provisioning benchmark: a 5-hop key session set up end to end over NETCONF.

Starts six ``qsdn agent run`` processes joined in a chain by emulated fibres, a controller in this
process, and measures ``create_session`` (path computation, plan, lock + candidate edit + validate +
confirmed commit + confirming commit + unlock on all six nodes) and ``delete_session`` (the same
transaction removing the session), with the asyncssh and the ncclient southbound clients.

    .venv/bin/python benchmarks/provision.py [--iterations 30] [--clients asyncssh ncclient] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from controller.main import client_factory
from controller.service import Controller, ControllerSettings
from controller.store import NodeRecord, SessionRecord, SpanRecord, Store
from qsdn.ports import free_port

PASSWORD = "bench-pw"
HOPS = 5


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {system}"


def _iface(qkdi_id: int, listen: int, peer: int) -> dict[str, Any]:
    fibre = {"length_km": 20.0, "band": "C"}
    return {"qkdi_id": qkdi_id, "listen": {"port": listen}, "peer": {"port": peer}, "fibre": fibre}


def build_chain(work: Path) -> tuple[list[NodeRecord], list[SpanRecord], list[Path]]:
    names = [f"n{i}" for i in range(HOPS + 1)]
    ids = {n: str(uuid.uuid4()) for n in names}
    nc_ports = {n: free_port() for n in names}
    q_ports = {(n, side): free_port() for n in names for side in ("l", "r")}
    configs = []
    for i, n in enumerate(names):
        ifaces = []
        if i > 0:
            ifaces.append(_iface(1, q_ports[(n, "l")], q_ports[(names[i - 1], "r")]))
        if i < HOPS:
            ifaces.append(_iface(2, q_ports[(n, "r")], q_ports[(names[i + 1], "l")]))
        cfg = {
            "node_id": ids[n],
            "name": n,
            "data_dir": str(work / n),
            "netconf": {
                "host": "127.0.0.1",
                "port": nc_ports[n],
                "users": [{"name": "admin", "password": PASSWORD}],
            },
            "device": {"tick_s": 0.05},
            "interfaces": ifaces,
        }
        path = work / f"{n}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        configs.append(path)
    nodes = [NodeRecord(ids[n], n, "127.0.0.1", nc_ports[n], "admin", PASSWORD) for n in names]
    spans = [
        SpanRecord(f"s{i}", ids[names[i]], ids[names[i + 1]], 20.0, a_qkdi_id=2, b_qkdi_id=1)
        for i in range(HOPS)
    ]
    return nodes, spans, configs


async def wait_ports(nodes: list[NodeRecord]) -> None:
    for n in nodes:
        for _ in range(300):
            try:
                _, w = await asyncio.open_connection(n.host, n.port)
                w.close()
                await w.wait_closed()
                break
            except OSError:
                await asyncio.sleep(0.05)


def _spawn(configs: list[Path]) -> list[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "qsdn.cli", "--log-level", "warning", "agent", "run", "--config"]
    return [
        subprocess.Popen([*argv, str(c)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for c in configs
    ]


@contextlib.asynccontextmanager
async def agent_processes(configs: list[Path]) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """One ``qsdn agent run`` process per node.yaml, stopped with SIGTERM (then killed) at the end."""
    procs = _spawn(configs)
    try:
        yield procs
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "n": len(s),
        "median_ms": statistics.median(s) * 1e3,
        "p95_ms": s[min(len(s) - 1, int(0.95 * len(s)))] * 1e3,
        "min_ms": s[0] * 1e3,
    }


async def run_client(
    kind: str, nodes: list[NodeRecord], spans: list[SpanRecord], work: Path, iterations: int
) -> dict[str, Any]:
    store = Store(work / f"ctl-{kind}.sqlite")
    for n in nodes:
        store.put_node(n)
    for s in spans:
        store.put_span(s)
    ctl = Controller(store, client_factory(kind), ControllerSettings(confirm_timeout_s=30, step_timeout_s=10))
    await ctl.start()
    try:

        def rec() -> SessionRecord:
            return SessionRecord(
                str(uuid.uuid4()), nodes[0].node_id, nodes[-1].node_id, "sae-src", "sae-dst", 100
            )

        t0 = time.perf_counter()
        first = await ctl.create_session(rec())
        first_s = time.perf_counter() - t0
        assert len(first.path) == HOPS + 1, first.path
        await ctl.delete_session(first.session_id)
        creates, deletes = [], []
        for _ in range(iterations):
            t0 = time.perf_counter()
            s = await ctl.create_session(rec())
            creates.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await ctl.delete_session(s.session_id)
            deletes.append(time.perf_counter() - t0)
        return {
            "client": kind,
            "first_create_ms": first_s * 1e3,
            "create": stats(creates),
            "delete": stats(deletes),
        }
    finally:
        await ctl.stop()
        store.close()


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="qsdn-bench-prov-") as d:
        work = Path(d)
        nodes, spans, configs = build_chain(work)
        async with agent_processes(configs):
            await wait_ports(nodes)
            return [await run_client(kind, nodes, spans, work, args.iterations) for kind in args.clients]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument(
        "--clients", nargs="+", default=["asyncssh", "ncclient"], choices=["asyncssh", "ncclient"]
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps({"machine": machine(), "results": results}, indent=2))
        return 0
    console = Console()
    console.print(f"machine: {machine()}")
    t = Table(title=f"{HOPS}-hop session over 6 agent processes ({args.iterations} iterations)")
    for c in (
        "client",
        "first create ms",
        "create median ms",
        "create p95 ms",
        "delete median ms",
        "delete p95 ms",
    ):
        t.add_column(c)
    for r in results:
        t.add_row(
            r["client"],
            f"{r['first_create_ms']:.1f}",
            f"{r['create']['median_ms']:.1f}",
            f"{r['create']['p95_ms']:.1f}",
            f"{r['delete']['median_ms']:.1f}",
            f"{r['delete']['p95_ms']:.1f}",
        )
    console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
