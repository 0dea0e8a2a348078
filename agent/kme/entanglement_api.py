"""Entanglement delivery to applications: the node API of ``pairs`` sessions, on the KME's HTTPS port.

At the two ends of a ``qsdn-entanglement`` session whose ``application`` is ``pairs``, the entanglement
driver queues every delivered end-to-end pair (:meth:`EmulatedEntanglementDriver.pairs`). This module
gives that queue a wire form, so an application at each end can take the pairs and measure them, and
compare its outcomes with the application at the other end. It is served by the KME's aiohttp
application, next to ETSI GS QKD 014 and SKIP, with the same mutual TLS and the same error middleware:
an application is the CommonName of its client certificate, exactly like an SAE.

Endpoints (all JSON; errors are ``{"message": ...}``)
------------------------------------------------------
``GET /api/v1/entanglement/sessions``
    the ``pairs`` sessions ending at this node whose ``clients`` name the caller:
    ``{"sessions": [{"session_ID", "local_qkdn_ID", "peer_qkdn_ID", "end_a_qkdn_ID", "end_b_qkdn_ID",
    "status", "target_fidelity"}]}``.
``GET /api/v1/entanglement/{session_ID}/status``
    ``{"session_ID", "local_qkdn_ID", "peer_qkdn_ID", "status", "pairs_available", "pairs_delivered",
    "pairs_measured", "pairs_lost", "rate_pairs_per_s", "fidelity", "expected_qber", "target_fidelity",
    "hold_time_s", "max_pairs_per_request", "max_timeout_s"}``.
``POST /api/v1/entanglement/{session_ID}/measure``
    body ``{"number": n, "basis": b, "timeout_s": t}`` (take the ``n`` oldest pairs waiting here) or
    ``{"pair_IDs": [...], "basis": b, "timeout_s": t}`` (the pairs the peer application took at the
    other end); ``basis`` is ``"Z"``, ``"X"``, ``"random"`` or an array of ``"Z"``/``"X"``, one per
    pair. Answer: ``{"session_ID", "pairs": [{"pair_ID", "basis", "outcome", "delivered_at"}],
    "fidelity"}`` and, for ``pair_IDs`` not delivered here in time, ``"missing_pair_IDs"``.

Measure directly, match by id
-----------------------------
The link-layer service of Dahlberg et al. (A. Dahlberg et al., "A link layer protocol for quantum
networks", ACM SIGCOMM 2019; the QIRG draft draft-dahlberg-ll-quantum) and the QNodeOS network stack
(C. Delle Donne et al., Nature 2025) offer two kinds of requests: *create and keep* (the pair stays in
memory for a local quantum program) and *measure directly* (each end measures its half on delivery, in
a basis the request fixes or draws at random, and gets the outcome, the basis and the pair's id). A qubit
cannot travel over HTTPS, so this API is measure-directly only; a co-located quantum program would use
the driver's Python queue. The same ids name a pair at both ends (the left end's label of the first
hop, ``"<run>-<hop>-<sequence>"``, where ``run`` is the session's run nonce at the medium, shared by the
two ends and new each time the session starts there, so a recreated session never repeats an id), so the
two applications match their outcomes by ``pair_ID``: one takes
pairs by ``number`` and hands their ids to the other (over its own classical channel, as ETSI 014 SAEs
hand over key_IDs), which measures ``pair_IDs``. Both may also take by ``number`` and intersect.

A pair waits at each end until it is measured or until ``hold_time_s`` after its delivery there
(:data:`HOLD_S`, shortened to the session's ``cutoff_time_s`` if that is smaller), then it is released
unmeasured and counted in ``pairs_lost``: a pair measured at one end stays available to the other end
for that long. Nothing here coordinates the two ends; the physics does (a waiting pair occupies a memory
qubit and decoheres, F(t) = 1/4 + (F0 - 1/4) e^(-n t/T)).

Pairs are measured as they are taken: the node's memory may hold fewer qubits than ``number``, so a
request that waited for all of them would never be served. A request therefore returns the pairs
measured until it has ``number`` of them or its ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`, at
most :data:`MAX_TIMEOUT_S`) runs out; the answer may hold fewer pairs than asked, never zero: with no
pair measured it is a 503. Random bases come from the operating system's CSPRNG.

Errors (the ETSI GS QKD 014 rules: 400 never succeeds as is, 401 not entitled, 503 try again)
---------------------------------------------------------------------------------------------
* 404 at a node that ends no ``pairs`` session (a repeater has no end of any pair): there is no such
  API there. A KME whose agent has no entanglement driver does not route these paths at all.
* 401 for a caller no ``pairs`` session here lists in ``clients``, and for a session that does not
  list the caller.
* 400 for a malformed session id, body, basis, number or pair id, an unknown member, a session that is
  not a ``pairs`` session ending here, and a ``pair_ID`` this end has already measured or released.
  Every check happens before any pair is touched: a refused request consumes nothing.
* 503 when no pair could be measured within the request's timeout (none delivered, the session is down).

What is logged: the caller, the session, how many pairs were asked and measured. Never an outcome or a
basis choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from aiohttp import web
from lxml import etree

from agent.datastore import wrap
from agent.drivers.base import SessionState
from agent.drivers.quantum_medium import Basis
from agent.kme.etsi014 import KmeError, bad, load_json
from qsdn.errors import DriverError

if TYPE_CHECKING:
    from agent.kme.server import KmeServer

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "HOLD_S",
    "MAX_PAIRS_PER_REQUEST",
    "MAX_TIMEOUT_S",
    "ROUTE_PREFIX",
    "EntanglementApi",
    "MeasureRequest",
    "Pair",
    "PairSource",
    "PairsSession",
    "WaitingPairs",
    "expected_qber",
    "pair_id_label",
    "pair_id_text",
    "pairs_sessions",
    "parse_measure_body",
    "parse_session_id",
    "rfc3339",
]

log = logging.getLogger(__name__)

NS = "urn:etsi:qkd:yang:etsi-qkd-node"
ENT_NS = "urn:qsdn:yang:qsdn-entanglement"

#: The names of this API's routes start with this.
ROUTE_PREFIX = "entanglement-"
BASE = "/api/v1/entanglement"
MAX_PAIRS_PER_REQUEST = 1024
DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 60.0
#: How long a delivered pair waits at an end for an application before it is released as lost.
HOLD_S = 2.0
#: How long the hardware may take to give a measurement outcome.
OUTCOME_TIMEOUT_S = 5.0
#: How often the sessions of running are matched with the driver's queues and held pairs expire.
SYNC_S = 0.1
#: How many measured or released pair ids an end remembers (to refuse them with a 400).
GONE_IDS = 1 << 16
#: How long the pump waits for a pair before it checks that its queue is still the session's.
_PUMP_WAIT_S = 1.0

_PAIR_ID = re.compile(r"(?:[0-9a-f]{19}-)?(0|[1-9][0-9]{0,8})-(0|[1-9][0-9]{0,17})")
_MEASURE_FIELDS = ("number", "pair_IDs", "basis", "timeout_s")


# --- what the driver offers ------------------------------------------------------------------------------


class Pair(Protocol):
    """A delivered pair at this end (:class:`agent.drivers.emulated_entanglement.DeliveredPair`)."""

    @property
    def pair_id(self) -> tuple[int, int]: ...

    @property
    def delivered_s(self) -> float: ...

    def measure_then(self, basis: Basis, done: Callable[[int], None]) -> None: ...

    def release(self) -> None: ...


class WaitingPairs(Protocol):
    """A session's delivered pairs at this end (:class:`agent.drivers.entanglement_driver.PairQueue`); its
    ``run`` attribute, when it has one, is the session's run nonce (the first part of every pair id)."""

    async def get(self, timeout_s: float) -> Pair: ...


