"""Entanglement algebra against the closed forms it cites (qsdn.physics.entanglement)."""

from __future__ import annotations

import math
import random

import pytest

from qsdn.errors import ConfigError
from qsdn.physics.entanglement import (
    BellState,
    attempt_time_s,
    bbm92_secret_fraction,
    bbpssw,
    dejmps,
    dephase,
    depolarise,
    expected_max_geometric,
    heralding_probability,
    multiplexed_probability,
    single_click,
    swap,
    swap_chain,
    two_segment_attempts,
    wait_all_decay,
    werner,
)


@pytest.mark.parametrize(("f1", "f2"), [(0.95, 0.95), (0.9, 0.99), (0.7, 0.8), (1.0, 0.6)])
def test_swapping_werner_pairs_follows_the_closed_form(f1: float, f2: float) -> None:
    out = swap(werner(f1), werner(f2))
    assert out.fidelity == pytest.approx(f1 * f2 + (1 - f1) * (1 - f2) / 3)
    assert out.werner_parameter == pytest.approx(werner(f1).werner_parameter * werner(f2).werner_parameter)
    # Werner in, Werner out.
    assert out.p[1] == pytest.approx(out.p[2]) == pytest.approx(out.p[3])


def test_swapping_composes_pauli_errors_in_the_klein_group() -> None:
    z = BellState((0.0, 1.0, 0.0, 0.0))
    x = BellState((0.0, 0.0, 1.0, 0.0))
    assert swap(z, x).p == pytest.approx((0.0, 0.0, 0.0, 1.0))  # Z X = Y up to phase
    assert swap(x, x).p == pytest.approx((1.0, 0.0, 0.0, 0.0))
    chain = swap_chain([werner(0.97)] * 4)
    assert chain.werner_parameter == pytest.approx(werner(0.97).werner_parameter ** 4)


def test_bbpssw_matches_bennett_1996_for_equal_inputs() -> None:
    f = 0.8
    p_ok, out = bbpssw(werner(f), werner(f))
    g = (1 - f) / 3
    assert p_ok == pytest.approx(f * f + 2 * f * g + 5 * g * g)
    assert out.fidelity == pytest.approx((f * f + g * g) / p_ok)
    assert out.fidelity > f
    # Below F = 1/2 BBPSSW cannot improve a Werner pair.
    assert bbpssw(werner(0.45), werner(0.45))[1].fidelity < 0.45


def test_dejmps_beats_bbpssw_after_the_first_round() -> None:
    s1 = s2 = werner(0.8)
    d = b = werner(0.8)
    for _ in range(3):
        _, d = dejmps(d, d)
        _, b = bbpssw(b, b)
    assert d.fidelity > b.fidelity > 0.8
    p_ok, out = dejmps(s1, s2)
    assert p_ok == pytest.approx(bbpssw(s1, s2)[0])
    assert sum(out.p) == pytest.approx(1.0)


def test_dejmps_leaves_a_perfect_pair_perfect() -> None:
    p_ok, out = dejmps(werner(1.0), werner(1.0))
    assert p_ok == pytest.approx(1.0)
    assert out.fidelity == pytest.approx(1.0)


def test_depolarising_memory_decays_to_the_mixed_state() -> None:
    s = werner(0.95)
    t, big_t = 0.01, 0.1
    out = depolarise(s, t, big_t, qubits=2)
    assert out.fidelity == pytest.approx(0.25 + (0.95 - 0.25) * math.exp(-2 * t / big_t))
    assert depolarise(s, 1e6, 1.0).fidelity == pytest.approx(0.25)
    assert depolarise(s, 1.0, math.inf) is s


def test_dephasing_turns_phi_plus_into_phi_minus_only() -> None:
    out = dephase(werner(1.0), 1e6, 1.0)
    assert out.p == pytest.approx((0.5, 0.5, 0.0, 0.0))
    assert out.qber_z == pytest.approx(0.0)  # no bit flips
    assert out.qber_x == pytest.approx(0.5)


