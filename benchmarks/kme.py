"""Benchmark: ETSI GS QKD 014 key delivery, enc_keys + dec_keys pairs over mutual TLS, direct link.

Two agents run as separate processes (``qsdn agent run``), joined by one emulated PHYS link (1 km of
C-band fibre, ``--pulse-rate`` pulses/s so the link produces tens of Mbit/s), each with its KME on a
mutual-TLS port; the certificates come from :mod:`qsdn.pki`. The benchmark (this process, with
keep-alive connections per SAE and KME) is SAE ``sae-a`` at alice and SAE ``sae-b`` at bob.

One *pair* is ``POST enc_keys`` (``number`` keys of 256 bits) by the master at its KME, then
``POST dec_keys`` of those key_IDs by the slave at the other KME; every key is checked byte for byte.
Figures, each for batches of 1 and 100 keys:

* ``deliver`` flow: master sae-a at alice, the link's drawing end (alice consumes, tells bob);
* ``draw`` flow: master sae-b at bob (bob asks alice to draw, then consumes the same ranges);
* ``seq``: one pair at a time (latency of enc, dec and the pair);
* ``conc``: ``--concurrency`` pairs in flight, 16 and 64 by default (throughput: pairs/s and keys/s).

The link first stores ``--fill-mbit`` of key at both ends; then, unless ``--keep-producing``, a fibre
cut stops production so that the figures measure the KME and not the emulated QKD link (whose
producer shares the machine's CPUs). Targets (issue 4, direct link, with key available): at least
1,000 pairs/s with batches of 1 and 50,000 keys/s with batches of 100.

    .venv/bin/python benchmarks/kme.py [--seconds 5] [--concurrency 16 64] [--data-dir DIR] [--json [FILE]]

The SAEs' HTTP client is a minimal keep-alive HTTP/1.1 client (``--client lean``, the default) so that
the load generator, which shares the machine, costs little; ``--client aiohttp`` uses aiohttp's. It
runs on uvloop, as the agents do (``--client-loop asyncio`` for asyncio's own loop; the agents'
loop is chosen by ``QSDN_EVENT_LOOP``, see :mod:`qsdn.cli`).

This is a script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netconf_agent import CpuClock, agent_argv, machine_info, percentile, source_revision

from qsdn.netconf.client import NetconfClient
from qsdn.pki import Issued, client_context, create_ca, issue, write_pem
from qsdn.ports import free_port

NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
EMU_NS = "urn:qsdn:yang:qsdn-qkd-emulation"
USER = "bench"
PASSWORD = "qsdn-bench"  # a throw-away credential on loopback
ALICE = "10000000-0000-4000-8000-0000000000a1"  # sorts first: alice is the link's drawing end
BOB = "20000000-0000-4000-8000-0000000000b2"
LINK = "30000000-0000-4000-8000-0000000000c3"
KEY_BITS = 256
TARGET_PAIRS_BATCH_1 = 1000.0
TARGET_KEYS_BATCH_100 = 50000.0


# --- set-up ------------------------------------------------------------------------------------------
@dataclass
class Node:
    name: str
    node_id: str
    netconf_port: int
    kme_port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None


def make_pki(root: Path) -> tuple[Issued, dict[str, Issued]]:
    ca = create_ca("qsdn benchmark CA")
    write_pem(ca, root / "ca.crt", root / "ca.key")
    for node in ("alice", "bob"):
        write_pem(
            issue(ca, node, server=True, client=True, ips=["127.0.0.1"]),
            root / f"{node}.crt",
            root / f"{node}.key",
        )
    return ca, {sae: issue(ca, sae, client=True) for sae in ("sae-a", "sae-b")}


def write_configs(work: Path, data_root: Path, pulse_rate_hz: float) -> dict[str, Node]:
    q = {"alice": free_port(), "bob": free_port()}
    nodes = {
        n: Node(n, i, free_port(), free_port(), work / f"{n}.yaml")
        for n, i in (("alice", ALICE), ("bob", BOB))
    }
    for me, other in (("alice", "bob"), ("bob", "alice")):
        n, o = nodes[me], nodes[other]
        cfg = {
            "node_id": n.node_id,
            "name": me,
            "data_dir": str(data_root / me),
            "netconf": {
                "host": "127.0.0.1",
                "port": n.netconf_port,
                "users": [{"name": USER, "password": PASSWORD}],
            },
            "device": {"pulse_rate_hz": pulse_rate_hz, "tick_s": 0.2},
            "interfaces": [
                {
                    "qkdi_id": 1,
                    "listen": {"host": "127.0.0.1", "port": q[me]},
                    "peer": {"host": "127.0.0.1", "port": q[other]},
                    "fibre": {"length_km": 1.0, "band": "C"},
                }
            ],
            "kme": {
                "port": n.kme_port,
                "cert": str(work / f"{me}.crt"),
                "key": str(work / f"{me}.key"),
                "ca": str(work / "ca.crt"),
                "peers": {o.node_id: {"url": f"https://127.0.0.1:{o.kme_port}", "kme_id": other}},
            },
        }
        n.config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return nodes


def wait_ports(proc: subprocess.Popen[bytes], ports: Sequence[int], timeout_s: float = 60.0) -> None:
    import socket

    end = time.monotonic() + timeout_s
    for port in ports:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"an agent exited with status {proc.returncode} before listening")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(f"an agent did not listen on port {port} in time") from None
                time.sleep(0.05)


def link_xml(me: str, other: str, role: str, extra: str = "") -> str:
    return f"""<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}"><qkdn_id>{me}</qkdn_id><qkd_links><qkd_link>
