"""Fast lookups over the libyang schema, as plain data.

The NETCONF edit engine (``agent/edit.py``) walks XML trees and needs, for every element, the schema
node it stands for: its kind, keys, ordering, whether it is configuration, which choice/case it sits
in, and how its value compares. Asking libyang for each of these on every request would cross the
cffi boundary dozens of times per element, so :class:`SchemaIndex` walks the compiled schema once,
at construction, and keeps only frozen dataclasses in dictionaries keyed by ``(namespace, name)``.
No libyang object outlives the constructor (STYLE.md, habit 6).

Choices and cases have no data node (RFC 7950 section 7.9): the data nodes inside them are indexed
as direct children of the nearest data ancestor, and :attr:`SchemaNodeInfo.cases` records the
``(choice, case)`` ancestry between that ancestor and the node, so that creating a node of one case
can remove the nodes of the other cases (RFC 7950 section 7.9.2). Nodes added by ``augment`` are
indexed under their target with the augmenting module's namespace, as they appear in XML.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from _libyang import ffi, lib  # type: ignore[import-not-found, unused-ignore]
from libyang.schema import SNode, Type
from libyang.util import c2str

from qsdn.errors import QsdnError
from qsdn.yang import SchemaContext

NodeKind = Literal["container", "list", "leaf", "leaf-list", "anydata", "anyxml"]

_KINDS: dict[int, NodeKind] = {
    lib.LYS_CONTAINER: "container",
    lib.LYS_LIST: "list",
    lib.LYS_LEAF: "leaf",
    lib.LYS_LEAFLIST: "leaf-list",
    lib.LYS_ANYDATA: "anydata",
    lib.LYS_ANYXML: "anyxml",
}

_NO_TAGS: frozenset[str] = frozenset()
_NO_CHILDREN: Mapping[str, SchemaNodeInfo] = MappingProxyType({})
_IDENTITY_BASES = frozenset({Type.IDENT, Type.INST})


@dataclass(frozen=True, slots=True)
class SchemaNodeInfo:
    """One data node of the schema, as plain data.

    ``schema_path`` is libyang's schema node identifier (choices and cases included, module prefix
    on the first node and wherever the module changes), unique per node; ``cases`` holds the
    ``schema_path`` of each choice and case between the parent data node and this node, outermost
    first. ``base_type`` is the built-in type of a leaf or leaf-list after following leafrefs
    (``"union"`` for unions), ``None`` for other kinds. ``default`` is libyang's canonical default
    of a leaf (identities as ``module:name``), ``None`` when there is none or for other kinds.
    """

    kind: NodeKind
    name: str
    namespace: str
    module: str
    config: bool
    keys: tuple[str, ...]
    ordered_by_user: bool
    presence: bool
    empty_type: bool
    identity_like: bool
    cases: tuple[tuple[str, str], ...]
    default: str | None
    schema_path: str
    base_type: str | None = None
    #: The element name in Clark notation, ``{namespace}name`` (as lxml spells tags).
    clark: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clark", f"{{{self.namespace}}}{self.name}")


def _path(cnode: Any, fmt: int) -> str:
    s = lib.lysc_path(cnode, fmt, ffi.NULL, 0)
    try:
        return str(c2str(s))
    finally:
        lib.free(s)


def _data_children(ctx: Any, parent: Any, compiled_module: Any) -> Iterator[Any]:
    """Data node children of a compiled node (or top-level nodes of a module), through choices and cases."""
    child = lib.lys_getnext(ffi.NULL, parent, compiled_module, 0)
    while child:
        if child.nodetype in _KINDS:
            yield child
        child = lib.lys_getnext(child, parent, compiled_module, 0)


def _type_facts(ctx: Any, cnode: Any) -> tuple[str, bool, bool]:
    """(base type after leafrefs, empty type, identity-like) of a leaf or leaf-list."""
    node: Any = SNode.new(ctx, cnode)
    t: Any = node.type()
    while t.base() == Type.LEAFREF:
        t = t.leafref_type()
    bases = set(t.bases())
    return t.basename(), t.base() == Type.EMPTY, bool(bases & _IDENTITY_BASES)


def _leaf_default(ctx: Any, cnode: Any) -> str | None:
    leaf = ffi.cast("struct lysc_node_leaf *", cnode)
    if not leaf.dflt:
        return None
    val = lib.lyd_value_get_canonical(ctx.cdata, leaf.dflt)
    return str(c2str(val)) if val else None


class SchemaIndex:
    """Cached schema lookups for XML data in NETCONF encoding, built once from a :class:`SchemaContext`."""

    def __init__(self, sc: SchemaContext) -> None:
        self._top: dict[tuple[str, str], SchemaNodeInfo] = {}
        self._children: dict[str, dict[tuple[str, str], SchemaNodeInfo]] = {}
        self._by_tag: dict[str, dict[str, SchemaNodeInfo]] = {"": {}}
        self._keys: dict[str, tuple[SchemaNodeInfo, ...]] = {}
        self._key_tags: dict[str, frozenset[str]] = {}
        self._data_path: dict[str, str] = {}
        # every loaded module, implemented or only imported: namespace -> module name
        self._modules: dict[str, str] = {m.namespace: m.name for m in sc.modules()}
        ctx = sc.ctx
        for module in ctx:
            if not module.implemented():
                continue
            for cnode in _data_children(ctx, ffi.NULL, module.cdata.compiled):
                info = self._build(ctx, cnode, ffi.NULL)
                self._top[(info.namespace, info.name)] = info
                self._by_tag[""][info.clark] = info

    # --- construction ----------------------------------------------------------------------
    def _build(self, ctx: Any, cnode: Any, parent: Any) -> SchemaNodeInfo:
        kind = _KINDS[cnode.nodetype]
        cases: list[tuple[str, str]] = []
        p = cnode.parent
        while p and p != parent:
            if p.nodetype == lib.LYS_CASE:
                cases.append((_path(p.parent, lib.LYSC_PATH_LOG), _path(p, lib.LYSC_PATH_LOG)))
            p = p.parent
        cases.reverse()
        keys: tuple[str, ...] = ()
        base_type: str | None = None
        empty_type = identity_like = False
        default: str | None = None
        if kind == "list":
            keys = tuple(
                str(c2str(c.name))
                for c in _data_children(ctx, cnode, ffi.NULL)
                if c.nodetype == lib.LYS_LEAF and c.flags & lib.LYS_KEY
            )
        if kind in ("leaf", "leaf-list"):
            base_type, empty_type, identity_like = _type_facts(ctx, cnode)
        if kind == "leaf":
            default = _leaf_default(ctx, cnode)
        schema_path = _path(cnode, lib.LYSC_PATH_LOG)
        info = SchemaNodeInfo(
            kind=kind,
            name=str(c2str(cnode.name)),
            namespace=str(c2str(cnode.module.ns)),
            module=str(c2str(cnode.module.name)),
            config=not bool(cnode.flags & lib.LYS_CONFIG_R),
            keys=keys,
            ordered_by_user=bool(cnode.flags & lib.LYS_ORDBY_USER) and kind in ("list", "leaf-list"),
            presence=kind == "container" and bool(cnode.flags & lib.LYS_PRESENCE),
            empty_type=empty_type,
            identity_like=identity_like,
            cases=tuple(cases),
            default=default,
            schema_path=schema_path,
            base_type=base_type,
        )
        self._data_path[schema_path] = _path(cnode, lib.LYSC_PATH_DATA)
        if kind in ("container", "list"):
            children: dict[tuple[str, str], SchemaNodeInfo] = {}
            for c in _data_children(ctx, cnode, ffi.NULL):
                ci = self._build(ctx, c, cnode)
                children[(ci.namespace, ci.name)] = ci
            self._children[schema_path] = children
            self._by_tag[schema_path] = {c.clark: c for c in children.values()}
            if keys:
                self._keys[schema_path] = tuple(children[(info.namespace, k)] for k in keys)
                self._key_tags[schema_path] = frozenset(k.clark for k in self._keys[schema_path])
        return info

    # --- lookups -----------------------------------------------------------------------------
    def top(self, namespace: str, name: str) -> SchemaNodeInfo:
        """The top-level data node ``{namespace}name``; QsdnError unknown-namespace / unknown-element."""
        info = self._top.get((namespace, name))
        if info is None:
            module = self._modules.get(namespace)
            where = f"/{module}:{name}" if module else "/"
            raise self._unknown(namespace, name, where, "top level")
        return info

    def child(
        self, parent: SchemaNodeInfo, namespace: str, name: str, *, parent_path: str | None = None
    ) -> SchemaNodeInfo:
        """The data child ``{namespace}name`` of ``parent`` (through choices and cases, augments included).

        Raises QsdnError ``unknown-namespace`` or ``unknown-element`` whose path is ``parent_path``
        (default: the parent's data path without predicates) followed by the unknown element.
        """
        info = self._children.get(parent.schema_path, {}).get((namespace, name))
        if info is None:
            base = parent_path if parent_path is not None else self.data_path(parent)
            module = self._modules.get(namespace)
            if module is None:
                where = base
            elif module == parent.module:
                where = f"{base}/{name}"
            else:
                where = f"{base}/{module}:{name}"
            raise self._unknown(namespace, name, where, f"{parent.kind} {parent.name!r}")
        return info

    def by_tag(self, parent: SchemaNodeInfo | None, tag: str) -> SchemaNodeInfo | None:
        """The child of ``parent`` (top level for None) named by an lxml tag ``{ns}name``; None if unknown.

        The fast path of the edit engine; use :meth:`top` / :meth:`child` for the error.
        """
        return self._by_tag.get("" if parent is None else parent.schema_path, {}).get(tag)

    def tag_map(self, parent: SchemaNodeInfo | None) -> Mapping[str, SchemaNodeInfo]:
        """The children of ``parent`` (top level for None) by lxml tag ``{ns}name``; do not modify."""
        return self._by_tag.get("" if parent is None else parent.schema_path, _NO_CHILDREN)

    def children(self, parent: SchemaNodeInfo | None) -> tuple[SchemaNodeInfo, ...]:
        """All data children of ``parent`` (all top-level data nodes for None), in schema order."""
        if parent is None:
            return tuple(self._top.values())
        return tuple(self._children.get(parent.schema_path, {}).values())

    def keys(self, list_info: SchemaNodeInfo) -> tuple[SchemaNodeInfo, ...]:
        """The key leaves of a list, in key order."""
        return self._keys.get(list_info.schema_path, ())

    def key_tags(self, info: SchemaNodeInfo) -> frozenset[str]:
        """The lxml tags of the key leaves of a list (empty for anything else)."""
        return self._key_tags.get(info.schema_path, _NO_TAGS)

    def data_path(self, info: SchemaNodeInfo) -> str:
        """libyang's data path of a schema node, without predicates (``/mod:a/b/other:c``)."""
        return self._data_path[info.schema_path]

    def module_of(self, namespace: str) -> str | None:
        """The name of the loaded module with this namespace."""
        return self._modules.get(namespace)

    def _unknown(self, namespace: str, name: str, where: str, parent: str) -> QsdnError:
        if namespace not in self._modules:
            return QsdnError(
                f"unknown namespace {namespace!r} of element {name!r} under {parent}",
                tag="unknown-namespace",
                path=where,
                info={"bad-element": name, "bad-namespace": namespace},
            )
        return QsdnError(
            f"unknown element {name!r} in namespace {namespace!r} under {parent}",
            tag="unknown-element",
            path=where,
            info={"bad-element": name},
        )
