"""The controller's RESTCONF server (RFC 8040) on aiohttp.

``build_app(backend)`` gives an :class:`aiohttp.web.Application` serving:

=========================================  ===============================================================
``GET /.well-known/host-meta``             XRD with ``<Link rel='restconf' href='/restconf'/>`` (3.1);
                                           ``host-meta.json`` is the JRD form
``/restconf``                              the API root: data, operations, yang-library-version (3.3)
``/restconf/data[/<api-path>]``            the datastore and data resources (3.4, 3.5): GET, HEAD, POST,
                                           PUT, PATCH (plain patch), DELETE, OPTIONS
``/restconf/operations[/<module:rpc>]``    the operations list and operation resources (3.3.2, 3.6)
``/restconf/yang-library-version``         the ietf-yang-library revision (3.3.3)
``/yang/<module>@<revision>``              module text (``application/yang``), the ``location`` of
                                           each module in the YANG library
=========================================  ===============================================================

Data: the configuration datastore and state of ``qsdn-orchestrator`` (qsdn's northbound model after
ETSI GS QKD 018 concepts), plus ``ietf-yang-library:yang-library`` (RFC 8525, from libyang) and
``ietf-restconf-monitoring:restconf-state`` as state (``content=nonconfig``).

**A node's own ETSI GS QKD 015 data** is read with the operation ``qsdn-orchestrator:get-node-data``
(input ``qkdn_id`` and ``content``; output ``anydata data`` holding the node's
``etsi-qkd-sdn-node:qkd_node`` tree, fetched by the controller over NETCONF)::

    POST /restconf/operations/qsdn-orchestrator:get-node-data
    {"qsdn-orchestrator:input": {"qkdn_id": "<uuid>", "content": "config"}}

A path such as ``.../qkd_node=<id>/etsi-qkd-sdn-node:qkd_node`` would need schema mount (RFC 8528),
which the controller does not implement; an operation with anydata output is standard RESTCONF.
A node that cannot be reached gives 409 ``resource-denied``.

Choices where RFC 8040 leaves room or where this server departs from it:

* Encodings: JSON (RFC 7951) and XML. No ``Accept`` means JSON (or the request body's encoding); an
  ``Accept`` with neither is 406, a body in another media type 415 (``application/yang-patch+*``
  included: YANG Patch, RFC 8072, is not supported; ``Accept-Patch`` says so).
* api-paths must give all keys of a list and the value of a leaf-list (3.5.3); a list or leaf-list as a
  whole is not a resource (400). Unknown modules and nodes in a URI are 400 (unknown-namespace,
  unknown-element); a well-formed URI with no data behind it is 404 (invalid-value).
* DELETE or PATCH of a missing resource is 404 with error-tag invalid-value (section 7 pairs 404 with
  invalid-value; data-missing would be 409). PATCH never creates its target (4.6.1).
* Validation failures keep their RFC 7950 section 15 error-tag and app-tag (``operation-failed`` with
  ``must-violation``, ``too-many-elements``, ``data-not-unique``...) but are answered 400, not the 500
  that section 7 gives operation-failed: they are the client's fault. ``data-missing`` (a mandatory
  node or a leafref target missing) stays 409 as in section 7.
* ETag and Last-Modified: one strong entity-tag for the whole configuration datastore (a digest of its
  canonical XML, so it changes on every change, made here or by the controller), used for every
  resource; Last-Modified is when this server first saw that tag (at one-second resolution).
  If-Match / If-Unmodified-Since fail with 412 (operation-failed); If-None-Match / If-Modified-Since
  give 304 on GET and HEAD, 412 on writes.
* ``depth``: the target has depth 1, or the top-level nodes for the datastore; list keys are always
  returned with their entry. ``with-defaults`` basic mode is ``explicit``.
* ``insert`` and ``point`` (4.8.5, 4.8.6) are refused (400): the configuration has no ordered-by user
  list. No event streams.
* Authentication: HTTP Basic against ``users`` (401 with ``WWW-Authenticate`` otherwise), meant to run
  behind TLS. ``/.well-known`` stays open for discovery. Writes are serialised; each one computes the
  whole new datastore and commits it with one :meth:`RestconfBackend.replace_config` call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import cast
from urllib.parse import unquote

from _libyang import ffi  # type: ignore[import-not-found, unused-ignore]
from aiohttp import hdrs, web
from lxml import etree

from controller.northbound import datatree, edit, operations, query
from controller.northbound.backend import RestconfBackend
from controller.northbound.datatree import Tree
from controller.northbound.paths import PathError, SchemaIndex, Target, parse_api_path
from controller.northbound.render import (
    JSON_TYPE,
    XML_TYPE,
    Encoding,
    RestconfError,
    datastore_body,
    empty_container_body,
    errors_body,
    http_status,
    load_xml,
    negotiate,
    node_body,
    operations_body,
    request_encoding,
    root_body,
    yang_library_version_body,
)
from qsdn.errors import ErrorType, QsdnError
from qsdn.yang import SchemaContext

log = logging.getLogger(__name__)

DATA_PREFIX = "/restconf/data"
YANG_LIBRARY = "ietf-yang-library"
MONITORING = "ietf-restconf-monitoring"
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf-monitoring"
WITH_DEFAULTS = "ietf-netconf-with-defaults"
YANG_LIBRARY_NS = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
CAPABILITIES = (
    "urn:ietf:params:restconf:capability:defaults:1.0?basic-mode=explicit",
    "urn:ietf:params:restconf:capability:depth:1.0",
    "urn:ietf:params:restconf:capability:fields:1.0",
    "urn:ietf:params:restconf:capability:with-defaults:1.0",
)
ACCEPT_PATCH = f"{JSON_TYPE}, {XML_TYPE}"
ANONYMOUS = "anonymous"

_READ = ("GET", "HEAD", "OPTIONS")
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class _Clock:
    """The datastore entity-tag and the time this server first saw it."""

    def __init__(self) -> None:
        self.etag = ""
        self.modified = datetime.now(UTC).replace(microsecond=0)

    def observe(self, config: str) -> tuple[str, datetime]:
        tag = hashlib.sha256(config.encode("utf-8")).hexdigest()[:32]
        if tag != self.etag:
            if self.etag:
                self.modified = datetime.now(UTC).replace(microsecond=0)
            self.etag = tag
        return self.etag, self.modified

    def headers(self) -> dict[str, str]:
        return {hdrs.ETAG: f'"{self.etag}"', hdrs.LAST_MODIFIED: format_datetime(self.modified, usegmt=True)}


@dataclass
class RestconfServer:
    """What the handlers share (the application's typed state)."""

    backend: RestconfBackend
    users: Mapping[str, str] | None
    realm: str
    index: SchemaIndex = field(init=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    clock: _Clock = field(default_factory=_Clock)
    _yang_library: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = SchemaIndex(self.backend.schema)

    @property
    def schema(self) -> SchemaContext:
        return self.backend.schema

    def yang_library_version(self) -> str:
        for info in self.schema.modules():
            if info.name == YANG_LIBRARY and info.revision:
                return info.revision
        return "2019-01-04"

    def has_module(self, name: str) -> bool:
        return self.schema.module_namespace(name) is not None


SERVER = web.AppKey("qsdn_restconf_server", RestconfServer)
USER = web.RequestKey("qsdn_restconf_user", str)


def build_app(
    backend: RestconfBackend,
    *,
    users: Mapping[str, str] | None = None,
    realm: str = "qsdn",
    client_max_size: int = 1024**2,
) -> web.Application:
    """The RESTCONF application for ``backend``.

    ``users`` maps user names to passwords for HTTP Basic authentication; ``None`` turns
    authentication off (the backend then sees the user ``anonymous``). Request bodies larger than
    ``client_max_size`` bytes are refused with 413 (too-big).
    """
    app = web.Application(middlewares=[_errors, _authenticate], client_max_size=client_max_size)
    app[SERVER] = RestconfServer(
        backend=backend, users=dict(users) if users is not None else None, realm=realm
    )
    r = app.router
    r.add_route("*", "/.well-known/host-meta", _host_meta)
    r.add_route("*", "/.well-known/host-meta.json", _host_meta_json)
    r.add_route("*", "/restconf", _root)
    r.add_route("*", "/restconf/", _root)
    r.add_route("*", DATA_PREFIX, _data)
    r.add_route("*", DATA_PREFIX + "/{path:.*}", _data)
    r.add_route("*", "/restconf/operations", _operations)
    r.add_route("*", "/restconf/operations/{op}", _operation)
    r.add_route("*", "/restconf/yang-library-version", _yang_library_version)
    r.add_route("*", "/yang/{module}", _yang_module)
    return app


# ------------------------------------------------------------------------------------------------
# Middlewares: errors, authentication
# ------------------------------------------------------------------------------------------------
def _out_encoding(request: web.Request) -> Encoding:
    default: Encoding = "json"
    try:
        if request.body_exists:
            default = request_encoding(request.headers.get(hdrs.CONTENT_TYPE))
    except RestconfError:
        pass
    try:
        return negotiate(request.headers.get(hdrs.ACCEPT), default)
    except RestconfError:
        return "json"


def _error_response(request: web.Request, exc: QsdnError) -> web.Response:
    enc = _out_encoding(request)
    index = request.app[SERVER].index
    body = errors_body(exc, enc, prefixes=index.prefixes(), namespace_of=index.schema.module_namespace)
    headers = dict(exc.headers) if isinstance(exc, RestconfError) else {}
    return web.Response(
        status=http_status(exc), body=body, content_type=f"application/yang-data+{enc}", headers=headers
    )


def _from_http(exc: web.HTTPException) -> RestconfError:
    status = exc.status
    headers: dict[str, str] = {}
    if status == 404:
        return RestconfError("no such resource", status=404, tag="invalid-value")
    if status == 405:
        allow = exc.headers.get(hdrs.ALLOW, "")
        return RestconfError(
            f"method not allowed; allowed: {allow}",
            status=405,
            tag="operation-not-supported",
            headers={hdrs.ALLOW: allow} if allow else None,
        )
    if status == 413:
        return RestconfError(
            "the request body is too big", status=413, tag="too-big", type=ErrorType.TRANSPORT
        )
    tag = "invalid-value" if status < 500 else "operation-failed"
    return RestconfError(exc.reason or "request failed", status=status, tag=tag, headers=headers)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Render every failure as ``ietf-restconf:errors`` with its RFC 8040 section 7 status."""
    try:
        return await handler(request)
    except QsdnError as exc:
        level = logging.WARNING if http_status(exc) >= 500 else logging.DEBUG
        log.log(level, "RESTCONF %s %s: %s", request.method, request.path, exc)
        return _error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(request, _from_http(exc))
    except Exception:
        log.exception("RESTCONF %s %s failed", request.method, request.path)
        return _error_response(
            request,
            RestconfError("internal error", status=500, tag="operation-failed", type=ErrorType.APPLICATION),
        )


@web.middleware
async def _authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """HTTP Basic authentication (RFC 7617) against the configured users."""
    server = request.app[SERVER]
    if server.users is None or request.path.startswith("/.well-known/"):
        request[USER] = ANONYMOUS
        return await handler(request)
    user = _basic_user(request.headers.get(hdrs.AUTHORIZATION, ""), server.users)
    if user is None:
        raise RestconfError(
            "authentication required",
            status=401,
            tag="access-denied",
            headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{server.realm}", charset="UTF-8"'},
        )
    request[USER] = user
    return await handler(request)


def _basic_user(header: str, users: Mapping[str, str]) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    expected = users.get(name)
    # Compare even for unknown users, so that timing does not tell which names exist.
    ok = hmac.compare_digest(
        password.encode(), (expected if expected is not None else "\0" + password).encode()
    )
    return name if sep and expected is not None and ok else None


# ------------------------------------------------------------------------------------------------
# Small resources
# ------------------------------------------------------------------------------------------------
def _allow(methods: Iterable[str]) -> str:
    wanted = set(methods)
    return ", ".join(m for m in _METHOD_ORDER if m in wanted)


def _check_method(request: web.Request, allowed: Iterable[str]) -> web.Response | None:
    """The OPTIONS answer, or None to go on; 405 (operation-not-supported) for other methods."""
    allowed = tuple(allowed)
    if request.method == "OPTIONS":
        headers: dict[str, str] = {hdrs.ALLOW: _allow(allowed)}
        if "PATCH" in allowed:
            headers["Accept-Patch"] = ACCEPT_PATCH
        return web.Response(status=200, headers=headers)
    if request.method not in allowed:
        raise RestconfError(
            f"{request.method} is not supported by this resource",
            status=405,
            tag="operation-not-supported",
            headers={hdrs.ALLOW: _allow(allowed)},
        )
    return None


def _no_query(request: web.Request) -> None:
    query.split_query(_query_pairs(request), frozenset(), request.method)


def _respond(body: bytes, enc: Encoding, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=body, content_type=f"application/yang-data+{enc}", headers=headers)


async def _host_meta(request: web.Request) -> web.StreamResponse:
    if (answer := _check_method(request, _READ)) is not None:
        return answer
    body = (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
        "  <Link rel='restconf' href='/restconf'/>\n"
        "</XRD>\n"
    )
    return web.Response(text=body, content_type="application/xrd+xml")


async def _host_meta_json(request: web.Request) -> web.StreamResponse:
    if (answer := _check_method(request, _READ)) is not None:
        return answer
    return web.json_response({"links": [{"rel": "restconf", "href": "/restconf"}]})


async def _root(request: web.Request) -> web.StreamResponse:
    if (answer := _check_method(request, _READ)) is not None:
        return answer
    _no_query(request)
    enc = negotiate(request.headers.get(hdrs.ACCEPT), "json")
    return _respond(root_body(request.app[SERVER].yang_library_version(), enc), enc)


async def _yang_library_version(request: web.Request) -> web.StreamResponse:
    if (answer := _check_method(request, _READ)) is not None:
        return answer
    _no_query(request)
    enc = negotiate(request.headers.get(hdrs.ACCEPT), "json")
    return _respond(yang_library_version_body(request.app[SERVER].yang_library_version(), enc), enc)


async def _yang_module(request: web.Request) -> web.StreamResponse:
    if (answer := _check_method(request, _READ)) is not None:
        return answer
    name, _, revision = request.match_info["module"].removesuffix(".yang").partition("@")
    text = request.app[SERVER].schema.schema_text(name, revision or None)
    if text is None:
        raise RestconfError(
            f"no YANG module {request.match_info['module']!r}", status=404, tag="invalid-value"
        )
    return web.Response(text=text, content_type="application/yang")


async def _operations(request: web.Request) -> web.StreamResponse:
    if (answer := _check_method(request, _READ)) is not None:
        return answer
    _no_query(request)
    server = request.app[SERVER]
    enc = negotiate(request.headers.get(hdrs.ACCEPT), "json")
    ops = [(m, server.schema.module_namespace(m) or "", rpc) for m, rpc in server.index.operations()]
    return _respond(operations_body(ops, enc), enc)


async def _operation(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    name = request.match_info["op"]
    module, sep, rpc = name.partition(":")
    if not sep or server.index.operation(module, rpc) is None:
        raise RestconfError(f"no operation resource {name!r}", status=404, tag="invalid-value")
    if (answer := _check_method(request, ("POST", "OPTIONS"))) is not None:
        return answer
    _no_query(request)
    body = await request.read()
    enc_in: Encoding = request_encoding(request.headers.get(hdrs.CONTENT_TYPE)) if body.strip() else "json"
    enc_out = negotiate(request.headers.get(hdrs.ACCEPT), enc_in)
    backend = server.backend
    inv = operations.prepare(server.schema, backend.config_xml(), module, rpc, body, enc_in)
    log.info("RESTCONF operation %s by %s", inv.qualified, request[USER])
    try:
        output = await operations.call(backend, inv, user=request[USER])
    except QsdnError as exc:
        if exc.first.tag == "operation-not-supported":
            # RFC 8040 section 7 allows 405 or 501; the resource takes POST, so it is 501.
            raise RestconfError(exc.first.message, status=501, tag="operation-not-supported") from None
        raise
    out = operations.reply(server.schema, backend.config_xml(), inv, output, enc_out)
    if out is None:
        return web.Response(status=204)
    return _respond(out, enc_out)


# ------------------------------------------------------------------------------------------------
# Data resources
# ------------------------------------------------------------------------------------------------
def _query_pairs(request: web.Request) -> list[tuple[str, str]]:
    """Query parameters decoded from the raw query string (``;`` is data in ``fields``)."""
    pairs: list[tuple[str, str]] = []
    for item in request.rel_url.raw_query_string.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        try:
            pairs.append((unquote(name, errors="strict"), unquote(value, errors="strict")))
        except UnicodeDecodeError:
            raise query.QueryError(f"query parameter {item!r} is not percent-encoded UTF-8") from None
    return pairs


def _target(request: web.Request) -> Target:
    raw = request.rel_url.raw_path[len(DATA_PREFIX) :]
    return request.app[SERVER].index.resolve(parse_api_path(raw.removeprefix("/")))


def _allowed(target: Target) -> tuple[str, ...]:
    node = target.node
    if node is None:
        return ("GET", "HEAD", "POST", "PUT", "PATCH", "OPTIONS")
    if not node.config:
        return _READ
    if node.inner:
        return ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    return ("GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _data(request: web.Request) -> web.StreamResponse:
    target = _target(request)
    if (answer := _check_method(request, _allowed(target))) is not None:
        return answer
    if request.method in ("GET", "HEAD"):
        return _read(request, target)
    return await _write(request, target)


def _precondition_failed(why: str) -> RestconfError:
    return RestconfError(f"precondition failed: {why}", status=412, tag="operation-failed")


def _preconditions(
    request: web.Request, etag: str, modified: datetime, *, exists: Callable[[], bool]
) -> bool:
    """RFC 7232 section 6 evaluation; True when a GET/HEAD should be answered 304."""
    read = request.method in ("GET", "HEAD")
    if_match = request.if_match
    if if_match is not None:
        ok = any((t.value == "*" and exists()) or (not t.is_weak and t.value == etag) for t in if_match)
        if not ok:
            raise _precondition_failed("If-Match does not match the datastore's entity-tag")
    elif (since := request.if_unmodified_since) is not None and modified > since:
        raise _precondition_failed("the datastore was modified after If-Unmodified-Since")
    if_none = request.if_none_match
    if if_none is not None:
        if any((t.value == "*" and exists()) or t.value == etag for t in if_none):
            if read:
                return True
            raise _precondition_failed("If-None-Match matches")
    elif read and (since := request.if_modified_since) is not None and modified <= since:
        return True
    return False


def _not_modified(server: RestconfServer) -> web.Response:
    return web.Response(status=304, headers=server.clock.headers())


def _read(request: web.Request, target: Target) -> web.StreamResponse:
    server = request.app[SERVER]
    params = query.split_query(_query_pairs(request), query.GET_PARAMS, request.method)
    rp = query.read_params(params, wd_tagging=server.has_module(WITH_DEFAULTS))
    sel = query.resolve_fields(server.index, target, rp.fields) if rp.fields else None
    enc = negotiate(request.headers.get(hdrs.ACCEPT), "json")
    config = server.backend.config_xml()
    etag, modified = server.clock.observe(config)
    if _preconditions(request, etag, modified, exists=lambda: True):
        return _not_modified(server)
    with _source_tree(request, server, target, rp.content, config) as tree:
        if rp.content == "nonconfig":
            query.strip_config(tree)
        if target.is_datastore:
            query.select_datastore(tree, rp.depth, sel)
            printed = tree.print(enc, wd=rp.with_defaults, keep_empty=rp.depth is not None)
            body = datastore_body(printed, enc)
        else:
            body = _read_node(server, tree, target, rp, sel, enc)
    return _respond(body, enc, server.clock.headers())


def _read_node(
    server: RestconfServer,
    tree: Tree,
    target: Target,
    rp: query.ReadParams,
    sel: query.Selection | None,
    enc: Encoding,
) -> bytes:
    node = tree.find(target.path)
    kind = target.node.kind if target.node else "container"
    if node == ffi.NULL:
        tnode = target.node
        if (
            tnode is not None
            and (rp.content == "all" or (rp.content == "config") == tnode.config)
            and edit.implied(tree, target)
        ):
            return empty_container_body(tnode.module, tnode.name, server.schema, enc)
        raise edit.missing(target)
    wd = rp.with_defaults
    if datatree.is_default(node) and kind in ("leaf", "leaf-list"):
        # The target itself only has its default value: report it, unless asked to trim defaults.
        if wd == "trim":
            raise edit.missing(target)
        wd = "report-all"
    query.select_node(node, rp.depth, sel)
    printed = datatree.print_node(
        server.schema, node, enc, wd=wd, keep_empty=kind == "container" or rp.depth is not None
    )
    if not printed.strip():
        raise edit.missing(target)
    return node_body(printed, enc)


def _source_tree(
    request: web.Request, server: RestconfServer, target: Target, content: str, config: str
) -> Tree:
    """The data a GET reads: the configuration, or the state with the protocol's own state data."""
    schema = server.schema
    if content == "config":
        return datatree.parse(schema, config, "xml", config_only=True)
    tree = datatree.parse(schema, server.backend.state_xml(), "xml", config_only=False)
    try:
        module = target.node.module if target.node else None
        if module in (None, YANG_LIBRARY) and server.has_module(YANG_LIBRARY):
            with datatree.parse(
                schema,
                _yang_library(server, str(request.url.origin())),
                "xml",
                config_only=False,
                validate=False,
            ) as lib_tree:
                tree.merge(lib_tree)
        if module in (None, MONITORING) and server.has_module(MONITORING):
            with datatree.parse(schema, _monitoring_xml(), "xml", config_only=False, validate=False) as mon:
                tree.merge(mon)
    except BaseException:
        tree.free()
        raise
    return tree


def _yang_library(server: RestconfServer, origin: str) -> str:
    """RFC 8525 data from libyang, with each module's ``location`` pointing at ``/yang/`` here."""
    cached = server._yang_library.get(origin)
    if cached is not None:
        return cached
    schema = server.schema
    node = schema.ctx.get_yanglib_data("%u")  # type: ignore[no-untyped-call]
    with Tree(schema, node.cdata) as tree:
        text = tree.print("xml")
    root = load_xml(f"<wrap>{text}</wrap>".encode())
    ns = {"yl": YANG_LIBRARY_NS}
    for module in root.findall(".//yl:module", ns) + root.findall(".//yl:import-only-module", ns):
        for old in module.findall("yl:location", ns) + module.findall("yl:schema", ns):
            module.remove(old)
        name = module.findtext("yl:name", namespaces=ns)
        revision = module.findtext("yl:revision", namespaces=ns) or None
        if name is None or schema.schema_text(name, revision) is None:
            continue
        url = f"{origin}/yang/{name}" + (f"@{revision}" if revision else "")
        in_state = (
            module.getparent() is not None and etree.QName(module.getparent()).localname == "modules-state"
        )
        leaf = etree.Element(f"{{{YANG_LIBRARY_NS}}}{'schema' if in_state else 'location'}")
        leaf.text = url
        # RFC 8525 / RFC 7895 node order: after namespace (yang-library) or after revision.
        anchor = module.find("yl:namespace", ns) if not in_state else module.find("yl:revision", ns)
        if anchor is not None:
            anchor.addnext(leaf)
        else:
            module.append(leaf)
    text = "".join(etree.tostring(child, encoding="unicode") for child in root)
    server._yang_library[origin] = text
    return text


def _monitoring_xml() -> str:
    caps = "".join(f"<capability>{c}</capability>" for c in CAPABILITIES)
    return f'<restconf-state xmlns="{MONITORING_NS}"><capabilities>{caps}</capabilities></restconf-state>'


async def _write(request: web.Request, target: Target) -> web.StreamResponse:
    server = request.app[SERVER]
    method = cast(edit.Method, request.method)
    params = query.split_query(
        _query_pairs(request),
        frozenset({"insert", "point"}) if method in ("POST", "PUT") else frozenset(),
        method,
    )
    if params:
        raise query.QueryError("insert and point apply to ordered-by user lists; this datastore has none")
    body = await request.read() if method != "DELETE" else b""
    enc_in: Encoding = "json"
    if method != "DELETE":
        try:
            enc_in = request_encoding(request.headers.get(hdrs.CONTENT_TYPE))
        except RestconfError as exc:
            if method == "PATCH":
                exc.headers["Accept-Patch"] = ACCEPT_PATCH
            raise
    user = request[USER]
    backend = server.backend
    async with server.lock:
        current = backend.config_xml()
        etag, modified = server.clock.observe(current)
        _preconditions(request, etag, modified, exists=lambda: _exists(server.schema, current, target))
        planned = edit.plan(server.schema, server.index, current, method, target, body, enc_in)
        await backend.replace_config(planned.new_config, user=user)
        server.clock.observe(backend.config_xml())
    log.info("RESTCONF %s %s by %s", method, target.path.json() or "/", user)
    headers = server.clock.headers()
    if planned.location is not None:
        headers[hdrs.LOCATION] = f"{DATA_PREFIX}/{planned.location.uri()}"
    return web.Response(status=201 if planned.created else 204, headers=headers)


def _exists(schema: SchemaContext, config: str, target: Target) -> bool:
    if target.is_datastore:
        return True
    with datatree.parse(schema, config, "xml", config_only=True) as tree:
        return datatree.exists(tree.find(target.path))


__all__ = ["SERVER", "USER", "PathError", "RestconfServer", "build_app"]
