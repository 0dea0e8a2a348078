"""NETCONF messages (RFC 6241, RFC 5277) as data: build and parse, no I/O.

Server side: :func:`build_hello`, :func:`parse_hello`, :func:`parse_rpc`, :func:`build_ok`,
:func:`build_data_reply`, :func:`build_reply`, :func:`build_error_reply`, :func:`build_notification`.
Client side: :func:`build_rpc`, :func:`parse_rpc_reply`, :func:`is_notification`,
:func:`parse_notification`.

Errors are :class:`~qsdn.errors.ErrorInfo` records; :func:`build_error_reply` renders them as
``<rpc-error>`` (RFC 6241 section 4.3) and :func:`parse_rpc_reply` turns ``<rpc-error>`` back into
them. ``ErrorInfo.path`` holds a libyang data path with module-name prefixes
(``/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='...']``); on the wire ``<error-path>``
is an XPath expression whose prefixes are declared on the element, see
:func:`xpath_for_error_path` and :func:`data_path_for_error_path`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from lxml import etree

from qsdn.errors import (
    ErrorInfo,
    ErrorType,
    MalformedMessageError,
    OperationNotSupportedError,
    QsdnError,
)
from qsdn.netconf.framing import Framing
from qsdn.netconf.xml import (
    CAP_BASE_1_0,
    CAP_BASE_1_1,
    NC_NS,
    NOTIFICATION_NS,
    XML_NS,
    local_name,
    namespace,
    parse,
    qname,
    tostring,
)

ModuleNamespace = Callable[[str], str | None]
"""Maps a YANG module name to its XML namespace, ``None`` when the module is unknown."""
NamespaceModule = Callable[[str], str | None]
"""Maps an XML namespace to the YANG module name, ``None`` when the namespace is unknown."""

MAX_SESSION_ID = 4294967295  # RFC 6241 session-id-type: uint32, 1..max

_NC_NSMAP = cast("dict[str, str]", {None: NC_NS})
_NOTIF_NSMAP = cast("dict[str, str]", {None: NOTIFICATION_NS})
# XML 1.0 section 2.2 Char; anything else cannot be serialised.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# error-info children defined by RFC 6241 appendix A live in the base namespace.
_INFO_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _nc(local: str) -> str:
    return qname(NC_NS, local)


def _xml_text(text: str) -> str:
    return _NOT_XML_CHAR.sub("\ufffd", text)


def _root(data: bytes | etree._Element) -> etree._Element:
    return parse(data) if isinstance(data, bytes) else data


def _children(el: etree._Element) -> list[etree._Element]:
    return [child for child in el if isinstance(child.tag, str)]


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    return "".join(cast("list[str]", list(el.itertext()))).strip()


# --------------------------------------------------------------------------------------------- hello


@dataclass(frozen=True)
class Hello:
    """A received ``<hello>``: the peer's capabilities and, from a server, the session-id."""

    capabilities: tuple[str, ...]
    session_id: int | None = None


def build_hello(capabilities: Sequence[str], session_id: int | None = None) -> bytes:
    """``<hello>`` with our capabilities; a server passes the session-id it assigned."""
    if not capabilities:
        raise ValueError("a hello needs at least the base capability")
    root = etree.Element(_nc("hello"), nsmap=_NC_NSMAP)
    caps = etree.SubElement(root, _nc("capabilities"))
    for uri in capabilities:
        etree.SubElement(caps, _nc("capability")).text = uri
    if session_id is not None:
        if not 1 <= session_id <= MAX_SESSION_ID:
            raise ValueError(f"session-id {session_id} is outside 1..{MAX_SESSION_ID}")
        etree.SubElement(root, _nc("session-id")).text = str(session_id)
    return tostring(root, xml_declaration=True)


