"""RESTCONF resource identifiers <-> libyang data paths <-> instance-identifiers (RFC 8040 3.5.3).

The schema is a small module written here, with what the orchestrator model lacks: a list with two
keys, keys of several types, a leaf-list, a presence container and an augment from a second module
(where the api-path must qualify the node with its module).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.northbound.paths import (
    DataPath,
    PathError,
    SchemaIndex,
    Segment,
    Step,
    format_api_path,
    parse_api_path,
)
from controller.northbound.query import Fields, QueryError, parse_fields
from qsdn.yang import SchemaContext, ietf_module_dirs

PATHS_TEST = """\
module paths-test {
  yang-version 1.1;
  namespace "urn:qsdn:test:paths";
  prefix pt;
  container top {
    leaf name { type string; }
    list pair {
      key "a b";
      leaf a { type string; }
      leaf b { type int32; }
      leaf value { type string; }
      container inner { leaf x { type string; } }
    }
    leaf-list tag { type string; }
    container opts { presence "options set"; leaf y { type string; } }
    list item { key "id"; leaf id { type string; } }
  }
  rpc reset { input { leaf why { type string; } } }
}
"""

PATHS_AUG = """\
module paths-aug {
  yang-version 1.1;
  namespace "urn:qsdn:test:paths-aug";
  prefix pt;
  import paths-test { prefix base; }
  augment "/base:top/base:pair" {
    container extra { leaf z { type string; } }
  }
}
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> SchemaIndex:
    d: Path = tmp_path_factory.mktemp("yang")
    (d / "paths-test.yang").write_text(PATHS_TEST)
    (d / "paths-aug.yang").write_text(PATHS_AUG)
    schema = SchemaContext([("paths-test", ()), ("paths-aug", ())], search_dirs=[d, *ietf_module_dirs()])
    return SchemaIndex(schema)


# ------------------------------------------------------------------------------------------------
# api-path segments
# ------------------------------------------------------------------------------------------------
def test_parse_simple_path() -> None:
    assert parse_api_path("") == ()
    assert parse_api_path("paths-test:top/name") == (Segment("paths-test", "top"), Segment(None, "name"))


def test_parse_multi_key_list() -> None:
    (_, pair) = parse_api_path("paths-test:top/pair=x,42")
    assert pair == Segment(None, "pair", ("x", "42"))


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("a%2Fb", "a/b"),  # "/" inside a key is data, not a separator
        ("a%2Cb", "a,b"),  # "," inside a key is data, not the key separator
        ("a%3Db", "a=b"),
        ("it%27s", "it's"),
        ("two%20words", "two words"),
        ("caf%C3%A9", "café"),
        ("100%25", "100%"),
        ("a:b", "a:b"),  # ":" may appear unencoded in a key
        ("", ""),
    ],
)
def test_percent_encoded_keys(encoded: str, key: str) -> None:
    (_, seg) = parse_api_path(f"paths-test:top/item={encoded}")
    assert seg.keys == (key,)


def test_empty_key_values_in_multi_key_list() -> None:
    (_, seg) = parse_api_path("paths-test:top/pair=,7")
    assert seg.keys == ("", "7")
    (_, seg) = parse_api_path("paths-test:top/pair=x%2Cy,")
    assert seg.keys == ("x,y", "")


@pytest.mark.parametrize("bad", ["paths-test:top//name", "paths-test:top/", ":top", "mod:", "a:b:c", "x%FFy"])
def test_malformed_paths(bad: str) -> None:
    with pytest.raises(PathError):
        parse_api_path(bad)


@pytest.mark.parametrize(
    "segments",
    [
        (Segment("paths-test", "top"), Segment(None, "pair", ("a/b,c", "-3")), Segment(None, "value")),
        (Segment("paths-test", "top"), Segment(None, "item", ("x y=z'\"%",))),
        (Segment("paths-test", "top"), Segment(None, "pair", ("", "0")), Segment("paths-aug", "extra")),
    ],
)
def test_format_and_parse_round_trip(segments: tuple[Segment, ...]) -> None:
    assert parse_api_path(format_api_path(segments)) == segments


