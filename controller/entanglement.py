"""Entanglement path computation and mixed (trusted-relay + repeater) key paths: pure, deterministic.

What it does (issue 6, build items 3 and 5). Every formula is in SYSTEM.md section 4 and implemented,
with its citation, in :mod:`qsdn.physics.entanglement`; this module only composes them.

**Entanglement graph.** Vertices are the nodes with quantum memories
(:class:`~controller.model.MemoryParams`: every repeater, and the endpoints and relays configured with
memories). An *elementary link* joins two of them either through a ``bsm-station`` node between them (two
spans, station in the middle) or over one span with the station co-located at one end. Per attempt it
heralds a pair with the Barrett-Kok probability ``p = eta_A eta_B / 2`` (S. D. Barrett, P. Kok, PRA 71,
060310, 2005), ``eta`` the span transmittance in the C band (``10^(-0.2 L / 10)`` with the span's extra
loss) times the station's detector efficiency, over ``M`` modes ``1 - (1 - p)^M`` with ``M`` the smaller of
the two ends' modes. One attempt lasts ``2 max(L_A, L_B)/c``: the photons reach the station and the herald
comes back to the farther end, which is ``L/c`` with the station in the middle (SYSTEM.md) and ``2L/c`` with
it at one end; never less than ``MIN_ATTEMPT_S``. A fresh pair is a Werner state of fidelity ``F0``, the
smaller of the two ends' ``initial_fidelity``. Between two nodes the best link (shortest expected time
``t/p``) is kept.

**Candidate paths** between two nodes are the ``k`` shortest simple paths (Yen's algorithm, networkx) by
expected link time whose interior nodes are repeaters, in a graph built in sorted id order, so ties break the
same way on every run. Each is evaluated for every swap order and purification plan below, and the best
plan wins (ties: higher fidelity, fewer rounds, then the protocol, swap order and node ids).

**Swap orders** for ``n`` elementary links attempting on one clock (the slowest link's attempt time ``t``;
``a`` the swap success of each repeater, ``A`` their product; ``T`` the shortest coherence time on the path):

* ``asap``: links are generated in parallel, every repeater swaps once it holds both pairs; a failed swap
  restarts the chain. ``E[attempts] = E[max of n geometrics] / A`` (exact with unequal ``p``,
  :func:`~qsdn.physics.entanglement.expected_max_geometric_unequal`; for ``n = 2`` this is the formula of
  E. Shchukin, F. Schmidt, P. van Loock, PRA 100, 032322, 2019). Each pair waits in memory until the last
  link exists: Werner factor :func:`~qsdn.physics.entanglement.wait_all_decay` at the slowest link's ``p``
  (exact for equal links, a pessimistic bound otherwise);
* ``nested`` (only for ``n = 2^k >= 4``, where it can help): segments are doubled level by level; level 1 is
  exact as above, every further level takes ``3/2`` the slower half's time divided by the swap success of the
  repeater joining the halves (the 3/2 rule, N. Sangouard, C. Simon, H. de Riedmatten, N. Gisin, Rev. Mod.
  Phys. 83, 33, 2011, eq. (10); an approximation, exact only as ``p -> 0`` with ``a = 1``); the earlier half
  waits half a level time (``E[max of two] - E[one]``), a Werner factor ``exp(-2 wait / T)``. With ``a < 1``
  it pays ``a^k`` instead of ``a^(n-1)``;
* ``sequential``: links are generated one after another from the first end, each swapped in as soon as it
  exists (a failure restarts): ``E[attempts] = sum 1/p_i / A``; the growing chain's two qubits wait for every
  next link, Werner factor ``prod_{i>=2} E[exp(-2 N_i t / T)]``
  (:func:`~qsdn.physics.entanglement.geometric_storage_decay`). It never beats ``asap`` on rate or fidelity
  with these models; it is evaluated for completeness and reported when it is all that is asked for.

The chain's state is the Klein-group composition of the links' Werner states
(:func:`~qsdn.physics.entanglement.swap_chain`), depolarised by the storage factor. Rate:
``1 / (E[attempts] t)`` pairs/s.

**Purification** (end to end, recurrence): round ``r`` takes two pairs of round ``r - 1``; the first waits
for the second, ``1 / R_(r-1)`` seconds at the two ends (depolarising, the ends' shorter coherence time);
BBPSSW (Bennett et al., PRL 76, 722, 1996) or DEJMPS (Deutsch et al., PRL 77, 2818, 1996) succeeds with
``P_r``, so ``R_r = R_(r-1) P_r / 2``. ``r`` rounds hold ``r + 1`` memories at each end.

**Key.** BBM92 with one-way post-processing and an asymmetric basis choice (so sifting costs nothing
asymptotically: H.-K. Lo, H. F. Chau, M. Ardehali, J. Cryptology 18, 133, 2005): key rate = pair rate times
``1 - h(e_X) - h(e_Z)`` (Shor-Preskill), ``1 - 2 h(Q)`` for Werner pairs, zero below ``F = 0.835``
(:data:`KEY_FIDELITY`).

**Memories** are the shared resource: a session holds two memories at every repeater it crosses and
``1 + rounds`` at each end of a segment (:class:`MemoryReservation`, like the key-rate reservations of
:mod:`controller.pathcomp`). A plan that needs more than a node has left is not admitted; each session's
pairs come from its own memories, so sessions do not share generation rate. BSM stations are not counted
(a station serves any number of links, one attempt at a time per link).

**Mixed key paths** (service ``key``). Key-holding nodes are endpoints and trusted relays (the two ends
always). Between two of them a *segment* is either a trusted-relay QKD hop over one span (the decoy BB84 rate
of :func:`controller.pathcomp.classify_span` minus the span's reservations) or a repeater segment (the best
BBM92 key rate over chains of repeaters and stations joining them; both ends need memories). The end-to-end
key rate is the minimum over segments (the trusted-relay rule of SYSTEM.md section 4); the best path
maximises it with at most ``max_trusted_nodes`` trusted relays (a hop-bounded widest-path search; ties:
fewer relays, then node ids). Every trusted relay of the path and the two ends could see the key; no
repeater or station ever can.

**Rejections** are :class:`~controller.pathcomp.PathRejectedError` (tag ``resource-denied``) whose
``info["constraint"]`` is ``no-path``, ``fidelity``, ``key-fidelity`` (no plan above the BBM92 threshold),
``rate``, ``memory`` or ``max-trusted``, with the best achievable fidelity and rate and the limiting link or
memory named in the message and in ``info`` (``span``, ``node``). Malformed requests are ``invalid-value``.

Not modelled: per-link purification, cut-off times, imperfect swap gates and readout, dephasing memories, a
station's capacity; paths are recomputed per request (no per-topology cache yet).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import networkx as nx

from controller.model import MemoryParams, Node, Reservation, StationParams, Topology
from controller.pathcomp import PathRejectedError, check_ends, check_k, classify_span, invalid_request
from qsdn.physics.entanglement import (
    BellState,
    attempt_time_s,
    bbm92_secret_fraction,
    bbpssw,
    dejmps,
    depolarise,
    expected_max_geometric_unequal,
    geometric_storage_decay,
    heralding_probability,
    multiplexed_probability,
    swap_chain,
    wait_all_decay,
    werner,
)
from qsdn.physics.loss import Band, fibre_loss_db, transmittance

__all__ = [
    "KEY_FIDELITY",
    "MAX_ROUNDS",
    "MIN_ATTEMPT_S",
    "ElementaryLink",
    "EntanglementPlan",
    "EntanglementRequest",
    "MemoryReservation",
    "Purification",
    "Segment",
    "Service",
    "SwapOrder",
    "compute_entanglement_plan",
    "elementary_links",
]

Service = Literal["entanglement", "key"]
SwapOrder = Literal["none", "asap", "sequential", "nested"]
Purification = Literal["none", "bbpssw", "dejmps"]
Technology = Literal["qkd", "entanglement"]

#: Werner fidelity below which BBM92 gives no key: ``1 - 2 h(2 (1 - F) / 3) = 0`` (SYSTEM.md section 4).
KEY_FIDELITY = 0.835
#: Most purification rounds a request may allow.
MAX_ROUNDS = 8
#: Shortest attempt: a memory's emission and reset time bound the attempt rate at 1 MHz.
MIN_ATTEMPT_S = 1e-6
#: Largest number of candidate paths a request may ask for.
MAX_K = 16
#: Attempts below this success probability are grouped into blocks for the storage sum (see ``_decay_asap``).
_COARSE_P = 1e-3

_ORDERS: tuple[SwapOrder, ...] = ("none", "asap", "nested", "sequential")
_PROTOCOLS: tuple[Purification, ...] = ("none", "dejmps", "bbpssw")
_PURIFY: dict[str, Callable[[BellState, BellState], tuple[float, BellState]]] = {
    "bbpssw": bbpssw,
    "dejmps": dejmps,
}


def _fmt(x: float, digits: int = 3) -> str:
    if math.isinf(x):
        return "inf"
    text = f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _sig(x: float) -> str:
    """A rate or probability for messages: four significant digits."""
    return f"{x:.4g}"


# ------------------------------------------------------------------------------------- request, result


@dataclass(frozen=True, slots=True)
class MemoryReservation:
    """Memories a session holds on one node."""

    session_id: str
    node_id: str
    memories: int

    def __post_init__(self) -> None:
        if isinstance(self.memories, bool) or not isinstance(self.memories, int) or self.memories < 0:
            raise invalid_request(
                f"reservation of session {self.session_id} on node {self.node_id}: memories must be an "
                f"integer >= 0, got {self.memories!r}",
                "memories",
            )


@dataclass(frozen=True, slots=True)
class EntanglementRequest:
    """A request for entanglement, or for key over a mixed path, between the nodes ``src`` and ``dst``.

    Attributes:
        src, dst: node ids of the two ends.
        service: ``"entanglement"`` (pairs delivered to the ends, over repeaters only) or ``"key"``
            (BBM92 key, over trusted-relay QKD hops and repeater segments).
        target_fidelity: fidelity the delivered pairs need (``None``: no requirement; for key, the BBM92
            threshold applies anyway).
        min_pair_rate_hz: pairs per second the entanglement service needs (0: any).
        min_key_rate_bps: key rate the key service needs end to end (0: any).
        max_trusted_nodes: key service: most trusted relays the path may cross (``None``: no limit; 0 forces
            one repeater segment between the ends).
        max_rounds: most purification rounds a plan may use (0 to :data:`MAX_ROUNDS`).
        k: candidate paths evaluated per segment.
        avoid: nodes the path must not cross.
    """

    src: str
    dst: str
    service: Service = "entanglement"
    target_fidelity: float | None = None
    min_pair_rate_hz: float = 0.0
    min_key_rate_bps: float = 0.0
    max_trusted_nodes: int | None = None
    max_rounds: int = 3
    k: int = 4
    avoid: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_ends(self.src, self.dst)
        if self.service not in ("entanglement", "key"):
            raise invalid_request(f"service must be 'entanglement' or 'key', got {self.service!r}", "service")
        f = self.target_fidelity
        if f is not None and (isinstance(f, bool) or not isinstance(f, int | float) or not 0.25 <= f <= 1.0):
            raise invalid_request(f"target_fidelity must be within [0.25, 1], got {f!r}", "target_fidelity")
        for name in ("min_pair_rate_hz", "min_key_rate_bps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v >= 0):
                raise invalid_request(f"{name} must be a finite number >= 0, got {v!r}", name)
        m = self.max_trusted_nodes
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise invalid_request(
                f"max_trusted_nodes must be an integer >= 0, got {m!r}", "max_trusted_nodes"
            )
        r = self.max_rounds
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= MAX_ROUNDS:
            raise invalid_request(
                f"max_rounds must be an integer in [0, {MAX_ROUNDS}], got {r!r}", "max_rounds"
            )
        check_k(self.k, MAX_K)
        object.__setattr__(self, "avoid", frozenset(self.avoid))


@dataclass(frozen=True, slots=True)
class ElementaryLink:
    """A heralded elementary link between two memory nodes, oriented ``a`` to ``b``.

    Attributes:
        a, b: the memory nodes at its ends.
        spans: the fibre spans it uses, from ``a`` (two through a station, one otherwise).
        station: the ``bsm-station`` node in the middle, ``None`` when the station is co-located.
        length_km, loss_db: total fibre length and C-band loss between ``a`` and ``b``.
        attempt_s: duration of one attempt.
        p: heralding probability per attempt, multiplexing included.
        fidelity: fidelity ``F0`` of a fresh pair.
    """

    a: str
    b: str
    spans: tuple[str, ...]
    station: str | None
    length_km: float
    loss_db: float
    attempt_s: float
    p: float
    fidelity: float

    @property
    def expected_s(self) -> float:
        """Expected time to herald one pair alone: ``t / p``."""
        return self.attempt_s / self.p

    def reversed(self) -> ElementaryLink:
        return ElementaryLink(
            self.b, self.a, self.spans[::-1], self.station, self.length_km, self.loss_db,
            self.attempt_s, self.p, self.fidelity,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment of a plan, oriented along the path.

    Attributes:
        technology: ``"qkd"`` (a trusted-relay QKD hop, decoy BB84) or ``"entanglement"`` (a repeater
            chain, BBM92 key between its ends).
        nodes: every node it crosses, ends included (repeaters and BSM stations in between).
        spans: its fibre spans in order.
        key_rate_bps: the key rate it offers (QKD: predicted minus reserved; entanglement: pair rate times
            the BBM92 secret fraction).
        links: the elementary links (entanglement).
        repeaters, stations: the repeaters and BSM stations it crosses.
        swap_order: ``none`` for a single link or a QKD hop.
        rounds, protocol: end-to-end purification.
        pair_rate_hz, fidelity: delivered pairs per second and their fidelity (after purification).
        unpurified_fidelity: the chain's fidelity before purification.
        memories: ``(node, memories held)`` for every memory node of the segment.
    """

    technology: Technology
    nodes: tuple[str, ...]
    spans: tuple[str, ...]
    key_rate_bps: float
    links: tuple[ElementaryLink, ...] = ()
    repeaters: tuple[str, ...] = ()
    stations: tuple[str, ...] = ()
    swap_order: SwapOrder = "none"
    rounds: int = 0
    protocol: Purification = "none"
    pair_rate_hz: float = 0.0
    fidelity: float | None = None
    unpurified_fidelity: float | None = None
    memories: tuple[tuple[str, int], ...] = ()

    def reversed(self) -> Segment:
        return Segment(
            technology=self.technology,
            nodes=self.nodes[::-1],
            spans=self.spans[::-1],
            key_rate_bps=self.key_rate_bps,
            links=tuple(link.reversed() for link in reversed(self.links)),
            repeaters=self.repeaters[::-1],
            stations=self.stations[::-1],
            swap_order=self.swap_order,
            rounds=self.rounds,
            protocol=self.protocol,
            pair_rate_hz=self.pair_rate_hz,
            fidelity=self.fidelity,
            unpurified_fidelity=self.unpurified_fidelity,
            memories=self.memories[::-1],
        )