def parse_hello(data: bytes | etree._Element, *, from_server: bool) -> Hello:
    """Parse the peer's ``<hello>`` (RFC 6241 section 8.1).

    ``from_server`` says who sent it: a server's hello must carry a valid session-id, a client's
    hello must not (the server then closes the session). Any violation raises
    :class:`~qsdn.errors.MalformedMessageError`.
    """
    root = _root(data)
    if root.tag != _nc("hello"):
        raise MalformedMessageError(
            f"expected <hello> in namespace {NC_NS}, got {root.tag}",
            info={"bad-element": local_name(root)},
        )
    containers = root.findall(_nc("capabilities"))
    if len(containers) != 1:
        raise MalformedMessageError(
            "<hello> must contain exactly one <capabilities> element", info={"bad-element": "hello"}
        )
    capabilities: list[str] = []
    for cap in containers[0].findall(_nc("capability")):
        uri = _text(cap)
        if not uri:
            raise MalformedMessageError("empty <capability> in <hello>", info={"bad-element": "capability"})
        if uri not in capabilities:
            capabilities.append(uri)
    if not capabilities:
        raise MalformedMessageError("<hello> announces no capabilities", info={"bad-element": "capabilities"})
    ids = root.findall(_nc("session-id"))
    session_id: int | None = None
    if from_server:
        if len(ids) != 1:
            raise MalformedMessageError(
                "the server's <hello> must contain exactly one <session-id>",
                info={"bad-element": "session-id"},
            )
        text = _text(ids[0]) or ""
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_SESSION_ID:
            raise MalformedMessageError(
                f"invalid session-id {text!r} in <hello>", info={"bad-element": "session-id"}
            )
        session_id = int(text)
    elif ids:
        raise MalformedMessageError(
            "a client <hello> must not contain <session-id> (RFC 6241 section 8.1)",
            info={"bad-element": "session-id"},
        )
    return Hello(capabilities=tuple(capabilities), session_id=session_id)


def negotiate_base(ours: Iterable[str], theirs: Iterable[str]) -> Framing:
    """The base protocol version both peers announced, preferring 1.1 (RFC 6241 section 8.1)."""
    common = set(ours) & {uri.strip() for uri in theirs}
    if CAP_BASE_1_1 in common:
        return "1.1"
    if CAP_BASE_1_0 in common:
        return "1.0"
    raise OperationNotSupportedError(
        f"no common NETCONF base capability: the peer must announce {CAP_BASE_1_1} or {CAP_BASE_1_0} as we do"
    )


# ----------------------------------------------------------------------------------------------- rpc


@dataclass(frozen=True)
class Rpc:
    """A received ``<rpc>``.

    ``attrs`` holds every attribute of ``<rpc>`` (Clark notation for qualified ones); RFC 6241
    section 4.2 requires them all on the ``<rpc-reply>``. ``operation`` is the single child element.
    """

    message_id: str
    attrs: dict[str, str]
    operation: etree._Element

    @property
    def name(self) -> str:
        """Local name of the operation (``get-config``, ``edit-config``, ...)."""
        return local_name(self.operation)

    @property
    def namespace(self) -> str | None:
        return namespace(self.operation)


class InvalidRpcError(QsdnError):
    """An ``<rpc>`` that parsed as XML but cannot be processed.

    ``rpc_attrs`` are the attributes to echo on the error reply (empty when the root element was
    not an ``<rpc>``, or had no message-id to correlate with).
    """

    tag = "malformed-message"
    type = ErrorType.RPC

    def __init__(
        self,
        message: str,
        *,
        rpc_attrs: Mapping[str, str],
        tag: str | None = None,
        type: ErrorType | None = None,
        info: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, tag=tag, type=type, info=info)
        self.rpc_attrs = dict(rpc_attrs)


