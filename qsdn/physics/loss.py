"""Fibre loss, transmittance, planning classes and the repeaterless capacity bound.

Pure functions, no I/O. Formulas and their sources:

* Loss of a span: ``loss_db = alpha(band) * length_km + extra_loss_db`` with the standard single-mode fibre
  attenuation alpha = 0.2 dB/km in the C-band (1550 nm) and 0.33 dB/km in the O-band (1310 nm).
* Transmittance: ``eta = 10 ** (-loss_db / 10)``.
* Planning classes after the GEANT QKD planning study (20 dB budget per point-to-point quantum link):
  GREEN when the O-band loss is below 20 dB (the quantum channel can share a lit fibre through DWDM),
  ORANGE when only the C-band loss is below 20 dB (needs a dark fibre), RED otherwise (needs a relay node
  or a repeater).
* PLOB bound: S. Pirandola, R. Laurenza, C. Ottaviani, L. Banchi, "Fundamental limits of repeaterless
  quantum communications", Nat. Commun. 8, 15043 (2017): a pure-loss channel of transmittance ``eta``
  has secret-key capacity ``-log2(1 - eta)`` bits per channel use.
* Propagation delay in fibre at ``c / n`` with the group index taken as 1.5, i.e. 2e8 m/s.
"""

from __future__ import annotations

import math
from enum import StrEnum

__all__ = [
    "FIBRE_LIGHT_SPEED_M_S",
    "PLANNING_BUDGET_DB",
    "Band",
    "SpanClass",
    "fibre_loss_db",
    "planning_class",
    "plob_bound",
    "propagation_delay_s",
    "transmittance",
]

#: Speed of light in silica fibre used for delays (m/s).
FIBRE_LIGHT_SPEED_M_S = 2.0e8

#: Loss budget of one point-to-point quantum link in the GEANT planning classes (dB).
PLANNING_BUDGET_DB = 20.0


class Band(StrEnum):
    """Telecom band of the quantum channel: O (1310 nm) or C (1550 nm)."""

    O = "O"  # noqa: E741 - the band is called O
    C = "C"

    @property
    def attenuation_db_per_km(self) -> float:
        """Attenuation of standard single-mode fibre in this band (dB/km)."""
        return _ATTENUATION_DB_PER_KM[self]

    @classmethod
    def parse(cls, name: str) -> Band:
        """Return the band named ``"C"`` or ``"O"`` (case-insensitive); ``ValueError`` otherwise."""
        try:
            return cls(name.strip().upper())
        except ValueError:
            raise ValueError(f"unknown band {name!r}: expected 'C' or 'O'") from None


_ATTENUATION_DB_PER_KM: dict[Band, float] = {Band.O: 0.33, Band.C: 0.2}


class SpanClass(StrEnum):
    """GEANT planning class of a fibre span."""

    GREEN = "green"
    ORANGE = "orange"
    RED = "red"


def _check_non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def fibre_loss_db(length_km: float, band: Band, extra_loss_db: float = 0.0) -> float:
    """Loss of a fibre span: ``alpha(band) * length_km + extra_loss_db`` (dB)."""
    _check_non_negative("length_km", length_km)
    _check_non_negative("extra_loss_db", extra_loss_db)
    return band.attenuation_db_per_km * length_km + extra_loss_db


def transmittance(loss_db: float) -> float:
    """Transmittance ``eta = 10^(-loss_db/10)`` of a channel with ``loss_db`` of loss."""
    _check_non_negative("loss_db", loss_db)
    return float(10.0 ** (-loss_db / 10.0))


def planning_class(length_km: float, extra_loss_db: float = 0.0) -> SpanClass:
    """GEANT planning class of a span of ``length_km`` with ``extra_loss_db`` of connector/splice loss.

    GREEN if the O-band loss is below 20 dB, ORANGE if only the C-band loss is, RED otherwise. The
    thresholds are strict: exactly 20 dB is not below the budget.
    """
    if fibre_loss_db(length_km, Band.O, extra_loss_db) < PLANNING_BUDGET_DB:
        return SpanClass.GREEN
    if fibre_loss_db(length_km, Band.C, extra_loss_db) < PLANNING_BUDGET_DB:
        return SpanClass.ORANGE
    return SpanClass.RED


def plob_bound(eta: float) -> float:
    """PLOB repeaterless bound ``-log2(1 - eta)`` in secret bits per channel use (Pirandola et al. 2017).

    ``eta`` is the channel transmittance in [0, 1]; the bound is infinite at ``eta == 1``.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    if eta == 1.0:
        return math.inf
    return -math.log1p(-eta) / math.log(2.0)


def propagation_delay_s(length_km: float) -> float:
    """One-way propagation delay of a fibre of ``length_km`` at 2e8 m/s (seconds)."""
    _check_non_negative("length_km", length_km)
    return length_km * 1000.0 / FIBRE_LIGHT_SPEED_M_S
