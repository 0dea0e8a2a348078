"""Lab topology files: the nodes, fibre spans and key sessions of a quantum network, validated once.

A topology file is YAML (the format is documented in ``docs/lab.md``, section "Topology files")::

    name: metro
    description: A metro ring with one span too long for QKD
    defaults: {device: {eta_det: 0.2}}
    nodes:
      - {name: A, role: endpoint, location: Amsterdam, lat: 52.37, lon: 4.90, saes: [sae-a]}
    spans:
      - {id: a-b, a: A, b: B, length_km: 30, bands: [C, O], extra_loss_db: 1.0}
    sessions:
      - {name: s1, src: A, dst: C, src_sae: sae-a, dst_sae: sae-c, rate_bps: 1000}

:func:`parse_topology` checks everything at once and returns plain frozen data; every error is a
:class:`~qsdn.errors.ConfigError` whose message names the file, the object (``node B``, ``span a-b``,
``session s1``), its place in the file (``nodes[1].role``) and the rule, e.g.
``metro.yaml: span a-b (spans[0].b): unknown node 'X'``. Its ``path`` is the key path alone.

Rules beyond the types:

* names of the topology, nodes, spans, sessions and SAEs are 1 to 32 letters, digits and ``-``, not
  starting or ending with ``-`` (an RFC 1123 host-name label): they become file, directory and host
  names. Node, span and session names must be unique ignoring case (case-insensitive file systems);
* a node's ``node_id`` (its ETSI GS QKD 015 ``qkdn_id``) is a UUID; when absent it is
  ``uuid5(NAMESPACE_URL, "qsdn:lab:<topology>:<node>")``, the same on every run;
* a node's ``device`` (decoy-state BB84 parameters, the fields of
  :class:`~qsdn.physics.bb84.DeviceParams`) starts from ``defaults.device``, itself on top of the
  ``DeviceParams`` defaults, and overrides field by field;
* SAEs live on nodes that hold key (``endpoint`` or ``trusted-relay``): a repeater or a BSM station never
  sees the key (SYSTEM.md section 1). An SAE id is declared on one node only;
* spans join two different known nodes, with ``length_km >= 0`` and ``extra_loss_db >= 0`` (default 0),
  in the bands ``C`` and/or ``O`` (default both). Parallel spans between two nodes are allowed;
* a session joins two different nodes, each SAE declared on its own node, at ``rate_bps > 0``. Its
  ``service`` is ``qkd`` (default: trusted-relay QKD only, the controller's ``create-session`` as it
  always was) or ``key`` (key over a *mixed* path: the controller may use trusted-relay QKD hops and
  repeater segments, BBM92 between the segment's ends), with an optional ``target_fidelity`` for the
  repeater segments' pairs (``key`` only, within [0.25, 1]);
* a node's optional ``entanglement`` block describes its entanglement hardware. On a ``bsm-station``
  it holds only ``detector_efficiency`` (:class:`StationSpec`; a station always has one, with the
  defaults when the block is absent); on any other node the quantum memories (:class:`MemorySpec`:
  ``memories``, ``coherence_time_s``, ``swap_success``, ``initial_fidelity``, ``modes``). A repeater
  always has memories (the defaults when the block is absent); an endpoint or trusted relay has
  memories (and so terminates entanglement) only when it has the block, ``entanglement: {}`` for the
  defaults. The defaults are those of the controller's ``MemoryParams`` and ``StationParams``;
* a ``bsm-station`` heralds pairs between two memory nodes: it ends at least two spans and every node
  at their other ends has memories.
"""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from qsdn.configfile import YamlReader
from qsdn.errors import ConfigError
from qsdn.physics.bb84 import DeviceParams
from qsdn.physics.loss import Band

__all__ = [
    "KEY_ROLES",
    "MEMORY_FIELDS",
    "ROLES",
    "SERVICES",
    "LabNode",
    "LabSession",
    "LabSpan",
    "LabTopology",
    "MemorySpec",
    "NodeRole",
    "SessionService",
    "StationSpec",
    "load_topology",
    "node_uuid",
    "parse_topology",
]

NodeRole = Literal["endpoint", "trusted-relay", "repeater", "bsm-station"]
#: Every node role, in the order the documentation lists them.
ROLES: tuple[NodeRole, ...] = get_args(NodeRole)
#: Roles of nodes that hold key and may therefore host SAEs (and act as trusted relays).
KEY_ROLES: frozenset[NodeRole] = frozenset(("endpoint", "trusted-relay"))
SessionService = Literal["qkd", "key"]
#: Session services: trusted-relay QKD only, or key over trusted relays and repeater segments.
SERVICES: tuple[SessionService, ...] = get_args(SessionService)

