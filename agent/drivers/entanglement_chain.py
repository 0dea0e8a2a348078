"""A repeater chain on a virtual clock, for tests and benchmarks: :class:`ChainScenario` -> :func:`run`.

Stable API (``benchmarks/entanglement.py`` imports it): :class:`HopParams`, :class:`ChainScenario`,
:func:`run` (or :class:`EntanglementChain` to inspect the nodes), :class:`ChainResult`, :func:`predict`,
:class:`Prediction`.

The protocol the closed forms describe (and the emulator's default)
-------------------------------------------------------------------
``generation="rounds"``, ``swap_order="asap"``, identical hops, no cut-off: every hop attempts from a
common start once per ``t = L/c``, success probability ``p`` (Barrett-Kok ``eta_A eta_B / 2``,
multiplexed ``1 - (1-p)^M``); a hop that succeeds holds its pair (fidelity ``F0`` as heralded, Werner);
each repeater Bell-measures as soon as it holds both sides (success ``a``); the round ends when all
swaps succeeded (a pair) or one failed, and the next starts at once. The right end applies the Pauli
correction when the last BSM outcome reaches it (``L/c`` per hop); both ends then hand the pair on. Then:

* mean time per end-to-end pair: ``t E[max of n geometrics]`` (:func:`expected_max_geometric`), for two
  segments ``t (3 - 2p)/(a p (2 - p))`` (:func:`two_segment_attempts`, Shchukin et al. 2019);
* with ``T = inf``: the delivered state is the swap of ``n`` heralded states (:func:`swap_chain`), so
  ``w = w0^n``;
* two segments with coherence time ``T``: the early pair's two qubits wait ``(M - N_i) t`` until the swap
  (:func:`wait_all_decay`), and each end's qubit waits ``t`` more for the BSM outcome, so
  ``w = w0^2 wait_all_decay(p, 2, t, T) exp(-2 t / T)``; a failed swap does not change the distribution
  of a successful round's waiting, so this holds for any ``a``;
* ``R`` rounds of recurrence purification (``T = inf``): :func:`recurrence_purification` gives the state
  and the ``E_R`` end-to-end pairs consumed per output (rate divided by ``E_R``);
* BBM92 on Werner pairs: ``Q = 2 (1 - F)/3`` in both bases and ``r = 1 - 2 h(Q)`` per remaining sifted bit.

Fidelity is measured as the medium's ground truth (never shown to the nodes): the frame-corrected state
of each pair when the second end receives it (raw pairs) or when the first end measures it (BBM92).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.drivers.bbm92 import Bbm92Config, Bbm92Endpoint, KeySink
from agent.drivers.clock import VirtualClock
from agent.drivers.emulated_entanglement import (
    ChainLayout,
    DeliveredPair,
    EndNode,
    Generation,
    RepeaterNode,
    RoundSync,
    SwapOrder,
    VirtualChannel,
)
from agent.drivers.quantum_medium import HopSpec, MemorySpec, PurificationProtocol, QuantumMedium
from qsdn.errors import ConfigError
from qsdn.physics.entanglement import (
    BellState,
    attempt_time_s,
    expected_max_geometric,
    heralding_probability,
    multiplexed_probability,
    recurrence_purification,
    shor_preskill_fraction,
    single_click,
    swap_chain,
    two_segment_attempts,
    wait_all_decay,
    werner,
)
from qsdn.physics.loss import transmittance

__all__ = [
    "ChainResult",
    "ChainScenario",
    "EntanglementChain",
    "HopParams",
    "MemoryKeySink",
    "Prediction",
    "predict",
    "run",
]

#: Fibre attenuation used when a hop side's transmittance is not given (C band, SYSTEM.md section 4).
DEFAULT_ALPHA_DB_KM = 0.2


@dataclass(frozen=True, slots=True)
class HopParams:
    """One hop with its heralding station in the middle; ``eta_*`` default to the fibre's half-span loss."""

    length_km: float
    eta_left: float | None = None
    eta_right: float | None = None
    extra_loss_db: float = 0.0

    def etas(self) -> tuple[float, float]:
        half = transmittance(DEFAULT_ALPHA_DB_KM * self.length_km / 2 + self.extra_loss_db / 2)
        return (
            half if self.eta_left is None else self.eta_left,
            half if self.eta_right is None else self.eta_right,
        )


