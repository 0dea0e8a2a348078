"""The node: binds the datastores to the hardware driver and produces the node's state data.

- The first running configuration comes from the hardware (node id, capabilities, interfaces).
- Every change of running is applied to the driver *before* it takes effect: PHYS links are created,
  enabled, disabled and removed; qsdn fault-injection switches are set. A driver refusal vetoes the
  change (the datastore stays as it was, the driver is put back) and becomes an ``<rpc-error>``.
- ``<get>`` merges the running configuration with state read from the driver at that moment
  (``qkdn_status``, ``qkdi_status``, ``qkdl_performance``, qsdn's ``qsdn_phys``/``qsdn_fibre``).
- Driver events become ETSI GS QKD 015 notifications on the NETCONF stream.
- With an entanglement driver (the agent configuration's ``entanglement`` section), the
  ``qsdn-entanglement`` sessions of running are applied to it in the same step (a session is created,
  or removed, or replaced when anything it depends on changed: its leaves, its hops' elementary links
  (``prev_link_id``/``next_link_id``, or the only link to that neighbour), the memories it may use
  (``prev_memories``/``next_memories``, or 1 per side at a repeater and 1 + purification rounds at an
  end), the node's memories); a refusal vetoes the whole change and both drivers are put back. ``<get>`` adds
  the state leaves of memories, elementary links and sessions, and status changes become
  ``entanglement_session_update`` notifications. Without an entanglement driver the container is
  configuration only.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from agent import notify
from agent.datastore import RUNNING, DatastoreManager, SessionInfo, wrap
from agent.drivers.base import (
    DriverEvent,
    DriverEventKind,
    ElementaryLinkConfig,
    EntanglementDriver,
    EntanglementEvent,
    EntanglementSessionConfig,
    FaultKind,
    InterfaceState,
    LinkRole,
    LinkSpec,
    LinkState,
    MemoryConfig,
    QkdDriver,
)
from agent.edit import Change
from qsdn.errors import DriverError, ErrorType, QsdnError
from qsdn.netconf.xml import ns_map
from qsdn.yang import SchemaContext

log = logging.getLogger(__name__)

NS = notify.ETSI_NS
TNS = notify.ETSI_TYPES_NS
EMU_NS = "urn:qsdn:yang:qsdn-qkd-emulation"
ENT_NS = "urn:qsdn:yang:qsdn-entanglement"


def _q(name: str, ns: str = NS) -> str:
    return f"{{{ns}}}{name}"


def _text(el: etree._Element | None, *path: str, ns: str = NS) -> str | None:
    cur = el
    for p in path:
        if cur is None:
            return None
        cur = cur.find(_q(p, ns))
    if cur is None or cur.text is None:
        return None
    return cur.text.strip()


def _identity(el: etree._Element | None, name: str) -> str | None:
    """The local name of an identityref leaf child, resolved through the element's namespace map."""
    if el is None:
        return None
    leaf = el.find(_q(name))
    if leaf is None or not leaf.text:
        return None
    value = leaf.text.strip()
    if ":" in value:
        prefix, local = value.split(":", 1)
        ns = leaf.nsmap.get(prefix)
        if ns is not None and ns != TNS:
            return None
        return local
    return value


@dataclass(frozen=True)
class DesiredLink:
    spec: LinkSpec
    enabled: bool
    fibre_cut: bool
    eavesdropper: float


