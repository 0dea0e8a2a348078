"""Bringing a lab up and down: configuration, processes (optionally in namespaces), onboarding, sessions.

``qsdn lab up`` on a topology file (:mod:`qsdn.lab.topology`):

1. generates, under the lab directory, one ``node.yaml`` per node, the controller's ``controller.yaml``
   and ``topology.yaml``, and per-lab random NETCONF and RESTCONF passwords (``secrets/``, mode 0600);
2. when the topology has a repeater or a BSM station, starts one ``qsdn medium run`` (the emulated
   quantum medium every node with entanglement hardware connects to; processes mode only), then one
   ``qsdn agent run`` per node (``--mode netns``: inside the node's network namespace,
   :mod:`qsdn.lab.netns`) and, once every NETCONF port answers, one ``qsdn controller run``;
3. waits until the controller reports every node reachable (RESTCONF), then creates the topology's
   sessions through the controller's ``create-session`` operation (``key`` sessions with
   ``service key`` and ``repeaters true``: the controller may use repeater segments);
4. records everything an external tool needs in ``lab.json`` (format in ``docs/lab.md``), written as
   soon as each process starts, so that ``qsdn lab down`` can always clean up.

The generation functions are pure (they take the topology and the chosen addresses and return plain
data); the rest is the I/O shell. Every failure on the way up takes down what was started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from qsdn.errors import QsdnError
from qsdn.lab import netns
from qsdn.lab.topology import LabNode, LabSpan, LabTopology
from qsdn.operator import ORCH, Api
from qsdn.ports import free_port

LAB_JSON = "lab.json"
FORMAT = 1
USER = "admin"
NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
EMU_NS = "urn:qsdn:yang:qsdn-qkd-emulation"
#: Sub-directories ``qsdn lab up`` owns inside the lab directory (removed and rebuilt on every up).
GENERATED = ("nodes", "controller", "logs", "secrets")
START_TIMEOUT_S = 60.0
ONBOARD_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


# --- addresses and generated configuration (pure) --------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class LabAddresses:
    """Where every listener of the lab is: NETCONF per node, quantum channel per (node, span)."""

    netconf: dict[str, Endpoint]
    channel: dict[tuple[str, str], Endpoint]
    restconf: Endpoint
    #: the entanglement medium service, when the topology has a repeater or a BSM station
    medium: Endpoint | None = None


def interface_ids(topo: LabTopology) -> dict[tuple[str, str], int]:
    """``qkdi_id`` of every (node, span): 1, 2, ... in the order of the node's spans."""
    return {(n.name, s.span_id): i for n in topo.nodes for i, s in enumerate(topo.spans_of(n.name), 1)}


def span_band(span: LabSpan) -> str:
    """The band the emulated channel uses: C, unless the span allows only O."""
    return "O" if tuple(span.bands) == ("O",) else "C"


def controller_role(node: LabNode) -> tuple[str, bool]:
    """The controller's (role, trusted) for a lab role.

    Trusted relays relay key; endpoints are trusted nodes too (any trusted node may relay). Repeaters
    and BSM stations keep their roles (``repeater``, ``bsm-station``): entanglement devices that never
    hold key, so they are untrusted and no trusted-relay path crosses them.
    """
    if node.role == "trusted-relay":
        return "relay", True
    if node.role == "endpoint":
        return "endpoint", True
    return node.role, False


def controller_entanglement(node: LabNode) -> dict[str, float | int] | None:
    """The node's ``entanglement`` block of the controller's topology (its key names), or None."""
    if node.station is not None:
        return {"detector_efficiency": node.station.detector_efficiency}
    m = node.memory
    if m is None:
        return None
    return {
        "memories": m.memories,
        "coherence_time_s": m.coherence_time_s,
        "swap_success_probability": m.swap_success,
        "initial_fidelity": m.initial_fidelity,
        "modes": m.modes,
    }


def kme_peers(topo: LabTopology, node: LabNode) -> list[tuple[str, str | None]]:
    """The KMEs a key-holding node's KME talks to, as ``(peer node, span id)``: its neighbours that hold
    key (QKD hops; the span carries the traffic in netns mode) and the far ends of possible repeater
    segments (``span id`` None: they are not adjacent). Repeaters and BSM stations have no KME."""
    if not node.holds_key:
        return []
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for s in topo.spans_of(node.name):
        other = s.b if s.a == node.name else s.a
        if topo.node(other).holds_key and other not in seen:
            seen.add(other)
            out.append((other, s.span_id))
    for other in topo.segment_partners(node.name):
        if other not in seen:
            seen.add(other)
            out.append((other, None))
    return out


def processes_addresses(topo: LabTopology) -> LabAddresses:
    """Loopback addresses with ports below the ephemeral range, free now."""
    host = "127.0.0.1"
    return LabAddresses(
        netconf={n.name: Endpoint(host, free_port(host)) for n in topo.nodes},
        channel={
            (n.name, s.span_id): Endpoint(host, free_port(host))
            for n in topo.nodes
            for s in topo.spans_of(n.name)
        },
        restconf=Endpoint(host, free_port(host)),
        medium=Endpoint(host, free_port(host)) if topo.needs_medium else None,
    )