@dataclass(frozen=True, slots=True)
class EntanglementPlan:
    """The answer to an :class:`EntanglementRequest`.

    Attributes:
        service: as requested.
        nodes: every node of the path from ``src`` to ``dst``.
        segments: the segments in path order (one for the entanglement service).
        key_rate_bps: end-to-end key rate, the minimum over segments (for the entanglement service, the
            BBM92 key the pairs would give).
        pair_rate_hz, fidelity: the pairs delivered end to end when the path is one entanglement segment
            (``None`` otherwise: a trusted relay measures, so no pair spans the path).
        key_visible_to: the nodes that could see the key: the two ends and every trusted relay on the path.
        trusted_relays: the trusted relays, in path order.
        memories: memories the plan holds per node (its reservation), sorted by node id.
    """

    service: Service
    src: str
    dst: str
    nodes: tuple[str, ...]
    segments: tuple[Segment, ...]
    key_rate_bps: float
    pair_rate_hz: float | None
    fidelity: float | None
    key_visible_to: tuple[str, ...]
    trusted_relays: tuple[str, ...]
    memories: tuple[tuple[str, int], ...] = field(default=())

    def reservations(self, session_id: str) -> list[MemoryReservation]:
        """The memory reservations a session on this plan holds."""
        return [MemoryReservation(session_id, n, m) for n, m in self.memories]


