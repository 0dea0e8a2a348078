"""Lab benchmark: time to bring labs of 3, 10 and 30 nodes up, and what an agent costs idle.

For each size a chain topology is generated (endpoints at both ends, trusted relays between, 25 km
spans, one session end to end), brought up with the lab launcher in processes mode
(`qsdn.lab.launcher.up`: configuration, agents, controller, onboarding, the session provisioned),
then each agent's CPU (over a 10 s idle window, the PHYS links producing key) and resident memory
are read from /proc, and the lab is taken down.

    .venv/bin/python benchmarks/lab.py [--sizes 3 10 30] [--idle-s 10] [--json]

Then the same under key-delivery load: the session's two SAEs exchange keys back to back over ETSI
014 (relayed through every node of the chain) for the same window, as fast as the session's
provisioned `virt_bandwidth` (10 kbit/s) lets them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qsdn.errors import QsdnError
from qsdn.lab.launcher import down, exchange_keys, up
from qsdn.lab.topology import parse_topology

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provision import machine

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def chain(n: int) -> dict[str, Any]:
    names = [f"n{i:02d}" for i in range(n)]
    return {
        "name": f"chain{n}",
        "description": f"{n}-node chain for the lab benchmark",
        "nodes": [
            {
                "name": name,
                "role": "endpoint" if i in (0, n - 1) else "trusted-relay",
                **({"saes": [f"sae-{name}"]} if i in (0, n - 1) else {}),
            }
            for i, name in enumerate(names)
        ],
        "spans": [
            {"id": f"s{i:02d}", "a": names[i], "b": names[i + 1], "length_km": 25} for i in range(n - 1)
        ],
        "sessions": [
            {
                "name": "end-to-end",
                "src": names[0],
                "dst": names[-1],
                "src_sae": f"sae-{names[0]}",
                "dst_sae": f"sae-{names[-1]}",
                "rate_bps": 10000,
            }
        ],
    }


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


async def one(n: int, idle_s: float) -> dict[str, Any]:
    topo = parse_topology(chain(n), f"chain{n}.yaml")
    with tempfile.TemporaryDirectory(prefix=f"qsdn-bench-lab{n}-") as d:
        lab_dir = Path(d) / "lab"
        t0 = time.perf_counter()
        result = await up(topo, lab_dir)
        up_s = time.perf_counter() - t0
        try:
            if result.failed_sessions:
                raise RuntimeError(f"sessions not active: {result.failed_sessions}")
            pids = [int(node["pid"]) for node in result.lab["nodes"]]
            start = {p: cpu_ticks(p) for p in pids}
            await asyncio.sleep(idle_s)
            cpu = [(cpu_ticks(p) - start[p]) / TICKS / idle_s * 100 for p in pids]
            rss = [rss_mib(p) for p in pids]
            # key delivery load: the end-to-end session's SAEs exchange 4 x 256-bit keys back to
            # back (ETSI 014 enc_keys at one end, relayed through every node, dec_keys at the other)
            start = {p: cpu_ticks(p) for p in pids}
            t_load, exchanges = time.perf_counter(), 0
            while time.perf_counter() - t_load < idle_s:
                try:
                    ex = await exchange_keys(result.lab, "end-to-end", number=4, size=256)
                except QsdnError as exc:
                    if "capacity" not in str(exc):  # virt_bandwidth reached: wait for the bucket
                        raise
                    await asyncio.sleep(0.02)
                    continue
                if not ex.identical:
                    raise RuntimeError("keys differ")
                exchanges += 1
            load_s = time.perf_counter() - t_load
            cpu_load = [(cpu_ticks(p) - start[p]) / TICKS / load_s * 100 for p in pids]
            rss_load = [rss_mib(p) for p in pids]
        finally:
            t1 = time.perf_counter()
            await asyncio.to_thread(down, lab_dir)
            down_s = time.perf_counter() - t1
    return {
        "nodes": n,
        "up_s": up_s,
        "down_s": down_s,
        "agent_cpu_pct_median": statistics.median(cpu),
        "agent_cpu_pct_max": max(cpu),
        "agent_rss_mib_median": statistics.median(rss),
        "agent_rss_mib_max": max(rss),
        "load_keys_per_s": exchanges * 4 / load_s,
        "load_agent_cpu_pct_median": statistics.median(cpu_load),
        "load_agent_cpu_pct_max": max(cpu_load),
        "load_agent_rss_mib_max": max(rss_load),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 10, 30])
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = [asyncio.run(one(n, args.idle_s)) for n in args.sizes]
    if args.json:
        print(json.dumps({"machine": machine(), "results": results}, indent=2))
        return 0
    console = Console()
    console.print(f"machine: {machine()}")
    t = Table(title="lab bring-up (processes mode, chain, one session end to end)")
    for c in (
        "nodes",
        "up s",
        "down s",
        "agent CPU % idle (median / max)",
        "agent RSS MiB (median / max)",
        "keys/s end to end",
        "agent CPU % under load (median / max)",
        "RSS MiB under load (max)",
    ):
        t.add_column(c)
    for r in results:
        t.add_row(
            str(r["nodes"]),
            f"{r['up_s']:.1f}",
            f"{r['down_s']:.1f}",
            f"{r['agent_cpu_pct_median']:.1f} / {r['agent_cpu_pct_max']:.1f}",
            f"{r['agent_rss_mib_median']:.0f} / {r['agent_rss_mib_max']:.0f}",
            f"{r['load_keys_per_s']:.0f}",
            f"{r['load_agent_cpu_pct_median']:.1f} / {r['load_agent_cpu_pct_max']:.1f}",
            f"{r['load_agent_rss_mib_max']:.0f}",
        )
    console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
