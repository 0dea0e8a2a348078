"""Node protocol engines of an emulated repeater chain: repeaters and end nodes over a classical channel.

The chain is ``node_0 - node_1 - ... - node_n``; hop ``h`` joins ``node_h`` and ``node_{h+1}``. Every node
drives its own hardware through a :class:`~agent.drivers.quantum_medium.NodePort` (its memory slots only)
and talks to the others through a :class:`ClassicalChannel` (virtual: messages delivered by the clock after
the propagation delay ``L/c`` summed over the hops between the two nodes). What a node knows is what it
was told: heralds of its hops, and messages.

Elementary links
----------------
A node keeps ``memories`` slots per adjacent hop (end nodes ``end_memories``). A hop attempts whenever both
of its ends have offered a free slot (:meth:`QuantumMedium.request_pair`). In ``generation="rounds"`` a hop
produces at most one pair per *round*; in ``"continuous"`` it attempts again as soon as its slots free up.
The right node of a hop applies the herald's Pauli frame to its qubit at once (a local gate).

Pair labels: a heralded pair is labelled ``(hop, sequence)``. A swap at a repeater joins the pair labelled
``left`` (on its left hop) with ``right``; the repeater announces :class:`SwapOutcome` (labels, success,
the two BSM bits) to both end nodes and to the repeaters whose swap order waits on it. A discarded qubit is
announced with :class:`Discarded`. An end node follows the labels from its own elementary pair across the
announced swaps (:class:`SwapRecords`) to the far end's elementary pair: then it knows its partner, the
end-to-end pair id (the label of the left end's elementary pair) and, at the right end, the Pauli
correction (XOR of the BSM bits), which it applies. A failed swap or a discard on the way fails the pair.

Repeaters
---------
Swap order: ``asap`` swaps as soon as both sides hold a qubit; ``sequential`` (left to right) swaps when
the left qubit's pair already reaches node 0; ``nested`` (balanced doubling) splits every span at its
middle node, and a node swaps when its left and right qubits' pairs already reach the ends of its span.
Cut-off: a qubit stored longer than ``cutoff_s`` at a repeater is discarded (and announced). Swap failure
(probability ``1 - a``, decided by the hardware) loses both pairs. A repeater is given heralds and BSM
outcomes only; it never receives end-to-end messages (bases, samples, parities, key).

Rounds (the protocol the closed forms describe)
-----------------------------------------------
With ``generation="rounds"`` every hop attempts from a common start; a hop that succeeds holds its pair;
repeaters swap ``asap``; the round ends when every repeater has swapped successfully, or any swap failed or
any qubit was cut off, and the next round starts at that instant. This is time-slotted operation with an
ideal slot controller (:class:`RoundSync`, told only "swapped", "failed", "discarded" by repeaters), the
assumption under which the mean time to an end-to-end pair is ``E[max of n geometrics]`` attempts (and
``(3 - 2p)/(a p (2 - p))`` for two segments, E. Shchukin, F. Schmidt, P. van Loock, PRA 100, 032322, 2019).
A repeater left holding qubits of a failed round discards them. End nodes wait for the messages and keep
spare memories, so they never hold a round back.

End nodes
---------
After resolution, optional end-to-end purification: the left end pairs two pairs of the same level
(recurrence, or "symmetric", purification: W. Duer, H.-J. Briegel, Rep. Prog. Phys. 70, 1381, 2007),
runs its half of the round, and sends :class:`PurifyRequest` with its bit; the right end runs its half and
returns :class:`PurifyBit`; equal bits keep the pair at the next level, unequal discard it. A pair that has
passed ``purification_rounds`` levels is handed to the application (:class:`DeliveredPair`), which
measures or releases it: this is the node API for delivering entanglement to applications. BBM92 key
(:mod:`agent.drivers.bbm92`) is one such application.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from agent.drivers.clock import Clock, TimerHandle, VirtualClock, later_scheduler
from agent.drivers.quantum_medium import (
    Basis,
    BsmResult,
    HardwarePort,
    Herald,
    NodePort,
    PurificationProtocol,
)
from qsdn.errors import ConfigError, DriverError
from qsdn.physics.entanglement import FIBRE_LIGHT_SPEED_M_S

__all__ = [
    "ChainLayout",
    "ClassicalChannel",
    "DeliveredPair",
    "Discarded",
    "EndNode",
    "EndNodeStats",
    "Generation",
    "PurifyBit",
    "PurifyRequest",
    "RepeaterNode",
    "RepeaterStats",
    "RoundSync",
    "SlotController",
    "SwapOrder",
    "SwapOutcome",
    "SwapRecords",
    "VirtualChannel",
    "swap_targets",
]

logger = logging.getLogger(__name__)

Label = tuple[int, int]


class SwapOrder(StrEnum):
    ASAP = "asap"
    SEQUENTIAL = "sequential"
    NESTED = "nested"


class Generation(StrEnum):
    ROUNDS = "rounds"
    CONTINUOUS = "continuous"


# -- messages ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SwapOutcome:
    """A repeater's Bell measurement joined pair ``left`` with pair ``right`` (or failed to)."""

    repeater: str
    left: Label
    right: Label
    ok: bool
    bits: int


# A frozen dataclass's __init__ looks object.__setattr__ up anew per field; the repeaters' hot path sets
# the slots through their descriptors instead (the same object, in half the time).
_SWAP_OUTCOME_FIELDS = tuple(
    getattr(SwapOutcome, name).__set__ for name in ("repeater", "left", "right", "ok", "bits")
)


