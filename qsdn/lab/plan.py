"""The planning report of a lab topology (``qsdn plan``): GEANT classes, key rates, where relays go.

Pure core (:func:`build_plan` returns data), thin renderers (:func:`render_table`, :func:`plan_json`,
:func:`write_png`). For every span:

* its loss in the O and the C band and its planning class (SYSTEM.md section 4, GEANT QKD planning study:
  GREEN when the O-band loss is below 20 dB, the quantum channel can share a lit fibre through DWDM;
  ORANGE when only the C-band loss is, it needs a dark fibre; RED otherwise, it needs a relay node or a
  repeater). Class, band and predicted rate come from :func:`controller.pathcomp.classify_span`, the same
  function the controller's path computation uses, so the plan and the controller never disagree;
* the predicted decoy-state BB84 key rate in bit/s (:mod:`qsdn.physics.bb84`) with the device of the
  span's end nodes. When the two ends have different devices the *weaker* one is used: the end whose
  device predicts the lower rate on this span, then (both zero, e.g. on a red span) the one with the
  smaller loss budget (:func:`qsdn.physics.bb84.max_loss_db`), then the ``a`` end. A link is as good as
  its weaker side; this keeps the prediction conservative;
* for a red span, a relay hint: the fewest intermediate relay sites at equal spacing that make every
  hop orange or better (and, for comparison, every hop green), with the hops' length, class and rate.
  Each hop is charged the span's whole ``extra_loss_db``: every new site brings its own connectors and
  patch panels, so the hint errs on the side of more sites. When the extra loss alone uses the 20 dB
  budget no spacing helps and the hint is ``None``. The hint assumes a site can be built anywhere along
  the route: not true at sea, where only a quantum repeater (or a satellite) helps.

Then the sessions of the file, admitted in file order as the controller would. A ``qkd`` session takes
the best trusted-relay path (:func:`controller.pathcomp.compute_paths`); a ``key`` session the best mixed
path of :func:`controller.entanglement.compute_entanglement_plan`, whose segments are trusted-relay QKD
hops or repeater segments (a chain of repeaters and BSM stations, BBM92 key between its two ends). Each
admitted session reserves its rate on its QKD hops and its memories on the repeater segments' nodes.
Endpoints and trusted relays may relay; repeaters and BSM stations may not (they never hold key). The
report lists every repeater segment with its repeaters, stations, swap order, purification, fidelity,
pair rate and key rate.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from controller.entanglement import (
    EntanglementPlan,
    EntanglementRequest,
    MemoryReservation,
    compute_entanglement_plan,
)
from controller.model import MemoryParams, Node, NodeRole, Reservation, Span, StationParams, Topology
from controller.pathcomp import PathRejectedError, PathRequest, classify_span, compute_paths
from qsdn.lab.topology import KEY_ROLES, LabNode, LabSession, LabSpan, LabTopology
from qsdn.physics.bb84 import DeviceParams, max_loss_db
from qsdn.physics.loss import PLANNING_BUDGET_DB, Band, SpanClass, planning_class

__all__ = [
    "NEEDS",
    "PlanReport",
    "RelayHint",
    "SegmentPlan",
    "SessionPlan",
    "SpanPlan",
    "build_plan",
    "controller_topology",
    "plan_json",
    "rate_text",
    "relay_sites",
    "render_table",
    "span_device",
    "write_png",
]

#: What each planning class asks of the infrastructure (the ``needs`` field of the JSON report).
NEEDS: dict[SpanClass, str] = {
    SpanClass.GREEN: "lit-fibre",
    SpanClass.ORANGE: "dark-fibre",
    SpanClass.RED: "relay-or-repeater",
}
_NEEDS_TEXT: dict[SpanClass, str] = {
    SpanClass.GREEN: "lit fibre",
    SpanClass.ORANGE: "dark fibre",
    SpanClass.RED: "relay/repeater",
}
_LEGEND_TEXT: dict[SpanClass, str] = {
    SpanClass.GREEN: "green: can share a lit fibre (O band, DWDM)",
    SpanClass.ORANGE: "orange: needs a dark fibre (C band)",
    SpanClass.RED: "red: needs a relay or a repeater",
}
_RANK: dict[SpanClass, int] = {SpanClass.GREEN: 0, SpanClass.ORANGE: 1, SpanClass.RED: 2}
#: Colours of the classes in the table (rich) and the PNG (matplotlib).
_RICH_COLOUR: dict[SpanClass, str] = {
    SpanClass.GREEN: "green",
    SpanClass.ORANGE: "dark_orange",
    SpanClass.RED: "red",
}
_PNG_COLOUR: dict[SpanClass, str] = {
    SpanClass.GREEN: "#2ca02c",
    SpanClass.ORANGE: "#ff8c00",
    SpanClass.RED: "#d62728",
}


@dataclass(frozen=True, slots=True)
class RelayHint:
    """Relay sites at equal spacing that would make a red span usable.

    Attributes:
        sites: intermediate relay sites so that every hop is orange or better.
        hop_length_km: length of each of the ``sites + 1`` hops.
        hop_class: class of such a hop (orange or green).
        hop_rate_bps: predicted key rate of such a hop with the span's device and bands.
        sites_for_green: intermediate sites so that every hop is green (shares a lit fibre).
    """

    sites: int
    hop_length_km: float
    hop_class: SpanClass
    hop_rate_bps: float
    sites_for_green: int


@dataclass(frozen=True, slots=True)
class SpanPlan:
    """The report's line for one span (loss in dB, rate in bit/s)."""

    span_id: str
    a: str
    b: str
    length_km: float
    extra_loss_db: float
    bands: tuple[str, ...]
    loss_o_db: float
    loss_c_db: float
    span_class: SpanClass
    band: Band | None
    rate_bps: float
    usable: bool
    reason: str | None
    device_node: str
    relay_hint: RelayHint | None

    @property
    def needs(self) -> str:
        """What the class asks for: ``lit-fibre``, ``dark-fibre`` or ``relay-or-repeater``."""
        return NEEDS[self.span_class]

    @property
    def relay_needed(self) -> bool:
        """Whether the span needs a relay node or a repeater (it is red)."""
        return self.span_class is SpanClass.RED


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """One segment of a ``key`` session's path (node names, rates in bit/s and pairs/s).

    ``technology`` ``qkd``: a trusted-relay QKD hop over one span; ``entanglement``: a repeater segment
    (``repeaters`` and ``stations`` in path order, the swap order, end-to-end purification, the delivered
    pairs' fidelity and rate); ``key_rate_bps`` is what the segment offers the session.
    """

    technology: str
    nodes: tuple[str, ...]
    spans: tuple[str, ...]
    key_rate_bps: float
    repeaters: tuple[str, ...] = ()
    stations: tuple[str, ...] = ()
    swap_order: str = "none"
    rounds: int = 0
    protocol: str = "none"
    fidelity: float | None = None
    pair_rate_hz: float = 0.0


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """Where a session of the file would go, admitted in file order.

    ``path`` and ``spans`` are empty and ``reason`` says why when no path carries the session.
    ``bottleneck_bps`` is the key rate left for it on its weakest hop when it was admitted (for a
    ``key`` session, the plan's end-to-end key rate: the minimum over its segments). ``segments`` and
    ``trusted_relays`` are those of a ``key`` session's plan (empty for ``qkd``, whose relays are the
    path's interior nodes).
    """

    name: str
    src: str
    dst: str
    rate_bps: int
    path: tuple[str, ...]
    spans: tuple[str, ...]
    bottleneck_bps: float
    reason: str | None
    service: str = "qkd"
    segments: tuple[SegmentPlan, ...] = ()
    trusted_relays: tuple[str, ...] = ()

    @property
    def repeater_segments(self) -> tuple[SegmentPlan, ...]:
        return tuple(g for g in self.segments if g.technology == "entanglement")

    @property
    def admitted(self) -> bool:
        return bool(self.path)


