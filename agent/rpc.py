"""NETCONF operations (RFC 6241 section 7, 8; RFC 6022 get-schema; RFC 5277 create-subscription).

One :class:`RpcHandler` per agent dispatches a parsed ``<rpc>`` to the operation and returns the
``<rpc-reply>`` bytes. Every failure is a :class:`~qsdn.errors.QsdnError` rendered once, here, as
``<rpc-error>`` elements; an unexpected exception becomes ``operation-failed`` (and is logged with
its traceback) rather than a dropped session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import libyang
from lxml import etree

from agent.datastore import CANDIDATE, DATASTORES, RUNNING, STARTUP, wrap
from qsdn.errors import ErrorInfo, ErrorType, OperationNotSupportedError, QsdnError
from qsdn.netconf import messages
from qsdn.netconf.messages import Rpc
from qsdn.netconf.subtree import apply_subtree_filter
from qsdn.netconf.xml import MONITORING_NS, NC_NS, NOTIFICATION_NS, WITH_DEFAULTS_NS, ns_map

if TYPE_CHECKING:
    from agent.server import NetconfAgent, NetconfSession

log = logging.getLogger(__name__)

YANG_NS = "urn:ietf:params:xml:ns:yang:1"
WD_MODES = ("explicit", "report-all", "trim")


def _q(name: str, ns: str = NC_NS) -> str:
    return f"{{{ns}}}{name}"


def _missing(element: str, parent: str) -> QsdnError:
    return QsdnError(
        f"<{parent}> needs a <{element}> parameter",
        tag="missing-element",
        type=ErrorType.PROTOCOL,
        info={"bad-element": element},
    )


def _bad_value(element: str, value: str, allowed: str) -> QsdnError:
    return QsdnError(
        f"<{element}> value {value!r} is not one of {allowed}",
        tag="invalid-value",
        type=ErrorType.PROTOCOL,
        info={"bad-element": element},
    )


def _child(op: etree._Element, name: str, ns: str = NC_NS) -> etree._Element | None:
    return op.find(_q(name, ns))


def _text_param(op: etree._Element, name: str, allowed: tuple[str, ...] | None = None) -> str | None:
    el = _child(op, name)
    if el is None:
        return None
    value = (el.text or "").strip()
    if allowed is not None and value not in allowed:
        raise _bad_value(name, value, ", ".join(allowed))
    return value


def _datastore_param(
    op: etree._Element, name: str, *, allow_config: bool = False
) -> tuple[str | None, etree._Element | None]:
    """``<target>``/``<source>``: a datastore name element, or inline ``<config>`` where allowed."""
    holder = _child(op, name)
    if holder is None:
        raise _missing(name, etree.QName(op).localname)
    kids = [c for c in holder if isinstance(c.tag, str)]
    if len(kids) != 1:
        raise QsdnError(
            f"<{name}> must hold exactly one datastore",
            tag="missing-element" if not kids else "bad-element",
            type=ErrorType.PROTOCOL,
            info={"bad-element": name},
        )
    which = kids[0]
    qn = etree.QName(which)
    if qn.namespace != NC_NS:
        raise QsdnError(
            f"<{name}> holds an element in an unknown namespace",
            tag="unknown-namespace",
            type=ErrorType.PROTOCOL,
            info={"bad-element": qn.localname, "bad-namespace": qn.namespace or ""},
        )
    if qn.localname == "config" and allow_config:
        return None, which
    if qn.localname == "url":
        raise OperationNotSupportedError("the :url capability is not supported", info={"bad-element": "url"})
    if qn.localname not in DATASTORES:
        raise QsdnError(
            f"<{qn.localname}> is not a datastore of this server (running, candidate, startup)",
            tag="invalid-value",
            type=ErrorType.PROTOCOL,
            info={"bad-element": qn.localname},
        )
    return qn.localname, None


class RpcHandler:
    def __init__(self, agent: NetconfAgent) -> None:
        self.agent = agent
        self._ops: dict[str, Callable[[NetconfSession, Rpc], Awaitable[bytes]]] = {
            "get": self.get,
            "get-config": self.get_config,
            "edit-config": self.edit_config,
            "copy-config": self.copy_config,
            "delete-config": self.delete_config,
            "lock": self.lock,
            "unlock": self.unlock,
            "close-session": self.close_session,
            "kill-session": self.kill_session,
            "commit": self.commit,
            "discard-changes": self.discard_changes,
            "cancel-commit": self.cancel_commit,
            "validate": self.validate,
        }

    async def handle(self, session: NetconfSession, rpc: Rpc) -> bytes:
        try:
            op = rpc.operation
            qn = etree.QName(op)
            _check_parameters(op)
            if qn.namespace == NC_NS and qn.localname in self._ops:
                return await self._ops[qn.localname](session, rpc)
            if qn.namespace == MONITORING_NS and qn.localname == "get-schema":
                return await self.get_schema(session, rpc)
            if qn.namespace == NOTIFICATION_NS and qn.localname == "create-subscription":
                return await self.create_subscription(session, rpc)
            known_ns = self.agent.schema.namespace_module(qn.namespace or "") is not None
            raise QsdnError(
                f"operation <{qn.localname}> is not supported by this server",
                tag="operation-not-supported" if known_ns else "unknown-namespace",
                type=ErrorType.PROTOCOL,
                info={"bad-element": qn.localname}
                | ({} if known_ns else {"bad-namespace": qn.namespace or ""}),
            )
        except QsdnError as exc:
            session.stats.out_rpc_errors += 1
            self.agent.stats.out_rpc_errors += 1
            return self.error_reply(rpc.attrs, exc.errors)
        except Exception:
            log.exception("session %d: internal error in <%s>", session.id, rpc.name)
            session.stats.out_rpc_errors += 1
            self.agent.stats.out_rpc_errors += 1
            return self.error_reply(
                rpc.attrs,
                [ErrorInfo(tag="operation-failed", message="internal server error; see the agent log")],
            )

    def error_reply(self, attrs: dict[str, str], errors: list[ErrorInfo]) -> bytes:
        return messages.build_error_reply(attrs, errors, module_ns=self.agent.schema.module_namespace)

    # --- retrieval ----------------------------------------------------------------------------------
    def _with_defaults(self, op: etree._Element) -> str:
        el = _child(op, "with-defaults", WITH_DEFAULTS_NS)
        if el is None:
            return "explicit"
        mode = (el.text or "").strip()
        if mode not in WD_MODES:
            raise QsdnError(
                f"with-defaults mode {mode!r} is not supported (supported: {', '.join(WD_MODES)})",
                tag="invalid-value",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "with-defaults"},
            )
        return mode

    def _render_defaults(self, xml: str, mode: str, *, config_only: bool) -> str:
        if mode == "explicit" or not xml:
            return xml
        with self.agent.schema.parsed(xml, "xml", config_only=config_only) as tree:
            if tree is None:
                return ""
            return str(
                tree.print_mem(
                    "xml",
                    with_siblings=True,
                    pretty=False,
                    include_implicit_defaults=mode == "report-all",
                    trim_default_values=mode == "trim",
                )
            )

    def _filtered(self, xml: str, op: etree._Element, *, config_only: bool) -> bytes:
        flt = _child(op, "filter")
        if flt is None:
            return xml.encode()
        ftype = flt.get("type", "subtree")
        if ftype == "subtree":
            roots = list(wrap(xml))
            selected = apply_subtree_filter(roots, flt)
            return b"".join(etree.tostring(e) for e in selected)
        if ftype == "xpath":
            select = flt.get("select")
            if select is None:
                raise QsdnError(
                    "an XPath filter needs a select attribute",
                    tag="missing-attribute",
                    type=ErrorType.PROTOCOL,
                    info={"bad-attribute": "select", "bad-element": "filter"},
                )
            return self.agent.datastores.xpath_select(
                xml, select, dict(flt.nsmap), config_only=config_only
            ).encode()
        raise QsdnError(
            f"filter type {ftype!r} is not supported (subtree, xpath)",
            tag="bad-attribute",
            type=ErrorType.PROTOCOL,
            info={"bad-attribute": "type", "bad-element": "filter"},
        )

    async def get(self, session: NetconfSession, rpc: Rpc) -> bytes:
        op = rpc.operation
        mode = self._with_defaults(op)
        state = self.agent.node.operational()
        monitoring = self.agent.monitoring_state()
        xml = state + monitoring
        xml = self._render_defaults(xml, mode, config_only=False)
        return messages.build_data_reply(rpc.attrs, self._filtered(xml, op, config_only=False))

    async def get_config(self, session: NetconfSession, rpc: Rpc) -> bytes:
        op = rpc.operation
        source, _ = _datastore_param(op, "source")
        assert source is not None
        mode = self._with_defaults(op)
        xml = self._render_defaults(self.agent.datastores.get(source), mode, config_only=True)
        return messages.build_data_reply(rpc.attrs, self._filtered(xml, op, config_only=True))

    # --- editing --------------------------------------------------------------------------------
    async def edit_config(self, session: NetconfSession, rpc: Rpc) -> bytes:
        op = rpc.operation
        target, _ = _datastore_param(op, "target")
        assert target is not None
        if target == RUNNING and not self.agent.writable_running:
            raise OperationNotSupportedError("the running datastore is not writable")
        default_op = _text_param(op, "default-operation", ("merge", "replace", "none")) or "merge"
        test_option = _text_param(op, "test-option", ("test-then-set", "set", "test-only")) or "test-then-set"
        error_option = (
            _text_param(op, "error-option", ("stop-on-error", "continue-on-error", "rollback-on-error"))
            or "stop-on-error"
        )
        config = _child(op, "config")
        if config is None:
            if _child(op, "url") is not None:
                raise OperationNotSupportedError(
                    "the :url capability is not supported", info={"bad-element": "url"}
                )
            raise _missing("config", "edit-config")
        skipped = await self.agent.datastores.edit(
            target,
            config,
            session.info,
            default_operation=default_op,
            test_option=test_option,
            error_option=error_option,
        )
        if skipped:
            # RFC 6241 7.2 continue-on-error: the errors are reported, what could be applied was applied.
            return self.error_reply(rpc.attrs, skipped)
        return messages.build_ok(rpc.attrs)

    async def copy_config(self, session: NetconfSession, rpc: Rpc) -> bytes:
        op = rpc.operation
        target, _ = _datastore_param(op, "target")
        source, config = _datastore_param(op, "source", allow_config=True)
        assert target is not None
        await self.agent.datastores.copy_config(target, source, config, session.info)
        return messages.build_ok(rpc.attrs)

    async def delete_config(self, session: NetconfSession, rpc: Rpc) -> bytes:
        target, _ = _datastore_param(rpc.operation, "target")
        assert target is not None
        await self.agent.datastores.delete_config(target, session.info)
        return messages.build_ok(rpc.attrs)

    async def lock(self, session: NetconfSession, rpc: Rpc) -> bytes:
        target, _ = _datastore_param(rpc.operation, "target")
        assert target is not None
        self.agent.datastores.lock(target, session.info)
        return messages.build_ok(rpc.attrs)

    async def unlock(self, session: NetconfSession, rpc: Rpc) -> bytes:
        target, _ = _datastore_param(rpc.operation, "target")
        assert target is not None
        self.agent.datastores.unlock(target, session.info)
        return messages.build_ok(rpc.attrs)

    async def validate(self, session: NetconfSession, rpc: Rpc) -> bytes:
        source, config = _datastore_param(rpc.operation, "source", allow_config=True)
        self.agent.datastores.validate(source, config)
        return messages.build_ok(rpc.attrs)

    # --- candidate ------------------------------------------------------------------------------
    async def commit(self, session: NetconfSession, rpc: Rpc) -> bytes:
        op = rpc.operation
        confirmed = _child(op, "confirmed") is not None
        timeout_text = _text_param(op, "confirm-timeout")
        timeout: int | None = None
        if timeout_text is not None:
            if not confirmed:
                raise QsdnError(
                    "<confirm-timeout> is only allowed with <confirmed/>",
                    tag="invalid-value",
                    type=ErrorType.PROTOCOL,
                    info={"bad-element": "confirm-timeout"},
                )
            if not timeout_text.isdigit() or not 0 < int(timeout_text) < 2**32:
                raise QsdnError(
                    f"<confirm-timeout> must be a positive number of seconds, not {timeout_text!r}",
                    tag="invalid-value",
                    type=ErrorType.PROTOCOL,
                    info={"bad-element": "confirm-timeout"},
                )
            timeout = int(timeout_text)
        persist = _text_param(op, "persist")
        if persist is not None and not confirmed:
            raise QsdnError(
                "<persist> is only allowed with <confirmed/>",
                tag="invalid-value",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "persist"},
            )
        persist_id = _text_param(op, "persist-id")
        await self.agent.datastores.commit(
            session.info,
            confirmed=confirmed,
            confirm_timeout_s=timeout,
            persist=persist,
            persist_id=persist_id,
        )
        return messages.build_ok(rpc.attrs)

    async def discard_changes(self, session: NetconfSession, rpc: Rpc) -> bytes:
        self.agent.datastores.discard_changes(session.info)
        return messages.build_ok(rpc.attrs)

    async def cancel_commit(self, session: NetconfSession, rpc: Rpc) -> bytes:
        persist_id = _text_param(rpc.operation, "persist-id")
        await self.agent.datastores.cancel_commit(session.info, persist_id)
        return messages.build_ok(rpc.attrs)

    # --- sessions ------------------------------------------------------------------------------
    async def close_session(self, session: NetconfSession, rpc: Rpc) -> bytes:
        session.closing = True
        return messages.build_ok(rpc.attrs)

    async def kill_session(self, session: NetconfSession, rpc: Rpc) -> bytes:
        text = _text_param(rpc.operation, "session-id")
        if text is None:
            raise _missing("session-id", "kill-session")
        if not text.isdigit():
            raise _bad_value("session-id", text, "a session number")
        sid = int(text)
        if sid == session.id:
            raise QsdnError(
                "a session cannot kill itself; use close-session",
                tag="invalid-value",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "session-id"},
            )
        victim = self.agent.sessions.get(sid)
        if victim is None:
            raise QsdnError(
                f"there is no session {sid}",
                tag="invalid-value",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "session-id"},
            )
        await victim.kill(f"killed by session {session.id}")
        return messages.build_ok(rpc.attrs)

    # --- RFC 6022 ------------------------------------------------------------------------------
    async def get_schema(self, session: NetconfSession, rpc: Rpc) -> bytes:
        op = rpc.operation
        ident_el = op.find(_q("identifier", MONITORING_NS))
        if ident_el is None or not (ident_el.text or "").strip():
            raise QsdnError(
                "<get-schema> needs an <identifier>",
                tag="missing-element",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "identifier"},
            )
        ident = (ident_el.text or "").strip()
        ver_el = op.find(_q("version", MONITORING_NS))
        version = (ver_el.text or "").strip() if ver_el is not None else None
        fmt_el = op.find(_q("format", MONITORING_NS))
        if fmt_el is not None:
            fmt = (fmt_el.text or "").strip()
            if fmt.split(":")[-1] != "yang":
                raise QsdnError(
                    f"schema format {fmt!r} is not available (yang only)",
                    tag="invalid-value",
                    type=ErrorType.APPLICATION,
                    info={"bad-element": "format"},
                )
        text = self.agent.schema.schema_text(ident, version or None)
        if text is None:
            # RFC 6022 section 3.1: no such schema -> invalid-value.
            raise QsdnError(
                f"no schema {ident!r}" + (f" revision {version}" if version else "") + " on this server",
                tag="invalid-value",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "identifier"},
            )
        data = etree.Element(_q("data", MONITORING_NS), nsmap=ns_map(MONITORING_NS))
        data.text = text
        return messages.build_reply(rpc.attrs, data)

    # --- RFC 5277 -----------------------------------------------------------------------------------
    async def create_subscription(self, session: NetconfSession, rpc: Rpc) -> bytes:
        op = rpc.operation
        if session.subscription is not None:
            # RFC 5277 section 2.1.1: one subscription per session.
            raise QsdnError(
                "this session already has a subscription",
                tag="operation-failed",
                type=ErrorType.PROTOCOL,
            )
        stream_el = op.find(_q("stream", NOTIFICATION_NS))
        stream = (stream_el.text or "").strip() if stream_el is not None else "NETCONF"
        if stream != "NETCONF":
            raise QsdnError(
                f"no event stream {stream!r} (this server has NETCONF)",
                tag="invalid-value",
                type=ErrorType.APPLICATION,
                info={"bad-element": "stream"},
            )
        if op.find(_q("startTime", NOTIFICATION_NS)) is not None:
            raise QsdnError(
                "replay is not supported: startTime cannot be given",
                tag="operation-failed",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "startTime"},
            )
        stop_el = op.find(_q("stopTime", NOTIFICATION_NS))
        if stop_el is not None:
            raise QsdnError(
                "stopTime needs startTime (replay), which is not supported",
                tag="bad-element",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "stopTime"},
            )
        flt = op.find(_q("filter", NOTIFICATION_NS))
        if flt is None:
            # ncclient (and other clients) put the filter in the base namespace: honour it too.
            flt = op.find(_q("filter", NC_NS))
        if flt is not None:
            ftype = flt.get("type", "subtree")
            if ftype not in ("subtree", "xpath"):
                raise QsdnError(
                    f"filter type {ftype!r} is not supported",
                    tag="bad-attribute",
                    type=ErrorType.PROTOCOL,
                    info={"bad-attribute": "type", "bad-element": "filter"},
                )
            if ftype == "xpath" and flt.get("select") is None:
                raise QsdnError(
                    "an XPath filter needs a select attribute",
                    tag="missing-attribute",
                    type=ErrorType.PROTOCOL,
                    info={"bad-attribute": "select", "bad-element": "filter"},
                )
        session.subscribe(stream, flt)
        return messages.build_ok(rpc.attrs)

    def notification_matches(self, body: etree._Element, flt: etree._Element | None) -> bool:
        """RFC 5277 section 3.6: a notification passes when the filter selects something of it."""
        if flt is None:
            return True
        if flt.get("type", "subtree") == "subtree":
            return bool(apply_subtree_filter([body], flt))
        select = flt.get("select", "")
        try:
            root = etree.Element("root")
            root.append(_copy(body))
            return bool(
                root.xpath(_rebase_xpath(select), namespaces={k: v for k, v in flt.nsmap.items() if k})
            )
        except (etree.XPathError, libyang.LibyangError):
            return False


_NC_PARAMS: dict[str, frozenset[str]] = {
    "get": frozenset({"filter"}),
    "get-config": frozenset({"source", "filter"}),
    "edit-config": frozenset({"target", "default-operation", "test-option", "error-option", "config", "url"}),
    "copy-config": frozenset({"target", "source"}),
    "delete-config": frozenset({"target"}),
    "lock": frozenset({"target"}),
    "unlock": frozenset({"target"}),
    "close-session": frozenset(),
    "kill-session": frozenset({"session-id"}),
    "commit": frozenset({"confirmed", "confirm-timeout", "persist", "persist-id"}),
    "discard-changes": frozenset(),
    "cancel-commit": frozenset({"persist-id"}),
    "validate": frozenset({"source"}),
}
_WD_OPS = frozenset({"get", "get-config", "copy-config"})
_OTHER_PARAMS: dict[tuple[str, str], frozenset[tuple[str, str]]] = {
    (MONITORING_NS, "get-schema"): frozenset((MONITORING_NS, n) for n in ("identifier", "version", "format")),
    (NOTIFICATION_NS, "create-subscription"): frozenset(
        {(NOTIFICATION_NS, n) for n in ("stream", "filter", "startTime", "stopTime")} | {(NC_NS, "filter")}
    ),
}


def _check_parameters(op: etree._Element) -> None:
    """RFC 6241 appendix A: a parameter the operation does not define is an unknown-element."""
    qn = etree.QName(op)
    if qn.namespace == NC_NS and qn.localname in _NC_PARAMS:
        allowed = {(NC_NS, n) for n in _NC_PARAMS[qn.localname]}
        if qn.localname in _WD_OPS:
            allowed.add((WITH_DEFAULTS_NS, "with-defaults"))
    else:
        known = _OTHER_PARAMS.get((qn.namespace or "", qn.localname))
        if known is None:
            return
        allowed = set(known)
    for child in op:  # the hardened parser drops comments and refuses processing instructions
        cq = etree.QName(child)
        if (cq.namespace or "", cq.localname) not in allowed:
            raise QsdnError(
                f"<{qn.localname}> has no parameter <{cq.localname}>"
                + (f" in namespace {cq.namespace}" if cq.namespace not in (NC_NS, qn.namespace) else ""),
                tag="unknown-element",
                type=ErrorType.PROTOCOL,
                info={"bad-element": cq.localname},
            )


def _copy(el: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(el))


def _rebase_xpath(select: str) -> str:
    """Evaluate an absolute notification XPath relative to a synthetic root holding the event."""
    s = select.strip()
    return "." + s if s.startswith("/") else s


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["CANDIDATE", "RUNNING", "STARTUP", "YANG_NS", "RpcHandler", "now_rfc3339"]