def _new_swap_outcome(repeater: str, left: Label, right: Label, ok: bool, bits: int) -> SwapOutcome:
    """``SwapOutcome(repeater, left, right, ok, bits)``."""
    outcome: SwapOutcome = object.__new__(SwapOutcome)
    set_repeater, set_left, set_right, set_ok, set_bits = _SWAP_OUTCOME_FIELDS
    set_repeater(outcome, repeater)
    set_left(outcome, left)
    set_right(outcome, right)
    set_ok(outcome, ok)
    set_bits(outcome, bits)
    return outcome


@dataclass(frozen=True, slots=True)
class Discarded:
    """A node reset the memory holding its qubit of pair ``label``."""

    node: str
    label: Label


@dataclass(frozen=True, slots=True)
class PurifyRequest:
    """Left end to right end: purify ``keep`` with ``sacrifice`` (level ``level``); my outcome bit."""

    keep: Label
    sacrifice: Label
    level: int
    bit: int


@dataclass(frozen=True, slots=True)
class PurifyBit:
    """Right end to left end: my outcome bit of the round on ``keep``."""

    keep: Label
    bit: int


# -- classical channel --------------------------------------------------------------------------------


class ClassicalChannel(Protocol):
    """Authenticated classical messages between named nodes."""

    def send(self, src: str, dst: str, message: object) -> None: ...


class VirtualChannel:
    """Delivers each message by the clock after ``delay_s(src, dst)``; FIFO per pair of nodes.

    ``delay_s`` is a fixed propagation delay: it is asked once per pair of nodes.
    """

    def __init__(self, clock: Clock, delay_s: Callable[[str, str], float]) -> None:
        self._clock = clock
        self._later = later_scheduler(clock)
        self._delay = delay_s
        self._delays: dict[tuple[str, str], float] = {}
        self._groups: dict[tuple[str, tuple[str, ...]], list[tuple[float, tuple[str, ...]]]] = {}
        # multicast's groups with their handlers: (delay, handlers, count) per distinct delay
        self._batches: dict[
            tuple[str, tuple[str, ...]], list[tuple[float, tuple[Callable[[str, object], None], ...], int]]
        ] = {}
        self._handlers: dict[str, Callable[[str, object], None]] = {}
        self.sent = 0

    def attach(self, node: str, handler: Callable[[str, object], None]) -> None:
        self._handlers[node] = handler
        self._batches.clear()  # they hold the handlers

    def _route(self, src: str, dst: str) -> tuple[Callable[[str, object], None], float]:
        handler = self._handlers.get(dst)
        if handler is None:
            raise DriverError(f"{src}: no classical route to {dst}")
        delay = self._delays.get((src, dst))
        if delay is None:
            delay = self._delays[(src, dst)] = self._delay(src, dst)
        return handler, delay

    def send(self, src: str, dst: str, message: object) -> None:
        handler, delay = self._route(src, dst)
        self.sent += 1
        self._later(delay, functools.partial(handler, src, message))

    def multicast(self, src: str, dsts: tuple[str, ...], message: object) -> None:
        """``send`` to each of ``dsts`` in turn, with one clock event per distinct delay.

        The same as separate sends: those of equal delay would be due at the same time with
        consecutive sequence numbers, so no other event could run between them.
        """
        batches = self._batches.get((src, dsts))
        if batches is None:
            batches = self._batches[(src, dsts)] = self._batch(src, dsts)
        later = self._later
        for delay, handlers, count in batches:
            self.sent += count
            if count == 1:
                later(delay, functools.partial(handlers[0], src, message))
            else:
                later(delay, functools.partial(_deliver_all, handlers, src, message))

    def _batch(
        self, src: str, dsts: tuple[str, ...]
    ) -> list[tuple[float, tuple[Callable[[str, object], None], ...], int]]:
        groups = self._groups.get((src, dsts))
        if groups is None:
            by_delay: dict[float, list[str]] = {}
            for dst in dsts:
                by_delay.setdefault(self._route(src, dst)[1], []).append(dst)
            groups = self._groups[(src, dsts)] = [(d, tuple(names)) for d, names in by_delay.items()]
        handlers = self._handlers
        batches = []
        for delay, names in groups:
            try:
                batch = tuple(handlers[dst] for dst in names)
            except KeyError as exc:
                raise DriverError(f"{src}: no classical route to {exc.args[0]}") from None
            batches.append((delay, batch, len(batch)))
        return batches


def _deliver_all(handlers: tuple[Callable[[str, object], None], ...], src: str, message: object) -> None:
    for handler in handlers:
        handler(src, message)


@dataclass(frozen=True, slots=True)
class ChainLayout:
    """Node names left to right and hop lengths; classical delay is the summed length over ``c``."""

    nodes: tuple[str, ...]
    lengths_km: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.nodes) < 2 or len(self.lengths_km) != len(self.nodes) - 1:
            raise ConfigError("a chain needs at least two nodes and one length per hop")
        if len(set(self.nodes)) != len(self.nodes):
            raise ConfigError("chain node names must be unique")

    @property
    def hops(self) -> int:
        return len(self.lengths_km)

    def index(self, node: str) -> int:
        return self.nodes.index(node)

    def delay_s(self, src: str, dst: str) -> float:
        i, j = sorted((self.index(src), self.index(dst)))
        return sum(self.lengths_km[i:j]) * 1000.0 / FIBRE_LIGHT_SPEED_M_S


