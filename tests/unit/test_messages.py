"""NETCONF messages: hello, rpc, rpc-reply, rpc-error, notification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from lxml import etree

from qsdn.errors import ErrorInfo, ErrorType, MalformedMessageError, QsdnError
from qsdn.netconf.messages import (
    InvalidRpcError,
    build_data_reply,
    build_error_reply,
    build_hello,
    build_notification,
    build_ok,
    build_reply,
    build_rpc,
    data_path_for_error_path,
    is_notification,
    negotiate_base,
    parse_hello,
    parse_notification,
    parse_rpc,
    parse_rpc_reply,
    xpath_for_error_path,
)
from qsdn.netconf.xml import CAP_BASE_1_0, CAP_BASE_1_1, NC_NS, NOTIFICATION_NS, XML_NS, parse, qname

QKD_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
MODULES = {
    "etsi-qkd-sdn-node": QKD_NS,
    "ietf-interfaces": "urn:ietf:params:xml:ns:yang:ietf-interfaces",
    "xmlish-module": "urn:example:xmlish",
}


def module_ns(module: str) -> str | None:
    return MODULES.get(module)


def ns_module(ns: str) -> str | None:
    return {v: k for k, v in MODULES.items()}.get(ns)


def nc(local: str) -> str:
    return qname(NC_NS, local)


# ------------------------------------------------------------------------------------------- hello


def test_hello_round_trip_server() -> None:
    caps = [
        CAP_BASE_1_0,
        CAP_BASE_1_1,
        "urn:ietf:params:netconf:capability:with-defaults:1.0?basic-mode=explicit",
    ]
    data = build_hello(caps, session_id=4)
    assert data.startswith(b"<?xml")
    hello = parse_hello(data, from_server=True)
    assert hello.capabilities == tuple(caps)
    assert hello.session_id == 4


def test_hello_round_trip_client() -> None:
    hello = parse_hello(build_hello([CAP_BASE_1_1]), from_server=False)
    assert hello.capabilities == (CAP_BASE_1_1,)
    assert hello.session_id is None


def test_hello_capabilities_trimmed_and_deduplicated() -> None:
    data = (
        b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>'
        b"<capability>\n  urn:ietf:params:netconf:base:1.1\n</capability>"
        b"<capability>urn:ietf:params:netconf:base:1.1</capability>"
        b"</capabilities></hello>"
    )
    assert parse_hello(data, from_server=False).capabilities == (CAP_BASE_1_1,)


HELLO_OPEN = b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
CAPS = b"<capabilities><capability>urn:ietf:params:netconf:base:1.1</capability></capabilities>"


@pytest.mark.parametrize(
    ("data", "from_server", "why"),
    [
        (HELLO_OPEN + CAPS + b"<session-id>7</session-id></hello>", False, "client hello with session-id"),
        (HELLO_OPEN + CAPS + b"</hello>", True, "server hello without session-id"),
        (HELLO_OPEN + CAPS + b"<session-id>0</session-id></hello>", True, "session-id 0"),
        (HELLO_OPEN + CAPS + b"<session-id>4294967296</session-id></hello>", True, "session-id too large"),
        (HELLO_OPEN + CAPS + b"<session-id>-1</session-id></hello>", True, "negative session-id"),
        (HELLO_OPEN + CAPS + b"<session-id>x</session-id></hello>", True, "non-numeric session-id"),
        (
            HELLO_OPEN + CAPS + b"<session-id>1</session-id><session-id>2</session-id></hello>",
            True,
            "two ids",
        ),
        (HELLO_OPEN + b"</hello>", False, "no capabilities element"),
        (HELLO_OPEN + b"<capabilities/></hello>", False, "no capability"),
        (HELLO_OPEN + b"<capabilities><capability> </capability></capabilities></hello>", False, "blank"),
        (HELLO_OPEN + CAPS + CAPS + b"</hello>", False, "two capabilities elements"),
        (b"<hello>" + CAPS + b"</hello>", False, "no namespace"),
        (
            b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1"><get/></rpc>',
            False,
            "not hello",
        ),
        (b"<hello", False, "not XML"),
    ],
)
def test_parse_hello_refuses(data: bytes, from_server: bool, why: str) -> None:
    with pytest.raises(MalformedMessageError):
        parse_hello(data, from_server=from_server)


def test_build_hello_validates() -> None:
    with pytest.raises(ValueError):
        build_hello([])
    with pytest.raises(ValueError):
        build_hello([CAP_BASE_1_1], session_id=0)


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ([CAP_BASE_1_0, CAP_BASE_1_1], [CAP_BASE_1_0, CAP_BASE_1_1], "1.1"),
        ([CAP_BASE_1_0, CAP_BASE_1_1], [CAP_BASE_1_0], "1.0"),
        ([CAP_BASE_1_0], [CAP_BASE_1_0, CAP_BASE_1_1], "1.0"),
        ([CAP_BASE_1_1], [CAP_BASE_1_1, "urn:x"], "1.1"),
        ([CAP_BASE_1_1], [CAP_BASE_1_0], None),
        ([CAP_BASE_1_0, CAP_BASE_1_1], ["urn:ietf:params:netconf:capability:candidate:1.0"], None),
    ],
)
def test_negotiate_base(ours: list[str], theirs: list[str], expected: str | None) -> None:
    if expected is None:
        with pytest.raises(QsdnError) as info:
            negotiate_base(ours, theirs)
        assert info.value.first.tag == "operation-not-supported"
    else:
        assert negotiate_base(ours, theirs) == expected


# --------------------------------------------------------------------------------------------- rpc

# RFC 6241 section 4.1 example: additional attributes must come back on the reply.
RFC_RPC = (
    b'<rpc message-id="101" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" '
    b'xmlns:ex="http://example.net/content/1.0" ex:user-id="fred"><get/></rpc>'
)


def test_parse_rpc() -> None:
    rpc = parse_rpc(RFC_RPC)
    assert rpc.message_id == "101"
    assert rpc.attrs == {"message-id": "101", "{http://example.net/content/1.0}user-id": "fred"}
    assert rpc.name == "get"
    assert rpc.namespace == NC_NS
    assert rpc.operation.tag == nc("get")


def test_ok_reply_echoes_every_rpc_attribute() -> None:
    reply = parse(build_ok(parse_rpc(RFC_RPC).attrs))
    assert reply.tag == nc("rpc-reply")
    assert reply.get("message-id") == "101"
    assert reply.get("{http://example.net/content/1.0}user-id") == "fred"
    assert [child.tag for child in reply] == [nc("ok")]


def test_parse_rpc_accepts_prefixed_base_namespace() -> None:
    rpc = parse_rpc(
        b'<nc:rpc xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="urn:uuid:1">\n'
        b"  <nc:get-config><nc:source><nc:running/></nc:source></nc:get-config>\n</nc:rpc>"
    )
    assert rpc.message_id == "urn:uuid:1"
    assert rpc.name == "get-config"


def test_parse_rpc_custom_operation_namespace() -> None:
    rpc = parse_rpc(
        b'<rpc message-id="3" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
        b'<get-schema xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"/></rpc>'
    )
    assert rpc.name == "get-schema"
    assert rpc.namespace == "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"


@pytest.mark.parametrize(
    ("data", "tag", "error_type", "info", "echo"),
    [
        (
            b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" other="x"><get/></rpc>',
            "missing-attribute",
            "rpc",
            {"bad-attribute": "message-id", "bad-element": "rpc"},
            {"other": "x"},
        ),
        (
            b'<rpc message-id="5" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>',
            "malformed-message",
            "rpc",
            {"bad-element": "rpc"},
            {"message-id": "5"},
        ),
        (
            b'<rpc message-id="5" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get/><lock/></rpc>',
            "unknown-element",
            "rpc",
            {"bad-element": "lock"},
            {"message-id": "5"},
        ),
        (
            b'<rpc message-id="5" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">junk<get/></rpc>',
            "malformed-message",
            "rpc",
            {},
            {"message-id": "5"},
        ),
        (
            b'<rpc message-id="5" xmlns="urn:example:wrong"><get/></rpc>',
            "unknown-namespace",
            "protocol",
            {"bad-element": "rpc", "bad-namespace": "urn:example:wrong"},
            {},
        ),
        (
            b'<rpc message-id="5"><get/></rpc>',
            "unknown-namespace",
            "protocol",
            {"bad-element": "rpc", "bad-namespace": ""},
            {},
        ),
        (
            b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities/></hello>',
            "unknown-element",
            "rpc",
            {"bad-element": "hello"},
            {},
        ),
    ],
)
def test_parse_rpc_refuses(
    data: bytes, tag: str, error_type: str, info: dict[str, str], echo: dict[str, str]
) -> None:
    with pytest.raises(InvalidRpcError) as caught:
        parse_rpc(data)
    error = caught.value.first
    assert (error.tag, error.type, error.info) == (tag, error_type, info)
    assert caught.value.rpc_attrs == echo


def test_parse_rpc_malformed_xml() -> None:
    with pytest.raises(MalformedMessageError):
        parse_rpc(b'<rpc message-id="1"')


def test_missing_message_id_reply_has_rfc_shape() -> None:
    with pytest.raises(InvalidRpcError) as caught:
        parse_rpc(b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get/></rpc>')
    reply = parse(build_error_reply(caught.value.rpc_attrs, caught.value.errors))
    assert reply.get("message-id") is None
    error = reply.find(nc("rpc-error"))
    assert error is not None
    assert error.findtext(nc("error-tag")) == "missing-attribute"
    assert error.findtext(f"{nc('error-info')}/{nc('bad-attribute')}") == "message-id"
    assert error.findtext(f"{nc('error-info')}/{nc('bad-element')}") == "rpc"


def test_build_rpc_round_trip() -> None:
    op = etree.Element(nc("get"))
    data = build_rpc(op, "42", {"{http://example.net/content/1.0}user-id": "fred"})
    rpc = parse_rpc(data)
    assert rpc.message_id == "42"
    assert rpc.name == "get"
    assert rpc.attrs["{http://example.net/content/1.0}user-id"] == "fred"
    assert parse_rpc(build_rpc(b"<close-session/>", "43")).name == "close-session"


# ----------------------------------------------------------------------------------------- replies


def qkd_node(name: str = "node-a") -> etree._Element:
    root = etree.Element(qname(QKD_NS, "qkd_node"), nsmap={None: QKD_NS})  # type: ignore[dict-item]
    etree.SubElement(root, qname(QKD_NS, "qkdn_id")).text = name
    return root


@pytest.mark.parametrize(
    "content",
    [
        [qkd_node()],
        qkd_node(),
        etree.tostring(qkd_node()),
    ],
)
def test_data_reply(content: etree._Element | list[etree._Element] | bytes) -> None:
    reply = parse_rpc_reply(build_data_reply({"message-id": "7"}, content))
    assert reply.message_id == "7"
    assert reply.errors == []
    assert not reply.ok
    assert reply.data is not None
    assert [child.tag for child in reply.data] == [qname(QKD_NS, "qkd_node")]
    assert reply.data[0].findtext(qname(QKD_NS, "qkdn_id")) == "node-a"


def test_data_reply_does_not_move_elements() -> None:
    parent = etree.Element("parent")
    parent.append(qkd_node())
    build_data_reply({"message-id": "1"}, list(parent))
    assert len(parent) == 1


def test_empty_data_reply() -> None:
    reply = parse_rpc_reply(build_data_reply({"message-id": "8"}, []))
    assert reply.data is not None
    assert len(reply.data) == 0


def test_output_reply() -> None:
    out = etree.Element(qname(QKD_NS, "key_id"))
    out.text = "abc"
    reply = parse_rpc_reply(build_reply({"message-id": "9"}, [out]))
    assert reply.data is None
    assert [el.text for el in reply.output] == ["abc"]


def test_output_reply_without_output_is_ok() -> None:
    reply = parse_rpc_reply(build_reply({"message-id": "9"}, []))
    assert reply.ok
    assert reply.output == []


def test_parse_rpc_reply_ok() -> None:
    reply = parse_rpc_reply(build_ok({"message-id": "1"}))
    assert reply.ok and reply.message_id == "1" and reply.errors == []


@pytest.mark.parametrize(
    "data",
    [
        b'<rpc message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get/></rpc>',
        b'<rpc-reply message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
        b"<data/><data/></rpc-reply>",
        b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><rpc-error>'
        b"<error-type>rpc</error-type></rpc-error></rpc-reply>",
        b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><rpc-error>'
        b"<error-type>bogus</error-type><error-tag>x</error-tag></rpc-error></rpc-reply>",
    ],
)
def test_parse_rpc_reply_refuses(data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        parse_rpc_reply(data)


# --------------------------------------------------------------------------------------- rpc-error

ERRORS = [
    ErrorInfo(tag="malformed-message", message="XML parse error", type=ErrorType.RPC),
    ErrorInfo(
        tag="invalid-value",
        message='Value "1600" does not satisfy the range.',
        type=ErrorType.APPLICATION,
        path="/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='a/b']/phys_wavelength",
        app_tag="qsdn-range",
    ),
    ErrorInfo(
        tag="lock-denied",
        message="Lock failed, lock is already held",
        type=ErrorType.PROTOCOL,
        info={"session-id": "454"},
    ),
    ErrorInfo(
        tag="unknown-element",
        message="unexpected element",
        type=ErrorType.PROTOCOL,
        info={"bad-element": "foo", "bad-namespace": "urn:x"},
    ),
    ErrorInfo(tag="operation-failed", message="degraded", severity="warning"),
    ErrorInfo(
        tag="data-missing",
        message='no interface "eth0"',
        path='/ietf-interfaces:interfaces/interface[name="it\'s"]/etsi-qkd-sdn-node:qkd_node[.="x"]',
    ),
]


@pytest.mark.parametrize("error", ERRORS, ids=[e.tag for e in ERRORS])
def test_rpc_error_round_trip(error: ErrorInfo) -> None:
    data = build_error_reply({"message-id": "12"}, [error], module_ns=module_ns)
    reply = parse_rpc_reply(data, ns_module=ns_module)
    assert reply.message_id == "12"
    assert not reply.ok
    assert reply.errors == [error]


def test_rpc_error_round_trip_many_without_namespace_mapping() -> None:
    reply = parse_rpc_reply(build_error_reply({"message-id": "1"}, ERRORS))
    assert reply.errors == ERRORS


def test_rpc_error_element_order_and_lang() -> None:
    reply = parse(build_error_reply({"message-id": "1"}, [ERRORS[1]], module_ns=module_ns))
    error = reply[0]
    assert [etree.QName(child).localname for child in error] == [
        "error-type",
        "error-tag",
        "error-severity",
        "error-app-tag",
        "error-path",
        "error-message",
    ]
    message = error.find(nc("error-message"))
    assert message is not None and message.get(qname(XML_NS, "lang")) == "en"
    path = error.find(nc("error-path"))
    assert path is not None
    assert path.nsmap["etsi-qkd-sdn-node"] == QKD_NS
    assert path.text == (
        "/etsi-qkd-sdn-node:qkd_node/etsi-qkd-sdn-node:qkd_links/etsi-qkd-sdn-node:qkd_link"
        "[etsi-qkd-sdn-node:qkdl_id='a/b']/etsi-qkd-sdn-node:phys_wavelength"
    )
    # The rendered path is a usable XPath: it selects the node in real data.
    data = etree.fromstring(
        f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link><qkdl_id>a/b</qkdl_id>'
        "<phys_wavelength>1600</phys_wavelength></qkd_link></qkd_links></qkd_node>"
    )
    hits = data.getroottree().xpath(path.text, namespaces={k: v for k, v in path.nsmap.items() if k})
    assert isinstance(hits, list) and len(hits) == 1


def test_rpc_error_without_message_id_and_with_bad_text() -> None:
    error = ErrorInfo(
        tag="operation-failed", message="bad \x00 byte", info={"bad element!": "x", "{urn:x}extra": "y"}
    )
    reply = parse_rpc_reply(build_error_reply({}, [error]))
    assert reply.message_id is None
    assert reply.errors[0].message == "bad \ufffd byte"
    assert reply.errors[0].info == {"{urn:x}extra": "y"}


def test_error_reply_needs_errors() -> None:
    with pytest.raises(ValueError):
        build_error_reply({"message-id": "1"}, [])


def test_parse_foreign_rpc_error() -> None:
    # As a Netopeer2-like server would send it: pretty printed, its own prefixes.
    data = b"""<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="3">
      <rpc-error>
        <error-type>application</error-type>
        <error-tag>invalid-value</error-tag>
        <error-severity>error</error-severity>
        <error-path xmlns:if="urn:ietf:params:xml:ns:yang:ietf-interfaces">
          /if:interfaces/if:interface[if:name='eth0']/if:mtu
        </error-path>
        <error-message xml:lang="en">
          MTU out of range
        </error-message>
        <error-info><bad-element>mtu</bad-element><x xmlns="urn:vendor">1</x></error-info>
      </rpc-error>
    </rpc-reply>"""
    (error,) = parse_rpc_reply(data, ns_module=ns_module).errors
    assert error.path == "/ietf-interfaces:interfaces/interface[name='eth0']/mtu"
    assert error.message == "MTU out of range"
    assert error.info == {"bad-element": "mtu", "{urn:vendor}x": "1"}
    (raw,) = parse_rpc_reply(data).errors
    assert raw.path == "/if:interfaces/if:interface[if:name='eth0']/if:mtu"


@pytest.mark.parametrize(
    ("path", "expected", "prefixes"),
    [
        (
            "/etsi-qkd-sdn-node:qkd_node",
            "/etsi-qkd-sdn-node:qkd_node",
            {"etsi-qkd-sdn-node": QKD_NS},
        ),
        (
            "/ietf-interfaces:interfaces/interface[name='eth0'][.='x']/etsi-qkd-sdn-node:qkd_node[1]",
            "/ietf-interfaces:interfaces/ietf-interfaces:interface[ietf-interfaces:name='eth0'][.='x']"
            "/etsi-qkd-sdn-node:qkd_node[1]",
            {"ietf-interfaces": MODULES["ietf-interfaces"], "etsi-qkd-sdn-node": QKD_NS},
        ),
        (
            "/xmlish-module:top/leaf",
            "/_xmlish-module:top/_xmlish-module:leaf",
            {"_xmlish-module": "urn:example:xmlish"},
        ),
        ("/unknown-module:top", "/unknown-module:top", {}),  # unknown module: sent as is
        ("/no-prefix", "/no-prefix", {}),
        ("relative/path", "relative/path", {}),
        ("/etsi-qkd-sdn-node:a//b", "/etsi-qkd-sdn-node:a//b", None),  # handled only if it stays a path
        ("/etsi-qkd-sdn-node:a[b='unterminated]", "/etsi-qkd-sdn-node:a[b='unterminated]", {}),
        ("/etsi-qkd-sdn-node:a[count(b)=1]", "/etsi-qkd-sdn-node:a[count(b)=1]", {}),
    ],
)
def test_xpath_for_error_path(path: str, expected: str, prefixes: dict[str, str] | None) -> None:
    expr, used = xpath_for_error_path(path, module_ns)
    if prefixes is None:
        return  # only that it does not crash
    assert (expr, used) == (expected, prefixes)


@pytest.mark.parametrize(
    "path",
    [
        "/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='x']/phys_wavelength",
        '/ietf-interfaces:interfaces/interface[name="a\'b"]/etsi-qkd-sdn-node:qkd_node/x',
        "/etsi-qkd-sdn-node:qkd_node/leaf_list[.='1']",
    ],
)
def test_error_path_round_trip(path: str) -> None:
    expr, prefixes = xpath_for_error_path(path, module_ns)
    assert data_path_for_error_path(expr, prefixes, ns_module) == path  # type: ignore[arg-type]


def test_data_path_for_unmappable_error_path() -> None:
    assert data_path_for_error_path("/p:a/b", {"p": QKD_NS}, ns_module) == "/p:a/b"
    assert data_path_for_error_path("/p:a", {}, ns_module) == "/p:a"
    assert data_path_for_error_path("/p:a", {"p": "urn:unknown"}, ns_module) == "/p:a"


# ----------------------------------------------------------------------------------- notifications


def test_notification_round_trip() -> None:
    when = datetime(2024, 5, 1, 12, 30, 5, 250000, tzinfo=UTC)
    body = etree.Element(qname(QKD_NS, "etsi-qkd-node-events"))
    etree.SubElement(body, qname(QKD_NS, "link_status")).text = "down"
    data = build_notification(when, body)
    root = parse(data)
    assert root.tag == qname(NOTIFICATION_NS, "notification")
    assert root.findtext(qname(NOTIFICATION_NS, "eventTime")) == "2024-05-01T12:30:05.250000Z"
    assert is_notification(data)
    assert not is_notification(build_ok({"message-id": "1"}))
    note = parse_notification(data)
    assert note.event_time == when
    assert note.body.tag == qname(QKD_NS, "etsi-qkd-node-events")
    assert note.body.findtext(qname(QKD_NS, "link_status")) == "down"


def test_notification_keeps_offset() -> None:
    when = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    data = build_notification(when, b'<x xmlns="urn:x"/>')
    assert b"<eventTime>2024-05-01T14:00:00+02:00</eventTime>" in data
    assert parse_notification(data).event_time == when


def test_notification_needs_timezone() -> None:
    with pytest.raises(ValueError):
        build_notification(datetime(2024, 5, 1), b'<x xmlns="urn:x"/>')


@pytest.mark.parametrize(
    "data",
    [
        b'<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0">'
        b"<eventTime>2024-05-01T00:00:00Z</eventTime></notification>",
        b'<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0">'
        b'<eventTime>yesterday</eventTime><x xmlns="urn:x"/></notification>',
        b'<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0">'
        b'<eventTime>2024-05-01T00:00:00</eventTime><x xmlns="urn:x"/></notification>',
        b'<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0">'
        b'<x xmlns="urn:x"/></notification>',
        b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><ok/></rpc-reply>',
    ],
)
def test_parse_notification_refuses(data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        parse_notification(data)
