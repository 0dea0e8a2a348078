"""SchemaIndex: plain-data lookups over the libyang schema (tests/unit/yang/edit-test*)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qsdn.errors import QsdnError
from qsdn.schema import SchemaIndex, SchemaNodeInfo
from qsdn.yang import SchemaContext, ietf_module_dirs

ET = "urn:qsdn:test:edit"
AUG = "urn:qsdn:test:edit-aug"
YANG_DIR = Path(__file__).parent / "yang"


@pytest.fixture(scope="module")
def index() -> SchemaIndex:
    sc = SchemaContext(
        modules=[("edit-test", ()), ("edit-test-types", ()), ("edit-test-aug", ())],
        search_dirs=[YANG_DIR, *ietf_module_dirs()],
    )
    return SchemaIndex(sc)


@pytest.fixture(scope="module")
def top(index: SchemaIndex) -> SchemaNodeInfo:
    return index.top(ET, "top")


def test_top_level_nodes(index: SchemaIndex) -> None:
    top = index.top(ET, "top")
    assert (top.kind, top.name, top.namespace, top.module) == ("container", "top", ET, "edit-test")
    assert top.config and not top.presence and top.cases == ()
    assert top.schema_path == "/edit-test:top"
    assert top.clark == f"{{{ET}}}top"
    entry = index.top(ET, "root-entry")
    assert entry.kind == "list" and entry.keys == ("id",) and not entry.ordered_by_user
    assert not index.top(ET, "state").config


def test_infos_are_frozen(top: SchemaNodeInfo) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        top.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("name", {"kind": "leaf", "base_type": "string", "identity_like": False, "default": None}),
        ("count", {"kind": "leaf", "base_type": "uint32", "default": "7"}),
        ("flag", {"kind": "leaf", "empty_type": True, "base_type": "empty"}),
        ("kind", {"kind": "leaf", "identity_like": True, "base_type": "identityref"}),
        ("kind-or-number", {"identity_like": True, "base_type": "union"}),
        ("target-ref", {"identity_like": True, "base_type": "instance-id"}),
        ("counter", {"config": False}),
        ("sub", {"kind": "container", "presence": False}),
        ("pres", {"kind": "container", "presence": True}),
        ("item", {"kind": "list", "keys": ("id",), "ordered_by_user": False}),
        ("pair", {"kind": "list", "keys": ("a", "b")}),
        ("ordered", {"kind": "list", "keys": ("name",), "ordered_by_user": True}),
        ("olist", {"kind": "leaf-list", "ordered_by_user": True, "base_type": "string"}),
        ("slist", {"kind": "leaf-list", "ordered_by_user": False, "base_type": "uint16"}),
        ("kinds", {"kind": "leaf-list", "identity_like": True}),
        ("blob", {"kind": "anydata", "base_type": None}),
    ],
)
def test_child_facts(index: SchemaIndex, top: SchemaNodeInfo, name: str, expected: dict[str, object]) -> None:
    info = index.child(top, ET, name)
    assert info.name == name
    for attr, value in expected.items():
        assert getattr(info, attr) == value, attr


def test_nodes_in_choices_are_direct_children_with_their_case_ancestry(
    index: SchemaIndex, top: SchemaNodeInfo
) -> None:
    choice = "/edit-test:top/transport"
    assert index.child(top, ET, "tcp-port").cases == ((choice, f"{choice}/tcp"),)
    assert index.child(top, ET, "udp-port").cases == ((choice, f"{choice}/udp"),)
    # a shorthand case is an implicit case named after its node
    assert index.child(top, ET, "local-socket").cases == ((choice, f"{choice}/local-socket"),)
    nested = index.child(top, ET, "i2")
    assert nested.kind == "container"
    assert nested.cases == (
        (choice, f"{choice}/nested"),
        (f"{choice}/nested/inner", f"{choice}/nested/inner/i2"),
    )
    assert index.data_path(nested) == "/edit-test:top/i2"
    # choices and cases are not data nodes
    with pytest.raises(QsdnError) as exc:
        index.child(top, ET, "transport")
    assert exc.value.first.tag == "unknown-element"


def test_augmented_nodes_are_found_in_their_own_namespace(index: SchemaIndex, top: SchemaNodeInfo) -> None:
    item = index.child(top, ET, "item")
    extra = index.child(item, AUG, "extra")
    assert (extra.kind, extra.module, extra.namespace) == ("container", "edit-test-aug", AUG)
    assert index.data_path(extra) == "/edit-test:top/item/edit-test-aug:extra"
    assert index.child(extra, AUG, "note").kind == "leaf"
    assert index.child(top, AUG, "top-aug").module == "edit-test-aug"
    # an augmented node is not a child under the target's namespace
    with pytest.raises(QsdnError):
        index.child(item, ET, "extra")


def test_keys_in_key_order(index: SchemaIndex, top: SchemaNodeInfo) -> None:
    pair = index.child(top, ET, "pair")
    assert [k.name for k in index.keys(pair)] == ["a", "b"]
    assert index.key_tags(pair) == frozenset({f"{{{ET}}}a", f"{{{ET}}}b"})
    assert index.keys(top) == ()
    assert index.key_tags(top) == frozenset()


def test_by_tag_and_tag_map(index: SchemaIndex, top: SchemaNodeInfo) -> None:
    assert index.by_tag(None, f"{{{ET}}}top") is top
    assert index.by_tag(top, f"{{{ET}}}name") is index.child(top, ET, "name")
    assert index.by_tag(top, f"{{{ET}}}nope") is None
    assert index.by_tag(top, "name") is None
    assert f"{{{AUG}}}top-aug" in index.tag_map(top)
    assert [c.name for c in index.children(index.top(ET, "root-entry"))] == ["id", "label"]


def test_unknown_namespace(index: SchemaIndex, top: SchemaNodeInfo) -> None:
    with pytest.raises(QsdnError) as exc:
        index.child(top, "urn:nowhere", "thing")
    e = exc.value.first
    assert e.tag == "unknown-namespace"
    assert e.path == "/edit-test:top"
    assert e.info == {"bad-element": "thing", "bad-namespace": "urn:nowhere"}
    with pytest.raises(QsdnError) as exc:
        index.top("urn:nowhere", "thing")
    assert exc.value.first.tag == "unknown-namespace"
    assert exc.value.first.path == "/"


def test_unknown_element(index: SchemaIndex, top: SchemaNodeInfo) -> None:
    with pytest.raises(QsdnError) as exc:
        index.child(top, ET, "nope")
    e = exc.value.first
    assert (e.tag, e.path, e.info) == ("unknown-element", "/edit-test:top/nope", {"bad-element": "nope"})
    item = index.child(top, ET, "item")
    with pytest.raises(QsdnError) as exc:
        index.child(item, AUG, "nope", parent_path="/edit-test:top/item[id='a']")
    e = exc.value.first
    assert e.path == "/edit-test:top/item[id='a']/edit-test-aug:nope"
    with pytest.raises(QsdnError) as exc:
        index.top(ET, "nope")
    assert (exc.value.first.tag, exc.value.first.path) == ("unknown-element", "/edit-test:nope")


def test_rpcs_and_notifications_are_not_data(index: SchemaIndex) -> None:
    for name in ("reset", "alarm"):
        with pytest.raises(QsdnError) as exc:
            index.top(ET, name)
        assert exc.value.first.tag == "unknown-element"


def test_imported_only_module_is_known_but_has_no_data() -> None:
    sc = SchemaContext(modules=[("edit-test", ())], search_dirs=[YANG_DIR, *ietf_module_dirs()])
    index = SchemaIndex(sc)
    with pytest.raises(QsdnError) as exc:
        index.top("urn:qsdn:test:edit-types", "anything")
    assert exc.value.first.tag == "unknown-element"
