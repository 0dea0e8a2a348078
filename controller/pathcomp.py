"""Key-aware path computation for trusted-relay QKD: pure, deterministic, no I/O.

What it does (issue 3, build item 2):

* **Span assessment** (:func:`classify_span`). The GEANT planning class of every span (SYSTEM.md section 4):
  GREEN (O-band loss < 20 dB: the quantum channel shares a lit fibre through DWDM, so the O band is chosen),
  ORANGE (only the C-band loss is < 20 dB: a dark fibre in the C band), RED (needs a relay; never usable).
  A green span without the O band falls back to the C band; an orange span without the C band is unusable.
  The predicted key rate is the decoy-state BB84 rate of :func:`qsdn.physics.bb84.secret_key_rate_bps`
  at the chosen band's loss with the span's device parameters.
* **Request graph.** A hop is usable for a request when its span is usable and its *available* rate
  (predicted minus what existing reservations hold: the trusted-relay rate of SYSTEM.md section 4 is the
  minimum over hops of what each hop has left) is at least the requested rate: admission control.
  Interior nodes (relays) must be trusted, in ``request.trusted`` when given, and not in ``request.avoid``.
  Parallel spans between two nodes collapse to the cheapest one.
* **Cost and ranking.** Paths are ranked by the key ``(hop count, penalty, node ids)``:

  1. *hop count*: the number of hops, i.e. trusted relays + 1. Every relay sees the key in the clear and
     spends key on two links, so fewer relays always wins;
  2. *penalty*: the sum over hops of ``ceil(1e9 / max(available_bps, 1))``, an inverse-capacity metric in the
     manner of OSPF's reference bandwidth: among paths with as many relays, prefer hops with more key rate
     left, and steer away from nearly exhausted ones;
  3. the sequence of node ids, lexicographically: the stable tie-break, so that the same request on the
     same topology gives the same paths whatever the order in which nodes and spans were inserted.

  Internally the first two are one integer ``hops * W + penalty`` with ``W`` larger than any path's
  penalty, so every search is an ordinary shortest-path search on positive integer edge costs.
* **k shortest paths**: Yen's algorithm (J. Y. Yen, "Finding the k shortest loopless paths in a network",
  Management Science 17, 712, 1971) with Lawler's refinement (spur only from the deviation node onwards:
  E. L. Lawler, Management Science 18, 401, 1972). Every spur search is A* towards the destination whose
  heuristic is the exact distance to the destination in the unrestricted request graph. Removing nodes
  and edges only lengthens distances, so that heuristic stays admissible and consistent; searches stop
  at their bound (the max-hops limit, or the k-th candidate already known). Equal-cost ties are broken
  on the node-id sequence exactly (heap key ``(f, g, node)`` makes every tied predecessor settle first).
  The exact distances come lazily from a reverse search from the destination that is resumed whenever
  a distance it has not settled yet is needed (Reverse Resumable A*, D. Silver, "Cooperative
  pathfinding", AIIDE 2005), itself an A* towards the source with the landmark lower bound of ALT
  (A. V. Goldberg, C. Harrelson, SODA 2005) computed once per topology on the base graph (no
  reservation costs less), so it settles a corridor around the route rather than a ball around the
  destination. Neighbours of the source that reach the destination only through the source again
  (found in the topology's block-cut tree) are dropped, so no search has to exhaust their branch.
* **Node-disjoint backup**: first, two necessary conditions that need no search: neither end may have a
  single usable neighbour, and no articulation point of the topology's usable graph may separate the
  ends (block-cut tree from networkx's biconnected components, once per topology). Then the best path
  that avoids the primary's relays (one A* search); if the primary is a "trap" (no such path), the
  minimum-total-cost disjoint pair by Suurballe's algorithm on the node-split graph (J. W. Suurballe,
  "Disjoint paths in a network", Networks 4, 125, 1974; node splitting as in R. Bhandari, "Survivable
  networks", Kluwer 1999) with the reverse distances as potentials, so both searches are Dijkstra on
  non-negative reduced costs. The pair is then the primary and the backup. Without ``max_hops`` this
  finds a disjoint pair whenever one exists (Menger); when no pair exists, the rejection names a node
  every route must cross (or the direct span that is the only route). With ``max_hops``, finding two
  disjoint paths that both respect a length bound is NP-hard (C.-L. Li, S. T. McCormick, D. Simchi-Levi,
  Discrete Appl. Math. 26, 105, 1990); we then also try each of the k candidates as the primary, and
  report ``disjoint-backup`` with ``reason: max-hops`` if none of these fits.
* **Rejections** (:class:`PathRejectedError`, tag ``resource-denied``; ``invalid-value`` for a malformed
  request) say which constraint failed and where, found by adding the constraints one at a time to a
  breadth-first search: no fibre route at all (``no-path``), every route crosses an unusable (``red-span``,
  ``unusable-span``) span, an avoided node (``avoid``), a relay that may not relay (``untrusted-relay``),
  or a span without enough key rate left (``rate``); then ``max-hops`` and ``disjoint-backup``. The span
  or node named is the first blocker on the shortest route that satisfies the constraints before it.

Caching. Per-topology work (span assessments, adjacency, landmarks, block-cut tree) is done once per
:class:`Topology` snapshot: keep the snapshot while the topology does not change. A request's hop
lists are shared with the base graph or with the last request for the same rate, and rebuilt, when a
search first reaches them, only around the spans whose reservations differ. Reservations are summed
with ``math.fsum``, so their order never changes an answer.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import sub
from types import MappingProxyType

import networkx as nx

from controller.model import Reservation, Span, Topology
from qsdn.errors import QsdnError
from qsdn.physics.bb84 import DeviceParams, secret_key_rate_bps
from qsdn.physics.loss import Band, SpanClass, fibre_loss_db, planning_class

__all__ = [
    "MAX_K",
    "PENALTY_SCALE_BPS",
    "HopInfo",
    "Path",
    "PathComputation",
    "PathComputer",
    "PathRejectedError",
    "PathRequest",
    "SpanAssessment",
    "check_ends",
    "check_k",
    "classify_span",
    "compute_paths",
    "invalid_request",
]

#: Numerator of the per-hop penalty ``ceil(PENALTY_SCALE_BPS / max(available_bps, 1))``.
PENALTY_SCALE_BPS = 1e9
#: Largest per-hop penalty (a hop with 1 bit/s or less available).
_MAX_PENALTY = math.ceil(PENALTY_SCALE_BPS)
#: Largest number of candidate paths a request may ask for.
MAX_K = 64

_INF = math.inf
#: Landmarks of the ALT lower bound, and the topology size from which they are worth building.
_LANDMARKS = 8
_LANDMARK_MIN_NODES = 64
#: Request graphs kept per topology for reuse by later requests (one per requested rate).
_GRAPH_CACHE = 4


# ------------------------------------------------------------------------------------ span assessment


@dataclass(frozen=True, slots=True)
class SpanAssessment:
    """What the physics says about one span.

    Attributes:
        span_id: the span.
        span_class: GEANT planning class (from the loss, whatever bands the fibre offers).
        loss_db_by_band: loss in both bands (dB).
        band: the band the quantum channel would use, ``None`` if the span is unusable.
        predicted_rate_bps: decoy-state BB84 key rate in that band (0 when unusable).
        usable: whether the span can carry a QKD link without a relay.
        reason: why it cannot (``None`` when usable).
    """

    span_id: str
    span_class: SpanClass
    loss_db_by_band: Mapping[Band, float]
    band: Band | None
    predicted_rate_bps: float
    usable: bool
    reason: str | None = None


@functools.lru_cache(maxsize=1 << 16)
def _assess(
    length_km: float, extra_loss_db: float, bands: tuple[str, ...], device: DeviceParams
) -> tuple[SpanClass, Mapping[Band, float], Band | None, float, str | None]:
    losses = MappingProxyType({b: fibre_loss_db(length_km, b, extra_loss_db) for b in (Band.O, Band.C)})
    span_class = planning_class(length_km, extra_loss_db)
    band: Band | None = None
    reason: str | None = None
    if span_class is SpanClass.RED:
        reason = f"red: {losses[Band.C]:.2f} dB in the C band, needs a relay node or a repeater"
    elif span_class is SpanClass.GREEN and Band.O.value in bands:
        band = Band.O
    elif Band.C.value in bands:
        band = Band.C
    else:
        reason = f"orange: needs the C band (dark fibre), the fibre offers only {', '.join(bands)}"
    rate = secret_key_rate_bps(losses[band], device) if band is not None else 0.0
    if band is not None and rate <= 0.0:
        reason = f"no key at {losses[band]:.2f} dB in the {band.value} band with this device"
        band, rate = None, 0.0
    return span_class, losses, band, rate, reason


def classify_span(span: Span) -> SpanAssessment:
    """Planning class, band, and predicted key rate of ``span`` (cached on its physical parameters)."""
    span_class, losses, band, rate, reason = _assess(
        span.length_km, span.extra_loss_db, span.bands, span.device
    )
    return SpanAssessment(
        span_id=span.span_id,
        span_class=span_class,
        loss_db_by_band=losses,
        band=band,
        predicted_rate_bps=rate,
        usable=band is not None,
        reason=reason,
    )


# ------------------------------------------------------------------------------- request and result


class PathRejectedError(QsdnError):
    """No path satisfies the request. ``info["constraint"]`` names the constraint that failed."""

    tag = "resource-denied"

    @property
    def constraint(self) -> str:
        return self.first.info.get("constraint", "")


def invalid_request(message: str, field_name: str, **info: str) -> PathRejectedError:
    """The error for a request field ``field_name`` that breaks a rule (``invalid-value``)."""
    return PathRejectedError(
        message,
        tag="invalid-value",
        path=field_name,
        info={"constraint": "request", "field": field_name, **info},
    )


def check_ends(src: object, dst: object) -> None:
    """Reject a request whose ``src`` or ``dst`` is not a node id, or whose ends are the same node."""
    for name, value in (("src", src), ("dst", dst)):
        if not isinstance(value, str) or not value:
            raise invalid_request(f"{name} must be a node id, got {value!r}", name)
    if src == dst:
        raise invalid_request(f"src and dst are the same node {src}", "dst", node=str(dst))


def check_k(k: object, most: int) -> None:
    """Reject a number of candidate paths ``k`` that is not an integer in [1, ``most``]."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
        raise invalid_request(f"k must be an integer in [1, {most}], got {k!r}", "k")


