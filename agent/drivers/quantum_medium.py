"""The emulated quantum medium: photons, memories and their joint states, apart from the nodes' software.

A node's controller (:mod:`agent.drivers.emulated_entanglement`) can only do what it could do to real
hardware: ask the heralding station of a hop for a pair into one of its memory slots, apply a Pauli gate
to a slot, Bell-measure two of its slots, measure one slot in a basis, run a purification round on two
slots, free a slot. It learns only what hardware would tell it: a herald (which slots now share a pair,
and the Pauli frame the station's detector pattern implies), a Bell-measurement outcome, a measurement
outcome, a purification round's local outcome bit. The joint quantum states live here and nowhere else.

State
-----
Every live pair is a Bell-diagonal state (:class:`qsdn.physics.entanglement.BellState`, error
probabilities of I, Z, X, Y on |Phi+>) plus a Pauli *frame* ``f`` (an index 0..3): the actual pair is the
state with every error index XORed with ``f``. Heralds and Bell measurements put uniformly random,
known-to-the-nodes Paulis into the frame; :meth:`QuantumMedium.apply_pauli` (a node's correction) XORs
them out. A Pauli on either qubit has the same effect on a Bell-diagonal pair (up to a global phase).

Each qubit remembers when it was last *touched*. Decoherence is applied lazily when a qubit is touched
(measured, swapped, purified, corrected, inspected), from the injected clock's time, per qubit, with its
node's memory parameters: depolarising with coherence time ``T`` (every Bell component relaxes to 1/4 by
``exp(-t/T)``) and optionally dephasing with ``T2`` (I mixes with Z and X with Y by
``(1 - exp(-t/T2))/2``), :func:`~qsdn.physics.entanglement.depolarise` and
:func:`~qsdn.physics.entanglement.dephase` with ``qubits=1`` (SYSTEM.md section 4). Both channels commute
with the Pauli frame.

Generation (S. D. Barrett, P. Kok, PRA 71, 060310, 2005)
-------------------------------------------------------
A hop has a heralding station in the middle. When both end nodes have asked for a pair into a free slot,
the station attempts once per ``attempt_s = L/c`` with success probability ``p`` (``eta_A eta_B / 2``,
or ``1 - (1-p)^M`` over ``M`` modes, or ``2 alpha eta`` single-click, computed by the caller). The number
of attempts is sampled at once as a geometric variable, so virtual time does not tick per attempt; the
herald arrives ``N * attempt_s`` after the request. The new pair has the hop's heralded state (fidelity
``F0`` as heralded, which includes what happened during the attempt) and a random frame in {X, Y}
(Barrett-Kok heralds |Psi+> or |Psi->, which detector pattern says); its qubits enter memory then.

Measurement
-----------
The first measurement of a pair gives a uniformly random bit; the partner qubit collapses to the
correlated eigenstate (anti-correlated when the actual error has an X component for a Z measurement, a Z
component for an X measurement), sampled from the joint state at that time. A collapsed qubit measured
later in the same basis gives that value, flipped with the probability its memory decohered it since
(``(1 - exp(-t/T))/2``, plus ``(1 - exp(-t/T2))/2`` in the X basis); in the other basis, or if its
partner was discarded, a uniformly random bit.

Bell measurement (entanglement swapping, H.-J. Briegel et al., PRL 81, 5932, 1998)
-------------------------------------------------------------------------------
On two slots of one node holding qubits of two pairs: with probability ``a`` (the node's
``swap_success``) it succeeds, and the outer qubits now share the Klein-group convolution of the two
states, with frame ``f1 ^ f2 ^ m`` for the outcome ``m`` (two uniformly random bits, returned). A failure
destroys both pairs (the outer qubits become unentangled). Either way both slots are freed.

Purification (BBPSSW, C. H. Bennett et al., PRL 76, 722, 1996; DEJMPS, D. Deutsch et al., PRL 77, 2818,
1996)
---------------------------------------------------------------------------------------------------
Each end of two pairs that share the same two nodes runs :meth:`QuantumMedium.purify_local` on its two
slots (keep, sacrifice). The first end's call samples the round from the states at that moment as they
are once their frames are corrected (the nodes track Pauli frames through the round in software, so a
correction still in flight stays pending on the kept pair), with ``bbpssw`` or ``dejmps`` of
:mod:`qsdn.physics.entanglement`: on success both ends get the same uniformly random bit and the kept
pair takes the output state; on failure the bits differ and the kept pair is left maximally mixed (the
nodes discard it). The sacrificed pair is gone; the second end's call returns its bit.

Randomness: one ``random.Random(seed)`` per medium, used in a fixed order, so a seed fixes a run.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from agent.drivers.clock import Clock, TimerHandle
from qsdn.errors import ConfigError, DriverError
from qsdn.physics.entanglement import (
    BellState,
    Probabilities,
    bbpssw,
    dejmps,
    dephase_p,
    depolarise_p,
    swap_p,
)

__all__ = [
    "Basis",
    "BsmResult",
    "HardwarePort",
    "Herald",
    "HeraldHandler",
    "HopSpec",
    "MemorySpec",
    "NodePort",
    "PurificationProtocol",
    "QuantumMedium",
    "sample_geometric",
]

logger = logging.getLogger(__name__)

_MIXED: Probabilities = (0.25, 0.25, 0.25, 0.25)
_INF = math.inf
_exp = math.exp


class Basis(StrEnum):
    Z = "Z"
    X = "X"


class PurificationProtocol(StrEnum):
    BBPSSW = "bbpssw"
    DEJMPS = "dejmps"


@dataclass(frozen=True, slots=True)
class MemorySpec:
    """A node's quantum memory and Bell-measurement device."""

    coherence_s: float = math.inf
    t2_s: float = math.inf
    swap_success: float = 1.0

    def __post_init__(self) -> None:
        if not self.coherence_s > 0 or not self.t2_s > 0:
            raise ConfigError("memory coherence times must be positive")
        if not 0.0 < self.swap_success <= 1.0:
            raise ConfigError(f"swap success probability must be within (0, 1], got {self.swap_success}")


