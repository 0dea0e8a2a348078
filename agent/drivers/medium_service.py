"""The quantum medium of a lab as a network service: ``qsdn medium run --listen HOST:PORT [--seed N]``.

In a real lab the photons, fibres, heralding stations and the joint states of the memories are not in
any controller's software. This service is that part of an emulated lab: one
:class:`~agent.drivers.quantum_medium.QuantumMedium` on the real-time
:class:`~agent.drivers.clock.AsyncioClock`, reached by each agent's entanglement driver
(:mod:`agent.drivers.entanglement_driver`) over TCP. It also
carries the classical messages between the nodes' quantum devices, delayed by the fibre propagation
``L/c`` summed over the hops between the two nodes (the classical channels of the chain), and runs each
session's round synchroniser (:class:`~agent.drivers.emulated_entanglement.RoundSync`, the ideal slot
controller of ``generation="rounds"``).

Wire protocol (version 1)
-------------------------
Frames: a 4-byte big-endian length ``N`` (1 <= N <= 1 MiB) then ``N`` bytes of UTF-8 JSON, one object.
A client sends requests ``{"op": ..., "id": n, ...}``; every request gets one reply
``{"id": n, "ok": true, "result": {...}}`` or ``{"id": n, "ok": false, "error": "..."}``, in request order.
The medium also pushes events ``{"event": ..., ...}`` (no ``id``). The first request must be ``hello``;
a connection acts for its node only (slots are that node's memory slots).

=============  ==============================================================  ===========================
op             fields                                                          result
=============  ==============================================================  ===========================
hello          node, memory {coherence_time_s, dephasing_time_s (null: none),  medium, version
               swap_success}
hop            session, hop (index on path), path [qkdn_id...], link_id,        p, attempt_s, fidelity,
               length_km, loss_db (null: 0.2 dB/km), modes, heralding,         run
               initial_fidelity, alpha (single-click)
leave          session, slots [...]: withdraw offers, reset those slots        {}
request        session, hop, slot: offer a free slot to the hop's station      {}
pauli          slot, pauli (0..3: I, Z, X, Y)                                  {}
discard        slot                                                            {}
bsm            slot1, slot2: Bell-state measurement (frees both)               ok, bits
measure        slot, basis ("Z" or "X") (frees the slot)                       outcome
purify         keep, sacrifice, protocol ("bbpssw" or "dejmps")                bit
fidelity       slot: the emulator's fidelity monitor (ground truth, no         fidelity (null if no pair)
               outcome information); stands in for a node's estimation
send           session, dst, body: a classical message to node ``dst``         {}
round          session, round, ok: a repeater's round report                   {}
=============  ==============================================================  ===========================

Events: ``herald`` {session, hop, label [hop, seq], slot, partner, partner_slot, frame};
``message`` {session, src, body} (delivered ``L/c`` after it was sent, FIFO per pair of nodes);
``round`` {session, round}.

Both ends of a hop register it (``hop``) with their own configuration of the elementary link; the first
registration creates the station, the second must describe the same link (same ``link_id`` and
physics), or it is refused naming the difference: each node's session names the elementary link of
each of its hops (``prev_link_id``/``next_link_id``, or the only link to that neighbour), and the two
ends of a hop name the same one. ``p`` is Barrett-Kok ``eta_A eta_B / 2`` over the link's loss
(S. D. Barrett, P. Kok, PRA 71, 060310, 2005), or ``2 alpha eta`` single-click, multiplexed over
``modes``; ``attempt_s = L/c``. A session's stations and synchroniser go when its last node leaves.

Run nonce: when a session starts at the medium (its first ``hop``), its slot controller chooses a run
nonce (the milliseconds of the clock in 11 hexadecimal digits, then 8 random ones) and returns it as
``run`` in every ``hop`` answer while the session lasts, so all its nodes share it. Pair labels
(``[hop, sequence]``) restart with a new run; a node that leaves and comes back while the others stay
gets the same run and labels that go on. The ends name delivered pairs ``<run>-<hop>-<sequence>``.

Message bodies are opaque to the medium: :func:`encode_message` / :func:`decode_message` are the codec
the nodes use (the engines' dataclasses with a type tag). Only the addressed node receives a message, so a
repeater never sees what the two ends say to each other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import logging
import math
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.drivers import bbm92 as _bbm92
from agent.drivers import emulated_entanglement as _ent
from agent.drivers.clock import AsyncioClock, TimerHandle
from agent.drivers.emulated_entanglement import RoundSync
from agent.drivers.quantum_medium import (
    Basis,
    Herald,
    HopSpec,
    MemorySpec,
    PurificationProtocol,
    QuantumMedium,
)
from qsdn.errors import ConfigError, DriverError, QsdnError
from qsdn.physics.entanglement import (
    FIBRE_LIGHT_SPEED_M_S,
    attempt_time_s,
    heralding_probability,
    multiplexed_probability,
    single_click,
    werner,
)
from qsdn.physics.loss import transmittance

__all__ = [
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "FrameError",
    "LinkPhysics",
    "MediumServer",
    "decode_message",
    "encode_frame",
    "encode_message",
    "link_physics",
    "run_medium",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20
_HEADER = struct.Struct(">I")
#: C-band attenuation for links configured with a length but no loss (SYSTEM.md section 4).
DEFAULT_ALPHA_DB_KM = 0.2


# -- framing (sans-I/O) -----------------------------------------------------------------------------------


class FrameError(DriverError):
    """A frame that is not a length-prefixed JSON object within the size limit."""


def encode_frame(obj: dict[str, Any]) -> bytes:
    """One frame: 4-byte big-endian length, then compact UTF-8 JSON."""
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(data)) + data


class FrameDecoder:
    """Feed bytes, get the complete frames' objects; the size limit is enforced before buffering a body."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self._buf)
            if n == 0 or n > self._max:
                raise FrameError(f"frame length {n} is not within 1..{self._max}")
            if len(self._buf) < _HEADER.size + n:
                break
            body = bytes(self._buf[_HEADER.size : _HEADER.size + n])
            del self._buf[: _HEADER.size + n]
            try:
                obj = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise FrameError(f"frame is not UTF-8 JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise FrameError("frame is not a JSON object")
            out.append(obj)
        return out


# -- message codec (used by the nodes; opaque to the medium) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRun:
    """The run nonce of a ``bbm92-key`` session: the leader end sends it before every BBM92 block, and
    both ends put it in the block ids (agent/drivers/entanglement_driver.py)."""

    nonce: str


_MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        KeyRun,
        _ent.SwapOutcome,
        _ent.Discarded,
        _ent.PurifyRequest,
        _ent.PurifyBit,
        _bbm92.BasisAnnounce,
        _bbm92.BlockStart,
        _bbm92.BlockSample,
        _bbm92.ParityQuery,
        _bbm92.ParityAnswer,
        _bbm92.Verify,
        _bbm92.Confirm,
    )
}