@dataclass(frozen=True, slots=True)
class ChainScenario:
    """A repeater chain and what it is used for. Defaults are the closed forms' protocol."""

    hops: tuple[HopParams, ...]
    f0: float = 1.0
    modes: int = 1
    single_click_alpha: float | None = None
    memories: int = 1
    end_memories: int = 16
    coherence_s: float = math.inf
    t2_s: float = math.inf
    swap_success: float = 1.0
    swap_order: str = "asap"
    generation: str = "rounds"
    cutoff_s: float | None = None
    purification: str | None = None
    purification_rounds: int = 0
    application: str = "raw"
    bbm92: Bbm92Config = field(default_factory=Bbm92Config)
    link_id: str = "e2e"
    seed: int = 1

    def __post_init__(self) -> None:
        if not self.hops:
            raise ConfigError("a chain scenario needs at least one hop")
        if self.application not in ("raw", "bbm92"):
            raise ConfigError(f"application must be 'raw' or 'bbm92', got {self.application!r}")
        SwapOrder(self.swap_order)
        Generation(self.generation)
        if self.purification is not None:
            PurificationProtocol(self.purification)

    def hop_probability(self, hop: HopParams) -> tuple[float, BellState]:
        """Success probability per attempt and heralded state of one hop."""
        eta_a, eta_b = hop.etas()
        if self.single_click_alpha is not None:
            p, f = single_click(self.single_click_alpha, math.sqrt(eta_a * eta_b))
            state = werner(f)
        else:
            p, state = heralding_probability(eta_a, eta_b), werner(self.f0)
        return multiplexed_probability(p, self.modes), state


@dataclass(frozen=True, slots=True)
class ChainResult:
    virtual_s: float
    pairs_delivered: int
    rate_per_s: float
    rate_se: float
    mean_fidelity: float
    fidelity_se: float
    qber: float | None
    sifted_bits: int
    key_bits: int
    key_blocks: int
    key_fractions: tuple[float, ...]
    elementary_pairs: int
    swap_failures: int
    cutoff_discards: int
    purification_failures: int
    lost_pairs: int
    events: int


@dataclass(frozen=True, slots=True)
class Prediction:
    """Closed-form values; ``None`` where the closed forms do not cover the scenario."""

    rate_per_s: float | None
    fidelity: float | None
    qber: float | None
    secret_fraction: float | None
    p: float
    attempt_s: float


class MemoryKeySink:
    """An in-memory key sink (``add_block`` like :class:`agent.keystore.KeyStore`)."""

    def __init__(self) -> None:
        self.blocks: dict[str, dict[str, bytes]] = {}

    def add_block(self, qkdl_id: str, block_id: str, key: bytes) -> bool:
        link = self.blocks.setdefault(qkdl_id, {})
        if block_id in link:
            return False
        link[block_id] = bytes(key)
        return True


