"""Who may get which keys, read from the node's running ETSI GS QKD 015 configuration (pure).

The controller provisions a key session by writing a CLIENT ``qkd_app`` on both end nodes
(SYSTEM.md section 2, step 3): ``server_app_id`` is the master SAE, ``client_app_id`` the slave SAE(s),
``backing_qkdl_id`` the link the keys come from, ``local_qkdn_id`` the node itself and
``remote_qkdn_id`` the far node. At this node such an application means:

* the master SAE may call ``status`` and ``enc_keys`` for each of its slaves: the keys are drawn from
  the backing link and shared with the KME of ``remote_qkdn_id``;
* each slave SAE may call ``dec_keys`` for keys that master's session left here.

Any other SAE, or another pair, is refused (401). Only CLIENT applications grant keys to SAEs; the
application must name this node as ``local_qkdn_id``.

INTERNAL applications authorise relaying (:meth:`Authorisation.relay_grant`): controller/provision.py
gives every relay node of a VIRT link one INTERNAL application per adjacent hop link of the path (a PHYS
link, or the key link of a repeater segment, see below), with ``server_app_id`` =
``urn:qsdn:relay:<virt qkdl_id>``, ``backing_qkdl_id`` = that link and ``remote_qkdn_id`` = the adjacent
node. A relay node takes a hop of a VIRT link from, and passes it to, only the neighbours such
applications name.

The application is the same at both ends (local and remote swapped), so the 015 data does not say at
which of the two nodes the master SAE is attached: a master may open its session at either end, and
its keys then wait for the slave at the other. That is harmless (both SAEs are entitled to the keys)
and is how the KME behaves whichever way round the SAEs are cabled.

Backing links: the first of ``backing_qkdl_id`` that is a direct link of this node is used. A VIRT link
is served by trusted relay (:mod:`agent.kme.relay`, :meth:`Authorisation.virt_route`). A PHYS link
must be enabled and join this node to ``remote_qkdn_id``. A VIRT link with neither ``virt_prev_hop``
nor ``virt_next_hop`` that is the ``key_qkdl_id`` of a ``qsdn-entanglement`` session (BBM92 key, the
same blocks at both ends, no relay) is served directly, like a PHYS link (:attr:`LinkInfo.direct`), and
a trusted relay uses it as a hop exactly like a PHYS link (:meth:`Authorisation.hop_to`: a mixed
session's QKD and repeater segments).

The parsed view is cached per running configuration (the datastore hands out the same string until it
changes), so a request costs a dictionary lookup.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from lxml import etree

from agent.datastore import wrap

__all__ = ["AppGrant", "Authorisation", "InternalGrant", "LinkInfo", "Route", "authorisation"]

NS = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
ENT_NS = "urn:qsdn:yang:qsdn-entanglement"


def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


def _text(el: etree._Element | None, *path: str) -> str | None:
    cur = el
    for p in path:
        if cur is None:
            return None
        cur = cur.find(_q(p))
    if cur is None or cur.text is None:
        return None
    return cur.text.strip()


def _identity(el: etree._Element, name: str) -> str | None:
    leaf = el.find(_q(name))
    if leaf is None or not leaf.text:
        return None
    value = leaf.text.strip()
    if ":" in value:
        prefix, local = value.split(":", 1)
        if leaf.nsmap.get(prefix) not in (TYPES_NS, None):
            return None
        return local
    return value


@dataclass(frozen=True)
class LinkInfo:
    qkdl_id: str
    kind: str  # "PHYS" or "VIRT"
    enabled: bool
    remote_qkdn_id: str | None
    local_qkdn_id: str | None = None
    virt_prev_hop: str | None = None
    virt_next_hop: str | None = None
    virt_bandwidth: int | None = None
    #: every ``virt_next_hop`` entry, in order (several: a multicast branch, see agent/kme/relay.py)
    virt_next_hops: tuple[str, ...] = ()
    #: the ``key_qkdl_id`` of an entanglement session here (BBM92 key at both ends)
    entangled: bool = False

    @property
    def direct(self) -> bool:
        """Both ends hold the same key blocks: PHYS, or a VIRT link without hops fed by entanglement."""
        if self.kind == "PHYS":
            return True
        return self.kind == "VIRT" and self.entangled and not self.virt_prev_hop and not self.virt_next_hops


@dataclass(frozen=True)
class AppGrant:
    app_id: str
    master: str
    slaves: frozenset[str]
    backing: tuple[str, ...]
    remote_qkdn_id: str | None


@dataclass(frozen=True)
class InternalGrant:
    """An INTERNAL application: relay capacity of the VIRT link named by ``server_app_id`` reserved on
    the direct link(s) ``backing`` (PHYS or entanglement key links) towards node ``remote_qkdn_id``."""

    app_id: str
    server_app_id: str
    backing: tuple[str, ...]
    remote_qkdn_id: str | None


#: ``server_app_id`` of the INTERNAL applications relaying a VIRT link (controller/provision.py).
RELAY_APP_PREFIX = "urn:qsdn:relay:"


@dataclass(frozen=True)
class Route:
    """Where the keys of a session come from: a direct link (PHYS or entanglement key link) to the peer."""

    app: AppGrant
    qkdl_id: str
    peer_qkdn_id: str


class RouteError(Exception):
    """The application exists but its keys cannot be served now; ``relay`` if it needs key relaying."""

    def __init__(self, message: str, *, relay: bool = False) -> None:
        super().__init__(message)
        self.relay = relay


@dataclass(frozen=True)
class Authorisation:
    node_id: str
    links: dict[str, LinkInfo] = field(default_factory=dict)
    by_pair: dict[tuple[str, str], tuple[AppGrant, ...]] = field(default_factory=dict)
    internal: tuple[InternalGrant, ...] = ()

    def relay_grant(self, virt_qkdl_id: str, qkdl_id: str, node: str) -> InternalGrant | None:
        """The INTERNAL application that lets this node relay VIRT link ``virt_qkdl_id`` over the direct
        link ``qkdl_id`` (PHYS or entanglement key link) with the adjacent ``node``, if the controller
        configured one."""
        want = RELAY_APP_PREFIX + virt_qkdl_id
        for app in self.internal:
            if app.server_app_id == want and qkdl_id in app.backing and app.remote_qkdn_id == node:
                return app
        return None

    def apps(self, master: str, slave: str) -> tuple[AppGrant, ...]:
        """CLIENT applications at this node for the ``master`` -> ``slave`` pair, by app_id."""
        return self.by_pair.get((master, slave), ())

    def route(self, master: str, slave: str) -> Route:
        """The direct link the pair's keys come from; :class:`RouteError` if none can serve now."""
        apps = self.apps(master, slave)
        if not apps:
            raise LookupError(f"no application for {master} -> {slave}")
        problems: list[str] = []
        relay = False
        for app in apps:
            if not app.backing:
                problems.append(f"application {app.app_id} has no backing_qkdl_id")
                continue
            if app.remote_qkdn_id is None:
                problems.append(f"application {app.app_id} has no remote_qkdn_id")
                continue
            for qkdl_id in app.backing:
                link = self.links.get(qkdl_id)
                if link is None:
                    problems.append(
                        f"application {app.app_id}: backing link {qkdl_id} is not configured here"
                    )
                elif link.kind == "VIRT" and not link.direct:
                    relay = True
                    problems.append(
                        f"application {app.app_id}: backing link {qkdl_id} is VIRT (keys come by"
                        " trusted relay)"
                    )
                elif not link.direct:
                    problems.append(f"application {app.app_id}: backing link {qkdl_id} has no qkdl_type")
                elif not link.enabled:
                    problems.append(f"application {app.app_id}: backing link {qkdl_id} is disabled")
                elif link.remote_qkdn_id != app.remote_qkdn_id:
                    problems.append(
                        f"application {app.app_id}: backing link {qkdl_id} goes to node"
                        f" {link.remote_qkdn_id}, not to the application's remote_qkdn_id"
                        f" {app.remote_qkdn_id}"
                    )
                else:
                    return Route(app, qkdl_id, link.remote_qkdn_id)
        raise RouteError("; ".join(problems), relay=relay)

    def virt_route(self, master: str, slave: str) -> LinkInfo | None:
        """The enabled VIRT link backing the pair's CLIENT application here, if the keys are relayed."""
        for app in self.apps(master, slave):
            for qkdl_id in app.backing:
                link = self.links.get(qkdl_id)
                if link is not None and link.kind == "VIRT" and link.enabled and not link.direct:
                    return link
        return None

    def hop_to(self, node: str, virt_qkdl_id: str | None = None) -> LinkInfo | None:
        """The enabled direct link (PHYS, or an entanglement key link) of this node to the adjacent
        ``node`` that a relay hop of ``virt_qkdl_id`` runs over: among those the INTERNAL applications of
        that VIRT link name (a relay), else among all; the lowest qkdl_id."""
        hops = [
            link
            for _, link in sorted(self.links.items())
            if link.direct and link.enabled and link.remote_qkdn_id == node
        ]
        if virt_qkdl_id is not None:
            granted = [link for link in hops if self.relay_grant(virt_qkdl_id, link.qkdl_id, node)]
            hops = granted or hops
        return hops[0] if hops else None

    def peer_may_share(self, peer: str, qkdl_id: str, master: str, slave: str) -> str | None:
        """Why the KME of node ``peer`` may not share keys of ``master`` -> ``slave`` over ``qkdl_id``
        with this node (``None``: it may)."""
        link = self.links.get(qkdl_id)
        if link is None or not link.direct:
            return f"link {qkdl_id} is not a PHYS link (or entanglement key link) of this node"
        if link.remote_qkdn_id != peer:
            return f"link {qkdl_id} does not join this node to node {peer}"
        if not link.enabled:
            return f"link {qkdl_id} is disabled"
        for app in self.apps(master, slave):
            if qkdl_id in app.backing and app.remote_qkdn_id == peer:
                return None
        return f"no CLIENT application here for {master} -> {slave} over link {qkdl_id} with node {peer}"


