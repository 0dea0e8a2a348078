"""The hardened XML parser: well-formed NETCONF in, DTDs, entities and PIs out."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from qsdn.errors import MalformedMessageError
from qsdn.netconf.xml import NC_NS, local_name, namespace, parse, qname, tostring

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rpc message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get>&lol9;</get></rpc>"""


@pytest.mark.parametrize(
    "data",
    [
        b"<a/>",
        b'<?xml version="1.0" encoding="UTF-8"?><a/>',
        b'<?xml version="1.0"?>\n<a/>',
        b"\n\r\n  <a/>",  # left over from end-of-message framing
        b'\n<?xml version="1.0"?><a/>',
        b"\xef\xbb\xbf<a/>",
        b"<!-- before --><a/><!-- after -->",
    ],
)
def test_parse_accepts(data: bytes) -> None:
    assert local_name(parse(data)) == "a"


def test_parse_keeps_namespaces_and_text() -> None:
    root = parse(b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><x>caf\xc3\xa9 &amp; &#65;</x></rpc>')
    assert root.tag == qname(NC_NS, "rpc")
    assert namespace(root) == NC_NS
    assert root[0].text == "café & A"


def test_parse_removes_comments() -> None:
    root = parse(b"<a><!-- hidden --><b/></a>")
    assert [child.tag for child in root] == ["b"]


def test_doctype_text_inside_body_is_data() -> None:
    root = parse(b"<a><![CDATA[<!DOCTYPE x [<!ENTITY y 'z'>]>]]></a>")
    assert root.text == "<!DOCTYPE x [<!ENTITY y 'z'>]>"


def test_declared_encoding_is_ignored_for_utf8() -> None:
    # RFC 6241 section 2: NETCONF is UTF-8, whatever the declaration claims.
    root = parse(b'<?xml version="1.0" encoding="ISO-8859-1"?><a>\xc3\xa9</a>')
    assert root.text == "é"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (BILLION_LAUGHS, "billion laughs"),
        (b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>', "internal entity"),
        (b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>', "external entity (XXE)"),
        (
            b'<!DOCTYPE a [<!ENTITY x SYSTEM "http://192.0.2.1/x">]><a>&x;</a>',
            "external entity over the network",
        ),
        (b'<!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><a/>', "parameter entity"),
        (b'<!DOCTYPE a SYSTEM "http://192.0.2.1/a.dtd"><a/>', "external DTD"),
        (b"<!DOCTYPE a><a/>", "bare DOCTYPE"),
        (b'<?xml version="1.0"?><!-- c --><?pi x?>\n<!DOCTYPE a []><a/>', "DOCTYPE after comment and PI"),
        (b"<!doctype a><a/>", "lower-case doctype"),
        (b"<a>&x;</a>", "undefined entity"),
        (b"<a><?evil x?></a>", "processing instruction in body"),
        (b'<?xml-stylesheet href="x"?><a/>', "processing instruction before root"),
        (b"<a/><?after x?>", "processing instruction after root"),
        (b"<a>", "unterminated"),
        (b"<a></b>", "mismatched tags"),
        (b"<a/><b/>", "two roots"),
        (b"", "empty"),
        (b"   \n", "blank"),
        (b"not xml", "text"),
        (b"<a>\xff\xfe</a>", "invalid UTF-8"),
        (b"<!-- unterminated <a/>", "unterminated comment in prolog"),
        (b"<a>" * 300 + b"</a>" * 300, "too deep"),
        (b'<a xmlns:p="urn:x"><q:b/></a>', "undeclared prefix"),
    ],
)
def test_parse_refuses(data: bytes, why: str) -> None:
    with pytest.raises(MalformedMessageError) as info:
        parse(data)
    assert info.value.first.tag == "malformed-message", why
    assert info.value.first.type == "rpc"


def test_external_entity_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    data = f'<!DOCTYPE a [<!ENTITY x SYSTEM "{secret.as_uri()}">]><a>&x;</a>'.encode()
    with pytest.raises(MalformedMessageError) as info:
        parse(data)
    assert "TOP-SECRET" not in str(info.value)


def test_syntax_error_message_comes_from_parser() -> None:
    with pytest.raises(MalformedMessageError, match="XML parse error"):
        parse(b"<a>")


def test_qname() -> None:
    assert qname(NC_NS, "rpc") == "{urn:ietf:params:xml:ns:netconf:base:1.0}rpc"
    assert qname(None, "rpc") == "rpc"


def test_tostring_is_compact_utf8_without_tail() -> None:
    root = etree.fromstring("<a><b>é</b>tail</a>")
    assert tostring(root[0]) == "<b>é</b>".encode()
    assert tostring(root, xml_declaration=True).startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert b"\n" not in tostring(root)