class EntanglementChain:
    """The nodes, medium, channel and clock of one scenario; :meth:`run` advances virtual time."""

    def __init__(
        self,
        scenario: ChainScenario,
        *,
        sinks: tuple[KeySink, KeySink] | None = None,
        on_pair: Callable[[DeliveredPair], None] | None = None,
    ) -> None:
        self.scenario = sc = scenario
        n = len(sc.hops)
        names = tuple(f"n{i}" for i in range(n + 1))
        self.layout = ChainLayout(names, tuple(h.length_km for h in sc.hops))
        self.clock = VirtualClock()
        mem = MemorySpec(sc.coherence_s, sc.t2_s, sc.swap_success)
        specs = []
        for i, hop in enumerate(sc.hops):
            p, state = sc.hop_probability(hop)
            specs.append(HopSpec(i, names[i], names[i + 1], p, attempt_time_s(hop.length_km), state))
        self.medium = QuantumMedium(self.clock, sc.seed, dict.fromkeys(names, mem), specs)
        self.channel = VirtualChannel(self.clock, self.layout.delay_s)
        generation = Generation(sc.generation)
        self.rounds = RoundSync(self.clock, n - 1) if generation is Generation.ROUNDS else None
        protocol = PurificationProtocol(sc.purification) if sc.purification else None
        self.ends: tuple[EndNode, EndNode] = tuple(  # type: ignore[assignment]
            EndNode(
                name,
                self.layout,
                self.medium.port(name),
                self.channel,
                self.clock,
                memories=sc.end_memories,
                purification=protocol,
                purification_rounds=sc.purification_rounds,
                generation=generation,
                rounds=self.rounds,
            )
            for name in (names[0], names[-1])
        )
        self.repeaters = [
            RepeaterNode(
                name,
                self.layout,
                self.medium.port(name),
                self.channel,
                self.clock,
                memories=sc.memories,
                swap_order=SwapOrder(sc.swap_order),
                cutoff_s=sc.cutoff_s,
                generation=generation,
                rounds=self.rounds,
            )
            for name in names[1:-1]
        ]
        for node in (*self.ends, *self.repeaters):
            for hop_id, handler in node.herald_handlers():
                self.medium.attach_hop(node.name, hop_id, handler)
            self.channel.attach(node.name, node.on_message)
        self._fidelities: list[float] = []
        self._times: list[float] = []
        self._first: dict[tuple[int, int], DeliveredPair] = {}
        self._user_on_pair = on_pair
        self.endpoints: tuple[Bbm92Endpoint, Bbm92Endpoint] | None = None
        if sc.application == "bbm92":
            self.sinks = sinks or (MemoryKeySink(), MemoryKeySink())
            eps = []
            for i, end in enumerate(self.ends):
                ep = Bbm92Endpoint(
                    end.name,
                    sc.link_id,
                    leader=end.is_left_end,
                    send=end.send_to_peer,
                    sink=self.sinks[i],
                    rng=random.Random(f"bbm92-{sc.seed}-{end.name}"),
                    config=sc.bbm92,
                )
                end.set_application(self._bbm92_pair(ep), ep.on_message)
                eps.append(ep)
            self.endpoints = (eps[0], eps[1])
        else:
            for end in self.ends:
                end.set_application(self._raw_pair)
        for node in (*self.ends, *self.repeaters):
            node.start()

    # -- applications (the harness sees both ends: it is the experimenter, not a node) -----------------

    def _record(self, pair: DeliveredPair) -> None:
        fidelity = self.medium.pair_fidelity(pair.node, pair.slot)
        if fidelity is not None:
            self._fidelities.append(fidelity)
            self._times.append(pair.delivered_s)  # delivered now: this runs as the pair is delivered

    def _raw_pair(self, pair: DeliveredPair) -> None:
        first = self._first.pop(pair.pair_id, None)
        if first is None:
            self._first[pair.pair_id] = pair
            return
        self._record(pair)
        if self._user_on_pair is not None:
            self._user_on_pair(first)
            self._user_on_pair(pair)
        else:
            first.release()
            pair.release()

    def _bbm92_pair(self, ep: Bbm92Endpoint) -> Callable[[DeliveredPair], None]:
        def on_pair(pair: DeliveredPair) -> None:
            if self._first.pop(pair.pair_id, None) is None:
                self._first[pair.pair_id] = pair
                self._record(pair)
            ep.on_pair(pair)

        return on_pair

    # -- running --------------------------------------------------------------------------------------

    def run(self, virtual_s: float) -> ChainResult:
        """Advance virtual time by ``virtual_s`` and return the statistics so far."""
        self.clock.run_until(self.clock.now() + virtual_s)
        return self.result()

    def result(self) -> ChainResult:
        now = self.clock.now()
        n = len(self._fidelities)
        mean_f = sum(self._fidelities) / n if n else math.nan
        se_f = _se(self._fidelities)
        intervals = [b - a for a, b in zip([0.0, *self._times], self._times, strict=False)]
        rate = n / now if now > 0 else 0.0
        rate_se = 0.0
        if n > 1:
            mean_i = sum(intervals) / n
            rate_se = _se(intervals) / mean_i**2 if mean_i > 0 else 0.0
        qber = None
        sifted = key = blocks = 0
        fractions: tuple[float, ...] = ()
        if self.endpoints is not None:
            a = self.endpoints[0].stats
            err = sum(v[0] for v in a.sample_errors.values())
            tot = sum(v[1] for v in a.sample_errors.values())
            qber = err / tot if tot else None
            sifted, key, blocks = a.sifted, a.key_bits, a.blocks_ok
            fractions = tuple(k / m for m, k, _, _ in a.blocks if m)
        return ChainResult(
            virtual_s=now,
            pairs_delivered=n,
            rate_per_s=rate,
            rate_se=rate_se,
            mean_fidelity=mean_f,
            fidelity_se=se_f,
            qber=qber,
            sifted_bits=sifted,
            key_bits=key,
            key_blocks=blocks,
            key_fractions=fractions,
            elementary_pairs=sum(node.elementary_pairs for node in self.ends),
            swap_failures=sum(r.stats.swap_failures for r in self.repeaters),
            cutoff_discards=sum(r.stats.cutoff_discards for r in self.repeaters),
            purification_failures=self.ends[0].stats.purify_failed,
            lost_pairs=self.ends[0].stats.failed,
            events=self.clock.events_run,
        )


