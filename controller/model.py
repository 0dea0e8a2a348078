"""The controller's view of the network: nodes, fibre spans, rate reservations, the topology.

Plain frozen data, validated on construction, no I/O. Every validation error is a
:class:`~qsdn.errors.ConfigError` whose message names the node or span and the rule it breaks, and whose
``path`` locates the offending field (``nodes/<id>/node_id``, ``spans/<id>/a``...).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import networkx as nx

from qsdn.errors import ConfigError
from qsdn.physics.bb84 import DeviceParams
from qsdn.physics.loss import Band

__all__ = [
    "ENTANGLEMENT_ROLES",
    "MemoryParams",
    "Node",
    "NodeRole",
    "Reservation",
    "Span",
    "StationParams",
    "Topology",
]

#: ``endpoint`` and ``relay`` hold key (a trusted one may relay it); ``repeater`` (quantum memories,
#: entanglement swapping) and ``bsm-station`` (a Bell-state measurement between two memory nodes) never
#: see key (SYSTEM.md section 1), the roles of ``qsdn/lab/topology.py``.
NodeRole = Literal["endpoint", "relay", "repeater", "bsm-station"]
#: Roles of entanglement devices: never trusted, never relay key.
ENTANGLEMENT_ROLES: frozenset[str] = frozenset(("repeater", "bsm-station"))

# RFC 4122 text form, the YANG ``yang:uuid`` pattern (ETSI 015 ``qkdn_id``).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ROLES: frozenset[str] = frozenset(("endpoint", "relay", "repeater", "bsm-station"))


def _finite_non_negative(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def _in_range(value: object, lo: float, hi: float, *, lo_open: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return (lo < value if lo_open else lo <= value) and value <= hi


@dataclass(frozen=True, slots=True)
class MemoryParams:
    """Quantum memories of a node that can hold entanglement (a repeater, or an endpoint or trusted relay
    that terminates entanglement). Used by :mod:`controller.entanglement`.

    The defaults describe a plausible near-term repeater node (trapped-ion or NV class, one memory per
    side of the chain, a deterministic Bell measurement on the memories); every one can be overridden
    per node.

    Attributes:
        memories: qubit memories the node offers; sessions share them (a repeater in a chain holds two per
            session, an end node one plus one per purification round).
        coherence_s: depolarising coherence time ``T`` of a stored qubit (SYSTEM.md section 4:
            ``F(t) = 1/4 + (F0 - 1/4) exp(-n t / T)``). Default 1 s.
        swap_success: probability ``a`` that the node's Bell measurement (entanglement swap) succeeds;
            1 for a deterministic gate-based swap, 1/2 for a linear-optics one. Default 1.
        initial_fidelity: fidelity ``F0`` of a freshly heralded elementary pair ending at this node (a link's
            ``F0`` is the smaller of its two ends'). Default 0.98.
        modes: multiplexed modes per attempt (``1 - (1 - p)^M``, SYSTEM.md section 4). Default 1.
    """

    memories: int = 2
    coherence_s: float = 1.0
    swap_success: float = 1.0
    initial_fidelity: float = 0.98
    modes: int = 1

    def check(self, label: str, where: str) -> None:
        """Raise :class:`ConfigError` naming the node ``label`` if a parameter is out of range."""
        rules: tuple[tuple[str, bool, str], ...] = (
            ("memories", isinstance(self.memories, int) and not isinstance(self.memories, bool)
             and 0 <= self.memories <= 1_000_000, "an integer >= 0"),
            ("coherence_s", _in_range(self.coherence_s, 0.0, math.inf, lo_open=True)
             or self.coherence_s == math.inf, "a number > 0 (seconds)"),
            ("swap_success", _in_range(self.swap_success, 0.0, 1.0, lo_open=True), "within (0, 1]"),
            ("initial_fidelity", _in_range(self.initial_fidelity, 0.25, 1.0), "within [0.25, 1]"),
            ("modes", isinstance(self.modes, int) and not isinstance(self.modes, bool)
             and 1 <= self.modes <= 1_000_000, "an integer >= 1"),
        )  # fmt: skip
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(
                    f"node {label}: entanglement {name} must be {rule}, got {getattr(self, name)!r}",
                    path=f"{where}/entanglement/{name}",
                )


@dataclass(frozen=True, slots=True)
class StationParams:
    """A Bell-state-measurement station (a ``bsm-station`` node, or the one co-located at a span's end).

    Attributes:
        detector_efficiency: efficiency of the station's single-photon detectors; it multiplies each
            photon's transmittance in the heralding probability ``p = eta_A eta_B / 2`` (Barrett-Kok).
            Default 0.9 (superconducting nanowire detectors).
    """

    detector_efficiency: float = 0.9

    def check(self, label: str, where: str) -> None:
        if not _in_range(self.detector_efficiency, 0.0, 1.0, lo_open=True):
            raise ConfigError(
                f"node {label}: entanglement detector_efficiency must be within (0, 1], "
                f"got {self.detector_efficiency!r}",
                path=f"{where}/entanglement/detector_efficiency",
            )


@dataclass(frozen=True, slots=True)
class Node:
    """A QKD node.

    Attributes:
        node_id: the node's ``qkdn_id`` (uuid).
        name: a human-readable name used in messages.
        trusted: whether the node may act as a trusted relay (key exposed inside it).
        role: ``"endpoint"`` (hosts SAEs) or ``"relay"`` (relay site only): relaying key depends on
            ``trusted`` alone. ``"repeater"`` and ``"bsm-station"`` are entanglement devices: they never
            hold key, so they must not be ``trusted``.
        memory: the node's quantum memories, ``None`` when it has none. A repeater without explicit
            parameters gets the :class:`MemoryParams` defaults; an endpoint or relay terminates
            entanglement only when it has memories.
        station: the Bell-state-measurement parameters of a ``bsm-station`` (defaults when omitted);
            ``None`` for every other role.
    """

    node_id: str
    name: str
    trusted: bool = True
    role: NodeRole = "endpoint"
    memory: MemoryParams | None = None
    station: StationParams | None = None

    def __post_init__(self) -> None:
        where = f"nodes/{self.node_id}"
        if not isinstance(self.node_id, str) or not _UUID.fullmatch(self.node_id):
            raise ConfigError(f"node {self.node_id!r}: node_id must be a uuid", path=f"{where}/node_id")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"node {self.node_id}: name must be a non-empty string", path=f"{where}/name")
        label = f"{self.name} ({self.node_id})"
        if self.role not in _ROLES:
            raise ConfigError(
                f"node {label}: role must be 'endpoint', 'relay', 'repeater' or 'bsm-station', "
                f"got {self.role!r}",
                path=f"{where}/role",
            )
        if self.role in ENTANGLEMENT_ROLES and self.trusted:
            raise ConfigError(
                f"node {label}: a {self.role} never holds key, so it cannot be trusted (SYSTEM.md section 1)",
                path=f"{where}/trusted",
            )
        if self.role == "bsm-station":
            if self.memory is not None:
                raise ConfigError(
                    f"node {label}: a bsm-station has no quantum memories", path=f"{where}/entanglement"
                )
            if self.station is None:
                object.__setattr__(self, "station", StationParams())
        elif self.station is not None:
            raise ConfigError(
                f"node {label}: only a bsm-station has station parameters", path=f"{where}/entanglement"
            )
        if self.role == "repeater" and self.memory is None:
            object.__setattr__(self, "memory", MemoryParams())
        if self.memory is not None:
            if not isinstance(self.memory, MemoryParams):
                raise ConfigError(f"node {label}: memory must be MemoryParams", path=f"{where}/entanglement")
            self.memory.check(label, where)
        if self.station is not None:
            if not isinstance(self.station, StationParams):
                raise ConfigError(
                    f"node {label}: station must be StationParams", path=f"{where}/entanglement"
                )
            self.station.check(label, where)


@dataclass(frozen=True, slots=True)
class Span:
    """A fibre span between two nodes, undirected.

    Attributes:
        span_id: identifier of the span (the PHYS link's ``qkdl_id`` once provisioned).
        a, b: the node ids at the two ends.
        length_km: fibre length.
        extra_loss_db: connector, splice and patch-panel loss on top of the fibre attenuation.
        bands: the bands in which a quantum channel can run on this fibre (``"O"``: a lit fibre shared
            through DWDM; ``"C"``: a dark fibre). Normalised to upper case.
        device: the QKD system that would run on the span.
    """

    span_id: str
    a: str
    b: str
    length_km: float
    extra_loss_db: float = 0.0
    bands: tuple[str, ...] = ("C", "O")
    device: DeviceParams = field(default_factory=DeviceParams)

    def __post_init__(self) -> None:
        where = f"spans/{self.span_id}"
        if not isinstance(self.span_id, str) or not self.span_id.strip():
            raise ConfigError(f"span {self.span_id!r}: span_id must be a non-empty string", path=where)
        if self.a == self.b:
            raise ConfigError(
                f"span {self.span_id}: both ends are node {self.a} (self-loop)", path=f"{where}/b"
            )
        if not _finite_non_negative(self.length_km):
            raise ConfigError(
                f"span {self.span_id}: length_km must be a finite number >= 0, got {self.length_km!r}",
                path=f"{where}/length_km",
            )
        if not _finite_non_negative(self.extra_loss_db):
            raise ConfigError(
                f"span {self.span_id}: extra_loss_db must be a finite number >= 0, "
                f"got {self.extra_loss_db!r}",
                path=f"{where}/extra_loss_db",
            )
        if not isinstance(self.device, DeviceParams):
            raise ConfigError(f"span {self.span_id}: device must be DeviceParams", path=f"{where}/device")
        bands: list[str] = []
        for name in self.bands:
            try:
                band = Band.parse(name).value
            except (ValueError, AttributeError):
                raise ConfigError(
                    f"span {self.span_id}: unknown band {name!r}, expected 'C' or 'O'", path=f"{where}/bands"
                ) from None
            if band in bands:
                raise ConfigError(f"span {self.span_id}: band {band} listed twice", path=f"{where}/bands")
            bands.append(band)
        if not bands:
            raise ConfigError(f"span {self.span_id}: at least one band is needed", path=f"{where}/bands")
        object.__setattr__(self, "bands", tuple(bands))

    def other(self, node_id: str) -> str:
        """The node at the other end of the span from ``node_id``."""
        return self.b if node_id == self.a else self.a


@dataclass(frozen=True, slots=True)
class Reservation:
    """Key rate a session holds on one span (trusted relay: each hop carries the session's rate)."""

    session_id: str
    span_id: str
    rate_bps: float

    def __post_init__(self) -> None:
        if not _finite_non_negative(self.rate_bps):
            raise ConfigError(
                f"reservation of session {self.session_id} on span {self.span_id}: "
                f"rate_bps must be a finite number >= 0, got {self.rate_bps!r}",
                path=f"reservations/{self.session_id}/{self.span_id}/rate_bps",
            )


@dataclass(frozen=True, eq=False)
class Topology:
    """Nodes and spans, checked for consistency; read-only once built.

    The mappings are keyed by ``node_id`` and ``span_id``. Equality is identity: a topology is a
    snapshot, and derived structures (the networkx graph here, the path-computation index in
    :mod:`controller.pathcomp`) are cached per snapshot.
    """

    nodes: Mapping[str, Node]
    spans: Mapping[str, Span]

    def __post_init__(self) -> None:
        nodes = dict(self.nodes)
        spans = dict(self.spans)
        for key, node in nodes.items():
            if not isinstance(node, Node):
                raise ConfigError(f"node {key}: not a Node", path=f"nodes/{key}")
            if key != node.node_id:
                raise ConfigError(
                    f"node {node.name}: keyed {key!r} but its node_id is {node.node_id!r}",
                    path=f"nodes/{key}",
                )
        for key, span in spans.items():
            if not isinstance(span, Span):
                raise ConfigError(f"span {key}: not a Span", path=f"spans/{key}")
            if key != span.span_id:
                raise ConfigError(
                    f"span {span.span_id}: keyed {key!r} but its span_id is {span.span_id!r}",
                    path=f"spans/{key}",
                )
            for end, node_id in (("a", span.a), ("b", span.b)):
                if node_id not in nodes:
                    raise ConfigError(
                        f"span {span.span_id}: end {end} is unknown node {node_id!r}",
                        path=f"spans/{key}/{end}",
                    )
        object.__setattr__(self, "nodes", MappingProxyType(nodes))
        object.__setattr__(self, "spans", MappingProxyType(spans))

    @classmethod
    def build(cls, nodes: Iterable[Node], spans: Iterable[Span]) -> Topology:
        """A topology from sequences, rejecting duplicate node or span ids (the error names them)."""
        node_map: dict[str, Node] = {}
        for node in nodes:
            if node.node_id in node_map:
                raise ConfigError(
                    f"node {node.node_id} defined twice ({node_map[node.node_id].name!r} and {node.name!r})",
                    path=f"nodes/{node.node_id}",
                )
            node_map[node.node_id] = node
        span_map: dict[str, Span] = {}
        for span in spans:
            if span.span_id in span_map:
                raise ConfigError(f"span {span.span_id} defined twice", path=f"spans/{span.span_id}")
            span_map[span.span_id] = span
        return cls(node_map, span_map)

    def node_label(self, node_id: str) -> str:
        """``name`` of a node for messages (the id itself if the node is unknown)."""
        node = self.nodes.get(node_id)
        return node.name if node is not None else node_id

    @functools.cached_property
    def graph(self) -> Any:
        """A frozen ``networkx.MultiGraph``: nodes carry ``node``; edges, keyed by span id, carry ``span``.

        Built once per topology, in sorted id order so that iteration is deterministic.
        """
        g = nx.MultiGraph()
        for node_id in sorted(self.nodes):
            g.add_node(node_id, node=self.nodes[node_id])
        for span_id in sorted(self.spans):
            span = self.spans[span_id]
            g.add_edge(span.a, span.b, key=span_id, span=span)
        return nx.freeze(g)
