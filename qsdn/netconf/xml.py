"""Safe XML for NETCONF: one hardened parser, namespace constants, serialisation.

Every NETCONF message that crosses the wire is parsed here, so this is where hostile XML stops:

* a document type declaration (``<!DOCTYPE``), and with it every ``<!ENTITY``, is refused before
  libxml2 sees it: no external entities (XXE), no entity expansion (billion laughs), no DTD loading;
* processing instructions are refused (the XML declaration is not a processing instruction);
* comments are dropped;
* the parser never touches the network, never resolves entities and keeps libxml2's default limits
  (``huge_tree=False``: nesting depth, text node size);
* RFC 6241 section 2 requires UTF-8, so the parser decodes UTF-8 whatever the XML declaration says.

Everything that is refused raises :class:`~qsdn.errors.MalformedMessageError`, which the server
renders as an ``<rpc-error>`` with error-tag ``malformed-message``.
"""

from __future__ import annotations

import threading
from typing import cast

from lxml import etree

from qsdn.errors import MalformedMessageError

# RFC 6241 base namespace (rpc, rpc-reply, hello, rpc-error, data, ok, filter ...).
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
# RFC 5277 event notifications (<notification>, <eventTime>, <create-subscription>).
NOTIFICATION_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
# RFC 6022 ietf-netconf-monitoring (get-schema, netconf-state).
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
# RFC 6243 ietf-netconf-with-defaults.
WITH_DEFAULTS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"
# RFC 6470 ietf-netconf-notifications (netconf-config-change, netconf-session-start ...).
NC_NOTIFICATIONS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
# The namespace bound to the ``xml`` prefix (xml:lang on <error-message>).
XML_NS = "http://www.w3.org/XML/1998/namespace"

# Capability URIs (RFC 6241 section 8, RFC 5277, RFC 6243).
CAP_BASE_1_0 = "urn:ietf:params:netconf:base:1.0"
CAP_BASE_1_1 = "urn:ietf:params:netconf:base:1.1"
CAP_NOTIFICATION = "urn:ietf:params:netconf:capability:notification:1.0"
CAP_INTERLEAVE = "urn:ietf:params:netconf:capability:interleave:1.0"
CAP_WITH_DEFAULTS = "urn:ietf:params:netconf:capability:with-defaults:1.0"
CAP_WRITABLE_RUNNING = "urn:ietf:params:netconf:capability:writable-running:1.0"
CAP_CANDIDATE = "urn:ietf:params:netconf:capability:candidate:1.0"
CAP_VALIDATE_1_1 = "urn:ietf:params:netconf:capability:validate:1.1"
CAP_ROLLBACK_ON_ERROR = "urn:ietf:params:netconf:capability:rollback-on-error:1.0"

_WHITESPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"

_local = threading.local()


def qname(ns: str | None, local: str) -> str:
    """Clark notation ``{ns}local`` as lxml uses for tags and attributes; ``local`` without a namespace."""
    return f"{{{ns}}}{local}" if ns else local


def local_name(el: etree._Element) -> str:
    """The local part of an element's tag."""
    return etree.QName(el).localname


def namespace(el: etree._Element) -> str | None:
    """The namespace URI of an element, ``None`` when it has none."""
    ns: str | None = etree.QName(el).namespace
    return ns


def _parser() -> etree.XMLParser:
    # lxml parsers must not be used by two threads at once; keep one per thread.
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            encoding="utf-8",
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            attribute_defaults=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=False,  # kept so that they can be refused below
            collect_ids=False,
            recover=False,
        )
        _local.parser = parser
    return parser


def _skip_past(data: bytes, pos: int, end: bytes) -> int:
    found = data.find(end, pos)
    if found < 0:
        raise MalformedMessageError("XML parse error: unterminated markup in the document prolog")
    return found + len(end)


def _refuse_doctype(data: bytes) -> None:
    """Walk the prolog (RFC 7303 / XML 1.0 production 22) and refuse a document type declaration.

    A DOCTYPE may only appear before the root element, so only the prolog is scanned: text such as
    ``<!DOCTYPE`` inside a CDATA section of the document body is not a declaration.
    """
    pos = len(_BOM) if data.startswith(_BOM) else 0
    n = len(data)
    while pos < n:
        byte = data[pos]
        if byte in _WHITESPACE:
            pos += 1
        elif data.startswith(b"<?", pos):
            pos = _skip_past(data, pos, b"?>")
        elif data.startswith(b"<!--", pos):
            pos = _skip_past(data, pos, b"-->")
        elif data.startswith(b"<!", pos):
            raise MalformedMessageError(
                "document type declarations (DOCTYPE, ENTITY) are not allowed in NETCONF messages"
            )
        else:
            return


def parse(data: bytes) -> etree._Element:
    """Parse one NETCONF message and return its root element.

    Leading whitespace (left over from end-of-message framing) is ignored. Raises
    :class:`~qsdn.errors.MalformedMessageError` for XML that is not well-formed, that declares a
    DTD or entities, or that contains processing instructions.
    """
    data = data.lstrip(_WHITESPACE)
    if not data:
        raise MalformedMessageError("XML parse error: empty message")
    _refuse_doctype(data)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedMessageError(f"XML parse error: {exc}") from None
    if not isinstance(root, etree._Element):
        raise MalformedMessageError("XML parse error: no root element")
    tree = root.getroottree()
    docinfo = tree.docinfo
    # Belt and braces: the prolog scan above already refused these.
    if getattr(docinfo, "doctype", "") or getattr(docinfo, "internalDTD", None) is not None:
        raise MalformedMessageError(
            "document type declarations (DOCTYPE, ENTITY) are not allowed in NETCONF messages"
        )
    # Without a DTD no entity other than the five predefined ones can be referenced (libxml2 rejects
    # undefined ones), so processing instructions are all that is left to refuse.
    outside = [*root.itersiblings(preceding=True), *root.itersiblings()]
    for node in (*outside, *root.iter(etree.ProcessingInstruction)):
        if isinstance(node, etree._ProcessingInstruction):
            raise MalformedMessageError("processing instructions are not allowed in NETCONF messages")
    return root


def tostring(el: etree._Element, *, xml_declaration: bool = False) -> bytes:
    """Serialise an element as UTF-8 without pretty printing and without its tail text.

    qsdn puts the XML declaration on ``<hello>`` only (as in the RFC 6242 examples); ncclient and
    netconf-console2 accept messages with and without one.
    """
    return etree.tostring(el, encoding="UTF-8", xml_declaration=xml_declaration, with_tail=False)


def ns_map(default: str | None = None, prefixed: dict[str, str] | None = None) -> dict[str, str]:
    """An lxml ``nsmap`` with an optional default namespace.

    lxml accepts ``None`` as the key of the default namespace; its type stubs do not, hence the cast.
    """
    m: dict[str | None, str] = {None: default} if default else {}
    m.update(prefixed or {})
    out: dict[str, str] = cast("dict[str, str]", m)
    return out
