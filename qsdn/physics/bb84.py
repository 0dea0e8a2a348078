"""Asymptotic secret-key rate of decoy-state BB84 with a weak-coherent-pulse source.

Pure functions, no I/O. The model (SYSTEM.md section 4):

* Security: D. Gottesman, H.-K. Lo, N. Luetkenhaus, J. Preskill (GLLP), "Security of quantum key
  distribution with imperfect devices", Quantum Inf. Comput. 4, 325 (2004), with the decoy-state method of
  H.-K. Lo, X. Ma, K. Chen, "Decoy state quantum key distribution", PRL 94, 230504 (2005), in its asymptotic
  (infinitely many decoys) form: the single-photon yield and error rate are known exactly.
* Channel and detector model: X. Ma, B. Qi, Y. Zhao, H.-K. Lo, "Practical decoy state for quantum key
  distribution", PRA 72, 012326 (2005). With ``eta = eta_ch * eta_det``, dark-count probability ``p_d`` per
  detection window (two detectors), ``e0 = 1/2``, misalignment error ``e_d`` and signal intensity ``mu``::

      Y0      = 1 - (1 - p_d)^2
      Q_mu    = 1 - (1 - p_d)^2 exp(-eta mu)
      E_mu    = (e0 Y0 + e_d (1 - exp(-eta mu))) / Q_mu
      Y1      = 1 - (1 - p_d)^2 (1 - eta)
      e1      = (e0 Y0 + e_d eta) / Y1
      Q1      = Y1 mu exp(-mu),   Q0 = Y0 exp(-mu)
      R(mu)   = q [Q0 + Q1 (1 - h(e1)) - f Q_mu h(E_mu)]   secret bits per pulse

  and the rate of a link is ``max over mu in (0, 1.5]`` of R, times the pulse rate, floored at zero.
  ``q`` is the sifting factor (1 for efficient BB84, 1/2 for the original protocol), ``f`` the error
  correction inefficiency, ``h`` the binary entropy.

Eavesdropper model (``qber_extra``). An intercept-resend attack in which Eve measures a fraction ``x`` of
the pulses in a random basis and resends her result causes an error on a quarter of the sifted bits she
touched (wrong basis with probability 1/2, then a wrong bit with probability 1/2), so it adds
``0.25 * x`` to the observed error rate (C. H. Bennett, G. Brassard, "Quantum cryptography: public key
distribution and coin tossing", 1984; the 25 % figure is standard, e.g. Gisin et al., Rev. Mod. Phys. 74,
145, 2002, section VI). We model it as an additive error ``qber_extra = 0.25 * x`` on both ``E_mu`` and
``e1`` (the decoy analysis attributes the extra errors to the single-photon events, which is where Eve's
disturbance is), each capped at 1/2. This is a planning/emulation model of the *observable* effect, not a
security proof against that attack.

With the default :class:`DeviceParams` (the "standard detector" of TNO's
``tno-quantum-communication-qkd-key-rate``) the rate reaches zero near 30.4 dB of channel loss.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from qsdn.errors import ConfigError
from qsdn.physics.loss import transmittance

__all__ = [
    "MU_MAX",
    "DeviceParams",
    "LinkBudget",
    "binary_entropy",
    "intercept_resend_qber",
    "key_rate_per_pulse",
    "link_budget",
    "max_loss_db",
    "optimal_mu",
    "secret_key_rate_bps",
]

#: Upper end of the signal-intensity search interval (mean photon number per pulse).
MU_MAX = 1.5
#: Lower end of the search interval: ``mu`` must be strictly positive.
_MU_MIN = 1e-6
#: Error rate of a random bit (dark counts, vacuum).
_E0 = 0.5
#: Grid points of the coarse scan that brackets the maximum before golden-section refinement.
_GRID_POINTS = 64
#: Absolute tolerance on ``mu`` of the golden-section search.
_MU_TOL = 1e-10
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True, slots=True)
class DeviceParams:
    """Source and detector parameters of a decoy-state BB84 link.

    Attributes:
        eta_det: detection efficiency of Bob's detectors (0, 1].
        dark_count: dark-count probability per detection window and detector [0, 1).
        e_d: probability that a photon hits the wrong detector (misalignment) [0, 0.5].
        pulse_rate_hz: pulse (channel use) rate of the source (> 0).
        q: sifting factor (0, 1]; 1 for efficient BB84 with biased bases, 1/2 for original BB84.
        f_ec: error-correction inefficiency (>= 1 for a real code; 1 is the Shannon limit).
    """

    eta_det: float = 0.2
    dark_count: float = 1e-5
    e_d: float = 0.015
    pulse_rate_hz: float = 10e6
    q: float = 1.0
    f_ec: float = 1.0

    def __post_init__(self) -> None:
        checks: list[tuple[str, float, bool]] = [
            ("eta_det", self.eta_det, 0.0 < self.eta_det <= 1.0),
            ("dark_count", self.dark_count, 0.0 <= self.dark_count < 1.0),
            ("e_d", self.e_d, 0.0 <= self.e_d <= 0.5),
            ("pulse_rate_hz", self.pulse_rate_hz, self.pulse_rate_hz > 0.0),
            ("q", self.q, 0.0 < self.q <= 1.0),
            ("f_ec", self.f_ec, self.f_ec > 0.0),
        ]
        for name, value, ok in checks:
            if not (math.isfinite(value) and ok):
                raise ConfigError(f"device parameter {name} out of range: {value!r}", path=name)


@dataclass(frozen=True, slots=True)
class LinkBudget:
    """The model evaluated at the optimal signal intensity for one channel loss.

    ``e_mu`` is the QBER an operator would see on the signal pulses; ``rate_bps`` is never negative,
    ``rate_per_pulse`` is the raw (possibly negative) value of R at ``mu``.
    """

    loss_db: float
    eta: float
    qber_extra: float
    mu: float
    q_mu: float
    e_mu: float
    y1: float
    e1: float
    q1: float
    q0: float
    rate_per_pulse: float
    rate_bps: float

    @property
    def qber(self) -> float:
        """The observed quantum bit error rate (``E_mu``)."""
        return self.e_mu

    @property
    def producing(self) -> bool:
        """Whether the link distils any secret key."""
        return self.rate_bps > 0.0


def binary_entropy(p: float) -> float:
    """Binary Shannon entropy ``h(p) = -p log2 p - (1-p) log2 (1-p)``, with ``h(0) = h(1) = 0``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p!r}")
    if p in (0.0, 1.0):
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def intercept_resend_qber(fraction: float) -> float:
    """Error rate added by intercept-resend on ``fraction`` of the pulses: ``0.25 * fraction``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"intercept fraction must be in [0, 1], got {fraction!r}")
    return 0.25 * fraction


def _check_qber_extra(qber_extra: float) -> None:
    if not (math.isfinite(qber_extra) and 0.0 <= qber_extra <= 0.5):
        raise ValueError(f"qber_extra must be in [0, 0.5], got {qber_extra!r}")


def _evaluate(loss_db: float, params: DeviceParams, mu: float, qber_extra: float) -> LinkBudget:
    """All quantities of the model at one ``mu`` (Ma, Qi, Zhao, Lo 2005, section III)."""
    eta = transmittance(loss_db) * params.eta_det
    no_dark = (1.0 - params.dark_count) ** 2
    y0 = 1.0 - no_dark
    # 1 - exp(-eta mu) computed without cancellation for small eta mu.
    clicks = -math.expm1(-eta * mu)
    q_mu = 1.0 - no_dark * math.exp(-eta * mu)
    e_mu = min(0.5, (_E0 * y0 + params.e_d * clicks) / q_mu + qber_extra)
    y1 = 1.0 - no_dark * (1.0 - eta)
    e1 = min(0.5, (_E0 * y0 + params.e_d * eta) / y1 + qber_extra)
    q1 = y1 * mu * math.exp(-mu)
    q0 = y0 * math.exp(-mu)
    rate = params.q * (q0 + q1 * (1.0 - binary_entropy(e1)) - params.f_ec * q_mu * binary_entropy(e_mu))
    return LinkBudget(
        loss_db=loss_db,
        eta=eta,
        qber_extra=qber_extra,
        mu=mu,
        q_mu=q_mu,
        e_mu=e_mu,
        y1=y1,
        e1=e1,
        q1=q1,
        q0=q0,
        rate_per_pulse=rate,
        rate_bps=max(0.0, rate) * params.pulse_rate_hz,
    )


def key_rate_per_pulse(loss_db: float, params: DeviceParams, mu: float, qber_extra: float = 0.0) -> float:
    """R(mu): secret bits per pulse at signal intensity ``mu`` and channel loss ``loss_db``.

    The value may be negative (no key at this ``mu``); see the module docstring for the formula.
    """
    if not (math.isfinite(mu) and mu > 0.0):
        raise ValueError(f"mu must be > 0, got {mu!r}")
    _check_qber_extra(qber_extra)
    return _evaluate(loss_db, params, mu, qber_extra).rate_per_pulse


def _golden_max(f: functools.partial[float], lo: float, hi: float) -> float:
    """Arg-max of a unimodal ``f`` on ``[lo, hi]`` by golden-section search (deterministic)."""
    c = hi - _INV_PHI * (hi - lo)
    d = lo + _INV_PHI * (hi - lo)
    fc, fd = f(c), f(d)
    while hi - lo > _MU_TOL:
        if fc >= fd:
            hi, d, fd = d, c, fc
            c = hi - _INV_PHI * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + _INV_PHI * (hi - lo)
            fd = f(d)
    return (lo + hi) / 2.0


def _rate_at(loss_db: float, params: DeviceParams, qber_extra: float, mu: float) -> float:
    return _evaluate(loss_db, params, mu, qber_extra).rate_per_pulse


@functools.lru_cache(maxsize=4096)
def _optimal_mu(loss_db: float, params: DeviceParams, qber_extra: float) -> float:
    f = functools.partial(_rate_at, loss_db, params, qber_extra)
    # Coarse scan to bracket the global maximum, then golden-section refinement inside the bracket.
    step = (MU_MAX - _MU_MIN) / (_GRID_POINTS - 1)
    grid = [_MU_MIN + i * step for i in range(_GRID_POINTS)]
    values = [f(mu) for mu in grid]
    best = max(range(_GRID_POINTS), key=lambda i: (values[i], -i))
    lo = grid[max(0, best - 1)]
    hi = grid[min(_GRID_POINTS - 1, best + 1)]
    mu = _golden_max(f, lo, hi)
    # Keep the grid point if refinement did not improve on it (flat or non-unimodal neighbourhood).
    return mu if f(mu) >= values[best] else grid[best]


def optimal_mu(loss_db: float, params: DeviceParams, qber_extra: float = 0.0) -> float:
    """Signal intensity in (0, 1.5] that maximises R(mu) at ``loss_db`` (deterministic)."""
    _check_qber_extra(qber_extra)
    transmittance(loss_db)  # validates loss_db
    return _optimal_mu(loss_db, params, qber_extra)


def link_budget(loss_db: float, params: DeviceParams | None = None, qber_extra: float = 0.0) -> LinkBudget:
    """The model at the optimal ``mu``: intensity, gain, QBER and secret-key rate."""
    params = params if params is not None else DeviceParams()
    _check_qber_extra(qber_extra)
    return _evaluate(loss_db, params, optimal_mu(loss_db, params, qber_extra), qber_extra)


def secret_key_rate_bps(loss_db: float, params: DeviceParams | None = None, qber_extra: float = 0.0) -> float:
    """Secret-key rate in bit/s (>= 0) at the optimal ``mu``: ``max(0, R) * pulse_rate_hz``."""
    return link_budget(loss_db, params, qber_extra).rate_bps


@functools.lru_cache(maxsize=256)
def _max_loss_db(params: DeviceParams, qber_extra: float, tol_db: float) -> float:
    lo, hi = 0.0, 100.0
    if link_budget(lo, params, qber_extra).rate_bps <= 0.0:
        return 0.0
    if link_budget(hi, params, qber_extra).rate_bps > 0.0:
        return hi
    while hi - lo > tol_db:
        mid = (lo + hi) / 2.0
        if link_budget(mid, params, qber_extra).rate_bps > 0.0:
            lo = mid
        else:
            hi = mid
    return lo


def max_loss_db(params: DeviceParams | None = None, qber_extra: float = 0.0, tol_db: float = 1e-3) -> float:
    """Largest channel loss (dB, within ``tol_db``, searched in [0, 100]) at which the rate is positive.

    The rate decreases monotonically with loss, so bisection finds the cut-off (about 30.4 dB with the
    defaults). 0 if no loss gives key, 100 if every loss up to 100 dB does.
    """
    _check_qber_extra(qber_extra)
    if not (math.isfinite(tol_db) and tol_db > 0.0):
        raise ValueError(f"tol_db must be > 0, got {tol_db!r}")
    return _max_loss_db(params if params is not None else DeviceParams(), qber_extra, tol_db)