@runtime_checkable
class PairSource(Protocol):
    """An entanglement driver that hands out the pairs of ``pairs`` sessions."""

    def pairs(self, session_id: str) -> WaitingPairs: ...

    def session_state(self, session_id: str) -> SessionState | None: ...


# --- the running configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PairsSession:
    """A ``pairs`` session that ends at this node, as running configures it."""

    session_id: str
    end_a_qkdn_id: str
    end_b_qkdn_id: str
    peer_qkdn_id: str
    clients: frozenset[str]
    cutoff_time_s: float | None = None
    target_fidelity: float | None = None


def _text(el: etree._Element, name: str) -> str | None:
    found = el.find(f"{{{ENT_NS}}}{name}")
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _float(el: etree._Element, name: str) -> float | None:
    v = _text(el, name)
    return float(v) if v is not None else None


@functools.lru_cache(maxsize=8)
def pairs_sessions(running_xml: str, node_id: str) -> dict[str, PairsSession]:
    """The ``pairs`` sessions of ``running_xml`` that end at ``node_id`` (cached; do not modify)."""
    out: dict[str, PairsSession] = {}
    node = wrap(running_xml).find(f"{{{NS}}}qkd_node") if running_xml.strip() else None
    if node is None:
        return out
    me = node_id.lower()
    path = "/".join(f"{{{ENT_NS}}}{n}" for n in ("entanglement", "sessions", "session"))
    for se in node.iterfind(path):
        sid = _text(se, "session_id")
        if sid is None or _text(se, "role") != "end" or _text(se, "application") != "pairs":
            continue
        end_a = (_text(se, "end_a_qkdn_id") or "").lower()
        end_b = (_text(se, "end_b_qkdn_id") or "").lower()
        clients = frozenset((c.text or "").strip() for c in se.iterfind(f"{{{ENT_NS}}}clients"))
        out[sid.lower()] = PairsSession(
            session_id=sid.lower(),
            end_a_qkdn_id=end_a,
            end_b_qkdn_id=end_b,
            peer_qkdn_id=end_b if end_a == me else end_a,
            clients=frozenset(c for c in clients if c),
            cutoff_time_s=_float(se, "cutoff_time_s"),
            target_fidelity=_float(se, "target_fidelity"),
        )
    return out


