"""Entanglement algebra: Bell-diagonal pairs, swapping, purification, decoherence, heralding, waiting times.

Pure functions, no I/O, no randomness. The emulated repeaters (``agent/drivers/emulated_entanglement.py``)
sample their events from these formulas, and the controller predicts rates and fidelities with them, so
the two can only disagree through statistics.

Representation
--------------
A two-qubit Bell-diagonal state is a probability vector over the four Bell states, indexed by the Pauli
error ``P`` that, applied to the second qubit, turns ``|Phi+>`` into that Bell state::

    index 0 = I -> |Phi+>     index 1 = Z -> |Phi->     index 2 = X -> |Psi+>     index 3 = Y -> |Psi->

The index is the pair of bits ``(x, z)`` = ``(index >> 1, index & 1)``, so composing two Pauli errors
(up to a global phase) is the XOR of their indices: the Klein four-group. A Werner state of fidelity
``F`` is ``(F, (1-F)/3, (1-F)/3, (1-F)/3)`` with Werner parameter ``w = (4F - 1)/3``.

Measured in the Z basis, the two qubits disagree when the error has an X component (indices 2, 3); in
the X basis, when it has a Z component (indices 1, 3). These are the bit and phase error rates of
BBM92 (C. H. Bennett, G. Brassard, N. D. Mermin, PRL 68, 557, 1992).

Formulas and their sources (SYSTEM.md section 4)
------------------------------------------------
* Swapping: a Bell measurement on the middle qubits of two Bell-diagonal pairs gives a Bell-diagonal
  pair whose error is the product of the two errors (after the Pauli-frame correction the measurement
  outcome dictates): the Klein-group convolution ``p[k] = sum_{i ^ j = k} p1[i] p2[j]`` (H.-J. Briegel,
  W. Duer, J. I. Cirac, P. Zoller, PRL 81, 5932, 1998; W. Duer, H.-J. Briegel, J. I. Cirac, P. Zoller,
  PRA 59, 169, 1999). For Werner pairs: ``F = F1 F2 + (1-F1)(1-F2)/3``, i.e. ``w = w1 w2``.
* BBPSSW purification (C. H. Bennett et al., PRL 76, 722, 1996), inputs twirled to Werner form, unequal
  fidelities as in W. Duer, H.-J. Briegel, Rep. Prog. Phys. 70, 1381 (2007), eq. (25)::

      p_ok = F1 F2 + F1 (1-F2)/3 + (1-F1) F2/3 + 5 (1-F1)(1-F2)/9
      F'   = (F1 F2 + (1-F1)(1-F2)/9) / p_ok

* DEJMPS purification (D. Deutsch et al., PRL 77, 2818, 1996), with Deutsch's coefficients
  ``A = Phi+, B = Psi-, C = Psi+, D = Phi-`` of the two inputs::

      N  = (A1 + B1)(A2 + B2) + (C1 + D1)(C2 + D2)
      A' = (A1 A2 + B1 B2)/N    B' = (C1 D2 + D1 C2)/N    C' = (C1 C2 + D1 D2)/N    D' = (A1 B2 + B1 A2)/N

  with success probability ``N``.
* Memory decoherence, depolarising: ``F(t) = 1/4 + (F0 - 1/4) exp(-n t / T)`` for ``n`` stored qubits
  of the pair, each component relaxing to 1/4 alike; dephasing with ``T2``: each stored qubit keeps its
  phase with ``lambda = exp(-t/T2)``, which mixes I with Z and X with Y by ``(1 - lambda^n)/2``.
* Heralded generation with a Bell-state measurement in the middle (S. D. Barrett, P. Kok, PRA 71, 060310,
  2005): success probability ``p = eta_A eta_B / 2`` per attempt, one attempt per ``L / c`` with
  ``c = 2e8 m/s`` in fibre; ``M`` multiplexed modes succeed with ``1 - (1 - p)^M``. Single-click
  schemes: ``p = 2 alpha eta``, ``F = 1 - alpha`` for bright-state population ``alpha``.
* Waiting times, attempts counted in units of one attempt: for ``n`` segments generated in parallel and
  kept until all are there, ``E[max of n geometrics] = sum_k (-1)^(k+1) C(n, k) / (1 - (1-p)^k)``;
  with two segments and swap success ``a``, ``E = (3 - 2p) / (a p (2 - p))`` (E. Shchukin, F. Schmidt,
  P. van Loock, PRA 100, 032322, 2019).
* Recurrence ("symmetric") purification, ``R`` rounds, each joining two pairs of the previous level
  (W. Duer, H.-J. Briegel, Rep. Prog. Phys. 70, 1381, 2007, section 6): ``F_l`` from the round's
  formula on two copies of level ``l - 1``; a failed round loses both pairs, so the expected number of
  level-0 pairs per level-``R`` pair is ``E_R = 2 E_(R-1) / p_R`` with ``E_0 = 1``, i.e.
  ``2^R / prod_l p_l``.
* Key from pairs, BBM92 with one-way post-processing (P. W. Shor, J. Preskill, PRL 85, 441, 2000):
  ``r = 1 - h(e_X) - f h(e_Z)`` per sifted pair, ``r = 1 - 2 h(Q)`` for Werner pairs with
  ``Q = 2 (1 - F)/3``; zero at ``Q = 11.0 %``, so key needs ``F > 0.835``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qsdn.errors import ConfigError
from qsdn.physics.bb84 import binary_entropy

__all__ = [
    "FIBRE_LIGHT_SPEED_M_S",
    "BellState",
    "Probabilities",
    "attempt_time_s",
    "bbm92_secret_fraction",
    "bbpssw",
    "dejmps",
    "dephase",
    "dephase_p",
    "depolarise",
    "depolarise_p",
    "expected_max_geometric",
    "expected_max_geometric_unequal",
    "geometric_storage_decay",
    "heralding_probability",
    "multiplexed_probability",
    "normalised_p",
    "recurrence_purification",
    "shor_preskill_fraction",
    "single_click",
    "swap",
    "swap_chain",
    "swap_p",
    "two_segment_attempts",
    "wait_all_decay",
    "werner",
]

#: Speed of light in fibre (SYSTEM.md section 4: c = 2e8 m/s).
FIBRE_LIGHT_SPEED_M_S = 2.0e8

_TOL = 1e-9

#: The four Bell-diagonal probabilities (errors I, Z, X, Y on |Phi+>): a :class:`BellState`'s ``p``.
Probabilities = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class BellState:
    """A Bell-diagonal two-qubit state: probabilities of the errors I, Z, X, Y on |Phi+>."""

    p: Probabilities

    def __post_init__(self) -> None:
        if len(self.p) != 4 or any(x < -_TOL for x in self.p) or abs(sum(self.p) - 1.0) > 1e-6:
            raise ConfigError(f"Bell-diagonal coefficients must be 4 probabilities summing to 1: {self.p}")

    @classmethod
    def trusted(cls, p: Probabilities) -> BellState:
        """A state from probabilities valid by construction (a ``*_p`` kernel's output): no checks."""
        state = object.__new__(cls)
        _set_p(state, p)
        return state

    @property
    def fidelity(self) -> float:
        """Fidelity with |Phi+>."""
        return self.p[0]

    @property
    def werner_parameter(self) -> float:
        """``w = (4F - 1)/3``: 1 for a perfect pair, 0 for the maximally mixed state."""
        return (4.0 * self.p[0] - 1.0) / 3.0

    @property
    def qber_z(self) -> float:
        """Probability that Z-basis outcomes disagree (an X or Y error): BBM92's bit error rate."""
        return self.p[2] + self.p[3]

    @property
    def qber_x(self) -> float:
        """Probability that X-basis outcomes disagree (a Z or Y error): BBM92's phase error rate."""
        return self.p[1] + self.p[3]

    def twirled(self) -> BellState:
        """The Werner state of the same fidelity (what a random bilateral rotation leaves)."""
        return werner(self.p[0])

    def as_list(self) -> list[float]:
        return list(self.p)


#: Sets a new BellState's ``p`` through its slot (what a frozen dataclass's __init__ does, minus the lookups).
_set_p = BellState.__dict__["p"].__set__


def werner(fidelity: float) -> BellState:
    """The Werner state of fidelity ``fidelity`` (between 1/4 and 1)."""
    if not 0.25 - _TOL <= fidelity <= 1.0 + _TOL:
        raise ConfigError(f"Werner fidelity must be within [0.25, 1], got {fidelity}")
    f = min(max(fidelity, 0.25), 1.0)
    rest = (1.0 - f) / 3.0
    return BellState((f, rest, rest, rest))


def _normalised(values: Iterable[float]) -> BellState:
    i, z, x, y = values
    return BellState(normalised_p(i, z, x, y))


# -- kernels on probability tuples ---------------------------------------------------------------------
# What the functions below compute, on bare tuples and without argument checks, for the emulator's hot
# loop (agent/drivers/quantum_medium.py applies them to every qubit it touches). The public functions
# call them, so both give the same numbers.


def normalised_p(i: float, z: float, x: float, y: float) -> Probabilities:
    """Negative rounding residue clipped to 0, then scaled to sum to 1."""
    if i < 0.0:
        i = 0.0
    if z < 0.0:
        z = 0.0
    if x < 0.0:
        x = 0.0
    if y < 0.0:
        y = 0.0
    total = i + z + x + y
    return (i / total, z / total, x / total, y / total)


def swap_p(left: Probabilities, right: Probabilities) -> Probabilities:
    """The Klein-group convolution ``p[k] = sum_{i ^ j = k} left[i] right[j]``, normalised (:func:`swap`)."""
    a0, a1, a2, a3 = left
    b0, b1, b2, b3 = right
    return normalised_p(
        a0 * b0 + a1 * b1 + a2 * b2 + a3 * b3,
        a0 * b1 + a1 * b0 + a2 * b3 + a3 * b2,
        a0 * b2 + a1 * b3 + a2 * b0 + a3 * b1,
        a0 * b3 + a1 * b2 + a2 * b1 + a3 * b0,
    )


def depolarise_p(p: Probabilities, k: float) -> Probabilities:
    """Each component relaxes to 1/4: ``1/4 + (p - 1/4) k``, ``k = exp(-n t / T)``, for p >= 0, 0 < k <= 1."""
    i, z, x, y = p
    # normalised_p, spelt out (this runs on every touch of a stored qubit) and without its clipping:
    # for p >= 0 and 0 < k <= 1, 1/4 + (p - 1/4) k >= 1/4 - k/4 >= 0 also in floating point (rounding
    # is monotonic and k/4 is exact).
    i = 0.25 + (i - 0.25) * k
    z = 0.25 + (z - 0.25) * k
    x = 0.25 + (x - 0.25) * k
    y = 0.25 + (y - 0.25) * k
    total = i + z + x + y
    return (i / total, z / total, x / total, y / total)


def dephase_p(p: Probabilities, m: float) -> Probabilities:
    """I mixes with Z and X with Y by ``m = (1 - exp(-t/T2)^qubits)/2`` (:func:`dephase`)."""
    i, z, x, y = p
    return normalised_p((1 - m) * i + m * z, (1 - m) * z + m * i, (1 - m) * x + m * y, (1 - m) * y + m * x)


def swap(left: BellState, right: BellState) -> BellState:
    """Entanglement swapping of two Bell-diagonal pairs: the Klein-group convolution (Briegel et al. 1998)."""
    return BellState(swap_p(left.p, right.p))


def swap_chain(states: Sequence[BellState]) -> BellState:
    """The end-to-end state of a chain of pairs swapped at every inner node (order does not matter)."""
    if not states:
        raise ConfigError("a chain needs at least one pair")
    out = states[0]
    for s in states[1:]:
        out = swap(out, s)
    return out


def bbpssw(first: BellState, second: BellState) -> tuple[float, BellState]:
    """BBPSSW on two pairs (twirled to Werner form): ``(success probability, output Werner state)``."""
    f1, f2 = first.fidelity, second.fidelity
    g1, g2 = (1.0 - f1) / 3.0, (1.0 - f2) / 3.0
    p_ok = f1 * f2 + f1 * g2 + g1 * f2 + 5.0 * g1 * g2
    f_out = (f1 * f2 + g1 * g2) / p_ok
    return p_ok, werner(min(max(f_out, 0.25), 1.0))


def dejmps(first: BellState, second: BellState) -> tuple[float, BellState]:
    """DEJMPS on two Bell-diagonal pairs: ``(success probability, output state)`` (Deutsch et al. 1996)."""
    # Deutsch's A, B, C, D are Phi+, Psi-, Psi+, Phi- = our indices 0, 3, 2, 1.
    a1, b1, c1, d1 = first.p[0], first.p[3], first.p[2], first.p[1]
    a2, b2, c2, d2 = second.p[0], second.p[3], second.p[2], second.p[1]
    n = (a1 + b1) * (a2 + b2) + (c1 + d1) * (c2 + d2)
    a = (a1 * a2 + b1 * b2) / n
    b = (c1 * d2 + d1 * c2) / n
    c = (c1 * c2 + d1 * d2) / n
    d = (a1 * b2 + b1 * a2) / n
    return n, _normalised((a, d, c, b))


def depolarise(state: BellState, stored_s: float, coherence_s: float, qubits: int = 2) -> BellState:
    """Depolarising memory: every component relaxes to 1/4 with ``exp(-qubits * t / T)``."""
    if stored_s < 0 or qubits < 0:
        raise ConfigError("storage time and qubit count must not be negative")
    if math.isinf(coherence_s) or stored_s == 0 or qubits == 0:
        return state
    k = math.exp(-qubits * stored_s / coherence_s)
    # Not depolarise_p: a BellState may hold components a rounding error below 0, clipped here.
    i, z, x, y = state.p
    return BellState(
        normalised_p(
            0.25 + (i - 0.25) * k, 0.25 + (z - 0.25) * k, 0.25 + (x - 0.25) * k, 0.25 + (y - 0.25) * k
        )
    )


def dephase(state: BellState, stored_s: float, t2_s: float, qubits: int = 2) -> BellState:
    """Dephasing memory (T2): I mixes with Z, X with Y, by ``(1 - exp(-t/T2)^qubits)/2``."""
    if stored_s < 0 or qubits < 0:
        raise ConfigError("storage time and qubit count must not be negative")
    if math.isinf(t2_s) or stored_s == 0 or qubits == 0:
        return state
    m = (1.0 - math.exp(-qubits * stored_s / t2_s)) / 2.0
    return BellState(dephase_p(state.p, m))


def heralding_probability(eta_a: float, eta_b: float) -> float:
    """Barrett-Kok success probability per attempt with the BSM station in the middle: ``eta_A eta_B / 2``."""
    for eta in (eta_a, eta_b):
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"transmittance must be within [0, 1], got {eta}")
    return 0.5 * eta_a * eta_b


