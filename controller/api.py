"""The controller as a RESTCONF backend: the ``qsdn-orchestrator`` datastore is its desired state.

- ``config_xml`` renders the store (nodes, spans, sessions) in the ``qsdn-orchestrator`` model;
- ``replace_config`` receives the whole new datastore (already built and validated by the RESTCONF
  layer), works out what changed and applies it through the controller: new nodes are connected and
  discovered, new spans recorded, new sessions provisioned (one transaction each), removed sessions
  torn down. If a change fails, the changes of the same request that were already made are undone,
  so a request is applied whole or not at all;
- ``state_xml`` adds what the controller knows (node reachability, span class and predicted rate,
  reservations, session status, path, errors; for entanglement and mixed key sessions, the ``plan``
  provisioned, with its segments and ``key_visible_to``);
- ``invoke`` serves ``compute-path`` (a dry run), ``compute-entanglement-path`` (a dry run of
  :mod:`controller.entanglement`: entanglement, or key over trusted relays and repeater segments),
  ``create-session``, ``delete-session`` and ``get-node-data`` (a node's ETSI 015 data read through
  the controller's NETCONF session).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from controller.entanglement import EntanglementPlan, EntanglementRequest, Segment
from controller.entanglement_provision import plan_from_json
from controller.model import Span
from controller.northbound.backend import northbound_schema
from controller.pathcomp import Path, PathRequest, classify_span
from controller.provision import derived_id, phys_link_id
from controller.service import Controller
from controller.store import NodeRecord, SessionRecord, SpanRecord
from qsdn.errors import OperationNotSupportedError, QsdnError
from qsdn.netconf.xml import ns_map
from qsdn.yang import SchemaContext

log = logging.getLogger(__name__)

ORCH = "urn:qsdn:yang:qsdn-orchestrator"
NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"


def _q(name: str) -> str:
    return f"{{{ORCH}}}{name}"


def _sub(parent: etree._Element, name: str, text: object | None = None) -> etree._Element:
    e = etree.SubElement(parent, _q(name))
    if text is not None:
        e.text = str(text).lower() if isinstance(text, bool) else str(text)
    return e


def _t(el: etree._Element, name: str) -> str | None:
    v = el.findtext(_q(name))
    return v.strip() if v is not None else None


def _all(el: etree._Element, name: str) -> tuple[str, ...]:
    return tuple((x.text or "").strip() for x in el.findall(_q(name)))


class ControllerBackend:
    def __init__(
        self, controller: Controller, schema: SchemaContext | None = None, network_id: str | None = None
    ) -> None:
        self.controller = controller
        self._schema = schema or northbound_schema()
        self.network_id = network_id or derived_id("network", str(controller.store.path))
        self.default_credentials: dict[str, str | None] = {"username": "admin", "password": None}

    @property
    def schema(self) -> SchemaContext:
        return self._schema

    # --- config ----------------------------------------------------------------------------------
    def _config_tree(self) -> etree._Element:
        store = self.controller.store
        root = etree.Element(_q("qkd_network"), nsmap=ns_map(ORCH))
        _sub(root, "network_id", self.network_id)
        for n in store.nodes():
            e = _sub(root, "qkd_node")
            _sub(e, "qkdn_id", n.node_id)
            _sub(e, "name", n.name)
            if n.location:
                _sub(e, "location", n.location)
            nc = _sub(e, "netconf")
            _sub(nc, "host", n.host)
            _sub(nc, "port", n.port)
            _sub(nc, "username", n.username)
            _sub(e, "trusted", n.trusted)
            _sub(e, "role", n.role)
            if n.entanglement:
                ent = _sub(e, "entanglement")
                for key in _ENTANGLEMENT_LEAVES:
                    if key in n.entanglement:
                        v = n.entanglement[key]
                        _sub(ent, key, int(v) if key in _INT_LEAVES else _dec(v, 6))
        for s in store.spans():
            e = _sub(root, "qkd_phys_link")
            _sub(e, "span_id", s.span_id)
            _sub(e, "node_a", s.a)
            _sub(e, "node_b", s.b)
            _sub(e, "length_km", f"{s.length_km:.3f}")
            _sub(e, "extra_loss_db", f"{s.extra_loss_db:.2f}")
            for b in s.bands:
                _sub(e, "bands", b)
        for x in store.sessions():
            e = _sub(root, "qkd_svc_link")
            _sub(e, "session_id", x.session_id)
            _sub(e, "src_node", x.src_node)
            _sub(e, "dst_node", x.dst_node)
            if x.src_sae:
                _sub(e, "src_sae", x.src_sae)
            if x.dst_sae:
                _sub(e, "dst_sae", x.dst_sae)
            _sub(e, "requested_rate_bps", x.rate_bps)
            if x.max_hops is not None:
                _sub(e, "max_hops", x.max_hops)
            _sub(e, "disjoint_backup", x.disjoint_backup)
            for a in x.avoid:
                _sub(e, "avoid", a)
            for t in x.trusted_relays or ():
                _sub(e, "trusted_relays", t)
            _planner_leaves(e, x)
        return root

    def config_xml(self) -> str:
        return self._schema.canonical_config(etree.tostring(self._config_tree()))

    async def replace_config(self, new_xml: str, *, user: str) -> None:
        new = etree.fromstring(f'<w xmlns="{ORCH}">{new_xml}</w>'.encode())
        net = new.find(_q("qkd_network"))
        ctl = self.controller
        store = ctl.store
        want_nodes: dict[str, NodeRecord] = {}
        want_spans: dict[str, SpanRecord] = {}
        want_sessions: dict[str, SessionRecord] = {}
        if net is not None:
            old_nodes = {n.node_id: n for n in store.nodes()}
            for e in net.findall(_q("qkd_node")):
                nid = _t(e, "qkdn_id") or ""
                prev = old_nodes.get(nid)
                nc = e.find(_q("netconf"))
                want_nodes[nid] = NodeRecord(
                    node_id=nid,
                    name=_t(e, "name") or nid[:8],
                    host=(_t(nc, "host") if nc is not None else None) or "127.0.0.1",
                    port=int((_t(nc, "port") if nc is not None else None) or 830),
                    username=(_t(nc, "username") if nc is not None else None)
                    or (prev.username if prev else str(self.default_credentials["username"])),
                    password=prev.password if prev else self.default_credentials["password"],
                    client_key=prev.client_key if prev else None,
                    trusted=(_t(e, "trusted") or "true") == "true",
                    role=_t(e, "role") or "endpoint",
                    location=_t(e, "location"),
                    entanglement=_entanglement_from(e.find(_q("entanglement"))),
                )
            old_spans = {s.span_id: s for s in store.spans()}
            for e in net.findall(_q("qkd_phys_link")):
                sid = _t(e, "span_id") or ""
                prev_s = old_spans.get(sid)
                want_spans[sid] = SpanRecord(
                    span_id=sid,
                    a=_t(e, "node_a") or "",
                    b=_t(e, "node_b") or "",
                    length_km=float(_t(e, "length_km") or 0),
                    extra_loss_db=float(_t(e, "extra_loss_db") or 0),
                    bands=_all(e, "bands") or ("C", "O"),
                    a_qkdi_id=prev_s.a_qkdi_id if prev_s else 1,
                    b_qkdi_id=prev_s.b_qkdi_id if prev_s else 1,
                )
            for e in net.findall(_q("qkd_svc_link")):
                sid = _t(e, "session_id") or ""
                want_sessions[sid] = _session_from(e, sid)
        await self._apply(want_nodes, want_spans, want_sessions, user)

    async def _apply(
        self,
        nodes: dict[str, NodeRecord],
        spans: dict[str, SpanRecord],
        sessions: dict[str, SessionRecord],
        user: str,
    ) -> None:
        ctl = self.controller
        store = ctl.store
        have_sessions = {s.session_id: s for s in store.sessions()}
        removed_sessions = sorted(set(have_sessions) - set(sessions))
        changed = sorted(
            sid
            for sid in set(have_sessions) & set(sessions)
            if _intent(have_sessions[sid]) != _intent(sessions[sid])
        )
        if changed:
            raise QsdnError(
                f"session {changed[0]} cannot be changed in place; delete it and create a new one",
                tag="operation-not-supported",
                path=f"/qsdn-orchestrator:qkd_network/qkd_svc_link[session_id='{changed[0]}']",
            )
        have_nodes = {n.node_id for n in store.nodes()}
        have_spans = {s.span_id for s in store.spans()}
        for sid in sorted(have_spans - set(spans)):
            if any(sid in s.spans for s in store.sessions() if s.session_id not in removed_sessions):
                raise QsdnError(
                    f"span {sid} carries sessions; delete them first",
                    tag="data-exists",
                    path=f"/qsdn-orchestrator:qkd_network/qkd_phys_link[span_id='{sid}']",
                )
        # nodes and spans: recorded at once; nodes connect in the background of the request
        with store.transaction():
            for rec in nodes.values():
                store.put_node(rec)
            for srec in spans.values():
                store.put_span(srec)
        for nid in sorted(set(nodes) - have_nodes):
            await ctl.add_node(nodes[nid])
        for nid, rec in nodes.items():
            if nid in ctl.nodes:
                ctl.nodes[nid].record = rec
        created: list[str] = []
        try:
            for sid in sorted(set(sessions) - set(have_sessions)):
                await ctl.create_session(sessions[sid])
                created.append(sid)
        except QsdnError:
            for sid in created:
                try:
                    await ctl.delete_session(sid)
                except QsdnError:
                    log.exception("undoing session %s after a failed request", sid)
            failed = store.session(sorted(set(sessions) - set(have_sessions) - set(created))[0])
            if failed is not None and failed.status == "failed":
                store.delete_session(failed.session_id)
            raise
        for sid in removed_sessions:
            await ctl.delete_session(sid)
        with store.transaction():
            for sid in sorted(have_spans - set(spans)):
                store.delete_span(sid)
            for nid in sorted(have_nodes - set(nodes)):
                store.delete_node(nid)
        log.info("orchestrator datastore changed by %s", user)

    # --- state -----------------------------------------------------------------------------------
    def state_xml(self) -> str:
        ctl = self.controller
        root = self._config_tree()
        reserved: dict[str, float] = {}
        for r in ctl.reservations():
            reserved[r.span_id] = reserved.get(r.span_id, 0.0) + r.rate_bps
        for e in root.findall(_q("qkd_node")):
            st = ctl.nodes.get(_t(e, "qkdn_id") or "")
            if st is None:
                _sub(e, "status", "unknown")
                continue
            _sub(e, "status", "reachable" if st.reachable else "unreachable")
            if st.last_seen is not None:
                _sub(e, "last_seen", datetime.fromtimestamp(st.last_seen, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            for i in st.interfaces:
                _sub(e, "interfaces", i)
        spans = {s.span_id: s for s in ctl.store.spans()}
        for e in root.findall(_q("qkd_phys_link")):
            sid = _t(e, "span_id") or ""
            s = spans[sid]
            a = classify_span(
                Span(
                    span_id=sid,
                    a=s.a,
                    b=s.b,
                    length_km=s.length_km,
                    extra_loss_db=s.extra_loss_db,
                    bands=s.bands,
                )
            )
            _sub(e, "span_class", a.span_class.value.lower())
            if a.band is not None:
                _sub(e, "band", a.band.value)
                _sub(e, "loss_db", f"{a.loss_db_by_band[a.band]:.2f}")
            _sub(e, "predicted_skr_bps", int(a.predicted_rate_bps))
            _sub(e, "reserved_bps", int(reserved.get(sid, 0)))
            qkdl = phys_link_id(sid)
            provisioned = qkdl in ctl.nodes.get(s.a, _empty()).phys_links
            if provisioned:
                _sub(e, "qkdl_id", qkdl)
            _sub(e, "status", "down" if sid in ctl.down_spans else ("active" if provisioned else "unused"))
        sessions = {x.session_id: x for x in ctl.store.sessions()}
        for e in root.findall(_q("qkd_svc_link")):
            x = sessions[_t(e, "session_id") or ""]
            _sub(e, "status", x.status)
            if x.status == "active":
                _sub(e, "achieved_rate_bps", x.rate_bps)
            for n in x.path:
                _sub(e, "path", n)
            for n in x.backup_path:
                _sub(e, "backup_path", n)
            plan = plan_from_json(x.plan) if x.planned and x.plan is not None else None
            relays = plan.trusted_relays if plan is not None else x.path[1:-1]
            for n in relays:
                _sub(e, "relays", n)
            if relays:
                _sub(e, "virt_qkdl_id", derived_id("virt", x.session_id, str(x.generation)))
            if plan is not None and x.status not in ("failed", "requested"):
                _plan_body(_sub(e, "plan"), plan)
            if x.last_error:
                _sub(e, "last_error", x.last_error)
                info = _sub(e, "last_error_info")
                if x.last_error_node:
                    _sub(info, "node", x.last_error_node)
                _sub(info, "reason", x.last_error)
        xml = etree.tostring(root)
        with self._schema.parsed(xml, "xml", config_only=False) as tree:
            return str(tree.print_mem("xml", with_siblings=True, pretty=False)) if tree else ""

    # --- operations --------------------------------------------------------------------------------
    async def invoke(self, rpc: str, input_xml: str, *, user: str) -> str:
        name = rpc.split(":", 1)[-1]
        inp = etree.fromstring(input_xml.encode())  # the RPC element with its input leaves
        if name == "compute-path":
            return self._compute(inp)
        if name == "compute-entanglement-path":
            return self._compute_entanglement(inp)
        if name == "create-session":
            sid = _t(inp, "session_id") or ""
            rec = _session_from(inp, sid)
            s = await self.controller.create_session(rec)
            out = etree.Element(_q("output"), nsmap=ns_map(ORCH))
            _sub(out, "session_id", s.session_id)
            _sub(out, "status", s.status)
            for n in s.path:
                _sub(out, "path", n)
            return etree.tostring(out).decode()
        if name == "delete-session":
            await self.controller.delete_session(_t(inp, "session_id") or "")
            return ""
        raise OperationNotSupportedError(f"operation {rpc} is not implemented by this controller")

    def _compute(self, inp: etree._Element) -> str:
        req = PathRequest(
            src=_t(inp, "src_node") or "",
            dst=_t(inp, "dst_node") or "",
            rate_bps=float(_t(inp, "requested_rate_bps") or 0),
            max_hops=int(v) if (v := _t(inp, "max_hops")) else None,
            k=int(_t(inp, "k") or 4),
            disjoint_backup=(_t(inp, "disjoint_backup") or "false") == "true",
            avoid=frozenset(_all(inp, "avoid")),
        )
        comp = self.controller.compute(req)
        out = etree.Element(_q("output"), nsmap=ns_map(ORCH))
        for i, p in enumerate([comp.best, *comp.alternatives]):
            e = _sub(out, "path")
            _sub(e, "index", i)
            _path_body(e, p)
        if comp.backup is not None:
            _path_body(_sub(out, "backup"), comp.backup)
        return etree.tostring(out).decode()

    def _compute_entanglement(self, inp: etree._Element) -> str:
        service = _t(inp, "service") or "key"
        req = EntanglementRequest(
            src=_t(inp, "src_node") or "",
            dst=_t(inp, "dst_node") or "",
            service="entanglement" if service == "entanglement" else "key",
            target_fidelity=float(v) if (v := _t(inp, "target_fidelity")) else None,
            min_pair_rate_hz=float(_t(inp, "min_pair_rate_hz") or 0),
            min_key_rate_bps=float(_t(inp, "requested_rate_bps") or 0),
            max_trusted_nodes=int(v) if (v := _t(inp, "max_trusted_nodes")) else None,
            max_rounds=int(_t(inp, "max_purification_rounds") or 3),
            k=int(_t(inp, "k") or 4),
            avoid=frozenset(_all(inp, "avoid")),
        )
        plan = self.controller.compute_entanglement(req)
        out = etree.Element(_q("output"), nsmap=ns_map(ORCH))
        _plan_body(out, plan)
        return etree.tostring(out).decode()

    async def node_data(self, qkdn_id: str, content: str) -> str:
        ctl = self.controller
        client = ctl.client(qkdn_id)
        flt = f'<qkd_node xmlns="{NODE_NS}"/>'
        data = await client.get_config(subtree=flt) if content == "config" else await client.get(subtree=flt)
        return b"".join(etree.tostring(c) for c in data).decode()


def _path_body(e: etree._Element, p: Path) -> None:
    for n in p.nodes:
        _sub(e, "node", n)
    _sub(e, "bottleneck_bps", int(p.bottleneck_bps))
    for h in p.hops:
        he = _sub(e, "hop")
        _sub(he, "span_id", h.span_id)
        _sub(he, "span_class", h.span_class.value.lower())
        _sub(he, "band", h.band.value)
        _sub(he, "predicted_skr_bps", int(h.predicted_bps))
        _sub(he, "available_bps", int(max(h.available_bps, 0)))


_ENTANGLEMENT_LEAVES = (
    "memories",
    "coherence_time_s",
    "swap_success_probability",
    "initial_fidelity",
    "modes",
    "detector_efficiency",
)
_INT_LEAVES = frozenset(("memories", "modes"))


def _dec(x: float, digits: int) -> str:
    """A decimal64 value with at most ``digits`` fraction digits (RFC 7950 section 9.3)."""
    text = f"{x:.{digits}f}"
    return "0" if float(text) == 0 else text


def _entanglement_from(e: etree._Element | None) -> dict[str, float] | None:
    if e is None:
        return None
    out: dict[str, float] = {}
    for key in _ENTANGLEMENT_LEAVES:
        v = _t(e, key)
        if v:
            out[key] = int(v) if key in _INT_LEAVES else float(v)
    return out or None


def _plan_body(out: etree._Element, plan: EntanglementPlan) -> None:
    """An :class:`EntanglementPlan` as the output of ``compute-entanglement-path``."""
    _sub(out, "service", plan.service)
    for n in plan.nodes:
        _sub(out, "node", n)
    _sub(out, "key_rate_bps", _dec(plan.key_rate_bps, 3))
    if plan.pair_rate_hz is not None:
        _sub(out, "pair_rate_hz", _dec(plan.pair_rate_hz, 6))
    if plan.fidelity is not None:
        _sub(out, "fidelity", _dec(plan.fidelity, 6))
    for n in plan.key_visible_to:
        _sub(out, "key_visible_to", n)
    for n in plan.trusted_relays:
        _sub(out, "trusted_relays", n)
    for i, seg in enumerate(plan.segments):
        _segment_body(_sub(out, "segment"), i, seg)


def _segment_body(e: etree._Element, index: int, seg: Segment) -> None:
    _sub(e, "index", index)
    _sub(e, "technology", seg.technology)
    for n in seg.nodes:
        _sub(e, "node", n)
    for s in seg.spans:
        _sub(e, "span", s)
    _sub(e, "key_rate_bps", _dec(seg.key_rate_bps, 3))
    if seg.technology == "entanglement":
        _sub(e, "pair_rate_hz", _dec(seg.pair_rate_hz, 6))
        if seg.fidelity is not None:
            _sub(e, "fidelity", _dec(seg.fidelity, 6))
        if seg.unpurified_fidelity is not None:
            _sub(e, "unpurified_fidelity", _dec(seg.unpurified_fidelity, 6))
    _sub(e, "swap_order", seg.swap_order)
    _sub(e, "purification_rounds", seg.rounds)
    _sub(e, "purification_protocol", seg.protocol)
    for n in seg.repeaters:
        _sub(e, "repeaters", n)
    for n in seg.stations:
        _sub(e, "bsm_stations", n)
    for n, m in seg.memories:
        me = _sub(e, "memory")
        _sub(me, "node", n)
        _sub(me, "memories", m)
    for i, link in enumerate(seg.links):
        le = _sub(e, "link")
        _sub(le, "index", i)
        _sub(le, "node_a", link.a)
        _sub(le, "node_b", link.b)
        if link.station is not None:
            _sub(le, "bsm_station", link.station)
        _sub(le, "length_km", _dec(link.length_km, 3))
        _sub(le, "success_probability", _dec(link.p, 12))
        _sub(le, "attempt_time_s", _dec(link.attempt_s, 9))
        _sub(le, "initial_fidelity", _dec(link.fidelity, 6))


def _planner_leaves(e: etree._Element, x: SessionRecord) -> None:
    """The entanglement planner's request leaves of a session (only those that were given)."""
    if x.planned:
        _sub(e, "service", x.service)
    if x.repeaters:
        _sub(e, "repeaters", True)
    if x.target_fidelity is not None:
        _sub(e, "target_fidelity", _dec(x.target_fidelity, 6))
    if x.min_pair_rate_hz:
        _sub(e, "min_pair_rate_hz", _dec(x.min_pair_rate_hz, 6))
    if x.max_trusted_nodes is not None:
        _sub(e, "max_trusted_nodes", x.max_trusted_nodes)
    if x.max_rounds != 3:
        _sub(e, "max_purification_rounds", x.max_rounds)


