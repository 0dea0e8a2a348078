"""The emulated entanglement hardware: clock, medium, node engines, BBM92, chain runner vs closed forms."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import random
import types
from pathlib import Path

import pytest

from agent.drivers import quantum_medium
from agent.drivers.bbm92 import Bbm92Config, Bbm92Endpoint, binary_reconcile, toeplitz_extract
from agent.drivers.clock import AsyncioClock, VirtualClock, later_scheduler
from agent.drivers.emulated_entanglement import (
    DeliveredPair,
    Discarded,
    EndNode,
    RoundSync,
    SwapOrder,
    SwapOutcome,
    VirtualChannel,
    swap_targets,
)
from agent.drivers.entanglement_chain import ChainScenario, EntanglementChain, HopParams, predict, run
from agent.drivers.quantum_medium import Basis, Herald, HopSpec, MemorySpec, QuantumMedium
from agent.keystore import KeyStore
from qsdn.errors import DriverError
from qsdn.physics.entanglement import werner

# -- clock ---------------------------------------------------------------------------------------------


def test_virtual_clock_orders_simultaneous_events_by_scheduling_order() -> None:
    clock = VirtualClock()
    seen: list[tuple[float, str]] = []
    clock.call_at(2.0, lambda: seen.append((clock.now(), "late")))
    for name in ("a", "b", "c"):
        clock.call_at(1.0, lambda name=name: seen.append((clock.now(), name)))
    cancelled = clock.call_later(1.0, lambda: seen.append((clock.now(), "cancelled")))
    cancelled.cancel()
    clock.call_later(0.5, lambda: clock.call_later(0.5, lambda: seen.append((clock.now(), "nested"))))
    clock.run_until(1.5)
    assert seen == [(1.0, "a"), (1.0, "b"), (1.0, "c"), (1.0, "nested")]
    assert clock.now() == 1.5
    clock.run()
    assert seen[-1] == (2.0, "late")
    assert cancelled.cancelled()


def test_virtual_clock_handles_are_heap_entries_that_cancel() -> None:
    clock = VirtualClock()
    seen: list[str] = []
    kept = clock.call_at(1.0, lambda: seen.append("kept"))
    dropped = clock.call_later(1.0, lambda: seen.append("dropped"))
    assert not kept.cancelled() and not dropped.cancelled()
    assert clock.pending() == 2
    dropped.cancel()
    dropped.cancel()  # idempotent
    assert dropped.cancelled() and not kept.cancelled()
    assert clock.pending() == 1
    clock.run()
    assert seen == ["kept"]
    assert clock.events_run == 1  # a cancelled entry is skipped, not run
    kept.cancel()  # after it ran: no effect on what happened
    assert seen == ["kept"] and clock.pending() == 0


def test_schedule_later_keeps_the_scheduling_order_with_call_later() -> None:
    clock = VirtualClock(start_s=2.0)
    seen: list[tuple[float, str]] = []
    later = later_scheduler(clock)
    assert later == clock.schedule_later  # the handle-less form of a virtual clock
    clock.call_later(0.5, lambda: seen.append((clock.now(), "call_later")))
    later(0.5, lambda: seen.append((clock.now(), "schedule_later")))
    clock.schedule_later(0.0, lambda: seen.append((clock.now(), "now")))
    clock.call_at(2.5, lambda: seen.append((clock.now(), "call_at")))
    clock.run_until(3.0)
    assert seen == [(2.0, "now"), (2.5, "call_later"), (2.5, "schedule_later"), (2.5, "call_at")]
    assert clock.events_run == 4 and clock.now() == 3.0


def test_schedule_soon_runs_like_a_zero_delay_event() -> None:
    clock = VirtualClock()
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        clock.schedule_soon(lambda: seen.append("soon after first"))  # next: nothing older is due now

    def second() -> None:
        seen.append("second")
        clock.schedule_later(0.0, lambda: seen.append("older zero-delay"))
        clock.schedule_soon(lambda: (seen.append("soon after second"), clock.schedule_soon(chained)))

    def chained() -> None:
        seen.append("chained")

    def third() -> None:
        seen.append("third")
        clock.schedule_soon(lambda: seen.append("soon 1"))
        clock.schedule_soon(lambda: seen.append("soon 2"))  # the first joins the heap, order kept
        clock.schedule_later(0.0, lambda: seen.append("newer zero-delay"))

    clock.call_at(1.0, first)
    clock.call_at(2.0, second)
    clock.call_at(2.0, lambda: seen.append("due with second"))  # older than second's soon event
    clock.call_at(3.0, third)
    clock.schedule_soon(lambda: seen.append("outside a run"))  # not running: an ordinary event at 0
    clock.run_until(4.0)
    assert seen == [
        "outside a run",
        "first",
        "soon after first",
        "second",
        "due with second",
        "older zero-delay",
        "soon after second",
        "chained",
        "third",
        "soon 1",
        "soon 2",
        "newer zero-delay",
    ]
    assert clock.events_run == 12 and clock.pending() == 0


def test_a_bound_offerer_is_request_pair() -> None:
    clock = VirtualClock()
    specs = {"a": MemorySpec(), "b": MemorySpec()}
    medium = QuantumMedium(clock, 3, specs, [HopSpec(0, "a", "b", 0.5, 1e-4, werner(1.0))])
    heralds: list[Herald] = []
    medium.attach("a", heralds.append)
    offer_a, offer_b = medium.port("a").offerer(0), medium.port("b").offerer(0)
    offer_a(1)
    with pytest.raises(DriverError):
        offer_a(2)  # one offer per end
    assert medium.generating(0, "a") and not medium.generating(0, "b")
    offer_b(4)
    clock.run()
    assert [(h.slot, h.partner_slot) for h in heralds] == [(1, 4)]
    with pytest.raises(DriverError):
        offer_b(4)  # not free
    with pytest.raises(DriverError):
        medium.offerer("c", 0)  # not an end of the hop
    # A removed station: the offerer goes through the hop's number (to a station added again, or none).
    medium.remove_hop(0)
    with pytest.raises(DriverError):
        offer_a(2)
    medium.add_hop(HopSpec(0, "a", "b", 1.0, 1e-4, werner(1.0)))
    offer_a(2)
    offer_b(5)
    clock.run()
    assert [(h.slot, h.partner_slot) for h in heralds][-1] == (2, 5)
    # An offerer bound before its station exists looks the hop up per offer.
    medium.add_node("c", MemorySpec())
    offer_c = medium.offerer("c", 1)
    medium.add_hop(HopSpec(1, "b", "c", 1.0, 1e-4, werner(1.0)))
    offer_c(0)
    assert medium.generating(1, "c")


def test_later_scheduler_wraps_call_later_of_any_other_clock() -> None:
    loop = asyncio.new_event_loop()
    try:
        clock = AsyncioClock(loop)
        seen: list[str] = []
        later = later_scheduler(clock)
        assert later(0.0, lambda: seen.append("ran")) is None  # no handle
        loop.run_until_complete(asyncio.sleep(0.01))
        assert seen == ["ran"]
    finally:
        loop.close()


# -- medium --------------------------------------------------------------------------------------------


def _medium(
    f: float = 1.0, coherence_s: float = math.inf, seed: int = 3
) -> tuple[VirtualClock, QuantumMedium, list[Herald]]:
    clock = VirtualClock()
    medium = QuantumMedium(
        clock,
        seed,
        {"a": MemorySpec(coherence_s), "b": MemorySpec(coherence_s)},
        [HopSpec(0, "a", "b", 0.5, 1e-4, werner(f))],
    )
    heralds: list[Herald] = []
    medium.attach("a", heralds.append)
    medium.attach("b", heralds.append)
    return clock, medium, heralds


def _pair(clock: VirtualClock, medium: QuantumMedium, heralds: list[Herald], correct: bool = True) -> int:
    heralds.clear()
    medium.request_pair(0, "a", 0)
    medium.request_pair(0, "b", 0)
    clock.run()
    assert len(heralds) == 2 and heralds[0].label == heralds[1].label
    if correct:
        medium.apply_pauli("b", 0, heralds[1].frame)
    return heralds[1].frame


def test_attach_hop_takes_the_hop_before_the_node_handler() -> None:
    clock = VirtualClock()
    medium = QuantumMedium(
        clock,
        5,
        {"a": MemorySpec(), "b": MemorySpec(), "c": MemorySpec()},
        [HopSpec(0, "a", "b", 1.0, 1e-4, werner(1.0)), HopSpec(1, "b", "c", 1.0, 1e-4, werner(1.0))],
    )
    by_node: list[Herald] = []
    by_hop: list[tuple[tuple[int, int], int, int, int]] = []
    medium.attach("b", by_node.append)
    medium.attach_hop(
        "b", 1, lambda label, slot, partner_slot, frame: by_hop.append((label, slot, partner_slot, frame))
    )
    for hop, (left, right) in enumerate((("a", "b"), ("b", "c"))):
        medium.request_pair(hop, left, 7)
        medium.request_pair(hop, right, 3 + hop)
    clock.run()
    # hop 0 still goes to b's node handler, hop 1 to its hop handler (fields only, no Herald)
    assert [(h.hop, h.slot, h.partner_node, h.partner_slot) for h in by_node] == [(0, 3, "a", 7)]
    assert len(by_hop) == 1
    label, slot, partner_slot, frame = by_hop[0]
    assert label[0] == 1 and (slot, partner_slot) == (7, 4) and frame in (2, 3)
    assert medium.node_slots("b") == [3, 7]
    # detach drops both; heralds of a detached node are dropped, the pair is still made
    medium.detach("b")
    medium.discard("b", 7)
    medium.discard("c", 4)
    medium.request_pair(1, "b", 7)
    medium.request_pair(1, "c", 4)
    clock.run()
    assert len(by_hop) == 1 and len(by_node) == 1
    assert medium.pair_state("b", 7) is not None
    assert medium.pair_fidelity("b", 7) == pytest.approx(1.0)
    assert medium.pair_fidelity("b", 9) is None


def test_medium_correlates_equal_bases_and_not_different_ones() -> None:
    clock, medium, heralds = _medium()
    agree = {(Basis.Z, Basis.Z): [], (Basis.X, Basis.X): [], (Basis.Z, Basis.X): []}
    for i in range(3000):
        _pair(clock, medium, heralds)
        ba, bb = list(agree)[i % 3]
        x = medium.measure("a", 0, ba)
        y = medium.measure("b", 0, bb)
        agree[(ba, bb)].append(x == y)
    assert all(agree[(Basis.Z, Basis.Z)]) and all(agree[(Basis.X, Basis.X)])
    cross = sum(agree[(Basis.Z, Basis.X)]) / len(agree[(Basis.Z, Basis.X)])
    assert cross == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / 1000))
    assert medium.live_qubits() == 0


def test_medium_herald_frame_needs_the_pauli_correction() -> None:
    clock, medium, heralds = _medium()
    for _ in range(200):
        frame = _pair(clock, medium, heralds, correct=False)
        assert frame in (2, 3)  # |Psi+> or |Psi->: Z outcomes anti-correlated until corrected
        assert medium.measure("a", 0, Basis.Z) != medium.measure("b", 0, Basis.Z)
    for _ in range(200):
        frame = _pair(clock, medium, heralds, correct=False)
        # Correct after the partner was measured: the collapsed qubit follows the gate.
        x = medium.measure("a", 0, Basis.X)
        medium.apply_pauli("b", 0, frame)
        assert medium.measure("b", 0, Basis.X) == x


def test_medium_error_rates_follow_the_werner_state_and_memory_decay() -> None:
    f, n = 0.9, 8000
    clock, medium, heralds = _medium(f)
    errors = 0
    for _ in range(n):
        _pair(clock, medium, heralds)
        errors += medium.measure("a", 0, Basis.Z) != medium.measure("b", 0, Basis.Z)
    q = 2 * (1 - f) / 3
    assert errors / n == pytest.approx(q, abs=4 * math.sqrt(q * (1 - q) / n))
    # Depolarising memory: a pair kept for t has F = 1/4 + (F0 - 1/4) exp(-2t/T).
    clock, medium, heralds = _medium(1.0, coherence_s=1.0)
    _pair(clock, medium, heralds)
    clock.run_until(clock.now() + 0.3)
    state = medium.pair_state("a", 0)
    assert state is not None and state.fidelity == pytest.approx(0.25 + 0.75 * math.exp(-0.6))


# -- chains against the closed forms ---------------------------------------------------------------


def _agree(measured: float, se: float, predicted: float | None, k: float = 4.0) -> None:
    assert predicted is not None
    assert measured == pytest.approx(predicted, abs=k * se + 1e-9)


def test_three_node_chain_rate_and_fidelity_follow_the_closed_forms() -> None:
    sc = ChainScenario(hops=(HopParams(20.0),) * 2, f0=0.97, seed=5)
    result, pred = run(sc, 3.0), predict(sc)
    assert result.pairs_delivered > 3000
    _agree(result.rate_per_s, result.rate_se, pred.rate_per_s)
    _agree(result.mean_fidelity, result.fidelity_se, pred.fidelity)
    assert pred.fidelity == pytest.approx(0.97**2 + 0.03**2 / 3)


def test_three_node_chain_with_memory_decay_follows_wait_all_decay() -> None:
    sc = ChainScenario(hops=(HopParams(20.0),) * 2, f0=0.97, coherence_s=0.01, seed=6)
    result, pred = run(sc, 3.0), predict(sc)
    _agree(result.mean_fidelity, result.fidelity_se, pred.fidelity)
    assert result.fidelity_se > 0
    assert pred.fidelity is not None and pred.fidelity < 0.9412 - 0.05  # decay matters here


def test_two_segments_with_swap_failures_follow_shchukin() -> None:
    sc = ChainScenario(hops=(HopParams(20.0),) * 2, f0=0.97, swap_success=0.5, seed=7)
    result, pred = run(sc, 5.0), predict(sc)
    _agree(result.rate_per_s, result.rate_se, pred.rate_per_s)
    assert result.swap_failures > 0 and result.lost_pairs == result.swap_failures


def test_five_node_chain_follows_max_of_geometrics_and_swap_chain() -> None:
    sc = ChainScenario(hops=(HopParams(10.0),) * 4, f0=0.98, seed=8)
    result, pred = run(sc, 1.2), predict(sc)
    assert result.pairs_delivered > 3000
    _agree(result.rate_per_s, result.rate_se, pred.rate_per_s)
    _agree(result.mean_fidelity, result.fidelity_se, pred.fidelity)


@pytest.mark.parametrize(("protocol", "rounds"), [("dejmps", 2), ("bbpssw", 1)])
def test_purification_raises_fidelity_and_costs_pairs_as_the_recursion_says(
    protocol: str, rounds: int
) -> None:
    base = ChainScenario(hops=(HopParams(20.0),) * 2, f0=0.9, seed=9)
    sc = ChainScenario(hops=base.hops, f0=0.9, purification=protocol, purification_rounds=rounds, seed=9)
    result, pred, raw = run(sc, 6.0), predict(sc), predict(base)
    assert pred.fidelity is not None and raw.fidelity is not None and pred.fidelity > raw.fidelity
    _agree(result.mean_fidelity, result.fidelity_se, pred.fidelity)
    _agree(result.rate_per_s, result.rate_se, pred.rate_per_s)
    assert result.purification_failures > 0


def test_swap_orders_deliver_the_same_state_without_decay() -> None:
    for order in ("sequential", "nested"):
        sc = ChainScenario(
            hops=(HopParams(10.0),) * 4, f0=0.98, swap_order=order, generation="continuous", seed=2
        )
        result = run(sc, 0.2)
        assert result.pairs_delivered > 100
        _agree(
            result.mean_fidelity, result.fidelity_se, predict(ChainScenario(hops=sc.hops, f0=0.98)).fidelity
        )
    assert swap_targets(SwapOrder.NESTED, 2, 4) == (0, 3)
    assert swap_targets(SwapOrder.NESTED, 1, 4) == (0, 1)
    assert swap_targets(SwapOrder.SEQUENTIAL, 3, 4) == (0, 3)


def test_cutoff_discards_old_pairs_and_keeps_fidelity_up() -> None:
    common = {
        "hops": (HopParams(20.0),) * 2,
        "f0": 0.97,
        "coherence_s": 0.002,
        "generation": "continuous",
        "seed": 4,
    }
    without = run(ChainScenario(**common), 1.0)
    with_cutoff = run(ChainScenario(**common, cutoff_s=0.0003), 1.0)
    assert with_cutoff.cutoff_discards > 0 and without.cutoff_discards == 0
    assert with_cutoff.mean_fidelity > without.mean_fidelity + 4 * (
        with_cutoff.fidelity_se + without.fidelity_se
    )


def test_same_seed_same_run_different_seed_different_run() -> None:
    sc = ChainScenario(hops=(HopParams(20.0),) * 2, f0=0.95, coherence_s=0.02, swap_success=0.8, seed=11)
    assert run(sc, 0.5) == run(sc, 0.5)
    other = run(ChainScenario(**{**{f: getattr(sc, f) for f in sc.__dataclass_fields__}, "seed": 12}), 0.5)
    assert other != run(sc, 0.5)


# -- BBM92 ---------------------------------------------------------------------------------------------


def test_bbm92_key_fraction_follows_one_minus_two_h_q_for_werner_pairs() -> None:
    sc = ChainScenario(
        hops=(HopParams(2.0),), f0=0.95, application="bbm92", bbm92=Bbm92Config(block_size=2000), seed=13
    )
    chain = EntanglementChain(sc)
    result, pred = chain.run(1.0), predict(sc)
    assert pred.qber is not None and pred.secret_fraction is not None
    assert pred.qber == pytest.approx(2 * 0.05 / 3)
    assert result.key_blocks >= 8
    n_sample = result.key_blocks * 400
    assert result.qber == pytest.approx(pred.qber, abs=4 * math.sqrt(pred.qber / n_sample))
    fr = result.key_fractions
    mean = sum(fr) / len(fr)
    se = math.sqrt(sum((x - mean) ** 2 for x in fr) / (len(fr) - 1) / len(fr))
    assert mean == pytest.approx(pred.secret_fraction, abs=4 * se + 0.01)
    assert chain.endpoints is not None
    assert chain.endpoints[0].stats.key_bits == chain.endpoints[1].stats.key_bits == result.key_bits


def test_bbm92_keys_are_identical_at_both_ends_and_land_in_the_key_stores(tmp_path: Path) -> None:
    stores = (KeyStore(tmp_path / "a.db"), KeyStore(tmp_path / "b.db"))
    try:
        sc = ChainScenario(
            hops=(HopParams(20.0),) * 2,
            f0=0.98,
            application="bbm92",
            bbm92=Bbm92Config(block_size=256),
            link_id="L1",
            seed=14,
        )
        result = EntanglementChain(sc, sinks=stores).run(1.5)
        assert result.key_blocks >= 2 and result.key_bits > 0
        blocks_a, blocks_b = stores[0].blocks("L1"), stores[1].blocks("L1")
        assert [b.block_id for b in blocks_a] == [b.block_id for b in blocks_b] and blocks_a
        for block in blocks_a:
            assert stores[0].get_block("L1", block.block_id) == stores[1].get_block("L1", block.block_id)
        assert stores[0].stored_bits("L1") == result.key_bits
    finally:
        for s in stores:
            s.close()


def test_binary_reconciliation_and_toeplitz_extractor() -> None:
    rng = random.Random(1)
    a = [rng.getrandbits(1) for _ in range(2000)]
    b = [x ^ (rng.random() < 0.03) for x in a]
    gen = binary_reconcile(b, 0.03, b"seed")
    query = next(gen)
    while True:
        try:
            query = gen.send(tuple(sum(a[i] for i in s) % 2 for s in query))
        except StopIteration as done:
            corrected, leak = done.value
            break
    assert corrected == a and leak > 0
    key = toeplitz_extract(a, 800, b"s")
    assert len(key) == 100 and key == toeplitz_extract(a, 800, b"s") != toeplitz_extract(a, 800, b"t")


# -- a repeater never holds end-to-end key material -------------------------------------------------


def _reachable(root: object, boundary: tuple[type, ...]) -> list[object]:
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (*boundary, types.ModuleType, type)):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return list(seen.values())


def test_a_repeater_never_holds_end_to_end_key_material(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # Nested swapping, so that the middle repeater also receives other repeaters' BSM outcomes.
    sc = ChainScenario(
        hops=(HopParams(10.0),) * 4,
        f0=0.99,
        swap_order="nested",
        generation="continuous",
        application="bbm92",
        bbm92=Bbm92Config(block_size=256),
        seed=15,
    )
    chain = EntanglementChain(sc)
    repeater = chain.repeaters[1]
    delivered: list[object] = []
    handler = repeater.on_message
    chain.channel.attach(repeater.name, lambda src, msg: (delivered.append(msg), handler(src, msg)))
    chain.run(0.3)
    assert chain.endpoints is not None
    a = chain.endpoints[0]
    assert a.stats.key_bits > 0
    # Messages reaching the repeater: heralds come from its own hardware; the rest are BSM outcomes.
    assert delivered and all(isinstance(m, SwapOutcome | Discarded) for m in delivered)
    # Everything the repeater's engine can reach, stopping at the shared world (clock, medium, channel,
    # slot controller; a heralding station, which an in-process port binds its offers to), which is not
    # the node's software.
    boundary = (VirtualClock, QuantumMedium, quantum_medium._Station, VirtualChannel, RoundSync)
    objects = _reachable(repeater, boundary)
    assert len(objects) > 20  # the walk did reach the engine's state (records, slots, timers)
    forbidden = (EndNode, Bbm92Endpoint, DeliveredPair)
    assert not [o for o in objects if isinstance(o, forbidden)]
    key_bytes = [k for sink in chain.sinks for link in sink.blocks.values() for k in link.values()]  # type: ignore[attr-defined]
    assert key_bytes
    blobs = [o for o in objects if isinstance(o, bytes | bytearray) and len(o) >= 8]
    assert not [blob for blob in blobs for k in key_bytes if blob in k or k in blob]
    assert not [o for o in objects if isinstance(o, Basis)]  # no measurement basis, hence no sifted bit
    # Logs: no key bytes anywhere, and no record about BBM92 names the repeater.
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not [k for k in key_bytes if k.hex() in text]
    assert not [r for r in caplog.records if r.name.endswith("bbm92") and repeater.name in r.getMessage()]