@functools.lru_cache(maxsize=8)
def desired_links(xml: str, node_id: str) -> tuple[dict[str, DesiredLink], dict[int, bool]]:
    """PHYS links and interface faults the running configuration asks of the hardware.

    Cached: one change of running consults the old and new configuration several times (checks,
    reconcile, restore); callers must not modify the returned mappings."""
    root = wrap(xml)
    links: dict[str, DesiredLink] = {}
    det_fail: dict[int, bool] = {}
    node = root.find(_q("qkd_node"))
    if node is None:
        return links, det_fail
    for iface in node.iterfind(f"{_q('qkd_interfaces')}/{_q('qkd_interface')}"):
        qkdi = _text(iface, "qkdi_id")
        df = _text(iface, "qsdn_faults", "detector_failure", ns=EMU_NS)
        if qkdi is not None:
            det_fail[int(qkdi)] = df == "true"
    for link in node.iterfind(f"{_q('qkd_links')}/{_q('qkd_link')}"):
        qkdl_id = _text(link, "qkdl_id")
        if qkdl_id is None or _identity(link, "qkdl_type") != "PHYS":
            continue
        where = f"/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='{qkdl_id}']"
        local_iface = _text(link, "qkdl_local", "qkdi_id")
        if local_iface is None:
            raise QsdnError(
                f"PHYS link {qkdl_id} needs qkdl_local/qkdi_id naming one of this node's interfaces",
                tag="data-missing",
                path=f"{where}/qkdl_local/qkdi_id",
            )
        local_node = _text(link, "qkdl_local", "qkdn_id")
        if local_node is not None and local_node != node_id:
            raise QsdnError(
                f"PHYS link {qkdl_id}: qkdl_local/qkdn_id {local_node} is not this node ({node_id})",
                tag="invalid-value",
                path=f"{where}/qkdl_local/qkdn_id",
            )
        remote_node = _text(link, "qkdl_remote", "qkdn_id")
        if remote_node is None:
            raise QsdnError(
                f"PHYS link {qkdl_id} needs qkdl_remote/qkdn_id",
                tag="data-missing",
                path=f"{where}/qkdl_remote/qkdn_id",
            )
        remote_iface = _text(link, "qkdl_remote", "qkdi_id")
        role = _identity(link, "phys_qkd_role") or LinkRole.TRANSCEIVER.value
        wl = _text(link, "phys_wavelength")
        att = _text(link, "phys_channel_att")
        faults = link.find(_q("qsdn_faults", EMU_NS))
        links[qkdl_id] = DesiredLink(
            spec=LinkSpec(
                qkdl_id=qkdl_id,
                local_qkdi_id=int(local_iface),
                remote_qkdn_id=remote_node,
                remote_qkdi_id=int(remote_iface) if remote_iface is not None else None,
                role=LinkRole(role),
                wavelength_nm=int(wl) if wl is not None else None,
                channel_att_db=float(att) if att is not None else None,
            ),
            enabled=_text(link, "qkdl_enable") != "false",
            fibre_cut=_text(faults, "fibre_cut", ns=EMU_NS) == "true",
            eavesdropper=float(_text(faults, "eavesdropper", ns=EMU_NS) or 0.0),
        )
    return links, det_fail


def _num(el: etree._Element | None, *path: str) -> float | None:
    v = _text(el, *path, ns=ENT_NS)
    return float(v) if v is not None else None


def session_memories(role: str, purification_rounds: int) -> int:
    """Memories a session uses per hop at a node whose configuration does not say (``prev_memories``/
    ``next_memories`` absent): the least it runs with, which is what the controller reserves, 1 at a
    repeater and ``1 + purification rounds`` at an end (the same rule as the model's memory check)."""
    return 1 if role == "repeater" else 1 + purification_rounds


def _hop_link(
    links: dict[str, ElementaryLinkConfig], hop: str, link_id: str | None
) -> ElementaryLinkConfig | None:
    """The elementary link a session uses towards ``hop``: the one it names, else the only one to that
    node (the model refuses a hop with several links and no name; the lowest link_id if it were so)."""
    if link_id is not None:
        return links.get(link_id)
    to_hop = sorted((lid for lid, link in links.items() if link.remote_qkdn_id == hop))
    return links[to_hop[0]] if to_hop else None


