"""Functional tests of the emulated QKD driver: two drivers, real TCP channels on loopback.

Rates are checked against emulated time (an injected clock the test advances), never against the wall
clock: the assertion is that the bits produced per emulated second are the model's rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.drivers.base import (
    DriverEvent,
    DriverEventKind,
    FaultKind,
    InterfaceState,
    LinkRole,
    LinkSpec,
    LinkState,
    QkdDriver,
)
from agent.drivers.emulated_qkd import (
    REASON_DETECTOR_FAILURE,
    REASON_EAVESDROPPER,
    REASON_FIBRE_CUT,
    EmulatedInterfaceConfig,
    EmulatedQkdDriver,
)
from agent.keystore import KeyStore
from qsdn.errors import ConfigError, DriverError
from qsdn.physics.bb84 import DeviceParams, link_budget
from qsdn.physics.loss import Band, fibre_loss_db

TICK_S = 0.02
LINK = "link-ab"
LOSS_50KM_C = fibre_loss_db(50.0, Band.C)


class FakeClock:
    """Emulated time: only moves when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def run(self, seconds: float, steps: int = 10) -> None:
        """Advance by ``seconds`` in ``steps`` increments, letting the drivers tick in between."""
        for _ in range(steps):
            self.t += seconds / steps
            await asyncio.sleep(TICK_S * 1.5)


@dataclass
class Node:
    driver: EmulatedQkdDriver
    events: list[DriverEvent] = field(default_factory=list)

    def kinds(self, kind: DriverEventKind) -> list[DriverEvent]:
        return [e for e in self.events if e.kind is kind]

    def stored(self) -> int:
        return self.driver.keystore.stored_bits(LINK)


@dataclass
class Pair:
    a: Node  # transmitter
    b: Node  # receiver
    clock: FakeClock

    async def enable(self) -> None:
        await self.a.driver.enable_link(LINK)
        await self.b.driver.enable_link(LINK)
        await until(lambda: self.states() == (LinkState.ACTIVE, LinkState.ACTIVE))

    def states(self) -> tuple[LinkState, LinkState]:
        return self.a.driver.link_state(LINK), self.b.driver.link_state(LINK)

    async def settle(self) -> None:
        """Wait until both stores agree and stay unchanged for a few ticks (nothing left in flight)."""
        last: tuple[int, int] | None = None
        stable = 0
        async with asyncio.timeout(10.0):
            while stable < 3:
                now = self.a.stored(), self.b.stored()
                stable = stable + 1 if now == last and now[0] == now[1] else 0
                last = now
                await asyncio.sleep(TICK_S)


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll driver state (there is no event for every condition a test waits for)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def make_driver(
    tmp_path: Path, node_id: str, clock: FakeClock, *, peer_port: int | None = None, length_km: float = 50.0
) -> Node:
    iface = EmulatedInterfaceConfig(
        qkdi_id=1,
        listen_host="127.0.0.1",
        listen_port=0,
        peer_host="127.0.0.1" if peer_port else None,
        peer_port=peer_port,
        length_km=length_km,
        band="C",
    )
    driver = EmulatedQkdDriver(
        node_id,
        [iface],
        KeyStore(tmp_path / f"{node_id}.db"),
        DeviceParams(),
        tick_s=TICK_S,
        clock=clock,
        perf_interval_s=0.05,
        reconnect_min_s=0.02,
        reconnect_max_s=0.1,
    )
    node = Node(driver)
    driver.subscribe(node.events.append)
    return node


async def make_pair(tmp_path: Path, length_km: float = 50.0) -> Pair:
    clock = FakeClock()
    b = make_driver(tmp_path, "node-b", clock, length_km=length_km)
    await b.driver.start()
    a = make_driver(tmp_path, "node-a", clock, peer_port=b.driver.bound_port(1), length_km=length_km)
    await a.driver.start()
    await a.driver.create_link(LinkSpec(LINK, 1, "node-b", 1, LinkRole.TRANSMITTER, 1550, 10.0))
    await b.driver.create_link(LinkSpec(LINK, 1, "node-a", 1, LinkRole.RECEIVER, 1550, 10.0))
    return Pair(a, b, clock)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    p = await make_pair(tmp_path)
    yield p
    await p.a.driver.stop()
    await p.b.driver.stop()