def netns_addresses(
    topo: LabTopology, plan: netns.NetnsPlan, qkdi: dict[tuple[str, str], int]
) -> LabAddresses:
    """NETCONF on each node's management address, channels on the span veth addresses."""
    return LabAddresses(
        netconf={n.name: Endpoint(plan.mgmt_of(n.name).ns_addr, netns.NETCONF_PORT) for n in topo.nodes},
        channel={
            (n.name, s.span_id): Endpoint(
                plan.span_addr(s.span_id, n.name), netns.CHANNEL_PORT_BASE + qkdi[(n.name, s.span_id)]
            )
            for n in topo.nodes
            for s in topo.spans_of(n.name)
        },
        restconf=Endpoint("127.0.0.1", free_port("127.0.0.1")),
    )


def node_config(
    topo: LabTopology,
    node: LabNode,
    addrs: LabAddresses,
    qkdi: dict[tuple[str, str], int],
    password_hash: str,
) -> dict[str, Any]:
    """The agent's ``node.yaml`` for ``node`` (data directory relative to the file)."""
    interfaces = []
    for s in topo.spans_of(node.name):
        peer = s.b if s.a == node.name else s.a
        listen, far = addrs.channel[(node.name, s.span_id)], addrs.channel[(peer, s.span_id)]
        interfaces.append(
            {
                "qkdi_id": qkdi[(node.name, s.span_id)],
                "listen": {"host": listen.host, "port": listen.port},
                "peer": {"host": far.host, "port": far.port},
                "fibre": {"length_km": s.length_km, "band": span_band(s), "extra_loss_db": s.extra_loss_db},
            }
        )
    nc = addrs.netconf[node.name]
    cfg: dict[str, Any] = {
        "node_id": node.node_id,
        "name": node.name,
        "data_dir": "data",
        "netconf": {
            "host": nc.host,
            "port": nc.port,
            "users": [{"name": USER, "password_hash": password_hash}],
        },
        "device": {
            "eta_det": node.device.eta_det,
            "dark_count": node.device.dark_count,
            "e_d": node.device.e_d,
            "pulse_rate_hz": node.device.pulse_rate_hz,
        },
        "interfaces": interfaces,
    }
    if node.location:
        cfg["location"] = node.location
    if node.quantum_device and addrs.medium is not None:
        cfg["entanglement"] = {"medium": {"host": addrs.medium.host, "port": addrs.medium.port}}
    return cfg


KME_NETNS_PORT = 9443


def kme_config(
    topo: LabTopology,
    node: LabNode,
    port: int,
    pki_files: dict[str, Path],
    peer_url: Callable[[str, str, str | None], str],
    *,
    listen: str,
) -> dict[str, Any]:
    """The ``kme`` section of a key-holding node: its certificate, and as peers the KMEs of
    :func:`kme_peers` (key-holding neighbours and repeater-segment partners)."""
    peers: dict[str, Any] = {}
    for name, span_id in kme_peers(topo, node):
        other = topo.node(name)
        peers[other.node_id] = {"url": peer_url(node.name, other.name, span_id), "kme_id": other.name}
    return {
        "host": listen,
        "port": port,
        "kme_id": node.name,
        "cert": str(pki_files[f"nodes/{node.name}.crt"]),
        "key": str(pki_files[f"nodes/{node.name}.key"]),
        "ca": str(pki_files["ca.crt"]),
        "peers": peers,
    }


def controller_topology(
    topo: LabTopology, addrs: LabAddresses, qkdi: dict[tuple[str, str], int]
) -> dict[str, Any]:
    """The controller's ``topology.yaml``: nodes with NETCONF endpoints, spans with interfaces."""
    nodes = []
    for n in topo.nodes:
        role, trusted = controller_role(n)
        nc = addrs.netconf[n.name]
        entry: dict[str, Any] = {
            "name": n.name,
            "id": n.node_id,
            "netconf": {"host": nc.host, "port": nc.port},
            "role": role,
            "trusted": trusted,
        }
        if n.location:
            entry["location"] = n.location
        ent = controller_entanglement(n)
        if ent is not None:
            entry["entanglement"] = ent
        nodes.append(entry)
    spans = [
        {
            "id": s.span_id,
            "a": s.a,
            "b": s.b,
            "length_km": s.length_km,
            "extra_loss_db": s.extra_loss_db,
            "bands": list(s.bands),
            "a_qkdi": qkdi[(s.a, s.span_id)],
            "b_qkdi": qkdi[(s.b, s.span_id)],
        }
        for s in topo.spans
    ]
    return {"nodes": nodes, "spans": spans}


def controller_config(addrs: LabAddresses, restconf_password: str, netconf_password: str) -> dict[str, Any]:
    return {
        "data_dir": "data",
        "topology": "topology.yaml",
        "restconf": {
            "host": addrs.restconf.host,
            "port": addrs.restconf.port,
            "users": [{"name": USER, "password": restconf_password}],
        },
        "southbound": {
            "client": "asyncssh",
            "timeout_s": 10,
            "confirm_timeout_s": 30,
            "username": USER,
            "password": netconf_password,
        },
    }


# --- lab.json ------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lab_json_path(lab_dir: Path) -> Path:
    return lab_dir / LAB_JSON


def read_lab(lab_dir: Path) -> dict[str, Any]:
    path = lab_json_path(lab_dir)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QsdnError(f"{path}: no lab here (run `qsdn lab up` first, or pass --dir)") from None
    except (OSError, ValueError) as exc:
        raise QsdnError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("nodes"), list):
        raise QsdnError(f"{path}: not a lab.json of format {FORMAT}")
    return data


def write_lab(lab_dir: Path, data: dict[str, Any]) -> None:
    """Write ``lab.json`` atomically (an external tool never reads half a file)."""
    path = lab_json_path(lab_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)