def single_click(alpha: float, eta: float) -> tuple[float, float]:
    """Single-click heralding: ``(p = 2 alpha eta, F = 1 - alpha)`` for bright-state population ``alpha``."""
    if not 0.0 < alpha < 0.5 or not 0.0 <= eta <= 1.0:
        raise ConfigError("single-click needs 0 < alpha < 0.5 and 0 <= eta <= 1")
    return min(2.0 * alpha * eta, 1.0), 1.0 - alpha


def multiplexed_probability(p: float, modes: int) -> float:
    """Success probability of one attempt over ``modes`` multiplexed modes: ``1 - (1 - p)^M``."""
    if modes < 1:
        raise ConfigError(f"modes must be at least 1, got {modes}")
    return 1.0 - (1.0 - p) ** modes


def attempt_time_s(length_km: float) -> float:
    """One heralded attempt over ``length_km`` with the station in the middle: ``L/c``."""
    if length_km < 0:
        raise ConfigError(f"length must not be negative, got {length_km}")
    return length_km * 1000.0 / FIBRE_LIGHT_SPEED_M_S


def expected_max_geometric(p: float, n: int) -> float:
    """``E[max of n i.i.d. geometric attempt counts]``, success probability ``p`` (inclusion-exclusion)."""
    if not 0.0 < p <= 1.0 or n < 1:
        raise ConfigError("need 0 < p <= 1 and n >= 1")
    q = 1.0 - p
    return math.fsum((-1.0) ** (k + 1) * math.comb(n, k) / (1.0 - q**k) for k in range(1, n + 1))