def _se(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def run(scenario: ChainScenario, virtual_s: float) -> ChainResult:
    """Build the chain of ``scenario`` and run it for ``virtual_s`` virtual seconds."""
    return EntanglementChain(scenario).run(virtual_s)


def predict(scenario: ChainScenario) -> Prediction:
    """Closed forms (qsdn.physics.entanglement) for the protocol described in this module's docstring."""
    sc = scenario
    n = len(sc.hops)
    p, state0 = sc.hop_probability(sc.hops[0])
    t = attempt_time_s(sc.hops[0].length_km)
    identical = all(h == sc.hops[0] for h in sc.hops)
    standard = (
        identical
        and sc.generation == "rounds"
        and sc.swap_order == "asap"
        and sc.cutoff_s is None
        and math.isinf(sc.t2_s)
        and sc.memories >= 1
    )
    rate: float | None = None
    state: BellState | None = None
    if standard:
        attempts = None
        if sc.swap_success >= 1.0:
            attempts = expected_max_geometric(p, n)
        elif n == 2:
            attempts = two_segment_attempts(p, sc.swap_success)
        if attempts is not None and t > 0:
            rate = 1.0 / (attempts * t)
        if math.isinf(sc.coherence_s):
            state = swap_chain([state0] * n)
        elif n == 2:
            w = (
                state0.werner_parameter**2
                * wait_all_decay(p, 2, t, sc.coherence_s)
                * math.exp(-2 * t / sc.coherence_s)
            )
            state = werner((3 * w + 1) / 4)
        elif n == 1:
            state = state0
    if state is not None and sc.purification_rounds:
        if math.isinf(sc.coherence_s) and sc.purification is not None:
            state, consumed, _ = recurrence_purification(state, sc.purification_rounds, sc.purification)
            rate = rate / consumed if rate is not None else None
        else:
            state, rate = None, None
    qber = fraction = None
    if state is not None:
        e_z, e_x = state.qber_z, state.qber_x
        qber = (e_z + e_x) / 2
        f = sc.bbm92.ec_efficiency
        pz = sc.bbm92.p_z
        wz = pz * pz / (pz * pz + (1 - pz) ** 2)
        fraction = wz * shor_preskill_fraction(e_x, e_z, f) + (1 - wz) * shor_preskill_fraction(e_z, e_x, f)
    return Prediction(
        rate_per_s=rate,
        fidelity=state.fidelity if state is not None else None,
        qber=qber,
        secret_fraction=fraction,
        p=p,
        attempt_s=t,
    )