def swap_targets(order: SwapOrder, index: int, hops: int) -> tuple[int, int]:
    """For repeater ``index``: the hop its left pair must reach leftwards and its right pair rightwards."""
    if not 0 < index < hops:
        raise ConfigError(f"node {index} is not a repeater of a {hops}-hop chain")
    if order is SwapOrder.ASAP:
        return index - 1, index
    if order is SwapOrder.SEQUENTIAL:
        return 0, index
    lo, hi = 0, hops
    while True:
        mid = (lo + hi) // 2
        if mid == index:
            return lo, hi - 1
        lo, hi = (lo, mid) if index < mid else (mid, hi)


class SwapRecords:
    """Announced swaps and discards, indexed to follow a pair's labels along the chain."""

    def __init__(self) -> None:
        self._by_left: dict[Label, SwapOutcome] = {}
        self._by_right: dict[Label, SwapOutcome] = {}
        self._discarded: set[Label] = set()

    def add(self, message: object) -> None:
        if isinstance(message, SwapOutcome):
            self._by_left[message.left] = message
            self._by_right[message.right] = message
        elif isinstance(message, Discarded):
            self._discarded.add(message.label)

    def walk(self, label: Label, rightwards: bool, target_hop: int) -> tuple[str, Label, int]:
        """Follow ``label`` to ``target_hop``: ``("ok"|"pending"|"failed", far label, XOR of BSM bits)``."""
        if label[0] == target_hop:
            return ("failed" if label in self._discarded else "ok"), label, 0
        frame = 0
        index = self._by_left if rightwards else self._by_right
        while True:
            out = index.get(label)
            if out is None:
                return ("failed" if label in self._discarded else "pending"), label, frame
            if not out.ok:
                return "failed", label, frame
            frame ^= out.bits
            label = out.right if rightwards else out.left
            if label[0] == target_hop:
                break
        if label in self._discarded:
            return "failed", label, frame
        return "ok", label, frame

    def take(self, label: Label, rightwards: bool, target_hop: int) -> tuple[str, Label, int]:
        """:meth:`walk`, then :meth:`forget` unless the walk is pending (one pass for both)."""
        discarded = self._discarded
        if label[0] == target_hop:
            if label in discarded:
                discarded.discard(label)
                return "failed", label, 0
            return "ok", label, 0
        index = self._by_left if rightwards else self._by_right
        out = index.get(label)
        if out is None:
            if label not in discarded:
                return "pending", label, 0
            discarded.discard(label)  # forget() of a walk that stopped at once
            return "failed", label, 0
        if not out.ok:  # failed at the first swap: the walk and forget() of it, spelt out
            self._by_left.pop(out.left, None)
            self._by_right.pop(out.right, None)
            at = out.right if rightwards else out.left
            if at[0] == target_hop:
                discarded.discard(at)
                return "failed", label, 0
            # forget() goes on past the failed swap
            while at[0] != target_hop:
                out = index.get(at)
                if out is None:
                    break
                self._by_left.pop(out.left, None)
                self._by_right.pop(out.right, None)
                at = out.right if rightwards else out.left
            discarded.discard(at)
            return "failed", label, 0
        at = out.right if rightwards else out.left
        if at[0] == target_hop:  # one swap away (forget() of it, spelt out)
            self._by_left.pop(out.left, None)
            self._by_right.pop(out.right, None)
            if at in discarded:
                discarded.discard(at)
                return "failed", at, out.bits
            return "ok", at, out.bits
        frame = 0
        at = label
        while True:
            out = index.get(at)
            if out is None:
                if at not in discarded:
                    return "pending", at, frame
                status = "failed"
                break
            if not out.ok:
                status = "failed"
                break
            frame ^= out.bits
            at = out.right if rightwards else out.left
            if at[0] == target_hop:
                status = "failed" if at in discarded else "ok"
                break
        far = at
        # forget(label, rightwards, target_hop), spelt out
        by_left, by_right = self._by_left, self._by_right
        at = label
        while at[0] != target_hop:
            out = index.get(at)
            if out is None:
                break
            by_left.pop(out.left, None)
            by_right.pop(out.right, None)
            at = out.right if rightwards else out.left
        discarded.discard(at)
        return status, far, frame

    def forget(self, label: Label, rightwards: bool, target_hop: int) -> None:
        """Drop the records a resolved (or failed) walk used."""
        if label[0] == target_hop:
            self._discarded.discard(label)
            return
        index = self._by_left if rightwards else self._by_right
        while label[0] != target_hop:
            out = index.get(label)
            if out is None:
                break
            self._by_left.pop(out.left, None)
            self._by_right.pop(out.right, None)
            label = out.right if rightwards else out.left
        self._discarded.discard(label)


_RECORDED = (SwapOutcome, Discarded)  # what SwapRecords keeps


class SlotController(Protocol):
    """What the nodes of ``generation="rounds"`` need: report round outcomes, be told of new rounds."""

    def attach(self, new_round: Callable[[int], None]) -> None: ...

    def report(self, node: str, round_no: int, ok: bool) -> None: ...


class RoundSync:
    """The ideal slot controller of ``generation="rounds"``: knows only swapped / failed / discarded."""

    def __init__(self, clock: Clock, repeaters: int) -> None:
        self._clock = clock
        self._later = later_scheduler(clock)
        # The next round is a zero-delay event: VirtualClock.schedule_soon keeps it out of the heap.
        self._soon: Callable[[Callable[[], None]], None] = (
            clock.schedule_soon if isinstance(clock, VirtualClock) else functools.partial(self._later, 0.0)
        )
        self._expected = repeaters
        self._ok: set[str] = set()
        self._ending = False
        self.round = 0
        self._nodes: list[Callable[[int], None]] = []

    def attach(self, new_round: Callable[[int], None]) -> None:
        self._nodes.append(new_round)

    def report(self, node: str, round_no: int, ok: bool) -> None:
        if round_no != self.round or self._ending:
            return
        if ok:
            self._ok.add(node)
        if not ok or len(self._ok) >= self._expected:
            self._ending = True
            self._soon(self._next)

    def _next(self) -> None:
        self.round += 1
        self._ok.clear()
        self._ending = False
        for cb in self._nodes:
            cb(self.round)