@dataclass(frozen=True, slots=True)
class PathRequest:
    """A request for a trusted-relay path between the nodes ``src`` and ``dst``.

    Attributes:
        src, dst: node ids of the two ends.
        rate_bps: key rate the session needs on every hop (> 0).
        max_hops: longest acceptable path in hops (``None``: no limit).
        k: number of candidate paths to compute (the best plus up to ``k - 1`` alternatives).
        disjoint_backup: whether a node-disjoint backup path is required.
        avoid: nodes the path must not cross.
        trusted: if given, the only nodes allowed to act as relays (each must also be ``Node.trusted``).
    """

    src: str
    dst: str
    rate_bps: float
    max_hops: int | None = None
    k: int = 4
    disjoint_backup: bool = False
    avoid: frozenset[str] = frozenset()
    trusted: frozenset[str] | None = None

    def __post_init__(self) -> None:
        check_ends(self.src, self.dst)
        rate = self.rate_bps
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not (math.isfinite(rate) and rate > 0)
        ):
            raise invalid_request(f"rate_bps must be a finite number > 0, got {rate!r}", "rate_bps")
        if self.max_hops is not None and (
            isinstance(self.max_hops, bool) or not isinstance(self.max_hops, int) or self.max_hops < 1
        ):
            raise invalid_request(f"max_hops must be an integer >= 1, got {self.max_hops!r}", "max_hops")
        check_k(self.k, MAX_K)
        object.__setattr__(self, "avoid", frozenset(self.avoid))
        if self.trusted is not None:
            object.__setattr__(self, "trusted", frozenset(self.trusted))


@dataclass(frozen=True, slots=True)
class HopInfo:
    """One hop of a path, oriented along the path (``a`` before ``b``). Rates in bit/s."""

    span_id: str
    a: str
    b: str
    span_class: SpanClass
    band: Band
    predicted_bps: float
    reserved_bps: float
    available_bps: float