@dataclass(frozen=True, slots=True)
class HopSpec:
    """One hop's heralding station: who is at each end, per-attempt success, attempt time, heralded state."""

    hop: int
    left: str
    right: str
    p: float
    attempt_s: float
    state: BellState

    def __post_init__(self) -> None:
        if not 0.0 < self.p <= 1.0:
            raise ConfigError(f"hop {self.hop}: success probability per attempt must be within (0, 1]")
        if self.attempt_s < 0:
            raise ConfigError(f"hop {self.hop}: attempt time must not be negative")


@dataclass(frozen=True, slots=True)
class Herald:
    """What the heralding station tells one end of its hop: slot ``slot`` now shares pair ``label``.

    ``label`` is ``(hop, sequence number)``; ``frame`` is the Pauli the pair carries on |Phi+>.
    """

    hop: int
    label: tuple[int, int]
    slot: int
    partner_node: str
    partner_slot: int
    frame: int


@dataclass(frozen=True, slots=True)
class BsmResult:
    ok: bool
    bits: int


#: Every Bell-measurement result, by ``[ok][bits]`` (results are immutable values).
_BSM_RESULTS = (tuple(BsmResult(False, b) for b in range(4)), tuple(BsmResult(True, b) for b in range(4)))

#: What the medium calls for a herald at one end: ``(hop, label, slot, partner_node, partner_slot, frame)``,
#: the fields of a :class:`Herald` without the object (:meth:`QuantumMedium.attach_fields`).
HeraldHandler = Callable[[int, tuple[int, int], int, str, int, int], None]


def _with_herald(
    on_herald: Callable[[Herald], None],
    hop: int,
    label: tuple[int, int],
    slot: int,
    partner_node: str,
    partner_slot: int,
    frame: int,
) -> None:
    on_herald(Herald(hop, label, slot, partner_node, partner_slot, frame))