@dataclass(frozen=True, slots=True)
class PlanReport:
    """The whole report: spans and sessions in file order."""

    topology: str
    description: str
    source: str
    spans: tuple[SpanPlan, ...]
    sessions: tuple[SessionPlan, ...]

    @property
    def class_counts(self) -> dict[SpanClass, int]:
        """Number of spans per class (every class present, possibly 0)."""
        counts = Counter(s.span_class for s in self.spans)
        return {c: counts[c] for c in SpanClass}

    @property
    def relay_sites(self) -> int:
        """Relay sites the hints of the red spans add up to."""
        return sum(s.relay_hint.sites for s in self.spans if s.relay_hint is not None)

    def summary(self) -> str:
        """One line: spans per class, relays needed, sessions admitted."""
        counts = self.class_counts
        text = f"{_plural(len(self.spans), 'span')}: " + ", ".join(
            f"{n} {c.value}" for c, n in counts.items()
        )
        red = counts[SpanClass.RED]
        if red:
            verb = "span needs" if red == 1 else "spans need"
            text += (
                f"; {red} red {verb} a relay or a repeater (hint: {_plural(self.relay_sites, 'relay site')}"
            )
            beyond = sum(1 for s in self.spans if s.relay_needed and s.relay_hint is None)
            text += f" at equal spacing, {beyond} beyond any spacing)" if beyond else " at equal spacing)"
        else:
            text += "; no relay or repeater needed"
        if self.sessions:
            admitted = sum(1 for s in self.sessions if s.admitted)
            text += f"; {admitted} of {_plural(len(self.sessions), 'session')} admitted"
        return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ------------------------------------------------------------------------------------------ physics


