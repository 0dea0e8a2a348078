"""libyang data trees owned by one request: parse, find, edit, print, then free.

A :class:`Tree` is a forest of top-level siblings. It is created from a string (the backend's XML, a
request body), changed in place, printed back to a string and freed when its ``with`` block ends, so no
libyang node outlives the request (STYLE.md, habit 6). Node handles are cffi pointers (``struct
lyd_node *``), used only inside the block.

Errors keep their locator: libyang's error paths become :class:`~qsdn.errors.ErrorInfo` paths. When a
body is parsed below a parent node, libyang reports paths relative to the parsed node (or without the
parent's list keys); :func:`parse_into` rebases them onto the parent, and an unknown element's name is
appended to its parent's path, so that ``error-path`` points at the offending node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any, Literal

import libyang
from _libyang import ffi, lib  # type: ignore[import-not-found, unused-ignore]
from libyang.util import c2str

from controller.northbound.paths import DataPath, Step
from controller.northbound.render import RestconfError
from qsdn.errors import ErrorInfo, ErrorType, QsdnError, ValidationError
from qsdn.yang import SchemaContext, to_qsdn_error

Format = Literal["json", "xml"]
WithDefaults = Literal["report-all", "trim", "explicit", "report-all-tagged"]

_FORMATS = {"json": lib.LYD_JSON, "xml": lib.LYD_XML}
_WD_FLAGS: dict[str, int] = {
    "explicit": lib.LYD_PRINT_WD_EXPLICIT,
    "trim": lib.LYD_PRINT_WD_TRIM,
    "report-all": lib.LYD_PRINT_WD_ALL,
    "report-all-tagged": lib.LYD_PRINT_WD_ALL_TAG,
}

_CHILD_NOT_FOUND = re.compile(r'Node "([^"]+)" not found as a child of "([^"]+)" node')
_MODULE_NOT_FOUND = re.compile(r'Node "([^"]+)" not found in the "([^"]+)" module')

Node = Any  # a cffi ``struct lyd_node *``


class Tree:
    """A libyang data forest owned by one request; freed when the ``with`` block exits."""

    def __init__(self, schema: SchemaContext, first: Node = ffi.NULL) -> None:
        self.schema = schema
        self.first: Node = first

    def __enter__(self) -> Tree:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.free()

    def free(self) -> None:
        if self.first != ffi.NULL:
            lib.lyd_free_all(self.first)
            self.first = ffi.NULL

    @property
    def empty(self) -> bool:
        return bool(self.first == ffi.NULL)

    def top(self) -> list[Node]:
        """The top-level nodes."""
        return siblings(self.first)

    def find(self, path: DataPath) -> Node:
        """The node at ``path`` or NULL (the datastore path finds nothing)."""
        if self.first == ffi.NULL or not path:
            return ffi.NULL
        out = ffi.new("struct lyd_node **")
        ret = lib.lyd_find_path(self.first, path.json().encode(), 0, out)
        if ret != lib.LY_SUCCESS:
            lib.ly_err_clean(self.schema.ctx.cdata, ffi.NULL)
            return ffi.NULL
        return out[0]

    def remove(self, node: Node) -> None:
        """Free one subtree; keeps :attr:`first` valid when a top-level node goes."""
        if node == self.first:
            self.first = node.next
        lib.lyd_free_tree(node)

    def merge(self, source: Tree) -> None:
        """Merge ``source`` into this tree (RFC 7950 merge: lists by key, leaves replaced); consumes it."""
        if source.empty:
            return
        target = ffi.new("struct lyd_node **")
        target[0] = self.first
        ret = lib.lyd_merge_siblings(target, source.first, lib.LYD_MERGE_DESTRUCT)
        source.first = ffi.NULL
        if ret != lib.LY_SUCCESS:
            raise _error(self.schema, "cannot merge data")
        self.first = target[0]

    def duplicate(self) -> Tree:
        if self.first == ffi.NULL:
            return Tree(self.schema)
        out = ffi.new("struct lyd_node **")
        flags = lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_FLAGS
        if lib.lyd_dup_siblings(self.first, ffi.NULL, flags, out) != lib.LY_SUCCESS:
            raise _error(self.schema, "cannot copy data")
        return Tree(self.schema, out[0])

    def print(self, fmt: Format, *, wd: WithDefaults = "explicit", keep_empty: bool = False) -> str:
        """All top-level nodes printed (``""`` when empty)."""
        if self.first == ffi.NULL:
            return ""
        return print_node(self.schema, self.first, fmt, siblings=True, wd=wd, keep_empty=keep_empty)


# ------------------------------------------------------------------------------------------------
# Nodes
# ------------------------------------------------------------------------------------------------
def siblings(first: Node) -> list[Node]:
    out: list[Node] = []
    node = first
    while node != ffi.NULL:
        out.append(node)
        node = node.next
    return out


def children(node: Node) -> list[Node]:
    return siblings(lib.lyd_child(node))


def is_key(node: Node) -> bool:
    return bool(node.schema != ffi.NULL and node.schema.flags & lib.LYS_KEY)


def is_default(node: Node) -> bool:
    """Whether libyang added the node implicitly (a default leaf, an empty non-presence container)."""
    return bool(node.flags & lib.LYD_DEFAULT)


def exists(node: Node) -> bool:
    """Whether a node is in the datastore: found, and not an implicit default."""
    return bool(node != ffi.NULL and not is_default(node))


def is_config(node: Node) -> bool:
    return bool(node.schema != ffi.NULL and not node.schema.flags & lib.LYS_CONFIG_R)


def nodetype(node: Node) -> int:
    return int(node.schema.nodetype) if node.schema != ffi.NULL else 0


def node_module(node: Node) -> str:
    return str(c2str(node.schema.module.name))


def node_name(node: Node) -> str:
    return str(c2str(node.schema.name))


def data_path(node: Node) -> DataPath:
    text = lib.lyd_path(node, lib.LYD_PATH_STD, ffi.NULL, 0)
    try:
        return DataPath.parse(str(c2str(text)))
    finally:
        lib.free(text)


def print_node(
    schema: SchemaContext,
    node: Node,
    fmt: Format,
    *,
    siblings: bool = False,
    wd: WithDefaults = "explicit",
    keep_empty: bool = False,
) -> str:
    """One subtree (or a node and its following siblings) printed by libyang."""
    flags = _WD_FLAGS[wd]
    if siblings:
        flags |= lib.LYD_PRINT_WITHSIBLINGS
    if keep_empty:
        flags |= lib.LYD_PRINT_KEEPEMPTYCONT
    buf = ffi.new("char **")
    if lib.lyd_print_mem(buf, node, _FORMATS[fmt], flags | lib.LYD_PRINT_SHRINK) != lib.LY_SUCCESS:
        raise _error(schema, "cannot print data")
    if buf[0] == ffi.NULL:
        return ""
    try:
        return str(c2str(buf[0]))
    finally:
        lib.free(buf[0])


def any_value_xml(node: Node) -> str:
    """The content of an anydata/anyxml node as XML text."""
    value = ffi.new("char **")
    if lib.lyd_any_value_str(node, value) != lib.LY_SUCCESS or value[0] == ffi.NULL:
        return ""
    try:
        return str(c2str(value[0]))
    finally:
        lib.free(value[0])


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------
def _error(schema: SchemaContext, message: str) -> ValidationError:
    return to_qsdn_error(schema.ctx.error(message))


def parse(
    schema: SchemaContext,
    text: str,
    fmt: Format,
    *,
    config_only: bool,
    validate: bool = True,
) -> Tree:
    """Parse a whole datastore (``""`` is empty). Validation covers only modules that have data (the
    controller's context implements etsi-qkd-sdn-node, whose mandatory top-level node must not make
    an empty datastore invalid); it adds the implicit defaults."""
    if not text.strip():
        return Tree(schema)
    try:
        root = schema.ctx.parse_data_mem(text, fmt, no_state=config_only, strict=True, parse_only=True)
    except libyang.LibyangError as exc:
        raise to_qsdn_error(exc) from None
    tree = Tree(schema, root.cdata if root is not None else ffi.NULL)
    if validate:
        try:
            validate_tree(tree, config_only=config_only)
        except BaseException:
            tree.free()
            raise
    return tree


def parse_datastore(schema: SchemaContext, text: str, *, config_only: bool) -> Tree:
    """Parse data the backend gave (its configuration or state). Data that does not validate is the
    server's fault, not the client's: 500 operation-failed, with libyang's findings."""
    try:
        return parse(schema, text, "xml", config_only=config_only)
    except ValidationError as exc:
        raise invalid_backend_data(exc) from None