def assert_identical_keys(p: Pair) -> None:
    ka, kb = p.a.driver.keystore, p.b.driver.keystore
    assert ka.blocks(LINK) == kb.blocks(LINK)
    for block_id, _bits in ka.blocks(LINK):
        assert ka.get_block(LINK, block_id) == kb.get_block(LINK, block_id)


# -- tests ------------------------------------------------------------------------------------------


async def test_driver_satisfies_protocol(pair: Pair) -> None:
    assert isinstance(pair.a.driver, QkdDriver)
    (info,) = pair.a.driver.interfaces()
    assert info.qkdi_id == 1
    assert info.technology == "DV-QKD"
    assert info.wavelength_range_nm == (1530, 1565)
    assert info.max_absorption_db == pytest.approx(30.4, abs=0.1)
    assert info.port == pair.a.driver.bound_port(1)
    assert pair.a.driver.interface_state(1) is InterfaceState.ENABLED
    assert pair.a.driver.link_state(LINK) is LinkState.OFF
    fibre = pair.a.driver.fibre(1)
    assert fibre is not None
    assert (fibre.length_km, fibre.band, fibre.extra_loss_db) == (50.0, "C", 0.0)
    assert fibre.loss_db == pytest.approx(10.0)
    assert fibre.peer_address == f"127.0.0.1:{pair.b.driver.bound_port(1)}"
    assert pair.b.driver.fibre(1).peer_address == ""  # type: ignore[union-attr]
    assert pair.a.driver.fibre(9) is None


async def test_identical_keys_at_model_rate(pair: Pair) -> None:
    await pair.enable()
    for node in (pair.a, pair.b):
        assert [e.qkdl_id for e in node.kinds(DriverEventKind.LINK_UP)] == [LINK]
    model = link_budget(LOSS_50KM_C, DeviceParams())
    start_a, start_b = pair.a.stored(), pair.b.stored()

    await pair.clock.run(3.0, steps=30)
    expected = model.rate_bps * 3.0
    await until(lambda: pair.b.stored() - start_b >= expected - 16)
    await pair.settle()

    produced = pair.a.stored() - start_a
    assert pair.b.stored() - start_b == produced
    assert produced == pytest.approx(expected, rel=0.01)
    assert_identical_keys(pair)
    assert len(pair.a.driver.keystore.blocks(LINK)) >= 10

    for node in (pair.a, pair.b):
        perf = node.driver.performance(LINK)
        assert perf.skr_bps == round(model.rate_bps)
        assert perf.eskr_bps == pytest.approx(model.rate_bps, rel=0.05)
        assert perf.qber == pytest.approx(model.e_mu)
        assert perf.mu == pytest.approx(model.mu)
        assert perf.stored_key_bits == node.stored()
        assert (perf.length_km, perf.band) == (50.0, "C")
        assert perf.loss_db == pytest.approx(10.0)
    await until(lambda: len(pair.b.kinds(DriverEventKind.LINK_PERF)) >= 2)
    perf_event = pair.b.kinds(DriverEventKind.LINK_PERF)[-1]
    assert perf_event.qkdl_id == LINK
    assert perf_event.performance is not None