def _session_from(e: etree._Element, sid: str) -> SessionRecord:
    trusted = _all(e, "trusted_relays")
    return SessionRecord(
        session_id=sid,
        src_node=_t(e, "src_node") or "",
        dst_node=_t(e, "dst_node") or "",
        src_sae=_t(e, "src_sae") or "",
        dst_sae=_t(e, "dst_sae") or "",
        rate_bps=int(_t(e, "requested_rate_bps") or 0),
        max_hops=int(v) if (v := _t(e, "max_hops")) else None,
        disjoint_backup=(_t(e, "disjoint_backup") or "false") == "true",
        avoid=_all(e, "avoid"),
        trusted_relays=trusted or None,
        service=_t(e, "service") or "key",
        repeaters=(_t(e, "repeaters") or "false") == "true",
        target_fidelity=float(v) if (v := _t(e, "target_fidelity")) else None,
        min_pair_rate_hz=float(_t(e, "min_pair_rate_hz") or 0),
        max_trusted_nodes=int(v) if (v := _t(e, "max_trusted_nodes")) else None,
        max_rounds=int(_t(e, "max_purification_rounds") or 3),
    )


def _intent(s: SessionRecord) -> tuple[Any, ...]:
    return (
        s.src_node,
        s.dst_node,
        s.src_sae,
        s.dst_sae,
        s.rate_bps,
        s.max_hops,
        s.disjoint_backup,
        s.avoid,
        s.trusted_relays,
        s.service,
        s.repeaters,
        s.target_fidelity,
        s.min_pair_rate_hz,
        s.max_trusted_nodes,
        s.max_rounds,
    )


class _empty:
    phys_links: frozenset[str] = frozenset()