def _enc(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$b": base64.b64encode(value).decode()}
    if isinstance(value, tuple | list):
        return [_enc(v) for v in value]
    if isinstance(value, Basis):
        return value.value
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise FrameError(f"cannot encode a {type(value).__name__} in a message")


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_dec(v) for v in value)
    if isinstance(value, dict):
        if set(value) == {"$b"} and isinstance(value["$b"], str):
            return base64.b64decode(value["$b"], validate=True)
        raise FrameError("unexpected object in a message field")
    return value


def encode_message(message: object) -> dict[str, Any]:
    """A node-to-node message as JSON data: ``{"t": type name, "f": {field: value}}``."""
    name = type(message).__name__
    if _MESSAGE_TYPES.get(name) is not type(message) or not dataclasses.is_dataclass(message):
        raise FrameError(f"{name} is not a message of the entanglement protocol")
    fields = {f.name: _enc(getattr(message, f.name)) for f in dataclasses.fields(message)}
    return {"t": name, "f": fields}


def decode_message(data: Any) -> object:
    """The inverse of :func:`encode_message`; :class:`FrameError` names what is wrong."""
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("t"), str)
        or not isinstance(data.get("f"), dict)
    ):
        raise FrameError("a message is {'t': type, 'f': fields}")
    cls = _MESSAGE_TYPES.get(data["t"])
    if cls is None:
        raise FrameError(f"unknown message type {data['t'][:40]!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    given = data["f"]
    if set(given) != names:
        raise FrameError(f"{data['t']}: fields {sorted(given)} are not {sorted(names)}")
    values = {k: _dec(v) for k, v in given.items()}
    if "basis" in values:
        try:
            values["basis"] = Basis(values["basis"])
        except ValueError:
            raise FrameError(f"{data['t']}: basis {values['basis']!r} is not Z or X") from None
    try:
        return cls(**values)
    except TypeError as exc:
        raise FrameError(f"{data['t']}: {exc}") from None


# -- link physics ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkPhysics:
    """An elementary link as both of its ends configure it (the ``hop`` registration)."""

    link_id: str
    length_km: float
    loss_db: float | None
    modes: int
    heralding: str
    initial_fidelity: float
    alpha: float | None = None

    def probability(self) -> tuple[float, float, float]:
        """(success probability per attempt over all modes, attempt time, heralded fidelity)."""
        loss = self.loss_db if self.loss_db is not None else DEFAULT_ALPHA_DB_KM * self.length_km
        eta = transmittance(loss)  # eta_A eta_B: the two halves of the link to the station
        fidelity = self.initial_fidelity
        if self.heralding == "single-click":
            if self.alpha is None:
                raise ConfigError(f"elementary link {self.link_id}: single-click heralding needs alpha")
            p, fidelity = single_click(self.alpha, math.sqrt(eta))
        elif self.heralding in ("barrett-kok", "spdc"):
            p = heralding_probability(math.sqrt(eta), math.sqrt(eta))
        else:
            raise ConfigError(f"elementary link {self.link_id}: unknown heralding {self.heralding!r}")
        return multiplexed_probability(p, self.modes), attempt_time_s(self.length_km), fidelity


def link_physics(req: dict[str, Any]) -> LinkPhysics:
    def num(key: str, *, optional: bool = False) -> float | None:
        v = req.get(key)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"hop: {key} must be a non-negative number")
        return float(v)

    modes = req.get("modes", 1)
    if isinstance(modes, bool) or not isinstance(modes, int) or modes < 1:
        raise ConfigError("hop: modes must be a positive integer")
    fid = num("initial_fidelity")
    assert fid is not None
    if not 0.25 <= fid <= 1.0:
        raise ConfigError("hop: initial_fidelity must be within [0.25, 1]")
    length = num("length_km")
    assert length is not None
    return LinkPhysics(
        link_id=_str(req, "link_id"),
        length_km=length,
        loss_db=num("loss_db", optional=True),
        modes=modes,
        heralding=_str(req, "heralding"),
        initial_fidelity=fid,
        alpha=num("alpha", optional=True),
    )