def test_format_percent_encodes_reserved_characters() -> None:
    text = format_api_path([Segment("paths-test", "top"), Segment(None, "pair", ("a/b,c", "1"))])
    assert text == "paths-test:top/pair=a%2Fb%2Cc,1"


# ------------------------------------------------------------------------------------------------
# Resolution against the schema
# ------------------------------------------------------------------------------------------------
def test_resolve_multi_key_list_entry(index: SchemaIndex) -> None:
    target = index.resolve(parse_api_path("paths-test:top/pair=x%2Fy,42/inner/x"))
    assert target.path.json() == "/paths-test:top/pair[a='x/y'][b='42']/inner/x"
    assert [n.kind for n in target.nodes] == ["container", "list", "container", "leaf"]
    assert target.nodes[1].keys == ("a", "b")
    assert target.node is not None and target.node.config


def test_resolve_leaf_list_and_augment(index: SchemaIndex) -> None:
    target = index.resolve(parse_api_path("paths-test:top/tag=red"))
    assert target.path.json() == "/paths-test:top/tag[.='red']"
    target = index.resolve(parse_api_path("paths-test:top/pair=a,1/paths-aug:extra/z"))
    assert target.path.json() == "/paths-test:top/pair[a='a'][b='1']/paths-aug:extra/z"
    assert target.nodes[2].module == "paths-aug"


def test_resolve_accepts_redundant_module_names(index: SchemaIndex) -> None:
    target = index.resolve(parse_api_path("paths-test:top/paths-test:name"))
    assert target.path.json() == "/paths-test:top/name"


def test_resolve_datastore(index: SchemaIndex) -> None:
    target = index.resolve(())
    assert target.is_datastore and target.node is None and not target.path


@pytest.mark.parametrize(
    ("uri", "tag", "fragment"),
    [
        ("top", "invalid-value", "module-qualified"),
        ("nomod:top", "unknown-namespace", "unknown YANG module"),
        ("paths-test:bottom", "unknown-element", "no data node"),
        ("paths-test:top/extra", "unknown-element", "no data node"),  # augment needs its module
        ("paths-test:top/pair=x", "invalid-value", "2 key value(s)"),
        ("paths-test:top/pair=x,1,2", "invalid-value", "2 key value(s)"),
        ("paths-test:top/pair", "invalid-value", "2 key value(s)"),
        ("paths-test:top/tag", "invalid-value", "one value"),
        ("paths-test:top=1", "invalid-value", "takes no key"),
        ("paths-test:top/name/x", "invalid-value", "has no child"),
        ("paths-test:reset", "invalid-value", "not a data resource"),
    ],
)
def test_resolve_errors(index: SchemaIndex, uri: str, tag: str, fragment: str) -> None:
    with pytest.raises(PathError) as info:
        index.resolve(parse_api_path(uri))
    assert info.value.first.tag == tag
    assert fragment in info.value.first.message


def test_key_with_both_quotes_is_refused(index: SchemaIndex) -> None:
    with pytest.raises(PathError, match="both quote"):
        index.resolve(parse_api_path("paths-test:top/item=%27%22"))


def test_operations_and_prefixes(index: SchemaIndex) -> None:
    assert ("paths-test", "reset") in index.operations()
    assert index.operation("paths-test", "reset") is not None
    assert index.operation("paths-test", "top") is None
    prefixes = index.prefixes()
    # Both modules have the YANG prefix "pt": the one loaded second gets its module name.
    assert (prefixes["paths-test"], prefixes["paths-aug"]) == ("pt", "paths-aug")


