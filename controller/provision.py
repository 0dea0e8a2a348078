"""Provisioning plans: the ETSI GS QKD 015 configuration a key session needs on every node (pure).

For a session between SAE A at node X and SAE B at node Y over the path X = n0, n1, ..., nk = Y
(SYSTEM.md section 2, the canonical flow):

1. every hop (n_i, n_i+1) has a PHYS link, the same ``qkdl_id`` at both ends, the lower-indexed end
   TRANSMITTER, the other RECEIVER, enabled; PHYS links belong to the fibre span, not to the session
   (they are shared by every session crossing the span and are not removed with a session);
2. when X and Y are not adjacent, a VIRT link X-Y on every node of the path: ``qkdl_local`` =
   X, ``qkdl_remote`` = Y; ``virt_prev_hop`` the qkdn_id of the node before (absent at X),
   ``virt_next_hop`` the node after (absent at Y) (qsdn's reading of the ambiguous 015 text, see
   yang/README.md); ``virt_bandwidth`` the requested rate; each relay n_1..n_k-1 gets one INTERNAL
   application per adjacent PHYS link reserving that rate, listed in the PHYS link's
   ``qkdl_applications``;
3. a CLIENT application at X and Y: ``server_app_id`` the SAE at X, ``client_app_id`` the SAE at Y,
   ``backing_qkdl_id`` the VIRT link (or the PHYS link for adjacent nodes), local/remote swapped at Y.

Every identifier is derived from the session id (UUID v5), so planning the same session twice gives
the same configuration: retries are idempotent, and the removal plan deletes exactly what the
session added.

A hop may also be a *key link* instead of a fibre span (``key_links``): the VIRT key association link
between the two ends of a quantum-repeater segment, whose key store BBM92 fills
(``controller/entanglement_provision.py``). Such a link belongs to the session: it is created at both
ends of the hop (no ``virt_prev_hop``/``virt_next_hop``: no trusted relay inside it), carries the
hop's INTERNAL or CLIENT application like a PHYS link would, and is removed with the session.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lxml import etree

from qsdn.errors import QsdnError
from qsdn.netconf.xml import ns_map

NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
_T = "etsi-qkdn-types"

#: Namespace of the UUID v5 identifiers qsdn derives (a fixed, random UUID of our own).
QSDN_UUID_NS = uuid.UUID("6b1f3a52-3c1e-4f0e-9a57-2d1c0f9e8a11")


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(QSDN_UUID_NS, "/".join(parts)))


def phys_link_id(span_id: str) -> str:
    """The PHYS link of a fibre span: one per span, shared by every session over it."""
    return derived_id("phys", span_id)


@dataclass(frozen=True)
class HopPlan:
    span_id: str
    qkdl_id: str
    transmitter: str
    receiver: str
    tx_qkdi_id: int
    rx_qkdi_id: int
    channel_att_db: float | None = None
    wavelength: int | None = None
    #: a repeater segment's key link (VIRT, owned by the session), not a fibre span's PHYS link
    virtual: bool = False


@dataclass(frozen=True)
class SessionSpec:
    session_id: str
    src_sae: str
    dst_sae: str
    rate_bps: int


@dataclass(frozen=True)
class SessionPlan:
    session_id: str
    path: tuple[str, ...]
    hops: tuple[HopPlan, ...]
    virt_qkdl_id: str | None
    client_app_id: str
    generation: int = 0
    #: PHYS links this plan creates (the others existed already).
    new_links: frozenset[str] = frozenset()
    #: per node: the ``<qkd_node>`` subtree to merge (PHYS links, VIRT link, applications).
    edits: Mapping[str, str] = field(default_factory=dict)
    #: per node: the ``<qkd_node>`` subtree that removes what the session added (not PHYS links).
    removals: Mapping[str, str] = field(default_factory=dict)
    #: per node: the ids of session-owned entries, to check a node's configuration against.
    owned_links: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    owned_apps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def relays(self) -> tuple[str, ...]:
        return self.path[1:-1]


def _el(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    e = etree.SubElement(parent, f"{{{NODE_NS}}}{name}")
    if text is not None:
        e.text = text
    return e


def _node_root(node_id: str) -> etree._Element:
    root = etree.Element(f"{{{NODE_NS}}}qkd_node", nsmap=ns_map(NODE_NS, {_T: TYPES_NS}))
    _el(root, "qkdn_id", node_id)
    return root


def _containers(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    return _el(root, "qkd_applications"), _el(root, "qkd_links")


def plan_session(
    spec: SessionSpec,
    path: Sequence[str],
    spans: Sequence[str],
    interfaces: Mapping[tuple[str, str], int],
    *,
    channel_att_db: Mapping[str, float] | None = None,
    existing: frozenset[str] = frozenset(),
    generation: int = 0,
    key_links: Mapping[str, str] | None = None,
) -> SessionPlan:
    """The 015 configuration for ``spec`` over ``path`` (node ids) through ``spans`` (one per hop).

    ``interfaces[(node_id, span_id)]`` is the qkdi_id by which the node attaches to the span.
    ``existing`` holds the qkdl_ids of PHYS links already provisioned (only their application lists
    are touched); new PHYS links start with ``qkdl_status`` OFF, and the controller sets ACTIVE once
    both ends produce key. ``generation`` counts re-routes: each path of a session has its own VIRT
    link and application ids, so one transaction can remove the old path and create the new one.
    ``key_links[hop]`` names the key link of a hop in ``spans`` that is a repeater segment, not a span
    (no interfaces needed; see the module docstring).
    """
    if len(path) < 2 or len(spans) != len(path) - 1:
        raise QsdnError(f"session {spec.session_id}: a path needs n nodes and n-1 spans", tag="invalid-value")
    if len(set(path)) != len(path):
        raise QsdnError(f"session {spec.session_id}: the path visits a node twice", tag="invalid-value")
    hops: list[HopPlan] = []
    key_links = key_links or {}
    for i, span_id in enumerate(spans):
        a, b = path[i], path[i + 1]
        if span_id in key_links:
            hops.append(HopPlan(span_id, key_links[span_id], a, b, 0, 0, virtual=True))
            continue
        try:
            tx_if, rx_if = interfaces[(a, span_id)], interfaces[(b, span_id)]
        except KeyError as exc:
            raise QsdnError(
                f"session {spec.session_id}: no interface known on node {exc.args[0][0]} for span {span_id}",
                tag="invalid-value",
            ) from None
        hops.append(
            HopPlan(
                span_id=span_id,
                qkdl_id=phys_link_id(span_id),
                transmitter=a,
                receiver=b,
                tx_qkdi_id=tx_if,
                rx_qkdi_id=rx_if,
                channel_att_db=(channel_att_db or {}).get(span_id),
            )
        )
    src, dst = path[0], path[-1]
    sid = spec.session_id
    direct = len(path) == 2
    gen = str(generation)
    virt_id = None if direct else derived_id("virt", sid, gen)
    client_app = derived_id("client", sid, gen)
    backing = hops[0].qkdl_id if direct else virt_id
    assert backing is not None

    edits: dict[str, str] = {}
    removals: dict[str, str] = {}
    owned_links: dict[str, tuple[str, ...]] = {}
    owned_apps: dict[str, tuple[str, ...]] = {}
    for idx, node in enumerate(path):
        root = _node_root(node)
        apps, links = _containers(root)
        rm = _node_root(node)
        rm_apps, rm_links = _containers(rm)
        node_links: list[str] = []
        node_apps: list[str] = []
        adjacent = [h for h in hops if node in (h.transmitter, h.receiver)]
        internal: dict[str, str] = {}
        if 0 < idx < len(path) - 1:
            for h in adjacent:
                internal[h.qkdl_id] = derived_id("internal", sid, gen, node, h.qkdl_id)
        # applications
        if node in (src, dst):
            app = _el(apps, "qkd_app")
            _el(app, "app_id", client_app)
            _el(app, "app_type", f"{_T}:CLIENT")
            _el(app, "server_app_id", spec.src_sae)
            _el(app, "client_app_id", spec.dst_sae)
            qos = _el(app, "app_qos")
            _el(qos, "max_bandwidth", str(spec.rate_bps))
            _el(qos, "min_bandwidth", str(spec.rate_bps))
            _el(app, "backing_qkdl_id", backing)
            _el(app, "local_qkdn_id", node)
            _el(app, "remote_qkdn_id", dst if node == src else src)
            node_apps.append(client_app)
        for qkdl_id, app_id in sorted(internal.items(), key=lambda kv: kv[1]):
            h = next(h for h in adjacent if h.qkdl_id == qkdl_id)
            app = _el(apps, "qkd_app")
            _el(app, "app_id", app_id)
            _el(app, "app_type", f"{_T}:INTERNAL")
            _el(app, "server_app_id", f"urn:qsdn:relay:{virt_id}")
            qos = _el(app, "app_qos")
            _el(qos, "max_bandwidth", str(spec.rate_bps))
            _el(qos, "min_bandwidth", str(spec.rate_bps))
            _el(app, "backing_qkdl_id", qkdl_id)
            _el(app, "local_qkdn_id", node)
            _el(app, "remote_qkdn_id", h.receiver if h.transmitter == node else h.transmitter)
            node_apps.append(app_id)
        # PHYS links of the adjacent hops (merged: they may already exist for other sessions)
        for h in adjacent:
            tx = h.transmitter == node
            if h.virtual:
                # a repeater segment's key link: the session's own, removed with it
                link = _el(links, "qkd_link")
                _el(link, "qkdl_id", h.qkdl_id)
                _el(link, "qkdl_enable", "true")
                _el(_el(link, "qkdl_local"), "qkdn_id", node)
                _el(_el(link, "qkdl_remote"), "qkdn_id", h.receiver if tx else h.transmitter)
                _el(link, "qkdl_type", f"{_T}:VIRT")
                if h.qkdl_id in internal:
                    _el(link, "qkdl_applications", internal[h.qkdl_id])
                elif direct and node in (src, dst):
                    _el(link, "qkdl_applications", client_app)
                node_links.append(h.qkdl_id)
                rm_link = _el(rm_links, "qkd_link")
                rm_link.set(f"{{{NC_NS}}}operation", "remove")
                _el(rm_link, "qkdl_id", h.qkdl_id)
                continue
            link = _el(links, "qkd_link")
            _el(link, "qkdl_id", h.qkdl_id)
            if h.qkdl_id in existing:
                if h.qkdl_id in internal:
                    _el(link, "qkdl_applications", internal[h.qkdl_id])
                elif direct and node in (src, dst):
                    _el(link, "qkdl_applications", client_app)
                else:
                    links.remove(link)
                if h.qkdl_id in internal:
                    rm_link = _el(rm_links, "qkd_link")
                    _el(rm_link, "qkdl_id", h.qkdl_id)
                    _el(rm_link, "qkdl_applications", internal[h.qkdl_id]).set(
                        f"{{{NC_NS}}}operation", "remove"
                    )
                continue
            _el(link, "qkdl_status", f"{_T}:OFF")
            _el(link, "qkdl_enable", "true")
            loc = _el(link, "qkdl_local")
            _el(loc, "qkdn_id", node)
            _el(loc, "qkdi_id", str(h.tx_qkdi_id if tx else h.rx_qkdi_id))
            rem = _el(link, "qkdl_remote")
            _el(rem, "qkdn_id", h.receiver if tx else h.transmitter)
            _el(rem, "qkdi_id", str(h.rx_qkdi_id if tx else h.tx_qkdi_id))
            _el(link, "qkdl_type", f"{_T}:PHYS")
            if h.qkdl_id in internal:
                _el(link, "qkdl_applications", internal[h.qkdl_id])
            if h.channel_att_db is not None:
                _el(link, "phys_channel_att", f"{h.channel_att_db:.3f}")
            _el(link, "phys_qkd_role", f"{_T}:{'TRANSMITTER' if tx else 'RECEIVER'}")
            if h.qkdl_id in internal:
                rm_link = _el(rm_links, "qkd_link")
                _el(rm_link, "qkdl_id", h.qkdl_id)
                la = _el(rm_link, "qkdl_applications", internal[h.qkdl_id])
                la.set(f"{{{NC_NS}}}operation", "remove")
        # the VIRT link
        if virt_id is not None:
            link = _el(links, "qkd_link")
            _el(link, "qkdl_id", virt_id)
            _el(link, "qkdl_enable", "true")
            _el(_el(link, "qkdl_local"), "qkdn_id", src)
            _el(_el(link, "qkdl_remote"), "qkdn_id", dst)
            _el(link, "qkdl_type", f"{_T}:VIRT")
            if node in (src, dst):
                _el(link, "qkdl_applications", client_app)
            if idx > 0:
                _el(link, "virt_prev_hop", path[idx - 1])
            if idx < len(path) - 1:
                _el(link, "virt_next_hop", path[idx + 1])
            _el(link, "virt_bandwidth", str(spec.rate_bps))
            node_links.append(virt_id)
            rm_link = _el(rm_links, "qkd_link")
            rm_link.set(f"{{{NC_NS}}}operation", "remove")
            _el(rm_link, "qkdl_id", virt_id)
        elif node in (src, dst) and not hops[0].virtual:
            # direct session: the PHYS link lists the client application
            for link in links.iterfind(f"{{{NODE_NS}}}qkd_link"):
                if link.find(f"{{{NODE_NS}}}qkdl_type") is not None:
                    apps_el = etree.Element(f"{{{NODE_NS}}}qkdl_applications")
                    apps_el.text = client_app
                    link.find(f"{{{NODE_NS}}}qkdl_type").addnext(apps_el)  # type: ignore[union-attr]
                rm_link = _el(rm_links, "qkd_link")
                _el(rm_link, "qkdl_id", link.findtext(f"{{{NODE_NS}}}qkdl_id"))
                la = _el(rm_link, "qkdl_applications", client_app)
                la.set(f"{{{NC_NS}}}operation", "remove")
        for app_id in node_apps:
            rm_app = _el(rm_apps, "qkd_app")
            rm_app.set(f"{{{NC_NS}}}operation", "remove")
            _el(rm_app, "app_id", app_id)
        for parent in (apps, links, rm_apps, rm_links):
            if len(parent) == 0:
                parent.getparent().remove(parent)  # type: ignore[union-attr]
        edits[node] = etree.tostring(root).decode()
        removals[node] = etree.tostring(rm).decode()
        owned_links[node] = tuple(node_links)
        owned_apps[node] = tuple(node_apps)
    return SessionPlan(
        session_id=sid,
        generation=generation,
        new_links=frozenset(h.qkdl_id for h in hops if h.qkdl_id not in existing and not h.virtual),
        path=tuple(path),
        hops=tuple(hops),
        virt_qkdl_id=virt_id,
        client_app_id=client_app,
        edits=edits,
        removals=removals,
        owned_links=owned_links,
        owned_apps=owned_apps,
    )


def combine(*subtrees: str) -> str:
    """One ``<qkd_node>`` edit from several (same node): containers merged at every depth (``qkd_links``,
    ``entanglement/sessions``, ...), their list entries side by side, in order."""
    roots = [etree.fromstring(t) for t in subtrees if t]
    if not roots:
        return ""
    out = roots[0]
    for other in roots[1:]:
        for child in other:
            if etree.QName(child).localname == "qkdn_id":
                continue
            _merge(out, child)
    return etree.tostring(out).decode()


#: key leaves of the list entries a plan writes (015 links, applications, interfaces; entanglement lists)
_ENTRY_KEYS = frozenset({"qkdl_id", "app_id", "qkdi_id", "link_id", "session_id", "source_id"})


def _merge(parent: etree._Element, child: etree._Element) -> None:
    """Put ``child`` under ``parent``: a container merges into one of the same name, anything else is
    appended."""
    same = parent.find(child.tag)
    entry = any(isinstance(c.tag, str) and etree.QName(c).localname in _ENTRY_KEYS for c in child)
    if same is None or len(child) == 0 or entry:
        parent.append(child)
        return
    for grandchild in list(child):
        _merge(same, grandchild)