def parse_rpc(data: bytes | etree._Element) -> Rpc:
    """Parse a client's ``<rpc>`` (RFC 6241 section 4.1).

    Raises :class:`~qsdn.errors.MalformedMessageError` for XML that cannot be parsed (reply without
    message-id) and :class:`InvalidRpcError` for a well-formed message that is not a usable
    ``<rpc>``; its ``rpc_attrs`` go on the error reply.
    """
    root = _root(data)
    tag = etree.QName(root)
    if tag.localname != "rpc" or tag.namespace != NC_NS:
        if tag.localname == "rpc":
            raise InvalidRpcError(
                f"<rpc> must be in namespace {NC_NS}",
                rpc_attrs={},
                tag="unknown-namespace",
                type=ErrorType.PROTOCOL,
                info={"bad-element": "rpc", "bad-namespace": tag.namespace or ""},
            )
        raise InvalidRpcError(
            f"expected <rpc>, got <{tag.localname}>",
            rpc_attrs={},
            tag="unknown-element",
            type=ErrorType.RPC,
            info={"bad-element": tag.localname},
        )
    attrs = {str(key): str(value) for key, value in root.attrib.items()}
    message_id = attrs.get("message-id")
    if message_id is None:
        raise InvalidRpcError(
            "<rpc> has no message-id attribute",
            rpc_attrs=attrs,
            tag="missing-attribute",
            type=ErrorType.RPC,
            info={"bad-attribute": "message-id", "bad-element": "rpc"},
        )
    stray = [root.text, *(child.tail for child in root)]
    if any(text and text.strip() for text in stray):
        raise InvalidRpcError("<rpc> contains text outside its operation element", rpc_attrs=attrs)
    operations = _children(root)
    if not operations:
        raise InvalidRpcError("<rpc> contains no operation", rpc_attrs=attrs, info={"bad-element": "rpc"})
    if len(operations) > 1:
        extra = local_name(operations[1])
        raise InvalidRpcError(
            f"<rpc> must contain exactly one operation, found a second one <{extra}>",
            rpc_attrs=attrs,
            tag="unknown-element",
            type=ErrorType.RPC,
            info={"bad-element": extra},
        )
    return Rpc(message_id=message_id, attrs=attrs, operation=operations[0])


def build_rpc(
    operation: etree._Element | bytes, message_id: str, attrs: Mapping[str, str] | None = None
) -> bytes:
    """``<rpc message-id=...>`` around one operation (an element, or its serialised bytes).

    ``<rpc>`` declares the base namespace as default, so a bytes fragment such as ``b"<get/>"``
    names a base operation; other operations carry their own ``xmlns``.
    """
    root = etree.Element(_nc("rpc"), nsmap=_NC_NSMAP)
    root.set("message-id", message_id)
    for key, value in (attrs or {}).items():
        if key != "message-id":
            root.set(key, value)
    return splice(root, _fragment(operation))


# ------------------------------------------------------------------------------------------- replies


def _fragment(content: etree._Element | Sequence[etree._Element] | bytes) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, etree._Element):
        return tostring(content)
    return b"".join(tostring(el) for el in content)


def splice(root: etree._Element, inner: bytes) -> bytes:
    """Serialise ``root`` (unprefixed, in its default namespace) with ``inner`` appended to its content.

    ``inner`` is inserted as bytes, without being parsed again.
    """
    if len(root) == 0 and not root.text:
        root.text = ""  # forces a start and an end tag
    whole = tostring(root)
    end = f"</{local_name(root)}>".encode()
    if not whole.endswith(end):
        raise QsdnError(f"cannot serialise <{local_name(root)}>")
    return whole[: -len(end)] + inner + end


def _reply_root(rpc_attrs: Mapping[str, str]) -> etree._Element:
    root = etree.Element(_nc("rpc-reply"), nsmap=_NC_NSMAP)
    for key, value in rpc_attrs.items():
        root.set(key, value)
    return root


def build_ok(rpc_attrs: Mapping[str, str]) -> bytes:
    """``<rpc-reply>`` carrying ``<ok/>``, echoing the ``<rpc>`` attributes."""
    root = _reply_root(rpc_attrs)
    etree.SubElement(root, _nc("ok"))
    return tostring(root)


def build_data_reply(
    rpc_attrs: Mapping[str, str], data: etree._Element | Sequence[etree._Element] | bytes
) -> bytes:
    """``<rpc-reply><data>...</data></rpc-reply>`` for ``<get>`` and ``<get-config>``.

    ``data`` is one or more elements (serialised, not moved) or an XML fragment as printed by
    libyang: top-level elements carrying their own ``xmlns``, no XML declaration. The fragment is
    spliced in without being parsed again.
    """
    inner = _fragment(data)
    return splice(_reply_root(rpc_attrs), b"<data>" + inner + b"</data>")


