"""Event notifications (RFC 5277) on the NETCONF stream: ETSI GS QKD 015 events and RFC 6470 config changes.

The bus is in-process: producers (the node's driver events, the datastore) publish an XML element,
every subscribed session gets it in its own bounded queue (a slow session loses its oldest events
and is told so in the log, never blocks the producer). Filtering (RFC 5277 section 3.6: subtree or
XPath) happens per subscription in the session, not here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from agent.datastore import SessionInfo
from agent.edit import Change
from qsdn.netconf.xml import NC_NOTIFICATIONS_NS, ns_map

log = logging.getLogger(__name__)

ETSI_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
ETSI_TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
STREAM = "NETCONF"


@dataclass(frozen=True)
class Event:
    time: datetime
    body: etree._Element


@dataclass
class Subscription:
    session_id: int
    stream: str
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(maxsize=1024))
    dropped: int = 0


class NotificationBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.published = 0

    def subscribe(self, session_id: int, stream: str = STREAM) -> Subscription:
        sub = Subscription(session_id=session_id, stream=stream)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    def publish(self, body: etree._Element, when: datetime | None = None) -> None:
        event = Event(time=when or datetime.now(UTC), body=body)
        self.published += 1
        for sub in self._subs:
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
                log.warning("session %d: notification queue full, dropped the oldest event", sub.session_id)
            sub.queue.put_nowait(event)


# --- builders ------------------------------------------------------------------------------------
def _el(parent: etree._Element, ns: str, name: str, text: str | None = None) -> etree._Element:
    e = etree.SubElement(parent, f"{{{ns}}}{name}")
    if text is not None:
        e.text = text
    return e


def link_down(qkdl_id: str, reason: str) -> etree._Element:
    root = etree.Element(f"{{{ETSI_NS}}}sdqkdn_link_down", nsmap=ns_map(ETSI_NS))
    link = _el(root, ETSI_NS, "qkd_link")
    _el(link, ETSI_NS, "qkdl_id", qkdl_id)
    _el(link, ETSI_NS, "reason", reason)
    return root


def link_perf_update(
    qkdl_id: str, *, skr_bps: int, eskr_bps: int, expected_consumption_bps: int, qber: float | None
) -> etree._Element:
    root = etree.Element(
        f"{{{ETSI_NS}}}sdqkdn_link_perf_update", nsmap=ns_map(ETSI_NS, {"etsi-qkdn-types": ETSI_TYPES_NS})
    )
    link = _el(root, ETSI_NS, "qkd_link")
    _el(link, ETSI_NS, "qkdl_id", qkdl_id)
    perf = _el(link, ETSI_NS, "performance")
    _el(perf, ETSI_NS, "expected_consumption", str(_u32(expected_consumption_bps)))
    _el(perf, ETSI_NS, "skr", str(_u32(skr_bps)))
    _el(perf, ETSI_NS, "eskr", str(_u32(eskr_bps)))
    if qber is not None:
        pp = _el(perf, ETSI_NS, "phys_perf")
        _el(pp, ETSI_NS, "perf_type", "etsi-qkdn-types:QBER")
        _el(pp, ETSI_NS, "value", decimal(qber, 3))
    return root


def interface_down(qkdi_id: int, reason: str) -> etree._Element:
    root = etree.Element(f"{{{ETSI_NS}}}sdqkdn_interface_down", nsmap=ns_map(ETSI_NS))
    iface = _el(root, ETSI_NS, "qkd_interface")
    _el(iface, ETSI_NS, "qkdi_id", str(qkdi_id))
    _el(iface, ETSI_NS, "reason", reason)
    return root


def alarm(qkdl_id: str | None, status: str | None, message: str, severity: str = "MAJOR") -> etree._Element:
    root = etree.Element(f"{{{ETSI_NS}}}alarm", nsmap=ns_map(ETSI_NS, {"etsi-qkdn-types": ETSI_TYPES_NS}))
    link = _el(root, ETSI_NS, "link")
    if qkdl_id is not None:
        _el(link, ETSI_NS, "qkdl_id", qkdl_id)
    if status is not None:
        _el(link, ETSI_NS, "qkdl_status", f"etsi-qkdn-types:{status}")
    _el(link, ETSI_NS, "message", message)
    _el(link, ETSI_NS, "severity", f"etsi-qkdn-types:{severity}")
    return root


def config_change(
    datastore: str, changes: Iterable[Change], session: SessionInfo, module_ns: dict[str, str]
) -> etree._Element:
    """RFC 6470 ``netconf-config-change``; edit targets are instance-identifiers with module prefixes."""
    ns = NC_NOTIFICATIONS_NS
    root = etree.Element(f"{{{ns}}}netconf-config-change", nsmap=ns_map(ns))
    by = _el(root, ns, "changed-by")
    if session.session_id == 0:
        _el(by, ns, "server")
    else:
        _el(by, ns, "username", session.username or "unknown")
        _el(by, ns, "session-id", str(session.session_id))
        if session.source_host:
            _el(by, ns, "source-host", session.source_host)
    _el(root, ns, "datastore", datastore)
    for change in changes:
        edit = _el(root, ns, "edit")
        modules = {m for m in _path_modules(change.path) if m in module_ns}
        target = etree.SubElement(edit, f"{{{ns}}}target", nsmap={m: module_ns[m] for m in sorted(modules)})
        target.text = change.path
        _el(edit, ns, "operation", change.operation)
    return root


def _path_modules(path: str) -> set[str]:
    out: set[str] = set()
    in_quote: str | None = None
    token = ""
    for ch in path:
        if in_quote:
            if ch == in_quote:
                in_quote = None
            continue
        if ch in "'\"":
            in_quote = ch
            token = ""
        elif ch == ":":
            if token:
                out.add(token)
            token = ""
        elif ch.isalnum() or ch in "-_.":
            token += ch
        else:
            token = ""
    return out


def _u32(v: int) -> int:
    return max(0, min(int(v), 2**32 - 1))


def decimal(value: float, digits: int) -> str:
    """A YANG decimal64 lexical value with the given fraction digits."""
    return f"{value:.{digits}f}"
