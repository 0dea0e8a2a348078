"""The NETCONF edit engine: ``<edit-config>`` semantics over lxml trees, guided by the YANG schema.

libyang validates data but has no NETCONF edit engine, so the structural part of ``<edit-config>``
(RFC 6241 section 7.2; RFC 7950 sections 7.5.9, 7.6.8, 7.7.9, 7.8.6, 7.9.2 and 8.3.1) is done
here, on a copy of the datastore as XML in NETCONF encoding. The datastore then validates the whole
result with libyang (:meth:`qsdn.yang.SchemaContext.canonical_config`); this module reports only the
errors that the edit itself causes, each with a libyang-style data path.

Semantics, and the choices made where the RFCs leave room:

* **Operations** ``merge``, ``replace``, ``create``, ``delete`` and ``remove`` may appear on any
  element (attribute ``operation`` in the NETCONF base namespace) and are inherited by descendants.
  ``create`` on an existing node fails with ``data-exists``; ``delete`` on a missing node with
  ``data-missing``; ``remove`` on a missing node does nothing. ``replace`` on an existing container
  or list entry makes its content exactly the content of the edit (explicit operations below it
  still apply to the old content, RFC 7950 section 7.8.6), and creates it when missing.
* Inside a ``delete``/``remove`` subtree the edit content is only checked against the schema; an
  explicit ``merge``, ``replace`` or ``create`` there contradicts the enclosing operation and is a
  ``bad-attribute`` error. The content below a deleted node (other than list keys and leaf-list
  values, which identify the node) does not have to match the datastore; the value of a deleted
  leaf is ignored.
* **default-operation** ``merge`` merges; ``replace`` makes the whole datastore equal to the
  ``<config>`` content (RFC 6241: "completely replaces the configuration in the target datastore"),
  so top-level nodes absent from it are deleted; ``none`` only navigates: a node without an
  explicit operation that does not exist is ``data-missing`` (RFC 6241 section 7.2), except a
  non-presence container, which has no existence of its own (RFC 7950 section 7.5.1) and is
  created on the way when an operation below it needs it.
* **Non-presence containers** exist when they hold data: ``create`` on one that already holds data
  is ``data-exists``, ``delete`` on an empty one is ``data-missing``; creating one is reported as
  the creation of what it holds (nothing, if it ends up empty).
* **Lists** are matched on all their keys, compared by value (``01`` and ``1`` are the same
  ``uint8``; identities are compared as namespace and name, whatever their prefix). A list entry
  without all its keys is ``missing-element`` (RFC 7950 section 8.3.1) with ``bad-element`` set to
  the key. Keys may come in any order; a new entry gets its keys first, in key order. An operation
  attribute on a key leaf must agree with its entry: ``merge`` or ``replace`` (which cannot change
  the key) or the entry's own operation, and only ``delete``/``remove`` inside a deleted entry;
  anything else is ``bad-attribute``. **Leaf-lists** are matched by value.
* **Ordered-by user** lists and leaf-lists take ``yang:insert`` (``first``, ``last``, ``before``,
  ``after``) with ``yang:key`` (lists, e.g. ``[name='x']``) or ``yang:value`` (leaf-lists),
  RFC 7950 sections 7.7.9 and 7.8.6. A new entry goes last by default; an existing entry keeps its
  place unless it carries ``insert`` or its parent is being replaced (then the edit order wins). A
  reference to an entry that does not exist is ``bad-attribute`` with app-tag ``missing-instance``
  (section 15.7); ``before``/``after`` without the reference is ``missing-attribute``; an invalid
  ``insert`` value or malformed ``key`` is ``bad-attribute``; these attributes on anything but an
  ordered-by user node are ``unknown-attribute`` (section 8.3.1). Ordered-by system nodes keep
  insertion order (libyang sorts them when it prints).
* **Choices**: data for two cases of one choice in the same edit is ``bad-element`` (section
  8.3.1; nodes being deleted or removed do not count); creating a node of one case deletes the
  nodes of the other cases (section 7.9.2), reported as ``delete`` changes.
* **State data** (``config false``) in an edit is ``invalid-value`` with ``bad-element``: the same
  tag libyang gives for state data in configuration, so the error does not depend on which layer
  sees it first.
* **Unknown elements and namespaces** are ``unknown-element``/``unknown-namespace``
  (:class:`qsdn.schema.SchemaIndex`). A leaf or container given twice under one parent, text in a
  container, or elements in a leaf is ``bad-element``. Attributes without a namespace, or in the
  NETCONF or YANG namespaces but not defined there for this node, are ``unknown-attribute``;
  attributes of other namespaces (module metadata) are ignored.
* **Values** are written as given (no trimming). Leaves of type ``empty`` are written as
  ``<leaf/>``; their text is ignored. A leaf whose value may hold a prefix (identityref,
  instance-identifier, or a union with one of them) is written as a new element carrying the
  namespace declarations in scope on the edit element, so that the prefix keeps its meaning
  wherever it was declared in the request; when an ordered-by user leaf-list entry of that kind is
  moved, its prefixes are rewritten to declarations in scope at its new place (lxml drops the
  element's own ones on a move). Inside anydata/anyxml, only prefixes the copied content uses in
  element or attribute names are kept.
* **error-option**: ``stop-on-error`` and ``rollback-on-error`` stop at the first error;
  ``continue-on-error`` skips the subtree that failed, records the error and goes on. The caller
  owns atomicity: it passes a copy of the datastore and throws it away when it must.
* **Changes** (for RFC 6470 ``netconf-config-change``): one :class:`Change` per subtree that was
  created, deleted or replaced, and per leaf or entry that a merge changed or moved, with the
  operation that actually happened (a merge or replace that creates a node is a ``create``); the
  path is libyang's data path (module prefix on the top node and wherever the module changes).
  Nothing is reported for a merge that changed nothing or a remove of a missing node.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from contextlib import suppress
from copy import deepcopy
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal, cast

from lxml import etree

from qsdn.errors import ErrorInfo, ErrorType, QsdnError
from qsdn.schema import SchemaIndex, SchemaNodeInfo

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
YANG_NS = "urn:ietf:params:xml:ns:yang:1"

_OPERATION = f"{{{NC_NS}}}operation"
_INSERT = f"{{{YANG_NS}}}insert"
_KEY = f"{{{YANG_NS}}}key"
_VALUE = f"{{{YANG_NS}}}value"
_NC_PREFIX = f"{{{NC_NS}}}"
_YANG_PREFIX = f"{{{YANG_NS}}}"

_OPERATIONS = frozenset({"merge", "replace", "create", "delete", "remove"})
_REMOVING = frozenset({"delete", "remove"})
_INSERTS = frozenset({"first", "last", "before", "after"})
_DEFAULT_OPERATIONS = frozenset({"merge", "replace", "none"})
_ERROR_OPTIONS = frozenset({"stop-on-error", "continue-on-error", "rollback-on-error"})
_INTEGERS = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
_RAW_TYPES = frozenset({"string", "binary", "union"})
_NO_KEYS: frozenset[str] = frozenset()

_PREFIX = re.compile(r"(?<![\w.:-])([A-Za-z_][\w.-]*):")
_QNAME = re.compile(r"\s*([A-Za-z_][\w.-]*):([A-Za-z_][\w.-]*)\s*")
_PREDICATE = re.compile(
    r"""\s*\[\s*(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)\s*=\s*(?:'([^']*)'|"([^"]*)")\s*\]"""
)

