"""RESTCONF encodings: media types, envelopes and ``ietf-restconf:errors`` (RFC 8040 sections 5.2, 7).

Everything here turns plain data (strings printed by libyang, :class:`~qsdn.errors.QsdnError`) into
HTTP bodies and back; nothing here touches a libyang tree.

* Media types: ``application/yang-data+json`` (RFC 7951) and ``application/yang-data+xml``. The generic
  ``application/json`` and ``application/xml`` are accepted as aliases in ``Accept`` and
  ``Content-Type``; responses always carry the YANG media type. No ``Accept`` (or ``*/*``) means JSON,
  unless the request body was XML (RFC 8040 section 5.2).
* Envelopes: the datastore (``ietf-restconf:data``), the API root (``ietf-restconf:restconf``), the
  operations list and RPC ``input``/``output`` (RFC 8040 sections 3.3, 3.6).
* Errors: one :class:`~qsdn.errors.ErrorInfo` becomes one ``error`` entry. ``error-path`` is the RFC 7951
  instance-identifier in JSON and the RFC 7950 one in XML, with its prefixes declared on the element.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from lxml import etree

from controller.northbound.paths import DataPath
from qsdn.errors import ErrorInfo, ErrorType, MalformedMessageError, QsdnError
from qsdn.netconf.xml import parse as parse_xml
from qsdn.yang import SchemaContext

Encoding = Literal["json", "xml"]

JSON_TYPE = "application/yang-data+json"
XML_TYPE = "application/yang-data+xml"
MEDIA_TYPES: dict[Encoding, str] = {"json": JSON_TYPE, "xml": XML_TYPE}
RESTCONF_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf"
RESTCONF_MODULE = "ietf-restconf"

_BY_TYPE: dict[str, Encoding] = {
    JSON_TYPE: "json",
    "application/json": "json",
    XML_TYPE: "xml",
    "application/xml": "xml",
    "text/xml": "xml",
}

# RFC 7950 section 15: validation failures a client caused. RFC 8040 section 7 maps their error-tag
# (operation-failed) to 500; they are reported with 400 instead (see the package docstring).
_CLIENT_APP_TAGS = frozenset({"must-violation", "too-many-elements", "too-few-elements", "data-not-unique"})


class RestconfError(QsdnError):
    """A :class:`QsdnError` with the HTTP status RFC 8040 section 7 gives its error-tag here.

    Several error-tags map to more than one status (``invalid-value``: 400, 404 or 406;
    ``access-denied``: 401 or 403; ``operation-failed``: 412 or 500); this error carries the one chosen.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        tag: str,
        type: ErrorType = ErrorType.PROTOCOL,
        path: str | None = None,
        app_tag: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, tag=tag, type=type, path=path, app_tag=app_tag)
        self.status = status
        self.headers = dict(headers or {})

    @property
    def http_status(self) -> int:
        return self.status


def http_status(exc: QsdnError) -> int:
    """The HTTP status of an error response (RFC 8040 section 7)."""
    if isinstance(exc, RestconfError):
        return exc.status
    first = exc.first
    if first.tag == "operation-failed" and first.app_tag in _CLIENT_APP_TAGS:
        return 400
    return exc.http_status


# ------------------------------------------------------------------------------------------------
# Media types
# ------------------------------------------------------------------------------------------------
def _default_ns(namespace: str) -> Any:
    """An lxml nsmap making ``namespace`` the default one (lxml-stubs do not type the None key)."""
    return {None: namespace}


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def negotiate(accept: str | None, default: Encoding) -> Encoding:
    """The response encoding for an ``Accept`` header; 406 when none of ours is acceptable."""
    if accept is None or not accept.strip():
        return default
    ranked: list[tuple[float, int, str]] = []
    for i, item in enumerate(accept.split(",")):
        if not item.strip():
            continue
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranked.append((-q, i, media.lower()))
    for negq, _, media in sorted(ranked):
        if negq == 0:
            continue
        if media in _BY_TYPE:
            return _BY_TYPE[media]
        if media in ("*/*", "application/*"):
            return default
    raise RestconfError(
        f"none of the media types in Accept is supported; use {JSON_TYPE} or {XML_TYPE}",
        status=406,
        tag="invalid-value",
        type=ErrorType.PROTOCOL,
    )


def request_encoding(content_type: str | None) -> Encoding:
    """The encoding of a request body from its ``Content-Type``; 415 when unsupported."""
    media = _media_type(content_type or "")
    if media in _BY_TYPE:
        return _BY_TYPE[media]
    raise RestconfError(
        f"unsupported request media type {media or '(none)'!r}; use {JSON_TYPE} or {XML_TYPE}",
        status=415,
        tag="invalid-value",
        type=ErrorType.PROTOCOL,
    )