# --------------------------------------------------------------------------------- entanglement graph


def _link(
    topology: Topology, a: str, b: str, legs: Sequence[tuple[str, float, float]], station: str | None
) -> ElementaryLink | None:
    """The link between memory nodes ``a`` and ``b`` over ``legs`` (span, length, loss) to the station."""
    ma, mb = topology.nodes[a].memory, topology.nodes[b].memory
    assert ma is not None and mb is not None
    st = topology.nodes[station].station if station is not None else None
    det = (st or StationParams()).detector_efficiency
    if len(legs) == 2:
        eta_a = transmittance(legs[0][2]) * det
        eta_b = transmittance(legs[1][2]) * det
        reach_km = max(legs[0][1], legs[1][1])
    else:  # station co-located at one end: one photon crosses the whole span
        eta_a, eta_b = transmittance(legs[0][2]) * det, det
        reach_km = legs[0][1]
    p = multiplexed_probability(heralding_probability(eta_a, eta_b), min(ma.modes, mb.modes))
    if p <= 1e-300:
        return None
    return ElementaryLink(
        a=a,
        b=b,
        spans=tuple(leg[0] for leg in legs),
        station=station,
        length_km=math.fsum(leg[1] for leg in legs),
        loss_db=math.fsum(leg[2] for leg in legs),
        attempt_s=max(attempt_time_s(2.0 * reach_km), MIN_ATTEMPT_S),
        p=p,
        fidelity=min(ma.initial_fidelity, mb.initial_fidelity),
    )