def _str(req: dict[str, Any], key: str) -> str:
    v = req.get(key)
    if not isinstance(v, str) or not v or len(v) > 128:
        raise ConfigError(f"{req.get('op', 'request')}: {key} must be a non-empty string")
    return v


def _int(req: dict[str, Any], key: str, lo: int = 0, hi: int = 2**31) -> int:
    v = req.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{req.get('op', 'request')}: {key} must be an integer within [{lo}, {hi}]")
    return v


# -- the server -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    session_id: str
    path: tuple[str, ...]
    hops: dict[int, tuple[int, LinkPhysics]] = field(default_factory=dict)  # index -> (medium hop, physics)
    members: set[str] = field(default_factory=set)
    rounds: RoundSync | None = None
    #: the run nonce of this session at the medium (module docstring)
    run: str = field(default_factory=lambda: f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(4)}")

    def delay_s(self, src: str, dst: str) -> float:
        i, j = sorted((self.path.index(src), self.path.index(dst)))
        km = sum(self.hops[h][1].length_km for h in range(i, j) if h in self.hops)
        return km * 1000.0 / FIBRE_LIGHT_SPEED_M_S


class _Conn:
    def __init__(
        self, server: MediumServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.node: str | None = None
        self.closed = False

    def push(self, obj: dict[str, Any]) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(encode_frame(obj))


class MediumServer:
    """The medium service: one QuantumMedium on real time, its stations, channels and synchronisers."""

    def __init__(self, seed: int = 1, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.seed = seed
        self._server: asyncio.Server | None = None
        self._medium: QuantumMedium | None = None
        self._clock: AsyncioClock | None = None
        self._conns: dict[str, _Conn] = {}
        self._sessions: dict[str, _Session] = {}
        self._hop_ids: dict[int, tuple[str, int]] = {}  # medium hop -> (session, index)
        self._next_hop = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._queues: dict[tuple[str, str, str], deque[tuple[float, dict[str, Any]]]] = {}
        self._timers: dict[tuple[str, str, str], TimerHandle] = {}
        self._specified: set[str] = set()
        self.frames_in = 0

    @property
    def medium(self) -> QuantumMedium:
        if self._medium is None:
            raise DriverError("the medium service is not started")
        return self._medium

    async def start(self) -> None:
        self._clock = AsyncioClock()
        self._medium = QuantumMedium(self._clock, self.seed, {}, [])
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("quantum medium on %s:%d (seed %d)", self.host, self.port, self.seed)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            conn.closed = True
            conn.writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # -- connections --------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = _Conn(self, reader, writer)
        decoder = FrameDecoder()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for req in decoder.feed(data):
                    self.frames_in += 1
                    conn.push(self._handle(conn, req))
        except FrameError as exc:
            log.warning("medium: node %s sent a bad frame (%s); closing", conn.node, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.closed = True
            if conn.node is not None and self._conns.get(conn.node) is conn:
                del self._conns[conn.node]
                self._node_gone(conn.node)
                log.info("medium: node %s disconnected", conn.node)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    def _handle(self, conn: _Conn, req: dict[str, Any]) -> dict[str, Any]:
        rid = req.get("id")
        op = req.get("op")
        try:
            if not isinstance(op, str):
                raise ConfigError("a request needs an op")
            if op == "hello":
                result = self._hello(conn, req)
            elif conn.node is None:
                raise ConfigError("the first request must be hello")
            else:
                handler = self._ops.get(op)
                if handler is None:
                    raise ConfigError(f"unknown op {op[:40]!r}")
                result = handler(self, conn.node, req)
        except QsdnError as exc:
            return {"id": rid, "ok": False, "error": exc.first.message}
        except (KeyError, ValueError, TypeError) as exc:
            return {"id": rid, "ok": False, "error": f"{op}: bad request ({exc})"}
        return {"id": rid, "ok": True, "result": result}

    def _hello(self, conn: _Conn, req: dict[str, Any]) -> dict[str, Any]:
        node = _str(req, "node")
        mem = req.get("memory") or {}
        if not isinstance(mem, dict):
            raise ConfigError("hello: memory must be an object")

        def seconds(key: str) -> float:
            v = mem.get(key)
            if v is None:
                return math.inf
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"hello: memory.{key} must be a positive number or null")
            return float(v)

        swap = mem.get("swap_success", 1.0)
        if isinstance(swap, bool) or not isinstance(swap, int | float):
            raise ConfigError("hello: memory.swap_success must be a number")
        spec = MemorySpec(seconds("coherence_time_s"), seconds("dephasing_time_s"), float(swap))
        old = self._conns.get(node)
        if old is not None and old is not conn:
            log.info("medium: node %s connected again; closing its old connection", node)
            old.closed = True
            old.writer.close()
            self._node_gone(node)
        conn.node = node
        self._conns[node] = conn
        self.medium.add_node(node, spec)
        self._specified.add(node)
        self.medium.attach(node, functools.partial(self._on_herald, node))
        log.info("medium: node %s connected", node)
        return {"medium": "qsdn-medium", "version": PROTOCOL_VERSION}

    def _node_gone(self, node: str) -> None:
        """A node's software went away: its memories are reset and it leaves every session."""
        medium = self.medium
        medium.detach(node)
        for slot in medium.node_slots(node):
            medium.discard(node, slot)
        for sid in [s.session_id for s in self._sessions.values() if node in s.members]:
            self._leave(node, sid)

    # -- sessions and hops --------------------------------------------------------------------------------

    def _session(self, sid: str) -> _Session:
        try:
            return self._sessions[sid]
        except KeyError:
            raise DriverError(f"session {sid} has no registered hop at the medium") from None

    def _op_hop(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        sid = _str(req, "session")
        path_raw = req.get("path")
        if (
            not isinstance(path_raw, list)
            or len(path_raw) < 2
            or not all(isinstance(p, str) for p in path_raw)
        ):
            raise ConfigError("hop: path must list at least two nodes")
        path = tuple(path_raw)
        if len(set(path)) != len(path):
            raise ConfigError("hop: path lists a node twice")
        index = _int(req, "hop", 0, len(path) - 2)
        if node not in (path[index], path[index + 1]):
            raise ConfigError(f"hop: node {node} is not an end of hop {index} of session {sid}")
        phys = link_physics(req)
        p, attempt_s, fidelity = phys.probability()
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"elementary link {phys.link_id}: success probability {p} is not within (0, 1]")
        sess = self._sessions.get(sid)
        if sess is None:
            sess = self._sessions[sid] = _Session(sid, path)
        elif sess.path != path:
            raise ConfigError(
                f"session {sid}: path {list(path)} differs from {list(sess.path)} of another node"
            )
        have = sess.hops.get(index)
        if have is None:
            for end in (path[index], path[index + 1]):
                if end not in self._specified:  # until it says hello: ideal memory
                    self.medium.add_node(end, MemorySpec())
                    self._specified.add(end)
            hop_id = self._next_hop
            self._next_hop += 1
            self.medium.add_hop(HopSpec(hop_id, path[index], path[index + 1], p, attempt_s, werner(fidelity)))
            sess.hops[index] = (hop_id, phys)
            self._hop_ids[hop_id] = (sid, index)
        elif have[1] != phys:
            raise ConfigError(
                f"session {sid} hop {index}: elementary link {phys.link_id} as configured at {node} differs"
                f" from its other end ({have[1]} vs {phys})"
            )
        sess.members.add(node)
        return {"p": p, "attempt_s": attempt_s, "fidelity": fidelity, "run": sess.run}

    def _op_leave(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        sid = _str(req, "session")
        slots = req.get("slots", [])
        if not isinstance(slots, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in slots
        ):
            raise ConfigError("leave: slots must be a list of integers")
        for slot in slots:
            self.medium.discard(node, slot)
        if sid in self._sessions:
            self._leave(node, sid)
        return {}

    def _leave(self, node: str, sid: str) -> None:
        sess = self._sessions[sid]
        sess.members.discard(node)
        for hop_id, _ in sess.hops.values():
            self.medium.withdraw(hop_id, node)
        if sess.members:
            return
        for hop_id, _ in sess.hops.values():
            self.medium.remove_hop(hop_id)
            self._hop_ids.pop(hop_id, None)
        for key in [k for k in self._queues if k[0] == sid]:
            del self._queues[key]
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()
        del self._sessions[sid]
        log.info("medium: session %s ended", sid)

    def _on_herald(self, node: str, herald: Herald) -> None:
        where = self._hop_ids.get(herald.hop)
        conn = self._conns.get(node)
        if where is None or conn is None:
            return
        sid, index = where
        conn.push(
            {
                "event": "herald",
                "session": sid,
                "hop": index,
                "label": [index, herald.label[1]],
                "slot": herald.slot,
                "partner": herald.partner_node,
                "partner_slot": herald.partner_slot,
                "frame": herald.frame,
            }
        )

    # -- node operations ----------------------------------------------------------------------------------

    def _op_request(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        sess = self._session(_str(req, "session"))
        index = _int(req, "hop", 0, len(sess.path) - 2)
        if index not in sess.hops:
            raise DriverError(f"session {sess.session_id}: hop {index} is not registered")
        self.medium.request_pair(sess.hops[index][0], node, _int(req, "slot"))
        return {}

    def _op_pauli(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        self.medium.apply_pauli(node, _int(req, "slot"), _int(req, "pauli", 0, 3))
        return {}

    def _op_discard(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        self.medium.discard(node, _int(req, "slot"))
        return {}

    def _op_bsm(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        r = self.medium.bell_measure(node, _int(req, "slot1"), _int(req, "slot2"))
        return {"ok": r.ok, "bits": r.bits}

    def _op_measure(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        return {"outcome": self.medium.measure(node, _int(req, "slot"), Basis(_str(req, "basis")))}

    def _op_purify(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        protocol = PurificationProtocol(_str(req, "protocol"))
        return {"bit": self.medium.purify_local(node, _int(req, "keep"), _int(req, "sacrifice"), protocol)}

    def _op_fidelity(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        state = self.medium.pair_state(node, _int(req, "slot"))
        return {"fidelity": None if state is None else state.fidelity}

    def _op_send(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        sess = self._session(_str(req, "session"))
        dst = _str(req, "dst")
        if node not in sess.path or dst not in sess.path:
            raise ConfigError(f"send: {node} -> {dst} is not within session {sess.session_id}")
        body = req.get("body")
        if not isinstance(body, dict):
            raise ConfigError("send: body must be an object")
        assert self._clock is not None
        key = (sess.session_id, node, dst)
        queue = self._queues.setdefault(key, deque())
        due = self._clock.now() + sess.delay_s(node, dst)
        if queue:
            due = max(due, queue[-1][0])
        queue.append((due, {"event": "message", "session": sess.session_id, "src": node, "body": body}))
        if key not in self._timers:
            self._timers[key] = self._clock.call_at(due, lambda: self._deliver(key))
        return {}

    def _deliver(self, key: tuple[str, str, str]) -> None:
        """Deliver the due messages of one (session, src, dst) queue in order; re-arm for the next."""
        self._timers.pop(key, None)
        queue = self._queues.get(key)
        assert self._clock is not None
        now = self._clock.now()
        while queue and queue[0][0] <= now:
            _, event = queue.popleft()
            conn = self._conns.get(key[2])
            if conn is not None:
                conn.push(event)
        if queue:
            self._timers[key] = self._clock.call_at(queue[0][0], lambda: self._deliver(key))

    def _op_round(self, node: str, req: dict[str, Any]) -> dict[str, Any]:
        sess = self._session(_str(req, "session"))
        if sess.rounds is None:
            assert self._clock is not None
            sess.rounds = RoundSync(self._clock, len(sess.path) - 2)
            sess.rounds.attach(functools.partial(self._broadcast_round, sess))
        sess.rounds.report(node, _int(req, "round"), bool(req.get("ok")))
        return {}

    def _broadcast_round(self, sess: _Session, round_no: int) -> None:
        for node in sess.path:
            conn = self._conns.get(node)
            if conn is not None and node in sess.members:
                conn.push({"event": "round", "session": sess.session_id, "round": round_no})

    _ops: dict[str, Callable[[MediumServer, str, dict[str, Any]], dict[str, Any]]] = {
        "hop": _op_hop,
        "leave": _op_leave,
        "request": _op_request,
        "pauli": _op_pauli,
        "discard": _op_discard,
        "bsm": _op_bsm,
        "measure": _op_measure,
        "purify": _op_purify,
        "fidelity": _op_fidelity,
        "send": _op_send,
        "round": _op_round,
    }


async def run_medium(host: str, port: int, seed: int, stop: asyncio.Event) -> None:
    """Run the medium service until ``stop`` is set."""
    server = MediumServer(seed, host=host, port=port)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