# -- nodes --------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Held:
    label: Label
    slot: int
    cutoff: TimerHandle | None = None


def _no_offer(slot: int) -> None:
    raise AssertionError("a side without a hop offers nothing")


# A node's sides, as list indices: per-side state is kept in two-element lists.
_LEFT = 0
_RIGHT = 1


class _NodeBase:
    """Slots per adjacent hop, generation requests, herald bookkeeping."""

    def __init__(
        self,
        name: str,
        layout: ChainLayout,
        port: HardwarePort,
        channel: ClassicalChannel,
        clock: Clock,
        memories: int,
        generation: Generation,
        rounds: SlotController | None,
    ) -> None:
        if memories < 1:
            raise ConfigError(f"node {name}: needs at least one memory per hop")
        self.name = name
        self._layout = layout
        self._index = layout.index(name)
        self._port = port
        self._channel = channel
        self._multicast = channel.multicast if isinstance(channel, VirtualChannel) else None
        # In-process hardware answers a Bell measurement at once: call it, not bell_measure_then.
        self._bsm_now = port.bell_measure if isinstance(port, NodePort) else None
        self._clock = clock
        self._generation = generation
        self._by_rounds = generation is Generation.ROUNDS
        self._rounds = rounds
        self._round = 0
        # Per side (_LEFT, _RIGHT): the adjacent hop (-1: none), free slots, made a pair this round.
        self._hop_of = [self._index - 1, self._index if self._index < layout.hops else -1]
        self._sides = tuple(side for side in (_LEFT, _RIGHT) if self._hop_of[side] >= 0)
        self._free: list[list[int]] = [[], []]
        slot = 0
        for side in self._sides:
            self._free[side] = list(range(slot + memories - 1, slot - 1, -1))
            slot += memories
        self._slots_total = slot
        # Per side: request_pair bound to its hop (in-process hardware binds it to the heralding station's
        # side: no lookup of the station per offer; a remote port has no such path).
        self._offer_to: list[Callable[[int], None]] = [_no_offer, _no_offer]
        for side in self._sides:
            hop = self._hop_of[side]
            self._offer_to[side] = (
                port.offerer(hop) if isinstance(port, NodePort) else functools.partial(port.request_pair, hop)
            )
        # Per side with a hop: (side, its free slots, its offer), for _new_round.
        self._side_slots = tuple((side, self._free[side], self._offer_to[side]) for side in self._sides)
        self._made_this_round = [False, False]
        # Per side: whether a slot is offered to the hop (what port.generating(hop) would answer: the
        # offer ends with the hop's herald, and only this engine offers this node's slots).
        self._offering = [False, False]
        self.elementary_pairs = 0
        if rounds is not None:
            rounds.attach(self._new_round)

    def start(self) -> None:
        for side in self._sides:
            self._request(side)

    def slots_in_use(self) -> int:
        """Memory slots that hold a qubit, await a measurement result or are offered to a hop."""
        return self._slots_total - len(self._free[_LEFT]) - len(self._free[_RIGHT])

    def _side_of(self, hop: int) -> int:
        return _LEFT if self._hop_of[_LEFT] == hop else _RIGHT

    def _request(self, side: int) -> None:
        free = self._free[side]
        if not free or (self._by_rounds and self._made_this_round[side]) or self._offering[side]:
            return
        self._offer_to[side](free.pop())
        self._offering[side] = True

    def _release(self, side: int, slot: int) -> None:
        free = self._free[side]
        free.append(slot)
        # _request(side), spelt out
        if not (self._by_rounds and self._made_this_round[side]) and not self._offering[side]:
            self._offer_to[side](free.pop())
            self._offering[side] = True

    def _new_round(self, round_no: int) -> None:
        self._round = round_no
        made = self._made_this_round
        made[_LEFT] = made[_RIGHT] = False
        offering = self._offering
        for side, free, offer in self._side_slots:  # _request(side), which nothing made this round can stop
            if free and not offering[side]:
                offer(free.pop())
                offering[side] = True

    def on_herald(self, herald: Herald) -> None:
        """A herald of one of this node's hops (its detector lines)."""
        self.herald(
            herald.hop, herald.label, herald.slot, herald.partner_node, herald.partner_slot, herald.frame
        )

    def herald(
        self, hop: int, label: Label, slot: int, partner_node: str, partner_slot: int, frame: int
    ) -> None:
        """:meth:`on_herald` with the herald's fields as arguments (``QuantumMedium.attach_fields``)."""
        if self._hop_of[_LEFT] == hop:
            self._herald_left(label, slot, partner_slot, frame)
        else:
            self._herald_right(label, slot, partner_slot, frame)

    def herald_handlers(self) -> tuple[tuple[int, Callable[[Label, int, int, int], None]], ...]:
        """``(hop, handler)`` per adjacent hop, for ``QuantumMedium.attach_hop``: the heralding station
        then calls the side's handler directly, ``(label, slot, partner_slot, frame)``."""
        handlers = (self._herald_left, self._herald_right)
        return tuple((self._hop_of[side], handlers[side]) for side in self._sides)

    def _herald_left(self, label: Label, slot: int, partner_slot: int, frame: int) -> None:
        """A herald of the hop on the left: this node is its right end, which corrects the frame."""
        self.elementary_pairs += 1
        made = self._made_this_round
        made[_LEFT] = True
        self._offering[_LEFT] = False
        self._port.apply_pauli(slot, frame)
        self._held(_LEFT, label, slot)
        if not (self._by_rounds and made[_LEFT]):
            self._request(_LEFT)

    def _herald_right(self, label: Label, slot: int, partner_slot: int, frame: int) -> None:
        """A herald of the hop on the right (this node is its left end: no correction)."""
        self.elementary_pairs += 1
        made = self._made_this_round
        made[_RIGHT] = True
        self._offering[_RIGHT] = False
        self._held(_RIGHT, label, slot)
        if not (self._by_rounds and made[_RIGHT]):
            self._request(_RIGHT)

    def _held(self, side: int, label: Label, slot: int) -> None:
        raise NotImplementedError

    def on_message(self, src: str, message: object) -> None:
        raise NotImplementedError

    def _announce(self, message: object, to: tuple[str, ...]) -> None:
        if self._multicast is not None:
            self._multicast(self.name, to, message)
            return
        for dst in to:
            self._channel.send(self.name, dst, message)