def elementary_links(topology: Topology, avoid: Iterable[str] = ()) -> dict[tuple[str, str], ElementaryLink]:
    """The best elementary link between every pair of memory nodes, keyed ``(a, b)`` with ``a < b``.

    Stations in ``avoid`` are not used. Between the same two nodes the link with the shortest expected time
    ``t/p`` wins, then the higher fidelity, then the smaller span ids.
    """
    avoided = frozenset(avoid)
    nodes = topology.nodes
    best: dict[tuple[str, str], ElementaryLink] = {}

    def offer(link: ElementaryLink | None) -> None:
        if link is None:
            return
        if link.a > link.b:
            link = link.reversed()
        key = (link.a, link.b)
        old = best.get(key)
        if old is None or (link.expected_s, -link.fidelity, link.spans) < (
            old.expected_s,
            -old.fidelity,
            old.spans,
        ):
            best[key] = link

    def leg(span_id: str) -> tuple[str, float, float]:
        s = topology.spans[span_id]
        return span_id, s.length_km, fibre_loss_db(s.length_km, Band.C, s.extra_loss_db)

    for sid in sorted(topology.spans):
        s = topology.spans[sid]
        if nodes[s.a].memory is not None and nodes[s.b].memory is not None:
            offer(_link(topology, s.a, s.b, [leg(sid)], None))
    for station in sorted(n for n, node in nodes.items() if node.role == "bsm-station" and n not in avoided):
        arms = sorted(
            (s.other(station), sid)
            for sid, s in topology.spans.items()
            if station in (s.a, s.b) and nodes[s.other(station)].memory is not None
        )
        for (u, su), (v, sv) in itertools.combinations(arms, 2):
            if u != v:
                offer(_link(topology, u, v, [leg(su), leg(sv)], station))
    return best


# ------------------------------------------------------------------------------------ chain evaluation


@dataclass(frozen=True, slots=True)
class _Option:
    """One way to run a chain: swap order, purification, and what it predicts."""

    order: SwapOrder
    rounds: int
    protocol: Purification
    rate_hz: float
    state: BellState
    raw_fidelity: float
    storage_factor: float

    @property
    def fidelity(self) -> float:
        return self.state.fidelity

    @property
    def key_bps(self) -> float:
        return self.rate_hz * bbm92_secret_fraction(self.state)

    def tie_key(self) -> tuple[float, int, int, int]:
        return (-self.fidelity, self.rounds, _PROTOCOLS.index(self.protocol), _ORDERS.index(self.order))


def _storage(state: BellState, factor: float) -> BellState:
    """Depolarise ``state`` by a Werner-parameter factor (an expected storage time ``-T ln(factor) / 2``)."""
    if factor >= 1.0:
        return state
    if factor <= 0.0:
        return werner(0.25)
    return depolarise(state, stored_s=-math.log(factor) / 2.0, coherence_s=1.0, qubits=2)


def _decay_asap(p_min: float, n: int, attempt_s: float, coherence_s: float) -> float:
    """:func:`wait_all_decay`, with attempts grouped into blocks when ``p`` is tiny (the exact sum would
    take ~35/p terms); blocks of ``B`` attempts succeed with ``1 - (1 - p)^B`` and last ``B t``, which only
    coarsens the waiting time to a block (a slightly optimistic factor)."""
    block = 1 if p_min >= _COARSE_P else math.ceil(_COARSE_P / p_min)
    p = p_min if block == 1 else multiplexed_probability(p_min, block)
    return wait_all_decay(p, n, attempt_s * block, coherence_s)


def _nested(
    links: Sequence[ElementaryLink], mems: Sequence[MemoryParams], t: float, coherence_s: float
) -> tuple[float, float]:
    """``(expected attempts, storage factor)`` of the nested protocol over ``2^k`` links."""
    n = len(links)
    if n == 1:
        return 1.0 / links[0].p, 1.0
    half = n // 2
    a = mems[half].swap_success
    if n == 2:
        ps = [links[0].p, links[1].p]
        return (
            expected_max_geometric_unequal(ps) / a,
            _decay_asap(min(ps), 2, t, coherence_s),
        )
    left = _nested(links[:half], mems[: half + 1], t, coherence_s)
    right = _nested(links[half:], mems[half:], t, coherence_s)
    slower = max(left[0], right[0])
    wait_s = 0.5 * slower * t  # E[max of two] - E[one] under the 3/2 rule
    factor = math.exp(-2.0 * wait_s / coherence_s) if math.isfinite(coherence_s) else 1.0
    return 1.5 * slower / a, left[1] * right[1] * factor