@functools.lru_cache(maxsize=8)
def desired_entanglement(xml: str) -> tuple[MemoryConfig | None, dict[str, EntanglementSessionConfig]]:
    """The node's memory and the entanglement sessions the running configuration asks for (cached; do
    not modify the result). Each session carries its hops' elementary links and the memory."""
    root = wrap(xml)
    node = root.find(_q("qkd_node"))
    ent = node.find(_q("entanglement", ENT_NS)) if node is not None else None
    if ent is None:
        return None, {}
    mem_el = ent.find(_q("memories", ENT_NS))
    swap = _num(ent, "bsm_station", "swap_success_probability")
    memory = MemoryConfig(
        count=int(_text(mem_el, "count", ns=ENT_NS) or 0),
        coherence_time_s=_num(mem_el, "coherence_time_s") or float("inf"),
        dephasing_time_s=_num(mem_el, "dephasing_time_s"),
        readout_fidelity=_num(mem_el, "readout_fidelity") or 1.0,
        initialisation_fidelity=_num(mem_el, "initialisation_fidelity") or 1.0,
        swap_success_probability=swap if swap else 1.0,
    )
    alphas: dict[str, float] = {}
    for src in ent.iterfind(f"{_q('sources', ENT_NS)}/{_q('source', ENT_NS)}"):
        sid = _text(src, "source_id", ns=ENT_NS)
        alpha = _num(src, "alpha")
        if sid is not None and alpha is not None:
            alphas[sid] = alpha
    links: dict[str, ElementaryLinkConfig] = {}  # by link_id
    for el in ent.iterfind(f"{_q('elementary_links', ENT_NS)}/{_q('elementary_link', ENT_NS)}"):
        link_id = _text(el, "link_id", ns=ENT_NS)
        remote = _text(el, "remote_qkdn_id", ns=ENT_NS)
        if link_id is None or remote is None:
            continue
        source = _text(el, "source_id", ns=ENT_NS)
        links[link_id] = ElementaryLinkConfig(
            link_id=link_id,
            remote_qkdn_id=remote,
            heralding=_text(el, "heralding", ns=ENT_NS) or "barrett-kok",
            station_qkdn_id=_text(el, "station_qkdn_id", ns=ENT_NS),
            length_km=_num(el, "length_km") or 0.0,
            loss_db=_num(el, "loss_db"),
            modes=int(_text(el, "modes", ns=ENT_NS) or 1),
            initial_fidelity=_num(el, "initial_fidelity") or 1.0,
            alpha=alphas.get(source) if source is not None else None,
        )
    sessions: dict[str, EntanglementSessionConfig] = {}
    for se in ent.iterfind(f"{_q('sessions', ENT_NS)}/{_q('session', ENT_NS)}"):
        sid = _text(se, "session_id", ns=ENT_NS)
        if sid is None:
            continue
        prev_hop = _text(se, "prev_hop", ns=ENT_NS)
        next_hop = _text(se, "next_hop", ns=ENT_NS)
        role = _text(se, "role", ns=ENT_NS) or "end"
        protocol = _text(se, "purification", "protocol", ns=ENT_NS) or "none"
        rounds = _text(se, "purification", "rounds", ns=ENT_NS)
        purification_rounds = (int(rounds) if rounds is not None else 1) if protocol != "none" else 0
        swap_round = _text(se, "swap_round", ns=ENT_NS)
        hop_links: list[ElementaryLinkConfig] = []
        hop_memories: list[int] = []
        for side, hop in (("prev", prev_hop), ("next", next_hop)):
            if hop is None:
                continue
            link = _hop_link(links, hop, _text(se, f"{side}_link_id", ns=ENT_NS))
            if link is not None:
                hop_links.append(link)
            mem = _text(se, f"{side}_memories", ns=ENT_NS)
            hop_memories.append(int(mem) if mem is not None else session_memories(role, purification_rounds))
        sessions[sid] = EntanglementSessionConfig(
            session_id=sid,
            role=role,
            end_a_qkdn_id=_text(se, "end_a_qkdn_id", ns=ENT_NS) or "",
            end_b_qkdn_id=_text(se, "end_b_qkdn_id", ns=ENT_NS) or "",
            path=tuple((p.text or "").strip() for p in se.iterfind(_q("path", ENT_NS))),
            prev_hop=prev_hop,
            next_hop=next_hop,
            application=_text(se, "application", ns=ENT_NS) or "pairs",
            memory=memory,
            links=tuple(hop_links),
            memories=tuple(hop_memories),
            swap_order=_text(se, "swap_order", ns=ENT_NS) or "asap",
            swap_round=int(swap_round) if swap_round is not None else None,
            purification=protocol,
            purification_rounds=purification_rounds,
            cutoff_time_s=_num(se, "cutoff_time_s"),
            target_fidelity=_num(se, "target_fidelity"),
            target_rate_pairs_per_s=_num(se, "target_rate_pairs_per_s"),
            key_qkdl_id=_text(se, "key_qkdl_id", ns=ENT_NS),
        )
    return memory, sessions


