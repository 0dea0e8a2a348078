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
    "SideHandler",
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


#: A node's herald handler for one hop (:meth:`QuantumMedium.attach_hop`): ``(label, slot, partner_slot,
#: frame)``; the station calls it directly.
SideHandler = Callable[[tuple[int, int], int, int, int], None]


def _with_fields(
    on_herald: HeraldHandler,
    hop: int,
    partner_node: str,
    label: tuple[int, int],
    slot: int,
    partner_slot: int,
    frame: int,
) -> None:
    on_herald(hop, label, slot, partner_node, partner_slot, frame)


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
        self.qubits: dict[int, _Qubit] = {}  # a _Pair (an end of it) or a _Lone
        self.coherence_s = self.t2_s = self.swap_success = 0.0
        self.specify(spec)

    def specify(self, spec: MemorySpec) -> None:
        self.coherence_s = spec.coherence_s
        self.t2_s = spec.t2_s
        self.swap_success = spec.swap_success


class _Lone:
    """A qubit entangled with nothing: unentangled, or collapsed to ``collapsed = (basis, value)`` by
    the measurement of its partner at ``touched_s``."""

    __slots__ = ("collapsed", "mem", "slot", "touched_s")

    def __init__(
        self, mem: _Memory, slot: int, touched_s: float, collapsed: tuple[Basis, int] | None
    ) -> None:
        self.mem = mem
        self.slot = slot
        self.touched_s = touched_s
        self.collapsed = collapsed


class _Pair:
    """A live pair, one record for both qubits: its label, its Bell-diagonal state ``p`` (a
    :class:`BellState`'s probabilities) decohered up to each end's last touch, its Pauli frame, and its two
    ends, ``a`` and ``b``: memory, slot and the time the qubit was last touched (``a_s``, ``b_s``).

    Both ends' memories hold the record itself under the end's slot: while it is live, exactly those two
    entries refer to it. End ``a`` is the one whose decoherence is applied first.
    """

    __slots__ = ("a_mem", "a_s", "a_slot", "b_mem", "b_s", "b_slot", "frame", "label", "p")

    def __init__(
        self,
        label: tuple[int, int],
        p: Probabilities,
        frame: int,
        a_mem: _Memory,
        a_slot: int,
        b_mem: _Memory,
        b_slot: int,
        now: float,
    ) -> None:
        self.label = label
        self.p = p
        self.frame = frame
        self.a_mem = a_mem
        self.a_slot = a_slot
        self.a_s = now
        self.b_mem = b_mem
        self.b_slot = b_slot
        self.b_s = now

    def is_a(self, mem: _Memory, slot: int) -> bool:
        """Whether ``(mem, slot)`` is end ``a`` (else it is end ``b``)."""
        return self.a_slot == slot and self.a_mem is mem


_Qubit = _Pair | _Lone  # what a memory slot holds


