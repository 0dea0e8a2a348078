"""RFC 6241 section 6 subtree filtering over lxml trees, pure.

A filter is a set of sibling filter nodes applied to a set of sibling data nodes, recursively:

* a *selection node* (empty element) selects every matching data node with its whole subtree;
* a *content match node* (element holding only non-blank text) matches data leaves with that text;
  all content match nodes of a sibling set must match (AND), otherwise the parent data node is not
  selected at all; when they match they are part of the output, together with whatever the selection
  and containment siblings select or, when there are no such siblings, with every data sibling;
* a *containment node* (element with child elements) matches data nodes by name and is applied
  recursively; a matching data node is output only when something inside it is selected;
* every filter node matches data nodes by namespace and local name, and its attributes are
  attribute match expressions the data node must satisfy (section 6.2.2).

A filter node in no namespace (``xmlns=""``) matches data nodes of that local name in any namespace,
as most servers allow. Several filter nodes may select the same data node (section 6.4.7): their
selections are merged and each data node appears once, in data order. The input is never modified;
the result is a list of new top-level elements.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import cast

from lxml import etree

from qsdn.netconf.xml import local_name, namespace


@dataclass
class _Selected:
    """What is selected of one data node: all of it, or some of its children."""

    whole: bool = False
    children: dict[etree._Element, _Selected] = field(default_factory=dict)

    def merge(self, other: _Selected) -> None:
        if self.whole:
            return
        if other.whole:
            self.whole = True
            self.children.clear()
            return
        for child, selected in other.children.items():
            mine = self.children.get(child)
            if mine is None:
                self.children[child] = selected
            else:
                mine.merge(selected)


_WHOLE = _Selected(whole=True)


def _element_children(el: etree._Element) -> list[etree._Element]:
    return [child for child in el if isinstance(child.tag, str)]


class _Siblings:
    """Data siblings indexed by (namespace, local name) and by local name."""

    def __init__(self, nodes: list[etree._Element]) -> None:
        self.nodes = nodes
        self.by_qname: dict[tuple[str | None, str], list[etree._Element]] = {}
        self.by_local: dict[str, list[etree._Element]] = {}
        for node in nodes:
            name = local_name(node)
            self.by_qname.setdefault((namespace(node), name), []).append(node)
            self.by_local.setdefault(name, []).append(node)

    def matching(self, filter_node: etree._Element) -> list[etree._Element]:
        ns = namespace(filter_node)
        name = local_name(filter_node)
        candidates = self.by_local.get(name, []) if ns is None else self.by_qname.get((ns, name), [])
        attrs = filter_node.attrib
        if not attrs:
            return candidates
        return [node for node in candidates if all(node.get(k) == v for k, v in attrs.items())]


def _kind(filter_node: etree._Element) -> str:
    if _element_children(filter_node):
        return "containment"
    if filter_node.text is not None and filter_node.text.strip():
        return "content"
    return "selection"


def _select(data_nodes: list[etree._Element], filter_nodes: list[etree._Element]) -> _Selected | None:
    """Apply one filter sibling set to one data sibling set.

    Returns ``None`` when a content match fails (the parent must not be selected), otherwise what is
    selected among ``data_nodes`` (possibly nothing).
    """
    siblings = _Siblings(data_nodes)
    content: list[etree._Element] = []
    others: list[etree._Element] = []
    for node in filter_nodes:
        (content if _kind(node) == "content" else others).append(node)

    result = _Selected()
    for node in content:
        wanted = (node.text or "").strip()
        hits = [
            data
            for data in siblings.matching(node)
            if not _element_children(data) and (data.text or "").strip() == wanted
        ]
        if not hits:
            return None
        for data in hits:
            result.children[data] = _WHOLE
    if not others:
        # Only content match nodes: every data sibling is selected (section 6.2.5).
        return _WHOLE

    for node in others:
        filter_children = _element_children(node)
        for data in siblings.matching(node):
            if not filter_children:  # selection node
                result.children[data] = _WHOLE
                continue
            inner = _select(_element_children(data), filter_children)
            if inner is None or not (inner.whole or inner.children):
                continue
            existing = result.children.get(data)
            if existing is None:
                result.children[data] = inner
            elif not existing.whole:
                merged = _Selected(children=dict(existing.children))
                merged.merge(inner)
                result.children[data] = merged
    return result


def _copy(data: etree._Element, selected: _Selected) -> etree._Element:
    if selected.whole:
        whole = copy.deepcopy(data)
        whole.tail = None
        return whole
    nsmap = cast("dict[str, str]", data.nsmap)  # lxml allows the None (default) prefix
    out = etree.Element(data.tag, nsmap=nsmap)
    for key, value in data.attrib.items():
        out.set(key, value)
    for child in _element_children(data):
        child_selected = selected.children.get(child)
        if child_selected is not None:
            out.append(_copy(child, child_selected))
    return out


def apply_subtree_filter(data_roots: list[etree._Element], filter_el: etree._Element) -> list[etree._Element]:
    """Select from ``data_roots`` (top-level data nodes) what the ``<filter type="subtree">`` asks for.

    The children of ``filter_el`` are the filter's top-level nodes; an empty filter selects nothing
    (section 6.4.2). Returns copies; the input trees are left untouched.
    """
    filter_nodes = _element_children(filter_el)
    data_roots = [root for root in data_roots if isinstance(root.tag, str)]
    if not filter_nodes:
        return []
    selected = _select(data_roots, filter_nodes)
    if selected is None:
        return []
    if selected.whole:
        return [_copy(root, _WHOLE) for root in data_roots]
    return [_copy(root, selected.children[root]) for root in data_roots if root in selected.children]
