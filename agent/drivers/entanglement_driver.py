"""The agent's emulated entanglement driver: the node's engines, live, over the lab's medium service.

:class:`EmulatedEntanglementDriver` implements :class:`agent.drivers.base.EntanglementDriver`. It
connects to the medium service (:mod:`agent.drivers.medium_service`, address from the agent
configuration's ``entanglement.medium``), registers the node's memory and, per session, the hops of its
elementary links, and runs the session with the same engines the virtual-time emulator uses
(:class:`~agent.drivers.emulated_entanglement.RepeaterNode`,
:class:`~agent.drivers.emulated_entanglement.EndNode`, :class:`~agent.drivers.bbm92.Bbm92Endpoint`)
on the real-time clock. The engines see the network through
three small adapters: :class:`RemotePort` (the node's hardware; results of measurements come back
asynchronously, which is why the engines use the ``*_then`` operations), :class:`RemoteChannel` (classical
messages, carried and delayed by the medium) and :class:`RemoteRoundSync` (the medium's slot controller).

Memory: each session reserves exactly the slots its configuration gives it at this node
(``prev_memories``/``next_memories`` in the model, what the controller reserved for it; absent, 1 per side
at a repeater and ``1 + purification rounds`` at an end): one block of the node's pool
(``memories/count``), never more. A session whose slots do not fit beside the other sessions' is refused
naming the numbers (the model already refuses a configuration that over-commits ``count``). The engines
keep the same number of slots on each side, so a repeater given different numbers per side runs with the
smaller one. ``in_use`` counts reserved slots that hold or await a qubit.

What a node learns: heralds of its own hops, its own measurement results, and the messages addressed to
it. A repeater's driver holds its engine, its slots and counters; its engine is never given an end-to-end
message, and no key exists at a repeater (``key_qkdl_id`` is refused there by the YANG model).

Key: at the ends of a ``bbm92-key`` session, every BBM92 block goes into the agent's key store under
``key_qkdl_id``, block id ``bbm92-<first 8 hex digits of the session id>-<run nonce>-<block number>``.
The run nonce is chosen by the leader (left) end each time it starts the session (the milliseconds of
its clock in 11 hexadecimal digits, then 8 random ones) and sent to the other end over the session's
classical channel (:class:`~agent.drivers.medium_service.KeyRun`) before every block's ``BlockStart``,
so both ends name a block alike, blocks sort in generation order across runs too, and a session
recreated with the same id (a configuration edit, an agent restart, a reconnection to the medium)
never repeats a block id, which both key stores would refuse (a block id already used up, or the same
id with other bytes). The KME serves that VIRT link directly (:mod:`agent.kme.authz`), and trusted
relays use it as a hop (:mod:`agent.kme.relay`).

Pairs: at the ends of a ``pairs`` session, delivered pairs wait in a bounded queue
(:meth:`EmulatedEntanglementDriver.pairs`, the node API for other applications; the oldest waiting pair
is released when the queue is full). The queue's ``run`` is the session's run nonce at the medium (its
slot controller chooses one each time the session starts there, and tells every node in its ``hop``
answer), so the two ends share it and a session recreated with the same id never repeats a pair id
(``<run>-<hop>-<sequence>`` in the entanglement delivery API).

Failures: if the medium cannot be reached, ``create_session`` raises :class:`DriverError` naming the
address and nothing is started (the agent then refuses the configuration). If the connection is lost
later, every session goes ``down`` (notified) and the driver reconnects in the background, restarting
its sessions from scratch when the medium is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.drivers.base import (
    EntanglementEvent,
    EntanglementSessionConfig,
    LinkGenerationState,
    MemoryConfig,
    MemoryState,
    SessionState,
)
from agent.drivers.bbm92 import BasisAnnounce, Bbm92Config, Bbm92Endpoint, BlockStart, KeySink
from agent.drivers.clock import AsyncioClock
from agent.drivers.emulated_entanglement import (
    ChainLayout,
    DeliveredPair,
    EndNode,
    Generation,
    RepeaterNode,
    SwapOrder,
)
from agent.drivers.medium_service import (
    FrameDecoder,
    FrameError,
    KeyRun,
    decode_message,
    encode_frame,
    encode_message,
)
from agent.drivers.quantum_medium import Basis, BsmResult, Herald, PurificationProtocol
from qsdn.errors import DriverError

__all__ = [
    "EmulatedEntanglementDriver",
    "MediumClient",
    "PairQueue",
    "RemoteChannel",
    "RemotePort",
    "RemoteRoundSync",
]

log = logging.getLogger(__name__)

#: Window of the recent rates and fidelities in ``<get>`` and of the status checks.
WINDOW_S = 3.0

Result = dict[str, Any]


class MediumClient:
    """One TCP connection to the medium service: requests with callbacks, events to a handler."""

    def __init__(
        self,
        node: str,
        host: str,
        port: int,
        *,
        timeout_s: float,
        on_event: Callable[[dict[str, Any]], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._on_event = on_event
        self._on_lost = on_lost
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ids = 0
        self._pending: dict[int, tuple[Callable[[Result], None] | None, Callable[[str], None] | None]] = {}
        self.connected = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self, memory: dict[str, Any]) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise DriverError(
                f"the quantum medium at {self.address} is unreachable: {exc or 'timeout'}"
            ) from None
        self._writer = writer
        self.connected = True
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader), name="medium-client")
        try:
            await self.call("hello", node=self.node, memory=memory)
        except DriverError:
            await self.close()
            raise

    async def close(self) -> None:
        self.connected = False
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pending.clear()

    def request(
        self,
        op: str,
        on_result: Callable[[Result], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        **fields: Any,
    ) -> None:
        """Send a request; ``on_result`` gets the result, ``on_error`` the medium's error message."""
        if not self.connected or self._writer is None:
            if on_error is not None:
                on_error(f"not connected to the quantum medium at {self.address}")
            return
        self._ids += 1
        self._pending[self._ids] = (on_result, on_error)
        self._writer.write(encode_frame({"op": op, "id": self._ids, **fields}))

    async def call(self, op: str, **fields: Any) -> Result:
        """A request awaited with the client's timeout; :class:`DriverError` on refusal or silence."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

        def failed(msg: str) -> None:
            if not fut.done():
                fut.set_exception(DriverError(f"quantum medium at {self.address}: {op}: {msg}"))

        def answered(r: Result) -> None:
            if not fut.done():
                fut.set_result(r)

        self.request(op, answered, failed, **fields)
        try:
            return await asyncio.wait_for(fut, self.timeout_s)
        except TimeoutError:
            raise DriverError(
                f"quantum medium at {self.address}: no answer to {op} in {self.timeout_s} s"
            ) from None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        reason = "connection closed"
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for frame in decoder.feed(data):
                    self._dispatch(frame)
        except FrameError as exc:
            reason = f"bad frame: {exc}"
        except (ConnectionError, OSError) as exc:
            reason = str(exc)
        except asyncio.CancelledError:
            return
        was = self.connected
        self.connected = False
        pending, self._pending = self._pending, {}
        for _, on_error in pending.values():
            if on_error is not None:
                on_error(reason)
        if was:
            self._on_lost(reason)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        if "event" in frame:
            self._on_event(frame)
            return
        rid = frame.get("id")
        if not isinstance(rid, int):
            return
        on_result, on_error = self._pending.pop(rid, (None, None))
        if frame.get("ok"):
            if on_result is not None:
                on_result(frame.get("result") or {})
        elif on_error is not None:
            on_error(str(frame.get("error", "refused")))
        else:
            log.warning("node %s: the quantum medium refused a request: %s", self.node, frame.get("error"))


class RemotePort:
    """The node's hardware behind the medium service, for one session (its own range of slots)."""

    def __init__(
        self, client: MediumClient, session_id: str, base: int, on_error: Callable[[str], None]
    ) -> None:
        self._client = client
        self._session = session_id
        self._base = base
        self._on_error = on_error
        self._generating: set[int] = set()
        self.closed = False

    @property
    def node(self) -> str:
        return self._client.node

    def _req(self, op: str, on_result: Callable[[Result], None] | None = None, **fields: Any) -> None:
        if self.closed:
            return

        def result(r: Result) -> None:
            if on_result is not None and not self.closed:
                on_result(r)

        self._client.request(op, result, self._failed, **fields)

    def _failed(self, msg: str) -> None:
        if not self.closed:
            self._on_error(msg)

    def heralded(self, hop: int) -> None:
        self._generating.discard(hop)

    def request_pair(self, hop: int, slot: int) -> None:
        self._generating.add(hop)
        self._req("request", session=self._session, hop=hop, slot=self._base + slot)

    def generating(self, hop: int) -> bool:
        return hop in self._generating

    def apply_pauli(self, slot: int, pauli: int) -> None:
        self._req("pauli", slot=self._base + slot, pauli=pauli)

    def discard(self, slot: int) -> None:
        self._req("discard", slot=self._base + slot)

    def bell_measure_then(self, slot1: int, slot2: int, done: Callable[[BsmResult], None]) -> None:
        self._req(
            "bsm",
            lambda r: done(BsmResult(bool(r["ok"]), int(r["bits"]))),
            slot1=self._base + slot1,
            slot2=self._base + slot2,
        )

    def measure_then(self, slot: int, basis: Basis, done: Callable[[int], None]) -> None:
        self._req(
            "measure",
            lambda r: done(int(r["outcome"])),
            slot=self._base + slot,
            basis=basis.value,
        )

    def purify_local_then(
        self, keep_slot: int, sacrifice_slot: int, protocol: PurificationProtocol, done: Callable[[int], None]
    ) -> None:
        self._req(
            "purify",
            lambda r: done(int(r["bit"])),
            keep=self._base + keep_slot,
            sacrifice=self._base + sacrifice_slot,
            protocol=protocol.value,
        )

    def fidelity_then(self, slot: int, done: Callable[[float | None], None]) -> None:
        """The medium's fidelity monitor for the pair in ``slot`` (emulation only)."""
        self._req("fidelity", lambda r: done(r.get("fidelity")), slot=self._base + slot)