@dataclass(frozen=True, slots=True)
class Path:
    """A trusted-relay path.

    Attributes:
        nodes: node ids from ``src`` to ``dst``.
        spans: span ids, one per hop.
        hops: per-hop details.
        bottleneck_bps: end-to-end key rate available to the session: the minimum over hops of the
            available rate (SYSTEM.md section 4, trusted-relay path).
        relays: the interior nodes, each a trusted relay.
        penalty: the sum of per-hop penalties ``ceil(1e9 / max(available_bps, 1))``; the ranking key is
            ``(len(hops), penalty, nodes)``.
    """

    nodes: tuple[str, ...]
    spans: tuple[str, ...]
    hops: tuple[HopInfo, ...]
    bottleneck_bps: float
    relays: tuple[str, ...]
    penalty: int

    @property
    def hop_count(self) -> int:
        return len(self.spans)

    @property
    def rank_key(self) -> tuple[int, int, tuple[str, ...]]:
        """The ranking key: fewer hops, then lower penalty, then node ids."""
        return (len(self.spans), self.penalty, self.nodes)


@dataclass(frozen=True, slots=True)
class PathComputation:
    """The answer to a :class:`PathRequest`: the best path, ranked alternatives, and the backup if asked."""

    best: Path
    alternatives: list[Path] = field(default_factory=list)
    backup: Path | None = None


# ------------------------------------------------------------------------------ per-topology index


def _penalty(available_bps: float) -> int:
    return math.ceil(PENALTY_SCALE_BPS / max(available_bps, 1.0))


class _Index:
    """Integer-indexed view of one topology, sorted by id (the source of every deterministic order)."""

    __slots__ = (
        "__weakref__",
        "adj_all",
        "adj_base",
        "adj_usable",
        "assessments",
        "base_cost",
        "by_min_rate",
        "graphs",
        "hop_weight",
        "ids",
        "landmarks",
        "lock",
        "pos",
        "rates",
        "sorted_min_rate",
        "span_ends",
        "span_ids",
        "span_pos",
        "topology",
        "tree",
        "trusted",
    )

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.ids: list[str] = sorted(topology.nodes)
        self.pos: dict[str, int] = {nid: i for i, nid in enumerate(self.ids)}
        self.trusted: list[bool] = [topology.nodes[nid].trusted for nid in self.ids]
        self.span_ids: list[str] = sorted(topology.spans)
        self.span_pos: dict[str, int] = {sid: i for i, sid in enumerate(self.span_ids)}
        self.assessments: list[SpanAssessment] = [classify_span(topology.spans[sid]) for sid in self.span_ids]
        self.rates: list[float] = [a.predicted_rate_bps for a in self.assessments]
        n = len(self.ids)
        # A path has at most n - 1 hops, each with a penalty <= _MAX_PENALTY: the hop count dominates.
        self.hop_weight = _MAX_PENALTY * n + 1
        adj_all: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        adj_usable: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.span_ends: list[tuple[int, int]] = []
        for s, sid in enumerate(self.span_ids):
            span = topology.spans[sid]
            a, b = self.pos[span.a], self.pos[span.b]
            self.span_ends.append((a, b))
            adj_all[a].append((b, s))
            adj_all[b].append((a, s))
            if self.assessments[s].usable:
                adj_usable[a].append((b, s))
                adj_usable[b].append((a, s))
        for lst in adj_all:
            lst.sort()
        for lst in adj_usable:
            lst.sort()
        self.adj_all = adj_all
        self.adj_usable = adj_usable
        # The request graph of a request that no reservation and no rate limit touches.
        self.base_cost: list[int] = [self.hop_weight + _penalty(r) for r in self.rates]
        self.adj_base: list[list[_Hop]] = [
            _collapse(hops, self.base_cost, self.rates, {}, 0.0, self.hop_weight) for hops in adj_usable
        ]
        # Nodes by the least rate of their usable spans: a request for more must filter their hops.
        min_rate = [min((self.rates[s] for _, s in hops), default=_INF) for hops in adj_usable]
        self.by_min_rate: list[int] = sorted(range(n), key=lambda v: (min_rate[v], v))
        self.sorted_min_rate: list[float] = [min_rate[v] for v in self.by_min_rate]
        self.landmarks: list[tuple[int, ...]] = _landmarks(
            self.adj_base, _LANDMARKS if n >= _LANDMARK_MIN_NODES else 0
        )
        self.tree = _BlockCutTree(self.adj_base)
        # Request graphs of recent requests, by rate: (reservations, adjacency), reused incrementally.
        self.graphs: dict[float, tuple[dict[int, float], list[list[_Hop] | None]]] = {}
        self.lock = threading.Lock()


# A hop in a request graph: (neighbour, cost, span index).
_Hop = tuple[int, int, int]


def _collapse(
    hops: list[tuple[int, int]],
    base_cost: list[int],
    rates: list[float],
    reserved: Mapping[int, float],
    rate: float,
    hop_weight: int,
) -> list[_Hop]:
    """Usable hops (sorted by neighbour, span) with at least ``rate`` left, parallel spans collapsed."""
    out: list[_Hop] = []
    last = -1
    for v, s in hops:
        if s in reserved:
            avail = rates[s] - reserved[s]
            if avail < rate:
                continue
            cost = hop_weight + _penalty(avail)
        elif rates[s] < rate:
            continue
        else:
            cost = base_cost[s]
        if v == last:
            if cost < out[-1][1]:
                out[-1] = (v, cost, s)
            continue
        out.append((v, cost, s))
        last = v
    return out