def build_reply(
    rpc_attrs: Mapping[str, str], output: etree._Element | Sequence[etree._Element] | bytes
) -> bytes:
    """``<rpc-reply>`` with an operation's output nodes as its children (RFC 7950 section 7.14.4).

    An operation without output replies ``<ok/>``.
    """
    inner = _fragment(output)
    if not inner.strip():
        return build_ok(rpc_attrs)
    return splice(_reply_root(rpc_attrs), inner)


def build_error_reply(
    rpc_attrs: Mapping[str, str],
    errors: Sequence[ErrorInfo],
    *,
    module_ns: ModuleNamespace | None = None,
) -> bytes:
    """``<rpc-reply>`` with one ``<rpc-error>`` per error (RFC 6241 section 4.3).

    ``rpc_attrs`` is empty when the request could not be parsed far enough to know them.
    ``module_ns`` lets error paths be rendered as namespace-qualified XPath; without it, or for a
    path it cannot translate, the path is sent as it is.
    """
    if not errors:
        raise ValueError("an error reply needs at least one error")
    root = _reply_root(rpc_attrs)
    for error in errors:
        _append_rpc_error(root, error, module_ns)
    return tostring(root)


def _append_rpc_error(parent: etree._Element, error: ErrorInfo, module_ns: ModuleNamespace | None) -> None:
    el = etree.SubElement(parent, _nc("rpc-error"))
    etree.SubElement(el, _nc("error-type")).text = str(error.type)
    etree.SubElement(el, _nc("error-tag")).text = error.tag
    etree.SubElement(el, _nc("error-severity")).text = error.severity
    if error.app_tag:
        etree.SubElement(el, _nc("error-app-tag")).text = _xml_text(error.app_tag)
    if error.path:
        expr: str = error.path
        prefixes: dict[str, str] = {}
        if module_ns is not None:
            expr, prefixes = xpath_for_error_path(error.path, module_ns)
        etree.SubElement(el, _nc("error-path"), nsmap=prefixes).text = _xml_text(expr)
    if error.message:
        message = etree.SubElement(el, _nc("error-message"))
        message.set(qname(XML_NS, "lang"), "en")
        message.text = _xml_text(error.message)
    if error.info:
        info = etree.SubElement(el, _nc("error-info"))
        for key, value in error.info.items():
            if _INFO_KEY.match(key):
                child_tag = _nc(key)
            elif key.startswith("{"):
                child_tag = key
            else:
                continue
            try:
                child = etree.SubElement(info, child_tag)
            except ValueError:  # not a valid element name: drop it rather than fail the reply
                continue
            child.text = _xml_text(value)


# --------------------------------------------------------------------------------- error-path XPath

_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHAR = _NAME_START | frozenset("0123456789.-")
_VERBATIM = frozenset("/[]=. \t\n\r0123456789")


def _rewrite_names(path: str, rename: Callable[[str | None, str, bool], str | None]) -> str | None:
    """Rewrite every (prefixed) name in an abbreviated location path.

    Handles what libyang writes and RFC 6241 error paths use: ``/`` steps, ``prefix:name``,
    predicates ``[key='v']``, ``[.="v"]`` and ``[1]``. ``rename(prefix, name, in_predicate)``
    returns the replacement or ``None`` to give up; anything else in the path also gives up.
    """
    out: list[str] = []
    depth = 0
    i = 0
    n = len(path)
    while i < n:
        ch = path[i]
        if ch in "'\"":
            close = path.find(ch, i + 1)
            if close < 0:
                return None
            out.append(path[i : close + 1])
            i = close + 1
        elif ch in _NAME_START:
            j = i + 1
            while j < n and path[j] in _NAME_CHAR:
                j += 1
            prefix: str | None = None
            name = path[i:j]
            if j + 1 < n and path[j] == ":" and path[j + 1] in _NAME_START:
                k = j + 2
                while k < n and path[k] in _NAME_CHAR:
                    k += 1
                prefix, name = name, path[j + 1 : k]
                j = k
            replacement = rename(prefix, name, depth > 0)
            if replacement is None:
                return None
            out.append(replacement)
            i = j
        elif ch in _VERBATIM:
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
                if depth < 0:
                    return None
            out.append(ch)
            i += 1
        else:
            return None
    return "".join(out) if depth == 0 else None