class _Station:
    """A heralding station: its hop's ends and the slots they offered (``None``: no offer)."""

    __slots__ = (
        "attempt_s",
        "fire",
        "hop",
        "left",
        "left_cb",
        "left_mem",
        "left_slot",
        "live",
        "log_fail",
        "p",
        "right",
        "right_cb",
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
        self.live = True  # False once removed (a bound offerer then goes through the hop's number)
        self.fire: Callable[[], None] = _ignore
        # Each end's herald handler for this hop, resolved when handlers are attached (None: dropped).
        self.left_cb: SideHandler | None = None
        self.right_cb: SideHandler | None = None


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

    Each node's memory is a :class:`_Memory` with what its slots hold in a dictionary by slot number: a
    live pair's one record (:class:`_Pair`, held under both ends' slots) or a qubit entangled with nothing
    (:class:`_Lone`). The node's :class:`NodePort` and the heralding stations of its hops hold that
    memory, so an operation finds its qubit with one lookup by slot; a station holds each end's herald
    handler for its hop and calls it directly.
    """

    def __init__(self, clock: Clock, seed: int, memories: dict[str, MemorySpec], hops: list[HopSpec]) -> None:
        self._clock = clock
        self._now = clock.now
        self._rng = random.Random(seed)
        self._mems = {node: _Memory(node, spec) for node, spec in memories.items()}
        self._stations: dict[int, _Station] = {}
        self._herald_cb: dict[str, HeraldHandler] = {}
        self._hop_cb: dict[tuple[str, int], SideHandler] = {}
        self._purifications: dict[tuple[int, int], _Purification] = {}
        for hop in hops:
            self.add_hop(hop)

    # -- wiring -------------------------------------------------------------------------------------

    def attach(self, node: str, on_herald: Callable[[Herald], None]) -> None:
        """Register the node's herald handler (its heralding-station detector lines)."""
        self.attach_fields(node, functools.partial(_with_herald, on_herald))

    def attach_fields(self, node: str, on_herald: HeraldHandler) -> None:
        """:meth:`attach` for a handler that takes a herald's fields as arguments (no :class:`Herald`)."""
        self._herald_cb[node] = on_herald
        self._wire(node)

    def attach_hop(self, node: str, hop: int, on_herald: SideHandler) -> None:
        """Register the node's herald handler for one hop, ``(label, slot, partner_slot, frame)``.

        It takes precedence over the node's :meth:`attach` handler for that hop; the station calls it
        directly (what an in-process engine uses: no dispatch on the hop per herald).
        """
        self._hop_cb[(node, hop)] = on_herald
        self._wire(node)

    def detach(self, node: str) -> None:
        """Forget the node's herald handlers (its heralds are dropped until it attaches again)."""
        self._herald_cb.pop(node, None)
        for key in [key for key in self._hop_cb if key[0] == node]:
            del self._hop_cb[key]
        self._wire(node)

    def _wire(self, node: str) -> None:
        for st in self._stations.values():
            if st.left == node:
                st.left_cb = self._side_handler(node, st.hop, st.right)
            if st.right == node:
                st.right_cb = self._side_handler(node, st.hop, st.left)

    def _side_handler(self, node: str, hop: int, partner_node: str) -> SideHandler | None:
        handler = self._hop_cb.get((node, hop))
        if handler is not None:
            return handler
        fields = self._herald_cb.get(node)
        if fields is None:
            return None
        return functools.partial(_with_fields, fields, hop, partner_node)

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
        st.left_cb = self._side_handler(st.left, st.hop, st.right)
        st.right_cb = self._side_handler(st.right, st.hop, st.left)
        self._stations[hop.hop] = st

    def remove_hop(self, hop: int) -> None:
        """Stop a heralding station: attempts in progress end without a herald, offered slots stay free."""
        st = self._stations.pop(hop, None)
        if st is not None:
            st.live = False
            if st.timer is not None:
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

    def offerer(self, node: str, hop: int) -> Callable[[int], None]:
        """``functools.partial(request_pair, hop, node=node)``, in effect: ``node`` offers a slot to ``hop``.

        Bound to the station's side once (no lookup of the station or the node per offer) while the
        station stands; a station removed (or not yet added) is looked up by its number per offer.
        """
        st = self._stations.get(hop)
        if st is None:
            return functools.partial(self._offer, node, hop)
        if node == st.left:
            return functools.partial(self._offer_left, st)
        if node == st.right:
            return functools.partial(self._offer_right, st)
        raise DriverError(f"node {node} is not an end of hop {hop}")

    def _offer_left(self, st: _Station, slot: int) -> None:
        """:meth:`_offer` from the left end of ``st`` (the same checks, the same draw)."""
        if not st.live:
            self._offer(st.left, st.hop, slot)
            return
        if st.left_slot is not None:
            raise DriverError(f"node {st.left} already offered a slot to hop {st.hop}")
        if slot in st.left_mem.qubits:
            raise DriverError(f"node {st.left}: slot {slot} is not free")
        st.left_slot = slot
        if st.right_slot is not None and st.timer is None:
            attempts = 1 if st.p >= 1.0 else 1 + int(math.log1p(-self._rng.random()) / st.log_fail)
            st.timer = self._clock.call_later(attempts * st.attempt_s, st.fire)

    def _offer_right(self, st: _Station, slot: int) -> None:
        """:meth:`_offer` from the right end of ``st`` (the same checks, the same draw)."""
        if not st.live:
            self._offer(st.right, st.hop, slot)
            return
        if st.right_slot is not None:
            raise DriverError(f"node {st.right} already offered a slot to hop {st.hop}")
        if slot in st.right_mem.qubits:
            raise DriverError(f"node {st.right}: slot {slot} is not free")
        st.right_slot = slot
        if st.left_slot is not None and st.timer is None:
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
        # |Psi+> or |Psi->, by the detector pattern: rng.choice((2, 3)) spelt out (same draws).
        getrandbits = self._rng.getrandbits
        r = getrandbits(2)
        while r >= 2:
            r = getrandbits(2)
        frame = 2 + r
        st.seq = seq = st.seq + 1
        label = (st.hop, seq)
        left_mem, right_mem = st.left_mem, st.right_mem
        left_mem.qubits[left_slot] = right_mem.qubits[right_slot] = _Pair(
            label, st.state_p, frame, left_mem, left_slot, right_mem, right_slot, self._now()
        )
        callback = st.left_cb
        if callback is not None:
            callback(label, left_slot, right_slot, frame)
        callback = st.right_cb
        if callback is not None:
            callback(label, right_slot, left_slot, frame)

    # -- decoherence --------------------------------------------------------------------------------

    def _touch_end(self, pair: _Pair, a: bool, now: float) -> None:
        """Decohere ``pair`` through one end's memory (``a`` or ``b``) from its last touch to ``now``."""
        if a:
            dt = now - pair.a_s
            if dt <= 0:
                return
            pair.a_s = now
            mem = pair.a_mem
        else:
            dt = now - pair.b_s
            if dt <= 0:
                return
            pair.b_s = now
            mem = pair.b_mem
        # depolarise(..., qubits=1) then dephase(..., qubits=1), on the bare probabilities.
        coherence_s, t2_s = mem.coherence_s, mem.t2_s
        if coherence_s != _INF:
            pair.p = depolarise_p(pair.p, _exp(-dt / coherence_s))
        if t2_s != _INF:
            pair.p = dephase_p(pair.p, (1.0 - _exp(-dt / t2_s)) / 2.0)

    def _touch_lone(self, q: _Lone, now: float) -> None:
        """Decohere a collapsed qubit's value from its last touch to ``now``."""
        dt = now - q.touched_s
        if dt <= 0:
            return
        q.touched_s = now
        if q.collapsed is not None:
            mem = q.mem
            basis, value = q.collapsed
            flip = (1.0 - math.exp(-dt / mem.coherence_s)) / 2.0
            if basis is Basis.X and not math.isinf(mem.t2_s):
                z_flip = (1.0 - math.exp(-dt / mem.t2_s)) / 2.0
                flip = flip * (1 - z_flip) + z_flip * (1 - flip)
            if self._rng.random() < flip:
                q.collapsed = (basis, value ^ 1)

    def _touch_pair(self, pair: _Pair, now: float) -> None:
        """Decohere both ends of a live pair (``a`` then ``b``), without a call per end.

        ``depolarise_p`` is spelt out for each end (the same operations, so the same numbers): this runs
        on every Bell measurement. An end touched already at ``now`` costs one comparison.
        """
        dt_a = now - pair.a_s
        dt_b = now - pair.b_s
        if dt_a <= 0 and dt_b <= 0:
            return
        i, z, x, y = pair.p
        if dt_a > 0:
            mem = pair.a_mem
            if mem.coherence_s != _INF:
                k = _exp(-dt_a / mem.coherence_s)
                i = 0.25 + (i - 0.25) * k
                z = 0.25 + (z - 0.25) * k
                x = 0.25 + (x - 0.25) * k
                y = 0.25 + (y - 0.25) * k
                total = i + z + x + y
                i, z, x, y = i / total, z / total, x / total, y / total
            if mem.t2_s != _INF:
                i, z, x, y = dephase_p((i, z, x, y), (1.0 - _exp(-dt_a / mem.t2_s)) / 2.0)
        if dt_b > 0:
            mem = pair.b_mem
            if mem.coherence_s != _INF:
                k = _exp(-dt_b / mem.coherence_s)
                i = 0.25 + (i - 0.25) * k
                z = 0.25 + (z - 0.25) * k
                x = 0.25 + (x - 0.25) * k
                y = 0.25 + (y - 0.25) * k
                total = i + z + x + y
                i, z, x, y = i / total, z / total, x / total, y / total
            if mem.t2_s != _INF:
                i, z, x, y = dephase_p((i, z, x, y), (1.0 - _exp(-dt_b / mem.t2_s)) / 2.0)
        pair.a_s = pair.b_s = now
        pair.p = (i, z, x, y)

    @staticmethod
    def _unpair(
        mem: _Memory, slot: int, pair: _Pair, collapsed: tuple[Basis, int] | None, now: float
    ) -> None:
        """The qubit in ``slot`` of ``mem`` (an end of ``pair``) is entangled with nothing from now on."""
        qubits = mem.qubits
        if qubits.get(slot) is pair:
            qubits[slot] = _Lone(mem, slot, now, collapsed)

    def _orphan(self, pair: _Pair, mem: _Memory, slot: int) -> None:
        """The far end of ``pair`` from ``(mem, slot)`` is left unentangled.

        No decoherence: it would only decohere the state of a pair nobody can reach any more, and an
        unentangled qubit without a collapsed value has nothing left to decohere.
        """
        if pair.is_a(mem, slot):
            self._unpair(pair.b_mem, pair.b_slot, pair, None, pair.b_s)
        else:
            self._unpair(pair.a_mem, pair.a_slot, pair, None, pair.a_s)

    # -- node operations ----------------------------------------------------------------------------
    # Each public operation names the node; the underscored forms take its memory (what a NodePort binds).

    def apply_pauli(self, node: str, slot: int, pauli: int) -> None:
        """A Pauli gate (index 0..3: I, Z, X, Y) on the qubit in ``slot``."""
        self._apply_pauli(self._memory(node, slot), slot, pauli)

    def _apply_pauli(self, mem: _Memory, slot: int, pauli: int) -> None:
        q = mem.qubits.get(slot)
        if q is None:
            raise DriverError(f"node {mem.name}: slot {slot} holds no qubit")
        now = self._now()
        if type(q) is _Pair:
            if q.a_slot == slot and q.a_mem is mem:
                if q.a_s < now:
                    self._touch_end(q, True, now)
            elif q.b_s < now:
                self._touch_end(q, False, now)
            q.frame ^= pauli & 3
            return
        assert type(q) is _Lone
        if q.touched_s < now:
            self._touch_lone(q, now)
        if q.collapsed is not None:
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
        del qubits[slot1], qubits[slot2]
        if type(q1) is not _Pair or type(q2) is not _Pair or q1 is q2:
            # Measuring an unentangled qubit (or both halves of one pair) entangles nothing.
            if type(q1) is _Pair and q1 is not q2:
                self._orphan(q1, mem, slot1)
            if type(q2) is _Pair and q2 is not q1:
                self._orphan(q2, mem, slot2)
            return _BSM_RESULTS[ok][bits]
        # The outer ends: x of q1, y of q2.
        if q1.a_slot == slot1 and q1.a_mem is mem:
            x_mem, x_slot, x_s = q1.b_mem, q1.b_slot, q1.b_s
        else:
            x_mem, x_slot, x_s = q1.a_mem, q1.a_slot, q1.a_s
        if q2.a_slot == slot2 and q2.a_mem is mem:
            y_mem, y_slot, y_s = q2.b_mem, q2.b_slot, q2.b_s
        else:
            y_mem, y_slot, y_s = q2.a_mem, q2.a_slot, q2.a_s
        if not ok:
            # No decoherence first: it would only change states nobody can reach any more (the outer
            # qubits are left unentangled, without a collapsed value to decohere).
            self._unpair(x_mem, x_slot, q1, None, x_s)
            self._unpair(y_mem, y_slot, q2, None, y_s)
            return _BSM_RESULTS[False][bits]
        now = self._now()
        self._touch_pair(q1, now)
        self._touch_pair(q2, now)
        x_s = y_s = now
        # q1's record becomes the swapped pair (x, y): the label of q1, no new record.
        q1.p = swap_p(q1.p, q2.p)
        q1.frame ^= q2.frame ^ bits
        q1.a_mem, q1.a_slot, q1.a_s = x_mem, x_slot, x_s
        q1.b_mem, q1.b_slot, q1.b_s = y_mem, y_slot, y_s
        y_mem.qubits[y_slot] = q1
        return _BSM_RESULTS[True][bits]

    def measure(self, node: str, slot: int, basis: Basis) -> int:
        """Measure the qubit in ``slot`` in ``basis`` (frees the slot); returns the outcome bit."""
        return self._measure(self._memory(node, slot), slot, basis)

    def _measure(self, mem: _Memory, slot: int, basis: Basis) -> int:
        q = mem.qubits.pop(slot, None)
        if q is None:
            raise DriverError(f"node {mem.name}: slot {slot} holds no qubit")
        now = self._now()
        if type(q) is _Pair:
            mine = q.is_a(mem, slot)
            self._touch_end(q, mine, now)  # this qubit, then its partner
            self._touch_end(q, not mine, now)
            outcome = self._rng.getrandbits(1)
            error = self._sample_error(q.p) ^ q.frame
            flip = (error >> 1) & 1 if basis is Basis.Z else error & 1
            if mine:
                self._unpair(q.b_mem, q.b_slot, q, (basis, outcome ^ flip), now)
            else:
                self._unpair(q.a_mem, q.a_slot, q, (basis, outcome ^ flip), now)
            return outcome
        assert type(q) is _Lone
        self._touch_lone(q, now)
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
        if type(q) is _Pair:  # _orphan(q, mem, slot), spelt out: every delivered pair ends here
            if q.a_slot == slot and q.a_mem is mem:
                far, far_slot, far_s = q.b_mem, q.b_slot, q.b_s
            else:
                far, far_slot, far_s = q.a_mem, q.a_slot, q.a_s
            qubits = far.qubits
            if qubits.get(far_slot) is q:
                qubits[far_slot] = _Lone(far, far_slot, far_s, None)

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
        if type(keep) is not _Pair:
            raise DriverError(f"node {node}: slot {keep_slot} holds no pair to purify")
        label = keep.label
        job = self._purifications.get(label)
        if job is None:
            other_mem = keep.b_mem if keep.is_a(mem, keep_slot) else keep.a_mem
            if (
                type(sac) is not _Pair
                or sac is keep
                or (sac.b_mem if sac.is_a(mem, sacrifice_slot) else sac.a_mem) is not other_mem
            ):
                raise DriverError(
                    f"node {node}: slots {keep_slot}, {sacrifice_slot} do not share a partner node"
                )
            now = self._now()
            self._touch_pair(keep, now)
            self._touch_pair(sac, now)
            fn = bbpssw if protocol is PurificationProtocol.BBPSSW else dejmps
            p_ok, out = fn(BellState.trusted(keep.p), BellState.trusted(sac.p))
            ok = self._rng.random() < p_ok
            bit = self._rng.getrandbits(1)
            keep.p = out.p if ok else _MIXED
            self._orphan(sac, mem, sacrifice_slot)  # measured by the far end's half of the round
            job = _Purification({node: bit, other_mem.name: bit ^ (0 if ok else 1)}, set())
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
        if type(q) is not _Pair:
            return None
        self._touch_pair(q, self._now())
        return BellState.trusted(q.p)

    def pair_fidelity(self, node: str, slot: int) -> float | None:
        """``pair_state(node, slot).fidelity`` without the :class:`BellState` (None: no pair there)."""
        mem = self._mems.get(node)
        q = mem.qubits.get(slot) if mem is not None else None
        if type(q) is not _Pair:
            return None
        self._touch_pair(q, self._now())
        return q.p[0]

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

    def offerer(self, hop: int) -> Callable[[int], None]:
        """``request_pair`` bound to ``hop``: offers a slot (see :meth:`QuantumMedium.offerer`)."""
        return self._medium.offerer(self.node, hop)

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
