"""The NETCONF edit engine (RFC 6241 section 7.2, RFC 7950 sections 7 and 8.3) over the test modules.

Each test builds a datastore (the children of a wrapper element), applies an ``<edit-config>``
``<config>``, and checks the resulting tree (compared after libyang canonicalisation, which also
proves it is valid), the reported changes and the errors (tag, path, info).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from agent.edit import Change, EditResult, apply_edit
from qsdn.errors import QsdnError
from qsdn.schema import SchemaIndex
from qsdn.yang import YANG_DIR, SchemaContext, ietf_module_dirs

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
YANG = "urn:ietf:params:xml:ns:yang:1"
ET = "urn:qsdn:test:edit"
AUG = "urn:qsdn:test:edit-aug"
TYPES = "urn:qsdn:test:edit-types"
TEST_YANG = Path(__file__).parent / "yang"
REFERENCE = Path("/work/shared/reference/etsi-yang")

_BLANKLESS = etree.XMLParser(remove_blank_text=True)


@pytest.fixture(scope="module")
def sc() -> SchemaContext:
    return SchemaContext(
        modules=[("edit-test", ()), ("edit-test-types", ()), ("edit-test-aug", ())],
        search_dirs=[TEST_YANG, *ietf_module_dirs()],
    )


@pytest.fixture(scope="module")
def index(sc: SchemaContext) -> SchemaIndex:
    return SchemaIndex(sc)


# --- helpers ---------------------------------------------------------------------------------------
def datastore(inner: str) -> etree._Element:
    """The wrapper element the datastore hands over: its children are the top-level nodes."""
    return etree.fromstring(f'<data xmlns="{NC}">{inner}</data>', _BLANKLESS)


def config(inner: str, *, blank: bool = False) -> etree._Element:
    """A ``<config>`` inside a whole ``<rpc>``, with nc:, yang:, et: and t: (identities) declared on it."""
    rpc = etree.fromstring(
        f'<rpc xmlns="{NC}" xmlns:nc="{NC}" xmlns:yang="{YANG}" xmlns:et="{ET}" xmlns:t="{TYPES}" '
        f'message-id="1"><edit-config><target><running/></target><config>{inner}</config></edit-config></rpc>',
        None if blank else _BLANKLESS,
    )
    found = rpc.find(f".//{{{NC}}}config")
    assert found is not None
    return found


def top(inner: str, *, attrs: str = "") -> str:
    return f'<top xmlns="{ET}"{attrs}>{inner}</top>'


def edit(
    index: SchemaIndex, target_inner: str, config_inner: str, **kwargs: Any
) -> tuple[etree._Element, EditResult]:
    target = datastore(target_inner)
    result = apply_edit(index, target, config(config_inner), **kwargs)
    return target, result


def body(target: etree._Element) -> bytes:
    return b"".join(etree.tostring(c) for c in target)


def canon(sc: SchemaContext, xml: bytes | str) -> str:
    return sc.canonical_config(xml)


def assert_data(sc: SchemaContext, target: etree._Element, expected_inner: str) -> None:
    """The target holds valid data, equal to ``expected_inner`` once libyang has printed both."""
    assert canon(sc, body(target)) == canon(sc, expected_inner)


def errors(result: EditResult) -> list[tuple[str, str | None, dict[str, str]]]:
    return [(e.tag, e.path, e.info) for e in result.errors]


# --- every operation on every kind of node, existing and missing ------------------------------------
# kind: (datastore with the node, datastore without it, edit with {op}, after merge, after replace,
#        after creating it in the datastore without it, change path, merge change path)
KINDS: dict[str, tuple[str, str, str, str, str, str, str, str | None]] = {
    "leaf": (
        top("<name>old</name><count>3</count>"),
        top("<count>3</count>"),
        top('<name nc:operation="{op}">new</name>'),
        top("<name>new</name><count>3</count>"),
        top("<name>new</name><count>3</count>"),
        top("<name>new</name><count>3</count>"),
        "/edit-test:top/name",
        "/edit-test:top/name",
    ),
    "container": (
        top("<sub><a>x</a><b>1</b></sub><count>3</count>"),
        top("<count>3</count>"),
        top('<sub nc:operation="{op}"><a>y</a></sub>'),
        top("<sub><a>y</a><b>1</b></sub><count>3</count>"),
        top("<sub><a>y</a></sub><count>3</count>"),
        top("<sub><a>y</a></sub><count>3</count>"),
        "/edit-test:top/sub",
        "/edit-test:top/sub/a",
    ),
    "presence container": (
        top("<pres><x>old</x></pres><count>3</count>"),
        top("<count>3</count>"),
        top('<pres nc:operation="{op}"/>'),
        top("<pres><x>old</x></pres><count>3</count>"),
        top("<pres/><count>3</count>"),
        top("<pres/><count>3</count>"),
        "/edit-test:top/pres",
        None,
    ),
    "list entry": (
        top("<item><id>k</id><value>1</value><tag>t</tag></item><count>3</count>"),
        top("<count>3</count>"),
        top('<item nc:operation="{op}"><value>2</value><id>k</id></item>'),
        top("<item><id>k</id><value>2</value><tag>t</tag></item><count>3</count>"),
        top("<item><id>k</id><value>2</value></item><count>3</count>"),
        top("<item><id>k</id><value>2</value></item><count>3</count>"),
        "/edit-test:top/item[id='k']",
        "/edit-test:top/item[id='k']/value",
    ),
    "leaf-list entry": (
        top("<slist>5</slist><slist>6</slist>"),
        top("<slist>6</slist>"),
        top('<slist nc:operation="{op}">5</slist>'),
        top("<slist>5</slist><slist>6</slist>"),
        top("<slist>5</slist><slist>6</slist>"),
        top("<slist>6</slist><slist>5</slist>"),  # new entries go last; libyang keeps that order
        "/edit-test:top/slist[.='5']",
        None,
    ),
    "top-level list entry": (
        f'<root-entry xmlns="{ET}"><id>1</id><label>a</label></root-entry><root-entry xmlns="{ET}"><id>2</id>'
        "</root-entry>",
        f'<root-entry xmlns="{ET}"><id>2</id></root-entry>',
        f'<root-entry xmlns="{ET}" nc:operation="{{op}}"><id>1</id><label>b</label></root-entry>',
        f'<root-entry xmlns="{ET}"><id>1</id><label>b</label></root-entry><root-entry xmlns="{ET}"><id>2</id>'
        "</root-entry>",
        f'<root-entry xmlns="{ET}"><id>1</id><label>b</label></root-entry><root-entry xmlns="{ET}"><id>2</id>'
        "</root-entry>",
        f'<root-entry xmlns="{ET}"><id>2</id></root-entry><root-entry xmlns="{ET}"><id>1</id><label>b</label>'
        "</root-entry>",
        "/edit-test:root-entry[id='1']",
        "/edit-test:root-entry[id='1']/label",
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("op", ["merge", "replace", "create", "delete", "remove"])
def test_operation_on_existing_node(sc: SchemaContext, index: SchemaIndex, kind: str, op: str) -> None:
    existing, missing, edit_xml, merged, replaced, _, path, merge_path = KINDS[kind]
    target, result = edit(index, existing, edit_xml.format(op=op))
    if op == "create":
        assert errors(result) == [("data-exists", path, {})]
        return
    assert result.errors == []
    if op == "merge":
        assert_data(sc, target, merged)
        assert result.changes == ([Change("merge", merge_path)] if merge_path else [])
    elif op == "replace":
        assert_data(sc, target, replaced)
        changed = canon(sc, existing) != canon(sc, replaced)
        assert result.changes == ([Change("replace", path)] if changed else [])
    else:
        assert_data(sc, target, missing)
        assert result.changes == [Change("delete", path)]


# A non-presence container has no existence of its own: creating one reports what it holds.
CREATED_PATH = {"container": "/edit-test:top/sub/a"}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("op", ["merge", "replace", "create", "delete", "remove"])
def test_operation_on_missing_node(sc: SchemaContext, index: SchemaIndex, kind: str, op: str) -> None:
    _, missing, edit_xml, _, _, created, path, _ = KINDS[kind]
    target, result = edit(index, missing, edit_xml.format(op=op))
    if op == "delete":
        assert errors(result) == [("data-missing", path, {})]
    elif op == "remove":
        assert result.errors == [] and result.changes == []
        assert_data(sc, target, missing)
    else:
        assert result.errors == []
        assert_data(sc, target, created)
        assert result.changes == [Change("create", CREATED_PATH.get(kind, path))]


def test_operations_are_inherited(sc: SchemaContext, index: SchemaIndex) -> None:
    existing = top("<sub><a>x</a></sub><name>n</name>")
    target, result = edit(index, existing, top("<sub><a>y</a></sub>", attrs=' nc:operation="create"'))
    assert errors(result) == [("data-exists", "/edit-test:top", {})]
    target, result = edit(index, existing, top("<sub><a/></sub>", attrs=' nc:operation="delete"'))
    assert result.changes == [Change("delete", "/edit-test:top")]
    assert body(target) == b""


def test_merge_that_changes_nothing_reports_nothing(index: SchemaIndex) -> None:
    existing = top("<name>n</name><item><id>a</id><value>1</value></item><slist>1</slist>")
    _, result = edit(index, existing, existing)
    assert result.errors == [] and result.changes == []
    _, result = edit(index, existing, top('<item nc:operation="replace"><id>a</id><value>1</value></item>'))
    assert result.errors == [] and result.changes == []


def test_values_are_compared_by_type(index: SchemaIndex) -> None:
    existing = top("<count>5</count><ratio>1.5</ratio><enabled>true</enabled><slist>7</slist>")
    _, result = edit(index, existing, top("<count> 05</count><ratio>1.50</ratio><slist>007</slist>"))
    assert result.errors == [] and result.changes == []


# --- RFC 6241 section 7.2 examples -----------------------------------------------------------------
INTERFACES = (
    f'<interfaces xmlns="{ET}"><interface><name>Ethernet0/0</name><mtu>1400</mtu>'
    "<description>uplink</description></interface>"
    "<interface><name>Ethernet0/1</name><mtu>9000</mtu></interface></interfaces>"
)
OSPF = (
    f'<protocols xmlns="{ET}"><ospf><area><name>0.0.0.0</name><interfaces>'
    "<interface><name>192.0.2.4</name></interface><interface><name>192.0.2.1</name></interface>"
    "<interface><name>192.0.2.3</name><cost>10</cost></interface>"
    "</interfaces></area></ospf></protocols>"
)


def test_rfc6241_set_mtu(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(
        index,
        INTERFACES,
        f'<interfaces xmlns="{ET}"><interface><name>Ethernet0/0</name><mtu>1500</mtu></interface>'
        "</interfaces>",
    )
    assert result.errors == []
    assert_data(sc, target, INTERFACES.replace("1400", "1500"))
    assert result.changes == [Change("merge", "/edit-test:interfaces/interface[name='Ethernet0/0']/mtu")]


def test_rfc6241_replace_interface(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(
        index,
        INTERFACES,
        f'<interfaces xmlns="{ET}"><interface nc:operation="replace"><name>Ethernet0/0</name><mtu>1500</mtu>'
        "</interface></interfaces>",
    )
    assert result.errors == []
    assert_data(
        sc, target, INTERFACES.replace("1400", "1500").replace("<description>uplink</description>", "")
    )
    assert result.changes == [Change("replace", "/edit-test:interfaces/interface[name='Ethernet0/0']")]


def test_rfc6241_delete_interface_with_default_operation_none(sc: SchemaContext, index: SchemaIndex) -> None:
    request = (
        f'<interfaces xmlns="{ET}"><interface nc:operation="delete"><name>Ethernet0/0</name></interface>'
        "</interfaces>"
    )
    target, result = edit(index, INTERFACES, request, default_operation="none")
    assert result.errors == []
    assert_data(
        sc,
        target,
        f'<interfaces xmlns="{ET}"><interface><name>Ethernet0/1</name><mtu>9000</mtu>'
        "</interface></interfaces>",
    )
    assert result.changes == [Change("delete", "/edit-test:interfaces/interface[name='Ethernet0/0']")]
    # again: now it is missing
    _, result = edit(index, body(target).decode(), request, default_operation="none")
    assert errors(result) == [("data-missing", "/edit-test:interfaces/interface[name='Ethernet0/0']", {})]


def test_rfc6241_delete_ospf_interface_leaves_the_others(sc: SchemaContext, index: SchemaIndex) -> None:
    request = (
        f'<protocols xmlns="{ET}"><ospf><area><name>0.0.0.0</name><interfaces>'
        '<interface nc:operation="delete"><name>192.0.2.4</name></interface>'
        "</interfaces></area></ospf></protocols>"
    )
    target, result = edit(index, OSPF, request, default_operation="none")
    assert result.errors == []
    assert_data(sc, target, OSPF.replace("<interface><name>192.0.2.4</name></interface>", ""))
    assert result.changes == [
        Change(
            "delete", "/edit-test:protocols/ospf/area[name='0.0.0.0']/interfaces/interface[name='192.0.2.4']"
        )
    ]


def test_rfc6241_replace_ospf_area(sc: SchemaContext, index: SchemaIndex) -> None:
    request = (
        f'<protocols xmlns="{ET}"><ospf><area nc:operation="replace"><name>0.0.0.0</name><interfaces>'
        "<interface><name>192.0.2.1</name></interface><interface><name>192.0.2.3</name><cost>10</cost></interface>"
        "</interfaces></area></ospf></protocols>"
    )
    target, result = edit(index, OSPF, request)
    assert result.errors == []
    assert_data(sc, target, OSPF.replace("<interface><name>192.0.2.4</name></interface>", ""))
    assert result.changes == [Change("replace", "/edit-test:protocols/ospf/area[name='0.0.0.0']")]


# --- default-operation --------------------------------------------------------------------------------
def test_default_operation_none_does_not_create(sc: SchemaContext, index: SchemaIndex) -> None:
    existing = top("<name>n</name>")
    target, result = edit(index, existing, top("<name>other</name>"), default_operation="none")
    assert result.errors == [] and result.changes == []
    assert_data(sc, target, existing)
    _, result = edit(index, existing, top("<count>4</count>"), default_operation="none")
    assert errors(result) == [("data-missing", "/edit-test:top/count", {})]
    _, result = edit(
        index,
        existing,
        top('<item><id>x</id><value nc:operation="merge">1</value></item>'),
        default_operation="none",
    )
    assert errors(result) == [("data-missing", "/edit-test:top/item[id='x']", {})]
    _, result = edit(
        index, existing, top('<pres><x nc:operation="merge">1</x></pres>'), default_operation="none"
    )
    assert errors(result) == [("data-missing", "/edit-test:top/pres", {})]
    _, result = edit(
        index,
        "",
        f'<root-entry xmlns="{ET}"><id>1</id><label nc:operation="merge">l</label></root-entry>',
        default_operation="none",
    )
    assert errors(result) == [("data-missing", "/edit-test:root-entry[id='1']", {})]


def test_default_operation_none_walks_through_missing_non_presence_containers(
    sc: SchemaContext, index: SchemaIndex
) -> None:
    target, result = edit(
        index,
        top("<name>n</name>"),
        top('<sub><deeper><c nc:operation="merge">v</c></deeper></sub>'),
        default_operation="none",
    )
    assert result.errors == []
    assert_data(sc, target, top("<name>n</name><sub><deeper><c>v</c></deeper></sub>"))
    assert result.changes == [Change("create", "/edit-test:top/sub/deeper/c")]
    # a remove below a missing container leaves nothing behind
    target, result = edit(
        index, top("<name>n</name>"), top('<sub><a nc:operation="remove"/></sub>'), default_operation="none"
    )
    assert result.errors == [] and result.changes == []
    assert body(target) == body(datastore(top("<name>n</name>")))


def test_default_operation_replace_replaces_the_whole_datastore(
    sc: SchemaContext, index: SchemaIndex
) -> None:
    existing = top("<name>n</name><count>3</count>") + f'<root-entry xmlns="{ET}"><id>1</id></root-entry>'
    target, result = edit(index, existing, top("<name>m</name>"), default_operation="replace")
    assert result.errors == []
    assert_data(sc, target, top("<name>m</name>"))
    assert result.changes == [
        Change("replace", "/edit-test:top"),
        Change("delete", "/edit-test:root-entry[id='1']"),
    ]


def test_bad_default_operation_and_error_option(index: SchemaIndex) -> None:
    with pytest.raises(QsdnError) as exc:
        edit(index, "", "", default_operation="delete")
    assert exc.value.first.tag == "invalid-value"
    with pytest.raises(QsdnError) as exc:
        edit(index, "", "", error_option="ignore-errors")
    assert exc.value.first.info == {"bad-element": "error-option"}


# --- lists and leaf-lists -----------------------------------------------------------------------------
def test_keys_in_any_order_are_written_first(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(index, "", top("<pair><note>n</note><b>2</b><a>x</a></pair>"))
    assert result.errors == []
    entry = target[0][0]
    assert [etree.QName(c).localname for c in entry] == ["a", "b", "note"]
    assert result.changes == [Change("create", "/edit-test:top/pair[a='x'][b='2']")]
    assert_data(sc, target, top("<pair><a>x</a><b>2</b><note>n</note></pair>"))


def test_list_entries_are_matched_on_all_keys_by_value(sc: SchemaContext, index: SchemaIndex) -> None:
    existing = top("<pair><a>x</a><b>2</b><note>first</note></pair><pair><a>x</a><b>3</b></pair>")
    target, result = edit(index, existing, top("<pair><b>02</b><a>x</a><note>second</note></pair>"))
    assert result.errors == []
    assert result.changes == [Change("merge", "/edit-test:top/pair[a='x'][b='02']/note")]
    assert_data(sc, target, existing.replace("first", "second"))


@pytest.mark.parametrize(
    ("entry", "path", "missing"),
    [
        ("<item><value>1</value></item>", "/edit-test:top/item", "id"),
        ("<pair><a>x</a></pair>", "/edit-test:top/pair[a='x']", "b"),
        ("<pair><b>1</b></pair>", "/edit-test:top/pair", "a"),
    ],
)
def test_missing_key(index: SchemaIndex, entry: str, path: str, missing: str) -> None:
    for op in ("merge", "delete"):
        _, result = edit(index, "", top(entry.replace(">", f' nc:operation="{op}">', 1)))
        assert errors(result) == [("missing-element", path, {"bad-element": missing})]


def test_key_given_twice(index: SchemaIndex) -> None:
    _, result = edit(index, "", top("<item><id>a</id><id>b</id></item>"))
    assert errors(result) == [("bad-element", "/edit-test:top/item", {"bad-element": "id"})]


@pytest.mark.parametrize(
    ("entry_op", "key_op", "ok"),
    [
        ("merge", "merge", True),
        ("merge", "replace", True),
        ("create", "create", True),
        ("create", "merge", True),
        ("delete", "delete", True),
        ("delete", "remove", True),
        ("merge", "delete", False),
        ("merge", "create", False),
        ("replace", "remove", False),
        ("delete", "merge", False),
    ],
)
def test_operation_on_a_key_leaf(index: SchemaIndex, entry_op: str, key_op: str, ok: bool) -> None:
    existing = top("<item><id>a</id></item>") if entry_op == "delete" else ""
    _, result = edit(
        index, existing, top(f'<item nc:operation="{entry_op}"><id nc:operation="{key_op}">a</id></item>')
    )
    if ok:
        assert result.errors == []
    else:
        assert errors(result) == [
            ("bad-attribute", "/edit-test:top/item", {"bad-attribute": "operation", "bad-element": "id"})
        ]


def test_duplicate_entries_in_one_edit(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(
        index, "", top("<item><id>a</id><value>1</value></item><item><id>a</id><tag>t</tag></item>")
    )
    assert result.errors == []
    assert_data(sc, target, top("<item><id>a</id><value>1</value><tag>t</tag></item>"))
    _, result = edit(
        index,
        "",
        top('<item nc:operation="create"><id>a</id></item><item nc:operation="create"><id>a</id></item>'),
    )
    assert errors(result) == [("data-exists", "/edit-test:top/item[id='a']", {})]


def test_leaf_or_container_given_twice(index: SchemaIndex) -> None:
    _, result = edit(index, "", top("<name>a</name><name>b</name>"))
    assert errors(result) == [("bad-element", "/edit-test:top/name", {"bad-element": "name"})]


def test_leaf_list_entries_are_matched_by_value(sc: SchemaContext, index: SchemaIndex) -> None:
    existing = top("<slist>1</slist><slist>2</slist>")
    target, result = edit(index, existing, top('<slist>3</slist><slist nc:operation="delete">02</slist>'))
    assert result.errors == []
    assert_data(sc, target, top("<slist>1</slist><slist>3</slist>"))
    assert result.changes == [
        Change("create", "/edit-test:top/slist[.='3']"),
        Change("delete", "/edit-test:top/slist[.='02']"),
    ]


# --- ordered-by user ------------------------------------------------------------------------------------
ORDERED = top("".join(f"<ordered><name>{n}</name></ordered>" for n in "abc"))
OLIST = top("".join(f"<olist>{n}</olist>" for n in "abc"))


def order(target: etree._Element, name: str) -> list[str]:
    out: list[str] = []
    for el in target.iter(f"{{{ET}}}{name}"):
        out.append(el.text if name == "olist" else el[0].text)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ("", ["a", "b", "c", "d"]),
        ('yang:insert="last"', ["a", "b", "c", "d"]),
        ('yang:insert="first"', ["d", "a", "b", "c"]),
        ('yang:insert="before" yang:key="[name=\'b\']"', ["a", "d", "b", "c"]),
        ('yang:insert="after" yang:key="[name=\'b\']"', ["a", "b", "d", "c"]),
        ('yang:insert="after" yang:key="[et:name = \'c\']"', ["a", "b", "c", "d"]),
    ],
)
def test_insert_new_list_entry(
    sc: SchemaContext, index: SchemaIndex, attrs: str, expected: list[str]
) -> None:
    target, result = edit(index, ORDERED, top(f"<ordered {attrs}><name>d</name></ordered>"))
    assert result.errors == []
    assert order(target, "ordered") == expected
    assert result.changes == [Change("create", "/edit-test:top/ordered[name='d']")]
    canon(sc, body(target))


@pytest.mark.parametrize(
    ("attrs", "expected", "moved"),
    [
        ("", ["a", "b", "c"], False),
        ('yang:insert="first"', ["c", "a", "b"], True),
        ('yang:insert="last"', ["a", "b", "c"], False),
        ('yang:insert="before" yang:key="[name=\'a\']"', ["c", "a", "b"], True),
        ('yang:insert="after" yang:key="[name=\'b\']"', ["a", "b", "c"], False),
        ('yang:insert="after" yang:key="[name=\'c\']"', ["a", "b", "c"], False),
    ],
)
def test_move_existing_list_entry(index: SchemaIndex, attrs: str, expected: list[str], moved: bool) -> None:
    target, result = edit(index, ORDERED, top(f"<ordered {attrs}><name>c</name></ordered>"))
    assert result.errors == []
    assert order(target, "ordered") == expected
    assert result.changes == ([Change("merge", "/edit-test:top/ordered[name='c']")] if moved else [])


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ('yang:insert="first"', ["d", "a", "b", "c"]),
        ('yang:insert="before" yang:value="c"', ["a", "b", "d", "c"]),
        ('yang:insert="after" yang:value="a"', ["a", "d", "b", "c"]),
    ],
)
def test_insert_leaf_list_entry(index: SchemaIndex, attrs: str, expected: list[str]) -> None:
    target, result = edit(index, OLIST, top(f"<olist {attrs}>d</olist>"))
    assert result.errors == []
    assert order(target, "olist") == expected
    target, result = edit(index, OLIST, top('<olist yang:insert="first">c</olist>'))
    assert order(target, "olist") == ["c", "a", "b"]
    assert result.changes == [Change("merge", "/edit-test:top/olist[.='c']")]


def test_insert_with_two_keys(index: SchemaIndex) -> None:
    existing = top("<ordered2><x>p</x><y>1</y></ordered2><ordered2><x>p</x><y>2</y></ordered2>")
    target, result = edit(
        index,
        existing,
        top("<ordered2 yang:insert=\"before\" yang:key=\"[x='p'][y='02']\"><y>3</y><x>q</x></ordered2>"),
    )
    assert result.errors == []
    assert [(e[0].text, e[1].text) for e in target.iter(f"{{{ET}}}ordered2")] == [
        ("p", "1"),
        ("q", "3"),
        ("p", "2"),
    ]


@pytest.mark.parametrize(
    ("entry", "tag", "path", "info", "app_tag"),
    [
        (
            '<ordered yang:insert="after" yang:key="[name=\'zz\']"><name>d</name></ordered>',
            "bad-attribute",
            "/edit-test:top/ordered[name='d']",
            {"bad-attribute": "key", "bad-element": "ordered"},
            "missing-instance",
        ),
        (
            '<olist yang:insert="before" yang:value="zz">d</olist>',
            "bad-attribute",
            "/edit-test:top/olist[.='d']",
            {"bad-attribute": "value", "bad-element": "olist"},
            "missing-instance",
        ),
        (
            '<ordered yang:insert="after"><name>d</name></ordered>',
            "missing-attribute",
            "/edit-test:top/ordered",
            {"bad-attribute": "key", "bad-element": "ordered"},
            None,
        ),
        (
            '<ordered yang:insert="middle"><name>d</name></ordered>',
            "bad-attribute",
            "/edit-test:top/ordered",
            {"bad-attribute": "insert", "bad-element": "ordered"},
            None,
        ),
        (
            '<ordered yang:insert="after" yang:key="[nom=\'a\']"><name>d</name></ordered>',
            "bad-attribute",
            "/edit-test:top/ordered[name='d']",
            {"bad-attribute": "key", "bad-element": "ordered"},
            None,
        ),
        (
            '<ordered2 yang:insert="after" yang:key="[x=\'a\']"><x>d</x><y>1</y></ordered2>',
            "bad-attribute",
            "/edit-test:top/ordered2[x='d'][y='1']",
            {"bad-attribute": "key", "bad-element": "ordered2"},
            None,
        ),
        (
            '<item yang:insert="first"><id>d</id></item>',
            "unknown-attribute",
            "/edit-test:top/item",
            {"bad-attribute": "insert", "bad-element": "item"},
            None,
        ),
        (
            '<slist yang:insert="first">1</slist>',
            "unknown-attribute",
            "/edit-test:top/slist",
            {"bad-attribute": "insert", "bad-element": "slist"},
            None,
        ),
        (
            '<ordered yang:insert="after" yang:value="a"><name>d</name></ordered>',
            "unknown-attribute",
            "/edit-test:top/ordered",
            {"bad-attribute": "value", "bad-element": "ordered"},
            None,
        ),
        (
            '<name yang:key="x">n</name>',
            "unknown-attribute",
            "/edit-test:top/name",
            {"bad-attribute": "key", "bad-element": "name"},
            None,
        ),
    ],
)
def test_insert_errors(
    index: SchemaIndex, entry: str, tag: str, path: str, info: dict[str, str], app_tag: str | None
) -> None:
    _, result = edit(index, ORDERED[:-6] + "<olist>a</olist></top>", top(entry))
    assert errors(result) == [(tag, path, info)]
    assert result.errors[0].app_tag == app_tag


def test_replace_of_the_parent_puts_entries_in_edit_order(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(
        index,
        ORDERED,
        top(
            "<ordered><name>c</name></ordered><ordered><name>a</name></ordered><olist>z</olist>",
            attrs=' nc:operation="replace"',
        ),
    )
    assert result.errors == []
    assert order(target, "ordered") == ["c", "a"]
    assert result.changes == [Change("replace", "/edit-test:top")]
    assert_data(
        sc, target, top("<ordered><name>c</name></ordered><ordered><name>a</name></ordered><olist>z</olist>")
    )


# --- choice and case ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("existing", "edit_xml", "expected", "deleted"),
    [
        (
            "<tcp-port>1</tcp-port><tcp-nodelay>true</tcp-nodelay><name>n</name>",
            "<udp-port>2</udp-port>",
            "<udp-port>2</udp-port><name>n</name>",
            ["/edit-test:top/tcp-port", "/edit-test:top/tcp-nodelay"],
        ),
        (
            "<udp-port>2</udp-port>",
            "<local-socket>/run/s</local-socket>",
            "<local-socket>/run/s</local-socket>",
            ["/edit-test:top/udp-port"],
        ),
        ("<i1>x</i1>", "<i2><z>y</z></i2>", "<i2><z>y</z></i2>", ["/edit-test:top/i1"]),
        ("<i2><z>y</z></i2>", "<tcp-port>3</tcp-port>", "<tcp-port>3</tcp-port>", ["/edit-test:top/i2"]),
        (
            "<tcp-port>1</tcp-port>",
            "<tcp-nodelay>false</tcp-nodelay>",
            "<tcp-port>1</tcp-port><tcp-nodelay>false</tcp-nodelay>",
            [],
        ),
    ],
)
def test_creating_a_case_deletes_the_other_cases(
    sc: SchemaContext, index: SchemaIndex, existing: str, edit_xml: str, expected: str, deleted: list[str]
) -> None:
    target, result = edit(index, top(existing), top(edit_xml))
    assert result.errors == []
    assert_data(sc, target, top(expected))
    assert [c for c in result.changes if c.operation == "delete"] == [Change("delete", p) for p in deleted]


def test_two_cases_in_one_edit(index: SchemaIndex) -> None:
    _, result = edit(index, "", top("<tcp-port>1</tcp-port><udp-port>2</udp-port>"))
    assert errors(result) == [("bad-element", "/edit-test:top/udp-port", {"bad-element": "udp-port"})]
    _, result = edit(index, "", top("<i1>1</i1><i2><z>2</z></i2>"))
    assert errors(result) == [("bad-element", "/edit-test:top/i2", {"bad-element": "i2"})]


def test_deleting_one_case_while_creating_another(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(
        index, top("<tcp-port>1</tcp-port>"), top('<tcp-port nc:operation="delete"/><udp-port>2</udp-port>')
    )
    assert result.errors == []
    assert_data(sc, target, top("<udp-port>2</udp-port>"))


# --- empty leaves, values, text --------------------------------------------------------------------------
def test_empty_leaf(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(index, top("<name>n</name>"), top("<flag>ignored</flag>"))
    assert result.errors == []
    flag = target.find(f".//{{{ET}}}flag")
    assert flag is not None and flag.text is None
    assert result.changes == [Change("create", "/edit-test:top/flag")]
    assert_data(sc, target, top("<name>n</name><flag/>"))
    _, result = edit(index, body(target).decode(), top("<flag/>"))
    assert result.changes == []
    target, result = edit(index, body(target).decode(), top('<flag nc:operation="delete">whatever</flag>'))
    assert result.changes == [Change("delete", "/edit-test:top/flag")]
    assert_data(sc, target, top("<name>n</name>"))


def test_leaf_text_is_kept_as_given(index: SchemaIndex) -> None:
    for existing in ("", top("<count>1</count>"), top("<name>old</name>")):
        target, result = edit(index, existing, top("<name>  spaced out  </name>"))
        assert result.errors == []
        name = target.find(f".//{{{ET}}}name")
        assert name is not None and name.text == "  spaced out  "


def test_whitespace_in_containers_is_ignored(sc: SchemaContext, index: SchemaIndex) -> None:
    target = datastore("")
    result = apply_edit(index, target, config(top("\n  <sub>\n    <a>x</a>\n  </sub>\n"), blank=True))
    assert result.errors == []
    assert_data(sc, target, top("<sub><a>x</a></sub>"))


@pytest.mark.parametrize(
    ("xml", "path", "bad"),
    [
        (top("<sub>text<a>x</a></sub>"), "/edit-test:top/sub", "sub"),
        (top("<name><a>x</a></name>"), "/edit-test:top/name", "name"),
        (top("<item><id>a<b/></id></item>"), "/edit-test:top/item", "id"),
    ],
)
def test_misplaced_content(index: SchemaIndex, xml: str, path: str, bad: str) -> None:
    _, result = edit(index, "", xml)
    assert errors(result) == [("bad-element", path, {"bad-element": bad})]


def test_comments_are_ignored(sc: SchemaContext, index: SchemaIndex) -> None:
    for existing in ("", top("<count>1</count>")):
        target, result = edit(index, existing, top("<!-- a comment --><sub><a>n</a><!-- x --></sub><?pi x?>"))
        assert result.errors == []
        assert target.xpath("//comment() | //processing-instruction()") == []
        assert_data(
            sc,
            target,
            existing[:-6] + "<sub><a>n</a></sub></top>" if existing else top("<sub><a>n</a></sub>"),
        )


# --- identities keep their meaning --------------------------------------------------------------------
def test_identity_prefix_declared_on_rpc(sc: SchemaContext, index: SchemaIndex) -> None:
    # t: is declared on <rpc>, four levels above the leaf
    target, result = edit(
        index, "", top("<kind>t:PHYS</kind><kinds>t:VIRT</kinds><by-kind><kind>t:PHYS</kind></by-kind>")
    )
    assert result.errors == []
    kind = target.find(f".//{{{ET}}}kind")
    assert kind is not None and kind.text == "t:PHYS" and kind.nsmap["t"] == TYPES
    expected = (
        f'<top xmlns="{ET}" xmlns:x="{TYPES}"><kind>x:PHYS</kind><kinds>x:VIRT</kinds>'
        "<by-kind><kind>x:PHYS</kind></by-kind></top>"
    )
    assert_data(sc, target, expected)
    # the same identity written with another prefix is no change; another identity is
    stored = body(target).decode()
    _, result = edit(
        index,
        stored,
        f'<top xmlns="{ET}" xmlns:o="{TYPES}"><kind>o:PHYS</kind><kinds>o:VIRT</kinds>'
        "<by-kind><kind>o:PHYS</kind></by-kind></top>",
    )
    assert result.errors == [] and result.changes == []
    target, result = edit(
        index, stored, top("<kind>t:VIRT</kind><by-kind><kind>t:PHYS</kind><v>1</v></by-kind>")
    )
    assert result.changes == [
        Change("merge", "/edit-test:top/kind"),
        Change("create", "/edit-test:top/by-kind[kind='edit-test-types:PHYS']/v"),
    ]
    assert_data(
        sc,
        target,
        expected.replace("<kind>x:PHYS</kind><kinds>", "<kind>x:VIRT</kind><kinds>").replace(
            "</kind></by-kind>", "</kind><v>1</v></by-kind>"
        ),
    )


LOCAL = f'<top xmlns="{ET}" xmlns:q="{ET}">{{}}</top>'


@pytest.mark.parametrize(
    ("existing", "edit_xml", "expected"),
    [
        # a prefix bound to the namespace the target already declares (here as the default one)
        ("", "<kind>et:local-kind</kind>", "<kind>q:local-kind</kind>"),
        ("<name>n</name>", "<kind>et:local-kind</kind>", "<name>n</name><kind>q:local-kind</kind>"),
        ("<kind>t:PHYS</kind>", "<kind>et:local-kind</kind>", "<kind>q:local-kind</kind>"),
        (
            "<name>n</name>",
            "<by-kind><v>1</v><kind>et:local-kind</kind></by-kind>",
            "<name>n</name><by-kind><kind>q:local-kind</kind><v>1</v></by-kind>",
        ),
        (
            "",
            "<by-kind><v>1</v><kind>et:local-kind</kind></by-kind>",
            "<by-kind><kind>q:local-kind</kind><v>1</v></by-kind>",
        ),
        (
            "<okinds>t:PHYS</okinds>",
            '<okinds yang:insert="first">et:local-kind</okinds>',
            "<okinds>q:local-kind</okinds><okinds>t:PHYS</okinds>",
        ),
        ("", "<target-ref>/et:top/et:name</target-ref>", "<target-ref>/q:top/q:name</target-ref>"),
    ],
)
def test_prefix_bound_to_a_namespace_in_scope(
    sc: SchemaContext, index: SchemaIndex, existing: str, edit_xml: str, expected: str
) -> None:
    """lxml drops a declaration an ancestor repeats when it moves an element; values must survive."""
    target, result = edit(index, top(existing).replace("<top ", f'<top xmlns:t="{TYPES}" '), top(edit_xml))
    assert result.errors == []
    assert_data(sc, target, LOCAL.format(expected).replace("<top ", f'<top xmlns:t="{TYPES}" '))


def test_moving_an_identity_leaf_list_entry_keeps_its_value(sc: SchemaContext, index: SchemaIndex) -> None:
    existing = top("<okinds>t:PHYS</okinds>", attrs=f' xmlns:t="{TYPES}"')
    target, result = edit(index, existing, top("<okinds>et:local-kind</okinds>"))
    stored = body(target).decode()
    target, result = edit(index, stored, top('<okinds yang:insert="first">et:local-kind</okinds>'))
    assert result.errors == []
    assert result.changes == [Change("merge", "/edit-test:top/okinds[.='edit-test:local-kind']")]
    assert_data(
        sc,
        target,
        LOCAL.format("<okinds>q:local-kind</okinds><okinds>x:PHYS</okinds>").replace(
            "<top ", f'<top xmlns:x="{TYPES}" '
        ),
    )


def test_identity_from_the_augmenting_module_and_union(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(
        index,
        "",
        f'<top xmlns="{ET}" xmlns:a="{AUG}"><kind>a:AUG</kind><kind-or-number>t:VIRT</kind-or-number></top>',
    )
    assert result.errors == []
    assert_data(
        sc,
        target,
        f'<top xmlns="{ET}"><kind xmlns:q="{AUG}">q:AUG</kind>'
        f'<kind-or-number xmlns:r="{TYPES}">r:VIRT</kind-or-number></top>',
    )


def test_instance_identifier_keeps_its_prefixes(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(index, "", top("<target-ref>/et:top/et:name</target-ref>"))
    assert result.errors == []
    assert_data(
        sc, target, top("<target-ref>/et:top/et:name</target-ref>").replace("<top ", f'<top xmlns:et="{ET}" ')
    )


# --- augments, anydata, state data, unknown things --------------------------------------------------------
def test_augmented_nodes(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(
        index,
        top("<item><id>a</id></item>"),
        top(
            f'<item><id>a</id><extra xmlns="{AUG}"><note>n</note></extra></item>'
            f'<top-aug xmlns="{AUG}">x</top-aug>'
        ),
    )
    assert result.errors == []
    assert result.changes == [
        Change("create", "/edit-test:top/item[id='a']/edit-test-aug:extra/note"),
        Change("create", "/edit-test:top/edit-test-aug:top-aug"),
    ]
    assert_data(
        sc,
        target,
        top(
            f'<item><id>a</id><extra xmlns="{AUG}"><note>n</note></extra></item>'
            f'<top-aug xmlns="{AUG}">x</top-aug>'
        ),
    )


def test_anydata(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(
        index, "", top('<blob nc:operation="merge"><anything xmlns="urn:x">1</anything></blob>')
    )
    assert result.errors == []
    blob = target.find(f".//{{{ET}}}blob")
    assert blob is not None and blob.get(f"{{{NC}}}operation") is None
    target, result = edit(index, body(target).decode(), top('<blob><other xmlns="urn:x"/></blob>'))
    assert result.changes == [Change("merge", "/edit-test:top/blob")]


@pytest.mark.parametrize(
    ("xml", "path", "bad"),
    [
        (top("<counter>1</counter>"), "/edit-test:top/counter", "counter"),
        (
            top("<item><id>a</id><stats><hits>1</hits></stats></item>"),
            "/edit-test:top/item[id='a']/stats",
            "stats",
        ),
        (f'<state xmlns="{ET}"><uptime>1</uptime></state>', "/edit-test:state", "state"),
        (top('<counter nc:operation="delete"/>'), "/edit-test:top/counter", "counter"),
    ],
)
def test_state_data_cannot_be_edited(index: SchemaIndex, xml: str, path: str, bad: str) -> None:
    _, result = edit(index, "", xml)
    assert errors(result) == [("invalid-value", path, {"bad-element": bad})]


@pytest.mark.parametrize(
    ("xml", "tag", "path", "info"),
    [
        (top("<nope/>"), "unknown-element", "/edit-test:top/nope", {"bad-element": "nope"}),
        (
            top('<thing xmlns="urn:nowhere"/>'),
            "unknown-namespace",
            "/edit-test:top",
            {"bad-element": "thing", "bad-namespace": "urn:nowhere"},
        ),
        (
            top(f'<item><id>a</id><nope xmlns="{AUG}"/></item>'),
            "unknown-element",
            "/edit-test:top/item[id='a']/edit-test-aug:nope",
            {"bad-element": "nope"},
        ),
        (f'<nope xmlns="{ET}"/>', "unknown-element", "/edit-test:nope", {"bad-element": "nope"}),
        (top("<transport/>"), "unknown-element", "/edit-test:top/transport", {"bad-element": "transport"}),
        (
            top('<sub nc:operation="delete"><nope/></sub>'),
            "unknown-element",
            "/edit-test:top/sub/nope",
            {"bad-element": "nope"},
        ),
    ],
)
def test_unknown_elements(index: SchemaIndex, xml: str, tag: str, path: str, info: dict[str, str]) -> None:
    _, result = edit(index, top("<sub><a>1</a></sub>"), xml)
    assert errors(result) == [(tag, path, info)]


@pytest.mark.parametrize(
    ("xml", "tag", "info"),
    [
        (
            top('<name nc:operation="purge">n</name>'),
            "bad-attribute",
            {"bad-attribute": "operation", "bad-element": "name"},
        ),
        (
            top('<name operation="merge">n</name>'),
            "unknown-attribute",
            {"bad-attribute": "operation", "bad-element": "name"},
        ),
        (
            top('<name nc:other="1">n</name>'),
            "unknown-attribute",
            {"bad-attribute": "other", "bad-element": "name"},
        ),
        (
            top('<name yang:other="1">n</name>'),
            "unknown-attribute",
            {"bad-attribute": "other", "bad-element": "name"},
        ),
    ],
)
def test_attribute_errors(index: SchemaIndex, xml: str, tag: str, info: dict[str, str]) -> None:
    _, result = edit(index, "", xml)
    assert errors(result) == [(tag, "/edit-test:top/name", info)]


def test_attributes_of_other_modules_are_ignored(index: SchemaIndex) -> None:
    _, result = edit(
        index,
        "",
        top('<name xmlns:o="urn:ietf:params:xml:ns:yang:ietf-origin" o:origin="o:intended">n</name>'),
    )
    assert result.errors == []


def test_operation_inside_delete_must_agree(index: SchemaIndex) -> None:
    existing = top("<sub><a>1</a></sub>")
    _, result = edit(index, existing, top('<sub nc:operation="delete"><a nc:operation="create">1</a></sub>'))
    assert errors(result) == [
        ("bad-attribute", "/edit-test:top/sub/a", {"bad-attribute": "operation", "bad-element": "a"})
    ]
    _, result = edit(index, existing, top('<sub nc:operation="delete"><a nc:operation="remove"/></sub>'))
    assert result.errors == [] and result.changes == [Change("delete", "/edit-test:top/sub")]


def test_nested_operations(sc: SchemaContext, index: SchemaIndex) -> None:
    existing = top("<sub><a>1</a><b>2</b></sub><name>n</name>")
    target, result = edit(
        index,
        existing,
        top('<sub nc:operation="replace"><a nc:operation="delete"/><deeper><c>x</c></deeper></sub>'),
    )
    assert result.errors == []
    assert_data(sc, target, top("<sub><deeper><c>x</c></deeper></sub><name>n</name>"))
    assert result.changes == [Change("replace", "/edit-test:top/sub")]
    _, result = edit(index, "", top('<sub nc:operation="create"><a nc:operation="delete"/></sub>'))
    assert errors(result) == [("data-missing", "/edit-test:top/sub/a", {})]


def test_non_presence_container_without_data(sc: SchemaContext, index: SchemaIndex) -> None:
    target, result = edit(index, top("<name>n</name>"), top("<sub/>"))
    assert result.errors == [] and result.changes == []
    _, result = edit(index, top("<name>n</name>"), top('<sub nc:operation="delete"/>'))
    assert errors(result) == [("data-missing", "/edit-test:top/sub", {})]
    # an empty element left in the datastore does not make the container exist
    target, result = edit(
        index, top("<name>n</name><sub/>"), top('<sub nc:operation="create"><a>1</a></sub>')
    )
    assert result.errors == []
    assert result.changes == [Change("create", "/edit-test:top/sub/a")]
    assert_data(sc, target, top("<name>n</name><sub><a>1</a></sub>"))


# --- error-option -------------------------------------------------------------------------------------
BAD_AND_GOOD = top(
    "<name>n</name><nope/><item><id>a</id><counter>1</counter><value>1</value></item>"
    '<slist nc:operation="delete">9</slist><count>4</count>'
)


def test_continue_on_error_collects_errors_and_applies_the_rest(
    sc: SchemaContext, index: SchemaIndex
) -> None:
    target, result = edit(index, top("<slist>1</slist>"), BAD_AND_GOOD, error_option="continue-on-error")
    assert errors(result) == [
        ("unknown-element", "/edit-test:top/nope", {"bad-element": "nope"}),
        ("unknown-element", "/edit-test:top/item[id='a']/counter", {"bad-element": "counter"}),
        ("data-missing", "/edit-test:top/slist[.='9']", {}),
    ]
    assert_data(
        sc,
        target,
        top("<name>n</name><item><id>a</id><value>1</value></item><slist>1</slist><count>4</count>"),
    )


def test_continue_on_error_inside_a_replace_keeps_the_failed_subtree(
    sc: SchemaContext, index: SchemaIndex
) -> None:
    existing = top(
        "<item><id>a</id><value>1</value></item><item><id>b</id></item><slist>1</slist><name>n</name>"
    )
    target, result = edit(
        index,
        existing,
        top(
            '<item nc:operation="purge"><id>a</id></item><slist yang:insert="first">1</slist><name>m</name>',
            attrs=' nc:operation="replace"',
        ),
        error_option="continue-on-error",
    )
    assert [e.tag for e in result.errors] == ["bad-attribute", "unknown-attribute"]
    assert_data(sc, target, top("<item><id>a</id><value>1</value></item><slist>1</slist><name>m</name>"))
    assert result.changes == [Change("replace", "/edit-test:top")]


@pytest.mark.parametrize("option", ["stop-on-error", "rollback-on-error"])
def test_stop_at_the_first_error(index: SchemaIndex, option: str) -> None:
    target, result = edit(index, top("<slist>1</slist>"), BAD_AND_GOOD, error_option=option)
    assert errors(result) == [("unknown-element", "/edit-test:top/nope", {"bad-element": "nope"})]
    assert target.find(f".//{{{ET}}}count") is None


# --- the real ETSI GS QKD 015 module ------------------------------------------------------------------
ETSI_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
ETSI_TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"


@pytest.fixture(scope="module")
def etsi(tmp_path_factory: pytest.TempPathFactory) -> tuple[SchemaContext, SchemaIndex, bool]:
    """The project's ETSI modules (with the qsdn augment) or, until they exist, the reference variant."""
    if (YANG_DIR / "etsi-qkd-sdn-node@2022-01-30.yang").is_file():
        modules: list[tuple[str, tuple[str, ...]]] = [("etsi-qkd-node-types", ()), ("etsi-qkd-sdn-node", ())]
        with_emulation = (YANG_DIR / "qsdn-qkd-emulation@2026-11-28.yang").is_file()
        if with_emulation:
            modules.append(("qsdn-qkd-emulation", ()))
        sc = SchemaContext(modules=modules, search_dirs=[YANG_DIR, *ietf_module_dirs()])
        return sc, SchemaIndex(sc), with_emulation
    variant = REFERENCE / "variants" / "tfs-mock-qkd-node" / "etsi-qkd-sdn-node@2022-01-30.yang"
    if not variant.is_file():
        pytest.skip("no ETSI GS QKD 015 module available")
    d = tmp_path_factory.mktemp("etsi-yang")
    shutil.copy(variant, d)
    for name in (
        "etsi-qkd-node-types@2022-01-30.yang",
        "ietf-inet-types@2013-07-15.yang",
        "ietf-yang-types@2013-07-15.yang",
    ):
        shutil.copy(REFERENCE / name, d)
    sc = SchemaContext(modules=[("etsi-qkd-node-types", ()), ("etsi-qkd-sdn-node", ())], search_dirs=[d])
    return sc, SchemaIndex(sc), False


