"""``qsdn plan``: classes consistent with the controller, the relay hint, JSON, PNG and the command."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from controller.model import Span
from controller.pathcomp import classify_span
from qsdn.errors import ConfigError, QsdnError
from qsdn.lab import plan_cli
from qsdn.lab.plan import (
    build_plan,
    controller_topology,
    plan_json,
    rate_text,
    relay_sites,
    render_table,
    span_device,
    write_png,
)
from qsdn.lab.topology import LabTopology, load_topology, parse_topology
from qsdn.physics.bb84 import DeviceParams, secret_key_rate_bps
from qsdn.physics.loss import Band, SpanClass, planning_class

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "labs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def two_nodes(length_km: float, extra_loss_db: float = 0.0, **span: Any) -> LabTopology:
    return parse_topology(
        {
            "name": "pair",
            "nodes": [{"name": "A", "saes": ["sae-a"]}, {"name": "B", "saes": ["sae-b"]}],
            "spans": [
                {
                    "id": "a-b",
                    "a": "A",
                    "b": "B",
                    "length_km": length_km,
                    "extra_loss_db": extra_loss_db,
                    **span,
                }
            ],
        },
        "pair.yaml",
    )


# --------------------------------------------------------------------------------------- classes

# O band: 0.33 dB/km, so 20 dB at 60.606 km; C band: 0.2 dB/km, so 20 dB at 100 km (strict: 20 dB is red).
BOUNDARIES = [
    (0.0, 0.0, SpanClass.GREEN),
    (60.6, 0.0, SpanClass.GREEN),
    (60.61, 0.0, SpanClass.ORANGE),
    (99.99, 0.0, SpanClass.ORANGE),
    (100.0, 0.0, SpanClass.RED),
    (100.01, 0.0, SpanClass.RED),
    (50.0, 3.5, SpanClass.ORANGE),  # 16.5 + 3.5 = 20.0 dB in O is not below the budget; 13.5 dB in C
    (49.9, 3.5, SpanClass.GREEN),
    (90.0, 2.0, SpanClass.RED),  # 18 + 2 = 20 dB in C
    (0.0, 20.0, SpanClass.RED),
]


@pytest.mark.parametrize(("length_km", "extra_db", "expected"), BOUNDARIES)
def test_classes_at_the_boundaries_match_the_controller(
    length_km: float, extra_db: float, expected: SpanClass
) -> None:
    report = build_plan(two_nodes(length_km, extra_db))
    (s,) = report.spans
    controller = classify_span(Span("a-b", "x", "y", length_km, extra_db, ("C", "O"), DeviceParams()))
    assert s.span_class is expected is controller.span_class is planning_class(length_km, extra_db)
    assert s.band == controller.band
    assert s.rate_bps == controller.predicted_rate_bps
    assert s.loss_o_db == pytest.approx(0.33 * length_km + extra_db)
    assert s.loss_c_db == pytest.approx(0.2 * length_km + extra_db)
    assert s.relay_needed is (expected is SpanClass.RED)
    assert (
        s.needs == {"green": "lit-fibre", "orange": "dark-fibre", "red": "relay-or-repeater"}[expected.value]
    )
    assert (s.relay_hint is not None) is (expected is SpanClass.RED and extra_db < 20)


def test_green_uses_the_o_band_orange_the_c_band_and_rates_follow_the_bb84_model() -> None:
    green = build_plan(two_nodes(30.0, 1.0)).spans[0]
    assert green.band is Band.O and green.usable
    assert green.rate_bps == pytest.approx(secret_key_rate_bps(0.33 * 30 + 1.0))
    orange = build_plan(two_nodes(80.0, 1.0)).spans[0]
    assert orange.band is Band.C and orange.usable
    assert orange.rate_bps == pytest.approx(secret_key_rate_bps(0.2 * 80 + 1.0))
    # An orange span on a fibre that offers only the O band carries no key: it needs a dark fibre.
    lit_only = build_plan(two_nodes(80.0, 1.0, bands=["O"])).spans[0]
    assert lit_only.span_class is SpanClass.ORANGE and lit_only.band is None and not lit_only.usable
    assert lit_only.rate_bps == 0.0 and "C band" in (lit_only.reason or "")


def test_the_weaker_end_device_is_used() -> None:
    good = {"eta_det": 0.6, "dark_count": 1e-7}
    for better_end, weaker in (("A", "B"), ("B", "A")):
        data: dict[str, Any] = {
            "name": "pair",
            "nodes": [{"name": "A"}, {"name": "B"}],
            "spans": [{"id": "a-b", "a": "A", "b": "B", "length_km": 80}],
        }
        data["nodes"][0 if better_end == "A" else 1]["device"] = good
        t = parse_topology(data)
        name, device = span_device(t, t.spans[0])
        assert (name, device) == (weaker, DeviceParams())
        s = build_plan(t).spans[0]
        assert s.device_node == weaker
        assert s.rate_bps == pytest.approx(secret_key_rate_bps(16.0, DeviceParams()))
    t = two_nodes(80.0)
    assert span_device(t, t.spans[0])[0] == "A", "equal devices: the a end"
    # Both ends produce nothing on a red span: the smaller loss budget decides.
    red = parse_topology(
        {
            "name": "red",
            "nodes": [{"name": "A", "device": good}, {"name": "B"}],
            "spans": [{"id": "a-b", "a": "A", "b": "B", "length_km": 200}],
        }
    )
    assert span_device(red, red.spans[0])[0] == "B"


# ------------------------------------------------------------------------------------ relay hint


def test_relay_sites_is_the_fewest_at_equal_spacing() -> None:
    assert relay_sites(50.0, 0.0) == 0
    assert relay_sites(100.0, 0.0) == 1  # 20 dB exactly is red; two 50 km hops are 10 dB each
    assert relay_sites(160.0, 1.0) == 1  # 2 x 80 km: 17 dB in C
    assert relay_sites(160.0, 1.0, SpanClass.GREEN) == 2  # 3 x 53.3 km: 18.6 dB in O
    assert relay_sites(232.0, 1.0) == 2  # 3 x 77.3 km: 16.5 dB
    assert relay_sites(10.0, 20.0) is None  # the extra loss alone uses the budget
    assert relay_sites(1e-9, 25.0) is None
    with pytest.raises(ValueError, match="GREEN or ORANGE"):
        relay_sites(100.0, 0.0, SpanClass.RED)
    for length_km in (100.0, 150.0, 199.9, 200.0, 333.3, 1000.0, 5000.0):
        for extra_db in (0.0, 0.5, 3.0, 12.0, 19.5):
            for target in (SpanClass.ORANGE, SpanClass.GREEN):
                n = relay_sites(length_km, extra_db, target)
                assert n is not None

                def rank(sites: int, length_km: float = length_km, extra_db: float = extra_db) -> int:
                    c = planning_class(length_km / (sites + 1), extra_db)
                    return [SpanClass.GREEN, SpanClass.ORANGE, SpanClass.RED].index(c)

                limit = 0 if target is SpanClass.GREEN else 1
                assert rank(n) <= limit, (length_km, extra_db, target, n)
                assert n == 0 or rank(n - 1) > limit, (length_km, extra_db, target, n)


def test_the_red_span_hint_of_the_metro_ring() -> None:
    report = build_plan(load_topology(EXAMPLES / "metro-ring.yaml"))
    (red,) = [s for s in report.spans if s.span_class is SpanClass.RED]
    assert red.span_id == "utr-ams" and red.rate_bps == 0.0 and not red.usable
    hint = red.relay_hint
    assert hint is not None
    assert (hint.sites, hint.hop_length_km, hint.hop_class, hint.sites_for_green) == (
        1,
        80.0,
        SpanClass.ORANGE,
        2,
    )
    # The hop is assessed like any span: the C band at 17 dB with the weaker device (Amsterdam's default).
    assert red.device_node == "Amsterdam"
    assert hint.hop_rate_bps == pytest.approx(secret_key_rate_bps(17.0))
    assert report.relay_sites == 1


def test_no_spacing_helps_when_the_extra_loss_uses_the_budget() -> None:
    report = build_plan(two_nodes(10.0, 21.0))
    (s,) = report.spans
    assert s.relay_needed and s.relay_hint is None
    assert "1 beyond any spacing" in report.summary()
    table = io.StringIO()
    render_table(report, Console(file=table, width=200, color_system=None))
    assert "none: 21 dB extra loss per hop" in table.getvalue()


# -------------------------------------------------------------------------------------- sessions


def test_sessions_go_round_the_red_span_and_reserve_their_rate() -> None:
    report = build_plan(load_topology(EXAMPLES / "metro-ring.yaml"))
    by_name = {s.name: s for s in report.sessions}
    ams_utr = by_name["ams-utr"]
    assert ams_utr.admitted and "utr-ams" not in ams_utr.spans
    assert ams_utr.path == ("Amsterdam", "Haarlem", "Leiden", "DenHaag", "Rotterdam", "Utrecht")
    # hlm-utr shares rtm-utr, the weakest hop, with ams-utr, admitted before it: 2000 bit/s less left.
    rtm_utr = next(s for s in report.spans if s.span_id == "rtm-utr")
    assert ams_utr.bottleneck_bps == pytest.approx(rtm_utr.rate_bps)
    assert by_name["hlm-utr"].bottleneck_bps == pytest.approx(rtm_utr.rate_bps - 2000)


def test_a_session_without_a_path_is_reported_not_raised() -> None:
    t = parse_topology(
        {
            "name": "cut",
            "nodes": [
                {"name": "A", "saes": ["sae-a"]},
                {"name": "R", "role": "repeater"},
                {"name": "B", "saes": ["sae-b"]},
            ],
            "spans": [
                {"id": "a-r", "a": "A", "b": "R", "length_km": 10},
                {"id": "r-b", "a": "R", "b": "B", "length_km": 10},
                {"id": "a-b", "a": "A", "b": "B", "length_km": 300},
            ],
            "sessions": [
                {"name": "s", "src": "A", "dst": "B", "src_sae": "sae-a", "dst_sae": "sae-b", "rate_bps": 10}
            ],
        }
    )
    model = controller_topology(t)
    assert model.nodes[t.node("R").node_id].trusted is False, "a repeater is no trusted relay"
    (s,) = build_plan(t).sessions
    assert not s.admitted and s.path == () and s.reason
    assert "0 of 1 session admitted" in build_plan(t).summary()


# ------------------------------------------------------------------------------------------ JSON

SPAN_KEYS: dict[str, type | tuple[type, ...]] = {
    "span_id": str,
    "a": str,
    "b": str,
    "length_km": float,
    "extra_loss_db": float,
    "bands": list,
    "loss_o_db": float,
    "loss_c_db": float,
    "class": str,
    "band": (str, type(None)),
    "rate_bps": float,
    "usable": bool,
    "reason": (str, type(None)),
    "needs": str,
    "relay_needed": bool,
    "device_node": str,
    "relay_hint": (dict, type(None)),
}


def test_json_schema_and_numbers() -> None:
    report = build_plan(load_topology(EXAMPLES / "geant-ring.yaml"))
    doc = json.loads(json.dumps(plan_json(report)))
    assert set(doc) == {
        "topology",
        "description",
        "source",
        "planning_budget_db",
        "spans",
        "sessions",
        "summary",
    }
    assert doc["topology"] == "geant-ring" and doc["planning_budget_db"] == 20.0
    assert len(doc["spans"]) == 38
    for span in doc["spans"]:
        assert set(span) == set(SPAN_KEYS)
        for key, kind in SPAN_KEYS.items():
            assert isinstance(span[key], kind), (span["span_id"], key, span[key])
        assert span["class"] in ("green", "orange", "red")
        assert span["loss_c_db"] == pytest.approx(0.2 * span["length_km"] + span["extra_loss_db"], abs=1e-4)
        assert span["loss_o_db"] == pytest.approx(0.33 * span["length_km"] + span["extra_loss_db"], abs=1e-4)
        assert span["relay_needed"] is (span["class"] == "red")
        assert math.isfinite(span["rate_bps"]) and span["rate_bps"] >= 0
    subsea = next(s for s in doc["spans"] if s["span_id"] == "lowestoft-ijmuiden")
    assert subsea["class"] == "red" and subsea["band"] is None and subsea["rate_bps"] == 0
    assert subsea["relay_hint"] == {
        "sites": 2,
        "hop_length_km": pytest.approx(232 / 3, abs=1e-3),
        "hop_class": "orange",
        "hop_rate_bps": pytest.approx(secret_key_rate_bps(0.2 * 232 / 3 + 1.0), abs=1e-2),
        "sites_for_green": 4,
    }
    # Every other span is short enough for QKD: the point of the amplifier sites.
    assert [s["span_id"] for s in doc["spans"] if s["class"] == "red"] == ["lowestoft-ijmuiden"]
    london_geneva = next(s for s in doc["sessions"] if s["name"] == "london-geneva")
    assert set(london_geneva) == {
        "name",
        "src",
        "dst",
        "rate_bps",
        "admitted",
        "path",
        "spans",
        "bottleneck_bps",
        "reason",
        "service",
        "trusted_relays",
        "segments",
    }
    assert london_geneva["service"] == "qkd" and london_geneva["segments"] == []
    assert london_geneva["trusted_relays"] == london_geneva["path"][1:-1]
    assert (
        london_geneva["admitted"]
        and london_geneva["path"][0] == "London"
        and london_geneva["path"][-1] == "Geneva"
    )
    summary = doc["summary"]
    assert summary["spans"] == 38 and summary["classes"]["red"] == 1
    assert summary["classes"]["green"] + summary["classes"]["orange"] == 37
    assert summary["relay_needed"] == 1 and summary["relay_sites"] == 2
    assert summary["sessions_admitted"] == summary["sessions"] == 3
    assert isinstance(summary["text"], str)


def test_rate_text() -> None:
    assert [rate_text(x) for x in (0.0, 2.5, 512.4, 12345.0, 1.05e6)] == [
        "0",
        "2.5 bit/s",
        "512 bit/s",
        "12.3 kbit/s",
        "1.05 Mbit/s",
    ]


# ------------------------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("name", ["geant-ring", "chain3"])
def test_png_is_written_and_valid(tmp_path: Path, name: str) -> None:
    pyplot_before = "matplotlib.pyplot" in sys.modules
    t = load_topology(EXAMPLES / f"{name}.yaml")
    out = tmp_path / "plan.png"
    write_png(t, build_plan(t), out)
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    assert ("matplotlib.pyplot" in sys.modules) is pyplot_before, "pyplot (and its windows) stay unused"


def test_png_without_coordinates_uses_a_circle(tmp_path: Path) -> None:
    t = parse_topology(
        {
            "name": "square",
            "nodes": [{"name": n} for n in "ABCD"],
            "spans": [
                {"id": "ab", "a": "A", "b": "B", "length_km": 10},
                {"id": "bc", "a": "B", "b": "C", "length_km": 70},
                {"id": "cd", "a": "C", "b": "D", "length_km": 150},
                {"id": "da", "a": "D", "b": "A", "length_km": 20},
                {"id": "da2", "a": "A", "b": "D", "length_km": 25, "bands": ["O"]},
            ],
        }
    )
    out = tmp_path / "square.png"
    write_png(t, build_plan(t), out)
    assert out.read_bytes()[:8] == PNG_SIGNATURE


# ------------------------------------------------------------------------------------------- CLI


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qsdn")
    plan_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["plan", str(EXAMPLES / "metro-ring.yaml")])
    assert args.format == "table" and args.png is None
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for text in ("utr-ams", "Utrecht - Amsterdam", "red", "1 site: 2 x 80.0 km orange", "ams-utr"):
        assert text in out
    assert "6 spans: 4 green, 1 orange, 1 red; 1 red span needs a relay or a repeater" in out


def test_cli_json_and_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "chain3.png"
    args = parse(["plan", str(EXAMPLES / "chain3.yaml"), "--format", "json", "--png", str(png)])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout is pure JSON
    assert [s["span_id"] for s in doc["spans"]] == ["alice-relay", "relay-bob"]
    assert [s["class"] for s in doc["spans"]] == ["green", "green"]
    assert f"wrote {png}" in captured.err
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_cli_no_png_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topology = tmp_path / "chain.yaml"
    topology.write_text((EXAMPLES / "chain3.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    args = parse(["plan", str(topology)])
    assert args.func(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.yaml"]
    assert "wrote" not in capsys.readouterr().out


def test_cli_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nnodes: [{name: A}]\nspans: [{id: x, a: A, b: Z, length_km: 1}]\n", encoding="utf-8"
    )
    args = parse(["plan", str(bad)])
    with pytest.raises(ConfigError, match=r"span x \(spans\[0\]\.b\): unknown node 'Z'"):
        args.func(args)
    args = parse(["plan", str(EXAMPLES / "chain3.yaml"), "--png", str(tmp_path / "no" / "such" / "dir.png")])
    with pytest.raises(QsdnError, match="cannot write"):
        args.func(args)


def test_qsdn_plan_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``qsdn plan`` once qsdn/cli.py registers it: exit 0, exit 2 with one line on a bad file."""
    from qsdn import cli

    try:
        cli.build_parser().parse_args(["plan", "topology.yaml"])
    except SystemExit:
        pytest.skip("qsdn/cli.py does not register `qsdn plan` yet")
    assert cli.main(["plan", str(EXAMPLES / "geant-ring.yaml"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["spans"] == 38
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes: [{name: A, role: router}]\n", encoding="utf-8")
    assert cli.main(["plan", str(bad)]) == 2
    assert "node A (nodes[0].role): unknown role 'router'" in capsys.readouterr().err


# ------------------------------------------------------------------------- repeaters, mixed paths


def test_the_repeater_chain_plans_one_repeater_segment() -> None:
    t = load_topology(EXAMPLES / "repeater-chain.yaml")
    model = controller_topology(t)
    rep, station = model.nodes[t.node("rep").node_id], model.nodes[t.node("st-ar").node_id]
    assert (rep.role, rep.trusted, rep.memory is not None) == ("repeater", False, True)
    assert (station.role, station.trusted, station.memory) == ("bsm-station", False, None)
    assert model.nodes[t.node("st-rb").node_id].station is not None
    assert model.nodes[t.node("st-rb").node_id].station.detector_efficiency == 0.85  # type: ignore[union-attr]
    (s,) = build_plan(t).sessions
    assert s.admitted and s.service == "key" and s.trusted_relays == ()
    (g,) = s.segments
    assert g.technology == "entanglement" and g.repeaters == ("rep",) and g.stations == ("st-ar", "st-rb")
    assert g.nodes == ("alice", "st-ar", "rep", "st-rb", "bob")
    assert g.fidelity is not None and g.fidelity >= 0.9, "the session's target fidelity"
    assert s.bottleneck_bps == pytest.approx(g.key_rate_bps) and s.bottleneck_bps >= s.rate_bps


def test_the_mixed_example_picks_relays_repeaters_and_both() -> None:
    report = build_plan(load_topology(EXAMPLES / "mixed.yaml"))
    by_name = {s.name: s for s in report.sessions}
    assert all(s.admitted and s.service == "key" for s in report.sessions)
    # Relays only: two QKD hops through Leiden.
    relays = by_name["ams-rtm"]
    assert [g.technology for g in relays.segments] == ["qkd", "qkd"] and relays.trusted_relays == ("ldn",)
    # Repeaters only: the direct span is red and no trusted site lies on the southern route.
    repeaters = by_name["ams-ehv"]
    assert [g.technology for g in repeaters.segments] == ["entanglement"]
    assert repeaters.trusted_relays == () and repeaters.segments[0].repeaters == ("rep",)
    # Both: QKD to Amsterdam (a trusted endpoint relays), then the repeater segment.
    mixed = by_name["rtm-ehv"]
    assert [g.technology for g in mixed.segments] == ["qkd", "qkd", "entanglement"]
    assert mixed.path == ("rtm", "ldn", "ams", "st-1", "rep", "st-2", "ehv")
    assert mixed.trusted_relays == ("ldn", "ams")


def test_repeater_segments_in_json_and_table() -> None:
    report = build_plan(load_topology(EXAMPLES / "mixed.yaml"))
    doc = json.loads(json.dumps(plan_json(report)))
    seg = next(s for s in doc["sessions"] if s["name"] == "ams-ehv")["segments"][0]
    assert seg["technology"] == "entanglement" and seg["repeaters"] == ["rep"]
    assert seg["stations"] == ["st-1", "st-2"] and seg["spans"] == [
        "ams-st1",
        "st1-rep",
        "rep-st2",
        "st2-ehv",
    ]
    assert seg["swap_order"] in ("asap", "nested", "sequential") and 0.835 < seg["fidelity"] <= 1
    assert seg["pair_rate_hz"] > 0 and seg["key_rate_bps"] > 0
    console = Console(record=True, width=200)
    render_table(report, console)
    text = console.export_text()
    assert "rtm > ldn > ams =rep= ehv" in text and "ams > ldn > rtm" in text
    assert "Repeater segments" in text and "st-1, st-2" in text


def test_a_key_session_beyond_the_memories_is_rejected_not_raised() -> None:
    doc = yaml.safe_load((EXAMPLES / "repeater-chain.yaml").read_text())
    doc["nodes"][2]["entanglement"]["memories"] = 2  # one session's worth at the repeater
    second = dict(doc["sessions"][0], name="again")
    doc["sessions"].append(second)
    report = build_plan(parse_topology(doc))
    first, again = report.sessions
    assert first.admitted and not again.admitted and again.reason
    assert again.service == "key"
