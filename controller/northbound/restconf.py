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
* ETag and Last-Modified: one strong entity-tag for the configuration datastore (a digest of its
  canonical XML, so it changes on every change, made here or by the controller), used for every
  resource; as section 3.4.1.2 requires, state changes do not change it, so a read whose answer holds
  state data is never answered 304 (``conditional.py``). If-Match / If-Unmodified-Since fail with 412
  (operation-failed); If-None-Match / If-Modified-Since give 304 on GET and HEAD, 412 on writes.
* ``depth``: the target has depth 1, or the top-level nodes for the datastore; list keys are always
  returned with their entry. ``with-defaults`` basic mode is ``explicit``.
* A non-presence container without data reads as empty (``{}``) when the list entries above it exist;
  a leaf that only has its default value is reported with it (unless ``with-defaults=trim``).
* An operation the controller does not implement is 501 (section 7 allows 405 or 501).
* ``insert`` and ``point`` (4.8.5, 4.8.6) are refused (400): the configuration has no ordered-by user
  list. No event streams.
* Authentication: HTTP Basic against ``users`` (401 with ``WWW-Authenticate`` otherwise), meant to run
  behind TLS. ``/.well-known`` stays open for discovery. Writes are serialised; each one computes the
  whole new datastore and commits it with one :meth:`RestconfBackend.replace_config` call.

The package: ``paths.py`` (URIs, data paths, instance-identifiers), ``render.py`` (media types,
envelopes, errors), ``query.py`` (query parameters, shaping of answers), ``edit.py`` (writes),
``operations.py`` (RPCs), ``datatree.py`` (libyang trees per request), ``conditional.py`` (ETag and
conditional requests), ``monitoring.py`` (yang-library, restconf-state), ``backend.py`` (the backend).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import unquote

from _libyang import ffi  # type: ignore[import-not-found, unused-ignore]
from aiohttp import hdrs, web

from controller.northbound import conditional, datatree, edit, operations, query
from controller.northbound.backend import RestconfBackend
from controller.northbound.conditional import DatastoreClock
from controller.northbound.datatree import Node, Tree
from controller.northbound.monitoring import ServerState
from controller.northbound.paths import SchemaIndex, Target, parse_api_path
from controller.northbound.render import (
    JSON_TYPE,
    XML_TYPE,
    Encoding,
    RestconfError,
    datastore_body,
    empty_container_body,
    errors_body,
    http_status,
    negotiate,
    node_body,
    operations_body,
    request_encoding,
    root_body,
    yang_library_version_body,
)
from qsdn.errors import ErrorType, QsdnError, ValidationError
from qsdn.yang import SchemaContext

log = logging.getLogger(__name__)

DATA_PREFIX = "/restconf/data"
WITH_DEFAULTS = "ietf-netconf-with-defaults"
ACCEPT_PATCH = f"{JSON_TYPE}, {XML_TYPE}"
ANONYMOUS = "anonymous"