def _prefix_for(module: str) -> str:
    # Module names are valid NCNames, but prefixes starting with "xml" are reserved.
    return f"_{module}" if module[:3].lower() == "xml" else module


def xpath_for_error_path(path: str, module_ns: ModuleNamespace) -> tuple[str, dict[str, str]]:
    """Turn a libyang data path into an absolute XPath and the prefixes it uses.

    ``/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='x']`` becomes
    ``/etsi-qkd-sdn-node:qkd_node/etsi-qkd-sdn-node:qkd_links/etsi-qkd-sdn-node:qkd_link
    [etsi-qkd-sdn-node:qkdl_id='x']`` with ``{"etsi-qkd-sdn-node": <module namespace>}``: in XPath an
    unprefixed name means "no namespace", so every step and key gets the prefix of its module, and the
    prefixes are declared on ``<error-path>``. A path that cannot be translated (unknown module, a
    construct libyang does not write) is returned unchanged with no prefixes.
    """
    prefixes: dict[str, str] = {}
    current: list[str | None] = [None]

    def rename(prefix: str | None, name: str, in_predicate: bool) -> str | None:
        module = prefix or current[0]
        if module is None:
            return None
        ns = module_ns(module)
        if ns is None:
            return None
        if not in_predicate:
            current[0] = module
        pfx = _prefix_for(module)
        prefixes[pfx] = ns
        return f"{pfx}:{name}"

    if not path.startswith("/"):
        return path, {}
    expr = _rewrite_names(path, rename)
    if expr is None:
        return path, {}
    return expr, prefixes


def data_path_for_error_path(expr: str, nsmap: Mapping[str | None, str], ns_module: NamespaceModule) -> str:
    """Inverse of :func:`xpath_for_error_path`: an ``<error-path>`` back to a libyang data path.

    ``nsmap`` holds the prefixes in scope on the ``<error-path>`` element; module names replace
    prefixes, and are kept only where the module changes (libyang's form). An expression that
    cannot be mapped is returned unchanged.
    """
    current: list[str | None] = [None]

    def rename(prefix: str | None, name: str, in_predicate: bool) -> str | None:
        if prefix is None:
            return None
        ns = nsmap.get(prefix)
        module = ns_module(ns) if ns is not None else None
        if module is None:
            return None
        same = module == current[0]
        if not in_predicate:
            current[0] = module
        return name if same else f"{module}:{name}"

    if not expr.startswith("/"):
        return expr
    path = _rewrite_names(expr, rename)
    return expr if path is None else path


# -------------------------------------------------------------------------------------- client side


@dataclass
class RpcReply:
    """A received ``<rpc-reply>``.

    ``data`` is the ``<data>`` element of a ``<get>``/``<get-config>`` reply; ``output`` holds the
    other children (an operation's output nodes); ``errors`` the ``<rpc-error>`` records, warnings
    included (``severity == "warning"``).
    """

    message_id: str | None
    attrs: dict[str, str]
    ok: bool
    data: etree._Element | None
    errors: list[ErrorInfo]
    output: list[etree._Element] = field(default_factory=list)