class _Memory:
    """One node's memory device: its specification, unpacked, and its occupied slots by slot number."""

    __slots__ = ("coherence_s", "name", "qubits", "swap_success", "t2_s")

    def __init__(self, name: str, spec: MemorySpec) -> None:
        self.name = name
        self.qubits: dict[int, _Qubit] = {}
        self.coherence_s = self.t2_s = self.swap_success = 0.0
        self.specify(spec)

    def specify(self, spec: MemorySpec) -> None:
        self.coherence_s = spec.coherence_s
        self.t2_s = spec.t2_s
        self.swap_success = spec.swap_success


class _Qubit:
    __slots__ = ("collapsed", "mem", "pair", "slot", "touched_s")

    def __init__(self, mem: _Memory, slot: int, touched_s: float) -> None:
        self.mem = mem
        self.slot = slot
        self.touched_s = touched_s
        self.pair: _Pair | None = None
        self.collapsed: tuple[Basis, int] | None = None


class _Pair:
    """A live pair: ``p`` is its Bell-diagonal state (a :class:`BellState`'s probabilities), decohered
    up to its qubits' ``touched_s``."""

    __slots__ = ("a", "b", "frame", "label", "p")

    def __init__(self, label: tuple[int, int], a: _Qubit, b: _Qubit, p: Probabilities, frame: int) -> None:
        self.label = label
        self.a = a
        self.b = b
        self.p = p
        self.frame = frame

    def other(self, q: _Qubit) -> _Qubit:
        return self.b if q is self.a else self.a


class _Station:
    """A heralding station: its hop's ends and the slots they offered (``None``: no offer)."""

    __slots__ = (
        "attempt_s",
        "fire",
        "hop",
        "left",
        "left_mem",
        "left_slot",
        "log_fail",
        "p",
        "right",
        "right_mem",
        "right_slot",
        "seq",
        "spec",
        "state_p",
        "timer",
    )

    def __init__(self, spec: HopSpec, left_mem: _Memory, right_mem: _Memory) -> None:
        self.spec = spec
        self.hop = spec.hop
        self.left, self.right = spec.left, spec.right
        self.left_mem, self.right_mem = left_mem, right_mem
        self.left_slot: int | None = None
        self.right_slot: int | None = None
        self.p = spec.p
        self.log_fail = math.log1p(-spec.p) if spec.p < 1.0 else 0.0
        self.attempt_s = spec.attempt_s
        self.state_p = spec.state.p
        self.timer: TimerHandle | None = None
        self.seq = 0
        self.fire: Callable[[], None] = _ignore


def _ignore() -> None:
    pass


@dataclass(slots=True)
class _Purification:
    bits: dict[str, int]
    done: set[str]


def sample_geometric(rng: random.Random, p: float) -> int:
    """Attempts until the first success (>= 1) with success probability ``p`` per attempt (inversion)."""
    if p >= 1.0:
        return 1
    u = rng.random()
    return 1 + int(math.log1p(-u) / math.log1p(-p))