# ------------------------------------------------------------------------------------------------
# Bodies
# ------------------------------------------------------------------------------------------------
def load_json(body: bytes) -> Any:
    """Parse a JSON body (malformed-message on failure)."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessageError(f"malformed JSON body: {exc}") from None


def load_xml(body: bytes) -> etree._Element:
    """Parse an XML body with the hardened parser (no DTD, no entities; malformed-message on failure)."""
    return parse_xml(body)


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")


def json_members(text: str) -> dict[str, Any]:
    """The members of a JSON object printed by libyang (``{}`` for an empty print)."""
    if not text.strip():
        return {}
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise QsdnError("libyang printed a JSON value that is not an object")
    return obj


def xml_children_text(root: etree._Element) -> str:
    """The child elements of ``root`` serialised one after the other (namespaces kept)."""
    return "".join(etree.tostring(child, encoding="unicode", with_tail=False) for child in root)


def unwrap_datastore(body: bytes, enc: Encoding) -> str:
    """The content of an ``ietf-restconf:data`` body (PUT/PATCH on the datastore, RFC 8040 4.5, 4.6)."""
    if enc == "json":
        obj = load_json(body)
        if not isinstance(obj, dict) or set(obj) != {f"{RESTCONF_MODULE}:data"}:
            raise RestconfError(
                f'the body must be one "{RESTCONF_MODULE}:data" object',
                status=400,
                tag="malformed-message",
                type=ErrorType.RPC,
            )
        inner = obj[f"{RESTCONF_MODULE}:data"]
        if not isinstance(inner, dict):
            raise RestconfError(
                f'"{RESTCONF_MODULE}:data" must be an object', status=400, tag="invalid-value"
            )
        return json.dumps(inner) if inner else ""
    root = load_xml(body)
    if root.tag != f"{{{RESTCONF_NS}}}data":
        raise RestconfError(
            f"the body must be a <data> element in namespace {RESTCONF_NS}",
            status=400,
            tag="malformed-message",
            type=ErrorType.RPC,
        )
    return xml_children_text(root)


def datastore_body(printed: str, enc: Encoding) -> bytes:
    """Wrap top-level nodes printed by libyang in ``ietf-restconf:data``."""
    if enc == "json":
        return dump_json({f"{RESTCONF_MODULE}:data": json_members(printed)})
    return f'<data xmlns="{RESTCONF_NS}">{printed}</data>'.encode()


def node_body(printed: str, enc: Encoding) -> bytes:
    """A data resource printed by libyang (one node, module-qualified), re-indented for JSON."""
    if enc == "json":
        return dump_json(json_members(printed))
    return printed.encode("utf-8")


def empty_container_body(module: str, name: str, schema: SchemaContext, enc: Encoding) -> bytes:
    """An empty non-presence container resource."""
    if enc == "json":
        return dump_json({f"{module}:{name}": {}})
    return f'<{name} xmlns="{schema.module_namespace(module)}"/>'.encode()


def root_body(yang_library_version: str, enc: Encoding) -> bytes:
    """The API root resource (RFC 8040 section 3.3)."""
    if enc == "json":
        return dump_json(
            {
                f"{RESTCONF_MODULE}:restconf": {
                    "data": {},
                    "operations": {},
                    "yang-library-version": yang_library_version,
                }
            }
        )
    return (
        f'<restconf xmlns="{RESTCONF_NS}"><data/><operations/>'
        f"<yang-library-version>{yang_library_version}</yang-library-version></restconf>"
    ).encode()


def yang_library_version_body(version: str, enc: Encoding) -> bytes:
    """The yang-library-version resource (RFC 8040 section 3.3.3)."""
    if enc == "json":
        return dump_json({f"{RESTCONF_MODULE}:yang-library-version": version})
    return f'<yang-library-version xmlns="{RESTCONF_NS}">{version}</yang-library-version>'.encode()


def operations_body(ops: Iterable[tuple[str, str, str]], enc: Encoding) -> bytes:
    """The operations resource (RFC 8040 section 3.3.2): ``(module, namespace, rpc)`` triples."""
    if enc == "json":
        return dump_json({f"{RESTCONF_MODULE}:operations": {f"{m}:{rpc}": [None] for m, _, rpc in ops}})
    root = etree.Element(f"{{{RESTCONF_NS}}}operations", nsmap=_default_ns(RESTCONF_NS))
    for _, ns, rpc in ops:
        etree.SubElement(root, f"{{{ns}}}{rpc}", nsmap=_default_ns(ns))
    return etree.tostring(root)


def rpc_input(body: bytes, enc: Encoding, module: str, namespace: str, rpc: str) -> str:
    """An operation's ``input`` body turned into the RPC tree libyang parses (RFC 8040 section 3.6.1).

    JSON ``{"mod:input": {...}}`` becomes ``{"mod:rpc": {...}}``; XML ``<input xmlns=ns>`` becomes
    ``<rpc xmlns=ns>``. An empty body is an empty input.
    """
    if enc == "json":
        if not body.strip():
            return json.dumps({f"{module}:{rpc}": {}})
        obj = load_json(body)
        if (
            not isinstance(obj, dict)
            or set(obj) != {f"{module}:input"}
            or not isinstance(obj[f"{module}:input"], dict)
        ):
            raise RestconfError(
                f'the body must be one "{module}:input" object',
                status=400,
                tag="malformed-message",
                type=ErrorType.RPC,
            )
        return json.dumps({f"{module}:{rpc}": obj[f"{module}:input"]})
    if not body.strip():
        return f'<{rpc} xmlns="{namespace}"/>'
    root = load_xml(body)
    if root.tag != f"{{{namespace}}}input":
        raise RestconfError(
            f"the body must be an <input> element in namespace {namespace}",
            status=400,
            tag="malformed-message",
            type=ErrorType.RPC,
        )
    root.tag = f"{{{namespace}}}{rpc}"
    return etree.tostring(root, encoding="unicode")


def rpc_output(printed: str, enc: Encoding, module: str, namespace: str) -> bytes:
    """A reply printed by libyang (``{"mod:rpc": {...}}``) as RESTCONF ``output`` (section 3.6.2)."""
    if enc == "json":
        members = json_members(printed)
        inner = next(iter(members.values())) if members else {}
        return dump_json({f"{module}:output": inner})
    root = load_xml(printed.encode("utf-8"))
    root.tag = f"{{{namespace}}}output"
    return etree.tostring(root)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def _parsed_path(path: str) -> DataPath | None:
    try:
        return DataPath.parse(path)
    except ValueError:
        return None


def _json_error(e: ErrorInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"error-type": str(e.type), "error-tag": e.tag}
    if e.app_tag:
        out["error-app-tag"] = e.app_tag
    if e.path:
        parsed = _parsed_path(e.path)
        out["error-path"] = parsed.json() if parsed else e.path
    out["error-message"] = e.message
    if e.info:
        out["error-info"] = dict(e.info)
    return out


def _xml_name(text: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return name if name and (name[0].isalpha() or name[0] == "_") else f"info-{name}"


def _xml_error(parent: etree._Element, e: ErrorInfo, prefixes: Mapping[str, str], namespaces: Any) -> None:
    error = etree.SubElement(parent, f"{{{RESTCONF_NS}}}error")
    etree.SubElement(error, f"{{{RESTCONF_NS}}}error-type").text = str(e.type)
    etree.SubElement(error, f"{{{RESTCONF_NS}}}error-tag").text = e.tag
    if e.app_tag:
        etree.SubElement(error, f"{{{RESTCONF_NS}}}error-app-tag").text = e.app_tag
    if e.path:
        parsed = _parsed_path(e.path)
        mods = parsed.modules() if parsed else []
        if parsed and all(m in prefixes and namespaces(m) for m in mods):
            nsmap = {prefixes[m]: namespaces(m) for m in mods}
            el = etree.SubElement(error, f"{{{RESTCONF_NS}}}error-path", nsmap=nsmap)
            el.text = parsed.xml(dict(prefixes))
        else:
            etree.SubElement(error, f"{{{RESTCONF_NS}}}error-path").text = e.path
    etree.SubElement(error, f"{{{RESTCONF_NS}}}error-message").text = e.message
    if e.info:
        info = etree.SubElement(error, f"{{{RESTCONF_NS}}}error-info")
        for key, value in e.info.items():
            etree.SubElement(info, f"{{{RESTCONF_NS}}}{_xml_name(key)}").text = value


def errors_body(
    exc: QsdnError,
    enc: Encoding,
    *,
    prefixes: Mapping[str, str] | None = None,
    namespace_of: Any = None,
) -> bytes:
    """``ietf-restconf:errors`` for an error (RFC 8040 section 7.1).

    ``prefixes`` maps module names to XML prefixes and ``namespace_of(module)`` gives a module's
    namespace; without them XML error paths are printed as given.
    """
    if enc == "json":
        return dump_json({f"{RESTCONF_MODULE}:errors": {"error": [_json_error(e) for e in exc.errors]}})
    root = etree.Element(f"{{{RESTCONF_NS}}}errors", nsmap=_default_ns(RESTCONF_NS))
    for e in exc.errors:
        _xml_error(root, e, prefixes or {}, namespace_of or (lambda _m: None))
    return etree.tostring(root, pretty_print=True)