@dataclass(slots=True)
class RepeaterStats:
    swaps: int = 0
    swap_failures: int = 0
    cutoff_discards: int = 0
    round_discards: int = 0
    failed_discards: int = 0


class RepeaterNode(_NodeBase):
    """Swaps pairs on its two hops by its swap order; knows heralds and BSM outcomes, nothing else."""

    def __init__(
        self,
        name: str,
        layout: ChainLayout,
        port: HardwarePort,
        channel: ClassicalChannel,
        clock: Clock,
        *,
        memories: int = 1,
        swap_order: SwapOrder = SwapOrder.ASAP,
        cutoff_s: float | None = None,
        generation: Generation = Generation.ROUNDS,
        rounds: SlotController | None = None,
    ) -> None:
        super().__init__(name, layout, port, channel, clock, memories, generation, rounds)
        if not 0 < self._index < layout.hops:
            raise ConfigError(f"node {name} is an end of the chain, not a repeater")
        if cutoff_s is not None and not cutoff_s > 0:
            raise ConfigError(f"node {name}: cut-off must be positive")
        self._cutoff_s = cutoff_s
        self._targets = swap_targets(swap_order, self._index, layout.hops)
        self._waiting: list[deque[_Held]] = [deque(), deque()]  # by side
        self._records = SwapRecords()
        self.stats = RepeaterStats()
        hops = layout.hops
        ends = [layout.nodes[0], layout.nodes[-1]]
        # Repeaters whose swap order waits on this one: those whose targets span past their own hops.
        watchers = []
        for j in range(1, hops):
            if j == self._index:
                continue
            lo, hi = swap_targets(swap_order, j, hops)
            if (lo < j - 1 and lo < self._index < j) or (hi > j and j < self._index <= hi):
                watchers.append(layout.nodes[j])
        self._audience = (*ends, *watchers)

    def on_message(self, src: str, message: object) -> None:
        if isinstance(message, _RECORDED):
            self._records.add(message)
            self._try_swap()
        else:
            logger.warning(
                "repeater %s: unexpected %s from %s ignored", self.name, type(message).__name__, src
            )

    def _herald_left(self, label: Label, slot: int, partner_slot: int, frame: int) -> None:
        """:meth:`_NodeBase._herald_left` with :meth:`_held` spelt out (two of them per round)."""
        self.elementary_pairs += 1
        made = self._made_this_round
        made[_LEFT] = True
        self._offering[_LEFT] = False
        self._port.apply_pauli(slot, frame)
        held = _Held(label, slot)
        if self._cutoff_s is not None:
            held.cutoff = self._clock.call_later(self._cutoff_s, functools.partial(self._cut, _LEFT, held))
        queue = self._waiting[_LEFT]
        queue.append(held)
        # _try_swap with nothing on the other side and this qubit alone and ready changes nothing
        if (
            self._waiting[_RIGHT]
            or len(queue) > 1
            or label[0] != self._targets[_LEFT]
            or label in self._records._discarded
        ):
            self._try_swap()
        if not (self._by_rounds and made[_LEFT]):
            self._request(_LEFT)

    def _herald_right(self, label: Label, slot: int, partner_slot: int, frame: int) -> None:
        """:meth:`_NodeBase._herald_right` with :meth:`_held` spelt out."""
        self.elementary_pairs += 1
        made = self._made_this_round
        made[_RIGHT] = True
        self._offering[_RIGHT] = False
        held = _Held(label, slot)
        if self._cutoff_s is not None:
            held.cutoff = self._clock.call_later(self._cutoff_s, functools.partial(self._cut, _RIGHT, held))
        queue = self._waiting[_RIGHT]
        queue.append(held)
        # _try_swap with nothing on the other side and this qubit alone and ready changes nothing
        if (
            self._waiting[_LEFT]
            or len(queue) > 1
            or label[0] != self._targets[_RIGHT]
            or label in self._records._discarded
        ):
            self._try_swap()
        if not (self._by_rounds and made[_RIGHT]):
            self._request(_RIGHT)

    def _held(self, side: int, label: Label, slot: int) -> None:
        held = _Held(label, slot)
        if self._cutoff_s is not None:
            held.cutoff = self._clock.call_later(self._cutoff_s, functools.partial(self._cut, side, held))
        self._waiting[side].append(held)
        self._try_swap()

    def _cut(self, side: int, held: _Held) -> None:
        if held in self._waiting[side]:
            self._waiting[side].remove(held)
            self.stats.cutoff_discards += 1
            logger.debug("repeater %s: pair %s stored past the cut-off, discarded", self.name, held.label)
            self._drop(side, held)
            self._report(False)

    def _drop(self, side: int, held: _Held) -> None:
        if held.cutoff is not None:
            held.cutoff.cancel()
        self._port.discard(held.slot)
        self._announce(Discarded(self.name, held.label), self._audience)
        self._release(side, held.slot)

    def _ready(self, side: int) -> _Held | None:
        """The oldest qubit on ``side`` whose pair reaches the target; drops those that failed."""
        queue = self._waiting[side]
        target = self._targets[side]
        records = self._records
        first = queue[0]
        if first.label[0] == target and first.label not in records._discarded:
            return first  # walk() would say "ok" at once: the pair is on the target hop already
        rightwards = side == _RIGHT
        for held in list(queue):
            status, _, _ = records.walk(held.label, rightwards, target)
            if status == "ok":
                return held
            if status == "failed":
                queue.remove(held)
                self.stats.failed_discards += 1
                self._drop(side, held)
        return None

    def _try_swap(self) -> None:
        left_queue, right_queue = self._waiting
        lo, hi = self._targets
        discarded = self._records._discarded
        while True:
            # _ready of an empty side is None: skip the call; nor is it needed when the oldest qubit's
            # pair is on the target hop already (its first check, spelt out).
            left = right = None
            if left_queue:
                left = left_queue[0]
                label = left.label
                if label[0] != lo or label in discarded:
                    left = self._ready(_LEFT)
            if right_queue:
                right = right_queue[0]
                label = right.label
                if label[0] != hi or label in discarded:
                    right = self._ready(_RIGHT)
            if left is None or right is None:
                return
            left_queue.remove(left)
            right_queue.remove(right)
            if left.cutoff is not None:
                left.cutoff.cancel()
            if right.cutoff is not None:
                right.cutoff.cancel()
            if self._bsm_now is not None:  # what bell_measure_then does on a NodePort, without the partial
                self._swapped(left, right, self._round, self._bsm_now(left.slot, right.slot))
            else:
                self._port.bell_measure_then(
                    left.slot, right.slot, functools.partial(self._swapped, left, right, self._round)
                )

    def _swapped(self, left: _Held, right: _Held, round_no: int, result: BsmResult) -> None:
        records = self._records
        lo, hi = self._targets
        left_label, right_label, ok = left.label, right.label, result.ok
        # forget() of a label on its target hop only drops it from the discards
        if left_label[0] == lo:
            records._discarded.discard(left_label)
        else:
            records.forget(left_label, False, lo)
        if right_label[0] == hi:
            records._discarded.discard(right_label)
        else:
            records.forget(right_label, True, hi)
        stats = self.stats
        stats.swaps += 1
        if not ok:
            stats.swap_failures += 1
        if logger.isEnabledFor(logging.DEBUG):  # logger.debug's own check, one call fewer per swap
            logger.debug("repeater %s: swapped %s with %s ok=%s", self.name, left_label, right_label, ok)
        outcome = _new_swap_outcome(self.name, left_label, right_label, ok, result.bits)
        if self._multicast is not None:  # _announce, spelt out
            self._multicast(self.name, self._audience, outcome)
        else:
            self._announce(outcome, self._audience)
        # _release of both sides, spelt out
        free, made, offering = self._free, self._made_this_round, self._offering
        by_rounds = self._by_rounds
        free[_LEFT].append(left.slot)
        if not (by_rounds and made[_LEFT]) and not offering[_LEFT]:
            self._offer_to[_LEFT](free[_LEFT].pop())
            offering[_LEFT] = True
        free[_RIGHT].append(right.slot)
        if not (by_rounds and made[_RIGHT]) and not offering[_RIGHT]:
            self._offer_to[_RIGHT](free[_RIGHT].pop())
            offering[_RIGHT] = True
        if self._rounds is not None:  # _report, spelt out
            self._rounds.report(self.name, round_no, ok)

    def _report(self, ok: bool, round_no: int | None = None) -> None:
        if self._rounds is not None:
            self._rounds.report(self.name, self._round if round_no is None else round_no, ok)

    def _new_round(self, round_no: int) -> None:
        left, right = self._waiting
        if left or right:
            self._discard_waiting()
        # _NodeBase._new_round, spelt out (one call fewer per repeater and round)
        self._round = round_no
        made = self._made_this_round
        made[_LEFT] = made[_RIGHT] = False
        offering = self._offering
        for side, free, offer in self._side_slots:
            if free and not offering[side]:
                offer(free.pop())
                offering[side] = True

    def _discard_waiting(self) -> None:
        """Discard (and announce) every qubit a round left waiting."""
        for side, queue in enumerate(self._waiting):
            while queue:
                held = queue.popleft()
                self.stats.round_discards += 1
                self._port.discard(held.slot)
                if held.cutoff is not None:
                    held.cutoff.cancel()
                self._announce(Discarded(self.name, held.label), self._audience)
                self._free[side].append(held.slot)


