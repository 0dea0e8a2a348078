"""Instance documents against qsdn's modules, through yanglint and through the libyang Python bindings.

Valid documents must pass, invalid ones must fail, and fail for the reason their name gives: each invalid
document has a fragment of the expected libyang message in yangpaths.INVALID_INSTANCES.  Configuration
documents are validated as a configuration datastore (state nodes are errors), the others as complete
data with state, RPC input or notification content.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libyang
import pytest

from tests.conformance.yangpaths import (
    IETF_DIR,
    INVALID_DIR,
    INVALID_INSTANCES,
    VALID_DIR,
    VALID_INSTANCES,
    YANG_DIR,
    data_format,
    make_context,
    our_schema_files,
    validate_instance,
    yanglint_command,
    yanglint_path,
)


@pytest.fixture(scope="module")
def ctx() -> Iterator[libyang.Context]:
    context = make_context(YANG_DIR, IETF_DIR)
    yield context
    context.destroy()


def run_yanglint(kind: str, instance: Path) -> subprocess.CompletedProcess[str]:
    if yanglint_path() is None:
        pytest.skip("yanglint is not installed")
    cmd = yanglint_command(kind, our_schema_files(), [YANG_DIR, IETF_DIR], instance)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


# ------------------------------------------------------------------------------------------------
# The catalogue matches the folders
# ------------------------------------------------------------------------------------------------
def test_catalogue_lists_every_instance_file() -> None:
    assert {p.name for p in VALID_DIR.iterdir()} == set(VALID_INSTANCES)
    assert {p.name for p in INVALID_DIR.iterdir()} == set(INVALID_INSTANCES)


def test_catalogue_is_large_enough_and_covers_both_encodings() -> None:
    assert len(VALID_INSTANCES) >= 10
    assert len(INVALID_INSTANCES) >= 15
    for names in (VALID_INSTANCES, INVALID_INSTANCES):
        assert {Path(n).suffix for n in names} == {".xml", ".json"}
    assert all(n.startswith("invalid-") for n in INVALID_INSTANCES)
    assert {"session-abc-node-a.xml", "session-abc-node-b.xml", "session-abc-node-c.json"} <= set(
        VALID_INSTANCES
    )


# ------------------------------------------------------------------------------------------------
# Valid and invalid documents, yanglint and libyang-python
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kind"), sorted(VALID_INSTANCES.items()))
def test_valid_instance_yanglint(name: str, kind: str) -> None:
    result = run_yanglint(kind, VALID_DIR / name)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize(("name", "kind"), sorted(VALID_INSTANCES.items()))
def test_valid_instance_libyang(ctx: libyang.Context, name: str, kind: str) -> None:
    validate_instance(ctx, VALID_DIR / name, kind)


@pytest.mark.parametrize("name", sorted(INVALID_INSTANCES))
def test_invalid_instance_yanglint(name: str) -> None:
    rejection = INVALID_INSTANCES[name]
    result = run_yanglint(rejection.kind, INVALID_DIR / name)
    assert result.returncode != 0, f"{name} was accepted"
    assert rejection.message in result.stderr, result.stderr


@pytest.mark.parametrize("name", sorted(INVALID_INSTANCES))
def test_invalid_instance_libyang(ctx: libyang.Context, name: str) -> None:
    rejection = INVALID_INSTANCES[name]
    with pytest.raises(libyang.LibyangError) as excinfo:
        validate_instance(ctx, INVALID_DIR / name, rejection.kind)
    assert rejection.message in str(excinfo.value)


@pytest.mark.parametrize("name", sorted(n for n, k in VALID_INSTANCES.items() if k == "data"))
def test_state_documents_are_not_configuration(ctx: libyang.Context, name: str) -> None:
    """The `data` documents carry config false nodes: as configuration they are rejected."""
    with pytest.raises(libyang.LibyangError, match="Unexpected data state node"):
        validate_instance(ctx, VALID_DIR / name, "config")


@pytest.mark.parametrize("name", sorted(n for n, k in VALID_INSTANCES.items() if k in ("config", "data")))
def test_xml_json_round_trip(ctx: libyang.Context, name: str) -> None:
    """Printing a valid document in the other encoding and parsing it back gives the same tree."""
    path = VALID_DIR / name
    no_state = VALID_INSTANCES[name] == "config"
    tree = ctx.parse_data_mem(
        path.read_text(encoding="utf-8"),
        data_format(path),
        strict=True,
        no_state=no_state,
        validate_present=True,
    )
    assert tree is not None
    try:
        other = "xml" if data_format(path) == "json" else "json"
        text = tree.print_mem(other, with_siblings=True)
        again = ctx.parse_data_mem(text, other, strict=True, no_state=no_state, validate_present=True)
        assert again is not None
        try:
            assert again.print_mem("json", with_siblings=True) == tree.print_mem("json", with_siblings=True)
        finally:
            again.free()
    finally:
        tree.free()


# ------------------------------------------------------------------------------------------------
# The canonical A-B-C session (SYSTEM.md section 2) is consistent across the three nodes
# ------------------------------------------------------------------------------------------------
def load_node(ctx: libyang.Context, name: str) -> dict[str, Any]:
    path = VALID_DIR / name
    tree = ctx.parse_data_mem(path.read_text(encoding="utf-8"), data_format(path), strict=True, no_state=True)
    assert tree is not None
    try:
        document = json.loads(tree.print_mem("json", with_siblings=True))
        node: dict[str, Any] = document["etsi-qkd-sdn-node:qkd_node"]
    finally:
        tree.free()
    return node


def links(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {link["qkdl_id"]: link for link in node["qkd_links"]["qkd_link"]}


def apps(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {app["app_id"]: app for app in node["qkd_applications"]["qkd_app"]}


T = "etsi-qkd-node-types:"


def test_canonical_session_is_consistent(ctx: libyang.Context) -> None:
    a = load_node(ctx, "session-abc-node-a.xml")
    b = load_node(ctx, "session-abc-node-b.xml")
    c = load_node(ctx, "session-abc-node-c.json")
    id_a, id_b, id_c = a["qkdn_id"], b["qkdn_id"], c["qkdn_id"]
    assert len({id_a, id_b, id_c}) == 3

    # Step 1: one PHYS link per hop, same qkdl_id on both ends, ends swapped, roles complementary.
    phys = {
        (node_id, qkdl_id): link
        for node_id, node in ((id_a, a), (id_b, b), (id_c, c))
        for qkdl_id, link in links(node).items()
        if link["qkdl_type"] == T + "PHYS"
    }
    hops = sorted({qkdl_id for _, qkdl_id in phys})
    assert len(hops) == 2
    for hop in hops:
        ends = [link for (_, qkdl_id), link in phys.items() if qkdl_id == hop]
        assert len(ends) == 2
        first, second = ends
        assert first["qkdl_local"] == second["qkdl_remote"]
        assert first["qkdl_remote"] == second["qkdl_local"]
        assert {first["phys_qkd_role"], second["phys_qkd_role"]} == {T + "TRANSMITTER", T + "RECEIVER"}
        assert first["qkdl_status"] == second["qkdl_status"] == T + "ACTIVE"
        assert first["qkdl_enable"] is True and second["qkdl_enable"] is True

    # Step 2: one VIRT link, hops are the qkdn_id of the adjacent node.
    virt = [
        {qkdl_id: link for qkdl_id, link in links(node).items() if link["qkdl_type"] == T + "VIRT"}
        for node in (a, b, c)
    ]
    assert all(len(v) == 1 for v in virt)
    (virt_id,) = set().union(*virt)
    va, vb, vc = (v[virt_id] for v in virt)
    assert "virt_prev_hop" not in va and va["virt_next_hop"] == [id_b]
    assert vb["virt_prev_hop"] == id_a and vb["virt_next_hop"] == [id_c]
    assert vc["virt_prev_hop"] == id_b and "virt_next_hop" not in vc
    assert va["virt_bandwidth"] == vb["virt_bandwidth"] == vc["virt_bandwidth"]
    bandwidth = va["virt_bandwidth"]

    # INTERNAL applications on B reserve the relay capacity on both of its PHYS links.
    internal = [app for app in apps(b).values() if app["app_type"] == T + "INTERNAL"]
    assert sorted(app["backing_qkdl_id"][0] for app in internal) == hops
    assert all(app["app_qos"]["min_bandwidth"] >= bandwidth for app in internal)

    # Step 3: the CLIENT application on A and C, backed by the VIRT link, local/remote swapped.
    (app_a,) = (app for app in apps(a).values() if app["app_type"] == T + "CLIENT")
    (app_c,) = (app for app in apps(c).values() if app["app_type"] == T + "CLIENT")
    assert app_a["app_id"] == app_c["app_id"]
    assert app_a["server_app_id"] == app_c["server_app_id"]
    assert app_a["client_app_id"] == app_c["client_app_id"]
    assert app_a["backing_qkdl_id"] == app_c["backing_qkdl_id"] == [virt_id]
    assert (app_a["local_qkdn_id"], app_a["remote_qkdn_id"]) == (id_a, id_c)
    assert (app_c["local_qkdn_id"], app_c["remote_qkdn_id"]) == (id_c, id_a)


# ------------------------------------------------------------------------------------------------
# The entanglement chain A - R - B: one session across an end, a repeater and an end
# ------------------------------------------------------------------------------------------------
E = "qsdn-entanglement:"


def test_entanglement_chain_is_consistent(ctx: libyang.Context) -> None:
    a = load_node(ctx, "entanglement-chain-end-a.xml")
    r = load_node(ctx, "entanglement-chain-repeater.json")
    b = load_node(ctx, "entanglement-chain-end-b.xml")
    ids = {name: node["qkdn_id"] for name, node in (("a", a), ("r", r), ("b", b))}
    ent = {name: node[E + "entanglement"] for name, node in (("a", a), ("r", r), ("b", b))}
    sessions = {name: e["sessions"]["session"] for name, e in ent.items()}
    assert all(len(s) == 1 for s in sessions.values())
    sa, sr, sb = (sessions[n][0] for n in ("a", "r", "b"))

    # The same session on every node of its path: id, ends, path, targets, application.
    shared = ("session_id", "end_a_qkdn_id", "end_b_qkdn_id", "path", "application", "target_fidelity")
    for key in shared:
        assert sa[key] == sr[key] == sb[key], key
    assert sa["path"] == [ids["a"], ids["r"], ids["b"]]
    assert (sa["role"], sr["role"], sb["role"]) == ("end", "repeater", "end")

    # Hops follow the path, and every hop is an elementary link configured at both of its ends.
    assert "prev_hop" not in sa and sa["next_hop"] == ids["r"]
    assert sr["prev_hop"] == ids["a"] and sr["next_hop"] == ids["b"]
    assert sb["prev_hop"] == ids["r"] and "next_hop" not in sb

    def elinks(name: str) -> dict[str, dict[str, Any]]:
        return {link["link_id"]: link for link in ent[name]["elementary_links"]["elementary_link"]}

    for end in ("a", "b"):
        (link_id,) = elinks(end)
        at_end, at_repeater = elinks(end)[link_id], elinks("r")[link_id]
        assert at_end["remote_qkdn_id"] == ids["r"] and at_repeater["remote_qkdn_id"] == ids[end]
        for key in ("station_qkdn_id", "heralding", "length_km", "modes"):
            assert at_end[key] == at_repeater[key], (end, key)
    assert len(elinks("r")) == 2

    # Both ends of a hop use the same elementary link: the ends name it (next_link_id/prev_link_id), the
    # repeater leaves it out, which stands for its only link to that neighbour. The ends also say how
    # many memories the session may use there (1 + purification rounds, what the controller reserves);
    # the repeater's absent prev_memories/next_memories stand for 1 per side.
    def only_link(name: str, remote: str) -> str:
        (link_id,) = (k for k, v in elinks(name).items() if v["remote_qkdn_id"] == remote)
        return link_id

    assert "prev_link_id" not in sr and "next_link_id" not in sr
    assert sa["next_link_id"] == only_link("r", ids["a"]) == only_link("a", ids["r"])
    assert sb["prev_link_id"] == only_link("r", ids["b"]) == only_link("b", ids["r"])
    rounds = sa["purification"]["rounds"]
    assert sa["next_memories"] == sb["prev_memories"] == 1 + rounds
    assert "prev_memories" not in sr and "next_memories" not in sr

    # Only the repeater swaps (nested, round 1) and it needs memories; only the ends hold the key.
    assert sa["swap_order"] == sr["swap_order"] == "nested"
    assert sr["swap_round"] == 1 and "swap_round" not in sa and "swap_round" not in sb
    assert ent["r"]["memories"]["count"] >= 2
    assert "key_qkdl_id" not in sr
    assert sa["key_qkdl_id"] == sb["key_qkdl_id"]
    key_a, key_b = links(a)[sa["key_qkdl_id"]], links(b)[sb["key_qkdl_id"]]
    assert key_a["qkdl_type"] == key_b["qkdl_type"] == T + "VIRT"
    assert key_a["qkdl_local"] == key_b["qkdl_remote"] and key_a["qkdl_remote"] == key_b["qkdl_local"]
    assert "virt_next_hop" not in key_a and "virt_prev_hop" not in key_b  # no trusted relay
