"""RESTCONF operation resources (RFC 8040 section 3.6): input in, backend, output out.

An invocation is three steps, and libyang trees live only inside the first and the last:

1. the ``input`` body becomes the RPC tree, parsed and validated by libyang against the current
   configuration (so a leafref to an unknown node is refused with its path), and is printed as XML with
   its defaults filled in: ``<compute-path xmlns="..."><src_node>...</src_node>...<k>4</k></compute-path>``;
2. the backend runs it (:meth:`RestconfBackend.invoke`), or, for ``qsdn-orchestrator:get-node-data``,
   the server asks :meth:`RestconfBackend.node_data` for the node's ETSI 015 tree;
3. the backend's output XML (the RPC element, or an ``output`` element, in the module's namespace,
   holding the output nodes; ``""`` when there is none) is validated as the RPC's reply and printed as
   ``output`` in the response encoding. No output, or an empty one, is 204.

anydata in JSON: libyang keeps anydata content as it was parsed and prints XML-derived content to JSON
without converting identity prefixes. The content of each anydata output node is therefore re-parsed
as YANG data with the server's schema (which holds etsi-qkd-sdn-node) and printed properly (RFC 7951
section 5.5); content the schema does not know is left as libyang prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import libyang
from _libyang import ffi, lib  # type: ignore[import-not-found, unused-ignore]
from libyang.util import c2str
from lxml import etree

from controller.northbound import datatree
from controller.northbound.backend import RestconfBackend
from controller.northbound.datatree import Node
from controller.northbound.render import (
    Encoding,
    RestconfError,
    json_members,
    load_xml,
    rpc_input,
    rpc_output,
)
from qsdn.errors import ErrorType, QsdnError, ValidationError
from qsdn.yang import SchemaContext, to_qsdn_error

ORCHESTRATOR_MODULE = "qsdn-orchestrator"
#: The operation served with :meth:`RestconfBackend.node_data` instead of :meth:`RestconfBackend.invoke`.
NODE_DATA_RPC = "get-node-data"


@dataclass(frozen=True)
class Invocation:
    module: str
    namespace: str
    rpc: str
    input_xml: str
    #: The input leaves as strings (first value of each), for operations the server serves itself.
    leaves: dict[str, str]

    @property
    def qualified(self) -> str:
        return f"{self.module}:{self.rpc}"


def _free(node: Node) -> None:
    if node != ffi.NULL:
        lib.lyd_free_all(node)


def _validate_op(schema: SchemaContext, op: Node, dep: datatree.Tree, dtype: int) -> None:
    if lib.lyd_validate_op(op, dep.first, dtype, ffi.NULL) != lib.LY_SUCCESS:
        raise to_qsdn_error(schema.ctx.error("invalid operation data"))


def prepare(
    schema: SchemaContext,
    config_xml: str,
    module: str,
    rpc: str,
    body: bytes,
    enc: Encoding,
) -> Invocation:
    """Parse and validate an operation's input (step 1)."""
    namespace = schema.module_namespace(module) or ""
    text = rpc_input(body, enc, module, namespace, rpc)
    try:
        op = schema.ctx.parse_op_mem(enc, text, libyang.DataType.RPC_YANG).cdata
    except libyang.LibyangError as exc:
        raise to_qsdn_error(exc) from None
    try:
        with datatree.parse_datastore(schema, config_xml, config_only=True) as dep:
            _validate_op(schema, op, dep, lib.LYD_TYPE_RPC_YANG)
        leaves: dict[str, str] = {}
        for child in datatree.children(op):
            if datatree.nodetype(child) & (lib.LYS_LEAF | lib.LYS_LEAFLIST):
                leaves.setdefault(datatree.node_name(child), str(c2str(lib.lyd_get_value(child))))
        input_xml = datatree.print_node(schema, op, "xml", wd="report-all")
    finally:
        _free(op)
    return Invocation(module, namespace, rpc, input_xml, leaves)


async def call(backend: RestconfBackend, inv: Invocation, *, user: str) -> str:
    """Run an operation (step 2); the output XML or ``""``."""
    if (inv.module, inv.rpc) != (ORCHESTRATOR_MODULE, NODE_DATA_RPC):
        return await backend.invoke(inv.qualified, inv.input_xml, user=user)
    qkdn_id = inv.leaves["qkdn_id"]
    data = await backend.node_data(qkdn_id, inv.leaves.get("content", "all"))
    content = etree.tostring(load_xml(data.encode("utf-8")), encoding="unicode") if data.strip() else ""
    return f'<{inv.rpc} xmlns="{inv.namespace}"><data>{content}</data></{inv.rpc}>'


def _normalised_output(output: str, inv: Invocation) -> str:
    root = load_xml(output.encode("utf-8"))
    if root.tag not in (f"{{{inv.namespace}}}{inv.rpc}", f"{{{inv.namespace}}}output"):
        raise QsdnError(
            f"the backend answered {inv.qualified} with <{root.tag}>, not its output",
            tag="operation-failed",
        )
    root.tag = f"{{{inv.namespace}}}{inv.rpc}"
    return etree.tostring(root, encoding="unicode")


def reply(
    schema: SchemaContext, config_xml: str, inv: Invocation, output: str, enc: Encoding
) -> bytes | None:
    """Validate the backend's output and render it as ``output`` (step 3); ``None`` for no output."""
    if not output.strip():
        return None
    text = _normalised_output(output, inv)
    try:
        op = schema.ctx.parse_op_mem("xml", text, libyang.DataType.REPLY_YANG).cdata
    except libyang.LibyangError as exc:
        raise _bad_output(inv, to_qsdn_error(exc)) from None
    try:
        with datatree.parse_datastore(schema, config_xml, config_only=True) as dep:
            try:
                _validate_op(schema, op, dep, lib.LYD_TYPE_REPLY_YANG)
            except ValidationError as exc:
                raise _bad_output(inv, exc) from None
        kids = datatree.children(op)
        if not kids:
            return None
        printed = datatree.print_node(schema, op, enc)
        body = rpc_output(printed, enc, inv.module, inv.namespace)
        if enc == "json":
            body = _fix_anydata(schema, body, kids, inv.module)
        return body
    finally:
        _free(op)


def _bad_output(inv: Invocation, exc: QsdnError) -> QsdnError:
    return RestconfError(
        f"the controller produced an invalid output for {inv.qualified}: {exc.first.message}",
        status=500,
        tag="operation-failed",
        type=ErrorType.APPLICATION,
    )


def _fix_anydata(schema: SchemaContext, body: bytes, kids: list[Node], module: str) -> bytes:
    any_nodes = [k for k in kids if datatree.nodetype(k) & (lib.LYS_ANYDATA | lib.LYS_ANYXML)]
    if not any_nodes:
        return body
    doc = json.loads(body)
    output = doc[f"{module}:output"]
    for node in any_nodes:
        content = datatree.any_value_xml(node)
        try:
            with datatree.parse(schema, content, "xml", config_only=False, validate=False) as tree:
                output[datatree.node_name(node)] = json_members(tree.print("json"))
        except QsdnError:
            continue
    return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")