class RemoteChannel:
    """Classical messages of one session through the medium (which delays them by ``L/c``)."""

    def __init__(self, client: MediumClient, session_id: str, on_error: Callable[[str], None]) -> None:
        self._client = client
        self._session = session_id
        self._on_error = on_error
        self.closed = False

    def send(self, src: str, dst: str, message: object) -> None:
        if not self.closed:
            self._client.request(
                "send", None, self._on_error, session=self._session, dst=dst, body=encode_message(message)
            )


class RemoteRoundSync:
    """The session's slot controller at the medium: reports go there, new rounds come back as events."""

    def __init__(self, client: MediumClient, session_id: str) -> None:
        self._client = client
        self._session = session_id
        self._nodes: list[Callable[[int], None]] = []
        self.closed = False

    def attach(self, new_round: Callable[[int], None]) -> None:
        self._nodes.append(new_round)

    def report(self, node: str, round_no: int, ok: bool) -> None:
        if not self.closed:
            self._client.request("round", session=self._session, round=round_no, ok=ok)

    def new_round(self, round_no: int) -> None:
        for cb in self._nodes:
            cb(round_no)


class _AsyncBbm92(Bbm92Endpoint):
    """BBM92 on hardware that returns outcomes later: the announcement follows the outcome."""

    def on_pair(self, pair: DeliveredPair) -> None:
        basis = Basis.Z if self._rng.random() < self._cfg.p_z else Basis.X
        pair.measure_then(basis, functools.partial(self._outcome, pair.pair_id, basis))

    def _outcome(self, pair_id: tuple[int, int], basis: Basis, outcome: int) -> None:
        self.stats.measured += 1
        self._send(BasisAnnounce(pair_id, basis))
        peer = self._peer_bases.pop(pair_id, None)
        if peer is None:
            self._measured[pair_id] = (basis, outcome)
        else:
            self._sift(pair_id, basis, outcome, peer)