def _dijkstra(adj: list[list[_Hop]], source: int) -> list[float]:
    dist: list[float] = [_INF] * len(adj)
    dist[source] = 0
    heap = [(0, source)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist[u]:
            continue
        for v, c, _ in adj[u]:
            if d + c < dist[v]:
                dist[v] = d + c
                heapq.heappush(heap, (d + c, v))
    return dist


def _landmarks(adj: list[list[_Hop]], count: int) -> list[tuple[int, ...]]:
    """Distances from ``count`` landmarks in the base graph, per node (ALT: A. V. Goldberg, C. Harrelson,
    "Computing the shortest path: A* search meets graph theory", SODA 2005).

    Landmarks are picked farthest-first in the largest component; nodes outside it get zeros, which
    keeps the bound ``max |d(L, a) - d(L, b)|`` consistent (it is then constant on their component).
    Request graphs only remove hops and raise costs, so the bound holds for every request.
    """
    n = len(adj)
    if count == 0 or n == 0:
        return [()] * n
    seen = [False] * n
    best: list[int] = []
    for start in range(n):  # the largest component
        if seen[start]:
            continue
        comp, stack = [start], [start]
        seen[start] = True
        while stack:
            for v, _, _ in adj[stack.pop()]:
                if not seen[v]:
                    seen[v] = True
                    comp.append(v)
                    stack.append(v)
        if len(comp) > len(best):
            best = comp
    if len(best) < 2:
        return [()] * n
    far = _dijkstra(adj, min(best))
    closest = [_INF] * n
    rows: list[list[float]] = []
    landmark = max(best, key=lambda v: (far[v], -v))
    for _ in range(min(count, len(best))):
        dist = _dijkstra(adj, landmark)
        rows.append(dist)
        closest = [min(a, b) for a, b in zip(closest, dist, strict=True)]
        landmark = max(best, key=lambda v: (closest[v], -v))
    zeros = tuple(0 for _ in rows)
    return [tuple(int(r[v]) for r in rows) if r0 != _INF else zeros for v, r0 in enumerate(rows[0])]


class _BlockCutTree:
    """Block-cut tree of the base graph: which neighbours of a node lie in branches it cuts off.

    Used to drop, for a request, the source's neighbours from which the destination cannot be reached
    without passing through the source again (a search would otherwise explore their whole branch to
    learn that). Blocks (biconnected components) and articulation points from networkx, once per topology.
    """

    __slots__ = ("art_node", "articulation", "edge_block", "node_block", "parent", "tin", "tout")

    def __init__(self, adj: list[list[_Hop]]) -> None:
        g = nx.Graph()
        g.add_nodes_from(range(len(adj)))
        g.add_edges_from((u, v) for u, hops in enumerate(adj) for v, _, _ in hops if u < v)
        blocks = sorted(sorted((min(e), max(e)) for e in es) for es in nx.biconnected_component_edges(g))
        self.articulation: dict[int, int] = {}  # node -> tree id (after the blocks' ids)
        for v in sorted(nx.articulation_points(g)):
            self.articulation[v] = len(blocks) + len(self.articulation)
        self.art_node = {t: v for v, t in self.articulation.items()}
        size = len(blocks) + len(self.articulation)
        tree: list[list[int]] = [[] for _ in range(size)]
        self.edge_block: dict[tuple[int, int], int] = {}
        self.node_block: dict[int, int] = {}
        for b, edges in enumerate(blocks):
            members = sorted({v for e in edges for v in e})
            for e in edges:
                self.edge_block[e] = b
            for v in members:
                self.node_block.setdefault(v, b)
                if v in self.articulation:
                    tree[b].append(self.articulation[v])
                    tree[self.articulation[v]].append(b)
        self.parent = [-1] * size
        self.tin = [0] * size
        self.tout = [0] * size
        clock = 0
        for root in range(size):
            if self.tin[root]:
                continue
            clock += 1
            self.tin[root] = clock
            stack = [(root, iter(tree[root]))]
            while stack:
                x, children = stack[-1]
                for y in children:
                    if y != self.parent[x] and not self.tin[y]:
                        self.parent[y] = x
                        clock += 1
                        self.tin[y] = clock
                        stack.append((y, iter(tree[y])))
                        break
                else:
                    clock += 1
                    self.tout[x] = clock
                    stack.pop()

    def _ancestor(self, x: int, y: int) -> bool:
        return self.tin[x] <= self.tin[y] and self.tout[y] <= self.tout[x]

    def _tree_node(self, v: int) -> int | None:
        return self.articulation.get(v, self.node_block.get(v))

    def separator(self, src: int, dst: int) -> int | None:
        """An articulation point on every src-dst route (the one nearest dst), if there is one."""
        x, y = self._tree_node(src), self._tree_node(dst)
        if x is None or y is None:
            return None
        up: list[int] = []
        while not self._ancestor(x, y):
            up.append(x)
            x = self.parent[x]
            if x < 0:  # different components
                return None
        down: list[int] = []
        while y != x:
            down.append(y)
            y = self.parent[y]
        ends = (self.articulation.get(src), self.articulation.get(dst))
        for t in itertools.chain(down, [x], reversed(up)):  # from dst's end towards src's
            if t in self.art_node and t not in ends:
                return self.art_node[t]
        return None

    def cut_off(self, src: int, dst: int, neighbours: Iterable[int]) -> set[int]:
        """The neighbours of ``src`` whose branch (through ``src``) does not contain ``dst``."""
        a = self.articulation.get(src)
        if a is None:
            return set()
        t_dst = self.articulation.get(dst, self.node_block.get(dst))
        if t_dst is None:
            return set()
        out = set()
        for v in neighbours:
            b = self.edge_block[(min(src, v), max(src, v))]
            inside = self._ancestor(b, t_dst) if self.parent[b] == a else not self._ancestor(a, t_dst)
            if not inside:
                out.add(v)
        return out


_INDEXES: weakref.WeakKeyDictionary[Topology, _Index] = weakref.WeakKeyDictionary()


def _index_of(topology: Topology) -> _Index:
    index = _INDEXES.get(topology)
    if index is None:
        index = _INDEXES[topology] = _Index(topology)
    return index


class PathComputer:
    """Path computation over one topology snapshot; the per-topology work is done once, here."""

    def __init__(self, topology: Topology) -> None:
        self._index = _index_of(topology)
        self.topology = topology

    @property
    def assessments(self) -> Mapping[str, SpanAssessment]:
        """The assessment of every span, by span id."""
        return {a.span_id: a for a in self._index.assessments}

    def compute(self, reservations: Iterable[Reservation], request: PathRequest) -> PathComputation:
        """Best path, alternatives and (if asked) a node-disjoint backup, or :class:`PathRejectedError`."""
        return _Search(self._index, reservations, request).run()


def compute_paths(
    topology: Topology, reservations: Iterable[Reservation], request: PathRequest
) -> PathComputation:
    """Compute paths for ``request`` on ``topology`` given the rates already ``reservations`` hold.

    Reservations on spans the topology does not (or no longer) have are ignored. See the module
    docstring for the rules, the ranking and the algorithms.
    """
    return _Search(_index_of(topology), reservations, request).run()


def _fmt(x: float) -> str:
    """A rate or a loss for ``info``: plain decimal, at most three decimals."""
    text = f"{x:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


# --------------------------------------------------------------------------------------- the search

# A path found: (cost, nodes, spans).
_Found = tuple[int, tuple[int, ...], tuple[int, ...]]


class _Search:
    """One request on one index. Node and span references are integer positions in the index."""

    def __init__(self, index: _Index, reservations: Iterable[Reservation], request: PathRequest) -> None:
        self.index = index
        self.request = request
        topo = index.topology
        for name in ("src", "dst"):
            nid = getattr(request, name)
            if nid not in topo.nodes:
                raise invalid_request(f"{name} is unknown node {nid!r}", name, node=nid)
        for name, group in (("avoid", request.avoid), ("trusted", request.trusted or frozenset())):
            for nid in sorted(group):
                if nid not in topo.nodes:
                    raise invalid_request(f"{name} names unknown node {nid!r}", name, node=nid)
        for name in ("src", "dst"):
            nid = getattr(request, name)
            if nid in request.avoid:
                raise invalid_request(
                    f"{name} {topo.node_label(nid)} ({nid}) is also in avoid", "avoid", node=nid
                )
        self.src = index.pos[request.src]
        self.dst = index.pos[request.dst]
        self.rate = float(request.rate_bps)
        held: dict[int, list[float]] = {}
        for r in reservations:
            s = index.span_pos.get(r.span_id)
            if s is not None and r.rate_bps > 0.0:
                held.setdefault(s, []).append(r.rate_bps)
        # fsum: the same total whatever the order of the reservations (so the same answer).
        reserved = {s: rates[0] if len(rates) == 1 else math.fsum(rates) for s, rates in held.items()}
        self.reserved = reserved
        n = len(index.ids)
        self.hop_weight = index.hop_weight
        self.limit: float = _INF if request.max_hops is None else (request.max_hops + 1) * self.hop_weight - 1
        # May a path enter node v? Yes for dst; for others only as an allowed relay; never src.
        avoid = {index.pos[nid] for nid in request.avoid}
        allowed = None if request.trusted is None else {index.pos[nid] for nid in request.trusted}
        ok = list(index.trusted)
        for v in avoid:
            ok[v] = False
        if allowed is not None:
            ok = [t and i in allowed for i, t in enumerate(ok)]
        ok[self.src] = False
        ok[self.dst] = True
        self.enter_ok = ok
        self.avoid = avoid
        self.allowed = allowed
        # The request graph: hop lists shared with the base graph or with an earlier request for the
        # same rate, rebuilt (lazily, None) wherever the reservations or the rate make them differ.
        with index.lock:
            cached = index.graphs.get(self.rate)
        if cached is None:
            adj: list[list[_Hop] | None] = list(index.adj_base)
            changed: Iterable[int] = reserved
            for v in index.by_min_rate[: bisect.bisect_left(index.sorted_min_rate, self.rate)]:
                adj[v] = None
        else:
            before, shared = cached
            adj = list(shared)
            changed = {s for s, _ in before.items() ^ reserved.items()} if before != reserved else ()
        for s in changed:
            a, b = index.span_ends[s]
            adj[a] = adj[b] = None
        self.adj = adj
        # The source's hops, without those into branches that only the source joins to dst.
        hops = self._neighbours(self.src)
        dead = index.tree.cut_off(self.src, self.dst, (v for v, _, _ in hops))
        self.src_hops = [hop for hop in hops if hop[0] not in dead] if dead else hops
        # Resumable reverse A* from dst towards src: exact distance to dst in the request graph, with
        # the landmark bound towards src as its heuristic (pi).
        self.lm = index.landmarks
        self.lm_src = index.landmarks[self.src]
        self.pi: list[int] = [-1] * n
        self.rdist: list[float] = [_INF] * n
        self.rdone: list[bool] = [False] * n
        self.rdist[self.dst] = 0
        self.rheap: list[tuple[int, int, int]] = [(self._pi(self.dst), 0, self.dst)]
        self.banned: list[int] = [0] * n
        self.stamp = 0

    def _pi(self, v: int) -> int:
        p = self.pi[v]
        if p < 0:
            p = self.pi[v] = max(map(abs, map(sub, self.lm_src, self.lm[v])), default=0)
        return p

    def _keep_graph(self) -> None:
        """Offer this request graph to later requests for the same rate (hop lists are never mutated)."""
        graphs = self.index.graphs
        with self.index.lock:
            graphs.pop(self.rate, None)
            graphs[self.rate] = (self.reserved, self.adj)
            while len(graphs) > _GRAPH_CACHE:
                del graphs[next(iter(graphs))]

    # -- request graph ------------------------------------------------------------------------------

    def _build_adj(self, u: int) -> list[_Hop]:
        index = self.index
        out = _collapse(
            index.adj_usable[u], index.base_cost, index.rates, self.reserved, self.rate, self.hop_weight
        )
        self.adj[u] = out
        return out

    def _neighbours(self, u: int) -> list[_Hop]:
        hops = self.adj[u]
        return hops if hops is not None else self._build_adj(u)

    def _hop(self, u: int, v: int) -> _Hop:
        for hop in self._neighbours(u):
            if hop[0] == v:
                return hop
        raise LookupError((u, v))  # pragma: no cover - paths only use hops of the request graph

    def _h(self, v: int) -> float:
        """Exact cost from ``v`` to dst in the request graph (resumes the reverse search as needed)."""
        return self.rdist[v] if self.rdone[v] else self._h_at_most(v, _INF)

    def _h_at_most(self, v: int, limit: float) -> float:
        """The cost from ``v`` to dst if it is at most ``limit``; otherwise some value above ``limit``.

        Every node the reverse search has not settled has ``h(v) + pi(v) >=`` the smallest key in its
        heap, so the search only runs until ``v`` is settled or that bound exceeds ``limit``.
        """
        if self.rdone[v]:
            return self.rdist[v]
        heap, dist, done, ok, adj = self.rheap, self.rdist, self.rdone, self.enter_ok, self.adj
        pi, pv = self.pi, self._pi(v)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            if heap[0][0] - pv > limit:
                return heap[0][0] - pv
            _, d, x = pop(heap)
            if done[x] or d > dist[x]:
                continue
            done[x] = True
            if ok[x]:  # x may be entered (a relay, or dst), so paths may run w -> x -> ... -> dst
                hops = adj[x]
                for w_, c, _ in hops if hops is not None else self._build_adj(x):
                    nd = d + c
                    if nd < dist[w_]:
                        dist[w_] = nd
                        pw = pi[w_]
                        push(heap, (nd + (pw if pw >= 0 else self._pi(w_)), nd, w_))
            if x == v:
                return d
        return _INF

    # -- searches -----------------------------------------------------------------------------------

    def _greedy_best(self) -> _Found | None:
        """The lexicographically smallest minimum-cost path, walked along the exact distances."""
        u = self.src
        total = self._h(u)
        if total == _INF:
            return None
        nodes, spans = [u], []
        while u != self.dst:
            hu = self._h(u)
            for v, c, s in self.src_hops if u == self.src else self._neighbours(u):
                if self.enter_ok[v] and self._h_at_most(v, hu - c) == hu - c:
                    nodes.append(v)
                    spans.append(s)
                    u = v
                    break
            else:  # pragma: no cover - the distances guarantee a tight neighbour
                raise AssertionError("no tight hop")
        return int(total), tuple(nodes), tuple(spans)

    def _astar(
        self, s: int, banned: Iterable[int], excluded_next: Iterable[int], bound: float
    ) -> _Found | None:
        """Best path from ``s`` to dst avoiding ``banned`` nodes and the first hops to ``excluded_next``.

        A* with the exact unrestricted distances as heuristic; paths costing more than ``bound`` are
        pruned. Ties on cost are broken on the node sequence (heap key ``(f, g, node)``).
        """
        self.stamp += 1
        stamp, mark = self.stamp, self.banned
        for v in banned:
            mark[v] = stamp
        excl = frozenset(excluded_next)
        hs = self._h(s)
        if hs > bound:
            return None
        src, dst, ok, rdist, rdone, adj = self.src, self.dst, self.enter_ok, self.rdist, self.rdone, self.adj
        g: dict[int, int] = {s: 0}
        pred: dict[int, int] = {s: -1}
        heap: list[tuple[float, int, int]] = [(hs, 0, s)]
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, gu, u = pop(heap)
            if gu > g[u]:
                continue
            if u == dst:
                nodes = self._chain(pred, u)
                spans = tuple(self._hop(a, b)[2] for a, b in itertools.pairwise(nodes))
                return gu, tuple(nodes), spans
            hops = self.src_hops if u == src else adj[u]
            for v, c, _ in hops if hops is not None else self._build_adj(u):
                if not ok[v] or mark[v] == stamp or (u == s and v in excl):
                    continue
                ng = gu + c
                hv = rdist[v] if rdone[v] else self._h_at_most(v, bound - ng)
                f = ng + hv
                if f > bound:
                    continue
                old = g.get(v)
                if old is None or ng < old:
                    g[v] = ng
                    pred[v] = u
                    push(heap, (f, ng, v))
                elif ng == old and pred[v] != u and self._chain(pred, u) < self._chain(pred, pred[v]):
                    pred[v] = u
        return None

    @staticmethod
    def _chain(pred: Mapping[int, int], u: int) -> list[int]:
        out = []
        while u != -1:
            out.append(u)
            u = pred[u]
        out.reverse()
        return out

    def _k_shortest(self, first: _Found, k: int) -> list[_Found]:
        """Yen's k shortest loopless paths with Lawler's refinement; ``first`` is the shortest."""
        accepted: list[tuple[_Found, int]] = [(first, 0)]
        candidates: list[tuple[int, tuple[int, ...], tuple[int, ...], int]] = []
        seen = {first[1]}
        while len(accepted) < k:
            (_, nodes, spans), dev = accepted[-1]
            prefix = [0]
            for a, b in itertools.pairwise(nodes):
                prefix.append(prefix[-1] + self._hop(a, b)[1])
            for i in range(dev, len(nodes) - 1):
                root = nodes[: i + 1]
                excluded = {p[1][i + 1] for p, _ in accepted if len(p[1]) > i + 1 and p[1][: i + 1] == root}
                bound = self.limit
                need = k - len(accepted)
                if len(candidates) >= need:
                    bound = min(bound, heapq.nsmallest(need, candidates)[-1][0])
                spur = self._astar(nodes[i], root[:-1], excluded, bound - prefix[i])
                if spur is None:
                    continue
                full = root[:-1] + spur[1]
                if full in seen:
                    continue
                seen.add(full)
                heapq.heappush(candidates, (prefix[i] + spur[0], full, spans[:i] + spur[2], i))
            if not candidates:
                break
            c_cost, c_nodes, c_spans, c_dev = heapq.heappop(candidates)
            accepted.append(((c_cost, c_nodes, c_spans), c_dev))
        return [p for p, _ in accepted]

    def _disjoint_from(self, primary: tuple[int, ...]) -> _Found | None:
        """Best path whose relays avoid ``primary``'s relays (and which is not ``primary``)."""
        excluded = (self.dst,) if len(primary) == 2 else ()
        return self._astar(self.src, primary[1:-1], excluded, self.limit)

    def _suurballe(self, primary: tuple[int, ...]) -> tuple[_Found, _Found] | int | None:
        """Minimum-cost node-disjoint pair: Suurballe on the node-split graph, potentials = reverse distances.

        ``primary`` must be a shortest path. Returns the pair, or, if none exists, the node every route
        must cross (by Menger's theorem there is one), or ``None`` if the only route is the direct span.
        States: ``2 v`` is v's in-copy, ``2 v + 1`` its out-copy; ``v_in -> v_out`` is v's capacity.
        """
        src, dst, ok, h = self.src, self.dst, self.enter_ok, self._h
        nxt = dict(itertools.pairwise(primary))
        prv = {b: a for a, b in nxt.items()}
        interior = set(primary[1:-1])
        start, target = 2 * src + 1, 2 * dst
        dist: dict[int, float] = {start: 0}
        pred: dict[int, int] = {start: -1}
        heap: list[tuple[float, int]] = [(0, start)]
        done: set[int] = set()

        def relax(x: int, y: int, d: float) -> None:
            if d < dist.get(y, _INF):
                dist[y] = d
                pred[y] = x
                heapq.heappush(heap, (d, y))

        while heap:
            d, x = heapq.heappop(heap)
            if x in done:
                continue
            done.add(x)
            if x == target:
                break
            v, out = divmod(x, 2)
            if out:
                hv = h(v)
                for w_, c, _ in self.src_hops if v == src else self._neighbours(v):
                    if ok[w_] and nxt.get(v) != w_:
                        hw = h(w_)
                        if hw != _INF:
                            relax(x, 2 * w_, d + c - hv + hw)
                if v in interior:  # reverse of the saturated v_in -> v_out
                    relax(x, 2 * v, d)
            else:
                if v not in interior and ok[v] and v != dst:
                    relax(x, 2 * v + 1, d)
                if v in prv:  # reverse of the saturated prv(v)_out -> v_in
                    relax(x, 2 * prv[v] + 1, d)
        if target not in done:
            states = [start]
            for v in primary[1:-1]:
                states += [2 * v, 2 * v + 1]
            states.append(target)
            # The primary crosses the cut once, on the arc leaving its last reachable state.
            j = max(i for i, x in enumerate(states) if x in done)
            # An internal arc v_in -> v_out: v is the cut node. The first hop src -> v1: v1 is, unless dst.
            v = primary[1] if j == 0 else states[j] // 2
            return None if v == dst else v
        # The second path's arcs at node level; a reversed primary arc cancels that primary arc.
        arcs = set(itertools.pairwise(primary))
        x = target
        while pred[x] != -1:
            p = pred[x]
            (a, a_out), (b, b_out) = divmod(p, 2), divmod(x, 2)
            if a_out and not b_out and a != b:
                arcs.add((a, b))
            elif not a_out and b_out and a != b:
                arcs.discard((b, a))
            x = p
        succ: dict[int, list[int]] = {}
        for a, b in sorted(arcs):
            succ.setdefault(a, []).append(b)
        pair: list[_Found] = []
        for first in succ[src]:
            nodes = [src, first]
            while nodes[-1] != dst:
                nodes.append(succ[nodes[-1]][0])
            spans = tuple(self._hop(a, b)[2] for a, b in itertools.pairwise(nodes))
            cost = sum(self._hop(a, b)[1] for a, b in itertools.pairwise(nodes))
            pair.append((cost, tuple(nodes), spans))
        pair.sort()
        return pair[0], pair[1]

    # -- result -------------------------------------------------------------------------------------

    def _path(self, found: _Found) -> Path:
        index, ids, reserved = self.index, self.index.ids, self.reserved
        _, nodes, spans = found
        hops = []
        penalty = 0
        for (a, b), s in zip(itertools.pairwise(nodes), spans, strict=True):
            assessment = index.assessments[s]
            held = reserved.get(s, 0.0)
            predicted = index.rates[s]
            penalty += self._hop(a, b)[1] - self.hop_weight
            assert assessment.band is not None
            hops.append(
                HopInfo(
                    span_id=index.span_ids[s],
                    a=ids[a],
                    b=ids[b],
                    span_class=assessment.span_class,
                    band=assessment.band,
                    predicted_bps=predicted,
                    reserved_bps=held,
                    available_bps=max(0.0, predicted - held),
                )
            )
        return Path(
            nodes=tuple(ids[v] for v in nodes),
            spans=tuple(index.span_ids[s] for s in spans),
            hops=tuple(hops),
            bottleneck_bps=min(hop.available_bps for hop in hops),
            relays=tuple(ids[v] for v in nodes[1:-1]),
            penalty=penalty,
        )

    def run(self) -> PathComputation:
        try:
            return self._run()
        finally:
            self._keep_graph()

    def _run(self) -> PathComputation:
        first = self._greedy_best()
        if first is None:
            raise self._diagnose()
        if first[0] > self.limit:
            raise self._reject_hops(len(first[1]) - 1)
        if self.request.disjoint_backup:
            # Cheap necessary conditions first: a node on every route, seen from the structure alone,
            # rejects at once (the exact searches below would have to exhaust the graph to see it).
            cut = self._structural_cut()
            if cut != -1:
                raise self._no_pair(first, cut)
        ranked = self._k_shortest(first, self.request.k)
        best, backup = first, None
        if self.request.disjoint_backup:
            best, backup = self._backup(ranked)
        alternatives = [self._path(p) for p in ranked if p[1] != best[1]][: self.request.k - 1]
        return PathComputation(
            best=self._path(best),
            alternatives=alternatives,
            backup=None if backup is None else self._path(backup),
        )

    def _structural_cut(self) -> int | None:
        """A node on every route (None: the direct span is the only route; -1: none found this way).

        Either end with a single usable neighbour, or an articulation point of the topology's usable
        graph between the ends (block-cut tree).
        """
        src, dst, ok = self.src, self.dst, self.enter_ok
        exits = [v for v, _, _ in self.src_hops if ok[v]]
        if len(exits) == 1:
            return None if exits[0] == dst else exits[0]
        entries = [w for w, _, _ in self._neighbours(dst) if ok[w] or w == src]
        if len(entries) == 1:
            return None if entries[0] == src else entries[0]
        cut = self.index.tree.separator(src, dst)
        return -1 if cut is None else cut

    def _backup(self, ranked: list[_Found]) -> tuple[_Found, _Found]:
        best = ranked[0]
        backup = self._disjoint_from(best[1])
        if backup is not None:
            return best, backup
        pair = self._suurballe(best[1])
        if not isinstance(pair, tuple):
            raise self._no_pair(best, pair)
        if pair[1][0] <= self.limit:
            return pair
        for candidate in ranked[1:]:  # max_hops: try the other candidates as primary
            backup = self._disjoint_from(candidate[1])
            if backup is not None:
                return candidate, backup
        raise self._reject(
            f"no node-disjoint backup within {self.request.max_hops} hops for "
            f"{self._label(self.src)} -> {self._label(self.dst)}: the shortest disjoint pair needs "
            f"{len(pair[1][1]) - 1} hops (searched the {len(ranked)} best primaries)",
            constraint="disjoint-backup",
            reason="max-hops",
            max_hops=str(self.request.max_hops),
            pair_hops=str(len(pair[1][1]) - 1),
        )

    def _no_pair(self, best: _Found, cut: int | None) -> PathRejectedError:
        pair = f"{self._label(self.src)} -> {self._label(self.dst)}"
        if cut is None:
            span = self.index.span_ids[best[2][0]]
            return self._reject(
                f"no node-disjoint backup for {pair}: the direct span {span} is the only usable route",
                constraint="disjoint-backup",
                span=span,
            )
        return self._reject(
            f"no node-disjoint backup for {pair}: every usable route passes through node "
            f"{self._label(cut)} ({self.index.ids[cut]})",
            constraint="disjoint-backup",
            node=self.index.ids[cut],
        )

    # -- rejections ---------------------------------------------------------------------------------

    def _label(self, v: int) -> str:
        return self.index.topology.node_label(self.index.ids[v])

    def _reject(self, message: str, **info: str) -> PathRejectedError:
        return PathRejectedError(message, info=info)

    def _reject_hops(self, min_hops: int) -> PathRejectedError:
        return self._reject(
            f"no path from {self._label(self.src)} to {self._label(self.dst)} within "
            f"{self.request.max_hops} hops: the shortest usable path has {min_hops}",
            constraint="max-hops",
            max_hops=str(self.request.max_hops),
            min_hops=str(min_hops),
        )

    def _bfs(self, span_ok: Callable[[int], bool], node_ok: Callable[[int], bool]) -> list[int] | None:
        """Lexicographically smallest fewest-hop route (node list) or ``None``.

        A hop exists where some span between its ends passes ``span_ok``; ``node_ok`` applies to relays.
        """
        index, src, dst = self.index, self.src, self.dst
        dist = {dst: 0}
        queue = deque([dst])
        while queue:
            x = queue.popleft()
            if x != dst and (x == src or not node_ok(x)):
                continue
            for w_, s in index.adj_all[x]:
                if w_ not in dist and span_ok(s):
                    dist[w_] = dist[x] + 1
                    queue.append(w_)
        if src not in dist:
            return None
        route = [src]
        u = src
        while u != dst:
            u = next(
                v
                for v, s in index.adj_all[u]
                if dist.get(v) == dist[u] - 1 and span_ok(s) and (v == dst or node_ok(v))
            )
            route.append(u)
        return route

    def _between(self, u: int, v: int) -> list[int]:
        return [s for w_, s in self.index.adj_all[u] if w_ == v]

    def _diagnose(self) -> PathRejectedError:
        """Why there is no path at all: add the constraints one at a time and name the first blocker."""
        index, ids = self.index, self.index.ids
        pair = f"{self._label(self.src)} to {self._label(self.dst)}"
        usable = [a.usable for a in index.assessments]

        def avail(s: int) -> float:
            return index.rates[s] - self.reserved.get(s, 0.0)

        def relay_ok(v: int) -> bool:
            return index.trusted[v] and (self.allowed is None or v in self.allowed)

        stages: list[tuple[Callable[[int], bool], Callable[[int], bool]]] = [
            (lambda s: True, lambda v: True),
            (lambda s: usable[s], lambda v: True),
            (lambda s: usable[s], lambda v: v not in self.avoid),
            (lambda s: usable[s], lambda v: v not in self.avoid and relay_ok(v)),
            (lambda s: usable[s] and avail(s) >= self.rate, lambda v: v not in self.avoid and relay_ok(v)),
        ]
        previous: list[int] = []
        for stage, (span_ok, node_ok) in enumerate(stages):
            route = self._bfs(span_ok, node_ok)
            if route is not None:
                previous = route
                continue
            hops = list(itertools.pairwise(previous))
            relays = previous[1:-1]
            if stage == 0:
                return self._reject(f"no fibre route connects {pair}", constraint="no-path")
            if stage == 1:
                # The first hop of the shortest fibre route with no usable span; its least lossy span.
                spans = next(
                    ss for ss in (self._between(u, v) for u, v in hops) if not any(usable[s] for s in ss)
                )
                s = min(spans, key=lambda s: (index.assessments[s].loss_db_by_band[Band.C], s))
                a = index.assessments[s]
                sid = index.span_ids[s]
                span = index.topology.spans[sid]
                return self._reject(
                    f"every route from {pair} crosses a span that cannot carry QKD; the shortest crosses "
                    f"span {sid} ({self._label(index.pos[span.a])}-{self._label(index.pos[span.b])}, "
                    f"{_fmt(span.length_km)} km), {a.reason}",
                    constraint="red-span" if a.span_class is SpanClass.RED else "unusable-span",
                    span=sid,
                    span_class=a.span_class.value,
                    loss_db=_fmt(a.loss_db_by_band[Band.C]),
                )
            if stage == 2:
                v = next(v for v in relays if v in self.avoid)
                return self._reject(
                    f"every usable route from {pair} crosses an avoided node; the shortest crosses "
                    f"{self._label(v)} ({ids[v]})",
                    constraint="avoid",
                    node=ids[v],
                )
            if stage == 3:
                v = next(v for v in relays if not relay_ok(v))
                untrusted = not index.trusted[v]
                why = "is not a trusted node" if untrusted else "is not in the request's trusted set"
                return self._reject(
                    f"every usable route from {pair} needs a relay that may not act as one; the shortest "
                    f"needs {self._label(v)} ({ids[v]}), which {why}",
                    constraint="untrusted-relay",
                    node=ids[v],
                    reason="untrusted" if untrusted else "not-in-trusted-set",
                )
            # Rate: on the shortest route that meets every other constraint, the hop with least rate left.
            short = [
                max((s for s in self._between(u, v) if usable[s]), key=lambda s: (avail(s), -s))
                for u, v in hops
            ]
            s = min((s for s in short if avail(s) < self.rate), key=lambda s: (avail(s), s))
            sid = index.span_ids[s]
            left = _fmt(max(0.0, avail(s)))
            return self._reject(
                f"not enough key rate from {pair}: every route is short of rate somewhere; on the shortest, "
                f"span {sid} has {left} bit/s left of {_fmt(index.rates[s])} bit/s predicted, "
                f"{_fmt(self.rate)} bit/s requested",
                constraint="rate",
                span=sid,
                available_bps=left,
                requested_bps=_fmt(self.rate),
                reserved_bps=_fmt(self.reserved.get(s, 0.0)),
            )
        # Unreachable: the request graph is the last stage, and it has no path.
        raise AssertionError("diagnosis found a path the search did not")  # pragma: no cover
