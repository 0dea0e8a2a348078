"""Network namespaces for ``qsdn lab up --mode netns``: one namespace per node, veth pairs per span.

Layout (all of it exists only inside namespaces and veths this lab creates on this machine):

- every node runs in its own namespace ``qsdn-<lab>-<node>`` (loopback up);
- every fibre span ``k`` (its index in the topology file) is a veth pair ``qs<k>`` joining the two
  nodes' namespaces, addressed from the ``k``-th /30 of ``10.213.0.0/16`` (end ``a`` gets the first
  host address, end ``b`` the second); the span's emulated quantum channel listens there;
- every node has a management veth: ``mgmt0`` inside its namespace, ``qm<tag><i>`` in the root
  namespace, addressed from a /30 of ``10.214.0.0/16`` (root end first). The controller, which stays
  in the root namespace, reaches the node's NETCONF server on the namespace end. The management /30s
  of one lab are consecutive, in a block chosen so that no address on the root namespace overlaps it
  (two labs can run side by side).

:func:`plan_netns` is pure; :func:`create` and :func:`destroy` run ``ip``. A failed :func:`create`
removes what it created before raising.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qsdn.errors import QsdnError

log = logging.getLogger(__name__)

SPAN_NET = ipaddress.IPv4Network("10.213.0.0/16")
MGMT_NET = ipaddress.IPv4Network("10.214.0.0/16")
#: /30s per management block step (a /24): labs start their management block on a /24 boundary.
MGMT_STEP = 64
#: The agent's NETCONF port inside a namespace (each node has its own address, so one port fits all).
NETCONF_PORT = 830
#: An interface ``qkdi_id`` listens on ``CHANNEL_PORT_BASE + qkdi_id`` on its span's address.
CHANNEL_PORT_BASE = 7000
NS_DEV_MGMT = "mgmt0"
IP_TIMEOUT_S = 15.0

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class SpanVeth:
    """The veth pair of one fibre span: ``a_dev`` in ``a``'s namespace, ``b_dev`` in ``b``'s."""

    span_id: str
    a: str
    b: str
    a_dev: str
    b_dev: str
    a_addr: str
    b_addr: str


@dataclass(frozen=True)
class MgmtVeth:
    """A node's management veth: ``root_dev`` (root namespace) to ``mgmt0`` in ``namespace``."""

    node: str
    namespace: str
    root_dev: str
    root_addr: str
    ns_addr: str


@dataclass(frozen=True)
class NetnsPlan:
    lab: str
    namespaces: dict[str, str]
    spans: tuple[SpanVeth, ...]
    mgmt: tuple[MgmtVeth, ...]

    def namespace(self, node: str) -> str:
        return self.namespaces[node]

    def mgmt_of(self, node: str) -> MgmtVeth:
        for m in self.mgmt:
            if m.node == node:
                return m
        raise KeyError(node)

    def span_addr(self, span_id: str, node: str) -> str:
        for s in self.spans:
            if s.span_id == span_id:
                return s.a_addr if node == s.a else s.b_addr
        raise KeyError(span_id)

    def root_devs(self) -> list[str]:
        return [m.root_dev for m in self.mgmt]

    def to_json(self) -> dict[str, Any]:
        return {
            "namespaces": dict(self.namespaces),
            "spans": [vars(s) for s in self.spans],
            "mgmt": [vars(m) for m in self.mgmt],
        }


def sanitize(name: str) -> str:
    """``name`` with every character ``ip netns`` or a file name could object to replaced by ``_``."""
    return _SAFE.sub("_", name)


def namespace_name(lab: str, node: str) -> str:
    return f"qsdn-{sanitize(lab)}-{sanitize(node)}"


def lab_tag(key: str) -> str:
    """Six hex digits naming one lab's root-namespace devices (interface names stop at 15 bytes)."""
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def _host(net: ipaddress.IPv4Network, index: int, host: int) -> str:
    return str(net.network_address + 4 * index + host)


def plan_netns(
    lab: str,
    nodes: Sequence[str],
    spans: Sequence[tuple[str, str, str]],
    *,
    tag: str,
    mgmt_offset: int,
) -> NetnsPlan:
    """Namespaces, span veths and management veths for ``nodes`` and ``spans`` ``(span_id, a, b)``.

    ``mgmt_offset`` is the index of the lab's first management /30 in ``10.214.0.0/16``.
    """
    if len(spans) > SPAN_NET.num_addresses // 4:
        raise QsdnError(f"lab {lab}: {len(spans)} spans exceed the {SPAN_NET} address plan")
    if mgmt_offset < 0 or mgmt_offset + len(nodes) > MGMT_NET.num_addresses // 4:
        raise QsdnError(f"lab {lab}: {len(nodes)} nodes do not fit the {MGMT_NET} management plan")
    namespaces = {n: namespace_name(lab, n) for n in nodes}
    if len(set(namespaces.values())) != len(namespaces):
        raise QsdnError(f"lab {lab}: two node names map to the same namespace name")
    span_veths = tuple(
        SpanVeth(
            span_id=sid,
            a=a,
            b=b,
            a_dev=f"qs{k}",
            b_dev=f"qs{k}",
            a_addr=_host(SPAN_NET, k, 1),
            b_addr=_host(SPAN_NET, k, 2),
        )
        for k, (sid, a, b) in enumerate(spans)
    )
    mgmt = tuple(
        MgmtVeth(
            node=n,
            namespace=namespaces[n],
            root_dev=f"qm{tag}{i}",
            root_addr=_host(MGMT_NET, mgmt_offset + i, 1),
            ns_addr=_host(MGMT_NET, mgmt_offset + i, 2),
        )
        for i, n in enumerate(nodes)
    )
    return NetnsPlan(lab=lab, namespaces=namespaces, spans=span_veths, mgmt=mgmt)