def run_nonce() -> str:
    """A fresh run nonce: sortable by the time it was chosen, unique by its random part."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(4)}"


class _SessionSink:
    """The key store, with block ids that name the session and its run (module docstring).

    The leader knows the run nonce (its own); the follower learns it from the :class:`KeyRun` that
    precedes each block's ``BlockStart`` and remembers it per block until the block is stored."""

    #: blocks the follower remembers a nonce for, beyond the newest (older ones failed verification)
    KEEP_BLOCKS = 64

    def __init__(self, sink: KeySink, session_id: str, node: str, nonce: str | None) -> None:
        self._sink = sink
        self._node = node
        self._session = session_id
        self._prefix = f"bbm92-{session_id.replace('-', '')[:8]}-"
        self._nonce = nonce
        self._current: str | None = None
        self._nonces: dict[int, str] = {}

    def wrap_send(self, send: Callable[[object], None]) -> Callable[[object], None]:
        """The leader's send: a :class:`KeyRun` before every ``BlockStart``."""
        nonce = self._nonce
        assert nonce is not None

        def sending(message: object) -> None:
            if isinstance(message, BlockStart):
                send(KeyRun(nonce))
            send(message)

        return sending

    def wrap_receive(self, receive: Callable[[str, object], None]) -> Callable[[str, object], None]:
        """The follower's receive: learns the nonce of each block from the preceding :class:`KeyRun`."""

        def receiving(src: str, message: object) -> None:
            if isinstance(message, KeyRun):
                self._current = message.nonce
                return
            if isinstance(message, BlockStart) and self._current is not None:
                self._nonces[message.block_no] = self._current
                for old in [n for n in self._nonces if n < message.block_no - self.KEEP_BLOCKS]:
                    del self._nonces[old]
            receive(src, message)

        return receiving

    def add_block(self, qkdl_id: str, block_id: str, key: bytes) -> bool:
        number = block_id.removeprefix("bbm92-")
        nonce = self._nonce if self._nonce is not None else self._nonces.pop(int(number), None)
        if nonce is None:
            log.warning(
                "node %s: session %s: BBM92 block %s came without its run nonce; not stored",
                self._node,
                self._session,
                number,
            )
            return False
        return self._sink.add_block(qkdl_id, f"{self._prefix}{nonce}-{number}", key)