@pytest.mark.parametrize("where", ["transmitter-link", "receiver-interface"])
async def test_fibre_cut_stops_key_at_both_ends_and_restore_resumes(pair: Pair, where: str) -> None:
    await pair.enable()
    await pair.clock.run(0.5)
    await pair.settle()
    assert pair.a.stored() > 0

    if where == "transmitter-link":
        await pair.a.driver.set_fault(FaultKind.FIBRE_CUT, True, qkdl_id=LINK)
    else:
        await pair.b.driver.set_fault(FaultKind.FIBRE_CUT, True, qkdi_id=1)
    await until(lambda: all(n.kinds(DriverEventKind.LINK_DOWN) for n in (pair.a, pair.b)))
    for node in (pair.a, pair.b):
        (down,) = node.kinds(DriverEventKind.LINK_DOWN)
        assert down.reason == REASON_FIBRE_CUT
        assert down.qkdl_id == LINK
    assert pair.states() == (LinkState.PENDING, LinkState.PENDING)
    assert FaultKind.FIBRE_CUT in (pair.a if where == "transmitter-link" else pair.b).driver.faults(LINK)

    await pair.clock.run(1.0)
    before = pair.a.stored(), pair.b.stored()
    await pair.clock.run(1.0)
    assert (pair.a.stored(), pair.b.stored()) == before
    assert pair.a.driver.performance(LINK).skr_bps == 0

    if where == "transmitter-link":
        await pair.a.driver.set_fault(FaultKind.FIBRE_CUT, False, qkdl_id=LINK)
    else:
        await pair.b.driver.set_fault(FaultKind.FIBRE_CUT, False, qkdi_id=1)
    await until(lambda: pair.states() == (LinkState.ACTIVE, LinkState.ACTIVE))
    for node in (pair.a, pair.b):
        assert len(node.kinds(DriverEventKind.LINK_UP)) == 2
    await pair.clock.run(0.5)
    await pair.settle()
    assert pair.a.stored() > before[0]
    assert_identical_keys(pair)


async def test_eavesdropper_raises_qber_and_stops_key(pair: Pair) -> None:
    await pair.enable()
    clean_qber = pair.a.driver.performance(LINK).qber
    assert clean_qber is not None
    seen: list[float] = []

    async def sample() -> None:
        while True:
            q = pair.a.driver.performance(LINK).qber
            if q is not None and (not seen or q != seen[-1]):
                seen.append(q)
            await asyncio.sleep(TICK_S / 4)

    sampler = asyncio.create_task(sample())
    try:
        # Injected at the receiver: the transmitter learns of it over the channel.
        await pair.b.driver.set_fault(FaultKind.EAVESDROPPER, True, qkdl_id=LINK, level=1.0)
        await until(lambda: all(n.kinds(DriverEventKind.LINK_DOWN) for n in (pair.a, pair.b)))
        await until(lambda: bool(seen) and seen[-1] > clean_qber + 0.24)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    for node in (pair.a, pair.b):
        (down,) = node.kinds(DriverEventKind.LINK_DOWN)
        assert down.reason == REASON_EAVESDROPPER
    assert seen == sorted(seen)  # it rises gradually ...
    assert any(clean_qber < q < clean_qber + 0.2 for q in seen)  # ... through intermediate values
    assert pair.a.driver.faults(LINK)[FaultKind.EAVESDROPPER] == 1.0
    assert pair.states() == (LinkState.PENDING, LinkState.PENDING)
    rx_qber = pair.b.driver.performance(LINK).qber
    assert rx_qber is not None and rx_qber > 0.25

    before = pair.a.stored(), pair.b.stored()
    await pair.clock.run(1.0)
    assert (pair.a.stored(), pair.b.stored()) == before

    await pair.b.driver.set_fault(FaultKind.EAVESDROPPER, False, qkdl_id=LINK)
    await until(lambda: pair.states() == (LinkState.ACTIVE, LinkState.ACTIVE))
    await until(lambda: pair.a.driver.performance(LINK).qber == pytest.approx(clean_qber))
    assert len(pair.b.kinds(DriverEventKind.LINK_UP)) == 2


async def test_detector_failure(pair: Pair) -> None:
    await pair.enable()
    await pair.b.driver.set_fault(FaultKind.DETECTOR_FAILURE, True, qkdi_id=1)
    assert pair.b.driver.interface_state(1) is InterfaceState.FAILED
    (iface_down,) = pair.b.kinds(DriverEventKind.INTERFACE_DOWN)
    assert (iface_down.qkdi_id, iface_down.reason) == (1, REASON_DETECTOR_FAILURE)
    await until(lambda: all(n.kinds(DriverEventKind.LINK_DOWN) for n in (pair.a, pair.b)))
    for node in (pair.a, pair.b):
        assert node.kinds(DriverEventKind.LINK_DOWN)[0].reason == REASON_DETECTOR_FAILURE
    before = pair.b.stored()
    await pair.clock.run(0.5)
    assert pair.b.stored() == before
    assert pair.states() == (LinkState.PENDING, LinkState.PENDING)

    await pair.b.driver.set_fault(FaultKind.DETECTOR_FAILURE, False, qkdi_id=1)
    assert pair.b.driver.interface_state(1) is InterfaceState.ENABLED
    assert len(pair.b.kinds(DriverEventKind.INTERFACE_UP)) == 1
    await until(lambda: pair.states() == (LinkState.ACTIVE, LinkState.ACTIVE))