_READ = ("GET", "HEAD", "OPTIONS")
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass
class RestconfServer:
    """What the handlers share (the application's typed state)."""

    backend: RestconfBackend
    users: Mapping[str, str] | None
    realm: str
    index: SchemaIndex = field(init=False)
    state: ServerState = field(init=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    clock: DatastoreClock = field(default_factory=DatastoreClock)

    def __post_init__(self) -> None:
        self.index = SchemaIndex(self.backend.schema)
        self.state = ServerState(self.backend.schema)

    @property
    def schema(self) -> SchemaContext:
        return self.backend.schema

    def config(self) -> str:
        """The backend's configuration, noted by the clock."""
        config = self.backend.config_xml()
        self.clock.observe(config)
        return config


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
    return RestconfError(exc.reason or "request failed", status=status, tag=tag)


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
    return _respond(root_body(request.app[SERVER].state.yang_library_version(), enc), enc)


async def _yang_library_version(request: web.Request) -> web.StreamResponse:
    if (answer := _check_method(request, _READ)) is not None:
        return answer
    _no_query(request)
    enc = negotiate(request.headers.get(hdrs.ACCEPT), "json")
    return _respond(yang_library_version_body(request.app[SERVER].state.yang_library_version(), enc), enc)


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


def _read(request: web.Request, target: Target) -> web.StreamResponse:
    server = request.app[SERVER]
    params = query.split_query(_query_pairs(request), query.GET_PARAMS, request.method)
    rp = query.read_params(params, wd_tagging=server.state.has(WITH_DEFAULTS))
    sel = query.resolve_fields(server.index, target, rp.fields) if rp.fields else None
    enc = negotiate(request.headers.get(hdrs.ACCEPT), "json")
    config = server.config()
    conditional.check(request, server.clock, exists=lambda: True)
    with _source_tree(request, server, target, rp.content, config) as tree:
        if rp.content == "nonconfig":
            query.strip_config(tree)
        if target.is_datastore:
            query.select_datastore(tree, rp.depth, sel)
            answer = tree.top()
            printed = tree.print(enc, wd=rp.with_defaults, keep_empty=rp.depth is not None)
            body = datastore_body(printed, enc)
        else:
            node = _target_node(server, tree, target, rp)
            if node is None:
                answer = []
                body = empty_container_body(
                    target.path.steps[-1].module, target.path.steps[-1].name, server.schema, enc
                )
            else:
                answer = [node]
                body = _print_target(server, node, target, rp, sel, enc)
        holds_state = any(not datatree.is_config(n) for top in answer for n in datatree.iter_tree(top))
    if not holds_state and conditional.not_modified(request, server.clock):
        return conditional.not_modified_response(server.clock)
    return _respond(body, enc, server.clock.headers())


def _target_node(server: RestconfServer, tree: Tree, target: Target, rp: query.ReadParams) -> Node | None:
    """The target in the data read; None for an absent non-presence container (read as empty)."""
    node = tree.find(target.path)
    if node != ffi.NULL:
        return node
    tnode = target.node
    if (
        tnode is not None
        and (rp.content == "all" or (rp.content == "config") == tnode.config)
        and edit.implied(tree, target)
    ):
        return None
    raise edit.missing(target)


def _print_target(
    server: RestconfServer,
    node: Node,
    target: Target,
    rp: query.ReadParams,
    sel: query.Selection | None,
    enc: Encoding,
) -> bytes:
    wd = rp.with_defaults
    kind = target.node.kind if target.node else "container"
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
    """The data a GET reads: the configuration, or the state with the server's own state data."""
    if content == "config":
        return datatree.parse_datastore(server.schema, config, config_only=True)
    try:
        state = server.backend.state_xml()
    except ValidationError as exc:
        raise datatree.invalid_backend_data(exc) from None
    tree = datatree.parse_datastore(server.schema, state, config_only=False)
    try:
        module = target.node.module if target.node else None
        server.state.merge_into(tree, module, str(request.url.origin()))
    except BaseException:
        tree.free()
        raise
    return tree


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
    body = b""
    enc_in: Encoding = "json"
    if method != "DELETE":
        body = await request.read()
        if not body.strip():
            raise RestconfError(f"{method} needs a message body", status=400, tag="malformed-message")
        try:
            enc_in = request_encoding(request.headers.get(hdrs.CONTENT_TYPE))
        except RestconfError as exc:
            if method == "PATCH":
                exc.headers["Accept-Patch"] = ACCEPT_PATCH
            raise
    user = request[USER]
    async with server.lock:
        current = server.config()
        conditional.check(request, server.clock, exists=lambda: _exists(server.schema, current, target))
        planned = edit.plan(server.schema, server.index, current, method, target, body, enc_in)
        await server.backend.replace_config(planned.new_config, user=user)
        server.config()
    log.info("RESTCONF %s %s by %s", method, target.path.json() or "/", user)
    headers = server.clock.headers()
    if planned.location is not None:
        headers[hdrs.LOCATION] = f"{DATA_PREFIX}/{planned.location.uri()}"
    return web.Response(status=201 if planned.created else 204, headers=headers)


def _exists(schema: SchemaContext, config: str, target: Target) -> bool:
    if target.is_datastore:
        return True
    with datatree.parse_datastore(schema, config, config_only=True) as tree:
        return datatree.exists(tree.find(target.path))


__all__ = ["SERVER", "USER", "RestconfServer", "build_app"]