class Node:
    """One QKD node: identity, datastores, driver, notifications."""

    def __init__(
        self,
        *,
        node_id: str,
        schema: SchemaContext,
        datastores: DatastoreManager,
        driver: QkdDriver,
        bus: notify.NotificationBus,
        entanglement: EntanglementDriver | None = None,
    ) -> None:
        self.node_id = node_id
        self.schema = schema
        self.datastores = datastores
        self.driver = driver
        self.bus = bus
        self.entanglement = entanglement
        self.started = datetime.now(UTC)
        self._app_created: dict[str, datetime] = {}
        self._unsubscribe = driver.subscribe(self._on_driver_event)
        self._unsubscribe_ent = (
            entanglement.subscribe(self._on_entanglement_event) if entanglement is not None else None
        )
        datastores.listeners.append(self._apply_running)
        datastores.listeners.append(self._announce_change)

    @staticmethod
    def initial_config(node_id: str, location: str | None, driver: QkdDriver) -> str:
        """The running configuration a factory-new node starts with: what its hardware is."""
        node = etree.Element(_q("qkd_node"), nsmap=ns_map(NS, {"etsi-qkdn-types": TNS}))
        etree.SubElement(node, _q("qkdn_id")).text = node_id
        if location:
            etree.SubElement(node, _q("qkdn_location_id")).text = location
        ifaces = etree.SubElement(node, _q("qkd_interfaces"))
        for info in driver.interfaces():
            it = etree.SubElement(ifaces, _q("qkd_interface"))
            etree.SubElement(it, _q("qkdi_id")).text = str(info.qkdi_id)
            etree.SubElement(it, _q("qkdi_model")).text = info.model
            etree.SubElement(it, _q("qkdi_type")).text = f"etsi-qkdn-types:{info.technology}"
            att = etree.SubElement(it, _q("qkdi_att_point"))
            etree.SubElement(att, _q("device")).text = info.device
            etree.SubElement(att, _q("port")).text = str(info.port)
            caps = etree.SubElement(it, _q("qkdi_capabilities"))
            etree.SubElement(caps, _q("role_support")).text = f"etsi-qkdn-types:{info.role_support.value}"
            if info.wavelength_range_nm is not None:
                lo, hi = info.wavelength_range_nm
                etree.SubElement(caps, _q("wavelength_range")).text = f"{lo}-{hi}" if hi != lo else str(lo)
            if info.max_absorption_db is not None:
                etree.SubElement(caps, _q("max_absorption")).text = notify.decimal(info.max_absorption_db, 3)
        return etree.tostring(node).decode()

    async def start(self) -> None:
        """Bring the hardware to what the (persisted) running configuration says."""
        running = self.datastores.get(RUNNING)
        try:
            self._check_links(running)
        except QsdnError as exc:
            log.warning("the persisted running configuration cannot be fully applied: %s", exc)
        await self._reconcile("", running, best_effort=True)
        await self._reconcile_entanglement("", running, best_effort=True)

    async def close(self) -> None:
        self._unsubscribe()
        if self._unsubscribe_ent is not None:
            self._unsubscribe_ent()

    # --- running -> driver ------------------------------------------------------------------------
    async def _apply_running(self, old: str, new: str, changes: list[Change], session: SessionInfo) -> None:
        self._check_identity(new)
        self._check_links(new)
        try:
            await self._reconcile(old, new)
        except QsdnError:
            log.warning("driver refused the new configuration; restoring the previous one")
            await self._reconcile(new, old, best_effort=True)
            raise
        try:
            await self._reconcile_entanglement(old, new)
        except QsdnError:
            log.warning("entanglement driver refused the new configuration; restoring the previous one")
            await self._reconcile_entanglement(new, old, best_effort=True)
            await self._reconcile(new, old, best_effort=True)
            raise

    async def _reconcile_entanglement(self, old_xml: str, new_xml: str, *, best_effort: bool = False) -> None:
        """Create, replace and remove entanglement sessions from what ``old_xml`` to what ``new_xml`` asks."""
        ent = self.entanglement
        if ent is None:
            return
        _, old = desired_entanglement(old_xml) if old_xml else (None, {})
        _, new = desired_entanglement(new_xml)
        try:
            for sid in sorted(set(old) - set(new)):
                await ent.remove_session(sid)
            for sid, spec in sorted(new.items()):
                if old.get(sid) != spec:
                    try:
                        await ent.create_session(spec)
                    except QsdnError as exc:
                        if not best_effort:
                            raise QsdnError(
                                f"entanglement session {sid}: {exc.first.message}",
                                tag="operation-failed",
                                path="/etsi-qkd-sdn-node:qkd_node/qsdn-entanglement:entanglement/sessions"
                                f"/session[session_id='{sid}']",
                            ) from exc
                        log.info("restoring entanglement session %s: %s", sid, exc)
        except QsdnError:
            raise
        except Exception as exc:  # a driver bug must not take the agent down
            log.exception("entanglement driver failed while applying configuration")
            raise DriverError(f"the entanglement driver failed: {exc}") from exc

    def _check_links(self, xml: str) -> None:
        """Refuse, before touching the hardware, PHYS links this node cannot have."""
        new, _ = desired_links(xml, self.node_id)
        known = {i.qkdi_id for i in self.driver.interfaces()}
        for qkdl_id, want in sorted(new.items()):
            if want.spec.local_qkdi_id not in known:
                raise QsdnError(
                    f"PHYS link {qkdl_id}: this node has no interface {want.spec.local_qkdi_id}"
                    f" (it has {', '.join(map(str, sorted(known))) or 'none'})",
                    tag="invalid-value",
                    path=f"/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='{qkdl_id}']/qkdl_local/qkdi_id",
                )

    def _check_identity(self, xml: str) -> None:
        root = wrap(xml)
        node = root.find(_q("qkd_node"))
        if node is None:
            return
        qkdn_id = _text(node, "qkdn_id")
        if qkdn_id is not None and qkdn_id != self.node_id:
            raise QsdnError(
                f"qkdn_id is this node's identity ({self.node_id}) and cannot be set to {qkdn_id}",
                tag="invalid-value",
                path="/etsi-qkd-sdn-node:qkd_node/qkdn_id",
            )

    async def _reconcile(self, old_xml: str, new_xml: str, *, best_effort: bool = False) -> None:
        """Drive the hardware from what ``old_xml`` asked to what ``new_xml`` asks.

        With ``best_effort`` (restoring after a refusal) every step is tried and a failing step is
        logged, not raised: the hardware may be anywhere between the two configurations.
        """

        async def call(step: Any, *args: Any, **kw: Any) -> None:
            try:
                await step(*args, **kw)
            except QsdnError as exc:
                if not best_effort:
                    raise
                log.info("restoring the driver: %s", exc)

        old, old_df = desired_links(old_xml, self.node_id) if old_xml else ({}, {})
        new, new_df = desired_links(new_xml, self.node_id)
        known = {i.qkdi_id for i in self.driver.interfaces()}
        try:
            for qkdl_id in sorted(set(old) - set(new)):
                await call(self.driver.remove_link, qkdl_id)
            for qkdl_id, want in sorted(new.items()):
                have = old.get(qkdl_id)
                if have is not None and have.spec != want.spec:
                    await call(self.driver.remove_link, qkdl_id)
                    have = None
                if have is None:
                    await call(self.driver.create_link, want.spec)
                if have is None or have.enabled != want.enabled:
                    if want.enabled:
                        await call(self.driver.enable_link, qkdl_id)
                    else:
                        await call(self.driver.disable_link, qkdl_id)
                cut_changed = have.fibre_cut != want.fibre_cut if have else want.fibre_cut
                if cut_changed:
                    await call(self.driver.set_fault, FaultKind.FIBRE_CUT, want.fibre_cut, qkdl_id=qkdl_id)
                eve_changed = have.eavesdropper != want.eavesdropper if have else want.eavesdropper > 0
                if eve_changed:
                    level = want.eavesdropper or 1.0
                    on = want.eavesdropper > 0
                    eve = FaultKind.EAVESDROPPER
                    await call(self.driver.set_fault, eve, on, qkdl_id=qkdl_id, level=level)
            for qkdi_id, failed in sorted(new_df.items()):
                if qkdi_id in known and old_df.get(qkdi_id, False) != failed:
                    await call(self.driver.set_fault, FaultKind.DETECTOR_FAILURE, failed, qkdi_id=qkdi_id)
        except DriverError:
            raise
        except QsdnError:
            raise
        except Exception as exc:  # a driver bug must not take the agent down
            log.exception("driver failed while applying configuration")
            raise DriverError(f"the QKD driver failed: {exc}") from exc

    async def _announce_change(self, old: str, new: str, changes: list[Change], session: SessionInfo) -> None:
        if changes:
            ns = {m.name: m.namespace for m in self.schema.modules()}
            self.bus.publish(notify.config_change(RUNNING, changes, session, ns))

    # --- driver -> notifications ------------------------------------------------------------------
    def _on_driver_event(self, ev: DriverEvent) -> None:
        if ev.kind == DriverEventKind.LINK_DOWN and ev.qkdl_id:
            log.info("link %s down: %s", ev.qkdl_id, ev.reason)
            self.bus.publish(notify.link_down(ev.qkdl_id, ev.reason))
        elif ev.kind == DriverEventKind.LINK_PERF and ev.qkdl_id and ev.performance is not None:
            p = ev.performance
            self.bus.publish(
                notify.link_perf_update(
                    ev.qkdl_id,
                    skr_bps=p.skr_bps,
                    eskr_bps=p.eskr_bps,
                    expected_consumption_bps=p.expected_consumption_bps,
                    qber=p.qber,
                )
            )
        elif ev.kind == DriverEventKind.INTERFACE_DOWN and ev.qkdi_id is not None:
            self.bus.publish(notify.interface_down(ev.qkdi_id, ev.reason))
        elif ev.kind == DriverEventKind.ALARM:
            self.bus.publish(notify.alarm(ev.qkdl_id, None, ev.reason))
        elif ev.kind == DriverEventKind.LINK_UP and ev.qkdl_id:
            log.info("link %s up", ev.qkdl_id)

    def _on_entanglement_event(self, ev: EntanglementEvent) -> None:
        root = etree.Element(_q("entanglement_session_update", ENT_NS), nsmap=ns_map(ENT_NS))
        sess = etree.SubElement(root, _q("session", ENT_NS))
        etree.SubElement(sess, _q("session_id", ENT_NS)).text = ev.session_id
        etree.SubElement(sess, _q("status", ENT_NS)).text = ev.status
        if ev.reason is not None:
            etree.SubElement(sess, _q("reason", ENT_NS)).text = ev.reason
        if ev.achieved_fidelity is not None:
            etree.SubElement(sess, _q("achieved_fidelity", ENT_NS)).text = _fidelity(ev.achieved_fidelity)
        if ev.target_fidelity is not None:
            etree.SubElement(sess, _q("target_fidelity", ENT_NS)).text = _fidelity(ev.target_fidelity)
        if ev.rate_pairs_per_s is not None:
            rate = notify.decimal(ev.rate_pairs_per_s, 6)
            etree.SubElement(sess, _q("rate_pairs_per_s", ENT_NS)).text = rate
        if ev.link_id is not None:
            etree.SubElement(sess, _q("link_id", ENT_NS)).text = ev.link_id
        self.bus.publish(root)

    # --- state data -------------------------------------------------------------------------------
    def operational(self, config_xml: str | None = None) -> str:
        """Running configuration plus state read from the driver now, validated and canonical."""
        root = wrap(self.datastores.get(RUNNING) if config_xml is None else config_xml)
        node = root.find(_q("qkd_node"))
        if node is None:
            node = etree.SubElement(root, _q("qkd_node"), nsmap=ns_map(NS))
            etree.SubElement(node, _q("qkdn_id")).text = self.node_id
        self._add_state(node)
        xml = b"".join(etree.tostring(c) for c in root)
        try:
            with self.schema.parsed(xml, "xml", config_only=False) as tree:
                return str(tree.print_mem("xml", with_siblings=True, pretty=False)) if tree else ""
        except QsdnError as exc:
            # State data that does not fit the schema is a bug in the driver or here: say so clearly.
            raise QsdnError(
                f"internal error: state data does not validate: {exc}", type=ErrorType.APPLICATION
            ) from exc

    def _add_entanglement_state(self, node: etree._Element) -> None:
        ent_driver = self.entanglement
        ent = node.find(_q("entanglement", ENT_NS))
        if ent_driver is None or ent is None:
            return

        def leaf(parent: etree._Element, name: str, value: str) -> None:
            etree.SubElement(parent, _q(name, ENT_NS)).text = value

        mem = ent.find(_q("memories", ENT_NS))
        if mem is not None:
            count = int(_text(mem, "count", ns=ENT_NS) or 0)
            ms = ent_driver.memory_state(count)
            leaf(mem, "in_use", str(ms.in_use))
            leaf(mem, "free", str(ms.free))
        for link in ent.iterfind(f"{_q('elementary_links', ENT_NS)}/{_q('elementary_link', ENT_NS)}"):
            link_id = _text(link, "link_id", ns=ENT_NS)
            ls = ent_driver.link_state(link_id) if link_id is not None else None
            if ls is None:
                continue
            leaf(link, "status", ls.status)
            leaf(link, "pairs_generated", str(ls.pairs_generated))
            leaf(link, "rate_pairs_per_s", notify.decimal(ls.rate_pairs_per_s, 6))
            if ls.mean_fidelity is not None:
                leaf(link, "mean_fidelity", _fidelity(ls.mean_fidelity))
        for sess in ent.iterfind(f"{_q('sessions', ENT_NS)}/{_q('session', ENT_NS)}"):
            sid = _text(sess, "session_id", ns=ENT_NS)
            st = ent_driver.session_state(sid) if sid is not None else None
            if st is None:
                continue
            leaf(sess, "status", st.status)
            if st.achieved_fidelity is not None:
                leaf(sess, "achieved_fidelity", _fidelity(st.achieved_fidelity))
            leaf(sess, "rate_pairs_per_s", notify.decimal(st.rate_pairs_per_s, 6))
            leaf(sess, "pairs_delivered", str(st.pairs_delivered))
            if st.key_bits is not None:
                leaf(sess, "key_bits", str(st.key_bits))
            if st.qber is not None:
                leaf(sess, "qber", notify.decimal(min(max(st.qber, 0.0), 1.0), 6))

    def _add_state(self, node: etree._Element) -> None:
        node.nsmap  # noqa: B018 - namespace map is read below through child elements
        _ident(node, "qkdn_status", "OPERATING")
        self._add_entanglement_state(node)
        states = {}
        for info in self.driver.interfaces():
            states[info.qkdi_id] = info
        for iface in node.iterfind(f"{_q('qkd_interfaces')}/{_q('qkd_interface')}"):
            qkdi = _text(iface, "qkdi_id")
            if qkdi is None or int(qkdi) not in states:
                continue
            st = self.driver.interface_state(int(qkdi))
            _ident(iface, "qkdi_status", st.value if isinstance(st, InterfaceState) else str(st))
            fibre = self._fibre_state(int(qkdi))
            if fibre is not None:
                iface.append(fibre)
        now = datetime.now(UTC)
        apps = node.find(_q("qkd_applications"))
        # expected consumption of each link: the bandwidth its applications ask for (app_qos)
        demand: dict[str, int] = {}
        if apps is not None:
            for app in apps.iterfind(_q("qkd_app")):
                want = _text(app, "app_qos", "max_bandwidth") or _text(app, "app_qos", "min_bandwidth") or "0"
                for backing in app.iterfind(_q("backing_qkdl_id")):
                    if backing.text:
                        demand[backing.text.strip()] = demand.get(backing.text.strip(), 0) + int(want)
        if apps is not None:
            for app in apps.iterfind(_q("qkd_app")):
                app_id = _text(app, "app_id")
                if app_id is None:
                    continue
                created = self._app_created.setdefault(app_id, now)
                _ident(app, "app_status", "ON")
                etree.SubElement(app, _q("creation_time")).text = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        links = node.find(_q("qkd_links"))
        if links is None:
            return
        for link in links.iterfind(_q("qkd_link")):
            qkdl_id = _text(link, "qkdl_id")
            if qkdl_id is None:
                continue
            perf_el = link.find(_q("qkdl_performance"))
            if perf_el is None:
                perf_el = etree.SubElement(link, _q("qkdl_performance"))
            if _identity(link, "qkdl_type") != "PHYS":
                continue
            try:
                p = self.driver.performance(qkdl_id)
            except DriverError:
                continue
            expected = p.expected_consumption_bps or demand.get(qkdl_id, 0)
            etree.SubElement(perf_el, _q("expected_consumption")).text = str(notify._u32(expected))
            etree.SubElement(perf_el, _q("skr")).text = str(notify._u32(p.skr_bps))
            etree.SubElement(perf_el, _q("eskr")).text = str(notify._u32(p.eskr_bps))
            if p.qber is not None:
                pp = etree.SubElement(perf_el, _q("phys_perf"), nsmap={"etsi-qkdn-types": TNS})
                etree.SubElement(pp, _q("perf_type")).text = "etsi-qkdn-types:QBER"
                etree.SubElement(pp, _q("value")).text = notify.decimal(p.qber, 3)
            phys = etree.SubElement(link, _q("qsdn_phys", EMU_NS), nsmap={"qsdn-emu": EMU_NS})
            if p.length_km is not None:
                etree.SubElement(phys, _q("length_km", EMU_NS)).text = notify.decimal(p.length_km, 3)
            if p.band is not None:
                etree.SubElement(phys, _q("band", EMU_NS)).text = p.band
            if p.loss_db is not None:
                etree.SubElement(phys, _q("loss_db", EMU_NS)).text = notify.decimal(p.loss_db, 2)
            if p.qber is not None:
                etree.SubElement(phys, _q("qber", EMU_NS)).text = notify.decimal(
                    min(max(p.qber, 0.0), 1.0), 6
                )
            mu = getattr(p, "mu", None)
            if mu is not None:
                etree.SubElement(phys, _q("mean_photon_number", EMU_NS)).text = notify.decimal(mu, 4)
            etree.SubElement(phys, _q("stored_key_bits", EMU_NS)).text = str(p.stored_key_bits)
            etree.SubElement(phys, _q("consumed_key_bits", EMU_NS)).text = str(
                self.driver.keystore.consumed_bits(qkdl_id)
            )

    def _fibre_state(self, qkdi_id: int) -> etree._Element | None:
        fibre_info = getattr(self.driver, "fibre", None)
        if fibre_info is None:
            return None
        f = fibre_info(qkdi_id)
        if f is None:
            return None
        el = etree.Element(_q("qsdn_fibre", EMU_NS), nsmap={"qsdn-emu": EMU_NS})
        etree.SubElement(el, _q("length_km", EMU_NS)).text = notify.decimal(f.length_km, 3)
        etree.SubElement(el, _q("band", EMU_NS)).text = f.band
        etree.SubElement(el, _q("extra_loss_db", EMU_NS)).text = notify.decimal(f.extra_loss_db, 2)
        etree.SubElement(el, _q("loss_db", EMU_NS)).text = notify.decimal(f.loss_db, 2)
        etree.SubElement(el, _q("peer_address", EMU_NS)).text = f.peer_address
        return el

    def link_state(self, qkdl_id: str) -> LinkState:
        return self.driver.link_state(qkdl_id)


def _ident(parent: etree._Element, name: str, value: str) -> None:
    el = etree.SubElement(parent, _q(name), nsmap={"etsi-qkdn-types": TNS})
    el.text = f"etsi-qkdn-types:{value}"


def _fidelity(value: float) -> str:
    """A ``fidelity`` (decimal64, 6 digits, within [0.25, 1])."""
    return notify.decimal(min(max(value, 0.25), 1.0), 6)
