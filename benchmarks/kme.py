"""Benchmark: ETSI GS QKD 014 key delivery, enc_keys + dec_keys pairs over mutual TLS, direct and
across three trusted relays.

Agents run as separate processes (``qsdn agent run``), joined by emulated PHYS links (1 km of C-band
fibre each, ``--pulse-rate`` pulses/s so that a link produces tens of Mbit/s), each with its KME on a
mutual-TLS port; the certificates come from :mod:`qsdn.pki`. The benchmark (this process, with
keep-alive connections per SAE and KME) plays the SAEs. Two topologies (``--topology``, default both,
measured one after the other, each with its own agents):

* ``direct``: alice - bob, one PHYS link; SAE ``sae-a`` at alice, ``sae-b`` at bob;
* ``relay3``: a - r1 - r2 - r3 - e, four PHYS links, and a VIRT link a..e through the three relays,
  configured on all five nodes exactly as the controller provisions a key session
  (:func:`controller.provision.plan_session`: PHYS links, the VIRT link with ``virt_prev_hop`` and
  ``virt_next_hop``, INTERNAL applications on the relays, the CLIENT application at both ends); SAE
  ``sae-a`` at a, ``sae-e`` at e. The node ids make the hops alternate between the two ways a hop key
  is taken: a and r2 are the drawing ends of their outgoing hops (the sender draws the pad), r1 and r3
  are not (they ``reserve`` the pad at the next node first).

One *pair* is ``POST enc_keys`` (``number`` keys of 256 bits) by the master at its KME, then
``POST dec_keys`` of those key_IDs by the slave at the other end's KME; every key is checked byte for
byte. Figures, each for batches of 1 and 100 keys:

* ``deliver`` flow (direct): master sae-a at alice, the link's drawing end (alice consumes, tells bob);
* ``draw`` flow (direct): master sae-b at bob (bob asks alice to draw, then consumes the same ranges);
* ``relay`` flow (relay3): master sae-a at a, slave sae-e at e; a draws a fresh key and it travels
  hop by hop, one-time-padded with each hop's PHYS key (the only direction the VIRT link is
  configured for);
* ``seq``: one pair at a time (latency of enc, dec and the pair);
* ``conc``: ``--concurrency`` pairs in flight, 16 and 64 by default (throughput: pairs/s and keys/s);
* CPU time of each agent process (and of its main thread) and of the load generator, per pair.

The VIRT link's ``virt_bandwidth`` (the rate its master KME admits, a token bucket with one second of
burst) is set to :data:`RELAY_VIRT_BANDWIDTH_BPS`, 4 Gbit/s, near the top of its uint32 range: far above
what the relayed pairs can reach here, so the bucket never refuses a request and the figures measure
the relays, not the admission control. A real session would reserve its provisioned rate.

Every link first stores ``--fill-mbit`` (direct) or ``--relay-fill-mbit`` (each of the four relay
links) of key at both ends; then, unless ``--keep-producing``, a fibre cut on every link stops
production so that the figures measure the KMEs and not the emulated QKD links (whose producers share
the machine's CPUs). Targets (issue 4, direct link, with key available): at least 1,000 pairs/s with
batches of 1 and 50,000 keys/s with batches of 100. There is no target for relays.

    .venv/bin/python benchmarks/kme.py [--topology direct|relay3|both] [--seconds 5] [--concurrency 16 64]
        [--data-dir DIR] [--json [FILE]]

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
import itertools
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

from controller.provision import SessionSpec, plan_session
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
#: The relay chain: node ids chosen so that the drawing end (lower id) of the hops alternates: a < r1
#: (a draws), r2 < r1 (r1 reserves at r2), r2 < r3 (r2 draws), e < r3 (r3 reserves at e).
RELAY_PATH = {
    "a": "10000000-0000-4000-8000-00000000000a",
    "r1": "50000000-0000-4000-8000-0000000000f1",
    "r2": "20000000-0000-4000-8000-0000000000f2",
    "r3": "60000000-0000-4000-8000-0000000000f3",
    "e": "30000000-0000-4000-8000-00000000000e",
}
RELAY_SESSION = "70000000-0000-4000-8000-000000000001"
#: virt_bandwidth of the benchmark's VIRT link (uint32 bit/s): high enough that the master's token
#: bucket never refuses a pair here; see the module docstring.
RELAY_VIRT_BANDWIDTH_BPS = 4_000_000_000
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


@dataclass
class Hop:
    """A PHYS link of a topology: its id, the node that transmits (and takes the fibre cut), the other."""

    qkdl_id: str
    transmitter: str
    receiver: str


@dataclass
class Topology:
    name: str
    title: str
    nodes: dict[str, Node]  # in path order
    hops: list[Hop]
    fill_mbit: float
    #: flow -> (master SAE, its node, slave SAE, its node)
    flows: dict[str, tuple[str, str, str, str]]
    #: per node: the ``<qkd_node>`` subtrees to merge into running, in order
    edits: dict[str, list[str]] = field(default_factory=dict)
    virt_bandwidth_bps: int | None = None


def make_pki(root: Path) -> tuple[Issued, dict[str, Issued]]:
    ca = create_ca("qsdn benchmark CA")
    write_pem(ca, root / "ca.crt", root / "ca.key")
    for node in ("alice", "bob", *RELAY_PATH):
        write_pem(
            issue(ca, node, server=True, client=True, ips=["127.0.0.1"]),
            root / f"{node}.crt",
            root / f"{node}.key",
        )
    return ca, {sae: issue(ca, sae, client=True) for sae in ("sae-a", "sae-b", "sae-e")}


def write_configs(
    work: Path, data_root: Path, pulse_rate_hz: float, ids: dict[str, str], spans: list[tuple[str, str]]
) -> tuple[dict[str, Node], dict[tuple[str, str], int]]:
    """Agent configurations for ``ids`` (name -> node id, in path order) joined by ``spans``; returns the
    nodes and the interface (qkdi_id) by which each node attaches to each span."""
    nodes = {n: Node(n, i, free_port(), free_port(), work / f"{n}.yaml") for n, i in ids.items()}
    qkdi: dict[tuple[str, str], int] = {}
    ports: dict[tuple[str, str], int] = {}
    ifaces: dict[str, list[dict[str, Any]]] = {n: [] for n in ids}
    for a, b in spans:
        for end in (a, b):
            qkdi[(end, f"{a}-{b}")] = len(ifaces[end]) + 1
            ports[(end, f"{a}-{b}")] = free_port()
        for end, other in ((a, b), (b, a)):
            ifaces[end].append(
                {
                    "qkdi_id": qkdi[(end, f"{a}-{b}")],
                    "listen": {"host": "127.0.0.1", "port": ports[(end, f"{a}-{b}")]},
                    "peer": {"host": "127.0.0.1", "port": ports[(other, f"{a}-{b}")]},
                    "fibre": {"length_km": 1.0, "band": "C"},
                }
            )
    for me, n in nodes.items():
        adjacent = [b if a == me else a for a, b in spans if me in (a, b)]
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
            "interfaces": ifaces[me],
            "kme": {
                "port": n.kme_port,
                "cert": str(work / f"{me}.crt"),
                "key": str(work / f"{me}.key"),
                "ca": str(work / "ca.crt"),
                "peers": {
                    nodes[o].node_id: {"url": f"https://127.0.0.1:{nodes[o].kme_port}", "kme_id": o}
                    for o in adjacent
                },
            },
        }
        n.config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return nodes, qkdi


def direct_topology(work: Path, data_root: Path, args: argparse.Namespace) -> Topology:
    nodes, _ = write_configs(
        work, data_root, args.pulse_rate, {"alice": ALICE, "bob": BOB}, [("alice", "bob")]
    )
    return Topology(
        name="direct",
        title="direct link",
        nodes=nodes,
        hops=[Hop(LINK, "alice", "bob")],
        fill_mbit=args.fill_mbit,
        flows={
            "deliver": ("sae-a", "alice", "sae-b", "bob"),
            "draw": ("sae-b", "bob", "sae-a", "alice"),
        },
        edits={
            "alice": [link_xml(ALICE, BOB, "TRANSMITTER"), apps_xml(ALICE, BOB)],
            "bob": [link_xml(BOB, ALICE, "RECEIVER"), apps_xml(BOB, ALICE)],
        },
    )


def relay_topology(work: Path, data_root: Path, args: argparse.Namespace) -> Topology:
    spans = list(itertools.pairwise(RELAY_PATH))
    nodes, qkdi = write_configs(work, data_root, args.pulse_rate, RELAY_PATH, spans)
    span_ids = [f"{a}-{b}" for a, b in spans]
    plan = plan_session(
        SessionSpec(RELAY_SESSION, "sae-a", "sae-e", RELAY_VIRT_BANDWIDTH_BPS),
        [RELAY_PATH[n] for n in RELAY_PATH],
        span_ids,
        {(RELAY_PATH[n], s): q for (n, s), q in qkdi.items()},
    )
    by_id = {i: n for n, i in RELAY_PATH.items()}
    return Topology(
        name="relay3",
        title="three relays (a - r1 - r2 - r3 - e)",
        nodes=nodes,
        hops=[Hop(h.qkdl_id, by_id[h.transmitter], by_id[h.receiver]) for h in plan.hops],
        fill_mbit=args.relay_fill_mbit,
        flows={"relay": ("sae-a", "a", "sae-e", "e")},
        edits={n: [plan.edits[i]] for n, i in RELAY_PATH.items()},
        virt_bandwidth_bps=RELAY_VIRT_BANDWIDTH_BPS,
    )


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


def link_xml(me: str, other: str, role: str) -> str:
    return f"""<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}"><qkdn_id>{me}</qkdn_id><qkd_links><qkd_link>