async def test_disable_enable_and_remove(pair: Pair) -> None:
    await pair.enable()
    await pair.clock.run(0.3)
    await pair.settle()

    await pair.b.driver.disable_link(LINK)
    assert pair.b.driver.link_state(LINK) is LinkState.OFF
    await until(lambda: bool(pair.a.kinds(DriverEventKind.LINK_DOWN)))
    assert pair.a.kinds(DriverEventKind.LINK_DOWN)[0].reason == "link disabled at peer"
    assert pair.a.driver.link_state(LINK) is LinkState.PENDING
    assert pair.b.driver.performance(LINK).skr_bps == 0

    await pair.b.driver.enable_link(LINK)
    await until(lambda: pair.states() == (LinkState.ACTIVE, LinkState.ACTIVE))

    await pair.clock.run(0.3)
    await pair.settle()
    assert_identical_keys(pair)
    kept = pair.a.stored()
    await pair.a.driver.remove_link(LINK)
    await pair.b.driver.remove_link(LINK)
    for node in (pair.a, pair.b):
        with pytest.raises(DriverError, match=f"no link {LINK}"):
            node.driver.link_state(LINK)
        assert node.stored() == kept  # key already delivered stays in the store
    # The interface is free again.
    await pair.a.driver.create_link(LinkSpec("link-2", 1, "node-b", 1, LinkRole.TRANSMITTER, None, None))


async def test_link_too_long_never_comes_up(tmp_path: Path) -> None:
    p = await make_pair(tmp_path, length_km=160.0)  # 32 dB: beyond the cut-off
    try:
        await p.a.driver.enable_link(LINK)
        await p.b.driver.enable_link(LINK)
        await until(lambda: p.a.driver.performance(LINK).qber is not None)
        await p.clock.run(0.5)
        assert p.states() == (LinkState.PENDING, LinkState.PENDING)
        assert p.a.stored() == 0
        assert not p.a.kinds(DriverEventKind.LINK_UP)
    finally:
        await p.a.driver.stop()
        await p.b.driver.stop()


async def test_configuration_errors(pair: Pair) -> None:
    a = pair.a.driver
    with pytest.raises(DriverError, match="link link-ab already exists"):
        await a.create_link(LinkSpec(LINK, 1, "node-c", 1, LinkRole.TRANSMITTER))
    await a.create_link(LinkSpec(LINK, 1, "node-b", 1, LinkRole.TRANSMITTER, 1550, 10.0))  # same: no-op
    with pytest.raises(DriverError, match="no interface 7"):
        await a.create_link(LinkSpec("x", 7, "node-b", 1, LinkRole.TRANSMITTER))
    with pytest.raises(DriverError, match="interface 1 already carries link link-ab"):
        await a.create_link(LinkSpec("x", 1, "node-b", 1, LinkRole.TRANSMITTER))
    with pytest.raises(DriverError, match="no link nope"):
        await a.enable_link("nope")
    with pytest.raises(DriverError, match="no link nope"):
        a.performance("nope")
    with pytest.raises(DriverError, match="exactly one"):
        await a.set_fault(FaultKind.FIBRE_CUT, True)
    with pytest.raises(DriverError, match="level"):
        await a.set_fault(FaultKind.EAVESDROPPER, True, qkdl_id=LINK, level=2.0)
    with pytest.raises(ConfigError, match="band"):
        EmulatedInterfaceConfig(qkdi_id=1, band="X")
    with pytest.raises(ConfigError, match="length_km"):
        EmulatedInterfaceConfig(qkdi_id=1, length_km=-1.0)


