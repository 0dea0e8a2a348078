"""RESTCONF query parameters and the shaping of GET responses (RFC 8040 section 4.8).

* ``content`` (4.8.1): ``config`` reads the configuration datastore, ``nonconfig`` and ``all`` the
  data with state. ``nonconfig`` keeps the state nodes, their ancestors and the keys of the list
  entries on the way; everything else of configuration is removed.
* ``depth`` (4.8.2): the target resource has depth 1; for the datastore resource the top-level nodes
  have depth 1. Nodes selected by ``fields``, and their ancestors, have depth 1. The keys of a list
  entry that is returned are always returned (as in the RFC's jukebox examples).
* ``fields`` (4.8.3): ``path "(" fields-expr ")" / path ";" fields-expr / path``, each path a
  ``/``-separated list of api-identifiers relative to the target, module-qualified where the module
  changes. Unknown nodes are a 400 error.
* ``with-defaults`` (4.8.9, RFC 6243): ``explicit`` (also the basic mode when absent), ``trim``,
  ``report-all``, ``report-all-tagged`` (needs ietf-netconf-with-defaults in the schema for the
  ``default`` annotation).

Unknown and repeated parameters, and parameters used with a method that does not take them, are
errors (400, invalid-value), as section 4.8 requires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

from _libyang import lib  # type: ignore[import-not-found, unused-ignore]

from controller.northbound import datatree
from controller.northbound.datatree import Node, Tree, WithDefaults
from controller.northbound.paths import PathError, SchemaIndex, SchemaNode, Target

Content = Literal["config", "nonconfig", "all"]

#: Query parameters each method accepts (RFC 8040 section 4.8). insert/point are not supported.
GET_PARAMS = frozenset({"content", "depth", "fields", "with-defaults"})
_WD_VALUES = ("report-all", "trim", "explicit", "report-all-tagged")


class QueryError(PathError):
    """A query parameter that is unknown, repeated, misplaced or has a bad value (400)."""


@dataclass
class Fields:
    """A parsed ``fields`` expression: children by ``(module or None, name)``; ``None`` = whole subtree."""

    children: dict[tuple[str | None, str], Fields | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """``fields`` resolved against the schema: children by ``(module, name)``; ``None`` = all below."""

    children: Mapping[tuple[str, str], Selection | None]


@dataclass(frozen=True)
class ReadParams:
    content: Content = "all"
    depth: int | None = None
    fields: Fields | None = None
    with_defaults: WithDefaults = "explicit"


# ------------------------------------------------------------------------------------------------
# Parsing the query string
# ------------------------------------------------------------------------------------------------
def split_query(pairs: Sequence[tuple[str, str]], allowed: frozenset[str], method: str) -> dict[str, str]:
    """Check query parameters: each known, allowed for ``method`` and present at most once."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise QueryError(f"query parameter {name!r} appears more than once (RFC 8040 section 4.8)")
        if name not in allowed:
            known = name in GET_PARAMS or name in ("insert", "point", "filter", "start-time", "stop-time")
            why = f"not allowed with {method} here" if known else "unknown"
            raise QueryError(f"query parameter {name!r} is {why} (RFC 8040 section 4.8)")
        out[name] = value
    return out


def read_params(params: Mapping[str, str], *, wd_tagging: bool) -> ReadParams:
    content = params.get("content", "all")
    if content not in ("config", "nonconfig", "all"):
        raise QueryError(f"content must be config, nonconfig or all, not {content!r}")
    depth: int | None = None
    if "depth" in params and params["depth"] != "unbounded":
        text = params["depth"]
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise QueryError(f"depth must be 1..65535 or unbounded, not {text!r}")
        depth = int(text)
    wd = params.get("with-defaults", "explicit")
    if wd not in _WD_VALUES:
        raise QueryError(f"with-defaults must be one of {', '.join(_WD_VALUES)}, not {wd!r}")
    if wd == "report-all-tagged" and not wd_tagging:
        raise QueryError("with-defaults=report-all-tagged needs ietf-netconf-with-defaults in the schema")
    fields = parse_fields(params["fields"]) if "fields" in params else None
    return ReadParams(
        content=cast(Content, content),
        depth=depth,
        fields=fields,
        with_defaults=cast(WithDefaults, wd),
    )