def invalid_backend_data(exc: QsdnError) -> RestconfError:
    return RestconfError(
        f"the controller's data does not validate: {exc}",
        status=500,
        tag="operation-failed",
        type=ErrorType.APPLICATION,
    )


def validate_tree(tree: Tree, *, config_only: bool) -> None:
    """Validate a tree in place (adds implicit defaults). A missing mandatory node, which libyang 2.1
    locates by its schema path only, is located in the data: one error per parent instance."""
    if tree.empty:
        return
    first = ffi.new("struct lyd_node **")
    first[0] = tree.first
    flags = lib.LYD_VALIDATE_PRESENT | (lib.LYD_VALIDATE_NO_STATE if config_only else 0)
    ret = lib.lyd_validate_all(first, tree.schema.ctx.cdata, flags, ffi.NULL)
    tree.first = first[0]
    if ret != lib.LY_SUCCESS:
        err = _error(tree.schema, "invalid data")
        errors = _locate_missing(tree, err.errors)
        raise ValidationError(errors[0].message, errors=errors)


_MANDATORY = re.compile(r'Mandatory node "([^"]+)" instance does not exist')


def _locate_missing(tree: Tree, errors: list[ErrorInfo]) -> list[ErrorInfo]:
    out: list[ErrorInfo] = []
    for e in errors:
        found: list[Node] = []
        parent, _, leaf = (e.path or "").rpartition("/")
        if _MANDATORY.search(e.message) and parent and "[" not in (e.path or ""):
            found = _xpath(tree, f"{parent}[not({leaf})]")
        if not found:
            out.append(e)
            continue
        for node in found:
            path = data_path(node)
            module, _, name = leaf.rpartition(":")
            out.append(replace(e, path=path.child(Step(module or path.steps[-1].module, name)).json()))
    return out