async def test_role_checks_and_transceiver_tie_break(tmp_path: Path) -> None:
    rx_only = EmulatedInterfaceConfig(qkdi_id=3, role_support=LinkRole.RECEIVER, band="O")
    driver = EmulatedQkdDriver("node-z", [rx_only], KeyStore(tmp_path / "z.db"), tick_s=TICK_S)
    await driver.start()
    try:
        with pytest.raises(DriverError, match="supports RECEIVER only"):
            await driver.create_link(LinkSpec("l", 3, "node-y", None, LinkRole.TRANSMITTER))
        # TRANSCEIVER at both ends: the larger node id receives.
        await driver.create_link(LinkSpec("l", 3, "node-y", None, LinkRole.TRANSCEIVER, 1310))
        await driver.enable_link("l")
        assert driver.link_state("l") is LinkState.PENDING
    finally:
        await driver.stop()


async def test_garbage_and_bad_handshakes_are_rejected(pair: Pair) -> None:
    port = pair.b.driver.bound_port(1)
    await pair.b.driver.enable_link(LINK)

    async def exchange(payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(payload)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), 5.0)
        except ConnectionResetError:  # the receiver closed with our data unread
            return b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionResetError):
                await writer.wait_closed()

    reply = json.loads(await exchange(b"\x00\xffnot json at all\n"))
    assert reply == {"t": "reject", "reason": "bad handshake"}
    hello = {"t": "hello", "v": 1, "qkdl_id": "unknown", "src_qkdn": "node-a", "dst_qkdn": "node-b"}
    reply = json.loads(await exchange(json.dumps(hello).encode() + b"\n"))
    assert "link unknown not configured" in reply["reason"]
    hello.update(qkdl_id=LINK, src_qkdn="node-evil")
    reply = json.loads(await exchange(json.dumps(hello).encode() + b"\n"))
    assert "expects peer node node-a" in reply["reason"]
    # An over-long line is refused (reply or reset) without the receiver falling over.
    assert await exchange(b"x" * (2 << 20)) in (b"", b'{"t":"reject","reason":"bad handshake"}\n')

    # A hijacker that completes the handshake and then talks garbage loses the session; the real
    # transmitter then connects and the link works.
    hello.update(src_qkdn="node-a", src_qkdi=1, dst_qkdi=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(json.dumps(hello).encode() + b"\n")
    assert json.loads(await reader.readline())["t"] == "accept"
    writer.write(b'{"t": "block", "id": 5}\n')
    await writer.drain()
    assert b"protocol error" in await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    await writer.wait_closed()

    await pair.a.driver.enable_link(LINK)
    await until(lambda: pair.states() == (LinkState.ACTIVE, LinkState.ACTIVE))


async def test_peer_vanishes_and_returns_without_task_leaks(tmp_path: Path) -> None:
    tasks_before = asyncio.all_tasks()
    p = await make_pair(tmp_path)
    await p.enable()
    await p.clock.run(0.3)
    await p.settle()
    port = p.b.driver.bound_port(1)

    # The receiver's driver goes away: the transmitter sees the link drop and keeps retrying.
    await p.b.driver.stop()
    await until(lambda: bool(p.a.kinds(DriverEventKind.LINK_DOWN)))
    assert p.a.kinds(DriverEventKind.LINK_DOWN)[0].reason == "peer driver stopped"
    await asyncio.sleep(0.3)  # several failed reconnects
    assert p.a.driver.link_state(LINK) is LinkState.PENDING

    # It comes back on the same port with the same key store: the link resumes.
    b2 = EmulatedQkdDriver(
        "node-b",
        [EmulatedInterfaceConfig(qkdi_id=1, listen_port=port, length_km=50.0)],
        KeyStore(tmp_path / "node-b.db"),
        tick_s=TICK_S,
        clock=p.clock,
    )
    await b2.start()
    await b2.create_link(LinkSpec(LINK, 1, "node-a", 1, LinkRole.RECEIVER))
    await b2.enable_link(LINK)
    await until(lambda: p.a.driver.link_state(LINK) is LinkState.ACTIVE)
    await p.clock.run(0.3)
    await asyncio.sleep(TICK_S * 2)
    await until(lambda: p.a.stored() == b2.keystore.stored_bits(LINK))

    await p.a.driver.stop()
    await b2.stop()
    assert p.a.driver.keystore.closed and b2.keystore.closed
    assert asyncio.all_tasks() == tasks_before