class QuantumMedium:
    """Every pair's state, frame and storage times; heralding stations; measurement statistics.

    Each node's memory is a :class:`_Memory` with its qubits in a dictionary by slot number; the node's
    :class:`NodePort` and the heralding stations of its hops hold that object, so an operation finds
    its qubit with one lookup by slot.
    """

    def __init__(self, clock: Clock, seed: int, memories: dict[str, MemorySpec], hops: list[HopSpec]) -> None:
        self._clock = clock
        self._rng = random.Random(seed)
        self._mems = {node: _Memory(node, spec) for node, spec in memories.items()}
        self._stations: dict[int, _Station] = {}
        self._herald_cb: dict[str, HeraldHandler] = {}
        self._purifications: dict[tuple[int, int], _Purification] = {}
        for hop in hops:
            self.add_hop(hop)

    # -- wiring -------------------------------------------------------------------------------------

    def attach(self, node: str, on_herald: Callable[[Herald], None]) -> None:
        """Register the node's herald handler (its heralding-station detector lines)."""
        self._herald_cb[node] = functools.partial(_with_herald, on_herald)

    def attach_fields(self, node: str, on_herald: HeraldHandler) -> None:
        """:meth:`attach` for a handler that takes a herald's fields as arguments (no :class:`Herald`)."""
        self._herald_cb[node] = on_herald

    def detach(self, node: str) -> None:
        """Forget the node's herald handler (its heralds are dropped until it attaches again)."""
        self._herald_cb.pop(node, None)

    def add_node(self, node: str, memory: MemorySpec) -> None:
        """Add (or re-specify) a node's memory, for media whose nodes join while they run."""
        mem = self._mems.get(node)
        if mem is None:
            self._mems[node] = _Memory(node, memory)
        else:
            mem.specify(memory)  # its qubits, ports and stations keep the same memory

    def add_hop(self, hop: HopSpec) -> None:
        """Add a heralding station; its two nodes must have memory specifications."""
        for node in (hop.left, hop.right):
            if node not in self._mems:
                raise ConfigError(f"hop {hop.hop}: node {node} has no memory specification")
        if hop.hop in self._stations:
            raise ConfigError(f"hop {hop.hop} defined twice")
        st = _Station(hop, self._mems[hop.left], self._mems[hop.right])
        st.fire = functools.partial(self._herald, st)
        self._stations[hop.hop] = st

    def remove_hop(self, hop: int) -> None:
        """Stop a heralding station: attempts in progress end without a herald, offered slots stay free."""
        st = self._stations.pop(hop, None)
        if st is not None and st.timer is not None:
            st.timer.cancel()

    def withdraw(self, hop: int, node: str) -> None:
        """Take back the slot ``node`` offered to ``hop`` (no effect if it offered none)."""
        st = self._stations.get(hop)
        if st is None:
            return
        if node == st.left and st.left_slot is not None:
            st.left_slot = None
        elif node == st.right and st.right_slot is not None:
            st.right_slot = None
        else:
            return
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None

    def hop(self, hop: int) -> HopSpec:
        return self._station(hop).spec

    def _station(self, hop: int) -> _Station:
        try:
            return self._stations[hop]
        except KeyError:
            raise DriverError(f"no heralding station for hop {hop}") from None

    def _memory(self, node: str, slot: int) -> _Memory:
        mem = self._mems.get(node)
        if mem is None:
            raise DriverError(f"node {node}: slot {slot} holds no qubit")
        return mem

    # -- generation ---------------------------------------------------------------------------------

    def request_pair(self, hop: int, node: str, slot: int) -> None:
        """Offer free slot ``slot`` of ``node`` to ``hop``; attempts start once both ends have offered one."""
        self._offer(node, hop, slot)

    def generating(self, hop: int, node: str) -> bool:
        """Whether ``node`` has a slot offered to ``hop`` (attempting or waiting for the other end)."""
        return self._offered(node, hop)

    # Node first, so that a NodePort can bind them to its node.

    def _offer(self, node: str, hop: int, slot: int) -> None:
        st = self._stations.get(hop)
        if st is None:
            raise DriverError(f"no heralding station for hop {hop}")
        if node == st.left:
            if st.left_slot is not None:
                raise DriverError(f"node {node} already offered a slot to hop {hop}")
            if slot in st.left_mem.qubits:
                raise DriverError(f"node {node}: slot {slot} is not free")
            st.left_slot = slot
            if st.right_slot is None:
                return
        elif node == st.right:
            if st.right_slot is not None:
                raise DriverError(f"node {node} already offered a slot to hop {hop}")
            if slot in st.right_mem.qubits:
                raise DriverError(f"node {node}: slot {slot} is not free")
            st.right_slot = slot
            if st.left_slot is None:
                return
        else:
            raise DriverError(f"node {node} is not an end of hop {hop}")
        if st.timer is None:
            # sample_geometric, spelt out (log1p(-p) computed once per station: the same number)
            attempts = 1 if st.p >= 1.0 else 1 + int(math.log1p(-self._rng.random()) / st.log_fail)
            st.timer = self._clock.call_later(attempts * st.attempt_s, st.fire)

    def _offered(self, node: str, hop: int) -> bool:
        st = self._stations.get(hop)
        if st is None:
            raise DriverError(f"no heralding station for hop {hop}")
        if node == st.left:
            return st.left_slot is not None
        return node == st.right and st.right_slot is not None

    def _herald(self, st: _Station) -> None:
        st.timer = None
        left_slot, right_slot = st.left_slot, st.right_slot
        if left_slot is None or right_slot is None:  # never: a withdrawn offer cancels the timer
            return
        st.left_slot = st.right_slot = None
        now = self._clock.now()
        qa = _Qubit(st.left_mem, left_slot, now)
        qb = _Qubit(st.right_mem, right_slot, now)
        # |Psi+> or |Psi->, by the detector pattern: rng.choice((2, 3)) spelt out (same draws).
        getrandbits = self._rng.getrandbits
        r = getrandbits(2)
        while r >= 2:
            r = getrandbits(2)
        frame = 2 + r
        st.seq = seq = st.seq + 1
        hop = st.hop
        label = (hop, seq)
        qa.pair = qb.pair = _Pair(label, qa, qb, st.state_p, frame)
        st.left_mem.qubits[left_slot] = qa
        st.right_mem.qubits[right_slot] = qb
        left, right = st.left, st.right
        callbacks = self._herald_cb
        callback = callbacks.get(left)
        if callback is not None:
            callback(hop, label, left_slot, right, right_slot, frame)
        callback = callbacks.get(right)
        if callback is not None:
            callback(hop, label, right_slot, left, left_slot, frame)

    # -- decoherence --------------------------------------------------------------------------------

    def _touch(self, q: _Qubit, now: float) -> None:
        """Decohere ``q`` (its pair, or its collapsed value) from its last touch to ``now``."""
        dt = now - q.touched_s
        if dt <= 0:
            return
        q.touched_s = now
        mem = q.mem
        pair = q.pair
        if pair is not None:
            # depolarise(..., qubits=1) then dephase(..., qubits=1), on the bare probabilities.
            coherence_s, t2_s = mem.coherence_s, mem.t2_s
            if coherence_s != _INF:
                pair.p = depolarise_p(pair.p, _exp(-dt / coherence_s))
            if t2_s != _INF:
                pair.p = dephase_p(pair.p, (1.0 - _exp(-dt / t2_s)) / 2.0)
        elif q.collapsed is not None:
            basis, value = q.collapsed
            flip = (1.0 - math.exp(-dt / mem.coherence_s)) / 2.0
            if basis is Basis.X and not math.isinf(mem.t2_s):
                z_flip = (1.0 - math.exp(-dt / mem.t2_s)) / 2.0
                flip = flip * (1 - z_flip) + z_flip * (1 - flip)
            if self._rng.random() < flip:
                q.collapsed = (basis, value ^ 1)

    def _touch_pair(self, pair: _Pair, now: float) -> None:
        """``_touch`` both qubits of a live pair (a then b), without a call per qubit.

        ``depolarise_p`` is spelt out (the same operations, so the same numbers): this runs on every
        Bell measurement and correction.
        """
        i, z, x, y = pair.p
        for q in (pair.a, pair.b):
            dt = now - q.touched_s
            if dt > 0:
                q.touched_s = now
                mem = q.mem
                if mem.coherence_s != _INF:
                    k = _exp(-dt / mem.coherence_s)
                    i = 0.25 + (i - 0.25) * k
                    z = 0.25 + (z - 0.25) * k
                    x = 0.25 + (x - 0.25) * k
                    y = 0.25 + (y - 0.25) * k
                    total = i + z + x + y
                    i, z, x, y = i / total, z / total, x / total, y / total
                if mem.t2_s != _INF:
                    i, z, x, y = dephase_p((i, z, x, y), (1.0 - _exp(-dt / mem.t2_s)) / 2.0)
        pair.p = (i, z, x, y)

    # -- node operations ----------------------------------------------------------------------------
    # Each public operation names the node; the underscored forms take its memory (what a NodePort binds).

    def apply_pauli(self, node: str, slot: int, pauli: int) -> None:
        """A Pauli gate (index 0..3: I, Z, X, Y) on the qubit in ``slot``."""
        self._apply_pauli(self._memory(node, slot), slot, pauli)

    def _apply_pauli(self, mem: _Memory, slot: int, pauli: int) -> None:
        q = mem.qubits.get(slot)
        if q is None:
            raise DriverError(f"node {mem.name}: slot {slot} holds no qubit")
        now = self._clock.now()
        if q.touched_s < now:
            self._touch(q, now)
        pair = q.pair
        if pair is not None:
            pair.frame ^= pauli & 3
        elif q.collapsed is not None:
            basis, value = q.collapsed
            flips = (pauli >> 1) & 1 if basis is Basis.Z else pauli & 1
            q.collapsed = (basis, value ^ flips)

    def bell_measure(self, node: str, slot1: int, slot2: int) -> BsmResult:
        """Bell-state measurement on two slots of one node (frees both)."""
        return self._bell_measure(self._memory(node, slot1), slot1, slot2)

    def _bell_measure(self, mem: _Memory, slot1: int, slot2: int) -> BsmResult:
        qubits = mem.qubits
        q1 = qubits.get(slot1)
        if q1 is None:
            raise DriverError(f"node {mem.name}: slot {slot1} holds no qubit")
        q2 = qubits.get(slot2)
        if q2 is None:
            raise DriverError(f"node {mem.name}: slot {slot2} holds no qubit")
        a = mem.swap_success
        rng = self._rng
        ok = a >= 1.0 or rng.random() < a
        bits = rng.getrandbits(2)
        p1, p2 = q1.pair, q2.pair
        del qubits[slot1], qubits[slot2]
        if p1 is None or p2 is None or p1 is p2:
            # Measuring an unentangled qubit (or both halves of one pair) entangles nothing.
            for p in (p1, p2):
                if p is not None:
                    self._orphan(p.other(q1 if p is p1 else q2), p)
            return _BSM_RESULTS[ok][bits]
        now = self._clock.now()
        self._touch_pair(p1, now)
        self._touch_pair(p2, now)
        x = p1.b if q1 is p1.a else p1.a
        y = p2.b if q2 is p2.a else p2.a
        if not ok:
            self._orphan(x, p1)
            self._orphan(y, p2)
            return _BSM_RESULTS[False][bits]
        x.pair = y.pair = _Pair(p1.label, x, y, swap_p(p1.p, p2.p), p1.frame ^ p2.frame ^ bits)
        return _BSM_RESULTS[True][bits]

    def _orphan(self, q: _Qubit, pair: _Pair) -> None:
        # No _touch: it would only decohere the state of a pair nobody can reach any more, and an
        # unentangled qubit without a collapsed value has nothing left to decohere.
        if q.pair is pair:
            q.pair = None
            q.collapsed = None

    def measure(self, node: str, slot: int, basis: Basis) -> int:
        """Measure the qubit in ``slot`` in ``basis`` (frees the slot); returns the outcome bit."""
        return self._measure(self._memory(node, slot), slot, basis)

    def _measure(self, mem: _Memory, slot: int, basis: Basis) -> int:
        q = mem.qubits.pop(slot, None)
        if q is None:
            raise DriverError(f"node {mem.name}: slot {slot} holds no qubit")
        now = self._clock.now()
        self._touch(q, now)
        pair = q.pair
        if pair is not None:
            partner = pair.other(q)
            self._touch(partner, now)
            outcome = self._rng.getrandbits(1)
            error = self._sample_error(pair.p) ^ pair.frame
            flip = (error >> 1) & 1 if basis is Basis.Z else error & 1
            partner.pair = None
            partner.collapsed = (basis, outcome ^ flip)
            return outcome
        if q.collapsed is not None and q.collapsed[0] is basis:
            return q.collapsed[1]
        return self._rng.getrandbits(1)

    def _sample_error(self, p: Probabilities) -> int:
        u = self._rng.random()
        acc = 0.0
        for i, pi in enumerate(p):
            acc += pi
            if u < acc:
                return i
        return 3

    def discard(self, node: str, slot: int) -> None:
        """Reset the memory in ``slot``; its partner (if any) is left unentangled."""
        mem = self._mems.get(node)
        if mem is not None:
            self._discard(mem, slot)

    def _discard(self, mem: _Memory, slot: int) -> None:
        q = mem.qubits.pop(slot, None)
        if q is not None:
            pair = q.pair
            if pair is not None:
                partner = pair.b if q is pair.a else pair.a
                if partner.pair is pair:  # _orphan, spelt out
                    partner.pair = None
                    partner.collapsed = None

    def purify_local(
        self, node: str, keep_slot: int, sacrifice_slot: int, protocol: PurificationProtocol
    ) -> int:
        """This end's half of a purification round: returns its local outcome bit (frees the sacrifice)."""
        return self._purify_local(self._memory(node, keep_slot), keep_slot, sacrifice_slot, protocol)

    def _purify_local(
        self, mem: _Memory, keep_slot: int, sacrifice_slot: int, protocol: PurificationProtocol
    ) -> int:
        node = mem.name
        qubits = mem.qubits
        keep, sac = qubits.get(keep_slot), qubits.get(sacrifice_slot)
        if keep is None:
            raise DriverError(f"node {node}: slot {keep_slot} holds no qubit")
        if sac is None:
            raise DriverError(f"node {node}: slot {sacrifice_slot} holds no qubit")
        if keep.pair is None:
            raise DriverError(f"node {node}: slot {keep_slot} holds no pair to purify")
        label = keep.pair.label
        job = self._purifications.get(label)
        if job is None:
            pk, ps = keep.pair, sac.pair
            other = pk.other(keep)
            if ps is None or ps is pk or ps.other(sac).mem is not other.mem:
                raise DriverError(
                    f"node {node}: slots {keep_slot}, {sacrifice_slot} do not share a partner node"
                )
            now = self._clock.now()
            self._touch_pair(pk, now)
            self._touch_pair(ps, now)
            fn = bbpssw if protocol is PurificationProtocol.BBPSSW else dejmps
            p_ok, out = fn(BellState.trusted(pk.p), BellState.trusted(ps.p))
            ok = self._rng.random() < p_ok
            bit = self._rng.getrandbits(1)
            pk.p = out.p if ok else _MIXED
            ps_other = ps.other(sac)
            ps_other.pair = None  # measured by the far end's half of the round
            job = _Purification({node: bit, other.mem.name: bit ^ (0 if ok else 1)}, set())
            self._purifications[label] = job
        del qubits[sacrifice_slot]
        job.done.add(node)
        bit = job.bits[node]
        if len(job.done) == 2:
            del self._purifications[label]
        return bit

    # -- oracle (statistics only; no node calls these) ----------------------------------------------

    def pair_state(self, node: str, slot: int) -> BellState | None:
        """Ground truth: the state of the pair in ``slot`` decohered to now, once its frame is corrected."""
        mem = self._mems.get(node)
        q = mem.qubits.get(slot) if mem is not None else None
        if q is None or q.pair is None:
            return None
        self._touch_pair(q.pair, self._clock.now())
        return BellState.trusted(q.pair.p)

    def port(self, node: str) -> NodePort:
        """The operations of one node's hardware (what its controller is given)."""
        if node not in self._mems:
            raise ConfigError(f"node {node} has no memory specification")
        return NodePort(self, node)

    def live_qubits(self) -> int:
        return sum(len(mem.qubits) for mem in self._mems.values())

    def node_slots(self, node: str) -> list[int]:
        """The slots of ``node`` that hold a qubit now."""
        mem = self._mems.get(node)
        return sorted(mem.qubits) if mem is not None else []


