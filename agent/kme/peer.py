"""The KME-to-KME channel: messages (validated without I/O) and the batching mutual-TLS client.

Transport: HTTPS with mutual TLS on the KME's own port. Each KME presents its node certificate
(CommonName = its ``kme_id``) as server and as client. A batch is accepted only from a certificate whose
CommonName is the ``kme_id`` configured for the node the batch names as ``source_qkdn_id``; the client,
besides the CA and host name checks of TLS, checks before sending anything on a connection that the
server's CommonName is the ``kme_id`` configured for the peer it meant to reach.

``POST /qsdn/kme/v1/batch`` carries ``{"v": 1, "source_qkdn_id": ..., "ops": [op, ...]}`` and is answered
200 ``{"results": [result, ...]}``, one result per op in the same order. Each op is handled on its own,
all or nothing: a result is ``{"status": 200, ...}`` or ``{"status": 400|401|409|503, "message": ...,
"reason": <code>}``. A refusal of the whole batch (not a peer, malformed envelope) is an ETSI-style
error body ``{"message": ..., "details": [{"reason": ...}]}`` with its HTTP status. Concurrent requests
to one peer share batches: while a few batches are in flight, new ops queue and leave together, so
the HTTP and TLS cost is paid per batch, not per key request.

Ops (``request_id`` is the key_ID of the request's first key, and key *i* of the ``number`` keys has
the key_ID :func:`agent.kme.etsi014.key_ids` derives from it; ``ranges`` are ``[block_id, offset_bits,
nbits]`` triples of the link's key store, in order; key *i* of ``size`` bits is bits
``[i*size, (i+1)*size)`` of their concatenation; ``digest`` is
:func:`agent.kme.store.digest`, a SHA-256 commitment to the request's key material, never the key):

``deliver`` (the end that drew the key -> the other end)
    ``{op, request_id, qkdl_id, master_SAE_ID, slave_SAE_ID, size, number, ranges, digest}``: consume
    exactly these ranges, check the digest, keep the keys for the slave. 200 ``{"stored": n}``; 409
    ``divergence`` (the bits differ; the ranges are used up as discarded here) or ``conflict`` (a range
    is already consumed); 503 ``missing-block`` (a block did not arrive in time), ``full``,
    ``unavailable``; 401 ``unauthorised``; 400 ``malformed``, ``role``.
``draw`` (the master's end, when the other end draws -> the drawing end)
    ``{op, request_id, qkdl_id, master_SAE_ID, slave_SAE_ID, size, number}``: draw the key, keep it for
    the slave, answer 200 ``{"ranges": [...], "digest": ...}``; 503 ``no-key``.
``abort``
    ``{op, request_id, qkdl_id, reason, ranges?}``: the request failed at the caller. Erase its
    undelivered keys, record the link key this end consumed for it as discarded, and use up as
    discarded those of the caller's ``ranges`` still free here. 200 ``{"erased": n, "discarded_bits": m,
    "ranges": [...]}`` with the ranges this end had consumed for the request, which the caller discards
    in turn where still free: afterwards both key stores have used up the same bits, and every one of
    them is in the accounting. Idempotent; the caller retries until it is answered. On a relay path
    the receiver also discards what it took for the request on its other links and journals an abort
    for its own outgoing hop, so the abort goes on to the far end (:mod:`agent.kme.relay`).

``reserve`` and ``relay`` (trusted relay over VIRT links) are described in :mod:`agent.kme.relay`.
An op may wait longer than the channel's timeout (:meth:`PeerChannel.send`): a ``relay`` op waits for
the rest of its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from cryptography import x509
from yarl import URL

from agent.config import KmePeerConfig
from agent.keystore import KeyRange
from agent.kme.etsi014 import KmeError, canonical_uuid, load_json, split_key_id
from qsdn.errors import QsdnError
from qsdn.pki import sae_id_of

__all__ = [
    "BATCH_PATH",
    "AbortMsg",
    "DeliverMsg",
    "DrawMsg",
    "PeerCallError",
    "PeerChannel",
    "cert_name",
    "parse_envelope",
    "parse_op",
]

log = logging.getLogger(__name__)

BATCH_PATH = "/qsdn/kme/v1/batch"
VERSION = 1
MAX_OPS = 1024
MAX_RANGES = 65536
_HEX64 = re.compile(r"[0-9a-f]{64}")


def peer_error(status: int, reason: str, message: str) -> KmeError:
    return KmeError(status, message, [{"reason": reason}])


def _malformed(message: str) -> KmeError:
    return peer_error(400, "malformed", f"malformed peer message: {message}")


@functools.lru_cache(maxsize=4096)
def cert_name(der: bytes) -> str:
    """The identity (CommonName, by the SAE ID rule of :func:`qsdn.pki.sae_id_of`) of a DER certificate."""
    return sae_id_of(x509.load_der_x509_certificate(der))


def _uuid(data: dict[str, Any], name: str) -> str:
    v = data.get(name)
    if not isinstance(v, str):
        raise _malformed(f"{name} must be a UUID string")
    out = canonical_uuid(v)
    if out is None:
        raise _malformed(f"{name} {v[:60]!r} is not a UUID")
    return out


def _str(data: dict[str, Any], name: str, limit: int = 256) -> str:
    v = data.get(name)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise _malformed(f"{name} must be a non-empty string of at most {limit} characters")
    return v


def _int(data: dict[str, Any], name: str, lo: int, hi: int) -> int:
    v = data.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _malformed(f"{name} must be an integer in [{lo}, {hi}]")
    return v


def _fields(data: dict[str, Any], known: tuple[str, ...]) -> None:
    extra = sorted(set(data) - {"op", *known})
    if extra:
        raise _malformed(f"unknown member {extra[0]!r} in a {data.get('op')} op")


def _ranges_out(ranges: Sequence[KeyRange]) -> list[list[Any]]:
    return [[r.block_id, r.offset_bits, r.nbits] for r in ranges]


@dataclass(frozen=True)
class _Common:
    source_qkdn_id: str
    request_id: str
    qkdl_id: str


@dataclass(frozen=True)
class DrawMsg(_Common):
    master: str
    slave: str
    size: int
    number: int

    op = "draw"

    def body(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "request_id": self.request_id,
            "qkdl_id": self.qkdl_id,
            "master_SAE_ID": self.master,
            "slave_SAE_ID": self.slave,
            "size": self.size,
            "number": self.number,
        }


@dataclass(frozen=True)
class DeliverMsg(DrawMsg):
    ranges: tuple[KeyRange, ...]
    digest: str

    op = "deliver"

    def body(self) -> dict[str, Any]:
        out = super().body()
        out["ranges"] = _ranges_out(self.ranges)
        out["digest"] = self.digest
        return out


@dataclass(frozen=True)
class AbortMsg(_Common):
    reason: str
    ranges: tuple[KeyRange, ...] = ()

    op = "abort"

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "op": self.op,
            "request_id": self.request_id,
            "qkdl_id": self.qkdl_id,
            "reason": self.reason,
        }
        if self.ranges:
            out["ranges"] = _ranges_out(self.ranges)
        return out


PeerMsg = DeliverMsg | DrawMsg | AbortMsg


def parse_ranges(v: Any) -> tuple[KeyRange, ...]:
    if not isinstance(v, list) or not 0 < len(v) <= MAX_RANGES:
        raise _malformed(f"ranges must be a non-empty array of at most {MAX_RANGES} ranges")
    out: list[KeyRange] = []
    for r in v:
        if (
            not isinstance(r, list)
            or len(r) != 3
            or not isinstance(r[0], str)
            or not 0 < len(r[0]) <= 256
            or any(isinstance(x, bool) or not isinstance(x, int) for x in r[1:])
            or r[1] < 0
            or r[2] <= 0
        ):
            raise _malformed("each range must be [block_id, offset_bits >= 0, nbits > 0]")
        out.append(KeyRange(r[0], r[1], r[2]))
    return tuple(out)


def _draw_fields(data: dict[str, Any], source: str, max_keys: int, max_size: int) -> dict[str, Any]:
    request_id = _uuid(data, "request_id")
    if split_key_id(request_id) != (request_id, 0):
        raise _malformed(
            "request_id must be the key_ID of the request's first key (a version 7 UUID, index 0)"
        )
    size = _int(data, "size", 8, max_size)
    if size % 8:
        raise _malformed("size must be a multiple of 8")
    return {
        "source_qkdn_id": source,
        "request_id": request_id,
        "qkdl_id": _str(data, "qkdl_id"),
        "master": _str(data, "master_SAE_ID"),
        "slave": _str(data, "slave_SAE_ID"),
        "size": size,
        "number": _int(data, "number", 1, max_keys),
    }


_DRAW = ("request_id", "qkdl_id", "master_SAE_ID", "slave_SAE_ID", "size", "number")


def parse_envelope(body: bytes) -> tuple[str, list[Any]]:
    """The sender's qkdn_id and the raw ops of a batch (each op is parsed on its own)."""
    data = load_json(body)
    if data.get("v") != VERSION:
        raise _malformed(f"unsupported version {data.get('v')!r} (this KME speaks {VERSION})")
    extra = sorted(set(data) - {"v", "source_qkdn_id", "ops"})
    if extra:
        raise _malformed(f"unknown member {extra[0]!r}")
    ops = data.get("ops")
    if not isinstance(ops, list) or not 0 < len(ops) <= MAX_OPS:
        raise _malformed(f"ops must be an array of 1 to {MAX_OPS} ops")
    return _uuid(data, "source_qkdn_id"), ops