# ------------------------------------------------------------------------------------------------
# Data paths
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "/paths-test:top",
        "/paths-test:top/pair[a='x'][b='1']/value",
        "/paths-test:top/pair[a=\"it's\"][b='1']/paths-aug:extra/z",
        "/paths-test:top/tag[.='a/b']",
        "/paths-test:top/item[id='x[y]']",
        "/paths-test:top/pair[3]",
    ],
)
def test_data_path_round_trip(text: str) -> None:
    assert DataPath.parse(text).json() == text


def test_data_path_parses_qualified_keys_and_spaces() -> None:
    path = DataPath.parse("/paths-test:top/pair[paths-test:a = 'x'][b='2']")
    assert path.steps[1] == Step("paths-test", "pair", (("a", "x"), ("b", "2")))


@pytest.mark.parametrize("bad", ["top", "/top", "/paths-test:top[a='x'", "/paths-test:top[a=x]", "/m:t[a='x"])
def test_data_path_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        DataPath.parse(bad)


def test_xml_instance_identifier_prefixes_every_name() -> None:
    path = DataPath.parse("/paths-test:top/pair[a='x'][b='1']/paths-aug:extra/z")
    xml = path.xml({"paths-test": "pt", "paths-aug": "pa"})
    assert xml == "/pt:top/pt:pair[pt:a='x'][pt:b='1']/pa:extra/pa:z"
    assert path.modules() == ["paths-test", "paths-aug"]
    assert DataPath.parse("/paths-test:top/tag[.='v']").xml({"paths-test": "pt"}) == "/pt:top/pt:tag[.='v']"


def test_uri_of_data_path(index: SchemaIndex) -> None:
    path = DataPath.parse("/paths-test:top/pair[a='a/b,c'][b='-1']/paths-aug:extra")
    assert path.uri() == "paths-test:top/pair=a%2Fb%2Cc,-1/paths-aug:extra"
    assert index.resolve(parse_api_path(path.uri())).path == path
    with pytest.raises(PathError):
        DataPath.parse("/paths-test:top/pair[1]").uri()


@pytest.mark.parametrize(
    "uri",
    [
        "paths-test:top",
        "paths-test:top/pair=%2F,0/inner/x",
        "paths-test:top/item=%27%20%2C%3D",
        "paths-test:top/tag=caf%C3%A9",
        "paths-test:top/pair=x,5/paths-aug:extra/z",
    ],
)
def test_uri_resolve_round_trip(index: SchemaIndex, uri: str) -> None:
    target = index.resolve(parse_api_path(uri))
    assert parse_api_path(target.path.uri()) == parse_api_path(uri)
    assert index.target_of(target.path).nodes == target.nodes


# ------------------------------------------------------------------------------------------------
# fields (RFC 8040 section 4.8.3)
# ------------------------------------------------------------------------------------------------
def test_fields_grammar() -> None:
    f = parse_fields("pair(value;inner/x);name;paths-aug:extra")
    assert f.children[(None, "name")] is None
    assert f.children[("paths-aug", "extra")] is None
    pair = f.children[(None, "pair")]
    assert isinstance(pair, Fields)
    assert pair.children[(None, "value")] is None
    inner = pair.children[(None, "inner")]
    assert isinstance(inner, Fields) and inner.children == {(None, "x"): None}


def test_fields_merge_selections() -> None:
    f = parse_fields("pair/value;pair/inner;pair")
    assert f.children == {(None, "pair"): None}  # the whole pair wins
    f = parse_fields("pair(value);pair(inner)")
    pair = f.children[(None, "pair")]
    assert isinstance(pair, Fields) and set(pair.children) == {(None, "value"), (None, "inner")}


@pytest.mark.parametrize("bad", ["", ";", "a(", "a()", "a)", "a;;b", "a//b", "1a", "a:b:c", "a(b))"])
def test_fields_syntax_errors(bad: str) -> None:
    with pytest.raises(QueryError):
        parse_fields(bad)