def _xpath(tree: Tree, expr: str) -> list[Node]:
    found = ffi.new("struct ly_set **")
    if lib.lyd_find_xpath(tree.first, expr.encode(), found) != lib.LY_SUCCESS:
        lib.ly_err_clean(tree.schema.ctx.cdata, ffi.NULL)
        return []
    try:
        return [found[0].dnodes[i] for i in range(found[0].count)]
    finally:
        lib.ly_set_free(found[0], ffi.NULL)


def scratch(schema: SchemaContext, path: DataPath) -> tuple[Tree, Node]:
    """A new tree holding ``path`` (its ancestors and list keys) and the node at ``path``."""
    try:
        top = schema.ctx.create_data_path(path.json())
    except libyang.LibyangError as exc:
        raise to_qsdn_error(exc) from None
    if top is None:
        raise QsdnError(f"cannot create {path.json()}")
    tree = Tree(schema, top.cdata)
    node = tree.find(path)
    if node == ffi.NULL:
        tree.free()
        raise QsdnError(f"cannot create {path.json()}")
    return tree, node


def parse_into(tree: Tree, parent: Node, parent_path: DataPath, text: str, fmt: Format) -> list[Node]:
    """Parse configuration ``text`` as children of ``parent`` (no validation); return the new children."""
    before = {int(ffi.cast("uintptr_t", c)) for c in children(parent)}
    schema = tree.schema
    try:
        schema.ctx.parse_data_mem(
            text,
            fmt,
            parent=libyang.DNode.new(schema.ctx, parent),
            no_state=True,
            strict=True,
            parse_only=True,
        )
    except libyang.LibyangError as exc:
        err = to_qsdn_error(exc)
        raise ValidationError(err.first.message, errors=rebase(err.errors, parent_path)) from None
    return [c for c in children(parent) if int(ffi.cast("uintptr_t", c)) not in before]


def parse_top(schema: SchemaContext, text: str, fmt: Format) -> Tree:
    """Parse configuration ``text`` as top-level nodes (no validation)."""
    try:
        return parse(schema, text, fmt, config_only=True, validate=False)
    except ValidationError as err:
        raise ValidationError(err.first.message, errors=rebase(err.errors, DataPath())) from None


def rebase(errors: list[ErrorInfo], parent: DataPath) -> list[ErrorInfo]:
    """Point libyang's error paths from a parse below ``parent`` at the data node they concern."""
    return [replace(e, path=_rebased_path(e, parent)) for e in errors]


def _rebased_path(e: ErrorInfo, parent: DataPath) -> str | None:
    path: DataPath | None = None
    if e.path:
        try:
            path = DataPath.parse(e.path)
        except ValueError:
            return e.path
    if path is not None and parent:
        first = path.steps[0]
        if (first.module, first.name) == (parent.steps[0].module, parent.steps[0].name):
            # Absolute, but libyang may have dropped the parent's list keys: take them back.
            steps = list(path.steps)
            for i, (mine, theirs) in enumerate(zip(steps, parent.steps, strict=False)):
                if (mine.module, mine.name) != (theirs.module, theirs.name):
                    break
                if not mine.predicates:
                    steps[i] = theirs
            path = DataPath(tuple(steps))
        else:
            path = parent + path
    elif path is None and parent:
        path = parent
    child = _CHILD_NOT_FOUND.search(e.message)
    if child and path and path.steps[-1].name == child.group(2):
        path = path.child(Step(path.steps[-1].module, child.group(1)))
    top = _MODULE_NOT_FOUND.search(e.message)
    if top and e.path is None:
        path = (path or DataPath()).child(Step(top.group(2), top.group(1)))
    return path.json() if path else None


def iter_tree(node: Node) -> Iterator[Node]:
    """Depth-first pre-order walk of one subtree."""
    yield node
    for c in children(node):
        yield from iter_tree(c)
