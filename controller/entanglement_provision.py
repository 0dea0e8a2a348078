"""Provisioning plans for entanglement and mixed key sessions: per-node configuration (pure).

From an :class:`~controller.entanglement.EntanglementPlan` this builds what every node of the path needs in
``qsdn-entanglement`` (yang/README.md, the A - R - B chain of ``tests/conformance/instances/valid/
entanglement-chain-*``) and, for key, in ETSI GS QKD 015:

* every **repeater segment** (an entanglement segment of the plan) gets

  - one ``elementary_link`` per hop, the same ``link_id`` at both ends, ``remote_qkdn_id`` the other end,
    ``station_qkdn_id`` the BSM station in the middle (absent when co-located), the fibre length and C-band
    loss, the modes both ends can use, ``heralding barrett-kok`` (the planner's model) and the fresh pair
    fidelity;
  - one ``session`` on each end and each repeater, with one ``session_id``: ``role`` end or repeater, both
    ends, the ordered ``path`` (ends and repeaters; stations belong to links), ``prev_hop``/``next_hop``
    with ``prev_link_id``/``next_link_id`` (the session's own elementary link of that hop, the same id at
    both of its ends) and ``prev_memories``/``next_memories`` (exactly the memories the plan reserves for
    the session at that node: ``1 + rounds`` at an end, 1 per side at a repeater), the plan's swap
    order (``nested`` with every repeater's ``swap_round``: the repeater at position ``i`` of the chain
    swaps in round ``1 + v2(i)``, ``v2`` the number of trailing zero bits; a single link has no swap and
    is written ``asap``), the end-to-end purification, a cut-off (the shortest coherence time
    of the segment's memories: a pair stored that long has lost ``1 - 1/e`` of its Werner parameter), the
    target fidelity and pair rate, and the application: ``pairs`` for the entanglement service, where
    each end's ``clients`` names the application there (``src_sae`` at the source, ``dst_sae`` at the
    destination, when given), or ``bbm92-key`` for key, where the two ends carry ``key_qkdl_id``;

* for **key**, the relay layer is :func:`controller.provision.plan_session` over the key-holding nodes
  (the two ends and the trusted relays): a QKD segment is a hop over its span's PHYS link, exactly as for
  today's trusted-relay sessions; a repeater segment is a hop over its *key link*, a VIRT
  ``qkd_link`` between the segment's two ends with no ``virt_prev_hop``/``virt_next_hop`` (nothing is
  relayed inside it), which is the ``key_qkdl_id`` of the segment's session. The CLIENT applications at
  the two ends (ETSI 014 for the session's SAEs) are backed by that key link when one repeater segment
  joins them, and by the end-to-end VIRT link through the trusted relays otherwise (INTERNAL applications
  on each relay, on the PHYS or key link of each adjacent hop).

Repeaters and BSM stations never get a key link, a ``qkd_app`` or ``key_qkdl_id``: the only key-bearing
configuration is on key-holding nodes, which are the plan's ``key_visible_to``.

**Who owns what.** Elementary links, sessions and key links belong to the session: their ids are derived
from the session id, its generation and the segment (UUID v5, like the trusted-relay ids), so planning
twice gives the same configuration and the removal plan takes away exactly what the session added. A
node's entanglement *hardware* (``memories``, ``sources``, ``bsm_station``) belongs to the node: when a
node's configuration already carries ``memories`` the controller never touches them; when it does not
(``nodes_with_memories``), the controller writes them from its own topology (the orchestrator's
``entanglement`` parameters: ``count``, ``coherence_time_s``), as node configuration that stays when the
session goes, like a span's PHYS link. BSM stations get no configuration from a session (a station serves
any link heralded through it and has no per-session state in the model). Which memories a session holds
is the controller's bookkeeping (the plan's memory reservation, kept in its store), and each node's
session says the same (``prev_memories``/``next_memories``): the node model refuses sessions that add
up to more than ``memories/count``, and the driver uses no more than that.

**Two sessions over one span** each get their own elementary links (ids derived from the session), named
by both ends of every hop; they share the fibre, never an elementary link, so removing one session takes
away only its own links.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lxml import etree

from controller.entanglement import (
    KEY_FIDELITY,
    ElementaryLink,
    EntanglementPlan,
    Segment,
)
from controller.model import Topology
from controller.provision import (
    NC_NS,
    NODE_NS,
    HopPlan,
    SessionPlan,
    SessionSpec,
    combine,
    derived_id,
    plan_session,
)
from qsdn.errors import QsdnError
from qsdn.netconf.xml import ns_map

__all__ = [
    "ENT_NS",
    "EntanglementSpec",
    "elementary_link_id",
    "key_link_id",
    "plan_entanglement_session",
    "plan_from_json",
    "plan_to_json",
    "segment_session_id",
    "swap_rounds",
]

ENT_NS = "urn:qsdn:yang:qsdn-entanglement"
#: Longest coherence time written to a node (``duration-s`` is a decimal64 with 9 fraction digits).
_MAX_DURATION_S = 1e9


@dataclass(frozen=True)
class EntanglementSpec:
    """What a session asks for, beyond its plan.

    Attributes:
        session_id: the controller's session id.
        service: ``entanglement`` (pairs to the ends) or ``key`` (BBM92 key and trusted relays).
        src_sae, dst_sae: key: the ETSI 014 SAEs of the two ends; entanglement: the application at each
            end that may take the pairs (its client-certificate CommonName, the end's ``clients``).
        rate_bps: key: the requested key rate.
        target_fidelity: the fidelity the pairs need (``None``: none asked; key needs more than 0.835).
        min_pair_rate_hz: entanglement: pairs per second needed (0: any).
    """

    session_id: str
    service: str
    src_sae: str = ""
    dst_sae: str = ""
    rate_bps: int = 0
    target_fidelity: float | None = None
    min_pair_rate_hz: float = 0.0


def segment_session_id(session_id: str, generation: int, index: int) -> str:
    """The ``qsdn-entanglement`` session id of segment ``index`` of a session."""
    return derived_id("ent-session", session_id, str(generation), str(index))


def elementary_link_id(session_id: str, generation: int, index: int, link: int) -> str:
    """The ``link_id`` of elementary link ``link`` of segment ``index``."""
    return derived_id("ent-link", session_id, str(generation), str(index), str(link))


def key_link_id(session_id: str, generation: int, index: int) -> str:
    """The VIRT key link between the two ends of repeater segment ``index`` (BBM92 key store)."""
    return derived_id("ent-key", session_id, str(generation), str(index))


def swap_rounds(links: int) -> list[int]:
    """Nested swapping: the round of the repeater at chain position ``1 .. links - 1``.

    Position ``i`` joins two halves of ``2^v2(i)`` links each, in round ``1 + v2(i)`` (Briegel et al.,
    PRL 81, 5932, 1998): for 4 links, rounds 1, 2, 1.
    """
    return [((i & -i).bit_length()) for i in range(1, links)]


def _dec(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


class _Node:
    """The entanglement subtree being built for one node (edit and removal)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.memories: tuple[int, float] | None = None
        self.links: list[etree._Element] = []
        self.sessions: list[etree._Element] = []
        self.rm_links: list[str] = []
        self.rm_sessions: list[str] = []

    def _root(self) -> tuple[etree._Element, etree._Element]:
        root = etree.Element(f"{{{NODE_NS}}}qkd_node", nsmap=ns_map(NODE_NS, {"nc": NC_NS}))
        etree.SubElement(root, f"{{{NODE_NS}}}qkdn_id").text = self.node_id
        ent = etree.SubElement(root, f"{{{ENT_NS}}}entanglement", nsmap={None: ENT_NS})  # type: ignore[dict-item]
        return root, ent

    def edit(self) -> str:
        root, ent = self._root()
        if self.memories is not None:
            mem = _e(ent, "memories")
            _e(mem, "count", str(self.memories[0]))
            _e(mem, "coherence_time_s", _dec(self.memories[1], 9))
        if self.links:
            box = _e(ent, "elementary_links")
            box.extend(self.links)
        if self.sessions:
            box = _e(ent, "sessions")
            box.extend(self.sessions)
        return etree.tostring(root).decode()

    def removal(self) -> str:
        root, ent = self._root()
        for box_name, item, key, ids in (
            ("elementary_links", "elementary_link", "link_id", self.rm_links),
            ("sessions", "session", "session_id", self.rm_sessions),
        ):
            if not ids:
                continue
            box = _e(ent, box_name)
            for x in ids:
                entry = _e(box, item)
                entry.set(f"{{{NC_NS}}}operation", "remove")
                _e(entry, key, x)
        return etree.tostring(root).decode()


def _e(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    e = etree.SubElement(parent, f"{{{ENT_NS}}}{name}")
    if text is not None:
        e.text = text
    return e


def _chain(seg: Segment) -> list[str]:
    """Ends and repeaters of a repeater segment, in order (stations belong to links)."""
    return [seg.links[0].a, *(link.b for link in seg.links)]


def plan_entanglement_session(
    spec: EntanglementSpec,
    plan: EntanglementPlan,
    topology: Topology,
    interfaces: Mapping[tuple[str, str], int],
    *,
    existing: frozenset[str] = frozenset(),
    nodes_with_memories: frozenset[str] = frozenset(),
    generation: int = 0,
) -> SessionPlan:
    """The per-node configuration of a session on ``plan`` (module docstring), as a :class:`SessionPlan`.

    ``interfaces`` and ``existing`` are those of :func:`~controller.provision.plan_session`, for the QKD
    segments' spans; ``nodes_with_memories`` are the nodes whose configuration already carries
    ``memories``. ``edits``/``removals`` hold one ``qkd_node`` subtree per node that gets anything; ``hops``
    are the relay layer's hops (PHYS and key links).
    """
    sid = spec.session_id
    if spec.service not in ("entanglement", "key"):
        raise QsdnError(f"session {sid}: unknown service {spec.service!r}", tag="invalid-value")
    if plan.service != spec.service:
        raise QsdnError(
            f"session {sid}: a {plan.service} plan cannot provision a {spec.service} session",
            tag="invalid-value",
        )
    if spec.service == "entanglement" and (
        len(plan.segments) != 1 or plan.segments[0].technology != "entanglement"
    ):
        raise QsdnError(f"session {sid}: entanglement needs one repeater segment", tag="invalid-value")
    key = spec.service == "key"
    nodes: dict[str, _Node] = {}

    def node(n: str) -> _Node:
        if n not in nodes:
            nodes[n] = _Node(n)
        return nodes[n]

    key_links: dict[str, str] = {}
    for index, seg in enumerate(plan.segments):
        if seg.technology != "entanglement":
            continue
        chain = _chain(seg)
        kl = key_link_id(sid, generation, index) if key else None
        if kl is not None:
            key_links[f"segment-{index}"] = kl
        for n in chain:
            mem = topology.nodes[n].memory
            if n not in nodes_with_memories and mem is not None:
                node(n).memories = (max(1, mem.memories), min(mem.coherence_s, _MAX_DURATION_S))
        for j, link in enumerate(seg.links):
            lid = elementary_link_id(sid, generation, index, j)
            for here, there in ((link.a, link.b), (link.b, link.a)):
                node(here).links.append(_elementary_link(lid, there, link, topology))
                node(here).rm_links.append(lid)
        ent_sid = segment_session_id(sid, generation, index)
        rounds = swap_rounds(len(seg.links)) if seg.swap_order == "nested" else []
        coherence = min(
            (m.coherence_s for n in chain if (m := topology.nodes[n].memory) is not None), default=math.inf
        )
        target_f, target_rate = _targets(spec, seg)
        held = dict(seg.memories)
        for pos, n in enumerate(chain):
            end = pos in (0, len(chain) - 1)
            s = etree.Element(f"{{{ENT_NS}}}session")
            _e(s, "session_id", ent_sid)
            _e(s, "role", "end" if end else "repeater")
            _e(s, "end_a_qkdn_id", chain[0])
            _e(s, "end_b_qkdn_id", chain[-1])
            for p in chain:
                _e(s, "path", p)
            sides = _sides(held.get(n, 1 + seg.rounds if end else 2), end)
            if pos > 0:
                _e(s, "prev_hop", chain[pos - 1])
                _e(s, "prev_link_id", elementary_link_id(sid, generation, index, pos - 1))
                _e(s, "prev_memories", str(sides[0]))
            if pos < len(chain) - 1:
                _e(s, "next_hop", chain[pos + 1])
                _e(s, "next_link_id", elementary_link_id(sid, generation, index, pos))
                _e(s, "next_memories", str(sides[-1]))
            _e(s, "swap_order", seg.swap_order if seg.swap_order != "none" else "asap")
            if rounds and not end:
                _e(s, "swap_round", str(rounds[pos - 1]))
            pur = _e(s, "purification")
            _e(pur, "protocol", seg.protocol if seg.rounds > 0 else "none")
            if seg.rounds > 0 and seg.protocol != "none":
                _e(pur, "rounds", str(seg.rounds))
            if math.isfinite(coherence):
                _e(s, "cutoff_time_s", _dec(max(min(coherence, _MAX_DURATION_S), 1e-9), 9))
            if target_f is not None:
                _e(s, "target_fidelity", _dec(target_f, 6))
            if target_rate is not None:
                _e(s, "target_rate_pairs_per_s", _dec(max(target_rate, 1e-6), 6))
            _e(s, "application", "bbm92-key" if key else "pairs")
            if kl is not None and end:
                _e(s, "key_qkdl_id", kl)
            if not key and end:
                client = spec.src_sae if n == plan.src else spec.dst_sae if n == plan.dst else ""
                if client:
                    _e(s, "clients", client)
            node(n).sessions.append(s)
            node(n).rm_sessions.append(ent_sid)

    relay: SessionPlan | None = None
    if key:
        key_nodes = [seg.nodes[0] for seg in plan.segments] + [plan.dst]
        hops = [
            f"segment-{i}" if seg.technology == "entanglement" else seg.spans[0]
            for i, seg in enumerate(plan.segments)
        ]
        relay = plan_session(
            SessionSpec(sid, spec.src_sae, spec.dst_sae, spec.rate_bps),
            key_nodes,
            hops,
            interfaces,
            existing=existing,
            generation=generation,
            key_links=key_links,
        )
    edits: dict[str, str] = {}
    removals: dict[str, str] = {}
    for n in sorted(set(nodes) | set(relay.edits if relay else ())):
        parts = [relay.edits[n]] if relay is not None and n in relay.edits else []
        rm_parts = [relay.removals[n]] if relay is not None and n in relay.removals else []
        if n in nodes:
            parts.append(nodes[n].edit())
            rm_parts.append(nodes[n].removal())
        edits[n] = combine(*parts)
        removals[n] = combine(*rm_parts)
    hop_plans: tuple[HopPlan, ...] = relay.hops if relay is not None else ()
    return SessionPlan(
        session_id=sid,
        generation=generation,
        new_links=relay.new_links if relay is not None else frozenset(),
        path=plan.nodes,
        hops=hop_plans,
        virt_qkdl_id=relay.virt_qkdl_id if relay is not None else None,
        client_app_id=relay.client_app_id if relay is not None else "",
        edits=edits,
        removals=removals,
        owned_links=dict(relay.owned_links) if relay is not None else {},
        owned_apps=dict(relay.owned_apps) if relay is not None else {},
    )


def _sides(held: int, end: bool) -> tuple[int, ...]:
    """The memories a session holds at a node (its reservation), per hop there: all of them on an end's
    one hop, half on each side of a repeater (the larger half on the next side)."""
    if end:
        return (max(1, held),)
    return (max(1, held // 2), max(1, held - held // 2))


def _targets(spec: EntanglementSpec, seg: Segment) -> tuple[float | None, float | None]:
    """Target fidelity and pair rate of a segment's session on the nodes."""
    if spec.service == "entanglement":
        rate = spec.min_pair_rate_hz if spec.min_pair_rate_hz > 0 else None
        return spec.target_fidelity, rate
    # key: pairs must beat the BBM92 threshold, and come fast enough for the requested key rate
    floor = KEY_FIDELITY + 1e-6
    f = max(spec.target_fidelity or 0.0, floor)
    rate = None
    if spec.rate_bps > 0 and seg.key_rate_bps > 0 and seg.pair_rate_hz > 0:
        rate = spec.rate_bps * seg.pair_rate_hz / seg.key_rate_bps
    return f, rate


def _elementary_link(lid: str, remote: str, link: ElementaryLink, topology: Topology) -> etree._Element:
    e = etree.Element(f"{{{ENT_NS}}}elementary_link")
    _e(e, "link_id", lid)
    _e(e, "remote_qkdn_id", remote)
    if link.station is not None:
        _e(e, "station_qkdn_id", link.station)
    _e(e, "length_km", _dec(link.length_km, 3))
    _e(e, "loss_db", _dec(link.loss_db, 2))
    ma, mb = topology.nodes[link.a].memory, topology.nodes[link.b].memory
    if ma is not None and mb is not None:
        _e(e, "modes", str(min(ma.modes, mb.modes)))
    _e(e, "heralding", "barrett-kok")
    _e(e, "initial_fidelity", _dec(link.fidelity, 6))
    return e


# ----------------------------------------------------------------------------------- stored plan


def plan_to_json(plan: EntanglementPlan) -> dict[str, Any]:
    """The plan as plain JSON data (what the store keeps for the session)."""
    return asdict(plan)


def plan_from_json(data: Mapping[str, Any]) -> EntanglementPlan:
    """The inverse of :func:`plan_to_json`."""

    def link(d: Mapping[str, Any]) -> ElementaryLink:
        return ElementaryLink(**{**d, "spans": tuple(d["spans"])})

    def segment(d: Mapping[str, Any]) -> Segment:
        return Segment(
            **{
                **d,
                "nodes": tuple(d["nodes"]),
                "spans": tuple(d["spans"]),
                "links": tuple(link(x) for x in d["links"]),
                "repeaters": tuple(d["repeaters"]),
                "stations": tuple(d["stations"]),
                "memories": tuple((str(n), int(m)) for n, m in d["memories"]),
            }
        )

    return EntanglementPlan(
        **{
            **data,
            "nodes": tuple(data["nodes"]),
            "segments": tuple(segment(s) for s in data["segments"]),
            "key_visible_to": tuple(data["key_visible_to"]),
            "trusted_relays": tuple(data["trusted_relays"]),
            "memories": tuple((str(n), int(m)) for n, m in data["memories"]),
        }
    )
