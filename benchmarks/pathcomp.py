"""Benchmark of the controller's path computation against plain networkx (issue 3, acceptance).

Usage::

    .venv/bin/python benchmarks/pathcomp.py [--nodes 1000 10000] [--requests 200] [--seed 1] [--json]
        [--baseline-requests N] [--static]

For each size it generates a seeded synthetic topology, a set of random requests (k = 4 candidates and a
node-disjoint backup, 1 kbit/s), and times, per request (one after the other; each accepted session
reserves its rate on its best path before the next request, as the controller would, unless
``--static``):

* **ours**: :func:`controller.pathcomp.compute_paths` (rejections included, they are answers too);
* **networkx**: ``islice(shortest_simple_paths(G, s, t, weight), 4)`` (Yen) plus
  ``node_disjoint_paths(G, s, t, cutoff=2)`` on the same request graph: the same usable hops (rate after
  reservations, red spans out, parallel spans collapsed) with the same integer edge costs, untrusted
  nodes hidden by a subgraph view except at the two ends. Graph construction and its updates after
  each admission are not timed. At 10,000 nodes networkx takes seconds per request, so by default it
  runs on the first 10 requests only (``--baseline-requests``).

The per-topology work of ours (span assessments, landmarks, block-cut tree) is timed once ("index").
The topology is moved out of the garbage collector's reach (``gc.freeze()``) before timing, as a
long-running controller should do with a loaded topology.

The topology: nodes uniform in a square, each joined to its three nearest neighbours, plus spans to
further near neighbours up to a mean degree of 5, components joined by their closest pair. Fibre
length is 1.25 times the distance (route factor), clamped to 5..120 km and rounded to 0.1 km, with
0..1.5 dB of extra loss in 0.5 dB steps; the spacing puts about 58 % of the spans in the green class,
35 % orange and 7 % red. 5 % of nodes are untrusted; a fifth of the usable spans carry a reservation
of 30 to 90 % of their predicted rate. Many requests are rejected for want of a disjoint backup (sparse
graph, cut nodes): the table gives the median over all requests and over the accepted ones. Each
answer is checked against networkx's ("mism": disagreements on the best cost or the backup's existence).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

sys.path.insert(0, str(FsPath(__file__).resolve().parents[1]))

import networkx as nx

from controller.model import Node, Reservation, Span, Topology
from controller.pathcomp import (
    PENALTY_SCALE_BPS,
    PathComputer,
    PathRejectedError,
    PathRequest,
)
from qsdn.physics.loss import SpanClass

RATE_BPS = 1000.0
SPACING_KM = 45.0  # side of the square / sqrt(n)
ROUTE_FACTOR = 1.25


@dataclass
class Synthetic:
    topology: Topology
    index_s: float
    reservations: list[Reservation]
    requests: list[PathRequest]


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _nearest(points: list[tuple[float, float]], cell: float, count: int) -> list[list[int]]:
    """The ``count`` nearest other points of every point (grid buckets, exact)."""
    grid: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(points):
        grid.setdefault((int(x // cell), int(y // cell)), []).append(i)
    out = []
    for i, (x, y) in enumerate(points):
        cx, cy = int(x // cell), int(y // cell)
        ring = 1
        while True:
            found = [
                (math.dist(points[i], points[j]), j)
                for gx in range(cx - ring, cx + ring + 1)
                for gy in range(cy - ring, cy + ring + 1)
                for j in grid.get((gx, gy), ())
                if j != i
            ]
            found.sort()
            # Exact once the count-th distance is within the searched ring's inner radius.
            if len(found) >= count and found[count - 1][0] <= ring * cell:
                out.append([j for _, j in found[:count]])
                break
            ring += 1
    return out


def generate(n: int, seed: int, requests: int) -> Synthetic:
    rng = random.Random(seed)
    side = SPACING_KM * math.sqrt(n)
    points = [(rng.uniform(0, side), rng.uniform(0, side)) for _ in range(n)]
    ids = [_uuid(rng) for _ in range(n)]
    nodes = [
        Node(
            ids[i], f"n{i}", trusted=rng.random() >= 0.05, role="relay" if rng.random() < 0.1 else "endpoint"
        )
        for i in range(n)
    ]
    near = _nearest(points, SPACING_KM, 8)
    edges: set[tuple[int, int]] = set()
    for i in range(n):
        for j in near[i][:3]:
            edges.add((min(i, j), max(i, j)))
    extra = [(min(i, j), max(i, j)) for i in range(n) for j in near[i][3:8]]
    rng.shuffle(extra)
    for e in extra:
        if len(edges) >= 2.5 * n:
            break
        edges.add(e)
    # Join components by their closest pair (union-find, then the nearest outside point of each small one).
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    while True:
        comps: dict[int, list[int]] = {}
        for i in range(n):
            comps.setdefault(find(i), []).append(i)
        if len(comps) == 1:
            break
        smallest = min(comps.values(), key=len)
        inside = set(smallest)
        _, a, b = min(
            (math.dist(points[i], points[j]), i, j) for i in smallest for j in range(n) if j not in inside
        )
        edges.add((min(a, b), max(a, b)))
        parent[find(a)] = find(b)
    spans = []
    for k, (a, b) in enumerate(sorted(edges)):
        length = round(min(120.0, max(5.0, ROUTE_FACTOR * math.dist(points[a], points[b]))), 1)
        spans.append(Span(f"s-{k}", ids[a], ids[b], length, extra_loss_db=0.5 * rng.randrange(4)))
    topology = Topology.build(nodes, spans)
    t0 = time.perf_counter()
    computer = PathComputer(topology)  # the per-topology index: span assessments and adjacency
    index_s = time.perf_counter() - t0
    assessments = computer.assessments
    reservations = [
        Reservation(f"bg-{k}", sp.span_id, rng.uniform(0.3, 0.9) * assessments[sp.span_id].predicted_rate_bps)
        for k, sp in enumerate(spans)
        if assessments[sp.span_id].usable and rng.random() < 0.2
    ]
    reqs = []
    for _ in range(requests):
        a, b = rng.sample(range(n), 2)
        reqs.append(PathRequest(ids[a], ids[b], RATE_BPS, k=4, disjoint_backup=True))
    return Synthetic(topology, index_s, reservations, reqs)


class Baseline:
    """The request graph for RATE_BPS as a weighted networkx graph (costs as in controller.pathcomp),
    kept current as sessions are admitted."""

    def __init__(self, syn: Synthetic) -> None:
        self.topology = syn.topology
        self.assessments = PathComputer(syn.topology).assessments
        self.held: dict[str, float] = {}
        for r in syn.reservations:
            self.held[r.span_id] = self.held.get(r.span_id, 0.0) + r.rate_bps
        self.hop_weight = math.ceil(PENALTY_SCALE_BPS) * len(self.topology.nodes) + 1
        self.parallel: dict[frozenset[str], list[str]] = {}
        for sid, span in sorted(self.topology.spans.items()):
            self.parallel.setdefault(frozenset((span.a, span.b)), []).append(sid)
        self.g = nx.Graph()
        self.g.add_nodes_from(sorted(self.topology.nodes))
        for ends in self.parallel:
            self.refresh(ends)
        self.untrusted = {nid for nid, node in self.topology.nodes.items() if not node.trusted}

    def refresh(self, ends: frozenset[str]) -> None:
        costs = []
        for sid in self.parallel[ends]:
            avail = self.assessments[sid].predicted_rate_bps - self.held.get(sid, 0.0)
            if self.assessments[sid].usable and avail >= RATE_BPS:
                costs.append(self.hop_weight + math.ceil(PENALTY_SCALE_BPS / max(avail, 1.0)))
        a, b = sorted(ends)
        if costs:
            self.g.add_edge(a, b, weight=min(costs))
        elif self.g.has_edge(a, b):
            self.g.remove_edge(a, b)

    def admit(self, spans: Sequence[str]) -> None:
        for sid in spans:
            self.held[sid] = self.held.get(sid, 0.0) + RATE_BPS
            span = self.topology.spans[sid]
            self.refresh(frozenset((span.a, span.b)))

    def compute(self, req: PathRequest) -> tuple[list[list[str]], list[list[str]]]:
        hidden = self.untrusted - {req.src, req.dst}
        view = nx.subgraph_view(self.g, filter_node=lambda v: v not in hidden)
        try:
            paths = list(
                itertools.islice(nx.shortest_simple_paths(view, req.src, req.dst, weight="weight"), 4)
            )
            pair = list(nx.node_disjoint_paths(view, req.src, req.dst, cutoff=2))
        except nx.NetworkXNoPath:
            paths, pair = [], []
        return paths, pair


@dataclass
class Timings:
    ours: list[float]
    ours_accepted: list[float]
    theirs: list[float]
    outcomes: dict[str, int]
    mismatches: int


def agrees(answer: Any, paths: list[list[str]], pair: list[list[str]], g: Any) -> bool:
    """Our cheapest candidate costs what Yen's first path costs, and we find a backup exactly when
    networkx finds two node-disjoint paths."""
    if isinstance(answer, PathRejectedError):
        return (answer.constraint == "disjoint-backup") == bool(paths) and len(pair) < 2
    cheapest = min(_cost(g, p.nodes) for p in [answer.best, *answer.alternatives])
    return bool(paths) and cheapest == _cost(g, paths[0]) and len(pair) == 2


def run(syn: Synthetic, baseline_count: int, admit: bool) -> Timings:
    """Time both on every request (networkx on the first ``baseline_count``), admitting accepted ones."""
    computer = PathComputer(syn.topology)
    base = Baseline(syn)
    held = list(syn.reservations)
    t = Timings([], [], [], {"accepted": 0}, 0)
    for i, req in enumerate(syn.requests):
        t0 = time.perf_counter()
        try:
            answer: Any = computer.compute(held, req)
        except PathRejectedError as exc:
            answer = exc
        elapsed = time.perf_counter() - t0
        t.ours.append(elapsed)
        if isinstance(answer, PathRejectedError):
            t.outcomes[answer.constraint] = t.outcomes.get(answer.constraint, 0) + 1
        else:
            t.outcomes["accepted"] += 1
            t.ours_accepted.append(elapsed)
        if i < baseline_count:
            t0 = time.perf_counter()
            paths, pair = base.compute(req)
            t.theirs.append(time.perf_counter() - t0)
            t.mismatches += not agrees(answer, paths, pair, base.g)
        if admit and not isinstance(answer, PathRejectedError):
            held += [Reservation(f"session-{i}", sid, RATE_BPS) for sid in answer.best.spans]
            base.admit(answer.best.spans)
    return t


def _cost(g: Any, nodes: Sequence[str]) -> int:
    return sum(g[a][b]["weight"] for a, b in itertools.pairwise(nodes))


def _ms(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench(n: int, seed: int, requests: int, baseline_requests: int, admit: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    syn = generate(n, seed, requests)
    t_gen = time.perf_counter() - t0
    # The topology and its index are long-lived: keep the cyclic garbage collector from rescanning
    # them (its full collections otherwise add pauses of tens of ms at 10,000 nodes, to both sides).
    gc.collect()
    gc.freeze()
    classes = {c.value: 0 for c in SpanClass}
    for a in PathComputer(syn.topology).assessments.values():
        classes[a.span_class.value] += 1
    t = run(syn, baseline_requests, admit)
    return {
        "nodes": n,
        "spans": len(syn.topology.spans),
        "mean_degree": round(2 * len(syn.topology.spans) / n, 2),
        "classes": classes,
        "generate_s": round(t_gen, 2),
        "index_s": round(syn.index_s, 3),
        "requests": len(syn.requests),
        "admit": admit,
        "outcomes": t.outcomes,
        "ours_median_ms": round(_ms(t.ours, 0.5), 2),
        "ours_p95_ms": round(_ms(t.ours, 0.95), 2),
        "ours_max_ms": round(1e3 * max(t.ours), 2),
        "ours_accepted_median_ms": round(_ms(t.ours_accepted, 0.5), 2),
        "ours_accepted_p95_ms": round(_ms(t.ours_accepted, 0.95), 2),
        "networkx_requests": len(t.theirs),
        "networkx_median_ms": round(_ms(t.theirs, 0.5), 2),
        "networkx_p95_ms": round(_ms(t.theirs, 0.95), 2),
        "ours_median_same_requests_ms": round(_ms(t.ours[: len(t.theirs)], 0.5), 2),
        "mismatches": t.mismatches,
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in FsPath("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "networkx": nx.__version__,
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--baseline-requests",
        type=int,
        default=None,
        help="requests timed with networkx (default: all up to 2,000 nodes, 10 above)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--static", action="store_true", help="do not reserve accepted sessions (reservations never change)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for n in args.nodes:
        base = args.baseline_requests
        if base is None:
            base = args.requests if n <= 2000 else min(args.requests, 10)
        results.append(bench(n, args.seed, args.requests, base, not args.static))
    info = machine()
    if args.json:
        print(json.dumps({"machine": info, "results": results}, indent=2))
        return 0
    print(f"CPU: {info['cpu']}, {info['cores']} cores; Python {info['python']}; networkx {info['networkx']}")
    mode = "static reservations" if args.static else "each accepted session reserved before the next request"
    print(f"k = 4 candidates + node-disjoint backup, {RATE_BPS:.0f} bit/s per request, seed {args.seed}")
    print(f"{mode}\n")
    header = (
        f"{'nodes':>6} {'spans':>6} {'deg':>5} {'green/orange/red':>17} {'index s':>8} "
        f"{'req':>4} {'ours med':>9} {'ours p95':>9} {'acc med':>9} "
        f"{'nx req':>6} {'nx med':>9} {'nx p95':>9} "
        f"{'speed-up':>8} {'mism':>4}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        c = r["classes"]
        mix = f"{c['green']}/{c['orange']}/{c['red']}"
        speedup = r["networkx_median_ms"] / max(r["ours_median_same_requests_ms"], 1e-9)
        print(
            f"{r['nodes']:>6} {r['spans']:>6} {r['mean_degree']:>5} {mix:>17} {r['index_s']:>8} "
            f"{r['requests']:>4} {r['ours_median_ms']:>7.2f}ms {r['ours_p95_ms']:>7.2f}ms "
            f"{r['ours_accepted_median_ms']:>7.2f}ms "
            f"{r['networkx_requests']:>6} {r['networkx_median_ms']:>7.1f}ms {r['networkx_p95_ms']:>7.1f}ms "
            f"{speedup:>7.1f}x {r['mismatches']:>4}"
        )
    print()
    for r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        print(f"{r['nodes']} nodes: outcomes: {outcomes}; generation {r['generate_s']} s")
    print("acc med: ours, median over accepted requests only")
    print("speed-up: networkx median / ours median on the same requests; mism: disagreements with networkx")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