Operation = Literal["create", "delete", "merge", "replace"]


@dataclass(frozen=True)
class Change:
    """One RFC 6470 ``edit`` entry: what happened (``operation``) to which subtree (``path``)."""

    operation: Operation
    path: str


@dataclass
class EditResult:
    """The changes made to the target, and the errors met (empty when the edit succeeded)."""

    changes: list[Change] = field(default_factory=list)
    errors: list[ErrorInfo] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class _Failed(Exception):
    """The edit of one node failed; carries the error."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


class _Stop(Exception):
    """Stop the whole edit (stop-on-error, rollback-on-error)."""


def _error(
    tag: str,
    message: str,
    path: str,
    *,
    info: dict[str, str] | None = None,
    app_tag: str | None = None,
    type: ErrorType = ErrorType.APPLICATION,
) -> _Failed:
    return _Failed(
        ErrorInfo(tag=tag, message=message, type=type, path=path, app_tag=app_tag, info=info or {})
    )


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def _has_data(el: etree._Element) -> bool:
    return next(el.iterchildren("*"), None) is not None


def _nsmap(el: etree._Element) -> Mapping[str, str]:
    """The namespace declarations in scope on ``el`` (lxml's stubs do not admit the default namespace)."""
    return cast("Mapping[str, str]", el.nsmap)


def _default_ns(namespace: str) -> Mapping[str, str]:
    return cast("Mapping[str, str]", {None: namespace})


def _level_namespace(tparent: etree._Element | None) -> str:
    return _split(tparent.tag)[0] if tparent is not None else ""


def _split(tag: str) -> tuple[str, str]:
    if tag[:1] == "{":
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def apply_edit(
    index: SchemaIndex,
    target: etree._Element,
    config: etree._Element,
    *,
    default_operation: str = "merge",
    error_option: str = "stop-on-error",
) -> EditResult:
    """Apply the ``<config>`` of an ``<edit-config>`` to ``target`` in place; see the module docstring.

    ``target`` is a wrapper element whose children are the datastore's top-level nodes; ``config``
    the ``<config>`` element, whose children are the top-level nodes of the edit. Raises
    :class:`QsdnError` (``invalid-value``) for an unknown ``default_operation`` or ``error_option``;
    every other problem is returned in :attr:`EditResult.errors`.
    """
    if default_operation not in _DEFAULT_OPERATIONS:
        raise QsdnError(
            f"default-operation must be merge, replace or none, not {default_operation!r}"
            " (RFC 6241 section 7.2)",
            tag="invalid-value",
            type=ErrorType.PROTOCOL,
            info={"bad-element": "default-operation"},
        )
    if error_option not in _ERROR_OPTIONS:
        raise QsdnError(
            "error-option must be stop-on-error, continue-on-error or rollback-on-error,"
            f" not {error_option!r} (RFC 6241 section 7.2)",
            tag="invalid-value",
            type=ErrorType.PROTOCOL,
            info={"bad-element": "error-option"},
        )
    editor = _Editor(index, stop=error_option != "continue-on-error")
    changes: list[Change] = []
    with suppress(_Stop):
        replace_all = default_operation == "replace"
        editor.children(None, config, target, default_operation, "", changes, replace_parent=replace_all)
    return EditResult(changes=changes, errors=editor.errors)


class _Editor:
    """The state of one edit: errors so far and the list/leaf-list entry indexes of the target."""

    def __init__(self, index: SchemaIndex, *, stop: bool) -> None:
        self.ix = index
        self.stop = stop
        self.errors: list[ErrorInfo] = []
        # (parent element, entry tag) -> normalised key (list) or value (leaf-list) -> entry element
        self._entries: dict[tuple[etree._Element, str], dict[Hashable, etree._Element]] = {}

    # --- schema ----------------------------------------------------------------------------------
    def unknown(self, parent: SchemaNodeInfo | None, tag: str, parent_path: str) -> _Failed:
        """The error for an element the schema does not have (from :class:`SchemaIndex`)."""
        ns, name = _split(tag)
        try:
            if parent is None:
                self.ix.top(ns, name)
            else:
                self.ix.child(parent, ns, name, parent_path=parent_path)
        except QsdnError as exc:
            return _Failed(exc.first)
        raise AssertionError(f"{tag} is in the schema")  # pragma: no cover

    def segment(self, parent: SchemaNodeInfo | None, info: SchemaNodeInfo) -> str:
        if parent is not None and parent.module == info.module:
            return info.name
        return f"{info.module}:{info.name}"

    # --- values ----------------------------------------------------------------------------------
    def norm(self, info: SchemaNodeInfo, el: etree._Element, text: str | None = None) -> Hashable:
        """A value of ``info``'s type, comparable with another instance's (not a full canonical form)."""
        if text is None:
            text = el.text or ""
        base = info.base_type
        if info.identity_like:
            m = _QNAME.fullmatch(text)
            if m is not None:
                ns = el.nsmap.get(m.group(1))
                if ns is not None:
                    return (ns, m.group(2))
            elif base == "identityref":
                ns = el.nsmap.get(None)
                if ns is not None:
                    return (ns, text.strip())
            return text.strip()
        if base in _RAW_TYPES:
            return text
        if base in _INTEGERS:
            try:
                return int(text)
            except ValueError:
                return text.strip()
        if base == "decimal64":
            try:
                return Decimal(text.strip())
            except InvalidOperation:
                return text.strip()
        if base == "bits":
            return tuple(sorted(text.split()))
        if base == "empty":
            return ""
        return text.strip()

    def path_value(self, info: SchemaNodeInfo, el: etree._Element) -> str:
        """The value of a key or leaf-list entry as written in a path (identities as ``module:name``)."""
        if info.identity_like:
            v = self.norm(info, el)
            if isinstance(v, tuple):
                module = self.ix.module_of(v[0])
                if module is not None:
                    return f"{module}:{v[1]}"
            return str(v)
        return el.text or ""

    def target_path(
        self, parent: SchemaNodeInfo | None, parent_path: str, info: SchemaNodeInfo, el: etree._Element
    ) -> str:
        """The data path of an element of the target."""
        path = f"{parent_path}/{self.segment(parent, info)}"
        if info.kind == "list":
            for k in self.ix.keys(info):
                kel = next(el.iterchildren(k.clark), None)
                path += f"[{k.name}={_quote('' if kel is None else self.path_value(k, kel))}]"
        elif info.kind == "leaf-list":
            path += f"[.={_quote(self.path_value(info, el))}]"
        return path

    # --- entry indexes -------------------------------------------------------------------------
    def entries(self, tparent: etree._Element, info: SchemaNodeInfo) -> dict[Hashable, etree._Element]:
        key = (tparent, info.clark)
        found = self._entries.get(key)
        if found is None:
            found = {}
            kinfos = self.ix.keys(info)
            if len(kinfos) == 1 and kinfos[0].base_type in _RAW_TYPES and not kinfos[0].identity_like:
                # the usual case, kept fast: one string key, written first
                ktag = kinfos[0].clark
                for el in tparent.iterchildren(info.clark):
                    kel = el[0] if len(el) else None
                    if kel is None or kel.tag != ktag:
                        kel = next(el.iterchildren(ktag), None)
                    found.setdefault((None if kel is None else kel.text or "",), el)
            elif info.kind == "list":
                for el in tparent.iterchildren(info.clark):
                    values: list[Hashable] = []
                    size = len(el)
                    for i, k in enumerate(kinfos):
                        # keys come first, in key order, in data libyang printed or this engine wrote
                        kel = el[i] if i < size else None
                        if kel is None or kel.tag != k.clark:
                            kel = next(el.iterchildren(k.clark), None)
                        if kel is None:
                            values.append(None)
                        elif k.base_type in _RAW_TYPES and not k.identity_like:
                            values.append(kel.text or "")
                        else:
                            values.append(self.norm(k, kel))
                    found.setdefault(tuple(values), el)
            else:
                for el in tparent.iterchildren(info.clark):
                    found.setdefault(self.norm(info, el), el)
            self._entries[key] = found
        return found

    def detach(self, tparent: etree._Element, el: etree._Element, info: SchemaNodeInfo | None) -> None:
        tparent.remove(el)
        if info is None or info.kind in ("list", "leaf-list"):
            entries = self._entries.get((tparent, el.tag))
            if entries is not None:
                for k, v in entries.items():
                    if v is el:
                        del entries[k]
                        break

    # --- attributes ------------------------------------------------------------------------------
    def attributes(
        self, e: etree._Element, info: SchemaNodeInfo, inherited: str, path: str
    ) -> tuple[str, str | None, str | None]:
        """(effective operation, insert, key-or-value reference) of an edit element."""
        items = e.items()
        if not items:
            return inherited, None, None
        op = inherited
        insert: str | None = None
        ref: str | None = None
        for raw_name, raw_value in items:
            name, value = str(raw_name), str(raw_value)
            if name == _OPERATION:
                if value not in _OPERATIONS:
                    raise _error(
                        "bad-attribute",
                        f"operation {value!r} on {info.name!r} is not one of merge, replace, create, delete,"
                        " remove (RFC 6241 section 7.2)",
                        path,
                        info={"bad-attribute": "operation", "bad-element": info.name},
                        type=ErrorType.PROTOCOL,
                    )
                if inherited in _REMOVING and value not in _REMOVING:
                    raise _error(
                        "bad-attribute",
                        f"operation {value!r} on {info.name!r} contradicts the enclosing {inherited!r}",
                        path,
                        info={"bad-attribute": "operation", "bad-element": info.name},
                        type=ErrorType.PROTOCOL,
                    )
                op = value
            elif name in (_INSERT, _KEY, _VALUE):
                local = name[len(_YANG_PREFIX) :]
                wanted = _KEY if info.kind == "list" else _VALUE
                if not info.ordered_by_user or (name != _INSERT and name != wanted):
                    owner = {_KEY: "list", _VALUE: "leaf-list"}.get(name, "list or leaf-list")
                    raise _error(
                        "unknown-attribute",
                        f"attribute yang:{local} applies only to an ordered-by user {owner},"
                        f" not to {info.kind} {info.name!r} (RFC 7950 section 8.3.1)",
                        path,
                        info={"bad-attribute": local, "bad-element": info.name},
                        type=ErrorType.PROTOCOL,
                    )
                if name == _INSERT:
                    if value not in _INSERTS:
                        raise _error(
                            "bad-attribute",
                            f"yang:insert {value!r} on {info.name!r} is not first, last, before or after"
                            " (RFC 7950 section 7.8.6)",
                            path,
                            info={"bad-attribute": "insert", "bad-element": info.name},
                            type=ErrorType.PROTOCOL,
                        )
                    insert = value
                else:
                    ref = value
            elif name.startswith(_NC_PREFIX) or name.startswith(_YANG_PREFIX) or name[:1] != "{":
                local = _split(name)[1]
                raise _error(
                    "unknown-attribute",
                    f"unknown attribute {name!r} on {info.name!r}",
                    path,
                    info={"bad-attribute": local, "bad-element": info.name},
                    type=ErrorType.PROTOCOL,
                )
        if insert in ("before", "after") and ref is None:
            local = "key" if info.kind == "list" else "value"
            raise _error(
                "missing-attribute",
                f"yang:insert={insert!r} on {info.name!r} needs the yang:{local} attribute"
                " (RFC 7950 section 7.8.6)",
                path,
                info={"bad-attribute": local, "bad-element": info.name},
                type=ErrorType.PROTOCOL,
            )
        return op, insert, ref if insert in ("before", "after") else None

    def list_keys(
        self, info: SchemaNodeInfo, e: etree._Element, op: str, base: str
    ) -> tuple[tuple[Hashable, ...], list[etree._Element], str]:
        """(normalised key, key elements in key order, data path) of a list entry of the edit."""
        values: list[Hashable] = []
        elements: list[etree._Element] = []
        path = base
        for k in self.ix.keys(info):
            found = e.iterchildren(k.clark)
            kel = next(found, None)
            if kel is None:
                raise _error(
                    "missing-element",
                    f"entry of list {info.name!r} without its key {k.name!r} (RFC 7950 section 8.3.1)",
                    path,
                    info={"bad-element": k.name},
                )
            if next(found, None) is not None:
                raise _error(
                    "bad-element",
                    f"key {k.name!r} given twice in an entry of list {info.name!r}",
                    path,
                    info={"bad-element": k.name},
                )
            if _has_data(kel):
                raise _error(
                    "bad-element", f"key {k.name!r} holds elements", path, info={"bad-element": k.name}
                )
            kop, _, _ = self.attributes(kel, k, op, path)
            allowed = _REMOVING if op in _REMOVING else {"merge", "replace", op}
            if kop not in allowed:
                raise _error(
                    "bad-attribute",
                    f"operation {kop!r} on key {k.name!r} of list {info.name!r} disagrees with"
                    f" the entry's {op!r}",
                    path,
                    info={"bad-attribute": "operation", "bad-element": k.name},
                    type=ErrorType.PROTOCOL,
                )
            values.append(self.norm(k, kel))
            elements.append(kel)
            path += f"[{k.name}={_quote(self.path_value(k, kel))}]"
        return tuple(values), elements, path

    def reference(
        self, tparent: etree._Element, info: SchemaNodeInfo, e: etree._Element, ref: str, path: str
    ) -> etree._Element:
        """The existing entry a yang:key / yang:value attribute names (RFC 7950 section 15.7)."""
        attr = "key" if info.kind == "list" else "value"
        entries = self.entries(tparent, info)
        if info.kind == "list":
            kinfos = self.ix.keys(info)
            given: dict[str, str] = {}
            pos = 0
            while pos < len(ref):
                m = _PREDICATE.match(ref, pos)
                if m is None:
                    if ref[pos:].strip():
                        given = {}
                    break
                given[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
                pos = m.end()
            if set(given) != {k.name for k in kinfos}:
                raise _error(
                    "bad-attribute",
                    f"yang:key {ref!r} on {info.name!r} does not give exactly the keys "
                    f"{', '.join(k.name for k in kinfos)} (RFC 7950 section 7.8.6)",
                    path,
                    info={"bad-attribute": attr, "bad-element": info.name},
                    type=ErrorType.PROTOCOL,
                )
            wanted: Hashable = tuple(self.norm(k, e, given[k.name]) for k in kinfos)
        else:
            wanted = self.norm(info, e, ref)
        anchor = entries.get(wanted)
        if anchor is None:
            raise _error(
                "bad-attribute",
                f"yang:{attr} {ref!r} on {info.name!r} names no existing entry (RFC 7950 section 15.7)",
                path,
                app_tag="missing-instance",
                info={"bad-attribute": attr, "bad-element": info.name},
                type=ErrorType.PROTOCOL,
            )
        return anchor

    # --- tree surgery ----------------------------------------------------------------------------
    def new_element(
        self, tparent: etree._Element, parent_ns: str, info: SchemaNodeInfo, src: etree._Element | None
    ) -> etree._Element:
        """A new last child of ``tparent`` (whose namespace is ``parent_ns``), with the value of ``src``.

        Instances of one list need not be adjacent in XML (RFC 7950 section 7.8.5), and libyang
        orders siblings by the schema when it prints, so appending is enough.
        """
        if src is not None and info.identity_like:
            return self.value_element(tparent, info, src)
        if parent_ns == info.namespace:
            el = etree.SubElement(tparent, info.clark)
        else:
            el = etree.SubElement(tparent, info.clark, nsmap=_default_ns(info.namespace))
        if src is not None and not info.empty_type:
            el.text = src.text
        return el

    def value_element(
        self, tparent: etree._Element, info: SchemaNodeInfo, src: etree._Element
    ) -> etree._Element:
        """A new last child of ``tparent`` for a value whose prefixes must keep their meaning.

        The element declares every namespace in scope on ``src``, the edit element, so that a
        prefix declared far above it in the request (on ``<rpc>``, say) still resolves. lxml keeps
        these declarations when it creates an element in place, but drops those whose namespace an
        ancestor already declares (under any prefix, the default one included) when it *moves* an
        element; so such elements are never moved, except ordered-by user leaf-list entries, whose
        prefixes :meth:`place` rewrites after the move.
        """
        el = etree.SubElement(tparent, info.clark, nsmap=_nsmap(src))
        el.text = src.text
        return el

    def place(
        self,
        tparent: etree._Element,
        el: etree._Element,
        insert: str | None,
        anchor: etree._Element | None,
        *,
        new: bool,
        replace_parent: bool,
    ) -> bool:
        """Put an ordered-by user entry where ``insert`` says; True when an existing entry moved."""
        if (insert is not None or (replace_parent and not new)) and el.text and ":" in el.text:
            before = el.nsmap
            moved = self._place(tparent, el, insert, anchor, new=new, replace_parent=replace_parent)
            self.keep_prefixes(el, before)
            return moved
        return self._place(tparent, el, insert, anchor, new=new, replace_parent=replace_parent)

    def keep_prefixes(self, el: etree._Element, before: Mapping[str | None, str]) -> None:
        """Rewrite the prefixes in the value of a moved element to declarations still in scope."""
        text = el.text or ""
        after = el.nsmap
        if all(after.get(m.group(1)) == before.get(m.group(1)) for m in _PREFIX.finditer(text)):
            return
        by_uri = {uri: prefix for prefix, uri in after.items() if prefix is not None}
        default = after.get(None)

        def swap(m: re.Match[str]) -> str:
            uri = before.get(m.group(1))
            if uri is None or after.get(m.group(1)) == uri:
                return m.group(0)
            if uri in by_uri:
                return f"{by_uri[uri]}:"
            return "" if uri == default else m.group(0)  # unprefixed: the default namespace

        el.text = _PREFIX.sub(swap, text)

    def _place(
        self,
        tparent: etree._Element,
        el: etree._Element,
        insert: str | None,
        anchor: etree._Element | None,
        *,
        new: bool,
        replace_parent: bool,
    ) -> bool:
        if insert is None:
            if new or not replace_parent:
                return False
            insert = "last"
        if insert == "first":
            first = next(tparent.iterchildren(el.tag), None)
            if first is None or first is el:
                return False
            first.addprevious(el)
            return not new
        if insert == "last":
            last = next(tparent.iterchildren(el.tag, reversed=True), None)
            if last is None or last is el:
                return False
            last.addnext(el)
            return not new
        if anchor is None or anchor is el:
            return False
        if insert == "before":
            if el.getnext() is anchor:
                return False
            anchor.addprevious(el)
        else:
            if el.getprevious() is anchor:
                return False
            anchor.addnext(el)
        return not new

    def exclude_cases(
        self,
        parent: SchemaNodeInfo | None,
        tparent: etree._Element,
        info: SchemaNodeInfo,
        keep: etree._Element,
        parent_path: str,
        changes: list[Change],
    ) -> None:
        """Delete the siblings of ``keep`` in other cases of its choices (RFC 7950 section 7.9.2)."""
        mine = dict(info.cases)
        for sib in list(tparent.iterchildren("*")):
            if sib is keep:
                continue
            sinfo = self.ix.by_tag(parent, sib.tag)
            if sinfo is None or not sinfo.cases:
                continue
            if any(mine.get(choice, case) != case for choice, case in sinfo.cases):
                path = self.target_path(parent, parent_path, sinfo, sib)
                if sinfo.kind != "container" or sinfo.presence or _has_data(sib):
                    changes.append(Change("delete", path))
                self.detach(tparent, sib, sinfo)

    def prune(
        self,
        parent: SchemaNodeInfo | None,
        tparent: etree._Element,
        keep: set[etree._Element],
        parent_path: str,
        changes: list[Change],
    ) -> None:
        """Delete the children of a replaced node that the edit did not mention (list keys stay)."""
        keys = self.ix.key_tags(parent) if parent is not None else _NO_KEYS
        for el in list(tparent.iterchildren("*")):
            if el in keep or el.tag in keys:
                continue
            info = self.ix.by_tag(parent, el.tag)
            if info is None:
                changes.append(Change("delete", f"{parent_path}/{_split(el.tag)[1]}"))
            elif info.kind != "container" or info.presence or _has_data(el):
                changes.append(Change("delete", self.target_path(parent, parent_path, info, el)))
            self.detach(tparent, el, info)

    # --- the walk --------------------------------------------------------------------------------
    def children(
        self,
        parent: SchemaNodeInfo | None,
        edit_parent: etree._Element,
        tparent: etree._Element | None,
        op: str,
        parent_path: str,
        changes: list[Change] | None,
        *,
        replace_parent: bool = False,
        copies: dict[etree._Element, etree._Element] | None = None,
        adopted: set[etree._Element] | None = None,
    ) -> None:
        """Apply the children of ``edit_parent`` to ``tparent``.

        ``tparent`` None: only check the edit (inside a delete or remove). ``replace_parent``: the
        parent is being replaced, so its children that the edit does not mention are deleted
        afterwards. ``copies``: ``tparent`` was just created as a deep copy of ``edit_parent``
        (one C call instead of one element at a time), so nothing below it existed before;
        ``copies`` maps each child of ``edit_parent`` to its copy. A copy is kept (``adopted``)
        when its edit element checks out, and everything else in ``tparent`` (failed or removed
        subtrees, comments) is dropped at the end. ``changes`` None: record nothing (below a node
        this edit created, except below a new non-presence container).
        """
        level = _Level(
            parent,
            tparent,
            op,
            parent_path,
            changes,
            set() if replace_parent and tparent is not None else None,
            replace_parent,
            copies,
            set() if adopted is None else adopted,
            parent.namespace if parent is not None else _level_namespace(tparent),
            self.ix.tag_map(parent),
        )
        keys = self.ix.key_tags(parent) if parent is not None else _NO_KEYS
        for e in edit_parent:
            tag: object = e.tag
            if not isinstance(tag, str) or tag in keys:  # comments, processing instructions, keys
                continue
            try:
                self.node(level, e, tag)
            except _Failed as failed:
                self.errors.append(failed.error)
                if self.stop:
                    raise _Stop from None
                if level.keep is not None:  # continue-on-error: the failed subtree stays as it was
                    kept = self.counterpart(level, e, tag)
                    if kept is not None:
                        level.keep.add(kept)
        if level.keep is not None and tparent is not None and changes is not None:
            self.prune(parent, tparent, level.keep, parent_path, changes)
        if copies is not None and tparent is not None and len(level.adopted) != len(tparent):
            for c in list(tparent):
                if c not in level.adopted:
                    tparent.remove(c)

    def counterpart(self, lv: _Level, e: etree._Element, tag: str) -> etree._Element | None:
        """The node of the target an edit element stands for, if it can be told."""
        info = lv.tags.get(tag)
        tparent = lv.tparent
        if info is None or tparent is None:
            return None
        try:
            if info.kind == "list":
                key: Hashable = self.list_keys(info, e, "merge", lv.path)[0]
            elif info.kind == "leaf-list":
                key = self.norm(info, e)
            else:
                return next(tparent.iterchildren(tag), None)
        except _Failed:
            return None
        return self.entries(tparent, info).get(key)

    def node(self, lv: _Level, e: etree._Element, tag: str) -> None:
        """Apply one edit element ``e`` (named ``tag``) under the parent described by ``lv``."""
        parent = lv.parent
        info = lv.tags.get(tag)
        if info is None:
            raise self.unknown(parent, tag, lv.path)
        kind = info.kind
        if parent is not None and parent.module == info.module:
            base = f"{lv.path}/{info.name}"
        else:
            base = f"{lv.path}/{info.module}:{info.name}"
        if not info.config:
            raise _error(
                "invalid-value",
                f"{kind} {info.name!r} is state data (config false) and cannot be edited",
                base,
                info={"bad-element": info.name},
            )
        if e.items():
            op, insert, ref = self.attributes(e, info, lv.op, base)
        else:
            op, insert, ref = lv.op, None, None

        # Payload checks (RFC 7950 section 8.3.1).
        key: Hashable = None
        key_elements: list[etree._Element] = []
        path = base
        if kind == "list":
            key, key_elements, path = self.list_keys(info, e, op, base)
        elif kind == "leaf-list":
            key = self.norm(info, e)
            path = f"{base}[.={_quote(self.path_value(info, e))}]"
        else:
            if tag in lv.seen:
                raise _error(
                    "bad-element",
                    f"{kind} {info.name!r} given more than once",
                    base,
                    info={"bad-element": info.name},
                )
            lv.seen.add(tag)
        if kind == "leaf" or kind == "leaf-list":
            if len(e) and _has_data(e):
                raise _error(
                    "bad-element",
                    f"{kind} {info.name!r} holds elements",
                    path,
                    info={"bad-element": info.name},
                )
        elif (kind == "container" or kind == "list") and e.text is not None and e.text.strip():
            raise _error(
                "bad-element", f"{kind} {info.name!r} holds text", path, info={"bad-element": info.name}
            )
        if info.cases and op not in _REMOVING:
            for choice, case in info.cases:
                other = lv.chosen.get(choice)
                if other is not None and other != case:
                    raise _error(
                        "bad-element",
                        f"{info.name!r} belongs to case {case.rsplit('/', 1)[-1]!r} of choice"
                        f" {choice.rsplit('/', 1)[-1]!r}, whose case {other.rsplit('/', 1)[-1]!r}"
                        " is also given (RFC 7950 section 8.3.1)",
                        path,
                        info={"bad-element": info.name},
                    )
            lv.chosen.update(info.cases)

        tparent = lv.tparent
        if tparent is None:  # inside a delete or remove: check only
            if kind == "container" or kind == "list":
                self.children(info, e, None, op, path, None)
            return
        if lv.copies is not None and kind == "leaf" and op not in _REMOVING:  # a leaf of a new node
            lv.adopted.add(self.adopt_copy(tparent, info, e, lv.copies[e]))
            if lv.changes is not None:  # in a new non-presence container
                lv.changes.append(Change("create", path))
            return

        # Find the node in the target.
        match: etree._Element | None = None
        if kind == "list" or kind == "leaf-list":
            if lv.copies is None:
                match = self.entries(tparent, info).get(key)
            else:  # only the entries adopted so far exist
                match = self._entries.setdefault((tparent, info.clark), {}).get(key)
        elif lv.copies is None:
            match = next(tparent.iterchildren(info.clark), None)
        shell: etree._Element | None = None
        np_container = kind == "container" and not info.presence
        if np_container and match is not None and not _has_data(match):
            shell, match = match, None
        keep = lv.keep
        if keep is not None:
            if match is not None:
                keep.add(match)
            if shell is not None:
                keep.add(shell)
        changes = lv.changes

        if op in _REMOVING:
            if kind == "container" or kind == "list":
                self.children(info, e, None, op, path, None)
            if match is None:
                if op == "delete":
                    raise _error(
                        "data-missing",
                        f"cannot delete {kind} {info.name!r}: it does not exist (RFC 6241 section 7.2)",
                        path,
                    )
                return
            self.detach(tparent, match, info)
            if changes is not None:
                changes.append(Change("delete", path))
            return

        if op == "none":
            if match is None and not np_container:
                raise _error(
                    "data-missing",
                    f"{kind} {info.name!r} does not exist, and default-operation none does not create it"
                    " (RFC 6241 section 7.2)",
                    path,
                )
            if kind == "container" or kind == "list":
                if match is None:
                    match = (
                        shell if shell is not None else self.new_element(tparent, lv.namespace, info, None)
                    )
                    if keep is not None:
                        keep.add(match)
                self.children(info, e, match, "none", path, changes)
                if np_container and not _has_data(match):
                    self.detach(tparent, match, info)
            return

        if op == "create" and match is not None:
            raise _error(
                "data-exists",
                f"cannot create {kind} {info.name!r}: it already exists (RFC 6241 section 7.2)",
                path,
            )

        anchor = None
        if ref is not None:
            anchor = self.reference(tparent, info, e, ref, path)

        if match is None:
            self.create(lv, tparent, info, e, shell, op, key, key_elements, insert, anchor, path)
            return

        # merge or replace of an existing node
        done: Operation = "replace" if op == "replace" else "merge"
        if kind == "leaf":
            if info.empty_type or self.norm(info, match) == self.norm(info, e):
                return
            if info.identity_like:
                new = self.value_element(tparent, info, e)
                tparent.remove(match)
                if keep is not None:
                    keep.discard(match)
                    keep.add(new)
            else:
                match.text = e.text
            if changes is not None:
                changes.append(Change(done, path))
            return
        moved = False
        if info.ordered_by_user:
            moved = self.place(tparent, match, insert, anchor, new=False, replace_parent=lv.replace_parent)
        if kind == "leaf-list":
            if moved and changes is not None:
                changes.append(Change(done, path))
            return
        if kind == "anydata" or kind == "anyxml":
            new = self.copy_any(e)
            if etree.tostring(new) != etree.tostring(match):
                tparent.replace(match, new)
                if keep is not None:
                    keep.discard(match)
                    keep.add(new)
                if changes is not None:
                    changes.append(Change(done, path))
            return
        if op == "replace":
            sub: list[Change] = []
            self.children(info, e, match, "replace", path, sub, replace_parent=True)
            if (sub or moved) and changes is not None:
                changes.append(Change("replace", path))
        else:
            if moved and changes is not None:
                changes.append(Change("merge", path))
            self.children(info, e, match, op, path, changes)

    def create(
        self,
        lv: _Level,
        tparent: etree._Element,
        info: SchemaNodeInfo,
        e: etree._Element,
        shell: etree._Element | None,
        op: str,
        key: Hashable,
        key_elements: list[etree._Element],
        insert: str | None,
        anchor: etree._Element | None,
        path: str,
    ) -> None:
        """Create the missing node ``e`` stands for (merge, replace or create).

        A container or list entry is made as a deep copy of its edit subtree, which its children
        then check and trim (see :meth:`children`); below it nothing is reported, except below a
        non-presence container, which has no existence of its own (RFC 7950 section 7.5.1): what
        is created inside one is reported as if it had been there, empty.
        """
        kind = info.kind
        copies: dict[etree._Element, etree._Element] | None = None
        adopted: set[etree._Element] = set()
        if lv.copies is not None:
            el = self.adopt_copy(tparent, info, e, lv.copies[e])
            lv.adopted.add(el)
        elif shell is not None:
            el = shell
        elif kind == "leaf" or kind == "leaf-list":
            el = self.new_element(tparent, lv.namespace, info, e)
        elif kind == "anydata" or kind == "anyxml":
            el = self.copy_any(e)
            tparent.append(el)
        else:
            el = deepcopy(e)
            el.tail = el.text = None
            el.attrib.clear()
            tparent.append(el)
        if lv.keep is not None:
            lv.keep.add(el)
        if (kind == "container" or kind == "list") and el is not shell:
            copies = dict(zip(e, el, strict=True))
        if kind == "list" and copies is not None:  # keys first, in key order
            kinfos = self.ix.keys(info)
            kcopies = [copies[kel] for kel in key_elements]
            pairs = enumerate(zip(kinfos, kcopies, strict=True))
            if all(el[i] is kc and not k.identity_like for i, (k, kc) in pairs):
                for k, kel, kc in zip(kinfos, key_elements, kcopies, strict=True):
                    adopted.add(self.adopt_copy(el, k, kel, kc))
            else:
                # Move the others behind the keys rather than the keys to the front: moving an element
                # makes lxml drop the namespace declarations its value needs (see value_element).
                others = [c for c in el if all(c is not kc for kc in kcopies)]
                for k, kel, kc in zip(kinfos, key_elements, kcopies, strict=True):
                    kept = self.adopt_copy(el, k, kel, kc)
                    if kept is kc:
                        el.append(kc)
                    adopted.add(kept)
                for c in others:
                    el.append(c)
        if kind == "list" or kind == "leaf-list":
            entries = self._entries.get((tparent, info.clark))
            if entries is not None:
                entries[key] = el
            if info.ordered_by_user:
                if insert == "last" and lv.copies is not None:
                    insert = None  # in a new subtree, entries not yet applied follow this one
                self.place(tparent, el, insert, anchor, new=True, replace_parent=False)
        np_container = kind == "container" and not info.presence
        if kind == "container" or kind == "list":
            inner = lv.changes if np_container else None
            self.children(info, e, el, op, path, inner, copies=copies, adopted=adopted)
            if np_container and not _has_data(el):
                self.detach(tparent, el, info)
                if lv.keep is not None:
                    lv.keep.discard(el)
                return
        if lv.changes is None:  # inside a node this edit created
            return
        if info.cases and lv.copies is None:  # nothing else exists in a new subtree
            self.exclude_cases(lv.parent, tparent, info, el, lv.path, lv.changes)
        if not np_container:
            lv.changes.append(Change("create", path))

    def adopt_copy(
        self, tparent: etree._Element, info: SchemaNodeInfo, e: etree._Element, el: etree._Element
    ) -> etree._Element:
        """Keep ``el``, the copy of ``e`` in a new subtree (see :meth:`children`), cleaned of edit details."""
        if el.items():
            el.attrib.clear()
        if el.tail is not None:
            el.tail = None
        kind = info.kind
        if kind == "leaf" or kind == "leaf-list":
            if info.identity_like:  # the copy lost the declarations of the prefixes in its value
                new = self.value_element(tparent, info, e)
                tparent.remove(el)
                return new
            if info.empty_type:
                el.text = None
        elif (kind == "container" or kind == "list") and el.text is not None:
            el.text = None
        return el

    def copy_any(self, e: etree._Element) -> etree._Element:
        """A copy of an anydata/anyxml edit element without its edit attributes."""
        new = deepcopy(e)
        for name in list(new.attrib):
            if str(name).startswith((_NC_PREFIX, _YANG_PREFIX)):
                del new.attrib[name]
        new.tail = None
        return new


class _Level:
    """The state of one parent while its edit children are applied (a plain class: made per level)."""

    __slots__ = (
        "adopted",
        "changes",
        "chosen",
        "copies",
        "keep",
        "namespace",
        "op",
        "parent",
        "path",
        "replace_parent",
        "seen",
        "tags",
        "tparent",
    )

    def __init__(
        self,
        parent: SchemaNodeInfo | None,
        tparent: etree._Element | None,
        op: str,
        path: str,
        changes: list[Change] | None,
        keep: set[etree._Element] | None,
        replace_parent: bool,
        copies: dict[etree._Element, etree._Element] | None,
        adopted: set[etree._Element],
        namespace: str,
        tags: Mapping[str, SchemaNodeInfo],
    ) -> None:
        self.parent = parent
        self.tparent = tparent
        self.op = op
        self.path = path
        self.changes = changes
        self.keep = keep
        self.replace_parent = replace_parent
        self.copies = copies
        self.adopted = adopted
        self.namespace = namespace
        self.tags = tags
        self.seen: set[str] = set()
        self.chosen: dict[str, str] = {}
