"""RESTCONF writes as whole-datastore replacements (RFC 8040 sections 4.4 to 4.7).

Every write is planned here without I/O: the current configuration (the backend's canonical XML) is
parsed, the request body is parsed with libyang *below the right parent* (so its names, types and
error paths are those of the schema), the change is applied to the copy, and the whole new
configuration datastore is printed back to XML. The server hands that to
:meth:`RestconfBackend.replace_config`, which validates and commits it atomically: nothing is ever
half-applied.

Semantics, per method, for a data resource (the "target"):

* POST (4.4.1): the body is one child of the target, which must exist (a non-presence container always
  does); the child must not exist (409 data-exists). 201 with the child's ``Location``.
* PUT (4.5): the body is the target itself, with the URI's key values (400 otherwise). An existing
  target is replaced (204), a missing one created (201).
* PATCH (4.6.1, plain patch): the body is the target; it is merged into the existing target, which is
  never created (404 when missing). Merging a leaf keeps its siblings.
* DELETE (4.7): the target must exist; a missing target is 404 with error-tag invalid-value. (RFC 8040
  section 4.7 leaves the status open; 404 is the HTTP meaning and section 7 pairs 404 with
  invalid-value, where data-missing would be 409.)

For the datastore resource: POST creates one top-level node, PUT replaces the whole datastore and
PATCH merges into it; their bodies are ``ietf-restconf:data`` (PUT, PATCH) or the node (POST).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from lxml import etree

from controller.northbound import datatree
from controller.northbound.datatree import Node, Tree
from controller.northbound.paths import DataPath, SchemaIndex, SchemaNode, Step, Target
from controller.northbound.render import Encoding, RestconfError, load_json, load_xml, unwrap_datastore
from qsdn.errors import DataExistsError, ErrorType
from qsdn.yang import SchemaContext

Method = Literal["POST", "PUT", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Edit:
    """A planned write: the whole new configuration datastore (canonical XML)."""

    new_config: str
    created: bool = False
    location: DataPath | None = None


def missing(target: Target) -> RestconfError:
    """404 for a data resource that does not exist (RFC 8040 section 7: invalid-value)."""
    return RestconfError(
        "no such data resource",
        status=404,
        tag="invalid-value",
        type=ErrorType.PROTOCOL,
        path=target.path.json() or None,
    )


def implied(tree: Tree, target: Target) -> bool:
    """Whether an absent target is a non-presence container that conceptually exists: every list
    entry and presence container above it exists (RFC 7950 section 7.5.1)."""
    node = target.node
    if node is None or node.kind != "container" or node.presence:
        return False
    for i in range(len(target.nodes) - 2, -1, -1):
        above = target.nodes[i]
        if above.kind == "list" or above.presence:
            return datatree.exists(tree.find(DataPath(target.path.steps[: i + 1])))
    return True


def plan(
    schema: SchemaContext,
    index: SchemaIndex,
    current: str,
    method: Method,
    target: Target,
    body: bytes,
    enc: Encoding,
) -> Edit:
    """The new configuration datastore after ``method`` on ``target`` with ``body``."""
    with datatree.parse_datastore(schema, current, config_only=True) as cur:
        if target.is_datastore:
            return _datastore(schema, cur, method, body, enc)
        node = cur.find(target.path)
        existed = datatree.exists(node)
        if method == "DELETE":
            if not existed:
                raise missing(target)
            cur.remove(node)
            return Edit(cur.print("xml"))
        if method == "POST":
            return _post(schema, index, cur, target, node, body, enc)
        if method == "PATCH" and not existed and not implied(cur, target):
            raise missing(target)
        tnode = _node(target)
        module, name, text = body_node(schema, body, enc)
        if (module, name) != (tnode.module, tnode.name):
            raise RestconfError(
                f"the body must be the target resource {tnode.module}:{tnode.name}, not {module}:{name} "
                f"(RFC 8040 section 4.5)",
                status=400,
                tag="invalid-value",
                path=target.path.json(),
            )
        with _parsed_children(schema, target.path.parent(), text, enc) as (scratch, new):
            if len(new) != 1 or new[0] != scratch.find(target.path):
                raise RestconfError(
                    "the key values in the body must be those of the request URI (RFC 8040 sections "
                    "4.5 and 4.6.1)",
                    status=400,
                    tag="invalid-value",
                    path=datatree.data_path(new[0]).json() if new else target.path.json(),
                )
            if method == "PUT" and existed:
                cur.remove(node)
            cur.merge(scratch)
        return Edit(cur.print("xml"), created=method == "PUT" and not existed)


def _node(target: Target) -> SchemaNode:
    if target.node is None:
        raise RestconfError("the datastore is not a data node", status=400, tag="invalid-value")
    return target.node


def _post(
    schema: SchemaContext,
    index: SchemaIndex,
    cur: Tree,
    target: Target,
    node: Node,
    body: bytes,
    enc: Encoding,
) -> Edit:
    tnode = _node(target)
    if not datatree.exists(node) and not implied(cur, target):
        raise missing(target)
    module, name, text = body_node(schema, body, enc)
    if index.child(tnode, module, name) is None:
        raise RestconfError(
            f"{module}:{name} is not a child of {tnode.module}:{tnode.name}",
            status=400,
            tag="unknown-element",
            type=ErrorType.APPLICATION,
            path=target.path.child(Step(module, name)).json(),
        )
    with _parsed_children(schema, target.path, text, enc) as (scratch, new):
        return _create(cur, scratch, new)


def _create(cur: Tree, scratch: Tree, new: list[Node]) -> Edit:
    if len(new) != 1:
        raise RestconfError(
            "the body must hold exactly one resource to create (RFC 8040 section 4.4.1)",
            status=400,
            tag="invalid-value",
        )
    path = datatree.data_path(new[0])
    if datatree.exists(cur.find(path)):
        raise DataExistsError("the data resource already exists", path=path.json())
    cur.merge(scratch)
    return Edit(cur.print("xml"), created=True, location=path)


def _datastore(schema: SchemaContext, cur: Tree, method: Method, body: bytes, enc: Encoding) -> Edit:
    if method == "POST":
        _module, _name, text = body_node(schema, body, enc)
        with datatree.parse_top(schema, text, enc) as scratch:
            return _create(cur, scratch, scratch.top())
    if method == "DELETE":
        raise RestconfError(
            "the datastore resource cannot be deleted",
            status=405,
            tag="operation-not-supported",
        )
    text = unwrap_datastore(body, enc)
    with datatree.parse_top(schema, text, enc) as new:
        if method == "PUT":
            return Edit(new.print("xml"))
        cur.merge(new)
        return Edit(cur.print("xml"))


@contextmanager
def _parsed_children(
    schema: SchemaContext, parent: DataPath, text: str, enc: Encoding
) -> Iterator[tuple[Tree, list[Node]]]:
    """A scratch tree holding ``parent`` and the body parsed below it, and the body's nodes."""
    if not parent:
        with datatree.parse_top(schema, text, enc) as tree:
            yield tree, tree.top()
        return
    tree, parent_node = datatree.scratch(schema, parent)
    with tree:
        yield tree, datatree.parse_into(tree, parent_node, parent, text, enc)