def parse_op(raw: Any, source: str, *, max_keys: int, max_size: int) -> PeerMsg:
    if not isinstance(raw, dict):
        raise _malformed("an op must be an object")
    kind = raw.get("op")
    if kind == "deliver":
        _fields(raw, (*_DRAW, "ranges", "digest"))
        d = raw.get("digest")
        if not isinstance(d, str) or not _HEX64.fullmatch(d):
            raise _malformed("digest must be 64 lower-case hex digits (SHA-256)")
        return DeliverMsg(
            **_draw_fields(raw, source, max_keys, max_size), ranges=parse_ranges(raw.get("ranges")), digest=d
        )
    if kind == "draw":
        _fields(raw, _DRAW)
        return DrawMsg(**_draw_fields(raw, source, max_keys, max_size))
    if kind == "abort":
        _fields(raw, ("request_id", "qkdl_id", "reason", "ranges"))
        return AbortMsg(
            source_qkdn_id=source,
            request_id=_uuid(raw, "request_id"),
            qkdl_id=_str(raw, "qkdl_id"),
            reason=_str(raw, "reason", 1000),
            ranges=parse_ranges(raw["ranges"]) if "ranges" in raw else (),
        )
    raise _malformed(f"unknown op {str(kind)[:40]!r}")


def parse_draw_answer(data: dict[str, Any]) -> tuple[tuple[KeyRange, ...], str]:
    d = data.get("digest")
    if not isinstance(d, str) or not _HEX64.fullmatch(d):
        raise _malformed("digest must be 64 lower-case hex digits (SHA-256)")
    return parse_ranges(data.get("ranges")), d


