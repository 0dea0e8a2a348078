"""An emulated decoy-state BB84 QKD device: the reference :class:`~agent.drivers.base.QkdDriver`.

What is emulated, and what is not
---------------------------------
Each QKD interface is a TCP server on the agent's host: the endpoint of an *emulated quantum channel*.
A PHYS link between two agents is a real TCP connection between the two drivers' interfaces, opened by the
TRANSMITTER end. Over it the transmitter ships **finished secret key**: every tick it computes how many
secret bits the span would have distilled in the elapsed time, from the asymptotic decoy-state BB84 model
(:func:`qsdn.physics.bb84.secret_key_rate_bps` at the span's loss), draws that many random bits from the
OS CSPRNG and sends them as one block, which both ends store in their :class:`~agent.keystore.KeyStore`.

This stands in for the *outcome* of a real QKD link (photon transmission, sifting, parameter estimation,
error correction and privacy amplification): both ends end up with identical, secret-looking key at the
rate physics allows. It is **not** secure: the key crosses the classical network in clear, which a real
system never does. It exists so that the control plane, key relay and ETSI 014 delivery can be developed
and tested against realistic rates, QBERs, loss budgets and failures.

The channel
-----------
* Framing: one JSON object per line (UTF-8, at most 1 MiB), field ``t`` names the message. The
  transmitter opens with ``hello`` (protocol version, ``qkdl_id``, both node and interface ids); the
  receiver answers ``accept`` only if that ``qkdl_id`` is configured and enabled on the interface the
  connection arrived on, with matching peer ids and no local fault; otherwise ``reject`` with a reason and
  closes. The transmitter retries with exponential backoff.
* Key: ``block`` (id, base64 bytes) from transmitter to receiver, ``ack`` back. The receiver stores on
  receipt, the transmitter on acknowledgement, and un-acknowledged blocks are re-sent after a reconnect
  (``KeyStore.add_block`` is idempotent), so both stores hold the same blocks. Block ids sort in
  generation order, so both stores consume in the same order.
* ``status`` (every tick, transmitter to receiver) carries the model's rate and QBER and whether key is
  being produced; ``hb`` answers it, so each end notices a silent peer. ``fault`` tells the transmitter of
  an eavesdropper injected at the receiver end. ``down`` announces why an end closes the channel.
* Every message is delayed by the span's propagation delay (``length_km / 2e8 m/s``) inside the channel.

Rates: the bits of a tick are ``rate_bps * dt`` plus the fractional carry of the previous tick, emitted in
whole bytes, so the long-run rate equals the model rate. ``dt`` comes from the injected ``clock``, which
lets tests run emulated time faster or slower than the wall clock.

Faults (:meth:`EmulatedQkdDriver.set_fault`)
--------------------------------------------
* ``FIBRE_CUT`` (link or interface): the end where it is set sends ``down`` ("fibre cut") and closes the
  channel; both ends emit ``LINK_DOWN`` and go PENDING. While the cut lasts the transmitter does not
  connect, or the receiver rejects. Clearing it lets the transmitter reconnect: ``LINK_UP`` at both ends.
* ``EAVESDROPPER`` with level ``x`` in (0, 1] (intercept-resend on a fraction ``x`` of the pulses): the
  extra QBER ramps by 0.05 per tick towards ``0.25 * x`` (:mod:`qsdn.physics.bb84`); once the model's
  secret fraction is zero the link stops producing key and both ends emit ``LINK_DOWN`` with reason
  "QBER above threshold (eavesdropper suspected)". The QBER ramps back down when it is cleared.
* ``DETECTOR_FAILURE`` (an interface, or a link's interface): the interface goes FAILED
  (``INTERFACE_DOWN``), its link goes down as for a fibre cut with reason "detector failure".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import functools
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agent.drivers.base import (
    DriverEvent,
    DriverEventKind,
    FaultKind,
    FibreInfo,
    InterfaceInfo,
    InterfaceState,
    LinkPerformance,
    LinkRole,
    LinkSpec,
    LinkState,
)
from agent.keystore import KeyStore
from qsdn.errors import ConfigError, DriverError, KeyStoreError
from qsdn.physics.bb84 import DeviceParams, link_budget, max_loss_db
from qsdn.physics.loss import Band, fibre_loss_db, propagation_delay_s

__all__ = [
    "REASON_CHANNEL_LOST",
    "REASON_DETECTOR_FAILURE",
    "REASON_EAVESDROPPER",
    "REASON_FIBRE_CUT",
    "EmulatedInterfaceConfig",
    "EmulatedQkdDriver",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20
#: Largest key block on the channel; a long tick is split into several blocks.
MAX_BLOCK_BYTES = 1 << 16
#: Un-acknowledged blocks beyond which the transmitter stops generating (back-pressure).
MAX_PENDING_BLOCKS = 4096
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 1.0
#: Extra QBER added per tick while an eavesdropper's effect ramps up (or down).
EAVESDROPPER_RAMP_STEP = 0.05
#: Sliding window of the measured (effective) secret-key rate.
ESKR_WINDOW_S = 10.0

REASON_FIBRE_CUT = "fibre cut"
REASON_DETECTOR_FAILURE = "detector failure"
REASON_EAVESDROPPER = "QBER above threshold (eavesdropper suspected)"
REASON_NO_KEY = "secret key rate is zero at this loss"
REASON_CHANNEL_LOST = "quantum channel lost"
REASON_DISABLED = "link disabled"
REASON_PEER_DISABLED = "link disabled at peer"
REASON_STOPPED = "driver stopped"
REASON_PEER_STOPPED = "peer driver stopped"
REASON_PROTOCOL = "protocol error on quantum channel"
REASON_KEYSTORE = "key store failure"

_BAND_RANGE_NM: dict[Band, tuple[int, int]] = {Band.O: (1260, 1360), Band.C: (1530, 1565)}


@dataclass(frozen=True, slots=True)
class EmulatedInterfaceConfig:
    """One emulated QKD interface: its channel endpoint, its peer's endpoint and its fibre span.

    ``listen_port`` 0 binds an ephemeral port (see :meth:`EmulatedQkdDriver.bound_port`). The peer
    address is needed only when this end transmits; it can also be set later with
    :meth:`EmulatedQkdDriver.set_peer`.
    """

    qkdi_id: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    peer_host: str | None = None
    peer_port: int | None = None
    length_km: float = 0.0
    band: str = "C"
    extra_loss_db: float = 0.0
    role_support: LinkRole = LinkRole.TRANSCEIVER
    model: str = "qsdn-emulated-bb84"

    def __post_init__(self) -> None:
        where = f"interface {self.qkdi_id}"
        if (
            isinstance(self.qkdi_id, bool)
            or not isinstance(self.qkdi_id, int)
            or not 0 <= self.qkdi_id < 2**32
        ):
            raise ConfigError(f"{where}: qkdi_id must be an integer in [0, 2^32)", path="qkdi_id")
        if not self.listen_host:
            raise ConfigError(f"{where}: listen_host must not be empty", path="listen_host")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"{where}: listen_port {self.listen_port} out of range", path="listen_port")
        if self.peer_port is not None and not 1 <= self.peer_port <= 65535:
            raise ConfigError(f"{where}: peer_port {self.peer_port} out of range", path="peer_port")
        for name, value in (("length_km", self.length_km), ("extra_loss_db", self.extra_loss_db)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{where}: {name} must be a finite number >= 0, got {value!r}", path=name)
        try:
            Band.parse(self.band)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}", path="band") from None
        if not isinstance(self.role_support, LinkRole):
            raise ConfigError(f"{where}: role_support must be a LinkRole", path="role_support")
        if not self.model:
            raise ConfigError(f"{where}: model must not be empty", path="model")

    @property
    def band_enum(self) -> Band:
        return Band.parse(self.band)

    @property
    def loss_db(self) -> float:
        return fibre_loss_db(self.length_km, self.band_enum, self.extra_loss_db)


class _ProtocolError(Exception):
    """The peer sent something that is not a valid channel message."""


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> dict[str, Any]:
    if not line:
        raise _ProtocolError("connection closed")
    if not line.endswith(b"\n"):
        raise _ProtocolError("truncated message")
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _ProtocolError("message is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise _ProtocolError("message is not an object with a type")
    return msg


def _field(msg: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = msg.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _ProtocolError(f"message {_short(msg['t'])}: bad or missing field {name!r}")
    return value


def _short(value: object, limit: int = 80) -> str:
    """A peer-supplied value, quoted and truncated for messages and logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _optional_float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