def body_node(schema: SchemaContext, body: bytes, enc: Encoding) -> tuple[str, str, str]:
    """``(module, name, text)`` of a body that must hold one data node (RFC 7951 section 4 naming)."""
    if not body.strip():
        raise RestconfError("the request needs a message body", status=400, tag="malformed-message")
    if enc == "json":
        obj = load_json(body)
        if not isinstance(obj, dict) or len(obj) != 1:
            raise RestconfError(
                "the body must be a JSON object with exactly one member, the resource",
                status=400,
                tag="malformed-message",
                type=ErrorType.RPC,
            )
        member, value = next(iter(obj.items()))
        module, sep, name = member.partition(":")
        if not sep or not module or not name:
            raise RestconfError(
                f"the member {member!r} must be module-qualified (RFC 7951 section 4)",
                status=400,
                tag="invalid-value",
            )
        if isinstance(value, list) and len(value) != 1:
            raise RestconfError(
                f"{member} must hold exactly one list entry or leaf-list value",
                status=400,
                tag="invalid-value",
            )
        return module, name, body.decode("utf-8")
    root = load_xml(body)
    qname = etree.QName(root)
    module = schema.namespace_module(qname.namespace) if qname.namespace else None
    if module is None:
        raise RestconfError(
            f"no YANG module with namespace {qname.namespace!r} (element {qname.localname!r})",
            status=400,
            tag="unknown-namespace",
            type=ErrorType.APPLICATION,
        )
    return module, qname.localname, etree.tostring(root, encoding="unicode")