<qkdl_id>{LINK}</qkdl_id><qkdl_enable>true</qkdl_enable>
<qkdl_local><qkdn_id>{me}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_local>
<qkdl_remote><qkdn_id>{other}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_remote>
<qkdl_type>t:PHYS</qkdl_type><phys_qkd_role>t:{role}</phys_qkd_role></qkd_link></qkd_links></qkd_node>"""


def cut_xml(me: str, qkdl_id: str) -> str:
    return (
        f'<qkd_node xmlns="{NODE_NS}"><qkdn_id>{me}</qkdn_id><qkd_links><qkd_link>'
        f"<qkdl_id>{qkdl_id}</qkdl_id>"
        f'<qsdn_faults xmlns="{EMU_NS}"><fibre_cut>true</fibre_cut></qsdn_faults>'
        "</qkd_link></qkd_links></qkd_node>"
    )


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


async def stored_bits(nc: NetconfClient, qkdl_id: str) -> int:
    data = await nc.get(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkd_links/></qkd_node>')
    found = data.xpath(
        "//n:qkd_link[n:qkdl_id=$id]//e:stored_key_bits/text()",
        namespaces={"n": NODE_NS, "e": EMU_NS},
        id=qkdl_id,
    )
    return int(str(found[0])) if isinstance(found, list) and found else 0


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
    topology: str
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
            "topology": self.topology,
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
        self, topo: Topology, ca: Issued, saes: dict[str, Issued], concurrency: int, client: str
    ) -> None:
        self.topo = topo
        self.clients: dict[tuple[str, str], LeanClient | AiohttpClient] = {}
        for master, m_node, slave, s_node in topo.flows.values():
            for sae, node in ((master, m_node), (slave, s_node)):
                if (sae, node) in self.clients:
                    continue
                ctx = client_context(ca.cert_pem, saes[sae])
                port = topo.nodes[node].kme_port
                self.clients[(sae, node)] = (
                    LeanClient(port, ctx) if client == "lean" else AiohttpClient(port, ctx, concurrency + 4)
                )

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()

    async def pair(self, flow: str, batch: int, fig: Figure) -> None:
        master, m_node, slave, s_node = self.topo.flows[flow]
        t0 = time.perf_counter_ns()
        req = b'{"number": %d, "size": %d}' % (batch, KEY_BITS)
        status, raw = await self.clients[(master, m_node)].post(f"/api/v1/keys/{slave}/enc_keys", req)
        body = json.loads(raw)
        if status != 200:
            raise RuntimeError(f"{self.topo.name} {flow}: enc_keys: {status} {body}")
        t1 = time.perf_counter_ns()
        ids = json.dumps({"key_IDs": [{"key_ID": k["key_ID"]} for k in body["keys"]]}).encode()
        status, raw = await self.clients[(slave, s_node)].post(f"/api/v1/keys/{master}/dec_keys", ids)
        got = json.loads(raw)
        if status != 200:
            raise RuntimeError(f"{self.topo.name} {flow}: dec_keys: {status} {got}")
        t2 = time.perf_counter_ns()
        if (
            got["keys"] != body["keys"]
            or len(body["keys"]) != batch
            or any(len(base64.b64decode(k["key"])) != KEY_BITS // 8 for k in body["keys"])
        ):
            raise RuntimeError(f"{self.topo.name} {flow}: dec_keys returned other keys than enc_keys")
        fig.enc_ns.append(t1 - t0)
        fig.dec_ns.append(t2 - t1)
        fig.pair_ns.append(t2 - t0)
        fig.pairs += 1

    def _cpu(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, node in self.topo.nodes.items():
            if node.proc is None:
                raise RuntimeError(f"agent {name} is not running")
            out[name] = CpuClock(node.proc.pid).agent_s()
            out[f"{name}-main"] = _thread_cpu_s(node.proc.pid, node.proc.pid)
        out["client"] = CpuClock.client_s()
        return out

    async def run(self, flow: str, batch: int, mode: str, concurrency: int, seconds: float) -> Figure:
        fig = Figure(self.topo.name, flow, batch, mode, concurrency)
        for _ in range(20):  # warm-up: connections, caches
            await self.pair(flow, batch, Figure(self.topo.name, flow, batch, mode, 1))
        cpu0 = self._cpu()
        start = time.perf_counter()
        end = start + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                await self.pair(flow, batch, fig)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        fig.wall_s = time.perf_counter() - start
        cpu1 = self._cpu()
        for k, v0 in cpu0.items():
            v1 = cpu1[k]
            fig.cpu_s[k] = None if v0 is None or v1 is None else v1 - v0
        return fig


# --- main --------------------------------------------------------------------------------------------
def start_agents(nodes: dict[str, Node], work: Path, args: argparse.Namespace) -> None:
    for node in nodes.values():
        profile = Path(args.profile) / f"{node.name}.prof" if args.profile else None
        with (work / f"{node.name}.log").open("wb") as log:
            node.proc = subprocess.Popen(
                agent_argv(node.config, args.agent_log_level, profile), stdout=log, stderr=subprocess.STDOUT
            )


def stop_agents(nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in nodes.values():
        if node.proc is not None:
            try:
                node.proc.wait(20)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()


async def fill(topo: Topology, progress: Console) -> float:
    """Wait until every end of every link stores ``topo.fill_mbit``; returns the slowest end's rate."""
    want = int(topo.fill_mbit * 1e6)
    t0 = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        ncs = {n: await stack.enter_async_context(_client(node)) for n, node in topo.nodes.items()}
        while True:
            have = min(
                [
                    await stored_bits(ncs[end], hop.qkdl_id)
                    for hop in topo.hops
                    for end in (hop.transmitter, hop.receiver)
                ]
            )
            progress.print(
                f"{topo.name}: filling {len(topo.hops)} link(s): {have / 1e6:.1f} of {topo.fill_mbit} Mbit",
                end="\r",
            )
            if have >= want:
                break
            if time.monotonic() - t0 > 600:
                raise RuntimeError(f"{topo.name}: the links did not store enough key in 600 s")
            await asyncio.sleep(0.5)
    progress.print()
    return have / (time.monotonic() - t0)