def _shifted(state: BellState, frame: int) -> BellState:
    """The actual error distribution of a state carrying Pauli frame ``frame``."""
    if frame == 0:
        return state
    p = state.p
    return BellState((p[0 ^ frame], p[1 ^ frame], p[2 ^ frame], p[3 ^ frame]))


class HardwarePort(Protocol):
    """What a node's protocol engine may do to its own quantum hardware.

    Operations without a result take effect in the order they are called. The three that produce an
    outcome deliver it to a callback (``*_then``): at once for hardware in the same process
    (:class:`NodePort`), after a round trip for hardware behind a network (the agent's entanglement
    driver talking to the medium service). ``generating`` is answered from what the port itself knows.
    """

    @property
    def node(self) -> str: ...

    def request_pair(self, hop: int, slot: int) -> None: ...

    def generating(self, hop: int) -> bool: ...

    def apply_pauli(self, slot: int, pauli: int) -> None: ...

    def discard(self, slot: int) -> None: ...

    def bell_measure_then(self, slot1: int, slot2: int, done: Callable[[BsmResult], None]) -> None: ...

    def measure_then(self, slot: int, basis: Basis, done: Callable[[int], None]) -> None: ...

    def purify_local_then(
        self, keep_slot: int, sacrifice_slot: int, protocol: PurificationProtocol, done: Callable[[int], None]
    ) -> None: ...