class DeliveredPair:
    """An end-to-end pair handed to an application at one end: measure it or release it, once."""

    __slots__ = ("_node", "delivered_s", "node", "pair_id", "partner", "slot")

    def __init__(self, node: EndNode, pair_id: Label, partner: str, slot: int, delivered_s: float) -> None:
        self._node: EndNode | None = node
        self.node = node.name
        self.pair_id = pair_id
        self.partner = partner
        self.slot = slot
        self.delivered_s = delivered_s

    def measure(self, basis: Basis) -> int:
        """Measure in ``basis`` and return the outcome (hardware that answers at once only)."""
        got: list[int] = []
        self.measure_then(basis, got.append)
        if not got:
            raise DriverError(f"pair {self.pair_id}: this hardware answers later, use measure_then")
        return got[0]

    def measure_then(self, basis: Basis, done: Callable[[int], None]) -> None:
        """Measure in ``basis``; the outcome goes to ``done`` when the hardware gives it."""
        node = self._take()
        node._consume_then(self.slot, basis, done)

    def release(self) -> None:
        # _take and _consume_then(slot, None, ...), spelt out: this runs for every delivered pair
        node = self._node
        if node is None:
            raise DriverError(f"pair {self.pair_id} already measured or released")
        self._node = None
        slot = self.slot
        node._port.discard(slot)
        node._release(node._side, slot)

    def _take(self) -> EndNode:
        if self._node is None:
            raise DriverError(f"pair {self.pair_id} already measured or released")
        node, self._node = self._node, None
        return node


