"""RFC 6241 section 6 subtree filtering, with the RFC's examples (section 6.4) as tests."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from qsdn.netconf.subtree import apply_subtree_filter

CONFIG_NS = "http://example.com/schema/1.2/config"
STATS_NS = "http://example.com/schema/1.2/stats"

_BLANKLESS = etree.XMLParser(remove_blank_text=True)

# The fully populated <users> data model of RFC 6241 section 6.4.3.
USERS = f"""
<top xmlns="{CONFIG_NS}">
  <users>
    <user>
      <name>root</name>
      <type>superuser</type>
      <full-name>Charlie Root</full-name>
      <company-info><dept>1</dept><id>1</id></company-info>
    </user>
    <user>
      <name>fred</name>
      <type>admin</type>
      <full-name>Fred Flintstone</full-name>
      <company-info><dept>2</dept><id>2</id></company-info>
    </user>
    <user>
      <name>barney</name>
      <type>admin</type>
      <full-name>Barney Rubble</full-name>
      <company-info><dept>2</dept><id>3</id></company-info>
    </user>
  </users>
</top>
"""

# Section 6.4.8, with a second interface and a second data tree in another namespace.
STATS = f"""
<t:top xmlns:t="{STATS_NS}">
  <t:interfaces>
    <t:interface t:ifName="eth0">
      <t:ifInOctets>45621</t:ifInOctets><t:ifOutOctets>774344</t:ifOutOctets>
    </t:interface>
    <t:interface t:ifName="eth1"><t:ifInOctets>1</t:ifInOctets><t:ifOutOctets>2</t:ifOutOctets></t:interface>
  </t:interfaces>
</t:top>
"""

STATS_CHILD = f"""
<top xmlns="{STATS_NS}">
  <interfaces>
    <interface><ifName>eth0</ifName><ifInOctets>45621</ifInOctets></interface>
    <interface><ifName>eth1</ifName><ifInOctets>1</ifInOctets></interface>
  </interfaces>
