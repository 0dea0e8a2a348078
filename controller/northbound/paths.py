"""RESTCONF resource identifiers, libyang data paths and YANG instance-identifiers.

Three spellings of one data node meet in the RESTCONF server:

* the request URI's api-path (RFC 8040 section 3.5.3): ``qsdn-orchestrator:qkd_network/qkd_node=<id>``;
  the first node is module-qualified, later nodes only where the module changes; list keys follow ``=``,
  several keys are separated by ``,`` and every reserved character in a key is percent-encoded;
* libyang's data path, which is also the JSON instance-identifier of RFC 7951 section 6.11:
  ``/qsdn-orchestrator:qkd_network/qkd_node[qkdn_id='<id>']``;
* the XML instance-identifier of RFC 7950 section 9.13, where every node name, key names included, carries
  a prefix declared on the element: ``/qsdn-orch:qkd_network/qsdn-orch:qkd_node[qsdn-orch:qkdn_id='<id>']``.

:class:`DataPath` is the neutral form (a tuple of :class:`Step`) with a parser for libyang paths and a
formatter for each spelling. :class:`SchemaIndex` resolves an api-path against the schema: it checks
every node name, the number of key values of each list and the module qualification, and answers with
plain data (:class:`SchemaNode`); libyang schema nodes never leave this module.

The parsing of a request URI works on the *raw* (still percent-encoded) path: ``%2F`` and ``%2C`` in a
key are data, ``/`` and ``,`` are syntax, so decoding before splitting would be wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote

from _libyang import ffi, lib  # type: ignore[import-not-found, unused-ignore]
from libyang.util import c2str

from qsdn.errors import QsdnError
from qsdn.yang import SchemaContext

Kind = Literal["container", "list", "leaf", "leaf-list", "anydata", "anyxml", "rpc", "action", "notification"]

_KINDS: dict[int, Kind] = {
    lib.LYS_CONTAINER: "container",
    lib.LYS_LIST: "list",
    lib.LYS_LEAF: "leaf",
    lib.LYS_LEAFLIST: "leaf-list",
    lib.LYS_ANYDATA: "anydata",
    lib.LYS_ANYXML: "anyxml",
    lib.LYS_RPC: "rpc",
    lib.LYS_ACTION: "action",
    lib.LYS_NOTIF: "notification",
}

#: Modules whose operations are NETCONF protocol operations, never RESTCONF operation resources.
PROTOCOL_MODULES = frozenset(
    {
        "ietf-netconf",
        "ietf-netconf-monitoring",
        "ietf-netconf-nmda",
        "ietf-netconf-notifications",
        "ietf-subscribed-notifications",
        "notifications",
    }
)


class PathError(QsdnError):
    """A request URI or a fields expression that does not name data of the schema (400)."""

    tag = "invalid-value"


# ------------------------------------------------------------------------------------------------
# Request URI segments (RFC 8040 section 3.5.3)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Segment:
    """One ``/``-separated part of an api-path, percent-decoded: ``[module:]name[=key,key...]``."""

    module: str | None
    name: str
    keys: tuple[str, ...] | None = None


def _decode(text: str, what: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise PathError(f"{what} {text!r} is not percent-encoded UTF-8 (RFC 8040 section 3.5.3)") from None


def _identifier(text: str) -> tuple[str | None, str]:
    module, sep, name = text.partition(":")
    if not sep:
        module, name = "", text
    if not name or (sep and not module) or ":" in name:
        raise PathError(f"{text!r} is not an api-identifier ([module-name ':'] identifier)")
    return module or None, name


def parse_api_path(raw: str) -> tuple[Segment, ...]:
    """Split a raw (percent-encoded) api-path, without the leading ``/``, into segments.

    ``""`` is the datastore itself. Key values are decoded one by one, after the split on ``,``.
    """
    if raw == "":
        return ()
    segments: list[Segment] = []
    for part in raw.split("/"):
        if part == "":
            raise PathError("empty segment in the resource path (RFC 8040 section 3.5.3)")
        ident, eq, keytext = part.partition("=")
        module, name = _identifier(_decode(ident, "node name"))
        keys = tuple(_decode(k, "key value") for k in keytext.split(",")) if eq else None
        segments.append(Segment(module, name, keys))
    return tuple(segments)


def format_api_path(segments: Sequence[Segment]) -> str:
    """The canonical api-path of segments (inverse of :func:`parse_api_path`)."""
    parts: list[str] = []
    for s in segments:
        name = f"{s.module}:{s.name}" if s.module else s.name
        if s.keys is not None:
            name += "=" + ",".join(quote(k, safe="") for k in s.keys)
        parts.append(name)
    return "/".join(parts)


# ------------------------------------------------------------------------------------------------
# Data paths (libyang, JSON and XML instance-identifiers)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Step:
    """One data node of a path. ``predicates`` are ``(key, value)``; ``"."`` names a leaf-list value and
    ``""`` a position (``[3]``, libyang's notation for keyless lists)."""

    module: str
    name: str
    predicates: tuple[tuple[str, str], ...] = ()


def _xpath_literal(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise PathError("a key value cannot contain both quote characters (an XPath 1.0 literal limit)")


@dataclass(frozen=True, slots=True)
class DataPath:
    steps: tuple[Step, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.steps)

    def child(self, step: Step) -> DataPath:
        return DataPath((*self.steps, step))

    def parent(self) -> DataPath:
        return DataPath(self.steps[:-1])

    def __add__(self, other: DataPath) -> DataPath:
        return DataPath(self.steps + other.steps)

    # --- formatting ---------------------------------------------------------------------------
    def _format(self, name_of: Any) -> str:
        out: list[str] = []
        previous: str | None = None
        for step in self.steps:
            out.append("/" + name_of(step.module, step.name, step.module != previous))
            for key, value in step.predicates:
                if key == "":
                    out.append(f"[{value}]")
                elif key == ".":
                    out.append(f"[.={_xpath_literal(value)}]")
                else:
                    out.append(f"[{name_of(step.module, key, False)}={_xpath_literal(value)}]")
            previous = step.module
        return "".join(out)

    def json(self) -> str:
        """libyang's data path, which is the RFC 7951 (JSON) instance-identifier."""
        return self._format(lambda m, n, qualify: f"{m}:{n}" if qualify else n)

    def xml(self, prefixes: dict[str, str]) -> str:
        """The RFC 7950 (XML) instance-identifier; ``prefixes`` maps module name to its XML prefix."""
        return self._format(lambda m, n, _qualify: f"{prefixes[m]}:{n}")

    def modules(self) -> list[str]:
        return list(dict.fromkeys(s.module for s in self.steps))

    def uri(self) -> str:
        """The RESTCONF api-path (no leading ``/``) of a data node."""
        segments: list[Segment] = []
        previous: str | None = None
        for step in self.steps:
            keys: tuple[str, ...] | None = None
            if step.predicates:
                if any(k == "" for k, _ in step.predicates):
                    raise PathError("a keyless list entry has no RESTCONF resource identifier")
                keys = tuple(v for _, v in step.predicates)
            segments.append(Segment(step.module if step.module != previous else None, step.name, keys))
            previous = step.module
        return format_api_path(segments)

    # --- parsing --------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> DataPath:
        """Parse a libyang data path (or JSON instance-identifier)."""
        steps: list[Step] = []
        module: str | None = None
        i, n = 0, len(text)
        while i < n:
            if text[i] != "/":
                raise ValueError(f"expected '/' at {i} in {text!r}")
            j = i + 1
            while j < n and text[j] not in "/[":
                j += 1
            mod, _, name = text[i + 1 : j].rpartition(":")
            module = mod or module
            if module is None or not name:
                raise ValueError(f"unqualified first node in {text!r}")
            preds: list[tuple[str, str]] = []
            i = j
            while i < n and text[i] == "[":
                j = i + 1
                while j < n and text[j] not in "=]":
                    j += 1
                if j >= n:
                    raise ValueError(f"unterminated predicate in {text!r}")
                key = text[i + 1 : j].strip()
                if text[j] == "]":
                    preds.append(("", key))
                    i = j + 1
                    continue
                j += 1
                while j < n and text[j] == " ":
                    j += 1
                if j >= n or text[j] not in "'\"":
                    raise ValueError(f"unquoted predicate value in {text!r}")
                end = text.find(text[j], j + 1)
                if end < 0:
                    raise ValueError(f"unterminated literal in {text!r}")
                value = text[j + 1 : end]
                i = end + 1
                while i < n and text[i] == " ":
                    i += 1
                if i >= n or text[i] != "]":
                    raise ValueError(f"unterminated predicate in {text!r}")
                i += 1
                preds.append((key.rpartition(":")[2], value))
            steps.append(Step(module, name, tuple(preds)))
        return cls(tuple(steps))


# ------------------------------------------------------------------------------------------------
# Schema resolution
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SchemaNode:
    """A schema node as plain data. ``json_path`` is libyang's JSON schema path (no choice/case)."""

    module: str
    name: str
    kind: Kind
    config: bool
    keys: tuple[str, ...]
    json_path: str
    presence: bool = False

    @property
    def inner(self) -> bool:
        return self.kind in ("container", "list")


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved data resource: its data path and the schema node of every step."""

    path: DataPath
    nodes: tuple[SchemaNode, ...]

    @property
    def node(self) -> SchemaNode | None:
        """The target's schema node; ``None`` for the datastore."""
        return self.nodes[-1] if self.nodes else None

    @property
    def is_datastore(self) -> bool:
        return not self.nodes


class SchemaIndex:
    """Schema lookups for the RESTCONF server, cached as :class:`SchemaNode` values."""

    def __init__(self, schema: SchemaContext) -> None:
        self.schema = schema
        self._nodes: dict[str, SchemaNode | None] = {}
        self._prefixes: dict[str, str] | None = None

    # --- nodes ----------------------------------------------------------------------------------
    def node(self, json_path: str) -> SchemaNode | None:
        """The schema node at a JSON schema path (``/mod:a/b``), or ``None``."""
        if json_path in self._nodes:
            return self._nodes[json_path]
        ctx = self.schema.ctx
        found = lib.lys_find_path(ctx.cdata, ffi.NULL, json_path.encode(), 0)
        info: SchemaNode | None = None
        if found == ffi.NULL:
            lib.ly_err_clean(ctx.cdata, ffi.NULL)
        elif found.nodetype in _KINDS:
            keys: list[str] = []
            if found.nodetype == lib.LYS_LIST:
                child = lib.lysc_node_child(found)
                while child != ffi.NULL and child.flags & lib.LYS_KEY:
                    keys.append(c2str(child.name))
                    child = child.next
            info = SchemaNode(
                module=c2str(found.module.name),
                name=c2str(found.name),
                kind=_KINDS[found.nodetype],
                config=not (found.flags & lib.LYS_CONFIG_R),
                keys=tuple(keys),
                json_path=json_path,
                presence=bool(found.nodetype == lib.LYS_CONTAINER and found.flags & lib.LYS_PRESENCE),
            )
        self._nodes[json_path] = info
        return info

    def child(self, parent: SchemaNode | None, module: str | None, name: str) -> SchemaNode | None:
        """A data child of ``parent`` (``None``: top level); ``module`` defaults to the parent's."""
        module = module or (parent.module if parent else None)
        if module is None:
            return None
        if parent is None:
            return self.node(f"/{module}:{name}")
        qualified = name if module == parent.module else f"{module}:{name}"
        return self.node(f"{parent.json_path}/{qualified}")

    def resolve(self, segments: Sequence[Segment]) -> Target:
        """Check an api-path against the schema (RFC 8040 section 3.5.3) and give its data path."""
        steps: list[Step] = []
        nodes: list[SchemaNode] = []
        parent: SchemaNode | None = None
        for i, seg in enumerate(segments):
            where = format_api_path(segments[: i + 1])
            if parent is None and seg.module is None:
                raise PathError(f"the first node of the resource path must be module-qualified: {where}")
            if seg.module is not None and self.schema.module_namespace(seg.module) is None:
                raise PathError(f"unknown YANG module {seg.module!r} in {where}", tag="unknown-namespace")
            if parent is not None and not parent.inner:
                raise PathError(f"{parent.kind} {parent.name!r} has no child nodes: {where}")
            node = self.child(parent, seg.module, seg.name)
            if node is None:
                raise PathError(f"no data node {seg.name!r} in the schema at {where}", tag="unknown-element")
            if node.kind in ("rpc", "action", "notification"):
                raise PathError(f"{node.kind} {node.name!r} is not a data resource: {where}")
            preds: tuple[tuple[str, str], ...] = ()
            if node.kind == "list":
                if seg.keys is None or len(seg.keys) != len(node.keys):
                    raise PathError(
                        f"list {node.name!r} needs {len(node.keys)} key value(s) "
                        f"({', '.join(node.keys)}) in the resource path: {where}"
                    )
                preds = tuple(zip(node.keys, seg.keys, strict=True))
            elif node.kind == "leaf-list":
                if seg.keys is None or len(seg.keys) != 1:
                    raise PathError(f"leaf-list {node.name!r} needs one value in the resource path: {where}")
                preds = ((".", seg.keys[0]),)
            elif seg.keys is not None:
                raise PathError(f"{node.kind} {node.name!r} takes no key value: {where}")
            for _, value in preds:
                _xpath_literal(value)
            steps.append(Step(node.module, node.name, preds))
            nodes.append(node)
            parent = node
        return Target(DataPath(tuple(steps)), tuple(nodes))

    def target_of(self, path: DataPath) -> Target:
        """The :class:`Target` of a data path produced by libyang (for Location headers)."""
        nodes: list[SchemaNode] = []
        parent: SchemaNode | None = None
        for step in path.steps:
            node = self.child(parent, step.module, step.name)
            if node is None:
                raise PathError(f"no data node {step.name!r} in the schema")
            nodes.append(node)
            parent = node
        return Target(path, tuple(nodes))

    # --- operations -----------------------------------------------------------------------------
    def operations(self) -> list[tuple[str, str]]:
        """``(module, rpc)`` of every RPC of the implemented, non-protocol modules, in context order."""
        out: list[tuple[str, str]] = []
        for module in self.schema.ctx:
            if not module.implemented() or module.name() in PROTOCOL_MODULES:
                continue
            out.extend((module.name(), rpc.name()) for rpc in module.children(types=(lib.LYS_RPC,)))
        return out

    def operation(self, module: str, name: str) -> SchemaNode | None:
        if module in PROTOCOL_MODULES:
            return None
        node = self.node(f"/{module}:{name}")
        return node if node is not None and node.kind == "rpc" else None

    # --- XML prefixes ---------------------------------------------------------------------------
    def prefixes(self) -> dict[str, str]:
        """Module name -> an XML prefix unique in the context (the module's YANG prefix if it is)."""
        if self._prefixes is None:
            taken: dict[str, str] = {}
            out: dict[str, str] = {}
            for info in self.schema.modules():
                prefix = info.prefix if info.prefix not in taken else info.name
                taken[prefix] = info.name
                out[info.name] = prefix
            self._prefixes = out
        return self._prefixes
