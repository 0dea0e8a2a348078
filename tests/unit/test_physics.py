"""Unit tests for qsdn.physics: loss, planning classes, PLOB bound, decoy-state BB84 key rate."""

from __future__ import annotations

import dataclasses
import math

import pytest

from qsdn.errors import ConfigError
from qsdn.physics.bb84 import (
    MU_MAX,
    DeviceParams,
    binary_entropy,
    intercept_resend_qber,
    key_rate_per_pulse,
    link_budget,
    max_loss_db,
    optimal_mu,
    secret_key_rate_bps,
)
from qsdn.physics.loss import (
    Band,
    SpanClass,
    fibre_loss_db,
    planning_class,
    plob_bound,
    propagation_delay_s,
    transmittance,
)

# -- loss -------------------------------------------------------------------------------------------


def test_band_attenuation_and_parse() -> None:
    assert Band.C.attenuation_db_per_km == 0.2
    assert Band.O.attenuation_db_per_km == 0.33
    assert Band.parse("c") is Band.C
    assert Band.parse(" O ") is Band.O
    with pytest.raises(ValueError, match="unknown band"):
        Band.parse("L")


def test_fibre_loss() -> None:
    assert fibre_loss_db(50, Band.C) == pytest.approx(10.0)
    assert fibre_loss_db(50, Band.O) == pytest.approx(16.5)
    assert fibre_loss_db(50, Band.C, extra_loss_db=2.5) == pytest.approx(12.5)
    assert fibre_loss_db(0, Band.O) == 0.0
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            fibre_loss_db(bad, Band.C)
    with pytest.raises(ValueError):
        fibre_loss_db(10, Band.C, extra_loss_db=-0.1)


def test_transmittance() -> None:
    assert transmittance(0.0) == 1.0
    assert transmittance(10.0) == pytest.approx(0.1)
    assert transmittance(30.0) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        transmittance(-3.0)


@pytest.mark.parametrize(
    ("length_km", "extra_db", "expected"),
    [
        (0.0, 0.0, SpanClass.GREEN),
        (60.0, 0.0, SpanClass.GREEN),  # O-band 19.8 dB
        (0.0, 19.999, SpanClass.GREEN),
        (50.0, 3.5, SpanClass.ORANGE),  # O-band exactly 20.0 dB: not below the budget; C-band 13.5 dB
        (61.0, 0.0, SpanClass.ORANGE),  # O-band 20.13 dB, C-band 12.2 dB
        (99.9, 0.0, SpanClass.ORANGE),  # C-band 19.98 dB
        (100.0, 0.0, SpanClass.RED),  # C-band exactly 20.0 dB
        (0.0, 20.0, SpanClass.RED),
        (150.0, 0.0, SpanClass.RED),
    ],
)
def test_planning_class_boundaries(length_km: float, extra_db: float, expected: SpanClass) -> None:
    assert planning_class(length_km, extra_db) is expected


def test_plob_bound() -> None:
    assert plob_bound(0.0) == 0.0
    assert plob_bound(0.5) == pytest.approx(1.0)
    assert plob_bound(0.75) == pytest.approx(2.0)
    assert plob_bound(1.0) == math.inf
    # For small eta the bound is ~ 1.44 eta (Pirandola et al. 2017).
    assert plob_bound(1e-6) == pytest.approx(1e-6 / math.log(2), rel=1e-5)
    with pytest.raises(ValueError):
        plob_bound(1.5)


def test_propagation_delay() -> None:
    assert propagation_delay_s(200.0) == pytest.approx(1e-3)
    assert propagation_delay_s(50.0) == pytest.approx(2.5e-4)
    assert propagation_delay_s(0.0) == 0.0


# -- BB84 -------------------------------------------------------------------------------------------


def test_binary_entropy() -> None:
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-3)
    assert binary_entropy(0.2) == pytest.approx(binary_entropy(0.8))
    with pytest.raises(ValueError):
        binary_entropy(-0.1)


def test_device_params_defaults_and_validation() -> None:
    p = DeviceParams()
    expected = {
        "eta_det": 0.2,
        "dark_count": 1e-5,
        "e_d": 0.015,
        "pulse_rate_hz": 10e6,
        "q": 1.0,
        "f_ec": 1.0,
    }
    assert dataclasses.asdict(p) == expected
    with pytest.raises(ConfigError, match="eta_det"):
        DeviceParams(eta_det=0.0)
    with pytest.raises(ConfigError, match="e_d"):
        DeviceParams(e_d=0.6)
    with pytest.raises(ConfigError, match="pulse_rate_hz"):
        DeviceParams(pulse_rate_hz=math.nan)


def test_cut_off_near_30_4_db() -> None:
    p = DeviceParams()
    assert secret_key_rate_bps(30.0, p) > 0.0
    assert secret_key_rate_bps(31.0, p) == 0.0
    assert secret_key_rate_bps(40.0, p) == 0.0
    assert 30.0 < max_loss_db(p) < 31.0
    assert max_loss_db(p) == pytest.approx(30.4, abs=0.1)


def test_rate_never_exceeds_plob() -> None:
    p = DeviceParams()
    previous = math.inf
    for i in range(1, 81):  # 0.5 dB .. 40 dB
        loss = 0.5 * i
        rate = secret_key_rate_bps(loss, p)
        bound = plob_bound(transmittance(loss)) * p.pulse_rate_hz
        assert 0.0 <= rate <= bound, loss
        assert rate <= previous, loss  # monotonically non-increasing with loss
        previous = rate