def test_etsi_create_physical_link(etsi: tuple[SchemaContext, SchemaIndex, bool]) -> None:
    sc, index, with_emulation = etsi
    link_id = "00000000-0000-0000-0000-000000000099"
    node = f'<qkd_node xmlns="{ETSI_NS}"><qkdn_id>10000000-0000-0000-0000-000000000001</qkdn_id></qkd_node>'
    rpc = etree.fromstring(
        f'<rpc xmlns="{NC}" xmlns:types="{ETSI_TYPES_NS}" message-id="7">'
        "<edit-config><target><running/></target>"
        f'<config><qkd_node xmlns="{ETSI_NS}"><qkd_links><qkd_link><qkdl_id>{link_id}</qkdl_id>'
        "<qkdl_enable>true</qkdl_enable>"
        "<qkdl_local><qkdn_id>10000000-0000-0000-0000-000000000001</qkdn_id><qkdi_id>1</qkdi_id></qkdl_local>"
        "<qkdl_remote><qkdn_id>20000000-0000-0000-0000-000000000002</qkdn_id><qkdi_id>2</qkdi_id></qkdl_remote>"
        "<qkdl_type>types:PHYS</qkdl_type><phys_wavelength>1550</phys_wavelength>"
        "</qkd_link></qkd_links></qkd_node></config></edit-config></rpc>"
    )
    cfg = rpc.find(f".//{{{NC}}}config")
    assert cfg is not None
    target = datastore(node)
    result = apply_edit(index, target, cfg)
    assert result.errors == []
    # qkd_links is a non-presence container: the link is what was created
    assert result.changes == [
        Change("create", f"/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='{link_id}']")
    ]
    printed = sc.canonical_config(body(target))
    assert "PHYS</qkdl_type>" in printed and "<phys_wavelength>1550</phys_wavelength>" in printed

    # delete it again, with default-operation none
    again = apply_edit(
        index,
        target,
        config(
            f'<qkd_node xmlns="{ETSI_NS}"><qkd_links><qkd_link nc:operation="delete"><qkdl_id>{link_id}'
            "</qkdl_id></qkd_link></qkd_links></qkd_node>"
        ),
        default_operation="none",
    )
    assert again.errors == []
    assert again.changes == [
        Change("delete", f"/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='{link_id}']")
    ]

    if with_emulation:
        bad = apply_edit(
            index,
            datastore(node),
            config(
                f'<qkd_node xmlns="{ETSI_NS}"><qkd_links><qkd_link><qkdl_id>x</qkdl_id>'
                '<qsdn_phys xmlns="urn:qsdn:yang:qsdn-qkd-emulation"/></qkd_link></qkd_links></qkd_node>'
            ),
        )
        assert errors(bad) == [
            (
                "invalid-value",
                "/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='x']/qsdn-qkd-emulation:qsdn_phys",
                {"bad-element": "qsdn_phys"},
            )
        ]