</top>
"""


def xml(text: str) -> etree._Element:
    return etree.fromstring(text.strip().encode(), _BLANKLESS)


def shape(el: etree._Element) -> Any:
    """Structure for comparison: tag, attributes, trimmed text, children (prefixes ignored)."""
    attrs = {str(k): str(v) for k, v in el.attrib.items()}
    return (el.tag, attrs, (el.text or "").strip(), [shape(child) for child in el])


def run(data: list[str], filter_body: str) -> list[Any]:
    roots = [xml(text) for text in data]
    before = [etree.tostring(root) for root in roots]
    filter_el = xml(
        f'<filter xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" type="subtree">{filter_body}</filter>'
    )
    result = apply_subtree_filter(roots, filter_el)
    assert [etree.tostring(root) for root in roots] == before, "input was modified"
    return [shape(el) for el in result]


def expect(*data: str) -> list[Any]:
    return [shape(xml(text)) for text in data]


def users(*entries: str) -> str:
    return f'<top xmlns="{CONFIG_NS}"><users>{"".join(entries)}</users></top>'


ROOT_FULL = (
    "<user><name>root</name><type>superuser</type><full-name>Charlie Root</full-name>"
    "<company-info><dept>1</dept><id>1</id></company-info></user>"
)
FRED_FULL = (
    "<user><name>fred</name><type>admin</type><full-name>Fred Flintstone</full-name>"
    "<company-info><dept>2</dept><id>2</id></company-info></user>"
)
BARNEY_FULL = (
    "<user><name>barney</name><type>admin</type><full-name>Barney Rubble</full-name>"
    "<company-info><dept>2</dept><id>3</id></company-info></user>"
)

ALL_NAMES = expect(
    users(
        "<user><name>root</name></user>", "<user><name>fred</name></user>", "<user><name>barney</name></user>"
    )
)

RFC_EXAMPLES = [
    pytest.param("", [], id="6.4.2-empty-filter"),
    pytest.param(f'<top xmlns="{CONFIG_NS}"><users/></top>', expect(USERS), id="6.4.3-users-subtree"),
    pytest.param(
        f'<top xmlns="{CONFIG_NS}"><users><user/></users></top>', expect(USERS), id="6.4.3-users-user-subtree"
    ),
    pytest.param(
        f'<top xmlns="{CONFIG_NS}"><users><user><name/></user></users></top>',
        ALL_NAMES,
        id="6.4.4-all-names",
    ),
    pytest.param(
        f'<top xmlns="{CONFIG_NS}"><users><user><name>fred</name></user></users></top>',
        expect(users(FRED_FULL)),
        id="6.4.5-one-user",
    ),
    pytest.param(
        f'<top xmlns="{CONFIG_NS}"><users><user><name>fred</name><type/><full-name/></user></users></top>',
        expect(
            users("<user><name>fred</name><type>admin</type><full-name>Fred Flintstone</full-name></user>")
        ),
        id="6.4.6-elements-of-one-user",
    ),
    pytest.param(
        f"""<top xmlns="{CONFIG_NS}"><users>
              <user><name>root</name><company-info/></user>
              <user><name>fred</name><company-info><id/></company-info></user>
              <user><name>barney</name><type>superuser</type><company-info><dept/></company-info></user>
            </users></top>""",
        expect(
            users(
                "<user><name>root</name><company-info><dept>1</dept><id>1</id></company-info></user>",
                "<user><name>fred</name><company-info><id>2</id></company-info></user>",
            )
        ),
        id="6.4.7-multiple-subtrees",
    ),
]


@pytest.mark.parametrize(("filter_body", "expected"), RFC_EXAMPLES)
def test_rfc6241_examples(filter_body: str, expected: list[Any]) -> None:
    assert run([USERS], filter_body) == expected


def test_rfc6241_6_4_8_attribute_match() -> None:
    filter_body = (
        f'<t:top xmlns:t="{STATS_NS}"><t:interfaces><t:interface t:ifName="eth0"/></t:interfaces></t:top>'
    )
    assert run([STATS], filter_body) == expect(
        f'<t:top xmlns:t="{STATS_NS}"><t:interfaces><t:interface t:ifName="eth0">'
        "<t:ifInOctets>45621</t:ifInOctets><t:ifOutOctets>774344</t:ifOutOctets>"
        "</t:interface></t:interfaces></t:top>"
    )


def test_rfc6241_6_4_8_child_instead_of_attribute() -> None:
    filter_body = (
        f'<top xmlns="{STATS_NS}"><interfaces><interface><ifName>eth0</ifName></interface></interfaces></top>'
    )
    assert run([STATS_CHILD], filter_body) == expect(
        f'<top xmlns="{STATS_NS}"><interfaces><interface><ifName>eth0</ifName><ifInOctets>45621</ifInOctets>'
        "</interface></interfaces></top>"
    )


def test_unqualified_attribute_does_not_match_qualified_one() -> None:
    filter_body = (
        f'<t:top xmlns:t="{STATS_NS}"><t:interfaces><t:interface ifName="eth0"/></t:interfaces></t:top>'
    )
    assert run([STATS], filter_body) == []


@pytest.mark.parametrize(
    ("filter_body", "expected"),
    [
        pytest.param('<top xmlns="urn:other"/>', [], id="namespace-mismatch"),
        pytest.param('<top xmlns=""/>', expect(USERS), id="no-namespace-matches-any"),
        pytest.param("<top/>", [], id="base-namespace-is-a-namespace"),
        pytest.param(f'<top xmlns="{CONFIG_NS}"><groups/></top>', [], id="selection-of-absent-node"),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users><user><name>wilma</name></user></users></top>',
            [],
            id="content-match-fails-everywhere",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users>'
            "<user><name>barney</name><type>admin</type></user></users></top>",
            expect(users(BARNEY_FULL)),
            id="content-matches-anded-true",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users>'
            "<user><name>barney</name><type>superuser</type></user></users></top>",
            [],
            id="content-matches-anded-false",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users><user><type>admin</type></user></users></top>',
            expect(users(FRED_FULL, BARNEY_FULL)),
            id="non-key-content-match-selects-several",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users>'
            "<user><name>\n  fred  \n</name><type> </type></user></users></top>",
            expect(users("<user><name>fred</name><type>admin</type></user>")),
            id="whitespace-trimmed-and-blank-is-selection",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users><user><name>fred</name><company-info><id/></company-info>'
            "</user><user><name>fred</name><type/></user></users></top>",
            expect(
                users(
                    "<user><name>fred</name><type>admin</type><company-info><id>2</id></company-info></user>"
                )
            ),
            id="two-filters-same-instance-merged-in-data-order",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users><user><name>fred</name></user>'
            "<user><name>fred</name><type/></user></users></top>",
            expect(users(FRED_FULL)),
            id="whole-instance-wins-over-partial",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users><user><name/></user><user><name/></user></users></top>',
            ALL_NAMES,
            id="duplicate-selection-not-duplicated",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users>'
            "<user><company-info><dept>2</dept></company-info></user></users></top>",
            expect(
                users(
                    "<user><company-info><dept>2</dept><id>2</id></company-info></user>",
                    "<user><company-info><dept>2</dept><id>3</id></company-info></user>",
                )
            ),
            id="nested-content-match",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users><user><company-info>1</company-info></user></users></top>',
            [],
            id="content-match-against-container-is-false",
        ),
        pytest.param(
            f'<top xmlns="{CONFIG_NS}"><users><user><company-info><dept>9</dept></company-info><name/></user>'
            "</users></top>",
            ALL_NAMES,
            id="containment-selecting-nothing-is-dropped",
        ),
    ],
)
def test_filter_rules(filter_body: str, expected: list[Any]) -> None:
    assert run([USERS], filter_body) == expected


def test_several_top_level_trees() -> None:
    both = (
        f'<top xmlns="{CONFIG_NS}"><users><user><name>root</name><type/></user></users></top>'
        f'<top xmlns="{STATS_NS}"/>'
    )
    assert run([USERS, STATS_CHILD], both) == [
        *expect(users("<user><name>root</name><type>superuser</type></user>")),
        *expect(STATS_CHILD),
    ]
    assert run([USERS, STATS_CHILD], f'<top xmlns="{STATS_NS}"/>') == expect(STATS_CHILD)
    assert run([USERS, STATS_CHILD], '<top xmlns=""/>') == expect(USERS, STATS_CHILD)


def test_top_level_content_match_only() -> None:
    data = [f'<mode xmlns="{CONFIG_NS}">on</mode>', f'<other xmlns="{CONFIG_NS}">x</other>']
    assert run(data, f'<mode xmlns="{CONFIG_NS}">on</mode>') == expect(*data)
    assert run(data, f'<mode xmlns="{CONFIG_NS}">off</mode>') == []


def test_namespace_declarations_survive_partial_copies() -> None:
    roots = [xml(STATS)]
    filter_el = xml(
        f'<filter><t:top xmlns:t="{STATS_NS}"><t:interfaces><t:interface t:ifName="eth1">'
        "<t:ifInOctets/></t:interface></t:interfaces></t:top></filter>"
    )
    (result,) = apply_subtree_filter(roots, filter_el)
    text = etree.tostring(result).decode()
    assert text == (
        f'<t:top xmlns:t="{STATS_NS}"><t:interfaces><t:interface t:ifName="eth1">'
        "<t:ifInOctets>1</t:ifInOctets></t:interface></t:interfaces></t:top>"
    )


def test_large_list_selects_by_key() -> None:
    entries = "".join(f"<user><name>u{i}</name><type>t</type></user>" for i in range(2000))
    data = users(entries)
    filter_body = f'<top xmlns="{CONFIG_NS}"><users><user><name>u1999</name><type/></user></users></top>'
    assert run([data], filter_body) == expect(users("<user><name>u1999</name><type>t</type></user>"))
