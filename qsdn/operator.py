"""Operator commands that talk to a controller's RESTCONF API (``qsdn session|path|topology``).

Every command is a plain RFC 8040 exchange in ``application/yang-data+json``; errors print the
server's ``ietf-restconf:errors`` message. Nodes can be named by name or by qkdn_id.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import uuid
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from qsdn.errors import QsdnError

JSON = "application/yang-data+json"
NET = "qsdn-orchestrator:qkd_network"
ORCH = "qsdn-orchestrator"


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=os.environ.get("QSDN_URL", "http://127.0.0.1:8080"), help="controller base URL"
    )
    p.add_argument("--user", default=os.environ.get("QSDN_USER"), help="RESTCONF user (env QSDN_USER)")
    p.add_argument("--password", default=os.environ.get("QSDN_PASSWORD"), help="password (env QSDN_PASSWORD)")
    p.add_argument("--ca", default=os.environ.get("QSDN_CA"), help="CA file to verify an HTTPS controller")
    p.add_argument("--format", choices=("table", "json"), default="table")


class Api:
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.url.rstrip("/") + "/restconf"
        headers = {"Accept": JSON, "Content-Type": JSON}
        if args.user:
            token = base64.b64encode(f"{args.user}:{args.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.headers = headers
        self.ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=args.ca) if args.ca else True

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(headers=self.headers, timeout=timeout) as http:
            data = json.dumps(body) if body is not None else None
            try:
                async with http.request(method, self.base + path, data=data, ssl=self.ssl) as r:
                    text = await r.text()
                    if r.status >= 400:
                        raise QsdnError(_error_text(r.status, text))
                    return json.loads(text) if text.strip() else None
            except aiohttp.ClientError as exc:
                raise QsdnError(f"cannot reach the controller at {self.base}: {exc}") from None

    async def network(self) -> dict[str, Any]:
        body = await self.request("GET", f"/data/{NET}")
        net: dict[str, Any] = body[NET]
        return net

    async def node_id(self, ref: str) -> str:
        try:
            return str(uuid.UUID(ref))
        except ValueError:
            pass
        for n in (await self.network()).get("qkd_node", []):
            if n.get("name") == ref:
                return str(n["qkdn_id"])
        raise QsdnError(f"no node named {ref!r}")


def _error_text(status: int, text: str) -> str:
    try:
        errs = json.loads(text)["ietf-restconf:errors"]["error"]
        parts = []
        for e in errs:
            where = f" at {e['error-path']}" if e.get("error-path") else ""
            parts.append(f"{e.get('error-tag')}: {e.get('error-message', '')}{where}")
        return f"HTTP {status}: " + "; ".join(parts)
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {text[:200]}"


def _names(net: dict[str, Any]) -> dict[str, str]:
    return {n["qkdn_id"]: n.get("name", n["qkdn_id"][:8]) for n in net.get("qkd_node", [])}


def _print(args: argparse.Namespace, data: Any, table: Table | None) -> None:
    if args.format == "json" or table is None:
        print(json.dumps(data, indent=2))
    else:
        Console().print(table)


async def _session_create(args: argparse.Namespace) -> int:
    api = Api(args)
    src, dst = await api.node_id(args.src), await api.node_id(args.dst)
    entanglement = args.service == "entanglement"
    if args.rate is None and not entanglement:
        raise QsdnError("--rate is required for key sessions")
    inp: dict[str, Any] = {
        "src_node": src,
        "dst_node": dst,
        "requested_rate_bps": str(args.rate if args.rate is not None else 1),
        "disjoint_backup": args.backup,
    }
    if not entanglement:
        inp["src_sae"] = args.src_sae or f"urn:qsdn:sae:{args.src}"
        inp["dst_sae"] = args.dst_sae or f"urn:qsdn:sae:{args.dst}"
    if args.service is not None:
        # the entanglement planner: pairs, or key over trusted relays and quantum repeaters
        inp["service"] = args.service
        if not entanglement:
            inp["repeaters"] = True
        inp.update(_target_input(args))
        if args.rounds is not None:
            inp["max_purification_rounds"] = args.rounds
    if args.max_hops is not None:
        inp["max_hops"] = args.max_hops
    if args.avoid:
        inp["avoid"] = [await api.node_id(a) for a in args.avoid]
    out = await api.request("POST", f"/operations/{ORCH}:create-session", {f"{ORCH}:input": inp})
    o = out[f"{ORCH}:output"]
    names = _names(await api.network())
    t = Table(title="session created")
    for c in ("session", "status", "path"):
        t.add_column(c)
    t.add_row(o["session_id"], o["status"], " - ".join(names.get(n, n) for n in o.get("path", [])))
    _print(args, out, t)
    return 0


async def _session_list(args: argparse.Namespace) -> int:
    api = Api(args)
    net = await api.network()
    names = _names(net)
    t = Table(title="sessions")
    for c in ("session", "from", "to", "rate bit/s", "status", "path", "error"):
        t.add_column(c)
    for s in net.get("qkd_svc_link", []):
        t.add_row(
            s["session_id"],
            names.get(s["src_node"], s["src_node"]),
            names.get(s["dst_node"], s["dst_node"]),
            str(s.get("requested_rate_bps", "")),
            s.get("status", ""),
            " - ".join(names.get(n, n) for n in s.get("path", [])),
            s.get("last_error", ""),
        )
    _print(args, net.get("qkd_svc_link", []), t)
    return 0


async def _session_delete(args: argparse.Namespace) -> int:
    api = Api(args)
    await api.request(
        "POST", f"/operations/{ORCH}:delete-session", {f"{ORCH}:input": {"session_id": args.session_id}}
    )
    print(f"session {args.session_id} deleted")
    return 0


async def _path_compute(args: argparse.Namespace) -> int:
    if args.service is not None:
        return await _entanglement_compute(args)
    api = Api(args)
    inp: dict[str, Any] = {
        "src_node": await api.node_id(args.src),
        "dst_node": await api.node_id(args.dst),
        "requested_rate_bps": str(args.rate),
        "k": args.k,
        "disjoint_backup": args.backup,
    }
    if args.max_hops is not None:
        inp["max_hops"] = args.max_hops
    out = await api.request("POST", f"/operations/{ORCH}:compute-path", {f"{ORCH}:input": inp})
    o = out[f"{ORCH}:output"]
    names = _names(await api.network())
    t = Table(title="candidate paths")
    for c in ("#", "path", "bottleneck bit/s", "hops (class, rate bit/s)"):
        t.add_column(c)
    rows = [(str(p["index"]), p) for p in o.get("path", [])]
    if "backup" in o:
        rows.append(("backup", o["backup"]))
    for label, p in rows:
        hops = ", ".join(
            f"{h['span_id']} ({h.get('span_class')}, {h.get('predicted_skr_bps')})" for h in p.get("hop", [])
        )
        t.add_row(
            label,
            " - ".join(names.get(n, n) for n in p.get("node", [])),
            str(p.get("bottleneck_bps", "")),
            hops,
        )
    _print(args, out, t)
    return 0


async def _entanglement_compute(args: argparse.Namespace) -> int:
    """``qsdn path compute --service entanglement|key``: the compute-entanglement-path dry run."""
    api = Api(args)
    inp: dict[str, Any] = {
        "src_node": await api.node_id(args.src),
        "dst_node": await api.node_id(args.dst),
        "service": args.service,
        "requested_rate_bps": str(args.rate if args.rate_given else 0),
        "max_purification_rounds": args.rounds,
        "k": args.k,
    }
    inp.update(_target_input(args))
    if args.avoid:
        inp["avoid"] = [await api.node_id(a) for a in args.avoid]
    out = await api.request("POST", f"/operations/{ORCH}:compute-entanglement-path", {f"{ORCH}:input": inp})
    o = out[f"{ORCH}:output"]
    names = _names(await api.network())

    def named(ids: list[str]) -> str:
        return " - ".join(names.get(n, n) for n in ids)

    summary = f"{o.get('service')} plan {named(o.get('node', []))}: key {o.get('key_rate_bps')} bit/s"
    if "pair_rate_hz" in o:
        summary += f", {o['pair_rate_hz']} pairs/s at F = {o.get('fidelity')}"
    summary += f"; key visible to {', '.join(names.get(n, n) for n in o.get('key_visible_to', []))}"
    t = Table(title=summary)
    for c in ("#", "technology", "nodes", "key bit/s", "pairs/s", "fidelity", "swap order", "purification"):
        t.add_column(c)
    for seg in o.get("segment", []):
        ent = seg.get("technology") == "entanglement"
        rounds = int(seg.get("purification_rounds", 0))
        t.add_row(
            str(seg["index"]),
            str(seg.get("technology", "")),
            named(seg.get("node", [])),
            str(seg.get("key_rate_bps", "")),
            str(seg.get("pair_rate_hz", "")) if ent else "",
            str(seg.get("fidelity", "")) if ent else "",
            str(seg.get("swap_order", "")) if ent else "",
            f"{rounds} x {seg.get('purification_protocol')}" if rounds else ("none" if ent else ""),
        )
    _print(args, out, t)
    return 0


async def _topology_show(args: argparse.Namespace) -> int:
    api = Api(args)
    net = await api.network()
    names = _names(net)
    nodes = Table(title="nodes")
    for c in ("name", "qkdn_id", "NETCONF", "trusted", "status"):
        nodes.add_column(c)
    for n in net.get("qkd_node", []):
        nc = n.get("netconf", {})
        nodes.add_row(
            n.get("name", ""),
            n["qkdn_id"],
            f"{nc.get('host')}:{nc.get('port')}",
            str(n.get("trusted")),
            n.get("status", ""),
        )
    spans = Table(title="fibre spans")
    for c in (
        "span",
        "a",
        "b",
        "km",
        "class",
        "band",
        "loss dB",
        "predicted bit/s",
        "reserved bit/s",
        "status",
    ):
        spans.add_column(c)
    for s in net.get("qkd_phys_link", []):
        spans.add_row(
            s["span_id"],
            names.get(s["node_a"], s["node_a"]),
            names.get(s["node_b"], s["node_b"]),
            str(s.get("length_km")),
            s.get("span_class", ""),
            s.get("band", ""),
            str(s.get("loss_db", "")),
            str(s.get("predicted_skr_bps", "")),
            str(s.get("reserved_bps", "")),
            s.get("status", ""),
        )
    if args.format == "json":
        print(json.dumps(net, indent=2))
    else:
        Console().print(nodes)
        Console().print(spans)
    return 0


def _rate_default(args: argparse.Namespace) -> argparse.Namespace:
    args.rate_given = args.rate is not None
    if args.rate is None:
        args.rate = 1
    return args


def _target_input(args: argparse.Namespace) -> dict[str, Any]:
    """The RPC input leaves of the targets given with ``--service`` (see :func:`_add_target_args`)."""
    inp: dict[str, Any] = {}
    if args.fidelity is not None:
        inp["target_fidelity"] = str(args.fidelity)
    if args.pair_rate is not None:
        inp["min_pair_rate_hz"] = str(args.pair_rate)
    if args.max_trusted is not None:
        inp["max_trusted_nodes"] = args.max_trusted
    return inp


def _add_target_args(parser: Any) -> None:
    """The targets ``--service`` plans for: pair fidelity, pair rate, most trusted relays."""
    parser.add_argument("--fidelity", type=float, help="with --service: target fidelity of the pairs")
    parser.add_argument("--pair-rate", type=float, help="with --service entanglement: pairs/s needed")
    parser.add_argument(
        "--max-trusted", type=int, help="with --service key: most trusted relays (0: repeaters only)"
    )


def register(sub: Any) -> None:
    sess = sub.add_parser("session", help="key sessions on a controller").add_subparsers(
        dest="action", required=True
    )
    c = sess.add_parser("create", help="create a key or entanglement session")
    c.add_argument("--src", required=True, help="source node (name or id)")
    c.add_argument("--dst", required=True, help="destination node (name or id)")
    c.add_argument("--rate", type=int, help="required key rate, bit/s (key sessions: required)")
    c.add_argument(
        "--service",
        choices=("entanglement", "key"),
        help="plan with the entanglement planner: entangled pairs between the two nodes, or key over "
        "trusted relays and quantum repeaters; without it, a trusted-relay key session",
    )
    _add_target_args(c)
    c.add_argument("--rounds", type=int, help="with --service: most purification rounds (default 3)")
    c.add_argument("--src-sae")
    c.add_argument("--dst-sae")
    c.add_argument("--max-hops", type=int)
    c.add_argument("--avoid", action="append", help="node to avoid (repeatable)")
    c.add_argument("--backup", action="store_true", help="also compute a node-disjoint backup path")
    add_connection_args(c)
    c.set_defaults(func=lambda a: asyncio.run(_session_create(a)))
    ls = sess.add_parser("list", help="list sessions")
    add_connection_args(ls)
    ls.set_defaults(func=lambda a: asyncio.run(_session_list(a)))
    d = sess.add_parser("delete", help="delete a session")
    d.add_argument("session_id")
    add_connection_args(d)
    d.set_defaults(func=lambda a: asyncio.run(_session_delete(a)))

    path = sub.add_parser("path", help="path computation").add_subparsers(dest="action", required=True)
    pc = path.add_parser("compute", help="compute candidate paths (dry run)")
    pc.add_argument("--src", required=True)
    pc.add_argument("--dst", required=True)
    pc.add_argument("--rate", type=int, help="key rate needed, bit/s (default 1; 0 with --service)")
    pc.add_argument("--k", type=int, default=4)
    pc.add_argument("--max-hops", type=int)
    pc.add_argument("--backup", action="store_true")
    pc.add_argument(
        "--service",
        choices=("entanglement", "key"),
        help="plan entanglement, or key over trusted relays and quantum repeaters "
        "(compute-entanglement-path); without it, the trusted-relay paths of compute-path",
    )
    _add_target_args(pc)
    pc.add_argument("--rounds", type=int, default=3, help="with --service: most purification rounds")
    pc.add_argument("--avoid", action="append", help="with --service: node to avoid (repeatable)")
    add_connection_args(pc)
    pc.set_defaults(func=lambda a: asyncio.run(_path_compute(_rate_default(a))))

    topo = sub.add_parser("topology", help="the controller's view of the network").add_subparsers(
        dest="action", required=True
    )
    ts = topo.add_parser("show", help="nodes and fibre spans")
    add_connection_args(ts)
    ts.set_defaults(func=lambda a: asyncio.run(_topology_show(a)))