# An RFC 1123 host-name label cut to 32 characters: usable as a file name and a host name.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?")
_NAME_RULE = "1 to 32 letters, digits and '-', not starting or ending with '-'"
_DEVICE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DeviceParams))


@dataclass(frozen=True)
class MemorySpec:
    """The quantum memories of a node that holds entanglement (SYSTEM.md section 4).

    The defaults are the controller's ``controller.model.MemoryParams`` (a plausible near-term repeater
    node): every field can be set per node in its ``entanglement`` block.

    Attributes:
        memories: qubit memories the node offers (a repeater holds two per session it carries).
        coherence_time_s: depolarising coherence time ``T`` of a stored qubit, seconds.
        swap_success: probability that the node's Bell measurement (entanglement swap) succeeds.
        initial_fidelity: fidelity of a freshly heralded elementary pair ending at the node.
        modes: multiplexed modes per generation attempt.
    """

    memories: int = 2
    coherence_time_s: float = 1.0
    swap_success: float = 1.0
    initial_fidelity: float = 0.98
    modes: int = 1


@dataclass(frozen=True)
class StationSpec:
    """A Bell-state-measurement station; the default is the controller's ``StationParams``.

    Attributes:
        detector_efficiency: efficiency of the station's single-photon detectors (0, 1].
    """

    detector_efficiency: float = 0.9


#: The keys of a memory node's ``entanglement`` block, in the order of :class:`MemorySpec`.
MEMORY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MemorySpec))


@dataclass(frozen=True)
class LabNode:
    """A node of the lab.

    Attributes:
        name: the node's name, unique in the topology (file, host and message name).
        role: what the node does in the network.
        node_id: its ``qkdn_id`` (uuid, lower case).
        location: free text for people (a city, a building), or ``None``.
        lat, lon: WGS 84 degrees, both or neither.
        device: the decoy-state BB84 hardware of the node.
        saes: the SAE ids (encryptors) the node's key manager serves.
        memory: its quantum memories; ``None`` when it has none (it then never holds entanglement).
        station: its Bell-state-measurement station (``bsm-station`` nodes only, else ``None``).
    """

    name: str
    role: NodeRole
    node_id: str
    location: str | None
    lat: float | None
    lon: float | None
    device: DeviceParams
    saes: tuple[str, ...]
    memory: MemorySpec | None = None
    station: StationSpec | None = None

    @property
    def holds_key(self) -> bool:
        """Whether the node holds key (endpoint or trusted relay): it may host SAEs and a KME."""
        return self.role in KEY_ROLES

    @property
    def quantum_device(self) -> bool:
        """Whether the node has entanglement hardware (memories or a station): it needs the medium."""
        return self.memory is not None or self.station is not None


@dataclass(frozen=True)
class LabSpan:
    """A fibre span between the nodes named ``a`` and ``b`` (undirected)."""

    span_id: str
    a: str
    b: str
    length_km: float
    bands: tuple[str, ...]
    extra_loss_db: float


@dataclass(frozen=True)
class LabSession:
    """A key session the lab provisions: SAE ``src_sae`` on node ``src`` to ``dst_sae`` on ``dst``.

    ``service`` ``qkd``: trusted-relay QKD only; ``key``: the controller may also use repeater segments
    (``target_fidelity``: the fidelity their pairs need, ``None`` for the BBM92 threshold alone).
    """

    name: str
    src: str
    dst: str
    src_sae: str
    dst_sae: str
    rate_bps: int
    service: SessionService = "qkd"
    target_fidelity: float | None = None