async def _cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it; re-raise only if the *calling* task is being cancelled."""
    if task is None or task is asyncio.current_task():
        return
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # the task's own failure was logged where it happened
        logger.debug("task %s ended with an error during cancellation", task.get_name(), exc_info=True)


class _Session:
    """One connected quantum channel: a reader task, a delayed writer task, and an idempotent close."""

    def __init__(
        self,
        name: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        delay_s: float,
        idle_timeout_s: float,
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
        on_message: Callable[[_Session, dict[str, Any]], None],
        on_lost: Callable[[_Session, str, str | None], None],
    ) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._delay_s = delay_s
        self._idle_timeout_s = idle_timeout_s
        self._spawn = spawn
        self._on_message = on_message
        self._on_lost = on_lost
        self._queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._done = asyncio.Event()
        self._closing_started = False
        self._reader_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer_task = self._spawn(self._write_loop(), f"{self.name}-writer")
        self._reader_task = self._spawn(self._read_loop(), f"{self.name}-reader")

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed.is_set():
            return
        self._queue.put_nowait((asyncio.get_running_loop().time() + self._delay_s, _encode(msg)))

    def shutdown(self, farewell: dict[str, Any] | None = None) -> None:
        """Stop using the channel, queueing ``farewell`` (if any) as the last message. Idempotent."""
        if self.closed.is_set():
            return
        if farewell is not None:
            self.send(farewell)
        self.closed.set()
        self._queue.put_nowait(None)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                deliver_at, data = item
                wait = deliver_at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._writer.write(data)
                await asyncio.wait_for(self._writer.drain(), HANDSHAKE_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            logger.debug("%s: write failed: %s", self.name, exc)
            self._on_lost(self, REASON_CHANNEL_LOST, None)

    async def _read_loop(self) -> None:
        while not self.closed.is_set():
            try:
                line = await asyncio.wait_for(self._reader.readline(), self._idle_timeout_s)
                msg = _decode(line)
            except TimeoutError:
                self._on_lost(self, f"{REASON_CHANNEL_LOST} (peer silent)", None)
                return
            except (OSError, asyncio.IncompleteReadError) as exc:
                logger.debug("%s: read failed: %s", self.name, exc)
                self._on_lost(self, REASON_CHANNEL_LOST, None)
                return
            except ValueError as exc:  # LimitOverrunError is not raised by readline; over-long line is
                logger.warning("%s: over-long message from peer: %s", self.name, exc)
                self._on_lost(self, REASON_PROTOCOL, "message too long")
                return
            except _ProtocolError as exc:
                if not line:
                    self._on_lost(self, REASON_CHANNEL_LOST, None)
                else:
                    logger.warning("%s: invalid message from peer: %s", self.name, exc)
                    self._on_lost(self, REASON_PROTOCOL, str(exc))
                return
            if self.closed.is_set():
                return
            try:
                self._on_message(self, msg)
            except _ProtocolError as exc:
                logger.warning("%s: invalid message from peer: %s", self.name, exc)
                self._on_lost(self, REASON_PROTOCOL, str(exc))
                return

    async def aclose(self) -> None:
        """Shut down, flush queued messages (bounded), close the socket and wait for both tasks.

        The socket is closed even if the caller is cancelled half-way; tasks left behind then are
        cancelled (the driver's :meth:`EmulatedQkdDriver.stop` awaits them).
        """
        if self._closing_started:
            await self._done.wait()
            return
        self._closing_started = True
        try:
            self.shutdown()
            await _cancel_and_wait(self._reader_task)
            if self._writer_task is not None:
                done, _ = await asyncio.wait({self._writer_task}, timeout=FLUSH_TIMEOUT_S + self._delay_s)
                if not done:
                    await _cancel_and_wait(self._writer_task)
        finally:
            for task in (self._reader_task, self._writer_task):
                if task is not None and not task.done():
                    task.cancel()
            self._writer.close()
            self._done.set()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), FLUSH_TIMEOUT_S)

    async def wait_done(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout_s)


class _Interface:
    def __init__(self, config: EmulatedInterfaceConfig) -> None:
        self.config = config
        self.peer_host = config.peer_host
        self.peer_port = config.peer_port
        self.server: asyncio.Server | None = None
        self.bound_port: int | None = None
        self.link_id: str | None = None
        self.faults: dict[FaultKind, float] = {}


class _Link:
    def __init__(self, spec: LinkSpec, iface: _Interface, transmits: bool) -> None:
        self.spec = spec
        self.iface = iface
        self.transmits = transmits
        self.enabled = False
        self.faults: dict[FaultKind, float] = {}
        self.remote_eve = 0.0  # eavesdropper level reported by the receiver (transmitter side only)
        self.qber_extra = 0.0  # current value of the eavesdropper's ramp (transmitter side only)
        self.session: _Session | None = None
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.producing = False
        self.skr_bps = 0.0
        self.qber: float | None = None
        self.mu: float | None = None
        self.pending: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.carry_bits = 0.0
        self.last_tick = 0.0
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.window_start = 0.0
        self.wait_reason = ""


class EmulatedQkdDriver:
    """Emulated DV-QKD (decoy-state BB84) device with one TCP channel endpoint per interface.

    Args:
        node_id: this node's ``qkdn_id`` (sent in the channel handshake and checked by the peer).
        interfaces: the interfaces and their spans.
        keystore: where both ends store the key; closed by :meth:`stop`.
        device: source and detector parameters of the key-rate model.
        tick_s: period of key generation (wall-clock seconds).
        clock: source of *emulated* time for rates (default ``time.monotonic``).
        perf_interval_s: period of ``LINK_PERF`` events.
        reconnect_min_s, reconnect_max_s: the transmitter's reconnection backoff.
    """

    def __init__(
        self,
        node_id: str,
        interfaces: list[EmulatedInterfaceConfig],
        keystore: KeyStore,
        device: DeviceParams | None = None,
        tick_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        *,
        perf_interval_s: float = 1.0,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 2.0,
    ) -> None:
        if not node_id:
            raise ConfigError("node_id must not be empty", path="node_id")
        for name, value in (
            ("tick_s", tick_s),
            ("perf_interval_s", perf_interval_s),
            ("reconnect_min_s", reconnect_min_s),
            ("reconnect_max_s", reconnect_max_s),
        ):
            if not (math.isfinite(value) and value > 0.0):
                raise ConfigError(f"node {node_id}: {name} must be > 0, got {value!r}", path=name)
        self._node_id = node_id
        self._ifaces: dict[int, _Interface] = {}
        for cfg in interfaces:
            if cfg.qkdi_id in self._ifaces:
                raise ConfigError(f"node {node_id}: duplicate interface {cfg.qkdi_id}", path="qkdi_id")
            self._ifaces[cfg.qkdi_id] = _Interface(cfg)
        self._keystore = keystore
        self._device = device if device is not None else DeviceParams()
        self._tick_s = tick_s
        self._clock = clock
        self._perf_interval_s = perf_interval_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = max(reconnect_min_s, reconnect_max_s)
        self._idle_timeout_s = max(5.0, 20.0 * tick_s)
        self._links: dict[str, _Link] = {}
        self._subscribers: list[Callable[[DriverEvent], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sessions: set[_Session] = set()
        self._perf_task: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._last_block_ns = 0
        self._max_absorption_db = round(max_loss_db(self._device), 3)

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def keystore(self) -> KeyStore:
        return self._keystore

    @property
    def device(self) -> DeviceParams:
        return self._device

    async def start(self) -> None:
        if self._started:
            return
        if self._stopping:
            raise DriverError(f"node {self._node_id}: driver was stopped and cannot be restarted")
        try:
            for iface in self._ifaces.values():
                server = await asyncio.start_server(
                    functools.partial(self._serve, iface),
                    host=iface.config.listen_host,
                    port=iface.config.listen_port,
                    limit=MAX_LINE_BYTES,
                )
                iface.server = server
                iface.bound_port = int(server.sockets[0].getsockname()[1])
                logger.info(
                    "node %s: interface %d listening on %s:%d",
                    self._node_id,
                    iface.config.qkdi_id,
                    iface.config.listen_host,
                    iface.bound_port,
                )
        except OSError as exc:
            await self._close_servers()
            raise DriverError(f"node {self._node_id}: cannot open channel endpoint: {exc}") from exc
        self._started = True
        self._perf_task = self._spawn(self._perf_loop(), f"{self._node_id}-perf")

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for link in self._links.values():
            link.enabled = False
            if link.session is not None:
                self._end_session(link, link.session, REASON_STOPPED, REASON_PEER_STOPPED)
            link.wake.set()
        await self._close_servers()
        owners = [link.task for link in self._links.values() if link.task is not None]
        if owners:
            await asyncio.wait(owners, timeout=FLUSH_TIMEOUT_S + 1.0)
        for session in list(self._sessions):
            await session.aclose()
        while self._tasks:
            for task in list(self._tasks):
                await _cancel_and_wait(task)
                self._tasks.discard(task)
        self._keystore.close()
        self._started = False
        logger.info("node %s: emulated QKD driver stopped", self._node_id)

    async def _close_servers(self) -> None:
        for iface in self._ifaces.values():
            if iface.server is not None:
                iface.server.close()
        for iface in self._ifaces.values():
            if iface.server is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(iface.server.wait_closed(), FLUSH_TIMEOUT_S)
                iface.server = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("node %s: task %s failed", self._node_id, task.get_name(), exc_info=task.exception())

    # -- interfaces ---------------------------------------------------------------------------------

    def _iface(self, qkdi_id: int) -> _Interface:
        iface = self._ifaces.get(qkdi_id)
        if iface is None:
            raise DriverError(f"node {self._node_id}: no interface {qkdi_id}")
        return iface

    def interfaces(self) -> list[InterfaceInfo]:
        return [
            InterfaceInfo(
                qkdi_id=i.config.qkdi_id,
                model=i.config.model,
                technology="DV-QKD",
                role_support=i.config.role_support,
                wavelength_range_nm=_BAND_RANGE_NM[i.config.band_enum],
                max_absorption_db=self._max_absorption_db,
                device=i.config.listen_host,
                port=i.bound_port if i.bound_port is not None else i.config.listen_port,
            )
            for i in sorted(self._ifaces.values(), key=lambda i: i.config.qkdi_id)
        ]

    def interface_state(self, qkdi_id: int) -> InterfaceState:
        iface = self._iface(qkdi_id)
        return InterfaceState.FAILED if FaultKind.DETECTOR_FAILURE in iface.faults else InterfaceState.ENABLED

    def bound_port(self, qkdi_id: int) -> int:
        """The TCP port the interface's channel endpoint listens on (after :meth:`start`)."""
        iface = self._iface(qkdi_id)
        if iface.bound_port is None:
            raise DriverError(
                f"node {self._node_id}: interface {qkdi_id} is not listening (driver not started)"
            )
        return iface.bound_port

    def fibre(self, qkdi_id: int) -> FibreInfo | None:
        """The emulated span behind an interface (None for an unknown interface)."""
        iface = self._ifaces.get(qkdi_id)
        if iface is None:
            return None
        cfg = iface.config
        if iface.peer_host is None or iface.peer_port is None:
            peer = ""
        elif ":" in iface.peer_host:
            peer = f"[{iface.peer_host}]:{iface.peer_port}"
        else:
            peer = f"{iface.peer_host}:{iface.peer_port}"
        return FibreInfo(cfg.length_km, cfg.band_enum.value, cfg.extra_loss_db, cfg.loss_db, peer)

    def set_peer(self, qkdi_id: int, host: str, port: int) -> None:
        """Set the channel endpoint of the peer interface (used when this end transmits)."""
        iface = self._iface(qkdi_id)
        if not host or not 1 <= port <= 65535:
            raise DriverError(f"node {self._node_id}: interface {qkdi_id}: invalid peer {host!r}:{port!r}")
        iface.peer_host, iface.peer_port = host, port

    # -- links --------------------------------------------------------------------------------------

    def _link(self, qkdl_id: str) -> _Link:
        link = self._links.get(qkdl_id)
        if link is None:
            raise DriverError(f"node {self._node_id}: no link {qkdl_id}")
        return link

    def _transmits(self, spec: LinkSpec) -> bool:
        if spec.role is LinkRole.TRANSCEIVER:
            # Both ends may say TRANSCEIVER: the node with the smaller id transmits (deterministic).
            return self._node_id < spec.remote_qkdn_id
        return spec.role is LinkRole.TRANSMITTER

    async def create_link(self, spec: LinkSpec) -> None:
        where = f"node {self._node_id}: link {spec.qkdl_id}"
        existing = self._links.get(spec.qkdl_id)
        if existing is not None:
            if existing.spec == spec:
                return
            raise DriverError(f"{where} already exists with another configuration")
        if not spec.qkdl_id:
            raise DriverError(f"node {self._node_id}: link id must not be empty")
        if self._stopping:
            raise DriverError(f"{where}: driver stopped")
        iface = self._iface(spec.local_qkdi_id)
        if iface.link_id is not None:
            raise DriverError(f"{where}: interface {spec.local_qkdi_id} already carries link {iface.link_id}")
        if not spec.remote_qkdn_id or spec.remote_qkdn_id == self._node_id:
            raise DriverError(f"{where}: remote node {spec.remote_qkdn_id!r} must be another node")
        support = iface.config.role_support
        transmits = self._transmits(spec)
        wanted = LinkRole.TRANSMITTER if transmits else LinkRole.RECEIVER
        if support is not LinkRole.TRANSCEIVER and support is not wanted:
            raise DriverError(
                f"{where}: role {spec.role} needs a {wanted} on interface {spec.local_qkdi_id},"
                f" which supports {support} only"
            )
        # spec.wavelength_nm is reported, not checked: the ETSI text is ambiguous (the leaf says nm,
        # its type a WDM channel number) and the emulated interface is not tunable.
        self._links[spec.qkdl_id] = _Link(spec, iface, transmits)
        iface.link_id = spec.qkdl_id
        logger.info(
            "node %s: link %s created on interface %d (%s, peer %s)",
            self._node_id,
            spec.qkdl_id,
            spec.local_qkdi_id,
            wanted,
            spec.remote_qkdn_id,
        )

    async def enable_link(self, qkdl_id: str) -> None:
        link = self._link(qkdl_id)
        if link.enabled:
            return
        if not self._started:
            raise DriverError(f"node {self._node_id}: link {qkdl_id}: driver not started")
        iface = link.iface
        if link.transmits and (iface.peer_host is None or iface.peer_port is None):
            raise DriverError(
                f"node {self._node_id}: link {qkdl_id}: interface {iface.config.qkdi_id} has no peer address"
            )
        link.enabled = True
        if link.transmits:
            link.task = self._spawn(self._transmit_loop(link), f"{self._node_id}-{qkdl_id}-tx")
        logger.info("node %s: link %s enabled", self._node_id, qkdl_id)

    async def disable_link(self, qkdl_id: str) -> None:
        link = self._link(qkdl_id)
        if not link.enabled:
            return
        link.enabled = False
        session = link.session
        if session is not None:
            self._end_session(link, session, REASON_DISABLED, REASON_PEER_DISABLED)
        link.wake.set()
        task, link.task = link.task, None
        if task is not None:
            # The transmitter loop sees the link disabled and exits after flushing the farewell.
            await asyncio.wait({task}, timeout=FLUSH_TIMEOUT_S + 1.0)
            await _cancel_and_wait(task)
        if session is not None:
            await session.wait_done(FLUSH_TIMEOUT_S + 1.0)
        link.qber = None
        link.mu = None
        link.skr_bps = 0.0
        logger.info("node %s: link %s disabled", self._node_id, qkdl_id)

    async def remove_link(self, qkdl_id: str) -> None:
        link = self._link(qkdl_id)
        await self.disable_link(qkdl_id)
        if self._links.get(qkdl_id) is not link:  # removed concurrently while we were disabling it
            return
        del self._links[qkdl_id]
        link.iface.link_id = None
        if link.pending:
            logger.info(
                "node %s: link %s removed with %d unacknowledged block(s) discarded",
                self._node_id,
                qkdl_id,
                len(link.pending),
            )
        link.pending.clear()
        logger.info("node %s: link %s removed", self._node_id, qkdl_id)

    def link_state(self, qkdl_id: str) -> LinkState:
        link = self._link(qkdl_id)
        if not link.enabled:
            return LinkState.OFF
        if link.session is not None and link.producing:
            return LinkState.ACTIVE
        return LinkState.PENDING

    def performance(self, qkdl_id: str) -> LinkPerformance:
        link = self._link(qkdl_id)
        try:
            stored = self._keystore.stored_bits(qkdl_id)
        except KeyStoreError as exc:
            raise DriverError(f"node {self._node_id}: link {qkdl_id}: {exc}") from exc
        cfg = link.iface.config
        return LinkPerformance(
            skr_bps=round(link.skr_bps) if link.producing else 0,
            eskr_bps=round(self._eskr_bps(link)),
            expected_consumption_bps=0,
            qber=link.qber,
            stored_key_bits=stored,
            length_km=cfg.length_km,
            band=cfg.band_enum.value,
            loss_db=cfg.loss_db,
            mu=link.mu,
        )

    def _eskr_bps(self, link: _Link) -> float:
        now = self._clock()
        while link.samples and link.samples[0][0] < now - ESKR_WINDOW_S:
            link.samples.popleft()
        window = min(ESKR_WINDOW_S, now - link.window_start)
        if window <= 0.0:
            return 0.0
        return sum(bits for _, bits in link.samples) / window

    def _record_stored(self, link: _Link, nbits: int) -> None:
        link.samples.append((self._clock(), nbits))

    # -- events -------------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[DriverEvent], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, event: DriverEvent) -> None:
        if self._stopping:
            return
        logger.debug(
            "node %s: event %s link=%s iface=%s %s",
            self._node_id,
            event.kind,
            event.qkdl_id,
            event.qkdi_id,
            event.reason,
        )
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                logger.exception("node %s: event subscriber %r failed", self._node_id, callback)

    def _set_producing(self, link: _Link, producing: bool, reason: str) -> None:
        if producing == link.producing:
            return
        link.producing = producing
        qkdl_id = link.spec.qkdl_id
        if producing:
            link.samples.clear()
            link.window_start = self._clock()
            logger.info("node %s: link %s up", self._node_id, qkdl_id)
            self._emit(
                DriverEvent(
                    DriverEventKind.LINK_UP,
                    reason="quantum channel up",
                    qkdl_id=qkdl_id,
                    qkdi_id=link.spec.local_qkdi_id,
                )
            )
        else:
            level = logging.INFO if reason in (REASON_DISABLED, REASON_STOPPED) else logging.WARNING
            logger.log(level, "node %s: link %s down: %s", self._node_id, qkdl_id, reason)
            self._emit(
                DriverEvent(
                    DriverEventKind.LINK_DOWN, reason=reason, qkdl_id=qkdl_id, qkdi_id=link.spec.local_qkdi_id
                )
            )

    async def _perf_loop(self) -> None:
        while True:
            await asyncio.sleep(self._perf_interval_s)
            for qkdl_id, link in list(self._links.items()):
                if not link.enabled:
                    continue
                try:
                    perf = self.performance(qkdl_id)
                except DriverError as exc:
                    logger.warning("node %s: link %s: no performance: %s", self._node_id, qkdl_id, exc)
                    continue
                self._emit(
                    DriverEvent(
                        DriverEventKind.LINK_PERF,
                        reason="periodic",
                        qkdl_id=qkdl_id,
                        qkdi_id=link.spec.local_qkdi_id,
                        performance=perf,
                    )
                )

    # -- faults -------------------------------------------------------------------------------------

    async def set_fault(
        self,
        kind: FaultKind,
        on: bool,
        *,
        qkdl_id: str | None = None,
        qkdi_id: int | None = None,
        level: float = 1.0,
    ) -> None:
        """Inject or clear a fault on a link or an interface (exactly one of ``qkdl_id``, ``qkdi_id``).

        ``DETECTOR_FAILURE`` given a link applies to the link's interface. ``level`` matters for
        ``EAVESDROPPER`` only (fraction of pulses intercepted, in (0, 1]).
        """
        kind = FaultKind(kind)
        if (qkdl_id is None) == (qkdi_id is None):
            raise DriverError(f"node {self._node_id}: a fault needs exactly one of qkdl_id and qkdi_id")
        if on and not (math.isfinite(level) and 0.0 < level <= 1.0):
            raise DriverError(f"node {self._node_id}: fault level must be in (0, 1], got {level!r}")
        scope: dict[FaultKind, float]
        if qkdl_id is not None:
            link = self._link(qkdl_id)
            iface = link.iface
            scope = iface.faults if kind is FaultKind.DETECTOR_FAILURE else link.faults
            where = f"link {qkdl_id}"
        elif qkdi_id is not None:
            iface = self._iface(qkdi_id)
            scope = iface.faults
            where = f"interface {qkdi_id}"
        else:  # pragma: no cover - excluded by the check above
            raise DriverError(f"node {self._node_id}: a fault needs a link or an interface")
        was_failed = FaultKind.DETECTOR_FAILURE in iface.faults
        if on:
            scope[kind] = level
        else:
            scope.pop(kind, None)
        logger.warning(
            "node %s: fault %s %s on %s (level %s)",
            self._node_id,
            kind,
            "set" if on else "cleared",
            where,
            level,
        )
        failed = FaultKind.DETECTOR_FAILURE in iface.faults
        if failed != was_failed:
            self._emit(
                DriverEvent(
                    DriverEventKind.INTERFACE_DOWN if failed else DriverEventKind.INTERFACE_UP,
                    reason=REASON_DETECTOR_FAILURE if failed else "detector restored",
                    qkdi_id=iface.config.qkdi_id,
                )
            )
        affected = self._links.get(iface.link_id) if iface.link_id is not None else None
        if affected is None:
            return
        session = affected.session
        blocked = self._blocking_reason(affected)
        if blocked is not None and session is not None:
            self._end_session(affected, session, blocked, blocked)
        elif session is not None and not affected.transmits and kind is FaultKind.EAVESDROPPER:
            session.send({"t": "fault", "eve": self._local_eve(affected)})
        affected.wake.set()

    def faults(self, qkdl_id: str) -> dict[FaultKind, float]:
        """Faults on the link, on its interface, and an eavesdropper reported by the peer."""
        link = self._link(qkdl_id)
        merged = dict(link.iface.faults)
        for kind, level in link.faults.items():
            merged[kind] = max(level, merged.get(kind, 0.0))
        if link.remote_eve > 0.0:
            merged[FaultKind.EAVESDROPPER] = max(link.remote_eve, merged.get(FaultKind.EAVESDROPPER, 0.0))
        return merged

    def _local_eve(self, link: _Link) -> float:
        return max(
            link.faults.get(FaultKind.EAVESDROPPER, 0.0), link.iface.faults.get(FaultKind.EAVESDROPPER, 0.0)
        )

    def _blocking_reason(self, link: _Link) -> str | None:
        """Why this end cannot run the channel now (a local fault), or None."""
        if FaultKind.DETECTOR_FAILURE in link.iface.faults:
            return REASON_DETECTOR_FAILURE
        if FaultKind.FIBRE_CUT in link.iface.faults or FaultKind.FIBRE_CUT in link.faults:
            return REASON_FIBRE_CUT
        return None

    # -- sessions -----------------------------------------------------------------------------------

    def _end_session(self, link: _Link, session: _Session, reason: str, peer_reason: str | None) -> None:
        """Close a session once: tell the peer ``peer_reason`` if any; the link goes down for ``reason``."""
        if session.closed.is_set():
            return
        session.shutdown({"t": "down", "reason": peer_reason} if peer_reason is not None else None)
        if link.session is session:
            link.session = None
            link.skr_bps = 0.0
            link.qber = None
            link.mu = None
            self._set_producing(link, False, reason)
        logger.info("node %s: link %s: channel closed: %s", self._node_id, link.spec.qkdl_id, reason)

    def _new_session(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Session:
        def on_lost(session: _Session, reason: str, detail: str | None) -> None:
            if detail is not None:
                # Tell the peer why, then go down locally with the detail in the reason.
                self._end_session(link, session, f"{reason}: {detail}", f"{reason}: {detail}")
            else:
                self._end_session(link, session, reason, None)

        session = _Session(
            f"{self._node_id}/{link.spec.qkdl_id}",
            reader,
            writer,
            delay_s=propagation_delay_s(link.iface.config.length_km),
            idle_timeout_s=self._idle_timeout_s,
            spawn=self._spawn,
            on_message=lambda s, msg: self._on_message(link, s, msg),
            on_lost=on_lost,
        )
        self._sessions.add(session)
        return session

    async def _release_session(self, session: _Session) -> None:
        try:
            await session.aclose()
        finally:
            self._sessions.discard(session)

    def _on_message(self, link: _Link, session: _Session, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "down":
            reason = str(_field(msg, "reason", str))[:200]
            self._end_session(link, session, reason, None)
        elif link.transmits:
            self._on_transmitter_message(link, session, kind, msg)
        else:
            self._on_receiver_message(link, session, kind, msg)

    def _on_transmitter_message(self, link: _Link, session: _Session, kind: str, msg: dict[str, Any]) -> None:
        if kind == "ack":
            block_id = _field(msg, "id", str)
            key = link.pending.pop(block_id, None)
            if key is None:
                logger.debug("node %s: link %s: ack for unknown block", self._node_id, link.spec.qkdl_id)
                return
            if self._store(link, session, block_id, key):
                self._record_stored(link, len(key) * 8)
        elif kind == "fault":
            level = float(_field(msg, "eve", (int, float)))
            link.remote_eve = min(1.0, max(0.0, level))
        elif kind == "hb":
            return
        else:
            raise _ProtocolError(f"unexpected message {_short(kind)} at the transmitter")

    def _on_receiver_message(self, link: _Link, session: _Session, kind: str, msg: dict[str, Any]) -> None:
        if kind == "block":
            block_id = _field(msg, "id", str)
            if not 0 < len(block_id) <= 64:
                raise _ProtocolError("bad block id")
            try:
                key = base64.b64decode(_field(msg, "key", str), validate=True)
            except binascii.Error:
                raise _ProtocolError("block key is not base64") from None
            if not 0 < len(key) <= MAX_BLOCK_BYTES:
                raise _ProtocolError("bad block size")
            if self._store(link, session, block_id, key):
                self._record_stored(link, len(key) * 8)
            session.send({"t": "ack", "id": block_id})
        elif kind == "status":
            producing = bool(_field(msg, "producing", bool))
            skr = float(_field(msg, "skr_bps", (int, float)))
            qber = msg.get("qber")
            link.skr_bps = max(0.0, skr) if producing else 0.0
            link.qber = _optional_float(qber)
            link.mu = _optional_float(msg.get("mu"))
            self._set_producing(link, producing, str(msg.get("reason", ""))[:200])
            session.send({"t": "hb"})
        else:
            raise _ProtocolError(f"unexpected message {_short(kind)} at the receiver")

    def _store(self, link: _Link, session: _Session, block_id: str, key: bytes) -> bool:
        """Store a block; on failure raise the alarm and close the channel. True if newly stored."""
        try:
            return self._keystore.add_block(link.spec.qkdl_id, block_id, key)
        except KeyStoreError as exc:
            logger.error("node %s: link %s: cannot store key: %s", self._node_id, link.spec.qkdl_id, exc)
            self._emit(
                DriverEvent(
                    DriverEventKind.ALARM,
                    reason=f"{REASON_KEYSTORE}: {exc}",
                    qkdl_id=link.spec.qkdl_id,
                    qkdi_id=link.spec.local_qkdi_id,
                )
            )
            self._end_session(link, session, REASON_KEYSTORE, REASON_KEYSTORE)
            return False

    # -- receiver side ------------------------------------------------------------------------------

    async def _serve(
        self, iface: _Interface, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        session: _Session | None = None
        try:
            if self._stopping:
                return
            try:
                hello = _decode(await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT_S))
            except (TimeoutError, OSError, ValueError, _ProtocolError) as exc:
                logger.info(
                    "node %s: interface %d: bad handshake from peer: %s",
                    self._node_id,
                    iface.config.qkdi_id,
                    exc,
                )
                with contextlib.suppress(OSError):
                    writer.write(_encode({"t": "reject", "reason": "bad handshake"}))
                return
            verdict = self._check_hello(iface, hello)
            if isinstance(verdict, str):
                logger.info(
                    "node %s: interface %d: channel for link %s rejected: %s",
                    self._node_id,
                    iface.config.qkdi_id,
                    _short(hello.get("qkdl_id")),
                    verdict,
                )
                with contextlib.suppress(OSError):
                    writer.write(_encode({"t": "reject", "reason": verdict}))
                    await asyncio.wait_for(writer.drain(), HANDSHAKE_TIMEOUT_S)
                return
            link = verdict
            if link.session is not None:
                self._end_session(link, link.session, f"{REASON_CHANNEL_LOST} (peer reconnected)", None)
            session = self._new_session(link, reader, writer)
            link.session = session
            link.qber = None
            session.send({"t": "accept", "v": PROTOCOL_VERSION, "eve": self._local_eve(link)})
            session.start()
            logger.info("node %s: link %s: channel accepted", self._node_id, link.spec.qkdl_id)
            await session.closed.wait()
        except (TimeoutError, OSError) as exc:
            logger.debug(
                "node %s: interface %d: connection error: %s", self._node_id, iface.config.qkdi_id, exc
            )
        finally:
            if session is not None:
                await self._release_session(session)
            else:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), FLUSH_TIMEOUT_S)
            if task is not None:
                self._tasks.discard(task)

    def _check_hello(self, iface: _Interface, hello: dict[str, Any]) -> _Link | str:
        """The link a handshake asks for if it may be accepted, else the reason for rejecting it."""
        if hello.get("t") != "hello" or hello.get("v") != PROTOCOL_VERSION:
            return "bad handshake or unsupported protocol version"
        qkdl_id, src_qkdn = hello.get("qkdl_id"), hello.get("src_qkdn")
        if not isinstance(qkdl_id, str) or not isinstance(src_qkdn, str) or len(qkdl_id) > 256:
            return "bad handshake"
        if hello.get("dst_qkdn") != self._node_id:
            return f"this is node {self._node_id}, not {_short(hello.get('dst_qkdn'))}"
        link = self._links.get(qkdl_id)
        if link is None or link.iface is not iface:
            return f"link {qkdl_id} not configured on interface {iface.config.qkdi_id}"
        if not link.enabled:
            return f"link {qkdl_id} not enabled"
        if link.transmits:
            return f"link {qkdl_id} is a transmitter here too"
        if link.spec.remote_qkdn_id != src_qkdn:
            return f"link {qkdl_id} expects peer node {link.spec.remote_qkdn_id}"
        if link.spec.remote_qkdi_id is not None and hello.get("src_qkdi") != link.spec.remote_qkdi_id:
            return f"link {qkdl_id} expects peer interface {link.spec.remote_qkdi_id}"
        dst_qkdi = hello.get("dst_qkdi")
        if dst_qkdi is not None and dst_qkdi != iface.config.qkdi_id:
            return f"link {qkdl_id}: this is interface {iface.config.qkdi_id}, not {_short(dst_qkdi)}"
        blocked = self._blocking_reason(link)
        if blocked is not None:
            return blocked
        return link

    # -- transmitter side ---------------------------------------------------------------------------

    async def _transmit_loop(self, link: _Link) -> None:
        backoff = self._reconnect_min_s
        qkdl_id = link.spec.qkdl_id
        while link.enabled and not self._stopping:
            link.wake.clear()
            blocked = self._blocking_reason(link)
            if blocked is not None:
                link.wait_reason = blocked
                await link.wake.wait()
                continue
            try:
                session = await self._connect(link)
            except _Rejected as exc:
                if exc.reason != link.wait_reason:
                    logger.info(
                        "node %s: link %s: peer rejected channel: %s", self._node_id, qkdl_id, exc.reason
                    )
                link.wait_reason = exc.reason
            except (OSError, TimeoutError, ValueError, _ProtocolError) as exc:
                if link.wait_reason != "peer unreachable":
                    logger.info("node %s: link %s: cannot reach peer: %s", self._node_id, qkdl_id, exc)
                link.wait_reason = "peer unreachable"
            except Exception:
                logger.exception("node %s: link %s: channel setup failed", self._node_id, qkdl_id)
                link.wait_reason = "internal error"
            else:
                backoff = self._reconnect_min_s
                link.wait_reason = ""
                try:
                    await self._run_transmitter(link, session)
                finally:
                    await self._release_session(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.wake.wait(), backoff)
            backoff = min(backoff * 2.0, self._reconnect_max_s)

    async def _connect(self, link: _Link) -> _Session:
        iface = link.iface
        if iface.peer_host is None or iface.peer_port is None:
            raise _Rejected(f"interface {iface.config.qkdi_id} has no peer address")
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop a connection that completes
        # just as the task is cancelled, leaking its socket.
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                iface.peer_host, iface.peer_port, limit=MAX_LINE_BYTES
            )
        try:
            writer.write(
                _encode(
                    {
                        "t": "hello",
                        "v": PROTOCOL_VERSION,
                        "qkdl_id": link.spec.qkdl_id,
                        "src_qkdn": self._node_id,
                        "src_qkdi": iface.config.qkdi_id,
                        "dst_qkdn": link.spec.remote_qkdn_id,
                        "dst_qkdi": link.spec.remote_qkdi_id,
                    }
                )
            )
            await asyncio.wait_for(writer.drain(), HANDSHAKE_TIMEOUT_S)
            reply = _decode(await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT_S))
            if reply["t"] == "reject":
                raise _Rejected(str(reply.get("reason", "rejected"))[:200])
            if reply["t"] != "accept" or reply.get("v") != PROTOCOL_VERSION:
                raise _ProtocolError("unexpected handshake reply")
            link.remote_eve = min(1.0, max(0.0, float(_field(reply, "eve", (int, float)))))
        except BaseException:
            writer.close()
            raise
        if not link.enabled or self._stopping or self._blocking_reason(link) is not None:
            writer.close()
            raise _Rejected("link changed during handshake")
        session = self._new_session(link, reader, writer)
        link.session = session
        session.start()
        return session

    async def _run_transmitter(self, link: _Link, session: _Session) -> None:
        logger.info("node %s: link %s: channel connected", self._node_id, link.spec.qkdl_id)
        link.last_tick = self._clock()
        link.carry_bits = 0.0
        for block_id, key in link.pending.items():
            session.send({"t": "block", "id": block_id, "key": base64.b64encode(key).decode()})
        self._tick(link, session)
        while not session.closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.closed.wait(), self._tick_s)
            if not session.closed.is_set():
                self._tick(link, session)

    def _tick(self, link: _Link, session: _Session) -> None:
        """One step of the transmitter: eavesdropper ramp, model, key block, status to the receiver."""
        now = self._clock()
        dt = max(0.0, now - link.last_tick)
        link.last_tick = now
        target = 0.25 * max(self._local_eve(link), link.remote_eve)
        if link.qber_extra < target:
            link.qber_extra = min(target, link.qber_extra + EAVESDROPPER_RAMP_STEP)
        elif link.qber_extra > target:
            link.qber_extra = max(target, link.qber_extra - EAVESDROPPER_RAMP_STEP)
        budget = link_budget(link.iface.config.loss_db, self._device, link.qber_extra)
        producing = budget.rate_bps > 0.0
        reason = "" if producing else (REASON_EAVESDROPPER if link.qber_extra > 0.0 else REASON_NO_KEY)
        link.skr_bps = budget.rate_bps
        link.qber = budget.e_mu
        link.mu = budget.mu
        self._set_producing(link, producing, reason)
        if producing and len(link.pending) < MAX_PENDING_BLOCKS:
            link.carry_bits += budget.rate_bps * dt
            nbytes = int(link.carry_bits // 8)
            link.carry_bits -= 8 * nbytes
            while nbytes > 0:
                size = min(nbytes, MAX_BLOCK_BYTES)
                nbytes -= size
                block_id = self._new_block_id()
                key = secrets.token_bytes(size)
                link.pending[block_id] = key
                session.send({"t": "block", "id": block_id, "key": base64.b64encode(key).decode()})
        else:
            link.carry_bits = 0.0
        session.send(
            {
                "t": "status",
                "producing": producing,
                "reason": reason,
                "skr_bps": budget.rate_bps,
                "qber": budget.e_mu,
                "mu": budget.mu,
            }
        )

    def _new_block_id(self) -> str:
        """A block id unique to this driver that sorts in generation order (wall-clock ns + random)."""
        self._last_block_ns = max(self._last_block_ns + 1, time.time_ns())
        return f"{self._last_block_ns:020d}-{secrets.token_hex(4)}"

    def __repr__(self) -> str:
        return (
            f"<EmulatedQkdDriver node={self._node_id} interfaces={len(self._ifaces)} links={len(self._links)}"
            f" started={self._started}>"
        )