def ok(**payload: Any) -> dict[str, Any]:
    return {"status": 200, **payload}


def failure(exc: KmeError) -> dict[str, Any]:
    reason = "error"
    if exc.details and isinstance(exc.details[0].get("reason"), str):
        reason = exc.details[0]["reason"]
    return {"status": exc.status, "message": exc.message, "reason": reason}


class PeerCallError(Exception):
    """An op sent to a peer KME failed. ``status`` is None when no answer came (the peer may or may not
    have acted on it); ``reason`` is the peer's code or ``unreachable``/``timeout``/``identity``."""

    def __init__(self, peer: KmePeerConfig, status: int | None, reason: str, message: str) -> None:
        super().__init__(f"peer KME {peer.kme_id} ({peer.url}): {message}")
        self.peer = peer
        self.status = status
        self.reason = reason
        self.message = message


class _IdentityError(aiohttp.ClientConnectionError):
    pass


class _PeerConnector(aiohttp.TCPConnector):
    """Checks, before a request goes out on a connection, that the server is the KME the URL is for."""

    def __init__(self, names: dict[tuple[str, int], str], **kw: Any) -> None:
        super().__init__(**kw)
        self._names = names

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        want = self._names.get((req.url.host or "", req.url.port or 0))
        transport = conn.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            name = cert_name(der) if der else None
        except (QsdnError, ValueError):
            name = None
        if want is None or name != want:
            conn.close()
            raise _IdentityError(f"the server's certificate names {name!r}, not the peer KME {want!r}")
        return conn


@dataclass
class _Pending:
    body: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    timeout_s: float