def two_segment_attempts(p: float, swap_success: float = 1.0) -> float:
    """Expected attempts for a two-segment repeater, ``(3 - 2p)/(a p (2 - p))`` (Shchukin et al. 2019)."""
    if not 0.0 < p <= 1.0 or not 0.0 < swap_success <= 1.0:
        raise ConfigError("need 0 < p <= 1 and 0 < a <= 1")
    return (3.0 - 2.0 * p) / (swap_success * p * (2.0 - p))


def wait_all_decay(p: float, n: int, attempt_s: float, coherence_s: float, tol: float = 1e-15) -> float:
    """``E[prod_i exp(-2 (M - N_i) t / T)]`` for ``n`` links generated in parallel, kept until all are there.

    ``N_i`` are i.i.d. geometric attempt counts (success probability ``p``), ``M`` their maximum, ``t`` the
    attempt time and ``T`` the depolarising coherence time: each link's two qubits wait ``(M - N_i) t`` in
    memory, so the end-to-end Werner parameter is ``w0^n`` times this factor (depolarising channels and
    swapping both multiply Werner parameters). Exact, by summing over ``M = m``:
    ``sum_m exp(-c n m) (G(m)^n - G(m-1)^n)`` with ``c = 2t/T`` and ``G(m) = sum_{k<=m} p q^(k-1) exp(c k)``.
    """
    if not 0.0 < p <= 1.0 or n < 1:
        raise ConfigError("need 0 < p <= 1 and n >= 1")
    if math.isinf(coherence_s) or attempt_s == 0:
        return 1.0
    c = 2.0 * attempt_s / coherence_s
    q = 1.0 - p
    total = 0.0
    g_prev = 0.0  # G(m-1) * exp(-c (m-1)): kept scaled to avoid overflow
    m = 0
    while True:
        m += 1
        # G(m) e^{-cm} = G(m-1) e^{-c(m-1)} e^{-c} + p q^(m-1)
        g = g_prev * math.exp(-c) + p * q ** (m - 1)
        term = g**n - (g_prev * math.exp(-c)) ** n
        total += term
        if q ** (m - 1) < tol or m > 10_000_000:
            return total
        g_prev = g