def _chain_options(
    links: Sequence[ElementaryLink], mems: Sequence[MemoryParams], max_rounds: int
) -> list[_Option]:
    """Every swap order (and purification plan) for the chain ``links`` over the memory nodes ``mems``."""
    n = len(links)
    t = max(link.attempt_s for link in links)
    ps = [link.p for link in links]
    coherence = min(m.coherence_s for m in mems)
    swap_ok = math.prod(m.swap_success for m in mems[1:-1])
    raw = swap_chain([werner(link.fidelity) for link in links])
    bases: list[tuple[SwapOrder, float, float]] = []  # (order, expected attempts, storage factor)
    if n == 1:
        bases.append(("none", 1.0 / ps[0], 1.0))
    else:
        bases.append(
            ("asap", expected_max_geometric_unequal(ps) / swap_ok, _decay_asap(min(ps), n, t, coherence))
        )
        if n >= 4 and n & (n - 1) == 0:
            attempts, factor = _nested(links, mems, t, coherence)
            bases.append(("nested", attempts, factor))
        seq_factor = math.prod(geometric_storage_decay(p, t, coherence) for p in ps[1:])
        bases.append(("sequential", math.fsum(1.0 / p for p in ps) / swap_ok, seq_factor))
    end_coherence = min(mems[0].coherence_s, mems[-1].coherence_s)
    options: list[_Option] = []
    for order, attempts, factor in bases:
        rate = 1.0 / (attempts * t)
        state = _storage(raw, factor)
        options.append(_Option(order, 0, "none", rate, state, state.fidelity, factor))
        for protocol in ("dejmps", "bbpssw"):
            cur_state, cur_rate = state, rate
            for rounds in range(1, max_rounds + 1):
                waited = depolarise(cur_state, 1.0 / cur_rate, end_coherence, qubits=2)
                p_ok, cur_state = _PURIFY[protocol](waited, cur_state)
                cur_rate = cur_rate * p_ok / 2.0
                options.append(_Option(order, rounds, protocol, cur_rate, cur_state, state.fidelity, factor))
    return options


def _memory_need(nodes: Sequence[str], rounds: int) -> list[tuple[str, int]]:
    """Memories a chain over the memory nodes ``nodes`` holds: ``1 + rounds`` at each end, 2 inside."""
    return [(n, 1 + rounds if i in (0, len(nodes) - 1) else 2) for i, n in enumerate(nodes)]


# --------------------------------------------------------------------------------------- the computation


@dataclass(frozen=True, slots=True)
class _Chain:
    """A candidate path of elementary links between two memory nodes."""

    mem_nodes: tuple[str, ...]
    links: tuple[ElementaryLink, ...]
    options: tuple[_Option, ...]

    @property
    def all_nodes(self) -> tuple[str, ...]:
        out = [self.mem_nodes[0]]
        for link in self.links:
            if link.station is not None:
                out.append(link.station)
            out.append(link.b)
        return tuple(out)