def parse_fields(text: str) -> Fields:
    """Parse a ``fields`` expression (RFC 8040 section 4.8.3): ``fields-expr = path "(" fields-expr
    ")" / path ";" fields-expr / path`` with ``path = api-identifier [ "/" path ]``."""
    pos = 0

    def fail(why: str) -> QueryError:
        return QueryError(f"bad fields expression {text!r} at offset {pos}: {why}")

    def peek() -> str:
        return text[pos] if pos < len(text) else ""

    def identifier() -> tuple[str | None, str]:
        nonlocal pos
        start = pos
        while pos < len(text) and text[pos] not in "/;()":
            pos += 1
        module, sep, name = text[start:pos].partition(":")
        if not sep:
            module, name = "", module
        if not _is_identifier(name) or (sep and not _is_identifier(module)):
            raise fail("expected an api-identifier")
        return module or None, name

    def expr(into: Fields) -> None:
        nonlocal pos
        while True:
            path = [identifier()]
            while peek() == "/":
                pos += 1
                path.append(identifier())
            sub: Fields | None = None
            if peek() == "(":
                pos += 1
                sub = Fields()
                expr(sub)
                if peek() != ")":
                    raise fail("expected ')'")
                pos += 1
            _add_field(into, path, sub)
            if peek() != ";":
                return
            pos += 1

    root = Fields()
    expr(root)
    if pos != len(text):
        raise fail("unexpected character")
    return root


def _is_identifier(name: str) -> bool:
    # RFC 7950 section 6.2: identifier = (ALPHA / "_") *(ALPHA / DIGIT / "_" / "-" / ".")
    return (
        bool(name) and (name[0].isalpha() or name[0] == "_") and all(c.isalnum() or c in "_-." for c in name)
    )


def _add_field(node: Fields, path: list[tuple[str | None, str]], sub: Fields | None) -> None:
    """Add ``path`` (selecting ``sub`` below it, or everything when ``None``) to a fields tree."""
    for key in path[:-1]:
        if key not in node.children:
            node.children[key] = Fields()
        child = node.children[key]
        if child is None:  # already selected whole
            return
        node = child
    last = path[-1]
    if last in node.children and node.children[last] is None:
        return
    if sub is None:
        node.children[last] = None
        return
    existing = node.children.get(last)
    if existing is None:
        node.children[last] = sub
        return
    for key, below in sub.children.items():
        _add_field(existing, [key], below)


def resolve_fields(index: SchemaIndex, target: Target, fields: Fields) -> Selection:
    """Check every field against the schema below the target."""

    def walk(parent: SchemaNode | None, f: Fields) -> Selection:
        out: dict[tuple[str, str], Selection | None] = {}
        for (module, name), sub in f.children.items():
            if parent is None and module is None:
                raise QueryError(f"fields: top-level node {name!r} must be module-qualified")
            node = index.child(parent, module, name)
            if node is None or node.kind in ("rpc", "action", "notification"):
                where = parent.name if parent else "the datastore"
                raise QueryError(f"fields: no data node {name!r} below {where}")
            if sub is not None and sub.children and not node.inner:
                raise QueryError(f"fields: {node.kind} {name!r} has no child nodes")
            out[(node.module, node.name)] = walk(node, sub) if sub is not None and sub.children else None
        return Selection(out)

    return walk(target.node, fields)


# ------------------------------------------------------------------------------------------------
# Shaping trees
# ------------------------------------------------------------------------------------------------
def strip_config(tree: Tree) -> None:
    """Keep only state data, with the ancestors and list keys that locate it (content=nonconfig)."""

    def keep(node: Node) -> bool:
        if not datatree.is_config(node):
            return True
        if not datatree.nodetype(node) & (lib.LYS_CONTAINER | lib.LYS_LIST):
            return False
        kept = False
        for c in datatree.children(node):
            if datatree.is_key(c):
                continue
            if keep(c):
                kept = True
            else:
                lib.lyd_free_tree(c)
        return kept

    for top in tree.top():
        if not keep(top):
            tree.remove(top)


def _select(node: Node, level: int, depth: int | None, sel: Selection | None) -> None:
    """Remove the children of ``node`` (at ``level``) that depth and fields leave out."""
    is_list = datatree.nodetype(node) == lib.LYS_LIST
    for c in datatree.children(node):
        if is_list and datatree.is_key(c):
            continue
        if sel is not None:
            key = (datatree.node_module(c), datatree.node_name(c))
            if key not in sel.children:
                lib.lyd_free_tree(c)
                continue
            _select(c, 1, depth, sel.children[key])
        elif depth is not None and level + 1 > depth:
            lib.lyd_free_tree(c)
        else:
            _select(c, level + 1, depth, None)


def select_datastore(tree: Tree, depth: int | None, sel: Selection | None) -> None:
    """Apply depth and fields to the datastore: its top-level nodes have depth 1."""
    for top in tree.top():
        if sel is None:
            _select(top, 1, depth, None)
            continue
        key = (datatree.node_module(top), datatree.node_name(top))
        if key not in sel.children:
            tree.remove(top)
        else:
            _select(top, 1, depth, sel.children[key])


def select_node(node: Node, depth: int | None, sel: Selection | None) -> None:
    """Apply depth and fields to a target data node (depth 1)."""
    _select(node, 1, depth, sel)