async def bench_topology(
    topo: Topology,
    ca: Issued,
    saes: dict[str, Issued],
    work: Path,
    args: argparse.Namespace,
    progress: Console,
) -> tuple[dict[str, Any], list[Figure]]:
    start_agents(topo.nodes, work, args)
    try:
        for node in topo.nodes.values():
            assert node.proc is not None
            wait_ports(node.proc, [node.netconf_port, node.kme_port])
        for name, node in topo.nodes.items():
            async with _client(node) as nc:
                for xml in topo.edits[name]:
                    await nc.edit_config(xml)
        fill_rate = await fill(topo, progress)
        if not args.keep_producing:
            for hop in topo.hops:
                tx = topo.nodes[hop.transmitter]
                async with _client(tx) as nc:
                    await nc.edit_config(cut_xml(tx.node_id, hop.qkdl_id))
            await asyncio.sleep(1.0)
        b = Bench(topo, ca, saes, max(args.concurrency), args.client)
        figures: list[Figure] = []
        try:
            for flow in topo.flows:
                if flow not in args.flows:
                    continue
                for batch in args.batches:
                    for mode, conc in [("seq", 1)] + [("conc", c) for c in args.concurrency]:
                        if mode not in args.modes:
                            continue
                        progress.print(f"{topo.name} {flow} batch {batch} {mode} x{conc} ...")
                        figures.append(await b.run(flow, batch, mode, conc, args.seconds))
        finally:
            await b.close()
        setup = {
            "title": topo.title,
            "nodes": list(topo.nodes),
            "links": len(topo.hops),
            "length_km": 1.0,
            "pulse_rate_hz": args.pulse_rate,
            "fill_mbit": topo.fill_mbit,
            "fill_rate_bps": fill_rate,
            "virt_bandwidth_bps": topo.virt_bandwidth_bps,
            "producing_during_measurement": bool(args.keep_producing),
        }
        return setup, figures
    finally:
        stop_agents(topo.nodes)