@dataclass(frozen=True)
class LabTopology:
    """A validated topology file: nodes, spans and sessions in file order."""

    name: str
    description: str
    nodes: tuple[LabNode, ...]
    spans: tuple[LabSpan, ...]
    sessions: tuple[LabSession, ...]
    source: str
    _by_name: Mapping[str, LabNode] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})

    def node(self, name: str) -> LabNode:
        """The node called ``name``; ``KeyError`` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"topology {self.name} has no node {name!r}") from None

    def spans_of(self, name: str) -> list[LabSpan]:
        """The spans that end at the node called ``name``, in file order."""
        return [s for s in self.spans if name in (s.a, s.b)]

    def neighbours(self, name: str) -> list[str]:
        """The nodes at the other end of the spans of ``name``, in span order, each once."""
        out: list[str] = []
        for s in self.spans_of(name):
            other = s.b if s.a == name else s.a
            if other not in out:
                out.append(other)
        return out

    @property
    def quantum_devices(self) -> tuple[LabNode, ...]:
        """The nodes with entanglement hardware (memories or a station), in file order."""
        return tuple(n for n in self.nodes if n.quantum_device)

    @property
    def needs_medium(self) -> bool:
        """Whether a running lab needs the entanglement medium: it has a repeater or a BSM station."""
        return any(n.role in ("repeater", "bsm-station") for n in self.nodes)

    def segment_partners(self, name: str) -> list[str]:
        """The key-holding nodes reachable from ``name`` through repeaters and BSM stations only.

        These are the possible other ends of a repeater segment starting at ``name`` (a key link with
        BBM92 key between the two, nothing in between holding key), in breadth-first order.
        """
        seen = {name}
        queue = [name]
        out: list[str] = []
        while queue:
            here = queue.pop(0)
            for other in self.neighbours(here):
                if other in seen:
                    continue
                seen.add(other)
                node = self.node(other)
                if node.holds_key:
                    if here != name:  # a direct span is a QKD hop, not a repeater segment
                        out.append(other)
                else:
                    queue.append(other)
        return out


def node_uuid(topology: str, node: str) -> str:
    """The default ``node_id`` of node ``node`` in topology ``topology``: stable across runs."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"qsdn:lab:{topology}:{node}"))


# ------------------------------------------------------------------------------------------ reading


class _Reader(YamlReader):
    """A :class:`YamlReader` whose errors also name the object being read (``node B``, ``span a-b``)."""

    def __init__(self, data: Any, where: str, source: str, label: str | None = None) -> None:
        self.label = label
        if label is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {label} ({where}): must be a mapping", path=where)
        super().__init__(data, where, source)

    def fail(self, key: str, why: str) -> ConfigError:
        if self.label is None:
            return super().fail(key, why)
        path = self._name(key)
        return ConfigError(f"{self.source}: {self.label} ({path}): {why}", path=path)

    def sub(self, key: str, *, required: bool = False) -> _Reader:
        return _Reader(self.get(key, {}, required=required), self._name(key), self.source, self.label)


def _items(r: _Reader, key: str) -> list[_Reader]:
    v = r.get(key, [])
    if not isinstance(v, list):
        raise r.fail(key, "must be a list")
    return [_Reader(x, f"{r._name(key)}[{i}]", r.source) for i, x in enumerate(v)]


def _name(r: _Reader, key: str, what: str) -> str:
    v: str = r.text(key, required=True)
    if not _NAME.fullmatch(v):
        raise r.fail(key, f"{what} {v!r} is not usable: {_NAME_RULE} (it names files and hosts)")
    return v


def _number(
    r: _Reader, key: str, default: float | None = None, *, lo: float = -math.inf, hi: float = math.inf
) -> float:
    v = r.get(key, default, required=default is None)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise r.fail(key, f"must be a number, got {v!r}")
    value = float(v)
    if not math.isfinite(value) or not lo <= value <= hi:
        if math.isinf(lo) and math.isinf(hi):
            rule = "a finite number"
        elif math.isinf(hi):
            rule = f"a finite number >= {lo:g}"
        else:
            rule = f"between {lo:g} and {hi:g}"
        raise r.fail(key, f"must be {rule}, got {v!r}")
    return value


def _string_list(r: _Reader, key: str, default: list[str]) -> list[str]:
    v = r.get(key, default)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise r.fail(key, f"must be a list of strings, got {v!r}")
    return list(v)


def _device(r: _Reader, base: DeviceParams) -> DeviceParams:
    """``base`` with the fields ``r`` sets; out-of-range values are reported at their key."""
    values = {name: _number(r, name) for name in _DEVICE_FIELDS if r.get(name) is not None}
    r.done()
    try:
        return dataclasses.replace(base, **values)
    except ConfigError as exc:
        key = exc.first.path or ""
        raise r.fail(key, f"device parameter {key} out of range: {values.get(key)!r}") from None


