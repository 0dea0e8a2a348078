"""The pure parts of benchmarks/entanglement.py: parameter mapping, expected ratio, tables (no SeQUeNCe)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from qsdn.physics.entanglement import two_segment_attempts

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "entanglement.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_entanglement", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_photon_efficiency_and_heralding_probability(bench: ModuleType) -> None:
    p = bench.ChainParameters(
        hop_length_km=20.0, attenuation_db_per_km=0.2, memory_efficiency=0.9, detector_efficiency=0.9
    )
    # 10 km to the station at 0.2 dB/km = 2 dB
    assert p.half_hop_transmittance == pytest.approx(10 ** (-0.2))
    eta = 0.9 * 10 ** (-0.2) * 0.9
    assert p.photon_efficiency == pytest.approx(eta)
    assert p.heralding_probability == pytest.approx(eta * eta / 2)
    assert p.attempt_time_s == pytest.approx(1e-4)  # 20 km at 2e8 m/s


def test_swap_fidelities(bench: ModuleType) -> None:
    p = bench.ChainParameters(raw_fidelity=0.95, swap_degradation=0.95)
    assert p.werner_swap_fidelity == pytest.approx(0.95**2 + 0.05**2 / 3)
    assert p.sequence_swap_fidelity == pytest.approx(0.95**3)


def test_sequence_argv_carries_every_shared_parameter(bench: ModuleType) -> None:
    p = bench.ChainParameters(hop_length_km=30.0, memories=2, coherence_time_s=0.5, swap_success=0.7)
    argv = p.sequence_argv(10.0, seed=4)
    assert "--emulated-s=10.0" in argv and "--seed=4" in argv
    assert "--hop-length-km=30.0" in argv and "--memories=2" in argv
    assert "--coherence-time-s=0.5" in argv and "--swap-success=0.7" in argv
    assert "--attenuation-db-per-km=0.2" in argv
    assert "--memory-efficiency=0.9" in argv and "--detector-efficiency=0.9" in argv


def test_mapping_names_each_parameter_once(bench: ModuleType) -> None:
    rows = bench.parameter_mapping(bench.ChainParameters())
    names = [r.parameter for r in rows]
    assert len(names) == len(set(names))
    for needed in (
        "hop length (router to router)",
        "fibre attenuation",
        "memories per hop end",
        "initial pair fidelity",
        "memory efficiency",
        "detector efficiency",
        "heralding probability",
        "attempt time",
        "memory coherence",
        "swap success",
        "swapped fidelity",
    ):
        assert needed in names
    text = bench.format_mapping(rows)
    assert text.splitlines()[0].startswith("| parameter | qsdn | SeQUeNCe")
    assert all(line.count("|") == 5 for line in text.splitlines())


def test_expected_ratio_is_the_attempt_clock_ratio(bench: ModuleType) -> None:
    assert bench.expected_rate_ratio(1e-4, 5.5e-4) == pytest.approx(5.5)
    with pytest.raises(ValueError):
        bench.expected_rate_ratio(0.0, 1e-4)


def _run(bench: ModuleType, model: str, pairs: list[int], wall: float) -> list[object]:
    return [bench.Run(model, 10.0, i + 1, wall, n, 0.9 * n) for i, n in enumerate(pairs)]


def test_summary_takes_the_median_wall_time_and_pools_the_seeds(bench: ModuleType) -> None:
    repeats = [_run(bench, "qsdn", [100, 110, 90], w) for w in (0.3, 0.1, 0.2)]
    row = bench.summarise("qsdn", repeats)
    assert row.pairs == 300 and row.seeds == 3
    assert row.wall_s == pytest.approx(0.6)  # median of the three repeats' totals (0.9, 0.3, 0.6)
    assert row.wall_per_emulated_s == pytest.approx(0.6 / 30.0)
    assert row.rate_per_s == pytest.approx(10.0)
    assert row.rate_stderr == pytest.approx(1.0 / math.sqrt(3))  # stdev of 10, 11, 9 is 1
    assert row.mean_fidelity == pytest.approx(0.9)


def test_agreement_and_table(bench: ModuleType) -> None:
    q = bench.summarise("qsdn", [_run(bench, "qsdn", [4460, 4460, 4460], 0.1)])
    s = bench.summarise("SeQUeNCe", [_run(bench, "SeQUeNCe", [800, 800, 800], 30.0)])
    s.speed_up = s.wall_per_emulated_s / q.wall_per_emulated_s
    assert s.speed_up == pytest.approx(300.0)
    verdict = bench.agreement(q, s, qsdn_attempt_s=1e-4, sequence_attempt_s=5.5e-4)
    assert verdict.measured_ratio == pytest.approx(5.575)
    assert verdict.agrees  # 1.4 % off, within 5 % (no seed spread here)
    assert not bench.agreement(q, s, qsdn_attempt_s=1e-4, sequence_attempt_s=8e-4).agrees
    q.predicted_rate, q.predicted_fidelity = 445.6, 0.8812
    table = bench.format_results([q, s]).splitlines()
    assert len(table) == 4 and all(line.count("|") == 10 for line in table)
    assert "| qsdn | 10 x 3 |" in table[2] and "445.6, 0.8812" in table[2]
    assert "300x" in table[3]


def test_closed_form_for_the_default_scenario(bench: ModuleType) -> None:
    # What the docs quote: a two-segment repeater needs (3-2p)/(a p (2-p)) attempts per pair.
    p = bench.ChainParameters()
    attempts = two_segment_attempts(p.heralding_probability, p.swap_success)
    assert 1.0 / (attempts * p.attempt_time_s) == pytest.approx(445.6, rel=1e-3)


def test_sequence_checks_and_verdict_line(bench: ModuleType) -> None:
    p = bench.ChainParameters()
    runs = [
        {
            "attempts_per_hop": {"a-r": 500, "b-r": 500},
            "heralded_per_hop": {"a-r": 65, "b-r": 66},
            "attempt_period_s": 5.5e-4,
        },
        {
            "attempts_per_hop": {"a-r": 500, "b-r": 500},
            "heralded_per_hop": {"a-r": 65, "b-r": 65},
            "attempt_period_s": 5.7e-4,
        },
    ]
    v = bench.sequence_checks(p, 1.0, runs)
    assert v["sequence_attempts"] == 2000
    assert v["sequence_heralding_probability"] == pytest.approx(261 / 2000)
    assert v["sequence_attempt_period_s"] == pytest.approx(5.6e-4)
    assert v["closed_form_rate_at_qsdn_clock"] == pytest.approx(445.6, rel=1e-3)
    assert v["closed_form_rate_at_sequence_clock"] == pytest.approx(445.6 / 5.6, rel=1e-3)
    line = bench.format_verdict(v, p)
    assert "5.60 L/c" in line and "speed-up" not in line  # no qsdn run: no comparison