def _reference_rate_per_pulse(loss_db: float, mu: float) -> float:
    """A second, deliberately naive implementation of SYSTEM.md section 4 (defaults inlined)."""
    eta_det, pd, ed, e0 = 0.2, 1e-5, 0.015, 0.5
    eta = 10 ** (-loss_db / 10) * eta_det

    def h(x: float) -> float:
        return 0.0 if x <= 0 or x >= 1 else -x * math.log2(x) - (1 - x) * math.log2(1 - x)

    y0 = 1 - (1 - pd) ** 2
    q_mu = 1 - (1 - pd) ** 2 * math.exp(-eta * mu)
    e_mu = (e0 * y0 + ed * (1 - math.exp(-eta * mu))) / q_mu
    y1 = 1 - (1 - pd) ** 2 * (1 - eta)
    e1 = (e0 * y0 + ed * eta) / y1
    q1 = y1 * mu * math.exp(-mu)
    q0 = y0 * math.exp(-mu)
    return q0 + q1 * (1 - h(e1)) - q_mu * h(e_mu)


def _reference_e_mu(loss_db: float, mu: float) -> float:
    eta = 10 ** (-loss_db / 10) * 0.2
    y0 = 1 - (1 - 1e-5) ** 2
    q_mu = 1 - (1 - 1e-5) ** 2 * math.exp(-eta * mu)
    return (0.5 * y0 + 0.015 * (1 - math.exp(-eta * mu))) / q_mu


def test_rate_at_50_km_c_band_matches_independent_computation() -> None:
    loss = fibre_loss_db(50.0, Band.C)
    assert loss == pytest.approx(10.0)
    # Brute-force maximum of the naive implementation over a fine grid of mu in (0, 1.5].
    grid = [i * 1e-4 for i in range(1, 15001)]
    best_mu = max(grid, key=lambda mu: _reference_rate_per_pulse(loss, mu))
    best = _reference_rate_per_pulse(loss, best_mu)
    budget = link_budget(loss, DeviceParams())
    assert budget.rate_per_pulse == pytest.approx(best, rel=1e-6)
    assert budget.rate_bps == pytest.approx(best * 10e6, rel=1e-6)
    assert budget.mu == pytest.approx(best_mu, abs=2e-3)
    assert budget.rate_bps == pytest.approx(45_518, rel=1e-3)  # ~45.5 kbit/s
    # TNO's tno-quantum-communication-qkd-key-rate 2.0.4 (BB84FullyAsymptoticKeyRateEstimate, standard
    # detector, attenuation 10 dB) gives 4.5524e-3 bits/pulse at mu = 0.737; it models misalignment as a
    # polarisation drift rather than a constant e_d, hence the small difference.
    assert budget.rate_per_pulse == pytest.approx(4.5524e-3, rel=1e-3)
    assert budget.e_mu == pytest.approx(0.01566, abs=1e-4)
    assert budget.qber == budget.e_mu
    assert budget.producing


def test_optimal_mu_is_deterministic_and_in_range() -> None:
    p = DeviceParams()
    assert 0.0 < optimal_mu(35.0, p) <= MU_MAX  # beyond the cut-off: no key at any mu
    for loss in (0.0, 10.0, 20.0, 29.0):
        mu = optimal_mu(loss, p)
        assert 0.0 < mu <= MU_MAX
        assert optimal_mu(loss, p) == mu
        # It is a maximum: nearby intensities do not do better.
        r = key_rate_per_pulse(loss, p, mu)
        for other in (mu * 0.9, mu * 1.1):
            if other <= MU_MAX:
                assert key_rate_per_pulse(loss, p, other) <= r + 1e-15


def test_key_rate_per_pulse_can_be_negative() -> None:
    assert key_rate_per_pulse(35.0, DeviceParams(), 0.5) < 0.0
    with pytest.raises(ValueError):
        key_rate_per_pulse(10.0, DeviceParams(), 0.0)


def test_eavesdropper_raises_qber_and_kills_key() -> None:
    p = DeviceParams()
    clean = link_budget(10.0, p)
    assert intercept_resend_qber(0.2) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        intercept_resend_qber(1.5)
    attacked = link_budget(10.0, p, qber_extra=intercept_resend_qber(0.2))
    assert attacked.mu == pytest.approx(optimal_mu(10.0, p, 0.05))
    # The QBER at the chosen mu is the clean one plus 0.25 x.
    assert attacked.e_mu == pytest.approx(_reference_e_mu(10.0, attacked.mu) + 0.05, rel=1e-9)
    assert 0.0 < attacked.rate_bps < clean.rate_bps
    rates = [secret_key_rate_bps(10.0, p, intercept_resend_qber(x / 10)) for x in range(11)]
    assert rates == sorted(rates, reverse=True)
    full = link_budget(10.0, p, qber_extra=intercept_resend_qber(1.0))
    assert full.rate_bps == 0.0
    assert not full.producing
    assert full.e_mu >= 0.25
    with pytest.raises(ValueError):
        link_budget(10.0, p, qber_extra=0.6)


def test_device_parameters_change_the_rate() -> None:
    base = secret_key_rate_bps(10.0, DeviceParams())
    assert secret_key_rate_bps(10.0, DeviceParams(q=0.5)) == pytest.approx(base / 2)
    assert secret_key_rate_bps(10.0, DeviceParams(pulse_rate_hz=1e9)) == pytest.approx(base * 100)
    assert secret_key_rate_bps(10.0, DeviceParams(f_ec=1.16)) < base
    assert max_loss_db(DeviceParams(f_ec=1.16)) < max_loss_db(DeviceParams())