@functools.lru_cache(maxsize=8)
def authorisation(running_xml: str, node_id: str) -> Authorisation:
    """The authorisation view of a running configuration (cached; do not modify the result)."""
    node_id = node_id.lower()
    links: dict[str, LinkInfo] = {}
    pairs: dict[tuple[str, str], list[AppGrant]] = {}
    internal: list[InternalGrant] = []
    node = wrap(running_xml).find(_q("qkd_node")) if running_xml.strip() else None
    entangled: set[str] = set()
    if node is not None:
        names = ("entanglement", "sessions", "session", "key_qkdl_id")
        key_links = "/".join(f"{{{ENT_NS}}}{n}" for n in names)
        entangled = {(e.text or "").strip() for e in node.iterfind(key_links)}
    if node is not None:
        for link in node.iterfind(f"{_q('qkd_links')}/{_q('qkd_link')}"):
            qkdl_id = _text(link, "qkdl_id")
            if qkdl_id is None:
                continue
            kind = _identity(link, "qkdl_type") or ""
            remote = _text(link, "qkdl_remote", "qkdn_id")
            local = _text(link, "qkdl_local", "qkdn_id")
            prev_hop = _text(link, "virt_prev_hop")
            next_hops = tuple(
                (e.text or "").strip().lower()
                for e in link.iterfind(_q("virt_next_hop"))
                if (e.text or "").strip()
            )
            bandwidth = _text(link, "virt_bandwidth")
            links[qkdl_id] = LinkInfo(
                qkdl_id=qkdl_id,
                kind=kind,
                enabled=_text(link, "qkdl_enable") != "false",
                remote_qkdn_id=remote.lower() if remote else None,
                local_qkdn_id=local.lower() if local else None,
                virt_prev_hop=prev_hop.lower() if prev_hop else None,
                virt_next_hop=next_hops[0] if next_hops else None,
                virt_bandwidth=int(bandwidth) if bandwidth and bandwidth.isdigit() else None,
                virt_next_hops=next_hops,
                entangled=qkdl_id in entangled,
            )
        for app in node.iterfind(f"{_q('qkd_applications')}/{_q('qkd_app')}"):
            app_id = _text(app, "app_id")
            master = _text(app, "server_app_id")
            app_type = _identity(app, "app_type")
            if app_id is None or master is None or app_type not in ("CLIENT", "INTERNAL"):
                continue
            local = _text(app, "local_qkdn_id")
            if local is None or local.lower() != node_id:
                continue
            remote = _text(app, "remote_qkdn_id")
            if app_type == "INTERNAL":
                internal.append(
                    InternalGrant(
                        app_id=app_id,
                        server_app_id=master,
                        backing=tuple(
                            (e.text or "").strip()
                            for e in app.iterfind(_q("backing_qkdl_id"))
                            if (e.text or "").strip()
                        ),
                        remote_qkdn_id=remote.lower() if remote else None,
                    )
                )
                continue
            slaves = frozenset(
                (e.text or "").strip() for e in app.iterfind(_q("client_app_id")) if (e.text or "").strip()
            )
            grant = AppGrant(
                app_id=app_id,
                master=master,
                slaves=slaves,
                backing=tuple(
                    (e.text or "").strip()
                    for e in app.iterfind(_q("backing_qkdl_id"))
                    if (e.text or "").strip()
                ),
                remote_qkdn_id=remote.lower() if remote else None,
            )
            for slave in slaves:
                pairs.setdefault((master, slave), []).append(grant)
    return Authorisation(
        node_id=node_id,
        links=links,
        by_pair={k: tuple(sorted(v, key=lambda a: a.app_id)) for k, v in pairs.items()},
        internal=tuple(sorted(internal, key=lambda a: a.app_id)),
    )