class PairQueue:
    """Delivered pairs of a ``pairs`` session waiting for an application (bounded, oldest released).

    ``run``: the session's run nonce, shared by its two ends (module docstring); ``""`` if unknown."""

    def __init__(self, limit: int = 64, run: str = "") -> None:
        self.run = run
        self._pairs: deque[DeliveredPair] = deque()
        self._limit = limit
        self._waiters: deque[asyncio.Future[DeliveredPair]] = deque()
        self.released = 0

    def put(self, pair: DeliveredPair) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(pair)
                return
        self._pairs.append(pair)
        if len(self._pairs) > self._limit:
            self._pairs.popleft().release()
            self.released += 1

    def __len__(self) -> int:
        return len(self._pairs)

    async def get(self, timeout_s: float) -> DeliveredPair:
        """The oldest waiting pair (waits up to ``timeout_s``); measure it or release it."""
        if self._pairs:
            return self._pairs.popleft()
        fut: asyncio.Future[DeliveredPair] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise DriverError(f"no entangled pair delivered within {timeout_s} s") from None
        finally:
            # a waiter that timed out or was cancelled leaves no trace: a long-lived reader polling with
            # short timeouts must not grow the queue
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    @property
    def waiters(self) -> int:
        """Readers waiting in :meth:`get` now."""
        return len(self._waiters)

    def close(self) -> None:
        while self._pairs:
            self._pairs.popleft().release()
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(DriverError("the entanglement session was removed"))
        self._waiters.clear()


class _Window:
    """Timestamps (and values) over the last :data:`WINDOW_S` seconds."""

    def __init__(self) -> None:
        self._items: deque[tuple[float, float]] = deque()
        self.first_s: float | None = None

    def add(self, now: float, value: float = 0.0) -> None:
        if self.first_s is None:
            self.first_s = now
        self._items.append((now, value))

    def _trim(self, now: float) -> None:
        while self._items and self._items[0][0] < now - WINDOW_S:
            self._items.popleft()

    def rate(self, now: float) -> float:
        self._trim(now)
        if self.first_s is None or not self._items:
            return 0.0
        span = min(WINDOW_S, now - self.first_s)
        return len(self._items) / span if span > 0 else 0.0

    def mean(self, now: float) -> float | None:
        self._trim(now)
        if not self._items:
            return None
        return sum(v for _, v in self._items) / len(self._items)


@dataclass(eq=False)
class _Run:
    spec: EntanglementSessionConfig
    base: int
    slots: int  # per side, for the engine
    reserved: int  # the session's block of the pool: base .. base + reserved - 1
    port: RemotePort
    channel: RemoteChannel
    rounds: RemoteRoundSync
    engine: EndNode | RepeaterNode
    hop_links: dict[int, str]  # hop index -> link_id
    link_fidelity: dict[str, float] = field(default_factory=dict)
    bbm92: Bbm92Endpoint | None = None
    pairs: PairQueue | None = None
    delivered: _Window = field(default_factory=_Window)
    fidelities: _Window = field(default_factory=_Window)
    heralds: dict[str, _Window] = field(default_factory=dict)
    herald_counts: dict[str, int] = field(default_factory=dict)
    pairs_delivered: int = 0
    status: str = "pending"
    failure: str | None = None

    def close(self) -> None:
        self.port.closed = self.channel.closed = self.rounds.closed = True
        if self.pairs is not None:
            self.pairs.close()