class PeerChannel:
    """Ops to the peer KMEs, batched per peer over keep-alive mutual-TLS connections.

    :meth:`send` queues an op for a peer and waits for its result. The queue leaves at the end of the
    current turn of the event loop, so the ops of the requests resumed in one turn (by one group
    commit, say) share a batch; per peer at most ``max_inflight`` batches are in flight, and ops that
    arrive meanwhile leave together in the next. An op waits ``timeout_s`` for its answer unless
    :meth:`send` gives it another timeout (a relay op waits for the rest of its path,
    :mod:`agent.kme.relay`); only ops with the same timeout share a batch, so a quick op never waits
    behind a relay's long one.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        timeout_s: float,
        peers: Sequence[KmePeerConfig],
        source_qkdn_id: str,
        *,
        max_inflight: int = 4,
        max_batch: int = 256,
    ) -> None:
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._source = source_qkdn_id
        self._names: dict[tuple[str, int], str] = {}
        for p in peers:
            u = URL(p.url)
            self._names[(u.host or "", u.port or 0)] = p.kme_id
        self._queues: dict[str, list[_Pending]] = {p.qkdn_id: [] for p in peers}
        self._inflight: dict[str, int] = {p.qkdn_id: 0 for p in peers}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump_soon: set[str] = set()
        self._max_inflight = max_inflight
        self._max_batch = min(max_batch, MAX_OPS)
        self._session: aiohttp.ClientSession | None = None
        self.batches_sent = 0
        self.ops_sent = 0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = _PeerConnector(self._names, ssl=self._ssl, limit=64, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for queue in self._queues.values():
            for p in queue:
                if not p.future.done():
                    p.future.set_exception(asyncio.CancelledError())
            queue.clear()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        log.info("KME peer channel: %d op(s) sent in %d batch(es)", self.ops_sent, self.batches_sent)

    async def send(self, peer: KmePeerConfig, msg: Any, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Send one op (anything with ``body()``); its result payload (status 200), or
        :class:`PeerCallError` (status None and reason ``timeout`` when no answer came within
        ``timeout_s``, by default the channel's)."""
        wait = self._timeout_s if timeout_s is None else timeout_s
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queues[peer.qkdn_id].append(_Pending(msg.body(), fut, wait))
        if peer.qkdn_id not in self._pump_soon:
            # at the end of this turn of the event loop: the ops that requests resumed in the same turn
            # (say, by one group commit) send leave together
            self._pump_soon.add(peer.qkdn_id)
            asyncio.get_running_loop().call_soon(self._pump_later, peer)
        try:
            # the batch's HTTP timeout is the same; this also bounds the time spent queued
            result = await asyncio.wait_for(asyncio.shield(fut), wait + 0.5)
        except TimeoutError:
            raise PeerCallError(peer, None, "timeout", "no answer in time") from None
        status = result.get("status")
        if status != 200:
            reason = str(result.get("reason", "error"))[:40]
            message = str(result.get("message", ""))[:500]
            raise PeerCallError(
                peer, status if isinstance(status, int) else 0, reason, f"{status}: {message}"
            )
        return result

    def _pump_later(self, peer: KmePeerConfig) -> None:
        self._pump_soon.discard(peer.qkdn_id)
        self._pump(peer)

    def _pump(self, peer: KmePeerConfig) -> None:
        queue = self._queues[peer.qkdn_id]
        while queue and self._inflight[peer.qkdn_id] < self._max_inflight:
            wait = queue[0].timeout_s
            batch = [p for p in queue if p.timeout_s == wait][: self._max_batch]
            chosen = {id(p) for p in batch}
            queue[:] = [p for p in queue if id(p) not in chosen]
            self._inflight[peer.qkdn_id] += 1
            task = asyncio.get_running_loop().create_task(
                self._post(peer, batch), name=f"kme-peer-{peer.kme_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, peer: KmePeerConfig, batch: list[_Pending]) -> None:
        try:
            results = await self._exchange(peer, [p.body for p in batch], batch[0].timeout_s)
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)
        except PeerCallError as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self._inflight[peer.qkdn_id] -= 1
            self._pump(peer)

    async def _exchange(
        self, peer: KmePeerConfig, ops: list[dict[str, Any]], timeout_s: float
    ) -> list[dict[str, Any]]:
        url = f"{peer.url}{BATCH_PATH}"
        body = {"v": VERSION, "source_qkdn_id": self._source, "ops": ops}
        self.batches_sent += 1
        self.ops_sent += len(ops)
        timeout = self._timeout if timeout_s == self._timeout_s else aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._client().post(url, json=body, timeout=timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except _IdentityError as exc:
            raise PeerCallError(peer, None, "identity", str(exc)) from None
        except TimeoutError:
            raise PeerCallError(peer, None, "timeout", "no answer in time") from None
        except aiohttp.ClientError as exc:
            raise PeerCallError(peer, None, "unreachable", f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise PeerCallError(peer, None, "unreachable", str(exc)) from None
        try:
            data = load_json(raw)
        except KmeError:
            raise PeerCallError(
                peer, status, "malformed", f"HTTP {status} with a body that is not JSON"
            ) from None
        if status != 200:
            details = data.get("details")
            reason = "error"
            if isinstance(details, list) and details and isinstance(details[0], dict):
                reason = str(details[0].get("reason", "error"))[:40]
            raise PeerCallError(peer, status, reason, f"HTTP {status}: {str(data.get('message', ''))[:500]}")
        results = data.get("results")
        if (
            not isinstance(results, list)
            or len(results) != len(ops)
            or not all(isinstance(r, dict) for r in results)
        ):
            raise PeerCallError(peer, status, "malformed", "the answer does not have one result per op")
        return results
