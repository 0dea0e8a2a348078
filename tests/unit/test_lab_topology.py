"""Lab topology files: the examples load, every rule fails with a message naming the object, stable ids."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qsdn.errors import ConfigError
from qsdn.lab.topology import (
    LabTopology,
    MemorySpec,
    StationSpec,
    load_topology,
    node_uuid,
    parse_topology,
)
from qsdn.physics.bb84 import DeviceParams

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "labs"


def base() -> dict[str, Any]:
    return {
        "name": "t",
        "description": "a test topology",
        "defaults": {"device": {"eta_det": 0.25}},
        "nodes": [
            {
                "name": "A",
                "role": "endpoint",
                "location": "Amsterdam",
                "lat": 52.37,
                "lon": 4.9,
                "saes": ["sae-a"],
            },
            {"name": "B", "role": "trusted-relay"},
            {"name": "C", "saes": ["sae-c"], "device": {"eta_det": 0.5, "f_ec": 1.16}},
        ],
        "spans": [
            {"id": "a-b", "a": "A", "b": "B", "length_km": 30, "bands": ["C", "O"], "extra_loss_db": 1.0},
            {"id": "b-c", "a": "B", "b": "C", "length_km": 40.5},
            {"id": "a-c", "a": "C", "b": "A", "length_km": 160, "bands": ["c"]},
        ],
        "sessions": [
            {"name": "s1", "src": "A", "dst": "C", "src_sae": "sae-a", "dst_sae": "sae-c", "rate_bps": 1000}
        ],
    }


# ------------------------------------------------------------------------------------------ examples


@pytest.mark.parametrize("name", ["chain3", "metro-ring", "geant-ring", "repeater-chain", "mixed"])
def test_the_examples_load(name: str) -> None:
    t = load_topology(EXAMPLES / f"{name}.yaml")
    assert t.name == name and t.description
    assert t.source == str(EXAMPLES / f"{name}.yaml")
    assert t.sessions, "every example provisions at least one session"
    for s in t.sessions:
        assert s.src_sae in t.node(s.src).saes and s.dst_sae in t.node(s.dst).saes
    assert len({n.node_id for n in t.nodes}) == len(t.nodes)


def test_chain3_is_a_chain_of_three() -> None:
    t = load_topology(EXAMPLES / "chain3.yaml")
    assert [(n.name, n.role) for n in t.nodes] == [
        ("alice", "endpoint"),
        ("relay", "trusted-relay"),
        ("bob", "endpoint"),
    ]
    assert [(s.a, s.b) for s in t.spans] == [("alice", "relay"), ("relay", "bob")]
    assert [(s.src, s.dst) for s in t.sessions] == [("alice", "bob")]


def test_metro_ring_has_one_span_too_long() -> None:
    t = load_topology(EXAMPLES / "metro-ring.yaml")
    assert 5 <= len(t.nodes) <= 6 and len(t.spans) == len(t.nodes)
    assert [s.span_id for s in t.spans if 0.2 * s.length_km + s.extra_loss_db >= 20] == ["utr-ams"]
    assert t.node("Utrecht").device == DeviceParams(eta_det=0.6, dark_count=1e-6)


def test_geant_ring_has_coordinates_and_the_five_cities() -> None:
    t = load_topology(EXAMPLES / "geant-ring.yaml")
    endpoints = {n.name for n in t.nodes if n.role == "endpoint"}
    assert endpoints == {"London", "Amsterdam", "Frankfurt", "Geneva", "Paris"}
    assert all(n.lat is not None and n.lon is not None for n in t.nodes)
    assert {n.role for n in t.nodes} == {"endpoint", "trusted-relay"}
    # A ring: every node ends exactly two spans.
    assert all(len(t.spans_of(n.name)) == 2 for n in t.nodes)
    assert any(s.src == "London" and s.dst == "Geneva" for s in t.sessions)


# -------------------------------------------------------------------------------------- the model


def test_parse_builds_the_documented_model() -> None:
    t = parse_topology(base(), "t.yaml")
    assert isinstance(t, LabTopology) and t.source == "t.yaml"
    a, b, c = t.nodes
    assert (a.name, a.role, a.location, a.lat, a.lon, a.saes) == (
        "A",
        "endpoint",
        "Amsterdam",
        52.37,
        4.9,
        ("sae-a",),
    )
    assert (b.role, b.location, b.lat, b.lon, b.saes) == ("trusted-relay", None, None, None, ())
    assert c.role == "endpoint", "role defaults to endpoint"
    # Device: DeviceParams defaults, then defaults.device, then the node's own fields.
    assert a.device == b.device == DeviceParams(eta_det=0.25)
    assert c.device == DeviceParams(eta_det=0.5, f_ec=1.16)
    s1, s2, s3 = t.spans
    assert (s1.span_id, s1.a, s1.b, s1.length_km, s1.bands, s1.extra_loss_db) == (
        "a-b",
        "A",
        "B",
        30.0,
        ("C", "O"),
        1.0,
    )
    assert (s2.bands, s2.extra_loss_db, s2.length_km) == (("C", "O"), 0.0, 40.5)
    assert s3.bands == ("C",)
    assert t.sessions[0].rate_bps == 1000 and t.sessions[0].src_sae == "sae-a"
    assert t.node("B") is b
    assert [s.span_id for s in t.spans_of("A")] == ["a-b", "a-c"]
    assert t.spans_of("nobody") == []
    with pytest.raises(KeyError, match="no node 'Z'"):
        t.node("Z")


def test_node_ids_are_stable_and_documented() -> None:
    first, second = parse_topology(base()), parse_topology(base())
    assert [n.node_id for n in first.nodes] == [n.node_id for n in second.nodes]
    expected = str(uuid.uuid5(uuid.NAMESPACE_URL, "qsdn:lab:t:A"))
    assert first.node("A").node_id == expected == node_uuid("t", "A")
    # The topology's name is part of the id: the same node name in another lab is another node.
    other = base()
    other["name"] = "u"
    assert parse_topology(other).node("A").node_id != expected
    # A given id is kept, in the canonical lower-case form.
    given = base()
    given["nodes"][1]["node_id"] = "0A11CE00-0000-4000-8000-000000000001"
    assert parse_topology(given).node("B").node_id == "0a11ce00-0000-4000-8000-000000000001"


def test_minimal_topology() -> None:
    t = parse_topology({"name": "one", "nodes": [{"name": "solo"}]})
    assert t.description == "" and t.spans == () and t.sessions == ()
    assert t.nodes[0].device == DeviceParams()


# --------------------------------------------------------------------------------- negative cases

Mutation = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mutation:
    """A mutation setting ``value`` at a dotted path such as ``nodes.1.role``."""

    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        for m in mutations:
            m(d)

    return mutate


NEGATIVE: list[tuple[str, Mutation, str, str | None]] = [
    # (case, mutation, message fragment, ConfigError.path)
    ("unknown top-level key", _set("extras", 1), "t.yaml: extras: unknown key", "extras"),
    ("topology name", _set("name", "my lab"), "name: topology name 'my lab' is not usable", "name"),
    ("no nodes", _set("nodes", []), "nodes: at least one node is required", "nodes"),
    ("nodes not a list", _set("nodes", {"A": {}}), "nodes: must be a list", "nodes"),
    ("node not a mapping", _set("nodes.1", "B"), "t.yaml: nodes[1]: must be a mapping", None),
    (
        "unknown node key",
        _set("nodes.1.colour", "red"),
        "node B (nodes[1].colour): unknown key",
        "nodes[1].colour",
    ),
    (
        "node name with a space",
        _set("nodes.0.name", "a b"),
        "nodes[0].name: node name 'a b' is not usable",
        None,
    ),
    ("node name too long", _set("nodes.0.name", "x" * 33), "is not usable: 1 to 32 letters", "nodes[0].name"),
    ("node name leading hyphen", _set("nodes.0.name", "-a"), "node name '-a' is not usable", "nodes[0].name"),
    ("node name not a string", _set("nodes.0.name", 7), "nodes[0].name: must be a string", "nodes[0].name"),
    (
        "duplicate node name, ignoring case",
        _set("nodes.2.name", "b"),
        "node b (nodes[2].name): duplicate node name 'b': node B (nodes[1]) already has it",
        "nodes[2].name",
    ),
    (
        "duplicate node id",
        _both(
            _set("nodes.0.node_id", "0a11ce00-0000-4000-8000-000000000001"),
            _set("nodes.1.node_id", "0A11CE00-0000-4000-8000-000000000001"),
        ),
        "node B (nodes[1].node_id): duplicate node_id '0a11ce00-0000-4000-8000-000000000001': node A",
        "nodes[1].node_id",
    ),
    (
        "node id not a uuid",
        _set("nodes.0.node_id", "xyz"),
        "node A (nodes[0].node_id): 'xyz' is not a UUID",
        None,
    ),
    (
        "bad role",
        _set("nodes.1.role", "router"),
        "node B (nodes[1].role): unknown role 'router': expected one of endpoint, trusted-relay, repeater, "
        "bsm-station",
        "nodes[1].role",
    ),
    (
        "latitude range",
        _set("nodes.0.lat", 95),
        "node A (nodes[0].lat): must be between -90 and 90, got 95",
        None,
    ),
    (
        "longitude range",
        _set("nodes.0.lon", -200.5),
        "node A (nodes[0].lon): must be between -180 and 180",
        None,
    ),
    ("latitude not a number", _set("nodes.0.lat", "north"), "node A (nodes[0].lat): must be a number", None),
    ("lat without lon", _delete("nodes.0.lon"), "node A (nodes[0].lon): lat and lon go together", None),
    (
        "SAE on two nodes",
        _set("nodes.2.saes", ["sae-a"]),
        "node C (nodes[2].saes): SAE 'sae-a' is already declared on node A",
        "nodes[2].saes",
    ),
    (
        "SAE twice on a node",
        _set("nodes.0.saes", ["sae-a", "sae-a"]),
        "node A (nodes[0].saes): SAE 'sae-a' is listed twice",
        None,
    ),
    (
        "SAE id not usable",
        _set("nodes.0.saes", ["sae a"]),
        "node A (nodes[0].saes): SAE id 'sae a' is not usable",
        None,
    ),
    (
        "SAEs not a list",
        _set("nodes.0.saes", "sae-a"),
        "node A (nodes[0].saes): must be a list of strings",
        None,
    ),
    (
        "SAE on a repeater",
        _both(_set("nodes.1.role", "repeater"), _set("nodes.1.saes", ["sae-b"])),
        "node B (nodes[1].saes): a repeater never holds key",
        "nodes[1].saes",
    ),
    (
        "device out of range",
        _set("nodes.2.device.eta_det", 1.5),
        "node C (nodes[2].device.eta_det): device parameter eta_det out of range: 1.5",
        "nodes[2].device.eta_det",
    ),
    (
        "unknown device key",
        _set("nodes.2.device.eta", 0.1),
        "node C (nodes[2].device.eta): unknown key",
        None,
    ),
    (
        "device not a mapping",
        _set("nodes.2.device", 0.5),
        "node C (nodes[2].device): must be a mapping",
        None,
    ),
    (
        "default device out of range",
        _set("defaults.device.dark_count", 1),
        "t.yaml: defaults.device.dark_count: device parameter dark_count out of range: 1",
        "defaults.device.dark_count",
    ),
    ("unknown defaults key", _set("defaults.span", {}), "defaults.span: unknown key", None),
    ("unknown span key", _set("spans.0.colour", "red"), "span a-b (spans[0].colour): unknown key", None),
    ("span id missing", _delete("spans.0.id"), "t.yaml: spans[0].id: is required", "spans[0].id"),
    (
        "duplicate span id, ignoring case",
        _set("spans.1.id", "A-B"),
        "span A-B (spans[1].id): duplicate span id 'A-B': span a-b (spans[0]) already has it",
        "spans[1].id",
    ),
    ("unknown span end", _set("spans.0.b", "X"), "span a-b (spans[0].b): unknown node 'X'", "spans[0].b"),
    ("self-loop", _set("spans.0.b", "A"), "span a-b (spans[0].b): both ends are node A (self-loop)", None),
    (
        "negative length",
        _set("spans.1.length_km", -1),
        "span b-c (spans[1].length_km): must be a finite number >= 0, got -1",
        "spans[1].length_km",
    ),
    (
        "length not finite",
        _set("spans.1.length_km", math.inf),
        "span b-c (spans[1].length_km): must be a finite",
        None,
    ),
    (
        "length is a boolean",
        _set("spans.1.length_km", True),
        "span b-c (spans[1].length_km): must be a number",
        None,
    ),
    ("length missing", _delete("spans.0.length_km"), "span a-b (spans[0].length_km): is required", None),
    (
        "negative loss",
        _set("spans.0.extra_loss_db", -0.5),
        "span a-b (spans[0].extra_loss_db): must be a finite number >= 0",
        None,
    ),
    (
        "bad band",
        _set("spans.0.bands", ["C", "L"]),
        "span a-b (spans[0].bands): unknown band 'L': expected C or O",
        None,
    ),
    (
        "band twice",
        _set("spans.0.bands", ["C", "c"]),
        "span a-b (spans[0].bands): band C is listed twice",
        None,
    ),
    ("no band", _set("spans.0.bands", []), "span a-b (spans[0].bands): at least one band", None),
    (
        "bands not a list",
        _set("spans.0.bands", "C"),
        "span a-b (spans[0].bands): must be a list of strings",
        None,
    ),
    ("unknown session key", _set("sessions.0.qos", 1), "session s1 (sessions[0].qos): unknown key", None),
    (
        "session end unknown",
        _set("sessions.0.dst", "Z"),
        "session s1 (sessions[0].dst): unknown node 'Z'",
        None,
    ),
    (
        "session to itself",
        _set("sessions.0.dst", "A"),
        "session s1 (sessions[0].dst): src and dst are the same node A",
        None,
    ),
    (
        "session SAE not on its node",
        _set("sessions.0.src_sae", "sae-c"),
        "session s1 (sessions[0].src_sae): SAE 'sae-c' is not declared on node A (it declares sae-a)",
        "sessions[0].src_sae",
    ),
    (
        "session SAE on a node without SAEs",
        _both(_set("sessions.0.dst", "B"), _set("sessions.0.dst_sae", "sae-b")),
        "session s1 (sessions[0].dst_sae): SAE 'sae-b' is not declared on node B (it declares none)",
        None,
    ),
    (
        "rate zero",
        _set("sessions.0.rate_bps", 0),
        "session s1 (sessions[0].rate_bps): must be an integer > 0, got 0",
        None,
    ),
    (
        "rate negative",
        _set("sessions.0.rate_bps", -5),
        "session s1 (sessions[0].rate_bps): must be an integer > 0",
        None,
    ),
    (
        "rate not an integer",
        _set("sessions.0.rate_bps", 1.5),
        "session s1 (sessions[0].rate_bps): must be an integer",
        None,
    ),
    (
        "duplicate session name",
        lambda d: d["sessions"].append(dict(d["sessions"][0])),
        "session s1 (sessions[1].name): duplicate session name 's1': session s1 (sessions[0]) already has it",
        "sessions[1].name",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "fragment", "path"), NEGATIVE, ids=[c[0] for c in NEGATIVE])
def test_invalid_topologies_are_rejected_naming_the_object(
    case: str, mutate: Mutation, fragment: str, path: str | None
) -> None:
    data = copy.deepcopy(base())
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_topology(data, "t.yaml")
    message = info.value.first.message
    assert fragment in message, f"{case}: {message!r}"
    assert message.startswith("t.yaml: "), "every message names the file"
    if path is not None:
        assert info.value.first.path == path


def test_not_a_mapping_at_all() -> None:
    with pytest.raises(ConfigError, match=r"^t\.yaml: top level: must be a mapping"):
        parse_topology([1, 2], "t.yaml")


# -------------------------------------------------------------------------------------------- files


def test_load_reports_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_topology(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: not valid YAML"):
        load_topology(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"empty\.yaml: top level: must be a mapping"):
        load_topology(empty)


def test_a_key_given_twice_is_an_error_not_an_overwrite(tmp_path: Path) -> None:
    f = tmp_path / "twice.yaml"
    f.write_text("name: x\nnodes:\n  - {name: A, role: endpoint, role: repeater}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"twice\.yaml:3:\d+: not valid YAML: key 'role' given twice"):
        load_topology(f)


def test_importing_the_topology_module_stays_light() -> None:
    """The launcher and ``qsdn`` import these at start-up: no controller, agent, rich or matplotlib."""
    code = (
        "import sys, qsdn.lab.topology, qsdn.lab.plan_cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('agent', 'controller', 'matplotlib', 'rich', 'networkx'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ entanglement hardware


def chain() -> dict[str, Any]:
    """A - S1 - R - S2 - B: memories at the ends and the repeater, stations at the midpoints."""
    return {
        "name": "ch",
        "nodes": [
            {"name": "A", "saes": ["sae-a"], "entanglement": {"memories": 4}},
            {"name": "S1", "role": "bsm-station"},
            {"name": "R", "role": "repeater", "entanglement": {"coherence_time_s": 0.5, "modes": 10}},
            {"name": "S2", "role": "bsm-station", "entanglement": {"detector_efficiency": 0.8}},
            {"name": "B", "saes": ["sae-b"], "entanglement": {}},
            {"name": "C", "role": "trusted-relay"},
        ],
        "spans": [
            {"id": "a-s1", "a": "A", "b": "S1", "length_km": 10},
            {"id": "s1-r", "a": "S1", "b": "R", "length_km": 10},
            {"id": "r-s2", "a": "R", "b": "S2", "length_km": 10},
            {"id": "s2-b", "a": "S2", "b": "B", "length_km": 10},
            {"id": "b-c", "a": "B", "b": "C", "length_km": 10},
        ],
        "sessions": [
            {
                "name": "k",
                "src": "A",
                "dst": "B",
                "src_sae": "sae-a",
                "dst_sae": "sae-b",
                "rate_bps": 10,
                "service": "key",
                "target_fidelity": 0.9,
            }
        ],
    }


def test_entanglement_blocks_and_role_defaults() -> None:
    t = parse_topology(chain(), "ch.yaml")
    a, s1, r, s2, b, c = t.nodes
    assert a.memory == MemorySpec(memories=4) and a.station is None
    assert (s1.memory, s1.station) == (None, StationSpec()), "a station always has one, defaults"
    assert r.memory == MemorySpec(coherence_time_s=0.5, modes=10)
    assert s2.station == StationSpec(0.8)
    assert b.memory == MemorySpec(), "an empty block: the defaults"
    assert (c.memory, c.station) == (None, None), "no block, no memories"
    bare = chain()
    del bare["nodes"][2]["entanglement"]
    assert parse_topology(bare).node("R").memory == MemorySpec(), "a repeater always has memories"
    assert [n.name for n in t.quantum_devices] == ["A", "S1", "R", "S2", "B"]
    assert t.needs_medium and not parse_topology(base()).needs_medium
    assert t.segment_partners("A") == ["B"] and t.segment_partners("B") == ["A"]
    assert t.segment_partners("C") == [], "B is C's direct neighbour: a QKD hop, no segment"
    (k,) = t.sessions
    assert (k.service, k.target_fidelity) == ("key", 0.9)
    assert parse_topology(base()).sessions[0].service == "qkd"


def test_the_defaults_are_the_controllers() -> None:
    from controller.model import MemoryParams, StationParams

    m, st = MemorySpec(), MemoryParams()
    assert (m.memories, m.coherence_time_s, m.swap_success, m.initial_fidelity, m.modes) == (
        st.memories,
        st.coherence_s,
        st.swap_success,
        st.initial_fidelity,
        st.modes,
    )
    assert StationSpec().detector_efficiency == StationParams().detector_efficiency


ENTANGLEMENT_NEGATIVE: list[tuple[str, Mutation, str, str | None]] = [
    (
        "block not a mapping",
        _set("nodes.0.entanglement", 4),
        "node A (nodes[0].entanglement): must be a mapping",
        None,
    ),
    (
        "unknown key",
        _set("nodes.2.entanglement.t2", 1),
        "node R (nodes[2].entanglement.t2): unknown key",
        "nodes[2].entanglement.t2",
    ),
    (
        "no memories",
        _set("nodes.0.entanglement.memories", 0),
        "node A (nodes[0].entanglement.memories): must be an integer between 1 and 1000000, got 0",
        None,
    ),
    (
        "memories not an integer",
        _set("nodes.0.entanglement.memories", 2.5),
        "node A (nodes[0].entanglement.memories): must be an integer",
        None,
    ),
    ("modes zero", _set("nodes.2.entanglement.modes", 0), "node R (nodes[2].entanglement.modes)", None),
    (
        "coherence zero",
        _set("nodes.2.entanglement.coherence_time_s", 0),
        "node R (nodes[2].entanglement.coherence_time_s): must be a finite number > 0",
        None,
    ),
    (
        "coherence infinite",
        _set("nodes.2.entanglement.coherence_time_s", math.inf),
        "node R (nodes[2].entanglement.coherence_time_s): must be a finite number >= 0",
        None,
    ),
    (
        "swap success zero",
        _set("nodes.2.entanglement.swap_success", 0),
        "node R (nodes[2].entanglement.swap_success): must be between 0 (excluded) and 1",
        None,
    ),
    (
        "swap success above one",
        _set("nodes.2.entanglement.swap_success", 1.5),
        "node R (nodes[2].entanglement.swap_success): must be between 0 and 1, got 1.5",
        None,
    ),
    (
        "fidelity below a quarter",
        _set("nodes.0.entanglement.initial_fidelity", 0.2),
        "node A (nodes[0].entanglement.initial_fidelity): must be between 0.25 and 1, got 0.2",
        None,
    ),
    (
        "memories on a station",
        _set("nodes.1.entanglement", {"memories": 2}),
        "node S1 (nodes[1].entanglement.memories): a bsm-station has no quantum memories",
        "nodes[1].entanglement.memories",
    ),
    (
        "detectors on a repeater",
        _set("nodes.2.entanglement.detector_efficiency", 0.9),
        "node R (nodes[2].entanglement.detector_efficiency): only a bsm-station has detectors, not a repeater",
        None,
    ),
    (
        "detector efficiency zero",
        _set("nodes.3.entanglement.detector_efficiency", 0),
        "node S2 (nodes[3].entanglement.detector_efficiency): must be between 0 (excluded) and 1",
        None,
    ),
    (
        "station next to a node without memories",
        _delete("nodes.0.entanglement"),
        "node S1 (nodes[1].role): a bsm-station heralds pairs between memory nodes, but its neighbour A "
        "(endpoint) has no quantum memories",
        "nodes[1].role",
    ),
    (
        "station at the end of one span",
        lambda d: d["spans"].__setitem__(1, {"id": "a-r", "a": "A", "b": "R", "length_km": 20}),
        "node S1 (nodes[1].role): a bsm-station heralds pairs between two memory nodes: it needs spans "
        "to at least two nodes, it has 1",
        None,
    ),
    (
        "unknown service",
        _set("sessions.0.service", "pairs"),
        "session k (sessions[0].service): unknown service 'pairs': expected one of qkd, key",
        "sessions[0].service",
    ),
    (
        "fidelity on a qkd session",
        _set("sessions.0.service", "qkd"),
        "session k (sessions[0].target_fidelity): only a key session (service: key) crosses repeaters",
        None,
    ),
    (
        "fidelity out of range",
        _set("sessions.0.target_fidelity", 1.2),
        "session k (sessions[0].target_fidelity): must be between 0.25 and 1, got 1.2",
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "fragment", "path"), ENTANGLEMENT_NEGATIVE, ids=[c[0] for c in ENTANGLEMENT_NEGATIVE]
)
def test_invalid_entanglement_is_rejected_naming_the_node(
    case: str, mutate: Mutation, fragment: str, path: str | None
) -> None:
    data = chain()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_topology(data, "ch.yaml")
    message = info.value.first.message
    assert fragment in message, f"{case}: {message!r}"
    assert message.startswith("ch.yaml: ")
    if path is not None:
        assert info.value.first.path == path


def test_the_repeater_chain_example() -> None:
    t = load_topology(EXAMPLES / "repeater-chain.yaml")
    assert [(n.name, n.role) for n in t.nodes] == [
        ("alice", "endpoint"),
        ("st-ar", "bsm-station"),
        ("rep", "repeater"),
        ("st-rb", "bsm-station"),
        ("bob", "endpoint"),
    ]
    assert all(n.memory is not None for n in t.nodes if n.role != "bsm-station")
    assert [s.service for s in t.sessions] == ["key"]


def test_the_mixed_example() -> None:
    t = load_topology(EXAMPLES / "mixed.yaml")
    roles = {n.role for n in t.nodes}
    assert roles == {"endpoint", "trusted-relay", "repeater", "bsm-station"}
    assert all(s.service == "key" for s in t.sessions) and len(t.sessions) >= 2


# --------------------------------------------------------------------------- launcher configuration


def _generate(tmp_path: Path, name: str) -> tuple[LabTopology, dict[str, Any]]:
    from qsdn.lab import launcher

    t = load_topology(EXAMPLES / f"{name}.yaml")
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    for sub in launcher.GENERATED:
        (lab_dir / sub).mkdir()
    return t, launcher.generate(t, lab_dir, "processes", None, seed=7)


def _validate_agent_config(path: Path) -> bool:
    """Load a generated node.yaml as the agent does; False when the only objection is the
    ``entanglement`` section an agent without the entanglement driver does not know yet (then the rest
    is validated without it)."""
    import yaml

    from agent.config import load_config, parse_config

    try:
        load_config(path)
    except ConfigError as exc:
        if "entanglement: unknown key" not in exc.first.message:
            raise
        data = yaml.safe_load(path.read_text())
        del data["entanglement"]
        parse_config(data, str(path), base_dir=path.parent)
        return False
    return True


@pytest.mark.parametrize("name", ["repeater-chain", "mixed"])
def test_launcher_configuration_of_the_entanglement_examples(tmp_path: Path, name: str) -> None:
    import yaml

    from controller.config import load_topology as load_controller_topology
    from controller.service import node_from_record

    t, lab = _generate(tmp_path, name)
    medium = lab["medium"]
    assert (
        medium["host"] == "127.0.0.1" and medium["port"] > 0 and medium["seed"] == 7 and medium["pid"] is None
    )
    medium_addr = {"host": medium["host"], "port": medium["port"]}
    for entry in lab["nodes"]:
        node = t.node(entry["name"])
        cfg = yaml.safe_load(Path(entry["config"]).read_text())
        if node.holds_key:
            assert entry["kme_url"] and "kme" in cfg
            peers = {p["kme_id"] for p in cfg["kme"]["peers"].values()}
            assert all(t.node(p).holds_key for p in peers), "KMEs talk to key-holding nodes only"
        else:
            assert entry["kme_url"] is None and "kme" not in cfg, f"{node.name}: a {node.role} has no KME"
            assert entry["saes"] == []
        if node.quantum_device:
            assert cfg["entanglement"] == {"medium": medium_addr}
            assert entry["entanglement"]["medium"] == f"{medium['host']}:{medium['port']}"
        else:
            assert "entanglement" not in cfg and entry["entanglement"] is None
        # the agent accepts what the lab wrote (the entanglement section once it knows it)
        assert _validate_agent_config(Path(entry["config"])) or node.quantum_device
    # The ends of a repeater segment are each other's KME peers although no span joins them.
    ends = [("alice", "bob")] if name == "repeater-chain" else [("ams", "ehv")]
    for x, y in ends:
        cfg = yaml.safe_load(Path(next(n for n in lab["nodes"] if n["name"] == x)["config"]).read_text())
        assert t.node(y).node_id in cfg["kme"]["peers"]
    # The controller's topology: real roles, entanglement parameters, nothing trusted but key holders.
    records, spans = load_controller_topology(Path(lab["dir"]) / "controller" / "topology.yaml")
    assert len(spans) == len(t.spans)
    for rec in records:
        node = t.node(rec.name)
        model = node_from_record(rec)
        expected_role = {"trusted-relay": "relay"}.get(node.role, node.role)
        assert (model.role, model.trusted) == (expected_role, node.holds_key)
        if node.memory is not None:
            assert model.memory is not None and model.memory.memories == node.memory.memories
            assert model.memory.swap_success == node.memory.swap_success
            assert model.memory.coherence_s == node.memory.coherence_time_s
        else:
            assert model.memory is None
        if node.station is not None:
            assert model.station is not None
            assert model.station.detector_efficiency == node.station.detector_efficiency
    assert [s["service"] for s in lab["sessions"]] == [s.service for s in t.sessions]


def test_launcher_configuration_without_repeaters_has_no_medium(tmp_path: Path) -> None:
    import yaml

    _, lab = _generate(tmp_path, "chain3")
    assert lab["medium"] is None
    for entry in lab["nodes"]:
        cfg = yaml.safe_load(Path(entry["config"]).read_text())
        assert "entanglement" not in cfg and "kme" in cfg
    topo = yaml.safe_load((Path(lab["dir"]) / "controller" / "topology.yaml").read_text())
    assert {n["name"]: n["role"] for n in topo["nodes"]} == {
        "alice": "endpoint",
        "relay": "relay",
        "bob": "endpoint",
    }
    assert all("entanglement" not in n for n in topo["nodes"])


def test_netns_entanglement_labs_are_refused_with_a_reason() -> None:
    from qsdn.lab.launcher import entanglement_unsupported_reason

    t = load_topology(EXAMPLES / "repeater-chain.yaml")
    reason = entanglement_unsupported_reason(t, "netns")
    assert reason is not None and "--mode netns does not run entanglement labs yet" in reason
    assert "st-ar" in reason and "rep" in reason
    assert entanglement_unsupported_reason(load_topology(EXAMPLES / "chain3.yaml"), "netns") is None