def _node(r: _Reader, topology: str, base_device: DeviceParams) -> LabNode:
    name = _name(r, "name", "node name")
    r.label = f"node {name}"
    role = r.text("role", "endpoint")
    if role not in ROLES:
        raise r.fail("role", f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    given_id = r.text("node_id")
    if given_id is None:
        node_id = node_uuid(topology, name)
    else:
        try:
            node_id = str(uuid.UUID(given_id))
        except ValueError:
            raise r.fail("node_id", f"{given_id!r} is not a UUID") from None
    location = r.text("location")
    lat = _number(r, "lat", lo=-90.0, hi=90.0) if r.get("lat") is not None else None
    lon = _number(r, "lon", lo=-180.0, hi=180.0) if r.get("lon") is not None else None
    if (lat is None) != (lon is None):
        missing = "lon" if lon is None else "lat"
        raise r.fail(missing, "lat and lon go together: give both or neither")
    device = _device(r.sub("device"), base_device)
    saes = _string_list(r, "saes", [])
    for sae in saes:
        if not _NAME.fullmatch(sae):
            raise r.fail("saes", f"SAE id {sae!r} is not usable: {_NAME_RULE} (it names files)")
    if len(set(saes)) != len(saes):
        twice = next(s for s in saes if saes.count(s) > 1)
        raise r.fail("saes", f"SAE {twice!r} is listed twice")
    if saes and role not in KEY_ROLES:
        raise r.fail("saes", f"a {role} never holds key: SAEs belong on endpoint or trusted-relay nodes")
    memory, station = _entanglement(r, role)
    r.done()
    return LabNode(name, role, node_id, location, lat, lon, device, tuple(saes), memory, station)


def _entanglement(r: _Reader, role: str) -> tuple[MemorySpec | None, StationSpec | None]:
    """The node's entanglement hardware from its ``entanglement`` block and its role's defaults."""
    given = r.get("entanglement") is not None
    e = r.sub("entanglement")
    if role == "bsm-station":
        for key in MEMORY_FIELDS:
            if e.get(key) is not None:
                raise e.fail(key, "a bsm-station has no quantum memories (only detector_efficiency)")
        eff = _number(e, "detector_efficiency", 0.9, lo=0.0, hi=1.0)
        if eff == 0.0:
            raise e.fail("detector_efficiency", "must be between 0 (excluded) and 1, got 0")
        e.done()
        return None, StationSpec(eff)
    if e.get("detector_efficiency") is not None:
        raise e.fail("detector_efficiency", f"only a bsm-station has detectors, not a {role}")
    if not given and role != "repeater":
        e.done()
        return None, None
    d = MemorySpec()
    memories = _integer(e, "memories", d.memories, lo=1)
    coherence = _number(e, "coherence_time_s", d.coherence_time_s, lo=0.0)
    if coherence == 0.0:
        raise e.fail("coherence_time_s", "must be a finite number > 0 (seconds), got 0")
    swap = _number(e, "swap_success", d.swap_success, lo=0.0, hi=1.0)
    if swap == 0.0:
        raise e.fail("swap_success", "must be between 0 (excluded) and 1, got 0")
    fidelity = _number(e, "initial_fidelity", d.initial_fidelity, lo=0.25, hi=1.0)
    modes = _integer(e, "modes", d.modes, lo=1)
    e.done()
    return MemorySpec(memories, coherence, swap, fidelity, modes), None


def _integer(r: _Reader, key: str, default: int, *, lo: int, hi: int = 1_000_000) -> int:
    v = r.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise r.fail(key, f"must be an integer between {lo} and {hi}, got {v!r}")
    return v


def _span(r: _Reader, nodes: Mapping[str, LabNode]) -> LabSpan:
    span_id = _name(r, "id", "span id")
    r.label = f"span {span_id}"
    ends: list[str] = []
    for key in ("a", "b"):
        end: str = r.text(key, required=True)
        if end not in nodes:
            raise r.fail(key, f"unknown node {end!r}")
        ends.append(end)
    a, b = ends
    if a == b:
        raise r.fail("b", f"both ends are node {a} (self-loop)")
    length_km = _number(r, "length_km", lo=0.0)
    extra_loss_db = _number(r, "extra_loss_db", 0.0, lo=0.0)
    bands: list[str] = []
    for name in _string_list(r, "bands", ["C", "O"]):
        try:
            band = Band.parse(name).value
        except ValueError:
            raise r.fail("bands", f"unknown band {name!r}: expected C or O") from None
        if band in bands:
            raise r.fail("bands", f"band {band} is listed twice")
        bands.append(band)
    if not bands:
        raise r.fail("bands", "at least one band (C or O) is needed")
    r.done()
    return LabSpan(span_id, a, b, length_km, tuple(bands), extra_loss_db)


def _session(r: _Reader, nodes: Mapping[str, LabNode]) -> LabSession:
    name = _name(r, "name", "session name")
    r.label = f"session {name}"
    ends: list[str] = []
    saes: list[str] = []
    for key in ("src", "dst"):
        end: str = r.text(key, required=True)
        if end not in nodes:
            raise r.fail(key, f"unknown node {end!r}")
        ends.append(end)
    if ends[0] == ends[1]:
        raise r.fail("dst", f"src and dst are the same node {ends[0]}")
    for key, end in (("src_sae", ends[0]), ("dst_sae", ends[1])):
        sae: str = r.text(key, required=True)
        declared = nodes[end].saes
        if sae not in declared:
            has = f"it declares {', '.join(declared)}" if declared else "it declares none"
            raise r.fail(key, f"SAE {sae!r} is not declared on node {end} ({has})")
        saes.append(sae)
    rate_bps: int = r.int("rate_bps")
    if rate_bps <= 0:
        raise r.fail("rate_bps", f"must be an integer > 0, got {rate_bps}")
    service = r.text("service", "qkd")
    if service not in SERVICES:
        raise r.fail("service", f"unknown service {service!r}: expected one of {', '.join(SERVICES)}")
    target_fidelity = None
    if r.get("target_fidelity") is not None:
        if service != "key":
            raise r.fail("target_fidelity", "only a key session (service: key) crosses repeaters")
        target_fidelity = _number(r, "target_fidelity", lo=0.25, hi=1.0)
    r.done()
    return LabSession(name, ends[0], ends[1], saes[0], saes[1], rate_bps, service, target_fidelity)


def _check_stations(readers: list[_Reader], topo: LabTopology) -> None:
    """Every BSM station joins at least two spans, each to a node with quantum memories."""
    for r, node in zip(readers, topo.nodes, strict=True):
        if node.role != "bsm-station":
            continue
        r.label = f"node {node.name}"
        neighbours = topo.neighbours(node.name)
        if len(neighbours) < 2:
            raise r.fail(
                "role",
                f"a bsm-station heralds pairs between two memory nodes: it needs spans to at least two "
                f"nodes, it has {len(neighbours)}",
            )
        for other in neighbours:
            peer = topo.node(other)
            if peer.memory is None:
                raise r.fail(
                    "role",
                    f"a bsm-station heralds pairs between memory nodes, but its neighbour {other} "
                    f"({peer.role}) has no quantum memories (give it an entanglement block)",
                )


def _unique(r: _Reader, key: str, value: str, seen: dict[str, str], what: str) -> None:
    """Fail if ``value`` (compared ignoring case) is already in ``seen``; remember where it was."""
    other = seen.get(value.casefold())
    if other is not None:
        raise r.fail(key, f"duplicate {what} {value!r}: {other} already has it")
    seen[value.casefold()] = f"{r.label} ({r.where})" if r.label else r.where


def parse_topology(data: Any, source: str = "topology.yaml") -> LabTopology:
    """Validate the parsed YAML ``data`` of a topology file (named ``source`` in errors)."""
    top = _Reader(data, "", source)
    name = _name(top, "name", "topology name")
    description = top.text("description", "")
    defaults = top.sub("defaults")
    node_readers = _items(top, "nodes")
    span_readers = _items(top, "spans")
    session_readers = _items(top, "sessions")
    top.done()
    base_device = _device(defaults.sub("device"), DeviceParams())
    defaults.done()
    if not node_readers:
        raise top.fail("nodes", "at least one node is required")

    nodes: dict[str, LabNode] = {}
    seen_names: dict[str, str] = {}
    seen_ids: dict[str, str] = {}
    sae_owner: dict[str, str] = {}
    for r in node_readers:
        node = _node(r, name, base_device)
        _unique(r, "name", node.name, seen_names, "node name")
        _unique(r, "node_id", node.node_id, seen_ids, "node_id")
        for sae in node.saes:
            if sae in sae_owner:
                raise r.fail("saes", f"SAE {sae!r} is already declared on node {sae_owner[sae]}")
            sae_owner[sae] = node.name
        nodes[node.name] = node

    spans: list[LabSpan] = []
    seen_spans: dict[str, str] = {}
    for r in span_readers:
        span = _span(r, nodes)
        _unique(r, "id", span.span_id, seen_spans, "span id")
        spans.append(span)

    sessions: list[LabSession] = []
    seen_sessions: dict[str, str] = {}
    for r in session_readers:
        session = _session(r, nodes)
        _unique(r, "name", session.name, seen_sessions, "session name")
        sessions.append(session)

    topo = LabTopology(name, description, tuple(nodes.values()), tuple(spans), tuple(sessions), source)
    _check_stations(node_readers, topo)
    return topo


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in a mapping is an error, not an overwrite."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "in a mapping", node.start_mark, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_topology(path: Path) -> LabTopology:
    """Read and validate the topology file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_topology(data, str(path))