def read_secret(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _write_yaml(path: Path, data: dict[str, Any], *, private: bool = False) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    if private:
        _write_secret(path, text.rstrip("\n"))
    else:
        path.write_text(text, encoding="utf-8")


def restconf_api(lab: dict[str, Any]) -> Api:
    ctl = lab["controller"]
    url = str(ctl["restconf_url"]).removesuffix("/restconf")
    password = read_secret(ctl["password_file"])
    return Api(argparse.Namespace(url=url, user=ctl["username"], password=password, ca=None))


# --- processes ------------------------------------------------------------------------------------
def _proc_state(pid: int) -> str | None:
    """The process's state letter (``R``, ``S``, ``Z``...) or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


#: The processes this process started, so that their exit is collected (no zombies, no warnings).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def process_alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` is a live process whose command line contains ``marker`` (pids get reused)."""
    if not pid:
        return False
    _reap(pid)
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X") and marker in _cmdline(pid)


@dataclass(frozen=True)
class ProcessRow:
    name: str
    kind: str
    pid: int | None
    alive: bool


def lab_processes(lab: dict[str, Any]) -> list[ProcessRow]:
    rows = [
        ProcessRow(n["name"], "agent", n.get("pid"), process_alive(n.get("pid"), n["config"]))
        for n in lab["nodes"]
    ]
    ctl = lab["controller"]
    alive = process_alive(ctl.get("pid"), ctl["config"])
    rows.append(ProcessRow("controller", "controller", ctl.get("pid"), alive))
    medium = lab.get("medium")
    if medium:
        alive = process_alive(medium.get("pid"), medium_marker(medium))
        rows.append(ProcessRow("medium", "medium", medium.get("pid"), alive))
    return rows


def medium_marker(medium: dict[str, Any]) -> str:
    """What the medium process's command line contains (pids get reused)."""
    return f"--listen {medium['host']}:{medium['port']}"


def _spawn(argv: list[str], log_path: Path, cwd: Path) -> int:
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the launcher only
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _log_tail(path: str | Path, lines: int = 8) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    tail = text.strip().splitlines()[-lines:]
    return "\n    ".join(["", *tail]) if tail else ""


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stop_all(targets: list[tuple[int, str]], timeout_s: float) -> list[int]:
    """SIGTERM the live ``(pid, marker)`` targets, wait, SIGKILL stragglers; returns the killed pids."""
    live = [(p, m) for p, m in targets if process_alive(p, m)]
    for p, _ in live:
        _signal(p, signal.SIGTERM)
    end = time.monotonic() + timeout_s
    while live and time.monotonic() < end:
        live = [(p, m) for p, m in live if process_alive(p, m)]
        if live:
            time.sleep(0.05)
    for p, _ in live:
        _signal(p, signal.SIGKILL)
    end = time.monotonic() + 5.0
    while any(process_alive(p, m) for p, m in live) and time.monotonic() < end:
        time.sleep(0.05)
    return [p for p, _ in live]


@dataclass
class DownReport:
    stopped: int = 0
    killed: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def down(lab_dir: Path, *, timeout_s: float = STOP_TIMEOUT_S, own_pid: int | None = None) -> DownReport:
    """Stop the lab in ``lab_dir``: the controller first (so it does not re-route around agents going
    away), then the agents; SIGKILL what outlives ``timeout_s``; then remove namespaces and veths.

    A foreground ``qsdn lab up`` still running is asked to stop first (it takes the lab down itself).
    Safe to run twice, and on a half-started lab.
    """
    lab = read_lab(lab_dir)
    report = DownReport(stopped=sum(r.alive for r in lab_processes(lab)))
    launcher = lab.get("launcher_pid")
    if launcher and launcher != own_pid and process_alive(launcher, "lab"):
        report.killed += _stop_all([(launcher, "lab")], timeout_s + STOP_TIMEOUT_S)
        lab = read_lab(lab_dir)
    ctl = lab["controller"]
    ctl_target = [(ctl["pid"], ctl["config"])] if ctl.get("pid") else []
    agents = [(n["pid"], n["config"]) for n in lab["nodes"] if n.get("pid")]
    report.killed += _stop_all(ctl_target, timeout_s)
    report.killed += _stop_all(agents, timeout_s)
    medium = lab.get("medium")
    if medium and medium.get("pid"):  # last: the agents' quantum devices use it until they stop
        report.killed += _stop_all([(medium["pid"], medium_marker(medium))], timeout_s)
        medium["pid"] = None
    ns = lab.get("netns")
    if ns:
        report.problems += netns.destroy(ns["namespaces"].values(), [m["root_dev"] for m in ns["mgmt"]])
    ctl["pid"] = None
    for n in lab["nodes"]:
        n["pid"] = None
    lab["launcher_pid"] = None
    lab["state"] = "down"
    write_lab(lab_dir, lab)
    return report


# --- bringing a lab up ----------------------------------------------------------------------------
class UpProgress(Protocol):
    """What ``up`` reports while it works (the CLI draws rich progress bars from it)."""

    def start(self, step: str, total: int) -> None: ...

    def advance(self, step: str, n: int = 1) -> None: ...


class _Silent:
    def start(self, step: str, total: int) -> None:
        pass

    def advance(self, step: str, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class NodeRow:
    name: str
    role: str
    netconf: str
    status: str


@dataclass(frozen=True)
class LinkRow:
    span_id: str
    ends: str
    length_km: float
    span_class: str
    rate_bps: int | None
    status: str


@dataclass(frozen=True)
class SessionRow:
    name: str
    path: str
    rate_bps: int
    status: str
    error: str


@dataclass(frozen=True)
class LabView:
    nodes: tuple[NodeRow, ...]
    links: tuple[LinkRow, ...]
    sessions: tuple[SessionRow, ...]


def lab_view(lab: dict[str, Any], net: dict[str, Any] | None) -> LabView:
    """The summary tables from ``lab.json`` and the controller's ``qkd_network`` (None: unreachable)."""
    net = net or {}
    names = {n["qkdn_id"]: n["name"] for n in lab["nodes"]}
    status = {n["qkdn_id"]: n.get("status", "unknown") for n in net.get("qkd_node", [])}
    nodes = tuple(
        NodeRow(
            n["name"],
            n["role"],
            f"{n['netconf']['host']}:{n['netconf']['port']}",
            status.get(n["qkdn_id"], "unknown") if net else "controller unreachable",
        )
        for n in lab["nodes"]
    )
    phys = {p["span_id"]: p for p in net.get("qkd_phys_link", [])}
    links = []
    for s in lab["spans"]:
        p = phys.get(s["span_id"], {})
        rate = p.get("predicted_skr_bps")
        links.append(
            LinkRow(
                s["span_id"],
                f"{s['a']} - {s['b']}",
                float(s["length_km"]),
                p.get("span_class", "?"),
                int(rate) if rate is not None else None,
                p.get("status", "?"),
            )
        )
    svc = {x["session_id"]: x for x in net.get("qkd_svc_link", [])}
    sessions = []
    for s in lab["sessions"]:
        x = svc.get(s.get("session_id") or "", {})
        path = " - ".join(names.get(n, n[:8]) for n in x.get("path", []))
        sessions.append(
            SessionRow(
                s["name"],
                path,
                int(s["rate_bps"]),
                x.get("status") or s.get("status") or "?",
                x.get("last_error") or s.get("error") or "",
            )
        )
    return LabView(nodes, tuple(links), tuple(sessions))


def _prepare_dir(lab_dir: Path) -> Path:
    """Make ``lab_dir`` ready for a new lab (refusing a running lab or a foreign directory)."""
    lab_dir = lab_dir.resolve()
    if lab_json_path(lab_dir).exists():
        try:
            old = read_lab(lab_dir)
        except QsdnError:
            old = None
        if old is not None:
            if any(r.alive for r in lab_processes(old)):
                raise QsdnError(f"a lab is running in {lab_dir}: `qsdn lab down --dir {lab_dir}` first")
            if old.get("netns"):
                down(lab_dir)
    elif lab_dir.exists() and any(lab_dir.iterdir()):
        raise QsdnError(f"{lab_dir} is not empty and holds no lab.json: choose another --dir")
    lab_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(lab_dir, 0o700)
    for sub in GENERATED:
        shutil.rmtree(lab_dir / sub, ignore_errors=True)
        (lab_dir / sub).mkdir(mode=0o700)
    return lab_dir


def _lab_entanglement(node: LabNode, addrs: LabAddresses) -> dict[str, Any] | None:
    """A node's entanglement hardware in lab.json (names of the topology file), with the medium."""
    if not node.quantum_device:
        return None
    out: dict[str, Any] = {}
    if node.memory is not None:
        out.update(dataclasses.asdict(node.memory))
    if node.station is not None:
        out.update(dataclasses.asdict(node.station))
    out["medium"] = str(addrs.medium) if addrs.medium is not None else None
    return out


def generate(
    topo: LabTopology, lab_dir: Path, mode: str, plan: netns.NetnsPlan | None, *, seed: int | None = None
) -> dict[str, Any]:
    """Write every configuration file and the secrets; return the initial lab.json (no pids yet).

    ``seed`` seeds the entanglement medium (a random one when None; recorded in lab.json)."""
    if seed is None:
        seed = secrets.randbelow(2**31)
    from agent.config import hash_password  # the lab writes agent configuration; nothing else of it
    from controller.provision import phys_link_id

    qkdi = interface_ids(topo)
    addrs = netns_addresses(topo, plan, qkdi) if plan is not None else processes_addresses(topo)
    # 128 bits each, in hex: a password that starts with '-' would read as an option in netconf-console
    # and curl command lines.
    nc_password, rc_password = secrets.token_hex(16), secrets.token_hex(16)
    nc_file, rc_file = lab_dir / "secrets" / "netconf.password", lab_dir / "secrets" / "restconf.password"
    _write_secret(nc_file, nc_password)
    _write_secret(rc_file, rc_password)
    password_hash = hash_password(nc_password)
    # ETSI 014 KMEs: one CA, a certificate per node KME and per SAE, KME-to-KME peers along every
    # span. Processes mode: loopback ports. netns mode: every KME listens on all addresses of its
    # namespace (port KME_NETNS_PORT): SAEs reach it on the management address, its neighbours' KMEs
    # on the span veth; certificates name every lab address (peers are also checked by kme_id).
    if plan is None:
        kme_ports = {n.name: free_port("127.0.0.1") for n in topo.nodes}
        kme_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    else:
        kme_ports = {n.name: KME_NETNS_PORT for n in topo.nodes}
        kme_hosts = tuple(
            sorted(
                {plan.mgmt_of(n.name).ns_addr for n in topo.nodes}
                | {plan.span_addr(s.span_id, end) for s in topo.spans for end in (s.a, s.b)}
            )
        )
    from qsdn.pki import lab_pki

    pki_files = lab_pki(
        lab_dir / "pki",
        f"qsdn lab {topo.name}",
        [n.name for n in topo.nodes],
        {sae: n.name for n in topo.nodes for sae in n.saes},
        hosts=kme_hosts,
    )

    def kme_url(node: str) -> str:
        host = "127.0.0.1" if plan is None else plan.mgmt_of(node).ns_addr
        return f"https://{host}:{kme_ports[node]}"

    def peer_url(node: str, peer: str, span_id: str | None) -> str:
        if plan is None:
            return f"https://127.0.0.1:{kme_ports[peer]}"
        if span_id is None:  # `up` refuses netns labs with repeaters before it gets here
            raise QsdnError(f"netns mode: no route from {node}'s KME to {peer}'s (a repeater segment)")
        return f"https://{plan.span_addr(span_id, peer)}:{kme_ports[peer]}"

    nodes = []
    for n in topo.nodes:
        node_dir = lab_dir / "nodes" / n.name
        node_dir.mkdir(mode=0o700)
        cfg_path = node_dir / "node.yaml"
        cfg = node_config(topo, n, addrs, qkdi, password_hash)
        # in a namespace of its own the KME listens on all of the node's addresses
        listen = "127.0.0.1" if plan is None else "0.0.0.0"  # noqa: S104
        if n.holds_key:  # repeaters and BSM stations never hold key: no KME
            cfg["kme"] = kme_config(topo, n, kme_ports[n.name], pki_files, peer_url, listen=listen)
        _write_yaml(cfg_path, cfg, private=True)
        nc = addrs.netconf[n.name]
        nodes.append(
            {
                "name": n.name,
                "qkdn_id": n.node_id,
                "role": n.role,
                "location": n.location,
                "netconf": {
                    "host": nc.host,
                    "port": nc.port,
                    "username": USER,
                    "password_file": str(nc_file),
                },
                "kme_url": kme_url(n.name) if n.holds_key else None,
                "kme_ca_cert": str(pki_files["ca.crt"]) if n.holds_key else None,
                "entanglement": _lab_entanglement(n, addrs),
                "saes": [
                    {
                        "sae_id": sae,
                        "cert": str(pki_files[f"saes/{sae}.crt"]),
                        "key": str(pki_files[f"saes/{sae}.key"]),
                    }
                    for sae in n.saes
                ],
                "interfaces": [
                    {
                        "qkdi_id": qkdi[(n.name, s.span_id)],
                        "span_id": s.span_id,
                        "listen": str(addrs.channel[(n.name, s.span_id)]),
                    }
                    for s in topo.spans_of(n.name)
                ],
                "netns": plan.namespace(n.name) if plan is not None else None,
                "config": str(cfg_path),
                "data_dir": str(node_dir / "data"),
                "log": str(lab_dir / "logs" / f"{n.name}.log"),
                "pid": None,
            }
        )
    ctl_dir = lab_dir / "controller"
    _write_yaml(ctl_dir / "topology.yaml", controller_topology(topo, addrs, qkdi))
    _write_yaml(ctl_dir / "controller.yaml", controller_config(addrs, rc_password, nc_password), private=True)
    return {
        "format": FORMAT,
        "lab": topo.name,
        "description": topo.description,
        "topology": str(Path(topo.source).resolve()) if topo.source else None,
        "mode": mode,
        "dir": str(lab_dir),
        "created": _now(),
        "state": "starting",
        "launcher_pid": None,
        "controller": {
            "restconf_url": f"http://{addrs.restconf}/restconf",
            "username": USER,
            "password_file": str(rc_file),
            "config": str(ctl_dir / "controller.yaml"),
            "log": str(lab_dir / "logs" / "controller.log"),
            "pid": None,
        },
        "medium": None
        if addrs.medium is None
        else {
            "host": addrs.medium.host,
            "port": addrs.medium.port,
            "seed": seed,
            "log": str(lab_dir / "logs" / "medium.log"),
            "pid": None,
        },
        "nodes": nodes,
        "spans": [
            {
                "span_id": s.span_id,
                "a": s.a,
                "b": s.b,
                "a_qkdi": qkdi[(s.a, s.span_id)],
                "b_qkdi": qkdi[(s.b, s.span_id)],
                "length_km": s.length_km,
                "extra_loss_db": s.extra_loss_db,
                "bands": list(s.bands),
                "qkdl_id": phys_link_id(s.span_id),
            }
            for s in topo.spans
        ],
        "sessions": [
            {
                "name": s.name,
                "src": s.src,
                "dst": s.dst,
                "src_sae": s.src_sae,
                "dst_sae": s.dst_sae,
                "rate_bps": s.rate_bps,
                "service": s.service,
                "target_fidelity": s.target_fidelity,
                "session_id": None,
                "status": None,
                "error": None,
            }
            for s in topo.sessions
        ],
        "netns": None,  # set once the namespaces exist
    }


async def _wait_port(host: str, port: int, alive: Callable[[], bool], what: str, log: str) -> None:
    end = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
            return
        except (OSError, TimeoutError):
            if not alive():
                raise QsdnError(f"{what} exited during start-up; its log {log}:{_log_tail(log)}") from None
            if time.monotonic() > end:
                raise QsdnError(
                    f"{what} did not listen on {host}:{port} in {START_TIMEOUT_S:.0f} s"
                ) from None
            await asyncio.sleep(0.1)


def _qsdn_argv() -> list[str]:
    return [sys.executable, "-m", "qsdn.cli", "--log-level", "info"]


def entanglement_unsupported_reason(topo: LabTopology, mode: str) -> str | None:
    """Why ``up`` cannot run this topology's entanglement hardware in ``mode`` (None: it can)."""
    if not topo.needs_medium:
        return None
    if mode == "netns":
        devices = ", ".join(n.name for n in topo.nodes if n.role in ("repeater", "bsm-station"))
        return (
            f"--mode netns does not run entanglement labs yet (repeaters and BSM stations: {devices}): "
            "a namespace reaches the root namespace only over its own management /30, so the agents "
            "cannot share one medium service, and the KMEs at the two ends of a repeater segment are "
            "not adjacent; use --mode processes"
        )
    return None


async def _start_medium(lab_dir: Path, lab: dict[str, Any], progress: UpProgress) -> None:
    """Start the lab's ``qsdn medium run`` and wait until it listens."""
    medium = lab["medium"]
    progress.start("medium", 1)
    listen = f"{medium['host']}:{medium['port']}"
    argv = [*_qsdn_argv(), "medium", "run", "--listen", listen, "--seed", str(medium["seed"])]
    medium["pid"] = pid = _spawn(argv, Path(medium["log"]), lab_dir)
    write_lab(lab_dir, lab)
    marker = medium_marker(medium)
    await _wait_port(medium["host"], medium["port"], lambda: process_alive(pid, marker), "the medium",
                     medium["log"])  # fmt: skip
    progress.advance("medium")


async def _start_agents(lab_dir: Path, lab: dict[str, Any], progress: UpProgress) -> None:
    progress.start("agents", len(lab["nodes"]))
    for n in lab["nodes"]:
        prefix = netns.exec_argv(n["netns"]) if n["netns"] else []
        n["pid"] = _spawn([*prefix, *_qsdn_argv(), "agent", "run", "--config", n["config"]], Path(n["log"]),
                          Path(n["config"]).parent)  # fmt: skip
        write_lab(lab_dir, lab)

    async def ready(n: dict[str, Any]) -> None:
        pid, cfg = n["pid"], n["config"]
        await _wait_port(n["netconf"]["host"], n["netconf"]["port"], lambda: process_alive(pid, cfg),
                         f"agent {n['name']}", n["log"])  # fmt: skip
        progress.advance("agents")

    try:
        async with asyncio.TaskGroup() as tg:
            for n in lab["nodes"]:
                tg.create_task(ready(n))
    except ExceptionGroup as eg:
        first = eg.exceptions[0]
        raise first if isinstance(first, QsdnError) else QsdnError(f"starting the agents: {first}") from None


async def _start_controller(lab_dir: Path, lab: dict[str, Any], progress: UpProgress) -> Api:
    progress.start("controller", 1)
    ctl = lab["controller"]
    ctl["pid"] = _spawn([*_qsdn_argv(), "controller", "run", "--config", ctl["config"]], Path(ctl["log"]),
                        Path(ctl["config"]).parent)  # fmt: skip
    write_lab(lab_dir, lab)
    api = restconf_api(lab)
    end = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            await api.network()
            break
        except QsdnError:
            if not process_alive(ctl["pid"], ctl["config"]):
                raise QsdnError(
                    f"the controller exited during start-up; its log {ctl['log']}:{_log_tail(ctl['log'])}"
                ) from None
            if time.monotonic() > end:
                raise QsdnError(
                    f"the controller's RESTCONF did not answer in {START_TIMEOUT_S:.0f} s"
                ) from None
            await asyncio.sleep(0.2)
    progress.advance("controller")
    return api


async def _onboard(lab: dict[str, Any], api: Api, progress: UpProgress) -> None:
    """Wait until the controller reports every node reachable over NETCONF."""
    progress.start("onboarding", len(lab["nodes"]))
    end = time.monotonic() + ONBOARD_TIMEOUT_S
    done = 0
    while True:
        net = await api.network()
        states = {n["qkdn_id"]: n.get("status") for n in net.get("qkd_node", [])}
        reachable = [n for n in lab["nodes"] if states.get(n["qkdn_id"]) == "reachable"]
        if len(reachable) > done:
            progress.advance("onboarding", len(reachable) - done)
            done = len(reachable)
        if done == len(lab["nodes"]):
            return
        if time.monotonic() > end:
            missing = [n["name"] for n in lab["nodes"] if n not in reachable]
            raise QsdnError(
                f"the controller cannot reach node(s) {', '.join(missing)} over NETCONF; see "
                f"{lab['controller']['log']}"
            )
        await asyncio.sleep(0.2)


async def _create_sessions(lab_dir: Path, lab: dict[str, Any], api: Api, progress: UpProgress) -> None:
    progress.start("sessions", len(lab["sessions"]))
    ids = {n["name"]: n["qkdn_id"] for n in lab["nodes"]}
    for s in lab["sessions"]:
        inp: dict[str, Any] = {
            "src_node": ids[s["src"]],
            "dst_node": ids[s["dst"]],
            "src_sae": s["src_sae"],
            "dst_sae": s["dst_sae"],
            "requested_rate_bps": str(s["rate_bps"]),
        }
        if s.get("service") == "key":  # a mixed path: trusted-relay QKD hops and repeater segments
            inp["service"] = "key"
            inp["repeaters"] = True
            if s.get("target_fidelity") is not None:
                inp["target_fidelity"] = str(s["target_fidelity"])
        try:
            out = await api.request("POST", f"/operations/{ORCH}:create-session", {f"{ORCH}:input": inp})
            o = out[f"{ORCH}:output"]
            s["session_id"], s["status"], s["error"] = o["session_id"], o["status"], None
        except QsdnError as exc:
            s["status"], s["error"] = "failed", str(exc)
        write_lab(lab_dir, lab)
        progress.advance("sessions")


@dataclass
class UpResult:
    lab: dict[str, Any]
    view: LabView

    @property
    def failed_sessions(self) -> list[str]:
        return [s.name for s in self.view.sessions if s.status != "active"]


def _netns_plan(topo: LabTopology, lab_dir: Path) -> netns.NetnsPlan:
    return netns.plan_netns(
        topo.name,
        [n.name for n in topo.nodes],
        [(s.span_id, s.a, s.b) for s in topo.spans],
        tag=netns.lab_tag(str(lab_dir)),
        mgmt_offset=netns.choose_mgmt_offset(len(topo.nodes)),
    )


async def up(
    topo: LabTopology,
    lab_dir: Path,
    *,
    mode: str = "processes",
    launcher_pid: int | None = None,
    progress: UpProgress | None = None,
    seed: int | None = None,
) -> UpResult:
    """Bring the lab up. On any failure (or cancellation) everything started is stopped again.

    ``seed`` seeds the entanglement medium (labs with repeaters or BSM stations; random when None).
    """
    progress = progress or _Silent()
    if mode not in ("processes", "netns"):
        raise QsdnError(f"unknown lab mode {mode!r} (processes or netns)")
    if mode == "netns" and (reason := await asyncio.to_thread(netns.unavailable_reason)):
        raise QsdnError(f"--mode netns: {reason}")
    if reason := entanglement_unsupported_reason(topo, mode):
        raise QsdnError(f"lab {topo.name}: {reason}")
    lab_dir = await asyncio.to_thread(_prepare_dir, lab_dir)
    progress.start("configuration", 1)
    plan = await asyncio.to_thread(_netns_plan, topo, lab_dir) if mode == "netns" else None
    lab = await asyncio.to_thread(functools.partial(generate, topo, lab_dir, mode, plan, seed=seed))
    lab["launcher_pid"] = launcher_pid
    write_lab(lab_dir, lab)
    try:
        if plan is not None:
            await asyncio.to_thread(netns.create, plan)
            lab["netns"] = plan.to_json()  # from now on `down` removes them
            write_lab(lab_dir, lab)
        progress.advance("configuration")
        if lab.get("medium"):
            await _start_medium(lab_dir, lab, progress)
        await _start_agents(lab_dir, lab, progress)
        api = await _start_controller(lab_dir, lab, progress)
        await _onboard(lab, api, progress)
        await _create_sessions(lab_dir, lab, api, progress)
        lab["state"] = "up"
        write_lab(lab_dir, lab)
        return UpResult(lab, lab_view(lab, await api.network()))
    except BaseException:
        await asyncio.to_thread(down, lab_dir, own_pid=launcher_pid)
        raise


async def watch(lab_dir: Path, stop: asyncio.Event, on_exit: Callable[[ProcessRow], None]) -> None:
    """Until ``stop``: report each lab process that exits on its own (once)."""
    reported: set[tuple[str, str]] = set()
    while not stop.is_set():
        with contextlib.suppress(QsdnError):
            for row in lab_processes(read_lab(lab_dir)):
                if not row.alive and (row.kind, row.name) not in reported:
                    reported.add((row.kind, row.name))
                    on_exit(row)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


# --- status and faults ----------------------------------------------------------------------------
async def controller_view(lab: dict[str, Any]) -> tuple[LabView, str | None]:
    """The summary tables, with the controller's error when its RESTCONF does not answer."""
    try:
        net = await restconf_api(lab).network()
    except QsdnError as exc:
        return lab_view(lab, None), str(exc)
    return lab_view(lab, net), None


def _span(lab: dict[str, Any], span_id: str) -> dict[str, Any]:
    for s in lab["spans"]:
        if s["span_id"] == span_id:
            span: dict[str, Any] = s
            return span
    known = ", ".join(s["span_id"] for s in lab["spans"])
    raise QsdnError(f"lab {lab['lab']}: no span {span_id!r} (spans: {known})")


def _node(lab: dict[str, Any], name: str) -> dict[str, Any]:
    node: dict[str, Any] = next(n for n in lab["nodes"] if n["name"] == name)
    return node


def _fault_xml(node_id: str, qkdl_id: str, fibre_cut: bool, eavesdropper: float) -> str:
    return (
        f'<qkd_node xmlns="{NODE_NS}"><qkdn_id>{node_id}</qkdn_id><qkd_links><qkd_link>'
        f'<qkdl_id>{qkdl_id}</qkdl_id><qsdn_faults xmlns="{EMU_NS}"><fibre_cut>{str(fibre_cut).lower()}'
        f"</fibre_cut><eavesdropper>{eavesdropper:.3f}</eavesdropper></qsdn_faults>"
        "</qkd_link></qkd_links></qkd_node>"
    )


async def _link_role(node: dict[str, Any], qkdl_id: str, password: str) -> str | None:
    """The node's ``phys_qkd_role`` of the PHYS link, or None when it does not have the link."""
    from qsdn.netconf.client import NetconfClient

    nc = node["netconf"]
    subtree = (
        f'<qkd_node xmlns="{NODE_NS}"><qkd_links><qkd_link><qkdl_id>{qkdl_id}</qkdl_id>'
        "</qkd_link></qkd_links></qkd_node>"
    )
    async with NetconfClient(nc["host"], nc["port"], nc["username"], password=password, timeout_s=10) as c:
        data = await c.get_config(subtree=subtree)
    roles = data.findall(f".//{{{NODE_NS}}}qkd_link/{{{NODE_NS}}}phys_qkd_role")
    return (roles[0].text or "").split(":")[-1] if roles else None


async def set_fault(lab_dir: Path, span_id: str, *, fibre_cut: bool, eavesdropper: float) -> str:
    """Set the span's PHYS link fault switches on its transmitting end; returns that node's name."""
    from controller.provision import phys_link_id
    from qsdn.netconf.client import NetconfClient

    lab = read_lab(lab_dir)
    span = _span(lab, span_id)
    qkdl_id = phys_link_id(span_id)
    ends = [_node(lab, span["a"]), _node(lab, span["b"])]
    password = read_secret(ends[0]["netconf"]["password_file"])
    roles = await asyncio.gather(*(_link_role(n, qkdl_id, password) for n in ends))
    if roles == [None, None]:
        raise QsdnError(f"span {span_id} carries no PHYS link yet (no session uses it): nothing to switch")
    tx = ends[roles.index("TRANSMITTER")] if "TRANSMITTER" in roles else ends[0 if roles[0] else 1]
    xml = _fault_xml(tx["qkdn_id"], qkdl_id, fibre_cut, eavesdropper)
    nc = tx["netconf"]
    end = time.monotonic() + 15.0
    async with NetconfClient(nc["host"], nc["port"], nc["username"], password=password, timeout_s=10) as c:
        while True:
            try:
                await c.edit_config(xml)
                return str(tx["name"])
            except QsdnError as exc:
                # the controller may hold the lock for a transaction: try again shortly
                if exc.first.tag not in ("lock-denied", "in-use") or time.monotonic() > end:
                    raise
                await asyncio.sleep(0.2)


async def settle(lab_dir: Path, span_id: str, *, want_down: bool | None, timeout_s: float = 15.0) -> LabView:
    """Wait until the controller has seen the span go down (or up) and no session is moving."""
    lab = read_lab(lab_dir)
    api = restconf_api(lab)
    await asyncio.sleep(1.0)
    end = time.monotonic() + timeout_s
    while True:
        net = await api.network()
        span: dict[str, Any] = next((p for p in net.get("qkd_phys_link", []) if p["span_id"] == span_id), {})
        moving = any(x.get("status") in ("rerouting", "provisioning") for x in net.get("qkd_svc_link", []))
        seen = want_down is None or (span.get("status") == "down") == want_down
        if (seen and not moving) or time.monotonic() > end:
            return lab_view(lab, net)
        await asyncio.sleep(0.25)


# --- a live key exchange (ETSI GS QKD 014) ---------------------------------------------------------
@dataclass
class KeyExchange:
    session: str
    master: str
    slave: str
    key_ids: list[str]
    fingerprints_master: list[str]
    fingerprints_slave: list[str]

    @property
    def identical(self) -> bool:
        return bool(self.key_ids) and self.fingerprints_master == self.fingerprints_slave


async def exchange_keys(
    lab: dict[str, Any], session: str, *, number: int = 1, size: int = 256
) -> KeyExchange:
    """SAE ``src_sae`` asks its KME for keys for ``dst_sae`` (enc_keys); ``dst_sae`` fetches the
    same keys by key_ID at its own KME (dec_keys). Only SHA-256 fingerprints leave this function."""
    import base64
    import hashlib

    import aiohttp

    from qsdn.pki import client_context

    sess = next((x for x in lab["sessions"] if x["name"] == session), None)
    if sess is None:
        raise QsdnError(
            f"no session {session!r} in this lab ({', '.join(x['name'] for x in lab['sessions'])})"
        )
    nodes = {n["name"]: n for n in lab["nodes"]}
    src, dst = nodes[sess["src"]], nodes[sess["dst"]]
    if not src.get("kme_url") or not dst.get("kme_url"):
        raise QsdnError("this lab runs without KMEs (netns mode does not enable them yet)")

    def sae_files(node: dict[str, Any], sae: str) -> tuple[Path, Path]:
        entry = next(x for x in node["saes"] if x["sae_id"] == sae)
        return Path(entry["cert"]), Path(entry["key"])

    ca = Path(src["kme_ca_cert"])

    async def call(node: dict[str, Any], sae: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        ctx = client_context(ca, sae_files(node, sae))
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(f"{node['kme_url']}{path}", json=body, ssl=ctx) as r,
        ):
            data: dict[str, Any] = await r.json(content_type=None)
            if r.status != 200:
                raise QsdnError(f"{node['name']} KME answered {r.status}: {data.get('message', data)}")
            return data

    master, slave = sess["src_sae"], sess["dst_sae"]
    enc = await call(src, master, f"/api/v1/keys/{slave}/enc_keys", {"number": number, "size": size})
    ids = [k["key_ID"] for k in enc["keys"]]
    dec = await call(dst, slave, f"/api/v1/keys/{master}/dec_keys", {"key_IDs": [{"key_ID": i} for i in ids]})
    by_id = {k["key_ID"]: k["key"] for k in dec["keys"]}

    def fp(b64: str) -> str:
        return hashlib.sha256(base64.b64decode(b64)).hexdigest()[:16]

    return KeyExchange(
        session=session,
        master=f"{master}@{src['name']}",
        slave=f"{slave}@{dst['name']}",
        key_ids=ids,
        fingerprints_master=[fp(k["key"]) for k in enc["keys"]],
        fingerprints_slave=[fp(by_id[i]) for i in ids if i in by_id],
    )