# --- requests ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureRequest:
    """A validated ``measure``: either ``number`` new pairs or the pairs ``pair_ids``; ``bases`` has one
    entry per pair (``None``: drawn at random when the pair is measured)."""

    number: int
    bases: tuple[Basis | None, ...]
    pair_ids: tuple[str, ...] | None
    timeout_s: float


def parse_session_id(text: str) -> str:
    """The canonical (lower-case) form of a session id from the path; a 400 if it is no UUID."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        value = None
    if value is None or len(text) != 36:
        raise bad(f"session_ID {text[:80]!r} is not a UUID")
    return str(value)


def pair_id_text(label: tuple[int, int], run: str = "") -> str:
    """The wire form of a pair's id: ``"<run>-<hop>-<sequence>"`` (``"<hop>-<sequence>"`` without a run)."""
    return f"{run}-{label[0]}-{label[1]}" if run else f"{label[0]}-{label[1]}"


def pair_id_label(text: str) -> tuple[int, int]:
    """The pair id of a wire ``pair_ID``; a 400 for anything else."""
    m = _PAIR_ID.fullmatch(text)
    if m is None:
        raise bad(
            f"pair_ID {text[:80]!r} is malformed: '<run>-<hop>-<sequence>' (a run of 19 hexadecimal digits,"
            " decimal integers) is expected"
        )
    return int(m.group(1)), int(m.group(2))


def _basis(v: Any, where: str) -> Basis:
    if v == "Z":
        return Basis.Z
    if v == "X":
        return Basis.X
    raise bad(f'{where} must be "Z" or "X", got {str(v)[:20]!r}')