def bbm92_secret_fraction(state: BellState, ec_efficiency: float = 1.0) -> float:
    """Secret bits per sifted pair: ``1 - h(e_X) - f h(e_Z)``, floored at 0 (Shor-Preskill)."""
    return max(0.0, 1.0 - binary_entropy(state.qber_x) - ec_efficiency * binary_entropy(state.qber_z))


def expected_max_geometric_unequal(ps: Sequence[float], tol: float = 1e-15) -> float:
    """``E[max_i N_i]`` for independent geometric attempt counts with success probabilities ``ps``.

    Links of different lengths attempting on one common clock: ``E[M] = sum_{m>=0} P(M > m)
    = sum_{m>=0} (1 - prod_i (1 - q_i^m))`` (the tail-sum formula for a non-negative integer variable,
    with ``P(N_i <= m) = 1 - q_i^m`` by independence). Equals :func:`expected_max_geometric` when all
    ``p`` are equal, and ``1/p1 + 1/p2 - 1/(1 - q1 q2)`` for two links.
    """
    if not ps or any(not 0.0 < p <= 1.0 for p in ps):
        raise ConfigError("need at least one success probability, each within (0, 1]")
    qs = [1.0 - p for p in ps]
    q_max = max(qs)
    if q_max == 0.0:
        return 1.0
    total = 0.0
    m = 0
    while True:
        tail = 1.0 - math.prod(1.0 - q**m for q in qs)
        total += tail
        m += 1
        if q_max**m < tol or m > 10_000_000:
            return total