def _model_span(span_id: str, a: str, b: str, length_km: float, span: LabSpan, device: DeviceParams) -> Span:
    return Span(span_id, a, b, length_km, span.extra_loss_db, span.bands, device)


def span_device(topology: LabTopology, span: LabSpan) -> tuple[str, DeviceParams]:
    """The name of the end node whose device the span is assessed with, and that device (module doc)."""
    ends = [topology.node(span.a), topology.node(span.b)]
    if ends[0].device == ends[1].device:
        return ends[0].name, ends[0].device

    def weakness(i: int) -> tuple[float, float, int]:
        node = ends[i]
        rate = classify_span(
            _model_span(span.span_id, ends[0].node_id, ends[1].node_id, span.length_km, span, node.device)
        ).predicted_rate_bps
        return (rate, max_loss_db(node.device), i)

    weaker = ends[min((0, 1), key=weakness)]
    return weaker.name, weaker.device


def relay_sites(length_km: float, extra_loss_db: float, target: SpanClass = SpanClass.ORANGE) -> int | None:
    """Fewest intermediate sites at equal spacing making every hop ``target`` or better.

    Each of the ``n + 1`` hops is ``length_km / (n + 1)`` long and keeps ``extra_loss_db``. 0 when the
    span already qualifies; ``None`` when no spacing does (the extra loss alone reaches the budget).
    """
    if target is SpanClass.RED:
        raise ValueError("target must be GREEN or ORANGE")

    def ok(n: int) -> bool:
        return _RANK[planning_class(length_km / (n + 1), extra_loss_db)] <= _RANK[target]

    if ok(0):
        return 0
    margin_db = PLANNING_BUDGET_DB - extra_loss_db
    if margin_db <= 0:
        return None
    band = Band.C if target is SpanClass.ORANGE else Band.O
    n = max(1, math.floor(band.attenuation_db_per_km * length_km / margin_db))  # the closed form
    while not ok(n):  # the class is the authority, floating point notwithstanding
        n += 1
    while n > 1 and ok(n - 1):
        n -= 1
    return n


def _relay_hint(span: LabSpan, a_id: str, b_id: str, device: DeviceParams) -> RelayHint | None:
    sites = relay_sites(span.length_km, span.extra_loss_db)
    green = relay_sites(span.length_km, span.extra_loss_db, SpanClass.GREEN)
    if sites is None or green is None:
        return None
    hop_km = span.length_km / (sites + 1)
    hop = classify_span(_model_span(f"{span.span_id}/hop", a_id, b_id, hop_km, span, device))
    return RelayHint(sites, hop_km, hop.span_class, hop.predicted_rate_bps, green)


def _span_plan(topology: LabTopology, span: LabSpan) -> SpanPlan:
    a, b = topology.node(span.a), topology.node(span.b)
    device_node, device = span_device(topology, span)
    assessment = classify_span(_model_span(span.span_id, a.node_id, b.node_id, span.length_km, span, device))
    red = assessment.span_class is SpanClass.RED
    return SpanPlan(
        span_id=span.span_id,
        a=span.a,
        b=span.b,
        length_km=span.length_km,
        extra_loss_db=span.extra_loss_db,
        bands=span.bands,
        loss_o_db=assessment.loss_db_by_band[Band.O],
        loss_c_db=assessment.loss_db_by_band[Band.C],
        span_class=assessment.span_class,
        band=assessment.band,
        rate_bps=assessment.predicted_rate_bps,
        usable=assessment.usable and assessment.predicted_rate_bps > 0,
        reason=assessment.reason,
        device_node=device_node,
        relay_hint=_relay_hint(span, a.node_id, b.node_id, device) if red else None,
    )


#: The controller's role for each lab role.
CONTROLLER_ROLES: dict[str, NodeRole] = {
    "endpoint": "endpoint",
    "trusted-relay": "relay",
    "repeater": "repeater",
    "bsm-station": "bsm-station",
}