def parse_measure_body(body: bytes) -> MeasureRequest:
    """``POST .../measure``: checked entirely before any pair is touched."""
    data = load_json(body)
    unknown = [k for k in data if k not in _MEASURE_FIELDS]
    if unknown:
        raise bad(
            f"unknown member {unknown[0][:40]!r} (a measure request takes {', '.join(_MEASURE_FIELDS)})"
        )
    pair_ids: tuple[str, ...] | None = None
    if "pair_IDs" in data:
        if "number" in data:
            raise bad("give either number (new pairs) or pair_IDs (pairs the peer took), not both")
        raw = data["pair_IDs"]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise bad("pair_IDs must be an array of strings")
        if not 1 <= len(raw) <= MAX_PAIRS_PER_REQUEST:
            raise bad(f"pair_IDs must hold 1 to {MAX_PAIRS_PER_REQUEST} ids, got {len(raw)}")
        for text in raw:
            pair_id_label(text)
        if len(set(raw)) != len(raw):
            dup = next(x for x in raw if raw.count(x) > 1)
            raise bad(f"pair_ID {dup!r} is given more than once")
        pair_ids = tuple(raw)
        number = len(raw)
    else:
        v = data.get("number", 1)
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad(f"number must be an integer, got {str(v)[:20]!r}")
        if not 1 <= v <= MAX_PAIRS_PER_REQUEST:
            raise bad(f"number {v} is not within [1, {MAX_PAIRS_PER_REQUEST}] (max_pairs_per_request)")
        number = v
    if "basis" not in data:
        raise bad('basis is required: "Z", "X", "random", or an array of "Z"/"X" with one entry per pair')
    b = data["basis"]
    bases: tuple[Basis | None, ...]
    if b == "random":
        bases = (None,) * number
    elif isinstance(b, list):
        if len(b) != number:
            raise bad(f"basis has {len(b)} entries for {number} pair(s): one per pair is expected")
        bases = tuple(_basis(x, f"basis[{i}]") for i, x in enumerate(b))
    elif isinstance(b, str) and b in ("Z", "X"):
        bases = (_basis(b, "basis"),) * number
    else:
        raise bad(f'basis must be "Z", "X", "random" or an array of "Z"/"X", got {str(b)[:20]!r}')
    t = data.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise bad(f"timeout_s must be a number of seconds, got {str(t)[:20]!r}")
    if not 0 <= t <= MAX_TIMEOUT_S:
        raise bad(f"timeout_s {t} is not within [0, {MAX_TIMEOUT_S}] s")
    return MeasureRequest(number=number, bases=bases, pair_ids=pair_ids, timeout_s=float(t))


# --- responses ---------------------------------------------------------------------------------------------