<qkdl_id>{LINK}</qkdl_id><qkdl_enable>true</qkdl_enable>
<qkdl_local><qkdn_id>{me}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_local>
<qkdl_remote><qkdn_id>{other}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_remote>
<qkdl_type>t:PHYS</qkdl_type><phys_qkd_role>t:{role}</phys_qkd_role>{extra}</qkd_link></qkd_links></qkd_node>"""


def apps_xml(me: str, other: str) -> str:
    apps = ""
    for i, (master, slave) in enumerate((("sae-a", "sae-b"), ("sae-b", "sae-a"))):
        app_id = f"40000000-0000-4000-8000-00000000000{i}"
        apps += f"""<qkd_app><app_id>{app_id}</app_id><app_type>t:CLIENT</app_type>
<server_app_id>{master}</server_app_id><client_app_id>{slave}</client_app_id>
<backing_qkdl_id>{LINK}</backing_qkdl_id><local_qkdn_id>{me}</local_qkdn_id>
<remote_qkdn_id>{other}</remote_qkdn_id></qkd_app>"""
    return (
        f'<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}"><qkdn_id>{me}</qkdn_id>'
        f"<qkd_applications>{apps}</qkd_applications></qkd_node>"
    )


def _client(node: Node) -> NetconfClient:
    return NetconfClient("127.0.0.1", node.netconf_port, USER, password=PASSWORD, known_hosts=None)


async def stored_bits(node: Node) -> int:
    async with _client(node) as c:
        data = await c.get(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkd_links/></qkd_node>')
    found = data.xpath("//e:stored_key_bits/text()", namespaces={"e": EMU_NS})
    return int(found[0]) if found else 0


def _thread_cpu_s(pid: int, tid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- measuring ---------------------------------------------------------------------------------------
@dataclass
class Figure:
    flow: str
    batch: int
    mode: str
    concurrency: int
    pairs: int = 0
    wall_s: float = 0.0
    enc_ns: list[int] = field(default_factory=list)
    dec_ns: list[int] = field(default_factory=list)
    pair_ns: list[int] = field(default_factory=list)
    cpu_s: dict[str, float | None] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        pair = sorted(self.pair_ns)
        pps = self.pairs / self.wall_s if self.wall_s else math.nan
        out = {
            "flow": self.flow,
            "batch": self.batch,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "pairs": self.pairs,
            "pairs_per_s": pps,
            "keys_per_s": pps * self.batch,
            "enc_median_ms": percentile(sorted(self.enc_ns), 50),
            "dec_median_ms": percentile(sorted(self.dec_ns), 50),
            "pair_median_ms": percentile(pair, 50),
            "pair_p99_ms": percentile(pair, 99),
            "cpu_ms_per_pair": {
                k: (v * 1e3 / self.pairs if v is not None and self.pairs else None)
                for k, v in self.cpu_s.items()
            },
        }
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


class LeanClient:
    """A minimal HTTP/1.1 client for the figures: keep-alive TLS connections, one request at a time on
    each, ``Content-Length`` bodies only. It keeps the load generator's own CPU per request low (about
    half of aiohttp's client), so that the figures say more about the KME than about the client."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port = port
        self.ctx = ctx
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.all: list[asyncio.StreamWriter] = []

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx)
            self.all.append(writer)
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.port, len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length is None:
            raise RuntimeError("the KME answered without Content-Length")
        data = await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status, data

    async def close(self) -> None:
        for w in self.all:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