@dataclass(slots=True)
class EndNodeStats:
    resolved: int = 0
    failed: int = 0
    purify_ok: int = 0
    purify_failed: int = 0
    delivered: int = 0


class EndNode(_NodeBase):
    """An end of the chain: resolves end-to-end pairs, corrects frames, purifies, delivers to the app."""

    def __init__(
        self,
        name: str,
        layout: ChainLayout,
        port: HardwarePort,
        channel: ClassicalChannel,
        clock: Clock,
        *,
        memories: int = 16,
        purification: PurificationProtocol | None = None,
        purification_rounds: int = 0,
        generation: Generation = Generation.ROUNDS,
        rounds: SlotController | None = None,
    ) -> None:
        super().__init__(name, layout, port, channel, clock, memories, generation, rounds)
        if 0 < self._index < layout.hops:
            raise ConfigError(f"node {name} is a repeater, not an end of the chain")
        if purification_rounds < 0 or (purification_rounds and purification is None):
            raise ConfigError(f"node {name}: purification rounds need a protocol")
        self._left_end = self._index == 0
        self._herald_ends_round = self._left_end and layout.hops == 1
        self._side = _RIGHT if self._left_end else _LEFT
        self._peer = layout.nodes[-1] if self._left_end else layout.nodes[0]
        self._target = layout.hops - 1 if self._left_end else 0
        self._protocol = purification
        self._levels = purification_rounds
        self._records = SwapRecords()
        self._unresolved: list[tuple[Label, int]] = []  # (label, slot) of elementary pairs
        self._pairs: dict[Label, tuple[int, int]] = {}  # pair id -> (slot, level): resolved, not delivered
        self._queues: list[list[Label]] = [[] for _ in range(purification_rounds)]  # left end: by level
        self._requests: dict[Label, PurifyRequest] = {}  # right end: waiting for both pairs
        self._my_bits: dict[Label, int] = {}  # left end: my bit of a round in flight
        self._app: Callable[[DeliveredPair], None] | None = None
        self._app_messages: Callable[[str, object], None] | None = None
        self.stats = EndNodeStats()

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def is_left_end(self) -> bool:
        return self._left_end

    def set_application(
        self,
        on_pair: Callable[[DeliveredPair], None],
        on_message: Callable[[str, object], None] | None = None,
    ) -> None:
        """Install the application: ``on_pair`` gets delivered pairs, ``on_message`` the peer's messages."""
        self._app = on_pair
        self._app_messages = on_message

    def send_to_peer(self, message: object) -> None:
        """An application message to the other end, over the authenticated classical channel."""
        self._channel.send(self.name, self._peer, message)

    # -- elementary pairs and resolution --------------------------------------------------------------

    def _herald_left(self, label: Label, slot: int, partner_slot: int, frame: int) -> None:
        """:meth:`_NodeBase._herald_left` with :meth:`_held` spelt out (the right end's herald)."""
        self.elementary_pairs += 1
        made = self._made_this_round
        made[_LEFT] = True
        self._offering[_LEFT] = False
        self._port.apply_pauli(slot, frame)
        self._unresolved.append((label, slot))
        if self._herald_ends_round and self._rounds is not None:
            self._rounds.report(self.name, self._round, True)
        records = self._records  # pending at once: see _held
        if (
            label[0] != self._target and label not in records._by_right and label not in records._discarded
        ) or records.walk(label, False, self._target)[0] == "pending":
            if self._requests:
                self._serve_requests()
        else:
            self._resolve()
        if not (self._by_rounds and made[_LEFT]):
            self._request(_LEFT)

    def _herald_right(self, label: Label, slot: int, partner_slot: int, frame: int) -> None:
        """:meth:`_NodeBase._herald_right` with :meth:`_held` spelt out (the left end's herald)."""
        self.elementary_pairs += 1
        made = self._made_this_round
        made[_RIGHT] = True
        self._offering[_RIGHT] = False
        self._unresolved.append((label, slot))
        if self._herald_ends_round and self._rounds is not None:
            self._rounds.report(self.name, self._round, True)
        records = self._records  # pending at once: see _held
        if (
            label[0] != self._target and label not in records._by_left and label not in records._discarded
        ) or records.walk(label, True, self._target)[0] == "pending":
            if self._requests:
                self._serve_requests()
        else:
            self._resolve()
        if not (self._by_rounds and made[_RIGHT]):
            self._request(_RIGHT)

    def _held(self, side: int, label: Label, slot: int) -> None:
        self._unresolved.append((label, slot))
        if self._herald_ends_round and self._rounds is not None:
            self._rounds.report(self.name, self._round, True)  # no repeater: the herald ends the round
        # The records are as the last _resolve left them, every older pair pending under them: only
        # the new pair can resolve now. If it cannot, _resolve would change nothing. Pending at once
        # (walk's first step, spelt out): not on the target hop, no swap record, not discarded.
        records = self._records
        if (
            label[0] != self._target
            and label not in (records._by_left if self._left_end else records._by_right)
            and label not in records._discarded
        ) or records.walk(label, self._left_end, self._target)[0] == "pending":
            if self._requests:
                self._serve_requests()
        else:
            self._resolve()

    def on_message(self, src: str, message: object) -> None:
        if type(message) is SwapOutcome:  # SwapRecords.add, spelt out
            records = self._records
            records._by_left[message.left] = message
            records._by_right[message.right] = message
            self._resolve()
        elif isinstance(message, _RECORDED):
            self._records.add(message)
            self._resolve()
        elif isinstance(message, PurifyRequest) and not self._left_end:
            self._requests[message.keep] = message
            self._serve_requests()
        elif isinstance(message, PurifyBit) and self._left_end:
            self._purify_done(message.keep, self._my_bits.pop(message.keep) == message.bit)
        elif self._app_messages is not None and src == self._peer:
            self._app_messages(src, message)
        else:
            logger.warning(
                "end node %s: unexpected %s from %s ignored", self.name, type(message).__name__, src
            )

    def _resolve(self) -> None:
        rightwards = self._left_end
        target = self._target
        records = self._records
        unresolved = self._unresolved
        stats = self.stats
        for entry in list(unresolved):
            label, slot = entry
            status, far, frame = records.take(label, rightwards, target)
            if status == "pending":
                continue
            unresolved.remove(entry)
            if status == "failed":
                stats.failed += 1
                self._port.discard(slot)
                self._release(self._side, slot)
                continue
            stats.resolved += 1
            if not rightwards:
                self._port.apply_pauli(slot, frame)
            pair_id = label if rightwards else far
            if self._levels:
                self._pairs[pair_id] = (slot, 0)
                self._advance(pair_id)
            else:  # _advance of a level-0 pair with no purification: _deliver, spelt out
                stats.delivered += 1
                pair = DeliveredPair(self, pair_id, self._peer, slot, self._clock.now())
                if self._app is None:
                    pair.release()
                else:
                    self._app(pair)
        if self._requests:
            self._serve_requests()

    # -- purification ---------------------------------------------------------------------------------

    def _advance(self, pair_id: Label) -> None:
        slot, level = self._pairs[pair_id]
        if level >= self._levels:
            del self._pairs[pair_id]
            self._deliver(pair_id, slot)
            return
        if not self._left_end:
            return  # the right end follows the left end's requests
        queue = self._queues[level]
        queue.append(pair_id)
        if len(queue) >= 2:
            keep, sacrifice = queue.pop(0), queue.pop(0)
            assert self._protocol is not None
            keep_slot, sacrifice_slot = self._pairs[keep][0], self._pairs.pop(sacrifice)[0]
            self._port.purify_local_then(
                keep_slot,
                sacrifice_slot,
                self._protocol,
                functools.partial(self._purified_left, keep, sacrifice, level, sacrifice_slot),
            )

    def _purified_left(
        self, keep: Label, sacrifice: Label, level: int, sacrifice_slot: int, bit: int
    ) -> None:
        self._release(self._side, sacrifice_slot)
        self._my_bits[keep] = bit
        self.send_to_peer(PurifyRequest(keep, sacrifice, level, bit))

    def _serve_requests(self) -> None:
        if self._left_end:
            return
        for keep, req in list(self._requests.items()):
            if keep not in self._pairs or req.sacrifice not in self._pairs:
                continue
            del self._requests[keep]
            assert self._protocol is not None
            keep_slot, sacrifice_slot = self._pairs[keep][0], self._pairs.pop(req.sacrifice)[0]
            self._port.purify_local_then(
                keep_slot,
                sacrifice_slot,
                self._protocol,
                functools.partial(self._purified_right, keep, req, sacrifice_slot),
            )

    def _purified_right(self, keep: Label, req: PurifyRequest, sacrifice_slot: int, bit: int) -> None:
        self._release(self._side, sacrifice_slot)
        self.send_to_peer(PurifyBit(keep, bit))
        self._purify_done(keep, bit == req.bit)

    def _purify_done(self, keep: Label, ok: bool) -> None:
        slot, level = self._pairs[keep]
        if ok:
            self.stats.purify_ok += 1
            self._pairs[keep] = (slot, level + 1)
            self._advance(keep)
        else:
            self.stats.purify_failed += 1
            del self._pairs[keep]
            self._port.discard(slot)
            self._release(self._side, slot)

    # -- delivery -------------------------------------------------------------------------------------

    def _deliver(self, pair_id: Label, slot: int) -> None:
        self.stats.delivered += 1
        pair = DeliveredPair(self, pair_id, self._peer, slot, self._clock.now())
        if self._app is None:
            pair.release()
        else:
            self._app(pair)

    def _consume_then(self, slot: int, basis: Basis | None, done: Callable[[int], None]) -> None:
        if basis is None:
            self._port.discard(slot)
            self._release(self._side, slot)
            done(0)
            return

        def measured(outcome: int) -> None:
            self._release(self._side, slot)
            done(outcome)

        self._port.measure_then(slot, basis, measured)