def parse_rpc_reply(data: bytes | etree._Element, *, ns_module: NamespaceModule | None = None) -> RpcReply:
    """Parse a server's ``<rpc-reply>``.

    ``ns_module`` maps namespaces to module names so that error paths come back as libyang data
    paths (see :func:`data_path_for_error_path`); without it they are kept as received.
    """
    root = _root(data)
    if root.tag != _nc("rpc-reply"):
        raise MalformedMessageError(
            f"expected <rpc-reply> in namespace {NC_NS}, got {root.tag}",
            info={"bad-element": local_name(root)},
        )
    attrs = {str(key): str(value) for key, value in root.attrib.items()}
    ok = False
    reply_data: etree._Element | None = None
    errors: list[ErrorInfo] = []
    output: list[etree._Element] = []
    for child in _children(root):
        if child.tag == _nc("ok"):
            ok = True
        elif child.tag == _nc("data"):
            if reply_data is not None:
                raise MalformedMessageError("<rpc-reply> contains more than one <data>")
            reply_data = child
        elif child.tag == _nc("rpc-error"):
            errors.append(_parse_rpc_error(child, ns_module))
        else:
            output.append(child)
    return RpcReply(
        message_id=attrs.get("message-id"),
        attrs=attrs,
        ok=ok,
        data=reply_data,
        errors=errors,
        output=output,
    )


def _parse_rpc_error(el: etree._Element, ns_module: NamespaceModule | None) -> ErrorInfo:
    type_text = _text(el.find(_nc("error-type")))
    tag = _text(el.find(_nc("error-tag")))
    if not tag:
        raise MalformedMessageError("<rpc-error> without <error-tag>", info={"bad-element": "rpc-error"})
    try:
        error_type = ErrorType(type_text or "")
    except ValueError:
        raise MalformedMessageError(
            f"invalid <error-type> {type_text!r} in <rpc-error>", info={"bad-element": "error-type"}
        ) from None
    path_el = el.find(_nc("error-path"))
    path = _text(path_el)
    if path_el is not None and path and ns_module is not None:
        path = data_path_for_error_path(path, path_el.nsmap, ns_module)
    info: dict[str, str] = {}
    info_el = el.find(_nc("error-info"))
    if info_el is not None:
        for child in _children(info_el):
            key = local_name(child) if namespace(child) == NC_NS else str(child.tag)
            info.setdefault(key, _text(child) or "")
    return ErrorInfo(
        tag=tag,
        message=_text(el.find(_nc("error-message"))) or "",
        type=error_type,
        path=path or None,
        app_tag=_text(el.find(_nc("error-app-tag"))) or None,
        severity=_text(el.find(_nc("error-severity"))) or "error",
        info=info,
    )


# ------------------------------------------------------------------------------------ notifications


@dataclass(frozen=True)
class Notification:
    """A received RFC 5277 ``<notification>``: its event time and content element."""

    event_time: datetime
    body: etree._Element


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("notification eventTime needs a timezone-aware datetime")
    text = moment.isoformat()
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text


def build_notification(event_time: datetime, body: etree._Element | bytes) -> bytes:
    """``<notification>`` with ``<eventTime>`` (RFC 3339, with timezone) and one content element."""
    root = etree.Element(qname(NOTIFICATION_NS, "notification"), nsmap=_NOTIF_NSMAP)
    etree.SubElement(root, qname(NOTIFICATION_NS, "eventTime")).text = _rfc3339(event_time)
    return splice(root, _fragment(body))


def is_notification(data: bytes | etree._Element) -> bool:
    """Whether a message received by a client is a notification rather than an ``<rpc-reply>``."""
    return _root(data).tag == qname(NOTIFICATION_NS, "notification")


def parse_notification(data: bytes | etree._Element) -> Notification:
    """Parse an RFC 5277 ``<notification>``."""
    root = _root(data)
    if root.tag != qname(NOTIFICATION_NS, "notification"):
        raise MalformedMessageError(f"expected <notification>, got {root.tag}")
    children = _children(root)
    when = [c for c in children if c.tag == qname(NOTIFICATION_NS, "eventTime")]
    content = [c for c in children if c.tag != qname(NOTIFICATION_NS, "eventTime")]
    if len(when) != 1 or not content:
        raise MalformedMessageError("<notification> needs one <eventTime> and a content element")
    text = _text(when[0]) or ""
    try:
        event_time = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedMessageError(f"invalid <eventTime> {text!r}") from None
    if event_time.tzinfo is None:
        raise MalformedMessageError(f"<eventTime> {text!r} has no timezone")
    return Notification(event_time=event_time, body=content[0])