def rfc3339(wall_s: float) -> str:
    """A POSIX time as RFC 3339 UTC with microseconds."""
    return datetime.fromtimestamp(wall_s, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def expected_qber(fidelity: float | None) -> float | None:
    """QBER of a Werner pair of fidelity F in either basis, 2(1 - F)/3 (SYSTEM.md section 4)."""
    return None if fidelity is None else max(0.0, 2.0 * (1.0 - fidelity) / 3.0)


# --- pairs waiting at this end -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Held:
    pair: Pair
    pair_id: str
    delivered_wall_s: float
    expires_s: float


@dataclass(eq=False)
class _Pool:
    """The pairs of one session waiting at this end, fed by one pump task from the driver's queue."""

    session_id: str
    queue: WaitingPairs
    hold_s: float
    held: dict[str, _Held] = field(default_factory=dict)  # in delivery order
    gone: dict[str, None] = field(default_factory=dict)  # measured or released, oldest first
    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    closed: bool = False
    delivered: int = 0
    measured: int = 0
    lost: int = 0

    def add(self, pair: Pair, loop_now: float) -> None:
        pid = pair_id_text(pair.pair_id, getattr(self.queue, "run", ""))
        if pid in self.held or pid in self.gone:  # the same label twice: not the same pair
            self._release(pair)
            self.lost += 1
            return
        self.delivered += 1
        wall = time.time() - max(0.0, loop_now - pair.delivered_s)
        self.held[pid] = _Held(pair, pid, wall, pair.delivered_s + self.hold_s)
        self.wake()

    def wake(self) -> None:
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()

    def forget(self, pid: str) -> None:
        self.gone[pid] = None
        while len(self.gone) > GONE_IDS:
            del self.gone[next(iter(self.gone))]

    def take(self, pid: str | None = None) -> _Held | None:
        """The oldest waiting pair, or pair ``pid``, removed from the pool (None if there is none)."""
        if pid is None:
            if not self.held:
                return None
            pid = next(iter(self.held))
        held = self.held.pop(pid, None)
        if held is not None:
            self.forget(pid)
        return held

    def expire(self, loop_now: float) -> int:
        n = 0
        while self.held:
            held = next(iter(self.held.values()))
            if held.expires_s > loop_now:
                break
            del self.held[held.pair_id]
            self.forget(held.pair_id)
            self._release(held.pair)
            self.lost += 1
            n += 1
        return n

    def close(self) -> None:
        self.closed = True
        for held in self.held.values():
            self._release(held.pair)
            self.lost += 1
        self.held.clear()
        self.wake()

    @staticmethod
    def _release(pair: Pair) -> None:
        with contextlib.suppress(DriverError):
            pair.release()


@dataclass(frozen=True)
class _Measured:
    pair_id: str
    basis: Basis
    outcome: int
    delivered_wall_s: float


class EntanglementApi:
    """The entanglement delivery API over a :class:`~agent.kme.server.KmeServer` (its identity, its
    running configuration) and the node's entanglement driver."""

    def __init__(self, kme: KmeServer, driver: PairSource, *, hold_s: float = HOLD_S) -> None:
        self.kme = kme
        self.driver = driver
        self.hold_s = hold_s
        self._pools: dict[str, _Pool] = {}
        self._task: asyncio.Task[None] | None = None
        self._rng = secrets.SystemRandom()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(BASE + "/sessions", self._sessions, allow_head=False, name=ROUTE_PREFIX + "sessions"),
            web.get(
                BASE + "/{session_id}/status", self._status, allow_head=False, name=ROUTE_PREFIX + "status"
            ),
            web.post(BASE + "/{session_id}/measure", self._measure, name=ROUTE_PREFIX + "measure"),
        ]

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sync_loop(), name="entanglement-api")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sid in list(self._pools):
            await self._retire(sid)

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._sync()
            except Exception:
                log.exception("KME %s: entanglement delivery: sync failed", self.kme.config.kme_id)
            await asyncio.sleep(SYNC_S)

    def _running(self) -> dict[str, PairsSession]:
        return pairs_sessions(self.kme._running(), self.kme.node_id)

    async def _sync(self) -> None:
        """Start a pump for every pairs session ending here that runs, stop the others, expire pairs."""
        sessions = self._running()
        for sid in list(self._pools):
            if sid not in sessions:
                await self._retire(sid)
        now = asyncio.get_running_loop().time()
        for sid, spec in sessions.items():
            pool = await self._pool(sid, spec)
            if pool is not None:
                pool.expire(now)

    async def _pool(self, sid: str, spec: PairsSession) -> _Pool | None:
        """The pool of a running session (a new one when the driver started the session anew)."""
        try:
            queue = self.driver.pairs(sid)
        except DriverError:
            queue = None
        pool = self._pools.get(sid)
        if pool is not None and pool.queue is queue:
            return pool
        if pool is not None:
            await self._retire(sid)
        if queue is None:
            return None
        hold = self.hold_s if spec.cutoff_time_s is None else min(self.hold_s, spec.cutoff_time_s)
        pool = _Pool(sid, queue, hold)
        pool.task = asyncio.get_running_loop().create_task(self._pump(pool), name=f"pairs-{sid[:8]}")
        self._pools[sid] = pool
        return pool

    async def _retire(self, sid: str) -> None:
        pool = self._pools.pop(sid, None)
        if pool is None:
            return
        task, pool.task = pool.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool.close()

    async def _pump(self, pool: _Pool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                pair = await pool.queue.get(_PUMP_WAIT_S)
            except DriverError:
                try:
                    current = self.driver.pairs(pool.session_id)
                except DriverError:
                    current = None
                if current is not pool.queue:
                    return  # the session stopped or restarted; _sync retires the pool
                continue
            pool.add(pair, loop.time())

    # --- identity and authorisation ----------------------------------------------------------------------
    def _authorised(self, request: web.Request) -> tuple[str, dict[str, PairsSession]]:
        caller = self.kme.identity(request)
        sessions = self._running()
        if not sessions:
            raise KmeError(
                404,
                f"node {self.kme.node_id} is the end of no pairs session: it serves no entanglement delivery",
            )
        mine = {sid: s for sid, s in sessions.items() if caller in s.clients}
        if not mine:
            raise KmeError(401, f"{caller} is not a client of any pairs session at node {self.kme.node_id}")
        return caller, sessions

    def _session(self, request: web.Request) -> tuple[str, PairsSession]:
        caller, sessions = self._authorised(request)
        sid = parse_session_id(request.match_info["session_id"])
        spec = sessions.get(sid)
        if spec is None:
            raise bad(f"session {sid} is not a pairs session ending at node {self.kme.node_id}")
        if caller not in spec.clients:
            raise KmeError(401, f"{caller} is not a client of pairs session {sid} at node {self.kme.node_id}")
        return caller, spec

    def _state(self, sid: str) -> SessionState:
        return self.driver.session_state(sid) or SessionState(status="down")

    # --- handlers ----------------------------------------------------------------------------------------
    async def _sessions(self, request: web.Request) -> web.StreamResponse:
        caller, sessions = self._authorised(request)
        if request.query:
            raise bad(f"sessions takes no query parameters, got {next(iter(request.query))[:40]!r}")
        out = [
            {
                "session_ID": s.session_id,
                "local_qkdn_ID": self.kme.node_id,
                "peer_qkdn_ID": s.peer_qkdn_id,
                "end_a_qkdn_ID": s.end_a_qkdn_id,
                "end_b_qkdn_ID": s.end_b_qkdn_id,
                "status": self._state(s.session_id).status,
                "target_fidelity": s.target_fidelity,
            }
            for s in sorted(sessions.values(), key=lambda s: s.session_id)
            if caller in s.clients
        ]
        return web.json_response({"sessions": out})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        _, spec = self._session(request)
        if request.query:
            raise bad(f"status takes no query parameters, got {next(iter(request.query))[:40]!r}")
        pool = await self._pool(spec.session_id, spec)
        state = self._state(spec.session_id)
        if pool is not None:
            pool.expire(asyncio.get_running_loop().time())
        hold = self.hold_s if spec.cutoff_time_s is None else min(self.hold_s, spec.cutoff_time_s)
        body = {
            "session_ID": spec.session_id,
            "local_qkdn_ID": self.kme.node_id,
            "peer_qkdn_ID": spec.peer_qkdn_id,
            "status": state.status,
            "pairs_available": len(pool.held) if pool is not None else 0,
            "pairs_delivered": state.pairs_delivered,
            "pairs_measured": pool.measured if pool is not None else 0,
            "pairs_lost": pool.lost if pool is not None else 0,
            "rate_pairs_per_s": state.rate_pairs_per_s,
            "fidelity": state.achieved_fidelity,
            "expected_qber": expected_qber(state.achieved_fidelity),
            "target_fidelity": spec.target_fidelity,
            "hold_time_s": hold,
            "max_pairs_per_request": MAX_PAIRS_PER_REQUEST,
            "max_timeout_s": MAX_TIMEOUT_S,
        }
        return web.json_response(body)

    async def _measure(self, request: web.Request) -> web.StreamResponse:
        caller, spec = self._session(request)
        if request.query:
            raise bad("measure takes its parameters in the body, not the query string")
        req = parse_measure_body(await request.read())
        sid = spec.session_id
        pool = await self._pool(sid, spec)
        if req.pair_ids is not None and pool is not None:
            gone = [p for p in req.pair_ids if p in pool.gone]
            if gone:
                raise bad(
                    f"pair_ID {gone[0]} was already measured or released at this end"
                    + (f" ({len(gone)} such ids)" if len(gone) > 1 else "")
                )
        if pool is None:
            raise KmeError(
                503, f"pairs session {sid} is not delivering at this node ({self._state(sid).status})"
            )
        measured, missing = await self._take_and_measure(pool, req)
        log.info(
            "KME %s: %s measured %d of %d pair(s) of session %s",
            self.kme.config.kme_id,
            caller,
            len(measured),
            req.number,
            sid,
        )
        if not measured:
            raise KmeError(
                503,
                f"no pair of session {sid} could be measured at this end within {req.timeout_s} s"
                f" (session {self._state(sid).status})",
            )
        body: dict[str, Any] = {
            "session_ID": sid,
            "pairs": [
                {
                    "pair_ID": m.pair_id,
                    "basis": m.basis.value,
                    "outcome": m.outcome,
                    "delivered_at": rfc3339(m.delivered_wall_s),
                }
                for m in measured
            ],
            "fidelity": self._state(sid).achieved_fidelity,
        }
        if missing:
            body["missing_pair_IDs"] = list(missing)
        return web.json_response(body)

    async def _take_and_measure(self, pool: _Pool, req: MeasureRequest) -> tuple[list[_Measured], list[str]]:
        """Measure the request's pairs as they become available here, until all are or time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.timeout_s
        started: list[tuple[_Held, Basis, asyncio.Future[int]]] = []
        wanted = list(req.pair_ids) if req.pair_ids is not None else None
        index = {p: i for i, p in enumerate(wanted)} if wanted is not None else {}

        def measure(held: _Held, basis: Basis | None) -> None:
            b = basis if basis is not None else self._rng.choice((Basis.Z, Basis.X))
            fut: asyncio.Future[int] = loop.create_future()

            def done(outcome: int) -> None:
                if not fut.done():
                    fut.set_result(outcome)

            try:
                held.pair.measure_then(b, done)
            except DriverError as exc:
                fut.set_exception(exc)
            started.append((held, b, fut))

        while True:
            pool.expire(loop.time())
            if wanted is None:
                while len(started) < req.number:
                    held = pool.take()
                    if held is None:
                        break
                    measure(held, req.bases[len(started)])
                if len(started) >= req.number:
                    break
            else:
                for pid in list(wanted):
                    held = pool.take(pid)
                    if held is not None:
                        wanted.remove(pid)
                        measure(held, req.bases[index[pid]])
                if not wanted:
                    break
            remaining = deadline - loop.time()
            if remaining <= 0 or pool.closed:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            pool.waiters.add(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)
            pool.waiters.discard(waiter)

        out: list[_Measured] = []
        if started:
            await asyncio.wait([f for _, _, f in started], timeout=OUTCOME_TIMEOUT_S)
        for held, basis, fut in started:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                out.append(_Measured(held.pair_id, basis, int(fut.result()), held.delivered_wall_s))
                pool.measured += 1
            else:
                if not fut.done():
                    fut.cancel()
                pool.lost += 1
        if req.pair_ids is not None:
            out.sort(key=lambda m: index[m.pair_id])
        return out, wanted or []


def entanglement_api(kme: KmeServer, driver: object) -> EntanglementApi | None:
    """The API over ``driver`` if it hands out pairs (an emulated or hardware driver with ``pairs``)."""
    return EntanglementApi(kme, driver) if isinstance(driver, PairSource) else None