def geometric_storage_decay(p: float, attempt_s: float, coherence_s: float, qubits: int = 2) -> float:
    """``E[exp(-qubits N t / T)]`` for a geometric attempt count ``N`` (success probability ``p``).

    The Werner-parameter factor a stored pair keeps while another link is generated (``qubits`` stored
    qubits, depolarising time ``T``, one attempt every ``t``): the probability generating function of
    the geometric distribution, ``E[z^N] = p z / (1 - (1 - p) z)`` at ``z = exp(-qubits t / T)``.
    Used for sequential swapping, where the growing chain waits for every next link.
    """
    if not 0.0 < p <= 1.0 or attempt_s < 0 or qubits < 0:
        raise ConfigError("need 0 < p <= 1, a non-negative attempt time and qubit count")
    if math.isinf(coherence_s) or attempt_s == 0 or qubits == 0:
        return 1.0
    z = math.exp(-qubits * attempt_s / coherence_s)
    return p * z / (1.0 - (1.0 - p) * z)


def recurrence_purification(
    state: BellState, rounds: int, protocol: str = "bbpssw"
) -> tuple[BellState, float, list[float]]:
    """``R`` rounds of recurrence purification on identical pairs (Duer, Briegel 2007, section 6).

    Returns ``(output state, expected input pairs per output pair, success probability per round)``;
    the expected input pairs are ``2^R / prod_l p_l`` (a failed round discards both of its pairs).
    ``protocol`` is ``"bbpssw"`` or ``"dejmps"``.
    """
    if rounds < 0:
        raise ConfigError(f"purification rounds must not be negative, got {rounds}")
    if protocol not in ("bbpssw", "dejmps"):
        raise ConfigError(f"unknown purification protocol {protocol!r}")
    step = bbpssw if protocol == "bbpssw" else dejmps
    consumed = 1.0
    probabilities: list[float] = []
    for _ in range(rounds):
        p_ok, state = step(state, state)
        probabilities.append(p_ok)
        consumed = 2.0 * consumed / p_ok
    return state, consumed, probabilities


def shor_preskill_fraction(e_phase: float, e_bit: float, ec_efficiency: float = 1.0) -> float:
    """Secret bits per sifted bit from estimated error rates: ``1 - h(e_ph) - f h(e_bit)``, floored at 0.

    P. W. Shor, J. Preskill, PRL 85, 441 (2000); for BBM92 key taken in one basis, the phase error rate is
    the error rate measured in the other basis.
    """
    for e in (e_phase, e_bit):
        if not 0.0 <= e <= 1.0:
            raise ConfigError(f"error rate must be within [0, 1], got {e}")
    return max(0.0, 1.0 - binary_entropy(min(e_phase, 0.5)) - ec_efficiency * binary_entropy(min(e_bit, 0.5)))