class EmulatedEntanglementDriver:
    """Entanglement sessions of one node, run live against the lab's medium service."""

    def __init__(
        self,
        node_id: str,
        *,
        host: str,
        port: int,
        keystore: KeySink,
        timeout_s: float = 5.0,
        bbm92: Bbm92Config | None = None,
        status_interval_s: float = 0.5,
        reconnect_s: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self._keystore = keystore
        self._bbm92 = bbm92 or Bbm92Config(block_size=1024)
        self._status_interval_s = status_interval_s
        self._reconnect_s = reconnect_s
        self.client = MediumClient(
            node_id, host, port, timeout_s=timeout_s, on_event=self._on_event, on_lost=self._on_lost
        )
        self._memory: MemoryConfig | None = None
        self._runs: dict[str, _Run] = {}
        self._specs: dict[str, EntanglementSessionConfig] = {}  # configured (running or waiting to restart)
        self._subs: list[Callable[[EntanglementEvent], None]] = []
        self._clock: AsyncioClock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._clock = AsyncioClock()
        self._spawn(self._watch(), "entanglement-status")

    async def stop(self) -> None:
        self._stopping = True
        for sid in list(self._runs):
            await self._stop_run(sid)
        self._specs.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def subscribe(self, callback: Callable[[EntanglementEvent], None]) -> Callable[[], None]:
        self._subs.append(callback)
        return lambda: self._subs.remove(callback) if callback in self._subs else None

    def _emit(self, event: EntanglementEvent) -> None:
        for cb in list(self._subs):
            try:
                cb(event)
            except Exception:
                log.exception("node %s: an entanglement event subscriber failed", self.node_id)

    # -- sessions -----------------------------------------------------------------------------------------

    @staticmethod
    def _memory_wire(mem: MemoryConfig) -> dict[str, Any]:
        return {
            "coherence_time_s": mem.coherence_time_s,
            "dephasing_time_s": mem.dephasing_time_s,
            "swap_success": mem.swap_success_probability,
        }

    async def _ensure_connected(self, mem: MemoryConfig) -> None:
        if not self.client.connected:
            await self.client.connect(self._memory_wire(mem))
            self._memory = mem
        elif mem != self._memory:
            await self.client.call("hello", node=self.node_id, memory=self._memory_wire(mem))
            self._memory = mem

    @staticmethod
    def _session_memories(spec: EntanglementSessionConfig) -> tuple[int, ...]:
        """The memories ``spec`` may use here per hop (its configuration, or the least it runs with)."""
        hops = 2 if spec.role == "repeater" else 1
        if len(spec.memories) == hops:
            return spec.memories
        return (1 if spec.role == "repeater" else 1 + spec.purification_rounds,) * hops

    def _allocate(self, spec: EntanglementSessionConfig) -> tuple[int, int, int]:
        """(first slot, slots per side, slots reserved) of a new session in the node's pool: exactly the
        memories its configuration gives it here, never more."""
        mems = self._session_memories(spec)
        need = sum(mems)
        per_side = min(mems)
        used = sorted((r.base, r.base + r.reserved) for r in self._runs.values())
        in_use = sum(b - a for a, b in used)
        count = spec.memory.count
        if per_side < 1 or in_use + need > count:
            raise DriverError(
                f"session {spec.session_id}: not enough memory at node {self.node_id}: it needs {need},"
                f" {count - in_use} of {count} are free ({in_use} used by other sessions)"
            )
        base = 0
        for a, b in used:  # first gap that fits
            if a - base >= need:
                break
            base = max(base, b)
        return base, per_side, need

    async def create_session(self, spec: EntanglementSessionConfig) -> None:
        async with self._lock:
            if spec.session_id in self._runs:
                await self._stop_run(spec.session_id)
            await self._ensure_connected(spec.memory)
            await self._start_run(spec)
            self._specs[spec.session_id] = spec

    async def remove_session(self, session_id: str) -> None:
        async with self._lock:
            self._specs.pop(session_id, None)
            await self._stop_run(session_id)

    async def _start_run(self, spec: EntanglementSessionConfig) -> None:
        assert self._clock is not None
        sid = spec.session_id
        me = spec.path.index(self.node_id)
        hop_links: dict[int, str] = {}
        link_fidelity: dict[str, float] = {}
        by_remote = {link.remote_qkdn_id: link for link in spec.links}
        neighbours = [(me - 1, spec.prev_hop), (me, spec.next_hop)]
        base, per_side, reserved = self._allocate(spec)
        run_nonce_at_medium = ""
        registered = False
        try:
            for hop, remote in neighbours:
                if remote is None:
                    continue
                link = by_remote.get(remote)
                if link is None:
                    raise DriverError(f"session {sid}: no elementary link to {remote}")
                result = await self.client.call(
                    "hop",
                    session=sid,
                    hop=hop,
                    path=list(spec.path),
                    link_id=link.link_id,
                    length_km=link.length_km,
                    loss_db=link.loss_db,
                    modes=link.modes,
                    heralding=link.heralding,
                    initial_fidelity=link.initial_fidelity,
                    alpha=link.alpha,
                )
                registered = True
                hop_links[hop] = link.link_id
                link_fidelity[link.link_id] = float(result["fidelity"])
                run_nonce_at_medium = str(result.get("run") or run_nonce_at_medium)
        except DriverError:
            if registered:
                with contextlib.suppress(DriverError):
                    await self.client.call("leave", session=sid, slots=[])
            raise
        run = self._build(spec, base, per_side, reserved, hop_links, link_fidelity, run_nonce_at_medium)
        self._runs[sid] = run
        run.engine.start()
        log.info(
            "node %s: entanglement session %s started as %s (%d memories per hop)",
            self.node_id,
            sid,
            spec.role,
            per_side,
        )

    def _build(
        self,
        spec: EntanglementSessionConfig,
        base: int,
        per_side: int,
        reserved: int,
        hop_links: dict[int, str],
        link_fidelity: dict[str, float],
        medium_run: str = "",
    ) -> _Run:
        assert self._clock is not None
        sid = spec.session_id
        fail = functools.partial(self._session_failed, sid)
        port = RemotePort(self.client, sid, base, fail)
        channel = RemoteChannel(self.client, sid, fail)
        rounds = RemoteRoundSync(self.client, sid)
        layout = ChainLayout(spec.path, (0.0,) * (len(spec.path) - 1))
        engine: EndNode | RepeaterNode
        if spec.role == "repeater":
            engine = RepeaterNode(
                self.node_id,
                layout,
                port,
                channel,
                self._clock,
                memories=per_side,
                swap_order=SwapOrder(spec.swap_order),
                cutoff_s=spec.cutoff_time_s,
                generation=Generation.ROUNDS,
                rounds=rounds,
            )
        else:
            protocol = None if spec.purification == "none" else PurificationProtocol(spec.purification)
            engine = EndNode(
                self.node_id,
                layout,
                port,
                channel,
                self._clock,
                memories=per_side,
                purification=protocol,
                purification_rounds=spec.purification_rounds if protocol is not None else 0,
                generation=Generation.ROUNDS,
                rounds=rounds,
            )
        run = _Run(spec, base, per_side, reserved, port, channel, rounds, engine, hop_links, link_fidelity)
        if isinstance(engine, EndNode):
            if spec.application == "bbm92-key":
                if spec.key_qkdl_id is None:
                    raise DriverError(f"session {sid}: a bbm92-key end needs key_qkdl_id")
                leader = engine.is_left_end
                sink = _SessionSink(self._keystore, sid, self.node_id, run_nonce() if leader else None)
                ep = _AsyncBbm92(
                    self.node_id,
                    spec.key_qkdl_id,
                    leader=leader,
                    send=sink.wrap_send(engine.send_to_peer) if leader else engine.send_to_peer,
                    sink=sink,
                    rng=random.SystemRandom(),
                    config=self._bbm92,
                )
                run.bbm92 = ep
                receive = ep.on_message if leader else sink.wrap_receive(ep.on_message)
                engine.set_application(functools.partial(self._delivered, run, ep.on_pair), receive)
            else:
                run.pairs = PairQueue(run=medium_run)
                engine.set_application(functools.partial(self._delivered, run, run.pairs.put))
        return run

    def _delivered(self, run: _Run, app: Callable[[DeliveredPair], None], pair: DeliveredPair) -> None:
        assert self._clock is not None
        now = self._clock.now()
        run.pairs_delivered += 1
        run.delivered.add(now)

        def monitored(fidelity: float | None) -> None:
            if fidelity is not None:
                run.fidelities.add(self._now(), float(fidelity))

        run.port.fidelity_then(pair.slot, monitored)
        app(pair)

    def _now(self) -> float:
        assert self._clock is not None
        return self._clock.now()

    async def _stop_run(self, sid: str) -> None:
        run = self._runs.pop(sid, None)
        if run is None:
            return
        run.close()
        slots = list(range(run.base, run.base + run.reserved))
        if self.client.connected:
            try:
                await self.client.call("leave", session=sid, slots=slots)
            except DriverError as exc:
                log.warning("node %s: leaving session %s at the medium: %s", self.node_id, sid, exc)
        log.info("node %s: entanglement session %s stopped, memories freed", self.node_id, sid)

    def _session_failed(self, sid: str, reason: str) -> None:
        run = self._runs.get(sid)
        if run is not None and run.failure is None:
            run.failure = reason
            log.warning("node %s: entanglement session %s failed: %s", self.node_id, sid, reason)

    # -- events from the medium ---------------------------------------------------------------------------

    def _on_event(self, ev: dict[str, Any]) -> None:
        run = self._runs.get(str(ev.get("session")))
        if run is None or run.port.closed:
            return
        try:
            kind = ev["event"]
            if kind == "herald":
                hop = int(ev["hop"])
                run.port.heralded(hop)
                link = run.hop_links.get(hop)
                if link is not None:
                    run.herald_counts[link] = run.herald_counts.get(link, 0) + 1
                    run.heralds.setdefault(link, _Window()).add(self._now())
                label = ev["label"]
                run.engine.on_herald(
                    Herald(
                        hop,
                        (int(label[0]), int(label[1])),
                        int(ev["slot"]) - run.base,
                        str(ev["partner"]),
                        int(ev["partner_slot"]),
                        int(ev["frame"]),
                    )
                )
            elif kind == "message":
                run.engine.on_message(str(ev["src"]), decode_message(ev["body"]))
            elif kind == "round":
                run.rounds.new_round(int(ev["round"]))
        except (DriverError, KeyError, TypeError, ValueError) as exc:
            self._session_failed(run.spec.session_id, f"bad event from the medium: {exc}")
        except Exception as exc:  # an engine bug must not stop the reader
            log.exception("node %s: session %s: engine failed", self.node_id, run.spec.session_id)
            self._session_failed(run.spec.session_id, f"engine failed: {exc!r}")

    def _on_lost(self, reason: str) -> None:
        if self._stopping:
            return
        log.warning("node %s: lost the quantum medium at %s: %s", self.node_id, self.client.address, reason)
        for sid in list(self._runs):
            run = self._runs.pop(sid)
            run.close()
            self._set_status(run, "down", "elementary_link_down")
        self._memory = None
        self._spawn(self._reconnect(), "entanglement-reconnect")

    async def _reconnect(self) -> None:
        while not self._stopping and self._specs:
            await asyncio.sleep(self._reconnect_s)
            async with self._lock:
                if self.client.connected:
                    return
                await self.client.close()
                specs = list(self._specs.values())
                try:
                    await self._ensure_connected(specs[0].memory)
                    for spec in specs:
                        await self._start_run(spec)
                except DriverError as exc:
                    log.info("node %s: reconnecting to the medium: %s", self.node_id, exc)
                    for sid in list(self._runs):
                        self._runs.pop(sid).close()
                    await self.client.close()
                    continue
                log.info(
                    "node %s: reconnected to the medium; %d session(s) restarted", self.node_id, len(specs)
                )
                return

    # -- state --------------------------------------------------------------------------------------------

    def _qber(self, run: _Run) -> tuple[float | None, float | None]:
        """(QBER over both bases, Werner fidelity estimate 1 - 3/4 (e_Z + e_X)) from BBM92 samples."""
        if run.bbm92 is None:
            return None, None
        errs = run.bbm92.stats.sample_errors
        tot = sum(v[1] for v in errs.values())
        if not tot:
            return None, None
        rates = [v[0] / v[1] for v in errs.values() if v[1]]
        fid = 1.0 - 0.75 * sum(rates) * (2 / len(rates)) if rates else None
        return sum(v[0] for v in errs.values()) / tot, fid

    def session_state(self, session_id: str) -> SessionState | None:
        run = self._runs.get(session_id)
        if run is None:
            if session_id in self._specs:
                return SessionState(status="down")
            return None
        now = self._now()
        qber, qber_fid = self._qber(run)
        fid = run.fidelities.mean(now)
        if fid is None:
            fid = qber_fid
        is_key_end = run.spec.role == "end" and run.spec.application == "bbm92-key"
        self._sync_repeater(run)
        return SessionState(
            status=run.status,
            pairs_delivered=run.pairs_delivered,
            rate_pairs_per_s=run.delivered.rate(now),
            achieved_fidelity=None if fid is None else min(1.0, max(0.25, fid)),
            key_bits=(run.bbm92.stats.key_bits if run.bbm92 is not None else 0) if is_key_end else None,
            qber=qber if is_key_end else None,
        )

    def _sync_repeater(self, run: _Run) -> int:
        """What a repeater sees of delivery is its successful swaps: count them as delivered pairs."""
        if isinstance(run.engine, RepeaterNode):
            ok = run.engine.stats.swaps - run.engine.stats.swap_failures
            now = self._now()
            while run.pairs_delivered < ok:
                run.pairs_delivered += 1
                run.delivered.add(now)
        return run.pairs_delivered

    def link_state(self, link_id: str) -> LinkGenerationState | None:
        runs = [r for r in self._runs.values() if link_id in r.hop_links.values()]
        if not runs:
            return None
        now = self._now()
        count = sum(r.herald_counts.get(link_id, 0) for r in runs)
        rate = sum(r.heralds[link_id].rate(now) for r in runs if link_id in r.heralds)
        status = "generating"
        if all(r.failure is not None for r in runs):
            status = "down"
        return LinkGenerationState(
            status=status,
            pairs_generated=count,
            rate_pairs_per_s=rate,
            mean_fidelity=runs[0].link_fidelity.get(link_id),
        )

    def memory_state(self, count: int) -> MemoryState:
        in_use = sum(r.engine.slots_in_use() for r in self._runs.values())
        in_use = min(in_use, count)
        return MemoryState(in_use=in_use, free=count - in_use)

    def pairs(self, session_id: str) -> PairQueue:
        """The node API for ``pairs`` sessions: the queue of delivered pairs at this end."""
        run = self._runs.get(session_id)
        if run is None or run.pairs is None:
            raise DriverError(f"session {session_id} is not a pairs session ending at this node")
        return run.pairs

    # -- status and notifications -------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._status_interval_s)
            for run in list(self._runs.values()):
                self._evaluate(run)

    def _evaluate(self, run: _Run) -> None:
        now = self._now()
        spec = run.spec
        if run.failure is not None:
            self._set_status(run, "down", None)
            return
        if isinstance(run.engine, RepeaterNode):
            ok = self._sync_repeater(run)
            status = "active" if ok else ("establishing" if run.herald_counts else "pending")
            self._set_status(run, status, "targets_met" if ok else None)
            return
        if run.pairs_delivered == 0:
            self._set_status(run, "establishing" if run.herald_counts else "pending", None)
            return
        rate = run.delivered.rate(now)
        if rate == 0.0:
            self._set_status(run, "down", "elementary_link_down")
            return
        state = self.session_state(spec.session_id)
        fid = state.achieved_fidelity if state is not None else None
        if spec.target_fidelity is not None and fid is not None and fid < spec.target_fidelity:
            self._set_status(run, "degraded", "target_fidelity_not_met")
        elif (
            spec.target_rate_pairs_per_s is not None
            and now - (run.delivered.first_s or now) >= WINDOW_S
            and rate < spec.target_rate_pairs_per_s
        ):
            self._set_status(run, "degraded", "target_rate_not_met")
        else:
            self._set_status(run, "active", "targets_met")

    def _set_status(self, run: _Run, status: str, reason: str | None) -> None:
        if status == run.status:
            return
        run.status = status
        state = self.session_state(run.spec.session_id) if run.spec.session_id in self._runs else None
        log.info(
            "node %s: entanglement session %s is %s (%s)", self.node_id, run.spec.session_id, status, reason
        )
        self._emit(
            EntanglementEvent(
                session_id=run.spec.session_id,
                status=status,
                reason=reason,
                achieved_fidelity=state.achieved_fidelity if state is not None else None,
                target_fidelity=run.spec.target_fidelity,
                rate_pairs_per_s=state.rate_pairs_per_s if state is not None else None,
            )
        )