# --- I/O -------------------------------------------------------------------------------------------
def unavailable_reason() -> str | None:
    """Why this process cannot build namespaces, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or use --mode processes)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"qsdn-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except QsdnError as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> str:
    argv = ["ip", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise QsdnError(f"`{' '.join(argv)}` failed: {exc}") from None
    if check and done.returncode != 0:
        raise QsdnError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def existing_namespaces() -> set[str]:
    out = _ip("-j", "netns", "list")
    if not out.strip():
        return set()
    return {str(e["name"]) for e in json.loads(out)}


def existing_links() -> set[str]:
    return {str(e["ifname"]) for e in json.loads(_ip("-j", "link", "show") or "[]")}


def _root_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for link in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def choose_mgmt_offset(n_nodes: int) -> int:
    """The first /24-aligned block of ``n_nodes`` management /30s that no root address overlaps."""
    used = [n for n in _root_networks() if n.overlaps(MGMT_NET)]
    total = MGMT_NET.num_addresses // 4
    for start in range(0, total - n_nodes + 1, MGMT_STEP):
        first = MGMT_NET.network_address + 4 * start
        block = list(ipaddress.summarize_address_range(first, first + 4 * n_nodes - 1))
        if not any(u.overlaps(b) for u in used for b in block):
            return start
    raise QsdnError(f"no free block of {n_nodes} management /30s left in {MGMT_NET}")


def create(plan: NetnsPlan) -> None:
    """Create the namespaces and veths of ``plan``; on any failure remove what was made and raise."""
    clash = sorted(set(plan.namespaces.values()) & existing_namespaces())
    if clash:
        raise QsdnError(
            f"lab {plan.lab}: network namespace {clash[0]} already exists (is this lab running from another"
            " directory? `qsdn lab down --dir DIR` there, or `ip netns del` it)"
        )
    dev_clash = sorted(set(plan.root_devs()) & existing_links())
    if dev_clash:
        raise QsdnError(f"lab {plan.lab}: interface {dev_clash[0]} already exists in the root namespace")
    made_ns: list[str] = []
    made_devs: list[str] = []
    try:
        for ns in plan.namespaces.values():
            _ip("netns", "add", ns)
            made_ns.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for s in plan.spans:
            ns_a, ns_b = plan.namespaces[s.a], plan.namespaces[s.b]
            _ip("link", "add", "name", s.a_dev, "netns", ns_a, "type", "veth", "peer", "name", s.b_dev,
                "netns", ns_b)  # fmt: skip
            _ip("-n", ns_a, "addr", "add", f"{s.a_addr}/30", "dev", s.a_dev)
            _ip("-n", ns_b, "addr", "add", f"{s.b_addr}/30", "dev", s.b_dev)
            _ip("-n", ns_a, "link", "set", s.a_dev, "up")
            _ip("-n", ns_b, "link", "set", s.b_dev, "up")
        for m in plan.mgmt:
            _ip("link", "add", "name", NS_DEV_MGMT, "netns", m.namespace, "type", "veth", "peer", "name",
                m.root_dev)  # fmt: skip
            made_devs.append(m.root_dev)
            _ip("addr", "add", f"{m.root_addr}/30", "dev", m.root_dev)
            _ip("link", "set", m.root_dev, "up")
            _ip("-n", m.namespace, "addr", "add", f"{m.ns_addr}/30", "dev", NS_DEV_MGMT)
            _ip("-n", m.namespace, "link", "set", NS_DEV_MGMT, "up")
    except QsdnError:
        destroy(made_ns, made_devs)  # only what this call made: a clash is someone else's
        raise
    log.debug("lab %s: %d namespaces, %d span veths", plan.lab, len(plan.namespaces), len(plan.spans))


def destroy(namespaces: Iterable[str], root_devs: Iterable[str], *, timeout_s: float = 5.0) -> list[str]:
    """Delete the namespaces (their veths go with them) and the root-namespace veth ends.

    Returns what could not be removed (empty when everything is gone). Names that do not exist are
    skipped, so this is safe to call twice.
    """
    problems: list[str] = []
    try:
        have_ns = existing_namespaces()
        have_links = existing_links()
    except QsdnError as exc:
        return [str(exc)]
    namespaces, root_devs = list(namespaces), list(root_devs)
    for ns in namespaces:
        if ns not in have_ns:
            continue
        if _ip("netns", "pids", ns, check=False).strip():
            # its processes were not ours to stop (another lab took the name): leave it alone
            problems.append(f"namespace {ns} still runs processes: left in place")
            continue
        try:
            _ip("netns", "del", ns)
        except QsdnError as exc:
            problems.append(str(exc))
    for dev in root_devs:
        if dev in have_links:
            # deleting a namespace frees its veths asynchronously: the root end may already be gone
            _ip("link", "del", dev, check=False)
    kept = {p.split()[1] for p in problems if p.startswith("namespace ")}
    end = time.monotonic() + timeout_s
    while True:
        left = sorted(set(root_devs) & existing_links()) + sorted(
            (set(namespaces) - kept) & existing_namespaces()
        )
        if not left or time.monotonic() > end:
            break
        time.sleep(0.05)
    problems.extend(f"{x} still exists" for x in left)
    return problems


def exec_argv(namespace: str) -> list[str]:
    """The prefix that runs a command inside ``namespace`` (``ip netns exec`` execs it: same pid)."""
    return ["ip", "netns", "exec", namespace]