class NodePort:
    """One node's view of the hardware: operations on its own memory slots only."""

    __slots__ = (
        "_bell_measure",
        "_measure",
        "_medium",
        "_purify_local",
        "apply_pauli",
        "discard",
        "generating",
        "node",
        "request_pair",
    )

    def __init__(self, medium: QuantumMedium, node: str) -> None:
        self._medium = medium
        self.node = node
        mem = medium._mems[node]
        # The operations, bound to this node's name or memory (no frame of their own):
        # request_pair(hop, slot), generating(hop), apply_pauli(slot, pauli), discard(slot).
        self.request_pair: Callable[[int, int], None] = functools.partial(medium._offer, node)
        self.generating: Callable[[int], bool] = functools.partial(medium._offered, node)
        self.apply_pauli: Callable[[int, int], None] = functools.partial(medium._apply_pauli, mem)
        self.discard: Callable[[int], None] = functools.partial(medium._discard, mem)
        self._bell_measure: Callable[[int, int], BsmResult] = functools.partial(medium._bell_measure, mem)
        self._measure: Callable[[int, Basis], int] = functools.partial(medium._measure, mem)
        self._purify_local: Callable[[int, int, PurificationProtocol], int] = functools.partial(
            medium._purify_local, mem
        )

    def bell_measure(self, slot1: int, slot2: int) -> BsmResult:
        return self._bell_measure(slot1, slot2)

    def measure(self, slot: int, basis: Basis) -> int:
        return self._measure(slot, basis)

    def purify_local(self, keep_slot: int, sacrifice_slot: int, protocol: PurificationProtocol) -> int:
        return self._purify_local(keep_slot, sacrifice_slot, protocol)

    # -- the HardwarePort forms: the outcome goes to the callback at once --------------------------------

    def bell_measure_then(self, slot1: int, slot2: int, done: Callable[[BsmResult], None]) -> None:
        done(self._bell_measure(slot1, slot2))

    def measure_then(self, slot: int, basis: Basis, done: Callable[[int], None]) -> None:
        done(self._measure(slot, basis))

    def purify_local_then(
        self, keep_slot: int, sacrifice_slot: int, protocol: PurificationProtocol, done: Callable[[int], None]
    ) -> None:
        done(self._purify_local(keep_slot, sacrifice_slot, protocol))