class AiohttpClient:
    def __init__(self, port: int, ctx: ssl.SSLContext, limit: int) -> None:
        self.port = port
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=limit))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        url = f"https://127.0.0.1:{self.port}{path}"
        headers = {"Content-Type": "application/json"}
        async with self.session.post(url, data=body, headers=headers) as r:
            return r.status, await r.read()

    async def close(self) -> None:
        await self.session.close()


class Bench:
    def __init__(
        self, nodes: dict[str, Node], ca: Issued, saes: dict[str, Issued], concurrency: int, client: str
    ) -> None:
        self.nodes = nodes
        self.clients: dict[tuple[str, str], LeanClient | AiohttpClient] = {}
        for sae, cert in saes.items():
            for node in ("alice", "bob"):
                ctx = client_context(ca.cert_pem, cert)
                port = nodes[node].kme_port
                self.clients[(sae, node)] = (
                    LeanClient(port, ctx) if client == "lean" else AiohttpClient(port, ctx, concurrency + 4)
                )

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()

    async def pair(self, flow: str, batch: int, fig: Figure) -> None:
        if flow == "deliver":
            master, m_node, slave, s_node = "sae-a", "alice", "sae-b", "bob"
        else:
            master, m_node, slave, s_node = "sae-b", "bob", "sae-a", "alice"
        t0 = time.perf_counter_ns()
        req = b'{"number": %d, "size": %d}' % (batch, KEY_BITS)
        status, raw = await self.clients[(master, m_node)].post(f"/api/v1/keys/{slave}/enc_keys", req)
        body = json.loads(raw)
        if status != 200:
            raise RuntimeError(f"enc_keys: {status} {body}")
        t1 = time.perf_counter_ns()
        ids = json.dumps({"key_IDs": [{"key_ID": k["key_ID"]} for k in body["keys"]]}).encode()
        status, raw = await self.clients[(slave, s_node)].post(f"/api/v1/keys/{master}/dec_keys", ids)
        got = json.loads(raw)
        if status != 200:
            raise RuntimeError(f"dec_keys: {status} {got}")
        t2 = time.perf_counter_ns()
        if got["keys"] != body["keys"] or len(base64.b64decode(body["keys"][0]["key"])) != KEY_BITS // 8:
            raise RuntimeError("dec_keys returned other keys than enc_keys")
        fig.enc_ns.append(t1 - t0)
        fig.dec_ns.append(t2 - t1)
        fig.pair_ns.append(t2 - t0)
        fig.pairs += 1

    def _cpu(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, node in self.nodes.items():
            assert node.proc is not None
            out[name] = CpuClock(node.proc.pid).agent_s()
            out[f"{name}-main"] = _thread_cpu_s(node.proc.pid, node.proc.pid)
        out["client"] = CpuClock.client_s()
        return out

    async def run(self, flow: str, batch: int, mode: str, concurrency: int, seconds: float) -> Figure:
        fig = Figure(flow, batch, mode, concurrency)
        for _ in range(20):  # warm-up: connections, caches
            await self.pair(flow, batch, Figure(flow, batch, mode, 1))
        cpu0 = self._cpu()
        start = time.perf_counter()
        end = start + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                await self.pair(flow, batch, fig)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        fig.wall_s = time.perf_counter() - start
        cpu1 = self._cpu()
        fig.cpu_s = {k: (None if cpu0[k] is None or cpu1[k] is None else cpu1[k] - cpu0[k]) for k in cpu0}  # type: ignore[operator]
        return fig


# --- main --------------------------------------------------------------------------------------------
def start_agents(nodes: dict[str, Node], work: Path, args: argparse.Namespace) -> None:
    for node in nodes.values():
        profile = Path(args.profile) / f"{node.name}.prof" if args.profile else None
        with (work / f"{node.name}.log").open("wb") as log:
            node.proc = subprocess.Popen(
                agent_argv(node.config, args.agent_log_level, profile), stdout=log, stderr=subprocess.STDOUT
            )


async def bench(args: argparse.Namespace, work: Path, progress: Console) -> dict[str, Any]:
    data_root = Path(args.data_dir) if args.data_dir else work
    data_root = Path(tempfile.mkdtemp(prefix="qsdn-kme-bench-", dir=data_root))
    ca, saes = make_pki(work)
    nodes = write_configs(work, data_root, args.pulse_rate)
    info = machine_info(data_root)
    info["qsdn"] = source_revision()
    start_agents(nodes, work, args)
    try:
        for node in nodes.values():
            assert node.proc is not None
            wait_ports(node.proc, [node.netconf_port, node.kme_port])
        async with _client(nodes["alice"]) as ca_nc, _client(nodes["bob"]) as cb_nc:
            await ca_nc.edit_config(link_xml(ALICE, BOB, "TRANSMITTER"))
            await cb_nc.edit_config(link_xml(BOB, ALICE, "RECEIVER"))
            await ca_nc.edit_config(apps_xml(ALICE, BOB))
            await cb_nc.edit_config(apps_xml(BOB, ALICE))
            want = int(args.fill_mbit * 1e6)
            t0 = time.monotonic()
            while True:
                have = min([await stored_bits(nodes["alice"]), await stored_bits(nodes["bob"])])
                progress.print(f"filling the link: {have / 1e6:.1f} of {args.fill_mbit} Mbit", end="\r")
                if have >= want:
                    break
                if time.monotonic() - t0 > 300:
                    raise RuntimeError("the link did not store enough key in 300 s")
                await asyncio.sleep(0.5)
            fill_rate = have / (time.monotonic() - t0)
            progress.print()
            if not args.keep_producing:
                cut = f'<qsdn_faults xmlns="{EMU_NS}"><fibre_cut>true</fibre_cut></qsdn_faults>'
                await ca_nc.edit_config(link_xml(ALICE, BOB, "TRANSMITTER", cut))
                await asyncio.sleep(1.0)
        b = Bench(nodes, ca, saes, max(args.concurrency), args.client)
        figures: list[Figure] = []
        try:
            for flow in args.flows:
                for batch in args.batches:
                    for mode, conc in [("seq", 1)] + [("conc", c) for c in args.concurrency]:
                        if mode not in args.modes:
                            continue
                        progress.print(f"{flow} batch {batch} {mode} x{conc} ...")
                        figures.append(await b.run(flow, batch, mode, conc, args.seconds))
        finally:
            await b.close()
        return {
            "machine": info,
            "link": {
                "length_km": 1.0,
                "pulse_rate_hz": args.pulse_rate,
                "fill_rate_bps": fill_rate,
                "producing_during_measurement": bool(args.keep_producing),
                "client": args.client,
                "agent_loop": os.environ.get("QSDN_EVENT_LOOP", "uvloop"),
            },
            "figures": [f.row() for f in figures],
        }
    finally:
        for node in nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(20)
                except subprocess.TimeoutExpired:
                    node.proc.kill()


def render(result: dict[str, Any], console: Console) -> None:
    m = result["machine"]
    console.print(
        f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m.get('ram_gib')} GiB, {m['os']},"
        f" Python {m['python']}; data on {m['data_dir_fs']}; qsdn {m['qsdn']}; load before {m['load_before']}"
    )
    link = result["link"]
    console.print(
        f"link: {link['length_km']} km C-band at {link['pulse_rate_hz']:.0e} pulses/s, filled at"
        f" {link['fill_rate_bps'] / 1e6:.1f} Mbit/s; production during the measurement:"
        f" {'on' if link['producing_during_measurement'] else 'off (fibre cut after filling)'};"
        f" event loops: agents {link.get('agent_loop', '?')}, load generator {link.get('client_loop', '?')}"
    )
    table = Table(
        title=f"ETSI 014 enc_keys + dec_keys pairs over mutual TLS, {KEY_BITS}-bit keys, direct link"
    )
    for col in (
        "flow",
        "batch",
        "mode",
        "pairs/s",
        "keys/s",
        "enc ms",
        "dec ms",
        "pair ms",
        "pair p99",
        "CPU ms/pair a|b|client",
    ):
        table.add_column(col, justify="right")
    for f in result["figures"]:
        cpu = f["cpu_ms_per_pair"]
        table.add_row(
            f["flow"],
            str(f["batch"]),
            f"{f['mode']} x{f['concurrency']}",
            f"{f['pairs_per_s']:.0f}",
            f"{f['keys_per_s']:.0f}",
            f"{f['enc_median_ms']:.2f}",
            f"{f['dec_median_ms']:.2f}",
            f"{f['pair_median_ms']:.2f}",
            f"{f['pair_p99_ms']:.2f}",
            " | ".join("-" if cpu.get(k) is None else f"{cpu[k]:.2f}" for k in ("alice", "bob", "client"))
            + " (main "
            + " | ".join("-" if cpu.get(k) is None else f"{cpu[k]:.2f}" for k in ("alice-main", "bob-main"))
            + ")",
        )
    console.print(table)
    best1 = max((f["pairs_per_s"] for f in result["figures"] if f["batch"] == 1), default=0.0)
    best100 = max((f["keys_per_s"] for f in result["figures"] if f["batch"] == 100), default=0.0)
    for what, got, target in (
        ("pairs/s, batch 1", best1, TARGET_PAIRS_BATCH_1),
        ("keys/s, batch 100", best100, TARGET_KEYS_BATCH_100),
    ):
        verdict = "met" if got >= target else "NOT met"
        console.print(f"target {target:,.0f} {what}: best {got:,.0f} -> {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per figure (default 5)")
    p.add_argument(
        "--concurrency", type=int, nargs="+", default=[16, 64], help="pairs in flight in the conc figures"
    )
    p.add_argument(
        "--pulse-rate", type=float, default=1e9, help="pulses/s of the emulated source (default 1e9)"
    )
    p.add_argument("--fill-mbit", type=float, default=400.0, help="key stored at both ends before measuring")
    p.add_argument("--flows", nargs="+", default=["deliver", "draw"], choices=["deliver", "draw"])
    p.add_argument(
        "--batches", nargs="+", type=int, default=[1, 100], help="keys per request (default 1 100)"
    )
    p.add_argument("--modes", nargs="+", default=["seq", "conc"], choices=["seq", "conc"])
    p.add_argument(
        "--client", default="lean", choices=["lean", "aiohttp"], help="the SAEs' HTTP client (default lean)"
    )
    p.add_argument(
        "--client-loop",
        default="uvloop",
        choices=["uvloop", "asyncio"],
        help="the load generator's event loop (default uvloop, as the agents')",
    )
    p.add_argument("--keep-producing", action="store_true", help="leave the link producing while measuring")
    p.add_argument("--data-dir", help="put the agents' data directories under DIR (e.g. /dev/shm)")
    p.add_argument("--agent-log-level", default="warning")
    p.add_argument("--profile", help="run the agents under cProfile, statistics to DIR/<node>.prof")
    p.add_argument("--json", nargs="?", const="-", help="results as JSON to FILE (or stdout)")
    args = p.parse_args(argv)
    to_stdout_json = args.json == "-"
    console = Console(stderr=to_stdout_json, width=160)
    progress = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="qsdn-kme-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        if args.client_loop == "uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(bench(args, work, progress))
        else:
            result = asyncio.run(bench(args, work, progress))
        result["link"]["client_loop"] = args.client_loop
    render(result, console)
    if args.json:
        text = json.dumps(result, indent=2)
        if to_stdout_json:
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