def test_heralding_and_multiplexing() -> None:
    assert heralding_probability(0.5, 0.4) == pytest.approx(0.1)
    assert multiplexed_probability(0.1, 1) == pytest.approx(0.1)
    assert multiplexed_probability(0.1, 10) == pytest.approx(1 - 0.9**10)
    assert attempt_time_s(20.0) == pytest.approx(1e-4)
    assert single_click(0.05, 0.5) == pytest.approx((0.05, 0.95))
    with pytest.raises(ConfigError):
        heralding_probability(1.5, 0.1)


def test_waiting_times_agree_with_shchukin_and_sampling() -> None:
    for p in (0.01, 0.1, 0.5, 1.0):
        assert expected_max_geometric(p, 2) == pytest.approx(two_segment_attempts(p))
    assert two_segment_attempts(0.1, 0.5) == pytest.approx(2 * two_segment_attempts(0.1))
    rng = random.Random(7)
    p, n, samples = 0.2, 4, 100_000
    mean = sum(max(_geometric(rng, p) for _ in range(n)) for _ in range(samples)) / samples
    assert mean == pytest.approx(expected_max_geometric(p, n), rel=0.02)


def test_wait_all_decay_matches_sampling() -> None:
    rng = random.Random(11)
    p, n, t, big_t, samples = 0.05, 3, 1.0, 150.0, 100_000
    acc = 0.0
    for _ in range(samples):
        ks = [_geometric(rng, p) for _ in range(n)]
        m = max(ks)
        acc += math.exp(-2 * sum(m - k for k in ks) * t / big_t)
    assert acc / samples == pytest.approx(wait_all_decay(p, n, t, big_t), rel=0.01)
    assert wait_all_decay(p, 1, t, big_t) == pytest.approx(1.0)
    assert wait_all_decay(p, n, t, math.inf) == 1.0


def test_bbm92_needs_fidelity_above_0835() -> None:
    f_zero = 1 - 3 * 0.110028 / 2  # Q = 11.0 %, Q = 2 (1 - F) / 3
    assert bbm92_secret_fraction(werner(f_zero)) == pytest.approx(0.0, abs=1e-4)
    assert bbm92_secret_fraction(werner(1.0)) == pytest.approx(1.0)
    q = 2 * (1 - 0.95) / 3
    h = -q * math.log2(q) - (1 - q) * math.log2(1 - q)
    assert bbm92_secret_fraction(werner(0.95)) == pytest.approx(1 - 2 * h)
    assert werner(0.95).qber_z == pytest.approx(q) == pytest.approx(werner(0.95).qber_x)


@pytest.mark.parametrize("bad", [(0.5, 0.5, 0.5, 0.5), (1.2, -0.2, 0.0, 0.0), (1.0, 0.0, 0.0)])
def test_invalid_bell_states_are_refused(bad: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError):
        BellState(bad)  # type: ignore[arg-type]


def _geometric(rng: random.Random, p: float) -> int:
    if p >= 1.0:
        return 1
    return 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p))


def test_recurrence_purification_follows_the_step_formulas() -> None:
    from qsdn.physics.entanglement import recurrence_purification

    s0 = werner(0.85)
    out, consumed, probs = recurrence_purification(s0, 2, "dejmps")
    p1, s1 = dejmps(s0, s0)
    p2, s2 = dejmps(s1, s1)
    assert out.p == pytest.approx(s2.p)
    assert probs == pytest.approx([p1, p2])
    assert consumed == pytest.approx(4 / (p1 * p2))
    assert recurrence_purification(s0, 0) == (s0, 1.0, [])
    with pytest.raises(ConfigError):
        recurrence_purification(s0, 1, "nope")


def test_shor_preskill_fraction_matches_bbm92_for_werner_pairs() -> None:
    from qsdn.physics.entanglement import shor_preskill_fraction

    s = werner(0.95)
    assert shor_preskill_fraction(s.qber_x, s.qber_z) == pytest.approx(bbm92_secret_fraction(s))
    assert shor_preskill_fraction(0.2, 0.2) == 0.0
    assert shor_preskill_fraction(0.0, 0.0, 1.2) == 1.0