async def bench(args: argparse.Namespace, work: Path, progress: Console) -> dict[str, Any]:
    data_root = Path(args.data_dir) if args.data_dir else work
    data_root = Path(tempfile.mkdtemp(prefix="qsdn-kme-bench-", dir=data_root))
    ca, saes = make_pki(work)
    info = machine_info(data_root)
    info["qsdn"] = source_revision()
    setups: dict[str, Any] = {}
    figures: list[Figure] = []
    names = ["direct", "relay3"] if args.topology == "both" else [args.topology]
    for name in names:
        make = direct_topology if name == "direct" else relay_topology
        topo = make(work, data_root / name, args)
        setups[name], figs = await bench_topology(topo, ca, saes, work, args, progress)
        figures += figs
    return {
        "machine": info,
        "setups": setups,
        "client": args.client,
        "agent_loop": os.environ.get("QSDN_EVENT_LOOP", "uvloop"),
        "figures": [f.row() for f in figures],
    }


def render(result: dict[str, Any], console: Console) -> None:
    m = result["machine"]
    console.print(
        f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m.get('ram_gib')} GiB, {m['os']},"
        f" Python {m['python']}; data on {m['data_dir_fs']}; qsdn {m['qsdn']};"
        f" load before {m['load_before']}; event loops: agents {result.get('agent_loop', '?')},"
        f" load generator {result.get('client_loop', '?')}"
    )
    for name, setup in result["setups"].items():
        nodes = setup["nodes"]
        virt = setup["virt_bandwidth_bps"]
        console.print(
            f"{name}: {setup['links']} link(s) of {setup['length_km']} km C-band at"
            f" {setup['pulse_rate_hz']:.0e} pulses/s, each end filled with {setup['fill_mbit']} Mbit"
            f" (slowest end at {setup['fill_rate_bps'] / 1e6:.1f} Mbit/s); production during the measurement:"
            f" {'on' if setup['producing_during_measurement'] else 'off (fibre cuts after filling)'}"
            + (f"; virt_bandwidth {virt / 1e9:.0f} Gbit/s (never the limit)" if virt else "")
        )
        table = Table(
            title=f"ETSI 014 enc_keys + dec_keys pairs over mutual TLS, {KEY_BITS}-bit keys, {setup['title']}"
        )
        main = len(nodes) <= 2  # each agent's main thread too (in the JSON for every topology)
        cpu_col = f"CPU ms/pair {'|'.join(nodes)}|client" + (
            f" (main thread {'|'.join(nodes)})" if main else ""
        )
        for col in ("flow", "batch", "mode", "pairs/s", "keys/s", "enc ms", "dec ms", "pair ms", "pair p99"):
            table.add_column(col, justify="right")
        table.add_column(cpu_col, justify="right")
        for f in result["figures"]:
            if f["topology"] != name:
                continue
            cpu = f["cpu_ms_per_pair"]

            def ms(keys: Sequence[str], cpu: dict[str, float | None] = cpu) -> str:
                return " | ".join("-" if cpu.get(k) is None else f"{cpu[k]:.2f}" for k in keys)

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
                ms([*nodes, "client"]) + (" (" + ms([f"{n}-main" for n in nodes]) + ")" if main else ""),
            )
        console.print(table)
    direct = [f for f in result["figures"] if f["topology"] == "direct"]
    if not direct:
        return
    best1 = max((f["pairs_per_s"] for f in direct if f["batch"] == 1), default=0.0)
    best100 = max((f["keys_per_s"] for f in direct if f["batch"] == 100), default=0.0)
    for what, got, target in (
        ("pairs/s, batch 1", best1, TARGET_PAIRS_BATCH_1),
        ("keys/s, batch 100", best100, TARGET_KEYS_BATCH_100),
    ):
        verdict = "met" if got >= target else "NOT met"
        console.print(f"target (direct) {target:,.0f} {what}: best {got:,.0f} -> {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per figure (default 5)")
    p.add_argument(
        "--concurrency", type=int, nargs="+", default=[16, 64], help="pairs in flight in the conc figures"
    )
    p.add_argument(
        "--pulse-rate", type=float, default=1e9, help="pulses/s of the emulated source (default 1e9)"
    )
    p.add_argument(
        "--topology",
        default="both",
        choices=["direct", "relay3", "both"],
        help="direct link, three relays, or both one after the other (default both)",
    )
    p.add_argument(
        "--fill-mbit",
        type=float,
        default=1000.0,
        help="key stored at both ends of the direct link (default 1000, enough at 90,000 keys/s)",
    )
    p.add_argument(
        "--relay-fill-mbit",
        type=float,
        default=200.0,
        help="key stored at both ends of each of the four relay links (default 200)",
    )
    p.add_argument(
        "--flows",
        nargs="+",
        default=["deliver", "draw", "relay"],
        choices=["deliver", "draw", "relay"],
        help="deliver and draw (direct), relay (relay3); default all",
    )
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
        result["client_loop"] = args.client_loop
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