class _Computation:
    def __init__(
        self,
        topology: Topology,
        reservations: Iterable[Reservation],
        memory_reservations: Iterable[MemoryReservation],
        request: EntanglementRequest,
    ) -> None:
        self.topology = topology
        self.request = request
        nodes = topology.nodes
        for name in ("src", "dst"):
            nid = getattr(request, name)
            if nid not in nodes:
                raise invalid_request(f"{name} is unknown node {nid!r}", name, node=nid)
            if nid in request.avoid:
                raise invalid_request(f"{name} {self.label(nid)} is also in avoid", "avoid", node=nid)
        for nid in sorted(request.avoid):
            if nid not in nodes:
                raise invalid_request(f"avoid names unknown node {nid!r}", "avoid", node=nid)
        held: dict[str, int] = {}
        for r in memory_reservations:
            held[r.node_id] = held.get(r.node_id, 0) + r.memories
        self.free = {
            n: max(0, node.memory.memories - held.get(n, 0))
            for n, node in nodes.items()
            if node.memory is not None
        }
        span_held: dict[str, list[float]] = {}
        for res in reservations:
            span_held.setdefault(res.span_id, []).append(res.rate_bps)
        self.span_reserved = {s: math.fsum(v) for s, v in span_held.items()}
        self.links = elementary_links(topology, request.avoid)
        g = nx.Graph()
        for n in sorted(nodes):
            if nodes[n].memory is not None and n not in request.avoid:
                g.add_node(n)
        for (a, b), link in sorted(self.links.items()):
            if a in g and b in g:
                g.add_edge(a, b, cost=link.expected_s)
        self.graph = g
        self._chains: dict[tuple[str, str], list[_Chain]] = {}

    # -- helpers ------------------------------------------------------------------------------------

    def label(self, nid: str) -> str:
        return self.topology.node_label(nid)

    def names(self, nodes: Iterable[str]) -> str:
        return "-".join(self.label(n) for n in nodes)

    def node(self, nid: str) -> Node:
        return self.topology.nodes[nid]

    def holds_key(self, nid: str) -> bool:
        node = self.node(nid)
        return node.role in ("endpoint", "relay") and (
            node.trusted or nid in (self.request.src, self.request.dst)
        )

    def link(self, a: str, b: str) -> ElementaryLink:
        return self.links[(a, b)] if a < b else self.links[(b, a)].reversed()

    def reject(self, message: str, **info: str) -> PathRejectedError:
        return PathRejectedError(message, info=info)

    # -- chains -------------------------------------------------------------------------------------

    def chains(self, u: str, v: str) -> list[_Chain]:
        """The ``k`` best candidate chains from ``u`` to ``v`` through repeaters, with their options."""
        key = (u, v)
        if key in self._chains:
            return self._chains[key]
        out: list[_Chain] = []
        g = self.graph
        if u in g and v in g:
            allowed = [n for n in g if n in (u, v) or self.node(n).role == "repeater"]
            sub = g.subgraph(allowed)
            if nx.has_path(sub, u, v):
                paths = nx.shortest_simple_paths(sub, u, v, weight="cost")
                for path in itertools.islice(paths, self.request.k):
                    mem_nodes = tuple(path)
                    links = tuple(self.link(a, b) for a, b in itertools.pairwise(mem_nodes))
                    mems = [self.node(n).memory for n in mem_nodes]
                    assert all(m is not None for m in mems)
                    options = _chain_options(
                        links, [m for m in mems if m is not None], self.request.max_rounds
                    )
                    out.append(_Chain(mem_nodes, links, tuple(options)))
        self._chains[key] = out
        return out

    def fits(self, chain: _Chain, option: _Option) -> bool:
        return all(self.free.get(n, 0) >= need for n, need in _memory_need(chain.mem_nodes, option.rounds))

    def segment(self, chain: _Chain, option: _Option) -> Segment:
        nodes = chain.all_nodes
        return Segment(
            technology="entanglement",
            nodes=nodes,
            spans=tuple(s for link in chain.links for s in link.spans),
            key_rate_bps=option.key_bps,
            links=chain.links,
            repeaters=chain.mem_nodes[1:-1],
            stations=tuple(link.station for link in chain.links if link.station is not None),
            swap_order=option.order,
            rounds=option.rounds,
            protocol=option.protocol,
            pair_rate_hz=option.rate_hz,
            fidelity=option.fidelity,
            unpurified_fidelity=option.raw_fidelity,
            memories=tuple(_memory_need(chain.mem_nodes, option.rounds)),
        )

    def best_segment(self, u: str, v: str, objective: Service) -> Segment | PathRejectedError:
        """The best entanglement segment from ``u`` to ``v`` for ``objective``, or why there is none."""
        req = self.request
        chains = self.chains(u, v)
        pair = f"{self.label(u)} to {self.label(v)}"
        if not chains:
            return self._no_chain(u, v)
        target = req.target_fidelity

        def value(o: _Option) -> float:
            return o.key_bps if objective == "key" else o.rate_hz

        def meets_quality(o: _Option) -> bool:
            if target is not None and o.fidelity < target:
                return False
            return o.key_bps > 0 if objective == "key" else True

        def meets_rate(o: _Option) -> bool:
            if objective == "key":
                return o.key_bps >= req.min_key_rate_bps
            return o.rate_hz >= req.min_pair_rate_hz

        every = [(c, o) for c in chains for o in c.options]
        quality = [(c, o) for c, o in every if meets_quality(o)]
        rated = [(c, o) for c, o in quality if meets_rate(o)]
        fitting = [(c, o) for c, o in rated if self.fits(c, o)]
        if fitting:
            c, o = min(fitting, key=lambda co: (-value(co[1]), co[1].tie_key(), co[0].mem_nodes))
            return self.segment(c, o)
        rounds = f"at most {req.max_rounds} purification round(s)"
        if not quality:
            c, o = min(every, key=lambda co: (co[1].tie_key(), -co[1].rate_hz, co[0].mem_nodes))
            why, info = self._limit(c, o)
            best = (
                f"the best achievable is F = {_fmt(o.fidelity, 4)} over {self.names(c.all_nodes)} "
                f"({o.order} swapping, {o.rounds} round(s) of {o.protocol}, {_sig(o.rate_hz)} pairs/s)"
            )
            if objective == "key" and (target is None or target < KEY_FIDELITY):
                return self.reject(
                    f"no entanglement path from {pair} gives BBM92 key (needs F > {KEY_FIDELITY}) with "
                    f"{rounds}: {best}; limited by {why}",
                    constraint="key-fidelity",
                    best_fidelity=_fmt(o.fidelity, 6),
                    best_rate_hz=_sig(o.rate_hz),
                    **info,
                )
            return self.reject(
                f"no entanglement path from {pair} reaches fidelity {_fmt(target or 0.0, 4)} with {rounds}: "
                f"{best}; limited by {why}",
                constraint="fidelity",
                best_fidelity=_fmt(o.fidelity, 6),
                best_rate_hz=_sig(o.rate_hz),
                target_fidelity=_fmt(target or 0.0, 6),
                **info,
            )
        if not rated:
            c, o = min(quality, key=lambda co: (-value(co[1]), co[1].tie_key(), co[0].mem_nodes))
            slow = max(c.links, key=lambda lk: (lk.expected_s, lk.spans))
            what = (
                (f"{_sig(o.key_bps)} bit/s of key", f"{_sig(req.min_key_rate_bps)} bit/s requested")
                if objective == "key"
                else (f"{_sig(o.rate_hz)} pairs/s", f"{_sig(req.min_pair_rate_hz)} pairs/s requested")
            )
            return self.reject(
                f"not enough rate from {pair}: the best plan gives {what[0]} at F = {_fmt(o.fidelity, 4)} "
                f"over {self.names(c.all_nodes)}, {what[1]}; the slowest link is "
                f"{self.label(slow.a)}-{self.label(slow.b)} (span {', '.join(slow.spans)}, "
                f"p = {_sig(slow.p)} per {_sig(slow.attempt_s)} s attempt)",
                constraint="rate",
                best_rate_hz=_sig(o.rate_hz),
                best_key_rate_bps=_sig(o.key_bps),
                best_fidelity=_fmt(o.fidelity, 6),
                span=slow.spans[0],
            )
        c, o = min(rated, key=lambda co: (-value(co[1]), co[1].tie_key(), co[0].mem_nodes))
        short = [(n, need) for n, need in _memory_need(c.mem_nodes, o.rounds) if self.free.get(n, 0) < need]
        n, need = short[0]
        memory = self.node(n).memory
        total = memory.memories if memory is not None else 0
        return self.reject(
            f"not enough quantum memories from {pair}: the best plan over {self.names(c.all_nodes)} "
            f"({o.rounds} purification round(s)) needs {need} at {self.label(n)}, which has "
            f"{self.free.get(n, 0)} of {total} free",
            constraint="memory",
            node=n,
            needed=str(need),
            free=str(self.free.get(n, 0)),
        )

    def _limit(self, c: _Chain, o: _Option) -> tuple[str, dict[str, str]]:
        """What limits the fidelity of ``o``: the worst elementary link, or storage in the memories."""
        worst = min(c.links, key=lambda lk: (lk.fidelity, -lk.expected_s, lk.spans))
        w_link = (4.0 * worst.fidelity - 1.0) / 3.0
        if o.storage_factor < w_link:
            n = min(c.mem_nodes, key=lambda x: (self._coherence(x), x))
            return (
                f"storage in the memory of {self.label(n)} (coherence time {_sig(self._coherence(n))} s; "
                f"storage keeps {_fmt(o.storage_factor, 4)} of the Werner parameter)",
                {"node": n, "limit": "memory"},
            )
        return (
            f"link {self.label(worst.a)}-{self.label(worst.b)} (span {', '.join(worst.spans)}, "
            f"F0 = {_fmt(worst.fidelity, 4)})",
            {"span": worst.spans[0], "limit": "link"},
        )

    def _coherence(self, n: str) -> float:
        memory = self.node(n).memory
        return memory.coherence_s if memory is not None else 0.0

    def _no_chain(self, u: str, v: str) -> PathRejectedError:
        pair = f"{self.label(u)} to {self.label(v)}"
        for end in (u, v):
            if self.node(end).memory is None:
                return self.reject(
                    f"no entanglement path from {pair}: {self.label(end)} has no quantum memories",
                    constraint="no-path",
                    node=end,
                )
        return self.reject(
            f"no entanglement path from {pair}: no chain of elementary links through repeaters and BSM "
            "stations joins them",
            constraint="no-path",
        )

    # -- plans --------------------------------------------------------------------------------------

    def run(self) -> EntanglementPlan:
        req = self.request
        if req.service == "entanglement":
            seg = self.best_segment(req.src, req.dst, "entanglement")
            if isinstance(seg, PathRejectedError):
                raise seg
            return self.plan([seg])
        return self.mixed()

    def plan(self, segments: Sequence[Segment]) -> EntanglementPlan:
        req = self.request
        nodes: list[str] = [req.src]
        for seg in segments:
            nodes.extend(seg.nodes[1:])
        relays = tuple(seg.nodes[-1] for seg in segments[:-1])
        memories: dict[str, int] = {}
        for seg in segments:
            for n, m in seg.memories:
                memories[n] = memories.get(n, 0) + m
        for n in sorted(memories):
            if memories[n] > self.free.get(n, 0):
                raise self.reject(
                    f"not enough quantum memories at {self.label(n)} for the best path "
                    f"{self.names(nodes)}: it needs {memories[n]}, {self.free.get(n, 0)} are free",
                    constraint="memory",
                    node=n,
                    needed=str(memories[n]),
                    free=str(self.free.get(n, 0)),
                )
        single = segments[0] if len(segments) == 1 and segments[0].technology == "entanglement" else None
        return EntanglementPlan(
            service=req.service,
            src=req.src,
            dst=req.dst,
            nodes=tuple(nodes),
            segments=tuple(segments),
            key_rate_bps=min(seg.key_rate_bps for seg in segments),
            pair_rate_hz=single.pair_rate_hz if single is not None else None,
            fidelity=single.fidelity if single is not None else None,
            key_visible_to=(req.src, *relays, req.dst),
            trusted_relays=relays,
            memories=tuple(sorted(memories.items())),
        )

    def qkd_segment(self, u: str, v: str) -> Segment | None:
        """The best usable QKD span from ``u`` to ``v`` (most key rate left), or ``None``."""
        best: Segment | None = None
        for sid in sorted(self.topology.spans):
            s = self.topology.spans[sid]
            if {s.a, s.b} != {u, v}:
                continue
            a = classify_span(s)
            if not a.usable:
                continue
            left = max(0.0, a.predicted_rate_bps - self.span_reserved.get(sid, 0.0))
            if best is None or left > best.key_rate_bps:
                best = Segment(technology="qkd", nodes=(u, v), spans=(sid,), key_rate_bps=left)
        return best

    def mixed(self) -> EntanglementPlan:
        req, topo = self.request, self.topology
        for end in (req.src, req.dst):
            if self.node(end).role not in ("endpoint", "relay"):
                raise invalid_request(
                    f"key ends must hold key (an endpoint or a relay); {self.label(end)} is a "
                    f"{self.node(end).role}",
                    "src" if end == req.src else "dst",
                    node=end,
                )
        key_nodes = sorted(n for n in topo.nodes if self.holds_key(n) and n not in req.avoid)
        key_set = frozenset(key_nodes)
        edges: dict[tuple[str, str], Segment] = {}
        failures: dict[tuple[str, str], PathRejectedError] = {}
        # QKD hops: spans between two key nodes.
        for sid in sorted(topo.spans):
            s = topo.spans[sid]
            a, b = sorted((s.a, s.b))
            if a in key_set and b in key_set and (a, b) not in edges:
                seg = self.qkd_segment(a, b)
                if seg is not None:
                    edges[(a, b)] = seg
        # Repeater segments: memory-capable key nodes joined through repeaters and stations.
        for u in key_nodes:
            for v in self._reachable_key_nodes(u, key_set):
                if v <= u:
                    continue
                ent = self.best_segment(u, v, "key")
                if isinstance(ent, PathRejectedError):
                    failures[(u, v)] = ent
                    continue
                old = edges.get((u, v))
                if old is None or ent.key_rate_bps > old.key_rate_bps:
                    edges[(u, v)] = ent
        adj: dict[str, list[tuple[str, Segment]]] = {n: [] for n in key_nodes}
        for (a, b), seg in sorted(edges.items()):
            if seg.key_rate_bps <= 0:
                continue
            adj[a].append((b, seg))
            adj[b].append((a, seg.reversed()))
        limit = None if req.max_trusted_nodes is None else req.max_trusted_nodes + 1
        found = self._widest(adj, limit, req.min_key_rate_bps)
        if found is not None:
            return self.plan(found)
        raise self._mixed_failure(adj, limit, failures)

    def _reachable_key_nodes(self, u: str, key_set: frozenset[str]) -> list[str]:
        """Key nodes reachable from ``u`` in the entanglement graph with repeaters only in between."""
        g = self.graph
        if u not in g:
            return []
        seen = {u}
        out: list[str] = []
        queue = deque([u])
        while queue:
            x = queue.popleft()
            for y in sorted(g[x]):
                if y in seen:
                    continue
                seen.add(y)
                if y in key_set:
                    out.append(y)
                elif self.node(y).role == "repeater":
                    queue.append(y)
        return sorted(out)

    def _widest(
        self, adj: Mapping[str, list[tuple[str, Segment]]], limit: int | None, min_rate: float
    ) -> list[Segment] | None:
        """Max-min key rate path from src to dst with at most ``limit`` segments (``None``: no limit).

        Layer ``h`` keeps, per node, the best path of exactly ``h`` segments (widest, then smallest node
        ids); a cycle never widens a path, so the best simple path within the bound is among them.
        Interior nodes must be trusted.
        """
        src, dst = self.request.src, self.request.dst
        bound = len(adj) if limit is None else min(limit, len(adj))
        Label = tuple[float, tuple[str, ...], tuple[Segment, ...]]
        layer: dict[str, Label] = {src: (math.inf, (src,), ())}
        answers: list[tuple[float, int, tuple[str, ...], tuple[Segment, ...]]] = []
        for _ in range(bound):
            nxt: dict[str, Label] = {}
            for u in sorted(layer):
                width, path, segs = layer[u]
                if u == dst:
                    continue
                for v, seg in adj.get(u, ()):
                    if v in path or seg.key_rate_bps < min_rate:
                        continue
                    if v != dst and not self.node(v).trusted:
                        continue
                    cand: Label = (min(width, seg.key_rate_bps), (*path, v), (*segs, seg))
                    old = nxt.get(v)
                    if old is None or (-cand[0], cand[1]) < (-old[0], old[1]):
                        nxt[v] = cand
            layer = nxt
            if dst in layer:
                w, p, s = layer[dst]
                answers.append((w, len(s), p, s))
            if not layer:
                break
        if not answers:
            return None
        best = min(answers, key=lambda x: (-x[0], x[1], x[2]))
        return list(best[3])

    def _mixed_failure(
        self,
        adj: Mapping[str, list[tuple[str, Segment]]],
        limit: int | None,
        failures: Mapping[tuple[str, str], PathRejectedError],
    ) -> PathRejectedError:
        req = self.request
        pair = f"{self.label(req.src)} to {self.label(req.dst)}"
        direct = failures.get(tuple(sorted((req.src, req.dst))))  # type: ignore[arg-type]
        unbounded = self._widest(adj, None, 0.0)
        if unbounded is None:
            if direct is not None:
                e = direct.first
                return PathRejectedError(f"no key path from {pair}: {e.message}", info=dict(e.info))
            return self.reject(
                f"no key path from {pair}: no chain of usable QKD spans (between trusted nodes) and repeater "
                "segments (between memory-capable trusted nodes) joins them",
                constraint="no-path",
            )
        if limit is not None:
            bounded = self._widest(adj, limit, 0.0)
            if bounded is None:
                relays = len(unbounded) - 1
                if direct is None and not any(v == req.dst for v, _ in adj.get(req.src, ())):
                    direct = self._no_chain(req.src, req.dst)  # why no repeater segment joins the ends
                fewest = next(h for h in range(limit + 1, len(adj) + 1) if self._widest(adj, h, 0.0)) - 1
                why = (
                    f"; the direct repeater segment fails: {direct.first.message}"
                    if direct is not None
                    else ""
                )
                return self.reject(
                    f"no key path from {pair} with at most {req.max_trusted_nodes} trusted relay(s): the "
                    f"fewest possible is {fewest} (the widest path has {relays}){why}",
                    constraint="max-trusted",
                    max_trusted_nodes=str(req.max_trusted_nodes),
                    min_trusted_nodes=str(fewest),
                    **({"reason": direct.constraint} if direct is not None else {}),
                )
        best = self._widest(adj, limit, 0.0)
        assert best is not None
        rate = min(s.key_rate_bps for s in best)
        weakest = min(best, key=lambda s: (s.key_rate_bps, s.nodes))
        return self.reject(
            f"not enough key rate from {pair}: the best path gives {_sig(rate)} bit/s, "
            f"{_sig(req.min_key_rate_bps)} bit/s requested; its weakest segment is "
            f"{self.names(weakest.nodes)} ({weakest.technology}, {_sig(weakest.key_rate_bps)} bit/s)",
            constraint="rate",
            best_key_rate_bps=_sig(rate),
            span=weakest.spans[0],
        )


def compute_entanglement_plan(
    topology: Topology,
    request: EntanglementRequest,
    *,
    reservations: Iterable[Reservation] = (),
    memory_reservations: Iterable[MemoryReservation] = (),
) -> EntanglementPlan:
    """The best plan for ``request`` on ``topology``, given the key rates (``reservations``, spans) and
    memories (``memory_reservations``) other sessions hold. Raises :class:`PathRejectedError`.

    See the module docstring for the model, the choices and the rejections.
    """
    return _Computation(topology, reservations, memory_reservations, request).run()