def controller_node(n: LabNode) -> Node:
    """A lab node as the controller's model: role, trust, memories and station parameters."""
    memory = None
    if n.memory is not None:
        m = n.memory
        memory = MemoryParams(m.memories, m.coherence_time_s, m.swap_success, m.initial_fidelity, m.modes)
    station = StationParams(n.station.detector_efficiency) if n.station is not None else None
    return Node(
        n.node_id,
        n.name,
        trusted=n.role in KEY_ROLES,
        role=CONTROLLER_ROLES[n.role],
        memory=memory,
        station=station,
    )


def controller_topology(topology: LabTopology) -> Topology:
    """The lab as the controller's model: node ids, roles, trusted relays, memories and stations, spans
    with their weaker device.

    Endpoints and trusted relays are trusted (they hold key); repeaters and BSM stations are not.
    """
    nodes = [controller_node(n) for n in topology.nodes]
    spans = [
        _model_span(
            s.span_id,
            topology.node(s.a).node_id,
            topology.node(s.b).node_id,
            s.length_km,
            s,
            span_device(topology, s)[1],
        )
        for s in topology.spans
    ]
    return Topology.build(nodes, spans)


def _segment_plans(plan: EntanglementPlan, names: dict[str, str]) -> tuple[SegmentPlan, ...]:
    def named(ids: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(names[i] for i in ids)

    return tuple(
        SegmentPlan(
            technology=g.technology,
            nodes=named(g.nodes),
            spans=g.spans,
            key_rate_bps=g.key_rate_bps,
            repeaters=named(g.repeaters),
            stations=named(g.stations),
            swap_order=g.swap_order,
            rounds=g.rounds,
            protocol=g.protocol,
            fidelity=g.fidelity,
            pair_rate_hz=g.pair_rate_hz,
        )
        for g in plan.segments
    )


def _key_session(
    topology: LabTopology,
    model: Topology,
    s: LabSession,
    reservations: list[Reservation],
    memories: list[MemoryReservation],
) -> SessionPlan:
    """Plan a ``key`` session over trusted relays and repeater segments; reserve what it holds."""
    names = {n.node_id: n.name for n in topology.nodes}
    request = EntanglementRequest(
        topology.node(s.src).node_id,
        topology.node(s.dst).node_id,
        service="key",
        target_fidelity=s.target_fidelity,
        min_key_rate_bps=float(s.rate_bps),
    )
    try:
        plan = compute_entanglement_plan(
            model, request, reservations=reservations, memory_reservations=memories
        )
    except PathRejectedError as exc:
        return SessionPlan(s.name, s.src, s.dst, s.rate_bps, (), (), 0.0, exc.first.message, "key")
    segments = _segment_plans(plan, names)
    spans = tuple(span for g in plan.segments for span in g.spans)
    qkd_spans = [span for g in plan.segments if g.technology == "qkd" for span in g.spans]
    reservations.extend(Reservation(s.name, span_id, s.rate_bps) for span_id in qkd_spans)
    memories.extend(plan.reservations(s.name))
    return SessionPlan(
        s.name,
        s.src,
        s.dst,
        s.rate_bps,
        tuple(names[n] for n in plan.nodes),
        spans,
        plan.key_rate_bps,
        None,
        "key",
        segments,
        tuple(names[n] for n in plan.trusted_relays),
    )


def _session_plans(topology: LabTopology) -> tuple[SessionPlan, ...]:
    if not topology.sessions:
        return ()
    model = controller_topology(topology)
    names = {n.node_id: n.name for n in topology.nodes}
    reservations: list[Reservation] = []
    memories: list[MemoryReservation] = []
    plans: list[SessionPlan] = []
    for s in topology.sessions:
        if s.service == "key":
            plans.append(_key_session(topology, model, s, reservations, memories))
            continue
        request = PathRequest(topology.node(s.src).node_id, topology.node(s.dst).node_id, s.rate_bps, k=1)
        try:
            best = compute_paths(model, reservations, request).best
        except PathRejectedError as exc:
            plans.append(SessionPlan(s.name, s.src, s.dst, s.rate_bps, (), (), 0.0, exc.first.message))
            continue
        reservations.extend(Reservation(s.name, span_id, s.rate_bps) for span_id in best.spans)
        path = tuple(names[n] for n in best.nodes)
        plans.append(
            SessionPlan(s.name, s.src, s.dst, s.rate_bps, path, best.spans, best.bottleneck_bps, None)
        )
    return tuple(plans)


def build_plan(topology: LabTopology) -> PlanReport:
    """The planning report of ``topology``: pure, deterministic."""
    spans = tuple(_span_plan(topology, s) for s in topology.spans)
    return PlanReport(topology.name, topology.description, topology.source, spans, _session_plans(topology))


# ------------------------------------------------------------------------------------------- output


def _round(x: float, digits: int) -> float:
    return round(x, digits) + 0.0  # + 0.0 turns -0.0 into 0.0


def plan_json(report: PlanReport) -> dict[str, Any]:
    """The report as a JSON-ready document: numbers as numbers, classes and bands as strings."""
    spans: list[dict[str, Any]] = []
    for s in report.spans:
        hint = s.relay_hint
        spans.append(
            {
                "span_id": s.span_id,
                "a": s.a,
                "b": s.b,
                "length_km": s.length_km,
                "extra_loss_db": s.extra_loss_db,
                "bands": list(s.bands),
                "loss_o_db": _round(s.loss_o_db, 4),
                "loss_c_db": _round(s.loss_c_db, 4),
                "class": s.span_class.value,
                "band": s.band.value if s.band is not None else None,
                "rate_bps": _round(s.rate_bps, 3),
                "usable": s.usable,
                "reason": s.reason,
                "needs": s.needs,
                "relay_needed": s.relay_needed,
                "device_node": s.device_node,
                "relay_hint": None
                if hint is None
                else {
                    "sites": hint.sites,
                    "hop_length_km": _round(hint.hop_length_km, 3),
                    "hop_class": hint.hop_class.value,
                    "hop_rate_bps": _round(hint.hop_rate_bps, 3),
                    "sites_for_green": hint.sites_for_green,
                },
            }
        )
    sessions = [
        {
            "name": s.name,
            "src": s.src,
            "dst": s.dst,
            "rate_bps": s.rate_bps,
            "admitted": s.admitted,
            "path": list(s.path),
            "spans": list(s.spans),
            "bottleneck_bps": _round(s.bottleneck_bps, 3),
            "reason": s.reason,
            "service": s.service,
            "trusted_relays": list(s.trusted_relays if s.service == "key" else s.path[1:-1]),
            "segments": [_segment_json(g) for g in s.segments],
        }
        for s in report.sessions
    ]
    counts = report.class_counts
    return {
        "topology": report.topology,
        "description": report.description,
        "source": report.source,
        "planning_budget_db": PLANNING_BUDGET_DB,
        "spans": spans,
        "sessions": sessions,
        "summary": {
            "spans": len(report.spans),
            "classes": {c.value: n for c, n in counts.items()},
            "relay_needed": counts[SpanClass.RED],
            "relay_sites": report.relay_sites,
            "unusable": sum(1 for s in report.spans if not s.usable),
            "sessions": len(report.sessions),
            "sessions_admitted": sum(1 for s in report.sessions if s.admitted),
            "text": report.summary(),
        },
    }


def _segment_json(g: SegmentPlan) -> dict[str, Any]:
    return {
        "technology": g.technology,
        "nodes": list(g.nodes),
        "spans": list(g.spans),
        "key_rate_bps": _round(g.key_rate_bps, 3),
        "repeaters": list(g.repeaters),
        "stations": list(g.stations),
        "swap_order": g.swap_order,
        "purification_rounds": g.rounds,
        "purification": g.protocol,
        "fidelity": None if g.fidelity is None else _round(g.fidelity, 4),
        "pair_rate_hz": _round(g.pair_rate_hz, 3),
    }


def rate_text(bps: float) -> str:
    """A key rate for people: ``0``, ``512 bit/s``, ``12.3 kbit/s``, ``1.05 Mbit/s``."""
    if bps <= 0:
        return "0"
    if bps < 1e3:
        return f"{bps:.0f} bit/s" if bps >= 10 else f"{bps:.2g} bit/s"
    if bps < 1e6:
        return f"{bps / 1e3:.1f} kbit/s"
    return f"{bps / 1e6:.2f} Mbit/s"


def _needs_text(s: SpanPlan) -> str:
    text = _NEEDS_TEXT[s.span_class]
    if s.span_class is not SpanClass.RED and s.band is None:
        text += " (no C band)"
    elif s.band is not None and s.rate_bps <= 0:
        text += " (no key)"
    return text


def _hint_text(s: SpanPlan) -> str:
    if not s.relay_needed:
        return ""
    h = s.relay_hint
    if h is None:
        return f"none: {s.extra_loss_db:g} dB extra loss per hop"
    sites = "1 site" if h.sites == 1 else f"{h.sites} sites"
    return (
        f"{sites}: {h.sites + 1} x {h.hop_length_km:.1f} km {h.hop_class.value}, {rate_text(h.hop_rate_bps)}"
    )


def _path_text(path: tuple[str, ...]) -> str:
    if len(path) <= 6:
        return " > ".join(path)
    return " > ".join((*path[:3], "...", *path[-2:]))


def _segments_text(p: SessionPlan) -> str:
    """A key session's path by segments: ``a > b`` a QKD hop, ``b =r1=r2= c`` a repeater segment."""
    if not p.segments:
        return _path_text(p.path)
    parts = [p.segments[0].nodes[0]]
    for g in p.segments:
        if g.technology == "qkd":
            parts.append(f" > {g.nodes[-1]}")
        else:
            inner = "=".join(g.repeaters)
            parts.append(f" ={inner}= {g.nodes[-1]}" if inner else f" == {g.nodes[-1]}")
    return "".join(parts)


def _purification_text(g: SegmentPlan) -> str:
    if g.rounds == 0:
        return "none"
    return f"{g.rounds} x {g.protocol.upper()}"


def render_table(report: PlanReport, console: Console) -> None:
    """Print the spans table, the sessions table (if any) and the summary line."""
    title = f"Planning report: {report.topology}" + (f" ({report.description})" if report.description else "")
    spans = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    spans.add_column("Span", no_wrap=True)
    spans.add_column("Ends")
    spans.add_column("km", justify="right", no_wrap=True)
    spans.add_column("+dB", justify="right", no_wrap=True)
    spans.add_column("O / C dB", justify="right", no_wrap=True)
    spans.add_column("Class", no_wrap=True)
    spans.add_column("Band", justify="center", no_wrap=True)
    spans.add_column("Key rate", justify="right", no_wrap=True)
    spans.add_column("Needs")
    spans.add_column("Relay sites at equal spacing")
    for s in report.spans:
        colour = _RICH_COLOUR[s.span_class]
        spans.add_row(
            s.span_id,
            f"{s.a} - {s.b}",
            f"{s.length_km:g}",
            f"{s.extra_loss_db:g}",
            f"{s.loss_o_db:.1f} / {s.loss_c_db:.1f}",
            f"[{colour}]{s.span_class.value}[/]",
            s.band.value if s.band is not None else "-",
            rate_text(s.rate_bps),
            _needs_text(s),
            _hint_text(s),
        )
    console.print(spans)
    if report.sessions:
        sessions = Table(title="Sessions (admitted in file order)", title_justify="left", box=box.SIMPLE_HEAD)
        for header in ("Session", "Service", "From - to", "Asks", "Hops", "Path", "Weakest hop left"):
            sessions.add_column(header)
        for p in report.sessions:
            if p.admitted:
                row = (str(len(p.spans)), _segments_text(p), rate_text(p.bottleneck_bps))
            else:
                row = ("-", f"[red]rejected[/]: {p.reason}", "-")
            sessions.add_row(p.name, p.service, f"{p.src} - {p.dst}", rate_text(p.rate_bps), *row)
        console.print(sessions)
        if any(p.repeater_segments for p in report.sessions):
            console.print("  (a > b: trusted-relay QKD hop; a =r= b: repeater segment through repeater r)")
            segs = Table(title="Repeater segments (BBM92 key, no repeater sees it)", title_justify="left",
                         box=box.SIMPLE_HEAD)  # fmt: skip
            for header in ("Session", "Ends", "Repeaters", "BSM stations", "Links", "Swap", "Purification",
                           "Fidelity", "Pairs/s", "Key rate"):  # fmt: skip
                segs.add_column(header)
            for p in report.sessions:
                for g in p.repeater_segments:
                    segs.add_row(
                        p.name,
                        f"{g.nodes[0]} - {g.nodes[-1]}",
                        ", ".join(g.repeaters) or "-",
                        ", ".join(g.stations) or "co-located",
                        str(len(g.repeaters) + 1),
                        g.swap_order,
                        _purification_text(g),
                        f"{g.fidelity:.3f}" if g.fidelity is not None else "-",
                        f"{g.pair_rate_hz:.3g}",
                        rate_text(g.key_rate_bps),
                    )
            console.print(segs)
    console.print(report.summary())


# ---------------------------------------------------------------------------------------------- PNG

_MARKERS: dict[str, tuple[str, float, str]] = {
    # role: (marker, size in points^2, face colour)
    "endpoint": ("o", 110.0, "#1f4e79"),
    "trusted-relay": ("s", 28.0, "#8c8c8c"),
    "repeater": ("D", 45.0, "#7b3294"),
    "bsm-station": ("^", 55.0, "#008080"),
}

_Point = tuple[float, float]


def _chain_order(topology: LabTopology) -> list[str] | None:
    """The node names along the path if the spans form one simple path through every node, else ``None``."""
    names = [n.name for n in topology.nodes]
    if len(topology.spans) != len(names) - 1:
        return None
    adjacent: dict[str, list[str]] = {n: [] for n in names}
    for s in topology.spans:
        adjacent[s.a].append(s.b)
        adjacent[s.b].append(s.a)
    if any(len(v) > 2 for v in adjacent.values()):
        return None
    start = next((n for n in names if len(adjacent[n]) <= 1), None)
    order: list[str] = []
    previous: str | None = None
    current = start
    while current is not None:
        order.append(current)
        following = [n for n in adjacent[current] if n != previous]
        previous, current = current, following[0] if following else None
    return order if len(order) == len(names) else None


def _layout(topology: LabTopology) -> tuple[dict[str, _Point], bool]:
    """Node positions: (lon, lat) when every node has coordinates; else a line for a chain, a circle
    in file order otherwise."""
    if all(n.lat is not None and n.lon is not None for n in topology.nodes):
        return {n.name: (float(n.lon or 0.0), float(n.lat or 0.0)) for n in topology.nodes}, True
    count = len(topology.nodes)
    chain = _chain_order(topology)
    if chain is not None and count > 1:
        return {name: (2.0 * i / (count - 1) - 1.0, 0.0) for i, name in enumerate(chain)}, False
    return {
        n.name: (math.sin(2 * math.pi * i / count), math.cos(2 * math.pi * i / count))
        for i, n in enumerate(topology.nodes)
    }, False


def _unit(u: float, v: float) -> _Point:
    norm = math.hypot(u, v)
    return (u / norm, v / norm) if norm > 1e-12 else (0.0, 0.0)


def _label_direction(at: _Point, neighbours: list[_Point], centre: _Point) -> _Point:
    """Where a node's name goes (a unit vector on screen): away from its spans, outwards from ``centre``.

    Opposite the mean direction of its spans when they bend; across the line, on the side away from
    the centre, when they run straight through (or the node has none).
    """
    away = _unit(at[0] - centre[0], at[1] - centre[1])
    if away == (0.0, 0.0):
        away = (0.0, 1.0)
    arms = [_unit(n[0] - at[0], n[1] - at[1]) for n in neighbours]
    sx, sy = sum(a[0] for a in arms), sum(a[1] for a in arms)
    if math.hypot(sx, sy) > 0.5:
        return _unit(-sx, -sy)
    if not arms:
        return away
    across = (-arms[0][1], arms[0][0])
    return across if across[0] * away[0] + across[1] * away[1] >= 0 else (-across[0], -across[1])


def _align(u: float, v: float) -> tuple[str, str]:
    ha = "left" if u > 0.35 else "right" if u < -0.35 else "center"
    va = "bottom" if v > 0.35 else "top" if v < -0.35 else "center"
    return ha, va


def _span_label(s: SpanPlan) -> str:
    if s.relay_hint is None:
        return f"{s.length_km:g} km"
    sites = "1 relay site" if s.relay_hint.sites == 1 else f"{s.relay_hint.sites} relay sites"
    return f"{s.length_km:g} km: {sites}"


def write_png(topology: LabTopology, report: PlanReport, path: Path) -> None:
    """Draw the network to ``path`` (PNG): spans coloured by class with their length, nodes by role.

    Nodes sit at their longitude and latitude (equirectangular, scaled by the cosine of the mean
    latitude) when every node has coordinates, otherwise on a circle in file order. Uses matplotlib's
    object-oriented API on the Agg canvas, never pyplot: no window can open and no global backend is
    switched, whoever calls it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    pos, geographic = _layout(topology)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    # ``aspect``: screen length of one unit of y per unit of x (1 / cos(latitude) on a map).
    aspect = 1.0 / max(math.cos(math.radians(sum(ys) / len(ys))), 0.1) if geographic else 1.0
    width_x = max(max(xs) - min(xs), 1e-3)
    width_y = max(max(ys) - min(ys), 1e-3)
    if geographic:
        width_in = 11.0
        height_in = min(max(width_in * width_y * aspect / width_x, 5.0), 14.0)
    elif width_y < 0.01:  # a chain on a line
        width_in, height_in = 10.0, 3.0
    else:
        width_in, height_in = 10.0, 7.0
    fig = Figure(figsize=(width_in, height_in), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    screen = {name: (x, y * aspect) for name, (x, y) in pos.items()}
    centre = (
        sum(p[0] for p in screen.values()) / len(screen),
        sum(p[1] for p in screen.values()) / len(screen),
    )
    many = len(topology.nodes) > 12

    # Spans, parallel ones side by side; the length beside the line, on the side towards the centre.
    pair_count = Counter(frozenset((s.a, s.b)) for s in report.spans)
    pair_seen: Counter[frozenset[str]] = Counter()
    for s in report.spans:
        (x1, y1), (x2, y2) = screen[s.a], screen[s.b]
        pair = frozenset((s.a, s.b))
        k, parallel = pair_seen[pair], pair_count[pair]
        pair_seen[pair] += 1
        nx_, ny_ = _unit(-(y2 - y1), x2 - x1)
        if parallel > 1:
            off = (k - (parallel - 1) / 2) * 0.015 * math.hypot(width_x, width_y * aspect)
            x1, x2, y1, y2 = x1 + nx_ * off, x2 + nx_ * off, y1 + ny_ * off, y2 + ny_ * off
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        if nx_ * (centre[0] - mx) + ny_ * (centre[1] - my) < 0:
            nx_, ny_ = -nx_, -ny_
        style = "-" if s.usable else (0, (4, 2))
        colour = _PNG_COLOUR[s.span_class]
        ax.plot([x1, x2], [y1 / aspect, y2 / aspect], color=colour, linewidth=3.0, linestyle=style, zorder=1)
        ax.annotate(
            _span_label(s),
            (mx, my / aspect),
            xytext=(nx_ * 5.0, ny_ * 5.0),
            textcoords="offset points",
            ha=_align(nx_, ny_)[0],
            va=_align(nx_, ny_)[1],
            fontsize=6.5 if many else 8,
            color="#202020",
            zorder=3,
        )

    # Nodes by role; names away from their spans.
    neighbours: dict[str, list[_Point]] = {n.name: [] for n in topology.nodes}
    for lab_span in topology.spans:
        neighbours[lab_span.a].append(screen[lab_span.b])
        neighbours[lab_span.b].append(screen[lab_span.a])
    roles_present = [r for r in _MARKERS if any(n.role == r for n in topology.nodes)]
    for role in roles_present:
        marker, size, colour = _MARKERS[role]
        members = [n for n in topology.nodes if n.role == role]
        ax.scatter(
            [pos[n.name][0] for n in members],
            [pos[n.name][1] for n in members],
            marker=marker,
            s=size,
            c=colour,
            edgecolors="black",
            linewidths=0.6,
            zorder=4,
        )
        major = role == "endpoint" or not many
        for n in members:
            u, v = _label_direction(screen[n.name], neighbours[n.name], centre)
            distance = 8.0 if major else 5.0
            ha, va = _align(u, v)
            ax.annotate(
                n.name,
                pos[n.name],
                xytext=(u * distance, v * distance),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=10 if major else 7,
                fontweight="bold" if major else "normal",
                color="black" if major else "#303030",
                zorder=5,
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7},
            )

    handles = [Line2D([], [], color=_PNG_COLOUR[c], linewidth=3.0, label=_LEGEND_TEXT[c]) for c in SpanClass]
    if any(not s.usable for s in report.spans):
        handles.append(
            Line2D(
                [], [], color="#606060", linewidth=2.0, linestyle=(0, (4, 2)), label="dashed: no key as given"
            )
        )
    handles += [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=_MARKERS[r][0],
            markersize=8 if r == "endpoint" else 6,
            markerfacecolor=_MARKERS[r][2],
            markeredgecolor="black",
            label=r,
        )
        for r in roles_present
    ]
    chain = not geographic and width_y < 0.01
    if geographic:
        ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)
    elif chain:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8)
    else:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(textwrap.fill(f"{topology.name}: {report.summary()}", 120), fontsize=9, loc="left")
    if geographic:
        ax.set_xlim(min(xs) - 0.1 * width_x, max(xs) + 0.1 * width_x)
        ax.set_ylim(min(ys) - 0.08 * width_y, max(ys) + 0.08 * width_y)
        ax.set_aspect(aspect)
        ax.set_xlabel("longitude (degrees east)")
        ax.set_ylabel("latitude (degrees north)")
        ax.grid(True, linewidth=0.3, alpha=0.5)
    else:
        ax.set_xlim(min(xs) - 0.45, max(xs) + 0.45)
        ax.set_ylim(min(ys) - 0.3, max(ys) + 0.3)
        ax.set_aspect("equal")
        ax.set_axis_off()
    # "tight" grows the picture to every label and the legend, wherever they are.
    fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.15)
